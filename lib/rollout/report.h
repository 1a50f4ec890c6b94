// Experiment reports: per-variant figures and the comparisons between them
// (difference with a confidence interval, z-tests for error and outcome
// rates, Welch's t-test for latency and outcome value means, and the
// sample-ratio-mismatch check flagged at p < 0.001).
//
// The unit of the tests: a sticky experiment splits users, so where both
// arms' figures are by user (VariantSnapshot::users covering them) every
// comparison takes the user as the unit (ClusteredRatioTest over the user
// buckets; "unit": "user", with the design effect). With small counts —
// where the request-level test is Fisher's exact test — the larger of the
// two p-values is reported: the t-test of a few buckets is no better than
// the normal approximation there; and where the buckets show no spread at
// all (no errors in either arm) the request-level test and its interval
// stand, not a certain [0, 0]. Random experiments split requests, and
// figures counted before buckets existed have none: those take the request
// ("unit": "request").
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "registry/registry.h"
#include "rollout/experiment_metrics.h"
#include "rollout/user_split.h"

namespace mms {

// requests, errors, error_rate, error_codes {CODE: n}, latency {count,
// min/max/mean, p50..p999},
// outcomes {metric: {count, rate, mean}}.
nlohmann::json VariantFigures(const VariantSnapshot& s, const std::vector<std::string>& metrics);
// A version's serving figures (`mms stats`' "models"): VariantFigures plus
// `refused` {total, by reason} — requests turned away before they ran: rate
// limited, queue full, bad input, deadline missed (the client's deadline
// passed first), pool full — and `failure_rate`, those that ran and failed
// (or whose model failed to load), over all requests: what the text's
// ERRORS column shows. `error_rate` counts both.
nlohmann::json ServingFigures(const VariantSnapshot& s);

// `basis_points`: the configured treatment share, for the SRM check of
// figures that do not carry the shares their requests were routed with.
// The sample-ratio check over a sticky experiment's distinct users (UserSplit),
// against the share each was first routed with: {.., "users": {control,
// treatment}, "since": "mmsd started", "saturated"?}.
nlohmann::json UserSampleRatio(const UserSplit::Counts& users);

nlohmann::json CompareVariants(const VariantSnapshot& control, const VariantSnapshot& treatment, int basis_points,
                               const std::vector<std::string>& metrics, double confidence = 0.95);

// The metrics an experiment reports: those it declares, then any other
// either arm has outcomes for (an experiment that declares none accepts
// any), so that both arms and the comparison list the same ones.
std::vector<std::string> ReportedMetrics(const std::vector<std::string>& declared, const VariantSnapshot& control,
                                         const VariantSnapshot& treatment);

// The report of experiment `e` from its arms' figures: its record, both
// variants' figures and their comparison (mms stats; the daemon adds the
// check over users, which only it counts).
nlohmann::json ExperimentReport(const ExperimentRecord& e, const VariantSnapshot& control,
                                const VariantSnapshot& treatment, double confidence);

constexpr double kSrmAlpha = 0.001;

}  // namespace mms
