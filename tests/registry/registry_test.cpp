#include <doctest/doctest.h>
#include <sqlite3.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <thread>

#include "core/clock.h"
#include "core/paths.h"
#include "registry/registry.h"
#include "registry/schema.h"
#include "registry/sqlite.h"
#include "support/process.h"

using namespace mms;

namespace {
struct Fixture {
  testing::TempDir dir;
  FakeClock clock;
  std::unique_ptr<Registry> reg;
  Fixture() { reg = Open(); }
  std::unique_ptr<Registry> Open(std::vector<std::string> roots = {}) {
    Registry::Options o;
    o.path = dir / "registry.db";
    o.clock = &clock;
    o.actor = "tester";
    o.allowed_roots = std::move(roots);
    auto r = Registry::Open(o);
    REQUIRE(r.ok());
    return std::move(r).value();
  }
  VersionRecord Add(const std::string& model, const std::string& version) {
    NewVersion v;
    v.model = model;
    v.version = version;
    v.artifact_path = "/models/" + model + "/" + version + "/model.pt";
    v.sha256 = std::string(64, 'a');
    v.size_bytes = 1000;
    auto r = reg->Register(v);
    REQUIRE(r.ok());
    return *r;
  }
};

void RawExec(const std::string& path, const std::string& sql) {
  sqlite3* db;
  REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
  char* err = nullptr;
  int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err);
  INFO((err ? err : ""));
  CHECK(rc == SQLITE_OK);
  sqlite3_free(err);
  sqlite3_close(db);
}

// A registry file at `version` of the schema, as an older mms left it.
void RawSchema(const std::string& path, int version) {
  const auto& migrations = RegistryMigrations();
  std::string sql;
  for (int i = 0; i < version; ++i) sql += migrations[static_cast<size_t>(i)];
  sql += "PRAGMA user_version=" + std::to_string(version) + "; PRAGMA application_id=" +
         std::to_string(kRegistryApplicationId) + ";";
  RawExec(path, sql);
}

// Every cell of a query's rows, row by row, as stored (no Registry between).
std::vector<std::string> Cells(const std::string& path, const std::string& sql) {
  std::vector<std::string> out;
  sqlite3* h;
  REQUIRE(sqlite3_open(path.c_str(), &h) == SQLITE_OK);
  sqlite3_stmt* st;
  REQUIRE(sqlite3_prepare_v2(h, sql.c_str(), -1, &st, nullptr) == SQLITE_OK);
  while (sqlite3_step(st) == SQLITE_ROW)
    for (int c = 0; c < sqlite3_column_count(st); ++c) {
      const unsigned char* text = sqlite3_column_text(st, c);
      out.emplace_back(text ? reinterpret_cast<const char*>(text) : "");
    }
  sqlite3_finalize(st);
  sqlite3_close(h);
  return out;
}

// A registry in the default layout: <dir>/registry.db beside <dir>/artifacts.
std::unique_ptr<Registry> OpenInDataDir(const std::string& dir) {
  Registry::Options o;
  o.path = JoinPath(dir, "registry.db");
  o.artifacts_dir = JoinPath(dir, "artifacts");
  auto r = Registry::Open(o);
  REQUIRE_MESSAGE(r.ok(), r.status().ToString());
  return std::move(r).value();
}
}  // namespace

TEST_CASE("names, versions and references follow the rules") {
  CHECK(ValidateName("rec-eu_west.2").ok());
  CHECK(ValidateName("0abc").ok());
  CHECK_FALSE(ValidateName("").ok());
  CHECK_FALSE(ValidateName("Rec").ok());
  CHECK_FALSE(ValidateName("-rec").ok());
  CHECK_FALSE(ValidateName("rec eu").ok());
  CHECK_FALSE(ValidateName(std::string(64, 'a')).ok());
  CHECK(ValidateName(std::string(63, 'a')).ok());
  CHECK(ValidateName("x", "model name").ok());
  CHECK(ValidateName("a/b").message().find("[a-z0-9][a-z0-9._-]{0,62}") != std::string::npos);

  CHECK(ValidateVersion("3").ok());
  CHECK(ValidateVersion("1.2.0").ok());
  CHECK(ValidateVersion("0.1").ok());
  for (const char* bad : {"", "0", "0.0", "01", "1.", ".1", "1..2", "v1", "-1", "1.2a", " 1", "1234567890"})
    CHECK_MESSAGE(!ValidateVersion(bad).ok(), bad);
  // Whitespace is not part of the grammar anywhere, not even inside a part.
  for (std::string bad : {"1. 2", "1 .2", "1 . 2", "1.\t2", "1\n.2", "1 ", "1.2 ", "+1", "1,2", "1_2"})
    CHECK_MESSAGE(!ValidateVersion(bad).ok(), "'" << bad << "'");
  CHECK_FALSE(ParseRef("rec:1. 2").ok());
  CHECK(CompareVersions("1.10", "1.9") > 0);
  CHECK(CompareVersions("2", "10") < 0);
  CHECK(CompareVersions("1", "1.0") < 0);

  auto r = ParseRef("rec:3");
  REQUIRE(r.ok());
  CHECK(r->kind == Ref::Kind::kVersion);
  CHECK(r->version == "3");
  CHECK(ParseRef("rec@champion")->kind == Ref::Kind::kAlias);
  CHECK(ParseRef("rec")->kind == Ref::Kind::kName);
  CHECK_FALSE(ParseRef("rec:x").ok());
  CHECK_FALSE(ParseRef("rec@Big").ok());
  CHECK_FALSE(ParseRef("rec:1@a").ok());
  CHECK_FALSE(ParseRef("").ok());
  CHECK(ParseRef("rec@champion")->ToString() == "rec@champion");
}

