#include "rollout/shadow.h"

#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <chrono>
#include <cstring>
#include <memory>

#include <boost/lockfree/queue.hpp>

#include "core/hash.h"
#include "core/log.h"
#include "protocol/tensor_file.h"
#include "rollout/compare.h"

namespace mms {

void Reservoir::Add(double v) {
  ++seen_;
  sum_ += v;
  max_ = seen_ == 1 ? v : std::max(max_, v);
  if (v_.size() < cap_) {
    v_.push_back(v);
  } else {
    uint64_t j = std::uniform_int_distribution<uint64_t>(0, seen_ - 1)(rng_);
    if (j < cap_) v_[j] = v;
  }
}

nlohmann::json Reservoir::Summary(double scale) const {
  if (v_.empty()) return {{"count", 0}};
  std::vector<double> s = v_;
  // NaN last (a plain sort with NaN in it is undefined behaviour).
  std::sort(s.begin(), s.end(), [](double x, double y) { return std::isnan(y) ? !std::isnan(x) : x < y; });
  auto q = [&](double p) { return s[std::min(s.size() - 1, static_cast<size_t>(p * static_cast<double>(s.size() - 1) + 0.5))] * scale; };
  // JSON has no infinity or NaN (nlohmann writes null, which readers of a
  // number then choke on): those are the strings "inf", "-inf" and "nan".
  auto num = [](double v) {
    return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(std::isnan(v) ? "nan" : v > 0 ? "inf" : "-inf");
  };
  return {{"count", seen_}, {"mean", num(sum_ / static_cast<double>(seen_) * scale)}, {"p50", num(q(0.5))},
          {"p90", num(q(0.9))}, {"p99", num(q(0.99))}, {"max", num(max_ * scale)}};
}

// The request path hands jobs to the idle-priority worker through a
// lock-free queue and takes no lock: a lock the worker held while preempted
// would either stall the request (a whole time slice) or, try-locked, drop
// jobs for no reason but timing. Only a full queue drops. The worker keeps
// its candidate's handle between jobs, so it takes no pool lock per request
// either. Its wake-up is a condition variable notified without the lock (the
// request path never waits), so a wake-up can be missed in a narrow window:
// the worker's wait also ends every kWorkerPollMs.
//
// The handle is a standing hold (ModelHandle::HoldFor: `mms pool` shows it as
// held by the shadow run, and a refused eviction says so). A shadow must not
// cost serving its memory: its candidate is loaded only into free room
// (Room::kFreeOnly, never evicting), and the hold is let go once no job has
// come for kReleaseIdleMs. As soon as it has stood in the way of a request or
// an eviction (Options::hold_refusals moved; checked every kWorkerPollMs and
// before each job) the worker yields (see Work): the refused request's retry
// finds the room.
namespace {
constexpr int kWorkerPollMs = 100;
constexpr int64_t kReleaseIdleMs = 2000;
constexpr int64_t kYieldMs = 5000, kYieldMaxMs = 60000, kYieldResetMs = 300000;
}  // namespace

struct ShadowRunner::Shadow {
  explicit Shadow(size_t capacity) : jobs(capacity + 1) {}
  ~Shadow() { DropQueued(); }
  void DropQueued() {
    Job* j = nullptr;
    while (jobs.pop(j)) {
      delete j;
      --queued;
    }
  }
  ShadowRecord rec;
  PoolItem candidate;
  std::mutex queue_mu;  // only for `cv`
  std::condition_variable cv;
  struct Job {
    std::vector<Tensor> inputs, outputs;
    int64_t primary_ns;
  };
  boost::lockfree::queue<Job*> jobs;  // owned pointers; at most rec.queue (by `queued`)
  std::atomic<bool> stopping{false};
  std::atomic<int64_t> queued{0};
  std::atomic<uint64_t> sampled{0}, skipped{0}, dropped{0};
  std::atomic<bool> running{true};  // false once stopping (joinable() is not safe to read then)
  std::atomic<bool> exited{false};  // the worker returned: joining it does not wait
  std::mutex mu;             // the figures below
  uint64_t mirrored = 0, failed = 0, diverged = 0, mismatched = 0;
  Reservoir max_abs, mean_abs, rel_l2, cosine, argmax, topk, delta_ns;
  std::string last_error;
  std::deque<nlohmann::json> samples;
  nlohmann::json before;  // figures a previous daemon saved for this run (null: none)
  std::vector<InputSpec> inputs;  // guarded by mu: candidate.inputs as Configure last gave them
  std::thread worker;
};

ShadowRunner::~ShadowRunner() {
  Configure({});
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& s : retired_) s->worker.join();
}

