#include "protocol/client.h"

#include "core/paths.h"

#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>

#include <cstring>
#include <random>

namespace mms::proto {
namespace {

nng_socket SockOf(uint32_t id) {
  nng_socket s;
  s.id = id;
  return s;
}

struct AioDeleter {
  void operator()(nng_aio* a) const { nng_aio_free(a); }
};
using AioPtr = std::unique_ptr<nng_aio, AioDeleter>;

// One round trip of an already-built nng message on a fresh context.
Result<nng_msg*> RoundTrip(uint32_t sock_id, nng_msg* msg, int64_t timeout_ms, const std::string& path) {
  nng_ctx ctx;
  int rv = nng_ctx_open(&ctx, SockOf(sock_id));
  if (rv != 0) {
    nng_msg_free(msg);
    return Internal(std::string("nng_ctx_open: ") + nng_strerror(rv));
  }
  nng_aio* raw = nullptr;
  if ((rv = nng_aio_alloc(&raw, nullptr, nullptr)) != 0) {
    nng_ctx_close(ctx);
    nng_msg_free(msg);
    return Internal(std::string("nng_aio_alloc: ") + nng_strerror(rv));
  }
  AioPtr aio(raw);
  nng_aio_set_timeout(aio.get(), static_cast<nng_duration>(timeout_ms));
  nng_aio_set_msg(aio.get(), msg);
  nng_ctx_send(ctx, aio.get());
  nng_aio_wait(aio.get());
  if ((rv = nng_aio_result(aio.get())) != 0) {
    nng_msg_free(nng_aio_get_msg(aio.get()));
    nng_ctx_close(ctx);
    return Unavailable("cannot send to mmsd at " + path + ": " + nng_strerror(rv));
  }
  nng_aio_set_timeout(aio.get(), static_cast<nng_duration>(timeout_ms));
  nng_ctx_recv(ctx, aio.get());
  nng_aio_wait(aio.get());
  rv = nng_aio_result(aio.get());
  nng_ctx_close(ctx);
  if (rv == NNG_ETIMEDOUT)
    return Unavailable("no reply from mmsd at " + path + " within " + std::to_string(timeout_ms) +
                       " ms (raise --timeout for slow operations)");
  if (rv != 0) return Unavailable("lost connection to mmsd at " + path + ": " + nng_strerror(rv));
  return nng_aio_get_msg(aio.get());
}

}  // namespace

Result<std::unique_ptr<Client>> Client::Connect(const Options& opts) {
  std::unique_ptr<Client> c(new Client(opts));
  nng_socket s;
  int rv = nng_req0_open(&s);
  if (rv != 0) return Internal(std::string("nng_req0_open: ") + nng_strerror(rv));
  c->sock_id_ = s.id;
  nng_socket_set_ms(s, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE);
  nng_socket_set_size(s, NNG_OPT_RECVMAXSZ, 0);  // the client accepts replies of any size
  std::string url = "ipc://" + opts.socket_path;
  rv = nng_dial(s, url.c_str(), nullptr, 0);
  if (rv == NNG_ETIMEDOUT)  // the kernel took the connection, mmsd never did its side of it
    return Unavailable("mmsd at " + opts.socket_path +
                       " took the connection but did not answer it within 10 s: it is stopped (SIGSTOP), hung or "
                       "overloaded, not gone; check the process and its log before starting another");
  if (rv != 0) {
    std::string why = !FileExists(opts.socket_path) ? "no socket there"
                      : rv == NNG_ECONNREFUSED     ? "connection refused"
                                                   : nng_strerror(rv);
    return Unavailable("mmsd is not running at " + opts.socket_path + " (" + why + ")");
  }
  // Request ids start at a random point so two clients' ids rarely collide in logs.
  std::random_device rd;
  c->next_id_ = (static_cast<uint64_t>(rd()) << 20) | 1;
  return c;
}

Client::~Client() {
  if (sock_id_) nng_close(SockOf(sock_id_));
}

Result<std::string> Client::CallRaw(const std::string& bytes, int64_t timeout_ms) {
  nng_msg* msg = nullptr;
  int rv = nng_msg_alloc(&msg, bytes.size());
  if (rv != 0) return Internal(std::string("nng_msg_alloc: ") + nng_strerror(rv));
  if (!bytes.empty()) std::memcpy(nng_msg_body(msg), bytes.data(), bytes.size());
  auto reply = RoundTrip(sock_id_, msg, timeout_ms < 0 ? opts_.timeout_ms : timeout_ms, opts_.socket_path);
  if (!reply.ok()) return reply.status();
  nng_msg* r = reply.value();
  std::string out(static_cast<const char*>(nng_msg_body(r)), nng_msg_len(r));
  nng_msg_free(r);
  return out;
}

Result<Message> Client::Call(Message req, int64_t timeout_ms) {
  if (req.request_id == 0) req.request_id = next_id_.fetch_add(1);
  MMS_RETURN_IF_ERROR(CheckEncodable(req));  // never a truncated dims or name length on the wire
  std::string body = DumpBody(req.body);
  size_t size = EncodedSize(req, body);
  nng_msg* msg = nullptr;
  int rv = nng_msg_alloc(&msg, size);
  if (rv != 0) return Internal(std::string("nng_msg_alloc: ") + nng_strerror(rv));
  EncodeInto(req, body, static_cast<uint8_t*>(nng_msg_body(msg)));
  auto reply = RoundTrip(sock_id_, msg, timeout_ms < 0 ? opts_.timeout_ms : timeout_ms, opts_.socket_path);
  if (!reply.ok()) return reply.status();
  nng_msg* r = reply.value();
  std::shared_ptr<nng_msg> owner(r, nng_msg_free);
  DecodeResult d = Decode(static_cast<const uint8_t*>(nng_msg_body(r)), nng_msg_len(r),
                          std::shared_ptr<const void>(owner, nng_msg_body(r)), SIZE_MAX);
  if (d.error != DecodeError::kNone) return ProtocolError("malformed reply from mmsd: " + d.detail);
  if (d.message.type == kError) return StatusFromErrorReply(d.message);
  if (d.message.type != (req.type | kReplyBit))
    return ProtocolError("reply of type " + std::to_string(d.message.type) + " to a request of type " +
                         std::to_string(req.type));
  return std::move(d.message);
}

Result<nlohmann::json> Client::CallJson(uint16_t type, nlohmann::json body, int64_t timeout_ms) {
  Message m;
  m.type = type;
  m.body = std::move(body);
  auto r = Call(std::move(m), timeout_ms);
  if (!r.ok()) return r.status();
  return std::move(r.value().body);
}

}  // namespace mms::proto
