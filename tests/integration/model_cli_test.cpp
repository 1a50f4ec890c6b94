// `mms model ...` end to end: the real CLI, a real registry file, real
// TorchScript artifacts checked by the real mmsd. No daemon is needed.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>

#include <set>
#include <signal.h>
#include <sqlite3.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "core/paths.h"
#include "support/process.h"

using namespace mms::testing;
using nlohmann::json;

namespace {

struct Cli {
  TempDir dir;
  std::string config;  // TOML text, written to dir/mms.toml when set
  ProcResult operator()(std::vector<std::string> args, std::map<std::string, std::string> env = {}) const {
    std::vector<std::string> argv{MmsBin(), "--data-dir", dir / "data", "--socket", dir / "none.sock"};
    if (!config.empty()) {
      std::ofstream(dir / "mms.toml") << config;
      argv.insert(argv.end(), {"--config", dir / "mms.toml"});
    }
    argv.insert(argv.end(), args.begin(), args.end());
    return Run(argv, 300, env);
  }
  std::string Data(const std::string& name) const { return TestDataDir() + "/" + name; }
};

}  // namespace

TEST_CASE("register, list, show, history, stage, alias, rm: text and JSON") {
  Cli mms;
  auto r = mms({"model", "register", "rec", "--version", "1", "--path", mms.Data("rec.pt"), "--description", "first",
                "--label", "team=ranking", "--label", "region=eu", "--data-fingerprint", "sha:123", "--sla-p99-ms", "40",
                "--sample-input", mms.Data("rec_input.json")});
  REQUIRE_MESSAGE(r.exit_code == 0, r.err);
  CHECK(r.out.find("registered rec:1") == 0);
  std::ofstream(mms.dir / "metrics.json") << R"({"auc": 0.93, "ndcg": 0.41})";
  r = mms({"--json", "model", "register", "rec", "--version", "2", "--path", mms.Data("rec.pt"), "--metrics",
           mms.dir / "metrics.json"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.err);
  json reg = json::parse(r.out);
  CHECK(reg["ref"] == "rec:2");
  CHECK(reg["metrics"]["auc"] == 0.93);
  CHECK(reg["sha256"].get<std::string>().size() == 64);
  CHECK(reg["packed"] == true);
  CHECK(reg["inputs"][0]["name"] == "ids");

  auto list = mms({"model", "list", "--json"});
  REQUIRE(list.exit_code == 0);
  json l = json::parse(list.out);
  REQUIRE(l.size() == 2);
  for (const char* key : {"model", "version", "ref", "artifact_path", "format", "size_bytes", "sha256", "created_ms",
                          "created_by", "description", "data_fingerprint", "metrics", "device_bytes", "host_bytes",
                          "sla_p99_ms", "stage", "labels", "aliases", "inputs"})
    CHECK_MESSAGE(l[0].contains(key), key);
  CHECK(l[0]["labels"]["team"] == "ranking");
  CHECK(l[0]["sla_p99_ms"] == 40.0);
  CHECK(l[0]["device_bytes"].get<uint64_t>() > 60000);
  CHECK(l[0]["artifact_path"] == std::filesystem::canonical(mms.Data("rec.pt")).string());
  CHECK(mms({"model", "list"}).out.find("rec    1        none") != std::string::npos);

  REQUIRE(mms({"model", "stage", "rec:1", "production"}).exit_code == 0);
  auto promote = mms({"model", "stage", "rec:2", "production"});
  CHECK(promote.out == "rec:2 is now production (rec:1 archived)\n");
  CHECK(json::parse(mms({"--json", "model", "list", "--stage", "production"}).out).size() == 1);
  CHECK(json::parse(mms({"--json", "model", "show", "rec"}).out)["version"] == "2");
  REQUIRE(mms({"model", "alias", "set", "rec", "champion", "rec:2"}).exit_code == 0);  // NAME:VERSION too
  CHECK(json::parse(mms({"--json", "model", "show", "rec@champion"}).out)["version"] == "2");
  REQUIRE(mms({"model", "alias", "set", "rec", "champion", "1"}).exit_code == 0);
  CHECK(json::parse(mms({"--json", "model", "show", "rec@champion"}).out)["version"] == "1");
  auto other = mms({"model", "alias", "set", "rec", "champion", "tiny:1"});
  CHECK(other.exit_code == 2);
  CHECK(other.err.find("an alias names a version of its own model") != std::string::npos);

  json hist = json::parse(mms({"--json", "model", "history", "rec"}).out);
  std::vector<std::string> actions;
  for (const auto& e : hist) actions.push_back(e["action"]);
  CHECK(actions == std::vector<std::string>{"register", "register", "stage", "stage", "stage", "alias-set", "alias-set"});
  CHECK(hist[3]["from"] == "production");
  CHECK(hist[3]["to"] == "archived");
  CHECK(hist[0]["actor"] != "");

  auto rm = mms({"model", "rm", "rec:2"});
  CHECK(rm.exit_code == 6);
  CHECK(rm.err.find("production") != std::string::npos);
  // A bare name is what it serves now: never removed by accident, forced or not.
  auto bare = mms({"model", "rm", "rec", "--force"});
  CHECK(bare.exit_code == 2);
  CHECK(bare.err.find("names a model, not a version (it serves rec:2)") != std::string::npos);
  // No example of a removal that is refused (rec:2 is production): how to get there instead.
  CHECK_MESSAGE(bare.err.find("rm rec:2") == std::string::npos, bare.err);
  CHECK(bare.err.find("rec:2 is production: stage another version production before removing it") != std::string::npos);
  std::string packed = json::parse(mms({"--json", "model", "list"}).out)[0]["artifact_path"];
  REQUIRE(mms({"model", "rm", "rec:1"}).exit_code == 0);
  CHECK(mms({"model", "show", "rec:1"}).exit_code == 4);
  CHECK(std::filesystem::exists(mms.Data("rec.pt")));  // the user's artifact stays
  CHECK(mms({"--json", "model", "history", "rec"}).out.find("\"rm\"") != std::string::npos);
  // The production version removed by force: what the bare name serves now is said, not left to be found.
  REQUIRE(mms({"model", "register", "rec", "--version", "3", "--path", mms.Data("rec.pt"), "-q"}).exit_code == 0);
  auto prod = mms({"model", "rm", "rec:2", "--force"});
  CHECK(prod.exit_code == 0);
  CHECK_MESSAGE(prod.err.find("requests for rec now go to rec:3 (never staged); stage the one you mean") !=
                    std::string::npos,
                prod.err);
}

TEST_CASE("a tenant limit stored before the tenant id rules tightened can still be removed") {
  Cli mms;
  REQUIRE(mms({"model", "register", "tiny", "--version", "1", "--path", mms.Data("tiny.pt"), "-q"}).exit_code == 0);
  auto first = mms({"--json", "limit", "set", "--tenant", "acme", "--qps", "5"});
  REQUIRE(first.exit_code == 0);
  CHECK(json::parse(first.out)["unchanged"] == false);  // the key is always there
  const std::string db = mms.dir / "data/registry.db";
  {  // The same limit again (a rerun): nothing written, no second audit row.
    auto same = mms({"--json", "limit", "set", "--tenant", "acme", "--qps", "5"});
    CHECK(same.exit_code == 0);
    CHECK(json::parse(same.out)["unchanged"] == true);
    CHECK(SqlInt(db, "SELECT COUNT(*) FROM audit WHERE action = 'limit-set'") == 1);
    REQUIRE(mms({"limit", "set", "--tenant", "acme", "--qps", "5", "--burst", "9"}).exit_code == 0);
    CHECK(SqlInt(db, "SELECT COUNT(*) FROM audit WHERE action = 'limit-set'") == 2);
    REQUIRE(mms({"limit", "set", "--tenant", "acme", "--qps", "5"}).exit_code == 0);
  }
  (void)SqlInt(db, "UPDATE limits SET key = 'acme ' WHERE key = 'acme'");  // a trailing space: refused now
  CHECK(mms({"limit", "set", "--tenant", "acme ", "--qps", "5"}).exit_code == 2);
  auto rm = mms({"limit", "rm", "--tenant", "acme "});
  CHECK_MESSAGE(rm.exit_code == 0, rm.err);
  CHECK(SqlInt(db, "SELECT COUNT(*) FROM limits") == 0);
}

TEST_CASE("an artifact check killed (as by the OOM killer) says so, and registers nothing") {
  // mms runs the mmsd beside it to check an artifact: here one that is
  // killed by SIGKILL at once, as the kernel's OOM killer would kill it on a
  // big model. The message used to end after "failed: ".
  Cli mms;
  const std::string bin = mms.dir / "bin";
  std::filesystem::create_directories(bin);
  std::filesystem::copy_file(MmsBin(), bin + "/mms");
  std::ofstream(bin + "/mmsd") << "#!/bin/sh\nkill -9 $$\n";
  std::filesystem::permissions(bin + "/mmsd", std::filesystem::perms::owner_all);
  auto r = Run({bin + "/mms", "--data-dir", mms.dir / "data", "model", "register", "tiny", "--version", "1", "--path",
                mms.Data("tiny.pt")});
  CHECK(r.exit_code == 1);
  CHECK_MESSAGE(r.err.find("mmsd inspect-artifact was killed by signal 9 (out of memory? see dmesg)") != std::string::npos,
                r.err);
  CHECK(r.err.find("nothing was stored or registered") != std::string::npos);
  CHECK(mms({"model", "list"}).out.find("tiny") == std::string::npos);
  CHECK_FALSE(std::filesystem::exists(mms.dir / "data/artifacts/tiny"));
  // Killed for passing the file size limit (ulimit -f): said so, not memory.
  std::ofstream(bin + "/mmsd") << "#!/bin/sh\nkill -XFSZ $$\n";
  auto fsz = Run({"/bin/sh", "-c", "ulimit -f 2048; exec \"$0\" \"$@\"", bin + "/mms", "--data-dir", mms.dir / "data", "model",
                  "register", "tiny", "--version", "1", "--path", mms.Data("tiny.pt")});
  CHECK(fsz.exit_code == 1);
  CHECK_MESSAGE(fsz.err.find("signal 25 (SIGXFSZ: the packed files passed the file size limit, ulimit -f: 1.00 MiB)") !=
                    std::string::npos,
                fsz.err);
  CHECK(fsz.err.find("memory") == std::string::npos);
}

TEST_CASE("mms model verify finds a damaged registry page that listing does not read") {
  Cli mms;
  for (int i = 0; i < 6; ++i)
    REQUIRE(mms({"model", "register", "m" + std::to_string(i), "--version", "1", "--path", mms.Data("tiny.pt"), "-q",
                 "--description", std::string(3000, 'x')})
                .exit_code == 0);
  const std::string db = mms.dir / "data/registry.db", good = mms.dir / "good.db";
  std::filesystem::copy_file(db, good);
  const auto pages = std::filesystem::file_size(good) / 4096;
  int listed_fine = 0;
  for (uint64_t k = 1; k < pages; ++k) {  // each page but the header, overwritten in turn
    std::filesystem::copy_file(good, db, std::filesystem::copy_options::overwrite_existing);
    {
      std::fstream f(db, std::ios::in | std::ios::out | std::ios::binary);
      f.seekp(static_cast<std::streamoff>(k * 4096));
      const std::string junk(4096, '\xff');
      f.write(junk.data(), static_cast<std::streamsize>(junk.size()));
    }
    listed_fine += mms({"model", "list"}).exit_code == 0;
    auto v = mms({"model", "verify"});
    INFO("page " << k << ": " << v.err);
    CHECK(v.exit_code == 1);
    CHECK(v.err.find("is corrupt") != std::string::npos);
  }
  CHECK(listed_fine > 0);  // what a listing read fine, verify did not pass (it said "verified", exit 0)
}

TEST_CASE("a repack whose version another writer removes meanwhile says so, exit 4") {
  // It used to exit 2 ("sample input: no such file") or 1, as if the input were at fault.
  Cli mms;
  REQUIRE(mms({"model", "register", "tiny", "--version", "1", "--path", mms.Data("tiny.pt"), "--sample-input",
               mms.Data("tiny_input.json"), "-q"})
              .exit_code == 0);
  // The repack's check held (an mmsd beside a copy of mms that waits to be
  // let go before it checks) while another writer removes the version and
  // its files: the check then fails on its missing sample.
  const std::string wrap = mms.dir / "wrap";
  std::filesystem::create_directories(wrap);
  std::filesystem::copy_file(MmsBin(), wrap + "/mms");
  std::ofstream(wrap + "/mmsd") << "#!/bin/sh\nif [ \"$1\" = inspect-artifact ]; then touch '" << wrap
                                << "/started'; while [ ! -e '" << wrap << "/go' ]; do sleep 0.05; done; fi\nexec '"
                                << BinDir() << "/mmsd' \"$@\"\n";
  std::filesystem::permissions(wrap + "/mmsd", std::filesystem::perms::owner_all);
  Child repack;
  REQUIRE(repack.Start({wrap + "/mms", "--data-dir", mms.dir / "data", "--socket", mms.dir / "none.sock", "model",
                        "repack", "tiny:1"},
                       mms.dir / "repack.log"));
  REQUIRE(WaitFor([&] { return std::filesystem::exists(wrap + "/started"); }, 30));
  CHECK(mms({"model", "rm", "tiny:1", "--force"}).exit_code == 0);
  std::ofstream(wrap + "/go") << "";
  CHECK(repack.Wait(60) == 4);
  std::ifstream in(mms.dir / "repack.log");
  std::string log((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  CHECK_MESSAGE(log.find("tiny:1 was removed meanwhile (by another writer); nothing was repacked") != std::string::npos,
                log);
}

TEST_CASE("mms --version says its version, as JSON with --json") {
  Cli mms;
  auto text = mms({"--version"});
  CHECK(text.exit_code == 0);
  CHECK(text.out.rfind("mms ", 0) == 0);
  for (const std::vector<std::string>& args : {std::vector<std::string>{"--json", "--version"}, {"--version", "--json"}}) {
    auto j = mms(args);
    CHECK(j.exit_code == 0);
    REQUIRE_MESSAGE(json::accept(j.out), j.out);
    CHECK(text.out.find(json::parse(j.out)["version"].get<std::string>()) != std::string::npos);
  }
}

TEST_CASE("a mistyped option is named as such, not as the required option it hides") {
  Cli mms;
  auto r = mms({"predict", "tiny", "--inptu", "in.json"});
  CHECK(r.exit_code == 2);
  CHECK_MESSAGE(r.err.find("unknown option '--inptu' for 'mms predict'; did you mean '--input'?") != std::string::npos,
                r.err);
  auto extra = mms({"predict", "tiny", "--input", "in.json", "--usr", "a"});  // every required one given
  CHECK(extra.exit_code == 2);
  CHECK_MESSAGE(extra.err.find("unknown option '--usr' for 'mms predict'; did you mean '--user'?") != std::string::npos,
                extra.err);
  auto j = mms({"--json", "model", "register", "--bogus"});
  CHECK(j.exit_code == 2);
  CHECK(json::parse(j.out)["error"]["message"] == "unknown option '--bogus' for 'mms model register'");
}

TEST_CASE("registering NAME:VERSION again with the same weights is no error (a CI job run again): exit 0, unchanged") {
  Cli mms;
  auto first = mms({"--json", "model", "register", "tiny", "--version", "1", "--path", mms.Data("tiny.pt")});
  REQUIRE(first.exit_code == 0);
  CHECK(json::parse(first.out)["unchanged"] == false);
  auto again = mms({"--json", "model", "register", "tiny", "--version", "1", "--path", mms.Data("tiny.pt")});
  CHECK_MESSAGE(again.exit_code == 0, again.err);
  CHECK(json::parse(again.out)["unchanged"] == true);
  CHECK(json::parse(again.out)["sha256"] == json::parse(first.out)["sha256"]);
  // Other settings than it was registered with are not a rerun: refused, not silently dropped.
  auto changed = mms({"model", "register", "tiny", "--version", "1", "--path", mms.Data("tiny.pt"), "--description",
                      "a rerun", "--sample-input", mms.Data("tiny_input.json"), "--max-batch-size", "8"});
  CHECK(changed.exit_code == 6);
  CHECK_MESSAGE(changed.err.find("but other settings (--description, --max-batch-size, --sample-input) than it "
                                 "has") != std::string::npos,
                changed.err);
  // --metrics is a setting too; a usage error is exit 2 whatever is registered.
  std::ofstream(mms.dir / "m.json") << R"({"auc": 0.5})";
  auto metrics = mms({"model", "register", "tiny", "--version", "1", "--path", mms.Data("tiny.pt"), "--metrics",
                      mms.dir / "m.json"});
  CHECK(metrics.exit_code == 6);
  CHECK_MESSAGE(metrics.err.find("other settings (--metrics)") != std::string::npos, metrics.err);
  // Nested 100,000 deep: refused (it was stored, and crashed mms with a stack
  // overflow writing it); /dev/zero never ends; a FIFO would wait forever.
  std::ofstream(mms.dir / "deep.json") << "{\"a\":" + std::string(100000, '[') + std::string(100000, ']') + "}";
  REQUIRE(::mkfifo((mms.dir / "fifo.json").c_str(), 0600) == 0);
  for (const std::vector<std::string>& bad :
       {std::vector<std::string>{"--metrics", mms.dir / "missing.json"}, {"--label", "a"}, {"--label", "=a"},
        {"--max-batch-size", "-5"}, {"--sla-p99-ms", "-3"}, {"--label", "env=a", "--label", "env=b"},
        {"--metrics", mms.dir / "deep.json"}, {"--metrics", "/dev/zero"}, {"--sample-input", "/dev/zero"},
        {"--sample-input", mms.dir / "fifo.json"}}) {
    std::vector<std::string> args{"model", "register", "tiny", "--version", "1", "--path", mms.Data("tiny.pt")};
    args.insert(args.end(), bad.begin(), bad.end());
    auto r = mms(args);
    CHECK_MESSAGE(r.exit_code == 2, bad[0] << " " << bad[1] << ": " << r.err);
  }
  auto twice = mms({"model", "register", "tiny", "--version", "5", "--path", mms.Data("tiny.pt"), "--label", "env=a",
                    "--label", "env=b"});
  CHECK(twice.exit_code == 2);
  CHECK_MESSAGE(twice.err.find("--label env is given twice") != std::string::npos, twice.err);
  auto text = mms({"model", "register", "tiny", "--version", "1", "--path", mms.Data("tiny.pt")});
  CHECK(text.exit_code == 0);
  CHECK_MESSAGE(text.out.find("tiny:1 is already registered with these weights") != std::string::npos, text.out);
  // Batching registered: a rerun that leaves its flags out is the same run
  // (settings left out are not settings changed), one that gives others is not.
  const std::vector<std::string> batched{"model", "register", "tinyb", "--version", "1", "--path", mms.Data("tiny.pt"),
                                         "--sample-input", mms.Data("tiny_input.json")};
  auto with = batched;
  with.insert(with.end(), {"--max-batch-size", "4", "--max-queue-delay-us", "500"});
  REQUIRE(mms(with).exit_code == 0);
  auto without = mms(batched);
  CHECK_MESSAGE(without.exit_code == 0, without.err);
  CHECK(without.out.find("already registered with these weights") != std::string::npos);
  auto other_delay = batched;
  other_delay.insert(other_delay.end(), {"--max-batch-size", "4", "--max-queue-delay-us", "900"});
  auto refused = mms(other_delay);
  CHECK(refused.exit_code == 6);
  CHECK_MESSAGE(refused.err.find("other settings (--max-queue-delay-us)") != std::string::npos, refused.err);
  auto unbatched = batched;
  unbatched.insert(unbatched.end(), {"--max-batch-size", "0"});
  CHECK(mms(unbatched).exit_code == 6);  // 0 given: "off", which differs
  auto history = mms({"--json", "model", "history", "tiny"});
  CHECK(json::parse(history.out).size() == 1);  // one registration, nothing written by the reruns
  // The same weights under a new version: registered, with a note (a canary between them compares nothing).
  auto retag = mms({"model", "register", "tiny", "--version", "2", "--path", mms.Data("tiny.pt")});
  CHECK(retag.exit_code == 0);
  CHECK_MESSAGE(retag.err.find("tiny:2 has the same weights as tiny:1") != std::string::npos, retag.err);
  auto other = mms({"model", "register", "tiny", "--version", "3", "--path", mms.Data("tiny_v2.pt")});
  CHECK(other.err.find("same weights") == std::string::npos);
}

TEST_CASE("removals say what they removed in one --json shape: its identity and removed: true") {
  Cli mms;
  REQUIRE(mms({"-q", "model", "register", "tiny", "--version", "1", "--path", mms.Data("tiny.pt")}).exit_code == 0);
  REQUIRE(mms({"-q", "model", "alias", "set", "tiny", "best", "1"}).exit_code == 0);
  REQUIRE(mms({"-q", "limit", "set", "tiny", "--qps", "5"}).exit_code == 0);
  auto alias = mms({"--json", "model", "alias", "rm", "tiny", "best"});
  REQUIRE(alias.exit_code == 0);
  CHECK(json::parse(alias.out) == json{{"model", "tiny"}, {"alias", "best"}, {"removed", true}});
  auto limit = mms({"--json", "limit", "rm", "tiny"});
  REQUIRE(limit.exit_code == 0);
  CHECK(json::parse(limit.out) == json{{"kind", "model"}, {"key", "tiny"}, {"removed", true}});
  REQUIRE(std::filesystem::exists(mms.dir / "data/artifacts/tiny"));
  auto version = mms({"--json", "model", "rm", "tiny:1"});
  REQUIRE(version.exit_code == 0);
  CHECK(json::parse(version.out) == json{{"ref", "tiny:1"}, {"model", "tiny"}, {"version", "1"}, {"removed", true}});
  // Its last version gone, the model's packed directory goes too: nothing for verify to list as unused.
  CHECK_FALSE(std::filesystem::exists(mms.dir / "data/artifacts/tiny"));
  auto verify = mms({"model", "verify"});
  CHECK_MESSAGE(verify.out.find("unused") == std::string::npos, verify.out);
}

TEST_CASE("every refusal has a clear message and its exit code") {
  Cli mms;
  REQUIRE(mms({"model", "register", "tiny", "--version", "1", "--path", mms.Data("tiny.pt")}).exit_code == 0);
  struct Case {
    std::vector<std::string> args;
    int code;
    std::string says;
  };
  std::ofstream(mms.dir / "list.json") << "[1, 2]";
  REQUIRE(::mkfifo((mms.dir / "fifo.pt").c_str(), 0600) == 0);  // never opened: it would block
  std::vector<Case> cases{
      {{"model", "register", "tiny", "--version", "1", "--path", mms.dir / "fifo.pt"}, 6, "registered with other weights"},
      {{"model", "register", "tiny", "--version", "2", "--path", mms.dir / "fifo.pt"}, 2, "is not a regular file"},
      {{"model", "register", "tiny", "--version", "1", "--path", mms.Data("tiny_v2.pt")}, 6,
       "registered with other weights"},
      {{"model", "register", "Tiny", "--version", "2", "--path", mms.Data("tiny.pt")}, 2, "[a-z0-9][a-z0-9._-]{0,62}"},
      {{"model", "register", "tiny", "--version", "v2", "--path", mms.Data("tiny.pt")}, 2, "positive integer or dotted"},
      {{"model", "register", "tiny", "--version", "1. 2", "--path", mms.Data("tiny.pt")}, 2, "positive integer or dotted"},
      {{"model", "register", "tiny", "--version", "1.\t3", "--path", mms.Data("tiny.pt")}, 2, "positive integer or dotted"},
      {{"model", "register", "tiny", "--version", "7", "--path", mms.Data("tiny.pt"), "--max-queue-delay-us",
        "10000001"},
       2, "--max-queue-delay-us 10000001 is out of range"},
      {{"model", "register", "tiny", "--version", "8", "--path", mms.Data("tiny.pt"), "--max-queue-delay-us",
        "9300000000000000"},
       2, "[scheduler] max_queue_delay"},
      {{"model", "register", "tiny", "--version", "9", "--path", mms.Data("tiny.pt"), "--max-queue-delay-us", "500"},
       2, "it needs --max-batch-size"},
      {{"model", "register", "tiny", "--version", "2", "--path", mms.dir / "missing.pt"}, 2, "does not exist"},
      {{"model", "register", "tiny", "--version", "2", "--path", mms.Data("not_a_model.pt")}, 2,
       "not a loadable TorchScript archive"},
      {{"model", "register", "tiny", "--version", "2", "--path", mms.Data("int_arg.pt")}, 2, "has type int"},
      {{"model", "register", "tiny", "--version", "2", "--path", mms.Data("tiny.pt"), "--metrics", mms.dir / "list.json"},
       2, "JSON object"},
      {{"model", "register", "tiny", "--version", "2", "--path", mms.Data("tiny.pt"), "--label", "novalue"}, 2,
       "key=value"},
      {{"model", "register", "tiny", "--version", "2", "--path", mms.Data("tiny.pt"), "--sla-p99-ms", "-3"}, 2,
       "positive"},
      {{"model", "register", "tiny", "--version", "2", "--path", mms.Data("tiny.pt"), "--sample-input",
        mms.Data("tiny_bad_shape.json")},
       2, "fails on its sample input"},
      {{"model", "show", "tinny"}, 4, "did you mean 'tiny'"},
      {{"model", "show", "tiny:9"}, 4, "tiny has versions 1"},
      {{"model", "show", "tiny@gold"}, 4, "no aliases"},
      {{"model", "show", "tiny:x"}, 2, "invalid version"},
      {{"model", "stage", "tiny:1", "live"}, 2, "none, shadow, canary, production, archived"},
      {{"model", "alias", "rm", "tiny", "gold"}, 4, "unknown alias"},
      {{"model", "list", "--stage", "prod"}, 2, "unknown stage"},
      {{"model", "rm", "nope"}, 4, "unknown model"},
  };
  for (const auto& c : cases) {
    auto r = mms(c.args);
    std::string cmd;
    for (const auto& a : c.args) cmd += a + " ";
    INFO(cmd << "→ " << r.err);
    CHECK(r.exit_code == c.code);
    CHECK(r.err.find(c.says) != std::string::npos);
    CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
  }
  // One killed before it stored anything leaves an empty one: verify lists
  // it as unused (exit 0), and --prune removes it.
  std::filesystem::create_directories(mms.dir / "data/artifacts/ghost");
  auto listed = mms({"model", "verify"});
  CHECK(listed.exit_code == 0);
  CHECK_MESSAGE(listed.out.find("an empty model directory") != std::string::npos, listed.out);
  CHECK(mms({"model", "verify", "--prune", "--prune-age", "0"}).exit_code == 0);
  CHECK_FALSE(std::filesystem::exists(mms.dir / "data/artifacts/ghost"));
  // A refused artifact of a new name leaves no empty artifacts/<name>/ (nothing listed it).
  CHECK(mms({"model", "register", "fresh", "--version", "1", "--path", mms.Data("not_a_model.pt")}).exit_code == 2);
  CHECK_FALSE(std::filesystem::exists(mms.dir / "data/artifacts/fresh"));
  CHECK(std::filesystem::exists(mms.dir / "data/artifacts/tiny"));  // (others' stay)
  // --json errors are JSON on stdout with the same exit code.
  auto j = mms({"--json", "model", "show", "tinny"});
  CHECK(j.exit_code == 4);
  CHECK(json::parse(j.out)["error"]["code"] == "NOT_FOUND");
  // An error message with bytes that are not UTF-8 is still one JSON object, never an abort.
  auto bad = mms({"--json", "model", "show", "bad\xff"});
  CHECK(bad.exit_code == 2);
  INFO(bad.out << bad.err);
  REQUIRE(json::accept(bad.out));
  CHECK(json::parse(bad.out)["error"]["code"] == "INVALID_ARGUMENT");
  CHECK(json::parse(bad.out)["error"]["message"].get<std::string>().find("invalid model name 'bad\xEF\xBF\xBD'") !=
        std::string::npos);
  auto bad_text = mms({"model", "show", "bad\xff"});
  CHECK(bad_text.exit_code == 2);
  CHECK(bad_text.err.find("invalid model name") != std::string::npos);
  // Nothing was registered by the refusals.
  CHECK(json::parse(mms({"--json", "model", "list"}).out).size() == 1);
}

TEST_CASE("artifact paths are canonical and allowed_roots is enforced") {
  Cli mms;
  std::filesystem::create_directories(mms.dir / "models/sub");
  std::filesystem::copy_file(mms.Data("tiny.pt"), mms.dir / "models/tiny.pt");
  std::filesystem::create_symlink(mms.dir / "models/tiny.pt", mms.dir / "link.pt");
  mms.config = "[registry]\nallowed_roots = [\"" + (mms.dir / "models") + "\"]\n";
  auto r = mms({"--json", "model", "register", "a", "--version", "1", "--path", mms.dir / "models/sub/../tiny.pt"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.err);
  CHECK(json::parse(r.out)["artifact_path"] == std::filesystem::canonical(mms.dir / "models/tiny.pt").string());
  // A symlink outside the root that points inside is resolved, so it is allowed.
  CHECK(mms({"model", "register", "a", "--version", "2", "--path", mms.dir / "link.pt"}).exit_code == 0);
  std::filesystem::copy_file(mms.Data("tiny.pt"), mms.dir / "outside.pt");
  auto out = mms({"model", "register", "a", "--version", "3", "--path", mms.dir / "outside.pt"});
  CHECK(out.exit_code == 2);
  CHECK(out.err.find("outside [registry] allowed_roots") != std::string::npos);
}

TEST_CASE("verify reports changed and missing artifacts") {
  Cli mms;
  std::filesystem::copy_file(mms.Data("tiny.pt"), mms.dir / "a.pt");
  std::filesystem::copy_file(mms.Data("tiny.pt"), mms.dir / "b.pt");
  REQUIRE(mms({"model", "register", "a", "--version", "1", "--path", mms.dir / "a.pt"}).exit_code == 0);
  REQUIRE(mms({"model", "register", "b", "--version", "1", "--path", mms.dir / "b.pt"}).exit_code == 0);
  CHECK(mms({"model", "verify"}).exit_code == 0);
  std::ofstream(mms.dir / "a.pt", std::ios::app) << "tampered";
  std::filesystem::remove(mms.dir / "b.pt");
  auto v = mms({"--json", "model", "verify"});
  CHECK(v.exit_code == 1);
  json j = json::parse(v.out);
  REQUIRE(j.size() == 2);
  CHECK(j[0]["ok"] == false);
  CHECK(j[0]["problems"][0].get<std::string>().find("changed since registration") != std::string::npos);
  CHECK(j[1]["problems"][0].get<std::string>().find("missing") != std::string::npos);
  CHECK(mms({"model", "verify", "a:1"}).exit_code == 1);
}

TEST_CASE("verify finds damaged packed weights, and staging dirs of killed registrations") {
  Cli mms;
  for (const char* m : {"a", "b", "c"}) {
    std::filesystem::copy_file(mms.Data("tiny.pt"), mms.dir / (std::string(m) + ".pt"));
    REQUIRE(mms({"model", "register", m, "--version", "1", "--path", mms.dir / (std::string(m) + ".pt")}).exit_code == 0);
  }
  auto packed = [&](const std::string& m) {
    for (const auto& e : std::filesystem::directory_iterator(std::filesystem::path(mms.dir / "data") / "artifacts" / m)) return e.path();
    return std::filesystem::path();
  };
  // Registration recorded the packed weights' hash in sha256sum's format.
  std::ifstream sums_file(packed("a") / "SHA256SUMS");
  std::string sums((std::istreambuf_iterator<char>(sums_file)), std::istreambuf_iterator<char>());
  CHECK(sums.find("  weights.safetensors\n") == 64);
  CHECK(mms({"model", "verify"}).exit_code == 0);
  // Bytes changed in place (same size), a truncation, and a version packed
  // before hashes were recorded and then truncated (its structure is checked).
  {
    std::fstream f(packed("a") / "weights.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-4, std::ios::end);
    f.write("\x7f\x7f\x7f\x7f", 4);
  }
  auto size = std::filesystem::file_size(packed("b") / "weights.safetensors");
  std::filesystem::resize_file(packed("b") / "weights.safetensors", size - 8);
  std::filesystem::remove(packed("c") / "SHA256SUMS");
  std::filesystem::resize_file(packed("c") / "weights.safetensors", size - 8);
  auto v = mms({"--json", "model", "verify"});
  CHECK(v.exit_code == 1);
  json j = json::parse(v.out);
  REQUIRE(j.size() == 3);
  for (int i = 0; i < 3; ++i) CHECK(j[i]["ok"] == false);
  CHECK(j[0]["problems"][0].get<std::string>().find("packed weights.safetensors changed since registration") != std::string::npos);
  CHECK(j[1]["problems"][0].get<std::string>().find("changed since registration") != std::string::npos);
  CHECK(j[2]["problems"][0].get<std::string>().find("packed weights.safetensors is damaged") != std::string::npos);
  CHECK(mms({"model", "verify", "a:1"}).exit_code == 1);
  // A damaged SHA256SUMS is a problem itself, not a pass.
  std::filesystem::copy_file(mms.Data("tiny.pt"), mms.dir / "d.pt");
  REQUIRE(mms({"model", "register", "d", "--version", "1", "--path", mms.dir / "d.pt"}).exit_code == 0);
  std::ofstream(packed("d") / "SHA256SUMS") << "garbage\n";
  auto dv = mms({"--json", "model", "verify", "d:1"});
  CHECK(dv.exit_code == 1);
  std::string dp = json::parse(dv.out)[0]["problems"].dump();
  CHECK(dp.find("SHA256SUMS is damaged") != std::string::npos);
  CHECK(dp.find("SHA256SUMS has no checksum for weights.safetensors") != std::string::npos);
  // The stored sample input (the warm-up's) is recorded too: an edit to it
  // changes what the warm-up checks, and went unnoticed.
  std::filesystem::copy_file(mms.Data("tiny.pt"), mms.dir / "e.pt");
  REQUIRE(mms({"model", "register", "e", "--version", "1", "--path", mms.dir / "e.pt", "--sample-input",
               mms.Data("tiny_input.json")})
              .exit_code == 0);
  CHECK(mms({"model", "verify", "e:1"}).exit_code == 0);
  std::ofstream(packed("e") / "sample.json", std::ios::app) << " ";
  auto ev = mms({"--json", "model", "verify", "e:1"});
  CHECK(ev.exit_code == 1);
  CHECK(json::parse(ev.out)[0]["problems"].dump().find("packed sample.json changed since registration") !=
        std::string::npos);
  // Its fix is a new sample: a repack reusing the damaged one gave the
  // version inputs from it, and SHA256SUMS then vouched for it.
  CHECK(json::parse(ev.out)[0]["problems"].dump().find("mms model repack e:1 --sample-input FILE stores a good one") !=
        std::string::npos);
  auto reused = mms({"model", "repack", "e:1"});
  CHECK(reused.exit_code == 2);
  CHECK_MESSAGE(reused.err.find("the stored sample input of e:1") != std::string::npos, reused.err);
  CHECK_MESSAGE(reused.err.find(") changed since registration (sha256 ") != std::string::npos, reused.err);
  CHECK_MESSAGE(reused.err.find("give a good one with --sample-input FILE") != std::string::npos, reused.err);
  REQUIRE(mms({"model", "repack", "e:1", "--sample-input", mms.Data("tiny_input.json")}).exit_code == 0);
  CHECK(mms({"model", "verify", "e:1"}).exit_code == 0);

  // A registration killed while storing its files leaves "<stem>.tmp-<pid>":
  // listed once nobody holds its lock, and pruned as unused packed dirs are.
  Cli other;
  const auto old = std::filesystem::file_time_type::clock::now() - std::chrono::minutes(5);
  std::filesystem::path staging = std::filesystem::path(other.dir / "data") / "artifacts" / "x" / "1-0123456789ab.tmp-999999";
  std::filesystem::create_directories(staging);
  std::ofstream(staging / "weights.safetensors") << std::string(1000, 'w');
  std::filesystem::last_write_time(staging, old);
  // A live registration's, whatever its pid says (in another pid namespace,
  // a container's, it names no process here) and however old: it holds the
  // lock. It used to be removed under the registration.
  std::filesystem::path live = std::filesystem::path(other.dir / "data") / "artifacts" / "x" / "2-0123456789ab.tmp-999998";
  std::filesystem::create_directories(live);
  std::filesystem::last_write_time(live, old);
  const int live_fd = ::open(live.c_str(), O_RDONLY | O_DIRECTORY);
  REQUIRE(live_fd >= 0);
  REQUIRE(::flock(live_fd, LOCK_EX) == 0);
  // One made a moment ago, not locked yet (a registration's, between its mkdir and its flock): kept.
  std::filesystem::path fresh = std::filesystem::path(other.dir / "data") / "artifacts" / "x" / ".3-0123456789ab.init-Ab12Cd";
  std::filesystem::create_directories(fresh);
  auto listed = other({"--json", "model", "verify"});
  CHECK(listed.exit_code == 1);
  INFO(listed.out << listed.err);
  json lj = json::parse(listed.out);
  REQUIRE(lj.size() == 1);  // not the one whose process (this test) is alive
  CHECK(lj[0]["path"] == staging.string());
  CHECK(lj[0]["problems"][0].get<std::string>().find("left by a registration killed") != std::string::npos);
  auto young = other({"--json", "model", "verify", "--prune"});  // just written: kept (--prune-age 1h)
  CHECK(young.exit_code == 0);
  CHECK(std::filesystem::exists(staging));
  auto pruned = other({"--json", "model", "verify", "--prune", "--prune-age", "0s"});
  CHECK(pruned.exit_code == 0);
  CHECK_FALSE(std::filesystem::exists(staging));
  CHECK(std::filesystem::exists(live));
  CHECK(std::filesystem::exists(fresh));
  // A registration clears abandoned ones, never a locked one.
  std::filesystem::create_directories(staging);
  std::filesystem::last_write_time(staging, old);
  REQUIRE(other({"model", "register", "x", "--version", "9", "--path", other.Data("tiny.pt"), "-q"}).exit_code == 0);
  CHECK_FALSE(std::filesystem::exists(staging));
  CHECK(std::filesystem::exists(live));
  ::close(live_fd);
  // A model called x.tmp-y: its published dirs are no staging dirs, however old.
  REQUIRE(other({"model", "register", "x.tmp-y", "--version", "1", "--path", other.Data("tiny.pt"), "-q"}).exit_code == 0);
  for (const auto& e : std::filesystem::directory_iterator(std::filesystem::path(other.dir / "data") / "artifacts" / "x.tmp-y"))
    std::filesystem::last_write_time(e.path(), old);
  REQUIRE(other({"model", "register", "x.tmp-y", "--version", "2", "--path", other.Data("tiny_v2.pt"), "-q"}).exit_code == 0);
  auto kept = other({"model", "verify", "x.tmp-y:1"});
  CHECK_MESSAGE(kept.exit_code == 0, kept.out << kept.err);
}

TEST_CASE("a removed registry is not silently recreated beside packed weights, and nothing is pruned against a new one") {
  Cli mms;
  std::filesystem::copy_file(mms.Data("tiny.pt"), mms.dir / "a.pt");
  REQUIRE(mms({"model", "register", "a", "--version", "1", "--path", mms.dir / "a.pt", "-q"}).exit_code == 0);
  const std::filesystem::path data = mms.dir / "data";
  std::filesystem::rename(data / "registry.db", mms.dir / "registry.db.moved");
  std::filesystem::remove(data / "registry.db-wal");
  std::filesystem::remove(data / "registry.db-shm");
  // Any command: refused, naming the registry and the remedy; no empty registry appears.
  auto list = mms({"model", "list"});
  CHECK(list.exit_code == 1);
  CHECK(list.err.find("no registry at " + (data / "registry.db").string()) != std::string::npos);
  CHECK(list.err.find("Restore registry.db") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(data / "registry.db"));
  // A new registry made elsewhere: --prune refuses to treat the packed files as orphans.
  auto cfg = mms.dir / "fresh.toml";
  std::ofstream(cfg) << "[registry]\npath = \"" << (mms.dir / "new") << "/registry.db\"\n";
  std::filesystem::create_directories(mms.dir / "new");
  std::filesystem::rename(data / "artifacts", mms.dir / "artifacts.aside");  // lets the new registry be created
  // (by mmsd, which opens its registry at start; commands that only read make none)
  Run({MmsdBin(), "--config", cfg, "--data-dir", data, "--socket", mms.dir / "fresh.sock"}, 3);
  REQUIRE(std::filesystem::exists(mms.dir / "new/registry.db"));
  std::filesystem::rename(mms.dir / "artifacts.aside", data / "artifacts");
  auto prune = mms({"--config", cfg, "model", "verify", "--prune", "--prune-age", "0s"});
  CHECK(prune.exit_code == 1);
  CHECK(prune.err.find("no history at all") != std::string::npos);
  CHECK(std::filesystem::exists(data / "artifacts" / "a"));
  // Back in place, all is as it was.
  std::filesystem::rename(mms.dir / "registry.db.moved", data / "registry.db");
  auto v = mms({"model", "verify"});
  CHECK_MESSAGE(v.exit_code == 0, v.err);
}

TEST_CASE("verify lists packed directories no version uses, and --prune removes them") {
  Cli mms;
  std::filesystem::copy_file(mms.Data("tiny.pt"), mms.dir / "a.pt");
  REQUIRE(mms({"model", "register", "a", "--version", "1", "--path", mms.dir / "a.pt"}).exit_code == 0);
  const std::filesystem::path data = mms.dir / "data", model_dir = data / "artifacts" / "a";
  std::vector<std::filesystem::path> dirs;
  for (const auto& e : std::filesystem::directory_iterator(model_dir)) dirs.push_back(e.path());
  REQUIRE(dirs.size() == 1);
  const std::filesystem::path used = dirs[0];
  // As a registration killed between publishing its files and recording the version leaves them.
  const std::filesystem::path orphan = model_dir / "2-0123456789ab";
  std::filesystem::copy(used, orphan, std::filesystem::copy_options::recursive);

  auto v = mms({"--json", "model", "verify"});
  CHECK(v.exit_code == 1);
  json j = json::parse(v.out);
  REQUIRE(j.size() == 2);
  CHECK(j[0]["kind"] == "version");
  CHECK(j[0]["ok"] == true);
  CHECK(j[1]["kind"] == "orphan");
  CHECK(j[1]["ref"] == "");
  CHECK(j[1]["path"] == orphan.string());
  CHECK(j[1]["bytes"].get<uint64_t>() > 0);
  CHECK(j[1]["problems"][0].get<std::string>().find("mms model verify --prune") != std::string::npos);
  // Young, so the hint says when --prune takes it, and how to take it now
  // (it sent users to a --prune that then kept it for an hour).
  CHECK_MESSAGE(j[1]["problems"][0].get<std::string>().find("--prune removes it in ") != std::string::npos,
                j[1]["problems"][0]);
  CHECK(j[1]["problems"][0].get<std::string>().find("--prune-age 0 removes it now") != std::string::npos);
  auto text = mms({"model", "verify"});
  CHECK(text.out.find("ORPHAN   " + orphan.string()) != std::string::npos);
  CHECK(text.out.find("1 of 1 versions verified; 1 unused packed directory") != std::string::npos);

  // Bad input: --prune with a REF, an unreadable age.
  auto bad = mms({"model", "verify", "a:1", "--prune"});
  CHECK(bad.exit_code == 2);
  CHECK(bad.err.find("run it without REF") != std::string::npos);
  auto bad_age = mms({"model", "verify", "--prune", "--prune-age", "soon"});
  CHECK(bad_age.exit_code == 2);
  CHECK(bad_age.err.find("--prune-age soon") != std::string::npos);
  CHECK(std::filesystem::exists(orphan));

  // Just written (the copy set its ctime): it may be a registration in
  // progress, so the default --prune-age (1h) keeps it, and that is no problem.
  auto young = mms({"--json", "model", "verify", "--prune"});
  CHECK(young.exit_code == 0);
  json yj = json::parse(young.out);
  REQUIRE(yj.size() == 2);
  CHECK(yj[1]["pruned"] == false);
  CHECK(yj[1]["problems"][0].get<std::string>().find("registration in progress") != std::string::npos);
  CHECK(yj[1]["problems"][0].get<std::string>().find("--prune-age 0 removes it now") != std::string::npos);
  CHECK(std::filesystem::exists(orphan));

  // The same data dir reached through a symlink: the version's directory is
  // still recognised as its own; only the orphan goes.
  std::filesystem::create_directory_symlink(data, mms.dir / "link");
  auto p = Run({MmsBin(), "--data-dir", mms.dir / "link", "--socket", mms.dir / "none.sock", "--json", "model",
                "verify", "--prune", "--prune-age", "0s"});
  INFO(p.err);
  CHECK(p.exit_code == 0);
  json pj = json::parse(p.out);
  REQUIRE(pj.size() == 2);
  CHECK(pj[1]["pruned"] == true);
  CHECK_FALSE(std::filesystem::exists(orphan));
  CHECK(std::filesystem::exists(used / "weights.safetensors"));  // the version's own files are untouched
  CHECK(mms({"model", "verify"}).exit_code == 0);

  // A registry whose versions' files are missing (another data dir's?) is never pruned against.
  std::filesystem::copy(used, orphan, std::filesystem::copy_options::recursive);
  std::filesystem::rename(used, model_dir / "moved");
  auto refuse = mms({"model", "verify", "--prune", "--prune-age", "0s"});
  CHECK(refuse.exit_code == 1);
  CHECK(refuse.err.find("not pruning") != std::string::npos);
  CHECK(std::filesystem::exists(orphan));
  CHECK(std::filesystem::exists(model_dir / "moved"));
}

TEST_CASE("a relative data dir is made absolute before paths under it are stored") {
  Cli mms;
  std::filesystem::copy_file(mms.Data("tiny.pt"), mms.dir / "a.pt");
  const std::string dir = mms.dir.path();
  auto r = Run({"/bin/sh", "-c",
                "cd '" + dir + "' && '" + MmsBin() +
                    "' --data-dir rel --socket none.sock -q model register a --version 1 --path a.pt"});
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  // Read back from elsewhere (here: the test's own working directory).
  auto show = Run({MmsBin(), "--data-dir", dir + "/rel", "--socket", dir + "/none.sock", "model", "show", "a:1"});
  CHECK(show.out.find(dir + "/rel/artifacts/a/1-") != std::string::npos);
  CHECK(Run({MmsBin(), "--data-dir", dir + "/rel", "--socket", dir + "/none.sock", "model", "verify"}).exit_code == 0);
}

TEST_CASE("import registers a Triton-style repository and reports what it skipped") {
  Cli mms;
  std::string repo = mms.dir / "repo";
  std::filesystem::create_directories(repo + "/ranker/1");
  std::filesystem::create_directories(repo + "/ranker/2");
  std::filesystem::create_directories(repo + "/ranker/v3");
  std::filesystem::create_directories(repo + "/ranker/4");
  std::filesystem::create_directories(repo + "/Bad_Name/1");
  std::filesystem::create_directories(repo + "/broken/1");
  std::filesystem::copy_file(mms.Data("tiny.pt"), repo + "/ranker/1/model.pt");
  std::filesystem::copy_file(mms.Data("tiny_v2.pt"), repo + "/ranker/2/model.pt");
  std::filesystem::copy_file(mms.Data("tiny.pt"), repo + "/ranker/v3/model.pt");
  std::filesystem::copy_file(mms.Data("tiny.pt"), repo + "/Bad_Name/1/model.pt");
  std::filesystem::copy_file(mms.Data("not_a_model.pt"), repo + "/broken/1/model.pt");
  std::ofstream(repo + "/ranker/config.pbtxt")
      << "name: \"ranker\"\nplatform: \"pytorch_libtorch\"\nmax_batch_size: 32\ndynamic_batching {\n  max_queue_delay_microseconds: 100\n}\n";
  // Triton batches across requests only with dynamic_batching; a commented
  // or nested max_batch_size is not the model's.
  std::filesystem::create_directories(repo + "/plain/1");
  std::filesystem::copy_file(mms.Data("tiny.pt"), repo + "/plain/1/model.pt");
  std::ofstream(repo + "/plain/config.pbtxt")
      << "name: \"plain\"\n# max_batch_size: 64 (old)\nmax_batch_size: 8\ninput [ { name: \"x\" dims: [ 4 ] } ]\n";
  // Batching is checked with a sample beside model.pt: ranker:2 has one;
  // ranker:1 has none and mix:1 fails the check (its rows depend on each
  // other: batched unchecked, callers got each other's figures), so both
  // are registered unbatched, with a note saying why.
  std::filesystem::copy_file(mms.Data("tiny_input.json"), repo + "/ranker/2/sample_input.json");
  std::filesystem::create_directories(repo + "/mix/1");
  std::filesystem::copy_file(mms.Data("batch_mix.pt"), repo + "/mix/1/model.pt");
  std::filesystem::copy_file(mms.Data("tiny_input.json"), repo + "/mix/1/sample_input.json");
  std::ofstream(repo + "/mix/config.pbtxt") << "max_batch_size: 8;\ndynamic_batching { }\n";  // (a field may end in ;)
  auto r = mms({"--json", "model", "import", repo});
  CHECK(r.exit_code == 1);  // some were skipped for errors
  json j = json::parse(r.out);
  CHECK(j["registered"] == json::array({"mix:1", "plain:1", "ranker:1", "ranker:2"}));
  CHECK(json::parse(mms({"--json", "model", "show", "mix:1"}).out)["max_batch_size"] == 0);
  CHECK(json::parse(mms({"--json", "model", "show", "ranker:1"}).out)["max_batch_size"] == 0);
  REQUIRE(j["notes"].size() == 2);
  CHECK(j["notes"][0]["ref"] == "mix:1");
  CHECK(j["notes"][0]["note"].get<std::string>().find("cannot batch") != std::string::npos);
  CHECK(j["notes"][1]["ref"] == "ranker:1");
  CHECK(j["notes"][1]["note"].get<std::string>().find("no sample_input.json") != std::string::npos);
  for (const auto& sk : j["skipped"]) CHECK(sk["error"] == true);
  CHECK(json::parse(mms({"--json", "model", "show", "plain:1"}).out)["max_batch_size"] == 0);
  REQUIRE(j["skipped"].size() == 4);
  std::string all = j["skipped"].dump();
  CHECK(all.find("invalid model name 'Bad_Name'") != std::string::npos);
  CHECK(all.find("invalid version 'v3'") != std::string::npos);
  CHECK(all.find("no model.pt") != std::string::npos);
  CHECK(all.find("not a loadable TorchScript archive") != std::string::npos);
  json ranker2 = json::parse(mms({"--json", "model", "show", "ranker:2"}).out);
  CHECK(ranker2["max_batch_size"] == 32);
  CHECK(ranker2["max_queue_delay_us"] == 100);  // dynamic_batching's max_queue_delay_microseconds
  // A model that cannot batch is registered unbatched; the note says why, and
  // does not tell the reader to register it batched again.
  CHECK(j["notes"][0]["note"].get<std::string>().find("To batch it") == std::string::npos);
  CHECK(j["notes"][0]["note"].get<std::string>().find("register without") == std::string::npos);
  {
    // A max_batch_size that does not fit skips that model with an error naming
    // the file and the value (it used to abort the whole import).
    std::string big = mms.dir / "big";
    std::filesystem::create_directories(big + "/huge/1");
    std::filesystem::create_directories(big + "/fine/1");
    std::filesystem::copy_file(mms.Data("tiny.pt"), big + "/huge/1/model.pt");
    std::filesystem::copy_file(mms.Data("tiny.pt"), big + "/fine/1/model.pt");
    std::ofstream(big + "/huge/config.pbtxt") << "name: \"huge\"\nmax_batch_size: 99999999999\n";
    std::filesystem::create_directories(big + "/neg/1");
    std::filesystem::copy_file(mms.Data("tiny.pt"), big + "/neg/1/model.pt");
    std::ofstream(big + "/neg/config.pbtxt") << "max_batch_size: -3\n";
    auto h = mms({"--json", "model", "import", big});
    INFO(h.out << h.err);
    CHECK(h.exit_code == 1);
    REQUIRE(json::accept(h.out));
    json hj = json::parse(h.out);
    CHECK(hj["registered"] == json::array({"fine:1"}));
    REQUIRE(hj["skipped"].size() == 2);
    std::string why = hj["skipped"][0]["reason"];
    CHECK(why.find(big + "/huge/config.pbtxt") != std::string::npos);
    CHECK(why.find("max_batch_size 99999999999 is out of range") != std::string::npos);
    CHECK(hj["skipped"][1]["reason"].get<std::string>().find("max_batch_size -3 is out of range") != std::string::npos);
  }
  // Importing again skips the existing versions as such (not an error).
  std::filesystem::remove_all(repo + "/Bad_Name");
  std::filesystem::remove_all(repo + "/broken");
  std::filesystem::remove_all(repo + "/ranker/v3");
  std::filesystem::remove_all(repo + "/ranker/4");
  auto again = mms({"--json", "model", "import", repo});
  CHECK(again.exit_code == 0);
  CHECK(json::parse(again.out)["skipped"][0]["reason"].get<std::string>().find("already registered") !=
        std::string::npos);
  CHECK(json::parse(again.out)["skipped"][0]["error"] == false);
  // A version whose file was replaced in the repository is an error, not a
  // silent skip that keeps serving the old weights.
  std::filesystem::remove(repo + "/ranker/1/model.pt");
  std::filesystem::copy_file(mms.Data("tiny_v2.pt"), repo + "/ranker/1/model.pt");
  auto changed = mms({"--json", "model", "import", repo});
  CHECK(changed.exit_code == 1);
  CHECK(changed.out.find("ranker:1 is registered with other weights") != std::string::npos);
  // A max_batch_size of a million digits is refused, not a crash.
  std::ofstream(repo + "/plain/config.pbtxt") << "max_batch_size: " << std::string(1'000'000, '7') << "\n";
  auto huge = mms({"--json", "model", "import", repo});
  CHECK(huge.exit_code == 1);
  CHECK(huge.out.find("is out of range") != std::string::npos);
}

TEST_CASE("promotions at once each name the version they archived, as the audit log has it") {
  Cli mms;
  for (int v = 1; v <= 5; ++v)
    REQUIRE(mms({"model", "register", "m", "--version", std::to_string(v), "--path", mms.Data("tiny.pt"), "-q"})
                .exit_code == 0);
  REQUIRE(mms({"model", "stage", "m:1", "production"}).exit_code == 0);
  std::vector<ProcResult> out(4);
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i)
    threads.emplace_back([&, i] { out[i] = mms({"--json", "model", "stage", "m:" + std::to_string(i + 2), "production"}); });
  for (auto& t : threads) t.join();
  std::set<std::string> archived;
  for (const auto& r : out) {
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    json j = json::parse(r.out);
    REQUIRE(j.contains("archived"));
    CHECK_MESSAGE(archived.insert(j["archived"].get<std::string>()).second, "archived twice: " << j["archived"]);
  }
  // Each promotion archived the one before it: all but the last production version, once each.
  std::string prod = json::parse(mms({"--json", "model", "show", "m"}).out)["ref"];
  archived.insert(prod);
  CHECK(archived == std::set<std::string>{"m:1", "m:2", "m:3", "m:4", "m:5"});
}

TEST_CASE("two registrations at once both succeed, the same one twice is a rerun, other weights get exit 6") {
  Cli mms;
  REQUIRE(mms({"model", "list"}).exit_code == 0);  // create the registry first
  for (int round = 0; round < 3; ++round) {
    ProcResult a, b;
    std::string v1 = std::to_string(round * 2 + 1), v2 = std::to_string(round * 2 + 2);
    std::thread ta([&] { a = mms({"model", "register", "m", "--version", v1, "--path", mms.Data("tiny.pt")}); });
    std::thread tb([&] { b = mms({"model", "register", "m", "--version", v2, "--path", mms.Data("tiny_v2.pt")}); });
    ta.join();
    tb.join();
    CHECK_MESSAGE(a.exit_code == 0, a.err);
    CHECK_MESSAGE(b.exit_code == 0, b.err);
  }
  // The same CI job started twice: both exit 0, one of them as a rerun
  // (it used to lose with exit 6, "register a new version number").
  for (int round = 0; round < 3; ++round) {
    ProcResult a, b;
    const std::string v = std::to_string(round + 1);
    std::thread ta([&] { a = mms({"--json", "model", "register", "dup", "--version", v, "--path", mms.Data("tiny.pt")}); });
    std::thread tb([&] { b = mms({"--json", "model", "register", "dup", "--version", v, "--path", mms.Data("tiny.pt")}); });
    ta.join();
    tb.join();
    REQUIRE_MESSAGE(a.exit_code == 0, a.out << a.err);
    REQUIRE_MESSAGE(b.exit_code == 0, b.out << b.err);
    CHECK(json::parse(a.out)["unchanged"].get<bool>() + json::parse(b.out)["unchanged"].get<bool>() <= 1);
  }
  // Other weights under the same NAME:VERSION at once: one wins, the other is refused.
  ProcResult a, b;
  std::thread ta([&] { a = mms({"model", "register", "dup", "--version", "9", "--path", mms.Data("tiny.pt")}); });
  std::thread tb([&] { b = mms({"model", "register", "dup", "--version", "9", "--path", mms.Data("tiny_v2.pt")}); });
  ta.join();
  tb.join();
  CHECK(((a.exit_code == 0 && b.exit_code == 6) || (a.exit_code == 6 && b.exit_code == 0)));
  CHECK_MESSAGE((a.err + b.err).find("is registered with other weights") != std::string::npos, a.err << b.err);
  CHECK(json::parse(mms({"--json", "model", "list"}).out).size() == 10);
  // The loser's clean-up never takes the winner's packed files.
  auto verify = mms({"model", "verify", "dup:1"});
  CHECK_MESSAGE(verify.exit_code == 0, verify.out << verify.err);
}

TEST_CASE("registration records the hash of the bytes it packed: a file changed meanwhile or damaged is refused") {
  Cli mms;
  // An mms beside an "mmsd" that rewrites the artifact just before it is
  // packed, as another job writing the file in place would: hashed as
  // tiny.pt, packed as tiny_v3.pt.
  const std::string wrap = mms.dir / "wrap", model = mms.dir / "wrap/model.pt";
  std::filesystem::create_directories(wrap);
  std::filesystem::copy_file(MmsBin(), wrap + "/mms");
  std::filesystem::copy_file(mms.Data("tiny.pt"), model);
  std::ofstream(wrap + "/mmsd") << "#!/bin/sh\n[ \"$1\" = inspect-artifact ] && cp '" << mms.Data("tiny_v3.pt") << "' '"
                                << model << "'\nexec '" << BinDir() << "/mmsd' \"$@\"\n";
  std::filesystem::permissions(wrap + "/mmsd", std::filesystem::perms::owner_all);
  auto r = Run({wrap + "/mms", "--data-dir", mms.dir / "data", "--socket", mms.dir / "none.sock", "model", "register",
                "race", "--version", "1", "--path", model},
               300);
  CHECK(r.exit_code == 6);
  CHECK(r.err.find("changed while it was being registered") != std::string::npos);
  CHECK(r.err.find("nothing was stored or registered; retry") != std::string::npos);
  CHECK(mms({"model", "show", "race:1"}).exit_code == 4);
  std::error_code ec;
  const bool left = std::filesystem::exists(mms.dir / "data/artifacts/race", ec) &&
                    !std::filesystem::is_empty(mms.dir / "data/artifacts/race", ec);
  CHECK_FALSE(left);  // no packed dir left behind
  // Run again once the file stands still: the weights served are the ones hashed.
  auto again = mms({"--json", "model", "register", "race", "--version", "1", "--path", model});
  REQUIRE(again.exit_code == 0);
  auto v3 = mms({"--json", "model", "register", "v3", "--version", "1", "--path", mms.Data("tiny_v3.pt")});
  REQUIRE(v3.exit_code == 0);
  CHECK(json::parse(again.out)["sha256"] == json::parse(v3.out)["sha256"]);

  // A byte flipped inside a tensor's record: libtorch loads it as is, the
  // archive's CRC-32 does not match. Refused, not served as other weights.
  std::string bytes = mms::ReadFile(mms.Data("tiny.pt")).value();
  const size_t at = bytes.find("data/0") + 64;
  bytes[at] = static_cast<char>(bytes[at] ^ 0x5a);
  std::ofstream(mms.dir / "crc.pt", std::ios::binary) << bytes;
  auto crc = mms({"model", "register", "crc", "--version", "1", "--path", mms.dir / "crc.pt"});
  CHECK(crc.exit_code == 2);
  CHECK(crc.err.find("is damaged: its record") != std::string::npos);
  CHECK(crc.err.find("does not match its CRC-32") != std::string::npos);
  CHECK(mms({"model", "show", "crc:1"}).exit_code == 4);
}

TEST_CASE("the sample input is read once: what is checked is what is stored, capped as a request file, and a repack "
          "that changes the inputs says so") {
  Cli mms;
  // An mmsd whose check is followed by another job rewriting the sample (a
  // one-row 1-D copy): the specs came from the first bytes, the copy stored
  // from the second, and every warm-up then failed.
  const std::string wrap = mms.dir / "wrap", sample = mms.dir / "sample.json", one = mms.dir / "one.json";
  std::filesystem::create_directories(wrap);
  std::filesystem::copy_file(MmsBin(), wrap + "/mms");
  std::filesystem::copy_file(mms.Data("tiny_input.json"), sample);
  std::ofstream(one) << R"({"x": {"dtype": "float32", "shape": [4], "data": [1, 2, 3, 4]}})";
  std::ofstream(wrap + "/mmsd") << "#!/bin/sh\n'" << BinDir() << "/mmsd' \"$@\"\nrc=$?\n[ \"$1\" = inspect-artifact ] && cp '"
                                << one << "' '" << sample << "'\nexit $rc\n";
  std::filesystem::permissions(wrap + "/mmsd", std::filesystem::perms::owner_all);
  auto r = Run({wrap + "/mms", "--json", "--data-dir", mms.dir / "data", "--socket", mms.dir / "none.sock", "model",
                "register", "t", "--version", "1", "--path", mms.Data("tiny.pt"), "--sample-input", sample},
               300);
  REQUIRE_MESSAGE(r.exit_code == 0, r.err);
  const json rec = json::parse(r.out);
  INFO(rec.dump());
  CHECK(rec["inputs"][0]["shape"] == json::array({2, 4}));
  CHECK(mms::ReadFile(rec["packed_dir"].get<std::string>() + "/sample.json").value() ==
        mms::ReadFile(mms.Data("tiny_input.json")).value());
  CHECK(mms::ReadFile(sample).value() == mms::ReadFile(one).value());  // (the rewrite did happen)

  // A sample past what a request file may be (16 x [daemon] max_message_bytes) is refused: mmsd parses it at every load.
  mms.config = "[daemon]\nmax_message_bytes = \"4KiB\"\n";
  const std::string big = mms.dir / "big.json";
  std::ofstream(big) << std::string(70 * 1024, ' ') << mms::ReadFile(mms.Data("tiny_input.json")).value();
  auto over = mms({"model", "register", "big", "--version", "1", "--path", mms.Data("tiny.pt"), "--sample-input", big});
  CHECK(over.exit_code == 2);
  CHECK_MESSAGE(over.err.find("is 70.1 KiB, over the 64.0 KiB a request file may be (16 x [daemon] max_message_bytes)") !=
                    std::string::npos, over.err);
  CHECK(mms({"model", "show", "big:1"}).exit_code == 4);
  mms.config.clear();

  // A repack with another sample changes what every request is checked
  // against: said, in its output and the audit log.
  auto rp = mms({"model", "repack", "t:1", "--sample-input", one});
  REQUIRE_MESSAGE(rp.exit_code == 0, rp.err);
  CHECK_MESSAGE(rp.out.find("inputs changed: x float32[2, 4] -> x float32[4] (requests are checked against them") !=
                    std::string::npos, rp.out);
  auto same = mms({"--json", "model", "repack", "t:1"});  // the same sample again: nothing said
  REQUIRE(same.exit_code == 0);
  CHECK_FALSE(json::parse(same.out).contains("previous_inputs"));
  const std::string two = mms.dir / "two.json";  // other rows, the same trailing shape: dim 0 is never enforced
  std::ofstream(two) << R"({"x": {"dtype": "float32", "shape": [2], "data": [1, 2]}})";
  std::ofstream(mms.dir / "four.json") << R"({"x": {"dtype": "float32", "shape": [2, 4], "data": [1, 2, 3, 4, 5, 6, 7, 8]}})";
  REQUIRE(mms({"model", "repack", "t:1", "--sample-input", mms.Data("tiny_input.json")}).exit_code == 0);
  auto rows = mms({"--json", "model", "repack", "t:1", "--sample-input", mms.dir / "four.json"});
  REQUIRE(rows.exit_code == 0);
  CHECK_FALSE(json::parse(rows.out).contains("previous_inputs"));
  // The check's errors name the user's file, not the staged copy mmsd read.
  auto bad = mms({"model", "register", "bad", "--version", "1", "--path", mms.Data("tiny.pt"), "--sample-input", two});
  CHECK(bad.exit_code == 2);
  CHECK_MESSAGE(bad.err.find("sample input " + two) != std::string::npos, bad.err);
  CHECK_MESSAGE(bad.err.find(".tmp-") == std::string::npos, bad.err);
  bool audited = false;
  for (const auto& h : json::parse(mms({"--json", "model", "history", "t"}).out))
    audited = audited || (h["action"] == "repack" &&
                          h["detail"].get<std::string>().find("; inputs x float32[2, 4] -> x float32[4]") != std::string::npos);
  CHECK(audited);

  // A batched version is checked again on the new sample; refused, the way
  // out named is turning its batching off, not registering it anew. (Rows
  // cut at the batch's longest length: a sample of zeros cannot show it.)
  const std::string zeros = mms.dir / "zeros.json", lens = mms.dir / "lens.json";
  std::ofstream(zeros) << R"({"x": {"dtype": "float32", "shape": [1, 5], "data": [0, 0, 0, 0, 0]},
                              "lengths": {"dtype": "int64", "shape": [1], "data": [4]}})";
  std::ofstream(lens) << R"({"x": {"dtype": "float32", "shape": [1, 5], "data": [1, 2, 3, 4, 5]},
                             "lengths": {"dtype": "int64", "shape": [1], "data": [4]}})";
  REQUIRE(mms({"model", "register", "len", "--version", "1", "--path", mms.Data("batch_mix_len.pt"), "--sample-input",
               zeros, "--max-batch-size", "8"})
              .exit_code == 0);
  auto refused = mms({"model", "repack", "len:1", "--sample-input", lens});
  CHECK(refused.exit_code == 2);
  CHECK_MESSAGE(refused.err.find("cannot batch: ") != std::string::npos, refused.err);
  CHECK_MESSAGE(refused.err.find("; nothing was repacked; to repack it unbatched, turn its batching off first (mms model "
                                 "batching len:1 --max-batch-size 0)") != std::string::npos, refused.err);
  CHECK(refused.err.find("register without") == std::string::npos);
}

