// Canary rollouts: a judge and the controller that drives them.
//
// JudgeCanary compares the canary arm with the control arm over the window
// since the current stage began: absolute limits (error rate, p99) and
// limits relative to control (p99 ratio; an error rate significantly above
// control's: one-sided, z-test or Fisher's exact test for small counts, at
// kCanaryAlpha). Fewer than min_requests canary requests is "inconclusive" —
// keep waiting, never promote on no data.
//
// A stage is checked many times (every check_interval), and rolling back on
// the first check that fails a fixed-level rule would turn noise into
// rollbacks (about 20-35% of healthy canaries at the defaults). So a check
// before the stage's end is interim: it fails only on evidence that survives
// all of the stage's looks — each limit as a one-sided test at
// kCanaryAlpha / looks (Bonferroni): the error count against the limit's rate
// (binomial), the count of requests above the p99 limit (or above the ratio
// times control's p99) against 1% (binomial). The check at a stage's end
// fails a limit on an excess significant at kCanaryStageEndAlpha: a stage
// advances unless its figures show the canary beyond a limit. Only the last
// stage's end — the promotion — applies the limits as given to its window:
// a candidate is promoted only with figures within them. (Applying them as
// given at every stage's end rolled back 31% of candidates erring at 4%
// against a 5% limit, as production did, over six stages of 1,000 requests.) The error rate
// against control's is tested at kCanaryAlpha at every stage's end.
//
// By user: the split is sticky, so one user's requests are not independent —
// a single user whose requests all fail would read as overwhelming evidence
// against the candidate. Where a window's buckets of users (UserBuckets)
// cover its requests in two buckets or more, a limit's test leaves out the
// bucket with the most errors (one user's failures cannot carry it alone,
// and a candidate failing for many users is caught as fast as by request),
// and the comparison with control also runs over the buckets
// (ClusteredRatioGreaterP), the larger p-value counting. Latency is by
// request. (A review's simulation of heavy-tailed users: with a t-test of
// the buckets against the limit instead, a candidate broken for a tenth of
// the users was rolled back after 3-4 times as many looks.)
//
// CanaryController::Tick, run by the daemon every poll interval, accounts
// the time each running canary spends in its stage (time while paused or
// while mmsd is down does not count), checks every check_interval, rolls
// back at once on a failed check, advances a stage when its duration has
// passed and the latest check passed, and promotes after the last stage. A
// canary whose candidate the daemon could not load is rolled back at once.
// Every transition goes through the registry (persisted and audited), so a
// restarted daemon resumes at the same stage with its remaining time; the
// window baseline (metrics when the stage began) is persisted with it.
#pragma once

#include <functional>
#include <map>
#include <mutex>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "core/clock.h"
#include "registry/registry.h"
#include "rollout/experiment_metrics.h"

