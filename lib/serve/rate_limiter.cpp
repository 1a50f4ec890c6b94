#include "serve/rate_limiter.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace mms {

namespace {
// A usable limit, or none (see Configure).
std::optional<TokenLimit> Sane(std::optional<TokenLimit> l) {
  if (!l || !std::isfinite(l->qps) || l->qps <= 0) return std::nullopt;
  l->burst = !std::isfinite(l->burst) || l->burst <= 0 ? std::max(1.0, l->qps) : std::max(1.0, l->burst);
  return l;
}
std::map<std::string, TokenLimit> Sane(const std::map<std::string, TokenLimit>& limits) {
  std::map<std::string, TokenLimit> out;
  for (const auto& [k, l] : limits)
    if (auto s = Sane(l)) out.emplace(k, *s);
  return out;
}
}  // namespace

void RateLimiter::Configure(const std::map<std::string, TokenLimit>& models, const std::map<std::string, TokenLimit>& tenants,
                            std::optional<TokenLimit> default_model, std::optional<TokenLimit> default_tenant) {
  std::lock_guard<std::mutex> lock(mu_);
  model_limits_ = Sane(models);
  tenant_limits_ = Sane(tenants);
  default_model_ = Sane(default_model);
  default_tenant_ = Sane(default_tenant);
  // Drop buckets whose limit went away. The rest keep their tokens, refilled
  // at the old rate until now and capped at the new burst: a changed limit is
  // no fresh burst (a script setting limits on every deploy, or a limit
  // lowered to stop a flood, would otherwise let a full bucket through).
  const int64_t now = clock_->MonoNanos();
  auto prune = [&](std::map<std::string, Bucket>& buckets, const std::map<std::string, TokenLimit>& limits,
                   const std::optional<TokenLimit>& fallback) {
    for (auto it = buckets.begin(); it != buckets.end();) {
      auto l = limits.find(it->first);
      std::optional<TokenLimit> want = l != limits.end() ? std::optional<TokenLimit>(l->second) : fallback;
      if (!want) {
        it = buckets.erase(it);
        continue;
      }
      Refill(it->second, now);
      it->second.limit = *want;
      it->second.tokens = std::min(it->second.tokens, want->burst);
      ++it;
    }
  };
  prune(model_buckets_, model_limits_, default_model_);
  prune(tenant_buckets_, tenant_limits_, default_tenant_);
}

void RateLimiter::Refill(Bucket& b, int64_t now) {
  double dt = static_cast<double>(now - b.at) / 1e9;
  if (dt > 0) b.tokens = std::min(b.limit.burst, b.tokens + dt * b.limit.qps);
  b.at = now;
}

RateLimiter::Bucket* RateLimiter::Find(std::map<std::string, Bucket>& buckets,
                                       const std::map<std::string, TokenLimit>& limits,
                                       const std::optional<TokenLimit>& fallback, const std::string& key) {
  auto it = buckets.find(key);
  if (it != buckets.end()) return &it->second;
  auto l = limits.find(key);
  if (l == limits.end() && !fallback) return nullptr;
  Bucket b;
  b.limit = l != limits.end() ? l->second : *fallback;
  b.tokens = b.limit.burst;
  b.at = clock_->MonoNanos();
  return &buckets.emplace(key, b).first->second;
}

RateLimiter::Counts& RateLimiter::TenantCounts(const std::string& tenant) {
  auto it = tenant_counts_.find(tenant);
  if (it != tenant_counts_.end()) return it->second;
  if (tenant_counts_.size() >= kMaxTenants && !tenant_limits_.count(tenant) && !Reserved(tenant))
    return tenant_counts_[kCountedTogether];
  return tenant_counts_[tenant];
}

