// TorchModel and the packed format against libtorch itself: the same inputs
// through torch::jit::load, the plain loader, the packed loader and a
// rebinding to another buffer must give bit-identical outputs.
#include <torch/script.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/paths.h"
#include "pool/torch_artifact.h"
#include "pool/torch_model.h"
#include "pool/torch_util.h"
#include "protocol/tensor_file.h"
#include "support/process.h"

#include "support/torch_doctest.h"

using namespace mms;

namespace {
std::string Data(const std::string& n) { return mms::testing::TestDataDir() + "/" + n; }

HostAllocator Alloc() {
  return [](size_t n) -> Result<std::shared_ptr<Buffer>> { return AllocateHost(n); };
}

std::vector<Tensor> Inputs(const std::string& file) {
  auto t = ReadTensorFile(Data(file));
  REQUIRE(t.ok());
  return *t;
}

// Runs the reference: libtorch directly on the original file.
std::vector<at::Tensor> Reference(const std::string& model, const std::vector<Tensor>& inputs) {
  auto m = torch::jit::load(Data(model));
  m.eval();
  std::vector<c10::IValue> args;
  for (const auto& t : inputs) args.emplace_back(ToTorch(t).value().clone());
  c10::InferenceMode guard;
  auto out = m.forward(args);
  std::vector<at::Tensor> r;
  if (out.isTensor()) r.push_back(out.toTensor());
  else if (out.isTuple())
    for (const auto& e : out.toTupleRef().elements()) r.push_back(e.toTensor());
  else if (out.isGenericDict())
    for (const auto& kv : out.toGenericDict()) r.push_back(kv.value().toTensor());
  return r;
}

void CheckSame(const std::vector<at::Tensor>& ref, const std::vector<Tensor>& got) {
  REQUIRE(ref.size() == got.size());
  for (size_t i = 0; i < ref.size(); ++i) {
    at::Tensor r = ref[i].contiguous();
    REQUIRE(static_cast<size_t>(r.nbytes()) == got[i].nbytes);
    CHECK(std::memcmp(r.data_ptr(), got[i].data.get(), got[i].nbytes) == 0);
  }
}
}  // namespace

TEST_CASE("plain, packed and rebound models match libtorch bit for bit") {
  mms::testing::TempDir dir;
  struct Case {
    const char* model;
    const char* input;
  };
  for (Case c : {Case{"rec.pt", "rec_input.json"}, Case{"tiny.pt", "tiny_input.json"},
                 Case{"tied.pt", "tiny_input.json"}, Case{"tuple_out.pt", "tiny_input.json"},
                 Case{"dict_out.pt", "tiny_input.json"}}) {
    INFO(c.model);
    auto inputs = Inputs(c.input);
    auto plain = LoadPlainTorchScript(Data(c.model), Alloc());
    REQUIRE(plain.ok());
    std::vector<InputSpec> specs;
    for (const auto& n : plain->model->input_names()) specs.push_back({n, std::nullopt, std::nullopt});
    auto ordered = MatchInputs(specs, inputs, c.model).value();
    auto ref = Reference(c.model, ordered);
    auto out = plain->model->Run(ordered);
    REQUIRE(out.ok());
    CheckSame(ref, *out);

    std::string packed = dir / (std::string(c.model) + ".packed");
    auto info = PackTorchScript(Data(c.model), packed);
    REQUIRE(info.ok());
    CHECK(info->packed);
    // The weight-less module is small; the weights file holds the bytes.
    CHECK(std::filesystem::file_size(packed + "/module.pt") < std::filesystem::file_size(Data(c.model)) + 4096);
    auto pk = LoadPackedTorchScript(packed, Alloc());
    REQUIRE(pk.ok());
    auto pout = pk->model->Run(ordered);
    REQUIRE(pout.ok());
    CheckSame(ref, *pout);

    // Promotion: copy to another buffer and rebind; the old one is released.
    auto other = AllocateHost(pk->model->layout().total_bytes);
    std::memcpy(other->data(), pk->weights->data(), pk->model->layout().total_bytes);
    std::weak_ptr<Buffer> old = pk->weights;
    pk->weights.reset();
    REQUIRE(pk->model->Bind(other, "cpu").ok());
    CHECK(old.expired());
    auto rout = pk->model->Run(ordered);
    REQUIRE(rout.ok());
    CheckSame(ref, *rout);
  }
}