TEST_CASE("tenant ids: 1-128 characters, printable, any script, nothing invisible") {
  for (const char* ok : {"acme", "Acme Corp / EU-1", "\xc4\x80", "dash\xe2\x80\x94", "\xf0\x9f\x98\x80", "\xc3\xa9" "cole", "\xe6\x9d\xb1\xe4\xba\xac", "a\xc2\xa0" "b"})
    CHECK_MESSAGE(ValidateTenant(ok).ok(), ok);
  CHECK(ValidateTenant(std::string(128, 'x')).ok());
  std::string e128;
  for (int i = 0; i < 128; ++i) e128 += "\xc3\xa9";  // 128 characters in 256 bytes
  CHECK(ValidateTenant(e128).ok());
  CHECK(ValidateTenant(e128 + "\xc3\xa9").message().find("1-128 characters (got 129)") != std::string::npos);
  CHECK_FALSE(ValidateTenant("").ok());
  CHECK_FALSE(ValidateTenant(std::string(129, 'x')).ok());
  for (const char* bad : {"a\nb", "a\tb", "esc\x1b[31m", "del\x7f", "csi\xc2\x9b" "31m", "nel\xc2\x85",
                          "rlo\xe2\x80\xae", "lri\xe2\x81\xa6", "bare\x9b" "31m", "cut\xe2\x80", "lone\xc3",
                          // invisible: line and paragraph separators, direction marks, zero-width, BOM
                          "ls\xe2\x80\xa8", "ps\xe2\x80\xa9", "lrm\xe2\x80\x8e", "rlm\xe2\x80\x8f", "alm\xd8\x9c",
                          "zw\xe2\x80\x8b" "sp", "bom\xef\xbb\xbf", "shy\xc2\xad",
                          "acme\xf3\xa0\x81\x81", "cgj\xcd\x8f", "\xe3\x85\xa4",  // a tag, the CGJ, a Hangul filler
                          "acme\xe2\x80\xaf", "\xe1\x9a\x80" "acme",                  // narrow no-break, Ogham space
                          // not UTF-8: an encoded surrogate, an overlong '/', past U+10FFFF
                          "a\xed\xa0\x80" "b", "\xc0\xaf", "\xe0\x80\xaf", "\xf4\x90\x80\x80",
                          // spaces at either end, or nothing but
                          " ", " acme", "acme ", "acme\xc2\xa0"})
    CHECK_MESSAGE(ValidateTenant(bad).code() == Code::kInvalidArgument, bad);
  CHECK(ValidateTenant("ab\xe2\x80\x8f").message().find("U+200F at character 3") != std::string::npos);
}

TEST_CASE("a name resolves to production, else the highest non-archived version") {
  Fixture f;
  f.Add("rec", "1");
  f.Add("rec", "2");
  f.Add("rec", "10");
  CHECK(f.reg->Resolve("rec")->version == "10");
  REQUIRE(f.reg->SetStage(*ParseRef("rec:2"), Stage::kProduction).ok());
  CHECK(f.reg->Resolve("rec")->version == "2");
  REQUIRE(f.reg->SetStage(*ParseRef("rec:10"), Stage::kArchived).ok());
  REQUIRE(f.reg->SetStage(*ParseRef("rec:2"), Stage::kNone).ok());
  CHECK(f.reg->Resolve("rec")->version == "2");  // 10 is archived
  REQUIRE(f.reg->SetAlias("rec", "champion", "1").ok());
  CHECK(f.reg->Resolve("rec@champion")->version == "1");
  auto missing = f.reg->Resolve("rec:7");
  CHECK(missing.status().code() == Code::kNotFound);
  CHECK(missing.status().message() == "unknown version rec:7; rec has versions 1, 2, 10");
  CHECK(f.reg->Resolve("rec@nope").status().message() == "unknown alias rec@nope; rec has aliases champion");
  CHECK(f.reg->Resolve("rac").status().message() == "unknown model 'rac'; did you mean 'rec'?");
  REQUIRE(f.reg->AddPin(*ParseRef("rec")).ok());  // pins what the name serves
  // Every version archived: the bare name serves none (a version still resolves).
  for (const char* v : {"rec:1", "rec:2"}) REQUIRE(f.reg->SetStage(*ParseRef(v), Stage::kArchived).ok());
  auto none = f.reg->Resolve("rec");
  CHECK(none.status().code() == Code::kNotFound);
  CHECK(none.status().message().find("every version of rec is archived") != std::string::npos);
  CHECK(none.status().message().find("mms model stage rec:10 production") != std::string::npos);
  CHECK(f.reg->Resolve("rec:2")->version == "2");
  // The pin of the bare name then covers no version: each can still be removed.
  CHECK_MESSAGE(f.reg->Remove(*ParseRef("rec:1"), false).ok(), f.reg->Remove(*ParseRef("rec:1"), false).status().ToString());
}

TEST_CASE("one production version per model, promotion archives the previous one, audited") {
  Fixture f;
  f.Add("rec", "1");
  f.Add("rec", "2");
  REQUIRE(f.reg->SetStage(*ParseRef("rec:1"), Stage::kProduction).ok());
  f.clock.AdvanceSeconds(5);
  REQUIRE(f.reg->SetStage(*ParseRef("rec:2"), Stage::kProduction, "better auc").ok());
  auto prod = f.reg->List("rec", Stage::kProduction);
  REQUIRE(prod->size() == 1);
  CHECK(prod->front().version == "2");
  CHECK(f.reg->Resolve("rec:1")->stage == Stage::kArchived);
  auto h = f.reg->History(*ParseRef("rec"));
  REQUIRE(h.ok());
  REQUIRE(h->size() == 5);
  CHECK((*h)[3].action == "stage");
  CHECK((*h)[3].version == "1");
  CHECK((*h)[3].from == "production");
  CHECK((*h)[3].to == "archived");
  CHECK((*h)[3].detail == "replaced in production by rec:2");
  CHECK((*h)[4].from == "none");
  CHECK((*h)[4].to == "production");
  CHECK((*h)[4].detail == "better auc");
  CHECK((*h)[4].actor == "tester");
  CHECK((*h)[4].ts_ms == f.clock.UnixMillis());
  auto only2 = f.reg->History(*ParseRef("rec:2"));
  CHECK(only2->size() == 2);
  // A version that never was is not an empty history; a removed one keeps its own.
  auto never = f.reg->History(*ParseRef("rec:9"));
  CHECK(never.status().code() == Code::kNotFound);
  CHECK(never.status().message().find("rec has no version 9 and never had one") != std::string::npos);
  REQUIRE(f.reg->Remove(*ParseRef("rec:1"), false).ok());
  auto removed = f.reg->History(*ParseRef("rec:1"));
  REQUIRE(removed.ok());
  CHECK(removed->back().action == "rm");
}

TEST_CASE("duplicates, bad names and paths are refused") {
  Fixture f;
  f.Add("rec", "1");
  NewVersion v;
  v.model = "rec";
  v.version = "1";
  v.artifact_path = "/x.pt";
  CHECK(f.reg->Register(v).status().code() == Code::kAlreadyExists);
  v.version = "2";
  v.artifact_path = "relative.pt";
  CHECK(f.reg->Register(v).status().code() == Code::kInvalidArgument);
  v.model = "Rec";
  v.artifact_path = "/x.pt";
  CHECK(f.reg->Register(v).status().code() == Code::kInvalidArgument);
  auto roots = f.Open({f.dir / "models"});
  v.model = "rec";
  v.artifact_path = "/elsewhere/x.pt";
  auto r = roots->Register(v);
  CHECK(r.status().code() == Code::kInvalidArgument);
  CHECK(r.status().message().find("outside [registry] allowed_roots") != std::string::npos);
  v.artifact_path = f.dir / "models/x.pt";
  CHECK(roots->Register(v).ok());
  v.version = "3";
  v.artifact_path = f.dir / "models-evil/x.pt";  // prefix of a root, not inside it
  CHECK(roots->Register(v).status().code() == Code::kInvalidArgument);
}

