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

Status ValidateTenant(std::string_view t) {
  if (t.empty() || t.size() > 128)
    return InvalidArgument("a tenant id is 1-128 characters (got " + std::to_string(t.size()) +
                           "); leave --tenant out for the tenant (none)");
  // Well-formed UTF-8 only: a stray byte 0x80-0x9F is CSI and its kin on
  // an 8-bit terminal.
  for (size_t i = 0; i < t.size();) {
    const auto c = static_cast<unsigned char>(t[i]);
    const size_t n = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 && c >= 0xc2 ? 2 : (c & 0xf0) == 0xe0 ? 3
                                                                       : (c & 0xf8) == 0xf0 && c <= 0xf4 ? 4 : 0;
    bool ok = n > 0 && i + n <= t.size();
    for (size_t k = 1; ok && k < n; ++k) ok = (static_cast<unsigned char>(t[i + k]) & 0xc0) == 0x80;
    if (!ok) return InvalidArgument("a tenant id must be UTF-8 text (byte " + std::to_string(i) + " is not)");
    i += n;
  }
  for (size_t i = 0; i < t.size(); ++i) {
    const auto c = static_cast<unsigned char>(t[i]);
    const auto next = i + 1 < t.size() ? static_cast<unsigned char>(t[i + 1]) : 0;
    const auto third = i + 2 < t.size() ? static_cast<unsigned char>(t[i + 2]) : 0;
    // C0 and DEL; C1 (U+0080-U+009F, UTF-8 C2 80-9F: some terminals take
    // U+009B as an escape); the bidirectional overrides and isolates
    // (U+202A-202E, U+2066-2069), which reorder what is shown.
    if (c < 0x20 || c == 0x7f || (c == 0xc2 && next >= 0x80 && next <= 0x9f) ||
        (c == 0xe2 && next == 0x80 && third >= 0xaa && third <= 0xae) ||
        (c == 0xe2 && next == 0x81 && third >= 0xa6 && third <= 0xa9))
      return InvalidArgument("a tenant id may not hold control characters (newlines, tabs, escapes, direction overrides)");
  }
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