uint64_t ShadowRunner::RequestHash(const std::vector<Tensor>& inputs) {
  std::string buf;
  for (const auto& t : inputs) {
    buf += t.name;
    buf += '\0';
    buf += static_cast<char>(t.dtype);
    for (int64_t d : t.shape) buf.append(reinterpret_cast<const char*>(&d), sizeof d);
    if (t.nbytes) buf.append(reinterpret_cast<const char*>(t.data.get()), t.nbytes);
  }
  Md5Digest d = Md5(buf);
  uint64_t h;
  std::memcpy(&h, d.data(), sizeof h);
  return h;
}

bool ShadowRunner::Sampled(uint64_t hash, double ratio) {
  return static_cast<double>(hash % 1000000) < ratio * 1e6;
}

void ShadowRunner::Configure(const std::map<std::string, std::pair<ShadowRecord, PoolItem>>& running) {
  std::vector<std::shared_ptr<Shadow>> to_stop;
  std::vector<std::pair<std::shared_ptr<Shadow>, std::vector<InputSpec>>> renewed;  // set outside mu_ (s->mu may wait on a sample's encoding)
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [model, s] : shadows_) {
      auto it = running.find(model);
      bool same = it != running.end() && it->second.first.id == s->rec.id;
      if (!same && s->running) {
        s->running = false;
        to_stop.push_back(s);
      }
    }
    for (const auto& [model, cfg] : running) {
      auto it = shadows_.find(model);
      if (it != shadows_.end() && it->second->rec.id == cfg.first.id && it->second->running) {
        renewed.emplace_back(it->second, cfg.second.inputs);
        continue;
      }
      auto s = std::make_shared<Shadow>(static_cast<size_t>(std::max(cfg.first.queue, 1)));
      s->rec = cfg.first;
      s->candidate = cfg.second;
      s->inputs = cfg.second.inputs;
      // Figures saved for this run, which this daemon never counted: a
      // previous daemon's (a restart). Kept beside the new count.
      s->before = std::move(s->rec.figures);
      s->rec.figures = nullptr;
      Shadow* raw = s.get();
      s->worker = std::thread([this, raw] {
        Work(raw);
        raw->exited = true;  // after Work's locals (the candidate's handle) are gone
      });
      shadows_[model] = s;
      LogInfo("shadow_start", {{"model", model}, {"candidate", s->rec.candidate_ref()}, {"ratio", s->rec.ratio}});
    }
  }
  for (auto& [s, inputs] : renewed) {
    std::lock_guard<std::mutex> lock(s->mu);
    s->inputs = std::move(inputs);
  }
  // Stopped outside mu_ and not joined here: the worker may be in a load or
  // a long candidate run, and the caller (the daemon's registry refresh)
  // must not wait for it. Retired workers are joined once they have exited.
  for (auto& s : to_stop) {
    {
      std::lock_guard<std::mutex> lock(s->queue_mu);  // the worker sees it before it waits again
      s->stopping = true;
    }
    s->DropQueued();
    uint64_t mirrored;
    {
      std::lock_guard<std::mutex> lock(s->mu);
      s->rec.state = "stopped";
      mirrored = s->mirrored;
    }
    s->cv.notify_all();
    LogInfo("shadow_stop", {{"model", s->rec.model}, {"mirrored", mirrored}, {"dropped", s->dropped.load()}});
  }
  std::lock_guard<std::mutex> lock(mu_);
  retired_.insert(retired_.end(), to_stop.begin(), to_stop.end());
  for (auto it = retired_.begin(); it != retired_.end();) {
    if (!(*it)->exited) {
      ++it;
      continue;
    }
    (*it)->worker.join();
    it = retired_.erase(it);
  }
}

