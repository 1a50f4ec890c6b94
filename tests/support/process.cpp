#include "support/process.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <signal.h>
#include <stdlib.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <thread>

namespace mms::testing {

std::string BinDir() { return MMS_TEST_BIN_DIR; }
std::string MmsBin() { return BinDir() + "/mms"; }
std::string MmsdBin() { return BinDir() + "/mmsd"; }
std::string TestDataDir() { return MMS_TEST_DATA_DIR; }

namespace {

std::vector<char*> Argv(const std::vector<std::string>& argv) {
  std::vector<char*> out;
  for (const auto& a : argv) out.push_back(const_cast<char*>(a.c_str()));
  out.push_back(nullptr);
  return out;
}

void ApplyEnv(const std::map<std::string, std::string>& env) {
  for (const auto& [k, v] : env) ::setenv(k.c_str(), v.c_str(), 1);
}

int DecodeStatus(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

}  // namespace

ProcResult Run(const std::vector<std::string>& argv, double timeout_s,
               const std::map<std::string, std::string>& env, const std::string& stdin_data) {
  return RunProcess(argv, timeout_s, env, stdin_data);
}

Child::~Child() {
  if (pid_ > 0 && !reaped_) {
    ::kill(pid_, SIGKILL);
    int st;
    ::waitpid(pid_, &st, 0);
  }
}

bool Child::Start(const std::vector<std::string>& argv, const std::string& log_path,
                  const std::map<std::string, std::string>& env) {
  pid_ = ::fork();
  if (pid_ < 0) return false;
  if (pid_ == 0) {
    int fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    int in = ::open("/dev/null", O_RDONLY);
    ::dup2(in, 0);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    ApplyEnv(env);
    auto a = Argv(argv);
    ::execv(a[0], a.data());
    ::_exit(127);
  }
  reaped_ = false;
  status_ = 0;
  return true;
}

void Child::Signal(int sig) {
  if (pid_ > 0 && !reaped_) ::kill(pid_, sig);
}

bool Child::running() {
  if (pid_ <= 0 || reaped_) return false;
  int st;
  if (::waitpid(pid_, &st, WNOHANG) == pid_) {
    reaped_ = true;
    status_ = st;
    return false;
  }
  return true;
}

int Child::Wait(double timeout_s) {
  if (reaped_) return DecodeStatus(status_);
  if (!WaitFor([&] { return !running(); }, timeout_s)) return -1;
  return DecodeStatus(status_);
}

TempDir::TempDir() {
  char tmpl[] = "/tmp/mmst.XXXXXX";
  char* p = ::mkdtemp(tmpl);
  path_ = p ? p : "/tmp";
}

TempDir::~TempDir() {
  std::error_code ec;
  if (path_ != "/tmp") std::filesystem::remove_all(path_, ec);
}

int FreePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  int port = ntohs(a.sin_port);
  ::close(fd);
  return port;
}

void FlipLastByte(const std::string& path) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(-1, std::ios::end);
  char c = static_cast<char>(f.get() ^ 0x5a);
  f.seekp(-1, std::ios::end);
  f.put(c);
}

size_t Count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

WriteLock::WriteLock(const std::string& db_path) {
  sqlite3* db = nullptr;
  if (sqlite3_open(db_path.c_str(), &db) != SQLITE_OK) {
    sqlite3_close(db);
    return;
  }
  db_ = db;
  sqlite3_busy_timeout(db, 10000);  // the daemon may be mid-write (a flush) at this instant
  ok_ = sqlite3_exec(db, "BEGIN EXCLUSIVE", nullptr, nullptr, nullptr) == SQLITE_OK;
}

void WriteLock::Release() {
  if (!db_) return;
  auto* db = static_cast<sqlite3*>(db_);
  if (ok_) sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr);
  sqlite3_close(db);
  db_ = nullptr;
  ok_ = false;
}

namespace {
// Runs `sql` and hands its first row's first column to `read`.
void SqlFirst(const std::string& db_path, const std::string& sql, const std::function<void(sqlite3_stmt*)>& read) {
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(db_path.c_str(), &db, SQLITE_OPEN_READWRITE, nullptr) == SQLITE_OK) {
    sqlite3_busy_timeout(db, 10000);
    sqlite3_stmt* st = nullptr;
    if (sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW &&
        sqlite3_column_type(st, 0) != SQLITE_NULL)
      read(st);
    sqlite3_finalize(st);
  }
  sqlite3_close(db);
}
}  // namespace

