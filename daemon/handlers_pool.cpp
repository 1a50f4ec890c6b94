// PREDICT, POOL, HEALTH, LOAD, EVICT, PIN, UNPIN.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>

#include "core/log.h"
#include "core/paths.h"
#include "daemon.h"
#include "protocol/messages.h"
#include "serve/batching.h"
#include "serve/router.h"

namespace mms {
namespace {

std::string NewRequestId() {
  thread_local std::mt19937_64 rng(std::random_device{}() ^ (std::hash<std::thread::id>()(std::this_thread::get_id())));
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(rng()));
  return buf;
}

// The longest execution (by its version's estimate) a predict runs on nng's
// receiving thread: beyond it, the hand-off to a worker (~25 us) costs under a
// tenth, and the thread is not kept from other connections' I/O for long.
constexpr int64_t kReceivingThreadExecNs = 250'000;
// ... and only for inputs this small: the estimate is of the version's usual
// requests, and one far larger (up to max_message_bytes) could run for long.
constexpr uint64_t kReceivingThreadInputBytes = 64 << 10;

Result<std::string> ModelField(const proto::Message& m) {
  if (!m.body.contains("model") || !m.body["model"].is_string())
    return InvalidArgument("the request needs \"model\": a reference NAME, NAME:VERSION or NAME@ALIAS");
  return m.body["model"].get<std::string>();
}

// What a finished request is credited to: its version's serving figures and,
// when an experiment routed it, the variant's (and the attribution store).
struct Credit {
  std::shared_ptr<VariantMetrics> version;
  std::shared_ptr<VariantMetrics> variant;  // null unless a running experiment's split routed it
  std::string experiment;
  Variant which = Variant::kNone;
  double treatment_share = 0;  // the experiment's, when it routed this request
  std::shared_ptr<UserSplit> users;  // a sticky experiment's distinct users, with `user`
  std::string user;
  int user_bucket = -1;  // a sticky experiment's: the user's bucket (its figures by user)
  // Inputs the routed version refused that the other arm takes: its own
  // doing (a changed input schema), counted against its arm, not "bad input".
  bool arm_refused_inputs = false;
};

// What a finished request tells. The version's figures count every outcome.
// An experiment's (or canary's) arm counts what says something about the
// version: not a request refused before it ran (a rate limit, bad input),
// which either arm would have refused alike — but inputs the other arm
// takes are counted (arm_refused_inputs: the version's own schema refused them), and not the latency of a
// request that had to load the model first — the pool's residency decided
// that, and a low-traffic arm is evicted more often than a busy one.
// The version's latency leaves those refusals out too: a refusal takes
// microseconds and would pull its percentiles down to nothing.
void Credited(const Credit& credit, int64_t latency_ns, int64_t now, const Status& st, bool loaded) {
  // Not run (queued when a shutdown's grace ran out): nothing about the
  // version, and its wait no latency (a review saw an experiment at 83%
  // errors, a canary's window taking them in, after one slow restart).
  if (st.code() == Code::kUnavailable) return;
  std::string code = st.ok() ? "" : CodeName(st.code());
  const bool at_once = st.code() == Code::kRateLimited || st.code() == Code::kInvalidArgument;
  const bool refused = at_once && !credit.arm_refused_inputs;
  // Refused at once for a full queue: counted, but its microseconds are no
  // serving latency (they made a p99 look fast while requests waited
  // seconds). A deadline drop waited for its time: it is timed.
  const bool untimed = at_once || st.code() == Code::kOverloaded;
  credit.version->Record(untimed ? -1 : latency_ns, !st.ok(), now, code);
  if (!credit.variant || refused) return;
  credit.variant->Record(loaded || untimed ? -1 : latency_ns, !st.ok(), now, code, credit.treatment_share,
                         credit.user_bucket);
  if (credit.users) credit.users->Add(credit.user, credit.which, credit.treatment_share);
}

// Answers a request the scheduler ran (or failed): reply, figures, shadow.
void Reply(Daemon* d, Responder r, const VersionRecord& rec, const std::vector<Tensor>& inputs, int64_t t0,
           const std::function<void(const Status&, bool)>& finish, const Credit& credit, const nlohmann::json& routing,
           bool mirror, const std::string& device, bool loaded, Result<std::vector<Tensor>> out) {
  if (!out.ok()) {
    // A model raising on its input: the caller has the error; the log has a
    // line per version per minute (with how many it stands for), so a model
    // that starts failing shows there, and a client cannot flood it.
    if (const Code c = out.status().code(); c == Code::kModelError || c == Code::kInternal) {
      static LogThrottle throttle(60'000'000'000);
      if (uint64_t held = 0; throttle.Admit(rec.ref(), d->clock()->MonoNanos(), &held)) {
        nlohmann::json fields{{"model", rec.ref()}, {"code", CodeName(c)}, {"error", out.status().message()}};
        if (held) fields["suppressed"] = held;
        LogWarn("model_error", fields);
      }
    }
    finish(out.status(), loaded);
    return r.Fail(out.status());
  }
  std::string request_id = NewRequestId();
  proto::Message reply;
  nlohmann::json names = nlohmann::json::array();
  for (const auto& t : *out) names.push_back(t.name);
  reply.body = {{"request_id", request_id},
                {"model", rec.model},
                {"version", rec.version},
                {"ref", rec.ref()},
                {"device", device},
                {"loaded", loaded},
                {"latency_ms", static_cast<double>(d->clock()->MonoNanos() - t0) / 1e6},
                {"outputs", names}};
  if (rec.is_adapter()) reply.body["base"] = rec.base_ref;  // the version that ran, with the adapter
  for (auto it = routing.begin(); it != routing.end(); ++it) reply.body[it.key()] = it.value();
  reply.tensors = std::move(out).value();
  // Outputs the reply cannot carry (over 16 dimensions) fail the request:
  // counted here as the model's error, not as a success the sending then
  // turned into one (a canary promoted a candidate whose every reply failed).
  if (Status st = proto::CheckEncodable(reply); !st.ok()) {
    Status e(Code::kModelError, "the reply cannot be sent: " + st.message());
    finish(e, loaded);
    return r.Fail(e);
  }
  if (!credit.experiment.empty()) d->attribution()->Remember(request_id, credit.experiment, credit.which, credit.user_bucket);
  finish(Status::Ok(), loaded);
  std::vector<Tensor> outputs = mirror ? reply.tensors : std::vector<Tensor>{};
  int64_t latency = d->clock()->MonoNanos() - t0;
  r.Send(std::move(reply));
  // After the reply: the shadow never delays the user.
  if (mirror) d->shadows()->Mirror(rec.model, inputs, outputs, latency);
}

void Predict(Daemon* d, proto::Message req, Responder r);

// From nng's receiving thread, before anything was taken from the request:
// the predict starts again on a handler thread, for work that waits there.
void PredictOnHandlerThread(Daemon* d, proto::Message& req, Responder& r) {
  r.HandOff([d, req = std::move(req), r]() mutable { Predict(d, std::move(req), r); });
}

void Predict(Daemon* d, proto::Message req, Responder r) {
  // From its receipt: time spent waiting for a handler thread (a burst on
  // every one) counts against its deadline and in its latency.
  const int64_t t0 = r.received_ns();
  auto ref_text = ModelField(req);
  if (!ref_text.ok()) return r.Fail(ref_text.status());
  auto ref = ParseRef(*ref_text);
  if (!ref.ok()) return r.Fail(ref.status());
  std::string user = req.body.value("user", "");
  thread_local std::mt19937_64 rng(std::random_device{}());
  // With "adapter", MODEL names the base and the adapter's own name routes
  // (its experiments and canaries apply); the adapter must be of that base.
  std::optional<Ref> base_ref;
  if (req.body.contains("adapter")) {
    if (!req.body["adapter"].is_string()) return r.Fail(InvalidArgument("\"adapter\" must be an adapter name"));
    auto aref = ParseRef(req.body["adapter"].get<std::string>());
    if (!aref.ok()) return r.Fail(aref.status());
    base_ref = *ref;
    ref = aref;
  }
  auto snap = d->snapshot();
  auto route = RouteRequest(*snap, *ref, user, rng);
  // Reading the registry waits: not on the receiving thread. (Checked
  // first: the hand-off's closure takes the request, so it is built only
  // when it will run.)
  if (!route.ok() && route.status().code() == Code::kNotFound && Server::OnReceivingThread())
    return PredictOnHandlerThread(d, req, r);
  if (!route.ok() && route.status().code() == Code::kNotFound && d->RefreshRegistry(false).ok()) {
    snap = d->snapshot();  // registered a moment ago?
    route = RouteRequest(*snap, *ref, user, rng);
  }
  if (!route.ok()) {
    // "unknown model 'x'" for --adapter x: said as the adapter it is.
    if (base_ref && route.status().code() == Code::kNotFound)
      return r.Fail(NotFound("--adapter: " + route.status().message() + " (mms adapter list --base " +
                             base_ref->ToString() + " shows its adapters)"));
    return r.Fail(route.status());
  }
  // The record lives in the snapshot; sharing the snapshot keeps it (no copy per request).
  std::shared_ptr<const VersionRecord> recp(snap, route->version);
  const VersionRecord& rec = *recp;
  const VersionRecord* base = rec.is_adapter() ? snap->ById(rec.base_id) : nullptr;
  if (base_ref) {
    auto want = snap->Resolve(*base_ref);
    if (!want.ok()) return r.Fail(want.status());
    if (!rec.is_adapter())
      return r.Fail(InvalidArgument(rec.ref() + " is not an adapter (mms adapter list shows them)"));
    // A bare base name means the model, whichever of its versions the
    // adapter was built on (its default may have moved on since); a version
    // or an alias means that version.
    bool same = base_ref->kind == Ref::Kind::kName ? (base && base->model == base_ref->name) : rec.base_id == (*want)->id;
    if (!same)
      return r.Fail(InvalidArgument("adapter " + rec.ref() + " is for " + rec.base_ref + ", not " +
                                    (base_ref->kind == Ref::Kind::kName ? base_ref->name : (*want)->ref())));
  }
  if (rec.is_adapter() && !base)
    return r.Fail(NotFound("the base of adapter " + rec.ref() + " (" + rec.base_ref + ") is no longer registered"));
  auto credit = std::make_shared<Credit>();
  credit->version = d->serving_metrics()->Get(rec.ref());
  nlohmann::json routing = nlohmann::json::object();
  if (route->experiment) {
    const ExperimentRecord& e = *route->experiment;
    routing = {{"experiment", e.id}, {"variant", VariantName(route->variant)}};
    if (route->bucket >= 0) routing["bucket"] = route->bucket;
    // Only requests the split decided count for the experiment: with sticky
    // assignment a request without a user id goes to control unbucketed, and
    // counting it would skew the arms and the sample-ratio check.
    // Said in the reply ("counted"), so that a client does not report feedback
    // for a request the experiment left out (it is refused as unknown).
    const bool counted = e.state == "running" && (e.random || route->bucket >= 0);
    routing["counted"] = counted;
    if (!counted) routing["not_counted"] = e.state != "running" ? "the experiment is " + e.state
                                                                 : std::string("no --user in a sticky experiment");
    // An arm's first counted request restores its figures from the registry
    // (VariantMetricsFor): not on the receiving thread.
    if (counted && Server::OnReceivingThread() &&
        !d->experiment_metrics()->Find(VariantKey(e.id, VariantName(route->variant))))
      return PredictOnHandlerThread(d, req, r);
    if (counted) {
      credit->experiment = e.id;
      credit->which = route->variant;
      credit->variant = d->VariantMetricsFor(e.id, VariantName(route->variant));
      credit->treatment_share = e.basis_points / 10000.0;
      if (!e.random) {  // sticky: its users are counted too (the unit its split randomises)
        credit->users = d->user_splits()->Get(e.id);
        credit->user = user;
        credit->user_bucket = UserBucket(user);
      }
    }
  }
  // Every outcome, success or failure, is counted where it belongs (Credited).
  auto finish = [d, t0, credit](const Status& st, bool loaded = false) {
    int64_t now = d->clock()->MonoNanos();
    Credited(*credit, now - t0, now, st, loaded);
  };
  auto refuse = [&](const Status& st) {  // counted like every other outcome
    finish(st);
    r.Fail(st);
  };
  // Validate the inputs before anything is loaded for them: those of the
  // version that runs (an adapter's base, RunsOn).
  const VersionRecord& runs = base ? *base : rec;
  // (Kept for the other arm's check below when an experiment routed it: shallow copies.)
  std::vector<Tensor> sent = credit->variant ? req.tensors : std::vector<Tensor>{};
  auto inputs = MatchInputs(runs.inputs, std::move(req.tensors), rec.ref());
  if (!inputs.ok()) {
    // The other arm takes these inputs: the routed version refused what its
    // model is asked to serve — a candidate with another input schema. Its
    // arm counts it (a canary rolls it back), the caller still gets exit 2.
    const ExperimentRecord* e = credit->variant ? route->experiment : nullptr;  // (null without an experiment)
    const int64_t other_id = !e ? 0 : route->variant == Variant::kTreatment ? e->control_id : e->treatment_id;
    const VersionRecord* other = other_id ? snap->ById(other_id) : nullptr;
    if (const VersionRecord* other_runs = other ? snap->RunsOn(*other) : nullptr)
      credit->arm_refused_inputs = MatchInputs(other_runs->inputs, std::move(sent), other->ref()).ok();
    return refuse(inputs.status());
  }
  // Batching follows the version that runs: an adapter's base. Its inputs
  // must agree on rows: checked here, before the request takes a token; so
  // must a stacked base's, batched or not (it runs each row with its own
  // adapter's slot, its own request or an adapter's).
  if (runs.max_batch_size > 0 || runs.lora.contains("stacked"))
    if (auto rows = BatchRows(*inputs); !rows.ok()) return refuse(rows.status());
  // A client-supplied deadline: the request is dropped before running if it cannot make it.
  int64_t deadline = 0;
  if (req.body.contains("timeout_ms")) {
    if (!req.body["timeout_ms"].is_number()) return refuse(InvalidArgument("timeout_ms must be a number"));
    double ms = req.body["timeout_ms"].get<double>();
    if (!(ms > 0))
      return refuse(InvalidArgument("the deadline is already past (timeout " + std::to_string(ms) +
                                    " ms); give a positive --deadline-ms"));
    deadline = t0 + static_cast<int64_t>(std::min(ms, 365 * 86400e3) * 1e6);  // a year: no overflow
  }
  // Rate limits come before any queueing: a refused request costs nothing more.
  std::string tenant;
  if (req.body.contains("tenant")) {
    const auto& t = req.body["tenant"];
    if (!t.is_string()) return refuse(InvalidArgument("tenant must be a string"));
    tenant = t.get<std::string>();
    if (Status st = ValidateTenant(tenant); !st.ok()) return refuse(st);
    if (RateLimiter::Reserved(tenant))
      return refuse(InvalidArgument("tenant '" + tenant + "' is reserved (mms limit list uses (none), (other), "
                                    "(counted together) and * for rows of its own); name the tenant"));
  }
  // Adapters share their base's queue (mixed batches) when it takes stacked
  // adapter weights; otherwise each adapter has its own queue, so a batch is
  // one adapter's. A queue's class is its owner's: a shared queue has the base's.
  PoolKey queue = base && !base->lora.contains("stacked") ? rec.id : runs.id;
  // Its context counts against its queue until answered: one model's
  // backlog cannot take every context (and with them the daemon) from the
  // rest. Before the rate limit: a request refused here spends no token.
  if (Status st = r.Share(queue == rec.id ? rec.ref() : runs.ref()); !st.ok()) return refuse(st);
  if (Status st = d->limiter()->Admit(rec.model, tenant, base ? base->model : ""); !st.ok()) return refuse(st);
  auto ordered = std::make_shared<std::vector<Tensor>>(std::move(inputs).value());
  // Mirror to a running shadow of this model, unless the candidate itself served.
  auto sh = snap->shadows.find(rec.model);
  bool mirror = sh != snap->shadows.end() && sh->second.candidate_id != rec.id && d->shadows()->Active(rec.model);
  int priority = d->PriorityOf(queue == rec.id ? rec : runs);
  int max_batch = runs.max_batch_size;
  // (The live config is read only for a batched version: not on every request.)
  const int64_t delay =
      max_batch == 0 ? 0 : runs.max_queue_delay_us ? runs.max_queue_delay_us * 1000 : d->DefaultBatchDelayNs();
  // A request with a deadline that waits for a load (behind other loads, or
  // a slow warm-up) is answered at its deadline, not when the load ends; the
  // load goes on for the requests after it. Whichever of the acquire and the
  // timer takes `claimed` first answers. Without a deadline: nothing to share.
  // The timer's means to answer live with `claimed`, which only the acquire's
  // callback (and the pool's wait for it) hold: once that has answered and
  // gone, the timer holds nothing of the request until its deadline.
  struct Claim {
    Claim(Responder r, std::function<void(const Status&, bool)> f) : respond(std::move(r)), finish(std::move(f)) {}
    std::atomic<bool> taken{false};
    std::atomic<bool> base_held{false};  // an adapter's base is on a device: the adapter is what loads
    Responder respond;
    std::function<void(const Status&, bool)> finish;
  };
  auto claim = deadline ? std::make_shared<Claim>(r, finish) : nullptr;
  auto claimed = claim ? std::shared_ptr<std::atomic<bool>>(claim, &claim->taken) : nullptr;
  auto base_held = claim && rec.is_adapter() ? std::shared_ptr<std::atomic<bool>>(claim, &claim->base_held) : nullptr;
  d->AcquireServable(rec, [d, r, recp, ordered, t0, finish, credit, routing, mirror, deadline, priority, queue, max_batch,
                           delay, claimed](Result<Servable> h) mutable {
    if (claimed && claimed->exchange(true)) return;  // answered at its deadline meanwhile: the handle goes
    if (!h.ok()) {
      Status st = h.status();
      // Its files gone under the load: removed meanwhile (mms model rm
      // --force), not damaged — said as NOT_FOUND (exit 4), not "repack it".
      const Code c = st.code();
      // (Only packed versions: their files go with them. The registry is
      // read for a load that failed on its files while this request waited
      // — rm deletes them one by one after its commit, so the directory may
      // still be there — and for a backoff's replay of an earlier failure
      // (same code) only once the directory is gone: not per request to a
      // broken model, each of which read the registry under its locks.)
      const bool load_failed = c == Code::kCorrupt || c == Code::kIo || c == Code::kNotFound;
      const bool failed_meanwhile =
          load_failed && (d->PoolFor(*recp)->LastLoadFailure(recp->id) >= t0 ||
                          (recp->is_adapter() && d->pool()->LastLoadFailure(recp->base_id) >= t0));
      // (The pool says so itself when it saw the removal: kept as said.)
      const bool said = c == Code::kNotFound && d->PoolFor(*recp)->Removed(recp->id);
      const bool read_registry =
          !said && !recp->packed_dir.empty() &&
          (failed_meanwhile || ((load_failed || c == Code::kUnhealthy) && !FileExists(recp->packed_dir)));
      auto answer = [d, r, recp, finish, read_registry, failed_meanwhile, st]() mutable {
        // (A request that waited for room, or met a backoff's replay, waited for no load.)
        if (read_registry && d->RefreshRegistry(false).ok() && !d->snapshot()->ById(recp->id))
          st = NotFound(recp->ref() + " was removed from the registry" +
                        (failed_meanwhile ? " while this request waited for its load" : ""));
        finish(st, false);
        r.Fail(st);
      };
      // (A failure replayed at once is answered on the receiving thread:
      // the registry read is not.)
      if (!read_registry || !r.HandOff(answer)) answer();
      return;
    }
    Scheduler::Job job;
    std::string device = h->model->device();
    bool loaded = h->model->loaded() || (h->adapter && h->adapter->loaded());
    job.handle = std::move(h->model);
    job.adapter = std::move(h->adapter);
    if (recp->is_adapter() && queue == recp->id) job.queue_ref = recp->ref();  // mode (a): its own queue, named so
    job.inputs = *ordered;
    job.deadline_ns = deadline;
    job.priority = priority;
    job.max_batch = max_batch;
    job.batch_delay_ns = delay;
    // On nng's receiving thread (a hit, answered at once): only a short
    // execution runs here; a longer one goes to the scheduler's workers.
    if (Server::OnReceivingThread()) {
      uint64_t bytes = 0;
      for (const Tensor& t : job.inputs) bytes += t.nbytes;
      job.inline_max_ns = bytes <= kReceivingThreadInputBytes ? kReceivingThreadExecNs : 0;
    }
    job.done = [d, r, recp, ordered, t0, finish, credit, routing, mirror, device,
                loaded](Result<std::vector<Tensor>> out) mutable { Reply(d, r, *recp, *ordered, t0, finish, *credit, routing,
                                                                          mirror, device, loaded, std::move(out)); };
    // From here the scheduler drops it if late (Scheduler::Job::deadline_ns).
    if (Status st = d->scheduler()->Submit(queue, std::move(job)); !st.ok()) {
      finish(st);
      r.Fail(st);
    }
  }, /*counted=*/true, claimed, base_held);
  // A hit has been handed on already; the timer is for a wait (within ten
  // minutes: beyond that its entry would outlive most loads for nothing).
  // It holds the claim weakly: once the acquire's callback is gone, so is
  // the need for it.
  const int64_t left = deadline - d->clock()->MonoNanos();
  if (claim && !claim->taken.load() && left < 600'000'000'000) {
    std::weak_ptr<Claim> weak = claim;
    claim.reset();  // (the callback's `claimed` keeps it while the wait lasts)
    d->timers()->At(std::chrono::steady_clock::now() + std::chrono::nanoseconds(std::max<int64_t>(left, 0)),
                    [weak, d, ref = rec.ref(), id = rec.id, base = rec.is_adapter() ? rec.base_id : rec.id,
                     base_ref = rec.is_adapter() ? rec.base_ref : std::string(), pool = d->PoolFor(rec), t0,
                     deadline] {
                      auto c = weak.lock();
                      if (!c || c->taken.exchange(true)) return;
                      char took[32];  // (0.5 ms said as 0 ms once)
                      std::snprintf(took, sizeof took, "%g ms", static_cast<double>(deadline - t0) / 1e6);
                      const bool no_room = d->pool()->WaitingForRoom(base) || pool->WaitingForRoom(id);
                      const bool drained = no_room && (d->pool()->Draining(base) || pool->Draining(id));
                      Status st(Code::kDeadlineExceeded,
                                "dropped at its deadline (" + std::string(took) + ") while " + ref +
                                    (drained ? " was being evicted for a request that had waited longer for room "
                                               "(it loads again once room frees)"
                                     : no_room ? " waited for room on a device (every model that could make room "
                                                 "was in use: mms pool)"
                                     : !base_ref.empty() && !c->base_held.load()
                                         ? "'s base " + base_ref + " was still loading"
                                         : " was still loading") +
                                    "; retry, or give a longer --deadline-ms");
                      c->finish(st, true);  // it waited for a load: not timed for its experiment, as loads are not
                      c->respond.Fail(st);
                      // A wait for room ends with it (an adapter's request holds its base meanwhile).
                      if (no_room) {
                        d->pool()->DropAnsweredWaiters();
                        if (pool != d->pool()) pool->DropAnsweredWaiters();
                      }
                    });
  }
}

}  // namespace

void AddPoolHandlers(Daemon* d, std::map<uint16_t, Handler>* table) {
  (*table)[proto::kPredict] = [d](proto::Message req, Responder r) { Predict(d, std::move(req), r); };

  (*table)[proto::kPool] = [d](proto::Message, Responder r) {
    nlohmann::json j = d->pool()->Snapshot();
    j["adapters"] = d->adapters()->Snapshot();
    // Versions a pool has not seen yet are on disk too.
    auto snap = d->snapshot();
    for (const auto& [name, versions] : snap->models)
      for (const auto& v : versions) {
        auto& disk = (v.is_adapter() ? j["adapters"] : j)["disk"]["models"];
        if (!d->PoolFor(v)->Health(v.id))  // every field a seen one has (a JSON reader needs no special case)
          disk.push_back({{"ref", v.ref()},     {"tier", "disk"},  {"bytes", v.device_bytes}, {"pinned", false},
                          {"in_flight", 0},     {"loading", false}, {"waiting", 0},            {"healthy", true},
                          {"loads", 0},         {"evictions", 0},  {"hits", 0},               {"misses", 0},
                          {"load_ms", 0.0},     {"last_use_ms_ago", nullptr}});
        // One no budget can hold is refused at every request: unhealthy, as mms health says.
        if (Status fits = d->PoolFor(v)->FitsAtAll(d->ItemFor(v)); !fits.ok())
          for (auto& m : disk)
            if (m.value("ref", "") == v.ref()) {
              m["healthy"] = false;
              m["error"] = fits.message();
            }
      }
    // The scheduler's view per version: queue, executions, batches, drops.
    nlohmann::json sched = nlohmann::json::object();
    nlohmann::json st = d->scheduler()->Stats();
    for (auto it = st.begin(); it != st.end(); ++it)
      if (const VersionRecord* v = snap->ById(std::stoll(it.key()))) {
        sched[v->ref()] = *it;
        sched[v->ref()]["priority"] = d->PriorityOf(*v);  // as now configured (SIGHUP), not as last queued
      }
    j["scheduler"] = sched;
    if (auto pins = d->UnresolvedPins(); !pins.empty()) j["unresolved_pins"] = pins;
    r.Send(std::move(j));
  };

  // The adapter pool's tiers, and per base the adapters registered on it.
  (*table)[proto::kAdapterStats] = [d](proto::Message, Responder r) {
    nlohmann::json j = d->adapters()->Snapshot();
    nlohmann::json bases = nlohmann::json::object();
    auto snap = d->snapshot();
    for (const auto& [name, versions] : snap->models)
      for (const auto& v : versions)
        if (v.is_adapter()) bases[v.base_ref].push_back(v.ref());
    j["bases"] = bases;
    r.Send(std::move(j));
  };

  (*table)[proto::kHealth] = [d](proto::Message req, Responder r) {
    nlohmann::json models = nlohmann::json::array();
    if (req.body.contains("model")) {
      auto v = d->Resolve(req.body["model"].get<std::string>());
      if (!v.ok()) return r.Fail(v.status());
      models.push_back(d->VersionHealth(*v));
    } else {
      auto snap = d->snapshot();
      for (const auto& [name, versions] : snap->models)
        for (const auto& v : versions)
          if (v.stage != Stage::kArchived || d->PoolFor(v)->Health(v.id)) models.push_back(d->VersionHealth(v));
    }
    bool all = true;
    for (const auto& m : models) all = all && m.value("healthy", true);
    nlohmann::json reply{{"healthy", all}, {"daemon", "ok"}, {"models", models}};
    // A pin that names nothing pins nothing: said, though no model is unhealthy for it.
    if (auto pins = d->UnresolvedPins(); !pins.empty()) reply["unresolved_pins"] = pins;
    r.Send(std::move(reply));
  };

  (*table)[proto::kLoad] = [d](proto::Message req, Responder r) {
    auto ref = ModelField(req);
    if (!ref.ok()) return r.Fail(ref.status());
    auto v = d->Resolve(*ref);
    if (!v.ok()) return r.Fail(v.status());
    const int64_t t0 = d->clock()->MonoNanos();
    VersionRecord rec = *v;
    d->AcquireServable(rec, [d, r, rec, t0](Result<Servable> h) mutable {
      if (!h.ok()) return r.Fail(h.status());
      r.Send(nlohmann::json{{"ref", rec.ref()}, {"device", h->model->device()},
                            {"loaded", h->model->loaded() || (h->adapter && h->adapter->loaded())},
                            {"ms", static_cast<double>(d->clock()->MonoNanos() - t0) / 1e6}});
    }, /*counted=*/false);  // an operator's warm-up: no hit, no miss, no last use
  };

  (*table)[proto::kEvict] = [d](proto::Message req, Responder r) {
    auto ref = ModelField(req);
    if (!ref.ok()) return r.Fail(ref.status());
    auto v = d->Resolve(*ref);
    if (!v.ok()) return r.Fail(v.status());
    auto to = d->PoolFor(*v)->Evict(v->id);
    if (!to.ok()) {
      if (to.status().code() == Code::kFailedPrecondition)
        return r.Fail(Status(Code::kFailedPrecondition, v->ref() + " is " + to.status().message()));
      // Pinned: say by what (mms pin, the config, a pinned adapter on it).
      if (std::string why = d->PinReason(v->id); to.status().code() == Code::kInUse && !why.empty() &&
                                                  d->PoolFor(*v)->IsPinned(v->id))
        return r.Fail(Status(Code::kInUse, v->ref() + " is " + why));
      return r.Fail(to.status());
    }
    r.Send(nlohmann::json{{"ref", v->ref()}, {"tier", *to}});
  };

  // The CLI records pins in the registry; these apply them now and wait for
  // the preload, so `mms pin` returns once the model is on a device.
  (*table)[proto::kPin] = [d](proto::Message req, Responder r) {
    if (Status st = d->CheckSameRegistry(req.body); !st.ok()) return r.Fail(st);
    auto ref = ModelField(req);
    if (!ref.ok()) return r.Fail(ref.status());
    if (Status st = d->RefreshRegistry(true); !st.ok()) return r.Fail(st);
    auto v = d->Resolve(*ref);
    if (!v.ok()) return r.Fail(v.status());
    VersionRecord rec = *v;
    d->AcquireServable(rec, [r, rec, d](Result<Servable> h) mutable {
      if (!h.ok()) return r.Fail(h.status());
      r.Send(nlohmann::json{{"ref", rec.ref()}, {"device", h->model->device()}, {"pinned", d->PoolFor(rec)->IsPinned(rec.id)}});
    }, /*counted=*/false);
  };

  (*table)[proto::kUnpin] = [d](proto::Message req, Responder r) {
    if (Status st = d->CheckSameRegistry(req.body); !st.ok()) return r.Fail(st);
    auto ref = ModelField(req);
    if (!ref.ok()) return r.Fail(ref.status());
    if (Status st = d->RefreshRegistry(true); !st.ok()) return r.Fail(st);
    auto v = d->Resolve(*ref);
    if (!v.ok()) return r.Fail(v.status());
    nlohmann::json j{{"ref", v->ref()}, {"pinned", d->PoolFor(*v)->IsPinned(v->id)}};
    // Still pinned: by what (the config mmsd read, which the CLI may not have).
    if (j["pinned"] == true)
      if (std::string why = d->PinReason(v->id); !why.empty()) j["pinned_by"] = why;
    r.Send(std::move(j));
  };
}

}  // namespace mms
