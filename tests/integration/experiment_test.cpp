// A/B experiments end to end: the CLI, the registry, the daemon's routing,
// feedback and statistics, and persistence across kill -9.
#include <doctest/doctest.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <nlohmann/json.hpp>
#include <filesystem>
#include <map>
#include <thread>

#include "core/paths.h"
#include "support/process.h"

using namespace mms::testing;
using nlohmann::json;

namespace {
std::string Data(const std::string& n) { return TestDataDir() + "/" + n; }

void Setup(const Daemon& d) {
  for (auto [v, f] : std::vector<std::pair<std::string, std::string>>{{"1", "tiny.pt"}, {"2", "tiny_v2.pt"}})
    REQUIRE(d.Mms({"model", "register", "tiny", "--version", v, "--path", Data(f), "-q"}).exit_code == 0);
  REQUIRE(d.Mms({"model", "register", "other", "--version", "1", "--path", Data("tiny.pt"), "-q"}).exit_code == 0);
  REQUIRE(d.Mms({"model", "stage", "tiny:1", "production", "-q"}).exit_code == 0);
}

json Predict(const Daemon& d, const std::string& user) {
  std::vector<std::string> args{"--json", "predict", "tiny", "--input", Data("tiny_input.json")};
  if (!user.empty()) args.insert(args.end(), {"--user", user});
  auto r = d.Mms(args);
  REQUIRE_MESSAGE(r.exit_code == 0, r.err);
  return json::parse(r.out);
}

json Stats(const Daemon& d, const std::string& id) {
  auto r = d.Mms({"--json", "stats", id});
  REQUIRE_MESSAGE(r.exit_code == 0, r.err);
  return json::parse(r.out)["experiments"][0];
}
}  // namespace

