// Daemon: the composition root of mmsd. Owns every live service (registry
// and its in-memory snapshot, the model pool, ...) and the Server that
// exposes them; builds the handler table from the handlers_*.cpp files.
//
// Lifecycle: Create → Start → (Reload on SIGHUP)* → Shutdown. Shutdown drains
// the server for the grace period, persists what must survive, and reports
// whether everything finished (the caller exits 0 either way).
//
// The registry is the source of truth: a watcher thread re-reads it when its
// DataVersion changes (every [registry] poll_interval, or at once when the
// CLI sends REGISTRY_CHANGED) and applies pins and removals to the pool.
//
// Thread-safety: Start/Reload/Shutdown from the main (signal) thread only;
// the accessors are safe from handler threads.
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "config/config.h"
#include "core/clock.h"
#include "core/executor.h"
#include "core/log.h"
#include "core/status.h"
#include "core/timer.h"
#include "lora/servable.h"
#include "pool/model_pool.h"
#include "registry/registry.h"
#include "registry/snapshot.h"
#include "rollout/attribution.h"
#include "rollout/canary.h"
#include "rollout/shadow.h"
#include "serve/rate_limiter.h"
#include "serve/scheduler.h"
#include "rollout/experiment_metrics.h"
#include "rollout/user_split.h"
#include "http_server.h"
#include "server.h"

namespace mms {

struct DaemonOptions {
  Config config;             // as loaded (or defaults)
  std::string config_path;   // "" when built-in defaults are used
  std::string socket_path;   // resolved
  std::string data_dir;      // resolved
  std::string metrics_address;  // --metrics-address, else [metrics] address ("" = off)
  // The config keys a command-line flag overrides ("[daemon] socket", ...):
  // a reload does not call them changes that need a restart.
  std::set<std::string> set_by_flags;
  Clock* clock = Clock::Real();
  int lock_fd = -1;          // Server::Lock's, taken before Create and held until mmsd exits
};

class Daemon {
 public:
  static Result<std::unique_ptr<Daemon>> Create(DaemonOptions opts);
  ~Daemon();
  // Takes the registry's instance lock (<registry>.mmsd-lock, flock, with
  // this daemon's pid and socket): ALREADY_EXISTS naming the daemon that
  // holds it. -1 when the file cannot be created (Registry::Open reports the
  // directory). The descriptor is held until mmsd exits.
  static Result<int> LockRegistry(const std::string& registry_path, const std::string& socket_path);

  Status Start();
  // Re-reads the config file and applies what can change live: [log],
  // [limits], [pool] pinned and the [scheduler] priority classes (LiveConfig).
  // Everything else needs a restart (logged when it differs). Returns the
  // sections reloaded; a bad file changes nothing.
  Result<std::vector<std::string>> Reload();
  // Stops accepting, waits up to [daemon] shutdown_grace for in-flight
  // requests, persists state. `idle`: false when requests were still
  // running (abandoned); `saved`: false when the registry refused the last
  // figures (lost). mmsd exits 1 unless both.
  struct StopResult {
    bool idle = true;
    bool saved = true;
    bool close_stuck = false;  // exit without destructors (Server::close_stuck)
  };
  StopResult Shutdown();

