// LoRA adapters through the real daemon and CLI: PEFT directories registered
// on a base, refused at registration when wrong, served in both modes equal
// to the base with the adapter merged offline, mixed in one batch on a base
// taking stacked adapter weights, swapped through their own pool tiers, and
// usable as models of their own (experiments, shadows, pins).
#include <doctest/doctest.h>

#include <csignal>
#include <fstream>
#include <set>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <thread>

#include "protocol/client.h"
#include "protocol/messages.h"
#include "protocol/tensor_file.h"
#include "support/process.h"

using namespace mms::testing;
using nlohmann::json;

namespace {

std::string Data(const std::string& n) { return TestDataDir() + "/" + n; }

void Mms(const Daemon& d, std::vector<std::string> args) {
  auto r = d.Mms(args);
  std::string cmd;
  for (const auto& a : args) cmd += a + " ";
  REQUIRE_MESSAGE(r.exit_code == 0, cmd << "→ " << r.err);
}

// The bases (plain, and taking stacked adapter weights, batching up to 32
// rows) and the offline merges.
void Bases(const Daemon& d) {
  Mms(d, {"model", "register", "base", "--version", "1", "--path", Data("lora_base.pt"), "--sample-input",
          Data("lora_input.json"), "-q"});
  Mms(d, {"model", "register", "multi", "--version", "1", "--path", Data("lora_multi.pt"), "--sample-input",
          Data("lora_input.json"), "--max-batch-size", "32", "--max-queue-delay-us", "20000", "-q"});
  for (const char* a : {"a1", "a2", "a3"})
    Mms(d, {"model", "register", std::string("merged-") + a, "--version", "1", "--path",
            Data(std::string("lora_merged_") + a + ".pt"), "-q"});
}

std::vector<double> Predict(const Daemon& d, std::vector<std::string> args) {
  std::vector<std::string> full{"--json", "predict"};
  full.insert(full.end(), args.begin(), args.end());
  full.insert(full.end(), {"--input", Data("lora_input.json")});
  auto r = d.Mms(full);
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  std::vector<double> out;
  json j = json::parse(r.out);
  INFO(r.out.substr(0, 300));
  REQUIRE(j["outputs"].contains("output"));
  for (const auto& v : j["outputs"]["output"]["data"]) out.push_back(v.get<double>());
  return out;
}

void Close(const std::vector<double>& got, const std::vector<double>& want, const std::string& what) {
  REQUIRE(got.size() == want.size());
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::abs(got[i] - want[i]) / (1 + std::abs(want[i])));
  INFO(what << ": worst relative difference " << worst);
  CHECK(worst < 1e-5);  // float32
}

std::unique_ptr<mms::proto::Client> Connect(const Daemon& d) {
  mms::proto::Client::Options o;
  o.socket_path = d.socket();
  return mms::proto::Client::Connect(o).value();
}

}  // namespace

