// GPU benchmarks (label gpu; built only against a CUDA libtorch; needs a GPU):
//  1. host → device promotion of an ~850 MB model through the pool's copy
//     path vs a raw cudaMemcpy of the same bytes from the same pinned buffer
//     (target ≤ 1.15×);
//  2. 1,000 load/evict cycles over 20 models: device memory reserved
//     unchanged at the end, no OOM;
//  3. p99 of a pinned model's inference while the others swap continuously,
//     vs quiet (target ≤ 1.2×).
//   gpu_bench [--mb 850] [--cycles 1000]
#include <cuda_runtime.h>

#include <atomic>
#include <chrono>
#include <random>
#include <thread>

#include "bench_util.h"
#include "pool/device.h"
#include "pool/model_pool.h"
#include "pool/torch_artifact.h"
#include "pool/torch_model.h"
#include "protocol/tensor_file.h"

using namespace mms;
using SteadyClock = std::chrono::steady_clock;

namespace {
double Ms(SteadyClock::time_point a) { return std::chrono::duration<double, std::milli>(SteadyClock::now() - a).count(); }

PoolItem Item(int key, const std::string& path, const std::string& packed, uint64_t bytes) {
  PoolItem it;
  it.key = key;
  it.ref = "m" + std::to_string(key) + ":1";
  it.source = {it.ref, path, packed};
  it.bytes = bytes;
  return it;
}
}  // namespace

