// Conversions between mms Tensors and libtorch, and libtorch error capture.
// One of the few headers that include torch (each such TU costs ~20 s).
#pragma once

#include <torch/script.h>

#include <string>

#include "core/status.h"
#include "protocol/tensor.h"

namespace mms {

Result<at::ScalarType> ToScalarType(DType d);
Result<DType> FromScalarType(at::ScalarType s);

// A CPU at::Tensor viewing `t`'s bytes (no copy); keeps `t.data` alive.
Result<at::Tensor> ToTorch(const Tensor& t);
// Copies a (any device) at::Tensor into a contiguous mms Tensor.
Result<Tensor> FromTorch(const at::Tensor& t, std::string name);

// The first line of a c10::Error, without the C++ backtrace.
std::string TorchErrorMessage(const std::exception& e);

}  // namespace mms
