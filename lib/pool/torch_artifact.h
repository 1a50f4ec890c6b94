// Checking and packing TorchScript artifacts at registration.
//
// Pack writes a version's weights as one aligned contiguous file
// (weights.safetensors: every tensor attribute of the module, recursively,
// 64-byte aligned) beside a weight-less copy of the module (module.pt, its
// tensors emptied), so a cold load is one sequential read plus a tiny parse
// (see PackedModel in torch_model.h). Tensors shared by several attributes
// are stored once; the metadata maps the other names to it ("alias:NAME").
//
// Errors: INVALID_ARGUMENT when the file is not a loadable TorchScript
// archive, has no forward(), or forward takes something other than tensors;
// IO for filesystem failures. Thread-safety: stateless functions.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/status.h"
#include "pool/model.h"
#include "protocol/input_spec.h"

namespace mms {

struct ArtifactInfo {
  std::vector<InputSpec> inputs;    // forward() arguments after self (dtype/shape from the sample)
  uint64_t weight_bytes = 0;        // unique tensor bytes (params, buffers, tensor attributes)
  size_t tensors = 0;
  bool packed = false;
  std::vector<std::string> lora_stacked;  // modules whose adapter weights forward() takes stacked
  std::string sha256;               // PackTorchScript: of the bytes it read, loaded and packed
  uint64_t file_bytes = 0;          // and their count
  nlohmann::json ToJson() const;
};

// Loads the archive on CPU and describes it.
Result<ArtifactInfo> InspectTorchScript(const std::string& path);
// Reads `path` once, checks its archive's CRC-32s (CORRUPT when damaged) and
// hashes it (SHA-256, in the result), and inspects what it read; `check`,
// when given, runs on the module loaded (its error is returned, nothing
// written); with `sample_path` runs forward once on that tensor file (the
// version's warm-up input must work at registration) and records its dtypes
// and shapes; with `dst_dir` writes <dst_dir>/weights.safetensors and
// <dst_dir>/module.pt.
Result<ArtifactInfo> PackTorchScript(const std::string& path, const std::string& dst_dir,
                                     const std::string& sample_path = "",
                                     const std::function<Status(HostModel*)>& check = {});
// Runs forward once on the sample inputs.
Status CheckSampleInput(const std::string& artifact, const std::string& sample_path);

constexpr const char* kPackedWeightsFile = "weights.safetensors";
constexpr const char* kPackedModuleFile = "module.pt";
// In the packed weights' metadata: the XXH3-64 of module.pt, checked at load.
constexpr const char* kPackedModuleChecksumKey = "mms.module_xxh3_64";
constexpr const char* kPackedFormat = "mms-packed-1";

}  // namespace mms
