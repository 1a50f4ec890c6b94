// LoRA execution against the ground truth: every adapter merged into the
// base offline (testdata's lora_merged_*.pt). Mode (a): any base, the delta
// applied out of place; mode (b): a base taking stacked adapter weights, one
// forward for a batch mixing adapters. The base's weights never change.
#include <torch/script.h>

#include <filesystem>

#include "lora/adapter.h"
#include "lora/adapter_model.h"
#include "pool/torch_artifact.h"
#include "pool/torch_model.h"
#include "protocol/tensor_file.h"
#include "support/process.h"

#include "support/torch_doctest.h"

using namespace mms;

namespace {

std::string Data(const std::string& n) { return testing::TestDataDir() + "/" + n; }

Result<std::shared_ptr<Buffer>> Host(size_t n) { return AllocateHost(n); }

// Packs `file` into `dir` and loads the packed form (the daemon's path).
HostModel Packed(const std::string& file, const std::string& dir) {
  auto info = PackTorchScript(Data(file), dir);
  REQUIRE_MESSAGE(info.ok(), info.status().ToString());
  auto hm = LoadPackedTorchScript(dir, Host, file);
  REQUIRE_MESSAGE(hm.ok(), hm.status().ToString());
  return std::move(hm).value();
}

// Checks an adapter against the packed base and loads it as the pool would.
HostModel LoadAdapter(const std::string& name, const std::string& base_dir, const std::vector<std::string>& stacked,
                      const std::string& out_dir) {
  auto base = ReadLoraBase("base:1", base_dir + "/weights.safetensors", stacked);
  REQUIRE(base.ok());
  auto checked = CheckAdapter(Data("adapters/" + name), *base);
  REQUIRE_MESSAGE(checked.ok(), checked.status().ToString());
  std::filesystem::create_directories(out_dir);
  REQUIRE(WritePackedAdapter(out_dir + "/" + kAdapterWeightsFile, *checked).ok());
  AdapterLoader loader;
  auto hm = loader.Load({name, "", out_dir}, Host);
  REQUIRE_MESSAGE(hm.ok(), hm.status().ToString());
  return std::move(hm).value();
}

const LoraWeights* W(const HostModel& adapter) { return &static_cast<AdapterModel*>(adapter.model.get())->weights(); }

std::vector<Tensor> Run(Model& m, const std::vector<Tensor>& in) {
  auto out = m.Run(in);
  REQUIRE_MESSAGE(out.ok(), out.status().ToString());
  return *out;
}

// How close a result must be to the offline merge, by dtype: a few units in
// the last place of the format, as the delta is summed in another order (and,
// below float32, rounded at each layer).
double Tolerance(DType d) {
  switch (d) {
    case DType::kFloat64: return 1e-12;
    case DType::kFloat16: return 4e-3;    // 11-bit significand
    case DType::kBFloat16: return 3e-2;   // 8-bit significand
    default: return 1e-5;                 // float32
  }
}

void Close(const Tensor& got, const Tensor& want, int64_t first_row, const std::string& what) {
  auto g = TensorToDoubles(got), w = TensorToDoubles(want);
  int64_t cols = want.shape[1];
  REQUIRE(static_cast<int64_t>(g.size()) >= (first_row + want.shape[0]) * cols);
  double worst = 0;
  for (size_t i = 0; i < w.size(); ++i)
    worst = std::max(worst, std::abs(g[static_cast<size_t>(first_row * cols) + i] - w[i]) / (1 + std::abs(w[i])));
  INFO(what << ": worst relative difference " << worst << " (" << DTypeName(want.dtype) << ")");
  CHECK(got.dtype == want.dtype);
  CHECK(worst < Tolerance(want.dtype));
}

std::vector<Tensor> Repeat(const std::vector<Tensor>& in, int times) {
  const Tensor& x = in.front();
  Tensor out = Tensor::Alloc(x.name, x.dtype, {x.shape[0] * times, x.shape[1]});
  for (int i = 0; i < times; ++i) std::memcpy(out.mutable_data() + i * x.nbytes, x.data.get(), x.nbytes);
  return {out};
}

}  // namespace

TEST_CASE("lora mode (a): any base runs an adapter out of place, equal to the offline merge, the base never drifts") {
  testing::TempDir tmp;
  HostModel base = Packed("lora_base.pt", tmp / "base");
  auto x = ReadTensorFile(Data("lora_input.json")).value();
  auto plain = Run(*base.model, x);
  for (const char* name : {"a1", "a2", "a3"}) {
    HostModel adapter = LoadAdapter(name, tmp / "base", {}, tmp / name);
    auto merged = LoadPlainTorchScript(Data(std::string("lora_merged_") + name + ".pt"), Host);
    REQUIRE(merged.ok());
    auto want = Run(*merged->model, x);
    for (int rep = 0; rep < 3; ++rep) {
      // A plain base takes one adapter for the whole request: its rows are not counted (0 here).
      auto got = base.model->RunWithAdapters(x, {AdapterRows{W(adapter), rep == 2 ? 0 : 3}});
      REQUIRE_MESSAGE(got.ok(), got.status().ToString());
      Close(got->front(), want.front(), 0, name);
      auto again = Run(*base.model, x);  // the base's own weights are untouched
      CHECK(std::memcmp(again.front().data.get(), plain.front().data.get(), plain.front().nbytes) == 0);
    }
  }
  // Without stacked inputs a base cannot mix adapters in one forward.
  HostModel a1 = LoadAdapter("a1", tmp / "base", {}, tmp / "m1");
  HostModel a2 = LoadAdapter("a2", tmp / "base", {}, tmp / "m2");
  auto mixed = base.model->RunWithAdapters(Repeat(x, 2), {AdapterRows{W(a1), 3}, AdapterRows{W(a2), 3}});
  REQUIRE_FALSE(mixed.ok());
  CHECK(mixed.status().message().find("stacked") != std::string::npos);
}

