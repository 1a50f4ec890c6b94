// The seed's scenario: 50 customer models of equal size, a device budget
// that fits 12, Zipf-like traffic where the top 12 customers take ~80% of
// 20,000 requests, and a second trace where popularity changes hands
// halfway. The same traces run through
//   * the seed's own ModelPool (Python, device "cpu", LRU by model count),
//   * mms end to end (the real daemon over IPC, sequential client), with the
//     adaptive, lrfu and lru policies, and with 4 and 32 requests in flight
//     (32 also with [pool] room_wait 0: failures counted),
//   * Belady's optimal replacement (offline, furthest next use) for the misses.
//
//   seed_scenario_bench [--requests N] [--size-kb S] [--models M] [--capacity C]
#include <atomic>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <thread>

#include "bench_util.h"
#include "traces.h"
#include "protocol/client.h"
#include "protocol/messages.h"
#include "protocol/tensor_file.h"

using namespace mms;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

struct RunResult {
  double total_s = 0;
  int loads = 0;
  int failed = 0;  // requests answered with an error (the first is printed)
  std::vector<double> lat_ms;
};

// Reads a file, or every file under a directory, so each contender starts
// with a warm page cache.
void WarmPageCache(const std::string& path) {
  std::vector<char> buf(16 << 20);
  auto read = [&](const std::filesystem::path& p) {
    std::ifstream in(p, std::ios::binary);
    while (in.read(buf.data(), static_cast<std::streamsize>(buf.size()))) {
    }
  };
  if (std::filesystem::is_regular_file(path)) return read(path);
  for (const auto& e : std::filesystem::recursive_directory_iterator(path))
    if (e.is_regular_file()) read(e.path());
}

// `in_flight` > 1: that many client threads take the trace's requests in
// order from a shared cursor, as concurrent users would send them.
// `room_wait`: [pool] room_wait ("" = the default).
RunResult RunMms(const std::string& dir, const std::string& data_dir, const std::vector<int>& trace, uint64_t budget,
                 const std::string& policy, int models, const std::string& device, int in_flight = 1,
                 const std::string& room_wait = "") {
  WarmPageCache(data_dir + "/artifacts");
  std::string config = "[log]\nlevel = \"warn\"\n[pool]\ndevices = [\"" + device + "\"]\ndevice_budget = " + std::to_string(budget) +
                       "\nhost_budget = \"4GiB\"\npolicy = \"" + policy + "\"\n";
  if (!room_wait.empty()) config += "room_wait = \"" + room_wait + "\"\n";
  testing::Daemon d(config, {}, data_dir);
  RunResult r;
  if (!d.ok()) {
    std::fprintf(stderr, "daemon failed to start:\n%s\n", d.log().c_str());
    return r;
  }
  proto::Client::Options o;
  o.socket_path = d.socket();
  auto client = proto::Client::Connect(o).value();
  std::vector<proto::Message> reqs(models);
  auto inputs = ReadTensorFile(dir + "/customer_input.json").value();
  for (int m = 0; m < models; ++m) {
    reqs[m].type = proto::kPredict;
    char name[16];
    std::snprintf(name, sizeof name, "c%02d", m);
    reqs[m].body = {{"model", name}};
    reqs[m].tensors = inputs;
  }
  std::atomic<size_t> next{0};
  std::atomic<int> failed{0};
  std::vector<std::vector<double>> lat(static_cast<size_t>(in_flight));
  auto send = [&](std::vector<double>* mine) {
    for (size_t i; (i = next++) < trace.size();) {
      auto t0 = Clock::now();
      auto rep = client->Call(reqs[static_cast<size_t>(trace[i])]);
      if (!rep.ok()) {  // not served: no hit, and its quick refusal no latency
        if (failed++ == 0)
          std::fprintf(stderr, "predict failed (the first of this run): %s\n", rep.status().ToString().c_str());
        continue;
      }
      mine->push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    }
  };
  auto start = Clock::now();
  std::vector<std::thread> threads;
  for (int t = 1; t < in_flight; ++t) threads.emplace_back(send, &lat[static_cast<size_t>(t)]);
  send(&lat[0]);
  for (auto& t : threads) t.join();
  r.total_s = std::chrono::duration<double>(Clock::now() - start).count();
  r.failed = failed;
  for (const auto& l : lat) r.lat_ms.insert(r.lat_ms.end(), l.begin(), l.end());
  auto pool = client->CallJson(proto::kPool, json::object()).value();
  r.loads = pool["totals"]["loads"];
  return r;
}

