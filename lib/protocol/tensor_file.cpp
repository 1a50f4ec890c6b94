#include "protocol/tensor_file.h"

#include "core/json.h"

#include "core/hash.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <exception>
#include <thread>
#include <unordered_set>

#include "core/paths.h"

namespace mms {
namespace {

// ---- half / bfloat16 <-> float (IEEE 754 binary16; bfloat16 = top half of binary32)
uint16_t FloatToHalf(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000;
  int32_t exp = static_cast<int32_t>((x >> 23) & 0xff) - 127 + 15;
  uint32_t mant = x & 0x7fffff;
  if (((x >> 23) & 0xff) == 0xff) return static_cast<uint16_t>(sign | 0x7c00 | (mant ? 0x200 : 0));  // inf/nan
  if (exp >= 31) return static_cast<uint16_t>(sign | 0x7c00);                                        // overflow
  if (exp <= 0) {                                                                                    // subnormal
    if (exp < -10) return static_cast<uint16_t>(sign);
    mant |= 0x800000;
    uint32_t shift = static_cast<uint32_t>(14 - exp);
    uint32_t half = mant >> shift;
    if ((mant >> (shift - 1)) & 1) ++half;  // round half up
    return static_cast<uint16_t>(sign | half);
  }
  uint32_t half = sign | (static_cast<uint32_t>(exp) << 10) | (mant >> 13);
  if (mant & 0x1000) ++half;  // round
  return static_cast<uint16_t>(half);
}

float HalfToFloat(uint16_t h) {
  uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t x;
  if (exp == 0) {
    if (mant == 0) {
      x = sign;
    } else {  // subnormal: normalize
      exp = 127 - 15 + 1;
      while (!(mant & 0x400)) {
        mant <<= 1;
        --exp;
      }
      mant &= 0x3ff;
      x = sign | (exp << 23) | (mant << 13);
    }
  } else if (exp == 31) {
    x = sign | 0x7f800000 | (mant << 13);
  } else {
    x = sign | ((exp - 15 + 127) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

uint16_t FloatToBf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if (std::isnan(f)) return 0x7fc0;
  x += 0x7fff + ((x >> 16) & 1);  // round to nearest even
  return static_cast<uint16_t>(x >> 16);
}

float Bf16ToFloat(uint16_t b) {
  uint32_t x = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

// A value for an error message. Lists and objects are not dumped: dump()
// recurses, and a value nested 200k deep would overflow the stack.
std::string ValueText(const nlohmann::json& v) {
  if (v.is_array()) return "a list";
  if (v.is_object()) return "an object";
  std::string s = v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  return s.size() > 64 ? s.substr(0, 61) + "..." : s;
}

// "1 value", "3 values".
std::string Count(size_t n, const char* noun) {
  return std::to_string(n) + " " + noun + (n == 1 ? "" : "s");
}

// "[1][0]" for the first `depth` open lists (elided past 16 levels).
std::string IndexPath(const std::vector<std::pair<const nlohmann::json*, size_t>>& stack, size_t depth) {
  std::string p;
  for (size_t i = 0; i < depth && i < stack.size(); ++i) {
    if (i == 16) return p + "... (" + std::to_string(depth) + " levels)";
    p += "[" + std::to_string(stack[i].second - 1) + "]";
  }
  return p;
}

// The elements of a tensor's "data", row-major: either flat (a list of
// numel scalars, or one scalar for shape []) or nested exactly as the shape
// (a list of shape[0] lists of shape[1] ... scalars). Iterative, and never
// deeper than shape.size(), so deeply nested input cannot exhaust the stack.
Status CollectValues(const nlohmann::json& data, const std::vector<int64_t>& shape, int64_t numel,
                     const std::string& name, std::vector<const nlohmann::json*>* out) {
  out->clear();
  if (!data.is_array()) {
    if (shape.empty()) {
      out->push_back(&data);
      return Status::Ok();
    }
    return InvalidArgument("tensor '" + name + "': data must be a list (flat or nested as shape " +
                           ShapeString(shape) + "), not " + ValueText(data));
  }
  bool flat = std::none_of(data.begin(), data.end(), [](const nlohmann::json& e) { return e.is_array(); });
  if (flat) {
    if (static_cast<int64_t>(data.size()) != numel)
      return InvalidArgument("tensor '" + name + "': data has " + std::to_string(data.size()) +
                             " values but shape " + ShapeString(shape) + " needs " + std::to_string(numel));
    for (const auto& e : data) out->push_back(&e);
    return Status::Ok();
  }
  const std::string what = "tensor '" + name + "': data is neither flat (" +
                           Count(static_cast<size_t>(numel), "value") + ") nor nested as shape " +
                           ShapeString(shape) + ": ";
  if (shape.empty()) return InvalidArgument(what + "shape [] takes one value");
  // Depth-first; stack[d] = (list at depth d, index of its next element).
  std::vector<std::pair<const nlohmann::json*, size_t>> stack;
  auto open = [&](const nlohmann::json& v) -> Status {
    size_t d = stack.size();
    if (!v.is_array())
      return InvalidArgument(what + "data" + IndexPath(stack, d) + " is " + ValueText(v) +
                             " where dimension " + std::to_string(d) + " needs a list of " +
                             std::to_string(shape[d]));
    if (static_cast<int64_t>(v.size()) != shape[d])
      return InvalidArgument(what + "data" + IndexPath(stack, d) + " has " +
                             (v.size() == 1 ? std::string("1 entry") : std::to_string(v.size()) + " entries") +
                             " but dimension " + std::to_string(d) + " is " + std::to_string(shape[d]));
    stack.emplace_back(&v, 0);
    return Status::Ok();
  };
  MMS_RETURN_IF_ERROR(open(data));
  while (!stack.empty()) {
    auto& [list, next] = stack.back();
    if (next == list->size()) {
      stack.pop_back();
      continue;
    }
    const nlohmann::json& e = (*list)[next++];
    if (stack.size() < shape.size()) {
      MMS_RETURN_IF_ERROR(open(e));
    } else if (e.is_array()) {
      return InvalidArgument(what + "data" + IndexPath(stack, stack.size()) + " is a list but shape " +
                             ShapeString(shape) + " has only " + Count(shape.size(), "dimension"));
    } else {
      out->push_back(&e);
    }
  }
  return Status::Ok();
}

template <class T>
Status PutInt(const nlohmann::json& v, T* dst, const std::string& name, size_t i) {
  if (v.is_boolean()) {
    *dst = static_cast<T>(v.get<bool>());
    return Status::Ok();
  }
  if (!v.is_number_integer() && !(v.is_number_float() && std::floor(v.get<double>()) == v.get<double>()))
    return InvalidArgument("tensor '" + name + "': value " + std::to_string(i) + " (" + ValueText(v) +
                           ") is not an integer");
  // A number JSON could only hold as a double (beyond the int64 range, or
  // written with a fraction or exponent) is exact up to 2^53 only.
  if (v.is_number_float() && std::fabs(v.get<double>()) > 9007199254740992.0)
    return InvalidArgument("tensor '" + name + "': value " + std::to_string(i) + " (" + ValueText(v) +
                           ") is not an exact integer (beyond 2^53 as written, or beyond int64); write it as a "
                           "whole number within the dtype's range");
  // Each kind on its own: a ?: of double and int64_t is a double, which
  // rounded negative int64 values below -2^53 (ids, hashes) to other ids.
  long double x;
  if (v.is_number_unsigned()) x = static_cast<long double>(v.get<uint64_t>());
  else if (v.is_number_integer()) x = static_cast<long double>(v.get<int64_t>());
  else x = static_cast<long double>(v.get<double>());
  if (x < static_cast<long double>(std::numeric_limits<T>::min()) ||
      x > static_cast<long double>(std::numeric_limits<T>::max()))
    return InvalidArgument("tensor '" + name + "': value " + std::to_string(i) + " (" + ValueText(v) +
                           ") is out of range for its dtype");
  *dst = static_cast<T>(x);
  return Status::Ok();
}

// Non-finite floats: JSON has no literal for them, so the writer emits these
// strings and the reader takes exactly them back.
constexpr const char* kNaN = "nan";
constexpr const char* kInf = "inf";
constexpr const char* kNegInf = "-inf";

nlohmann::json FloatToJson(double d) {
  if (std::isfinite(d)) return d;
  return std::isnan(d) ? kNaN : d > 0 ? kInf : kNegInf;
}

// The largest finite magnitude of a float dtype, for error messages.
const char* FloatMax(DType d) {
  switch (d) {
    case DType::kFloat64: return "1.7976931348623157e308";
    case DType::kFloat16: return "65504";
    case DType::kBFloat16: return "3.3895314e38";
    default: return "3.4028235e38";
  }
}

// A JSON number, or one of the non-finite strings above, into element i of a
// float tensor. A finite number that the dtype cannot hold (it would become
// ±inf) is refused rather than silently saturated.
Status PutFloat(const nlohmann::json& v, DType dtype, uint8_t* base, size_t i, const std::string& name) {
  double d;
  const std::string* s = v.is_string() ? &v.get_ref<const std::string&>() : nullptr;
  if (v.is_number()) {
    d = v.get<double>();
  } else if (s && *s == kNaN) {
    d = std::numeric_limits<double>::quiet_NaN();
  } else if (s && (*s == kInf || *s == kNegInf)) {
    d = *s == kInf ? std::numeric_limits<double>::infinity() : -std::numeric_limits<double>::infinity();
  } else {
    return InvalidArgument("tensor '" + name + "': value " + std::to_string(i) + " (" + ValueText(v) +
                           ") is not a number (non-finite values are written \"nan\", \"inf\", \"-inf\")");
  }
  // A finite float32 is below the midpoint between FLT_MAX and 2^128; from
  // there on a double rounds to inf (and converting it is undefined). (The
  // parser refuses numbers past a double's range; a json built in code may
  // still hold ±inf as a number.)
  bool too_large = v.is_number() && (!std::isfinite(d) || (dtype != DType::kFloat64 && std::fabs(d) >= 0x1.ffffffp127));
  float f = too_large || dtype == DType::kFloat64 ? 0.0f : static_cast<float>(d);
  uint16_t h = 0;
  if (!too_large && (dtype == DType::kFloat16 || dtype == DType::kBFloat16)) {
    h = dtype == DType::kFloat16 ? FloatToHalf(f) : FloatToBf16(f);
    too_large = std::isfinite(f) && (h & 0x7fff) == (dtype == DType::kFloat16 ? 0x7c00 : 0x7f80);
  }
  if (too_large)
    return InvalidArgument("tensor '" + name + "': value " + std::to_string(i) + " (" + ValueText(v) +
                           ") is out of range for " + DTypeName(dtype) + " (largest magnitude " + FloatMax(dtype) +
                           "); use a wider dtype or scale the input");
  switch (dtype) {
    case DType::kFloat64: reinterpret_cast<double*>(base)[i] = d; break;
    case DType::kFloat32: reinterpret_cast<float*>(base)[i] = f; break;
    default: reinterpret_cast<uint16_t*>(base)[i] = h; break;
  }
  return Status::Ok();
}

Status FillFromJson(Tensor& t, const std::vector<const nlohmann::json*>& vals) {
  uint8_t* base = t.mutable_data();
  for (size_t i = 0; i < vals.size(); ++i) {
    const nlohmann::json& v = *vals[i];
    switch (t.dtype) {
      case DType::kFloat32:
      case DType::kFloat64:
      case DType::kFloat16:
      case DType::kBFloat16: {
        MMS_RETURN_IF_ERROR(PutFloat(v, t.dtype, base, i, t.name));
        break;
      }
      case DType::kBool: {
        if (!v.is_boolean() && !(v.is_number_integer() && (v.get<int64_t>() == 0 || v.get<int64_t>() == 1)))
          return InvalidArgument("tensor '" + t.name + "': value " + std::to_string(i) + " (" + ValueText(v) +
                                 ") is not a boolean");
        base[i] = v.is_boolean() ? v.get<bool>() : static_cast<uint8_t>(v.get<int64_t>());
        break;
      }
      case DType::kInt8: MMS_RETURN_IF_ERROR(PutInt(v, reinterpret_cast<int8_t*>(base) + i, t.name, i)); break;
      case DType::kUInt8: MMS_RETURN_IF_ERROR(PutInt(v, reinterpret_cast<uint8_t*>(base) + i, t.name, i)); break;
      case DType::kInt16: MMS_RETURN_IF_ERROR(PutInt(v, reinterpret_cast<int16_t*>(base) + i, t.name, i)); break;
      case DType::kInt32: MMS_RETURN_IF_ERROR(PutInt(v, reinterpret_cast<int32_t*>(base) + i, t.name, i)); break;
      case DType::kInt64: MMS_RETURN_IF_ERROR(PutInt(v, reinterpret_cast<int64_t*>(base) + i, t.name, i)); break;
    }
  }
  return Status::Ok();
}

nlohmann::json ValueToJson(const Tensor& t, int64_t i) {
  const uint8_t* b = t.data.get();
  switch (t.dtype) {
    // Non-finite values as strings for every float dtype: nlohmann would
    // write a non-finite number as null, which reads back as nothing.
    case DType::kFloat32: return FloatToJson(reinterpret_cast<const float*>(b)[i]);
    case DType::kFloat64: return FloatToJson(reinterpret_cast<const double*>(b)[i]);
    case DType::kFloat16: return FloatToJson(HalfToFloat(reinterpret_cast<const uint16_t*>(b)[i]));
    case DType::kBFloat16: return FloatToJson(Bf16ToFloat(reinterpret_cast<const uint16_t*>(b)[i]));
    case DType::kBool: return b[i] != 0;
    case DType::kInt8: return reinterpret_cast<const int8_t*>(b)[i];
    case DType::kUInt8: return b[i];
    case DType::kInt16: return reinterpret_cast<const int16_t*>(b)[i];
    case DType::kInt32: return reinterpret_cast<const int32_t*>(b)[i];
    case DType::kInt64: return reinterpret_cast<const int64_t*>(b)[i];
  }
  return nullptr;
}

// Reads n bytes of fd at `offset` into dst: IO on a read error,
// INVALID_ARGUMENT "is truncated" when the file ends first.
Status ReadFully(int fd, uint64_t offset, uint8_t* dst, uint64_t n, const std::string& path) {
  uint64_t done = 0;
  while (done < n) {
    ssize_t got = ::pread(fd, dst + done, static_cast<size_t>(n - done), static_cast<off_t>(offset + done));
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) return IoError("cannot read " + path + ": " + std::strerror(errno));
    if (got == 0) return InvalidArgument(path + " is truncated");
    done += static_cast<uint64_t>(got);
  }
  return Status::Ok();
}

Result<std::string> ReadRange(int fd, uint64_t offset, size_t n, const std::string& path) {
  std::string buf(n, '\0');
  MMS_RETURN_IF_ERROR(ReadFully(fd, offset, reinterpret_cast<uint8_t*>(buf.data()), n, path));
  return buf;
}

bool IsPadEntry(const std::string& name) {
  return name.rfind(kSafetensorsPadPrefix, 0) == 0;
}

// A tensor name a safetensors file can carry back: not empty, not the
// header's "__metadata__", not a padding entry's (both are dropped on reading).
Status CheckTensorName(const std::string& name) {
  if (name.empty()) return InvalidArgument("a tensor has an empty name; name it after the model's input");
  if (name == "__metadata__" || IsPadEntry(name))
    return InvalidArgument("a tensor is named '" + name + "', a name safetensors reserves (" +
                           (IsPadEntry(name) ? "mms's alignment padding" : "the header's metadata") +
                           "); rename it");
  return Status::Ok();
}
}  // namespace

std::vector<double> TensorToDoubles(const Tensor& t) {
  int64_t n = std::max<int64_t>(t.numel(), 0);
  std::vector<double> out(static_cast<size_t>(n));
  const uint8_t* b = t.data.get();
  for (int64_t i = 0; i < n; ++i) {
    double v = 0;
    switch (t.dtype) {
      case DType::kFloat32: v = reinterpret_cast<const float*>(b)[i]; break;
      case DType::kFloat64: v = reinterpret_cast<const double*>(b)[i]; break;
      case DType::kFloat16: v = HalfToFloat(reinterpret_cast<const uint16_t*>(b)[i]); break;
      case DType::kBFloat16: v = Bf16ToFloat(reinterpret_cast<const uint16_t*>(b)[i]); break;
      case DType::kBool: v = b[i] ? 1 : 0; break;
      case DType::kInt8: v = reinterpret_cast<const int8_t*>(b)[i]; break;
      case DType::kUInt8: v = b[i]; break;
      case DType::kInt16: v = reinterpret_cast<const int16_t*>(b)[i]; break;
      case DType::kInt32: v = reinterpret_cast<const int32_t*>(b)[i]; break;
      case DType::kInt64: v = static_cast<double>(reinterpret_cast<const int64_t*>(b)[i]); break;
    }
    out[static_cast<size_t>(i)] = v;
  }
  return out;
}

Tensor TensorFromDoubles(const Tensor& like, const std::vector<double>& values) {
  Tensor t = Tensor::Alloc(like.name, like.dtype, like.shape);
  uint8_t* b = t.mutable_data();
  for (size_t i = 0; i < values.size() && static_cast<int64_t>(i) < t.numel(); ++i) {
    double v = values[i];
    switch (t.dtype) {
      case DType::kFloat32: reinterpret_cast<float*>(b)[i] = static_cast<float>(v); break;
      case DType::kFloat64: reinterpret_cast<double*>(b)[i] = v; break;
      case DType::kFloat16: reinterpret_cast<uint16_t*>(b)[i] = FloatToHalf(static_cast<float>(v)); break;
      case DType::kBFloat16: reinterpret_cast<uint16_t*>(b)[i] = FloatToBf16(static_cast<float>(v)); break;
      case DType::kBool: b[i] = v != 0 ? 1 : 0; break;
      case DType::kInt8: reinterpret_cast<int8_t*>(b)[i] = static_cast<int8_t>(v); break;
      case DType::kUInt8: b[i] = static_cast<uint8_t>(v); break;
      case DType::kInt16: reinterpret_cast<int16_t*>(b)[i] = static_cast<int16_t>(v); break;
      case DType::kInt32: reinterpret_cast<int32_t*>(b)[i] = static_cast<int32_t>(v); break;
      case DType::kInt64: reinterpret_cast<int64_t*>(b)[i] = static_cast<int64_t>(v); break;
    }
  }
  return t;
}

Result<std::vector<Tensor>> TensorsFromJson(const nlohmann::json& j) {
  if (!j.is_object())
    return InvalidArgument("a JSON tensor file is an object mapping each input name to "
                           "{\"dtype\": \"float32\", \"shape\": [..], \"data\": [..]}");
  std::vector<Tensor> out;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const auto& spec = it.value();
    const std::string& name = it.key();
    MMS_RETURN_IF_ERROR(CheckTensorName(name));
    if (!spec.is_object() || !spec.contains("dtype") || !spec.contains("shape") || !spec.contains("data"))
      return InvalidArgument("tensor '" + name + "' needs \"dtype\", \"shape\" and \"data\"");
    for (auto k = spec.begin(); k != spec.end(); ++k)  // a misspelt key would otherwise go unnoticed
      if (k.key() != "dtype" && k.key() != "shape" && k.key() != "data")
        return InvalidArgument("tensor '" + name + "' has an unknown key '" + k.key() +
                               "'; a tensor has only \"dtype\", \"shape\" and \"data\"");
    if (!spec["dtype"].is_string()) return InvalidArgument("tensor '" + name + "': dtype must be a string");
    MMS_ASSIGN_OR_RETURN(DType dt, ParseDType(spec["dtype"].get<std::string>()));
    std::vector<int64_t> shape;
    if (!spec["shape"].is_array()) return InvalidArgument("tensor '" + name + "': shape must be a list of sizes");
    for (const auto& d : spec["shape"]) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0)
        return InvalidArgument("tensor '" + name + "': shape must be a list of non-negative integers");
      shape.push_back(d.get<int64_t>());
    }
    int64_t numel = ShapeNumel(shape);
    if (numel < 0) return InvalidArgument("tensor '" + name + "': shape " + ShapeString(shape) + " is too large");
    std::vector<const nlohmann::json*> vals;
    MMS_RETURN_IF_ERROR(CollectValues(spec["data"], shape, numel, name, &vals));
    MMS_ASSIGN_OR_RETURN(Tensor t, Tensor::TryAlloc(name, dt, shape));
    MMS_RETURN_IF_ERROR(FillFromJson(t, vals));
    out.push_back(std::move(t));
  }
  return out;
}

