#include "rollout/experiment_metrics.h"

#include <cmath>

namespace mms {

void OutcomeStats::Add(double value) {
  if (count == 0) {
    shift = value;
    sum = sumsq = 0;
  }
  ++count;
  if (value > 0) ++positive;
  const double d = value - shift;
  sum += d;
  sumsq += d * d;
}

double OutcomeStats::variance() const {
  if (count < 2) return 0.0;
  const double n = static_cast<double>(count), m = sum / n;
  return std::max(0.0, (sumsq - n * m * m) / (n - 1));
}

OutcomeStats OutcomeStats::Shifted(double new_shift) const {
  // Σ(x−s') = Σ(x−s) + n·k and Σ(x−s')² = Σ(x−s)² + 2k·Σ(x−s) + n·k², with k = s − s'.
  OutcomeStats o = *this;
  const double k = shift - new_shift, n = static_cast<double>(count);
  o.shift = new_shift;
  o.sum = sum + n * k;
  o.sumsq = sumsq + 2 * k * sum + n * k * k;
  return o;
}

std::string VariantKey(const std::string& experiment, const std::string& variant) {
  return experiment + "/" + variant;
}

VariantSnapshot VariantSnapshot::Since(const VariantSnapshot& earlier) const {
  VariantSnapshot d = *this;
  d.requests -= std::min(d.requests, earlier.requests);
  d.routed -= std::min(d.routed, earlier.routed);
  d.routed_share = std::max(0.0, d.routed_share - earlier.routed_share);
  d.errors -= std::min(d.errors, earlier.errors);
  for (auto& [code, n] : d.error_codes) {
    auto it = earlier.error_codes.find(code);
    if (it != earlier.error_codes.end()) n -= std::min(n, it->second);
  }
  d.latency.Subtract(earlier.latency);
  for (auto& [name, o] : d.outcomes) {
    auto it = earlier.outcomes.find(name);
    if (it == earlier.outcomes.end() || it->second.count == 0) continue;
    const OutcomeStats before = it->second.Shifted(o.shift);  // the same shift unless restored from older figures
    o.count -= std::min(o.count, before.count);
    o.positive -= std::min(o.positive, before.positive);
    o.sum -= before.sum;
    o.sumsq -= before.sumsq;
  }
  return d;
}

nlohmann::json VariantSnapshot::ToJson() const {
  nlohmann::json o = nlohmann::json::object();
  // "sum" and "sumsq" of the values as before (older mms reads them); the
  // shifted sums beside them are what this one reads.
  for (const auto& [name, s] : outcomes) {
    const OutcomeStats plain = s.Shifted(0);
    o[name] = {{"count", s.count}, {"sum", plain.sum}, {"sumsq", plain.sumsq},
               {"shift", s.shift}, {"shifted_sum", s.sum}, {"shifted_sumsq", s.sumsq}, {"positive", s.positive}};
  }
  return {{"requests", requests}, {"errors", errors}, {"error_codes", error_codes}, {"latency", latency.ToJson()},
          {"outcomes", o}, {"routed", routed}, {"routed_share", routed_share}};
}

namespace {
// Saved figures are read leniently: a field that is missing, of another type
// or not finite (JSON stores an overflowed double as null) reads as 0, so one
// bad value cannot stop an experiment's or a canary's figures from loading.
uint64_t Count(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number()) return 0;
  if (it->is_number_unsigned()) return it->get<uint64_t>();
  double v = it->get<double>();
  return v > 0 && v < 1.8e19 ? static_cast<uint64_t>(v) : 0;
}
double Real(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number()) return 0;
  double v = it->get<double>();
  return std::isfinite(v) ? v : 0;
}
}  // namespace

