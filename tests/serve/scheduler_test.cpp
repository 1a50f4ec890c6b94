// Rate limiting, batching arithmetic and the scheduler, with a fake clock
// (limiter) and a fake model (scheduler) that records what it ran.
#include <doctest/doctest.h>

#include <new>

#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <future>
#include <set>
#include <thread>

#include "../pool/fake_loader.h"
#include "pool/model_pool.h"
#include "serve/batching.h"
#include "serve/rate_limiter.h"
#include "serve/scheduler.h"
#include "support/process.h"

using namespace mms;

TEST_CASE("token buckets: burst, refill, per model and per tenant, counted") {
  FakeClock clock;
  RateLimiter rl(&clock);
  rl.Configure({{"rec", {10, 3}}}, {{"acme", {1, 1}}}, std::nullopt, TokenLimit{100, 100});
  for (int i = 0; i < 3; ++i) CHECK(rl.Admit("rec", "").ok());
  auto no = rl.Admit("rec", "");
  CHECK(no.code() == Code::kRateLimited);
  CHECK(no.message().find("model 'rec' is over its rate limit (10 requests/s, burst 3)") == 0);
  clock.AdvanceMillis(100);  // one token back
  CHECK(rl.Admit("rec", "").ok());
  CHECK_FALSE(rl.Admit("rec", "").ok());
  CHECK(rl.Admit("other", "acme").ok());  // no model limit; the tenant's one token
  auto t = rl.Admit("other", "acme");
  CHECK(t.message().find("tenant 'acme'") == 0);
  CHECK(rl.Admit("other", "globex").ok());  // the default tenant limit applies
  auto stats = rl.Stats();
  CHECK(stats["models"]["rec"]["admitted"] == 4);
  CHECK(stats["models"]["rec"]["limited"] == 2);
  CHECK(stats["tenants"]["acme"]["limited"] == 1);
  // Which limit refused: rec's refusals were its own; acme's its own.
  CHECK(stats["models"]["rec"]["refused_by_limit"] == 2);
  CHECK(stats["tenants"]["acme"]["refused_by_limit"] == 1);
  CHECK(stats["models"]["other"]["limited"] == 1);  // refused by acme's limit,
  CHECK(stats["models"]["other"]["refused_by_limit"] == 0);  // not its own
  CHECK(stats["models"]["rec"]["refused_by_default"] == 0);
  // Refusals by a default limit are told apart from those by a key's own,
  // so setting or removing its own limit later does not move them.
  rl.Configure({{"rec", {10, 3}}}, {{"acme", {1, 1}}}, std::nullopt, TokenLimit{1, 1});
  CHECK(rl.Admit("m2", "dflt").ok());
  CHECK_FALSE(rl.Admit("m2", "dflt").ok());
  rl.Configure({{"rec", {10, 3}}}, {{"acme", {1, 1}}, {"dflt", {2, 1}}}, std::nullopt, TokenLimit{1, 1});
  CHECK_FALSE(rl.Admit("m2", "dflt").ok());  // its own (other) limit: the bucket keeps what it had, nothing
  clock.AdvanceMillis(500);                  // refilled at its own 2/s
  CHECK(rl.Admit("m2", "dflt").ok());
  CHECK_FALSE(rl.Admit("m2", "dflt").ok());
  stats = rl.Stats();
  CHECK(stats["tenants"]["dflt"]["refused_by_limit"] == 3);
  CHECK(stats["tenants"]["dflt"]["refused_by_default"] == 1);
  // A changed limit is no fresh burst: the (empty) bucket stays empty when its
  // burst is raised, and refills to the new burst at the new rate.
  rl.Configure({{"rec", {10, 3}}}, {}, std::nullopt, std::nullopt);
  for (int i = 0; i < 3; ++i) CHECK(rl.Admit("rec", "").ok());  // (refilled meanwhile: drained)
  CHECK_FALSE(rl.Admit("rec", "").ok());
  rl.Configure({{"rec", {10, 5}}}, {}, std::nullopt, std::nullopt);
  CHECK_FALSE(rl.Admit("rec", "").ok());
  clock.AdvanceMillis(1000);
  for (int i = 0; i < 5; ++i) CHECK(rl.Admit("rec", "").ok());
  CHECK_FALSE(rl.Admit("rec", "").ok());
  // A lowered limit caps what the bucket holds.
  clock.AdvanceMillis(1000);
  rl.Configure({{"rec", {1, 2}}}, {}, std::nullopt, std::nullopt);
  for (int i = 0; i < 2; ++i) CHECK(rl.Admit("rec", "").ok());
  CHECK_FALSE(rl.Admit("rec", "").ok());
  // A limit removed and set again starts full.
  rl.Configure({}, {}, std::nullopt, std::nullopt);
  rl.Configure({{"rec", {1, 2}}}, {}, std::nullopt, std::nullopt);
  for (int i = 0; i < 2; ++i) CHECK(rl.Admit("rec", "").ok());
  CHECK_FALSE(rl.Admit("rec", "").ok());
}

TEST_CASE("token buckets: an adapter's requests take a token from its base model's bucket too") {
  FakeClock clock;
  RateLimiter rl(&clock);
  rl.Configure({{"llm", {1, 2}}}, {}, std::nullopt, std::nullopt);
  CHECK(rl.Admit("acme-lora", "", "llm").ok());
  CHECK(rl.Admit("globex-lora", "", "llm").ok());
  // Two adapters took the base's two tokens: neither they nor the base get a third.
  auto no = rl.Admit("acme-lora", "", "llm");
  CHECK(no.code() == Code::kRateLimited);
  CHECK_MESSAGE(no.message().find("model 'llm', the base adapter 'acme-lora' runs on") == 0, no.message());
  CHECK(no.message().find("mms limit set llm") != std::string::npos);
  CHECK_FALSE(rl.Admit("llm", "").ok());
  auto stats = rl.Stats();
  CHECK(stats["models"]["acme-lora"]["limited"] == 1);
  CHECK(stats["models"]["acme-lora"]["refused_by_limit"] == 0);  // not by a limit of its own
  CHECK(stats["models"]["llm"]["refused_by_limit"] == 2);       // by the base's: acme-lora's and its own
  CHECK(stats["models"]["llm"]["admitted"] == 0);               // adapters' admissions are theirs
  // Refused by its own limit, the adapter leaves the base's tokens alone.
  clock.AdvanceMillis(2000);
  rl.Configure({{"llm", {1, 2}}, {"acme-lora", {1, 1}}}, {}, std::nullopt, std::nullopt);
  CHECK(rl.Admit("acme-lora", "", "llm").ok());
  CHECK_FALSE(rl.Admit("acme-lora", "", "llm").ok());
  CHECK(rl.Admit("llm", "").ok());  // the base's second token is still there
  CHECK_FALSE(rl.Admit("llm", "").ok());
}

