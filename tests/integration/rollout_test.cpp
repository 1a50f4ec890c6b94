// Shadow runs and canary rollouts through the real daemon and CLI.
#include <doctest/doctest.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
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

// `file`: a test model's name, or a path.
void Register(const Daemon& d, const std::string& name, const std::string& v, const std::string& file) {
  auto r = d.Mms({"model", "register", name, "--version", v, "--path", file[0] == '/' ? file : Data(file), "-q"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.err);
}

// tiny:1 (tiny.pt) in production and tiny:2 from `candidate_file`, the
// shadow's or canary's candidate.
void SetupTiny(const Daemon& d, const std::string& candidate_file) {
  Register(d, "tiny", "1", "tiny.pt");
  Register(d, "tiny", "2", candidate_file);
  REQUIRE(d.Mms({"model", "stage", "tiny:1", "production", "-q"}).exit_code == 0);
}

// `ref` as `mms pool --json` shows it on the first device (null when not there).
json OnDevice(const Daemon& d, const std::string& ref) {
  auto r = d.Mms({"--json", "pool"});
  REQUIRE(r.exit_code == 0);
  json pool = json::parse(r.out);
  for (const auto& m : pool["devices"][0]["models"])
    if (m["ref"] == ref) return m;
  return json();
}

// Sends predictions from an in-process client until stopped (fast: no process per request).
class Traffic {
 public:
  Traffic(const Daemon& d, const std::string& model, const std::string& input_file) {
    mms::proto::Client::Options o;
    o.socket_path = d.socket();
    client_ = mms::proto::Client::Connect(o).value();
    inputs_ = mms::ReadTensorFile(input_file).value();
    model_ = model;
  }
  ~Traffic() { Stop(); }
  void Start() {
    thread_ = std::thread([this] {
      int u = 0;
      while (!stop_) {
        mms::proto::Message m;
        m.type = mms::proto::kPredict;
        m.body = {{"model", model_}, {"user", "user-" + std::to_string(u++ % 500)}};
        m.tensors = inputs_;
        auto r = client_->Call(m);
        ++sent_;
        if (!r.ok()) ++failed_;
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
      }
    });
  }
  void Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  int Send(int n) {
    int ok = 0;
    for (int i = 0; i < n; ++i) {
      mms::proto::Message m;
      m.type = mms::proto::kPredict;
      m.body = {{"model", model_}};
      m.tensors = inputs_;
      ok += client_->Call(m).ok();
    }
    return ok;
  }
  std::atomic<int> sent_{0}, failed_{0};

 private:
  std::unique_ptr<mms::proto::Client> client_;
  std::vector<mms::Tensor> inputs_;
  std::string model_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// An input tiny.pt serves and throws.pt raises on (a negative first value), in the daemon's dir.
std::string NegativeInput(const Daemon& d) {
  const std::string path = d.dir() + "/neg.json";
  std::ofstream(path) << R"({"x": {"dtype": "float32", "shape": [1, 4], "data": [-1, 2, 3, 4]}})";
  return path;
}

// tiny:1 in production and tiny:2 (throws.pt) as its canary at 50%, an hour
// a stage, judged every 100 ms from 5 requests: failing traffic rolls it back fast.
void StartThrowingCanary(const Daemon& d) {
  SetupTiny(d, "throws.pt");
  REQUIRE(d.Mms({"canary", "start", "tiny", "--candidate", "2", "--stages", "50,100", "--stage-duration", "1h",
                 "--check-interval", "100ms", "--min-requests", "5"})
              .exit_code == 0);
}

json ShadowStats(const Daemon& d, const std::string& model) {
  auto r = d.Mms({"--json", "shadow", "stats", model});
  REQUIRE_MESSAGE(r.exit_code == 0, r.err);
  return json::parse(r.out);
}
}  // namespace

TEST_CASE("a shadow mirrors requests, compares outputs, and keeps diverging samples") {
  Daemon d;
  REQUIRE(d.ok());
  Register(d, "tiny", "1", "tiny.pt");
  Register(d, "tiny", "2", "tiny_v2.pt");
  Register(d, "tiny", "3", "tiny.pt");  // same weights as 1
  REQUIRE(d.Mms({"model", "stage", "tiny:1", "production", "-q"}).exit_code == 0);
  auto s = d.Mms({"--json", "shadow", "start", "tiny", "--candidate", "2", "--tolerance", "1e-6"});
  REQUIRE_MESSAGE(s.exit_code == 0, s.err);
  {  // Started again the same (a retried CI job): nothing to do; otherwise the conflict.
    auto again = d.Mms({"--json", "shadow", "start", "tiny", "--candidate", "2", "--tolerance", "1e-6"});
    CHECK(again.exit_code == 0);
    CHECK(json::parse(again.out)["unchanged"] == true);
    CHECK(json::parse(again.out)["id"] == json::parse(s.out)["id"]);
    CHECK(d.Mms({"shadow", "start", "tiny", "--candidate", "2"}).exit_code == 6);  // another tolerance
  }
  Traffic t(d, "tiny", Data("tiny_input.json"));
  REQUIRE(t.Send(20) == 20);
  REQUIRE(WaitFor([&] { return ShadowStats(d, "tiny")["requests"]["mirrored"] == 20; }, 20));
  json st = ShadowStats(d, "tiny");
  CHECK(st["diverged"] == 20);
  CHECK(st["divergence_rate"] == 1.0);
  CHECK(st["requests"]["dropped"] == 0);
  CHECK(st["measures"]["max_abs_diff"]["count"] == 20);
  CHECK(st["measures"]["max_abs_diff"]["p50"].get<double>() > 1e-3);
  CHECK(st["latency_delta_ms"]["count"] == 20);
  // The paired latency delta (shadow − primary on the same input) has its percentiles.
  CHECK(st["latency_delta_ms"]["p50"].get<double>() <= st["latency_delta_ms"]["p99"].get<double>());
  CHECK(std::abs(st["latency_delta_ms"]["p50"].get<double>()) < 1000);
  CHECK(st["measures"]["argmax_agreement"]["count"] == 20);
  // tiny's outputs have five or fewer classes: a top-5 is every one, so it is not measured.
  CHECK(st["measures"]["topk_agreement"]["count"] == 0);
  auto samples = json::parse(d.Mms({"--json", "shadow", "samples", "tiny", "--limit", "3"}).out)["samples"];
  REQUIRE(samples.size() == 3);
  CHECK(samples[0].contains("primary"));
  CHECK(samples[0].contains("shadow"));
  CHECK(samples[0]["reason"].get<std::string>().find("max abs diff") != std::string::npos);
  // In words: a line per sample and per tensor set (it printed raw JSON objects).
  auto text = d.Mms({"shadow", "samples", "tiny", "--limit", "1"}).out;
  CHECK_MESSAGE(text.rfind("#1 ", 0) == 0, text);
  CHECK(text.find("\n   primary: {") != std::string::npos);
  CHECK(text.find("\n   shadow: {") != std::string::npos);
  // Shadow work is not serving: the candidate has no serving figures.
  json stats = json::parse(d.Mms({"--json", "stats"}).out);
  for (const auto& m : stats["models"]) CHECK(m["ref"] != "tiny:2");
  CHECK(d.Mms({"shadow", "stop", "tiny"}).exit_code == 0);
  // Identical weights: no divergence.
  REQUIRE(d.Mms({"shadow", "start", "tiny", "--candidate", "3", "--tolerance", "0"}).exit_code == 0);
  REQUIRE(t.Send(10) == 10);
  REQUIRE(WaitFor([&] { return ShadowStats(d, "tiny")["requests"]["mirrored"] == 10; }, 20));
  CHECK(ShadowStats(d, "tiny")["diverged"] == 0);
  CHECK(ShadowStats(d, "tiny")["measures"]["cosine_similarity"]["p50"].get<double>() == doctest::Approx(1.0));
}

TEST_CASE("a shadow's figures outlive mmsd: kept across a SIGKILL beside the new count, and after the run stops") {
  Daemon d("[experiments]\nflush_interval = \"200ms\"\n");
  REQUIRE(d.ok());
  SetupTiny(d, "tiny_v2.pt");
  REQUIRE(d.Mms({"shadow", "start", "tiny", "--candidate", "2"}).exit_code == 0);
  {
    Traffic t(d, "tiny", Data("tiny_input.json"));
    REQUIRE(t.Send(15) == 15);
  }
  REQUIRE(WaitFor([&] { return ShadowStats(d, "tiny")["requests"]["mirrored"] == 15; }, 20));
  // Saved by a flush (every 200 ms).
  REQUIRE(WaitFor([&] {
    return SqlInt(d.data_dir() + "/registry.db",
                  "SELECT json_extract(figures_json, '$.requests.mirrored') FROM shadows") == 15;
  }, 20));
  d.child().Signal(SIGKILL);
  d.child().Wait(10);
  // With mmsd down, the saved figures are shown (it exited 3, the figures in the registry all along).
  auto down = d.Mms({"--json", "shadow", "stats", "tiny"});
  REQUIRE_MESSAGE(down.exit_code == 0, down.err);
  CHECK(json::parse(down.out)["requests"]["mirrored"] == 15);
  CHECK_MESSAGE(down.err.find("mmsd is not running: the figures it last saved") != std::string::npos, down.err);
  CHECK(d.Mms({"shadow", "stats", "tiny"}).out.find("running, but mmsd is not") != std::string::npos);
  REQUIRE(d.Restart());
  REQUIRE(WaitFor([&] { return ShadowStats(d, "tiny").contains("before_restart"); }, 20));
  json st = ShadowStats(d, "tiny");
  CHECK(st["before_restart"]["requests"]["mirrored"] == 15);
  CHECK(st["before_restart"]["diverged"] == 15);
  CHECK(d.Mms({"shadow", "stats", "tiny"}).out.find("before a restart: mirrored 15") != std::string::npos);
  // Stopped, then a clean restart: the run's figures are still there.
  {
    Traffic t(d, "tiny", Data("tiny_input.json"));
    REQUIRE(t.Send(5) == 5);
  }
  REQUIRE(WaitFor([&] { return ShadowStats(d, "tiny")["requests"]["mirrored"] == 5; }, 20));
  REQUIRE(d.Mms({"shadow", "stop", "tiny"}).exit_code == 0);
  d.child().Signal(SIGTERM);
  REQUIRE(d.child().Wait(20) == 0);
  REQUIRE(d.Restart());
  json after = ShadowStats(d, "tiny");
  CHECK(after["running"] == false);
  CHECK(after["state"] == "stopped");
  CHECK(after["requests"]["mirrored"] == 5);
  CHECK(after["before_restart"]["requests"]["mirrored"] == 15);
  CHECK(after["note"].get<std::string>().find("as the daemon that ran it saved them") != std::string::npos);
}

TEST_CASE("a shadow's hold on its candidate is named in mms pool and evict, released while idle, yielded when refused") {
  Daemon d;
  REQUIRE(d.ok());
  SetupTiny(d, "tiny_v2.pt");
  REQUIRE(d.Mms({"shadow", "start", "tiny", "--candidate", "2"}).exit_code == 0);
  auto candidate = [&] { return OnDevice(d, "tiny:2"); };
  const std::string holder = "the shadow run of tiny (mms shadow stop tiny ends it)";
  {
    Traffic t(d, "tiny", Data("tiny_input.json"));
    t.Start();  // jobs keep coming: the hold stays
    REQUIRE(WaitFor([&] { return ShadowStats(d, "tiny")["requests"]["mirrored"].get<int>() >= 5; }, 20));
    json m = candidate();
    CHECK(m["in_flight"] == 0);
    CHECK(m["held_by"] == json::array({holder}));
    CHECK(d.Mms({"pool"}).out.find("tiny:2 is held by " + holder) != std::string::npos);
    auto evict = d.Mms({"evict", "tiny:2"});
    CHECK(evict.exit_code == 6);
    CHECK_MESSAGE(evict.err.find("held by " + holder) != std::string::npos, evict.err);
    // Refused for its hold, the shadow yields: it lets go and evicts the
    // candidate itself, though jobs keep coming, and takes it back later.
    CHECK(WaitFor([&] { return candidate().is_null(); }, 20));
    CHECK(WaitFor([&] {
      return ShadowStats(d, "tiny").value("last_error", "").find("yielded tiny:2's memory to serving") != std::string::npos;
    }, 20));
    CHECK(d.log().find("shadow_yielded") != std::string::npos);
  }
}

TEST_CASE("shadow start never evicts the production model for its candidate: free room only, as its jobs") {
  // The start's warm-up loaded the candidate as a request would, evicting
  // production to make room; production's next request paid a cold load.
  Daemon d("[pool]\ndevices = [\"cpu:0\"]\ndevice_budget = \"1MiB\"\nhost_budget = \"1MiB\"\n");
  REQUIRE(d.ok());
  for (const char* v : {"1", "2", "3", "4", "5"}) Register(d, "s", v, "slow.pt");  // ~256 KiB each: 4 fill the device
  REQUIRE(d.Mms({"model", "stage", "s:1", "production", "-q"}).exit_code == 0);
  for (const char* pin : {"s:2", "s:3", "s:4"}) REQUIRE(d.Mms({"pin", pin}).exit_code == 0);
  REQUIRE(d.Mms({"predict", "s", "--input", Data("slow_input.json")}).exit_code == 0);
  REQUIRE(!OnDevice(d, "s:1").is_null());
  auto st = d.Mms({"shadow", "start", "s", "--candidate", "5"});
  REQUIRE_MESSAGE(st.exit_code == 0, st.err);
  CHECK(!OnDevice(d, "s:1").is_null());  // production stays
  CHECK(OnDevice(d, "s:5").is_null());
  CHECK(Count(d.log(), "from=cpu:0 model=s:1 to=host") == 0);  // never evicted
  // Its jobs fail for want of room, counted; users are served from the warm production model.
  auto p = d.Mms({"--json", "predict", "s", "--input", Data("slow_input.json")});
  REQUIRE(p.exit_code == 0);
  CHECK(json::parse(p.out)["loaded"] == false);
  CHECK(WaitFor([&] { return ShadowStats(d, "s")["requests"]["failed"].get<int>() >= 1; }, 20));
}

TEST_CASE("a shadow whose candidate becomes production ends, and its stats say why and when") {
  // It showed "running" with nothing counted: the candidate served every request itself.
  Daemon d("[registry]\npoll_interval = \"200ms\"\n");
  REQUIRE(d.ok());
  SetupTiny(d, "tiny_v2.pt");
  REQUIRE(d.Mms({"shadow", "start", "tiny", "--candidate", "2"}).exit_code == 0);
  Traffic t(d, "tiny", Data("tiny_input.json"));
  REQUIRE(t.Send(3) == 3);
  REQUIRE(WaitFor([&] { return ShadowStats(d, "tiny")["requests"]["mirrored"].get<int>() >= 3; }, 20));
  REQUIRE(d.Mms({"model", "stage", "tiny:2", "production", "-q"}).exit_code == 0);
  CHECK(WaitFor([&] { return ShadowStats(d, "tiny")["running"] == false; }, 20));
  json st = ShadowStats(d, "tiny");
  CHECK(st["reason"] == "its candidate became the production version");
  CHECK(st["stopped_ms"].is_number());
  CHECK(st["requests"]["mirrored"] == 3);  // the figures of the run stay
  auto text = d.Mms({"shadow", "stats", "tiny"});
  CHECK_MESSAGE(text.out.find("(stopped at ") != std::string::npos, text.out);
  CHECK_MESSAGE(text.out.find("UTC: its candidate became the production version)") != std::string::npos, text.out);
}

TEST_CASE("a shadow whose outputs have another structure counts them apart, not as perfect agreement") {
  // max_abs_diff 0 and cosine 1 were recorded for outputs of another shape.
  Daemon d;
  REQUIRE(d.ok());
  SetupTiny(d, "tied.pt");  // output [rows, 3] against tiny's [rows, 4]
  REQUIRE(d.Mms({"shadow", "start", "tiny", "--candidate", "2"}).exit_code == 0);
  Traffic t(d, "tiny", Data("tiny_input.json"));
  REQUIRE(t.Send(3) == 3);
  REQUIRE(WaitFor([&] { return ShadowStats(d, "tiny")["requests"]["mirrored"].get<int>() >= 3; }, 20));
  json st = ShadowStats(d, "tiny");
  CHECK(st["diverged"] == 3);
  CHECK(st["mismatched"] == 3);
  CHECK(st["measures"]["max_abs_diff"]["count"] == 0);
  CHECK(st["measures"]["cosine_similarity"]["count"] == 0);
  auto text = d.Mms({"shadow", "stats", "tiny"});
  CHECK_MESSAGE(text.out.find("of which 3 with outputs of another structure") != std::string::npos, text.out);
}

TEST_CASE("an idle shadow lets go of its candidate, which can then be evicted") {
  Daemon d;
  REQUIRE(d.ok());
  SetupTiny(d, "tiny_v2.pt");
  REQUIRE(d.Mms({"shadow", "start", "tiny", "--candidate", "2"}).exit_code == 0);
  Traffic t(d, "tiny", Data("tiny_input.json"));
  REQUIRE(t.Send(3) == 3);
  REQUIRE(WaitFor([&] { return ShadowStats(d, "tiny")["requests"]["mirrored"].get<int>() >= 3; }, 20));
  auto held = [&] { return OnDevice(d, "tiny:2").contains("held_by"); };
  // No jobs for 2 s: the worker lets go, and the candidate can be evicted.
  REQUIRE(WaitFor([&] { return !held(); }, 20));
  auto evict = d.Mms({"evict", "tiny:2"});
  CHECK_MESSAGE(evict.exit_code == 0, evict.err);
  // The next job takes it again (loading it back into free room).
  REQUIRE(t.Send(3) == 3);
  REQUIRE(WaitFor([&] { return ShadowStats(d, "tiny")["requests"]["mirrored"].get<int>() >= 6; }, 20));
  CHECK(ShadowStats(d, "tiny")["requests"]["failed"] == 0);
}

TEST_CASE("a shadow mirrors from when its candidate is loaded, until then its stats say it is loading") {
  Daemon d("[pool]\nload_threads = 2\nload_retry_backoff = \"100ms\"\n[registry]\npoll_interval = \"30s\"\n");
  REQUIRE(d.ok());
  SetupTiny(d, "tiny.pt");
  BlockedFile weights(PackedWeights(d.data_dir(), "tiny", "2"));  // its load waits for the test
  REQUIRE(weights.ok());
  // `shadow start` returns once mirroring starts: in the background meanwhile.
  Child start;
  REQUIRE(start.Start({MmsBin(), "--socket", d.socket(), "--data-dir", d.data_dir(), "shadow", "start", "tiny",
                       "--candidate", "2"},
                      d.dir() + "/start.log"));
  REQUIRE(WaitFor([&] { return d.Mms({"shadow", "status", "tiny"}, 20).out.find("tiny:2") != std::string::npos; }, 20));
  Traffic t(d, "tiny", Data("tiny_input.json"));
  REQUIRE(t.Send(5) == 5);  // served by tiny:1, not mirrored to a candidate that is not there
  json st = ShadowStats(d, "tiny");
  CHECK(st["running"] == true);
  CHECK(st["note"].get<std::string>().find("tiny:2 is loading") != std::string::npos);
  CHECK_FALSE(st.contains("requests"));
  CHECK(start.running());
  REQUIRE(weights.Release());  // the warm-up fails on the empty FIFO; the shadow starts anyway
  CHECK(start.Wait(30) == 0);
  REQUIRE(WaitFor([&] { return ShadowStats(d, "tiny").contains("requests"); }, 20));
  REQUIRE(WaitFor([&] { return d.Mms({"load", "tiny:2"}).exit_code == 0; }, 20));  // past the backoff
  // Mirroring runs now (send until one is mirrored: the shadow may route a
  // moment after the load).
  CHECK(WaitFor([&] { return t.Send(1) == 1 && ShadowStats(d, "tiny")["requests"]["mirrored"].get<int>() >= 1; }, 20));
}

TEST_CASE("shadow sampling is deterministic by request, the queue is bounded and drops, duration ends it") {
  Daemon d;
  REQUIRE(d.ok());
  SetupTiny(d, "tiny_slow.pt");
  REQUIRE(d.Mms({"shadow", "start", "tiny", "--candidate", "2", "--ratio", "0.5", "--queue", "1"}).exit_code == 0);
  Traffic t(d, "tiny", Data("tiny_input.json"));
  REQUIRE(t.Send(30) == 30);
  json st = ShadowStats(d, "tiny");
  int sampled = st["requests"]["sampled"], skipped = st["requests"]["not_sampled"];
  CHECK(sampled + skipped == 30);
  CHECK((sampled == 30 || skipped == 30));  // one input: always or never
  REQUIRE(d.Mms({"shadow", "stop", "tiny"}).exit_code == 0);
  // Ratio 1 with a slow candidate and a queue of 1: bursts are dropped, counted.
  REQUIRE(d.Mms({"shadow", "start", "tiny", "--candidate", "2", "--queue", "1", "--duration", "2s"}).exit_code == 0);
  REQUIRE(t.Send(40) == 40);
  st = ShadowStats(d, "tiny");
  CHECK(st["requests"]["dropped"].get<int>() > 0);
  CHECK(st["requests"]["sampled"] == 40);
  REQUIRE(WaitFor([&] { return json::parse(d.Mms({"--json", "shadow", "status", "tiny"}).out)["state"] == "stopped"; }, 10));
  CHECK(json::parse(d.Mms({"--json", "shadow", "status", "tiny"}).out)["reason"] == "duration elapsed");
}

TEST_CASE("a shadow rests between runs of its candidate by [shadow] duty_cycle, and a stop ends the rest") {
  Daemon d("[shadow]\nduty_cycle = 0.01\n");
  REQUIRE(d.ok());
  SetupTiny(d, "tiny_slow.pt");  // a run of many milliseconds: a rest of 99 times that
  REQUIRE(d.Mms({"shadow", "start", "tiny", "--candidate", "2", "--queue", "10"}).exit_code == 0);
  Traffic t(d, "tiny", Data("tiny_input.json"));
  REQUIRE(t.Send(5) == 5);
  REQUIRE(WaitFor([&] { return ShadowStats(d, "tiny")["requests"]["mirrored"] == 1; }, 30));
  json st = ShadowStats(d, "tiny");
  CHECK(st["duty_cycle"] == doctest::Approx(0.01));
  CHECK(st["requests"]["mirrored"] == 1);  // resting: the other four wait in the queue
  CHECK(st["requests"]["queued"] == 4);
  CHECK(d.Mms({"shadow", "stats", "tiny"}).out.find("at most 1% of the time") != std::string::npos);
  const auto t0 = std::chrono::steady_clock::now();
  CHECK(d.Mms({"shadow", "stop", "tiny"}).exit_code == 0);
  // The rest (seconds here) ends when the run is stopped.
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(5));
}

