// Eviction policies: which resident model a tier gives up when it needs room.
//
//   lru       least recently used.
//   lrfu      "combined recency and frequency" (Lee et al., LRFU, 2001): each
//             access adds 1 to a model's score, and scores halve every
//             `half_life` accesses to the tier. Frequently used models
//             survive a burst of one-off loads (LRU's weakness), and a model
//             that stops being used fades within a few half-lives, so the
//             policy follows popularity shifts (plain LFU's weakness). Scores
//             are kept for evicted models too, so a popular model that was
//             pushed out comes back with its history.
//   adaptive  (the default) LRFU whose half-life follows the traffic, after
//             ACME (Ari et al., "Adaptive caching using multiple experts",
//             2002): a panel of five virtual LRFU caches with half-lives from
//             half_life/4 to half_life*4 replays every access; each counts
//             its own misses, decayed so the last ~500 accesses weigh most,
//             and the tier evicts by the scores of the expert with the fewest.
//             Long half-lives rank steady popularity best, short ones learn
//             a shift sooner; the panel switches when the traffic does. The
//             virtual caches hold as many models as the tier holds now (a
//             count, exact for models of one size, an approximation of the
//             byte budget otherwise).
//
// Scores live in the log domain (ln(score) + lambda * time of last access),
// which decay does not reorder, so ordered sets stay valid as time passes.
// A virtual hit only updates the key's score (its entry in the ordered set
// is re-filed lazily, when it comes up for eviction): Touch is O(1) per
// expert on a virtual hit, amortised O(log n) on a virtual miss;
// Insert/Remove O(1); Victim scans the resident set (it runs only on a miss
// that needs room, never on a hit).
// Thread-safety: none; the pool calls it under its own mutex.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "core/status.h"

namespace mms {

using PoolKey = int64_t;  // a version's registry id

class EvictionPolicy {
 public:
  virtual ~EvictionPolicy() = default;
  virtual const char* name() const = 0;
  // The half-life (accesses) the policy ranks by now; 0 when it has none (lru).
  virtual double half_life() const { return 0; }
  virtual void Touch(PoolKey k) = 0;   // an access (hit, or the load that made it resident)
  virtual void Insert(PoolKey k) = 0;  // became resident in this tier
  virtual void Remove(PoolKey k) = 0;  // left this tier
  // Drops every trace of a key, residency and history: its version is gone.
  virtual void Forget(PoolKey k) { Remove(k); }
  // The best victim among resident keys for which `evictable` is true.
  virtual std::optional<PoolKey> Victim(const std::function<bool(PoolKey)>& evictable) = 0;
};

struct PolicyOptions {
  std::string name = "adaptive";  // [pool] policy: "adaptive" | "lrfu" | "lru"
  double half_life = 350;         // [pool] policy_half_life: accesses (lrfu; the middle of adaptive's panel)
};

Result<std::unique_ptr<EvictionPolicy>> MakePolicy(const PolicyOptions& opts);

}  // namespace mms