TEST_CASE("token buckets: client-named tenants cannot grow the limiter without bound") {
  FakeClock clock;
  RateLimiter rl(&clock);
  rl.Configure({}, {{"hot", {0.0001, 1}}}, std::nullopt, TokenLimit{1, 1});
  CHECK(rl.Admit("m", "hot").ok());
  CHECK_FALSE(rl.Admit("m", "hot").ok());
  for (size_t i = 0; i < RateLimiter::kMaxTenants + 50; ++i) {
    if (i == RateLimiter::kMaxTenants / 2) clock.AdvanceMillis(10'000);  // the first half refill; "hot" does not
    REQUIRE(rl.Admit("m", "t" + std::to_string(i)).ok());
  }
  // Dropping idle buckets never forgives a tenant that is still over its limit.
  CHECK_FALSE(rl.Admit("m", "hot").ok());
  auto stats = rl.Stats();
  CHECK(stats["tenants"].size() == RateLimiter::kMaxTenants + 1);
  // The newcomers past the count cap had buckets of their own (idle ones
  // were dropped): counted together, not as the shared "(other)" bucket,
  // which decided nothing here; and with no one limit to show.
  const auto& together = stats["tenants"][RateLimiter::kCountedTogether];
  CHECK(together["admitted"] == 51);
  CHECK_FALSE(together.contains("qps"));
  CHECK_FALSE(stats["tenants"].contains(RateLimiter::kOtherTenants));
  CHECK(stats["tenants"]["hot"]["limited"] == 2);
}

TEST_CASE("token buckets: past the cap with no idle bucket, newcomers share one bucket") {
  FakeClock clock;
  RateLimiter rl(&clock);
  rl.Configure({}, {{"vip", {1, 1}}}, std::nullopt, TokenLimit{1, 1});
  clock.AdvanceMillis(5000);
  for (size_t i = 0; i < RateLimiter::kMaxTenants; ++i) REQUIRE(rl.Admit("m", "t" + std::to_string(i)).ok());
  // Every bucket is empty (busy): nothing to drop, so the newcomers share "(other)" (burst 1).
  CHECK(rl.Admit("m", "new-1").ok());
  auto second = rl.Admit("m", "new-2");
  CHECK(second.code() == Code::kRateLimited);
  // Not blamed on new-2's own use: it shares the bucket of tenants past the cap.
  CHECK(second.message().find("tenant 'new-2' came after") == 0);
  CHECK(second.message().find("mms limit set --tenant new-2") != std::string::npos);
  // A tenant with its own limit still gets its own bucket.
  CHECK(rl.Admit("m", "vip").ok());
  // A second later the old buckets are full again: the next newcomer gets its own.
  clock.AdvanceMillis(1500);
  CHECK(rl.Admit("m", "new-3").ok());
  CHECK(rl.Admit("m", "new-4").ok());
}

TEST_CASE("token buckets: requests without a tenant share the tenant (none) and its limit") {
  FakeClock clock;
  RateLimiter rl(&clock);
  // A default per-tenant limit: leaving the tenant out must not escape it.
  rl.Configure({}, {}, std::nullopt, TokenLimit{1, 2});
  CHECK(rl.Admit("m", "").ok());
  CHECK(rl.Admit("other-model", "").ok());
  auto no = rl.Admit("m", "");
  CHECK(no.code() == Code::kRateLimited);
  CHECK(no.message().find("requests without a tenant share the tenant '(none)'") == 0);
  CHECK(no.message().find("mms predict --tenant T") != std::string::npos);
  CHECK(rl.Admit("m", "acme").ok());  // a named tenant has a bucket of its own
  // Its own limit (mms limit set --tenant '(none)') replaces the default.
  // The bucket keeps what it had (none) and refills at the new rate.
  rl.Configure({}, {{RateLimiter::kNoTenant, {100, 100}}}, std::nullopt, TokenLimit{1, 2});
  CHECK_FALSE(rl.Admit("m", "").ok());
  clock.AdvanceMillis(1000);
  for (int i = 0; i < 50; ++i) REQUIRE(rl.Admit("m", "").ok());
  // Without any tenant limit, nothing limits it, and it is still counted.
  rl.Configure({}, {}, std::nullopt, std::nullopt);
  for (int i = 0; i < 50; ++i) REQUIRE(rl.Admit("m", "").ok());
  auto stats = rl.Stats();
  CHECK(stats["tenants"][RateLimiter::kNoTenant]["admitted"] == 102);
  CHECK(stats["tenants"][RateLimiter::kNoTenant]["limited"] == 2);
  CHECK(stats["models"]["m"]["limited"] == 2);
}

TEST_CASE("token buckets: a limit of 0, negative or NaN is no limit, a burst below one is one") {
  FakeClock clock;
  RateLimiter rl(&clock);
  const double nan = std::nan("");
  rl.Configure({{"zero", {0, 5}}, {"neg", {-1, 5}}, {"nan", {nan, 5}}, {"inf", {INFINITY, 5}}, {"half", {1, 0.5}},
                {"nanburst", {2, nan}}},
               {}, TokenLimit{-3, 2}, std::nullopt);
  for (const char* m : {"zero", "neg", "nan", "inf", "other"}) {
    INFO(m);
    for (int i = 0; i < 20; ++i) REQUIRE(rl.Admit(m, "").ok());  // never refused for good
    clock.AdvanceMillis(10'000);
    CHECK(rl.Admit(m, "").ok());
  }
  // A burst below one would refuse every request: it is one.
  CHECK(rl.Admit("half", "").ok());
  CHECK_FALSE(rl.Admit("half", "").ok());
  clock.AdvanceMillis(1000);
  CHECK(rl.Admit("half", "").ok());
  // A NaN burst is the qps (2), not a bucket that admits everything.
  CHECK(rl.Admit("nanburst", "").ok());
  CHECK(rl.Admit("nanburst", "").ok());
  CHECK_FALSE(rl.Admit("nanburst", "").ok());
  auto stats = rl.Stats();
  CHECK_FALSE(stats["models"]["zero"].contains("qps"));  // shown as unlimited
  CHECK(stats["models"]["half"]["burst"] == 1.0);
}

TEST_CASE("batching: rows, concatenation and splitting back") {
  auto make = [](float base, int64_t rows) {
    Tensor t = Tensor::Alloc("x", DType::kFloat32, {rows, 2});
    for (int64_t i = 0; i < rows * 2; ++i) reinterpret_cast<float*>(t.mutable_data())[i] = base + static_cast<float>(i);
    return std::vector<Tensor>{t};
  };
  auto a = make(0, 2), b = make(100, 3);
  CHECK(BatchRows(a).value() == 2);
  CHECK(SameBatchShape(a, b));
  auto cat = ConcatRows({&a, &b});
  REQUIRE(cat[0].shape == std::vector<int64_t>{5, 2});
  CHECK(cat[0].as<float>()[4] == 100.0f);
  auto parts = SplitRows(cat, {2, 3}).value();
  REQUIRE(parts.size() == 2);
  CHECK(parts[1][0].shape == std::vector<int64_t>{3, 2});
  CHECK(std::memcmp(parts[1][0].data.get(), b[0].data.get(), b[0].nbytes) == 0);
  // Mismatches.
  Tensor wide = Tensor::Alloc("x", DType::kFloat32, {1, 3});
  CHECK_FALSE(SameBatchShape(a, {wide}));
  Tensor y = Tensor::Alloc("y", DType::kFloat32, {3, 1});
  auto bad = BatchRows({a[0], y});
  CHECK(bad.status().message().find("disagree on rows") != std::string::npos);
  Tensor scalar = Tensor::Alloc("x", DType::kFloat32, {});
  CHECK_FALSE(BatchRows({scalar}).ok());
  Tensor pooled = Tensor::Alloc("out", DType::kFloat32, {2});
  CHECK(SplitRows({pooled}, {2, 3}).status().message().find("cannot be batched") != std::string::npos);
}

namespace {
// Returns its inputs, remembers the rows of each call, optionally blocks.
class EchoModel final : public Model {
 public:
  const std::vector<std::string>& input_names() const override { return names_; }
  const WeightLayout& layout() const override { return layout_; }
  const std::string& device() const override { return dev_; }
  Status Bind(std::shared_ptr<Buffer>, const std::string&) override { return Status::Ok(); }
  Status SaveWithoutWeights(const std::string&) override { return Status::Ok(); }
  Result<std::vector<Tensor>> Run(const std::vector<Tensor>& in) override {
    std::unique_lock<std::mutex> lock(mu);
    int64_t rows = in[0].shape.empty() ? 1 : in[0].shape[0];
    calls.push_back(rows);
    order.push_back(in[0].name);
    cv.wait(lock, [&] { return !gate && !held.count(in[0].name); });
    if (in[0].name == "throw") throw std::runtime_error("boom");
    if (refuse_negative)  // a model that raises on some values, like a real one's checks
      for (int64_t i = 0; i < in[0].numel(); ++i)
        if (in[0].as<float>()[i] < 0) return Status(Code::kModelError, "negative input at " + std::to_string(i));
    if (slow_clock) {  // this execution "takes" slow_ns (or its tag's cost)
      auto c = cost_ns.find(in[0].name);
      slow_clock->AdvanceNanos(c != cost_ns.end() ? c->second : slow_ns);
    }
    if (reduce) {  // one scalar for the whole call: the rows it saw
      Tensor t = Tensor::Alloc("rows", DType::kFloat32, {});
      *reinterpret_cast<float*>(t.mutable_data()) = static_cast<float>(rows);
      return std::vector<Tensor>{t};
    }
    return in;
  }
  std::mutex mu;
  std::condition_variable cv;
  bool gate = false;
  bool reduce = false;             // return a scalar instead of the inputs
  bool refuse_negative = false;    // a negative value in x makes the call fail
  FakeClock* slow_clock = nullptr;  // advanced by slow_ns in each Run
  int64_t slow_ns = 0;
  std::map<std::string, int64_t> cost_ns;  // per input name, instead of slow_ns
  std::set<std::string> held;               // input names whose runs wait (besides the gate) until Let()
  void Let(const std::string& name) {
    std::lock_guard<std::mutex> l(mu);
    held.erase(name);
    cv.notify_all();
  }
  std::vector<int64_t> calls;
  std::vector<std::string> order;
  void Open() {
    std::lock_guard<std::mutex> l(mu);
    gate = false;
    cv.notify_all();
  }

 private:
  std::vector<std::string> names_{"x"};
  WeightLayout layout_;
  std::string dev_ = "cpu";
};

class EchoLoader final : public Loader {
 public:
  explicit EchoLoader(EchoModel** out) : out_(out) {}
  Result<HostModel> Load(const Source&, const HostAllocator& alloc) override {
    auto m = std::make_unique<EchoModel>();
    *out_ = m.get();
    return HostModel{*alloc(64), std::move(m)};
  }
  EchoModel** out_;
};

struct Rig {
  EchoModel* model = nullptr;
  std::unique_ptr<ModelPool> pool;
  HandlePtr handle;
  Rig() {
    std::vector<std::unique_ptr<Device>> devs;
    devs.push_back(CreateDevice("cpu", 1 << 20).value());
    ModelPool::Options o;
    o.host_budget = 1 << 20;
    pool = ModelPool::Create(o, std::move(devs), std::make_unique<EchoLoader>(&model), MakeHostAllocator(false)).value();
    PoolItem it;
    it.key = 1;
    it.ref = "echo:1";
    it.bytes = 64;
    handle = pool->AcquireSync(it).value();
  }
  // Occupies a one-worker scheduler: a request on `key` that runs until model->Open().
  std::thread Hold(Scheduler& s, PoolKey key) {
    size_t before;
    {
      std::lock_guard<std::mutex> l(model->mu);
      before = model->calls.size();
      model->gate = true;
    }
    std::thread t([this, &s, key] { (void)s.Submit(key, Job("hold", 1)); });
    REQUIRE(mms::testing::WaitFor([&] { std::lock_guard<std::mutex> l(model->mu); return model->calls.size() == before + 1; }, 5));
    return t;
  }
  Scheduler::Job Job(const std::string& tag, int64_t rows, int priority = 1, int max_batch = 0,
                     std::function<void(Result<std::vector<Tensor>>)> done = {}) {
    Scheduler::Job j;
    j.handle = handle;
    j.inputs = {Tensor::Alloc(tag, DType::kFloat32, {rows, 2})};
    j.priority = priority;
    j.max_batch = max_batch;
    j.batch_delay_ns = 50'000'000;
    j.done = done ? done : [](Result<std::vector<Tensor>>) {};
    return j;
  }
};

// A one-worker scheduler's options (most tests hold its only worker to
// queue requests behind it), on `clock`.
Scheduler::Options OneWorker(Clock* clock = Clock::Real()) {
  Scheduler::Options o;
  o.workers = 1;
  o.clock = clock;
  return o;
}

}  // namespace

TEST_CASE("scheduler: an idle scheduler runs a request at once, a full queue refuses") {
  Rig rig;
  Scheduler::Options o = OneWorker();
  o.queue_depth = 2;
  Scheduler s(o);
  std::atomic<int> done{0};
  REQUIRE(s.Submit(1, rig.Job("a", 1, 1, 0, [&](Result<std::vector<Tensor>> r) { done += r.ok(); })).ok());
  CHECK(done == 1);  // ran inline
  rig.model->gate = true;
  std::thread blocker([&] { (void)s.Submit(1, rig.Job("b", 1, 1, 0, [&](Result<std::vector<Tensor>>) { ++done; })); });
  REQUIRE(mms::testing::WaitFor([&] { std::lock_guard<std::mutex> l(rig.model->mu); return rig.model->calls.size() == 2; }, 5));
  CHECK(s.Submit(1, rig.Job("c", 1)).ok());
  CHECK(s.Submit(1, rig.Job("d", 1)).ok());
  auto full = s.Submit(1, rig.Job("e", 1));
  CHECK(full.code() == Code::kOverloaded);
  CHECK(full.message().find("[scheduler] queue_depth") != std::string::npos);
  CHECK(full.message().find("echo:1 has 2 requests queued") == 0);
  // An adapter with a queue of its own runs on its base's handle: the
  // message names the queue's owner, as mms pool does.
  Scheduler::Job adapter = rig.Job("f", 1);
  adapter.queue_ref = "cust-a:1";
  auto named = s.Submit(1, std::move(adapter));
  CHECK(named.message().find("cust-a:1 has 2 requests queued") == 0);
  rig.model->Open();
  blocker.join();
  REQUIRE(mms::testing::WaitFor([&] { return s.queued() == 0; }, 5));
  CHECK(s.Stats()["1"]["overloaded"] == 2);
}

TEST_CASE("scheduler: zero workers means one, and queued requests are still answered") {
  Rig rig;
  Scheduler::Options o;
  o.workers = 0;
  Scheduler s(o);
  std::thread first = rig.Hold(s, 1);
  std::atomic<int> n{0};
  for (int i = 0; i < 3; ++i) REQUIRE(s.Submit(1, rig.Job("q", 1, 1, 0, [&](Result<std::vector<Tensor>> r) { n += r.ok(); })).ok());
  rig.model->Open();
  first.join();
  CHECK(mms::testing::WaitFor([&] { return n == 3; }, 5));
}

TEST_CASE("scheduler: a removed version's queue goes once it is empty and idle, not before") {
  Rig rig;
  Scheduler s(OneWorker());
  std::atomic<int> n{0};
  REQUIRE(s.Submit(1, rig.Job("a", 1, 1, 0, [&](Result<std::vector<Tensor>> r) { n += r.ok(); })).ok());
  REQUIRE(s.Stats().contains("1"));
  // Busy (one running, one queued): kept, and its requests answered.
  std::thread running = rig.Hold(s, 1);
  REQUIRE(s.Submit(1, rig.Job("b", 1, 1, 0, [&](Result<std::vector<Tensor>> r) { n += r.ok(); })).ok());
  s.Forget(1);  // once, as the daemon calls it
  CHECK(s.Stats().contains("1"));
  rig.model->Open();
  running.join();
  REQUIRE(mms::testing::WaitFor([&] { return n == 2 && s.queued() == 0; }, 5));
  // Its last request answered: gone (every dispatch scanned the queues of
  // removed versions for ever).
  CHECK(mms::testing::WaitFor([&] { return !s.Stats().contains("1"); }, 5));
  // A request that resolved the version before its removal still runs, and
  // its queue goes with it.
  REQUIRE(s.Submit(1, rig.Job("c", 1, 1, 0, [&](Result<std::vector<Tensor>> r) { n += r.ok(); })).ok());
  CHECK(mms::testing::WaitFor([&] { return n == 3 && !s.Stats().contains("1"); }, 5));
  s.Forget(7);  // never seen: nothing to do
}

TEST_CASE("scheduler: higher classes first, lower ones never starved") {
  Rig rig;
  Scheduler::Options o = OneWorker();
  o.starvation_interval = 4;
  Scheduler s(o);
  std::thread first = rig.Hold(s, 1);
  std::atomic<int> n{0};
  auto count = [&](Result<std::vector<Tensor>>) { ++n; };
  // Separate versions (keys) per class, as in the daemon.
  for (int i = 0; i < 3; ++i) REQUIRE(s.Submit(30, rig.Job("low", 1, 2, 0, count)).ok());
  for (int i = 0; i < 6; ++i) REQUIRE(s.Submit(10, rig.Job("high", 1, 0, 0, count)).ok());
  rig.model->Open();
  first.join();
  REQUIRE(mms::testing::WaitFor([&] { return n == 9; }, 5));
  std::vector<std::string> order(rig.model->order.begin() + 1, rig.model->order.end());
  REQUIRE(order.size() == 9);
  // The first low request runs before all the high ones are done (its bounded share).
  auto first_low = std::find(order.begin(), order.end(), "low") - order.begin();
  CHECK(first_low < 6);
  CHECK(order[0] == "high");
}

TEST_CASE("scheduler: a lower class keeps its share however many higher versions take turns") {
  Rig rig;
  Scheduler::Options o = OneWorker();
  o.starvation_interval = 4;
  Scheduler s(o);
  std::thread first = rig.Hold(s, 1);
  std::atomic<int> n{0};
  auto count = [&](Result<std::vector<Tensor>>) { ++n; };
  // Ten high versions, queued first, then one low: every 4th dispatch is the
  // guard's and must reach the low class, not another high version's turn.
  for (int k = 0; k < 10; ++k) REQUIRE(s.Submit(100 + k, rig.Job("high", 1, 0, 0, count)).ok());
  for (int i = 0; i < 3; ++i) REQUIRE(s.Submit(30, rig.Job("low", 1, 2, 0, count)).ok());
  rig.model->Open();
  first.join();
  REQUIRE(mms::testing::WaitFor([&] { return n == 13; }, 5));
  std::vector<std::string> order(rig.model->order.begin() + 1, rig.model->order.end());
  REQUIRE(order.size() == 13);
  std::vector<size_t> lows;
  for (size_t i = 0; i < order.size(); ++i)
    if (order[i] == "low") lows.push_back(i);
  REQUIRE(lows.size() == 3);
  CHECK(lows[0] < 4);
  CHECK(lows[1] < 8);
}

TEST_CASE("scheduler: requests arriving together run as one batch, each gets its rows") {
  Rig rig;
  Scheduler::Options o = OneWorker();
  Scheduler s(o);
  std::thread first = rig.Hold(s, 2);
  std::vector<int64_t> got(4, -1);
  for (int i = 0; i < 4; ++i)
    REQUIRE(s.Submit(1, rig.Job("x", i + 1, 1, 16, [&, i](Result<std::vector<Tensor>> r) {
                   got[static_cast<size_t>(i)] = r.ok() ? (*r)[0].shape[0] : -1;
                 })).ok());
  rig.model->Open();
  first.join();
  REQUIRE(mms::testing::WaitFor([&] { return got[3] != -1; }, 5));
  CHECK(got == std::vector<int64_t>{1, 2, 3, 4});
  CHECK(rig.model->calls == std::vector<int64_t>{1, 10});  // one batch of 1+2+3+4 rows
  CHECK(s.Stats()["1"]["batches"] == 1);
  CHECK(s.Stats()["1"]["executed"] == 4);
  // A lone request waits at most the batch delay.
  std::atomic<bool> ran{false};
  REQUIRE(s.Submit(1, rig.Job("x", 2, 1, 16, [&](Result<std::vector<Tensor>>) { ran = true; })).ok());
  CHECK(mms::testing::WaitFor([&] { return ran.load(); }, 2));
  // Rows that disagree within one request are refused up front.
  Scheduler::Job bad = rig.Job("x", 2, 1, 16);
  bad.inputs.push_back(Tensor::Alloc("y", DType::kFloat32, {3, 2}));
  CHECK(s.Submit(1, std::move(bad)).code() == Code::kInvalidArgument);
}

TEST_CASE("scheduler: a batch passes over requests of another shape, left in order for their own batch") {
  // A sequence model's requests of one length (--variable-dim) run together
  // however lengths interleave: a batch stopped at the first other shape
  // (also when that one would not have fitted: it is passed over all the same).
  Rig rig;
  Scheduler s(OneWorker());
  std::thread first = rig.Hold(s, 2);
  auto job = [&](int64_t rows, int64_t width, std::vector<int64_t>* out) {
    Scheduler::Job j = rig.Job("x", rows, 1, 8, [out](Result<std::vector<Tensor>> r) {
      out->push_back(r.ok() ? (*r)[0].shape[1] : -1);
    });
    j.inputs = {Tensor::Alloc("x", DType::kFloat32, {rows, width})};
    return j;
  };
  std::vector<int64_t> a, b;  // the widths each caller got back
  REQUIRE(s.Submit(1, job(1, 3, &a)).ok());
  REQUIRE(s.Submit(1, job(8, 5, &b)).ok());
  REQUIRE(s.Submit(1, job(1, 3, &a)).ok());
  REQUIRE(s.Submit(1, job(1, 3, &a)).ok());
  REQUIRE(s.Submit(1, job(1, 5, &b)).ok());
  rig.model->Open();
  first.join();
  REQUIRE(mms::testing::WaitFor([&] { std::lock_guard<std::mutex> l(rig.model->mu); return rig.model->calls.size() == 4; }, 5));
  CHECK(rig.model->calls == std::vector<int64_t>{1, 3, 8, 1});  // the hold; A A A; B (full); B
  REQUIRE(mms::testing::WaitFor([&] { return a.size() == 3 && b.size() == 2; }, 5));
  CHECK(a == std::vector<int64_t>{3, 3, 3});
  CHECK(b == std::vector<int64_t>{5, 5});
  CHECK(s.Stats()["1"]["batches"] == 3);
}

TEST_CASE("scheduler: requests queued before their version was batched run alone, those after batch") {
  // mms model batching turns a running version's batching on: requests
  // queued unbatched (their rows never checked to agree) must not join.
  Rig rig;
  Scheduler s(OneWorker());
  std::thread first = rig.Hold(s, 2);
  std::atomic<int> n{0};
  auto done = [&](Result<std::vector<Tensor>> r) {
    CHECK(r.ok());
    ++n;
  };
  for (int i = 0; i < 2; ++i) REQUIRE(s.Submit(1, rig.Job("x", 1, 1, 0, done)).ok());
  for (int i = 0; i < 3; ++i) REQUIRE(s.Submit(1, rig.Job("x", 2, 1, 16, done)).ok());
  rig.model->Open();
  first.join();
  REQUIRE(mms::testing::WaitFor([&] { return n == 5; }, 5));
  CHECK(rig.model->calls == std::vector<int64_t>{1, 1, 1, 6});  // the hold, two alone, one batch of 2+2+2
  // And the other way: queued batched, the version then unbatched.
  std::thread again = rig.Hold(s, 2);
  for (int i = 0; i < 2; ++i) REQUIRE(s.Submit(1, rig.Job("x", 2, 1, 16, done)).ok());
  REQUIRE(s.Submit(1, rig.Job("x", 3, 1, 0, done)).ok());
  rig.model->Open();
  again.join();
  REQUIRE(mms::testing::WaitFor([&] { return n == 8; }, 5));
  // (the last submit made the queue unbatched: each runs alone)
  CHECK(rig.model->calls == std::vector<int64_t>{1, 1, 1, 6, 1, 2, 2, 3});
  CHECK(s.Stats()["1"]["queued"] == 0);
  CHECK(s.Stats()["1"]["queued_rows"] == 0);  // each job took off what it added, whatever the version's batching then
}

TEST_CASE("scheduler: a batch that fails for one caller's input runs each request alone, the others succeed") {
  // A tenant's bad values used to fail every caller batched with it, with
  // that tenant's error text.
  Rig rig;
  Scheduler s(OneWorker());
  std::thread first = rig.Hold(s, 2);
  rig.model->refuse_negative = true;
  std::vector<Status> got(3, Status(Code::kInternal, "not answered"));
  std::atomic<int> n{0};
  for (int i = 0; i < 3; ++i) {
    Scheduler::Job j = rig.Job("x", 2, 1, 16, [&, i](Result<std::vector<Tensor>> r) {
      got[static_cast<size_t>(i)] = r.status();
      ++n;
    });
    if (i == 1) reinterpret_cast<float*>(j.inputs[0].mutable_data())[3] = -1;
    REQUIRE(s.Submit(1, std::move(j)).ok());
  }
  rig.model->Open();
  first.join();
  REQUIRE(mms::testing::WaitFor([&] { return n == 3; }, 5));
  CHECK(got[0].ok());
  CHECK(got[1].code() == Code::kModelError);
  CHECK(got[1].message() == "negative input at 3");  // its own row: index 3 of its input, not of the batch
  CHECK(got[2].ok());
  // The batch, then its halves: the first alone (2 rows) succeeds, the
  // second (4 rows) fails again and splits into its two requests.
  CHECK(rig.model->calls == std::vector<int64_t>{1, 6, 2, 4, 2, 2});
  CHECK(s.Stats()["1"]["reruns"] == 1);
  CHECK(s.Stats()["1"]["max_batch"] == 16);  // still batched
}

TEST_CASE("scheduler: a batch in which every request fails stops halving after the first half") {
  Rig rig;
  Scheduler s(OneWorker());
  std::thread first = rig.Hold(s, 2);
  rig.model->refuse_negative = true;
  std::atomic<int> failed{0}, n{0};
  for (int i = 0; i < 8; ++i) {
    Scheduler::Job j = rig.Job("x", 1, 1, 16, [&](Result<std::vector<Tensor>> r) {
      failed += r.status().code() == Code::kModelError;
      ++n;
    });
    reinterpret_cast<float*>(j.inputs[0].mutable_data())[0] = -1;
    REQUIRE(s.Submit(1, std::move(j)).ok());
  }
  rig.model->Open();
  first.join();
  REQUIRE(mms::testing::WaitFor([&] { return n == 8; }, 5));
  CHECK(failed == 8);
  // The batch (8), its first half bisected (4; 2, 2; 1, 1, 1, 1), then the
  // other four alone: 12 executions, not the 15 of halving to the end.
  CHECK(rig.model->calls == std::vector<int64_t>{1, 8, 4, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1});
}

TEST_CASE("scheduler: a request that would miss its deadline is dropped before running") {
  Rig rig;
  FakeClock clock;
  Scheduler::Options o = OneWorker(&clock);
  Scheduler s(o);
  std::thread first = rig.Hold(s, 1);
  Status got;
  Scheduler::Job j = rig.Job("late", 1, 1, 0, [&](Result<std::vector<Tensor>> r) { got = r.status(); });
  j.deadline_ns = clock.MonoNanos() + 1'000'000;  // 1 ms
  REQUIRE(s.Submit(1, std::move(j)).ok());
  clock.AdvanceMillis(5);  // it waited past its deadline
  rig.model->Open();
  first.join();
  REQUIRE(mms::testing::WaitFor([&] { return got.code() != Code::kOk; }, 5));
  CHECK(got.code() == Code::kDeadlineExceeded);
  CHECK(got.message().find("give a longer --deadline-ms") != std::string::npos);  // what to do
  CHECK(s.Stats()["1"]["deadline_drops"] == 1);
  std::lock_guard<std::mutex> l(rig.model->mu);
  CHECK(std::find(rig.model->order.begin(), rig.model->order.end(), "late") == rig.model->order.end());
}

TEST_CASE("scheduler: a batch whose oldest request would miss its deadline by waiting goes early") {
  Rig rig;
  FakeClock clock;
  Scheduler::Options o = OneWorker(&clock);
  o.batch_when_idle = false;  // (the delay's rule, a worker free)
  Scheduler s(o);
  Result<std::vector<Tensor>> got = Status(Code::kInternal, "not yet");
  std::atomic<bool> answered{false};
  Scheduler::Job j = rig.Job("x", 1, 1, 16, [&](Result<std::vector<Tensor>> r) {
    got = std::move(r);
    answered = true;
  });
  j.deadline_ns = clock.MonoNanos() + 10'000'000;  // well inside the 50 ms batch delay
  REQUIRE(s.Submit(1, std::move(j)).ok());
  clock.AdvanceMillis(10);
  REQUIRE(mms::testing::WaitFor([&] { return answered.load(); }, 5));
  CHECK(got.ok());
}

TEST_CASE("scheduler: handles are released before the answer, a throwing model answers INTERNAL") {
  Rig rig;
  Scheduler::Options o = OneWorker();
  Scheduler s(o);
  long holders = -1;
  Status st;
  REQUIRE(s.Submit(1, rig.Job("throw", 1, 1, 0, [&](Result<std::vector<Tensor>> r) {
                 holders = rig.handle.use_count();  // the rig's own reference alone
                 st = r.status();
               })).ok());
  CHECK(holders == 1);
  CHECK(st.code() == Code::kInternal);
  CHECK(st.message().find("boom") != std::string::npos);
  // The scheduler still serves after the exception (its worker count restored).
  bool ok = false;
  REQUIRE(s.Submit(1, rig.Job("x", 1, 1, 0, [&](Result<std::vector<Tensor>> r) { ok = r.ok(); })).ok());
  CHECK(ok);
}

TEST_CASE("scheduler: Stop answers queued requests CANCELLED and refuses new ones") {
  Rig rig;
  Scheduler::Options o = OneWorker();
  Scheduler s(o);
  std::thread first = rig.Hold(s, 1);
  std::vector<Code> codes;
  std::mutex mu;
  for (int i = 0; i < 3; ++i)
    REQUIRE(s.Submit(1, rig.Job("q", 1, 1, 0, [&](Result<std::vector<Tensor>> r) {
                   std::lock_guard<std::mutex> l(mu);
                   codes.push_back(r.status().code());
                 })).ok());
  std::thread stopper([&] { s.Stop(); });
  REQUIRE(mms::testing::WaitFor([&] { std::lock_guard<std::mutex> l(mu); return codes.size() == 3; }, 5));
  CHECK(codes == std::vector<Code>(3, Code::kCancelled));
  CHECK(s.Submit(1, rig.Job("late", 1)).code() == Code::kCancelled);
  rig.model->Open();  // the running request finishes; Stop joins its worker
  first.join();
  stopper.join();
  s.Stop();  // idempotent
  CHECK(s.queued() == 0);
}

TEST_CASE("scheduler: queues of one class take turns across keys, oldest first among equals") {
  // Each version (and in mode (a) each adapter) has its own queue: a busy one
  // must not make a later-arriving one wait behind all of its requests. A
  // helper measured 9-13 s for a tiny model behind 16 clients of a slow one
  // when the oldest request of all went first.
  Rig rig;
  Scheduler::Options o = OneWorker();
  Scheduler s(o);
  std::thread first = rig.Hold(s, 9);
  std::atomic<int> n{0};
  auto count = [&](Result<std::vector<Tensor>>) { ++n; };
  REQUIRE(s.Submit(1, rig.Job("A1", 1, 1, 0, count)).ok());
  REQUIRE(s.Submit(1, rig.Job("A2", 1, 1, 0, count)).ok());
  REQUIRE(s.Submit(2, rig.Job("B1", 1, 1, 0, count)).ok());
  REQUIRE(s.Submit(1, rig.Job("A3", 1, 1, 0, count)).ok());
  REQUIRE(s.Submit(3, rig.Job("C1", 1, 1, 0, count)).ok());
  rig.model->Open();
  first.join();
  REQUIRE(mms::testing::WaitFor([&] { return n == 5; }, 5));
  std::vector<std::string> order(rig.model->order.begin() + 1, rig.model->order.end());
  CHECK(order == std::vector<std::string>{"A1", "B1", "C1", "A2", "A3"});
}

TEST_CASE("scheduler: versions share the workers by execution time, and idling earns no credit") {
  // Turns per dispatch gave a version of 100 ms calls 100 ms for every 1 ms
  // of a fast version's, both saturated: the fast version's clients got 1%.
  Rig rig;
  FakeClock clock;
  Scheduler s(OneWorker(&clock));
  rig.model->slow_clock = &clock;
  rig.model->cost_ns = {{"slow", 100'000'000}, {"fast", 1'000'000}, {"hold", 0}};
  std::thread first = rig.Hold(s, 9);
  std::atomic<int> n{0};
  auto count = [&](Result<std::vector<Tensor>>) { ++n; };
  for (int i = 0; i < 3; ++i) REQUIRE(s.Submit(1, rig.Job("slow", 1, 1, 0, count)).ok());
  for (int i = 0; i < 150; ++i) REQUIRE(s.Submit(2, rig.Job("fast", 1, 1, 0, count)).ok());
  rig.model->Open();
  first.join();
  REQUIRE(mms::testing::WaitFor([&] { return n == 153; }, 10));
  auto slow_at = [&](size_t from) {
    std::vector<size_t> at;
    for (size_t i = from; i < rig.model->order.size(); ++i)
      if (rig.model->order[i] == "slow") at.push_back(i - from);
    return at;
  };
  // After "hold": slow (older) first, then fast until it has used as much
  // time (100 calls of 1 ms), then slow again. Turns would give 1, 3, 5.
  auto at = slow_at(1);
  REQUIRE(at.size() == 3);
  CHECK(at[0] == 0);
  CHECK(at[1] >= 90);
  CHECK(at[1] <= 110);
  CHECK(at[2] == 152);  // the remaining fast calls took less than its 100 ms

  // The fast version idles while slow runs five calls; then both are busy
  // again. Fast starts from the latest dispatch's start, so it gets about one
  // slow call's worth first (100 calls), not the 500 ms that slow used
  // meanwhile, which would hold slow up for 500 calls.
  const size_t before = rig.model->order.size();
  n = 0;
  std::thread again = rig.Hold(s, 9);
  for (int i = 0; i < 5; ++i) REQUIRE(s.Submit(1, rig.Job("slow", 1, 1, 0, count)).ok());
  rig.model->Open();
  again.join();
  REQUIRE(mms::testing::WaitFor([&] { return n == 5; }, 10));
  n = 0;
  std::thread third = rig.Hold(s, 9);
  for (int i = 0; i < 300; ++i) REQUIRE(s.Submit(2, rig.Job("fast", 1, 1, 0, count)).ok());
  REQUIRE(s.Submit(1, rig.Job("slow", 1, 1, 0, count)).ok());
  rig.model->Open();
  third.join();
  REQUIRE(mms::testing::WaitFor([&] { return n == 301; }, 10));
  at = slow_at(before + 1 + 5 + 1);  // after the hold, the five slow calls and the second hold
  REQUIRE(at.size() == 1);
  CHECK(at[0] >= 90);
  CHECK(at[0] <= 110);
}

TEST_CASE("scheduler: a version not yet measured runs one execution at a time until its first ends") {
  // Charged nothing at dispatch (no estimate), a new slow version looked free
  // and took every worker before its first run ended.
  Rig rig;
  Scheduler::Options o;
  o.workers = 2;
  Scheduler s(o);
  std::atomic<int> n{0};
  auto count = [&](Result<std::vector<Tensor>> r) { n += r.ok(); };
  auto calls = [&] { std::lock_guard<std::mutex> l(rig.model->mu); return rig.model->calls.size(); };
  rig.model->gate = true;
  std::thread first([&] { (void)s.Submit(3, rig.Job("new", 1, 1, 0, count)); });  // runs inline, held
  REQUIRE(mms::testing::WaitFor([&] { return calls() == 1; }, 5));
  // (On threads: were they run inline instead of queued, they would block here.)
  std::thread second([&] { (void)s.Submit(3, rig.Job("new", 1, 1, 0, count)); });
  std::thread third([&] { (void)s.Submit(3, rig.Job("new", 1, 1, 0, count)); });
  REQUIRE(mms::testing::WaitFor([&] { return s.queued() == 2 || calls() > 1; }, 5));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHECK(calls() == 1);  // a worker is free, but the version's first run has not ended
  CHECK(s.queued() == 2);
  // Another version still gets the free worker.
  REQUIRE(s.Submit(4, rig.Job("other", 1, 1, 0, count)).ok());
  REQUIRE(mms::testing::WaitFor([&] { return calls() == 2; }, 5));
  rig.model->Open();
  first.join();
  second.join();
  third.join();
  REQUIRE(mms::testing::WaitFor([&] { return n == 4; }, 5));
  // Measured now: both workers take its requests.
  rig.model->gate = true;
  const size_t before = calls();
  std::thread a([&] { (void)s.Submit(3, rig.Job("new", 1, 1, 0, count)); });
  REQUIRE(mms::testing::WaitFor([&] { return calls() == before + 1; }, 5));
  std::thread b([&] { (void)s.Submit(3, rig.Job("new", 1, 1, 0, count)); });  // (inline too: a worker is free)
  CHECK(mms::testing::WaitFor([&] { return calls() == before + 2; }, 5));
  rig.model->Open();
  a.join();
  b.join();
  CHECK(mms::testing::WaitFor([&] { return n == 6; }, 5));
}

TEST_CASE("scheduler: a job that bounds its thread's execution leaves a longer or unmeasured one to a worker") {
  // mmsd's receiving thread runs only short executions itself (Job::inline_max_ns).
  FakeClock clock;
  Rig rig;
  rig.model->slow_clock = &clock;  // each execution "takes" slow_ns
  Scheduler s(OneWorker(&clock));
  const std::thread::id me = std::this_thread::get_id();
  auto ran_on = [&](PoolKey key, int64_t cost_ns, int64_t bound_ns) {
    rig.model->slow_ns = cost_ns;
    std::promise<std::thread::id> where;
    std::future<std::thread::id> got = where.get_future();
    auto j = rig.Job("x", 1, 1, 0, [&](Result<std::vector<Tensor>> r) {
      CHECK(r.ok());
      where.set_value(std::this_thread::get_id());
    });
    j.inline_max_ns = bound_ns;
    REQUIRE(s.Submit(key, std::move(j)).ok());
    REQUIRE(got.wait_for(std::chrono::seconds(5)) == std::future_status::ready);
    return got.get();
  };
  CHECK(ran_on(1, 100'000, 250'000) != me);  // not measured yet: a worker, though the scheduler is idle
  CHECK(ran_on(1, 100'000, 250'000) == me);  // measured at 100 us, within the bound: here
  CHECK(ran_on(2, 10'000'000, 250'000) != me);
  CHECK(ran_on(2, 10'000'000, 250'000) != me);  // measured at 10 ms: still a worker's
  CHECK(ran_on(2, 10'000'000, -1) == me);       // unbounded, the submitting thread runs it
  CHECK(ran_on(1, 100'000, 0) != me);           // 0: never here
  CHECK(s.Stats()["2"]["executed"] == 3);
  CHECK(s.Stats()["2"]["executed_inline"] == 1);
  CHECK(s.Stats()["1"]["executed_inline"] == 1);
}

TEST_CASE("scheduler: a new version's estimate starts from the fastest of its first executions") {
  // A TorchScript module's first run (profiling) takes many times a warm one:
  // averaged in, it kept a 0.1 ms model's estimate over the receiving
  // thread's 250 us bound for its first calls.
  FakeClock clock;
  Rig rig;
  rig.model->slow_clock = &clock;
  Scheduler s(OneWorker(&clock));
  const std::thread::id me = std::this_thread::get_id();
  // One request on `key` bounded to 250 us on this thread, taking `cost_ns`
  // ("throw": failing at once) on `on`'s model instance: did it run here?
  auto run_on = [&](Rig& on, PoolKey key, int64_t cost_ns, const std::string& tag = "x") {
    on.model->slow_clock = &clock;
    on.model->slow_ns = cost_ns;
    std::promise<std::thread::id> where;
    std::future<std::thread::id> got = where.get_future();
    auto j = on.Job(tag, 1, 1, 0, [&](Result<std::vector<Tensor>> r) {
      CHECK(r.ok() == (tag != "throw"));
      where.set_value(std::this_thread::get_id());
    });
    j.inline_max_ns = 250'000;
    REQUIRE(s.Submit(key, std::move(j)).ok());
    REQUIRE(got.wait_for(std::chrono::seconds(5)) == std::future_status::ready);
    return got.get() == me;
  };
  auto run = [&](int64_t cost_ns) { return run_on(rig, 1, cost_ns); };
  auto estimate_ms = [&](PoolKey key = 1) { return s.Stats()[std::to_string(key)]["exec_ms"].get<double>(); };
  CHECK_FALSE(run(10'000'000));  // unmeasured: a worker's; its 10 ms is the first measure
  CHECK(estimate_ms() == doctest::Approx(10.0));
  CHECK_FALSE(run(100'000));     // 10 ms estimated: a worker's; 0.1 ms replaces it (not 2.08 ms averaged)
  CHECK(estimate_ms() == doctest::Approx(0.1));
  CHECK(run(150'000));           // within the bound: on this thread from the third call,
  CHECK(estimate_ms() == doctest::Approx(0.1));  // whose 0.15 ms does not raise the fastest
  // From the fourth on, the moving average: one outlier moves it by a fifth.
  CHECK(run(1'100'000));
  CHECK(estimate_ms() == doctest::Approx(0.8 * 0.1 + 0.2 * 1.1));
  CHECK_FALSE(run(100'000));  // 0.3 ms now, over the bound
  const double before = estimate_ms();
  // The model loaded again (another instance): its slow first runs do not
  // raise the estimate; from its fourth the average moves again.
  Rig reloaded;
  for (int i = 0; i < Scheduler::kWarmupMeasures; ++i) {
    CHECK_FALSE(run_on(reloaded, 1, 5'000'000));
    CHECK(estimate_ms() == doctest::Approx(before));
  }
  CHECK_FALSE(run_on(reloaded, 1, 5'000'000));
  CHECK(estimate_ms() == doctest::Approx(0.8 * before + 0.2 * 5.0));
  // An error in microseconds during the warm-up says nothing of a run's
  // cost: it does not lower the estimate (it pinned it near 0, and 10 ms
  // runs went to the receiving thread).
  CHECK_FALSE(run_on(rig, 2, 10'000'000));
  CHECK_FALSE(run_on(rig, 2, 0, "throw"));
  CHECK(estimate_ms(2) == doctest::Approx(10.0));
  CHECK_FALSE(run_on(rig, 2, 10'000'000));
  CHECK(estimate_ms(2) == doctest::Approx(10.0));
  // Nor, coming first, does it measure the version: the next request is
  // still unmeasured, a worker's (measured at 0 ms, it ran 10 ms here).
  CHECK_FALSE(run_on(rig, 3, 0, "throw"));
  CHECK_FALSE(run_on(rig, 3, 10'000'000));
  CHECK(estimate_ms(3) == doctest::Approx(10.0));
}

TEST_CASE("scheduler: once a new version is measured, its backlog goes to every free worker at once") {
  // The workers that found it unmeasured went back to sleep; one wake-up at
  // its first run's end took them back one execution at a time.
  Rig rig;
  Scheduler::Options o;
  o.workers = 2;
  Scheduler s(o);
  auto calls = [&] { std::lock_guard<std::mutex> l(rig.model->mu); return rig.model->calls.size(); };
  {
    std::lock_guard<std::mutex> l(rig.model->mu);
    rig.model->held = {"first", "later"};
  }
  std::atomic<int> n{0};
  auto count = [&](Result<std::vector<Tensor>> r) { n += r.ok(); };
  std::thread first([&] { (void)s.Submit(5, rig.Job("first", 1, 1, 0, count)); });  // (idle: runs on this thread)
  REQUIRE(mms::testing::WaitFor([&] { return calls() == 1; }, 5));
  std::thread a([&] { (void)s.Submit(5, rig.Job("later", 1, 1, 0, count)); });
  std::thread b([&] { (void)s.Submit(5, rig.Job("later", 1, 1, 0, count)); });
  REQUIRE(mms::testing::WaitFor([&] { return s.queued() == 2; }, 5));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // both workers find it unmeasured, and sleep
  rig.model->Let("first");
  first.join();
  CHECK(mms::testing::WaitFor([&] { return calls() == 3; }, 5));  // both queued requests running together
  rig.model->Let("later");
  a.join();
  b.join();
  CHECK(mms::testing::WaitFor([&] { return n == 3; }, 5));
}

TEST_CASE("scheduler: a version moved to another class joins that class's clock, bringing neither debt nor credit") {
  // Its time was counted against other versions on another clock: promoted
  // after an hour of use, it waited until the new class's versions had used
  // as much.
  Rig rig;
  FakeClock clock;
  Scheduler s(OneWorker(&clock));
  rig.model->slow_clock = &clock;
  rig.model->cost_ns = {{"A", 100'000'000}, {"H", 1'000'000}, {"hold", 0}};
  std::atomic<int> n{0};
  auto count = [&](Result<std::vector<Tensor>>) { ++n; };
  auto run = [&](const std::vector<std::pair<PoolKey, Scheduler::Job>>& jobs) {
    n = 0;
    std::thread hold = rig.Hold(s, 9);
    for (const auto& [k, j] : jobs) REQUIRE(s.Submit(k, j).ok());
    rig.model->Open();
    hold.join();
    REQUIRE(mms::testing::WaitFor([&] { return n == static_cast<int>(jobs.size()); }, 10));
  };
  std::vector<std::pair<PoolKey, Scheduler::Job>> jobs;
  for (int i = 0; i < 10; ++i) jobs.push_back({1, rig.Job("A", 1, 1, 0, count)});  // A: 1 s in class 1
  run(jobs);
  jobs.clear();
  for (int i = 0; i < 5; ++i) jobs.push_back({2, rig.Job("H", 1, 0, 0, count)});  // H: 5 ms in class 0
  run(jobs);
  jobs.clear();
  const size_t before = rig.model->order.size();
  for (int i = 0; i < 50; ++i) jobs.push_back({2, rig.Job("H", 1, 0, 0, count)});
  for (int i = 0; i < 3; ++i) jobs.push_back({1, rig.Job("A", 1, 0, 0, count)});  // A promoted to class 0
  run(jobs);
  std::vector<std::string> order(rig.model->order.begin() + static_cast<long>(before) + 1, rig.model->order.end());
  auto first_a = std::find(order.begin(), order.end(), "A") - order.begin();
  CHECK(first_a <= 2);  // not after H's 50 calls (1 s of debt)
}

TEST_CASE("scheduler: with no batch of its version running a batch leaves at once, behind one it gathers rows") {
  // batch_when_idle (the default): a lone request does not wait out the
  // delay for company; rows arriving during an execution make the next batch.
  Rig rig;
  FakeClock clock;  // never advanced: the 50 ms delay never ends
  Scheduler::Options o;
  o.workers = 2;
  o.clock = &clock;
  Scheduler s(o);
  std::atomic<int> n{0};
  auto count = [&](Result<std::vector<Tensor>> r) { n += r.ok(); };
  auto calls = [&] {
    std::lock_guard<std::mutex> l(rig.model->mu);
    return rig.model->calls;
  };
  rig.model->gate = true;
  std::thread::id submitter, ran_on;
  std::thread first([&] {
    submitter = std::this_thread::get_id();
    CHECK(s.Submit(1, rig.Job("x", 1, 1, 16, [&](Result<std::vector<Tensor>> r) {
                 ran_on = std::this_thread::get_id();
                 count(std::move(r));
               })).ok());
  });
  REQUIRE(mms::testing::WaitFor([&] { return calls().size() == 1; }, 5));  // at once, no delay
  REQUIRE(s.Submit(1, rig.Job("x", 2, 1, 16, count)).ok());
  REQUIRE(s.Submit(1, rig.Job("x", 3, 1, 16, count)).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHECK(calls().size() == 1);  // the second worker is free, but a batch of this version runs: they gather
  CHECK(s.queued() == 2);
  rig.model->Open();
  first.join();
  CHECK(ran_on == submitter);  // the lone request ran on the thread that submitted it (no hand-off)...
  REQUIRE(mms::testing::WaitFor([&] { return n == 3; }, 5));
  CHECK(calls() == std::vector<int64_t>{1, 5});  // ...the gathered ones then leave together, on a worker
}

TEST_CASE("scheduler: when the daemon drains, a batch waiting for more rows runs at once") {
  Rig rig;
  Scheduler::Options o = OneWorker();
  o.batch_when_idle = false;  // (it waits for its delay, worker free or not)
  Scheduler s(o);
  std::atomic<bool> answered{false};
  Scheduler::Job j = rig.Job("waits", 1, 1, 8, [&](Result<std::vector<Tensor>> r) { answered = r.ok(); });
  j.batch_delay_ns = 60'000'000'000;  // a minute for more rows
  REQUIRE(s.Submit(4, std::move(j)).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  CHECK_FALSE(answered.load());
  s.Drain();
  CHECK(mms::testing::WaitFor([&] { return answered.load(); }, 5));
}

TEST_CASE("scheduler: a queued request whose deadline passes is answered then, while every worker is busy") {
  Rig rig;
  Scheduler s(OneWorker());
  std::thread first = rig.Hold(s, 1);
  std::atomic<bool> answered{false};
  std::atomic<int> code{-1};
  Scheduler::Job j = rig.Job("late", 1, 1, 0, [&](Result<std::vector<Tensor>> r) {
    code = static_cast<int>(r.status().code());
    answered = true;
  });
  j.deadline_ns = Clock::Real()->MonoNanos() + 100'000'000;
  REQUIRE(s.Submit(2, std::move(j)).ok());
  CHECK(mms::testing::WaitFor([&] { return answered.load(); }, 5));  // the worker is still held
  CHECK(code == static_cast<int>(Code::kDeadlineExceeded));
  CHECK(s.queued() == 0);
  CHECK(s.Stats()["2"]["deadline_drops"] == 1);
  rig.model->Open();
  first.join();
}

TEST_CASE("scheduler: a batch whose outputs cannot be split runs each request alone, each caller gets its own answer") {
  // A model reducing over the batch (a scalar output) registered without the
  // batching check (an import): the callers sent nothing wrong.
  Rig rig;
  Scheduler::Options o = OneWorker();
  Scheduler s(o);
  rig.model->reduce = true;
  std::thread first = rig.Hold(s, 2);
  std::mutex mu;
  std::vector<std::string> got(3);
  std::atomic<int> n{0};
  for (int i = 0; i < 3; ++i)
    REQUIRE(s.Submit(1, rig.Job("x", i + 1, 1, 16, [&, i](Result<std::vector<Tensor>> r) {
                   std::lock_guard<std::mutex> l(mu);
                   got[static_cast<size_t>(i)] = r.ok() ? std::to_string(static_cast<int>((*r)[0].as<float>()[0]))
                                                        : r.status().ToString();
                   ++n;
                 })).ok());
  rig.model->Open();
  first.join();
  REQUIRE(mms::testing::WaitFor([&] { return n == 3; }, 5));
  CHECK(got == std::vector<std::string>{"1", "2", "3"});  // what each would get unbatched
  CHECK(s.Stats()["1"]["unsplit"] == 1);
  // The version is no longer batched: queued requests run one by one.
  first = rig.Hold(s, 2);
  n = 0;
  for (int i = 0; i < 2; ++i) REQUIRE(s.Submit(1, rig.Job("y", 2, 1, 16, [&](Result<std::vector<Tensor>> r) { n += r.ok(); })).ok());
  rig.model->Open();
  first.join();
  REQUIRE(mms::testing::WaitFor([&] { return n == 2; }, 5));
  std::lock_guard<std::mutex> l(rig.model->mu);
  CHECK(std::vector<int64_t>(rig.model->calls.end() - 2, rig.model->calls.end()) == std::vector<int64_t>{2, 2});
}

TEST_CASE("scheduler: one slow execution does not make every later request with a deadline fail for good") {
  Rig rig;
  FakeClock clock;
  Scheduler::Options o = OneWorker(&clock);
  Scheduler s(o);
  auto with_deadline = [&](int64_t ms, Status* out) {
    Scheduler::Job j = rig.Job("x", 1, 1, 0, [out](Result<std::vector<Tensor>> r) { *out = r.status(); });
    j.deadline_ns = clock.MonoNanos() + ms * 1'000'000;
    return j;
  };
  // An outlier: one execution of 100 ms becomes the estimate.
  rig.model->slow_clock = &clock;
  rig.model->slow_ns = 100'000'000;
  REQUIRE(s.Submit(1, rig.Job("x", 1)).ok());
  rig.model->slow_clock = nullptr;
  // By the estimate a 10 ms request cannot make it: dropped without running.
  Status st;
  REQUIRE(s.Submit(1, with_deadline(10, &st)).ok());
  CHECK(st.code() == Code::kDeadlineExceeded);
  CHECK(st.message().find("(one execution takes about 100 ms now)") != std::string::npos);  // why
  // Nothing has run since: the estimate is stale after kStaleEstimateNs, so
  // the next request that can still make its deadline runs and measures again.
  clock.AdvanceNanos(Scheduler::kStaleEstimateNs);
  st = Status(Code::kInternal, "not answered");
  REQUIRE(s.Submit(1, with_deadline(10, &st)).ok());
  CHECK(st.ok());
  st = Status(Code::kInternal, "not answered");
  REQUIRE(s.Submit(1, with_deadline(10, &st)).ok());
  CHECK(st.ok());  // the fresh measurement replaced the outlier
  // A deadline already past is still dropped, stale estimate or not.
  clock.AdvanceNanos(2 * Scheduler::kStaleEstimateNs);
  Scheduler::Job past = with_deadline(0, &st);
  past.deadline_ns = clock.MonoNanos() - 1;
  REQUIRE(s.Submit(1, std::move(past)).ok());
  CHECK(st.code() == Code::kDeadlineExceeded);
  CHECK(s.Stats()["1"]["deadline_drops"] == 2);
}

TEST_CASE("scheduler: probes that miss their deadline too are made less and less often") {
  // A version called less than once a second with a deadline it cannot meet
  // ran every request (each one a probe of the stale estimate), late.
  Rig rig;
  FakeClock clock;
  Scheduler s(OneWorker(&clock));
  rig.model->slow_clock = &clock;
  rig.model->slow_ns = 100'000'000;  // every call takes 100 ms
  REQUIRE(s.Submit(1, rig.Job("x", 1)).ok());
  auto runs = [&] {  // submits a request with a 10 ms deadline: did it run?
    size_t before = rig.model->calls.size();
    Status st = Status(Code::kInternal, "not answered");
    Scheduler::Job j = rig.Job("x", 1, 1, 0, [&](Result<std::vector<Tensor>> r) { st = r.status(); });
    j.deadline_ns = clock.MonoNanos() + 10'000'000;
    REQUIRE(s.Submit(1, std::move(j)).ok());
    bool ran = rig.model->calls.size() > before;
    CHECK(ran == st.ok());  // a probe answers (late, but with its result); a drop says DEADLINE_EXCEEDED
    return ran;
  };
  clock.AdvanceNanos(Scheduler::kStaleEstimateNs);
  CHECK(runs());   // the first probe: 100 ms again, its deadline missed
  clock.AdvanceNanos(Scheduler::kStaleEstimateNs);
  CHECK_FALSE(runs());  // not stale yet: the next probe waits 2 s
  clock.AdvanceNanos(Scheduler::kStaleEstimateNs);
  CHECK(runs());   // 2 s: probed, missed again: 4 s
  for (int i = 0; i < 3; ++i) {
    clock.AdvanceNanos(Scheduler::kStaleEstimateNs);
    CHECK_FALSE(runs());
  }
  clock.AdvanceNanos(Scheduler::kStaleEstimateNs);
  rig.model->slow_ns = 1'000'000;  // the model is fast again
  CHECK(runs());   // 4 s: probed, and it met its deadline
  CHECK(runs());   // the estimate is 1 ms: runs at once, no probe needed
  CHECK(s.Stats()["1"]["deadline_drops"] == 4);
  // Its wait is back to one second: a slow spell later is probed after 1 s.
  rig.model->slow_ns = 100'000'000;
  REQUIRE(s.Submit(1, rig.Job("x", 1)).ok());  // no deadline: runs, 100 ms, the estimate rises
  CHECK_FALSE(runs());
  clock.AdvanceNanos(Scheduler::kStaleEstimateNs);
  CHECK(runs());
}

TEST_CASE("scheduler: a batch that probes a stale estimate takes along the requests late only by that estimate") {
  Rig rig;
  FakeClock clock;
  Scheduler s(OneWorker(&clock));
  rig.model->slow_clock = &clock;
  rig.model->slow_ns = 100'000'000;  // an outlier: the estimate becomes 100 ms
  REQUIRE(s.Submit(1, rig.Job("x", 1, 1, 16)).ok());
  REQUIRE(mms::testing::WaitFor([&] { return s.Stats()["1"]["executed"] == 1; }, 5));
  rig.model->slow_clock = nullptr;
  clock.AdvanceNanos(Scheduler::kStaleEstimateNs);  // stale: the next request probes
  std::thread first = rig.Hold(s, 2);
  std::mutex mu;
  std::vector<std::string> got;
  for (int i = 0; i < 3; ++i) {
    Scheduler::Job j = rig.Job("x", 1, 1, 16, [&](Result<std::vector<Tensor>> r) {
      std::lock_guard<std::mutex> l(mu);
      got.push_back(r.ok() ? "ok" : r.status().ToString());
    });
    j.deadline_ns = clock.MonoNanos() + 10'000'000;  // late by the 100 ms estimate
    REQUIRE(s.Submit(1, std::move(j)).ok());
  }
  rig.model->Open();
  first.join();
  REQUIRE(mms::testing::WaitFor([&] { std::lock_guard<std::mutex> l(mu); return got.size() == 3; }, 5));
  // One batch measured afresh for all three, not one run and two dropped by the estimate it replaced.
  CHECK(got == std::vector<std::string>{"ok", "ok", "ok"});
  CHECK(rig.model->calls.back() == 3);
  CHECK(s.Stats()["1"]["deadline_drops"] == 0);
  CHECK(s.Stats()["1"]["exec_ms"] == 0.0);  // the fake clock did not move: the probe's time replaced 100 ms
}

TEST_CASE("scheduler: a failed execution, a probe's included, is no measure of what a run costs") {
  Rig rig;
  FakeClock clock;
  Scheduler s(OneWorker(&clock));
  rig.model->refuse_negative = true;
  rig.model->slow_clock = &clock;
  rig.model->slow_ns = 100'000'000;  // every successful run takes 100 ms; a refusal takes no time
  auto submit = [&](float value, int64_t deadline_ms) {
    Status st = Status(Code::kInternal, "not answered");
    Scheduler::Job j = rig.Job("x", 1, 1, 0, [&](Result<std::vector<Tensor>> r) { st = r.status(); });
    *reinterpret_cast<float*>(j.inputs[0].mutable_data()) = value;
    if (deadline_ms) j.deadline_ns = clock.MonoNanos() + deadline_ms * 1'000'000;
    REQUIRE(s.Submit(1, std::move(j)).ok());
    return st;
  };
  for (int i = 0; i < Scheduler::kWarmupMeasures; ++i) CHECK(submit(1, 0).ok());
  CHECK(submit(-1, 0).code() == Code::kModelError);  // fails at once: the estimate stays 100 ms
  CHECK(s.Stats()["1"]["exec_ms"] == 100.0);
  CHECK(submit(1, 10).code() == Code::kDeadlineExceeded);
  clock.AdvanceNanos(Scheduler::kStaleEstimateNs);
  // The probe fails: it measured nothing, so the estimate still stands (a
  // slow model taken for a fast one would run on callers' threads, late)...
  CHECK(submit(-1, 10).code() == Code::kModelError);
  CHECK(s.Stats()["1"]["exec_ms"] == 100.0);
  CHECK(submit(1, 10).code() == Code::kDeadlineExceeded);
  // ...and the next probe waits its turn, no longer than before.
  clock.AdvanceNanos(Scheduler::kStaleEstimateNs);
  rig.model->slow_ns = 1'000'000;
  CHECK(submit(1, 10).ok());
  CHECK(s.Stats()["1"]["exec_ms"] == 1.0);
}

TEST_CASE("scheduler: a batch waiting for rows leaves while its oldest request still has time to spare") {
  // Waiting until the last instant the deadline allows would make any
  // wake-up latency a miss: the batch waits at most half the spare time.
  Rig rig;
  FakeClock clock;
  Scheduler::Options o = OneWorker(&clock);
  o.batch_when_idle = false;  // (the delay's rule, a worker free)
  Scheduler s(o);
  std::atomic<bool> answered{false};
  Status got;
  Scheduler::Job j = rig.Job("x", 1, 1, 16, [&](Result<std::vector<Tensor>> r) {
    got = r.status();
    answered = true;
  });
  j.deadline_ns = clock.MonoNanos() + 10'000'000;  // 10 ms, inside the 50 ms batch delay
  REQUIRE(s.Submit(1, std::move(j)).ok());
  clock.AdvanceMillis(6);  // past half its spare time, before its last moment
  CHECK(mms::testing::WaitFor([&] { return answered.load(); }, 5));
  if (!answered) clock.AdvanceMillis(100);  // (release it: deadlock guard)
  REQUIRE(mms::testing::WaitFor([&] { return answered.load(); }, 5));
  CHECK(got.ok());
}

TEST_CASE("scheduler: a younger request with a tighter deadline makes the batch leave in time for it") {
  Rig rig;
  FakeClock clock;
  Scheduler::Options o = OneWorker(&clock);
  o.batch_when_idle = false;  // (the delay's rule, a worker free)
  Scheduler s(o);
  std::atomic<int> answered{0};
  auto done = [&](Result<std::vector<Tensor>> r) {
    if (r.ok()) ++answered;
  };
  REQUIRE(s.Submit(1, rig.Job("x", 1, 1, 16, done)).ok());  // no deadline: would wait the 50 ms delay
  clock.AdvanceMillis(2);
  Scheduler::Job tight = rig.Job("x", 1, 1, 16, done);
  tight.deadline_ns = clock.MonoNanos() + 10'000'000;  // 10 ms
  REQUIRE(s.Submit(1, std::move(tight)).ok());
  clock.AdvanceMillis(6);  // past half of the younger request's spare time
  CHECK(mms::testing::WaitFor([&] { return answered.load() == 2; }, 5));
  if (answered < 2) clock.AdvanceMillis(100);  // (release them: deadlock guard)
  REQUIRE(mms::testing::WaitFor([&] { return answered.load() == 2; }, 5));
  std::lock_guard<std::mutex> l(rig.model->mu);
  CHECK(rig.model->calls == std::vector<int64_t>{2});  // one batch of both
}

TEST_CASE("scheduler: requests claiming huge row counts (zero elements) do not overflow the queue's rows") {
  // [2^62, 0] is a valid tensor of no elements; two of them once summed past
  // INT64_MAX, and the queue no longer looked full enough to run.
  Rig rig;
  FakeClock clock;  // never advanced: only a full batch can run
  Scheduler::Options o = OneWorker(&clock);
  o.batch_when_idle = false;  // (a batch leaves only when full)
  Scheduler s(o);
  std::thread first = rig.Hold(s, 2);
  std::atomic<int> n{0};
  for (int i = 0; i < 2; ++i) {
    Scheduler::Job j = rig.Job("x", 1, 1, 16, [&](Result<std::vector<Tensor>> r) { n += r.ok(); });
    j.inputs = {Tensor::Alloc("x", DType::kFloat32, {int64_t{1} << 62, 0})};
    REQUIRE(s.Submit(1, std::move(j)).ok());
  }
  rig.model->Open();
  first.join();
  CHECK(mms::testing::WaitFor([&] { return n == 2; }, 5));
  if (n != 2) clock.AdvanceMillis(1000);  // (release them: deadlock guard)
  REQUIRE(mms::testing::WaitFor([&] { return s.queued() == 0; }, 5));
  CHECK(s.Stats()["1"]["rows"] == uint64_t{1} << 63);
}

TEST_CASE("scheduler: a model loaded again is another instance even at the address a freed one had") {
  // The warm-up measures go by instance; by address, a reload into the freed
  // one's memory read as the same model, and its slow first runs counted.
  alignas(EchoModel) unsigned char storage[sizeof(EchoModel)];
  auto* first = new (storage) EchoModel();
  const uint64_t id = first->instance_id();
  first->~EchoModel();
  auto* again = new (storage) EchoModel();
  CHECK(static_cast<void*>(again) == static_cast<void*>(first));
  CHECK(again->instance_id() != id);
  again->~EchoModel();
}
