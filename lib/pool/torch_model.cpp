#include "pool/torch_model.h"

#include <ATen/Parallel.h>
#include <caffe2/serialize/read_adapter_interface.h>

#include <dlfcn.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <algorithm>
#include <cstring>
#include <sstream>
#include <functional>
#include <map>
#include <unordered_map>

#include "core/hash.h"
#include "core/paths.h"
#include "pool/torch_artifact.h"
#include "pool/torch_util.h"
#include "protocol/tensor_file.h"

namespace mms {
namespace {

constexpr uint64_t kAlign = 64;

class TorchModel final : public Model {
 public:
  TorchModel(torch::jit::Module m, WeightLayout layout, std::string name)
      : module_(std::move(m)), layout_(std::move(layout)), name_(std::move(name)) {}

  Status Init() {
    try {
      module_.eval();
      auto method = module_.find_method("forward");
      if (!method) return InvalidArgument(name_ + " has no forward() method");
      const auto& args = method->function().getSchema().arguments();
      for (size_t i = 1; i < args.size(); ++i) {
        auto kind = args[i].type()->kind();
        if (kind != c10::TypeKind::TensorType)
          return InvalidArgument(name_ + ": forward argument '" + args[i].name() + "' has type " +
                                 args[i].type()->str() + "; mms serves models whose forward() takes tensors");
        MMS_RETURN_IF_ERROR(AddArg(args[i].name()));
      }
      MMS_RETURN_IF_ERROR(CheckStackedLora());
      std::unordered_map<std::string, size_t> index;
      for (size_t i = 0; i < layout_.entries.size(); ++i) index[layout_.entries[i].name] = i;
      for (const auto& a : module_.named_attributes(/*recurse=*/true)) {
        if (!a.value.isTensor()) continue;
        at::Tensor t = a.value.toTensor();
        if (!t.defined()) continue;
        std::string target = a.name;
        if (auto al = layout_.aliases.find(a.name); al != layout_.aliases.end()) target = al->second;
        auto it = index.find(target);
        if (it == index.end()) return Corrupt(name_ + ": tensor '" + a.name + "' is missing from the packed weights");
        const WeightEntry& e = layout_.entries[it->second];
        auto dt = FromScalarType(t.scalar_type());
        if (!dt.ok() || *dt != e.dtype)
          return Corrupt(name_ + ": tensor '" + a.name + "' has dtype " + c10::toString(t.scalar_type()) +
                         " but the packed weights hold " + DTypeName(e.dtype));
        slots_.emplace_back(t, it->second);
      }
    } catch (const std::exception& e) {
      return InvalidArgument(name_ + ": " + TorchErrorMessage(e));
    }
    return Status::Ok();
  }

  const std::vector<std::string>& input_names() const override { return inputs_; }
  const WeightLayout& layout() const override { return layout_; }
  const std::string& device() const override { return device_str_; }

  Status Bind(std::shared_ptr<Buffer> keep, const std::string& device) override {
    if (!keep || keep->size() < layout_.total_bytes)
      return Internal(name_ + ": buffer of " + std::to_string(keep ? keep->size() : 0) + " bytes is smaller than its " +
                      std::to_string(layout_.total_bytes) + " bytes of weights");
    try {
      c10::Device dev(device);
      for (auto& [t, idx] : slots_) {
        const WeightEntry& e = layout_.entries[idx];
        at::Tensor view = torch::from_blob(keep->data() + e.offset, e.shape,
                                           torch::TensorOptions().dtype(t.scalar_type()).device(dev));
        t.set_data(view);
      }
      device_ = dev;
    } catch (const std::exception& e) {
      return Internal(name_ + ": binding weights on " + device + ": " + TorchErrorMessage(e));
    }
    bound_ = std::move(keep);
    device_str_ = device;
    return Status::Ok();
  }

  Status SaveWithoutWeights(const std::string& path) override {
    try {
      for (auto& [t, idx] : slots_) t.set_data(torch::empty({0}, t.options()));
      module_.save(path);
    } catch (const std::exception& e) {
      (void)Bind(bound_, device_str_);
      return IoError("cannot save " + path + ": " + TorchErrorMessage(e));
    }
    return Bind(bound_, device_str_);
  }

