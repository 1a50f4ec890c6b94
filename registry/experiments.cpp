// Registry: A/B experiments (and canaries, which are experiments of kind
// "canary") and their persisted per-variant metrics.
#include <algorithm>

#include "core/units.h"
#include "registry/registry.h"
#include "registry/sqlite.h"

namespace mms {

nlohmann::json ExperimentRecord::ToJson() const {
  nlohmann::json j{{"id", id},
          {"model", model},
          {"kind", kind},
          {"control", model + ":" + control_version},
          {"treatment", model + ":" + treatment_version},
          {"percent", percent()},
          {"random", random},
          {"metrics", metrics},
          {"state", state},
          {"winner", winner},
          {"created_ms", created_ms},
          {"updated_ms", updated_ms},
          {"created_by", created_by}};
  // An arm whose version was removed since (mms model rm --force): its ref
  // may now name a later registration with other weights.
  if (!control_id) j["control_removed"] = true;
  if (!treatment_id) j["treatment_removed"] = true;
  return j;
}

namespace {
constexpr const char* kExperimentColumns =
    "SELECT e.id, m.name, e.kind, IFNULL(e.control_id, 0), IFNULL(e.treatment_id, 0), e.control_version, "
    "e.treatment_version, e.basis_points, e.random, e.metrics_json, e.state, e.winner, e.created_ms, e.updated_ms, "
    "e.created_by FROM experiments e JOIN models m ON m.id = e.model_id ";

// A canary's experiment is driven by its canary (stages, checks, promotion):
// pausing, ramping or stopping it by hand would desynchronise the two.
Status RefuseCanary(const ExperimentRecord& e, const char* verb) {
  if (e.kind != "canary") return Status::Ok();
  return FailedPrecondition("'" + e.id + "' is the experiment of the canary of model '" + e.model +
                            "' and cannot be " + verb + " on its own; use mms canary pause|resume|promote|abort " +
                            e.model);
}
}  // namespace

Result<std::vector<ExperimentRecord>> Registry::QueryExperiments(const std::string& where,
                                                                 const std::vector<std::string>& args) {
  return sql::Collect<ExperimentRecord>(db_.get(), std::string(kExperimentColumns) + where, args, [](const sql::Stmt& st) {
    ExperimentRecord e;
    e.id = st.Text(0);
    e.model = st.Text(1);
    e.kind = st.Text(2);
    e.control_id = st.Int(3);
    e.treatment_id = st.Int(4);
    e.control_version = st.Text(5);
    e.treatment_version = st.Text(6);
    e.basis_points = static_cast<int>(st.Int(7));
    e.random = st.Int(8) != 0;
    auto m = nlohmann::json::parse(st.Text(9), nullptr, false);
    if (m.is_array())
      for (const auto& x : m)
        if (x.is_string()) e.metrics.push_back(x.get<std::string>());
    e.state = st.Text(10);
    e.winner = st.Text(11);
    e.created_ms = st.Int(12);
    e.updated_ms = st.Int(13);
    e.created_by = st.Text(14);
    return e;
  });
}

Result<ExperimentRecord> Registry::CreateExperiment(const NewExperiment& n) {
  if (n.basis_points < 0 || n.basis_points > 10000) return InvalidArgument("the treatment share must be 0-100%");
  for (size_t i = 0; i < n.metrics.size(); ++i) {
    MMS_RETURN_IF_ERROR(ValidateName(n.metrics[i], "metric name"));
    if (std::find(n.metrics.begin(), n.metrics.begin() + static_cast<std::ptrdiff_t>(i), n.metrics[i]) !=
        n.metrics.begin() + static_cast<std::ptrdiff_t>(i))
      return InvalidArgument("--metric " + n.metrics[i] + " is given twice; declare each metric once");
  }
  std::lock_guard<std::recursive_mutex> lock(mu_);
  MMS_ASSIGN_OR_RETURN(auto tx, sql::Tx::Begin(db_.get()));
  MMS_ASSIGN_OR_RETURN(auto dup, QueryExperiments("WHERE e.id = ?", {n.id}));
  if (!dup.empty())
    return AlreadyExists((dup[0].kind == "canary" ? "a canary" : "an experiment") + std::string(" with id '") + n.id +
                         "' already exists (" + dup[0].state + "); choose another id");
  MMS_ASSIGN_OR_RETURN(int64_t mid, ModelId(n.model));
  MMS_ASSIGN_OR_RETURN(VersionRecord control, ResolveLocked(n.control));
  MMS_ASSIGN_OR_RETURN(VersionRecord treatment, ResolveLocked(n.treatment));
  if (control.model != n.model || treatment.model != n.model)
    return InvalidArgument("control (" + control.ref() + ") and treatment (" + treatment.ref() +
                           ") must both be versions of model '" + n.model + "'");
  if (control.id == treatment.id)
    return InvalidArgument("control and treatment are the same version (" + control.ref() + ")");
  MMS_ASSIGN_OR_RETURN(auto active, QueryExperiments("WHERE e.model_id = ? AND e.state != 'stopped'", {std::to_string(mid)}));
  // The canary's own experiment normally stands for it; checked on its own too,
  // so an experiment can never join a canary in progress.
  MMS_ASSIGN_OR_RETURN(auto canaries, QueryCanaries("WHERE c.model_id = ? AND c.state IN ('running', 'paused')",
                                                    {std::to_string(mid)}));
  if (!active.empty() && active[0].kind == "canary" && !canaries.empty())
    active[0].state = canaries[0].state;  // its experiment runs on while the canary is paused: say the canary's
  if (!active.empty())
    return AlreadyExists("model '" + n.model + "' already has " + (active[0].kind == "canary" ? "canary '" : "experiment '") +
                         active[0].id + "' " + active[0].state + "; end it first (one per model: " +
                         (active[0].kind == "canary" ? "mms canary abort " + n.model + " or mms canary promote " + n.model
                                                     : "mms experiment stop " + active[0].id) +
                         ")");
  if (!canaries.empty())
    return AlreadyExists("model '" + n.model + "' has a canary of version " + canaries[0].candidate_version + " (" +
                         canaries[0].state + "); finish it first with mms canary promote|abort " + n.model +
                         " (one experiment or canary per model)");
  MMS_ASSIGN_OR_RETURN(auto ins, db_->Prepare(
      "INSERT INTO experiments (id, model_id, kind, control_id, treatment_id, control_version, treatment_version, "
      "basis_points, random, metrics_json, state, created_ms, updated_ms, created_by) "
      "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?)"));
  int64_t now = opts_.clock->UnixMillis();
  ins.Bind(1, n.id).Bind(2, mid).Bind(3, n.kind).Bind(4, control.id).Bind(5, treatment.id).Bind(6, control.version);
  ins.Bind(7, treatment.version).Bind(8, n.basis_points).Bind(9, n.random ? 1 : 0);
  ins.Bind(10, nlohmann::json(n.metrics).dump()).Bind(11, now).Bind(12, now).Bind(13, actor_);
  MMS_RETURN_IF_ERROR(ins.Run());
  MMS_RETURN_IF_ERROR(AuditLocked(n.kind == "canary" ? "canary-start" : "experiment-create", n.model, treatment.version,
                                  "", "running",
                                  n.id + ": " + control.ref() + " vs " + treatment.ref() + " at " +
                                      FormatPercent(n.basis_points / 100.0)));
  MMS_RETURN_IF_ERROR(Commit(tx));
  MMS_ASSIGN_OR_RETURN(auto out, QueryExperiments("WHERE e.id = ?", {n.id}));
  return out.at(0);
}

Result<ExperimentRecord> Registry::GetExperiment(const std::string& id) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  MMS_ASSIGN_OR_RETURN(auto found, QueryExperiments("WHERE e.id = ?", {id}));
  if (found.empty()) {
    MMS_ASSIGN_OR_RETURN(auto all, QueryExperiments("ORDER BY e.id", {}));
    std::vector<std::string> ids;
    for (const auto& e : all) ids.push_back(e.id);
    std::string hint = ClosestMatch(id, ids);
    return NotFound("unknown experiment '" + id + "'" + (hint.empty() ? "" : "; did you mean '" + hint + "'?"));
  }
  return found[0];
}