TEST_CASE("adapters: register, list, show and remove, the base cannot go while adapters use it") {
  Daemon d;
  REQUIRE(d.ok());
  Bases(d);
  Mms(d, {"adapter", "register", "cust-a", "--base", "base", "--path", Data("adapters/a1"), "--description", "tenant a"});
  Mms(d, {"adapter", "register", "cust-a", "--base", "base:1", "--path", Data("adapters/a2")});  // version 2
  // The same adapter again (a CI job run again), with its version or without:
  // no error, nothing written (a new version each time, or exit 6, before).
  for (const std::vector<std::string>& version : {std::vector<std::string>{"--version", "1"}, {}}) {
    std::vector<std::string> args{"--json", "adapter", "register", "cust-a", "--base", "base", "--path",
                                  Data("adapters/a1")};
    args.insert(args.end(), version.begin(), version.end());
    auto again = d.Mms(args);
    REQUIRE_MESSAGE(again.exit_code == 0, again.err);
    CHECK(json::parse(again.out)["unchanged"] == true);
    CHECK(json::parse(again.out)["ref"] == "cust-a:1");
  }
  CHECK(d.Mms({"adapter", "register", "cust-a", "--base", "base", "--path", Data("adapters/a1")}).out.find(
            "adapter cust-a:1 is already registered with these weights on base:1 (unchanged)") != std::string::npos);
  // NAME:VERSION taken by other weights, or with another description given: refused (exit 6), files left alone.
  auto dup = d.Mms({"adapter", "register", "cust-a", "--version", "1", "--base", "base", "--path", Data("adapters/a2")});
  CHECK(dup.exit_code == 6);
  CHECK_MESSAGE(dup.err.find("cust-a:1 is already registered (by ") != std::string::npos, dup.err);
  CHECK(dup.err.find("differs in its weights (sha256 ") != std::string::npos);
  auto desc = d.Mms({"adapter", "register", "cust-a", "--version", "1", "--base", "base", "--path", Data("adapters/a1"),
                     "--description", "another"});
  CHECK(desc.exit_code == 6);
  CHECK_MESSAGE(desc.err.find("differs in its --description") != std::string::npos, desc.err);
  // A name is a model or an adapter, never both: the bare name would switch inputs.
  auto as_model = d.Mms({"model", "register", "cust-a", "--version", "9", "--path", Data("tiny.pt")});
  CHECK(as_model.exit_code == 2);
  CHECK(as_model.err.find("cust-a is a LoRA adapter (cust-a:1)") != std::string::npos);
  auto as_adapter = d.Mms({"adapter", "register", "merged-a1", "--base", "base", "--path", Data("adapters/a1")});
  CHECK(as_adapter.exit_code == 2);
  CHECK(as_adapter.err.find("merged-a1 is a model (merged-a1:1)") != std::string::npos);
  CHECK(d.Mms({"model", "verify", "cust-a:1"}).exit_code == 0);
  auto list = d.Mms({"--json", "adapter", "list"});
  REQUIRE(list.exit_code == 0);
  json l = json::parse(list.out);
  REQUIRE(l.size() == 2);
  CHECK(l[0]["ref"] == "cust-a:1");
  CHECK(l[1]["ref"] == "cust-a:2");
  CHECK(l[0]["base"] == "base:1");
  CHECK(l[0]["adapter"]["rank"] == 4);
  CHECK(l[1]["adapter"]["rank"] == 2);
  CHECK(l[0]["adapter"]["targets"].size() == 2);
  CHECK(json::parse(d.Mms({"--json", "adapter", "list", "--base", "multi"}).out).empty());
  auto show = d.Mms({"adapter", "show", "cust-a:1"});
  CHECK(show.exit_code == 0);
  CHECK(show.out.find("adapter of        base:1") != std::string::npos);
  CHECK(show.out.find("rank 4, alpha 8.0, scale 2.0, targets q, v") != std::string::npos);
  // Adapters are versions: history, stages and aliases work on them.
  CHECK(d.Mms({"model", "history", "cust-a"}).out.find("register") != std::string::npos);
  Mms(d, {"model", "alias", "set", "cust-a", "champion", "2"});
  // Not an adapter, unknown, in use.
  auto notad = d.Mms({"adapter", "rm", "base:1"});
  CHECK(notad.exit_code == 2);
  CHECK(notad.err.find("is not an adapter") != std::string::npos);
  CHECK(d.Mms({"adapter", "show", "nope"}).exit_code == 4);
  auto base_rm = d.Mms({"model", "rm", "base:1", "--force"});
  CHECK(base_rm.exit_code == 6);
  CHECK(base_rm.err.find("the base of 2 adapter(s)") != std::string::npos);
  auto ad_on_ad = d.Mms({"adapter", "register", "x", "--base", "cust-a:1", "--path", Data("adapters/a1")});
  CHECK(ad_on_ad.exit_code == 2);
  CHECK(ad_on_ad.err.find("is itself an adapter") != std::string::npos);
  // Removal takes the packed adapter with it.
  json rec = json::parse(d.Mms({"--json", "adapter", "show", "cust-a:1"}).out);
  Mms(d, {"adapter", "rm", "cust-a:1"});
  CHECK(json::parse(d.Mms({"--json", "adapter", "list"}).out).size() == 1);
  CHECK(d.Mms({"model", "verify", "cust-a:2"}).exit_code == 0);
  Mms(d, {"adapter", "rm", "cust-a:2"});
  Mms(d, {"model", "rm", "base:1"});
}

TEST_CASE("bad adapters are refused at registration with exit 2, and nothing is registered") {
  Daemon d;
  REQUIRE(d.ok());
  Bases(d);
  struct Case {
    std::string dir, base, says;
  } cases[] = {
      {"bad_rank", "base", "rank mismatch"},
      {"bad_shape", "base", "shape mismatch with base:1"},
      {"bad_target", "base", "target module 'k_proj' is not in base:1"},
      {"bad_dtype", "base", "wrong dtype: float64"},
      {"bad_missing", "base", "missing file"},
      {"no_such_dir", "base", "does not exist"},
      {"a3", "multi", "not one multi:1 takes stacked adapter weights for"},
  };
  for (const auto& c : cases) {
    auto r = d.Mms({"adapter", "register", "bad", "--base", c.base, "--path", Data("adapters/" + c.dir)});
    INFO(c.dir << " → " << r.err);
    CHECK(r.exit_code == 2);
    CHECK(r.err.find(c.says) != std::string::npos);
  }
  CHECK(d.Mms({"adapter", "register", "bad", "--base", "nope", "--path", Data("adapters/a1")}).exit_code == 4);
  CHECK(json::parse(d.Mms({"--json", "adapter", "list"}).out).empty());
  CHECK_FALSE(std::filesystem::exists(d.data_dir() + "/artifacts/bad"));
  auto served = Predict(d, {"base"});
  CHECK(served.size() == 12);  // the daemon serves on
}