TEST_CASE("a shadow beside a running experiment adds nothing to the experiment's counts or feedback") {
  Daemon d;
  REQUIRE(d.ok());
  Register(d, "tiny", "1", "tiny.pt");
  Register(d, "tiny", "2", "tiny_v2.pt");
  Register(d, "tiny", "3", "tiny_v3.pt");
  REQUIRE(d.Mms({"model", "stage", "tiny:1", "production", "-q"}).exit_code == 0);
  REQUIRE(d.Mms({"experiment", "create", "exp-s", "--model", "tiny", "--control", "1", "--treatment", "2", "--percent",
                 "50", "--metric", "click"})
              .exit_code == 0);
  auto sh = d.Mms({"shadow", "start", "tiny", "--candidate", "3"});
  REQUIRE_MESSAGE(sh.exit_code == 0, sh.err);
  int n = 0;
  for (int u = 0; u < 20; ++u) {
    auto r = d.Mms({"--json", "predict", "tiny", "--input", Data("tiny_input.json"), "--user", "u" + std::to_string(u)});
    REQUIRE(r.exit_code == 0);
    CHECK(json::parse(r.out)["ref"] != "tiny:3");  // the shadow never answers
    n += d.Mms({"feedback", json::parse(r.out)["request_id"], "--metric", "click=1"}).exit_code == 0;
  }
  CHECK(n == 20);
  REQUIRE(WaitFor([&] { return ShadowStats(d, "tiny")["requests"]["mirrored"] == 20; }, 20));
  json st = json::parse(d.Mms({"--json", "stats", "exp-s"}).out);
  INFO(st.dump().substr(0, 600));
  json v = st["experiments"][0]["variants"];
  CHECK(v["control"]["requests"].get<int>() + v["treatment"]["requests"].get<int>() == 20);
  CHECK(v["control"]["outcomes"]["click"]["count"].get<int>() + v["treatment"]["outcomes"]["click"]["count"].get<int>() ==
        20);
  json all = json::parse(d.Mms({"--json", "stats"}).out);
  for (const auto& m : all["models"]) CHECK(m["ref"] != "tiny:3");
}

