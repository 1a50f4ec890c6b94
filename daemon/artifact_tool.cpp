// `mmsd inspect-artifact`: the registration-time check run by `mms model
// register` (the mms CLI does not link libtorch, so it asks mmsd). Loads the
// TorchScript archive, describes its forward() inputs and weights, runs the
// sample input when given, and writes the packed form when --pack-dir is set.
// Prints one JSON object on stdout. Exit: 0 ok, 2 not a usable artifact, 1 other.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <iostream>

#include <CLI/CLI.hpp>

#include "artifact_tool.h"
#include "pool/torch_artifact.h"
#include "pool/torch_model.h"
#include "protocol/tensor_file.h"
#include "serve/batching.h"

namespace mms {

namespace {
// An integer element of `t`, numerically (exact for every width).
int64_t IntAt(const Tensor& t, int64_t k) {
  switch (t.dtype) {
    case DType::kInt8: return t.as<int8_t>()[k];
    case DType::kUInt8: return t.as<uint8_t>()[k];
    case DType::kInt16: return t.as<int16_t>()[k];
    case DType::kInt32: return t.as<int32_t>()[k];
    default: return t.as<int64_t>()[k];
  }
}
void SetIntAt(Tensor& t, int64_t k, int64_t v) {
  auto put = [&](auto x) { std::memcpy(t.mutable_data() + k * static_cast<int64_t>(sizeof x), &x, sizeof x); };
  switch (t.dtype) {
    case DType::kInt8: return put(static_cast<int8_t>(v));
    case DType::kUInt8: return put(static_cast<uint8_t>(v));
    case DType::kInt16: return put(static_cast<int16_t>(v));
    case DType::kInt32: return put(static_cast<int32_t>(v));
    default: return put(v);
  }
}

// How far a varied copy moves integer inputs (token ids, indices, masks),
// strongest first; the check falls back to the next when the model refuses
// a copy (an id out of its table's range): the sample's values are the only
// ones known to be valid, and a weaker copy still checks the other inputs.
enum class Vary {
  kInputWide,    // each element the next larger value the whole input holds (the largest kept); one value: ±1
  kPerPosition,  // each element the next larger value its position holds across rows; one value: kept
  kFloatsOnly,   // integers as they are
};

// A copy of `t` whose values differ from the sample's: floats halved and
// moved (x/2 + 1/4, or x + 1 where that is x), bool flipped, integers as
// `how` says. Taking the next larger value changes the values as a multiset
// too (the smallest is gone), so a bag-of-words sum moves, which a rotation
// of the same values would not.
Tensor Varied(const Tensor& t, int64_t rows, Vary how) {
  const bool floating = t.dtype == DType::kFloat32 || t.dtype == DType::kFloat64 || t.dtype == DType::kFloat16 ||
                        t.dtype == DType::kBFloat16;
  const int64_t n = t.numel();
  if (floating || t.dtype == DType::kBool) {
    std::vector<double> v = TensorToDoubles(t);
    for (double& x : v) {
      if (t.dtype == DType::kBool) x = x != 0 ? 0 : 1;
      else if (!std::isfinite(x)) x = 0.5;  // (NaN stays NaN: a sample of NaNs would vary nothing)
      else x = x * 0.5 + 0.25 != x ? x * 0.5 + 0.25 : x + 1;
    }
    return TensorFromDoubles(t, v);
  }
  Tensor v = Tensor::Alloc(t.name, t.dtype, t.shape);
  std::memcpy(v.mutable_data(), t.data.get(), t.nbytes);
  if (how == Vary::kFloatsOnly || n == 0) return v;
  // Groups of elements drawing on one set of values: the whole input, or
  // each position within a row (flat index modulo the row's size).
  const int64_t stride = how == Vary::kInputWide || rows <= 0 ? 1 : n / rows;
  for (int64_t g = 0; g < stride; ++g) {
    std::vector<int64_t> distinct;
    for (int64_t k = g; k < n; k += stride) distinct.push_back(IntAt(t, k));
    std::sort(distinct.begin(), distinct.end());
    distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
    for (int64_t k = g; k < n; k += stride) {
      const int64_t x = IntAt(t, k);
      if (distinct.size() >= 2) {
        auto it = std::upper_bound(distinct.begin(), distinct.end(), x);
        SetIntAt(v, k, it != distinct.end() ? *it : x);
      } else if (how == Vary::kInputWide) {
        SetIntAt(v, k, x == 0 ? 1 : x > 0 ? x - 1 : x + 1);  // (0 takes 1: an unsigned or a mask stays in range)
      }
    }
  }
  return v;
}

// "" when `got` is `want` up to the rounding a different batch size may
// bring (another kernel, another summation order), else how they differ.
// Per element, by output dtype: |a - b| <= rtol |a| + atol s, the second
// term for elements that cancel to near 0, with s the output's typical
// magnitude (the median |a|: a masked fill of -1e9 or finfo.min in a few
// places must not widen it for all); integers and bools exactly; NaN only
// against NaN, an infinity only against itself. A fixed
// 1e-4 refused a float32 convolution whose outputs reach 5000 (its batch
// of one sums in another order: 1.5e-3 apart, 3e-7 of the value).
std::string RowsDiffer(const std::vector<Tensor>& want, const std::vector<Tensor>& got) {
  if (want.size() != got.size())
    return std::to_string(got.size()) + " outputs instead of " + std::to_string(want.size());
  for (const Tensor& w : want) {
    auto it = std::find_if(got.begin(), got.end(), [&](const Tensor& g) { return g.name == w.name; });
    if (it == got.end()) return "no output '" + w.name + "'";
    if (it->dtype != w.dtype || it->shape != w.shape)
      return "output '" + w.name + "' is " + it->Describe() + " instead of " + w.Describe();
    double rtol = 0, atol = 0;
    switch (w.dtype) {
      case DType::kFloat64: rtol = atol = 1e-9; break;
      case DType::kFloat32: rtol = 1e-4, atol = 1e-5; break;
      case DType::kFloat16: rtol = 4e-3, atol = 1e-3; break;   // 11-bit significand: 4 units in the last place
      case DType::kBFloat16: rtol = 3e-2, atol = 8e-3; break;  // 8-bit significand
      default: break;                                           // integers, bool: exact
    }
    const std::vector<double> a = TensorToDoubles(w), b = TensorToDoubles(*it);
    std::vector<double> mags;
    for (double x : a)
      if (std::isfinite(x)) mags.push_back(std::fabs(x));
    double scale = 0;
    if (!mags.empty()) {
      std::nth_element(mags.begin(), mags.begin() + static_cast<long>(mags.size() / 2), mags.end());
      scale = mags[mags.size() / 2];
    }
    for (size_t i = 0; i < a.size(); ++i) {
      if (a[i] == b[i] || (std::isnan(a[i]) && std::isnan(b[i]))) continue;
      const double d = std::fabs(a[i] - b[i]);  // (NaN, or infinite, against anything else: past any tolerance)
      if (std::isfinite(a[i]) && std::isfinite(b[i]) && d <= rtol * std::fabs(a[i]) + atol * scale) continue;
      char buf[200];
      std::snprintf(buf, sizeof buf, "output '%s' element %zu: %.9g instead of %.9g, past the %s tolerance (%g of the "
                    "value + %g of the output's median magnitude, %.6g)", w.name.c_str(), i, b[i], a[i],
                    DTypeName(w.dtype), rtol, atol, scale);
      return buf;
    }
  }
  return "";
}

// A model can be batched when each row's outputs do not depend on which other
// rows share its batch. Checked three ways on the sample: each row run alone
// against the whole sample; the sample twice, concatenated; and the sample
// next to a varied copy (see Varied), each half against itself run alone,
// which catches batch statistics such as x - x.mean(0) or x[:, :lengths.max()]
// even with a one-row sample, whatever the inputs' dtypes.
// `hm`: the module PackTorchScript loaded from the bytes it hashed.
Status CheckBatching(HostModel* hm, const std::string& sample) {
  auto tensors = ReadTensorFile(sample);
  if (!tensors.ok()) return tensors.status();
  std::vector<InputSpec> names;
  for (const auto& n : hm->model->input_names()) names.push_back({n, std::nullopt, std::nullopt});
  MMS_ASSIGN_OR_RETURN(auto in, MatchInputs(names, *tensors, "the model"));
  auto rows = BatchRows(in);
  if (!rows.ok()) return InvalidArgument("cannot batch: " + rows.status().message());
  // With no rows every comparison below holds: a model whose rows depend on
  // each other passed, and its callers were served each other's rows.
  if (*rows == 0)
    return InvalidArgument("cannot batch: its sample input has no rows (dim 0 is 0), so batching cannot be checked: "
                           "give a sample input with at least one row; register without --max-batch-size");
  MMS_ASSIGN_OR_RETURN(auto one, hm->model->Run(in));
  auto same = [](const std::vector<Tensor>& want, const std::vector<Tensor>& got, const std::string& how) {
    const std::string why = RowsDiffer(want, got);
    if (why.empty()) return Status::Ok();
    return InvalidArgument("cannot batch: a row's outputs change when it shares a batch (" + how + ": " + why +
                           "); register without --max-batch-size");
  };
  // Each row alone.
  std::vector<int64_t> ones(static_cast<size_t>(*rows), 1);
  auto one_rows = SplitRows(one, ones);
  if (!one_rows.ok()) return InvalidArgument("cannot batch: " + one_rows.status().message());
  MMS_ASSIGN_OR_RETURN(auto in_rows, SplitRows(in, ones));
  for (size_t i = 0; i < in_rows.size(); ++i) {
    auto alone = hm->model->Run(in_rows[i]);
    if (!alone.ok()) return InvalidArgument("cannot batch: one row alone fails: " + alone.status().message());
    MMS_RETURN_IF_ERROR(same((*one_rows)[i], *alone, "row " + std::to_string(i) + " alone"));
  }
  // Next to itself.
  auto twice = hm->model->Run(ConcatRows({&in, &in}));
  if (!twice.ok())
    return InvalidArgument("cannot batch: two samples concatenated along dim 0 fail: " + twice.status().message());
  auto split = SplitRows(*twice, {*rows, *rows});
  if (!split.ok()) return InvalidArgument("cannot batch: " + split.status().message());
  MMS_RETURN_IF_ERROR(same(one, (*split)[0], "next to a copy"));
  // Next to a varied copy: each input varied as strongly as the model accepts
  // (the others as in the sample), then all together; should the model
  // refuse that combination, floats and bools varied alone.
  auto same_bytes = [](const Tensor& a, const Tensor& b) {
    return a.nbytes == b.nbytes && std::memcmp(a.data.get(), b.data.get(), a.nbytes) == 0;
  };
  std::vector<Tensor> varied;
  for (size_t i = 0; i < in.size(); ++i) {
    Tensor chosen = in[i];
    for (Vary how : {Vary::kInputWide, Vary::kPerPosition, Vary::kFloatsOnly}) {
      Tensor v = Varied(in[i], *rows, how);
      if (same_bytes(v, in[i])) break;  // (weaker ones change nothing either)
      std::vector<Tensor> probe = in;
      probe[i] = v;
      if (!hm->model->Run(probe).ok()) continue;
      chosen = std::move(v);
      break;
    }
    varied.push_back(std::move(chosen));
  }
  auto alone = hm->model->Run(varied);
  if (!alone.ok()) {
    varied.clear();
    for (const Tensor& t : in) varied.push_back(Varied(t, *rows, Vary::kFloatsOnly));
    alone = hm->model->Run(varied);
  }
  if (!alone.ok())
    return InvalidArgument("cannot check batching: the model fails on every varied copy of the sample tried (floats "
                           "x/2 + 1/4, bool flipped, integers each the next larger value the sample holds, or as "
                           "they are): " + alone.status().message() + "; register without --max-batch-size");
  // Nothing varied (also after the fallback), the checks below would compare
  // the sample with itself and pass any model (rows mixed or not).
  bool any = false;
  for (size_t i = 0; i < in.size() && !any; ++i) any = !same_bytes(varied[i], in[i]);
  if (!any)
    return InvalidArgument("cannot check batching: no input of the sample could be varied (every copy tried either "
                           "equals the sample or the model refuses it), so rows mixed by the model would go unseen "
                           "(a sample whose values vary may do); register without --max-batch-size");
  auto both = hm->model->Run(ConcatRows({&in, &varied}));
  if (!both.ok())
    return InvalidArgument("cannot batch: the sample and a varied copy each run alone, but fail concatenated along "
                           "dim 0: " + both.status().message() + "; register without --max-batch-size");
  auto halves = SplitRows(*both, {*rows, *rows});
  if (!halves.ok()) return InvalidArgument("cannot batch: " + halves.status().message());
  MMS_RETURN_IF_ERROR(same(one, (*halves)[0], "next to other rows"));
  return same(*alone, (*halves)[1], "other rows next to the sample");
}
}  // namespace

int RunArtifactTool(int argc, char** argv) {
  CLI::App app{"mmsd inspect-artifact: check (and pack) a TorchScript artifact"};
  std::string path, pack_dir, sample;
  app.add_option("--path", path, "the TorchScript file")->required();
  app.add_option("--pack-dir", pack_dir, "write weights.safetensors and module.pt here");
  app.add_option("--sample-input", sample, "a tensor file (JSON or safetensors) to run once");
  int max_batch = 0;
  app.add_option("--max-batch-size", max_batch, "check that the model batches along dim 0 (needs --sample-input)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  if (max_batch > 0 && sample.empty()) {
    std::cerr << "--max-batch-size needs --sample-input to check batching\n";
    return 2;
  }
  // The batching check runs on the module packed (loaded from the bytes hashed), before its files are written.
  auto info = PackTorchScript(path, pack_dir, sample,
                              max_batch > 0 ? [&](HostModel* hm) { return CheckBatching(hm, sample); }
                                            : std::function<Status(HostModel*)>());
  if (!info.ok()) {
    std::cerr << info.status().message() << "\n";
    return info.status().code() == Code::kInvalidArgument || info.status().code() == Code::kNotFound ||
                   info.status().code() == Code::kCorrupt
               ? 2
               : 1;
  }
  std::cout << info->ToJson().dump() << "\n";
  return 0;
}

}  // namespace mms
