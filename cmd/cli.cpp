#include "cli.h"

#include <chrono>
#include <thread>

#include <algorithm>
#include <charconv>
#include <cmath>

#include <sys/stat.h>
#include <unistd.h>

#include <ctime>
#include <fstream>
#include <iostream>
#include <sstream>

#include "core/paths.h"
#include "protocol/messages.h"

namespace mms::cli {

Result<const Config*> Cli::config() {
  if (config_) return &*config_;
  std::string path = g.config.empty() ? DefaultConfigPath(ProcessEnv()) : g.config;
  if (path.empty()) {
    config_ = Config{};
  } else {
    auto c = LoadConfigFile(path);
    if (!c.ok()) {
      if (c.status().code() == Code::kNotFound)
        return InvalidArgument("config file " + path + " does not exist");
      return c.status().code() == Code::kInvalidArgument ? c.status()
                                                          : InvalidArgument(c.status().message());
    }
    config_ = std::move(c).value();
  }
  return &*config_;
}

Result<std::string> Cli::data_dir() {
  // Absolute: registration stores paths under it in the registry, which the
  // daemon and later commands read from other working directories.
  if (!g.data_dir.empty()) return AbsolutePath(g.data_dir);
  auto c = config();
  if (!c.ok()) return c.status();
  if (!(*c)->daemon.data_dir.empty()) return AbsolutePath((*c)->daemon.data_dir);
  auto dd = DefaultDataDir(ProcessEnv());
  if (!dd.ok()) return dd.status();
  return AbsolutePath(*dd);
}

Result<std::string> Cli::registry_path() {
  auto c = config();
  if (!c.ok()) return c.status();
  auto dd = data_dir();
  if (!dd.ok()) return dd.status();
  return (*c)->registry.path.empty() ? JoinPath(*dd, "registry.db") : (*c)->registry.path;
}

namespace {
constexpr const char* kNoRegistry = "no registry at ";
}

bool Cli::NoRegistry(const Status& st) {
  return st.code() == Code::kNotFound && st.message().rfind(kNoRegistry, 0) == 0;
}

Result<std::unique_ptr<Registry>> Cli::OpenRegistry(bool create) {
  auto c = config();
  if (!c.ok()) return c.status();
  Registry::Options o;
  MMS_ASSIGN_OR_RETURN(o.path, registry_path());
  MMS_ASSIGN_OR_RETURN(o.artifacts_dir, ArtifactsDir());
  // Nothing at all there (no registry, no stored artifacts): a mistyped path,
  // or nothing registered yet. (A registry gone from beside artifacts is
  // Registry::Open's to refuse, with how to restore it.)
  if (!create && !FileExists(o.path) && !FileExists(o.artifacts_dir))
    return NotFound(kNoRegistry + o.path + ": nothing is registered with this data dir (check --data-dir or " +
                    "[registry] path; mms model register creates it)");
  o.busy_timeout_ms = (*c)->registry.busy_timeout_ns / 1000000;
  o.allowed_roots = (*c)->registry.allowed_roots;
  MMS_RETURN_IF_ERROR(WaitForDaemonToLetGo(o.path));
  return Registry::Open(o);
}

// A registry file replaced, or its -wal or -shm removed, under a running
// mmsd leaves mmsd's log and index at the path until mmsd lets go of the
// file (at its next poll): a process that opened the file in that moment
// took them for the file's own, and its close applied them to it (a review:
// `mv backup.db registry.db && mms model list` corrupted the new file). So,
// with mmsd on this socket serving this registry and reporting it so (its
// STATUS looks at the file when asked), wait until it has let go. A daemon
// that does not answer at once is not waited for (a stopped one would hold
// every command).
Status Cli::WaitForDaemonToLetGo(const std::string& db) {
  auto path = socket_path();
  if (!path.ok() || !FileExists(*path)) return Status::Ok();
  proto::Client::Options o;
  o.socket_path = *path;
  o.timeout_ms = 300;
  auto c = proto::Client::Connect(o);
  if (!c.ok()) return Status::Ok();
  for (int i = 0; i < 60; ++i) {
    auto s = (*c)->CallJson(proto::kStatus, nlohmann::json::object());
    if (!s.ok() || !s->contains("registry_error") || s->value("registry_let_go", true)) return Status::Ok();
    if (!SamePath(s->value("registry", ""), db)) return Status::Ok();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return FailedPrecondition("mmsd at " + *path + " has the registry " + db + " open, but the file at that path is no "
                            "longer the one it opened (or its -wal or -shm was removed), and it has not let go of "
                            "it: opening the file now could apply mmsd's log to it. Retry in a moment, or stop mmsd");
}

Result<std::unique_ptr<Registry>> Cli::OpenRegistryToList() {
  auto reg = OpenRegistry();
  if (reg.ok() || !NoRegistry(reg.status())) return reg;
  Note("note: " + reg.status().message());
  Registry::Options o;
  o.path = ":memory:";
  return Registry::Open(o);
}

Result<std::string> Cli::ArtifactsDir() {
  auto dd = data_dir();
  if (!dd.ok()) return dd.status();
  return JoinPath(*dd, "artifacts");
}

nlohmann::json Cli::NotifyDaemon(bool until_routed) {
  auto path = socket_path();
  if (!path.ok() || !FileExists(*path)) return nlohmann::json::object();  // no daemon: it reads the registry when it starts
  proto::Client::Options o;
  o.socket_path = *path;
  // Long enough for the daemon's warm-up limit, or the --timeout given: a
  // hung daemon does not hold a pipeline longer than it asked, and a busy
  // one is waited for as long as it asked.
  const int64_t wait_ms = 2000 + (until_routed ? kRoutedWaitMs : 0);
  o.timeout_ms = g.timeout_given ? std::max<int64_t>(1, static_cast<int64_t>(std::ceil(g.timeout_s * 1000))) : wait_ms;
  Status st = Status::Ok();
  auto c = proto::Client::Connect(o);
  // A socket file left by a killed daemon: none running, nothing to tell.
  if (!c.ok() && DaemonNotRunning(c.status())) return nlohmann::json::object();
  if (c.ok()) {
    auto reg = registry_path();
    nlohmann::json body{{"registry", reg.ok() ? *reg : ""}};
    // Not held by the daemon past the moment this command stops waiting.
    if (until_routed) body["wait_ms"] = std::min<int64_t>(kRoutedWaitMs, std::max<int64_t>(0, o.timeout_ms - 1000));
    auto answer = (*c)->CallJson(proto::kRegistryChanged, body);
    if (answer.ok()) return *answer;
    st = answer.status();
  } else {
    st = c.status();
  }
  if (st.code() == Code::kFailedPrecondition)
    Note("note: " + st.message() + "; it was not told of this change");
  else
    Note("note: the change is in the registry, but mmsd at " + *path + " did not confirm it (" + st.message() +
         "); a running daemon picks it up at its next registry poll");
  return nlohmann::json::object();
}

nlohmann::json Cli::WarnLoadFailures(const nlohmann::json& answer, const std::vector<std::string>& refs,
                                     const std::string& consequence) {
  nlohmann::json out = nlohmann::json::array();
  if (!answer.is_object() || !answer.contains("load_failures")) return out;
  for (const auto& f : answer["load_failures"]) {
    const std::string ref = f.value("version", "");
    if (std::find(refs.begin(), refs.end(), ref) == refs.end()) continue;
    out.push_back(f);
    // A warning, never silenced by --quiet: the command did what it was asked,
    // but what it started cannot work as asked.
    if (!g.json)
      std::cerr << "mms: warning: " << ref << " could not be loaded: " << f.value("error", "") << "; " << consequence
                << "\n";
  }
  return out;
}

std::string MmsdPath() {
  std::string beside = JoinPath(SelfExeDir(), "mmsd");
  if (FileExists(beside)) return beside;
  return "mmsd";
}

std::string FormatTime(int64_t unix_ms) {
  time_t secs = static_cast<time_t>(unix_ms / 1000);
  struct tm tm;
  gmtime_r(&secs, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm);
  return buf;
}

Result<std::string> Cli::socket_path() {
  if (!g.socket.empty()) return g.socket;
  auto c = config();
  if (!c.ok()) return c.status();
  if (!(*c)->daemon.socket.empty()) return (*c)->daemon.socket;
  auto dd = data_dir();
  if (!dd.ok()) return dd.status();
  return DefaultSocketPath(ProcessEnv(), *dd);
}

std::vector<std::string> Cli::DaemonArgs() {
  std::vector<std::string> args;
  if (!g.socket.empty()) args.insert(args.end(), {"--socket", g.socket});
  if (!g.data_dir.empty()) args.insert(args.end(), {"--data-dir", g.data_dir});
  if (!g.config.empty()) args.insert(args.end(), {"--config", g.config});
  return args;
}

std::string ShellWord(const std::string& s) {
  if (!s.empty() && s.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+:@,=") ==
                        std::string::npos)
    return s;
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

std::string Cli::StartCommandHint() {
  std::string cmd = "mms";
  for (const auto& a : DaemonArgs()) cmd += " " + ShellWord(a);
  return cmd + " serve --detach";
}

namespace {
// Whether process `pid` holds an flock on `path`, from /proc/locks
// (readable for every user's locks, unlike /proc/PID/fd). Matched by inode
// and pid: inode numbers repeat across filesystems (every user's runtime
// tmpfs counts from 2), and the device /proc/locks prints is not st_dev on
// btrfs or overlayfs.
bool HoldsFlock(const std::string& pid, const std::string& path) {
  struct stat st;
  if (pid.empty() || ::stat(path.c_str(), &st) != 0) return false;
  std::ifstream in("/proc/locks");
  std::string line;
  while (std::getline(in, line)) {
    // "3: FLOCK  ADVISORY  WRITE 1234 08:01:1234567 0 EOF"; a waiter's has "->" after the number.
    std::istringstream f(line);
    std::string n, kind, advisory, mode, holder, where;
    if (!(f >> n >> kind >> advisory >> mode >> holder >> where) || kind != "FLOCK" || holder != pid) continue;
    const size_t colon = where.rfind(':');
    if (colon != std::string::npos && where.substr(colon + 1) == std::to_string(st.st_ino)) return true;
  }
  return false;
}

// `pid` (as written in `lock_path` by the daemon that took it) when that
// process is a live mmsd holding the lock now, else "": after a kill -9 the
// file stays, and its pid may since be any process, another user's mmsd
// among them.
std::string MmsdHolding(const std::string& lock_path, const std::string& pid) {
  if (pid.empty() || pid.find_first_not_of("0123456789") != std::string::npos || !HoldsFlock(pid, lock_path))
    return "";
  auto comm = ReadFile("/proc/" + pid + "/comm");
  return comm.ok() && comm->rfind("mmsd", 0) == 0 ? pid : "";
}

// The mmsd serving a registry: {pid, socket} when an mmsd holds its
// <registry>.mmsd-lock and the file (ParseDaemonLockFile), written by that
// daemon, names its socket, which is there; else {"", ""}. (Read, never
// locked here: a probe holding the lock a moment could make a daemon
// starting then refuse to.)
std::pair<std::string, std::string> RegistryHolder(const std::string& registry_path) {
  const std::string lock = registry_path + ".mmsd-lock";
  auto text = ReadFile(lock);
  if (!text.ok()) return {};
  const DaemonLockFile held = ParseDaemonLockFile(*text);
  const std::string pid = MmsdHolding(lock, held.pid);
  if (pid.empty() || held.socket.empty() || !FileExists(held.socket)) return {};
  return {pid, held.socket};
}
}  // namespace

std::string SocketHolder(const std::string& socket_path) {
  const std::string lock = socket_path + ".lock";
  auto text = ReadFile(lock);  // the pid, as Server::Lock writes it
  return text.ok() ? MmsdHolding(lock, text->substr(0, text->find('\n'))) : "";
}

Result<std::unique_ptr<proto::Client>> Cli::Connect() {
  // A config that cannot be read is refused here too, as by every command
  // that reads the registry: --socket alone would otherwise skip reading it.
  if (auto c = config(); !c.ok()) return c.status();
  auto path = socket_path();
  if (!path.ok()) return path.status();
  proto::Client::Options o;
  o.socket_path = *path;
  o.timeout_ms = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(g.timeout_s * 1000)));  // 0 would mean unbounded
  auto c = proto::Client::Connect(o);
  if (!c.ok() && DaemonNotRunning(c.status())) {
    // A daemon serving this registry on another socket (a wrong --socket,
    // another [daemon] socket): named, and not "not running" — a change made
    // now reaches it at its next registry poll, and a script must not read
    // "no daemon" and go on as if none served.
    if (auto reg = registry_path(); reg.ok())
      if (auto [pid, sock] = RegistryHolder(*reg); !pid.empty() && sock != *path)
        return Unavailable("no mmsd answers at " + *path + ", but mmsd (pid " + pid + ") serves this registry (" +
                           *reg + ") on " + sock + ": pass --socket " + ShellWord(sock) + " (or set [daemon] socket)");
    // Its own daemon, stopping: "start it" would be refused (exit 6) until it has exited.
    if (std::string pid = SocketHolder(*path); !pid.empty())
      return Unavailable("mmsd (pid " + pid + ") holds " + *path +
                         " but takes no new connections: it is stopping (finishing the requests it has, up to "
                         "[daemon] shutdown_grace), still starting, or its socket file was removed a moment ago "
                         "(restored within seconds); try again, or once it has exited, start it with: " +
                         StartCommandHint());
    return Unavailable(c.status().message() + "; start it with: " + StartCommandHint());
  }
  if (!c.ok()) return c.status();
  return c;
}

Result<nlohmann::json> Cli::Call(uint16_t type, nlohmann::json body) {
  auto c = Connect();
  if (!c.ok()) return c.status();
  return (*c)->CallJson(type, std::move(body));
}

Result<proto::Message> Cli::Call(proto::Message m) {
  auto c = Connect();
  if (!c.ok()) return c.status();
  return (*c)->Call(std::move(m));
}

int Cli::Fail(const Status& st) {
  int code = ExitCodeFor(st.code());
  if (g.json) {
    // One line, as errors are (a script may read the last line of a stream).
    std::cout << nlohmann::json{{"error", {{"code", CodeName(st.code())}, {"message", st.message()}, {"exit_code", code}}}}
                     .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)
              << "\n";
  } else {
    // Control characters as \xNN: a message may quote what a file or a
    // request named (a tensor name with an escape sequence would drive the
    // terminal; a NUL cut the line for some readers).
    std::string text;
    for (unsigned char c : st.message()) {
      if ((c < 0x20 && c != '\n' && c != '\t') || c == 0x7f) {
        char hex[8];
        std::snprintf(hex, sizeof hex, "\\x%02x", c);
        text += hex;
      } else {
        text += static_cast<char>(c);
      }
    }
    std::cerr << "mms: " << text << "\n";
  }
  exit_code = code;
  return code;
}

