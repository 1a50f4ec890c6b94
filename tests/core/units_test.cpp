#include <doctest/doctest.h>

#include "core/units.h"

using namespace mms;

TEST_CASE("durations parse with units and refuse garbage") {
  CHECK(ParseDurationNanos("250ms").value() == 250'000'000);
  CHECK(ParseDurationNanos("30m").value() == 1'800'000'000'000);
  CHECK(ParseDurationNanos("1.5s").value() == 1'500'000'000);
  CHECK(ParseDurationNanos("10").value() == 10'000'000'000);
  CHECK(ParseDurationNanos("2h").value() == 7'200'000'000'000);
  CHECK(ParseDurationNanos("5us").value() == 5'000);
  CHECK_FALSE(ParseDurationNanos("").ok());
  CHECK_FALSE(ParseDurationNanos("ten seconds").ok());
  CHECK_FALSE(ParseDurationNanos("5 fortnights").ok());
  auto neg = ParseDurationNanos("-1s");
  REQUIRE_FALSE(neg.ok());
  CHECK(neg.status().message().find("negative") != std::string::npos);
  // Several parts sum, as FormatDurationNanos writes them in messages.
  CHECK(ParseDurationNanos("1m30s").value() == 90'000'000'000);
  CHECK(ParseDurationNanos("1h 30m").value() == 5'400'000'000'000);
  CHECK(ParseDurationNanos("1.5h").value() == 5'400'000'000'000);
  for (int64_t ns : {int64_t{150'000'000'000}, int64_t{3'600'000'000'000}, int64_t{600'000'000'000},
                     int64_t{2'592'000'000'000'000}})
    CHECK(ParseDurationNanos(FormatDurationNanos(ns)).value() == ns);
  for (const char* bad : {"1m30", "1m-30s", "30s5", "0x10s", "nan", "infs", "1..5s", "m", "1m 30 fortnights"})
    CHECK_MESSAGE(!ParseDurationNanos(bad).ok(), bad);
  // Integers exactly, past a double's 53 bits; too long refused, not wrapped.
  CHECK(ParseDurationNanos("17280000000000001ns").value() == 17'280'000'000'000'001);
  CHECK(ParseDurationNanos("100000000000000000000e-20s").value() == 1'000'000'000);  // (a double, as before)
  CHECK(ParseDurationNanos("200000d").status().message().find("too long") != std::string::npos);
  CHECK(ParseDurationNanos("99999999999999999999999h").status().message().find("too long") != std::string::npos);
  // Sizes likewise: exact to 2^64 - 1, refused beyond (1e19 read as 2^63 before).
  CHECK(ParseBytes("18446744073709551615").value() == 18'446'744'073'709'551'615ull);
  CHECK(ParseBytes("1e19").value() == 10'000'000'000'000'000'000ull);
  CHECK(ParseBytes("9007199254740993 B").value() == 9'007'199'254'740'993ull);
  for (const char* big : {"18446744073709551616", "2e19", "16777216TiB"})
    CHECK_MESSAGE(ParseBytes(big).status().message().find("too large") != std::string::npos, big);
}

TEST_CASE("byte sizes parse SI and IEC units") {
  CHECK(ParseBytes("1048576").value() == 1048576);
  CHECK(ParseBytes("8GiB").value() == 8ull << 30);
  CHECK(ParseBytes("512 MiB").value() == 512ull << 20);
  CHECK(ParseBytes("1.5GB").value() == 1'500'000'000ull);
  CHECK(ParseBytes("2kb").value() == 2000);
  CHECK_FALSE(ParseBytes("12 parsecs").ok());
  CHECK_FALSE(ParseBytes("-5MiB").ok());
}

TEST_CASE("formatting is human-readable") {
  CHECK(FormatBytes(17) == "17 B");
  CHECK(FormatBytes(1536) == "1.50 KiB");
  CHECK(FormatBytes(850ull << 20) == "850 MiB");
  CHECK(FormatDurationNanos(850'000) == "850 µs");
  CHECK(FormatDurationNanos(12'300'000) == "12.3 ms");
  CHECK(FormatDurationNanos(150'000'000'000) == "2m30s");
}

TEST_CASE("did-you-mean suggestions") {
  std::vector<std::string> names{"rec-eu-west", "rec-us", "spam"};
  CHECK(ClosestMatch("rec-eu", names) == "rec-eu-west");
  CHECK(ClosestMatch("spma", names) == "spam");
  CHECK(ClosestMatch("totally-different", names) == "");
  CHECK(EditDistance("kitten", "sitting") == 3);
}

TEST_CASE("split trims pieces") {
  auto v = Split(" a, b ,c,", ',');
  REQUIRE(v.size() == 4);
  CHECK(v[0] == "a");
  CHECK(v[1] == "b");
  CHECK(v[2] == "c");
  CHECK(v[3] == "");
}

TEST_CASE("exact durations and sizes read back to the same value, in the largest unit that divides them") {
  CHECK(ExactDuration(250'000'000) == "250ms");
  CHECK(ExactDuration(1'800'000'000'000) == "30m");
  CHECK(ExactDuration(7'200'000'000'000) == "2h");
  CHECK(ExactDuration(1'500'000) == "1500us");
  CHECK(ExactDuration(1'001) == "1001ns");
  CHECK(ExactDuration(0) == "0s");
  CHECK(ExactBytes(8ull << 30) == "8GiB");
  CHECK(ExactBytes(3ull << 40) == "3TiB");
  CHECK(ExactBytes(1536) == "1536B");
  // Decimal sizes as written ("2GB" came back as 1953125KiB).
  CHECK(ExactBytes(2'000'000'000) == "2GB");
  CHECK(ExactBytes(500'000'000) == "500MB");
  CHECK(ExactBytes(64ull << 20) == "64MiB");
  CHECK(ExactBytes(1'024'000) == "1000KiB");  // 1024KB too: the smaller number wins
  CHECK(ExactBytes(0) == "0B");
  for (int64_t ns : {int64_t{1}, int64_t{999}, int64_t{1'000}, int64_t{61'000'000'000}, int64_t{90'000'000'000'000}})
    CHECK(ParseDurationNanos(ExactDuration(ns)).value() == ns);
  for (uint64_t b : {uint64_t{0}, uint64_t{1}, uint64_t{1023}, uint64_t{4096}, uint64_t{256} << 20, (uint64_t{1} << 42) + 1024})
    CHECK(ParseBytes(ExactBytes(b)).value() == b);
}