  Result<std::vector<Tensor>> Run(const std::vector<Tensor>& inputs) override {
    if (!stacked_.empty()) {  // no adapter: every row on the empty slot
      MMS_ASSIGN_OR_RETURN(int64_t rows, Rows(inputs));
      return RunWithAdapters(inputs, {AdapterRows{nullptr, rows}});
    }
    try {
      c10::InferenceMode guard;
      MMS_ASSIGN_OR_RETURN(auto user, UserArgs(inputs));
      c10::IValue out = module_.forward(std::vector<c10::IValue>(user.begin(), user.end()));
      return Outputs(out);
    } catch (const std::exception& e) {
      return Status(Code::kModelError, name_ + " raised in forward(): " + TorchErrorMessage(e));
    }
  }

  std::vector<std::string> stacked_lora_modules() const override {
    std::vector<std::string> out;
    for (const auto& m : stacked_) out.push_back(m.module);
    return out;
  }

  Result<std::vector<Tensor>> RunWithAdapters(const std::vector<Tensor>& inputs,
                                              const std::vector<AdapterRows>& parts) override {
    try {
      c10::InferenceMode guard;
      MMS_ASSIGN_OR_RETURN(auto user, UserArgs(inputs));
      if (!stacked_.empty()) {
        MMS_ASSIGN_OR_RETURN(int64_t rows, Rows(inputs));
        int64_t sum = 0;
        for (const auto& p : parts) sum += p.rows;
        if (sum != rows)
          return Internal(name_ + ": adapter parts cover " + std::to_string(sum) + " rows of " + std::to_string(rows));
        return RunStacked(user, parts, rows);
      }
      const LoraWeights* adapter = parts.empty() ? nullptr : parts.front().adapter;
      for (const auto& p : parts)
        if (p.adapter != adapter)
          return Internal(name_ + ": a batch mixing adapters needs a base that takes stacked adapter weights");
      if (!adapter) return Outputs(module_.forward(std::vector<c10::IValue>(user.begin(), user.end())));
      MMS_ASSIGN_OR_RETURN(auto merged, Merged(*adapter));
      return Outputs(merged.forward(std::vector<c10::IValue>(user.begin(), user.end())));
    } catch (const std::exception& e) {
      return Status(Code::kModelError, name_ + " raised in forward(): " + TorchErrorMessage(e));
    }
  }

 private:
  // forward()'s arguments: the request's inputs and, for a base taking
  // stacked adapters, lora_idx, lora_scale, lora_a_<m> and lora_b_<m>.
  enum class ArgKind { kUser, kIdx, kScale, kA, kB };
  struct Arg {
    ArgKind kind;
    size_t index = 0;  // user input or stacked module
  };
  struct Stacked {
    std::string key;     // "<m>" with dots as underscores, as in the argument names
    std::string module;  // the module path
    bool has_a = false, has_b = false;
    int64_t in = 0, out = 0;
    at::ScalarType dtype = at::kFloat;
  };

  Status AddArg(const std::string& name) {
    auto stacked = [&](const std::string& key) {
      for (size_t i = 0; i < stacked_.size(); ++i)
        if (stacked_[i].key == key) return i;
      stacked_.push_back(Stacked{key, "", false, false, 0, 0, at::kFloat});
      return stacked_.size() - 1;
    };
    if (name == "lora_idx") {
      args_.push_back({ArgKind::kIdx, 0});
    } else if (name == "lora_scale") {
      args_.push_back({ArgKind::kScale, 0});
    } else if (name.rfind("lora_a_", 0) == 0 || name.rfind("lora_b_", 0) == 0) {
      size_t i = stacked(name.substr(7));
      bool a = name[5] == 'a';
      (a ? stacked_[i].has_a : stacked_[i].has_b) = true;
      args_.push_back({a ? ArgKind::kA : ArgKind::kB, i});
    } else if (name.rfind("lora_", 0) == 0) {
      return InvalidArgument(name_ + ": forward argument '" + name +
                             "' starts with lora_ but is not lora_idx, lora_scale, lora_a_<module> or lora_b_<module>");
    } else {
      args_.push_back({ArgKind::kUser, inputs_.size()});
      inputs_.push_back(name);
    }
    return Status::Ok();
  }