void Cli::Emit(const nlohmann::json& j, const std::function<void()>& text) {
  if (g.json) {
    std::cout << j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  } else {
    text();  // --quiet silences notes, never the requested output
  }
}

void Cli::Note(const std::string& line) {
  if (!g.quiet) std::cerr << line << "\n";
}

std::optional<double> ParseDecimal(const std::string& text) {
  double x = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), x, std::chars_format::general);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size() || !std::isfinite(x)) return std::nullopt;
  return x;
}

CLI::Validator DecimalNumber() {
  return CLI::Validator(
      [](std::string& v) {
        if (ParseDecimal(v)) return std::string();
        // from_chars reads an overflow as out of range: a number, too large or small to hold.
        double x = 0;
        auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), x, std::chars_format::general);
        if (!v.empty() && ec == std::errc::result_out_of_range && end == v.data() + v.size())
          return "'" + v + "' is out of range (a double holds about 1e-308 to 1e308)";
        return "'" + v + "' is not a decimal number";
      },
      "NUMBER");
}

CLI::Validator WholeNumber() {
  return CLI::Validator(
      [](std::string& v) {
        auto d = ParseDecimal(v);
        return d && *d == std::floor(*d) && v.find_first_of(".eE") == std::string::npos
                   ? std::string()
                   : "'" + v + "' is not a whole number";
      },
      "INTEGER");
}