TEST_CASE("aliases set, move and go, each audited") {
  Fixture f;
  f.Add("rec", "1");
  f.Add("rec", "2");
  REQUIRE(f.reg->SetAlias("rec", "champion", "1").ok());
  REQUIRE(f.reg->SetAlias("rec", "champion", "2").ok());
  CHECK(f.reg->Resolve("rec@champion")->version == "2");
  CHECK(f.reg->Resolve("rec:2")->aliases == std::vector<std::string>{"champion"});
  CHECK(f.reg->SetAlias("rec", "champion", "9").code() == Code::kNotFound);
  CHECK(f.reg->SetAlias("rec", "Bad Alias", "1").code() == Code::kInvalidArgument);
  REQUIRE(f.reg->RemoveAlias("rec", "champion").ok());
  CHECK(f.reg->RemoveAlias("rec", "champion").code() == Code::kNotFound);
  auto h = f.reg->History(*ParseRef("rec"));
  int alias_events = 0;
  for (const auto& e : *h) alias_events += e.action.rfind("alias", 0) == 0;
  CHECK(alias_events == 3);
}

TEST_CASE("rm is refused while pinned or in production, unless forced, labels and aliases go with it") {
  Fixture f;
  f.Add("rec", "1");
  f.Add("rec", "2");
  REQUIRE(f.reg->AddPin(*ParseRef("rec:1")).ok());
  REQUIRE(f.reg->AddPin(*ParseRef("rec:1")).ok());  // idempotent
  auto r = f.reg->Remove(*ParseRef("rec:1"), false);
  CHECK(r.status().code() == Code::kInUse);
  CHECK(r.status().message().find("pinned") != std::string::npos);
  REQUIRE(f.reg->RemovePin(*ParseRef("rec:1")).ok());
  Status unpinned = f.reg->RemovePin(*ParseRef("rec:1"));
  CHECK(unpinned.code() == Code::kNotFound);
  // It points to commands that exist (there is no `mms pin --list`).
  CHECK(unpinned.message().find("--list") == std::string::npos);
  CHECK(unpinned.message().find("mms pool") != std::string::npos);
  CHECK(unpinned.message().find("mms model history rec") != std::string::npos);
  REQUIRE(f.reg->SetStage(*ParseRef("rec:1"), Stage::kProduction).ok());
  CHECK(f.reg->Remove(*ParseRef("rec:1"), false).status().code() == Code::kInUse);
  // A model-level pin protects whatever the name resolves to.
  REQUIRE(f.reg->SetStage(*ParseRef("rec:2"), Stage::kProduction).ok());
  REQUIRE(f.reg->AddPin(*ParseRef("rec")).ok());
  CHECK(f.reg->Remove(*ParseRef("rec:2"), false).status().code() == Code::kInUse);
  CHECK(f.reg->Remove(*ParseRef("rec:1"), false).ok());  // archived now, not pinned
  REQUIRE(f.reg->SetAlias("rec", "champion", "2").ok());
  f.Add("rec", "3");
  REQUIRE(f.reg->StartShadow("rec", *ParseRef("rec:3"), 1.0, 100, 1e-5, 0).ok());
  auto forced = f.reg->Remove(*ParseRef("rec:2"), true);
  REQUIRE(forced.ok());
  CHECK(f.reg->Resolve("rec@champion").status().code() == Code::kNotFound);
  auto h = f.reg->History(*ParseRef("rec"));
  CHECK(h->back().action == "rm");
  CHECK(h->back().detail.find("forced while in use") == 0);
  // Everything a removal takes with it is in the history: the alias, and
  // the shadow run of a removed candidate.
  CHECK((*h)[h->size() - 2].action == "alias-rm");
  CHECK((*h)[h->size() - 2].detail.find("champion") != std::string::npos);
  REQUIRE(f.reg->Remove(*ParseRef("rec:3"), true).ok());
  h = f.reg->History(*ParseRef("rec"));
  bool shadow_stop = false;
  for (const auto& e : *h) shadow_stop = shadow_stop || (e.action == "shadow-stop" && e.version == "3");
  CHECK(shadow_stop);
  CHECK(f.reg->GetShadow("rec")->state == "stopped");
}

TEST_CASE("a model's rate limit and pin by name go with its last version, audited, others stay") {
  Fixture f;
  f.Add("rec", "1");
  f.Add("rec", "2");
  f.Add("other", "1");
  REQUIRE(f.reg->SetLimit({"model", "rec", 5, 10}).ok());
  REQUIRE(f.reg->SetLimit({"model", "other", 7, 7}).ok());
  REQUIRE(f.reg->SetLimit({"tenant", "rec", 9, 9}).ok());  // a tenant that happens to share the name
  auto keys = [&] {
    std::vector<std::string> out;
    auto limits = f.reg->Limits();
    REQUIRE(limits.ok());
    for (const auto& l : *limits) out.push_back(l.kind + " " + l.key);
    return out;
  };
  REQUIRE(f.reg->Remove(*ParseRef("rec:1"), false).ok());
  CHECK(keys() == std::vector<std::string>{"model other", "model rec", "tenant rec"});  // rec:2 is left
  // Its pin by name goes too (a later, unrelated model of that name was
  // pinned by it, silently); another model's stays.
  REQUIRE(f.reg->AddPin(*ParseRef("rec")).ok());
  REQUIRE(f.reg->AddPin(*ParseRef("other")).ok());
  REQUIRE(f.reg->Remove(*ParseRef("rec:2"), true).ok());
  CHECK(keys() == std::vector<std::string>{"model other", "tenant rec"});
  auto h = f.reg->History(*ParseRef("rec"));
  REQUIRE(h.ok());
  REQUIRE(h->size() >= 3);
  CHECK((*h)[h->size() - 3].action == "limit-rm");
  CHECK((*h)[h->size() - 3].detail.find("its last version was removed") != std::string::npos);
  CHECK((*h)[h->size() - 3].from == "5 qps, burst 10");  // what was removed, not ''
  {  // Replaced and removed by hand: the audit says from what.
    f.Add("lim", "1");
    REQUIRE(f.reg->SetLimit({"model", "lim", 1e9, 1e9}).ok());
    REQUIRE(f.reg->SetLimit({"model", "lim", 1e-6, 1}).ok());
    REQUIRE(f.reg->RemoveLimit("model", "lim").ok());
    auto lh = f.reg->History(*ParseRef("lim"));
    REQUIRE(lh.ok());
    REQUIRE(lh->size() >= 3);
    const auto& set = (*lh)[lh->size() - 2];
    const auto& rm = (*lh)[lh->size() - 1];
    CHECK(set.action == "limit-set");
    CHECK(set.from == "1e+09 qps, burst 1e+09");
    CHECK(set.to == "1e-06 qps, burst 1");
    CHECK(rm.action == "limit-rm");
    CHECK(rm.from == "1e-06 qps, burst 1");
  }
  CHECK((*h)[h->size() - 2].action == "unpin");
  CHECK((*h)[h->size() - 2].detail == "its last version was removed");
  // A new model of that name starts without the old limit or pin.
  f.Add("rec", "1");
  CHECK(keys() == std::vector<std::string>{"model other", "tenant rec"});
  auto pins = f.reg->Pins();
  REQUIRE(pins.ok());
  REQUIRE(pins->size() == 1);
  CHECK(pins->front().model == "other");
}

