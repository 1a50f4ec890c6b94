// `mms backup` and `mms restore` end to end: the real daemon serving while
// the backup is taken, the data dir lost, the backup restored and served; a
// backup SIGKILLed midway; each refused input with its exit code.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <thread>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/paths.h"
#include "support/process.h"

using namespace mms::testing;
using nlohmann::json;

namespace {

namespace fs = std::filesystem;

// A copy of a generated test file in `dir`: the originals a user registers
// from, which a test may delete.
std::string Own(const TempDir& dir, const std::string& name) {
  fs::copy(TestDataDir() + "/" + name, dir / name, fs::copy_options::recursive);
  return dir / name;
}

// mms with another data dir than the daemon's (but its socket).
ProcResult MmsAt(const std::string& data_dir, const std::string& socket, std::vector<std::string> args) {
  std::vector<std::string> argv{MmsBin(), "--data-dir", data_dir, "--socket", socket};
  argv.insert(argv.end(), args.begin(), args.end());
  return Run(argv, 300);
}

json Outputs(const ProcResult& r) {
  REQUIRE_MESSAGE(r.exit_code == 0, r.out << r.err);
  return json::parse(r.out)["outputs"];
}

// The outputs of `ref` for `input` from a real mmsd started on `data_dir`
// (socket and log beside it), stopped cleanly after.
// `config` (optional): mmsd's and the CLI's --config.
json ServedOutputs(const std::string& data_dir, const std::string& ref, const std::string& input,
                   const std::string& config = "") {
  const std::string sock = data_dir + ".sock";
  std::vector<std::string> with;
  if (!config.empty()) with = {"--config", config};
  auto at = [&](std::vector<std::string> args) {
    args.insert(args.begin(), with.begin(), with.end());
    return MmsAt(data_dir, sock, args);
  };
  std::vector<std::string> argv{MmsdBin(), "--data-dir", data_dir, "--socket", sock};
  argv.insert(argv.end(), with.begin(), with.end());
  Child served;
  REQUIRE(served.Start(argv, data_dir + ".log"));
  REQUIRE(WaitFor([&] { return at({"ping"}).exit_code == 0; }, 30));
  json out = Outputs(at({"--json", "predict", ref, "--input", input}));
  served.Signal(SIGTERM);
  REQUIRE(served.Wait(20) == 0);
  return out;
}

}  // namespace

