// Eviction policies: which resident model a tier gives up when it needs room.
//
//   lru    least recently used.
//   lrfu   "combined recency and frequency" (Lee et al., LRFU, 2001): each
//          access adds 1 to a model's score, and scores halve every
//          `half_life` accesses to the tier. Frequently used models survive
//          a burst of one-off loads (LRU's weakness), and a model that stops
//          being used fades within a few half-lives, so the policy follows
//          popularity shifts (plain LFU's weakness). Scores are kept for
//          evicted models too, so a popular model that was pushed out comes
//          back with its history.
//
// Touch/Insert/Remove are O(1); Victim scans the resident set (it runs only
// on a miss that needs room, never on a hit).
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
  virtual void Touch(PoolKey k) = 0;   // an access (hit, or the load that made it resident)
  virtual void Insert(PoolKey k) = 0;  // became resident in this tier
  virtual void Remove(PoolKey k) = 0;  // left this tier
  // The best victim among resident keys for which `evictable` is true.
  virtual std::optional<PoolKey> Victim(const std::function<bool(PoolKey)>& evictable) = 0;
};

struct PolicyOptions {
  std::string name = "lrfu";  // [pool] policy: "lru" | "lrfu"
  double half_life = 350;     // [pool] policy_half_life: accesses (lrfu)
};

Result<std::unique_ptr<EvictionPolicy>> MakePolicy(const PolicyOptions& opts);

}  // namespace mms
