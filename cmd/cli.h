// The mms CLI's shared context: global options, config/path resolution,
// the daemon connection, output (text or --json) and exit codes.
// Each command group lives in its own cmd_*.cpp and registers itself with
// Add*Commands(app, cli). A command's callback sets cli.exit_code.
//
// Exit codes (stable; `mms --help` and mms(1) list them):
//   0 ok, 1 error, 2 usage or invalid argument, 3 daemon unreachable,
//   4 not found, 5 rejected (rate limited, pool full, overloaded),
//   6 conflict (already exists, in use, changed or ended meanwhile); 10-12 canary --wait outcomes.
#pragma once

#include <functional>
#include <memory>

#include <unistd.h>
#include <optional>
#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "config/config.h"
#include "core/status.h"
#include "protocol/client.h"
#include "registry/registry.h"

namespace mms::cli {

// The longest --timeout: longer values wait this long (nng counts waits in
// 32-bit milliseconds, 24.8 days; --timeout 1e12 failed at once).
inline constexpr double kMaxTimeoutSeconds = 2'000'000;  // 23 days

struct Globals {
  std::string socket;
  std::string data_dir;
  std::string config;
  bool json = false;
  bool quiet = false;
  double timeout_s = 60;
  bool timeout_given = false;  // --timeout on the command line (else the default)
};

class Cli {
 public:
  Globals g;
  int exit_code = 0;

  // The loaded config (file from --config or the default location, else
  // built-in defaults). Errors are config errors (exit 2).
  Result<const Config*> config();
  Result<std::string> socket_path();
  Result<std::string> data_dir();

  // Connects to the daemon. UNAVAILABLE carries a one-line message with the
  // socket path and the command that starts the daemon.
  Result<std::unique_ptr<proto::Client>> Connect();
  // Connect + one call; the common case for daemon commands.
  Result<nlohmann::json> Call(uint16_t type, nlohmann::json body);
  Result<proto::Message> Call(proto::Message m);

  // Prints "mms: <message>" to stderr (or {"error":..} on stdout with --json)
  // and returns the exit code for the status.
  int Fail(const Status& st);
  // Prints `j` with --json, otherwise calls `text()`.
  void Emit(const nlohmann::json& j, const std::function<void()>& text);
  // A line of progress/notes on stderr unless --quiet.
  void Note(const std::string& line);

  // The registry ([registry] path, else <data dir>/registry.db), migrated on
  // first use. Works with no daemon running. Only commands that register
  // (`create`) make one where there is none; any other is NOT_FOUND naming
  // the path (a mistyped --data-dir used to leave an empty registry behind).
  Result<std::unique_ptr<Registry>> OpenRegistry(bool create = false);
  // Before opening the registry: see cli.cpp (waits up to 3 s for a
  // running mmsd to let go of a registry replaced under it).
  Status WaitForDaemonToLetGo(const std::string& db);
  // NOT_FOUND from OpenRegistry for a registry that is not there.
  static bool NoRegistry(const Status& st);
  // For commands that list: with no registry there at all, an empty one in
  // memory (and the NOT_FOUND said as a note), so that a new host lists
  // nothing with exit 0, as for an empty registry.
  Result<std::unique_ptr<Registry>> OpenRegistryToList();
  Result<std::string> registry_path();
  // Tells a running daemon that the registry changed (best effort: no daemon
  // is fine; it would notice within [registry] poll_interval anyway; a
  // daemon that does not confirm within --timeout, or serves another
  // registry, gets a note on stderr). With
  // `until_routed`, waits while the daemon loads a new rollout's arms (at
  // most its 60 s warm-up limit), so the command returns once the rollout
  // is routed.
  // Returns the daemon's answer ({} without one): with `until_routed`, its
  // "load_failures" are the rollouts' arms that could not be loaded.
  nlohmann::json NotifyDaemon(bool until_routed = false);
  // The load failures in a NotifyDaemon answer of the versions `refs`,
  // each said as a warning on stderr (`consequence` tells what follows);
  // returned for --json output.
  nlohmann::json WarnLoadFailures(const nlohmann::json& answer, const std::vector<std::string>& refs,
                                  const std::string& consequence);
  static constexpr int64_t kRoutedWaitMs = 61'000;
  // The directory for packed weights and stored sample inputs.
  Result<std::string> ArtifactsDir();

  // "mms --socket X serve --detach": the command that starts the daemon
  // with the same globals.
  std::string StartCommandHint();  // (its words shell-quoted)
  // The global flags as arguments for mmsd (--socket/--data-dir/--config).
  std::vector<std::string> DaemonArgs();