  // For handlers.
  const DaemonOptions& options() const { return opts_; }
  Clock* clock() const { return opts_.clock; }
  int64_t started_mono_ns() const { return started_mono_ns_; }
  Server* server() const { return server_.get(); }
  // Every running rollout's arm whose warm-up load failed for good (as
  // TreatmentLoadFailure records them): [{"version": ref, "error": why}].
  // The CLI's rollout-starting commands warn with it.
  nlohmann::json WarmupFailures() const;
  Registry* registry() const { return registry_.get(); }
  // "" while the last integrity check of the registry file passed; else
  // since when, and what SQLite's quick_check found.
  std::string RegistryCorruptError() const {
    std::lock_guard<std::mutex> lock(warn_mu_);
    return corrupt_error_;
  }
  // "" while experiment figures are saved; else since when and why not.
  std::string MetricsFlushError() const {
    std::lock_guard<std::mutex> lock(warn_mu_);
    return flush_error_;
  }
  // "" unless the last reload (SIGHUP) left part of the file unapplied: when, and why.
  // Canary rollbacks judged but not recorded in the registry yet (it
  // refused the write; retried at every poll; no traffic meanwhile): for
  // mms status, canary status, and a promote or resume that must not
  // override one. Any thread.
  std::vector<UnsavedRollback> UnsavedRollbacks() const {
    std::lock_guard<std::mutex> lock(unsaved_mu_);
    return unsaved_seen_;
  }
  std::string ReloadError() const {
    std::lock_guard<std::mutex> lock(warn_mu_);
    return reload_error_;
  }
  int restart_pending() const { return restart_pending_.load(); }
  // The last reload's outcome, for STATUS (mms reload waits for "count" to
  // move): {"count": reloads so far, "sections": [...], "restart": [keys
  // waiting for a restart], "error": "" or why (with "code")}.
  // RELOAD counts its request here before signalling; a reload records the
  // count it started at ("covers"), so a client knows its request was read.
  int64_t RequestReload() { return reload_requests_.fetch_add(1) + 1; }
  nlohmann::json LastReload() const {
    std::lock_guard<std::mutex> lock(warn_mu_);
    return last_reload_;
  }
  // A CLI that changed a registry names it ("registry" in the request body):
  // FAILED_PRECONDITION when it is not this daemon's (another data dir), so
  // the CLI says so instead of reporting a change this daemon never saw.
  // OK when the body names none (older CLIs, other clients).
  Status CheckSameRegistry(const nlohmann::json& body) const;
  ModelPool* pool() const { return pool_.get(); }
  // LoRA adapters' own pool (tiers, budgets from [lora]).
  ModelPool* adapters() const { return adapters_.get(); }
  // The pool a version lives in: adapters' or models'.
  ModelPool* PoolFor(const VersionRecord& v) const { return v.is_adapter() ? adapters_.get() : pool_.get(); }
  // Gets a version onto a device — for an adapter, its base (models' pool)
  // and the adapter (adapters' pool) — and calls `cb` (as ModelPool::Acquire;
  // `counted`: a request's, in the hit figures and last use; mms load and pin are not).
  // `answered`: as ModelPool::Acquire's. `base_held` (optional, an
  // adapter's): set once its base is on a device and the adapter's own
  // acquire begins (for a deadline's wording: which of them was loading).
  void AcquireServable(const VersionRecord& v, std::function<void(Result<Servable>)> cb, bool counted = true,
                       std::shared_ptr<const std::atomic<bool>> answered = nullptr,
                       std::shared_ptr<std::atomic<bool>> base_held = nullptr);
  // mms health's and /health/MODEL's view of a version: its pool entry's
  // figures, unhealthy when its last load failed, when no budget can ever
  // hold it, or — an adapter — when its base is unhealthy or gone (every
  // request to it fails then). From the published snapshot only.
  nlohmann::json VersionHealth(const VersionRecord& v) const;
  // What pins a version, as "pinned (...how to unpin)"; "" when nothing does.
  std::string PinReason(PoolKey key) const;
  // Pins that name no version (a misspelt [pool] pinned entry, a pinned
  // version since removed): [{ref, source, error}], for mms health and pool.
  nlohmann::json UnresolvedPins() const;
  Result<Servable> AcquireServableSync(const VersionRecord& v, int64_t timeout_ns = 600'000'000'000,
                                       ModelPool::Room room = ModelPool::Room::kEvict);
  Executor* callbacks() const { return callbacks_.get(); }
  std::shared_ptr<const RegistrySnapshot> snapshot() const;
  // Re-reads the registry when it changed (or always with `force`), swaps
  // the snapshot, applies pins, limits and shadows, and forgets removed
  // versions. It never waits for a load: a new experiment's arms (or a new
  // shadow's candidate) are loaded in the background first, and until they
  // are, or kWarmupLimitNs has passed, the published snapshot leaves that
  // rollout out, so requests go where they went before and neither arm's
  // first requests pay a cold load the other does not (a canary would be
  // judged on its load time). A finished warm-up refreshes again (watcher).
  // `on_routed` (optional) runs once every rollout the registry has is
  // routed, or `wait_ns` after this call, or at shutdown: before this
  // returns, or from a later refresh (the watcher's); never when this
  // returns an error. It must not call RefreshRegistry.
  Status RefreshRegistry(bool force, std::function<void()> on_routed = {}, int64_t wait_ns = kRoutedWaitNs);
  static constexpr int64_t kWarmupLimitNs = 60'000'000'000;
  // Below the CLI's 2 s wait for REGISTRY_CHANGED: a write made while some
  // other rollout warms up does not hold a request (and its nng context) on.
  static constexpr int64_t kRoutedWaitNs = 1'500'000'000;
  // Resolves a reference against the snapshot; on NOT_FOUND refreshes once
  // (a version registered a moment ago is servable at once).
  Result<VersionRecord> Resolve(const std::string& ref);
  // A version's pool item; `device`: where to place it when it can go there
  // (an adapter: its base's device, so that its batches copy nothing between devices).
  static PoolItem ItemFor(const VersionRecord& v, const std::string& device = "");

