// Devices the pool places model weights on. A Device owns its weight arena
// (the whole budget, reserved once) and knows how to copy host bytes in.
//
//   cpu          the host itself: a model "on" it is served straight from its
//                host-tier buffer (zero-copy promotion); the device budget
//                still bounds how many bytes are kept ready to serve, so a
//                CPU-only machine runs the same tier logic
//   cpu:N        a simulated device in host memory with its own arena and a
//                real copy on promotion: the GPU code path without a GPU
//                (tests and benchmarks use several)
//   cuda:N       a GPU (only in builds whose libtorch has CUDA): the arena
//                is one cudaMalloc, host buffers are pinned, promotion is one
//                cudaMemcpyAsync on a dedicated copy stream
//
// Thread-safety: all methods are safe to call concurrently.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "pool/arena.h"
#include "pool/model.h"

namespace mms {

class Device {
 public:
  virtual ~Device() = default;
  const std::string& name() const { return name_; }
  // The device string a Model binds to ("cpu", "cuda:0").
  virtual std::string torch_device() const = 0;
  virtual std::string kind() const = 0;  // "cpu" or "cuda"
  virtual uint64_t memory_total() const = 0;
  virtual uint64_t memory_free() const = 0;
  // Copies `n` host bytes to device memory `dst` and waits for the copy.
  virtual Status CopyIn(uint8_t* dst, const uint8_t* src, uint64_t n) = 0;
  // True when weights on this device are the host-tier buffer itself
  // (nothing to allocate or copy on promotion).
  virtual bool zero_copy() const { return false; }
  DeviceArena& arena() { return *arena_; }
  uint64_t budget() const { return arena_->capacity(); }

 protected:
  explicit Device(std::string name) : name_(std::move(name)) {}
  std::string name_;
  std::unique_ptr<DeviceArena> arena_;
};

// Creates a device by name with a weight budget ("auto" budget = 0 → a
// default: a quarter of RAM for cpu, 85% of free memory for cuda).
Result<std::unique_ptr<Device>> CreateDevice(const std::string& name, uint64_t budget);
// Whether CreateDevice(name) could create it on this host and build (a CUDA
// build, an existing device), reserving nothing: INVALID_ARGUMENT saying why.
Status CheckDevice(const std::string& name);
// The devices "auto" means: every CUDA device, else ["cpu"].
std::vector<std::string> AutoDevices();
// Host-tier memory: pinned when a CUDA device is in use, else pageable.
HostAllocator MakeHostAllocator(bool pinned);
// Whether this build can drive CUDA devices.
bool CudaBuild();

// Host memory as the /proc/meminfo kernel reports it.
uint64_t HostMemoryTotal();
uint64_t HostMemoryAvailable();

}  // namespace mms
