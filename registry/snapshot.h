// RegistrySnapshot: an immutable in-memory copy of what the registry says is
// servable, for the daemon's request path (no SQLite per request). The
// daemon rebuilds it when the registry's DataVersion changes and swaps it in
// atomically; readers keep whichever snapshot they started with.
//
// Resolve follows exactly the Registry's rules (DefaultVersion for a bare
// name) and gives the same NOT_FOUND messages.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "registry/registry.h"

namespace mms {

struct RegistrySnapshot {
  int64_t data_version = 0;
  std::map<std::string, std::vector<VersionRecord>> models;  // name → versions (sorted)
  std::vector<Pin> pins;
  std::map<std::string, ExperimentRecord> experiments;  // active (running or paused), by model name
  std::map<std::string, ShadowRecord> shadows;          // running, by model name
  std::vector<RateLimit> limits;

  static Result<std::shared_ptr<const RegistrySnapshot>> Load(Registry& reg);
  // A copy with other experiments and shadows (the daemon holds back a new
  // rollout until its arms are loaded). Everything else is the same.
  std::shared_ptr<const RegistrySnapshot> WithRollouts(std::map<std::string, ExperimentRecord> exps,
                                                       std::map<std::string, ShadowRecord> shadows) const;
  Result<const VersionRecord*> Resolve(const Ref& ref) const;
  const VersionRecord* ById(int64_t id) const;
  // The version a request to `v` runs, whose inputs it is matched to: `v`,
  // or an adapter's base as now recorded (a repack with a sample may have
  // refined its inputs since the adapter copied them); null when an
  // adapter's base is not in the snapshot.
  const VersionRecord* RunsOn(const VersionRecord& v) const;

 private:
  void Index();
  std::unordered_map<int64_t, const VersionRecord*> by_id_;  // into `models`
};

}  // namespace mms
