#include "pool/device.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "core/version.h"

namespace mms {

namespace {
uint64_t MemInfo(const std::string& key) {
  std::ifstream in("/proc/meminfo");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ss(line);
    std::string k;
    uint64_t kb = 0;
    ss >> k >> kb;
    if (k == key + ":") return kb * 1024;
  }
  return 0;
}

class CpuDevice final : public Device {
 public:
  // `base` null: the zero-copy host device ("cpu"); the arena only keeps the books.
  CpuDevice(std::string name, uint8_t* base, uint64_t budget) : Device(std::move(name)), base_(base) {
    arena_ = std::make_unique<DeviceArena>(base, budget);
  }
  bool zero_copy() const override { return base_ == nullptr; }
  ~CpuDevice() override { std::free(base_); }
  std::string torch_device() const override { return "cpu"; }
  std::string kind() const override { return "cpu"; }
  uint64_t memory_total() const override { return HostMemoryTotal(); }
  uint64_t memory_free() const override { return HostMemoryAvailable(); }
  Status CopyIn(uint8_t* dst, const uint8_t* src, uint64_t n) override {
    std::memcpy(dst, src, n);
    return Status::Ok();
  }

 private:
  uint8_t* base_;
};
}  // namespace

uint64_t HostMemoryTotal() { return MemInfo("MemTotal"); }
uint64_t HostMemoryAvailable() { return MemInfo("MemAvailable"); }

bool CudaBuild() { return MMS_WITH_CUDA_BUILD == 1; }

#if MMS_WITH_CUDA_BUILD
// cuda_device.cpp
Result<std::unique_ptr<Device>> CreateCudaDevice(int index, uint64_t budget);
int CudaDeviceCount();
HostAllocator PinnedHostAllocator();
#endif

Result<std::unique_ptr<Device>> CreateDevice(const std::string& name, uint64_t budget) {
  if (name == "cpu" || name.rfind("cpu:", 0) == 0) {
    MMS_RETURN_IF_ERROR(CheckDevice(name));
    if (budget == 0) budget = std::max<uint64_t>(HostMemoryTotal() / 4, 256ull << 20);
    if (name == "cpu") return std::unique_ptr<Device>(new CpuDevice(name, nullptr, budget));
    // Reserve the region once; pages are touched only as weights land.
    void* p = std::aligned_alloc(DeviceArena::kAlignment, (budget + DeviceArena::kAlignment - 1) /
                                                              DeviceArena::kAlignment * DeviceArena::kAlignment);
    if (!p) return Status(Code::kPoolFull, "cannot reserve " + std::to_string(budget) + " bytes for device " + name);
    return std::unique_ptr<Device>(new CpuDevice(name, static_cast<uint8_t*>(p), budget));
  }
  if (name.rfind("cuda:", 0) == 0) {
    MMS_RETURN_IF_ERROR(CheckDevice(name));
#if MMS_WITH_CUDA_BUILD
    return CreateCudaDevice(std::atoi(name.c_str() + 5), budget);
#endif
  }
  return InvalidArgument("unknown device '" + name + "'; use \"auto\", cpu, cpu:N or cuda:N");
}

Status CheckDevice(const std::string& name) {
  if (name == "cpu" || name.rfind("cpu:", 0) == 0) {
    for (size_t i = 4; i < name.size(); ++i)
      if (name[i] < '0' || name[i] > '9') return InvalidArgument("invalid device '" + name + "'; use cpu, cpu:N or cuda:N");
    return Status::Ok();
  }
  if (name.rfind("cuda:", 0) != 0)
    return InvalidArgument("unknown device '" + name + "'; use \"auto\", cpu, cpu:N or cuda:N");
#if MMS_WITH_CUDA_BUILD
  int index = std::atoi(name.c_str() + 5);
  if (index < 0 || index >= CudaDeviceCount())
    return InvalidArgument("device " + name + " does not exist (this machine has " +
                           std::to_string(CudaDeviceCount()) + " CUDA devices)");
  return Status::Ok();
#else
  return InvalidArgument("device " + name + " needs a CUDA build of mms (this one was built against a CPU-only "
                         "libtorch); use devices = [\"cpu\"] or \"auto\"");
#endif
}

std::vector<std::string> AutoDevices() {
#if MMS_WITH_CUDA_BUILD
  int n = CudaDeviceCount();
  if (n > 0) {
    std::vector<std::string> out;
    for (int i = 0; i < n; ++i) out.push_back("cuda:" + std::to_string(i));
    return out;
  }
#endif
  return {"cpu"};
}

HostAllocator MakeHostAllocator(bool pinned) {
#if MMS_WITH_CUDA_BUILD
  if (pinned) return PinnedHostAllocator();
#else
  (void)pinned;
#endif
  return [](size_t n) -> Result<std::shared_ptr<Buffer>> {
    auto b = AllocateHost(n);
    if (!b) return Status(Code::kPoolFull, "out of host memory allocating " + std::to_string(n) + " bytes");
    return b;
  };
}

}  // namespace mms
