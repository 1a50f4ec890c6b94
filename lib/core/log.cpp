#include "core/log.h"

#include "core/units.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>

#include "core/clock.h"

namespace mms {

Result<LogLevel> ParseLogLevel(std::string_view s) {
  if (s == "debug") return LogLevel::kDebug;
  if (s == "info") return LogLevel::kInfo;
  if (s == "warn") return LogLevel::kWarn;
  if (s == "error") return LogLevel::kError;
  if (s == "off") return LogLevel::kOff;
  return InvalidArgument("log level must be one of debug, info, warn, error, off; got '" +
                         std::string(s) + "'");
}

const char* LogLevelName(LogLevel l) {
  switch (l) {
    case LogLevel::kDebug: return "debug";
    case LogLevel::kInfo: return "info";
    case LogLevel::kWarn: return "warn";
    case LogLevel::kError: return "error";
    case LogLevel::kOff: return "off";
  }
  return "info";
}

Logger& Logger::Global() {
  static Logger* logger = new Logger();
  return *logger;
}

Status Logger::Configure(const Options& opts) {
  FILE* f = nullptr;
  if (!opts.file.empty()) {
    // Private, as mmsd.log is (0600): a log names models, tenants and users.
    int fd = ::open(opts.file.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd >= 0) f = ::fdopen(fd, "a");
    if (!f) {
      int err = errno;
      if (fd >= 0) ::close(fd);
      return IoError("cannot open log file " + opts.file + ": " + std::strerror(err));
    }
    setvbuf(f, nullptr, _IOLBF, 0);
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (out_) std::fclose(out_);
  out_ = f;
  json_ = opts.json;
  level_ = opts.level;
  return Status::Ok();
}

namespace {
std::string IsoNow() { return FormatUtcMillis(Clock::Real()->UnixMillis()); }

// A text line's value as logfmt has it: bare when it is a plain word, else
// quoted with JSON's escapes — so a value with spaces or '=' splits as one
// field, and one with a newline or a quote (a client's bytes in a
// bad_request's detail) cannot start a line or a field of its own.
bool Bare(const std::string& s) {
  if (s.empty()) return false;
  for (unsigned char c : s)
    if (c <= ' ' || c == '=' || c == '"' || c == '\\' || c == 0x7f) return false;
  return true;
}
// This thread's LogDeferringMutex locks held, and the lines kept meanwhile.
thread_local int deferring = 0;
thread_local std::vector<std::string> deferred;
}  // namespace

void LogDeferringMutex::lock() {
  mu_.lock();
  ++deferring;
}

bool LogDeferringMutex::try_lock() {
  if (!mu_.try_lock()) return false;
  ++deferring;
  return true;
}

void LogDeferringMutex::unlock() {
  mu_.unlock();
  if (--deferring == 0 && !deferred.empty()) {
    std::vector<std::string> lines;
    lines.swap(deferred);
    Logger::Global().WriteLines(lines);
  }
}

void Logger::WriteLines(const std::vector<std::string>& lines) {
  std::lock_guard<std::mutex> lock(mu_);
  FILE* f = out_ ? out_ : stderr;
  for (const auto& line : lines) std::fwrite(line.data(), 1, line.size(), f);
  std::fflush(f);
}

void Logger::Write(LogLevel level, std::string_view event, const nlohmann::json& fields) {
  if (!Enabled(level)) return;
  std::string line;
  std::string ts = IsoNow();
  if (json_.load(std::memory_order_relaxed)) {
    nlohmann::json j = nlohmann::json::object();
    j["ts"] = ts;
    j["level"] = LogLevelName(level);
    j["event"] = event;
    if (fields.is_object())
      for (auto it = fields.begin(); it != fields.end(); ++it) j[it.key()] = it.value();
    line = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  } else {
    line = ts + " " + LogLevelName(level) + " " + std::string(event);
    if (fields.is_object()) {
      for (auto it = fields.begin(); it != fields.end(); ++it) {
        line += " " + it.key() + "=";
        if (it.value().is_string() && Bare(it.value().get_ref<const std::string&>()))
          line += it.value().get_ref<const std::string&>();
        else
          line += it.value().dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
      }
    }
  }
  line += "\n";
  if (deferring > 0) {  // under a LogDeferringMutex: written when it is let go
    deferred.push_back(std::move(line));
    return;
  }
  WriteLines({line});
}

bool LogThrottle::Admit(const std::string& key, int64_t now, uint64_t* suppressed) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = keys_.find(key);
  if (it == keys_.end()) it = keys_.size() < kMaxKeys ? keys_.emplace(key, State{}).first : keys_.emplace("", State{}).first;
  State& s = it->second;
  if (s.seen && now - s.last_ns < every_ns_) {
    ++s.held;
    return false;
  }
  *suppressed = s.held;
  s = State{now, 0, true};
  return true;
}

void LogDebug(std::string_view e, const nlohmann::json& f) { Logger::Global().Write(LogLevel::kDebug, e, f); }
void LogInfo(std::string_view e, const nlohmann::json& f) { Logger::Global().Write(LogLevel::kInfo, e, f); }
void LogWarn(std::string_view e, const nlohmann::json& f) { Logger::Global().Write(LogLevel::kWarn, e, f); }
void LogError(std::string_view e, const nlohmann::json& f) { Logger::Global().Write(LogLevel::kError, e, f); }

}  // namespace mms
