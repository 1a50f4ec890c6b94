// Server: the daemon's nng REP listener on the IPC socket.
//
// `contexts` nng contexts each cycle receive → dispatch → reply on their own,
// so a slow request (a cold model load) holds one context and nothing else:
// no client can block another. Decoding happens on nng's callback thread;
// handlers run on the Server's worker executor and answer through a
// Responder, from any thread, whenever their result is ready.
//
// Run to completion: a handler of a type in `inline_types` (mmsd: PREDICT)
// runs on nng's receiving thread itself, no hand-off to a worker, while
// fewer than `inline_handlers` do so at once — a thread wake-up (~25 µs on
// a 2-vCPU VM, an eighth of a round trip) saved per request. Such a handler
// must not wait on slow work there: it checks OnReceivingThread() and
// passes what may take long on (Responder::HandOff; mmsd's scheduler takes
// an execution longer than a bound to its own workers). Past the cap,
// requests go to the workers as any other. A turn is given back as the
// reply is handed to nng (the client's next request must find it free), so
// what a handler does after answering (mirroring to a shadow) may overlap
// the next turn's holder: the cap bounds the handlers not yet answered.
//
// Handlers sit in a table keyed by message type. Bad input (empty message,
// wrong magic, other protocol version, unknown type, truncated frame,
// invalid JSON, tensor byte counts that do not match, over the size cap)
// gets a specific PROTOCOL error reply and the server carries on. A request
// field of the wrong type, thrown as a JSON type error by a handler, is
// INVALID_ARGUMENT; any other exception a handler lets out is INTERNAL.
//
// Single instance: an flock on "<socket>.lock" (holding our pid), taken by
// Lock() or by Start(). A second daemon fails with ALREADY_EXISTS naming the
// running pid; a socket left behind by a killed daemon (lock free) is removed
// and replaced — a socket only: any other file at that path is refused
// (FAILED_PRECONDITION). The socket is 0600 inside a 0700 directory.
//
// Listener watchdog: Debian's nng 1.5.2 stops accepting connections for good
// once a peer disconnects during the SP handshake (nng issue #1518, fixed
// upstream after 1.5.2) — one `connect(); close()` on the socket, or a CLI
// that timed out against a stopped daemon, would cut every later client off.
// (The handshake itself completes; the new connection is then never handed
// to the socket, so its requests are never read.) daemon/nng_epipe.cpp keeps
// such a hang-up from tripping nng at all; the watchdog stays for whatever
// else leaves new connections unserved. A thread probes every
// `probe_interval_ms` over a new connection of its own with a PROBE request,
// answered on nng's receiving thread (no handler: busy handlers cannot fail
// it, though a probe waits for a free context like any request: with all
// `contexts` held it is not sent), and after two probes in a row without an
// answer within twice the interval, opens a new listener on a fresh socket
// file (and directory, if it was removed). A removed lock file is taken
// anew at the next probe. The old listener
// stays open while a request that came through it is in flight (closing it
// closes its connections, and a REQ client would send that request again);
// with its file gone it accepts nothing more. Once idle for ten probes it is
// closed, which also frees the connections nng left half-accepted (their
// hang-ups kept nng's poller spinning). Each listener binds a file of its own
// (<socket>.N) and is renamed into place, since nng unlinks a listener's
// path when it closes. New connections are served again within a few probe
// intervals (logged as listener_restarted, then listener_closed).
//
// Thread-safety: Start/BeginDrain/WaitIdle/Stop from one control thread;
// Responder from any thread.
#pragma once

#include <atomic>
#include <thread>
#include <mutex>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <shared_mutex>
#include <string>
#include <vector>

#include "core/clock.h"
#include "core/executor.h"
#include "core/status.h"
#include "protocol/codec.h"