int64_t SqlInt(const std::string& db_path, const std::string& sql) {
  int64_t v = -1;
  SqlFirst(db_path, sql, [&](sqlite3_stmt* st) { v = sqlite3_column_int64(st, 0); });
  return v;
}

std::string SqlText(const std::string& db_path, const std::string& sql) {
  std::string v;
  SqlFirst(db_path, sql, [&](sqlite3_stmt* st) { v = reinterpret_cast<const char*>(sqlite3_column_text(st, 0)); });
  return v;
}

bool WaitFor(const std::function<bool()>& pred, double timeout_s) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  while (true) {
    if (pred()) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

BlockedFile::BlockedFile(std::string path) : path_(std::move(path)) {
  // A second name for the FIFO: a reader that blocks on it after Release
  // gave up waiting is still reached once the real file has its name back.
  ok_ = std::rename(path_.c_str(), (path_ + ".real").c_str()) == 0 && ::mkfifo(path_.c_str(), 0600) == 0 &&
        ::link(path_.c_str(), (path_ + ".fifo").c_str()) == 0;
}

BlockedFile::~BlockedFile() { Release(1); }

bool BlockedFile::Release(double timeout_s) {
  if (!ok_ || released_) return true;
  released_ = true;
  int fd = -1;  // opening the writing end without blocking succeeds only once a reader waits
  bool reader = WaitFor([&] { return (fd = ::open(path_.c_str(), O_WRONLY | O_NONBLOCK)) >= 0; }, timeout_s);
  std::rename((path_ + ".real").c_str(), path_.c_str());  // later readers get the real file
  const std::string fifo = path_ + ".fifo";
  if (int late = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK); late >= 0) ::close(late);  // one that came meanwhile
  ::unlink(fifo.c_str());
  if (fd >= 0) ::close(fd);
  return reader;
}

std::string PackedWeights(const std::string& data_dir, const std::string& model, const std::string& version) {
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(data_dir + "/artifacts/" + model, ec))
    if (e.path().filename().string().rfind(version + "-", 0) == 0) return e.path().string() + "/weights.safetensors";
  return "";
}

Daemon::Daemon(const std::string& config, const std::vector<std::string>& extra_args, const std::string& data_dir)
    : extra_(extra_args) {
  socket_ = dir_ / "run/mms.sock";
  data_dir_ = data_dir.empty() ? dir_ / "data" : data_dir;
  log_path_ = dir_ / "mmsd.log";
  if (!config.empty()) {
    config_path_ = dir_ / "mms.toml";
    std::ofstream(config_path_) << config;
  }
  ok_ = StartProcess();
}

Daemon::~Daemon() {
  if (child_.running()) {
    child_.Signal(SIGTERM);
    if (child_.Wait(20) < 0) child_.Signal(SIGKILL);
  }
}

bool Daemon::StartProcess() {
  std::vector<std::string> argv{MmsdBin(), "--socket", socket_, "--data-dir", data_dir_};
  if (!config_path_.empty()) argv.insert(argv.end(), {"--config", config_path_});
  argv.insert(argv.end(), extra_.begin(), extra_.end());
  if (!child_.Start(argv, log_path_)) return false;
  return WaitFor(
      [&] {
        if (!child_.running()) return true;  // died: stop waiting
        return Mms({"ping"}, 10).exit_code == 0;
      },
      60) &&
         child_.running();
}

bool Daemon::Restart() {
  ok_ = StartProcess();
  return ok_;
}

std::string Daemon::log() const {
  std::ifstream in(log_path_);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

ProcResult Daemon::Mms(const std::vector<std::string>& args, double timeout_s, const std::string& stdin_data,
                       const std::map<std::string, std::string>& env) const {
  std::vector<std::string> argv{MmsBin(), "--socket", socket_, "--data-dir", data_dir_};
  if (!config_path_.empty()) argv.insert(argv.end(), {"--config", config_path_});
  argv.insert(argv.end(), args.begin(), args.end());
  return Run(argv, timeout_s, env, stdin_data);
}

}  // namespace mms::testing
