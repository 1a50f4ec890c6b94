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