TEST_CASE("a backup taken while mmsd serves restores to a data dir that serves the same, after the original is lost") {
  TempDir work;
  const std::string tiny = Own(work, "tiny.pt"), tiny2 = Own(work, "tiny_v2.pt"), base = Own(work, "lora_base.pt");
  const std::string input = Own(work, "tiny_input.json"), lora_input = Own(work, "lora_input.json");
  const std::string adapter = Own(work, "adapters");
  Daemon d;
  REQUIRE(d.ok());
  REQUIRE(d.Mms({"-q", "model", "register", "tiny", "--version", "1", "--path", tiny, "--sample-input", input}).exit_code == 0);
  REQUIRE(d.Mms({"-q", "model", "register", "tiny", "--version", "2", "--path", tiny2}).exit_code == 0);
  REQUIRE(d.Mms({"-q", "model", "stage", "tiny:2", "production"}).exit_code == 0);
  REQUIRE(d.Mms({"-q", "model", "register", "lb", "--version", "1", "--path", base}).exit_code == 0);
  REQUIRE(d.Mms({"-q", "adapter", "register", "a1", "--base", "lb:1", "--path", adapter + "/a1"}).exit_code == 0);
  REQUIRE(d.Mms({"-q", "pin", "tiny"}).exit_code == 0);
  REQUIRE(d.Mms({"-q", "limit", "set", "tiny", "--qps", "500"}).exit_code == 0);
  const json before = Outputs(d.Mms({"--json", "predict", "tiny", "--input", input}));
  const json before1 = Outputs(d.Mms({"--json", "predict", "tiny:1", "--input", input}));
  const json before_lora = Outputs(d.Mms({"--json", "predict", "lb:1", "--adapter", "a1", "--input", lora_input}));

  // Taken online: the daemon serves, and another writer registers, throughout.
  const std::string dest = work / "backups/monday";
  std::atomic<bool> done{false};
  std::atomic<int> served{0}, failed{0};
  std::thread traffic([&] {
    while (!done) (d.Mms({"-q", "predict", "tiny", "--input", input}).exit_code == 0 ? served : failed)++;
  });
  std::thread writer([&] {
    for (int v = 10; v < 13; ++v)
      if (d.Mms({"-q", "model", "register", "extra", "--version", std::to_string(v), "--path", tiny}).exit_code != 0) ++failed;
  });
  auto b = d.Mms({"--json", "backup", dest});
  writer.join();
  done = true;
  traffic.join();
  CHECK(failed == 0);
  CHECK(served > 0);
  REQUIRE_MESSAGE(b.exit_code == 0, b.out << b.err);
  json rep = json::parse(b.out);
  // One commit's versions: the four, and the extra ones registered before its snapshot.
  const int extra = rep["versions"].get<int>() - 4;
  CHECK(extra >= 0);
  CHECK(extra <= 3);
  CHECK(rep["packed_dirs"] == 4 + extra);
  CHECK(rep["source_files"] == 5);  // the adapter's config too; the extra ones share tiny:1's original
  CHECK(rep["problems"].empty());
  CHECK(rep["registry"] == dest + "/registry.db");
  auto v = MmsAt(dest, work / "none.sock", {"model", "verify"});
  CHECK_MESSAGE(v.exit_code == 0, v.out << v.err);
  CHECK(v.out.find(std::to_string(4 + extra) + " of " + std::to_string(4 + extra) + " versions verified") !=
        std::string::npos);

  // The disk dies: the data dir and the originals are gone.
  d.child().Signal(SIGKILL);
  d.child().Wait(30);
  fs::remove_all(d.data_dir());
  for (const std::string& f : {tiny, tiny2, base, adapter}) fs::remove_all(f);

  auto r = d.Mms({"--json", "restore", dest});
  REQUIRE_MESSAGE(r.exit_code == 0, r.out << r.err);
  CHECK(json::parse(r.out)["restored_from"] == dest);
  REQUIRE(d.Restart());
  CHECK(Outputs(d.Mms({"--json", "predict", "tiny", "--input", input})) == before);
  CHECK(Outputs(d.Mms({"--json", "predict", "tiny:1", "--input", input})) == before1);
  CHECK(Outputs(d.Mms({"--json", "predict", "lb:1", "--adapter", "a1", "--input", lora_input})) == before_lora);
  // The registry's state came back: stage, pin, limit; and the audit log says how.
  auto pool = json::parse(d.Mms({"--json", "pool"}).out);
  bool pinned = false;
  for (const auto& dev : pool["devices"])
    for (const auto& m : dev["models"])
      if (m["ref"] == "tiny:2") pinned = m["pinned"];
  CHECK_MESSAGE(pinned, pool.dump());
  CHECK(d.Mms({"limit", "list"}).out.find("500") != std::string::npos);
  // Repack and verify read the originals: the restored copies of them.
  auto rp = d.Mms({"model", "repack", "tiny:1"});
  CHECK_MESSAGE(rp.exit_code == 0, rp.out << rp.err);
  auto vr = d.Mms({"model", "verify"});
  CHECK_MESSAGE(vr.exit_code == 0, vr.out << vr.err);
  auto audit = d.Mms({"--json", "model", "show", "tiny:1"});
  REQUIRE(audit.exit_code == 0);
  CHECK(json::parse(audit.out)["artifact_path"].get<std::string>().rfind(d.data_dir() + "/sources/tiny/1/", 0) == 0);
}

