#include "pool/policy.h"

#include <cmath>
#include <list>
#include <unordered_map>
#include <unordered_set>

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

class Lrfu final : public EvictionPolicy {
 public:
  explicit Lrfu(double half_life) : lambda_(std::log(2.0) / half_life) {}
  const char* name() const override { return "lrfu"; }
  void Touch(PoolKey k) override {
    ++clock_;
    Score& s = scores_[k];
    s.value = Decayed(s) + 1.0;
    s.at = clock_;
  }
  void Insert(PoolKey k) override { resident_.insert(k); }
  void Remove(PoolKey k) override { resident_.erase(k); }
  std::optional<PoolKey> Victim(const std::function<bool(PoolKey)>& evictable) override {
    std::optional<PoolKey> best;
    double best_score = 0;
    uint64_t best_at = 0;
    for (PoolKey k : resident_) {
      if (!evictable(k)) continue;
      const Score& s = scores_[k];
      double v = Decayed(s);
      if (!best || v < best_score || (v == best_score && s.at < best_at)) {
        best = k;
        best_score = v;
        best_at = s.at;
      }
    }
    return best;
  }

 private:
  struct Score {
    double value = 0;
    uint64_t at = 0;  // clock of the last access
  };
  double Decayed(const Score& s) const { return s.value * std::exp(-lambda_ * static_cast<double>(clock_ - s.at)); }

  const double lambda_;
  uint64_t clock_ = 0;
  std::unordered_map<PoolKey, Score> scores_;  // kept after eviction: history survives
  std::unordered_set<PoolKey> resident_;
};

}  // namespace

Result<std::unique_ptr<EvictionPolicy>> MakePolicy(const PolicyOptions& opts) {
  if (opts.name == "lru") return std::unique_ptr<EvictionPolicy>(new Lru());
  if (opts.name == "lrfu") {
    if (!(opts.half_life > 0)) return InvalidArgument("policy_half_life must be positive");
    return std::unique_ptr<EvictionPolicy>(new Lrfu(opts.half_life));
  }
  return InvalidArgument("unknown eviction policy '" + opts.name + "'; use \"lru\" or \"lrfu\"");
}

}  // namespace mms