TEST_CASE("experiment commands and their refusals") {
  Daemon d;
  REQUIRE(d.ok());
  Setup(d);
  auto c = d.Mms({"--json", "experiment", "create", "exp-rec-v13", "--model", "tiny", "--control", "1", "--treatment",
                  "tiny:2", "--percent", "20", "--metric", "click", "--metric", "revenue"});
  REQUIRE_MESSAGE(c.exit_code == 0, c.err);
  json e = json::parse(c.out);
  CHECK(e["state"] == "running");
  CHECK(e["percent"] == 20.0);
  CHECK(e["metrics"] == json::array({"click", "revenue"}));
  // The same create again (a CI job retried after a timeout): exit 0, nothing written.
  auto retried = d.Mms({"--json", "experiment", "create", "exp-rec-v13", "--model", "tiny", "--control", "tiny:1",
                        "--treatment", "2", "--percent", "20", "--metric", "revenue", "--metric", "click"});
  CHECK_MESSAGE(retried.exit_code == 0, retried.out << retried.err);
  CHECK(json::parse(retried.out)["unchanged"] == true);
  CHECK(json::parse(retried.out)["created_ms"] == e["created_ms"]);
  struct Bad {
    std::vector<std::string> args;
    int code;
    std::string says;
  };
  std::vector<Bad> bad{
      {{"experiment", "create", "x", "--model", "nope", "--control", "1", "--treatment", "2", "--percent", "5"}, 4,
       "unknown model 'nope'"},
      {{"experiment", "create", "x", "--model", "tiny", "--control", "1", "--treatment", "7", "--percent", "5"}, 4,
       "unknown version tiny:7"},
      {{"experiment", "create", "x", "--model", "tiny", "--control", "1", "--treatment", "2", "--percent", "101"}, 2,
       "--percent 101 is outside 0 to 100"},
      {{"experiment", "create", "x", "--model", "tiny", "--control", "1", "--treatment", "2", "--percent", "-1"}, 2,
       "--percent -1 is outside 0 to 100"},
      {{"experiment", "create", "exp-rec-v13", "--model", "tiny", "--control", "1", "--treatment", "2", "--percent", "5"},
       6, "already exists"},  // another share: not a rerun
      {{"experiment", "create", "exp-rec-v13", "--model", "tiny", "--control", "1", "--treatment", "2", "--percent", "20",
        "--metric", "click"},
       6, "already exists"},  // other metrics
      {{"experiment", "create", "x", "--model", "tiny", "--control", "1", "--treatment", "2", "--percent", "5"}, 6,
       "already has experiment 'exp-rec-v13'"},
      {{"experiment", "create", "x", "--model", "tiny", "--control", "tiny:1", "--treatment", "other:1", "--percent",
        "5"},
       2, "must both be versions of model 'tiny'"},
      {{"experiment", "create", "bad id", "--model", "tiny", "--control", "1", "--treatment", "2", "--percent", "5"}, 2,
       "invalid experiment id"},
      {{"experiment", "show", "exp-rec-v14"}, 4, "did you mean 'exp-rec-v13'"},
      {{"experiment", "ramp", "exp-rec-v13", "--percent", "250"}, 2, "--percent 250 is outside 0 to 100"},
      // Routed 0.01% (ten times the share asked), silently.
      {{"experiment", "create", "x", "--model", "tiny", "--control", "1", "--treatment", "2", "--percent", "0.001"},
       2, "--percent 0.001 is finer than 0.01%"},
      {{"experiment", "ramp", "exp-rec-v13", "--percent", "12.345"}, 2, "--percent 12.345 is finer than 0.01%"},
      {{"experiment", "assign", "exp-rec-v13", "--user", ""}, 2, "--user: is empty"},
      {{"experiment", "create", "x", "--model", "tiny", "--control", "1", "--treatment", "2", "--percent", "5",
        "--metric", "click", "--metric", "click"},
       2, "--metric click is given twice"},
      {{"experiment", "stop", "exp-rec-v13", "--winner", "both"}, 2, "both"},
      // An unset shell variable, hex, and the like: not 0% or 16% (strtod read them so).
      {{"experiment", "ramp", "exp-rec-v13", "--percent", ""}, 2, "'' is not a decimal number"},
      {{"experiment", "ramp", "exp-rec-v13", "--percent", "0x10"}, 2, "'0x10' is not a decimal number"},
      {{"experiment", "create", "x", "--model", "tiny", "--control", "1", "--treatment", "2", "--percent", ""}, 2,
       "is not a decimal number"},
      {{"feedback", "r-1", "--metric", "click=0x1"}, 2, "--metric click: '0x1' is not a decimal number"},
      {{"feedback", "r-1", "--metric", "click= 1"}, 2, "is not a decimal number"},
      {{"predict", "tiny", "--input", Data("tiny_input.json"), "--user", ""}, 2,
       "--user: is empty; omit --user for a request without a user"},
  };
  for (const auto& b : bad) {
    auto r = d.Mms(b.args);
    INFO(b.args[1] << " " << b.args[2] << " → " << r.err);
    CHECK(r.exit_code == b.code);
    CHECK(r.err.find(b.says) != std::string::npos);
  }
  // assign: the seed's buckets (test vectors: exp-rec-v13/user-1 → 1666, /42 → 4640).
  auto a = d.Mms({"--json", "experiment", "assign", "exp-rec-v13", "--user", "user-1", "--user", "42"});
  REQUIRE(a.exit_code == 0);
  json as = json::parse(a.out);
  CHECK(as == json::parse(R"([{"user": "user-1", "variant": "treatment", "bucket": 1666},
                              {"user": "42", "variant": "control", "bucket": 4640}])"));
  CHECK(json::parse(d.Mms({"--json", "experiment", "ramp", "exp-rec-v13", "--percent", "50"}).out)["percent"] == 50.0);
  auto down = d.Mms({"experiment", "ramp", "exp-rec-v13", "--percent", "12.5"});
  CHECK(down.out.find("ramped exp-rec-v13 to 12.5%\n") == 0);
  // Lowered: the treated users it moves back to control are said (they count for control from now).
  CHECK_MESSAGE(down.err.find("lowering the share from 50% to 12.5% moves about 75% of the users treated so far back "
                              "to control") != std::string::npos,
                down.err);
  REQUIRE(d.Mms({"experiment", "ramp", "exp-rec-v13", "--percent", "50", "-q"}).exit_code == 0);
  {  // The same ramp again (a rerun): nothing written, no "50% → 50%" audit row.
    const size_t audited = json::parse(d.Mms({"--json", "model", "history", "rec"}).out).size();
    auto same = d.Mms({"--json", "experiment", "ramp", "exp-rec-v13", "--percent", "50"});
    CHECK(same.exit_code == 0);
    CHECK(json::parse(same.out)["unchanged"] == true);
    CHECK(json::parse(d.Mms({"--json", "model", "history", "rec"}).out).size() == audited);
    CHECK(d.Mms({"experiment", "ramp", "exp-rec-v13", "--percent", "50"}).out.find("already: nothing to do") !=
          std::string::npos);
  }
  CHECK(json::parse(d.Mms({"--json", "experiment", "pause", "exp-rec-v13"}).out)["state"] == "paused");
  CHECK(json::parse(d.Mms({"--json", "experiment", "resume", "exp-rec-v13"}).out)["state"] == "running");
  CHECK(json::parse(d.Mms({"--json", "experiment", "list"}).out).size() == 1);
  // Stop with a winner: promoted to production in the same step, audited.
  auto s = d.Mms({"experiment", "stop", "exp-rec-v13", "--winner", "treatment"});
  REQUIRE(s.exit_code == 0);
  CHECK(json::parse(d.Mms({"--json", "model", "show", "tiny"}).out)["version"] == "2");
  auto hist = json::parse(d.Mms({"--json", "model", "history", "tiny"}).out);
  bool audited = false;
  for (const auto& h : hist) audited = audited || (h["action"] == "stage" && h["detail"] == "winner of exp-rec-v13");
  CHECK(audited);
  // Stopped already (as by another pipeline): a conflict, exit 6, not an error.
  auto paused = d.Mms({"--json", "experiment", "pause", "exp-rec-v13"});
  CHECK(paused.exit_code == 6);
  CHECK(json::parse(paused.out)["error"]["code"] == "CONFLICT");
  CHECK(d.Mms({"experiment", "stop", "exp-rec-v13"}).exit_code == 6);
  // Ended: created again under its id is a conflict, not a rerun.
  CHECK(d.Mms({"experiment", "create", "exp-rec-v13", "--model", "tiny", "--control", "1", "--treatment", "2",
               "--percent", "20", "--metric", "click", "--metric", "revenue"})
            .exit_code == 6);
}

