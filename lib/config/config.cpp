#include "config/config.h"

#include <cstdio>
#include <cstring>
#include <string_view>
#include <algorithm>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <sstream>
#include <map>

#include <toml++/toml.h>

#include "core/log.h"
#include "core/paths.h"
#include "core/units.h"
#include "registry/names.h"

namespace mms {
namespace {

using Apply = std::function<Status(Config&, const toml::node&)>;
using Render = std::function<std::string(const Config&)>;

struct Spec {
  ConfigKey key;
  Apply apply;
  Render render;  // the current value as TOML
};

// A TOML basic string, escaped by hand: toml++'s own formatter chose a
// multi-line literal for text with newlines, which cannot hold ''' (the
// rendered config then did not parse; fuzzing found it).
std::string Quote(const std::string& s) {
  // A literal string when it can be one (ASCII without ', as toml++ wrote
  // them), else a basic one: non-ASCII text is read back only from those.
  if (std::none_of(s.begin(), s.end(), [](unsigned char c) { return c == '\'' || c < 0x20 || c >= 0x7f; }))
    return "'" + s + "'";
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7f) {
      char u[8];
      std::snprintf(u, sizeof u, "\\u%04x", c);
      out += u;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

// Accessors take Config&; rendering only reads through them.
template <class Get>
auto& Field(Get get, const Config& c) {
  return get(const_cast<Config&>(c));
}

Status TypeError(const std::string& want, const toml::node& n) {
  std::ostringstream os;
  os << n.type();
  const std::string type = os.str();
  const bool vowel = !type.empty() && std::string("aeiou").find(type[0]) != std::string::npos;
  return InvalidArgument("expected " + want + ", got " + (vowel ? "an " : "a ") + type);
}

template <class Get>
Spec String(std::string table, std::string key, std::string def, std::string doc, Get get,
            std::vector<std::string> allowed = {}) {
  std::string range = "any string";
  if (!allowed.empty()) {
    range.clear();
    for (const auto& a : allowed) range += (range.empty() ? "" : " | ") + ("\"" + a + "\"");
  }
  Apply apply = [get, allowed, range](Config& c, const toml::node& n) -> Status {
    auto v = n.value<std::string>();
    if (!n.is_string() || !v) return TypeError("a string", n);
    if (!allowed.empty() && std::find(allowed.begin(), allowed.end(), *v) == allowed.end())
      return InvalidArgument("\"" + *v + "\" is not allowed; use " + range);
    get(c) = *v;
    return Status::Ok();
  };
  Render render = [get](const Config& c) { return Quote(Field(get, c)); };
  return {{table, key, "string", "\"" + def + "\"", range, doc}, apply, render};
}

template <class Get>
Spec Int(std::string table, std::string key, int64_t def, int64_t lo, int64_t hi, std::string doc, Get get) {
  std::string range = std::to_string(lo) + " to " + std::to_string(hi);
  Apply apply = [get, lo, hi, range](Config& c, const toml::node& n) -> Status {
    auto v = n.value<int64_t>();
    if (!n.is_integer() || !v) return TypeError("an integer", n);
    if (*v < lo || *v > hi) return InvalidArgument(std::to_string(*v) + " is out of range; allowed " + range);
    get(c) = static_cast<std::remove_reference_t<decltype(get(c))>>(*v);
    return Status::Ok();
  };
  Render render = [get](const Config& c) { return std::to_string(Field(get, c)); };
  return {{table, key, "integer", std::to_string(def), range, doc}, apply, render};
}

template <class Get>
Spec Bytes(std::string table, std::string key, std::string def, uint64_t lo, uint64_t hi, std::string doc, Get get) {
  std::string range = ExactBytes(lo) + " to " + ExactBytes(hi);
  Apply apply = [get, lo, hi, range](Config& c, const toml::node& n) -> Status {
    uint64_t b;
    if (n.is_integer()) {
      int64_t v = *n.value<int64_t>();
      if (v < 0) return InvalidArgument("a size must not be negative");
      b = static_cast<uint64_t>(v);
    } else if (n.is_string()) {
      auto r = ParseBytes(*n.value<std::string>());
      if (!r.ok()) return r.status();
      b = *r;
    } else {
      return TypeError("a size (\"8GiB\" or an integer of bytes)", n);
    }
    if (b < lo || b > hi) return InvalidArgument(ExactBytes(b) + " is out of range; allowed " + range);
    get(c) = b;
    return Status::Ok();
  };
  Render render = [get](const Config& c) { return Quote(ExactBytes(Field(get, c))); };
  return {{table, key, "size", "\"" + def + "\"", range, doc}, apply, render};
}

template <class Get>
Spec Duration(std::string table, std::string key, std::string def, int64_t lo, int64_t hi, std::string doc, Get get) {
  std::string range = ExactDuration(lo) + " to " + ExactDuration(hi);
  Apply apply = [get, lo, hi, range](Config& c, const toml::node& n) -> Status {
    if (!n.is_string()) return TypeError("a duration string such as \"250ms\" or \"30m\"", n);
    auto r = ParseDurationNanos(*n.value<std::string>());
    if (!r.ok()) return r.status();
    if (*r < lo || *r > hi) return InvalidArgument(ExactDuration(*r) + " is out of range; allowed " + range);
    get(c) = *r;
    return Status::Ok();
  };
  Render render = [get](const Config& c) { return Quote(ExactDuration(Field(get, c))); };
  return {{table, key, "duration", "\"" + def + "\"", range, doc}, apply, render};
}

template <class Get>
Spec StringList(std::string table, std::string key, std::string doc, Get get) {
  Apply apply = [get](Config& c, const toml::node& n) -> Status {
    const toml::array* a = n.as_array();
    if (!a) return TypeError("an array of strings", n);
    std::vector<std::string> out;
    for (const auto& e : *a) {
      auto v = e.value<std::string>();
      if (!e.is_string() || !v) return TypeError("an array of strings", e);
      out.push_back(*v);
    }
    get(c) = std::move(out);
    return Status::Ok();
  };
  Render render = [get](const Config& c) {
    std::string out = "[";
    for (const auto& v : Field(get, c)) out += (out.size() > 1 ? ", " : "") + Quote(v);
    return out + "]";
  };
  return {{table, key, "list of strings", "[]", "any strings", doc}, apply, render};
}

template <class Get>
Spec Bool(std::string table, std::string key, bool def, std::string doc, Get get) {
  Apply apply = [get](Config& c, const toml::node& n) -> Status {
    if (!n.is_boolean()) return TypeError("true or false", n);
    get(c) = *n.value<bool>();
    return Status::Ok();
  };
  Render render = [get](const Config& c) { return std::string(Field(get, c) ? "true" : "false"); };
  return {{table, key, "boolean", def ? "true" : "false", "true | false", doc}, apply, render};
}

template <class Get>
Spec Double(std::string table, std::string key, double def, double lo, double hi, std::string doc, Get get) {
  auto fmt = [](double v) {  // the shortest text that reads back as v: a refused value is never shown rounded
    char buf[64];
    auto r = std::abs(v) < 1e15 && v == std::floor(v) ? std::to_chars(buf, buf + sizeof buf, static_cast<int64_t>(v))
                                                      : std::to_chars(buf, buf + sizeof buf, v);
    return std::string(buf, r.ptr);
  };
  std::string range = fmt(lo) + " to " + fmt(hi);
  Apply apply = [get, lo, hi, range, fmt](Config& c, const toml::node& n) -> Status {
    if (!n.is_number()) return TypeError("a number", n);
    double v = *n.value<double>();
    if (!(v >= lo && v <= hi)) return InvalidArgument(fmt(v) + " is out of range; allowed " + range);
    get(c) = v;
    return Status::Ok();
  };
  Render render = [get, fmt](const Config& c) {
    std::string s = fmt(Field(get, c));
    return s.find_first_of(".e") == std::string::npos ? s + ".0" : s;
  };
  return {{table, key, "number", fmt(def), range, doc}, apply, render};
}

// A rate limit in requests/s, or 0 for none.
template <class Get>
Spec QpsOrNone(std::string table, std::string key, std::string doc, Get get) {
  Spec s = Double(table, key, 0, 0, kMaxQps, doc, get);
  s.key.range = "0 (none), or 1e-6 to 1e9";
  s.apply = [get, range = s.key.range](Config& c, const toml::node& n) -> Status {
    if (!n.is_number()) return TypeError("a number", n);
    const double v = *n.value<double>();
    if (!(v == 0 || (v >= kMinQps && v <= kMaxQps))) {
      char buf[32];
      return InvalidArgument(std::string(buf, std::to_chars(buf, buf + sizeof buf, v).ptr) + " is out of range; allowed " +
                             range + " (1e-6 is one request in 11.6 days)");
    }
    get(c) = v;
    return Status::Ok();
  };
  return s;
}

// A size, or "auto" (stored as 0).
template <class Get>
Spec BytesOrAuto(std::string table, std::string key, uint64_t lo, uint64_t hi, std::string doc, Get get) {
  Spec s = Bytes(table, key, "auto", lo, hi, doc, get);
  Apply sized = s.apply;
  s.apply = [sized, get](Config& c, const toml::node& n) -> Status {
    if (n.is_string() && *n.value<std::string>() == "auto") {
      get(c) = 0;
      return Status::Ok();
    }
    return sized(c, n);
  };
  Render render = s.render;
  s.render = [render, get](const Config& c) { return Field(get, c) == 0 ? std::string("\"auto\"") : render(c); };
  s.key.range = "\"auto\" or " + s.key.range;
  return s;
}

constexpr int64_t kMs = 1'000'000;
constexpr int64_t kSec = 1'000'000'000;

// A list whose every entry must pass `check` (a reference, a model name):
// one that can never name a version is an error here, not a warning at run
// time.
template <class Get, class Check>
Spec CheckedList(std::string table, std::string key, std::string doc, Get get, Check check) {
  Spec s = StringList(std::move(table), std::move(key), std::move(doc), get);
  Apply list = s.apply;
  s.apply = [list, get, check](Config& c, const toml::node& n) -> Status {
    MMS_RETURN_IF_ERROR(list(c, n));
    for (const std::string& v : get(c))
      if (Status st = check(v); !st.ok()) return InvalidArgument("\"" + v + "\": " + st.message());
    return Status::Ok();
  };
  return s;
}
Status CheckRef(const std::string& v) { return ParseRef(v).status(); }
Status CheckModelName(const std::string& v) { return ValidateName(v); }

// [pool] devices: "auto" or a list of device names.
Spec DevicesSpec() {
  auto get = [](Config& c) -> std::vector<std::string>& { return c.pool.devices; };
  Spec s = StringList("pool", "devices", "Where weights are served from: auto (every GPU, else cpu) or a list.", get);
  Apply list = s.apply;
  s.apply = [list, get](Config& c, const toml::node& n) -> Status {
    if (n.is_string()) {
      if (*n.value<std::string>() != "auto") return InvalidArgument("use \"auto\" or a list such as [\"cuda:0\", \"cuda:1\"]");
      get(c) = {"auto"};
      return Status::Ok();
    }
    MMS_RETURN_IF_ERROR(list(c, n));
    if (get(c).empty()) return InvalidArgument("at least one device is needed (or \"auto\")");
    const auto& list_v = get(c);
    if (list_v.size() == 1 && list_v[0] == "auto") return Status::Ok();
    for (size_t i = 0; i < list_v.size(); ++i) {
      const std::string& d = list_v[i];
      if (d == "auto") return InvalidArgument("\"auto\" cannot be combined with other devices; use devices = \"auto\" alone");
      if (!IsDeviceName(d)) return InvalidArgument("unknown device '" + d + "'; use cpu, cpu:N or cuda:N (N a device number, e.g. cuda:0)");
      // Twice, it was two arenas (two budgets) on one device.
      if (std::find(list_v.begin(), list_v.begin() + static_cast<std::ptrdiff_t>(i), d) != list_v.begin() + static_cast<std::ptrdiff_t>(i))
        return InvalidArgument("device '" + d + "' is listed twice; list each device once");
    }
    return Status::Ok();
  };
  Render render = s.render;
  s.render = [render, get](const Config& c) {
    const auto& v = Field(get, c);
    return v.size() == 1 && v[0] == "auto" ? std::string("\"auto\"") : render(c);
  };
  s.key.type = "\"auto\" or list of strings";
  s.key.default_text = "\"auto\"";
  s.key.range = "\"auto\", or names cpu, cpu:N, cuda:N";
  return s;
}

// [registry] allowed_roots: absolute directories. "" allowed any path, and a
// relative entry was resolved against each command's working directory.
Spec AllowedRootsSpec() {
  auto get = [](Config& c) -> std::vector<std::string>& { return c.registry.allowed_roots; };
  Spec s = StringList("registry", "allowed_roots",
                      "Directories artifacts must lie under (absolute; after resolving symlinks); empty allows any.",
                      get);
  Apply list = s.apply;
  s.apply = [list, get](Config& c, const toml::node& n) -> Status {
    MMS_RETURN_IF_ERROR(list(c, n));
    for (const auto& root : get(c))
      if (root.empty() || root[0] != '/')
        return InvalidArgument("'" + root + "' is not an absolute directory; give each root as a full path (such as "
                               "\"/srv/models\"), or an empty list to allow any");
    return Status::Ok();
  };
  s.key.range = "absolute directories";
  return s;
}

// [metrics] address: "" (off), or HOST:PORT, :PORT, PORT.
Spec MetricsAddressSpec() {
  auto get = [](Config& c) -> std::string& { return c.metrics.address; };
  Spec s = String("metrics", "address", "",
                  "Serve /metrics (Prometheus) and /health over HTTP here, e.g. \"127.0.0.1:9464\"; empty means off.",
                  get);
  Apply str = s.apply;
  s.apply = [str, get](Config& c, const toml::node& n) -> Status {
    MMS_RETURN_IF_ERROR(str(c, n));
    if (get(c).empty()) return Status::Ok();
    MMS_ASSIGN_OR_RETURN(HostPort hp, ParseHostPort(get(c)));
    // Stored as HOST:PORT: ":9464", "9464" and "127.0.0.1:9464" are one
    // address (a reload called changing one spelling to another a change).
    get(c) = (hp.host.find(':') != std::string::npos ? "[" + hp.host + "]" : hp.host) + ":" + std::to_string(hp.port);
    return Status::Ok();
  };
  s.key.range = "\"\" (off), HOST:PORT, [IPV6]:PORT, :PORT or PORT (port 1 to 65535)";
  return s;
}

const std::vector<Spec>& Specs() {
  static const std::vector<Spec>* specs = new std::vector<Spec>{
      String("daemon", "socket", "",
             "IPC socket path; empty means $XDG_RUNTIME_DIR/mms/mms.sock, else <data_dir>/mms.sock.",
             [](Config& c) -> std::string& { return c.daemon.socket; }),
      String("daemon", "data_dir", "",
             "Directory for the registry and packed weights; empty means $XDG_DATA_HOME/mms (~/.local/share/mms); "
             "with neither $XDG_DATA_HOME nor $HOME set, there is no default.",
             [](Config& c) -> std::string& { return c.daemon.data_dir; }),
      Int("daemon", "contexts", 256, 1, 65536,
          "Requests the daemon holds open at once (nng contexts); more wait in the socket. One version's requests hold at most seven eighths of them, only their share of the rest once fewer than an eighth are free, and none of the last sixteenth (OVERLOADED beyond): busy models' backlogs leave room for the others and for commands (with 8 or more).",
          [](Config& c) -> int& { return c.daemon.contexts; }),
      Int("daemon", "workers", 0, 0, 1024, "Handler threads; 0 means twice the number of cores.",
          [](Config& c) -> int& { return c.daemon.workers; }),
      Int("daemon", "inline_handlers", 1, 0, 64,
          "Predict requests handled at once on the thread that received them, with no hand-off to a handler thread "
          "(a thread wake-up saved per request); beyond that, they go to the handler threads. An execution longer "
          "than 250 us, not yet measured, or with over 64 KiB of inputs still runs on the scheduler's workers. At most "
          "the number of cores (up to 8) is used. 0 turns this off.",
          [](Config& c) -> int& { return c.daemon.inline_handlers; }),
      Bytes("daemon", "max_message_bytes", "256MiB", kMinMaxMessageBytes, 4ull << 30,
            "Largest request accepted; a larger one gets a TOO_LARGE protocol error.",
            [](Config& c) -> uint64_t& { return c.daemon.max_message_bytes; }),
      Duration("daemon", "shutdown_grace", "10s", 0, 600 * kSec,
               "On SIGTERM, how long in-flight requests may take to finish before exit.",
               [](Config& c) -> int64_t& { return c.daemon.shutdown_grace_ns; }),
      String("log", "level", "info", "Least severe level written (reloaded on SIGHUP).",
             [](Config& c) -> std::string& { return c.log.level; }, {"debug", "info", "warn", "error", "off"}),
      String("log", "file", "", "Append logs to this file; empty means stderr (reopened on SIGHUP).",
             [](Config& c) -> std::string& { return c.log.file; }),
      String("log", "format", "text", "Log line format: text, or one JSON object per line.",
             [](Config& c) -> std::string& { return c.log.format; }, {"text", "json"}),
      String("registry", "path", "", "SQLite registry file; empty means <data_dir>/registry.db.",
             [](Config& c) -> std::string& { return c.registry.path; }),
      AllowedRootsSpec(),
      Duration("registry", "poll_interval", "250ms", 10 * kMs, 60 * kSec,
               "How often the daemon checks the registry for changes made by other processes.",
               [](Config& c) -> int64_t& { return c.registry.poll_interval_ns; }),
      Duration("registry", "busy_timeout", "5s", 0, 600 * kSec,
               "How long a registry write waits for another writer before failing.",
               [](Config& c) -> int64_t& { return c.registry.busy_timeout_ns; }),
      Duration("registry", "integrity_check", "5m", kSec, 7 * 86400 * kSec,
               "How often the daemon runs SQLite's quick_check over the registry file (it reports damage that no "
               "read happens to touch).",
               [](Config& c) -> int64_t& { return c.registry.integrity_check_ns; }),
      DevicesSpec(),
      BytesOrAuto("pool", "device_budget", 1 << 20, 1ull << 50,
                  "Weight bytes per device, reserved once as its arena; auto: 85% of free GPU memory, or a "
                  "quarter of RAM for cpu.",
                  [](Config& c) -> uint64_t& { return c.pool.device_budget; }),
      BytesOrAuto("pool", "host_budget", 1 << 20, 1ull << 50,
                  "Bytes of the host tier (pinned when a GPU is used); auto: half of available RAM, at least the "
                  "device budgets.",
                  [](Config& c) -> uint64_t& { return c.pool.host_budget; }),
      CheckedList("pool", "pinned", "Versions kept on a device and never evicted, besides those pinned with mms pin.",
                  [](Config& c) -> std::vector<std::string>& { return c.pool.pinned; }, CheckRef),
      String("pool", "policy", "adaptive", "Eviction policy of every tier (see mms.toml(5) for how they differ).",
             [](Config& c) -> std::string& { return c.pool.policy; }, {"adaptive", "lrfu", "lru"}),
      Double("pool", "policy_half_life", 350, 1, 1e9,
             "lrfu: accesses after which a model's past use counts half; smaller follows popularity shifts faster. "
             "adaptive: the middle of its panel (a quarter to four times this).",
             [](Config& c) -> double& { return c.pool.policy_half_life; }),
      Int("pool", "load_threads", 2, 1, 64, "Loads (disk to host to device) running at once.",
          [](Config& c) -> int& { return c.pool.load_threads; }),
      Duration("pool", "load_retry_backoff", "2s", 0, 3600 * kSec,
               "After a failed load or warm-up, requests fail at once for this long (doubling per failure, at "
               "most 5 minutes) before the next retry.",
               [](Config& c) -> int64_t& { return c.pool.load_retry_backoff_ns; }),
      Duration("pool", "room_wait", "1s", 0, 3600 * kSec,
               "How long a request for a model not on a device may wait for room that requests in flight (or "
               "loads) hold, before POOL_FULL; 0 fails at once. Room that pinned models fill fails at once.",
               [](Config& c) -> int64_t& { return c.pool.room_wait_ns; }),
      Bool("pool", "warmup", true, "Run the version's sample input once at every load; a failure marks it unhealthy.",
           [](Config& c) -> bool& { return c.pool.warmup; }),
      Int("pool", "intra_op_threads", 0, 0, 1024, "libtorch intra-op threads per inference; 0 keeps libtorch's default.",
          [](Config& c) -> int& { return c.pool.intra_op_threads; }),
      Duration("experiments", "attribution_window", "1h", kSec, 30 * 86400 * kSec,
               "How long after a request its business outcome may be reported with mms feedback.",
               [](Config& c) -> int64_t& { return c.experiments.attribution_window_ns; }),
      Int("experiments", "attribution_capacity", 1000000, 1000, 100000000,
          "Request ids remembered for feedback; the oldest are forgotten first.",
          [](Config& c) -> int& { return c.experiments.attribution_capacity; }),
      Duration("experiments", "flush_interval", "2s", 100 * kMs, 3600 * kSec,
               "How often per-variant counts are written to the registry; a crash loses at most this much.",
               [](Config& c) -> int64_t& { return c.experiments.flush_interval_ns; }),
      Double("experiments", "confidence", 0.95, 0.5, 0.9999, "Confidence level of the intervals in mms stats.",
             [](Config& c) -> double& { return c.experiments.confidence; }),
      Int("scheduler", "workers", 0, 0, 1024, "Threads executing requests; 0 means one per core.",
          [](Config& c) -> int& { return c.scheduler.workers; }),
      Int("scheduler", "queue_depth", 1000, 1, 1000000,
          "Requests that may wait per version; more are refused at once with OVERLOADED.",
          [](Config& c) -> int& { return c.scheduler.queue_depth; }),
      Duration("scheduler", "max_queue_delay", "1ms", 0, kMaxQueueDelayMaxNs,
               "Batching: how long a batch may wait for more requests (a version's own setting wins).",
               [](Config& c) -> int64_t& { return c.scheduler.max_queue_delay_ns; }),
      Bool("scheduler", "batch_when_idle", true,
           "Batching: a batch leaves at once while no batch of its version is running (rows arriving meanwhile make "
           "the next one); behind a running batch it waits up to max_queue_delay. false: every batch waits for its "
           "delay or a full batch.",
           [](Config& c) -> bool& { return c.scheduler.batch_when_idle; }),
      Double("scheduler", "high_priority_sla_ms", 100, 0, 1e9,
             "Versions registered with an SLA p99 at or below this run in the high priority class.",
             [](Config& c) -> double& { return c.scheduler.high_priority_sla_ms; }),
      CheckedList("scheduler", "high_priority", "Models always in the high priority class.",
                  [](Config& c) -> std::vector<std::string>& { return c.scheduler.high_priority; }, CheckModelName),
      CheckedList("scheduler", "low_priority", "Models always in the low priority class.",
                  [](Config& c) -> std::vector<std::string>& { return c.scheduler.low_priority; }, CheckModelName),
      Int("scheduler", "starvation_interval", 8, 1, 1000,
          "Every Nth dispatch serves the oldest request of any class, so lower classes are never starved.",
          [](Config& c) -> int& { return c.scheduler.starvation_interval; }),
      QpsOrNone("limits", "model_qps", "Default rate limit per model in requests/s; 0 means none.",
             [](Config& c) -> double& { return c.limits.model_qps; }),
      Double("limits", "model_burst", 0, 0, 1e9, "Default burst per model; 0 means the qps; below 1 counts as 1.",
             [](Config& c) -> double& { return c.limits.model_burst; }),
      QpsOrNone("limits", "tenant_qps", "Default rate limit per tenant in requests/s; 0 means none.",
             [](Config& c) -> double& { return c.limits.tenant_qps; }),
      Double("limits", "tenant_burst", 0, 0, 1e9, "Default burst per tenant; 0 means the qps; below 1 counts as 1.",
             [](Config& c) -> double& { return c.limits.tenant_burst; }),
      Double("shadow", "duty_cycle", 0.25, 0.01, 1,
             "Share of the time a shadow's worker may spend running its candidate; it rests the remainder "
             "(1 = never rests).",
             [](Config& c) -> double& { return c.shadow.duty_cycle; }),
      Bytes("lora", "device_budget", "256MiB", 1 << 12, 1ull << 50,
            "LoRA adapters kept on each device (their own tier, beside the models' budget).",
            [](Config& c) -> uint64_t& { return c.lora.device_budget; }),
      Bytes("lora", "host_budget", "1GiB", 1 << 12, 1ull << 50,
            "LoRA adapters kept in host memory; the rest are read from disk when requested.",
            [](Config& c) -> uint64_t& { return c.lora.host_budget; }),
      MetricsAddressSpec(),
  };
  return *specs;
}

std::string Where(const std::string& source, const toml::source_region& r) {
  return (source.empty() ? std::string("config") : source) + ":" + std::to_string(r.begin.line);
}

}  // namespace

Result<HostPort> ParseHostPort(const std::string& address) {
  HostPort hp;
  hp.host = "127.0.0.1";
  std::string port = address;
  auto bad = [&](const std::string& why) {
    return InvalidArgument("address '" + address + "': " + why +
                           "; use HOST:PORT, [IPV6]:PORT, :PORT or PORT, e.g. 127.0.0.1:9464 or [::1]:9464");
  };
  if (address.find("://") != std::string::npos) return bad("give the address without a scheme or path");
  if (!address.empty() && address[0] == '[') {  // [IPv6]:PORT
    auto close = address.find(']');
    if (close == std::string::npos || close + 1 >= address.size() || address[close + 1] != ':')
      return bad("an IPv6 address in brackets must be followed by :PORT");
    hp.host = address.substr(1, close - 1);
    port = address.substr(close + 2);
    if (hp.host.empty() || hp.host.find_first_not_of("0123456789abcdefABCDEF:.") != std::string::npos)
      return bad("'" + hp.host + "' is not an IPv6 address");
  } else if (auto colon = address.rfind(':'); colon != std::string::npos) {
    if (colon > 0) hp.host = address.substr(0, colon);
    port = address.substr(colon + 1);
    if (hp.host.find(':') != std::string::npos) return bad("an IPv6 address needs brackets");
  }
  if (port.empty()) return bad("no port");
  if (port.find_first_not_of("0123456789") != std::string::npos) return bad("the port '" + port + "' is not a number");
  // Digits only, so compare lengths before converting: no overflow.
  size_t first = port.find_first_not_of('0');
  std::string digits = first == std::string::npos ? "0" : port.substr(first);
  if (digits.size() > 5 || std::stoi(digits) < 1 || std::stoi(digits) > 65535)
    return bad("the port " + port + " is out of range (1 to 65535)");
  hp.port = static_cast<uint16_t>(std::stoi(digits));
  if (hp.host.find_first_of(" \t/?#") != std::string::npos) return bad("the host '" + hp.host + "' is not a host name or address");
  return hp;
}

bool IsDeviceName(const std::string& name) {
  std::string n;
  if (name == "cpu") return true;
  if (name.rfind("cpu:", 0) == 0) n = name.substr(4);
  else if (name.rfind("cuda:", 0) == 0) n = name.substr(5);
  else return false;
  // One spelling per device ("cuda:01" would be cuda:1 listed twice).
  return !n.empty() && n.size() <= 6 && n.find_first_not_of("0123456789") == std::string::npos &&
         (n == "0" || n[0] != '0');
}

const std::vector<ConfigKey>& Schema() {
  static const std::vector<ConfigKey>* keys = [] {
    auto* v = new std::vector<ConfigKey>();
    for (const auto& s : Specs()) v->push_back(s.key);
    return v;
  }();
  return *keys;
}

std::string RenderConfig(const Config& c) {
  std::string out, table;
  for (const auto& s : Specs()) {
    if (s.key.table != table) {
      table = s.key.table;
      out += (out.empty() ? "[" : "\n[") + table + "]\n";
    }
    out += s.key.key + " = " + s.render(c) + "\n";
  }
  return out;
}

namespace {
// The text toml++ is given is ASCII: Debian's toml++ 3.3.0 reaches
// __builtin_unreachable() on some non-ASCII code points where whitespace may
// be (marzer/tomlplusplus#295), and asserts on a control byte or "[[[" in a
// table header (#301); fuzzing found both. So, with the same meaning:
// non-ASCII text in a "basic" string becomes \uXXXX escapes, in a comment
// '?'; anywhere else (a 'literal' string, outside strings) it is refused, as
// are control bytes (but tab) and invalid UTF-8.
Result<std::string> AsciiToml(std::string_view text, const std::string& source) {
  enum { kNormal, kComment, kBasic, kLiteral, kMlBasic, kMlLiteral } st = kNormal;
  size_t line = 1;
  bool line_start = true;  // only blanks so far on this line, outside strings
  auto at = [&](size_t i, const char* s) { return text.compare(i, std::strlen(s), s) == 0; };
  auto where = [&] { return source + ":" + std::to_string(line) + ": "; };
  std::string out;
  out.reserve(text.size());
  for (size_t i = text.rfind("\xEF\xBB\xBF", 0) == 0 ? 3 : 0; i < text.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c == '\n') {
      ++line;
      line_start = true;
      if (st != kMlBasic && st != kMlLiteral) st = kNormal;  // (a single-line string left open: toml++ says so)
      out += '\n';
      continue;
    }
    if ((c < 0x20 && c != '\t' && c != '\r') || c == 0x7f) {
      char hex[8];
      std::snprintf(hex, sizeof hex, "0x%02x", c);
      return InvalidArgument(where() + "control character " + hex + " (TOML allows none but tab; write it as an "
                             "escape inside a \"string\")");
    }
    if (c >= 0x80) {  // one UTF-8 sequence
      const int n = c >= 0xF0 && c < 0xF5 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 && c < 0xE0 ? 2 : 0;
      uint32_t cp = n == 4 ? c & 0x07u : n == 3 ? c & 0x0Fu : c & 0x1Fu;
      bool ok = n > 0 && i + n <= text.size();
      for (int k = 1; ok && k < n; ++k) {
        const unsigned char cc = static_cast<unsigned char>(text[i + k]);
        ok = (cc & 0xC0) == 0x80;
        cp = (cp << 6) | (cc & 0x3Fu);
      }
      ok = ok && cp >= (n == 2 ? 0x80u : n == 3 ? 0x800u : 0x10000u) && cp <= 0x10FFFF && !(cp >= 0xD800 && cp <= 0xDFFF);
      if (!ok) return InvalidArgument(where() + "invalid UTF-8 (save the file as UTF-8)");
      i += static_cast<size_t>(n - 1);
      line_start = false;
      if (st == kComment) {
        out += '?';
      } else if (st == kBasic || st == kMlBasic) {
        char esc[16];
        std::snprintf(esc, sizeof esc, cp > 0xFFFF ? "\\U%08X" : "\\u%04X", cp);
        out += esc;
      } else {
        return InvalidArgument(where() + (st == kNormal ? "a non-ASCII character outside a string or comment (TOML "
                                                          "allows them only inside quotes or after #)"
                                                        : "a non-ASCII character in a 'literal' string: write it in "
                                                          "a \"double-quoted\" string"));
      }
      continue;
    }
    out += static_cast<char>(c);
    switch (st) {
      case kNormal:
        if (line_start && at(i, "[[["))
          return InvalidArgument(where() + "a table header starts with [[[ (use [table] or [[array-of-tables]])");
        if (c == '#') st = kComment;
        else if (at(i, "\"\"\"")) st = kMlBasic, out += "\"\"", i += 2;
        else if (at(i, "\'\'\'")) st = kMlLiteral, out += "\'\'", i += 2;
        else if (c == '"') st = kBasic;
        else if (c == '\'') st = kLiteral;
        break;
      case kComment: break;
      case kBasic:
      case kMlBasic:
        if (c == '\\' && i + 1 < text.size() && text[i + 1] != '\n' &&
            static_cast<unsigned char>(text[i + 1]) < 0x80 && text[i + 1] >= 0x20)
          out += text[++i];  // an escaped character, taken as it is
        else if (st == kBasic && c == '"') st = kNormal;
        else if (st == kMlBasic && at(i, "\"\"\"")) st = kNormal, out += "\"\"", i += 2;
        break;
      case kLiteral:
        if (c == '\'') st = kNormal;
        break;
      case kMlLiteral:
        if (at(i, "\'\'\'")) st = kNormal, out += "\'\'", i += 2;
        break;
    }
    if (c != ' ' && c != '\t' && c != '\r') line_start = false;
  }
  return out;
}
}  // namespace

Result<Config> ParseConfig(const std::string& text, const std::string& source) {
  Config cfg;
  cfg.source = source;
  MMS_ASSIGN_OR_RETURN(const std::string ascii, AsciiToml(text, source));
  toml::table root;
  try {
    root = toml::parse(ascii, source);
  } catch (const toml::parse_error& e) {
    return InvalidArgument(Where(source, e.source()) + ": " + std::string(e.description()));
  }
  std::map<std::string, std::map<std::string, const Spec*>> by_table;
  for (const auto& s : Specs()) by_table[s.key.table][s.key.key] = &s;

  for (auto&& [tkey, tnode] : root) {
    std::string tname(tkey.str());
    auto tit = by_table.find(tname);
    if (tit == by_table.end() && !tnode.is_table())  // a key outside any table: not a table's name
      return InvalidArgument(Where(source, tkey.source()) + ": '" + tname +
                             "' is a key outside any table; every setting belongs to a table, as [daemon] workers");
    if (tit == by_table.end()) {
      std::string known;
      for (const auto& [n, _] : by_table) known += (known.empty() ? "" : ", ") + ("[" + n + "]");
      return InvalidArgument(Where(source, tkey.source()) + ": unknown table [" + tname + "]; known tables: " + known);
    }
    const toml::table* t = tnode.as_table();
    if (!t) return InvalidArgument(Where(source, tnode.source()) + ": '" + tname + "' must be a table ([" + tname + "])");
    for (auto&& [k, v] : *t) {
      std::string kname(k.str());
      auto kit = tit->second.find(kname);
      if (kit == tit->second.end()) {
        std::vector<std::string> names;
        for (const auto& [n, _] : tit->second) names.push_back(n);
        std::string hint = ClosestMatch(kname, names);
        std::string known;
        for (const auto& n : names) known += (known.empty() ? "" : ", ") + n;
        return InvalidArgument(Where(source, k.source()) + ": unknown key '" + kname + "' in [" + tname + "]" +
                               (hint.empty() ? "" : "; did you mean '" + hint + "'?") + " (known keys: " + known + ")");
      }
      Status st = kit->second->apply(cfg, v);
      if (!st.ok())
        return InvalidArgument(Where(source, v.source()) + ": [" + tname + "] " + kname + ": " + st.message());
    }
  }
  // Across keys: a model in both priority lists has no one class.
  for (const auto& m : cfg.scheduler.high_priority)
    if (std::find(cfg.scheduler.low_priority.begin(), cfg.scheduler.low_priority.end(), m) !=
        cfg.scheduler.low_priority.end())
      return InvalidArgument(source + ": [scheduler] '" + m +
                             "' is in both high_priority and low_priority; keep it in one of them");
  return cfg;
}

Result<Config> LoadConfigFile(const std::string& path) {
  // A directory reads as empty text: it would pass for a config of defaults.
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    return InvalidArgument("config file " + path + " is a directory; give the path of a TOML file, such as " +
                           JoinPath(path, "mms.toml"));
  auto text = ReadFile(path);
  if (!text.ok()) return text.status();
  MMS_ASSIGN_OR_RETURN(Config cfg, ParseConfig(*text, path));
  // A relative path in the file is the file's, as its author meant it — not
  // whatever directory a command runs from (a CI job elsewhere made a second
  // registry, silently). The file's real directory (a path through a
  // symbolic link and .. is the kernel's, not the text's). Not the socket:
  // a unix socket's path holds at most 107 bytes, and a relative one may be
  // what fits (daemon/main.cpp keeps it as given).
  auto real = CanonicalPath(path);
  const std::string dir = real.ok() ? DirName(*real) : "";
  if (!dir.empty())
    for (std::string* p : {&cfg.daemon.data_dir, &cfg.log.file, &cfg.registry.path})
      if (!p->empty() && (*p)[0] != '/') *p = JoinPath(dir, *p);
  return cfg;
}

std::string DefaultConfigPath(const std::function<const char*(const char*)>& env) {
  const char* explicit_path = env("MMS_CONFIG");
  if (explicit_path && *explicit_path) return explicit_path;
  std::string base;
  const char* xdg = env("XDG_CONFIG_HOME");
  if (xdg && *xdg) base = xdg;
  else if (const char* home = env("HOME"); home && *home) base = JoinPath(home, ".config");
  if (base.empty()) return "";
  std::string p = JoinPath(base, "mms/mms.toml");
  return FileExists(p) ? p : "";
}

}  // namespace mms
