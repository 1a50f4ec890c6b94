#include "registry/registry.h"

#include "registry/backup.h"

#include <filesystem>
#include <sqlite3.h>

#include <fcntl.h>
#include <pwd.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>

#include "core/paths.h"
#include "core/units.h"
#include "registry/schema.h"
#include "registry/sqlite.h"

namespace mms {

namespace {
// The shortest text that reads back as x: never shown rounded into a range.
std::string ShortestNumber(double x) {
  char buf[64];
  return std::string(buf, std::to_chars(buf, buf + sizeof buf, x).ptr);
}
// A limit as the audit log says it.
std::string LimitText(double qps, double burst) { return ShortestNumber(qps) + " qps, burst " + ShortestNumber(burst); }
// A version's batching settings, as registration and mms model batching take them.
Status ValidateBatching(int max_batch_size, int64_t max_queue_delay_us) {
  if (max_batch_size < 0) return InvalidArgument("max batch size must be 0 (off) or positive");
  if (max_queue_delay_us < 0 || max_queue_delay_us > kMaxQueueDelayUsMax)
    return InvalidArgument("max queue delay " + std::to_string(max_queue_delay_us) +
                           " us is out of range; use 0 (the [scheduler] max_queue_delay default) to " +
                           std::to_string(kMaxQueueDelayUsMax) + " us (10 s), the range of [scheduler] max_queue_delay");
  return Status::Ok();
}
}  // namespace

int RegistrySchemaVersion() { return static_cast<int>(RegistryMigrations().size()); }

std::string DefaultActor() {
  if (const char* a = std::getenv("MMS_ACTOR"); a && *a) return a;
  if (const char* u = std::getenv("USER"); u && *u) return u;
  if (struct passwd* pw = ::getpwuid(::geteuid()); pw && pw->pw_name) return pw->pw_name;
  return "uid:" + std::to_string(::geteuid());
}

nlohmann::json VersionRecord::ToJson() const {
  nlohmann::json j{{"model", model},
                   {"version", version},
                   {"ref", ref()},
                   {"artifact_path", artifact_path},
                   {"format", format},
                   {"size_bytes", size_bytes},
                   {"sha256", sha256},
                   {"created_ms", created_ms},
                   {"created_by", created_by},
                   {"description", description},
                   {"data_fingerprint", data_fingerprint},
                   {"metrics", metrics},
                   {"device_bytes", device_bytes},
                   {"host_bytes", host_bytes},
                   {"sla_p99_ms", sla_p99_ms ? nlohmann::json(*sla_p99_ms) : nlohmann::json(nullptr)},
                   {"stage", StageName(stage)},
                   {"labels", labels},
                   {"aliases", aliases},
                   {"packed", !packed_dir.empty()},
                   {"packed_dir", packed_dir},
                   {"inputs", InputSpecsToJson(inputs)},
                   {"sample_input", !sample_input.empty()},
                   {"max_batch_size", max_batch_size},
                   {"max_queue_delay_us", max_queue_delay_us}};
  if (is_adapter()) {
    j["base"] = base_ref;
    j["adapter"] = lora;
  } else if (lora.contains("stacked")) {
    j["lora_stacked"] = lora["stacked"];
  }
  return j;
}

nlohmann::json AuditEntry::ToJson() const {
  return {{"id", id},         {"ts_ms", ts_ms}, {"actor", actor}, {"action", action}, {"model", model},
          {"version", version}, {"from", from},   {"to", to},       {"detail", detail}};
}

const VersionRecord* DefaultVersion(const std::vector<VersionRecord>& versions) {
  const VersionRecord* best = nullptr;
  auto rank = [](const VersionRecord& v) { return v.stage == Stage::kProduction ? 2 : v.stage != Stage::kArchived ? 1 : 0; };
  for (const auto& v : versions) {
    if (!best || rank(v) > rank(*best) || (rank(v) == rank(*best) && CompareVersions(v.version, best->version) > 0))
      best = &v;
  }
  return best && rank(*best) > 0 ? best : nullptr;
}

Status NoDefaultVersion(const std::string& model, const std::vector<VersionRecord>& versions) {
  if (versions.empty()) return NotFound("model '" + model + "' has no versions");
  const VersionRecord* top = &versions.front();
  for (const auto& v : versions)
    if (CompareVersions(v.version, top->version) > 0) top = &v;
  return NotFound("every version of " + model + " is archived, so the bare name serves none: name a version (" +
                  top->ref() + "), or put one back with mms model stage " + top->ref() + " production");
}

namespace {
// Whether <artifacts>/<model>/ holds a published packed dir (not a staging
// "<stem>.tmp-<pid>" of a registration that never finished).
bool HoldsPackedDirs(const std::string& artifacts) {
  std::error_code ec;
  for (const auto& model : std::filesystem::directory_iterator(artifacts, ec)) {
    std::error_code ec2;
    for (const auto& dir : std::filesystem::directory_iterator(model.path(), ec2)) {
      const std::string name = dir.path().filename().string();  // (a registration's staging dirs are not)
      if (name.find(".tmp-") == std::string::npos && !(name[0] == '.' && name.find(".init-") != std::string::npos))
        return true;
    }
  }
  return false;
}
}  // namespace

std::string StoredPath(const std::string& data_dir, const std::string& path) {
  if (data_dir.empty() || path.size() <= data_dir.size() + 1 || path.compare(0, data_dir.size(), data_dir) != 0 ||
      path[data_dir.size()] != '/')
    return path;
  return path.substr(data_dir.size() + 1);
}

std::string ResolvedPath(const std::string& data_dir, const std::string& stored) {
  if (data_dir.empty() || stored.empty() || stored[0] == '/') return stored;
  return JoinPath(data_dir, stored);
}

namespace {
std::string RealDir(const std::string& dir) {
  auto c = CanonicalPath(dir);
  return c.ok() ? *c : dir;
}

// Whether no mmsd older than schema 8 serves the registry at `path`: its
// lock file is absent or free, or held by an mmsd that wrote
// kRelativePathsMarker. A free lock is held shared in *hold (until the
// caller closes it), so that no daemon starts while the registry migrates.
bool NoOlderDaemon(const std::string& path, int* hold) {
  const std::string lock = path + ".mmsd-lock";
  int fd = ::open(lock.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return true;
  if (::flock(fd, LOCK_SH | LOCK_NB) == 0) {
    *hold = fd;
    return true;
  }
  ::close(fd);
  auto text = ReadFile(lock);
  return text.ok() && ParseDaemonLockFile(*text).relative_paths;
}

}  // namespace

std::string DaemonLockFileText(int64_t pid, const std::string& socket) {
  return std::to_string(pid) + "\n" + socket + "\n" + kRelativePathsMarker + "\n";
}

DaemonLockFile ParseDaemonLockFile(const std::string& text) {
  DaemonLockFile f;
  std::vector<std::string> lines;
  for (size_t at = 0; at < text.size();) {
    size_t nl = text.find('\n', at);
    if (nl == std::string::npos) nl = text.size();
    lines.push_back(text.substr(at, nl - at));
    at = nl + 1;
  }
  if (!lines.empty()) f.pid = lines[0];
  if (lines.size() > 1) f.socket = lines[1];
  f.relative_paths = std::find(lines.begin() + std::min<size_t>(lines.size(), 2), lines.end(),
                               kRelativePathsMarker) != lines.end();
  return f;
}

std::string LegacyCopyRoot(const std::string& dir) {
  auto m = ReadFile(JoinPath(dir, "mms-copy.json"));
  if (!m.ok()) return "";
  auto j = nlohmann::json::parse(*m, nullptr, false);
  if (!j.is_object() || !j.contains("root") || !j["root"].is_string()) return "";
  const std::string root = j["root"].get<std::string>();
  return root != dir && !root.empty() && root[0] == '/' ? root : "";
}

Registry::Registry(Options opts)
    : opts_(std::move(opts)),
      actor_(opts_.actor.empty() ? DefaultActor() : opts_.actor),
      base_dir_(DirName(AbsolutePath(opts_.path))),
      base_dir_real_(RealDir(base_dir_)) {}

std::string Registry::Stored(const std::string& path) const {
  if (!relative_) return path;
  std::string s = StoredPath(base_dir_, path);
  return s != path ? s : StoredPath(base_dir_real_, path);
}
Registry::~Registry() {
  if (identity_fd_ >= 0) ::close(identity_fd_);
}

Registry::BriefWaits::BriefWaits(Registry* r, int64_t ms) : r_(r) {
  r_->mu_.lock();
  sqlite3_busy_timeout(r_->db_->raw(), static_cast<int>(std::min(ms, r_->opts_.busy_timeout_ms)));
}

Registry::BriefWaits::~BriefWaits() {
  sqlite3_busy_timeout(r_->db_->raw(), static_cast<int>(r_->opts_.busy_timeout_ms));
  r_->mu_.unlock();
}

namespace {
// A connection as every Registry has one (Open, and LetGoOfDetachedFile's
// reopen): foreign keys on, commits durable.
Result<std::unique_ptr<sql::Db>> OpenConnection(const std::string& path, bool create, int64_t busy_timeout_ms) {
  MMS_ASSIGN_OR_RETURN(auto db, sql::Db::Open(path, create, busy_timeout_ms));
  MMS_RETURN_IF_ERROR(db->Exec("PRAGMA foreign_keys=ON; PRAGMA synchronous=FULL"));
  return db;
}
}  // namespace

Result<std::unique_ptr<Registry>> Registry::Open(const Options& opts) {
  if (opts.path.empty()) return InvalidArgument("no registry path");
  if (InterruptedCopy(opts.path))  // (said as "the registry file was removed or moved")
    return FailedPrecondition("no registry at " + opts.path + " yet: a restore (or backup) into this data dir was "
                              "interrupted, or is running (" + opts.path + ".copying is there). Run the mms "
                              "restore (or mms backup) that was writing it again to finish it");
  if (!opts.create && !FileExists(opts.path)) return NotFound("no registry at " + opts.path);
  if (opts.create && !opts.artifacts_dir.empty() && !FileExists(opts.path) && HoldsPackedDirs(opts.artifacts_dir))
    return FailedPrecondition("no registry at " + opts.path + ", but " + opts.artifacts_dir +
                              " holds packed weights of registered versions: the registry file was removed or "
                              "moved, or it belongs to another data dir. Restore registry.db (with its -wal "
                              "file, if any) or point --data-dir / [registry] path at it; to start anew, move " +
                              opts.artifacts_dir + " aside first");
  if (opts.create) MMS_RETURN_IF_ERROR(MakeDirs(DirName(opts.path), 0700));
  std::unique_ptr<Registry> r(new Registry(opts));
  MMS_ASSIGN_OR_RETURN(r->db_, OpenConnection(opts.path, opts.create, opts.busy_timeout_ms));
  if (opts.require_writable && sqlite3_db_readonly(r->db_->raw(), "main") == 1) {
    struct statvfs fs;
    if (::statvfs(opts.path.c_str(), &fs) == 0 && (fs.f_flag & ST_RDONLY))
      return IoError("the registry " + opts.path +
                     " is on a file system mounted read-only: mmsd must write to it (serving figures, experiment "
                     "metrics, canary stages); remount it read-write, or point --data-dir ([registry] path) at a "
                     "writable one");
    return IoError("the registry " + opts.path +
                            " is read-only for this user: mmsd must write to it (serving figures, experiment "
                            "metrics, canary stages); give it write access to the file and its directory");
  }
  // Schema 8 (relative paths) only where no older mmsd reads this registry:
  // looked at (and the daemon lock held shared meanwhile) only while a
  // migration is due, so opening a current registry never touches the lock.
  const int newest = static_cast<int>(RegistryMigrations().size());
  r->max_schema_ = newest;
  int hold = -1;
  struct Release {
    int* fd;
    ~Release() {
      if (*fd >= 0) ::close(*fd);
    }
  } release{&hold};
  if (auto uv = r->SchemaVersion(); uv.ok() && *uv < newest && !opts.daemon_lock_held && opts.path != ":memory:" &&
                                    !NoOlderDaemon(opts.path, &hold))
    r->max_schema_ = 7;
  // Migrate reads the header first: a non-database fails with NOTADB, and
  // another application's database is refused before anything changes it
  // (WAL is a persistent property of the file).
  MMS_RETURN_IF_ERROR(r->Migrate());
  // Relative paths: from schema 8, in the default layout (the data dir is the
  // registry file's directory) only, so that every opener reads them alike.
  MMS_ASSIGN_OR_RETURN(int schema, r->SchemaVersion());
  r->relative_ = schema >= 8 && !opts.artifacts_dir.empty() &&
                 RealDir(DirName(opts.artifacts_dir)) == r->base_dir_real_;
  MMS_RETURN_IF_ERROR(r->db_->Exec("PRAGMA journal_mode=WAL"));
  struct stat st;
  if (opts.path != ":memory:") r->identity_fd_ = ::open(opts.path.c_str(), O_PATH | O_CLOEXEC);
  if (r->identity_fd_ >= 0 && ::fstat(r->identity_fd_, &st) == 0) {
    r->file_dev_ = static_cast<uint64_t>(st.st_dev);
    r->file_ino_ = static_cast<uint64_t>(st.st_ino);
  }
  // SQLite keeps the -wal and -shm files while a connection is open (this one).
  if (::stat((opts.path + "-wal").c_str(), &st) == 0) r->wal_ino_ = static_cast<uint64_t>(st.st_ino);
  if (::stat((opts.path + "-shm").c_str(), &st) == 0) r->shm_ino_ = static_cast<uint64_t>(st.st_ino);
  return r;
}

Status Registry::CheckFileIdentity() const {
  if (let_go_ && log_removed_)
    return FailedPrecondition("the registry's -wal or -shm file (" + opts_.path +
                              "-wal, -shm) was removed while in use, and this process let go of the registry: what "
                              "it wrote since its last checkpoint went with the removed file, and it saves nothing "
                              "more. Commands work on the file meanwhile; restart mmsd to open it again");
  if (let_go_)
    return FailedPrecondition("the registry file " + opts_.path +
                              " was removed or replaced while in use, and this process let go of it (its changes "
                              "since are not saved; nothing of it is left to be applied to the file now there). "
                              "Restart mmsd to serve the file at the path, or put the file it opened back");
  struct stat st;
  if (::stat(opts_.path.c_str(), &st) != 0)
    return FailedPrecondition("the registry file " + opts_.path +
                              " was removed while in use: this process keeps the file it opened, which no other "
                              "command sees (registrations and stage changes made now go elsewhere). Put the file "
                              "back (with its -wal file), or restart mmsd");
  if (static_cast<uint64_t>(st.st_dev) != file_dev_ || static_cast<uint64_t>(st.st_ino) != file_ino_)
    return FailedPrecondition("the registry file " + opts_.path +
                              " was replaced while in use (moved, or a copy put in its place): this process keeps "
                              "the file it opened, which no other command sees. Restart mmsd to use the new file");
  // Its -wal or -shm (the log's shared index) removed or replaced under it:
  // what this process commits goes where no other command reads it.
  for (auto [suffix, ino] : {std::pair<const char*, std::atomic<uint64_t>*>{"-wal", &wal_ino_}, {"-shm", &shm_ino_}}) {
    const bool there = ::stat((opts_.path + suffix).c_str(), &st) == 0;
    if (there && *ino == 0) *ino = static_cast<uint64_t>(st.st_ino);
    if (*ino != 0 && (!there || static_cast<uint64_t>(st.st_ino) != *ino))
      return FailedPrecondition("the registry's " + std::string(suffix) + " file " + opts_.path + suffix +
                                " was removed or replaced while in use: what this process commits goes where no "
                                "other command reads it (mmsd lets go of the registry at its next poll; restart it "
                                "to open it again)");
  }
  return Status::Ok();
}

Result<bool> Registry::LetGoOfDetachedFile() {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  struct stat st;
  auto ours_at_path = [&] {
    return ::stat(opts_.path.c_str(), &st) == 0 && static_cast<uint64_t>(st.st_dev) == file_dev_ &&
           static_cast<uint64_t>(st.st_ino) == file_ino_;
  };
  if (!let_go_) {
    log_removed_ = ours_at_path();
    // The file it opened replaced at the path: its log there would be taken
    // by the new file's next opener for its own. Checkpointed (into the
    // file it opened, which no one else has) and emptied first. Where the
    // file is still ours and only its -wal (or -shm) went, no checkpoint:
    // the shared index may map another process's frames by then, and
    // backfilling from this connection's log would write them wrong (a
    // review, stop 29). What it wrote since its last checkpoint is lost
    // with the removed log.
    if (!log_removed_) {
      MMS_ASSIGN_OR_RETURN(auto ckpt, db_->Prepare("PRAGMA wal_checkpoint(TRUNCATE)"));
      (void)ckpt.Step();  // busy: its log stays; nothing better can be done
    }
    // Closed first, with no checkpoint and no removal of the -wal and -shm
    // at the path (a last connection's close does both, and they may be
    // another process's by now); in one process SQLite shares an inode's
    // shared index between connections, so the new one below must not
    // meet this one's.
    sqlite3_db_config(db_->raw(), SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, nullptr);
    db_.reset();
    MMS_ASSIGN_OR_RETURN(db_, sql::Db::Open(":memory:", /*create=*/true, opts_.busy_timeout_ms));
    let_go_ = true;
  }
  // The file it opened is back at the path (moved away and back): opened
  // again, as every process opens it. Not where its -wal or -shm went: the
  // log and index at the path are in a state only a process of its own can
  // set right (a fresh opener that finds no other holding them recovers
  // them from the file; one opened beside them here met a stale index and
  // failed every read) — mmsd is restarted for that.
  if (log_removed_ || !ours_at_path()) return false;
  MMS_ASSIGN_OR_RETURN(auto again, OpenConnection(opts_.path, /*create=*/false, opts_.busy_timeout_ms));
  MMS_RETURN_IF_ERROR(again->Exec("PRAGMA journal_mode=WAL"));
  db_ = std::move(again);
  wal_ino_ = ::stat((opts_.path + "-wal").c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_ino) : 0;
  shm_ino_ = ::stat((opts_.path + "-shm").c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_ino) : 0;
  let_go_ = false;
  return true;
}

Status Registry::ReadConsistent(const std::function<Status()>& fn) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  MMS_RETURN_IF_ERROR(db_->Exec("BEGIN"));  // deferred: the first read fixes the snapshot (WAL)
  Status st = Status::Ok();
  try {
    st = fn();
  } catch (...) {
    (void)db_->Exec("ROLLBACK");  // never leave the connection inside BEGIN
    throw;
  }
  Status end = db_->Exec(st.ok() ? "COMMIT" : "ROLLBACK");
  return st.ok() ? end : st;
}

Result<int> Registry::SchemaVersion() {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  auto st = db_->Prepare("PRAGMA user_version");
  if (!st.ok()) return st.status();
  auto row = st->Step();
  if (!row.ok()) return row.status();
  return static_cast<int>(st->Int(0));
}

Status Registry::Migrate() {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  const auto& migrations = RegistryMigrations();
  auto read_header = [&](int* user_version, int* app_id, int* tables) -> Status {
    MMS_ASSIGN_OR_RETURN(auto uv, db_->Prepare("PRAGMA user_version"));
    MMS_ASSIGN_OR_RETURN(bool r1, uv.Step());
    *user_version = r1 ? static_cast<int>(uv.Int(0)) : 0;
    MMS_ASSIGN_OR_RETURN(auto ai, db_->Prepare("PRAGMA application_id"));
    MMS_ASSIGN_OR_RETURN(bool r2, ai.Step());
    *app_id = r2 ? static_cast<int>(ai.Int(0)) : 0;
    MMS_ASSIGN_OR_RETURN(auto tc, db_->Prepare("SELECT count(*) FROM sqlite_master"));
    MMS_ASSIGN_OR_RETURN(bool r3, tc.Step());
    *tables = r3 ? static_cast<int>(tc.Int(0)) : 0;
    return Status::Ok();
  };
  auto check = [&](int uv, int app, int tables) -> Status {
    if (app != 0 && app != kRegistryApplicationId)
      return Corrupt(opts_.path + " is an SQLite database of another application, not an mms registry");
    if (app == 0 && tables > 0)
      return Corrupt(opts_.path + " is an SQLite database but not an mms registry (no mms marker)");
    if (uv > static_cast<int>(migrations.size()))
      return FailedPrecondition("registry " + opts_.path + " has schema version " + std::to_string(uv) +
                                ", newer than this mms understands (" + std::to_string(migrations.size()) +
                                "); upgrade mms");
    return Status::Ok();
  };
  int uv, app, tables;
  MMS_RETURN_IF_ERROR(read_header(&uv, &app, &tables));
  MMS_RETURN_IF_ERROR(check(uv, app, tables));
  const int target = std::min(max_schema_, static_cast<int>(migrations.size()));
  if (uv >= target) return Status::Ok();
  MMS_ASSIGN_OR_RETURN(auto tx, sql::Tx::Begin(db_.get()));
  // Another process may have migrated while we waited for the write lock.
  MMS_RETURN_IF_ERROR(read_header(&uv, &app, &tables));
  MMS_RETURN_IF_ERROR(check(uv, app, tables));
  if (uv >= target) return Status::Ok();
  for (int v = uv; v < target; ++v) {
    if (Status st = db_->Exec(migrations[v]); !st.ok())
      return st.WithContext("migrating registry to schema " + std::to_string(v + 1));
  }
  // Schema 8: the data dir's own files, stored relative to it from now on —
  // spelt as this opener reaches it, or under the root an older copy (mms
  // backup) recorded before it moved. Paths elsewhere stay as they are.
  if (uv < 8 && target >= 8 && !opts_.artifacts_dir.empty() &&
      RealDir(DirName(opts_.artifacts_dir)) == base_dir_real_)
    for (const std::string& dir : {base_dir_, base_dir_real_, LegacyCopyRoot(base_dir_)}) {
      if (dir.empty()) continue;
      for (const char* col : {"artifact_path", "packed_dir", "sample_input"}) {
        const std::string c = col;
        MMS_ASSIGN_OR_RETURN(auto st, db_->Prepare("UPDATE versions SET " + c + " = substr(" + c +
                                                   ", length(?1) + 2) WHERE length(" + c + ") > length(?1) + 1 AND "
                                                   "substr(" + c + ", 1, length(?1) + 1) = ?1 || '/'"));
        st.Bind(1, dir);
        if (Status s = st.Run(); !s.ok()) return s.WithContext("migrating registry to schema 8");
      }
    }
  MMS_RETURN_IF_ERROR(db_->Exec("PRAGMA user_version=" + std::to_string(target) +
                                "; PRAGMA application_id=" + std::to_string(kRegistryApplicationId)));
  return Commit(tx);
}

Status Registry::CheckArtifactPath(const std::string& canonical) const {
  if (opts_.allowed_roots.empty()) return Status::Ok();
  for (const auto& root : opts_.allowed_roots) {
    auto r = CanonicalPath(root);
    std::string base = r.ok() ? *r : root;
    if (canonical == base || canonical.compare(0, base.size() + 1, base + "/") == 0) return Status::Ok();
  }
  std::string roots;
  for (const auto& r : opts_.allowed_roots) roots += (roots.empty() ? "" : ", ") + r;
  return InvalidArgument("artifact " + canonical + " is outside [registry] allowed_roots (" + roots +
                         "); move it under one of them or extend allowed_roots");
}

// ---------------------------------------------------------------------------
// Reading versions

namespace {
constexpr const char* kVersionColumns =
    "SELECT v.id, m.name, v.version, v.artifact_path, v.format, v.size_bytes, v.sha256, v.created_ms, "
    "v.created_by, v.description, v.data_fingerprint, v.metrics_json, v.device_bytes, v.host_bytes, "
    "v.sla_p99_ms, v.stage, v.packed_dir, v.inputs_json, v.sample_input, v.max_batch_size, v.max_queue_delay_us, "
    "COALESCE(v.base_id, 0), v.lora_json, "
    "COALESCE((SELECT bm.name || ':' || b.version FROM versions b JOIN models bm ON bm.id = b.model_id "
    "WHERE b.id = v.base_id), '') "
    "FROM versions v JOIN models m ON m.id = v.model_id ";

VersionRecord RowToRecord(const sql::Stmt& s) {
  VersionRecord r;
  r.id = s.Int(0);
  r.model = s.Text(1);
  r.version = s.Text(2);
  r.artifact_path = s.Text(3);
  r.format = s.Text(4);
  r.size_bytes = static_cast<uint64_t>(s.Int(5));
  r.sha256 = s.Text(6);
  r.created_ms = s.Int(7);
  r.created_by = s.Text(8);
  r.description = s.Text(9);
  r.data_fingerprint = s.Text(10);
  r.metrics = nlohmann::json::parse(s.Text(11), nullptr, false);
  if (r.metrics.is_discarded()) r.metrics = nlohmann::json::object();
  r.device_bytes = static_cast<uint64_t>(s.Int(12));
  r.host_bytes = static_cast<uint64_t>(s.Int(13));
  if (!s.IsNull(14)) r.sla_p99_ms = s.Double(14);
  r.stage = ParseStage(s.Text(15)).ok() ? *ParseStage(s.Text(15)) : Stage::kNone;
  r.packed_dir = s.Text(16);
  r.inputs = InputSpecsFromJson(nlohmann::json::parse(s.Text(17), nullptr, false));
  r.sample_input = s.Text(18);
  r.max_batch_size = static_cast<int>(s.Int(19));
  r.max_queue_delay_us = s.Int(20);
  r.base_id = s.Int(21);
  r.lora = nlohmann::json::parse(s.Text(22), nullptr, false);
  if (!r.lora.is_object()) r.lora = nlohmann::json::object();
  r.base_ref = s.Text(23);
  return r;
}
}  // namespace

Result<std::vector<VersionRecord>> Registry::QueryVersions(const std::string& where,
                                                           const std::vector<std::string>& args) {
  MMS_ASSIGN_OR_RETURN(std::vector<VersionRecord> out,
                       sql::Collect<VersionRecord>(db_.get(), std::string(kVersionColumns) + where, args, RowToRecord));
  for (auto& r : out) {
    r.artifact_path = ResolvedPath(base_dir_, r.artifact_path);
    r.packed_dir = ResolvedPath(base_dir_, r.packed_dir);
    r.sample_input = ResolvedPath(base_dir_, r.sample_input);
    MMS_ASSIGN_OR_RETURN(auto ls, db_->Prepare("SELECT key, value FROM labels WHERE version_id = ? ORDER BY key"));
    ls.Bind(1, r.id);
    while (true) {
      MMS_ASSIGN_OR_RETURN(bool row, ls.Step());
      if (!row) break;
      r.labels[ls.Text(0)] = ls.Text(1);
    }
    MMS_ASSIGN_OR_RETURN(auto as, db_->Prepare("SELECT alias FROM aliases WHERE version_id = ? ORDER BY alias"));
    as.Bind(1, r.id);
    while (true) {
      MMS_ASSIGN_OR_RETURN(bool row, as.Step());
      if (!row) break;
      r.aliases.push_back(as.Text(0));
    }
  }
  return out;
}

Result<int64_t> Registry::ModelId(const std::string& name) {
  MMS_ASSIGN_OR_RETURN(auto st, db_->Prepare("SELECT id FROM models WHERE name = ?"));
  st.Bind(1, name);
  MMS_ASSIGN_OR_RETURN(bool row, st.Step());
  if (row) return st.Int(0);
  std::vector<std::string> names;
  MMS_ASSIGN_OR_RETURN(auto all, db_->Prepare("SELECT name FROM models ORDER BY name"));
  while (true) {
    MMS_ASSIGN_OR_RETURN(bool r, all.Step());
    if (!r) break;
    names.push_back(all.Text(0));
  }
  std::string hint = ClosestMatch(name, names);
  return NotFound("unknown model '" + name + "'" + (hint.empty() ? "" : "; did you mean '" + hint + "'?") +
                  (names.empty() ? " (the registry is empty; add one with mms model register)" : ""));
}

Result<VersionRecord> Registry::ResolveLocked(const Ref& ref) {
  MMS_ASSIGN_OR_RETURN(int64_t mid, ModelId(ref.name));
  std::string id = std::to_string(mid);
  std::vector<VersionRecord> found;
  switch (ref.kind) {
    case Ref::Kind::kVersion: {
      MMS_ASSIGN_OR_RETURN(found, QueryVersions("WHERE v.model_id = ? AND v.version = ?", {id, ref.version}));
      if (found.empty()) {
        MMS_ASSIGN_OR_RETURN(auto all, QueryVersions("WHERE v.model_id = ? ORDER BY v.sort_key", {id}));
        std::string versions;
        for (const auto& v : all) versions += (versions.empty() ? "" : ", ") + v.version;
        return NotFound("unknown version " + ref.ToString() + "; " + ref.name + " has " +
                        (versions.empty() ? "no versions" : "versions " + versions));
      }
      break;
    }
    case Ref::Kind::kAlias: {
      MMS_ASSIGN_OR_RETURN(found, QueryVersions("JOIN aliases a ON a.version_id = v.id "
                                                "WHERE a.model_id = ? AND a.alias = ?",
                                                {id, ref.alias}));
      if (found.empty()) {
        MMS_ASSIGN_OR_RETURN(auto st, db_->Prepare("SELECT alias FROM aliases WHERE model_id = ? ORDER BY alias"));
        st.Bind(1, mid);
        std::string aliases;
        while (true) {
          MMS_ASSIGN_OR_RETURN(bool row, st.Step());
          if (!row) break;
          aliases += (aliases.empty() ? "" : ", ") + st.Text(0);
        }
        return NotFound("unknown alias " + ref.ToString() + "; " + ref.name + " has " +
                        (aliases.empty() ? "no aliases" : "aliases " + aliases));
      }
      break;
    }
    case Ref::Kind::kName: {
      MMS_ASSIGN_OR_RETURN(auto all, QueryVersions("WHERE v.model_id = ?", {id}));
      const VersionRecord* def = DefaultVersion(all);
      if (!def) return NoDefaultVersion(ref.name, all);
      found.push_back(*def);
      break;
    }
  }
  return found.front();
}

Result<VersionRecord> Registry::Resolve(const Ref& ref) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  return ResolveLocked(ref);
}

