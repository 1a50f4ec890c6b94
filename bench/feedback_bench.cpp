// The feedback ids' journal at capacity: what a figures flush costs, and
// what predicts that remember ids meanwhile wait, when the attribution store
// holds a million ids (the default [experiments] attribution_capacity).
//
// The store is filled to capacity (ids as mmsd makes them: 16 hex digits;
// one in ten claimed with an outcome), then flushed as mmsd does every
// [metrics] flush interval: `--per-flush` new ids each, appended, until the
// file holds far more lines than ids and a flush rewrites it whole (the
// compaction). Throughout, a probe thread remembers an id every 200 µs, as
// an experiment's predicts do, and times each call. Printed: each kind of
// flush's time against writing the same bytes with write + fdatasync (the
// physical floor), and the probe's p50 / p99 / max with no flush running,
// during appends, and during the compaction.
//
//   feedback_bench [--ids N] [--per-flush N] [--dir DIR]
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

#include "bench_util.h"
#include "core/paths.h"
#include "core/status.h"
#include "rollout/attribution.h"
#include "support/process.h"

using namespace mms;
using Steady = std::chrono::steady_clock;
using bench::Fmt;
using bench::Percentile;

namespace {

size_t Bytes(const std::string& path) {
  std::error_code ec;
  const auto n = std::filesystem::file_size(path, ec);
  return ec ? 0 : static_cast<size_t>(n);
}

double Ms(Steady::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

std::string Id(std::mt19937_64& rng) {
  char b[17];
  std::snprintf(b, sizeof b, "%016llx", static_cast<unsigned long long>(rng()));
  return b;
}

// write + fdatasync of `bytes` bytes: the floor under any rewrite of the file.
double PlainWriteMs(const std::string& path, size_t bytes) {
  std::string data(bytes, 'x');
  auto t0 = Steady::now();
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  for (size_t off = 0; off < data.size();) {
    ssize_t n = ::write(fd, data.data() + off, data.size() - off);
    if (n <= 0) break;
    off += static_cast<size_t>(n);
  }
  ::fdatasync(fd);
  ::close(fd);
  double ms = Ms(Steady::now() - t0);
  ::unlink(path.c_str());
  return ms;
}

// Remembers an id every 200 µs while running, timing each call; Take()
// returns the calls timed since the last Take.
class Probe {
 public:
  explicit Probe(AttributionStore* store) : store_(store), thread_([this] { Run(); }) {}
  ~Probe() {
    stop_ = true;
    thread_.join();
  }
  std::vector<double> Take() {
    std::lock_guard<std::mutex> lock(mu_);
    return std::exchange(lat_us_, {});
  }

 private:
  void Run() {
    std::mt19937_64 rng(7);
    while (!stop_) {
      const std::string id = Id(rng);
      auto t0 = Steady::now();
      store_->Remember(id, "exp-rec-v4", Variant::kTreatment, 5);
      const double us = Ms(Steady::now() - t0) * 1000;
      {
        std::lock_guard<std::mutex> lock(mu_);
        lat_us_.push_back(us);
      }
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }
  AttributionStore* store_;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::vector<double> lat_us_;  // guarded by mu_
  std::thread thread_;
};

}  // namespace

int main(int argc, char** argv) {
  size_t ids = 1'000'000, per_flush = 50'000;
  std::string dir;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--ids")) ids = std::stoul(argv[i + 1]);
    if (!std::strcmp(argv[i], "--per-flush")) per_flush = std::stoul(argv[i + 1]);
    if (!std::strcmp(argv[i], "--dir")) dir = argv[i + 1];
  }
  testing::TempDir tmp;
  if (dir.empty()) dir = tmp.path();
  const std::string path = JoinPath(dir, "feedback-ids.jsonl");

  AttributionStore::Options o;
  o.capacity = ids;
  AttributionStore store(o);
  std::mt19937_64 rng(2026);
  auto remember = [&](size_t n) {
    for (size_t i = 0; i < n; ++i) {
      const std::string id = Id(rng);
      store.Remember(id, "exp-rec-v4", i % 2 ? Variant::kTreatment : Variant::kControl, static_cast<int>(i % 64));
      if (i % 10 == 0 && store.Claim(id, {"click"}).ok()) store.Recorded(id, {"click"});
    }
  };
  remember(ids);
  if (Status st = store.Save(path); !st.ok()) {
    std::fprintf(stderr, "feedback_bench: %s\n", st.message().c_str());
    return 1;
  }
  Probe probe(&store);
  std::this_thread::sleep_for(std::chrono::seconds(2));
  const std::vector<double> quiet = probe.Take();

  std::vector<double> append_ms, during_appends, during_compaction;
  double compaction_ms = 0;
  size_t compaction_bytes = 0, append_bytes = 0;
  for (int flush = 0; flush < 1000 && compaction_ms == 0; ++flush) {
    remember(per_flush);
    const size_t before = Bytes(path);
    (void)probe.Take();
    auto t0 = Steady::now();
    if (Status st = store.AppendJournal(path, store.MarkClaims()); !st.ok()) {
      std::fprintf(stderr, "feedback_bench: %s\n", st.message().c_str());
      return 1;
    }
    const double ms = Ms(Steady::now() - t0);
    const size_t after = Bytes(path);
    std::vector<double> lat = probe.Take();
    if (after < before) {  // rewritten whole
      compaction_ms = ms;
      compaction_bytes = after;
      during_compaction = lat;
    } else {
      append_ms.push_back(ms);
      append_bytes = after - before;
      during_appends.insert(during_appends.end(), lat.begin(), lat.end());
    }
  }
  if (compaction_ms == 0) {
    std::fprintf(stderr, "feedback_bench: no flush compacted the file\n");
    return 1;
  }
  const double plain_append = PlainWriteMs(JoinPath(dir, "plain"), append_bytes);
  const double plain_whole = PlainWriteMs(JoinPath(dir, "plain"), compaction_bytes);
  std::printf("feedback ids: %zu at capacity, %zu new a flush; %zu appends before the compaction\n\n", ids, per_flush,
              append_ms.size());
  bench::PrintTable({{"flush", "bytes", "ms", "plain write + fdatasync ms", "vs plain"},
                     {"append (median)", std::to_string(append_bytes), Fmt(Percentile(append_ms, 0.5), 1),
                      Fmt(plain_append, 1), Fmt(Percentile(append_ms, 0.5) / plain_append) + "x"},
                     {"compaction", std::to_string(compaction_bytes), Fmt(compaction_ms, 1), Fmt(plain_whole, 1),
                      Fmt(compaction_ms / plain_whole) + "x"}});
  std::printf("\n");
  auto row = [](const char* what, const std::vector<double>& v) {
    return std::vector<std::string>{what, std::to_string(v.size()), Fmt(Percentile(v, 0.5), 1),
                                    Fmt(Percentile(v, 0.99), 1), Fmt(v.empty() ? 0 : *std::max_element(v.begin(), v.end()), 1)};
  };
  bench::PrintTable({{"a predict remembering its id", "calls", "p50 us", "p99 us", "max us"},
                     row("no flush running", quiet),
                     row("during appends", during_appends),
                     row("during the compaction", during_compaction)});
  return 0;
}
