// mmsd: builds DaemonOptions from flags and mms.toml, starts the Daemon and
// waits for signals. SIGTERM/SIGINT drain and exit 0 (a second one during
// the drain exits 1 at once); SIGHUP reloads.
//
// Exit codes: 0 clean stop, 1 runtime error or a forced stop, 2 bad flags
// or config, 6 another mmsd already serves the socket.
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <thread>

#include <CLI/CLI.hpp>

#include "artifact_tool.h"
#include "config/config.h"
#include "core/log.h"
#include "core/paths.h"
#include "core/version.h"
#include "daemon.h"
#include "http_server.h"
#include "pool/device.h"
#include "server.h"

namespace {
// mms serve --detach points standard output and error at <data dir>/mmsd.log
// and names it in MMSD_STDERR_LOG: reopened at SIGHUP, so that log rotation
// (mv mmsd.log mmsd.log.1; kill -HUP) needs no copytruncate.
void ReopenStderrLog() {
  const char* path = std::getenv("MMSD_STDERR_LOG");
  if (!path || !*path) return;
  int fd = ::open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (fd < 0) {
    mms::LogError("stderr_reopen_failed", {{"path", path}, {"error", std::strerror(errno)}, {"kept", "the open file"}});
    return;
  }
  std::fflush(nullptr);
  ::dup2(fd, 1);
  ::dup2(fd, 2);
  ::close(fd);
  mms::LogInfo("stderr_reopened", {{"path", path}});
}

int Run(int argc, char** argv) {
  using namespace mms;
  CLI::App app{"mmsd: the mms multi-model serving daemon"};
  app.set_version_flag("--version", std::string("mmsd ") + MMS_VERSION);
  std::string config_path, socket, data_dir, metrics_address;
  bool check_config = false;
  app.add_option("--config", config_path, "mms.toml to read (default: $MMS_CONFIG, ~/.config/mms/mms.toml)");
  app.add_option("--socket", socket,
                 "IPC socket path (default: $XDG_RUNTIME_DIR/mms/mms.sock, else <data dir>/mms.sock)");
  app.footer("Also: mmsd inspect-artifact --path FILE [--pack-dir DIR] [--sample-input FILE] [--max-batch-size N]\n"
             "  checks a TorchScript artifact (and packs it), as mms model register does; see mmsd(8).");
  app.add_option("--data-dir", data_dir, "data directory (default: $XDG_DATA_HOME/mms)");
  app.add_option("--metrics-address", metrics_address,
                 "serve /metrics and /health over HTTP on HOST:PORT (default: [metrics] address, off)");
  app.add_flag("--check-config", check_config, "validate the configuration, print it resolved, and exit");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "mmsd: " << e.what() << "\nRun 'mmsd --help' for usage.\n";
    return 2;
  }

