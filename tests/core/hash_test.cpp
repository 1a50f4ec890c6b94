#include <doctest/doctest.h>

#include <fstream>

#include "core/hash.h"
#include "support/process.h"

using namespace mms;

// Known digests (RFC 1321 test suite; FIPS 180-2 examples).
TEST_CASE("md5 and sha256 match published test vectors") {
  auto d = Md5("abc");
  CHECK(ToHex(d.data(), d.size()) == "900150983cd24fb0d6963f7d28e17f72");
  auto e = Md5("");
  CHECK(ToHex(e.data(), e.size()) == "d41d8cd98f00b204e9800998ecf8427e");
  CHECK(Sha256Hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST_CASE("sha256 of a file streams and reports progress") {
  testing::TempDir t;
  std::string p = t / "f.bin";
  std::string data(9 << 20, 'x');
  std::ofstream(p, std::ios::binary) << data;
  uint64_t last = 0, total = 0;
  int calls = 0;
  auto h = Sha256File(p, [&](uint64_t done, uint64_t tot) {
    last = done;
    total = tot;
    ++calls;
  });
  REQUIRE(h.ok());
  CHECK(*h == Sha256Hex(data));
  CHECK(last == data.size());
  CHECK(total == data.size());
  CHECK(calls >= 3);
  CHECK(Sha256File(t / "missing").status().code() == Code::kNotFound);
}
