#include "server.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>

#include "core/log.h"
#include "core/paths.h"

namespace mms {

namespace {
nng_socket SockOf(uint32_t id) {
  nng_socket s;
  s.id = id;
  return s;
}
}  // namespace

struct Server::Slot {
  Server* server = nullptr;
  nng_ctx ctx{};
  nng_aio* aio = nullptr;
  bool sending = false;  // owned by whichever thread holds the slot's turn
};

struct Responder::State {
  Server* server = nullptr;
  Server::Slot* slot = nullptr;
  uint16_t type = 0;
  uint64_t request_id = 0;
  std::atomic<bool> done{false};
  ~State();
};

Responder::State::~State() {
  if (!done.exchange(true))
    server->Reply(slot, proto::ErrorReply(request_id, Internal("the handler dropped the request without answering")));
}

void Responder::Send(proto::Message reply) {
  if (state_->done.exchange(true)) return;
  reply.type = static_cast<uint16_t>(state_->type | proto::kReplyBit);
  reply.request_id = state_->request_id;
  state_->server->Reply(state_->slot, reply);
}

void Responder::Send(nlohmann::json body) {
  proto::Message m;
  m.body = std::move(body);
  Send(std::move(m));
}

void Responder::Fail(const Status& st) {
  if (state_->done.exchange(true)) return;
  state_->server->Reply(state_->slot, proto::ErrorReply(state_->request_id, st));
}

uint64_t Responder::request_id() const { return state_->request_id; }

Server::Server(const Options& opts, std::map<uint16_t, Handler> handlers)
    : opts_(opts), handlers_(std::move(handlers)) {}

Result<std::unique_ptr<Server>> Server::Create(const Options& opts, std::map<uint16_t, Handler> handlers) {
  if (opts.socket_path.empty()) return InvalidArgument("no socket path");
  if (opts.socket_path.size() > 100)
    return InvalidArgument("socket path is too long for a unix socket (max ~100 bytes): " + opts.socket_path);
  if (opts.contexts < 1) return InvalidArgument("contexts must be at least 1");
  return std::unique_ptr<Server>(new Server(opts, std::move(handlers)));
}

Server::~Server() { Stop(); }

Result<int> Server::Lock(const std::string& socket_path) {
  MMS_RETURN_IF_ERROR(MakeDirs(DirName(socket_path), 0700));
  // Instance lock: the kernel drops it when the process dies (even SIGKILL).
  std::string lock_path = socket_path + ".lock";
  int fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return IoError("cannot open " + lock_path + ": " + std::strerror(errno));
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    char buf[32] = {0};
    ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
    std::string pid = n > 0 ? std::string(buf, static_cast<size_t>(n)) : "unknown";
    while (!pid.empty() && (pid.back() == '\n' || pid.back() == ' ')) pid.pop_back();
    ::close(fd);
    return AlreadyExists("mmsd is already running (pid " + pid + ") on " + socket_path +
                         "; stop it first (kill " + pid + ") or start this one with another --socket");
  }
  std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, pid.data(), pid.size(), 0) < 0)
    LogWarn("lock_file_write_failed", {{"path", lock_path}});
  return fd;
}

