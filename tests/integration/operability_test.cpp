// Completions, HTTP metrics and health, JSON logs, the systemd unit.
#include <doctest/doctest.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "support/process.h"

using namespace mms::testing;
using nlohmann::json;

namespace {
std::string Data(const std::string& n) { return TestDataDir() + "/" + n; }
std::string Src(const std::string& n) { return std::string(MMS_SOURCE_DIR) + "/" + n; }

std::string ReadText(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Candidates bash completion offers for a partial command line.
std::string Complete(const std::string& line, const std::string& data_dir) {
  std::string script = "source " + Src("completions/mms.bash") + "\nCOMP_WORDS=(" + line + ")\n";
  script += line.back() == ' ' ? "COMP_WORDS+=('')\n" : "";
  script += "COMP_CWORD=$((${#COMP_WORDS[@]} - 1))\n_mms\necho \"${COMPREPLY[*]}\"\n";
  auto r = Run({"/bin/bash", "-c", script}, 30,
               {{"PATH", BinDir() + ":/usr/bin:/bin"}, {"XDG_DATA_HOME", data_dir}, {"XDG_RUNTIME_DIR", ""}});
  return r.out;
}

bool Has(const std::string& words, const std::string& w) {
  std::istringstream in(words);
  std::string x;
  while (in >> x)
    if (x == w) return true;
  return false;
}
}  // namespace

TEST_CASE("the checked-in completion scripts are what mms generates") {
  for (auto [shell, file] : std::vector<std::pair<std::string, std::string>>{
           {"bash", "completions/mms.bash"}, {"zsh", "completions/_mms"}, {"fish", "completions/mms.fish"}}) {
    INFO(shell << ": regenerate with `mms completion " << shell << " > " << file << "`");
    CHECK(Run({MmsBin(), "completion", shell}).out == ReadText(Src(file)));
  }
}

TEST_CASE("bash completion offers commands, options and names from the registry") {
  TempDir t;
  std::string data = t / "mms";
  REQUIRE(Run({MmsBin(), "--data-dir", data, "model", "register", "rec-eu", "--version", "1", "--path", Data("tiny.pt"), "-q"})
              .exit_code == 0);
  REQUIRE(Run({MmsBin(), "--data-dir", data, "model", "register", "rec-eu", "--version", "2", "--path", Data("tiny_v2.pt"),
               "-q"})
              .exit_code == 0);
  REQUIRE(Run({MmsBin(), "--data-dir", data, "experiment", "create", "exp-7", "--model", "rec-eu", "--control", "1",
               "--treatment", "2", "--percent", "10"})
              .exit_code == 0);
  CHECK(Complete("mms mo", t.path()) == "model\n");
  std::string model = Complete("mms model ", t.path());
  for (const char* c : {"register", "list", "show", "history", "stage", "alias", "rm", "verify", "import"})
    CHECK_MESSAGE(Has(model, c), c);
  CHECK(Has(Complete("mms model register x --ve", t.path()), "--version"));
  std::string refs = Complete("mms model show ", t.path());
  CHECK(Has(refs, "rec-eu"));
  CHECK(Has(refs, "rec-eu:2"));
  CHECK(Has(Complete("mms experiment show ", t.path()), "exp-7"));
  CHECK(Has(Complete("mms canary st", t.path()), "start"));
  CHECK(Has(Complete("mms canary st", t.path()), "status"));
  CHECK(Has(Complete("mms --json model li", t.path()), "list"));
  // Names come from the registry of a --data-dir typed on the line (it read
  // the default one), and a mistyped one is not created.
  std::string other = t / "other";
  REQUIRE(Run({MmsBin(), "--data-dir", other, "model", "register", "fraud", "--version", "1", "--path",
               Data("tiny.pt"), "-q"})
              .exit_code == 0);
  std::string there = Complete("mms --data-dir " + other + " predict ", t.path());
  CHECK(Has(there, "fraud"));
  CHECK_FALSE(Has(there, "rec-eu"));
  // --data-dir=DIR as bash splits it (at '=', COMP_WORDBREAKS), and a quoted value.
  CHECK(Has(Complete("mms --data-dir = " + other + " model show fr", t.path()), "fraud"));
  CHECK(Has(Complete("mms --data-dir '\"" + other + "\"' model show fr", t.path()), "fraud"));
  // fish, where installed: the script loads and completes (its conditions
  // were evaluated once, at load, and every completion was dropped).
  if (std::filesystem::exists("/usr/bin/fish")) {
    auto f = Run({"/usr/bin/fish", "-c",
                  "source " + Src("completions/mms.fish") + "; complete -C 'mms mod'; complete -C 'mms --data-dir " +
                      other + " model show '"},
                 30, {{"PATH", BinDir() + ":/usr/bin:/bin"}, {"XDG_DATA_HOME", t.path()}});
    CHECK_MESSAGE(f.err.empty(), f.err);
    CHECK(Has(f.out, "model"));
    CHECK(Has(f.out, "fraud"));
    auto q = Run({"/usr/bin/fish", "-c",
                  "source " + Src("completions/mms.fish") + "; complete -C \"mms --data-dir='" + other + "' model show \""},
                 30, {{"PATH", BinDir() + ":/usr/bin:/bin"}, {"XDG_DATA_HOME", t.path()}});
    CHECK(Has(q.out, "fraud"));
  }
  // zsh, where installed: the script's own loop over the line, with zsh's
  // completion builtins stood in for (compadd prints what it is offered).
  // The words keep their quotes, as zsh's $words does; a quoted or ~ value
  // of --data-dir=DIR was passed on with its quotes, and offered nothing.
  if (std::filesystem::exists("/usr/bin/zsh")) {
    std::ofstream(t / "z.zsh") << "compdef() { :; }\ncompadd() { print -l -- \"${@[2,-1]}\" }\nsource "
                               << Src("completions/_mms")
                               << "\nwords=(${(z)1} ''); CURRENT=${#words}; PREFIX=''; _mms\n";
    std::filesystem::create_directories(t / "home");
    std::filesystem::create_symlink(other, t / "home/o");
    for (const std::string& line : {"mms --data-dir='" + other + "' model show", "mms --data-dir=\"" + other + "\" model show",
                                    "mms --data-dir " + other + " model show", std::string("mms --data-dir=~/o model show")}) {
      auto z = Run({"/usr/bin/zsh", "-f", t / "z.zsh", line}, 30,
                   {{"PATH", BinDir() + ":/usr/bin:/bin"}, {"HOME", t / "home"}, {"XDG_DATA_HOME", t.path()}});
      INFO(line << ": " << z.out << z.err);
      CHECK(Has(z.out, "fraud"));
    }
  }
  CHECK(Complete("mms --data-dir " + (t / "typo") + " model show ", t.path()).find("rec-eu") == std::string::npos);
  CHECK_FALSE(std::filesystem::exists(t / "typo"));
}

TEST_CASE("/metrics in the Prometheus format and per-model /health over HTTP") {
  int port = FreePort();
  Daemon d("[metrics]\naddress = \"127.0.0.1:" + std::to_string(port) + "\"\n");
  REQUIRE(d.ok());
  REQUIRE(d.Mms({"model", "register", "tiny", "--version", "1", "--path", Data("tiny.pt"), "-q"}).exit_code == 0);
  std::filesystem::copy_file(Data("rec.pt"), d.dir() + "/bad.pt");
  REQUIRE(d.Mms({"model", "register", "bad", "--version", "1", "--path", d.dir() + "/bad.pt", "-q"}).exit_code == 0);
  for (const auto& e : std::filesystem::directory_iterator(d.data_dir() + "/artifacts/bad"))
    std::filesystem::resize_file(e.path().string() + "/weights.safetensors", 100);
  REQUIRE(d.Mms({"predict", "tiny", "--input", Data("tiny_input.json"), "-q"}).exit_code == 0);
  CHECK(d.Mms({"predict", "tiny", "--input", Data("tiny_bad_shape.json"), "-q"}).exit_code == 1);
  CHECK(d.Mms({"predict", "bad", "--input", Data("rec_input.json"), "-q"}).exit_code == 1);
  std::string base = "http://127.0.0.1:" + std::to_string(port);
  auto m = Run({"/usr/bin/curl", "-s", "-f", base + "/metrics"});
  REQUIRE(m.exit_code == 0);
  for (const char* want : {"# TYPE mms_requests_total counter", "mms_requests_total{model=\"tiny\",version=\"1\"} 2",
                           "mms_request_errors_total{model=\"tiny\",version=\"1\",code=\"MODEL_ERROR\"} 1",
                           "mms_request_latency_seconds_bucket{model=\"tiny\",version=\"1\",le=\"+Inf\"} 2",
                           "mms_request_latency_seconds_count{model=\"tiny\",version=\"1\"} 2",
                           "mms_model_loads_total{model=\"tiny\",version=\"1\"} 1",
                           "mms_model_bytes{model=\"tiny\",version=\"1\",tier=\"device\"}", "mms_pool_bytes_budget",
                           "mms_model_healthy{model=\"bad\",version=\"1\"} 0", "mms_up"})
    CHECK_MESSAGE(m.out.find(want) != std::string::npos, want);
  // Each family's samples are grouped under its TYPE line.
  size_t type = m.out.find("# TYPE mms_request_errors_total");
  size_t next_type = m.out.find("# TYPE", type + 1);
  CHECK(m.out.find("mms_request_errors_total{") > type);
  CHECK(m.out.find("mms_request_errors_total{") < next_type);
  auto code = [&](const std::string& path) {
    return Run({"/usr/bin/curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", base + path}).out;
  };
  CHECK(code("/health") == "200");
  CHECK(code("/health/tiny") == "200");
  CHECK(code("/health/bad") == "503");
  CHECK(code("/health/nosuch") == "404");
  CHECK(code("/health/tiny:1") == "200");
  CHECK(code("/health/tiny%3A1") == "200");  // as Python's quote() writes it
  CHECK(code("/health/tiny%zz") == "400");
  for (const char* other : {"/healthz", "/healthcheck", "/health-tiny"})  // not /health/MODEL with a letter cut off
    CHECK_MESSAGE(code(other) == "404", other);
  for (const char* bad : {"/health/%FF", "/health/tiny:%C0%AF", "/health/tiny@%FF"}) {  // not UTF-8: was a 500
    std::string c = code(bad);
    CHECK_MESSAGE((c == "400" || c == "404"), bad << " " << c);
  }
  // A limit, an experiment, a shadow and a canary, so their families have samples.
  auto ok = [&](std::vector<std::string> args) {
    auto r = d.Mms(args);
    REQUIRE_MESSAGE(r.exit_code == 0, args[0] << " " << args[1] << ": " << r.err);
  };
  ok({"limit", "set", "--tenant", "acme", "--qps", "1000", "--burst", "1000"});
  for (const char* name : {"tiny", "sh", "can"})
    for (const char* v : {"1", "2"})
      if (std::string(name) != "tiny" || std::string(v) == "2")
        ok({"model", "register", name, "--version", v, "--path", Data(v[0] == '1' ? "tiny.pt" : "tiny_v2.pt"), "-q"});
  for (const char* prod : {"tiny:1", "sh:1", "can:1"}) ok({"model", "stage", prod, "production"});
  ok({"experiment", "create", "exp-t", "--model", "tiny", "--control", "1", "--treatment", "2", "--percent", "50"});
  ok({"predict", "tiny", "--input", Data("tiny_input.json"), "--user", "u1", "--tenant", "acme", "-q"});
  ok({"shadow", "start", "sh", "--candidate", "2"});
  ok({"canary", "start", "can", "--candidate", "2", "--stage-duration", "1h"});
  ProcResult m2;  // (canaries as the controller last read them: within a registry poll)
  CHECK(WaitFor([&] {
    m2 = Run({"/usr/bin/curl", "-s", "-f", base + "/metrics"});
    return m2.out.find("mms_canary_stage{") != std::string::npos;
  }, 20));
  REQUIRE(m2.exit_code == 0);
  for (const char* want : {"mms_queue_depth{model=\"tiny\",version=\"1\"} 0", "mms_batches_total{model=\"tiny\"",
                           "mms_rate_admitted_total{tenant=\"acme\"} 1", "# TYPE mms_rate_limited_total counter",
                           "mms_experiment_treatment_percent{experiment=\"exp-t\",model=\"tiny\"} 50",
                           "mms_experiment_requests_total{experiment=\"exp-t\",model=\"tiny\",variant=",
                           "mms_shadow_requests_total{model=\"sh\",candidate=\"sh:2\",result=\"mirrored\"}",
                           "mms_canary_stage{model=\"can\",candidate=\"can:2\",state=\"running\"} 1",
                           "mms_canary_traffic_percent{model=\"can\""})
    CHECK_MESSAGE(m2.out.find(want) != std::string::npos, want);
  {
    // The experiment's counters count since mmsd started, as every counter:
    // its totals (restored at start, mms stats) went down after a SIGKILL,
    // which Prometheus reads as a reset. Here a SIGKILL after the flush.
    auto exp_requests = [&](const std::string& text) {
      uint64_t n = 0;
      std::istringstream in(text);
      for (std::string line; std::getline(in, line);)
        if (line.rfind("mms_experiment_requests_total{experiment=\"exp-t\"", 0) == 0)
          n += std::stoull(line.substr(line.rfind(' ') + 1));
      return n;
    };
    CHECK(exp_requests(m2.out) == 1);
    std::this_thread::sleep_for(std::chrono::milliseconds(2500));  // a flush of the figures ([experiments] flush_interval 2s)
    d.child().Signal(SIGKILL);
    d.child().Wait(20);
    REQUIRE(d.Restart());
    const std::string after = Run({"/usr/bin/curl", "-s", "-f", base + "/metrics"}).out;
    CHECK_MESSAGE(exp_requests(after) == 0, after);
    ok({"predict", "tiny", "--input", Data("tiny_input.json"), "--user", "u1", "-q"});
    CHECK(exp_requests(Run({"/usr/bin/curl", "-s", "-f", base + "/metrics"}).out) == 1);
  }
  // Every family served is documented in mmsd(8)'s METRICS.
  const std::string man = ReadText(Src("man/mmsd.8"));
  std::istringstream types(m2.out);
  for (std::string line; std::getline(types, line);)
    if (line.rfind("# TYPE ", 0) == 0) {
      std::string family = line.substr(7, line.find(' ', 7) - 7);
      CHECK_MESSAGE(man.find("\\fB" + family + "\\fR") != std::string::npos, family << " is not in man/mmsd.8");
    }
  // mmsd --metrics-address does the same without a config file.
  int port2 = FreePort();
  Daemon flag("", {"--metrics-address", "127.0.0.1:" + std::to_string(port2)});
  REQUIRE(flag.ok());
  auto up = Run({"/usr/bin/curl", "-s", "-f", "http://127.0.0.1:" + std::to_string(port2) + "/metrics"});
  CHECK(up.exit_code == 0);
  CHECK(up.out.find("mms_up{") != std::string::npos);
}

TEST_CASE("idle HTTP connections are capped and timed out, and cost the IPC clients nothing") {
  int port = FreePort();
  Daemon d("[metrics]\naddress = \"127.0.0.1:" + std::to_string(port) + "\"\n");
  REQUIRE(d.ok());
  REQUIRE(d.Mms({"model", "register", "tiny", "--version", "1", "--path", Data("tiny.pt"), "-q"}).exit_code == 0);
  std::string fd_dir = "/proc/" + std::to_string(d.child().pid()) + "/fd";
  auto fds = [&] {
    size_t n = 0;
    for (auto it = std::filesystem::directory_iterator(fd_dir); it != std::filesystem::directory_iterator(); ++it) ++n;
    return n;
  };
  size_t before = fds();
  // 300 connections that never finish a request (half of them send half a header).
  std::vector<int> conns;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 300; ++i) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) break;
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      ::close(fd);
      continue;
    }
    if (i % 2 == 0) (void)!::send(fd, "GET /metrics HTTP/1.1\r\nHost: x\r\n", 33, MSG_NOSIGNAL);
    conns.push_back(fd);
  }
  CHECK(conns.size() == 300);  // the kernel takes them all; the server keeps few
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  size_t during = fds();
  CHECK_MESSAGE(during <= before + 64, before << " → " << during);  // at most kMaxConnections held
  CHECK(d.Mms({"predict", "tiny", "--input", Data("tiny_input.json"), "-q"}).exit_code == 0);
  // Over the cap from one address: closed at once (or left in the kernel's
  // backlog, costing mmsd no descriptor); those kept: closed after 10 s idle.
  auto closed = [](int fd) {
    char c;
    return ::recv(fd, &c, 1, MSG_DONTWAIT) == 0;
  };
  std::vector<int> kept;
  for (int fd : conns)
    if (!closed(fd)) kept.push_back(fd);
  CHECK(!kept.empty());
  CHECK(kept.size() < conns.size());
  CHECK(WaitFor([&] { return std::all_of(kept.begin(), kept.end(), closed); }, 25));
  double idle_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CHECK_MESSAGE(idle_s > 8, idle_s);
  for (int fd : conns) ::close(fd);
  CHECK(WaitFor([&] {
    return Run({"/usr/bin/curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                "http://127.0.0.1:" + std::to_string(port) + "/health"}).out == "200";
  }, 20));
}

TEST_CASE("JSON logs: every load and eviction with model, version, bytes and time") {
  Daemon d("[log]\nformat = \"json\"\n");
  REQUIRE(d.ok());
  REQUIRE(d.Mms({"model", "register", "tiny", "--version", "1", "--path", Data("tiny.pt"), "-q"}).exit_code == 0);
  REQUIRE(d.Mms({"load", "tiny"}).exit_code == 0);
  REQUIRE(d.Mms({"evict", "tiny"}).exit_code == 0);
  REQUIRE(d.Mms({"model", "stage", "tiny:1", "production", "-q"}).exit_code == 0);
  REQUIRE(WaitFor([&] { return d.log().find("stage_changed") != std::string::npos; }, 10));
  std::istringstream in(d.log());
  std::string line;
  bool load = false, evict = false, stage = false;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    json j = json::parse(line);  // every line is one JSON object
    CHECK(j.contains("ts"));
    CHECK(j.contains("level"));
    if (j["event"] == "load" && j["to"] == "cpu") {
      load = true;
      CHECK(j["model"] == "tiny:1");
      CHECK(j["bytes"].get<int>() > 0);
      CHECK(j.contains("total_ms"));
    }
    if (j["event"] == "evict") {
      evict = true;
      CHECK(j["bytes"].get<int>() > 0);
    }
    if (j["event"] == "stage_changed") {
      stage = true;
      CHECK(j["to"] == "production");
    }
  }
  CHECK(load);
  CHECK(evict);
  CHECK(stage);
}

