#include "serve/scheduler.h"

#include <algorithm>
#include <cstdio>
#include <functional>
#include <utility>

#include <pthread.h>

#include "core/log.h"
#include "lora/adapter_model.h"
#include "serve/batching.h"

namespace mms {

namespace {
Scheduler::Options Resolved(Scheduler::Options o) {
  o.workers = std::max(1, o.workers);  // the dispatch checks count against it too
  return o;
}
}  // namespace

Scheduler::Scheduler(const Options& o)
    : opts_(Resolved(o)), queue_depth_(opts_.queue_depth), starvation_interval_(opts_.starvation_interval) {
  for (int i = 0; i < opts_.workers; ++i)
    workers_.emplace_back([this, i] {
      pthread_setname_np(pthread_self(), ("mms-exec-" + std::to_string(i)).substr(0, 15).c_str());
      Work();
    });
}

Scheduler::~Scheduler() { Stop(); }

namespace {
// Releases the job's handles, then answers it.
void Finish(Scheduler::Job& j, Result<std::vector<Tensor>> r) {
  j.handle.reset();
  j.adapter.reset();
  j.inputs.clear();
  auto done = std::move(j.done);
  done(std::move(r));
}
}  // namespace

void Scheduler::Stop() {
  std::vector<Job> cancelled;
  std::vector<std::thread> workers;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    for (auto& [k, q] : queues_) {
      for (auto& e : q.jobs) cancelled.push_back(std::move(e.job));
      q.jobs.clear();
      q.rows = 0;
    }
    total_queued_ = 0;
    workers.swap(workers_);
  }
  cv_.notify_all();
  for (auto& j : cancelled) Finish(j, Status(Code::kCancelled, "mmsd is shutting down"));
  for (auto& t : workers) t.join();
  // Executions running inline on other threads finish, answers included.
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return running_ == 0; });
}

// `exec_ns`: the version's execution-time estimate (0: none yet).
static Status LateStatus(const std::string& ref, double exec_ns) {
  std::string took;
  if (exec_ns > 0) {
    char buf[64];
    std::snprintf(buf, sizeof buf, " (one execution takes about %.3g ms now)", exec_ns / 1e6);
    took = buf;
  }
  return Status(Code::kDeadlineExceeded, ref + ": the request's deadline would pass before it could run" + took +
                                             "; dropped without running it: give a longer --deadline-ms, or retry "
                                             "when it is less busy");
}

bool Scheduler::Late(Queue& q, const Job& j, int64_t now, bool* probe) {
  if (!j.deadline_ns) return false;
  if (now > j.deadline_ns) return true;  // already past: nothing can help
  if (now + static_cast<int64_t>(q.exec_ns) <= j.deadline_ns) return false;
  // Only the estimate says it would be late. Executions alone refresh it, so
  // once it is stale one request runs to measure again (else one slow outlier
  // would drop every later request with a deadline, for good).
  if (!q.probing && q.last_exec_ns && now - q.last_exec_ns >= q.stale_after_ns) {
    q.probing = true;
    *probe = true;
    return false;
  }
  return true;
}

