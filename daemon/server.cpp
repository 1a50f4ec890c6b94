#include "server.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>
#include <utility>

#include "core/log.h"
#include "core/paths.h"
#include "protocol/nng_close.h"

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
  bool probe = false;    // the reply being sent answers the watchdog's PROBE (not counted as served)
  nng_pipe pipe{};       // the connection the request came on
  // The listener that accepted the connection of the request in flight (an
  // nng listener id; 0 while the slot waits for a request): the watchdog
  // closes a replaced listener once no slot holds one of its requests.
  std::atomic<uint32_t> listener{0};
  std::string share_key;  // Responder::Share's key while the request is in flight (share_mu_)
  // Its handler returned before answering, with no share key: it waits for
  // something (a load, arms to load) and counts in Server::held_ (share_mu_).
  bool parked = false;
};

namespace {
// A reply sent while every context is held, and not taken by its client
// within this long: the connection is closed. A client that pipelines
// requests and never reads the replies would otherwise park every context in
// a send to it, and nobody else would be served. (Replies sent with contexts
// to spare wait as long as it takes: a client reading many large replies
// slowly is not cut off.)
constexpr nng_duration kReplyTimeoutMs = 10000;
// A replaced listener is closed after this many watchdog ticks in a row with
// no request of its own in flight: a sample, so several (a reply handed to
// nng may still be being written; closing would make the client resend).
constexpr int kRetiredIdleTicks = 10;
}  // namespace

struct Responder::State {
  Server* server = nullptr;
  Server::Slot* slot = nullptr;
  uint16_t type = 0;
  uint64_t request_id = 0;
  int64_t received_ns = 0;
  std::atomic<bool> done{false};
  bool handed_off = false;  // HandOff passed the rest on (the receiving thread's own, unshared)
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
int64_t Responder::received_ns() const { return state_->received_ns; }

Status Responder::Share(const std::string& key) { return state_->server->Share(state_->slot, key); }

namespace {
thread_local bool t_receiving = false;  // Server::OnReceivingThread()
// This thread holds one of the inline_handlers turns: given back when its
// request is answered (before the reply goes: the client's next request
// must find it free) or when the handler returns, whichever comes first.
thread_local bool t_turn = false;
}  // namespace

bool Server::OnReceivingThread() { return t_receiving; }

bool Responder::HandOff(std::function<void()> rest) {
  if (!t_receiving) return false;
  Server* server = state_->server;
  Server::Slot* slot = state_->slot;
  state_->handed_off = true;
  auto task = [server, slot, self = *this, rest = std::move(rest)]() mutable { server->RunHandler(slot, self, rest); };
  if (!server->workers_->Submit(std::move(task))) Fail(Status(Code::kUnavailable, "mmsd is shutting down"));
  return true;
}

Status Server::Share(Slot* slot, const std::string& key) {
  const int contexts = opts_.contexts;
  const int reserve = std::max(1, contexts / 8);
  std::lock_guard<std::mutex> lock(share_mu_);
  // Fewer than 8 contexts leave no reserve worth keeping: a second request
  // to the only busy model would be refused with nothing else running.
  const bool sharing = contexts >= 8;
  auto it = shares_.find(key);
  const int held = it == shares_.end() ? 0 : it->second;
  // Free: not held for long. A request refused, or a command answered, gives
  // its context back at once: counting those too (all in flight) refused a
  // burst of requests below the share while its own refusals were sent.
  const int64_t free = contexts - held_ - 1;  // (this request's context counted as held)
  const int keys = static_cast<int>(shares_.size()) + (it == shares_.end() ? 1 : 0);
  int most = contexts - reserve;
  if (free < reserve) most = std::min(most, std::max(1, (contexts - reserve) / keys));
  // Half the reserve is never taken by a key that holds any: two busy
  // models together (each under its most) would otherwise take the rest.
  const bool floor = free < std::max(1, reserve / 2) && held > 0;
  if (sharing && (floor || held >= std::max(1, most)))
    return Status(Code::kOverloaded, key + " holds " + std::to_string(held) + " of mmsd's " +
                                         std::to_string(contexts) +
                                         " request contexts, its most while others need them; retry later, or raise "
                                         "[daemon] contexts (a backlog this deep waits longer than it serves)");
  ++shares_[key];
  ++held_;
  slot->share_key = key;
  return Status::Ok();
}

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

namespace {
// A unix socket at `path` that accepts a connection (a live listener), as
// against one left by a dead process (ECONNREFUSED).
bool SomeoneListens(const std::string& path) {
  // Non-blocking: a blocking connect to a full backlog waits for ever.
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return false;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    bool busy = errno == EAGAIN || errno == EINPROGRESS;  // a full backlog: live
    ::close(fd);
    return busy;
  }
  // Finish the SP handshake before hanging up (nng 1.5.2 stops serving new
  // connections after a peer hangs up mid-handshake): our req0 header, its
  // rep0 header back (see Probe).
  (void)!::send(fd, "\0SP\0\0\x30\0\0", 8, MSG_NOSIGNAL);
  char buf[8];
  size_t got = 0;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(1);
  while (got < sizeof buf && std::chrono::steady_clock::now() < deadline) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    ssize_t n = ::recv(fd, buf + got, sizeof buf - got, 0);
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  ::close(fd);
  return true;
}

// What is at the socket's path: OK when nothing, or a socket left by a dead
// daemon (`*stale` set: ours to replace); FAILED_PRECONDITION for another
// kind of file (somebody's); ALREADY_EXISTS for a socket someone serves (a
// daemon whose lock file was removed: replacing it would cut its clients off).
Status CheckSocketPath(const std::string& path, bool* stale) {
  *stale = false;
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) return Status::Ok();
  if (!S_ISSOCK(st.st_mode))
    return FailedPrecondition(path + " exists and is not a socket; point --socket ([daemon] socket) elsewhere");
  if (SomeoneListens(path))
    return AlreadyExists("a daemon is serving on " + path + " though its lock file " + path +
                         ".lock was removed; stop it first (mms status shows its pid), or start this one with "
                         "another --socket");
  *stale = true;
  return Status::Ok();
}
}  // namespace

