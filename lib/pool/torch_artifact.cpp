#include "pool/torch_artifact.h"

#include "core/hash.h"

#include <cstdio>

#include "core/paths.h"
#include "pool/archive_check.h"
#include "pool/torch_model.h"
#include "protocol/tensor_file.h"

namespace mms {

nlohmann::json ArtifactInfo::ToJson() const {
  nlohmann::json j = {{"inputs", InputSpecsToJson(inputs)}, {"weight_bytes", weight_bytes}, {"tensors", tensors}, {"packed", packed}};
  if (!lora_stacked.empty()) j["lora_stacked"] = lora_stacked;
  if (!sha256.empty()) j["sha256"] = sha256;
  if (file_bytes) j["file_bytes"] = file_bytes;
  return j;
}

namespace {
HostAllocator Pageable() {
  return [](size_t n) -> Result<std::shared_ptr<Buffer>> {
    auto b = AllocateHost(n);
    if (!b) return Status(Code::kPoolFull, "out of host memory allocating " + std::to_string(n) + " bytes");
    return b;
  };
}

ArtifactInfo Describe(const HostModel& hm) {
  ArtifactInfo info;
  for (const auto& n : hm.model->input_names()) info.inputs.push_back({n, std::nullopt, std::nullopt});
  for (const auto& e : hm.model->layout().entries) info.weight_bytes += e.nbytes;
  info.tensors = hm.model->layout().entries.size();
  info.lora_stacked = hm.model->stacked_lora_modules();
  return info;
}

// Runs forward on the sample and records its dtypes and shapes in `info`.
Status ApplySample(HostModel& hm, const std::string& sample_path, ArtifactInfo* info) {
  auto tensors = ReadTensorFile(sample_path);
  if (!tensors.ok()) return InvalidArgument("sample input: " + tensors.status().message());
  std::vector<InputSpec> names;
  for (const auto& n : hm.model->input_names()) names.push_back({n, std::nullopt, std::nullopt});
  auto ordered = MatchInputs(names, *tensors, "the model");
  if (!ordered.ok()) return InvalidArgument("sample input " + sample_path + ": " + ordered.status().message());
  auto out = hm.model->Run(*ordered);
  if (!out.ok()) return InvalidArgument("the model fails on its sample input " + sample_path + ": " + out.status().message());
  for (size_t i = 0; i < ordered->size(); ++i) {
    info->inputs[i].dtype = (*ordered)[i].dtype;
    info->inputs[i].shape = (*ordered)[i].shape;
  }
  return Status::Ok();
}
}  // namespace

Result<ArtifactInfo> InspectTorchScript(const std::string& path) {
  MMS_ASSIGN_OR_RETURN(HostModel hm, LoadPlainTorchScript(path, Pageable()));
  return Describe(hm);
}

Status CheckSampleInput(const std::string& artifact, const std::string& sample_path) {
  MMS_ASSIGN_OR_RETURN(HostModel hm, LoadPlainTorchScript(artifact, Pageable()));
  ArtifactInfo info = Describe(hm);
  return ApplySample(hm, sample_path, &info);
}

Result<ArtifactInfo> PackTorchScript(const std::string& path, const std::string& dst_dir,
                                     const std::string& sample_path, const std::function<Status(HostModel*)>& check) {
  // Read once: the bytes hashed and checked are the bytes loaded and packed,
  // whatever writes the file meanwhile (the caller compares the hash with
  // its own).
  MMS_ASSIGN_OR_RETURN(std::string bytes, ReadFile(path));
  const std::string sha256 = Sha256Hex(bytes);
  const uint64_t file_bytes = bytes.size();
  MMS_RETURN_IF_ERROR(CheckArchiveCrcs(bytes, path));
  MMS_ASSIGN_OR_RETURN(HostModel hm, LoadPlainTorchScriptBytes(std::move(bytes), path, Pageable()));
  ArtifactInfo info = Describe(hm);
  info.sha256 = sha256;
  info.file_bytes = file_bytes;
  if (!sample_path.empty()) MMS_RETURN_IF_ERROR(ApplySample(hm, sample_path, &info));
  if (check) MMS_RETURN_IF_ERROR(check(&hm));
  if (dst_dir.empty()) return info;
  MMS_RETURN_IF_ERROR(MakeDirs(dst_dir, 0755));
  // Tensor views into the host buffer, in layout order, written 64-aligned:
  // the offsets in the file then equal the layout's.
  const WeightLayout& layout = hm.model->layout();
  std::vector<Tensor> views;
  for (const auto& e : layout.entries) {
    Tensor t;
    t.name = e.name;
    t.dtype = e.dtype;
    t.shape = e.shape;
    t.nbytes = e.nbytes;
    t.data = std::shared_ptr<const uint8_t>(hm.weights, hm.weights->data() + e.offset);
    views.push_back(std::move(t));
  }
  // The weight-less module first: its checksum goes into the weights' header,
  // so a load checks both files (LoadPackedTorchScript).
  const std::string module_path = JoinPath(dst_dir, kPackedModuleFile);
  MMS_RETURN_IF_ERROR(hm.model->SaveWithoutWeights(module_path));
  MMS_ASSIGN_OR_RETURN(std::string module_bytes, ReadFile(module_path));
  Xxh3 module_sum;
  module_sum.Update(module_bytes.data(), module_bytes.size());
  std::map<std::string, std::string> meta{
      {"format", kPackedFormat}, {"source", path}, {kPackedModuleChecksumKey, module_sum.Hex()}};
  for (const auto& [alias, target] : layout.aliases) meta["alias:" + alias] = target;
  MMS_RETURN_IF_ERROR(WriteSafetensorsFile(JoinPath(dst_dir, kPackedWeightsFile), views, meta, 64, /*checksum=*/true));
  info.packed = true;
  return info;
}

}  // namespace mms
