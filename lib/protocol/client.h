// Client: the C++ side of the mms protocol, used by the CLI, the tests and
// the benchmarks. One nng REQ socket dialed to the daemon's IPC socket; each
// Call uses its own nng context, so one Client may be shared by many threads
// and their calls overlap on the wire.
//
// Errors: UNAVAILABLE when the daemon cannot be reached or the call times
// out; the daemon's error replies come back as their Status (NOT_FOUND,
// RATE_LIMITED, ...). REQ retries on a timer are disabled: a request is sent
// once (nng still resends when the connection drops before the reply).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "core/status.h"
#include "protocol/codec.h"

namespace mms::proto {

class Client {
 public:
  struct Options {
    std::string socket_path;     // the daemon's IPC socket (no "ipc://" prefix)
    // Per call, send to reply; Connect's dial and probe come out of the first
    // call's share (so a one-call client, the CLI, is bounded by it in all).
    int64_t timeout_ms = 60000;
  };

  // Dials the daemon and checks that it reads the connection (a PROBE
  // round trip) before anything else is sent; an unanswered connection is
  // dropped and dialed again once the socket file was replaced (a daemon
  // replaces a stuck nng listener within seconds), and otherwise waited on
  // (a busy daemon). All within `timeout_ms` (<= 0: no limit). UNAVAILABLE
  // (with the socket path) when none listens, or nothing was answered in time.
  static Result<std::unique_ptr<Client>> Connect(const Options& opts);
  // Closes the socket, waiting at most 500 ms for nng (whose 1.5.2 close can
  // block for ever: see client.cpp); a close past that is left to a thread.
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Sends `req` (request_id filled in when 0) and waits for its reply.
  // An error reply is returned as its Status. `timeout_ms` < 0: the default.
  Result<Message> Call(Message req, int64_t timeout_ms = -1);
  // Body-only convenience.
  Result<nlohmann::json> CallJson(uint16_t type, nlohmann::json body, int64_t timeout_ms = -1);
  // Sends raw bytes and returns the raw reply (tests of the bad-input path).
  Result<std::string> CallRaw(const std::string& bytes, int64_t timeout_ms = -1);

  const std::string& socket_path() const { return opts_.socket_path; }

 private:
  explicit Client(const Options& opts) : opts_(opts) {}
  const Options opts_;
  uint32_t sock_id_ = 0;  // nng_socket id; const after Connect
  std::atomic<uint64_t> next_id_{1};
  std::atomic<int64_t> first_call_ms_{-1};  // what Connect left of timeout_ms for the first call; -1 once used
  int64_t DefaultTimeoutMs();
};

}  // namespace mms::proto
