#include "rollout/attribution.h"

#include "core/units.h"

namespace mms {

void AttributionStore::Remember(const std::string& request_id, const std::string& experiment, Variant variant) {
  std::lock_guard<std::mutex> lock(mu_);
  int64_t now = opts_.clock->MonoNanos();
  Expire(now);
  entries_[request_id] = Entry{experiment, variant, now, {}};
  order_.emplace_back(now, request_id);
  while (entries_.size() > opts_.capacity && !order_.empty()) {
    entries_.erase(order_.front().second);
    order_.pop_front();
  }
}

void AttributionStore::Expire(int64_t now) {
  while (!order_.empty() && now - order_.front().first > 2 * opts_.window_ns) {
    auto it = entries_.find(order_.front().second);
    if (it != entries_.end() && it->second.at == order_.front().first) entries_.erase(it);
    order_.pop_front();
  }
}

Result<AttributionStore::Entry*> AttributionStore::Find(const std::string& request_id, int64_t now) {
  Expire(now);
  auto it = entries_.find(request_id);
  if (it == entries_.end())
    return NotFound("unknown request id '" + request_id +
                    "': it was not counted by an experiment (served by none, or while it was paused, or without "
                    "a user in a sticky one: \"counted\": false in its reply), or is older than twice the "
                    "attribution window, or mmsd restarted since");
  Entry& e = it->second;
  if (now - e.at > opts_.window_ns)
    return FailedPrecondition("request '" + request_id + "' was served " + FormatDurationNanos(now - e.at) +
                              " ago, outside the " + FormatDurationNanos(opts_.window_ns) +
                              " attribution window ([experiments] attribution_window)");
  return &e;
}

Result<AttributionStore::Claimed> AttributionStore::Lookup(const std::string& request_id) {
  std::lock_guard<std::mutex> lock(mu_);
  MMS_ASSIGN_OR_RETURN(Entry * e, Find(request_id, opts_.clock->MonoNanos()));
  return Claimed{e->experiment, e->variant};
}

Result<AttributionStore::Claimed> AttributionStore::Claim(const std::string& request_id,
                                                          const std::vector<std::string>& metrics) {
  std::lock_guard<std::mutex> lock(mu_);
  MMS_ASSIGN_OR_RETURN(Entry * found, Find(request_id, opts_.clock->MonoNanos()));
  Entry& e = *found;
  for (const auto& m : metrics)
    if (e.reported.count(m))
      return AlreadyExists("metric '" + m + "' was already reported for request '" + request_id + "'");
  for (const auto& m : metrics) e.reported.insert(m);
  return Claimed{e.experiment, e.variant};
}

size_t AttributionStore::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return entries_.size();
}

}  // namespace mms
