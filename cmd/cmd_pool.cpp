// mms predict, pin, unpin, load, evict, pool, health.
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <iostream>
#include <cerrno>
#include <cstring>

#include "cli.h"
#include "core/paths.h"
#include "core/units.h"
#include "protocol/messages.h"
#include "protocol/tensor_file.h"

namespace mms::cli {
namespace {

struct PredictArgs {
  std::string ref, user, tenant, input, output, adapter;
  double deadline_ms = 0;
  bool has_deadline = false;
};

int CmdPredict(Cli& cli, const PredictArgs& a) {
  if (Status st = ParseRef(a.ref).status(); !st.ok()) return cli.Fail(st);
  // A JSON file's text is a few times the tensors it holds, and the daemon
  // takes a message up to its cap: more than 16x that (a uint8 output as mms
  // writes it, one value a line, is about 13x; or a device such as
  // /dev/zero, which never ends) is not read to the end.
  auto cfg = cli.config();
  if (!cfg.ok()) return cli.Fail(cfg.status());
  auto inputs = ReadTensorFile(a.input, 16 * (*cfg)->daemon.max_message_bytes);
  if (!inputs.ok()) {
    Status st = inputs.status();
    return cli.Fail(Status(st.code() == Code::kNotFound ? Code::kInvalidArgument : st.code(),
                           "--input: " + st.message()));
  }
  proto::Message m;
  m.type = proto::kPredict;
  m.body = {{"model", a.ref}};
  if (!a.user.empty()) m.body["user"] = a.user;
  if (!a.tenant.empty()) m.body["tenant"] = a.tenant;
  if (!a.adapter.empty()) m.body["adapter"] = a.adapter;
  if (a.has_deadline && !(a.deadline_ms > 0))
    return cli.Fail(InvalidArgument("--deadline-ms must be positive (a deadline in the past cannot be met)"));
  // This CLI stops waiting at --timeout: the daemon drops the request then
  // too, rather than queue and run work whose answer nobody will read — a
  // little before (10%, at most 1 s), so that its answer, which says why,
  // arrives before this command gives up (5% and 250 ms were too little on
  // a loaded host: the command said "did not reply" as the answer came).
  const double timeout_ms = cli.g.timeout_s * 1000 - std::min(cli.g.timeout_s * 1000 * 0.1, 1000.0);
  const bool by_timeout = !a.has_deadline || timeout_ms < a.deadline_ms;
  m.body["timeout_ms"] = by_timeout ? timeout_ms : a.deadline_ms;
  if (!a.output.empty()) {
    // Checked before the request runs: a result nobody can store is a request
    // counted (and in an experiment, attributed) for nothing.
    std::string dir = DirName(a.output);
    if (dir.empty()) dir = ".";
    if (IsDirectory(a.output))
      return cli.Fail(InvalidArgument("--output " + a.output + " is a directory; name a file (.json or .safetensors)"));
    struct stat st;
    if (::lstat(a.output.c_str(), &st) == 0 && !S_ISREG(st.st_mode))
      return cli.Fail(InvalidArgument(
          "--output " + a.output +
          (S_ISLNK(st.st_mode) ? " is a symbolic link; name the file itself (the output replaces the file at the "
                                 "path given, atomically, so a link would be replaced, not written through)"
                               : " is not a regular file (it is replaced atomically)") +
          "; leave --output out to write to standard output"));
    if (!IsDirectory(dir))
      return cli.Fail(InvalidArgument("--output " + a.output + ": " + dir +
                                      (FileExists(dir) ? " is not a directory" : " does not exist (create it first)")));
    if (::access(dir.c_str(), W_OK) != 0)
      return cli.Fail(InvalidArgument("--output " + a.output + ": cannot write in " + dir + " (" + std::strerror(errno) + ")"));
  }
  m.tensors = std::move(inputs).value();
  // Refuse locally what the daemon would refuse: frames the protocol cannot
  // carry (too many dims, too long a name), and the size cap (same mms.toml).
  if (Status st = proto::CheckEncodable(m); !st.ok()) return cli.Fail(st.WithContext("--input"));
  size_t size = proto::EncodedSize(m, proto::DumpBody(m.body));
  // "64.0 KiB, over the daemon's 64.0 KiB cap" read as equal: in bytes when rounding hides the difference.
  auto over = [&](uint64_t cap) {
    std::string a = FormatBytes(size), b = FormatBytes(cap);
    if (a == b) {
      a = std::to_string(size) + " bytes";
      b = std::to_string(cap) + " bytes";
    }
    return "the input is " + a + ", over the daemon's " + b;
  };
  if (size > (*cfg)->daemon.max_message_bytes)
    return cli.Fail(InvalidArgument(over((*cfg)->daemon.max_message_bytes) +
                                    " cap ([daemon] max_message_bytes); send smaller batches"));
  // The daemon's cap may be smaller than this config's (another mms.toml),
  // and a request over twice its cap costs the connection, into which nng's
  // REQ socket dials again and resends until --timeout. So a request big
  // enough for that (over twice the smallest cap allowed) asks first.
  if (size > 2 * kMinMaxMessageBytes) {
    auto ping = cli.Call(proto::kPing, nlohmann::json::object());
    const uint64_t cap = ping.ok() ? ping->value("max_message_bytes", uint64_t{0}) : 0;
    if (cap > 0 && size > cap)
      return cli.Fail(InvalidArgument(over(cap) + " cap ([daemon] max_message_bytes in mmsd's config); send smaller batches"));
  }
  auto reply = cli.Call(std::move(m));
  if (!reply.ok()) {
    Status st = reply.status();
    if (st.code() == Code::kDeadlineExceeded && by_timeout) {  // the daemon's advice names --deadline-ms
      std::string msg = st.message();
      for (size_t at; (at = msg.find("--deadline-ms")) != std::string::npos;) msg.replace(at, 13, "--timeout");
      st = Status(st.code(), msg + " (the deadline was --timeout's, " +
                                 FormatDurationNanos(static_cast<int64_t>(cli.g.timeout_s * 1e9)) + ")");
    }
    // Unknown to a daemon that serves another registry than this CLI's
    // (another --data-dir): said, as the registry commands say it.
    if (st.code() == Code::kNotFound)
      if (auto status = cli.Call(proto::kStatus, nlohmann::json::object()); status.ok()) {
        const std::string theirs = status->value("registry", "");
        auto ours = cli.registry_path();
        auto a = CanonicalPath(theirs);
        auto b = ours.ok() ? CanonicalPath(*ours) : Result<std::string>(ours.status());
        if (!theirs.empty() && ours.ok() && (a.ok() && b.ok() ? *a != *b : theirs != *ours))
          st = Status(st.code(), st.message() + " (note: the mmsd at " + cli.socket_path().value() +
                                     " serves the registry " + theirs + ", not " + *ours +
                                     ": point --socket at the daemon of this data dir, or --data-dir at " +
                                     DirName(theirs) + ")");
      }
    return cli.Fail(st);
  }
  const nlohmann::json& b = reply->body;
  // The prediction ran (counted, and in an experiment attributed): when its
  // --output cannot be written (a full disk, a file size limit), its outputs
  // go to standard output instead and its request id is still said — lost,
  // feedback could never name it — and the command exits 1.
  Status unwritten;
  if (!a.output.empty()) unwritten = WriteTensorFile(a.output, reply->tensors);
  const bool to_stdout = a.output.empty() || !unwritten.ok();
  nlohmann::json outputs = TensorsToJson(reply->tensors);
  if (cli.g.json) {
    nlohmann::json j = b;
    if (!unwritten.ok())
      j["error"] = {{"code", CodeName(unwritten.code())},
                    {"exit_code", 1},
                    {"message", unwritten.message() + "; the prediction ran: its outputs are here instead"}};
    if (to_stdout) {
      j["outputs"] = outputs;
    } else {  // "outputs" is always the tensors: here they are in the file
      j["output_names"] = j["outputs"];
      j.erase("outputs");
      j["output_file"] = a.output;
    }
    cli.Emit(j, [] {});
  } else {
    if (to_stdout) std::cout << outputs.dump(2) << "\n";
    char line[512];
    const std::string ran = b.value("ref", "?") + (b.contains("base") ? " (on " + b.value("base", "?") + ")" : "");
    // The arm it was routed to, as --json has it: feedback names the request, and a reader the arm.
    const std::string arm = b.contains("experiment") && b["experiment"].is_string()
                                ? ", experiment " + b.value("experiment", "?") + " " + b.value("variant", "?")
                                : "";
    std::snprintf(line, sizeof line, "%s on %s in %.2f ms%s%s (request %s)", ran.c_str(), b.value("device", "?").c_str(),
                  b.value("latency_ms", 0.0), b.value("loaded", false) ? ", loaded" : "", arm.c_str(),
                  b.value("request_id", "?").c_str());
    cli.Note(line);
    if (!unwritten.ok())
      std::cerr << "mms: " << unwritten.message() << "; the prediction ran: its outputs went to standard output\n";
  }
  return unwritten.ok() ? 0 : 1;
}

// What else keeps `ref`'s version pinned: [pool] pinned in the config, or a
// pinned adapter on it (its base is kept). "" when nothing does.
std::string PinnedOtherwise(Cli& cli, Registry& reg, const Ref& ref) {
  auto v = reg.Resolve(ref);
  if (!v.ok()) return "";
  auto same = [&](const std::string& text) {
    auto r = ParseRef(text);
    auto p = r.ok() ? reg.Resolve(*r) : Result<VersionRecord>(r.status());
    return p.ok() ? std::optional<VersionRecord>(*p) : std::nullopt;
  };
  std::vector<std::string> config_pins;
  if (auto c = cli.config(); c.ok()) config_pins = (*c)->pool.pinned;
  for (const auto& p : config_pins)
    if (auto p_v = same(p); p_v && p_v->id == v->id)
      return "by [pool] pinned (" + p + ") in the config: remove it there, then send mmsd SIGHUP";
  std::vector<std::pair<std::string, std::string>> pins;  // pin, how to release it
  for (const auto& p : config_pins) pins.push_back({p, "remove " + p + " from [pool] pinned in the config, then send mmsd SIGHUP"});
  if (auto all = reg.Pins(); all.ok())
    for (const auto& p : *all) {
      pins.push_back({p.ref(), "mms unpin " + p.ref()});
      // Another ref that names the same version now: a bare name follows its
      // production (or latest) version, an alias its target.
      if (auto p_v = same(p.ref()); p_v && p_v->id == v->id && p.ref() != ref.ToString())
        return "by mms pin " + p.ref() + ", which now names " + v->ref() + ": mms unpin " + p.ref();
    }
  for (const auto& [p, release] : pins)
    if (auto p_v = same(p); p_v && p_v->is_adapter() && p_v->base_id == v->id)
      return "kept as the base of pinned adapter " + p_v->ref() + " (" + release + ")";
  return "";
}

int CmdPin(Cli& cli, const std::string& ref_text, bool pin) {
  auto ref = ParseRef(ref_text);
  if (!ref.ok()) return cli.Fail(ref.status());
  auto reg = cli.OpenRegistry();
  if (!reg.ok()) return cli.Fail(reg.status());
  bool added = false;
  if (pin) {
    auto a = (*reg)->AddPin(*ref);
    if (!a.ok()) return cli.Fail(a.status());
    added = *a;
  } else if (Status st = (*reg)->RemovePin(*ref); !st.ok()) {
    if (st.code() == Code::kNotFound) {
      if (std::string other = PinnedOtherwise(cli, **reg, *ref); !other.empty())
        return cli.Fail(NotFound(ref->ToString() + " is not pinned by mms pin, but " + other));
      // The running daemon may pin it by a config this CLI did not read.
      if (auto c = cli.Connect(); c.ok()) {
        auto reg_path = cli.registry_path();
        auto r = (*c)->CallJson(proto::kUnpin, {{"model", ref->ToString()}, {"registry", reg_path.ok() ? *reg_path : ""}});
        if (r.ok() && r->value("pinned", false) && r->contains("pinned_by"))
          return cli.Fail(NotFound(ref->ToString() + " is not pinned by mms pin, but mmsd has it " +
                                   (*r)["pinned_by"].get<std::string>()));
      }
    }
    return cli.Fail(st);
  }
  // The daemon there but not answering: what is recorded, what is not done.
  auto Unanswered = [&](const Status& st) {
    return Status(Code::kUnavailable, st.message() + "; the " + (pin ? "pin" : "unpin") + " of " + ref->ToString() +
                                          " is recorded: the mmsd serving this registry applies it at its next "
                                          "registry poll, or when it starts" +
                                          (pin ? " (nothing was loaded now)" : ""));
  };
  // Done in the registry: a version removed meanwhile (a concurrent mms model
  // rm) changes what is printed, not the outcome.
  auto v = (*reg)->Resolve(*ref);
  const std::string version = v.ok() ? v->ref() : "";
  // "ref" is the pin as named (a bare name follows its production version),
  // "resolved" what it names now, "version" that version's number (as
  // predict, load and evict say it).
  nlohmann::json j{{"ref", ref->ToString()},
                   {"resolved", v.ok() ? nlohmann::json(version) : nlohmann::json()},
                   {"version", v.ok() ? nlohmann::json(v->version) : nlohmann::json()},
                   {"pinned", pin}};
  // Apply it in a running daemon now (and for a pin, wait for the preload).
  auto c = cli.Connect();
  if (c.ok()) {
    auto reg_path = cli.registry_path();
    auto r = (*c)->CallJson(pin ? proto::kPin : proto::kUnpin,
                            {{"model", ref->ToString()}, {"registry", reg_path.ok() ? *reg_path : ""}});
    if (!r.ok() && !pin && r.status().code() == Code::kNotFound) r = nlohmann::json::object();  // nothing left to unpin
    if (!r.ok()) {
      // The daemon refused the preload (no room beside the other pins, a
      // failed warm-up, a damaged artifact): a new pin is taken back rather
      // than left to fail at every start. A lost reply or a timeout says
      // nothing about the pin, which stays (the daemon may still load it):
      // exit 3, as for a daemon that takes no connection.
      Code code = r.status().code();
      bool refused = code != Code::kUnavailable && code != Code::kDeadlineExceeded && code != Code::kCancelled;
      if (!refused) return cli.Fail(Unanswered(r.status()));
      if (!pin || !added) return cli.Fail(r.status());
      Status undo = (*reg)->RemovePin(*ref);
      if (undo.ok()) (void)(*c)->CallJson(proto::kUnpin, {{"model", ref->ToString()}});
      return cli.Fail(Status(code, r.status().message() +
                                       (undo.ok() ? "; " + ref->ToString() + " was not pinned"
                                                  : "; the pin of " + ref->ToString() +
                                                        " stays recorded (removing it failed: " + undo.message() +
                                                        "); mms unpin " + ref->ToString() + " removes it")));
    }
    if (r->contains("device")) j["device"] = (*r)["device"];
  } else if (!DaemonNotRunning(c.status())) {
    // There but not answering (stopped, hung): the pin is recorded, nothing
    // is on a device, and a script going on to send traffic must know (exit
    // 3, as mms load), not read "pinned" and exit 0.
    return cli.Fail(Unanswered(c.status()));
  }
  if (pin) j["on_device"] = j.contains("device");
  cli.Emit(j, [&] {
    if (!pin) std::cout << "unpinned " << ref->ToString() << "\n";
    else if (version.empty()) std::cout << "pinned " << ref->ToString() << " (no version of it resolves now)\n";
    else if (j.contains("device")) std::cout << "pinned " << version << " (on " << j["device"].get<std::string>() << ")\n";
    else std::cout << "pinned " << version << " (mmsd is not running; it preloads pins when it starts)\n";
  });
  return 0;
}

int CmdLoad(Cli& cli, const std::string& ref) {
  if (Status st = ParseRef(ref).status(); !st.ok()) return cli.Fail(st);
  auto r = cli.Call(proto::kLoad, {{"model", ref}});
  if (!r.ok()) return cli.Fail(r.status());
  cli.Emit(*r, [&] {
    std::cout << (*r)["ref"].get<std::string>() << " on " << (*r)["device"].get<std::string>();
    if ((*r)["loaded"].get<bool>()) std::cout << " (loaded in " << FormatDurationNanos(static_cast<int64_t>((*r)["ms"].get<double>() * 1e6)) << ")";
    else std::cout << " (already there)";
    std::cout << "\n";
  });
  return 0;
}

int CmdEvict(Cli& cli, const std::string& ref) {
  if (Status st = ParseRef(ref).status(); !st.ok()) return cli.Fail(st);
  auto r = cli.Call(proto::kEvict, {{"model", ref}});
  if (!r.ok()) return cli.Fail(r.status());
  cli.Emit(*r, [&] { std::cout << (*r)["ref"].get<std::string>() << " → " << (*r)["tier"].get<std::string>() << "\n"; });
  return 0;
}

std::string Ago(const nlohmann::json& m) {
  if (!m.contains("last_use_ms_ago") || m["last_use_ms_ago"].is_null()) return "-";
  return FormatDurationNanos(m["last_use_ms_ago"].get<int64_t>() * 1000000) + " ago";
}

void ModelRows(const nlohmann::json& models, const std::string& where, std::vector<std::vector<std::string>>* rows) {
  for (const auto& m : models) {
    std::string health = m.value("healthy", true) ? "ok" : "UNHEALTHY";
    const std::string waiting = m.value("waiting", 0) ? " (" + std::to_string(m.value("waiting", 0)) + " waiting)" : "";
    if (m.value("loading", false)) health = "loading" + waiting;
    else if (m.contains("replaced")) health = "replaced, reloads when idle" + waiting;  // a repack's old copy
    else if (m.value("draining", false)) health = "draining, evicted when idle";  // for a request that waited for room
    rows->push_back({where, m.value("ref", "?"), FormatBytes(m.value("bytes", 0ull)), m.value("pinned", false) ? "yes" : "-",
                     std::to_string(m.value("in_flight", 0)), health, Ago(m), std::to_string(m.value("loads", 0)),
                     std::to_string(m.value("evictions", 0)), std::to_string(m.value("hits", 0)),
                     std::to_string(m.value("misses", 0))});
  }
}

// "adaptive (half-life 175)": the policy and, where it has one, the half-life it ranks by now.
std::string PolicyText(const nlohmann::json& tier) {
  std::string s = tier.value("policy", "?");
  const double hl = tier.value("policy_half_life", 0.0);
  if (hl > 0) s += " (half-life " + std::to_string(static_cast<int64_t>(std::llround(hl))) + ")";
  return s;
}

// One pool's tiers and models (the models' pool, or the LoRA adapters').
void PrintPool(const nlohmann::json& j) {
  std::vector<std::vector<std::string>> tiers{{"TIER", "USED", "BUDGET", "MODELS", "POLICY"}};
  for (const auto& d : j["devices"])
    tiers.push_back({d["name"].get<std::string>() + " (" + d["kind"].get<std::string>() + ")", FormatBytes(d["used"]),
                     FormatBytes(d["budget"]), std::to_string(d["models"].size()), PolicyText(d)});
  // The host tier's bytes include the host copies of the models on devices: counted too.
  size_t on_devices = 0;
  for (const auto& d : j["devices"]) on_devices += d["models"].size();
  tiers.push_back({"host", FormatBytes(j["host"]["used"]), FormatBytes(j["host"]["budget"]),
                   std::to_string(j["host"]["models"].size()) +
                       (on_devices ? " (+" + std::to_string(on_devices) + " on devices)" : ""),
                   PolicyText(j["host"])});
  tiers.push_back({"disk", "-", "-", std::to_string(j["disk"]["models"].size()), "-"});
  std::cout << FormatTable(tiers) << "\n";
  std::vector<std::vector<std::string>> rows{
      {"WHERE", "MODEL", "BYTES", "PINNED", "IN-FLIGHT", "HEALTH", "LAST USE", "LOADS", "EVICTIONS", "HITS", "MISSES"}};
  for (const auto& d : j["devices"]) ModelRows(d["models"], d["name"], &rows);
  ModelRows(j["host"]["models"], "host", &rows);
  ModelRows(j["disk"]["models"], "disk", &rows);
  std::cout << FormatTable(rows);
  // Standing holds (a shadow run's candidate): not requests, but they keep
  // the model where it is.
  for (const auto& tier : j["devices"])
    for (const auto& m : tier["models"])
      for (const auto& holder : m.value("held_by", nlohmann::json::array()))
        std::cout << m.value("ref", "?") << " is held by " << holder.get<std::string>() << "\n";
  // Pins that are not on a device (tried again at every registry poll).
  for (const char* tier : {"host", "disk"})
    for (const auto& m : j[tier]["models"])
      if (m.contains("pin_error"))
        std::cout << m.value("ref", "?") << " is pinned but not on a device: " << m["pin_error"].get<std::string>()
                  << "\n";
  const auto& t = j["totals"];
  std::printf("\n%llu hits, %llu misses (hit rate %.1f%%), %llu loads, %llu evictions, %llu failed loads\n",
              t.value("hits", 0ull), t.value("misses", 0ull), t.value("hit_rate", 0.0) * 100, t.value("loads", 0ull),
              t.value("evictions", 0ull), t.value("failures", 0ull));
  if (t.value("room_waits", 0ull) > 0)
    std::printf("%llu request%s waited for room held by requests in flight; %llu refused after [pool] room_wait; "
                "%llu waiting now\n",
                t.value("room_waits", 0ull), t.value("room_waits", 0ull) == 1 ? "" : "s",
                t.value("room_wait_timeouts", 0ull), t.value("waiting_for_room", 0ull));
  if (t.value("room_drains", 0ull) > 0)
    std::printf("%llu model%s in flight drained for requests still waiting halfway through [pool] room_wait\n",
                t.value("room_drains", 0ull), t.value("room_drains", 0ull) == 1 ? " was" : "s were");
}

// Pins naming no version pin nothing: one warning line each (standard error).
void UnresolvedPinNotes(const nlohmann::json& j) {
  if (!j.contains("unresolved_pins")) return;
  for (const auto& p : j["unresolved_pins"])
    std::cerr << "mms: warning: the pin " << p.value("ref", "?") << " (" << p.value("source", "?")
              << ") pins nothing: " << p.value("error", "?") << "\n";
}

int CmdPool(Cli& cli) {
  auto r = cli.Call(proto::kPool, nlohmann::json::object());
  if (!r.ok()) return cli.Fail(r.status());
  const auto& j = *r;
  cli.Emit(j, [&] {
    PrintPool(j);
    // The adapters' pool, once it holds any ([lora] budgets).
    if (j.contains("adapters")) {
      const auto& a = j["adapters"];
      size_t n = a["host"]["models"].size() + a["disk"]["models"].size();
      for (const auto& d : a["devices"]) n += d["models"].size();
      if (n > 0) {
        std::cout << "\nLoRA adapters:\n";
        PrintPool(a);
      }
    }
    // The scheduler per version that has had requests through it.
    std::vector<std::vector<std::string>> sched{
        {"VERSION", "PRIORITY", "QUEUED", "EXECUTED", "BATCHES", "EXEC MS", "DEADLINE DROPS", "OVERLOADED"}};
    const nlohmann::json per_version = j.value("scheduler", nlohmann::json::object());  // (items() of a temporary dangles)
    for (const auto& [ref, q] : per_version.items())
      if (q.value("executed", 0) + q.value("queued", 0) + q.value("deadline_drops", 0) + q.value("overloaded", 0) > 0) {
        char ms[32];
        std::snprintf(ms, sizeof ms, "%.3f", q.value("exec_ms", 0.0));
        const int cls = q.value("priority", 1);
        sched.push_back({ref, cls == 0 ? "high" : cls == 2 ? "low" : "normal", std::to_string(q.value("queued", 0)),
                         std::to_string(q.value("executed", 0)), std::to_string(q.value("batches", 0)), ms,
                         std::to_string(q.value("deadline_drops", 0)), std::to_string(q.value("overloaded", 0))});
      }
    if (sched.size() > 1) std::cout << "\nscheduler:\n" << FormatTable(sched);
    UnresolvedPinNotes(j);
  });
  return 0;
}

int CmdHealth(Cli& cli, const std::string& ref) {
  nlohmann::json body = nlohmann::json::object();
  if (!ref.empty()) {
    if (Status st = ParseRef(ref).status(); !st.ok()) return cli.Fail(st);
    body["model"] = ref;
  }
  auto r = cli.Call(proto::kHealth, body);
  if (!r.ok()) return cli.Fail(r.status());
  const auto& j = *r;
  cli.Emit(j, [&] {
    std::cout << "mmsd: ok\n";
    std::vector<std::vector<std::string>> rows{{"MODEL", "STAGE", "TIER", "HEALTH", "DETAIL"}};
    for (const auto& m : j["models"]) {
      std::string detail;
      if (!m.value("healthy", true)) {
        const int64_t retry_ms = m.value("retry_in_ms", 0ll);
        detail = m.value("error", "") + (!m.value("fits", true) ? ""  // "it can never be loaded": no retry to announce
                                         : retry_ms > 0 ? " (retry in " + FormatDurationNanos(retry_ms * 1000000) + ")"
                                                        : " (retried at the next request)");
      }
      else if (m.contains("pin_error"))
        detail = "pinned but not on a device: " + m["pin_error"].get<std::string>();
      rows.push_back({m["ref"], m.value("stage", "-"), m.value("tier", "disk"),
                      m.value("healthy", true) ? "healthy" : "UNHEALTHY", detail});
    }
    std::cout << FormatTable(rows);
    UnresolvedPinNotes(j);
  });
  return j.value("healthy", true) ? 0 : 1;
}

}  // namespace

void AddPoolCommands(CLI::App& app, Cli& cli) {
  auto* predict = app.add_subcommand("predict", "Run a model on named input tensors (JSON or safetensors file)");
  auto a = std::make_shared<PredictArgs>();
  predict->add_option("REF", a->ref, "NAME, NAME:VERSION or NAME@ALIAS")->required();
  predict->add_option("--input,-i", a->input, "input tensors: .json or .safetensors")->required();
  // Given empty (an unset shell variable), they would silently mean "none":
  // the plain base, a request without a user (sticky experiments leave it
  // out), the outputs on standard output.
  const auto not_empty = [](const char* omit) {
    return CLI::Validator(
        [omit](std::string& v) { return v.empty() ? std::string("is empty; ") + omit : std::string(); }, "NONEMPTY");
  };
  predict->add_option("--output,-o", a->output, "write outputs here (.json or .safetensors) instead of stdout")
      ->check(not_empty("omit --output to write the outputs to standard output"));
  predict->add_option("--user", a->user, "user id (routes A/B experiments and canaries)")
      ->check(not_empty("omit --user for a request without a user"));
  predict->add_option("--tenant", a->tenant, "tenant (rate limits)")
      ->check(CLI::Validator(
          [](std::string& t) {
            Status st = ValidateTenant(t);
            return st.ok() ? std::string() : st.message();
          },
          "TENANT"));
  predict->add_option("--adapter", a->adapter, "run with this LoRA adapter (NAME or NAME:VERSION) of the base REF")
      ->check(not_empty("omit --adapter to run the base alone"));
  auto* deadline = predict->add_option("--deadline-ms", a->deadline_ms,
                                       "drop the request (exit 5) rather than run it past this many ms")
                       ->check(DecimalNumber());
  predict->callback([&cli, a, deadline] {
    a->has_deadline = deadline->count() > 0;
    cli.exit_code = CmdPredict(cli, *a);
  });

  auto* pin = app.add_subcommand("pin", "Keep a version on a device, never evicted (persisted; preloaded at start)");
  auto pref = std::make_shared<std::string>();
  pin->add_option("REF", *pref, "NAME (follows its production version), NAME:VERSION or NAME@ALIAS")->required();
  pin->callback([&cli, pref] { cli.exit_code = CmdPin(cli, *pref, true); });

  auto* unpin = app.add_subcommand("unpin", "Release a pin");
  auto uref = std::make_shared<std::string>();
  unpin->add_option("REF", *uref, "as given to mms pin")->required();
  unpin->callback([&cli, uref] { cli.exit_code = CmdPin(cli, *uref, false); });

  auto* load = app.add_subcommand("load", "Warm a version up onto a device now");
  auto lref = std::make_shared<std::string>();
  load->add_option("REF", *lref)->required();
  load->callback([&cli, lref] { cli.exit_code = CmdLoad(cli, *lref); });

  auto* evict = app.add_subcommand("evict", "Demote a version one tier (device → host → disk)");
  auto eref = std::make_shared<std::string>();
  evict->add_option("REF", *eref)->required();
  evict->callback([&cli, eref] { cli.exit_code = CmdEvict(cli, *eref); });

  auto* pool = app.add_subcommand("pool", "Devices and tiers: models, bytes used / budget, pins, hits, loads, evictions");
  pool->callback([&cli] { cli.exit_code = CmdPool(cli); });

  auto* health = app.add_subcommand("health", "Daemon and per-version health (exit 1 when any is unhealthy)");
  auto href = std::make_shared<std::string>();
  health->add_option("REF", *href, "one version (default: all)");
  health->callback([&cli, href] { cli.exit_code = CmdHealth(cli, *href); });
}

}  // namespace mms::cli