Status Scheduler::Submit(PoolKey key, Job job) {
  // A batched job's rows must agree; an unbatched one's are counted (its
  // version's "rows", as a batched version's are) when they do, else 1.
  int64_t rows = 1;
  auto r = BatchRows(job.inputs);
  if (job.max_batch > 0 && !r.ok()) return r.status();
  if (r.ok()) rows = *r;
  std::unique_lock<std::mutex> lock(mu_);
  if (stopping_) return Status(Code::kCancelled, "mmsd is shutting down");
  Queue& q = queues_[key];
  // A queue that was empty joins at its class's virtual clock: time it spent
  // idle is no credit to spend against the versions that kept busy. One that
  // changes class (SIGHUP) joins its new class's clock: its time was counted
  // on another clock and means nothing there, as credit or as debt.
  const int cls = std::clamp(job.priority, 0, 2);
  if (cls != std::clamp(q.priority, 0, 2)) q.vtime_ns = vclock_ns_[cls];
  else if (q.jobs.empty()) q.vtime_ns = std::max(q.vtime_ns, vclock_ns_[cls]);
  q.priority = job.priority;
  q.max_batch = job.max_batch;
  q.batch_delay_ns = job.batch_delay_ns;
  int64_t now = opts_.clock->MonoNanos();
  const bool may_run_here =
      job.inline_max_ns < 0 ? !Unmeasured(q)
                            : job.inline_max_ns > 0 && q.measured && q.exec_ns <= static_cast<double>(job.inline_max_ns);
  // A batched request is alone too when its version is idle and batches
  // leave at once then (batch_when_idle): its batch would hold only it.
  const bool alone = job.max_batch == 0 || (opts_.batch_when_idle && q.running == 0);
  if (alone && total_queued_ == 0 && busy_ < opts_.workers && may_run_here) {
    // Idle: run here and now, no hand-off to a worker.
    bool probe = false;
    if (Late(q, job, now, &probe)) {
      ++q.deadline_drops;
      ++running_;  // Stop waits for this answer too
      const double exec_ns = q.exec_ns;
      lock.unlock();
      std::string ref = job.ref();
      Finish(job, LateStatus(ref, exec_ns));
      lock.lock();
      if (--running_ == 0 && stopping_) cv_.notify_all();
      return Status::Ok();
    }
    ++busy_;
    ++running_;
    ++q.executed_inline;
    const double charged = Dispatched(q);
    lock.unlock();
    std::vector<Job> one;
    one.push_back(std::move(job));
    Execute(key, std::move(one), {rows}, probe, charged);
    return Status::Ok();
  }
  if (q.jobs.size() >= queue_depth_) {
    ++q.overloaded;
    return Status(Code::kOverloaded, job.ref() + " has " + std::to_string(q.jobs.size()) +
                                         " requests queued (the limit, [scheduler] queue_depth); retry later");
  }
  // Readiness needs only "max_batch rows or more": counting each job's rows up
  // to max_batch keeps the sum far from overflow (a zero-element input may
  // claim 2^62 rows).
  const int64_t counted = job.max_batch > 0 ? std::min<int64_t>(rows, job.max_batch) : 1;
  q.rows += counted;
  // Answered at its deadline should no worker reach it by then (all busy).
  const int64_t sweep_at = job.deadline_ns ? ExpirySweepAt(job.deadline_ns) : 0;
  q.jobs.push_back({now, rows, counted, std::move(job)});
  ++total_queued_;
  lock.unlock();
  cv_.notify_one();
  if (sweep_at) ArmExpiry(sweep_at, now);
  return Status::Ok();
}

int64_t Scheduler::ExpirySweepAt(int64_t deadline_ns) {
  // One sweep per kExpiryEveryNs at most: the sweep is linear in what is
  // queued, and one timer stands for every deadline due by its time.
  const int64_t at = std::max(deadline_ns, last_expiry_ns_ + kExpiryEveryNs);
  if (at - opts_.clock->MonoNanos() >= kMaxTimerNs || (expiry_armed_ns_ && expiry_armed_ns_ <= at)) return 0;
  expiry_armed_ns_ = at;
  return at;
}

void Scheduler::ArmExpiry(int64_t at_ns, int64_t now) {
  timers_.At(std::chrono::steady_clock::now() + std::chrono::nanoseconds(std::max<int64_t>(at_ns - now, 0) + 1),
             [this] { ExpireLate(); });
}

void Scheduler::Forget(PoolKey key) {
  std::lock_guard<std::mutex> lock(mu_);
  forgotten_.insert(key);
  EraseIfForgotten(key);
}

void Scheduler::EraseIfForgotten(PoolKey key) {
  if (!forgotten_.count(key)) return;
  auto it = queues_.find(key);
  if (it != queues_.end() && it->second.jobs.empty() && it->second.running == 0) queues_.erase(it);
}

size_t Scheduler::AbandonQueued(const Status& why) {
  std::vector<Job> jobs;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [k, q] : queues_) {
      for (auto& e : q.jobs) jobs.push_back(std::move(e.job));
      q.jobs.clear();
      q.rows = 0;
    }
    total_queued_ = 0;
  }
  for (auto& j : jobs) Finish(j, why);
  return jobs.size();
}

void Scheduler::Drain() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    draining_ = true;
  }
  cv_.notify_all();
}

