// Registry: shadow runs and canary rollouts. Every transition is one
// transaction with its audit entries; controller writes are conditional on
// the state the caller saw, so a CLI command racing the daemon cannot
// interleave half of one transition with the other.
#include <cmath>

#include "core/units.h"
#include "registry/registry.h"
#include "registry/sqlite.h"

namespace mms {

nlohmann::json ShadowRecord::ToJson() const {
  nlohmann::json j{{"model", model},       {"candidate", candidate_ref()}, {"ratio", ratio},     {"queue", queue},
                   {"tolerance", tolerance}, {"state", state},               {"started_ms", started_ms},
                   {"reason", reason},     {"created_by", created_by}};
  j["ends_ms"] = ends_ms ? nlohmann::json(ends_ms) : nlohmann::json(nullptr);
  j["stopped_ms"] = stopped_ms ? nlohmann::json(stopped_ms) : nlohmann::json(nullptr);
  return j;
}

nlohmann::json CanaryRecord::ToJson() const {
  return {{"model", model},
          {"experiment", experiment_id},
          {"candidate", model + ":" + candidate_version},
          {"baseline", model + ":" + baseline_version},
          {"stages", stages},
          {"stage_index", stage_index},
          // What the candidate serves now: all traffic once promoted, none once
          // rolled back or aborted; the stage it had reached stays in stage_*.
          {"traffic_percent", state == "promoted"                            ? 100.0
                              : state == "rolled_back" || state == "aborted" ? 0.0
                                                                             : traffic_percent()},
          {"stage_traffic_percent", traffic_percent()},
          {"stage_duration_ms", stage_duration_ms},
          {"check_interval_ms", check_interval_ms},
          {"stage_elapsed_ms", stage_elapsed_ms},
          {"stage_remaining_ms", std::max<int64_t>(0, stage_duration_ms - stage_elapsed_ms)},
          {"limits", {{"max_error_rate", max_error_rate}, {"max_p99_ms", max_p99_ms}, {"max_p99_ratio", max_p99_ratio},
                      {"min_requests", min_requests}}},
          {"state", state},
          {"last_check", last_check},
          {"reason", reason},
          {"created_ms", created_ms},
          {"updated_ms", updated_ms},
          {"created_by", created_by}};
}

// ---------------------------------------------------------------------------
// Shadows

Result<std::vector<ShadowRecord>> Registry::QueryShadows(const std::string& where, const std::vector<std::string>& args) {
  static constexpr const char* kColumns =
      "SELECT s.id, m.name, IFNULL(s.candidate_id, 0), s.candidate_version, s.ratio, s.queue, s.tolerance, s.state, "
      "s.started_ms, IFNULL(s.ends_ms, 0), IFNULL(s.stopped_ms, 0), s.reason, s.created_by, s.figures_json, "
      "s.figures_ms FROM shadows s "
      "JOIN models m ON m.id = s.model_id ";
  return sql::Collect<ShadowRecord>(db_.get(), kColumns + where, args, [](const sql::Stmt& st) {
    ShadowRecord s;
    s.id = st.Int(0);
    s.model = st.Text(1);
    s.candidate_id = st.Int(2);
    s.candidate_version = st.Text(3);
    s.ratio = st.Double(4);
    s.queue = static_cast<int>(st.Int(5));
    s.tolerance = st.Double(6);
    s.state = st.Text(7);
    s.started_ms = st.Int(8);
    s.ends_ms = st.Int(9);
    s.stopped_ms = st.Int(10);
    s.reason = st.Text(11);
    s.created_by = st.Text(12);
    s.figures = nlohmann::json::parse(st.Text(13), nullptr, false);
    if (s.figures.is_discarded() || s.figures.empty()) s.figures = nullptr;
    s.figures_ms = st.Int(14);
    return s;
  });
}

Status Registry::SaveShadowFigures(int64_t id, const nlohmann::json& figures) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  MMS_ASSIGN_OR_RETURN(auto up, db_->Prepare("UPDATE shadows SET figures_json = ?, figures_ms = ? WHERE id = ?"));
  up.Bind(1, figures.dump()).Bind(2, opts_.clock->UnixMillis()).Bind(3, id);
  return up.Run();
}

