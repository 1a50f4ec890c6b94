// LoRA adapters on one shared base, mode (b) (the base takes stacked adapter
// weights, so one batch mixes adapters): throughput under uniform traffic
// over 1, 10, 100 and 500 distinct adapters, against the single-adapter
// figure, and the memory of base + N adapters against N full fine-tuned
// copies.
//
//   lora_bench [--width W] [--rank R] [--seconds S] [--clients C] [--counts 1,10,100,500]
//   (LORA_CONFIG in the environment: extra TOML for the daemon, e.g. $'[pool]\npolicy = "lrfu"\n')
//
// The base (W wide: q, v W×W, o W×4) comes from mms-gen-testdata --lora-base;
// the adapters (rank R on q and v, random weights) are written here as PEFT
// directories and registered with mms adapter register.
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>

#include "bench_util.h"
#include "core/subprocess.h"
#include "core/units.h"
#include "protocol/client.h"
#include "protocol/messages.h"
#include "protocol/tensor_file.h"

using namespace mms;
using Clock = std::chrono::steady_clock;
using bench::Fmt;
using bench::Percentile;

namespace {

void WriteAdapter(const std::string& dir, int64_t width, int64_t rank, int seed) {
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/adapter_config.json")
      << R"({"peft_type": "LORA", "r": )" << rank << R"(, "lora_alpha": )" << 2 * rank
      << R"(, "target_modules": ["q", "v"], "bias": "none"})";
  std::mt19937 rng(static_cast<unsigned>(seed));
  std::normal_distribution<float> n(0, 0.05f);
  std::vector<Tensor> t;
  for (const char* m : {"q", "v"}) {
    Tensor a = Tensor::Alloc(std::string("base_model.model.") + m + ".lora_A.weight", DType::kFloat32, {rank, width});
    Tensor b = Tensor::Alloc(std::string("base_model.model.") + m + ".lora_B.weight", DType::kFloat32, {width, rank});
    for (Tensor* x : {&a, &b}) {
      auto* p = reinterpret_cast<float*>(x->mutable_data());
      for (int64_t i = 0; i < x->numel(); ++i) p[i] = n(rng);
    }
    t.push_back(a);
    t.push_back(b);
  }
  (void)WriteSafetensorsFile(dir + "/adapter_model.safetensors", t);
}

struct Run {
  double rps = 0, p50_ms = 0, p99_ms = 0;
  long failed = 0;
};

Run Drive(proto::Client* c, const std::vector<Tensor>& inputs, int adapters, int clients, double seconds) {
  std::mutex mu;
  std::vector<double> lat;
  std::atomic<long> ok{0}, failed{0};
  auto start = Clock::now();
  auto end = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  std::vector<std::thread> ts;
  for (int t = 0; t < clients; ++t)
    ts.emplace_back([&, t] {
      std::mt19937 rng(static_cast<unsigned>(t + 1));
      std::uniform_int_distribution<int> pick(0, adapters - 1);
      std::vector<double> mine;
      proto::Message m;
      m.type = proto::kPredict;
      m.tensors = inputs;
      while (Clock::now() < end) {
        m.body = {{"model", "ad" + std::to_string(pick(rng))}};
        auto t0 = Clock::now();
        if (c->Call(m).ok()) {
          ++ok;
          mine.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
        } else {
          ++failed;
        }
      }
      std::lock_guard<std::mutex> lock(mu);
      lat.insert(lat.end(), mine.begin(), mine.end());
    });
  for (auto& t : ts) t.join();
  double secs = std::chrono::duration<double>(Clock::now() - start).count();
  return {static_cast<double>(ok) / secs, Percentile(lat, 50), Percentile(lat, 99), failed.load()};
}

}  // namespace