TEST_CASE("requests are routed by the running experiment, counted per variant, and credited with feedback") {
  Daemon d("[experiments]\nattribution_window = \"2s\"\n");
  REQUIRE(d.ok());
  Setup(d);
  REQUIRE(d.Mms({"experiment", "create", "ab", "--model", "tiny", "--control", "1", "--treatment", "2", "--percent",
                 "50", "--metric", "click"})
              .exit_code == 0);
  int control = 0, treatment = 0;
  std::map<std::string, int> loads;  // requests that loaded their arm's model: counted, not timed
  std::string treated_user, control_user;
  for (int u = 0; u < 30; ++u) {
    json r = Predict(d, "user-" + std::to_string(u));
    loads[r["variant"]] += r["loaded"].get<bool>();
    CHECK(r["experiment"] == "ab");
    CHECK(r["bucket"].is_number());
    CHECK(r["counted"] == true);
    if (r["variant"] == "treatment") {
      CHECK(r["version"] == "2");
      ++treatment;
      treated_user = "user-" + std::to_string(u);
    } else {
      CHECK(r["version"] == "1");
      ++control;
      control_user = "user-" + std::to_string(u);
    }
    // Sticky: asking again gives the same variant.
    json again = Predict(d, "user-" + std::to_string(u));
    CHECK(again["variant"] == r["variant"]);
    loads[r["variant"]] += again["loaded"].get<bool>();
  }
  REQUIRE(treatment > 0);
  REQUIRE(control > 0);
  json anon = Predict(d, "");
  CHECK(anon["variant"] == "control");  // no user: control, outside the experiment's figures
  CHECK(anon["counted"] == false);        // and the reply says so, as feedback for it would be refused
  CHECK(anon["not_counted"] == "no --user in a sticky experiment");
  auto anon_feedback = d.Mms({"feedback", anon["request_id"], "--metric", "click=1"});
  CHECK(anon_feedback.exit_code == 4);
  CHECK_MESSAGE(anon_feedback.err.find("\"counted\": false in its reply") != std::string::npos, anon_feedback.err);
  loads["control"] += anon["loaded"].get<bool>();
  // Refused before running — bad input, a rate limit — either arm would have
  // refused alike: not the version's doing, not counted for the experiment.
  CHECK(d.Mms({"predict", "tiny", "--user", "user-0", "--input", Data("tiny_missing.json")}).exit_code == 2);
  REQUIRE(d.Mms({"limit", "set", "tiny", "--qps", "0.01", "--burst", "1"}).exit_code == 0);
  int limited = 0;
  for (int i = 0; i < 3; ++i)
    limited += d.Mms({"predict", "tiny", "--user", "user-1", "--input", Data("tiny_input.json")}).exit_code == 5;
  CHECK(limited >= 2);
  REQUIRE(d.Mms({"limit", "rm", "tiny"}).exit_code == 0);
  const std::string user1 = Predict(d, "user-1")["variant"];
  const int user1_extra = 3 - limited + 1;  // the served ones among the four
  CHECK(d.Mms({"--json", "predict", "tiny:2", "--input", Data("tiny_input.json"), "--user", "u"}).out.find("experiment") ==
        std::string::npos);  // an explicit version is not routed

  // Feedback for requests just served: the window (2 s) runs from each, and
  // the calls above took over 2 s on a loaded machine (helper-92).
  json treated = Predict(d, treated_user), controlled = Predict(d, control_user);
  REQUIRE(treated["variant"] == "treatment");
  REQUIRE(controlled["variant"] == "control");
  const std::string treated_request = treated["request_id"], control_request = controlled["request_id"];
  loads["treatment"] += treated["loaded"].get<bool>();
  loads["control"] += controlled["loaded"].get<bool>();
  REQUIRE(d.Mms({"feedback", treated_request, "--metric", "click=1"}).exit_code == 0);
  auto twice = d.Mms({"feedback", treated_request, "--metric", "click=1"});
  CHECK(twice.exit_code == 6);
  CHECK(d.Mms({"feedback", control_request, "--metric", "purchase=1"}).exit_code == 2);
  CHECK(d.Mms({"feedback", "0000000000000000", "--metric", "click=1"}).exit_code == 4);
  CHECK(d.Mms({"feedback", control_request, "--metric", "click"}).exit_code == 2);
  CHECK(d.Mms({"feedback", control_request, "--metric", "click=yes"}).exit_code == 2);
  // A value whose square overflows would poison the saved figures: refused, nothing recorded.
  for (const char* huge : {"click=1e155", "click=-2e15", "click=inf"}) {
    auto r = d.Mms({"feedback", control_request, "--metric", huge});
    CHECK(r.exit_code == 2);
    bool explained = r.err.find("finite and at most 1e15") != std::string::npos || r.err.find("'inf' is not a decimal number") != std::string::npos;
    CHECK_MESSAGE(explained, r.err);
  }

  json s = Stats(d, "ab");
  // Sticky: the sample ratio is also checked over distinct users (30, split as routed).
  const json& su = s["comparison"]["sample_ratio_users"];
  CHECK(su["users"]["control"] == control);
  CHECK(su["users"]["treatment"] == treatment);
  CHECK(su["expected_treatment_share"] == doctest::Approx(0.5));
  CHECK(su["since"] == "mmsd started");
  CHECK(s["variants"]["control"]["requests"] == 2 * control + 1 + (user1 == "control" ? user1_extra : 0));
  CHECK(s["variants"]["treatment"]["requests"] == 2 * treatment + 1 + (user1 == "treatment" ? user1_extra : 0));
  CHECK(s["variants"]["control"]["errors"] == 0);
  CHECK(s["variants"]["treatment"]["errors"] == 0);
  for (const char* v : {"control", "treatment"})
    CHECK(s["variants"][v]["latency"]["count"] == s["variants"][v]["requests"].get<int>() - loads[v]);
  CHECK(s["comparison"]["sample_ratio"]["expected_treatment_share"] == 0.5);
  CHECK(s["variants"]["treatment"]["outcomes"]["click"]["count"] == 1);
  CHECK(s["variants"]["control"]["outcomes"]["click"]["count"] == 0);
  for (const char* k : {"p50_ms", "p90_ms", "p95_ms", "p99_ms", "p999_ms", "min_ms", "max_ms", "mean_ms"})
    CHECK(s["variants"]["control"]["latency"].contains(k));
  for (const char* k : {"error_rate", "latency_mean_ms", "outcomes", "sample_ratio"}) CHECK(s["comparison"].contains(k));
  CHECK(s["comparison"]["sample_ratio"].contains("flagged"));
  // Sticky: the tests take the user as the unit (its requests are not independent).
  CHECK(s["comparison"]["unit"] == "user");
  CHECK(s["comparison"]["latency_mean_ms"]["unit"] == "user");
  // No errors in either arm: no spread between users to measure, so by request (an interval, not [0, 0]).
  CHECK(s["comparison"]["error_rate"]["unit"] == "request");
  CHECK(d.Mms({"stats", "ab"}).out.find("95% intervals, users as the unit") != std::string::npos);
  auto all = json::parse(d.Mms({"--json", "stats"}).out);
  CHECK(all["models"].size() == 2);
  CHECK(d.Mms({"stats"}).out.find("sample ratio") != std::string::npos);
  // After the attribution window, feedback is refused.
  std::this_thread::sleep_for(std::chrono::milliseconds(2200));
  auto late = d.Mms({"feedback", control_request, "--metric", "click=1"});
  CHECK(late.exit_code == 1);
  CHECK(late.err.find("attribution window") != std::string::npos);
}

