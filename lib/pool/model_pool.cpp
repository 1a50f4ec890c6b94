#include "pool/model_pool.h"

#include <algorithm>
#include <condition_variable>
#include <map>
#include <thread>

#include "core/log.h"
#include "core/paths.h"
#include "core/units.h"
#include "protocol/tensor_file.h"

namespace mms {

namespace {
// What holds memory, for an error: the largest first (the ones worth
// freeing), eight named, the rest counted — "a (...), b (...) and 18 more
// holding 1.20 MiB" — so an operator sees how much is held past the list.
std::string NameHolders(std::vector<std::pair<uint64_t, std::string>> holders) {
  std::stable_sort(holders.begin(), holders.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  constexpr size_t kNamed = 8;
  std::string s;
  uint64_t rest = 0;
  for (size_t i = 0; i < holders.size(); ++i) {
    if (i < kNamed) s += (s.empty() ? "" : ", ") + holders[i].second;
    else rest += holders[i].first;
  }
  if (holders.size() > kNamed)
    s += " and " + std::to_string(holders.size() - kNamed) + " more holding " + FormatBytes(rest) +
         " (mms pool lists them all)";
  return s;
}
}  // namespace

struct ModelPool::DeviceSlot {
  std::unique_ptr<Device> dev;
  std::unique_ptr<EvictionPolicy> policy;
  uint64_t used = 0;         // bytes of the blocks handed out
  uint64_t relocations = 0;  // blocks moved to defragment the arena
};

struct ModelPool::RoomWait {
  uint64_t seq = 0;   // when it began to wait, in order: room_waiters_ is kept in this order
  int64_t since = 0;  // the clock's mono ns then
  bool refused = false;  // (mu_) a room check refused it (counted in room_waits_): not only queued behind others
  bool over = false;  // (mu_) room_wait_ns has passed: the next refusal is final
  bool queued = false;   // (mu_) in room_waiters_ (not being retried, nor loading)
  bool drained = false;  // (mu_) models drain for it (DrainForRoom, or handed on by EndDrains)
  PoolKey key = 0;       // the model it waits for
  bool parked = false;   // (mu_) it waits for its own model's drain: its hit or miss is not counted yet
  bool timed = false;    // (mu_) room_wait runs for it (not while parked: a drain ends as its model's requests do)
  // (mu_) Its drain's device, and the room there beyond its victims' that
  // it counts on (other drains leave that be).
  int drain_device = -1;
  uint64_t drain_relies = 0;
};

struct ModelPool::Waiter {
  AcquireCallback cb;
  bool counted;  // a request's (mms load, pin preloads: not counted, leave no last use)
  std::shared_ptr<const std::atomic<bool>> answered;  // set once answered elsewhere (its deadline); may be null
  bool free_only = false;  // Room::kFreeOnly: its load may not evict (a shadow's)
  std::shared_ptr<RoomWait> room_wait;  // set once it has waited for room (its hit or miss is counted)
  bool Answered() const { return answered && answered->load(); }
};

struct ModelPool::RoomWaiter {
  PoolItem item;
  Waiter w;
};

struct ModelPool::Entry {
  PoolItem item;
  Tier tier = Tier::kDisk;
  bool loading = false;
  bool pinned = false;
  bool forgotten = false;
  std::vector<Waiter> waiters;
  std::shared_ptr<Buffer> host;  // host-tier copy (kept while on a device)
  std::unique_ptr<Model> model;
  int device = -1;
  std::shared_ptr<Buffer> block;  // device-tier copy
  uint64_t bytes = 0;             // weight bytes (estimate until loaded)
  uint64_t host_reserved = 0;     // counted in host_used_
  uint64_t device_reserved = 0;   // counted in the device's used
  // Room on device `claim_device` that the check before its load found for
  // it, held for it until the load places it (or fails): others' checks
  // meanwhile leave it be, as the load reserves its block only when placed.
  int claim_device = -1;
  uint64_t claim = 0;
  uint64_t claim_seq = 0;  // claims in the order made: a placement leaves be only those made before its own
  int prefer_device = -1;  // the last acquire's PoolItem::device, as an index (-1: none)
  int refs = 0;                        // handles out, `held` among them
  std::map<std::string, int> held;     // standing holds by holder (ModelHandle::HoldFor)
  std::string pin_error;               // why a pin's preload failed (cleared once it is on a device)
  bool pin_preloading = false;         // a pin's preload waits for its load: Pin queues no second one
  std::optional<PoolItem> replaced;    // new files (Replaced) while a load ran: taken when it ends
  bool stale = false;                  // its copy in memory is of replaced files: dropped once no handle is out
  bool free_only_load = false;         // the load in progress may take only free room (Room::kFreeOnly)
  // Draining for this request waiting for room (DrainForRoom): new requests
  // wait, and its last one's end evicts it.
  std::shared_ptr<RoomWait> drain_for;
  // health
  bool healthy = true;
  Status last_error;
  int failures = 0;
  int64_t retry_at = 0;
  int64_t failed_at = 0;  // the last failed load's end (clock's mono ns)
  // stats
  uint64_t loads = 0, evictions = 0, hits = 0, misses = 0;
  int64_t last_use = 0;
  int64_t last_load_ns = 0;
};

ModelHandle::~ModelHandle() { pool_->Release(key_, holder_, counted_); }

void ModelHandle::HoldFor(std::string holder) {
  if (!holder_.empty() || holder.empty()) return;
  holder_ = std::move(holder);
  pool_->Hold(key_, holder_);
}

ModelPool::ModelPool(const Options& opts, std::unique_ptr<Loader> loader, HostAllocator alloc)
    : opts_(opts), loader_(std::move(loader)), host_alloc_(std::move(alloc)) {}

Result<std::unique_ptr<ModelPool>> ModelPool::Create(const Options& opts, std::vector<std::unique_ptr<Device>> devices,
                                                     std::unique_ptr<Loader> loader, HostAllocator host_alloc) {
  if (devices.empty()) return InvalidArgument("the pool needs at least one device");
  if (opts.host_budget == 0) return InvalidArgument("the host budget must be positive");
  std::unique_ptr<ModelPool> p(new ModelPool(opts, std::move(loader), std::move(host_alloc)));
  uint64_t device_total = 0;
  for (auto& d : devices) {
    auto slot = std::make_unique<DeviceSlot>();
    MMS_ASSIGN_OR_RETURN(slot->policy, MakePolicy(opts.policy));
    device_total += d->budget();
    slot->dev = std::move(d);
    p->devices_.push_back(std::move(slot));
  }
  MMS_ASSIGN_OR_RETURN(p->host_policy_, MakePolicy(opts.policy));
  if (opts.host_budget < device_total)
    LogWarn("host_budget_small", {{"host_budget", opts.host_budget},
                                  {"device_budgets", device_total},
                                  {"note", "models on a device keep their host copy; devices cannot fill up"}});
  p->load_exec_ = std::make_unique<Executor>("mms-load", std::max(1, opts.load_threads));
  p->reaper_ = std::make_unique<Executor>("mms-free", 1);
  if (opts.room_wait_ns > 0) p->room_timer_ = std::make_unique<TimerQueue>();
  else p->room_stopping_ = true;  // (no waits: nothing to stop)
  return p;
}

void ModelPool::StopLoads() {
  // Room waits first: a retry may start a load, which must still be
  // accepted (and answered) before the loader stops.
  StopRoomWaits();
  load_exec_->Shutdown();
}

ModelPool::~ModelPool() {
  StopLoads();
  {
    std::lock_guard lock(mu_);
    entries_.clear();  // blocks return to the arenas before the devices go
  }
  reaper_->Shutdown();  // frees what is still queued
}

const char* ModelPool::TierName(Tier t) const {
  switch (t) {
    case Tier::kDisk: return "disk";
    case Tier::kHost: return "host";
    case Tier::kDevice: return "device";
  }
  return "disk";
}

void ModelPool::Post(std::function<void()> fn) {
  // Share the task rather than copy it into Submit: a waiter's task carries
  // a handle, which running it moves out to the callback. A copy kept here
  // for the fallback would hold a second reference to that handle until this
  // returns — after the callback may have released it — so the model would
  // still count as in flight (Evict: IN_USE, placement: not evictable).
  auto task = std::make_shared<std::function<void()>>(std::move(fn));
  if (opts_.callbacks && opts_.callbacks->Submit([task] { (*task)(); })) return;
  (*task)();
}

ModelPool::Entry& ModelPool::EntryFor(const PoolItem& item) {
  auto it = entries_.find(item.key);
  if (it == entries_.end()) {
    auto e = std::make_unique<Entry>();
    e->item = item;
    e->bytes = item.bytes;
    it = entries_.emplace(item.key, std::move(e)).first;
  }
  // An existing entry keeps its own item: only Replaced (the daemon's refresh,
  // from its newest snapshot) changes it. A request's item may be from an
  // older snapshot, read before a repack: taking it loaded the replaced files.
  return *it->second;
}

HandlePtr ModelPool::NewHandle(Entry& e, bool loaded, bool counted) {
  ++e.refs;
  if (counted) e.last_use = opts_.clock->MonoNanos();
  return HandlePtr(new ModelHandle(this, e.item.key, e.model.get(), e.item.ref,
                                   devices_[static_cast<size_t>(e.device)]->dev->name(), loaded, counted));
}

void ModelPool::Acquire(const PoolItem& item, AcquireCallback cb, Room room, bool counted,
                        std::shared_ptr<const std::atomic<bool>> answered) {
  AcquireWaiter(item, Waiter{std::move(cb), counted, std::move(answered), room == Room::kFreeOnly, nullptr});
}

void ModelPool::AcquireWaiter(const PoolItem& item, Waiter w) {
  const Room room = w.free_only ? Room::kFreeOnly : Room::kEvict;
  // (A retry after waiting for room was counted as a miss, unless it waited
  // for its own model's drain.)
  const bool counted = w.counted && (!w.room_wait || w.room_wait->parked);
  std::unique_lock lock(mu_);
  if (removed_.count(item.key)) {  // a request that read the registry before the version was removed
    lock.unlock();
    w.cb(NotFound(item.ref + " was removed from the registry"));
    return;
  }
  Entry& e = EntryFor(item);
  if (const int p = DeviceIndex(item.device); p >= 0) e.prefer_device = p;
  if (e.stale && e.refs == 0 && !e.loading) {  // a copy of replaced files, let go: the new files load below
    DropHost(e);
    e.stale = false;
  }
  if (e.tier == Tier::kDevice && !e.loading && !e.stale) {
    if (e.drain_for) {
      // Its room is promised to a request that has waited longer: this one
      // waits its turn (served as a hit if the drain ends first), or, if it
      // may not wait, is served now.
      if (room == Room::kFreeOnly) {
        lock.unlock();
        w.cb(Status(Code::kPoolFull, e.item.ref + " is being evicted to make room for a request that has waited " +
                                         "for room; it is not loaded for a shadow"));
        return;
      }
      if (WaitForRoom(e, w, /*refused=*/false, /*parked=*/true)) return;
    }
    e.hits += counted;
    hits_ += counted;
    devices_[static_cast<size_t>(e.device)]->policy->Touch(e.item.key);
    host_policy_->Touch(e.item.key);
    HandlePtr h = NewHandle(e, false, w.counted);
    lock.unlock();
    w.cb(std::move(h));
    return;
  }
  // (A free-room-only acquire refused for want of free room — a shadow's
  // job — is no miss: nothing was tried.)
  const bool miss = counted && !(room == Room::kFreeOnly && !e.loading && !e.stale && !HasFreeRoom(e));
  e.misses += miss;
  misses_ += miss;
  if (e.stale) {  // requests still hold the replaced copy: the last one's Release starts the load of the new files
    e.waiters.push_back(std::move(w));
    if (!e.held.empty()) ++hold_refusals_;  // a standing hold (a shadow's) lets go, or they would wait for ever
    return;
  }
  int64_t now = opts_.clock->MonoNanos();
  if (!e.healthy && now < e.retry_at && !e.loading) {
    Status st(e.last_error.code(), e.item.ref + " is unhealthy: " + e.last_error.message() + " (failed " +
                                       std::to_string(e.failures) + " time" + (e.failures == 1 ? "" : "s") +
                                       "; next retry in " + FormatDurationNanos(e.retry_at - now) + ")");
    lock.unlock();
    w.cb(st);
    return;
  }
  // Nothing to load into: rather than queue a load (behind others) that
  // would fail the same way, wait for room that requests in flight will
  // free, or fail at once, naming what holds the memory.
  // Room freed just now goes to those that waited for it first: a new
  // request joins them when their retry is due (it is retried with them).
  if (room == Room::kEvict && !e.loading && !w.room_wait && (room_wake_pending_ || room_retrying_) &&
      WaitForRoom(e, w, /*refused=*/false))
    return;
  std::vector<Cand> cands;  // where it fits, as checked (for its claim)
  if (room == Room::kEvict && !e.loading && e.bytes > 0) {
    // (Checked without composing the refusal's message: a request waiting
    // for room is checked again at every release.)
    Status st = NeverFits(e);
    const bool host_full = st.ok() && e.tier == Tier::kDisk && !HostRoom(e.bytes, e.item.key, false).ok();
    if (st.ok() && !host_full) st = DeviceRoom(e, &cands, false);
    if (host_full || !st.ok()) {
      if (st.ok() || st.code() == Code::kPoolFull) {
        if (WaitForRoom(e, w)) return;
        st = host_full ? HostFull(e.bytes, e.item.key) : DeviceFull(e);
      }
      st = Refused(std::move(st), w);
      lock.unlock();
      w.cb(st);
      return;
    }
  }
  if (room == Room::kFreeOnly && !e.loading && !HasFreeRoom(e)) {
    Status st = NoFreeRoom(e);
    lock.unlock();
    w.cb(st);
    return;
  }
  e.waiters.push_back(std::move(w));
  if (!e.loading) {
    e.free_only_load = room == Room::kFreeOnly;
    if (!cands.empty()) {  // the device PlaceOnDevice would pick first
      const Cand& c = FirstChoice(cands, e.prefer_device);
      e.claim_device = c.index;
      e.claim = DeviceNeed(e);
      e.claim_seq = ++claims_made_;
    }
    StartLoad(e);
  } else if (room == Room::kEvict) {
    e.free_only_load = false;  // a request waits on it now: it may make room
  }
}

bool ModelPool::HasFreeRoom(const Entry& e) const {
  if (e.tier == Tier::kDisk && host_used_ + e.bytes > opts_.host_budget) return false;
  return HasFreeDeviceRoom(e);
}

bool ModelPool::HasFreeDeviceRoom(const Entry& e) const {
  const uint64_t need = DeviceNeed(e);
  for (size_t i = 0; i < devices_.size(); ++i)
    if (devices_[i]->used + Claimed(i, e) + need <= devices_[i]->dev->budget()) return true;
  return false;
}

bool ModelPool::ClaimAhead(const Entry& o, size_t index, const Entry& e) const {
  // Every check after a claim counted it: a load placed into no more than
  // the room it claimed leaves the later checks' byte sums true, and the
  // later loads evict for themselves when they place. Leaving them their
  // room as well evicted, at each placement, for every load queued behind
  // it, early: the models evicted meanwhile missed (200-270 more loads of
  // 20,000 at 32 requests in flight). Bytes only: on a copying device a
  // later claim was checked as one range placed after every idle model's
  // eviction, which a placement before those evictions can take (helper-91),
  // and a load read larger than its claim takes room claimed after it.
  const bool own_first = e.claim_device == static_cast<int>(index) && devices_[index]->dev->zero_copy() &&
                         DeviceNeed(e) <= e.claim && o.claim_seq > e.claim_seq;
  return &o != &e && !o.block && o.claim_device == static_cast<int>(index) && !own_first;
}

uint64_t ModelPool::Claimed(size_t index, const Entry& e) const {
  uint64_t claimed = 0;
  for (const auto& [k, o] : entries_)
    if (ClaimAhead(*o, index, e)) claimed += o->claim;
  return claimed;
}

Status ModelPool::NoFreeRoom(const Entry& e) const {
  return Status(Code::kPoolFull, e.item.ref + " is not on a device and there is no free room for it (" +
                                     FormatBytes(e.bytes) + "); it is loaded only into room no serving model needs");
}

bool ModelPool::PinsFill(const Entry& e) const {
  // Pinned models on a device keep their room, there and (their host
  // copies) in the host tier; everything else that is in the way ends.
  if (e.tier == Tier::kDisk) {
    uint64_t pinned = 0;
    for (const auto& [k, o] : entries_)
      if (k != e.item.key && o->pinned && o->tier == Tier::kDevice) pinned += o->host_reserved;
    if (pinned + e.bytes > opts_.host_budget) return true;
  }
  const uint64_t need = DeviceNeed(e);
  for (size_t i = 0; i < devices_.size(); ++i) {
    uint64_t pinned = 0;
    for (const auto& [k, o] : entries_)
      if (o->block && o->device == static_cast<int>(i) && o->pinned) pinned += o->device_reserved;
    if (pinned + need <= devices_[i]->dev->budget()) return false;
  }
  return true;
}

bool ModelPool::WaitForRoom(Entry& e, Waiter& w, bool refused, bool parked) {
  if (room_stopping_ || w.free_only || e.forgotten) return false;  // (room_stopping_ also when no timer)
  if (w.Answered()) return false;  // answered at its deadline: nothing to wait for
  // (Past room_wait only while models drain for it: their room frees as
  // their requests in flight end, none joining them.)
  if (w.room_wait && w.room_wait->over && !DrainsFor(*w.room_wait)) return false;
  if (PinsFill(e)) return false;
  if (!w.room_wait) {
    w.room_wait = std::make_shared<RoomWait>();
    w.room_wait->seq = ++room_seq_;
    w.room_wait->parked = parked;
    w.room_wait->key = e.item.key;
  }
  if (!parked && !w.room_wait->timed) {
    // room_wait runs from its first wait for room, not while it was parked:
    // a drain ends as its model's requests in flight end, and a parked
    // request served past its room_wait would join them, and keep it from
    // ending for as long as others came.
    w.room_wait->timed = true;
    w.room_wait->since = opts_.clock->MonoNanos();
    // (Held weakly: once the request is answered, its wait is gone.)
    room_timer_->After(opts_.room_wait_ns, [this, weak = std::weak_ptr<RoomWait>(w.room_wait)] {
      if (auto rw = weak.lock()) RoomWaitOver(rw);
    });
    room_timer_->After(opts_.room_wait_ns / 2, [this, weak = std::weak_ptr<RoomWait>(w.room_wait)] {
      if (auto rw = weak.lock()) DrainForRoom(rw);
    });
  }
  if (!parked) w.room_wait->parked = false;  // (refused room for its load: its miss was counted)
  w.room_wait->queued = true;
  if (refused && !w.room_wait->refused) {
    w.room_wait->refused = true;
    room_waits_ += w.counted;
  }
  // In the order they began to wait: one back again (its load was refused
  // room at placement) keeps its place.
  const uint64_t seq = w.room_wait->seq;
  auto at = std::upper_bound(room_waiters_.begin(), room_waiters_.end(), seq,
                             [](uint64_t s, const RoomWaiter& r) { return s < r.w.room_wait->seq; });
  room_waiters_.insert(at, {e.item, std::move(w)});
  return true;
}

Status ModelPool::Refused(Status st, const Waiter& w) {
  if (!w.room_wait || !w.room_wait->over || st.code() != Code::kPoolFull) return st;
  if (w.Answered()) return st;  // answered at its deadline: no one gets this
  room_wait_timeouts_ += w.counted;                  // (requests: not pin preloads or mms load)
  return Status(st.code(), st.message() + " (this request waited " +
                               FormatDurationNanos(opts_.clock->MonoNanos() - w.room_wait->since) +
                               " for that room; [pool] room_wait is " + FormatDurationNanos(opts_.room_wait_ns) + ")");
}

void ModelPool::WakeRoomWaiters() {
  if (room_waiters_.empty() || room_stopping_ || room_wake_pending_) return;
  room_wake_pending_ = true;
  // On the timer thread: this may be a handle's release, on any thread and
  // under any of the caller's locks, where no callback may run.
  room_timer_->After(0, [this] { RetryRoomWaiters(); });
}

void ModelPool::RetryRoomWaiters() {
  // In the order they began to wait, each taken from room_waiters_ only
  // while it is tried (a release meanwhile sees the others there, and wakes
  // them again); those still without room wait again, in their place. A
  // load started claims its room (Entry::claim): those after it do not
  // count on the same room.
  // New requests meanwhile queue behind them (room_retrying_), and are
  // tried in this pass.
  uint64_t last = 0;
  {
    std::lock_guard lock(mu_);
    room_wake_pending_ = false;
    room_retrying_ = true;
  }
  while (true) {
    RoomWaiter r;
    {
      std::lock_guard lock(mu_);
      auto it = std::upper_bound(room_waiters_.begin(), room_waiters_.end(), last,
                                 [](uint64_t s, const RoomWaiter& o) { return s < o.w.room_wait->seq; });
      if (it == room_waiters_.end()) {
        room_retrying_ = false;
        return;
      }
      r = std::move(*it);
      room_waiters_.erase(it);
      last = r.w.room_wait->seq;
      r.w.room_wait->queued = false;
      if (r.w.Answered()) EndDrains(*r.w.room_wait);
    }
    if (r.w.Answered()) {  // answered at its deadline: load nothing for it
      r.w.cb(AnsweredMeanwhile(r.item));
      continue;
    }
    const std::shared_ptr<RoomWait> rw = r.w.room_wait;
    AcquireWaiter(r.item, std::move(r.w));
    // It waits no more (served, loading, refused): nor do its drains, but
    // for another request for its model that still waits.
    std::lock_guard lock(mu_);
    if (rw->drained && !rw->queued) EndDrains(*rw);
  }
}

Status ModelPool::AnsweredMeanwhile(const PoolItem& item) {
  return Status(Code::kDeadlineExceeded, item.ref + ": answered at its deadline while it waited for room");
}

size_t ModelPool::AbandonRoomWaits(const Status& st) {
  std::vector<RoomWaiter> left;
  {
    std::lock_guard lock(mu_);
    room_stopping_ = true;  // no new waits: refused at once, while there is still someone to tell
    left.swap(room_waiters_);
    for (auto& [k, e] : entries_) e->drain_for.reset();
  }
  size_t told = 0;
  for (auto& r : left) {
    told += !r.w.Answered();
    r.w.cb(st);
  }
  return told;
}

void ModelPool::DropAnsweredWaiters() {
  std::vector<RoomWaiter> answered;
  {
    std::lock_guard lock(mu_);
    auto keep = std::stable_partition(room_waiters_.begin(), room_waiters_.end(),
                                      [](const RoomWaiter& r) { return !r.w.Answered(); });
    answered.assign(std::make_move_iterator(keep), std::make_move_iterator(room_waiters_.end()));
    room_waiters_.erase(keep, room_waiters_.end());
    for (auto& r : answered) {
      r.w.room_wait->queued = false;
      EndDrains(*r.w.room_wait);
    }
  }
  // What their callbacks hold (an adapter's request: its base model's handle) goes now.
  for (auto& r : answered) r.w.cb(AnsweredMeanwhile(r.item));
}

void ModelPool::RoomWaitOver(const std::shared_ptr<RoomWait>& rw) {
  std::unique_lock lock(mu_);
  rw->over = true;
  // A drain begun for it is waited out: it ends in the eviction (its models
  // take no new requests), and a drain cut short would have held their
  // requests back for nothing. The retry that follows is final, as is a
  // retry once the drain ends otherwise (EndDrains wakes it).
  if (DrainsFor(*rw)) return;
  auto it = std::find_if(room_waiters_.begin(), room_waiters_.end(),
                         [&](const RoomWaiter& r) { return r.w.room_wait == rw; });
  if (it == room_waiters_.end()) return;  // being retried or waiting for a load: its next refusal is final
  RoomWaiter r = std::move(*it);
  room_waiters_.erase(it);
  rw->queued = false;
  lock.unlock();
  if (r.w.Answered()) return r.w.cb(AnsweredMeanwhile(r.item));
  AcquireWaiter(r.item, std::move(r.w));  // served if the room freed just now, else refused
}

void ModelPool::DrainForRoom(const std::shared_ptr<RoomWait>& rw) {
  std::lock_guard lock(mu_);
  if (room_stopping_ || rw->over) return;
  // Until its time is up, looked at again while nothing is to be drained
  // for it now: it may be refused later (queued behind a retry, parked, in
  // a load refused at placement), or the room may be drained for another.
  auto again = [&] {
    room_timer_->After(std::max<int64_t>(opts_.room_wait_ns / 8, 1'000'000), [this, weak = std::weak_ptr<RoomWait>(rw)] {
      if (auto rw = weak.lock()) DrainForRoom(rw);
    });
  };
  auto it = std::find_if(room_waiters_.begin(), room_waiters_.end(),
                         [&](const RoomWaiter& r) { return r.w.room_wait == rw; });
  if (it != room_waiters_.end() && it->w.Answered()) return;
  auto found = entries_.find(rw->key);
  if (found == entries_.end() || found->second->forgotten) return;
  Entry& e = *found->second;
  // Only a request refused room, waiting now (not being retried, nor in a
  // load), for a model not on a device; once per drain, and one drain per
  // model (a burst of requests for it needs its room once).
  if (it == room_waiters_.end() || !rw->refused || e.tier == Tier::kDevice || e.loading || DrainsFor(*rw))
    return again();
  // (Host room, when that is what it lacks, is not drained for: host copies
  // in use are those of models on a device, which this makes room among.)
  if (e.tier == Tier::kDisk && !HostRoom(e.bytes, e.item.key, false).ok()) return again();
  std::vector<Cand> cands;
  if (DeviceRoom(e, &cands, false).ok()) {  // room now: the retry takes it
    WakeRoomWaiters();
    return again();
  }
  // Per device: the room it has for `e` now (free and idle models' room,
  // less other loads' claims) and its models in flight in the policy's
  // order (never pinned, loading, replaced, held only by a standing hold —
  // the refusal asks the holder to let go — or draining for another). The
  // victims: the first of them that alone makes the room, else the fewest
  // in that order that do (on a copying device: as one range, as
  // placement needs it). Drained: the device that needs the fewest.
  const uint64_t need = DeviceNeed(e);
  std::optional<std::pair<size_t, std::vector<const Entry*>>> best;
  for (size_t i = 0; i < devices_.size(); ++i) {
    const DeviceSlot& d = *devices_[i];
    uint64_t room = d.dev->budget() - std::min(d.dev->budget(), d.used);
    uint64_t taken = Claimed(i, e);        // by loads, and by other drains beyond their victims
    std::unordered_set<const RoomWait*> others;
    for (const auto& [k, o] : entries_) {
      if (o->block && o->device == static_cast<int>(i) && Evictable(*o)) room += o->device_reserved;
      if (o->drain_for && o->drain_for != rw && o->drain_for->drain_device == static_cast<int>(i) &&
          others.insert(o->drain_for.get()).second)
        taken += o->drain_for->drain_relies;
    }
    room -= std::min(room, taken);
    std::vector<const Entry*> order;
    std::unordered_set<PoolKey> ordered;
    while (true) {
      auto v = d.policy->Victim([&](PoolKey k) {
        auto o = entries_.find(k);
        if (o == entries_.end()) return false;
        const Entry& c = *o->second;
        return c.tier == Tier::kDevice && c.device == static_cast<int>(i) && c.refs > 0 && !c.pinned && !c.loading &&
               !c.stale && !c.drain_for && !OnlyHeld(c) && !ordered.count(k);
      });
      if (!v) break;
      order.push_back(entries_.at(*v).get());
      ordered.insert(*v);
    }
    auto fits = [&](const std::vector<const Entry*>& victims) {
      uint64_t bytes = room;
      for (const Entry* v : victims) bytes += v->device_reserved;
      return bytes >= need && (d.dev->zero_copy() || OneRangeAfterEviction(i, e, need, victims));
    };
    std::vector<const Entry*> victims;
    for (const Entry* c : order)
      if (fits({c})) {
        victims = {c};
        break;
      }
    for (size_t n = 1; victims.empty() && n <= order.size(); ++n)
      if (fits({order.begin(), order.begin() + static_cast<std::ptrdiff_t>(n)}))
        victims.assign(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(n));
    if (!victims.empty() && (!best || victims.size() < best->second.size())) best = std::make_pair(i, std::move(victims));
  }
  if (!best) return again();  // loads, pins, holds or other drains hold the room: it waits on
  rw->drained = true;
  rw->drain_device = static_cast<int>(best->first);
  uint64_t freed = 0;
  for (const Entry* c : best->second) freed += c->device_reserved;
  rw->drain_relies = need - std::min(need, freed);
  const int64_t waited = opts_.clock->MonoNanos() - rw->since;
  for (const Entry* c : best->second) {
    Entry& v = *entries_.at(c->item.key);
    v.drain_for = rw;
    ++room_drains_;
    LogInfo("drain", {{"model", v.item.ref}, {"device", devices_[best->first]->dev->name()},
                      {"for", e.item.ref}, {"in_flight", v.refs - Holds(v)},
                      {"waited_ms", static_cast<double>(waited) / 1e6}});
  }
  again();  // (should another waiter take the room, it may drain again)
}

bool ModelPool::DrainsFor(const RoomWait& rw) const {
  // Its own drain, or one for another request for the same model: the room
  // it makes serves them both (one load). Refused at its room_wait, the
  // second request failed while the drain for its model went on (helper-92).
  return std::any_of(entries_.begin(), entries_.end(), [&](const auto& o) {
    return o.second->drain_for && (o.second->drain_for.get() == &rw || o.second->drain_for->key == rw.key);
  });
}

void ModelPool::EndDrains(const RoomWait& rw) {
  if (!rw.drained) return;
  // The room a drain makes serves every request for its model (DrainsFor):
  // while another waits for it, the drain goes on for the oldest of them.
  // Ended when the request it began for was answered at its deadline, the
  // others (past their room_wait on the strength of it) failed POOL_FULL,
  // and a second drain of the same models held their requests back again.
  std::shared_ptr<RoomWait> heir;
  for (const auto& r : room_waiters_)  // (in the order they began to wait)
    if (r.w.room_wait.get() != &rw && r.w.room_wait->key == rw.key && !r.w.room_wait->drained && !r.w.Answered()) {
      heir = r.w.room_wait;
      break;
    }
  bool ended = false;
  for (auto& [k, e] : entries_)
    if (e->drain_for.get() == &rw) {
      e->drain_for = heir;
      ended = true;
    }
  if (!ended) return;
  if (heir) {
    heir->drained = true;
    heir->drain_device = rw.drain_device;
    heir->drain_relies = rw.drain_relies;
    return;
  }
  WakeRoomWaiters();  // those parked on them are served (and `rw`, past room_wait, refused)
}

void ModelPool::StopRoomWaits() {
  {
    std::lock_guard lock(mu_);
    room_stopping_ = true;  // from here on no one touches room_timer_, and nothing waits
  }
  room_timer_.reset();  // lets a retry in progress end (its waiters, refused, are answered)
  (void)AbandonRoomWaits(Status(Code::kCancelled, "the pool is shutting down"));
}

bool ModelPool::WaitingForRoom(PoolKey key) const {
  std::lock_guard lock(mu_);
  return std::any_of(room_waiters_.begin(), room_waiters_.end(), [&](const RoomWaiter& r) { return r.item.key == key; });
}

std::string ModelPool::DeviceOf(PoolKey key) const {
  std::lock_guard lock(mu_);
  auto it = entries_.find(key);
  if (it == entries_.end()) return "";
  const Entry& e = *it->second;
  const int i = e.tier == Tier::kDevice && e.device >= 0 ? e.device : e.loading ? e.claim_device : -1;
  return i >= 0 ? devices_[static_cast<size_t>(i)]->dev->name() : "";
}

bool ModelPool::Removed(PoolKey key) const {
  std::lock_guard lock(mu_);
  return removed_.count(key) > 0;
}

bool ModelPool::Draining(PoolKey key) const {
  std::lock_guard lock(mu_);
  auto it = entries_.find(key);
  return it != entries_.end() && it->second->drain_for;
}

Result<HandlePtr> ModelPool::AcquireSync(const PoolItem& item, int64_t timeout_ns, Room room) {
  struct Wait {
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    Result<HandlePtr> result{Status(Code::kUnavailable, "timed out")};
  };
  auto w = std::make_shared<Wait>();
  Acquire(item, [w](Result<HandlePtr> r) {
    std::lock_guard<std::mutex> lock(w->mu);
    w->result = std::move(r);
    w->done = true;
    w->cv.notify_all();
  }, room);
  std::unique_lock<std::mutex> lock(w->mu);
  if (!w->cv.wait_for(lock, std::chrono::nanoseconds(timeout_ns), [&] { return w->done; }))
    return Status(Code::kUnavailable, "timed out waiting for " + item.ref + " to load");
  // Move the handle out: the callback (and its copy of `w`) may outlive this call.
  Result<HandlePtr> r = std::move(w->result);
  w->result = Status(Code::kCancelled, "taken");
  return r;
}

void ModelPool::StartLoad(Entry& e) {
  e.loading = true;
  PoolKey key = e.item.key;
  if (!load_exec_->Submit([this, key] { RunLoad(key); })) {
    // Shutting down: the load executor runs what it accepted, so nothing
    // else will answer these waiters. Answer them from a detached thread
    // (never inline: we hold mu_).
    e.loading = false;
    e.claim_device = -1;
    e.claim = 0;
    auto waiters = std::make_shared<std::vector<Waiter>>(std::move(e.waiters));
    e.waiters.clear();
    std::thread([waiters] {
      for (auto& w : *waiters) w.cb(Status(Code::kCancelled, "the pool is shutting down"));
    }).detach();
  }
}

bool ModelPool::Evictable(const Entry& e) const { return !e.pinned && !e.loading && e.refs == 0; }

bool ModelPool::HostDroppable(PoolKey k, const Entry& e, PoolKey for_key) const {
  // A pin keeps a model on a device. One that could not get onto one (pins
  // beyond the device budgets) has no claim on the host tier: held there it
  // would refuse every other model for want of host room.
  const bool pin_holds = e.pinned && e.tier == Tier::kDevice;
  return k != for_key && (e.tier == Tier::kHost || e.tier == Tier::kDevice) && !pin_holds && !e.loading &&
         e.refs == 0;
}

Status ModelPool::HostRoom(uint64_t bytes, PoolKey for_key, bool describe) const {
  if (host_used_ + bytes <= opts_.host_budget) return Status::Ok();
  // Any evictable model with a host copy can go back to disk, a device
  // resident one too (tiers are inclusive: its host copy counts against the
  // host budget).
  uint64_t reclaimable = 0, held_only = 0;  // held_only: what standing holds alone keep
  for (const auto& [k, e] : entries_) {
    if (HostDroppable(k, *e, for_key)) reclaimable += e->host_reserved;
    else if (e->tier != Tier::kDisk && k != for_key && OnlyHeld(*e)) held_only += e->host_reserved;
  }
  if (host_used_ - reclaimable + bytes <= opts_.host_budget) return Status::Ok();
  // Counted only when letting go of the holds would have made the room.
  if (held_only > 0 && host_used_ - reclaimable - held_only + bytes <= opts_.host_budget) ++hold_refusals_;
  return describe ? HostFull(bytes, for_key) : Status(Code::kPoolFull, "");
}

Status ModelPool::HostFull(uint64_t bytes, PoolKey for_key) const {
  uint64_t reclaimable = 0;
  std::vector<std::pair<uint64_t, std::string>> holders;
  for (const auto& [k, e] : entries_) {
    if (HostDroppable(k, *e, for_key)) reclaimable += e->host_reserved;
    else if (e->tier != Tier::kDisk && k != for_key && e->host_reserved > 0)
      holders.emplace_back(e->host_reserved, e->item.ref + " (" + FormatBytes(e->host_reserved) + ", " + Why(*e) + ")");
  }
  const std::string held = NameHolders(std::move(holders));
  return Status(Code::kPoolFull, "the host tier cannot take " + FormatBytes(bytes) + " more (" +
                                     FormatBytes(host_used_) + " of " + FormatBytes(opts_.host_budget) + " [" +
                                     opts_.config_section + "] host_budget in use, " + FormatBytes(reclaimable) +
                                     " evictable), held by " + (held.empty() ? "nothing else" : held) +
                                     "; retry when its requests end, unpin a model (mms unpin), or raise [" +
                                     opts_.config_section + "] host_budget");
}

Status ModelPool::MakeHostRoom(uint64_t bytes, PoolKey for_key) {
  // Nothing is dropped unless enough can be: a partial attempt would throw
  // warm models away and still fail.
  MMS_RETURN_IF_ERROR(HostRoom(bytes, for_key));
  auto droppable = [&](PoolKey k, const Entry& e) { return HostDroppable(k, e, for_key); };
  while (host_used_ + bytes > opts_.host_budget) {
    // Host-only models first: a device resident one is in use more recently.
    auto victim_among = [&](bool host_only) {
      return host_policy_->Victim([&](PoolKey k) {
        auto it = entries_.find(k);
        return it != entries_.end() && (!host_only || it->second->tier == Tier::kHost) && droppable(k, *it->second);
      });
    };
    auto victim = victim_among(true);
    if (!victim) victim = victim_among(false);
    if (!victim) return Internal("host tier accounting: no victim although enough was evictable");
    DropHost(*entries_[*victim]);
  }
  return Status::Ok();
}

void ModelPool::DropHost(Entry& e) {
  if (e.tier == Tier::kDevice) DemoteFromDevice(e);
  if (e.tier != Tier::kHost) return;
  host_used_ -= e.host_reserved;
  e.host_reserved = 0;
  Retire(std::move(e.model), std::move(e.host));
  e.tier = Tier::kDisk;
  host_policy_->Remove(e.item.key);
  ++e.evictions;
  ++evictions_;
  LogInfo("evict", {{"model", e.item.ref}, {"from", "host"}, {"to", "disk"}, {"bytes", e.bytes}});
}

void ModelPool::Retire(std::unique_ptr<Model> model, std::shared_ptr<Buffer> host) {
  // Freeing is slow work: cudaFreeHost of a pinned buffer of gigabytes, a
  // TorchScript module's teardown. It runs on the reaper's thread, never
  // under mu_, where every request's Acquire would wait behind it. The model
  // goes first: its tensors are views into the buffer.
  auto dead = std::make_shared<std::pair<std::unique_ptr<Model>, std::shared_ptr<Buffer>>>(std::move(model),
                                                                                             std::move(host));
  if (!dead->first && !dead->second) return;
  (void)reaper_->Submit([dead] {
    dead->first.reset();
    dead->second.reset();
  });  // after Shutdown (the pool's end), `dead` frees them here
}

void ModelPool::DemoteFromDevice(Entry& e) {
  if (e.device < 0) return;  // not placed (Relocate may have let go of the block already)
  const bool counted = e.tier == Tier::kDevice;  // false: undoing a placement that never served
  DeviceSlot& slot = *devices_[static_cast<size_t>(e.device)];
  bool unbound = false;
  if (e.model) {
    Status st = e.model->Bind(e.host, "cpu");
    if (!st.ok()) {
      LogError("rebind_failed", {{"model", e.item.ref}, {"error", st.message()}, {"to", "disk"}});
      unbound = true;
    }
  }
  slot.used -= e.device_reserved;
  e.device_reserved = 0;
  e.block.reset();
  slot.policy->Remove(e.item.key);
  e.device = -1;
  e.tier = Tier::kHost;
  if (counted) {
    ++e.evictions;
    ++evictions_;
    LogInfo("evict", {{"model", e.item.ref}, {"from", slot.dev->name()}, {"to", "host"}, {"bytes", e.bytes}});
  }
  if (unbound) {
    // The model still points into the device block, so it cannot serve from
    // its host copy: it goes to disk (the block returns to the arena when the
    // reaper frees the model), and the next request loads it afresh.
    host_used_ -= e.host_reserved;
    e.host_reserved = 0;
    host_policy_->Remove(e.item.key);
    Retire(std::move(e.model), std::move(e.host));
    e.tier = Tier::kDisk;
  }
}

std::string ModelPool::Holders(size_t index, const Entry& for_entry) const {
  std::vector<std::pair<uint64_t, std::string>> holders;
  for (const auto& [k, e] : entries_) {
    // Loads not placed yet hold the room their check claimed.
    if (ClaimAhead(*e, index, for_entry))
      holders.emplace_back(e->claim, e->item.ref + " (" + FormatBytes(e->claim) + ", loading)");
    if (!e->block || e->device != static_cast<int>(index) || Evictable(*e)) continue;
    holders.emplace_back(e->device_reserved,
                         e->item.ref + " (" + FormatBytes(e->device_reserved) + ", " + Why(*e) + ")");
  }
  std::string s = NameHolders(std::move(holders));
  return s.empty() ? "fragmented free space" : s;
}

int ModelPool::Holds(const Entry& e) {
  int holds = 0;
  for (const auto& [holder, n] : e.held) holds += n;
  return holds;
}

bool ModelPool::OnlyHeld(const Entry& e) const {
  return !e.pinned && !e.loading && !e.held.empty() && Holds(e) == e.refs;
}

std::string ModelPool::Why(const Entry& e) const {
  if (e.pinned) return "pinned";
  if (e.loading) return "loading";
  std::string by;
  for (const auto& [holder, n] : e.held) by += (by.empty() ? "held by " : ", ") + holder;
  const int requests = e.refs - Holds(e);
  std::string why = requests > 0 ? std::to_string(requests) + (requests == 1 ? " request" : " requests") + " in flight" : "";
  if (!by.empty()) why += (why.empty() ? "" : "; ") + by;
  return why;
}

Status ModelPool::NeverFits(const Entry& e) const {
  uint64_t largest = 0;
  for (const auto& d : devices_) largest = std::max(largest, d->dev->budget());
  const std::string section = "[" + opts_.config_section + "] ";
  std::string over;  // the budgets it is over (on a device in whole arena blocks, as placed)
  if (DeviceNeed(e) > largest) over = "the largest device budget is " + FormatBytes(largest) + " (" + section + "device_budget)";
  if (e.bytes > opts_.host_budget)
    over += (over.empty() ? "" : " and ") + std::string("the host tier's budget is ") + FormatBytes(opts_.host_budget) +
            " (" + section + "host_budget)";
  if (over.empty()) return Status::Ok();
  // Not POOL_FULL (exit 5, "retry later"): no eviction and no retry can make the room.
  return Status(Code::kFailedPrecondition,
                e.item.ref + " needs " + FormatBytes(e.bytes) + " but " + over +
                    ": it can never be loaded; raise that budget in mmsd's config and restart mmsd, or serve a smaller model");
}

uint64_t ModelPool::DeviceNeed(const Entry& e) {
  // Booked as the arena allocates: whole blocks.
  return (std::max<uint64_t>(e.bytes, 1) + DeviceArena::kAlignment - 1) / DeviceArena::kAlignment *
         DeviceArena::kAlignment;
}

bool ModelPool::OneRangeAfterEviction(size_t index, const Entry& e, uint64_t need,
                                      const std::vector<const Entry*>& also_freed) const {
  // As PlaceOnDevice would make it: every evictable model evicted, the idle
  // pinned ones moved down (Compact), models in flight, held or loading
  // where they are; then the other loads' claims, and this block.
  const DeviceArena& arena = devices_[index]->dev->arena();
  std::vector<std::pair<uint64_t, uint64_t>> freed, movable;
  std::vector<uint64_t> claimed;
  for (const auto& [k, o] : entries_) {
    if (ClaimAhead(*o, index, e)) claimed.push_back(o->claim);
    if (!o->block || o->device != static_cast<int>(index)) continue;
    const std::pair<uint64_t, uint64_t> block{arena.OffsetOf(*o->block), o->device_reserved};
    if (Evictable(*o) || std::find(also_freed.begin(), also_freed.end(), o.get()) != also_freed.end())
      freed.push_back(block);
    else if (o->refs == 0 && !o->loading && o->model && o->host) movable.push_back(block);  // pinned, idle
  }
  std::sort(movable.begin(), movable.end());
  return arena.CompactionWouldFit(movable, need, freed, claimed);
}

bool ModelPool::RoomOn(size_t i, const Entry& e, uint64_t need, Cand* cand, uint64_t* held_only_out) const {
  const DeviceSlot& d = *devices_[i];
  if (d.dev->budget() < need) return false;
  uint64_t reclaim = 0, held_only = 0, claimed = 0;
  for (const auto& [k, o] : entries_) {
    if (ClaimAhead(*o, i, e)) claimed += o->claim;
    if (!o->block || o->device != static_cast<int>(i)) continue;
    if (Evictable(*o)) reclaim += o->device_reserved;
    else if (OnlyHeld(*o)) held_only += o->device_reserved;
  }
  // Loads not yet placed hold their claims: on the unused room first,
  // then on what eviction would free.
  const uint64_t unused = d.dev->budget() - std::min(d.used, d.dev->budget());
  const uint64_t free = unused - std::min(unused, claimed);
  reclaim -= std::min(reclaim, claimed - std::min(unused, claimed));
  if (held_only_out) *held_only_out = free + reclaim + held_only >= need ? held_only : 0;
  // On a copying device the block must also be one range: with models in
  // flight between the gaps, evicting every idle one would not make it,
  // and the load would evict them all for nothing (again at each retry
  // while it waits for room).
  if (free + reclaim < need || !(d.dev->zero_copy() || OneRangeAfterEviction(i, e, need))) return false;
  if (cand) *cand = {static_cast<int>(i), free, reclaim};
  return true;
}

Status ModelPool::DeviceRoom(const Entry& e, std::vector<Cand>* cands, bool describe) const {
  const uint64_t need = DeviceNeed(e);
  uint64_t largest_budget = 0;
  bool holds_in_the_way = false;  // letting go of standing holds would have made the room
  for (size_t i = 0; i < devices_.size(); ++i) {
    largest_budget = std::max(largest_budget, devices_[i]->dev->budget());
    Cand c;
    uint64_t held_only = 0;
    if (RoomOn(i, e, need, &c, &held_only)) cands->push_back(c);
    else if (held_only > 0) holds_in_the_way = true;
  }
  if (need > largest_budget) return NeverFits(e);  // (a model whose size grew past it once read)
  if (!cands->empty()) return Status::Ok();
  if (holds_in_the_way) ++hold_refusals_;
  return describe ? DeviceFull(e) : Status(Code::kPoolFull, "");
}

Status ModelPool::DeviceFull(const Entry& e) const {
  std::string detail;
  bool pinned = false, ending = false;  // what holds it: pins, or what ends (requests, loads, holds)
  for (const auto& [k, o] : entries_)
    if ((o->block && !Evictable(*o)) || (o->claim_device >= 0 && ClaimAhead(*o, static_cast<size_t>(o->claim_device), e)))
      (o->pinned ? pinned : ending) = true;
  for (size_t i = 0; i < devices_.size(); ++i) {
    const DeviceSlot* d = devices_[i].get();
    const uint64_t claimed = Claimed(i, e);  // by loads not placed yet
    detail += (detail.empty() ? "" : "; ") + d->dev->name() + " " + FormatBytes(d->used + claimed) + " of " +
              FormatBytes(d->dev->budget()) + " held by " + Holders(i, e);
    // Room enough in bytes, but between models that could not be moved.
    if (!d->dev->zero_copy() && d->used + claimed + DeviceNeed(e) <= d->dev->budget())
      detail += " (its free " + FormatBytes(d->dev->budget() - d->used) + " is in " +
                std::to_string(d->dev->arena().free_ranges()) + " pieces, the largest " +
                FormatBytes(d->dev->arena().largest_free()) +
                ", between models that cannot be moved now: in flight or loading)";
  }
  return Status(Code::kPoolFull, "no device can take " + e.item.ref + " (" + FormatBytes(DeviceNeed(e)) +
                                     ") and nothing more can be evicted: " + detail + "; " +
                                     (ending ? "retry when requests in flight end, " : "") +
                                     (pinned ? "unpin a model (mms unpin), " : "") + "or raise [" +
                                     opts_.config_section + "] device_budget");
}

const ModelPool::Cand& ModelPool::FirstChoice(const std::vector<Cand>& cands, int preferred) {
  for (const Cand& c : cands)
    if (c.index == preferred) return c;
  return *std::max_element(cands.begin(), cands.end(), [](const Cand& a, const Cand& b) {
    return a.free != b.free ? a.free < b.free : a.reclaimable < b.reclaimable;
  });
}

int ModelPool::DeviceIndex(const std::string& name) const {
  if (name.empty()) return -1;
  for (size_t i = 0; i < devices_.size(); ++i)
    if (devices_[i]->dev->name() == name) return static_cast<int>(i);
  return -1;
}

Result<int> ModelPool::PlaceOnDevice(Entry& e) {
  const uint64_t need = DeviceNeed(e);
  if (const int claimed_on = e.claim_device; claimed_on >= 0 && PlaceBeforeLaterClaims(claimed_on, e, need))
    return claimed_on;
  std::vector<Cand> cands;
  MMS_RETURN_IF_ERROR(DeviceRoom(e, &cands));
  // The first choice first, then least loaded.
  const int first = FirstChoice(cands, e.prefer_device).index;
  std::sort(cands.begin(), cands.end(), [first](const Cand& a, const Cand& b) {
    if ((a.index == first) != (b.index == first)) return a.index == first;
    return a.free != b.free ? a.free > b.free : a.reclaimable > b.reclaimable;
  });
  for (const Cand& c : cands) {
    DeviceSlot& d = *devices_[static_cast<size_t>(c.index)];
    // Room other loads claimed stays theirs: this one evicts instead, as
    // the check assumed (a drained model's returning requests took the room
    // claimed for the request it was drained for, placed first from the host tier).
    const uint64_t claimed = Claimed(static_cast<size_t>(c.index), e);
    while (true) {
      if (d.used + claimed + need <= d.dev->budget()) {
        auto block = d.dev->zero_copy() ? e.host : d.dev->arena().Allocate(need);
        // Room enough, but in pieces: move idle models together rather than
        // evict one that was not in the way (a helper saw an innocent model
        // evicted, and then the load refused with room to spare).
        if (!block && Compact(static_cast<size_t>(c.index), need)) block = d.dev->arena().Allocate(need);
        if (block) {
          e.block = std::move(block);
          e.device = c.index;
          e.device_reserved = need;
          d.used += need;
          e.claim_device = -1;
          e.claim = 0;
          return c.index;
        }
      }
      if (e.free_only_load) break;  // (a shadow's: only free room, never an eviction)
      auto victim = d.policy->Victim([&](PoolKey k) {
        auto it = entries_.find(k);
        return it != entries_.end() && it->second->tier == Tier::kDevice && it->second->device == c.index &&
               Evictable(*it->second);
      });
      if (!victim) break;
      DemoteFromDevice(*entries_[*victim]);
    }
  }
  return DeviceFull(e);  // (an arena too fragmented for the block)
}

bool ModelPool::PlaceBeforeLaterClaims(size_t index, Entry& e, uint64_t need) {
  // On a copying device a placement counts every other load's claim, also
  // those made after its own (their checks found their ranges as if every
  // idle model were evicted: a placement before those evictions could take
  // one, helper-91). So it evicted for the loads queued behind it, early
  // (the models evicted meanwhile missed), and was refused room a later
  // claim held even once that claim could no longer be met (helper-95).
  // First, then: the room the claims made before its own leave, no
  // eviction, no move, as on a zero-copy device — kept only if each later
  // claim that finds its room now still finds it.
  DeviceSlot& d = *devices_[index];
  if (d.dev->zero_copy() || e.claim_device != static_cast<int>(index) || need > e.claim) return false;
  uint64_t before = 0;
  std::vector<const Entry*> later;
  for (const auto& [k, o] : entries_) {
    if (o.get() == &e || o->block || o->claim_device != static_cast<int>(index)) continue;
    if (o->claim_seq < e.claim_seq) before += o->claim;
    else later.push_back(o.get());
  }
  if (later.empty() || d.used + before + need > d.dev->budget()) return false;  // (the rule below is the same)
  later.erase(std::remove_if(later.begin(), later.end(), [&](const Entry* o) { return !RoomOn(index, *o, DeviceNeed(*o)); }),
              later.end());
  auto block = d.dev->arena().Allocate(need);
  if (!block) return false;
  e.block = std::move(block);
  e.device = static_cast<int>(index);
  e.device_reserved = need;
  d.used += need;
  if (std::all_of(later.begin(), later.end(), [&](const Entry* o) { return RoomOn(index, *o, DeviceNeed(*o)); })) {
    e.claim_device = -1;
    e.claim = 0;
    return true;
  }
  d.used -= need;  // (back to the arena: a later claim's range was in it)
  e.block.reset();
  e.device = -1;
  e.device_reserved = 0;
  return false;
}

bool ModelPool::Compact(size_t index, uint64_t need) {
  DeviceSlot& d = *devices_[index];
  DeviceArena& arena = d.dev->arena();
  // This device's blocks that may move, by offset: idle ones (no request,
  // hold or load has them; pinned ones too: a pin keeps a model on the
  // device, not at one address). The others stay where they are.
  auto idle = [](const Entry& o) { return o.tier == Tier::kDevice && o.refs == 0 && !o.loading && o.model && o.host; };
  std::vector<std::pair<uint64_t, Entry*>> blocks;
  for (auto& [k, o] : entries_)
    if (o->block && o->device == static_cast<int>(index) && idle(*o))
      blocks.push_back({arena.OffsetOf(*o->block), o.get()});
  std::sort(blocks.begin(), blocks.end());
  std::vector<std::pair<uint64_t, uint64_t>> movable;  // offset, size
  for (const auto& [offset, o] : blocks) movable.push_back({offset, o->device_reserved});
  // Moves are copies, made under the pool's lock: none unless they would
  // make the room (models in flight in the way can make that impossible).
  if (!arena.CompactionWouldFit(movable, need)) return false;
  for (auto& [offset, o] : blocks) {
    if (arena.largest_free() >= need) return true;
    if (auto to = arena.LowerPlace(offset, o->device_reserved)) (void)Relocate(*o, *to);
  }
  return arena.largest_free() >= need;
}

bool ModelPool::Relocate(Entry& e, uint64_t offset) {
  DeviceSlot& d = *devices_[static_cast<size_t>(e.device)];
  const uint64_t need = e.device_reserved;
  auto fail = [&](const Status& st) {
    // Left as an eviction leaves it: on its host copy, or, if it cannot be
    // bound to that, retired to disk (never pointing into a freed block).
    LogError("relocate_failed", {{"model", e.item.ref}, {"device", d.dev->name()}, {"error", st.message()}});
    DemoteFromDevice(e);
    return false;
  };
  // Off the block first, so that freeing it returns its range at once.
  if (Status st = e.model->Bind(e.host, "cpu"); !st.ok()) return fail(st);
  e.block.reset();
  auto block = d.dev->arena().AllocateAt(offset, need);  // (free now that its own range is)
  if (!block) return fail(Internal("the arena range at " + std::to_string(offset) + " is not free"));
  e.block = block;
  Status st = d.dev->CopyIn(block->data(), e.host->data(), e.model->layout().total_bytes);
  if (st.ok()) st = e.model->Bind(block, d.dev->torch_device());
  if (!st.ok()) return fail(st);
  ++d.relocations;
  return true;
}

namespace {
Status Warmup(Model* m, const std::string& sample, const std::vector<InputSpec>& specs, const std::string& ref) {
  auto failed = [&](const Status& st) {
    return Status(Code::kUnhealthy, "warm-up of " + ref + " failed: " + st.message() +
                                        "; if the sample is at fault, replace it with mms model repack " + ref +
                                        " --sample-input FILE (else it is retried after a backoff: mms health " + ref + ")");
  };
  auto tensors = ReadTensorFile(sample);
  // Its whole directory gone (the packed files removed under the daemon,
  // the weights still in memory): the sample is not what to replace.
  if (!tensors.ok() && !FileExists(DirName(sample)))
    return Status(Code::kUnhealthy, "warm-up of " + ref + " failed: the directory of its sample input, " +
                                        DirName(sample) + ", is gone (removed under mmsd?); mms model repack " + ref +
                                        " --sample-input FILE writes the packed files again");
  if (!tensors.ok()) return failed(tensors.status());
  std::vector<InputSpec> names = specs;
  if (names.empty())
    for (const auto& n : m->input_names()) names.push_back({n, std::nullopt, std::nullopt});
  auto ordered = MatchInputs(names, std::move(tensors).value(), ref);
  if (!ordered.ok()) return failed(ordered.status());
  // Twice: TorchScript profiles the first run and optimizes on the second, so
  // both slow runs happen here rather than in users' first requests.
  for (int i = 0; i < 2; ++i) {
    auto out = m->Run(*ordered);
    if (!out.ok()) return failed(out.status());
  }
  return Status::Ok();
}
}  // namespace

void ModelPool::RunLoad(PoolKey key) {
  std::unique_lock lock(mu_);
  auto it = entries_.find(key);
  if (it == entries_.end()) return;
  Entry* e = it->second.get();
  const int64_t t0 = opts_.clock->MonoNanos();
  bool from_disk = e->tier == Tier::kDisk;
  auto fail = [&](const Status& st) {
    auto callbacks = Finish(*e, st, from_disk);
    lock.unlock();
    for (auto& cb : callbacks) Post(std::move(cb));
  };

  if (from_disk) {
    if (Status st = NeverFits(*e); !st.ok()) return fail(st);
    {  // a plainly damaged artifact fails before anything warm is evicted for it
      Loader::Source src = e->item.source;
      src.ref = e->item.ref;
      const uint64_t bytes = e->bytes;
      lock.unlock();
      Status pre = loader_->Precheck(src, bytes);
      lock.lock();
      if (!pre.ok()) return fail(pre);
    }
    // Checked again now: a request may have taken the free room meanwhile.
    if (e->free_only_load && !HasFreeRoom(*e)) return fail(NoFreeRoom(*e));
    if (Status st = MakeHostRoom(e->bytes, key); !st.ok()) return fail(st);
    host_used_ += e->bytes;
    e->host_reserved = e->bytes;
    Loader::Source src = e->item.source;
    src.ref = e->item.ref;
    lock.unlock();
    auto hm = loader_->Load(src, host_alloc_);
    lock.lock();
    if (!hm.ok()) {
      host_used_ -= e->host_reserved;
      e->host_reserved = 0;
      return fail(hm.status());
    }
    e->host = std::move(hm->weights);
    e->model = std::move(hm->model);
    e->bytes = e->model->layout().total_bytes;
    host_used_ = host_used_ - e->host_reserved + e->bytes;
    e->host_reserved = e->bytes;
    e->tier = Tier::kHost;
    host_policy_->Insert(key);
    host_policy_->Touch(key);
    if (host_used_ > opts_.host_budget) (void)MakeHostRoom(0, key);  // the estimate was low
    LogInfo("load", {{"model", e->item.ref}, {"from", "disk"}, {"to", "host"}, {"bytes", e->bytes},
                     {"ms", static_cast<double>(opts_.clock->MonoNanos() - t0) / 1e6}});
  } else {
    host_policy_->Touch(key);
  }

  if (e->free_only_load && !HasFreeDeviceRoom(*e)) return fail(NoFreeRoom(*e));  // the read took a while
  auto placed = PlaceOnDevice(*e);
  if (!placed.ok()) return fail(placed.status());
  Device* dev = devices_[static_cast<size_t>(*placed)]->dev.get();
  Model* m = e->model.get();
  std::shared_ptr<Buffer> block = e->block, host = e->host;
  std::string sample = opts_.warmup ? e->item.sample_input : "";
  std::vector<InputSpec> specs = e->item.inputs;
  std::string ref = e->item.ref;
  const int64_t t1 = opts_.clock->MonoNanos();
  lock.unlock();

  Status st;
  if (!dev->zero_copy()) {
    st = dev->CopyIn(block->data(), host->data(), m->layout().total_bytes);
    if (st.ok()) st = m->Bind(block, dev->torch_device());
  }
  // Drop our references before relocking: from here on only the entry and
  // the model bound to it hold the block (no one else touches either while
  // e->loading; after that, only under mu_), so a later demotion returns it
  // to the arena at once. Kept until RunLoad returned — after Finish has
  // handed out the handles, when a waiter may already have released its
  // handle and another load demoted this model — the arena would still count
  // a block the books call free: the next placement finds the arena full
  // with room in the budget and evicts (or fails) needlessly, and a snapshot
  // shows arena.allocated above used.
  block.reset();
  host.reset();
  const int64_t t2 = opts_.clock->MonoNanos();
  if (st.ok() && !sample.empty()) st = Warmup(m, sample, specs, ref);

  lock.lock();
  if (!st.ok()) {
    DemoteFromDevice(*e);  // undo the placement: block back to the arena, model back on its host copy
    return fail(st);
  }
  e->tier = Tier::kDevice;
  DeviceSlot& slot = *devices_[static_cast<size_t>(*placed)];
  slot.policy->Insert(key);
  slot.policy->Touch(key);
  ++e->loads;
  ++loads_;
  e->last_load_ns = opts_.clock->MonoNanos() - t0;
  LogInfo("load", {{"model", ref}, {"from", "host"}, {"to", dev->name()}, {"bytes", e->bytes},
                   {"copy_ms", static_cast<double>(t2 - t1) / 1e6},
                   {"total_ms", static_cast<double>(e->last_load_ns) / 1e6}});
  auto callbacks = Finish(*e, Status::Ok(), true);
  lock.unlock();
  for (auto& cb : callbacks) Post(std::move(cb));
}

std::vector<std::function<void()>> ModelPool::Finish(Entry& e, const Status& st, bool loaded) {
  std::vector<std::function<void()>> out;
  e.loading = false;
  const bool had_claim = e.claim > 0;
  e.claim_device = -1;
  e.claim = 0;
  auto waiters = std::move(e.waiters);
  e.waiters.clear();
  if (st.ok()) {
    e.healthy = true;
    e.failures = 0;
    // Requests waiting for room for this very model (loaded by another
    // way: mms load, a pin) are served now, and their drains end.
    if (std::any_of(room_waiters_.begin(), room_waiters_.end(),
                    [&](const RoomWaiter& r) { return r.item.key == e.item.key; }))
      WakeRoomWaiters();
    for (auto& w : waiters) {
      HandlePtr h = NewHandle(e, loaded, w.counted);
      out.push_back([cb = std::move(w.cb), h = std::move(h)]() mutable { cb(std::move(h)); });
    }
  } else if (e.forgotten) {
    // Removed meanwhile (rm deletes its files, which is likely why it
    // failed): said as such, not as damage to repair; nothing to back off.
    Status gone = NotFound(e.item.ref + " was removed from the registry while this request waited for its load");
    for (auto& w : waiters) out.push_back([cb = std::move(w.cb), gone] { cb(gone); });
  } else {
    if (st.code() != Code::kPoolFull && st.code() != Code::kCancelled) {
      // A broken artifact or a failed warm-up: not served until a backoff passes.
      e.healthy = false;
      ++e.failures;
      ++failures_;
      e.last_error = st;
      e.failed_at = opts_.clock->MonoNanos();
      int64_t backoff = opts_.retry_backoff_ns;
      for (int i = 1; i < e.failures && backoff < opts_.max_backoff_ns; ++i) backoff *= 2;
      backoff = std::min(backoff, opts_.max_backoff_ns);
      e.retry_at = opts_.clock->MonoNanos() + backoff;
      LogWarn("load_failed", {{"model", e.item.ref}, {"error", st.message()}, {"failures", e.failures},
                              {"retry_in_ms", backoff / 1000000}});
    }
    for (auto& w : waiters) {
      // Room a request took since the acquire's check (or that the estimate
      // missed) may free again as requests end: wait for it, as the check would have.
      if (st.code() == Code::kPoolFull && WaitForRoom(e, w)) continue;
      out.push_back([cb = std::move(w.cb), st = Refused(st, w)] { cb(st); });
    }
    // A failed load lets its reservations go: a host copy that may now be
    // dropped, or its claim. Those refused room because of the claim take
    // it now, not at the next release (which may not come: they waited until
    // DrainForRoom saw the room, half their room_wait). Its own waiters,
    // retried with them, claim anew behind the other claims, which their
    // placement then counts as their check did: no refusal loop.
    if (st.code() != Code::kPoolFull || loaded || had_claim) WakeRoomWaiters();
  }
  if (e.replaced) {
    TakeReplaced(e, *e.replaced);
    e.replaced.reset();
    e.retry_at = 0;  // (a failure of the replaced files is no reason to wait for the new ones)
  }
  if (e.forgotten && e.refs == 0) EraseForgotten(e);
  return out;
}

int64_t ModelPool::LastLoadFailure(PoolKey key) const {
  std::lock_guard lock(mu_);
  auto it = entries_.find(key);
  return it == entries_.end() ? 0 : it->second->failed_at;
}

void ModelPool::Hold(PoolKey key, const std::string& holder) {
  std::lock_guard lock(mu_);
  auto it = entries_.find(key);
  if (it == entries_.end()) return;
  ++it->second->held[holder];
  if (OnlyHeld(*it->second)) WakeRoomWaiters();  // a waiter's refusal asks the holder to let go
}

void ModelPool::Release(PoolKey key, const std::string& holder, bool counted) {
  std::vector<Waiter> removed;  // answered after the lock is let go
  std::string ref;                     // (theirs)
  std::unique_lock lock(mu_);
  auto it = entries_.find(key);
  if (it == entries_.end()) return;
  Entry& e = *it->second;
  --e.refs;
  if (!holder.empty()) {
    auto h = e.held.find(holder);
    if (h != e.held.end() && --h->second <= 0) e.held.erase(h);
  }
  if (counted) e.last_use = opts_.clock->MonoNanos();
  const bool drained = e.drain_for && e.refs == 0;
  if (drained) {  // its room goes to the request it was drained for (woken below, whatever comes next)
    e.drain_for.reset();
    if (e.tier == Tier::kDevice && !e.loading) DemoteFromDevice(e);
  }
  if (e.stale && e.refs == 0 && !e.loading) {  // the replaced copy is let go: load the new files for those waiting
    DropHost(e);
    e.stale = false;
    if (e.forgotten) {  // removed meanwhile: nothing to load for them
      removed.swap(e.waiters);
      ref = e.item.ref;
    } else if (!e.waiters.empty()) {
      // The load may evict only if one of them may (a shadow's may not).
      e.free_only_load = std::all_of(e.waiters.begin(), e.waiters.end(), [](const Waiter& w) { return w.free_only; });
      StartLoad(e);
    }
  }
  // Evictable now, or held only by a standing hold, which a waiter's
  // refusal asks to let go (hold_refusals_). A pinned model idle on a
  // copying device may be moved: a range for a waiter may join across it.
  const bool movable = e.pinned && e.tier == Tier::kDevice && !devices_[e.device]->dev->zero_copy();
  if (drained || ((e.refs == 0 || OnlyHeld(e)) && !e.loading && (!e.pinned || movable))) WakeRoomWaiters();
  if (e.forgotten && e.refs == 0 && !e.loading) EraseForgotten(e);
  lock.unlock();
  for (auto& w : removed) Post([cb = std::move(w.cb), ref] { cb(NotFound(ref + " was removed from the registry")); });
}

void ModelPool::Pin(const PoolItem& item) {
  {
    std::lock_guard lock(mu_);
    if (removed_.count(item.key)) return;
    Entry& e = EntryFor(item);
    e.pinned = true;
    if (e.drain_for) {  // a pinned model stays: those parked on it are served
      e.drain_for.reset();
      WakeRoomWaiters();
    }
    if ((e.tier == Tier::kDevice && !e.loading) || e.pin_preloading) return;
    e.pin_preloading = true;  // (every registry poll calls Pin again: one waiter, not one per poll)
  }
  // The outcome is kept on the entry (`mms pool`, `mms health` show it) and
  // logged when the pin starts failing and when it is held again: the daemon
  // calls Pin again at every registry poll for pins not on a device, so a pin
  // that did not fit loads once room frees.
  const PoolKey key = item.key;
  std::string ref = item.ref;
  Acquire(item, [this, key, ref](Result<HandlePtr> r) {
    std::string error = r.ok() ? "" : r.status().message();
    bool was_failing;
    {
      std::lock_guard lock(mu_);
      auto it = entries_.find(key);
      if (it == entries_.end()) return;
      it->second->pin_preloading = false;
      was_failing = !it->second->pin_error.empty();
      it->second->pin_error = error;
    }
    if (!r.ok() && !was_failing) LogWarn("pin_preload_failed", {{"model", ref}, {"error", error}});
    if (r.ok() && was_failing) LogInfo("pin_preloaded", {{"model", ref}});
  }, Room::kEvict, /*counted=*/false);
}

bool ModelPool::IsPinned(PoolKey key) const {
  std::lock_guard lock(mu_);
  auto it = entries_.find(key);
  return it != entries_.end() && it->second->pinned;
}

void ModelPool::Unpin(PoolKey key) {
  std::lock_guard lock(mu_);
  if (auto it = entries_.find(key); it != entries_.end()) {
    it->second->pinned = false;
    WakeRoomWaiters();  // its room may be taken now
  }
}

Result<std::string> ModelPool::Evict(PoolKey key, bool device_only) {
  std::lock_guard lock(mu_);
  auto it = entries_.find(key);
  if (it != entries_.end() && it->second->loading)  // (a first load is still on disk)
    return InUse(it->second->item.ref + " is loading; try again when it is done");
  if (it == entries_.end() || it->second->tier == Tier::kDisk)
    return FailedPrecondition("not loaded: nothing to evict");
  if (device_only && it->second->tier != Tier::kDevice) return FailedPrecondition("not on a device");
  Entry& e = *it->second;
  if (e.pinned) return InUse(e.item.ref + " is pinned; unpin it first (mms unpin " + e.item.ref + ")");
  if (e.tier == Tier::kDevice) {
    if (e.refs > 0) {
      if (OnlyHeld(e)) ++hold_refusals_;  // the hold alone refuses it
      return InUse(e.item.ref + " is in use: " + Why(e));
    }
    DemoteFromDevice(e);
    WakeRoomWaiters();
    return std::string(TierName(e.tier));  // host, or disk if the model could not be rebound
  }
  DropHost(e);
  WakeRoomWaiters();
  return std::string("disk");
}

void ModelPool::Forget(PoolKey key) {
  std::lock_guard lock(mu_);
  removed_.insert(key);
  auto it = entries_.find(key);
  if (it == entries_.end()) return;
  Entry& e = *it->second;
  e.forgotten = true;
  e.pinned = false;
  if (e.refs == 0 && !e.loading) {
    EraseForgotten(e);
    WakeRoomWaiters();
  }
}

Status ModelPool::FitsAtAll(const PoolItem& item) const {
  Entry e;
  e.item = item;
  e.bytes = item.bytes;
  std::lock_guard lock(mu_);
  return NeverFits(e);
}

void ModelPool::Replaced(const PoolItem& item) {
  std::lock_guard lock(mu_);
  if (removed_.count(item.key)) return;
  auto it = entries_.find(item.key);
  if (it == entries_.end()) {  // kept, on disk: a request that read the registry earlier finds these details
    EntryFor(item);
    return;
  }
  Entry& e = *it->second;
  e.retry_at = 0;
  if (e.loading) {
    e.replaced = item;  // the load reads the old files: Finish takes these
    return;
  }
  TakeReplaced(e, item);
}

void ModelPool::TakeReplaced(Entry& e, const PoolItem& item) {
  // A copy in memory was read from the replaced files, which were repacked
  // because they were damaged (a copy loaded before the damage is sound, one
  // loaded from an unchecked file may not be) or had the wrong sample: it
  // goes once no request holds it, and the next load reads the new files.
  e.item = item;
  if (e.tier == Tier::kDisk) return;
  if (e.refs == 0 && !e.loading) {
    DropHost(e);
  } else {
    e.stale = true;
    if (!e.held.empty()) ++hold_refusals_;  // a standing hold lets go (a shadow's is kept while jobs come)
  }
}

void ModelPool::EraseForgotten(Entry& e) {
  DropHost(e);
  const PoolKey key = e.item.key;
  for (auto& d : devices_) d->policy->Forget(key);
  host_policy_->Forget(key);
  entries_.erase(key);  // destroys e
}

size_t ModelPool::Waiting(const Entry& e) {
  // Requests (and pin preloads, mms load) waiting for the load; one already
  // answered at its deadline is not (its callback only drops the handle).
  return static_cast<size_t>(std::count_if(e.waiters.begin(), e.waiters.end(), [](const Waiter& w) { return !w.Answered(); }));
}

nlohmann::json ModelPool::EntryJson(const Entry& e, int64_t now) const {
  nlohmann::json j{{"ref", e.item.ref},
                   {"tier", TierName(e.tier)},
                   {"bytes", e.bytes},
                   {"pinned", e.pinned},
                   {"in_flight", e.refs - Holds(e)},
                   {"loading", e.loading},
                   {"waiting", Waiting(e)},
                   {"healthy", e.healthy},
                   {"loads", e.loads},
                   {"evictions", e.evictions},
                   {"hits", e.hits},
                   {"misses", e.misses},
                   {"load_ms", static_cast<double>(e.last_load_ns) / 1e6}};
  if (e.pinned && e.tier != Tier::kDevice && !e.pin_error.empty()) j["pin_error"] = e.pin_error;
  if (e.drain_for) j["draining"] = true;
  if (e.stale) j["replaced"] = "its files were repacked: this copy goes once the requests on it end, then the new files load";
  if (!e.held.empty()) {
    j["held_by"] = nlohmann::json::array();
    for (const auto& [holder, n] : e.held) j["held_by"].push_back(holder);
  }
  j["last_use_ms_ago"] = e.last_use ? nlohmann::json((now - e.last_use) / 1000000) : nlohmann::json(nullptr);
  if (e.device >= 0) j["device"] = devices_[static_cast<size_t>(e.device)]->dev->name();
  if (!e.healthy) {
    j["error"] = e.last_error.message();
    j["failures"] = e.failures;
    j["retry_in_ms"] = std::max<int64_t>(0, (e.retry_at - now) / 1000000);
  }
  return j;
}

nlohmann::json ModelPool::Snapshot() const {
  std::lock_guard lock(mu_);
  int64_t now = opts_.clock->MonoNanos();
  nlohmann::json devices = nlohmann::json::array();
  for (size_t i = 0; i < devices_.size(); ++i) {
    const DeviceSlot& d = *devices_[i];
    nlohmann::json models = nlohmann::json::array();
    for (const auto& [k, e] : entries_)
      if (e->block && e->device == static_cast<int>(i)) models.push_back(EntryJson(*e, now));
    devices.push_back({{"name", d.dev->name()},
                       {"kind", d.dev->kind()},
                       {"budget", d.dev->budget()},
                       {"used", d.used},
                       {"policy", d.policy->name()},
                       {"policy_half_life", d.policy->half_life()},
                       {"zero_copy", d.dev->zero_copy()},
                       {"arena", {{"reserved", d.dev->arena().capacity()},
                                  {"allocated", d.dev->arena().used()},
                                  {"largest_free", d.dev->arena().largest_free()},
                                  {"free_ranges", d.dev->arena().free_ranges()},
                                  {"relocations", d.relocations}}},
                       {"models", models}});
  }
  nlohmann::json host = nlohmann::json::array(), disk = nlohmann::json::array();
  for (const auto& [k, e] : entries_) {
    if (e->tier == Tier::kHost && !e->block) host.push_back(EntryJson(*e, now));
    if (e->tier == Tier::kDisk) disk.push_back(EntryJson(*e, now));
  }
  return {{"devices", devices},
          {"host", {{"budget", opts_.host_budget}, {"used", host_used_}, {"policy", host_policy_->name()},
                    {"policy_half_life", host_policy_->half_life()}, {"models", host}}},
          {"disk", {{"models", disk}}},
          {"totals", {{"hits", hits_}, {"misses", misses_}, {"loads", loads_}, {"evictions", evictions_},
                      {"failures", failures_}, {"room_waits", room_waits_},
                      {"room_wait_timeouts", room_wait_timeouts_}, {"room_drains", room_drains_}, {"waiting_for_room", std::count_if(room_waiters_.begin(), room_waiters_.end(),
                                                        [](const RoomWaiter& r) { return !r.w.Answered(); })},
                      {"hit_rate", hits_ + misses_ ? static_cast<double>(hits_) / static_cast<double>(hits_ + misses_) : 0.0}}}};
}

std::optional<nlohmann::json> ModelPool::Health(PoolKey key) const {
  std::lock_guard lock(mu_);
  auto it = entries_.find(key);
  if (it == entries_.end()) return std::nullopt;
  return EntryJson(*it->second, opts_.clock->MonoNanos());
}

nlohmann::json ModelPool::Summary() const {
  std::lock_guard lock(mu_);
  int on_device = 0, on_host = 0;
  for (const auto& [k, e] : entries_) {
    if (e->tier == Tier::kDevice) ++on_device;
    if (e->tier != Tier::kDisk) ++on_host;
  }
  return {{"models_on_device", on_device}, {"models_on_host", on_host}, {"loads", loads_},
          {"evictions", evictions_},       {"hits", hits_},           {"misses", misses_},
          {"hit_rate", hits_ + misses_ ? static_cast<double>(hits_) / static_cast<double>(hits_ + misses_) : 0.0}};
}

nlohmann::json ModelPool::Devices() const {
  std::lock_guard lock(mu_);
  nlohmann::json out = nlohmann::json::array();
  for (const auto& d : devices_)
    out.push_back({{"name", d->dev->name()},
                   {"kind", d->dev->kind()},
                   {"memory_total", d->dev->memory_total()},
                   {"memory_available", d->dev->memory_free()},
                   {"budget", d->dev->budget()},
                   {"used", d->used}});
  nlohmann::json host{{"name", "host"}, {"kind", "host"}, {"memory_total", HostMemoryTotal()},
                      {"memory_available", HostMemoryAvailable()}, {"budget", opts_.host_budget}, {"used", host_used_}};
  out.push_back(host);
  return out;
}

}  // namespace mms