  // Per-variant figures of experiments (key: VariantKey(id, variant)) and
  // per-version serving figures (key: "name:version").
  MetricsStore* experiment_metrics() { return &experiment_metrics_; }
  MetricsStore* serving_metrics() { return &serving_metrics_; }
  UserSplitStore* user_splits() { return &user_splits_; }
  AttributionStore* attribution() { return attribution_.get(); }
  ShadowRunner* shadows() { return shadows_.get(); }
  RateLimiter* limiter() { return &limiter_; }
  Scheduler* scheduler() { return scheduler_.get(); }
  TimerQueue* timers() { return timers_.get(); }
  // [scheduler] max_queue_delay as now configured (SIGHUP reloads it).
  int64_t DefaultBatchDelayNs() const;
  // The scheduling class of a version: 0 high, 1 normal, 2 low ([scheduler]).
  int PriorityOf(const VersionRecord& v) const;
  // Metrics of an experiment variant, restored from the registry the first
  // time they are needed (a restarted daemon continues its counts).
  // `*published` (optional): false when the saved figures could not be read
  // (the registry): the object returned is then a throwaway, never saved.
  std::shared_ptr<VariantMetrics> VariantMetricsFor(const std::string& experiment, const std::string& variant,
                                                    bool* published = nullptr);
  // An arm's figures to read: the live ones when they are in memory, else
  // those saved in the registry, read without keeping them in memory (a
  // report on a stopped experiment costs nothing after it). Empty when the
  // registry cannot be read.
  VariantSnapshot VariantFigures(const std::string& experiment, const std::string& variant);
  // An arm's figures as the registry has them (empty when none were saved);
  // the error when they cannot be read, logged.
  Result<VariantSnapshot> SavedVariantFigures(const std::string& experiment, const std::string& variant);
  // Writes changed experiment metrics to the registry, then lets go of the
  // figures of experiments no longer active that are saved and held by
  // nothing else (a running request or feedback): up to 0.9 MB an arm, which
  // every experiment and canary ever run kept until mmsd stopped. They are
  // restored from the registry if needed again (feedback after the stop).
  // False when a save failed (the figures stay dirty). `brief`: the
  // watcher's periodic flush, which waits at most kBriefWriteWaitMs behind
  // another writer (it is retried; the thread also judges canaries).
  bool FlushMetrics(bool brief = false);
  // Beside the registry: the attribution store's ids, saved at a clean stop.
  std::string FeedbackIdsPath() const;
  // Whether the registry file was removed or replaced under mmsd (checked at
  // every poll; logged once as registry_file_replaced; /health is 503).
  bool registry_detached() const { return registry_detached_.load(); }
  // /metrics in the Prometheus text format; /health and /health/{model}.
  std::string PrometheusText();
  HttpResponse HealthResponse(const std::string& path);
  // The scheduler's figures for /metrics (queue depth, rate limited, ...).
  void ExportSchedulerMetrics(class PromWriter* w);

