// HttpServer: the daemon's optional HTTP endpoint (/metrics, /health) on
// nng's own HTTP server — no hand-written HTTP. GET only. Routes are exact
// paths or path prefixes ("/health/" matches "/health/rec").
//
// Thread-safety: routes are called on nng's threads, possibly concurrently.
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
  // `address` is "HOST:PORT", ":PORT" or "PORT" (host defaults to 127.0.0.1).
  static Result<std::unique_ptr<HttpServer>> Start(const std::string& address, std::vector<Route> routes);
  ~HttpServer();
  const std::string& url() const { return url_; }

 private:
  HttpServer() = default;
  std::string url_;
  void* server_ = nullptr;  // nng_http_server*
  std::vector<std::unique_ptr<Route>> routes_;
};

}  // namespace mms
