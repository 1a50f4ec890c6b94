// A Loader and Model for driving the pool without libtorch: weights are
// bytes filled with a per-version pattern, and Run returns a checksum of the
// buffer the model is bound to, so tests see that promotion really copied.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <string>

#include "pool/model.h"

namespace mms::testing {

class FakeLoader;

class FakeModel final : public Model {
 public:
  FakeModel(uint64_t bytes, std::atomic<bool>* fail_run, FakeLoader* loader = nullptr,
            std::atomic<bool>* fail_bind = nullptr)
      : fail_run_(fail_run), fail_bind_(fail_bind), loader_(loader) {
    layout_.entries.push_back({"w", DType::kUInt8, {static_cast<int64_t>(bytes)}, 0, bytes});
    layout_.total_bytes = bytes;
  }
  const std::vector<std::string>& input_names() const override { return inputs_; }
  const WeightLayout& layout() const override { return layout_; }
  const std::string& device() const override { return device_; }
  Status Bind(std::shared_ptr<Buffer> keep, const std::string& device) override {
    if (fail_bind_ && fail_bind_->load()) return Status(Code::kInternal, "fake rebind failed");
    bound_ = std::move(keep);
    device_ = device;
    return Status::Ok();
  }
  Result<std::vector<Tensor>> Run(const std::vector<Tensor>&) override {
    if (fail_run_ && fail_run_->load()) return Status(Code::kModelError, "fake forward failed");
    Tensor t = Tensor::Alloc("output", DType::kInt64, {1});
    int64_t sum = 0;
    for (uint64_t i = 0; i < layout_.total_bytes; ++i) sum += bound_->data()[i];
    *reinterpret_cast<int64_t*>(t.mutable_data()) = sum;
    return std::vector<Tensor>{t};
  }
  Status SaveWithoutWeights(const std::string&) override { return Status::Ok(); }
  const Buffer* bound() const { return bound_.get(); }
  ~FakeModel() override;  // waits while the loader's GateFrees is closed

 private:
  WeightLayout layout_;
  std::vector<std::string> inputs_{"x"};
  std::shared_ptr<Buffer> bound_;
  std::string device_ = "cpu";
  std::atomic<bool>* fail_run_;
  std::atomic<bool>* fail_bind_;
  FakeLoader* loader_;
};

class FakeLoader final : public Loader {
 public:
  // Versions are addressed by artifact_path = "<bytes>" (weight size).
  Result<HostModel> Load(const Source& src, const HostAllocator& alloc) override {
    {
      std::unique_lock<std::mutex> lock(mu_);
      ++loads_[src.ref];
      ++total_loads_;
      cv_.wait(lock, [&] { return !gated_ && !held_.count(src.ref); });
      if (failing_.count(src.ref)) return Status(Code::kInvalidArgument, src.ref + " is corrupt (fake)");
    }
    uint64_t bytes = std::stoull(src.artifact_path);
    auto buf = alloc(bytes);
    if (!buf.ok()) return buf.status();
    uint8_t pattern = static_cast<uint8_t>(std::hash<std::string>()(src.ref) % 200 + 1);
    std::memset((*buf)->data(), pattern, bytes);
    auto model = std::make_unique<FakeModel>(bytes, &fail_run_, this, &fail_bind_);
    (void)model->Bind(*buf, "cpu");
    return HostModel{*buf, std::move(model)};
  }
  Status Precheck(const Source& src, uint64_t) override {
    std::lock_guard<std::mutex> lock(mu_);
    return truncated_.count(src.ref) ? Status(Code::kCorrupt, src.ref + " is truncated (fake)") : Status::Ok();
  }
  // While held, loads of `ref` wait (others go on).
  void Hold(const std::string& ref, bool held) {
    std::lock_guard<std::mutex> lock(mu_);
    if (held) held_.insert(ref);
    else held_.erase(ref);
    cv_.notify_all();
  }
  void Truncate(const std::string& ref) {
    std::lock_guard<std::mutex> lock(mu_);
    truncated_.insert(ref);
  }
  int loads(const std::string& ref) {
    std::lock_guard<std::mutex> lock(mu_);
    return loads_[ref];
  }
  int total_loads() {
    std::lock_guard<std::mutex> lock(mu_);
    return total_loads_;
  }
  void Gate(bool closed) {
    std::lock_guard<std::mutex> lock(mu_);
    gated_ = closed;
    cv_.notify_all();
  }
  // While closed, destroying a model blocks (a slow free, as cudaFreeHost of GBs).
  void GateFrees(bool closed) {
    std::lock_guard<std::mutex> lock(mu_);
    frees_gated_ = closed;
    cv_.notify_all();
  }
  int frees_waiting() {
    std::lock_guard<std::mutex> lock(mu_);
    return frees_waiting_;
  }
  void WaitFree() {
    std::unique_lock<std::mutex> lock(mu_);
    ++frees_waiting_;
    cv_.wait(lock, [&] { return !frees_gated_; });
    --frees_waiting_;
  }
  void Fail(const std::string& ref, bool fail) {
    std::lock_guard<std::mutex> lock(mu_);
    if (fail) failing_.insert(ref);
    else failing_.erase(ref);
  }
  std::atomic<bool> fail_run_{false};
  std::atomic<bool> fail_bind_{false};  // every Bind fails (a rebind that cannot be done)

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::set<std::string> truncated_, held_;
  bool gated_ = false, frees_gated_ = false;
  int frees_waiting_ = 0;
  std::map<std::string, int> loads_;
  int total_loads_ = 0;
  std::set<std::string> failing_;
};

inline FakeModel::~FakeModel() {
  if (loader_) loader_->WaitFree();
}

}  // namespace mms::testing
