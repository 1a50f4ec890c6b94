#include "serve/router.h"

namespace mms {

Result<Route> RouteRequest(const RegistrySnapshot& snap, const Ref& ref, const std::string& user,
                           std::mt19937_64& rng) {
  Route r;
  MMS_ASSIGN_OR_RETURN(r.version, snap.Resolve(ref));
  if (ref.kind != Ref::Kind::kName) return r;
  auto it = snap.experiments.find(ref.name);
  if (it == snap.experiments.end()) return r;
  const ExperimentRecord& e = it->second;
  const VersionRecord* control = snap.ById(e.control_id);
  const VersionRecord* treatment = snap.ById(e.treatment_id);
  if (!control || !treatment) return r;  // a version went away: serve the default
  r.experiment = &e;
  if (e.state == "paused") {
    r.variant = Variant::kControl;
  } else if (e.random) {
    r.variant = std::uniform_int_distribution<int>(0, 9999)(rng) < e.basis_points ? Variant::kTreatment
                                                                                 : Variant::kControl;
  } else if (user.empty()) {
    r.variant = Variant::kControl;
  } else {
    r.bucket = SeedBucket(e.id, user);
    r.variant = IsTreatment(r.bucket, e.basis_points) ? Variant::kTreatment : Variant::kControl;
  }
  r.version = r.variant == Variant::kTreatment ? treatment : control;
  return r;
}

}  // namespace mms
