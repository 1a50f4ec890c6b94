#include "rollout/experiment_metrics.h"

#include <cmath>
#include <numeric>
#include <type_traits>

#include "core/hash.h"

namespace mms {

int UserBucket(std::string_view user) { return static_cast<int>(Xxh3Of(user) % UserBuckets::kCount); }

namespace {
template <typename T>
T Total(const UserBuckets::Cells<T>& cells) {
  return std::accumulate(cells.begin(), cells.end(), T{});
}
bool InBucketRange(int b) { return b >= 0 && b < UserBuckets::kCount; }
}  // namespace

bool VariantSnapshot::CoversRequests() const {
  return users && Total(users->requests) == requests && Total(users->errors) == errors &&
         Total(users->timed) == latency.count();
}

bool VariantSnapshot::CoversOutcome(const std::string& metric) const {
  if (!CoversRequests()) return false;
  auto o = outcomes.find(metric);
  auto b = users->outcomes.find(metric);
  const uint64_t count = o == outcomes.end() ? 0 : o->second.count;
  return count == (b == users->outcomes.end() ? 0 : Total(b->second.count));
}

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

namespace {
template <typename T>
void SubtractCells(UserBuckets::Cells<T>* cells, const UserBuckets::Cells<T>& before) {
  for (int b = 0; b < UserBuckets::kCount; ++b) {
    if constexpr (std::is_unsigned_v<T>)
      (*cells)[b] -= std::min((*cells)[b], before[b]);
    else
      (*cells)[b] -= before[b];
  }
}
}  // namespace

VariantSnapshot VariantSnapshot::Since(const VariantSnapshot& earlier) const {
  VariantSnapshot d = *this;
  // The buckets subtract like the totals. Without buckets in `earlier`, only
  // an empty one leaves them meaningful (nothing to take away).
  bool earlier_empty = earlier.requests == 0 && earlier.errors == 0 && earlier.latency.count() == 0;
  for (const auto& [name, o] : earlier.outcomes) earlier_empty = earlier_empty && o.count == 0;
  if (d.users && earlier.users) {
    UserBuckets& u = *d.users;
    SubtractCells(&u.requests, earlier.users->requests);
    SubtractCells(&u.errors, earlier.users->errors);
    SubtractCells(&u.timed, earlier.users->timed);
    SubtractCells(&u.latency_ns, earlier.users->latency_ns);
    for (auto& [name, cells] : u.outcomes) {
      auto it = earlier.users->outcomes.find(name);
      if (it == earlier.users->outcomes.end()) continue;
      UserBuckets::Outcome before = it->second;
      // Sums of (value − shift): the earlier ones about this snapshot's shift.
      auto now_o = outcomes.find(name);
      auto then_o = earlier.outcomes.find(name);
      if (now_o != outcomes.end() && then_o != earlier.outcomes.end()) {
        const double k = then_o->second.shift - now_o->second.shift;
        for (int b = 0; b < UserBuckets::kCount; ++b) before.sum[b] += static_cast<double>(before.count[b]) * k;
      }
      SubtractCells(&cells.count, before.count);
      SubtractCells(&cells.positive, before.positive);
      SubtractCells(&cells.sum, before.sum);
    }
  } else if (!earlier_empty) {
    d.users.reset();
  }
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
  nlohmann::json j{{"requests", requests}, {"errors", errors}, {"error_codes", error_codes},
                   {"latency", latency.ToJson()}, {"outcomes", o}, {"routed", routed}, {"routed_share", routed_share}};
  if (users) {
    nlohmann::json bo = nlohmann::json::object();
    for (const auto& [name, b] : users->outcomes)
      bo[name] = {{"count", b.count}, {"positive", b.positive}, {"sum", b.sum}};
    j["users"] = {{"buckets", UserBuckets::kCount}, {"requests", users->requests}, {"errors", users->errors},
                  {"timed", users->timed}, {"latency_ns", users->latency_ns}, {"outcomes", bo}};
  }
  return j;
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
// One array of UserBuckets::kCount numbers; false (nothing read) otherwise.
template <typename T>
bool ReadCells(const nlohmann::json& j, const char* key, UserBuckets::Cells<T>* out) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_array() || it->size() != UserBuckets::kCount) return false;
  for (int b = 0; b < UserBuckets::kCount; ++b) {
    const nlohmann::json& v = (*it)[static_cast<size_t>(b)];
    if (!v.is_number()) return false;
    if constexpr (std::is_same_v<T, uint64_t>) {
      if (!v.is_number_unsigned()) return false;
      (*out)[b] = v.get<uint64_t>();
    } else {
      (*out)[b] = v.get<double>();
      if (!std::isfinite((*out)[b])) return false;
    }
  }
  return true;
}
// Saved buckets, all or nothing: any part missing or malformed (or another
// bucket count) reads as none, and the tests take the request as the unit.
std::optional<UserBuckets> ReadUserBuckets(const nlohmann::json& j) {
  auto n = j.is_object() ? j.find("buckets") : j.end();
  if (!j.is_object() || n == j.end() || !n->is_number_integer() || n->get<int64_t>() != UserBuckets::kCount)
    return std::nullopt;
  UserBuckets u;
  if (!ReadCells(j, "requests", &u.requests) || !ReadCells(j, "errors", &u.errors) || !ReadCells(j, "timed", &u.timed) ||
      !ReadCells(j, "latency_ns", &u.latency_ns))
    return std::nullopt;
  auto o = j.find("outcomes");
  if (o == j.end() || !o->is_object()) return std::nullopt;
  for (auto it = o->begin(); it != o->end(); ++it) {
    UserBuckets::Outcome b;
    if (!ReadCells(*it, "count", &b.count) || !ReadCells(*it, "positive", &b.positive) || !ReadCells(*it, "sum", &b.sum))
      return std::nullopt;
    u.outcomes[it.key()] = b;
  }
  return u;
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
  if (j.contains("users")) s.users = ReadUserBuckets(j["users"]);  // absent before buckets, and for random splits
  return s;
}

