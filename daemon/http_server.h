// HttpServer: the daemon's optional HTTP endpoint (/metrics, /health) on
// libmicrohttpd — no hand-written HTTP. GET (and HEAD) only. Routes are
// exact paths or path prefixes ("/health/" matches "/health/rec"); the path
// a route gets is percent-decoded, without the query.
//
// Routes run on the server's own kThreads threads (each connection on one
// of them), never on the threads serving predictions: a slow or flooding
// HTTP client cannot stall those. Connections are capped (kMaxConnections in
// all, kMaxConnectionsPerAddress from one address; more are closed at once)
// and one idle kIdleTimeoutSeconds is closed, so idle clients cannot take
// the process's file descriptors, which the IPC socket needs for its own
// clients. (Clients from several addresses sending a byte every few seconds
// can still hold every HTTP slot: the endpoint is for trusted networks.)
//
// Lifetime: the destructor stops listening, closes the connections, and
// waits for a route that is running; no route runs after it returns.
// Thread-safety: Start and the destructor from one thread; routes are called
// on the server's threads, possibly concurrently.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"

namespace mms {

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
  static constexpr int kThreads = 2;
  static constexpr int kMaxConnections = 64;
  static constexpr int kMaxConnectionsPerAddress = 16;
  static constexpr int kIdleTimeoutSeconds = 10;
  // `address` is "HOST:PORT", "[V6]:PORT", ":PORT" or "PORT" (host defaults to 127.0.0.1).
  static Result<std::unique_ptr<HttpServer>> Start(const std::string& address, std::vector<Route> routes);
  // Whether Start could listen at `address` on this host (it resolves, is one
  // of the host's addresses, and the port may be bound by this process; one
  // taken now, by a daemon already running, is not a finding): bound and
  // closed at once. INVALID_ARGUMENT, else IO.
  static Status CheckAddress(const std::string& address);
  ~HttpServer();
  const std::string& url() const { return url_; }

 private:
  struct Impl;
  HttpServer() = default;
  std::string url_;
  std::vector<Route> routes_;  // read-only once started
  void* daemon_ = nullptr;     // MHD_Daemon*
};

}  // namespace mms
