// Numeric comparison of a shadow's outputs with the primary's, tensor by
// tensor (matched by name): max and mean absolute difference, relative L2
// (‖a − b‖ / ‖a‖), cosine similarity, and for score vectors (floating point,
// last dimension > 1) whether each row's argmax agrees and how much its
// top-k sets overlap. A request diverges when the max absolute difference
// exceeds the tolerance, or names, shapes or dtypes differ.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "protocol/tensor.h"

namespace mms {

struct OutputComparison {
  double max_abs = 0, mean_abs = 0, rel_l2 = 0, cosine = 1;
  std::optional<double> argmax_agreement;  // fraction of rows whose argmax agrees
  std::optional<double> topk_agreement;    // mean overlap of the rows' top-k sets (rows of more than k classes)
  bool diverged = false;
  // The outputs differ in number, names, shapes or dtypes: diverged, and no
  // measure above was taken (they read as perfect agreement).
  bool mismatched = false;
  std::string reason;  // why, when it diverged
};

OutputComparison CompareOutputs(const std::vector<Tensor>& primary, const std::vector<Tensor>& shadow, double tolerance,
                                int top_k = 5);

}  // namespace mms
