// Canary rollouts: a judge and the controller that drives them.
//
// JudgeCanary compares the canary arm with the control arm over the window
// since the current stage began: absolute limits (error rate, p99) and
// limits relative to control (p99 ratio; an error rate significantly above
// control's, z-test p < 0.01). Fewer than min_requests canary requests is
// "inconclusive" — keep waiting, never promote on no data.
//
// CanaryController::Tick, run by the daemon every poll interval, accounts
// the time each running canary spends in its stage (time while paused or
// while mmsd is down does not count), checks every check_interval, rolls
// back at once on a failed check, advances a stage when its duration has
// passed and the latest check passed, and promotes after the last stage.
// Every transition goes through the registry (persisted and audited), so a
// restarted daemon resumes at the same stage with its remaining time; the
// window baseline (metrics when the stage began) is persisted with it.
#pragma once

#include <functional>
#include <map>
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

CanaryVerdict JudgeCanary(const CanaryRecord& c, const VariantSnapshot& control, const VariantSnapshot& canary);

class CanaryController {
 public:
  struct Options {
    Registry* registry = nullptr;
    // The variant metrics of an experiment ("control" / "treatment").
    std::function<std::shared_ptr<VariantMetrics>(const std::string& experiment, const std::string& variant)> metrics;
    Clock* clock = Clock::Real();
    std::function<void()> changed;  // after a transition (the daemon re-reads its routing)
  };
  explicit CanaryController(Options o) : opts_(std::move(o)) {}
  // One step for every active canary. Returns the transitions made (for logs/tests).
  std::vector<std::string> Tick();

 private:
  void Step(const CanaryRecord& c, std::vector<std::string>* events);
  const Options opts_;
  std::map<int64_t, int64_t> last_tick_;   // canary id → mono ns of the last accounting
  std::map<int64_t, int64_t> last_check_;  // canary id → mono ns of the last check
};

}  // namespace mms
