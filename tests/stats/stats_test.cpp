#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "stats/histogram.h"
#include "stats/prometheus.h"
#include "stats/significance.h"

using namespace mms;

TEST_CASE("histogram quantiles are within 1% of the exact ones from 1 µs to 100 s") {
  std::mt19937_64 rng(3);
  std::uniform_real_distribution<double> logu(std::log(1e3), std::log(1e11));
  std::vector<int64_t> v;
  LatencyHistogram h;
  for (int i = 0; i < 200000; ++i) {
    int64_t ns = static_cast<int64_t>(std::exp(logu(rng)));
    v.push_back(ns);
    h.Record(ns);
  }
  std::sort(v.begin(), v.end());
  for (double q : {0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0}) {
    int64_t exact = v[std::max<size_t>(1, static_cast<size_t>(std::ceil(q * v.size()))) - 1];
    double err = std::fabs(static_cast<double>(h.Quantile(q) - exact)) / static_cast<double>(exact);
    INFO("q=" << q << " exact=" << exact << " got=" << h.Quantile(q));
    CHECK(err <= 0.01);
  }
  CHECK(h.count() == v.size());
  CHECK(h.min() == v.front());
  CHECK(h.max() == v.back());
  // Every bucket's midpoint is within 0.4% of any value in it.
  for (int64_t ns : {1'000LL, 1'234LL, 999'999LL, 1'000'000LL, 37'000'123LL, 99'999'999'999LL})
    CHECK(std::fabs(static_cast<double>(LatencyHistogram::BucketMidpoint(LatencyHistogram::BucketIndex(ns)) - ns)) /
              static_cast<double>(ns) <=
          0.004);
}

