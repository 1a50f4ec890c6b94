// Generates the TorchScript models and fixtures the tests, benchmarks and
// demo use — built from C++ with libtorch, so the repository holds no opaque
// blobs. Deterministic: the same seed gives bit-identical files.
//
//   mms-gen-testdata OUT_DIR                       the test fixtures
//   mms-gen-testdata OUT_DIR --customers N --size-kb S [--prefix customer]
//                                                  N recommendation models of ~S KiB each
//   mms-gen-testdata OUT_DIR --big MB              one rec model of ~MB MiB (bench)
//   mms-gen-testdata OUT_DIR --lora-base W         a base W wide taking stacked LoRA weights (bench)
#include <torch/script.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <cstdio>
#include <cstring>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <string>

#include "protocol/tensor_file.h"

namespace {

std::string out_dir;

void Save(torch::jit::Module& m, const std::string& name) {
  m.save(out_dir + "/" + name);
}

void WriteText(const std::string& name, const std::string& text) {
  std::ofstream(out_dir + "/" + name) << text;
}

// y = x @ w + b, x: [batch, 4] float32 → [batch, 3].
torch::jit::Module Tiny(int seed, float scale = 1.0f) {
  torch::manual_seed(seed);
  torch::jit::Module m("Tiny");
  m.register_parameter("w", torch::randn({4, 3}) * scale, false);
  m.register_parameter("b", torch::randn({3}), false);
  m.define(R"(
def forward(self, x):
    return torch.matmul(x, self.w) + self.b
)");
  return m;
}

// A small recommendation model: embedding lookup (ids) mean-pooled, concatenated
// with dense features, through an MLP submodule; returns per-item scores.
//   ids: int64 [batch, k], dense: float32 [batch, 8] → scores float32 [batch, items]
torch::jit::Module Rec(int seed, int64_t vocab, int64_t dim, int64_t hidden, int64_t items) {
  torch::manual_seed(seed);
  torch::jit::Module mlp("Mlp");
  mlp.register_parameter("w1", torch::randn({dim + 8, hidden}) * 0.1, false);
  mlp.register_parameter("b1", torch::zeros({hidden}), false);
  mlp.register_parameter("w2", torch::randn({hidden, items}) * 0.1, false);
  mlp.register_buffer("temperature", torch::ones({1}));
  mlp.define(R"(
def forward(self, h):
    h = torch.relu(torch.matmul(h, self.w1) + self.b1)
    return torch.matmul(h, self.w2) / self.temperature
)");
  torch::jit::Module m("Rec");
  m.register_parameter("emb", torch::randn({vocab, dim}) * 0.1, false);
  m.register_module("mlp", mlp);
  m.define(R"(
def forward(self, ids, dense):
    e = torch.index_select(self.emb, 0, ids.reshape(-1)).reshape(ids.size(0), ids.size(1), -1).mean(1)
    return self.mlp.forward(torch.cat([e, dense], 1))
)");
  return m;
}


// ---- LoRA fixtures: a base of three Linear-like submodules (q, v, o: weight
// [out, in], bias [out]), the same base taking stacked adapter weights
// (S-LoRA style), PEFT adapter directories, and each adapter merged into the
// base offline (the reference outputs).
constexpr int64_t kLoraIn = 16, kLoraHidden = 16, kLoraOut = 4;

torch::jit::Module LoraLinear(const std::string& cls, int64_t in, int64_t out) {
  torch::jit::Module m(cls);
  m.register_parameter("weight", torch::randn({out, in}) * 0.3, false);
  m.register_parameter("bias", torch::randn({out}) * 0.1, false);
  m.define(R"(
def forward(self, x):
    return torch.matmul(x, self.weight.t()) + self.bias
)");
  return m;
}

// multi: forward also takes lora_idx [rows] int64, lora_scale [slots] and, per
// exposed target t in (q, v), lora_a_t [slots, r, in] and lora_b_t [slots, out, r].
torch::jit::Module LoraBase(bool multi, const std::map<std::string, torch::Tensor>& merged = {},
                            int64_t in = kLoraIn, int64_t hidden = kLoraHidden) {
  torch::manual_seed(21);
  torch::jit::Module m(multi ? "LoraMultiBase" : "LoraBase");
  m.register_module("q", LoraLinear("LoraQ", in, hidden));
  m.register_module("v", LoraLinear("LoraV", hidden, hidden));
  m.register_module("o", LoraLinear("LoraO", hidden, kLoraOut));
  for (const auto& [name, w] : merged) m.attr(name).toModule().setattr("weight", w);
  if (!multi) {
    m.define(R"(
def forward(self, x):
    h = torch.relu(self.q.forward(x))
    h = torch.relu(self.v.forward(h))
    return self.o.forward(h)
)");
  } else {
    m.define(R"(
def lora(self, x, a, b, idx, scale):
    ax = torch.bmm(a.index_select(0, idx), x.unsqueeze(2))
    return torch.bmm(b.index_select(0, idx), ax).squeeze(2) * scale.index_select(0, idx).unsqueeze(1)

def forward(self, x, lora_idx, lora_scale, lora_a_q, lora_b_q, lora_a_v, lora_b_v):
    h = torch.relu(self.q.forward(x) + self.lora(x, lora_a_q, lora_b_q, lora_idx, lora_scale))
    h = torch.relu(self.v.forward(h) + self.lora(h, lora_a_v, lora_b_v, lora_idx, lora_scale))
    return self.o.forward(h)
)");
  }
  return m;
}

mms::Tensor ToMms(const torch::Tensor& t, const std::string& name) {
  torch::Tensor c = t.contiguous();
  mms::DType dt = c.scalar_type() == torch::kFloat64    ? mms::DType::kFloat64
                  : c.scalar_type() == torch::kFloat16  ? mms::DType::kFloat16
                  : c.scalar_type() == torch::kBFloat16 ? mms::DType::kBFloat16
                                                        : mms::DType::kFloat32;
  std::vector<int64_t> shape(c.sizes().begin(), c.sizes().end());
  mms::Tensor out = mms::Tensor::Alloc(name, dt, shape);
  std::memcpy(out.mutable_data(), c.data_ptr(), out.nbytes);
  return out;
}

struct AdapterSpec {
  std::string dir;
  int64_t rank = 4, file_rank = 4;
  double alpha = 8;
  std::vector<std::string> targets, config_targets;
  torch::ScalarType dtype = torch::kFloat32;
  int64_t a_in_override = 0;  // a wrong input width for one target (bad fixture)
  bool write_weights = true;
  bool rslora = false;
};

// Writes a PEFT adapter directory; returns the merged weights (target → W + scale·B·A).
std::map<std::string, torch::Tensor> WriteAdapter(const AdapterSpec& a, int seed) {
  torch::manual_seed(100 + seed);
  std::string dir = out_dir + "/adapters/" + a.dir;
  std::filesystem::create_directories(dir);
  nlohmann::json cfg = {{"peft_type", "LORA"},     {"r", a.rank},        {"lora_alpha", a.alpha},
                        {"target_modules", a.config_targets.empty() ? a.targets : a.config_targets},
                        {"lora_dropout", 0.0},     {"bias", "none"},     {"fan_in_fan_out", false},
                        {"use_rslora", a.rslora},  {"task_type", nullptr}};
  std::ofstream(dir + "/adapter_config.json") << cfg.dump(2);
  auto base = LoraBase(false);
  std::vector<mms::Tensor> tensors;
  std::map<std::string, torch::Tensor> merged;
  double scale = a.rslora ? a.alpha / std::sqrt(static_cast<double>(a.rank)) : a.alpha / static_cast<double>(a.rank);
  for (const auto& t : a.targets) {
    torch::Tensor w = base.attr(t).toModule().attr("weight").toTensor();
    int64_t out = w.size(0), in = a.a_in_override ? a.a_in_override : w.size(1);
    torch::Tensor A = (torch::randn({a.file_rank, in}) * 0.2).to(a.dtype);
    torch::Tensor B = (torch::randn({out, a.file_rank}) * 0.2).to(a.dtype);
    std::string key = "base_model.model." + t;
    tensors.push_back(ToMms(A, key + ".lora_A.weight"));
    tensors.push_back(ToMms(B, key + ".lora_B.weight"));
    if (a.file_rank == a.rank && !a.a_in_override)
      merged[t] = w + scale * torch::matmul(B.to(torch::kFloat32), A.to(torch::kFloat32));
  }
  if (a.write_weights) {
    mms::Status st = mms::WriteSafetensorsFile(dir + "/adapter_model.safetensors", tensors);
    if (!st.ok()) std::cerr << st.ToString() << "\n";
  }
  return merged;
}

void GenerateLora() {
  auto base = LoraBase(false);
  Save(base, "lora_base.pt");
  auto multi = LoraBase(true);
  Save(multi, "lora_multi.pt");
  auto input = [](const std::string& dtype) {
    std::string s = "{\"x\": {\"dtype\": \"" + dtype + "\", \"shape\": [3, 16], \"data\": [";
    for (int i = 0; i < 48; ++i) s += (i ? "," : "") + std::to_string(((i * 7) % 11 - 5) * 0.1);
    return s + "]}}";
  };
  WriteText("lora_input.json", input("float32"));
  // The same in bfloat16 (the dtype LLM fine-tunes ship in): bases, an adapter
  // with bfloat16 weights, and its offline merge (in float32, then rounded).
  auto bf16 = [](torch::jit::Module m) {
    m.to(torch::kBFloat16);
    return m;
  };
  auto base_bf16 = bf16(LoraBase(false));
  Save(base_bf16, "lora_base_bf16.pt");
  auto multi_bf16 = bf16(LoraBase(true));
  Save(multi_bf16, "lora_multi_bf16.pt");
  WriteText("lora_input_bf16.json", input("bfloat16"));
  AdapterSpec b1;
  b1.dir = "a1_bf16";
  b1.targets = {"q", "v"};
  b1.dtype = torch::kBFloat16;
  auto merged_bf16 = bf16(LoraBase(false, WriteAdapter(b1, 20)));
  Save(merged_bf16, "lora_merged_a1_bf16.pt");
  // Good adapters, each with its offline merge as a plain model.
  std::vector<AdapterSpec> good(3);
  good[0].dir = "a1";
  good[0].targets = {"q", "v"};
  good[1].dir = "a2";
  good[1].rank = good[1].file_rank = 2;
  good[1].alpha = 4;
  good[1].targets = {"q"};
  good[2].dir = "a3";  // also targets o, which the stacked base does not expose
  good[2].rank = good[2].file_rank = 8;
  good[2].alpha = 16;
  good[2].rslora = true;
  good[2].targets = {"q", "v", "o"};
  for (size_t i = 0; i < good.size(); ++i) {
    auto merged = WriteAdapter(good[i], static_cast<int>(i));
    auto m = LoraBase(false, merged);
    Save(m, "lora_merged_" + good[i].dir + ".pt");
  }
  // Bad adapters: each refused at registration.
  AdapterSpec rank;  // config says 4, the tensors have rank 2
  rank.dir = "bad_rank";
  rank.file_rank = 2;
  rank.targets = {"q"};
  WriteAdapter(rank, 10);
  AdapterSpec shape;  // A is [4, 12] but q takes 16 inputs
  shape.dir = "bad_shape";
  shape.targets = {"q"};
  shape.a_in_override = 12;
  WriteAdapter(shape, 11);
  AdapterSpec target;  // targets a module the base does not have
  target.dir = "bad_target";
  target.targets = {"q"};
  target.config_targets = {"q", "k_proj"};
  WriteAdapter(target, 12);
  AdapterSpec dtype;  // float64 weights for a float32 base
  dtype.dir = "bad_dtype";
  dtype.targets = {"q"};
  dtype.dtype = torch::kFloat64;
  WriteAdapter(dtype, 13);
  AdapterSpec missing;  // no adapter_model.safetensors
  missing.dir = "bad_missing";
  missing.targets = {"q"};
  missing.write_weights = false;
  WriteAdapter(missing, 14);
}

void Generate() {
  auto tiny = Tiny(1);
  Save(tiny, "tiny.pt");
  auto tiny2 = Tiny(2);
  Save(tiny2, "tiny_v2.pt");
  auto tiny3 = Tiny(3, 2.0f);
  Save(tiny3, "tiny_v3.pt");
  // Same interface as tiny, ~10 ms slower per call (canary p99 tests).
  torch::jit::Module tiny_slow("TinySlow");
  torch::manual_seed(1);
  tiny_slow.register_parameter("w", torch::randn({4, 3}), false);
  tiny_slow.register_parameter("b", torch::randn({3}), false);
  tiny_slow.register_buffer("m", torch::eye(96) * 0.9);
  tiny_slow.define(R"(
def forward(self, x):
    h = torch.ones(96, 96)
    for i in range(300):
        h = torch.tanh(torch.matmul(h, self.m))
    return torch.matmul(x, self.w) + self.b + 0.0 * h.sum()
)");
  Save(tiny_slow, "tiny_slow.pt");
  WriteText("tiny_input.json",
            R"({"x": {"dtype": "float32", "shape": [2, 4], "data": [1, 2, 3, 4, 0.5, -1, 0, 2]}})");
  WriteText("tiny_bad_dtype.json",
            R"({"x": {"dtype": "int64", "shape": [2, 4], "data": [1, 2, 3, 4, 5, 6, 7, 8]}})");
  WriteText("tiny_bad_shape.json",
            R"({"x": {"dtype": "float32", "shape": [2, 5], "data": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}})");
  WriteText("tiny_missing.json", R"({"y": {"dtype": "float32", "shape": [1, 4], "data": [1, 2, 3, 4]}})");
  WriteText("tiny_extra.json",
            R"({"x": {"dtype": "float32", "shape": [1, 4], "data": [1, 2, 3, 4]},
                "z": {"dtype": "float32", "shape": [1], "data": [0]}})");

