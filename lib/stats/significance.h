// Significance tests for comparing an experiment's variants, with the
// distributions from Boost.Math (Debian's libboost-dev):
//
//   TwoProportionZTest  error rates, conversion rates: pooled z-test, and an
//                       unpooled (Wald) confidence interval for p2 − p1
//   WelchTTest          latency means with unequal variances
//                       (Welch–Satterthwaite degrees of freedom)
//   SampleRatioMismatch chi-square goodness of fit of the observed split
//                       against the configured one (1 degree of freedom)
//
// "2" is the treatment, "1" the control: differences are treatment − control.
// Degenerate inputs give a defined answer, never NaN: an empty arm is
// `valid = false` with the reason; identical degenerate arms (both rates 0,
// both 1, both zero-variance with equal means) are "no difference", p = 1.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

namespace mms {

struct TestResult {
  bool valid = false;
  std::string reason;       // why not valid
  double statistic = 0;     // z, t or chi-square
  double df = 0;            // t and chi-square
  double p_value = 1;       // two-sided
  double diff = 0;          // treatment − control
  double ci_low = 0, ci_high = 0;
  nlohmann::json ToJson() const;
};

TestResult TwoProportionZTest(uint64_t x1, uint64_t n1, uint64_t x2, uint64_t n2, double confidence = 0.95);
TestResult WelchTTest(double mean1, double var1, uint64_t n1, double mean2, double var2, uint64_t n2,
                      double confidence = 0.95);
// `expected_treatment` in [0, 1]: the configured share of the treatment arm.
TestResult SampleRatioMismatch(uint64_t n_control, uint64_t n_treatment, double expected_treatment);

// Standard normal and Student-t upper quantiles (for intervals), exposed for tests.
double NormalQuantile(double p);
double StudentTQuantile(double p, double df);

}  // namespace mms
