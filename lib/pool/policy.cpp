#include "pool/policy.h"

#include <algorithm>
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

// LRFU scores for one half-life. A score s last updated at access t is kept
// as ln(s) + lambda*t: its decayed value at any later time is a common factor
// away, so comparing these keys compares the decayed scores, and they never
// need updating between a key's own accesses. Keys are kept after eviction.
class DecayedScores {
 public:
  struct Slot {
    double log = -std::numeric_limits<double>::infinity();  // no access yet
    bool cached = false;  // in the virtual cache (AdaptiveLrfu's experts only)
  };
  explicit DecayedScores(double half_life) : half_life_(half_life), lambda_(std::log(2.0) / half_life) {}
  double half_life() const { return half_life_; }
  // The key's slot (created on first use); Access updates it.
  Slot& SlotOf(PoolKey k) { return slots_[k]; }
  // Adds an access at `clock` (which only grows); returns the new log-score.
  double Access(Slot& slot, uint64_t clock) const {
    const double now = lambda_ * static_cast<double>(clock);
    return slot.log = std::log1p(std::exp(slot.log - now)) + now;  // exp(-inf) = 0: a first access scores 1
  }
  // Drops the key's score; returns its slot as it was (for the caller's own books).
  Slot Erase(PoolKey k) {
    auto it = slots_.find(k);
    if (it == slots_.end()) return {};
    Slot s = it->second;
    slots_.erase(it);
    return s;
  }
  double Of(PoolKey k) const {
    auto it = slots_.find(k);
    return it == slots_.end() ? -std::numeric_limits<double>::infinity() : it->second.log;
  }

 private:
  const double half_life_, lambda_;
  std::unordered_map<PoolKey, Slot> slots_;
};

// The evictable resident with the lowest score (ties: the lower key).
std::optional<PoolKey> Lowest(const std::unordered_set<PoolKey>& resident, const DecayedScores& scores,
                              const std::function<bool(PoolKey)>& evictable) {
  std::optional<PoolKey> best;
  double best_score = 0;
  for (PoolKey k : resident) {
    if (!evictable(k)) continue;
    const double s = scores.Of(k);
    if (!best || s < best_score || (s == best_score && k < *best)) {
      best = k;
      best_score = s;
    }
  }
  return best;
}

class Lrfu final : public EvictionPolicy {
 public:
  explicit Lrfu(double half_life) : scores_(half_life) {}
  const char* name() const override { return "lrfu"; }
  double half_life() const override { return scores_.half_life(); }
  void Touch(PoolKey k) override { scores_.Access(scores_.SlotOf(k), ++clock_); }
  void Insert(PoolKey k) override { resident_.insert(k); }
  void Remove(PoolKey k) override { resident_.erase(k); }
  void Forget(PoolKey k) override {
    resident_.erase(k);
    scores_.Erase(k);
  }
  std::optional<PoolKey> Victim(const std::function<bool(PoolKey)>& evictable) override {
    return Lowest(resident_, scores_, evictable);
  }

 private:
  uint64_t clock_ = 0;
  DecayedScores scores_;
  std::unordered_set<PoolKey> resident_;
};

class AdaptiveLrfu final : public EvictionPolicy {
 public:
  explicit AdaptiveLrfu(double half_life) {
    // The configured half-life first: it leads until another expert has missed less.
    for (double f : {1.0, 0.25, 0.5, 2.0, 4.0}) experts_.emplace_back(half_life * f);
  }
  const char* name() const override { return "adaptive"; }
  double half_life() const override { return experts_[best_].scores.half_life(); }
  void Touch(PoolKey k) override {
    ++clock_;
    const size_t capacity = std::max<size_t>(1, resident_.size());
    for (Expert& x : experts_) {
      x.misses *= kMissDecay;
      DecayedScores::Slot& slot = x.scores.SlotOf(k);
      const double before = slot.log;
      const double after = x.scores.Access(slot, clock_);
      if (slot.cached) {  // a virtual hit: move k to its new place
        auto node = x.order.extract({before, k});
        node.value().first = after;
        x.order.insert(std::move(node));
      } else {
        x.misses += 1;
        Shrink(x, capacity - 1);  // room for k (forced admission, as in the tier), at the tier's size now
        slot.cached = true;
        x.order.emplace(after, k);
      }
      // Hits never shrink a virtual cache: while a load runs, its victims have
      // left the tier and the newcomer has not arrived yet.
    }
    best_ = 0;
    for (size_t i = 1; i < experts_.size(); ++i)
      if (experts_[i].misses < experts_[best_].misses) best_ = i;
  }
  void Insert(PoolKey k) override { resident_.insert(k); }
  void Remove(PoolKey k) override { resident_.erase(k); }
  void Forget(PoolKey k) override {
    resident_.erase(k);
    for (Expert& x : experts_)
      if (DecayedScores::Slot s = x.scores.Erase(k); s.cached) x.order.erase({s.log, k});
  }
  std::optional<PoolKey> Victim(const std::function<bool(PoolKey)>& evictable) override {
    return Lowest(resident_, experts_[best_].scores, evictable);
  }

 private:
  // Misses weigh half after 500 further accesses.
  static inline const double kMissDecay = std::exp(-std::log(2.0) / 500.0);

  struct Expert {
    explicit Expert(double half_life) : scores(half_life) {}
    DecayedScores scores;                        // Slot::cached: in this expert's virtual cache
    std::set<std::pair<double, PoolKey>> order;  // the virtual cache by score, lowest first
    double misses = 0;                           // decayed
  };
  static void Shrink(Expert& x, size_t limit) {
    while (x.order.size() > limit) {
      auto low = x.order.begin();
      x.scores.SlotOf(low->second).cached = false;
      x.order.erase(low);
    }
  }

  uint64_t clock_ = 0;
  std::vector<Expert> experts_;
  size_t best_ = 0;
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