nlohmann::json TensorsToJson(const std::vector<Tensor>& tensors) {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& t : tensors) {
    nlohmann::json data = nlohmann::json::array();
    for (int64_t i = 0; i < t.numel(); ++i) data.push_back(ValueToJson(t, i));
    j[t.name] = {{"dtype", DTypeName(t.dtype)}, {"shape", t.shape}, {"data", std::move(data)}};
  }
  return j;
}

Result<SafetensorsHeader> ParseSafetensorsHeader(const uint8_t* prefix, size_t prefix_size, uint64_t file_size) {
  if (prefix_size < 8 || file_size < 8) return InvalidArgument("not a safetensors file: shorter than 8 bytes");
  uint64_t n;
  std::memcpy(&n, prefix, 8);
  if (n > 100ull << 20 || n + 8 > file_size)
    return InvalidArgument("not a safetensors file: header length " + std::to_string(n) + " does not fit the file");
  if (prefix_size < 8 + n) return InvalidArgument("safetensors header is truncated");
  auto parsed = ParseJsonStrict(std::string_view(reinterpret_cast<const char*>(prefix + 8), static_cast<size_t>(n)));
  if (!parsed.ok()) return InvalidArgument("safetensors header: " + parsed.status().message());
  const nlohmann::json& h = *parsed;
  if (!h.is_object()) return InvalidArgument("safetensors header is not a JSON object");
  SafetensorsHeader out;
  out.data_offset = 8 + n;
  uint64_t data_size = file_size - out.data_offset;
  for (auto it = h.begin(); it != h.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (it->is_object())
        for (auto m = it->begin(); m != it->end(); ++m)
          if (m->is_string()) out.metadata[m.key()] = m->get<std::string>();
      continue;
    }
    const auto& e = it.value();
    SafetensorsEntry en;
    en.name = it.key();
    if (en.name.empty()) return InvalidArgument("safetensors entry with an empty name; name it after the model's input");
    if (!e.is_object() || !e.contains("dtype") || !e["dtype"].is_string() || !e.contains("shape") ||
        !e["shape"].is_array() || !e.contains("data_offsets") || !e["data_offsets"].is_array() ||
        e["data_offsets"].size() != 2)
      return InvalidArgument("safetensors entry '" + en.name + "' needs dtype, shape and data_offsets [begin, end]");
    MMS_ASSIGN_OR_RETURN(en.dtype, ParseDType(e["dtype"].get<std::string>()));
    for (const auto& d : e["shape"]) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0)
        return InvalidArgument("safetensors entry '" + en.name + "': bad shape");
      en.shape.push_back(d.get<int64_t>());
    }
    if (!e["data_offsets"][0].is_number_unsigned() || !e["data_offsets"][1].is_number_unsigned())
      return InvalidArgument("safetensors entry '" + en.name + "': bad data_offsets");
    en.begin = e["data_offsets"][0].get<uint64_t>();
    en.end = e["data_offsets"][1].get<uint64_t>();
    int64_t numel = ShapeNumel(en.shape);
    if (numel < 0)
      return InvalidArgument("safetensors entry '" + en.name + "': shape " + ShapeString(en.shape) +
                             " has too many elements (their count overflows 64 bits)");
    if (en.end < en.begin)
      return InvalidArgument("safetensors entry '" + en.name + "': bad data_offsets (the end is before the begin)");
    if (en.end > data_size)
      return InvalidArgument("truncated: entry '" + en.name + "' ends at data byte " + std::to_string(en.end) +
                             " but the file holds " + std::to_string(data_size));
    // numel × dtype size wraps in 64 bits for huge shapes ([2^62] of F32 is 0
    // bytes): refuse those before comparing with the byte range.
    if (static_cast<uint64_t>(numel) > std::numeric_limits<uint64_t>::max() / DTypeSize(en.dtype))
      return InvalidArgument("safetensors entry '" + en.name + "': shape " + ShapeString(en.shape) + " of " +
                             DTypeSafetensorsName(en.dtype) + " is too large (its byte size overflows 64 bits)");
    if (en.end - en.begin != static_cast<uint64_t>(numel) * DTypeSize(en.dtype))
      return InvalidArgument("safetensors entry '" + en.name + "': " + std::to_string(en.end - en.begin) +
                             " bytes do not match " + DTypeSafetensorsName(en.dtype) + ShapeString(en.shape));
    out.entries.push_back(std::move(en));
  }
  // By start, then end: an empty tensor at another's start ([0, 0] beside
  // [0, 16], as the writer lays them out) comes first and overlaps nothing.
  std::sort(out.entries.begin(), out.entries.end(), [](const SafetensorsEntry& a, const SafetensorsEntry& b) {
    return a.begin < b.begin || (a.begin == b.begin && a.end < b.end);
  });
  for (size_t i = 1; i < out.entries.size(); ++i)
    if (out.entries[i].begin < out.entries[i - 1].end)
      return InvalidArgument("safetensors entries '" + out.entries[i - 1].name + "' and '" + out.entries[i].name +
                             "' overlap");
  // Filler that keeps the data aligned without holes (checked above like any
  // entry): bytes, not a tensor.
  for (const SafetensorsEntry& en : out.entries)  // (read as a tensor, it could not be written back)
    if (IsPadEntry(en.name) && !(en.dtype == DType::kUInt8 && en.shape.size() == 1))
      return InvalidArgument("safetensors entry '" + en.name + "' has a name mms reserves for 1-D U8 padding");
  out.entries.erase(std::remove_if(out.entries.begin(), out.entries.end(),
                                   [](const SafetensorsEntry& en) { return IsPadEntry(en.name); }),
                    out.entries.end());
  return out;
}

