#include "protocol/client.h"
#include "protocol/nng_close.h"

#include "core/paths.h"

#include <sys/stat.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>

#include <algorithm>
#include <limits>
#include <atomic>
#include <chrono>
#include <cstring>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <system_error>
#include <random>
#include <thread>

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
  // nng_duration is 32-bit milliseconds (24.8 days): a longer wait would wrap
  // to a negative one, and fail at once.
  timeout_ms = std::min<int64_t>(timeout_ms, std::numeric_limits<int32_t>::max());
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
  // mmsd took the request (it answered when the connection was made) and
  // has not answered it: busy (a load, a long run) or hung, not unreachable.
  if (rv == NNG_ETIMEDOUT)
    return Status(Code::kDeadlineExceeded,
                  "mmsd at " + path + " took the request but did not reply within " + std::to_string(timeout_ms) +
                      " ms: it is busy (a model load, a long run) or hung, and the request may still complete "
                      "there. Raise --timeout for slow operations; mms status shows what it is doing");
  if (rv != 0)
    return Unavailable("lost connection to mmsd at " + path + ": " + nng_strerror(rv) +
                       " (the daemon stopped or restarted during the request, which may or may not have run; "
                       "mms status says whether it is up, and its log why it stopped)");
  return nng_aio_get_msg(aio.get());
}

}  // namespace

namespace {

// nng_dial of `url` on a new REQ socket, bounded by `limit_ms`. nng's IPC
// handshake has a fixed 10 s limit of its own (a stopped daemon's kernel
// takes the connection, nobody answers); a shorter limit runs the dial on a
// thread that is left to finish on its own — it owns the socket and closes it
// when nng gives up — so no nng_close races a dial in progress.
struct Dialed {
  int rv = 0;
  uint32_t sock_id = 0;  // set when rv == 0
  bool timed_out = false;
};

Status TooShortToConnect(const Client::Options& opts) {
  return Status(Code::kDeadlineExceeded, "mmsd at " + opts.socket_path + " was not connected within " +
                                             std::to_string(opts.timeout_ms) +
                                             " ms (--timeout: too short to connect to a busy daemon, or it is "
                                             "stopped); raise --timeout");
}

Dialed DialOnce(const std::string& url, int64_t limit_ms) {
  Dialed d;
  nng_socket s;
  if ((d.rv = nng_req0_open(&s)) != 0) return d;
  nng_socket_set_ms(s, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE);
  nng_socket_set_size(s, NNG_OPT_RECVMAXSZ, 0);  // the client accepts replies of any size
  constexpr int64_t kNngHandshakeMs = 10000;
  if (limit_ms <= 0 || limit_ms >= kNngHandshakeMs) {
    d.rv = nng_dial(s, url.c_str(), nullptr, 0);
    d.timed_out = d.rv == NNG_ETIMEDOUT;
  } else {
    // The thread owns the socket once the caller gives up (`abandoned`): it
    // closes it when nng's dial returns, within nng's 10 s (the process may
    // exit before, which is fine).
    struct Shared {
      std::mutex mu;
      std::condition_variable cv;
      bool done = false, abandoned = false;
      int rv = 0;
    };
    auto sh = std::make_shared<Shared>();
    bool threaded = true;
    try {
      std::thread([s, url, sh] {
        int rv = nng_dial(s, url.c_str(), nullptr, 0);
        std::lock_guard<std::mutex> lock(sh->mu);
        if (sh->abandoned) {
          nng_close(s);
          return;
        }
        sh->rv = rv;
        sh->done = true;
        sh->cv.notify_all();
      }).detach();
    } catch (const std::system_error&) {  // no thread to spare: nng's own limit then
      threaded = false;
      d.rv = nng_dial(s, url.c_str(), nullptr, 0);
    }
    if (threaded) {
      std::unique_lock<std::mutex> lock(sh->mu);
      if (!sh->cv.wait_for(lock, std::chrono::milliseconds(limit_ms), [&] { return sh->done; })) {
        sh->abandoned = true;
        d.timed_out = true;
        d.rv = NNG_ETIMEDOUT;
        return d;
      }
      d.rv = sh->rv;
    }
    d.timed_out = d.rv == NNG_ETIMEDOUT;
  }
  if (d.rv != 0) {
    // Bounded too: once one close is stuck, nng's reaper is, and a plain
    // close of this socket (its failed dialer is the reaper's) would wait.
    (void)CloseSocketWithin(s.id, std::chrono::milliseconds(500));
    return d;
  }
  d.sock_id = s.id;
  return d;
}

}  // namespace