TEST_CASE("the systemd unit runs mmsd with a checked config") {
  std::string unit = ReadText(Src("contrib/mmsd.service"));
  CHECK(unit.find("ExecStart=/usr/local/bin/mmsd --config /etc/mms/mms.toml") != std::string::npos);
  // The check runs with the start's own flags (without --data-dir it checked
  // the mms user's home, which the service cannot write, and never started).
  auto line = [&](const std::string& key) {
    size_t at = unit.find("\n" + key + "=");
    return at == std::string::npos ? std::string() : unit.substr(at + key.size() + 2, unit.find('\n', at + 1) - at - key.size() - 2);
  };
  CHECK(line("ExecStartPre") == line("ExecStart") + " --check-config");
  CHECK(unit.find("ExecReload=/bin/kill -HUP $MAINPID") != std::string::npos);
  // mms.toml(5)'s example logs to /var/log/mms: the unit makes it writable (ProtectSystem=strict).
  CHECK(ReadText(Src("man/mms.toml.5")).find("/var/log/mms/mmsd.log") != std::string::npos);
  CHECK(unit.find("LogsDirectory=mms") != std::string::npos);
  // The check does not create the log file: run as root it left one the service's user could not open.
  TempDir t;
  std::ofstream(t / "mms.toml") << "[log]\nfile = \"" << t / "logs/mmsd.log" << "\"\n";
  auto missing_dir = Run({MmsdBin(), "--config", t / "mms.toml", "--check-config"}, 30);
  CHECK(missing_dir.exit_code == 2);
  CHECK_MESSAGE(missing_dir.err.find("cannot write the log file " + (t / "logs/mmsd.log")) != std::string::npos,
                missing_dir.err);
  std::filesystem::create_directory(t / "logs");
  auto ok = Run({MmsdBin(), "--config", t / "mms.toml", "--check-config"}, 30);
  CHECK_MESSAGE(ok.exit_code == 0, ok.err);
  CHECK_FALSE(std::filesystem::exists(t / "logs/mmsd.log"));
}