Result<SafetensorsHeader> ReadSafetensorsHeader(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return NotFound("no such file: " + path);
    return IoError("cannot open " + path + ": " + std::strerror(errno));
  }
  struct stat st;
  ::fstat(fd, &st);
  uint64_t size = static_cast<uint64_t>(st.st_size);
  auto len = ReadRange(fd, 0, size >= 8 ? 8 : static_cast<size_t>(size), path);
  if (!len.ok() || len->size() < 8) {
    ::close(fd);
    return InvalidArgument(path + " is not a safetensors file (shorter than 8 bytes)");
  }
  uint64_t n;
  std::memcpy(&n, len->data(), 8);
  if (n > 100ull << 20 || n + 8 > size) {
    ::close(fd);
    return InvalidArgument(path + " is not a safetensors file (header length does not fit)");
  }
  auto head = ReadRange(fd, 0, static_cast<size_t>(8 + n), path);
  ::close(fd);
  if (!head.ok()) return head.status();
  auto h = ParseSafetensorsHeader(reinterpret_cast<const uint8_t*>(head->data()), head->size(), size);
  if (!h.ok()) return h.status().WithContext(path);
  return h;
}

Result<std::vector<Tensor>> ReadSafetensorsFile(const std::string& path) {
  MMS_ASSIGN_OR_RETURN(SafetensorsHeader h, ReadSafetensorsHeader(path));
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return IoError("cannot open " + path + ": " + std::strerror(errno));
  std::vector<Tensor> out;
  for (const auto& e : h.entries) {
    auto alloc = Tensor::TryAlloc(e.name, e.dtype, e.shape);
    if (!alloc.ok()) {
      ::close(fd);
      return alloc.status().WithContext(path);
    }
    Tensor t = std::move(alloc).value();
    Status st = ReadFully(fd, h.data_offset + e.begin, t.mutable_data(), t.nbytes, path);
    if (st.ok()) st = CheckBoolBytes(t, path);
    if (!st.ok()) {
      ::close(fd);
      return st;
    }
    out.push_back(std::move(t));
  }
  ::close(fd);
  return out;
}

