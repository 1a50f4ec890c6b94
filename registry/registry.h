// Registry: the SQLite source of truth for what can be served — model
// versions with their metadata, rollout stages, labels, aliases, pins, and
// an append-only audit log of every change. Used offline by the CLI (CI
// pipelines need no daemon) and live by the daemon, which notices other
// processes' commits through DataVersion() and rebuilds its routing.
//
// Storage: WAL, a busy timeout, foreign keys, numbered migrations in
// PRAGMA user_version, PRAGMA application_id marking the file as ours.
// Every write is one IMMEDIATE transaction that also appends its audit rows,
// so a crash (even SIGKILL) leaves either all of a change or none of it.
//
// Errors: NOT_FOUND (unknown model/version/alias, with a "did you mean"),
// ALREADY_EXISTS (duplicate name:version, alias, ...), IN_USE (rm of a
// version that a pin or rollout uses), INVALID_ARGUMENT (names, versions,
// stages, paths outside allowed roots), CORRUPT (not a database, a foreign
// or damaged one), FAILED_PRECONDITION (a db written by a newer mms).
//
// Thread-safety: all methods are safe to call concurrently; one mutex guards
// the connection (held for the duration of one statement or transaction).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/clock.h"
#include "core/status.h"
#include "protocol/input_spec.h"
#include "registry/names.h"

namespace mms {

namespace sql {
class Db;
class Tx;
}

// The newest schema this build knows (see registry/schema.cpp).
int RegistrySchemaVersion();

// Paths of files inside a data dir (its artifacts/, a restore's sources/,
// models kept there) are stored relative to it, so a data dir moved whole —
// mv to a bigger disk, a backup mounted elsewhere or copied to another host —
// still finds its files. Other paths are stored absolute. StoredPath gives
// the stored form of an absolute path; ResolvedPath the absolute path of a
// stored one ("" stays "", and so does everything when data_dir is "").
std::string StoredPath(const std::string& data_dir, const std::string& path);
std::string ResolvedPath(const std::string& data_dir, const std::string& stored);
// The root an mms before schema 8 recorded for a copy it wrote (mms backup or
// restore: <dir>/mms-copy.json) when the copy has moved since, else "": that
// copy's absolute paths under the root are its own files, now under `dir`.
std::string LegacyCopyRoot(const std::string& dir);
// A line of <registry>.mmsd-lock written by an mmsd that reads relative paths.
inline constexpr const char* kRelativePathsMarker = "paths=relative";
// <registry>.mmsd-lock, the one place its format lives: "pid\nsocket\n", then
// kRelativePathsMarker from an mmsd that reads relative paths (schema 8).
// Written by Daemon::LockRegistry; read by Registry::Open (may the registry
// go to schema 8?), by a second mmsd refused and by the CLI (whose socket?).
struct DaemonLockFile {
  std::string pid, socket;
  bool relative_paths = false;
};
std::string DaemonLockFileText(int64_t pid, const std::string& socket);
DaemonLockFile ParseDaemonLockFile(const std::string& text);

// A version's own batching delay (NewVersion::max_queue_delay_us) may be 0 (the
// [scheduler] default) to this: the range [scheduler] max_queue_delay allows
// (kMaxQueueDelayMaxNs in config/config.h; a static_assert keeps them equal).
constexpr int64_t kMaxQueueDelayUsMax = 10'000'000;  // 10 s

struct VersionRecord {
  int64_t id = 0;
  std::string model;
  std::string version;
  std::string artifact_path;  // canonical (symlinks and .. resolved)
  std::string format = "torchscript";
  uint64_t size_bytes = 0;
  std::string sha256;
  int64_t created_ms = 0;
  std::string created_by;
  std::string description;
  std::string data_fingerprint;
  nlohmann::json metrics = nlohmann::json::object();  // validation metrics
  uint64_t device_bytes = 0;  // weights resident on a device
  uint64_t host_bytes = 0;    // weights resident in the host tier
  std::optional<double> sla_p99_ms;
  Stage stage = Stage::kNone;
  std::map<std::string, std::string> labels;
  std::vector<std::string> aliases;  // aliases pointing here
  std::string packed_dir;            // packed weights + weight-less module ("" = plain path only)
  std::vector<InputSpec> inputs;     // forward() arguments, in order
  std::string sample_input;          // stored sample input for warm-up ("" = none)
  int max_batch_size = 0;            // 0 = no dynamic batching
  int64_t max_queue_delay_us = 0;    // batching: longest wait for a fuller batch (0 = [scheduler] default)
  int64_t base_id = 0;               // a LoRA adapter: its base version's id (0 = a model of its own)
  std::string base_ref;              // and that base's "name:version"
  // An adapter: AdapterInfo (rank, alpha, scale, dtype, targets, bytes). A base
  // whose forward() takes stacked adapter weights: {"stacked": [modules]}.
  nlohmann::json lora = nlohmann::json::object();

