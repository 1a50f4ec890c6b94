#include "rollout/compare.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>

#include "protocol/tensor_file.h"

namespace mms {
namespace {
bool IsFloat(DType d) {
  return d == DType::kFloat32 || d == DType::kFloat64 || d == DType::kFloat16 || d == DType::kBFloat16;
}

std::vector<size_t> TopK(const double* row, size_t n, size_t k) {
  std::vector<size_t> idx(n);
  std::iota(idx.begin(), idx.end(), 0);
  k = std::min(k, n);
  std::partial_sort(idx.begin(), idx.begin() + static_cast<long>(k), idx.end(),
                    [&](size_t a, size_t b) { return row[a] > row[b] || (row[a] == row[b] && a < b); });
  idx.resize(k);
  return idx;
}
}  // namespace

OutputComparison CompareOutputs(const std::vector<Tensor>& primary, const std::vector<Tensor>& shadow, double tolerance,
                                int top_k) {
  OutputComparison c;
  if (primary.size() != shadow.size()) {
    c.diverged = c.mismatched = true;
    c.reason = "the shadow returned " + std::to_string(shadow.size()) + " outputs, the primary " +
               std::to_string(primary.size());
    return c;
  }
  double sum_abs = 0, dot = 0, na = 0, nb = 0, nd = 0;
  size_t count = 0, rows = 0, topk_rows = 0, argmax_same = 0;
  double topk_sum = 0;
  for (const auto& p : primary) {
    auto it = std::find_if(shadow.begin(), shadow.end(), [&](const Tensor& s) { return s.name == p.name; });
    if (it == shadow.end()) {
      c.diverged = c.mismatched = true;
      c.reason = "the shadow has no output '" + p.name + "'";
      return c;
    }
    if (it->shape != p.shape || it->dtype != p.dtype) {
      c.diverged = c.mismatched = true;
      c.reason = "output '" + p.name + "' is " + it->Describe() + " from the shadow, " + p.Describe() + " from the primary";
      return c;
    }
    std::vector<double> a = TensorToDoubles(p), b = TensorToDoubles(*it);
    for (size_t i = 0; i < a.size(); ++i) {
      // Equal values (equal infinities: -inf masked logits) agree exactly;
      // NaN agrees only with NaN.
      double d = a[i] == b[i] ? 0 : std::fabs(a[i] - b[i]);
      if (std::isnan(d)) d = std::isnan(a[i]) && std::isnan(b[i]) ? 0 : INFINITY;
      c.max_abs = std::max(c.max_abs, d);
      sum_abs += d;
      nd += d * d;
      // The cosine is over the finite pairs: -inf masked logits or NaN on
      // both sides would make it NaN (inf/inf) or 0 for identical outputs.
      if (std::isfinite(a[i]) && std::isfinite(b[i])) {
        dot += a[i] * b[i];
        na += a[i] * a[i];
        nb += b[i] * b[i];
      }
    }
    count += a.size();
    int64_t last = p.shape.empty() ? 1 : p.shape.back();
    if (IsFloat(p.dtype) && last > 1 && !a.empty()) {
      size_t width = static_cast<size_t>(last);
      for (size_t r = 0; r + width <= a.size(); r += width) {
        auto ta = TopK(&a[r], width, static_cast<size_t>(top_k)), tb = TopK(&b[r], width, static_cast<size_t>(top_k));
        argmax_same += ta[0] == tb[0];
        ++rows;
        // Only where the top k are some of the classes: with k or fewer,
        // both sets are every class and always agree.
        if (width <= static_cast<size_t>(top_k)) continue;
        std::set<size_t> sa(ta.begin(), ta.end());
        size_t overlap = 0;
        for (size_t x : tb) overlap += sa.count(x);
        topk_sum += static_cast<double>(overlap) / static_cast<double>(ta.size());
        ++topk_rows;
      }
    }
  }
  c.mean_abs = count ? sum_abs / static_cast<double>(count) : 0;
  c.rel_l2 = na > 0 ? std::sqrt(nd) / std::sqrt(na) : (nd > 0 ? INFINITY : 0);
  c.cosine = na > 0 && nb > 0 ? dot / (std::sqrt(na) * std::sqrt(nb)) : (na == nb ? 1.0 : 0.0);
  if (rows) {
    c.argmax_agreement = static_cast<double>(argmax_same) / static_cast<double>(rows);
    if (topk_rows) c.topk_agreement = topk_sum / static_cast<double>(topk_rows);
  }
  if (c.max_abs > tolerance) {
    c.diverged = true;
    char buf[128];
    std::snprintf(buf, sizeof buf, "max abs diff %.3g > tolerance %.3g", c.max_abs, tolerance);
    c.reason = buf;
  }
  return c;
}

}  // namespace mms