namespace {
// XXH3-64 of what a header says, independent of its JSON spelling: the
// entries by name (each name, dtype, shape and offsets) and the metadata but
// the checksums. A same-length edit of the header — two names swapped, a
// shape, an adapter's scale in the metadata — changes it.
std::string HeaderDigest(std::vector<SafetensorsEntry> entries, const std::map<std::string, std::string>& metadata) {
  std::sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  std::string text;
  for (const auto& e : entries) {
    text += e.name + '\0' + DTypeSafetensorsName(e.dtype) + '\0';
    for (int64_t d : e.shape) text += std::to_string(d) + ',';
    text += '\0' + std::to_string(e.begin) + ',' + std::to_string(e.end) + '\n';
  }
  text += '\0';
  for (const auto& [k, v] : metadata)
    if (k != kSafetensorsChecksumKey && k != kSafetensorsHeaderChecksumKey) text += k + '\0' + v + '\n';
  Xxh3 sum;
  sum.Update(text.data(), text.size());
  return sum.Hex();
}
}  // namespace

Status VerifySafetensorsChecksum(const SafetensorsHeader& h, const uint8_t* data, uint64_t size,
                                 const std::string& path) {
  return VerifySafetensorsChecksumAsRead(h, data, size, path, [](uint64_t) { return true; });
}

