#include "protocol/tensor_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>

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

void Flatten(const nlohmann::json& j, std::vector<const nlohmann::json*>* out) {
  if (j.is_array())
    for (const auto& e : j) Flatten(e, out);
  else
    out->push_back(&j);
}

template <class T>
Status PutInt(const nlohmann::json& v, T* dst, const std::string& name, size_t i) {
  if (v.is_boolean()) {
    *dst = static_cast<T>(v.get<bool>());
    return Status::Ok();
  }
  if (!v.is_number_integer() && !(v.is_number_float() && std::floor(v.get<double>()) == v.get<double>()))
    return InvalidArgument("tensor '" + name + "': value " + std::to_string(i) + " (" + v.dump() +
                           ") is not an integer");
  long double x = v.is_number_unsigned() ? static_cast<long double>(v.get<uint64_t>())
                                         : static_cast<long double>(v.is_number_float() ? v.get<double>()
                                                                                        : v.get<int64_t>());
  if (x < static_cast<long double>(std::numeric_limits<T>::min()) ||
      x > static_cast<long double>(std::numeric_limits<T>::max()))
    return InvalidArgument("tensor '" + name + "': value " + std::to_string(i) + " (" + v.dump() +
                           ") is out of range for its dtype");
  *dst = static_cast<T>(x);
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
        if (!v.is_number())
          return InvalidArgument("tensor '" + t.name + "': value " + std::to_string(i) + " (" + v.dump() +
                                 ") is not a number");
        double d = v.get<double>();
        if (t.dtype == DType::kFloat32) reinterpret_cast<float*>(base)[i] = static_cast<float>(d);
        if (t.dtype == DType::kFloat64) reinterpret_cast<double*>(base)[i] = d;
        if (t.dtype == DType::kFloat16) reinterpret_cast<uint16_t*>(base)[i] = FloatToHalf(static_cast<float>(d));
        if (t.dtype == DType::kBFloat16) reinterpret_cast<uint16_t*>(base)[i] = FloatToBf16(static_cast<float>(d));
        break;
      }
      case DType::kBool: {
        if (!v.is_boolean() && !(v.is_number_integer() && (v.get<int64_t>() == 0 || v.get<int64_t>() == 1)))
          return InvalidArgument("tensor '" + t.name + "': value " + std::to_string(i) + " (" + v.dump() +
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
    case DType::kFloat32: {
      float f = reinterpret_cast<const float*>(b)[i];
      return std::isfinite(f) ? nlohmann::json(f) : nlohmann::json(std::isnan(f) ? "nan" : f > 0 ? "inf" : "-inf");
    }
    case DType::kFloat64: {
      double d = reinterpret_cast<const double*>(b)[i];
      return std::isfinite(d) ? nlohmann::json(d) : nlohmann::json(std::isnan(d) ? "nan" : d > 0 ? "inf" : "-inf");
    }
    case DType::kFloat16: return HalfToFloat(reinterpret_cast<const uint16_t*>(b)[i]);
    case DType::kBFloat16: return Bf16ToFloat(reinterpret_cast<const uint16_t*>(b)[i]);
    case DType::kBool: return b[i] != 0;
    case DType::kInt8: return reinterpret_cast<const int8_t*>(b)[i];
    case DType::kUInt8: return b[i];
    case DType::kInt16: return reinterpret_cast<const int16_t*>(b)[i];
    case DType::kInt32: return reinterpret_cast<const int32_t*>(b)[i];
    case DType::kInt64: return reinterpret_cast<const int64_t*>(b)[i];
  }
  return nullptr;
}

Result<std::string> ReadRange(int fd, uint64_t offset, size_t n, const std::string& path) {
  std::string buf(n, '\0');
  size_t done = 0;
  while (done < n) {
    ssize_t got = ::pread(fd, buf.data() + done, n - done, static_cast<off_t>(offset + done));
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) return IoError("cannot read " + path + ": " + std::strerror(errno));
    if (got == 0) return InvalidArgument(path + " is truncated");
    done += static_cast<size_t>(got);
  }
  return buf;
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

