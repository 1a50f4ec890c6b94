// ShadowRunner's lifecycle: stopping a shadow never waits for its worker.
#include <chrono>
#include <condition_variable>
#include <future>
#include <mutex>

#include <doctest/doctest.h>

#include "rollout/shadow.h"

namespace mms {
namespace {

TEST_CASE("stopping a shadow returns while its worker is still in a load") {
  std::mutex m;
  std::condition_variable cv;
  bool entered = false, release = false;
  ShadowRunner::Options o;
  o.acquire = [&](const PoolItem&) -> Result<Servable> {
    std::unique_lock<std::mutex> l(m);
    entered = true;
    cv.notify_all();
    cv.wait(l, [&] { return release; });
    return Status(Code::kUnavailable, "the load was given up");
  };
  auto runner = std::make_unique<ShadowRunner>(o);
  ShadowRecord rec;
  rec.id = 1;
  rec.model = "m";
  rec.candidate_version = "2";
  rec.state = "running";
  PoolItem item;
  item.key = 2;
  item.ref = "m:2";
  runner->Configure({{"m", {rec, item}}});
  REQUIRE(runner->Active("m"));
  Tensor t = Tensor::Alloc("x", DType::kFloat32, {1, 4});
  // Mirror only try-locks the queue (a worker holding it means a drop), so
  // offer jobs until the worker has taken one.
  bool got = false;
  for (int i = 0; i < 3000 && !got; ++i) {
    runner->Mirror("m", {t}, {t}, 1000);
    std::unique_lock<std::mutex> l(m);
    got = cv.wait_for(l, std::chrono::milliseconds(10), [&] { return entered; });
  }
  REQUIRE(got);

  // The daemon calls this under its registry-refresh lock: joining the
  // worker here would hold every refresh until the load ends.
  auto stop = std::async(std::launch::async, [&] { runner->Configure({}); });
  bool returned = stop.wait_for(std::chrono::seconds(20)) == std::future_status::ready;
  CHECK(returned);
  CHECK_FALSE(runner->Active("m"));
  auto stats = runner->Stats("m");
  REQUIRE(stats.ok());
  CHECK((*stats)["running"] == false);

  // A new shadow on the model starts while the old worker is still busy.
  rec.id = 2;
  runner->Configure({{"m", {rec, item}}});
  CHECK(runner->Active("m"));
  {
    std::lock_guard<std::mutex> l(m);
    release = true;
  }
  cv.notify_all();
  stop.wait();
  runner.reset();  // joins both workers
}

}  // namespace
}  // namespace mms
