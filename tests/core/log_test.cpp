#include <doctest/doctest.h>

#include <mutex>
#include <thread>

#include "core/log.h"
#include "core/paths.h"
#include "support/process.h"

using namespace mms;

namespace {
std::string Text(const std::string& path) { return ReadFile(path).value(); }
}  // namespace

TEST_CASE("lines logged under a LogDeferringMutex are written once its holder lets go, in order") {
  // The pool logged loads and evictions under its lock: a log sink that
  // blocked (a full pipe) stalled every Acquire, hits included.
  mms::testing::TempDir t;
  const std::string file = t / "log";
  REQUIRE(Logger::Global().Configure({LogLevel::kInfo, file, false}).ok());
  LogDeferringMutex outer, inner;
  {
    std::unique_lock a(outer);
    LogInfo("first");
    {
      std::lock_guard b(inner);
      LogInfo("second");
    }
    CHECK(Text(file).empty());  // still under `outer`
    // Another thread holds no such lock: its line is written at once.
    std::thread([] { LogInfo("other_thread"); }).join();
    CHECK(Text(file).find("other_thread") != std::string::npos);
    LogWarn("third");
  }
  const std::string text = Text(file);
  const size_t first = text.find(" info first"), second = text.find(" info second"), third = text.find(" warn third");
  REQUIRE(first != std::string::npos);
  REQUIRE(second != std::string::npos);
  REQUIRE(third != std::string::npos);
  CHECK(first < second);
  CHECK(second < third);
  LogInfo("after");  // no lock held: at once
  CHECK(Text(file).find(" info after") != std::string::npos);
  REQUIRE(Logger::Global().Configure({LogLevel::kInfo, "", false}).ok());  // back to stderr for the other tests
}
