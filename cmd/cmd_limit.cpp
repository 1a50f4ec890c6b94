// mms limit set|list|rm: rate limits per model and per tenant (token buckets).
#include <algorithm>
#include <iostream>
#include <set>

#include "cli.h"
#include "protocol/messages.h"
#include "serve/rate_limiter.h"

namespace mms::cli {
namespace {

struct LimitArgs {
  std::string model, tenant;
  double qps = 0, burst = 0;
  bool burst_set = false;
};

// `for_rm`: a tenant id is taken as stored, unchecked, so that a limit set
// before the rules for tenant ids tightened can still be removed.
Result<std::pair<std::string, std::string>> Target(const LimitArgs& a, bool for_rm = false) {
  if (a.model.empty() && a.tenant.empty())
    return InvalidArgument("name what to limit: a model (mms limit set MODEL ...) or a tenant (--tenant T)");
  if (!a.model.empty() && !a.tenant.empty())
    return InvalidArgument("name either a model (mms limit set MODEL ...) or a tenant (--tenant T), not both");
  if (!a.model.empty()) {
    if (auto cut = a.model.find_first_of(":@"); cut != std::string::npos && ValidateName(a.model.substr(0, cut)).ok())
      return InvalidArgument("limits are per model name, shared by all its versions: mms limit set " +
                             a.model.substr(0, cut) + " ...");
    MMS_RETURN_IF_ERROR(ValidateName(a.model));
    return std::make_pair(std::string("model"), a.model);
  }
  if (a.tenant == "*")
    return InvalidArgument("'*' stands for the [limits] default in mms limit list; set the default tenant limit with "
                           "[limits] tenant_qps in mms.toml");
  if (!for_rm) MMS_RETURN_IF_ERROR(ValidateTenant(a.tenant));
  // (none) takes a limit: requests without a tenant share it. The other two
  // are the limiter's own rows, which no request is ever counted as.
  if (!for_rm && a.tenant != RateLimiter::kNoTenant && RateLimiter::Reserved(a.tenant))
    return InvalidArgument("'" + a.tenant + "' is a row of mms limit list, not a tenant (" +
                           (a.tenant == RateLimiter::kOtherTenants ? "new tenants past the cap share its bucket" :
                                                                     "tenants past the cap are counted there") +
                           "): it takes no limit; name a tenant, or set the default with [limits] tenant_qps");
  return std::make_pair(std::string("tenant"), a.tenant);
}

int CmdSet(Cli& cli, const LimitArgs& a) {
  auto t = Target(a);
  if (!t.ok()) return cli.Fail(t.status());
  RateLimit l{t->first, t->second, a.qps, a.burst_set ? a.burst : std::max(1.0, a.qps)};
  auto reg = cli.OpenRegistry();
  if (!reg.ok()) return cli.Fail(reg.status());
  bool unchanged = false;
  if (Status st = (*reg)->SetLimit(l, &unchanged); !st.ok()) return cli.Fail(st);
  if (!unchanged) cli.NotifyDaemon();
  nlohmann::json j = l.ToJson();
  j["unchanged"] = unchanged;  // always there: a script reads it
  cli.Emit(j, [&] {
    std::cout << l.kind << " " << l.key << ": " << l.qps << (l.qps == 1 ? " request/s" : " requests/s") << ", burst " << l.burst
              << (unchanged ? " (as it was: nothing to do)" : "") << "\n";
  });
  return 0;
}

int CmdRm(Cli& cli, const LimitArgs& a) {
  auto t = Target(a, /*for_rm=*/true);
  if (!t.ok()) return cli.Fail(t.status());
  auto reg = cli.OpenRegistry();
  if (!reg.ok()) return cli.Fail(reg.status());
  if (Status st = (*reg)->RemoveLimit(t->first, t->second); !st.ok()) return cli.Fail(st);
  cli.NotifyDaemon();
  cli.Emit({{"kind", t->first}, {"key", t->second}, {"removed", true}},
           [&] { std::cout << "removed the limit of " << t->first << " " << t->second << "\n"; });
  return 0;
}

int CmdList(Cli& cli) {
  auto reg = cli.OpenRegistryToList();
  if (!reg.ok()) return cli.Fail(reg.status());
  auto limits = (*reg)->Limits();
  if (!limits.ok()) return cli.Fail(limits.status());
  nlohmann::json live = nlohmann::json::object();
  bool counted = false;  // the daemon answered: a limit it counted nothing for has 0s
  Status unanswered = Status::Ok();
  if (auto c = cli.Connect(); !c.ok()) {  // admitted/limited counts, when the daemon runs
    unanswered = c.status();
  } else if (auto r = (*c)->CallJson(proto::kLimitStats, nlohmann::json::object()); !r.ok()) {
    unanswered = r.status();
  } else {
    live = *r;
    counted = true;
  }
  // A daemon that runs and did not answer is said: its "-" counts would read
  // as no daemon running.
  if (!unanswered.ok() && !DaemonNotRunning(unanswered))
    cli.Note("note: no counts: mmsd did not answer (" + unanswered.message() + ")");
  nlohmann::json out = nlohmann::json::array();
  for (const auto& l : *limits) {
    nlohmann::json j = l.ToJson();
    // The same fields in every row (a script reads them): null without a daemon to count.
    j["admitted"] = j["limited"] = j["refused_by_limit"] = counted ? nlohmann::json(0) : nlohmann::json(nullptr);
    const auto& counts = live.value(l.kind == "model" ? "models" : "tenants", nlohmann::json::object());
    if (counts.contains(l.key)) {
      j["admitted"] = counts[l.key]["admitted"];
      j["limited"] = counts[l.key]["limited"];
      // Refused by a limit of its own: not those refused while the default applied to it.
      j["refused_by_limit"] = counts[l.key].value("refused_by_limit", 0ull) - counts[l.key].value("refused_by_default", 0ull);
    }
    out.push_back(j);
  }
  // The [limits] defaults, for models and tenants without their own: those
  // the daemon applies when it runs (its config, as last loaded), else mms.toml's.
  auto add = [&](const char* kind, double qps, double burst) {
    if (qps > 0)
      out.push_back({{"kind", kind}, {"key", "*"}, {"default", true}, {"qps", qps},
                     {"burst", burst > 0 ? std::max(1.0, burst) : std::max(1.0, qps)}});
  };
  if (live.contains("defaults")) {
    for (const char* kind : {"model", "tenant"})
      if (const auto& d = live["defaults"][kind]; d.is_object()) add(kind, d["qps"].get<double>(), d["burst"].get<double>());
    // The keys the defaults refused, most refused first (at most 20 of a
    // kind): who hits them, as the daemon counts it.
    for (const char* kind : {"model", "tenant"}) {
      if (!live["defaults"][kind].is_object()) continue;  // no default of this kind refuses anyone
      std::set<std::string> own;
      for (const auto& l : *limits)
        if (l.kind == kind) own.insert(l.key);
      std::vector<std::pair<uint64_t, std::string>> hit;
      const auto& counts = live.value(std::string(kind) + "s", nlohmann::json::object());
      for (auto it = counts.begin(); it != counts.end(); ++it)
        if (!own.count(it.key()) && it->value("refused_by_default", 0ull) > 0)
          hit.push_back({it->value("refused_by_default", 0ull), it.key()});
      std::sort(hit.begin(), hit.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
      for (size_t i = 0; i < hit.size() && i < 20; ++i) {
        const auto& c = counts[hit[i].second];
        nlohmann::json row{{"kind", kind}, {"key", hit[i].second}, {"by_default", true}, {"admitted", c.value("admitted", 0ull)},
                           {"limited", c.value("limited", 0ull)}, {"refused_by_limit", hit[i].first}};
        for (const char* f : {"qps", "burst"})  // none for tenants counted together: each had its own bucket
          if (c.contains(f)) row[f] = c[f];
        out.push_back(row);
      }
    }
  } else if (auto cfg = cli.config(); cfg.ok()) {
    const auto& l = (*cfg)->limits;
    add("model", l.model_qps, l.model_burst);
    add("tenant", l.tenant_qps, l.tenant_burst);
  }
  cli.Emit(out, [&] {
    if (out.empty()) {
      std::cout << "no rate limits (set one with mms limit set)\n";
      return;
    }
    // LIMITED: its requests refused (by this limit or the other one, model
    // or tenant); BY THIS LIMIT: those this limit refused.
    std::vector<std::vector<std::string>> rows{{"KIND", "KEY", "QPS", "BURST", "ADMITTED", "LIMITED", "BY THIS LIMIT"}};
    auto field = [](const nlohmann::json& j, const char* k) { return j.contains(k) && !j[k].is_null() ? j[k].dump() : std::string("-"); };
    for (const auto& j : out)
      rows.push_back({j["kind"], j.value("key", "?") + (j.value("by_default", false) ? " (by default)" : ""),
                      field(j, "qps"), field(j, "burst"), field(j, "admitted"), field(j, "limited"),
                      field(j, "refused_by_limit")});
    std::cout << FormatTable(rows);
    if (std::any_of(out.begin(), out.end(), [](const auto& j) { return j.contains("default"); }))
      std::cout << "* the [limits] default (mmsd's config when it runs), for each model or tenant without a limit of its own\n";
  });
  return 0;
}

}  // namespace

void AddLimitCommands(CLI::App& app, Cli& cli) {
  auto* limit = app.add_subcommand("limit", "Rate limits per model and per tenant (checked before queueing)");
  limit->require_subcommand(1);
  auto* set = limit->add_subcommand("set", "Limit a model (MODEL) or a tenant (--tenant T) to --qps with --burst");
  auto a = std::make_shared<LimitArgs>();
  set->add_option("MODEL", a->model, "a model name");
  // Given empty (an unset shell variable): said as such, not "name what to limit".
  const CLI::Validator named(
      [](std::string& v) { return v.empty() ? std::string("is empty; name a tenant id ('(none)': requests without one)") : ""; },
      "TENANT");
  set->add_option("--tenant", a->tenant, "a tenant id instead of a model")->check(named);
  const CLI::Validator decimal = DecimalNumber();
  set->add_option("--qps", a->qps, "sustained requests per second (1e-6 to 1e9)")->required()->check(decimal);
  set->add_option_function<double>(
         "--burst",
         [a](double b) {
           a->burst = b;
           a->burst_set = true;
         },
         "bucket size (1 to 1e9; default: the qps)")
      ->check(decimal);
  set->callback([&cli, a] { cli.exit_code = CmdSet(cli, *a); });
  limit->add_subcommand("list", "The limits, with admitted and limited counts when mmsd runs")->callback([&cli] {
    cli.exit_code = CmdList(cli);
  });
  auto* rm = limit->add_subcommand("rm", "Remove a model's (MODEL) or tenant's (--tenant T) limit");
  auto b = std::make_shared<LimitArgs>();
  rm->add_option("MODEL", b->model, "a model name");
  rm->add_option("--tenant", b->tenant, "a tenant id instead of a model")->check(named);
  rm->callback([&cli, b] { cli.exit_code = CmdRm(cli, *b); });
}

}  // namespace mms::cli