TEST_CASE("adapters registered at once without --version each get the next free number") {
  Daemon d;
  REQUIRE(d.ok());
  Bases(d);
  std::vector<ProcResult> out(3);
  std::vector<std::thread> threads;
  const char* dirs[] = {"a1", "a2", "a3"};
  for (int i = 0; i < 3; ++i)
    threads.emplace_back([&, i] {
      out[i] = d.Mms({"adapter", "register", "cust", "--base", "base", "--path", Data(std::string("adapters/") + dirs[i])});
    });
  for (auto& t : threads) t.join();
  for (const auto& r : out) CHECK_MESSAGE(r.exit_code == 0, r.err);
  std::set<std::string> refs;
  json list = json::parse(d.Mms({"--json", "adapter", "list"}).out);
  for (const auto& a : list) refs.insert(a["ref"].get<std::string>());
  CHECK(refs == std::set<std::string>{"cust:1", "cust:2", "cust:3"});
}

TEST_CASE("an adapter whose stored weights changed since registration is refused, the base serves on, repack repairs it") {
  Daemon d;
  REQUIRE(d.ok());
  Bases(d);
  std::filesystem::copy(Data("adapters/a1"), d.dir() + "/a1", std::filesystem::copy_options::recursive);
  Mms(d, {"adapter", "register", "cust-a", "--base", "base", "--path", d.dir() + "/a1"});
  const std::vector<double> good = Predict(d, {"cust-a"});
  for (int i = 0; i < 3 && d.Mms({"evict", "cust-a"}).exit_code == 0; ++i) {
  }  // back on disk: the next request loads the stored files
  for (const auto& e : std::filesystem::directory_iterator(d.data_dir() + "/artifacts/cust-a"))
    FlipLastByte(e.path().string() + "/adapter.safetensors");  // same size, one byte of a weight
  auto r = d.Mms({"predict", "cust-a", "--input", Data("lora_input.json")});
  CHECK(r.exit_code == 1);
  CHECK_MESSAGE(r.err.find("the stored adapter cust-a:1 is damaged") != std::string::npos, r.err);
  CHECK_MESSAGE(r.err.find("does not match the checksum") != std::string::npos, r.err);
  auto v = d.Mms({"model", "verify", "cust-a:1"});
  CHECK(v.exit_code == 1);
  CHECK_MESSAGE(v.out.find("mms model repack cust-a:1") != std::string::npos, v.out);
  CHECK(Predict(d, {"base"}).size() == 12);
  // Repacked from the registered PEFT directory, checked against the base
  // again, keeping its id: it serves what it served.
  auto rp = d.Mms({"model", "repack", "cust-a:1"});
  REQUIRE_MESSAGE(rp.exit_code == 0, rp.err);
  Close(Predict(d, {"cust-a"}), good, "repacked adapter");
  CHECK(d.Mms({"model", "verify", "cust-a:1"}).exit_code == 0);
  // Not from a config changed since (it would serve at another scale than registered).
  std::string cfg = d.dir() + "/a1/adapter_config.json";
  std::ifstream in(cfg);
  json c = json::parse(in);
  in.close();
  c["lora_alpha"] = c["lora_alpha"].get<double>() * 2;
  std::ofstream(cfg) << c.dump();
  auto changed = d.Mms({"model", "repack", "cust-a:1"});
  CHECK(changed.exit_code == 1);
  CHECK_MESSAGE(changed.err.find("adapter_config.json of cust-a:1") != std::string::npos, changed.err);
  // verify says so too (it used to say "ok", checking the weights' hash only).
  auto vc = d.Mms({"model", "verify", "cust-a:1"});
  CHECK(vc.exit_code == 1);
  CHECK_MESSAGE(vc.out.find("adapter_config.json of cust-a:1") != std::string::npos, vc.out);
  CHECK(d.Mms({"model", "repack", "cust-a:1", "--sample-input", Data("lora_input.json")}).exit_code == 2);
}

