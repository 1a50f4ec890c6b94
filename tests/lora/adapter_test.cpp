// PEFT adapters checked against a base: the generated fixtures (a good
// adapter of each shape, and one bad adapter per kind of mistake), PEFT's
// target_modules matching, and the packed adapter read back by the loader.
#include <doctest/doctest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>

#include "core/paths.h"
#include "lora/adapter.h"
#include "lora/adapter_model.h"
#include "protocol/tensor_file.h"
#include "support/process.h"

using namespace mms;

namespace {

std::string Adapter(const std::string& n) { return testing::TestDataDir() + "/adapters/" + n; }

// The generated base (testdata/gen_models.cpp): q 16→16, v 16→16, o 16→4.
LoraBase Base(std::vector<std::string> stacked = {}) {
  LoraBase b;
  b.ref = "base:1";
  b.linears = {{"q", {DType::kFloat32, 16, 16}}, {"v", {DType::kFloat32, 16, 16}}, {"o", {DType::kFloat32, 4, 16}}};
  b.stacked = std::move(stacked);
  return b;
}

std::string ErrorOf(const std::string& dir, const LoraBase& base = Base()) {
  auto r = CheckAdapter(Adapter(dir), base);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == Code::kInvalidArgument);
  return r.status().message();
}

}  // namespace

TEST_CASE("lora: good PEFT adapters are read with their rank, scale and targets") {
  auto a1 = CheckAdapter(Adapter("a1"), Base());
  REQUIRE_MESSAGE(a1.ok(), a1.status().ToString());
  CHECK(a1->info.rank == 4);
  CHECK(a1->info.scale == doctest::Approx(2.0));  // lora_alpha 8 / r 4
  REQUIRE(a1->info.targets.size() == 2);
  CHECK(a1->info.targets[0].module == "q");
  CHECK(a1->info.targets[1].module == "v");
  CHECK(a1->info.bytes == 2 * (4 * 16 + 16 * 4) * 4);
  REQUIRE(a1->tensors.size() == 4);
  CHECK(a1->tensors[0].name == "q.lora_A");
  CHECK(a1->tensors[0].shape == std::vector<int64_t>{4, 16});
  CHECK(a1->tensors[1].shape == std::vector<int64_t>{16, 4});
  auto a3 = CheckAdapter(Adapter("a3"), Base());  // rsLoRA: alpha / sqrt(r)
  REQUIRE(a3.ok());
  CHECK(a3->info.rslora);
  CHECK(a3->info.scale == doctest::Approx(16.0 / std::sqrt(8.0)));
  // A base taking stacked weights for q and v only cannot take a3 (it targets o).
  std::string e = ErrorOf("a3", Base({"q", "v"}));
  CHECK(e.find("target module 'o' is not one base:1 takes stacked") != std::string::npos);
  CHECK(CheckAdapter(Adapter("a1"), Base({"q", "v"})).ok());
}

TEST_CASE("lora: each bad adapter is refused, naming the file, the module and the fix") {
  CHECK(ErrorOf("bad_rank").find("rank mismatch: adapter_config.json says r = 4 but lora_A is [2, 16]") != std::string::npos);
  std::string shape = ErrorOf("bad_shape");
  CHECK(shape.find("shape mismatch with base:1") != std::string::npos);
  CHECK(shape.find("lora_A must be [r, 16]") != std::string::npos);
  std::string target = ErrorOf("bad_target");
  CHECK(target.find("target module 'k_proj' is not in base:1") != std::string::npos);
  CHECK(target.find("o, q, v") != std::string::npos);
  std::string dtype = ErrorOf("bad_dtype");
  CHECK(dtype.find("wrong dtype: float64") != std::string::npos);
  CHECK(dtype.find("convert the adapter to float32") != std::string::npos);
  CHECK(ErrorOf("bad_missing").find("missing file") != std::string::npos);
  CHECK(ErrorOf("no_such_adapter").find("does not exist") != std::string::npos);
}

