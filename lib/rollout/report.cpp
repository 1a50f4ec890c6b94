#include "rollout/report.h"

#include <algorithm>
#include <optional>

#include "stats/significance.h"

namespace mms {

nlohmann::json VariantFigures(const VariantSnapshot& s, const std::vector<std::string>& metrics) {
  double n = static_cast<double>(s.requests);
  nlohmann::json outcomes = nlohmann::json::object();
  std::vector<std::string> names = metrics;
  for (const auto& [name, o] : s.outcomes)
    if (std::find(names.begin(), names.end(), name) == names.end()) names.push_back(name);
  for (const auto& name : names) {
    auto it = s.outcomes.find(name);
    OutcomeStats o = it == s.outcomes.end() ? OutcomeStats{} : it->second;
    outcomes[name] = {{"count", o.count},
                      {"positive", o.positive},
                      {"rate", n > 0 ? static_cast<double>(std::min<uint64_t>(o.positive, s.requests)) / n : 0.0},
                      {"sum", o.total()},
                      {"mean", o.mean()}};
  }
  return {{"requests", s.requests},
          {"errors", s.errors},
          {"error_rate", n > 0 ? static_cast<double>(s.errors) / n : 0.0},
          {"error_codes", s.error_codes},
          {"latency", s.latency.Summary()},
          {"outcomes", outcomes}};
}

std::vector<std::string> ReportedMetrics(const std::vector<std::string>& declared, const VariantSnapshot& control,
                                         const VariantSnapshot& treatment) {
  std::vector<std::string> names = declared;
  for (const VariantSnapshot* s : {&control, &treatment})
    for (const auto& [name, o] : s->outcomes)
      if (std::find(names.begin(), names.end(), name) == names.end()) names.push_back(name);
  return names;
}

nlohmann::json ServingFigures(const VariantSnapshot& s) {
  nlohmann::json f = VariantFigures(s, {});
  f.erase("outcomes");
  uint64_t refused = 0;
  nlohmann::json by = nlohmann::json::object();
  for (const auto& [code, reason] : std::vector<std::pair<std::string, std::string>>{
           {"RATE_LIMITED", "rate_limited"}, {"OVERLOADED", "queue_full"}, {"INVALID_ARGUMENT", "bad_input"},
           {"DEADLINE_EXCEEDED", "deadline_missed"}, {"POOL_FULL", "pool_full"}})
    if (auto it = s.error_codes.find(code); it != s.error_codes.end() && it->second > 0) {
      refused += it->second;
      by[reason] = it->second;
    }
  f["refused"] = {{"total", refused}, {"by_reason", by}};
  f["failure_rate"] =
      s.requests ? static_cast<double>(s.errors - std::min(s.errors, refused)) / static_cast<double>(s.requests) : 0.0;
  return f;
}

namespace {
// The sample-ratio test as reported: flagged below kSrmAlpha, with the share expected.
nlohmann::json SampleRatioJson(const TestResult& srm, double expected_treatment_share) {
  nlohmann::json s = srm.ToJson();
  s["expected_treatment_share"] = expected_treatment_share;
  s["flagged"] = srm.valid && srm.p_value < kSrmAlpha;
  return s;
}

// The test by user where the figures are by user (`by_user` set), else the
// one by request; see report.h. Too few users is no reason to count their
// requests as independent instead: that test stays invalid, saying so.
TestResult Chosen(TestResult by_request, const std::optional<TestResult>& by_user) {
  by_request.unit = "request";
  if (!by_user || !by_request.valid) return by_request;
  TestResult r = *by_user;
  r.unit = "user";
  if (!r.valid) return r;
  // No spread between buckets at all (no errors in either arm) says nothing
  // of the variance: an interval of [0, 0] would claim certainty. And with
  // few counts, the larger p-value.
  if (r.se == 0 || (by_request.method == "fisher" && by_request.p_value > r.p_value)) return by_request;
  if (by_request.se > 0) r.design_effect = (r.se * r.se) / (by_request.se * by_request.se);
  return r;
}
}  // namespace

nlohmann::json CompareVariants(const VariantSnapshot& c, const VariantSnapshot& t, int basis_points,
                               const std::vector<std::string>& metrics, double confidence) {
  nlohmann::json j;
  j["confidence"] = confidence;
  const bool by_user = c.CoversRequests() && t.CoversRequests();
  // The report's unit; a test may still say "request" (few counts: Fisher's larger p).
  j["unit"] = by_user ? "user" : "request";
  const std::optional<TestResult> none;
  const UserBuckets* cu = by_user ? &*c.users : nullptr;
  const UserBuckets* tu = by_user ? &*t.users : nullptr;
  j["error_rate"] =
      Chosen(TwoProportionZTest(c.errors, c.requests, t.errors, t.requests, confidence),
             by_user ? ClusteredRatioTest(BucketArm(cu->errors, cu->requests), BucketArm(tu->errors, tu->requests),
                                          confidence)
                     : none)
          .ToJson();
  // Latency in ms, Welch's t on the means.
  auto ms = [](double ns) { return ns / 1e6; };
  j["latency_mean_ms"] =
      Chosen(WelchTTest(ms(c.latency.mean()), c.latency.variance() / 1e12, c.latency.count(), ms(t.latency.mean()),
                        t.latency.variance() / 1e12, t.latency.count(), confidence),
             by_user ? ClusteredRatioTest(BucketArm(cu->latency_ns, cu->timed, 0, 1e-6),
                                          BucketArm(tu->latency_ns, tu->timed, 0, 1e-6),
                                          confidence)
                     : none)
          .ToJson();
  nlohmann::json outcomes = nlohmann::json::object();
  for (const auto& name : metrics) {
    OutcomeStats oc = c.outcomes.count(name) ? c.outcomes.at(name) : OutcomeStats{};
    OutcomeStats ot = t.outcomes.count(name) ? t.outcomes.at(name) : OutcomeStats{};
    std::optional<TestResult> rate_by_user, mean_by_user;
    if (by_user && c.CoversOutcome(name) && t.CoversOutcome(name)) {
      static const UserBuckets::Outcome kNoReports;
      const UserBuckets::Outcome& bc = cu->outcomes.count(name) ? cu->outcomes.at(name) : kNoReports;
      const UserBuckets::Outcome& bt = tu->outcomes.count(name) ? tu->outcomes.at(name) : kNoReports;
      rate_by_user =
          ClusteredRatioTest(BucketArm(bc.positive, cu->requests), BucketArm(bt.positive, tu->requests), confidence);
      mean_by_user =
          ClusteredRatioTest(BucketArm(bc.sum, bc.count, oc.shift), BucketArm(bt.sum, bt.count, ot.shift), confidence);
    }
    outcomes[name] = {
        {"rate", Chosen(TwoProportionZTest(std::min(oc.positive, c.requests), c.requests,
                                           std::min(ot.positive, t.requests), t.requests, confidence),
                        rate_by_user)
                     .ToJson()},
        {"mean", Chosen(WelchTTest(oc.mean(), oc.variance(), oc.count, ot.mean(), ot.variance(), ot.count, confidence),
                        mean_by_user)
                     .ToJson()}};
  }
  j["outcomes"] = outcomes;
  // The share each request was routed with, averaged: after a ramp (or a
  // canary's next stage) the current share alone would flag a healthy split.
  // Figures saved before shares were recorded fall back to the current one.
  const uint64_t n = c.requests + t.requests;
  double share = basis_points / 10000.0;
  if (n > 0 && c.routed + t.routed == n) share = (c.routed_share + t.routed_share) / static_cast<double>(n);
  // Sticky: users are assigned, not requests, and the check is by user too
  // (the treatment's share of each bucket's requests, clustered).
  TestResult srm = SampleRatioMismatch(c.requests, t.requests, share);
  srm.unit = "request";
  if (by_user) {
    UserBuckets::Cells<uint64_t> all{};
    for (int b = 0; b < UserBuckets::kCount; ++b) all[b] = cu->requests[b] + tu->requests[b];
    srm = ClusteredSampleRatio(BucketArm(tu->requests, all), share);
  }
  j["sample_ratio"] = SampleRatioJson(srm, share);
  return j;
}

nlohmann::json UserSampleRatio(const UserSplit::Counts& users) {
  const uint64_t n = users.control + users.treatment;
  const double share = n ? users.share_sum / static_cast<double>(n) : 0;
  TestResult srm = SampleRatioMismatch(users.control, users.treatment, share);
  srm.unit = "user";  // (each user counted once: independent draws)
  nlohmann::json s = SampleRatioJson(srm, share);
  s["users"] = {{"control", users.control}, {"treatment", users.treatment}};
  s["since"] = "mmsd started";
  if (users.saturated) s["saturated"] = true;
  return s;
}

nlohmann::json ExperimentReport(const ExperimentRecord& e, const VariantSnapshot& control,
                                const VariantSnapshot& treatment, double confidence) {
  nlohmann::json j = e.ToJson();
  const std::vector<std::string> metrics = ReportedMetrics(e.metrics, control, treatment);
  j["variants"] = {{"control", VariantFigures(control, metrics)}, {"treatment", VariantFigures(treatment, metrics)}};
  j["comparison"] = CompareVariants(control, treatment, e.basis_points, metrics, confidence);
  return j;
}

}  // namespace mms
