// Dynamic batching on mms Tensors (no libtorch): requests whose inputs agree
// on names, dtypes and every dimension but the first are concatenated along
// dim 0, run once, and the outputs split back by each request's rows.
#pragma once

#include <vector>

#include "core/status.h"
#include "protocol/tensor.h"

namespace mms {

// The rows (dim 0) shared by every input of one request; INVALID_ARGUMENT
// when an input is a scalar or the inputs disagree.
Result<int64_t> BatchRows(const std::vector<Tensor>& inputs);
// True when two requests' inputs can share a batch.
bool SameBatchShape(const std::vector<Tensor>& a, const std::vector<Tensor>& b);
// Concatenates requests (each a full input list in the same order) along dim 0.
std::vector<Tensor> ConcatRows(const std::vector<const std::vector<Tensor>*>& requests);
// Splits outputs back into per-request outputs of `rows` rows each;
// INVALID_ARGUMENT when an output's dim 0 is not the batch's total rows.
Result<std::vector<std::vector<Tensor>>> SplitRows(const std::vector<Tensor>& outputs, const std::vector<int64_t>& rows);

}  // namespace mms