  // A base taking stacked adapters names real Linear-like modules (a 2-D
  // weight [out, in]) and takes every one of its LoRA arguments.
  Status CheckStackedLora() {
    if (stacked_.empty()) {
      for (const auto& a : args_)
        if (a.kind != ArgKind::kUser)
          return InvalidArgument(name_ + ": forward takes lora_idx/lora_scale but no lora_a_<module>, lora_b_<module>");
      return Status::Ok();
    }
    bool idx = false, scale = false;
    for (const auto& a : args_) {
      idx = idx || a.kind == ArgKind::kIdx;
      scale = scale || a.kind == ArgKind::kScale;
    }
    if (!idx || !scale || inputs_.empty())
      return InvalidArgument(name_ + ": a base taking stacked LoRA weights needs its inputs, lora_idx and lora_scale");
    for (auto& st : stacked_) {
      if (!st.has_a || !st.has_b)
        return InvalidArgument(name_ + ": forward takes only one of lora_a_" + st.key + " and lora_b_" + st.key);
      // Shapes from the layout: a packed module's own tensors are empty until bound.
      for (const auto& m : module_.named_modules()) {
        std::string key = m.name;
        std::replace(key.begin(), key.end(), '.', '_');
        if (key != st.key || m.name.empty()) continue;
        std::string name = m.name + ".weight";
        if (auto al = layout_.aliases.find(name); al != layout_.aliases.end()) name = al->second;
        for (const auto& e : layout_.entries) {
          auto dt = ToScalarType(e.dtype);
          if (e.name != name || e.shape.size() != 2 || !dt.ok()) continue;
          st.module = m.name;
          st.out = e.shape[0];
          st.in = e.shape[1];
          st.dtype = *dt;
        }
      }
      if (st.module.empty())
        return InvalidArgument(name_ + ": forward takes lora_a_" + st.key + " but the model has no module '" + st.key +
                               "' (dots as underscores) with a 2-D weight");
    }
    return Status::Ok();
  }

  Result<int64_t> Rows(const std::vector<Tensor>& inputs) const {
    if (inputs.empty() || inputs.front().shape.empty())
      return InvalidArgument(name_ + ": adapters need inputs with a batch dimension (rows first)");
    return inputs.front().shape[0];
  }

  Result<std::vector<at::Tensor>> UserArgs(const std::vector<Tensor>& inputs) const {
    std::vector<at::Tensor> args;
    args.reserve(inputs.size());
    for (const auto& in : inputs) {
      auto t = ToTorch(in);
      if (!t.ok()) return t.status();
      args.push_back(device_.is_cpu() ? *t : t->to(device_, /*non_blocking=*/true));
    }
    return args;
  }

  // An adapter tensor as a torch tensor on this model's device and dtype.
  at::Tensor AdapterTensor(const LoraWeights& w, const uint8_t* p, std::vector<int64_t> shape, at::ScalarType dtype) const {
    auto st = ToScalarType(w.dtype);
    at::Tensor t = torch::from_blob(const_cast<uint8_t*>(p), shape,
                                    torch::TensorOptions().dtype(st.ok() ? *st : at::kFloat).device(c10::Device(w.device)));
    return t.to(device_, dtype);
  }

