#include "lora/adapter.h"

#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <optional>
#include <set>
#include <stdexcept>

#include <re2/re2.h>

#include "core/json.h"
#include "core/paths.h"
#include "protocol/tensor_file.h"

namespace mms {

// adapter_config.json: a few hundred bytes in practice.
constexpr uint64_t kMaxAdapterConfigBytes = 1ull << 20;

nlohmann::json AdapterInfo::ToJson() const {
  nlohmann::json t = nlohmann::json::array();
  for (const auto& x : targets) t.push_back({{"module", x.module}, {"in", x.in}, {"out", x.out}});
  return {{"rank", rank},   {"alpha", alpha},           {"rslora", rslora}, {"scale", scale},
          {"dtype", DTypeName(dtype)}, {"targets", t}, {"bytes", bytes}};
}

Result<AdapterInfo> AdapterInfo::FromJson(const nlohmann::json& j) {
  // Integers as integers: get<int64_t>() of 1e300 is undefined behaviour, not an error.
  auto integer = [](const nlohmann::json& v) {
    if (!v.is_number_integer()) throw std::invalid_argument("expected an integer, got " + v.dump());
    return v.get<int64_t>();
  };
  try {
    AdapterInfo a;
    a.rank = integer(j.at("rank"));
    a.alpha = j.at("alpha").get<double>();
    a.rslora = j.value("rslora", false);
    a.scale = j.at("scale").get<double>();
    MMS_ASSIGN_OR_RETURN(a.dtype, ParseDType(j.at("dtype").get<std::string>()));
    for (const auto& t : j.at("targets"))
      a.targets.push_back({t.at("module").get<std::string>(), integer(t.at("in")), integer(t.at("out"))});
    a.bytes = j.value("bytes", 0ull);
    return a;
  } catch (const std::exception& e) {
    return Corrupt(std::string("adapter record: ") + e.what());
  }
}

Result<LoraBase> ReadLoraBase(const std::string& ref, const std::string& packed_weights,
                              const std::vector<std::string>& stacked) {
  auto header = ReadSafetensorsHeader(packed_weights);
  if (!header.ok())
    return FailedPrecondition("the weights of " + ref + " (" + packed_weights + ") cannot be read: " +
                              header.status().message() + "; mms model repack " + ref +
                              " writes them anew from its original artifact");
  LoraBase base;
  base.ref = ref;
  base.stacked = stacked;
  std::map<std::string, const SafetensorsEntry*> by_name;
  for (const auto& e : header->entries) by_name[e.name] = &e;
  auto add = [&](const std::string& name, const SafetensorsEntry& e) {
    const std::string suffix = ".weight";
    if (e.shape.size() != 2 || name.size() <= suffix.size() ||
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0)
      return;
    base.linears[name.substr(0, name.size() - suffix.size())] = {e.dtype, e.shape[0], e.shape[1]};
  };
  for (const auto& e : header->entries) add(e.name, e);
  for (const auto& [key, target] : header->metadata)  // tied weights: "alias:NAME" → the entry it shares
    if (key.rfind("alias:", 0) == 0)
      if (auto it = by_name.find(target); it != by_name.end()) add(key.substr(6), *it->second);
  return base;
}

namespace {

// A pattern as a message quotes it: its first 80 characters.
std::string Shown(const std::string& pattern) {
  return pattern.size() > 80 ? pattern.substr(0, 80) + "... (" + std::to_string(pattern.size()) + " characters)" : pattern;
}

// PEFT's rule: a list matches a module named exactly so or ending in ".name";
// a string is a regular expression the whole module path must match (`re`,
// compiled once from it).
bool Targets(const nlohmann::json& target_modules, const re2::RE2* re, const std::string& module) {
  if (target_modules.is_string()) return re && re->ok() && re2::RE2::FullMatch(module, *re);
  for (const auto& t : target_modules) {
    std::string n = t.get<std::string>();
    if (module == n || (module.size() > n.size() && module.compare(module.size() - n.size(), n.size(), n) == 0 &&
                        module[module.size() - n.size() - 1] == '.'))
      return true;
  }
  return false;
}

// The layer index PEFT's layers_to_transform reads from a module path: the
// number in the first "NAME.N." of the path (NAME one of `patterns` when
// layers_pattern is given), so "layers.1.mlp.experts.0.up_proj" is layer 1.
std::optional<int64_t> LayerIndex(const std::string& module, const std::vector<std::string>& patterns) {
  std::vector<std::string> parts;
  for (size_t start = 0;;) {
    size_t dot = module.find('.', start);
    parts.push_back(module.substr(start, dot == std::string::npos ? std::string::npos : dot - start));
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  for (size_t i = 1; i + 1 < parts.size(); ++i) {
    const std::string& p = parts[i];
    if (p.empty() || p.size() > 9 || !std::all_of(p.begin(), p.end(), [](char c) { return c >= '0' && c <= '9'; }))
      continue;
    if (patterns.empty() || std::find(patterns.begin(), patterns.end(), parts[i - 1]) != patterns.end())
      return std::stoll(p);
  }
  return std::nullopt;
}

std::string Join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

}  // namespace

Result<CheckedAdapter> CheckAdapter(const std::string& dir, const LoraBase& base) {
  const std::string cfg_path = JoinPath(dir, "adapter_config.json");
  const std::string weights_path = JoinPath(dir, "adapter_model.safetensors");
  if (!IsDirectory(dir))
    return InvalidArgument("adapter directory " + dir + (FileExists(dir) ? " is not a directory" : " does not exist") +
                           " (--path names a PEFT adapter directory, which holds adapter_config.json and "
                           "adapter_model.safetensors)");
  for (const std::string& f : {cfg_path, weights_path}) {
    if (!FileExists(f))
      return InvalidArgument("missing file " + f + ": a PEFT adapter directory holds adapter_config.json and adapter_model.safetensors");
    // (a FIFO would hang the read, a device such as /dev/zero never end)
    struct stat st;
    if (::stat(f.c_str(), &st) != 0 || !S_ISREG(st.st_mode))
      return InvalidArgument(f + " is not a regular file: a PEFT adapter directory holds adapter_config.json and "
                                 "adapter_model.safetensors as files");
  }
  MMS_ASSIGN_OR_RETURN(std::string text, ReadFile(cfg_path, kMaxAdapterConfigBytes));
  auto parsed = ParseJsonStrict(text);  // says where, and why (a number out of range, a key twice)
  if (!parsed.ok()) return InvalidArgument(cfg_path + ": " + parsed.status().message());
  nlohmann::json cfg = std::move(parsed).value();
  if (!cfg.is_object()) return InvalidArgument(cfg_path + " is not a JSON object");

  CheckedAdapter out;
  out.weights_path = weights_path;
  AdapterInfo& info = out.info;
  auto bad = [&](const std::string& what) { return InvalidArgument(cfg_path + ": " + what); };
  if (cfg.contains("peft_type") && cfg["peft_type"].is_string() && cfg["peft_type"] != "LORA")
    return bad("peft_type is " + cfg["peft_type"].get<std::string>() + "; mms serves LORA adapters");
  if (!cfg.contains("r") || !cfg["r"].is_number_integer() || cfg["r"].get<int64_t>() < 1)
    return bad("\"r\" (the rank) must be a positive integer");
  info.rank = cfg["r"].get<int64_t>();
  // PEFT's LoraConfig defaults: lora_alpha = 8, use_rslora/fan_in_fan_out/use_dora = false.
  if (cfg.contains("lora_alpha") && !cfg["lora_alpha"].is_null() && !cfg["lora_alpha"].is_number())
    return bad("lora_alpha must be a number");
  info.alpha = cfg.contains("lora_alpha") && cfg["lora_alpha"].is_number() ? cfg["lora_alpha"].get<double>() : 8.0;
  if (!std::isfinite(info.alpha)) return bad("lora_alpha must be a finite number");
  auto flag = [&](const char* key, bool* out) -> bool {
    *out = false;
    if (!cfg.contains(key) || cfg[key].is_null()) return true;
    if (!cfg[key].is_boolean()) return false;
    *out = cfg[key].get<bool>();
    return true;
  };
  bool fan_in_fan_out = false, dora = false;
  for (auto [key, out] : {std::pair<const char*, bool*>{"use_rslora", &info.rslora}, {"fan_in_fan_out", &fan_in_fan_out},
                          {"use_dora", &dora}})
    if (!flag(key, out)) return bad(std::string(key) + " must be true or false");
  info.scale = info.rslora ? info.alpha / std::sqrt(static_cast<double>(info.rank))
                           : info.alpha / static_cast<double>(info.rank);
  if (fan_in_fan_out) return bad("fan_in_fan_out adapters (GPT-2 style Conv1D weights) are not supported");
  if (dora) return bad("DoRA adapters are not supported");
  if (cfg.contains("bias") && cfg["bias"].is_string() && cfg["bias"] != "none")
    return bad("bias \"" + cfg["bias"].get<std::string>() + "\" is not supported (only \"none\")");
  for (const char* k : {"rank_pattern", "alpha_pattern"})
    if (cfg.contains(k) && cfg[k].is_object() && !cfg[k].empty()) return bad(std::string(k) + " is not supported");
  // Modules trained in full beside the LoRA weights (a classifier head): served
  // without them, the adapter would give other outputs than it was trained to.
  if (cfg.contains("modules_to_save") && !cfg["modules_to_save"].is_null() &&
      !(cfg["modules_to_save"].is_array() && cfg["modules_to_save"].empty()))
    return bad("modules_to_save " + cfg["modules_to_save"].dump() +
               " is not supported (mms serves the LoRA weights only; merge the adapter into a model of its own "
               "and register that)");
  static const nlohmann::json kNone;
  const nlohmann::json& tm = cfg.contains("target_modules") ? cfg["target_modules"] : kNone;
  bool tm_ok = tm.is_string() || (tm.is_array() && !tm.empty() &&
                                  std::all_of(tm.begin(), tm.end(), [](const auto& x) { return x.is_string(); }));
  if (!tm_ok) return bad("target_modules must be a list of module names or a regular expression");
  // A pattern is RE2's (linear time, nesting bounded): std::regex backtracked
  // exponentially on "(.|.)*X" and overflowed the stack on 20,000 nested groups.
  constexpr size_t kMaxPattern = 4096;
  std::unique_ptr<re2::RE2> re;
  if (tm.is_string()) {
    const std::string pattern = tm.get<std::string>();
    if (pattern.size() > kMaxPattern)
      return bad("target_modules is a regular expression of " + std::to_string(pattern.size()) +
                 " characters, over " + std::to_string(kMaxPattern) + ": list the module names instead");
    re2::RE2::Options o;
    o.set_log_errors(false);
    o.set_max_mem(8 << 20);
    re = std::make_unique<re2::RE2>(pattern, o);
    if (!re->ok())
      return bad("target_modules '" + Shown(pattern) +
                 "' is not a regular expression mms can match (" + re->error() +
                 "; RE2 syntax: no backreferences or lookarounds): list the module names instead");
  }
  // PEFT's layers_to_transform (an index or a list) keeps the listed modules of
  // those layers only; layers_pattern names the module list the index follows.
  std::optional<std::set<int64_t>> layers;
  std::vector<std::string> layer_patterns;
  if (cfg.contains("layers_to_transform") && !cfg["layers_to_transform"].is_null()) {
    const auto& l = cfg["layers_to_transform"];
    auto index_ok = [](const nlohmann::json& x) { return x.is_number_integer() && x.get<int64_t>() >= 0; };
    if (!(index_ok(l) || (l.is_array() && !l.empty() && std::all_of(l.begin(), l.end(), index_ok))))
      return bad("layers_to_transform must be a layer index or a non-empty list of them (integers from 0)");
    if (tm.is_string())
      return bad("layers_to_transform needs target_modules as a list of names, not a regular expression (as in PEFT)");
    layers.emplace();
    if (l.is_array())
      for (const auto& x : l) layers->insert(x.get<int64_t>());
    else
      layers->insert(l.get<int64_t>());
    if (cfg.contains("layers_pattern") && !cfg["layers_pattern"].is_null()) {
      const auto& lp = cfg["layers_pattern"];
      if (lp.is_string()) layer_patterns.push_back(lp.get<std::string>());
      if (lp.is_array())
        for (const auto& x : lp)
          if (x.is_string()) layer_patterns.push_back(x.get<std::string>());
      if (layer_patterns.empty() || (lp.is_array() && layer_patterns.size() != lp.size()))
        return bad("layers_pattern must be a module list's name (\"layers\") or a list of them");
    }
  }
  auto in_layers = [&](const std::string& module) {
    if (!layers) return true;
    auto i = LayerIndex(module, layer_patterns);
    return i && layers->count(*i) > 0;
  };

  // Which of the base's modules the config targets; each listed name must match one.
  std::vector<std::string> targeted;
  for (const auto& [module, lin] : base.linears)
    if (Targets(tm, re.get(), module) && in_layers(module)) targeted.push_back(module);
  std::vector<std::string> available;
  for (const auto& [module, lin] : base.linears) available.push_back(module);
  if (tm.is_array()) {
    for (const auto& t : tm) {
      auto named = [n = nlohmann::json::array({t})](const std::string& m) { return Targets(n, nullptr, m); };
      if (std::any_of(targeted.begin(), targeted.end(), named)) continue;
      if (std::any_of(available.begin(), available.end(), named)) {
        std::string which;
        for (int64_t i : *layers) which += (which.empty() ? "" : ", ") + std::to_string(i);
        return bad("target module '" + t.get<std::string>() + "' is in no layer of layers_to_transform [" + which +
                   "] in " + base.ref + " (a layer is the number after " +
                   (layer_patterns.empty() ? std::string("a module list's name") : "\"" + Join(layer_patterns) + "\"") +
                   " in a module's path: " + Join(available) + ")");
      }
      return bad("target module '" + t.get<std::string>() + "' is not in " + base.ref +
                 (available.empty() ? " (it has no module with a 2-D weight)"
                                    : " (its modules with a 2-D weight: " + Join(available) + ")"));
    }
  } else if (targeted.empty()) {
    return bad("target_modules '" + Shown(tm.get<std::string>()) + "' matches no module of " + base.ref + " (" + Join(available) + ")");
  }
  // One dtype for the whole adapter: the served forms (stacked slots, merged deltas) hold every target's
  // weights in the base's dtype, and only floating-point weights can carry a low-rank delta.
  for (const auto& m : targeted) {
    DType d = base.linears.at(m).dtype, first = base.linears.at(targeted.front()).dtype;
    if (d != DType::kFloat32 && d != DType::kFloat64 && d != DType::kFloat16 && d != DType::kBFloat16)
      return bad("target module '" + m + "' has " + DTypeName(d) + " weights in " + base.ref +
                 "; LoRA needs floating-point weights (float32, float64, float16, bfloat16)");
    if (d != first)
      return bad("target modules of " + base.ref + " mix dtypes (" + targeted.front() + " is " + DTypeName(first) +
                 ", " + m + " is " + DTypeName(d) + "); an adapter must target modules of one dtype");
  }
  if (!base.stacked.empty())
    for (const auto& m : targeted)
      if (std::find(base.stacked.begin(), base.stacked.end(), m) == base.stacked.end())
        return bad("target module '" + m + "' is not one " + base.ref + " takes stacked adapter weights for (" +
                   Join(base.stacked) + "); train the adapter on those, or register it on a base without stacked inputs");

  auto tensors = ReadSafetensorsFile(weights_path);
  if (!tensors.ok()) return InvalidArgument(weights_path + ": " + tensors.status().message());
  std::map<std::string, std::pair<const Tensor*, const Tensor*>> by_module;
  for (const auto& t : *tensors) {
    std::string key = t.name;
    if (key.rfind("base_model.model.", 0) == 0) key = key.substr(17);
    bool a = false;
    std::string module;
    for (const char* suffix : {".lora_A.weight", ".lora_B.weight"}) {
      size_t n = std::string(suffix).size();
      if (key.size() > n && key.compare(key.size() - n, n, suffix) == 0) {
        module = key.substr(0, key.size() - n);
        a = suffix[6] == 'A';
      }
    }
    if (module.empty())
      return InvalidArgument(weights_path + ": tensor '" + t.name + "' is not a LoRA A or B weight (…lora_A.weight, …lora_B.weight)");
    (a ? by_module[module].first : by_module[module].second) = &t;
  }
  for (const auto& entry : by_module) {  // (no structured binding: a lambda captures it, which clang < 16 refuses)
    const std::string& module = entry.first;
    const auto& ab = entry.second;
    auto where = [&](const std::string& what) { return InvalidArgument(weights_path + ": " + module + ": " + what); };
    if (std::find(targeted.begin(), targeted.end(), module) == targeted.end())
      return base.linears.count(module)
                 ? where(std::string("has adapter weights but is not in target_modules") +
                         (layers ? " and layers_to_transform" : "") + " of " + cfg_path)
                 : where("no such module with a 2-D weight in " + base.ref + " (" + Join(available) + ")");
    if (!ab.first || !ab.second) return where(std::string("lora_") + (ab.first ? "B" : "A") + ".weight is missing");
    const Tensor& A = *ab.first;
    const Tensor& B = *ab.second;
    const LoraBase::Linear& lin = base.linears.at(module);
    if (A.shape.size() != 2 || B.shape.size() != 2) return where("lora_A and lora_B must be 2-D");
    if (A.shape[0] != info.rank || B.shape[1] != info.rank)
      return where("rank mismatch: adapter_config.json says r = " + std::to_string(info.rank) + " but lora_A is " +
                   ShapeString(A.shape) + " and lora_B " + ShapeString(B.shape));
    if (A.shape[1] != lin.in || B.shape[0] != lin.out)
      return where("shape mismatch with " + base.ref + ": its weight is [" + std::to_string(lin.out) + ", " +
                   std::to_string(lin.in) + "] (out, in), so lora_A must be [r, " + std::to_string(lin.in) +
                   "] and lora_B [" + std::to_string(lin.out) + ", r]; got " + ShapeString(A.shape) + " and " +
                   ShapeString(B.shape) + " (an adapter trained for another base?)");
    if (A.dtype != lin.dtype || B.dtype != lin.dtype)
      return where(std::string("wrong dtype: ") + DTypeName(A.dtype) + "/" + DTypeName(B.dtype) + ", but " + base.ref +
                   "'s weights are " + DTypeName(lin.dtype) + "; convert the adapter to " + DTypeName(lin.dtype));
    double largest[2] = {0, 0};  // |A|, |B|
    for (int k = 0; k < 2; ++k)
      for (double v : TensorToDoubles(k ? B : A)) {
        if (!std::isfinite(v)) return where("holds NaN or infinite values");
        largest[k] = std::max(largest[k], std::fabs(v));
      }
    // Finite weights whose update scale·B·A overflows the dtype serve NaN or
    // infinity for every input (a review's lora_alpha of 1e308 did): bounded
    // by |scale|·max|B|·max|A|·r.
    const double bound = std::fabs(info.scale) * largest[0] * largest[1] * static_cast<double>(info.rank);
    const double range = lin.dtype == DType::kFloat16 ? 65504.0 : lin.dtype == DType::kFloat64 ? 1.79e308 : 3.38e38;
    if (!(bound <= range))
      return where("lora_alpha / r gives a scale of " + std::to_string(info.scale) + ", with which the update " +
                   "scale·B·A can reach " + (std::isfinite(bound) ? std::to_string(bound) : std::string("infinity")) +
                   ", beyond what " + DTypeName(lin.dtype) + " holds: every output would be infinite or NaN; check "
                   "lora_alpha in " + cfg_path);
  }
  for (const auto& m : targeted)
    if (!by_module.count(m))
      return InvalidArgument(weights_path + ": no lora_A/lora_B for module '" + m + "', which target_modules names");
  info.dtype = base.linears.at(targeted.front()).dtype;
  for (const auto& [module, ab] : by_module) {
    const LoraBase::Linear& lin = base.linears.at(module);
    info.targets.push_back({module, lin.in, lin.out});
    Tensor a = *ab.first, b = *ab.second;
    a.name = module + ".lora_A";
    b.name = module + ".lora_B";
    info.bytes += a.nbytes + b.nbytes;
    out.tensors.push_back(std::move(a));
    out.tensors.push_back(std::move(b));
  }
  return out;
}

Status WritePackedAdapter(const std::string& path, const CheckedAdapter& a) {
  return WriteSafetensorsFile(path, a.tensors, {{"format", "mms-adapter-1"}, {"mms.adapter", a.info.ToJson().dump()}}, 64,
                              /*checksum=*/true);
}

}  // namespace mms
