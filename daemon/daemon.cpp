#include "daemon.h"

#include <unistd.h>

#include <thread>

#include "core/log.h"
#include "core/paths.h"

namespace mms {

int ResolveWorkers(int configured) {
  if (configured > 0) return configured;
  unsigned hc = std::thread::hardware_concurrency();
  return static_cast<int>(std::max(2u, 2 * (hc ? hc : 2)));
}

Status ApplyLogConfig(const LogConfig& log) {
  Logger::Options lo;
  auto level = ParseLogLevel(log.level);
  if (!level.ok()) return level.status();
  lo.level = *level;
  lo.file = log.file;
  lo.json = log.format == "json";
  return Logger::Global().Configure(lo);
}

Result<std::unique_ptr<Daemon>> Daemon::Create(DaemonOptions opts) {
  if (opts.socket_path.empty() || opts.data_dir.empty()) return InvalidArgument("socket and data dir must be resolved");
  std::unique_ptr<Daemon> d(new Daemon(std::move(opts)));
  Server::Options so;
  so.socket_path = d->opts_.socket_path;
  so.contexts = d->opts_.config.daemon.contexts;
  so.workers = ResolveWorkers(d->opts_.config.daemon.workers);
  so.max_message_bytes = d->opts_.config.daemon.max_message_bytes;
  auto server = Server::Create(so, d->BuildHandlers());
  if (!server.ok()) return server.status();
  d->server_ = std::move(server).value();
  return d;
}

Daemon::~Daemon() = default;

std::map<uint16_t, Handler> Daemon::BuildHandlers() {
  std::map<uint16_t, Handler> table;
  AddCoreHandlers(this, &table);
  return table;
}

Status Daemon::Start() {
  MMS_RETURN_IF_ERROR(MakeDirs(opts_.data_dir, 0700));
  started_mono_ns_ = opts_.clock->MonoNanos();
  MMS_RETURN_IF_ERROR(server_->Start());
  LogInfo("started", {{"pid", ::getpid()},
                      {"socket", opts_.socket_path},
                      {"data_dir", opts_.data_dir},
                      {"config", opts_.config_path.empty() ? "(built-in defaults)" : opts_.config_path}});
  return Status::Ok();
}

Result<std::vector<std::string>> Daemon::Reload() {
  std::vector<std::string> reloaded;
  if (opts_.config_path.empty()) return reloaded;
  auto cfg = LoadConfigFile(opts_.config_path);
  if (!cfg.ok()) {
    LogError("reload_failed", {{"error", cfg.status().message()}});
    return cfg.status();
  }
  MMS_RETURN_IF_ERROR(ApplyLogConfig(cfg->log));
  opts_.config.log = cfg->log;
  reloaded.push_back("log");
  LogInfo("reloaded", {{"config", opts_.config_path}, {"sections", reloaded}});
  return reloaded;
}

bool Daemon::Shutdown() {
  LogInfo("shutting_down", {{"in_flight", server_->in_flight()}});
  server_->BeginDrain();
  bool idle = server_->WaitIdle(opts_.config.daemon.shutdown_grace_ns);
  if (!idle) LogWarn("shutdown_grace_expired", {{"abandoned", server_->in_flight()}});
  if (idle) server_->Stop();
  LogInfo("stopped", {{"served", server_->requests_served()}});
  return idle;
}

}  // namespace mms