 private:
  // Pins not on a device (no room, a failed load) are preloaded again: every registry poll.
  void RetryPins();
  // Pins a version in its pool (idempotent): an adapter beside its base.
  void Pin(const VersionRecord& v);
  explicit Daemon(DaemonOptions opts) : opts_(std::move(opts)) {}
  std::map<uint16_t, Handler> BuildHandlers();
  Status CreatePool();
  void WatchRegistry();
  // RefreshRegistry under refresh_mu_: the waiters to answer once it is
  // released, and whether the watcher must re-time its wake-up.
  Status RefreshLocked(bool force, std::function<void()> on_routed, int64_t wait_ns,
                       std::vector<std::function<void()>>* answer, bool* rearm);
  struct LiveConfig;
  // refresh_mu_ held: forgets removed versions, applies pins, limits and
  // shadows of the snapshot just published.
  void ApplySnapshot(const RegistrySnapshot* old, const RegistrySnapshot& snap, const LiveConfig& live_cfg);
  // Warm-ups of rollouts (key "experiment/<id>" or "shadow/<id>").
  void StartWarmups(const RegistrySnapshot& latest);  // refresh_mu_ held
  bool WarmupSettled(const std::string& key) const;   // done or past kWarmupLimitNs
  // Rollbacks the canary controller could not record, kept beside the
  // socket across a crash (<socket>.unsaved-rollbacks; removed when none).
  std::string UnsavedRollbacksPath() const;
  void SaveUnsavedRollbacks(const std::vector<UnsavedRollback>& all);
  std::vector<UnsavedRollback> LoadUnsavedRollbacks();
  mutable std::mutex unsaved_mu_;
  std::vector<UnsavedRollback> unsaved_seen_;  // guarded by unsaved_mu_: UnsavedRollbacks()
  // Why the treatment arm of experiment `id` failed its warm-up load ("" if
  // it did not). A canary whose candidate failed is not routed (and the
  // canary controller rolls it back).
  std::string TreatmentLoadFailure(const std::string& experiment_id) const;
  // When a refresh next has something to publish or answer without a
  // registry change: the earliest waiter's or held-back warm-up's deadline
  // (mono ns; INT64_MAX when none). The watcher wakes for it.
  int64_t RoutingDeadline();
  void WarmupArmDone(const std::string& key);         // from pool callbacks
  // Ends shadows past their duration, and those whose candidate became production. Watcher thread.
  void StopExpiredShadows();

  DaemonOptions opts_;
  int64_t started_mono_ns_ = 0;
  std::unique_ptr<Registry> registry_;
  std::unique_ptr<Executor> callbacks_;
  std::unique_ptr<ModelPool> pool_;
  std::unique_ptr<ModelPool> adapters_;
  std::unique_ptr<Server> server_;

  mutable std::mutex snap_mu_;
  std::shared_ptr<const RegistrySnapshot> snapshot_;  // guarded by snap_mu_
  // The config sections SIGHUP may change, read by the watcher and per request.
  struct LiveConfig {
    LimitsConfig limits;
    std::vector<std::string> pinned;  // [pool] pinned
    SchedulerConfig scheduler;        // only the priority fields are read from here
    uint64_t generation = 0;          // +1 per reload
  };
  std::shared_ptr<const LiveConfig> live_;  // guarded by snap_mu_; never null after Create
  std::shared_ptr<const LiveConfig> live() const;
  // One refresh at a time; held only for registry reads and in-memory work
  // (never across a load or a join). Its log lines go out once it is let go.
  LogDeferringMutex refresh_mu_;
  std::shared_ptr<const RegistrySnapshot> latest_;    // guarded by refresh_mu_: the registry as last read
  std::vector<std::string> held_back_;                // guarded by refresh_mu_: rollouts snapshot_ leaves out
  bool reroute_ = false;  // guarded by refresh_mu_: unrouted_canaries_ changed since the last published snapshot
  std::set<std::string> unrouted_canaries_;  // guarded by refresh_mu_: experiment ids of canaries rolled back in memory (their registry write failed)
  struct RoutedWaiter {
    int64_t deadline_ns;  // mono
    std::function<void()> fn;
  };
  std::vector<RoutedWaiter> on_routed_;               // guarded by refresh_mu_: waiting for held_back_ to empty
  bool stopping_routes_ = false;                      // guarded by refresh_mu_: Shutdown began; answer at once
  std::set<PoolKey> pinned_;                          // guarded by refresh_mu_
  mutable std::mutex pin_mu_;                         // only for pin_why_ and unresolved_pins_; takes no other lock
  std::map<PoolKey, std::string> pin_why_;            // guarded by pin_mu_: what pins each of pinned_
  nlohmann::json unresolved_pins_ = nlohmann::json::array();  // guarded by pin_mu_: {ref, source, error}
  uint64_t applied_live_ = 0;                         // guarded by refresh_mu_: LiveConfig generation applied
  struct Warmup {
    int pending = 0;          // arms still loading
    int64_t started_ns = 0;   // mono
    struct Failure {
      std::string ref, error;
    };
    std::map<size_t, Failure> failed;  // arm (an experiment's: 0 control, 1 treatment) → which and why its load failed
  };
  mutable std::mutex warm_mu_;                        // never held while taking refresh_mu_
  std::map<std::string, Warmup> warmups_;             // guarded by warm_mu_: the registry's rollouts

