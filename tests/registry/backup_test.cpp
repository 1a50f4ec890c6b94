// CopyDataDir (mms backup / restore) on real registries and real files: the
// copy names its own files, a writer busy during the copy, an interrupted
// copy, files missing from the source. The CLI and a SIGKILLed backup are in
// tests/integration/backup_test.cpp.
#include <doctest/doctest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "core/clock.h"
#include "core/hash.h"
#include "core/paths.h"
#include "registry/backup.h"
#include "registry/registry.h"
#include "registry/sqlite.h"
#include "support/process.h"

using namespace mms;

namespace {

void Write(const std::string& path, const std::string& text) {
  REQUIRE(MakeDirs(DirName(path), 0700).ok());
  std::ofstream(path) << text;
}

std::string Slurp(const std::string& path) {
  auto s = ReadFile(path);
  return s.ok() ? *s : "<missing " + path + ">";
}

// A data dir with real files: each version has an original artifact outside
// it and a packed dir (with a stored sample) inside it.
struct Source {
  testing::TempDir dir;
  FakeClock clock;
  std::unique_ptr<Registry> reg;
  std::string data = dir / "data";
  std::string db = data + "/registry.db";
  Source() {
    Registry::Options o;
    o.path = db;
    o.artifacts_dir = data + "/artifacts";
    o.clock = &clock;
    o.actor = "tester";
    auto r = Registry::Open(o);
    REQUIRE(r.ok());
    reg = std::move(r).value();
  }
  VersionRecord Add(const std::string& model, const std::string& version, bool packed = true, bool sums = false) {
    const std::string original = dir / ("models/" + model + "-" + version + ".pt");
    Write(original, "module " + model + ":" + version);
    NewVersion v;
    v.model = model;
    v.version = version;
    v.artifact_path = original;
    v.size_bytes = 100;
    v.sha256 = *Sha256File(original);
    if (packed) {
      v.packed_dir = data + "/artifacts/" + model + "/" + version + "-abc";
      Write(v.packed_dir + "/weights.safetensors", "weights " + model + ":" + version);
      Write(v.packed_dir + "/module.pt", "weightless " + model + ":" + version);
      Write(v.packed_dir + "/sample.json", "{}");
      v.sample_input = v.packed_dir + "/sample.json";
      if (sums) {  // as registration writes it (sha256sum(1)'s format)
        std::string text;
        for (const char* f : {"weights.safetensors", "module.pt", "sample.json"})
          text += *Sha256File(v.packed_dir + "/" + f) + "  " + f + "\n";
        Write(v.packed_dir + "/SHA256SUMS", text);
      }
    }
    auto r = reg->Register(v);
    REQUIRE(r.ok());
    return *r;
  }
  DataDirCopy To(const std::string& dest) {
    DataDirCopy c;
    c.src_db = db;
    c.src_dir = data;
    c.dest_dir = dest;
    c.dest_db = dest + "/registry.db";
    c.action = "backup";
    c.detail = "from " + data;
    c.actor = "tester";
    c.clock = &clock;
    return c;
  }
};

std::unique_ptr<Registry> OpenCopy(const std::string& db) {
  Registry::Options o;
  o.path = db;
  o.artifacts_dir = DirName(db) + "/artifacts";
  o.create = false;
  auto r = Registry::Open(o);
  REQUIRE(r.ok());
  return std::move(r).value();
}

}  // namespace

