#include "pool/torch_util.h"

#include <cstring>

namespace mms {

Result<at::ScalarType> ToScalarType(DType d) {
  switch (d) {
    case DType::kFloat32: return at::kFloat;
    case DType::kFloat64: return at::kDouble;
    case DType::kFloat16: return at::kHalf;
    case DType::kBFloat16: return at::kBFloat16;
    case DType::kInt8: return at::kChar;
    case DType::kUInt8: return at::kByte;
    case DType::kInt16: return at::kShort;
    case DType::kInt32: return at::kInt;
    case DType::kInt64: return at::kLong;
    case DType::kBool: return at::kBool;
  }
  return InvalidArgument("unsupported dtype");
}

Result<DType> FromScalarType(at::ScalarType s) {
  switch (s) {
    case at::kFloat: return DType::kFloat32;
    case at::kDouble: return DType::kFloat64;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kChar: return DType::kInt8;
    case at::kByte: return DType::kUInt8;
    case at::kShort: return DType::kInt16;
    case at::kInt: return DType::kInt32;
    case at::kLong: return DType::kInt64;
    case at::kBool: return DType::kBool;
    default: return InvalidArgument(std::string("unsupported tensor dtype ") + c10::toString(s));
  }
}

Result<at::Tensor> ToTorch(const Tensor& t) {
  MMS_ASSIGN_OR_RETURN(at::ScalarType st, ToScalarType(t.dtype));
  auto keep = t.data;  // the deleter owns a reference to the bytes
  void* p = const_cast<uint8_t*>(t.data.get());
  if (t.nbytes == 0) return torch::empty(t.shape, torch::TensorOptions().dtype(st));
  if (reinterpret_cast<uintptr_t>(p) % DTypeSize(t.dtype) != 0) {  // misaligned: copy
    at::Tensor out = torch::empty(t.shape, torch::TensorOptions().dtype(st));
    std::memcpy(out.data_ptr(), p, t.nbytes);
    return out;
  }
  return torch::from_blob(p, t.shape, [keep](void*) mutable { keep.reset(); },
                          torch::TensorOptions().dtype(st));
}

Result<Tensor> FromTorch(const at::Tensor& in, std::string name) {
  at::Tensor t = in.device().is_cpu() ? in.contiguous() : in.to(torch::kCPU).contiguous();
  MMS_ASSIGN_OR_RETURN(DType d, FromScalarType(t.scalar_type()));
  Tensor out = Tensor::Alloc(std::move(name), d, t.sizes().vec());
  if (out.nbytes) std::memcpy(out.mutable_data(), t.data_ptr(), out.nbytes);
  return out;
}

std::string TorchErrorMessage(const std::exception& e) {
  std::string m;
  if (auto* c = dynamic_cast<const c10::Error*>(&e)) m = c->what_without_backtrace();
  else m = e.what();
  auto pos = m.find("\nException raised from");
  if (pos != std::string::npos) m = m.substr(0, pos);
  while (!m.empty() && (m.back() == '\n' || m.back() == ' ')) m.pop_back();
  // Errors raised inside TorchScript carry both tracebacks; the last line
  // ("RuntimeError: mat1 and mat2 shapes cannot be multiplied ...") is the gist.
  if (m.find("Traceback of TorchScript") != std::string::npos) {
    auto nl = m.find_last_of('\n');
    if (nl != std::string::npos) m = m.substr(nl + 1);
  }
  return m;
}

}  // namespace mms