TEST_CASE("tuple and dict outputs are named") {
  auto tup = LoadPlainTorchScript(Data("tuple_out.pt"), Alloc()).value();
  auto in = Inputs("tiny_input.json");
  auto t = tup.model->Run(in).value();
  REQUIRE(t.size() == 2);
  CHECK(t[0].name == "output_0");
  CHECK(t[1].name == "output_1");
  auto dict = LoadPlainTorchScript(Data("dict_out.pt"), Alloc()).value();
  auto d = dict.model->Run(in).value();
  REQUIRE(d.size() == 2);
  CHECK(d[0].name == "scores");
  CHECK(d[1].name == "top");
  CHECK(d[1].dtype == DType::kInt64);
}

TEST_CASE("tied weights are stored once") {
  mms::testing::TempDir dir;
  auto info = PackTorchScript(Data("tied.pt"), dir / "p");
  REQUIRE(info.ok());
  CHECK(info->tensors == 1);
  CHECK(info->weight_bytes == 4 * 4 * 4);
  auto h = ReadSafetensorsHeader(dir / "p/weights.safetensors").value();
  CHECK(h.metadata.count("alias:dec") + h.metadata.count("alias:enc") == 1);
  CHECK(h.data_offset % 64 == 0);
}

TEST_CASE("broken artifacts and inputs give clear errors, never a crash") {
  mms::testing::TempDir dir;
  auto not_model = LoadPlainTorchScript(Data("not_a_model.pt"), Alloc());
  CHECK(not_model.status().code() == Code::kInvalidArgument);
  CHECK(not_model.status().message().find("not a loadable TorchScript archive") != std::string::npos);
  // Truncated archive.
  {
    std::ifstream in(Data("rec.pt"), std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), {});
    std::ofstream(dir / "trunc.pt", std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  }
  CHECK(LoadPlainTorchScript(dir / "trunc.pt", Alloc()).status().code() == Code::kInvalidArgument);
  // Truncated packed weights: the loader's precheck (before the pool evicts
  // anything for the load) sees it too; an intact one passes.
  auto packed = PackTorchScript(Data("rec.pt"), dir / "p");
  REQUIRE(packed.ok());
  TorchLoader loader;
  Loader::Source src{"rec:1", Data("rec.pt"), dir / "p"};
  const uint64_t weight_bytes = packed->weight_bytes;  // as registered
  REQUIRE(weight_bytes > 1000);
  CHECK(loader.Precheck(src, weight_bytes).ok());
  std::filesystem::resize_file(dir / "p/weights.safetensors", 1000);
  Status pre = loader.Precheck(src, weight_bytes);
  CHECK(pre.code() == Code::kCorrupt);
  CHECK(pre.message().find("is truncated") != std::string::npos);
  auto bad = LoadPackedTorchScript(dir / "p", Alloc());
  CHECK_FALSE(bad.ok());
  CHECK(bad.status().message().find("weights.safetensors") != std::string::npos);
  // Non-tensor argument.
  auto intarg = LoadPlainTorchScript(Data("int_arg.pt"), Alloc());
  CHECK(intarg.status().message().find("forward argument 'k' has type int") != std::string::npos);
  // forward raising.
  auto thr = LoadPlainTorchScript(Data("throws.pt"), Alloc()).value();
  Tensor neg = Tensor::Alloc("x", DType::kFloat32, {1, 4});
  reinterpret_cast<float*>(neg.mutable_data())[0] = -1;
  auto r = thr.model->Run({neg});
  CHECK(r.status().code() == Code::kModelError);
  CHECK(r.status().message().find("negative feature values are not supported") != std::string::npos);
  CHECK(r.status().message().find('\n') == std::string::npos);
  // Sample input that the model cannot take is refused at registration.
  auto sample = PackTorchScript(Data("tiny.pt"), "", Data("tiny_bad_shape.json"));
  CHECK(sample.status().message().find("fails on its sample input") != std::string::npos);
  auto good = PackTorchScript(Data("rec.pt"), "", Data("rec_input.json"));
  REQUIRE(good.ok());
  CHECK(*good->inputs[0].dtype == DType::kInt64);
  CHECK(*good->inputs[1].shape == std::vector<int64_t>{2, 8});
}

