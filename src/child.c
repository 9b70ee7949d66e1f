/*
 * child.c - a store command: another program (`/bin/sh -c cmd`) that
 * takes a secret (a new key) on its standard input, driven without
 * blocking, so a batch goes on with its other work while the command
 * runs, and a timeout can end it. The answer is true only when the
 * command exited with status 0 AND took all of its input: a command that
 * exits 0 without reading its input (a typo in a pipeline, `true`) has
 * not stored the key, and the caller must keep it some other way.
 *
 * Lua's io.popen cannot do this: it blocks on the write, cannot tell
 * whether the input was read, cannot time out, and gives the child the
 * caller's signal dispositions (SIGPIPE ignored, say) and descriptors.
 *
 * What the child gets: its own process group (a terminal's Ctrl-C goes
 * to the command line, which decides; kill() ends the whole group, so a
 * pipeline's processes too), every signal at its default disposition and
 * none blocked, standard input the read end of a pipe, standard output
 * our standard error (so nothing the command prints can be taken for our
 * own output, which may be a key), standard error ours, no other
 * descriptor, and our environment plus one variable.
 *
 * The secret is copied to a buffer of ours (wiped as soon as the pipe
 * has taken all of it, or when the child is done with) and never appears
 * in a message; neither does the command.
 */
#define _GNU_SOURCE 1   /* pipe2, F_DUPFD_CLOEXEC, environ */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>
#include "slashid.h"

#define SID_CHILD_MT "slashid.child"
#define SID_CHILD_FD_CAP 65536   /* descriptors closed one by one, at most */

extern char **environ;

typedef struct sid_child {
  long owner;            /* the process that started it (a forked copy of
                            the state must neither kill nor reap it) */
  pid_t pid;             /* also its process group */
  int running;           /* started, not reaped yet */
  int lost;              /* reaped by someone else: status unknown */
  int status;            /* wait status, once reaped */
  int wfd;               /* the pipe's write end (O_NONBLOCK), or -1 */
  int rfd;               /* our copy of its read end, or -1 */
  int write_err;         /* errno of a write that failed, 0 if none */
  char *data;            /* what is left to send is data[sent..len) */
  size_t len, sent;
  int answered;          /* the answer below is final */
  int ok;
  int has_reason;        /* kill(reason): `why` holds the reason */
  char why[256];
} sid_child;

static sid_child *check_child(lua_State *L) {
  return (sid_child *)luaL_checkudata(L, 1, SID_CHILD_MT);
}

static void close_fd(int *fd) {
  if (*fd >= 0) close(*fd);
  *fd = -1;
}

/* Closes both descriptors and wipes what was not sent. */
static void release(sid_child *c) {
  close_fd(&c->wfd);
  close_fd(&c->rfd);
  sid_free_secret(&c->data, c->len);
}

/* Writes as much as the pipe takes now. Once all is written, the write
   end is closed (the child reads EOF) and the buffer wiped. While we
   hold the read end, the pipe never gives EPIPE (nor SIGPIPE); any error
   but EAGAIN ends the input for good (recorded for the answer). */
static void pump(sid_child *c) {
  while (c->wfd >= 0 && c->sent < c->len) {
    ssize_t w = write(c->wfd, c->data + c->sent, c->len - c->sent);
    if (w > 0) {
      c->sent += (size_t)w;
    } else if (w < 0 && errno == EINTR) {
      continue;
    } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      return;
    } else {
      c->write_err = w < 0 ? errno : EIO;
      close_fd(&c->wfd);
      return;
    }
  }
  if (c->wfd >= 0) close_fd(&c->wfd);
  if (c->sent == c->len) sid_free_secret(&c->data, c->len);
}

/* waitpid, blocking or not: 1 once the child is reaped (or known lost),
   0 while it runs. */
static int reap(sid_child *c, int block) {
  int status = 0;
  pid_t r;
  if (!c->running) return 1;
  if (c->owner != (long)getpid()) {
    r = -1;                /* not our child: a forked copy of the state */
  } else {
    do {
      r = waitpid(c->pid, &status, block ? 0 : WNOHANG);
    } while (r < 0 && errno == EINTR);
    if (r == 0) return 0;
  }
  if (r < 0) c->lost = 1;  /* ECHILD: SIGCHLD ignored, or a host's wait */
  else c->status = status;
  c->running = 0;
  return 1;
}