TEST_CASE("lora: config mistakes — bad rank value, unsupported options, modules outside target_modules") {
  testing::TempDir dir;
  std::filesystem::copy_file(Adapter("a1") + "/adapter_model.safetensors", dir / "adapter_model.safetensors");
  auto with_config = [&](const std::string& json) {
    std::ofstream(dir / "adapter_config.json") << json;
    auto r = CheckAdapter(dir.path(), Base());
    return r.ok() ? std::string("ok") : r.status().message();
  };
  CHECK(with_config(R"({"r": 0, "lora_alpha": 8, "target_modules": ["q", "v"]})").find("positive integer") != std::string::npos);
  CHECK(with_config(R"({"r": 4, "lora_alpha": 8, "target_modules": ["q", "v"], "fan_in_fan_out": true})").find("fan_in_fan_out") != std::string::npos);
  CHECK(with_config(R"({"r": 4, "lora_alpha": 8, "target_modules": ["q", "v"], "bias": "all"})").find("bias") != std::string::npos);
  CHECK(with_config(R"({"r": 4, "lora_alpha": 8, "target_modules": ["q", "v"], "peft_type": "IA3"})").find("LORA") != std::string::npos);
  CHECK(with_config(R"({"r": 4, "lora_alpha": 8, "target_modules": ["q"]})").find("not in target_modules") != std::string::npos);
  CHECK(with_config(R"({"r": 4, "lora_alpha": 8, "target_modules": ["q", "v", "o"]})").find("no lora_A/lora_B for module 'o'") != std::string::npos);
  CHECK(with_config("not json").find("adapter_config.json: not valid JSON") != std::string::npos);
  CHECK(with_config("[1]").find("not a JSON object") != std::string::npos);
  // A number JSON cannot hold as a double: said so (it read "not a JSON object").
  CHECK(with_config(R"({"r": 4, "lora_alpha": 1e400, "target_modules": ["q", "v"]})").find("not valid JSON") !=
        std::string::npos);
  // Modules trained in full (a classifier head) are not served: refused, not left out silently.
  std::string save = with_config(R"({"r": 4, "target_modules": ["q", "v"], "modules_to_save": ["head"]})");
  CHECK_MESSAGE(save.find("modules_to_save [\"head\"] is not supported") != std::string::npos, save);
  CHECK(with_config(R"({"r": 4, "target_modules": ["q", "v"], "modules_to_save": null})") == "ok");
  CHECK(with_config(R"({"r": 4, "target_modules": ["q", "v"], "modules_to_save": []})") == "ok");
  // --path naming a file: not "does not exist".
  auto file = CheckAdapter(dir / "adapter_config.json", Base());
  CHECK(file.status().message().find("adapter_config.json is not a directory") != std::string::npos);
  // Wrong JSON types are refused with the key, never thrown.
  CHECK(with_config(R"({"r": 4, "lora_alpha": 8, "target_modules": ["q", "v"], "use_rslora": "yes"})").find("use_rslora must be true or false") != std::string::npos);
  CHECK(with_config(R"({"r": 4, "lora_alpha": 8, "target_modules": ["q", "v"], "use_dora": 1})").find("use_dora must be true or false") != std::string::npos);
  CHECK(with_config(R"({"r": 4, "lora_alpha": "8", "target_modules": ["q", "v"]})").find("lora_alpha must be a number") != std::string::npos);
  CHECK(with_config(R"({"r": 4.5, "target_modules": ["q", "v"]})").find("positive integer") != std::string::npos);
  // PEFT's forms of target_modules: names and a regular expression.
  CHECK(with_config(R"({"r": 4, "lora_alpha": 8, "target_modules": ["q", "v"]})") == "ok");
  CHECK(with_config(R"j({"r": 4, "lora_alpha": 8, "target_modules": "(q|v)"})j") == "ok");
  CHECK(with_config(R"({"r": 4, "lora_alpha": 8, "target_modules": "x.*"})").find("matches no module") != std::string::npos);
  // A key twice: refused (nlohmann keeps the last silently).
  CHECK(with_config(R"({"r": 4, "r": 8, "lora_alpha": 8, "target_modules": ["q", "v"]})")
            .find("the key 'r' appears twice") != std::string::npos);
  // A finite lora_alpha whose scale overflows the update: every output would be NaN.
  std::string huge = with_config(R"({"r": 4, "lora_alpha": 1e308, "target_modules": ["q", "v"]})");
  CHECK_MESSAGE(huge.find("beyond what float32 holds: every output would be infinite or NaN") != std::string::npos, huge);
  // adapter_config.json that is not a regular file: /dev/zero never ends (it
  // took 7.5 GB in 20 s), a FIFO never opens.
  std::filesystem::remove(dir / "adapter_config.json");
  std::filesystem::create_symlink("/dev/zero", dir / "adapter_config.json");
  auto zero = CheckAdapter(dir.path(), Base());
  CHECK(zero.status().message().find("adapter_config.json is not a regular file") != std::string::npos);
  std::filesystem::remove(dir / "adapter_config.json");
  REQUIRE(::mkfifo((dir / "adapter_config.json").c_str(), 0600) == 0);
  CHECK(CheckAdapter(dir.path(), Base()).status().message().find("is not a regular file") != std::string::npos);
  std::filesystem::remove(dir / "adapter_config.json");
  // lora_alpha left out takes PEFT's default of 8 (scale 8 / r), not r.
  std::ofstream(dir / "adapter_config.json") << R"({"r": 4, "target_modules": ["q", "v"]})";
  auto dflt = CheckAdapter(dir.path(), Base());
  REQUIRE(dflt.ok());
  CHECK(dflt->info.scale == doctest::Approx(2.0));
}