Result<ShadowRecord> Registry::StartShadow(const std::string& model, const Ref& candidate, double ratio, int queue,
                                           double tolerance, int64_t duration_ms) {
  if (!(ratio > 0 && ratio <= 1)) return InvalidArgument("--ratio must be in (0, 1] (the share of requests mirrored)");
  if (queue < 1 || queue > 1000000) return InvalidArgument("--queue must be between 1 and 1000000");
  if (!(tolerance >= 0) || !std::isfinite(tolerance)) return InvalidArgument("--tolerance must be a number >= 0");
  if (duration_ms < 0) return InvalidArgument("--duration must not be negative");
  std::lock_guard<std::recursive_mutex> lock(mu_);
  MMS_ASSIGN_OR_RETURN(auto tx, sql::Tx::Begin(db_.get()));
  MMS_ASSIGN_OR_RETURN(int64_t mid, ModelId(model));
  MMS_ASSIGN_OR_RETURN(VersionRecord cand, ResolveLocked(candidate));
  if (cand.model != model) return InvalidArgument("the candidate " + cand.ref() + " is not a version of '" + model + "'");
  MMS_ASSIGN_OR_RETURN(VersionRecord primary, ResolveLocked(Ref{Ref::Kind::kName, model, "", ""}));
  if (primary.id == cand.id)
    return FailedPrecondition(cand.ref() + " is what '" + model + "' serves already: nothing to compare it with; "
                              "shadow another version");
  MMS_ASSIGN_OR_RETURN(auto running, QueryShadows("WHERE s.model_id = ? AND s.state = 'running'", {std::to_string(mid)}));
  if (!running.empty())
    return AlreadyExists("model '" + model + "' already shadows " + running[0].candidate_ref() +
                         "; stop it first (mms shadow stop " + model + ")");
  int64_t now = opts_.clock->UnixMillis();
  MMS_ASSIGN_OR_RETURN(auto ins, db_->Prepare(
      "INSERT INTO shadows (model_id, candidate_id, candidate_version, ratio, queue, tolerance, state, started_ms, "
      "ends_ms, created_by) VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?, ?)"));
  ins.Bind(1, mid).Bind(2, cand.id).Bind(3, cand.version).Bind(4, ratio).Bind(5, queue).Bind(6, tolerance);
  ins.Bind(7, now).Bind(8, duration_ms ? std::optional<int64_t>(now + duration_ms) : std::nullopt).Bind(9, actor_);
  MMS_RETURN_IF_ERROR(ins.Run());
  MMS_RETURN_IF_ERROR(AuditLocked("shadow-start", model, cand.version, "", "running",
                                  "ratio " + std::to_string(ratio) + ", tolerance " + std::to_string(tolerance)));
  MMS_RETURN_IF_ERROR(Commit(tx));
  MMS_ASSIGN_OR_RETURN(auto out, QueryShadows("WHERE s.model_id = ? AND s.state = 'running'", {std::to_string(mid)}));
  return out.at(0);
}

