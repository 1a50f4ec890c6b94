#include "rollout/user_split.h"

#include <functional>

namespace mms {

void UserSplit::Add(std::string_view user, Variant variant, double treatment_share) {
  if (user.empty() || variant == Variant::kNone) return;
  uint64_t h = std::hash<std::string_view>{}(user);  // 64 bits: ~1e-8 odds of a collision among 1M users
  std::lock_guard<std::mutex> lock(mu_);
  if (seen_.size() >= max_users_) {
    counts_.saturated = counts_.saturated || !seen_.count(h);
    return;
  }
  if (!seen_.insert(h).second) return;
  (variant == Variant::kTreatment ? counts_.treatment : counts_.control) += 1;
  counts_.share_sum += treatment_share;
}

UserSplit::Counts UserSplit::counts() const {
  std::lock_guard<std::mutex> lock(mu_);
  return counts_;
}

std::shared_ptr<UserSplit> UserSplitStore::Get(const std::string& experiment) {
  std::lock_guard<std::mutex> lock(mu_);
  auto& p = m_[experiment];
  if (!p) p = std::make_shared<UserSplit>();
  return p;
}

std::shared_ptr<UserSplit> UserSplitStore::Find(const std::string& experiment) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = m_.find(experiment);
  return it == m_.end() ? nullptr : it->second;
}

void UserSplitStore::Retain(const std::set<std::string>& active) {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = m_.begin(); it != m_.end();) it = active.count(it->first) ? std::next(it) : m_.erase(it);
}

}  // namespace mms
