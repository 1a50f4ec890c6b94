// mms adapter register|list|show|rm: LoRA adapters (PEFT format) on a base
// version. An adapter is a version of a model of its own (NAME:VERSION) whose
// weights are the adapter and whose base is another version, so it can be
// predicted, staged, aliased, experimented on, shadowed and canaried like any
// version. Everything is checked here, at registration, against the base's
// packed weights — never at serving time. No daemon needed.
#include <unistd.h>

#include <filesystem>
#include <iostream>

#include "cli.h"
#include "core/hash.h"
#include "core/paths.h"
#include "core/units.h"
#include "lora/adapter.h"

namespace mms::cli {
namespace {

struct AdapterArgs {
  std::string name, version, base, path, description;
  std::vector<std::string> labels;
};

// The next integer version of `name` ("1" for a new model): above every
// version it has, dotted ones too (after 1.1.0 comes 2, which sorts above it;
// "1" would sort below, and the bare name would keep serving 1.1.0).
std::string NextVersion(Registry& reg, const std::string& name) {
  long next = 1;
  if (auto list = reg.List(name); list.ok())
    for (const auto& v : *list) {
      char* end = nullptr;
      long n = std::strtol(v.version.c_str(), &end, 10);  // the leading number
      if (end != v.version.c_str()) next = std::max(next, n + 1);
    }
  return std::to_string(next);
}

// Packs a checked adapter into the data dir (staging, then rename), as
// model registration does: its weights and a copy of adapter_config.json.
Result<std::string> PackAdapter(Cli& cli, const CheckedAdapter& checked, const std::string& src_dir,
                                const std::string& name, const std::string& version, const std::string& sha256,
                                const std::string& stem_suffix) {
  MMS_ASSIGN_OR_RETURN(Staging stage, NewStaging(cli, name, version, sha256, stem_suffix));
  const std::string& staging = stage.dir;
  std::error_code ec;
  MMS_RETURN_IF_ERROR(MakeDirs(staging, 0755));
  Status st = WritePackedAdapter(JoinPath(staging, kAdapterWeightsFile), checked);
  if (st.ok())
    std::filesystem::copy_file(JoinPath(src_dir, "adapter_config.json"), JoinPath(staging, "adapter_config.json"), ec);
  if (st.ok() && ec) st = IoError("cannot copy adapter_config.json: " + ec.message());
  if (!st.ok()) {
    std::filesystem::remove_all(staging, ec);
    return st;
  }
  return PublishStaging(staging, stage.model_dir, stage.stem);
}

// The base's packed weights, as adapters are checked against them.
Result<LoraBase> BaseOf(const VersionRecord& base) {
  if (base.packed_dir.empty())
    return FailedPrecondition(base.ref() + " has no packed weights to check adapters against; register it again");
  std::vector<std::string> stacked;
  if (base.lora.contains("stacked")) stacked = base.lora["stacked"].get<std::vector<std::string>>();
  return ReadLoraBase(base.ref(), JoinPath(base.packed_dir, "weights.safetensors"), stacked);
}

// The same adapter registered already (a CI job run again): the same weights
// and config on the same base, and no setting given now that differs.
// `version`: the one asked for ("" = any version of the adapter).
// Returns it, or NOT_FOUND when there is none; ALREADY_EXISTS when `version`
// is taken by something else, saying what differs.
Result<VersionRecord> SameRun(Registry& reg, const AdapterArgs& a, const NewVersion& v, const std::string& version,
                              const std::string& base_ref) {
  auto all = reg.List(a.name);
  if (!all.ok()) return NotFound("no such adapter");
  for (const VersionRecord& e : *all) {
    if (!version.empty() && e.version != version) continue;
    // Without --version, an archived one is not this run's (registering again after archiving makes a new one).
    if (version.empty() && e.stage == Stage::kArchived) continue;
    std::vector<std::string> differ;
    if (e.sha256 != v.sha256) differ.push_back("weights (sha256 " + e.sha256.substr(0, 12) + ", this one " +
                                               v.sha256.substr(0, 12) + ")");
    if (e.base_id != v.base_id)
      differ.push_back("base (" + (e.base_ref.empty() ? std::string("none") : e.base_ref) + ", this one " + base_ref +
                       ")");
    if (e.sha256 == v.sha256 && e.lora != v.lora) differ.push_back("adapter_config.json");
    if (!a.description.empty() && a.description != e.description) differ.push_back("--description");
    for (const auto& [key, value] : v.labels)
      if (auto it = e.labels.find(key); it == e.labels.end() || it->second != value) {
        differ.push_back("--label " + key);
        break;
      }
    if (differ.empty()) return e;
    if (version.empty()) continue;
    std::string list;
    for (const auto& d : differ) list += (list.empty() ? "" : ", ") + d;
    return AlreadyExists(a.name + ":" + version + " is already registered (by " + e.created_by + ") and differs in its " +
                         list + ": register a new version number (or leave out --version for the next one)");
  }
  return NotFound("not registered");
}

// *unchanged: the same adapter was registered already (SameRun): nothing written.
Result<VersionRecord> RegisterAdapter(Cli& cli, Registry& reg, const AdapterArgs& a, bool* unchanged) {
  *unchanged = false;
  MMS_RETURN_IF_ERROR(ValidateName(a.name));
  if (!a.version.empty()) MMS_RETURN_IF_ERROR(ValidateVersion(a.version));
  MMS_ASSIGN_OR_RETURN(VersionRecord base, reg.Resolve(a.base));
  if (base.is_adapter())
    return InvalidArgument(base.ref() + " is itself an adapter (of " + base.base_ref + "); --base names a model version");
  MMS_ASSIGN_OR_RETURN(LoraBase lb, BaseOf(base));
  auto dir = CanonicalPath(a.path);
  if (!dir.ok()) return InvalidArgument("adapter directory " + a.path + " does not exist (--path names a PEFT adapter directory)");
  MMS_RETURN_IF_ERROR(reg.CheckArtifactPath(*dir));
  MMS_ASSIGN_OR_RETURN(CheckedAdapter checked, CheckAdapter(*dir, lb));

  NewVersion v;
  v.model = a.name;
  v.artifact_path = checked.weights_path;
  v.size_bytes = std::filesystem::file_size(checked.weights_path);
  MMS_ASSIGN_OR_RETURN(v.sha256, Sha256File(checked.weights_path));
  v.description = a.description;
  for (const auto& l : a.labels) {
    auto eq = l.find('=');
    if (eq == std::string::npos || eq == 0) return InvalidArgument("invalid label '" + l + "': use --label key=value");
    v.labels[l.substr(0, eq)] = l.substr(eq + 1);
  }
  v.device_bytes = v.host_bytes = checked.info.bytes;
  v.inputs = base.inputs;  // served through the base: the same inputs
  v.base_id = base.id;
  v.lora = checked.info.ToJson();
  if (auto same = SameRun(reg, a, v, a.version, base.ref()); same.ok() || same.status().code() != Code::kNotFound) {
    *unchanged = same.ok();
    return same;
  }
  v.version = a.version.empty() ? NextVersion(reg, a.name) : a.version;
  MMS_ASSIGN_OR_RETURN(v.packed_dir, PackAdapter(cli, checked, *dir, a.name, v.version, v.sha256, ""));
  return RegisterPublished(reg, v);
}

std::string Targets(const VersionRecord& r) {
  std::string s;
  for (const auto& t : r.lora.value("targets", nlohmann::json::array()))
    s += (s.empty() ? "" : ",") + t.value("module", "");
  return s;
}

int CmdRegister(Cli& cli, const AdapterArgs& a) {
  auto reg = cli.OpenRegistry(/*create=*/true);
  if (!reg.ok()) return cli.Fail(reg.status());
  bool unchanged = false;
  auto rec = RegisterAdapter(cli, **reg, a, &unchanged);
  // No --version: the next number, which a registration running beside this
  // one may take first; then the number after it (or the same adapter, which
  // that one registered: unchanged).
  for (int tries = 1; a.version.empty() && tries < 10 && rec.status().code() == Code::kAlreadyExists; ++tries)
    rec = RegisterAdapter(cli, **reg, a, &unchanged);
  if (!rec.ok()) return cli.Fail(rec.status());
  if (!unchanged) cli.NotifyDaemon();
  nlohmann::json j = rec->ToJson();
  j["unchanged"] = unchanged;
  cli.Emit(j, [&] {
    if (unchanged) {
      std::cout << "adapter " << rec->ref() << " is already registered with these weights on " << rec->base_ref
                << " (unchanged)\n";
      return;
    }
    std::cout << "registered adapter " << rec->ref() << " on " << rec->base_ref << " (rank "
              << rec->lora.value("rank", 0) << ", " << Targets(*rec) << ", " << FormatBytes(rec->device_bytes) << ")\n";
  });
  return 0;
}

int CmdList(Cli& cli, const std::string& base_text) {
  auto reg = cli.OpenRegistryToList();
  if (!reg.ok()) return cli.Fail(reg.status());
  int64_t base_id = 0;
  if (!base_text.empty()) {
    auto b = (*reg)->Resolve(base_text);
    if (!b.ok()) return cli.Fail(b.status());
    if (b->is_adapter())  // as adapter register says: an adapter has no adapters
      return cli.Fail(InvalidArgument(b->ref() + " is itself an adapter (of " + b->base_ref +
                                      "); --base names a model version"));
    base_id = b->id;
  }
  auto all = (*reg)->List();
  if (!all.ok()) return cli.Fail(all.status());
  std::vector<VersionRecord> adapters;
  for (const auto& v : *all)
    if (v.is_adapter() && (!base_id || v.base_id == base_id)) adapters.push_back(v);
  nlohmann::json j = nlohmann::json::array();
  for (const auto& v : adapters) j.push_back(v.ToJson());
  cli.Emit(j, [&] {
    if (adapters.empty()) {
      std::cout << "no adapters (register one with: mms adapter register NAME --base REF --path DIR)\n";
      return;
    }
    std::vector<std::vector<std::string>> rows{{"ADAPTER", "BASE", "RANK", "TARGETS", "SIZE", "STAGE", "CREATED"}};
    for (const auto& v : adapters)
      rows.push_back({v.ref(), v.base_ref, v.lora.value("rank", nlohmann::json(0)).dump(), Targets(v),
                      FormatBytes(v.device_bytes), StageName(v.stage), FormatTime(v.created_ms)});
    std::cout << FormatTable(rows);
  });
  return 0;
}

// `mms adapter show|rm` take adapters only, so a typo cannot remove a base.
Status RequireAdapter(Cli& cli, const std::string& ref) {
  MMS_ASSIGN_OR_RETURN(auto reg, cli.OpenRegistry());
  MMS_ASSIGN_OR_RETURN(VersionRecord v, reg->Resolve(ref));
  if (!v.is_adapter()) return InvalidArgument(v.ref() + " is not an adapter (see mms model show " + v.ref() + ")");
  return Status::Ok();
}

}  // namespace

static Result<CheckedAdapter> CheckAdapterAsRegistered(Registry& reg, const VersionRecord& adapter) {
  auto base = reg.Resolve(adapter.base_ref);
  if (!base.ok() || base->id != adapter.base_id)
    return FailedPrecondition("the base of " + adapter.ref() + " (" + adapter.base_ref +
                              ") is no longer registered: nothing to check the adapter against");
  MMS_ASSIGN_OR_RETURN(LoraBase lb, BaseOf(*base));
  const std::string dir = DirName(adapter.artifact_path);  // the PEFT directory registered
  MMS_ASSIGN_OR_RETURN(CheckedAdapter checked, CheckAdapter(dir, lb));
  // The weights' hash is checked by the caller; the config (rank, alpha,
  // targets) must be as registered too, or the adapter would serve at
  // another scale than the registry records.
  if (checked.info.ToJson() != adapter.lora)
    return FailedPrecondition("the adapter_config.json of " + adapter.ref() + " in " + dir +
                              " changed since registration (" + checked.info.ToJson().dump() + ", registered " +
                              adapter.lora.dump() + "): register it as a new version instead");
  return checked;
}

Status CheckAdapterSource(Registry& reg, const VersionRecord& adapter) {
  return CheckAdapterAsRegistered(reg, adapter).status();
}

Result<std::string> RepackAdapter(Cli& cli, Registry& reg, const VersionRecord& adapter, const std::string& stem_suffix) {
  MMS_ASSIGN_OR_RETURN(CheckedAdapter checked, CheckAdapterAsRegistered(reg, adapter));
  return PackAdapter(cli, checked, DirName(adapter.artifact_path), adapter.model, adapter.version, adapter.sha256,
                     stem_suffix);
}

void AddAdapterCommands(CLI::App& app, Cli& cli) {
  auto* ad = app.add_subcommand("adapter", "LoRA adapters (PEFT format) on a shared base version");
  ad->require_subcommand(1);
  auto* reg = ad->add_subcommand("register", "Register a PEFT adapter directory as NAME:VERSION on a base version");
  auto a = std::make_shared<AdapterArgs>();
  reg->add_option("NAME", a->name, "the adapter's model name ([a-z0-9][a-z0-9._-]{0,62})")->required();
  reg->add_option("--base", a->base, "the base version (NAME, NAME:VERSION or NAME@ALIAS)")->required();
  reg->add_option("--path", a->path, "directory with adapter_config.json and adapter_model.safetensors")->required();
  reg->add_option("--version", a->version, "version (default: the next integer)");
  reg->add_option("--description", a->description, "free text");
  reg->add_option("--label", a->labels, "key=value (repeatable)");
  reg->callback([&cli, a] { cli.exit_code = CmdRegister(cli, *a); });

  auto* list = ad->add_subcommand("list", "Adapters, optionally of one base");
  auto base = std::make_shared<std::string>();
  list->add_option("--base", *base, "only adapters of this base version");
  list->callback([&cli, base] { cli.exit_code = CmdList(cli, *base); });

  auto* show = ad->add_subcommand("show", "Show one adapter version");
  auto sref = std::make_shared<std::string>();
  show->add_option("REF", *sref, "NAME, NAME:VERSION or NAME@ALIAS")->required();
  show->callback([&cli, sref] {
    Status st = RequireAdapter(cli, *sref);
    cli.exit_code = st.ok() ? ModelShow(cli, *sref) : cli.Fail(st);
  });

  auto* rm = ad->add_subcommand("rm", "Remove an adapter version (refused while in use, unless --force)");
  auto rref = std::make_shared<std::string>();
  auto force = std::make_shared<bool>(false);
  rm->add_option("REF", *rref, "NAME:VERSION (or NAME@ALIAS)")->required();
  rm->add_flag("--force", *force, "remove even if an experiment, shadow or canary uses it (they stop)");
  rm->callback([&cli, rref, force] {
    Status st = RequireAdapter(cli, *rref);
    cli.exit_code = st.ok() ? ModelRm(cli, *rref, *force) : cli.Fail(st);
  });
}

}  // namespace mms::cli
