// mms serve, mms status, mms ping.
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <iostream>
#include <thread>

#include "cli.h"
#include "core/paths.h"
#include "core/units.h"
#include "protocol/messages.h"

namespace mms::cli {
namespace {

[[noreturn]] void ExecMmsd(const std::vector<std::string>& args) {
  std::string path = MmsdPath();
  std::vector<char*> argv;
  argv.push_back(const_cast<char*>("mmsd"));
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  ::execvp(path.c_str(), argv.data());
  std::cerr << "mms: cannot start " << path << ": " << std::strerror(errno)
            << " (is mmsd installed beside mms or on PATH?)\n";
  ::_exit(1);
}

std::string Tail(const std::string& path, size_t max_lines) {
  auto text = ReadFile(path);
  if (!text.ok()) return "";
  std::vector<std::string> lines = Split(*text, '\n');
  while (!lines.empty() && lines.back().empty()) lines.pop_back();
  size_t from = lines.size() > max_lines ? lines.size() - max_lines : 0;
  std::string out;
  for (size_t i = from; i < lines.size(); ++i) out += "  " + lines[i] + "\n";
  return out;
}

int CmdServe(Cli& cli, bool detach, const std::string& metrics_address) {
  auto args = cli.DaemonArgs();
  // mmsd's own flag, passed through: a second daemon (a restored data dir
  // beside the first) needs an address of its own.
  const std::vector<std::string> metrics =
      metrics_address.empty() ? std::vector<std::string>{} : std::vector<std::string>{"--metrics-address", metrics_address};
  args.insert(args.end(), metrics.begin(), metrics.end());
  if (!detach) ExecMmsd(args);

  auto dd = cli.data_dir();
  if (!dd.ok()) return cli.Fail(dd.status());
  auto sock = cli.socket_path();
  if (!sock.ok()) return cli.Fail(sock.status());
  // Refused here, before a child writes its refusal into that daemon's log.
  if (std::string holder = SocketHolder(*sock); !holder.empty())
    return cli.Fail(Status(Code::kInUse, "mmsd is already running (pid " + holder + ") on " + *sock +
                                             " (or still stopping); stop it first (kill " + holder +
                                             ") or start this one with another --socket"));
  if (Status st = MakeDirs(*dd, 0700); !st.ok()) return cli.Fail(st);
  std::string log_path = JoinPath(*dd, "mmsd.log");
  // The child must serve the same socket and data dir we will poll.
  args = {"--socket", *sock, "--data-dir", *dd};
  if (!cli.g.config.empty()) args.insert(args.end(), {"--config", cli.g.config});
  args.insert(args.end(), metrics.begin(), metrics.end());

  off_t log_start = 0;
  if (FileExists(log_path)) {
    int fd = ::open(log_path.c_str(), O_RDONLY | O_CLOEXEC);
    log_start = ::lseek(fd, 0, SEEK_END);
    ::close(fd);
  }
  pid_t pid = ::fork();
  if (pid < 0) return cli.Fail(IoError(std::string("fork: ") + std::strerror(errno)));
  if (pid == 0) {
    ::setsid();
    int in = ::open("/dev/null", O_RDONLY);
    int out = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (in >= 0) ::dup2(in, 0);
    if (out >= 0) {
      ::dup2(out, 1);
      ::dup2(out, 2);
    }
    // So that mmsd reopens it at SIGHUP: a rotated log (mv, then SIGHUP) is written anew.
    ::setenv("MMSD_STDERR_LOG", log_path.c_str(), 1);
    // --socket and --data-dir are always passed (the daemon must serve what
    // this polls), but only those typed override the config for good: a
    // reload says when the file's others change (they apply at the next start).
    std::string typed = std::string(cli.g.socket.empty() ? "" : "socket,") + (cli.g.data_dir.empty() ? "" : "data_dir");
    ::setenv("MMSD_TYPED_FLAGS", typed.c_str(), 1);
    ExecMmsd(args);
  }
  // Wait until the daemon answers a ping, or it dies.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    if (::waitpid(pid, &status, WNOHANG) == pid) {
      int code = WIFEXITED(status) ? WEXITSTATUS(status) : 1;
      // Another start won the race to the lock (jobs started at once): said
      // as a serial rerun says it, not as the winner's log lines.
      if (std::string holder = SocketHolder(*sock); code == 6 && !holder.empty())
        return cli.Fail(Status(Code::kInUse, "mmsd is already running (pid " + holder + ") on " + *sock +
                                                 ", started a moment ago by another start; this one was not started"));
      std::string tail;
      if (auto text = ReadFile(log_path); text.ok() && text->size() > static_cast<size_t>(log_start)) {
        std::string fresh = text->substr(static_cast<size_t>(log_start));
        for (const auto& l : Split(fresh, '\n'))
          if (!l.empty()) tail += "  " + l + "\n";
      }
      // Through Fail, so --json gets its error object; mmsd's own exit codes
      // (2 a bad config, 6 one already running) are kept.
      Code c = code == 2 ? Code::kInvalidArgument : code == 6 ? Code::kInUse : Code::kInternal;
      if (!tail.empty() && tail.back() == '\n') tail.pop_back();
      std::string where = log_path;
      // With [log] file, what mmsd logged once logging started is there.
      if (auto cfg = cli.config(); cfg.ok() && !(*cfg)->log.file.empty() && FileExists((*cfg)->log.file)) {
        where = (*cfg)->log.file + " and " + log_path;
        tail = Tail((*cfg)->log.file, 10) + (tail.empty() ? "" : "\n" + tail);
      }
      return cli.Fail(Status(c, "mmsd exited during start-up (exit " + std::to_string(code) + "); its log (" +
                                    where + "):\n" + tail));
    }
    proto::Client::Options o;
    o.socket_path = *sock;
    o.timeout_ms = 2000;
    if (auto c = proto::Client::Connect(o); c.ok()) {
      auto r = (*c)->CallJson(proto::kPing, nlohmann::json::object());
      if (r.ok() && r->value("pid", 0) == pid) {
        // With [log] file, the log goes there; mmsd.log keeps what is written
        // to standard error besides (a crash's last words).
        std::string log = log_path;
        if (auto cfg = cli.config(); cfg.ok() && !(*cfg)->log.file.empty()) log = (*cfg)->log.file;
        cli.Emit({{"pid", pid}, {"socket", *sock}, {"data_dir", *dd}, {"log", log}, {"stderr", log_path}}, [&] {
          std::cout << "mmsd started (pid " << pid << ") on " << *sock << "; log: " << log
                    << (log != log_path ? " (standard error: " + log_path + ")" : "") << "\n";
        });
        return 0;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return cli.Fail(Internal("mmsd (pid " + std::to_string(pid) + ") did not answer within 60 s; its log:\n" +
                           Tail(log_path, 20)));
}

std::string FormatUptime(double s) { return FormatDurationNanos(static_cast<int64_t>(s * 1e9)); }

int CmdStatus(Cli& cli) {
  auto r = cli.Call(proto::kStatus, nlohmann::json::object());
  if (!r.ok()) return cli.Fail(r.status());
  const auto& j = *r;
  cli.Emit(j, [&] {
    std::cout << "mmsd " << j.value("version", "?") << " (protocol " << j.value("protocol", 0) << "), pid "
              << j.value("pid", 0) << ", up " << FormatUptime(j.value("uptime_s", 0.0)) << "\n";
    std::cout << "socket:    " << j.value("socket", "") << "\n";
    std::cout << "data dir:  " << j.value("data_dir", "") << "\n";
    std::string cfg = j.value("config", "");
    std::cout << "config:    " << (cfg.empty() ? "(built-in defaults)" : cfg);
    if (int n = j.value("config_restart_pending", 0); n > 0)
      std::cout << " (" << n << " changed key" << (n == 1 ? " takes" : "s take") << " a restart; see the log: reload_needs_restart)";
    std::cout << "\n";
    if (j.contains("config_reload_error"))
      std::cout << "WARNING:   " << j["config_reload_error"].get<std::string>() << "\n";
    if (j.contains("registry_error")) std::cout << "WARNING:   " << j["registry_error"].get<std::string>() << "\n";
    if (j.contains("registry_corrupt")) std::cout << "WARNING:   " << j["registry_corrupt"].get<std::string>() << "\n";
    if (j.contains("metrics_flush_error"))
      std::cout << "WARNING:   " << j["metrics_flush_error"].get<std::string>() << "\n";
    for (const auto& u : j.value("unsaved_rollbacks", nlohmann::json::array()))
      std::cout << "WARNING:   canary " << u["experiment"].get<std::string>()
                << " rolled back by mmsd, not recorded yet (the registry refuses writes; retried at every poll, no "
                   "traffic meanwhile): "
                << u["reason"].get<std::string>() << "\n";
    // Every IPC request (ping, status, pool...), not predictions alone: mms stats counts those.
    std::cout << "requests:  " << j.value("requests_served", 0) << " answered (of every kind; predictions: mms stats), "
              << j.value("in_flight", 0) << " in flight\n";
    std::vector<std::vector<std::string>> rows{{"DEVICE", "KIND", "MEMORY", "AVAILABLE", "BUDGET", "USED"}};
    for (const auto& d : j.value("devices", nlohmann::json::array())) {
      rows.push_back({d.value("name", "?"), d.value("kind", "?"), FormatBytes(d.value("memory_total", 0ull)),
                      FormatBytes(d.value("memory_available", 0ull)),
                      d.contains("budget") ? FormatBytes(d.value("budget", 0ull)) : "-",
                      d.contains("used") ? FormatBytes(d.value("used", 0ull)) : "-"});
    }
    std::cout << "\n" << FormatTable(rows);
    const auto& pool = j.value("pool", nlohmann::json::object());
    if (!pool.empty()) {
      char rate[32];
      std::snprintf(rate, sizeof rate, "%.1f%%", pool.value("hit_rate", 0.0) * 100);  // as mms pool prints it
      // Tiers are inclusive: a model on a device keeps its host copy.
      std::cout << "\npool:      " << pool.value("models_on_device", 0) << " on device, "
                << pool.value("models_on_host", 0) << " with a host copy, " << pool.value("models_registered", 0)
                << " registered; " << pool.value("loads", 0) << " loads, " << pool.value("evictions", 0)
                << " evictions, hit rate " << rate << "\n";
    }
  });
  return 0;
}

// mms reload: SIGHUP through the socket, answered with what the reload did
// once mmsd has done it (STATUS's last_reload moves on).
int CmdReload(Cli& cli) {
  auto c = cli.Connect();
  if (!c.ok()) return cli.Fail(c.status());
  auto r = (*c)->CallJson(proto::kReload, nlohmann::json::object());
  if (!r.ok()) return cli.Fail(r.status());
  if (!r->contains("request"))  // an mmsd before mms reload: it reloads, but cannot say how it went
    return cli.Fail(Status(Code::kFailedPrecondition,
                           "this mmsd is older than mms reload: it was sent the reload (as SIGHUP) but does not "
                           "report its outcome; see its log (reloaded, reload_failed, reload_needs_restart)"));
  const int64_t request = (*r)["request"].get<int64_t>();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(cli.g.timeout_s);
  nlohmann::json done;
  while (true) {
    auto s = (*c)->CallJson(proto::kStatus, nlohmann::json::object());
    if (!s.ok()) return cli.Fail(s.status());
    // The first reload that read the file after this request (not one under way before it).
    if (s->contains("last_reload") && (*s)["last_reload"].value("covers", int64_t{0}) >= request) {
      done = (*s)["last_reload"];
      done["config"] = (*s).value("config", "");
      break;
    }
    if (std::chrono::steady_clock::now() > deadline)
      return cli.Fail(Status(Code::kDeadlineExceeded, "mmsd took the reload request but did not reload within --timeout "
                                                      "(its main thread is busy?); see its log"));
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const std::string error = done.value("error", "");
  const bool whole = error.empty();
  if (!whole && done["sections"].empty()) {  // the file was not applied at all
    Status st(CodeFromName(done.value("code", "")), error);
    return cli.Fail(st.code() == Code::kInternal ? Status(Code::kInvalidArgument, error) : st);
  }
  cli.Emit(done, [&] {
    const std::string cfg = done.value("config", "");
    if (cfg.empty()) {
      std::cout << "reloaded nothing: mmsd runs without a config file (its built-in defaults)\n";
      return;
    }
    std::string sections;
    for (const auto& x : done["sections"]) sections += (sections.empty() ? "" : ", ") + x.get<std::string>();
    std::cout << "reloaded " << cfg << ": " << sections << "\n";
    if (!done["restart"].empty()) {
      std::string keys;
      for (const auto& k : done["restart"]) keys += (keys.empty() ? "" : ", ") + k.get<std::string>();
      std::cout << "changed, and applied only at a restart: " << keys << "\n";
    }
  });
  if (!whole && !cli.g.json) std::cerr << "mms: " << error << "\n";  // (with -q too: it is why the exit is 1)
  return whole ? 0 : 1;
}

int CmdPing(Cli& cli, int count) {
  auto c = cli.Connect();
  if (!c.ok()) return cli.Fail(c.status());
  std::vector<double> rtts;
  int pid = 0;
  for (int i = 0; i < count; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    auto r = (*c)->CallJson(proto::kPing, nlohmann::json::object());
    auto t1 = std::chrono::steady_clock::now();
    if (!r.ok()) return cli.Fail(r.status());
    pid = r->value("pid", 0);
    rtts.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
  }
  double mn = *std::min_element(rtts.begin(), rtts.end());
  double mx = *std::max_element(rtts.begin(), rtts.end());
  double avg = 0;
  for (double v : rtts) avg += v / rtts.size();
  cli.Emit({{"pid", pid}, {"count", count}, {"rtt_ms", rtts}, {"min_ms", mn}, {"avg_ms", avg}, {"max_ms", mx}},
           [&] {
             char buf[160];
             if (count == 1) {
               std::snprintf(buf, sizeof buf, "pong from mmsd (pid %d) in %.3f ms\n", pid, rtts[0]);
             } else {
               std::snprintf(buf, sizeof buf, "%d pongs from mmsd (pid %d): min %.3f / avg %.3f / max %.3f ms\n",
                             count, pid, mn, avg, mx);
             }
             std::cout << buf;
           });
  return 0;
}

}  // namespace

void AddDaemonCommands(CLI::App& app, Cli& cli) {
  auto* serve = app.add_subcommand("serve", "Run the mmsd daemon (in the foreground, or --detach)");
  // (add_flag(name, "text") is ambiguous in C++20 with CLI11 2.3: ->description.)
  auto* detach = serve->add_flag("--detach,-d")->description("start in the background and return once it answers");
  auto metrics = std::make_shared<std::string>();
  serve->add_option("--metrics-address", *metrics, "HOST:PORT for /metrics and /health (overrides [metrics] address)");
  serve->callback([&cli, detach, metrics] { cli.exit_code = CmdServe(cli, detach->count() > 0, *metrics); });

  auto* status = app.add_subcommand("status", "Show the daemon: version, uptime, pid, socket, devices, pool");
  status->callback([&cli] { cli.exit_code = CmdStatus(cli); });

  app.add_subcommand("reload", "Re-read mmsd's config file (as SIGHUP), and say what was applied and what needs a restart")
      ->callback([&cli] { cli.exit_code = CmdReload(cli); });

  auto* ping = app.add_subcommand("ping", "Measure the round trip to the daemon");
  auto* count = ping->add_option("--count,-c", "number of pings (default 1)")->default_val(1)->check(WholeNumber())->check(CLI::Range(1, 100000));
  ping->callback([&cli, count] { cli.exit_code = CmdPing(cli, count->as<int>()); });
}

}  // namespace mms::cli