Result<std::vector<ExperimentRecord>> Registry::ListExperiments(bool include_stopped) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  return QueryExperiments(include_stopped ? "ORDER BY e.created_ms, e.id" : "WHERE e.state != 'stopped' ORDER BY e.id", {});
}

Result<ExperimentRecord> Registry::SetExperimentState(const std::string& id, const std::string& state) {
  if (state != "running" && state != "paused") return InvalidArgument("state must be running or paused");
  MMS_ASSIGN_OR_RETURN(ExperimentRecord e, GetExperiment(id));
  MMS_RETURN_IF_ERROR(RefuseCanary(e, state == "paused" ? "paused" : "resumed"));
  if (e.state == "stopped") return Conflict("experiment '" + id + "' is stopped; create a new one");
  if (e.state == state) return e;
  std::lock_guard<std::recursive_mutex> lock(mu_);
  MMS_ASSIGN_OR_RETURN(auto tx, sql::Tx::Begin(db_.get()));
  const int64_t now = opts_.clock->UnixMillis();
  MMS_ASSIGN_OR_RETURN(auto up, db_->Prepare("UPDATE experiments SET state = ?, updated_ms = ? WHERE id = ? AND state = ?"));
  up.Bind(1, state).Bind(2, now).Bind(3, id).Bind(4, e.state);
  MMS_RETURN_IF_ERROR(up.Run());
  if (db_->Changes() == 0) return Conflict("experiment '" + id + "' changed meanwhile; try again");
  MMS_RETURN_IF_ERROR(AuditLocked(state == "paused" ? (e.kind == "canary" ? "canary-pause" : "experiment-pause")
                                                    : (e.kind == "canary" ? "canary-resume" : "experiment-resume"),
                                  e.model, e.treatment_version, e.state, state, id));
  MMS_RETURN_IF_ERROR(Commit(tx));
  e.state = state;
  e.updated_ms = now;
  return e;
}

