// ModelPool: the tiered home of every servable version — device → host →
// disk — with byte budgets measured from the weights, an eviction policy per
// tier, pins, single-flight loads, warm-up, health with backoff, and
// refcounted handles. It decides *when* to load and evict; a Loader knows
// *how* (TorchScript packed or plain; fakes in tests).
//
// * Tiers are inclusive: a model on a device also keeps its host copy, so
//   demotion device → host is free (the block goes back to the arena and the
//   model is rebound to its host buffer) and promotion is one copy — none on
//   a zero-copy device (the host itself, "cpu"), where only the budget
//   applies.
// * A model with handles out is never evicted; pinned models never are. When
//   nothing can be evicted a request fails with POOL_FULL naming what holds
//   the memory — never a hang: at once when pins alone fill the room (or
//   Options::room_wait_ns is 0); else it waits up to room_wait_ns for the
//   requests in flight (or loads, or standing holds) in the way to end — a
//   request with a model on every slot is a moment's delay, not an error.
//   The wait holds no thread: it is retried when room may have freed (a
//   handle released, leaving none or only a standing hold; a load failing;
//   an unpin, evict or removal), and refused for good when its time is up.
//   A load started claims its device room until it is placed, so the
//   checks of others meanwhile do not count on it.
// * Single flight: concurrent requests for a cold model wait on one load;
//   its result or error reaches every waiter as soon as it is known. A failed
//   load or warm-up marks the version unhealthy: requests fail at once with
//   the reason until a backoff (doubling, capped at 5 minutes) has passed,
//   then the next request retries.
// * Placement: the device with the most free bytes that can fit the model
//   (after evicting by policy); each device has its own arena and budget.
//
// Thread-safety: every method may be called from any thread. One mutex
// guards the pool's state; it is never held across a disk read, a copy,
// freeing a dropped model (a reaper thread does that), a
// warm-up inference or a callback. Acquire's callback runs on the caller's
// thread for a hit and on `callbacks` (or a loader thread) after a load; for
// a request that waited for room, also on the pool's room timer thread (a
// retry, or the end of its wait) or the thread calling StopLoads,
// AbandonRoomWaits or DropAnsweredWaiters. Callbacks must be short: a slow
// one delays every room wait's retry and end.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/clock.h"
#include "core/executor.h"
#include "core/log.h"
#include "core/status.h"
#include "core/timer.h"
#include "pool/device.h"
#include "pool/model.h"
#include "pool/policy.h"

namespace mms {

// What the pool needs to know about a version (from the registry).
struct PoolItem {
  PoolKey key = 0;             // the version's registry id
  std::string ref;             // "rec:3"
  Loader::Source source;       // where its weights are
  uint64_t bytes = 0;          // weight bytes as registered (0 = unknown until loaded)
  std::string sample_input;    // tensor file for warm-up ("" = none)
  std::vector<InputSpec> inputs;
  // The device to place it on when that one can take it (else the least
  // loaded, as without): an adapter's base's, so that its batches need no
  // copy between devices. "" = none (an earlier acquire's stays). A model
  // already on another device stays there (it follows at its next load).
  std::string device;
};

class ModelPool;

// Keeps a model on its device while any copy lives.
class ModelHandle {
 public:
  ~ModelHandle();
  Model* model() const { return model_; }
  const std::string& ref() const { return ref_; }
  const std::string& device() const { return device_; }
  PoolKey key() const { return key_; }
  // True when this acquire had to load the model (a miss).
  bool loaded() const { return loaded_; }
  // Marks this handle as a standing hold by `holder` rather than a request
  // in flight (a shadow run keeps its candidate's handle between jobs):
  // the pool's snapshot lists it under `held_by`, not `in_flight`, and a
  // refused eviction names it. `holder` says who and how to end the hold,
  // e.g. "the shadow run of rec (mms shadow stop rec ends it)". Call once,
  // from the handle's owner.
  void HoldFor(std::string holder);