Result<ShadowRecord> Registry::StopShadow(const std::string& model, const std::string& reason) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  MMS_ASSIGN_OR_RETURN(auto tx, sql::Tx::Begin(db_.get()));
  MMS_ASSIGN_OR_RETURN(int64_t mid, ModelId(model));
  MMS_ASSIGN_OR_RETURN(auto running, QueryShadows("WHERE s.model_id = ? AND s.state = 'running'", {std::to_string(mid)}));
  if (running.empty()) {
    // Stopped already (by hand, its duration, its candidate's removal): as
    // for experiments and canaries that ended meanwhile, CONFLICT.
    MMS_ASSIGN_OR_RETURN(auto last, QueryShadows("WHERE s.model_id = ? ORDER BY s.id DESC LIMIT 1", {std::to_string(mid)}));
    if (last.empty())
      return NotFound("model '" + model + "' has never had a shadow run (start one with mms shadow start)");
    return Status(Code::kConflict, "the shadow run of " + model + " (candidate " + last[0].candidate_ref() +
                                       ") has already stopped (" + last[0].reason + "); mms shadow start starts another");
  }
  MMS_ASSIGN_OR_RETURN(auto up, db_->Prepare("UPDATE shadows SET state = 'stopped', stopped_ms = ?, reason = ? WHERE id = ?"));
  up.Bind(1, opts_.clock->UnixMillis()).Bind(2, reason).Bind(3, running[0].id);
  MMS_RETURN_IF_ERROR(up.Run());
  MMS_RETURN_IF_ERROR(AuditLocked("shadow-stop", model, running[0].candidate_version, "running", "stopped", reason));
  MMS_RETURN_IF_ERROR(Commit(tx));
  MMS_ASSIGN_OR_RETURN(auto out, QueryShadows("WHERE s.id = ?", {std::to_string(running[0].id)}));
  return out.at(0);
}

Result<ShadowRecord> Registry::GetShadow(const std::string& model) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  MMS_RETURN_IF_ERROR(ModelId(model).status());
  MMS_ASSIGN_OR_RETURN(auto out, QueryShadows("WHERE m.name = ? ORDER BY s.id DESC LIMIT 1", {model}));
  if (out.empty()) return NotFound("model '" + model + "' has never had a shadow run (start one with mms shadow start)");
  return out[0];
}

Result<std::vector<ShadowRecord>> Registry::ListShadows(bool running_only) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  return QueryShadows(running_only ? "WHERE s.state = 'running' ORDER BY m.name" : "ORDER BY s.id", {});
}

// ---------------------------------------------------------------------------
// Canaries

Result<std::vector<CanaryRecord>> Registry::QueryCanaries(const std::string& where, const std::vector<std::string>& args) {
  static constexpr const char* kColumns =
      "SELECT c.id, m.name, c.experiment_id, c.candidate_version, c.baseline_version, c.stages_json, c.stage_index, "
      "c.stage_duration_ms, c.check_interval_ms, c.max_error_rate, c.max_p99_ms, c.max_p99_ratio, c.min_requests, "
      "c.state, c.stage_elapsed_ms, c.stage_start_json, c.last_check_json, c.reason, c.created_ms, c.updated_ms, "
      "c.created_by FROM canaries c JOIN models m ON m.id = c.model_id ";
  return sql::Collect<CanaryRecord>(db_.get(), kColumns + where, args, [](const sql::Stmt& st) {
    CanaryRecord c;
    c.id = st.Int(0);
    c.model = st.Text(1);
    c.experiment_id = st.Text(2);
    c.candidate_version = st.Text(3);
    c.baseline_version = st.Text(4);
    auto stages = nlohmann::json::parse(st.Text(5), nullptr, false);
    if (stages.is_array())
      for (const auto& s : stages) c.stages.push_back(s.get<double>());
    c.stage_index = static_cast<int>(st.Int(6));
    c.stage_duration_ms = st.Int(7);
    c.check_interval_ms = st.Int(8);
    c.max_error_rate = st.Double(9);
    c.max_p99_ms = st.Double(10);
    c.max_p99_ratio = st.Double(11);
    c.min_requests = st.Int(12);
    c.state = st.Text(13);
    c.stage_elapsed_ms = st.Int(14);
    c.stage_start = nlohmann::json::parse(st.Text(15), nullptr, false);
    c.last_check = nlohmann::json::parse(st.Text(16), nullptr, false);
    c.reason = st.Text(17);
    c.created_ms = st.Int(18);
    c.updated_ms = st.Int(19);
    c.created_by = st.Text(20);
    return c;
  });
}

Status Registry::StopExperimentLocked(const std::string& id, const std::string& winner, const std::string& detail) {
  MMS_ASSIGN_OR_RETURN(auto up, db_->Prepare(
      "UPDATE experiments SET state = 'stopped', winner = ?, updated_ms = ? WHERE id = ? AND state != 'stopped'"));
  up.Bind(1, winner).Bind(2, opts_.clock->UnixMillis()).Bind(3, id);
  MMS_RETURN_IF_ERROR(up.Run());
  (void)detail;
  return Status::Ok();
}

