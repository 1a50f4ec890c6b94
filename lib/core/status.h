// Status and Result<T>: how every module reports failure across its boundary.
//
// No exception leaves lib/: adapters around libtorch, toml++, SQLite, nng and
// CLI11 catch and convert to a Status. "Not found" is an ordinary Status.
// Codes are stable: their numbers travel in protocol error replies and map to
// the CLI's documented exit codes (see ExitCodeFor).
//
// Thread-safety: value types; safe to copy between threads.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace mms {

// Numbers are frozen (they cross the wire). Append only.
enum class Code : uint16_t {
  kOk = 0,
  kInvalidArgument = 1,   // bad input from the caller (usage, values, shapes)
  kNotFound = 2,          // unknown model, version, experiment, request id
  kAlreadyExists = 3,     // duplicate name:version, experiment id, ...
  kInUse = 4,             // refused because something references it (pins, rollouts)
  kPoolFull = 5,          // nothing can be evicted to make room
  kRateLimited = 6,       // token bucket empty
  kOverloaded = 7,        // bounded queue full, daemon draining
  kDeadlineExceeded = 8,  // would miss (or missed) the caller's deadline
  kUnavailable = 9,       // daemon unreachable / not running
  kUnhealthy = 10,        // model failed warm-up or load; not served
  kFailedPrecondition = 11,  // illegal state transition, wrong schema version
  kProtocol = 12,         // malformed message on the wire
  kCorrupt = 13,          // corrupt file (db, artifact)
  kInternal = 14,         // a bug or an unexpected library failure
  kIo = 15,               // filesystem / OS error
  kCancelled = 16,        // caller went away or shut down
  kModelError = 17,       // the model's forward() raised on this input
  kConflict = 18,         // a concurrent writer got there first: changed meanwhile, already stopped or ended (exit 6)
  kLocked = 19,           // the registry held by another writer past the busy timeout: retry (exit 6)
};

// Stable short name, e.g. "NOT_FOUND". Used in JSON error replies.
const char* CodeName(Code c);
// Inverse of CodeName; kInternal for unknown names.
Code CodeFromName(std::string_view name);

// CLI exit codes, documented in `mms --help` and mms(1):
// 0 ok, 1 error, 2 usage/invalid argument, 3 daemon unreachable, 4 not found,
// 5 rejected (rate limited, pool full, overloaded, deadline), 6 conflict.
int ExitCodeFor(Code c);

class [[nodiscard]] Status {
 public:
  Status() = default;  // OK
  Status(Code code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }
  // "NOT_FOUND: unknown model 'x'".
  std::string ToString() const;

  // Returns a copy with `prefix: ` prepended to the message.
  Status WithContext(std::string_view prefix) const;

 private:
  Code code_ = Code::kOk;
  std::string message_;
};

inline Status InvalidArgument(std::string m) { return Status(Code::kInvalidArgument, std::move(m)); }
inline Status NotFound(std::string m) { return Status(Code::kNotFound, std::move(m)); }
inline Status AlreadyExists(std::string m) { return Status(Code::kAlreadyExists, std::move(m)); }
inline Status InUse(std::string m) { return Status(Code::kInUse, std::move(m)); }
inline Status FailedPrecondition(std::string m) { return Status(Code::kFailedPrecondition, std::move(m)); }
inline Status Conflict(std::string m) { return Status(Code::kConflict, std::move(m)); }
inline Status Internal(std::string m) { return Status(Code::kInternal, std::move(m)); }
inline Status IoError(std::string m) { return Status(Code::kIo, std::move(m)); }
inline Status Corrupt(std::string m) { return Status(Code::kCorrupt, std::move(m)); }
inline Status ProtocolError(std::string m) { return Status(Code::kProtocol, std::move(m)); }
inline Status Unavailable(std::string m) { return Status(Code::kUnavailable, std::move(m)); }

// Result<T>: a T or a non-OK Status.
template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}             // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) {}      // NOLINT: must not be OK
  bool ok() const { return std::holds_alternative<T>(v_); }
  const Status& status() const {
    static const Status kOk;
    return ok() ? kOk : std::get<Status>(v_);
  }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace mms

#define MMS_CONCAT_INNER_(a, b) a##b
#define MMS_CONCAT_(a, b) MMS_CONCAT_INNER_(a, b)

#define MMS_RETURN_IF_ERROR(expr)              \
  do {                                         \
    ::mms::Status mms_st_ = (expr);            \
    if (!mms_st_.ok()) return mms_st_;         \
  } while (0)

#define MMS_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                               \
  if (!tmp.ok()) return tmp.status();              \
  lhs = std::move(tmp).value()

#define MMS_ASSIGN_OR_RETURN(lhs, expr) \
  MMS_ASSIGN_OR_RETURN_IMPL_(MMS_CONCAT_(mms_r_, __LINE__), lhs, expr)