TEST_CASE("adapters serve in both modes equal to the base with the adapter merged offline") {
  Daemon d;
  REQUIRE(d.ok());
  Bases(d);
  for (const char* a : {"a1", "a2", "a3"})
    Mms(d, {"adapter", "register", std::string("p-") + a, "--base", "base", "--path", Data(std::string("adapters/") + a)});
  for (const char* a : {"a1", "a2"})
    Mms(d, {"adapter", "register", std::string("s-") + a, "--base", "multi", "--path", Data(std::string("adapters/") + a)});
  auto plain = Predict(d, {"base"});
  Close(Predict(d, {"multi"}), plain, "stacked base without an adapter");
  for (const char* a : {"a1", "a2", "a3"}) {
    auto want = Predict(d, {std::string("merged-") + a});
    Close(Predict(d, {std::string("p-") + a}), want, std::string("mode (a) ") + a);
    Close(Predict(d, {"base", "--adapter", std::string("p-") + a}), want, std::string("--adapter ") + a);
    if (std::string(a) != "a3") {
      Close(Predict(d, {std::string("s-") + a}), want, std::string("mode (b) ") + a);
      Close(Predict(d, {"multi", "--adapter", std::string("s-") + a + ":1"}), want, std::string("--adapter v ") + a);
    }
  }
  Close(Predict(d, {"base"}), plain, "the base afterwards");  // never drifts
  // An adapter of another base, or a model that is no adapter: exit 2.
  auto wrong = d.Mms({"predict", "multi", "--adapter", "p-a1", "--input", Data("lora_input.json")});
  CHECK(wrong.exit_code == 2);
  CHECK(wrong.err.find("adapter p-a1:1 is for base:1, not multi") != std::string::npos);
  // A bare base name means the model: once base:2 is what "base" serves,
  // --adapter p-a1 (built on base:1) still runs on base:1; a version that is
  // not the adapter's base is refused.
  Mms(d, {"model", "register", "base", "--version", "2", "--path", Data("lora_base.pt")});
  Close(Predict(d, {"base", "--adapter", "p-a1"}), Predict(d, {"merged-a1"}), "bare base name after a new version");
  {
    auto r = d.Mms({"--json", "predict", "base", "--adapter", "p-a1", "--input", Data("lora_input.json")});
    REQUIRE(r.exit_code == 0);
    CHECK(json::parse(r.out)["base"] == "base:1");  // the reply names the base that ran
    auto plain_reply = d.Mms({"--json", "predict", "base", "--input", Data("lora_input.json")});
    CHECK_FALSE(json::parse(plain_reply.out).contains("base"));
  }
  auto other_version = d.Mms({"predict", "base:2", "--adapter", "p-a1", "--input", Data("lora_input.json")});
  CHECK(other_version.exit_code == 2);
  CHECK(other_version.err.find("is for base:1, not base:2") != std::string::npos);
  auto notad = d.Mms({"predict", "base", "--adapter", "merged-a1", "--input", Data("lora_input.json")});
  CHECK(notad.exit_code == 2);
  auto unknown_adapter = d.Mms({"predict", "base", "--adapter", "nope", "--input", Data("lora_input.json")});
  CHECK(unknown_adapter.exit_code == 4);
  CHECK_MESSAGE(unknown_adapter.err.find("--adapter: unknown model 'nope'") != std::string::npos, unknown_adapter.err);
  CHECK(unknown_adapter.err.find("mms adapter list --base base") != std::string::npos);
  // The adapters' own tier in mms pool.
  json pool = json::parse(d.Mms({"--json", "pool"}).out);
  REQUIRE(pool.contains("adapters"));
  CHECK(pool["adapters"]["devices"][0]["models"].size() == 5);
}

TEST_CASE("bfloat16 bases and adapters serve through the daemon within bfloat16's tolerance") {
  Daemon d;
  REQUIRE(d.ok());
  std::string in = Data("lora_input_bf16.json");
  Mms(d, {"model", "register", "base16", "--version", "1", "--path", Data("lora_base_bf16.pt"), "--sample-input", in, "-q"});
  Mms(d, {"model", "register", "multi16", "--version", "1", "--path", Data("lora_multi_bf16.pt"), "--sample-input", in,
          "-q"});
  Mms(d, {"model", "register", "merged16", "--version", "1", "--path", Data("lora_merged_a1_bf16.pt"), "-q"});
  Mms(d, {"adapter", "register", "p16", "--base", "base16", "--path", Data("adapters/a1_bf16")});
  Mms(d, {"adapter", "register", "s16", "--base", "multi16", "--path", Data("adapters/a1_bf16")});
  auto run = [&](const std::string& model) {
    auto r = d.Mms({"--json", "predict", model, "--input", in});
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    json o = json::parse(r.out)["outputs"]["output"];
    CHECK(o["dtype"] == "bfloat16");
    return o["data"].get<std::vector<double>>();
  };
  auto worst = [](const std::vector<double>& got, const std::vector<double>& want) {
    REQUIRE(got.size() == want.size());
    double w = 0;
    for (size_t i = 0; i < got.size(); ++i) w = std::max(w, std::abs(got[i] - want[i]) / (1 + std::abs(want[i])));
    return w;
  };
  auto want = run("merged16");
  // The tolerance is far below what the adapter changes, so a lost adapter fails.
  CHECK(worst(run("base16"), want) > 0.2);
  for (const char* model : {"p16", "s16"}) {
    double w = worst(run(model), want);
    INFO(model << ": worst relative difference " << w);
    CHECK(w < 3e-2);  // bfloat16: 8-bit significand
  }
  // A float32 adapter on the bfloat16 base: refused at registration, exit 2.
  auto wrong = d.Mms({"adapter", "register", "x", "--base", "base16", "--path", Data("adapters/a1")});
  CHECK(wrong.exit_code == 2);
  CHECK(wrong.err.find("convert the adapter to bfloat16") != std::string::npos);
}

