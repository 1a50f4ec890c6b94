// HttpServer: the daemon's optional HTTP endpoint (/metrics, /health) on
// nng's own HTTP server — no hand-written HTTP. GET (and HEAD) only. Routes
// are exact paths or path prefixes ("/health/" matches "/health/rec"); the
// path a route gets is percent-decoded, without the query.
//
// Routes run on the server's own two threads ("mms-http"), never on nng's
// shared task threads (which also carry the IPC requests): a slow or
// flooding HTTP client cannot stall predictions, and a /health probe need
// not wait behind a /metrics scrape. At most kMaxQueued requests are taken
// at once (running or waiting); more are answered 503.
//
// Lifetime: the destructor stops listening, answers what is queued with 503,
// and waits for a route that is running; no route runs after it returns.
// Thread-safety: Start and the destructor from one thread; routes are called
// on the server's threads, possibly concurrently.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"

namespace mms {

class Executor;

struct HttpResponse {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
};

class HttpServer {
 public:
  struct Route {
    std::string path;  // "/metrics", or a prefix ending in '/' with `tree`
    bool tree = false;
    std::function<HttpResponse(const std::string& path)> handler;
  };
  static constexpr size_t kMaxQueued = 32;
  // `address` is "HOST:PORT", "[V6]:PORT", ":PORT" or "PORT" (host defaults to 127.0.0.1).
  static Result<std::unique_ptr<HttpServer>> Start(const std::string& address, std::vector<Route> routes);
  ~HttpServer();
  const std::string& url() const { return url_; }

  struct Gate;  // shared with nng's handlers (which may outlive this object)

 private:
  HttpServer() = default;
  std::string url_;
  void* server_ = nullptr;  // nng_http_server*
  std::shared_ptr<Gate> gate_;
};

}  // namespace mms
