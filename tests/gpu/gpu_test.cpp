// GPU checks (label gpu). Built in every build; without a CUDA build or a
// visible GPU every test exits 77 and ctest reports it skipped. On the lent
// GPU machine they check the CUDA paths for real: promotion into the device
// arena, outputs equal to the CPU's, and load/evict cycles that leave the
// device's memory as it was.
#include <torch/script.h>

#include <csignal>
#include <cstring>
#include <nlohmann/json.hpp>

#include "pool/device.h"
#include "pool/model_pool.h"
#include "pool/torch_model.h"
#include "protocol/tensor_file.h"
#include "support/process.h"

#include "support/torch_doctest.h"

using namespace mms;

// The test main asks before running anything (see support/doctest_main.cpp).
extern "C" bool mms_test_skip_all() {
  if (!CudaBuild()) return true;
  auto dev = CreateDevice("cuda:0", 64 << 20);
  return !dev.ok();
}

namespace {
std::string Data(const std::string& n) { return testing::TestDataDir() + "/" + n; }

std::unique_ptr<ModelPool> CudaPool(uint64_t device_budget) {
  std::vector<std::unique_ptr<Device>> devs;
  auto d = CreateDevice("cuda:0", device_budget);
  REQUIRE_MESSAGE(d.ok(), d.status().ToString());
  devs.push_back(std::move(d).value());
  ModelPool::Options o;
  o.host_budget = 1ull << 30;
  o.warmup = false;
  auto pool = ModelPool::Create(o, std::move(devs), std::make_unique<TorchLoader>(), MakeHostAllocator(true));
  REQUIRE_MESSAGE(pool.ok(), pool.status().ToString());
  return std::move(pool).value();
}

// rec.pt's test input, in forward()'s argument order (a tensor file holds
// them sorted by name), and the scores the CPU gives for it.
struct CpuReference {
  std::vector<Tensor> inputs;
  std::vector<Tensor> scores;
};
CpuReference RecOnCpu() {
  auto in = ReadTensorFile(Data("rec_input.json"));
  REQUIRE_MESSAGE(in.ok(), in.status().ToString());
  auto cpu = LoadPlainTorchScript(Data("rec.pt"), [](size_t n) { return AllocateHost(n); });
  REQUIRE_MESSAGE(cpu.ok(), cpu.status().ToString());
  std::vector<InputSpec> specs;
  for (const auto& name : cpu->model->input_names()) specs.push_back({name, std::nullopt, std::nullopt});
  auto ordered = MatchInputs(specs, std::move(in).value(), "rec");
  REQUIRE_MESSAGE(ordered.ok(), ordered.status().ToString());
  auto scores = cpu->model->Run(*ordered);
  REQUIRE_MESSAGE(scores.ok(), scores.status().ToString());
  return {std::move(ordered).value(), std::move(scores).value()};
}

// The first output equals the CPU's, element by element.
void CheckScores(const std::vector<Tensor>& got, const std::vector<Tensor>& want) {
  REQUIRE(got.size() == want.size());
  REQUIRE(got[0].numel() == want[0].numel());
  const float* a = got[0].as<float>();
  const float* b = want[0].as<float>();
  for (int64_t i = 0; i < want[0].numel(); ++i) CHECK(a[i] == doctest::Approx(b[i]).epsilon(1e-5));
}

PoolItem Item(PoolKey key, const std::string& file) {
  PoolItem it;
  it.key = key;
  it.ref = file + ":" + std::to_string(key);
  it.source = {it.ref, Data(file), ""};
  return it;
}
}  // namespace

TEST_CASE("gpu: a model promoted to cuda:0 answers as on the CPU") {
  const CpuReference ref = RecOnCpu();
  auto pool = CudaPool(256 << 20);
  auto h = pool->AcquireSync(Item(1, "rec.pt"));
  REQUIRE_MESSAGE(h.ok(), h.status().ToString());
  CHECK((*h)->model()->device() == "cuda:0");
  auto got = (*h)->model()->Run(ref.inputs);
  REQUIRE_MESSAGE(got.ok(), got.status().ToString());
  CheckScores(*got, ref.scores);
}

