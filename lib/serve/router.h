// Router: which version serves a request. An explicit NAME:VERSION or
// NAME@ALIAS is served as asked. A bare NAME goes to its production version
// (registry rules) unless the model has a running experiment or canary: then
// the user's sticky bucket picks control or treatment (no user id: control;
// "random" experiments flip a coin per request instead). A paused
// experiment sends everyone to control.
//
// Thread-safety: a pure function of an immutable snapshot; `rng` belongs to
// the caller's thread.
#pragma once

#include <random>
#include <string>

#include "core/status.h"
#include "registry/snapshot.h"
#include "rollout/assignment.h"

namespace mms {

struct Route {
  const VersionRecord* version = nullptr;
  const ExperimentRecord* experiment = nullptr;  // set when an experiment decided
  Variant variant = Variant::kNone;
  int bucket = -1;  // the user's sticky bucket, -1 when none was computed
};

Result<Route> RouteRequest(const RegistrySnapshot& snap, const Ref& ref, const std::string& user,
                           std::mt19937_64& rng);

}  // namespace mms