TEST_CASE("lora: targets must be floating point and of one dtype") {
  auto adapter_for = [](const LoraBase& b) {
    testing::TempDir dir;
    std::vector<Tensor> t;
    for (const auto& [m, lin] : b.linears) {
      t.push_back(Tensor::Alloc(m + ".lora_A.weight", lin.dtype, {2, lin.in}));
      t.push_back(Tensor::Alloc(m + ".lora_B.weight", lin.dtype, {lin.out, 2}));
    }
    REQUIRE(WriteSafetensorsFile(dir / "adapter_model.safetensors", t).ok());
    std::ofstream(dir / "adapter_config.json") << R"({"r": 2, "target_modules": ["q", "v"]})";
    auto r = CheckAdapter(dir.path(), b);
    return r.ok() ? std::string("ok") : r.status().message();
  };
  LoraBase mixed;
  mixed.ref = "m:1";
  mixed.linears = {{"q", {DType::kFloat32, 4, 4}}, {"v", {DType::kFloat16, 4, 4}}};
  CHECK(adapter_for(mixed).find("mix dtypes") != std::string::npos);
  LoraBase quantized;
  quantized.ref = "m:1";
  quantized.linears = {{"q", {DType::kInt8, 4, 4}}, {"v", {DType::kInt8, 4, 4}}};
  CHECK(adapter_for(quantized).find("needs floating-point weights") != std::string::npos);
  LoraBase half;
  half.ref = "m:1";
  half.linears = {{"q", {DType::kFloat16, 4, 4}}, {"v", {DType::kFloat16, 4, 4}}};
  CHECK(adapter_for(half) == "ok");
}

TEST_CASE("lora: target_modules match a module by its last name, as PEFT does") {
  LoraBase b;
  b.ref = "llm:1";
  b.linears = {{"layers.0.self_attn.q_proj", {DType::kFloat32, 8, 8}}, {"layers.1.self_attn.q_proj", {DType::kFloat32, 8, 8}},
               {"layers.0.mlp.up_proj", {DType::kFloat32, 8, 8}}};
  testing::TempDir dir;
  std::vector<Tensor> t;
  for (const char* m : {"layers.0.self_attn.q_proj", "layers.1.self_attn.q_proj"}) {
    Tensor a = Tensor::Alloc(std::string("base_model.model.") + m + ".lora_A.weight", DType::kFloat32, {2, 8});
    Tensor bb = Tensor::Alloc(std::string("base_model.model.") + m + ".lora_B.weight", DType::kFloat32, {8, 2});
    t.push_back(a);
    t.push_back(bb);
  }
  REQUIRE(WriteSafetensorsFile(dir / "adapter_model.safetensors", t).ok());
  std::ofstream(dir / "adapter_config.json") << R"({"r": 2, "lora_alpha": 2, "target_modules": ["q_proj"]})";
  auto r = CheckAdapter(dir.path(), b);
  REQUIRE_MESSAGE(r.ok(), r.status().ToString());
  CHECK(r->info.targets.size() == 2);
  CHECK(r->info.scale == 1.0);
  // NaN weights are refused at registration.
  auto* p = reinterpret_cast<float*>(t[0].mutable_data());
  p[3] = std::nanf("");
  REQUIRE(WriteSafetensorsFile(dir / "adapter_model.safetensors", t).ok());
  auto nan = CheckAdapter(dir.path(), b);
  REQUIRE_FALSE(nan.ok());
  CHECK(nan.status().message().find("NaN") != std::string::npos);
}

