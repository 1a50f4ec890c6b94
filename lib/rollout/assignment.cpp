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

Status ValidateExperimentId(std::string_view id) {
  bool ok = !id.empty() && id.size() <= 128;
  for (char c : id)
    ok = ok && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
                c == ':' || c == '@' || c == '-');
  if (ok) return Status::Ok();
  return InvalidArgument("invalid experiment id '" + std::string(id) +
                         "': use 1-128 characters from A-Z, a-z, 0-9, '.', '_', ':', '@' and '-'");
}

}  // namespace mms
