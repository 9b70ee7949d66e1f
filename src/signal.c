/*
 * signal.c - SIGINT, SIGTERM (and SIGHUP and SIGQUIT alike) for the command
 * line (slashid-rotate),
 * the same under every interpreter: while caught, a signal does nothing
 * but count and write one byte to a self-pipe. multi:wait polls the
 * pipe's read end beside libcurl's sockets, so it wakes the moment a
 * signal arrives (no race between checking the count and sleeping), and
 * raises SID_INTERRUPTED once a second signal has come: the command's
 * "abort at once". SIGPIPE is ignored while caught, so a closed output
 * is a write error the command can handle, never a silent death.
 *
 * catch_signals() also opens /dev/null on whichever of descriptors 0-2
 * is closed (stdfd.c) and stops core dumps (nodump.c);
 * release_signals() puts back every disposition found at catch_signals(),
 * closes the pipe, and undoes both: an in-process caller gets its process
 * back as it was. stdfd.c's read_input polls the pipe too.
 *
 * The state is per process (signals are): one catch at a time.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>
#include "slashid.h"

static volatile sig_atomic_t sig_count = 0;
static volatile sig_atomic_t wake_fd = -1;   /* the pipe's write end */
static int read_fd = -1;                     /* the pipe's read end */
static int caught = 0;
static struct sigaction old_int, old_term, old_hup, old_quit, old_pipe,
                        old_xfsz;

static char notice[512];                     /* written on the first signal */
static size_t notice_len = 0;

static void on_signal(int sig) {
  int saved = errno;
  (void)sig;
  /* INT and TERM block each other while this runs (sa_mask): no lost
     increment. Only the main code reads the count. */
  if (sig_count < 1000000) sig_count = sig_count + 1;
  if (sig_count == 1 && notice_len > 0) {
    /* At once, but only if stderr takes it without waiting: a write to a
       full pipe would block the handler (a stopped reader would hang the
       command with INT and TERM masked). poll(2) is async-signal-safe; a
       pipe that polls writable has a free page, more than the notice. */
    struct pollfd p;
    p.fd = 2;
    p.events = POLLOUT;
    p.revents = 0;
    if (poll(&p, 1, 0) == 1 && (p.revents & POLLOUT)) {
      ssize_t r = write(2, notice, notice_len);
      (void)r;
    }
  }
  if (wake_fd >= 0) {
    char b = 1;
    ssize_t r = write(wake_fd, &b, 1);   /* full pipe: already awake */
    (void)r;
  }
  errno = saved;
}

static int set_flags(int fd) {
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0) return -1;
  return fcntl(fd, F_SETFD, FD_CLOEXEC);
}

static void close_pipe(void) {
  int w = wake_fd;
  wake_fd = -1;
  if (w >= 0) close(w);
  if (read_fd >= 0) close(read_fd);
  read_fd = -1;
}

/* core.catch_signals([notice]) -> closed
   `notice`: text written to stderr the moment the first signal arrives
   (an operator pressing Ctrl-C sees at once what happens next).
   `closed`: a table naming the standard streams that were closed at the
   start ({ stdout = true } ...): they are open on /dev/null until release,
   so whatever the command writes there goes nowhere and must be treated
   as not written. Raises if signals are already caught. */
static int signal_catch(lua_State *L) {
  static const char *const names[3] = {"stdin", "stdout", "stderr"};
  struct sigaction sa;
  int fds[2], fd;
  size_t nlen = 0;
  const char *text = luaL_optlstring(L, 1, "", &nlen);
  if (caught) return luaL_error(L, "slashid: signals are already caught");
  if (nlen >= sizeof notice) nlen = sizeof notice - 1;
  lua_createtable(L, 0, 3);   /* first: nothing to undo if this raises */
  for (fd = 0; fd < 3; fd++) {
    if (!sid_stdfd_closed(fd)) continue;
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, names[fd]);
  }
  if (sid_stdfd_plug() != 0)
    return luaL_error(L, "slashid: cannot open /dev/null: %s", strerror(errno));
  if (pipe(fds) != 0) {
    int err = errno;
    sid_stdfd_unplug();
    return luaL_error(L, "slashid: cannot create a pipe: %s", strerror(err));
  }
  if (set_flags(fds[0]) != 0 || set_flags(fds[1]) != 0) {
    int err = errno;
    close(fds[0]);
    close(fds[1]);
    sid_stdfd_unplug();
    return luaL_error(L, "slashid: cannot set up a pipe: %s", strerror(err));
  }
  memcpy(notice, text, nlen);
  notice_len = nlen;
  read_fd = fds[0];
  wake_fd = fds[1];
  sig_count = 0;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaddset(&sa.sa_mask, SIGINT);
  sigaddset(&sa.sa_mask, SIGTERM);
  sigaddset(&sa.sa_mask, SIGHUP);
  sigaddset(&sa.sa_mask, SIGQUIT);
  /* No SA_RESTART: a read blocked when a signal comes (a named pipe read
     through stdio) returns EINTR, so the command notices the signal. */
  sa.sa_flags = 0;
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);
  /* a closed terminal or a dropped ssh session: like SIGTERM, not death
     with a request in flight */
  sigaction(SIGHUP, &sa, &old_hup);
  /* Ctrl-\ would dump core by default, and a core file holds the keys in
     memory: counted like Ctrl-C instead. No core file from a crash either
     while signals are caught (nodump.c; put back on release). */
  sigaction(SIGQUIT, &sa, &old_quit);
  sid_nodump_begin();
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = SIG_IGN;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGPIPE, &sa, &old_pipe);
  /* A file size limit (ulimit -f, systemd's LimitFSIZE=) would kill the
     command mid-write with SIGXFSZ after the key was issued; ignored, the
     write fails with EFBIG and the key goes to the rescue file. */
  sigaction(SIGXFSZ, &sa, &old_xfsz);
  caught = 1;
  return 1;
}

/* core.release_signals(): puts everything back; harmless when not caught.
   The count stays readable until the next catch. */
static int signal_release(lua_State *L) {
  (void)L;
  if (!caught) return 0;
  sigaction(SIGINT, &old_int, NULL);
  sigaction(SIGTERM, &old_term, NULL);
  sigaction(SIGHUP, &old_hup, NULL);
  sigaction(SIGQUIT, &old_quit, NULL);
  sigaction(SIGPIPE, &old_pipe, NULL);
  sigaction(SIGXFSZ, &old_xfsz, NULL);
  sid_nodump_end();
  caught = 0;
  close_pipe();
  sid_stdfd_unplug();
  return 0;
}

/* core.signals_caught() -> whether catch_signals is in force */
static int signal_caught(lua_State *L) {
  lua_pushboolean(L, caught);
  return 1;
}

/* core.signal_count() -> the SIGINT, SIGTERM, SIGHUP and SIGQUIT received
   since catch_signals */
static int signal_count(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)sig_count);
  return 1;
}

int sid_signal_fd(void) {
  return caught ? read_fd : -1;
}

void sid_signal_drain(void) {
  char buf[64];
  if (read_fd < 0) return;
  while (read(read_fd, buf, sizeof buf) > 0) {}
}

int sid_signal_abort(void) {
  return caught && sig_count >= 2;
}

void sid_open_signal(lua_State *L) {
  static const luaL_Reg functions[] = {
    {"catch_signals", signal_catch},
    {"release_signals", signal_release},
    {"signal_count", signal_count},
    {"signals_caught", signal_caught},
    {NULL, NULL}
  };
  sid_setfuncs(L, functions);
  lua_pushliteral(L, SID_INTERRUPTED);
  lua_setfield(L, -2, "INTERRUPTED");
}
