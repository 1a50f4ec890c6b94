#include "stats/significance.h"

#include <cmath>
#include <limits>

#include <boost/math/distributions/chi_squared.hpp>
#include <boost/math/distributions/normal.hpp>
#include <boost/math/distributions/students_t.hpp>

namespace mms {
namespace {
namespace bm = boost::math;

// Two-sided p-value of a standard normal statistic.
double NormalTwoSided(double z) {
  if (std::isinf(z)) return 0;
  bm::normal n;
  return 2 * bm::cdf(bm::complement(n, std::fabs(z)));
}

TestResult Invalid(std::string why) {
  TestResult r;
  r.valid = false;
  r.reason = std::move(why);
  return r;
}
}  // namespace

nlohmann::json TestResult::ToJson() const {
  if (!valid) return {{"valid", false}, {"reason", reason}};
  auto num = [](double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(v > 0 ? "inf" : "-inf"); };
  nlohmann::json j{{"valid", true}, {"statistic", num(statistic)}, {"p_value", p_value}, {"diff", diff},
                   {"ci", {ci_low, ci_high}}};
  if (df > 0) j["df"] = df;
  return j;
}

double NormalQuantile(double p) { return bm::quantile(bm::normal(), p); }
double StudentTQuantile(double p, double df) { return bm::quantile(bm::students_t(df), p); }

TestResult TwoProportionZTest(uint64_t x1, uint64_t n1, uint64_t x2, uint64_t n2, double confidence) {
  if (n1 == 0) return Invalid("no requests in the control arm");
  if (n2 == 0) return Invalid("no requests in the treatment arm");
  if (x1 > n1 || x2 > n2) return Invalid("more successes than trials");
  TestResult r;
  r.valid = true;
  double p1 = static_cast<double>(x1) / static_cast<double>(n1);
  double p2 = static_cast<double>(x2) / static_cast<double>(n2);
  r.diff = p2 - p1;
  double pool = static_cast<double>(x1 + x2) / static_cast<double>(n1 + n2);
  double se0 = std::sqrt(pool * (1 - pool) * (1.0 / static_cast<double>(n1) + 1.0 / static_cast<double>(n2)));
  if (se0 == 0) {  // both arms all 0 or all 1: identical
    r.statistic = 0;
    r.p_value = 1;
  } else {
    r.statistic = r.diff / se0;
    r.p_value = NormalTwoSided(r.statistic);
  }
  double se = std::sqrt(p1 * (1 - p1) / static_cast<double>(n1) + p2 * (1 - p2) / static_cast<double>(n2));
  double z = NormalQuantile(0.5 + confidence / 2);
  r.ci_low = r.diff - z * se;
  r.ci_high = r.diff + z * se;
  return r;
}

TestResult WelchTTest(double mean1, double var1, uint64_t n1, double mean2, double var2, uint64_t n2,
                      double confidence) {
  if (n1 < 2) return Invalid("fewer than 2 samples in the control arm");
  if (n2 < 2) return Invalid("fewer than 2 samples in the treatment arm");
  TestResult r;
  r.valid = true;
  r.diff = mean2 - mean1;
  double a = var1 / static_cast<double>(n1), b = var2 / static_cast<double>(n2);
  double se = std::sqrt(a + b);
  if (se == 0) {  // both arms constant
    r.statistic = r.diff == 0 ? 0 : std::copysign(std::numeric_limits<double>::infinity(), r.diff);
    r.p_value = r.diff == 0 ? 1 : 0;
    r.df = static_cast<double>(n1 + n2 - 2);
    r.ci_low = r.ci_high = r.diff;
    return r;
  }
  r.statistic = r.diff / se;
  r.df = (a + b) * (a + b) /
         (a * a / static_cast<double>(n1 - 1) + b * b / static_cast<double>(n2 - 1));
  bm::students_t t(r.df);
  r.p_value = 2 * bm::cdf(bm::complement(t, std::fabs(r.statistic)));
  double q = bm::quantile(t, 0.5 + confidence / 2);
  r.ci_low = r.diff - q * se;
  r.ci_high = r.diff + q * se;
  return r;
}

TestResult SampleRatioMismatch(uint64_t n_control, uint64_t n_treatment, double expected_treatment) {
  uint64_t n = n_control + n_treatment;
  if (n == 0) return Invalid("no requests yet");
  TestResult r;
  r.valid = true;
  r.df = 1;
  double e2 = static_cast<double>(n) * expected_treatment, e1 = static_cast<double>(n) - e2;
  r.diff = static_cast<double>(n_treatment) / static_cast<double>(n) - expected_treatment;
  if (e1 == 0 || e2 == 0) {  // a 0% or 100% split: any request in the other arm is a mismatch
    bool ok = (e1 == 0 && n_control == 0) || (e2 == 0 && n_treatment == 0);
    r.statistic = ok ? 0 : std::numeric_limits<double>::infinity();
    r.p_value = ok ? 1 : 0;
    return r;
  }
  double d1 = static_cast<double>(n_control) - e1, d2 = static_cast<double>(n_treatment) - e2;
  r.statistic = d1 * d1 / e1 + d2 * d2 / e2;
  r.p_value = bm::cdf(bm::complement(bm::chi_squared(1), r.statistic));
  return r;
}

}  // namespace mms
