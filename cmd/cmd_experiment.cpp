// mms experiment create|list|show|pause|resume|ramp|stop|assign, mms feedback, mms stats.
#include <algorithm>
#include <cmath>
#include <iostream>
#include <set>

#include "cli.h"
#include "core/units.h"
#include "protocol/messages.h"
#include "rollout/assignment.h"
#include "rollout/report.h"

namespace mms::cli {
namespace {

struct CreateArgs {
  std::string id, model, control, treatment;
  double percent = -1;
  bool random = false;
  std::vector<std::string> metrics;
};

std::string Pct(double v, int prec = 2) {
  char b[32];
  std::snprintf(b, sizeof b, "%.*f%%", prec, v * 100);
  return b;
}

std::string Num(double v, int prec = 3) {
  char b[32];
  std::snprintf(b, sizeof b, "%.*f", prec, v);
  return b;
}

// An arm's version, marked when it was removed since (the ref may now name another registration).
std::string Arm(const std::string& version, int64_t id) { return version + (id ? "" : " (removed)"); }

void PrintExperiment(const ExperimentRecord& e) {
  std::cout << e.id << ": " << e.model << " " << e.state << (e.kind == "canary" ? " (canary)" : "") << "\n"
            << "  control    " << e.model << ":" << Arm(e.control_version, e.control_id) << "\n"
            << "  treatment  " << e.model << ":" << Arm(e.treatment_version, e.treatment_id) << " at " << e.percent() << "%"
            << (e.random ? " (random per request)" : " (sticky per user)") << "\n";
  if (!e.metrics.empty()) {
    std::string m;
    for (const auto& x : e.metrics) m += (m.empty() ? "" : ", ") + x;
    std::cout << "  metrics    " << m << "\n";
  }
  if (!e.winner.empty()) std::cout << "  winner     " << e.winner << "\n";
  std::cout << "  created    " << FormatTime(e.created_ms) << " by " << e.created_by << "\n";
}

// Runs a registry change on an experiment and tells the daemon. `done` is
// said once `fn` has run (it may set it); `*unchanged` set by `fn`: nothing
// was written ("unchanged": true).
template <class Fn>
int Change(Cli& cli, Fn fn, const std::string& done, bool until_routed = false, const bool* unchanged = nullptr) {
  auto reg = cli.OpenRegistry();
  if (!reg.ok()) return cli.Fail(reg.status());
  Result<ExperimentRecord> e = fn(**reg);
  if (!e.ok()) return cli.Fail(e.status());
  nlohmann::json answer = cli.NotifyDaemon(until_routed);
  nlohmann::json j = e->ToJson();
  if (unchanged && *unchanged) j["unchanged"] = true;
  if (auto failed = cli.WarnLoadFailures(answer, {e->model + ":" + e->control_version, e->model + ":" + e->treatment_version},
                                         "requests routed to it fail until it loads (mms model verify names the damage, "
                                         "mms model repack repairs it), or stop the experiment: mms experiment stop " +
                                             e->id);
      !failed.empty())
    j["load_failures"] = failed;
  cli.Emit(j, [&] { std::cout << done << "\n"; PrintExperiment(*e); });
  return 0;
}

// --percent as basis points: 0 to 100 in steps of 0.01 (a finer share would
// route the next 0.01% up, silently: 0.001 routed ten times the share asked).
Result<int> PercentFlag(double percent) {
  auto FormatNumber = [](double v) {
    char b[32];
    std::snprintf(b, sizeof b, "%.10g", v);
    return std::string(b);
  };
  if (!(percent >= 0 && percent <= 100))
    return InvalidArgument("--percent " + FormatNumber(percent) + " is outside 0 to 100");
  if (FinerThanBasisPoint(percent))
    return InvalidArgument("--percent " + FormatNumber(percent) +
                           " is finer than 0.01%, the finest split mms routes; round it to two decimals");
  return PercentToBasisPoints(percent);
}

int CmdCreate(Cli& cli, const CreateArgs& a) {
  if (Status st = ValidateExperimentId(a.id); !st.ok()) return cli.Fail(st);
  if (Status st = ValidateName(a.model); !st.ok()) return cli.Fail(st);
  auto bp = PercentFlag(a.percent);
  if (!bp.ok()) return cli.Fail(bp.status());
  auto control = ParseRef(a.control.find_first_of(":@") == std::string::npos ? a.model + ":" + a.control : a.control);
  auto treatment =
      ParseRef(a.treatment.find_first_of(":@") == std::string::npos ? a.model + ":" + a.treatment : a.treatment);
  if (!control.ok()) return cli.Fail(control.status().WithContext("--control"));
  if (!treatment.ok()) return cli.Fail(treatment.status().WithContext("--treatment"));
  NewExperiment n;
  n.id = a.id;
  n.model = a.model;
  n.control = *control;
  n.treatment = *treatment;
  n.basis_points = *bp;
  n.random = a.random;
  n.metrics = a.metrics;
  // Returns once the daemon splits the requests (its arms are loaded first).
  std::string done = "created experiment " + a.id;
  bool unchanged = false;
  auto create = [&](Registry& r) -> Result<ExperimentRecord> {
    auto created = r.CreateExperiment(n);
    if (created.ok() || created.status().code() != Code::kAlreadyExists) return created;
    // The same create again (a CI job retried after a timeout, its first
    // try done): the experiment as it is, as a rerun of model register is.
    // Anything else under the id (other arms, share, metrics, or ended) is
    // the conflict it says.
    auto e = r.GetExperiment(n.id);
    auto c = r.Resolve(n.control), t = r.Resolve(n.treatment);
    if (!e.ok() || !c.ok() || !t.ok()) return created;
    std::vector<std::string> want = n.metrics, have = e->metrics;
    std::sort(want.begin(), want.end());
    std::sort(have.begin(), have.end());
    if (e->kind != "ab" || e->model != n.model || e->control_id != c->id || e->treatment_id != t->id ||
        e->basis_points != n.basis_points || e->random != n.random || want != have || !e->active())
      return created;
    unchanged = true;
    done = "experiment " + n.id + " already exists with these settings (" + e->state + "): nothing to do";
    return e;
  };
  return Change(cli, create, done, true, &unchanged);
}

int CmdList(Cli& cli) {
  auto reg = cli.OpenRegistryToList();
  if (!reg.ok()) return cli.Fail(reg.status());
  auto list = (*reg)->ListExperiments(true);
  if (!list.ok()) return cli.Fail(list.status());
  nlohmann::json j = nlohmann::json::array();
  for (const auto& e : *list) j.push_back(e.ToJson());
  cli.Emit(j, [&] {
    if (list->empty()) {
      std::cout << "no experiments (create one with mms experiment create)\n";
      return;
    }
    std::vector<std::vector<std::string>> rows{{"ID", "MODEL", "KIND", "STATE", "CONTROL", "TREATMENT", "PERCENT", "CREATED"}};
    for (const auto& e : *list)
      rows.push_back({e.id, e.model, e.kind, e.state, Arm(e.control_version, e.control_id),
                      Arm(e.treatment_version, e.treatment_id), Num(e.percent(), 2) + "%",
                      FormatTime(e.created_ms)});
    std::cout << FormatTable(rows);
  });
  return 0;
}

int CmdShow(Cli& cli, const std::string& id) {
  auto reg = cli.OpenRegistry();
  if (!reg.ok()) return cli.Fail(reg.status());
  auto e = (*reg)->GetExperiment(id);
  if (!e.ok()) return cli.Fail(e.status());
  cli.Emit(e->ToJson(), [&] { PrintExperiment(*e); });
  return 0;
}

int CmdAssign(Cli& cli, const std::string& id, const std::vector<std::string>& users) {
  auto reg = cli.OpenRegistry();
  if (!reg.ok()) return cli.Fail(reg.status());
  auto e = (*reg)->GetExperiment(id);
  if (!e.ok()) return cli.Fail(e.status());
  nlohmann::json out = nlohmann::json::array();
  for (const auto& u : users) {
    int bucket = SeedBucket(e->id, u);
    std::string variant = e->random ? "random" : IsTreatment(bucket, e->basis_points) ? "treatment" : "control";
    out.push_back({{"user", u}, {"variant", variant}, {"bucket", bucket}});
  }
  cli.Emit(out, [&] {
    std::vector<std::vector<std::string>> rows{{"USER", "VARIANT", "BUCKET"}};
    for (const auto& x : out) rows.push_back({x["user"], x["variant"], std::to_string(x["bucket"].get<int>())});
    std::cout << FormatTable(rows);
  });
  return 0;
}

int CmdFeedback(Cli& cli, const std::string& request_id, const std::vector<std::string>& metrics) {
  nlohmann::json m = nlohmann::json::object();
  for (const auto& kv : metrics) {
    auto eq = kv.find('=');
    if (eq == std::string::npos || eq == 0)
      return cli.Fail(InvalidArgument("invalid --metric '" + kv + "': use NAME=VALUE, e.g. --metric click=1"));
    std::string name = kv.substr(0, eq), value = kv.substr(eq + 1);
    auto v = ParseDecimal(value);
    if (!v) return cli.Fail(InvalidArgument("--metric " + name + ": '" + value + "' is not a decimal number"));
    if (m.contains(name)) return cli.Fail(InvalidArgument("--metric " + name + " is given twice"));
    m[name] = *v;
  }
  auto r = cli.Call(proto::kFeedback, {{"request_id", request_id}, {"metrics", m}});
  if (!r.ok()) return cli.Fail(r.status());
  cli.Emit(*r, [&] {
    std::cout << "recorded " << m.size() << " outcome" << (m.size() == 1 ? "" : "s") << " for request " << request_id
              << " (" << (*r)["experiment"].get<std::string>() << ", " << (*r)["variant"].get<std::string>() << ")\n";
  });
  return 0;
}

// `by_user`: the report's tests take the user as the unit (said once, in its heading).
std::string TestLine(const nlohmann::json& t, bool percent, bool by_user, const std::string& unit = "") {
  if (!t.value("valid", false)) return "n/a (" + t.value("reason", "") + ")";
  auto f = [&](double v) { return (percent ? Pct(v) : Num(v)) + unit; };
  const double diff = t["diff"].get<double>() + 0.0;  // (+ 0.0: -0 is 0, not "+-0.00")
  std::string s = (diff >= 0 ? "+" : "") + f(diff) + " [" + f(t["ci"][0]) + ", " + f(t["ci"][1]) +
                  "], p = " + Num(t["p_value"].get<double>(), 4);
  if (t.value("method", "") == "fisher") s += " (Fisher's exact test)";
  // Requests as the unit in a report by user: few counts, where Fisher's
  // p-value (over requests) was the larger.
  if (by_user && t.value("unit", "") == "request") s += ", by request";
  // Users' requests correlated enough to matter: say how much.
  if (double de = t.value("design_effect", 0.0); de >= 1.5) s += ", design effect " + Num(de, 2);
  return s;
}

void PrintReport(const nlohmann::json& e) {
  std::cout << "experiment " << e["id"].get<std::string>() << " (" << e["model"].get<std::string>() << ", "
            << e["state"].get<std::string>() << ", treatment " << e["percent"].get<double>() << "%)\n";
  std::vector<std::vector<std::string>> rows{
      {"VARIANT", "VERSION", "REQUESTS", "ERRORS", "P50 MS", "P90", "P95", "P99", "P999", "MIN", "MAX", "MEAN"}};
  for (const char* v : {"control", "treatment"}) {
    const auto& f = e["variants"][v];
    const auto& l = f["latency"];
    rows.push_back({v, e[v].get<std::string>(), std::to_string(f["requests"].get<uint64_t>()), Pct(f["error_rate"]),
                    Num(l["p50_ms"]), Num(l["p90_ms"]), Num(l["p95_ms"]), Num(l["p99_ms"]), Num(l["p999_ms"]),
                    Num(l["min_ms"]), Num(l["max_ms"]), Num(l["mean_ms"])});
  }
  std::cout << FormatTable(rows);
  // A metric reported in one arm only (or not declared) has no entry in
  // the other: every metric of either arm gets a row, "-" where it has none.
  std::set<std::string> metrics;
  for (const char* v : {"control", "treatment"}) {
    const nlohmann::json o = e["variants"][v].value("outcomes", nlohmann::json::object());
    for (auto it = o.begin(); it != o.end(); ++it) metrics.insert(it.key());
  }
  if (!metrics.empty()) {
    std::vector<std::vector<std::string>> orows{{"METRIC", "CONTROL COUNT", "RATE", "MEAN", "TREATMENT COUNT", "RATE", "MEAN"}};
    for (const auto& name : metrics) {
      std::vector<std::string> row{name};
      for (const char* v : {"control", "treatment"}) {
        const nlohmann::json o = e["variants"][v].value("outcomes", nlohmann::json::object());
        if (!o.contains(name)) {
          row.insert(row.end(), {"0", "-", "-"});
          continue;
        }
        const auto& m = o[name];
        row.insert(row.end(), {std::to_string(m.value("count", 0ull)), Pct(m.value("rate", 0.0)), Num(m.value("mean", 0.0))});
      }
      orows.push_back(row);
    }
    std::cout << FormatTable(orows);
  }
  const auto& c = e["comparison"];
  // A sticky experiment's tests are by user (its unit of randomisation).
  const bool by_user = c.value("unit", "") == "user";
  std::cout << "treatment − control (" << c["confidence"].get<double>() * 100 << "% intervals, "
            << (by_user ? "users" : "requests") << " as the unit):\n";
  std::cout << "  error rate     " << TestLine(c["error_rate"], true, by_user) << "\n";
  std::cout << "  latency mean   " << TestLine(c["latency_mean_ms"], false, by_user, " ms") << "\n";
  for (auto it = c["outcomes"].begin(); it != c["outcomes"].end(); ++it) {
    std::string pad(std::max<int>(1, 10 - static_cast<int>(it.key().size())), ' ');
    std::cout << "  " << it.key() << " rate" << pad << TestLine((*it)["rate"], true, by_user) << "\n";
    std::cout << "  " << it.key() << " mean" << pad << TestLine((*it)["mean"], false, by_user) << "\n";
  }
  auto verdict = [](const nlohmann::json& s) {
    if (!s.value("valid", false)) return "n/a (" + s.value("reason", std::string()) + ")";
    if (s["flagged"].get<bool>())
      return "MISMATCH: expected " + Pct(s["expected_treatment_share"]) + " treatment, p = " +
             Num(s["p_value"].get<double>(), 6) + " < 0.001 — check the routing before trusting these results";
    return "ok (p = " + Num(s["p_value"].get<double>(), 4) + ")";
  };
  std::cout << "  sample ratio   " << verdict(c["sample_ratio"]) << "\n";
  // Sticky experiments: the split is by user, and the check over users is the sound one.
  if (c.contains("sample_ratio_users")) {
    const auto& u = c["sample_ratio_users"];
    std::cout << "  sample ratio, users since mmsd started (" << u["users"]["control"] << " control, "
              << u["users"]["treatment"] << " treatment" << (u.value("saturated", false) ? ", first 1M only" : "")
              << "): " << verdict(u) << "\n";
  }
}

// mmsd not running: the experiments' figures as it last saved them (at most
// a flush interval behind), without the live serving figures.
// The figures last saved in this CLI's registry; `note` says why not the daemon's.
Result<nlohmann::json> StatsFromRegistry(Cli& cli, const std::string& id, const std::string& note) {
  MMS_ASSIGN_OR_RETURN(auto reg, cli.OpenRegistry());
  MMS_ASSIGN_OR_RETURN(const Config* cfg, cli.config());
  std::vector<ExperimentRecord> exps;
  if (!id.empty()) {
    MMS_ASSIGN_OR_RETURN(ExperimentRecord e, reg->GetExperiment(id));
    exps.push_back(std::move(e));
  } else {
    MMS_ASSIGN_OR_RETURN(exps, reg->ListExperiments(true));
  }
  nlohmann::json out{{"experiments", nlohmann::json::array()}, {"models", nlohmann::json::array()}, {"note", note}};
  for (const auto& e : exps) {
    MMS_ASSIGN_OR_RETURN(auto saved, reg->LoadExperimentMetrics(e.id));
    auto arm = [&](const char* v) {
      auto it = saved.find(v);
      return it == saved.end() ? VariantSnapshot{} : VariantSnapshot::FromJson(it->second);
    };
    out["experiments"].push_back(ExperimentReport(e, arm("control"), arm("treatment"), cfg->experiments.confidence));
  }
  return out;
}

int CmdStats(Cli& cli, const std::string& id) {
  nlohmann::json body = nlohmann::json::object();
  if (!id.empty()) body["experiment"] = id;
  // Named, so that a daemon serving another registry (another --data-dir
  // behind the same socket) says so instead of answering with its experiments.
  if (auto reg = cli.registry_path(); reg.ok()) body["registry"] = *reg;
  auto r = cli.Call(proto::kStats, body);
  if (!r.ok() && DaemonNotRunning(r.status())) {
    r = StatsFromRegistry(cli, id, "mmsd is not running: the figures it last saved (at most [experiments] "
                                   "flush_interval behind its last count)");
  } else if (!r.ok() && r.status().code() == Code::kFailedPrecondition && body.contains("registry")) {
    r = StatsFromRegistry(cli, id, r.status().message() + "; showing the figures last saved in " +
                                       body["registry"].get<std::string>());
  }
  if (r.ok() && r->contains("note")) cli.Note("note: " + (*r)["note"].get<std::string>());
  if (!r.ok()) return cli.Fail(r.status());
  cli.Emit(*r, [&] {
    for (const auto& e : (*r)["experiments"]) {
      PrintReport(e);
      std::cout << "\n";
    }
    if (r->contains("models") && !(*r)["models"].empty()) {
      // Refusals (a rate limit, a full queue, bad input, a deadline that
      // passed before it ran, a full pool) apart from the failures: a
      // rate-limited model showed 60% errors without ever failing.
      std::vector<std::vector<std::string>> rows{
          {"MODEL", "REQUESTS", "ERRORS", "REFUSED", "P50 MS", "P99 MS", "P999 MS", "MEAN MS"}};
      for (const auto& m : (*r)["models"]) {
        const uint64_t requests = m["requests"].get<uint64_t>();
        const nlohmann::json refused = m.value("refused", nlohmann::json::object());
        std::string why;
        const nlohmann::json by_reason = refused.value("by_reason", nlohmann::json::object());
        for (const auto& [reason, n] : by_reason.items()) {
          std::string label = reason;
          std::replace(label.begin(), label.end(), '_', ' ');
          why += (why.empty() ? " (" : ", ") + std::to_string(n.get<uint64_t>()) + " " + label;
        }
        rows.push_back({m["ref"], std::to_string(requests), Pct(m.value("failure_rate", 0.0)),
                        std::to_string(refused.value("total", uint64_t{0})) + (why.empty() ? "" : why + ")"),
                        Num(m["latency"]["p50_ms"]), Num(m["latency"]["p99_ms"]), Num(m["latency"]["p999_ms"]),
                        Num(m["latency"]["mean_ms"])});
      }
      std::cout << "serving since mmsd started:\n" << FormatTable(rows);
    }
  });
  return 0;
}

}  // namespace

void AddExperimentCommands(CLI::App& app, Cli& cli) {
  auto* exp = app.add_subcommand("experiment", "A/B experiments: sticky per-user splits between two versions");
  exp->require_subcommand(1);

  auto* create = exp->add_subcommand("create", "Start routing a share of NAME's users to a treatment version");
  auto a = std::make_shared<CreateArgs>();
  create->add_option("ID", a->id, "experiment id (it salts the user hash)")->required();
  create->add_option("--model", a->model, "the model name requests use")->required();
  create->add_option("--control", a->control, "control version (VERSION, NAME:VERSION or NAME@ALIAS)")->required();
  create->add_option("--treatment", a->treatment, "treatment version")->required();
  create->add_option("--percent", a->percent, "treatment share, 0-100 (0.01 steps)")->required()->check(DecimalNumber());
  create->add_flag("--random", a->random, "assign per request at random instead of sticky per user");
  create->add_option("--metric", a->metrics, "a business metric reported with mms feedback (repeatable)");
  create->callback([&cli, a] { cli.exit_code = CmdCreate(cli, *a); });

  exp->add_subcommand("list", "All experiments, running, paused and stopped")->callback([&cli] {
    cli.exit_code = CmdList(cli);
  });

  auto id = std::make_shared<std::string>();
  auto* show = exp->add_subcommand("show", "One experiment's configuration");
  show->add_option("ID", *id)->required();
  show->callback([&cli, id] { cli.exit_code = CmdShow(cli, *id); });

  auto* pause = exp->add_subcommand("pause", "Send everyone to control and stop counting until resumed");
  pause->add_option("ID", *id)->required();
  pause->callback([&cli, id] {
    cli.exit_code = Change(cli, [&](Registry& r) { return r.SetExperimentState(*id, "paused"); }, "paused " + *id);
  });

  auto* resume = exp->add_subcommand("resume", "Resume a paused experiment");
  resume->add_option("ID", *id)->required();
  resume->callback([&cli, id] {
    cli.exit_code = Change(cli, [&](Registry& r) { return r.SetExperimentState(*id, "running"); }, "resumed " + *id);
  });

  auto* ramp = exp->add_subcommand("ramp", "Change the treatment share (raising it keeps every treated user treated)");
  auto pct = std::make_shared<double>(-1);
  ramp->add_option("ID", *id)->required();
  ramp->add_option("--percent", *pct, "new treatment share, 0-100")->required()->check(DecimalNumber());
  ramp->callback([&cli, id, pct] {
    auto bp = PercentFlag(*pct);
    if (!bp.ok()) {
      cli.exit_code = cli.Fail(bp.status());
      return;
    }
    int before = -1;  // the share it had (sticky splits only)
    bool unchanged = false;
    std::string done = "ramped " + *id + " to " + FormatPercent(*bp / 100.0);
    cli.exit_code = Change(cli, [&](Registry& r) {
      if (auto e = r.GetExperiment(*id); e.ok() && !e->random) before = e->basis_points;
      auto e = r.RampExperiment(*id, *bp, &unchanged);
      if (unchanged) done = *id + " is at " + FormatPercent(*bp / 100.0) + " already: nothing to do";
      return e;
    }, done, false, &unchanged);
    // Lowering a sticky split moves treated users back to control: said, as
    // their later requests and outcomes then count for control.
    if (cli.exit_code == 0 && before > *bp)
      cli.Note("lowering the share from " + FormatPercent(before / 100.0) + " to " + FormatPercent(*bp / 100.0) +
               " moves about " + FormatPercent(100.0 * (before - *bp) / before) +
               " of the users treated so far back to control: their later requests and outcomes count for "
               "control, mixing both arms (to compare cleanly, stop this experiment and create another at the "
               "lower share)");
  });

  auto* stop = exp->add_subcommand("stop", "Stop; with --winner, promote that version to production (audited)");
  auto winner = std::make_shared<std::string>();
  stop->add_option("ID", *id)->required();
  stop->add_option("--winner", *winner, "control or treatment")->check(CLI::IsMember({"control", "treatment"}));
  stop->callback([&cli, id, winner] {
    cli.exit_code = Change(cli, [&](Registry& r) { return r.StopExperiment(*id, *winner); },
                           "stopped " + *id + (winner->empty() ? "" : "; " + *winner + " promoted to production"));
  });

  auto* assign = exp->add_subcommand("assign", "Which variant (and bucket) each user gets");
  auto users = std::make_shared<std::vector<std::string>>();
  assign->add_option("ID", *id)->required();
  assign->add_option("--user", *users, "user id (repeatable)")
      ->required()
      ->check(CLI::Validator(  // an unset shell variable: a row with a blank user, as if one were asked for
          [](std::string& v) { return v.empty() ? std::string("is empty; name a user id") : std::string(); },
          "NONEMPTY"));
  assign->callback([&cli, id, users] { cli.exit_code = CmdAssign(cli, *id, *users); });

  auto* fb = app.add_subcommand("feedback", "Report a business outcome (click, conversion, value) for a served request");
  auto rid = std::make_shared<std::string>();
  auto metrics = std::make_shared<std::vector<std::string>>();
  fb->add_option("REQUEST_ID", *rid, "the request_id mms predict replied with")->required();
  fb->add_option("--metric", *metrics, "NAME=VALUE (repeatable)")->required();
  fb->callback([&cli, rid, metrics] { cli.exit_code = CmdFeedback(cli, *rid, *metrics); });

  auto* stats = app.add_subcommand("stats", "Per-variant figures and significance tests; per-model serving figures");
  auto sid = std::make_shared<std::string>();
  stats->add_option("ID", *sid, "one experiment (default: all, plus per-model figures)");
  stats->callback([&cli, sid] { cli.exit_code = CmdStats(cli, *sid); });
}

}  // namespace mms::cli