  auto rec = Rec(7, 1000, 16, 32, 10);
  Save(rec, "rec.pt");
  WriteText("rec_input.json",
            R"({"ids": {"dtype": "int64", "shape": [2, 3], "data": [1, 5, 9, 100, 200, 300]},
                "dense": {"dtype": "float32", "shape": [2, 8], "data": [0,1,0,1,0,1,0,1, 1,1,1,1,0,0,0,0]}})");

  // Tuple, dict outputs.
  torch::jit::Module tup("Tup");
  tup.register_parameter("w", torch::ones({4, 2}), false);
  tup.define(R"(
def forward(self, x):
    y = torch.matmul(x, self.w)
    return (y, y.sum(1))
)");
  Save(tup, "tuple_out.pt");
  torch::jit::Module dict("Dict");
  dict.register_parameter("w", torch::ones({4, 2}), false);
  dict.define(R"(
def forward(self, x) -> Dict[str, Tensor]:
    y = torch.matmul(x, self.w)
    return {"scores": y, "top": torch.argmax(y, 1)}
)");
  Save(dict, "dict_out.pt");

  // A model whose forward raises on negative inputs (a model bug, not bad input).
  torch::jit::Module throws("Throws");
  throws.register_parameter("w", torch::ones({4, 3}), false);
  throws.define(R"(
def forward(self, x):
    assert not bool(torch.any(x < 0)), "negative feature values are not supported"
    return torch.matmul(x, self.w)
)");
  Save(throws, "throws.pt");

  // An output the wire format cannot carry: 17 dimensions (the protocol's limit is 16).
  torch::jit::Module manydims("ManyDims");
  manydims.register_parameter("w", torch::ones({4, 1}), false);
  manydims.define(R"(
def forward(self, x):
    return torch.matmul(x, self.w).reshape([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, -1])
)");
  Save(manydims, "many_dims.pt");

  // forward(x, k: int): not servable (non-tensor argument).
  torch::jit::Module intarg("IntArg");
  intarg.register_parameter("w", torch::ones({4, 3}), false);
  intarg.define(R"(
def forward(self, x, k: int):
    return torch.matmul(x, self.w) * k
)");
  Save(intarg, "int_arg.pt");

  // Tied weights: two attributes, one tensor.
  torch::jit::Module tied("Tied");
  auto w = torch::randn({4, 4});
  tied.register_parameter("enc", w, false);
  tied.register_parameter("dec", w, false);
  tied.define(R"(
def forward(self, x):
    return torch.matmul(torch.matmul(x, self.enc), self.dec.t())
)");
  Save(tied, "tied.pt");

  // Slow: a few hundred ms of CPU per call (drain and concurrency tests).
  torch::jit::Module slow("Slow");
  slow.register_parameter("w", torch::eye(256) * 0.5, false);
  slow.define(R"(
def forward(self, x):
    y = x
    for i in range(400):
        y = torch.tanh(torch.matmul(y, self.w) + x)
    return y
)");
  Save(slow, "slow.pt");
  WriteText("slow_input.json", "{\"x\": {\"dtype\": \"float32\", \"shape\": [64, 256], \"data\": [" +
                                   [] {
                                     std::string s;
                                     for (int i = 0; i < 64 * 256; ++i) s += (i ? ",0." : "0.") + std::to_string(i % 10);
                                     return s;
                                   }() +
                                   "]}}");

  // Rows depend on each other (centered over the batch): must not be batched.
  torch::jit::Module mix("BatchMix");
  mix.register_parameter("w", torch::ones({4, 3}), false);
  mix.define(R"(
def forward(self, x):
    return torch.matmul(x - x.mean(0), self.w)
)");
  Save(mix, "batch_mix.pt");
  // The same over token ids (int64 [batch, 3] into a 10-row table) and over
  // bfloat16: the registration check must vary every dtype, not only float32.
  torch::jit::Module mix_ids("BatchMixIds");
  mix_ids.register_parameter("w", torch::arange(30, torch::kFloat32).reshape({10, 3}), false);
  mix_ids.define(R"(
def forward(self, ids):
    e = torch.embedding(self.w, ids).sum(1)
    return e - e.mean(0)
)");
  Save(mix_ids, "batch_mix_ids.pt");
  torch::jit::Module mix_bf16("BatchMixBf16");
  mix_bf16.define(R"(
def forward(self, x):
    f = x.float()
    return f - f.mean(0)
)");
  Save(mix_bf16, "batch_mix_bf16.pt");
  // Rows mixed through the batch's longest length: caught only by comparing
  // the varied rows, batched, against themselves run alone (the sample's
  // half keeps the largest length).
  torch::jit::Module mix_len("BatchMixLen");
  mix_len.define(R"(
def forward(self, x, lengths):
    n = int(lengths.max())
    return x[:, :n].sum(1) / n
)");
  Save(mix_len, "batch_mix_len.pt");
  // Rows independent, with a one-row token-type table as RoBERTa's: a copy
  // of the sample whose type ids move is out of range, and must not make
  // registration refuse a model that batches (its ids are varied instead).
  torch::jit::Module types("BatchOkTypes");
  types.register_parameter("w", torch::arange(30, torch::kFloat32).reshape({10, 3}), false);
  types.register_parameter("t", torch::ones({1, 3}), false);
  types.define(R"(
def forward(self, ids, types):
    return torch.embedding(self.w, ids).sum(1) + torch.embedding(self.t, types).sum(1)
)");
  Save(types, "batch_ok_types.pt");
  // Rows independent, outputs in the thousands: a batch of one sums the
  // convolution in another order (on this CPU 1.5e-3 apart, 3e-7 of the
  // value), which a fixed absolute tolerance took for rows mixed.
  torch::jit::Module conv("BatchOkConv");
  torch::manual_seed(6);
  conv.register_parameter("w", torch::randn({8, 8, 5}) * 0.2, false);
  conv.define(R"(
def forward(self, x):
    return torch.conv1d(x, self.w) * 100.0
)");
  Save(conv, "batch_ok_conv.pt");
  {
    torch::manual_seed(7);
    torch::Tensor x = torch::randn({3, 8, 16}) * 30;
    std::string text = "{\"x\": {\"dtype\": \"float32\", \"shape\": [3, 8, 16], \"data\": [";
    for (int64_t i = 0; i < x.numel(); ++i) text += (i ? "," : "") + std::to_string(x.flatten()[i].item<float>());
    WriteText("batch_ok_conv_input.json", text + "]}}");
  }
  // Rows mixed, through its only input, type ids into a one-row table: no
  // copy of a sample of zeros can vary (1 is out of range), so batching
  // cannot be checked, and is refused rather than passed unseen.
  torch::jit::Module one_type("BatchOneType");
  one_type.register_parameter("t", torch::ones({1, 3}), false);
  one_type.define(R"(
def forward(self, types):
    e = torch.embedding(self.t, types).sum(1)
    return e - e.mean(0)
)");
  Save(one_type, "batch_one_type.pt");
  // Rows mixed, in outputs beside a masked fill of -1e9: the fill must not
  // widen the tolerance for every element (a scale from the largest did).
  torch::jit::Module sentinel("BatchMixSentinel");
  sentinel.define(R"(
def forward(self, x):
    y = x - x.mean(0)
    return torch.cat([torch.full_like(y[:, :1], -1e9), y[:, 1:]], 1)
)");
  Save(sentinel, "batch_mix_sentinel.pt");
  // Rows cut at the batch's longest length and masked with -inf: a row alone
  // has -inf where, batched, it has its values (inf <= inf let them pass).
  torch::jit::Module mask_inf("BatchMixInf");
  mask_inf.define(R"(
def forward(self, x, lengths):
    n = int(lengths.max())
    pos = torch.arange(x.size(1))
    return x.masked_fill(pos.unsqueeze(0) >= n, float("-inf"))
)");
  Save(mask_inf, "batch_mix_inf.pt");

  // 256 narrow layers (8 wide, residual to the input): a small model whose
  // cost is per call (op dispatch), not per row, so batching rows together is
  // nearly free (the batching benchmark's model).
  torch::jit::Module deep("Deep");
  torch::manual_seed(5);
  deep.register_parameter("w", torch::randn({256, 8, 8}) * 0.5, false);
  deep.define(R"(
def forward(self, x):
    h = x
    for w in self.w.unbind(0):
        h = torch.tanh(torch.matmul(h, w)) + x
    return h
)");
  Save(deep, "deep.pt");
  WriteText("deep_input.json", "{\"x\": {\"dtype\": \"float32\", \"shape\": [1, 8], \"data\": [0.1, -0.2, 0.3, 0.0, 0.5, -0.6, 0.7, 0.2]}}");

  WriteText("not_a_model.pt", "this is a text file, not a TorchScript archive\n");
  GenerateLora();
}

}  // namespace

