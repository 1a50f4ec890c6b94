// mms-traffic: replays skewed traffic against a running mmsd, with a live
// progress line (requests, rate, hit rate, loads, evictions). Used by the
// demo (scripts/demo.sh) and handy for trying mms out.
//
//   mms-traffic --socket S --input FILE --models PREFIX --count N
//               [--requests R] [--zipf S] [--users U] [--seconds T]
//               [--feedback METRIC --control-rate P --treatment-rate Q] [--quiet]
//
// Model i is "<PREFIX><i, two digits>"; popularity is Zipf(S) over them.
// With --users, requests carry user ids "user-<k>" (experiments route them);
// with --feedback, a served request reports METRIC=1 with the given chance
// for its variant (a simulated click-through).
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <thread>

#include "protocol/client.h"
#include "protocol/messages.h"
#include "protocol/tensor_file.h"

using namespace mms;
using Clock = std::chrono::steady_clock;

int main(int argc, char** argv) {
  std::string socket, input, prefix = "c", feedback;
  int count = 1, users = 0;
  long requests = 1000;
  double zipf = 1.26, seconds = 0, control_rate = 0.1, treatment_rate = 0.1;
  bool quiet = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&] { return i + 1 < argc ? std::string(argv[++i]) : std::string(); };
    if (a == "--socket") socket = next();
    else if (a == "--input") input = next();
    else if (a == "--models") prefix = next();
    else if (a == "--count") count = std::stoi(next());
    else if (a == "--requests") requests = std::stol(next());
    else if (a == "--zipf") zipf = std::stod(next());
    else if (a == "--users") users = std::stoi(next());
    else if (a == "--seconds") seconds = std::stod(next());
    else if (a == "--feedback") feedback = next();
    else if (a == "--control-rate") control_rate = std::stod(next());
    else if (a == "--treatment-rate") treatment_rate = std::stod(next());
    else if (a == "--quiet") quiet = true;
    else {
      std::fprintf(stderr, "mms-traffic: unknown option %s\n", a.c_str());
      return 2;
    }
  }
  auto inputs = ReadTensorFile(input);
  if (!inputs.ok()) {
    std::fprintf(stderr, "mms-traffic: %s\n", inputs.status().message().c_str());
    return 2;
  }
  proto::Client::Options o;
  o.socket_path = socket;
  auto client = proto::Client::Connect(o);
  if (!client.ok()) {
    std::fprintf(stderr, "mms-traffic: %s\n", client.status().message().c_str());
    return 3;
  }
  std::vector<double> w(static_cast<size_t>(count));
  for (int i = 0; i < count; ++i) w[static_cast<size_t>(i)] = std::pow(i + 1, -zipf);
  std::discrete_distribution<int> pick(w.begin(), w.end());
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> coin(0, 1);
  const bool tty = ::isatty(2);
  auto start = Clock::now(), last_print = start;
  long sent = 0, failed = 0, feedbacks = 0;
  auto progress = [&](bool final) {
    auto pool = (*client)->CallJson(proto::kPool, nlohmann::json::object());
    double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    const auto& t = pool.ok() ? (*pool)["totals"] : nlohmann::json::object();
    std::fprintf(stderr, "%s  %7ld requests  %6.0f/s  hit rate %5.1f%%  loads %5llu  evictions %5llu  errors %ld%s%s",
                 tty ? "\r" : "", sent, sent / std::max(elapsed, 1e-9), t.value("hit_rate", 0.0) * 100,
                 static_cast<unsigned long long>(t.value("loads", 0ull)),
                 static_cast<unsigned long long>(t.value("evictions", 0ull)), failed,
                 feedback.empty() ? "" : ("  feedback " + std::to_string(feedbacks)).c_str(), final || !tty ? "\n" : "");
    std::fflush(stderr);
  };
  while (seconds > 0 ? std::chrono::duration<double>(Clock::now() - start).count() < seconds : sent < requests) {
    char name[64];
    std::snprintf(name, sizeof name, "%s%02d", prefix.c_str(), pick(rng));
    proto::Message m;
    m.type = proto::kPredict;
    m.body = {{"model", count == 1 ? prefix : std::string(name)}};
    if (users > 0) m.body["user"] = "user-" + std::to_string(std::uniform_int_distribution<int>(0, users - 1)(rng));
    m.tensors = *inputs;
    auto r = (*client)->Call(std::move(m));
    ++sent;
    if (!r.ok()) {
      ++failed;
    } else if (!feedback.empty() && r->body.contains("variant")) {
      double p = r->body["variant"] == "treatment" ? treatment_rate : control_rate;
      if (coin(rng) < p) {
        auto f = (*client)->CallJson(proto::kFeedback,
                                     {{"request_id", r->body["request_id"]}, {"metrics", {{feedback, 1}}}});
        feedbacks += f.ok();
      }
    }
    if (!quiet && Clock::now() - last_print > std::chrono::milliseconds(tty ? 250 : 1000)) {
      progress(false);
      last_print = Clock::now();
    }
  }
  if (!quiet) progress(true);
  return failed == sent && sent > 0 ? 1 : 0;
}