  bool is_adapter() const { return base_id != 0; }
  std::string ref() const { return model + ":" + version; }
  nlohmann::json ToJson() const;
};

struct NewVersion {
  std::string model;
  std::string version;
  std::string artifact_path;  // canonical
  uint64_t size_bytes = 0;
  std::string sha256;
  std::string description;
  std::string data_fingerprint;
  nlohmann::json metrics = nlohmann::json::object();
  uint64_t device_bytes = 0;
  uint64_t host_bytes = 0;
  std::optional<double> sla_p99_ms;
  std::map<std::string, std::string> labels;
  std::string packed_dir;
  std::vector<InputSpec> inputs;
  std::string sample_input;
  int64_t base_id = 0;  // a LoRA adapter's base version
  nlohmann::json lora = nlohmann::json::object();
  int max_batch_size = 0;         // 0 (off) or positive
  int64_t max_queue_delay_us = 0;  // 0 to kMaxQueueDelayUsMax; INVALID_ARGUMENT otherwise
};

struct AuditEntry {
  int64_t id = 0;
  int64_t ts_ms = 0;
  std::string actor;
  std::string action;  // register, stage, alias-set, alias-rm, rm, pin, unpin, ...
  std::string model;
  std::string version;
  std::string from;
  std::string to;
  std::string detail;
  nlohmann::json ToJson() const;
};

struct ExperimentRecord {
  std::string id;
  std::string model;
  std::string kind = "ab";  // "ab" or "canary"
  int64_t control_id = 0, treatment_id = 0;  // 0 when the version was removed
  std::string control_version, treatment_version;
  int basis_points = 0;  // treatment share, 0..10000
  bool random = false;   // per-request coin flip instead of sticky buckets
  std::vector<std::string> metrics;  // business metrics accepted as feedback
  std::string state;     // running | paused | stopped
  std::string winner;    // "", "control", "treatment" (once stopped)
  int64_t created_ms = 0, updated_ms = 0;
  std::string created_by;

  double percent() const { return basis_points / 100.0; }
  bool active() const { return state != "stopped"; }
  nlohmann::json ToJson() const;
};

struct NewExperiment {
  std::string id;
  std::string model;
  std::string kind = "ab";
  Ref control, treatment;
  int basis_points = 0;
  bool random = false;
  std::vector<std::string> metrics;
};

struct ShadowRecord {
  int64_t id = 0;
  std::string model;
  int64_t candidate_id = 0;  // 0 when the version was removed
  std::string candidate_version;
  double ratio = 1.0;        // share of requests mirrored
  int queue = 1000;          // bounded shadow queue
  double tolerance = 1e-5;   // max abs diff before a request "diverges"
  std::string state;         // running | stopped
  int64_t started_ms = 0;
  int64_t ends_ms = 0;       // 0 = no duration
  int64_t stopped_ms = 0;
  std::string reason;
  std::string created_by;
  nlohmann::json figures;    // as the daemon last saved them (null: never)
  int64_t figures_ms = 0;    // when
  std::string candidate_ref() const { return model + ":" + candidate_version; }
  nlohmann::json ToJson() const;
};

struct CanaryRecord {
  int64_t id = 0;
  std::string model;
  std::string experiment_id;  // the traffic split (an experiment of kind "canary")
  std::string candidate_version, baseline_version;
  std::vector<double> stages;  // traffic percentages, increasing, last usually 100
  int stage_index = 0;
  int64_t stage_duration_ms = 0, check_interval_ms = 0;
  double max_error_rate = 0.05, max_p99_ms = 500, max_p99_ratio = 1.2;
  int64_t min_requests = 1000;
  std::string state;  // running | paused | promoted | rolled_back | aborted
  int64_t stage_elapsed_ms = 0;  // time spent running in the current stage
  nlohmann::json stage_start = nlohmann::json::object();  // metrics when the stage began
  nlohmann::json last_check = nlohmann::json::object();
  std::string reason;
  int64_t created_ms = 0, updated_ms = 0;
  std::string created_by;