Result<VersionRecord> Registry::Resolve(const std::string& ref) {
  MMS_ASSIGN_OR_RETURN(Ref r, ParseRef(ref));
  return Resolve(r);
}

Result<std::vector<VersionRecord>> Registry::List(const std::string& model, std::optional<Stage> stage) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  std::string where = "WHERE 1=1";
  std::vector<std::string> args;
  if (!model.empty()) {
    MMS_RETURN_IF_ERROR(ModelId(model).status());
    where += " AND m.name = ?";
    args.push_back(model);
  }
  if (stage) {
    where += " AND v.stage = ?";
    args.push_back(StageName(*stage));
  }
  return QueryVersions(where + " ORDER BY m.name, v.sort_key", args);
}

Result<std::vector<std::string>> Registry::ModelNames() {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  MMS_ASSIGN_OR_RETURN(auto st, db_->Prepare("SELECT DISTINCT m.name FROM models m JOIN versions v ON v.model_id = m.id ORDER BY m.name"));
  std::vector<std::string> out;
  while (true) {
    MMS_ASSIGN_OR_RETURN(bool row, st.Step());
    if (!row) break;
    out.push_back(st.Text(0));
  }
  return out;
}

// ---------------------------------------------------------------------------
// Writing

Status Registry::AuditLocked(const std::string& action, const std::string& model, const std::string& version,
                             const std::string& from, const std::string& to, const std::string& detail) {
  MMS_ASSIGN_OR_RETURN(auto st, db_->Prepare("INSERT INTO audit (ts_ms, actor, action, model, version, from_value, "
                                             "to_value, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"));
  st.Bind(1, opts_.clock->UnixMillis()).Bind(2, actor_).Bind(3, action).Bind(4, model).Bind(5, version);
  st.Bind(6, from).Bind(7, to).Bind(8, detail);
  return st.Run();
}