  auto env = ProcessEnv();
  DaemonOptions opts;
  if (config_path.empty()) config_path = DefaultConfigPath(env);
  if (!config_path.empty()) {
    auto cfg = LoadConfigFile(config_path);
    if (!cfg.ok()) {
      std::cerr << "mmsd: " << cfg.status().message() << "\n";
      return 2;
    }
    opts.config = std::move(cfg).value();
    opts.config_path = config_path;
  }
  Config& c = opts.config;
  opts.data_dir = !data_dir.empty() ? data_dir : c.daemon.data_dir;
  if (opts.data_dir.empty()) {
    auto dd = DefaultDataDir(env);
    if (!dd.ok()) {
      std::cerr << "mmsd: " << dd.status().message() << "\n";
      return 2;
    }
    opts.data_dir = *dd;
  }
  // Absolute, as mms resolves it (the socket stays as given: a unix socket's
  // path is limited to ~100 bytes, and a relative one may be what fits).
  opts.data_dir = AbsolutePath(opts.data_dir);
  opts.socket_path = !socket.empty() ? socket : !c.daemon.socket.empty() ? c.daemon.socket
                                                                         : DefaultSocketPath(env, opts.data_dir);
  opts.metrics_address = !metrics_address.empty() ? metrics_address : c.metrics.address;
  // Flags override the file's keys for good (a reload does not call their
  // changes ones that need a restart). mms serve --detach passes --socket and
  // --data-dir always, and names in MMSD_TYPED_FLAGS those its user typed.
  const char* typed_env = std::getenv("MMSD_TYPED_FLAGS");
  auto typed = [&](const char* name) {
    if (!typed_env) return true;  // mmsd run itself: its flags were typed
    return (std::string(",") + typed_env + ",").find(std::string(",") + name + ",") != std::string::npos;
  };
  if (!data_dir.empty() && typed("data_dir")) opts.set_by_flags.insert("[daemon] data_dir");
  if (!socket.empty() && typed("socket")) opts.set_by_flags.insert("[daemon] socket");
  if (!metrics_address.empty()) opts.set_by_flags.insert("[metrics] address");
  if (!metrics_address.empty()) {
    if (auto hp = ParseHostPort(metrics_address); !hp.ok()) {
      std::cerr << "mmsd: --metrics-address: " << hp.status().message() << "\n";
      return 2;
    }
  }
  if (check_config) {
    // Checked, not opened: a check run as root must not leave a root-owned
    // log file that the service's own user then cannot open.
    if (auto level = ParseLogLevel(c.log.level); !level.ok()) {
      std::cerr << "mmsd: " << level.status().message() << "\n";
      return 2;
    }
    if (!c.log.file.empty()) {
      const bool exists = ::access(c.log.file.c_str(), F_OK) == 0;
      const std::string where = exists ? c.log.file : DirName(c.log.file);
      if (::access(where.c_str(), W_OK | (exists ? 0 : X_OK)) != 0) {
        std::cerr << "mmsd: cannot write the log file " << c.log.file << " ([log] file): " << where << ": "
                  << std::strerror(errno) << "\n";
        return 2;
      }
    }
    // What this host must offer to start with it (mmsd(8): "as this host
    // would start with it"), reserving nothing (the metrics port is bound
    // and closed at once).
    if (!(c.pool.devices.size() == 1 && c.pool.devices[0] == "auto"))
      for (const auto& dev : c.pool.devices)
        if (Status st = CheckDevice(dev); !st.ok()) {
          std::cerr << "mmsd: [pool] devices: " << st.message() << "\n";
          return 2;
        }
    if (!opts.metrics_address.empty())
      if (Status st = HttpServer::CheckAddress(opts.metrics_address); !st.ok()) {
        std::cerr << "mmsd: " << st.message() << "\n";
        return 2;
      }
    // The data dir: there and writable, or creatable under its nearest
    // existing parent (tried: a directory made there and removed at once;
    // root passes access(2) on /proc, where nothing can be made).
    std::string dir = opts.data_dir, next;
    while (::access(dir.c_str(), F_OK) != 0 && DirName(dir) != dir) {
      next = dir;
      dir = DirName(dir);
    }
    std::string why;
    if (!IsDirectory(dir)) why = "is not a directory";
    else if (::access(dir.c_str(), W_OK | X_OK) != 0) why = std::strerror(errno);
    else if (!next.empty() && ::mkdir(next.c_str(), 0700) != 0)
      why = "cannot create " + next + ": " + std::strerror(errno);
    else if (!next.empty()) ::rmdir(next.c_str());
    if (!why.empty()) {
      std::cerr << "mmsd: cannot use the data dir " << opts.data_dir << " (--data-dir, [daemon] data_dir): " << dir
                << ": " << why << "\n";
      return 2;
    }
  } else if (Status st = ApplyLogConfig(c.log); !st.ok()) {
    std::cerr << "mmsd: " << st.message() << "\n";
    return 2;
  }
  if (check_config) {
    // The configuration in effect: the file's, with the flags and defaults
    // that decide the socket, data dir and metrics address applied.
    Config shown = opts.config;
    shown.daemon.socket = opts.socket_path;
    shown.daemon.data_dir = opts.data_dir;
    shown.metrics.address = opts.metrics_address;
    // As TOML comments: the whole output is a valid mms.toml (mmsd.8).
    std::cout << "# config: " << (opts.config_path.empty() ? "(built-in defaults)" : opts.config_path) << " OK\n"
              << "# socket: " << opts.socket_path << "\n"
              << "# data dir: " << opts.data_dir << "\n\n"
              << RenderConfig(shown);
    return 0;
  }

