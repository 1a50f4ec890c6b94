// Config: everything mms.toml can set, with a built-in default for every key
// (no file is needed). Parsed with toml++; an unknown table or key, a value
// of the wrong type or out of range is refused with "file:line: [table] key:
// what is allowed". The key reference (man/mms.toml.5) is checked against
// Schema() by a test, so the two cannot drift.
//
// Options structs elsewhere (Server, ModelPool, ...) are filled from these
// fields 1:1; each field's comment names its TOML key and default.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/status.h"

namespace mms {

struct DaemonConfig {
  std::string socket;                          // [daemon] socket = "" (see paths.h)
  std::string data_dir;                        // [daemon] data_dir = ""
  int contexts = 256;                          // [daemon] contexts: concurrent requests in flight
  int workers = 0;                             // [daemon] workers: handler threads, 0 = 2 × cores
  int inline_handlers = 1;                     // [daemon] inline_handlers: predicts run to completion on nng's thread
  uint64_t max_message_bytes = 256ull << 20;   // [daemon] max_message_bytes = "256MiB"
  int64_t shutdown_grace_ns = 10'000'000'000;  // [daemon] shutdown_grace = "10s"
};

struct LogConfig {
  std::string level = "info";   // [log] level
  std::string file;             // [log] file = "" (stderr)
  std::string format = "text";  // [log] format = "text" | "json"
};

struct RegistryConfig {
  std::string path;                        // [registry] path = "" → <data_dir>/registry.db
  std::vector<std::string> allowed_roots;  // [registry] allowed_roots = [] (anywhere)
  int64_t poll_interval_ns = 250'000'000;  // [registry] poll_interval = "250ms"
  int64_t busy_timeout_ns = 5'000'000'000; // [registry] busy_timeout = "5s"
  int64_t integrity_check_ns = 300'000'000'000;  // [registry] integrity_check = "5m"
};

struct PoolConfig {
  std::vector<std::string> devices{"auto"};  // [pool] devices = "auto" | ["cuda:0", ...] | ["cpu"]
  uint64_t device_budget = 0;                // [pool] device_budget = "auto" (0): per device
  uint64_t host_budget = 0;                  // [pool] host_budget = "auto" (0)
  std::vector<std::string> pinned;           // [pool] pinned = [] (refs, besides mms pin)
  std::string policy = "adaptive";           // [pool] policy = "adaptive" | "lrfu" | "lru"
  double policy_half_life = 350;             // [pool] policy_half_life (accesses)
  int load_threads = 2;                      // [pool] load_threads
  int64_t load_retry_backoff_ns = 2'000'000'000;  // [pool] load_retry_backoff = "2s"
  int64_t room_wait_ns = 1'000'000'000;      // [pool] room_wait = "1s": 0 = POOL_FULL at once
  bool warmup = true;                        // [pool] warmup
  int intra_op_threads = 0;                  // [pool] intra_op_threads: 0 = libtorch's default
};

struct ExperimentsConfig {
  int64_t attribution_window_ns = 3'600'000'000'000;  // [experiments] attribution_window = "1h"
  int attribution_capacity = 1'000'000;               // [experiments] attribution_capacity
  int64_t flush_interval_ns = 2'000'000'000;          // [experiments] flush_interval = "2s"
  double confidence = 0.95;                           // [experiments] confidence
};

struct SchedulerConfig {
  int workers = 0;                          // [scheduler] workers: 0 = one per core
  int queue_depth = 1000;                   // [scheduler] queue_depth: per version
  int64_t max_queue_delay_ns = 1'000'000;   // [scheduler] max_queue_delay = "1ms" (batching default)
  double high_priority_sla_ms = 100;        // [scheduler] high_priority_sla_ms
  std::vector<std::string> high_priority;   // [scheduler] high_priority = [] (model names)
  std::vector<std::string> low_priority;    // [scheduler] low_priority = [] (model names)
  int starvation_interval = 8;              // [scheduler] starvation_interval
  bool batch_when_idle = true;              // [scheduler] batch_when_idle: no delay while no batch of the version runs
};

struct LimitsConfig {
  double model_qps = 0;     // [limits] model_qps: default per-model limit, 0 = none
  double model_burst = 0;   // [limits] model_burst: 0 = the qps
  double tenant_qps = 0;    // [limits] tenant_qps: default per-tenant limit, 0 = none
  double tenant_burst = 0;  // [limits] tenant_burst
};

struct LoraConfig {
  uint64_t device_budget = 256ull << 20;  // [lora] device_budget = "256MiB": adapters per device
  uint64_t host_budget = 1ull << 30;      // [lora] host_budget = "1GiB": adapters in host memory
};

struct ShadowConfig {
  double duty_cycle = 0.25;  // [shadow] duty_cycle: share of time a shadow's worker may run its candidate
};

struct MetricsConfig {
  std::string address;  // [metrics] address = "" (off); "127.0.0.1:9464", ":9464"
};

struct Config {
  DaemonConfig daemon;
  LogConfig log;
  RegistryConfig registry;
  PoolConfig pool;
  ExperimentsConfig experiments;
  MetricsConfig metrics;
  SchedulerConfig scheduler;
  LimitsConfig limits;
  LoraConfig lora;
  ShadowConfig shadow;
  std::string source;  // the file it came from, "" for built-in defaults
};

// One documented key. `apply` sets the field from a toml++ node; it returns
// INVALID_ARGUMENT with the allowed values (the caller adds file:line).
struct ConfigKey {
  std::string table;
  std::string key;
  std::string type;          // "string", "integer", "boolean", "size", "duration", "list of strings", ...
  std::string default_text;  // as written in TOML, e.g. "\"256MiB\""
  std::string range;         // allowed values, human-readable
  std::string doc;           // one sentence
};

const std::vector<ConfigKey>& Schema();

// Every key with its current value, as TOML (sizes in bytes, durations in
// ns); `mmsd --check-config` prints it. Parsing it back yields `c`.
std::string RenderConfig(const Config& c);

// Parses TOML text. `source` names it in errors ("mms.toml").
Result<Config> ParseConfig(const std::string& toml_text, const std::string& source);
// Reads and parses a file. NOT_FOUND when it does not exist. Its relative
// paths ([daemon] data_dir, [log] file, [registry] path) are taken from the
// file's directory, whatever the working directory; [daemon] socket stays
// as given (a unix socket path is short: a relative one may be what fits).
Result<Config> LoadConfigFile(const std::string& path);
// The file used when --config is not given: $MMS_CONFIG, else
// $XDG_CONFIG_HOME/mms/mms.toml (~/.config/mms/mms.toml) when it exists, else "".
std::string DefaultConfigPath(const std::function<const char*(const char*)>& env);

// An HTTP listen address: "HOST:PORT", ":PORT" or "PORT" (host 127.0.0.1).
struct HostPort {
  std::string host;
  uint16_t port = 0;
};
// PORT must be a decimal number from 1 to 65535; INVALID_ARGUMENT otherwise.
// Used for [metrics] address and mmsd --metrics-address.
Result<HostPort> ParseHostPort(const std::string& address);

// A [pool] devices entry: cpu, cpu:N or cuda:N (N decimal digits).
bool IsDeviceName(const std::string& name);

// The range of a version's own batching delay (mms model register
// --max-queue-delay-us), the same as [scheduler] max_queue_delay allows.
constexpr int64_t kMaxQueueDelayMaxNs = 10'000'000'000;  // 10s
constexpr uint64_t kMinMaxMessageBytes = 4096;            // [daemon] max_message_bytes at least

}  // namespace mms
