#include "rollout/attribution.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <iterator>
#include <cstdio>
#include <cstring>
#include <string_view>

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
  while (entries_.size() > opts_.capacity && !order_.empty()) DropOldest();
}

void AttributionStore::DropOldest() {
  // (An id remembered again has a newer entry: its older place goes alone.)
  auto it = entries_.find(order_.front().second);
  if (it != entries_.end() && it->second.at == order_.front().first) entries_.erase(it);
  order_.pop_front();
  ++dropped_;
}

void AttributionStore::Expire(int64_t now) {
  while (!order_.empty() && now - order_.front().first > 2 * opts_.window_ns) DropOldest();
}

Result<AttributionStore::Entry*> AttributionStore::Find(const std::string& request_id, int64_t now) {
  Expire(now);
  auto it = entries_.find(request_id);
  if (it == entries_.end())
    return NotFound("unknown request id '" + request_id +
                    "': it was not counted by an experiment (served by none, or while it was paused, or without "
                    "a user in a sticky one: \"counted\": false in its reply), or is older than twice the "
                    "attribution window, or was served within [experiments] flush_interval of a kill of mmsd (ids are saved "
                    "at each flush, and all of them at a clean stop)");
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
  size_t lines = 0;
  return WriteFileAtomic(path, FormatAll(reports, &lines));
}

std::string AttributionStore::FormatAll(Reports reports, size_t* lines) const {
  // A chunk is copied under the lock and formatted outside it, before the
  // next is copied: a predict waiting to remember an id takes the lock
  // meanwhile. (Taking it again at once starved such a waiter for most of
  // a second while a million ids were copied.)
  std::string text;
  std::vector<Row> rows;
  rows.reserve(kRowsPerLock);
  // Places in order_ counted from the first ever (dropped_ + index): the
  // next to copy, and the end as it was at the first chunk (ids remembered
  // since are journaled by the next append).
  uint64_t next = 0, stop = UINT64_MAX;
  for (bool more = true; more;) {
    rows.clear();
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stop == UINT64_MAX) stop = dropped_ + order_.size();
      const int64_t now = opts_.clock->MonoNanos(), unix_ms = opts_.clock->UnixMillis();
      const size_t from = next > dropped_ ? static_cast<size_t>(next - dropped_) : 0;
      const size_t end = stop > dropped_ ? static_cast<size_t>(stop - dropped_) : 0;
      const size_t to = std::max(from, std::min({order_.size(), end, from + kRowsPerLock}));
      for (size_t i = from; i < to; ++i) {
        const auto& [at, id] = order_[i];
        auto it = entries_.find(id);
        if (it == entries_.end() || it->second.at != at || now - at > 2 * opts_.window_ns) continue;
        rows.push_back(MakeRow(id, it->second, now, unix_ms, reports));
      }
      next = dropped_ + to;
      more = to < std::min(order_.size(), end);
    }
    text += Format(rows);
    *lines += rows.size();
  }
  return text;
}

AttributionStore::Row AttributionStore::MakeRow(const std::string& id, const Entry& e, int64_t now, int64_t unix_ms,
                                                Reports reports) {
  Row r{id, e.experiment, e.variant, unix_ms - (now - e.at) / 1'000'000, {}, e.user_bucket};
  if (reports == Reports::kAll) r.reported = e.reported;
  if (reports == Reports::kSaved) r.reported = e.saved;
  return r;
}

namespace {
// A JSON string as nlohmann::json writes it (quotes, backslashes and
// control characters escaped; other bytes as they are), without building a
// json value per line: a million lines took seconds that way.
void AppendJsonString(std::string* out, std::string_view s) {
  out->push_back('"');
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out->push_back('\\');
      out->push_back(c);
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char b[8];
      std::snprintf(b, sizeof b, "\\u%04x", static_cast<unsigned>(c));
      *out += b;
    } else {
      out->push_back(c);
    }
  }
  out->push_back('"');
}
}  // namespace

