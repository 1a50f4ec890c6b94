// mms shadow start|stop|status|stats|samples, mms canary start|status|pause|resume|promote|abort|list.
#include <unistd.h>

#include <chrono>
#include <iostream>
#include <thread>

#include "cli.h"
#include "core/paths.h"
#include "core/units.h"
#include "protocol/messages.h"
#include "rollout/canary.h"

namespace mms::cli {
namespace {

std::string Num(double v, int prec = 3) {
  char b[32];
  std::snprintf(b, sizeof b, "%.*f", prec, v);
  return b;
}

// ---------------------------------------------------------------- shadow

struct ShadowArgs {
  std::string model, candidate, duration;
  double ratio = 1.0, tolerance = 1e-5;
  int queue = 1000;
};

int CmdShadowStart(Cli& cli, const ShadowArgs& a) {
  if (Status st = ValidateName(a.model); !st.ok()) return cli.Fail(st);
  auto ref = ParseRef(a.candidate.find_first_of(":@") == std::string::npos ? a.model + ":" + a.candidate : a.candidate);
  if (!ref.ok()) return cli.Fail(ref.status().WithContext("--candidate"));
  int64_t duration_ms = 0;
  if (!a.duration.empty()) {
    auto d = ParseDurationNanos(a.duration);
    if (!d.ok()) return cli.Fail(d.status().WithContext("--duration"));
    duration_ms = *d / 1000000;
    // 0 is "no end" in the registry: a run asked to last 0s (or under a
    // millisecond) would have mirrored for ever.
    if (duration_ms <= 0)
      return cli.Fail(InvalidArgument("--duration " + a.duration +
                                      " is no time at all: give how long the run lasts (e.g. 30m), or leave "
                                      "--duration out for a run that lasts until mms shadow stop"));
  }
  auto reg = cli.OpenRegistry();
  if (!reg.ok()) return cli.Fail(reg.status());
  auto s = (*reg)->StartShadow(a.model, *ref, a.ratio, a.queue, a.tolerance, duration_ms);
  if (!s.ok() && s.status().code() == Code::kAlreadyExists) {
    // The same start again (a retried CI job): the run as it is. Another
    // candidate or other settings are the conflict it says.
    auto have = (*reg)->GetShadow(a.model);
    auto cand = (*reg)->Resolve(*ref);
    if (have.ok() && cand.ok() && have->state == "running" && have->candidate_id == cand->id &&
        have->ratio == a.ratio && have->queue == a.queue && have->tolerance == a.tolerance &&
        (have->ends_ms ? have->ends_ms - have->started_ms : 0) == duration_ms) {
      nlohmann::json j = have->ToJson();
      j["unchanged"] = true;
      cli.Emit(j, [&] {
        std::cout << a.model << " is already shadowed by " << have->candidate_ref()
                  << " with these settings: nothing to do\n";
      });
      return 0;
    }
  }
  if (!s.ok()) return cli.Fail(s.status());
  nlohmann::json answer = cli.NotifyDaemon(/*until_routed=*/true);  // mirroring starts once the candidate is loaded
  nlohmann::json j = s->ToJson();
  if (auto failed = cli.WarnLoadFailures(answer, {s->candidate_ref()},
                                         "nothing is mirrored until it loads (mms model repack repairs damaged files), "
                                         "or stop the run: mms shadow stop " + a.model);
      !failed.empty())
    j["load_failures"] = failed;
  cli.Emit(j, [&] {
    std::cout << "shadowing " << a.model << " with " << s->candidate_ref() << ": " << a.ratio * 100
              << "% of requests, queue " << a.queue << ", tolerance " << a.tolerance
              << (duration_ms ? ", for " + FormatDurationNanos(duration_ms * 1000000) : "") << "\n";
  });
  return 0;
}

int CmdShadowStop(Cli& cli, const std::string& model) {
  auto reg = cli.OpenRegistry();
  if (!reg.ok()) return cli.Fail(reg.status());
  auto s = (*reg)->StopShadow(model, "stopped by hand");
  if (!s.ok()) return cli.Fail(s.status());
  cli.NotifyDaemon();
  cli.Emit(s->ToJson(), [&] { std::cout << "stopped the shadow run of " << s->model << " (candidate " << s->candidate_ref() << ")\n"; });
  return 0;
}

int CmdShadowStatus(Cli& cli, const std::string& model) {
  auto reg = model.empty() ? cli.OpenRegistryToList() : cli.OpenRegistry();
  if (!reg.ok()) return cli.Fail(reg.status());
  std::vector<ShadowRecord> list;
  if (model.empty()) {
    auto all = (*reg)->ListShadows(false);
    if (!all.ok()) return cli.Fail(all.status());
    list = *all;
  } else {
    auto s = (*reg)->GetShadow(model);
    if (!s.ok()) return cli.Fail(s.status());
    list.push_back(*s);
  }
  // NAME's run is an object, the list an array: as canary status has them.
  nlohmann::json j = nlohmann::json::array();
  for (const auto& s : list) j.push_back(s.ToJson());
  if (!model.empty()) j = j[0];
  cli.Emit(j, [&] {
    if (list.empty()) {
      std::cout << "no shadow runs (start one with mms shadow start)\n";
      return;
    }
    std::vector<std::vector<std::string>> rows{{"MODEL", "CANDIDATE", "STATE", "RATIO", "QUEUE", "TOLERANCE", "STARTED", "ENDS"}};
    for (const auto& s : list)
      rows.push_back({s.model, s.candidate_ref(), s.state, Num(s.ratio, 2), std::to_string(s.queue), Num(s.tolerance, 6),
                      FormatTime(s.started_ms), s.ends_ms ? FormatTime(s.ends_ms) : "-"});
    std::cout << FormatTable(rows);
  });
  return 0;
}

std::string Dist(const nlohmann::json& d) {
  if (d.value("count", 0) == 0) return "-";
  // A measure may be "inf" or "nan" (a shadow output that was): shown as is.
  auto num = [](const nlohmann::json& v) { return v.is_number() ? Num(v.get<double>(), 6) : v.is_string() ? v.get<std::string>() : "?"; };
  return "p50 " + num(d["p50"]) + "  p99 " + num(d["p99"]) + "  max " + num(d["max"]);
}

// With mmsd not running: the figures its shadow runs last saved, as mms stats does.
Result<nlohmann::json> ShadowStatsFromRegistry(Cli& cli, const std::string& model) {
  MMS_ASSIGN_OR_RETURN(auto reg, cli.OpenRegistry());
  MMS_ASSIGN_OR_RETURN(ShadowRecord rec, reg->GetShadow(model));
  // None saved yet (nothing mirrored before mmsd stopped): the run as
  // recorded, exit 0, as mms stats shows an experiment without figures.
  nlohmann::json j = rec.figures.is_object() ? rec.figures : nlohmann::json::object();
  const nlohmann::json now = rec.ToJson();  // its state now (a range-for over a temporary's items() would dangle)
  for (const auto& [k, v] : now.items()) j[k] = v;
  j["running"] = false;  // (nothing mirrors without mmsd)
  j["note"] = rec.figures.is_object()
                  ? "mmsd is not running: the figures it last saved, at " + FormatTime(rec.figures_ms) + " UTC"
                  : "mmsd is not running, and no figures of this run were saved (start it with: " +
                        cli.StartCommandHint() + ")";
  return j;
}

int CmdShadowStats(Cli& cli, const std::string& model) {
  if (Status st = ValidateName(model); !st.ok()) return cli.Fail(st);
  auto r = cli.Call(proto::kShadowStats, {{"model", model}});
  if (!r.ok() && DaemonNotRunning(r.status())) {
    r = ShadowStatsFromRegistry(cli, model);
    if (r.ok()) cli.Note("note: " + (*r)["note"].get<std::string>());
  }
  if (!r.ok()) return cli.Fail(r.status());
  const auto& j = *r;
  cli.Emit(j, [&] {
    std::string how = "running";
    if (!j.value("running", false) && j.value("state", "") == "running") {
      how = "running, but mmsd is not: nothing is mirrored";
    } else if (!j.value("running", false)) {
      how = "stopped";
      if (j.contains("stopped_ms") && j["stopped_ms"].is_number())
        how += " at " + FormatTime(j["stopped_ms"].get<int64_t>()) + " UTC";
      if (!j.value("reason", "").empty()) how += ": " + j["reason"].get<std::string>();
    }
    std::cout << "shadow of " << model << " by " << j.value("candidate", "?") << " (" << how << ")\n";
    if (!j.contains("requests")) {
      std::cout << j.value("note", "") << "\n";
      return;
    }
    const auto& q = j["requests"];
    std::cout << "  mirrored " << q["mirrored"] << ", dropped " << q["dropped"] << " (queue full), failed " << q["failed"]
              << ", queued " << q["queued"] << ", not sampled " << q["not_sampled"];
    if (j.value("duty_cycle", 1.0) < 1)
      std::cout << " (runs the candidate at most " << Num(j["duty_cycle"].get<double>() * 100, 0)
                << "% of the time: [shadow] duty_cycle)";
    std::cout << "\n";
    std::cout << "  diverged " << j["diverged"] << " (" << Num(j["divergence_rate"].get<double>() * 100, 2)
              << "% over tolerance " << j["tolerance"] << ")\n";
    if (uint64_t n = j.value("mismatched", uint64_t{0}); n > 0)
      std::cout << "  of which " << n << " with outputs of another structure (number, names, shapes or dtypes; "
                << "not in the measures below: see mms shadow samples " << model << ")\n";
    const auto& m = j["measures"];
    for (const char* k : {"max_abs_diff", "mean_abs_diff", "relative_l2", "cosine_similarity", "argmax_agreement",
                          "topk_agreement"})
      std::cout << "  " << k << std::string(20 - std::string(k).size(), ' ') << Dist(m[k]) << "\n";
    const auto& l = j["latency_delta_ms"];
    std::cout << "  latency shadow − primary: "
              << (l.value("count", 0) ? "p50 " + Num(l["p50"]) + " ms, p99 " + Num(l["p99"]) + " ms" : "-") << "\n";
    if (j.contains("last_error")) std::cout << "  last shadow error: " << j["last_error"].get<std::string>() << "\n";
    // Counted by the daemon(s) before the last restart (mms(1)).
    for (const nlohmann::json* b = j.contains("before_restart") ? &j["before_restart"] : nullptr; b && b->is_object();
         b = b->contains("before_restart") ? &(*b)["before_restart"] : nullptr) {
      const auto& bq = (*b)["requests"];
      std::cout << "  before a restart: mirrored " << bq.value("mirrored", 0) << ", dropped " << bq.value("dropped", 0)
                << ", failed " << bq.value("failed", 0) << ", diverged " << b->value("diverged", 0) << "\n";
    }
    if (j.contains("note")) std::cout << "  (" << j["note"].get<std::string>() << ")\n";
  });
  return 0;
}

int CmdShadowSamples(Cli& cli, const std::string& model, int limit) {
  if (Status st = ValidateName(model); !st.ok()) return cli.Fail(st);
  auto r = cli.Call(proto::kShadowSamples, {{"model", model}, {"limit", limit}});
  if (!r.ok()) return cli.Fail(r.status());
  cli.Emit(*r, [&] {
    const auto& s = (*r)["samples"];
    if (s.empty()) std::cout << "no diverging requests recorded\n";
    // A line per sample and one per tensor set, cut short (--json has them whole).
    auto brief = [](const nlohmann::json& v) {
      std::string t = v.dump();
      return t.size() > 160 ? t.substr(0, 160) + "... (--json for all)" : t;
    };
    int n = 0;
    for (const auto& x : s) {
      std::cout << "#" << ++n << " " << x.value("reason", "diverged") << "\n";  // (the reason has the diff)
      for (const char* k : {"inputs", "primary", "shadow"})
        if (x.contains(k)) std::cout << "   " << k << ": " << brief(x[k]) << "\n";
    }
  });
  return 0;
}

// ---------------------------------------------------------------- canary

struct CanaryArgs {
  std::string model, candidate, stages = "1,5,10,25,50,100", stage_duration = "30m", check_interval = "10s", timeout;
  double max_error_rate = 0.05, max_p99_ms = 500, max_p99_ratio = 1.2;
  int64_t min_requests = 1000;
  bool wait = false;
};

std::string StageLine(const nlohmann::json& c) {
  const std::string stage = "stage " + std::to_string(c["stage_index"].get<int>() + 1) + "/" +
                            std::to_string(c["stages"].size()) + " at " + Num(c["stage_traffic_percent"].get<double>(), 2) +
                            "% traffic";
  // An ended canary: what it ended as, then where it was (a promotion takes
  // the candidate to all traffic whatever stage it had reached).
  if (c["state"] == "promoted")
    return "promoted " + c.value("candidate", "") + " to production, all traffic (from " + stage + ")";
  if (c["state"] == "rolled_back" || c["state"] == "aborted")
    return (c["state"] == "aborted" ? "aborted at " : "rolled back at ") + stage + "; " + c.value("candidate", "") +
           // (mms model rm --force of the candidate aborts its canary: gone, not archived)
           (c.value("reason", "").rfind("its candidate ", 0) == 0 ? " removed" : " archived");
  std::string s = c["state"].get<std::string>() + ", " + stage;
  const int64_t left_ms = c.value("stage_remaining_ms", int64_t{0});
  if (c["state"] == "running" && left_ms == 0) {  // "0 ns left in stage" said nothing of what it waits for
    const int64_t need = c["limits"].value("min_requests", int64_t{0});
    const int64_t have = c.contains("window") ? c["window"]["canary"].value("requests", int64_t{0}) : -1;
    if (have >= need) s += ", stage time over: judged at the next check";
    else
      s += ", stage time over: a verdict waits for " + std::to_string(need) + " canary requests (--min-requests)" +
           (have >= 0 ? ", " + std::to_string(have) + " so far" : "");
  } else if (c["state"] == "running" || c["state"] == "paused") {
    s += ", " + FormatDurationNanos(left_ms * 1000000) + " left in stage";
  }
  return s;
}

int ExitFor(const std::string& state) { return state == "promoted" ? 0 : state == "rolled_back" ? 10 : 11; }

// The awaited canary (by its experiment id) ended and another of the model
// started since: its own outcome, from the registry.
int EndedEarlier(Cli& cli, const std::string& model, const std::string& experiment, const std::string& newer) {
  auto reg = cli.OpenRegistry();
  if (!reg.ok()) return cli.Fail(reg.status());
  auto all = (*reg)->ListCanaries(false);
  if (!all.ok()) return cli.Fail(all.status());
  for (const CanaryRecord& c : *all)
    if (c.model == model && c.experiment_id == experiment) {
      if (c.state == "running" || c.state == "paused") break;  // (not ended: cannot be)
      const std::string msg = "the canary of " + model + ":" + c.candidate_version + " ended " + c.state +
                              (c.reason.empty() ? "" : " (" + c.reason + ")") + "; the canary of " + newer +
                              " started since";
      if (cli.g.json) std::cout << nlohmann::json{{"state", c.state}, {"message", msg}}.dump() << std::endl;
      else std::cerr << "mms: " << msg << "\n";
      return ExitFor(c.state);
    }
  return cli.Fail(Internal("the canary waited for (" + experiment + ") is no longer in the registry"));
}

// Streams progress until the canary ends. Exit: 0 promoted, 10 rolled back, 11 aborted, 12 timeout.
// `experiment`: the canary waited for (its experiment id; "" = NAME's latest
// when the wait starts): a canary started later is not taken for it.
int Wait(Cli& cli, const std::string& model, int64_t timeout_ns, std::string experiment = "") {
  // mmsd not answering now (restarting, or not started yet) is no reason to
  // fail a retried job: the registry has the canary, ended or not.
  auto client = cli.Connect();
  if (!client.ok() && client.status().code() != Code::kUnavailable &&
      client.status().code() != Code::kDeadlineExceeded)
    return cli.Fail(client.status());
  auto start = std::chrono::steady_clock::now();
  auto last_print = start - std::chrono::seconds(10);
  std::string last, last_phase;
  auto timed_out = [&] {
    return timeout_ns > 0 && std::chrono::steady_clock::now() - start > std::chrono::nanoseconds(timeout_ns);
  };
  bool lost = false;
  while (true) {
    // A status is quick: a poll that takes over 5 s finds mmsd gone (or stopped).
    auto r = client.ok() ? (*client)->CallJson(proto::kCanaryStatus, {{"model", model}}, 5000) : client.status();
    const bool gone = !r.ok() && (r.status().code() == Code::kUnavailable || r.status().code() == Code::kDeadlineExceeded);
    if (!r.ok() && !gone) return cli.Fail(r.status());
    if (!r.ok()) {
      // mmsd went away (killed, restarting): the canary lives in the registry
      // and carries on when mmsd is back, so wait for it — reading the
      // registry meanwhile, where a promote or abort by hand still shows.
      auto reg = cli.OpenRegistry();
      // No registry here (a mistyped --data-dir) or one that cannot be read:
      // nothing will ever answer, so no waiting. Locked: a writer, retried.
      if (!reg.ok() && reg.status().code() != Code::kLocked) return cli.Fail(reg.status());
      if (reg.ok()) {
        auto c = (*reg)->GetCanary(model);
        if (!c.ok() && c.status().code() == Code::kNotFound) return cli.Fail(c.status());  // none ever: nothing to wait for
        if (c.ok() && experiment.empty()) experiment = c->experiment_id;  // the latest, as with mmsd up
        if (c.ok() && !experiment.empty() && c->experiment_id != experiment)
          return EndedEarlier(cli, model, experiment, model + ":" + c->candidate_version);
        if (c.ok() && c->state != "running" && c->state != "paused") {
          const std::string msg = "the canary of " + model + " ended while mmsd was away: " + c->state +
                                  (c->reason.empty() ? "" : " (" + c->reason + ")");
          if (cli.g.json) std::cout << nlohmann::json{{"state", c->state}, {"message", msg}}.dump() << std::endl;
          else std::cerr << "mms: " << msg << "\n";
          return ExitFor(c->state);
        }
      }
      if (!lost) {  // (said once the registry has the canary: a review saw it said of none, then exit 4)
        std::cerr << "mms: " << r.status().message()
                  << "; waiting for mmsd to come back (the canary is in the registry and resumes with mmsd)\n";
        lost = true;
      }
      if (timed_out()) {
        const std::string msg = "--timeout reached while mmsd was away; the canary of " + model + " carries on";
        if (cli.g.json) std::cout << nlohmann::json{{"timeout", true}, {"message", msg}}.dump() << std::endl;
        else std::cerr << "mms: " << msg << "\n";
        return 12;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
      client = cli.Connect();
      continue;
    }
    if (lost) {
      std::cerr << "mms: mmsd is back\n";
      lost = false;
    }
    const auto& c = *r;
    if (experiment.empty()) experiment = c.value("experiment", "");
    if (c.value("experiment", "") != experiment)
      return EndedEarlier(cli, model, experiment, c.value("candidate", "?"));
    // The last check may be the previous stage's (just advanced): not this one's verdict.
    const bool fresh = c["last_check"].value("stage", -1) == c["stage_index"].get<int>() + 1;
    // A verdict goes with the figures it judged, not with newer ones.
    const nlohmann::json& figures =
        fresh && c["last_check"].contains("figures") ? c["last_check"]["figures"] : c["window"];
    nlohmann::json line{{"state", c["state"]},
                        {"stage", c["stage_index"].get<int>() + 1},
                        {"traffic_percent", c["traffic_percent"]},
                        {"verdict", fresh ? c["last_check"].value("verdict", "") : ""},
                        {"reason", c["state"] == "running" || c["state"] == "paused"
                                       ? (fresh ? c["last_check"].value("reason", "") : std::string("stage started, not checked yet"))
                                       : c["reason"].get<std::string>()},
                        {"canary", figures["canary"]},
                        {"control", figures["control"]}};
    std::string key = line.dump();
    // A line when the stage or state changes, else at most one a second.
    std::string phase = c["state"].get<std::string>() + std::to_string(c["stage_index"].get<int>()) +
                        line["verdict"].get<std::string>();
    auto now = std::chrono::steady_clock::now();
    if (key != last && (phase != last_phase || now - last_print >= std::chrono::seconds(1))) {
      last = key;
      last_phase = phase;
      last_print = now;
      if (cli.g.json) {
        std::cout << key << std::endl;
      } else {
        const auto& k = figures["canary"];
        const auto& o = figures["control"];
        std::cout << StageLine(c) << " | canary " << ArmSummary(k) << " | control " << ArmSummary(o) << " | "
                  << line["reason"].get<std::string>() << std::endl;
      }
    }
    std::string state = c["state"];
    if (state == "promoted" || state == "rolled_back" || state == "aborted") return ExitFor(state);
    if (timed_out()) {
      const std::string msg = "--timeout reached; the canary of " + model + " is still " + state +
                              " (it carries on: mms canary wait " + model + " waits again, mms canary abort " + model +
                              " stops it)";
      if (cli.g.json) std::cout << nlohmann::json{{"timeout", true}, {"state", state}, {"message", msg}}.dump() << std::endl;
      else std::cerr << "mms: " << msg << "\n";
      return 12;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

// --timeout of a wait: a positive duration, or "" (until the canary ends: 0).
Result<int64_t> WaitTimeout(const std::string& text) {
  if (text.empty()) return int64_t{0};
  auto t = ParseDurationNanos(text);
  if (!t.ok()) return t.status().WithContext("--timeout");
  if (*t <= 0)  // (0 waited for ever)
    return InvalidArgument("--timeout must be positive; leave it out to wait until the canary ends");
  return *t;
}

int CmdCanaryStart(Cli& cli, const CanaryArgs& a) {
  if (Status st = ValidateName(a.model); !st.ok()) return cli.Fail(st);
  auto ref = ParseRef(a.candidate.find_first_of(":@") == std::string::npos ? a.model + ":" + a.candidate : a.candidate);
  if (!ref.ok()) return cli.Fail(ref.status().WithContext("--candidate"));
  NewCanary n;
  n.model = a.model;
  n.candidate = *ref;
  n.stages.clear();
  for (const auto& s : Split(a.stages, ',')) {
    auto v = ParseDecimal(s);
    if (!v) return cli.Fail(InvalidArgument("--stages: '" + s + "' is not a decimal number; use e.g. 1,5,10,25,50,100"));
    n.stages.push_back(*v);
  }
  auto dur = ParseDurationNanos(a.stage_duration);
  if (!dur.ok()) return cli.Fail(dur.status().WithContext("--stage-duration"));
  auto chk = ParseDurationNanos(a.check_interval);
  if (!chk.ok()) return cli.Fail(chk.status().WithContext("--check-interval"));
  if (*chk < 1'000'000)  // (it was stored as 1 ms, silently)
    return cli.Fail(InvalidArgument("--check-interval " + a.check_interval + " is under 1ms; give e.g. 10s"));
  if (!a.timeout.empty() && !a.wait)
    return cli.Fail(InvalidArgument("--timeout bounds --wait: give --wait too, or leave --timeout out"));
  auto timeout = WaitTimeout(a.timeout);
  if (!timeout.ok()) return cli.Fail(timeout.status());
  n.stage_duration_ms = *dur / 1000000;
  n.check_interval_ms = *chk / 1000000;
  n.max_error_rate = a.max_error_rate;
  n.max_p99_ms = a.max_p99_ms;
  n.max_p99_ratio = a.max_p99_ratio;
  n.min_requests = a.min_requests;
  if (a.wait) {  // --wait needs the daemon that drives the canary: check before starting
    auto c = cli.Connect();
    if (!c.ok()) return cli.Fail(c.status());
  }
  auto reg = cli.OpenRegistry();
  if (!reg.ok()) return cli.Fail(reg.status());
  auto c = (*reg)->StartCanary(n);
  if (!c.ok() && c.status().code() == Code::kAlreadyExists) {
    // The same start again (a CI job retried, its first try done): the
    // canary as it is, as a rerun of experiment create is; --wait waits for
    // it. Another candidate or other settings are the conflict it says.
    auto have = (*reg)->GetCanary(a.model);
    auto cand = (*reg)->Resolve(n.candidate);
    if (have.ok() && cand.ok() && have->active() && cand->model == a.model &&
        have->candidate_version == cand->version && have->stages == n.stages &&
        have->stage_duration_ms == n.stage_duration_ms && have->check_interval_ms == n.check_interval_ms &&
        have->max_error_rate == n.max_error_rate && have->max_p99_ms == n.max_p99_ms &&
        have->max_p99_ratio == n.max_p99_ratio && have->min_requests == n.min_requests) {
      nlohmann::json j = have->ToJson();
      j["unchanged"] = true;
      if (!cli.g.json || !a.wait)
        cli.Emit(j, [&] {
          std::cout << "the canary of " << a.model << ":" << have->candidate_version
                    << " already runs with these settings: nothing to do; " << StageLine(j) << "\n";
        });
      if (!a.wait) return 0;
      return Wait(cli, a.model, *timeout, have->experiment_id);
    }
  }
  if (!c.ok()) return cli.Fail(c.status());
  nlohmann::json answer = cli.NotifyDaemon(/*until_routed=*/true);  // its first stage starts once both arms are loaded
  nlohmann::json j = c->ToJson();
  if (auto failed = cli.WarnLoadFailures(answer, {a.model + ":" + c->candidate_version},
                                         "the canary gets no traffic and is rolled back");
      !failed.empty())
    j["load_failures"] = failed;
  if (!cli.g.json || !a.wait)
    cli.Emit(j, [&] {
      std::cout << "canary of " << a.model << ":" << c->candidate_version << " against " << a.model << ":"
                << c->baseline_version << " started (experiment " << c->experiment_id
                << "): " << StageLine(c->ToJson()) << "\n";
    });
  if (!a.wait) return 0;
  return Wait(cli, a.model, *timeout, c->experiment_id);
}

// mms canary wait: the same wait, taken up again (a CI job retried after its
// own timeout, or one that started the canary without --wait).
// --candidate: the canary waited for must be that version's, so a retried job
// whose start failed never reads an earlier canary's outcome as its own.
int CmdCanaryWait(Cli& cli, const std::string& model, const std::string& candidate, const std::string& timeout_text) {
  if (Status st = ValidateName(model); !st.ok()) return cli.Fail(st);
  auto timeout = WaitTimeout(timeout_text);
  if (!timeout.ok()) return cli.Fail(timeout.status());
  if (!candidate.empty()) {
    auto ref = ParseRef(candidate.find_first_of(":@") == std::string::npos ? model + ":" + candidate : candidate);
    if (!ref.ok()) return cli.Fail(ref.status().WithContext("--candidate"));
    auto reg = cli.OpenRegistry();
    if (!reg.ok()) return cli.Fail(reg.status());
    // A version removed since (mms model rm --force aborts its canary) is
    // found by its number: its canary's outcome, not "unknown version".
    std::string version = ref->version;
    if (auto want = (*reg)->Resolve(*ref); want.ok()) {
      if (want->model != model)
        return cli.Fail(InvalidArgument("--candidate " + candidate + " is a version of " + want->model + ", not of " + model));
      version = want->version;
    } else if (want.status().code() != Code::kNotFound || ref->kind != Ref::Kind::kVersion || ref->name != model) {
      return cli.Fail(want.status().WithContext("--candidate"));
    }
    auto all = (*reg)->ListCanaries(false);
    if (!all.ok()) return cli.Fail(all.status());
    const CanaryRecord* latest = nullptr;  // that candidate's latest canary
    for (const CanaryRecord& c : *all)
      if (c.model == model && c.candidate_version == version && (!latest || c.id > latest->id)) latest = &c;
    if (!latest)
      return cli.Fail(NotFound(model + " has had no canary of " + model + ":" + version +
                               ": its canary never started (see mms canary list)"));
    return Wait(cli, model, *timeout, latest->experiment_id);
  }
  return Wait(cli, model, *timeout);
}

int CmdCanaryStatus(Cli& cli, const std::string& model) {
  if (model.empty()) {
    auto reg = cli.OpenRegistryToList();
    if (!reg.ok()) return cli.Fail(reg.status());
    auto list = (*reg)->ListCanaries(true);
    if (!list.ok()) return cli.Fail(list.status());
    nlohmann::json j = nlohmann::json::array();
    for (const auto& c : *list) j.push_back(c.ToJson());
    cli.Emit(j, [&] {
      if (list->empty()) std::cout << "no canary running\n";
      for (const auto& c : *list)
        std::cout << c.model << ":" << c.candidate_version << ": " << StageLine(c.ToJson()) << "\n";
    });
    return 0;
  }
  if (Status st = ValidateName(model); !st.ok()) return cli.Fail(st);
  nlohmann::json j;
  auto live = cli.Connect();
  if (live.ok()) {
    auto r = (*live)->CallJson(proto::kCanaryStatus, {{"model", model}});
    if (!r.ok()) return cli.Fail(r.status());
    j = *r;
  } else {
    auto reg = cli.OpenRegistry();
    if (!reg.ok()) return cli.Fail(reg.status());
    auto c = (*reg)->GetCanary(model);
    if (!c.ok()) return cli.Fail(c.status());
    j = c->ToJson();
  }
  cli.Emit(j, [&] {
    std::cout << j["candidate"].get<std::string>() << " vs " << j["baseline"].get<std::string>() << ": " << StageLine(j)
              << "\n";
    if (!j["reason"].get<std::string>().empty()) std::cout << "  " << j["reason"].get<std::string>() << "\n";
    if (j.contains("rollback_pending"))
      std::cout << "  ROLLED BACK by mmsd, not recorded yet: " << j["rollback_pending"]["reason"].get<std::string>()
                << "\n  (" << j["rollback_pending"]["note"].get<std::string>() << ")\n";
    if (j["last_check"].contains("verdict"))
      std::cout << "  last check: " << j["last_check"]["verdict"].get<std::string>() << " — "
                << j["last_check"]["reason"].get<std::string>() << "\n";
    if (j.contains("window"))
      std::cout << "  this stage: canary  " << ArmSummary(j["window"]["canary"]) << "\n              control "
                << ArmSummary(j["window"]["control"]) << "\n";
  });
  return 0;
}

// A rollback mmsd judged but could not record yet (the registry refused the
// write) stands: a promote or resume written first would send the failing
// candidate traffic again — a fault-injection review promoted a candidate
// that failed every request this way. CONFLICT naming it; OK when there is
// none, or no daemon to ask.
Status NoPendingRollback(Cli& cli, const std::string& model, const std::string& what) {
  auto refuse = [&](const std::string& reason) {
    return Conflict("mmsd rolled the canary of " + model + " back (" + reason +
                    ") and has not been able to record it yet (the registry refused the write; see mms status): " +
                    what + " refused. It is recorded once the registry takes writes again");
  };
  auto live = cli.Connect();
  if (live.ok()) {
    auto r = (*live)->CallJson(proto::kCanaryStatus, {{"model", model}});
    if (r.ok()) return r->contains("rollback_pending") ? refuse((*r)["rollback_pending"]["reason"].get<std::string>())
                                                       : Status::Ok();
  }
  // No answer (mmsd down, restarting, or busy): the rollbacks it keeps
  // beside its socket until they are recorded say it as well.
  auto socket = cli.socket_path();
  auto reg = cli.OpenRegistry();
  if (!socket.ok() || !reg.ok()) return Status::Ok();
  auto c = (*reg)->GetCanary(model);
  auto text = ReadFile(*socket + ".unsaved-rollbacks");
  if (!c.ok() || !text.ok()) return Status::Ok();
  for (const UnsavedRollback& u : ParseUnsavedRollbacks(*text))
    if (u.canary_id == c->id && u.experiment_id == c->experiment_id) return refuse(u.reason);
  return Status::Ok();
}

template <class Fn>
int CanaryChange(Cli& cli, const std::string& model, Fn fn, const std::string& done) {
  if (Status st = ValidateName(model); !st.ok()) return cli.Fail(st);
  if (done == "promoted" || done == "resumed")
    if (Status st = NoPendingRollback(cli, model, done == "promoted" ? "promoting it" : "resuming it"); !st.ok())
      return cli.Fail(st);
  auto reg = cli.OpenRegistry();
  if (!reg.ok()) return cli.Fail(reg.status());
  Result<CanaryRecord> c = fn(**reg);
  if (!c.ok()) return cli.Fail(c.status());
  cli.NotifyDaemon();
  cli.Emit(c->ToJson(), [&] {
    const bool ended = c->state == "promoted" || c->state == "rolled_back" || c->state == "aborted";
    // The line starts with the state, or what an ended one did: "paused: paused" said it twice.
    std::cout << (ended || done == c->state ? "" : done + ": ") << StageLine(c->ToJson()) << "\n";
  });
  return 0;
}

int CmdCanaryList(Cli& cli) {
  auto reg = cli.OpenRegistryToList();
  if (!reg.ok()) return cli.Fail(reg.status());
  auto list = (*reg)->ListCanaries(false);
  if (!list.ok()) return cli.Fail(list.status());
  nlohmann::json j = nlohmann::json::array();
  for (const auto& c : *list) j.push_back(c.ToJson());
  cli.Emit(j, [&] {
    std::vector<std::vector<std::string>> rows{{"MODEL", "CANDIDATE", "BASELINE", "STATE", "STAGE", "TRAFFIC", "STARTED", "REASON"}};
    for (const auto& c : *list)
      rows.push_back({c.model, c.candidate_version, c.baseline_version, c.state,
                      std::to_string(c.stage_index + 1) + "/" + std::to_string(c.stages.size()),
                      // What it serves now, as --json says: 100% promoted, 0% ended otherwise.
                      Num(c.ToJson()["traffic_percent"].get<double>(), 2) + "%", FormatTime(c.created_ms),
                      c.reason.substr(0, 60)});
    std::cout << FormatTable(rows);
  });
  return 0;
}

}  // namespace

void AddRolloutCommands(CLI::App& app, Cli& cli) {
  auto* shadow = app.add_subcommand("shadow", "Shadow runs: mirror traffic to a candidate and compare, users unaffected");
  shadow->require_subcommand(1);
  auto* sstart = shadow->add_subcommand("start", "Mirror a share of NAME's requests to a candidate version");
  auto sa = std::make_shared<ShadowArgs>();
  sstart->add_option("NAME", sa->model, "the model")->required();
  sstart->add_option("--candidate", sa->candidate, "the version to try (VERSION, NAME:VERSION or NAME@ALIAS)")->required();
  sstart->add_option("--ratio", sa->ratio, "share of requests mirrored, (0, 1] (default 1)")->check(DecimalNumber());
  sstart->add_option("--queue", sa->queue, "bounded shadow queue; full means dropped (default 1000)")->check(WholeNumber());
  sstart->add_option("--tolerance", sa->tolerance, "max abs difference before a request diverges (default 1e-5)")
      ->check(DecimalNumber());
  sstart->add_option("--duration", sa->duration, "stop by itself after this long (e.g. 2h)");
  sstart->callback([&cli, sa] { cli.exit_code = CmdShadowStart(cli, *sa); });
  auto model = std::make_shared<std::string>();
  auto* sstop = shadow->add_subcommand("stop", "Stop the shadow run of NAME");
  sstop->add_option("NAME", *model)->required();
  sstop->callback([&cli, model] { cli.exit_code = CmdShadowStop(cli, *model); });
  auto* sstatus = shadow->add_subcommand("status", "Shadow runs (or NAME's latest)");
  sstatus->add_option("NAME", *model);
  sstatus->callback([&cli, model] { cli.exit_code = CmdShadowStatus(cli, *model); });
  auto* sstats = shadow->add_subcommand("stats", "Mirrored, dropped, failed, divergence and its measures, latency delta");
  sstats->add_option("NAME", *model)->required();
  sstats->callback([&cli, model] { cli.exit_code = CmdShadowStats(cli, *model); });
  auto* ssamples = shadow->add_subcommand("samples", "Recent diverging requests with both outputs");
  auto limit = std::make_shared<int>(20);
  ssamples->add_option("NAME", *model)->required();
  ssamples->add_option("--limit", *limit, "how many (default 20, at most 1000)")->check(WholeNumber())->check(CLI::Range(1, 1000));
  ssamples->callback([&cli, model, limit] { cli.exit_code = CmdShadowSamples(cli, *model, *limit); });

  auto* canary = app.add_subcommand("canary", "Canary rollouts: staged traffic, judged against control, auto-rollback");
  canary->require_subcommand(1);
  auto* cstart = canary->add_subcommand("start", "Roll a candidate out in stages, judged against production");
  auto ca = std::make_shared<CanaryArgs>();
  cstart->add_option("NAME", ca->model, "the model")->required();
  cstart->add_option("--candidate", ca->candidate, "the new version")->required();
  cstart->add_option("--stages", ca->stages, "traffic percentages, increasing, in (0, 100] (default 1,5,10,25,50,100)");
  cstart->add_option("--stage-duration", ca->stage_duration, "time each stage must pass its checks (default 30m)");
  cstart->add_option("--max-error-rate", ca->max_error_rate, "roll back above this canary error rate (default 0.05)")
      ->check(DecimalNumber());
  cstart->add_option("--max-p99-ms", ca->max_p99_ms, "roll back above this canary p99 (default 500)")
      ->check(DecimalNumber());
  cstart->add_option("--max-p99-ratio", ca->max_p99_ratio, "roll back when canary p99 / control p99 exceeds this, and p99 is over 1 ms above control's (default 1.2)")
      ->check(DecimalNumber());
  cstart->add_option("--min-requests", ca->min_requests, "canary requests needed for any verdict (default 1000)")
      ->check(WholeNumber());
  cstart->add_option("--check-interval", ca->check_interval, "how often to judge (default 10s)");
  cstart->add_flag("--wait", ca->wait, "stream progress until it ends; exit 0 promoted, 10 rolled back, 11 aborted, 12 timeout");
  cstart->add_option("--timeout", ca->timeout, "with --wait: give up waiting after this long (exit 12)");
  cstart->callback([&cli, ca] { cli.exit_code = CmdCanaryStart(cli, *ca); });
  auto* cwait = canary->add_subcommand(
      "wait", "Wait for NAME's canary to end, as start --wait does; exit 0 promoted, 10 rolled back, 11 aborted, 12 timeout");
  auto wait_timeout = std::make_shared<std::string>();
  cwait->add_option("NAME", *model)->required();
  cwait->add_option("--timeout", *wait_timeout, "give up waiting after this long (exit 12; the canary carries on)");
  auto wait_candidate = std::make_shared<std::string>();
  cwait->add_option("--candidate", *wait_candidate, "only the canary of this version (exit 4 when the latest is another's)");
  cwait->callback([&cli, model, wait_candidate, wait_timeout] {
    cli.exit_code = CmdCanaryWait(cli, *model, *wait_candidate, *wait_timeout);
  });
  auto* cstatus = canary->add_subcommand("status", "Active canaries, or NAME's latest with its current window");
  cstatus->add_option("NAME", *model);
  cstatus->callback([&cli, model] { cli.exit_code = CmdCanaryStatus(cli, *model); });
  auto* cpause = canary->add_subcommand("pause", "Hold the current stage (traffic stays, the stage clock stops)");
  cpause->add_option("NAME", *model)->required();
  cpause->callback([&cli, model] {
    cli.exit_code = CanaryChange(cli, *model, [&](Registry& r) { return r.SetCanaryState(*model, "paused"); }, "paused");
  });
  auto* cresume = canary->add_subcommand("resume", "Resume a paused canary");
  cresume->add_option("NAME", *model)->required();
  cresume->callback([&cli, model] {
    cli.exit_code = CanaryChange(cli, *model, [&](Registry& r) { return r.SetCanaryState(*model, "running"); }, "resumed");
  });
  auto* cpromote = canary->add_subcommand("promote", "Go to 100% and finish now: the candidate becomes production");
  cpromote->add_option("NAME", *model)->required();
  cpromote->callback([&cli, model] {
    cli.exit_code = CanaryChange(cli, *model, [&](Registry& r) { return r.PromoteCanary(*model, "promoted by hand"); },
                                 "promoted");
  });
  auto* cabort = canary->add_subcommand("abort", "Roll back now: the candidate is archived");
  cabort->add_option("NAME", *model)->required();
  cabort->callback([&cli, model] {
    cli.exit_code = CanaryChange(
        cli, *model, [&](Registry& r) { return r.RollbackCanary(*model, "aborted", "aborted by hand"); }, "aborted");
  });
  canary->add_subcommand("list", "Every canary, past and present")->callback([&cli] { cli.exit_code = CmdCanaryList(cli); });
}

}  // namespace mms::cli
