#include "rollout/canary.h"

#include <algorithm>
#include <optional>
#include <cmath>

#include "core/log.h"
#include "core/units.h"
#include "stats/significance.h"

namespace mms {
namespace {
// Buckets of users with requests in the window; -1 when its buckets do not
// cover its requests (counted before buckets existed, or not sticky).
int UserBucketsFilled(const VariantSnapshot& s) {
  if (!s.CoversRequests()) return -1;
  int filled = 0;
  for (uint64_t n : s.users->requests) filled += n > 0;
  return filled;
}

nlohmann::json ArmFigures(const VariantSnapshot& s) {
  double n = static_cast<double>(s.requests);
  const int buckets = UserBucketsFilled(s);
  return {{"requests", s.requests},
          {"errors", s.errors},
          {"error_rate", n > 0 ? static_cast<double>(s.errors) / n : 0.0},
          {"p99_ms", static_cast<double>(s.latency.Quantile(0.99)) / 1e6},
          // null: figures not all by user (its tests go by request)
          {"user_buckets", buckets < 0 ? nlohmann::json() : nlohmann::json(buckets)}};
}

}  // namespace

std::string ArmSummary(const nlohmann::json& arm) {
  char b[128];
  std::snprintf(b, sizeof b, "%lld req, %.2f%% err, p99 %.3f ms", static_cast<long long>(arm.value("requests", 0)),
                arm.value("error_rate", 0.0) * 100, arm.value("p99_ms", 0.0));
  return b;
}

namespace {

std::string Pct(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.2f%%", v * 100);
  return b;
}

std::string Sig(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.3g", v);
  return b;
}

std::string Ms(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1f ms", v);
  return b;
}

// "; errors: 22 POOL_FULL, 1 MODEL_ERROR", and when the candidate mostly
// could not be loaded, that the verdict is about capacity, not its quality.
std::string ErrorDetail(const VariantSnapshot& s) {
  std::vector<std::pair<uint64_t, std::string>> codes;
  for (const auto& [code, n] : s.error_codes)
    if (n) codes.push_back({n, code});
  if (codes.empty()) return "";
  std::sort(codes.begin(), codes.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  std::string out = "; errors: ";
  for (size_t i = 0; i < codes.size() && i < 3; ++i)
    out += (i ? ", " : "") + std::to_string(codes[i].first) + " " + codes[i].second;
  if (codes.front().second == "POOL_FULL")
    out += " (mostly no room to load the candidate: a capacity problem, not the candidate's; free room or raise "
           "the [pool] budgets, then start it again)";
  return out;
}

// Evidence that a window's error rate is above a rate, or above control's
// (see the header); `how` says how it was taken, for the reason.
struct Evidence {
  double p = 1;
  std::string how;
};

// `errors` of the window's requests (its own errors before --min-requests)
// against `rate`, by request — without the bucket of users with the most
// errors where the window's buckets cover its requests in two or more:
// one user's failures cannot carry the evidence alone.
Evidence ErrorsAbove(const VariantSnapshot& s, uint64_t errors, double rate) {
  if (UserBucketsFilled(s) >= 2) {
    const UserBuckets& u = *s.users;
    const auto top = std::max_element(u.errors.begin(), u.errors.end()) - u.errors.begin();
    if (u.errors[top] > 0) {
      const uint64_t rest = errors - std::min(errors, u.errors[top]);
      const uint64_t of = s.requests - std::min(s.requests, u.requests[top]);
      return {BinomialUpperTail(rest, of, rate), " without the users' bucket with the most errors"};
    }
  }
  return {BinomialUpperTail(errors, s.requests, rate), ""};
}

// By request, and by user where both windows' buckets cover their requests
// in two or more: the larger p-value.
Evidence ErrorsAboveControl(const VariantSnapshot& control, const VariantSnapshot& canary) {
  const double p = ProportionGreaterP(control.errors, control.requests, canary.errors, canary.requests);
  if (UserBucketsFilled(control) < 2 || UserBucketsFilled(canary) < 2) return {p, ""};
  const auto by_user = ClusteredRatioGreaterP(BucketArm(control.users->errors, control.users->requests),
                                              BucketArm(canary.users->errors, canary.users->requests));
  if (by_user && *by_user > p) return {*by_user, " by user"};
  return {p, ""};
}

std::string PValue(const Evidence& e) { return "p = " + Sig(e.p) + e.how; }
}  // namespace

CanaryVerdict JudgeCanary(const CanaryRecord& c, const VariantSnapshot& control, const VariantSnapshot& canary,
                          CanaryLook look) {
  CanaryVerdict v;
  v.figures = {{"canary", ArmFigures(canary)}, {"control", ArmFigures(control)}};
  const double interim_alpha = kCanaryAlpha / static_cast<double>(std::max<int64_t>(1, look.looks));
  if (canary.requests < static_cast<uint64_t>(c.min_requests)) {
    // Before --min-requests only overwhelming evidence fails it, at an
    // interim check's level: a candidate failing every request was served
    // to min-requests users (1000 by default) before its rollback. Only the
    // candidate's own failures count here: a few requests refused in a
    // load burst (OVERLOADED, a deadline, no room) say nothing of it yet.
    uint64_t capacity = 0;
    for (const char* code : {"OVERLOADED", "DEADLINE_EXCEEDED", "POOL_FULL", "RATE_LIMITED", "UNAVAILABLE", "CANCELLED"})
      if (auto it = canary.error_codes.find(code); it != canary.error_codes.end()) capacity += it->second;
    const uint64_t n = canary.requests, own = canary.errors - std::min(canary.errors, capacity);
    const double err = n ? static_cast<double>(own) / static_cast<double>(n) : 0.0;
    const Evidence e = n ? ErrorsAbove(canary, own, c.max_error_rate) : Evidence{};
    if (err > c.max_error_rate && e.p < interim_alpha) {
      v.kind = CanaryVerdict::kFail;
      v.reason = "canary error rate " + Pct(err) + " > limit " + Pct(c.max_error_rate) + " after " + std::to_string(n) +
                 " requests, before --min-requests " + std::to_string(c.min_requests) + " (" + PValue(e) + " < " +
                 Sig(interim_alpha) + ")" + ErrorDetail(canary);
      return v;
    }
    v.reason = std::to_string(canary.requests) + " of " + std::to_string(c.min_requests) +
               " canary requests needed for a verdict";
    return v;
  }
  // The limits: as given at the last stage's end (promotion); elsewhere only
  // an excess significant at the look's level fails them.
  const bool as_given = look.final && look.last;
  const double limit_alpha = look.final ? kCanaryStageEndAlpha : interim_alpha;
  auto exceeds = [&](const Evidence& e) { return as_given || e.p < limit_alpha; };
  auto why = [&](const Evidence& e) {
    if (as_given) return std::string(" at the last stage's end");
    return std::string(look.final ? " (stage end: " : " (interim check: ") + PValue(e) + " < " + Sig(limit_alpha) + ")";
  };
  const uint64_t n = canary.requests;
  double err = static_cast<double>(canary.errors) / static_cast<double>(n);
  double p99 = static_cast<double>(canary.latency.Quantile(0.99)) / 1e6;
  // Timed requests slower than `ms` (a request that loaded its model is
  // counted, not timed), against 1% of them: by request.
  const uint64_t timed = canary.latency.count();
  auto slower = [&](double ms) {
    const uint64_t count = timed - canary.latency.CountAtMost(static_cast<int64_t>(ms * 1e6));
    return Evidence{BinomialUpperTail(count, timed, 0.01), ""};
  };
  v.kind = CanaryVerdict::kFail;
  if (err > c.max_error_rate) {
    const Evidence e = ErrorsAbove(canary, canary.errors, c.max_error_rate);
    if (exceeds(e)) {
      v.reason = "canary error rate " + Pct(err) + " > limit " + Pct(c.max_error_rate) + why(e) + ErrorDetail(canary);
      return v;
    }
  }
  if (p99 > c.max_p99_ms) {
    const Evidence e = slower(c.max_p99_ms);
    if (exceeds(e)) {
      v.reason = "canary p99 " + Ms(p99) + " > limit " + Ms(c.max_p99_ms) + why(e);
      return v;
    }
  }
  if (control.requests >= static_cast<uint64_t>(c.min_requests)) {
    const double alpha = look.final ? kCanaryAlpha : interim_alpha;
    double cerr = static_cast<double>(control.errors) / static_cast<double>(control.requests);
    const Evidence e = ErrorsAboveControl(control, canary);
    if (err > cerr && e.p < alpha) {
      v.reason = "canary error rate " + Pct(err) + " vs control " + Pct(cerr) + " (one-sided " + PValue(e) + " < " +
                 Sig(alpha) + ")" + ErrorDetail(canary);
      return v;
    }
    double cp99 = static_cast<double>(control.latency.Quantile(0.99)) / 1e6;
    // Slower than the ratio allows, and by more than kCanaryP99SlackMs: at
    // sub-millisecond latencies a ratio is scheduling noise (a review saw
    // identical models rolled back at 0.7 ms against 0.3 ms).
    const double bound = std::max(cp99 * c.max_p99_ratio, cp99 + kCanaryP99SlackMs);
    if (cp99 > 0 && p99 > bound) {
      const Evidence e = slower(bound);
      if (exceeds(e)) {
        char b[64];
        std::snprintf(b, sizeof b, "%.2f", p99 / cp99);
        v.reason = "canary p99 " + Ms(p99) + " is " + b + "x control's " + Ms(cp99) + " (limit " +
                   std::to_string(c.max_p99_ratio).substr(0, 4) + "x)" + why(e);
        return v;
      }
    }
  }
  v.kind = CanaryVerdict::kPass;
  v.reason = "error rate " + Pct(err) + ", p99 " + Ms(p99) + " within limits";
  return v;
}

std::vector<std::string> CanaryController::Tick() {
  std::vector<std::string> events;
  auto active = opts_.registry->ListCanaries(/*active_only=*/true);
  if (!active.ok()) {
    LogWarn("canary_tick_failed", {{"error", active.status().message()}});
    return events;
  }
  {
    std::lock_guard<std::mutex> lock(seen_mu_);
    seen_ = *active;
  }
  std::map<int64_t, bool> seen;
  for (const auto& c : *active) {
    seen[c.id] = true;
    Step(c, &events);
  }
  for (auto it = last_tick_.begin(); it != last_tick_.end();) it = seen.count(it->first) ? std::next(it) : last_tick_.erase(it);
  for (auto it = last_check_.begin(); it != last_check_.end();) it = seen.count(it->first) ? std::next(it) : last_check_.erase(it);
  for (auto it = elapsed_.begin(); it != elapsed_.end();) it = seen.count(it->first) ? std::next(it) : elapsed_.erase(it);
  // Ended by someone else while its rollback waited for the registry: routing goes back to the registry's.
  for (auto it = unsaved_rollbacks_.begin(); it != unsaved_rollbacks_.end();) {
    if (seen.count(it->first)) {
      ++it;
      continue;
    }
    if (opts_.hold_back) opts_.hold_back(it->second.experiment_id, false);
    IfPromotedMeanwhile(it->first, it->second.reason, &events);
    it = unsaved_rollbacks_.erase(it);
    UnsavedChanged();
  }
  return events;
}

std::string FormatUnsavedRollbacks(const std::vector<UnsavedRollback>& all) {
  nlohmann::json j = nlohmann::json::array();
  for (const auto& u : all)
    j.push_back({{"canary_id", u.canary_id}, {"experiment_id", u.experiment_id}, {"reason", u.reason}, {"check", u.check}});
  return j.dump() + "\n";
}

std::vector<UnsavedRollback> ParseUnsavedRollbacks(const std::string& text) {
  std::vector<UnsavedRollback> out;
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (!j.is_array()) return out;
  for (const auto& e : j)
    if (e.is_object() && e.value("canary_id", int64_t{0}) > 0 && e.contains("experiment_id") &&
        e["experiment_id"].is_string())
      out.push_back({e["canary_id"].get<int64_t>(), e["experiment_id"].get<std::string>(), e.value("reason", ""),
                     e.value("check", nlohmann::json())});
  return out;
}

void CanaryController::RestoreUnsaved(const std::vector<UnsavedRollback>& unsaved) {
  for (const auto& u : unsaved) unsaved_rollbacks_[u.canary_id] = u;
}

void CanaryController::UnsavedChanged() const {
  if (!opts_.unsaved_changed) return;
  std::vector<UnsavedRollback> all;
  for (const auto& [id, u] : unsaved_rollbacks_) all.push_back(u);
  opts_.unsaved_changed(all);
}

void CanaryController::IfPromotedMeanwhile(int64_t canary_id, const std::string& reason,
                                           std::vector<std::string>* events) {
  auto all = opts_.registry->ListCanaries(/*active_only=*/false);
  if (!all.ok()) return;
  for (const CanaryRecord& c : *all) {
    if (c.id != canary_id || c.state != "promoted") continue;
    const std::string where = c.model + ":" + c.candidate_version;
    const std::string back = "mms model stage " + c.model + ":" + c.baseline_version + " production";
    LogError("canary_promoted_despite_rollback",
             {{"model", c.model}, {"candidate", where}, {"reason", reason},
              {"note", "promoted by hand while mmsd was recording its rollback; to go back: " + back}});
    (void)opts_.registry->Audit("canary-verdict-overtaken", c.model, c.candidate_version, "promoted", "promoted",
                                "mmsd judged it failing as it was promoted by hand: " + reason + "; to go back: " + back);
    events->push_back("rollback overtaken by a promotion " + where + ": " + reason);
  }
}

bool CanaryController::Rollback(const CanaryRecord& c, std::string reason, std::vector<std::string>* events,
                                const nlohmann::json& check) {
  std::string where = c.model + ":" + c.candidate_version;
  // The canary's traffic stops before the write, which may wait out the
  // registry's busy timeout (another writer holds it): not after.
  const bool was_unsaved = unsaved_rollbacks_.count(c.id) > 0;
  if (!was_unsaved && opts_.hold_back) opts_.hold_back(c.experiment_id, true);
  auto r = opts_.registry->RollbackCanary(c.model, "rolled_back", reason, c.id, check);
  // Kept (and published) until the write succeeds or the canary ended
  // otherwise: erased before each retry, it read as no rollback pending
  // for the retry's busy timeout (a promote let through), and a crash then
  // forgot it.
  if (r.ok() || r.status().code() == Code::kConflict || r.status().code() == Code::kNotFound)
    if (unsaved_rollbacks_.erase(c.id) > 0) UnsavedChanged();
  if (r.ok()) {
    LogWarn("canary_rollback", {{"model", c.model}, {"candidate", where}, {"reason", reason}});
    events->push_back("rollback " + where + ": " + reason);
    if (opts_.hold_back) opts_.hold_back(c.experiment_id, false);  // the registry routes it no more
    if (opts_.changed) opts_.changed();
    return true;
  }
  // Ended or removed meanwhile by someone else: not ours to roll back. A
  // promotion by hand that overtook this verdict put a candidate mmsd had
  // just judged failing into production: said loudly, and audited, with
  // the way back.
  Code code = r.status().code();
  if (code == Code::kConflict || code == Code::kNotFound) {
    if (opts_.hold_back) opts_.hold_back(c.experiment_id, false);
    IfPromotedMeanwhile(c.id, reason, events);
    return false;
  }
  // The write failed: stop the canary's traffic in memory and keep trying.
  if (!was_unsaved) {
    unsaved_rollbacks_[c.id] = {c.id, c.experiment_id, reason, check};
    UnsavedChanged();
    LogError("canary_rollback_unsaved",
             {{"model", c.model}, {"candidate", where}, {"reason", reason}, {"error", r.status().message()},
              {"note", "the canary gets no traffic meanwhile; the rollback is written once the registry takes writes"}});
    events->push_back("rollback (unsaved) " + where + ": " + reason);
  }
  return false;
}

void CanaryController::Step(const CanaryRecord& c, std::vector<std::string>* events) {
  const int64_t now = opts_.clock->MonoNanos();
  auto tick = last_tick_.find(c.id);
  int64_t delta_ms = tick == last_tick_.end() ? 0 : (now - tick->second) / 1000000;
  last_tick_[c.id] = now;
  // One restored from another registry's daemon (the file beside a reused
  // socket) names another canary: dropped, never applied to this one.
  if (auto u = unsaved_rollbacks_.find(c.id); u != unsaved_rollbacks_.end() && u->second.experiment_id != c.experiment_id) {
    if (opts_.hold_back) opts_.hold_back(u->second.experiment_id, false);
    unsaved_rollbacks_.erase(u);
    UnsavedChanged();
  }
  if (auto u = unsaved_rollbacks_.find(c.id); u != unsaved_rollbacks_.end()) {
    UnsavedRollback judged = u->second;  // a copy: Rollback erases it
    (void)Rollback(c, judged.reason, events, judged.check);  // judged already: only the write is left
    return;
  }
  // Paused: the clock stands still and the canary never advances, but its
  // traffic stays, so it is still judged and rolled back when it fails.
  const bool paused = c.state == "paused";
  if (c.state != "running" && !paused) return;
  if (std::string why = opts_.load_failure ? opts_.load_failure(c) : ""; !why.empty()) {
    std::string reason = "the candidate could not be loaded: " + why;
    (void)Rollback(c, reason, events,
                   {{"verdict", "fail"}, {"look", "load"}, {"reason", reason}, {"stage", c.stage_index + 1},
                    {"traffic_percent", c.traffic_percent()}, {"at_ms", opts_.clock->UnixMillis()}});
    return;
  }
  auto& counted = elapsed_[c.id];
  const int64_t since = counted.first == c.stage_index ? std::max(counted.second, c.stage_elapsed_ms) : c.stage_elapsed_ms;
  int64_t elapsed = since + (paused ? 0 : delta_ms);
  counted = {c.stage_index, elapsed};
  auto last = last_check_.find(c.id);
  if (last != last_check_.end() && now - last->second < c.check_interval_ms * 1000000) {
    // Between checks only the elapsed time moves; persisting it now lets a
    // restarted daemon resume with the remaining time.
    if (delta_ms > 0 && !paused && now >= skip_check_writes_until_) {
      Registry::BriefWaits brief(opts_.registry, kBriefWriteWaitMs);
      (void)opts_.registry->RecordCanaryCheck(c.id, c.stage_index, elapsed, c.last_check);
    }
    return;
  }
  last_check_[c.id] = now;

  auto control_m = opts_.metrics(c.experiment_id, "control");
  auto canary_m = opts_.metrics(c.experiment_id, "treatment");
  VariantSnapshot control = control_m->Snapshot(), canary = canary_m->Snapshot();
  VariantSnapshot control_window = control, canary_window = canary;
  if (c.stage_start.contains("control")) control_window = control.Since(VariantSnapshot::FromJson(c.stage_start["control"]));
  if (c.stage_start.contains("treatment")) canary_window = canary.Since(VariantSnapshot::FromJson(c.stage_start["treatment"]));
  CanaryLook look;
  look.final = !paused && elapsed >= c.stage_duration_ms;
  look.last = c.last_stage();
  // A stage is checked at its start and every interval up to its end.
  look.looks = c.check_interval_ms > 0 ? (c.stage_duration_ms + c.check_interval_ms - 1) / c.check_interval_ms + 1 : 1;
  CanaryVerdict v = JudgeCanary(c, control_window, canary_window, look);
  nlohmann::json check{{"verdict", v.name()},
                       {"look", look.final ? "stage end" : paused ? "paused" : "interim"},
                       {"reason", v.reason},
                       {"figures", v.figures},
                       {"stage", c.stage_index + 1},  // 1-based, as in the log and mms canary start --wait
                       {"traffic_percent", c.traffic_percent()},
                       {"at_ms", opts_.clock->UnixMillis()}};
  std::string where = c.model + ":" + c.candidate_version;
  if (v.kind == CanaryVerdict::kFail) {
    std::string reason = v.reason + " at stage " + std::to_string(c.stage_index + 1) + " (" +
                         FormatPercent(c.traffic_percent()) + " traffic; canary " + ArmSummary(v.figures["canary"]) +
                         "; control " + ArmSummary(v.figures["control"]) + ")";
    (void)Rollback(c, reason, events, check);
    return;
  }
  // A pass or an inconclusive look: written (its elapsed time, for a restart)
  // unless writes are failing — then only a stage end, which must be.
  if (!look.final && now < skip_check_writes_until_) return;
  std::optional<Registry::BriefWaits> brief;  // an interim look is written again at the next
  if (!look.final) brief.emplace(opts_.registry, kBriefWriteWaitMs);
  auto rec = opts_.registry->RecordCanaryCheck(c.id, c.stage_index, elapsed, check);
  brief.reset();
  if (!rec.ok()) {  // moved on meanwhile (a CLI promote or abort), or the write failed
    if (rec.status().code() != Code::kConflict) {
      LogWarn("canary_check_unsaved", {{"model", c.model}, {"candidate", where}, {"error", rec.status().message()}});
      skip_check_writes_until_ = now + kSkipWritesNs;
    }
    return;
  }
  skip_check_writes_until_ = 0;
  if (paused || v.kind != CanaryVerdict::kPass || elapsed < c.stage_duration_ms) return;
  if (c.last_stage()) {
    auto p = opts_.registry->PromoteCanary(
        c.model, "all " + std::to_string(c.stages.size()) + " stages passed; last check: " + v.reason, c.id);
    if (p.ok()) {
      LogInfo("canary_promote", {{"model", c.model}, {"candidate", where}});
      events->push_back("promote " + where);
      if (opts_.changed) opts_.changed();
    }
    return;
  }
  nlohmann::json start{{"control", control.ToJson()}, {"treatment", canary.ToJson()}};
  auto a = opts_.registry->AdvanceCanary(c.id, c.stage_index, start);
  if (a.ok()) {
    LogInfo("canary_stage", {{"model", c.model}, {"candidate", where}, {"stage", a->stage_index + 1},
                             {"traffic_percent", a->traffic_percent()}});
    events->push_back("stage " + std::to_string(a->stage_index + 1) + " " + where + " at " +
                      FormatPercent(a->traffic_percent()));
    last_check_.erase(c.id);  // judge the new stage from its start
    if (opts_.changed) opts_.changed();
  }
}

}  // namespace mms
