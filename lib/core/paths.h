// Where mms keeps its files, resolved the same way by mmsd and mms.
//
// data dir: --data-dir, else [daemon] data_dir, else $XDG_DATA_HOME/mms,
//           else $HOME/.local/share/mms.
// socket:   --socket, else [daemon] socket, else $XDG_RUNTIME_DIR/mms/mms.sock,
//           else <data dir>/mms.sock.
// The environment is passed in (Env) so tests resolve without touching it.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "core/status.h"

namespace mms {

using EnvLookup = std::function<const char*(const char*)>;

// The process environment (getenv).
EnvLookup ProcessEnv();

// INVALID_ARGUMENT when neither variable is set (a service started without
// HOME): no guess such as /tmp, which a reboot may wipe with the registry.
Result<std::string> DefaultDataDir(const EnvLookup& env);
// `data_dir` is the already-resolved data dir.
std::string DefaultSocketPath(const EnvLookup& env, const std::string& data_dir);

// Creates `dir` and its parents. A leaf made here gets exactly `mode` (not
// narrowed by the umask); one that existed keeps its mode. Missing parents
// get 0755.
Status MakeDirs(const std::string& dir, unsigned mode);

// Reads a whole file. NOT_FOUND when missing, IO otherwise; INVALID_ARGUMENT
// for a directory, or a file holding more than `max_bytes` (a device such as
// /dev/zero never ends: give a cap wherever the path is the user's). A FIFO
// with no writer reads as empty, never waits for one.
Result<std::string> ReadFile(const std::string& path, uint64_t max_bytes = UINT64_MAX);
// The first `n` bytes of a file (fewer when it is shorter), read as ReadFile
// reads (a FIFO without a writer is empty; a device is read up to n).
Result<std::string> ReadFilePrefix(const std::string& path, uint64_t n);
// Writes via a temp file + fsync + rename + fsync of its directory: readers
// see old or new, never half, and the new is durable once this returns OK.
// IO when a step before the rename fails (a failed fsync or close
// included): the old stays. IO too when the directory's fsync fails with an
// I/O error after it (the new is in place, but may not survive a crash); a
// directory that cannot be opened or fsynced (EINVAL) is let be, as SQLite does.
Status WriteFileAtomic(const std::string& path, const std::string& data);

// Copies the regular file `from` to `to`, which must not exist (ALREADY_EXISTS),
// with `from`'s permission bits, and fsyncs it: durable once this returns OK.
// NOT_FOUND when `from` is missing (removed meanwhile); IO otherwise (a
// partial `to` is removed). `*bytes` (optional) gets the size copied.
Status CopyFileDurably(const std::string& from, const std::string& to, uint64_t* bytes = nullptr);
// fsyncs a directory, making the names created in it durable.
Status SyncDir(const std::string& dir);

// realpath(3); NOT_FOUND when the file does not exist.
Result<std::string> CanonicalPath(const std::string& path);
// Whether `a` and `b` name the same place: the same file name in
// directories that resolve to the same one (symlinks, "..", a relative
// spelling), the file itself existing or not; compared as given when a
// directory cannot be resolved.
bool SamePath(const std::string& a, const std::string& b);
std::string DirName(const std::string& path);
std::string BaseName(const std::string& path);
std::string JoinPath(const std::string& a, const std::string& b);
// `path` made absolute against the working directory (not resolving links);
// paths stored in the registry must not depend on where a command ran.
std::string AbsolutePath(const std::string& path);
bool FileExists(const std::string& path);
bool IsDirectory(const std::string& path);

// The directory holding the running executable (/proc/self/exe).
std::string SelfExeDir();

}  // namespace mms