TEST_CASE("the audit log is append-only") {
  Fixture f;
  f.Add("rec", "1");
  f.reg.reset();
  sqlite3* db;
  REQUIRE(sqlite3_open((f.dir / "registry.db").c_str(), &db) == SQLITE_OK);
  CHECK(sqlite3_exec(db, "UPDATE audit SET actor = 'mallory'", nullptr, nullptr, nullptr) != SQLITE_OK);
  CHECK(sqlite3_exec(db, "DELETE FROM audit", nullptr, nullptr, nullptr) != SQLITE_OK);
  sqlite3_close(db);
}

TEST_CASE("labels and metadata round-trip") {
  Fixture f;
  NewVersion v;
  v.model = "rec";
  v.version = "1.2.0";
  v.artifact_path = "/m.pt";
  v.labels = {{"team", "ranking"}, {"region", "eu"}};
  v.metrics = {{"auc", 0.91}};
  v.sla_p99_ms = 25.0;
  v.device_bytes = 123;
  v.data_fingerprint = "sha:abc";
  v.inputs = {{"ids", DType::kInt64, std::vector<int64_t>{1, 4}}, {"dense", std::nullopt, std::nullopt}};
  REQUIRE(f.reg->Register(v).ok());
  auto r = f.reg->Resolve("rec:1.2.0");
  REQUIRE(r.ok());
  CHECK(r->labels.at("team") == "ranking");
  CHECK(r->metrics["auc"] == 0.91);
  CHECK(*r->sla_p99_ms == 25.0);
  CHECK(r->device_bytes == 123);
  CHECK(r->data_fingerprint == "sha:abc");
  REQUIRE(r->inputs.size() == 2);
  CHECK(*r->inputs[0].dtype == DType::kInt64);
  CHECK(*r->inputs[0].shape == std::vector<int64_t>{1, 4});
  CHECK_FALSE(r->inputs[1].dtype.has_value());
  auto j = r->ToJson();
  CHECK(j["ref"] == "rec:1.2.0");
  CHECK(j["stage"] == "none");
  CHECK(j["sla_p99_ms"] == 25.0);
}

TEST_CASE("migrations run from empty and from every earlier schema version") {
  const auto& migrations = RegistryMigrations();
  for (size_t from = 0; from <= migrations.size(); ++from) {
    testing::TempDir d;
    std::string path = d / "r.db";
    if (from > 0) {
      RawSchema(path, static_cast<int>(from));
      RawExec(path, "INSERT INTO models (name, created_ms) VALUES ('kept', 1)");
    }
    Registry::Options o;
    o.path = path;
    auto r = Registry::Open(o);
    INFO("from schema " << from);
    REQUIRE(r.ok());
    CHECK((*r)->SchemaVersion().value() == RegistrySchemaVersion());
    if (from > 0) CHECK((*r)->Resolve("kept").status().message() == "model 'kept' has no versions");
    NewVersion v;
    v.model = "m";
    v.version = "1";
    v.artifact_path = "/m.pt";
    CHECK((*r)->Register(v).ok());
  }
}

TEST_CASE("a newer schema, a foreign database and a non-database are refused clearly") {
  testing::TempDir d;
  Registry::Options o;
  {
    o.path = d / "newer.db";
    RawExec(o.path, "PRAGMA application_id=" + std::to_string(kRegistryApplicationId) + "; PRAGMA user_version=999;");
    auto r = Registry::Open(o);
    CHECK(r.status().code() == Code::kFailedPrecondition);
    CHECK(r.status().message().find("schema version 999, newer than this mms") != std::string::npos);
  }
  {
    o.path = d / "foreign.db";
    RawExec(o.path, "CREATE TABLE customers (id INTEGER)");
    auto r = Registry::Open(o);
    CHECK(r.status().code() == Code::kCorrupt);
    CHECK(r.status().message().find("not an mms registry") != std::string::npos);
    // Refused untouched: still in its own journal mode, no -wal beside it.
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open(o.path.c_str(), &db) == SQLITE_OK);
    sqlite3_stmt* st = nullptr;
    REQUIRE(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, nullptr) == SQLITE_OK);
    REQUIRE(sqlite3_step(st) == SQLITE_ROW);
    CHECK(std::string(reinterpret_cast<const char*>(sqlite3_column_text(st, 0))) == "delete");
    sqlite3_finalize(st);
    sqlite3_close(db);
  }
  {
    o.path = d / "text.db";
    std::ofstream(o.path) << "this is not a database, it is a shopping list: eggs, milk, flour, sugar\n"
                          << std::string(4096, 'x');
    auto r = Registry::Open(o);
    CHECK(r.status().code() == Code::kCorrupt);
    CHECK(r.status().message().find("not an SQLite database") != std::string::npos);
  }
}

TEST_CASE("ReadConsistent: every read inside sees the same commit, another connection's writes included") {
  Fixture f;
  f.Add("x", "1");
  auto other = f.Open();
  size_t first = 0, second = 0;
  Status st = f.reg->ReadConsistent([&]() -> Status {
    MMS_ASSIGN_OR_RETURN(auto a, f.reg->List());
    first = a.size();
    NewVersion v;  // committed by another connection between our two reads
    v.model = "x";
    v.version = "2";
    v.artifact_path = "/x2.pt";
    MMS_RETURN_IF_ERROR(other->Register(v).status());
    MMS_ASSIGN_OR_RETURN(auto b, f.reg->List());
    second = b.size();
    return Status::Ok();
  });
  REQUIRE(st.ok());
  CHECK(first == 1);
  CHECK(second == 1);  // the snapshot of the first read
  CHECK(f.reg->List().value().size() == 2);  // and the commit is there afterwards
}

