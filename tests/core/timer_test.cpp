#include <doctest/doctest.h>

#include <atomic>
#include <functional>
#include <chrono>
#include <mutex>
#include <thread>
#include <vector>

#include "core/timer.h"

using namespace mms;
using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

namespace {
bool WaitUntil(const std::function<bool()>& cond, int ms = 5000) {
  for (int i = 0; i < ms / 2 && !cond(); ++i) std::this_thread::sleep_for(milliseconds(2));
  return cond();
}
}  // namespace

TEST_CASE("timers run in time order, not before their time, a past one at once") {
  TimerQueue q;
  std::mutex mu;
  std::vector<int> order;
  std::vector<Clock::time_point> ran(3);
  const auto t0 = Clock::now();
  auto add = [&](int id, int ms) {
    q.At(t0 + milliseconds(ms), [&, id] {
      std::lock_guard<std::mutex> lock(mu);
      order.push_back(id);
      ran[static_cast<size_t>(id)] = Clock::now();
    });
  };
  add(2, 120);
  add(1, 60);
  add(0, -1000);  // already past
  REQUIRE(WaitUntil([&] {
    std::lock_guard<std::mutex> lock(mu);
    return order.size() == 3;
  }));
  std::lock_guard<std::mutex> lock(mu);
  CHECK(order == std::vector<int>{0, 1, 2});
  CHECK(ran[1] >= t0 + milliseconds(60));
  CHECK(ran[2] >= t0 + milliseconds(120));
  CHECK(q.pending() == 0);
}

TEST_CASE("a callback may add timers, pending ones are dropped, not run, at destruction") {
  std::atomic<int> runs{0};
  std::atomic<bool> late{false};
  {
    TimerQueue q;
    q.At(Clock::now(), [&] {
      ++runs;
      q.At(Clock::now(), [&] { ++runs; });
    });
    REQUIRE(WaitUntil([&] { return runs == 2; }));
    q.At(Clock::now() + std::chrono::hours(1), [&] { late = true; });
    CHECK(q.pending() == 1);
  }  // ~TimerQueue does not wait for the hour
  CHECK_FALSE(late);
  CHECK(runs == 2);
}