Result<std::unique_ptr<Client>> Client::Connect(const Options& opts) {
  using Ms = std::chrono::milliseconds;
  const auto start = std::chrono::steady_clock::now();
  const bool bounded = opts.timeout_ms > 0;
  auto left_ms = [&] {
    return bounded ? opts.timeout_ms - std::chrono::duration_cast<Ms>(std::chrono::steady_clock::now() - start).count()
                   : int64_t{0};
  };
  const std::string url = "ipc://" + opts.socket_path;
  // A PROBE goes first on a new connection. A daemon whose nng listener
  // stopped reading new connections (daemon/server.h, the listener watchdog)
  // replaces it within seconds, under a new socket file: a connection whose
  // probe is unanswered is dialed again once the file changed, so no request
  // waits its whole timeout on a dead connection. Otherwise (a busy daemon:
  // every context holds a request) the client keeps its place in the queue
  // and waits. Nothing but probes was sent on it: dialing again is safe.
  auto socket_identity = [&] {
    struct stat st;
    return ::stat(opts.socket_path.c_str(), &st) == 0 ? std::make_pair(st.st_dev, st.st_ino)
                                                       : std::make_pair(dev_t{0}, ino_t{0});
  };
  // Too short a --timeout to connect is said as a timeout (exit 5), not as
  // a hung or overloaded daemon (exit 3): none is judged so in under a
  // second (--timeout 1ms said exit 3 or 5 by chance).
  const bool too_short = bounded && opts.timeout_ms < 1000;
  for (int attempt = 1;; ++attempt) {
    const auto identity = socket_identity();
    Dialed d = DialOnce(url, bounded ? std::max<int64_t>(left_ms(), 1) : 0);
    // The kernel took the connection, mmsd never did its side of it: nng
    // gives up after 10 s; a longer --timeout dials again (a daemon resumed,
    // or its listener replaced by the watchdog, is served within it).
    if (d.timed_out && bounded && left_ms() > 100) continue;
    if (d.timed_out && too_short) return TooShortToConnect(opts);
    if (d.timed_out)
      return Unavailable("mmsd at " + opts.socket_path + " took the connection but did not answer it within " +
                         (bounded ? std::to_string(opts.timeout_ms) + " ms" : "10 s") +
                         ": it is stopped (SIGSTOP), hung or overloaded, not gone; check the process and its log "
                         "before starting another");
    if (d.rv == NNG_EAGAIN) {  // the listen backlog is full: a live daemon, busy (or out of descriptors)
      if (!bounded || left_ms() > 20) {
        std::this_thread::sleep_for(Ms(20));
        continue;
      }
      if (too_short) return TooShortToConnect(opts);
      return Unavailable("mmsd at " + opts.socket_path + " is running but took no new connection within " +
                         std::to_string(opts.timeout_ms) +
                         " ms (its connection backlog is full: overloaded, or out of file descriptors); retry, "
                         "or raise --timeout");
    }
    if (d.rv != 0) {
      std::string why = !FileExists(opts.socket_path) ? "no socket there"
                        : d.rv == NNG_ECONNREFUSED     ? "connection refused"
                                                       : nng_strerror(d.rv);
      return Unavailable("mmsd is not running at " + opts.socket_path + " (" + why + ")");
    }
    std::unique_ptr<Client> c(new Client(opts));
    c->sock_id_ = d.sock_id;
    // Request ids start at a random point so two clients' ids rarely collide in logs.
    std::random_device rd;
    c->next_id_ = (static_cast<uint64_t>(rd()) << 20) | 1;
    Message probe;
    probe.type = kProbe;
    const std::string probe_bytes = Encode(probe);
    while (true) {
      constexpr int64_t kSliceMs = 500;
      int64_t wait_ms = bounded ? std::min(kSliceMs, std::max<int64_t>(left_ms(), 1)) : kSliceMs;
      // Any reply will do (a draining daemon's UNAVAILABLE too): the connection is read. An
      // unanswered probe stays queued on the connection, so the next one keeps its place.
      if (c->CallRaw(probe_bytes, wait_ms).ok()) {
        if (bounded) c->first_call_ms_ = std::max<int64_t>(left_ms(), 1);  // --timeout bounds connect + first call
        return c;
      }
      if (bounded && left_ms() <= 0 && too_short) return TooShortToConnect(opts);
      if (bounded && left_ms() <= 0)
        return Unavailable("mmsd at " + opts.socket_path + " took " + std::to_string(attempt) +
                           " connection(s) but read nothing on them within " + std::to_string(opts.timeout_ms) +
                           " ms: every request slot is busy (overloaded), or its listener is stuck and being "
                           "replaced (see its log for listener_restarted); retry, or raise --timeout");
      if (socket_identity() != identity) break;  // a new listener (or daemon) there: dial it
    }
  }
}

int64_t Client::DefaultTimeoutMs() {
  int64_t first = first_call_ms_.exchange(-1);
  return first >= 0 ? first : opts_.timeout_ms;
}

// A bounded close (see protocol/nng_close.h): a call that timed out (or an
// unanswered probe) is answered late, often just as the caller gives up (a
// predict's daemon deadline is 95% of its --timeout), and a command that
// timed out could hang in its exit. Past the bound the socket, a descriptor
// and a thread are left; its connection is shut down already.
Client::~Client() {
  if (sock_id_) (void)CloseSocketWithin(sock_id_, std::chrono::milliseconds(500));
}

Result<std::string> Client::CallRaw(const std::string& bytes, int64_t timeout_ms) {
  nng_msg* msg = nullptr;
  int rv = nng_msg_alloc(&msg, bytes.size());
  if (rv != 0) return Internal(std::string("nng_msg_alloc: ") + nng_strerror(rv));
  if (!bytes.empty()) std::memcpy(nng_msg_body(msg), bytes.data(), bytes.size());
  auto reply = RoundTrip(sock_id_, msg, timeout_ms < 0 ? DefaultTimeoutMs() : timeout_ms, opts_.socket_path);
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
  auto reply = RoundTrip(sock_id_, msg, timeout_ms < 0 ? DefaultTimeoutMs() : timeout_ms, opts_.socket_path);
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
