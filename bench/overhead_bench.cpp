// Request overhead: `predict` on a tiny model through the real daemon vs a
// bare nng req/rep echo of the same bytes over IPC (the floor any IPC
// server pays). Prints p50/p99 of both and their ratio, and the same model
// batched (a lone request on an idle batched version).
//   overhead_bench [requests]
#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>
#include <nng/protocol/reqrep0/req.h>

#include <chrono>
#include <cstring>
#include <thread>

#include "bench_util.h"
#include "protocol/client.h"
#include "protocol/messages.h"
#include "protocol/tensor_file.h"

using namespace mms;
using Clock = std::chrono::steady_clock;

int main(int argc, char** argv) {
  int n = argc > 1 ? std::atoi(argv[1]) : 5000;
  testing::Daemon d(std::string("[log]\nlevel = \"warn\"\n") + (argc > 2 ? argv[2] : ""));
  if (!d.ok()) return 1;
  std::string data = testing::TestDataDir();
  // tinyb: the same model, batched (up to 8 rows, the default 1 ms delay): a
  // lone request on an idle batched version runs at once, as an unbatched one.
  if (d.Mms({"model", "register", "tiny", "--version", "1", "--path", data + "/tiny.pt", "-q"}).exit_code != 0 ||
      d.Mms({"load", "tiny"}).exit_code != 0 ||
      d.Mms({"model", "register", "tinyb", "--version", "1", "--path", data + "/tiny.pt", "--sample-input",
             data + "/tiny_input.json", "--max-batch-size", "8", "-q"}).exit_code != 0 ||
      d.Mms({"load", "tinyb"}).exit_code != 0)
    return 1;
  proto::Message req;
  req.type = proto::kPredict;
  req.body = {{"model", "tiny"}};
  req.tensors = ReadTensorFile(data + "/tiny_input.json").value();
  std::string wire = proto::Encode(req);

  // Echo server on its own socket.
  std::string echo_url = "ipc://" + d.dir() + "/echo.sock";
  nng_socket rep;
  nng_rep0_open(&rep);
  nng_listen(rep, echo_url.c_str(), nullptr, 0);
  std::thread echo([&] {
    while (true) {
      nng_msg* m;
      if (nng_recvmsg(rep, &m, 0) != 0) return;
      if (nng_sendmsg(rep, m, 0) != 0) nng_msg_free(m);
    }
  });
  nng_socket reqs;
  nng_req0_open(&reqs);
  nng_dial(reqs, echo_url.c_str(), nullptr, 0);

  proto::Client::Options o;
  o.socket_path = d.socket();
  auto client = proto::Client::Connect(o).value();

  std::vector<double> pred, bare, ping, inside, batched;
  proto::Message breq = req;
  breq.body["model"] = "tinyb";
  proto::Message ping_req;
  ping_req.type = proto::kPing;
  for (int round = 0; round < 2; ++round) {  // round 0 warms up
    pred.clear();
    bare.clear();
    ping.clear();
    inside.clear();
    batched.clear();
    for (int i = 0; i < n; ++i) {
      auto tp = Clock::now();
      if (!client->Call(ping_req).ok()) return 1;
      ping.push_back(std::chrono::duration<double, std::micro>(Clock::now() - tp).count());
      // Interleave so both see the same machine state.
      auto tb = Clock::now();
      if (!client->Call(breq).ok()) return 1;
      batched.push_back(std::chrono::duration<double, std::micro>(Clock::now() - tb).count());
      auto t0 = Clock::now();
      auto r = client->Call(req);
      auto t1 = Clock::now();
      if (!r.ok()) {
        std::fprintf(stderr, "predict failed: %s\n", r.status().ToString().c_str());
        return 1;
      }
      nng_msg* m;
      nng_msg_alloc(&m, wire.size());
      std::memcpy(nng_msg_body(m), wire.data(), wire.size());
      auto t2 = Clock::now();
      nng_sendmsg(reqs, m, 0);
      nng_recvmsg(reqs, &m, 0);
      auto t3 = Clock::now();
      nng_msg_free(m);
      pred.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
      inside.push_back(r->body.value("latency_ms", 0.0) * 1000);
      bare.push_back(std::chrono::duration<double, std::micro>(t3 - t2).count());
    }
  }
  nng_close(reqs);
  nng_close(rep);
  echo.join();
  using bench::Fmt;
  using bench::Percentile;
  std::printf("request overhead: %d sequential requests, %zu-byte request\n", n, wire.size());
  bench::PrintTable({{"path", "p50 µs", "p99 µs", "mean µs"},
                     {"nng req/rep echo", Fmt(Percentile(bare, 50), 1), Fmt(Percentile(bare, 99), 1), Fmt(bench::Mean(bare), 1)},
                     {"mms ping (no model)", Fmt(Percentile(ping, 50), 1), Fmt(Percentile(ping, 99), 1), Fmt(bench::Mean(ping), 1)},
                     {"mms predict (tiny)", Fmt(Percentile(pred, 50), 1), Fmt(Percentile(pred, 99), 1), Fmt(bench::Mean(pred), 1)},
                     {"  of which in the daemon (receipt to reply)", Fmt(Percentile(inside, 50), 1), Fmt(Percentile(inside, 99), 1), Fmt(bench::Mean(inside), 1)},
                     {"mms predict (tiny, batched: max 8 rows)", Fmt(Percentile(batched, 50), 1),
                      Fmt(Percentile(batched, 99), 1), Fmt(bench::Mean(batched), 1)},
                     {"ratio predict/echo", Fmt(Percentile(pred, 50) / Percentile(bare, 50)),
                      Fmt(Percentile(pred, 99) / Percentile(bare, 99)), Fmt(bench::Mean(pred) / bench::Mean(bare))}});
  return 0;
}