Status VerifySafetensorsChecksumAsRead(const SafetensorsHeader& h, const uint8_t* data, uint64_t size,
                                       const std::string& path, const std::function<bool(uint64_t end)>& ready) {
  if (auto head = h.metadata.find(kSafetensorsHeaderChecksumKey); head != h.metadata.end()) {
    std::string got = HeaderDigest(h.entries, h.metadata);
    if (got != head->second)
      return Corrupt(path + "'s header (names, shapes, offsets, metadata) does not match the checksum it was written "
                     "with (xxh3 " + got + ", written " + head->second + "): it was changed or damaged since");
  }
  auto want = h.metadata.find(kSafetensorsChecksumKey);
  if (want == h.metadata.end()) return Status::Ok();
  Xxh3 sum;
  constexpr uint64_t kPiece = 8ull << 20;
  for (const auto& e : h.entries) {
    if (e.end > size) return Corrupt(path + " is truncated");
    for (uint64_t at = e.begin; at < e.end;) {
      const uint64_t end = std::min(e.end, at + kPiece);
      if (!ready(end)) return Status(Code::kCancelled, "the read of " + path + " stopped before its checksum was checked");
      sum.Update(data + at, end - at);
      at = end;
    }
  }
  std::string got = sum.Hex();
  if (got == want->second) return Status::Ok();
  return Corrupt(path + " does not match the checksum it was written with (xxh3 " + got + ", written " + want->second +
                 "): it was changed or damaged since");
}