RunResult RunSeed(const std::string& dir, const std::vector<std::string>& paths, const std::vector<int>& trace, int cap) {
  RunResult r;
  std::string ref = std::string(MMS_SHARED_DIR) + "/reference";
  if (!std::filesystem::exists(ref + "/seed_reference.py")) return r;
  for (const auto& p : paths) WarmPageCache(p);
  json spec{{"paths", paths}, {"trace", trace}, {"capacity", cap}};
  std::ofstream(dir + "/trace.json") << spec.dump();
  auto p = RunProcess({"/usr/bin/python3", std::string(MMS_SOURCE_DIR) + "/bench/seed_pool_driver.py", ref,
                       dir + "/trace.json"},
                      7200);
  if (p.exit_code != 0) {
    std::fprintf(stderr, "seed driver failed: %s\n", p.err.c_str());
    return r;
  }
  json out = json::parse(p.out);
  r.total_s = out["total_s"];
  r.loads = out["loads"];
  r.lat_ms = out["latencies_ms"].get<std::vector<double>>();
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  int requests = 20000, size_kb = 16384, models = 50, cap = 12;
  bool concurrent_only = false;  // --concurrent-only 1: the rows with requests in flight (no seed, no sequential)
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    int v = std::atoi(argv[i + 1]);
    if (a == "--requests") requests = v;
    else if (a == "--size-kb") size_kb = v;
    else if (a == "--models") models = v;
    else if (a == "--capacity") cap = v;
    else if (a == "--concurrent-only") concurrent_only = v != 0;
  }
  testing::TempDir tmp;
  std::string dir = tmp.path();
  std::printf("seed scenario: %d models of ~%d KiB, device budget for %d, %d requests per trace\n", models, size_kb,
              cap, requests);
  std::fflush(stdout);
  if (RunProcess({testing::BinDir() + "/mms-gen-testdata", dir, "--customers", std::to_string(models), "--size-kb",
                  std::to_string(size_kb), "--prefix", "customer"},
                 3600)
          .exit_code != 0)
    return 1;
  // Register all models once (a Triton-style import), shared by both mms runs.
  std::string repo = dir + "/repo", data_dir = dir + "/data";
  std::vector<std::string> paths;
  for (int m = 0; m < models; ++m) {
    char src[64], name[16];
    std::snprintf(src, sizeof src, "/customer-%02d.pt", m);
    std::snprintf(name, sizeof name, "c%02d", m);
    std::filesystem::create_directories(repo + "/" + name + "/1");
    std::filesystem::copy_file(dir + src, repo + "/" + name + "/1/model.pt");
    paths.push_back(dir + src);
  }
  auto imp = RunProcess({testing::MmsBin(), "--data-dir", data_dir, "-q", "model", "import", repo}, 3600);
  if (imp.exit_code != 0) {
    std::fprintf(stderr, "import failed: %s\n", imp.err.c_str());
    return 1;
  }
  auto list = json::parse(RunProcess({testing::MmsBin(), "--data-dir", data_dir, "--json", "model", "list"}).out);
  uint64_t bytes = list[0]["device_bytes"];
  uint64_t block = (bytes + 64 * 8 + 255) / 256 * 256;  // packed layout pads tensors to 64 bytes
  uint64_t budget = block * cap + block / 2;           // fits `cap`, never cap + 1

  // Seed 2026: the traces of every recorded run (policy_bench replays 30 more offline).
  bench::SeedTraces traces = bench::MakeSeedTraces(requests, models, cap, 2026);
  const double s = traces.exponent;
  auto& zipf = traces.zipf;
  auto& shift = traces.shift;

  std::vector<std::vector<std::string>> rows{
      {"trace", "system", "hit rate", "loads", "total s", "p50 ms", "p99 ms", "vs seed time", "vs Belady misses"}};
  using bench::Fmt;
  for (auto& [name, trace] : std::vector<std::pair<std::string, std::vector<int>>>{{"zipf", zipf}, {"shift", shift}}) {
    int belady = bench::BeladyMisses(trace, cap);
    RunResult seed = concurrent_only ? RunResult{} : RunSeed(dir, paths, trace, cap);
    // An untimed mms run first: the first daemon after the seed's Python pays
    // for reclaiming the memory that run left in the page cache, and that
    // cost belongs to neither policy.
    (void)RunMms(dir, data_dir, std::vector<int>(trace.begin(), trace.begin() + trace.size() / 10), budget, "lru",
                 models, "cpu");
    auto row = [&](const std::string& system, const RunResult& r) {
      if (r.lat_ms.empty()) return;
      double n = static_cast<double>(trace.size());
      rows.push_back({name, system + (r.failed ? ", " + std::to_string(r.failed) + " failed" : ""),
                      Fmt(100.0 * (n - r.failed - r.loads) / n, 1) + "%", std::to_string(r.loads), Fmt(r.total_s, 1),
                      Fmt(bench::Percentile(r.lat_ms, 50), 3), Fmt(bench::Percentile(r.lat_ms, 99), 3),
                      seed.total_s > 0 ? Fmt(seed.total_s / r.total_s, 1) + "x faster" : "-",
                      Fmt(static_cast<double>(r.loads) / belady, 2) + "x"});
    };
    row("seed ModelPool (LRU)", seed);
    if (!concurrent_only) {
      for (const char* policy : {"adaptive", "lrfu", "lru"})
        row(std::string("mms ") + policy + " (cpu)", RunMms(dir, data_dir, trace, budget, policy, models, "cpu"));
      row("mms adaptive (cpu:0, copying)", RunMms(dir, data_dir, trace, budget, "adaptive", models, "cpu:0"));
    }
    // Not like for like (the seed's pool serves one call at a time): the
    // same trace from 4 concurrent clients, as a server is used.
    row("mms adaptive (cpu), 4 in flight", RunMms(dir, data_dir, trace, budget, "adaptive", models, "cpu", 4));
    // As many clients as there are models: slots are often all held by
    // requests in flight, and a cold request waits for one ([pool]
    // room_wait); with room_wait 0 it fails POOL_FULL at once instead.
    row("mms adaptive (cpu), 32 in flight", RunMms(dir, data_dir, trace, budget, "adaptive", models, "cpu", 32));
    // A copying device (as a GPU: weights copied into an arena block) with
    // loads queued: claims and placement ranges as on cuda.
    row("mms adaptive (cpu:0, copying), 32 in flight",
        RunMms(dir, data_dir, trace, budget, "adaptive", models, "cpu:0", 32));
    row("mms adaptive (cpu), 32 in flight, room_wait 0",
        RunMms(dir, data_dir, trace, budget, "adaptive", models, "cpu", 32, "0s"));
    rows.push_back({name, "Belady (optimal)", Fmt(100.0 * (trace.size() - belady) / trace.size(), 1) + "%",
                    std::to_string(belady), "-", "-", "-", "-", "1.00x"});
  }
  std::printf("zipf exponent %.3f (top %d of %d take 80%%); device budget %s for %d models of %llu bytes\n\n", s, cap,
              models, std::to_string(budget).c_str(), cap, static_cast<unsigned long long>(bytes));
  bench::PrintTable(rows);
  return 0;
}
