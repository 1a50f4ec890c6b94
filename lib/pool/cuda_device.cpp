// CUDA devices: compiled only when the libtorch found has CUDA.
// The weight arena is one cudaMalloc of the whole budget; host-tier buffers
// are pinned (cudaHostAlloc); promotion is one cudaMemcpyAsync on a
// non-blocking copy stream, so it overlaps other models' kernels on the
// compute stream instead of waiting behind them.
#include <cuda_runtime.h>

#include <algorithm>

#include "pool/device.h"

namespace mms {
namespace {

Status CudaError(cudaError_t e, const std::string& what) {
  return Status(e == cudaErrorMemoryAllocation ? Code::kPoolFull : Code::kInternal,
                what + ": " + cudaGetErrorString(e));
}

class CudaDevice final : public Device {
 public:
  CudaDevice(int index, uint8_t* base, uint64_t budget, cudaStream_t copy)
      : Device("cuda:" + std::to_string(index)), index_(index), base_(base), copy_(copy) {
    arena_ = std::make_unique<DeviceArena>(base, budget);
  }
  ~CudaDevice() override {
    cudaSetDevice(index_);
    cudaStreamDestroy(copy_);
    cudaFree(base_);
  }
  std::string torch_device() const override { return name_; }
  std::string kind() const override { return "cuda"; }
  uint64_t memory_total() const override {
    size_t free = 0, total = 0;
    cudaSetDevice(index_);
    cudaMemGetInfo(&free, &total);
    return total;
  }
  uint64_t memory_free() const override {
    size_t free = 0, total = 0;
    cudaSetDevice(index_);
    cudaMemGetInfo(&free, &total);
    return free;
  }
  Status CopyIn(uint8_t* dst, const uint8_t* src, uint64_t n) override {
    cudaSetDevice(index_);
    // Waited for on an event with blocking sync: the loading thread sleeps
    // through the copy instead of spinning in the driver beside the threads
    // launching other models' kernels (cudaStreamSynchronize spins by
    // default). One event per copy: concurrent loads never wait on another's.
    cudaEvent_t done = nullptr;
    cudaError_t e = cudaEventCreateWithFlags(&done, cudaEventBlockingSync | cudaEventDisableTiming);
    if (e == cudaSuccess) e = cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, copy_);
    if (e == cudaSuccess) e = cudaEventRecord(done, copy_);
    if (e == cudaSuccess) e = cudaEventSynchronize(done);
    if (done) cudaEventDestroy(done);
    if (e != cudaSuccess) return CudaError(e, "copying weights to " + name_);
    return Status::Ok();
  }

 private:
  int index_;
  uint8_t* base_;
  cudaStream_t copy_;
};

class PinnedBuffer final : public Buffer {
 public:
  PinnedBuffer(uint8_t* p, size_t n) : p_(p), n_(n) {}
  ~PinnedBuffer() override { cudaFreeHost(p_); }
  uint8_t* data() const override { return p_; }
  size_t size() const override { return n_; }
  bool pinned() const override { return true; }

 private:
  uint8_t* p_;
  size_t n_;
};

}  // namespace

int CudaDeviceCount() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) return 0;
  return n;
}

Result<std::unique_ptr<Device>> CreateCudaDevice(int index, uint64_t budget) {
  cudaError_t e = cudaSetDevice(index);
  if (e != cudaSuccess) return CudaError(e, "cudaSetDevice(" + std::to_string(index) + ")");
  if (budget == 0) {
    size_t free = 0, total = 0;
    cudaMemGetInfo(&free, &total);
    budget = static_cast<uint64_t>(free * 0.85);
  }
  budget = (budget + DeviceArena::kAlignment - 1) / DeviceArena::kAlignment * DeviceArena::kAlignment;
  void* base = nullptr;
  e = cudaMalloc(&base, budget);
  if (e != cudaSuccess) return CudaError(e, "reserving the " + std::to_string(budget) + "-byte weight arena on cuda:" + std::to_string(index));
  cudaStream_t copy;
  e = cudaStreamCreateWithFlags(&copy, cudaStreamNonBlocking);
  if (e != cudaSuccess) {
    cudaFree(base);
    return CudaError(e, "creating the copy stream");
  }
  return std::unique_ptr<Device>(new CudaDevice(index, static_cast<uint8_t*>(base), budget, copy));
}

HostAllocator PinnedHostAllocator() {
  return [](size_t n) -> Result<std::shared_ptr<Buffer>> {
    void* p = nullptr;
    cudaError_t e = cudaHostAlloc(&p, std::max<size_t>(n, 1), cudaHostAllocPortable);
    if (e != cudaSuccess) return CudaError(e, "pinning " + std::to_string(n) + " bytes of host memory");
    return std::shared_ptr<Buffer>(std::make_shared<PinnedBuffer>(static_cast<uint8_t*>(p), n));
  };
}

}  // namespace mms