TEST_CASE("a stopped experiment's figures leave memory once saved, and its report and late feedback still count") {
  // Every experiment and canary kept ~0.9 MB an arm until mmsd stopped (a
  // soak: 1.8 MB each), and a report on all of them created them all.
  const int port = FreePort();
  Daemon d("[experiments]\nflush_interval = \"200ms\"\n[metrics]\naddress = \"127.0.0.1:" + std::to_string(port) +
           "\"\n");
  REQUIRE(d.ok());
  Setup(d);
  auto in_memory = [&] {
    auto r = Run({"/usr/bin/curl", "-s", "-f", "http://127.0.0.1:" + std::to_string(port) + "/metrics"});
    const std::string key = "\nmms_experiment_figures_in_memory ";
    const size_t at = r.out.find(key);
    return at == std::string::npos ? -1 : std::stoi(r.out.substr(at + key.size()));
  };
  REQUIRE(d.Mms({"experiment", "create", "ab", "--model", "tiny", "--control", "1", "--treatment", "2", "--percent",
                 "50", "--metric", "click"})
              .exit_code == 0);
  std::string treated;
  int served = 0;
  for (int u = 0; u < 20; ++u) {
    json r = Predict(d, "user-" + std::to_string(u));
    if (r["variant"] == "treatment") treated = r["request_id"];
    ++served;
  }
  REQUIRE_FALSE(treated.empty());
  CHECK(in_memory() == 2);
  REQUIRE(d.Mms({"experiment", "stop", "ab"}).exit_code == 0);
  CHECK(WaitFor([&] { return in_memory() == 0; }, 10));
  // Read from the registry, without keeping them: the same figures.
  json s = Stats(d, "ab");
  CHECK(s["variants"]["control"]["requests"].get<int>() + s["variants"]["treatment"]["requests"].get<int>() == served);
  CHECK(in_memory() == 0);
  // Feedback after the stop, for a request served before it: restored, counted, saved, let go again.
  REQUIRE(d.Mms({"feedback", treated, "--metric", "click=1"}).exit_code == 0);
  CHECK(Stats(d, "ab")["variants"]["treatment"]["outcomes"]["click"]["count"] == 1);
  CHECK(WaitFor([&] { return in_memory() == 0; }, 10));
  CHECK(Stats(d, "ab")["variants"]["treatment"]["outcomes"]["click"]["count"] == 1);
  CHECK(d.Mms({"feedback", treated, "--metric", "click=1"}).exit_code == 6);  // still taken once
}