Status Registry::Audit(const std::string& action, const std::string& model, const std::string& version,
                       const std::string& from, const std::string& to, const std::string& detail) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  MMS_RETURN_IF_ERROR(AuditLocked(action, model, version, from, to, detail));
  own_commits_.fetch_add(1);
  return Status::Ok();
}

Result<VersionRecord> Registry::Register(const NewVersion& v) {
  MMS_RETURN_IF_ERROR(ValidateName(v.model));
  MMS_RETURN_IF_ERROR(ValidateVersion(v.version));
  if (v.artifact_path.empty() || v.artifact_path[0] != '/')
    return InvalidArgument("artifact path must be absolute and canonical: '" + v.artifact_path + "'");
  MMS_RETURN_IF_ERROR(CheckArtifactPath(v.artifact_path));
  for (const auto& [k, val] : v.labels) {
    if (k.empty()) return InvalidArgument("label keys must not be empty (use --label key=value)");
    (void)val;
  }
  MMS_RETURN_IF_ERROR(ValidateBatching(v.max_batch_size, v.max_queue_delay_us));
  std::lock_guard<std::recursive_mutex> lock(mu_);
  MMS_ASSIGN_OR_RETURN(auto tx, sql::Tx::Begin(db_.get()));
  {
    MMS_ASSIGN_OR_RETURN(auto st, db_->Prepare("INSERT OR IGNORE INTO models (name, created_ms) VALUES (?, ?)"));
    st.Bind(1, v.model).Bind(2, opts_.clock->UnixMillis());
    MMS_RETURN_IF_ERROR(st.Run());
  }
  MMS_ASSIGN_OR_RETURN(int64_t mid, ModelId(v.model));
  {
    MMS_ASSIGN_OR_RETURN(auto dup, QueryVersions("WHERE v.model_id = ? AND v.version = ?", {std::to_string(mid), v.version}));
    if (!dup.empty())
      return AlreadyExists(v.model + ":" + v.version + " is already registered (by " + dup[0].created_by +
                           ", sha256 " + dup[0].sha256.substr(0, 12) + "); register a new version number");
    // One kind per name: a bare name must not switch between a model and an
    // adapter (and so between inputs) with the next registration.
    MMS_ASSIGN_OR_RETURN(auto other, QueryVersions("WHERE v.model_id = ? AND v.format != ?",
                                                   {std::to_string(mid), v.base_id ? "lora" : "torchscript"}));
    if (!other.empty())
      return InvalidArgument(v.model + " is " + (v.base_id ? "a model" : "a LoRA adapter") + " (" + other[0].ref() +
                             "); register this " + (v.base_id ? "adapter" : "model") +
                             " under a name of its own: a name is one or the other");
  }
  if (v.base_id) {
    MMS_ASSIGN_OR_RETURN(auto base, QueryVersions("WHERE v.id = ?", {std::to_string(v.base_id)}));
    if (base.empty()) return NotFound("the adapter's base version no longer exists");
    if (base[0].is_adapter())
      return InvalidArgument(base[0].ref() + " is itself an adapter; an adapter's base is a model version");
  }
  MMS_ASSIGN_OR_RETURN(auto ins, db_->Prepare(
      "INSERT INTO versions (id, model_id, version, sort_key, artifact_path, format, size_bytes, sha256, created_ms, "
      "created_by, description, data_fingerprint, metrics_json, device_bytes, host_bytes, sla_p99_ms, packed_dir, "
      "inputs_json, sample_input, max_batch_size, max_queue_delay_us, base_id, lora_json) "
      "VALUES ((SELECT next FROM id_floor WHERE name = 'versions'), "  // never a removed version's id
      "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"));
  ins.Bind(1, mid).Bind(2, v.version).Bind(3, VersionSortKey(v.version)).Bind(4, Stored(v.artifact_path));
  ins.Bind(5, v.base_id ? "lora" : "torchscript");
  ins.Bind(6, v.size_bytes).Bind(7, v.sha256).Bind(8, opts_.clock->UnixMillis()).Bind(9, actor_);
  ins.Bind(10, v.description).Bind(11, v.data_fingerprint).Bind(12, v.metrics.dump());
  ins.Bind(13, v.device_bytes).Bind(14, v.host_bytes).Bind(15, v.sla_p99_ms).Bind(16, Stored(v.packed_dir));
  ins.Bind(17, InputSpecsToJson(v.inputs).dump()).Bind(18, Stored(v.sample_input)).Bind(19, v.max_batch_size);
  ins.Bind(20, v.max_queue_delay_us);
  ins.Bind(21, v.base_id ? std::optional<int64_t>(v.base_id) : std::nullopt).Bind(22, v.lora.dump());
  MMS_RETURN_IF_ERROR(ins.Run());
  int64_t vid = db_->LastInsertId();
  for (const auto& [k, val] : v.labels) {
    MMS_ASSIGN_OR_RETURN(auto ls, db_->Prepare("INSERT INTO labels (version_id, key, value) VALUES (?, ?, ?)"));
    ls.Bind(1, vid).Bind(2, k).Bind(3, val);
    MMS_RETURN_IF_ERROR(ls.Run());
  }
  MMS_RETURN_IF_ERROR(AuditLocked("register", v.model, v.version, "", "none",
                                  "sha256 " + v.sha256 + ", " + FormatBytes(v.size_bytes) + ", " + v.artifact_path));
  MMS_RETURN_IF_ERROR(Commit(tx));
  return ResolveLocked(Ref{Ref::Kind::kVersion, v.model, v.version, ""});
}

