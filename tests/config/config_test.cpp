#include <doctest/doctest.h>

#include "config/config.h"
#include "core/units.h"
#include "support/process.h"

#include <filesystem>
#include <fstream>

using namespace mms;

TEST_CASE("no file means built-in defaults") {
  auto c = ParseConfig("", "mms.toml");
  REQUIRE(c.ok());
  CHECK(c->daemon.contexts == 256);
  CHECK(c->daemon.max_message_bytes == 256ull << 20);
  CHECK(c->daemon.shutdown_grace_ns == 10'000'000'000);
  CHECK(c->log.level == "info");
  CHECK(c->registry.poll_interval_ns == 250'000'000);
}

TEST_CASE("values parse") {
  auto c = ParseConfig(R"(
[daemon]
socket = "/tmp/x.sock"
max_message_bytes = "1GiB"
shutdown_grace = "3s"
contexts = 8
[log]
level = "debug"
format = "json"
[registry]
allowed_roots = ["/models", "/srv/models"]
)", "mms.toml");
  REQUIRE(c.ok());
  CHECK(c->daemon.socket == "/tmp/x.sock");
  CHECK(c->daemon.max_message_bytes == 1ull << 30);
  CHECK(c->daemon.shutdown_grace_ns == 3'000'000'000);
  CHECK(c->daemon.contexts == 8);
  CHECK(c->log.format == "json");
  CHECK(c->registry.allowed_roots == std::vector<std::string>{"/models", "/srv/models"});
}

TEST_CASE("bad config is refused with file:line and what is allowed") {
  auto err = [](const std::string& text) { return ParseConfig(text, "mms.toml").status().message(); };
  CHECK(err("[daemon]\ncontexts = 0\n") == "mms.toml:2: [daemon] contexts: 0 is out of range; allowed 1 to 65536");
  CHECK(err("[daemon]\n\nsokcet = \"x\"\n").find("mms.toml:3: unknown key 'sokcet' in [daemon]; did you mean 'socket'?") == 0);
  CHECK(err("[deamon]\n").find("mms.toml:1: unknown table [deamon]") == 0);
  // What toml++ 3.3.0 mishandles (undefined behaviour, found by fuzzing) is refused before it parses.
  CHECK(err("\xC9\xAB").find("mms.toml:1: a non-ASCII character outside a string or comment") == 0);
  CHECK(err("\xEF\xBB\xBB[daemon]\n").find("mms.toml:1: a non-ASCII character") == 0);
  CHECK(err(std::string("[daemon]\n[\0", 11)).find("mms.toml:2: control character 0x00") == 0);
  CHECK(err("[[[1]]]\n").find("mms.toml:1: a table header starts with [[[") == 0);
  CHECK(err("[log]\nfile = '/tmp/caf\xC3\xA9'\n").find("mms.toml:2: a non-ASCII character in a 'literal' string") == 0);
  CHECK(err("[log]\nfile = \"/tmp/\xC3\x28\"\n").find("mms.toml:2: invalid UTF-8") == 0);
  // Non-ASCII text in "strings" (kept as it is) and comments, and a byte order mark, are fine.
  auto fine = ParseConfig("\xEF\xBB\xBF# caf\xC3\xA9\n[log]\nfile = \"/var/log/caf\xC3\xA9-\xF0\x9F\x98\x80.log\" # \xC3\xA9\n",
                          "mms.toml");
  REQUIRE_MESSAGE(fine.ok(), fine.status().ToString());
  CHECK(fine->log.file == "/var/log/caf\xC3\xA9-\xF0\x9F\x98\x80.log");
  // A key outside any table is not called an unknown table.
  CHECK(err("x = 1\n").find("mms.toml:1: 'x' is a key outside any table; every setting belongs to a table") == 0);
  CHECK(err("[log]\nlevel = \"loud\"\n").find("mms.toml:2: [log] level: \"loud\" is not allowed; use \"debug\"") == 0);
  CHECK(err("[daemon]\ncontexts = \"many\"\n").find("mms.toml:2: [daemon] contexts: expected an integer, got a string") == 0);
  CHECK(err("[log]\nlevel = 3\n").find("expected a string, got an integer") != std::string::npos);  // (was "a integer")
  CHECK(err("[daemon]\nshutdown_grace = \"forever\"\n").find("mms.toml:2: [daemon] shutdown_grace: invalid duration") == 0);
  CHECK(err("[daemon]\nmax_message_bytes = \"1KiB\"\n").find("out of range") != std::string::npos);
  CHECK(err("[registry]\nallowed_roots = [1]\n").find("expected an array of strings") != std::string::npos);
  // "" allowed any path, and a relative root depended on each command's working directory.
  for (const char* root : {"\"\"", "\"models\"", "\"./m\""})
    CHECK(err(std::string("[registry]\nallowed_roots = [\"/srv\", ") + root + "]\n")
              .find("[registry] allowed_roots: '") != std::string::npos);
  CHECK(err("[registry]\nallowed_roots = [\"td\"]\n").find("'td' is not an absolute directory") != std::string::npos);
  CHECK(err("[shadow]\nduty_cycle = 0\n").find("mms.toml:2: [shadow] duty_cycle: 0 is out of range; allowed 0.01 to 1") == 0);
  CHECK(err("[shadow]\nduty_cycle = 1.5\n").find("out of range") != std::string::npos);
  // A rate limit is 0 (none) or at least one request in 11.6 days: 5e-324 would be a stop in disguise.
  CHECK(err("[limits]\ntenant_qps = 5e-324\n").find("mms.toml:2: [limits] tenant_qps: 5e-324 is out of range") == 0);
  CHECK(err("[limits]\nmodel_qps = 0.0000001\n") ==
        "mms.toml:2: [limits] model_qps: 1e-07 is out of range; allowed 0 (none), or 1e-6 to 1e9 (1e-6 is one request in 11.6 days)");
  CHECK(err("[limits]\nmodel_qps = -1\n").find("allowed 0 (none), or 1e-6 to 1e9") != std::string::npos);
  CHECK(ParseConfig("[limits]\nmodel_qps = 0\ntenant_qps = 0.000001\n", "x").ok());
  CHECK(err("this is = not toml = at all").find("mms.toml:1:") == 0);
  CHECK(err("[scheduler]\nhigh_priority = [\"a\", \"b\"]\nlow_priority = [\"b\"]\n") ==
        "mms.toml: [scheduler] 'b' is in both high_priority and low_priority; keep it in one of them");
  CHECK(ParseConfig("[daemon]\ncontexts = 0\n", "x").status().code() == Code::kInvalidArgument);
  // Entries that can never name a model: refused with the file, not a warning at run time.
  CHECK(err("[pool]\npinned = [\"rec\", \"Bad Name\"]\n").find("mms.toml:2: [pool] pinned: \"Bad Name\": invalid model name") ==
        0);
  CHECK(err("[pool]\npinned = [\"rec:01\"]\n").find("mms.toml:2: [pool] pinned: \"rec:01\": ") == 0);
  CHECK(err("[scheduler]\nlow_priority = [\"rec:1\"]\n").find("[scheduler] low_priority: \"rec:1\": invalid model name") !=
        std::string::npos);
  CHECK(ParseConfig("[pool]\npinned = [\"rec\", \"rec:3\", \"rec@champion\"]\n[scheduler]\nhigh_priority = [\"a.b-c_1\"]\n", "x")
            .ok());
}

// Every documented default must be what the code actually uses: apply each
// key's documented default and check the whole config is still the built-in one.
TEST_CASE("documented defaults equal the built-in defaults") {
  const std::string builtin = RenderConfig(Config{});
  for (const auto& k : Schema()) {
    std::string text = "[" + k.table + "]\n" + k.key + " = " + k.default_text + "\n";
    auto c = ParseConfig(text, "defaults");
    INFO(k.table << "." << k.key << " = " << k.default_text);
    REQUIRE(c.ok());
    CHECK(RenderConfig(*c) == builtin);
  }
}

TEST_CASE("a rendered config parses back to itself") {
  auto c = ParseConfig("[daemon]\ncontexts = 9\nshutdown_grace = '2m'\n[registry]\nallowed_roots = [\"/a\"]\n", "x");
  REQUIRE(c.ok());
  std::string text = RenderConfig(*c);
  auto again = ParseConfig(text, "rendered");
  REQUIRE(again.ok());
  CHECK(RenderConfig(*again) == text);
  CHECK(text.find("contexts = 9") != std::string::npos);
  // Durations and sizes in the units a person writes, not ns and bytes.
  CHECK(text.find("shutdown_grace = '2m'") != std::string::npos);
  CHECK(text.find("max_message_bytes = '256MiB'") != std::string::npos);
}

TEST_CASE("every key is documented") {
  for (const auto& k : Schema()) {
    CHECK_FALSE(k.doc.empty());
    CHECK_FALSE(k.range.empty());
    CHECK_FALSE(k.type.empty());
  }
}

TEST_CASE("[metrics] address needs a numeric port from 1 to 65535") {
  auto parse = [](const std::string& addr) { return ParseConfig("[metrics]\naddress = \"" + addr + "\"\n", "mms.toml"); };
  for (const char* good : {"", "127.0.0.1:9464", ":9464", "9464", "0.0.0.0:1", "localhost:65535"}) {
    INFO(good);
    CHECK(parse(good).ok());
  }
  // One address, one spelling: a reload from ":9464" to "9464" is no change needing a restart.
  for (const char* same : {"127.0.0.1:9464", ":9464", "9464", "127.0.0.1:09464"})
    CHECK(parse(same)->metrics.address == "127.0.0.1:9464");
  CHECK(parse("[::1]:9464")->metrics.address == "[::1]:9464");
  // Once accepted here and then thrown on by the daemon at start (std::stoul overflow).
  for (const char* bad : {"127.0.0.1:99999999999999999999999", "127.0.0.1:65536", "127.0.0.1:0", "127.0.0.1:",
                          "127.0.0.1:http", "127.0.0.1:-1", "host", "1:2:x", "127.0.0.1: 80"}) {
    auto c = parse(bad);
    INFO(bad << " → " << c.status().message());
    REQUIRE_FALSE(c.ok());
    CHECK(c.status().code() == Code::kInvalidArgument);
    CHECK(c.status().message().find("mms.toml:2: [metrics] address:") == 0);
    CHECK(c.status().message().find("HOST:PORT") != std::string::npos);
  }
  auto hp = ParseHostPort(":9464");
  REQUIRE(hp.ok());
  CHECK(hp->host == "127.0.0.1");
  CHECK(hp->port == 9464);
  CHECK(ParseHostPort("10.0.0.1:00080")->port == 80);
  CHECK_FALSE(ParseHostPort(std::string(1000, '9')).ok());
  // IPv6 in brackets; bare, the colons are ambiguous.
  auto v6 = ParseHostPort("[::1]:9464");
  REQUIRE(v6.ok());
  CHECK(v6->host == "::1");
  CHECK(v6->port == 9464);
  auto bare = ParseHostPort("::1:9464");
  REQUIRE_FALSE(bare.ok());
  CHECK(bare.status().message().find("needs brackets") != std::string::npos);
  CHECK_FALSE(ParseHostPort("[::1]9464").ok());
  CHECK_FALSE(ParseHostPort("[nope]:9464").ok());
  // A URL was called an IPv6 address without brackets.
  auto url = ParseHostPort("http://127.0.0.1:9000");
  REQUIRE_FALSE(url.ok());
  CHECK(url.status().message().find("without a scheme or path") != std::string::npos);
}

TEST_CASE("[pool] devices are auto, cpu, cpu:N or cuda:N") {
  auto parse = [](const std::string& v) { return ParseConfig("[pool]\ndevices = " + v + "\n", "mms.toml"); };
  for (const char* good : {"\"auto\"", "[\"auto\"]", "[\"cpu\"]", "[\"cpu:0\", \"cpu:1\"]", "[\"cuda:0\", \"cuda:12\"]"}) {
    INFO(good);
    CHECK(parse(good).ok());
  }
  for (const char* bad : {"[\"cuda:x\"]", "[\"cuda:\"]", "[\"cpu:\"]", "[\"cpu:-1\"]", "[\"cuda:0 \"]", "[\"gpu:0\"]",
                          "[\"cuda:1x\"]", "[\"auto\", \"cpu\"]", "\"cuda:0\"", "[\"cpu\", \"cpu\"]",
                          "[\"cuda:0\", \"cuda:1\", \"cuda:0\"]", "[\"cuda:01\"]"}) {
    auto c = parse(bad);
    INFO(bad << " → " << c.status().message());
    REQUIRE_FALSE(c.ok());
    CHECK(c.status().message().find("mms.toml:2: [pool] devices:") == 0);
  }
  CHECK(parse("[\"cuda:x\"]").status().message().find("unknown device 'cuda:x'; use cpu, cpu:N or cuda:N") !=
        std::string::npos);
  // Twice was two arenas, two budgets, on one device.
  CHECK(parse("[\"cpu:0\", \"cpu:0\"]").status().message().find("device 'cpu:0' is listed twice") != std::string::npos);
}

TEST_CASE("[scheduler] max_queue_delay allows 0 to 10s, the range of a version's own delay") {
  CHECK(ParseConfig("[scheduler]\nmax_queue_delay = \"10s\"\n", "x").ok());
  CHECK(ParseConfig("[scheduler]\nmax_queue_delay = \"0ms\"\n", "x").ok());
  CHECK_FALSE(ParseConfig("[scheduler]\nmax_queue_delay = \"10001ms\"\n", "x").ok());
  CHECK(kMaxQueueDelayMaxNs == 10'000'000'000);
}

TEST_CASE("a config file's relative paths are the file's directory's, whatever the working directory") {
  testing::TempDir dir;
  std::ofstream(dir / "mms.toml") << "[daemon]\ndata_dir = \"p5\"\nsocket = \"p5/mms.sock\"\n"
                                     "[registry]\npath = \"../shared/registry.db\"\n[log]\nfile = \"/var/log/mms.log\"\n";
  auto c = LoadConfigFile(dir / "mms.toml");
  REQUIRE(c.ok());
  CHECK(c->daemon.data_dir == dir / "p5");
  CHECK(c->daemon.socket == "p5/mms.sock");  // as given: a unix socket path is short
  CHECK(c->registry.path == dir / "../shared/registry.db");
  CHECK(c->log.file == "/var/log/mms.log");  // absolute: as given
  // Given by a relative name itself: still the file's directory.
  const std::string cwd = std::filesystem::current_path().string();
  std::filesystem::current_path(dir.path());
  auto rel = LoadConfigFile("mms.toml");
  std::filesystem::current_path(cwd);
  REQUIRE(rel.ok());
  CHECK(rel->daemon.data_dir == dir / "p5");
  // Text parsed without a file keeps them as written.
  CHECK(ParseConfig("[daemon]\ndata_dir = \"p5\"\n", "text")->daemon.data_dir == "p5");
}