TEST_CASE("kill -9 during registration leaves a consistent registry") {
  Cli mms;
  // A ~60 MB model makes hashing, checking and packing take a while.
  REQUIRE(Run({BinDir() + "/mms-gen-testdata", mms.dir.path(), "--big", "60"}, 300).exit_code == 0);
  REQUIRE(mms({"model", "list"}).exit_code == 0);
  std::mt19937 rng(42);
  std::string db = mms.dir / "data/registry.db";
  int registered = 0;
  for (int i = 0; i < 6; ++i) {
    Child c;
    std::string version = std::to_string(i + 1);
    REQUIRE(c.Start({MmsBin(), "--data-dir", mms.dir / "data", "model", "register", "big", "--version", version,
                     "--path", mms.dir / "big.pt", "--label", "k=v"},
                    mms.dir / "reg.log"));
    std::this_thread::sleep_for(std::chrono::milliseconds(100 + rng() % 1500));
    c.Signal(SIGKILL);
    int code = c.Wait(30);
    if (code == 0) ++registered;
    // Consistent after every kill: integrity, and each version row has its
    // labels and its audit entry (all or nothing).
    CHECK(SqlText(db, "PRAGMA integrity_check") == "ok");
    // Killed before the new registry's first commit (a loaded machine): a file
    // with no tables yet, which the next open creates the schema in.
    if (SqlInt(db, "SELECT count(*) FROM sqlite_master WHERE name = 'versions'") == 0) continue;
    int versions = SqlInt(db, "SELECT count(*) FROM versions");
    CHECK(SqlInt(db, "SELECT count(*) FROM labels") == versions);
    CHECK(SqlInt(db, "SELECT count(*) FROM audit WHERE action = 'register'") == versions);
    CHECK(SqlInt(db, "SELECT count(*) FROM versions WHERE packed_dir = ''") == 0);
  }
  // The registry still works and stale staging dirs are cleaned up.
  auto ok = mms({"model", "register", "big", "--version", "100", "--path", mms.dir / "big.pt"});
  CHECK_MESSAGE(ok.exit_code == 0, ok.err);
  for (const auto& e : std::filesystem::directory_iterator(mms.dir / "data/artifacts/big"))
    CHECK(e.path().filename().string().find(".tmp-") == std::string::npos);
  MESSAGE(registered << " of 6 killed registrations had already completed");
}

