#include "http_server.h"

#include <nng/nng.h>
#include <nng/supplemental/http/http.h>

#include "config/config.h"

namespace mms {
namespace {

void Serve(nng_aio* aio) {
  auto* req = static_cast<nng_http_req*>(nng_aio_get_input(aio, 0));
  auto* h = static_cast<nng_http_handler*>(nng_aio_get_input(aio, 1));
  auto* route = static_cast<HttpServer::Route*>(nng_http_handler_get_data(h));
  std::string uri = nng_http_req_get_uri(req);
  auto q = uri.find('?');
  if (q != std::string::npos) uri.resize(q);
  HttpResponse r;
  try {
    r = route->handler(uri);
  } catch (const std::exception& e) {
    r = {500, "text/plain; charset=utf-8", std::string("internal error: ") + e.what() + "\n"};
  }
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

}  // namespace

Result<std::unique_ptr<HttpServer>> HttpServer::Start(const std::string& address, std::vector<Route> routes) {
  // Checked again here (the config check does it too): --metrics-address
  // bypasses the config, and a bad port must be an error, never an exception.
  auto hp = ParseHostPort(address);
  if (!hp.ok()) return InvalidArgument("metrics " + hp.status().message());
  const std::string host = hp->host, port = std::to_string(hp->port);
  std::unique_ptr<HttpServer> s(new HttpServer());
  s->url_ = "http://" + host + ":" + port;
  nng_url* url = nullptr;
  int rv = nng_url_parse(&url, s->url_.c_str());
  if (rv != 0) return InvalidArgument("bad metrics address '" + address + "': " + nng_strerror(rv));
  nng_http_server* srv = nullptr;
  rv = nng_http_server_hold(&srv, url);
  nng_url_free(url);
  if (rv != 0) return IoError("cannot serve HTTP on " + s->url_ + ": " + nng_strerror(rv));
  s->server_ = srv;
  for (auto& r : routes) {
    s->routes_.push_back(std::make_unique<Route>(std::move(r)));
    Route* route = s->routes_.back().get();
    nng_http_handler* h = nullptr;
    if ((rv = nng_http_handler_alloc(&h, route->path.c_str(), Serve)) != 0)
      return Internal(std::string("nng_http_handler_alloc: ") + nng_strerror(rv));
    nng_http_handler_set_data(h, route, nullptr);
    if (route->tree) nng_http_handler_set_tree(h);
    if ((rv = nng_http_server_add_handler(srv, h)) != 0)
      return Internal(std::string("nng_http_server_add_handler: ") + nng_strerror(rv));
  }
  if ((rv = nng_http_server_start(srv)) != 0)
    return IoError("cannot listen on " + s->url_ + ": " + nng_strerror(rv) +
                   " ([metrics] address / --metrics-address)");
  return s;
}

HttpServer::~HttpServer() {
  if (server_) {
    auto* srv = static_cast<nng_http_server*>(server_);
    nng_http_server_stop(srv);
    nng_http_server_release(srv);
  }
}

}  // namespace mms
