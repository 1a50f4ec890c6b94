#include "registry/snapshot.h"

#include "core/units.h"

namespace mms {

Result<std::shared_ptr<const RegistrySnapshot>> RegistrySnapshot::Load(Registry& reg) {
  auto snap = std::make_shared<RegistrySnapshot>();
  // The version first: a change landing while we read is seen next time.
  MMS_ASSIGN_OR_RETURN(snap->data_version, reg.DataVersion());
  // One read transaction: versions, pins and rollouts from the same commit.
  MMS_RETURN_IF_ERROR(reg.ReadConsistent([&]() -> Status {
    MMS_ASSIGN_OR_RETURN(auto all, reg.List());
    for (auto& v : all) snap->models[v.model].push_back(std::move(v));
    MMS_ASSIGN_OR_RETURN(snap->pins, reg.Pins());
    MMS_ASSIGN_OR_RETURN(auto exps, reg.ListExperiments(/*include_stopped=*/false));
    for (auto& e : exps) snap->experiments[e.model] = std::move(e);
    MMS_ASSIGN_OR_RETURN(auto shadows, reg.ListShadows(/*running_only=*/true));
    for (auto& s : shadows) snap->shadows[s.model] = std::move(s);
    MMS_ASSIGN_OR_RETURN(snap->limits, reg.Limits());
    return Status::Ok();
  }));
  snap->Index();
  return std::shared_ptr<const RegistrySnapshot>(std::move(snap));
}

void RegistrySnapshot::Index() {
  by_id_.clear();
  for (const auto& [name, versions] : models)
    for (const auto& v : versions) by_id_[v.id] = &v;
}

std::shared_ptr<const RegistrySnapshot> RegistrySnapshot::WithRollouts(std::map<std::string, ExperimentRecord> exps,
                                                                       std::map<std::string, ShadowRecord> shadows) const {
  auto copy = std::make_shared<RegistrySnapshot>();
  copy->data_version = data_version;
  copy->models = models;
  copy->pins = pins;
  copy->experiments = std::move(exps);
  copy->shadows = std::move(shadows);
  copy->limits = limits;
  copy->Index();
  return copy;
}

const VersionRecord* RegistrySnapshot::ById(int64_t id) const {
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : it->second;
}

const VersionRecord* RegistrySnapshot::RunsOn(const VersionRecord& v) const {
  return v.is_adapter() ? ById(v.base_id) : &v;
}

Result<const VersionRecord*> RegistrySnapshot::Resolve(const Ref& ref) const {
  auto it = models.find(ref.name);
  if (it == models.end()) {
    std::vector<std::string> names;
    for (const auto& [n, _] : models) names.push_back(n);
    std::string hint = ClosestMatch(ref.name, names);
    return NotFound("unknown model '" + ref.name + "'" + (hint.empty() ? "" : "; did you mean '" + hint + "'?"));
  }
  const auto& versions = it->second;
  switch (ref.kind) {
    case Ref::Kind::kName: {
      const VersionRecord* v = DefaultVersion(versions);
      if (!v) return NoDefaultVersion(ref.name, versions);
      return v;
    }
    case Ref::Kind::kVersion: {
      std::string list;
      for (const auto& v : versions) {
        if (v.version == ref.version) return &v;
        list += (list.empty() ? "" : ", ") + v.version;
      }
      return NotFound("unknown version " + ref.ToString() + "; " + ref.name + " has versions " + list);
    }
    case Ref::Kind::kAlias: {
      std::string list;
      for (const auto& v : versions)
        for (const auto& a : v.aliases) {
          if (a == ref.alias) return &v;
          list += (list.empty() ? "" : ", ") + a;
        }
      return NotFound("unknown alias " + ref.ToString() + "; " + ref.name + " has " +
                      (list.empty() ? "no aliases" : "aliases " + list));
    }
  }
  return NotFound(ref.ToString());
}

}  // namespace mms
