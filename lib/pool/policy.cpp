#include "pool/policy.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <list>
#include <set>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace mms {
namespace {

class Lru final : public EvictionPolicy {
 public:
  const char* name() const override { return "lru"; }
  void Touch(PoolKey k) override {
    auto it = pos_.find(k);
    if (it == pos_.end()) return;
    order_.splice(order_.end(), order_, it->second);  // most recent at the back
  }
  void Insert(PoolKey k) override {
    if (pos_.count(k)) return Touch(k);
    order_.push_back(k);
    pos_[k] = std::prev(order_.end());
  }
  void Remove(PoolKey k) override {
    auto it = pos_.find(k);
    if (it == pos_.end()) return;
    order_.erase(it->second);
    pos_.erase(it);
  }
  std::optional<PoolKey> Victim(const std::function<bool(PoolKey)>& evictable) override {
    for (PoolKey k : order_)
      if (evictable(k)) return k;
    return std::nullopt;
  }

 private:
  std::list<PoolKey> order_;
  std::unordered_map<PoolKey, std::list<PoolKey>::iterator> pos_;
};

// LRFU scores in the log domain. A score s last updated at access t is kept
// as ln(s) + lambda*t: its decayed value at any later time is a common factor
// away, so comparing these keys compares the decayed scores, and they never
// need updating between a key's own accesses. Keys are kept after eviction.
constexpr double kNoScore = -std::numeric_limits<double>::infinity();  // never accessed

// The log-score after one more access at log-domain time `now` (which only grows).
double AddAccessAt(double log_score, double now) {
  return std::log1p(std::exp(log_score - now)) + now;  // exp(-inf) = 0: a first access scores 1
}

// The log-score after one more access at `clock` (which only grows).
double AddAccess(double log_score, double lambda, uint64_t clock) {
  return AddAccessAt(log_score, lambda * static_cast<double>(clock));
}

// The evictable resident with the lowest `score` (ties: the lower key).
template <typename ScoreFn>
std::optional<PoolKey> Lowest(const std::unordered_set<PoolKey>& resident, ScoreFn score,
                              const std::function<bool(PoolKey)>& evictable) {
  std::optional<PoolKey> best;
  double best_score = 0;
  for (PoolKey k : resident) {
    if (!evictable(k)) continue;
    const double s = score(k);
    if (!best || s < best_score || (s == best_score && k < *best)) {
      best = k;
      best_score = s;
    }
  }
  return best;
}

class Lrfu final : public EvictionPolicy {
 public:
  explicit Lrfu(double half_life) : half_life_(half_life), lambda_(std::log(2.0) / half_life) {}
  const char* name() const override { return "lrfu"; }
  double half_life() const override { return half_life_; }
  void Touch(PoolKey k) override {
    auto [it, fresh] = scores_.try_emplace(k, kNoScore);
    it->second = AddAccess(it->second, lambda_, ++clock_);
  }
  void Insert(PoolKey k) override { resident_.insert(k); }
  void Remove(PoolKey k) override { resident_.erase(k); }
  void Forget(PoolKey k) override {
    resident_.erase(k);
    scores_.erase(k);
  }
  std::optional<PoolKey> Victim(const std::function<bool(PoolKey)>& evictable) override {
    return Lowest(resident_, [this](PoolKey k) {
      auto it = scores_.find(k);
      return it == scores_.end() ? kNoScore : it->second;
    }, evictable);
  }

 private:
  const double half_life_, lambda_;
  uint64_t clock_ = 0;
  std::unordered_map<PoolKey, double> scores_;  // log-scores
  std::unordered_set<PoolKey> resident_;
};

class AdaptiveLrfu final : public EvictionPolicy {
 public:
  explicit AdaptiveLrfu(double half_life) {
    // The configured half-life first: it leads until another expert has missed less.
    // Restarting experts come after the plain ones, so that a plain one leads
    // while their histories are the same (before any restart).
    const double factors[kExperts] = {1.0, 0.25, 0.5, 2.0, 4.0, 4.0, 8.0};
    for (size_t i = 0; i < kExperts; ++i) {
      experts_[i].half_life = half_life * factors[i];
      experts_[i].lambda = std::log(2.0) / experts_[i].half_life;
      experts_[i].restarts = i >= kPlainExperts;
    }
  }
  const char* name() const override { return "adaptive"; }
  double half_life() const override { return experts_[best_].half_life; }
  void Touch(PoolKey k) override {
    ++clock_;
    const size_t capacity = std::max<size_t>(1, resident_.size());
    Slots& slots = slots_[k];
    bool leader_missed = false;
    for (size_t i = 0; i < kExperts; ++i) {
      Expert& x = experts_[i];
      Slot& s = slots[i];
      x.misses *= kMissDecay;
      s.log = AddAccessAt(s.log, x.lambda * static_cast<double>(clock_) + x.restarted);
      // A virtual hit leaves k's entry in `order` below its score now; Shrink
      // re-files it if it comes up (scores only rise between entries).
      if (s.cached) continue;
      x.misses += 1;
      leader_missed |= i == best_;
      Shrink(i, capacity - 1);  // room for k (forced admission, as in the tier), at the tier's size now
      s.cached = true;
      s.filed = s.log;
      x.order.emplace(s.log, k);
      // Hits never shrink a virtual cache: while a load runs, its victims have
      // left the tier and the newcomer has not arrived yet.
    }
    DetectChange(leader_missed);
    best_ = 0;
    for (size_t i = 1; i < kExperts; ++i)
      if (experts_[i].misses < experts_[best_].misses) best_ = i;
  }
  void Insert(PoolKey k) override { resident_.insert(k); }
  void Remove(PoolKey k) override { resident_.erase(k); }
  void Forget(PoolKey k) override {
    resident_.erase(k);
    auto it = slots_.find(k);
    if (it == slots_.end()) return;
    for (size_t i = 0; i < kExperts; ++i)
      if (it->second[i].cached) experts_[i].order.erase({it->second[i].filed, k});
    slots_.erase(it);
  }
  std::optional<PoolKey> Victim(const std::function<bool(PoolKey)>& evictable) override {
    return Lowest(resident_, [this](PoolKey k) {
      auto it = slots_.find(k);
      return it == slots_.end() ? kNoScore : it->second[best_].log;
    }, evictable);
  }