TEST_CASE("a corrupt or foreign registry file is a clear error, exit 1") {
  Cli mms;
  std::filesystem::create_directories(mms.dir / "data");
  std::ofstream(mms.dir / "data/registry.db") << std::string(8192, 'z');
  auto r = mms({"model", "list"});
  CHECK(r.exit_code == 1);
  CHECK(r.err.find("not an SQLite database") != std::string::npos);
  CHECK(r.err.find("registry.db") != std::string::npos);
}

// Runs mms as user nobody (a staging dir or data dir of another user's live
// process must look alive, an unreadable directory must be reported). Needs
// root to switch users; skipped otherwise.
TEST_CASE("as another user: a live process's staging dir is kept, an unreadable import dir is reported") {
  if (::geteuid() != 0 || !std::filesystem::exists("/usr/bin/setpriv")) {
    MESSAGE("skipped: needs root and setpriv to run mms as another user");
    return;
  }
  Cli mms;
  std::filesystem::permissions(mms.dir.path(), std::filesystem::perms(0755));
  std::string data = mms.dir / "data";
  std::string staging = data + "/artifacts/tiny/1-abc.tmp-" + std::to_string(::getpid());  // ours: root, alive
  std::filesystem::create_directories(staging);
  const int staging_fd = ::open(staging.c_str(), O_RDONLY | O_DIRECTORY);  // held, as a registration holds it
  REQUIRE(staging_fd >= 0);
  REQUIRE(::flock(staging_fd, LOCK_EX) == 0);
  std::filesystem::last_write_time(staging, std::filesystem::file_time_type::clock::now() - std::chrono::minutes(5));
  std::filesystem::create_directories(mms.dir / "repo/locked/1");
  std::filesystem::copy_file(mms.Data("tiny.pt"), mms.dir / "tiny.pt");
  std::filesystem::copy_file(mms.Data("tiny.pt"), mms.dir / "repo/locked/1/model.pt");
  std::filesystem::permissions(mms.dir / "repo/locked", std::filesystem::perms::none);
  REQUIRE(Run({"/bin/chown", "-R", "nobody:nogroup", data, mms.dir / "tiny.pt"}).exit_code == 0);
  auto as_nobody = [&](std::vector<std::string> args) {
    std::vector<std::string> argv{"/usr/bin/setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                                  MmsBin(),           "--data-dir",      data,             "--socket",
                                  mms.dir / "none.sock"};
    argv.insert(argv.end(), args.begin(), args.end());
    return Run(argv, 300, {{"HOME", mms.dir.path()}});
  };
  // kill(pid, 0) fails with EPERM for our live process: it must not count as dead.
  auto r = as_nobody({"model", "register", "tiny", "--version", "2", "--path", mms.dir / "tiny.pt"});
  INFO(r.out << r.err);
  CHECK(r.exit_code == 0);
  CHECK(std::filesystem::is_directory(staging));
  // A dead process's staging dir still goes.
  std::string dead = data + "/artifacts/tiny/1-def.tmp-999999999";
  std::filesystem::create_directories(dead);
  REQUIRE(Run({"/bin/chown", "nobody:nogroup", dead}).exit_code == 0);
  std::filesystem::last_write_time(dead, std::filesystem::file_time_type::clock::now() - std::chrono::minutes(5));
  auto r3 = as_nobody({"model", "register", "tiny", "--version", "3", "--path", mms.dir / "tiny.pt"});
  CHECK_MESSAGE(r3.exit_code == 0, r3.err);
  CHECK_FALSE(std::filesystem::exists(dead));
  CHECK(std::filesystem::is_directory(staging));
  // An import directory nobody can read is reported as skipped, exit 1.
  auto imp = as_nobody({"--json", "model", "import", mms.dir / "repo"});
  INFO(imp.out << imp.err);
  CHECK(imp.exit_code == 1);
  REQUIRE(json::accept(imp.out));
  json ij = json::parse(imp.out);
  REQUIRE(ij["skipped"].size() == 1);
  CHECK(ij["skipped"][0]["reason"].get<std::string>().find("cannot list") != std::string::npos);
  std::filesystem::permissions(mms.dir / "repo/locked", std::filesystem::perms(0755));
  ::close(staging_fd);
}