namespace mms {

struct CanaryVerdict {
  enum Kind { kInconclusive, kPass, kFail };
  Kind kind = kInconclusive;
  std::string reason;
  nlohmann::json figures;  // {"canary": {...}, "control": {...}} for the window
  const char* name() const { return kind == kPass ? "pass" : kind == kFail ? "fail" : "inconclusive"; }
};

constexpr double kCanaryAlpha = 0.005;
// The level at which a stage's end (before the last) fails a limit.
constexpr double kCanaryStageEndAlpha = 0.05;
// The p99 ratio limit fails a canary only when its p99 is also this much
// above control's: below a millisecond a ratio measures scheduling noise.
constexpr double kCanaryP99SlackMs = 1.0;

// Where a check falls in its stage: `final` at or after the stage's end;
// `looks` is how many checks a stage gets (stage duration / check interval);
// `last`: the stage is the last (its end decides the promotion).
struct CanaryLook {
  bool final = true;
  int64_t looks = 1;
  bool last = true;
};

CanaryVerdict JudgeCanary(const CanaryRecord& c, const VariantSnapshot& control, const VariantSnapshot& canary,
                          CanaryLook look = {});

// One arm of CanaryVerdict::figures in words: "120 req, 2.50% err, p99 3.1 ms".
std::string ArmSummary(const nlohmann::json& arm);

// A rollback the controller judged but the registry has not recorded yet.
struct UnsavedRollback {
  int64_t canary_id = 0;
  std::string experiment_id, reason;
  nlohmann::json check;
};
// The file mmsd keeps them in beside its socket (so a crash forgets none),
// which the CLI reads too when mmsd does not answer: one JSON array.
// Parse skips what it cannot read (a damaged file cannot stop a start).
std::string FormatUnsavedRollbacks(const std::vector<UnsavedRollback>& all);
std::vector<UnsavedRollback> ParseUnsavedRollbacks(const std::string& text);

class CanaryController {
 public:
  // How long interim checks go unwritten after a check's write failed.
  static constexpr int64_t kSkipWritesNs = 30'000'000'000;
  // How long a write that is retried anyway (an interim check, a periodic
  // metrics flush) waits behind another writer: not [registry] busy_timeout,
  // which a failing canary's users would sit out before its rollback. Long
  // enough for any CLI write's transaction (milliseconds), so ordinary
  // contention does not read as a failing registry.
  static constexpr int64_t kBriefWriteWaitMs = 1000;
  struct Options {
    Registry* registry = nullptr;
    // The variant metrics of an experiment ("control" / "treatment").
    std::function<std::shared_ptr<VariantMetrics>(const std::string& experiment, const std::string& variant)> metrics;
    Clock* clock = Clock::Real();
    std::function<void()> changed;  // after a transition (the daemon re-reads its routing)
    // A rollback whose registry write failed (a full disk, a locked or
    // read-only registry): the daemon stops routing to the canary's
    // experiment in memory (held = true) until the write, retried at every
    // tick, succeeds (held = false). A failing canary never keeps traffic
    // because the registry cannot record its end.
    std::function<void(const std::string& experiment_id, bool held)> hold_back;
    // Why the canary's candidate could not be loaded by the daemon ("" when
    // it was, or is still loading). A running canary whose candidate failed
    // is rolled back at once, instead of failing its share of requests until
    // min_requests of them condemn it. Optional.
    std::function<std::string(const CanaryRecord&)> load_failure;
    // After the set of rollbacks not yet recorded changed (the daemon keeps
    // it outside the registry, so a crash meanwhile does not send the
    // failing canary traffic again). Optional.
    std::function<void(const std::vector<UnsavedRollback>&)> unsaved_changed;
  };
  explicit CanaryController(Options o) : opts_(std::move(o)) {}
  // One step for every active canary. Returns the transitions made (for logs/tests).
  // Called from one thread (the daemon's watcher).
  std::vector<std::string> Tick();
  // Rollbacks a previous daemon judged and could not record: written at the
  // next ticks, never judged again. (The caller keeps their traffic held.)
  void RestoreUnsaved(const std::vector<UnsavedRollback>& unsaved);
  // The active canaries as the last Tick read them (a poll behind at most):
  // for /metrics, which must not wait on the registry (its lock can be held
  // for a busy timeout). Any thread.
  std::vector<CanaryRecord> Seen() const {
    std::lock_guard<std::mutex> lock(seen_mu_);
    return seen_;
  }

 private:
  void Step(const CanaryRecord& c, std::vector<std::string>* events);
  // A promotion by hand that landed before this daemon's rollback write (a
  // CLI asked before the verdict): logged and audited with the way back.
  void IfPromotedMeanwhile(int64_t canary_id, const std::string& reason, std::vector<std::string>* events);
  // Writes a rollback; when the write fails, holds the canary's traffic back
  // and remembers it for the next tick. True once written.
  // `check`: the failing check, recorded as the canary's last.
  bool Rollback(const CanaryRecord& c, std::string reason, std::vector<std::string>* events,
                const nlohmann::json& check = nullptr);
  const Options opts_;
  std::map<int64_t, int64_t> last_tick_;   // canary id → mono ns of the last accounting
  std::map<int64_t, int64_t> last_check_;  // canary id → mono ns of the last check
  void UnsavedChanged() const;
  std::map<int64_t, UnsavedRollback> unsaved_rollbacks_;  // canary id → a rollback not written yet
  // Until then (mono ns) interim checks are not written: the last write
  // failed (the registry locked, a full disk), and each would wait out the
  // busy timeout on the thread that judges every canary.
  int64_t skip_check_writes_until_ = 0;
  // canary id → (stage index, elapsed ms) as last counted here: while writes
  // are skipped or failing the registry's figure lags, and the stage clock
  // must not lose that time.
  std::map<int64_t, std::pair<int, int64_t>> elapsed_;
  mutable std::mutex seen_mu_;     // only for seen_
  std::vector<CanaryRecord> seen_;  // guarded by seen_mu_: Seen()
};

}  // namespace mms