TEST_CASE("a backup SIGKILLed midway leaves no backup, and the next one into the same place completes") {
  TempDir work;
  const std::string tiny = Own(work, "tiny.pt"), input = Own(work, "tiny_input.json");
  Daemon d;
  REQUIRE(d.ok());
  REQUIRE(d.Mms({"-q", "model", "register", "tiny", "--version", "1", "--path", tiny, "--sample-input", input}).exit_code == 0);
  REQUIRE(d.Mms({"-q", "model", "register", "tiny", "--version", "2", "--path", Own(work, "tiny_v2.pt")}).exit_code == 0);
  const std::string dest = work / "backup";
  {
    BlockedFile blocked(tiny);  // the backup stops in the middle: reading tiny:1's original
    REQUIRE(blocked.ok());
    Child c;
    REQUIRE(c.Start({MmsBin(), "--data-dir", d.data_dir(), "--socket", d.socket(), "backup", dest}, work / "backup.log"));
    REQUIRE(WaitFor([&] { return fs::exists(dest + "/sources/tiny/1"); }, 60));
    c.Signal(SIGKILL);
    CHECK(c.Wait(30) == 128 + SIGKILL);
  }
  CHECK_FALSE(fs::exists(dest + "/registry.db"));
  CHECK(fs::exists(dest + "/registry.db.partial"));
  // Not a backup: refused as such, never restored from.
  TempDir other;
  auto r = MmsAt(other / "data", other / "none.sock", {"restore", dest});
  CHECK(r.exit_code == 1);
  CHECK(r.err.find("unfinished backup") != std::string::npos);
  CHECK_FALSE(fs::exists(other / "data/registry.db"));
  // Opened as a data dir (mmsd, or a command): said as the interrupted copy
  // it is (it was "the registry file was removed or moved ... move artifacts aside").
  Child served;
  REQUIRE(served.Start({MmsdBin(), "--data-dir", dest, "--socket", work / "b.sock"}, work / "b.log"));
  CHECK(served.Wait(30) == 1);
  const std::string said = mms::ReadFile(work / "b.log").value();
  CHECK_MESSAGE(said.find("was interrupted, or is running") != std::string::npos, said);
  auto listed = MmsAt(dest, work / "none.sock", {"model", "list"});
  CHECK(listed.exit_code == 1);
  CHECK_MESSAGE(listed.err.find("Run the mms restore (or mms backup) that was writing it again") != std::string::npos, listed.err);
  // Taken again into the same place: the interrupted one's files go first.
  auto b = d.Mms({"backup", dest});
  REQUIRE_MESSAGE(b.exit_code == 0, b.out << b.err);
  CHECK(b.err.find("interrupted copy") != std::string::npos);
  auto v = MmsAt(dest, work / "none.sock", {"model", "verify"});
  CHECK_MESSAGE(v.exit_code == 0, v.out << v.err);
  CHECK_FALSE(fs::exists(dest + "/registry.db.partial"));
  size_t packed = 0;
  for (const auto& e : fs::recursive_directory_iterator(dest + "/artifacts"))
    packed += e.path().filename() == "weights.safetensors";
  CHECK(packed == 2);
}

