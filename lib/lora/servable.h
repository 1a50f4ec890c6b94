// Servable: a version ready to run — its model's handle and, for a LoRA
// adapter, the adapter's handle too (the model is then the adapter's base).
// Holding a Servable keeps both on their devices.
//
// Thread-safety: Run may be called from any thread (as Model::Run).
#pragma once

#include <vector>

#include "lora/adapter_model.h"
#include "pool/model_pool.h"

namespace mms {

struct Servable {
  HandlePtr model;    // the version itself, or an adapter's base
  HandlePtr adapter;  // null unless the version is an adapter

  // The adapter's weights (null without one).
  const LoraWeights* adapter_weights() const {
    return adapter ? &static_cast<const AdapterModel*>(adapter->model())->weights() : nullptr;
  }
  // Every row with the adapter (if any), as a predict runs it. Inputs in forward() order.
  Result<std::vector<Tensor>> Run(const std::vector<Tensor>& inputs) const {
    return adapter ? model->model()->RunWithAdapter(inputs, adapter_weights()) : model->model()->Run(inputs);
  }
};

}  // namespace mms