  double traffic_percent() const { return stages.empty() ? 0 : stages[static_cast<size_t>(stage_index)]; }
  bool active() const { return state == "running" || state == "paused"; }
  bool last_stage() const { return stage_index + 1 >= static_cast<int>(stages.size()); }
  nlohmann::json ToJson() const;
};

struct NewCanary {
  std::string model;
  Ref candidate;
  std::vector<double> stages{1, 5, 10, 25, 50, 100};
  int64_t stage_duration_ms = 30 * 60 * 1000;
  int64_t check_interval_ms = 10 * 1000;
  double max_error_rate = 0.05, max_p99_ms = 500, max_p99_ratio = 1.2;
  int64_t min_requests = 1000;
};

struct RateLimit {
  std::string kind;  // "model" or "tenant"
  std::string key;   // model name or tenant
  double qps = 0;    // sustained requests per second
  double burst = 0;  // bucket size
  nlohmann::json ToJson() const { return {{"kind", kind}, {"key", key}, {"qps", qps}, {"burst", burst}}; }
};

struct Pin {
  std::string model;
  std::string version;  // "" = follows the model's default (production/highest)
  std::string ref() const { return version.empty() ? model : model + ":" + version; }
};

class Registry {
 public:
  struct Options {
    std::string path;                        // the .db file
    int64_t busy_timeout_ms = 5000;          // [registry] busy_timeout
    std::vector<std::string> allowed_roots;  // [registry] allowed_roots
    std::string actor;                       // recorded in the audit log ("" = $MMS_ACTOR, $USER)
    Clock* clock = Clock::Real();
    bool create = true;                      // create the file when missing
    // The packed weights' directory beside this registry (<data dir>/artifacts).
    // A missing registry file is not created while it holds packed files:
    // the registry was removed or moved, or this is another data dir's, and
    // a new empty one would make every packed file look like an orphan.
    // When its parent (the data dir) is the registry file's directory (the
    // default layout), paths of files inside it are stored relative to it
    // (StoredPath); else, and with "", absolute. Relative paths read back
    // against the registry file's directory, whoever opens it.
    std::string artifacts_dir;
    // mmsd: it holds <path>.mmsd-lock (Daemon::LockRegistry). Others look at
    // that lock: while an mmsd older than schema 8 holds it (its lock file
    // lacks kRelativePathsMarker), the registry is not taken to schema 8 and
    // paths are stored absolute — that daemon would read relative paths
    // against its working directory.
    bool daemon_lock_held = false;
    // Refuse a registry this process may only read (SQLite opens a file it
    // cannot write read-only, and every write then fails): mmsd, which must
    // save serving figures, canary stages and metrics.
    bool require_writable = false;
  };

  // Opens and migrates. Refuses a newer schema, a foreign or corrupt file.
  static Result<std::unique_ptr<Registry>> Open(const Options& opts);
  ~Registry();