Result<ExperimentRecord> Registry::RampExperiment(const std::string& id, int basis_points, bool* unchanged) {
  if (unchanged) *unchanged = false;
  if (basis_points < 0 || basis_points > 10000) return InvalidArgument("the treatment share must be 0-100%");
  MMS_ASSIGN_OR_RETURN(ExperimentRecord e, GetExperiment(id));
  MMS_RETURN_IF_ERROR(RefuseCanary(e, "ramped"));
  if (e.state == "stopped") return Conflict("experiment '" + id + "' is stopped; create a new one");
  if (e.basis_points == basis_points) {  // (a rerun wrote "60% → 60%" to the audit log)
    if (unchanged) *unchanged = true;
    return e;
  }
  std::lock_guard<std::recursive_mutex> lock(mu_);
  MMS_ASSIGN_OR_RETURN(auto tx, sql::Tx::Begin(db_.get()));
  // Only as read: a stop (or another ramp) committed since is not overwritten.
  MMS_ASSIGN_OR_RETURN(auto up, db_->Prepare("UPDATE experiments SET basis_points = ?, updated_ms = ? "
                                             "WHERE id = ? AND state = ? AND basis_points = ?"));
  const int64_t now = opts_.clock->UnixMillis();
  up.Bind(1, basis_points).Bind(2, now).Bind(3, id).Bind(4, e.state).Bind(5, e.basis_points);
  MMS_RETURN_IF_ERROR(up.Run());
  if (db_->Changes() == 0) return Conflict("experiment '" + id + "' changed meanwhile; try again");
  MMS_RETURN_IF_ERROR(AuditLocked(e.kind == "canary" ? "canary-ramp" : "experiment-ramp", e.model, e.treatment_version,
                                  FormatPercent(e.percent()), FormatPercent(basis_points / 100.0), id));
  MMS_RETURN_IF_ERROR(Commit(tx));
  e.basis_points = basis_points;
  e.updated_ms = now;
  return e;
}