namespace mms {

class Server;

// Answers one request, exactly once. Copies share the answer; if every copy
// is dropped without Send/Fail, an INTERNAL error is sent for the handler.
class Responder {
 public:
  void Send(proto::Message reply);  // type and request id are filled in
  void Send(nlohmann::json body);
  void Fail(const Status& st);
  uint64_t request_id() const;
  // When the daemon received it (Server::Options::clock's mono ns), before
  // it waited for a handler thread: deadlines and latencies count from here.
  int64_t received_ns() const;
  // Counts this request's context against `key` (mmsd: a predict's queue)
  // until it is answered, or refuses: OVERLOADED when `key` already holds
  // its most — all contexts but a reserve (an eighth) kept for other keys
  // and for commands; once fewer than the reserve are free, its share of
  // the rest among the keys holding any; and, holding any, once fewer than
  // half the reserve are free (several busy keys together leave that much
  // for commands and for keys holding none). Free means not held for long:
  // neither under a share nor waiting after its handler returned; requests
  // being handled or refused give theirs back at once. A request held for one busy
  // model (queued, waiting for a load) holds its context; without this, one
  // model's backlog of `contexts` requests left none to receive anyone
  // else's, not even mms ping. With fewer than 8 contexts, nothing is
  // refused (only counted). Call it at most once per request.
  Status Share(const std::string& key);
  // On nng's receiving thread (Server::OnReceivingThread()): runs `rest` on
  // a handler thread instead — the rest of a handler that may wait (a
  // registry read) — and returns true; the handler returns at once. On any
  // other thread: false, nothing done (the handler carries on itself).
  // An exception from `rest` is answered as from any handler.
  bool HandOff(std::function<void()> rest);

 private:
  friend class Server;
  struct State;
  explicit Responder(std::shared_ptr<State> s) : state_(std::move(s)) {}
  std::shared_ptr<State> state_;
};

using Handler = std::function<void(proto::Message request, Responder respond)>;

class Server {
 public:
  struct Options {
    std::string socket_path;                   // [daemon] socket
    int contexts = 256;                        // [daemon] contexts
    int workers = 4;                           // [daemon] workers (resolved, ≥1)
    uint64_t max_message_bytes = 256ull << 20; // [daemon] max_message_bytes
    int lock_fd = -1;  // from Lock(), held by the caller (Stop leaves it); -1: Start takes the lock
    int64_t probe_interval_ms = 1000;  // the listener watchdog's period and handshake timeout; 0: none
    Clock* clock = Clock::Real();      // times each request's receipt (Responder::received_ns)
    std::set<uint16_t> inline_types;   // message types whose handlers may run on the receiving thread
    int inline_handlers = 1;           // [daemon] inline_handlers: at most this many at once (0: none)
  };
  // The instance lock for `socket_path`: an flock on "<socket>.lock", which
  // then holds our pid. ALREADY_EXISTS naming the running pid when another
  // process holds it. mmsd takes it before anything else (the registry, the
  // device arenas), so a second daemon touches nothing.
  // `new_daemon`: also refuses a socket path holding another kind of file or
  // a socket someone serves (a starting daemon; the watchdog's retake of its
  // own lock passes false).
  static Result<int> Lock(const std::string& socket_path, bool new_daemon = true);
  // Lets go of a lock Lock took: removes "<socket_path>.lock" while still
  // holding it, if that file is the one `fd` locks (a daemon starting
  // meanwhile that opened it finds it locked, as it would have), so a clean
  // stop leaves no stale file naming this pid; then closes `fd`.
  static void Unlock(int fd, const std::string& socket_path);

  static Result<std::unique_ptr<Server>> Create(const Options& opts, std::map<uint16_t, Handler> handlers);
  ~Server();

  // Takes the instance lock, replaces a stale socket, starts listening.
  Status Start();
  // Refuses new connections (the socket file goes) and new requests on open
  // connections (UNAVAILABLE); in-flight ones finish and are answered.
  void BeginDrain();
  // Waits until no request is in flight; false on timeout.
  bool WaitIdle(int64_t timeout_ns);
  // Closes the socket and stops the workers. Requests still in flight are
  // abandoned: a Responder answering later (or dropped) sends nothing. The
  // Server must still outlive every Responder.
  void Stop();
  // Stop found nng's close of the socket stuck (protocol/nng_close.h): the
  // process must exit without destroying this (its contexts' callbacks may
  // still run).
  bool close_stuck() const { return close_stuck_; }