int main(int argc, char** argv) {
  int64_t width = 256, rank = 8;
  double seconds = 5;
  int clients = 64;
  std::vector<int> counts{1, 10, 100, 500};
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--width") width = std::atoll(argv[i + 1]);
    else if (a == "--rank") rank = std::atoll(argv[i + 1]);
    else if (a == "--seconds") seconds = std::atof(argv[i + 1]);
    else if (a == "--clients") clients = std::atoi(argv[i + 1]);
    else if (a == "--counts") {
      counts.clear();
      std::stringstream ss(argv[i + 1]);
      for (std::string x; std::getline(ss, x, ',');) counts.push_back(std::stoi(x));
    }
  }
  int most = *std::max_element(counts.begin(), counts.end());
  testing::TempDir dir;
  if (RunProcess({testing::BinDir() + "/mms-gen-testdata", dir.path(), "--lora-base", std::to_string(width)}, 600).exit_code != 0)
    return 1;
  std::string w = std::to_string(width);
  testing::Daemon d(bench::DaemonConfig("LORA_CONFIG"));
  if (d.Mms({"model", "register", "base", "--version", "1", "--path", dir / ("lora_multi_" + w + ".pt"), "--sample-input",
             dir / ("lora_input_" + w + ".json"), "--max-batch-size", "64", "--max-queue-delay-us", "2000", "-q"})
          .exit_code != 0)
    return 1;
  auto t0 = Clock::now();
  for (int i = 0; i < most; ++i) {
    std::string ad = dir / ("adapters/ad" + std::to_string(i));
    WriteAdapter(ad, width, rank, i);
    auto r = d.Mms({"adapter", "register", "ad" + std::to_string(i), "--base", "base", "--path", ad, "-q"});
    if (r.exit_code != 0) {
      std::fprintf(stderr, "%s", r.err.c_str());
      return 1;
    }
  }
  double reg_s = std::chrono::duration<double>(Clock::now() - t0).count();
  proto::Client::Options o;
  o.socket_path = d.socket();
  auto c = proto::Client::Connect(o).value();
  auto inputs = ReadTensorFile(dir / ("lora_input_" + w + ".json")).value();
  auto list = nlohmann::json::parse(d.Mms({"--json", "adapter", "list"}).out);
  auto base = nlohmann::json::parse(d.Mms({"--json", "model", "show", "base"}).out);
  uint64_t base_bytes = base["device_bytes"], adapter_bytes = list[0]["device_bytes"];

  std::printf("LoRA mode (b): base %lld wide (q, v %lldx%lld, o %lldx4; %s), adapters rank %lld on q and v (%s each); "
              "%d closed-loop clients, uniform over the adapters, %.0f s each; batches up to 64 rows, 2 ms delay. "
              "(registered %d adapters in %.1f s)\n",
              static_cast<long long>(width), static_cast<long long>(width), static_cast<long long>(width),
              static_cast<long long>(width), FormatBytes(base_bytes).c_str(), static_cast<long long>(rank),
              FormatBytes(adapter_bytes).c_str(), clients, seconds, most, reg_s);
  std::vector<std::vector<std::string>> rows{
      {"adapters", "req/s", "vs 1 adapter", "p50 ms", "p99 ms", "failed", "mean batch", "base+adapters", "N full copies", "saving"}};
  double single = 0;
  for (int n : counts) {
    Drive(c.get(), inputs, n, clients, 1);  // warm: every adapter loaded once
    auto before = c->CallJson(proto::kPool, nlohmann::json::object()).value()["scheduler"].value("base:1", nlohmann::json::object());
    Run r = Drive(c.get(), inputs, n, clients, seconds);
    auto after = c->CallJson(proto::kPool, nlohmann::json::object()).value()["scheduler"]["base:1"];
    double batches = after["batches"].get<double>() - before.value("batches", 0.0);
    double executed = after["executed"].get<double>() - before.value("executed", 0.0);
    if (n == counts.front()) single = r.rps;
    double shared = static_cast<double>(base_bytes + static_cast<uint64_t>(n) * adapter_bytes);
    double copies = static_cast<double>(n) * static_cast<double>(base_bytes);
    rows.push_back({std::to_string(n), Fmt(r.rps, 0), Fmt(r.rps / single), Fmt(r.p50_ms), Fmt(r.p99_ms),
                    std::to_string(r.failed), Fmt(batches > 0 ? executed / batches : 0, 1),
                    FormatBytes(static_cast<uint64_t>(shared)), FormatBytes(static_cast<uint64_t>(copies)),
                    Fmt(copies / shared, 1) + "x"});
  }
  bench::PrintTable(rows);
  auto pool = c->CallJson(proto::kPool, nlohmann::json::object()).value();
  std::printf("adapters' pool: %s on the device tier, %s in host memory; loads %s, evictions %s\n",
              FormatBytes(pool["adapters"]["devices"][0]["used"].get<uint64_t>()).c_str(),
              FormatBytes(pool["adapters"]["host"]["used"].get<uint64_t>()).c_str(),
              pool["adapters"]["totals"]["loads"].dump().c_str(), pool["adapters"]["totals"]["evictions"].dump().c_str());
  return 0;
}