TEST_CASE("an experiment that declares no metric: feedback in one arm only is reported and compared, text and JSON") {
  Daemon d;
  REQUIRE(d.ok());
  Setup(d);
  REQUIRE(d.Mms({"experiment", "create", "free", "--model", "tiny", "--control", "1", "--treatment", "2", "--percent",
                 "50"})
              .exit_code == 0);
  std::string treated;
  for (int u = 0; u < 40 && treated.empty(); ++u) {
    json r = Predict(d, "user-" + std::to_string(u));
    if (r["variant"] == "treatment") treated = r["request_id"];
  }
  REQUIRE_FALSE(treated.empty());
  REQUIRE(d.Mms({"feedback", treated, "--metric", "revenue=3"}).exit_code == 0);
  json s = Stats(d, "free");
  CHECK(s["variants"]["treatment"]["outcomes"]["revenue"]["count"] == 1);
  CHECK(s["variants"]["control"]["outcomes"]["revenue"]["count"] == 0);
  CHECK(s["comparison"]["outcomes"].contains("revenue"));
  // The text report used to throw on a metric the control arm lacked.
  for (const std::vector<std::string>& args : {std::vector<std::string>{"stats", "free"}, std::vector<std::string>{"stats"}}) {
    auto text = d.Mms(args);
    CHECK_MESSAGE(text.exit_code == 0, text.err);
    CHECK(text.out.find("revenue rate") != std::string::npos);
    if (args.size() == 1) CHECK(text.out.find("serving since mmsd started") != std::string::npos);
  }
}

TEST_CASE("per-variant counts survive kill -9 (up to one flush interval)") {
  // A poll interval far longer than the flush interval: flushes keep their own time.
  Daemon d("[experiments]\nflush_interval = \"200ms\"\n[registry]\npoll_interval = \"30s\"\n");
  REQUIRE(d.ok());
  Setup(d);
  REQUIRE(d.Mms({"experiment", "create", "p", "--model", "tiny", "--control", "1", "--treatment", "2", "--percent", "30"})
              .exit_code == 0);
  for (int u = 0; u < 20; ++u) Predict(d, "u" + std::to_string(u));
  json before = Stats(d, "p");
  // Saved by a flush (every 200 ms): all 20 requests in the registry.
  const std::string db = d.data_dir() + "/registry.db";
  REQUIRE(WaitFor([&] {
    return SqlInt(db, "SELECT sum(json_extract(data_json, '$.requests')) FROM experiment_metrics "
                      "WHERE experiment_id = 'p'") == 20;
  }, 20));
  d.child().Signal(SIGKILL);
  REQUIRE(d.child().Wait(10) == 128 + SIGKILL);
  REQUIRE(d.Restart());
  json after = Stats(d, "p");
  CHECK(after["variants"]["control"]["requests"] == before["variants"]["control"]["requests"]);
  CHECK(after["variants"]["treatment"]["requests"] == before["variants"]["treatment"]["requests"]);
  CHECK(after["variants"]["control"]["latency"]["p50_ms"] == before["variants"]["control"]["latency"]["p50_ms"]);
  // And they keep counting from there.
  Predict(d, "u0");
  CHECK(Stats(d, "p")["variants"]["control"]["requests"].get<int>() +
            Stats(d, "p")["variants"]["treatment"]["requests"].get<int>() ==
        21);
}

