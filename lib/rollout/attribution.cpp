#include "rollout/attribution.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <nlohmann/json.hpp>
#include <sstream>

#include "core/paths.h"
#include "core/units.h"
#include "rollout/experiment_metrics.h"

namespace mms {

void AttributionStore::Remember(const std::string& request_id, const std::string& experiment, Variant variant,
                                int user_bucket) {
  std::lock_guard<std::mutex> lock(mu_);
  int64_t now = opts_.clock->MonoNanos();
  Expire(now);
  entries_[request_id] = Entry{experiment, variant, now, {}, {}, user_bucket};
  order_.emplace_back(now, request_id);
  new_ids_.push_back(request_id);
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
  return Claimed{e->experiment, e->variant, e->user_bucket};
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
  return Claimed{e.experiment, e.variant, e.user_bucket};
}

void AttributionStore::Recorded(const std::string& request_id, const std::vector<std::string>& metrics) {
  std::lock_guard<std::mutex> lock(mu_);
  new_claims_.emplace_back(request_id, metrics);
}

Status AttributionStore::Save(const std::string& path, Reports reports) const {
  std::vector<Row> rows;
  {
    std::lock_guard<std::mutex> lock(mu_);
    rows = All(reports);
  }
  return WriteFileAtomic(path, Format(rows));  // formatted outside the lock: requests go on
}

std::vector<AttributionStore::Row> AttributionStore::All(Reports reports) const {
  std::vector<Row> rows;
  rows.reserve(entries_.size());
  const int64_t now = opts_.clock->MonoNanos(), unix_ms = opts_.clock->UnixMillis();
  for (const auto& [at, id] : order_) {
    auto it = entries_.find(id);
    if (it == entries_.end() || it->second.at != at || now - at > 2 * opts_.window_ns) continue;
    rows.push_back(MakeRow(id, it->second, now, unix_ms, reports));
  }
  return rows;
}

AttributionStore::Row AttributionStore::MakeRow(const std::string& id, const Entry& e, int64_t now, int64_t unix_ms,
                                                Reports reports) {
  Row r{id, e.experiment, e.variant, unix_ms - (now - e.at) / 1'000'000, {}, e.user_bucket};
  if (reports == Reports::kAll) r.reported = e.reported;
  if (reports == Reports::kSaved) r.reported = e.saved;
  return r;
}

std::string AttributionStore::Format(const std::vector<Row>& rows) {
  std::string text;
  for (const Row& r : rows) {
    nlohmann::json line{{"id", r.id},
                        {"experiment", r.experiment},
                        {"variant", VariantName(r.variant)},
                        {"served_ms", r.served_ms},
                        {"reported", r.reported}};
    if (r.user_bucket >= 0) line["bucket"] = r.user_bucket;
    text += line.dump() + "\n";
  }
  return text;
}

size_t AttributionStore::MarkClaims() const {
  std::lock_guard<std::mutex> lock(mu_);
  return new_claims_.size();
}

Status AttributionStore::AppendJournal(const std::string& path, size_t claims_mark) {
  std::vector<Row> rows;
  bool compact = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    const int64_t now = opts_.clock->MonoNanos(), unix_ms = opts_.clock->UnixMillis();
    // A new id as served (nothing reported yet: a claim since is its own
    // line); a claimed one with the reports whose outcomes are saved — the
    // claims up to the mark, and earlier ones — never one claimed after it,
    // nor one claimed whose outcome is not in the figures yet.
    auto add = [&](const std::string& id, const std::vector<std::string>* saved) {
      auto it = entries_.find(id);
      if (it == entries_.end()) return;  // forgotten meanwhile (past capacity or twice the window)
      if (saved) it->second.saved.insert(saved->begin(), saved->end());
      rows.push_back(MakeRow(id, it->second, now, unix_ms, saved ? Reports::kSaved : Reports::kNone));
      ++journal_lines_;
    };
    for (const auto& id : new_ids_) add(id, nullptr);
    new_ids_.clear();
    claims_mark = std::min(claims_mark, new_claims_.size());
    for (size_t i = 0; i < claims_mark; ++i) add(new_claims_[i].first, &new_claims_[i].second);
    new_claims_.erase(new_claims_.begin(), new_claims_.begin() + static_cast<std::ptrdiff_t>(claims_mark));
    // The whole store, with its saved reports, replaces the file. (Only the
    // flush appends: nothing else writes the file meanwhile.)
    // (Also after an append that failed: its lines are in memory, and the
    // file may end in a torn line.)
    compact = rewrite_ || journal_lines_ > 2 * entries_.size() + 1000;
    if (compact) {
      rows = All(Reports::kSaved);
      journal_lines_ = entries_.size();
    }
  }
  // Formatted and written outside the lock: requests go on meanwhile.
  Status st = compact ? WriteFileAtomic(path, Format(rows)) : rows.empty() ? Status::Ok() : Append(path, Format(rows));
  std::lock_guard<std::mutex> lock(mu_);
  rewrite_ = !st.ok();
  return st;
}

Status AttributionStore::Append(const std::string& path, const std::string& text) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (fd < 0) return IoError("cannot append to " + path + ": " + std::strerror(errno));
  size_t off = 0;
  while (off < text.size()) {
    ssize_t n = ::write(fd, text.data() + off, text.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int e = errno;
      ::close(fd);
      return IoError("cannot append to " + path + ": " + std::strerror(e));
    }
    off += static_cast<size_t>(n);
  }
  const bool synced = ::fdatasync(fd) == 0;
  const int e = errno;
  ::close(fd);
  if (!synced) return IoError("cannot sync " + path + ": " + std::strerror(e));
  return Status::Ok();
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
    // (Lines written before user buckets have none: their outcomes count by request only.)
    int bucket = -1;
    if (j.contains("bucket") && j["bucket"].is_number_integer()) {
      const int64_t b = j["bucket"].get<int64_t>();
      if (b >= 0 && b < UserBuckets::kCount) bucket = static_cast<int>(b);
    }
    Entry e{j["experiment"].get<std::string>(), v, at, {}, {}, bucket};
    if (j.contains("reported") && j["reported"].is_array())
      for (const auto& m : j["reported"])
        if (m.is_string()) e.reported.insert(m.get<std::string>());
    e.saved = e.reported;  // (written only once saved)
    const std::string id = j["id"].get<std::string>();
    // The journal repeats an id (served, then reported): its reports add up.
    if (auto known = entries_.find(id); known != entries_.end()) {
      known->second.reported.insert(e.reported.begin(), e.reported.end());
      known->second.saved.insert(e.reported.begin(), e.reported.end());
      continue;
    }
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
