// LatencyHistogram: log-linear buckets over 1 µs .. 100 s with 128 buckets
// per power of two, so any quantile it reports (a bucket midpoint, clamped to
// the exact min and max) is within 0.4% of a recorded value — HdrHistogram's
// layout, written for our needs. Histograms merge (add) and subtract (a
// window = the cumulative now minus the cumulative at the window's start),
// and serialize sparsely to JSON for the registry.
//
// WindowedHistogram keeps a ring of per-interval histograms for "the last N
// minutes" figures.
//
// Thread-safety: none; owners (VariantMetrics) lock around them.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/status.h"

namespace mms {

class LatencyHistogram {
 public:
  static constexpr int64_t kMinNs = 1'000;              // 1 µs: smaller values count as 1 µs
  static constexpr int64_t kMaxNs = 100'000'000'000;    // 100 s: larger values count as 100 s
  static constexpr int kSubBits = 7;                    // 128 buckets per octave

  LatencyHistogram();
  void Record(int64_t ns);
  void Merge(const LatencyHistogram& o);
  // this − o, for o an earlier snapshot of this cumulative histogram
  // (min/max stay those of this one).
  void Subtract(const LatencyHistogram& o);
  void Clear();

  uint64_t count() const { return count_; }
  // Value at quantile q in [0, 1] (0.5 = median), in ns; 0 when empty.
  int64_t Quantile(double q) const;
  // How many values are at most `ns`: exact below the minimum and from the
  // maximum up; otherwise the values of every bucket up to the one holding
  // `ns` (so values up to 0.8% above it may be counted).
  uint64_t CountAtMost(int64_t ns) const;
  int64_t min() const { return count_ ? min_ : 0; }
  int64_t max() const { return count_ ? max_ : 0; }
  double mean() const { return count_ ? sum_ / static_cast<double>(count_) : 0; }
  // Sample variance (n − 1), ns².
  double variance() const;

  nlohmann::json ToJson() const;
  static Result<LatencyHistogram> FromJson(const nlohmann::json& j);
  // {"count", "min_ms", "max_ms", "mean_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "p999_ms"}
  nlohmann::json Summary() const;

  static size_t BucketIndex(int64_t ns);
  static int64_t BucketMidpoint(size_t index);
  static size_t BucketCount();

 private:
  std::vector<uint64_t> counts_;
  uint64_t count_ = 0;
  int64_t min_ = 0, max_ = 0;
  double sum_ = 0, sumsq_ = 0;  // of ns, for the mean and variance
};

class WindowedHistogram {
 public:
  // `slots` intervals of `slot_ns` each (default 30 × 20 s = 10 minutes).
  WindowedHistogram(int64_t slot_ns = 20'000'000'000, int slots = 30);
  void Record(int64_t ns, int64_t now_mono_ns);
  // Everything recorded within the last `window_ns` (whole slots).
  LatencyHistogram Window(int64_t window_ns, int64_t now_mono_ns) const;
  // Intervals whose histogram is in memory (recorded into, not yet freed).
  size_t slots_held() const;
  // Frees the intervals that have left the window by `now_mono_ns`; returns
  // how many. (Record does so too, but an idle arm records nothing.)
  size_t Trim(int64_t now_mono_ns);

 private:
  void Advance(int64_t now_mono_ns);
  int64_t slot_ns_;
  // An interval's histogram is made at its first value and freed at the
  // first value or Trim after it left the window: a histogram is 27 KB, and
  // a version or experiment arm that serves rarely used to keep all 30
  // (0.8 MB) whatever its traffic, and one gone idle all it had.
  std::vector<std::unique_ptr<LatencyHistogram>> ring_;
  std::vector<int64_t> slot_id_;  // which interval each ring entry holds
};

}  // namespace mms