Result<CanaryRecord> Registry::StartCanary(const NewCanary& n) {
  if (n.stages.empty()) return InvalidArgument("--stages needs at least one percentage");
  for (size_t i = 0; i < n.stages.size(); ++i) {
    double s = n.stages[i];
    if (!(s > 0 && s <= 100))
      return InvalidArgument("--stages: " + FormatPercent(s) + " is outside (0, 100]; use e.g. 1,5,10,25,50,100");
    if (FinerThanBasisPoint(s))  // (0.001 showed as 0.00% and routed 0.01%)
    {
      char text[32];
      std::snprintf(text, sizeof text, "%.10g", s);
      return InvalidArgument(std::string("--stages: ") + text + " is finer than 0.01%, the finest split mms routes");
    }
    if (i && !(s > n.stages[i - 1]))
      return InvalidArgument("--stages must increase (" + FormatPercent(n.stages[i - 1]) + " then " +
                             FormatPercent(s) + ")");
  }
  if (n.stage_duration_ms < 0 || n.check_interval_ms <= 0)
    return InvalidArgument("--stage-duration must be >= 0 and --check-interval > 0");
  if (!(n.max_error_rate >= 0 && n.max_error_rate <= 1)) return InvalidArgument("--max-error-rate must be in [0, 1]");
  if (!(n.max_p99_ms > 0)) return InvalidArgument("--max-p99-ms must be positive");
  if (!(n.max_p99_ratio > 0)) return InvalidArgument("--max-p99-ratio must be positive");
  if (n.min_requests < 1) return InvalidArgument("--min-requests must be at least 1");
  std::lock_guard<std::recursive_mutex> lock(mu_);
  MMS_ASSIGN_OR_RETURN(auto tx, sql::Tx::Begin(db_.get()));
  MMS_ASSIGN_OR_RETURN(int64_t mid, ModelId(n.model));
  MMS_ASSIGN_OR_RETURN(VersionRecord cand, ResolveLocked(n.candidate));
  if (cand.model != n.model)
    return InvalidArgument("the candidate " + cand.ref() + " is not a version of '" + n.model + "'");
  MMS_ASSIGN_OR_RETURN(auto prod, QueryVersions("WHERE v.model_id = ? AND v.stage = 'production'", {std::to_string(mid)}));
  if (prod.empty())
    return FailedPrecondition("model '" + n.model +
                              "' has no production version to compare the canary with; stage one first");
  if (prod[0].id == cand.id)
    return FailedPrecondition(cand.ref() + " is already the production version: nothing to roll out; pick another "
                              "candidate");
  MMS_ASSIGN_OR_RETURN(auto active, QueryCanaries("WHERE c.model_id = ? AND c.state IN ('running', 'paused')",
                                                  {std::to_string(mid)}));
  if (!active.empty())
    return AlreadyExists("model '" + n.model + "' already has a canary of " + n.model + ":" +
                         active[0].candidate_version + " (" + active[0].state + "): mms canary wait " + n.model +
                         " waits for it to end, mms canary abort " + n.model + " ends it now");
  MMS_ASSIGN_OR_RETURN(auto exps, QueryExperiments("WHERE e.model_id = ? AND e.state != 'stopped'", {std::to_string(mid)}));
  if (!exps.empty())
    return AlreadyExists("model '" + n.model + "' has experiment '" + exps[0].id + "' running; stop it first (mms experiment stop " +
                         exps[0].id + ")");
  // The traffic split: an experiment of kind canary, id unique per attempt.
  std::string eid = "canary-" + n.model + "-" + cand.version;
  for (int k = 2;; ++k) {
    MMS_ASSIGN_OR_RETURN(auto taken, QueryExperiments("WHERE e.id = ?", {eid}));
    if (taken.empty()) break;
    eid = "canary-" + n.model + "-" + cand.version + "-" + std::to_string(k);
  }
  int64_t now = opts_.clock->UnixMillis();
  int bp = PercentBasisPoints(n.stages[0]);
  MMS_ASSIGN_OR_RETURN(auto ie, db_->Prepare(
      "INSERT INTO experiments (id, model_id, kind, control_id, treatment_id, control_version, treatment_version, "
      "basis_points, random, metrics_json, state, created_ms, updated_ms, created_by) "
      "VALUES (?, ?, 'canary', ?, ?, ?, ?, ?, 0, '[]', 'running', ?, ?, ?)"));
  ie.Bind(1, eid).Bind(2, mid).Bind(3, prod[0].id).Bind(4, cand.id).Bind(5, prod[0].version).Bind(6, cand.version);
  ie.Bind(7, bp).Bind(8, now).Bind(9, now).Bind(10, actor_);
  MMS_RETURN_IF_ERROR(ie.Run());
  MMS_ASSIGN_OR_RETURN(auto ic, db_->Prepare(
      "INSERT INTO canaries (model_id, experiment_id, candidate_version, baseline_version, stages_json, stage_index, "
      "stage_duration_ms, check_interval_ms, max_error_rate, max_p99_ms, max_p99_ratio, min_requests, state, "
      "created_ms, updated_ms, created_by) VALUES (?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?)"));
  ic.Bind(1, mid).Bind(2, eid).Bind(3, cand.version).Bind(4, prod[0].version).Bind(5, nlohmann::json(n.stages).dump());
  ic.Bind(6, n.stage_duration_ms).Bind(7, n.check_interval_ms).Bind(8, n.max_error_rate).Bind(9, n.max_p99_ms);
  ic.Bind(10, n.max_p99_ratio).Bind(11, n.min_requests).Bind(12, now).Bind(13, now).Bind(14, actor_);
  MMS_RETURN_IF_ERROR(ic.Run());
  MMS_RETURN_IF_ERROR(SetStageLocked(Ref{Ref::Kind::kVersion, n.model, cand.version, ""}, Stage::kCanary,
                                     "canary started").status());
  MMS_RETURN_IF_ERROR(AuditLocked("canary-start", n.model, cand.version, "", "stage 1: " + FormatPercent(n.stages[0]),
                                  "against " + prod[0].ref()));
  MMS_RETURN_IF_ERROR(Commit(tx));
  return ActiveCanaryLocked(n.model);
}