TEST_CASE("a packed model of 16 MiB or more is hashed on a second thread as it is read: the same outputs, and damage anywhere refused") {
  // From 16 MiB on, a second thread hashes each 8 MiB piece while the next is
  // read. An intact load matching libtorch shows that the hash waited for
  // the bytes it hashed (a fresh buffer hashed early would not match); a
  // flipped byte in the first, a middle and the last piece shows that every
  // piece is covered.
  mms::testing::TempDir dir;
  REQUIRE(mms::testing::Run({mms::testing::BinDir() + "/mms-gen-testdata", dir.path(), "--big", "20"}, 120).exit_code ==
          0);
  const std::string model = dir / "big.pt", packed = dir / "p";
  auto info = PackTorchScript(model, packed);
  REQUIRE(info.ok());
  REQUIRE(info->weight_bytes >= (20ull << 20));
  std::vector<Tensor> inputs;
  {
    auto first = LoadPackedTorchScript(packed, Alloc());
    REQUIRE_MESSAGE(first.ok(), first.status().ToString());
    std::vector<InputSpec> specs;
    for (const auto& n : first->model->input_names()) specs.push_back({n, std::nullopt, std::nullopt});
    inputs = MatchInputs(specs, Inputs("rec_input.json"), "big.pt").value();
  }
  std::vector<at::Tensor> ref;
  {
    auto m = torch::jit::load(model);
    m.eval();
    std::vector<c10::IValue> args;
    for (const auto& t : inputs) args.emplace_back(ToTorch(t).value().clone());
    c10::InferenceMode guard;
    ref.push_back(m.forward(args).toTensor());
  }
  for (int i = 0; i < 3; ++i) {
    auto pk = LoadPackedTorchScript(packed, Alloc());
    REQUIRE_MESSAGE(pk.ok(), pk.status().ToString());
    auto out = pk->model->Run(inputs);
    REQUIRE(out.ok());
    CheckSame(ref, *out);
  }
  const std::string weights = packed + "/weights.safetensors";
  auto h = ReadSafetensorsHeader(weights);
  REQUIRE(h.ok());
  const std::string intact = ReadFile(weights).value();
  const uint64_t data_end = h->data_offset + info->weight_bytes;
  REQUIRE(data_end <= intact.size());
  for (uint64_t at : std::vector<uint64_t>{h->data_offset + 100, h->data_offset + (10ull << 20) + 3, data_end - 1}) {
    INFO("flipped byte at " << at);
    std::string copy = intact;
    copy[at] = static_cast<char>(copy[at] ^ 0x01);
    std::ofstream(weights, std::ios::binary | std::ios::trunc) << copy;
    auto bad = LoadPackedTorchScript(packed, Alloc());
    REQUIRE_FALSE(bad.ok());
    CHECK(bad.status().code() == Code::kCorrupt);
    CHECK(bad.status().message().find("does not match the checksum it was written with") != std::string::npos);
  }
  // Cut short in its last piece: refused as truncated (by the header's own
  // check, before any read; a file that shrinks during the read is
  // tensor_file_test's "read as it is hashed" case).
  std::ofstream(weights, std::ios::binary | std::ios::trunc) << intact.substr(0, data_end - 4096);
  auto cut = LoadPackedTorchScript(packed, Alloc());
  REQUIRE_FALSE(cut.ok());
  CHECK(cut.status().message().find("truncated") != std::string::npos);
}