TEST_CASE("mms stats reads the saved figures from the registry while mmsd is not running") {
  Daemon d;
  REQUIRE(d.ok());
  Setup(d);
  REQUIRE(d.Mms({"experiment", "create", "off", "--model", "tiny", "--control", "1", "--treatment", "2", "--percent", "50"})
              .exit_code == 0);
  for (int u = 0; u < 12; ++u) Predict(d, "u" + std::to_string(u));
  json live = Stats(d, "off");
  d.child().Signal(SIGTERM);  // saves its figures as it stops
  REQUIRE(d.child().Wait(20) == 0);
  auto r = d.Mms({"--json", "stats", "off"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.err);
  CHECK(r.err.find("mmsd is not running") != std::string::npos);
  json off = json::parse(r.out)["experiments"][0];
  CHECK(off["id"] == "off");
  for (const char* v : {"control", "treatment"})
    CHECK(off["variants"][v]["requests"] == live["variants"][v]["requests"]);
  CHECK(off["variants"]["control"]["requests"].get<int>() + off["variants"]["treatment"]["requests"].get<int>() == 12);
  CHECK(off["comparison"].contains("sample_ratio"));
  // The figures by user are saved too: the same tests, by user.
  CHECK(off["comparison"]["latency_mean_ms"]["unit"] == "user");
  CHECK(off["comparison"]["latency_mean_ms"]["p_value"] == live["comparison"]["latency_mean_ms"]["p_value"]);
  CHECK(d.Mms({"stats", "nope"}).exit_code == 4);
}

TEST_CASE("figures a flush could not save (the registry locked or full) are saved by a later flush") {
  const int port = FreePort();
  Daemon d("[experiments]\nflush_interval = \"200ms\"\n[registry]\npoll_interval = \"30s\"\nbusy_timeout = \"50ms\"\n"
           "[metrics]\naddress = \"127.0.0.1:" + std::to_string(port) + "\"\n");
  REQUIRE(d.ok());
  auto failing = [&] {  // what an alert reads
    auto m = Run({"/usr/bin/curl", "-s", "-f", "http://127.0.0.1:" + std::to_string(port) + "/metrics"});
    return m.out.find("\nmms_registry_flush_failing 1\n") != std::string::npos;
  };
  Setup(d);
  REQUIRE(d.Mms({"experiment", "create", "f", "--model", "tiny", "--control", "1", "--treatment", "2", "--percent", "30"})
              .exit_code == 0);
  for (int u = 0; u < 10; ++u) Predict(d, "u" + std::to_string(u));
  std::this_thread::sleep_for(std::chrono::milliseconds(800));  // flushed
  // Another writer holds the registry: every flush meanwhile fails.
  WriteLock lock(d.data_dir() + "/registry.db");
  REQUIRE(lock.ok());
  for (int u = 10; u < 20; ++u) Predict(d, "u" + std::to_string(u));
  CHECK(WaitFor([&] { return d.log().find("metrics_flush_failed") != std::string::npos; }, 10));
  // Not in the log only: mms status says so while it lasts.
  auto st = d.Mms({"--json", "status"});
  REQUIRE(st.exit_code == 0);
  CHECK_MESSAGE(json::parse(st.out).value("metrics_flush_error", "").find("could not be saved since") != std::string::npos,
                st.out);
  CHECK(d.Mms({"status"}).out.find("WARNING:   experiment figures could not be saved") != std::string::npos);
  CHECK(failing());
  lock.Release();
  // No traffic after the lock goes: a later flush saves the held figures (they used to be
  // dropped until new traffic touched the variant). SIGKILL: no flush at stop.
  CHECK(WaitFor([&] { return d.log().find("metrics_flush_recovered") != std::string::npos; }, 10));
  CHECK(Count(d.log(), "metrics_flush_failed") == 1);  // once per outage, not per variant and interval
  CHECK_FALSE(json::parse(d.Mms({"--json", "status"}).out).contains("metrics_flush_error"));
  CHECK_FALSE(failing());
  d.child().Signal(SIGKILL);
  REQUIRE(d.child().Wait(10) == 128 + SIGKILL);
  REQUIRE(d.Restart());
  json after = Stats(d, "f");
  CHECK(after["variants"]["control"]["requests"].get<int>() + after["variants"]["treatment"]["requests"].get<int>() ==
        20);
  // A stop whose last flush the registry refuses loses those figures: exit 1, not a clean 0.
  // The lock first: figures counted before it could be flushed by a 200 ms interval in time.
  WriteLock at_stop(d.data_dir() + "/registry.db");
  REQUIRE(at_stop.ok());
  for (int u = 20; u < 23; ++u) Predict(d, "u" + std::to_string(u));
  d.child().Signal(SIGTERM);
  CHECK(d.child().Wait(30) == 1);
  CHECK(d.log().find("metrics_unsaved_at_stop") != std::string::npos);
  CHECK(d.log().find(" warn stopped clean=false") != std::string::npos);  // lost something: a warning, not info
}

TEST_CASE("a new experiment routes once its treatment is loaded, and that load holds nothing else up") {
  // A long poll: only the refreshes under test move the daemon's routing.
  // Two loader threads: one stays in the blocked load, the other serves.
  Daemon d("[pool]\nload_threads = 2\nload_retry_backoff = \"100ms\"\n[registry]\npoll_interval = \"30s\"\n");
  REQUIRE(d.ok());
  Setup(d);
  CHECK(Predict(d, "u1")["version"] == "1");
  // tiny:2's packed weights become a FIFO: its load blocks in open() until
  // this test opens the other end (a load as slow as we like, for real).
  BlockedFile weights(PackedWeights(d.data_dir(), "tiny", "2"));
  REQUIRE(weights.ok());

  // All users to the treatment once it routes. `experiment create` returns
  // only then: it runs in the background meanwhile.
  Child create;
  REQUIRE(create.Start({MmsBin(), "--socket", d.socket(), "--data-dir", d.data_dir(), "experiment", "create",
                        "exp-warm", "--model", "tiny", "--control", "1", "--treatment", "2", "--percent", "100"},
                       d.dir() + "/create.log"));
  REQUIRE(WaitFor([&] { return d.Mms({"experiment", "show", "exp-warm"}, 20).exit_code == 0; }, 20));  // committed
  // While tiny:2 loads, tiny is served as before: no request pays its load.
  json p = Predict(d, "u1");
  CHECK(p["version"] == "1");
  CHECK_FALSE(p.contains("experiment"));
  // Everything else goes on: a model registered now is servable at once (its
  // first predict refreshes the registry), and the pool answers.
  REQUIRE(d.Mms({"model", "register", "late", "--version", "1", "--path", Data("tiny.pt"), "-q"}).exit_code == 0);
  auto late = d.Mms({"predict", "late", "--input", Data("tiny_input.json")}, 20);
  CHECK_MESSAGE(late.exit_code == 0, late.err);
  CHECK(d.Mms({"pool"}, 20).exit_code == 0);
  CHECK(d.log().find("warm_failed") == std::string::npos);
  // The CLI's notifications of those writes were answered (within 1.5 s)
  // although the experiment still warms: in flight is only the create's own
  // notification, which waits for the routing (status does not count itself).
  CHECK(WaitFor(
      [&] {
        auto st = d.Mms({"--json", "status"}, 20);
        return st.exit_code == 0 && json::parse(st.out)["in_flight"].get<int>() <= 1;
      },
      20));
  CHECK(create.running());

  // Release the load: it sees an empty file and fails; a failed warm-up
  // does not hold the experiment back, and the treatment's next load (after
  // the 100 ms backoff) reads the real file.
  REQUIRE(weights.Release());
  CHECK(create.Wait(30) == 0);  // returned once the experiment routes
  CHECK(WaitFor([&] { return d.log().find("warm_failed") != std::string::npos; }, 30));
  json routed;
  CHECK(WaitFor(
      [&] {
        auto r = d.Mms({"--json", "predict", "tiny", "--user", "u1", "--input", Data("tiny_input.json")});
        if (r.exit_code == 0) routed = json::parse(r.out);
        return r.exit_code == 0 && routed["version"] == "2";
      },
      30));
  CHECK(routed["experiment"] == "exp-warm");
  CHECK(routed["variant"] == "treatment");
  // Without --json, the line on standard error names the arm too.
  auto text = d.Mms({"predict", "tiny", "--user", "u1", "--input", Data("tiny_input.json")});
  CHECK_MESSAGE(text.err.find(", experiment exp-warm treatment (request ") != std::string::npos, text.err);
}

TEST_CASE("mms stats through a daemon of another registry says so and shows this registry's saved figures") {
  // The default socket does not depend on --data-dir: stats answered with
  // the other registry's experiments, silently, while experiment show said
  // the same id did not exist.
  Daemon d;
  REQUIRE(d.ok());
  Setup(d);
  REQUIRE(d.Mms({"experiment", "create", "theirs", "--model", "tiny", "--control", "1", "--treatment", "2",
                 "--percent", "50"}).exit_code == 0);
  TempDir mine;
  auto in_mine = [&](std::vector<std::string> args) {
    std::vector<std::string> full{MmsBin(), "--data-dir", mine.path(), "--socket", d.socket()};
    full.insert(full.end(), args.begin(), args.end());
    return Run(full, 60);
  };
  for (auto [v, f] : std::vector<std::pair<std::string, std::string>>{{"1", "tiny.pt"}, {"2", "tiny_v2.pt"}})
    REQUIRE(in_mine({"model", "register", "tiny", "--version", v, "--path", Data(f), "-q"}).exit_code == 0);
  REQUIRE(in_mine({"experiment", "create", "mine", "--model", "tiny", "--control", "1", "--treatment", "2",
                   "--percent", "10", "-q"}).exit_code == 0);
  auto r = in_mine({"--json", "stats", "mine"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.err);
  CHECK(json::parse(r.out)["experiments"][0]["id"] == "mine");
  CHECK_MESSAGE(r.err.find("serves the registry") != std::string::npos, r.err);
  CHECK_MESSAGE(r.err.find("showing the figures last saved in " + mine.path()) != std::string::npos, r.err);
  CHECK(in_mine({"stats", "theirs"}).exit_code == 4);  // as experiment show says
  auto all = json::parse(in_mine({"--json", "stats"}).out);
  REQUIRE(all["experiments"].size() == 1);
  CHECK(all["experiments"][0]["id"] == "mine");
  CHECK(Stats(d, "theirs")["id"] == "theirs");  // its own CLI is answered by the daemon as before
}

TEST_CASE("feedback for requests served before a clean restart still counts, and is still taken once") {
  // The request ids were in memory only: every deploy refused the
  // conversions of the hour before it.
  Daemon d;
  REQUIRE(d.ok());
  Setup(d);
  REQUIRE(d.Mms({"experiment", "create", "dep", "--model", "tiny", "--control", "1", "--treatment", "2", "--percent",
                 "50", "--metric", "click", "--metric", "buy"})
              .exit_code == 0);
  const std::string before = Predict(d, "u1")["request_id"], reported = Predict(d, "u2")["request_id"];
  REQUIRE(d.Mms({"feedback", reported, "--metric", "click=1"}).exit_code == 0);
  d.child().Signal(SIGTERM);
  REQUIRE(d.child().Wait(20) == 0);
  REQUIRE(d.Restart());
  CHECK(d.log().find("feedback_ids_restored") != std::string::npos);
  auto late = d.Mms({"feedback", before, "--metric", "click=1"});
  CHECK_MESSAGE(late.exit_code == 0, late.err);
  CHECK(d.Mms({"feedback", reported, "--metric", "click=1"}).exit_code == 6);  // reported before the stop: once
  CHECK(d.Mms({"feedback", reported, "--metric", "buy=1"}).exit_code == 0);
  json s = Stats(d, "dep");
  int clicks = 0;
  for (const char* v : {"control", "treatment"}) clicks += s["variants"][v]["outcomes"]["click"]["count"].get<int>();
  CHECK(clicks == 2);
  // Rewritten at start, appended to since: it stays, and holds the claims since with their outcomes.
  CHECK(std::filesystem::exists(d.data_dir() + "/registry.db.feedback-ids"));
  // A start that fails after reading them keeps them for the next.
  const std::string third = Predict(d, "u3")["request_id"];
  d.child().Signal(SIGTERM);
  REQUIRE(d.child().Wait(20) == 0);
  REQUIRE(std::filesystem::exists(d.data_dir() + "/registry.db.feedback-ids"));
  const int taken = FreePort();
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);  // its metrics port, taken
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(taken));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  REQUIRE(::listen(fd, 1) == 0);
  auto failed = Run({MmsdBin(), "--socket", d.socket(), "--data-dir", d.data_dir(), "--metrics-address",
                     "127.0.0.1:" + std::to_string(taken)}, 30);
  ::close(fd);
  CHECK(failed.exit_code == 6);  // (a taken address is a conflict)
  CHECK(std::filesystem::exists(d.data_dir() + "/registry.db.feedback-ids"));
  REQUIRE(d.Restart());
  CHECK(d.Mms({"feedback", third, "--metric", "click=1"}).exit_code == 0);
}

