#include "config/triton_config.h"

#include <algorithm>
#include <charconv>
#include <cctype>
#include <limits>
#include <optional>

#include "config/pbtxt.h"

namespace mms {

namespace {

// A value as a message shows it: long texts cut.
std::string Shown(const std::string& text) { return text.size() > 24 ? text.substr(0, 24) + "..." : text; }

std::string Where(const std::string& source, const PbtxtField& f) {
  return source + ":" + std::to_string(f.line) + ":" + std::to_string(f.column) + ": ";
}

// A protobuf integer literal (decimal, 0x hex, 0 octal, a sign first) in
// T's range. nullopt when it is not one or does not fit.
template <typename T>
std::optional<T> Integer(const PbtxtField& f) {
  if (f.kind != PbtxtField::Kind::kNumber) return std::nullopt;
  std::string_view t = f.text;
  const bool negative = !t.empty() && t[0] == '-';
  if (negative) {
    if (!std::numeric_limits<T>::is_signed) return std::nullopt;
    t.remove_prefix(1);
  }
  int base = 10;
  if (t.size() > 2 && t[0] == '0' && (t[1] == 'x' || t[1] == 'X')) {
    base = 16;
    t.remove_prefix(2);
  } else if (t.size() > 1 && t[0] == '0') {
    base = 8;
  }
  if (t.empty() || !std::isxdigit(static_cast<unsigned char>(t[0]))) return std::nullopt;
  // Parsed as unsigned then signed, so that INT64_MIN is one.
  uint64_t magnitude = 0;
  auto [end, err] = std::from_chars(t.data(), t.data() + t.size(), magnitude, base);
  if (err != std::errc() || end != t.data() + t.size()) return std::nullopt;
  if (negative && magnitude > 0) {
    if (magnitude > static_cast<uint64_t>(std::numeric_limits<T>::max()) + 1) return std::nullopt;
    return static_cast<T>(-static_cast<int64_t>(magnitude - 1) - 1);
  }
  if (magnitude > static_cast<uint64_t>(std::numeric_limits<T>::max())) return std::nullopt;
  return static_cast<T>(magnitude);
}

// A dims or reshape shape list: integers of -1 or more.
Status ReadDims(const std::vector<const PbtxtField*>& fields, const std::string& source, const std::string& input,
                std::vector<int64_t>* out) {
  for (const PbtxtField* d : fields) {
    auto v = Integer<int64_t>(*d);
    if (!v || *v < -1)
      return InvalidArgument(Where(source, *d) + "input " + input + ": a dim is a size or -1 (any size), not " +
                             Shown(d->text));
    out->push_back(*v);
  }
  return Status::Ok();
}

}  // namespace

Result<TritonConfig> ParseTritonConfig(std::string_view text, const std::string& source) {
  MMS_ASSIGN_OR_RETURN(PbtxtMessage top, ParsePbtxt(text, source));
  TritonConfig out;
  if (const PbtxtField* f = top.Last("max_batch_size")) {
    auto v = Integer<int64_t>(*f);
    if (!v || *v < 0 || *v > std::numeric_limits<int32_t>::max())
      return InvalidArgument(Where(source, *f) + "max_batch_size " + Shown(f->text) + " is out of range (0 to " +
                             std::to_string(std::numeric_limits<int32_t>::max()) + ")");
    out.max_batch_size = static_cast<int>(*v);
  }
  if (const PbtxtField* db = top.Last("dynamic_batching")) {
    if (db->kind != PbtxtField::Kind::kMessage)
      return InvalidArgument(Where(source, *db) + "dynamic_batching is a block: dynamic_batching { }");
    out.dynamic_batching = true;
    if (const PbtxtField* f = db->message->Last("max_queue_delay_microseconds")) {
      auto v = Integer<uint64_t>(*f);
      if (!v)
        return InvalidArgument(Where(source, *f) + "max_queue_delay_microseconds " + Shown(f->text) +
                               " is out of range (0 to " + std::to_string(std::numeric_limits<uint64_t>::max()) + ")");
      out.max_queue_delay_us = *v;
    }
  }
  for (const PbtxtField* in : top.All("input")) {
    if (in->kind != PbtxtField::Kind::kMessage)
      return InvalidArgument(Where(source, *in) + "input is a block: input [ { name: \"x\" dims: [ 4 ] } ]");
    TritonInput t;
    t.line = in->line;
    const PbtxtField* name = in->message->Last("name");
    if (!name || name->kind != PbtxtField::Kind::kString || name->text.empty())
      return InvalidArgument(Where(source, *in) + "an input without a name: give it name: \"...\"");
    t.name = name->text;
    const PbtxtField* reshape = in->message->Last("reshape");
    if (reshape && reshape->kind == PbtxtField::Kind::kMessage) {  // what the model sees
      MMS_RETURN_IF_ERROR(ReadDims(reshape->message->All("shape"), source, t.name, &t.dims));
      t.has_dims = true;
    } else {
      auto dims = in->message->All("dims");
      MMS_RETURN_IF_ERROR(ReadDims(dims, source, t.name, &t.dims));
      t.has_dims = !dims.empty();
    }
    out.inputs.push_back(std::move(t));
  }
  return out;
}

Result<std::vector<std::string>> TritonVariableDims(const TritonConfig& config, const std::vector<InputSpec>& specs,
                                                    const std::string& source) {
  const auto& inputs = config.inputs;
  auto arg_named = [&](const std::string& name) -> std::optional<size_t> {
    for (size_t k = 0; k < specs.size(); ++k)
      if (specs[k].name == name) return k;
    return std::nullopt;
  };
  // NAME__INDEX: the INDEX.
  auto index_of = [](const std::string& name) -> std::optional<size_t> {
    size_t sep = name.rfind("__");
    if (sep == std::string::npos || sep == 0 || sep + 2 == name.size()) return std::nullopt;
    size_t k = 0;
    auto [end, err] = std::from_chars(name.data() + sep + 2, name.data() + name.size(), k);
    if (err != std::errc() || end != name.data() + name.size()) return std::nullopt;
    return k;
  };
  bool by_name = true, by_index = true;
  for (const auto& in : inputs) {
    by_name = by_name && arg_named(in.name).has_value();
    by_index = by_index && index_of(in.name).has_value();
  }
  std::string args;
  for (const auto& s : specs) args += (args.empty() ? "" : ", ") + s.name;
  std::vector<std::string> out;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const TritonInput& in = inputs[i];
    const std::string at = source + ":" + std::to_string(in.line) + ": input " + in.name;
    const size_t k = by_name ? *arg_named(in.name) : by_index ? *index_of(in.name) : i;
    if (k >= specs.size())
      return InvalidArgument(at + " is forward's argument " + std::to_string(k) + " (counting from 0, by " +
                             (by_index ? "its __INDEX" : "its place in the config") + "), but forward takes " +
                             std::to_string(specs.size()) + " (" + args +
                             "): name the config's inputs as forward's arguments or NAME__INDEX");
    const InputSpec& spec = specs[k];
    if (!spec.shape || !in.has_dims) continue;  // nothing recorded to check, or nothing said
    std::vector<int64_t> full;
    if (config.max_batch_size > 0) full.push_back(-1);
    full.insert(full.end(), in.dims.begin(), in.dims.end());
    const std::vector<int64_t>& sample = *spec.shape;
    auto shape_text = [](const std::vector<int64_t>& s) {
      std::string t;
      for (int64_t d : s) t += (t.empty() ? "" : ", ") + (d < 0 ? std::string("-1") : std::to_string(d));
      return "[" + t + "]";
    };
    const std::string fix = ": fix the sample input or the config";
    const std::string which = spec.name == in.name ? "" : " (forward's " + spec.name + ")";
    if (full.size() != sample.size())
      return InvalidArgument(at + which + " has shape " + shape_text(full) +
                             (config.max_batch_size > 0 ? " (the batch dim first)" : "") + " but the sample's has " +
                             std::to_string(sample.size()) + " dims " + shape_text(sample) + fix);
    for (size_t d = 1; d < full.size(); ++d) {  // (dim 0, the rows, is never checked)
      if (full[d] == -1) {
        std::string dim = spec.name + ":" + std::to_string(d);
        if (std::find(out.begin(), out.end(), dim) == out.end()) out.push_back(std::move(dim));
      }
      else if (full[d] != sample[d])
        return InvalidArgument(at + which + " has shape " + shape_text(full) + " but the sample's is " +
                               shape_text(sample) + " (dim " + std::to_string(d) + ")" + fix);
    }
  }
  return out;
}

}  // namespace mms