TEST_CASE("shadow refusals") {
  Daemon d;
  REQUIRE(d.ok());
  SetupTiny(d, "tiny_v2.pt");
  CHECK(d.Mms({"shadow", "start", "tiny", "--candidate", "1"}).exit_code == 1);
  CHECK(d.Mms({"shadow", "start", "nope", "--candidate", "1"}).exit_code == 4);
  CHECK(d.Mms({"shadow", "start", "tiny", "--candidate", "2", "--ratio", "0"}).exit_code == 2);
  CHECK(d.Mms({"shadow", "start", "tiny", "--candidate", "2", "--duration", "soon"}).exit_code == 2);
  for (const char* none : {"0s", "0", "500us"}) {  // no time at all: it was a run with no end
    auto r = d.Mms({"shadow", "start", "tiny", "--candidate", "2", "--duration", none});
    CHECK(r.exit_code == 2);
    CHECK_MESSAGE(r.err.find("is no time at all") != std::string::npos, r.err);
  }
  REQUIRE(d.Mms({"shadow", "start", "tiny", "--candidate", "2"}).exit_code == 0);
  CHECK(d.Mms({"shadow", "start", "tiny", "--candidate", "2"}).exit_code == 0);  // the same again: unchanged
  CHECK(d.Mms({"shadow", "start", "tiny", "--candidate", "2", "--ratio", "0.5"}).exit_code == 6);
  CHECK(d.Mms({"model", "rm", "tiny:2"}).exit_code == 6);  // in use by the shadow
  CHECK(d.Mms({"shadow", "stop", "nope"}).exit_code == 4);
  Register(d, "other", "1", "tiny.pt");
  auto never = d.Mms({"shadow", "stop", "other"});
  CHECK(never.exit_code == 4);
  CHECK(never.err.find("has never had a shadow run") != std::string::npos);
  // samples says what stats says (it said "no shadow run since mmsd started" for a model that does not exist).
  auto unknown = d.Mms({"shadow", "samples", "nope"});
  CHECK(unknown.exit_code == 4);
  CHECK_MESSAGE(unknown.err.find("unknown model 'nope'") != std::string::npos, unknown.err);
  CHECK(d.Mms({"shadow", "samples", "other"}).err.find("has never had a shadow run") != std::string::npos);
  CHECK(d.Mms({"shadow", "stop", "tiny"}).exit_code == 0);
  auto again = d.Mms({"shadow", "stop", "tiny"});  // ended meanwhile, as experiments and canaries: exit 6
  CHECK(again.exit_code == 6);
  CHECK(again.err.find("has already stopped (stopped by hand)") != std::string::npos);
}