TEST_CASE("gpu: 200 load/evict cycles over 5 models leave the device arena as it was") {
  auto pool = CudaPool(64 << 20);  // rec.pt is small: every model fits; evict by hand
  auto used0 = pool->Snapshot()["devices"][0]["used"].get<uint64_t>();
  for (int i = 0; i < 200; ++i) {
    PoolKey k = static_cast<PoolKey>(1 + i % 5);
    auto h = pool->AcquireSync(Item(k, "rec.pt"));
    REQUIRE_MESSAGE(h.ok(), h.status().ToString());
    h->reset();
    REQUIRE(pool->Evict(k).ok());
  }
  CHECK(pool->Snapshot()["devices"][0]["used"].get<uint64_t>() == used0);
}

// The whole daemon on the GPU: mmsd with devices = ["cuda:0"], the CLI on a
// real socket. Warm-up runs on the GPU, replies equal the CPU's, eviction to
// the (pinned) host tier and promotion back keep the scores, and a pin is
// preloaded onto cuda:0 after a restart.
TEST_CASE("gpu: mmsd serves from cuda:0 as the CPU would, through evictions and a restart") {
  const CpuReference ref = RecOnCpu();
  testing::Daemon d("[pool]\ndevices = [\"cuda:0\"]\ndevice_budget = \"256MiB\"\nhost_budget = \"512MiB\"\n");
  REQUIRE_MESSAGE(d.ok(), d.log());
  auto reg = d.Mms({"model", "register", "rec", "--version", "1", "--path", Data("rec.pt"), "--sample-input",
                    Data("rec_input.json"), "-q"});
  REQUIRE_MESSAGE(reg.exit_code == 0, reg.err);
  auto scores_equal = [&](const std::string& tag) {
    std::string out = d.dir() + "/out-" + tag + ".safetensors";
    auto r = d.Mms({"predict", "rec", "--input", Data("rec_input.json"), "--output", out, "-q"});
    REQUIRE_MESSAGE(r.exit_code == 0, tag << ": " << r.err << d.log());
    auto got = ReadTensorFile(out);
    REQUIRE_MESSAGE(got.ok(), got.status().ToString());
    CheckScores(*got, ref.scores);
  };
  auto pool = [&] {
    auto r = d.Mms({"--json", "pool"});
    REQUIRE(r.exit_code == 0);
    return nlohmann::json::parse(r.out);
  };
  scores_equal("cold");
  auto p = pool();
  REQUIRE(p["devices"].size() == 1);
  CHECK(p["devices"][0]["name"] == "cuda:0");
  CHECK(p["devices"][0]["kind"] == "cuda");
  CHECK(p["devices"][0]["zero_copy"] == false);
  REQUIRE(p["devices"][0]["models"].size() == 1);
  CHECK(p["devices"][0]["models"][0]["ref"] == "rec:1");
  CHECK(p["devices"][0]["used"].get<uint64_t>() > 0);
  auto health = d.Mms({"--json", "health", "rec"});
  CHECK_MESSAGE(health.exit_code == 0, health.err << health.out);
  // Down to the host tier, back up: the same scores, a second promotion.
  REQUIRE(d.Mms({"evict", "rec"}).exit_code == 0);
  CHECK(pool()["devices"][0]["used"] == 0);
  scores_equal("promoted");
  // Pinned, restarted: preloaded onto cuda:0 without a request.
  REQUIRE(d.Mms({"pin", "rec"}).exit_code == 0);
  d.child().Signal(SIGTERM);
  REQUIRE(d.child().Wait(30) == 0);
  REQUIRE(d.Restart());
  REQUIRE(testing::WaitFor([&] { return pool()["devices"][0]["models"].size() == 1; }, 30));
  CHECK(pool()["devices"][0]["models"][0]["pinned"] == true);
  scores_equal("after-restart");
}
