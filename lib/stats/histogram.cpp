#include "stats/histogram.h"

#include <algorithm>
#include <cmath>

namespace mms {
namespace {
constexpr int64_t kSub = int64_t{1} << LatencyHistogram::kSubBits;

int MsbIndex(uint64_t v) { return 63 - __builtin_clzll(v); }

// The octave of kMinNs is the first one kept; values are clamped into range.
const int kFirstOctave = MsbIndex(LatencyHistogram::kMinNs);
const int kLastOctave = MsbIndex(LatencyHistogram::kMaxNs);
}  // namespace

size_t LatencyHistogram::BucketCount() { return static_cast<size_t>(kLastOctave - kFirstOctave + 1) * kSub; }

size_t LatencyHistogram::BucketIndex(int64_t ns) {
  ns = std::clamp(ns, kMinNs, kMaxNs);
  int e = MsbIndex(static_cast<uint64_t>(ns));
  int64_t sub = (ns >> (e - kSubBits)) & (kSub - 1);
  return static_cast<size_t>(e - kFirstOctave) * kSub + static_cast<size_t>(sub);
}

int64_t LatencyHistogram::BucketMidpoint(size_t index) {
  int e = static_cast<int>(index / kSub) + kFirstOctave;
  int64_t sub = static_cast<int64_t>(index % kSub);
  int64_t width = int64_t{1} << (e - kSubBits);
  int64_t low = (int64_t{1} << e) + sub * width;
  return low + width / 2;
}

LatencyHistogram::LatencyHistogram() : counts_(BucketCount(), 0) {}

void LatencyHistogram::Record(int64_t ns) {
  if (ns < 0) ns = 0;
  ++counts_[BucketIndex(ns)];
  if (count_ == 0 || ns < min_) min_ = ns;
  if (count_ == 0 || ns > max_) max_ = ns;
  ++count_;
  double d = static_cast<double>(ns);
  sum_ += d;
  sumsq_ += d * d;
}

void LatencyHistogram::Merge(const LatencyHistogram& o) {
  if (o.count_ == 0) return;
  for (size_t i = 0; i < counts_.size(); ++i) counts_[i] += o.counts_[i];
  min_ = count_ ? std::min(min_, o.min_) : o.min_;
  max_ = count_ ? std::max(max_, o.max_) : o.max_;
  count_ += o.count_;
  sum_ += o.sum_;
  sumsq_ += o.sumsq_;
}

void LatencyHistogram::Subtract(const LatencyHistogram& o) {
  // Bucket by bucket, and the count is what the buckets hold, so the result
  // reads back even when `o` was not an earlier state of this histogram.
  count_ = 0;
  for (size_t i = 0; i < counts_.size(); ++i) {
    counts_[i] -= std::min(counts_[i], o.counts_[i]);
    count_ += counts_[i];
  }
  sum_ = count_ ? std::max(0.0, sum_ - o.sum_) : 0;
  sumsq_ = count_ ? std::max(0.0, sumsq_ - o.sumsq_) : 0;
  if (count_ == 0) {
    min_ = max_ = 0;
    return;
  }
  // The window's extremes lie in its lowest and highest non-empty buckets.
  size_t lo = 0, hi = counts_.size() - 1;
  while (lo < counts_.size() && counts_[lo] == 0) ++lo;
  while (hi > 0 && counts_[hi] == 0) --hi;
  min_ = std::max(min_, BucketMidpoint(lo));
  max_ = std::min(max_, BucketMidpoint(hi));
  if (min_ > max_) min_ = max_;
}

void LatencyHistogram::Clear() {
  std::fill(counts_.begin(), counts_.end(), 0);
  count_ = 0;
  min_ = max_ = 0;
  sum_ = sumsq_ = 0;
}

int64_t LatencyHistogram::Quantile(double q) const {
  if (count_ == 0) return 0;
  q = std::clamp(q, 0.0, 1.0);
  // The rank-th smallest value, 1-based (nearest rank): ceil(q·n), where a
  // q·n within rounding of a whole number is that number (0.07 · 100 is
  // 7.000000000000001 in doubles, and the 7th value is meant).
  double x = q * static_cast<double>(count_);
  double whole = std::round(x);
  uint64_t rank = static_cast<uint64_t>(std::fabs(x - whole) <= 1e-9 * std::max(1.0, x) ? whole : std::ceil(x));
  rank = std::max<uint64_t>(1, rank);
  if (rank >= count_) return max_;  // the extremes are known exactly
  if (rank == 1) return min_;
  uint64_t seen = 0;
  for (size_t i = 0; i < counts_.size(); ++i) {
    seen += counts_[i];
    if (seen >= rank) return std::clamp(BucketMidpoint(i), min_, max_);
  }
  return max_;
}

uint64_t LatencyHistogram::CountAtMost(int64_t ns) const {
  if (count_ == 0 || ns < min_) return 0;
  if (ns >= max_) return count_;
  uint64_t n = 0;
  for (size_t i = 0, last = BucketIndex(ns); i <= last; ++i) n += counts_[i];
  return std::min(n, count_);
}

double LatencyHistogram::variance() const {
  if (count_ < 2) return 0;
  double n = static_cast<double>(count_);
  double m = sum_ / n;
  return std::max(0.0, (sumsq_ - n * m * m) / (n - 1));
}

nlohmann::json LatencyHistogram::ToJson() const {
  nlohmann::json b = nlohmann::json::array();
  for (size_t i = 0; i < counts_.size(); ++i)
    if (counts_[i]) b.push_back({i, counts_[i]});
  return {{"n", count_}, {"min", min_}, {"max", max_}, {"sum", sum_}, {"sumsq", sumsq_}, {"b", b}};
}

Result<LatencyHistogram> LatencyHistogram::FromJson(const nlohmann::json& j) {
  LatencyHistogram h;
  try {
    h.count_ = j.at("n").get<uint64_t>();
    h.min_ = j.at("min").get<int64_t>();
    h.max_ = j.at("max").get<int64_t>();
    h.sum_ = j.at("sum").get<double>();
    h.sumsq_ = j.at("sumsq").get<double>();
    uint64_t total = 0;
    for (const auto& e : j.at("b")) {
      size_t i = e.at(0).get<size_t>();
      if (i >= h.counts_.size()) return Corrupt("histogram bucket out of range");
      h.counts_[i] = e.at(1).get<uint64_t>();
      total += h.counts_[i];
    }
    if (total != h.count_) return Corrupt("histogram counts do not add up");
  } catch (const std::exception& e) {
    return Corrupt(std::string("bad histogram: ") + e.what());
  }
  return h;
}

nlohmann::json LatencyHistogram::Summary() const {
  auto ms = [](double ns) { return std::round(ns / 1e3) / 1e3; };
  return {{"count", count_},
          {"min_ms", ms(static_cast<double>(min()))},
          {"max_ms", ms(static_cast<double>(max()))},
          {"mean_ms", ms(mean())},
          {"p50_ms", ms(static_cast<double>(Quantile(0.50)))},
          {"p90_ms", ms(static_cast<double>(Quantile(0.90)))},
          {"p95_ms", ms(static_cast<double>(Quantile(0.95)))},
          {"p99_ms", ms(static_cast<double>(Quantile(0.99)))},
          {"p999_ms", ms(static_cast<double>(Quantile(0.999)))}};
}

WindowedHistogram::WindowedHistogram(int64_t slot_ns, int slots)
    : slot_ns_(slot_ns), ring_(static_cast<size_t>(slots)), slot_id_(static_cast<size_t>(slots), -1) {}

void WindowedHistogram::Advance(int64_t now) {
  int64_t id = now / slot_ns_;
  size_t i = static_cast<size_t>(id % static_cast<int64_t>(ring_.size()));
  if (slot_id_[i] != id) {
    // A new interval: every slot that left the window is freed (not only
    // this one, which a rarely used arm would reach again only by chance).
    Trim(now);
    ring_[i].reset();
    slot_id_[i] = id;
  }
}

size_t WindowedHistogram::Trim(int64_t now) {
  const int64_t oldest = now / slot_ns_ - static_cast<int64_t>(ring_.size());
  size_t freed = 0;
  for (size_t j = 0; j < ring_.size(); ++j)
    if (ring_[j] && slot_id_[j] <= oldest) {
      ring_[j].reset();
      ++freed;
    }
  return freed;
}

void WindowedHistogram::Record(int64_t ns, int64_t now) {
  Advance(now);
  int64_t id = now / slot_ns_;
  auto& slot = ring_[static_cast<size_t>(id % static_cast<int64_t>(ring_.size()))];
  if (!slot) slot = std::make_unique<LatencyHistogram>();
  slot->Record(ns);
}

size_t WindowedHistogram::slots_held() const {
  size_t n = 0;
  for (const auto& slot : ring_) n += slot != nullptr;
  return n;
}

LatencyHistogram WindowedHistogram::Window(int64_t window_ns, int64_t now) const {
  LatencyHistogram out;
  int64_t current = now / slot_ns_;
  int64_t slots = std::min<int64_t>(static_cast<int64_t>(ring_.size()), (window_ns + slot_ns_ - 1) / slot_ns_);
  for (int64_t k = 0; k < slots; ++k) {
    int64_t id = current - k;
    if (id < 0) break;
    size_t i = static_cast<size_t>(id % static_cast<int64_t>(ring_.size()));
    if (slot_id_[i] == id && ring_[i]) out.Merge(*ring_[i]);
  }
  return out;
}

}  // namespace mms
