// The CUDA build's device code on whatever this machine has. Built only by
// the CUDA compile check (a CPU-only Torch plus a CUDA toolkit, see
// CMakeLists.txt): the pool compiled with MMS_WITH_CUDA_BUILD=1 and linked
// against libcudart. Without a GPU (or without a driver) a CUDA build of
// mmsd must still come up on "cpu" and refuse cuda:N with a clear error.
#include <cuda_runtime.h>
#include <doctest/doctest.h>

#include <cstring>

#include "pool/device.h"

using namespace mms;

namespace {
int VisibleGpus() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}
}  // namespace

TEST_CASE("cuda build: auto devices are the GPUs, else cpu") {
  CHECK(CudaBuild());
  auto names = AutoDevices();
  int gpus = VisibleGpus();
  if (gpus == 0) {
    REQUIRE(names.size() == 1);
    CHECK(names[0] == "cpu");
  } else {
    REQUIRE(names.size() == static_cast<size_t>(gpus));
    CHECK(names[0] == "cuda:0");
  }
}

TEST_CASE("cuda build: a cuda device that is not there is refused, naming how many there are") {
  int gpus = VisibleGpus();
  auto dev = CreateDevice("cuda:" + std::to_string(gpus), 1 << 20);
  REQUIRE_FALSE(dev.ok());
  CHECK(dev.status().code() == Code::kInvalidArgument);
  CHECK(dev.status().message().find("does not exist (this machine has " + std::to_string(gpus) + " CUDA devices)") !=
        std::string::npos);
}

TEST_CASE("cuda build: cpu devices and pageable host memory work as in a CPU build") {
  auto dev = CreateDevice("cpu:1", 1 << 20);
  REQUIRE(dev.ok());
  CHECK((*dev)->kind() == "cpu");
  auto block = (*dev)->arena().Allocate(4096);
  REQUIRE(block);
  std::vector<uint8_t> src(4096, 7);
  REQUIRE((*dev)->CopyIn(block->data(), src.data(), src.size()).ok());
  CHECK(std::memcmp(block->data(), src.data(), src.size()) == 0);

  auto host = MakeHostAllocator(false)(1 << 16);
  REQUIRE(host.ok());
  CHECK_FALSE((*host)->pinned());
}

TEST_CASE("cuda build: pinned host memory is pinned, or a clear error without a GPU") {
  auto host = MakeHostAllocator(true)(1 << 16);
  if (VisibleGpus() > 0) {
    REQUIRE(host.ok());
    CHECK((*host)->pinned());
    CHECK((*host)->size() == (1u << 16));
  } else {
    REQUIRE_FALSE(host.ok());
    CHECK(host.status().message().find("pinning 65536 bytes of host memory") != std::string::npos);
  }
}