Result<int> Server::Lock(const std::string& socket_path, bool new_daemon) {
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
  // What is at the socket's path is checked before anything else happens
  // (Start checks again: it may change meanwhile).
  bool stale = false;
  if (Status st = new_daemon ? CheckSocketPath(socket_path, &stale) : Status::Ok(); !st.ok()) {
    // A live daemon's watchdog takes a lock file of its own.
    if (st.code() == Code::kAlreadyExists) ::unlink(lock_path.c_str());
    ::close(fd);
    return st;
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
  bool stale = false;
  MMS_RETURN_IF_ERROR(CheckSocketPath(path, &stale));
  if (stale) {  // left by a killed daemon (the lock was free): ours to replace
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
  MMS_RETURN_IF_ERROR(Listen(/*set_umask=*/true));
  listening_ = true;  // the file at `path` is now ours to remove

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
  if (opts_.probe_interval_ms > 0) watchdog_ = std::thread([this] { WatchListener(); });
  return Status::Ok();
}

Status Server::Listen(bool set_umask) {
  const std::string& path = opts_.socket_path;
  // Bound under a name of its own, then renamed into place: nng unlinks a
  // listener's path when the listener closes, and a replaced listener
  // closed later (CloseIdleRetiredListeners) must not take its successor's
  // file with it. (A path too long for the suffix binds in place.)
  std::string bind_path = path + "." + std::to_string(++listen_seq_);
  if (bind_path.size() >= sizeof(sockaddr_un{}.sun_path)) bind_path = path;
  struct stat st;
  if (bind_path != path && ::lstat(bind_path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) ::unlink(bind_path.c_str());
  nng_listener l;
  std::string url = "ipc://" + bind_path;
  int rv = nng_listener_create(&l, SockOf(sock_id_), url.c_str());
  if (rv != 0) return Internal("cannot create listener on " + path + ": " + nng_strerror(rv));
  nng_listener_set_int(l, NNG_OPT_IPC_PERMISSIONS, 0600);
  // Belt and braces: the file is born private. The umask is the process's:
  // only at start, while no other thread creates files.
  mode_t old = set_umask ? ::umask(0077) : 0;
  rv = nng_listener_start(l, 0);
  if (set_umask) ::umask(old);
  if (rv != 0) {
    nng_listener_close(l);
    return IoError("cannot listen on " + path + ": " + nng_strerror(rv));
  }
  ::chmod(bind_path.c_str(), 0600);
  if (bind_path != path) {
    // Only a socket is replaced: another kind of file at the path is not ours.
    int e = ::lstat(path.c_str(), &st) == 0 && !S_ISSOCK(st.st_mode) ? EEXIST
            : ::rename(bind_path.c_str(), path.c_str()) != 0         ? errno
                                                                       : 0;
    if (e != 0) {
      nng_listener_close(l);  // unlinks bind_path
      return IoError("cannot move the new socket into place at " + path + ": " + std::strerror(e));
    }
  }
  if (listener_id_ > 0) retired_.push_back({static_cast<uint32_t>(listener_id_), 0});
  listener_id_ = nng_listener_id(l);
  return Status::Ok();
}

void Server::CloseIdleRetiredListeners() {
  // A replaced listener stays open while a request that came through it is
  // in flight (closing it closes its connections, and a REQ client would
  // send that request again). Idle for kRetiredIdleTicks ticks, it goes — and with it the
  // connections nng left half-accepted when it tripped: their file
  // descriptors, and the hang-ups its poller would otherwise report for ever
  // (a fuzzing review saw a core spinning on them).
  for (auto it = retired_.begin(); it != retired_.end();) {
    bool busy = std::any_of(slots_.begin(), slots_.end(), [&](const auto& s) { return s->listener.load() == it->id; });
    it->idle_ticks = busy ? 0 : it->idle_ticks + 1;
    if (it->idle_ticks < kRetiredIdleTicks) {
      ++it;
      continue;
    }
    nng_listener l;
    l.id = it->id;
    nng_listener_close(l);
    LogInfo("listener_closed", {{"listener", it->id}, {"reason", "replaced by the watchdog, and idle"}});
    it = retired_.erase(it);
  }
}

bool Server::Probe() {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  // Out of descriptors: no new client can connect either (its connection
  // needs one here). A miss, so /health says so and the log names it.
  if (fd < 0) return errno != EMFILE && errno != ENFILE;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, opts_.socket_path.c_str(), sizeof addr.sun_path - 1);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    bool busy = errno == EAGAIN;  // a full backlog: busy, not broken; anything else: no listener there
    ::close(fd);
    return busy;
  }
  // SP over IPC: an 8-byte header each way (0, 'S', 'P', 0, the protocol —
  // req0 0x30, rep0 0x31 — and two zero bytes), then messages framed as 0x01
  // and a 64-bit big-endian length; a req0 message starts with its 32-bit
  // request id, top bit set.
  proto::Message m;
  m.type = proto::kProbe;
  std::string body = proto::Encode(m);
  std::string out = std::string("\0SP\0\0\x30\0\0", 8) + '\x01';
  uint64_t len = body.size() + 4;
  for (int i = 7; i >= 0; --i) out += static_cast<char>((len >> (8 * i)) & 0xff);
  out += std::string("\x80\0\0\x01", 4) + body;
  (void)!::send(fd, out.data(), out.size(), MSG_NOSIGNAL);
  // The rep0 header (8 bytes) and a reply frame (9 bytes, then its id), within
  // twice the probe interval (a loaded daemon answers late, not never).
  const std::string want_head("\0SP\0\0\x31\0\0", 8);
  std::string got;
  char buf[256];
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(2 * opts_.probe_interval_ms);
  while (got.size() < 8 + 9 + 4) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
    pollfd p{fd, POLLIN, 0};
    if (left <= 0 || ::poll(&p, 1, static_cast<int>(left)) <= 0) break;
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    got.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return got.size() >= 8 + 9 + 4 && got.compare(0, 8, want_head) == 0 && got[8] == '\x01';
}

void Server::WatchListener() {
  std::unique_lock<std::mutex> lock(watch_mu_);
  while (!watch_cv_.wait_for(lock, std::chrono::milliseconds(opts_.probe_interval_ms), [&] { return watch_stop_; })) {
    lock.unlock();
    // With every context held by a request, a PROBE waits like any request: busy, not broken.
    bool answered = draining_.load() || in_flight_.load() >= opts_.contexts || Probe();
    int misses = answered ? 0 : probe_misses_.load() + 1;
    probe_misses_ = misses;
    fresh_listener_ = false;  // this probe judged the listener a restart opened
    if (answered) restarts_unanswered_ = 0;
    {
      std::lock_guard<std::mutex> l(listen_mu_);
      CloseIdleRetiredListeners();
    }
    if (misses >= 2 && misses % 2 == 0) {  // every second miss in a row, until one is answered
      RestartListener();
    } else if (!FileExists(opts_.socket_path + ".lock")) {
      std::lock_guard<std::mutex> drain(listen_mu_);
      if (!draining_.load()) RetakeLock();
    }
    lock.lock();
  }
}

void Server::RestartListener() {
  std::lock_guard<std::mutex> drain(listen_mu_);  // not while BeginDrain takes the socket away
  if (draining_.load()) return;
  // New connections are not served (nng tripped), or the socket file (or its
  // directory) was removed: a new listener on a fresh file. The old listener
  // stays open — closing it would also close the connections it accepted,
  // requests in flight included — and, its file gone, accepts nothing more.
  const std::string& path = opts_.socket_path;
  const char* why = FileExists(path) ? "two probes over new connections went unanswered" : "the socket file was removed";
  (void)MakeDirs(DirName(path), 0700);
  if (!FileExists(path + ".lock")) RetakeLock();
  // No unlink first: the new listener's file is renamed over the old one in
  // one step, so clients never find the path missing meanwhile.
  if (Status s = Listen(/*set_umask=*/false); s.ok()) {
    ++restarts_;
    // Reachable again as far as anyone knows, until the next probe says
    // (/health said "unreachable" for a probe interval after a restart that
    // worked). The misses keep counting: a new listener nobody reaches
    // either is unreachable from the next probe on.
    fresh_listener_ = true;
    ++restarts_unanswered_;
    LogWarn("listener_restarted", {{"socket", path}, {"reason", why}});
  } else {
    LogError("listener_restart_failed", {{"socket", path}, {"error", s.message()}});
  }
}

void Server::RetakeLock() {
  // The lock file was removed (alone or with its directory): a new one, so a
  // second mmsd cannot start beside this one. One that started in between
  // holds it already: said in the log.
  auto fd = Lock(opts_.socket_path, /*new_daemon=*/false);
  if (fd.ok()) {
    extra_lock_fds_.push_back(*fd);
    lock_retake_failing_ = false;
    LogWarn("lock_retaken", {{"socket", opts_.socket_path}, {"reason", "the lock file was removed"}});
  } else if (!std::exchange(lock_retake_failing_, true)) {  // once until it works (retried every probe)
    LogError("lock_retake_failed", {{"socket", opts_.socket_path}, {"error", fd.status().message()}});
  }
}

void Server::StartRecv(Slot* slot) {
  slot->sending = false;
  nng_aio_set_timeout(slot->aio, NNG_DURATION_INFINITE);
  nng_ctx_recv(slot->ctx, slot->aio);
}

void Server::OnAio(void* arg) {
  Slot* slot = static_cast<Slot*>(arg);
  Server* self = slot->server;
  int rv = nng_aio_result(slot->aio);
  if (slot->sending) {
    slot->listener = 0;
    if (rv != 0) nng_msg_free(nng_aio_get_msg(slot->aio));  // peer gone: drop the reply
    // Not read while every context is held: the connection goes, and with it
    // every reply parked on it (logged once).
    if (rv == NNG_ETIMEDOUT && nng_pipe_close(slot->pipe) == 0)
      LogWarn("client_not_reading", {{"pipe", nng_pipe_id(slot->pipe)},
                                     {"note", "a reply went unread for 10 s; the connection was closed"}});
    self->in_flight_.fetch_sub(1);
    if (!std::exchange(slot->probe, false)) self->served_.fetch_add(1);
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
  const int64_t received = opts_.clock->MonoNanos();
  nng_msg* msg = static_cast<nng_msg*>(raw);
  slot->pipe = nng_msg_get_pipe(msg);
  slot->listener = static_cast<uint32_t>(nng_listener_id(nng_pipe_listener(slot->pipe)));
  std::shared_ptr<nng_msg> owner(msg, nng_msg_free);
  const uint8_t* data = static_cast<const uint8_t*>(nng_msg_body(msg));
  proto::DecodeResult d = proto::Decode(data, nng_msg_len(msg), std::shared_ptr<const void>(owner, data),
                                        opts_.max_message_bytes, proto::kMaxRequestBodyBytes);
  if (d.error != proto::DecodeError::kNone) {
    // Any client can send these at will: a line per 10 s per reason, with a count.
    static LogThrottle throttle(10'000'000'000);
    const std::string reason = proto::DecodeErrorName(d.error);
    if (uint64_t held = 0; throttle.Admit(reason, opts_.clock->MonoNanos(), &held)) {
      nlohmann::json fields{{"reason", reason}, {"detail", d.detail}};
      if (held) fields["suppressed"] = held;  // like lines held back since the last
      LogWarn("bad_request", fields);
    }
    // Too large is the caller's input, not a broken client: INVALID_ARGUMENT (exit 2).
    Status st = d.error == proto::DecodeError::kTooLarge
                    ? InvalidArgument(d.detail + "; send smaller inputs (fewer rows per request)")
                    : ProtocolError(d.detail);
    Reply(slot, proto::ErrorReply(d.request_id, st, proto::DecodeErrorName(d.error)));
    return;
  }
  if (draining_.load()) {
    Reply(slot, proto::ErrorReply(d.request_id, Status(Code::kUnavailable, "mmsd is shutting down"), "draining"));
    return;
  }
  if (d.type == proto::kProbe) {  // the listener watchdog's: answered here, no handler thread
    proto::Message reply;
    reply.type = static_cast<uint16_t>(proto::kProbe | proto::kReplyBit);
    reply.request_id = d.request_id;
    slot->probe = true;
    Reply(slot, reply);
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
  state->received_ns = received;
  Responder responder(std::move(state));
  const Handler* handler = &it->second;
  if (opts_.inline_types.count(d.type) && TakeInlineTurn()) {  // run to completion, here
    handled_inline_.fetch_add(1);
    t_receiving = t_turn = true;
    RunHandler(slot, responder, [&] { (*handler)(std::move(d.message), responder); });
    t_receiving = false;
    if (std::exchange(t_turn, false)) inline_running_.fetch_sub(1);
    return;
  }
  auto task = [this, slot, handler, m = std::move(d.message), responder]() mutable {
    RunHandler(slot, responder, [&] { (*handler)(std::move(m), responder); });
  };
  // Through the Responder, so that it answers once: replying on the slot
  // directly would let the dropped Responder answer a second time.
  if (!workers_->Submit(std::move(task))) responder.Fail(Status(Code::kUnavailable, "mmsd is shutting down"));
}

bool Server::TakeInlineTurn() {
  int n = inline_running_.load();
  while (n < opts_.inline_handlers)
    if (inline_running_.compare_exchange_weak(n, n + 1)) return true;
  return false;
}

void Server::RunHandler(Slot* slot, Responder& responder, const std::function<void()>& body) {
  try {
    body();
  } catch (const nlohmann::json::type_error& e) {
    // A request field of the wrong type, read by a handler ("user": 5).
    std::string what = e.what();  // without nlohmann's "[json.exception.type_error.302] "
    if (auto at = what.find("] "); at != std::string::npos) what = what.substr(at + 2);
    responder.Fail(InvalidArgument("a field of the request has the wrong type: " + what +
                                   " (see docs/protocol.md for each message's fields)"));
  } catch (const std::exception& e) {
    responder.Fail(Internal(std::string("handler failed: ") + e.what()));
  }
  // Handed on to a handler thread: that one's return decides. (Only the
  // receiving thread reads the flag; the handler thread may be running.)
  if (t_receiving && std::exchange(responder.state_->handed_off, false)) return;
  // Not answered yet, and not counted under a share: it waits (mms load,
  // an experiment's arms loading) and holds its context meanwhile. Once
  // answered (done, set before Reply) the slot may serve another request.
  std::lock_guard<std::mutex> share(share_mu_);
  if (!responder.state_->done.load() && slot->share_key.empty() && !slot->parked) {
    slot->parked = true;
    ++held_;
  }
}

void Server::Reply(Slot* slot, const proto::Message& m) {
  if (std::exchange(t_turn, false)) inline_running_.fetch_sub(1);
  {  // answered: its context no longer counts against its key
    std::lock_guard<std::mutex> share(share_mu_);
    if (!slot->share_key.empty()) {
      if (auto it = shares_.find(slot->share_key); it != shares_.end() && --it->second <= 0) shares_.erase(it);
      slot->share_key.clear();
      --held_;
    }
    if (std::exchange(slot->parked, false)) --held_;
  }
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
  // Bounded only while every context is held (rep0 cannot send a reply again
  // once its send timed out, so the choice is made here).
  nng_aio_set_timeout(slot->aio, in_flight_.load() >= opts_.contexts ? kReplyTimeoutMs : NNG_DURATION_INFINITE);
  nng_ctx_send(slot->ctx, slot->aio);
}

void Server::Unlock(int fd, const std::string& socket_path) {
  const std::string lock_path = socket_path + ".lock";
  struct stat held, named;
  if (::fstat(fd, &held) == 0 && ::stat(lock_path.c_str(), &named) == 0 && held.st_ino == named.st_ino &&
      held.st_dev == named.st_dev)
    ::unlink(lock_path.c_str());
  ::close(fd);  // releases the flock
}

void Server::BeginDrain() {
  std::lock_guard<std::mutex> lock(listen_mu_);  // a listener restart is not half done
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
  if (watchdog_.joinable()) {
    {
      std::lock_guard<std::mutex> lock(watch_mu_);
      watch_stop_ = true;
    }
    watch_cv_.notify_all();
    watchdog_.join();
  }
  if (workers_) workers_->Shutdown();  // running handlers finish (and may still reply)
  {
    std::unique_lock<std::shared_mutex> lock(reply_mu_);  // waits out replies being sent
    closed_ = true;
  }
  // Bounded (protocol/nng_close.h): a request reaching a connection as the
  // socket closes could block nng_close for ever, and the instance lock
  // below would never be let go. Past the bound the contexts' aios are left
  // too (freeing one waits on the same stuck task), and mmsd exits without
  // destroying this (close_stuck()).
  const bool closed = !sock_id_ || proto::CloseSocketWithin(sock_id_, std::chrono::seconds(5));
  close_stuck_ = !closed;
  if (!closed)
    LogWarn("ipc_close_stuck", {{"note", "nng did not close the IPC socket within 5 s (nng#1813); left to the exit"}});
  for (auto& slot : slots_) {
    if (slot->aio && closed) nng_aio_free(slot->aio);  // waits for a running callback
    slot->aio = nullptr;
  }
  if (listening_) ::unlink(opts_.socket_path.c_str());
  if (lock_fd_ >= 0 && owns_lock_) {
    Unlock(lock_fd_, opts_.socket_path);
    lock_fd_ = -1;
  }
  for (int fd : extra_lock_fds_) Unlock(fd, opts_.socket_path);  // (retaken by the watchdog: ours too)
  extra_lock_fds_.clear();
}

}  // namespace mms