TEST_CASE("a stacked base mixes adapters in one batch: concurrent requests, each gets its adapter's rows") {
  Daemon d("[scheduler]\nbatch_when_idle = false\n");  // (the requests gather over the delay)
  REQUIRE(d.ok());
  Bases(d);
  for (const char* a : {"a1", "a2"})
    Mms(d, {"adapter", "register", std::string("s-") + a, "--base", "multi", "--path", Data(std::string("adapters/") + a)});
  std::map<std::string, std::vector<double>> want{{"multi", Predict(d, {"base"})},
                                                  {"s-a1", Predict(d, {"merged-a1"})},
                                                  {"s-a2", Predict(d, {"merged-a2"})}};
  auto before = json::parse(d.Mms({"--json", "pool"}).out)["scheduler"].value("multi:1", json::object());
  auto client = Connect(d);
  auto inputs = mms::ReadTensorFile(Data("lora_input.json")).value();
  const int n = 30;
  const char* models[] = {"s-a1", "s-a2", "multi"};
  std::vector<std::vector<double>> got(n);
  std::vector<std::string> errors(n);
  std::vector<std::thread> ts;
  for (int i = 0; i < n; ++i)
    ts.emplace_back([&, i] {
      mms::proto::Message m;
      m.type = mms::proto::kPredict;
      m.body = {{"model", models[i % 3]}};
      m.tensors = inputs;
      auto r = client->Call(m);
      if (!r.ok()) errors[i] = r.status().ToString();
      else got[i] = mms::TensorToDoubles(r->tensors.at(0));
    });
  for (auto& t : ts) t.join();
  for (int i = 0; i < n; ++i) {
    INFO("request " << i << " " << errors[i]);
    REQUIRE(errors[i].empty());
    Close(got[i], want[models[i % 3]], models[i % 3]);
  }
  json after = json::parse(d.Mms({"--json", "pool"}).out)["scheduler"]["multi:1"];
  int executed = after["executed"].get<int>() - before.value("executed", 0);
  int batches = after["batches"].get<int>() - before.value("batches", 0);
  INFO(after.dump());
  CHECK(executed == n);
  CHECK(batches < n);  // adapters shared executions
}

TEST_CASE("adapters have their own tiers: a small [lora] budget swaps them, every answer still right") {
  Daemon d("[lora]\ndevice_budget = \"4KiB\"\nhost_budget = \"8KiB\"\n");
  REQUIRE(d.ok());
  Bases(d);
  const int n = 12;  // 1 KiB each: 4 fit on the device, 8 in host memory
  for (int i = 0; i < n; ++i)
    Mms(d, {"adapter", "register", "t" + std::to_string(i), "--base", "multi", "--path",
            Data(i % 2 ? "adapters/a1" : "adapters/a2")});
  auto w1 = Predict(d, {"merged-a1"}), w2 = Predict(d, {"merged-a2"});
  for (int round = 0; round < 2; ++round)
    for (int i = 0; i < n; ++i) Close(Predict(d, {"t" + std::to_string(i)}), i % 2 ? w1 : w2, "t" + std::to_string(i));
  json a = json::parse(d.Mms({"--json", "pool"}).out)["adapters"];
  INFO(a.dump());
  CHECK(a["devices"][0]["used"].get<uint64_t>() <= 4096);
  CHECK(a["totals"]["evictions"].get<int>() > 0);
  CHECK(a["totals"]["loads"].get<int>() > n);  // evicted ones were read again from disk
  // The models' pool is untouched by adapter churn.
  json p = json::parse(d.Mms({"--json", "pool"}).out);
  CHECK(p["totals"]["evictions"] == 0);
}