void Scheduler::SetLimits(size_t queue_depth, int starvation_interval) {
  std::lock_guard<std::mutex> lock(mu_);
  queue_depth_ = std::max<size_t>(queue_depth, 1);
  starvation_interval_ = starvation_interval;
}

void Scheduler::ExpireLate() {
  std::vector<Job> late;
  std::vector<double> exec_ns;  // each late job's version's estimate
  int64_t next = 0;  // the earliest deadline still queued
  int64_t now = 0, sweep_at = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
    now = opts_.clock->MonoNanos();
    last_expiry_ns_ = now;
    if (expiry_armed_ns_ <= now) expiry_armed_ns_ = 0;  // this sweep is the one armed (or later)
    for (auto& [k, q] : queues_) {
      for (auto it = q.jobs.begin(); it != q.jobs.end();) {
        if (!it->job.deadline_ns || now <= it->job.deadline_ns) {
          if (it->job.deadline_ns) next = next ? std::min(next, it->job.deadline_ns) : it->job.deadline_ns;
          ++it;
          continue;
        }
        q.rows -= it->counted;
        ++q.deadline_drops;
        --total_queued_;
        late.push_back(std::move(it->job));
        exec_ns.push_back(q.exec_ns);
        it = q.jobs.erase(it);
      }
    }
    for (auto it = queues_.begin(); it != queues_.end();)  // a removed version's last requests dropped
      it = forgotten_.count(it->first) && it->second.jobs.empty() && it->second.running == 0 ? queues_.erase(it)
                                                                                             : std::next(it);
    running_ += static_cast<int>(late.size());  // Stop waits for these answers too
    if (next) sweep_at = ExpirySweepAt(next);
  }
  if (sweep_at) ArmExpiry(sweep_at, now);
  for (size_t i = 0; i < late.size(); ++i) {
    std::string ref = late[i].ref();
    Finish(late[i], LateStatus(ref, exec_ns[i]));
  }
  if (late.empty()) return;
  std::lock_guard<std::mutex> lock(mu_);
  running_ -= static_cast<int>(late.size());
  if (running_ == 0 && stopping_) cv_.notify_all();
}

Scheduler::Queue* Scheduler::Pick(int64_t now, int64_t* wake, PoolKey* key) {
  // The best ready queue of each class: the least execution time used
  // (virtual time), oldest request first among equals.
  Queue* best[3] = {nullptr, nullptr, nullptr};
  int64_t best_at[3] = {0, 0, 0};
  PoolKey best_key[3] = {0, 0, 0};
  const bool guard = starvation_interval_ > 0 &&
                     dispatches_ % static_cast<uint64_t>(starvation_interval_) ==
                         static_cast<uint64_t>(starvation_interval_ - 1);
  for (auto& [k, q] : queues_) {
    if (q.jobs.empty() || Unmeasured(q)) continue;  // (its run in progress wakes a worker when it ends)
    int64_t at = q.jobs.front().at;
    // With no batch of its version running, a batch leaves at once
    // (batch_when_idle): what arrives meanwhile makes the next batch, and
    // waiting would only idle the worker. Behind a running one, a batch
    // waits for more rows until its delay ends, or until any of its
    // requests has spent half of its spare time (deadline - arrival -
    // execution): waiting to the last moment would make any wake-up latency
    // a miss. (A batch not yet full: a short scan, at most queue_depth.)
    bool ready = q.max_batch == 0 || q.unsplit || q.rows >= q.max_batch || draining_ ||
                 (opts_.batch_when_idle && q.running == 0);
    int64_t ready_at = at + q.batch_delay_ns;
    if (!ready) {
      for (const Queued& e : q.jobs)
        if (e.job.deadline_ns) {
          int64_t spare = e.job.deadline_ns - static_cast<int64_t>(q.exec_ns) - e.at;
          ready_at = std::min(ready_at, e.at + std::max<int64_t>(0, spare / 2));
        }
      ready = now >= ready_at;
    }
    if (!ready) {
      int64_t t = ready_at;
      *wake = *wake ? std::min(*wake, t) : t;
      continue;
    }
    const int c = std::clamp(q.priority, 0, 2);
    Queue* b = best[c];
    if (!b || q.vtime_ns < b->vtime_ns || (q.vtime_ns == b->vtime_ns && at < best_at[c])) {
      best[c] = &q;
      best_at[c] = at;
      best_key[c] = k;
    }
  }
  // The highest class; the starvation guard's dispatch takes the class served
  // least recently, so a lower class gets one dispatch in every
  // starvation_interval however many higher versions share the class.
  int pick = -1;
  for (int c = 0; c < 3; ++c) {
    if (!best[c]) continue;
    if (pick < 0) pick = c;
    if (!guard) break;
    if (class_served_[c] < class_served_[pick]) pick = c;
  }
  if (pick < 0) return nullptr;
  *key = best_key[pick];
  return best[pick];
}