/* SIGKILL to its process group (a pipeline's processes, anything it
   started in the background) and to itself, then reaped: after SIGKILL a
   blocking waitpid returns at once. Never after reaping: the pid (and
   group id) may then belong to someone else. */
static void terminate(sid_child *c) {
  if (c->running && c->owner == (long)getpid()) {
    (void)kill(-c->pid, SIGKILL);
    (void)kill(c->pid, SIGKILL);
  }
  (void)reap(c, 1);
}

/* The final answer, once reaped; then nothing is kept open. */
static void settle(sid_child *c) {
  int st = c->status, unread = 0;
  c->ok = 0;
  if (c->lost) {
    snprintf(c->why, sizeof c->why,
             "its exit status is unknown (it was reaped elsewhere)");
  } else if (WIFSIGNALED(st)) {
    if (!c->has_reason)
      snprintf(c->why, sizeof c->why, "killed by signal %d", WTERMSIG(st));
  } else if (!WIFEXITED(st)) {
    snprintf(c->why, sizeof c->why, "ended with wait status %d", st);
  } else if (WEXITSTATUS(st) != 0) {
    snprintf(c->why, sizeof c->why, "exited with status %d", WEXITSTATUS(st));
  } else if (c->write_err) {
    snprintf(c->why, sizeof c->why, "exited, but its input could not be "
             "written: %s", strerror(c->write_err));
  } else if (c->sent < c->len) {
    snprintf(c->why, sizeof c->why, "exited without reading all of its input");
  } else if (c->rfd >= 0 && ioctl(c->rfd, FIONREAD, &unread) != 0) {
    snprintf(c->why, sizeof c->why, "exited, but whether it read all of its "
             "input is unknown: %s", strerror(errno));
  } else if (unread > 0) {
    snprintf(c->why, sizeof c->why, "exited without reading all of its input");
  } else {
    c->ok = 1;
  }
  c->answered = 1;
  release(c);
}

static int push_answer(lua_State *L, const sid_child *c) {
  lua_pushboolean(L, c->ok);
  if (c->ok) return 1;
  lua_pushstring(L, c->why);
  return 2;
}

/* Moves a descriptor to 3 or above (close-on-exec), so that none of the
   pipe's ends is one of the standard ones the child sets up (they are
   handed out when the caller's 0, 1 or 2 are closed). -1 with errno. */
static int above_std(int fd) {
  int moved, err;
  if (fd > 2) return fd;
  moved = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  err = errno;
  close(fd);
  errno = err;
  return moved;
}

/* The child's environment: ours, without any `name`, plus name=value.
   Built before fork: after it, in a process that may have other threads,
   only async-signal-safe calls (no malloc). *entry (name=value) may hold
   a secret: the caller wipes it. NULL when out of memory. */
static char **build_env(const char *name, size_t nlen, const char *value,
                        size_t vlen, char **entry, size_t *elen) {
  size_t n = 0, k = 0;
  char **envp, **e;
  for (e = environ; e && *e; e++) n++;
  envp = (char **)malloc((n + 2) * sizeof *envp);
  *elen = nlen + vlen + 2;
  *entry = (char *)malloc(*elen);
  if (envp == NULL || *entry == NULL) {
    free(envp);
    free(*entry);
    *entry = NULL;
    return NULL;
  }
  memcpy(*entry, name, nlen);
  (*entry)[nlen] = '=';
  memcpy(*entry + nlen + 1, value, vlen);
  (*entry)[nlen + 1 + vlen] = '\0';
  /* SLASHID_API_KEY (a key the operator exported, maybe the one being
     rotated) is never passed on: a store command is given one key, on
     its standard input */
  for (e = environ; e && *e; e++)
    if ((strncmp(*e, name, nlen) != 0 || (*e)[nlen] != '=') &&
        strncmp(*e, "SLASHID_API_KEY=", 16) != 0)
      envp[k++] = *e;
  envp[k++] = *entry;
  envp[k] = NULL;
  return envp;
}

