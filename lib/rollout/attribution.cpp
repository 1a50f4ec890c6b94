#include "rollout/attribution.h"

#include <nlohmann/json.hpp>
#include <sstream>

#include "core/paths.h"
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
                    "attribution window, or mmsd was killed since (a clean restart keeps the ids)");
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

Status AttributionStore::Save(const std::string& path, bool with_reported) const {
  std::string text;
  {
    std::lock_guard<std::mutex> lock(mu_);
    const int64_t now = opts_.clock->MonoNanos(), unix_ms = opts_.clock->UnixMillis();
    for (const auto& [at, id] : order_) {
      auto it = entries_.find(id);
      if (it == entries_.end() || it->second.at != at || now - at > 2 * opts_.window_ns) continue;
      const Entry& e = it->second;
      text += nlohmann::json{{"id", id},
                             {"experiment", e.experiment},
                             {"variant", VariantName(e.variant)},
                             {"served_ms", unix_ms - (now - at) / 1'000'000},
                             {"reported", with_reported ? e.reported : std::set<std::string>{}}}
                  .dump() +
              "\n";
    }
  }
  return WriteFileAtomic(path, text);
}

Result<size_t> AttributionStore::Load(const std::string& path) {
  MMS_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  std::istringstream in(text);
  std::lock_guard<std::mutex> lock(mu_);
  const int64_t now = opts_.clock->MonoNanos(), unix_ms = opts_.clock->UnixMillis();
  size_t added = 0;
  for (std::string line; std::getline(in, line);) {
    // Every field checked for its type before it is read: a line written
    // by hand or damaged is skipped, never thrown on (mmsd reads this at start).
    auto j = nlohmann::json::parse(line, nullptr, false);
    auto str = [&](const char* k) { return j.is_object() && j.contains(k) && j[k].is_string(); };
    if (!str("id") || !str("experiment") || !str("variant") || !j.contains("served_ms") ||
        !j["served_ms"].is_number_integer())
      continue;
    const std::string variant = j["variant"].get<std::string>();
    const Variant v = variant == "control" ? Variant::kControl : variant == "treatment" ? Variant::kTreatment : Variant::kNone;
    const int64_t served_ms = j["served_ms"].get<int64_t>();
    if (v == Variant::kNone || served_ms <= 0) continue;  // (checked first: no overflow below)
    const int64_t age_ms = unix_ms - served_ms;
    if (age_ms > 2 * opts_.window_ns / 1'000'000) continue;
    const int64_t at = now - std::max<int64_t>(age_ms, 0) * 1'000'000;
    if (entries_.count(j["id"].get<std::string>())) continue;
    Entry e{j["experiment"].get<std::string>(), v, at, {}};
    if (j.contains("reported") && j["reported"].is_array())
      for (const auto& m : j["reported"])
        if (m.is_string()) e.reported.insert(m.get<std::string>());
    const std::string id = j["id"].get<std::string>();
    entries_[id] = std::move(e);
    order_.emplace_back(at, id);
    ++added;
  }
  // Oldest first, as Remember keeps them (the file is in that order; ids
  // remembered since start are newer).
  std::stable_sort(order_.begin(), order_.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  while (entries_.size() > opts_.capacity && !order_.empty()) {
    entries_.erase(order_.front().second);
    order_.pop_front();
  }
  return added;
}

size_t AttributionStore::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return entries_.size();
}

}  // namespace mms