Result<VersionRecord> Registry::SetStageLocked(const Ref& ref, Stage stage, const std::string& reason,
                                               std::vector<std::string>* archived) {
  MMS_ASSIGN_OR_RETURN(VersionRecord rec, ResolveLocked(ref));
  if (rec.stage == stage) return rec;
  if (stage == Stage::kProduction) {
    MMS_ASSIGN_OR_RETURN(auto prod, QueryVersions("WHERE m.name = ? AND v.stage = 'production'", {rec.model}));
    for (const auto& p : prod) {
      MMS_ASSIGN_OR_RETURN(auto up, db_->Prepare("UPDATE versions SET stage = 'archived' WHERE id = ?"));
      up.Bind(1, p.id);
      MMS_RETURN_IF_ERROR(up.Run());
      MMS_RETURN_IF_ERROR(AuditLocked("stage", p.model, p.version, "production", "archived",
                                      "replaced in production by " + rec.ref()));
      if (archived) archived->push_back(p.ref());
    }
  }
  MMS_ASSIGN_OR_RETURN(auto up, db_->Prepare("UPDATE versions SET stage = ? WHERE id = ?"));
  up.Bind(1, StageName(stage)).Bind(2, rec.id);
  MMS_RETURN_IF_ERROR(up.Run());
  MMS_RETURN_IF_ERROR(AuditLocked("stage", rec.model, rec.version, StageName(rec.stage), StageName(stage), reason));
  return ResolveLocked(Ref{Ref::Kind::kVersion, rec.model, rec.version, ""});
}

