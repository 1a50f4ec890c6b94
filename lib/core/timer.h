// TimerQueue: runs short callbacks at a time on the steady clock, on one
// thread of its own (e.g. answering a request whose deadline passes while
// it waits for a model to load).
//
// Ownership: owns its thread and the callbacks not yet run; the destructor
// joins the thread and drops (does not run) the callbacks still pending.
// Thread-safety: At() may be called from any thread, a callback included.
// Callbacks run one at a time, without the queue's lock; they must be quick
// and must not throw. There is no cancel: a callback that may no longer be
// wanted checks for itself (e.g. through a weak_ptr or an atomic flag).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <queue>
#include <thread>
#include <vector>

namespace mms {

class TimerQueue {
 public:
  using Time = std::chrono::steady_clock::time_point;
  TimerQueue();
  ~TimerQueue();
  TimerQueue(const TimerQueue&) = delete;
  TimerQueue& operator=(const TimerQueue&) = delete;

  // Runs `fn` at `when` (at once, on the timer thread, if that has passed).
  void At(Time when, std::function<void()> fn);
  // Runs `fn` `delay_ns` from now (0: as soon as the timer thread gets to it).
  void After(int64_t delay_ns, std::function<void()> fn);
  size_t pending() const;

 private:
  struct Entry {
    Time when;
    uint64_t seq;  // FIFO among equal times
    std::function<void()> fn;
    bool operator>(const Entry& o) const { return when != o.when ? when > o.when : seq > o.seq; }
  };
  void Loop();
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::priority_queue<Entry, std::vector<Entry>, std::greater<Entry>> heap_;  // guarded by mu_
  uint64_t seq_ = 0;                                                         // guarded by mu_
  bool stopping_ = false;                                                    // guarded by mu_
  std::thread thread_;
};

}  // namespace mms
