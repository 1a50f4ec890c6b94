// Per-variant serving figures of experiments (and of every served version):
// requests, errors, a cumulative latency histogram, a 10-minute windowed
// one, and business outcomes reported as feedback. Snapshots are plain
// values; the canary judges a stage by subtracting the snapshot taken when
// the stage began from the current one.
//
// Thread-safety: VariantMetrics and MetricsStore lock internally; Record is
// called on the request path (one short critical section).
#pragma once

#include <array>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "core/clock.h"
#include "stats/histogram.h"
#include "stats/significance.h"

namespace mms {

// Feedback values of one metric. The sums are of (value − shift), shift
// being the first value recorded: values such as 1e12 + small differences
// keep their variance, which sum-of-squares minus squared sum cancelled to
// nothing (Welch's test then read p = 0 for no difference). What is lost now
// is only what values far from the first one (by ~1e8 times their spread)
// would lose, as in any one-pass sum.
struct OutcomeStats {
  uint64_t count = 0;  // feedback records
  double shift = 0;
  double sum = 0, sumsq = 0;  // of (value − shift)
  // Records of a value above 0: what a rate counts (a click=0 report is a
  // report, not a click, and a refund of -5 not a conversion; both count in
  // the mean).
  uint64_t positive = 0;
  void Add(double value);
  double total() const { return shift * static_cast<double>(count) + sum; }
  double mean() const { return count ? shift + sum / static_cast<double>(count) : 0.0; }
  double variance() const;  // the sample variance; 0 below two values
  // The same figures about another shift (Since subtracts like for like).
  OutcomeStats Shifted(double new_shift) const;
};

// A sticky experiment's arm by users. A sticky split randomises users, not
// requests: one user's requests (and clicks) are not independent samples —
// a heavy user moves an arm's rate by many requests at once — and tests
// that take the request as the unit read p-values too small. So every
// counted request and outcome is also added to one of kCount buckets by a
// hash of its user id (all of a user's requests share a bucket). The
// buckets are independent samples of users: the comparisons (report.h)
// take their variance from the spread between buckets.
struct UserBuckets {
  static constexpr int kCount = 64;
  template <typename T>
  using Cells = std::array<T, kCount>;
  Cells<uint64_t> requests{}, errors{}, timed{};
  Cells<double> latency_ns{};  // the timed requests' latencies, summed
  struct Outcome {
    Cells<uint64_t> count{}, positive{};
    Cells<double> sum{};  // of (value − the metric's OutcomeStats::shift)
  };
  std::map<std::string, Outcome> outcomes;
};
// A user's bucket: XXH3-64 of the id, modulo UserBuckets::kCount.
int UserBucket(std::string_view user);
// One ratio's figures by user, as the clustered tests take them: (y · scale,
// n) per bucket, offset + Σy / Σn.
template <typename T>
ClusteredArm BucketArm(const UserBuckets::Cells<T>& y, const UserBuckets::Cells<uint64_t>& n, double offset = 0,
                       double scale = 1) {
  ClusteredArm a;
  a.offset = offset;
  for (int b = 0; b < UserBuckets::kCount; ++b) {
    a.y.push_back(static_cast<double>(y[b]) * scale);
    a.n.push_back(static_cast<double>(n[b]));
  }
  return a;
}

struct VariantSnapshot {
  uint64_t requests = 0, errors = 0;
  // Requests recorded with the treatment share in force when they were
  // routed, and the sum of those shares: the sample-ratio check's expected
  // treatment count, right across ramps (and canary stages).
  uint64_t routed = 0;
  double routed_share = 0;
  std::map<std::string, uint64_t> error_codes;  // "MODEL_ERROR" → count
  LatencyHistogram latency;                  // cumulative (or a window after Subtract)
  std::map<std::string, OutcomeStats> outcomes;
  // By user (sticky experiments; none for random ones). They cover every
  // request and outcome only when all were recorded with a bucket: figures
  // counted before buckets existed are not (Covers* say so).
  std::optional<UserBuckets> users;
  bool CoversRequests() const;                          // every request, error and timed latency
  bool CoversOutcome(const std::string& metric) const;  // every report of `metric`

  // Figures since `earlier` (a snapshot of the same variant taken before),
  // buckets included (a canary's stage is judged by user too); without them
  // when `earlier` had figures but no buckets (counted before they existed).
  VariantSnapshot Since(const VariantSnapshot& earlier) const;
  nlohmann::json ToJson() const;  // persistence form
  static VariantSnapshot FromJson(const nlohmann::json& j);
};

class VariantMetrics {
 public:
  // `error_code`: the Status code name of a failed request ("" when it succeeded
  // or the code is unknown). `latency_ns` < 0: counted, not timed.
  // `treatment_share` ≥ 0: the experiment's treatment share when the request
  // was routed (see VariantSnapshot::routed). `user_bucket` in
  // [0, UserBuckets::kCount): also counted in that bucket (UserBucket).
  void Record(int64_t latency_ns, bool error, int64_t now_mono_ns, const std::string& error_code = "",
              double treatment_share = -1, int user_bucket = -1);
  // The largest magnitude an outcome value may have: its square, summed over
  // billions of reports, stays finite (the feedback handler refuses more).
  static constexpr double kMaxOutcome = 1e15;
  void Outcome(const std::string& metric, double value, int user_bucket = -1);
  VariantSnapshot Snapshot() const;
  LatencyHistogram Recent(int64_t window_ns, int64_t now_mono_ns) const;
  // Frees the recent window's intervals that have left it (an idle arm
  // records nothing that would); returns how many.
  size_t TrimRecent(int64_t now_mono_ns);
  // Replaces the cumulative figures (restored from the registry at start).
  void Restore(const VariantSnapshot& s);
  // What Restore put in (empty when none): the figures counted before this
  // process, which /metrics leaves out of its counters.
  VariantSnapshot Restored() const;
  bool TakeDirty();  // true once after any change
  bool dirty() const;
  void MarkDirty();  // a save after TakeDirty failed: the next flush tries again

 private:
  mutable std::mutex mu_;
  VariantSnapshot cum_;       // guarded by mu_
  VariantSnapshot restored_;  // guarded by mu_
  WindowedHistogram recent_;  // guarded by mu_
  bool dirty_ = false;        // guarded by mu_
};

// Metrics by key ("experiment-id/control", "rec:3", ...), created on first use.
class MetricsStore {
 public:
  std::shared_ptr<VariantMetrics> Get(const std::string& key);
  // Publishes `m` under `key` unless one is there already; returns the one kept.
  std::shared_ptr<VariantMetrics> Add(const std::string& key, std::shared_ptr<VariantMetrics> m);
  std::shared_ptr<VariantMetrics> Find(const std::string& key) const;  // null when absent
  std::map<std::string, std::shared_ptr<VariantMetrics>> All() const;
  size_t size() const;
  // Forgets `key` (its version left the registry); holders keep their copy.
  void Remove(const std::string& key);
  // Forgets each entry `idle(key)` says may go that nothing else holds (no
  // request or feedback can record into it meanwhile: a holder gets one only
  // from this store, under its lock) and that has no change unsaved (dirty).
  // Returns how many. `idle` runs under the store's lock: no locks of its own.
  size_t RemoveIdle(const std::function<bool(const std::string& key)>& idle);

 private:
  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<VariantMetrics>> m_;  // guarded by mu_
};

std::string VariantKey(const std::string& experiment, const std::string& variant);

}  // namespace mms