Result<VersionRecord> Registry::SetStage(const Ref& ref, Stage stage, const std::string& reason,
                                         std::vector<std::string>* archived) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  MMS_ASSIGN_OR_RETURN(auto tx, sql::Tx::Begin(db_.get()));
  // A canary owns its model's production version and its candidate until it
  // ends: a change by hand would be overridden by its promotion or rollback
  // (archiving what was just promoted, or leaving no production version).
  MMS_ASSIGN_OR_RETURN(VersionRecord target, ResolveLocked(ref));
  MMS_ASSIGN_OR_RETURN(auto canaries, QueryCanaries("WHERE m.name = ? AND c.state IN ('running', 'paused')", {target.model}));
  for (const auto& c : canaries)
    if (stage == Stage::kProduction || target.stage == Stage::kProduction || target.version == c.candidate_version ||
        target.version == c.baseline_version)
      return InUse("a canary of " + c.model + ":" + c.candidate_version + " against " + c.model + ":" +
                   c.baseline_version + " is " + c.state + " and decides " + c.model +
                   "'s production version; end it first with mms canary promote " + c.model + " or mms canary abort " +
                   c.model);
  MMS_ASSIGN_OR_RETURN(VersionRecord rec, SetStageLocked(ref, stage, reason, archived));
  MMS_RETURN_IF_ERROR(Commit(tx));
  return rec;
}

Result<VersionRecord> Registry::SetPackedDir(const Ref& ref, const std::string& old_packed_dir,
                                             const std::string& packed_dir, const std::string& sample_input,
                                             const std::vector<InputSpec>& inputs, int max_batch_size) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  MMS_ASSIGN_OR_RETURN(auto tx, sql::Tx::Begin(db_.get()));
  MMS_ASSIGN_OR_RETURN(VersionRecord rec, ResolveLocked(ref));
  MMS_ASSIGN_OR_RETURN(auto up, db_->Prepare("UPDATE versions SET packed_dir = ?, sample_input = ?, inputs_json = ? "
                                             "WHERE id = ? AND packed_dir IN (?, ?) AND max_batch_size = ?"));
  up.Bind(1, Stored(packed_dir)).Bind(2, Stored(sample_input)).Bind(3, InputSpecsToJson(inputs).dump()).Bind(4, rec.id);
  up.Bind(5, old_packed_dir).Bind(6, Stored(old_packed_dir));  // (stored absolute by an older mms)
  up.Bind(7, max_batch_size);
  MMS_RETURN_IF_ERROR(up.Run());
  if (db_->Changes() == 0)
    return Conflict(rec.ref() + " was changed meanwhile (repacked, removed, or its batching changed); try again");
  std::string detail = "packed files written anew from " + rec.artifact_path;
  if (!SameEnforcedInputs(rec.inputs, inputs))
    detail += "; inputs " + InputSpecsText(rec.inputs) + " -> " + InputSpecsText(inputs);
  MMS_RETURN_IF_ERROR(AuditLocked("repack", rec.model, rec.version, old_packed_dir, packed_dir, detail));
  MMS_RETURN_IF_ERROR(Commit(tx));
  return ResolveLocked(Ref{Ref::Kind::kVersion, rec.model, rec.version, ""});
}