TEST_CASE("--check-config refuses what this host cannot start with: devices, metrics address, data dir") {
  // Each passed the check (exit 0), and the start that followed failed.
  TempDir t;
  const std::string port = std::to_string(FreePort());
  struct Case {
    std::string config, says;
  };
  for (const Case& c : std::vector<Case>{
           {"[pool]\ndevices = [\"cuda:999\"]\n", "[pool] devices: device cuda:999"},
           {"[metrics]\naddress = \"nohost.invalid:" + port + "\"\n", "cannot resolve the metrics address"},
           {"[metrics]\naddress = \"192.0.2.1:" + port + "\"\n", "not an address of this host"},
           {"[daemon]\ndata_dir = \"/proc/nope/mms\"\n",
            "cannot use the data dir /proc/nope/mms (--data-dir, [daemon] data_dir): /proc: "},  // (root: cannot create)
           {"[daemon]\ndata_dir = \"" + (t / "file/mms") + "\"\n", "/file: is not a directory"}}) {
    std::ofstream(t / "file") << "x";
    std::ofstream(t / "mms.toml") << c.config;
    auto r = Run({MmsdBin(), "--config", t / "mms.toml", "--check-config"}, 30);
    INFO(c.config << r.err);
    CHECK(r.exit_code == 2);
    CHECK(r.err.find(c.says) != std::string::npos);
  }
  // What this host can do passes, and the check leaves nothing behind.
  std::ofstream(t / "mms.toml") << "[metrics]\naddress = \"127.0.0.1:" << port << "\"\n[daemon]\ndata_dir = \""
                                << t / "new/mms" << "\"\n[pool]\ndevices = [\"cpu\", \"cpu:0\"]\n";
  auto ok = Run({MmsdBin(), "--config", t / "mms.toml", "--check-config"}, 30);
  CHECK_MESSAGE(ok.exit_code == 0, ok.err);
  CHECK_FALSE(std::filesystem::exists(t / "new"));
}

