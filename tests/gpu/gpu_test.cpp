// GPU checks (label gpu). Built in every build; without a CUDA build or a
// visible GPU every test exits 77 and ctest reports it skipped. On the lent
// GPU machine they check the CUDA paths for real: promotion into the device
// arena, outputs equal to the CPU's, and load/evict cycles that leave the
// device's memory as it was.
#include <torch/script.h>

#include <cstring>

#include "pool/device.h"
#include "pool/model_pool.h"
#include "pool/torch_model.h"
#include "protocol/tensor_file.h"
#include "support/process.h"

#include "support/torch_doctest.h"

using namespace mms;

// The test main asks before running anything (see support/doctest_main.cpp).
extern "C" bool mms_test_skip_all() {
  if (!CudaBuild()) return true;
  auto dev = CreateDevice("cuda:0", 64 << 20);
  return !dev.ok();
}

namespace {
std::string Data(const std::string& n) { return testing::TestDataDir() + "/" + n; }

std::unique_ptr<ModelPool> CudaPool(uint64_t device_budget) {
  std::vector<std::unique_ptr<Device>> devs;
  auto d = CreateDevice("cuda:0", device_budget);
  REQUIRE_MESSAGE(d.ok(), d.status().ToString());
  devs.push_back(std::move(d).value());
  ModelPool::Options o;
  o.host_budget = 1ull << 30;
  o.warmup = false;
  auto pool = ModelPool::Create(o, std::move(devs), std::make_unique<TorchLoader>(), MakeHostAllocator(true));
  REQUIRE_MESSAGE(pool.ok(), pool.status().ToString());
  return std::move(pool).value();
}

PoolItem Item(PoolKey key, const std::string& file) {
  PoolItem it;
  it.key = key;
  it.ref = file + ":" + std::to_string(key);
  it.source = {it.ref, Data(file), ""};
  return it;
}
}  // namespace

TEST_CASE("gpu: a model promoted to cuda:0 answers as on the CPU") {
  auto inputs = ReadTensorFile(Data("rec_input.json")).value();
  auto cpu = LoadPlainTorchScript(Data("rec.pt"), [](size_t n) { return AllocateHost(n); });
  REQUIRE(cpu.ok());
  auto want = cpu->model->Run(inputs);
  REQUIRE(want.ok());
  auto pool = CudaPool(256 << 20);
  auto h = pool->AcquireSync(Item(1, "rec.pt"));
  REQUIRE_MESSAGE(h.ok(), h.status().ToString());
  CHECK((*h)->model()->device() == "cuda:0");
  auto got = (*h)->model()->Run(inputs);
  REQUIRE_MESSAGE(got.ok(), got.status().ToString());
  REQUIRE(got->size() == want->size());
  const float* a = (*got)[0].as<float>();
  const float* b = (*want)[0].as<float>();
  for (int64_t i = 0; i < (*want)[0].numel(); ++i) CHECK(a[i] == doctest::Approx(b[i]).epsilon(1e-5));
}

TEST_CASE("gpu: 200 load/evict cycles over 5 models leave the device arena as it was") {
  auto pool = CudaPool(64 << 20);  // rec.pt is small: every model fits; evict by hand
  auto used0 = pool->Snapshot()["devices"][0]["used"].get<uint64_t>();
  for (int i = 0; i < 200; ++i) {
    PoolKey k = static_cast<PoolKey>(1 + i % 5);
    auto h = pool->AcquireSync(Item(k, "rec.pt"));
    REQUIRE_MESSAGE(h.ok(), h.status().ToString());
    h->reset();
    REQUIRE(pool->Evict(k).ok());
  }
  CHECK(pool->Snapshot()["devices"][0]["used"].get<uint64_t>() == used0);
}