  // Mode (b): one forward for the whole batch; slot 0 is "no adapter" (zeros).
  Result<std::vector<Tensor>> RunStacked(const std::vector<at::Tensor>& user, const std::vector<AdapterRows>& parts,
                                         int64_t rows) {
    std::vector<const LoraWeights*> slots{nullptr};
    std::vector<int64_t> idx;
    idx.reserve(static_cast<size_t>(rows));
    int64_t rmax = 1;
    for (const auto& p : parts) {
      size_t s = std::find(slots.begin(), slots.end(), p.adapter) - slots.begin();
      if (s == slots.size()) {
        slots.push_back(p.adapter);
        for (const auto& t : p.adapter->targets) rmax = std::max(rmax, t.rank);
      }
      idx.insert(idx.end(), static_cast<size_t>(p.rows), static_cast<int64_t>(s));
    }
    const int64_t n = static_cast<int64_t>(slots.size());
    at::ScalarType dtype = stacked_.front().dtype;
    auto opts = torch::TensorOptions().dtype(dtype).device(device_);
    at::Tensor scale;
    std::vector<at::Tensor> a(stacked_.size()), b(stacked_.size());
    for (size_t m = 0; m < stacked_.size(); ++m) {
      a[m] = torch::zeros({n, rmax, stacked_[m].in}, opts.dtype(stacked_[m].dtype));
      b[m] = torch::zeros({n, stacked_[m].out, rmax}, opts.dtype(stacked_[m].dtype));
    }
    std::vector<float> scales(static_cast<size_t>(n), 0.0f);
    for (int64_t s = 1; s < n; ++s) {
      const LoraWeights& w = *slots[static_cast<size_t>(s)];
      scales[static_cast<size_t>(s)] = static_cast<float>(w.scale);
      for (const auto& t : w.targets) {
        size_t m = 0;
        while (m < stacked_.size() && stacked_[m].module != t.module) ++m;
        if (m == stacked_.size())
          return FailedPrecondition(w.ref + " targets " + t.module + ", which " + name_ + " does not take stacked");
        auto dt = ToScalarType(w.dtype);
        if (device_.is_cpu() && w.device == "cpu" && dt.ok() && *dt == stacked_[m].dtype) {
          // Host to host: copy the rows straight into the slot (no tensor ops per adapter).
          const size_t es = a[m].element_size();
          auto* pa = static_cast<uint8_t*>(a[m].data_ptr()) + static_cast<size_t>(s * rmax * t.in) * es;
          std::memcpy(pa, t.a, static_cast<size_t>(t.rank * t.in) * es);
          auto* pb = static_cast<uint8_t*>(b[m].data_ptr()) + static_cast<size_t>(s * t.out * rmax) * es;
          for (int64_t row = 0; row < t.out; ++row)
            std::memcpy(pb + static_cast<size_t>(row * rmax) * es, t.b + static_cast<size_t>(row * t.rank) * es,
                        static_cast<size_t>(t.rank) * es);
          continue;
        }
        a[m][s].narrow(0, 0, t.rank).copy_(AdapterTensor(w, t.a, {t.rank, t.in}, stacked_[m].dtype));
        b[m][s].narrow(1, 0, t.rank).copy_(AdapterTensor(w, t.b, {t.out, t.rank}, stacked_[m].dtype));
      }
    }
    scale = torch::tensor(scales).to(device_, dtype);
    at::Tensor index = torch::tensor(idx, torch::TensorOptions().dtype(at::kLong)).to(device_);
    std::vector<c10::IValue> args;
    for (const auto& arg : args_) {
      switch (arg.kind) {
        case ArgKind::kUser: args.emplace_back(user[arg.index]); break;
        case ArgKind::kIdx: args.emplace_back(index); break;
        case ArgKind::kScale: args.emplace_back(scale); break;
        case ArgKind::kA: args.emplace_back(a[arg.index]); break;
        case ArgKind::kB: args.emplace_back(b[arg.index]); break;
      }
    }
    return Outputs(module_.forward(std::move(args)));
  }

  // Mode (a): a shallow copy of the module in which each targeted module is
  // copied too and its weight replaced by W + scale · B · A (a new tensor);
  // everything else is shared with the base, whose weights never change.
  Result<torch::jit::Module> Merged(const LoraWeights& w) {
    std::map<std::string, torch::jit::Module> copies;
    copies.emplace("", module_.copy());
    std::function<torch::jit::Module(const std::string&)> sub = [&](const std::string& path) {
      auto it = copies.find(path);
      if (it != copies.end()) return it->second;
      auto dot = path.rfind('.');
      torch::jit::Module parent = sub(dot == std::string::npos ? "" : path.substr(0, dot));
      std::string leaf = dot == std::string::npos ? path : path.substr(dot + 1);
      torch::jit::Module child = parent.attr(leaf).toModule().copy();
      parent.setattr(leaf, child._ivalue());
      copies.emplace(path, child);
      return child;
    };
    for (const auto& t : w.targets) {
      torch::jit::Module m = sub(t.module);
      at::Tensor weight = m.attr("weight").toTensor();
      at::Tensor a = AdapterTensor(w, t.a, {t.rank, t.in}, weight.scalar_type());
      at::Tensor b = AdapterTensor(w, t.b, {t.out, t.rank}, weight.scalar_type());
      m.setattr("weight", weight + torch::matmul(b, a) * w.scale);
    }
    return copies.at("");
  }

