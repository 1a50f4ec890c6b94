// AttributionStore: which experiment variant served each request id, kept
// for the attribution window so business outcomes (`mms feedback`) can be
// credited to it. Refuses feedback for an unknown id (NOT_FOUND), after the
// window (FAILED_PRECONDITION: the id is remembered for twice the window to
// tell the two apart), and twice for the same metric (ALREADY_EXISTS).
// Memory is bounded by `capacity` ids (oldest forgotten first). Held in
// memory; mmsd saves them at a clean stop and reads them back at start
// (Save/Load), so a deploy forgets none; between, it appends what changed to
// the same file at every figures flush (AppendJournal), so a killed daemon
// forgets at most one flush interval of them.

//
// Thread-safety: internally locked.
#pragma once

#include <deque>
#include <mutex>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/clock.h"
#include "core/status.h"
#include "rollout/assignment.h"

namespace mms {

class AttributionStore {
 public:
  struct Options {
    int64_t window_ns = 3'600'000'000'000;  // [experiments] attribution_window = "1h"
    size_t capacity = 1'000'000;            // [experiments] attribution_capacity
    Clock* clock = Clock::Real();
  };
  explicit AttributionStore(const Options& o) : opts_(o) {}

  // `user_bucket`: the user's bucket (UserBucket) in a sticky experiment,
  // else -1; the request's outcomes are counted in it.
  void Remember(const std::string& request_id, const std::string& experiment, Variant variant, int user_bucket = -1);

  struct Claimed {
    std::string experiment;
    Variant variant = Variant::kNone;
    int user_bucket = -1;
  };
  // Who served the request (the same refusals as Claim, nothing marked).
  Result<Claimed> Lookup(const std::string& request_id);
  // Marks each metric reported for the request; all or nothing.
  Result<Claimed> Claim(const std::string& request_id, const std::vector<std::string>& metrics);
  // A claim's outcomes (`metrics`) are now in the figures (in memory): the
  // next journal append after they are saved may record them.
  void Recorded(const std::string& request_id, const std::vector<std::string>& metrics);
  size_t size() const;
  // The ids still inside twice the window, with what was reported for each,
  // as JSON lines (served times as Unix ms: the monotonic clock does not
  // outlive the process). Written atomically. Without `with_reported` the
  // reports are left out (their outcomes were not saved: they may be sent
  // again).
  enum class Reports { kNone, kSaved, kAll };
  // kSaved: the reports whose outcomes a flush saved (AppendJournal marks
  // them) — what a stop writes, whether its last flush worked or not.
  Status Save(const std::string& path, Reports reports = Reports::kAll) const;
  // Adds the ids a Save wrote that are still inside twice the window.
  // Returns how many; a malformed line is skipped.
  Result<size_t> Load(const std::string& path);

  // The journal. MarkClaims() notes the claims Recorded so far; a figures flush
  // calls it before saving the outcomes those claims added, then
  // AppendJournal(path, mark) — the mark when the outcomes were saved, else
  // 0 — appends to `path`, as Save's lines (Load merges an id's lines), the
  // ids remembered since the last append, and the claims up to `mark`
  // (later ones stay for the next append: a metric is never journaled as
  // reported before its outcome is saved, so a crash leaves feedback to
  // send again, not feedback lost). fdatasyncs. Once the file holds far more
  // lines than ids, or after an append failed (a full disk: what it held is
  // in memory, and a torn line may end the file), it is rewritten whole,
  // with the saved reports only.
  size_t MarkClaims() const;
  Status AppendJournal(const std::string& path, size_t claims_mark);

 private:
  struct Entry {
    std::string experiment;
    Variant variant;
    int64_t at;
    std::set<std::string> reported;
    std::set<std::string> saved;  // of those, the ones whose outcomes a flush saved (the journal's)
    int user_bucket = -1;
  };
  void Expire(int64_t now);                                     // mu_ held
  void DropOldest();                                            // mu_ held; order_ not empty
  Result<Entry*> Find(const std::string& request_id, int64_t now);  // mu_ held

  const Options opts_;
  mutable std::mutex mu_;
  std::unordered_map<std::string, Entry> entries_;      // guarded by mu_
  std::deque<std::pair<int64_t, std::string>> order_;   // guarded by mu_
  // Places dropped from order_'s front, ever: a copy made a chunk at a time
  // (FormatAll) finds its place again after the lock was let go (mu_).
  uint64_t dropped_ = 0;
  // Rows made per hold of the lock when the store is copied for the file.
  static constexpr size_t kRowsPerLock = 2048;
  std::vector<std::string> new_ids_;      // remembered since the last AppendJournal (mu_)
  std::vector<std::pair<std::string, std::vector<std::string>>> new_claims_;  // Recorded since, in order (mu_)
  size_t journal_lines_ = 0;              // lines in the file since Save last wrote it whole (mu_)
  bool rewrite_ = false;                  // an append failed: the next one rewrites the file whole (mu_)
  static Status Append(const std::string& path, const std::string& text);  // O_APPEND + fdatasync
  // A line of the file, copied out of the store so that it is formatted
  // outside the lock (a million ids take seconds to format).
  struct Row {
    std::string id, experiment;
    Variant variant;
    int64_t served_ms;
    std::set<std::string> reported;
    int user_bucket = -1;
  };
  // Every entry as the file's lines (`*lines` += their count); takes mu_ a
  // chunk at a time (not held by the caller).
  std::string FormatAll(Reports reports, size_t* lines) const;
  static Row MakeRow(const std::string& id, const Entry& e, int64_t now, int64_t unix_ms, Reports reports);
  static std::string Format(const std::vector<Row>& rows);
};

}  // namespace mms
