// The man pages cannot drift from the code: every CLI command (found by
// walking `mms --help`) has its section in mms.1, every mms.toml key its
// entry in mms.toml.5, and each page renders with man -l.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "config/config.h"
#include "support/process.h"

using namespace mms::testing;

namespace {

std::string ReadText(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Subcommand names listed by `mms <path> --help`.
std::vector<std::string> Subcommands(const std::vector<std::string>& path) {
  std::vector<std::string> argv{MmsBin()};
  argv.insert(argv.end(), path.begin(), path.end());
  argv.push_back("--help");
  auto r = Run(argv);
  std::vector<std::string> out;
  std::istringstream in(r.out);
  std::string line;
  bool in_section = false;
  while (std::getline(in, line)) {
    if (line.rfind("Subcommands:", 0) == 0) {
      in_section = true;
      continue;
    }
    if (!in_section) continue;
    if (line.empty() || line[0] != ' ') break;
    std::istringstream words(line);
    std::string name;
    words >> name;
    if (!name.empty()) out.push_back(name);
  }
  return out;
}

void Walk(std::vector<std::string> path, std::vector<std::string>* commands) {
  auto subs = Subcommands(path);
  if (subs.empty() && !path.empty()) {
    std::string c = "mms";
    for (const auto& p : path) c += " " + p;
    commands->push_back(c);
  }
  for (const auto& s : subs) {
    auto next = path;
    next.push_back(s);
    Walk(next, commands);
  }
}

}  // namespace

TEST_CASE("every mms command has its section in mms.1") {
  std::vector<std::string> commands;
  Walk({}, &commands);
  REQUIRE(commands.size() > 10);
  std::string page = ReadText(std::string(MMS_SOURCE_DIR) + "/man/mms.1");
  for (const auto& c : commands) {
    INFO(c);
    CHECK(page.find(".SS " + c) != std::string::npos);
  }
}

TEST_CASE("every mms.toml key is documented in mms.toml.5 under its table") {
  std::string page = ReadText(std::string(MMS_SOURCE_DIR) + "/man/mms.toml.5");
  for (const auto& k : mms::Schema()) {
    INFO("[" << k.table << "] " << k.key);
    size_t section = page.find(".SH [" + k.table + "]");
    REQUIRE(section != std::string::npos);
    size_t end = page.find("\n.SH ", section + 1);
    std::string body = page.substr(section, end == std::string::npos ? std::string::npos : end - section);
    CHECK(body.find("\\fB" + k.key + "\\fR = " + k.default_text) != std::string::npos);
  }
}

TEST_CASE("the man pages render") {
  for (const char* page : {"mms.1", "mmsd.8", "mms.toml.5"}) {
    INFO(page);
    auto r = Run({"/usr/bin/man", "-l", std::string(MMS_SOURCE_DIR) + "/man/" + page}, 60,
                 {{"MANPAGER", "cat"}, {"MANWIDTH", "80"}});
    CHECK(r.exit_code == 0);
    CHECK(r.out.size() > 1000);
    CHECK(r.err.find("warning") == std::string::npos);
  }
}

// ctest gets one test per TEST_CASE by name, and a ';' in a name splits it
// into CMake list items: the halves match nothing and "pass" without running.
TEST_CASE("no test case name holds a semicolon (ctest would run nothing for it)") {
  int names = 0;
  for (const auto& e : std::filesystem::recursive_directory_iterator(std::string(MMS_SOURCE_DIR) + "/tests")) {
    if (e.path().extension() != ".cpp") continue;
    std::istringstream in(ReadText(e.path().string()));
    std::string line;
    while (std::getline(in, line)) {
      auto p = line.find("TEST_CASE(\"");
      if (p == std::string::npos) continue;
      ++names;
      std::string name = line.substr(p + 11, line.find('"', p + 11) - p - 11);
      INFO(e.path().filename().string() << ": " << name);
      CHECK(name.find(';') == std::string::npos);
    }
  }
  CHECK(names > 150);
}
