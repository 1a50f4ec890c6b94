// Scheduling benchmarks, side by side on one daemon:
//
//  isolation  A quiet tenant sends a steady rate to a shared model; a noisy
//             tenant offers 10x its rate limit to the same model. Prints the
//             quiet tenant's p50/p99 alone, with the noisy tenant at its
//             limit, offering 10x its limit, and (for reference) 10x with no
//             limit. Phases alternate and repeat; the medians are reported.
//  batching   64 closed-loop clients on a small model (deep.pt: 256 layers
//             8 wide, cost per call rather than per row), the same file
//             registered twice: without batching and with --max-batch-size
//             64. Prints throughput, p50/p99 end to end and in the daemon
//             (arrival to reply), the mean batch, and the in-daemon p99
//             against the configured delay plus one batch's execution time.
//
//  models     A quiet model at a steady rate, alone and beside a busy model
//             with a backlog (16 closed-loop clients): the quiet model's
//             p50/p99 (versions share by execution time; the oldest request
//             of all used to go first, queueing it behind the whole
//             backlog); then both saturated: each model's served/s (turns
//             per dispatch gave the fast model one call per slow call).
//
//   sched_bench [isolation|models|batching|all] [--seconds S] [--threads] [--delay-us D] [--clients N]
//   (batching drives its clients asynchronously from one socket; --threads
//   gives each its own blocking thread, as earlier runs did)
//   (SCHED_CONFIG in the environment: extra TOML for the batching daemon,
//   e.g. $'[scheduler]\nworkers = 1\n')
#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>

#include <atomic>
#include <condition_variable>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <thread>

#include "bench_util.h"
#include "protocol/client.h"
#include "protocol/codec.h"
#include "protocol/messages.h"
#include "protocol/tensor_file.h"

using namespace mms;
using Clock = std::chrono::steady_clock;
using bench::Fmt;
using bench::Percentile;

namespace {

struct Load {
  std::vector<double> lat_us;     // served requests only, end to end
  std::vector<double> server_us;  // the daemon's own latency_ms (arrival to reply)
  long ok = 0, limited = 0, failed = 0;
  double seconds = 0;
};

// `threads` senders share `rate` requests/s (paced on a fixed schedule; 0 =
// closed loop) for `seconds`.
Load Drive(proto::Client* c, const proto::Message& req, int threads, double rate, double seconds) {
  Load out;
  std::mutex mu;
  auto start = Clock::now();
  auto end = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t)
    ts.emplace_back([&, t] {
      Load mine;
      double period = rate > 0 ? threads / rate : 0;
      auto next = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(period * t / threads));
      while (true) {
        if (period > 0) {
          std::this_thread::sleep_until(next);
          next += std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(period));
        }
        auto t0 = Clock::now();
        if (t0 >= end) break;
        auto r = c->Call(req);
        if (r.ok()) {
          ++mine.ok;
          mine.lat_us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
          mine.server_us.push_back(r->body.value("latency_ms", 0.0) * 1e3);
        } else if (r.status().code() == Code::kRateLimited) {
          ++mine.limited;
        } else {
          ++mine.failed;
        }
      }
      std::lock_guard<std::mutex> lock(mu);
      out.ok += mine.ok;
      out.limited += mine.limited;
      out.failed += mine.failed;
      out.lat_us.insert(out.lat_us.end(), mine.lat_us.begin(), mine.lat_us.end());
      out.server_us.insert(out.server_us.end(), mine.server_us.begin(), mine.server_us.end());
    });
  for (auto& t : ts) t.join();
  out.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return out;
}

// `concurrency` closed-loop clients without a thread each: one nng socket
// with a context per client, driven by aio callbacks on nng's own threads,
// so the load generator costs the vCPUs it shares with the daemon little
// (64 blocking client threads spend them on wake-ups and context switches).
struct AsyncClient {
  nng_ctx ctx{};
  nng_aio* aio = nullptr;
  bool receiving = false;
  Clock::time_point t0, end;
  const std::string* request = nullptr;  // encoded
  Load mine;
  std::function<void()> done;

