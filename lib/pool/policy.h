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
//             2002): a panel of virtual LRFU caches replays every access;
//             each counts its own misses, decayed so the last ~500 accesses
//             weigh most, and the tier evicts by the scores of the expert
//             with the fewest (ties: the earlier in the panel, the configured
//             half-life first). Five experts have half-lives half_life*{1,
//             1/4, 1/2, 2, 4}: long ones rank steady popularity best, short
//             ones learn a shift sooner. Two more, at half_life*4 and *8,
//             restart when the traffic changes: a CUSUM of the leading
//             expert's misses in excess of its miss rate (decayed as above)
//             + 0.2 that passes 4 misses declares a change, and each
//             restarting expert that does not lead then divides all its
//             scores by 2^40 (history before the change only breaks ties
//             between keys not accessed since). After a popularity shift a
//             restarted expert ranks by what came after it, with a long
//             memory from then on, and usually takes the lead at once; after
//             a burst of one-off loads (which looks like a change too) it
//             misses more, so the tier keeps ranking by a plain expert's
//             history. The virtual caches hold as many models as the tier
//             holds now (a count, exact for models of one size, an
//             approximation of the byte budget otherwise).
//
// Scores live in the log domain (ln(score) + lambda * time of last access),
// which decay does not reorder, so ordered sets stay valid as time passes.
// A restart moves an expert's log-domain clock forward, which scales all its
// scores alike and so keeps its order too. A virtual hit only updates the
// key's score (its entry in the ordered set is re-filed lazily, when it
// comes up for eviction): Touch is O(1) per expert on a virtual hit,
// amortised O(log n) on a virtual miss;
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