TEST_CASE("a copy of a data dir names its own copies of every file, with the registry's state") {
  Source s;
  s.Add("rec", "1");
  s.Add("rec", "2");
  s.Add("old", "1", /*packed=*/false);
  REQUIRE(s.reg->SetStage(Ref{Ref::Kind::kVersion, "rec", "2", ""}, Stage::kProduction).ok());
  REQUIRE(s.reg->AddPin(Ref{Ref::Kind::kName, "rec", "", ""}).ok());
  const std::string dest = s.dir / "backup";
  auto rep = CopyDataDir(s.To(dest));
  REQUIRE_MESSAGE(rep.ok(), rep.status().ToString());
  CHECK(rep->versions == 3);
  CHECK(rep->packed_dirs == 2);
  CHECK(rep->source_files == 3);
  CHECK(rep->snapshots == 1);
  CHECK(rep->problems.empty());
  CHECK(rep->sources_missing.empty());
  CHECK_FALSE(FileExists(dest + "/registry.db.partial"));
  CHECK_FALSE(FileExists(dest + "/registry.db-wal"));

  auto copy = OpenCopy(dest + "/registry.db");
  auto all = copy->List();
  REQUIRE(all.ok());
  REQUIRE(all->size() == 3);
  for (const VersionRecord& v : *all) {
    INFO(v.ref());
    CHECK(v.artifact_path.rfind(dest + "/sources/" + v.model + "/" + v.version + "/", 0) == 0);
    CHECK(Slurp(v.artifact_path) == "module " + v.ref());
    CHECK(*Sha256File(v.artifact_path) == v.sha256);
    if (v.model == "old") {
      CHECK(v.packed_dir.empty());
      continue;
    }
    CHECK(v.packed_dir == dest + "/artifacts/" + v.model + "/" + v.version + "-abc");
    CHECK(Slurp(v.packed_dir + "/weights.safetensors") == "weights " + v.ref());
    CHECK(v.sample_input == v.packed_dir + "/sample.json");
    CHECK(FileExists(v.sample_input));
  }
  // The registry's state came along: stages, pins, the audit log (plus a row
  // for the copy); the source still names its own files.
  auto prod = copy->Resolve(Ref{Ref::Kind::kName, "rec", "", ""});
  REQUIRE(prod.ok());
  CHECK(prod->version == "2");
  CHECK(copy->Pins()->size() == 1);
  auto log = copy->AuditLog();
  REQUIRE(log.ok());
  CHECK(log->back().action == "backup");
  CHECK(log->back().detail == "from " + s.data);
  CHECK(s.reg->List()->front().artifact_path.rfind(s.dir / "models/", 0) == 0);

  // The same copy again: refused, nothing touched.
  auto again = CopyDataDir(s.To(dest));
  CHECK(again.status().code() == Code::kAlreadyExists);
  CHECK(OpenCopy(dest + "/registry.db")->List()->size() == 3);

  // A copy of the copy (a restore) names the files of the new place.
  const std::string restored = s.dir / "restored";
  DataDirCopy back;
  back.src_db = dest + "/registry.db";
  back.dest_dir = restored;
  back.dest_db = restored + "/registry.db";
  back.action = "restore";
  back.detail = "from " + dest;
  auto rep2 = CopyDataDir(back);
  REQUIRE_MESSAGE(rep2.ok(), rep2.status().ToString());
  auto restored_reg = OpenCopy(restored + "/registry.db");
  auto restored_all = restored_reg->List();
  REQUIRE(restored_all.ok());
  CHECK(restored_all->size() == 3);
  for (const VersionRecord& v : *restored_all) {
    INFO(v.ref());
    CHECK(v.artifact_path.rfind(restored + "/sources/", 0) == 0);
    CHECK(Slurp(v.artifact_path) == "module " + v.ref());
    if (!v.packed_dir.empty()) CHECK(Slurp(v.packed_dir + "/module.pt") == "weightless " + v.ref());
  }
}