Result<ExperimentRecord> Registry::StopExperiment(const std::string& id, const std::string& winner) {
  if (!winner.empty() && winner != "control" && winner != "treatment")
    return InvalidArgument("--winner must be control or treatment");
  MMS_ASSIGN_OR_RETURN(ExperimentRecord e, GetExperiment(id));
  MMS_RETURN_IF_ERROR(RefuseCanary(e, "stopped"));
  if (e.state == "stopped") return Conflict("experiment '" + id + "' is already stopped");
  std::lock_guard<std::recursive_mutex> lock(mu_);
  MMS_ASSIGN_OR_RETURN(auto tx, sql::Tx::Begin(db_.get()));
  MMS_ASSIGN_OR_RETURN(auto up, db_->Prepare(
      "UPDATE experiments SET state = 'stopped', winner = ?, updated_ms = ? WHERE id = ? AND state != 'stopped'"));
  const int64_t now = opts_.clock->UnixMillis();
  up.Bind(1, winner).Bind(2, now).Bind(3, id);
  MMS_RETURN_IF_ERROR(up.Run());
  if (db_->Changes() == 0) return Conflict("experiment '" + id + "' is already stopped");
  MMS_RETURN_IF_ERROR(AuditLocked(e.kind == "canary" ? "canary-stop" : "experiment-stop", e.model, e.treatment_version,
                                  e.state, "stopped", id + (winner.empty() ? "" : ", winner " + winner)));
  if (!winner.empty()) {
    std::string version = winner == "control" ? e.control_version : e.treatment_version;
    MMS_RETURN_IF_ERROR(
        SetStageLocked(Ref{Ref::Kind::kVersion, e.model, version, ""}, Stage::kProduction, "winner of " + id).status());
  }
  MMS_RETURN_IF_ERROR(Commit(tx));
  e.state = "stopped";
  e.winner = winner;
  e.updated_ms = now;
  return e;
}

Status Registry::SaveExperimentMetrics(const std::string& id, const std::string& variant, const nlohmann::json& data) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  return SaveExperimentMetricsLocked(id, variant, data);
}

Status Registry::SaveExperimentMetricsLocked(const std::string& id, const std::string& variant,
                                             const nlohmann::json& data) {
  MMS_ASSIGN_OR_RETURN(auto st, db_->Prepare(
      "INSERT INTO experiment_metrics (experiment_id, variant, data_json, updated_ms) VALUES (?, ?, ?, ?) "
      "ON CONFLICT (experiment_id, variant) DO UPDATE SET data_json = excluded.data_json, updated_ms = excluded.updated_ms"));
  st.Bind(1, id).Bind(2, variant).Bind(3, data.dump()).Bind(4, opts_.clock->UnixMillis());
  return st.Run();  // figures, not routing: not counted as a registry change
}

Result<std::map<std::string, nlohmann::json>> Registry::LoadExperimentMetrics(const std::string& id) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  MMS_ASSIGN_OR_RETURN(auto st, db_->Prepare("SELECT variant, data_json FROM experiment_metrics WHERE experiment_id = ?"));
  st.Bind(1, id);
  std::map<std::string, nlohmann::json> out;
  while (true) {
    MMS_ASSIGN_OR_RETURN(bool row, st.Step());
    if (!row) break;
    auto j = nlohmann::json::parse(st.Text(1), nullptr, false);
    if (!j.is_discarded()) out[st.Text(0)] = std::move(j);
  }
  return out;
}

}  // namespace mms
