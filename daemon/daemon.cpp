#include "daemon.h"

#include <fcntl.h>
#include <sys/file.h>

#include <cerrno>
#include <cstring>

#include <unistd.h>

#include "core/log.h"
#include "core/paths.h"
#include "core/units.h"
#include "pool/torch_model.h"
#include "stats/prometheus.h"

#include <algorithm>
#include <chrono>
#include <optional>
#include <set>
#include <sstream>
#include <thread>
#include <utility>

namespace mms {

int ResolveWorkers(int configured) {
  if (configured > 0) return configured;
  unsigned hc = std::thread::hardware_concurrency();
  return static_cast<int>(std::max(2u, 2 * (hc ? hc : 2)));
}

Status ApplyLogConfig(const LogConfig& log) {
  Logger::Options lo;
  auto level = ParseLogLevel(log.level);
  if (!level.ok()) return level.status();
  lo.level = *level;
  lo.file = log.file;
  lo.json = log.format == "json";
  return Logger::Global().Configure(lo);
}

Result<int> Daemon::LockRegistry(const std::string& registry_path, const std::string& socket_path) {
  // One daemon per registry, whatever its socket: two would each flush their
  // own totals of the same experiments over the other's. The kernel drops
  // the lock when the process dies (even SIGKILL).
  const std::string path = registry_path + ".mmsd-lock";
  (void)MakeDirs(DirName(registry_path), 0700);  // as Registry::Open would, but first: no daemon runs unlocked
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0 && (errno == EACCES || errno == EROFS)) return -1;  // Registry::Open says what to do
  if (fd < 0) return IoError("cannot create " + path + ": " + std::strerror(errno));
  // A CLI migrating the registry holds the lock shared for a moment
  // (Registry::Open): a few tries before taking it for another daemon's.
  bool locked = false;
  for (int i = 0; i < 20 && !(locked = ::flock(fd, LOCK_EX | LOCK_NB) == 0); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  if (!locked) {
    ::close(fd);
    auto text = ReadFile(path);
    const DaemonLockFile held = ParseDaemonLockFile(text.ok() ? *text : "");
    const std::string &pid = held.pid, &sock = held.socket;
    return AlreadyExists("another mmsd (pid " + (pid.empty() ? std::string("unknown") : pid) +
                         (sock.empty() ? "" : ", socket " + sock) + ") serves the registry " + registry_path +
                         ": two daemons on one registry overwrite each other's experiment figures. Use that one "
                         "(mms --socket " + (sock.empty() ? "..." : sock) +
                         "), stop it, or give this one its own --data-dir ([registry] path)");
  }
  const std::string text = DaemonLockFileText(::getpid(), AbsolutePath(socket_path));
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, text.data(), text.size(), 0) < 0)
    LogWarn("lock_file_write_failed", {{"path", path}});
  return fd;
}

Status Daemon::CheckSameRegistry(const nlohmann::json& body) const {
  if (!body.contains("registry") || body["registry"] == "") return Status::Ok();
  if (!body["registry"].is_string()) return InvalidArgument("registry must be a path");
  // The same path, but not the file this daemon opened (removed, replaced):
  // the CLI wrote a registry this daemon does not read.
  MMS_RETURN_IF_ERROR(registry_->CheckFileIdentity());
  const std::string theirs = body["registry"].get<std::string>(), ours = registry_->path();
  auto a = CanonicalPath(theirs), b = CanonicalPath(ours);
  if (a.ok() && b.ok() ? *a == *b : theirs == ours) return Status::Ok();
  return FailedPrecondition("the mmsd at " + opts_.socket_path + " serves the registry " + ours + ", not " + theirs +
                            " (another --data-dir or [registry] path): point --socket at the daemon of " + theirs +
                            ", or --data-dir at " + DirName(ours));
}