TEST_CASE("an incremental copy links what an earlier copy holds unchanged, and copies the rest") {
  Source s;
  auto r1 = s.Add("rec", "1", true, /*sums=*/true);
  auto r2 = s.Add("rec", "2", true, /*sums=*/true);
  s.Add("legacy", "1", true, /*sums=*/false);  // packed before SHA256SUMS: nothing to check a link against
  const std::string b1 = s.dir / "b1";
  auto first = CopyDataDir(s.To(b1));
  REQUIRE_MESSAGE(first.ok(), first.status().ToString());
  CHECK(first->linked_files == 0);
  auto r3 = s.Add("rec", "3", true, /*sums=*/true);  // registered since
  // Damage in the earlier copy: rec:2's weights, same size, other bytes.
  std::string weights2 = b1 + "/artifacts/rec/2-abc/weights.safetensors";
  std::string text = Slurp(weights2);
  text.back() ^= 1;
  REQUIRE(::unlink(weights2.c_str()) == 0);
  Write(weights2, text);

  const std::string b2 = s.dir / "b2";
  DataDirCopy c = s.To(b2);
  c.link_dest = b1;
  auto rep = CopyDataDir(c);
  REQUIRE_MESSAGE(rep.ok(), rep.status().ToString());
  CHECK(rep->problems.empty());
  CHECK(rep->link_refused.empty());
  auto inode = [](const std::string& path) {
    struct stat st {};
    CHECK(::stat(path.c_str(), &st) == 0);
    return st.st_ino;
  };
  auto same_file = [&](const std::string& rel) { return inode(b1 + "/" + rel) == inode(b2 + "/" + rel); };
  // Linked: rec:1's packed files and original, rec:2's but the damaged weights.
  for (const char* f : {"weights.safetensors", "module.pt", "sample.json"}) {
    INFO(f);
    CHECK(same_file(std::string("artifacts/rec/1-abc/") + f));
    CHECK(same_file(std::string("artifacts/rec/2-abc/") + f) == (std::string(f) != "weights.safetensors"));
  }
  CHECK(same_file("sources/rec/1/rec-1.pt"));
  CHECK(same_file("sources/rec/2/rec-2.pt"));
  CHECK(same_file("sources/legacy/1/legacy-1.pt"));  // (an original is checked by its registered SHA-256)
  CHECK(rep->linked_files == 4 + 3 + 1);
  // Copied: the damaged file (the copy holds the registered bytes), SHA256SUMS, what nothing checks.
  CHECK(Slurp(b2 + "/artifacts/rec/2-abc/weights.safetensors") == "weights rec:2");
  CHECK_FALSE(same_file("artifacts/rec/1-abc/SHA256SUMS"));
  CHECK_FALSE(same_file("artifacts/legacy/1-abc/weights.safetensors"));
  CHECK(FileExists(b2 + "/artifacts/rec/3-abc/weights.safetensors"));
  CHECK(FileExists(b2 + "/sources/rec/3/rec-3.pt"));
  // The copy is whole on its own: every version's files, as the first copy's.
  auto copy = OpenCopy(b2 + "/registry.db");
  auto all = copy->List();
  REQUIRE(all.ok());
  REQUIRE(all->size() == 4);
  for (const VersionRecord& v : *all) {
    INFO(v.ref());
    CHECK(v.packed_dir.rfind(b2 + "/", 0) == 0);
    CHECK(*Sha256File(v.artifact_path) == v.sha256);
    CHECK(Slurp(v.packed_dir + "/module.pt") == "weightless " + v.ref());
  }
  // A symlink in the earlier copy (a dedup tool's, a hand edit) is not
  // linked: the link would be to the symlink, dangling or pointing out of
  // the copy. An original gone from its place (or overwritten) since is
  // linked from the earlier copy, which holds the bytes registered.
  const std::string module1 = b2 + "/artifacts/rec/1-abc/module.pt";
  std::filesystem::copy_file(module1, s.dir / "elsewhere.pt");
  REQUIRE(::unlink(module1.c_str()) == 0);
  std::filesystem::create_symlink(s.dir / "elsewhere.pt", module1);
  REQUIRE(::unlink(r2.artifact_path.c_str()) == 0);
  const std::string b3 = s.dir / "b3";
  DataDirCopy c3 = s.To(b3);
  c3.link_dest = b2;
  auto rep3 = CopyDataDir(c3);
  REQUIRE_MESSAGE(rep3.ok(), rep3.status().ToString());
  CHECK(std::filesystem::is_regular_file(std::filesystem::symlink_status(b3 + "/artifacts/rec/1-abc/module.pt")));
  CHECK(Slurp(b3 + "/artifacts/rec/1-abc/module.pt") == "weightless rec:1");
  CHECK(inode(b3 + "/sources/rec/2/rec-2.pt") == inode(b2 + "/sources/rec/2/rec-2.pt"));
  CHECK(rep3->sources_missing.empty());
  // The earlier copies removed: the linked one keeps its files.
  std::filesystem::remove_all(b1);
  std::filesystem::remove_all(b2);
  CHECK(Slurp(b3 + "/artifacts/rec/1-abc/weights.safetensors") == "weights rec:1");
  CHECK(Slurp(b3 + "/sources/rec/1/rec-1.pt") == "module rec:1");
  CHECK(Slurp(b3 + "/sources/rec/2/rec-2.pt") == "module rec:2");
  (void)r1, (void)r3;
}

