#include "protocol/tensor.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>

namespace mms {
namespace {
struct DTypeInfo {
  DType d;
  size_t size;
  const char* name;
  const char* st_name;
};
constexpr DTypeInfo kDTypes[] = {
    {DType::kFloat32, 4, "float32", "F32"}, {DType::kFloat64, 8, "float64", "F64"},
    {DType::kFloat16, 2, "float16", "F16"}, {DType::kBFloat16, 2, "bfloat16", "BF16"},
    {DType::kInt8, 1, "int8", "I8"},        {DType::kUInt8, 1, "uint8", "U8"},
    {DType::kInt16, 2, "int16", "I16"},     {DType::kInt32, 4, "int32", "I32"},
    {DType::kInt64, 8, "int64", "I64"},     {DType::kBool, 1, "bool", "BOOL"},
};
const DTypeInfo& Info(DType d) {
  for (const auto& i : kDTypes)
    if (i.d == d) return i;
  return kDTypes[0];
}
}  // namespace

size_t DTypeSize(DType d) { return Info(d).size; }
const char* DTypeName(DType d) { return Info(d).name; }
const char* DTypeSafetensorsName(DType d) { return Info(d).st_name; }

bool IsValidDType(uint8_t raw) {
  for (const auto& i : kDTypes)
    if (static_cast<uint8_t>(i.d) == raw) return true;
  return false;
}

Result<DType> ParseDType(std::string_view s) {
  // In any case: torch's names (float32), safetensors' (F32), and the usual
  // short ones (float, f32, long, ...).
  auto lower = [](std::string_view v) {
    std::string l(v);
    std::transform(l.begin(), l.end(), l.begin(), [](unsigned char c) { return std::tolower(c); });
    return l;
  };
  const std::string l = lower(s);
  for (const auto& i : kDTypes)
    if (l == lower(i.name) || l == lower(i.st_name)) return i.d;
  if (l == "float" || l == "f32") return DType::kFloat32;
  if (l == "double" || l == "f64") return DType::kFloat64;
  if (l == "half" || l == "f16") return DType::kFloat16;
  if (l == "bf16") return DType::kBFloat16;
  if (l == "long" || l == "i64") return DType::kInt64;
  if (l == "int" || l == "i32") return DType::kInt32;
  if (l == "uint8" || l == "u8") return DType::kUInt8;
  return InvalidArgument("unknown dtype '" + std::string(s) +
                         "'; use one of float32, float64, float16, bfloat16, int8, uint8, int16, "
                         "int32, int64, bool (or safetensors' F32, F64, F16, BF16, I8, U8, I16, I32, I64, BOOL)");
}

Status CheckBoolBytes(const Tensor& t, const std::string& where) {
  if (t.dtype != DType::kBool) return Status::Ok();
  const uint8_t* b = t.data.get();
  for (size_t i = 0; i < t.nbytes; ++i)
    if (b[i] > 1)
      return InvalidArgument(where + ": bool tensor '" + t.name + "' holds the byte " + std::to_string(b[i]) +
                             " at element " + std::to_string(i) + "; a bool is 0 or 1");
  return Status::Ok();
}

int64_t ShapeNumel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return -1;
    if (d != 0 && n > std::numeric_limits<int64_t>::max() / d) return -1;
    n *= d;
  }
  return n;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

Result<Tensor> Tensor::TryAlloc(std::string name, DType dtype, std::vector<int64_t> shape) {
  Tensor t;
  t.name = std::move(name);
  t.dtype = dtype;
  t.shape = std::move(shape);
  int64_t n = ShapeNumel(t.shape);
  if (n < 0)
    return InvalidArgument("tensor '" + t.name + "': shape " + ShapeString(t.shape) +
                           (std::any_of(t.shape.begin(), t.shape.end(), [](int64_t d) { return d < 0; })
                                ? " has a negative dimension"
                                : " has more elements than fit in 64 bits"));
  if (static_cast<uint64_t>(n) > std::numeric_limits<size_t>::max() / DTypeSize(dtype))
    return InvalidArgument("tensor '" + t.name + "': " + t.Describe() + " is too large (" + std::to_string(n) +
                           " elements of " + std::to_string(DTypeSize(dtype)) + " bytes overflow 64 bits)");
  t.nbytes = static_cast<size_t>(n) * DTypeSize(dtype);
  std::shared_ptr<uint8_t> buf(new uint8_t[t.nbytes ? t.nbytes : 1](), std::default_delete<uint8_t[]>());
  t.data = buf;
  return t;
}

Tensor Tensor::Alloc(std::string name, DType dtype, std::vector<int64_t> shape) {
  auto t = TryAlloc(std::move(name), dtype, std::move(shape));
  if (!t.ok()) {
    std::fprintf(stderr, "mms: internal error: Tensor::Alloc of an unchecked shape: %s\n",
                 t.status().message().c_str());
    std::abort();
  }
  return std::move(t).value();
}

int64_t Tensor::numel() const { return ShapeNumel(shape); }

std::string Tensor::Describe() const { return std::string(DTypeName(dtype)) + ShapeString(shape); }

}  // namespace mms
