// Primary latency with a saturated shadow: a fast primary (tiny) and a slow
// candidate (tiny_slow, ~10 ms) mirrored at ratio 1.0, so the shadow queue
// stays full. Prints the primary's p50/p99 without and with the shadow.
//   shadow_bench [requests]
#include <chrono>
#include <cstdlib>

#include "bench_util.h"
#include "protocol/client.h"
#include "protocol/messages.h"
#include "protocol/tensor_file.h"

using namespace mms;
using Clock = std::chrono::steady_clock;

int main(int argc, char** argv) {
  int n = argc > 1 ? std::atoi(argv[1]) : 5000;
  testing::Daemon d("[log]\nlevel = \"warn\"\n");
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
  run();  // warm up
  auto quiet = run();
  if (d.Mms({"shadow", "start", "tiny", "--candidate", "2", "--ratio", "1", "--queue", "100"}).exit_code != 0) return 1;
  run();  // fill the queue
  auto busy = run();
  auto stats = client->CallJson(proto::kShadowStats, {{"model", "tiny"}}).value();
  using bench::Fmt;
  using bench::Percentile;
  std::printf("primary latency with a saturated shadow (ratio 1.0, queue 100, candidate ~10 ms): %d requests each\n", n);
  bench::PrintTable({{"", "p50 µs", "p99 µs"},
                     {"no shadow", Fmt(Percentile(quiet, 50), 1), Fmt(Percentile(quiet, 99), 1)},
                     {"shadow saturated", Fmt(Percentile(busy, 50), 1), Fmt(Percentile(busy, 99), 1)},
                     {"ratio", Fmt(Percentile(busy, 50) / Percentile(quiet, 50)), Fmt(Percentile(busy, 99) / Percentile(quiet, 99))}});
  std::printf("shadow: %s mirrored, %s dropped\n", stats["requests"]["mirrored"].dump().c_str(),
              stats["requests"]["dropped"].dump().c_str());
  return 0;
}
