// What a model's forward() expects, one entry per argument (after self).
// Names always come from the TorchScript schema; dtype and shape are known
// when the version was registered with a sample input, and then requests are
// checked before they reach the model. Dimension 0 is the batch dimension
// and may differ from the sample's.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/status.h"
#include "protocol/tensor.h"

namespace mms {

struct InputSpec {
  std::string name;
  std::optional<DType> dtype;
  std::optional<std::vector<int64_t>> shape;  // from the sample input
};

nlohmann::json InputSpecsToJson(const std::vector<InputSpec>& specs);
// "x float32[2, 16], mask bool[2, 16]" ("-" for none; dim 0 as the sample
// had it), as mms model show says them.
std::string InputSpecsText(const std::vector<InputSpec>& specs);
// Whether both check requests alike: the same names, dtypes, ranks and
// dims past the first (dim 0 is never enforced).
bool SameEnforcedInputs(const std::vector<InputSpec>& a, const std::vector<InputSpec>& b);
// Accepts a list of names (older records) or of {"name", "dtype", "shape"}.
std::vector<InputSpec> InputSpecsFromJson(const nlohmann::json& j);

// Returns `inputs` reordered to match `specs`. INVALID_ARGUMENT names the
// missing or unexpected inputs, or the dtype/shape that does not match.
Result<std::vector<Tensor>> MatchInputs(const std::vector<InputSpec>& specs, std::vector<Tensor> inputs,
                                        const std::string& model_ref);

}  // namespace mms