  Result<std::vector<Tensor>> Outputs(const c10::IValue& out) {
    std::vector<Tensor> result;
    auto add = [&](const c10::IValue& v, const std::string& name) -> Status {
      if (!v.isTensor())
        return Status(Code::kModelError, name_ + ": output '" + name + "' is a " + v.tagKind() +
                                             ", not a tensor (mms returns tensors, tuples, lists or dicts of them)");
      auto t = FromTorch(v.toTensor(), name);
      if (!t.ok()) return t.status();
      result.push_back(std::move(t).value());
      return Status::Ok();
    };
    if (out.isTensor()) {
      MMS_RETURN_IF_ERROR(add(out, "output"));
    } else if (out.isTuple()) {
      const auto& el = out.toTupleRef().elements();
      for (size_t i = 0; i < el.size(); ++i) MMS_RETURN_IF_ERROR(add(el[i], "output_" + std::to_string(i)));
    } else if (out.isList()) {
      auto list = out.toList();
      for (size_t i = 0; i < list.size(); ++i) MMS_RETURN_IF_ERROR(add(list.get(i), "output_" + std::to_string(i)));
    } else if (out.isGenericDict()) {
      for (const auto& kv : out.toGenericDict()) {
        std::string key = kv.key().isString() ? kv.key().toStringRef() : kv.key().tagKind();
        MMS_RETURN_IF_ERROR(add(kv.value(), key));
      }
    } else {
      return Status(Code::kModelError, name_ + " returned a " + out.tagKind() +
                                           "; mms returns tensors, tuples, lists or dicts of tensors");
    }
    return result;
  }

  torch::jit::Module module_;
  WeightLayout layout_;
  const std::string name_;
  std::vector<std::string> inputs_;  // the request's inputs (LoRA arguments excluded)
  std::vector<Arg> args_;            // every forward() argument, in order
  std::vector<Stacked> stacked_;     // modules whose adapter weights forward() takes stacked
  std::vector<std::pair<at::Tensor, size_t>> slots_;  // module tensors and their layout entry
  std::shared_ptr<Buffer> bound_;
  c10::Device device_{c10::kCPU};
  std::string device_str_ = "cpu";
};

Result<torch::jit::Module> LoadModule(const std::string& path, const std::string& what) {
  if (!FileExists(path)) return NotFound("no such file: " + path);
  try {
    return torch::jit::load(path, torch::kCPU);
  } catch (const std::exception& e) {
    return InvalidArgument(what + " is not a loadable TorchScript archive: " + TorchErrorMessage(e));
  }
}

// An archive's bytes in memory, for torch::jit::load.
class BytesReader final : public caffe2::serialize::ReadAdapterInterface {
 public:
  explicit BytesReader(std::string bytes) : bytes_(std::move(bytes)) {}
  size_t size() const override { return bytes_.size(); }
  size_t read(uint64_t pos, void* buf, size_t n, const char*) const override {
    if (pos >= bytes_.size()) return 0;
    n = std::min<size_t>(n, bytes_.size() - static_cast<size_t>(pos));
    std::memcpy(buf, bytes_.data() + pos, n);
    return n;
  }

