#include "stats/significance.h"

#include <cmath>
#include <limits>

#include <boost/math/distributions/binomial.hpp>
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

// A 2×2 table whose smallest expected count is under 5: the normal
// approximation does not hold there.
bool SmallCounts(uint64_t x1, uint64_t n1, uint64_t x2, uint64_t n2) {
  double n = static_cast<double>(n1 + n2), k = static_cast<double>(x1 + x2);
  double lo_row = std::min(k, n - k), lo_col = static_cast<double>(std::min(n1, n2));
  return lo_row * lo_col / n < 5;
}

// Fisher's exact test on the 2×2 table (x1 of n1, x2 of n2): with the
// margins fixed, x2 is hypergeometric. Returns {two-sided p (the tables no
// likelier than the one seen), one-sided p for x2 this large or larger}.
std::pair<double, double> Fisher(uint64_t x1, uint64_t n1, uint64_t x2, uint64_t n2) {
  const uint64_t n = n1 + n2, k = x1 + x2;
  auto lchoose = [](double a, double b) { return std::lgamma(a + 1) - std::lgamma(b + 1) - std::lgamma(a - b + 1); };
  const double denom = lchoose(static_cast<double>(n), static_cast<double>(n2));
  auto logp = [&](uint64_t j) {
    return lchoose(static_cast<double>(k), static_cast<double>(j)) +
           lchoose(static_cast<double>(n - k), static_cast<double>(n2 - j)) - denom;
  };
  const uint64_t lo = n2 > n - k ? n2 - (n - k) : 0, hi = std::min(k, n2);
  const double seen = logp(x2);
  double two = 0, greater = 0;
  for (uint64_t j = lo; j <= hi; ++j) {
    double lp = logp(j);
    double p = std::exp(lp);
    if (lp <= seen + 1e-7) two += p;
    if (j >= x2) greater += p;
  }
  return {std::min(1.0, two), std::min(1.0, greater)};
}

TestResult Invalid(std::string why) {
  TestResult r;
  r.valid = false;
  r.reason = std::move(why);
  return r;
}
}  // namespace

nlohmann::json TestResult::ToJson() const {
  if (!valid) {
    nlohmann::json j{{"valid", false}, {"reason", reason}};
    if (!unit.empty()) j["unit"] = unit;
    return j;
  }
  auto num = [](double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(v > 0 ? "inf" : "-inf"); };
  nlohmann::json j{{"valid", true}, {"statistic", num(statistic)}, {"p_value", p_value}, {"diff", diff},
                   {"ci", {ci_low, ci_high}}};
  if (df > 0) j["df"] = df;
  if (!method.empty()) j["method"] = method;
  if (!unit.empty()) j["unit"] = unit;
  if (design_effect > 0) j["design_effect"] = design_effect;
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
    if (SmallCounts(x1, n1, x2, n2)) {
      r.p_value = Fisher(x1, n1, x2, n2).first;
      r.method = "fisher";
    }
  }
  // Agresti–Caffo: the Wald interval of the rates with one success and one
  // failure added to each arm.
  double a1 = static_cast<double>(n1) + 2, a2 = static_cast<double>(n2) + 2;
  double q1 = (static_cast<double>(x1) + 1) / a1, q2 = (static_cast<double>(x2) + 1) / a2;
  double se = std::sqrt(q1 * (1 - q1) / a1 + q2 * (1 - q2) / a2);
  double z = NormalQuantile(0.5 + confidence / 2);
  r.se = std::sqrt(p1 * (1 - p1) / static_cast<double>(n1) + p2 * (1 - p2) / static_cast<double>(n2));
  r.ci_low = std::max(-1.0, q2 - q1 - z * se);
  r.ci_high = std::min(1.0, q2 - q1 + z * se);
  return r;
}

double ProportionGreaterP(uint64_t x1, uint64_t n1, uint64_t x2, uint64_t n2) {
  if (n1 == 0 || n2 == 0 || x1 > n1 || x2 > n2) return 1;
  if (SmallCounts(x1, n1, x2, n2)) return Fisher(x1, n1, x2, n2).second;
  double p1 = static_cast<double>(x1) / static_cast<double>(n1), p2 = static_cast<double>(x2) / static_cast<double>(n2);
  double pool = static_cast<double>(x1 + x2) / static_cast<double>(n1 + n2);
  double se0 = std::sqrt(pool * (1 - pool) * (1.0 / static_cast<double>(n1) + 1.0 / static_cast<double>(n2)));
  if (se0 == 0) return 1;
  return bm::cdf(bm::complement(bm::normal(), (p2 - p1) / se0));
}

double BinomialUpperTail(uint64_t k, uint64_t n, double p) {
  if (k == 0) return 1;
  if (k > n) return 0;
  if (p <= 0) return 0;
  if (p >= 1) return 1;
  return bm::cdf(bm::complement(bm::binomial(static_cast<double>(n), p), static_cast<double>(k - 1)));
}