std::string AttributionStore::Format(const std::vector<Row>& rows) {
  std::string text;
  text.reserve(rows.size() * 128);
  for (const Row& r : rows) {
    text += "{\"id\":";
    AppendJsonString(&text, r.id);
    text += ",\"experiment\":";
    AppendJsonString(&text, r.experiment);
    text += ",\"variant\":";
    AppendJsonString(&text, VariantName(r.variant));
    text += ",\"served_ms\":" + std::to_string(r.served_ms) + ",\"reported\":[";
    bool first = true;
    for (const auto& m : r.reported) {
      if (!first) text.push_back(',');
      first = false;
      AppendJsonString(&text, m);
    }
    text.push_back(']');
    if (r.user_bucket >= 0) text += ",\"bucket\":" + std::to_string(r.user_bucket);
    text += "}\n";
  }
  return text;
}

size_t AttributionStore::MarkClaims() const {
  std::lock_guard<std::mutex> lock(mu_);
  return new_claims_.size();
}

Status AttributionStore::AppendJournal(const std::string& path, size_t claims_mark) {
  // What this append covers is taken at once; its rows are made a chunk at
  // a time (kRowsPerLock), each formatted outside the lock before the next,
  // so a predict that remembers an id waits for one chunk at most, never
  // for the whole store (a million ids held it for seconds).
  std::vector<std::string> ids;
  std::vector<std::pair<std::string, std::vector<std::string>>> claims;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ids.swap(new_ids_);
    claims_mark = std::min(claims_mark, new_claims_.size());
    const auto marked = new_claims_.begin() + static_cast<std::ptrdiff_t>(claims_mark);
    claims.assign(std::make_move_iterator(new_claims_.begin()), std::make_move_iterator(marked));
    new_claims_.erase(new_claims_.begin(), marked);
  }
  // A new id as served (nothing reported yet: a claim since is its own
  // line); a claimed one with the reports whose outcomes are saved — the
  // claims up to the mark, and earlier ones — never one claimed after it,
  // nor one claimed whose outcome is not in the figures yet.
  std::string text;
  std::vector<Row> rows;
  rows.reserve(kRowsPerLock);
  const size_t lines = ids.size() + claims.size();
  for (size_t done = 0; done < lines;) {
    rows.clear();
    {
      std::lock_guard<std::mutex> lock(mu_);
      const int64_t now = opts_.clock->MonoNanos(), unix_ms = opts_.clock->UnixMillis();
      for (const size_t end = std::min(lines, done + kRowsPerLock); done < end; ++done) {
        const bool claim = done >= ids.size();
        const std::string& id = claim ? claims[done - ids.size()].first : ids[done];
        auto it = entries_.find(id);
        if (it == entries_.end()) continue;  // forgotten meanwhile (past capacity or twice the window)
        if (claim) {
          const auto& saved = claims[done - ids.size()].second;
          it->second.saved.insert(saved.begin(), saved.end());
        }
        rows.push_back(MakeRow(id, it->second, now, unix_ms, claim ? Reports::kSaved : Reports::kNone));
        ++journal_lines_;
      }
    }
    text += Format(rows);  // outside the lock, as FormatAll does
  }
  // The whole store, with its saved reports, replaces the file once it
  // holds far more lines than ids, or after an append that failed (its
  // lines are in memory, and the file may end in a torn line). (Only the
  // flush appends or rewrites: nothing else writes the file meanwhile. An id
  // remembered during the copy may be in it and appended again next time:
  // Load merges an id's lines.)
  bool compact;
  {
    std::lock_guard<std::mutex> lock(mu_);
    compact = rewrite_ || journal_lines_ > 2 * entries_.size() + 1000;
  }
  size_t whole = 0;
  if (compact) text = FormatAll(Reports::kSaved, &whole);
  Status st = compact ? WriteFileAtomic(path, text) : text.empty() ? Status::Ok() : Append(path, text);
  std::lock_guard<std::mutex> lock(mu_);
  if (compact) journal_lines_ = whole;
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
  while (entries_.size() > opts_.capacity && !order_.empty()) DropOldest();
  return added;
}

size_t AttributionStore::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return entries_.size();
}

}  // namespace mms