int main(int argc, char** argv) {
  int mb = 850, cycles = 1000;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::string(argv[i]) == "--mb") mb = std::atoi(argv[i + 1]);
    if (std::string(argv[i]) == "--cycles") cycles = std::atoi(argv[i + 1]);
  }
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    std::printf("gpu_bench: no CUDA device; skipped\n");
    return 0;
  }
  testing::TempDir dir;
  using bench::Fmt;

  // 1. Promotion vs raw pinned cudaMemcpy.
  if (RunProcess({testing::BinDir() + "/mms-gen-testdata", dir.path(), "--big", std::to_string(mb)}, 3600).exit_code != 0)
    return 1;
  auto packed = PackTorchScript(dir / "big.pt", dir / "big.packed");
  if (!packed.ok()) return 1;
  HostAllocator pinned = MakeHostAllocator(true);
  auto hm = LoadPackedTorchScript(dir / "big.packed", pinned).value();
  uint64_t bytes = hm.model->layout().total_bytes;
  auto dev = CreateDevice("cuda:0", bytes + (64ull << 20)).value();
  std::vector<double> pool_copy, raw;
  void* raw_dst = nullptr;
  cudaMalloc(&raw_dst, bytes);
  for (int r = 0; r < 6; ++r) {
    auto block = dev->arena().Allocate(bytes);
    auto t0 = SteadyClock::now();
    Status st = dev->CopyIn(block->data(), hm.weights->data(), bytes);
    if (st.ok()) st = hm.model->Bind(block, dev->torch_device());
    double a = Ms(t0);
    (void)hm.model->Bind(hm.weights, "cpu");
    t0 = SteadyClock::now();
    cudaMemcpy(raw_dst, hm.weights->data(), bytes, cudaMemcpyHostToDevice);
    double b = Ms(t0);
    if (!st.ok()) {
      std::fprintf(stderr, "%s\n", st.ToString().c_str());
      return 1;
    }
    if (r) {
      pool_copy.push_back(a);
      raw.push_back(b);
    }
  }
  cudaFree(raw_dst);
  double pc = bench::Percentile(pool_copy, 50), rc = bench::Percentile(raw, 50);
  std::printf("1. promotion of a %.0f MiB model (pinned host buffer → preallocated arena block)\n",
              static_cast<double>(bytes) / (1 << 20));
  bench::PrintTable({{"path", "ms", "GB/s", "vs raw"},
                     {"raw cudaMemcpy, pinned", Fmt(rc), Fmt(bytes / rc / 1e6, 1), "1.00x"},
                     {"mms promotion (copy stream + rebind)", Fmt(pc), Fmt(bytes / pc / 1e6, 1), Fmt(pc / rc) + "x"}});
  dev.reset();
  hm = HostModel{};

  // 2 + 3. Swapping 20 models through a device that holds 5.
  const int models = 20;
  const int per_mb = std::max(8, mb / 10);
  if (RunProcess({testing::BinDir() + "/mms-gen-testdata", dir.path(), "--customers", std::to_string(models), "--size-kb",
                  std::to_string(per_mb * 1024)},
                 3600)
          .exit_code != 0)
    return 1;
  std::vector<PoolItem> items;
  uint64_t each = 0;
  for (int m = 0; m < models; ++m) {
    char name[64];
    std::snprintf(name, sizeof name, "/customer-%02d.pt", m);
    auto info = PackTorchScript(dir / name, dir / (std::string(name) + ".packed")).value();
    each = std::max(each, info.weight_bytes + 4096);
    items.push_back(Item(m + 1, dir / name, dir / (std::string(name) + ".packed"), info.weight_bytes));
  }
  std::vector<std::unique_ptr<Device>> devs;
  devs.push_back(CreateDevice("cuda:0", each * 5 + (1 << 20)).value());
  size_t free_before = 0, free_after = 0, total = 0;
  ModelPool::Options o;
  o.host_budget = each * (models + 2);
  o.warmup = false;
  auto pool = ModelPool::Create(o, std::move(devs), std::make_unique<TorchLoader>(), pinned).value();
  std::mt19937 rng(1);
  int failures = 0;
  auto t0 = SteadyClock::now();
  for (int c = 0; c < cycles; ++c) {
    // Device memory free, read once the first cycles have settled what the
    // CUDA runtime sets up once (the copy stream's first use, say).
    if (c == std::min(50, cycles / 2)) cudaMemGetInfo(&free_before, &total);
    auto h = pool->AcquireSync(items[1 + rng() % (models - 1)]);
    if (!h.ok()) ++failures;
  }
  double swap_s = Ms(t0) / 1000;
  cudaMemGetInfo(&free_after, &total);
  auto snap = pool->Snapshot();
  std::printf("\n2. %d acquisitions over %d models of %.0f MiB, device holds 5: %llu loads, %llu evictions, %d failures, %.1f s\n",
              cycles, models - 1, static_cast<double>(each) / (1 << 20), snap["totals"]["loads"].get<unsigned long long>(),
              snap["totals"]["evictions"].get<unsigned long long>(), failures, swap_s);
  std::printf("   device memory free after the first %d cycles %.1f MiB, at the end %.1f MiB (change %lld bytes)\n",
              std::min(50, cycles / 2), free_before / 1048576.0,
              free_after / 1048576.0, static_cast<long long>(free_before) - static_cast<long long>(free_after));

  // 3. A pinned model's latency, quiet vs while the others swap.
  pool->Pin(items[0]);
  auto pinned_h = pool->AcquireSync(items[0]).value();
  auto input = ReadTensorFile(dir / "customer_input.json").value();
  std::vector<InputSpec> specs;
  for (const auto& name : pinned_h->model()->input_names()) specs.push_back({name, std::nullopt, std::nullopt});
  auto ordered = MatchInputs(specs, input, "pinned").value();
  auto measure = [&](int iters) {
    std::vector<double> lat;
    for (int i = 0; i < iters; ++i) {
      auto s = SteadyClock::now();
      (void)pinned_h->model()->Run(ordered);
      lat.push_back(Ms(s));
    }
    return lat;
  };
  measure(200);
  auto quiet = measure(2000);
  std::atomic<bool> stop{false};
  std::thread swapper([&] {
    std::mt19937 r(2);
    while (!stop) (void)pool->AcquireSync(items[1 + r() % (models - 1)]);
  });
  auto busy = measure(2000);
  stop = true;
  swapper.join();
  std::printf("\n3. pinned model inference, ms (default stream; swaps on the copy stream)\n");
  bench::PrintTable({{"", "p50", "p99"},
                     {"quiet", Fmt(bench::Percentile(quiet, 50), 3), Fmt(bench::Percentile(quiet, 99), 3)},
                     {"others swapping", Fmt(bench::Percentile(busy, 50), 3), Fmt(bench::Percentile(busy, 99), 3)},
                     {"ratio", Fmt(bench::Percentile(busy, 50) / bench::Percentile(quiet, 50)),
                      Fmt(bench::Percentile(busy, 99) / bench::Percentile(quiet, 99))}});
  return failures ? 1 : 0;
}
