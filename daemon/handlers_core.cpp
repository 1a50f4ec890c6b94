// PING, STATUS, RELOAD, REGISTRY_CHANGED.
#include <signal.h>
#include <unistd.h>

#include <algorithm>

#include "core/version.h"
#include "daemon.h"
#include "protocol/messages.h"

namespace mms {

void AddCoreHandlers(Daemon* d, std::map<uint16_t, Handler>* table) {
  // The cap lets a client whose big request cost it the connection (over
  // twice the cap, nng drops it) say why.
  (*table)[proto::kPing] = [d](proto::Message, Responder r) {
    r.Send(nlohmann::json{{"pid", ::getpid()}, {"version", MMS_VERSION},
                          {"max_message_bytes", d->options().config.daemon.max_message_bytes}});
  };

  (*table)[proto::kStatus] = [d](proto::Message, Responder r) {
    const auto& o = d->options();
    nlohmann::json j;
    j["version"] = MMS_VERSION;
    j["protocol"] = proto::kVersion;
    j["pid"] = ::getpid();
    j["uptime_s"] = static_cast<double>(d->clock()->MonoNanos() - d->started_mono_ns()) / 1e9;
    j["socket"] = o.socket_path;
    j["data_dir"] = o.data_dir;
    j["config"] = o.config_path;
    j["cuda_build"] = MMS_WITH_CUDA_BUILD == 1;
    j["requests_served"] = d->server()->requests_served();
    j["requests_handled_inline"] = d->server()->handled_inline();
    // Not counting this status request itself.
    j["in_flight"] = std::max<int64_t>(0, d->server()->in_flight() - 1);
    j["registry"] = d->registry()->path();
    if (Status st = d->registry()->CheckFileIdentity(); !st.ok()) {
      j["registry_error"] = st.message();
      j["registry_let_go"] = d->registry()->let_go();  // (until then its log at the path is not the file's)
    }
    if (std::string e = d->MetricsFlushError(); !e.empty()) j["metrics_flush_error"] = e;
    if (std::string e = d->RegistryCorruptError(); !e.empty()) j["registry_corrupt"] = e;
    if (std::string e = d->ReloadError(); !e.empty()) j["config_reload_error"] = e;
    for (const auto& u : d->UnsavedRollbacks())
      j["unsaved_rollbacks"].push_back({{"experiment", u.experiment_id}, {"reason", u.reason}});
    j["config_restart_pending"] = d->restart_pending();
    j["last_reload"] = d->LastReload();
    j["devices"] = d->pool()->Devices();
    nlohmann::json pool = d->pool()->Summary();
    size_t registered = 0;
    auto snap = d->snapshot();  // a range-for over a temporary's member would dangle
    for (const auto& [name, versions] : snap->models) registered += versions.size();
    pool["models_registered"] = registered;
    j["pool"] = std::move(pool);
    r.Send(std::move(j));
  };

  (*table)[proto::kReload] = [d](proto::Message, Responder r) {
    // Reloading belongs to the main thread (as SIGHUP): signal it. Signals
    // coalesce: the reload that covers this request's number answers it.
    const int64_t request = d->RequestReload();
    ::kill(::getpid(), SIGHUP);
    r.Send(nlohmann::json{{"reload", "requested"}, {"request", request}});
  };

  // Answered once the change routes: a new experiment's or shadow's arms are
  // loaded first (in the background; no thread waits), so `mms experiment
  // create` returns when its requests are split. At most kRoutedWaitNs, or
  // the "wait_ms" asked for (the CLI's rollout-starting commands ask for the
  // warm-up limit; other writes must not be held by someone else's load).
  (*table)[proto::kRegistryChanged] = [d](proto::Message req, Responder r) {
    if (Status st = d->CheckSameRegistry(req.body); !st.ok()) return r.Fail(st);
    int64_t wait_ns = Daemon::kRoutedWaitNs;
    if (req.body.contains("wait_ms")) {
      if (!req.body["wait_ms"].is_number() || !(req.body["wait_ms"].get<double>() >= 0))
        return r.Fail(InvalidArgument("wait_ms must be a number of milliseconds, 0 or more"));
      wait_ns = static_cast<int64_t>(std::min(req.body["wait_ms"].get<double>(), 3600e3) * 1e6);
    }
    // Answered with the arms that could not be loaded, when any (the CLI warns).
    auto answer = [r, d]() mutable {
      nlohmann::json j = nlohmann::json::object();
      if (nlohmann::json failed = d->WarmupFailures(); !failed.empty()) j["load_failures"] = std::move(failed);
      r.Send(std::move(j));
    };
    if (Status st = d->RefreshRegistry(false, answer, wait_ns); !st.ok()) r.Fail(st);
  };
}

}  // namespace mms