TEST_CASE("another connection's commit changes the data version") {
  Fixture f;
  auto other = f.Open();
  int64_t v0 = f.reg->DataVersion().value();
  CHECK(f.reg->DataVersion().value() == v0);
  NewVersion v;
  v.model = "x";
  v.version = "1";
  v.artifact_path = "/x.pt";
  REQUIRE(other->Register(v).ok());
  int64_t v1 = f.reg->DataVersion().value();
  CHECK(v1 != v0);
  REQUIRE(f.reg->SetStage(*ParseRef("x:1"), Stage::kShadow).ok());  // our own write counts too
  CHECK(f.reg->DataVersion().value() != v1);
}

TEST_CASE("concurrent writers through separate connections all succeed") {
  Fixture f;
  std::vector<std::thread> ts;
  std::atomic<int> ok{0};
  for (int t = 0; t < 4; ++t)
    ts.emplace_back([&, t] {
      auto r = f.Open();
      for (int i = 0; i < 10; ++i) {
        NewVersion v;
        v.model = "m" + std::to_string(t);
        v.version = std::to_string(i + 1);
        v.artifact_path = "/m.pt";
        if (r->Register(v).ok()) ++ok;
      }
    });
  for (auto& t : ts) t.join();
  CHECK(ok == 40);
  CHECK(f.reg->List()->size() == 40);
}

TEST_CASE("a removed version's id is never given to another version") {
  // The daemon keys loaded models by version id: a reused id would serve
  // the removed version's weights under the new version's name.
  Fixture f;
  f.Add("rec", "1");
  int64_t newest = f.Add("rec", "2").id;
  REQUIRE(f.reg->Remove(*ParseRef("rec:2"), false).ok());
  int64_t next = f.Add("rec", "3").id;
  CHECK(next > newest);
  REQUIRE(f.reg->Remove(*ParseRef("rec:3"), false).ok());
  REQUIRE(f.reg->Remove(*ParseRef("rec:1"), false).ok());
  // Even with every version gone, and from another connection.
  auto other = f.Open();
  NewVersion v;
  v.model = "other";
  v.version = "1";
  v.artifact_path = "/models/other.pt";
  auto r = other->Register(v);
  REQUIRE(r.ok());
  CHECK(r->id > next);
}

TEST_CASE("an older registry upgraded to never reuse ids starts above its highest id") {
  testing::TempDir d;
  std::string path = d / "r.db";
  RawSchema(path, 5);  // before the id floor (6)
  RawExec(path,
          "INSERT INTO models (id, name, created_ms) VALUES (1, 'm', 1);"
          "INSERT INTO versions (id, model_id, version, sort_key, artifact_path, size_bytes, sha256, created_ms, "
          "created_by) VALUES (7, 1, '1', '1', '/m.pt', 1, '', 1, 't');");
  Registry::Options o;
  o.path = path;
  auto r = Registry::Open(o);
  REQUIRE(r.ok());
  REQUIRE((*r)->Remove(*ParseRef("m:1"), false).ok());
  NewVersion v;
  v.model = "m";
  v.version = "2";
  v.artifact_path = "/m.pt";
  auto added = (*r)->Register(v);
  REQUIRE(added.ok());
  CHECK(added->id == 8);
}