  void Send() {
    nng_msg* m = nullptr;
    if (nng_msg_alloc(&m, request->size()) != 0) {
      ++mine.failed;
      return done();
    }
    std::memcpy(nng_msg_body(m), request->data(), request->size());
    receiving = false;
    t0 = Clock::now();
    nng_aio_set_msg(aio, m);
    nng_ctx_send(ctx, aio);
  }
  static void OnAio(void* arg) {
    auto* c = static_cast<AsyncClient*>(arg);
    if (nng_aio_result(c->aio) != 0) {
      if (!c->receiving) nng_msg_free(nng_aio_get_msg(c->aio));
      ++c->mine.failed;
      return c->done();
    }
    if (!c->receiving) {
      c->receiving = true;
      nng_ctx_recv(c->ctx, c->aio);
      return;
    }
    nng_msg* m = nng_aio_get_msg(c->aio);
    const double us = std::chrono::duration<double, std::micro>(Clock::now() - c->t0).count();
    proto::DecodeResult d =
        proto::Decode(static_cast<const uint8_t*>(nng_msg_body(m)), nng_msg_len(m), nullptr, SIZE_MAX);
    nng_msg_free(m);
    if (d.error == proto::DecodeError::kNone && d.message.type != proto::kError) {
      ++c->mine.ok;
      c->mine.lat_us.push_back(us);
      c->mine.server_us.push_back(d.message.body.value("latency_ms", 0.0) * 1e3);
    } else {
      ++c->mine.failed;
    }
    if (Clock::now() < c->end) return c->Send();
    c->done();
  }
};

Load DriveAsync(const std::string& socket_path, const proto::Message& req, int concurrency, double seconds) {
  Load out;
  const std::string request = proto::Encode(req);
  nng_socket sock;
  if (nng_req0_open(&sock) != 0) return out;
  nng_socket_set_ms(sock, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE);
  if (nng_dial(sock, ("ipc://" + socket_path).c_str(), nullptr, 0) != 0) {
    nng_close(sock);
    return out;
  }
  std::mutex mu;
  std::condition_variable cv;
  int running = concurrency;
  const auto start = Clock::now();
  std::vector<AsyncClient> clients(static_cast<size_t>(concurrency));
  for (auto& c : clients) {
    c.end = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
    c.request = &request;
    c.done = [&] {
      std::lock_guard<std::mutex> lock(mu);
      if (--running == 0) cv.notify_all();
    };
    if (nng_ctx_open(&c.ctx, sock) != 0 || nng_aio_alloc(&c.aio, AsyncClient::OnAio, &c) != 0) std::abort();
    nng_aio_set_timeout(c.aio, 10'000);  // a dead daemon ends the run instead of hanging it
  }
  for (auto& c : clients) c.Send();
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return running == 0; });
  }
  out.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  for (auto& c : clients) {
    nng_aio_free(c.aio);
    nng_ctx_close(c.ctx);
    out.ok += c.mine.ok;
    out.failed += c.mine.failed;
    out.lat_us.insert(out.lat_us.end(), c.mine.lat_us.begin(), c.mine.lat_us.end());
    out.server_us.insert(out.server_us.end(), c.mine.server_us.begin(), c.mine.server_us.end());
  }
  nng_close(sock);
  return out;
}

double Median(std::vector<double> v) { return Percentile(std::move(v), 50); }

