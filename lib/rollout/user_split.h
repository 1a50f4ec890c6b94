// UserSplit: how many distinct users each arm of a sticky experiment has
// seen since mmsd started — the unit its split randomises. A sample-ratio
// check over requests overstates the evidence when a few users send most of
// them (their requests all land in one arm); over users it is sound. A user
// is counted once, in the arm and at the treatment share of their first
// request (a ramp that later moves them does not count them twice).
// In memory only: after a restart the users are counted afresh, which is
// still a fair sample of the split. At most kMaxUsers per experiment; past
// that the counts stop growing and say so. Forgotten once the experiment
// stops (mms stats then shows the request-level check only).
//
// Thread-safety: internally locked; UserSplitStore too.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <unordered_set>

#include "rollout/assignment.h"

namespace mms {

class UserSplit {
 public:
  static constexpr size_t kMaxUsers = 1'000'000;
  struct Counts {
    uint64_t control = 0, treatment = 0;
    double share_sum = 0;  // the treatment share at each user's first request, summed
    bool saturated = false;
  };
  explicit UserSplit(size_t max_users = kMaxUsers) : max_users_(max_users) {}
  void Add(std::string_view user, Variant variant, double treatment_share);
  Counts counts() const;

 private:
  const size_t max_users_;
  mutable std::mutex mu_;
  std::unordered_set<uint64_t> seen_;  // guarded by mu_ (64-bit hashes of user ids)
  Counts counts_;                      // guarded by mu_
};

class UserSplitStore {
 public:
  std::shared_ptr<UserSplit> Get(const std::string& experiment);
  std::shared_ptr<UserSplit> Find(const std::string& experiment);  // null when none
  // Forgets the experiments not in `active` (stopped): their users' memory goes.
  void Retain(const std::set<std::string>& active);

 private:
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<UserSplit>> m_;  // guarded by mu_
};

}  // namespace mms
