#include "lora/adapter_model.h"

#include "core/paths.h"
#include "protocol/tensor_file.h"

namespace mms {

AdapterModel::AdapterModel(std::string ref, AdapterInfo info, WeightLayout layout)
    : ref_(std::move(ref)), info_(std::move(info)), layout_(std::move(layout)) {
  weights_.ref = ref_;
  weights_.scale = info_.scale;
  weights_.dtype = info_.dtype;
}

Status AdapterModel::Bind(std::shared_ptr<Buffer> keep, const std::string& device) {
  if (!keep || keep->size() < layout_.total_bytes) return Internal(ref_ + ": adapter buffer too small");
  LoraWeights w;
  w.ref = ref_;
  w.scale = info_.scale;
  w.dtype = info_.dtype;
  w.device = device;
  // The packed file was checked at registration; a damaged or edited one
  // must not make a base read past these tensors (A [rank, in], B [out, rank]).
  auto check = [&](const WeightEntry& e, int64_t rows, int64_t cols) -> Status {
    const uint64_t want = static_cast<uint64_t>(rows) * static_cast<uint64_t>(cols) * DTypeSize(info_.dtype);
    if (e.dtype != info_.dtype || e.shape != std::vector<int64_t>{rows, cols} || e.nbytes != want ||
        e.offset + e.nbytes > keep->size())
      return Corrupt(ref_ + ": packed adapter tensor " + e.name + " is not " + DTypeName(info_.dtype) + "[" +
                     std::to_string(rows) + ", " + std::to_string(cols) +
                     "] (the stored files were changed since registration; re-register the adapter)");
    return Status::Ok();
  };
  for (const auto& t : info_.targets) {
    if (info_.rank <= 0 || t.in <= 0 || t.out <= 0) return Corrupt(ref_ + ": adapter metadata of " + t.module + " is invalid");
    LoraTarget lt{t.module, nullptr, nullptr, info_.rank, t.in, t.out};
    for (const auto& e : layout_.entries) {
      if (e.name == t.module + ".lora_A") {
        MMS_RETURN_IF_ERROR(check(e, info_.rank, t.in));
        lt.a = keep->data() + e.offset;
      }
      if (e.name == t.module + ".lora_B") {
        MMS_RETURN_IF_ERROR(check(e, t.out, info_.rank));
        lt.b = keep->data() + e.offset;
      }
    }
    if (!lt.a || !lt.b) return Corrupt(ref_ + ": packed adapter lacks the weights of " + t.module);
    w.targets.push_back(std::move(lt));
  }
  weights_ = std::move(w);
  bound_ = std::move(keep);
  return Status::Ok();
}

Result<std::vector<Tensor>> AdapterModel::Run(const std::vector<Tensor>&) {
  return FailedPrecondition(ref_ + " is a LoRA adapter: it runs on its base");
}

Status AdapterModel::SaveWithoutWeights(const std::string&) {
  return FailedPrecondition(ref_ + " is a LoRA adapter: nothing to save");
}

Result<HostModel> AdapterLoader::Load(const Source& src, const HostAllocator& alloc) {
  const std::string path = JoinPath(src.packed_dir, kAdapterWeightsFile);
  auto header = ReadSafetensorsHeader(path);
  if (!header.ok()) return header.status().WithContext(src.ref);
  auto meta = header->metadata.find("mms.adapter");
  if (meta == header->metadata.end()) return Corrupt(src.ref + ": " + path + " is not a packed adapter");
  auto j = nlohmann::json::parse(meta->second, nullptr, false);
  if (j.is_discarded()) return Corrupt(src.ref + ": " + path + ": unreadable adapter metadata");
  MMS_ASSIGN_OR_RETURN(AdapterInfo info, AdapterInfo::FromJson(j));
  WeightLayout layout;
  uint64_t end = 0;
  for (const auto& e : header->entries) {
    layout.entries.push_back({e.name, e.dtype, e.shape, e.begin, e.end - e.begin});
    end = std::max(end, e.end);
  }
  layout.total_bytes = end;
  MMS_ASSIGN_OR_RETURN(auto buf, alloc(static_cast<size_t>(std::max<uint64_t>(end, 1))));
  if (Status st = ReadSafetensorsData(path, *header, buf->data(), end); !st.ok()) {
    if (st.code() != Code::kCorrupt && st.code() != Code::kInvalidArgument) return IoError(src.ref + ": " + st.message());
    return Corrupt("the stored adapter " + src.ref + " is damaged: " + st.message() + " (mms model verify " + src.ref +
                   " checks it; mms model repack " + src.ref + " writes it anew from the registered directory)");
  }
  HostModel hm;
  hm.model = std::make_unique<AdapterModel>(src.ref, std::move(info), std::move(layout));
  MMS_RETURN_IF_ERROR(hm.model->Bind(buf, "cpu"));
  hm.weights = std::move(buf);
  return hm;
}

}  // namespace mms
