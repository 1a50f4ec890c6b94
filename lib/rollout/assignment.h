// Sticky A/B assignment, bit-identical to the seed's Python router:
//   bucket = int(md5(utf8(experiment_id + ":" + user_id)), 16) % 10000
//   treatment iff bucket < percent × 100
// so a team moving from it keeps every user's variant. Percentages have
// basis-point precision (one bucket = 0.01%); raising them never moves a
// treated user back to control. Stateless: any daemon computes the same.
#pragma once

#include <string>
#include <string_view>

#include "core/status.h"

namespace mms {

enum class Variant { kNone, kControl, kTreatment };
const char* VariantName(Variant v);  // "none", "control", "treatment"

int SeedBucket(std::string_view experiment_id, std::string_view user_id);
// Treatment share in basis points (0..10000) from a percentage in [0, 100];
// INVALID_ARGUMENT otherwise.
Result<int> PercentToBasisPoints(double percent);
inline bool IsTreatment(int bucket, int basis_points) { return bucket < basis_points; }

// Experiment ids: 1-128 characters from A-Z a-z 0-9 . _ : @ -
Status ValidateExperimentId(std::string_view id);

}  // namespace mms
