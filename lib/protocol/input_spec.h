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
  // From the sample input; dims past the first are enforced, but for those
  // given as kAnySize (mms model register --variable-dim: a sequence length).
  std::optional<std::vector<int64_t>> shape;
};
constexpr int64_t kAnySize = -1;

nlohmann::json InputSpecsToJson(const std::vector<InputSpec>& specs);
// "x float32[2, 16], ids int64[2, *]" ("-" for none; dim 0 as the sample
// had it, * for a variable dim), as mms model show says them.
std::string InputSpecsText(const std::vector<InputSpec>& specs);
// Whether both check requests alike: the same names, dtypes, ranks and
// dims past the first (dim 0 is never enforced).
bool SameEnforcedInputs(const std::vector<InputSpec>& a, const std::vector<InputSpec>& b);
// Marks dims of `specs` as variable (kAnySize), from "NAME:DIM" texts
// (--variable-dim). INVALID_ARGUMENT, naming the fix, for an unknown input,
// an input without a recorded shape, dim 0 (the rows, never enforced) or a
// dim past the input's rank, or a malformed text.
Status MarkVariableDims(std::vector<InputSpec>* specs, const std::vector<std::string>& dims);
// The "NAME:DIM" texts well formed, DIM from 1 on (before anything is
// hashed or packed for them); INVALID_ARGUMENT saying which is not.
Status CheckVariableDims(const std::vector<std::string>& dims);
// The "NAME:DIM" of every variable dim of `specs` (sorted).
std::vector<std::string> VariableDims(const std::vector<InputSpec>& specs);
// Accepts a list of names (older records) or of {"name", "dtype", "shape"}.
std::vector<InputSpec> InputSpecsFromJson(const nlohmann::json& j);

// Returns `inputs` reordered to match `specs`. INVALID_ARGUMENT names the
// missing or unexpected inputs, or the dtype/shape that does not match.
Result<std::vector<Tensor>> MatchInputs(const std::vector<InputSpec>& specs, std::vector<Tensor> inputs,
                                        const std::string& model_ref);

}  // namespace mms