TEST_CASE("a draining daemon reports 503 on /health, a second signal stops it at once") {
  int port = FreePort();
  Daemon d("[daemon]\nshutdown_grace = \"60s\"\n[metrics]\naddress = \"127.0.0.1:" + std::to_string(port) + "\"\n");
  REQUIRE(d.ok());
  REQUIRE(d.Mms({"model", "register", "held", "--version", "1", "--path", Data("tiny.pt"), "-q"}).exit_code == 0);
  BlockedFile weights(PackedWeights(d.data_dir(), "held", "1"));  // a predict that stays in flight
  REQUIRE(weights.ok());
  Child predict;
  REQUIRE(predict.Start({MmsBin(), "--socket", d.socket(), "predict", "held", "--input", Data("tiny_input.json")},
                        d.dir() + "/predict.log"));
  REQUIRE(WaitFor(  // the predict is in flight (status does not count itself)
      [&] {
        auto st = d.Mms({"--json", "status"}, 20);
        return st.exit_code == 0 && json::parse(st.out)["in_flight"].get<int>() >= 1;
      },
      20));
  auto code = [&](const std::string& path) {
    return Run({"/usr/bin/curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:" + std::to_string(port) + path}).out;
  };
  REQUIRE(WaitFor([&] { return code("/health") == "200"; }, 10));
  d.child().Signal(SIGTERM);  // drains: the held predict keeps it busy for up to 60 s
  CHECK(WaitFor([&] { return code("/health") == "503"; }, 20));
  // The CLI says it is stopping, not "not running; start it" (which is refused
  // until it has exited), and a start is refused without writing into its log.
  auto ping = d.Mms({"ping"});
  CHECK(ping.exit_code == 3);
  const std::string pid = std::to_string(d.child().pid());
  CHECK_MESSAGE(ping.err.find("mmsd (pid " + pid + ") holds " + d.socket() + " but takes no new connections: it is "
                              "stopping") != std::string::npos,
                ping.err);
  const size_t logged = d.log().size();
  auto start = d.Mms({"serve", "--detach"});
  CHECK(start.exit_code == 6);
  CHECK_MESSAGE(start.err.find("already running (pid " + pid + ")") != std::string::npos, start.err);
  CHECK(d.log().size() == logged);
  d.child().Signal(SIGINT);  // the operator insists
  CHECK(d.child().Wait(20) == 1);
  CHECK(d.log().find("stopping_now") != std::string::npos);
}

