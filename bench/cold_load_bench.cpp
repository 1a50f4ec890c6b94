// Cold load of a large model: mms's packed path (weight-less module + one
// sequential read of the weights) against a plain sequential read of the
// same bytes (the floor) and torch::jit::load of the original file.
// Files are in the page cache for every contender (one warm-up pass), so
// the figures compare CPU work, not the disk.
//   cold_load_bench [--mb 500] [--runs 3]
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>

#include <torch/script.h>

#include "bench_util.h"
#include "pool/torch_artifact.h"
#include "pool/torch_model.h"

using namespace mms;
using Clock = std::chrono::steady_clock;

namespace {
double Ms(Clock::time_point a) { return std::chrono::duration<double, std::milli>(Clock::now() - a).count(); }

HostAllocator Alloc() {
  return [](size_t n) -> Result<std::shared_ptr<Buffer>> { return AllocateHost(n); };
}

// Reads the whole file into an aligned buffer in 64 MiB preads.
double PlainRead(const std::string& path) {
  auto t0 = Clock::now();
  int fd = ::open(path.c_str(), O_RDONLY);
  uint64_t size = std::filesystem::file_size(path);
  auto buf = AllocateHost(size);
  uint64_t done = 0;
  while (done < size) {
    ssize_t n = ::pread(fd, buf->data() + done, std::min<uint64_t>(size - done, 64ull << 20), static_cast<off_t>(done));
    if (n <= 0) break;
    done += static_cast<uint64_t>(n);
  }
  ::close(fd);
  return Ms(t0);
}
}  // namespace

int main(int argc, char** argv) {
  int mb = 500, runs = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::string(argv[i]) == "--mb") mb = std::atoi(argv[i + 1]);
    if (std::string(argv[i]) == "--runs") runs = std::atoi(argv[i + 1]);
  }
  testing::TempDir dir;
  if (RunProcess({testing::BinDir() + "/mms-gen-testdata", dir.path(), "--big", std::to_string(mb)}, 3600).exit_code != 0)
    return 1;
  std::string model = dir / "big.pt", packed = dir / "packed";
  auto t0 = Clock::now();
  auto info = PackTorchScript(model, packed);
  if (!info.ok()) {
    std::fprintf(stderr, "%s\n", info.status().ToString().c_str());
    return 1;
  }
  double pack_ms = Ms(t0);
  std::string weights = packed + "/weights.safetensors";
  std::vector<double> plain, pk, jit, mms_plain;
  for (int r = 0; r <= runs; ++r) {  // r == 0 warms the page cache
    double a = PlainRead(weights);
    t0 = Clock::now();
    auto p = LoadPackedTorchScript(packed, Alloc());
    double b = Ms(t0);
    if (!p.ok()) return 1;
    p = Status(Code::kCancelled, "free");
    t0 = Clock::now();
    { auto m = torch::jit::load(model); }
    double c = Ms(t0);
    t0 = Clock::now();
    { auto m = LoadPlainTorchScript(model, Alloc()); }
    double d = Ms(t0);
    if (r == 0) continue;
    plain.push_back(a);
    pk.push_back(b);
    jit.push_back(c);
    mms_plain.push_back(d);
  }
  using bench::Fmt;
  double base = bench::Percentile(plain, 50);
  std::printf("cold load of a %.0f MiB model (%zu tensors); median of %d runs, files in the page cache; packing took %.0f ms once\n",
              static_cast<double>(info->weight_bytes) / (1 << 20), info->tensors, runs, pack_ms);
  bench::PrintTable({{"path", "ms", "vs plain read"},
                     {"plain sequential read of the weights", Fmt(base, 1), "1.00x"},
                     {"mms packed load (module.pt + one read)", Fmt(bench::Percentile(pk, 50), 1),
                      Fmt(bench::Percentile(pk, 50) / base) + "x"},
                     {"torch::jit::load of the original", Fmt(bench::Percentile(jit, 50), 1),
                      Fmt(bench::Percentile(jit, 50) / base) + "x"},
                     {"mms plain path (jit::load + pack in memory)", Fmt(bench::Percentile(mms_plain, 50), 1),
                      Fmt(bench::Percentile(mms_plain, 50) / base) + "x"}});
  return 0;
}
