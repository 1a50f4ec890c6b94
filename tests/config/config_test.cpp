#include <doctest/doctest.h>

#include "config/config.h"
#include "core/units.h"

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
  CHECK(err("[log]\nlevel = \"loud\"\n").find("mms.toml:2: [log] level: \"loud\" is not allowed; use \"debug\"") == 0);
  CHECK(err("[daemon]\ncontexts = \"many\"\n").find("mms.toml:2: [daemon] contexts: expected an integer, got a string") == 0);
  CHECK(err("[daemon]\nshutdown_grace = \"forever\"\n").find("mms.toml:2: [daemon] shutdown_grace: invalid duration") == 0);
  CHECK(err("[daemon]\nmax_message_bytes = \"1KiB\"\n").find("out of range") != std::string::npos);
  CHECK(err("[registry]\nallowed_roots = [1]\n").find("expected an array of strings") != std::string::npos);
  CHECK(err("[shadow]\nduty_cycle = 0\n").find("mms.toml:2: [shadow] duty_cycle: 0 is out of range; allowed 0.01 to 1") == 0);
  CHECK(err("[shadow]\nduty_cycle = 1.5\n").find("out of range") != std::string::npos);
  CHECK(err("this is = not toml = at all").find("mms.toml:1:") == 0);
  CHECK(ParseConfig("[daemon]\ncontexts = 0\n", "x").status().code() == Code::kInvalidArgument);
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
  auto c = ParseConfig("[daemon]\ncontexts = 9\nshutdown_grace = \"2m\"\n[registry]\nallowed_roots = [\"/a\"]\n", "x");
  REQUIRE(c.ok());
  std::string text = RenderConfig(*c);
  auto again = ParseConfig(text, "rendered");
  REQUIRE(again.ok());
  CHECK(RenderConfig(*again) == text);
  CHECK(text.find("contexts = 9") != std::string::npos);
}

TEST_CASE("every key is documented") {
  for (const auto& k : Schema()) {
    CHECK_FALSE(k.doc.empty());
    CHECK_FALSE(k.range.empty());
    CHECK_FALSE(k.type.empty());
  }
}