TEST_CASE("an incremental copy counts only the links its finished copy holds") {
  // Links made into a directory the copy then drops (an adapter whose
  // adapter_config.json is gone: its original is not copied) are not counted.
  Source s;
  auto a = s.Add("ad", "1", true, /*sums=*/true);
  REQUIRE(s.reg->WithDb([&](sql::Db* db) -> Status {  // an adapter: its original needs its config beside it
    MMS_ASSIGN_OR_RETURN(auto st, db->Prepare("UPDATE versions SET base_id = id"));
    return st.Run();
  }).ok());
  Write(DirName(a.artifact_path) + "/adapter_config.json", "{}");
  const std::string b1 = s.dir / "b1";
  REQUIRE(CopyDataDir(s.To(b1)).ok());
  std::filesystem::remove(DirName(a.artifact_path) + "/adapter_config.json");
  DataDirCopy c = s.To(s.dir / "b2");
  c.link_dest = b1;
  auto rep = CopyDataDir(c);
  REQUIRE_MESSAGE(rep.ok(), rep.status().ToString());
  REQUIRE(rep->sources_missing.size() == 1);
  CHECK(rep->linked_files == 3);  // the packed files; not the original, dropped with its directory
  CHECK_FALSE(FileExists(s.dir / "b2/sources/ad"));
}

TEST_CASE("a version removed while its files are copied: a new snapshot, and the copy holds one commit") {
  Source s;
  s.Add("a", "1");
  s.Add("b", "1");
  s.Add("c", "1");
  DataDirCopy c = s.To(s.dir / "backup");
  int removed = 0;
  std::vector<std::string> lines;
  c.progress = [&](const std::string& line) {
    lines.push_back(line);
    // While a:1 is copied, another writer removes b:1 (row, then files),
    // as mms model rm --force does.
    if (line == "copying the packed files of a:1" && removed++ == 0) {
      auto gone = s.reg->Remove(Ref{Ref::Kind::kVersion, "b", "1", ""}, /*force=*/true);
      REQUIRE(gone.ok());
      std::filesystem::remove_all(gone->packed_dir);
    }
  };
  auto rep = CopyDataDir(c);
  REQUIRE_MESSAGE(rep.ok(), rep.status().ToString());
  CHECK(rep->snapshots == 2);
  CHECK(rep->versions == 2);
  CHECK(rep->problems.empty());
  auto copy = OpenCopy(s.dir / "backup/registry.db");
  std::vector<std::string> refs;
  auto listed = copy->List();
  REQUIRE(listed.ok());
  for (const VersionRecord& v : *listed) refs.push_back(v.ref());
  CHECK(refs == std::vector<std::string>{"a:1", "c:1"});
  // a:1 was copied once, under its one name; nothing of b:1 is left.
  CHECK(std::count(lines.begin(), lines.end(), "copying the packed files of a:1") == 1);
  CHECK(FileExists(s.dir / "backup/artifacts/a/1-abc/weights.safetensors"));
  CHECK_FALSE(FileExists(s.dir / "backup/artifacts/a/1-abc-2"));
  CHECK_FALSE(FileExists(s.dir / "backup/artifacts/b"));
  CHECK_FALSE(FileExists(s.dir / "backup/sources/b"));
}

TEST_CASE("files missing from the source: a packed dir is a problem, an original is only noted") {
  Source s;
  auto a = s.Add("a", "1");
  auto b = s.Add("b", "1");
  auto old = s.Add("old", "1", /*packed=*/false);
  std::filesystem::remove_all(a.packed_dir);          // damage in the data dir
  std::filesystem::remove(b.artifact_path);           // the user deleted the original
  Write(old.artifact_path, "changed since registration");  // and overwrote another
  auto rep = CopyDataDir(s.To(s.dir / "backup"));
  REQUIRE_MESSAGE(rep.ok(), rep.status().ToString());
  // The same source twice: no point in more snapshots.
  CHECK(rep->snapshots == 2);
  REQUIRE(rep->problems.size() == 2);
  CHECK(rep->problems[0].find("a:1: its packed files") != std::string::npos);
  CHECK(rep->problems[1].find("old:1 has no packed files and its only artifact") != std::string::npos);
  CHECK(rep->problems[1].find("changed since registration") != std::string::npos);
  REQUIRE(rep->sources_missing.size() == 2);
  CHECK(rep->sources_missing[0] == "b:1: its original artifact " + b.artifact_path + " is gone");
  // The copy is written all the same: the rest of it is sound.
  auto copy = OpenCopy(s.dir / "backup/registry.db");
  auto cb = copy->Resolve(Ref{Ref::Kind::kVersion, "b", "1", ""});
  REQUIRE(cb.ok());
  CHECK(cb->artifact_path == b.artifact_path);  // kept: nothing to point at
  CHECK(cb->packed_dir == s.dir / "backup/artifacts/b/1-abc");
  CHECK_FALSE(FileExists(s.dir / "backup/sources/old"));
}

