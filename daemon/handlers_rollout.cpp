// FEEDBACK, STATS.
#include <algorithm>
#include <cmath>

#include "daemon.h"
#include "protocol/messages.h"
#include "rollout/report.h"

namespace mms {
namespace {

nlohmann::json ExperimentReport(Daemon* d, const ExperimentRecord& e) {
  VariantSnapshot c = d->VariantFigures(e.id, "control");
  VariantSnapshot t = d->VariantFigures(e.id, "treatment");
  nlohmann::json j = mms::ExperimentReport(e, c, t, d->options().config.experiments.confidence);
  if (auto users = d->user_splits()->Find(e.id); users && !e.random)
    j["comparison"]["sample_ratio_users"] = UserSampleRatio(users->counts());
  return j;
}

void Feedback(Daemon* d, const proto::Message& req, Responder r) {
  std::string id = req.body.value("request_id", "");
  if (id.empty()) return r.Fail(InvalidArgument("feedback needs the request id the prediction replied with"));
  static const nlohmann::json kNone;
  // Both arms lvalues: a temporary in either would copy "metrics" (recursively).
  const nlohmann::json& m = req.body.contains("metrics") ? req.body["metrics"] : kNone;
  if (!m.is_object() || m.empty())
    return r.Fail(InvalidArgument("feedback needs at least one metric: --metric NAME=VALUE"));
  std::vector<std::string> names;
  for (auto it = m.begin(); it != m.end(); ++it) {
    if (Status st = ValidateName(it.key(), "metric name"); !st.ok()) return r.Fail(st);
    if (!it->is_number()) return r.Fail(InvalidArgument("metric '" + it.key() + "' needs a numeric value"));
    if (double v = it->get<double>(); !(std::fabs(v) <= VariantMetrics::kMaxOutcome))
      return r.Fail(InvalidArgument("metric '" + it.key() + "' = " + it->dump() +
                                    ": values must be finite and at most 1e15 in magnitude (scale it, e.g. cents to dollars)"));
    names.push_back(it.key());
  }
  auto who = d->attribution()->Lookup(id);
  if (!who.ok()) return r.Fail(who.status());
  auto e = d->registry()->GetExperiment(who->experiment);
  if (!e.ok()) return r.Fail(e.status());
  if (!e->metrics.empty())
    for (const auto& n : names)
      if (std::find(e->metrics.begin(), e->metrics.end(), n) == e->metrics.end()) {
        std::string list;
        for (const auto& x : e->metrics) list += (list.empty() ? "" : ", ") + x;
        return r.Fail(InvalidArgument("experiment '" + e->id + "' tracks " + list + "; '" + n +
                                      "' is not one of its metrics"));
      }
  // The figures the outcome goes to, before the claim: ones that could not
  // be restored are never saved, and a claim recorded into them would be
  // refused when sent again while its outcome was lost.
  bool published = true;
  auto metrics = d->VariantMetricsFor(who->experiment, VariantName(who->variant), &published);
  if (!published)
    return r.Fail(Status(Code::kLocked, "the figures of experiment '" + who->experiment +
                                                 "' could not be read from the registry (locked by another writer?); nothing was recorded: retry"));
  auto claimed = d->attribution()->Claim(id, names);
  if (!claimed.ok()) return r.Fail(claimed.status());
  for (auto it = m.begin(); it != m.end(); ++it) metrics->Outcome(it.key(), it->get<double>(), claimed->user_bucket);
  d->attribution()->Recorded(id, names);  // journaled once the flush has saved these outcomes
  r.Send(nlohmann::json{{"request_id", id},
                        {"experiment", claimed->experiment},
                        {"variant", VariantName(claimed->variant)},
                        {"recorded", names}});
}

void Stats(Daemon* d, const proto::Message& req, Responder r) {
  if (Status st = d->CheckSameRegistry(req.body); !st.ok()) return r.Fail(st);
  nlohmann::json out;
  nlohmann::json exps = nlohmann::json::array();
  if (req.body.contains("experiment") && req.body["experiment"].is_string()) {
    auto e = d->registry()->GetExperiment(req.body["experiment"].get<std::string>());
    if (!e.ok()) return r.Fail(e.status());
    exps.push_back(ExperimentReport(d, *e));
  } else {
    auto all = d->registry()->ListExperiments(true);
    if (!all.ok()) return r.Fail(all.status());
    for (const auto& e : *all) exps.push_back(ExperimentReport(d, e));
    nlohmann::json models = nlohmann::json::array();
    for (const auto& [ref, m] : d->serving_metrics()->All()) {
      nlohmann::json f = ServingFigures(m->Snapshot());
      f["ref"] = ref;
      models.push_back(std::move(f));
    }
    out["models"] = models;
  }
  out["experiments"] = exps;
  r.Send(std::move(out));
}

}  // namespace

void AddRolloutHandlers(Daemon* d, std::map<uint16_t, Handler>* table) {
  (*table)[proto::kFeedback] = [d](proto::Message req, Responder r) { Feedback(d, req, r); };
  (*table)[proto::kStats] = [d](proto::Message req, Responder r) { Stats(d, req, r); };
}

}  // namespace mms
