// AdapterModel: a LoRA adapter as the adapter pool holds it — its packed A
// and B weights in one buffer (host, or a device block) — and AdapterLoader,
// which reads a registered adapter's packed file with one sequential read.
// The adapter pool is a ModelPool of these: its own tiers (device, host,
// disk), byte budgets, eviction policy, pins and single-flight loads.
//
// An adapter does not run alone: Run is FAILED_PRECONDITION; its base runs it
// (Model::RunWithAdapters) through weights().
//
// Thread-safety: as Model — weights() is stable while a handle is held (the
// pool rebinds only models with no handles out).
#pragma once

#include <memory>
#include <string>

#include "lora/adapter.h"
#include "pool/model.h"

namespace mms {

class AdapterModel final : public Model {
 public:
  AdapterModel(std::string ref, AdapterInfo info, WeightLayout layout);
  const std::vector<std::string>& input_names() const override { return no_inputs_; }
  const WeightLayout& layout() const override { return layout_; }
  Status Bind(std::shared_ptr<Buffer> keep, const std::string& device) override;
  Result<std::vector<Tensor>> Run(const std::vector<Tensor>& inputs) override;
  const std::string& device() const override { return weights_.device; }
  Status SaveWithoutWeights(const std::string& path) override;

  const AdapterInfo& info() const { return info_; }
  const LoraWeights& weights() const { return weights_; }

 private:
  const std::string ref_;
  const AdapterInfo info_;
  const WeightLayout layout_;
  const std::vector<std::string> no_inputs_;
  std::shared_ptr<Buffer> bound_;
  LoraWeights weights_;
};

class AdapterLoader final : public Loader {
 public:
  // Reads <packed_dir>/adapter.safetensors.
  Result<HostModel> Load(const Source& src, const HostAllocator& alloc) override;
};

}  // namespace mms