void Scheduler::Work() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    if (stopping_) return;
    if (busy_ >= opts_.workers) {  // inline runs count against the workers
      cv_.wait(lock);
      continue;
    }
    int64_t now = opts_.clock->MonoNanos(), wake = 0;
    PoolKey key = 0;
    Queue* q = Pick(now, &wake, &key);
    if (!q) {
      if (wake) cv_.wait_for(lock, std::chrono::nanoseconds(std::max<int64_t>(wake - now, 1000)));
      else cv_.wait(lock);
      continue;
    }
    std::vector<Job> batch, late;
    std::vector<int64_t> rows;
    int64_t total = 0;
    bool probe = false;
    double charged = 0;
    // Jobs of another shape than the batch's (a sequence model's requests
    // of another length: --variable-dim) are passed over, left in order for
    // a batch of their own, so that requests of one shape run together
    // however they interleave; up to max_batch of them, to bound the scan.
    size_t at = 0, passed = 0;
    while (at < q->jobs.size()) {
      Queued& e = q->jobs[at];
      Job& j = e.job;
      int64_t r = e.rows;
      // A batch that probes measures afresh: a request late only by the stale
      // estimate rides along in it (when it may join) rather than be dropped
      // by the estimate its batch is about to replace.
      const bool had_probe = probe;
      if (Late(*q, j, now, &probe) && !(had_probe && now <= j.deadline_ns)) {
        late.push_back(std::move(j));
      } else {
        if (!batch.empty() &&
            // A job queued while its version was not batched (mms model
            // batching changed it meanwhile) runs alone: its rows were never checked to agree.
            (q->max_batch == 0 || j.max_batch == 0 || batch.front().max_batch == 0 || q->unsplit))
          break;  // (a probe granted to this job goes to the batch: it measures afresh all the same)
        if (!batch.empty() && !SameBatchShape(batch.front().inputs, j.inputs)) {
          if (++passed > static_cast<size_t>(q->max_batch)) break;
          ++at;
          continue;
        }
        if (!batch.empty() && r > q->max_batch - total) break;  // full (no overflow: r may be 2^62)
        total += r;
        rows.push_back(r);
        batch.push_back(std::move(j));
      }
      q->rows -= e.counted;
      q->jobs.erase(q->jobs.begin() + static_cast<long>(at));
      --total_queued_;
      if (!batch.empty() && (q->max_batch == 0 || q->unsplit)) break;
    }
    q->deadline_drops += late.size();
    if (!batch.empty()) {
      ++busy_;
      ++running_;
      charged = Dispatched(*q);
    }
    const double exec_ns = q->exec_ns;
    lock.unlock();
    for (auto& j : late) {
      std::string ref = j.ref();
      Finish(j, LateStatus(ref, exec_ns));
    }
    late.clear();
    if (!batch.empty()) Execute(key, std::move(batch), rows, probe, charged);
    lock.lock();
  }
}

namespace {
// Runs one job on its own: its outputs as the model gives them.
Result<std::vector<Tensor>> RunOne(Model* m, const Scheduler::Job& j, const AdapterRows& lora) {
  return j.adapter ? m->RunWithAdapter(j.inputs, lora.adapter) : m->Run(j.inputs);
}
}  // namespace