  // While alive, this thread's writes wait at most `ms` for another writer
  // instead of [registry] busy_timeout: for writes retried anyway (interim
  // canary checks, periodic metrics flushes) on the thread that also judges
  // canaries, which must not sit out a long timeout behind a lock. Holds
  // the registry's mutex for its life (other threads' calls wait for it).
  class BriefWaits {
   public:
    BriefWaits(Registry* r, int64_t ms);
    ~BriefWaits();
    BriefWaits(const BriefWaits&) = delete;
    BriefWaits& operator=(const BriefWaits&) = delete;

   private:
    Registry* r_;
  };

  // ---- versions
  // ALREADY_EXISTS for a duplicate name:version. The artifact path must be
  // canonical and inside allowed_roots (CheckArtifactPath).
  Result<VersionRecord> Register(const NewVersion& v);
  Result<VersionRecord> Resolve(const Ref& ref);
  Result<VersionRecord> Resolve(const std::string& ref);
  // All versions, optionally of one model and/or in one stage; ordered by
  // model name, then version.
  Result<std::vector<VersionRecord>> List(const std::string& model = "", std::optional<Stage> stage = {});
  Result<std::vector<std::string>> ModelNames();

  // One production version per model: promoting moves the previous one to
  // archived (recorded), and names it in `*archived` when given (read in the
  // same transaction: a concurrent promotion cannot change the answer).
  // `reason` goes to the audit detail.
  Result<VersionRecord> SetStage(const Ref& ref, Stage stage, const std::string& reason = "",
                                 std::vector<std::string>* archived = nullptr);
  // mms model repack: the version's packed files (and stored sample input)
  // now live in `packed_dir`, written anew from its original artifact, and
  // its inputs are as that sample shows them (dtypes, trailing shapes).
  // CONFLICT when they changed meanwhile (from `old_packed_dir`), or its
  // batching did (from `max_batch_size`, which the repack's check ran for:
  // a sample never checked must not be stored for a version batched
  // meanwhile); audited.
  Result<VersionRecord> SetPackedDir(const Ref& ref, const std::string& old_packed_dir, const std::string& packed_dir,
                                     const std::string& sample_input, const std::vector<InputSpec>& inputs,
                                     int max_batch_size);
  // mms model batching: the dynamic batching of the version `checked`
  // (max_batch_size 0 turns it off; max_queue_delay_us 0 is the [scheduler]
  // default), checked beforehand by the caller on checked's artifact and
  // stored sample. CONFLICT when the version changed meanwhile (removed and
  // registered again, or, when turning batching on, given another sample by
  // a repack); INVALID_ARGUMENT for an adapter (its base's batching applies)
  // or values out of range; audited. The record unchanged when nothing
  // changes (no audit).
  Result<VersionRecord> SetBatching(const VersionRecord& checked, int max_batch_size, int64_t max_queue_delay_us);
  Status SetAlias(const std::string& model, const std::string& alias, const std::string& version);
  Status RemoveAlias(const std::string& model, const std::string& alias);
  // IN_USE while a pin (or, later, an experiment, shadow or canary) uses it,
  // unless `force`. Removes labels, aliases and pins on it; history stays.
  Result<VersionRecord> Remove(const Ref& ref, bool force);
  // What uses a version: "pinned", "experiment 'x' (control)", ...
  Result<std::vector<std::string>> UsesOf(const VersionRecord& v);

  // Audit entries for a model (all versions when ref has none), oldest first.
  Result<std::vector<AuditEntry>> History(const Ref& ref);
  Result<std::vector<AuditEntry>> AuditLog(int64_t after_id = 0, int limit = 1000);

  // ---- pins (persisted; the daemon preloads them at start)
  // True when the pin is new; false when it was already there (idempotent).
  Result<bool> AddPin(const Ref& ref);
  Status RemovePin(const Ref& ref);
  Result<std::vector<Pin>> Pins();

