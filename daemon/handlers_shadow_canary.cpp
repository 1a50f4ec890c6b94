// SHADOW_STATS, SHADOW_SAMPLES, CANARY_STATUS.
#include "daemon.h"
#include "core/units.h"
#include "protocol/messages.h"

namespace mms {

void AddShadowCanaryHandlers(Daemon* d, std::map<uint16_t, Handler>* table) {
  (*table)[proto::kShadowStats] = [d](proto::Message req, Responder r) {
    std::string model = req.body.value("model", "");
    if (Status st = ValidateName(model); !st.ok()) return r.Fail(st);
    auto s = d->shadows()->Stats(model);
    if (!s.ok()) {
      // Known to the registry: just started, its candidate still loading
      // (mirroring starts once it is on a device), or stopped before this
      // daemon started.
      auto rec = d->registry()->GetShadow(model);
      if (!rec.ok()) return r.Fail(rec.status());
      bool running = rec->state == "running";
      if (!running && rec->figures.is_object()) {  // ran before mmsd last started: as saved then
        nlohmann::json j = rec->figures;
        const nlohmann::json now = rec->ToJson();  // its state now (stopped, why, when)
        for (const auto& [k, v] : now.items()) j[k] = v;
        j["running"] = false;
        j["note"] = "figures as the daemon that ran it saved them at " + FormatUtcMillis(rec->figures_ms);
        return r.Send(std::move(j));
      }
      nlohmann::json j = rec->ToJson();
      j["running"] = running;
      j["note"] = running ? "no figures yet: " + rec->candidate_ref() + " is loading; mirroring starts once it is on a device"
                          : std::string("no figures: this shadow ran before mmsd last started and none were saved");
      return r.Send(std::move(j));
    }
    // Stopped: the run's figures are in memory, but why and when it stopped
    // only in the registry (they read "" and null, as shadow status did not).
    if (!s->value("running", true))
      if (auto rec = d->registry()->GetShadow(model);
          rec.ok() && rec->state != "running" && s->value("started_ms", int64_t{0}) == rec->started_ms) {
        const nlohmann::json now = rec->ToJson();
        for (const char* k : {"state", "reason", "stopped_ms"}) (*s)[k] = now[k];
      }
    r.Send(std::move(*s));
  };

  (*table)[proto::kShadowSamples] = [d](proto::Message req, Responder r) {
    std::string model = req.body.value("model", "");
    if (Status st = ValidateName(model); !st.ok()) return r.Fail(st);
    // A whole number, checked: get<int> of 1e300 is undefined behaviour, not an error.
    int limit = 20;
    if (req.body.contains("limit")) {
      const auto& l = req.body["limit"];
      if (!l.is_number_integer() || l.get<int64_t>() < 1 || l.get<int64_t>() > 1000)
        return r.Fail(InvalidArgument("limit must be a whole number from 1 to 1000"));
      limit = static_cast<int>(l.get<int64_t>());
    }
    auto s = d->shadows()->Samples(model, limit);
    if (!s.ok()) {
      // As shadow stats says: an unknown model, or none of its runs, before "not since mmsd started".
      if (auto rec = d->registry()->GetShadow(model); !rec.ok()) return r.Fail(rec.status());
      return r.Fail(s.status());
    }
    r.Send(nlohmann::json{{"model", model}, {"samples", *s}});
  };

  (*table)[proto::kLimitStats] = [d](proto::Message, Responder r) { r.Send(d->limiter()->Stats()); };

  // Live canary figures for the current stage's window (the registry has the rest).
  (*table)[proto::kCanaryStatus] = [d](proto::Message req, Responder r) {
    std::string model = req.body.value("model", "");
    if (Status st = ValidateName(model); !st.ok()) return r.Fail(st);
    auto c = d->registry()->GetCanary(model);
    if (!c.ok()) return r.Fail(c.status());
    nlohmann::json j = c->ToJson();
    VariantSnapshot control = d->VariantMetricsFor(c->experiment_id, "control")->Snapshot();
    VariantSnapshot canary = d->VariantMetricsFor(c->experiment_id, "treatment")->Snapshot();
    if (c->stage_start.contains("control")) control = control.Since(VariantSnapshot::FromJson(c->stage_start["control"]));
    if (c->stage_start.contains("treatment"))
      canary = canary.Since(VariantSnapshot::FromJson(c->stage_start["treatment"]));
    j["window"] = JudgeCanary(*c, control, canary).figures;
    for (const auto& u : d->UnsavedRollbacks())
      if (u.canary_id == c->id && u.experiment_id == c->experiment_id)
        j["rollback_pending"] = {{"reason", u.reason},
                                 {"note", "mmsd rolled it back but could not record it yet (the registry refused "
                                          "the write); it retries at every poll, and the canary gets no traffic "
                                          "meanwhile"}};
    r.Send(std::move(j));
  };
}

}  // namespace mms
