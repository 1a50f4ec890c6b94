// Test support: real processes (the mms and mmsd binaries), temp dirs and a
// running daemon fixture. Integration tests drive the real binaries through
// these; nothing is mocked.
#pragma once

#include <sys/types.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/subprocess.h"

namespace mms::testing {

// Directory holding the built mms/mmsd binaries (set by CMake).
std::string BinDir();
std::string MmsBin();
std::string MmsdBin();
// The build's generated testdata directory.
std::string TestDataDir();

using mms::ProcResult;

// Runs argv to completion (killing it after timeout_s), capturing output.
ProcResult Run(const std::vector<std::string>& argv, double timeout_s = 120,
               const std::map<std::string, std::string>& env = {}, const std::string& stdin_data = "");

// A background child whose stdout+stderr go to `log_path`.
class Child {
 public:
  Child() = default;
  ~Child();  // SIGKILLs and reaps a still-running child
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  bool Start(const std::vector<std::string>& argv, const std::string& log_path,
             const std::map<std::string, std::string>& env = {});
  pid_t pid() const { return pid_; }
  void Signal(int sig);
  // Exit code (128+signal when killed), or -1 on timeout.
  int Wait(double timeout_s);
  bool running();

 private:
  pid_t pid_ = -1;
  int status_ = 0;
  bool reaped_ = false;
};

class TempDir {
 public:
  TempDir();  // under /tmp, short enough for unix socket paths
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// A real mmsd on a temp socket and data dir.
class Daemon {
 public:
  // Starts mmsd and waits until `mms ping` answers. `config` is TOML text
  // written to <dir>/mms.toml and passed with --config when not empty.
  // `data_dir` overrides the temp data dir (benchmarks reuse a registry).
  explicit Daemon(const std::string& config = "", const std::vector<std::string>& extra_args = {},
                  const std::string& data_dir = "");
  ~Daemon();
  bool ok() const { return ok_; }
  const std::string& socket() const { return socket_; }
  const std::string& data_dir() const { return data_dir_; }
  std::string log() const;  // daemon's stdout+stderr so far
  const std::string& dir() const { return dir_.path(); }
  Child& child() { return child_; }
  // Runs `mms --socket S --data-dir D [--config C] args...`, with `env` added.
  ProcResult Mms(const std::vector<std::string>& args, double timeout_s = 120, const std::string& stdin_data = "",
                 const std::map<std::string, std::string>& env = {}) const;
  // Restarts after a stop/kill (same dirs).
  bool Restart();

 private:
  bool StartProcess();
  TempDir dir_;
  std::string socket_, data_dir_, config_path_, log_path_;
  std::vector<std::string> extra_;
  Child child_;
  bool ok_ = false;
};

// A TCP port on 127.0.0.1 that was free a moment ago (for --metrics-address).
int FreePort();

// How many times `what` occurs in `text` (log lines of one event, say).
size_t Count(const std::string& text, const std::string& what);

// Same-size damage: the last byte of `path` XORed (a flipped weight).
void FlipLastByte(const std::string& path);

// Another writer holding an SQLite file (a registry): BEGIN EXCLUSIVE, so
// every write through another connection fails after its busy timeout, as
// on a full disk. Waits for a write in progress first. Released by Release()
// or the destructor.
class WriteLock {
 public:
  explicit WriteLock(const std::string& db_path);
  ~WriteLock() { Release(); }
  WriteLock(const WriteLock&) = delete;
  WriteLock& operator=(const WriteLock&) = delete;
  bool ok() const { return ok_; }
  void Release();

 private:
  void* db_ = nullptr;  // sqlite3*
  bool ok_ = false;
};

// The first column of the first row of `sql` run on an existing SQLite file (a registry),
// read through its own connection, which waits out a write in progress (up
// to 10 s): SqlInt is -1, SqlText "", when the file cannot be opened, the
// statement fails or returns no row.
int64_t SqlInt(const std::string& db_path, const std::string& sql);
std::string SqlText(const std::string& db_path, const std::string& sql);

// Waits for a predicate, polling every 10 ms.
bool WaitFor(const std::function<bool()>& pred, double timeout_s);

// A file whose readers block: it is moved aside and a FIFO takes its name,
// so a real load of it waits in open() until Release(). Release() (also run
// by the destructor, so a failed test never leaves a daemon stuck) opens the
// writing end once a reader waits, puts the real file back and closes: the
// blocked reader sees an empty file, later ones the real one.
class BlockedFile {
 public:
  explicit BlockedFile(std::string path);
  ~BlockedFile();
  bool ok() const { return ok_; }
  // False when no reader came within timeout_s (the file is restored anyway).
  bool Release(double timeout_s = 30);

 private:
  std::string path_;
  bool ok_ = false, released_ = false;
};

// The packed weights file of a registered version (data_dir/artifacts/<model>/<version>-*/).
std::string PackedWeights(const std::string& data_dir, const std::string& model, const std::string& version);

}  // namespace mms::testing