TEST_CASE("lora mode (b): one batch mixing adapters and plain rows, each row equal to its offline merge") {
  testing::TempDir tmp;
  HostModel multi = Packed("lora_multi.pt", tmp / "multi");
  REQUIRE(multi.model->stacked_lora_modules() == std::vector<std::string>{"q", "v"});
  REQUIRE(multi.model->input_names() == std::vector<std::string>{"x"});  // LoRA arguments are not request inputs
  auto x = ReadTensorFile(Data("lora_input.json")).value();
  auto base = LoadPlainTorchScript(Data("lora_base.pt"), Host);
  REQUIRE(base.ok());
  auto plain = Run(*base->model, x);
  Close(Run(*multi.model, x).front(), plain.front(), 0, "no adapter");  // empty slot: the base itself
  HostModel a1 = LoadAdapter("a1", tmp / "multi", {"q", "v"}, tmp / "a1");
  HostModel a2 = LoadAdapter("a2", tmp / "multi", {"q", "v"}, tmp / "a2");  // rank 2 beside rank 4: zero-padded
  auto m1 = LoadPlainTorchScript(Data("lora_merged_a1.pt"), Host);
  auto m2 = LoadPlainTorchScript(Data("lora_merged_a2.pt"), Host);
  REQUIRE((m1.ok() && m2.ok()));
  auto want1 = Run(*m1->model, x), want2 = Run(*m2->model, x);
  auto got = multi.model->RunWithAdapters(
      Repeat(x, 4), {AdapterRows{W(a1), 3}, AdapterRows{W(a2), 3}, AdapterRows{nullptr, 3}, AdapterRows{W(a1), 3}});
  REQUIRE_MESSAGE(got.ok(), got.status().ToString());
  REQUIRE(got->front().shape == std::vector<int64_t>{12, 4});
  Close(got->front(), want1.front(), 0, "a1 rows");
  Close(got->front(), want2.front(), 3, "a2 rows");
  Close(got->front(), plain.front(), 6, "plain rows");
  Close(got->front(), want1.front(), 9, "a1 again");
  // Parts that do not cover the rows are refused.
  CHECK_FALSE(multi.model->RunWithAdapters(x, {AdapterRows{W(a1), 2}}).ok());
}

TEST_CASE("lora in bfloat16: both modes within bfloat16's tolerance of the offline merge") {
  testing::TempDir tmp;
  auto x = ReadTensorFile(Data("lora_input_bf16.json")).value();
  REQUIRE(x.front().dtype == DType::kBFloat16);
  auto merged = LoadPlainTorchScript(Data("lora_merged_a1_bf16.pt"), Host);
  REQUIRE(merged.ok());
  auto want = Run(*merged->model, x);
  REQUIRE(want.front().dtype == DType::kBFloat16);
  // Mode (a).
  HostModel base = Packed("lora_base_bf16.pt", tmp / "base");
  auto plain = Run(*base.model, x);
  HostModel a = LoadAdapter("a1_bf16", tmp / "base", {}, tmp / "a");
  CHECK(W(a)->dtype == DType::kBFloat16);
  auto got = base.model->RunWithAdapters(x, {AdapterRows{W(a), 3}});
  REQUIRE_MESSAGE(got.ok(), got.status().ToString());
  Close(got->front(), want.front(), 0, "mode (a)");
  // Mode (b): a plain row block and an adapter's in one batch.
  HostModel multi = Packed("lora_multi_bf16.pt", tmp / "multi");
  HostModel am = LoadAdapter("a1_bf16", tmp / "multi", {"q", "v"}, tmp / "am");
  auto mixed = multi.model->RunWithAdapters(Repeat(x, 2), {AdapterRows{nullptr, 3}, AdapterRows{W(am), 3}});
  REQUIRE_MESSAGE(mixed.ok(), mixed.status().ToString());
  Close(mixed->front(), plain.front(), 0, "mode (b), no adapter");
  Close(mixed->front(), want.front(), 3, "mode (b), a1_bf16");
  // A float32 adapter does not fit a bfloat16 base: refused at registration.
  auto lb = ReadLoraBase("base:1", tmp / "base/weights.safetensors", {});
  REQUIRE(lb.ok());
  auto wrong = CheckAdapter(Data("adapters/a1"), *lb);
  REQUIRE_FALSE(wrong.ok());
  CHECK(wrong.status().message().find("convert the adapter to bfloat16") != std::string::npos);
}