Result<VersionRecord> Registry::SetBatching(const VersionRecord& checked, int max_batch_size,
                                            int64_t max_queue_delay_us) {
  MMS_RETURN_IF_ERROR(ValidateBatching(max_batch_size, max_queue_delay_us));
  std::lock_guard<std::recursive_mutex> lock(mu_);
  MMS_ASSIGN_OR_RETURN(auto tx, sql::Tx::Begin(db_.get()));
  MMS_ASSIGN_OR_RETURN(VersionRecord rec, ResolveLocked(Ref{Ref::Kind::kVersion, checked.model, checked.version, ""}));
  if (rec.id != checked.id || rec.sha256 != checked.sha256)
    return Conflict(rec.ref() + " was removed and registered again meanwhile; try again");
  if (rec.is_adapter())
    return InvalidArgument(rec.ref() + " is a LoRA adapter: it runs in its base's batches, so set batching on its "
                           "base version");
  if (max_batch_size > 0 && rec.sample_input != checked.sample_input)
    return Conflict(rec.ref() + " was repacked meanwhile (its sample input changed); try again");
  if (rec.max_batch_size == max_batch_size && rec.max_queue_delay_us == max_queue_delay_us) return rec;
  MMS_ASSIGN_OR_RETURN(auto up, db_->Prepare("UPDATE versions SET max_batch_size = ?, max_queue_delay_us = ? WHERE id = ?"));
  up.Bind(1, max_batch_size).Bind(2, max_queue_delay_us).Bind(3, rec.id);
  MMS_RETURN_IF_ERROR(up.Run());
  auto said = [](int rows, int64_t us) {
    return rows == 0 ? std::string("off")
                     : std::to_string(rows) + " rows, delay " + (us ? std::to_string(us) + " us" : "default");
  };
  MMS_RETURN_IF_ERROR(AuditLocked("batching", rec.model, rec.version, said(rec.max_batch_size, rec.max_queue_delay_us),
                                  said(max_batch_size, max_queue_delay_us), "dynamic batching"));
  MMS_RETURN_IF_ERROR(Commit(tx));
  return ResolveLocked(Ref{Ref::Kind::kVersion, rec.model, rec.version, ""});
}

Status Registry::SetAlias(const std::string& model, const std::string& alias, const std::string& version) {
  MMS_RETURN_IF_ERROR(ValidateName(model));
  MMS_RETURN_IF_ERROR(ValidateName(alias, "alias"));
  MMS_RETURN_IF_ERROR(ValidateVersion(version));
  std::lock_guard<std::recursive_mutex> lock(mu_);
  MMS_ASSIGN_OR_RETURN(auto tx, sql::Tx::Begin(db_.get()));
  MMS_ASSIGN_OR_RETURN(VersionRecord rec, ResolveLocked(Ref{Ref::Kind::kVersion, model, version, ""}));
  std::string old;
  {
    MMS_ASSIGN_OR_RETURN(auto cur, QueryVersions("JOIN aliases a ON a.version_id = v.id WHERE m.name = ? AND a.alias = ?",
                                                 {model, alias}));
    if (!cur.empty()) old = cur[0].version;
  }
  if (old == version) return Status::Ok();
  MMS_ASSIGN_OR_RETURN(int64_t mid, ModelId(model));
  MMS_ASSIGN_OR_RETURN(auto st, db_->Prepare("INSERT INTO aliases (model_id, alias, version_id) VALUES (?, ?, ?) "
                                             "ON CONFLICT (model_id, alias) DO UPDATE SET version_id = excluded.version_id"));
  st.Bind(1, mid).Bind(2, alias).Bind(3, rec.id);
  MMS_RETURN_IF_ERROR(st.Run());
  MMS_RETURN_IF_ERROR(AuditLocked("alias-set", model, version, old, version, "alias " + alias));
  return Commit(tx);
}

Status Registry::RemoveAlias(const std::string& model, const std::string& alias) {
  MMS_RETURN_IF_ERROR(ValidateName(model));
  MMS_RETURN_IF_ERROR(ValidateName(alias, "alias"));
  std::lock_guard<std::recursive_mutex> lock(mu_);
  MMS_ASSIGN_OR_RETURN(auto tx, sql::Tx::Begin(db_.get()));
  MMS_ASSIGN_OR_RETURN(VersionRecord rec, ResolveLocked(Ref{Ref::Kind::kAlias, model, "", alias}));
  MMS_ASSIGN_OR_RETURN(int64_t mid, ModelId(model));
  MMS_ASSIGN_OR_RETURN(auto st, db_->Prepare("DELETE FROM aliases WHERE model_id = ? AND alias = ?"));
  st.Bind(1, mid).Bind(2, alias);
  MMS_RETURN_IF_ERROR(st.Run());
  MMS_RETURN_IF_ERROR(AuditLocked("alias-rm", model, rec.version, rec.version, "", "alias " + alias));
  return Commit(tx);
}

Result<std::vector<std::string>> Registry::UsesOfLocked(const VersionRecord& v) {
  std::vector<std::string> uses;
  if (v.stage == Stage::kProduction) uses.push_back("it is the production version");
  MMS_ASSIGN_OR_RETURN(auto pins, db_->Prepare("SELECT p.version_id FROM pins p JOIN models m ON m.id = p.model_id "
                                               "WHERE m.name = ?"));
  pins.Bind(1, v.model);
  while (true) {
    MMS_ASSIGN_OR_RETURN(bool row, pins.Step());
    if (!row) break;
    if (!pins.IsNull(0) && pins.Int(0) == v.id) {
      uses.push_back("pinned (mms unpin " + v.ref() + ")");
    } else if (pins.IsNull(0)) {
      // A name-pin covers the version the name serves (none when every
      // version is archived).
      auto def = ResolveLocked(Ref{Ref::Kind::kName, v.model, "", ""});
      if (!def.ok() && def.status().code() != Code::kNotFound) return def.status();
      if (def.ok() && def->id == v.id) uses.push_back("pinned as " + v.model + " (mms unpin " + v.model + ")");
    }
  }
  MMS_ASSIGN_OR_RETURN(auto exps, QueryExperiments("WHERE e.state != 'stopped' AND (e.control_id = ? OR e.treatment_id = ?)",
                                                   {std::to_string(v.id), std::to_string(v.id)}));
  for (const auto& e : exps)
    uses.push_back((e.kind == "canary" ? "canary '" : "experiment '") + e.id + "' (" +
                   (e.control_id == v.id ? "control" : e.kind == "canary" ? "candidate" : "treatment") + ")");
  MMS_ASSIGN_OR_RETURN(auto shadows, QueryShadows("WHERE s.state = 'running' AND s.candidate_id = ?", {std::to_string(v.id)}));
  for (const auto& s : shadows) uses.push_back("shadow run of " + s.model + " (mms shadow stop " + s.model + ")");
  MMS_ASSIGN_OR_RETURN(auto adapters, QueryVersions("WHERE v.base_id = ?", {std::to_string(v.id)}));
  for (const auto& a : adapters) uses.push_back("the base of adapter " + a.ref() + " (mms adapter rm " + a.ref() + ")");
  return uses;
}

Result<std::vector<std::string>> Registry::UsesOf(const VersionRecord& v) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  return UsesOfLocked(v);
}