/* What the child needs, all prepared before fork. */
typedef struct child_setup {
  char *argv[4];
  char **envp;
  int rfd;
  int max_fd;                  /* close one by one below this, if need be */
  struct sigaction dfl;        /* SIG_DFL */
  sigset_t none;               /* the mask it runs with */
} child_setup;

/* In the child, between fork and exec: async-signal-safe calls only. All
   signals are blocked on entry (the parent blocked them around fork), so
   no handler of the parent's runs here. */
static void run_child(const child_setup *s) {
  int sig, fd;
  (void)setpgid(0, 0);
  for (sig = 1; sig < NSIG; sig++)
    if (sig != SIGKILL && sig != SIGSTOP) (void)sigaction(sig, &s->dfl, NULL);
  if (dup2(s->rfd, 0) < 0) _exit(127);
  if (dup2(2, 1) < 0) {
    /* our stderr is closed: the child's output goes nowhere rather than
       to whatever descriptor 1 is */
    fd = open("/dev/null", O_WRONLY);
    if (fd < 0) _exit(127);
    if (fd != 1) {
      if (dup2(fd, 1) < 0) _exit(127);
      if (fd > 2) close(fd);
    }
  }
#ifdef SYS_close_range
  if (syscall(SYS_close_range, 3U, ~0U, 0U) != 0)
#endif
    for (fd = 3; fd < s->max_fd; fd++) (void)close(fd);
  (void)sigprocmask(SIG_SETMASK, &s->none, NULL);
  execve("/bin/sh", s->argv, s->envp);
  _exit(127);
}

/* Pushes nil and "cannot start the store command: <why>" after letting go
   of what spawn holds; returns 2. */
static int spawn_failed(lua_State *L, sid_child *c, int err) {
  release(c);
  lua_pushnil(L);
  lua_pushfstring(L, "cannot start the store command: %s", strerror(err));
  return 2;
}

/* core.spawn(cmd, env_name, env_value, data) -> child | nil, message
   Starts `/bin/sh -c cmd` with env_name=env_value added to (or replacing
   in) our environment, and writes as much of `data` to its standard
   input as the pipe takes now; child:poll() writes the rest. A command
   /bin/sh cannot run ends as "exited with status 127". */
static int child_spawn(lua_State *L) {
  size_t clen, nlen, vlen, dlen, elen = 0;
  const char *cmd = luaL_checklstring(L, 1, &clen);
  const char *name = luaL_checklstring(L, 2, &nlen);
  const char *value = luaL_checklstring(L, 3, &vlen);
  const char *data = luaL_checklstring(L, 4, &dlen);
  sid_child *c;
  child_setup s;
  char *entry = NULL;
  sigset_t all, old;
  long open_max;
  int fds[2], err, fl;
  pid_t pid;

  luaL_argcheck(L, strlen(cmd) == clen, 1, "the command holds a NUL byte");
  luaL_argcheck(L, nlen > 0 && strlen(name) == nlen && !strchr(name, '='), 2,
                "a variable name expected (not empty, no '=' nor NUL)");
  luaL_argcheck(L, strlen(value) == vlen, 3, "the value holds a NUL byte");
  lua_settop(L, 4);

  /* The userdata first: from here on __gc closes and wipes whatever a
     memory error would otherwise leak. */
  c = (sid_child *)sid_newuserdata(L, sizeof *c);              /* index 5 */
  memset(c, 0, sizeof *c);
  c->wfd = c->rfd = -1;
  sid_setmetatable(L, SID_CHILD_MT);

  if (dlen > 0) {
    c->data = (char *)malloc(dlen);
    if (c->data == NULL) return spawn_failed(L, c, ENOMEM);
    memcpy(c->data, data, dlen);
    c->len = dlen;
  }
  if (pipe2(fds, O_CLOEXEC) != 0) return spawn_failed(L, c, errno);
  c->rfd = above_std(fds[0]);
  err = errno;
  fds[1] = above_std(fds[1]);
  if (c->rfd < 0 || fds[1] < 0) {
    if (c->rfd >= 0) err = errno;
    if (fds[1] >= 0) close(fds[1]);
    return spawn_failed(L, c, err);
  }
  c->wfd = fds[1];

  memset(&s, 0, sizeof s);
  s.argv[0] = (char *)"/bin/sh";
  s.argv[1] = (char *)"-c";
  s.argv[2] = (char *)cmd;
  s.argv[3] = NULL;
  s.rfd = c->rfd;
  open_max = sysconf(_SC_OPEN_MAX);
  s.max_fd = open_max < 1024 ? 1024 :
             open_max > SID_CHILD_FD_CAP ? SID_CHILD_FD_CAP : (int)open_max;
  s.dfl.sa_handler = SIG_DFL;
  sigemptyset(&s.dfl.sa_mask);
  sigemptyset(&s.none);
  s.envp = build_env(name, nlen, value, vlen, &entry, &elen);
  if (s.envp == NULL) return spawn_failed(L, c, ENOMEM);

  /* Every signal blocked across fork: a handler of ours (signal.c's
     writes to the command's self-pipe) must not run in the child before
     it has reset them; the child unblocks right before exec. */
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pid = fork();
  if (pid == 0) run_child(&s);        /* does not return */
  err = errno;
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  sid_free_secret(&entry, elen);
  free(s.envp);
  if (pid < 0) return spawn_failed(L, c, err);

  c->owner = (long)getpid();
  c->pid = pid;
  c->running = 1;
  /* Also from here, so the group exists when spawn returns whoever runs
     first (EACCES: it has exec'd, having made it itself; ESRCH: gone). */
  (void)setpgid(pid, pid);
  fl = fcntl(c->wfd, F_GETFL);
  if (fl < 0 || fcntl(c->wfd, F_SETFL, fl | O_NONBLOCK) != 0) {
    /* a blocking write could hang poll(): give up the input instead */
    c->write_err = errno;
    close_fd(&c->wfd);
  }
  pump(c);
  lua_settop(L, 5);
  return 1;
}

