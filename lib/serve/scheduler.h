// Scheduler: where admitted requests wait for a worker. One bounded queue per
// version; a fixed set of workers executes them.
//
// * Bounded: a full queue refuses at once with OVERLOADED (never an unbounded
//   backlog).
// * Deadlines: a request whose deadline would pass before its execution ends
//   (by the version's recent execution time) is dropped before it runs, with
//   DEADLINE_EXCEEDED. Only executions refresh that estimate, so a version
//   that has run nothing for kStaleEstimateNs no longer trusts it: the next
//   request whose deadline has not passed runs anyway (one at a time), and
//   its time replaces the estimate — one slow outlier cannot make every
//   later request with a deadline fail for good. A probe that misses its
//   deadline too confirms the estimate: the wait before the next probe
//   doubles (up to kMaxStaleEstimateNs), so a version called less than once
//   a second with deadlines it cannot meet does not run every request late.
// * Priorities: classes 0 (high), 1 (normal), 2 (low). Workers serve the
//   highest class, except that every `starvation_interval`-th dispatch
//   ignores classes, so lower classes always get a bounded share.
// * Fair across versions, by execution time: within a class, the worker
//   serves the version that has used the least execution time (start-time
//   fair queuing: each queue's virtual time grows by its executions' time;
//   a queue that was empty starts from the class's virtual clock, the start
//   of the latest dispatch, so idling earns no credit), its oldest request
//   first. A version not yet measured (no execution has ended) runs one
//   execution at a time: charged nothing at dispatch, it would otherwise look
//   free and take every worker before its first run showed what it costs. A version of 1 ms calls beside one of 100 ms calls, both
//   saturated, gets half the workers' time, not one call in two; a quiet
//   version still waits for at most the executions already running. (Not
//   the oldest request of all, which queued every other model behind a busy
//   one's whole backlog; not plain turns, which gave a slow model's clients
//   nearly all the time.)
// * A queued request whose deadline passes is answered DEADLINE_EXCEEDED at
//   its deadline (a timer thread), not when a worker reaches it.
// * Dynamic batching (versions with max_batch > 0): requests with the same
//   input shapes (but dim 0) are concatenated along dim 0 up to max_batch rows,
//   run once, and each caller gets exactly its rows. With `batch_when_idle`
//   (the default), a batch leaves as soon as a worker is free while no batch
//   of its version runs — work-conserving: rows arriving during an execution
//   make the next batch, so batches grow with the load and a lone request
//   does not wait for company that is not coming. Behind a running batch
//   of its version (or without batch_when_idle, always), a batch waits at most
//   `batch_delay` after its oldest request for more to arrive, and at most
//   half of that request's spare time (deadline − arrival − execution time),
//   so it leaves while the request can still make its deadline. A model
//   whose outputs do not have the batch's rows along dim 0 (a scalar, a
//   reduction) cannot be split: each request of that batch is then run
//   alone and gets what it would have got unbatched, and the version is no
//   longer batched (until the scheduler is rebuilt; counted: "unsplit").
//   A batch whose run fails (one caller's input makes the model raise) is
//   run again in halves, down to single requests, so each caller gets its own outcome
//   (counted: "reruns"); the version stays batched.
// * LoRA adapters: a job may carry an adapter (its handle is the base's).
//   A batch whose jobs carry adapters runs through Model::RunWithAdapters,
//   each job's rows with its own adapter — the caller decides by the queue
//   key whether adapters share batches (a base taking stacked adapter
//   weights) or each adapter has its own queue.
// * Idle fast path: with nothing queued and a worker free, a request runs
//   at once on the submitting thread (no hand-off) if it is unbatched, or
//   batched with batch_when_idle and no batch of its version running. Not
//   when the job bounds what its thread may run (Job::inline_max_ns) and
//   the version's estimate is over that bound, or there is none yet.
//
// Thread-safety: Submit and Stats from any thread; `done` callbacks run on a
// worker (or the submitting thread) with no scheduler lock held.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <set>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/clock.h"
#include "core/timer.h"
#include "pool/model_pool.h"