TEST_CASE("an adapter is a model of its own: an A/B experiment, a shadow run and a pin work on adapters") {
  Daemon d;
  REQUIRE(d.ok());
  Bases(d);
  Mms(d, {"adapter", "register", "cust", "--base", "multi", "--path", Data("adapters/a1")});  // cust:1
  Mms(d, {"adapter", "register", "cust", "--base", "multi", "--path", Data("adapters/a2")});  // cust:2
  Mms(d, {"model", "stage", "cust:1", "production"});
  auto w1 = Predict(d, {"merged-a1"}), w2 = Predict(d, {"merged-a2"});
  Mms(d, {"experiment", "create", "ab", "--model", "cust", "--control", "1", "--treatment", "2", "--percent", "50"});
  int treated = 0;
  for (int u = 0; u < 20; ++u) {
    auto r = d.Mms({"--json", "predict", "cust", "--user", "u" + std::to_string(u), "--input", Data("lora_input.json")});
    REQUIRE(r.exit_code == 0);
    json j = json::parse(r.out);
    std::vector<double> out;
    for (const auto& v : j["outputs"]["output"]["data"]) out.push_back(v.get<double>());
    bool t = j["variant"] == "treatment";
    treated += t;
    CHECK(j["version"] == (t ? "2" : "1"));
    Close(out, t ? w2 : w1, t ? "treatment" : "control");
  }
  CHECK(treated > 0);
  CHECK(treated < 20);
  Mms(d, {"experiment", "stop", "ab"});
  // Shadow: cust:2 mirrors cust:1's traffic; their outputs differ, and it says so.
  Mms(d, {"shadow", "start", "cust", "--candidate", "2", "--ratio", "1"});
  // Mirroring is best effort (a full queue drops rather than waits): send
  // until five were.
  bool mirrored = WaitFor([&] {
    Predict(d, {"cust"});
    auto s = d.Mms({"--json", "shadow", "stats", "cust"});
    return s.exit_code == 0 && json::parse(s.out)["requests"]["mirrored"].get<int>() >= 5;
  }, 30);
  CHECK(mirrored);
  json stats = json::parse(d.Mms({"--json", "shadow", "stats", "cust"}).out);
  INFO(stats.dump());
  CHECK(stats["requests"]["failed"] == 0);
  CHECK(stats["diverged"].get<int>() >= 5);
  Mms(d, {"shadow", "stop", "cust"});
  // Pinned: kept in the adapters' device tier.
  Mms(d, {"pin", "cust:2"});
  bool pinned = false;
  json after_pin = json::parse(d.Mms({"--json", "pool"}).out)["adapters"];
  INFO(after_pin.dump());
  for (const auto& m : after_pin["devices"][0]["models"])
    if (m["ref"] == "cust:2") pinned = m["pinned"].get<bool>();
  CHECK(pinned);
  {  // the text form shows the adapters' pool too
    std::string text = d.Mms({"pool"}).out;
    auto at = text.find("LoRA adapters:");
    CHECK(at != std::string::npos);
    CHECK(text.find("cust:2", at) != std::string::npos);
  }
  // Its base is kept with it (a pinned adapter on an evicted base would pay
  // the base's load anyway), and released with it.
  auto base_pinned = [&] {
    json models = json::parse(d.Mms({"--json", "pool"}).out);
    for (const auto& dev : models["devices"])
      for (const auto& m : dev["models"])
        if (m["ref"] == "multi:1") return m["pinned"].get<bool>();
    return false;
  };
  CHECK(WaitFor(base_pinned, 20));
  // Evicting or unpinning the base says what keeps it.
  auto ev = d.Mms({"evict", "multi:1"});
  CHECK(ev.exit_code == 6);
  CHECK_MESSAGE(ev.err.find("multi:1 is kept as the base of pinned adapter cust:2 (pinned; unpin it first (mms unpin "
                            "cust:2))") != std::string::npos, ev.err);
  auto un = d.Mms({"unpin", "multi:1"});
  CHECK(un.exit_code == 4);
  CHECK_MESSAGE(un.err.find("is not pinned by mms pin, but kept as the base of pinned adapter cust:2 (mms unpin cust:2)") !=
                    std::string::npos, un.err);
  Mms(d, {"unpin", "cust:2"});
  CHECK_FALSE(base_pinned());
}

