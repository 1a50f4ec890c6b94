#include "core/paths.h"

#include "core/units.h"

#include <fcntl.h>
#include <limits.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace mms {

EnvLookup ProcessEnv() {
  return [](const char* k) -> const char* { return std::getenv(k); };
}

static bool NonEmpty(const char* s) { return s && *s; }

Result<std::string> DefaultDataDir(const EnvLookup& env) {
  if (NonEmpty(env("XDG_DATA_HOME"))) return JoinPath(env("XDG_DATA_HOME"), "mms");
  if (NonEmpty(env("HOME"))) return JoinPath(env("HOME"), ".local/share/mms");
  return InvalidArgument(
      "no data dir: neither $XDG_DATA_HOME nor $HOME is set (a service started without a user?); pass --data-dir DIR "
      "or set [daemon] data_dir in mms.toml");
}

std::string DefaultSocketPath(const EnvLookup& env, const std::string& data_dir) {
  if (NonEmpty(env("XDG_RUNTIME_DIR"))) return JoinPath(JoinPath(env("XDG_RUNTIME_DIR"), "mms"), "mms.sock");
  return JoinPath(data_dir, "mms.sock");
}

Status MakeDirs(const std::string& given, unsigned mode) {
  std::string dir = given;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();  // "/srv/mms/": the leaf is mms
  if (dir.empty()) return InvalidArgument("empty directory path");
  std::string cur;
  size_t pos = 0;
  bool created = false;  // the leaf, by this call
  while (pos != std::string::npos) {
    pos = dir.find('/', pos + 1);
    cur = dir.substr(0, pos);
    if (cur.empty()) continue;
    bool leaf = pos == std::string::npos;
    if (::mkdir(cur.c_str(), leaf ? mode : 0755) == 0) created = leaf;
    else if (errno != EEXIST) return IoError("cannot create directory " + cur + ": " + std::strerror(errno));
  }
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0) return IoError("cannot stat " + dir + ": " + std::strerror(errno));
  if (!S_ISDIR(st.st_mode)) return IoError(dir + " exists and is not a directory");
  // Exactly `mode` whatever the umask, for a directory made here; one that
  // was there already keeps its mode (a shared directory such as /run or a
  // project's own must not be closed to the others who use it).
  if (created && (st.st_mode & 07777) != mode) ::chmod(dir.c_str(), mode);
  return Status::Ok();
}