std::vector<Result<std::vector<Tensor>>> Scheduler::RunBatch(const std::vector<Job>& batch,
                                                           const std::vector<int64_t>& rows, bool* unsplit,
                                                           bool* rerun) {
  std::vector<Result<std::vector<Tensor>>> results(batch.size(), Status(Code::kInternal, "not run"));
  Model* m = batch.front().handle->model();
  bool adapters = false;
  std::vector<AdapterRows> lora;
  for (size_t i = 0; i < batch.size(); ++i) {
    const Job& j = batch[i];
    adapters = adapters || j.adapter;
    lora.push_back({j.adapter ? &static_cast<const AdapterModel*>(j.adapter->model())->weights() : nullptr, rows[i]});
  }
  // Runs batch[lo, hi) as one execution. One caller's input can make the
  // whole batch raise (a model that refuses some values): then each half
  // runs again on its own, down to single requests, so every caller gets its
  // own outcome — not another tenant's error, nor its text — at about
  // 2·log2(n) more executions for one bad request, not n.
  std::function<void(size_t, size_t)> run = [&](size_t lo, size_t hi) {
    if (hi - lo == 1) {
      results[lo] = RunOne(m, batch[lo], lora[lo]);
      return;
    }
    std::vector<const std::vector<Tensor>*> parts;
    for (size_t i = lo; i < hi; ++i) parts.push_back(&batch[i].inputs);
    std::vector<Tensor> inputs = ConcatRows(parts);
    const std::vector<AdapterRows> part_lora(lora.begin() + static_cast<long>(lo), lora.begin() + static_cast<long>(hi));
    auto out = adapters ? m->RunWithAdapters(inputs, part_lora) : m->Run(inputs);
    if (!out.ok()) {
      if (!std::exchange(*rerun, true))
        LogWarn("batch_failed_rerun", {{"ref", batch.front().ref()}, {"requests", batch.size()},
                                       {"error", out.status().message()}});
      const size_t mid = lo + (hi - lo) / 2;
      run(lo, mid);
      // The whole first half failing says the model fails on its own (a
      // broken version, a device error), not one request's values: the rest
      // run alone, about 1.5n executions in all rather than 2n-1.
      bool first_failed = true;
      for (size_t i = lo; i < mid && first_failed; ++i) first_failed = !results[i].ok();
      if (lo == 0 && hi == batch.size() && first_failed && mid - lo > 1) {
        for (size_t i = mid; i < hi; ++i) results[i] = RunOne(m, batch[i], lora[i]);
        return;
      }
      run(mid, hi);
      return;
    }
    auto split =
        SplitRows(*out, std::vector<int64_t>(rows.begin() + static_cast<long>(lo), rows.begin() + static_cast<long>(hi)));
    if (split.ok()) {
      for (size_t i = lo; i < hi; ++i) results[i] = std::move((*split)[i - lo]);
      return;
    }
    // Outputs without the batch's rows along dim 0 (a scalar, a reduction
    // over the batch) say nothing about any one request, and the callers
    // sent nothing wrong: each runs alone and gets what it would have got
    // unbatched.
    *unsplit = true;
    LogWarn("batch_unsplittable", {{"ref", batch.front().ref()}, {"error", split.status().message()}});
    for (size_t i = lo; i < hi; ++i) results[i] = RunOne(m, batch[i], lora[i]);
  };
  try {
    run(0, batch.size());
  } catch (const std::exception& e) {
    results.assign(batch.size(), Status(Code::kInternal, batch.front().ref() + ": " + e.what()));
  }
  return results;
}

double Scheduler::Dispatched(Queue& q) {
  const int c = std::clamp(q.priority, 0, 2);
  class_served_[c] = ++dispatches_;
  vclock_ns_[c] = std::max(vclock_ns_[c], q.vtime_ns);
  ++q.running;
  // Charged now, so that another worker choosing meanwhile sees it; the
  // first execution of a version has no estimate and is charged at its end.
  q.vtime_ns += q.exec_ns;
  return q.exec_ns;
}