namespace mms {

class Scheduler {
 public:
  // How long without an execution before a version's execution-time estimate
  // no longer justifies dropping a request whose deadline has not passed.
  static constexpr int64_t kStaleEstimateNs = 1'000'000'000;
  // The longest wait between probes of an estimate that probes keep confirming.
  static constexpr int64_t kMaxStaleEstimateNs = 64'000'000'000;
  // A version's estimate is the fastest of a model instance's first this
  // many successful executions (a TorchScript module's first runs profile
  // and optimize its graph, and take many times as long; a model loaded
  // again is a new instance), never raised by them, and failed executions
  // meanwhile are no measure; from then on a moving average (weight 0.2).
  static constexpr int kWarmupMeasures = 3;
  // Queued deadlines further off than this get no timer (a worker reaches
  // them first, or drops them when it does).
  static constexpr int64_t kMaxTimerNs = 600'000'000'000;
  // Queued deadlines are swept at most this often (each sweep is linear in
  // what is queued): a request is answered within this of its deadline.
  static constexpr int64_t kExpiryEveryNs = 5'000'000;
  struct Options {
    int workers = 2;                              // [scheduler] workers (resolved; below 1 means 1)
    size_t queue_depth = 1000;                    // [scheduler] queue_depth, per version
    int starvation_interval = 8;                  // every Nth dispatch ignores priority
    bool batch_when_idle = true;                  // [scheduler] batch_when_idle (see "Dynamic batching")
    Clock* clock = Clock::Real();
  };
  struct Job {
    HandlePtr handle;              // keeps the model on its device while queued
    HandlePtr adapter;             // a LoRA adapter's handle (handle is then its base), or null
    // What messages name its queue by, when not handle's ref: an adapter
    // with a queue of its own (it runs on its base's handle).
    std::string queue_ref;
    const std::string& ref() const { return queue_ref.empty() ? handle->ref() : queue_ref; }
    std::vector<Tensor> inputs;    // in forward() order
    int64_t deadline_ns = 0;       // monotonic; 0 = none
    int priority = 1;              // 0 high, 1 normal, 2 low
    int max_batch = 0;             // rows; 0 = no batching
    int64_t batch_delay_ns = 0;
    // The longest execution the submitting thread may run itself when the
    // scheduler is idle, by the version's measured estimate; -1: any (a
    // version not yet measured too). A thread that must not be held long
    // (mmsd: nng's receiving thread) sets it, and a longer or unmeasured
    // execution goes to a worker instead. 0: never on the submitting thread.
    int64_t inline_max_ns = -1;
    std::function<void(Result<std::vector<Tensor>>)> done;
  };

  explicit Scheduler(const Options& o);
  ~Scheduler();  // Stop()

  // Finishes nothing more: queued jobs are answered CANCELLED, the workers
  // finish what they run and are joined, executions running inline on other
  // threads are waited for (answers included), and later Submits return
  // CANCELLED. Idempotent; not from a `done` callback.
  void Stop();

  // OVERLOADED when the version's queue is full; INVALID_ARGUMENT for a
  // batched request whose inputs disagree on rows; CANCELLED after Stop().
  // On error `done` is not called. A job's handles are released before its
  // `done` runs, so a caller answered is never still holding the model.
  // The queue's priority is the latest job's: give every job of one key the same.
  Status Submit(PoolKey key, Job job);
  // Per version: queued, executed (of which executed_inline: on the
  // submitting thread), batches, rows, mean batch size, deadline drops,
  // overloaded refusals, unsplittable batches, failed batches rerun in
  // halves, recent execution ms.
  nlohmann::json Stats() const;
  size_t queued() const;
  // Answers the queued requests whose deadline has passed (the timer's work).
  void ExpireLate();
  // A version removed: its queue goes once empty and idle — now, or when
  // its last request is answered. Every dispatch scans every queue, so
  // removed versions' queues cost each request for ever.
  void Forget(PoolKey key);
  // Answers every queued job (none of them started) with `why`, leaving
  // running executions and the workers be: a shutdown whose grace has
  // passed tells its waiting callers their requests never ran, rather than
  // dropping their connections. Returns how many were answered.
  size_t AbandonQueued(const Status& why);
  // Shutdown begins: batches stop waiting for more rows (their delay) and run
  // as soon as a worker is free, so the drain is not held up by a delay.
  void Drain();
  // New queue depth and starvation interval (SIGHUP): later Submits and
  // dispatches follow them; requests already queued stay (a smaller depth
  // refuses new ones until the queue is below it).
  void SetLimits(size_t queue_depth, int starvation_interval);