TEST_CASE("an interrupted copy is removed by the next one, and a foreign file is refused") {
  Source s;
  s.Add("a", "1");
  const std::string dest = s.dir / "backup";
  // What a copy killed midway leaves: its marker (listing what it created), its registry's .partial and some files.
  Write(dest + "/registry.db.copying", dest + "\n" + dest + "/artifacts/a/1-abc\n" + dest + "/artifacts/zz/9-abc\n");
  Write(dest + "/registry.db.partial", "half a registry");
  Write(dest + "/artifacts/a/1-abc/weights.safetensors", "half");
  Write(dest + "/artifacts/zz/9-abc/weights.safetensors", "of a version gone since");
  CHECK(InterruptedCopy(dest + "/registry.db"));
  auto rep = CopyDataDir(s.To(dest));
  REQUIRE_MESSAGE(rep.ok(), rep.status().ToString());
  CHECK_FALSE(InterruptedCopy(dest + "/registry.db"));
  CHECK_FALSE(FileExists(dest + "/registry.db.copying"));
  CHECK(Slurp(dest + "/artifacts/a/1-abc/weights.safetensors") == "weights a:1");
  CHECK_FALSE(FileExists(dest + "/artifacts/zz"));
  // Published in rollback-journal mode (a backup on read-only media opens without a -shm file).
  CHECK(Slurp(dest + "/registry.db").substr(18, 2) == std::string("\x01\x01", 2));
  // It names its own files relative to itself (so it can be moved), and the
  // original outside it as it was.
  {
    auto moved = OpenCopy(dest + "/registry.db");
    std::string stored;
    REQUIRE(moved->WithDb([&](sql::Db* db) -> Status {
      MMS_ASSIGN_OR_RETURN(auto st, db->Prepare("SELECT packed_dir || ',' || sample_input FROM versions"));
      MMS_ASSIGN_OR_RETURN(bool row, st.Step());
      if (row) stored = st.Text(0);
      return Status::Ok();
    }).ok());
    CHECK(stored == "artifacts/a/1-abc,artifacts/a/1-abc/sample.json");
  }

  // An interrupted copy's cleanup removes what its marker lists, nothing
  // else: files put there since (another registry's) stay, and are refused.
  const std::string again = s.dir / "again";
  Write(again + "/registry.db.copying", again + "\n" + again + "/artifacts/a/1-abc\n/etc\n" + again + "/../x\n");
  Write(again + "/artifacts/a/1-abc/weights.safetensors", "half");
  Write(again + "/artifacts/mine/7-def/weights.safetensors", "someone's");
  auto refused = CopyDataDir(s.To(again));
  CHECK(refused.status().code() == Code::kAlreadyExists);
  CHECK_FALSE(FileExists(again + "/artifacts/a"));
  CHECK(Slurp(again + "/artifacts/mine/7-def/weights.safetensors") == "someone's");
  CHECK_FALSE(FileExists(again + "/registry.db"));
  CHECK_FALSE(FileExists(again + "/registry.db.copying"));  // it wrote nothing: no marker left
  // A marker of a copy into another data dir (one [registry] path for several): refused, nothing removed.
  const std::string other_dir = s.dir / "other-dir";
  Write(other_dir + "/registry.db.copying", s.dir / "elsewhere\n");
  Write(other_dir + "/artifacts/keep/1-x/w", "kept");
  auto elsewhere = CopyDataDir(s.To(other_dir));
  CHECK(elsewhere.status().code() == Code::kFailedPrecondition);
  CHECK(elsewhere.status().message().find("marks an unfinished copy into " + s.dir / "elsewhere") != std::string::npos);
  CHECK(Slurp(other_dir + "/artifacts/keep/1-x/w") == "kept");

  // Not a registry of ours: refused, nothing published.
  Write(s.dir / "foreign.db", "SQLite format 3? no");
  DataDirCopy c = s.To(s.dir / "other");
  c.src_db = s.dir / "foreign.db";
  auto bad = CopyDataDir(c);
  CHECK_FALSE(bad.ok());
  CHECK(bad.status().code() == Code::kCorrupt);
  CHECK_FALSE(FileExists(s.dir / "other/registry.db"));
  CHECK_FALSE(FileExists(s.dir / "other/registry.db.copying"));  // failed before creating anything: no marker
  c.src_db = s.dir / "nothing.db";
  CHECK(CopyDataDir(c).status().code() == Code::kNotFound);
}
