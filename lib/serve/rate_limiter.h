// RateLimiter: token buckets per model and per tenant, checked before any
// queueing. A request takes one token from its model's bucket and one from
// its tenant's (when either has a limit), and an adapter's request one from
// its base model's too; short of any it is RATE_LIMITED at once — nothing
// waits. Buckets refill continuously at `qps` up to `burst`.
// Admitted and limited requests are counted per model and per tenant.
// Tenants are named by clients, so their state is bounded: at kMaxTenants
// buckets, idle ones (full again, so the same as new) are dropped at most
// once a second; a new tenant that still finds no room shares the
// "(other)" bucket, and its counts go to "(other)" too (so that row counts
// what that bucket decided). Counts are kept for at most kMaxTenants
// tenants too, and are never dropped: past that, a tenant with a bucket of
// its own is counted under "(counted together)", which has no limit of its
// own to show. Tenants with their
// own limit (mms limit set) always get their own bucket. A request without a
// tenant is the tenant "(none)": all of them share one bucket (its own limit
// or the default tenant limit), so leaving the tenant out does not escape a
// per-tenant default.
//
// Thread-safety: internally locked (one short critical section per request).
#pragma once

#include <map>
#include <mutex>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "core/clock.h"
#include "core/status.h"

namespace mms {

struct TokenLimit {
  double qps = 0;
  double burst = 0;
};

class RateLimiter {
 public:
  static constexpr size_t kMaxTenants = 10000;
  static constexpr const char* kOtherTenants = "(other)";
  static constexpr const char* kNoTenant = "(none)";
  static constexpr const char* kCountedTogether = "(counted together)";
  static constexpr const char* kDefaultRow = "*";  // the [limits] default's row in mms limit list
  // Names the limiter and mms limit list use for their own rows: no client
  // may send them (a tenant "*" was served, shown as a second "*" row, and
  // could get no limit of its own).
  static bool Reserved(const std::string& tenant) {
    return tenant == kNoTenant || tenant == kOtherTenants || tenant == kCountedTogether || tenant == kDefaultRow;
  }

  explicit RateLimiter(Clock* clock = Clock::Real()) : clock_(clock) {}

  // Replaces the limits (registry + config defaults). Buckets keep their
  // tokens across a change of limit (capped at the new burst; refilled at
  // the new rate from now); a key given a limit it had none of starts full. A limit whose qps is
  // not a positive finite number (0, negative, NaN, infinite) is no limit
  // (the registry and the config refuse them; a stray one must neither
  // block for good nor turn a bucket into NaN); a burst of 0 or not finite
  // is max(1, qps), one in (0, 1) is 1 — below 1 no request could ever pass.
  void Configure(const std::map<std::string, TokenLimit>& models, const std::map<std::string, TokenLimit>& tenants,
                 std::optional<TokenLimit> default_model, std::optional<TokenLimit> default_tenant);
  // OK, or RATE_LIMITED naming the bucket that is empty. `tenant` "" is
  // kNoTenant. `base`: for an adapter, the model it runs on, whose bucket
  // it takes a token from too (a base's limit bounds the load on it, its
  // adapters' requests included); "" for a model of its own.
  Status Admit(const std::string& model, const std::string& tenant, const std::string& base = "");
  // {"models": {name: {admitted, limited, refused_by_limit, refused_by_default, qps, burst}},
  //  "tenants": {...},
  // (limited: its requests refused by either limit, model or tenant;
  // refused_by_limit: those refused by the key's own bucket, whichever limit
  // it had then — a base model's counts its adapters' requests too, which
  // are limited under the adapter, not the base; refused_by_default: the part of those refused while that
  // limit was the [limits] default, so a limit set or removed later does
  // not move refusals between the key's own limit and the default),
  //  "defaults": {"model": {qps, burst} | null, "tenant": ...}}
  nlohmann::json Stats() const;

 private:
  struct Bucket {
    TokenLimit limit;
    double tokens = 0;
    int64_t at = 0;  // mono ns of the last refill
  };
  struct Counts {
    uint64_t admitted = 0, limited = 0, refused_by_limit = 0, refused_by_default = 0;
  };
  Bucket* Find(std::map<std::string, Bucket>& buckets, const std::map<std::string, TokenLimit>& limits,
               const std::optional<TokenLimit>& fallback, const std::string& key);  // mu_ held
  void Refill(Bucket& b, int64_t now);
  Counts& TenantCounts(const std::string& tenant);  // mu_ held

  Clock* const clock_;
  mutable std::mutex mu_;
  std::map<std::string, TokenLimit> model_limits_, tenant_limits_;  // guarded by mu_
  std::optional<TokenLimit> default_model_, default_tenant_;       // guarded by mu_
  std::map<std::string, Bucket> model_buckets_, tenant_buckets_;    // guarded by mu_
  std::map<std::string, Counts> model_counts_, tenant_counts_;      // guarded by mu_
  int64_t last_sweep_ns_ = 0;                                       // guarded by mu_
};

}  // namespace mms