TEST_CASE("feedback for requests served before a SIGKILL still counts, all but the last flush interval's") {
  // A killed mmsd forgot every request id: an hour of conversions refused.
  Daemon d("[experiments]\nflush_interval = \"200ms\"\n");
  REQUIRE(d.ok());
  Setup(d);
  REQUIRE(d.Mms({"experiment", "create", "crash", "--model", "tiny", "--control", "1", "--treatment", "2",
                 "--percent", "50", "--metric", "click"})
              .exit_code == 0);
  const std::string before = Predict(d, "u1")["request_id"], reported = Predict(d, "u2")["request_id"];
  REQUIRE(d.Mms({"feedback", reported, "--metric", "click=1"}).exit_code == 0);
  // Flushes (every 200 ms) save the figures, then journal both ids, the
  // reported one with its outcome.
  REQUIRE(WaitFor([&] {
    auto file = mms::ReadFile(d.data_dir() + "/registry.db.feedback-ids");
    const std::string journal = file.ok() ? *file : "";
    if (journal.find('"' + before + '"') == std::string::npos) return false;
    for (size_t at = journal.find('"' + reported + '"'); at != std::string::npos;
         at = journal.find('"' + reported + '"', at + 1)) {
      const size_t end = journal.find('\n', at);
      if (journal.substr(at, end - at).find("click") != std::string::npos) return true;
    }
    return false;
  }, 20));
  d.child().Signal(SIGKILL);
  d.child().Wait(10);
  REQUIRE(d.Restart());
  auto late = d.Mms({"feedback", before, "--metric", "click=1"});
  CHECK_MESSAGE(late.exit_code == 0, late.err);  // it was "unknown request id" (exit 4)
  CHECK(d.Mms({"feedback", reported, "--metric", "click=1"}).exit_code == 6);  // taken once, its outcome kept
  json s = Stats(d, "crash");
  int clicks = 0;
  for (const char* v : {"control", "treatment"}) clicks += s["variants"][v]["outcomes"]["click"]["count"].get<int>();
  CHECK(clicks == 2);
}