namespace {

// ReadFile; with `prefix`, a longer file is read only up to max_bytes.
Result<std::string> ReadUpTo(const std::string& path, uint64_t max_bytes, bool prefix) {
  // O_NONBLOCK: a FIFO nobody writes to reads as empty instead of waiting
  // forever for a writer; cleared once open, so a pipe with a writer is read
  // to its end.
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    if (errno == ENOENT) return NotFound("no such file: " + path);
    return IoError("cannot read " + path + ": " + std::strerror(errno));
  }
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  struct stat st;
  if (::fstat(fd, &st) != 0) return IoError("cannot read " + path + ": " + std::strerror(errno));
  if (S_ISDIR(st.st_mode)) return InvalidArgument(path + " is a directory, not a file");
  auto too_big = [&] {
    return InvalidArgument(path + " holds more than " + FormatBytes(max_bytes) + ", the limit for it" +
                           (S_ISREG(st.st_mode) ? "" : " (it is not a regular file: a device never ends)"));
  };
  if (!prefix && S_ISREG(st.st_mode) && static_cast<uint64_t>(st.st_size) > max_bytes) return too_big();
  std::string out;
  if (S_ISREG(st.st_mode)) out.reserve(static_cast<size_t>(std::min<uint64_t>(static_cast<uint64_t>(st.st_size), max_bytes)));
  char buf[1 << 16];
  for (;;) {
    const size_t want = prefix ? static_cast<size_t>(std::min<uint64_t>(sizeof buf, max_bytes - out.size())) : sizeof buf;
    if (want == 0) break;
    ssize_t n = ::read(fd, buf, want);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return IoError("cannot read " + path + ": " + std::strerror(errno));
    if (n == 0) break;
    if (static_cast<uint64_t>(n) > max_bytes - out.size()) return too_big();
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

}  // namespace

Result<std::string> ReadFile(const std::string& path, uint64_t max_bytes) { return ReadUpTo(path, max_bytes, false); }

Result<std::string> ReadFilePrefix(const std::string& path, uint64_t n) { return ReadUpTo(path, n, true); }

Status WriteFileAtomic(const std::string& path, const std::string& data) {
  // Never rename over something that is not a regular file: as root, a
  // device such as /dev/null would be replaced by a file.
  struct stat st;
  if (::lstat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode))
    return InvalidArgument(path + " exists and is not a regular file");
  std::string tmp = path + ".tmp." + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return IoError("cannot write " + path + " (its temporary file " + BaseName(tmp) + "): " + std::strerror(errno));
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::write(fd, data.data() + off, data.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      return IoError("cannot write " + path + ": " + std::strerror(e));
    }
    off += static_cast<size_t>(n);
  }
  // A failed fsync or close (EIO, a full quota on NFS) means the bytes may
  // not be there: the old file stays, and the caller hears of it.
  const bool synced = ::fsync(fd) == 0;
  int e = errno;
  const bool closed = ::close(fd) == 0;
  if (!closed && synced) e = errno;
  if (!synced || !closed) {
    ::unlink(tmp.c_str());
    return IoError("cannot write " + path + ": " + std::strerror(e));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    e = errno;
    ::unlink(tmp.c_str());
    return IoError("cannot rename " + tmp + " to " + path + ": " + std::strerror(e));
  }
  // The rename itself, durable. As SQLite does, a directory that cannot be
  // opened (write but no read permission) or fsynced (EINVAL: a file
  // system without it) is let be; an I/O error is said.
  const int dfd = ::open(DirName(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return Status::Ok();
  const int rc = ::fsync(dfd);
  e = errno;
  ::close(dfd);
  if (rc != 0 && e != EINVAL)
    return IoError(path + " is written, but its directory could not be synced (it may not survive a crash): " +
                   std::strerror(e));
  return Status::Ok();
}

Status CopyFileDurably(const std::string& from, const std::string& to, uint64_t* bytes) {
  int in = ::open(from.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) {
    if (errno == ENOENT) return NotFound("no such file: " + from);
    return IoError("cannot read " + from + ": " + std::strerror(errno));
  }
  struct stat st;
  if (::fstat(in, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(in);
    return IoError("cannot copy " + from + ": not a regular file");
  }
  int out = ::open(to.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, st.st_mode & 0777);
  if (out < 0) {
    int e = errno;
    ::close(in);
    if (e == EEXIST) return AlreadyExists(to + " already exists");
    return IoError("cannot create " + to + ": " + std::strerror(e));
  }
  auto fail = [&](const std::string& what, int e) {
    ::close(in);
    ::close(out);
    ::unlink(to.c_str());
    return IoError(what + ": " + std::strerror(e));
  };
  uint64_t done = 0;
  while (true) {
    // copy_file_range(2) keeps the bytes in the kernel (or shares extents on
    // file systems that can); read/write where it is not supported.
    ssize_t n = ::copy_file_range(in, nullptr, out, nullptr, 1 << 30, 0);
    if (n < 0 && (errno == EXDEV || errno == ENOSYS || errno == EINVAL || errno == EOPNOTSUPP)) {
      n = ::sendfile(out, in, nullptr, 1 << 30);
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail("cannot copy " + from + " to " + to, errno);
    }
    if (n == 0) break;
    done += static_cast<uint64_t>(n);
  }
  if (::fsync(out) != 0) return fail("cannot write " + to, errno);
  ::close(in);
  if (::close(out) != 0) {
    int e = errno;
    ::unlink(to.c_str());
    return IoError("cannot write " + to + ": " + std::strerror(e));
  }
  if (bytes) *bytes = done;
  return Status::Ok();
}

Status SyncDir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return IoError("cannot open " + dir + ": " + std::strerror(errno));
  int rc = ::fsync(fd);
  int e = errno;
  ::close(fd);
  if (rc != 0) return IoError("cannot sync " + dir + ": " + std::strerror(e));
  return Status::Ok();
}

Result<std::string> CanonicalPath(const std::string& path) {
  char buf[PATH_MAX];
  if (!::realpath(path.c_str(), buf)) {
    if (errno == ENOENT || errno == ENOTDIR) return NotFound("no such file: " + path);
    return IoError("cannot resolve " + path + ": " + std::strerror(errno));
  }
  return std::string(buf);
}

bool SamePath(const std::string& a, const std::string& b) {
  auto da = CanonicalPath(DirName(a)), db = CanonicalPath(DirName(b));
  if (!da.ok() || !db.ok()) return a == b;
  return *da == *db && BaseName(a) == BaseName(b);
}

std::string DirName(const std::string& path) {
  auto p = path.find_last_of('/');
  if (p == std::string::npos) return ".";
  if (p == 0) return "/";
  return path.substr(0, p);
}

std::string BaseName(const std::string& path) {
  auto p = path.find_last_of('/');
  return p == std::string::npos ? path : path.substr(p + 1);
}

std::string JoinPath(const std::string& a, const std::string& b) {
  if (a.empty()) return b;
  if (!b.empty() && b[0] == '/') return b;
  return a.back() == '/' ? a + b : a + "/" + b;
}

std::string AbsolutePath(const std::string& path) {
  if (path.empty()) return path;
  std::error_code ec;
  std::string abs = std::filesystem::absolute(path, ec).lexically_normal().string();
  if (ec) return path;
  if (abs.size() > 1 && abs.back() == '/') abs.pop_back();  // "d/." normalises to "d/"
  return abs;
}

bool FileExists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

bool IsDirectory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::string SelfExeDir() {
  char buf[PATH_MAX];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return ".";
  buf[n] = 0;
  return DirName(buf);
}

}  // namespace mms