Result<CanaryRecord> Registry::ActiveCanaryLocked(const std::string& model) {
  // An unknown model said as such (with a suggestion), by every canary command alike.
  MMS_RETURN_IF_ERROR(ModelId(model).status());
  MMS_ASSIGN_OR_RETURN(auto out, QueryCanaries("WHERE m.name = ? ORDER BY c.id DESC LIMIT 1", {model}));
  if (out.empty()) return NotFound("model '" + model + "' has no canary (start one with mms canary start)");
  return out[0];
}

Result<CanaryRecord> Registry::GetCanary(const std::string& model) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  return ActiveCanaryLocked(model);
}

Result<std::vector<CanaryRecord>> Registry::ListCanaries(bool active_only) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  return QueryCanaries(active_only ? "WHERE c.state IN ('running', 'paused') ORDER BY m.name" : "ORDER BY c.id", {});
}

Result<CanaryRecord> Registry::SetCanaryState(const std::string& model, const std::string& state) {
  if (state != "running" && state != "paused") return InvalidArgument("state must be running or paused");
  std::lock_guard<std::recursive_mutex> lock(mu_);
  MMS_ASSIGN_OR_RETURN(auto tx, sql::Tx::Begin(db_.get()));
  MMS_ASSIGN_OR_RETURN(CanaryRecord c, ActiveCanaryLocked(model));
  if (!c.active()) return Conflict("the canary of '" + model + "' has ended (" + c.state + ")");
  if (c.state == state) return c;
  MMS_ASSIGN_OR_RETURN(auto up, db_->Prepare("UPDATE canaries SET state = ?, updated_ms = ? WHERE id = ?"));
  up.Bind(1, state).Bind(2, opts_.clock->UnixMillis()).Bind(3, c.id);
  MMS_RETURN_IF_ERROR(up.Run());
  MMS_RETURN_IF_ERROR(AuditLocked(state == "paused" ? "canary-pause" : "canary-resume", model, c.candidate_version,
                                  c.state, state, "at " + FormatPercent(c.traffic_percent())));
  MMS_RETURN_IF_ERROR(Commit(tx));
  return ActiveCanaryLocked(model);
}