TEST_CASE("an experiment whose arm was removed says so, also once the version is registered again") {
  // experiment show named "tiny:2" for a removed arm, and then for a later
  // registration with other weights.
  Daemon d;
  REQUIRE(d.ok());
  Setup(d);
  REQUIRE(d.Mms({"experiment", "create", "gone-arm", "--model", "tiny", "--control", "1", "--treatment", "2",
                 "--percent", "50"})
              .exit_code == 0);
  REQUIRE(d.Mms({"model", "rm", "tiny:2", "--force", "-q"}).exit_code == 0);  // stops the experiment
  REQUIRE(d.Mms({"model", "register", "tiny", "--version", "2", "--path", Data("tiny.pt"), "-q"}).exit_code == 0);
  auto text = d.Mms({"experiment", "show", "gone-arm"});
  CHECK_MESSAGE(text.out.find("treatment  tiny:2 (removed)") != std::string::npos, text.out);
  CHECK(text.out.find("control    tiny:1\n") != std::string::npos);
  json j = json::parse(d.Mms({"--json", "experiment", "show", "gone-arm"}).out);
  CHECK(j["treatment_removed"] == true);
  CHECK_FALSE(j.contains("control_removed"));
  CHECK(d.Mms({"experiment", "list"}).out.find("2 (removed)") != std::string::npos);
}
