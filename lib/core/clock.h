// Clock: the injectable source of time. Production code takes a Clock* and
// never calls std::chrono::*::now() itself, so tests fast-forward time
// (canary stages, attribution windows, load backoff) with FakeClock.
//
// Thread-safety: all methods are safe to call concurrently.
#pragma once

#include <atomic>
#include <cstdint>

namespace mms {

class Clock {
 public:
  virtual ~Clock() = default;
  // Monotonic nanoseconds (arbitrary epoch); for durations and deadlines.
  virtual int64_t MonoNanos() const = 0;
  // Wall-clock milliseconds since the Unix epoch; for records shown to humans.
  virtual int64_t UnixMillis() const = 0;

  // The process-wide real clock. Never null, never destroyed.
  static Clock* Real();
};

// A clock that only moves when told to. Starts at mono=1s, unix=2026-01-01.
class FakeClock final : public Clock {
 public:
  int64_t MonoNanos() const override { return mono_.load(); }
  int64_t UnixMillis() const override { return unix_.load(); }
  void AdvanceNanos(int64_t ns) {
    mono_ += ns;
    unix_ += ns / 1000000;
  }
  void AdvanceMillis(int64_t ms) { AdvanceNanos(ms * 1000000); }
  void AdvanceSeconds(double s) { AdvanceNanos(static_cast<int64_t>(s * 1e9)); }

 private:
  std::atomic<int64_t> mono_{1000000000};
  std::atomic<int64_t> unix_{1767225600000};
};

}  // namespace mms
