#include <doctest/doctest.h>

#include <algorithm>
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

TEST_CASE("text lines quote values that are not plain words, so a value cannot forge a field or a line") {
  mms::testing::TempDir t;
  const std::string file = t / "log";
  REQUIRE(Logger::Global().Configure({LogLevel::kInfo, file, false}).ok());
  LogWarn("bad_request", {{"reason", "bad_json"},
                          {"detail", "last read: 'x' level=error model=forged\nfake line"},
                          {"empty", ""},
                          {"n", 3}});
  REQUIRE(Logger::Global().Configure({LogLevel::kInfo, "", false}).ok());
  const std::string text = Text(file);
  CHECK(text.find(" reason=bad_json\n") != std::string::npos);  // a plain word stays bare (keys in order: last)
  CHECK(text.find(R"( detail="last read: 'x' level=error model=forged\nfake line")") != std::string::npos);
  CHECK(text.find(" empty=\"\" ") != std::string::npos);
  CHECK(text.find(" n=3") != std::string::npos);
  CHECK(std::count(text.begin(), text.end(), '\n') == 1);  // one line
}

TEST_CASE("a log throttle lets one line per interval through per key, and counts those held back") {
  LogThrottle th(10);
  uint64_t held = 99;
  CHECK(th.Admit("a", 100, &held));
  CHECK(held == 0);
  CHECK_FALSE(th.Admit("a", 105, &held));
  CHECK_FALSE(th.Admit("a", 109, &held));
  CHECK(th.Admit("b", 109, &held));  // another key: its own interval
  CHECK(th.Admit("a", 110, &held));
  CHECK(held == 2);                  // the two held back since the last line
  CHECK_FALSE(th.Admit("a", 111, &held));
  // Past kMaxKeys, new keys share one: a client inventing keys cannot grow it.
  for (size_t k = 0; k < LogThrottle::kMaxKeys + 100; ++k) th.Admit("k" + std::to_string(k), 200, &held);
  CHECK_FALSE(th.Admit("another-new-key", 201, &held));
}