TEST_CASE("a version's batching delay is checked by the registry, in the range of [scheduler] max_queue_delay") {
  Fixture f;
  NewVersion v;
  v.model = "m";
  v.artifact_path = "/m.pt";
  v.version = "1";
  v.max_queue_delay_us = kMaxQueueDelayUsMax;  // 10 s, the most the config allows
  CHECK(f.reg->Register(v).ok());
  // The daemon multiplies by 1000 (ns): huge values overflowed; any writer is checked.
  for (int64_t bad : {kMaxQueueDelayUsMax + 1, int64_t{9'300'000'000'000'000}, int64_t{-1}}) {
    v.version = "2";
    v.max_queue_delay_us = bad;
    auto r = f.reg->Register(v);
    INFO(bad);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == Code::kInvalidArgument);
    CHECK(r.status().message().find("max_queue_delay") != std::string::npos);
  }
  v.max_queue_delay_us = 0;
  v.max_batch_size = -1;
  CHECK(f.reg->Register(v).status().code() == Code::kInvalidArgument);
  CHECK_FALSE(f.reg->Resolve(*ParseRef("m:2")).ok());
}

TEST_CASE("mms model batching: a version's batching changes in the registry, audited, checked like registration's") {
  Fixture f;
  NewVersion v;
  v.model = "m";
  v.artifact_path = "/m.pt";
  v.version = "1";
  v.sha256 = "aa";
  v.sample_input = "/s.json";
  auto checked = f.reg->Register(v);
  REQUIRE(checked.ok());
  const Ref ref = *ParseRef("m:1");
  auto on = f.reg->SetBatching(*checked, 16, 2000);
  REQUIRE(on.ok());
  CHECK(on->max_batch_size == 16);
  CHECK(on->max_queue_delay_us == 2000);
  CHECK(f.reg->Resolve(ref)->max_batch_size == 16);
  // The same again changes nothing and is not audited again.
  REQUIRE(f.reg->SetBatching(*checked, 16, 2000).ok());
  REQUIRE(f.reg->SetBatching(*checked, 0, 0).ok());
  auto h = f.reg->History(ref);
  REQUIRE(h.ok());
  std::vector<std::pair<std::string, std::string>> changes;
  for (const auto& e : *h)
    if (e.action == "batching") changes.emplace_back(e.from, e.to);
  REQUIRE(changes.size() == 2);
  CHECK(changes[0] == std::make_pair(std::string("off"), std::string("16 rows, delay 2000 us")));
  CHECK(changes[1] == std::make_pair(std::string("16 rows, delay 2000 us"), std::string("off")));
  // Out of range, as at registration; nothing changes.
  for (auto [rows, us] : std::vector<std::pair<int, int64_t>>{{-1, 0}, {8, -1}, {8, kMaxQueueDelayUsMax + 1}}) {
    auto bad = f.reg->SetBatching(*checked, rows, us);
    INFO(rows << " " << us);
    REQUIRE_FALSE(bad.ok());
    CHECK(bad.status().code() == Code::kInvalidArgument);
  }
  // Checked on one sample, the version repacked meanwhile with another:
  // refused when turning batching on (turning it off needs no check).
  VersionRecord stale = *checked;
  stale.sample_input = "/other.json";
  CHECK(f.reg->SetBatching(stale, 8, 0).status().code() == Code::kConflict);
  CHECK(f.reg->SetBatching(stale, 0, 0).ok());
  // A repack whose check ran for other batching than the version now has is refused.
  REQUIRE(f.reg->SetBatching(*checked, 8, 0).ok());
  auto re = f.reg->SetPackedDir(ref, checked->packed_dir, "/new", "/s2.json", {}, 0);
  CHECK(re.status().code() == Code::kConflict);
  CHECK(f.reg->Resolve(ref)->sample_input == "/s.json");
  // Removed and registered again under the same name meanwhile.
  REQUIRE(f.reg->Remove(ref, true).ok());
  v.sha256 = "bb";
  REQUIRE(f.reg->Register(v).ok());
  CHECK(f.reg->SetBatching(*checked, 8, 0).status().code() == Code::kConflict);
  CHECK(f.reg->Resolve(ref)->max_batch_size == 0);
  // An adapter runs in its base's batches.
  NewVersion a;
  a.model = "lora";
  a.version = "1";
  a.artifact_path = "/lora";
  a.base_id = f.reg->Resolve(ref)->id;
  auto adapter = f.reg->Register(a);
  REQUIRE(adapter.ok());
  auto ad = f.reg->SetBatching(*adapter, 8, 0);
  CHECK(ad.status().code() == Code::kInvalidArgument);
  CHECK(ad.status().message().find("its base version") != std::string::npos);
}

TEST_CASE("a COMMIT that fails ends the transaction, so the connection stays usable") {
  testing::TempDir d;
  auto db = sql::Db::Open(d / "t.db", true, 1000);
  REQUIRE(db.ok());
  // A deferred foreign key is checked at COMMIT, which then fails and (in
  // SQLite) leaves the transaction open.
  REQUIRE((*db)->Exec("PRAGMA foreign_keys = ON;"
                      "CREATE TABLE p (id INTEGER PRIMARY KEY);"
                      "CREATE TABLE c (pid INTEGER REFERENCES p(id) DEFERRABLE INITIALLY DEFERRED);")
              .ok());
  {
    auto tx = sql::Tx::Begin(db->get());
    REQUIRE(tx.ok());
    REQUIRE((*db)->Exec("INSERT INTO c (pid) VALUES (42)").ok());
    CHECK_FALSE(tx->Commit().ok());
  }
  CHECK(sqlite3_get_autocommit((*db)->raw()) != 0);  // not inside a transaction any more
  auto again = sql::Tx::Begin(db->get());
  REQUIRE_MESSAGE(again.ok(), again.status().message());
  REQUIRE((*db)->Exec("INSERT INTO p (id) VALUES (1); INSERT INTO c (pid) VALUES (1)").ok());
  CHECK(again->Commit().ok());
  auto n = (*db)->Prepare("SELECT count(*) FROM c");
  REQUIRE(n.ok());
  REQUIRE(*n->Step());
  CHECK(n->Int(0) == 1);  // the failed transaction's row is gone, the next one's is there
}

TEST_CASE("a registry this user may only read: mmsd is refused, the CLI reads while mmsd has it open, writes say what to do") {
  testing::TempDir d;
  Registry::Options o;
  o.path = d / "r.db";
  // Runs `check` in a child dropped to nobody (chmod does not stop root),
  // with the registry, its WAL files and its directory read-only; `check`
  // returns the child's exit status (0: as expected).
  auto as_nobody = [&](const std::function<int()>& check) {
    pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      ::chmod(d.path().c_str(), 0555);
      ::chmod(o.path.c_str(), 0444);
      for (const char* ext : {"-wal", "-shm"}) ::chmod((o.path + ext).c_str(), 0444);
      if (::getuid() == 0 && (::setgid(65534) != 0 || ::setuid(65534) != 0)) ::_exit(10);
      ::_exit(check());
    }
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    ::chmod(d.path().c_str(), 0700);
    ::chmod(o.path.c_str(), 0644);
    REQUIRE(WIFEXITED(status));
    return WEXITSTATUS(status);
  };
  auto says_what_to_do = [](const Status& st) {
    std::fprintf(stderr, "%s\n", st.ToString().c_str());
    return st.code() == Code::kIo && st.message().find("is read-only for this process") != std::string::npos &&
           st.message().find("Give this user write access") != std::string::npos;
  };
  {
    // A writer in another process, as a running mmsd: its -wal and -shm
    // files exist. (Not in this one: SQLite's state must not cross a fork.)
    int ready[2], stop[2];
    REQUIRE(::pipe(ready) == 0);
    REQUIRE(::pipe(stop) == 0);
    pid_t writer = ::fork();
    REQUIRE(writer >= 0);
    if (writer == 0) {
      ::close(stop[1]);
      auto r = Registry::Open(o);
      char c = r.ok() && (*r)->List("").ok() ? 'y' : 'n';  // a read, as mmsd's polls do
      if (::write(ready[1], &c, 1) != 1) ::_exit(1);
      (void)::read(stop[0], &c, 1);  // until the parent closes its end
      r = Status(Code::kCancelled, "closed");  // a clean close removes the -wal and -shm files
      ::_exit(0);
    }
    ::close(stop[0]);
    char c = 0;
    REQUIRE(::read(ready[0], &c, 1) == 1);
    ::close(ready[0]);
    ::close(ready[1]);
    REQUIRE(c == 'y');
    CHECK(as_nobody([&] {
            Registry::Options w = o;
            w.require_writable = true;  // mmsd
            auto r = Registry::Open(w);
            if (r.ok()) return 11;
            if (r.status().code() != Code::kIo || r.status().message().find("read-only for this user") == std::string::npos)
              return 12;
            auto cli = Registry::Open(o);  // the CLI: reads work
            if (!cli.ok()) {
              std::fprintf(stderr, "%s\n", cli.status().ToString().c_str());
              return 13;
            }
            if (!(*cli)->List("").ok()) return 14;
            NewVersion v;
            v.model = "rec";
            v.version = "1";
            v.artifact_path = "/models/rec/1/model.pt";
            v.sha256 = std::string(64, 'a');
            v.size_bytes = 1000;
            return says_what_to_do((*cli)->Register(v).status()) ? 0 : 15;
          }) == 0);
    ::close(stop[1]);
    int st = 0;
    REQUIRE(::waitpid(writer, &st, 0) == writer);
    CHECK(st == 0);
    CHECK_FALSE(FileExists(o.path + "-wal"));
  }
  // With no writer, WAL mode needs even a reader to write the -shm file.
  CHECK(as_nobody([&] { return says_what_to_do(Registry::Open(o).status()) ? 0 : 16; }) == 0);
}

