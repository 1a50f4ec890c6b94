// Structured logging: an event name plus key/value fields, written as one
// line of text in logfmt ("2026-11-28T20:45:13.123Z info load model=rec
// version=3 error=\"no such file\"": a value that is not a plain word is
// quoted, with JSON's escapes) or one JSON object per line. Levels debug <
// info < warn < error.
//
// The process has one Logger (Logger::Global()); the daemon configures it
// from [log] in mms.toml and on SIGHUP. Writes are serialized by the
// logger's mutex; a line is never interleaved with another.
#pragma once

#include <cstdio>
#include <atomic>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/status.h"

namespace mms {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3, kOff = 4 };

Result<LogLevel> ParseLogLevel(std::string_view s);
const char* LogLevelName(LogLevel l);

class Logger {
 public:
  struct Options {
    LogLevel level = LogLevel::kInfo;  // [log] level: debug|info|warn|error|off
    std::string file;                  // [log] file: "" = stderr; else appended to
    bool json = false;                 // [log] format = "json" → one object per line
  };

  static Logger& Global();

  // Reconfigures; opening the file may fail (the previous sink is kept then).
  Status Configure(const Options& opts);
  bool Enabled(LogLevel l) const { return l >= level_.load(std::memory_order_relaxed); }
  void Write(LogLevel level, std::string_view event, const nlohmann::json& fields);

 private:
  friend class LogDeferringMutex;
  void WriteLines(const std::vector<std::string>& lines);
  Logger() = default;
  std::mutex mu_;
  // Read without the lock (a line formatted just before a reload may take
  // the old format), written under it.
  std::atomic<LogLevel> level_{LogLevel::kInfo};
  std::atomic<bool> json_{false};
  FILE* out_ = nullptr;               // guarded by mu_; nullptr = stderr
};

// A mutex (BasicLockable, for lock_guard and unique_lock) whose holder's log
// lines are written once it lets go (of its last such lock): a log sink that
// blocks — a full pipe, a stalled journal — then stalls the writing thread
// only, never every thread waiting for the lock. Lines keep their times and
// their order within the thread. Not for condition_variable (std::mutex only).
class LogDeferringMutex {
 public:
  void lock();
  bool try_lock();
  void unlock();

 private:
  std::mutex mu_;
};

// Lets one line in `every_ns` through for an event a client can cause at
// will (a malformed message, a model raising on its input), per key (at most
// kMaxKeys; past that they share one): a thousand bad requests make one
// line and a count, not a thousand lines. Thread-safe.
class LogThrottle {
 public:
  static constexpr size_t kMaxKeys = 1024;
  explicit LogThrottle(int64_t every_ns) : every_ns_(every_ns) {}
  // Whether to write the line for `key` at `now_mono_ns`; when it is,
  // *suppressed says how many were held back since the last one written.
  bool Admit(const std::string& key, int64_t now_mono_ns, uint64_t* suppressed);

 private:
  struct State {
    int64_t last_ns = 0;
    uint64_t held = 0;
    bool seen = false;
  };
  const int64_t every_ns_;
  std::mutex mu_;
  std::map<std::string, State> keys_;  // guarded by mu_
};

// Convenience: LogInfo("load", {{"model", name}, {"ms", 12.5}}).
void LogDebug(std::string_view event, const nlohmann::json& fields = nlohmann::json::object());
void LogInfo(std::string_view event, const nlohmann::json& fields = nlohmann::json::object());
void LogWarn(std::string_view event, const nlohmann::json& fields = nlohmann::json::object());
void LogError(std::string_view event, const nlohmann::json& fields = nlohmann::json::object());

}  // namespace mms