Result<std::vector<Tensor>> TensorsFromJson(const nlohmann::json& j) {
  if (!j.is_object())
    return InvalidArgument("a JSON tensor file is an object mapping each input name to "
                           "{\"dtype\": \"float32\", \"shape\": [..], \"data\": [..]}");
  std::vector<Tensor> out;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const auto& spec = it.value();
    const std::string& name = it.key();
    if (!spec.is_object() || !spec.contains("dtype") || !spec.contains("shape") || !spec.contains("data"))
      return InvalidArgument("tensor '" + name + "' needs \"dtype\", \"shape\" and \"data\"");
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
    Flatten(spec["data"], &vals);
    if (static_cast<int64_t>(vals.size()) != numel)
      return InvalidArgument("tensor '" + name + "': data has " + std::to_string(vals.size()) + " values but shape " +
                             ShapeString(shape) + " needs " + std::to_string(numel));
    Tensor t = Tensor::Alloc(name, dt, shape);
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
  nlohmann::json h = nlohmann::json::parse(prefix + 8, prefix + 8 + n, nullptr, false);
  if (h.is_discarded() || !h.is_object()) return InvalidArgument("safetensors header is not a JSON object");
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
    if (numel < 0 || en.end < en.begin)
      return InvalidArgument("safetensors entry '" + en.name + "': bad data_offsets");
    if (en.end > data_size)
      return InvalidArgument("truncated: entry '" + en.name + "' ends at data byte " + std::to_string(en.end) +
                             " but the file holds " + std::to_string(data_size));
    if (en.end - en.begin != static_cast<uint64_t>(numel) * DTypeSize(en.dtype))
      return InvalidArgument("safetensors entry '" + en.name + "': " + std::to_string(en.end - en.begin) +
                             " bytes do not match " + DTypeSafetensorsName(en.dtype) + ShapeString(en.shape));
    out.entries.push_back(std::move(en));
  }
  std::sort(out.entries.begin(), out.entries.end(),
            [](const SafetensorsEntry& a, const SafetensorsEntry& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < out.entries.size(); ++i)
    if (out.entries[i].begin < out.entries[i - 1].end)
      return InvalidArgument("safetensors entries '" + out.entries[i - 1].name + "' and '" + out.entries[i].name +
                             "' overlap");
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
    Tensor t = Tensor::Alloc(e.name, e.dtype, e.shape);
    size_t done = 0;
    while (done < t.nbytes) {
      ssize_t got = ::pread(fd, t.mutable_data() + done, t.nbytes - done,
                            static_cast<off_t>(h.data_offset + e.begin + done));
      if (got <= 0) {
        ::close(fd);
        return IoError("cannot read " + path);
      }
      done += static_cast<size_t>(got);
    }
    out.push_back(std::move(t));
  }
  ::close(fd);
  return out;
}

Status WriteSafetensorsFile(const std::string& path, const std::vector<Tensor>& tensors,
                            const std::map<std::string, std::string>& metadata, size_t alignment) {
  if (alignment == 0) alignment = 1;
  nlohmann::json h = nlohmann::json::object();
  uint64_t off = 0;
  std::vector<uint64_t> offsets;
  for (const auto& t : tensors) {
    off = (off + alignment - 1) / alignment * alignment;
    offsets.push_back(off);
    h[t.name] = {{"dtype", DTypeSafetensorsName(t.dtype)}, {"shape", t.shape}, {"data_offsets", {off, off + t.nbytes}}};
    off += t.nbytes;
  }
  if (!metadata.empty()) h["__metadata__"] = metadata;
  std::string json = h.dump();
  size_t start = 8 + json.size();
  size_t aligned = (start + alignment - 1) / alignment * alignment;
  json.append(aligned - start, ' ');
  uint64_t n = json.size();
  std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return IoError("cannot write " + tmp + ": " + std::strerror(errno));
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
  if (::rename(tmp.c_str(), path.c_str()) != 0) return IoError("cannot rename " + tmp + ": " + std::strerror(errno));
  return Status::Ok();
}

static bool EndsWith(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

Result<std::vector<Tensor>> ReadTensorFile(const std::string& path) {
  if (EndsWith(path, ".safetensors")) return ReadSafetensorsFile(path);
  MMS_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  size_t i = text.find_first_not_of(" \t\r\n");
  if (i == std::string::npos || text[i] != '{') return ReadSafetensorsFile(path);
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded()) return InvalidArgument(path + " is not valid JSON (nor a safetensors file)");
  auto t = TensorsFromJson(j);
  if (!t.ok()) return t.status().WithContext(path);
  return t;
}

Status WriteTensorFile(const std::string& path, const std::vector<Tensor>& tensors) {
  if (EndsWith(path, ".safetensors")) return WriteSafetensorsFile(path, tensors);
  return WriteFileAtomic(path, TensorsToJson(tensors).dump(2) + "\n");
}

}  // namespace mms