TEST_CASE("a full disk is an error naming the registry and what to do, not SQLite's bare words") {
  testing::TempDir d;
  auto db = sql::Db::Open(d / "t.db", true, 1000);
  REQUIRE(db.ok());
  // A page cap stands in for the filesystem: SQLite answers SQLITE_FULL alike.
  REQUIRE((*db)->Exec("CREATE TABLE t (b BLOB); PRAGMA max_page_count = 8").ok());
  Status st = (*db)->Exec("INSERT INTO t VALUES (zeroblob(1000000))");
  REQUIRE_FALSE(st.ok());
  CHECK(st.code() == Code::kIo);
  CHECK(st.message().find("registry " + (d / "t.db") + ": the disk is full") != std::string::npos);
  CHECK(st.message().find("nothing was changed") != std::string::npos);
  CHECK(st.message().find("Free space") != std::string::npos);
}

TEST_CASE("a really full filesystem is the disk full too, not an I/O error about the -wal file") {
  // SQLite reports the filesystem running out while it creates the -shm
  // file as SQLITE_IOERR (ENOSPC underneath). Needs a filesystem of its own
  // to fill: a small tmpfs, mounted as root (skipped otherwise).
  testing::TempDir d;
  const std::string mnt = d / "fs";
  std::filesystem::create_directory(mnt);
  if (::geteuid() != 0 || ::mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=512k") != 0) {
    MESSAGE("not root (or no tmpfs): skipped");
    return;
  }
  struct Unmount {
    std::string path;
    ~Unmount() { ::umount2(path.c_str(), MNT_DETACH); }
  } unmount{mnt};
  const std::string path = mnt + "/r.db";
  {
    auto db = sql::Db::Open(path, true, 1000);
    REQUIRE(db.ok());
    REQUIRE((*db)->Exec("PRAGMA journal_mode = WAL; CREATE TABLE t (b BLOB)").ok());
  }  // closed: its -wal and -shm files go
  {  // every byte taken
    std::ofstream fill(mnt + "/filler", std::ios::binary);
    std::string block(4096, 'x');
    while (fill.write(block.data(), static_cast<std::streamsize>(block.size())) && fill.flush()) {
    }
  }
  auto db = sql::Db::Open(path, false, 1000);
  REQUIRE(db.ok());
  Status st = (*db)->Exec("INSERT INTO t VALUES (zeroblob(100000))");
  REQUIRE_FALSE(st.ok());
  CHECK(st.code() == Code::kIo);
  CHECK_MESSAGE(st.message().find("the disk is full") != std::string::npos, st.message());
}

TEST_CASE("paths inside the data dir are stored relative to it, so a moved data dir finds its files") {
  CHECK(StoredPath("/srv/mms", "/srv/mms/artifacts/m/d") == "artifacts/m/d");
  CHECK(StoredPath("/srv/mms", "/srv/mmsx/artifacts/m/d") == "/srv/mmsx/artifacts/m/d");  // a sibling, not inside
  CHECK(StoredPath("/srv/mms", "/srv/mms") == "/srv/mms");
  CHECK(StoredPath("/srv/mms", "/models/m.pt") == "/models/m.pt");
  CHECK(StoredPath("", "/srv/mms/a") == "/srv/mms/a");
  CHECK(ResolvedPath("/data/mms", "artifacts/m/d") == "/data/mms/artifacts/m/d");
  CHECK(ResolvedPath("/data/mms", "/models/m.pt") == "/models/m.pt");
  CHECK(ResolvedPath("/data/mms", "") == "");

  testing::TempDir d;
  const std::string first = d / "first", moved = d / "moved";
  REQUIRE(MakeDirs(first, 0700).ok());
  {
    auto reg = OpenInDataDir(first);
    NewVersion v;
    v.model = "m";
    v.version = "1";
    v.artifact_path = first + "/sources/m.pt";  // an original kept inside the data dir
    v.packed_dir = first + "/artifacts/m/1-abc";
    v.sample_input = v.packed_dir + "/sample.safetensors";
    REQUIRE(reg->Register(v).ok());
    v.version = "2";
    v.artifact_path = "/models/m2.pt";  // outside: absolute
    v.packed_dir = first + "/artifacts/m/2-def";
    v.sample_input = "";
    REQUIRE(reg->Register(v).ok());
    auto r1 = reg->Resolve("m:1");
    REQUIRE(r1.ok());
    CHECK(r1->packed_dir == first + "/artifacts/m/1-abc");  // read back absolute
    // A repack compares and stores the same way.
    auto re = reg->SetPackedDir(*ParseRef("m:1"), r1->packed_dir, first + "/artifacts/m/1-new", "", {}, 0);
    REQUIRE_MESSAGE(re.ok(), re.status().ToString());
  }
  CHECK(Cells(first + "/registry.db", "SELECT artifact_path, packed_dir FROM versions ORDER BY id") ==
        std::vector<std::string>{"sources/m.pt", "artifacts/m/1-new", "/models/m2.pt", "artifacts/m/2-def"});
  std::filesystem::rename(first, moved);
  auto reg = OpenInDataDir(moved);
  auto r1 = reg->Resolve("m:1"), r2 = reg->Resolve("m:2");
  REQUIRE(r1.ok());
  REQUIRE(r2.ok());
  CHECK(r1->artifact_path == moved + "/sources/m.pt");
  CHECK(r1->packed_dir == moved + "/artifacts/m/1-new");
  CHECK(r2->artifact_path == "/models/m2.pt");
  CHECK(r2->packed_dir == moved + "/artifacts/m/2-def");
}

TEST_CASE("a registry of schema 7 has its data dir's absolute paths made relative on upgrade, and others kept") {
  testing::TempDir d;
  const std::string dd = d / "data";
  REQUIRE(MakeDirs(dd, 0700).ok());
  const std::string path = dd + "/registry.db";
  RawSchema(path, 7);
  RawExec(path, "INSERT INTO models (id, name, created_ms) VALUES (1, 'm', 1);"
                "INSERT INTO versions (id, model_id, version, sort_key, artifact_path, size_bytes, sha256, created_ms, "
                "created_by, packed_dir, sample_input) VALUES (1, 1, '1', '1', '/models/m.pt', 1, '', 1, 't', '" +
                    dd + "/artifacts/m/1-abc', '" + dd + "/artifacts/m/1-abc/sample.json');"
                "INSERT INTO versions (id, model_id, version, sort_key, artifact_path, size_bytes, sha256, created_ms, "
                "created_by, packed_dir) VALUES (2, 1, '2', '2', '" + dd + "/sources/m/2/m.pt', 1, '', 1, 't', '" +
                    dd + "x/artifacts/m/2');");
  {
    auto r = OpenInDataDir(dd);
    auto v1 = r->Resolve("m:1");
    REQUIRE(v1.ok());
    CHECK(v1->packed_dir == dd + "/artifacts/m/1-abc");
    CHECK(v1->sample_input == dd + "/artifacts/m/1-abc/sample.json");
  }
  CHECK(Cells(path, "SELECT artifact_path, packed_dir, sample_input FROM versions ORDER BY id") ==
        std::vector<std::string>{"/models/m.pt", "artifacts/m/1-abc", "artifacts/m/1-abc/sample.json",
                                 "sources/m/2/m.pt", dd + "x/artifacts/m/2", ""});
}

