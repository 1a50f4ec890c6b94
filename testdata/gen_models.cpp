// Generates the TorchScript models and fixtures the tests, benchmarks and
// demo use — built from C++ with libtorch, so the repository holds no opaque
// blobs. Deterministic: the same seed gives bit-identical files.
//
//   mms-gen-testdata OUT_DIR                       the test fixtures
//   mms-gen-testdata OUT_DIR --customers N --size-kb S [--prefix customer]
//                                                  N recommendation models of ~S KiB each
//   mms-gen-testdata OUT_DIR --big MB              one rec model of ~MB MiB (bench)
#include <torch/script.h>
#include <torch/torch.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>

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
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: mms-gen-testdata OUT_DIR [--customers N --size-kb S [--prefix P]] [--big MB]\n";
    return 2;
  }
  out_dir = argv[1];
  int customers = 0;
  int64_t size_kb = 64, big_mb = 0;
  std::string prefix = "customer";
  for (int i = 2; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--customers") customers = std::stoi(argv[i + 1]);
    else if (a == "--size-kb") size_kb = std::stoll(argv[i + 1]);
    else if (a == "--prefix") prefix = argv[i + 1];
    else if (a == "--big") big_mb = std::stoll(argv[i + 1]);
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