TestResult WelchTTest(double mean1, double var1, uint64_t n1, double mean2, double var2, uint64_t n2,
                      double confidence) {
  if (n1 < 2) return Invalid("fewer than 2 samples in the control arm");
  if (n2 < 2) return Invalid("fewer than 2 samples in the treatment arm");
  if (!std::isfinite(mean1) || !std::isfinite(mean2) || !std::isfinite(var1) || !std::isfinite(var2))
    return Invalid("the values are too large to compare (a mean or variance is not finite)");
  TestResult r;
  r.valid = true;
  r.diff = mean2 - mean1;
  double a = var1 / static_cast<double>(n1), b = var2 / static_cast<double>(n2);
  double se = std::sqrt(a + b);
  r.se = se;
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
  if (!std::isfinite(r.statistic) || !std::isfinite(r.df) || !(r.df > 0))
    return Invalid("the values are too large to compare (a variance overflows)");
  bm::students_t t(r.df);
  r.p_value = 2 * bm::cdf(bm::complement(t, std::fabs(r.statistic)));
  double q = bm::quantile(t, 0.5 + confidence / 2);
  r.ci_low = r.diff - q * se;
  r.ci_high = r.diff + q * se;
  return r;
}

namespace {
// One arm's ratio, its jackknife variance and its clusters with samples.
struct ArmEstimate {
  double ratio = 0, var = 0;
  size_t clusters = 0;
};
ArmEstimate EstimateArm(const ClusteredArm& a) {
  ArmEstimate e;
  double sy = 0, sn = 0;
  for (size_t b = 0; b < a.y.size() && b < a.n.size(); ++b) {
    sy += a.y[b];
    sn += a.n[b];
    e.clusters += a.n[b] > 0;
  }
  if (sn <= 0 || e.clusters < 2) return e;
  // The jackknife: the ratio without each cluster in turn.
  std::vector<double> without;
  without.reserve(e.clusters);
  for (size_t b = 0; b < a.y.size() && b < a.n.size(); ++b)
    if (a.n[b] > 0) without.push_back((sy - a.y[b]) / (sn - a.n[b]));
  double mean = 0;
  for (double r : without) mean += r / static_cast<double>(without.size());
  double ss = 0;
  for (double r : without) ss += (r - mean) * (r - mean);
  const double m = static_cast<double>(e.clusters);
  e.ratio = a.offset + sy / sn;
  e.var = (m - 1) / m * ss;
  return e;
}
}  // namespace

TestResult ClusteredRatioTest(const ClusteredArm& control, const ClusteredArm& treatment, double confidence) {
  const ArmEstimate c = EstimateArm(control), t = EstimateArm(treatment);
  if (c.clusters < 2) return Invalid("fewer than 2 buckets of users with samples in the control arm (too few users yet)");
  if (t.clusters < 2) return Invalid("fewer than 2 buckets of users with samples in the treatment arm (too few users yet)");
  if (!std::isfinite(c.ratio) || !std::isfinite(t.ratio) || !std::isfinite(c.var) || !std::isfinite(t.var))
    return Invalid("the values are too large to compare (a mean or variance is not finite)");
  TestResult r;
  r.valid = true;
  r.unit = "user";
  r.diff = t.ratio - c.ratio;
  const double dc = static_cast<double>(c.clusters - 1), dt = static_cast<double>(t.clusters - 1);
  r.se = std::sqrt(c.var + t.var);
  if (r.se == 0) {  // both arms the same ratio in every bucket
    r.statistic = r.diff == 0 ? 0 : std::copysign(std::numeric_limits<double>::infinity(), r.diff);
    r.p_value = r.diff == 0 ? 1 : 0;
    r.df = dc + dt;
    r.ci_low = r.ci_high = r.diff;
    return r;
  }
  r.statistic = r.diff / r.se;
  r.df = (c.var + t.var) * (c.var + t.var) / (c.var * c.var / dc + t.var * t.var / dt);
  if (!std::isfinite(r.statistic) || !std::isfinite(r.df) || !(r.df > 0))
    return Invalid("the values are too large to compare (a variance overflows)");
  bm::students_t dist(r.df);
  r.p_value = 2 * bm::cdf(bm::complement(dist, std::fabs(r.statistic)));
  const double q = bm::quantile(dist, 0.5 + confidence / 2);
  r.ci_low = r.diff - q * r.se;
  r.ci_high = r.diff + q * r.se;
  return r;
}

std::optional<double> ClusteredRatioGreaterP(const ClusteredArm& control, const ClusteredArm& treatment) {
  const TestResult r = ClusteredRatioTest(control, treatment);
  if (!r.valid) return std::nullopt;
  return r.diff > 0 ? r.p_value / 2 : 1 - r.p_value / 2;
}

TestResult ClusteredSampleRatio(const ClusteredArm& split, double expected_treatment) {
  const ArmEstimate e = EstimateArm(split);
  if (e.clusters < 2) return Invalid("fewer than 2 buckets of users with requests (too few users yet)");
  if (!std::isfinite(e.ratio) || !std::isfinite(e.var)) return Invalid("the counts are too large to compare");
  TestResult r;
  r.valid = true;
  r.unit = "user";
  r.diff = e.ratio - expected_treatment;
  r.df = static_cast<double>(e.clusters - 1);
  r.se = std::sqrt(e.var);
  if (r.se == 0) {  // every bucket the same share: exactly the expected one, or a mismatch beyond doubt
    const bool same = std::fabs(r.diff) < 1e-12;
    r.statistic = same ? 0 : std::copysign(std::numeric_limits<double>::infinity(), r.diff);
    r.p_value = same ? 1 : 0;
    return r;
  }
  r.statistic = r.diff / r.se;
  bm::students_t dist(r.df);
  r.p_value = 2 * bm::cdf(bm::complement(dist, std::fabs(r.statistic)));
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
