#include "registry/names.h"

#include <cstdio>

#include "core/units.h"

namespace mms {

const char* StageName(Stage s) {
  switch (s) {
    case Stage::kNone: return "none";
    case Stage::kShadow: return "shadow";
    case Stage::kCanary: return "canary";
    case Stage::kProduction: return "production";
    case Stage::kArchived: return "archived";
  }
  return "none";
}

Result<Stage> ParseStage(std::string_view s) {
  for (Stage st : {Stage::kNone, Stage::kShadow, Stage::kCanary, Stage::kProduction, Stage::kArchived})
    if (s == StageName(st)) return st;
  return InvalidArgument("unknown stage '" + std::string(s) +
                         "'; a stage is one of none, shadow, canary, production, archived");
}

static bool IsLowerAlnum(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }

Status ValidateName(std::string_view name, std::string_view what) {
  bool ok = !name.empty() && name.size() <= 63 && IsLowerAlnum(name[0]);
  for (char c : name) ok = ok && (IsLowerAlnum(c) || c == '.' || c == '_' || c == '-');
  if (ok) return Status::Ok();
  return InvalidArgument("invalid " + std::string(what) + " '" + std::string(name) +
                         "': use 1-63 characters from a-z, 0-9, '.', '_' and '-', starting with a letter or "
                         "digit ([a-z0-9][a-z0-9._-]{0,62})");
}

namespace {
// The code point at t[*i] (strict UTF-8: no overlong forms, no surrogates,
// nothing past U+10FFFF), advancing *i; -1 when the bytes there are not one.
int32_t NextCodePoint(std::string_view t, size_t* i) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(t[*i + k]); };
  const unsigned char c = b(0);
  size_t n;
  int32_t cp, min;
  if (c < 0x80) n = 1, cp = c, min = 0;
  else if ((c & 0xe0) == 0xc0) n = 2, cp = c & 0x1f, min = 0x80;
  else if ((c & 0xf0) == 0xe0) n = 3, cp = c & 0x0f, min = 0x800;
  else if ((c & 0xf8) == 0xf0) n = 4, cp = c & 0x07, min = 0x10000;
  else return -1;
  if (*i + n > t.size()) return -1;
  for (size_t k = 1; k < n; ++k) {
    if ((b(k) & 0xc0) != 0x80) return -1;
    cp = (cp << 6) | (b(k) & 0x3f);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return -1;
  *i += n;
  return cp;
}

// Characters that control a terminal or change what is shown without being
// seen: C0, DEL, C1 (some terminals take U+009B as an escape), the soft
// hyphen, the Arabic letter mark, the Mongolian vowel separator, zero-width
// characters and direction marks (U+200B-200F), line and paragraph
// separators and the direction embeddings and overrides (U+2028-202E),
// invisible operators (U+2060-2064), direction isolates (U+2066-2069), the
// byte order mark and the interlinear annotation marks; the combining
// grapheme joiner, the Hangul fillers and the braille blank, which show as
// nothing or as a space; and the tag characters (U+E0000-E007F), invisible
// after any letter.
bool Invisible(int32_t cp) {
  return cp < 0x20 || (cp >= 0x7f && cp <= 0x9f) || cp == 0xad || cp == 0x34f || cp == 0x61c || cp == 0x115f ||
         cp == 0x1160 || cp == 0x180e || (cp >= 0x200b && cp <= 0x200f) || (cp >= 0x2028 && cp <= 0x202e) ||
         (cp >= 0x2060 && cp <= 0x2064) || (cp >= 0x2066 && cp <= 0x2069) || cp == 0x2800 || cp == 0x3164 ||
         cp == 0xfeff || cp == 0xffa0 || (cp >= 0xfff9 && cp <= 0xfffb) || (cp >= 0xe0000 && cp <= 0xe007f);
}

// The Unicode space separators (Zs).
bool Space(int32_t cp) {
  return cp == ' ' || cp == 0xa0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200a) || cp == 0x202f || cp == 0x205f ||
         cp == 0x3000;
}
}  // namespace