Result<VersionRecord> Registry::Remove(const Ref& ref, bool force) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  MMS_ASSIGN_OR_RETURN(auto tx, sql::Tx::Begin(db_.get()));
  MMS_ASSIGN_OR_RETURN(VersionRecord rec, ResolveLocked(ref));
  // A bare name stands for whatever it serves now; removing that by accident
  // would move the traffic silently. Removal names its version.
  if (ref.kind == Ref::Kind::kName)
    return InvalidArgument(
        "'" + ref.name + "' names a model, not a version (it serves " + rec.ref() +
        "); remove a version by NAME:VERSION or NAME@ALIAS, " +
        (rec.stage == Stage::kProduction  // (that one is refused: no example of it)
             ? "as listed by mms " + std::string(rec.is_adapter() ? "adapter" : "model") + " list " + ref.name +
                   " (" + rec.ref() + " is production: stage another version production before removing it)"
             : "e.g. mms " + std::string(rec.is_adapter() ? "adapter" : "model") + " rm " + rec.ref()));
  MMS_ASSIGN_OR_RETURN(auto uses, UsesOfLocked(rec));
  MMS_ASSIGN_OR_RETURN(auto adapters, QueryVersions("WHERE v.base_id = ?", {std::to_string(rec.id)}));
  if (!adapters.empty())  // even forced: an adapter cannot outlive its base
    return InUse(rec.ref() + " is the base of " + std::to_string(adapters.size()) + " adapter(s), e.g. " +
                 adapters.front().ref() + "; remove them first (mms adapter rm)");
  if (!uses.empty() && !force) {
    std::string list;
    for (const auto& u : uses) list += (list.empty() ? "" : "; ") + u;
    return InUse(rec.ref() + " is in use: " + list + ". Release it first, or use --force");
  }
  // Forced: a canary using the version (its candidate or its production
  // baseline) is aborted as `mms canary abort` would: the candidate archived.
  MMS_ASSIGN_OR_RETURN(auto canaries, QueryCanaries("WHERE c.state IN ('running', 'paused') AND c.experiment_id IN "
                                                    "(SELECT id FROM experiments WHERE treatment_id = ? OR control_id = ?)",
                                                    {std::to_string(rec.id), std::to_string(rec.id)}));
  for (const auto& c : canaries)
    MMS_RETURN_IF_ERROR(EndCanaryLocked(c, "aborted",
                                        (c.candidate_version == rec.version ? "its candidate " : "the production version ") +
                                            rec.ref() + " was removed (mms model rm --force)"));
  // Forced: other experiments using the version stop (their history stays).
  MMS_ASSIGN_OR_RETURN(auto using_it, QueryExperiments("WHERE e.state != 'stopped' AND (e.control_id = ? OR e.treatment_id = ?)",
                                                       {std::to_string(rec.id), std::to_string(rec.id)}));
  for (const auto& e : using_it) {
    MMS_ASSIGN_OR_RETURN(auto stop, db_->Prepare("UPDATE experiments SET state = 'stopped', updated_ms = ? WHERE id = ?"));
    stop.Bind(1, opts_.clock->UnixMillis()).Bind(2, e.id);
    MMS_RETURN_IF_ERROR(stop.Run());
    MMS_RETURN_IF_ERROR(AuditLocked(e.kind == "canary" ? "canary-stop" : "experiment-stop", e.model, rec.version,
                                    e.state, "stopped", e.id + ": version " + rec.ref() + " removed"));
  }
  MMS_ASSIGN_OR_RETURN(auto stopped, QueryShadows("WHERE s.state = 'running' AND s.candidate_id = ?", {std::to_string(rec.id)}));
  for (const auto& sh : stopped)
    MMS_RETURN_IF_ERROR(AuditLocked("shadow-stop", sh.model, rec.version, "running", "stopped",
                                    "candidate " + rec.ref() + " removed"));
  MMS_ASSIGN_OR_RETURN(auto shs, db_->Prepare(
      "UPDATE shadows SET state = 'stopped', stopped_ms = ?, reason = 'candidate removed' WHERE state = 'running' "
      "AND candidate_id = ?"));
  shs.Bind(1, opts_.clock->UnixMillis()).Bind(2, rec.id);
  MMS_RETURN_IF_ERROR(shs.Run());
  // Its aliases go with it (ON DELETE CASCADE): each is audited as removed.
  for (const auto& alias : rec.aliases)
    MMS_RETURN_IF_ERROR(AuditLocked("alias-rm", rec.model, rec.version, rec.version, "",
                                    "alias " + alias + " (its version was removed)"));
  MMS_ASSIGN_OR_RETURN(auto del, db_->Prepare("DELETE FROM versions WHERE id = ?"));
  del.Bind(1, rec.id);
  MMS_RETURN_IF_ERROR(del.Run());
  // A model with no versions left and nothing pointing at it goes too.
  MMS_ASSIGN_OR_RETURN(auto gc, db_->Prepare(
      "DELETE FROM models WHERE name = ? AND NOT EXISTS (SELECT 1 FROM versions v WHERE v.model_id = models.id) "
      "AND NOT EXISTS (SELECT 1 FROM pins p WHERE p.model_id = models.id) "
      "AND NOT EXISTS (SELECT 1 FROM experiments e WHERE e.model_id = models.id) "
      "AND NOT EXISTS (SELECT 1 FROM shadows s WHERE s.model_id = models.id)"));
  // Its rate limit and pins by name go with its last version (the model's
  // row may stay for its experiments' history): a later model of that name
  // starts without the old one's limit, and is not pinned by a pin meant
  // for the old one.
  int64_t versions_left = 1;
  {
    MMS_ASSIGN_OR_RETURN(auto left, db_->Prepare("SELECT COUNT(*) FROM versions v JOIN models m ON m.id = v.model_id "
                                                 "WHERE m.name = ?"));
    left.Bind(1, rec.model);
    MMS_ASSIGN_OR_RETURN(bool counted, left.Step());
    if (counted) versions_left = left.Int(0);
  }
  if (versions_left == 0) {
    MMS_ASSIGN_OR_RETURN(auto lim,
                         db_->Prepare("DELETE FROM limits WHERE kind = 'model' AND key = ? RETURNING qps, burst"));
    lim.Bind(1, rec.model);
    MMS_ASSIGN_OR_RETURN(bool had, lim.Step());  // (the row is deleted by this first step)
    if (had)
      MMS_RETURN_IF_ERROR(AuditLocked("limit-rm", rec.model, rec.version, LimitText(lim.Double(0), lim.Double(1)), "",
                                      "model " + rec.model + " (its last version was removed)"));
    MMS_ASSIGN_OR_RETURN(auto pins, db_->Prepare("DELETE FROM pins WHERE version_id IS NULL AND model_id = "
                                                 "(SELECT id FROM models WHERE name = ?)"));
    pins.Bind(1, rec.model);
    MMS_RETURN_IF_ERROR(pins.Run());
    if (db_->Changes() > 0)
      MMS_RETURN_IF_ERROR(AuditLocked("unpin", rec.model, "", "pinned", "", "its last version was removed"));
  }
  gc.Bind(1, rec.model);
  MMS_RETURN_IF_ERROR(gc.Run());
  std::string detail = force && !uses.empty() ? "forced while in use: " : "";
  for (size_t i = 0; i < uses.size(); ++i) detail += (i ? "; " : "") + uses[i];
  MMS_RETURN_IF_ERROR(AuditLocked("rm", rec.model, rec.version, StageName(rec.stage), "", detail));
  MMS_RETURN_IF_ERROR(Commit(tx));
  return rec;
}

Result<std::vector<AuditEntry>> Registry::History(const Ref& ref) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  std::string version;
  if (ref.kind == Ref::Kind::kVersion) {
    version = ref.version;
  } else if (ref.kind == Ref::Kind::kAlias) {
    MMS_ASSIGN_OR_RETURN(VersionRecord rec, ResolveLocked(ref));
    version = rec.version;
  }
  MMS_ASSIGN_OR_RETURN(auto st, db_->Prepare("SELECT id, ts_ms, actor, action, model, version, from_value, to_value, "
                                             "detail FROM audit WHERE model = ? AND (? = '' OR version = ?) ORDER BY id"));
  st.Bind(1, ref.name).Bind(2, version).Bind(3, version);
  std::vector<AuditEntry> out;
  while (true) {
    MMS_ASSIGN_OR_RETURN(bool row, st.Step());
    if (!row) break;
    out.push_back({st.Int(0), st.Int(1), st.Text(2), st.Text(3), st.Text(4), st.Text(5), st.Text(6), st.Text(7),
                   st.Text(8)});
  }
  if (out.empty()) {
    MMS_RETURN_IF_ERROR(ModelId(ref.name).status());
    if (!version.empty())  // a version that never was (a removed one keeps its history)
      return NotFound(ref.name + " has no version " + version + " and never had one (mms model list " + ref.name +
                      " shows its versions)");
  }
  return out;
}

Result<std::vector<AuditEntry>> Registry::AuditLog(int64_t after_id, int limit) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  MMS_ASSIGN_OR_RETURN(auto st, db_->Prepare("SELECT id, ts_ms, actor, action, model, version, from_value, to_value, "
                                             "detail FROM audit WHERE id > ? ORDER BY id LIMIT ?"));
  st.Bind(1, after_id).Bind(2, limit);
  std::vector<AuditEntry> out;
  while (true) {
    MMS_ASSIGN_OR_RETURN(bool row, st.Step());
    if (!row) break;
    out.push_back({st.Int(0), st.Int(1), st.Text(2), st.Text(3), st.Text(4), st.Text(5), st.Text(6), st.Text(7),
                   st.Text(8)});
  }
  return out;
}

Result<bool> Registry::AddPin(const Ref& ref) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  MMS_ASSIGN_OR_RETURN(auto tx, sql::Tx::Begin(db_.get()));
  MMS_ASSIGN_OR_RETURN(VersionRecord rec, ResolveLocked(ref));
  MMS_ASSIGN_OR_RETURN(int64_t mid, ModelId(ref.name));
  std::optional<int64_t> vid;
  if (ref.kind != Ref::Kind::kName) vid = rec.id;
  MMS_ASSIGN_OR_RETURN(auto st, db_->Prepare("INSERT OR IGNORE INTO pins (model_id, version_id, created_ms) VALUES (?, ?, ?)"));
  st.Bind(1, mid).Bind(2, vid).Bind(3, opts_.clock->UnixMillis());
  MMS_RETURN_IF_ERROR(st.Run());
  if (db_->Changes() == 0) return false;  // already pinned: idempotent
  MMS_RETURN_IF_ERROR(AuditLocked("pin", ref.name, vid ? rec.version : "", "", "pinned",
                                  vid ? "" : "follows " + ref.name + "'s production version"));
  MMS_RETURN_IF_ERROR(Commit(tx));
  return true;
}