std::string FormatTable(const std::vector<std::vector<std::string>>& given) {
  // A cell holds one line: control characters (a description given with a
  // newline) are written as escapes, or the row would break the table.
  std::vector<std::vector<std::string>> rows = given;
  for (auto& r : rows)
    for (auto& cell : r) {
      if (std::none_of(cell.begin(), cell.end(), [](unsigned char c) { return c < 0x20 || c == 0x7f; })) continue;
      std::string clean;
      for (unsigned char c : cell) {
        if (c == '\n') clean += "\\n";
        else if (c == '\t') clean += "\\t";
        else if (c < 0x20 || c == 0x7f) {
          char hex[8];
          std::snprintf(hex, sizeof hex, "\\x%02x", c);
          clean += hex;
        } else clean += static_cast<char>(c);
      }
      cell = std::move(clean);
    }
  std::vector<size_t> w;
  auto width = [](const std::string& s) {
    size_t n = 0;  // count UTF-8 code points, not bytes
    for (unsigned char c : s) n += (c & 0xC0) != 0x80;
    return n;
  };
  for (const auto& r : rows)
    for (size_t i = 0; i < r.size(); ++i) {
      if (w.size() <= i) w.push_back(0);
      w[i] = std::max(w[i], width(r[i]));
    }
  std::string out;
  for (const auto& r : rows) {
    std::string line;
    for (size_t i = 0; i < r.size(); ++i) {
      line += r[i];
      if (i + 1 < r.size()) line += std::string(w[i] - width(r[i]) + 2, ' ');
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out += line + "\n";
  }
  return out;
}

}  // namespace mms::cli