Status ValidateTenant(std::string_view t) {
  size_t chars = 0;
  int32_t first = -1, last = -1;
  for (size_t i = 0; i < t.size();) {
    const size_t at = i;
    const int32_t cp = NextCodePoint(t, &i);
    if (cp < 0) return InvalidArgument("a tenant id must be UTF-8 text (byte " + std::to_string(at) + " is not)");
    if (Invisible(cp)) {
      char hex[16];
      std::snprintf(hex, sizeof hex, "U+%04X", static_cast<unsigned>(cp));
      return InvalidArgument("a tenant id may not hold control characters or invisible ones (newlines, tabs, escapes, "
                             "direction marks and overrides, zero-width characters, line separators): " +
                             std::string(hex) + " at character " + std::to_string(chars + 1));
    }
    if (first < 0) first = cp;
    last = cp;
    ++chars;
  }
  if (chars == 0 || chars > 128)
    return InvalidArgument("a tenant id is 1-128 characters (got " + std::to_string(chars) +
                           "); leave --tenant out for the tenant (none)");
  // Else "acme" and "acme " are two tenants that look the same in mms limit list.
  if (Space(first) || Space(last)) return InvalidArgument("a tenant id may not start or end with a space");
  return Status::Ok();
}

Status ValidateVersion(std::string_view v) {
  auto bad = [&] {
    return InvalidArgument("invalid version '" + std::string(v) +
                           "': a version is a positive integer or dotted numbers, e.g. 3 or 1.2.0 "
                           "(no leading zeros, at most 9 digits per part)");
  };
  if (v.empty() || v.size() > 64) return bad();
  // Only digits and dots: checked on the whole string, because Split trims
  // each part ("1. 2" must not pass as 1.2).
  for (char c : v)
    if ((c < '0' || c > '9') && c != '.') return bad();
  bool nonzero = false;
  for (const auto& part : Split(v, '.')) {
    if (part.empty() || part.size() > 9) return bad();
    if (part.size() > 1 && part[0] == '0') return bad();
    for (char c : part)
      if (c < '0' || c > '9') return bad();
    if (part != "0") nonzero = true;
  }
  if (!nonzero) return bad();
  return Status::Ok();
}

std::string VersionSortKey(std::string_view v) {
  std::string key;
  for (const auto& part : Split(v, '.')) {
    char buf[16];
    std::snprintf(buf, sizeof buf, "%09ld", std::strtol(part.c_str(), nullptr, 10));
    if (!key.empty()) key += '.';
    key += buf;
  }
  return key;
}

int CompareVersions(std::string_view a, std::string_view b) {
  return VersionSortKey(a).compare(VersionSortKey(b));
}

std::string Ref::ToString() const {
  switch (kind) {
    case Kind::kName: return name;
    case Kind::kVersion: return name + ":" + version;
    case Kind::kAlias: return name + "@" + alias;
  }
  return name;
}

Result<Ref> ParseRef(std::string_view text) {
  Ref r;
  auto colon = text.find(':');
  auto at = text.find('@');
  if (colon != std::string_view::npos && at != std::string_view::npos)
    return InvalidArgument("invalid reference '" + std::string(text) +
                           "': use NAME, NAME:VERSION or NAME@ALIAS (not both : and @)");
  if (colon != std::string_view::npos) {
    r.kind = Ref::Kind::kVersion;
    r.name = std::string(text.substr(0, colon));
    r.version = std::string(text.substr(colon + 1));
    MMS_RETURN_IF_ERROR(ValidateName(r.name));
    MMS_RETURN_IF_ERROR(ValidateVersion(r.version));
  } else if (at != std::string_view::npos) {
    r.kind = Ref::Kind::kAlias;
    r.name = std::string(text.substr(0, at));
    r.alias = std::string(text.substr(at + 1));
    MMS_RETURN_IF_ERROR(ValidateName(r.name));
    MMS_RETURN_IF_ERROR(ValidateName(r.alias, "alias"));
  } else {
    r.name = std::string(text);
    MMS_RETURN_IF_ERROR(ValidateName(r.name));
  }
  return r;
}

}  // namespace mms