Result<CanaryRecord> Registry::RecordCanaryCheck(int64_t id, int stage_index, int64_t elapsed_ms,
                                                 const nlohmann::json& check) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  MMS_ASSIGN_OR_RETURN(auto up, db_->Prepare(
      "UPDATE canaries SET stage_elapsed_ms = ?, last_check_json = ?, updated_ms = ? "
      "WHERE id = ? AND stage_index = ? AND state IN ('running', 'paused')"));
  up.Bind(1, elapsed_ms).Bind(2, check.dump()).Bind(3, opts_.clock->UnixMillis()).Bind(4, id).Bind(5, stage_index);
  MMS_RETURN_IF_ERROR(up.Run());
  if (db_->Changes() == 0) return Conflict("the canary moved on meanwhile");
  MMS_ASSIGN_OR_RETURN(auto out, QueryCanaries("WHERE c.id = ?", {std::to_string(id)}));
  return out.at(0);
}

Result<CanaryRecord> Registry::AdvanceCanary(int64_t id, int from_stage, const nlohmann::json& stage_start) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  MMS_ASSIGN_OR_RETURN(auto tx, sql::Tx::Begin(db_.get()));
  MMS_ASSIGN_OR_RETURN(auto found, QueryCanaries("WHERE c.id = ?", {std::to_string(id)}));
  if (found.empty()) return NotFound("no such canary");
  CanaryRecord c = found[0];
  if (c.state != "running" || c.stage_index != from_stage || c.last_stage())
    return Conflict("the canary moved on meanwhile");
  double next = c.stages[static_cast<size_t>(from_stage + 1)];
  MMS_ASSIGN_OR_RETURN(auto up, db_->Prepare(
      "UPDATE canaries SET stage_index = ?, stage_elapsed_ms = 0, stage_start_json = ?, updated_ms = ? WHERE id = ?"));
  up.Bind(1, from_stage + 1).Bind(2, stage_start.dump()).Bind(3, opts_.clock->UnixMillis()).Bind(4, id);
  MMS_RETURN_IF_ERROR(up.Run());
  MMS_ASSIGN_OR_RETURN(auto ramp, db_->Prepare("UPDATE experiments SET basis_points = ?, updated_ms = ? WHERE id = ?"));
  ramp.Bind(1, PercentBasisPoints(next)).Bind(2, opts_.clock->UnixMillis()).Bind(3, c.experiment_id);
  MMS_RETURN_IF_ERROR(ramp.Run());
  // The figures the new stage is measured from, saved with it: a daemon
  // killed before its next metrics flush restores at least these, so the
  // stage's window never starts ahead of the restored totals.
  for (const char* variant : {"control", "treatment"})
    if (stage_start.contains(variant))
      MMS_RETURN_IF_ERROR(SaveExperimentMetricsLocked(c.experiment_id, variant, stage_start[variant]));
  MMS_RETURN_IF_ERROR(AuditLocked("canary-stage", c.model, c.candidate_version,
                                  FormatPercent(c.traffic_percent()), FormatPercent(next),
                                  "stage " + std::to_string(from_stage + 2) + " of " + std::to_string(c.stages.size())));
  MMS_RETURN_IF_ERROR(Commit(tx));
  MMS_ASSIGN_OR_RETURN(auto out, QueryCanaries("WHERE c.id = ?", {std::to_string(id)}));
  return out.at(0);
}

