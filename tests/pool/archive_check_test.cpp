// CheckArchiveCrcs on a real TorchScript archive from testdata: intact, a
// byte flipped inside a record, truncated, and not a zip at all.
#include <doctest/doctest.h>

#include <string>

#include "core/paths.h"
#include "pool/archive_check.h"
#include "support/process.h"

using namespace mms;

TEST_CASE("an archive's records are checked against their CRC-32s") {
  auto bytes = ReadFile(testing::TestDataDir() + "/tiny.pt");
  REQUIRE(bytes.ok());
  CHECK(CheckArchiveCrcs(*bytes, "tiny.pt").ok());

  // A byte of a tensor's record (tiny/data/0: stored, its bytes verbatim after
  // the local header that names it) flipped: libtorch would load it as is.
  const size_t record = bytes->find("data/0");
  REQUIRE(record != std::string::npos);
  std::string flipped = *bytes;
  const size_t at = record + 64;  // past the name and its extra field's padding, inside the data
  REQUIRE(at < flipped.size());
  flipped[at] = static_cast<char>(flipped[at] ^ 0x5a);
  Status st = CheckArchiveCrcs(flipped, "tiny.pt");
  CHECK(st.code() == Code::kCorrupt);
  CHECK(st.message().find("tiny.pt is damaged: its record") != std::string::npos);
  CHECK(st.message().find("does not match its CRC-32") != std::string::npos);
  CHECK(st.message().find("export it again") != std::string::npos);

  // Truncated: the zip directory at the end is gone.
  Status cut = CheckArchiveCrcs(std::string_view(*bytes).substr(0, bytes->size() / 2), "half.pt");
  CHECK(!cut.ok());
  CHECK(cut.message().find("half.pt") != std::string::npos);

  Status junk = CheckArchiveCrcs("not a zip archive at all", "junk.pt");
  CHECK(junk.code() == Code::kInvalidArgument);
  CHECK(junk.message().find("not a zip file") != std::string::npos);
  CHECK(CheckArchiveCrcs("", "empty.pt").code() == Code::kInvalidArgument);
}
