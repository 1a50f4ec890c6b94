// ShadowRunner: mirrors a share of a model's requests to a candidate version
// and compares the outputs, off the request path.
//
// * The user-facing reply never waits: Mirror() is called after the reply is
//   sent, samples deterministically by the request's hash (the same input is
//   always mirrored or never, so a run is reproducible), and pushes onto a
//   bounded queue that drops — and counts the drop — when full.
// * One worker thread per running shadow, at the lowest priority (nice 19,
//   and a short EEVDF slice where the kernel has them), holding its
//   candidate's handle between jobs (a hold `mms pool` names, let go
//   after 2 s without a job, or when the hold has refused a request or an
//   eviction; the candidate is loaded only into free room, never evicting
//   a serving model); the request path takes no lock (a
//   lock-free queue), so only a full queue drops. It runs the candidate
//   through the pool and compares, then rests to keep within
//   Options::duty_cycle ([shadow] duty_cycle).
// * Shadow requests produce no feedback records and no experiment counts.
// * Stats: mirrored, dropped, failed, divergence rate, each measure's
//   distribution, argmax/top-k agreement, and the paired latency delta
//   (shadow − primary on the same input). A bounded set of diverging
//   requests keeps both outputs for inspection.
//
// Thread-safety: all methods may be called from any thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/clock.h"
#include "lora/servable.h"
#include "pool/model_pool.h"
#include "registry/registry.h"

namespace mms {

// Keeps a uniform sample of at most `cap` values (Algorithm R).
class Reservoir {
 public:
  explicit Reservoir(size_t cap = 4096) : cap_(cap) {}
  void Add(double v);
  nlohmann::json Summary(double scale = 1.0) const;  // {count, mean, p50, p90, p99, max}
  uint64_t seen() const { return seen_; }

 private:
  size_t cap_;
  uint64_t seen_ = 0;
  double sum_ = 0, max_ = 0;
  std::vector<double> v_;
  std::mt19937_64 rng_{12345};
};

class ShadowRunner {
 public:
  struct Options {
    // Gets a candidate onto a device (the daemon: its pool, or for an
    // adapter its base's and the adapter's); the handle is kept between jobs.
    std::function<Result<Servable>(const PoolItem& candidate)> acquire;
    Clock* clock = Clock::Real();
    size_t max_samples = 20;  // diverging requests kept per shadow
    // Share of the time a worker may spend running its candidate: after a
    // job of T it rests T * (1 / duty_cycle - 1), waking early only to stop.
    // Shadow work is best effort; without a spare core, a candidate that
    // keeps one busy delays the serving threads' wake-ups. 1: no rest.
    double duty_cycle = 1;
    std::function<void()> on_worker_start;  // e.g. keep libtorch single-threaded there
    // The pools' ModelPool::hold_refusals() (null: never moves). When it
    // moves, a worker lets go of its candidate: its hold refused someone.
    std::function<uint64_t()> hold_refusals;
    // Evicts the candidate (its own entry, never a base a request may be
    // using), after its hold refused someone. Null: nothing to evict.
    std::function<void(const PoolItem& candidate)> yield_room;
  };
  explicit ShadowRunner(const Options& o) : opts_(o) {}
  ~ShadowRunner();

  // The running shadows (model → record and the candidate's pool item,
  // whose `inputs` are what mirrored requests are matched to: for an
  // adapter, its base's). Running ones take the item's inputs as given now
  // (a repack may have changed them); starts new ones, stops and forgets
  // those no longer running (their stats stay readable until the next start
  // on that model). Never waits for a
  // stopping worker (it may be in a load): those are joined by a later call
  // once they have exited, or by the destructor.
  void Configure(const std::map<std::string, std::pair<ShadowRecord, PoolItem>>& running);
  // True when the model has a running shadow (so the caller keeps the outputs).
  bool Active(const std::string& model) const;
  // After the primary replied. `inputs` in forward() order of the primary.
  // The inputs are hashed (RequestHash) only when the ratio samples: in a
  // batch's fan-out the next caller's reply waits for this call.
  void Mirror(const std::string& model, const std::vector<Tensor>& inputs, const std::vector<Tensor>& outputs,
              int64_t primary_latency_ns);
  // NOT_FOUND when the model never had a shadow since mmsd started. A run
  // that was running before mmsd started carries the figures saved then as
  // "before_restart" (counting starts anew with each daemon).
  Result<nlohmann::json> Stats(const std::string& model) const;
  // Every run still in memory (running or stopped): its id and Stats, for
  // the registry (Registry::SaveShadowFigures).
  std::vector<std::pair<int64_t, nlohmann::json>> AllStats() const;
  Result<nlohmann::json> Samples(const std::string& model, size_t limit) const;

  // The hash Mirror samples by: MD5 of the inputs' names, shapes and bytes.
  static uint64_t RequestHash(const std::vector<Tensor>& inputs);
  static bool Sampled(uint64_t hash, double ratio);

 private:
  struct Shadow;
  void Work(Shadow* s);
  nlohmann::json StatsOf(Shadow& s) const;  // takes s.mu
  const Options opts_;
  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<Shadow>> shadows_;  // guarded by mu_
  std::vector<std::shared_ptr<Shadow>> retired_;            // guarded by mu_: stopped, worker not joined yet
};

}  // namespace mms
