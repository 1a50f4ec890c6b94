#include <doctest/doctest.h>

#include <cmath>
#include <fstream>
#include <sstream>

#include "rollout/assignment.h"

using namespace mms;

// ../shared/testvectors/ab_assignment.tsv, copied into testdata/vectors:
// buckets computed by the seed's own Python router.
TEST_CASE("sticky buckets match all of the seed's test vectors") {
  std::ifstream in(std::string(MMS_SOURCE_DIR) + "/testdata/vectors/ab_assignment.tsv");
  REQUIRE(in);
  std::string line;
  int checked = 0;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    auto t1 = line.find('\t');
    auto t2 = line.find('\t', t1 + 1);
    REQUIRE(t1 != std::string::npos);
    REQUIRE(t2 != std::string::npos);
    std::string exp = line.substr(0, t1), user = line.substr(t1 + 1, t2 - t1 - 1);
    int bucket = std::stoi(line.substr(t2 + 1));
    INFO(exp << " : " << user);
    CHECK(SeedBucket(exp, user) == bucket);
    ++checked;
  }
  CHECK(checked == 242);
}

TEST_CASE("treatment iff bucket < percent × 100, ramping up never moves a treated user back") {
  CHECK(PercentToBasisPoints(10).value() == 1000);
  CHECK(PercentToBasisPoints(0.5).value() == 50);
  CHECK(PercentToBasisPoints(33.33).value() == 3333);
  // Percentages finer than a basis point follow the seed's real comparison.
  CHECK(PercentToBasisPoints(33.333).value() == 3334);
  CHECK(PercentToBasisPoints(0.005).value() == 1);
  for (double p : {0.005, 0.01, 1.0 / 3, 12.345, 33.333, 57.77, 99.995})
    for (int b = 0; b < 10000; ++b) {
      INFO(p << "% bucket " << b);
      REQUIRE(IsTreatment(b, PercentToBasisPoints(p).value()) == (b < p * 100));
    }
  CHECK(PercentToBasisPoints(100).value() == 10000);
  CHECK_FALSE(PercentToBasisPoints(-1).ok());
  CHECK_FALSE(PercentToBasisPoints(100.5).ok());
  CHECK_FALSE(PercentToBasisPoints(std::nan("")).ok());
  int treated_at_5 = 0, treated_at_10 = 0, moved_back = 0;
  for (int u = 0; u < 20000; ++u) {
    int b = SeedBucket("exp-ramp", "user-" + std::to_string(u));
    bool at5 = IsTreatment(b, 500), at10 = IsTreatment(b, 1000);
    treated_at_5 += at5;
    treated_at_10 += at10;
    moved_back += at5 && !at10;
  }
  CHECK(moved_back == 0);
  CHECK(treated_at_5 == doctest::Approx(1000).epsilon(0.1));
  CHECK(treated_at_10 == doctest::Approx(2000).epsilon(0.1));
}

TEST_CASE("experiment ids") {
  CHECK(ValidateExperimentId("exp-rec-v13").ok());
  CHECK(ValidateExperimentId("canary_rec-v2").ok());
  CHECK_FALSE(ValidateExperimentId("").ok());
  CHECK_FALSE(ValidateExperimentId("has space").ok());
  CHECK_FALSE(ValidateExperimentId(std::string(129, 'a')).ok());
  // A leading '-' reads as an option: `mms experiment stop --foo` could not name it.
  CHECK_FALSE(ValidateExperimentId("--foo").ok());
  CHECK(ValidateExperimentId("a--foo").ok());
  // The seed's ids may be Unicode (a test vector is "Ünïcode-exp"); broken or invisible UTF-8 is not an id.
  CHECK(ValidateExperimentId("Ünïcode-exp").ok());
  CHECK(ValidateExperimentId("実験-1").ok());
  CHECK_FALSE(ValidateExperimentId("\xc3").ok());                      // truncated
  CHECK_FALSE(ValidateExperimentId("\xc0\xae").ok());                 // overlong '.'
  CHECK_FALSE(ValidateExperimentId("a\xc2\xa0" "b").ok());           // no-break space
  CHECK_FALSE(ValidateExperimentId("a\xe2\x80\x8b" "b").ok());      // zero-width space
  CHECK_FALSE(ValidateExperimentId("\xed\xa0\x80").ok());            // a surrogate
  CHECK_FALSE(ValidateExperimentId("a\xc2\x85").ok());                // a C1 control
}
