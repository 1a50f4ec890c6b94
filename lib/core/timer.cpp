#include "core/timer.h"

#include <pthread.h>

namespace mms {

TimerQueue::TimerQueue() : thread_([this] { Loop(); }) {}

TimerQueue::~TimerQueue() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void TimerQueue::At(Time when, std::function<void()> fn) {
  bool earliest;
  {
    std::lock_guard<std::mutex> lock(mu_);
    earliest = heap_.empty() || when < heap_.top().when;
    heap_.push(Entry{when, seq_++, std::move(fn)});
  }
  if (earliest) cv_.notify_one();
}

void TimerQueue::After(int64_t delay_ns, std::function<void()> fn) {
  At(std::chrono::steady_clock::now() + std::chrono::nanoseconds(delay_ns), std::move(fn));
}

size_t TimerQueue::pending() const {
  std::lock_guard<std::mutex> lock(mu_);
  return heap_.size();
}

void TimerQueue::Loop() {
  pthread_setname_np(pthread_self(), "mms-timer");
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    if (heap_.empty()) {
      cv_.wait(lock);
      continue;
    }
    // A copy: the wait releases the lock, and At() may move the heap's storage.
    if (const Time when = heap_.top().when; std::chrono::steady_clock::now() < when) {
      cv_.wait_until(lock, when);
      continue;
    }
    std::function<void()> fn = std::move(const_cast<Entry&>(heap_.top()).fn);
    heap_.pop();
    lock.unlock();
    fn();
    fn = nullptr;  // its captures go before the lock is retaken
    lock.lock();
  }
}

}  // namespace mms