Result<std::unique_ptr<Daemon>> Daemon::Create(DaemonOptions opts) {
  if (opts.socket_path.empty() || opts.data_dir.empty()) return InvalidArgument("socket and data dir must be resolved");
  std::unique_ptr<Daemon> d(new Daemon(std::move(opts)));
  const Config& c = d->opts_.config;
  d->live_ = std::make_shared<LiveConfig>(LiveConfig{c.limits, c.pool.pinned, c.scheduler, 1});
  if (Status st = MakeDirs(d->opts_.data_dir, 0700); !st.ok())
    return st.WithContext("the data dir (--data-dir, [daemon] data_dir)");

  Registry::Options ro;
  ro.path = c.registry.path.empty() ? JoinPath(d->opts_.data_dir, "registry.db") : c.registry.path;
  ro.artifacts_dir = JoinPath(d->opts_.data_dir, "artifacts");
  ro.busy_timeout_ms = c.registry.busy_timeout_ns / 1000000;
  ro.allowed_roots = c.registry.allowed_roots;
  ro.clock = d->opts_.clock;
  ro.actor = "mmsd";
  ro.require_writable = true;
  ro.daemon_lock_held = true;  // (LockRegistry, just below: before the registry opens)
  MMS_ASSIGN_OR_RETURN(d->registry_lock_fd_, LockRegistry(ro.path, d->opts_.socket_path));
  MMS_ASSIGN_OR_RETURN(d->registry_, Registry::Open(ro));

  AttributionStore::Options ao;
  ao.window_ns = c.experiments.attribution_window_ns;
  ao.capacity = static_cast<size_t>(c.experiments.attribution_capacity);
  ao.clock = d->opts_.clock;
  d->attribution_ = std::make_unique<AttributionStore>(ao);

  int workers = ResolveWorkers(c.daemon.workers);
  d->callbacks_ = std::make_unique<Executor>("mms-serve", workers);
  MMS_RETURN_IF_ERROR(d->CreatePool());

  Scheduler::Options sco;
  sco.workers = c.scheduler.workers > 0 ? c.scheduler.workers
                                        : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  sco.queue_depth = static_cast<size_t>(c.scheduler.queue_depth);
  sco.starvation_interval = c.scheduler.starvation_interval;
  sco.batch_when_idle = c.scheduler.batch_when_idle;
  sco.clock = d->opts_.clock;
  d->scheduler_ = std::make_unique<Scheduler>(sco);
  d->timers_ = std::make_unique<TimerQueue>();

  ShadowRunner::Options sho;
  Daemon* me = d.get();
  sho.acquire = [me](const PoolItem& candidate) -> Result<Servable> {
    auto snap = me->snapshot();  // keeps the record alive
    const VersionRecord* v = snap->ById(candidate.key);
    if (!v) return NotFound(candidate.ref + " is no longer registered");
    // A shadow uses only room no serving model needs (see ShadowRunner).
    return me->AcquireServableSync(*v, 600'000'000'000, ModelPool::Room::kFreeOnly);
  };
  sho.hold_refusals = [me] { return me->pool_->hold_refusals() + me->adapters_->hold_refusals(); };
  sho.yield_room = [me](const PoolItem& candidate) {
    auto snap = me->snapshot();
    const VersionRecord* v = snap->ById(candidate.key);
    if (!v) return;
    // One tier (device to host): the room a refused request most often
    // needs, and the candidate may also serve (an experiment arm, a pinned
    // ref); host copies the request can evict by policy itself. Refused
    // (pinned, in flight) is fine, and so is finding it on the host tier
    // already (a drain demoted it as the shadow let go).
    (void)me->PoolFor(*v)->Evict(v->id, /*device_only=*/true);
  };
  sho.clock = d->opts_.clock;
  sho.on_worker_start = UseOneIntraOpThreadOnThisThread;
  sho.duty_cycle = d->opts_.config.shadow.duty_cycle;
  d->shadows_ = std::make_unique<ShadowRunner>(sho);
  CanaryController::Options co;
  co.registry = d->registry_.get();
  co.clock = d->opts_.clock;
  Daemon* self = me;
  co.metrics = [self](const std::string& e, const std::string& v) { return self->VariantMetricsFor(e, v); };
  co.changed = [self] { (void)self->RefreshRegistry(false); };
  co.load_failure = [self](const CanaryRecord& c) { return self->TreatmentLoadFailure(c.experiment_id); };
  co.unsaved_changed = [self](const std::vector<UnsavedRollback>& all) { self->SaveUnsavedRollbacks(all); };
  co.hold_back = [self](const std::string& experiment_id, bool held) {
    {
      std::lock_guard lock(self->refresh_mu_);
      if (held) self->unrouted_canaries_.insert(experiment_id);
      else self->unrouted_canaries_.erase(experiment_id);
      self->reroute_ = true;  // until a refresh publishes it (this one may fail to read the registry)
    }
    (void)self->RefreshRegistry(true);
  };
  d->canaries_ = std::make_unique<CanaryController>(co);

  Server::Options so;
  so.socket_path = d->opts_.socket_path;
  so.contexts = c.daemon.contexts;
  so.workers = workers;
  so.max_message_bytes = c.daemon.max_message_bytes;
  so.lock_fd = d->opts_.lock_fd;
  so.clock = d->opts_.clock;
  so.inline_types = {proto::kPredict};
  // At most half of nng's task threads (twice the cores, at most 16), so
  // that predicts never hold all of the threads that move everyone's bytes.
  so.inline_handlers =
      std::min(c.daemon.inline_handlers, static_cast<int>(std::clamp(std::thread::hardware_concurrency(), 1u, 8u)));
  MMS_ASSIGN_OR_RETURN(d->server_, Server::Create(so, d->BuildHandlers()));
  return d;
}

Status Daemon::CreatePool() {
  const PoolConfig& pc = opts_.config.pool;
  std::vector<std::string> names =
      pc.devices.size() == 1 && pc.devices[0] == "auto" ? AutoDevices() : pc.devices;
  std::vector<std::unique_ptr<Device>> devices;
  bool cuda = false;
  uint64_t device_total = 0;
  for (const auto& n : names) {
    auto dev = CreateDevice(n, pc.device_budget);
    if (!dev.ok()) return dev.status().WithContext("[pool] devices");
    cuda = cuda || (*dev)->kind() == "cuda";
    device_total += (*dev)->budget();
    devices.push_back(std::move(dev).value());
  }
  ModelPool::Options po;
  po.host_budget = pc.host_budget ? pc.host_budget : std::max(HostMemoryAvailable() / 2, device_total);
  po.policy.name = pc.policy;
  po.policy.half_life = pc.policy_half_life;
  po.load_threads = pc.load_threads;
  po.retry_backoff_ns = pc.load_retry_backoff_ns;
  po.room_wait_ns = pc.room_wait_ns;
  po.warmup = pc.warmup;
  po.clock = opts_.clock;
  po.callbacks = callbacks_.get();
  ConfigureTorchThreads(pc.intra_op_threads);
  MMS_ASSIGN_OR_RETURN(pool_, ModelPool::Create(po, std::move(devices), std::make_unique<TorchLoader>(),
                                                MakeHostAllocator(cuda)));
  // Adapters: the same devices with their own budgets, policy and tiers.
  std::vector<std::unique_ptr<Device>> adapter_devices;
  for (const auto& n : names) {
    auto dev = CreateDevice(n, opts_.config.lora.device_budget);
    if (!dev.ok()) return dev.status().WithContext("[lora] device_budget");
    adapter_devices.push_back(std::move(dev).value());
  }
  ModelPool::Options ao = po;
  ao.host_budget = opts_.config.lora.host_budget;
  ao.warmup = false;  // an adapter runs on its base
  ao.config_section = "lora";
  MMS_ASSIGN_OR_RETURN(adapters_, ModelPool::Create(ao, std::move(adapter_devices), std::make_unique<AdapterLoader>(),
                                                    MakeHostAllocator(cuda)));
  return Status::Ok();
}

void Daemon::AcquireServable(const VersionRecord& v, std::function<void(Result<Servable>)> cb, bool counted,
                             std::shared_ptr<const std::atomic<bool>> answered,
                             std::shared_ptr<std::atomic<bool>> base_held) {
  if (!v.is_adapter()) {
    pool_->Acquire(ItemFor(v), [cb](Result<HandlePtr> h) {
      if (!h.ok()) return cb(h.status());
      cb(Servable{std::move(h).value(), nullptr});
    }, ModelPool::Room::kEvict, counted, std::move(answered));
    return;
  }
  auto snap = snapshot();
  const VersionRecord* base = snap->ById(v.base_id);
  if (!base) return cb(NotFound("the base of adapter " + v.ref() + " (" + v.base_ref + ") is no longer registered"));
  ModelPool* adapters = adapters_.get();
  pool_->Acquire(ItemFor(*base), [cb, adapter = ItemFor(v), adapters, counted, answered,
                                  base_held](Result<HandlePtr> h) mutable {
    if (!h.ok()) return cb(h.status());
    if (base_held) *base_held = true;
    HandlePtr model = std::move(h).value();
    adapter.device = model->device();  // placed beside its base: no copy between devices per batch
    adapters->Acquire(adapter, [cb, model = std::move(model)](Result<HandlePtr> a) mutable {
      if (!a.ok()) return cb(a.status());
      cb(Servable{std::move(model), std::move(a).value()});
    }, ModelPool::Room::kEvict, counted, answered);
  }, ModelPool::Room::kEvict, counted, answered);
}

void Daemon::RetryPins() {
  // Under refresh_mu_, as the refresh applies pins: a refresh that unpins or
  // forgets a version meanwhile must not be undone by a retry working from
  // the set before it. Pin() does no I/O (a load runs on a loader thread).
  std::lock_guard lock(refresh_mu_);
  auto snap = latest_ ? latest_ : snapshot();
  // Pin() returns at once for a pin on a device; one that did not fit (or
  // whose load failed, after its backoff) is tried again.
  for (PoolKey k : pinned_)
    if (const VersionRecord* v = snap->ById(k)) Pin(*v);
}

void Daemon::Pin(const VersionRecord& v) {
  if (!v.is_adapter()) return pool_->Pin(ItemFor(v));
  adapters_->Pin(ItemFor(v, pool_->DeviceOf(v.base_id)));  // beside its base, once placed or claimed room
}

std::string Daemon::PinReason(PoolKey key) const {
  std::lock_guard<std::mutex> lock(pin_mu_);
  auto it = pin_why_.find(key);
  return it == pin_why_.end() ? "" : it->second;
}

nlohmann::json Daemon::VersionHealth(const VersionRecord& v) const {
  auto h = PoolFor(v)->Health(v.id);
  nlohmann::json j = h ? *h : nlohmann::json{{"tier", "disk"}, {"healthy", true}, {"loads", 0}};
  // A version no device budget can hold is refused at every request: not
  // healthy, whatever its last load said.
  if (Status fits = PoolFor(v)->FitsAtAll(ItemFor(v)); !fits.ok()) {
    j["healthy"] = false;
    j["error"] = fits.message();
    j["fits"] = false;  // no retry will load it (mms health says no retry)
  }
  if (v.is_adapter() && j.value("healthy", true)) {
    auto snap = snapshot();  // owns `base`
    const VersionRecord* base = snap->ById(v.base_id);
    nlohmann::json b = base ? VersionHealth(*base) : nlohmann::json{{"healthy", false}};
    if (!b.value("healthy", true)) {
      j["healthy"] = false;
      j["error"] = base ? "its base " + base->ref() + " is unhealthy: " + b.value("error", std::string("?"))
                        : "its base " + v.base_ref + " is no longer registered";
    }
  }
  j["ref"] = v.ref();
  j["stage"] = StageName(v.stage);
  return j;
}

nlohmann::json Daemon::UnresolvedPins() const {
  std::lock_guard<std::mutex> lock(pin_mu_);
  return unresolved_pins_;
}

Result<Servable> Daemon::AcquireServableSync(const VersionRecord& v, int64_t timeout_ns, ModelPool::Room room) {
  if (!v.is_adapter()) {
    MMS_ASSIGN_OR_RETURN(HandlePtr h, pool_->AcquireSync(ItemFor(v), timeout_ns, room));
    return Servable{h, nullptr};
  }
  auto snap = snapshot();
  const VersionRecord* base = snap->ById(v.base_id);
  if (!base) return NotFound("the base of adapter " + v.ref() + " (" + v.base_ref + ") is no longer registered");
  MMS_ASSIGN_OR_RETURN(HandlePtr model, pool_->AcquireSync(ItemFor(*base), timeout_ns, room));
  MMS_ASSIGN_OR_RETURN(HandlePtr adapter, adapters_->AcquireSync(ItemFor(v, model->device()), timeout_ns, room));
  return Servable{model, adapter};
}

Daemon::~Daemon() {
  {
    std::lock_guard<std::mutex> lock(watch_mu_);
    stopping_ = true;
  }
  watch_cv_.notify_all();
  if (watcher_.joinable()) watcher_.join();
  // Members would be destroyed in reverse declaration order, the pools before
  // the load callbacks still queued on callbacks_. Instead: nothing new comes
  // in; queued work finishes or is cancelled while everything it touches
  // exists; whatever holds pool handles goes before the pools; the server,
  // which every pending Responder points at, goes last.
  http_.reset();
  if (server_) server_->Stop();            // no more requests or handlers; late replies are dropped
  on_routed_.clear();                      // their Responders point at the server
  if (callbacks_) callbacks_->Shutdown();  // queued load callbacks run now; later ones run inline
  if (scheduler_) scheduler_->Stop();      // queued requests are answered CANCELLED; later ones too
  timers_.reset();                         // pending deadlines are dropped: the loads' callbacks answer
  shadows_.reset();                        // the shadow workers drop their candidates' handles
  // Loads still queued complete (their requests are answered CANCELLED): the
  // base's first, as finishing one may start an adapter's load. Then no
  // callback can run, and the adapters (whose waiters hold base handles) go
  // before the base pool.
  if (pool_) pool_->StopLoads();
  if (adapters_) adapters_->StopLoads();
  adapters_.reset();
  pool_.reset();
  server_.reset();
  if (registry_lock_fd_ >= 0) ::close(registry_lock_fd_);  // releases the flock (the process exits next)
}

std::map<uint16_t, Handler> Daemon::BuildHandlers() {
  std::map<uint16_t, Handler> table;
  AddCoreHandlers(this, &table);
  AddPoolHandlers(this, &table);
  AddRolloutHandlers(this, &table);
  AddShadowCanaryHandlers(this, &table);
  return table;
}

std::shared_ptr<const RegistrySnapshot> Daemon::snapshot() const {
  std::lock_guard<std::mutex> lock(snap_mu_);
  return snapshot_;
}

std::shared_ptr<const Daemon::LiveConfig> Daemon::live() const {
  std::lock_guard<std::mutex> lock(snap_mu_);
  return live_;
}

PoolItem Daemon::ItemFor(const VersionRecord& v, const std::string& device) {
  PoolItem it;
  it.key = v.id;
  it.ref = v.ref();
  it.source.ref = v.ref();
  it.source.artifact_path = v.artifact_path;
  it.source.packed_dir = v.packed_dir;
  it.bytes = v.device_bytes;
  it.sample_input = v.sample_input;
  it.inputs = v.inputs;
  it.device = device;
  return it;
}

namespace {
std::string ExperimentKey(const std::string& id) { return "experiment/" + id; }
std::string ExperimentKey(const ExperimentRecord& e) { return ExperimentKey(e.id); }
std::string ShadowKey(const ShadowRecord& s) { return "shadow/" + std::to_string(s.id); }
}  // namespace

void Daemon::StartWarmups(const RegistrySnapshot& latest) {
  std::map<std::string, std::vector<int64_t>> want;  // rollout key → its arms
  for (const auto& [model, e] : latest.experiments) want[ExperimentKey(e)] = {e.control_id, e.treatment_id};
  for (const auto& [model, sh] : latest.shadows) want[ShadowKey(sh)] = {sh.candidate_id};
  std::vector<std::pair<std::string, std::vector<int64_t>>> start;
  std::set<std::string> shadow_keys;
  for (const auto& [model, sh] : latest.shadows) shadow_keys.insert(ShadowKey(sh));
  {
    std::lock_guard<std::mutex> lock(warm_mu_);
    for (auto it = warmups_.begin(); it != warmups_.end();)  // ended rollouts
      it = want.count(it->first) ? std::next(it) : warmups_.erase(it);
    for (auto& [key, arms] : want)
      if (!warmups_.count(key)) {
        warmups_[key] = {static_cast<int>(arms.size()), opts_.clock->MonoNanos(), {}};
        start.emplace_back(key, std::move(arms));
      }
  }
  // Outside warm_mu_: a hit calls back at once, on this thread.
  for (const auto& [key, arms] : start)
    for (size_t arm = 0; arm < arms.size(); ++arm) {
      const VersionRecord* v = latest.ById(arms[arm]);
      if (!v) {  // the version was removed: nothing to load
        WarmupArmDone(key);
        continue;
      }
      // A failure that will last (the artifact is broken, the model bigger
      // than any budget) is remembered: a canary is not routed to it. A full
      // pool (requests in flight, pins) passes: the canary's verdict says
      // capacity if it lasts.
      auto done = [this, key = key, arm, ref = v->ref(), lasting_full = !PoolFor(*v)->FitsAtAll(ItemFor(*v)).ok()](
                      const Status& st) {
        if (!st.ok()) {
          LogWarn("warm_failed", {{"model", ref}, {"error", st.message()}});
          if (st.code() != Code::kPoolFull || lasting_full) {
            std::lock_guard<std::mutex> lock(warm_mu_);
            if (auto it = warmups_.find(key); it != warmups_.end()) it->second.failed[arm] = {ref, st.message()};
          }
        }
        WarmupArmDone(key);
      };
      // A shadow's candidate takes free room only, as its jobs do: it never
      // evicts a model that serves users (it evicted production, whose next
      // request paid a cold load). An experiment's arms serve users: they may.
      // Not a request's use: no hit or miss, no last use.
      const auto room = shadow_keys.count(key) ? ModelPool::Room::kFreeOnly : ModelPool::Room::kEvict;
      if (!v->is_adapter()) {
        pool_->Acquire(ItemFor(*v), [done](Result<HandlePtr> h) { done(h.status()); }, room, /*counted=*/false);
        continue;
      }
      const VersionRecord* base = latest.ById(v->base_id);
      if (!base) {
        done(NotFound("its base is no longer registered"));
        continue;
      }
      pool_->Acquire(ItemFor(*base), [this, done, room, adapter = ItemFor(*v)](Result<HandlePtr> h) mutable {
        if (!h.ok()) return done(h.status());
        adapter.device = (*h)->device();  // beside its base (as AcquireServable)
        adapters_->Acquire(adapter, [done](Result<HandlePtr> a) { done(a.status()); }, room, /*counted=*/false);
      }, room, /*counted=*/false);
    }
}

void Daemon::WarmupArmDone(const std::string& key) {
  {
    std::lock_guard<std::mutex> lock(warm_mu_);
    auto it = warmups_.find(key);
    if (it == warmups_.end() || --it->second.pending > 0) return;
  }
  {  // the watcher publishes the rollout
    std::lock_guard<std::mutex> lock(watch_mu_);
    refresh_due_ = true;
  }
  watch_cv_.notify_all();
}

bool Daemon::WarmupSettled(const std::string& key) const {
  std::lock_guard<std::mutex> lock(warm_mu_);
  auto it = warmups_.find(key);
  return it == warmups_.end() || it->second.pending <= 0 ||
         opts_.clock->MonoNanos() - it->second.started_ns >= kWarmupLimitNs;
}

std::string Daemon::TreatmentLoadFailure(const std::string& experiment_id) const {
  std::lock_guard<std::mutex> lock(warm_mu_);
  auto it = warmups_.find(ExperimentKey(experiment_id));
  if (it == warmups_.end()) return "";
  auto f = it->second.failed.find(1);
  return f == it->second.failed.end() ? "" : f->second.error;
}

nlohmann::json Daemon::WarmupFailures() const {
  nlohmann::json out = nlohmann::json::array();
  std::lock_guard<std::mutex> lock(warm_mu_);
  for (const auto& [key, w] : warmups_)
    for (const auto& [arm, f] : w.failed) out.push_back({{"version", f.ref}, {"error", f.error}});
  return out;
}

int64_t Daemon::RoutingDeadline() {
  int64_t next = INT64_MAX;
  std::vector<std::string> held;
  {
    std::lock_guard lock(refresh_mu_);
    for (const auto& w : on_routed_) next = std::min(next, w.deadline_ns);
    held = held_back_;
  }
  std::lock_guard<std::mutex> lock(warm_mu_);
  for (const auto& key : held)
    if (auto it = warmups_.find(key); it != warmups_.end()) next = std::min(next, it->second.started_ns + kWarmupLimitNs);
  return next;
}

Status Daemon::RefreshRegistry(bool force, std::function<void()> on_routed, int64_t wait_ns) {
  std::vector<std::function<void()>> answer;  // waiters to answer, after the lock is released
  bool rearm = false;                         // a waiter or a held-back rollout the watcher must time
  Status st = RefreshLocked(force, std::move(on_routed), wait_ns, &answer, &rearm);
  if (rearm) {
    {
      std::lock_guard<std::mutex> w(watch_mu_);
      rearm_ = true;
    }
    watch_cv_.notify_all();
  }
  for (auto& f : answer) f();
  return st;
}

Status Daemon::RefreshLocked(bool force, std::function<void()> on_routed, int64_t wait_ns,
                             std::vector<std::function<void()>>* answer, bool* rearm) {
  std::lock_guard lock(refresh_mu_);
  const int64_t now = opts_.clock->MonoNanos();
  // Waiters are answered once nothing is held back, at their deadline, or at
  // once while shutting down. Those past their deadline are answered first,
  // even when the registry read below fails.
  auto settle_waiters = [&] {
    for (auto it = on_routed_.begin(); it != on_routed_.end();) {
      if (!held_back_.empty() && !stopping_routes_ && it->deadline_ns > now) {
        ++it;
        continue;
      }
      answer->push_back(std::move(it->fn));
      it = on_routed_.erase(it);
    }
    *rearm = !on_routed_.empty() || !held_back_.empty();
  };
  settle_waiters();
  auto old = snapshot();
  auto live_cfg = live();
  MMS_ASSIGN_OR_RETURN(int64_t dv, registry_->DataVersion());
  // This call's waiter only once the read succeeded (an error is answered by the caller).
  if (on_routed) on_routed_.push_back({now + std::clamp<int64_t>(wait_ns, 0, kWarmupLimitNs + 1'000'000'000),
                                      std::move(on_routed)});
  bool read = !latest_ || dv != latest_->data_version;
  // Unchanged registry and config, and no held-back rollout ready to route:
  // nothing to publish. (A reloaded config whose refresh failed is applied
  // by the watcher's next try.)
  if (!force && !read && !reroute_ && applied_live_ == live_cfg->generation &&
      std::none_of(held_back_.begin(), held_back_.end(), [&](const std::string& k) { return WarmupSettled(k); })) {
    settle_waiters();
    return Status::Ok();
  }
  if (read) {
    MMS_ASSIGN_OR_RETURN(latest_, RegistrySnapshot::Load(*registry_));
  }
  StartWarmups(*latest_);
  // A rollout is routed once its arms are warm, or when it was already (the
  // first refresh after Start keeps what Start's snapshot routes).
  std::map<std::string, ExperimentRecord> routed_exps;
  std::map<std::string, ShadowRecord> routed_shadows;
  held_back_.clear();
  bool unrouted = false;
  for (const auto& [model, e] : latest_->experiments) {
    // Rolled back, its registry write being retried; or its candidate could
    // not be loaded (the canary controller rolls it back): no traffic to it.
    if (unrouted_canaries_.count(e.id) || (e.kind == "canary" && !TreatmentLoadFailure(e.id).empty())) {
      unrouted = true;
      continue;
    }
    bool was = old && old->experiments.count(model) && old->experiments.at(model).id == e.id;
    if (was || WarmupSettled(ExperimentKey(e))) routed_exps[model] = e;
    else held_back_.push_back(ExperimentKey(e));
  }
  for (const auto& [model, sh] : latest_->shadows) {
    bool was = old && old->shadows.count(model) && old->shadows.at(model).id == sh.id;
    if (was || WarmupSettled(ShadowKey(sh))) routed_shadows[model] = sh;
    else held_back_.push_back(ShadowKey(sh));
  }
  std::shared_ptr<const RegistrySnapshot> snap = latest_;
  if (!held_back_.empty() || unrouted) {
    snap = latest_->WithRollouts(std::move(routed_exps), std::move(routed_shadows));
    LogDebug("rollouts_held_back", {{"rollouts", held_back_}});
  }
  settle_waiters();
  {
    std::lock_guard<std::mutex> s(snap_mu_);
    snapshot_ = snap;
  }
  reroute_ = false;
  ApplySnapshot(old.get(), *snap, *live_cfg);
  return Status::Ok();
}

void Daemon::ApplySnapshot(const RegistrySnapshot* old, const RegistrySnapshot& snap, const LiveConfig& live_cfg) {
  {
    std::set<std::string> active;  // a stopped experiment's user counts are of no more use
    for (const auto& [model, e] : snap.experiments) active.insert(e.id);
    user_splits_.Retain(active);
  }
  if (old) {
    for (const auto& [name, versions] : old->models)
      for (const auto& v : versions)
        if (!snap.ById(v.id)) {
          PoolFor(v)->Forget(v.id);
          scheduler_->Forget(v.id);  // (every dispatch looks at every queue)
          // A version registered again under the same name starts from zero.
          serving_metrics_.Remove(v.ref());
        }
    for (const auto& [name, versions] : snap.models)
      for (const auto& v : versions) {
        const VersionRecord* was = old->ById(v.id);
        if (!was) LogInfo("version_registered", {{"model", v.model}, {"version", v.version}, {"bytes", v.device_bytes}});
        if (was && was->packed_dir != v.packed_dir) {  // repacked: its next load reads the new files
          LogInfo("version_repacked", {{"model", v.model}, {"version", v.version}, {"packed_dir", v.packed_dir}});
          PoolFor(v)->Replaced(ItemFor(v));
        }
        if (was && was->stage != v.stage)
          LogInfo("stage_changed", {{"model", v.model}, {"version", v.version}, {"from", StageName(was->stage)},
                                    {"to", StageName(v.stage)}});
      }
  }

  std::set<PoolKey> want;
  std::map<PoolKey, std::string> why;  // the first reason found for each
  nlohmann::json unresolved = nlohmann::json::array();
  auto want_ref = [&](const std::string& text, const char* source, const std::string& reason) {
    auto ref = ParseRef(text);
    auto v = ref.ok() ? snap.Resolve(*ref) : Result<const VersionRecord*>(ref.status());
    if (!v.ok()) {
      LogWarn("pin_unresolved", {{"ref", text}, {"source", source}, {"error", v.status().message()}});
      unresolved.push_back({{"ref", text}, {"source", source}, {"error", v.status().message()}});
      return;
    }
    want.insert((*v)->id);
    why.emplace((*v)->id, reason);
  };
  for (const auto& p : snap.pins) want_ref(p.ref(), "registry", "pinned; unpin it first (mms unpin " + p.ref() + ")");
  for (const auto& p : live_cfg.pinned)
    want_ref(p, "[pool] pinned",
             "pinned by [pool] pinned (" + p + ") in mmsd's config; remove it there and send mmsd SIGHUP");
  // A pinned adapter runs on its base: the base is kept too.
  for (PoolKey k : std::set<PoolKey>(want))
    if (const VersionRecord* v = snap.ById(k); v && v->is_adapter() && snap.ById(v->base_id)) {
      want.insert(v->base_id);
      why.emplace(v->base_id, "kept as the base of pinned adapter " + v->ref() + " (" + why[k] + ")");
    }
  {
    std::lock_guard<std::mutex> lock(pin_mu_);
    pin_why_ = why;
    unresolved_pins_ = std::move(unresolved);
  }
  // Models first: an adapter pinned now is placed beside its base, whose
  // load has claimed its device by then.
  for (bool adapters : {false, true})
    for (PoolKey k : want)
      if (!pinned_.count(k) && snap.ById(k)->is_adapter() == adapters) Pin(*snap.ById(k));
  for (PoolKey k : pinned_)
    if (!want.count(k)) {
      pool_->Unpin(k);
      adapters_->Unpin(k);
    }
  pinned_ = want;

  // Rate limits: the registry's, with [limits] as defaults (a qps of 0 is
  // none; the limiter fills in a burst of 0).
  std::map<std::string, TokenLimit> model_limits, tenant_limits;
  for (const auto& l : snap.limits) (l.kind == "model" ? model_limits : tenant_limits)[l.key] = {l.qps, l.burst};
  const LimitsConfig& lc = live_cfg.limits;
  limiter_.Configure(model_limits, tenant_limits, TokenLimit{lc.model_qps, lc.model_burst},
                     TokenLimit{lc.tenant_qps, lc.tenant_burst});
  applied_live_ = live_cfg.generation;

  // A shadow's mirrored requests are matched to the inputs a predict's are
  // (an adapter's base's, as recorded now: RunsOn).
  std::map<std::string, std::pair<ShadowRecord, PoolItem>> shadows;
  for (const auto& [model, s] : snap.shadows)
    if (const VersionRecord* cand = snap.ById(s.candidate_id)) {
      PoolItem item = ItemFor(*cand);
      if (const VersionRecord* runs = snap.RunsOn(*cand)) item.inputs = runs->inputs;
      shadows[model] = {s, std::move(item)};
    }
  shadows_->Configure(shadows);
  LogDebug("registry_snapshot", {{"models", snap.models.size()}, {"pins", want.size()}});
}

Result<VersionRecord> Daemon::Resolve(const std::string& text) {
  MMS_ASSIGN_OR_RETURN(Ref ref, ParseRef(text));
  auto snap = snapshot();
  auto v = snap->Resolve(ref);
  if (v.ok()) return **v;
  if (v.status().code() != Code::kNotFound) return v.status();
  MMS_RETURN_IF_ERROR(RefreshRegistry(false));
  snap = snapshot();
  auto again = snap->Resolve(ref);
  if (!again.ok()) return again.status();
  return **again;
}

Result<VariantSnapshot> Daemon::SavedVariantFigures(const std::string& experiment, const std::string& variant) {
  auto saved = registry_->LoadExperimentMetrics(experiment);
  if (!saved.ok()) {
    static LogThrottle throttle(10'000'000'000);  // (status calls read it too, as often as they are made)
    const std::string key = VariantKey(experiment, variant);
    if (uint64_t held = 0; throttle.Admit(key, opts_.clock->MonoNanos(), &held)) {
      nlohmann::json fields{{"key", key}, {"error", saved.status().message()}};
      if (held) fields["suppressed"] = held;
      LogWarn("metrics_restore_failed", fields);
    }
    return saved.status();
  }
  auto it = saved->find(variant);
  return it == saved->end() ? VariantSnapshot{} : VariantSnapshot::FromJson(it->second);
}

std::shared_ptr<VariantMetrics> Daemon::VariantMetricsFor(const std::string& experiment, const std::string& variant,
                                                          bool* published) {
  std::string key = VariantKey(experiment, variant);
  if (published) *published = true;
  if (auto m = experiment_metrics_.Find(key)) return m;
  std::lock_guard<std::mutex> lock(restore_mu_);
  if (auto m = experiment_metrics_.Find(key)) return m;
  const int64_t now = opts_.clock->MonoNanos();
  auto failed = restore_failed_until_.find(key);
  auto saved = failed != restore_failed_until_.end() && now < failed->second
                   ? Result<VariantSnapshot>(Status(Code::kUnavailable, "restore failed a moment ago"))
                   : SavedVariantFigures(experiment, variant);
  if (!saved.ok()) {
    // Not published: a flush of an unrestored object would overwrite the
    // saved figures. This request goes uncounted; one a second later tries again.
    if (failed == restore_failed_until_.end() || now >= failed->second) restore_failed_until_[key] = now + 1'000'000'000;
    if (published) *published = false;
    return std::make_shared<VariantMetrics>();
  }
  restore_failed_until_.erase(key);
  // Restored before it is published, so no request records into it first.
  auto m = std::make_shared<VariantMetrics>();
  m->Restore(*saved);
  return experiment_metrics_.Add(key, std::move(m));
}

VariantSnapshot Daemon::VariantFigures(const std::string& experiment, const std::string& variant) {
  if (auto m = experiment_metrics_.Find(VariantKey(experiment, variant))) return m->Snapshot();
  auto saved = SavedVariantFigures(experiment, variant);
  return saved.ok() ? *saved : VariantSnapshot{};
}

void Daemon::CheckRegistryFile() {
  Status st = registry_->CheckFileIdentity();
  if (!st.ok()) {
    // Let go of: nothing of its log left for whatever file is at the path
    // now, and nothing more written; opened again once the file it opened
    // is back at its path (moved away and back).
    auto healed = registry_->LetGoOfDetachedFile();
    static LogThrottle throttle(60'000'000'000);  // (tried again at every poll)
    if (uint64_t held = 0; !healed.ok() && throttle.Admit("", opts_.clock->MonoNanos(), &held))
      LogWarn("registry_let_go_failed", {{"error", healed.status().message()}});
    if (healed.ok() && *healed) {
      // Its figures since it let go are saved, whole, at the next flush.
      for (const auto& [key, m] : experiment_metrics_.All()) m->MarkDirty();
      LogWarn("registry_reopened", {{"was", st.message()},
                                    {"note", "the file mmsd opened is back at its path: opened again, and its "
                                             "experiment figures are saved again"}});
    }
    if (healed.ok()) st = registry_->CheckFileIdentity();  // OK again, or why it let go
  }
  if (!st.ok() && !registry_detached_.exchange(true)) LogError("registry_file_replaced", {{"error", st.message()}});
  if (st.ok() && registry_detached_.exchange(false))
    LogInfo("registry_file_restored", {{"path", registry_->path()}});
}

void Daemon::CheckRegistryIntegrity() {
  // A file moved or replaced at the path (registry_replaced says so) is not
  // the one served: nothing to check. QuickCheck opens the path. (Looked at
  // now, not at the last poll: a file replaced since is not checked either.)
  CheckRegistryFile();
  if (registry_detached()) return;
  Status st = registry_->QuickCheck();
  // Only damage is a finding: a registry locked by a writer for longer than
  // busy_timeout, or gone a moment ago, is not corrupt.
  if (!st.ok() && st.code() != Code::kCorrupt) {
    LogWarn("integrity_check_failed", {{"error", st.message()}});
    return;
  }
  std::lock_guard<std::mutex> lock(warn_mu_);
  if (!st.ok() && corrupt_error_.empty()) {
    corrupt_error_ = "the registry file failed its integrity check at " + FormatUtcMillis(opts_.clock->UnixMillis()) +
                     ": " + st.message();
    LogError("registry_corrupt", {{"error", st.message()}});
  } else if (st.ok() && !corrupt_error_.empty()) {
    corrupt_error_.clear();
    LogInfo("registry_sound", {{"path", registry_->path()}});
  }
}

bool Daemon::FlushMetrics(bool brief) {
  // Only the writes wait briefly (BriefWaits holds the registry's mutex):
  // the figures are gathered outside it.
  auto write = [&](const std::function<Status()>& save) {
    std::optional<Registry::BriefWaits> quick;
    if (brief) quick.emplace(registry_.get(), CanaryController::kBriefWriteWaitMs);
    return save();
  };
  // Claims whose outcomes are in the figures now: journaled below once saved.
  const size_t claims = attribution_->MarkClaims();
  Status failed = Status::Ok();
  for (const auto& [key, m] : experiment_metrics_.All()) {
    if (!m->TakeDirty()) continue;
    auto slash = key.rfind('/');
    const nlohmann::json figures = m->Snapshot().ToJson();
    failed = write([&] { return registry_->SaveExperimentMetrics(key.substr(0, slash), key.substr(slash + 1), figures); });
    if (failed.ok()) continue;
    // Kept in memory; the next flush (or the one at stop) saves it. The rest
    // stay dirty too: each try could wait busy_timeout, and the watcher also
    // runs canary ticks and routing refreshes.
    m->MarkDirty();
    break;
  }
  // The figures of experiments no longer active, saved and held by no
  // request or feedback, leave memory (restored if needed again).
  if (failed.ok()) {
    // Active by the registry as last read, not by the routing (which holds
    // back an experiment warming up, or a canary whose rollback waits).
    std::shared_ptr<const RegistrySnapshot> latest;
    {
      std::lock_guard lock(refresh_mu_);
      latest = latest_;
    }
    std::set<std::string> active;
    for (const auto& [model, e] : (latest ? latest : snapshot())->experiments) active.insert(e.id);
    experiment_metrics_.RemoveIdle(
        [&](const std::string& key) { return !active.count(key.substr(0, key.rfind('/'))); });
  }
  // Shadow runs' figures, those that moved since last saved (the watcher's
  // thread only: saved_shadow_figures_ needs no lock).
  if (shadows_) {
    std::map<int64_t, std::string> saved;  // the runs still in memory: the map does not grow with every run
    for (auto& [id, figures] : shadows_->AllStats()) {
      std::string text = figures.dump();
      std::string& was = saved_shadow_figures_[id];
      if (was != text && failed.ok()) {
        failed = write([&] { return registry_->SaveShadowFigures(id, figures); });
        if (failed.ok()) was = std::move(text);
      }
      saved[id] = std::move(was);
    }
    saved_shadow_figures_ = std::move(saved);
  }
  // The request ids feedback may come for, appended to the file a clean
  // stop rewrites whole: a killed mmsd forgets one interval of them at most.
  // (A file of its own: appended even while the registry refuses writes,
  // but then without the claims, whose outcomes were not saved.)
  if (Status st = attribution_->AppendJournal(FeedbackIdsPath(), failed.ok() ? claims : 0); !st.ok()) {
    if (!journal_failing_.exchange(true))
      LogWarn("feedback_ids_journal_failed", {{"error", st.message()},
                                              {"note", "a killed mmsd would forget the request ids since; a clean "
                                                       "stop still saves them all"}});
  } else if (journal_failing_.exchange(false)) {
    LogInfo("feedback_ids_journal_recovered", {});
  }
  // A brief wait that failed may be contention (a long CLI transaction, a
  // slow fsync): an outage once three flushes in a row failed.
  if (failed.ok()) brief_failures_ = 0;
  if (!failed.ok() && brief && ++brief_failures_ < kBriefFailuresToReport) return false;
  // Once per outage, not once per variant and interval; and when it ends.
  if (!failed.ok() && !flush_failing_.exchange(true)) {
    LogError("metrics_flush_failed", {{"error", failed.message()},
                                      {"note", "figures are kept in memory and saved once the registry takes writes"}});
    std::lock_guard<std::mutex> lock(warn_mu_);
    flush_error_ = "experiment figures could not be saved since " + FormatUtcMillis(opts_.clock->UnixMillis()) + " (" +
                   failed.message() + "); they are kept in memory until the registry takes writes again, and a "
                   "crash meanwhile loses them";
  }
  if (failed.ok() && flush_failing_.exchange(false)) {
    LogInfo("metrics_flush_recovered", {});
    std::lock_guard<std::mutex> lock(warn_mu_);
    flush_error_.clear();
  }
  return failed.ok();
}

int64_t Daemon::DefaultBatchDelayNs() const { return live()->scheduler.max_queue_delay_ns; }

int Daemon::PriorityOf(const VersionRecord& v) const {
  auto live_cfg = live();
  const SchedulerConfig& sc = live_cfg->scheduler;
  auto in = [&](const std::vector<std::string>& l) { return std::find(l.begin(), l.end(), v.model) != l.end(); };
  if (in(sc.high_priority)) return 0;
  if (in(sc.low_priority)) return 2;
  if (v.sla_p99_ms && *v.sla_p99_ms <= sc.high_priority_sla_ms) return 0;
  return 1;
}

void Daemon::ExportSchedulerMetrics(PromWriter* w) {
  auto snap = snapshot();
  w->Family("mms_queue_depth", "gauge", "Requests waiting for a worker, by model and version.");
  w->Family("mms_batches_total", "counter", "Executions (a batch counts once), by model and version.");
  w->Family("mms_deadline_exceeded_total", "counter", "Requests dropped before running because of their deadline.");
  w->Family("mms_overloaded_total", "counter", "Requests refused because the version's queue was full.");
  nlohmann::json st = scheduler_->Stats();
  for (auto it = st.begin(); it != st.end(); ++it) {
    const VersionRecord* v = snap->ById(std::stoll(it.key()));
    if (!v) continue;
    Labels l{{"model", v->model}, {"version", v->version}};
    w->Sample("mms_queue_depth", l, (*it)["queued"].get<double>());
    w->Sample("mms_batches_total", l, (*it)["batches"].get<double>());
    w->Sample("mms_deadline_exceeded_total", l, (*it)["deadline_drops"].get<double>());
    w->Sample("mms_overloaded_total", l, (*it)["overloaded"].get<double>());
  }
  w->Family("mms_rate_limited_total", "counter", "Requests refused by a rate limit, by model or tenant.");
  w->Family("mms_rate_admitted_total", "counter", "Requests admitted past the rate limits, by model or tenant.");
  nlohmann::json lim = limiter_.Stats();
  for (const char* kind : {"models", "tenants"})
    for (auto it = lim[kind].begin(); it != lim[kind].end(); ++it) {
      Labels l{{std::string(kind) == "models" ? "model" : "tenant", it.key()}};
      w->Sample("mms_rate_limited_total", l, (*it)["limited"].get<double>());
      w->Sample("mms_rate_admitted_total", l, (*it)["admitted"].get<double>());
    }
}

void Daemon::StopExpiredShadows() {
  std::shared_ptr<const RegistrySnapshot> snap;
  {
    std::lock_guard lock(refresh_mu_);  // the registry's view: a held-back shadow expires too
    snap = latest_ ? latest_ : snapshot();
  }
  int64_t now = opts_.clock->UnixMillis();
  for (const auto& [model, s] : snap->shadows) {
    // A candidate that became production (a canary's promotion, mms model
    // stage) serves every request itself: nothing is left to mirror, and the
    // run would show "running" with nothing counted.
    auto serving = snap->Resolve(Ref{Ref::Kind::kName, model, "", ""});
    const bool promoted = serving.ok() && (*serving)->id == s.candidate_id && (*serving)->stage == Stage::kProduction;
    if ((s.ends_ms && now >= s.ends_ms) || promoted) {
      auto r = registry_->StopShadow(model, promoted ? "its candidate became the production version" : "duration elapsed");
      if (r.ok()) (void)RefreshRegistry(false);
    }
  }
}

void Daemon::WatchRegistry() {
  const int64_t poll = opts_.config.registry.poll_interval_ns, flush = opts_.config.experiments.flush_interval_ns;
  const int64_t integrity = opts_.config.registry.integrity_check_ns;
  int64_t last_poll_ns = opts_.clock->MonoNanos();
  int64_t last_check_ns = last_poll_ns;  // (the open at start read the file)
  int64_t refresh_failed_ns = INT64_MIN / 2;  // the last routing refresh that failed
  std::unique_lock<std::mutex> lock(watch_mu_);
  while (!stopping_) {
    // Wake for whichever is due first: a flush_interval shorter than the
    // poll_interval is still kept (a crash loses at most flush_interval).
    // A warm-up ending (refresh_due_) or passing its limit, or a waiter's
    // deadline, is handled at once, not at the next poll.
    lock.unlock();
    // After a failed refresh, retry routing work a second later, not in a loop.
    const int64_t routing = std::max(RoutingDeadline(), refresh_failed_ns + 1'000'000'000);
    lock.lock();
    if (stopping_) break;
    int64_t now = opts_.clock->MonoNanos();
    int64_t next = std::min({last_poll_ns + poll, last_flush_ns_ + flush, routing});
    watch_cv_.wait_for(lock, std::chrono::nanoseconds(std::max<int64_t>(next - now, 10'000'000)),
                       [&] { return stopping_ || refresh_due_ || rearm_; });
    if (stopping_) break;
    rearm_ = false;
    bool due = std::exchange(refresh_due_, false);
    lock.unlock();
    now = opts_.clock->MonoNanos();
    if ((due || now >= routing) && now - last_poll_ns < poll) {
      Status st = RefreshRegistry(false);
      refresh_failing_ = !st.ok();
      if (!st.ok()) {
        refresh_failed_ns = now;
        LogWarn("registry_refresh_failed", {{"error", st.message()}});
      }
    }
    if (now - last_check_ns >= integrity) {
      last_check_ns = now;
      CheckRegistryIntegrity();
    }
    if (now - last_poll_ns >= poll) {
      last_poll_ns = now;
      CheckRegistryFile();
      // Let go of (removed or replaced under it): nothing to read until the
      // file is back or mmsd restarts; it serves on from what it had.
      if (registry_detached()) {
        lock.lock();
        continue;
      }
      Status st = RefreshRegistry(false);
      refresh_failing_ = !st.ok();
      if (!st.ok()) LogWarn("registry_refresh_failed", {{"error", st.message()}});
      RetryPins();
      StopExpiredShadows();
      try {  // a canary step that throws must not end the watcher (and with it mmsd)
        canaries_->Tick();
      } catch (const std::exception& e) {
        LogError("canary_tick_failed", {{"error", e.what()}});
      }
    }
    now = opts_.clock->MonoNanos();
    if (now - last_flush_ns_ >= flush) {
      CheckRegistryFile();  // never a write into a log that is no longer the file's
      if (!registry_detached()) FlushMetrics(/*brief=*/true);
      // Versions and arms gone idle let go of their recent window's old
      // intervals (up to 0.8 MB each; traffic frees them as it records).
      for (MetricsStore* store : {&serving_metrics_, &experiment_metrics_})
        for (const auto& [key, m] : store->All()) m->TrimRecent(now);
      last_flush_ns_ = now;
    }
    lock.lock();
  }
}

std::string Daemon::FeedbackIdsPath() const { return registry_->path() + ".feedback-ids"; }

std::string Daemon::UnsavedRollbacksPath() const { return opts_.socket_path + ".unsaved-rollbacks"; }

void Daemon::SaveUnsavedRollbacks(const std::vector<UnsavedRollback>& all) {
  // Beside the socket (a runtime directory, often tmpfs): not on the disk
  // whose failure left them unsaved.
  {
    std::lock_guard<std::mutex> lock(unsaved_mu_);
    unsaved_seen_ = all;
  }
  const std::string path = UnsavedRollbacksPath();
  if (all.empty()) {
    ::unlink(path.c_str());
    return;
  }
  if (Status st = WriteFileAtomic(path, FormatUnsavedRollbacks(all)); !st.ok())
    LogWarn("unsaved_rollbacks_not_kept", {{"path", path}, {"error", st.message()},
                                           {"note", "a crash before the registry takes writes would route the canary again"}});
}

std::vector<UnsavedRollback> Daemon::LoadUnsavedRollbacks() {
  auto text = ReadFile(UnsavedRollbacksPath());
  return text.ok() ? ParseUnsavedRollbacks(*text) : std::vector<UnsavedRollback>{};
}

Status Daemon::Start() {
  started_mono_ns_ = opts_.clock->MonoNanos();
  reload_ok_unix_ms_ = opts_.clock->UnixMillis();  // the config in force was read at start
  // Request ids the previous mmsd served, saved at its clean stop or
  // journaled at its flushes: feedback for them still counts. Load skips
  // what it cannot read, so a damaged file cannot stop every start; a start
  // that fails leaves the file as it was.
  const bool ids_saved = FileExists(FeedbackIdsPath());
  if (ids_saved) {
    auto n = attribution_->Load(FeedbackIdsPath());
    if (n.ok()) LogInfo("feedback_ids_restored", {{"ids", *n}});
    else LogWarn("feedback_ids_not_restored", {{"error", n.status().message()}});
    // Rewritten whole, before any request (what was read, compacted, its
    // reports all saved ones): the flushes append to it from here.
    if (n.ok())
      if (Status st = attribution_->Save(FeedbackIdsPath(), AttributionStore::Reports::kSaved); !st.ok())
        LogWarn("feedback_ids_journal_failed", {{"error", st.message()}});
  }
  // Rollbacks a previous mmsd judged but could not record (it died first):
  // their canaries get no traffic, and are written at the next ticks.
  if (auto unsaved = LoadUnsavedRollbacks(); !unsaved.empty()) {
    canaries_->RestoreUnsaved(unsaved);
    {
      std::lock_guard<std::mutex> lock(unsaved_mu_);
      unsaved_seen_ = unsaved;
    }
    std::lock_guard lock(refresh_mu_);
    for (const auto& u : unsaved) {
      unrouted_canaries_.insert(u.experiment_id);
      LogWarn("canary_rollback_unsaved", {{"experiment", u.experiment_id}, {"reason", u.reason},
                                          {"note", "judged before mmsd restarted; no traffic until it is recorded"}});
    }
    reroute_ = true;
  }
  // A snapshot before the first request: the first refresh below may take a
  // while (it preloads pins and warms experiment arms) and requests arriving
  // meanwhile are routed by this one.
  MMS_ASSIGN_OR_RETURN(auto first, RegistrySnapshot::Load(*registry_));
  {
    std::lock_guard lock(refresh_mu_);
    if (!unrouted_canaries_.empty()) {
      std::map<std::string, ExperimentRecord> exps;
      for (const auto& [model, e] : first->experiments)
        if (!unrouted_canaries_.count(e.id)) exps[model] = e;
      first = first->WithRollouts(std::move(exps), first->shadows);
    }
  }
  {
    std::lock_guard<std::mutex> lock(snap_mu_);
    snapshot_ = std::move(first);
  }
  // HTTP first: a bad or taken [metrics] address fails the start before any
  // request is served, and /metrics answers as soon as `mms ping` does.
  if (!opts_.metrics_address.empty()) {
    std::vector<HttpServer::Route> routes;
    routes.push_back({"/metrics", false, [this](const std::string&) {
                        return HttpResponse{200, "text/plain; version=0.0.4; charset=utf-8", PrometheusText()};
                      }});
    routes.push_back({"/health", true, [this](const std::string& p) { return HealthResponse(p); }});
    MMS_ASSIGN_OR_RETURN(http_, HttpServer::Start(opts_.metrics_address, std::move(routes)));
    LogInfo("http_listening", {{"url", http_->url()}});
  }
  MMS_RETURN_IF_ERROR(server_->Start());
  MMS_RETURN_IF_ERROR(RefreshRegistry(true));  // also preloads the pins
  watcher_ = std::thread([this] { WatchRegistry(); });
  LogInfo("started", {{"pid", ::getpid()},
                      {"socket", opts_.socket_path},
                      {"data_dir", opts_.data_dir},
                      {"registry", registry_->path()},
                      {"devices", pool_->Devices().size() - 1},
                      {"config", opts_.config_path.empty() ? "(built-in defaults)" : opts_.config_path}});
  return Status::Ok();
}

Result<std::vector<std::string>> Daemon::Reload() {
  const int64_t covers = reload_requests_.load();  // RELOAD requests made before this reload read the file
  std::vector<std::string> reloaded, restart;
  Status failed;  // the file, or [log], not applied
  // Every outcome is recorded for STATUS (mms reload), before each return.
  auto record = [&] {
    std::lock_guard<std::mutex> lock(warn_mu_);
    last_reload_ = {{"count", last_reload_.value("count", 0) + 1},
                    {"covers", covers},
                    {"sections", reloaded},
                    {"restart", restart},
                    {"error", failed.message()},
                    {"code", failed.ok() ? "" : CodeName(failed.code())}};
  };
  if (opts_.config_path.empty()) {  // (said, so that an operator sees the signal arrived)
    LogInfo("reloaded", {{"config", "(none)"}, {"sections", reloaded}, {"note", "no config file: nothing to reload"}});
    record();
    return reloaded;
  }
  auto cfg = LoadConfigFile(opts_.config_path);
  if (!cfg.ok()) {
    LogError("reload_failed", {{"error", cfg.status().message()}});
    reload_ok_ = false;
    failed = cfg.status().WithContext("the reload changed nothing");
    {
      std::lock_guard<std::mutex> lock(warn_mu_);
      reload_error_ = "the reload at " + FormatUtcMillis(opts_.clock->UnixMillis()) + " changed nothing: " +
                      cfg.status().message() + "; the configuration before it runs (fix the file, then SIGHUP again)";
    }
    record();
    return cfg.status();
  }
  // A [log] that cannot be applied (an unwritable file) keeps the old one;
  // the other live sections are still reloaded.
  bool log_applied = true;
  if (Status st = ApplyLogConfig(cfg->log); st.ok()) {
    opts_.config.log = cfg->log;
  } else {
    log_applied = false;
    failed = st.WithContext("the reload kept the previous [log] (the other sections were applied)");
    LogError("reload_failed", {{"section", "log"}, {"error", st.message()}, {"kept", "the previous [log]"}});
    cfg->log = opts_.config.log;
    std::lock_guard<std::mutex> lock(warn_mu_);
    reload_error_ = "the reload at " + FormatUtcMillis(opts_.clock->UnixMillis()) + " kept the previous [log]: " +
                    st.message() + " (the other sections were applied)";
  }
  {
    std::lock_guard<std::mutex> lock(snap_mu_);
    live_ = std::make_shared<LiveConfig>(LiveConfig{cfg->limits, cfg->pool.pinned, cfg->scheduler, live_->generation + 1});
  }
  // (max_queue_delay is read from the live config per request.)
  scheduler_->SetLimits(static_cast<size_t>(cfg->scheduler.queue_depth), cfg->scheduler.starvation_interval);
  reloaded = {"limits", "pool.pinned", "scheduler.priorities", "scheduler.queue_depth",
              "scheduler.max_queue_delay", "scheduler.starvation_interval"};
  if (log_applied) reloaded.insert(reloaded.begin(), "log");
  // Whatever else changed takes a restart: say so rather than ignore it.
  // "[table] key" → value, from the rendered TOML of a config.
  auto flat = [](const Config& c) {
    std::map<std::string, std::string> out;
    std::istringstream in(RenderConfig(c));
    std::string line, table;
    while (std::getline(in, line)) {
      if (!line.empty() && line[0] == '[') table = line.substr(1, line.find(']') - 1);
      auto eq = line.find(" = ");
      if (!line.empty() && line[0] != '#' && line[0] != '[' && eq != std::string::npos)
        out["[" + table + "] " + line.substr(0, eq)] = line.substr(eq + 3);
    }
    return out;
  };
  const std::set<std::string> live_keys{"[pool] pinned",
                                        "[scheduler] high_priority",
                                        "[scheduler] low_priority",
                                        "[scheduler] high_priority_sla_ms",
                                        "[scheduler] queue_depth",
                                        "[scheduler] max_queue_delay",
                                        "[scheduler] starvation_interval"};
  // Keys a command-line flag overrides never take effect from the file,
  // restart or not (--socket, --data-dir, --metrics-address).
  const std::set<std::string>& by_flag = opts_.set_by_flags;
  auto was = flat(opts_.config), now = flat(*cfg);
  for (const auto& [key, value] : now)
    if (key.rfind("[log]", 0) != 0 && key.rfind("[limits]", 0) != 0 && !live_keys.count(key) && !by_flag.count(key) &&
        was[key] != value)
      restart.push_back(key);
  if (!restart.empty()) LogWarn("reload_needs_restart", {{"keys", restart}});
  restart_pending_ = static_cast<int>(restart.size());
  reload_ok_ = log_applied;
  if (log_applied) {
    reload_ok_unix_ms_ = opts_.clock->UnixMillis();
    std::lock_guard<std::mutex> lock(warn_mu_);
    reload_error_.clear();
  }
  if (Status st = RefreshRegistry(true); !st.ok())  // the watcher retries until it applies
    LogWarn("registry_refresh_failed", {{"error", st.message()}, {"retry", "next registry poll"}});
  LogInfo("reloaded", {{"config", opts_.config_path}, {"sections", reloaded}});
  record();
  return reloaded;
}

Daemon::StopResult Daemon::Shutdown() {
  LogInfo("shutting_down", {{"in_flight", server_->in_flight()}});
  std::vector<RoutedWaiter> waiting;  // REGISTRY_CHANGED calls waiting for a warm-up
  {
    std::lock_guard lock(refresh_mu_);
    stopping_routes_ = true;  // and later ones are answered at once, so the drain is not held up
    waiting.swap(on_routed_);
  }
  for (auto& w : waiting) w.fn();
  scheduler_->Drain();  // batches waiting for more rows run now, not at their delay
  server_->BeginDrain();
  bool idle = server_->WaitIdle(opts_.config.daemon.shutdown_grace_ns);
  if (!idle) {
    // Those still queued never ran: told so (UNAVAILABLE, safe to retry),
    // not left to a dropped connection that "may or may not have run".
    const Status not_run(Code::kUnavailable,
                         "not run: mmsd is shutting down and its shutdown_grace passed before this request's "
                         "turn; nothing of it ran, so it is safe to send again once mmsd is back");
    // (Those waiting for room on a device too: their answers would come
    // only after the server stopped.)
    size_t never_ran = scheduler_->AbandonQueued(not_run);
    never_ran += pool_->AbandonRoomWaits(not_run);
    never_ran += adapters_->AbandonRoomWaits(not_run);
    if (never_ran) server_->WaitIdle(500'000'000);  // their answers sent (executions still running stay)
    LogWarn("shutdown_grace_expired", {{"abandoned", server_->in_flight()}, {"answered_not_run", never_ran}});
  }
  {
    std::lock_guard<std::mutex> lock(watch_mu_);
    stopping_ = true;
  }
  watch_cv_.notify_all();
  if (watcher_.joinable()) watcher_.join();
  // The file it opened still at its path, with its log (else let go of,
  // and nothing written to whatever is there now: the close would apply its
  // log to it).
  CheckRegistryFile();
  const bool detached = registry_detached();
  const bool flushed = !detached && FlushMetrics();
  if (detached)
    LogError("metrics_unsaved_at_stop",
             {{"note", "the registry file mmsd opened was removed or replaced: its figures since are not saved to "
                       "the file now there, nor the feedback ids beside it; mmsd exits 1"}});
  else if (!flushed)
    LogError("metrics_unsaved_at_stop",
             {{"note", "experiment and canary figures since the last successful flush are lost: the registry "
                       "refused the writes (see metrics_flush_failed); mmsd exits 1"}});
  // The request ids feedback may still come for: read back at the next start.
  // With the reports whose outcomes a flush saved (this last one included
  // when it worked): the others may be sent again, none counted twice.
  bool ids_saved = !detached;
  if (ids_saved)
    if (Status st = attribution_->Save(FeedbackIdsPath(), AttributionStore::Reports::kSaved); !st.ok()) {
      LogError("feedback_ids_unsaved", {{"error", st.message()},
                                        {"note", "feedback for requests served before this stop will be refused; "
                                                 "mmsd exits 1"}});
      ids_saved = false;
    }
  const bool saved = flushed && ids_saved;
  shadows_->Configure({});
  http_.reset();
  if (idle) {
    server_->Stop();
    scheduler_->Stop();
  }
  // A stop that lost something is a warning (its reasons are logged above).
  (idle && saved ? LogInfo : LogWarn)("stopped", {{"served", server_->requests_served()}, {"clean", idle && saved}});
  return {idle, saved, server_->close_stuck()};
}

}  // namespace mms