Status RateLimiter::Admit(const std::string& model, const std::string& request_tenant, const std::string& base) {
  const std::string& tenant = request_tenant.empty() ? std::string(kNoTenant) : request_tenant;
  std::lock_guard<std::mutex> lock(mu_);
  int64_t now = clock_->MonoNanos();
  // A tenant without a bucket, at the cap: drop idle buckets (at most once a
  // second: the sweep is linear), and if that frees nothing, the newcomer
  // shares one bucket with every other tenant past the cap.
  std::string bucket_key = tenant;
  if (tenant_buckets_.size() >= kMaxTenants && !tenant_buckets_.count(tenant) && !tenant_limits_.count(tenant) &&
      tenant != kNoTenant) {
    if (now - last_sweep_ns_ >= 1'000'000'000) {
      last_sweep_ns_ = now;
      for (auto it = tenant_buckets_.begin(); it != tenant_buckets_.end();) {
        Refill(it->second, now);
        bool idle = it->second.tokens >= it->second.limit.burst && it->first != kOtherTenants;
        it = idle ? tenant_buckets_.erase(it) : std::next(it);
      }
    }
    if (tenant_buckets_.size() >= kMaxTenants) bucket_key = kOtherTenants;
  }
  Bucket* m = Find(model_buckets_, model_limits_, default_model_, model);
  Bucket* b = base.empty() || base == model ? nullptr : Find(model_buckets_, model_limits_, default_model_, base);
  Bucket* t = Find(tenant_buckets_, tenant_limits_, default_tenant_, bucket_key);
  for (Bucket* x : {m, b, t})
    if (x) Refill(*x, now);
  // Past the bucket cap, the tenant is counted as the bucket it shares.
  const std::string& counted_as = bucket_key == kOtherTenants ? bucket_key : tenant;
  // `by`: the counts of the bucket that refused (the model's, its base's, or
  // the tenant's own, or the overflow bucket past the cap); `by_default`:
  // whether that bucket's limit was the [limits] default.
  auto refuse = [&](const std::string& what, const TokenLimit& l, Counts& by, bool by_default, const std::string& hint) {
    ++model_counts_[model].limited;
    ++TenantCounts(counted_as).limited;
    ++by.refused_by_limit;
    if (by_default) ++by.refused_by_default;
    char buf[64];
    std::snprintf(buf, sizeof buf, "%g request%s/s, burst %g", l.qps, l.qps == 1 ? "" : "s", l.burst);
    return Status(Code::kRateLimited, what + " over its rate limit (" + buf + "); " + hint);
  };
  if (m && m->tokens < 1)
    return refuse("model '" + model + "' is", m->limit, model_counts_[model], !model_limits_.count(model),
                  "retry later or raise it with mms limit set");
  if (b && b->tokens < 1)
    return refuse("model '" + base + "', the base adapter '" + model + "' runs on (its limit counts its adapters' " +
                      "requests too), is",
                  b->limit, model_counts_[base], !model_limits_.count(base),
                  "retry later or raise it with mms limit set " + base);
  if (t && t->tokens < 1) {
    Counts& by = TenantCounts(bucket_key);
    const bool by_default = !tenant_limits_.count(bucket_key);
    if (request_tenant.empty())
      return refuse("requests without a tenant share the tenant '(none)', which is", t->limit, by, by_default,
                    "send a tenant (mms predict --tenant T), retry later, or raise it with mms limit set --tenant '(none)'");
    if (bucket_key == kOtherTenants)  // past the cap: not this tenant's own use
      return refuse("tenant '" + tenant + "' came after " + std::to_string(kMaxTenants) +
                        " tenants had buckets, so it shares the bucket of such tenants, which is",
                    t->limit, by, by_default, "retry later, or give it its own limit with mms limit set --tenant " + tenant);
    return refuse("tenant '" + tenant + "' is", t->limit, by, by_default, "retry later or raise it with mms limit set");
  }
  for (Bucket* x : {m, b, t})
    if (x) x->tokens -= 1;
  ++model_counts_[model].admitted;
  ++TenantCounts(counted_as).admitted;
  return Status::Ok();
}

nlohmann::json RateLimiter::Stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  auto dump = [](const std::map<std::string, Counts>& counts, const std::map<std::string, TokenLimit>& limits,
                 const std::optional<TokenLimit>& fallback) {
    nlohmann::json j = nlohmann::json::object();
    for (const auto& [k, c] : counts) {
      j[k] = {{"admitted", c.admitted},
              {"limited", c.limited},
              {"refused_by_limit", c.refused_by_limit},
              {"refused_by_default", c.refused_by_default}};
      auto l = limits.find(k);
      std::optional<TokenLimit> lim = l != limits.end() ? std::optional<TokenLimit>(l->second) : fallback;
      if (lim && k != kCountedTogether) {  // (many tenants, each with its own bucket)
        j[k]["qps"] = lim->qps;
        j[k]["burst"] = lim->burst;
      }
    }
    return j;
  };
  auto limit = [](const std::optional<TokenLimit>& l) {
    return l ? nlohmann::json{{"qps", l->qps}, {"burst", l->burst}} : nlohmann::json();
  };
  return {{"models", dump(model_counts_, model_limits_, default_model_)},
          {"tenants", dump(tenant_counts_, tenant_limits_, default_tenant_)},
          {"defaults", {{"model", limit(default_model_)}, {"tenant", limit(default_tenant_)}}}};
}

}  // namespace mms
