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
 * release_signals() puts back every disposition found at catch_signals(),
 * closes the pipe, and closes the descriptors 0-2 that catch_signals()
 * had to open on /dev/null (a process started with stdout closed would
 * otherwise see the pipe, a socket or the key file become "stdout"):
 * an in-process caller gets its process back as it was.
 *
 * read_input() is the command's one blocking read (standard input: the
 * key, or --orgs -), cut short by a signal the same way: it polls the
 * descriptor and the pipe, so a signal that came just before the read is
 * not missed, and nothing already read is lost to EINTR.
 *
 * The state is per process (signals are): one catch at a time.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>
#include "slashid.h"

static volatile sig_atomic_t sig_count = 0;
static volatile sig_atomic_t wake_fd = -1;   /* the pipe's write end */
static int read_fd = -1;                     /* the pipe's read end */
static int caught = 0;
static int plugged[3];                       /* fds 0-2 opened at catch */
static struct sigaction old_int, old_term, old_hup, old_quit, old_pipe,
                        old_xfsz;
static struct rlimit old_core;
static int core_limited;
static int old_dumpable = -1;

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

static int is_closed(int fd) {
  return fcntl(fd, F_GETFD) == -1 && errno == EBADF;
}

/* Opens /dev/null on each of 0, 1, 2 that is closed; returns -1 (errno)
   on failure, after undoing what it did. */
static int plug_std_fds(void) {
  int fd;
  for (fd = 0; fd < 3; fd++) {
    plugged[fd] = 0;
    if (!is_closed(fd)) continue;
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

static void unplug_std_fds(void) {
  int fd;
  for (fd = 0; fd < 3; fd++) {
    if (plugged[fd]) close(fd);
    plugged[fd] = 0;
  }
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
    if (!is_closed(fd)) continue;
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, names[fd]);
  }
  if (plug_std_fds() != 0)
    return luaL_error(L, "slashid: cannot open /dev/null: %s", strerror(errno));
  if (pipe(fds) != 0) {
    int err = errno;
    unplug_std_fds();
    return luaL_error(L, "slashid: cannot create a pipe: %s", strerror(err));
  }
  if (set_flags(fds[0]) != 0 || set_flags(fds[1]) != 0) {
    int err = errno;
    close(fds[0]);
    close(fds[1]);
    unplug_std_fds();
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
     while signals are caught (the soft limit is put back on release). */
  sigaction(SIGQUIT, &sa, &old_quit);
  /* With core_pattern piping to a helper (systemd-coredump, apport) the
     kernel ignores RLIMIT_CORE: "not dumpable" is what stops the dump. */
  old_dumpable = prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
  if (old_dumpable > 0) prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
  core_limited = getrlimit(RLIMIT_CORE, &old_core) == 0;
  if (core_limited) {
    struct rlimit none = old_core;
    none.rlim_cur = 0;
    core_limited = setrlimit(RLIMIT_CORE, &none) == 0;
  }
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
  if (core_limited) setrlimit(RLIMIT_CORE, &old_core);
  core_limited = 0;
  if (old_dumpable > 0) prctl(PR_SET_DUMPABLE, old_dumpable, 0, 0, 0);
  old_dumpable = -1;
  caught = 0;
  close_pipe();
  unplug_std_fds();
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

/* core.isatty(fd) -> boolean: whether the descriptor is a terminal (the
   progress display: a bar on a terminal, plain lines otherwise). */
static int signal_isatty(lua_State *L) {
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
static int signal_is_memory_device(lua_State *L) {
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
static int signal_read_input(lua_State *L) {
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
  if (caught && read_fd >= 0) {
    p[1].fd = read_fd;
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
  lua_pushcfunction(L, signal_catch);
  lua_setfield(L, -2, "catch_signals");
  lua_pushcfunction(L, signal_release);
  lua_setfield(L, -2, "release_signals");
  lua_pushcfunction(L, signal_count);
  lua_setfield(L, -2, "signal_count");
  lua_pushcfunction(L, signal_caught);
  lua_setfield(L, -2, "signals_caught");
  lua_pushcfunction(L, signal_isatty);
  lua_setfield(L, -2, "isatty");
  lua_pushcfunction(L, signal_is_memory_device);
  lua_setfield(L, -2, "is_memory_device");
  lua_pushcfunction(L, signal_read_input);
  lua_setfield(L, -2, "read_input");
  lua_pushliteral(L, SID_INTERRUPTED);
  lua_setfield(L, -2, "INTERRUPTED");
}