TEST_CASE("histogram mean, variance, clamping and the empty case") {
  LatencyHistogram h;
  CHECK(h.Quantile(0.5) == 0);
  CHECK(h.mean() == 0);
  for (int64_t v : {2'000'000, 4'000'000, 4'000'000, 4'000'000, 5'000'000, 5'000'000, 7'000'000, 9'000'000}) h.Record(v);
  CHECK(h.mean() == doctest::Approx(5e6));
  CHECK(h.variance() == doctest::Approx(4.571428571e12).epsilon(1e-6));  // sample variance of the textbook set
  LatencyHistogram c;
  c.Record(10);                  // below 1 µs: counted in the first bucket, min exact
  c.Record(500'000'000'000LL);   // above 100 s
  CHECK(c.min() == 10);
  CHECK(c.Quantile(1.0) == 500'000'000'000LL);
}

TEST_CASE("histograms merge, subtract into windows, and round-trip through JSON") {
  LatencyHistogram a, b, all;
  for (int i = 1; i <= 1000; ++i) {
    a.Record(i * 1000);
    all.Record(i * 1000);
  }
  for (int i = 1; i <= 500; ++i) {
    b.Record(i * 1'000'000);
    all.Record(i * 1'000'000);
  }
  LatencyHistogram m = a;
  m.Merge(b);
  CHECK(m.count() == 1500);
  CHECK(m.Quantile(0.5) == all.Quantile(0.5));
  CHECK(m.ToJson() == all.ToJson());
  // Cumulative now minus the cumulative at the window start = the window.
  LatencyHistogram window = all;
  window.Subtract(a);
  CHECK(window.count() == 500);
  CHECK(std::fabs(static_cast<double>(window.Quantile(0.5)) - 250e6) / 250e6 < 0.01);
  CHECK(window.mean() == doctest::Approx(b.mean()));
  auto back = LatencyHistogram::FromJson(all.ToJson());
  REQUIRE(back.ok());
  CHECK(back->ToJson() == all.ToJson());
  auto bad = all.ToJson();
  bad["n"] = 7;
  CHECK_FALSE(LatencyHistogram::FromJson(bad).ok());
}

TEST_CASE("windowed histograms keep only the recent intervals") {
  WindowedHistogram w(10'000'000'000, 6);  // 6 × 10 s
  int64_t t = 1'000'000'000'000;
  for (int s = 0; s < 120; ++s) w.Record((s + 1) * 1'000'000, t + s * 1'000'000'000LL);  // one per second
  int64_t now = t + 119 * 1'000'000'000LL;
  CHECK(w.Window(10'000'000'000, now).count() == 10);
  CHECK(w.Window(30'000'000'000, now).count() == 30);
  CHECK(w.Window(600'000'000'000, now).count() == 60);  // only 6 slots kept
  CHECK(w.Window(30'000'000'000, now + 300'000'000'000LL).count() == 0);
  // An interval's histogram exists only once recorded into: an unused
  // window holds none, one value a minute ago holds one.
  WindowedHistogram idle(10'000'000'000, 6);
  CHECK(idle.slots_held() == 0);
  CHECK(idle.Window(60'000'000'000, t).count() == 0);
  idle.Record(5'000'000, t);
  idle.Record(6'000'000, t + 1'000'000'000LL);  // the same interval
  CHECK(idle.slots_held() == 1);
  CHECK(w.slots_held() == 6);
  // A slot reused a window later starts empty (its old values are not counted again).
  idle.Record(7'000'000, t + 60'000'000'000LL);
  CHECK(idle.slots_held() == 1);
  CHECK(idle.Window(60'000'000'000, t + 60'000'000'000LL).count() == 1);
  // A value every 70 s (past the window each time, in another slot each
  // time): one interval held, not one for each slot ever used.
  WindowedHistogram rare(10'000'000'000, 6);
  for (int k = 0; k < 12; ++k) rare.Record(5'000'000, t + k * 70'000'000'000LL);
  CHECK(rare.slots_held() == 1);
  // Gone idle, a window lets go of its intervals as Trim finds them out of
  // it, and keeps those still in it.
  const int64_t last = t + 119 * 1'000'000'000LL;  // w's last value, in interval 6 of 6
  CHECK(w.Trim(last) == 0);
  CHECK(w.slots_held() == 6);
  CHECK(w.Trim(last + 20'000'000'000LL) == 2);  // two intervals on: the two oldest left
  CHECK(w.slots_held() == 4);
  CHECK(w.Window(600'000'000'000, last + 20'000'000'000LL).count() == 40);
  CHECK(w.Trim(last + 60'000'000'000LL) == 4);
  CHECK(w.slots_held() == 0);
  CHECK(w.Window(600'000'000'000, last + 60'000'000'000LL).count() == 0);
}

// Values worked out independently (Python's statistics.NormalDist; the Welch
// example is Wikipedia's "Welch's t-test" example 1: t = 2.46, df = 25.0, p = 0.021).
TEST_CASE("two-proportion z-test matches the worked example") {
  auto r = TwoProportionZTest(45, 100, 30, 100);
  REQUIRE(r.valid);
  CHECK(r.statistic == doctest::Approx(-2.190890).epsilon(1e-5));
  CHECK(r.p_value == doctest::Approx(0.028460).epsilon(1e-4));
  CHECK(r.diff == doctest::Approx(-0.15));
  // Agresti–Caffo: Wald's interval with one success and one failure added per arm.
  CHECK(r.ci_low == doctest::Approx(-0.278559).epsilon(1e-5));
  CHECK(r.ci_high == doctest::Approx(-0.015559).epsilon(1e-4));
  CHECK_FALSE(r.ToJson().contains("method"));  // large counts: the z-test's p-value
}

TEST_CASE("small counts: Fisher's exact test, not the normal approximation, intervals keep their width") {
  // One error among 1,000 canary requests against none in 99,000: z says p = 1e-23.
  auto one = TwoProportionZTest(0, 99000, 1, 1000);
  REQUIRE(one.valid);
  CHECK(one.method == "fisher");
  CHECK(one.p_value == doctest::Approx(0.01).epsilon(1e-6));
  CHECK(ProportionGreaterP(0, 99000, 1, 1000) == doctest::Approx(0.01).epsilon(1e-6));
  auto two = TwoProportionZTest(0, 10000, 2, 200);
  CHECK(two.p_value == doctest::Approx(3.8258268e-4).epsilon(1e-6));
  // Two-sided keeps the tables no likelier than the one seen; one-sided the larger x2.
  CHECK(TwoProportionZTest(3, 10, 0, 12).p_value == doctest::Approx(0.0779220779).epsilon(1e-6));
  CHECK(ProportionGreaterP(3, 10, 0, 12) == doctest::Approx(1.0));
  // Large counts: the one-sided z-test, half the two-sided p when the treatment is above.
  CHECK(ProportionGreaterP(30, 100, 45, 100) == doctest::Approx(0.028460 / 2).epsilon(1e-4));
  // Rates at 0 and 1 still get an interval of some width.
  auto all = TwoProportionZTest(0, 10, 10, 10);
  CHECK(all.ci_low == doctest::Approx(0.612183).epsilon(1e-5));
  CHECK(all.ci_high == 1.0);  // clamped
  auto none = TwoProportionZTest(0, 1000, 0, 10);
  CHECK(none.ci_low == doctest::Approx(-0.074054).epsilon(1e-4));
  CHECK(none.ci_high == doctest::Approx(0.238724).epsilon(1e-5));
  // Binomial tails.
  CHECK(BinomialUpperTail(5, 200, 0.01) == doctest::Approx(0.0517462636).epsilon(1e-6));
  CHECK(BinomialUpperTail(40, 200, 0.05) == doctest::Approx(6.388069e-14).epsilon(1e-4));
  CHECK(BinomialUpperTail(0, 10, 0.5) == 1.0);
  CHECK(BinomialUpperTail(11, 10, 0.5) == 0.0);
}

TEST_CASE("Welch's t-test refuses overflowed figures instead of throwing") {
  auto r = WelchTTest(1e155, INFINITY, 10, 0, 1, 10);
  CHECK_FALSE(r.valid);
  CHECK(r.reason.find("too large") != std::string::npos);
  CHECK_FALSE(WelchTTest(0, 1e308, 10, 0, 1e308, 10).valid);  // a + b overflows
}

TEST_CASE("histogram: nearest rank survives rounding, counts at or below a bound, subtraction stays consistent") {
  LatencyHistogram h;
  for (int ms = 1; ms <= 100; ++ms) h.Record(ms * 1'000'000LL);
  // 0.07 · 100 is 7.000000000000001 in doubles: still the 7th value.
  CHECK(std::llabs(h.Quantile(0.07) - 7'000'000) < 7'000'000 / 100);
  CHECK(std::llabs(h.Quantile(0.14) - 14'000'000) < 14'000'000 / 100);
  CHECK(std::llabs(h.Quantile(0.28) - 28'000'000) < 28'000'000 / 100);
  LatencyHistogram b;
  for (int i = 0; i < 7; ++i) b.Record(500'000);  // exactly 0.5 ms
  for (int i = 0; i < 93; ++i) b.Record(50'000'000);
  CHECK(b.CountAtMost(500'000) == 7);
  CHECK(b.CountAtMost(499'999) == 0);
  CHECK(b.CountAtMost(1'000'000) == 7);
  CHECK(b.CountAtMost(50'000'000) == 100);
  LatencyHistogram c;
  for (int64_t v : {100'000LL, 999'500LL, 2'000'000LL}) c.Record(v);
  CHECK(c.CountAtMost(1'000'000) == 2);
  // a − b where b is not an earlier state of a: the count is what the buckets hold, and it reads back.
  LatencyHistogram a5, b3;
  for (int i = 0; i < 5; ++i) a5.Record(1'000'000);
  for (int i = 0; i < 3; ++i) b3.Record(50'000'000);
  a5.Subtract(b3);
  CHECK(a5.count() == 5);
  CHECK(LatencyHistogram::FromJson(a5.ToJson()).ok());
}

TEST_CASE("Welch's t-test matches the textbook example") {
  // A1 mean 20.82 var 7.867429, A2 mean 22.986667 var 3.812667, n = 15 each.
  auto r = WelchTTest(20.82, 7.867429, 15, 22.986667, 3.812667, 15);
  REQUIRE(r.valid);
  CHECK(r.statistic == doctest::Approx(2.455356).epsilon(1e-5));
  CHECK(r.df == doctest::Approx(24.988529).epsilon(1e-5));
  CHECK(r.p_value == doctest::Approx(0.021378).epsilon(1e-3));
  CHECK(r.ci_low > 0);  // the interval excludes 0, as p < 0.05 says
}

TEST_CASE("clustered ratio test: the jackknife by hand, and Welch's test when each cluster holds one sample") {
  // Control clusters (y, n): (1, 2), (3, 4), (0, 2), and two empty ones
  // (buckets without users count for nothing). R = 4/8; without each
  // cluster in turn: 3/6, 1/4, 4/6, mean 17/36, deviations 1/36, -8/36,
  // 7/36; Var = (m-1)/m * 114/36^2 = 19/324. Treatment: (2, 2) twice, R = 1
  // with no spread. t = 0.5 / sqrt(19/324), df = m - 1 = 2, and Student's t
  // with 2 df has cdf(t) = 1/2 + t / (2 sqrt(2 + t^2)).
  ClusteredArm c{0, {1, 3, 0, 0, 0}, {2, 4, 2, 0, 0}}, t{0, {2, 2}, {2, 2}};
  auto r = ClusteredRatioTest(c, t);
  REQUIRE(r.valid);
  CHECK(r.unit == "user");
  CHECK(r.diff == doctest::Approx(0.5));
  CHECK(r.se == doctest::Approx(std::sqrt(19.0 / 324)));
  const double stat = 0.5 / std::sqrt(19.0 / 324);
  CHECK(r.statistic == doctest::Approx(stat));
  CHECK(r.df == doctest::Approx(2));
  CHECK(r.p_value == doctest::Approx(2 * (0.5 - stat / (2 * std::sqrt(2 + stat * stat)))));
  // The offset moves the ratios, not the test.
  auto shifted = ClusteredRatioTest(ClusteredArm{100, c.y, c.n}, ClusteredArm{100, t.y, t.n});
  CHECK(shifted.diff == doctest::Approx(0.5));
  CHECK(shifted.p_value == doctest::Approx(r.p_value));

  // One sample per cluster: Welch's test on the values.
  std::vector<double> a{3.1, 4.7, 2.2, 5.0, 3.9, 4.4}, b{5.2, 6.1, 4.0, 6.8, 5.5};
  auto moments = [](const std::vector<double>& v) {
    double m = 0, ss = 0;
    for (double x : v) m += x / static_cast<double>(v.size());
    for (double x : v) ss += (x - m) * (x - m);
    return std::make_pair(m, ss / static_cast<double>(v.size() - 1));
  };
  auto [ma, va] = moments(a);
  auto [mb, vb] = moments(b);
  auto welch = WelchTTest(ma, va, a.size(), mb, vb, b.size());
  auto ones = ClusteredRatioTest(ClusteredArm{0, a, std::vector<double>(a.size(), 1)},
                                 ClusteredArm{0, b, std::vector<double>(b.size(), 1)});
  REQUIRE(ones.valid);
  CHECK(ones.statistic == doctest::Approx(welch.statistic));
  CHECK(ones.df == doctest::Approx(welch.df));
  CHECK(ones.p_value == doctest::Approx(welch.p_value));
  CHECK(ones.ci_low == doctest::Approx(welch.ci_low));
  CHECK(ones.ci_high == doctest::Approx(welch.ci_high));

  // Fewer than two clusters with samples: invalid, saying why.
  auto few = ClusteredRatioTest(ClusteredArm{0, {1, 0}, {5, 0}}, t);
  CHECK_FALSE(few.valid);
  CHECK(few.reason.find("control arm (too few users yet)") != std::string::npos);
  CHECK_FALSE(ClusteredRatioTest(c, ClusteredArm{}).valid);
  // The same ratio in every bucket of both arms: no spread, no difference.
  auto same = ClusteredRatioTest(ClusteredArm{0, {1, 2}, {2, 4}}, ClusteredArm{0, {3, 1}, {6, 2}});
  REQUIRE(same.valid);
  CHECK(same.p_value == 1);
  CHECK(same.ToJson()["unit"] == "user");
}

TEST_CASE("clustered ratio one-sided against control: half the two-sided p on the treatment's side") {
  ClusteredArm c{0, {1, 3, 0}, {2, 4, 2}}, tr{0, {2, 2}, {2, 2}};
  const double two_sided = ClusteredRatioTest(c, tr).p_value;
  CHECK(*ClusteredRatioGreaterP(c, tr) == doctest::Approx(two_sided / 2));
  CHECK(*ClusteredRatioGreaterP(tr, c) == doctest::Approx(1 - two_sided / 2));
  CHECK_FALSE(ClusteredRatioGreaterP(c, ClusteredArm{}).has_value());
}

TEST_CASE("sample-ratio mismatch chi-square") {
  auto even = SampleRatioMismatch(60, 40, 0.5);
  REQUIRE(even.valid);
  CHECK(even.statistic == doctest::Approx(4.0));
  CHECK(even.p_value == doctest::Approx(0.04550026).epsilon(1e-6));
  auto tenth = SampleRatioMismatch(9000, 1100, 0.1);
  CHECK(tenth.statistic == doctest::Approx(8.910891).epsilon(1e-6));
  CHECK(tenth.p_value == doctest::Approx(2.835e-3).epsilon(1e-3));
  auto fine = SampleRatioMismatch(9000, 1000, 0.1);
  CHECK(fine.p_value == doctest::Approx(1.0));
}

TEST_CASE("edge cases: empty arms, zero variance, rates of 0 and 1") {
  auto empty = TwoProportionZTest(0, 0, 3, 10);
  CHECK_FALSE(empty.valid);
  CHECK(empty.reason == "no requests in the control arm");
  CHECK(TwoProportionZTest(3, 10, 0, 0).reason == "no requests in the treatment arm");
  auto zeros = TwoProportionZTest(0, 100, 0, 50);  // both 0%
  REQUIRE(zeros.valid);
  CHECK(zeros.p_value == 1.0);
  CHECK(zeros.statistic == 0.0);
  auto ones = TwoProportionZTest(100, 100, 50, 50);  // both 100%
  CHECK(ones.p_value == 1.0);
  auto extreme = TwoProportionZTest(0, 1000, 1000, 1000);  // 0% vs 100%
  CHECK(extreme.p_value < 1e-100);
  CHECK(std::isfinite(extreme.statistic));

  CHECK_FALSE(WelchTTest(1, 0, 1, 2, 0, 5).valid);
  auto same = WelchTTest(5, 0, 10, 5, 0, 10);
  CHECK(same.valid);
  CHECK(same.p_value == 1.0);
  auto differ = WelchTTest(5, 0, 10, 6, 0, 10);
  CHECK(differ.p_value == 0.0);
  CHECK(std::isinf(differ.statistic));
  CHECK(differ.ToJson()["statistic"] == "inf");

  CHECK_FALSE(SampleRatioMismatch(0, 0, 0.5).valid);
  CHECK(SampleRatioMismatch(100, 0, 0.0).p_value == 1.0);  // a 0% treatment with none in it
  CHECK(SampleRatioMismatch(100, 1, 0.0).p_value == 0.0);
  CHECK(SampleRatioMismatch(0, 100, 1.0).p_value == 1.0);
}

TEST_CASE("histogram bucket bounds are written as the Prometheus Go client writes them") {
  // Queries match le by text: "1e-04" (the shortest) missed le="0.0001".
  LatencyHistogram h;
  h.Record(300'000);  // 0.3 ms
  PromWriter w;
  w.Family("x_seconds", "histogram", "x");
  w.Histogram("x_seconds", {}, h);
  const std::string text = w.str();
  for (const char* le : {"0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.01", "0.5", "1", "2.5", "10", "+Inf"})
    CHECK_MESSAGE(text.find(std::string("x_seconds_bucket{le=\"") + le + "\"}") != std::string::npos, le << "\n" << text);
  for (size_t at = text.find("le=\""); at != std::string::npos; at = text.find("le=\"", at + 1)) {
    const std::string le = text.substr(at + 4, text.find('"', at + 4) - (at + 4));
    CHECK_MESSAGE(le.find('e') == std::string::npos, le);  // no exponent
  }
  CHECK(text.find("x_seconds_bucket{le=\"0.00025\"} 0") != std::string::npos);
  CHECK(text.find("x_seconds_bucket{le=\"0.0005\"} 1") != std::string::npos);
}