  // ---- experiments (registry/experiments.cpp)
  // ALREADY_EXISTS for a duplicate id or a second active experiment on the
  // model; INVALID_ARGUMENT when control and treatment are not two different
  // versions of `model`; NOT_FOUND for unknown versions.
  Result<ExperimentRecord> CreateExperiment(const NewExperiment& e);
  Result<ExperimentRecord> GetExperiment(const std::string& id);
  Result<std::vector<ExperimentRecord>> ListExperiments(bool include_stopped = true);
  // pause/resume: CONFLICT when not running/paused.
  Result<ExperimentRecord> SetExperimentState(const std::string& id, const std::string& state);
  // The share it has already: nothing written (no audit row), *unchanged set.
  Result<ExperimentRecord> RampExperiment(const std::string& id, int basis_points, bool* unchanged = nullptr);
  // Stops it; with a winner ("control"/"treatment") that version becomes
  // production in the same transaction (previous production archived), all audited.
  Result<ExperimentRecord> StopExperiment(const std::string& id, const std::string& winner);
  Status SaveExperimentMetrics(const std::string& id, const std::string& variant, const nlohmann::json& data);
  Result<std::map<std::string, nlohmann::json>> LoadExperimentMetrics(const std::string& id);

  // ---- shadow runs and canaries (registry/rollouts.cpp)
  // One running shadow per model (ALREADY_EXISTS); the candidate must be
  // another version of it than its production one.
  Result<ShadowRecord> StartShadow(const std::string& model, const Ref& candidate, double ratio, int queue,
                                   double tolerance, int64_t duration_ms);
  Result<ShadowRecord> StopShadow(const std::string& model, const std::string& reason);
  Result<ShadowRecord> GetShadow(const std::string& model);  // the latest
  Result<std::vector<ShadowRecord>> ListShadows(bool running_only);

  // Starts a canary: validates the stages (increasing, in (0, 100]), needs a
  // production version other than the candidate, and creates the
  // experiment that splits the traffic at the first stage.
  Result<CanaryRecord> StartCanary(const NewCanary& n);
  Result<CanaryRecord> GetCanary(const std::string& model);  // the latest
  Result<std::vector<CanaryRecord>> ListCanaries(bool active_only);
  Result<CanaryRecord> SetCanaryState(const std::string& model, const std::string& state);  // running | paused
  // The controller's writes; each is conditional on the canary still being
  // where the caller saw it (CONFLICT otherwise).
  Result<CanaryRecord> RecordCanaryCheck(int64_t id, int stage_index, int64_t elapsed_ms, const nlohmann::json& check);
  Result<CanaryRecord> AdvanceCanary(int64_t id, int from_stage, const nlohmann::json& stage_start);
  // Candidate to production (previous archived), experiment stopped, audited.
  // `running_id` (the controller's verdicts): only if that canary is still the
  // model's and running — not paused, ended or replaced since it was judged
  // (CONFLICT otherwise); 0 (the CLI): the model's active canary.
  // The daemon's figures of shadow run `id` (mms shadow stats), kept across
  // restarts and after the run stops. Not audited.
  Status SaveShadowFigures(int64_t id, const nlohmann::json& figures);
  Result<CanaryRecord> PromoteCanary(const std::string& model, const std::string& reason, int64_t running_id = 0);
  // `state` rolled_back or aborted: candidate archived with `reason`, experiment stopped.
  // `check` (the failing check, when the controller judged it) becomes the
  // canary's last check in the same transaction.
  Result<CanaryRecord> RollbackCanary(const std::string& model, const std::string& state, const std::string& reason,
                                      int64_t running_id = 0, const nlohmann::json& check = nullptr);

  // ---- rate limits (kind "model" keys are model names, "tenant" any tenant id)
  // INVALID_ARGUMENT for qps <= 0 or not finite, burst < 1 (the message says so).
  // The limit it has already: nothing written (no audit row), *unchanged set.
  Status SetLimit(const RateLimit& l, bool* unchanged = nullptr);
  Status RemoveLimit(const std::string& kind, const std::string& key);  // NOT_FOUND when absent
  Result<std::vector<RateLimit>> Limits();