  MetricsStore experiment_metrics_;
  std::atomic<bool> flush_failing_{false};  // FlushMetrics' last try failed (logged once per outage)
  std::atomic<bool> journal_failing_{false};  // the feedback ids journal could not be appended (logged once)
  static constexpr int kBriefFailuresToReport = 3;
  int brief_failures_ = 0;  // FlushMetrics' (watcher thread): brief flushes failed in a row
  std::map<int64_t, std::string> saved_shadow_figures_;  // FlushMetrics' (one thread at a time): shadow id → as saved
  mutable std::mutex warn_mu_;   // only for flush_error_, reload_error_, last_reload_ and corrupt_error_
  std::string flush_error_;      // guarded by warn_mu_: why figures are unsaved ("" when saved)
  std::string reload_error_;     // guarded by warn_mu_: why the last reload did not apply whole ("" when it did)
  nlohmann::json last_reload_{{"count", 0}, {"covers", 0}};  // guarded by warn_mu_: LastReload()
  std::atomic<int64_t> reload_requests_{0};
  std::atomic<bool> registry_detached_{false};  // CheckRegistryFile's last finding
  void CheckRegistryFile();                     // the watcher's, every poll
  void CheckRegistryIntegrity();                // the watcher's, every [registry] integrity_check
  std::string corrupt_error_;                   // guarded by warn_mu_ (CheckRegistryIntegrity's finding)
  std::atomic<bool> refresh_failing_{false};    // the watcher's last registry read failed
  // The last SIGHUP's outcome, for /metrics: whether the file was applied
  // whole, when one last was (Unix ms; the start's load until then), and how
  // many of its keys differ from what runs and wait for a restart.
  std::atomic<bool> reload_ok_{true};
  std::atomic<int64_t> reload_ok_unix_ms_{0};
  std::atomic<int> restart_pending_{0};
  MetricsStore serving_metrics_;
  UserSplitStore user_splits_;  // distinct users per sticky experiment's arm, since start
  std::unique_ptr<AttributionStore> attribution_;
  std::unique_ptr<ShadowRunner> shadows_;
  RateLimiter limiter_;
  std::unique_ptr<Scheduler> scheduler_;
  int registry_lock_fd_ = -1;            // LockRegistry's: held for the process's life
  std::unique_ptr<TimerQueue> timers_;  // deadlines of requests waiting for a load
  std::unique_ptr<CanaryController> canaries_;  // watcher thread only
  std::unique_ptr<HttpServer> http_;
  std::mutex restore_mu_;  // one restore from the registry at a time
  // Variant keys whose restore failed, and until when (monotonic ns) none is
  // tried again: a registry that cannot be read was read, and logged, once
  // per counted request (a review saw a line per predict). Guarded by restore_mu_.
  std::map<std::string, int64_t> restore_failed_until_;
  int64_t last_flush_ns_ = 0;  // watcher thread only

  std::mutex watch_mu_;
  std::condition_variable watch_cv_;
  bool stopping_ = false;  // guarded by watch_mu_
  bool refresh_due_ = false;  // guarded by watch_mu_: a warm-up finished
  bool rearm_ = false;        // guarded by watch_mu_: RoutingDeadline may have moved earlier
  std::thread watcher_;
};

// handlers_*.cpp: each adds its message types to the table.
void AddCoreHandlers(Daemon* d, std::map<uint16_t, Handler>* table);
void AddPoolHandlers(Daemon* d, std::map<uint16_t, Handler>* table);
void AddRolloutHandlers(Daemon* d, std::map<uint16_t, Handler>* table);
void AddShadowCanaryHandlers(Daemon* d, std::map<uint16_t, Handler>* table);

// Resolves the Server's worker count from [daemon] workers (0 = 2 × cores).
int ResolveWorkers(int configured);

// Applies [log] to the global logger.
Status ApplyLogConfig(const LogConfig& log);

}  // namespace mms
