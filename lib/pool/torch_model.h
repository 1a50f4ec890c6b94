// TorchModel: a TorchScript module whose tensors are views into one buffer,
// and TorchLoader, which reads versions from disk into the host tier:
//
// * packed (registered by this mms): parse the weight-less module.pt (a few
//   KB) and read weights.safetensors into the host buffer with one
//   sequential read — the fast cold load;
// * plain TorchScript: torch::jit::load, then copy every tensor into one
//   host buffer (packing in memory) so promotion is still one copy.
//
// Errors: INVALID_ARGUMENT for a corrupt, truncated or non-TorchScript file
// (the load error's first line), IO for read failures, MODEL_ERROR when
// forward raises. Thread-safety: see Model.
#pragma once

#include "pool/model.h"

namespace mms {

class TorchLoader final : public Loader {
 public:
  Result<HostModel> Load(const Source& src, const HostAllocator& alloc) override;
  // A packed artifact's weights file must hold its header and `bytes` of data.
  Status Precheck(const Source& src, uint64_t bytes) override;
};

// Loads a plain TorchScript file and packs it into a buffer from `alloc`.
// `name` ("rec:3") prefixes errors; the path when empty.
Result<HostModel> LoadPlainTorchScript(const std::string& path, const HostAllocator& alloc,
                                       const std::string& name = "");
// The same from an archive's bytes in memory (`what` names them in
// messages): what was hashed and checked is what is loaded. The bytes are
// freed once the module is loaded, before its weights are copied.
Result<HostModel> LoadPlainTorchScriptBytes(std::string bytes, const std::string& what, const HostAllocator& alloc);
// Loads a packed directory (module.pt + weights.safetensors).
Result<HostModel> LoadPackedTorchScript(const std::string& dir, const HostAllocator& alloc,
                                        const std::string& name = "");

// libtorch's intra-op thread count for inference (0 leaves the default).
void ConfigureTorchThreads(int intra_op_threads);
// Makes libtorch run this thread's ops on this thread alone (OpenMP's
// per-thread team size), so a background thread — the shadow worker at idle
// priority — never wakes normal-priority intra-op workers.
void UseOneIntraOpThreadOnThisThread();

}  // namespace mms
