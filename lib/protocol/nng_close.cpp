#include "protocol/nng_close.h"

#include <nng/nng.h>

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <system_error>
#include <thread>

namespace mms::proto {

bool CloseSocketWithin(uint32_t sock_id, std::chrono::milliseconds wait) {
  static std::atomic<bool> stuck{false};
  struct Shared {
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
  };
  auto sh = std::make_shared<Shared>();
  try {
    std::thread([sock_id, sh] {
      nng_socket s;
      s.id = sock_id;
      nng_close(s);
      std::lock_guard<std::mutex> lock(sh->mu);
      sh->done = true;
      sh->cv.notify_all();
    }).detach();
  } catch (const std::system_error&) {
    return false;
  }
  std::unique_lock<std::mutex> lock(sh->mu);
  const bool done = sh->cv.wait_for(lock, stuck ? std::chrono::milliseconds(0) : wait, [&] { return sh->done; });
  if (!done) stuck = true;
  return done;
}

}  // namespace mms::proto