  int64_t in_flight() const { return in_flight_.load(); }
  // Requests whose handler ran on nng's receiving thread (no hand-off).
  uint64_t handled_inline() const { return handled_inline_.load(); }
  // True on nng's receiving thread while it runs a handler (run to completion).
  static bool OnReceivingThread();
  bool draining() const { return draining_.load(); }
  // The listener watchdog's view: false once two probes in a row went
  // unanswered and stays false until one is answered again (a restart that
  // worked, or nng recovering) — /health reports it, so a load balancer
  // stops sending to a daemon new clients cannot reach. Always true without
  // a watchdog (probe_interval_ms 0).
  // Unanswered twice in a row is unreachable — but not right after a first
  // restart that opened a new listener, until a probe has judged it (a
  // second restart without an answer between is no reason for hope).
  bool listener_ok() const {
    return probe_misses_.load() < 2 || (fresh_listener_.load() && restarts_unanswered_.load() < 2);
  }
  uint64_t listener_restarts() const { return restarts_.load(); }
  struct Slot;
  uint64_t requests_served() const { return served_.load(); }
  const Options& options() const { return opts_; }

 private:
  friend class Responder;
  Server(const Options& opts, std::map<uint16_t, Handler> handlers);
  static void OnAio(void* arg);
  void Dispatch(Slot* slot, void* nng_message);
  // Runs a handler's work (`body`, or the rest of it handed off) as every
  // handler runs: exceptions answered, a request left waiting counted as
  // parked (Slot::parked).
  void RunHandler(Slot* slot, Responder& responder, const std::function<void()>& body);
  bool TakeInlineTurn();  // one of inline_handlers, if free
  void Reply(Slot* slot, const proto::Message& m);
  Status Share(Slot* slot, const std::string& key);
  void StartRecv(Slot* slot);
  Status Listen(bool set_umask);  // a new listener on the socket path
  void RestartListener();         // the watchdog's remedy
  void RetakeLock();              // a new instance lock when its file was removed (listen_mu_ held)
  void CloseIdleRetiredListeners();  // listen_mu_ held
  bool Probe();           // does a new connection get a PROBE answered?
  void WatchListener();   // the watchdog thread's loop

  const Options opts_;
  const std::map<uint16_t, Handler> handlers_;
  std::unique_ptr<Executor> workers_;
  std::vector<std::unique_ptr<Slot>> slots_;
  bool close_stuck_ = false;  // set by Stop
  uint32_t sock_id_ = 0;      // set in Start
  int lock_fd_ = -1;
  bool listening_ = false;  // Start created the socket file (Stop and BeginDrain remove it)
  bool owns_lock_ = true;   // false for an adopted Options::lock_fd (not closed by Stop)
  std::mutex listen_mu_;              // BeginDrain against a listener restart
  std::vector<int> extra_lock_fds_;  // instance locks retaken by a restart (closed by Stop)
  bool lock_retake_failing_ = false; // RetakeLock's last try failed (logged once; listen_mu_)
  int listener_id_ = 0;              // the current nng listener (listen_mu_ once serving)
  int listen_seq_ = 0;               // names each listener's own socket file (listen_mu_ once serving)
  struct Retired {
    uint32_t id;
    int idle_ticks;
  };
  std::vector<Retired> retired_;     // listeners a restart replaced, still open (listen_mu_)
  std::thread watchdog_;
  std::mutex watch_mu_;
  std::condition_variable watch_cv_;
  bool watch_stop_ = false;  // guarded by watch_mu_
  std::atomic<bool> draining_{false};
  std::atomic<bool> stopped_{false};
  // Replies hold it shared; Stop takes it once, exclusively, to set closed_,
  // so no reply touches a slot's aio once Stop frees them.
  std::shared_mutex reply_mu_;
  bool closed_ = false;  // guarded by reply_mu_
  std::atomic<int64_t> in_flight_{0};
  std::mutex share_mu_;
  std::map<std::string, int> shares_;  // key → contexts held under it (guarded by share_mu_; no zero entries)
  int held_ = 0;  // contexts held for long: under a share, or parked (Slot::parked) (share_mu_)
  std::atomic<uint64_t> served_{0};
  std::atomic<int> inline_running_{0};     // handlers running on receiving threads now
  std::atomic<uint64_t> handled_inline_{0};
  std::atomic<int> probe_misses_{0};     // unanswered probes in a row (the watchdog's)
  std::atomic<bool> fresh_listener_{false};  // a restart opened a listener no probe has judged yet
  std::atomic<int> restarts_unanswered_{0};  // restarts since a probe was last answered
  std::atomic<uint64_t> restarts_{0};    // listeners opened by the watchdog
};

}  // namespace mms