 private:
  friend class ModelPool;
  ModelHandle(ModelPool* pool, PoolKey key, Model* m, std::string ref, std::string device, bool loaded, bool counted)
      : pool_(pool), key_(key), model_(m), ref_(std::move(ref)), device_(std::move(device)), loaded_(loaded),
        counted_(counted) {}
  ModelPool* pool_;
  PoolKey key_;
  Model* model_;
  std::string ref_, device_;
  bool loaded_;
  bool counted_;        // a request's: its end is the version's last use
  std::string holder_;  // "" while a request
};
using HandlePtr = std::shared_ptr<ModelHandle>;
using AcquireCallback = std::function<void(Result<HandlePtr>)>;

class ModelPool {
 public:
  struct Options {
    uint64_t host_budget = 0;                     // [pool] host_budget (bytes; resolved, >0)
    PolicyOptions policy;                         // [pool] policy, policy_half_life
    int load_threads = 2;                         // [pool] load_threads
    int64_t retry_backoff_ns = 2'000'000'000;     // [pool] load_retry_backoff (first; doubles)
    int64_t max_backoff_ns = 300'000'000'000;     // 5 minutes
    // [pool] room_wait: how long a request may wait for room that requests
    // in flight, loads or standing holds occupy (never for room pins fill);
    // 0: POOL_FULL at once. Ended on the real clock (a TimerQueue); `clock`
    // only measures it for the refusal's message.
    int64_t room_wait_ns = 0;
    bool warmup = true;                           // [pool] warmup
    Clock* clock = Clock::Real();
    Executor* callbacks = nullptr;                // where post-load callbacks run (null: loader thread)
    std::string config_section = "pool";          // named in POOL_FULL messages: [pool] host_budget, ...
  };

  // How an acquire may make room for a model that is not on a device.
  enum class Room {
    kEvict,     // evict by policy (requests)
    kFreeOnly,  // only free room: never evicts (a shadow run's candidate); POOL_FULL at once otherwise
  };

  // Devices and the loader are injected (tests pass cpu:N devices and fake loaders).
  static Result<std::unique_ptr<ModelPool>> Create(const Options& opts, std::vector<std::unique_ptr<Device>> devices,
                                                   std::unique_ptr<Loader> loader, HostAllocator host_alloc);
  ~ModelPool();  // waits for running loads

  // Runs the loads already queued (their waiters are answered), joins the
  // loader threads and accepts no more loads (later waiters: CANCELLED);
  // requests waiting for room are answered CANCELLED.
  // For an orderly teardown of pools whose callbacks use each other.
  void StopLoads();