TEST_CASE("a registry locked by another writer is a conflict (exit 6) that names the fix, and nothing is written") {
  Cli mms;
  mms.config = "[registry]\nbusy_timeout = \"200ms\"\n";
  REQUIRE(mms({"model", "register", "a", "--version", "1", "--path", mms.Data("tiny.pt"), "-q"}).exit_code == 0);
  sqlite3* db;
  REQUIRE(sqlite3_open((mms.dir / "data/registry.db").c_str(), &db) == SQLITE_OK);
  REQUIRE(sqlite3_exec(db, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) == SQLITE_OK);  // holds the write lock
  auto r = mms({"model", "register", "a", "--version", "2", "--path", mms.Data("tiny.pt")});
  CHECK(r.exit_code == 6);  // not 3: the daemon is not the problem
  CHECK(r.err.find("locked by another writer") != std::string::npos);
  CHECK(r.err.find("busy_timeout") != std::string::npos);
  // Told apart from a conflict no retry changes (IN_USE: a pinned version's rm).
  auto j = mms({"--json", "model", "register", "a", "--version", "2", "--path", mms.Data("tiny.pt")});
  CHECK(j.exit_code == 6);
  CHECK(json::parse(j.out)["error"]["code"] == "LOCKED");
  REQUIRE(sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr) == SQLITE_OK);
  sqlite3_close(db);
  CHECK(SqlInt(mms.dir / "data/registry.db", "SELECT count(*) FROM versions") == 1);
  for (const auto& e : std::filesystem::directory_iterator(mms.dir / "data/artifacts/a"))
    CHECK_MESSAGE(e.path().filename().string().rfind("1-", 0) == 0, "left behind: " << e.path());
  // Once the lock is gone the same command works.
  CHECK(mms({"model", "register", "a", "--version", "2", "--path", mms.Data("tiny.pt"), "-q"}).exit_code == 0);
}

