#include "config/triton_config.h"

#include <algorithm>
#include <charconv>
#include <functional>
#include <cctype>
#include <cstring>
#include <filesystem>
#include <limits>
#include <optional>
#include <random>
#include <set>

#include "config/pbtxt.h"
#include "core/paths.h"
#include "protocol/tensor_file.h"

namespace mms {

namespace {

// A value as a message shows it: long texts cut.
std::string Shown(const std::string& text) { return text.size() > 24 ? text.substr(0, 24) + "..." : text; }

std::string Where(const std::string& source, const PbtxtField& f) {
  return source + ":" + std::to_string(f.line) + ":" + std::to_string(f.column) + ": ";
}

std::string ShapeText(const std::vector<int64_t>& s) {
  std::string t;
  for (int64_t d : s) t += (t.empty() ? "" : ", ") + std::to_string(d);
  return "[" + t + "]";
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

// A dims or reshape shape list: sizes of at least 1, or -1 (any size), as
// Triton takes them.
Status ReadDims(const std::vector<const PbtxtField*>& fields, const std::string& source, const std::string& input,
                std::vector<int64_t>* out) {
  for (const PbtxtField* d : fields) {
    auto v = Integer<int64_t>(*d);
    if (!v || *v < -1 || *v == 0)
      return InvalidArgument(Where(source, *d) + "input " + input + ": a dim is a size of at least 1 or -1 (any size), not " +
                             Shown(d->text));
    out->push_back(*v);
  }
  return Status::Ok();
}

// Whether a scalar holds its type's default (proto3: not "set", so it may
// be given again).
bool IsDefault(const PbtxtField& f) {
  switch (f.kind) {
    case PbtxtField::Kind::kMessage: return false;
    case PbtxtField::Kind::kString: return f.text.empty();
    case PbtxtField::Kind::kIdentifier: return f.text == "false";
    case PbtxtField::Kind::kNumber: return Integer<int64_t>(f) == int64_t{0};
  }
  return false;
}

// The field `name` of `m` (null when not given). protobuf, so Triton,
// refuses a singular field given twice, unless the earlier value was the
// default.
Result<const PbtxtField*> Single(const PbtxtMessage& m, std::string_view name, const std::string& source) {
  auto all = m.All(name);
  if (all.empty()) return nullptr;
  for (size_t i = 0; i + 1 < all.size(); ++i)
    if (!IsDefault(*all[i]))
      return InvalidArgument(Where(source, *all.back()) + std::string(name) + " is given twice (first on line " +
                             std::to_string(all[i]->line) + "); Triton refuses that: keep one");
  return all.back();
}

// The one of `names` (a oneof's members) given, or null; two of them are
// refused, as protobuf does.
Result<const PbtxtField*> OneOf(const PbtxtMessage& m, std::initializer_list<std::string_view> names,
                                const std::string& source) {
  const PbtxtField* found = nullptr;
  for (std::string_view name : names) {
    MMS_ASSIGN_OR_RETURN(const PbtxtField* f, Single(m, name, source));
    if (f && found)
      return InvalidArgument(Where(source, *f) + std::string(name) + " is given along with " + found->name +
                             " (line " + std::to_string(found->line) + "); Triton takes one of them: keep one");
    if (f) found = f;
  }
  return found;
}

// An integer field in [lo, hi]: INVALID_ARGUMENT for another value, or a
// value that is not an integer.
template <typename T>
Result<T> IntegerIn(const PbtxtField& f, T lo, T hi, const std::string& source) {
  if (f.kind != PbtxtField::Kind::kNumber)
    return InvalidArgument(Where(source, f) + f.name + " is a number, not " +
                           (f.kind == PbtxtField::Kind::kString ? "the string \"" + Shown(f.text) + "\""
                            : f.kind == PbtxtField::Kind::kMessage ? std::string("a block")
                                                                   : Shown(f.text)));
  auto v = Integer<T>(f);
  const bool integer = f.text.find_first_of(".eE") == std::string::npos || f.text.rfind("0x", 0) == 0 ||
                       f.text.rfind("-0x", 0) == 0;
  if (!integer && !v) return InvalidArgument(Where(source, f) + f.name + " " + Shown(f.text) + " is not an integer");
  if (!v || *v < lo || *v > hi)
    return InvalidArgument(Where(source, f) + f.name + " " + Shown(f.text) + " is out of range (" + std::to_string(lo) +
                           " to " + std::to_string(hi) + ")");
  return *v;
}

// A string field (null when not given).
Result<const PbtxtField*> StringField(const PbtxtMessage& m, std::string_view name, const std::string& source) {
  MMS_ASSIGN_OR_RETURN(const PbtxtField* f, Single(m, name, source));
  if (f && f->kind != PbtxtField::Kind::kString)
    return InvalidArgument(Where(source, *f) + std::string(name) + " is a string: " + std::string(name) + ": \"...\"");
  return f;
}

// INVALID_ARGUMENT when `f` is given and not a message.
Status IsBlock(const PbtxtField* f, const std::string& source) {
  if (f && f->kind != PbtxtField::Kind::kMessage)
    return InvalidArgument(Where(source, *f) + f->name + " is a block: " + f->name + " { ... }");
  return Status::Ok();
}

// One model_warmup entry into *tw (line set).
Status ReadWarmup(const PbtxtField& w, const std::string& source, TritonWarmup* tw) {
  MMS_RETURN_IF_ERROR(IsBlock(&w, source));
  MMS_ASSIGN_OR_RETURN(const PbtxtField* name, StringField(*w.message, "name", source));
  if (name) tw->name = name->text;
  MMS_ASSIGN_OR_RETURN(const PbtxtField* batch, Single(*w.message, "batch_size", source));
  if (batch) {
    MMS_ASSIGN_OR_RETURN(tw->batch_size, IntegerIn<uint64_t>(*batch, 0, std::numeric_limits<uint32_t>::max(), source));
  }
  for (const PbtxtField* e : w.message->All("inputs")) {  // a map: entries of key and value
    const PbtxtField* key = e->kind == PbtxtField::Kind::kMessage ? e->message->Last("key") : nullptr;
    const PbtxtField* value = key ? e->message->Last("value") : nullptr;
    if (!key || key->kind != PbtxtField::Kind::kString || !value || value->kind != PbtxtField::Kind::kMessage)
      return InvalidArgument(Where(source, *e) + "model_warmup inputs are entries of a key and a value: inputs { key: "
                             "\"x\" value: { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true } }");
    TritonWarmupInput in;
    in.name = key->text;
    in.line = e->line;
    for (const auto& other : tw->inputs)
      if (other.name == in.name)
        return InvalidArgument(Where(source, *e) + "model_warmup input " + in.name + " is given twice (first on line " +
                               std::to_string(other.line) + "): keep one");
    MMS_ASSIGN_OR_RETURN(const PbtxtField* dt, Single(*value->message, "data_type", source));
    if (dt) in.data_type = dt->text;
    MMS_RETURN_IF_ERROR(ReadDims(value->message->All("dims"), source, in.name, &in.dims));
    MMS_ASSIGN_OR_RETURN(const PbtxtField* data,
                         OneOf(*value->message, {"zero_data", "random_data", "input_data_file"}, source));
    if (data && data->name == "zero_data") in.data = TritonWarmupInput::Data::kZero;
    if (data && data->name == "random_data") in.data = TritonWarmupInput::Data::kRandom;
    if (data && data->name == "input_data_file") {
      in.data = TritonWarmupInput::Data::kFile;
      in.file = data->text;
    }
    tw->inputs.push_back(std::move(in));
  }
  return Status::Ok();
}

}  // namespace

Result<TritonConfig> ParseTritonConfig(std::string_view text, const std::string& source) {
  MMS_ASSIGN_OR_RETURN(PbtxtMessage top, ParsePbtxt(text, source));
  TritonConfig out;
  MMS_ASSIGN_OR_RETURN(const PbtxtField* mbs, Single(top, "max_batch_size", source));
  if (mbs) {
    MMS_ASSIGN_OR_RETURN(out.max_batch_size, IntegerIn<int>(*mbs, 0, std::numeric_limits<int32_t>::max(), source));
  }
  // scheduling_choice is a oneof: one of these at most.
  MMS_ASSIGN_OR_RETURN(const PbtxtField* scheduling,
                       OneOf(top, {"dynamic_batching", "sequence_batching", "ensemble_scheduling"}, source));
  MMS_RETURN_IF_ERROR(IsBlock(scheduling, source));
  if (scheduling && scheduling->name == "dynamic_batching") {
    out.dynamic_batching = true;
    MMS_ASSIGN_OR_RETURN(const PbtxtField* delay, Single(*scheduling->message, "max_queue_delay_microseconds", source));
    if (delay) {
      MMS_ASSIGN_OR_RETURN(out.max_queue_delay_us,
                           IntegerIn<uint64_t>(*delay, 0, std::numeric_limits<uint64_t>::max(), source));
    }
  }
  for (const PbtxtField* in : top.All("input")) {
    MMS_RETURN_IF_ERROR(IsBlock(in, source));
    TritonInput t;
    t.line = in->line;
    MMS_ASSIGN_OR_RETURN(const PbtxtField* name, StringField(*in->message, "name", source));
    if (!name || name->text.empty())
      return InvalidArgument(Where(source, *in) + "an input without a name: give it name: \"...\"");
    t.name = name->text;
    MMS_ASSIGN_OR_RETURN(const PbtxtField* reshape, Single(*in->message, "reshape", source));
    MMS_RETURN_IF_ERROR(IsBlock(reshape, source));
    auto dims = in->message->All("dims");
    if (dims.empty())
      return InvalidArgument(Where(source, *in) + "input " + t.name +
                             " has no dims: give its shape, e.g. dims: [ -1 ] (Triton refuses it without)");
    MMS_RETURN_IF_ERROR(ReadDims(dims, source, t.name, &t.dims));
    if (reshape) {  // what the model sees
      t.dims.clear();
      MMS_RETURN_IF_ERROR(ReadDims(reshape->message->All("shape"), source, t.name, &t.dims));
    }
    t.has_dims = true;
    out.inputs.push_back(std::move(t));
  }
  // Sequence batching's control and state inputs are forward's arguments too.
  if (scheduling && scheduling->name == "sequence_batching") {
    for (const PbtxtField* c : scheduling->message->All("control_input"))
      if (c->kind == PbtxtField::Kind::kMessage)
        if (const PbtxtField* n = c->message->Last("name"); n && n->kind == PbtxtField::Kind::kString)
          out.sequence_inputs.push_back(n->text);
    for (const PbtxtField* st : scheduling->message->All("state"))
      if (st->kind == PbtxtField::Kind::kMessage)
        if (const PbtxtField* n = st->message->Last("input_name"); n && n->kind == PbtxtField::Kind::kString)
          out.sequence_inputs.push_back(n->text);
  }
  // A warm-up's faults are its own: they matter only if it is used.
  for (const PbtxtField* w : top.All("model_warmup")) {
    TritonWarmup tw;
    tw.line = w->line;
    if (Status st = ReadWarmup(*w, source, &tw); !st.ok()) tw.problem = st.message();
    out.warmups.push_back(std::move(tw));
  }
  return out;
}

namespace {

// Which of forward's arguments `specs` each of `names` (config inputs, in
// order) is: the argument of that name when every name is one, the
// argument at INDEX when every name is NAME__INDEX, else by order. `where`
// says the k-th name in a message.
Result<std::vector<size_t>> ArgumentsOf(const std::vector<std::string>& names, const std::vector<InputSpec>& specs,
                                        const std::function<std::string(size_t)>& where) {
  auto arg_named = [&](const std::string& name) -> std::optional<size_t> {
    for (size_t k = 0; k < specs.size(); ++k)
      if (specs[k].name == name) return k;
    return std::nullopt;
  };
  // NAME__INDEX: the INDEX, after the first "__" (as the PyTorch backend splits it).
  auto index_of = [](const std::string& name) -> std::optional<size_t> {
    size_t sep = name.find("__");
    if (sep == std::string::npos || sep + 2 == name.size()) return std::nullopt;
    size_t k = 0;
    auto [end, err] = std::from_chars(name.data() + sep + 2, name.data() + name.size(), k);
    if (err != std::errc() || end != name.data() + name.size()) return std::nullopt;
    return k;
  };
  bool by_name = true, by_index = true;
  for (const auto& n : names) {
    by_name = by_name && arg_named(n).has_value();
    by_index = by_index && index_of(n).has_value();
  }
  std::string args;
  for (const auto& s : specs) args += (args.empty() ? "" : ", ") + s.name;
  std::vector<size_t> out;
  for (size_t i = 0; i < names.size(); ++i) {
    const size_t k = by_name ? *arg_named(names[i]) : by_index ? *index_of(names[i]) : i;
    if (k >= specs.size())
      return InvalidArgument(where(i) + " is forward's argument " + std::to_string(k) + " (counting from 0, by " +
                             (by_index ? "its __INDEX" : "its place in the config") + "), but forward takes " +
                             std::to_string(specs.size()) + " (" + args +
                             "): name the config's inputs as forward's arguments or NAME__INDEX");
    out.push_back(k);
  }
  return out;
}

}  // namespace

namespace {

// The config's inputs and then sequence batching's control and state
// inputs, each with forward's argument it is (ArgumentsOf); when there are
// none, `fallback` names (a warm-up's) by the same rules.
Result<std::vector<std::pair<std::string, size_t>>> ConfigArguments(const TritonConfig& config,
                                                                    const std::vector<InputSpec>& specs,
                                                                    const std::string& source,
                                                                    const std::vector<std::string>& fallback = {}) {
  std::vector<std::string> names;
  for (const auto& in : config.inputs) names.push_back(in.name);
  names.insert(names.end(), config.sequence_inputs.begin(), config.sequence_inputs.end());
  if (names.empty()) names = fallback;
  auto where = [&](size_t i) {
    return i < config.inputs.size() ? source + ":" + std::to_string(config.inputs[i].line) + ": input " + names[i]
                                    : source + ": input " + names[i];
  };
  if (!config.inputs.empty() && names.size() != specs.size()) {
    std::string args;
    for (const auto& s : specs) args += (args.empty() ? "" : ", ") + s.name;
    return InvalidArgument(source + ": " + std::to_string(names.size()) + " input" + (names.size() == 1 ? "" : "s") +
                           " in the config" +
                           (config.sequence_inputs.empty() ? "" : " (with sequence batching's control and state)") +
                           ", but forward takes " + std::to_string(specs.size()) + " (" + args +
                           "): give the config one input per argument, as Triton requires");
  }
  MMS_ASSIGN_OR_RETURN(const std::vector<size_t> args, ArgumentsOf(names, specs, where));
  std::vector<std::pair<std::string, size_t>> out;
  for (size_t i = 0; i < names.size(); ++i) out.emplace_back(names[i], args[i]);
  return out;
}

}  // namespace

Result<std::vector<std::string>> TritonVariableDims(const TritonConfig& config, const std::vector<InputSpec>& specs,
                                                    const std::string& source) {
  const auto& inputs = config.inputs;
  MMS_ASSIGN_OR_RETURN(const auto mapped, ConfigArguments(config, specs, source));
  std::vector<std::string> out;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const TritonInput& in = inputs[i];
    const std::string at = source + ":" + std::to_string(in.line) + ": input " + in.name;
    const InputSpec& spec = specs[mapped[i].second];
    if (!spec.shape || !in.has_dims) continue;  // nothing recorded to check, or nothing said
    std::vector<int64_t> full;
    if (config.max_batch_size > 0) full.push_back(-1);
    full.insert(full.end(), in.dims.begin(), in.dims.end());
    const std::vector<int64_t>& sample = *spec.shape;
    const std::string fix = ": fix the sample input or the config";
    const std::string which = spec.name == in.name ? "" : " (forward's " + spec.name + ")";
    if (full.size() != sample.size())
      return InvalidArgument(at + which + " has shape " + ShapeText(full) +
                             (config.max_batch_size > 0 ? " (the batch dim first)" : "") + " but the sample's has " +
                             std::to_string(sample.size()) + " dims " + ShapeText(sample) + fix);
    for (size_t d = 1; d < full.size(); ++d) {  // (dim 0, the rows, is never checked)
      if (full[d] == -1) {
        std::string dim = spec.name + ":" + std::to_string(d);
        if (std::find(out.begin(), out.end(), dim) == out.end()) out.push_back(std::move(dim));
      }
      else if (full[d] != sample[d])
        return InvalidArgument(at + which + " has shape " + ShapeText(full) + " but the sample's is " +
                               ShapeText(sample) + " (dim " + std::to_string(d) + ")" + fix);
    }
  }
  return out;
}

namespace {

// Triton's data types that mms serves (model_config.proto's DataType; an
// enum may be written by its number too).
std::optional<DType> TritonDType(const std::string& t) {
  static const std::pair<const char*, DType> kTypes[] = {
      {"TYPE_BOOL", DType::kBool},   {"TYPE_UINT8", DType::kUInt8},     {"TYPE_INT8", DType::kInt8},
      {"TYPE_INT16", DType::kInt16}, {"TYPE_INT32", DType::kInt32},     {"TYPE_INT64", DType::kInt64},
      {"TYPE_FP16", DType::kFloat16}, {"TYPE_FP32", DType::kFloat32},  {"TYPE_FP64", DType::kFloat64},
      {"TYPE_BF16", DType::kBFloat16}};
  static const std::pair<const char*, DType> kNumbers[] = {
      {"1", DType::kBool},     {"2", DType::kUInt8},    {"6", DType::kInt8},     {"7", DType::kInt16},
      {"8", DType::kInt32},    {"9", DType::kInt64},    {"10", DType::kFloat16}, {"11", DType::kFloat32},
      {"12", DType::kFloat64}, {"14", DType::kBFloat16}};
  for (const auto& [name, d] : kTypes)
    if (t == name) return d;
  for (const auto& [number, d] : kNumbers)
    if (t == number) return d;
  return std::nullopt;
}

}  // namespace

const TritonWarmup* UsableWarmup(const TritonConfig& config) {
  for (const auto& w : config.warmups)
    if (w.batch_size >= 1) return &w;
  return nullptr;
}

namespace {

// Fills `t` (a float type) with values in [0, 1): rounded toward zero for
// float16 and bfloat16, so none becomes 1.
void FillRandom(Tensor* t, std::mt19937_64* random) {
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  const size_t n = static_cast<size_t>(t->numel());
  uint8_t* p = t->mutable_data();
  for (size_t i = 0; i < n; ++i) {
    const float f = u(*random);
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    switch (t->dtype) {
      case DType::kFloat32: std::memcpy(p + 4 * i, &f, 4); break;
      case DType::kFloat64: {
        const double d = f;
        std::memcpy(p + 8 * i, &d, 8);
        break;
      }
      case DType::kBFloat16: {
        const uint16_t h = static_cast<uint16_t>(bits >> 16);
        std::memcpy(p + 2 * i, &h, 2);
        break;
      }
      case DType::kFloat16: {  // [2^-14, 1) exactly as binary16 truncates it; smaller ones 0
        const int exp = static_cast<int>((bits >> 23) & 0xff) - 127;
        const uint16_t h = exp < -14 ? 0 : static_cast<uint16_t>(((exp + 15) << 10) | ((bits >> 13) & 0x3ff));
        std::memcpy(p + 2 * i, &h, 2);
        break;
      }
      default: return;  // integers and bools stay zero
    }
  }
}

}  // namespace

Result<std::vector<Tensor>> TritonWarmupSample(const TritonConfig& config, const std::vector<InputSpec>& specs,
                                               const std::string& model_dir, const std::string& source) {
  const TritonWarmup* usable = UsableWarmup(config);
  if (!usable) return NotFound(source + " has no model_warmup with a batch_size of 1 or more");
  const TritonWarmup& w = *usable;
  const std::string at = source + ":" + std::to_string(w.line) + ": model_warmup" +
                         (w.name.empty() ? std::string() : " '" + w.name + "'");
  if (!w.problem.empty()) return InvalidArgument(w.problem);
  if (config.max_batch_size == 0 && w.batch_size > 1)
    return InvalidArgument(at + ": batch_size " + std::to_string(w.batch_size) +
                           " for a model without batching (max_batch_size 0): Triton takes 1");
  constexpr uint64_t kMaxRows = 65536;
  if (w.batch_size > kMaxRows)
    return InvalidArgument(at + ": batch_size " + std::to_string(w.batch_size) + " is over the " +
                           std::to_string(kMaxRows) + " rows a sample may have: a few rows do");
  const int64_t rows = config.max_batch_size > 0 ? static_cast<int64_t>(w.batch_size) : 1;
  // Each warm-up input is a config input (or a sequence control), which is one of forward's arguments.
  std::vector<std::string> warm_names;
  for (const auto& in : w.inputs) warm_names.push_back(in.name);
  MMS_ASSIGN_OR_RETURN(const auto mapped, ConfigArguments(config, specs, source, warm_names));
  constexpr uint64_t kMaxSampleBytes = 64ull << 20;  // all inputs together, checked before anything is allocated
  uint64_t total = 0;
  std::vector<Tensor> out;
  std::set<size_t> given;
  std::mt19937_64 random(20261202);
  for (const TritonWarmupInput& in : w.inputs) {
    const std::string where_in = source + ":" + std::to_string(in.line) + ": model_warmup input " + in.name;
    auto it = std::find_if(mapped.begin(), mapped.end(), [&](const auto& m) { return m.first == in.name; });
    if (it == mapped.end())
      return InvalidArgument(where_in + " is none of the config's inputs: give the warm-up the inputs' names");
    const size_t arg = it->second;
    if (!given.insert(arg).second)
      return InvalidArgument(where_in + ": forward's " + specs[arg].name + " is given twice");
    auto dtype = TritonDType(in.data_type);
    if (!dtype)
      return InvalidArgument(where_in + ": data_type " + (in.data_type.empty() ? "(none)" : Shown(in.data_type)) +
                             " is not one mms serves (TYPE_BOOL, TYPE_UINT8, TYPE_INT8 to TYPE_INT64, TYPE_FP16, "
                             "TYPE_FP32, TYPE_FP64, TYPE_BF16)");
    std::vector<int64_t> shape;
    if (config.max_batch_size > 0) shape.push_back(rows);
    for (int64_t d : in.dims) {
      if (d < 0) return InvalidArgument(where_in + ": a warm-up's dims are sizes, not -1: give the size to run");
      shape.push_back(d);
    }
    uint64_t row_bytes = DTypeSize(*dtype);  // one row's: the dims after the batch's
    for (int64_t d : in.dims) {
      if (row_bytes > kMaxSampleBytes / static_cast<uint64_t>(d)) {
        row_bytes = kMaxSampleBytes + 1;
        break;
      }
      row_bytes *= static_cast<uint64_t>(d);
    }
    const uint64_t bytes = row_bytes > kMaxSampleBytes ? row_bytes : row_bytes * static_cast<uint64_t>(rows);
    total += std::min(bytes, kMaxSampleBytes + 1);
    if (bytes > kMaxSampleBytes || total > kMaxSampleBytes)
      return InvalidArgument(where_in + ": the warm-up sample would be over " + std::to_string(kMaxSampleBytes >> 20) +
                             " MiB: give it fewer rows or smaller dims (a few rows do)");
    auto t = Tensor::TryAlloc(specs[arg].name, *dtype, shape);
    if (!t.ok()) return InvalidArgument(where_in + ": " + t.status().message());
    Tensor tensor = std::move(t).value();
    switch (in.data) {
      case TritonWarmupInput::Data::kNone:
        return InvalidArgument(where_in + ": give zero_data: true, random_data: true or input_data_file");
      case TritonWarmupInput::Data::kZero:
        break;  // (allocated zeroed)
      case TritonWarmupInput::Data::kRandom:
        FillRandom(&tensor, &random);
        break;
      case TritonWarmupInput::Data::kFile: {
        // A relative path under warmup/ (Triton joins it there); no way out of it.
        const std::string& f = in.file;
        bool escapes = f.empty() || f[0] == '/';
        for (size_t b = 0; !escapes && b <= f.size();) {
          size_t e = f.find('/', b);
          if (e == std::string::npos) e = f.size();
          escapes = f.compare(b, e - b, "..") == 0;
          b = e + 1;
        }
        if (escapes)
          return InvalidArgument(where_in + ": input_data_file '" + Shown(f) +
                                 "' must name a file under the model's warmup/ directory");
        const std::string path = JoinPath(JoinPath(model_dir, "warmup"), f);
        // Triton reads one row from its start (more is not used); each row is that one.
        std::error_code ec;
        const uint64_t size = std::filesystem::file_size(path, ec);
        if (!ec && size < row_bytes)
          return InvalidArgument(where_in + ": input_data_file " + path + " has " + std::to_string(size) +
                                 " bytes, under the " + std::to_string(row_bytes) + " of one " + DTypeName(*dtype) +
                                 ShapeText(in.dims) + " row");
        auto data = ReadFilePrefix(path, row_bytes);
        if (!data.ok()) return InvalidArgument(where_in + ": input_data_file: " + data.status().message());
        if (data->size() < row_bytes)
          return InvalidArgument(where_in + ": input_data_file " + path + " has under the " + std::to_string(row_bytes) +
                                 " bytes of one row");
        if (*dtype == DType::kBool)
          for (size_t b = 0; b < data->size(); ++b)
            if (static_cast<unsigned char>((*data)[b]) > 1)
              return InvalidArgument(where_in + ": input_data_file " + path + " byte " + std::to_string(b) + " is " +
                                     std::to_string(static_cast<unsigned char>((*data)[b])) +
                                     ": a TYPE_BOOL is one byte, 0 or 1");
        for (int64_t r = 0; r < rows; ++r)
          std::memcpy(tensor.mutable_data() + static_cast<size_t>(r) * row_bytes, data->data(), row_bytes);
        break;
      }
    }
    out.push_back(std::move(tensor));
  }
  std::string missing;
  for (size_t k = 0; k < specs.size(); ++k)
    if (!given.count(k)) missing += (missing.empty() ? "" : ", ") + specs[k].name;
  if (!missing.empty())
    return InvalidArgument(at + " gives no " + missing + " (forward takes them): give the warm-up every input");
  return out;
}

}  // namespace mms