namespace {
// `mms canary start tiny --candidate 2 --wait` (an hour a stage) in a thread,
// returned once the canary is in the registry; its result goes to *out.
std::thread StartWaitingCanary(const Daemon& d, ProcResult* out, double timeout_s) {
  std::thread w([&d, out, timeout_s] {
    *out = d.Mms({"canary", "start", "tiny", "--candidate", "2", "--stage-duration", "1h", "--wait"}, timeout_s);
  });
  REQUIRE(WaitFor([&] { return d.Mms({"canary", "status", "tiny"}).exit_code == 0; }, 20));
  return w;
}
}  // namespace

TEST_CASE("canary --wait: a healthy candidate is promoted (exit 0), progress streamed as JSON lines") {
  Daemon d;
  REQUIRE(d.ok());
  SetupTiny(d, "tiny_v2.pt");
  Traffic t(d, "tiny", Data("tiny_input.json"));
  t.Start();
  auto r = d.Mms({"--json", "canary", "start", "tiny", "--candidate", "2", "--stages", "10,50,100", "--stage-duration",
                  "1s", "--check-interval", "100ms", "--min-requests", "5", "--max-p99-ratio", "50", "--wait",
                  "--timeout", "60s"},
                 90);
  t.Stop();
  CHECK_MESSAGE(r.exit_code == 0, r.err);
  int lines = 0;
  bool saw_last_stage = false, by_user = false;
  std::istringstream in(r.out);
  std::string line;
  while (std::getline(in, line)) {
    json j = json::parse(line);
    CHECK(j.contains("traffic_percent"));
    CHECK(j.contains("canary"));
    saw_last_stage = saw_last_stage || j["stage"] == 3;
    // The stage's window keeps the users' buckets (500 users here): its error tests go by user too.
    if (j["stage"] == 3 && j["canary"]["user_buckets"].is_number()) by_user = j["canary"]["user_buckets"] >= 16;
    ++lines;
  }
  CHECK(lines >= 3);
  CHECK(saw_last_stage);
  CHECK(by_user);
  CHECK(json::parse(d.Mms({"--json", "model", "show", "tiny"}).out)["version"] == "2");
  CHECK(json::parse(d.Mms({"--json", "model", "show", "tiny:1"}).out)["stage"] == "archived");
}

TEST_CASE("canary --wait: an erroring candidate is rolled back automatically (exit 10)") {
  Daemon d;
  REQUIRE(d.ok());
  SetupTiny(d, "throws.pt");
  Traffic t(d, "tiny", NegativeInput(d));  // control serves it; the candidate raises
  t.Start();
  auto r = d.Mms({"canary", "start", "tiny", "--candidate", "2", "--stages", "50,100", "--stage-duration", "5s",
                  "--check-interval", "100ms", "--min-requests", "5", "--wait", "--timeout", "60s"},
                 90);
  t.Stop();
  CHECK(r.exit_code == 10);
  auto c = json::parse(d.Mms({"--json", "canary", "status", "tiny"}).out);
  CHECK(c["state"] == "rolled_back");
  CHECK(c["reason"].get<std::string>().find("canary error rate") != std::string::npos);
  CHECK(c["last_check"]["verdict"] == "fail");  // the check that failed, with the figures it judged
  CHECK(c["last_check"]["figures"]["canary"]["errors"].get<int>() > 0);
  CHECK(json::parse(d.Mms({"--json", "model", "show", "tiny"}).out)["version"] == "1");
  CHECK(json::parse(d.Mms({"--json", "model", "show", "tiny:2"}).out)["stage"] == "archived");
}