TEST_CASE("lora: a packed adapter loads into one buffer with its weights where the layout says") {
  auto a1 = CheckAdapter(Adapter("a1"), Base());
  REQUIRE(a1.ok());
  testing::TempDir dir;
  REQUIRE(WritePackedAdapter(dir / kAdapterWeightsFile, *a1).ok());
  AdapterLoader loader;
  Loader::Source src{"cust:1", "", dir.path()};
  auto hm = loader.Load(src, [](size_t n) -> Result<std::shared_ptr<Buffer>> { return AllocateHost(n); });
  REQUIRE_MESSAGE(hm.ok(), hm.status().ToString());
  auto* am = static_cast<AdapterModel*>(hm->model.get());
  const LoraWeights& w = am->weights();
  CHECK(w.ref == "cust:1");
  CHECK(w.scale == doctest::Approx(2.0));
  CHECK(w.device == "cpu");
  REQUIRE(w.targets.size() == 2);
  CHECK(w.targets[0].module == "q");
  CHECK(std::memcmp(w.targets[0].a, a1->tensors[0].data.get(), a1->tensors[0].nbytes) == 0);
  CHECK(std::memcmp(w.targets[1].b, a1->tensors[3].data.get(), a1->tensors[3].nbytes) == 0);
  CHECK(hm->model->Run({}).status().code() == Code::kFailedPrecondition);
  // Not a packed adapter: a clear error.
  Loader::Source none{"x:1", "", dir.path() + "/missing"};
  CHECK_FALSE(loader.Load(none, [](size_t n) -> Result<std::shared_ptr<Buffer>> { return AllocateHost(n); }).ok());
  // A packed file edited since registration (lora_A cut to one row while the
  // metadata still says rank r) is refused, not read past its end by a base.
  auto cut = *a1;
  const Tensor& a = cut.tensors[0];
  REQUIRE(a.shape.size() == 2);
  cut.tensors[0] = Tensor::Alloc(a.name, a.dtype, {1, a.shape[1]});
  testing::TempDir bad_dir;
  REQUIRE(WritePackedAdapter(bad_dir / kAdapterWeightsFile, cut).ok());
  Loader::Source bad{"cust:2", "", bad_dir.path()};
  auto refused = loader.Load(bad, [](size_t n) -> Result<std::shared_ptr<Buffer>> { return AllocateHost(n); });
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.status().code() == Code::kCorrupt);
  CHECK(refused.status().message().find("re-register the adapter") != std::string::npos);
}

TEST_CASE("lora: layers_to_transform keeps the listed layers' modules, read as PEFT does") {
  LoraBase b;
  b.ref = "llm:1";
  for (const char* m : {"model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj", "model.layers.2.self_attn.q_proj",
                        "model.layers.1.mlp.experts.0.up_proj", "model.layers.2.mlp.experts.1.up_proj", "lm_head"})
    b.linears[m] = {DType::kFloat32, 8, 8};
  testing::TempDir dir;
  auto write = [&](std::vector<std::string> modules, const std::string& config) {
    std::vector<Tensor> t;
    for (const auto& m : modules) {
      t.push_back(Tensor::Alloc("base_model.model." + m + ".lora_A.weight", DType::kFloat32, {2, 8}));
      t.push_back(Tensor::Alloc("base_model.model." + m + ".lora_B.weight", DType::kFloat32, {8, 2}));
    }
    REQUIRE(WriteSafetensorsFile(dir / "adapter_model.safetensors", t).ok());
    std::ofstream(dir / "adapter_config.json") << config;
    auto r = CheckAdapter(dir.path(), b);
    std::vector<std::string> got;
    if (!r.ok()) return std::make_pair(r.status().message(), got);
    for (const auto& x : r->info.targets) got.push_back(x.module);
    return std::make_pair(std::string("ok"), got);
  };
  const std::vector<std::string> layer1 = {"model.layers.1.mlp.experts.0.up_proj", "model.layers.1.self_attn.q_proj"};
  // Layer 1 only: the expert index (0, 1) is not the layer index — with and without layers_pattern.
  for (const char* pattern : {"", R"(, "layers_pattern": "layers")", R"(, "layers_pattern": ["h", "layers"])"}) {
    INFO(pattern);
    auto [st, got] = write(layer1, std::string(R"({"r": 2, "target_modules": ["q_proj", "up_proj"], "layers_to_transform": [1])") +
                                        pattern + "}");
    CHECK(st == "ok");
    CHECK(got == layer1);
  }
  // A single index is a list of one.
  CHECK(write(layer1, R"({"r": 2, "target_modules": ["q_proj", "up_proj"], "layers_to_transform": 1})").first == "ok");
  // A pattern naming no module list finds no layer.
  auto none = write(layer1, R"({"r": 2, "target_modules": ["q_proj"], "layers_to_transform": [1], "layers_pattern": "h"})");
  CHECK(none.first.find("target module 'q_proj' is in no layer of layers_to_transform [1] in llm:1") != std::string::npos);
  CHECK(none.first.find("after \"h\"") != std::string::npos);
  // Weights for a module of another layer: refused, naming both settings.
  auto extra = write({"model.layers.1.self_attn.q_proj", "model.layers.2.self_attn.q_proj"},
                     R"({"r": 2, "target_modules": ["q_proj"], "layers_to_transform": [1]})");
  CHECK(extra.first.find("model.layers.2.self_attn.q_proj: has adapter weights but is not in target_modules and layers_to_transform") !=
        std::string::npos);
  // Weights missing for a listed layer's module.
  CHECK(write({"model.layers.1.self_attn.q_proj"}, R"({"r": 2, "target_modules": ["q_proj"], "layers_to_transform": [1, 2]})")
            .first.find("no lora_A/lora_B for module 'model.layers.2.self_attn.q_proj'") != std::string::npos);
  // Bad values, each named.
  for (const char* bad : {R"("layers_to_transform": -1)", R"("layers_to_transform": [])", R"("layers_to_transform": ["1"])",
                          R"("layers_to_transform": 1.5)"}) {
    INFO(bad);
    CHECK(write(layer1, std::string(R"({"r": 2, "target_modules": ["q_proj", "up_proj"], )") + bad + "}")
              .first.find("layers_to_transform must be a layer index") != std::string::npos);
  }
  CHECK(write(layer1, R"({"r": 2, "target_modules": ["q_proj", "up_proj"], "layers_to_transform": [1], "layers_pattern": 3})")
            .first.find("layers_pattern must be") != std::string::npos);
  CHECK(write(layer1, R"j({"r": 2, "target_modules": ".*(q_proj|up_proj)", "layers_to_transform": [1]})j")
            .first.find("not a regular expression") != std::string::npos);
}