  // ---- change detection
  // A token that changes whenever anything in the file changes: another
  // connection's commit (PRAGMA data_version) or one of ours.
  Result<int64_t> DataVersion();

  // Checks `canonical` against allowed_roots.
  Status CheckArtifactPath(const std::string& canonical) const;
  const std::string& path() const { return opts_.path; }
  const std::string& actor() const { return actor_; }

  // For tests and migrations: the raw schema version of the file.
  Result<int> SchemaVersion();

  // Writes an audit row for a change made outside the Registry's own
  // methods (rollout modules); part of no transaction.
  Status Audit(const std::string& action, const std::string& model, const std::string& version,
               const std::string& from, const std::string& to, const std::string& detail);

  // Runs `fn` — calls to this Registry's readers — in one read transaction,
  // so they all see the same commit (the daemon's snapshot: a version and
  // the experiment using it, committed together, are seen together). Other
  // threads' calls wait until it ends.
  Status ReadConsistent(const std::function<Status()>& fn);

  // OK while the registry's path still names the file this object opened.
  // FAILED_PRECONDITION when it was removed or replaced (moved away, a
  // backup copied over it): this object then reads and writes a file no
  // other process sees. mmsd checks it at every poll.
  Status CheckFileIdentity() const;
  // After CheckFileIdentity failed: makes this object's connection harmless
  // to whoever opens the path next. (A -wal removed under a live
  // connection, or a file replaced under it, leaves a write-ahead log and
  // shared index at the path that other openers take for their own: the
  // restart mmsd advised then corrupted the registry — a fault-injection
  // review, stop 29.)
  //  - the file was replaced: its log is checkpointed into the file it
  //    opened (which nobody else has) and truncated, so none of it is left
  //    at the path;
  //  - only its -wal or -shm went: no checkpoint (the shared index may map
  //    another process's frames by then: backfilling from this connection's
  //    log would write them wrong); what it wrote since its last checkpoint
  //    is lost with the removed log;
  //  - then it is closed, without the checkpoint and removal of the -wal and
  //    -shm a last connection makes at close (they may be another
  //    process's), and an empty in-memory stand-in takes its place: every
  //    call fails with an error, none crashes, CheckFileIdentity says why.
  //    A process that opens the file next, with no one holding its index,
  //    recovers the log and index from the file: commands work meanwhile,
  //    and a restart opens it soundly.
  //  - the file it opened back at the path (moved away and back): opened
  //    again, and true (healed). Not after a removed -wal or -shm.
  // A write by another process between the removal and this call can still
  // meet a log that is not its file's: SQLite offers no way to stop it.
  // Errors: the reopen failed (try again later).
  Result<bool> LetGoOfDetachedFile();
  bool let_go() const { return let_go_.load(); }  // LetGoOfDetachedFile closed it (any thread)
  // SQLite's quick_check over the whole file (linear in its size), read from
  // disk on a connection of its own: CORRUPT naming the first problems, with
  // how to recover. Reads that happen not to touch a damaged page succeed,
  // so mms model verify runs this, and mmsd every [registry] integrity_check.
  Status QuickCheck();

  // ---- copies of a data dir (registry/backup.h)
  // Where a version's files are in a copy of its data dir.
  struct Relocation {
    int64_t version_id = 0;
    std::string artifact_path, packed_dir, sample_input;
  };
  // Points versions at copies of their files, in one transaction with one
  // audit row (`action`, `detail`). The paths are stored as given: the copy's
  // own files relative to the copy (StoredPath with its data dir).
  Status Relocate(const std::vector<Relocation>& moves, const std::string& action, const std::string& detail);

  // Runs `fn` with the connection under the registry's lock (rollout modules
  // keep their own tables in the same file).
  template <class Fn>
  auto WithDb(Fn&& fn) {
    std::lock_guard<std::recursive_mutex> lock(mu_);
    return fn(db_.get());
  }

