/*
 * pollset.c - the descriptor behind op:pollfd(): one file descriptor that
 * polls readable whenever one of the sockets libcurl asked to watch is
 * ready, so that an event loop (cqueues, luv, a C host's poll(2)) or
 * op:wait can sleep on an op instead of polling it. multi.c's
 * CURLMOPT_SOCKETFUNCTION adds, changes and removes the sockets; nothing
 * here calls into Lua (trace.c has the one rule for callbacks).
 *
 *   Linux            an epoll descriptor (level-triggered), itself pollable
 *   anything else    none: sid_pollset_open fails with ENOSYS, op:pollfd()
 *                    raises "not available", and op:wait keeps libcurl's
 *                    own wait (curl_multi_poll): simpler, as correct, just
 *                    not usable by an outside loop
 *
 * -DSID_POLLSET_NONE builds the second path on Linux. A BSD or macOS port
 * (a kqueue) starts here: docs/hosts.md says what it must pass.
 *
 * Every descriptor made here is close-on-exec: a child the host spawns
 * must not keep an op's descriptor (or its sockets) alive.
 */
#include <errno.h>
#include <limits.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "slashid.h"

#if defined(__linux__) && !defined(SID_POLLSET_NONE)
#define SID_EPOLL 1
#include <sys/epoll.h>
#include <sys/eventfd.h>
#else
#define SID_EPOLL 0
#endif

/* Linux: every epoll descriptor is the same anonymous inode, so a set
   cannot be told from another by fstat. Each set holds a marker instead:
   an eventfd of ours, registered with no events (it never wakes anyone).
   A number names our set exactly when the marker is registered in it
   (epoll_ctl MOD succeeds); a set that is not ours answers ENOENT, a
   closed number EBADF. Once the op is over the marker is made readable
   for good (sid_pollset_ready). Elsewhere *marker is -1 until then. */
int sid_pollset_open(int *marker) {
#if SID_EPOLL
  struct epoll_event ev;
  int set = epoll_create1(EPOLL_CLOEXEC);
  *marker = -1;
  if (set < 0) return -1;
  *marker = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  memset(&ev, 0, sizeof ev);
  ev.data.fd = *marker;
  if (*marker < 0 || epoll_ctl(set, EPOLL_CTL_ADD, *marker, &ev) != 0) {
    int err = errno;
    if (*marker >= 0) close(*marker);
    close(set);
    *marker = -1;
    errno = err;
    return -1;
  }
  return set;
#else
  *marker = -1;
  errno = ENOSYS;
  return -1;
#endif
}

/* What libcurl wants from socket s (CURL_POLL_IN, _OUT, _INOUT, _NONE,
   _REMOVE): 0, or -1 with errno. A socket libcurl closed without saying
   so has already left the set (the kernel drops a closed descriptor), so
   a change finding no entry adds one. */
int sid_pollset_watch(int set, curl_socket_t s, int what) {
#if SID_EPOLL
  struct epoll_event ev;
  memset(&ev, 0, sizeof ev);
  ev.data.fd = s;
  if (what == CURL_POLL_REMOVE) {
    if (epoll_ctl(set, EPOLL_CTL_DEL, s, &ev) == 0) return 0;
    return errno == ENOENT || errno == EBADF ? 0 : -1;
  }
  if (what & CURL_POLL_IN) ev.events |= EPOLLIN;
  if (what & CURL_POLL_OUT) ev.events |= EPOLLOUT;
  if (epoll_ctl(set, EPOLL_CTL_MOD, s, &ev) == 0) return 0;
  if (errno != ENOENT) return -1;
  return epoll_ctl(set, EPOLL_CTL_ADD, s, &ev);
#else
  (void)set; (void)s; (void)what;
  errno = ENOSYS;
  return -1;
#endif
}

int sid_pollset_wait(int set, int extra, long ms) {
  struct pollfd p[2];
  nfds_t n = 1;
  int r, ready = 0;
  memset(p, 0, sizeof p);
  p[0].fd = set;
  p[0].events = POLLIN;
  if (extra >= 0) {
    p[1].fd = extra;
    p[1].events = POLLIN;
    n = 2;
  }
  if (ms > INT_MAX) ms = INT_MAX;
  r = poll(p, n, ms < 0 ? -1 : (int)ms);
  if (r < 0) return -1;
  if (p[0].revents) ready |= SID_POLLSET_READY;
  if (n == 2 && p[1].revents) ready |= SID_POLLSET_EXTRA;
  return ready;
}

void sid_pollset_close(int *set) {
  if (*set >= 0) close(*set);
  *set = -1;
}

/* Whether `set` still names our set (see sid_pollset_open): a host may
   have closed the number, and the system given it to something else,
   another epoll set included. `ready`: the marker's events now. */
int sid_pollset_is(int set, int marker, int ready) {
#if SID_EPOLL
  struct epoll_event ev;
  if (set < 0 || marker < 0) return 0;
  memset(&ev, 0, sizeof ev);
  ev.events = ready ? EPOLLIN : 0;
  ev.data.fd = marker;
  return epoll_ctl(set, EPOLL_CTL_MOD, marker, &ev) == 0;
#else
  /* no marker to ask: at least an open descriptor */
  (void)marker;
  (void)ready;
  return set >= 0 && fcntl(set, F_GETFD) != -1;
#endif
}

/* Makes the set poll readable for good (an op that has finished: a loop
   asleep on it must wake, and find it so whenever it looks again): 0 or
   -1. Linux: the marker counts 1 and is watched for input. Elsewhere a
   pipe holding one byte, its write end closed, joins the set and becomes
   the marker. Making a ready descriptor part of the set wakes whoever
   sleeps on it. */
int sid_pollset_ready(int set, int *marker) {
#if SID_EPOLL
  uint64_t one = 1;
  if (*marker < 0 || write(*marker, &one, sizeof one) != (ssize_t)sizeof one)
    return -1;
  return sid_pollset_is(set, *marker, 1) ? 0 : -1;
#else
  int p[2];
  if (*marker >= 0) return 0;
  if (pipe(p) != 0) return -1;
  (void)fcntl(p[0], F_SETFD, FD_CLOEXEC);
  (void)fcntl(p[1], F_SETFD, FD_CLOEXEC);
  if (write(p[1], "!", 1) != 1 ||
      sid_pollset_watch(set, (curl_socket_t)p[0], CURL_POLL_IN) != 0) {
    close(p[0]);
    close(p[1]);
    return -1;
  }
  close(p[1]);
  *marker = p[0];
  return 0;
#endif
}