TEST_CASE("a shadow of an adapter on a plain base takes what predict takes: its base's inputs as now recorded, any shape") {
  // It matched the adapter's registration-time copy of its base's inputs:
  // once a repack changed them, every mirrored request failed.
  Daemon d;
  REQUIRE(d.ok());
  Bases(d);  // base:1 with a [3, 16] sample
  Mms(d, {"adapter", "register", "cust", "--base", "base", "--path", Data("adapters/a1")});  // cust:1
  Mms(d, {"adapter", "register", "cust", "--base", "base", "--path", Data("adapters/a2")});  // cust:2
  Mms(d, {"model", "stage", "cust:1", "production"});
  Mms(d, {"shadow", "start", "cust", "--candidate", "2", "--ratio", "1"});
  // The base now takes one row of 16 without a batch dimension (its sample
  // says so); the adapters still hold a copy saying [N, 16].
  std::string one = d.dir() + "/one.json";
  std::string text = "{\"x\": {\"dtype\": \"float32\", \"shape\": [16], \"data\": [";
  for (int i = 0; i < 16; ++i) text += (i ? "," : "") + std::to_string((i % 5 - 2) * 0.25);
  std::ofstream(one) << text + "]}}";
  Mms(d, {"model", "repack", "base:1", "--sample-input", one, "-q"});
  std::vector<double> want2;  // cust:2's own answer
  bool mirrored = WaitFor([&] {
    auto r = d.Mms({"--json", "predict", "cust", "--input", one});
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    if (want2.empty()) {
      auto c = d.Mms({"--json", "predict", "cust:2", "--input", one});
      REQUIRE_MESSAGE(c.exit_code == 0, c.err);
      const json own = json::parse(c.out);
      for (const auto& v : own["outputs"]["output"]["data"]) want2.push_back(v.get<double>());
    }
    auto s = d.Mms({"--json", "shadow", "stats", "cust"});
    REQUIRE(s.exit_code == 0);
    json j = json::parse(s.out);
    INFO(j.dump());
    REQUIRE(j["requests"]["failed"] == 0);
    return j["requests"]["mirrored"].get<int>() >= 3;
  }, 30);
  CHECK(mirrored);
  json stats = json::parse(d.Mms({"--json", "shadow", "stats", "cust"}).out);
  INFO(stats.dump());
  CHECK(stats["diverged"].get<int>() >= 3);  // a1 vs a2: the candidate really ran with its adapter
  json samples = json::parse(d.Mms({"--json", "shadow", "samples", "cust", "--limit", "1"}).out)["samples"];
  REQUIRE(samples.size() == 1);
  std::vector<double> shadow;
  for (const auto& v : samples[0]["shadow"]["output"]["data"]) shadow.push_back(v.get<double>());
  Close(shadow, want2, "the shadow's output vs cust:2 predicted");
}

TEST_CASE("deadlines: an adapter's request dropped while loading says which was loading, its base or itself") {
  // It said the adapter was loading while its base's load held it up.
  Daemon d("[pool]\nload_retry_backoff = \"100ms\"\n");
  REQUIRE(d.ok());
  Mms(d, {"model", "register", "base", "--version", "1", "--path", Data("lora_base.pt"), "-q"});
  Mms(d, {"adapter", "register", "cust", "--base", "base", "--path", Data("adapters/a1")});  // cust:1
  auto predict = [&](const std::string& ref, const std::string& deadline_ms) {
    return d.Mms({"predict", ref, "--deadline-ms", deadline_ms, "--input", Data("lora_input.json")});
  };
  {
    BlockedFile weights(PackedWeights(d.data_dir(), "base", "1"));
    REQUIRE(weights.ok());
    auto r = predict("cust", "300");
    CHECK(r.exit_code == 5);
    CHECK_MESSAGE(r.err.find("dropped at its deadline (300 ms) while cust:1's base base:1 was still loading; retry") !=
                      std::string::npos, r.err);
    REQUIRE(weights.Release());  // that load fails on an empty file; the next one loads
  }
  REQUIRE(WaitFor([&] { return predict("base", "10000").exit_code == 0; }, 20));
  const std::string packed = std::filesystem::path(PackedWeights(d.data_dir(), "cust", "1")).parent_path().string();
  BlockedFile adapter(packed + "/adapter.safetensors");
  REQUIRE(adapter.ok());
  auto r = predict("cust", "300");
  CHECK(r.exit_code == 5);
  CHECK_MESSAGE(r.err.find("dropped at its deadline (300 ms) while cust:1 was still loading; retry") != std::string::npos,
                r.err);
  REQUIRE(adapter.Release());
  CHECK(WaitFor([&] { return predict("cust", "10000").exit_code == 0; }, 20));
}