TEST_CASE("an mmsd older than schema 8 serving the registry keeps it at schema 7 with absolute paths (upgrade safety)") {
  // An older daemon reads raw paths, and would look for relative ones in
  // its working directory: nothing may be converted or written relative
  // under it. Its lock file (held, without the marker) says it is there.
  testing::TempDir d;
  const std::string dd = d / "data";
  REQUIRE(MakeDirs(dd, 0700).ok());
  const std::string path = dd + "/registry.db";
  RawSchema(path, 7);
  auto add = [&](Registry& reg, const std::string& version) {
    NewVersion v;
    v.model = "m";
    v.version = version;
    v.artifact_path = "/models/m.pt";
    v.packed_dir = dd + "/artifacts/m/" + version + "-abc";
    REQUIRE(reg.Register(v).ok());
  };
  auto stored = [&](const std::string& version) {
    auto cells = Cells(path, "SELECT packed_dir FROM versions WHERE version = '" + version + "'");
    return cells.empty() ? std::string() : cells[0];
  };
  {
    std::ofstream(path + ".mmsd-lock") << "4242\n/run/mms.sock\n";  // an older mmsd's lock file
    int fd = ::open((path + ".mmsd-lock").c_str(), O_RDWR);
    REQUIRE(fd >= 0);
    REQUIRE(::flock(fd, LOCK_EX) == 0);
    auto reg = OpenInDataDir(dd);
    CHECK(reg->SchemaVersion().value() == 7);
    add(*reg, "1");
    CHECK(stored("1") == dd + "/artifacts/m/1-abc");  // absolute: the older daemon reads it
    ::close(fd);
  }
  {
    // A newer mmsd (its lock file says it reads relative paths): schema 8.
    std::ofstream(path + ".mmsd-lock") << "4243\n/run/mms.sock\n" << kRelativePathsMarker << "\n";
    int fd = ::open((path + ".mmsd-lock").c_str(), O_RDWR);
    REQUIRE(::flock(fd, LOCK_EX) == 0);
    auto reg = OpenInDataDir(dd);
    CHECK(reg->SchemaVersion().value() == 8);
    CHECK(stored("1") == "artifacts/m/1-abc");  // converted
    add(*reg, "2");
    CHECK(stored("2") == "artifacts/m/2-abc");
    ::close(fd);
  }
}

TEST_CASE("a registry outside its data dir ([registry] path) keeps absolute paths, and relative ones read from its own directory") {
  testing::TempDir d;
  REQUIRE(MakeDirs(d / "reg", 0700).ok());
  REQUIRE(MakeDirs(d / "data", 0700).ok());
  Registry::Options o;
  o.path = d / "reg/registry.db";
  o.artifacts_dir = d / "data/artifacts";
  auto reg = Registry::Open(o);
  REQUIRE(reg.ok());
  NewVersion v;
  v.model = "m";
  v.version = "1";
  v.artifact_path = "/models/m.pt";
  v.packed_dir = d / "data/artifacts/m/1-abc";
  REQUIRE((*reg)->Register(v).ok());
  // Another opener with another data dir (a --data-dir override) reads the same files.
  Registry::Options other = o;
  other.artifacts_dir = d / "elsewhere/artifacts";
  auto again = Registry::Open(other);
  REQUIRE(again.ok());
  CHECK((*again)->Resolve("m:1")->packed_dir == d / "data/artifacts/m/1-abc");
}

TEST_CASE("a copy written by an older mms (absolute paths) and moved since is converted onto where it is at upgrade") {
  testing::TempDir d;
  const std::string now = d / "moved", then = d / "written-here";
  REQUIRE(MakeDirs(now, 0700).ok());
  const std::string path = now + "/registry.db";
  RawSchema(path, 7);
  RawExec(path, "INSERT INTO models (id, name, created_ms) VALUES (1, 'm', 1);"
                "INSERT INTO versions (id, model_id, version, sort_key, artifact_path, size_bytes, sha256, created_ms, "
                "created_by, packed_dir) VALUES (1, 1, '1', '1', '" + then + "/sources/m/1/m.pt', 1, '', 1, 't', '" +
                    then + "/artifacts/m/1-abc');");
  std::ofstream(now + "/mms-copy.json") << "{\"root\": \"" << then << "\", \"action\": \"backup\"}\n";
  auto v = OpenInDataDir(now)->Resolve("m:1");
  REQUIRE(v.ok());
  CHECK(v->packed_dir == now + "/artifacts/m/1-abc");
  CHECK(v->artifact_path == now + "/sources/m/1/m.pt");
}

TEST_CASE("a registry removed under its opener is never mistaken for the new file made at its path") {
  // Once let go of (closed), the removed file's inode number was free: a
  // CLI's fresh registry at the path could get it, and passed for the file
  // "back at its path" — mmsd served it as its own (a daemon test failed
  // on a fresh machine: the CLI was not told its change went elsewhere).
  Fixture f;
  f.Add("rec", "1");
  const std::string path = f.dir / "registry.db";
  for (int i = 0; i < 20; ++i) {  // (a freed inode number is reused at once on most file systems)
    for (const char* suffix : {"", "-wal", "-shm"}) std::filesystem::remove(path + suffix);
    CHECK_FALSE(f.reg->CheckFileIdentity().ok());
    auto healed = f.reg->LetGoOfDetachedFile();
    REQUIRE(healed.ok());
    CHECK_FALSE(*healed);
    {
      auto fresh = f.Open();  // another process's new registry at the path
      NewVersion v;
      v.model = "other";
      v.version = std::to_string(i + 1);
      v.artifact_path = "/models/other/model.pt";
      v.sha256 = std::string(64, 'b');
      v.size_bytes = 1;
      REQUIRE(fresh->Register(v).ok());
    }
    healed = f.reg->LetGoOfDetachedFile();
    REQUIRE(healed.ok());
    CHECK_FALSE(*healed);  // not the file it opened
    Status st = f.reg->CheckFileIdentity();
    CHECK(st.code() == Code::kFailedPrecondition);
    CHECK(st.message().find("let go of it") != std::string::npos);
  }
}