bool ShadowRunner::Active(const std::string& model) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = shadows_.find(model);
  return it != shadows_.end() && it->second->running;
}

void ShadowRunner::Mirror(const std::string& model, const std::vector<Tensor>& inputs,
                          const std::vector<Tensor>& outputs, int64_t primary_ns) {
  std::shared_ptr<Shadow> s;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = shadows_.find(model);
    if (it == shadows_.end() || !it->second->running) return;
    s = it->second;
  }
  if (s->rec.ratio < 1 && !Sampled(RequestHash(inputs), s->rec.ratio)) {
    ++s->skipped;
    return;
  }
  ++s->sampled;
  // A slot first (exactly rec.queue), then the job: never a wait.
  if (s->stopping.load() || s->queued.fetch_add(1) >= s->rec.queue) {
    --s->queued;
    ++s->dropped;  // full
    return;
  }
  auto* job = new Shadow::Job{inputs, outputs, primary_ns};
  if (!s->jobs.bounded_push(job)) {  // cannot happen with a slot; kept for safety
    delete job;
    --s->queued;
    ++s->dropped;
    return;
  }
  s->cv.notify_one();
}

namespace {
// The shadow worker yields to everything else: nice 19 and, where the kernel
// has EEVDF custom slices (Linux 6.12+), a 100 µs slice so a waking request
// thread need not wait out a 3 ms one. (SCHED_IDLE was measured worse: the
// kernel counts a CPU running only SCHED_IDLE work as idle and places waking
// request threads there, and on a HZ=250 kernel without full preemption they
// then waited about one tick — a steady 4 ms p99; see docs/benchmarks.md.)
// Failures are ignored: the priority is a preference.
void YieldToRequests() {
  pid_t tid = static_cast<pid_t>(syscall(SYS_gettid));
  setpriority(PRIO_PROCESS, static_cast<id_t>(tid), 19);
  struct SchedAttr {  // struct sched_attr (linux/sched/types.h)
    uint32_t size, policy;
    uint64_t flags;
    int32_t nice;
    uint32_t priority;
    uint64_t runtime, deadline, period;
    uint32_t util_min, util_max;
  } attr{};
  attr.size = sizeof attr;
  attr.policy = SCHED_OTHER;
  attr.nice = 19;
  attr.runtime = 100'000;  // the custom slice, ns
  syscall(SYS_sched_setattr, 0, &attr, 0);
}
}  // namespace