 private:
  explicit Registry(Options opts);
  Status Migrate();
  Result<int64_t> ModelId(const std::string& name);  // NOT_FOUND with a suggestion
  Result<VersionRecord> ResolveLocked(const Ref& ref);
  Result<std::vector<VersionRecord>> QueryVersions(const std::string& where, const std::vector<std::string>& args);
  Status AuditLocked(const std::string& action, const std::string& model, const std::string& version,
                     const std::string& from, const std::string& to, const std::string& detail);
  Result<std::vector<std::string>> UsesOfLocked(const VersionRecord& v);
  Result<std::vector<ExperimentRecord>> QueryExperiments(const std::string& where, const std::vector<std::string>& args);
  Result<VersionRecord> SetStageLocked(const Ref& ref, Stage stage, const std::string& reason,
                                       std::vector<std::string>* archived = nullptr);
  Result<std::vector<ShadowRecord>> QueryShadows(const std::string& where, const std::vector<std::string>& args);
  Result<std::vector<CanaryRecord>> QueryCanaries(const std::string& where, const std::vector<std::string>& args);
  Result<CanaryRecord> ActiveCanaryLocked(const std::string& model);
  // Ends an active canary as rolled_back or aborted, inside the caller's
  // transaction: the record, its experiment (control wins), the candidate
  // archived, audited as canary-rollback / canary-abort.
  Status EndCanaryLocked(const CanaryRecord& c, const std::string& state, const std::string& reason);
  Status StopExperimentLocked(const std::string& id, const std::string& winner, const std::string& detail);
  Status SaveExperimentMetricsLocked(const std::string& id, const std::string& variant, const nlohmann::json& data);

  // Commits `tx` and counts our own write for DataVersion().
  Status Commit(sql::Tx& tx);

  // The stored form of an absolute path (StoredPath against the data dir as
  // given and as resolved through symlinks).
  std::string Stored(const std::string& path) const;

  const Options opts_;
  const std::string actor_;
  const std::string base_dir_;       // the registry file's directory: relative paths are relative to it
  const std::string base_dir_real_;  // it, symlinks resolved (when it exists)
  int max_schema_ = 0;               // set by Open: how far Migrate may go (7 under an older mmsd)
  bool relative_ = false;            // set by Open: paths inside base_dir_ are stored relative
  uint64_t file_dev_ = 0, file_ino_ = 0;  // the opened file's identity (set by Open)
  // An O_PATH descriptor of the opened file, held for the Registry's life:
  // its inode cannot be freed, so no new file at the path (a CLI's fresh
  // registry after a removal) can get its number and pass for it once
  // LetGoOfDetachedFile has closed the database. (Closing an O_PATH
  // descriptor leaves SQLite's POSIX locks alone.) The removed file's
  // blocks stay in use until then.
  int identity_fd_ = -1;
  // Its -wal file's identity, once seen (Open, else the first check after
  // the first write creates it).
  mutable std::atomic<uint64_t> wal_ino_{0};
  mutable std::atomic<uint64_t> shm_ino_{0};  // its -shm's likewise
  std::atomic<bool> let_go_{false};  // LetGoOfDetachedFile closed it: db_ is an empty stand-in
  std::atomic<bool> log_removed_{false};  // let go of for its -wal or -shm (not reopened); written under mu_
  std::atomic<int64_t> own_commits_{0};
  // Recursive only so ReadConsistent can call the public readers inside its
  // one transaction; nothing else re-enters.
  std::recursive_mutex mu_;
  std::unique_ptr<sql::Db> db_;  // guarded by mu_
};

// "$MMS_ACTOR", else "$USER", else the login name of the effective uid.
std::string DefaultActor();

// What a bare model name serves: its production version, else its highest
// version not archived. `versions` are one model's; null when empty or all
// archived (NoDefaultVersion says which, and what to do). (The one place
// this rule lives.)
const VersionRecord* DefaultVersion(const std::vector<VersionRecord>& versions);
Status NoDefaultVersion(const std::string& model, const std::vector<VersionRecord>& versions);

}  // namespace mms
