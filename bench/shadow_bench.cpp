// Primary latency with a saturated shadow: a fast primary (tiny) and a slow
// candidate (tiny_slow: 300 chained 96x96 matmuls, ~0.1 s on a CPU with a
// reference BLAS) mirrored at ratio 1.0, so the shadow queue
// stays full. Prints the primary's p50/p99 without and with the shadow.
//   shadow_bench [requests per phase] [rounds]
//   (SHADOW_CONFIG in the environment: extra TOML for the daemon)
#include <chrono>
#include <cstdlib>

#include "bench_util.h"
#include "protocol/client.h"
#include "protocol/messages.h"
#include "protocol/tensor_file.h"

using namespace mms;
using Clock = std::chrono::steady_clock;

int main(int argc, char** argv) {
  int n = argc > 1 ? std::atoi(argv[1]) : 5000;       // requests per phase
  int rounds = argc > 2 ? std::atoi(argv[2]) : 7;     // (no shadow, shadow) pairs
  testing::Daemon d(bench::DaemonConfig("SHADOW_CONFIG"));
  std::string data = testing::TestDataDir();
  for (auto [v, f] : std::vector<std::pair<std::string, std::string>>{{"1", "tiny.pt"}, {"2", std::getenv("SHADOW_CAND") ? std::getenv("SHADOW_CAND") : "tiny_slow.pt"}})
    if (d.Mms({"model", "register", "tiny", "--version", v, "--path", data + "/" + f, "-q"}).exit_code != 0) return 1;
  if (d.Mms({"model", "stage", "tiny:1", "production", "-q"}).exit_code != 0 || d.Mms({"load", "tiny:1"}).exit_code)
    return 1;
  proto::Client::Options o;
  o.socket_path = d.socket();
  auto client = proto::Client::Connect(o).value();
  proto::Message req;
  req.type = proto::kPredict;
  req.body = {{"model", "tiny"}};
  req.tensors = ReadTensorFile(data + "/tiny_input.json").value();
  auto run = [&] {
    std::vector<double> lat;
    for (int i = 0; i < n; ++i) {
      auto t0 = Clock::now();
      if (!client->Call(req).ok()) return std::vector<double>{};
      lat.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    }
    return lat;
  };
  // Phases alternate (no shadow, shadow saturated) and repeat, so a hiccup
  // of the shared VM lands in one phase rather than deciding the result; the
  // medians of the phases' percentiles are compared.
  run();  // warm up
  std::vector<double> quiet_p50, quiet_p99, busy_p50, busy_p99;
  long mirrored = 0, dropped = 0;
  for (int round = 0; round < rounds; ++round) {
    auto quiet = run();
    if (d.Mms({"shadow", "start", "tiny", "--candidate", "2", "--ratio", "1", "--queue", "100", "-q"}).exit_code != 0)
      return 1;
    for (int i = 0; i < 200; ++i) (void)client->Call(req);  // fill the queue (100 slow jobs)
    auto busy = run();
    auto stats = client->CallJson(proto::kShadowStats, {{"model", "tiny"}}).value();
    mirrored += stats["requests"]["mirrored"].get<long>();
    dropped += stats["requests"]["dropped"].get<long>();
    if (d.Mms({"shadow", "stop", "tiny", "-q"}).exit_code != 0) return 1;
    if (quiet.empty() || busy.empty()) return 1;
    quiet_p50.push_back(bench::Percentile(quiet, 50));
    quiet_p99.push_back(bench::Percentile(quiet, 99));
    busy_p50.push_back(bench::Percentile(busy, 50));
    busy_p99.push_back(bench::Percentile(busy, 99));
    std::printf("round %d: p99 %.1f µs quiet, %.1f µs with the shadow (%.2fx)\n", round + 1, quiet_p99.back(),
                busy_p99.back(), busy_p99.back() / quiet_p99.back());
    std::fflush(stdout);
  }
  using bench::Fmt;
  auto median = [](std::vector<double> v) { return bench::Percentile(std::move(v), 50); };
  std::printf("\nprimary latency with a saturated shadow (ratio 1.0, queue 100, slow candidate, [shadow] duty_cycle in effect): %d rounds of %d "
              "requests per phase, medians of the rounds\n",
              rounds, n);
  bench::PrintTable({{"", "p50 µs", "p99 µs"},
                     {"no shadow", Fmt(median(quiet_p50), 1), Fmt(median(quiet_p99), 1)},
                     {"shadow saturated", Fmt(median(busy_p50), 1), Fmt(median(busy_p99), 1)},
                     {"ratio", Fmt(median(busy_p50) / median(quiet_p50)), Fmt(median(busy_p99) / median(quiet_p99))}});
  std::printf("shadow: %ld mirrored, %ld dropped\n", mirrored, dropped);
  return 0;
}
