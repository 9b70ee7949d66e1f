/*
 * output.c - one line of the command's output (a new key, a result
 * line) written whole or not at all, as far as the system lets us: Lua's
 * io library buffers, cannot wait on a non-blocking descriptor, and
 * leaves half a line behind when the disk fills up. A reader of the
 * output (a script, a batch's result file) must never take a piece of a
 * key for a whole one.
 *
 * SIGPIPE is the caller's business: the command ignores it (signal.c),
 * so a closed reader is an EPIPE here. Nothing here changes a signal's
 * disposition.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "slashid.h"

/* Waits until fd takes more (a non-blocking descriptor said EAGAIN): a
   terminal or pipe whose reader is slow. What poll reports besides
   POLLOUT (POLLERR, POLLHUP, POLLNVAL) the next write reports as an
   error, so nothing is decided here. */
static int wait_writable(int fd) {
  struct pollfd p;
  p.fd = fd;
  p.events = POLLOUT;
  p.revents = 0;
  while (poll(&p, 1, -1) < 0 && errno == EINTR)
    if (sid_signal_abort()) return -1;     /* a second signal: give up */
  return 0;
}

/* core.write_line(fd, s) -> true | nil, message
   All of s with as many write(2) calls as it takes (EINTR: again;
   EAGAIN: wait for POLLOUT, again). When a write fails after a part of
   the line went out, on a regular file the part is cut off again
   (ftruncate to where the line started, and the offset put back there),
   provided the file still ends where our last write left it (nothing was
   written after it) and our pieces lie end to end: the message is then
   "only N of M bytes written (why), taken back", else the same without
   ", taken back" (a pipe or terminal cannot take back). A write that
   fails with nothing written: the system's message alone ("Broken pipe",
   "No space left on device"). */
static int output_write_line(lua_State *L) {
  lua_Integer fd_arg = luaL_checkinteger(L, 1);
  size_t len, done = 0;
  const char *s = luaL_checklstring(L, 2, &len);
  int fd, err = 0;
  /* Offsets of our pieces, looked at only once a write has come short
     (the common single whole write pays no lseek): where the line began
     and where our last piece ended; -1 when unknown (not seekable). */
  off_t start = -1, end = -1;
  int tracking = 0, contiguous = 1;
  char msg[160];

  luaL_argcheck(L, fd_arg >= 0 && fd_arg <= 1 << 20, 1, "a descriptor expected");
  fd = (int)fd_arg;
  while (done < len) {
    ssize_t w = write(fd, s + done, len - done);
    if (w < 0) {
      /* a reader that stopped reading blocks a write for ever: a second
         signal (the command's "abandon now") ends the wait */
      if (errno == EINTR && sid_signal_abort()) {
        err = EINTR;
        break;
      }
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        if (wait_writable(fd) == 0) continue;
        err = EINTR;
        break;
      }
      err = errno;
      break;
    }
    if (w == 0) {            /* no progress and no error: never loop on it */
      err = EIO;
      break;
    }
    if (tracking || (size_t)w < len - done) {
      off_t now = lseek(fd, 0, SEEK_CUR);
      if (now < 0) {
        contiguous = 0;      /* a pipe, a terminal: nothing to take back */
      } else if (!tracking) {
        start = now - (off_t)w;
      } else if (now - (off_t)w != end) {
        contiguous = 0;      /* another writer got in between our pieces */
      }
      end = now;
      tracking = 1;
    }
    done += (size_t)w;
  }
  if (err == 0) {
    lua_pushboolean(L, 1);
    return 1;
  }
  lua_pushnil(L);
  if (done == 0) {
    lua_pushstring(L, strerror(err));
    return 2;
  }
  {
    struct stat st;
    int taken_back = contiguous && start >= 0 && end - start == (off_t)done &&
                     fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
                     st.st_size == end && ftruncate(fd, start) == 0;
    /* Without O_APPEND the next write would land at the old offset and
       leave a hole of zeros where the piece was. */
    if (taken_back) (void)lseek(fd, start, SEEK_SET);
    snprintf(msg, sizeof msg, "only %zu of %zu bytes written (%s)%s", done, len,
             strerror(err), taken_back ? ", taken back" : "");
  }
  lua_pushstring(L, msg);
  return 2;
}

void sid_open_output(lua_State *L) {
  static const luaL_Reg functions[] = {
    {"write_line", output_write_line},
    {NULL, NULL}
  };
  sid_setfuncs(L, functions);
}