Status Server::Start() {
  const std::string& path = opts_.socket_path;
  if (opts_.lock_fd >= 0) {
    lock_fd_ = opts_.lock_fd;  // the caller's: it stays held until the caller lets go (mmsd: process exit)
    owns_lock_ = false;
  } else {
    MMS_ASSIGN_OR_RETURN(lock_fd_, Lock(path));
  }
  struct stat st;
  if (::lstat(path.c_str(), &st) == 0) {
    // Ours to replace only if it is a socket (left by a killed daemon: the
    // lock was free); anything else at that path is somebody's file.
    if (!S_ISSOCK(st.st_mode))
      return FailedPrecondition(path + " exists and is not a socket; point --socket ([daemon] socket) elsewhere");
    LogWarn("stale_socket_replaced", {{"socket", path}});
    ::unlink(path.c_str());
  }

  nng_socket s;
  int rv = nng_rep0_open(&s);
  if (rv != 0) return Internal(std::string("nng_rep0_open: ") + nng_strerror(rv));
  sock_id_ = s.id;
  // Accept up to twice the cap so an oversized request still gets a precise
  // TOO_LARGE reply; anything larger than that drops the connection.
  nng_socket_set_size(s, NNG_OPT_RECVMAXSZ, static_cast<size_t>(opts_.max_message_bytes * 2));
  nng_listener l;
  std::string url = "ipc://" + path;
  if ((rv = nng_listener_create(&l, s, url.c_str())) != 0)
    return Internal("cannot create listener on " + path + ": " + nng_strerror(rv));
  nng_listener_set_int(l, NNG_OPT_IPC_PERMISSIONS, 0600);
  mode_t old = ::umask(0077);  // belt and braces: the file is born private
  rv = nng_listener_start(l, 0);
  ::umask(old);
  if (rv != 0) return IoError("cannot listen on " + path + ": " + nng_strerror(rv));
  listening_ = true;  // the file at `path` is now ours to remove
  ::chmod(path.c_str(), 0600);

  workers_ = std::make_unique<Executor>("mms-handler", opts_.workers);
  for (int i = 0; i < opts_.contexts; ++i) {
    auto slot = std::make_unique<Slot>();
    slot->server = this;
    if ((rv = nng_ctx_open(&slot->ctx, s)) != 0) return Internal(std::string("nng_ctx_open: ") + nng_strerror(rv));
    if ((rv = nng_aio_alloc(&slot->aio, &Server::OnAio, slot.get())) != 0)
      return Internal(std::string("nng_aio_alloc: ") + nng_strerror(rv));
    slots_.push_back(std::move(slot));
  }
  for (auto& slot : slots_) StartRecv(slot.get());
  return Status::Ok();
}

void Server::StartRecv(Slot* slot) {
  slot->sending = false;
  nng_ctx_recv(slot->ctx, slot->aio);
}

void Server::OnAio(void* arg) {
  Slot* slot = static_cast<Slot*>(arg);
  Server* self = slot->server;
  int rv = nng_aio_result(slot->aio);
  if (slot->sending) {
    if (rv != 0) nng_msg_free(nng_aio_get_msg(slot->aio));  // peer gone: drop the reply
    self->in_flight_.fetch_sub(1);
    self->served_.fetch_add(1);
    if (!self->stopped_.load()) self->StartRecv(slot);
    return;
  }
  if (rv == NNG_ECLOSED || rv == NNG_ECANCELED || self->stopped_.load()) return;
  if (rv != 0) {
    self->StartRecv(slot);
    return;
  }
  self->in_flight_.fetch_add(1);
  self->Dispatch(slot, nng_aio_get_msg(slot->aio));
}

