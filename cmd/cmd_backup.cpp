// mms backup DEST | mms restore BACKUP: a whole data dir — the registry, taken
// online, and every file its versions need — copied to a new directory, and
// back. The copy is itself a data dir (registry/backup.h).
#include <unistd.h>

#include <filesystem>
#include <iostream>
#include <optional>

#include "cli.h"
#include "core/paths.h"
#include "core/units.h"
#include "protocol/messages.h"
#include "registry/backup.h"

namespace mms::cli {
namespace {

bool EmptyOrMissing(const std::string& dir) {
  std::error_code ec;
  return !std::filesystem::exists(dir, ec) || (std::filesystem::is_directory(dir, ec) && std::filesystem::is_empty(dir, ec));
}

nlohmann::json ReportJson(const DataDirCopyReport& r) {
  return {{"versions", r.versions},         {"packed_dirs", r.packed_dirs}, {"source_files", r.source_files},
          {"bytes", r.bytes},               {"linked_files", r.linked_files}, {"linked_bytes", r.linked_bytes},
          {"snapshots", r.snapshots},       {"sources_missing", r.sources_missing}, {"problems", r.problems}};
}

// Prints the report; exit 1 when the copy cannot serve some version.
int Finish(Cli& cli, nlohmann::json j, const DataDirCopyReport& r, const std::function<void()>& text) {
  cli.Emit(j, text);
  for (const std::string& s : r.sources_missing)
    cli.Note("note: " + s + " (not copied: it serves from its packed files, but mms model repack needs it)");
  if (r.problems.empty()) return 0;
  std::string all;
  for (const std::string& p : r.problems) all += "\n  " + p;
  if (!cli.g.json)
    std::cerr << "mms: the copy was written, but " << r.problems.size()
              << (r.problems.size() == 1 ? " version" : " versions") << " cannot be served from it:" << all << "\n";
  return cli.exit_code = 1;
}

// Per-version lines on a terminal only; the rare ones (a new snapshot, an
// interrupted copy removed) always, unless --quiet.
void Progress(Cli& cli, const std::string& line) {
  if (line.rfind("copying ", 0) == 0 && (cli.g.quiet || cli.g.json || !::isatty(2))) return;
  cli.Note(line);
}

// The copy, either way, with this CLI's busy timeout and progress lines.
Result<DataDirCopyReport> Copy(Cli& cli, DataDirCopy c) {
  if (auto cfg = cli.config(); cfg.ok()) c.busy_timeout_ms = (*cfg)->registry.busy_timeout_ns / 1000000;
  c.progress = [&](const std::string& line) { Progress(cli, line); };
  return CopyDataDir(c);
}

std::string Summary(const DataDirCopyReport& r) {
  return std::to_string(r.versions) + (r.versions == 1 ? " version" : " versions") + " (" +
         std::to_string(r.packed_dirs) + " packed dirs, " + std::to_string(r.source_files) + " original files, " +
         FormatBytes(r.bytes) + " copied" +
         (r.linked_files ? ", " + std::to_string(r.linked_files) + " files of " + FormatBytes(r.linked_bytes) +
                               " linked from the earlier backup"
                         : "") +
         (r.snapshots > 1 ? ", " + std::to_string(r.snapshots) + " snapshots" : "") + ")";
}

int CmdBackup(Cli& cli, const std::string& dest_arg, const std::optional<std::string>& link_dest_arg) {
  const std::string dest = AbsolutePath(dest_arg);
  auto data_dir = cli.data_dir();
  if (!data_dir.ok()) return cli.Fail(data_dir.status());
  {
    auto reg = cli.OpenRegistry();  // names a missing registry as every command does; migrates an older one
    if (!reg.ok()) return cli.Fail(reg.status());
  }
  auto src_db = cli.registry_path();
  if (!src_db.ok()) return cli.Fail(src_db.status());
  const std::string dest_db = JoinPath(dest, "registry.db");
  std::error_code ec;
  if (std::filesystem::exists(dest, ec) && !std::filesystem::is_directory(dest, ec))
    return cli.Fail(AlreadyExists(dest + " exists and is not a directory: name a new directory for the backup"));
  if (!EmptyOrMissing(dest) && !InterruptedCopy(dest_db))
    return cli.Fail(AlreadyExists(dest + " is not empty: name a new directory (a backup is a whole data dir)"));
  // Compared as the file system resolves them (a symlinked spelling of the
  // data dir is the same place): DEST's nearest existing ancestor, resolved.
  auto resolved = [](std::string path) {
    std::string rest;
    while (!FileExists(path) && path.size() > 1) {
      rest = "/" + BaseName(path) + rest;
      path = DirName(path);
    }
    auto canon = CanonicalPath(path);
    return (canon.ok() ? *canon : path) + rest;
  };
  auto artifacts = cli.ArtifactsDir();
  if (artifacts.ok() && FileExists(*artifacts) &&
      (resolved(dest) == resolved(*artifacts) || resolved(dest).rfind(resolved(*artifacts) + "/", 0) == 0))
    return cli.Fail(InvalidArgument(dest + " is inside " + *artifacts +
                                    ", where mms model verify --prune would take it for unused packed files: back up "
                                    "to another directory"));
  // An incremental backup links the files an earlier one already holds: a
  // finished backup (not the data dir itself, whose files a backup must not
  // share; DEST, new or empty, holds none).
  std::string link_dest;
  if (link_dest_arg) {
    if (link_dest_arg->empty())  // (an unset variable in a script: not "no --link-dest")
      return cli.Fail(InvalidArgument("--link-dest is empty: name an earlier backup, or leave the option out"));
    link_dest = AbsolutePath(*link_dest_arg);
    if (!FileExists(JoinPath(link_dest, "registry.db")))
      return cli.Fail(NotFound("no backup at " + link_dest + " (it holds no registry.db): --link-dest names an "
                               "earlier backup, a directory mms backup wrote"));
    if (resolved(link_dest) == resolved(*data_dir) || resolved(link_dest) == resolved(DirName(*src_db)))
      return cli.Fail(InvalidArgument("--link-dest " + link_dest + " is the data dir itself: a backup linked to "
                                      "its files would share them; name an earlier backup"));
    if (resolved(dest).rfind(resolved(link_dest) + "/", 0) == 0)
      return cli.Fail(InvalidArgument(dest + " is inside the earlier backup " + link_dest +
                                      " (its verify --prune would take it for unused files): back up to another "
                                      "directory"));
  }
  DataDirCopy c;
  c.src_db = *src_db;
  c.src_dir = *data_dir;
  c.dest_dir = dest;
  c.dest_db = dest_db;
  c.link_dest = link_dest;
  c.action = "backup";
  c.detail = "from " + *data_dir + (link_dest.empty() ? "" : ", linked to " + link_dest);
  auto r = Copy(cli, c);
  if (!r.ok()) return cli.Fail(r.status());
  nlohmann::json j = ReportJson(*r);
  j["backup"] = dest;
  j["registry"] = dest_db;
  if (!link_dest.empty()) j["link_dest"] = link_dest;
  if (!r->link_refused.empty())
    cli.Note("note: files could not be hard-linked from " + link_dest + " into " + dest + " (" + r->link_refused +
             "), so they were copied");
  return Finish(cli, j, *r, [&] {
    std::cout << "backed up " << Summary(*r) << " to " << dest << "\n"
              << "check it:   mms --data-dir " << ShellWord(dest) << " model verify\n"
              << "restore it: mms --data-dir NEW_DATA_DIR restore " << ShellWord(dest) << "\n";
  });
}

int CmdRestore(Cli& cli, const std::string& backup_arg) {
  const std::string backup = AbsolutePath(backup_arg);
  const std::string src_db = JoinPath(backup, "registry.db");
  if (!FileExists(src_db)) {
    if (InterruptedCopy(src_db))
      return cli.Fail(FailedPrecondition(backup + " holds an unfinished backup (mms backup was interrupted before "
                                                  "it wrote registry.db): take the backup again"));
    return cli.Fail(NotFound("no backup at " + backup + " (it holds no registry.db): name a directory mms backup wrote"));
  }
  auto data_dir = cli.data_dir();
  if (!data_dir.ok()) return cli.Fail(data_dir.status());
  auto dest_db = cli.registry_path();
  if (!dest_db.ok()) return cli.Fail(dest_db.status());
  if (AbsolutePath(*dest_db) == src_db)
    return cli.Fail(InvalidArgument(backup + " is this data dir: restore into another (--data-dir)"));
  if (FileExists(*dest_db))
    return cli.Fail(AlreadyExists("the data dir " + *data_dir + " already has a registry (" + *dest_db +
                                  "): restore into a new data dir (--data-dir), or stop mmsd and move " + *data_dir +
                                  " aside first"));
  // A daemon serving this data dir would go on with what it opened (or
  // nothing) and never see the restored registry. One on the socket that
  // serves another data dir (the same $XDG_RUNTIME_DIR socket) is no reason
  // to refuse; one that does not answer cannot say which it serves.
  std::string hint = cli.StartCommandHint();  // how to start mmsd on the restored data dir
  if (auto path = cli.socket_path(); path.ok() && FileExists(*path)) {
    // Another daemon's socket (and [metrics] address, when the config sets
    // one): the restored data dir's daemon needs its own.
    auto cfg = cli.config();
    hint = "mms --data-dir " + ShellWord(*data_dir) + (cli.g.config.empty() ? "" : " --config " + ShellWord(cli.g.config)) +
           " --socket " + ShellWord(JoinPath(*data_dir, "mms.sock")) + " serve --detach" +
            (cfg.ok() && !(*cfg)->metrics.address.empty() ? " --metrics-address HOST:PORT" : "") + " (" + *path +
            " is another daemon's socket)";
    auto conn = cli.Connect();
    Result<nlohmann::json> status = conn.ok() ? (*conn)->CallJson(proto::kStatus, nlohmann::json::object())
                                              : Result<nlohmann::json>(conn.status());
    if (status.ok()) {
      if (SamePath(status->value("registry", ""), *dest_db))
        return cli.Fail(Status(Code::kInUse, "mmsd (pid " + std::to_string(status->value("pid", 0)) +
                                                 ") serves this data dir at " + *path +
                                                 ": stop it before restoring, then start it on the restored registry"));
    } else if (!DaemonNotRunning(status.status())) {
      return cli.Fail(Status(Code::kInUse, "a daemon at " + *path + " does not answer (" + status.status().message() +
                                               "): if it serves this data dir, stop it before restoring; if not, "
                                               "name this data dir's own socket with --socket"));
    }
  }
  DataDirCopy c;
  c.src_db = src_db;
  c.src_dir = backup;  // (moved since it was written: its files are found here)
  c.dest_dir = *data_dir;
  c.dest_db = *dest_db;
  c.action = "restore";
  c.detail = "from " + backup;
  auto r = Copy(cli, c);
  if (!r.ok()) return cli.Fail(r.status());
  nlohmann::json j = ReportJson(*r);
  j["restored_from"] = backup;
  j["data_dir"] = *data_dir;
  j["registry"] = *dest_db;
  return Finish(cli, j, *r, [&] {
    std::cout << "restored " << Summary(*r) << " from " << backup << " into " << *data_dir << "\n"
              << "start mmsd on it: " << hint << "\n";
  });
}

}  // namespace

void AddBackupCommands(CLI::App& app, Cli& cli) {
  auto* backup = app.add_subcommand(
      "backup", "Copy the data dir (the registry, taken online, and every version's files) to a new directory DEST");
  auto dest = std::make_shared<std::string>();
  backup->add_option("DEST", *dest, "a new (or empty) directory; the copy is a data dir of its own")->required();
  auto link_dest = std::make_shared<std::optional<std::string>>();
  backup->add_option("--link-dest", *link_dest,
                     "an earlier backup on the same file system: files it holds unchanged (checked by SHA-256) are "
                     "hard-linked from it, not copied");
  backup->callback([&cli, dest, link_dest] { cli.exit_code = CmdBackup(cli, *dest, *link_dest); });
  auto* restore = app.add_subcommand(
      "restore", "Copy a backup into this data dir (which must hold no registry; mmsd stopped)");
  auto from = std::make_shared<std::string>();
  restore->add_option("BACKUP", *from, "a directory mms backup wrote")->required();
  restore->callback([&cli, from] { cli.exit_code = CmdRestore(cli, *from); });
}

}  // namespace mms::cli
