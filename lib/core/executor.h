// Executor: a fixed set of worker threads draining one FIFO of tasks.
// Used for request handlers (off nng's callback threads) and model loads.
//
// Thread-safety: Submit may be called from any thread, including a task.
// Shutdown() stops accepting, runs what is queued, and joins; the destructor
// calls it. Tasks must not throw (an escaping exception is logged and dropped).
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace mms {

class Executor {
 public:
  Executor(std::string name, int threads);
  ~Executor();
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  // False (task not run) after Shutdown.
  bool Submit(std::function<void()> task);
  void Shutdown();
  size_t queued() const;
  int threads() const { return static_cast<int>(workers_.size()); }

 private:
  void Loop();
  const std::string name_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;  // guarded by mu_
  bool stopping_ = false;                    // guarded by mu_
  std::vector<std::thread> workers_;         // const after construction
};

}  // namespace mms