void VariantMetrics::Record(int64_t latency_ns, bool error, int64_t now, const std::string& error_code,
                            double treatment_share, int user_bucket) {
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
  if (InBucketRange(user_bucket)) {
    if (!cum_.users) cum_.users.emplace();
    UserBuckets& u = *cum_.users;
    ++u.requests[user_bucket];
    if (error) ++u.errors[user_bucket];
    if (latency_ns >= 0) {
      ++u.timed[user_bucket];
      u.latency_ns[user_bucket] += static_cast<double>(latency_ns);
    }
  }
  dirty_ = true;
}

void VariantMetrics::Outcome(const std::string& metric, double value, int user_bucket) {
  std::lock_guard<std::mutex> lock(mu_);
  OutcomeStats& o = cum_.outcomes[metric];
  o.Add(value);
  if (InBucketRange(user_bucket)) {
    if (!cum_.users) cum_.users.emplace();
    UserBuckets::Outcome& b = cum_.users->outcomes[metric];
    ++b.count[user_bucket];
    if (value > 0) ++b.positive[user_bucket];
    b.sum[user_bucket] += value - o.shift;  // the shift Add set at the first report
  }
  dirty_ = true;
}

VariantSnapshot VariantMetrics::Snapshot() const {
  std::lock_guard<std::mutex> lock(mu_);
  return cum_;
}

size_t VariantMetrics::TrimRecent(int64_t now) {
  std::lock_guard<std::mutex> lock(mu_);
  return recent_.Trim(now);
}

LatencyHistogram VariantMetrics::Recent(int64_t window_ns, int64_t now) const {
  std::lock_guard<std::mutex> lock(mu_);
  return recent_.Window(window_ns, now);
}

void VariantMetrics::Restore(const VariantSnapshot& s) {
  std::lock_guard<std::mutex> lock(mu_);
  cum_ = s;
  restored_ = s;
}

VariantSnapshot VariantMetrics::Restored() const {
  std::lock_guard<std::mutex> lock(mu_);
  return restored_;
}

bool VariantMetrics::TakeDirty() {
  std::lock_guard<std::mutex> lock(mu_);
  bool d = dirty_;
  dirty_ = false;
  return d;
}

bool VariantMetrics::dirty() const {
  std::lock_guard<std::mutex> lock(mu_);
  return dirty_;
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

size_t MetricsStore::RemoveIdle(const std::function<bool(const std::string& key)>& idle) {
  std::lock_guard<std::mutex> lock(mu_);
  size_t removed = 0;
  for (auto it = m_.begin(); it != m_.end();) {
    if (idle(it->first) && it->second.use_count() == 1 && !it->second->dirty()) {
      it = m_.erase(it);
      ++removed;
    } else {
      ++it;
    }
  }
  return removed;
}

size_t MetricsStore::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return m_.size();
}

std::map<std::string, std::shared_ptr<VariantMetrics>> MetricsStore::All() const {
  std::lock_guard<std::mutex> lock(mu_);
  return m_;
}

}  // namespace mms