void Server::Dispatch(Slot* slot, void* raw) {
  nng_msg* msg = static_cast<nng_msg*>(raw);
  std::shared_ptr<nng_msg> owner(msg, nng_msg_free);
  const uint8_t* data = static_cast<const uint8_t*>(nng_msg_body(msg));
  proto::DecodeResult d = proto::Decode(data, nng_msg_len(msg), std::shared_ptr<const void>(owner, data),
                                        opts_.max_message_bytes);
  if (d.error != proto::DecodeError::kNone) {
    LogWarn("bad_request", {{"reason", proto::DecodeErrorName(d.error)}, {"detail", d.detail}});
    Reply(slot, proto::ErrorReply(d.request_id, ProtocolError(d.detail), proto::DecodeErrorName(d.error)));
    return;
  }
  if (draining_.load()) {
    Reply(slot, proto::ErrorReply(d.request_id, Status(Code::kUnavailable, "mmsd is shutting down"), "draining"));
    return;
  }
  auto it = handlers_.find(d.type);
  if (it == handlers_.end()) {
    char hex[16];
    std::snprintf(hex, sizeof hex, "0x%04x", d.type);
    Reply(slot, proto::ErrorReply(d.request_id,
                                  ProtocolError(std::string("unknown message type ") + hex +
                                                " (this mmsd speaks protocol version " +
                                                std::to_string(proto::kVersion) + ")"),
                                  "unknown_type"));
    return;
  }
  auto state = std::make_shared<Responder::State>();
  state->server = this;
  state->slot = slot;
  state->type = d.type;
  state->request_id = d.request_id;
  Responder responder(std::move(state));
  const Handler* handler = &it->second;
  auto task = [handler, m = std::move(d.message), responder]() mutable {
    try {
      (*handler)(std::move(m), responder);
    } catch (const nlohmann::json::type_error& e) {
      // A request field of the wrong type, read by a handler ("user": 5).
      responder.Fail(InvalidArgument(std::string("a field of the request has the wrong type: ") + e.what()));
    } catch (const std::exception& e) {
      responder.Fail(Internal(std::string("handler failed: ") + e.what()));
    }
  };
  // Through the Responder, so that it answers once: replying on the slot
  // directly would let the dropped Responder answer a second time.
  if (!workers_->Submit(std::move(task))) responder.Fail(Status(Code::kUnavailable, "mmsd is shutting down"));
}

void Server::Reply(Slot* slot, const proto::Message& m) {
  std::shared_lock<std::shared_mutex> lock(reply_mu_);
  if (closed_) return;  // stopped: the connection is gone
  if (Status st = proto::CheckEncodable(m); !st.ok()) {
    // A model's output the frame format cannot carry (over 16 dimensions, a
    // name over 64 KiB): an error instead of a malformed frame.
    lock.unlock();
    return Reply(slot, proto::ErrorReply(m.request_id, Status(Code::kModelError, "the reply cannot be sent: " +
                                                                                     st.message())));
  }
  std::string body = proto::DumpBody(m.body);
  nng_msg* out = nullptr;
  if (nng_msg_alloc(&out, proto::EncodedSize(m, body)) != 0) {
    // Out of memory: answer with a minimal error instead of the real reply.
    proto::Message e = proto::ErrorReply(m.request_id, Internal("out of memory encoding the reply"));
    body = proto::DumpBody(e.body);
    if (nng_msg_alloc(&out, proto::EncodedSize(e, body)) != 0) std::abort();
    proto::EncodeInto(e, body, static_cast<uint8_t*>(nng_msg_body(out)));
  } else {
    proto::EncodeInto(m, body, static_cast<uint8_t*>(nng_msg_body(out)));
  }
  slot->sending = true;
  nng_aio_set_msg(slot->aio, out);
  nng_ctx_send(slot->ctx, slot->aio);
}

void Server::BeginDrain() {
  draining_ = true;
  // Stop accepting: new connections find no socket; requests on open
  // connections get UNAVAILABLE. Closing the nng listener instead would also
  // close the connections whose replies are still being worked on.
  if (listening_) ::unlink(opts_.socket_path.c_str());
}

bool Server::WaitIdle(int64_t timeout_ns) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::nanoseconds(timeout_ns);
  while (in_flight_.load() > 0) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

void Server::Stop() {
  if (stopped_.exchange(true)) return;
  if (workers_) workers_->Shutdown();  // running handlers finish (and may still reply)
  {
    std::unique_lock<std::shared_mutex> lock(reply_mu_);  // waits out replies being sent
    closed_ = true;
  }
  if (sock_id_) nng_close(SockOf(sock_id_));
  for (auto& slot : slots_) {
    if (slot->aio) nng_aio_free(slot->aio);  // waits for a running callback
    slot->aio = nullptr;
  }
  if (listening_) ::unlink(opts_.socket_path.c_str());
  if (lock_fd_ >= 0 && owns_lock_) {
    ::close(lock_fd_);  // releases the flock
    lock_fd_ = -1;
  }
}

}  // namespace mms
