// Keeps Debian's nng 1.5.2 accepting IPC connections after a client hangs up
// before the handshake (nng issue #1518, fixed upstream by PR #1519, after
// 1.5.2). nng writes its SP header to each accepted connection at once; when
// the client has already gone, sendmsg() fails with EPIPE, which nng maps to
// NNG_ECLOSED (posix_debug.c) and hands to the listener's pending accept
// (ipc_pipe_neg_cb). The listener takes NNG_ECLOSED for "this listener was
// closed" and never accepts again (listener_accept_cb): every later
// connection completes the handshake and is never read. With ECONNRESET (a
// remote condition, as upstream's fix makes it) the listener goes on to the
// next connection at once.
//
// This definition comes before libc's in the lookup of libnng's calls (a
// symbol of the executable wins). It changes nothing but the error code of a
// send that failed with EPIPE on the server side of a unix connection (one
// bound to a path: accepted by a listener, nng's in mmsd).
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>

extern "C" ssize_t sendmsg(int fd, const struct msghdr* msg, int flags) {
  const long n = ::syscall(SYS_sendmsg, fd, msg, flags);
  if (n < 0 && errno == EPIPE) {
    sockaddr_un addr{};
    socklen_t len = sizeof addr;
    const bool accepted = ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0 &&
                          addr.sun_family == AF_UNIX && len > offsetof(sockaddr_un, sun_path) &&
                          addr.sun_path[0] != '\0';
    errno = accepted ? ECONNRESET : EPIPE;
  }
  return static_cast<ssize_t>(n);
}
