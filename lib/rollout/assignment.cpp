#include "rollout/assignment.h"

#include <cmath>

#include "core/hash.h"
#include "core/units.h"

namespace mms {

const char* VariantName(Variant v) {
  switch (v) {
    case Variant::kNone: return "none";
    case Variant::kControl: return "control";
    case Variant::kTreatment: return "treatment";
  }
  return "none";
}

int SeedBucket(std::string_view experiment_id, std::string_view user_id) {
  std::string key;
  key.reserve(experiment_id.size() + 1 + user_id.size());
  key.append(experiment_id).append(":").append(user_id);
  Md5Digest d = Md5(key);
  // The digest read as one big-endian 128-bit integer, reduced mod 10000.
  uint32_t r = 0;
  for (uint8_t b : d) r = (r * 256 + b) % 10000;
  return static_cast<int>(r);
}

Result<int> PercentToBasisPoints(double percent) {
  if (!(percent >= 0 && percent <= 100))
    return InvalidArgument("a percentage must be between 0 and 100 (got " + std::to_string(percent) + ")");
  return PercentBasisPoints(percent);
}

namespace {
// The length of the well-formed UTF-8 sequence at s[i] for a printable code
// point beyond ASCII (not C1 controls, not the Unicode spaces and format
// marks), or 0.
size_t PrintableUtf8(std::string_view s, size_t i) {
  auto b = [&](size_t k) { return static_cast<unsigned char>(s[i + k]); };
  unsigned char c = b(0);
  size_t n = c >= 0xF0 && c <= 0xF4 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 && c <= 0xDF ? 2 : 0;
  if (n == 0 || c > 0xF4 || i + n > s.size()) return 0;
  uint32_t cp = c & (n == 2 ? 0x1F : n == 3 ? 0x0F : 0x07);
  for (size_t k = 1; k < n; ++k) {
    if ((b(k) & 0xC0) != 0x80) return 0;
    cp = cp << 6 | (b(k) & 0x3F);
  }
  const uint32_t min[] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < min[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;  // overlong, surrogate
  if (cp <= 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200F) || (cp >= 0x2028 && cp <= 0x202F) ||
      cp == 0x205F || cp == 0x3000 || cp == 0xFEFF)
    return 0;
  return n;
}
}  // namespace

Status ValidateExperimentId(std::string_view id) {
  bool ok = !id.empty() && id.size() <= 128 && id[0] != '-';  // (a leading '-' reads as an option everywhere)
  for (size_t i = 0; ok && i < id.size();) {
    char c = id[i];
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == ':' ||
        c == '@' || c == '-') {
      ++i;
    } else if (size_t n = PrintableUtf8(id, i)) {
      i += n;
    } else {
      ok = false;
    }
  }
  if (ok) return Status::Ok();
  return InvalidArgument("invalid experiment id '" + std::string(id) +
                         "': use 1-128 bytes of letters and digits (UTF-8 letters too, as the seed's ids), '.', '_', "
                         "':', '@' and '-' (not first), no spaces");
}

}  // namespace mms