int Isolation(double seconds) {
  testing::Daemon d("[log]\nlevel = \"warn\"\n");
  std::string data = testing::TestDataDir();
  if (d.Mms({"model", "register", "shared", "--version", "1", "--path", data + "/deep.pt", "-q"}).exit_code != 0 ||
      d.Mms({"load", "shared"}).exit_code != 0)
    return 1;
  const double quiet_rate = 100, noisy_limit = 100, noisy_offer = 10 * noisy_limit;
  proto::Client::Options o;
  o.socket_path = d.socket();
  auto qc = proto::Client::Connect(o).value(), nc = proto::Client::Connect(o).value();
  proto::Message quiet, noisy;
  quiet.type = noisy.type = proto::kPredict;
  quiet.body = {{"model", "shared"}, {"tenant", "quiet"}};
  noisy.body = {{"model", "shared"}, {"tenant", "noisy"}};
  quiet.tensors = noisy.tensors = ReadTensorFile(data + "/deep_input.json").value();
  auto phase = [&](double noisy_rate) {
    Load nl;
    std::thread n;
    if (noisy_rate > 0) n = std::thread([&] { nl = Drive(nc.get(), noisy, 8, noisy_rate, seconds); });
    Load ql = Drive(qc.get(), quiet, 4, quiet_rate, seconds);
    if (n.joinable()) n.join();
    return std::make_pair(ql, nl);
  };
  auto set_limit = [&](bool on) {
    auto r = on ? d.Mms({"limit", "set", "--tenant", "noisy", "--qps", Fmt(noisy_limit, 0), "--burst", "10"})
                : d.Mms({"limit", "rm", "--tenant", "noisy"});
    return r.exit_code == 0;
  };
  phase(0);  // warm up
  // 0 quiet alone, 1 noisy at its limit, 2 noisy at 10x its limit, 3 noisy at 10x with no limit.
  const double rates[4] = {0, noisy_limit, noisy_offer, noisy_offer};
  std::vector<double> p50[4], p99[4];
  double noisy_served[4] = {}, noisy_limited[4] = {};
  if (!set_limit(true)) return 1;
  for (int rep = 0; rep < 3; ++rep)
    for (int k = 0; k < 4; ++k) {
      if (k == 3 && !set_limit(false)) return 1;
      auto [ql, nl] = phase(rates[k]);
      if (k == 3 && !set_limit(true)) return 1;
      if (ql.failed || ql.limited) std::fprintf(stderr, "quiet tenant: %ld failed, %ld limited\n", ql.failed, ql.limited);
      p50[k].push_back(Percentile(ql.lat_us, 50));
      p99[k].push_back(Percentile(ql.lat_us, 99));
      if (nl.seconds > 0) {
        noisy_served[k] += static_cast<double>(nl.ok) / nl.seconds / 3;
        noisy_limited[k] += static_cast<double>(nl.limited) / nl.seconds / 3;
      }
    }
  std::printf("isolation: quiet tenant %.0f req/s on a shared model (deep.pt, ~1 ms a call); noisy tenant limited to "
              "%.0f req/s; %.0f s phases x3, medians\n",
              quiet_rate, noisy_limit, seconds);
  const char* names[4] = {"quiet alone", "noisy at its limit", "noisy offers 10x its limit", "noisy 10x, no limit (reference)"};
  std::vector<std::vector<std::string>> rows{
      {"phase", "quiet p50 µs", "quiet p99 µs", "p99 vs alone", "p99 vs noisy at limit", "noisy served/s", "noisy refused/s"}};
  for (int k = 0; k < 4; ++k)
    rows.push_back({names[k], Fmt(Median(p50[k]), 1), Fmt(Median(p99[k]), 1), Fmt(Median(p99[k]) / Median(p99[0])),
                    k ? Fmt(Median(p99[k]) / Median(p99[1])) : "-", k ? Fmt(noisy_served[k], 0) : "-",
                    k ? Fmt(noisy_limited[k], 0) : "-"});
  bench::PrintTable(rows);
  return 0;
}

