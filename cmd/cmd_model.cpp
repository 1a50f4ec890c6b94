// mms model register|list|show|history|stage|alias|rm|verify|import.
// All of these work on the registry file directly, with or without a daemon
// (CI pipelines); a running daemon is told to re-read it.
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <unistd.h>

#include <algorithm>
#include <map>
#include <cerrno>
#include <charconv>
#include <optional>
#include <cctype>
#include <cstring>
#include <sstream>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <set>

#include "cli.h"
#include "config/triton_config.h"
#include "core/hash.h"
#include "core/json.h"
#include "core/paths.h"
#include "core/subprocess.h"
#include "core/clock.h"
#include "core/units.h"
#include "lora/adapter.h"
#include "protocol/tensor_file.h"

namespace mms::cli {

// A version's --metrics (stored in the registry, shown by model show).
constexpr uint64_t kMaxMetricsFileBytes = 1ull << 20;

static_assert(kMaxQueueDelayUsMax * 1000 == kMaxQueueDelayMaxNs,
              "a version's --max-queue-delay-us and [scheduler] max_queue_delay must allow the same range");

// Whether a "<stem>.tmp-<pid>[-N]" staging dir was left by a registration
// that died: nobody holds its flock (NewStaging's, taken before the dir has
// that name and held until the registration is published). The pid in its
// name says nothing: after a reboot it may be another process's, and in
// another pid namespace (CI jobs in containers sharing a data dir) a live
// registration's pid is not seen at all — which used to remove its files
// under it. A ".<stem>.init-XXXXXX" dir (NewStaging's, before its flock and
// rename) counts once unlocked and over a minute old.
static bool StagingAbandoned(const std::string& path) {
  // (The name's, not the path's: a model or a data dir may be called x.tmp-y.)
  const std::string name = BaseName(path);
  const bool staging = name.find(".tmp-") != std::string::npos;
  const bool init = !name.empty() && name[0] == '.' && name.find(".init-") != std::string::npos;
  if (!staging && !init) return false;
  const int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return false;
  const bool held = ::flock(fd, LOCK_EX | LOCK_NB) != 0;
  struct stat st {};
  const bool old = ::fstat(fd, &st) == 0 && st.st_mtime < ::time(nullptr) - 60;
  ::close(fd);
  return !held && (staging || old);
}

// Removes "<dir>/*.tmp-<pid>" staging dirs left by registrations that died.
void CleanStaleStaging(const std::string& dir) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) return;
  std::vector<std::filesystem::path> stale;
  for (std::filesystem::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec))
    if (StagingAbandoned(it->path().string())) stale.push_back(it->path());
  for (const auto& p : stale) std::filesystem::remove_all(p, ec);
}

// The packed files whose SHA-256 a packed dir records (SHA256SUMS, in
// sha256sum(1)'s format, so `sha256sum -c SHA256SUMS` checks them too). The
// weight-less module.pt is recorded since stop 18 and the sample input (the
// warm-up's) since stop 19: older dirs lack their lines.
static const char* const kChecksummed[] = {"weights.safetensors", "adapter.safetensors", "module.pt", "sample.json",
                                           "sample.safetensors"};
static const char* const kChecksumFile = "SHA256SUMS";
// Written into the packed dir a repack replaced: verify lists the dir as
// unused, not as a problem (exit 0), until --prune removes it.
static const char* const kReplacedMarker = "REPLACED_BY";