TEST_CASE("canary --wait: a candidate whose replies cannot be sent, or that refuses control's inputs, is rolled back") {
  // Both used to pass: a reply that failed to encode (17 dimensions) was
  // counted a success, and inputs the candidate's schema refused were "bad
  // input", left out of both arms — promoted, or never judged.
  for (std::string file : {"many_dims.pt", "deep.pt"}) {
    CAPTURE(file);
    Daemon d;
    REQUIRE(d.ok());
    Register(d, "tiny", "1", "tiny.pt");
    auto reg = d.Mms({"model", "register", "tiny", "--version", "2", "--path", Data(file), "--sample-input",
                      Data(file == "deep.pt" ? "deep_input.json" : "tiny_input.json"), "-q"});
    REQUIRE_MESSAGE(reg.exit_code == 0, reg.err);  // deep.pt's inputs are recorded: [batch, 8], not tiny's [batch, 4]
    REQUIRE(d.Mms({"model", "stage", "tiny:1", "production", "-q"}).exit_code == 0);
    Traffic t(d, "tiny", Data("tiny_input.json"));  // control serves it; the candidate fails it
    t.Start();
    auto r = d.Mms({"canary", "start", "tiny", "--candidate", "2", "--stages", "50,100", "--stage-duration", "5s",
                    "--check-interval", "100ms", "--min-requests", "5", "--max-p99-ratio", "1000", "--wait",
                    "--timeout", "60s"},
                   90);
    t.Stop();
    CHECK_MESSAGE(r.exit_code == 10, r.out << r.err);
    auto c = json::parse(d.Mms({"--json", "canary", "status", "tiny"}).out);
    CHECK(c["state"] == "rolled_back");
    CHECK_MESSAGE(c["reason"].get<std::string>().find("canary error rate") != std::string::npos, c.dump());
    // The version's own figures say so too.
    const json stats = json::parse(d.Mms({"--json", "stats"}).out);
    int found = 0;
    for (const auto& m : stats["models"])
      if (m["ref"] == "tiny:2") {
        ++found;
        CHECK(m["errors"].get<int>() > 0);
        // The reply that cannot be sent is the version's failure; inputs its
        // schema refuses are bad input in its own serving figures (the
        // canary's arm counts them, above).
        if (file == "many_dims.pt") CHECK(m["failure_rate"].get<double>() > 0);
        else CHECK(m["refused"]["by_reason"]["bad_input"].get<int>() > 0);
      }
    CHECK(found == 1);
  }
}

TEST_CASE("a canary whose candidate cannot be loaded is rolled back before any request is sent to it") {
  Daemon d("[pool]\ndevices = [\"cpu\"]\ndevice_budget = \"1MiB\"\n");
  REQUIRE(d.ok());
  // A candidate bigger than the whole device budget.
  REQUIRE(Run({BinDir() + "/mms-gen-testdata", d.dir(), "--customers", "1", "--size-kb", "1500"}).exit_code == 0);
  SetupTiny(d, d.dir() + "/customer-00.pt");
  Traffic t(d, "tiny", Data("tiny_input.json"));
  t.Start();
  auto r = d.Mms({"canary", "start", "tiny", "--candidate", "2", "--stages", "50,100", "--stage-duration", "1h",
                  "--check-interval", "100ms", "--min-requests", "5", "--wait", "--timeout", "60s"},
                 90);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  t.Stop();
  CHECK_MESSAGE(r.exit_code == 10, (r.out + r.err));
  auto c = json::parse(d.Mms({"--json", "canary", "status", "tiny"}).out);
  CHECK(c["state"] == "rolled_back");
  std::string reason = c["reason"];
  CHECK_MESSAGE(reason.find("the candidate could not be loaded") != std::string::npos, reason);
  CHECK_MESSAGE(reason.find("device_budget") != std::string::npos, reason);
  CHECK(c["last_check"]["verdict"] == "fail");
  CHECK(c["last_check"]["look"] == "load");
  CHECK(t.sent_ > 0);
  CHECK(t.failed_ == 0);  // not one request went to the candidate
  CHECK(json::parse(d.Mms({"--json", "model", "show", "tiny"}).out)["version"] == "1");
  CHECK(json::parse(d.Mms({"--json", "model", "show", "tiny:2"}).out)["stage"] == "archived");
}

TEST_CASE("a canary whose candidate finds the pool full for now (pins) is not rolled back for it at start") {
  Daemon d("[pool]\ndevices = [\"cpu\"]\ndevice_budget = \"1MiB\"\n");
  REQUIRE(d.ok());
  REQUIRE(Run({BinDir() + "/mms-gen-testdata", d.dir(), "--customers", "3", "--size-kb", "400"}).exit_code == 0);
  for (int i = 0; i < 2; ++i) {
    Register(d, "c" + std::to_string(i), "1", d.dir() + "/customer-0" + std::to_string(i) + ".pt");
    REQUIRE(d.Mms({"pin", "c" + std::to_string(i)}).exit_code == 0);
  }
  SetupTiny(d, d.dir() + "/customer-02.pt");
  REQUIRE(d.Mms({"canary", "start", "tiny", "--candidate", "2", "--stages", "50,100", "--stage-duration", "1h",
                 "--check-interval", "100ms", "--min-requests", "1000"})
              .exit_code == 0);
  CHECK(WaitFor([&] { return d.log().find("warm_failed") != std::string::npos; }, 20));
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // ticks
  auto c = json::parse(d.Mms({"--json", "canary", "status", "tiny"}).out);
  CHECK_MESSAGE(c["state"] == "running", c.dump());  // room may free (unpin); its verdict would say capacity
}

