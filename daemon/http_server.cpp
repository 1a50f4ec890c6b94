#include "http_server.h"

#include <fcntl.h>
#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <microhttpd.h>

#include <cerrno>
#include <cstring>

#include "config/config.h"

namespace mms {

namespace {

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

// libmicrohttpd would decode the path itself (an encoded NUL cutting it
// short); it is left as sent and decoded by PercentDecode.
size_t KeepEscaped(void*, MHD_Connection*, char* s) { return std::strlen(s); }

MHD_Result Respond(MHD_Connection* c, const HttpResponse& r, const char* allow = nullptr) {
  MHD_Response* res = MHD_create_response_from_buffer(r.body.size(), const_cast<char*>(r.body.data()),
                                                      MHD_RESPMEM_MUST_COPY);
  if (!res) return MHD_NO;  // out of memory: the connection is closed
  MHD_add_response_header(res, MHD_HTTP_HEADER_CONTENT_TYPE, r.content_type.c_str());
  if (allow) MHD_add_response_header(res, MHD_HTTP_HEADER_ALLOW, allow);
  MHD_Result ok = MHD_queue_response(c, static_cast<unsigned>(r.status), res);
  MHD_destroy_response(res);
  return ok;
}

HttpResponse Text(int status, const std::string& text) { return {status, "text/plain; charset=utf-8", text + "\n"}; }

// Bound, non-blocking, listening; the error names the address and the cause.
// With `probe`, bound and closed at once: whether this host lets this
// process listen there at all (one of its addresses; a port below 1024 needs
// the privilege), whatever listens on the port now (taken: not a finding).
Result<int> ListenOn(const HostPort& hp, const std::string& url, bool probe = false) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* found = nullptr;
  std::string port = std::to_string(hp.port);
  if (int rv = ::getaddrinfo(hp.host.c_str(), port.c_str(), &hints, &found); rv != 0)
    return InvalidArgument("cannot resolve the metrics address " + url + ": " + ::gai_strerror(rv));
  std::string err;
  int fd = -1, last_errno = 0;
  bool in_use = false;  // an address taken now (by the daemon a probe precedes, perhaps)
  for (addrinfo* a = found; a && fd < 0; a = a->ai_next) {
    fd = ::socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      err = std::strerror(errno);
      continue;
    }
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (a->ai_family == AF_INET6) ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    // A probe only binds: a listener, even for an instant, takes connections.
    if (::bind(fd, a->ai_addr, a->ai_addrlen) != 0 || (!probe && ::listen(fd, 128) != 0)) {
      last_errno = errno;
      in_use = in_use || errno == EADDRINUSE;
      err = std::strerror(errno);
      ::close(fd);
      fd = -1;
    }
  }
  ::freeaddrinfo(found);
  if ((fd >= 0 || in_use) && probe) {
    if (fd >= 0) ::close(fd);
    return 0;
  }
  if (fd < 0 && last_errno == EADDRNOTAVAIL)
    return IoError("cannot listen on " + url + ": " + err + " (not an address of this host; [metrics] address / " +
                   "--metrics-address)");
  if (fd < 0 && last_errno == EADDRINUSE)  // a conflict (exit 6), as a second daemon on one socket is
    return Status(Code::kInUse, "cannot listen on " + url + ": " + err +
                                    " (another mmsd, or another program, listens there): give this daemon its own "
                                    "[metrics] address or --metrics-address (mms serve --metrics-address HOST:PORT)");
  if (fd < 0) return IoError("cannot listen on " + url + ": " + err + " ([metrics] address / --metrics-address)");
  return fd;
}

}  // namespace

struct HttpServer::Impl {
  static MHD_Result OnRequest(void* cls, MHD_Connection* c, const char* url, const char* method, const char*,
                              const char*, size_t* upload_size, void** req) {
    // Called once the headers are in, then for any body, then with nothing
    // more to read: answered then, so the connection can be kept alive.
    static int headers_seen;
    if (*req == nullptr) {
      *req = &headers_seen;
      return MHD_YES;
    }
    if (*upload_size > 0) {  // a body, which no route takes: skipped
      *upload_size = 0;
      return MHD_YES;
    }
    auto* self = static_cast<HttpServer*>(cls);
    if (std::strcmp(method, MHD_HTTP_METHOD_GET) != 0 && std::strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
      return Respond(c, Text(405, "only GET and HEAD"), "GET, HEAD");
    std::string path;
    if (!PercentDecode(url, &path)) return Respond(c, Text(400, "malformed %-escape in the path"));
    for (const Route& r : self->routes_) {
      bool match = r.tree ? path.compare(0, r.path.size(), r.path) == 0 : path == r.path;
      if (!match) continue;
      HttpResponse res;
      try {
        res = r.handler(path);
      } catch (const std::exception& e) {
        res = Text(500, std::string("internal error: ") + e.what());
      }
      return Respond(c, res);
    }
    return Respond(c, Text(404, "not found: " + path));
  }
};

Status HttpServer::CheckAddress(const std::string& address) {
  auto hp = ParseHostPort(address);
  if (!hp.ok()) return InvalidArgument("metrics " + hp.status().message());
  const std::string host = hp->host.find(':') != std::string::npos ? "[" + hp->host + "]" : hp->host;
  return ListenOn(*hp, "http://" + host + ":" + std::to_string(hp->port), /*probe=*/true).status();
}

Result<std::unique_ptr<HttpServer>> HttpServer::Start(const std::string& address, std::vector<Route> routes) {
  // Checked again here (the config check does it too): --metrics-address
  // bypasses the config, and a bad port must be an error, never an exception.
  auto hp = ParseHostPort(address);
  if (!hp.ok()) return InvalidArgument("metrics " + hp.status().message());
  const std::string host = hp->host.find(':') != std::string::npos ? "[" + hp->host + "]" : hp->host;
  std::unique_ptr<HttpServer> s(new HttpServer());
  s->url_ = "http://" + host + ":" + std::to_string(hp->port);
  s->routes_ = std::move(routes);
  MMS_ASSIGN_OR_RETURN(int fd, ListenOn(*hp, s->url_));
  MHD_Daemon* d = MHD_start_daemon(
      MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL, 0, nullptr, nullptr, &Impl::OnRequest, s.get(),
      MHD_OPTION_LISTEN_SOCKET, fd, MHD_OPTION_THREAD_POOL_SIZE, static_cast<unsigned>(kThreads),
      MHD_OPTION_CONNECTION_LIMIT, static_cast<unsigned>(kMaxConnections), MHD_OPTION_PER_IP_CONNECTION_LIMIT,
      static_cast<unsigned>(kMaxConnectionsPerAddress), MHD_OPTION_CONNECTION_TIMEOUT,
      static_cast<unsigned>(kIdleTimeoutSeconds), MHD_OPTION_UNESCAPE_CALLBACK, &KeepEscaped, nullptr,
      MHD_OPTION_END);
  if (!d) {
    ::close(fd);
    return Internal("cannot start the HTTP server on " + s->url_ + " (libmicrohttpd refused to start)");
  }
  s->daemon_ = d;
  return s;
}

HttpServer::~HttpServer() {
  // Closes the listening socket and every connection, and joins the threads:
  // no route runs after this.
  if (daemon_) MHD_stop_daemon(static_cast<MHD_Daemon*>(daemon_));
}

}  // namespace mms
