/*
 * stdfd.c - the command's standard streams, as descriptors:
 *   - 0, 1 and 2 opened on /dev/null while the command runs when it was
 *     started with one closed (signal.c plugs them at catch_signals), so
 *     that the signal pipe, a socket or the key file never becomes
 *     "stdout"; put back at release;
 *   - whether a descriptor is a terminal (the progress display) or a
 *     memory device (a key written there is lost);
 *   - read_input, the command's one blocking read (standard input: the
 *     key, or --orgs -), cut short by a signal: it polls the descriptor
 *     and signal.c's pipe, so a signal that came just before the read is
 *     not missed, and nothing already read is lost to EINTR.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>
#include "slashid.h"

static int plugged[3];                       /* fds 0-2 opened by plug */

int sid_stdfd_closed(int fd) {
  return fcntl(fd, F_GETFD) == -1 && errno == EBADF;
}

/* Opens /dev/null on each of 0, 1, 2 that is closed; returns -1 (errno)
   on failure, after undoing what it did. */
int sid_stdfd_plug(void) {
  int fd;
  for (fd = 0; fd < 3; fd++) {
    plugged[fd] = 0;
    if (!sid_stdfd_closed(fd)) continue;
    {
      int n = open("/dev/null", O_RDWR);
      if (n != fd) {   /* lower ones are open, so n == fd unless it failed */
        int err = errno;
        if (n >= 0) close(n);
        while (--fd >= 0) if (plugged[fd]) close(fd);
        errno = n >= 0 ? EBADF : err;
        return -1;
      }
      plugged[fd] = 1;
    }
  }
  return 0;
}

void sid_stdfd_unplug(void) {
  int fd;
  for (fd = 0; fd < 3; fd++) {
    if (plugged[fd]) close(fd);
    plugged[fd] = 0;
  }
}

/* core.isatty(fd) -> boolean: whether the descriptor is a terminal (the
   progress display: a bar on a terminal, plain lines otherwise). */
static int stdfd_isatty(lua_State *L) {
  lua_Integer fd = luaL_checkinteger(L, 1);
  lua_pushboolean(L, fd >= 0 && fd <= 1024 && isatty((int)fd) == 1);
  return 1;
}

/* core.is_memory_device(fd) -> boolean: whether the descriptor is open
   on one of Linux's memory devices (character major 1: /dev/null,
   /dev/zero, /dev/random, /dev/urandom, /dev/kmsg, /dev/full...), which
   take a write and keep nothing the operator can read back (or put it in
   the kernel log): a new key written there as standard output is lost,
   mostly with no error to notice. */
static int stdfd_is_memory_device(lua_State *L) {
  lua_Integer fd = luaL_checkinteger(L, 1);
  struct stat st;
  int memory = fd >= 0 && fd <= 1024 && fstat((int)fd, &st) == 0 &&
               S_ISCHR(st.st_mode) && major(st.st_rdev) == 1;
  lua_pushboolean(L, memory);
  return 1;
}

/* core.read_input(fd, max, seconds) -> data | "" | false | nil [, message]
   Up to `max` bytes (at most 16 KiB) from `fd` once it has some: a
   string; "" when nothing came within `seconds` (0: just look; nil or
   < 0: no limit); false when a signal came first (while caught: the
   caller reads signal_count); nil at the end of the input, or nil and a
   message when reading failed. */
static int stdfd_read_input(lua_State *L) {
  lua_Integer fd = luaL_checkinteger(L, 1);
  lua_Integer max = luaL_checkinteger(L, 2);
  lua_Number s = luaL_optnumber(L, 3, -1);
  int ms = s < 0 ? -1 : s > 86400 ? 86400000 : (int)(s * 1000.0 + 0.5);
  struct pollfd p[2];
  int n = 1, woke = 0;
  luaL_argcheck(L, fd >= 0 && fd <= 1 << 20, 1, "a descriptor expected");
  luaL_argcheck(L, max > 0 && max <= 1 << 20, 2, "1..1048576 expected");
  p[0].fd = (int)fd;
  p[0].events = POLLIN;
  p[0].revents = 0;
  if (sid_signal_fd() >= 0) {
    p[1].fd = sid_signal_fd();
    p[1].events = POLLIN;
    p[1].revents = 0;
    n = 2;
  }
  if (poll(p, (nfds_t)n, ms) < 0) {
    if (errno != EINTR) {
      lua_pushnil(L);
      lua_pushstring(L, strerror(errno));
      return 2;
    }
    woke = 1;
  }
  if (n == 2 && p[1].revents) {
    sid_signal_drain();
    woke = 1;
  }
  if (p[0].revents) {
    char buf[16384];
    ssize_t r = read((int)fd, buf, (size_t)max < sizeof buf ? (size_t)max : sizeof buf);
    if (r > 0) {
      lua_pushlstring(L, buf, (size_t)r);
      return 1;
    }
    if (r == 0) return 0;                          /* end of input */
    if (errno == EINTR) woke = 1;
    else if (errno != EAGAIN && errno != EWOULDBLOCK) {
      lua_pushnil(L);
      lua_pushstring(L, strerror(errno));
      return 2;
    }
  }
  if (woke) lua_pushboolean(L, 0);
  else lua_pushliteral(L, "");
  return 1;
}

void sid_open_stdfd(lua_State *L) {
  static const luaL_Reg functions[] = {
    {"isatty", stdfd_isatty},
    {"is_memory_device", stdfd_is_memory_device},
    {"read_input", stdfd_read_input},
    {NULL, NULL}
  };
  sid_setfuncs(L, functions);
}