TEST_CASE("a failing canary whose rollback the registry cannot record gets no traffic until it is recorded") {
  Daemon d("[registry]\nbusy_timeout = \"50ms\"\n");
  REQUIRE(d.ok());
  StartThrowingCanary(d);
  // Another writer holds the registry (as a full disk would refuse its writes).
  WriteLock lock(d.data_dir() + "/registry.db");
  REQUIRE(lock.ok());
  Traffic t(d, "tiny", NegativeInput(d));  // control serves it; the candidate raises
  t.Start();
  CHECK(WaitFor([&] { return d.log().find("canary_rollback_unsaved") != std::string::npos; }, 30));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the routing refresh
  int failed = t.failed_, sent = t.sent_;
  std::this_thread::sleep_for(std::chrono::seconds(1));
  CHECK(t.sent_ > sent + 20);
  CHECK(t.failed_ == failed);  // every request to control since
  CHECK(json::parse(d.Mms({"--json", "canary", "status", "tiny"}).out)["state"] == "running");  // not recorded yet
  // Killed meanwhile, restarted while the registry still refuses writes: the
  // canary stays without traffic (its judged rollback is kept beside the socket).
  t.Stop();
  d.child().Signal(SIGKILL);
  d.child().Wait(10);
  // No daemon to ask: the rollbacks kept beside its socket still stop a promote.
  auto down = d.Mms({"canary", "promote", "tiny"});
  CHECK(down.exit_code == 6);
  CHECK_MESSAGE(down.err.find("mmsd rolled the canary of tiny back") != std::string::npos, down.err);
  REQUIRE(d.Restart());
  Traffic t2(d, "tiny", NegativeInput(d));
  t2.Start();
  std::this_thread::sleep_for(std::chrono::seconds(1));
  CHECK(t2.sent_ > 20);
  CHECK(t2.failed_ == 0);
  t2.Stop();
  // Said, not hidden behind "running": canary status, mms status. And a
  // promote or resume refused (one written as the registry came back, before
  // mmsd's retry, made a candidate failing every request production).
  auto pending = json::parse(d.Mms({"--json", "canary", "status", "tiny"}).out);
  REQUIRE_MESSAGE(pending.contains("rollback_pending"), pending.dump());
  CHECK(pending["rollback_pending"]["reason"].get<std::string>().find("canary error rate") != std::string::npos);
  CHECK(d.Mms({"canary", "status", "tiny"}).out.find("ROLLED BACK by mmsd, not recorded yet") != std::string::npos);
  CHECK(d.Mms({"status"}).out.find("rolled back by mmsd, not recorded yet") != std::string::npos);
  for (const char* change : {"promote", "resume"}) {
    auto refused = d.Mms({"canary", change, "tiny"});
    CHECK(refused.exit_code == 6);
    CHECK_MESSAGE(refused.err.find("mmsd rolled the canary of tiny back") != std::string::npos, refused.err);
  }
  lock.Release();
  CHECK(WaitFor([&] { return json::parse(d.Mms({"--json", "canary", "status", "tiny"}).out)["state"] == "rolled_back"; }, 30));
  CHECK(t.failed_ == failed);
  CHECK(json::parse(d.Mms({"--json", "canary", "status", "tiny"}).out)["reason"].get<std::string>().find("canary error rate") !=
        std::string::npos);  // the reason judged before the restart
  // In words, not JSON objects: "canary 40 req, 100.00% err, p99 ... ms; control ...".
  auto text = d.Mms({"canary", "status", "tiny"});
  CHECK_MESSAGE(text.out.find("req, 100.00% err, p99 ") != std::string::npos, text.out);
  CHECK_MESSAGE(text.out.find('{') == std::string::npos, text.out);
  CHECK(WaitFor([&] { return !std::filesystem::exists(d.socket() + ".unsaved-rollbacks"); }, 10));
  CHECK(json::parse(d.Mms({"--json", "model", "show", "tiny:2"}).out)["stage"] == "archived");
  CHECK(json::parse(d.Mms({"--json", "status"}).out).count("unsaved_rollbacks") == 0);  // recorded: no warning left
}

TEST_CASE("a long busy timeout behind another writer does not keep a failing canary's traffic: it is cut before the write") {
  // Behind a writer holding the registry, the interim check's write and the
  // metrics flush each sat out [registry] busy_timeout on the thread that
  // judges canaries, and the rollback came after both: users saw errors all
  // along. Those writes now wait briefly, and the traffic is cut before the
  // rollback's own write (which waits the full timeout).
  Daemon d("[registry]\nbusy_timeout = \"60s\"\n[experiments]\nflush_interval = \"200ms\"\n");
  REQUIRE(d.ok());
  StartThrowingCanary(d);
  WriteLock lock(d.data_dir() + "/registry.db");
  REQUIRE(lock.ok());
  Traffic t(d, "tiny", NegativeInput(d));  // control serves it; the candidate raises
  t.Start();
  // Cut within seconds, well inside the 60 s the writes would each have waited: a second with no failure.
  bool cut = WaitFor([&] {
    int failed = t.failed_, sent = t.sent_;
    std::this_thread::sleep_for(std::chrono::seconds(1));
    return t.failed_ > 0 && t.failed_ == failed && t.sent_ > sent + 20;
  }, 25);
  CHECK(cut);
  t.Stop();
  lock.Release();
  CHECK(WaitFor([&] { return json::parse(d.Mms({"--json", "canary", "status", "tiny"}).out)["state"] == "rolled_back"; }, 90));
}

TEST_CASE("canary --wait: aborted by hand (exit 11), --timeout (exit 12), and canary wait takes the wait up again") {
  Daemon d;
  REQUIRE(d.ok());
  SetupTiny(d, "tiny_v2.pt");
  ProcResult waiting;
  std::thread w = StartWaitingCanary(d, &waiting, 60);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  auto aborted = d.Mms({"--json", "canary", "abort", "tiny"});
  REQUIRE(aborted.exit_code == 0);
  CHECK(json::parse(aborted.out)["traffic_percent"] == 0.0);  // the candidate serves nothing now
  w.join();
  CHECK(waiting.exit_code == 11);
  auto list = json::parse(d.Mms({"--json", "canary", "list"}).out);
  CHECK(list[0]["state"] == "aborted");
  // No traffic: never a verdict, so --timeout decides.
  Register(d, "tiny", "3", "tiny_v3.pt");
  auto t = d.Mms({"--json", "canary", "start", "tiny", "--candidate", "3", "--stage-duration", "1s", "--wait", "--timeout",
                  "1s"}, 60);
  CHECK(t.exit_code == 12);
  {  // with --json, the timeout is the last JSON line too
    std::string out = t.out;
    while (!out.empty() && out.back() == '\n') out.pop_back();
    std::string last = out.substr(out.rfind('\n') == std::string::npos ? 0 : out.rfind('\n') + 1);
    REQUIRE(json::accept(last));
    CHECK(json::parse(last)["timeout"] == true);
    CHECK(json::parse(last)["state"] == "running");
  }
  CHECK(json::parse(d.Mms({"--json", "canary", "status", "tiny"}).out)["state"] == "running");  // carries on
  CHECK(t.out.find("mms canary wait tiny waits again") != std::string::npos);
  // The next CI run: starting again is refused, and says how to wait instead.
  auto again = d.Mms({"canary", "start", "tiny", "--candidate", "3"});
  CHECK(again.exit_code == 6);
  CHECK_MESSAGE(again.err.find("mms canary wait tiny waits for it to end") != std::string::npos, again.err);
  // The wait, taken up again: its own --timeout (exit 12), then the end it waits for.
  auto rewait = d.Mms({"canary", "wait", "tiny", "--timeout", "500ms"}, 60);
  CHECK_MESSAGE(rewait.exit_code == 12, rewait.out << rewait.err);
  CHECK(rewait.out.find("stage 1/") != std::string::npos);  // progress streamed, as start --wait does
  ProcResult waited;
  std::thread w2([&] { waited = d.Mms({"--json", "canary", "wait", "tiny"}, 60); });
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  REQUIRE(d.Mms({"canary", "promote", "tiny"}).exit_code == 0);
  w2.join();
  CHECK_MESSAGE(waited.exit_code == 0, waited.out << waited.err);
  // Ended already: the outcome's exit code at once; a model without a canary: 4.
  CHECK(d.Mms({"canary", "wait", "tiny"}).exit_code == 0);
  CHECK(d.Mms({"canary", "wait", "tiny", "--candidate", "3"}).exit_code == 0);
  // The candidate's own canary, not the model's latest: tiny:2's was aborted (11), though tiny:3's came since.
  auto other = d.Mms({"canary", "wait", "tiny", "--candidate", "2"});
  CHECK(other.exit_code == 11);
  CHECK_MESSAGE(other.err.find("the canary of tiny:2 ended aborted") != std::string::npos, other.err);
  CHECK(other.err.find("the canary of tiny:3 started since") != std::string::npos);
  // A job whose own start failed must not read another canary's outcome as its own.
  Register(d, "tiny", "4", "tiny_v2.pt");
  auto never = d.Mms({"canary", "wait", "tiny", "--candidate", "4"});
  CHECK(never.exit_code == 4);
  CHECK_MESSAGE(never.err.find("tiny has had no canary of tiny:4") != std::string::npos, never.err);
  CHECK(d.Mms({"canary", "wait", "nosuch"}).exit_code == 4);
  CHECK(d.Mms({"canary", "wait", "tiny", "--timeout", "0"}).exit_code == 2);
  // The text list says what each serves now, as --json does: all traffic promoted, none aborted.
  auto text = d.Mms({"canary", "list"});
  CHECK_MESSAGE(text.out.find("promoted  1/6    100.00%") != std::string::npos, text.out);
  CHECK_MESSAGE(text.out.find("aborted   1/6    0.00%") != std::string::npos, text.out);
  // A candidate removed since (which aborts its canary) is still waited on by
  // its number: its outcome, not "unknown version".
  Register(d, "tiny", "5", "tiny_v3.pt");
  REQUIRE(d.Mms({"canary", "start", "tiny", "--candidate", "5"}).exit_code == 0);
  REQUIRE(d.Mms({"model", "rm", "tiny:5", "--force"}).exit_code == 0);
  auto removed = d.Mms({"canary", "wait", "tiny", "--candidate", "5"});
  CHECK_MESSAGE(removed.exit_code == 11, removed.out << removed.err);
  auto status = d.Mms({"canary", "status", "tiny"});
  CHECK_MESSAGE(status.out.find("tiny:5 removed") != std::string::npos, status.out);
  // mmsd not running (a retried job while it restarts): the registry answers
  // for an ended canary, and a model that never had one is 4, not 3.
  d.child().Signal(SIGTERM);
  REQUIRE(d.child().Wait(20) == 0);
  auto offline = d.Mms({"canary", "wait", "tiny", "--candidate", "3"}, 30);
  CHECK_MESSAGE(offline.exit_code == 0, offline.out << offline.err);
  CHECK(d.Mms({"canary", "wait", "tiny"}, 30).exit_code == 11);  // the latest: tiny:5's, aborted
  CHECK(d.Mms({"canary", "wait", "nosuch"}, 30).exit_code == 4);
  // --candidate of another model: refused, not that number's canary of this one.
  CHECK(d.Mms({"canary", "wait", "tiny", "--candidate", "other:5"}, 30).exit_code == 4);
  // No registry where this command looks (a mistyped --data-dir): an answer at once, not a wait for ever.
  auto nowhere = Run({MmsBin(), "--data-dir", d.dir() + "/nothing", "--socket", d.socket(), "canary", "wait", "tiny"}, 30);
  CHECK_MESSAGE(nowhere.exit_code == 4, nowhere.out << nowhere.err);
}

