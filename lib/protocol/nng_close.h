// Closing an nng socket without risking a process stuck for ever.
//
// In nng 1.5.2 (Debian's libnng1) nng_close can block for ever when a
// message reaches a connection while the socket closes (nng#1813, fixed in
// 1.8.0 by nng#1824): the IPC pipe asks for the message's body on a read the
// close has just stopped, so that read never completes and never completes
// the protocol pipe's receive; nng's only reaper then waits on that receive,
// and nng_close on the reaper. Found by a soak: `mms --timeout 0.3` hung 32
// minutes in its exit.
//
// Thread-safety: any thread.
#pragma once

#include <chrono>
#include <cstdint>

namespace mms::proto {

// nng_close(socket `sock_id`), waited on for at most `wait`: it runs on a
// thread of its own, which finishes it, or stays blocked in it, after this
// returns. True when the close returned in time. False when it did not, or
// when no thread could be started (the socket is then left open: the
// process's exit closes it). Once one close has not returned in time, nng's
// reaper is stuck and so is every later close in the process: those are not
// waited on at all (false at once).
bool CloseSocketWithin(uint32_t sock_id, std::chrono::milliseconds wait);

}  // namespace mms::proto