  // Calls `cb` with a handle once `item` is on a device, loading it if needed.
  // `counted`: a request's, in the hit and miss figures and the last use
  // (mms load and mms pin are not). `answered` (optional): set by the caller
  // once it has answered the request some other way (at its deadline) while
  // waiting; `cb` still runs, but the wait is no longer shown as waiting.
  void Acquire(const PoolItem& item, AcquireCallback cb, Room room = Room::kEvict, bool counted = true,
               std::shared_ptr<const std::atomic<bool>> answered = nullptr);
  // Blocking form (mms load, tests); `timeout_ns` bounds the wait.
  Result<HandlePtr> AcquireSync(const PoolItem& item, int64_t timeout_ns = 600'000'000'000, Room room = Room::kEvict);
  // Whether a request for `key` waits for room now (for an error's wording).
  bool WaitingForRoom(PoolKey key) const;
  // Whether `key` is draining now (DrainForRoom; for an error's wording).
  bool Draining(PoolKey key) const;
  // Whether Forget has removed `key` (its refusals say so themselves).
  bool Removed(PoolKey key) const;
  // The device `key` is on, or the one its load in progress claimed; ""
  // when neither (where an adapter pinned on it should go: PoolItem::device).
  std::string DeviceOf(PoolKey key) const;
  // Answers the requests waiting for room now with `st` (a shutdown whose
  // grace has passed: they never ran); how many.
  size_t AbandonRoomWaits(const Status& st);
  // Lets go of the requests waiting for room that were answered meanwhile
  // (Acquire's `answered`; their callbacks run, with DEADLINE_EXCEEDED), and
  // of what their callbacks hold. For the caller that answered one.
  void DropAnsweredWaiters();
  // Counts the refusals (POOL_FULL, evict) in which a standing hold
  // (ModelHandle::HoldFor) stood in the way. A holder lets go of its handle
  // when this moves, so that the next request finds the room.
  uint64_t hold_refusals() const { return hold_refusals_.load(); }

  // Pinned versions are never evicted; this starts loading one that is not
  // on a device yet (it does not wait: AcquireSync does). Idempotent.
  void Pin(const PoolItem& item);
  bool IsPinned(PoolKey key) const;
  void Unpin(PoolKey key);
  // Demotes one tier (device → host → disk). IN_USE when pinned, in flight
  // or still loading; FAILED_PRECONDITION when not loaded, or with
  // `device_only` when not on a device (a shadow's yield: one tier at most,
  // also when a drain demoted the model as the shadow let go of it).
  Result<std::string> Evict(PoolKey key, bool device_only = false);
  // The version left the registry: dropped as soon as no handle holds it,
  // and never served again (ids are never reused): a later Acquire, from a
  // request that read the registry before, gets NOT_FOUND; Pin does nothing.
  void Forget(PoolKey key);
  // Its stored files were replaced (mms model repack; `item` names the new
  // ones, which the version uses from now on — also while loading: taken
  // when the load ends): a failed load is retried at the next request
  // instead of after its backoff, and reads the new files. A copy in memory
  // (on a device or the host tier) came from the replaced files: it is
  // dropped at once when no request holds it, else once the last handle is
  // released (a standing hold is asked to let go: hold_refusals) — requests
  // arriving meanwhile wait for that, then for the load of the new files.
  // Those already holding the old copy keep it, and so do requests that
  // join a load of the old files already in progress: it is dropped once
  // they let go. Only this changes a known version's item: Acquire and Pin
  // create an entry from theirs but never overwrite one (a request's item
  // may come from a snapshot older than the repack), and Replaced of a
  // version not yet in the pool records it, on disk, for the same reason.
  void Replaced(const PoolItem& item);
  // FAILED_PRECONDITION when `item` is bigger than every device budget or the host
  // budget: no eviction could ever make room.
  Status FitsAtAll(const PoolItem& item) const;

  // Per device and tier: models, bytes used / budget, pins, in-flight,
  // health, last use, loads, evictions, hits, misses.
  nlohmann::json Snapshot() const;
  // One version (or null when the pool has never seen it).
  std::optional<nlohmann::json> Health(PoolKey key) const;
  // When its last load failed (the clock's mono ns; 0 = never): a failure
  // after a request began is its own load's, one before is a backoff's replay.
  int64_t LastLoadFailure(PoolKey key) const;
  // Totals for `mms status`.
  nlohmann::json Summary() const;
  // Device descriptions (name, kind, memory, budget, used).
  nlohmann::json Devices() const;

 private:
  friend class ModelHandle;
  struct Entry;
  struct DeviceSlot;
  struct Waiter;      // one waiting for an acquire's answer: its callback and how it asked
  struct RoomWait;    // a request's wait for room: when it began, whether its time is up
  struct RoomWaiter;  // one waiting: its item and its Waiter
  enum class Tier { kDisk, kHost, kDevice };

  ModelPool(const Options& opts, std::unique_ptr<Loader> loader, HostAllocator alloc);
  Entry& EntryFor(const PoolItem& item);             // mu_ held
  // Waiters for e's load not answered elsewhere meanwhile (Acquire's `answered`). mu_ held.
  static size_t Waiting(const Entry& e);
  HandlePtr NewHandle(Entry& e, bool loaded, bool counted);  // mu_ held; takes a ref
  void Release(PoolKey key, const std::string& holder, bool counted);
  void Hold(PoolKey key, const std::string& holder);
  std::string Why(const Entry& e) const;              // mu_ held: why it cannot be evicted
  // mu_ held: standing holds are all that keep it (neither pinned, loading
  // nor in flight): hold_refusals_ counts only refusals such holds caused.
  bool OnlyHeld(const Entry& e) const;
  static int Holds(const Entry& e);                   // mu_ held: the standing holds among its refs
  bool HasFreeRoom(const Entry& e) const;             // mu_ held: on a device and host without evicting
  bool HasFreeDeviceRoom(const Entry& e) const;       // mu_ held: on a device without evicting
  uint64_t Claimed(size_t index, const Entry& e) const;  // mu_ held: device `index`'s room claimed by others' loads
  // mu_ held. Whether `o`'s claim on device `index` is room `e` must leave
  // be: every other load's, but a load placing no more than it claimed, on
  // the zero-copy device of its claim, leaves only the claims made before
  // its own (those after counted it, in bytes).
  bool ClaimAhead(const Entry& o, size_t index, const Entry& e) const;
  Status NoFreeRoom(const Entry& e) const;            // the POOL_FULL of a Room::kFreeOnly acquire
  // Acquire for a waiter (a new request's, or one retried after waiting for room).
  void AcquireWaiter(const PoolItem& item, Waiter w);
  static Status AnsweredMeanwhile(const PoolItem& item);  // for a waiter answered at its deadline
  // mu_ held: pinned models alone leave `e` no room (waiting cannot help).
  bool PinsFill(const Entry& e) const;
  // mu_ held, after a room check refused `w` POOL_FULL for `e`: queues it to
  // wait for room and returns true; false when it may not wait (room_wait_ns
  // 0, a free-only or answered waiter, `e` removed, pins fill the room, its
  // time is up and no drain for it goes on, shutting down). Its room_wait
  // runs from the first call without `parked`.
  // `refused`: a room check refused it (counted), not only queued behind
  // waiters whose retry is due.
  // `parked`: it waits for `e` itself, which is being drained (its hit or
  // miss is counted when it is served).
  bool WaitForRoom(Entry& e, Waiter& w, bool refused = true, bool parked = false);
  // mu_ held: `st` for a waiter refused for good; says how long it waited.
  Status Refused(Status st, const Waiter& w);
  // mu_ held: has the waiting requests retried (on the timer thread), as room may have freed.
  void WakeRoomWaiters();
  void RetryRoomWaiters();                                 // the timer thread: WakeRoomWaiters' retry
  void RoomWaitOver(const std::shared_ptr<RoomWait>& rw);  // the timer thread: its time is up
  // The timer thread, halfway through `rw`'s room_wait and every eighth of
  // it after that until it ends: when it is still refused device room and
  // models in flight hold that room (their requests overlap, so none is
  // ever idle when a retry runs), marks as draining the policy's victims
  // among them on one device, as few as make the room. A
  // draining model takes no new requests (they wait, parked — see
  // WaitForRoom — for as long as the drain lasts) and is evicted as its last
  // request ends, for `rw` to take the room, which `rw` waits for past its
  // room_wait if need be; the drain ends without an eviction once `rw` stops
  // waiting (served from other room, answered) or the model is pinned.
  void DrainForRoom(const std::shared_ptr<RoomWait>& rw);
  // mu_ held: whether models drain for `rw` now, or for another request for its model.
  bool DrainsFor(const RoomWait& rw) const;
  // mu_ held: ends the drains begun for `rw` (its parked requests are retried).
  void EndDrains(const RoomWait& rw);
  // Ends room waits (StopLoads): those waiting are answered CANCELLED. Idempotent.
  void StopRoomWaits();
  void StartLoad(Entry& e);                          // mu_ held
  void TakeReplaced(Entry& e, const PoolItem& item);  // mu_ held: see Replaced
  void RunLoad(PoolKey key);                         // loader thread
  struct Cand {  // a device that can take a model
    int index;
    uint64_t free, reclaimable;
  };
  // The device to try first among `cands` (non-empty): e's preferred one
  // when there, else the least loaded (the most free bytes, so no eviction
  // when one has room).
  static const Cand& FirstChoice(const std::vector<Cand>& cands, int preferred);
  int DeviceIndex(const std::string& name) const;  // -1 when none is named so
  bool HostDroppable(PoolKey k, const Entry& e, PoolKey for_key) const;  // mu_ held
  // mu_ held: OK when `bytes` fit in the host tier after evicting what may
  // be, POOL_FULL naming the holders otherwise (`describe` false: with no
  // message, which is costly to compose); changes nothing but hold_refusals_.
  Status HostRoom(uint64_t bytes, PoolKey for_key, bool describe = true) const;
  Status HostFull(uint64_t bytes, PoolKey for_key) const;  // mu_ held: HostRoom's POOL_FULL
  // mu_ held: the devices that can take `e` (after evictions) into `cands`;
  // POOL_FULL naming the holders when none can (`describe`: as HostRoom's).
  Status DeviceRoom(const Entry& e, std::vector<Cand>* cands, bool describe = true) const;
  // mu_ held: device `i` has room for `need` bytes of `e` (as DeviceRoom
  // counts it); its figures in `cand`, and in `held_only` what standing
  // holds alone keep when letting go of them would make the room.
  bool RoomOn(size_t i, const Entry& e, uint64_t need, Cand* cand = nullptr, uint64_t* held_only = nullptr) const;
  // mu_ held: on a copying device, places `e` into the room the claims made
  // before its own leave, when every later claim still has its room then.
  bool PlaceBeforeLaterClaims(size_t index, Entry& e, uint64_t need);
  // mu_ held: whether on copying device `index` evicting what may be and
  // compacting idle pinned models (as PlaceOnDevice does) would leave one
  // range of `need` bytes for `e` beside the other loads' claims: bytes
  // alone can be in pieces between models in flight.
  // `also_freed`: models counted as evicted too (a drain's victims).
  bool OneRangeAfterEviction(size_t index, const Entry& e, uint64_t need,
                             const std::vector<const Entry*>& also_freed = {}) const;
  Status DeviceFull(const Entry& e) const;           // mu_ held: the POOL_FULL for no device
  static uint64_t DeviceNeed(const Entry& e);        // its whole arena blocks
  Status NeverFits(const Entry& e) const;            // mu_ held: FAILED_PRECONDITION when bigger than a whole budget
  Status MakeHostRoom(uint64_t bytes, PoolKey for_key);      // mu_ held
  Result<int> PlaceOnDevice(Entry& e);               // mu_ held: reserves a block
  // mu_ held: moves idle models' blocks on device `index` down into the
  // gaps below them (lowest first) until a free range of `need` bytes
  // exists; whether one does. Models in flight or loading stay where they are.
  bool Compact(size_t index, uint64_t need);
  // mu_ held: moves idle `e`'s block to `offset` (free once its own range is):
  // the model serves from its host copy, the block is freed and taken anew
  // there, filled from the host copy and bound again. On failure (false) the
  // model is left as DemoteFromDevice leaves it: on its host copy, or on disk
  // when it cannot be bound to that.
  bool Relocate(Entry& e, uint64_t offset);
  void DemoteFromDevice(Entry& e);                   // mu_ held
  void DropHost(Entry& e);                           // mu_ held
  // mu_ held: hands a dropped model and its host buffer to reaper_ to free.
  void Retire(std::unique_ptr<Model> model, std::shared_ptr<Buffer> host);
  void EraseForgotten(Entry& e);                     // mu_ held; a forgotten entry and its policy history go
  // mu_ held: ends a load, hands out handles or the error; returns the
  // waiters' callbacks, to run after mu_ is released.
  std::vector<std::function<void()>> Finish(Entry& e, const Status& st, bool loaded);
  // mu_ held: what holds device `index`'s room that `for_entry` was refused:
  // models that may not be evicted now, and other loads' claims.
  std::string Holders(size_t index, const Entry& for_entry) const;
  bool Evictable(const Entry& e) const;               // mu_ held
  nlohmann::json EntryJson(const Entry& e, int64_t now) const;  // mu_ held
  const char* TierName(Tier t) const;
  void Post(std::function<void()> fn);

  const Options opts_;
  const std::unique_ptr<Loader> loader_;
  const HostAllocator host_alloc_;
  std::unique_ptr<Executor> load_exec_;
  std::unique_ptr<Executor> reaper_;  // frees dropped models off mu_ (one thread)

  // Log lines written under it go out once it is let go (a blocked log sink
  // must not stall every Acquire, hits included).
  mutable LogDeferringMutex mu_;
  std::vector<std::unique_ptr<DeviceSlot>> devices_;          // guarded by mu_ (set fixed at Create)
  std::unordered_map<PoolKey, std::unique_ptr<Entry>> entries_;  // guarded by mu_
  std::unordered_set<PoolKey> removed_;                          // Forget's keys (mu_)
  std::unique_ptr<EvictionPolicy> host_policy_;                // guarded by mu_
  uint64_t host_used_ = 0;                                     // guarded by mu_
  uint64_t hits_ = 0, misses_ = 0, loads_ = 0, evictions_ = 0, failures_ = 0;  // guarded by mu_
  mutable std::atomic<uint64_t> hold_refusals_{0};  // counted by the const room checks under mu_
  std::vector<RoomWaiter> room_waiters_;             // guarded by mu_; in the order they began to wait (seq)
  uint64_t room_waits_ = 0, room_wait_timeouts_ = 0, room_seq_ = 0;  // guarded by mu_
  uint64_t room_drains_ = 0;                          // guarded by mu_: models drained (DrainForRoom)
  uint64_t claims_made_ = 0;                          // guarded by mu_: Entry::claim_seq's counter
  bool room_stopping_ = false;                        // guarded by mu_: StopLoads began (or no room_wait); no waits
  bool room_wake_pending_ = false;                    // guarded by mu_: a RetryRoomWaiters is queued
  bool room_retrying_ = false;                        // guarded by mu_: a RetryRoomWaiters runs
  // Room waits' ends and retries; set at Create when room_wait_ns > 0. Used
  // under mu_ while !room_stopping_; reset (off mu_) once it is set.
  std::unique_ptr<TimerQueue> room_timer_;
};

}  // namespace mms
