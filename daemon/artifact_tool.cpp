// `mmsd inspect-artifact`: the registration-time check run by `mms model
// register` (the mms CLI does not link libtorch, so it asks mmsd). Loads the
// TorchScript archive, describes its forward() inputs and weights, runs the
// sample input when given, and writes the packed form when --pack-dir is set.
// Prints one JSON object on stdout. Exit: 0 ok, 2 not a usable artifact, 1 other.
#include <algorithm>
#include <cstring>
#include <string_view>
#include <iostream>

#include <CLI/CLI.hpp>

#include "artifact_tool.h"
#include "pool/torch_artifact.h"
#include "pool/torch_model.h"
#include "protocol/tensor_file.h"
#include "rollout/compare.h"
#include "serve/batching.h"

namespace mms {

namespace {
// A copy of `t` whose values differ from the sample's while staying values the
// model accepts wherever the sample's are: floats halved and moved (x/2 + 1/4);
// bool flipped; integers (token ids, indices) keep to the sample's own values,
// each element taking the next larger one the input holds (the largest stays),
// so an id stays in the vocabulary and the values change as a multiset too
// (the smallest is gone: a rotation would leave a bag-of-words sum as it
// was); an integer input holding one value throughout takes its neighbour
// toward zero (0 takes 1).
Tensor Varied(const Tensor& t) {
  const bool floating = t.dtype == DType::kFloat32 || t.dtype == DType::kFloat64 || t.dtype == DType::kFloat16 ||
                        t.dtype == DType::kBFloat16;
  if (!floating && t.dtype != DType::kBool) {
    // Exact for every integer width: the values are ordered by their bytes
    // (any total order will do: all that matters is that the smallest goes).
    const size_t es = DTypeSize(t.dtype);
    const auto* b = reinterpret_cast<const char*>(t.data.get());
    std::vector<std::string> distinct;
    for (size_t k = 0; k + es <= t.nbytes; k += es) distinct.emplace_back(b + k, es);
    std::sort(distinct.begin(), distinct.end());
    distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
    if (distinct.size() >= 2) {
      Tensor v = Tensor::Alloc(t.name, t.dtype, t.shape);
      for (size_t k = 0; k + es <= t.nbytes; k += es) {
        auto it = std::lower_bound(distinct.begin(), distinct.end(), std::string_view(b + k, es));
        const std::string& next = std::next(it) != distinct.end() ? *std::next(it) : *it;
        std::memcpy(v.mutable_data() + k, next.data(), es);
      }
      return v;
    }
  }
  std::vector<double> v = TensorToDoubles(t);
  for (double& x : v) {
    if (floating) x = x * 0.5 + 0.25;
    else if (t.dtype == DType::kBool) x = x != 0 ? 0 : 1;
    else x = x == 0 ? 1 : x > 0 ? x - 1 : x + 1;
  }
  return TensorFromDoubles(t, v);
}

// A model can be batched when each row's outputs do not depend on which other
// rows share its batch. Checked three ways on the sample: each row run alone
// against the whole sample; the sample twice, concatenated; and the sample
// next to a varied copy (every input varied, see Varied), which catches batch
// statistics such as x - x.mean(0) even with a one-row sample, whatever the
// inputs' dtypes.
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
  // An input the copy leaves unchanged would hide rows mixed through it.
  std::vector<Tensor> varied;
  for (const Tensor& t : in) {
    varied.push_back(Varied(t));
    const Tensor& v = varied.back();
    if (t.nbytes > 0 && std::memcmp(v.data.get(), t.data.get(), t.nbytes) == 0)
      return InvalidArgument("cannot check batching: the sample's input '" + t.name +
                             "' holds one value throughout and no varied copy of it can be made (its values are "
                             "needed to tell rows apart); give a sample input whose '" + t.name +
                             "' holds at least two distinct values, or register without --max-batch-size");
  }
  MMS_ASSIGN_OR_RETURN(auto one, hm->model->Run(in));
  auto same = [](const std::vector<Tensor>& want, const std::vector<Tensor>& got, const std::string& how) {
    OutputComparison c = CompareOutputs(want, got, 1e-4);
    if (!c.diverged) return Status::Ok();
    return InvalidArgument("cannot batch: a row's outputs change when it shares a batch (" + how + ": " + c.reason +
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
  // Next to itself and next to a varied copy.
  for (const auto* other : {&in, &varied}) {
    auto both = hm->model->Run(ConcatRows({&in, other}));
    if (!both.ok() && other == &in)
      return InvalidArgument("cannot batch: two samples concatenated along dim 0 fail: " + both.status().message());
    if (!both.ok())
      return InvalidArgument("cannot check batching: the sample next to a varied copy of itself fails (floats x/2 + 1/4, "
                             "bool flipped, integers each the next larger value the input holds or, holding one "
                             "value, moved one toward 0): " + both.status().message() +
                             "; give a sample input whose integer inputs hold at least two distinct values each, or "
                             "register without --max-batch-size");
    auto split = SplitRows(*both, {*rows, *rows});
    if (!split.ok()) return InvalidArgument("cannot batch: " + split.status().message());
    MMS_RETURN_IF_ERROR(same(one, (*split)[0], other == &in ? "next to a copy" : "next to other rows"));
  }
  return Status::Ok();
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