TEST_CASE("a data dir with nothing in it is not given an empty registry by a command that only reads") {
  // A mistyped --data-dir used to leave an empty registry there, and model
  // show said "unknown model" as if the name were the mistake.
  Cli mms;
  auto list = mms({"model", "list"});
  CHECK(list.exit_code == 0);
  CHECK(list.out.find("no model versions") != std::string::npos);
  CHECK_MESSAGE(list.err.find("no registry at " + mms.dir / "data" + "/registry.db") != std::string::npos, list.err);
  CHECK(json::parse(mms({"--json", "model", "list"}).out) == json::array());
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"model", "show", "tiny"}, {"model", "history", "tiny"}, {"stats", "e1"},
        {"canary", "status", "tiny"}}) {
    auto r = mms(args);
    CHECK_MESSAGE(r.exit_code == 4, (args[0] + " " + args[1] + ": " + r.err));
    CHECK(r.err.find("check --data-dir") != std::string::npos);
  }
  // Every list is empty, exit 0, with the same note (a CI script's `| jq length` on a new host).
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"limit", "list"}, {"experiment", "list"}, {"adapter", "list"}, {"canary", "list"},
        {"canary", "status"}, {"shadow", "status"}}) {
    std::vector<std::string> argv{"--json"};
    argv.insert(argv.end(), args.begin(), args.end());
    auto r = mms(argv);
    CHECK_MESSAGE(r.exit_code == 0, (args[0] + " " + args[1] + ": " + r.err));
    CHECK_MESSAGE(r.out.find("[]") != std::string::npos, (args[0] + " " + args[1] + ": " + r.out));
    CHECK(r.err.find("check --data-dir") != std::string::npos);
  }
  CHECK_FALSE(std::filesystem::exists(mms.dir / "data/registry.db"));
  // Registering creates it, as ever.
  REQUIRE(mms({"model", "register", "tiny", "--version", "1", "--path", mms.Data("tiny.pt"), "-q"}).exit_code == 0);
  CHECK(mms({"model", "show", "tiny"}).exit_code == 0);
}
