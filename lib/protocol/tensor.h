// Tensor: a named, typed, shaped block of bytes as it travels between the CLI,
// the wire and the model runner. No libtorch here (the CLI must not link it);
// lib/pool/torch_* converts to and from torch::Tensor.
//
// Data is shared and immutable once built: copies of a Tensor alias the same
// bytes. The owner may be a heap buffer or a received nng message.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace mms {

// Numbers are frozen: they appear in tensor frames on the wire.
enum class DType : uint8_t {
  kFloat32 = 1,
  kFloat64 = 2,
  kFloat16 = 3,
  kBFloat16 = 4,
  kInt8 = 5,
  kUInt8 = 6,
  kInt16 = 7,
  kInt32 = 8,
  kInt64 = 9,
  kBool = 10,
};

size_t DTypeSize(DType d);
bool IsValidDType(uint8_t raw);
// "float32", "int64", ...
const char* DTypeName(DType d);
// safetensors names: "F32", "I64", "BOOL", ...
const char* DTypeSafetensorsName(DType d);
// Accepts our names, common aliases (float, double, half, long, int) and
// safetensors names. The error lists what is accepted.
Result<DType> ParseDType(std::string_view s);

struct Tensor {
  std::string name;
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;
  std::shared_ptr<const uint8_t> data;  // nbytes valid bytes (may be null when 0)
  size_t nbytes = 0;

  // A zero-filled tensor owning a fresh buffer; write through mutable_data().
  // INVALID_ARGUMENT when a dim is negative or numel × dtype size does not
  // fit in size_t: use this for shapes that come from files or the wire.
  static Result<Tensor> TryAlloc(std::string name, DType dtype, std::vector<int64_t> shape);
  // As TryAlloc, for shapes the caller has already checked: an invalid shape
  // is a bug and aborts (it never hands back a buffer smaller than the shape).
  static Tensor Alloc(std::string name, DType dtype, std::vector<int64_t> shape);
  uint8_t* mutable_data() { return const_cast<uint8_t*>(data.get()); }
  int64_t numel() const;
  // "float32[4, 8]".
  std::string Describe() const;
  template <class T>
  const T* as() const { return reinterpret_cast<const T*>(data.get()); }
};

// numel of a shape, or -1 on a negative dim or overflow.
int64_t ShapeNumel(const std::vector<int64_t>& shape);
// INVALID_ARGUMENT when a bool tensor holds a byte other than 0 or 1 (torch's
// bool is one of those: any other byte is undefined behaviour in a model);
// OK for other dtypes. `where` names the source in the message.
Status CheckBoolBytes(const Tensor& t, const std::string& where);
std::string ShapeString(const std::vector<int64_t>& shape);

}  // namespace mms