 private:
  static constexpr size_t kPlainExperts = 5, kExperts = 7;
  // Misses (and accesses, for the leader's miss rate) weigh half after 500 further accesses.
  static inline const double kMissDecay = std::exp(-std::log(2.0) / 500.0);
  // The change detector: a CUSUM of the leader's virtual misses in excess of
  // its miss rate + kChangeSlack; a change is declared when it passes kChangeLimit misses.
  static constexpr double kChangeSlack = 0.2, kChangeLimit = 4;
  // A restart divides every score of the expert by 2^40: what came before
  // only breaks ties between keys not accessed since.
  static inline const double kRestartLog = 40 * std::log(2.0);

  struct Slot {                // one key in one expert
    double log = kNoScore;     // its log-score
    double filed = kNoScore;   // the score its entry in the expert's `order` has (<= log)
    bool cached = false;       // in the expert's virtual cache
  };
  using Slots = std::array<Slot, kExperts>;
  struct Expert {
    double half_life = 0, lambda = 0;
    bool restarts = false;                       // drops its history when the traffic changes
    double restarted = 0;                        // log-domain time added by restarts so far
    std::set<std::pair<double, PoolKey>> order;  // the virtual cache by filed score, lowest first
    double misses = 0;                           // decayed
  };

  // A restart moves an expert's log-domain clock forward: every score it
  // holds shrinks by the same factor, so its order stays valid.
  void DetectChange(bool leader_missed) {
    accesses_ = accesses_ * kMissDecay + 1;
    const double rate = experts_[best_].misses / accesses_;
    cusum_ = std::max(0.0, cusum_ + (leader_missed ? 1.0 : 0.0) - rate - kChangeSlack);
    if (cusum_ <= kChangeLimit) return;
    cusum_ = 0;
    // A restarting expert that leads keeps its history: the panel chose it
    // on its record since the last change, and a burst of one-off loads
    // looks like a change too.
    for (size_t i = 0; i < kExperts; ++i)
      if (experts_[i].restarts && i != best_) experts_[i].restarted += kRestartLog;
  }

  // Evicts expert i's lowest until it holds `limit`. An entry filed below its
  // key's score now is re-filed first: every other entry's score is at least
  // its filed one, so a lowest entry that is up to date is the true lowest.
  void Shrink(size_t i, size_t limit) {
    Expert& x = experts_[i];
    while (x.order.size() > limit) {
      auto low = x.order.begin();
      Slot& s = slots_.find(low->second)->second[i];
      if (s.filed != s.log) {
        auto node = x.order.extract(low);
        node.value().first = s.filed = s.log;
        x.order.insert(std::move(node));
        continue;
      }
      s.cached = false;
      x.order.erase(low);
    }
  }

  uint64_t clock_ = 0;
  std::array<Expert, kExperts> experts_;
  std::unordered_map<PoolKey, Slots> slots_;  // every key's score in every expert
  size_t best_ = 0;
  double accesses_ = 0;  // decayed, as the misses
  double cusum_ = 0;
  std::unordered_set<PoolKey> resident_;
};

}  // namespace

Result<std::unique_ptr<EvictionPolicy>> MakePolicy(const PolicyOptions& opts) {
  if (opts.name == "lru") return std::unique_ptr<EvictionPolicy>(new Lru());
  if (opts.name == "lrfu" || opts.name == "adaptive") {
    if (!(opts.half_life > 0) || !std::isfinite(opts.half_life))
      return InvalidArgument("policy_half_life must be a positive number of accesses");
    if (opts.name == "lrfu") return std::unique_ptr<EvictionPolicy>(new Lrfu(opts.half_life));
    return std::unique_ptr<EvictionPolicy>(new AdaptiveLrfu(opts.half_life));
  }
  return InvalidArgument("unknown eviction policy '" + opts.name + "'; use \"adaptive\", \"lrfu\" or \"lru\"");
}

}  // namespace mms
