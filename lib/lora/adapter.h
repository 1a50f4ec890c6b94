// LoRA adapters in the PEFT format, checked against their base version at
// registration — never at serving time — and packed for the adapter pool.
//
// A PEFT adapter directory holds adapter_config.json (r, lora_alpha,
// target_modules, ...) and adapter_model.safetensors with, per adapted
// module M, "base_model.model.M.lora_A.weight" [r, in] and
// "base_model.model.M.lora_B.weight" [out, r]. Serving replaces M's weight W
// [out, in] by W + scale · B · A, scale = lora_alpha / r (lora_alpha / sqrt(r)
// with use_rslora).
//
// The base's side comes from its packed weights (every tensor's name, dtype
// and shape, torch-free) and, for a base whose forward() takes stacked
// adapter weights, the modules it takes them for.
//
// No libtorch (the CLI links this). Thread-safety: stateless functions.
// Errors: INVALID_ARGUMENT naming the file, tensor or module and what to do.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/status.h"
#include "protocol/tensor.h"

namespace mms {

struct AdapterTargetInfo {
  std::string module;  // "layers.0.q_proj"
  int64_t in = 0, out = 0;
};

// What the registry records about an adapter (versions.lora_json).
struct AdapterInfo {
  int64_t rank = 0;
  double alpha = 0;
  bool rslora = false;
  double scale = 0;
  DType dtype = DType::kFloat32;
  std::vector<AdapterTargetInfo> targets;  // sorted by module
  uint64_t bytes = 0;                      // A and B of every target

  nlohmann::json ToJson() const;
  static Result<AdapterInfo> FromJson(const nlohmann::json& j);
};

// What a base version offers adapters.
struct LoraBase {
  std::string ref;  // "llm:3", for messages
  struct Linear {
    DType dtype = DType::kFloat32;
    int64_t out = 0, in = 0;
  };
  std::map<std::string, Linear> linears;  // module path → its 2-D "<module>.weight"
  std::vector<std::string> stacked;       // modules forward() takes stacked weights for (empty: any)
};

// Reads the base's packed weights header (`packed_weights`: its
// weights.safetensors); `stacked` from the base's registry record.
Result<LoraBase> ReadLoraBase(const std::string& ref, const std::string& packed_weights,
                              const std::vector<std::string>& stacked);

struct CheckedAdapter {
  AdapterInfo info;
  std::vector<Tensor> tensors;  // "<module>.lora_A" [r, in], "<module>.lora_B" [out, r], by module
  std::string weights_path;     // DIR/adapter_model.safetensors
};

// Reads DIR/adapter_config.json and DIR/adapter_model.safetensors and checks
// them against `base`: the rank agrees with every tensor, every target module
// exists in the base (and is one it takes stacked, for such a base), shapes
// fit the base's weights, the dtype is the base's, every value is finite.
Result<CheckedAdapter> CheckAdapter(const std::string& dir, const LoraBase& base);

// The packed adapter in a version's packed dir (safetensors; its metadata
// "mms.adapter" holds AdapterInfo as JSON).
constexpr const char* kAdapterWeightsFile = "adapter.safetensors";
Status WritePackedAdapter(const std::string& path, const CheckedAdapter& a);

}  // namespace mms