namespace {
// Reads n bytes of `path` from `offset` into dst, in pieces of `piece`
// bytes; `read_so_far(done)`, when given, is told after each piece.
Status ReadInto(const std::string& path, uint64_t offset, uint8_t* dst, uint64_t n, uint64_t piece = 64ull << 20,
                const std::function<void(uint64_t done)>& read_so_far = nullptr) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return IoError("cannot open " + path + ": " + std::strerror(errno));
  ::posix_fadvise(fd, static_cast<off_t>(offset), static_cast<off_t>(n), POSIX_FADV_SEQUENTIAL);
  Status st = Status::Ok();
  for (uint64_t done = 0; done < n && st.ok();) {
    const uint64_t chunk = std::min(n - done, piece);
    st = ReadFully(fd, offset + done, dst + done, chunk, path);
    done += chunk;
    if (st.ok() && read_so_far) read_so_far(done);
  }
  ::close(fd);
  return st;
}
}  // namespace

// Hashed on a second thread, a piece behind the read, from 16 MiB on (the header says why).
Status ReadSafetensorsData(const std::string& path, const SafetensorsHeader& h, uint8_t* dst, uint64_t n) {
  constexpr uint64_t kOverlapFrom = 16ull << 20, kPiece = 8ull << 20;
  if (n >= kOverlapFrom && h.metadata.count(kSafetensorsChecksumKey)) {
    std::mutex mu;
    std::condition_variable cv;
    uint64_t read = 0;  // guarded by mu
    bool stopped = false;  // guarded by mu: the read failed
    Status verified = Status::Ok();
    std::thread hasher;
    try {
      hasher = std::thread([&] {
        verified = VerifySafetensorsChecksumAsRead(h, dst, n, path, [&](uint64_t end) {
          std::unique_lock<std::mutex> l(mu);
          cv.wait(l, [&] { return read >= end || stopped; });
          return read >= end;
        });
      });
    } catch (const std::exception&) {  // no thread to spare (system_error, bad_alloc): in sequence below
    }
    if (hasher.joinable()) {
      Status st = ReadInto(path, h.data_offset, dst, n, kPiece, [&](uint64_t done) {
        {
          std::lock_guard<std::mutex> l(mu);
          read = done;
        }
        cv.notify_one();
      });
      if (!st.ok()) {
        {
          std::lock_guard<std::mutex> l(mu);
          stopped = true;
        }
        cv.notify_one();
      }
      hasher.join();
      return st.ok() ? verified : st;
    }
  }
  MMS_RETURN_IF_ERROR(ReadInto(path, h.data_offset, dst, n));
  // Same-size damage (a flipped byte) would otherwise be served as weights.
  return VerifySafetensorsChecksum(h, dst, n, path);
}

