#include "registry/backup.h"

#include <fcntl.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <tuple>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <sstream>


#include "core/hash.h"
#include "core/paths.h"
#include "registry/registry.h"
#include "registry/sqlite.h"

namespace mms {

namespace {

namespace fs = std::filesystem;

// The marker `mms model repack` leaves in the packed dir it replaced
// (cmd_model.cpp): not copied, for the copy's row names that dir as in use.
constexpr const char* kReplacedMarker = "REPLACED_BY";

std::string PartialPath(const std::string& dest_db) { return dest_db + ".partial"; }
std::string MarkerPath(const std::string& dest_db) { return dest_db + ".copying"; }

void RemoveDbFiles(const std::string& db) {
  for (const char* suffix : {"", "-wal", "-shm", "-journal"}) ::unlink((db + suffix).c_str());
}

// One consistent commit of `src` written to the new file `dest`.
Status Snapshot(const std::string& src, const std::string& dest, int64_t busy_timeout_ms) {
  if (!FileExists(src)) return NotFound("no registry at " + src);
  MMS_ASSIGN_OR_RETURN(auto db, sql::Db::Open(src, /*create=*/false, busy_timeout_ms));
  MMS_ASSIGN_OR_RETURN(auto st, db->Prepare("VACUUM INTO ?"));
  st.Bind(1, dest);
  return st.Run();
}

struct Row {
  int64_t id = 0;
  std::string model, version, artifact_path, packed_dir, sample_input, sha256;
  bool adapter = false;
  std::string ref() const { return model + ":" + version; }
};

Result<std::vector<Row>> Rows(Registry& reg) {
  return reg.WithDb([](sql::Db* db) {
    return sql::Collect<Row>(db,
                             "SELECT v.id, m.name, v.version, v.artifact_path, v.packed_dir, v.sample_input, v.sha256, "
                             "v.base_id IS NOT NULL FROM versions v JOIN models m ON m.id = v.model_id ORDER BY v.id",
                             {}, [](sql::Stmt& s) {
                               Row r;
                               r.id = s.Int(0);
                               r.model = s.Text(1);
                               r.version = s.Text(2);
                               r.artifact_path = s.Text(3);
                               r.packed_dir = s.Text(4);
                               r.sample_input = s.Text(5);
                               r.sha256 = s.Text(6);
                               r.adapter = s.Int(7) != 0;
                               return r;
                             });
  });
}

// The newest audit row: every write appends one, so two snapshots with the
// same newest row hold the same commit.
Result<int64_t> LastAuditId(Registry& reg) {
  return reg.WithDb([](sql::Db* db) -> Result<int64_t> {
    MMS_ASSIGN_OR_RETURN(auto st, db->Prepare("SELECT IFNULL(MAX(id), 0) FROM audit"));
    MMS_ASSIGN_OR_RETURN(bool row, st.Step());
    return row ? st.Int(0) : 0;
  });
}

// The SHA-256 a packed dir records for its files (SHA256SUMS, sha256sum(1)'s
// format: 64 hex digits, two spaces or " *", the name), by name; none for a
// dir packed before it had one.
std::map<std::string, std::string> RecordedSums(const std::string& dir) {
  std::map<std::string, std::string> sums;
  auto text = ReadFile(JoinPath(dir, "SHA256SUMS"));
  if (!text.ok()) return sums;
  std::istringstream in(*text);
  for (std::string line; std::getline(in, line);)
    if (line.size() > 66 && (line.compare(64, 2, "  ") == 0 || line.compare(64, 2, " *") == 0))
      sums[line.substr(66)] = line.substr(0, 64);
  return sums;
}

// Hard links from an earlier copy (DataDirCopy::link_dest).
struct Linker {
  std::string prev;     // the earlier copy's data dir ("": copy everything)
  std::string refused;  // why the file system refused a link (EXDEV, EPERM): copying from then on
  std::map<std::string, uint64_t> made;  // links made, with their bytes (some may be removed since)
  // Makes `to` from `from`: a hard link to `earlier` when that is a regular
  // file (not a symlink: the link would be to the symlink) holding the bytes
  // whose SHA-256 is `sha256` — whatever `from` holds now, or if it is gone
  // (the bytes registered are what a copy is for) — else a copy.
  // *copied: the bytes copied (0 when linked); *linked says which. Errors:
  // CopyFileDurably's (NOT_FOUND when `from` is gone and nothing was linked).
  Status Make(const std::string& from, const std::string& to, const std::string& earlier, const std::string& sha256,
              uint64_t* copied, bool* linked) {
    *copied = 0;
    *linked = false;
    struct stat b;
    if (!prev.empty() && refused.empty() && !sha256.empty() && ::lstat(earlier.c_str(), &b) == 0 &&
        S_ISREG(b.st_mode)) {
      auto sha = Sha256File(earlier);
      if (sha.ok() && *sha == sha256) {
        if (::link(earlier.c_str(), to.c_str()) == 0) {
          made[to] = static_cast<uint64_t>(b.st_size);
          *linked = true;
          return Status::Ok();
        }
        // A file system without links or across file systems: no file will
        // link, so none is hashed for nothing. (EMLINK and the like: this one.)
        if (errno == EXDEV) refused = "it is on another file system";
        else if (errno == EPERM || errno == EOPNOTSUPP) refused = std::strerror(errno);
      }
    }
    return CopyFileDurably(from, to, copied);
  }
  // The links in the finished copy (those in directories dropped since are not).
  std::pair<int, uint64_t> Kept() const {
    int files = 0;
    uint64_t bytes = 0;
    struct stat st;
    for (const auto& [path, n] : made)
      if (::lstat(path.c_str(), &st) == 0) ++files, bytes += n;
    return {files, bytes};
  }
};

// Copies the directory tree `from` to `to` (which must not exist); with a
// linker, a file its SHA256SUMS records is linked from `earlier` (the same
// tree in an earlier copy) when that holds the same bytes. NOT_FOUND when
// `from` or a file in it vanishes meanwhile; `to` is then removed.
Status CopyTree(const std::string& from, const std::string& to, uint64_t* bytes, std::set<std::string>* dirs,
                Linker* linker, const std::string& earlier) {
  struct stat st;
  if (::stat(from.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) return NotFound("no such directory: " + from);
  MMS_RETURN_IF_ERROR(MakeDirs(to, 0700));
  dirs->insert(to);
  const std::map<std::string, std::string> sums = RecordedSums(from);
  std::error_code ec;
  Status result = Status::Ok();
  for (fs::directory_iterator it(from, ec), end; !ec && it != end; it.increment(ec)) {
    const fs::directory_entry& e = *it;
    const std::string name = e.path().filename().string();
    if (name == kReplacedMarker) continue;
    std::error_code ec2;
    if (e.is_directory(ec2)) {
      result = CopyTree(e.path().string(), JoinPath(to, name), bytes, dirs, linker, JoinPath(earlier, name));
    } else {
      uint64_t n = 0;
      bool linked = false;
      auto sum = sums.find(name);
      result = linker->Make(e.path().string(), JoinPath(to, name), JoinPath(earlier, name),
                            sum != sums.end() ? sum->second : "", &n, &linked);
      *bytes += n;
    }
    if (!result.ok()) break;
  }
  if (result.ok() && ec) result = ec == std::errc::no_such_file_or_directory ? NotFound("no such directory: " + from)
                                                                             : IoError("cannot list " + from + ": " +
                                                                                       ec.message());
  if (!result.ok()) fs::remove_all(to, ec);
  return result;
}

// A name under `parent` not taken yet: `name`, else "name-2", "name-3"...
std::string FreeName(const std::string& parent, const std::string& name, const std::set<std::string>& taken) {
  std::string path = JoinPath(parent, name);
  for (int n = 2; taken.count(path) || FileExists(path); ++n) path = JoinPath(parent, name + "-" + std::to_string(n));
  return path;
}

}  // namespace

bool InterruptedCopy(const std::string& dest_db) { return FileExists(MarkerPath(dest_db)) && !FileExists(dest_db); }

namespace {

// SQLite's logs of a registry left where the copy would put one: a -wal
// there is replayed into the copied registry when it is next opened (it
// switches to WAL mode for it), a hot -journal rolled back into it, and the
// copy would hold another registry's rows without a word. ALREADY_EXISTS
// naming them. (A -shm alone is harmless: a DELETE-mode file ignores it.)
Status NoLeftoverLog(const std::string& dest_db) {
  for (const char* suffix : {"-wal", "-journal"})
    if (const std::string f = dest_db + suffix; FileExists(f))
      return AlreadyExists(f + " is there without " + BaseName(dest_db) +
                           ": another registry's log, left behind (a daemon or mms killed, its registry moved away "
                           "without it); SQLite would apply it to the copy: move it aside with the registry it belongs "
                           "to, then run this again");
  return Status::Ok();
}

}  // namespace

Result<DataDirCopyReport> CopyDataDir(const DataDirCopy& c) {
  auto say = [&](const std::string& line) {
    if (c.progress) c.progress(line);
  };
  if (FileExists(c.dest_db)) return AlreadyExists(c.dest_db + " already exists");
  MMS_RETURN_IF_ERROR(NoLeftoverLog(c.dest_db));
  if (!FileExists(c.src_db)) return NotFound("no registry at " + c.src_db);
  const std::string src_dir = c.src_dir.empty() ? DirName(c.src_db) : c.src_dir;
  const std::string partial = PartialPath(c.dest_db);
  const std::string artifacts = JoinPath(c.dest_dir, "artifacts");
  const std::string sources = JoinPath(c.dest_dir, "sources");
  std::error_code ec;
  MMS_RETURN_IF_ERROR(MakeDirs(c.dest_dir, 0700));
  MMS_RETURN_IF_ERROR(MakeDirs(DirName(c.dest_db), 0700));
  // The marker of a copy in progress, and its lock: it lives from before
  // the first file to after the registry's rename, so a copy killed at any
  // point is known as interrupted; the flock keeps a second copy into the
  // same place (an overlapping cron run) from taking the first one's files.
  const std::string marker = MarkerPath(c.dest_db);
  const bool interrupted = FileExists(marker);
  int lock_fd = ::open(marker.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (lock_fd < 0) return IoError("cannot create " + marker + ": " + std::strerror(errno));
  if (::flock(lock_fd, LOCK_EX | LOCK_NB) != 0) {
    ::close(lock_fd);
    return Status(Code::kInUse, "another mms backup or restore is writing " + c.dest_dir +
                                    " now (it holds " + marker + "); wait for it, or name another directory");
  }
  struct Unlock {
    int fd;
    ~Unlock() { ::close(fd); }
  } unlock{lock_fd};
  if (FileExists(c.dest_db)) return AlreadyExists(c.dest_db + " already exists");  // (written before the lock)
  // The marker lists the data dir the copy writes into, then each directory
  // it creates, written (and synced) before the directory is: an interrupted
  // copy's cleanup removes those and nothing else (files someone put there
  // since, another registry's, stay).
  std::istringstream listed;
  if (interrupted) {
    auto text = ReadFile(marker);
    listed.str(text.ok() ? *text : "");
    std::string into;
    std::getline(listed, into);
    if (!into.empty() && into != c.dest_dir)
      return FailedPrecondition(marker + " marks an unfinished copy into " + into + ", not " + c.dest_dir +
                                " (the same registry path): finish or remove that one first (it is removed with "
                                "rm " + marker + " once " + into + " is dealt with)");
  }
  // From here, a copy that fails before it creates anything leaves no
  // marker behind (an interrupted one's files are gone by then).
  struct Forget {
    std::string marker, partial;
    bool keep = false;
    ~Forget() {
      if (keep) return;
      ::unlink(marker.c_str());
      RemoveDbFiles(partial);
    }
  } forget{marker, partial};
  if (interrupted) {
    say("removing the files of an interrupted copy into " + c.dest_dir);
    for (std::string path; std::getline(listed, path);) {
      if (path.rfind(artifacts + "/", 0) != 0 && path.rfind(sources + "/", 0) != 0) continue;  // (never elsewhere)
      fs::remove_all(path, ec);
      ::rmdir(DirName(path).c_str());  // the model's, when empty
    }
    RemoveDbFiles(partial);
  }
  if (c.dest_must_be_empty)
    for (const std::string& d : {artifacts, sources})
      if (std::error_code e; fs::exists(d, e) && !fs::is_empty(d, e))
        return AlreadyExists(d + " holds files no registry here names (another registry's?): move it aside first");
  if (::ftruncate(lock_fd, 0) != 0) return IoError("cannot write " + marker + ": " + std::strerror(errno));
  auto record = [&](const std::string& line) -> Status {
    const std::string text = line + "\n";
    if (::pwrite(lock_fd, text.data(), text.size(), ::lseek(lock_fd, 0, SEEK_END)) != static_cast<ssize_t>(text.size()) ||
        ::fdatasync(lock_fd) != 0)
      return IoError("cannot write " + marker + ": " + std::strerror(errno));
    return Status::Ok();
  };
  MMS_RETURN_IF_ERROR(record(c.dest_dir));
  // A copy written by an mms before schema 8 (absolute paths) and moved
  // since: its paths under where it was written are rebased onto where it is.
  const std::string moved_from = LegacyCopyRoot(src_dir);
  auto here = [&](const std::string& path) {
    if (moved_from.empty() || path.rfind(moved_from + "/", 0) != 0) return path;
    return src_dir + path.substr(moved_from.size());
  };

  DataDirCopyReport rep;
  std::map<std::string, std::string> packed_copies;  // source dir → its copy
  std::map<std::string, std::string> damaged;  // source dir → what in its copy differs from its SHA256SUMS
  // An original, by path and hash: a path registered again with other
  // weights (a retrain writing the same file) is another original.
  std::map<std::string, std::string> source_copies;  // key → its copy ("" = could not be copied)
  std::map<std::string, std::string> source_why;     // key → why not
  auto source_key = [](const Row& r) { return r.artifact_path + "\n" + r.sha256; };
  std::set<std::string> taken;                       // copies made (or reserved) by this run
  std::set<std::string> dirs;                        // directories written into (synced at the end)
  Linker linker;
  linker.prev = c.link_dest;
  std::unique_ptr<Registry> reg;
  std::vector<Row> rows;
  std::set<std::string> vanished;  // packed dirs a snapshot named and the copy did not find
  int64_t last_audit = -1;
  for (int attempt = 1;; ++attempt) {
    reg.reset();
    RemoveDbFiles(partial);
    MMS_RETURN_IF_ERROR(Snapshot(c.src_db, partial, c.busy_timeout_ms));
    ++rep.snapshots;
    Registry::Options o;
    o.path = partial;
    o.create = false;
    o.busy_timeout_ms = c.busy_timeout_ms;
    o.actor = c.actor;
    o.clock = c.clock;
    MMS_ASSIGN_OR_RETURN(reg, Registry::Open(o));  // refuses a foreign or newer file; migrates an older one
    MMS_ASSIGN_OR_RETURN(rows, Rows(*reg));
    for (Row& r : rows) {
      // Relative paths are relative to the source registry's own directory.
      r.artifact_path = here(ResolvedPath(DirName(AbsolutePath(c.src_db)), r.artifact_path));
      r.packed_dir = here(ResolvedPath(DirName(AbsolutePath(c.src_db)), r.packed_dir));
      r.sample_input = here(ResolvedPath(DirName(AbsolutePath(c.src_db)), r.sample_input));
    }
    MMS_ASSIGN_OR_RETURN(int64_t audit, LastAuditId(*reg));
    vanished.clear();
    for (const Row& r : rows) {
      if (r.packed_dir.empty() || packed_copies.count(r.packed_dir)) continue;
      std::string to = FreeName(JoinPath(artifacts, r.model), BaseName(r.packed_dir), taken);
      taken.insert(to);
      forget.keep = true;
      MMS_RETURN_IF_ERROR(record(to));
      dirs.insert(DirName(to));
      say("copying the packed files of " + r.ref());
      uint64_t n = 0;
      Status st = CopyTree(r.packed_dir, to, &n, &dirs, &linker,
                           JoinPath(linker.prev, "artifacts/" + r.model + "/" + BaseName(r.packed_dir)));
      if (st.code() == Code::kNotFound) {
        vanished.insert(r.packed_dir);
        continue;
      }
      MMS_RETURN_IF_ERROR(st);
      rep.bytes += n;
      packed_copies[r.packed_dir] = to;
      // What was copied is what its SHA256SUMS records (a linked file was
      // checked before linking): a file rotted in the source is copied as
      // it is, but the copy does not say it is sound.
      for (const auto& [name, want] : RecordedSums(to)) {
        const std::string copied = JoinPath(to, name);
        if (linker.made.count(copied)) continue;
        auto got = Sha256File(copied);
        if (!got.ok() && got.status().code() != Code::kNotFound) return got.status();
        if (!got.ok()) damaged[r.packed_dir] += (damaged[r.packed_dir].empty() ? "" : ", ") + name + " is missing";
        else if (*got != want)
          damaged[r.packed_dir] += (damaged[r.packed_dir].empty() ? "" : ", ") + name + " has sha256 " +
                                   got->substr(0, 12) + ", SHA256SUMS says " + want.substr(0, 12);
      }
    }
    // Done when every dir was found — or when nothing changed since the last
    // snapshot (the same newest audit row): those dirs are missing from the
    // source itself, not removed by a writer meanwhile.
    if (vanished.empty() || audit == last_audit || attempt == kMaxSnapshots) break;
    last_audit = audit;
    // (Either a writer removed or repacked them since the snapshot, or they
    // are missing from the data dir: a new snapshot tells which.)
    say(std::to_string(vanished.size()) + (vanished.size() == 1 ? " packed dir" : " packed dirs") +
        " the registry names " + (vanished.size() == 1 ? "was" : "were") +
        " not found (removed by a writer since, or missing from the data dir): taking a new snapshot to tell which");
  }

  // The original artifacts: what repack and verify read. One that cannot be
  // copied (gone, unreadable, changed since registration) is noted and not
  // copied (the row keeps its path); only the copy's own disk failing stops it.
  for (const Row& r : rows) {
    const std::string key = source_key(r);
    if (source_copies.count(key)) continue;
    const std::string dir = FreeName(JoinPath(sources, r.model), r.version, taken);
    taken.insert(dir);
    forget.keep = true;
    MMS_RETURN_IF_ERROR(record(dir));
    std::vector<std::string> files{r.artifact_path};
    if (r.adapter) files.push_back(JoinPath(DirName(r.artifact_path), "adapter_config.json"));
    MMS_RETURN_IF_ERROR(MakeDirs(dir, 0700));
    dirs.insert(DirName(dir));
    dirs.insert(dir);
    uint64_t bytes = 0;
    Status st = Status::Ok();
    std::string why;
    bool linked = false;  // the artifact, from the earlier copy (its SHA-256 checked there)
    for (const std::string& f : files) {
      if (!st.ok()) break;
      uint64_t n = 0;
      const std::string to = JoinPath(dir, BaseName(f));
      if (f == r.artifact_path)
        st = linker.Make(f, to, JoinPath(linker.prev, "sources/" + r.model + "/" + r.version + "/" + BaseName(f)),
                         r.sha256, &n, &linked);
      else
        st = CopyFileDurably(f, to, &n);
      bytes += n;
      if (st.code() == Code::kNotFound) why = f == r.artifact_path ? "is gone" : "is there, but its " + f + " is gone";
      // Writing the copy failed (its disk): the copy cannot be made. Reading
      // the original failed (permissions): that original is not copied.
      else if (!st.ok() && FileExists(to)) return st;
      else if (!st.ok()) why = st.message();
    }
    if (st.ok() && !linked) {
      auto sha = Sha256File(JoinPath(dir, BaseName(r.artifact_path)));
      if (!sha.ok()) return sha.status();
      if (*sha != r.sha256) {
        st = FailedPrecondition("changed");
        why = "changed since registration (sha256 " + sha->substr(0, 12) + ", registered " + r.sha256.substr(0, 12) + ")";
      }
    }
    if (!st.ok()) {
      fs::remove_all(dir, ec);
      ::rmdir(DirName(dir).c_str());  // the model's, when empty
      source_copies[key] = "";
      source_why[key] = why;
      continue;
    }
    source_copies[key] = JoinPath(dir, BaseName(r.artifact_path));
    rep.source_files += static_cast<int>(files.size());
    rep.bytes += bytes;
  }

  // Stored relative to the copy's registry only where Registry::Open reads
  // them so: in the default layout (its file in dest_dir). A registry kept
  // elsewhere ([registry] path) reads paths absolute; relative ones were
  // looked for beside it, and a restore there served nothing.
  const auto real = [](const std::string& dir) {
    auto r = CanonicalPath(dir);
    return r.ok() ? *r : dir;
  };
  const bool relative = real(DirName(AbsolutePath(c.dest_db))) == real(AbsolutePath(c.dest_dir));
  std::vector<Registry::Relocation> moves;
  std::set<std::string> used;
  for (const Row& r : rows) {
    Registry::Relocation m{r.id, r.artifact_path, r.packed_dir, r.sample_input};
    const std::string key = source_key(r);
    if (const std::string& copy = source_copies[key]; !copy.empty()) m.artifact_path = copy;
    else rep.sources_missing.push_back(r.ref() + ": its original artifact " + r.artifact_path + " " + source_why[key]);
    if (!r.packed_dir.empty()) {
      auto copy = packed_copies.find(r.packed_dir);
      if (copy == packed_copies.end()) {
        rep.problems.push_back(r.ref() + ": its packed files " + r.packed_dir +
                               " are missing from the source data dir (mms model verify names the damage there)");
      } else {
        m.packed_dir = copy->second;
        used.insert(copy->second);
        // The stored sample input lives in the packed dir.
        if (r.sample_input.rfind(r.packed_dir + "/", 0) == 0)
          m.sample_input = JoinPath(copy->second, r.sample_input.substr(r.packed_dir.size() + 1));
        if (auto d = damaged.find(r.packed_dir); d != damaged.end())
          rep.problems.push_back(
              r.ref() + ": its packed files in " + r.packed_dir + " are damaged (" + d->second +
              "): copied as they are; " +
              (source_copies[source_key(r)].empty()
                   ? "its original artifact was not copied either: register it again from a good copy"
                   : "mms model repack " + r.ref() + " rebuilds them from its original artifact") +
              (c.action == "backup" ? " (in the data dir), then take the backup again" : ""));
        else if (!m.sample_input.empty() && m.sample_input != r.sample_input && !FileExists(m.sample_input))
          rep.problems.push_back(r.ref() + ": its sample input " + BaseName(r.sample_input) + " is not in " +
                                 r.packed_dir + " (registered again meanwhile?): take the copy again");
      }
    } else if (source_copies[key].empty()) {
      rep.problems.push_back(r.ref() + " has no packed files and its only artifact " + r.artifact_path + " " +
                             source_why[key]);
    }
    if (relative)
      for (std::string* p : {&m.artifact_path, &m.packed_dir, &m.sample_input}) *p = StoredPath(c.dest_dir, *p);
    moves.push_back(std::move(m));
  }
  rep.packed_dirs = static_cast<int>(used.size());
  rep.versions = static_cast<int>(rows.size());
  std::tie(rep.linked_files, rep.linked_bytes) = linker.Kept();
  rep.link_refused = linker.refused;
  // Copies of dirs only an earlier snapshot named (since removed or repacked).
  for (const auto& [from, to] : packed_copies)
    if (!used.count(to)) fs::remove_all(to, ec);

  MMS_RETURN_IF_ERROR(reg->Relocate(moves, c.action, c.detail));
  MMS_RETURN_IF_ERROR(reg->QuickCheck());
  // Published in rollback-journal mode: a backup on read-only media opens
  // without the -shm file WAL needs (the registry opened on it goes back to WAL).
  MMS_RETURN_IF_ERROR(reg->WithDb([](sql::Db* db) { return db->Exec("PRAGMA journal_mode=DELETE"); }));
  reg.reset();
  if (FileExists(partial + "-wal"))
    return IoError("the copy's registry " + partial + " kept its write-ahead log after closing; run the copy again");
  // Durable before the rename that publishes it: the registry's pages, then
  // every directory entry of the files it names.
  int fd = ::open(partial.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0 || ::fsync(fd) != 0) {
    if (fd >= 0) ::close(fd);
    return IoError("cannot sync " + partial);
  }
  ::close(fd);
  for (const std::string& d : dirs)
    if (FileExists(d)) MMS_RETURN_IF_ERROR(SyncDir(d));
  for (const std::string& d : {artifacts, sources, c.dest_dir, DirName(c.dest_dir)})
    if (FileExists(d)) MMS_RETURN_IF_ERROR(SyncDir(d));
  // Never over a registry that appeared meanwhile (a daemon started on the
  // data dir, a registration): that one stays, and this copy is refused.
  auto appeared = [&] {
    return AlreadyExists(c.dest_db + " appeared while the copy was made (a daemon started, or a registration): "
                         "it was left as it is; move it aside and run the copy again");
  };
  if (FileExists(c.dest_db)) return appeared();  // (its -wal is its own: not a leftover)
  MMS_RETURN_IF_ERROR(NoLeftoverLog(c.dest_db));
  if (::renameat2(AT_FDCWD, partial.c_str(), AT_FDCWD, c.dest_db.c_str(), RENAME_NOREPLACE) != 0) {
    if (errno == EEXIST) return appeared();
    return IoError("cannot rename " + partial + " to " + c.dest_db + ": " + std::strerror(errno));
  }
  MMS_RETURN_IF_ERROR(SyncDir(DirName(c.dest_db)));
  forget.keep = false;  // done: not an interrupted copy (removed while still holding its lock)
  return rep;
}

}  // namespace mms