 private:
  const std::string bytes_;
};

Result<HostModel> PackModule(torch::jit::Module m, const std::string& path, const HostAllocator& alloc,
                             const std::string& name);

}  // namespace

Result<HostModel> LoadPlainTorchScript(const std::string& path, const HostAllocator& alloc,
                                       const std::string& name) {
  MMS_ASSIGN_OR_RETURN(torch::jit::Module m, LoadModule(path, path));
  return PackModule(std::move(m), path, alloc, name);
}

Result<HostModel> LoadPlainTorchScriptBytes(std::string bytes, const std::string& what, const HostAllocator& alloc) {
  torch::jit::Module m;
  try {
    m = torch::jit::load(std::make_shared<BytesReader>(std::move(bytes)), torch::kCPU);
  } catch (const std::exception& e) {
    return InvalidArgument(what + " is not a loadable TorchScript archive: " + TorchErrorMessage(e));
  }
  return PackModule(std::move(m), what, alloc, "");
}

namespace {

Result<HostModel> PackModule(torch::jit::Module m, const std::string& path, const HostAllocator& alloc,
                             const std::string& name) {
  WeightLayout layout;
  std::vector<at::Tensor> sources;
  try {
    std::unordered_map<c10::TensorImpl*, std::string> seen;
    for (const auto& a : m.named_attributes(/*recurse=*/true)) {
      if (!a.value.isTensor()) continue;
      at::Tensor t = a.value.toTensor();
      if (!t.defined()) continue;
      if (auto it = seen.find(t.unsafeGetTensorImpl()); it != seen.end()) {
        layout.aliases[a.name] = it->second;
        continue;
      }
      seen[t.unsafeGetTensorImpl()] = a.name;
      MMS_ASSIGN_OR_RETURN(DType dt, FromScalarType(t.scalar_type()));
      WeightEntry e;
      e.name = a.name;
      e.dtype = dt;
      e.shape = t.sizes().vec();
      e.nbytes = static_cast<uint64_t>(t.numel()) * t.element_size();
      e.offset = (layout.total_bytes + kAlign - 1) / kAlign * kAlign;
      layout.total_bytes = e.offset + e.nbytes;
      layout.entries.push_back(e);
      sources.push_back(t.contiguous());
    }
  } catch (const std::exception& e) {
    return InvalidArgument(path + ": " + TorchErrorMessage(e));
  }
  MMS_ASSIGN_OR_RETURN(auto buf, alloc(std::max<uint64_t>(layout.total_bytes, 1)));
  for (size_t i = 0; i < sources.size(); ++i)
    if (layout.entries[i].nbytes)
      std::memcpy(buf->data() + layout.entries[i].offset, sources[i].data_ptr(), layout.entries[i].nbytes);
  sources.clear();
  auto model = std::make_unique<TorchModel>(std::move(m), std::move(layout), name.empty() ? path : name);
  MMS_RETURN_IF_ERROR(model->Init());
  MMS_RETURN_IF_ERROR(model->Bind(buf, "cpu"));
  return HostModel{buf, std::move(model)};
}

}  // namespace

Result<HostModel> LoadPackedTorchScript(const std::string& dir, const HostAllocator& alloc,
                                        const std::string& name) {
  std::string weights = JoinPath(dir, kPackedWeightsFile);
  MMS_ASSIGN_OR_RETURN(SafetensorsHeader h, ReadSafetensorsHeader(weights));
  if (h.metadata["format"] != kPackedFormat)
    return Corrupt(weights + " is not an mms packed-weights file (format '" + h.metadata["format"] + "')");
  const std::string module_path = JoinPath(dir, kPackedModuleFile);
  torch::jit::Module m;
  if (auto want = h.metadata.find(kPackedModuleChecksumKey); want != h.metadata.end()) {
    // Checked, then loaded from the bytes checked.
    auto bytes = ReadFile(module_path);
    if (!bytes.ok()) return FileExists(module_path) ? bytes.status() : NotFound("no such file: " + module_path);
    Xxh3 sum;
    sum.Update(bytes->data(), bytes->size());
    if (sum.Hex() != want->second)
      return Corrupt(module_path + " does not match the checksum it was written with (xxh3 " + sum.Hex() +
                     ", written " + want->second + "): it was changed or damaged since");
    try {
      std::istringstream in(std::move(*bytes));
      m = torch::jit::load(in, torch::kCPU);
    } catch (const std::exception& e) {
      return InvalidArgument(dir + " is not a loadable TorchScript archive: " + TorchErrorMessage(e));
    }
  } else {
    MMS_ASSIGN_OR_RETURN(m, LoadModule(module_path, dir));
  }
  WeightLayout layout;
  for (const auto& e : h.entries) {
    layout.entries.push_back({e.name, e.dtype, e.shape, e.begin, e.end - e.begin});
    layout.total_bytes = std::max(layout.total_bytes, e.end);
  }
  for (const auto& [k, v] : h.metadata)
    if (k.rfind("alias:", 0) == 0) layout.aliases[k.substr(6)] = v;
  struct stat st;
  if (::stat(weights.c_str(), &st) != 0) return IoError("cannot stat " + weights);
  uint64_t data_bytes = static_cast<uint64_t>(st.st_size) - h.data_offset;
  MMS_ASSIGN_OR_RETURN(auto buf, alloc(std::max<uint64_t>(layout.total_bytes, 1)));
  const uint64_t read = std::min(data_bytes, layout.total_bytes);
  MMS_RETURN_IF_ERROR(ReadSafetensorsData(weights, h, buf->data(), read));
  auto model = std::make_unique<TorchModel>(std::move(m), std::move(layout), name.empty() ? dir : name);
  MMS_RETURN_IF_ERROR(model->Init());
  MMS_RETURN_IF_ERROR(model->Bind(buf, "cpu"));
  return HostModel{buf, std::move(model)};
}

void ConfigureTorchThreads(int intra_op_threads) {
  if (intra_op_threads > 0) at::set_num_threads(intra_op_threads);
}

void UseOneIntraOpThreadOnThisThread() {
  // libtorch's OpenMP backend sizes a parallel region from the calling
  // thread's omp_get_max_threads(); libgomp is already loaded with libtorch.
  using SetFn = void (*)(int);
  static SetFn set = reinterpret_cast<SetFn>(dlsym(RTLD_DEFAULT, "omp_set_num_threads"));
  if (set) set(1);
}

// How to repair a version's damaged packed files: repack, from its original
// artifact while that is there; else only registering its files again can.
static std::string RepairHint(const Loader::Source& src) {
  const std::string verify = "mms model verify " + src.ref + " checks it; ";
  if (src.packed_dir.empty() || FileExists(src.artifact_path))
    return verify + "mms model repack " + src.ref +
           " writes it anew from the original artifact (while that still matches its registered SHA-256)";
  return verify + "its original artifact " + src.artifact_path +
         " is not there either, so it cannot be repacked: register the model's files again as a new version";
}

Status TorchLoader::Precheck(const Source& src, uint64_t bytes) {
  if (src.packed_dir.empty()) return Status::Ok();
  const std::string path = JoinPath(src.packed_dir, kPackedWeightsFile);
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::Ok();  // Load says what is wrong (or falls back to the plain file)
  uint8_t len[8] = {};
  struct stat st {};
  const bool read_ok = ::pread(fd, len, sizeof len, 0) == static_cast<ssize_t>(sizeof len) && ::fstat(fd, &st) == 0;
  ::close(fd);
  uint64_t header = 0;
  for (int i = 7; i >= 0; --i) header = header << 8 | len[i];  // little-endian, as safetensors
  const uint64_t size = read_ok ? static_cast<uint64_t>(st.st_size) : 0;
  if (read_ok && header <= size && size - 8 - std::min(header, size - 8) >= bytes) return Status::Ok();
  return Corrupt("the stored artifact of " + src.ref + " is damaged: " + path + " is truncated (" +
                 std::to_string(size) + " bytes; its header and " + std::to_string(bytes) +
                 " bytes of weights need more). " + RepairHint(src));
}

Result<HostModel> TorchLoader::Load(const Source& src, const HostAllocator& alloc) {
  // A version registered with packed files loads them, or fails saying they
  // are damaged: falling back to the original file would serve whatever it
  // holds now, unchecked, and hide the damage.
  Result<HostModel> r = !src.packed_dir.empty() ? LoadPackedTorchScript(src.packed_dir, alloc, src.ref)
                                                : LoadPlainTorchScript(src.artifact_path, alloc, src.ref);
  // It passed the checks at registration, so a refusal now means the stored
  // files were damaged since.
  if (!r.ok() && (r.status().code() == Code::kInvalidArgument || r.status().code() == Code::kNotFound ||
                  r.status().code() == Code::kCorrupt))
    return Corrupt("the stored artifact of " + src.ref + " is damaged: " + r.status().message() + " (" +
                   RepairHint(src) + ")");
  return r;
}

}  // namespace mms