int main(int argc, char** argv) {
  const char* usage =
      "usage: mms-gen-testdata OUT_DIR [--customers N --size-kb S [--prefix P]] [--big MB] [--lora-base W]\n"
      "  writes the test models (TorchScript) and inputs into OUT_DIR, which must exist\n";
  if (argc < 2 || argv[1][0] == '-') {
    std::cerr << usage;
    return argc >= 2 && (std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") ? 0 : 2;
  }
  out_dir = argv[1];
  if (!std::filesystem::is_directory(out_dir)) {
    std::cerr << "mms-gen-testdata: " << out_dir << " is not a directory\n" << usage;
    return 2;
  }
  if (argc % 2 != 0) {
    std::cerr << "mms-gen-testdata: option " << argv[argc - 1] << " needs a value\n" << usage;
    return 2;
  }
  int customers = 0;
  int64_t size_kb = 64, big_mb = 0, lora_width = 0;
  std::string prefix = "customer";
  for (int i = 2; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--customers") customers = std::stoi(argv[i + 1]);
    else if (a == "--size-kb") size_kb = std::stoll(argv[i + 1]);
    else if (a == "--prefix") prefix = argv[i + 1];
    else if (a == "--big") big_mb = std::stoll(argv[i + 1]);
    else if (a == "--lora-base") lora_width = std::stoll(argv[i + 1]);
    else {
      std::cerr << "unknown option " << a << "\n";
      return 2;
    }
  }
  torch::NoGradGuard no_grad;
  if (customers > 0) {
    // Embedding table dominates: vocab × 32 floats ≈ size.
    int64_t dim = 32, hidden = 64, items = 16;
    int64_t vocab = std::max<int64_t>(16, size_kb * 1024 / (dim * 4));
    for (int c = 0; c < customers; ++c) {
      auto m = Rec(1000 + c, vocab, dim, hidden, items);
      char name[128];
      std::snprintf(name, sizeof name, "%s-%02d.pt", prefix.c_str(), c);
      Save(m, name);
    }
    std::ofstream(out_dir + "/" + prefix + "_input.json")
        << R"({"ids": {"dtype": "int64", "shape": [1, 4], "data": [1, 2, 3, 4]},)"
        << R"( "dense": {"dtype": "float32", "shape": [1, 8], "data": [0, 1, 0, 1, 0, 1, 0, 1]}})";
    return 0;
  }
  if (lora_width > 0) {  // a wider base taking stacked adapters (the LoRA benchmark)
    auto m = LoraBase(true, {}, lora_width, lora_width);
    Save(m, "lora_multi_" + std::to_string(lora_width) + ".pt");
    std::string s = "{\"x\": {\"dtype\": \"float32\", \"shape\": [1, " + std::to_string(lora_width) + "], \"data\": [";
    for (int64_t i = 0; i < lora_width; ++i) s += (i ? "," : "") + std::to_string(((i * 7) % 11 - 5) * 0.1);
    WriteText("lora_input_" + std::to_string(lora_width) + ".json", s + "]}}");
    return 0;
  }
  if (big_mb > 0) {
    int64_t dim = 128;
    int64_t vocab = big_mb * 1024 * 1024 / (dim * 4);
    auto m = Rec(99, vocab, dim, 256, 32);
    Save(m, "big.pt");
    return 0;
  }
  Generate();
  return 0;
}