VariantSnapshot VariantSnapshot::FromJson(const nlohmann::json& j) {
  VariantSnapshot s;
  if (!j.is_object()) return s;
  s.requests = Count(j, "requests");
  s.errors = Count(j, "errors");
  s.routed = Count(j, "routed");  // absent in figures saved before it existed
  s.routed_share = Real(j, "routed_share");
  if (j.contains("error_codes") && j["error_codes"].is_object())
    for (auto it = j["error_codes"].begin(); it != j["error_codes"].end(); ++it)
      if (it->is_number_unsigned()) s.error_codes[it.key()] = it->get<uint64_t>();
  if (j.contains("latency"))
    if (auto h = LatencyHistogram::FromJson(j["latency"]); h.ok()) s.latency = *h;
  if (j.contains("outcomes") && j["outcomes"].is_object())
    for (auto it = j["outcomes"].begin(); it != j["outcomes"].end(); ++it)
      if (it->is_object()) {
        const bool shifted = it->contains("shift");  // figures saved before shifts: plain sums
        // Figures saved before positive records were counted: every record (as rates were then).
        s.outcomes[it.key()] = {Count(*it, "count"), Real(*it, "shift"), Real(*it, shifted ? "shifted_sum" : "sum"),
                                Real(*it, shifted ? "shifted_sumsq" : "sumsq"),
                                Count(*it, it->contains("positive") ? "positive" : "count")};
      }
  return s;
}

void VariantMetrics::Record(int64_t latency_ns, bool error, int64_t now, const std::string& error_code,
                            double treatment_share) {
  std::lock_guard<std::mutex> lock(mu_);
  ++cum_.requests;
  if (error) {
    ++cum_.errors;
    if (!error_code.empty()) ++cum_.error_codes[error_code];
  }
  if (treatment_share >= 0) {
    ++cum_.routed;
    cum_.routed_share += treatment_share;
  }
  if (latency_ns >= 0) {
    cum_.latency.Record(latency_ns);
    recent_.Record(latency_ns, now);
  }
  dirty_ = true;
}

void VariantMetrics::Outcome(const std::string& metric, double value) {
  std::lock_guard<std::mutex> lock(mu_);
  cum_.outcomes[metric].Add(value);
  dirty_ = true;
}

VariantSnapshot VariantMetrics::Snapshot() const {
  std::lock_guard<std::mutex> lock(mu_);
  return cum_;
}

LatencyHistogram VariantMetrics::Recent(int64_t window_ns, int64_t now) const {
  std::lock_guard<std::mutex> lock(mu_);
  return recent_.Window(window_ns, now);
}

void VariantMetrics::Restore(const VariantSnapshot& s) {
  std::lock_guard<std::mutex> lock(mu_);
  cum_ = s;
}

bool VariantMetrics::TakeDirty() {
  std::lock_guard<std::mutex> lock(mu_);
  bool d = dirty_;
  dirty_ = false;
  return d;
}

void VariantMetrics::MarkDirty() {
  std::lock_guard<std::mutex> lock(mu_);
  dirty_ = true;
}

std::shared_ptr<VariantMetrics> MetricsStore::Get(const std::string& key) {
  std::lock_guard<std::mutex> lock(mu_);
  auto& p = m_[key];
  if (!p) p = std::make_shared<VariantMetrics>();
  return p;
}

std::shared_ptr<VariantMetrics> MetricsStore::Add(const std::string& key, std::shared_ptr<VariantMetrics> m) {
  std::lock_guard<std::mutex> lock(mu_);
  auto& p = m_[key];
  if (!p) p = std::move(m);
  return p;
}

std::shared_ptr<VariantMetrics> MetricsStore::Find(const std::string& key) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = m_.find(key);
  return it == m_.end() ? nullptr : it->second;
}

void MetricsStore::Remove(const std::string& key) {
  std::lock_guard<std::mutex> lock(mu_);
  m_.erase(key);
}

std::map<std::string, std::shared_ptr<VariantMetrics>> MetricsStore::All() const {
  std::lock_guard<std::mutex> lock(mu_);
  return m_;
}

}  // namespace mms