// A quiet model's latency while another model has a backlog: 16 closed-loop
// clients on a slow model (tiny_slow.pt, ~10 ms a call) and 20 req/s on a
// tiny one, alone and beside it, alternating x3, medians.
int Models(double seconds) {
  testing::Daemon d("[log]\nlevel = \"warn\"\n");
  std::string data = testing::TestDataDir();
  if (d.Mms({"model", "register", "quiet", "--version", "1", "--path", data + "/tiny.pt", "-q"}).exit_code != 0 ||
      d.Mms({"model", "register", "busy", "--version", "1", "--path", data + "/tiny_slow.pt", "-q"}).exit_code != 0 ||
      d.Mms({"load", "quiet"}).exit_code != 0 || d.Mms({"load", "busy"}).exit_code != 0)
    return 1;
  proto::Client::Options o;
  o.socket_path = d.socket();
  auto qc = proto::Client::Connect(o).value();
  proto::Message quiet, busy;
  quiet.type = busy.type = proto::kPredict;
  quiet.body = {{"model", "quiet"}};
  busy.body = {{"model", "busy"}};
  quiet.tensors = busy.tensors = ReadTensorFile(data + "/tiny_input.json").value();
  auto phase = [&](bool with_busy) {
    Load bl;
    std::thread b;
    if (with_busy) b = std::thread([&] { bl = DriveAsync(d.socket(), busy, 16, seconds); });
    Load ql = Drive(qc.get(), quiet, 2, 20, seconds);
    if (b.joinable()) b.join();
    return std::make_pair(ql, bl);
  };
  phase(true);  // warm up
  std::vector<double> p50[2], p99[2], busy_rate;
  for (int rep = 0; rep < 3; ++rep)
    for (int k = 0; k < 2; ++k) {
      auto [ql, bl] = phase(k == 1);
      if (ql.failed) std::fprintf(stderr, "quiet model: %ld failed\n", ql.failed);
      p50[k].push_back(Percentile(ql.lat_us, 50));
      p99[k].push_back(Percentile(ql.lat_us, 99));
      if (k == 1 && bl.seconds > 0) busy_rate.push_back(static_cast<double>(bl.ok) / bl.seconds);
    }
  std::printf("models: a quiet model (tiny.pt) at 20 req/s, alone and beside a busy one (tiny_slow.pt, 16 closed-loop "
              "clients); %.0f s phases x3, medians\n",
              seconds);
  bench::PrintTable({{"phase", "quiet p50 ms", "quiet p99 ms", "p99 vs alone", "busy served/s"},
                     {"quiet alone", Fmt(Median(p50[0]) / 1e3), Fmt(Median(p99[0]) / 1e3), "1.00", "-"},
                     {"beside the busy model", Fmt(Median(p50[1]) / 1e3), Fmt(Median(p99[1]) / 1e3),
                      Fmt(Median(p99[1]) / Median(p99[0])), Fmt(Median(busy_rate), 0)}});
  // Both saturated: 16 closed-loop clients on the fast model beside the busy
  // model's 16. Shares by execution time give the fast model about half the
  // workers' time; turns per dispatch gave it one call per busy call.
  std::vector<double> fast_rate, busy_sat, fast_p50, fast_p99;
  for (int rep = 0; rep < 3; ++rep) {
    Load bl, fl;
    std::thread b([&] { bl = DriveAsync(d.socket(), busy, 16, seconds); });
    fl = DriveAsync(d.socket(), quiet, 16, seconds);
    b.join();
    if (fl.failed || bl.failed) std::fprintf(stderr, "saturated: %ld / %ld failed\n", fl.failed, bl.failed);
    fast_rate.push_back(static_cast<double>(fl.ok) / fl.seconds);
    busy_sat.push_back(static_cast<double>(bl.ok) / bl.seconds);
    fast_p50.push_back(Percentile(fl.lat_us, 50));
    fast_p99.push_back(Percentile(fl.lat_us, 99));
  }
  std::printf("both saturated: 16 closed-loop clients on the fast model beside the busy model's 16; %.0f s x3, medians\n",
              seconds);
  bench::PrintTable({{"fast served/s", "fast p50 ms", "fast p99 ms", "busy served/s"},
                     {Fmt(Median(fast_rate), 0), Fmt(Median(fast_p50) / 1e3), Fmt(Median(fast_p99) / 1e3),
                      Fmt(Median(busy_sat), 0)}});
  return 0;
}

