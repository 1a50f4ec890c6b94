#include "protocol/input_spec.h"

#include "protocol/codec.h"

#include <algorithm>
#include <set>
#include <string_view>

namespace mms {

namespace {
// "[2, *]": `first` for dim 0 when given ("batch"), * for a variable dim.
std::string SpecShape(const std::vector<int64_t>& shape, const std::string& first = "") {
  std::string s = "[";
  for (size_t d = 0; d < shape.size(); ++d)
    s += (d ? ", " : "") + (d == 0 && !first.empty() ? first
                            : shape[d] == kAnySize ? std::string("*")
                                                   : std::to_string(shape[d]));
  return s + "]";
}

// NAME and DIM of "NAME:DIM" (DIM: 1 to 3 digits), or INVALID_ARGUMENT.
Result<std::pair<std::string, int64_t>> ParseVariableDim(const std::string& text) {
  const auto colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == text.size() ||
      text.find_first_not_of("0123456789", colon + 1) != std::string::npos || text.size() - colon > 4)
    return InvalidArgument("--variable-dim " + text + ": give INPUT:DIM, e.g. input_ids:1");
  const int64_t dim = std::stoll(text.substr(colon + 1));
  if (dim == 0)
    return InvalidArgument("--variable-dim " + text + ": dim 0 is the rows, never checked; name a dim from 1 on");
  return std::make_pair(text.substr(0, colon), dim);
}
}  // namespace

std::string InputSpecsText(const std::vector<InputSpec>& specs) {
  std::string s;
  for (const auto& i : specs) {
    s += (s.empty() ? "" : ", ") + i.name;
    if (i.dtype) s += " " + std::string(DTypeName(*i.dtype)) + (i.shape ? SpecShape(*i.shape) : "");
  }
  return s.empty() ? "-" : s;
}

Status CheckVariableDims(const std::vector<std::string>& dims) {
  for (const std::string& text : dims) MMS_RETURN_IF_ERROR(ParseVariableDim(text).status());
  return Status::Ok();
}

Status MarkVariableDims(std::vector<InputSpec>* specs, const std::vector<std::string>& dims) {
  for (const std::string& text : dims) {
    MMS_ASSIGN_OR_RETURN(auto parsed, ParseVariableDim(text));
    const auto& [name, dim] = parsed;
    auto it = std::find_if(specs->begin(), specs->end(),  // (a structured binding is not captured in C++17)
                           [&parsed](const InputSpec& s) { return s.name == parsed.first; });
    if (it == specs->end()) {
      std::string names;
      for (const auto& s : *specs) names += (names.empty() ? "" : ", ") + s.name;
      return InvalidArgument("--variable-dim " + text + ": the model has no input '" + name + "' (its inputs: " +
                             (names.empty() ? "-" : names) + ")");
    }
    if (!it->shape)
      return InvalidArgument("--variable-dim " + text + ": no shape is recorded for '" + name +
                             "' to free a dim of; give --sample-input (its shapes are then checked but these dims)");
    if (it->shape->size() <= 1)
      return InvalidArgument("--variable-dim " + text + ": '" + name + "' has no dim past the first to free (" +
                             SpecShape(*it->shape) + ")");
    if (dim >= static_cast<int64_t>(it->shape->size()))
      return InvalidArgument("--variable-dim " + text + ": '" + name + "' has " + std::to_string(it->shape->size()) +
                             " dims (" + SpecShape(*it->shape) + "); name a dim from 1 to " +
                             std::to_string(it->shape->size() - 1));
    (*it->shape)[static_cast<size_t>(dim)] = kAnySize;
  }
  return Status::Ok();
}

std::vector<std::string> VariableDims(const std::vector<InputSpec>& specs) {
  std::vector<std::string> out;
  for (const auto& s : specs)
    if (s.shape)
      for (size_t d = 1; d < s.shape->size(); ++d)
        if ((*s.shape)[d] == kAnySize) out.push_back(s.name + ":" + std::to_string(d));
  std::sort(out.begin(), out.end());
  return out;
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
      for (size_t d = 1; ok && d < want.size(); ++d) ok = want[d] == kAnySize || want[d] == it->shape[d];
      if (!ok)
        return InvalidArgument("input '" + s.name + "' of " + model_ref + " must have shape " +
                               SpecShape(want, "batch") + ", got " + ShapeString(it->shape) +
                               (VariableDims({s}).empty() ? "" : " (* is any size)"));
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