TEST_CASE("canary --wait outlives mmsd: killed mid-wait it waits, and an abort made meanwhile ends it (exit 11)") {
  Daemon d;
  REQUIRE(d.ok());
  SetupTiny(d, "tiny_v2.pt");
  ProcResult waiting;
  std::thread w = StartWaitingCanary(d, &waiting, 90);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // the wait is polling
  d.child().Signal(SIGKILL);
  d.child().Wait(10);
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));  // it notices, and keeps waiting
  // The registry needs no daemon: an abort by hand now is seen by the waiting client.
  auto aborted = d.Mms({"--json", "canary", "abort", "tiny"});
  REQUIRE(aborted.exit_code == 0);
  CHECK(json::parse(aborted.out)["traffic_percent"] == 0.0);  // the candidate serves nothing now
  w.join();
  CHECK(waiting.exit_code == 11);
  CHECK(waiting.err.find("ended while mmsd was away: aborted") != std::string::npos);
}

TEST_CASE("canary pause, resume and promote by hand through the CLI") {
  Daemon d;
  REQUIRE(d.ok());
  SetupTiny(d, "tiny_v2.pt");
  REQUIRE(d.Mms({"canary", "start", "tiny", "--candidate", "2", "--stage-duration", "1h"}).exit_code == 0);
  auto state = [&] { return json::parse(d.Mms({"--json", "canary", "status", "tiny"}).out)["state"]; };
  CHECK(state() == "running");
  auto paused = d.Mms({"canary", "pause", "tiny"});
  REQUIRE(paused.exit_code == 0);
  CHECK_MESSAGE(paused.out.rfind("paused, stage 1/", 0) == 0, paused.out);  // (was "paused: paused, stage ...")
  CHECK(state() == "paused");
  CHECK(d.Mms({"canary", "pause", "tiny"}).exit_code == 0);  // idempotent, for scripts
  CHECK(state() == "paused");
  auto resumed = d.Mms({"canary", "resume", "tiny"});
  REQUIRE(resumed.exit_code == 0);
  CHECK_MESSAGE(resumed.out.rfind("resumed: running, stage 1/", 0) == 0, resumed.out);
  CHECK(state() == "running");
  auto p = d.Mms({"canary", "promote", "tiny"});
  REQUIRE_MESSAGE(p.exit_code == 0, p.err);
  CHECK(state() == "promoted");
  // The JSON says what the candidate serves now (all of it), and where the stage was.
  json promoted = json::parse(d.Mms({"--json", "canary", "status", "tiny"}).out);
  CHECK(promoted["traffic_percent"] == 100.0);
  CHECK(promoted["stage_traffic_percent"] == 1.0);
  // Says what happened: all traffic, not "stage 1/N at 5%" (where it was).
  CHECK_MESSAGE(p.out.rfind("promoted tiny:2 to production, all traffic (from stage 1/", 0) == 0, p.out);
  CHECK(json::parse(d.Mms({"--json", "model", "show", "tiny"}).out)["ref"] == "tiny:2");  // production now
  CHECK(d.Mms({"canary", "resume", "tiny"}).exit_code != 0);  // finished: nothing to resume
  auto hist = d.Mms({"model", "history", "tiny"}).out;
  for (const char* a : {"canary-pause", "canary-resume", "canary-promote"}) CHECK(hist.find(a) != std::string::npos);
}

TEST_CASE("kill -9 mid-stage: the canary resumes at the same stage with its remaining time") {
  Daemon d;
  REQUIRE(d.ok());
  SetupTiny(d, "tiny_v2.pt");
  Traffic t(d, "tiny", Data("tiny_input.json"));
  t.Start();
  // 7 s stages: before the kill and after the restart the stage runs on for
  // up to ~5 s on a loaded machine (3 s stages ended before the test looked; helper-92).
  REQUIRE(d.Mms({"canary", "start", "tiny", "--candidate", "2", "--stages", "10,50,100", "--stage-duration", "7s",
                 "--check-interval", "100ms", "--min-requests", "3", "--max-p99-ratio", "50"})
              .exit_code == 0);
  auto status = [&] { return json::parse(d.Mms({"--json", "canary", "status", "tiny"}).out); };
  REQUIRE(WaitFor([&] { return status()["stage_index"] == 1; }, 30));
  std::this_thread::sleep_for(std::chrono::milliseconds(1200));
  t.Stop();
  json before = status();
  REQUIRE(before["stage_index"] == 1);
  int64_t elapsed = before["stage_elapsed_ms"];
  CHECK(elapsed > 500);
  d.child().Signal(SIGKILL);
  REQUIRE(d.child().Wait(10) == 128 + SIGKILL);
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));  // downtime does not count
  REQUIRE(d.Restart());
  json after = status();
  CHECK(after["state"] == "running");
  CHECK(after["stage_index"] == 1);
  CHECK(after["stage_elapsed_ms"].get<int64_t>() >= elapsed - 300);
  CHECK(after["stage_elapsed_ms"].get<int64_t>() < 7000);
  CHECK(after["traffic_percent"] == 50.0);
  // It carries on to completion once traffic resumes.
  Traffic t2(d, "tiny", Data("tiny_input.json"));
  t2.Start();
  CHECK(WaitFor([&] { return status()["state"] == "promoted"; }, 60));
}

