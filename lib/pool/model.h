// The pool's view of a model, free of libtorch: a version's weights live in
// one contiguous buffer described by a WeightLayout, and a Model is the
// runnable module whose tensors are views into whichever buffer it is bound
// to (the host buffer after a load, a device arena block after promotion).
// The Loader knows *how* to load (TorchScript packed or plain); the ModelPool
// decides *when* (tiers, budgets, eviction) — as TF Serving separates its
// Loader from its Manager. Tests drive the pool with fake loaders.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "protocol/input_spec.h"
#include "protocol/tensor.h"

namespace mms {

// A block of memory: host (pageable or pinned) or on a device.
// Thread-safety: immutable handle; the bytes are written by whoever owns it.
class Buffer {
 public:
  virtual ~Buffer() = default;
  virtual uint8_t* data() const = 0;
  virtual size_t size() const = 0;
  virtual bool pinned() const { return false; }
};

// 64-byte aligned pageable host memory (page aligned from 256 KiB: mapped
// on its own, its pages go back to the system when it is freed). Null when
// the system has no memory for it.
std::shared_ptr<Buffer> AllocateHost(size_t bytes);
// Allocates host memory for the host tier (pinned when the build has CUDA
// and a GPU is in use).
using HostAllocator = std::function<Result<std::shared_ptr<Buffer>>(size_t bytes)>;

struct WeightEntry {
  std::string name;  // qualified attribute name, e.g. "layers.0.weight"
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;
  uint64_t offset = 0;  // from the buffer start, 64-byte aligned
  uint64_t nbytes = 0;
};

struct WeightLayout {
  std::vector<WeightEntry> entries;
  std::map<std::string, std::string> aliases;  // attribute name → entry name it shares
  uint64_t total_bytes = 0;
};

// One LoRA adapter's weights where the pool placed them (lib/lora's
// AdapterModel provides them; a base model runs them). Per target module:
// A [rank, in] and B [out, rank] of `dtype`; the module's weight becomes
// W + scale · B · A. Pointers stay valid while the adapter's handle is held.
struct LoraTarget {
  std::string module;  // "layers.0.q_proj"
  const uint8_t* a = nullptr;
  const uint8_t* b = nullptr;
  int64_t rank = 0, in = 0, out = 0;
};
struct LoraWeights {
  std::string ref;      // "cust-a:1", for messages
  double scale = 1;     // lora_alpha / r (or / sqrt(r) with rsLoRA)
  DType dtype = DType::kFloat32;
  std::string device;   // where a and b live
  std::vector<LoraTarget> targets;
};
// A share of a batch: `rows` consecutive rows run with `adapter` (null: the base alone).
struct AdapterRows {
  const LoraWeights* adapter = nullptr;
  int64_t rows = 0;
};

// A runnable instance of one version.
// Thread-safety: Run may be called concurrently; Bind must not overlap Run
// (the pool only rebinds a model with no handles out).
class Model {
 public:
  Model() : instance_id_(NextInstanceId()) {}
  virtual ~Model() = default;
  // Unique to this object for the life of the process: a model loaded again
  // is another instance even at the address a freed one had (the
  // scheduler's warm-up measures go by instance).
  uint64_t instance_id() const { return instance_id_; }
  virtual const std::vector<std::string>& input_names() const = 0;
  virtual const WeightLayout& layout() const = 0;
  // Points every weight at `base` (layout().total_bytes, same layout) on
  // `device` ("cpu", "cuda:0", ...). `keep` is held while bound.
  virtual Status Bind(std::shared_ptr<Buffer> keep, const std::string& device) = 0;
  // Inputs in forward() order (MatchInputs). Outputs are named "output",
  // "output_0".., or the keys of a returned dict. MODEL_ERROR when forward raises.
  virtual Result<std::vector<Tensor>> Run(const std::vector<Tensor>& inputs) = 0;
  // Runs a batch whose rows use different adapters (`parts`, in row order,
  // summing to the inputs' rows). A base whose forward() takes stacked
  // adapter weights (lora_idx, lora_scale, lora_a_<m>, lora_b_<m>: see
  // docs/architecture.md) runs the whole mixed batch at once; any other base
  // runs each adapter's rows with the adapter's delta applied out of place to
  // the targeted weights (the base's own weights never change); such a base
  // takes one adapter per call and ignores `rows` (inputs need no dim 0).
  // Models that cannot: FAILED_PRECONDITION.
  virtual Result<std::vector<Tensor>> RunWithAdapters(const std::vector<Tensor>& inputs,
                                                      const std::vector<AdapterRows>& parts) {
    (void)inputs;
    (void)parts;
    return Status(Code::kFailedPrecondition, "this model cannot run LoRA adapters");
  }
  // One request with one adapter on all of it: a plain base runs it
  // whatever its shape; a base taking stacked weights needs rows first (its
  // inputs' dim 0, which its own check asks for). Predicts and shadows alike.
  Result<std::vector<Tensor>> RunWithAdapter(const std::vector<Tensor>& inputs, const LoraWeights* adapter) {
    const int64_t rows = inputs.empty() || inputs.front().shape.empty() ? 0 : inputs.front().shape[0];
    return RunWithAdapters(inputs, {AdapterRows{adapter, rows}});
  }
  // The modules whose adapter weights forward() takes stacked (empty for a
  // base that does not take them).
  virtual std::vector<std::string> stacked_lora_modules() const { return {}; }
  // The device it is bound to.
  virtual const std::string& device() const = 0;
  // Saves the module with every weight emptied (the packed format's
  // module.pt); the weights stay bound.
  virtual Status SaveWithoutWeights(const std::string& path) = 0;

 private:
  static uint64_t NextInstanceId() {
    static std::atomic<uint64_t> next{1};
    return next.fetch_add(1, std::memory_order_relaxed);
  }
  const uint64_t instance_id_;
};

// A version loaded into the host tier.
struct HostModel {
  std::shared_ptr<Buffer> weights;  // layout.total_bytes
  std::unique_ptr<Model> model;     // bound to `weights` on "cpu"
};

// How a version gets from disk into host memory.
class Loader {
 public:
  virtual ~Loader() = default;
  struct Source {
    std::string ref;            // "rec:3", for messages
    std::string artifact_path;  // plain TorchScript file
    std::string packed_dir;     // "" when not packed
  };
  virtual Result<HostModel> Load(const Source& src, const HostAllocator& alloc) = 0;
  // A cheap look (no weights read) before the pool evicts anything to make
  // room: an artifact that is plainly damaged (truncated) fails here, and no
  // warm model is thrown out for a load that cannot succeed. `bytes`: the
  // weight bytes registered for it. Default: nothing to check.
  virtual Status Precheck(const Source& src, uint64_t bytes) {
    (void)src;
    (void)bytes;
    return Status::Ok();
  }
};

}  // namespace mms