  // Signals are handled synchronously on this thread; block them everywhere
  // (threads created later inherit the mask).
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  ::signal(SIGPIPE, SIG_IGN);
  // Every client connection takes a descriptor: the soft limit (1024 under
  // systemd) up to the hard one, as servers do. Out of descriptors, new
  // clients cannot connect, and nng 1.5.2 keeps connections of a burst past
  // the limit for good (docs/architecture.md, "Listener watchdog").
  // Everything here waits on epoll, never select(): no FD_SETSIZE bound.
  if (rlimit rl{}; ::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = std::min<rlim_t>(rl.rlim_max, rlim_t{1} << 20);
    ::setrlimit(RLIMIT_NOFILE, &rl);
  }

  // The instance lock first: a second mmsd on this socket must not open the
  // registry or reserve device memory the running one is using.
  auto lock = Server::Lock(opts.socket_path);
  if (!lock.ok()) {
    std::cerr << "mmsd: " << lock.status().message() << "\n";
    return lock.status().code() == Code::kAlreadyExists ? 6 : 1;
  }
  opts.lock_fd = *lock;
  const int lock_fd = *lock;
  const std::string socket_path = opts.socket_path;
  // Exit codes stay those of mmsd(8): a refused configuration is 2, any
  // other failure to start 1; another daemon on the registry 6.
  auto exit_code = [](const Status& st) {
    return st.code() == Code::kInvalidArgument                                        ? 2
           : st.code() == Code::kAlreadyExists || st.code() == Code::kInUse ? 6  // (a metrics address taken)
                                                                               : 1;
  };
  // A start that fails, or a stop, leaves no lock file of ours behind.
  auto daemon = Daemon::Create(std::move(opts));
  if (!daemon.ok()) {
    std::cerr << "mmsd: " << daemon.status().message() << "\n";
    Server::Unlock(lock_fd, socket_path);
    return exit_code(daemon.status());
  }
  if (Status st = (*daemon)->Start(); !st.ok()) {
    std::cerr << "mmsd: " << st.message() << "\n";
    Server::Unlock(lock_fd, socket_path);
    return exit_code(st);
  }
  while (true) {
    int sig = 0;
    if (sigwait(&set, &sig) != 0) continue;
    if (sig == SIGHUP) {
      ReopenStderrLog();
      (void)(*daemon)->Reload();
      continue;
    }
    LogInfo("signal", {{"signal", sig == SIGTERM ? "SIGTERM" : "SIGINT"}});
    break;
  }
  // A second SIGTERM or SIGINT during the drain stops at once (exit 1),
  // as an impatient operator means it; state already flushed stays.
  std::thread([set] {
    while (true) {
      int sig = 0;
      if (sigwait(&set, &sig) != 0 || sig == SIGHUP) continue;
      LogWarn("stopping_now", {{"signal", sig == SIGTERM ? "SIGTERM" : "SIGINT"}, {"reason", "second signal during the drain"}});
      std::fflush(nullptr);
      ::_exit(1);
    }
  }).detach();
  // A stop that lost something — requests abandoned past the grace period,
  // figures the registry refused — exits 1, so a supervisor sees it.
  const Daemon::StopResult stop = (*daemon)->Shutdown();
  Server::Unlock(lock_fd, socket_path);
  if (!stop.idle || stop.close_stuck) {
    // Skip destructors that would wait on the abandoned requests, or run
    // while nng's stuck close can still call into the server.
    std::fflush(nullptr);
    ::_exit(stop.idle && stop.saved ? 0 : 1);
  }
  return stop.saved ? 0 : 1;
}

}  // namespace


int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "inspect-artifact") return mms::RunArtifactTool(argc - 1, argv + 1);
  int rc = Run(argc, argv);
  // The daemon is gone; static destructors (the logger) must not run while
  // the second-signal thread may still log. Flush and leave.
  std::fflush(nullptr);
  ::_exit(rc);
}
