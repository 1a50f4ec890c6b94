// `mmsd inspect-artifact`: the registration-time check run by `mms model
// register` (the mms CLI does not link libtorch, so it asks mmsd). Loads the
// TorchScript archive, describes its forward() inputs and weights, runs the
// sample input when given, and writes the packed form when --pack-dir is set.
// Prints one JSON object on stdout. Exit: 0 ok, 2 not a usable artifact, 1 other.
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
// A model can be batched when each row's outputs do not depend on which other
// rows share its batch. Checked three ways on the sample: each row run alone
// against the whole sample; the sample twice, concatenated; and the sample
// next to a varied copy (float inputs halved), which catches batch statistics
// such as x - x.mean(0) even with a one-row sample.
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
  std::vector<Tensor> varied;
  for (const Tensor& t : in) {
    if (t.dtype != DType::kFloat32) {
      varied.push_back(t);
      continue;
    }
    Tensor v = Tensor::Alloc(t.name, t.dtype, t.shape);
    auto* dst = reinterpret_cast<float*>(v.mutable_data());
    for (int64_t k = 0; k < t.numel(); ++k) dst[k] = t.as<float>()[k] * 0.5f + 0.25f;
    varied.push_back(std::move(v));
  }
  for (const auto* other : {&in, &varied}) {
    auto both = hm->model->Run(ConcatRows({&in, other}));
    if (!both.ok()) return InvalidArgument("cannot batch: two samples concatenated along dim 0 fail: " + both.status().message());
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