TEST_CASE("on several devices an adapter is placed beside its base: served, pinned, and pinned at a restart") {
  // Placed by load alone, an adapter went to the emptiest adapters' budget,
  // and every batch on its base copied it between devices.
  Daemon d("[pool]\ndevices = [\"cpu:0\", \"cpu:1\"]\npinned = [\"filler\"]\n");
  REQUIRE(d.ok());
  auto where = [&](const std::string& section, const std::string& ref) {  // the device's index, -1: none
    json p = json::parse(d.Mms({"--json", "pool"}).out);
    const json& devices = section.empty() ? p["devices"] : p[section]["devices"];
    for (size_t i = 0; i < devices.size(); ++i)
      for (const auto& m : devices[i]["models"])
        if (m["ref"] == ref) return static_cast<int>(i);
    return -1;
  };
  Mms(d, {"model", "register", "filler", "--version", "1", "--path", Data("lora_base.pt"), "-q"});
  REQUIRE(WaitFor([&] { return where("", "filler:1") == 0; }, 20));  // pinned: on the first of two empty devices
  Mms(d, {"model", "register", "base", "--version", "1", "--path", Data("lora_base.pt"), "-q"});
  for (const char* a : {"a1", "a2"}) Mms(d, {"adapter", "register", "cust", "--base", "base", "--path", Data(std::string("adapters/") + a)});
  Predict(d, {"base"});
  REQUIRE(where("", "base:1") == 1);  // the emptier device
  Predict(d, {"cust:1"});
  CHECK(where("adapters", "cust:1") == 1);  // the adapters' budgets were both empty
  Mms(d, {"pin", "cust:2"});
  CHECK(where("adapters", "cust:2") == 1);
  // At a restart pins apply before any request: the base's load claims its
  // device, then the adapter is placed beside it.
  d.child().Signal(SIGTERM);
  REQUIRE(d.child().Wait(30) == 0);
  REQUIRE(d.Restart());
  REQUIRE(WaitFor([&] { return where("adapters", "cust:2") >= 0; }, 20));
  CHECK(where("", "filler:1") == 0);
  CHECK(where("", "base:1") == 1);
  CHECK(where("adapters", "cust:2") == 1);
}

TEST_CASE("an adapter whose base is unhealthy is unhealthy too, in mms health and /health/ADAPTER") {
  // Every request to it failed while both said healthy: a load balancer kept sending it traffic.
  const int port = FreePort();
  Daemon d("[metrics]\naddress = \"127.0.0.1:" + std::to_string(port) + "\"\n[pool]\nload_retry_backoff = \"1h\"\n");
  REQUIRE(d.ok());
  Bases(d);
  Mms(d, {"adapter", "register", "cust", "--base", "base", "--path", Data("adapters/a1")});
  Predict(d, {"cust"});
  CHECK(d.Mms({"health", "cust"}).exit_code == 0);
  for (int i = 0; i < 3 && d.Mms({"evict", "base"}).exit_code == 0; ++i) {
  }  // back on disk: the next request loads its damaged files
  FlipLastByte(PackedWeights(d.data_dir(), "base", "1"));
  CHECK(d.Mms({"predict", "cust", "--input", Data("lora_input.json")}).exit_code == 1);
  auto h = d.Mms({"health", "cust"});
  CHECK(h.exit_code == 1);
  CHECK_MESSAGE(h.out.find("its base base:1 is unhealthy") != std::string::npos, h.out);
  auto code = [&](const std::string& path) {
    return Run({"/usr/bin/curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:" + std::to_string(port) + path}).out;
  };
  CHECK(code("/health/base") == "503");
  CHECK(code("/health/cust") == "503");
  CHECK(code("/health/merged-a1") == "200");
  CHECK(d.Mms({"health", "merged-a1"}).exit_code == 0);
}

TEST_CASE("adapter register without --version takes the next integer above every version, dotted ones too") {
  // After 1.1.0 it took 1, which sorts below: the bare name kept serving 1.1.0.
  Daemon d;
  REQUIRE(d.ok());
  Bases(d);
  Mms(d, {"adapter", "register", "cust", "--base", "base", "--path", Data("adapters/a1"), "--version", "1.1.0"});
  auto r = d.Mms({"adapter", "register", "cust", "--base", "base", "--path", Data("adapters/a2")});
  REQUIRE_MESSAGE(r.exit_code == 0, r.err);
  CHECK_MESSAGE(r.out.find("cust:2") != std::string::npos, r.out);
  CHECK(json::parse(d.Mms({"--json", "model", "show", "cust"}).out)["ref"] == "cust:2");
  // An empty --adapter (an unset variable) is refused, not the plain base.
  auto e = d.Mms({"predict", "base", "--adapter", "", "--input", Data("lora_input.json")});
  CHECK(e.exit_code == 2);
  CHECK_MESSAGE(e.err.find("--adapter: is empty") != std::string::npos, e.err);
}