TEST_CASE("canary refusals") {
  Daemon d;
  REQUIRE(d.ok());
  SetupTiny(d, "tiny_v2.pt");
  struct Bad {
    std::vector<std::string> args;
    int code;
    std::string says;
  };
  std::vector<Bad> bad{
      {{"canary", "start", "tiny", "--candidate", "2", "--stages", "10,5,100"}, 2, "must increase"},
      {{"canary", "start", "tiny", "--candidate", "2", "--stages", "0,100"}, 2, "outside (0, 100]"},
      {{"canary", "start", "tiny", "--candidate", "2", "--stages", "10,150"}, 2, "outside (0, 100]"},
      {{"canary", "start", "tiny", "--candidate", "2", "--stages", "ten"}, 2, "'ten' is not a decimal number"},
      {{"canary", "start", "tiny", "--candidate", "1"}, 1, "already the production version: nothing to roll out"},
      // A state of the registry, as "no production version" is: 1, not a usage error.
      {{"shadow", "start", "tiny", "--candidate", "1"}, 1, "serves already: nothing to compare it with"},
      {{"canary", "start", "tiny", "--candidate", "9"}, 4, "unknown version"},
      // As canary status says it ("has no canary" for a model that does not exist).
      {{"canary", "pause", "tinyy"}, 4, "unknown model 'tinyy'"},
      // Said as what they are, not CLI11's "Could not convert" or "not in range".
      {{"canary", "start", "tiny", "--candidate", "2", "--min-requests", "ten"}, 2, "'ten' is not a whole number"},
      {{"canary", "start", "tiny", "--candidate", "2", "--max-error-rate", "5%"}, 2, "'5%' is not a decimal number"},
      {{"shadow", "start", "tiny", "--candidate", "2", "--queue", "1.5"}, 2, "'1.5' is not a whole number"},
      {{"ping", "--count", "abc"}, 2, "'abc' is not a whole number"},
      {{"model", "register", "x", "--version", "1", "--path", Data("tiny.pt"), "--sla-p99-ms", "abc"}, 2,
       "'abc' is not a decimal number"},
      {{"canary", "start", "tiny", "--candidate", "2", "--stage-duration", "later"}, 2, "invalid duration"},
      // Silently changed or ignored before: stored as 1 ms, shown as 0.00% while routing 0.01%, waited for ever.
      {{"canary", "start", "tiny", "--candidate", "2", "--check-interval", "0"}, 2, "--check-interval 0 is under 1ms"},
      {{"canary", "start", "tiny", "--candidate", "2", "--stages", "0.001,100"}, 2,
       "--stages: 0.001 is finer than 0.01%"},
      {{"canary", "start", "tiny", "--candidate", "2", "--timeout", "5s"}, 2, "--timeout bounds --wait"},
      {{"canary", "start", "tiny", "--candidate", "2", "--wait", "--timeout", "0"}, 2, "--timeout must be positive"},
      {{"--timeout", "soon", "ping"}, 2, "or a duration (such as 90s or 2m), got 'soon'"},
      {{"--timeout", "0s", "ping"}, 2, "expected seconds above 0"},
  };
  for (const auto& b : bad) {
    auto r = d.Mms(b.args);
    INFO(r.err);
    CHECK(r.exit_code == b.code);
    CHECK(r.err.find(b.says) != std::string::npos);
  }
  {  // No daemon and no canary: exit 4, without first saying it waits for one in the registry.
    d.child().Signal(SIGTERM);
    REQUIRE(d.child().Wait(20) == 0);
    auto none = d.Mms({"canary", "wait", "tiny"});
    CHECK(none.exit_code == 4);
    CHECK_MESSAGE(none.err.find("waiting for mmsd") == std::string::npos, none.err);
    CHECK(none.err.find("has no canary") != std::string::npos);
    REQUIRE(d.Restart());
  }
  REQUIRE(d.Mms({"canary", "start", "tiny", "--candidate", "2"}).exit_code == 0);
  // The same start again (a retried CI job): nothing to do, exit 0; other
  // settings or another candidate: the conflict.
  auto again = d.Mms({"--json", "canary", "start", "tiny", "--candidate", "2"});
  CHECK(again.exit_code == 0);
  CHECK(json::parse(again.out)["unchanged"] == true);
  auto second = d.Mms({"canary", "start", "tiny", "--candidate", "2", "--stages", "10,100"});
  CHECK(second.exit_code == 6);
  CHECK(second.err.find("already has a canary") != std::string::npos);
  CHECK(d.Mms({"experiment", "create", "x", "--model", "tiny", "--control", "1", "--treatment", "2", "--percent", "5"})
            .exit_code == 6);
}

TEST_CASE("a rollout whose candidate cannot be loaded starts with a warning that says what follows") {
  // It exited 0 at once with nothing said: a shadow mirrored nothing, an
  // experiment failed every request routed to the arm (a review).
  Daemon d;
  REQUIRE(d.ok());
  SetupTiny(d, "tiny_v2.pt");
  FlipLastByte(PackedWeights(d.data_dir(), "tiny", "2"));  // fails its load's checksum, for good
  auto sh = d.Mms({"--json", "shadow", "start", "tiny", "--candidate", "2"});
  CHECK_MESSAGE(sh.exit_code == 0, sh.err);
  json j = json::parse(sh.out);
  REQUIRE(j["load_failures"].size() == 1);
  CHECK(j["load_failures"][0]["version"] == "tiny:2");
  CHECK(j["load_failures"][0]["error"].get<std::string>().find("tiny:2") != std::string::npos);
  REQUIRE(d.Mms({"shadow", "stop", "tiny", "-q"}).exit_code == 0);
  auto ex = d.Mms({"experiment", "create", "e1", "--model", "tiny", "--control", "1", "--treatment", "2", "--percent", "10"});
  CHECK(ex.exit_code == 0);
  CHECK_MESSAGE(ex.err.find("warning: tiny:2 could not be loaded: ") != std::string::npos, ex.err);
  CHECK(ex.err.find("or stop the experiment: mms experiment stop e1") != std::string::npos);
  // A healthy one says nothing.
  REQUIRE(d.Mms({"experiment", "stop", "e1", "-q"}).exit_code == 0);
  Register(d, "tiny", "3", "tiny_v3.pt");
  auto ok = d.Mms({"experiment", "create", "e2", "--model", "tiny", "--control", "1", "--treatment", "3", "--percent", "10"});
  CHECK(ok.exit_code == 0);
  CHECK(ok.err.find("warning") == std::string::npos);
}

TEST_CASE("shadow stats with mmsd down and no figures saved yet: the run as recorded, exit 0") {
  // It exited 3 ("no saved figures"), where mms stats shows an experiment
  // without figures with exit 0 (a review).
  Daemon d("[experiments]\nflush_interval = \"1h\"\n");
  REQUIRE(d.ok());
  SetupTiny(d, "tiny_v2.pt");
  REQUIRE(d.Mms({"shadow", "start", "tiny", "--candidate", "2", "-q"}).exit_code == 0);
  d.child().Signal(SIGKILL);
  d.child().Wait(10);
  auto r = d.Mms({"--json", "shadow", "stats", "tiny"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.err);
  json j = json::parse(r.out);
  CHECK(j["candidate"] == "tiny:2");
  CHECK(j["running"] == false);
  CHECK_MESSAGE(r.err.find("no figures of this run were saved") != std::string::npos, r.err);
  auto text = d.Mms({"shadow", "stats", "tiny"});
  CHECK(text.exit_code == 0);
  CHECK(text.out.find("running, but mmsd is not: nothing is mirrored") != std::string::npos);
}