Status WriteSafetensorsFile(const std::string& path, const std::vector<Tensor>& tensors,
                            const std::map<std::string, std::string>& given_metadata, size_t alignment,
                            bool checksum) {
  if (alignment == 0) alignment = 1;
  std::map<std::string, std::string> metadata = given_metadata;
  if (checksum) {
    Xxh3 sum;
    for (const auto& t : tensors) sum.Update(t.data.get(), t.nbytes);
    metadata[kSafetensorsChecksumKey] = sum.Hex();
  }
  nlohmann::json h = nlohmann::json::object();
  uint64_t off = 0;
  std::vector<uint64_t> offsets;
  std::vector<SafetensorsEntry> entries;  // for the header's checksum
  int pads = 0;
  for (const auto& t : tensors) {
    MMS_RETURN_IF_ERROR(CheckTensorName(t.name));
    // The format allows no holes between tensors: a gap left for alignment
    // is a filler entry of its own (zeros; readers of mms skip it).
    uint64_t aligned = (off + alignment - 1) / alignment * alignment;
    if (aligned > off)
      h[kSafetensorsPadPrefix + std::to_string(pads++)] = {
          {"dtype", "U8"}, {"shape", {aligned - off}}, {"data_offsets", {off, aligned}}};
    off = aligned;
    offsets.push_back(off);
    h[t.name] = {{"dtype", DTypeSafetensorsName(t.dtype)}, {"shape", t.shape}, {"data_offsets", {off, off + t.nbytes}}};
    entries.push_back({t.name, t.dtype, t.shape, off, off + t.nbytes});
    off += t.nbytes;
  }
  if (checksum) metadata[kSafetensorsHeaderChecksumKey] = HeaderDigest(std::move(entries), metadata);
  if (!metadata.empty()) h["__metadata__"] = metadata;
  std::string json = h.dump();
  // The data starts aligned too, at least to 8 bytes as the format's own
  // writer does (the header is padded with spaces).
  const size_t head_align = std::max<size_t>(alignment, 8);
  size_t start = 8 + json.size();
  size_t aligned = (start + head_align - 1) / head_align * head_align;
  json.append(aligned - start, ' ');
  uint64_t n = json.size();
  struct stat st;  // never renamed over a device or the like (as root, /dev/null would become a file)
  if (::lstat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode))
    return InvalidArgument(path + " exists and is not a regular file");
  std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return IoError("cannot write " + path + " (its temporary file " + BaseName(tmp) + "): " + std::strerror(errno));
  auto write_all = [&](const void* p, size_t len, uint64_t at) -> bool {
    size_t done = 0;
    while (done < len) {
      ssize_t w = ::pwrite(fd, static_cast<const char*>(p) + done, len - done, static_cast<off_t>(at + done));
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return false;
      done += static_cast<size_t>(w);
    }
    return true;
  };
  bool ok = write_all(&n, 8, 0) && write_all(json.data(), json.size(), 8);
  for (size_t i = 0; ok && i < tensors.size(); ++i)
    ok = tensors[i].nbytes == 0 || write_all(tensors[i].data.get(), tensors[i].nbytes, 8 + n + offsets[i]);
  ok = ok && ::ftruncate(fd, static_cast<off_t>(8 + n + off)) == 0 && ::fsync(fd) == 0;
  int err = errno;
  ::close(fd);
  if (!ok) {
    ::unlink(tmp.c_str());
    return IoError("cannot write " + path + ": " + std::strerror(err));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int e = errno;
    ::unlink(tmp.c_str());
    return IoError("cannot rename " + tmp + " to " + path + ": " + std::strerror(e));
  }
  return Status::Ok();
}