 private:
  std::optional<Config> config_;
};

// Command groups.
void AddDaemonCommands(CLI::App& app, Cli& cli);
void AddModelCommands(CLI::App& app, Cli& cli);
void AddPoolCommands(CLI::App& app, Cli& cli);
void AddExperimentCommands(CLI::App& app, Cli& cli);
void AddRolloutCommands(CLI::App& app, Cli& cli);
void AddCompletionCommands(CLI::App& app, Cli& cli);
void AddLimitCommands(CLI::App& app, Cli& cli);
void AddAdapterCommands(CLI::App& app, Cli& cli);
void AddBackupCommands(CLI::App& app, Cli& cli);
// Shared with mms adapter: show and remove a version (its packed files too).
int ModelShow(Cli& cli, const std::string& ref);
int ModelRm(Cli& cli, const std::string& ref, bool force);
// Removes "<dir>/*.tmp-<pid>[-N]" staging dirs left by registrations that
// died (nobody holds their flock).
void CleanStaleStaging(const std::string& dir);
// A file descriptor owned (closed with this object): a flock's.
struct LockedFd {
  explicit LockedFd(int fd) : fd(fd) {}
  LockedFd(const LockedFd&) = delete;
  LockedFd& operator=(const LockedFd&) = delete;
  ~LockedFd() { ::close(fd); }
  int fd;
};
// Where a version's packed files are written before PublishStaging:
// "<artifacts>/<name>/<stem>.tmp-<pid>[-N]", stem
// "<version>-<sha256[:12]><suffix>". Creates the model's directory
// (clearing dead registrations' staging dirs there) and `dir`, a new one of
// its own, flocked (before it has its name) while any copy of the Staging
// lives — through the rename PublishStaging makes — so that no other
// process takes it for abandoned.
// The flock is per open file: it holds between processes of one host (on
// NFS, not across hosts). IO when the directory cannot be made or locked.
// A Staging is not shared between threads.
struct Staging {
  std::string model_dir, stem, dir;
  std::shared_ptr<LockedFd> lock;  // of `dir`
};
Result<Staging> NewStaging(Cli& cli, const std::string& name, const std::string& version, const std::string& sha256,
                           const std::string& stem_suffix);
// Moves a filled staging dir to "<dir>/<stem>", or "<stem>-2", "-3"... when an
// earlier registration holds that name: a directory some version may already
// point at is never replaced or removed. Returns the final path; on error the
// staging dir is removed.
Result<std::string> PublishStaging(const std::string& staging, const std::string& dir, const std::string& stem);
// Registers `v` (its packed_dir published); on failure removes the packed
// dir unless the registry points at it after all (a read after the commit failed).
Result<VersionRecord> RegisterPublished(Registry& reg, const NewVersion& v);
// mms model repack of an adapter: checks its original PEFT directory against
// its base again and writes its packed files into a new directory (named
// with `stem_suffix`); returns that directory.
Result<std::string> RepackAdapter(Cli& cli, Registry& reg, const VersionRecord& adapter, const std::string& stem_suffix);
// mms model verify of an adapter: its registered PEFT directory still checks
// against its base and reads as registered (rank, alpha, targets) — what a
// repack needs besides the weights' hash.
Status CheckAdapterSource(Registry& reg, const VersionRecord& adapter);

// mmsd beside this mms, else "mmsd" (PATH).
std::string MmsdPath();
// `s` as one word a shell reads back (quoted when it needs to be), for commands printed as advice.
std::string ShellWord(const std::string& s);

// The pid of the live mmsd holding the instance lock (flock) of
// `socket_path`'s <socket>.lock, else "".
// Such a daemon may take no new connections: it is stopping (its socket file
// goes first), still starting, or its socket file was removed a moment ago.
std::string SocketHolder(const std::string& socket_path);

// Connecting found no daemon at all (no socket, or one left by a dead
// daemon), as against one that is there but did not answer.
inline bool DaemonNotRunning(const Status& st) {
  return st.code() == Code::kUnavailable && st.message().find("is not running") != std::string::npos;
}

// Helpers shared by command files.
std::string FormatTable(const std::vector<std::vector<std::string>>& rows);  // first row = header
std::string FormatTime(int64_t unix_ms);  // "2026-11-28 20:45:13" (UTC)
// A finite number written in decimal, the whole text ("12", "-0.5", "1e3"):
// nullopt for "", spaces, hex ("0x10", which strtod reads as 16), inf, nan.
std::optional<double> ParseDecimal(const std::string& text);
// The same as a CLI11 check: "'TEXT' is not a decimal number".
CLI::Validator DecimalNumber();
// A whole number in decimal ("12", "-3"): "'abc' is not a whole number"
// rather than CLI11's "Value abc not in range" or "Could not convert".
// Checked before a range check (CLI11 runs checks in order).
CLI::Validator WholeNumber();

}  // namespace mms::cli
