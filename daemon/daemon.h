// Daemon: the composition root of mmsd. Owns every live service (registry
// watcher, pool, router, rollouts, ...) and the Server that exposes them;
// builds the handler table from the handlers_*.cpp files.
//
// Lifecycle: Create → Start → (Reload on SIGHUP)* → Shutdown. Shutdown drains
// the server for the grace period, persists what must survive, and reports
// whether everything finished (the caller exits 0 either way).
//
// Thread-safety: Start/Reload/Shutdown from the main (signal) thread only.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "config/config.h"
#include "core/clock.h"
#include "core/status.h"
#include "server.h"

namespace mms {

struct DaemonOptions {
  Config config;             // as loaded (or defaults)
  std::string config_path;   // "" when built-in defaults are used
  std::string socket_path;   // resolved
  std::string data_dir;      // resolved
  Clock* clock = Clock::Real();
};

class Daemon {
 public:
  static Result<std::unique_ptr<Daemon>> Create(DaemonOptions opts);
  ~Daemon();

  Status Start();
  // Re-reads the config file and applies what can change live (log level and
  // sink, registry poll interval, limits, ...). Returns what was reloaded.
  Result<std::vector<std::string>> Reload();
  // Stops accepting, waits up to [daemon] shutdown_grace for in-flight
  // requests, persists state. False when requests were still running.
  bool Shutdown();

  // For handlers.
  const DaemonOptions& options() const { return opts_; }
  Clock* clock() const { return opts_.clock; }
  int64_t started_mono_ns() const { return started_mono_ns_; }
  Server* server() const { return server_.get(); }

 private:
  explicit Daemon(DaemonOptions opts) : opts_(std::move(opts)) {}
  std::map<uint16_t, Handler> BuildHandlers();

  DaemonOptions opts_;
  int64_t started_mono_ns_ = 0;
  std::unique_ptr<Server> server_;
};

// handlers_*.cpp: each adds its message types to the table.
void AddCoreHandlers(Daemon* d, std::map<uint16_t, Handler>* table);

// Resolves the Server's worker count from [daemon] workers (0 = 2 × cores).
int ResolveWorkers(int configured);

// Applies [log] to the global logger.
Status ApplyLogConfig(const LogConfig& log);

}  // namespace mms