TEST_CASE("/metrics shows what degrades silently: a failed reload, keys waiting for a restart, unplaced pins") {
  int port = FreePort();
  // The registry is polled once a minute, so that "bad" (pinned) is damaged
  // below before this daemon sees it (it would load it at once).
  const std::string metrics = "[metrics]\naddress = \"127.0.0.1:" + std::to_string(port) +
                              "\"\n[registry]\npoll_interval = \"60s\"\n";
  Daemon d(metrics + "[pool]\npinned = [\"nosuch\", \"bad\"]\nload_retry_backoff = \"1h\"\n");
  REQUIRE(d.ok());
  // The value of one sample ("name{labels}" as written), -1 when absent.
  auto sample = [&](const std::string& series) {
    auto m = Run({"/usr/bin/curl", "-s", "-f", "http://127.0.0.1:" + std::to_string(port) + "/metrics"});
    std::istringstream in(m.out);
    std::string line;
    while (std::getline(in, line))
      if (line.rfind(series + " ", 0) == 0) return std::stod(line.substr(series.size() + 1));
    return -1.0;
  };
  CHECK(sample("mms_config_last_reload_successful") == 1);
  const double started = sample("mms_config_last_reload_success_timestamp_seconds");
  CHECK(started > 1.7e9);  // Unix seconds, set at start
  CHECK(sample("mms_config_restart_pending") == 0);
  CHECK(sample("mms_registry_flush_failing") == 0);
  CHECK(sample("mms_registry_read_failing") == 0);
  CHECK(sample("mms_registry_replaced") == 0);
  CHECK(sample("mms_pins_unplaced{reason=\"no_version\"}") == 2);  // neither is registered yet
  CHECK(sample("mms_pins_unplaced{reason=\"not_loaded\"}") == 0);
  // "bad" is registered with damaged weights: pinned, its load fails (retried in an hour).
  std::filesystem::copy_file(Data("rec.pt"), d.dir() + "/bad.pt");
  // Registered without telling the daemon (no socket there): it sees "bad" at the load below.
  REQUIRE(Run({MmsBin(), "--data-dir", d.data_dir(), "--socket", d.dir() + "/none.sock", "-q", "model", "register",
               "bad", "--version", "1", "--path", d.dir() + "/bad.pt"})
              .exit_code == 0);
  std::filesystem::resize_file(PackedWeights(d.data_dir(), "bad", "1"), 100);
  REQUIRE(d.Mms({"load", "bad"}).exit_code != 0);
  CHECK(WaitFor([&] { return sample("mms_pins_unplaced{reason=\"not_loaded\"}") == 1; }, 10));
  CHECK(sample("mms_pins_unplaced{reason=\"no_version\"}") == 1);
  // An invalid file at SIGHUP: nothing applied, said in the log and here.
  const std::string config = d.dir() + "/mms.toml";
  { std::ofstream(config) << metrics << "[pool]\npinned = 7\n"; }
  d.child().Signal(SIGHUP);
  CHECK(WaitFor([&] { return sample("mms_config_last_reload_successful") == 0; }, 10));
  CHECK(d.log().find("reload_failed") != std::string::npos);
  CHECK(sample("mms_config_last_reload_success_timestamp_seconds") == started);
  CHECK(sample("mms_pins_unplaced{reason=\"no_version\"}") == 1);  // the old pins hold
  // And mms status, until a reload applies (a CLI that reads mmsd's config would refuse the file too).
  std::string status = Run({MmsBin(), "--socket", d.socket(), "status"}).out;
  CHECK_MESSAGE(status.find("WARNING:   the reload at ") != std::string::npos, status);
  CHECK_MESSAGE(status.find("changed nothing: ") != std::string::npos, status);
  CHECK_MESSAGE(status.find("the configuration before it runs") != std::string::npos, status);
  // A valid one: applied (the pins change at once), and a key that takes a restart is counted.
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  { std::ofstream(config) << metrics << "[pool]\npinned = []\nload_retry_backoff = \"1h\"\n[daemon]\nworkers = 3\n"; }
  d.child().Signal(SIGHUP);
  CHECK(WaitFor([&] { return sample("mms_config_last_reload_successful") == 1; }, 10));
  CHECK(sample("mms_config_last_reload_success_timestamp_seconds") > started);
  CHECK(sample("mms_config_restart_pending") == 1);
  status = d.Mms({"status"}).out;
  CHECK_MESSAGE(status.find("WARNING") == std::string::npos, status);
  CHECK_MESSAGE(status.find("(1 changed key takes a restart; see the log: reload_needs_restart)") != std::string::npos,
                status);
  CHECK(WaitFor([&] { return sample("mms_pins_unplaced{reason=\"no_version\"}") == 0; }, 10));
  CHECK(WaitFor([&] { return sample("mms_pins_unplaced{reason=\"not_loaded\"}") == 0; }, 10));
}

