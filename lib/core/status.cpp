#include "core/status.h"

#include <array>

namespace mms {
namespace {
struct Entry {
  Code code;
  const char* name;
  int exit_code;
};
constexpr std::array<Entry, 20> kTable{{
    {Code::kOk, "OK", 0},
    {Code::kInvalidArgument, "INVALID_ARGUMENT", 2},
    {Code::kNotFound, "NOT_FOUND", 4},
    {Code::kAlreadyExists, "ALREADY_EXISTS", 6},
    {Code::kInUse, "IN_USE", 6},
    {Code::kPoolFull, "POOL_FULL", 5},
    {Code::kRateLimited, "RATE_LIMITED", 5},
    {Code::kOverloaded, "OVERLOADED", 5},
    {Code::kDeadlineExceeded, "DEADLINE_EXCEEDED", 5},
    {Code::kUnavailable, "UNAVAILABLE", 3},
    {Code::kUnhealthy, "UNHEALTHY", 1},
    {Code::kFailedPrecondition, "FAILED_PRECONDITION", 1},
    {Code::kProtocol, "PROTOCOL", 1},
    {Code::kCorrupt, "CORRUPT", 1},
    {Code::kInternal, "INTERNAL", 1},
    {Code::kIo, "IO", 1},
    {Code::kCancelled, "CANCELLED", 1},
    {Code::kModelError, "MODEL_ERROR", 1},
    {Code::kConflict, "CONFLICT", 6},
    {Code::kLocked, "LOCKED", 6},
}};
}  // namespace

const char* CodeName(Code c) {
  for (const auto& e : kTable)
    if (e.code == c) return e.name;
  return "INTERNAL";
}

Code CodeFromName(std::string_view name) {
  for (const auto& e : kTable)
    if (name == e.name) return e.code;
  return Code::kInternal;
}

int ExitCodeFor(Code c) {
  for (const auto& e : kTable)
    if (e.code == c) return e.exit_code;
  return 1;
}

std::string Status::ToString() const {
  if (ok()) return "OK";
  return std::string(CodeName(code_)) + ": " + message_;
}

Status Status::WithContext(std::string_view prefix) const {
  if (ok()) return *this;
  return Status(code_, std::string(prefix) + ": " + message_);
}

}  // namespace mms