void ShadowRunner::Work(Shadow* s) {
  YieldToRequests();
  pthread_setname_np(pthread_self(), "mms-shadow");
  if (opts_.on_worker_start) opts_.on_worker_start();
  const Result<Servable> released = Status(Code::kUnavailable, "not acquired");
  Result<Servable> h = released;
  auto refusals = [&] { return opts_.hold_refusals ? opts_.hold_refusals() : 0; };
  uint64_t refusals_seen = 0;  // when the handle was taken
  int64_t rest_ns = 0;         // after the last job, to keep within opts_.duty_cycle
  // Yielding: the hold refused someone. The handle goes, the candidate is
  // evicted (its room is what the refused request needs: letting go alone
  // leaves it where it is, and the next job would take it back as a hit),
  // and no job takes it again for a while (doubling while it keeps
  // happening, back to the start after kYieldResetMs without one).
  using SteadyClock = std::chrono::steady_clock;
  SteadyClock::time_point yield_until{}, last_yield{};
  std::chrono::milliseconds yield_for{kYieldMs};
  auto yield = [&] {
    h = released;
    const auto now = SteadyClock::now();
    yield_for = now - last_yield > std::chrono::milliseconds(kYieldResetMs)
                    ? std::chrono::milliseconds(kYieldMs)
                    : std::min(yield_for * 2, std::chrono::milliseconds(kYieldMaxMs));
    last_yield = now;
    yield_until = now + yield_for;
    if (opts_.yield_room) opts_.yield_room(s->candidate);
    LogInfo("shadow_yielded", {{"model", s->rec.model}, {"candidate", s->rec.candidate_ref()},
                               {"for_ms", static_cast<int64_t>(yield_for.count())}});
  };
  while (true) {
    Shadow::Job* taken = nullptr;
    bool let_go = false;
    {
      std::unique_lock<std::mutex> lock(s->queue_mu);
      if (rest_ns > 0) s->cv.wait_for(lock, std::chrono::nanoseconds(rest_ns), [&] { return s->stopping.load(); });
      const auto since = std::chrono::steady_clock::now();
      while (!s->stopping.load() && !s->jobs.pop(taken)) {
        if (h.ok() && (refusals() != refusals_seen ||
                       std::chrono::steady_clock::now() - since >= std::chrono::milliseconds(kReleaseIdleMs))) {
          let_go = true;
          break;
        }
        s->cv.wait_for(lock, std::chrono::milliseconds(kWorkerPollMs));  // see Shadow: a missed notify costs this
      }
    }
    if (let_go) {  // outside queue_mu: releasing takes the pool's lock
      if (refusals() != refusals_seen) yield();
      else h = released;  // idle
      continue;
    }
    if (s->stopping.load()) {
      delete taken;
      return;
    }
    if (h.ok() && refusals() != refusals_seen) yield();
    --s->queued;
    std::unique_ptr<Shadow::Job> owned(taken);
    Shadow::Job& job = *owned;
    int64_t t0 = opts_.clock->MonoNanos();
    Result<std::vector<Tensor>> out = Status(Code::kInternal, "not run");
    if (!h.ok() && SteadyClock::now() < yield_until) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(yield_until - SteadyClock::now());
      out = Status(Code::kPoolFull, "the shadow yielded " + s->candidate.ref +
                                        "'s memory to serving (a request was refused for room); it tries again in " +
                                        std::to_string(left.count()) + " ms");
    } else {
      if (!h.ok()) {  // kept for the next jobs
        refusals_seen = refusals();
        h = opts_.acquire(s->candidate);
        if (h.ok()) {
          const std::string holder =
              "the shadow run of " + s->rec.model + " (mms shadow stop " + s->rec.model + " ends it)";
          h->model->HoldFor(holder);
          if (h->adapter) h->adapter->HoldFor(holder);
        }
      }
      if (!h.ok()) out = h.status();
    }
    if (h.ok()) {
      std::vector<InputSpec> specs;
      {
        std::lock_guard<std::mutex> lock(s->mu);
        specs = s->inputs;
      }
      if (specs.empty())  // no recorded specs: the model's own argument names
        for (const auto& n : h->model->model()->input_names()) specs.push_back({n, std::nullopt, std::nullopt});
      auto in = MatchInputs(specs, job.inputs, s->candidate.ref);
      out = in.ok() ? h->Run(*in) : Result<std::vector<Tensor>>(in.status());
    }
    int64_t shadow_ns = opts_.clock->MonoNanos() - t0;
    rest_ns = opts_.duty_cycle < 1 ? static_cast<int64_t>(static_cast<double>(shadow_ns) * (1 / opts_.duty_cycle - 1)) : 0;
    std::lock_guard<std::mutex> lock(s->mu);
    if (!out.ok()) {
      ++s->failed;
      s->last_error = out.status().message();
      continue;
    }
    ++s->mirrored;
    OutputComparison c = CompareOutputs(job.outputs, *out, s->rec.tolerance);
    if (c.mismatched) {  // no numbers to compare: counted apart, not as agreement
      ++s->mismatched;
    } else {
      s->max_abs.Add(c.max_abs);
      s->mean_abs.Add(c.mean_abs);
      s->rel_l2.Add(c.rel_l2);
      s->cosine.Add(c.cosine);
      if (c.argmax_agreement) s->argmax.Add(*c.argmax_agreement);
      if (c.topk_agreement) s->topk.Add(*c.topk_agreement);
    }
    s->delta_ns.Add(static_cast<double>(shadow_ns - job.primary_ns));
    if (c.diverged) {
      ++s->diverged;
      s->samples.push_back({{"reason", c.reason},
                            {"max_abs_diff", c.max_abs},
                            {"inputs", TensorsToJson(job.inputs)},
                            {"primary", TensorsToJson(job.outputs)},
                            {"shadow", TensorsToJson(*out)}});
      while (s->samples.size() > opts_.max_samples) s->samples.pop_front();
    }
  }
}