TEST_CASE("mms reload re-reads mmsd's config and says what it applied, what needs a restart, and a bad file's error") {
  Daemon d("[limits]\n");
  REQUIRE(d.ok());
  const std::string config = d.dir() + "/mms.toml";
  // A live key and a key that takes a restart.
  { std::ofstream(config) << "[limits]\nmodel_qps = 50\n[daemon]\nworkers = 3\n"; }
  auto r = d.Mms({"--json", "reload"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.out << r.err);
  json j = json::parse(r.out);
  CHECK(j["count"] == 1);
  CHECK_MESSAGE(j["sections"].dump().find("\"limits\"") != std::string::npos, j.dump());
  CHECK(j["restart"] == json::array({"[daemon] workers"}));
  CHECK(j["error"] == "");
  auto limits = d.Mms({"limit", "list"});  // applied: the default of mmsd's [limits] shows
  CHECK_MESSAGE(limits.out.find("50") != std::string::npos, limits.out);
  auto text = d.Mms({"reload"});
  CHECK(text.exit_code == 0);
  CHECK_MESSAGE(text.out.find("changed, and applied only at a restart: [daemon] workers") != std::string::npos, text.out);
  // A file that does not parse: exit 2 with the file's error, nothing applied, mmsd serving on.
  // (mms itself is not given the file here: it would refuse it first.)
  { std::ofstream(config) << "[limits\n"; }
  auto bad = Run({MmsBin(), "--socket", d.socket(), "reload"});
  CHECK(bad.exit_code == 2);
  CHECK_MESSAGE(bad.err.find("the reload changed nothing") != std::string::npos, bad.err);
  CHECK_MESSAGE(bad.err.find("expected ']'") != std::string::npos, bad.err);
  CHECK(Run({MmsBin(), "--socket", d.socket(), "ping"}).exit_code == 0);
  CHECK(json::parse(Run({MmsBin(), "--socket", d.socket(), "--json", "status"}).out)["last_reload"]["count"] == 3);
}