Result<Staging> NewStaging(Cli& cli, const std::string& name, const std::string& version, const std::string& sha256,
                           const std::string& stem_suffix) {
  Staging st;
  MMS_ASSIGN_OR_RETURN(std::string artifacts, cli.ArtifactsDir());
  st.model_dir = JoinPath(artifacts, name);
  MMS_RETURN_IF_ERROR(MakeDirs(st.model_dir, 0755));
  CleanStaleStaging(st.model_dir);
  st.stem = version + "-" + sha256.substr(0, 12) + stem_suffix;
  // A directory of this call's own (two processes of one pid, in two
  // containers sharing the data dir, must not share one), flocked before it
  // takes its staging name, so no one ever sees that name unlocked.
  std::string init = JoinPath(st.model_dir, "." + st.stem + ".init-XXXXXX");
  if (::mkdtemp(init.data()) == nullptr)
    return IoError("cannot create a directory in " + st.model_dir + ": " + std::strerror(errno));
  // (mkdtemp makes it 0700; a packed dir is 0755 as MakeDirs makes them, for a daemon of another user.)
  const int fd = ::chmod(init.c_str(), 0755) == 0 ? ::open(init.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
  int rc = fd < 0 ? -1 : 0;
  // (Blocks at most for another process's probe of it, StagingAbandoned's.)
  while (fd >= 0 && (rc = ::flock(fd, LOCK_EX)) != 0 && errno == EINTR) {
  }
  // Named with mkdtemp's random part too, so a name is never reused (a
  // prober that judged an earlier dir of that name cannot remove this one).
  // A file system without RENAME_NOREPLACE (FUSE, NFS: EINVAL) gets a plain
  // rename, safe to a name that random.
  const std::string base = JoinPath(st.model_dir, st.stem + ".tmp-" + std::to_string(::getpid()) + "-" +
                                                      init.substr(init.size() - 6));
  for (int n = 0; rc == 0; ++n) {
    st.dir = n == 0 ? base : base + "-" + std::to_string(n);
    if (::renameat2(AT_FDCWD, init.c_str(), AT_FDCWD, st.dir.c_str(), RENAME_NOREPLACE) == 0) break;
    if ((errno == EINVAL || errno == ENOSYS) && !FileExists(st.dir) && ::rename(init.c_str(), st.dir.c_str()) == 0) break;
    if (errno != EEXIST || n == 999) rc = -1;
  }
  if (rc != 0) {
    const int e = errno;
    if (fd >= 0) ::close(fd);
    ::rmdir(init.c_str());  // ours, and still empty
    return IoError("cannot make a staging directory in " + st.model_dir + ": " + std::strerror(e));
  }
  st.lock = std::make_shared<LockedFd>(fd);
  return st;
}

// fsyncs every file under `dir` and the directories themselves: what mmsd
// wrote there (module.pt, through libtorch, unsynced) and the sample copy.
static Status SyncTree(const std::string& dir) {
  std::error_code ec;
  for (std::filesystem::recursive_directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string path = it->path().string();
    if (it->is_directory(ec)) {
      MMS_RETURN_IF_ERROR(SyncDir(path));
      continue;
    }
    if (!it->is_regular_file(ec)) continue;
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return IoError("cannot sync " + path + ": " + std::strerror(errno));
    const int rc = ::fsync(fd);
    const int e = errno;
    ::close(fd);
    if (rc != 0) return IoError("cannot sync " + path + ": " + std::strerror(e));
  }
  if (ec) return IoError("cannot list " + dir + ": " + ec.message());
  return SyncDir(dir);
}

Result<std::string> PublishStaging(const std::string& staging, const std::string& dir, const std::string& stem) {
  std::error_code ec;
  // Durable before the registry names them: a power loss after the commit
  // must not leave a row pointing at a directory, or a module.pt, that
  // never reached the disk.
  if (Status st = SyncTree(staging); !st.ok()) {
    std::filesystem::remove_all(staging, ec);
    return st;
  }
  std::string sums;
  for (const char* f : kChecksummed) {
    std::string path = JoinPath(staging, f);
    if (!FileExists(path)) continue;
    auto h = Sha256File(path);
    if (!h.ok()) {
      std::filesystem::remove_all(staging, ec);
      return h.status();
    }
    sums += *h + "  " + f + "\n";
  }
  if (!sums.empty()) {
    if (Status st = WriteFileAtomic(JoinPath(staging, kChecksumFile), sums); !st.ok()) {
      std::filesystem::remove_all(staging, ec);
      return st;
    }
  }
  std::string why = "999 earlier copies of it are there; remove the ones no version uses";
  for (int n = 1; n < 1000; ++n) {
    std::string final_dir = JoinPath(dir, n == 1 ? stem : stem + "-" + std::to_string(n));
    // rename(2) will not replace a non-empty directory, so two registrations racing
    // for one name cannot take each other's files.
    std::filesystem::rename(staging, final_dir, ec);
    if (!ec) {
      // The rename, and the model's directory when this made it, durable.
      Status st = SyncDir(dir);
      if (st.ok()) st = SyncDir(DirName(dir));
      if (!st.ok()) {
        std::filesystem::remove_all(final_dir, ec);
        return st;
      }
      return final_dir;
    }
    if (ec != std::errc::directory_not_empty && ec != std::errc::file_exists) {
      why = ec.message();
      break;
    }
  }
  std::filesystem::remove_all(staging, ec);
  return IoError("cannot store packed files in " + JoinPath(dir, stem) + ": " + why);
}

Result<VersionRecord> RegisterPublished(Registry& reg, const NewVersion& v) {
  auto rec = reg.Register(v);
  if (!rec.ok()) {
    auto now = reg.Resolve(Ref{Ref::Kind::kVersion, v.model, v.version, ""});
    std::error_code ec;
    if (!(now.ok() && now->packed_dir == v.packed_dir)) std::filesystem::remove_all(v.packed_dir, ec);
  }
  return rec;
}

namespace {

// This process's file size limit, as said in a message ("none").
static std::string FileSizeLimit() {
  struct rlimit rl {};
  if (::getrlimit(RLIMIT_FSIZE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) return "none";
  return FormatBytes(static_cast<uint64_t>(rl.rlim_cur));
}

struct RegisterArgs {
  std::string name, version, path, description, metrics_file, fingerprint, sample_input;
  double sla_p99_ms = 0;
  bool has_sla = false;
  std::vector<std::string> labels;
  std::vector<std::string> variable_dims;  // --variable-dim NAME:DIM
  // import: the variable dims a Triton config gives forward's inputs, once
  // they are known (instead of variable_dims).
  std::function<Result<std::vector<std::string>>(const std::vector<InputSpec>&)> variable_dims_for;
  int max_batch_size = 0;
  int64_t max_queue_delay_us = 0;
  bool has_max_batch_size = true, has_max_queue_delay = true;  // given (a rerun compares only what is given)
  // A rerun with other settings than recorded is refused (model register);
  // import derives them from the repository (falling back to unbatched) and
  // compares the weights only.
  bool rerun_settings_must_match = true;
};

// Draws "hashing model.pt [#####.....] 45%  380 MiB / 850 MiB" on a terminal.
class Progress {
 public:
  Progress(const std::string& what, bool enabled) : what_(what), enabled_(enabled && ::isatty(2)) {}
  void operator()(uint64_t done, uint64_t total) {
    if (!enabled_ || total < (64ull << 20)) return;
    // (Clamped: a file growing while it is hashed passes its first size.)
    int pct = static_cast<int>(std::min<uint64_t>(done, total) * 100 / total);
    if (pct == last_) return;
    last_ = pct;
    std::string bar(30, '.');
    for (int i = 0; i < pct * 30 / 100; ++i) bar[i] = '#';
    std::cerr << "\r" << what_ << " [" << bar << "] " << pct << "%  " << FormatBytes(done) << " / "
              << FormatBytes(total) << std::flush;
    if (done >= total) std::cerr << "\n";
  }

 private:
  std::string what_;
  bool enabled_;
  int last_ = -1;
};

// What PackArtifact made: mmsd's findings (inputs, weight bytes, ...), the
// published packed dir, and the stored sample input in it ("" if none).
struct Packed {
  nlohmann::json info;
  std::string dir, sample_input;
};

// Runs `mmsd inspect-artifact` (which links libtorch) with `argv` on
// `canon`: its JSON description. Its refusals are INVALID_ARGUMENT; a
// process that did not end well (killed, out of time, not started) is said
// as such, with `nothing`: what the failure left undone.
Result<nlohmann::json> RunInspectProcess(Cli& cli, const std::vector<std::string>& argv, const std::string& canon,
                                         const std::string& nothing) {
  if (!cli.g.quiet && !cli.g.json && ::isatty(2)) std::cerr << "checking " << BaseName(canon) << " ...\n";
  ProcResult pr = RunProcess(argv, 3600);
  if (pr.exit_code != 0) {
    std::string msg = Trim(pr.err);
    if (pr.exit_code == 127) return Internal("cannot run " + argv[0] + " to check the artifact: " + msg);
    if (pr.exit_code == 2) return InvalidArgument(msg);
    // Killed (the kernel's OOM killer on a big model) or stopped: it said
    // nothing, so say what is known (RunProcess reports a signal as 128+N).
    if (pr.timed_out)
      return Internal("checking the artifact failed: mmsd inspect-artifact did not finish within an hour and was "
                      "stopped; " + nothing);
    if (pr.exit_code > 128) {
      const int sig = pr.exit_code - 128;
      // SIGXFSZ: writing the packed files passed the file size limit (ulimit -f), not memory.
      if (sig == SIGXFSZ)
        return Internal("checking the artifact failed: mmsd inspect-artifact was killed by signal " +
                        std::to_string(sig) + " (SIGXFSZ: the packed files passed the file size limit, ulimit -f: " +
                        FileSizeLimit() + ")" + (msg.empty() ? "" : ": " + msg) + "; " + nothing +
                        ": raise the limit (ulimit -f unlimited) and retry");
      return Internal("checking the artifact failed: mmsd inspect-artifact was killed by signal " + std::to_string(sig) +
                      (sig == SIGKILL ? " (out of memory? see dmesg)" : "") + (msg.empty() ? "" : ": " + msg) + "; " +
                      nothing + ": retry" + (sig == SIGKILL ? ", with more memory if it ran out" : ""));
    }
    return Internal("checking the artifact failed: " +
                    (msg.empty() ? "mmsd inspect-artifact ended with exit code " + std::to_string(pr.exit_code) : msg));
  }
  nlohmann::json info = nlohmann::json::parse(pr.out, nullptr, false);
  if (info.is_discarded()) return Internal("mmsd inspect-artifact printed no JSON: " + pr.out);
  return info;
}

// RunInspectProcess, whose description must say it read the bytes hashed as
// `sha256`. `doing`: what the check is for ("registered").
Result<nlohmann::json> RunInspect(Cli& cli, const std::vector<std::string>& argv, const std::string& canon,
                                  const std::string& sha256, const std::string& doing, const std::string& nothing) {
  MMS_ASSIGN_OR_RETURN(nlohmann::json info, RunInspectProcess(cli, argv, canon, nothing));
  // What was checked is what was hashed: a file written meanwhile would
  // record one file's hash beside another's weights (a review's CI job
  // rewrote it in place while it was registered).
  if (const std::string seen = info.value("sha256", ""); seen.empty())
    return FailedPrecondition(argv[0] + " is older than this mms (it does not say what it packed): install mms and "
                              "mmsd of one release together");
  else if (seen != sha256)
    return Conflict(canon + " changed while it was being " + doing + " (sha256 " + sha256.substr(0, 12) +
                    " when hashed, " + seen.substr(0, 12) + " when read): " + nothing +
                    "; retry once whatever writes it has finished");
  return info;
}

// Copies the sample input into `staging`, once: the inputs' specs, the
// batching check and the copy stored with the version are then all the same
// bytes (a sample rewritten meanwhile, by a CI job say, could otherwise give
// specs of one version and store another, which every warm-up then fails).
// A sample is at most what a request may be (predict's file cap: 16 times
// [daemon] max_message_bytes): mmsd parses it at every load.
Status CheckSampleFile(const std::string& sample) {
  struct stat sst;
  if (::stat(sample.c_str(), &sst) != 0)
    return InvalidArgument("--sample-input " + sample + ": " + std::strerror(errno));
  if (!S_ISREG(sst.st_mode))
    return InvalidArgument("--sample-input " + sample + " is not a regular file; it is stored with the version: "
                           "give a .json or .safetensors file");
  return Status::Ok();
}

Result<std::string> StageSample(Cli& cli, const std::string& sample, const std::string& staging) {
  MMS_RETURN_IF_ERROR(CheckSampleFile(sample));
  MMS_ASSIGN_OR_RETURN(const Config* cfg, cli.config());
  const uint64_t cap = 16 * cfg->daemon.max_message_bytes;
  auto over = [&](uint64_t size) {
    return InvalidArgument("--sample-input " + sample + " is " + FormatBytes(size) + ", over the " + FormatBytes(cap) +
                           " a request file may be (16 x [daemon] max_message_bytes): mmsd reads it at every load; "
                           "give a sample of a few rows");
  };
  {  // unreadable, too big: the user's file is at fault (exit 2), not the staging dir
    const int fd = ::open(sample.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return InvalidArgument("--sample-input " + sample + ": " + std::strerror(errno));
    struct stat st;
    const bool big = ::fstat(fd, &st) == 0 && static_cast<uint64_t>(st.st_size) > cap;
    ::close(fd);
    if (big) return over(static_cast<uint64_t>(st.st_size));
  }
  const std::string ext = IsSafetensorsPath(sample) ? ".safetensors" : ".json";  // read as the original would be
  const std::string staged = JoinPath(staging, "sample" + ext);
  std::error_code ec;
  MMS_RETURN_IF_ERROR(MakeDirs(staging, 0755));
  std::filesystem::copy_file(sample, staged, ec);
  if (ec) return IoError("cannot store the sample input " + sample + " in " + staging + ": " + ec.message());
  if (const uint64_t size = std::filesystem::file_size(staged, ec); !ec && size > cap) return over(size);  // (grown meanwhile)
  return staged;
}

// Checks `canon` with `mmsd inspect-artifact` and writes its packed form —
// with a copy of `sample_input` when given (see StageSample) — into a
// directory of its own under the data dir.
Result<Packed> PackArtifact(Cli& cli, const std::string& canon, const std::string& name, const std::string& version,
                            const std::string& sha256, const std::string& sample_input, int max_batch_size,
                            const std::string& stem_suffix = "") {
  MMS_ASSIGN_OR_RETURN(Staging stage, NewStaging(cli, name, version, sha256, stem_suffix));
  const std::string& staging = stage.dir;
  std::error_code ec;
  std::string sample;
  if (!sample_input.empty()) {
    auto staged = StageSample(cli, sample_input, staging);
    if (!staged.ok()) {
      std::filesystem::remove_all(staging, ec);
      return staged.status();
    }
    sample = *staged;
  }
  std::vector<std::string> argv{MmsdPath(), "inspect-artifact", "--path", canon, "--pack-dir", staging};
  if (!sample.empty()) argv.insert(argv.end(), {"--sample-input", sample});
  if (max_batch_size > 0 && !sample.empty())
    argv.insert(argv.end(), {"--max-batch-size", std::to_string(max_batch_size)});
  Packed out;
  auto info = RunInspect(cli, argv, canon, sha256, "registered", "nothing was stored or registered");
  if (!info.ok()) {
    std::filesystem::remove_all(staging, ec);
    // mmsd read the staged copy, gone now: its errors name the user's file.
    std::string msg = info.status().message();
    for (size_t at = 0; !sample.empty() && (at = msg.find(sample, at)) != std::string::npos; at += sample_input.size())
      msg.replace(at, sample.size(), sample_input);
    return Status(info.status().code(), msg);
  }
  out.info = std::move(info).value();
  MMS_ASSIGN_OR_RETURN(out.dir, PublishStaging(staging, stage.model_dir, stage.stem));
  if (!sample.empty()) out.sample_input = JoinPath(out.dir, BaseName(sample));  // inside the packed dir, once it has its name
  return out;
}

// The batching check's refusal says what registration should do instead
// ("register without --max-batch-size"); other commands say `instead`.
Status BatchingHint(const Status& st, const std::string& instead) {
  static constexpr std::string_view kRegisterHint = "register without --max-batch-size";
  std::string msg = st.message();
  if (auto at = msg.find(kRegisterHint); at != std::string::npos && st.code() == Code::kInvalidArgument)
    msg.replace(at, kRegisterHint.size(), instead);
  return Status(st.code(), msg);
}

// --max-batch-size and --max-queue-delay-us, as register and batching take them.
Status CheckBatchingArgs(int max_batch_size, int64_t max_queue_delay_us) {
  if (max_batch_size < 0) return InvalidArgument("--max-batch-size must be 0 (off) or positive");
  if (max_queue_delay_us < 0 || max_queue_delay_us > kMaxQueueDelayUsMax)
    return InvalidArgument("--max-queue-delay-us " + std::to_string(max_queue_delay_us) + " is out of range; use 0 " +
                           "(the [scheduler] max_queue_delay default) to " + std::to_string(kMaxQueueDelayUsMax) +
                           " (10 s, the most [scheduler] max_queue_delay allows)");
  if (max_queue_delay_us > 0 && max_batch_size == 0)
    return InvalidArgument("--max-queue-delay-us is how long a batch waits for more rows: it needs --max-batch-size "
                           "(without it the version is not batched, and the delay would do nothing)");
  return Status::Ok();
}

// NAME:VERSION registered already with the same weights is no error (a CI
// job run again, or the same job twice at once): its record, with
// *unchanged set. Other weights under it are (ALREADY_EXISTS, naming both
// hashes), and so are other settings with the same weights. The arguments
// are checked first, whatever is registered: a usage error is exit 2 on a
// rerun too.
Result<VersionRecord> RegisterVersion(Cli& cli, Registry& reg, const RegisterArgs& a, bool* unchanged) {
  *unchanged = false;
  MMS_RETURN_IF_ERROR(ValidateName(a.name));
  MMS_RETURN_IF_ERROR(ValidateVersion(a.version));
  NewVersion v;
  v.model = a.name;
  v.version = a.version;
  v.description = a.description;
  v.data_fingerprint = a.fingerprint;
  v.max_batch_size = a.max_batch_size;
  if (a.has_sla) {
    if (!(a.sla_p99_ms > 0)) return InvalidArgument("--sla-p99-ms must be a positive number of milliseconds");
    v.sla_p99_ms = a.sla_p99_ms;
  }
  if (!a.variable_dims.empty() && a.sample_input.empty())
    return InvalidArgument("--variable-dim frees a dim of the shapes --sample-input records: give --sample-input "
                           "(without one no shape is checked)");
  MMS_RETURN_IF_ERROR(CheckVariableDims(a.variable_dims));
  MMS_RETURN_IF_ERROR(CheckBatchingArgs(a.max_batch_size, a.max_queue_delay_us));
  if (a.max_batch_size > 0 && a.sample_input.empty())
    return InvalidArgument("--max-batch-size needs --sample-input, so mms can check that the model batches "
                           "(its outputs must split by rows)");
  v.max_queue_delay_us = a.max_queue_delay_us;
  for (const auto& l : a.labels) {
    auto eq = l.find('=');
    if (eq == std::string::npos || eq == 0)
      return InvalidArgument("invalid label '" + l + "': use --label key=value");
    if (!v.labels.emplace(l.substr(0, eq), l.substr(eq + 1)).second)
      return InvalidArgument("--label " + l.substr(0, eq) + " is given twice: give each key once");
  }
  if (!a.metrics_file.empty()) {
    auto text = ReadFile(a.metrics_file, kMaxMetricsFileBytes);
    if (!text.ok()) return InvalidArgument("--metrics " + a.metrics_file + ": " + text.status().message());
    auto parsed = ParseJsonStrict(*text);
    if (!parsed.ok()) return InvalidArgument("--metrics " + a.metrics_file + ": " + parsed.status().message());
    v.metrics = std::move(parsed).value();
    if (!v.metrics.is_object())
      return InvalidArgument("--metrics " + a.metrics_file + " must hold a JSON object, e.g. {\"auc\": 0.91}");
  }
  if (!a.sample_input.empty()) MMS_RETURN_IF_ERROR(CheckSampleFile(a.sample_input));

  auto canon = CanonicalPath(a.path);
  struct stat st;
  const bool regular = canon.ok() && ::stat(canon->c_str(), &st) == 0 && S_ISREG(st.st_mode);
  // The version as registered already: this run again (same weights, same
  // settings: unchanged), or a refusal saying what differs. `sha` is this
  // file's, when known.
  auto rerun = [&](const VersionRecord& existing, Result<std::string> sha) -> Result<VersionRecord> {
    std::string ref = a.name + ":" + a.version, by = ", by " + existing.created_by;
    if (sha.ok() && *sha == existing.sha256) {
      // The same run again, not another registration: settings given now
      // that differ from the recorded ones would be silently dropped.
      std::vector<std::string> differ;
      auto same_file = [](const std::string& a, const std::string& b) {
        auto x = ReadFile(a), y = ReadFile(b);
        return x.ok() && y.ok() && *x == *y;
      };
      if (!a.description.empty() && a.description != existing.description) differ.push_back("--description");
      if (!a.fingerprint.empty() && a.fingerprint != existing.data_fingerprint) differ.push_back("--data-fingerprint");
      if (a.has_sla && (!existing.sla_p99_ms || *existing.sla_p99_ms != a.sla_p99_ms)) differ.push_back("--sla-p99-ms");
      if (a.has_max_batch_size && a.max_batch_size != existing.max_batch_size) differ.push_back("--max-batch-size");
      if (a.has_max_queue_delay && a.max_queue_delay_us != existing.max_queue_delay_us)
        differ.push_back("--max-queue-delay-us");
      if (!a.sample_input.empty() && (existing.sample_input.empty() || !same_file(a.sample_input, existing.sample_input)))
        differ.push_back("--sample-input");
      if (!a.metrics_file.empty() && v.metrics != existing.metrics) differ.push_back("--metrics");
      if (!a.variable_dims.empty()) {  // the dims asked for now, on the recorded shapes
        std::vector<InputSpec> asked = existing.inputs;
        for (auto& spec : asked)
          if (spec.shape)
            for (size_t d = 1; d < spec.shape->size(); ++d)
              if ((*spec.shape)[d] == kAnySize) (*spec.shape)[d] = 0;
        MMS_RETURN_IF_ERROR(MarkVariableDims(&asked, a.variable_dims));  // a usage error: exit 2, rerun or not
        if (VariableDims(asked) != VariableDims(existing.inputs)) differ.push_back("--variable-dim");
      }
      for (const auto& [key, value] : v.labels) {
        auto it = existing.labels.find(key);
        if (it == existing.labels.end() || it->second != value) {
          differ.push_back("--label " + key);
          break;
        }
      }
      if (!differ.empty() && a.rerun_settings_must_match) {
        std::string list;
        for (const auto& d : differ) list += (list.empty() ? "" : ", ") + d;
        // (Batching may have been changed since registration: it is the one
        // setting that can be changed in place.)
        const bool batching = std::any_of(differ.begin(), differ.end(), [](const std::string& d) {
          return d == "--max-batch-size" || d == "--max-queue-delay-us";
        });
        return AlreadyExists(ref + " is registered with these weights (sha256 " + sha->substr(0, 12) + by +
                             ") but other settings (" + list +
                             ") than it has, which stay: register them as a new version number" +
                             (batching ? ", or change its batching with mms model batching " + ref : ""));
      }
      *unchanged = true;
      return existing;
    }
    return AlreadyExists(ref + " is registered with other weights (sha256 " + existing.sha256.substr(0, 12) + by +
                         (sha.ok() && !sha->empty() ? "; this file " + sha->substr(0, 12) : std::string()) +
                         "); register the new weights as a new version number");
  };
  const Ref ref{Ref::Kind::kVersion, a.name, a.version, ""};
  if (auto existing = reg.Resolve(ref); existing.ok()) {
    // Said as `mms model import` says it: the same weights or other ones
    // (hashed only when the size matches; never a FIFO or a device).
    return rerun(*existing, regular && static_cast<uint64_t>(st.st_size) == existing->size_bytes
                                ? Sha256File(*canon)
                                : Result<std::string>(std::string()));
  }
  if (!canon.ok()) {
    struct stat lst;  // there, but not to be resolved (a symbolic link loop, a dangling link)
    if (::lstat(a.path.c_str(), &lst) == 0)
      return InvalidArgument("artifact " + a.path + " cannot be resolved: " + canon.status().message());
    return InvalidArgument("artifact " + a.path + " does not exist (--path must name a TorchScript file)");
  }
  if (!regular) return InvalidArgument("artifact " + *canon + " is not a regular file");
  MMS_RETURN_IF_ERROR(reg.CheckArtifactPath(*canon));
  v.artifact_path = *canon;
  v.size_bytes = static_cast<uint64_t>(st.st_size);

  Progress progress("hashing " + BaseName(*canon), !cli.g.quiet && !cli.g.json);
  MMS_ASSIGN_OR_RETURN(v.sha256, Sha256File(*canon, [&](uint64_t d, uint64_t t) { progress(d, t); }));
  // The same weights as a version of this model already has: allowed (a
  // re-tag), but a canary or experiment between the two compares nothing.
  std::string same_as;
  if (auto same = reg.List(a.name); same.ok())
    for (const VersionRecord& r : *same)
      if (r.sha256 == v.sha256) {
        same_as = r.ref();
        break;
      }

  auto packed = PackArtifact(cli, *canon, a.name, a.version, v.sha256, a.sample_input, a.max_batch_size);
  if (!packed.ok()) {
    // A refused artifact leaves no empty artifacts/<name>/ behind (nothing
    // lists it). rmdir only: a registration of the same name running now
    // has files there, or makes the directory again (MakeDirs).
    if (auto dir = cli.ArtifactsDir(); dir.ok()) ::rmdir(JoinPath(*dir, a.name).c_str());
    return packed.status();
  }
  v.inputs = InputSpecsFromJson(packed->info["inputs"]);
  Result<std::vector<std::string>> variable_dims =
      a.variable_dims_for ? a.variable_dims_for(v.inputs) : Result<std::vector<std::string>>(a.variable_dims);
  if (Status st = variable_dims.ok() ? MarkVariableDims(&v.inputs, *variable_dims) : variable_dims.status(); !st.ok()) {
    std::error_code ec;
    std::filesystem::remove_all(packed->dir, ec);
    if (auto dir = cli.ArtifactsDir(); dir.ok()) ::rmdir(JoinPath(*dir, a.name).c_str());
    return st;
  }
  if (packed->info.contains("lora_stacked")) v.lora = {{"stacked", packed->info["lora_stacked"]}};
  v.device_bytes = packed->info.value("weight_bytes", 0ull);
  v.host_bytes = v.device_bytes;
  v.packed_dir = packed->dir;
  v.sample_input = packed->sample_input;
  auto rec = RegisterPublished(reg, v);
  // Registered meanwhile by another run (the same CI job started twice):
  // judged as a rerun, by the weights this run hashed.
  if (!rec.ok() && rec.status().code() == Code::kAlreadyExists)
    if (auto existing = reg.Resolve(ref); existing.ok()) return rerun(*existing, v.sha256);
  if (rec.ok() && !same_as.empty())  // (said once registered: an error stays one line)
    cli.Note("note: " + rec->ref() + " has the same weights as " + same_as + " (sha256 " + v.sha256.substr(0, 12) +
             "): a canary or experiment between them would compare nothing");
  return rec;
}

std::string InputsText(const VersionRecord& r) { return InputSpecsText(r.inputs); }

void PrintRecord(const VersionRecord& r) {
  auto line = [](const std::string& k, const std::string& v) { std::cout << k << std::string(18 - k.size(), ' ') << v << "\n"; };
  line("ref", r.ref());
  line("stage", StageName(r.stage));
  line("aliases", r.aliases.empty() ? "-" : [&] {
    std::string s;
    for (const auto& a : r.aliases) s += (s.empty() ? "" : ", ") + a;
    return s;
  }());
  if (r.is_adapter()) {
    line("adapter of", r.base_ref);
    std::string targets;
    for (const auto& t : r.lora.value("targets", nlohmann::json::array()))
      targets += (targets.empty() ? "" : ", ") + t.value("module", "");
    line("lora", "rank " + r.lora.value("rank", nlohmann::json(0)).dump() + ", alpha " +
                     r.lora.value("alpha", nlohmann::json(0)).dump() + ", scale " +
                     r.lora.value("scale", nlohmann::json(0)).dump() + ", targets " + targets);
  } else if (r.lora.contains("stacked")) {
    std::string m;
    for (const auto& t : r.lora["stacked"]) m += (m.empty() ? "" : ", ") + t.get<std::string>();
    line("lora", "takes stacked adapter weights for " + m + " (mixed-adapter batches)");
  }
  line("artifact", r.artifact_path);
  line("size", FormatBytes(r.size_bytes));
  line("sha256", r.sha256);
  line("packed", r.packed_dir.empty() ? "no (plain TorchScript load)" : r.packed_dir);
  line("inputs", InputsText(r));
  line("weights", FormatBytes(r.device_bytes) + " on a device, " + FormatBytes(r.host_bytes) + " in host memory");
  line("sla p99", r.sla_p99_ms ? std::to_string(*r.sla_p99_ms) + " ms" : "-");
  line("max batch size", r.max_batch_size ? std::to_string(r.max_batch_size) : "off");
  if (r.max_batch_size)
    line("max queue delay", r.max_queue_delay_us ? FormatDurationNanos(r.max_queue_delay_us * 1000)
                                                 : "[scheduler] max_queue_delay (the daemon's default)");
  line("sample input", r.sample_input.empty() ? "-" : r.sample_input);
  line("created", FormatTime(r.created_ms) + " by " + r.created_by);
  line("description", r.description.empty() ? "-" : r.description);
  line("data fingerprint", r.data_fingerprint.empty() ? "-" : r.data_fingerprint);
  line("metrics", r.metrics.empty() ? "-" : r.metrics.dump());
  std::string labels;
  for (const auto& [k, v] : r.labels) labels += (labels.empty() ? "" : ", ") + k + "=" + v;
  line("labels", labels.empty() ? "-" : labels);
}

int CmdRegister(Cli& cli, const RegisterArgs& a) {
  auto reg = cli.OpenRegistry(/*create=*/true);
  if (!reg.ok()) return cli.Fail(reg.status());
  bool unchanged;
  auto rec = RegisterVersion(cli, **reg, a, &unchanged);
  if (!rec.ok()) return cli.Fail(rec.status());
  if (unchanged) {  // what it was registered with stays (a version's metadata is fixed at registration)
    nlohmann::json j = rec->ToJson();
    j["unchanged"] = true;
    cli.Emit(j, [&] {
      std::cout << rec->ref() << " is already registered with these weights (sha256 " << rec->sha256.substr(0, 12)
                << ", by " << rec->created_by << "): nothing to do\n";
    });
    return 0;
  }
  cli.NotifyDaemon();
  nlohmann::json j = rec->ToJson();
  j["unchanged"] = false;
  cli.Emit(j, [&] {
    std::cout << "registered " << rec->ref() << " (" << FormatBytes(rec->size_bytes) << ", sha256 "
              << rec->sha256.substr(0, 12) << ", inputs " << InputsText(*rec) << ")\n";
  });
  return 0;
}

int CmdList(Cli& cli, const std::string& name, const std::string& stage) {
  std::optional<Stage> st;
  if (!stage.empty()) {
    auto s = ParseStage(stage);
    if (!s.ok()) return cli.Fail(s.status());
    st = *s;
  }
  if (!name.empty())
    if (Status s = ValidateName(name); !s.ok()) return cli.Fail(s);
  auto reg = cli.OpenRegistryToList();
  if (!reg.ok()) return cli.Fail(reg.status());
  auto list = (*reg)->List(name, st);
  if (!list.ok()) return cli.Fail(list.status());
  nlohmann::json j = nlohmann::json::array();
  for (const auto& r : *list) j.push_back(r.ToJson());
  cli.Emit(j, [&] {
    if (list->empty()) {
      std::cout << "no model versions" << (stage.empty() ? "" : " in stage " + stage)
                << " (register one with: mms model register NAME --version V --path FILE)\n";
      return;
    }
    std::vector<std::vector<std::string>> rows{{"MODEL", "VERSION", "STAGE", "ALIASES", "SIZE", "CREATED", "DESCRIPTION"}};
    for (const auto& r : *list) {
      std::string aliases;
      for (const auto& a : r.aliases) aliases += (aliases.empty() ? "" : ",") + a;
      rows.push_back({r.model, r.version, StageName(r.stage), aliases.empty() ? "-" : aliases, FormatBytes(r.size_bytes),
                      FormatTime(r.created_ms), r.description.substr(0, 40)});
    }
    std::cout << FormatTable(rows);
  });
  return 0;
}

int CmdShow(Cli& cli, const std::string& ref) {
  auto reg = cli.OpenRegistry();
  if (!reg.ok()) return cli.Fail(reg.status());
  auto rec = (*reg)->Resolve(ref);
  if (!rec.ok()) return cli.Fail(rec.status());
  auto uses = (*reg)->UsesOf(*rec);
  nlohmann::json j = rec->ToJson();
  j["in_use_by"] = uses.ok() ? *uses : std::vector<std::string>{};
  cli.Emit(j, [&] {
    PrintRecord(*rec);
    if (uses.ok() && !uses->empty())
      for (const auto& u : *uses) std::cout << "in use            " << u << "\n";
  });
  return 0;
}

int CmdHistory(Cli& cli, const std::string& ref_text) {
  auto ref = ParseRef(ref_text);
  if (!ref.ok()) return cli.Fail(ref.status());
  auto reg = cli.OpenRegistry();
  if (!reg.ok()) return cli.Fail(reg.status());
  auto h = (*reg)->History(*ref);
  if (!h.ok()) return cli.Fail(h.status());
  nlohmann::json j = nlohmann::json::array();
  for (const auto& e : *h) j.push_back(e.ToJson());
  cli.Emit(j, [&] {
    std::vector<std::vector<std::string>> rows{{"TIME", "ACTOR", "ACTION", "VERSION", "FROM", "TO", "DETAIL"}};
    for (const auto& e : *h)
      rows.push_back({FormatTime(e.ts_ms), e.actor, e.action, e.version.empty() ? "-" : e.version,
                      e.from.empty() ? "-" : e.from, e.to.empty() ? "-" : e.to, e.detail});
    std::cout << FormatTable(rows);
  });
  return 0;
}

int CmdStage(Cli& cli, const std::string& ref_text, const std::string& stage_text) {
  auto ref = ParseRef(ref_text);
  if (!ref.ok()) return cli.Fail(ref.status());
  auto stage = ParseStage(stage_text);
  if (!stage.ok()) return cli.Fail(stage.status());
  auto reg = cli.OpenRegistry();
  if (!reg.ok()) return cli.Fail(reg.status());
  std::vector<std::string> archived;  // what this very change archived
  auto rec = (*reg)->SetStage(*ref, *stage, "mms model stage", &archived);
  if (!rec.ok()) return cli.Fail(rec.status());
  cli.NotifyDaemon();
  nlohmann::json j = rec->ToJson();
  if (!archived.empty()) j["archived"] = archived.front();
  cli.Emit(j, [&] {
    std::cout << rec->ref() << " is now " << StageName(rec->stage);
    if (!archived.empty()) std::cout << " (" << archived.front() << " archived)";
    std::cout << "\n";
  });
  return 0;
}

int CmdAliasSet(Cli& cli, const std::string& model, const std::string& alias, const std::string& version_text) {
  // VERSION or NAME:VERSION, as experiment, shadow and canary take it.
  std::string version = version_text;
  if (const size_t colon = version_text.find(':'); colon != std::string::npos) {
    if (version_text.substr(0, colon) != model)
      return cli.Fail(InvalidArgument(version_text + " is a version of " + version_text.substr(0, colon) + ", not of " +
                                      model + ": an alias names a version of its own model"));
    version = version_text.substr(colon + 1);
  }
  auto reg = cli.OpenRegistry();
  if (!reg.ok()) return cli.Fail(reg.status());
  if (Status st = (*reg)->SetAlias(model, alias, version); !st.ok()) return cli.Fail(st);
  cli.NotifyDaemon();
  cli.Emit({{"model", model}, {"alias", alias}, {"version", version}},
           [&] { std::cout << model << "@" << alias << " → " << model << ":" << version << "\n"; });
  return 0;
}

int CmdAliasRm(Cli& cli, const std::string& model, const std::string& alias) {
  auto reg = cli.OpenRegistry();
  if (!reg.ok()) return cli.Fail(reg.status());
  if (Status st = (*reg)->RemoveAlias(model, alias); !st.ok()) return cli.Fail(st);
  cli.NotifyDaemon();
  cli.Emit({{"model", model}, {"alias", alias}, {"removed", true}},
           [&] { std::cout << "removed alias " << model << "@" << alias << "\n"; });
  return 0;
}

int CmdRm(Cli& cli, const std::string& ref_text, bool force) {
  auto ref = ParseRef(ref_text);
  if (!ref.ok()) return cli.Fail(ref.status());
  auto reg = cli.OpenRegistry();
  if (!reg.ok()) return cli.Fail(reg.status());
  auto rec = (*reg)->Remove(*ref, force);
  if (!rec.ok()) return cli.Fail(rec.status());
  // Packed weights live in our data dir and go with the version; the
  // original artifact is the user's and stays.
  auto artifacts = cli.ArtifactsDir();
  if (artifacts.ok() && !rec->packed_dir.empty() && rec->packed_dir.rfind(*artifacts + "/", 0) == 0) {
    std::error_code ec;
    std::filesystem::remove_all(rec->packed_dir, ec);
    ::rmdir(DirName(rec->packed_dir).c_str());  // the model's directory, once its last version is gone
  }
  cli.NotifyDaemon();
  // As alias rm, limit rm and adapter rm say it: what, and "removed": true.
  cli.Emit({{"ref", rec->ref()}, {"model", rec->model}, {"version", rec->version}, {"removed", true}},
           [&] { std::cout << "removed " << rec->ref() << "\n"; });
  // The production version gone, the bare name falls back to the highest
  // version not archived — one nobody may have staged: said, not silent.
  if (rec->stage == Stage::kProduction) {
    auto now = (*reg)->Resolve(Ref{Ref::Kind::kName, rec->model, "", ""});
    cli.Note(now.ok() ? "note: " + rec->model + " had no other production version: requests for " + rec->model +
                            " now go to " + now->ref() +
                            (now->stage == Stage::kNone ? std::string(" (never staged)") : " (" + std::string(StageName(now->stage)) + ")") +
                            "; stage the one you mean with mms model stage " + rec->model + ":VERSION production"
                      : "note: " + rec->model + " has no version left to serve a request for " + rec->model);
  }
  return 0;
}

// A packed directory under the artifacts dir that no version uses: left by a
// registration killed between publishing its files and recording the
// version (or by files copied in by hand).
struct OrphanDir {
  std::string path;
  uint64_t bytes = 0;
  int64_t age_s = 0;  // since the later of its mtime and ctime (a rename sets ctime)
  bool staging = false;  // "<stem>.tmp-<pid>" (or ".<stem>.init-X") of a registration that died
  bool empty = false;    // an empty artifacts/<name>/ (a registration killed before it stored anything)
};

// Every packed directory is <artifacts>/<model>/<version>-<sha>[-n]; a version
// is matched by those last two parts, so a data dir reached by another
// spelling (relative, through a symlink, moved) still matches its versions.
std::string PackedKey(const std::filesystem::path& dir) {
  std::filesystem::path p = dir.lexically_normal();
  if (!p.has_filename()) p = p.parent_path();
  return (p.parent_path().filename() / p.filename()).string();
}

// The subdirectories of `parent`, sorted. Every filesystem call takes an
// error_code: an unreadable or vanishing directory is an error returned,
// never an exception.
std::error_code ListDirs(const std::filesystem::path& parent, std::vector<std::filesystem::path>* out) {
  std::error_code ec;
  for (std::filesystem::directory_iterator it(parent, ec), end; !ec && it != end; it.increment(ec)) {
    std::error_code type_ec;
    if (it->is_directory(type_ec)) out->push_back(it->path());
  }
  std::sort(out->begin(), out->end());
  return ec;
}

Result<std::vector<OrphanDir>> FindOrphans(const std::string& artifacts, const std::vector<VersionRecord>& all) {
  std::set<std::string> used;
  for (const auto& v : all)
    if (!v.packed_dir.empty()) used.insert(PackedKey(v.packed_dir));
  auto cannot = [&](const std::error_code& ec) {
    return IoError("cannot scan " + artifacts + " for unused packed directories: " + ec.message());
  };
  std::vector<OrphanDir> out;
  const int64_t now = static_cast<int64_t>(::time(nullptr));
  std::vector<std::filesystem::path> models;
  if (std::error_code ec = ListDirs(artifacts, &models); ec && ec != std::errc::no_such_file_or_directory)
    return cannot(ec);
  for (const auto& model : models) {
    std::vector<std::filesystem::path> dirs;
    if (std::error_code ec = ListDirs(model, &dirs)) return cannot(ec);
    if (std::error_code ec; dirs.empty() && std::filesystem::is_empty(model, ec) && !ec) {
      OrphanDir o;
      o.path = model.string();
      o.empty = true;
      struct stat st {};
      if (::stat(o.path.c_str(), &st) == 0) o.age_s = now - std::max<int64_t>(st.st_mtime, st.st_ctime);
      out.push_back(std::move(o));
      continue;
    }
    for (const auto& d : dirs) {
      std::string name = d.filename().string();
      bool dead_staging = false;
      if (name.find(".tmp-") != std::string::npos ||
          (name[0] == '.' && name.find(".init-") != std::string::npos)) {  // a registration's: only once abandoned
        if (!StagingAbandoned(d.string())) continue;
        dead_staging = true;
      }
      if (used.count(PackedKey(d))) continue;
      OrphanDir o;
      o.staging = dead_staging;
      o.path = d.string();
      std::error_code ec;
      for (std::filesystem::recursive_directory_iterator f(d, ec), end; !ec && f != end; f.increment(ec)) {
        std::error_code size_ec;
        if (f->is_regular_file(size_ec)) o.bytes += f->file_size(size_ec);
      }
      struct stat st {};
      if (::stat(o.path.c_str(), &st) == 0) o.age_s = now - std::max<int64_t>(st.st_mtime, st.st_ctime);
      out.push_back(std::move(o));
    }
  }
  return out;  // sorted: ListDirs sorts each level
}

// A packed dir's SHA256SUMS: file name → hash ({} without one); its
// damaged lines are said in `problems` (optional).
std::map<std::string, std::string> RecordedSums(const std::string& dir, std::vector<std::string>* problems) {
  std::map<std::string, std::string> recorded;
  if (auto text = ReadFile(JoinPath(dir, kChecksumFile)); text.ok()) {
    std::istringstream in(*text);
    std::string line;
    while (std::getline(in, line)) {
      std::istringstream l(line);
      std::string hash, name;
      if (l >> hash >> name && hash.size() == 64 &&
          hash.find_first_not_of("0123456789abcdef") == std::string::npos)
        recorded[name] = hash;
      else if (!line.empty() && problems)
        problems->push_back(std::string(kChecksumFile) + " is damaged (line '" + line.substr(0, 80) + "')");
    }
  }
  return recorded;
}

// The packed weights against SHA256SUMS (written at registration); a packed
// dir from before it existed gets its safetensors structure checked (header,
// sizes: a truncation), which finds no changed bytes.
std::vector<std::string> CheckPacked(const std::string& dir, const VersionRecord& rec, Progress& progress) {
  const std::string fix = "mms model repack " + rec.ref() + " writes them anew from the original " +
                          (rec.is_adapter() ? "adapter directory" : "artifact");
  std::vector<std::string> problems;
  std::map<std::string, std::string> recorded = RecordedSums(dir, &problems);
  const bool has_sums = FileExists(JoinPath(dir, kChecksumFile));
  for (const char* f : kChecksummed) {
    std::string path = JoinPath(dir, f);
    if (!FileExists(path)) continue;
    auto it = recorded.find(f);
    const bool weights = std::string(f) == "weights.safetensors" || std::string(f) == "adapter.safetensors";
    if (it == recorded.end() && !weights) continue;  // a dir from before its line was recorded
    if (it == recorded.end() && has_sums) {
      problems.push_back(std::string(kChecksumFile) + " has no checksum for " + f + " (damaged?)");
      continue;
    }
    if (it == recorded.end()) {
      if (auto h = ReadSafetensorsHeader(path); !h.ok())
        problems.push_back(std::string("packed ") + f + " is damaged: " + h.status().message());
      continue;
    }
    auto h = Sha256File(path, [&](uint64_t d, uint64_t t) { progress(d, t); });
    if (!h.ok())
      problems.push_back(std::string("packed ") + f + ": " + h.status().message());
    else if (*h != it->second)
      problems.push_back(std::string("packed ") + f + " changed since registration: sha256 " + h->substr(0, 12) +
                         " != recorded " + it->second.substr(0, 12) + " (" +
                         (std::string(f).rfind("sample.", 0) == 0
                              ? "mms model repack " + rec.ref() + " --sample-input FILE stores a good one"
                              : fix) +
                         ")");
  }
  return problems;
}

// Writes a version's packed files anew from its original artifact (which must
// still hash to the registered SHA-256): the repair for damaged packed files
// that keeps the version's id, stage, aliases, pins and rollouts.
int CmdRepack(Cli& cli, const std::string& ref_text, const std::string& sample_input,
              const std::vector<std::string>& variable_dims) {
  auto ref = ParseRef(ref_text);
  if (!ref.ok()) return cli.Fail(ref.status());
  auto reg = cli.OpenRegistry();
  if (!reg.ok()) return cli.Fail(reg.status());
  auto rec = (*reg)->Resolve(*ref);
  if (!rec.ok()) return cli.Fail(rec.status());
  if (rec->is_adapter() && (!sample_input.empty() || !variable_dims.empty()))
    return cli.Fail(InvalidArgument(rec->ref() + " is a LoRA adapter: it takes its base's inputs, no " +
                                    (sample_input.empty() ? "--variable-dim" : "--sample-input")));
  // "none": no variable dims (the new sample's shapes, all checked).
  const bool no_variable = variable_dims.size() == 1 && variable_dims[0] == "none";
  if (!no_variable) {
    if (Status st = CheckVariableDims(variable_dims); !st.ok()) return cli.Fail(st);
    if (!variable_dims.empty() && sample_input.empty() && rec->sample_input.empty())
      return cli.Fail(InvalidArgument("--variable-dim frees a dim of the shapes a sample input records, and " +
                                      rec->ref() + " has none stored: give --sample-input"));
  }
  if (rec->packed_dir.empty())
    return cli.Fail(FailedPrecondition(rec->ref() + " has no packed files: it loads from " + rec->artifact_path));
  if (!FileExists(rec->artifact_path))
    return cli.Fail(FailedPrecondition("the original artifact of " + rec->ref() + " (" + rec->artifact_path +
                                       ") is gone: nothing to repack from; register the model again as a new version"));
  Progress progress("hashing " + BaseName(rec->artifact_path), !cli.g.quiet && !cli.g.json);
  auto sha = Sha256File(rec->artifact_path, [&](uint64_t d, uint64_t t) { progress(d, t); });
  if (!sha.ok()) return cli.Fail(sha.status());
  if (*sha != rec->sha256)
    return cli.Fail(FailedPrecondition("the original artifact of " + rec->ref() + " (" + rec->artifact_path +
                                       ") changed since registration (sha256 " + sha->substr(0, 12) + ", registered " +
                                       rec->sha256.substr(0, 12) + "): register it as a new version instead"));
  // Never the old directory's name (gone, it would be free): a running
  // daemon tells a repack by the changed path.
  const std::string suffix =
      "-repack" + std::to_string(Clock::Real()->UnixMillis()) + "-" + std::to_string(::getpid());
  std::string packed_dir, packed_sample;
  std::vector<InputSpec> inputs = rec->inputs;
  // A failure because the version was removed meanwhile (mms model rm
  // --force by another writer took its files) is said as such: exit 4, not
  // a missing sample (exit 2) or an I/O error.
  const Ref version_ref{Ref::Kind::kVersion, rec->model, rec->version, ""};
  auto fail = [&](const Status& st) {
    if (auto still = (*reg)->Resolve(version_ref); !still.ok() && still.status().code() == Code::kNotFound)
      return cli.Fail(NotFound(rec->ref() + " was removed meanwhile (by another writer); nothing was repacked"));
    return cli.Fail(st);
  };
  if (rec->is_adapter()) {  // checked against its base again, as at registration
    auto dir = RepackAdapter(cli, **reg, *rec, suffix);
    if (!dir.ok()) return fail(dir.status());
    packed_dir = *dir;
  } else {
    // The stored sample input comes along unless another is given; a version
    // registered with one needs one (its warm-up and batching check use it).
    std::string sample = !sample_input.empty() ? sample_input : rec->sample_input;
    if (!sample.empty() && !FileExists(sample))
      return fail(InvalidArgument(
          sample_input.empty() ? "the stored sample input of " + rec->ref() + " (" + sample +
                                     ") is gone too: give one with --sample-input FILE"
                               : "--sample-input " + sample + " does not exist"));
    // A damaged stored sample would give the version its inputs anew (and
    // SHA256SUMS would then vouch for it): refused, as verify reports it.
    if (sample_input.empty() && !sample.empty()) {
      const auto sums = RecordedSums(rec->packed_dir, nullptr);
      if (auto it = sums.find(BaseName(sample)); it != sums.end()) {
        auto h = Sha256File(sample);
        if (!h.ok()) return fail(h.status());
        if (*h != it->second)
          return fail(InvalidArgument("the stored sample input of " + rec->ref() + " (" + sample +
                                      ") changed since registration (sha256 " + h->substr(0, 12) + " != recorded " +
                                      it->second.substr(0, 12) + "): give a good one with --sample-input FILE"));
      }
    }
    auto packed = PackArtifact(cli, rec->artifact_path, rec->model, rec->version, rec->sha256, sample,
                               rec->max_batch_size, suffix);
    if (!packed.ok())  // (a batched version is checked again, on this sample)
      return fail(BatchingHint(packed.status(), "nothing was repacked; to repack it unbatched, turn its batching off "
                                                "first (mms model batching " + rec->ref() + " --max-batch-size 0)"));
    packed_dir = packed->dir;
    packed_sample = packed->sample_input;
    inputs = InputSpecsFromJson(packed->info["inputs"]);  // as the sample shows them, as at registration
    // Variable dims: as given, else as the version had them.
    const std::vector<std::string> had = VariableDims(rec->inputs);
    const std::vector<std::string> want = no_variable ? std::vector<std::string>{} : variable_dims.empty() ? had : variable_dims;
    if (Status st = MarkVariableDims(&inputs, want); !st.ok()) {
      std::error_code ec;
      std::filesystem::remove_all(packed_dir, ec);
      return fail(variable_dims.empty()
                      ? InvalidArgument(st.message() + "; it is variable in " + rec->ref() +
                                        "'s inputs now: give --variable-dim for the new sample, or none")
                      : st);
    }
  }
  // The version resolved above, whatever the name resolves to meanwhile.
  auto now = (*reg)->SetPackedDir(version_ref, rec->packed_dir, packed_dir, packed_sample, inputs, rec->max_batch_size);
  if (!now.ok()) {
    std::error_code ec;
    std::filesystem::remove_all(packed_dir, ec);
    return fail(now.status());
  }
  if (std::filesystem::exists(rec->packed_dir))
    if (Status st = WriteFileAtomic(JoinPath(rec->packed_dir, kReplacedMarker), packed_dir + "\n"); !st.ok())
      cli.Note("note: could not mark " + rec->packed_dir + " as replaced (" + st.message() +
               "): mms model verify lists it as a problem until --prune removes it");
  cli.NotifyDaemon();
  nlohmann::json j = now->ToJson();
  j["previous_packed_dir"] = rec->packed_dir;
  const bool old_left = std::filesystem::exists(rec->packed_dir);  // (the new dir has a name of its own)
  // New inputs (another sample) are what every request is checked against from now on: said.
  const bool changed = !SameEnforcedInputs(rec->inputs, now->inputs);
  const std::string before = InputSpecsText(rec->inputs), after = InputSpecsText(now->inputs);
  if (changed) j["previous_inputs"] = InputSpecsToJson(rec->inputs);
  cli.Emit(j, [&] {
    std::cout << "repacked " << now->ref() << " into " << now->packed_dir << " (stage " << StageName(now->stage)
              << ", aliases and pins unchanged)"
              << (old_left ? "; the old files are left for mms model verify --prune" : "") << "\n";
    if (changed)
      std::cout << "inputs changed: " << before << " -> " << after
                << " (requests are checked against them from the next one on)\n";
  });
  return 0;
}

// mms model batching: turns a registered version's dynamic batching on (after
// the registration's check, on its stored sample), changes it, or turns it
// off; audited, and a running daemon batches (or stops) from its next request.
int CmdBatching(Cli& cli, const std::string& ref_text, int max_batch_size, int64_t max_queue_delay_us) {
  auto ref = ParseRef(ref_text);
  if (!ref.ok()) return cli.Fail(ref.status());
  if (Status st = CheckBatchingArgs(max_batch_size, max_queue_delay_us); !st.ok()) return cli.Fail(st);
  auto reg = cli.OpenRegistry();
  if (!reg.ok()) return cli.Fail(reg.status());
  auto rec = (*reg)->Resolve(*ref);
  if (!rec.ok()) return cli.Fail(rec.status());
  // (Exit codes as mms model repack's for the same cases.)
  if (rec->is_adapter())
    return cli.Fail(InvalidArgument(rec->ref() + " is a LoRA adapter: it runs in its base's batches, so set "
                                    "batching on its base version"));
  if (max_batch_size > 0) {
    if (rec->sample_input.empty())
      return cli.Fail(InvalidArgument(
          "batching " + rec->ref() + " needs a sample input, to check that the model batches (its outputs must split "
          "by rows), and it was registered without one: store one with mms model repack " + rec->ref() +
          " --sample-input FILE, then run this again"));
    if (!FileExists(rec->sample_input))
      return cli.Fail(InvalidArgument("the stored sample input of " + rec->ref() + " (" + rec->sample_input +
                                      ") is gone: store one with mms model repack " + rec->ref() +
                                      " --sample-input FILE, then run this again"));
    if (!FileExists(rec->artifact_path))
      return cli.Fail(FailedPrecondition("the original artifact of " + rec->ref() + " (" + rec->artifact_path +
                                         ") is gone: batching is checked on it; register the model again as a new "
                                         "version with --max-batch-size"));
    // The check alone (no --pack-dir): on the bytes registered, or refused.
    auto info = RunInspect(cli,
                           {MmsdPath(), "inspect-artifact", "--path", rec->artifact_path, "--sample-input",
                            rec->sample_input, "--max-batch-size", std::to_string(max_batch_size)},
                           rec->artifact_path, rec->sha256, "checked", "its batching was not changed");
    // Here the way out is to leave the version as it is, or, when the
    // stored sample is what could not check it, to store another.
    if (!info.ok()) {
      Status st = BatchingHint(info.status(), "its batching is left as it was");
      const std::string& m = st.message();
      if (st.code() == Code::kInvalidArgument &&
          (m.find("has no rows") != std::string::npos || m.find("could be varied") != std::string::npos))
        st = Status(st.code(), m + "; mms model repack " + rec->ref() + " --sample-input FILE stores another sample");
      return cli.Fail(st);
    }
  }
  auto now = (*reg)->SetBatching(*rec, max_batch_size, max_queue_delay_us);
  if (!now.ok()) return cli.Fail(now.status());
  cli.NotifyDaemon();
  nlohmann::json j = now->ToJson();
  j["previous_max_batch_size"] = rec->max_batch_size;
  j["previous_max_queue_delay_us"] = rec->max_queue_delay_us;
  cli.Emit(j, [&] {
    auto said = [](int rows, int64_t us) {
      return rows == 0 ? std::string("off")
                       : "up to " + std::to_string(rows) + " rows, waiting " +
                             (us ? std::to_string(us) + " us" : std::string("the [scheduler] max_queue_delay")) +
                             " for more";
    };
    const std::string was = said(rec->max_batch_size, rec->max_queue_delay_us);
    const std::string is = said(now->max_batch_size, now->max_queue_delay_us);
    std::cout << "dynamic batching of " << now->ref() << ": " << is
              << (was == is ? " (unchanged)" : " (was " + was + ")") << "\n";
  });
  return 0;
}

int CmdVerify(Cli& cli, const std::string& ref_text, bool prune, const std::string& prune_age_text) {
  auto reg = cli.OpenRegistry();
  if (!reg.ok()) return cli.Fail(reg.status());
  std::vector<VersionRecord> targets;
  if (ref_text.empty()) {
    auto all = (*reg)->List();
    if (!all.ok()) return cli.Fail(all.status());
    targets = *all;
  } else {
    auto ref = ParseRef(ref_text);
    if (!ref.ok()) return cli.Fail(ref.status());
    if (ref->kind == Ref::Kind::kName) {
      auto all = (*reg)->List(ref->name);
      if (!all.ok()) return cli.Fail(all.status());
      targets = *all;
    } else {
      auto r = (*reg)->Resolve(*ref);
      if (!r.ok()) return cli.Fail(r.status());
      targets.push_back(*r);
    }
  }
  if (prune && !ref_text.empty())
    return cli.Fail(InvalidArgument("--prune checks the whole data dir; run it without REF"));
  auto prune_age_ns = ParseDurationNanos(prune_age_text);
  if (!prune_age_ns.ok() || *prune_age_ns < 0)
    return cli.Fail(InvalidArgument("--prune-age " + prune_age_text + ": expected a duration such as 1h or 30m"));
  const int64_t prune_age = *prune_age_ns / 1'000'000'000;
  // The whole data dir: the registry file itself too (a scan of it), for
  // what it lists may read fine around a damaged page.
  if (ref_text.empty())
    if (Status st = (*reg)->QuickCheck(); !st.ok()) return cli.Fail(st);
  nlohmann::json out = nlohmann::json::array();
  int bad = 0;
  for (const auto& r : targets) {
    std::vector<std::string> problems;
    Progress progress("verifying " + r.ref(), !cli.g.quiet && !cli.g.json);
    auto h = Sha256File(r.artifact_path, [&](uint64_t d, uint64_t t) { progress(d, t); });
    if (!h.ok()) {
      problems.push_back(h.status().code() == Code::kNotFound ? "artifact missing: " + r.artifact_path
                                                               : h.status().message());
    } else if (*h != r.sha256) {
      problems.push_back("artifact changed since registration: sha256 " + h->substr(0, 12) + " != registered " +
                         r.sha256.substr(0, 12));
    } else if (r.is_adapter()) {  // its adapter_config.json is part of the artifact too
      if (Status st = CheckAdapterSource(**reg, r); !st.ok()) problems.push_back(st.message());
    }
    if (!r.packed_dir.empty()) {
      for (const char* f : r.is_adapter() ? std::vector<const char*>{kAdapterWeightsFile}
                                          : std::vector<const char*>{"weights.safetensors", "module.pt"})
        if (!FileExists(JoinPath(r.packed_dir, f))) problems.push_back(std::string("packed ") + f + " missing");
      for (const std::string& p : CheckPacked(r.packed_dir, r, progress)) problems.push_back(p);
    }
    if (!r.sample_input.empty() && !FileExists(r.sample_input)) problems.push_back("stored sample input missing");
    if (!problems.empty()) ++bad;
    out.push_back({{"kind", "version"}, {"ref", r.ref()}, {"ok", problems.empty()}, {"problems", problems}});
  }
  // Without REF: also the packed directories no version uses. Pruning needs
  // the registry and the data dir to agree: when a version's own packed
  // files are missing, this may be another data dir's registry.
  int orphans = 0, pruned = 0, orphans_bad = 0;
  if (prune && bad > 0)
    for (const auto& r : targets)
      if (!r.packed_dir.empty() && !std::filesystem::is_directory(r.packed_dir))
        return cli.Fail(FailedPrecondition(
                               "not pruning: the packed files of " + r.ref() + " (" + r.packed_dir +
                                   ") are missing, so this registry and data dir may not belong together; "
                                   "check --data-dir and `mms model verify` first"));
  if (ref_text.empty()) {
    auto artifacts = cli.ArtifactsDir();
    if (!artifacts.ok()) return cli.Fail(artifacts.status());
    auto found = FindOrphans(*artifacts, targets);
    if (!found.ok()) return cli.Fail(found.status());
    // A registry with no history at all never registered these files: it
    // was created anew beside them (the old one removed or replaced).
    if (prune && std::any_of(found->begin(), found->end(), [](const OrphanDir& o) { return !o.staging && !o.empty; })) {
      auto history = (*reg)->AuditLog(0, 1);
      if (!history.ok()) return cli.Fail(history.status());
      if (history->empty())
        return cli.Fail(FailedPrecondition(
            "not pruning: this registry has no history at all, yet " + *artifacts +
            " holds packed weights, so they were registered through another registry (was registry.db removed "
            "or replaced?). Restore that registry, or move the directories aside by hand if they are unwanted"));
    }
    for (const OrphanDir& o : *found) {
      // Left by a repack on purpose (a daemon may still be reading it): known, not a problem.
      // An empty model directory is as harmless: listed as unused too.
      const bool replaced = o.empty || (!o.staging && FileExists(JoinPath(o.path, kReplacedMarker)));
      std::string what = (o.staging    ? "left by a registration killed while storing its files ("
                          : o.empty    ? "an empty model directory (its versions removed, or a registration that stored nothing; "
                          : replaced ? "replaced by mms model repack ("
                                     : "packed files no version uses (") +
                         FormatBytes(o.bytes) + ", last changed " +
                         (o.age_s > 0 ? FormatDurationNanos(o.age_s * 1'000'000'000) + " ago)" : "just now)");
      // Also a dead registration's staging dir: its pid may be of another
      // pid namespace (a container sharing the data dir), where it lives on.
      const bool old_enough = o.age_s >= prune_age;
      bool removed = false;
      if (prune && old_enough) {
        std::error_code ec;
        if (o.empty) std::filesystem::remove(o.path, ec);  // rmdir: not if a registration has put files there since
        else std::filesystem::remove_all(o.path, ec);
        removed = !ec;
        if (ec) what += "; cannot remove: " + ec.message();
      } else {
        // Young: why it is spared, and when --prune takes it (before, the
        // hint sent users to a --prune that then kept it for an hour).
        const std::string why = o.staging || (!o.empty && !replaced) ? "it may belong to a registration in progress"
                                : replaced ? "a daemon may still be reading it"
                                           : "a registration may be about to use it";
        const std::string in = FormatDurationNanos((prune_age - o.age_s) * 1'000'000'000);
        if (prune)
          what += "; kept: changed in the last " + prune_age_text + ", " + why + " (--prune removes it in " + in +
                  "; --prune-age 0 removes it now)";
        else if (old_enough)
          what += "; remove with: mms model verify --prune";
        else
          what += "; mms model verify --prune removes it in " + in + " (" + why + "; --prune-age 0 removes it now)";
      }
      ++orphans;
      if (removed) ++pruned;
      const bool ok = removed || (prune && !old_enough) || replaced;
      if (!ok) ++orphans_bad;
      out.push_back({{"kind", "orphan"}, {"ref", ""}, {"path", o.path}, {"bytes", o.bytes}, {"ok", ok}, {"pruned", removed},
                     {"replaced", replaced},
                     {"problems", removed ? std::vector<std::string>{} : std::vector<std::string>{what}}});
    }
  }
  cli.Emit(out, [&] {
    for (const auto& e : out) {
      const bool orphan = e["kind"] == "orphan";
      std::cout << (orphan && e["pruned"].get<bool>() ? "pruned   "
                    : e["ok"].get<bool>() && !orphan  ? "ok       "
                    : orphan && e["replaced"] == true ? "unused   "
                    : orphan && e["ok"].get<bool>()   ? "kept     "
                    : orphan                          ? "ORPHAN   "
                                                      : "PROBLEM  ")
                << e[orphan ? "path" : "ref"].get<std::string>();
      for (const auto& p : e["problems"]) std::cout << "\n         " << p.get<std::string>();
      std::cout << "\n";
    }
    std::cout << targets.size() - static_cast<size_t>(bad) << " of " << targets.size() << " versions verified";
    if (orphans) std::cout << "; " << orphans << " unused packed director" << (orphans == 1 ? "y" : "ies")
                           << (pruned ? ", " + std::to_string(pruned) + " pruned" : "");
    std::cout << "\n";
  });
  return bad + orphans_bad ? 1 : 0;
}

// A temporary directory owned by this object and removed with it (`path`
// set by whoever makes it; "" for none). A failure to remove it is ignored:
// it is under TMPDIR. Not thread-safe.
struct TempDir {
  std::string path;
  TempDir() = default;
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() {
    std::error_code ec;
    if (!path.empty()) std::filesystem::remove_all(path, ec);
  }
};

// The config's model_warmup sample (UsableWarmup) written as a sample input
// file in `tmp` (made here), for the model `file`, whose forward() names the
// inputs: `mmsd inspect-artifact` reads them (a load of the model more, for
// a version imported without mms's own sample file beside model.pt).
// Errors: TritonWarmupSample's, RunInspectProcess's, IO for the temporary
// directory or file.
Result<std::string> WarmupSampleFile(Cli& cli, const std::string& file, const TritonConfig& config,
                                     const std::string& model_dir, const std::string& cfg_path, TempDir* tmp) {
  MMS_ASSIGN_OR_RETURN(nlohmann::json info,
                       RunInspectProcess(cli, {MmsdPath(), "inspect-artifact", "--path", file}, file,
                                         "its model_warmup was not used"));
  MMS_ASSIGN_OR_RETURN(std::vector<Tensor> tensors,
                       TritonWarmupSample(config, InputSpecsFromJson(info["inputs"]), model_dir, cfg_path));
  const char* env = std::getenv("TMPDIR");
  std::string pattern = std::string(env && *env ? env : "/tmp") + "/mms-import-XXXXXX";
  if (::mkdtemp(pattern.data()) == nullptr)
    return IoError("cannot make a temporary directory in " + pattern.substr(0, pattern.rfind('/')) + ": " +
                   std::strerror(errno));
  tmp->path = pattern;
  const std::string path = JoinPath(tmp->path, "model_warmup.safetensors");
  MMS_RETURN_IF_ERROR(WriteTensorFile(path, tensors));
  return path;
}

int CmdImport(Cli& cli, const std::string& dir) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec))
    return cli.Fail(InvalidArgument(dir + " is not a directory (expected DIR/<name>/<version>/model.pt)"));
  auto reg = cli.OpenRegistry(/*create=*/true);
  if (!reg.ok()) return cli.Fail(reg.status());
  nlohmann::json registered = nlohmann::json::array(), skipped = nlohmann::json::array(),
                 notes = nlohmann::json::array();
  int errors = 0;
  auto skip = [&](const std::string& path, const std::string& why, bool error = true) {
    skipped.push_back({{"path", path}, {"reason", why}, {"error", error}});
    if (error) ++errors;
  };
  std::vector<std::filesystem::path> models;
  if (std::error_code lec = ListDirs(dir, &models))
    return cli.Fail(IoError("cannot list " + dir + ": " + lec.message()));
  for (const auto& mdir : models) {
    std::string name = mdir.filename().string();
    if (Status st = ValidateName(name); !st.ok()) {
      skip(mdir.string(), st.message());
      continue;
    }
    // Triton combines requests only with dynamic_batching; max_batch_size
    // alone says the model takes a batch dimension. mms batches across
    // requests when max_batch_size > 0, so it takes the number only then.
    int max_batch = 0;
    int64_t delay_us = 0;  // Triton's max_queue_delay_microseconds (0: [scheduler] max_queue_delay)
    const std::string cfg_path = (mdir / "config.pbtxt").string();
    std::optional<TritonConfig> triton;
    if (FileExists(cfg_path)) {
      auto cfg = ReadFile(cfg_path, 16ull << 20);  // (Triton's configs are a few KiB)
      if (!cfg.ok()) {
        skip(mdir.string(), "cannot read " + cfg_path + ": " + cfg.status().message());
        continue;
      }
      auto parsed = ParseTritonConfig(*cfg, cfg_path);
      if (!parsed.ok()) {
        skip(mdir.string(), parsed.status().message() + "; fix it to import this model");
        continue;
      }
      triton = std::move(parsed).value();
      if (triton->dynamic_batching) {
        max_batch = triton->max_batch_size;
        if (triton->max_queue_delay_us > static_cast<uint64_t>(kMaxQueueDelayUsMax)) {
          skip(mdir.string(), cfg_path + ": max_queue_delay_microseconds " + std::to_string(triton->max_queue_delay_us) +
                                  " is over mms's " + std::to_string(kMaxQueueDelayUsMax) +
                                  "; lower it to import this model");
          continue;
        }
        // Triton's 0 (its default) is "do not wait"; a version's 0 is
        // "[scheduler] max_queue_delay": the least wait instead.
        delay_us = std::max<int64_t>(static_cast<int64_t>(triton->max_queue_delay_us), 1);
      }
    }
    std::vector<std::filesystem::path> versions;
    if (std::error_code lec = ListDirs(mdir, &versions)) {
      skip(mdir.string(), "cannot list " + mdir.string() + ": " + lec.message());
      continue;
    }
    for (const auto& vdir : versions) {
      std::string version = vdir.filename().string();
      // Triton's own directories beside the versions: model_warmup's data
      // files, and --model-config-name's configs.
      if (version == "warmup" || version == "configs") continue;
      if (Status st = ValidateVersion(version); !st.ok()) {
        skip(vdir.string(), st.message());
        continue;
      }
      std::string file = (vdir / "model.pt").string();
      if (!FileExists(file)) {
        skip(vdir.string(), "no model.pt (mms imports TorchScript model repositories)");
        continue;
      }
      RegisterArgs a;
      a.rerun_settings_must_match = false;
      a.name = name;
      a.version = version;
      a.path = file;
      a.description = "imported from " + vdir.string();
      bool config_refused = false;  // (then registering it unbatched would be refused alike)
      if (triton)  // its -1 dims (a sequence length), checked against the sample's shapes
        a.variable_dims_for = [&](const std::vector<InputSpec>& specs) {
          auto dims = TritonVariableDims(*triton, specs, cfg_path);
          config_refused = !dims.ok();
          return dims;
        };
      // mms's own addition to the layout: a sample beside model.pt, for the
      // warm-up and for checking that the model batches. Batching a model
      // unchecked could hand one caller rows computed from another's (a
      // model that normalises over the batch), so without a sample, or when
      // the check fails, the version is registered unbatched and says why.
      for (const char* n : {"sample_input.json", "sample_input.safetensors"})
        if (a.sample_input.empty() && FileExists((vdir / n).string())) a.sample_input = (vdir / n).string();
      // Else Triton's own: the model_warmup Triton runs first. Messages name
      // it, not the temporary file it is written to. One that cannot be
      // built (a type mms does not serve, a data file missing) leaves the
      // version without a sample, as before, and the note says why; a
      // version registered already (an import run again) needs none.
      TempDir warm;
      std::string warmup, warmup_unused;
      const TritonWarmup* usable = triton ? UsableWarmup(*triton) : nullptr;
      if (a.sample_input.empty() && usable &&
          !(*reg)->Resolve(Ref{Ref::Kind::kVersion, name, version, ""}).ok()) {
        const std::string label = cfg_path + "'s model_warmup" + (usable->name.empty() ? "" : " '" + usable->name + "'");
        if (auto sample = WarmupSampleFile(cli, file, *triton, mdir.string(), cfg_path, &warm); sample.ok()) {
          a.sample_input = *sample;
          warmup = label;
        } else {
          warmup_unused = "not warmed up, no input checks: " + label + " could not be used: " + sample.status().message();
        }
      }
      auto named = [&](std::string msg) {
        for (const std::string& said : {"--sample-input " + a.sample_input, a.sample_input})
          for (size_t at = 0; !warmup.empty() && (at = msg.find(said, at)) != std::string::npos; at += warmup.size())
            msg.replace(at, said.size(), warmup);
        return msg;
      };
      std::string unbatched;
      std::string then;  // what to do about it
      if (max_batch > 0 && a.sample_input.empty()) {
        unbatched = "no sample_input.json or sample_input.safetensors beside model.pt, nor a usable model_warmup in the config, "
                    "to check that it batches";
        then = ". To batch it, register it again as a new version with --max-batch-size and --sample-input";
      } else {
        a.max_batch_size = max_batch;
        if (max_batch > 0) a.max_queue_delay_us = delay_us;
      }
      bool unchanged;
      auto rec = RegisterVersion(cli, **reg, a, &unchanged);
      if (!rec.ok() && a.max_batch_size > 0 && rec.status().code() == Code::kInvalidArgument && !config_refused) {
        // The model cannot batch (its rows depend on each other, its outputs
        // do not split): registered unbatched, which is all that can be done.
        unbatched = rec.status().message();
        a.max_queue_delay_us = 0;
        if (const std::string done = "; register without --max-batch-size";
            unbatched.size() >= done.size() && unbatched.compare(unbatched.size() - done.size(), done.size(), done) == 0)
          unbatched.resize(unbatched.size() - done.size());
        a.max_batch_size = 0;
        rec = RegisterVersion(cli, **reg, a, &unchanged);
      }
      if (rec.ok() && unchanged) {  // no error: the repository imported again
        skip(file, rec->ref() + " is already registered with these weights (nothing to do)", false);
        continue;
      }
      if (rec.ok()) {
        registered.push_back(rec->ref());
        if (!warmup.empty())
          notes.push_back({{"ref", rec->ref()},
                           {"note", "its sample input (warm-up, input checks" +
                                        std::string(a.max_batch_size > 0 ? ", batching check" : "") + ") is " + warmup}});
        if (!warmup_unused.empty()) notes.push_back({{"ref", rec->ref()}, {"note", warmup_unused}});
        if (!unbatched.empty())
          notes.push_back({{"ref", rec->ref()},
                           {"note", named("registered without dynamic batching (" + cfg_path + " asks for it): " +
                                          unbatched + then)}});
        continue;
      }
      skip(file, named(rec.status().message()));  // (other weights under a registered version: the file was replaced)
    }
  }
  if (!registered.empty()) cli.NotifyDaemon();
  cli.Emit({{"registered", registered}, {"skipped", skipped}, {"notes", notes}}, [&] {
    for (const auto& r : registered) std::cout << "registered " << r.get<std::string>() << "\n";
    for (const auto& n : notes)
      std::cout << "note       " << n["ref"].get<std::string>() << ": " << n["note"].get<std::string>() << "\n";
    for (const auto& s : skipped)
      std::cout << "skipped    " << s["path"].get<std::string>() << ": " << s["reason"].get<std::string>() << "\n";
    std::cout << registered.size() << " registered, " << skipped.size() << " skipped\n";
  });
  return errors ? 1 : 0;
}

}  // namespace

int ModelShow(Cli& cli, const std::string& ref) { return CmdShow(cli, ref); }
int ModelRm(Cli& cli, const std::string& ref, bool force) { return CmdRm(cli, ref, force); }

void AddModelCommands(CLI::App& app, Cli& cli) {
  auto* model = app.add_subcommand("model", "Register and manage model versions in the registry (no daemon needed)");
  model->require_subcommand(1);

  auto* reg = model->add_subcommand("register", "Register a TorchScript file as NAME:VERSION");
  auto a = std::make_shared<RegisterArgs>();
  reg->add_option("NAME", a->name, "model name ([a-z0-9][a-z0-9._-]{0,62})")->required();
  reg->add_option("--version", a->version, "version: a positive integer or dotted numbers (3, 1.2.0)")->required();
  reg->add_option("--path", a->path, "the TorchScript file")->required();
  reg->add_option("--description", a->description, "free text");
  reg->add_option("--metrics", a->metrics_file, "validation metrics: a JSON object file");
  reg->add_option("--data-fingerprint", a->fingerprint, "training data fingerprint");
  auto* sla = reg->add_option("--sla-p99-ms", a->sla_p99_ms, "serving SLA: p99 latency target in ms")
                  ->check(DecimalNumber());
  reg->add_option("--label", a->labels, "key=value (repeatable)");
  reg->add_option("--sample-input", a->sample_input, "tensor file (JSON or safetensors) used for warm-up");
  reg->add_option("--variable-dim", a->variable_dims,
                  "INPUT:DIM (repeatable): a dim past the first that requests may size freely (a sequence length); "
                  "the sample's size is checked otherwise");
  auto* batch = reg->add_option("--max-batch-size", a->max_batch_size,
                                 "enable dynamic batching up to N rows (0 = off; checked with --sample-input)")
                     ->check(WholeNumber());
  auto* delay = reg->add_option("--max-queue-delay-us", a->max_queue_delay_us,
                                "batching: how long a batch may wait for more requests (default [scheduler] "
                                "max_queue_delay)")
                     ->check(WholeNumber());
  reg->callback([&cli, a, sla, batch, delay] {
    a->has_sla = sla->count() > 0;
    a->has_max_batch_size = batch->count() > 0;
    a->has_max_queue_delay = delay->count() > 0;
    cli.exit_code = CmdRegister(cli, *a);
  });

  auto* list = model->add_subcommand("list", "List versions, optionally of one model or in one stage");
  auto name = std::make_shared<std::string>(), stage = std::make_shared<std::string>();
  list->add_option("NAME", *name, "only this model");
  list->add_option("--stage", *stage, "none, shadow, canary, production or archived");
  list->callback([&cli, name, stage] { cli.exit_code = CmdList(cli, *name, *stage); });

  auto* show = model->add_subcommand("show", "Show one version (REF: NAME, NAME:VERSION or NAME@ALIAS)");
  auto ref = std::make_shared<std::string>();
  show->add_option("REF", *ref, "NAME, NAME:VERSION or NAME@ALIAS")->required();
  show->callback([&cli, ref] { cli.exit_code = CmdShow(cli, *ref); });

  auto* hist = model->add_subcommand("history", "The audit log of a model or version");
  auto href = std::make_shared<std::string>();
  hist->add_option("REF", *href, "NAME (all versions), NAME:VERSION or NAME@ALIAS")->required();
  hist->callback([&cli, href] { cli.exit_code = CmdHistory(cli, *href); });

  auto* stg = model->add_subcommand("stage", "Move a version to a rollout stage (one production version per model)");
  auto sref = std::make_shared<std::string>(), sstage = std::make_shared<std::string>();
  stg->add_option("REF", *sref, "the version")->required();
  stg->add_option("STAGE", *sstage, "none, shadow, canary, production or archived")->required();
  stg->callback([&cli, sref, sstage] { cli.exit_code = CmdStage(cli, *sref, *sstage); });

  auto* alias = model->add_subcommand("alias", "Point an alias (e.g. champion) at a version, or remove it");
  alias->require_subcommand(1);
  auto* aset = alias->add_subcommand("set", "NAME ALIAS VERSION");
  auto am = std::make_shared<std::string>(), aa = std::make_shared<std::string>(), av = std::make_shared<std::string>();
  aset->add_option("NAME", *am)->required();
  aset->add_option("ALIAS", *aa)->required();
  aset->add_option("VERSION", *av)->required();
  aset->callback([&cli, am, aa, av] { cli.exit_code = CmdAliasSet(cli, *am, *aa, *av); });
  auto* arm = alias->add_subcommand("rm", "NAME ALIAS");
  auto rm_m = std::make_shared<std::string>(), rm_a = std::make_shared<std::string>();
  arm->add_option("NAME", *rm_m)->required();
  arm->add_option("ALIAS", *rm_a)->required();
  arm->callback([&cli, rm_m, rm_a] { cli.exit_code = CmdAliasRm(cli, *rm_m, *rm_a); });

  auto* rm = model->add_subcommand("rm", "Remove a version (refused while pinned, in production or in a rollout)");
  auto rref = std::make_shared<std::string>();
  auto* force = rm->add_flag("--force")->description("remove even while in use");
  rm->add_option("REF", *rref, "the version")->required();
  rm->callback([&cli, rref, force] { cli.exit_code = CmdRm(cli, *rref, force->count() > 0); });

  auto* repack = model->add_subcommand(
      "repack", "Write a version's packed files anew from its original artifact, keeping its stage, aliases and pins");
  auto rpref = std::make_shared<std::string>();
  auto rpsample = std::make_shared<std::string>();
  repack->add_option("REF", *rpref, "the version to repack")->required();
  auto rpdims = std::make_shared<std::vector<std::string>>();
  repack->add_option("--sample-input", *rpsample, "a sample input to store (default: the one stored, if any)");
  repack->add_option("--variable-dim", *rpdims,
                     "INPUT:DIM (repeatable): dims requests may size freely (default: those the version has; "
                     "none: no such dims)");
  repack->callback([&cli, rpref, rpsample, rpdims] { cli.exit_code = CmdRepack(cli, *rpref, *rpsample, *rpdims); });

  auto* batching = model->add_subcommand(
      "batching", "Turn a version's dynamic batching on (checked on its stored sample input), change it, or off (0)");
  auto bref = std::make_shared<std::string>();
  auto bsize = std::make_shared<int>(0);
  auto bdelay = std::make_shared<int64_t>(0);
  batching->add_option("REF", *bref, "the version")->required();
  batching->add_option("--max-batch-size", *bsize, "rows per batch; 0 turns batching off")->required();
  batching->add_option("--max-queue-delay-us", *bdelay,
                       "how long a batch waits for more rows (default 0: the [scheduler] max_queue_delay)");
  batching->callback([&cli, bref, bsize, bdelay] { cli.exit_code = CmdBatching(cli, *bref, *bsize, *bdelay); });

  auto* verify = model->add_subcommand("verify", "Re-hash artifacts; report missing or changed files (exit 1)");
  auto vref = std::make_shared<std::string>();
  verify->add_option("REF", *vref, "a version or model (default: all, and unused packed directories)");
  auto* vprune = verify->add_flag("--prune")->description("remove packed directories no version uses, unchanged for --prune-age");
  auto vage = std::make_shared<std::string>("1h");
  verify->add_option("--prune-age", *vage, "spare directories changed more recently than this (default 1h)");
  verify->callback([&cli, vref, vprune, vage] { cli.exit_code = CmdVerify(cli, *vref, vprune->count() > 0, *vage); });

  auto* imp = model->add_subcommand("import", "Register every version of a Triton-style repository DIR/<name>/<version>/model.pt");
  auto dir = std::make_shared<std::string>();
  imp->add_option("DIR", *dir, "the model repository")->required();
  imp->callback([&cli, dir] { cli.exit_code = CmdImport(cli, *dir); });
}

}  // namespace mms::cli
