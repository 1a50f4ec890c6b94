#include "serve/batching.h"

#include <cstring>
#include <numeric>

namespace mms {

Result<int64_t> BatchRows(const std::vector<Tensor>& inputs) {
  if (inputs.empty()) return InvalidArgument("a batched model needs at least one input");
  int64_t rows = -1;
  for (const auto& t : inputs) {
    if (t.shape.empty()) return InvalidArgument("input '" + t.name + "' is a scalar; a batched model needs a row dimension");
    if (rows < 0) rows = t.shape[0];
    else if (t.shape[0] != rows)
      return InvalidArgument("inputs disagree on rows (dim 0): '" + inputs[0].name + "' has " + std::to_string(rows) +
                             ", '" + t.name + "' has " + std::to_string(t.shape[0]) +
                             "; every input of a batched model needs the same number of rows");
  }
  return rows;  // (0 rows joins a batch as nothing and gets 0 rows back, as the model answers it alone)
}

bool SameBatchShape(const std::vector<Tensor>& a, const std::vector<Tensor>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].name != b[i].name || a[i].dtype != b[i].dtype || a[i].shape.size() != b[i].shape.size()) return false;
    for (size_t d = 1; d < a[i].shape.size(); ++d)
      if (a[i].shape[d] != b[i].shape[d]) return false;
  }
  return true;
}

std::vector<Tensor> ConcatRows(const std::vector<const std::vector<Tensor>*>& requests) {
  const auto& first = *requests.front();
  std::vector<Tensor> out;
  for (size_t i = 0; i < first.size(); ++i) {
    int64_t rows = 0;
    for (const auto* r : requests) rows += (*r)[i].shape[0];
    std::vector<int64_t> shape = first[i].shape;
    shape[0] = rows;
    Tensor t = Tensor::Alloc(first[i].name, first[i].dtype, shape);
    size_t off = 0;
    for (const auto* r : requests) {
      const Tensor& part = (*r)[i];
      if (part.nbytes) std::memcpy(t.mutable_data() + off, part.data.get(), part.nbytes);
      off += part.nbytes;
    }
    out.push_back(std::move(t));
  }
  return out;
}

Result<std::vector<std::vector<Tensor>>> SplitRows(const std::vector<Tensor>& outputs, const std::vector<int64_t>& rows) {
  int64_t total = std::accumulate(rows.begin(), rows.end(), int64_t{0});
  std::vector<std::vector<Tensor>> out(rows.size());
  for (const auto& o : outputs) {
    if (o.shape.empty() || o.shape[0] != total)
      return InvalidArgument("output '" + o.name + "' is " + o.Describe() + ", not " + std::to_string(total) +
                             " rows: this model's outputs cannot be split per request, so it cannot be batched");
    size_t row_bytes = total ? o.nbytes / static_cast<size_t>(total) : 0;
    size_t off = 0;
    for (size_t r = 0; r < rows.size(); ++r) {
      std::vector<int64_t> shape = o.shape;
      shape[0] = rows[r];
      Tensor t;
      t.name = o.name;
      t.dtype = o.dtype;
      t.shape = shape;
      t.nbytes = row_bytes * static_cast<size_t>(rows[r]);
      t.data = std::shared_ptr<const uint8_t>(o.data, o.data.get() + off);  // a view: no copy
      off += t.nbytes;
      out[r].push_back(std::move(t));
    }
  }
  return out;
}

}  // namespace mms
