#include <doctest/doctest.h>

#include "core/status.h"

using namespace mms;

TEST_CASE("exit codes follow the documented table") {
  CHECK(ExitCodeFor(Code::kOk) == 0);
  CHECK(ExitCodeFor(Code::kInternal) == 1);
  CHECK(ExitCodeFor(Code::kInvalidArgument) == 2);
  CHECK(ExitCodeFor(Code::kUnavailable) == 3);
  CHECK(ExitCodeFor(Code::kNotFound) == 4);
  CHECK(ExitCodeFor(Code::kRateLimited) == 5);
  CHECK(ExitCodeFor(Code::kPoolFull) == 5);
  CHECK(ExitCodeFor(Code::kOverloaded) == 5);
  CHECK(ExitCodeFor(Code::kDeadlineExceeded) == 5);
  CHECK(ExitCodeFor(Code::kAlreadyExists) == 6);
  CHECK(ExitCodeFor(Code::kInUse) == 6);
  CHECK(ExitCodeFor(Code::kUnhealthy) == 1);
}

TEST_CASE("code names round-trip") {
  for (int c = 0; c <= 17; ++c) {
    Code code = static_cast<Code>(c);
    CHECK(CodeFromName(CodeName(code)) == code);
  }
  CHECK(CodeFromName("NO_SUCH_CODE") == Code::kInternal);
}

namespace {
Result<int> Half(int x) {
  if (x % 2) return InvalidArgument("odd: " + std::to_string(x));
  return x / 2;
}
Result<int> Quarter(int x) {
  MMS_ASSIGN_OR_RETURN(int h, Half(x));
  MMS_ASSIGN_OR_RETURN(int q, Half(h));
  return q;
}
}  // namespace

TEST_CASE("Result propagates the first error") {
  CHECK(Quarter(8).value() == 2);
  auto r = Quarter(6);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == Code::kInvalidArgument);
  CHECK(r.status().message() == "odd: 3");
  CHECK(r.status().WithContext("quarter").ToString() == "INVALID_ARGUMENT: quarter: odd: 3");
}
