// Significance tests for comparing an experiment's variants, with the
// distributions from Boost.Math (Debian's libboost-dev):
//
//   TwoProportionZTest  error rates, conversion rates: pooled z-test — or
//                       Fisher's exact test when a cell's expected count is
//                       under 5, where the normal approximation fails (one
//                       error among a few requests is not "p = 1e-23") —
//                       and the Agresti–Caffo interval for p2 − p1 (Wald's
//                       plus one success and one failure per arm, which keeps
//                       its coverage at rates near 0 and 1)
//   ProportionGreaterP  one-sided p-value that the treatment's rate is above
//                       the control's (same choice of z or Fisher)
//   BinomialUpperTail   P(X ≥ k) for X ~ Binomial(n, p): is a rate above p?
//   WelchTTest          latency means with unequal variances
//                       (Welch–Satterthwaite degrees of freedom)
//   SampleRatioMismatch chi-square goodness of fit of the observed split
//                       against the configured one (1 degree of freedom)
//   ClusteredRatioTest  a ratio of sums (errors / requests, clicks /
//                       requests, latency / requests) measured over
//                       independent clusters — buckets of users — with the
//                       jackknife's variance, leaving one cluster out at a
//                       time (the delta method's, as in Deng, Knoblich & Lu,
//                       KDD 2018, is biased low when one cluster dominates):
//                       requests of one user are not independent samples
//
// "2" is the treatment, "1" the control: differences are treatment − control.
// Degenerate inputs give a defined answer, never NaN: an empty arm is
// `valid = false` with the reason; identical degenerate arms (both rates 0,
// both 1, both zero-variance with equal means) are "no difference", p = 1.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

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
  std::string method;       // "fisher" when the exact test gave the p-value
  double se = 0;            // the standard error of diff (unpooled), where the test has one
  std::string unit;         // "user" or "request": what the test took as independent samples ("" unsaid)
  // By user: the variance by user over the variance by request, had the
  // requests been independent (1: no correlation within users; 3: the
  // figures carry a third of the information their request counts
  // suggest). 0 when not computed.
  double design_effect = 0;
  nlohmann::json ToJson() const;
};

TestResult TwoProportionZTest(uint64_t x1, uint64_t n1, uint64_t x2, uint64_t n2, double confidence = 0.95);
// x2/n2 > x1/n1, one-sided; 1 when either arm is empty.
double ProportionGreaterP(uint64_t x1, uint64_t n1, uint64_t x2, uint64_t n2);
double BinomialUpperTail(uint64_t k, uint64_t n, double p);
TestResult WelchTTest(double mean1, double var1, uint64_t n1, double mean2, double var2, uint64_t n2,
                      double confidence = 0.95);
// One arm of a ratio metric measured over clusters: offset + Σy / Σn.
// `offset` keeps precision for values far from 0 (sums of value − offset).
struct ClusteredArm {
  double offset = 0;
  std::vector<double> y, n;  // per cluster; equal lengths
};
// treatment − control of two such ratios: Welch's t, each arm's variance by
// the jackknife over its m clusters with n > 0,
//   R₋b = (Σy − y_b) / (Σn − n_b),  Var(Σy/Σn) ≈ (m−1)/m · Σ (R₋b − mean R₋)²,
// degrees of freedom by Welch–Satterthwaite with m − 1 per arm. With one
// sample per cluster (every n_b = 1) it is Welch's test on the values. (A
// review's simulation, heavy-tailed requests per user, two identical arms:
// the delta method's variance rejected at 8.2e-5 34 times too often, the
// jackknife's not once in the same runs.) Invalid below 2 clusters with
// samples in an arm.
TestResult ClusteredRatioTest(const ClusteredArm& control, const ClusteredArm& treatment, double confidence = 0.95);
// One-sided p-value that the treatment's ratio is above the control's, from
// ClusteredRatioTest; nullopt when that test is invalid.
std::optional<double> ClusteredRatioGreaterP(const ClusteredArm& control, const ClusteredArm& treatment);

// `expected_treatment` in [0, 1]: the configured share of the treatment arm.
// Pearson's chi-square on the request counts: sound only where requests are
// assigned independently (a random experiment).
TestResult SampleRatioMismatch(uint64_t n_control, uint64_t n_treatment, double expected_treatment);
// The same check where whole clusters are assigned (a sticky experiment's
// users, in buckets): `split.y` the treatment's requests per bucket, `split.n`
// all requests per bucket; the treatment's share Σy/Σn against
// `expected_treatment`, its variance by the jackknife over the buckets
// (as ClusteredRatioTest), Student's t with m − 1 degrees of freedom. Users
// send different numbers of requests, so the request counts of a healthy
// split stray from the share by far more than independent requests would:
// with 50 users of ~60 requests each, the chi-square flagged about 3 healthy
// experiments in 4 at 0.001 (a simulation, stop 29). Invalid below 2 buckets
// with requests.
TestResult ClusteredSampleRatio(const ClusteredArm& split, double expected_treatment);

// Standard normal and Student-t upper quantiles (for intervals), exposed for tests.
double NormalQuantile(double p);
double StudentTQuantile(double p, double df);

}  // namespace mms