/* child:poll() -> nil (running) | true | false, message
   Writes more of the input if the pipe takes it, then looks (without
   waiting) whether the child has exited. true: exit status 0 and all of
   its input read (all written, and nothing left in the pipe). false and
   "exited with status N", "killed by signal N", "exited without reading
   all of its input", or kill's reason. Once answered, every descriptor
   is closed and the buffer wiped; later calls give the same answer. */
static int child_poll(lua_State *L) {
  sid_child *c = check_child(L);
  if (!c->answered) {
    pump(c);
    if (!reap(c, 0)) {
      lua_pushnil(L);
      return 1;
    }
    settle(c);
  }
  return push_answer(L, c);
}

/* child:kill([reason]): SIGKILL to its process group and to itself, then
   reaped. poll then answers false with `reason` (at most 255 bytes kept)
   or "killed by signal 9"; a child that had exited on its own before the
   signal keeps the answer its exit gives. Nothing once answered. */
static int child_kill(lua_State *L) {
  sid_child *c = check_child(L);
  size_t rlen = 0;
  const char *reason = luaL_optlstring(L, 2, NULL, &rlen);
  if (c->answered) return 0;
  if (reason) {
    if (rlen >= sizeof c->why) rlen = sizeof c->why - 1;
    memcpy(c->why, reason, rlen);
    c->why[rlen] = '\0';
    c->has_reason = 1;
  }
  terminate(c);
  settle(c);
  return 0;
}

static int child_pid(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)check_child(L)->pid);
  return 1;
}

/* A child dropped while running is killed (group and all) and reaped:
   nothing is left behind holding a key on its input. */
static int child_gc(lua_State *L) {
  sid_child *c = check_child(L);
  if (!c->answered && c->pid > 0) terminate(c);
  c->answered = 1;
  release(c);
  return 0;
}

static int child_tostring(lua_State *L) {
  lua_pushfstring(L, SID_CHILD_MT " (pid %d)", (int)check_child(L)->pid);
  return 1;
}

void sid_open_child(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"poll", child_poll},
    {"kill", child_kill},
    {"pid", child_pid},
    {NULL, NULL}
  };
  static const luaL_Reg meta[] = {
    {"__gc", child_gc},
    {"__tostring", child_tostring},
    {NULL, NULL}
  };
  static const luaL_Reg functions[] = {
    {"spawn", child_spawn},
    {NULL, NULL}
  };
  sid_new_class(L, SID_CHILD_MT, meta, methods);
  sid_setfuncs(L, functions);
}