namespace {
// `paused_ok`: a rollback is judged on a paused canary too (its traffic stays).
Status StillJudged(const CanaryRecord& c, const std::string& model, int64_t running_id, bool paused_ok = false) {
  if (!c.active()) return Conflict("the canary of '" + model + "' has ended (" + c.state + ")");
  if (running_id && (c.id != running_id || (c.state != "running" && !(paused_ok && c.state == "paused"))))
    return Conflict("the canary of '" + model + "' changed since it was judged (" + c.state + ")");
  return Status::Ok();
}
}  // namespace

Result<CanaryRecord> Registry::PromoteCanary(const std::string& model, const std::string& reason, int64_t running_id) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  MMS_ASSIGN_OR_RETURN(auto tx, sql::Tx::Begin(db_.get()));
  MMS_ASSIGN_OR_RETURN(CanaryRecord c, ActiveCanaryLocked(model));
  MMS_RETURN_IF_ERROR(StillJudged(c, model, running_id));
  MMS_ASSIGN_OR_RETURN(auto up, db_->Prepare(
      "UPDATE canaries SET state = 'promoted', reason = ?, updated_ms = ? WHERE id = ?"));
  up.Bind(1, reason).Bind(2, opts_.clock->UnixMillis()).Bind(3, c.id);
  MMS_RETURN_IF_ERROR(up.Run());
  MMS_RETURN_IF_ERROR(StopExperimentLocked(c.experiment_id, "treatment", reason));
  MMS_RETURN_IF_ERROR(SetStageLocked(Ref{Ref::Kind::kVersion, model, c.candidate_version, ""}, Stage::kProduction,
                                     "canary promoted: " + reason)
                          .status());
  MMS_RETURN_IF_ERROR(AuditLocked("canary-promote", model, c.candidate_version, c.state, "promoted", reason));
  MMS_RETURN_IF_ERROR(Commit(tx));
  return ActiveCanaryLocked(model);
}

Result<CanaryRecord> Registry::RollbackCanary(const std::string& model, const std::string& state,
                                              const std::string& reason, int64_t running_id,
                                              const nlohmann::json& check) {
  if (state != "rolled_back" && state != "aborted") return InvalidArgument("state must be rolled_back or aborted");
  std::lock_guard<std::recursive_mutex> lock(mu_);
  MMS_ASSIGN_OR_RETURN(auto tx, sql::Tx::Begin(db_.get()));
  MMS_ASSIGN_OR_RETURN(CanaryRecord c, ActiveCanaryLocked(model));
  MMS_RETURN_IF_ERROR(StillJudged(c, model, running_id, /*paused_ok=*/true));
  if (!check.is_null()) {
    MMS_ASSIGN_OR_RETURN(auto up, db_->Prepare("UPDATE canaries SET last_check_json = ? WHERE id = ?"));
    up.Bind(1, check.dump()).Bind(2, c.id);
    MMS_RETURN_IF_ERROR(up.Run());
  }
  MMS_RETURN_IF_ERROR(EndCanaryLocked(c, state, reason));
  MMS_RETURN_IF_ERROR(Commit(tx));
  return ActiveCanaryLocked(model);
}

Status Registry::EndCanaryLocked(const CanaryRecord& c, const std::string& state, const std::string& reason) {
  MMS_ASSIGN_OR_RETURN(auto up, db_->Prepare("UPDATE canaries SET state = ?, reason = ?, updated_ms = ? WHERE id = ?"));
  up.Bind(1, state).Bind(2, reason).Bind(3, opts_.clock->UnixMillis()).Bind(4, c.id);
  MMS_RETURN_IF_ERROR(up.Run());
  MMS_RETURN_IF_ERROR(StopExperimentLocked(c.experiment_id, "control", reason));
  MMS_RETURN_IF_ERROR(SetStageLocked(Ref{Ref::Kind::kVersion, c.model, c.candidate_version, ""}, Stage::kArchived,
                                     (state == "aborted" ? "canary aborted: " : "canary rolled back: ") + reason)
                          .status());
  return AuditLocked(state == "aborted" ? "canary-abort" : "canary-rollback", c.model, c.candidate_version, c.state,
                     state, reason);
}

}  // namespace mms