int Batching(double seconds, bool async_clients, int delay_us, int concurrency) {
  testing::Daemon d(bench::DaemonConfig("SCHED_CONFIG"));
  std::string data = testing::TestDataDir();
  if (d.Mms({"model", "register", "plain", "--version", "1", "--path", data + "/deep.pt", "-q"}).exit_code != 0 ||
      d.Mms({"model", "register", "batched", "--version", "1", "--path", data + "/deep.pt", "--sample-input",
             data + "/deep_input.json", "--max-batch-size", "64", "--max-queue-delay-us", std::to_string(delay_us), "-q"})
              .exit_code != 0 ||
      d.Mms({"load", "plain"}).exit_code != 0 || d.Mms({"load", "batched"}).exit_code != 0)
    return 1;
  proto::Client::Options o;
  o.socket_path = d.socket();
  auto c = proto::Client::Connect(o).value();
  auto run = [&](const std::string& model) {
    proto::Message req;
    req.type = proto::kPredict;
    req.body = {{"model", model}};
    req.tensors = ReadTensorFile(data + "/deep_input.json").value();
    if (async_clients) {
      DriveAsync(d.socket(), req, concurrency, 1);  // warm up
      return DriveAsync(d.socket(), req, concurrency, seconds);
    }
    Drive(c.get(), req, concurrency, 0, 1);
    return Drive(c.get(), req, concurrency, 0, seconds);
  };
  Load plain = run("plain"), batched = run("batched");
  auto pool = c->CallJson(proto::kPool, nlohmann::json::object()).value();
  const auto& s = pool["scheduler"]["batched:1"];
  double exec_ms = s["exec_ms"].get<double>(), mean_batch = s["mean_batch"].get<double>();
  double tp = static_cast<double>(plain.ok) / plain.seconds, tb = static_cast<double>(batched.ok) / batched.seconds;
  std::printf("batching: %d closed-loop clients on deep.pt (256 layers 8 wide, 1 row per request), %.0f s each; "
              "batched: max 64 rows, max delay %d µs\n",
              concurrency, seconds, delay_us);
  auto row = [](const std::string& name, const Load& l, double rate) {
    return std::vector<std::string>{name,
                                    Fmt(rate, 0),
                                    Fmt(Percentile(l.lat_us, 50) / 1e3),
                                    Fmt(Percentile(l.lat_us, 99) / 1e3),
                                    Fmt(Percentile(l.server_us, 50) / 1e3),
                                    Fmt(Percentile(l.server_us, 99) / 1e3),
                                    std::to_string(l.failed)};
  };
  bench::PrintTable({{"", "req/s", "p50 ms", "p99 ms", "daemon p50 ms", "daemon p99 ms", "failed"},
                     row("no batching", plain, tp),
                     row("batching", batched, tb)});
  double bound = delay_us / 1e3 + exec_ms, p99 = Percentile(batched.server_us, 99) / 1e3;
  std::printf("throughput ratio %.2fx; mean batch %.1f rows, one batch runs in %.2f ms; "
              "in-daemon p99 %.2f ms vs delay + one batch = %.2f ms (%s)\n",
              tb / tp, mean_batch, exec_ms, p99, bound, p99 <= bound ? "within" : "over");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string which = "all";
  double seconds = 5;
  bool async_clients = true;  // --threads: one blocking thread per client instead
  int delay_us = 2000;         // --delay-us: the batched version's max_queue_delay_us
  int clients = 64;            // --clients: the batching phase's closed-loop clients
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--seconds") && i + 1 < argc) seconds = std::atof(argv[++i]);
    else if (!std::strcmp(argv[i], "--threads")) async_clients = false;
    else if (!std::strcmp(argv[i], "--delay-us") && i + 1 < argc) delay_us = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--clients") && i + 1 < argc) clients = std::atoi(argv[++i]);
    else which = argv[i];
  }
  int rc = 0;
  if (which == "all" || which == "isolation") rc |= Isolation(seconds);
  if (which == "all" || which == "models") rc |= Models(seconds);
  if (which == "all" || which == "batching") rc |= Batching(seconds, async_clients, delay_us, std::max(1, clients));
  return rc;
}