void Scheduler::Execute(PoolKey key, std::vector<Job> batch, const std::vector<int64_t>& rows, bool probe,
                        double charged) {
  int64_t tightest = 0;  // the batch's earliest deadline (a probe's verdict)
  for (const auto& j : batch)
    if (j.deadline_ns) tightest = tightest ? std::min(tightest, j.deadline_ns) : j.deadline_ns;
  const uint64_t instance = batch.front().handle->model()->instance_id();  // (not its address: reused once freed)
  int64_t t0 = opts_.clock->MonoNanos();
  bool unsplit = false, rerun = false;
  auto results = RunBatch(batch, rows, &unsplit, &rerun);
  int64_t t1 = opts_.clock->MonoNanos(), dt = t1 - t0;
  const bool ok = std::any_of(results.begin(), results.end(), [](const auto& r) { return r.ok(); });
  bool wake = false, wake_all = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    Queue& q = queues_[key];
    // A probe ran because the estimate was stale: its time replaces it.
    // An unsplit or failed batch ran its requests one by one after the batch: not one execution.
    const bool was_unmeasured = Unmeasured(q);
    // A module's first runs are slow (TorchScript profiles and optimizes its
    // graph on them), a model loaded again's too: during an instance's first
    // kWarmupMeasures successful executions the estimate only falls, to the
    // fastest of them; from then on a moving average of every successful
    // execution. A failed one is no measure at all, a failed probe included
    // (an error in microseconds says nothing of what a run costs: taken as
    // one, a slow model would look fast enough to run inline on the caller's
    // thread). A successful probe's time replaces the estimate.
    const bool measure = !unsplit && !rerun && ok;
    if (measure) {
      const double t = static_cast<double>(dt);
      if (instance != q.instance) {
        q.instance = instance;
        q.measures = 0;
      }
      if (probe) {
        q.exec_ns = t;
        q.measured = true;
      } else if (!q.measured) {
        q.exec_ns = t;
        q.measured = true;
      } else {
        q.exec_ns = q.measures < kWarmupMeasures ? std::min(q.exec_ns, t) : 0.8 * q.exec_ns + 0.2 * t;
      }
      ++q.measures;
    }
    --q.running;
    // Its backlog waited for this measure while workers went idle: all may take it now.
    wake_all = was_unmeasured && !Unmeasured(q) && !q.jobs.empty();
    // Only a measure refreshes the estimate's age: a version whose every
    // batch failed would otherwise keep a stale estimate that never counts as
    // stale. A failed probe does too, so the next waits its turn (a failing
    // version is not probed by every request), its wait unchanged.
    if (measure || probe) q.last_exec_ns = t1;
    q.vtime_ns += static_cast<double>(dt) - charged;  // the estimate charged at dispatch, corrected
    if (probe) q.probing = false;
    // A probe that missed its deadline confirmed the estimate: probe less
    // often. Any other measure refreshes the estimate itself.
    if (measure)
      q.stale_after_ns = probe && tightest && t1 > tightest ? std::min(2 * q.stale_after_ns, kMaxStaleEstimateNs)
                                                            : kStaleEstimateNs;
    q.executed += batch.size();
    ++q.batches;
    if (unsplit) ++q.unsplit;
    if (rerun) ++q.reruns;
    for (int64_t r : rows) q.batched_rows += static_cast<uint64_t>(r);
    --busy_;
    wake = total_queued_ > 0;  // a worker is needed only for queued work (no needless wake-ups)
  }
  if (wake_all) cv_.notify_all();
  else if (wake) cv_.notify_one();
  for (size_t i = 0; i < batch.size(); ++i) Finish(batch[i], std::move(results[i]));
  std::lock_guard<std::mutex> lock(mu_);
  EraseIfForgotten(key);  // (a removed version's last request answered)
  if (--running_ == 0 && stopping_) cv_.notify_all();  // Stop waits for this
}

nlohmann::json Scheduler::Stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  nlohmann::json j = nlohmann::json::object();
  for (const auto& [k, q] : queues_)
    j[std::to_string(k)] = {{"queued", q.jobs.size()},
                            {"queued_rows", q.rows},
                            {"executed", q.executed},
                            {"executed_inline", q.executed_inline},
                            {"batches", q.batches},
                            {"mean_batch", q.batches ? static_cast<double>(q.executed) / static_cast<double>(q.batches) : 0.0},
                            {"rows", q.batched_rows},
                            {"deadline_drops", q.deadline_drops},
                            {"overloaded", q.overloaded},
                            {"unsplit", q.unsplit},
                            {"reruns", q.reruns},
                            {"priority", q.priority},
                            {"max_batch", q.max_batch},
                            {"exec_ms", q.exec_ns / 1e6}};
  return j;
}

size_t Scheduler::queued() const {
  std::lock_guard<std::mutex> lock(mu_);
  return total_queued_;
}

}  // namespace mms
