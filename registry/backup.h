// Copies of a whole data dir: `mms backup` and `mms restore`.
//
// A copy is itself a data dir: its registry, taken online (SQLite's VACUUM
// INTO: one consistent commit, compacted, while mmsd and other writers go on),
// and every file its versions need, copied beside it —
//   artifacts/<model>/<dir>/            each version's packed dir (weights,
//                                       weight-less module, sample input)
//   sources/<model>/<version>/<file>    its original artifact (what `mms model
//                                       repack` and `verify` read; an
//                                       adapter's adapter_config.json too)
// — with the copy's registry naming the copies (Registry::Relocate, one
// audit row). `mms --data-dir COPY model verify` checks it, `mmsd --data-dir
// COPY` serves it, and a restore is the same copy made the other way.
//
// Consistency: a version's packed dir is published before its row commits
// and removed after its row is gone, so every dir a snapshot names exists
// unless a writer removed or repacked that version after the snapshot. A dir
// that vanishes while being copied makes a new snapshot be taken (up to
// kMaxSnapshots; copies already made are reused), so the copy names exactly
// the files of one commit.
//
// Crash safety: "<dest_db>.copying" is created first and removed last, and
// flocked meanwhile; the registry is written as "<dest_db>.partial" and
// renamed into place (never over a registry that appeared meanwhile) after
// every file it names is copied and synced. No registry at dest_db means no
// finished copy; the next copy into the same place removes an interrupted
// one's files — those its .copying lists, each recorded before it was
// created, and nothing else; a second copy running into the same place is
// refused (IN_USE). A copy that fails before creating anything leaves no
// marker.
//
// Moved copies: the copy's registry stores the paths of its own files
// relative to it (StoredPath), so a copy moved whole (a backup taken to
// another host, mounted elsewhere) is served, verified and restored from
// where it is. (A copy whose registry is kept outside dest_dir, a restore
// under [registry] path, stores them absolute, as Registry reads them there.)
// The copy's registry is published in rollback-journal mode, so
// it opens from read-only media.
//
// Thread-safety: a free function; the caller owns the destination.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/clock.h"
#include "core/status.h"

namespace mms {

struct DataDirCopy {
  std::string src_db;    // the registry to copy (read only, through its own connection)
  std::string src_dir;   // its data dir (a backup's directory: where a copy written by an mms
                         // before schema 8 is now; "": the registry's directory)
  std::string dest_dir;  // the new data dir: artifacts/ and sources/ go here
  std::string dest_db;   // its registry file (usually <dest_dir>/registry.db); must not exist
  bool dest_must_be_empty = true;  // ALREADY_EXISTS when dest_dir's artifacts/ or sources/ hold files (once an
                                   // interrupted copy's own are removed)
  // An earlier copy's data dir (an incremental backup, as rsync --link-dest):
  // a file whose bytes it already holds at the same place — a packed file
  // whose SHA256SUMS line, or an original whose registered SHA-256, its
  // file there matches, hashed there — is hard-linked from it, not copied.
  // A link the file system refuses (another one: EXDEV) is a copy. "": copy all.
  std::string link_dest;
  std::string action;    // the audit row's action in the copy: "backup" or "restore"
  std::string detail;    // and its detail ("from /var/lib/mms")
  std::string actor;     // recorded in the audit row ("" = $MMS_ACTOR, $USER)
  int64_t busy_timeout_ms = 5000;
  Clock* clock = Clock::Real();
  // A line per step (optional): "copying the packed files of NAME:VERSION"
  // before each packed dir, and a line for each new snapshot.
  std::function<void(const std::string&)> progress;
};

struct DataDirCopyReport {
  int versions = 0;       // versions in the copy
  int packed_dirs = 0;    // packed dirs copied
  int source_files = 0;   // original artifacts (and adapter configs) copied
  uint64_t bytes = 0;     // bytes copied, all files
  int linked_files = 0;   // files hard-linked from link_dest instead, and their bytes
  uint64_t linked_bytes = 0;
  std::string link_refused;  // why files could not be linked from link_dest ("it is on another file system"): copied
  int snapshots = 0;      // registry snapshots taken (more than 1: writers were busy)
  // Versions whose original artifact could not be copied (gone, or changed
  // since registration): they serve from their packed files, but repack and
  // verify need the original. One line each, naming the version and why.
  std::vector<std::string> sources_missing;
  // Versions the copy cannot serve: their packed files (or, unpacked, their
  // only artifact) are missing from the source, or differ from what their
  // SHA256SUMS records (every copied file is hashed), or the stored sample
  // the row names is not in them. The copy is written anyway (everything
  // else in it is sound); the caller reports failure.
  std::vector<std::string> problems;
};

inline constexpr int kMaxSnapshots = 5;

// Makes the copy. Errors: ALREADY_EXISTS (dest_db exists, or appeared
// meanwhile), IN_USE (another copy is writing there), NOT_FOUND (no
// registry at src_db), CORRUPT / FAILED_PRECONDITION (not an mms registry,
// or one written by a newer mms), IO (the copy's own files could not be
// written: it stays marked as interrupted and the next attempt removes it).
// An original that cannot be read is noted, not an error.
Result<DataDirCopyReport> CopyDataDir(const DataDirCopy& c);

// True when an earlier copy to `dest_db` was interrupted (or one is running):
// "<dest_db>.copying" is there and `dest_db` is not. CopyDataDir removes an
// interrupted one's files first.
bool InterruptedCopy(const std::string& dest_db);

}  // namespace mms