Status Registry::RemovePin(const Ref& ref) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  MMS_ASSIGN_OR_RETURN(auto tx, sql::Tx::Begin(db_.get()));
  MMS_ASSIGN_OR_RETURN(int64_t mid, ModelId(ref.name));
  std::optional<int64_t> vid;
  std::string version;
  if (ref.kind != Ref::Kind::kName) {
    MMS_ASSIGN_OR_RETURN(VersionRecord rec, ResolveLocked(ref));
    vid = rec.id;
    version = rec.version;
  }
  MMS_ASSIGN_OR_RETURN(auto st, db_->Prepare("DELETE FROM pins WHERE model_id = ? AND IFNULL(version_id, 0) = IFNULL(?, 0)"));
  st.Bind(1, mid).Bind(2, vid);
  MMS_RETURN_IF_ERROR(st.Run());
  if (db_->Changes() == 0)
    return NotFound(ref.ToString() + " is not pinned; unpin takes the REF as given to mms pin (mms pool lists what is "
                    "pinned, mms model history " + ref.name + " shows pin and unpin changes)");
  MMS_RETURN_IF_ERROR(AuditLocked("unpin", ref.name, version, "pinned", "", ""));
  return Commit(tx);
}

Result<std::vector<Pin>> Registry::Pins() {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  MMS_ASSIGN_OR_RETURN(auto st, db_->Prepare("SELECT m.name, IFNULL(v.version, '') FROM pins p JOIN models m ON "
                                             "m.id = p.model_id LEFT JOIN versions v ON v.id = p.version_id "
                                             "ORDER BY m.name, v.sort_key"));
  std::vector<Pin> out;
  while (true) {
    MMS_ASSIGN_OR_RETURN(bool row, st.Step());
    if (!row) break;
    out.push_back({st.Text(0), st.Text(1)});
  }
  return out;
}

Status Registry::QuickCheck() {
  // On a connection of its own: this one's page cache may hold pages that
  // have since been damaged on disk (nothing tells SQLite of such a write).
  MMS_ASSIGN_OR_RETURN(auto db, sql::Db::Open(path(), false, opts_.busy_timeout_ms));
  MMS_ASSIGN_OR_RETURN(auto st, db->Prepare("PRAGMA quick_check(5)"));
  std::string problems;
  while (true) {
    MMS_ASSIGN_OR_RETURN(bool row, st.Step());
    if (!row) break;
    if (st.Text(0) != "ok") problems += (problems.empty() ? "" : "; ") + st.Text(0);
  }
  if (problems.empty()) return Status::Ok();
  return Corrupt("registry " + path() + " is corrupt (" + problems +
                 "); stop mmsd and restore a backup into a new data dir (mms --data-dir NEW restore BACKUP; "
                 "mms backup makes one of a sound data dir), or recover what is readable with sqlite3's "
                 ".recover");
}

Status Registry::Relocate(const std::vector<Relocation>& moves, const std::string& action, const std::string& detail) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  MMS_ASSIGN_OR_RETURN(auto tx, sql::Tx::Begin(db_.get()));
  for (const Relocation& m : moves) {
    MMS_ASSIGN_OR_RETURN(auto st, db_->Prepare("UPDATE versions SET artifact_path = ?, packed_dir = ?, sample_input = ? "
                                               "WHERE id = ?"));
    st.Bind(1, m.artifact_path).Bind(2, m.packed_dir).Bind(3, m.sample_input).Bind(4, m.version_id);
    MMS_RETURN_IF_ERROR(st.Run());
    if (db_->Changes() != 1) return NotFound("no version with id " + std::to_string(m.version_id));
  }
  MMS_RETURN_IF_ERROR(AuditLocked(action, "", "", "", "", detail));
  MMS_RETURN_IF_ERROR(tx.Commit());
  own_commits_.fetch_add(1);
  return Status::Ok();
}

Status Registry::SetLimit(const RateLimit& l, bool* unchanged) {
  if (unchanged) *unchanged = false;
  if (l.kind != "model" && l.kind != "tenant") return InvalidArgument("a limit is for a model or a tenant");
  if (l.kind == "model") MMS_RETURN_IF_ERROR(ValidateName(l.key));
  if (l.kind == "tenant") MMS_RETURN_IF_ERROR(ValidateTenant(l.key));
  // The same range as [limits] in mms.toml.
  if (!std::isfinite(l.qps) || l.qps < kMinQps || l.qps > kMaxQps)
    return InvalidArgument("--qps must be a positive number of requests per second, 1e-6 (one in 11.6 days) to 1e9 (got " +
                           ShortestNumber(l.qps) + "); to stop a model, stop serving it instead");
  if (!std::isfinite(l.burst) || l.burst < 1 || l.burst > 1e9)
    return InvalidArgument("--burst must be 1 to 1e9 requests (got " + ShortestNumber(l.burst) + ")");
  std::lock_guard<std::recursive_mutex> lock(mu_);
  MMS_ASSIGN_OR_RETURN(auto tx, sql::Tx::Begin(db_.get()));
  if (l.kind == "model") MMS_RETURN_IF_ERROR(ModelId(l.key).status());
  std::string was;
  {  // The same again (a rerun): nothing to write, nor to audit.
    MMS_ASSIGN_OR_RETURN(auto q, db_->Prepare("SELECT qps, burst FROM limits WHERE kind = ? AND key = ?"));
    q.Bind(1, l.kind).Bind(2, l.key);
    MMS_ASSIGN_OR_RETURN(bool row, q.Step());
    if (row && q.Double(0) == l.qps && q.Double(1) == l.burst) {
      if (unchanged) *unchanged = true;
      return Status::Ok();
    }
    if (row) was = LimitText(q.Double(0), q.Double(1));  // audited as what it replaced
  }
  MMS_ASSIGN_OR_RETURN(auto st, db_->Prepare(
      "INSERT INTO limits (kind, key, qps, burst, updated_ms) VALUES (?, ?, ?, ?, ?) "
      "ON CONFLICT (kind, key) DO UPDATE SET qps = excluded.qps, burst = excluded.burst, updated_ms = excluded.updated_ms"));
  st.Bind(1, l.kind).Bind(2, l.key).Bind(3, l.qps).Bind(4, l.burst).Bind(5, opts_.clock->UnixMillis());
  MMS_RETURN_IF_ERROR(st.Run());
  MMS_RETURN_IF_ERROR(AuditLocked("limit-set", l.kind == "model" ? l.key : "", "", was,
                                  LimitText(l.qps, l.burst), l.kind + " " + l.key));
  return Commit(tx);
}

Status Registry::RemoveLimit(const std::string& kind, const std::string& key) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  MMS_ASSIGN_OR_RETURN(auto tx, sql::Tx::Begin(db_.get()));
  std::string was;  // audited as what was removed
  {
    MMS_ASSIGN_OR_RETURN(auto q, db_->Prepare("SELECT qps, burst FROM limits WHERE kind = ? AND key = ?"));
    q.Bind(1, kind).Bind(2, key);
    MMS_ASSIGN_OR_RETURN(bool row, q.Step());
    if (!row) return NotFound("no limit for " + kind + " '" + key + "' (mms limit list shows them)");
    was = LimitText(q.Double(0), q.Double(1));
  }
  MMS_ASSIGN_OR_RETURN(auto st, db_->Prepare("DELETE FROM limits WHERE kind = ? AND key = ?"));
  st.Bind(1, kind).Bind(2, key);
  MMS_RETURN_IF_ERROR(st.Run());
  MMS_RETURN_IF_ERROR(AuditLocked("limit-rm", kind == "model" ? key : "", "", was, "", kind + " " + key));
  return Commit(tx);
}

Result<std::vector<RateLimit>> Registry::Limits() {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  MMS_ASSIGN_OR_RETURN(auto st, db_->Prepare("SELECT kind, key, qps, burst FROM limits ORDER BY kind, key"));
  std::vector<RateLimit> out;
  while (true) {
    MMS_ASSIGN_OR_RETURN(bool row, st.Step());
    if (!row) break;
    out.push_back({st.Text(0), st.Text(1), st.Double(2), st.Double(3)});
  }
  return out;
}

Status Registry::Commit(sql::Tx& tx) {
  MMS_RETURN_IF_ERROR(tx.Commit());
  own_commits_.fetch_add(1);
  return Status::Ok();
}

Result<int64_t> Registry::DataVersion() {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  MMS_ASSIGN_OR_RETURN(auto st, db_->Prepare("PRAGMA data_version"));
  MMS_ASSIGN_OR_RETURN(bool row, st.Step());
  (void)row;
  return st.Int(0) * 1000003 + own_commits_.load();
}

}  // namespace mms