Result<nlohmann::json> ShadowRunner::Stats(const std::string& model) const {
  std::shared_ptr<Shadow> s;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = shadows_.find(model);
    if (it == shadows_.end()) return NotFound("model '" + model + "' has had no shadow run since mmsd started");
    s = it->second;
  }
  return StatsOf(*s);
}

std::vector<std::pair<int64_t, nlohmann::json>> ShadowRunner::AllStats() const {
  std::vector<std::shared_ptr<Shadow>> all;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [model, s] : shadows_) all.push_back(s);
  }
  std::vector<std::pair<int64_t, nlohmann::json>> out;
  for (const auto& s : all) out.emplace_back(s->rec.id, StatsOf(*s));
  return out;
}

nlohmann::json ShadowRunner::StatsOf(Shadow& shadow) const {
  Shadow* s = &shadow;  // (the figures below read as in Work)
  std::lock_guard<std::mutex> lock(s->mu);
  nlohmann::json j = s->rec.ToJson();
  j["running"] = s->rec.state == "running";
  j["requests"] = {{"sampled", s->sampled.load()}, {"not_sampled", s->skipped.load()}, {"mirrored", s->mirrored},
                   {"dropped", s->dropped.load()}, {"failed", s->failed},            {"queued", s->queued.load()}};
  j["diverged"] = s->diverged;
  j["mismatched"] = s->mismatched;  // among the diverged: outputs of another structure, left out of the measures
  j["divergence_rate"] = s->mirrored ? static_cast<double>(s->diverged) / static_cast<double>(s->mirrored) : 0.0;
  j["measures"] = {{"max_abs_diff", s->max_abs.Summary()},     {"mean_abs_diff", s->mean_abs.Summary()},
                   {"relative_l2", s->rel_l2.Summary()},      {"cosine_similarity", s->cosine.Summary()},
                   {"argmax_agreement", s->argmax.Summary()}, {"topk_agreement", s->topk.Summary()}};
  j["latency_delta_ms"] = s->delta_ns.Summary(1e-6);
  j["duty_cycle"] = opts_.duty_cycle;  // [shadow] duty_cycle: why a busy shadow mirrors less than it drops
  if (!s->last_error.empty()) j["last_error"] = s->last_error;
  if (!s->before.is_null()) {
    j["before_restart"] = s->before;
    j["note"] = "counting started anew when mmsd started; the figures saved before are under before_restart";
  }
  return j;
}

Result<nlohmann::json> ShadowRunner::Samples(const std::string& model, size_t limit) const {
  std::shared_ptr<Shadow> s;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = shadows_.find(model);
    if (it == shadows_.end()) return NotFound("model '" + model + "' has had no shadow run since mmsd started");
    s = it->second;
  }
  std::lock_guard<std::mutex> lock(s->mu);
  nlohmann::json out = nlohmann::json::array();
  size_t start = s->samples.size() > limit ? s->samples.size() - limit : 0;
  for (size_t i = start; i < s->samples.size(); ++i) out.push_back(s->samples[i]);
  return out;
}

}  // namespace mms
