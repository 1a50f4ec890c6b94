#include "protocol/input_spec.h"

#include "protocol/codec.h"

#include <algorithm>
#include <set>
#include <string_view>

namespace mms {

std::string InputSpecsText(const std::vector<InputSpec>& specs) {
  std::string s;
  for (const auto& i : specs) {
    s += (s.empty() ? "" : ", ") + i.name;
    if (i.dtype) s += " " + std::string(DTypeName(*i.dtype)) + (i.shape ? ShapeString(*i.shape) : "");
  }
  return s.empty() ? "-" : s;
}

bool SameEnforcedInputs(const std::vector<InputSpec>& a, const std::vector<InputSpec>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].name != b[i].name || a[i].dtype != b[i].dtype || a[i].shape.has_value() != b[i].shape.has_value())
      return false;
    if (!a[i].shape) continue;
    const auto &x = *a[i].shape, &y = *b[i].shape;
    if (x.size() != y.size() || !std::equal(x.begin() + (x.empty() ? 0 : 1), x.end(), y.begin() + (y.empty() ? 0 : 1)))
      return false;
  }
  return true;
}

nlohmann::json InputSpecsToJson(const std::vector<InputSpec>& specs) {
  nlohmann::json a = nlohmann::json::array();
  for (const auto& s : specs) {
    nlohmann::json e{{"name", s.name}};
    e["dtype"] = s.dtype ? nlohmann::json(DTypeName(*s.dtype)) : nlohmann::json(nullptr);
    e["shape"] = s.shape ? nlohmann::json(*s.shape) : nlohmann::json(nullptr);
    a.push_back(std::move(e));
  }
  return a;
}

std::vector<InputSpec> InputSpecsFromJson(const nlohmann::json& j) {
  std::vector<InputSpec> out;
  if (!j.is_array()) return out;
  for (const auto& e : j) {
    InputSpec s;
    if (e.is_string()) {
      s.name = e.get<std::string>();
    } else if (e.is_object()) {
      s.name = e.value("name", "");
      if (e.contains("dtype") && e["dtype"].is_string()) {
        auto d = ParseDType(e["dtype"].get<std::string>());
        if (d.ok()) s.dtype = *d;
      }
      if (e.contains("shape") && e["shape"].is_array()) s.shape = e["shape"].get<std::vector<int64_t>>();
    }
    out.push_back(std::move(s));
  }
  return out;
}

Result<std::vector<Tensor>> MatchInputs(const std::vector<InputSpec>& specs, std::vector<Tensor> inputs,
                                        const std::string& model_ref) {
  std::set<std::string_view> given;
  for (const auto& t : inputs)
    if (!given.insert(t.name).second)
      return InvalidArgument("input '" + proto::ShortName(t.name) +
                             "' is given more than once; send each of " + model_ref + "'s inputs once");
  std::string expected;
  for (const auto& s : specs) expected += (expected.empty() ? "" : ", ") + s.name;
  std::vector<Tensor> ordered;
  std::set<std::string> used;
  std::string missing;
  for (const auto& s : specs) {
    auto it = std::find_if(inputs.begin(), inputs.end(), [&](const Tensor& t) { return t.name == s.name; });
    if (it == inputs.end()) {
      missing += (missing.empty() ? "" : ", ") + s.name;
      continue;
    }
    if (s.dtype && it->dtype != *s.dtype)
      return InvalidArgument("input '" + s.name + "' of " + model_ref + " must be " + DTypeName(*s.dtype) + ", got " +
                             DTypeName(it->dtype));
    if (s.shape) {
      const auto& want = *s.shape;
      bool ok = want.size() == it->shape.size();
      for (size_t d = 1; ok && d < want.size(); ++d) ok = want[d] == it->shape[d];
      if (!ok) {
        std::vector<int64_t> show = want;
        std::string w = "[batch";
        for (size_t d = 1; d < show.size(); ++d) w += ", " + std::to_string(show[d]);
        w += "]";
        if (show.empty()) w = "[]";
        return InvalidArgument("input '" + s.name + "' of " + model_ref + " must have shape " + w + ", got " +
                               ShapeString(it->shape));
      }
    }
    used.insert(s.name);
    ordered.push_back(*it);
  }
  std::string extra;
  for (const auto& t : inputs)
    if (!used.count(t.name)) extra += (extra.empty() ? "" : ", ") + proto::ShortName(t.name);
  if (!missing.empty() || !extra.empty()) {
    std::string msg = model_ref + " takes inputs (" + expected + ")";
    if (!missing.empty()) msg += "; missing: " + missing;
    if (!extra.empty()) msg += "; unexpected: " + extra;
    return InvalidArgument(msg);
  }
  return ordered;
}

}  // namespace mms
