// /metrics (Prometheus text, names prefixed mms_) and /health, /health/{model}.
#include <unistd.h>

#include <set>

#include "core/version.h"
#include "daemon.h"
#include "protocol/codec.h"
#include "stats/prometheus.h"

namespace mms {

std::string Daemon::PrometheusText() {
  PromWriter w;
  w.Family("mms_up", "gauge", "1 while mmsd runs (draining after SIGTERM too: /health says draining).");
  w.Sample("mms_up", {{"version", MMS_VERSION}}, 1);
  w.Family("mms_uptime_seconds", "gauge", "Seconds since mmsd started.");
  w.Sample("mms_uptime_seconds", {}, static_cast<double>(clock()->MonoNanos() - started_mono_ns_) / 1e9);
  w.Family("mms_ipc_listener_up", "gauge", "0 while new IPC connections go unanswered (the listener watchdog's probes).");
  w.Sample("mms_ipc_listener_up", {}, server_->listener_ok() ? 1 : 0);
  w.Family("mms_ipc_listener_restarts_total", "counter", "New IPC listeners opened by the watchdog.");
  w.Sample("mms_ipc_listener_restarts_total", {}, static_cast<double>(server_->listener_restarts()));
  w.Family("mms_requests_handled_inline_total", "counter",
           "Requests handled on the thread that received them, with no hand-off ([daemon] inline_handlers).");
  w.Sample("mms_requests_handled_inline_total", {}, static_cast<double>(server_->handled_inline()));
  w.Family("mms_requests_in_flight", "gauge", "Requests being served now.");
  w.Sample("mms_requests_in_flight", {}, static_cast<double>(server_->in_flight()));

  // What degrades silently (mmsd serves on; the log says it once): for alerts.
  w.Family("mms_config_last_reload_successful", "gauge",
           "0 when the last SIGHUP found the config file invalid (nothing applied) or could not apply its [log].");
  w.Sample("mms_config_last_reload_successful", {}, reload_ok_.load() ? 1 : 0);
  w.Family("mms_config_last_reload_success_timestamp_seconds", "gauge",
           "When the config file was last applied whole (at start, or by SIGHUP), Unix seconds.");
  w.Sample("mms_config_last_reload_success_timestamp_seconds", {}, static_cast<double>(reload_ok_unix_ms_.load()) / 1e3);
  w.Family("mms_config_restart_pending", "gauge",
           "Keys of the config file, as last reloaded, that differ from what runs and take a restart.");
  w.Sample("mms_config_restart_pending", {}, restart_pending_.load());
  w.Family("mms_registry_flush_failing", "gauge",
           "1 while experiment and shadow figures cannot be saved to the registry (kept in memory meanwhile).");
  w.Sample("mms_registry_flush_failing", {}, flush_failing_.load() ? 1 : 0);
  w.Family("mms_registry_read_failing", "gauge", "1 while the registry cannot be read: changes to it are not served.");
  w.Sample("mms_registry_read_failing", {}, refresh_failing_.load() ? 1 : 0);
  w.Family("mms_registry_replaced", "gauge",
           "1 while the registry file mmsd opened is no longer at its path (removed, moved, replaced) or lost its -wal file.");
  w.Sample("mms_registry_replaced", {}, registry_detached() ? 1 : 0);
  w.Family("mms_registry_corrupt", "gauge",
           "1 while the registry file fails SQLite's quick_check ([registry] integrity_check): restore a backup.");
  w.Sample("mms_registry_corrupt", {}, RegistryCorruptError().empty() ? 0 : 1);

  // Serving figures per version.
  w.Family("mms_requests_total", "counter",
           "Prediction requests, by model and version, refused ones included (rate limited, queue full, bad input).");
  w.Family("mms_request_errors_total", "counter",
           "Prediction requests not served, by model, version and error code: refusals (RATE_LIMITED, OVERLOADED, "
           "INVALID_ARGUMENT) and failures alike; alert on failures with code!~\"RATE_LIMITED|OVERLOADED|INVALID_ARGUMENT\".");
  w.Family("mms_request_latency_seconds", "histogram", "Prediction latency inside mmsd, by model and version.");
  for (const auto& [ref, m] : serving_metrics_.All()) {
    auto colon = ref.find(':');
    Labels l{{"model", ref.substr(0, colon)}, {"version", ref.substr(colon + 1)}};
    VariantSnapshot s = m->Snapshot();
    w.Sample("mms_requests_total", l, static_cast<double>(s.requests));
    for (const auto& [code, n] : s.error_codes) {
      Labels e = l;
      e.emplace_back("code", code);
      w.Sample("mms_request_errors_total", e, static_cast<double>(n));
    }
    w.Histogram("mms_request_latency_seconds", l, s.latency);
  }

  // The pool, per version and tier.
  nlohmann::json pool = pool_->Snapshot();
  w.Family("mms_pool_bytes_used", "gauge", "Weight bytes held per device and in the host tier.");
  w.Family("mms_pool_bytes_budget", "gauge", "Weight byte budget per device and of the host tier.");
  for (const auto& d : pool["devices"]) {
    w.Sample("mms_pool_bytes_used", {{"tier", "device"}, {"device", d["name"]}}, d["used"].get<double>());
    w.Sample("mms_pool_bytes_budget", {{"tier", "device"}, {"device", d["name"]}}, d["budget"].get<double>());
  }
  w.Sample("mms_pool_bytes_used", {{"tier", "host"}, {"device", "host"}}, pool["host"]["used"].get<double>());
  w.Sample("mms_pool_bytes_budget", {{"tier", "host"}, {"device", "host"}}, pool["host"]["budget"].get<double>());
  w.Family("mms_model_loads_total", "counter", "Loads onto a device, by model and version.");
  w.Family("mms_model_load_seconds", "gauge", "Duration of the latest load, by model and version.");
  w.Family("mms_model_evictions_total", "counter", "Demotions one tier down, by model and version.");
  w.Family("mms_model_bytes", "gauge", "Weight bytes of a version, by the tier it is in.");
  w.Family("mms_model_in_flight", "gauge", "Requests holding a version now.");
  w.Family("mms_model_healthy", "gauge",
           "1 unless the version failed its last load or warm-up, or no budget can ever hold it (as mms health says).");
  w.Family("mms_model_hits_total", "counter", "Requests that found the version on a device.");
  w.Family("mms_model_misses_total", "counter", "Requests that had to wait for a load.");
  // A version no budget can ever hold fails every request: unhealthy, as
  // mms health and /health say (its last load never failed: none was tried).
  std::set<std::string> never_fits;
  {
    auto snap = snapshot();
    for (const auto& [name, versions] : snap->models)
      for (const VersionRecord& v : versions)
        if (!PoolFor(v)->FitsAtAll(ItemFor(v)).ok()) never_fits.insert(v.ref());
  }
  auto per_model = [&](const nlohmann::json& m) {
    std::string ref = m["ref"];
    auto colon = ref.find(':');
    Labels l{{"model", ref.substr(0, colon)}, {"version", ref.substr(colon + 1)}};
    w.Sample("mms_model_loads_total", l, m.value("loads", 0.0));
    w.Sample("mms_model_load_seconds", l, m.value("load_ms", 0.0) / 1e3);
    w.Sample("mms_model_evictions_total", l, m.value("evictions", 0.0));
    Labels t = l;
    t.emplace_back("tier", m.value("tier", "disk"));
    w.Sample("mms_model_bytes", t, m.value("bytes", 0.0));
    w.Sample("mms_model_in_flight", l, m.value("in_flight", 0.0));
    w.Sample("mms_model_healthy", l, m.value("healthy", true) && !never_fits.count(ref) ? 1 : 0);
    w.Sample("mms_model_hits_total", l, m.value("hits", 0.0));
    w.Sample("mms_model_misses_total", l, m.value("misses", 0.0));
  };
  // LoRA adapters are versions too (their own pool): the same per-version series.
  nlohmann::json adapters = adapters_->Snapshot();
  w.Family("mms_adapter_pool_bytes_used", "gauge", "LoRA adapter bytes held per device and in the host tier.");
  w.Family("mms_adapter_pool_bytes_budget", "gauge", "LoRA adapter byte budget per device and of the host tier ([lora]).");
  for (const auto& d : adapters["devices"]) {
    w.Sample("mms_adapter_pool_bytes_used", {{"tier", "device"}, {"device", d["name"]}}, d["used"].get<double>());
    w.Sample("mms_adapter_pool_bytes_budget", {{"tier", "device"}, {"device", d["name"]}}, d["budget"].get<double>());
  }
  w.Sample("mms_adapter_pool_bytes_used", {{"tier", "host"}, {"device", "host"}}, adapters["host"]["used"].get<double>());
  w.Sample("mms_adapter_pool_bytes_budget", {{"tier", "host"}, {"device", "host"}}, adapters["host"]["budget"].get<double>());
  // Waits for room, of the models' pool and the adapters' ({pool}).
  w.Family("mms_pool_room_waits_total", "counter",
           "Requests that waited for device or host room held by requests in flight ([pool] room_wait), by pool.");
  w.Family("mms_pool_room_wait_timeouts_total", "counter",
           "Requests refused POOL_FULL after waiting [pool] room_wait for room (the pool is too small for the "
           "traffic), by pool.");
  w.Family("mms_pool_waiting_for_room", "gauge", "Requests waiting for room now, by pool.");
  w.Family("mms_pool_room_drains_total", "counter",
           "Models in flight drained (no new requests, evicted as the last ends) for a request still refused room "
           "halfway through [pool] room_wait, by pool.");
  for (const auto& [name, p] : {std::pair<const char*, const nlohmann::json*>{"models", &pool}, {"adapters", &adapters}}) {
    const auto& totals = (*p)["totals"];
    w.Sample("mms_pool_room_waits_total", {{"pool", name}}, totals.value("room_waits", 0.0));
    w.Sample("mms_pool_room_wait_timeouts_total", {{"pool", name}}, totals.value("room_wait_timeouts", 0.0));
    w.Sample("mms_pool_waiting_for_room", {{"pool", name}}, totals.value("waiting_for_room", 0.0));
    w.Sample("mms_pool_room_drains_total", {{"pool", name}}, totals.value("room_drains", 0.0));
  }
  for (const nlohmann::json* p : {&pool, &adapters}) {
    for (const auto& d : (*p)["devices"])
      for (const auto& m : d["models"]) per_model(m);
    for (const auto& m : (*p)["host"]["models"]) per_model(m);
    for (const auto& m : (*p)["disk"]["models"]) per_model(m);
  }
  // Pins that hold no place on a device: naming no version, or not placed
  // (no device budget has room for them beside the other pins).
  double off_device = 0;
  for (const nlohmann::json* p : {&pool, &adapters})
    for (const char* tier : {"host", "disk"})
      for (const auto& m : (*p)[tier]["models"])
        if (m.value("pinned", false) && !m.value("loading", false)) ++off_device;
  w.Family("mms_pins_unplaced", "gauge",
           "Pins not on a device, by reason: no_version (names none) or not_loaded (failed, or no room).");
  w.Sample("mms_pins_unplaced", {{"reason", "no_version"}}, static_cast<double>(UnresolvedPins().size()));
  w.Sample("mms_pins_unplaced", {{"reason", "not_loaded"}}, off_device);
  ExportSchedulerMetrics(&w);

  // Experiments, shadows, canaries.
  auto snap = snapshot();
  // Counted since mmsd started, as every counter here: the figures restored
  // from the registry are left out. Exported with them, a SIGKILL (which
  // loses up to one flush of figures) made the counters go down, and
  // Prometheus read the drop as a reset: increase() jumped by the whole total.
  w.Family("mms_experiment_requests_total", "counter",
           "Requests an experiment routed since mmsd started, by variant (its totals: mms stats).");
  w.Family("mms_experiment_errors_total", "counter",
           "Failed requests an experiment routed since mmsd started, by variant.");
  w.Family("mms_experiment_outcomes_total", "counter",
           "Business outcomes reported with feedback since mmsd started, by variant.");
  w.Family("mms_experiment_treatment_percent", "gauge", "The configured treatment share.");
  for (const auto& [model, e] : snap->experiments) {
    w.Sample("mms_experiment_treatment_percent", {{"experiment", e.id}, {"model", model}}, e.percent());
    for (const char* v : {"control", "treatment"}) {
      auto vm = VariantMetricsFor(e.id, v);
      const VariantSnapshot s = vm->Snapshot(), before = vm->Restored();
      auto since = [](uint64_t now, uint64_t then) { return static_cast<double>(now - std::min(now, then)); };
      Labels l{{"experiment", e.id}, {"model", model}, {"variant", v}};
      w.Sample("mms_experiment_requests_total", l, since(s.requests, before.requests));
      w.Sample("mms_experiment_errors_total", l, since(s.errors, before.errors));
      for (const auto& [metric, o] : s.outcomes) {
        Labels m = l;
        m.emplace_back("metric", metric);
        auto was = before.outcomes.find(metric);
        w.Sample("mms_experiment_outcomes_total", m, since(o.count, was == before.outcomes.end() ? 0 : was->second.count));
      }
    }
  }
  w.Family("mms_experiment_figures_in_memory", "gauge",
           "Experiment arms whose figures mmsd holds: the active experiments', and a stopped one's until saved and idle.");
  w.Sample("mms_experiment_figures_in_memory", {}, static_cast<double>(experiment_metrics_.size()));
  w.Family("mms_shadow_requests_total", "counter", "Shadow requests by result: mirrored, dropped, failed, diverged.");
  for (const auto& [model, s] : snap->shadows) {
    auto st = shadows_->Stats(model);
    if (!st.ok()) continue;
    Labels l{{"model", model}, {"candidate", s.candidate_ref()}};
    for (const char* r : {"mirrored", "dropped", "failed"}) {
      Labels x = l;
      x.emplace_back("result", r);
      w.Sample("mms_shadow_requests_total", x, (*st)["requests"][r].get<double>());
    }
    Labels x = l;
    x.emplace_back("result", "diverged");
    w.Sample("mms_shadow_requests_total", x, (*st)["diverged"].get<double>());
  }
  w.Family("mms_canary_traffic_percent", "gauge", "Traffic share of a running canary.");
  w.Family("mms_canary_stage", "gauge", "Current stage (1-based) of a running canary.");
  // As the canary controller last read them: a scrape never waits on the
  // registry, whose lock a flush may hold for its busy timeout (a scrape
  // timed out, and with it the alert on that very flush).
  for (const auto& c : canaries_->Seen()) {
    Labels l{{"model", c.model}, {"candidate", c.model + ":" + c.candidate_version}, {"state", c.state}};
    w.Sample("mms_canary_traffic_percent", l, c.traffic_percent());
    w.Sample("mms_canary_stage", l, c.stage_index + 1);
  }
  return w.str();
}

HttpResponse Daemon::HealthResponse(const std::string& path) {
  const std::string prefix = "/health/";
  // A draining daemon takes no new requests: load balancers should move on.
  const bool draining = server_->draining();
  if (path != "/health" && path.rfind(prefix, 0) != 0)  // "/healthz", "/healthcheck": not ours
    return {404, "text/plain; charset=utf-8", "not found: " + path + "\n"};
  if (path == "/health" || path == "/health/") {
    // A listener the watchdog cannot bring back (two probes in a row
    // unanswered) means no new client reaches this daemon over IPC, however
    // well it serves the connections it has: load balancers should move on.
    const bool ipc_ok = server_->listener_ok();
    // A registry file removed or replaced under mmsd: it serves a registry
    // nobody else sees (registrations and rollouts made now do not reach it).
    const bool registry_ok = !registry_detached();
    const char* status = draining ? "draining" : !ipc_ok ? "unreachable" : !registry_ok ? "registry_replaced" : "ok";
    nlohmann::json body{{"status", status}, {"pid", ::getpid()}, {"ipc_listener", ipc_ok ? "ok" : "unreachable"}};
    if (!ipc_ok) body["error"] = "new connections to " + server_->options().socket_path +
                                 " are not being answered; see the daemon log (listener_restart_failed)";
    else if (!registry_ok) body["error"] = registry_->CheckFileIdentity().message();
    // Serving is fine (200); the figures, or the registry, are at risk: said, not failed.
    std::string warning = MetricsFlushError();
    if (std::string e = RegistryCorruptError(); !e.empty()) warning += (warning.empty() ? "" : "; ") + e;
    if (!warning.empty()) body["warning"] = warning;
    return {draining || !ipc_ok || !registry_ok ? 503 : 200, "application/json", proto::DumpBody(body) + "\n"};
  }
  // The snapshot only: an unauthenticated probe of unknown names must not
  // make the daemon re-read its registry (Resolve would).
  std::string ref_text = path.substr(prefix.size());
  auto ref = ParseRef(ref_text);
  auto snap = snapshot();  // owns the record `v` points into
  auto v = ref.ok() ? snap->Resolve(*ref) : Result<const VersionRecord*>(ref.status());
  if (!v.ok()) {
    int status = v.status().code() == Code::kNotFound ? 404 : 400;
    return {status, "application/json", proto::DumpBody({{"error", v.status().message()}}) + "\n"};
  }
  if (draining)
    return {503, "application/json", proto::DumpBody({{"ref", (*v)->ref()}, {"status", "draining"}}) + "\n"};
  nlohmann::json body = VersionHealth(**v);
  return {body.value("healthy", true) ? 200 : 503, "application/json", proto::DumpBody(body) + "\n"};
}

}  // namespace mms