TEST_CASE("backup and restore refuse what they cannot do, with exit codes, and say what to do") {
  TempDir work;
  const std::string tiny = Own(work, "tiny.pt"), tiny2 = Own(work, "tiny_v2.pt");
  Daemon d;
  REQUIRE(d.ok());
  // No registry to back up (a mistyped --data-dir): 4.
  auto none = MmsAt(work / "nodata", work / "none.sock", {"backup", work / "b0"});
  CHECK(none.exit_code == 4);
  CHECK(none.err.find("no registry at") != std::string::npos);
  CHECK_FALSE(fs::exists(work / "b0"));
  REQUIRE(d.Mms({"-q", "model", "register", "tiny", "--version", "1", "--path", tiny}).exit_code == 0);
  REQUIRE(d.Mms({"-q", "model", "register", "tiny", "--version", "2", "--path", tiny2}).exit_code == 0);

  // DEST: a file, or a directory with something in it: 6; inside the data
  // dir's artifacts (which verify --prune would clear): 2.
  std::ofstream(work / "afile") << "x";
  CHECK(d.Mms({"backup", work / "afile"}).exit_code == 6);
  fs::create_directories(work / "full/x");
  auto full = d.Mms({"backup", work / "full"});
  CHECK(full.exit_code == 6);
  CHECK(full.err.find("is not empty: name a new directory") != std::string::npos);
  auto inside = d.Mms({"backup", d.data_dir() + "/artifacts/bk"});
  CHECK(inside.exit_code == 2);
  fs::create_directory_symlink(d.data_dir(), work / "link");  // the same place, spelt otherwise
  CHECK(d.Mms({"backup", work / "link/artifacts/bk"}).exit_code == 2);
  CHECK(MmsAt(work / "link", d.socket(), {"backup", d.data_dir() + "/artifacts/bk"}).exit_code == 2);
  CHECK(inside.err.find("verify --prune") != std::string::npos);
  CHECK_FALSE(fs::exists(d.data_dir() + "/artifacts/bk"));
  fs::create_directories(work / "empty");
  CHECK(d.Mms({"-q", "backup", work / "empty"}).exit_code == 0);  // an empty directory is fine

  // An original deleted by its owner: noted, exit 0 (it serves from its
  // packed files). Packed files missing: the copy is written, exit 1.
  fs::remove(tiny2);
  auto noted = d.Mms({"--json", "backup", work / "b1"});
  CHECK_MESSAGE(noted.exit_code == 0, noted.out << noted.err);
  CHECK(json::parse(noted.out)["sources_missing"].size() == 1);
  CHECK(noted.err.find("tiny:2: its original artifact " + tiny2 + " is gone") != std::string::npos);
  fs::remove_all(fs::path(PackedWeights(d.data_dir(), "tiny", "1")).parent_path());
  auto damaged = d.Mms({"backup", work / "b2"});
  CHECK(damaged.exit_code == 1);
  CHECK(damaged.err.find("cannot be served from it") != std::string::npos);
  CHECK(damaged.err.find("tiny:1: its packed files") != std::string::npos);
  CHECK(fs::exists(work / "b2/registry.db"));
  // A packed file rotted in the source (its bytes no longer those its
  // SHA256SUMS records): copied as it is, but said, exit 1 — it used to be
  // copied without a word, and a restore from it served nothing.
  const std::string module = fs::path(PackedWeights(d.data_dir(), "tiny", "2")).parent_path() / "module.pt";
  {
    std::fstream f(module, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(100);
    const char was = static_cast<char>(f.get());
    f.seekp(100);
    f.put(static_cast<char>(was ^ 0x5a));  // (a byte that differs, whatever it was)
  }
  auto rotted = d.Mms({"backup", work / "b5"});
  CHECK(rotted.exit_code == 1);
  CHECK_MESSAGE(rotted.err.find("tiny:2: its packed files in") != std::string::npos, rotted.err);
  CHECK_MESSAGE(rotted.err.find("are damaged (module.pt has sha256 ") != std::string::npos, rotted.err);
  // (Its original was deleted above: repack cannot rebuild them.)
  CHECK_MESSAGE(rotted.err.find("its original artifact was not copied either: register it again from a good copy (in "
                                "the data dir), then take the backup again") != std::string::npos,
                rotted.err);
  CHECK(fs::exists(work / "b5/registry.db"));
  // Restored from that backup: the same said, exit 1 (the copy written).
  auto restored_rot = MmsAt(work / "r5", work / "none.sock", {"restore", work / "b5"});
  CHECK(restored_rot.exit_code == 1);
  CHECK_MESSAGE(restored_rot.err.find("tiny:2: its packed files in") != std::string::npos, restored_rot.err);
  CHECK(restored_rot.err.find("then take the backup again") == std::string::npos);
  CHECK(fs::exists(work / "r5/registry.db"));

  // Restore: not a backup (4); into a data dir that has a registry (6), or
  // another's packed files (6); while mmsd runs on the socket (6).
  auto notb = MmsAt(work / "r1", work / "none.sock", {"restore", work / "empty/artifacts"});
  CHECK(notb.exit_code == 4);
  CHECK(notb.err.find("no backup at") != std::string::npos);
  auto has = d.Mms({"restore", work / "b1"});
  CHECK(has.exit_code == 6);
  CHECK(has.err.find("already has a registry") != std::string::npos);
  fs::create_directories(work / "r2/artifacts/m/1-x");
  auto foreign = MmsAt(work / "r2", work / "none.sock", {"restore", work / "b1"});
  CHECK(foreign.exit_code == 6);
  CHECK(foreign.err.find("move it aside") != std::string::npos);
  // A registry's log left behind without it (its registry moved away after
  // a SIGKILL): SQLite replayed it into the restored registry, which then
  // held the old registry's rows and named packed files not there.
  fs::create_directories(work / "r4");
  fs::copy_file(work / "b1/registry.db", work / "r4/registry.db-wal");  // (any bytes: it is refused unread)
  auto wal = MmsAt(work / "r4", work / "none.sock", {"restore", work / "b1"});
  CHECK(wal.exit_code == 6);
  CHECK_MESSAGE(wal.err.find((work / "r4") + "/registry.db-wal is there without registry.db") != std::string::npos,
                wal.err);
  CHECK_FALSE(fs::exists(work / "r4/registry.db"));
  CHECK(fs::exists(work / "r4/registry.db-wal"));  // left as it was
  // A daemon on the socket serving another data dir is no reason to refuse
  // (one $XDG_RUNTIME_DIR socket for every data dir); one serving this one is.
  auto beside = MmsAt(work / "r3", d.socket(), {"restore", work / "b1"});
  CHECK_MESSAGE(beside.exit_code == 0, beside.err);
  // Its hint starts the restored data dir's daemon on a socket of its own (that one is taken).
  CHECK_MESSAGE(beside.out.find("--socket " + (work / "r3") + "/mms.sock serve --detach") != std::string::npos,
                beside.out);
  CHECK(d.Mms({"ping"}).exit_code == 0);  // and it served on throughout
  // The daemon's own data dir lost (the disk replaced under it): refused while it runs.
  for (const char* f : {"registry.db", "registry.db-wal", "registry.db-shm"}) fs::remove(d.data_dir() + "/" + f);
  fs::rename(d.data_dir() + "/artifacts", work / "old-artifacts");
  auto running = d.Mms({"restore", work / "b1"});
  CHECK(running.exit_code == 6);
  CHECK_MESSAGE(running.err.find("serves this data dir") != std::string::npos, running.err);
  CHECK(running.err.find("stop it before restoring") != std::string::npos);
  CHECK_FALSE(fs::exists(d.data_dir() + "/registry.db"));
  // A copy already writing into a place: a second one is refused, nothing of the first touched.
  {
    TempDir held;
    const std::string marker = held / "data/registry.db.copying";
    fs::create_directories(held / "data");
    int fd = ::open(marker.c_str(), O_RDWR | O_CREAT, 0600);
    REQUIRE(fd >= 0);
    REQUIRE(::flock(fd, LOCK_EX) == 0);
    auto second = MmsAt(held / "data", work / "none.sock", {"restore", work / "b1"});
    CHECK(second.exit_code == 6);
    CHECK_MESSAGE(second.err.find("another mms backup or restore is writing") != std::string::npos, second.err);
    CHECK(fs::exists(marker));
    ::close(fd);
  }
}

TEST_CASE("an incremental backup links what the earlier one holds, and stands alone once that is gone") {
  TempDir work;
  const std::string tiny = Own(work, "tiny.pt"), tiny2 = Own(work, "tiny_v2.pt");
  const std::string input = TestDataDir() + "/tiny_input.json";
  Daemon d;
  REQUIRE(d.ok());
  REQUIRE(d.Mms({"-q", "model", "register", "tiny", "--version", "1", "--path", tiny, "--sample-input", input})
              .exit_code == 0);
  auto full = d.Mms({"--json", "backup", work / "b1"});
  REQUIRE_MESSAGE(full.exit_code == 0, full.err);
  REQUIRE(d.Mms({"-q", "model", "register", "tiny", "--version", "2", "--path", tiny2}).exit_code == 0);
  const json served = Outputs(d.Mms({"--json", "predict", "tiny:1", "--input", input}));

  // Refused, nothing written: no backup there (4); the data dir itself (2).
  auto missing = d.Mms({"backup", work / "b2", "--link-dest", work / "nothing"});
  CHECK(missing.exit_code == 4);
  CHECK(missing.err.find("--link-dest names an earlier backup") != std::string::npos);
  auto live = d.Mms({"backup", work / "b2", "--link-dest", d.data_dir()});
  CHECK(live.exit_code == 2);
  CHECK(live.err.find("is the data dir itself") != std::string::npos);
  auto empty = d.Mms({"backup", work / "b2", "--link-dest", ""});  // an unset variable: not a full backup
  CHECK(empty.exit_code == 2);
  CHECK(empty.err.find("--link-dest is empty") != std::string::npos);
  auto inside = d.Mms({"backup", work / "b1/artifacts/b2", "--link-dest", work / "b1"});
  CHECK(inside.exit_code == 2);
  CHECK(inside.err.find("is inside the earlier backup") != std::string::npos);
  CHECK_FALSE(fs::exists(work / "b2"));

  auto inc = d.Mms({"--json", "backup", work / "b2", "--link-dest", work / "b1"});
  REQUIRE_MESSAGE(inc.exit_code == 0, inc.err);
  const json r = json::parse(inc.out);
  // tiny:1's packed weights, module and sample, and its original: linked.
  CHECK(r["linked_files"] == 4);
  CHECK(r["versions"] == 2);
  const std::string w1 = PackedWeights(work / "b1", "tiny", "1"), w2 = PackedWeights(work / "b2", "tiny", "1");
  CHECK(r["linked_bytes"].get<uint64_t>() > fs::file_size(w1) + fs::file_size(tiny));
  CHECK(fs::hard_link_count(w2) == 2);
  CHECK(fs::equivalent(w1, w2));
  // On another file system (where this machine has one: /dev/shm) nothing
  // can be linked: copied, and said.
  struct stat shm {}, here {};
  if (::stat("/dev/shm", &shm) == 0 && ::stat(work.path().c_str(), &here) == 0 && shm.st_dev != here.st_dev &&
      ::access("/dev/shm", W_OK) == 0) {
    char tmpl[] = "/dev/shm/mms-test-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    auto across = d.Mms({"--json", "backup", std::string(tmpl) + "/b", "--link-dest", work / "b1"});
    fs::remove_all(tmpl);
    CHECK_MESSAGE(across.exit_code == 0, across.err);
    CHECK(json::parse(across.out)["linked_files"] == 0);
    CHECK_MESSAGE(across.err.find("(it is on another file system), so they were copied") != std::string::npos, across.err);
  }
  // The earlier backup deleted: the incremental one verifies, restores and serves the same.
  fs::remove_all(work / "b1");
  auto verify = MmsAt(work / "b2", work / "none.sock", {"model", "verify"});
  CHECK_MESSAGE(verify.exit_code == 0, verify.out << verify.err);
  REQUIRE(MmsAt(work / "r", work / "none.sock", {"-q", "restore", work / "b2"}).exit_code == 0);
  CHECK(ServedOutputs(work / "r", "tiny:1", input) == served);
}

TEST_CASE("a backup moved elsewhere is verified, served and restored from where it is") {
  // Its registry named the files where it was written: restoring a copy
  // taken to another host found none of them.
  TempDir work;
  const std::string tiny = Own(work, "tiny.pt"), input = Own(work, "tiny_input.json");
  Daemon d;
  REQUIRE(d.ok());
  REQUIRE(d.Mms({"-q", "model", "register", "tiny", "--version", "1", "--path", tiny, "--sample-input", input}).exit_code == 0);
  // Retrained into the same file: another original at the same path.
  fs::copy_file(TestDataDir() + "/tiny_v2.pt", tiny, fs::copy_options::overwrite_existing);
  REQUIRE(d.Mms({"-q", "model", "register", "tiny", "--version", "2", "--path", tiny}).exit_code == 0);
  const json before = Outputs(d.Mms({"--json", "predict", "tiny:2", "--input", input}));
  auto b = d.Mms({"--json", "backup", work / "written-here"});
  REQUIRE_MESSAGE(b.exit_code == 0, b.err);
  json rep = json::parse(b.out);
  CHECK(rep["sources_missing"].size() == 1);  // tiny:1's original was overwritten: it, and only it
  CHECK_MESSAGE(b.err.find("tiny:1: its original artifact " + tiny + " changed since registration") != std::string::npos,
                b.err);
  CHECK(rep["source_files"] == 1);  // tiny:2's, from the same path
  fs::rename(work / "written-here", work / "moved");
  // Checked, and served, where it is now (its registry names its own files
  // relative to it): stop 22's backups looked where they were written.
  auto checked = MmsAt(work / "moved", work / "none.sock", {"model", "verify", "tiny:2"});
  CHECK_MESSAGE(checked.exit_code == 0, checked.out << checked.err);
  CHECK(ServedOutputs(work / "moved", "tiny:2", input) == before);
  auto r = MmsAt(work / "new-data", work / "none.sock", {"--json", "restore", work / "moved"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.out << r.err);
  CHECK(json::parse(r.out)["packed_dirs"] == 2);
  auto v = MmsAt(work / "new-data", work / "none.sock", {"model", "verify", "tiny:2"});
  CHECK_MESSAGE(v.exit_code == 0, v.out << v.err);
  d.child().Signal(SIGTERM);
  REQUIRE(d.child().Wait(20) == 0);
  CHECK(ServedOutputs(work / "new-data", "tiny:2", input) == before);
}

TEST_CASE("a data dir moved whole (mv to another disk) serves, verifies and repacks from where it is") {
  TempDir work;
  const std::string input = Own(work, "tiny_input.json");
  const std::string first = work / "first", moved = work / "moved";
  // The original kept inside the data dir, as a restore leaves it.
  fs::create_directories(first + "/sources");
  fs::copy_file(TestDataDir() + "/tiny.pt", first + "/sources/tiny.pt");
  auto reg = MmsAt(first, work / "none.sock",
                   {"-q", "model", "register", "tiny", "--version", "1", "--path", first + "/sources/tiny.pt",
                    "--sample-input", input});
  REQUIRE_MESSAGE(reg.exit_code == 0, reg.err);
  const json before = ServedOutputs(first, "tiny:1", input);
  fs::rename(first, moved);
  auto v = MmsAt(moved, work / "none.sock", {"model", "verify"});
  CHECK_MESSAGE(v.exit_code == 0, v.out << v.err);
  auto show = MmsAt(moved, work / "none.sock", {"--json", "model", "show", "tiny:1"});
  REQUIRE(show.exit_code == 0);
  CHECK(json::parse(show.out)["artifact_path"] == moved + "/sources/tiny.pt");
  CHECK(json::parse(show.out)["packed_dir"].get<std::string>().rfind(moved + "/artifacts/tiny/", 0) == 0);
  auto re = MmsAt(moved, work / "none.sock", {"-q", "model", "repack", "tiny:1"});
  CHECK_MESSAGE(re.exit_code == 0, re.err);
  CHECK(ServedOutputs(moved, "tiny:1", input) == before);
}

TEST_CASE("a restore into a data dir whose registry is kept elsewhere ([registry] path) serves and verifies") {
  // The restored registry named its files relative to itself, as in the
  // default layout, and was read absolute beside the data dir: exit 0, then
  // nothing served ("no such file: <registry dir>/artifacts/...").
  TempDir work;
  const std::string input = Own(work, "tiny_input.json");
  auto reg = MmsAt(work / "first", work / "none.sock",
                   {"-q", "model", "register", "tiny", "--version", "1", "--path", Own(work, "tiny.pt"),
                    "--sample-input", input});
  REQUIRE_MESSAGE(reg.exit_code == 0, reg.err);
  const json before = ServedOutputs(work / "first", "tiny:1", input);
  REQUIRE(MmsAt(work / "first", work / "none.sock", {"-q", "backup", work / "bk"}).exit_code == 0);
  fs::create_directories(work / "regs");
  const std::string config = work / "mms.toml";
  std::ofstream(config) << "[registry]\npath = \"" << (work / "regs/r.db") << "\"\n";
  auto r = MmsAt(work / "restored", work / "none.sock", {"--config", config, "restore", work / "bk"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.out << r.err);
  CHECK(fs::exists(work / "regs/r.db"));
  auto v = MmsAt(work / "restored", work / "none.sock", {"--config", config, "model", "verify"});
  CHECK_MESSAGE(v.exit_code == 0, v.out << v.err);
  auto show = MmsAt(work / "restored", work / "none.sock", {"--config", config, "--json", "model", "show", "tiny:1"});
  REQUIRE(show.exit_code == 0);
  CHECK(json::parse(show.out)["packed_dir"].get<std::string>().rfind(work / "restored/artifacts/tiny/", 0) == 0);
  CHECK(ServedOutputs(work / "restored", "tiny:1", input, config) == before);
}

TEST_CASE("the commands backup and restore advise are quoted for the shell: paths with spaces paste as they are") {
  TempDir work;
  const std::string src = work / "src", bk = work / "bk 1", dest = work / "rs 1";
  REQUIRE(MmsAt(src, work / "none.sock",
                {"-q", "model", "register", "tiny", "--version", "1", "--path", TestDataDir() + "/tiny.pt"})
              .exit_code == 0);
  auto b = MmsAt(src, work / "none.sock", {"backup", bk});
  REQUIRE_MESSAGE(b.exit_code == 0, b.err);
  CHECK_MESSAGE(b.out.find("check it:   mms --data-dir '" + bk + "' model verify") != std::string::npos, b.out);
  auto r = MmsAt(dest, work / "none.sock", {"restore", bk});
  REQUIRE_MESSAGE(r.exit_code == 0, r.err);
  const std::string advice = r.out + r.err;
  const auto at = advice.find("start mmsd on it: ");
  REQUIRE_MESSAGE(at != std::string::npos, advice);
  CHECK_MESSAGE(advice.find("--data-dir '" + dest + "'", at) != std::string::npos, advice);
  // The advised command's options, run by a shell as printed (with model
  // list for serve --detach, so nothing starts): they name the restored data dir.
  std::string line = advice.substr(at + 18, advice.find('\n', at) - at - 18);
  line.replace(line.find("mms "), 4, MmsBin() + " ");
  auto list = Run({"/bin/sh", "-c", line.substr(0, line.find(" serve --detach")) + " model list"});
  CHECK_MESSAGE(list.exit_code == 0, line << ": " << list.err);
  CHECK(list.out.find("tiny") != std::string::npos);
}
