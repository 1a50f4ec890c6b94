#include <doctest/doctest.h>
#include <unistd.h>
#include <sys/stat.h>

#include <map>
#include <memory>

#include "core/json.h"
#include "core/paths.h"
#include "support/process.h"

using namespace mms;

namespace {
EnvLookup FakeEnv(std::map<std::string, std::string> vars) {
  auto shared = std::make_shared<std::map<std::string, std::string>>(std::move(vars));
  return [shared](const char* k) -> const char* {
    auto it = shared->find(k);
    return it == shared->end() ? nullptr : it->second.c_str();
  };
}
}  // namespace

TEST_CASE("default data dir and socket follow XDG") {
  auto env = FakeEnv({{"XDG_DATA_HOME", "/xd"}, {"XDG_RUNTIME_DIR", "/run/user/7"}, {"HOME", "/home/u"}});
  CHECK(DefaultDataDir(env).value() == "/xd/mms");
  CHECK(DefaultSocketPath(env, "/xd/mms") == "/run/user/7/mms/mms.sock");

  auto bare = FakeEnv({{"HOME", "/home/u"}});
  CHECK(DefaultDataDir(bare).value() == "/home/u/.local/share/mms");
  // Neither set (a service without a user): refused, not a guess under /tmp.
  auto none = DefaultDataDir(FakeEnv({{"HOME", ""}}));
  REQUIRE_FALSE(none.ok());
  CHECK(none.status().code() == Code::kInvalidArgument);
  CHECK(none.status().message().find("pass --data-dir DIR") != std::string::npos);
  CHECK(DefaultSocketPath(bare, "/home/u/.local/share/mms") == "/home/u/.local/share/mms/mms.sock");

  auto empty_xdg = FakeEnv({{"HOME", "/h"}, {"XDG_RUNTIME_DIR", ""}});
  CHECK(DefaultSocketPath(empty_xdg, "/d") == "/d/mms.sock");
}

TEST_CASE("MakeDirs creates parents and gives a new leaf its mode, and leaves an existing one alone") {
  testing::TempDir t;
  std::string leaf = t / "a/b/c";
  REQUIRE(MakeDirs(leaf, 0700).ok());
  struct stat st;
  REQUIRE(::stat(leaf.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0700);
  // The umask does not narrow a new leaf's mode.
  mode_t old = ::umask(077);
  REQUIRE(MakeDirs(t / "open", 0755).ok());
  ::umask(old);
  REQUIRE(::stat((t / "open").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0755);
  // A trailing slash names the same leaf (it was created as a parent, 0755).
  REQUIRE(MakeDirs(t / "slash/", 0700).ok());
  REQUIRE(::stat((t / "slash").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0700);
  // A directory that was there keeps its mode: mmsd closed a shared socket
  // directory (--socket /run/x.sock) to everyone else.
  ::chmod(leaf.c_str(), 0755);
  REQUIRE(MakeDirs(leaf, 0700).ok());
  REQUIRE(::stat(leaf.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0755);
}

TEST_CASE("atomic write and canonical paths") {
  testing::TempDir t;
  std::string f = t / "x.txt";
  REQUIRE(WriteFileAtomic(f, "hello").ok());
  CHECK(ReadFile(f).value() == "hello");
  REQUIRE(WriteFileAtomic(f, "bye").ok());
  CHECK(ReadFile(f).value() == "bye");
  CHECK(ReadFile(t / "missing").status().code() == Code::kNotFound);
  REQUIRE(MakeDirs(t / "d", 0755).ok());
  auto canon = CanonicalPath(t / "d/../x.txt");
  REQUIRE(canon.ok());
  CHECK(*canon == CanonicalPath(f).value());
  CHECK(CanonicalPath(t / "nope").status().code() == Code::kNotFound);
  CHECK(DirName("/a/b/c") == "/a/b");
  CHECK(BaseName("/a/b/c") == "c");
  CHECK(JoinPath("/a/", "b") == "/a/b");
  CHECK(JoinPath("/a", "/abs") == "/abs");
  char cwd[4096];
  REQUIRE(::getcwd(cwd, sizeof cwd) != nullptr);
  CHECK(AbsolutePath("/x/y") == "/x/y");
  CHECK(AbsolutePath("d") == std::string(cwd) + "/d");
  CHECK(AbsolutePath("./d/e") == std::string(cwd) + "/d/e");
  CHECK(AbsolutePath(".") == std::string(cwd));
  CHECK(AbsolutePath("d/../e/./f") == std::string(cwd) + "/e/f");
  CHECK(AbsolutePath("") == "");
}

TEST_CASE("SamePath: the same file name in the same resolved directory, existing or not") {
  mms::testing::TempDir t;
  REQUIRE(MakeDirs(t / "d", 0700).ok());
  REQUIRE(::symlink((t / "d").c_str(), (t / "link").c_str()) == 0);
  CHECK(SamePath(t / "d/registry.db", t / "link/registry.db"));  // neither exists: compared by directory
  CHECK(SamePath(t / "d/registry.db", t / "d/../d/registry.db"));
  CHECK_FALSE(SamePath(t / "d/registry.db", t / "d/other.db"));
  CHECK_FALSE(SamePath(t / "d/registry.db", t / "registry.db"));
  CHECK(SamePath(t / "gone/x", t / "gone/x"));  // unresolvable: as given
  CHECK_FALSE(SamePath(t / "gone/x", t / "gone/../gone/x"));
}

TEST_CASE("ReadFile: a cap on what it reads, a FIFO with no writer read as empty, a directory refused") {
  testing::TempDir dir;
  const std::string f = dir / "f.txt";
  REQUIRE(WriteFileAtomic(f, std::string(100, 'x')).ok());
  CHECK(ReadFile(f)->size() == 100);
  CHECK(ReadFile(f, 100)->size() == 100);
  auto over = ReadFile(f, 99);
  CHECK(over.status().code() == Code::kInvalidArgument);
  CHECK(over.status().message().find("holds more than 99 B") != std::string::npos);
  // A device never ends: the cap stops it.
  auto zero = ReadFile("/dev/zero", 1 << 20);
  CHECK(zero.status().code() == Code::kInvalidArgument);
  CHECK(zero.status().message().find("not a regular file") != std::string::npos);
  // A FIFO nobody writes to: no wait for a writer (this hung before).
  const std::string fifo = dir / "fifo";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  auto empty = ReadFile(fifo, 1 << 20);
  REQUIRE(empty.ok());
  CHECK(empty->empty());
  CHECK(ReadFile(dir.path()).status().code() == Code::kInvalidArgument);
  CHECK(ReadFile(dir / "none").status().code() == Code::kNotFound);
}

TEST_CASE("ParseJsonStrict: a key twice and nesting past the limit are refused") {
  CHECK(ParseJsonStrict(R"({"a": 1, "b": {"c": [1, 2]}})").ok());
  auto twice = ParseJsonStrict(R"({"r": 4, "r": 8})");
  CHECK(twice.status().message().find("the key 'r' appears twice") != std::string::npos);
  auto nested = [](int n) { return std::string(static_cast<size_t>(n), '[') + std::string(static_cast<size_t>(n), ']'); };
  CHECK(ParseJsonStrict(nested(kMaxJsonDepth)).ok());
  auto deep = ParseJsonStrict(nested(100000));
  CHECK(deep.status().code() == Code::kInvalidArgument);
  CHECK(deep.status().message().find("nested deeper than 64 levels") != std::string::npos);
  auto bad = ParseJsonStrict("{\"a\": ");
  CHECK(bad.status().message().find("not valid JSON") != std::string::npos);
}
