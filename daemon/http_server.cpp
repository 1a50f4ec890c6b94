#include "http_server.h"

#include <nng/nng.h>
#include <nng/supplemental/http/http.h>

#include <condition_variable>
#include <mutex>

#include "config/config.h"
#include "core/executor.h"

namespace mms {

// What a request needs after HttpServer may be gone: nng frees each
// handler's Bound (and its reference to the gate) only once no request of
// it is in flight.
struct HttpServer::Gate {
  std::mutex mu;
  std::condition_variable cv;
  size_t queued = 0;  // guarded by mu: accepted, not yet answered
  bool closed = false;  // guarded by mu
  std::unique_ptr<Executor> worker;  // set by Start; shut down by ~HttpServer once nothing is queued
};

namespace {

struct Bound {
  std::shared_ptr<HttpServer::Gate> gate;
  HttpServer::Route route;
};

// "%2F" → "/", "+" kept; false on a malformed escape or an encoded NUL.
bool PercentDecode(const std::string& in, std::string* out) {
  out->clear();
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '%') {
      out->push_back(in[i]);
      continue;
    }
    if (i + 2 >= in.size()) return false;
    int hi = hex(in[i + 1]), lo = hex(in[i + 2]);
    if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) return false;
    out->push_back(static_cast<char>(hi * 16 + lo));
    i += 2;
  }
  return true;
}

void Finish(nng_aio* aio, const HttpResponse& r) {
  nng_http_res* res = nullptr;
  if (nng_http_res_alloc(&res) != 0) {
    nng_aio_finish(aio, NNG_ENOMEM);
    return;
  }
  nng_http_res_set_status(res, static_cast<uint16_t>(r.status));
  nng_http_res_set_header(res, "Content-Type", r.content_type.c_str());
  nng_http_res_copy_data(res, r.body.data(), r.body.size());
  nng_aio_set_output(aio, 0, res);
  nng_aio_finish(aio, 0);
}

HttpResponse Unavailable(const std::string& why) { return {503, "text/plain; charset=utf-8", why + "\n"}; }

// On nng's task thread: only hands the request over.
void Serve(nng_aio* aio) {
  auto* req = static_cast<nng_http_req*>(nng_aio_get_input(aio, 0));
  auto* h = static_cast<nng_http_handler*>(nng_aio_get_input(aio, 1));
  auto* b = static_cast<Bound*>(nng_http_handler_get_data(h));
  std::string uri = nng_http_req_get_uri(req);
  if (auto q = uri.find('?'); q != std::string::npos) uri.resize(q);
  std::string path;
  if (!PercentDecode(uri, &path)) return Finish(aio, {400, "text/plain; charset=utf-8", "malformed %-escape in the path\n"});
  HttpServer::Gate& g = *b->gate;
  {
    std::lock_guard<std::mutex> lock(g.mu);
    if (g.closed) return Finish(aio, Unavailable("mmsd is stopping"));
    if (g.queued >= HttpServer::kMaxQueued) return Finish(aio, Unavailable("busy: too many HTTP requests at once; retry"));
    ++g.queued;
  }
  // The Bound lives while this request is in flight (nng holds its handler).
  bool submitted = g.worker->Submit([aio, b, path] {
    HttpServer::Gate& g = *b->gate;
    bool closed;
    {
      std::lock_guard<std::mutex> lock(g.mu);
      closed = g.closed;
    }
    HttpResponse r;
    if (closed) {
      r = Unavailable("mmsd is stopping");
    } else {
      try {
        r = b->route.handler(path);
      } catch (const std::exception& e) {
        r = {500, "text/plain; charset=utf-8", std::string("internal error: ") + e.what() + "\n"};
      }
    }
    Finish(aio, r);
    std::lock_guard<std::mutex> lock(g.mu);
    --g.queued;
    g.cv.notify_all();
  });
  if (!submitted) {
    Finish(aio, Unavailable("mmsd is stopping"));
    std::lock_guard<std::mutex> lock(g.mu);
    --g.queued;
    g.cv.notify_all();
  }
}

}  // namespace

Result<std::unique_ptr<HttpServer>> HttpServer::Start(const std::string& address, std::vector<Route> routes) {
  // Checked again here (the config check does it too): --metrics-address
  // bypasses the config, and a bad port must be an error, never an exception.
  auto hp = ParseHostPort(address);
  if (!hp.ok()) return InvalidArgument("metrics " + hp.status().message());
  const std::string host = hp->host.find(':') != std::string::npos ? "[" + hp->host + "]" : hp->host;
  std::unique_ptr<HttpServer> s(new HttpServer());
  s->url_ = "http://" + host + ":" + std::to_string(hp->port);
  s->gate_ = std::make_shared<Gate>();
  s->gate_->worker = std::make_unique<Executor>("mms-http", 2);  // a probe need not wait behind a scrape
  nng_url* url = nullptr;
  int rv = nng_url_parse(&url, s->url_.c_str());
  if (rv != 0) return InvalidArgument("bad metrics address '" + address + "': " + nng_strerror(rv));
  nng_http_server* srv = nullptr;
  rv = nng_http_server_hold(&srv, url);
  nng_url_free(url);
  if (rv != 0) return IoError("cannot serve HTTP on " + s->url_ + ": " + nng_strerror(rv));
  s->server_ = srv;
  for (auto& r : routes) {
    nng_http_handler* h = nullptr;
    if ((rv = nng_http_handler_alloc(&h, r.path.c_str(), Serve)) != 0)
      return Internal(std::string("nng_http_handler_alloc: ") + nng_strerror(rv));
    bool tree = r.tree;
    nng_http_handler_set_data(h, new Bound{s->gate_, std::move(r)}, [](void* p) { delete static_cast<Bound*>(p); });
    if (tree) nng_http_handler_set_tree(h);
    if ((rv = nng_http_server_add_handler(srv, h)) != 0) {
      nng_http_handler_free(h);
      return Internal(std::string("nng_http_server_add_handler: ") + nng_strerror(rv));
    }
  }
  if ((rv = nng_http_server_start(srv)) != 0)
    return IoError("cannot listen on " + s->url_ + ": " + nng_strerror(rv) +
                   " ([metrics] address / --metrics-address)");
  return s;
}

HttpServer::~HttpServer() {
  if (server_) nng_http_server_stop(static_cast<nng_http_server*>(server_));  // no new requests
  if (gate_) {
    {
      std::unique_lock<std::mutex> lock(gate_->mu);
      gate_->closed = true;  // queued requests are answered 503 without running their route
      gate_->cv.wait(lock, [&] { return gate_->queued == 0; });
    }
    gate_->worker->Shutdown();
  }
  if (server_) nng_http_server_release(static_cast<nng_http_server*>(server_));
}

}  // namespace mms