 private:
  struct Queued {
    int64_t at = 0;    // arrival, mono ns
    int64_t rows = 1;  // the job's rows (dim 0) when its inputs agree on them, else 1
    int64_t counted = 1;  // what it added to its queue's `rows` (its version's batching may change while it waits)
    Job job;
  };
  struct Queue {
    std::deque<Queued> jobs;
    int64_t rows = 0;                          // queued rows, each job's counted up to max_batch (readiness only)
    int priority = 1, max_batch = 0;
    int64_t batch_delay_ns = 0;
    double exec_ns = 0;                        // EWMA of one execution
    int64_t last_exec_ns = 0;                  // when the last execution ended (mono ns; 0 = never)
    bool probing = false;                      // a request is running despite a stale estimate
    int64_t stale_after_ns = kStaleEstimateNs;  // idle this long, the estimate is probed (doubles per missed probe)
    double vtime_ns = 0;                       // execution time used, on its class's virtual clock (fair share)
    bool measured = false;                     // exec_ns holds a measured execution (else no estimate yet)
    int measures = 0;                          // successful executions of `instance` measured (kWarmupMeasures)
    uint64_t instance = 0;                     // the model instance measured (one loaded again warms up again)
    int running = 0;                           // its executions in progress
    uint64_t executed = 0, batches = 0, batched_rows = 0, deadline_drops = 0, overloaded = 0, unsplit = 0, reruns = 0;
    uint64_t executed_inline = 0;              // run on the submitting thread (the idle fast path)
  };
  void Work();
  // mu_ held: the queue to serve now (nullptr if none), or when to look again.
  Queue* Pick(int64_t now, int64_t* wake, PoolKey* key);
  // mu_ held: whether `j` is to be dropped as late now. Sets *probe (and
  // q.probing) when it runs only because q's estimate is stale.
  bool Late(Queue& q, const Job& j, int64_t now, bool* probe);
  // mu_ held: q has no estimate yet and its first execution is running, so
  // its other requests wait for that measure.
  static bool Unmeasured(const Queue& q) { return !q.measured && q.running > 0; }
  // mu_ held: books a dispatch from `q`: the class's turn and virtual clock,
  // and q's estimated execution time, which Execute later corrects to the
  // time taken. Returns what it charged.
  double Dispatched(Queue& q);
  void Execute(PoolKey key, std::vector<Job> batch, const std::vector<int64_t>& rows, bool probe, double charged);
  // mu_ held: when to sweep for a queued deadline at `deadline_ns` (mono),
  // booked as armed; 0 when a sweep is due by then already (or too far off).
  int64_t ExpirySweepAt(int64_t deadline_ns);
  // Arms the sweep ExpirySweepAt booked (mu_ not held).
  void ArmExpiry(int64_t at_ns, int64_t now);
  // Runs one batch on the model; a thrown exception becomes INTERNAL. Sets
  // *unsplit when the batch's outputs could not be split by rows, *rerun
  // when the batch failed (each job was then run alone).
  static std::vector<Result<std::vector<Tensor>>> RunBatch(const std::vector<Job>& batch, const std::vector<int64_t>& rows,
                                                           bool* unsplit, bool* rerun);

  const Options opts_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<PoolKey, Queue> queues_;  // guarded by mu_
  std::set<PoolKey> forgotten_;      // guarded by mu_: removed versions (ids are never reused)
  // mu_ held: erases `key`'s queue when forgotten, empty and idle.
  void EraseIfForgotten(PoolKey key);
  size_t total_queued_ = 0;          // guarded by mu_
  int busy_ = 0;                     // guarded by mu_: workers (or inline runs) executing
  int running_ = 0;                  // guarded by mu_: executions not yet answered (Stop waits)
  uint64_t dispatches_ = 0;          // guarded by mu_
  size_t queue_depth_;               // guarded by mu_ (from Options; SetLimits)
  int starvation_interval_;          // guarded by mu_ (from Options; SetLimits)
  uint64_t class_served_[3] = {0, 0, 0};  // guarded by mu_: dispatches_ when each class was last served
  double vclock_ns_[3] = {0, 0, 0};       // guarded by mu_: per class, the latest dispatch's start (virtual time)
  bool stopping_ = false;            // guarded by mu_
  bool draining_ = false;            // guarded by mu_: Drain() was called
  int64_t expiry_armed_ns_ = 0;      // guarded by mu_: when the next deadline sweep is due (0: none armed)
  int64_t last_expiry_ns_ = 0;       // guarded by mu_: when the last sweep ran
  std::vector<std::thread> workers_;
  TimerQueue timers_;  // queued deadlines; last member: destroyed (joined) first
};

}  // namespace mms