bool IsSafetensorsPath(const std::string& path) {
  const std::string suf = ".safetensors";
  if (path.size() < suf.size()) return false;
  std::string tail = path.substr(path.size() - suf.size());
  std::transform(tail.begin(), tail.end(), tail.begin(), [](unsigned char c) { return std::tolower(c); });
  return tail == suf;
}

Result<std::vector<Tensor>> ReadTensorFile(const std::string& path, uint64_t max_bytes) {
  if (IsDirectory(path))
    return InvalidArgument(path + " is a directory: give a .json or .safetensors file of the inputs");
  if (IsSafetensorsPath(path)) return ReadSafetensorsFile(path);
  MMS_ASSIGN_OR_RETURN(std::string text, ReadFile(path, max_bytes));
  if (text.rfind("\xEF\xBB\xBF", 0) == 0) text.erase(0, 3);  // a UTF-8 byte order mark (some editors write one)
  size_t i = text.find_first_not_of(" \t\r\n");
  if (i == std::string::npos)
    return InvalidArgument(path + " is empty (a FIFO is read only when something writes it as it is opened): give a "
                                  "JSON object mapping each input name to {\"dtype\", \"shape\", \"data\"}, or a "
                                  ".safetensors file");
  if (text[i] != '{') {
    auto j = ParseJsonStrict(text, SIZE_MAX);
    if (j.ok())  // JSON, but not an object
      return InvalidArgument(path + " holds JSON that is not an object: give an object mapping each input name to "
                                    "{\"dtype\", \"shape\", \"data\"}");
    auto st = ReadSafetensorsFile(path);
    if (st.ok() || st.status().message().find("is not a safetensors file") == std::string::npos) return st;
    return InvalidArgument(path + " is neither JSON nor a safetensors file (" + j.status().message() +
                           "); give a JSON object mapping each input name to {\"dtype\", \"shape\", \"data\"}, or "
                           "a .safetensors file");
  }
  // Any depth: the data's nesting is walked without recursion, and says
  // which tensor is nested wrong (a shape of many dims nests as deep).
  auto j = ParseJsonStrict(text, SIZE_MAX);
  if (!j.ok()) return j.status().WithContext(path);
  auto t = TensorsFromJson(*j);
  if (!t.ok()) return t.status().WithContext(path);
  return t;
}

Status WriteTensorFile(const std::string& path, const std::vector<Tensor>& tensors) {
  // Contiguous (no alignment gaps): what any safetensors reader expects of a result file.
  if (IsSafetensorsPath(path)) return WriteSafetensorsFile(path, tensors, {}, 1);
  return WriteFileAtomic(path, TensorsToJson(tensors).dump(2) + "\n");
}

}  // namespace mms