// Found by fuzzing at stop 23: std::regex recursed out of stack on deep
// nesting (mms adapter register died with SIGSEGV) and backtracked
// exponentially on "(.|.)*X".
TEST_CASE("lora: a hostile target_modules pattern is refused or matched in linear time, never a crash or a hang") {
  LoraBase b;
  b.ref = "llm:1";
  const std::string long_name = "model.layers.0.self_attn.q_proj_with_a_long_name_xx";
  b.linears = {{long_name, {DType::kFloat32, 8, 8}}};
  testing::TempDir dir;
  std::vector<Tensor> t{Tensor::Alloc("base_model.model." + long_name + ".lora_A.weight", DType::kFloat32, {2, 8}),
                        Tensor::Alloc("base_model.model." + long_name + ".lora_B.weight", DType::kFloat32, {8, 2})};
  REQUIRE(WriteSafetensorsFile(dir / "adapter_model.safetensors", t).ok());
  auto with = [&](const std::string& pattern) {
    std::ofstream(dir / "adapter_config.json")
        << nlohmann::json{{"r", 2}, {"lora_alpha", 2}, {"target_modules", pattern}}.dump();
    return CheckAdapter(dir.path(), b);
  };
  // A regular pattern still selects as PEFT's full match does.
  auto good = with(R"(.*\.q_proj\w*)");
  REQUIRE_MESSAGE(good.ok(), good.status().ToString());
  CHECK(good->info.targets.size() == 1);
  // Deep nesting: refused with RE2's reason.
  auto deep = with(std::string(30000, '(') + std::string(30000, ')'));
  REQUIRE_FALSE(deep.ok());
  CHECK(deep.status().message().find("over 4096") != std::string::npos);
  // Nesting within the length cap: parsed without recursion, quoted short in the error.
  auto nested = with(std::string(2000, '(') + "q" + std::string(2000, ')'));
  REQUIRE_FALSE(nested.ok());
  CHECK_MESSAGE(nested.status().message().find("... (4001 characters)' matches no module") != std::string::npos,
                nested.status().message());
  // Exponential for a backtracking engine: answered at once (no module matches it).
  auto redos = with("(.|.)*X");
  REQUIRE_FALSE(redos.ok());
  // A lookahead is not RE2's: said so, with what to do.
  auto look = with("(?=q).*");
  REQUIRE_FALSE(look.ok());
  CHECK(look.status().message().find("list the module names instead") != std::string::npos);
}

TEST_CASE("lora: an adapter record whose integers are not integers is corrupt, not undefined behaviour") {
  auto bad = AdapterInfo::FromJson(nlohmann::json::parse(
      R"({"rank": 1e300, "alpha": 2, "scale": 1, "dtype": "float32", "targets": []})"));
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.status().code() == Code::kCorrupt);
  CHECK(bad.status().message().find("expected an integer") != std::string::npos);
  auto ok = AdapterInfo::FromJson(nlohmann::json::parse(
      R"({"rank": 4, "alpha": 2, "scale": 0.5, "dtype": "float32", "targets": [{"module": "q", "in": 16, "out": 16}]})"));
  REQUIRE(ok.ok());
  CHECK(ok->rank == 4);
}
