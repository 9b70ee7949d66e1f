/*
 * examples/embed/host.c - a C program in the style of a game engine that
 * embeds Lua 5.4 and the slashid module, linked statically, and rotates an
 * organization's API key from its 60 Hz frame loop without ever stalling a
 * frame: the rotation is an op (slashid.start_rotate_key), and op:poll()
 * never waits. Nor does the host call it every frame: between frames it
 * sleeps in poll(2) on the op's descriptor (op:pollfd()) until the next
 * frame boundary, and a frame calls into Lua only when that descriptor
 * woke it or op:timeout() has run out (libcurl's timers, the request's
 * deadline, a retry back-off). A frame with nothing to do costs one
 * poll(2) and no Lua at all.
 *
 * Build (the Makefile does it: `make embed` -> build/lua5.4/embed-host):
 *
 *   make libslashid LUA=lua5.4      # build/lua5.4/libslashid.a: the C
 *                                   # sources compiled with -DSID_STATIC_LINK
 *   cc -std=gnu99 -O2 -I/usr/include/lua5.4 -o embed-host \
 *      examples/embed/host.c build/lua5.4/libslashid.a \
 *      -llua5.4 -lcurl -lz -lpthread -lm
 *
 * Needs at run time: libcurl, liblua5.4, lua-cjson for Lua 5.4 (found on
 * Lua's default package.cpath) and the Lua layer (lua/slashid.lua and
 * lua/slashid/) - only the C core is linked in; the policy is Lua.
 *
 * Run:
 *   SLASHID_API_KEY=... embed-host --org-id ID --save-to FILE
 *       [--base-url URL] [--ca-file PEM] [--lua-dir DIR] [--max-seconds S]
 *   (SLASHID_ORG_ID and SLASHID_BASE_URL are read from the environment too;
 *   the key comes from SLASHID_API_KEY or --api-key-file FILE, never from
 *   argv, where `ps` would show it.)
 *
 * Prints key=value lines (outcome, status, frames, the longest frame stall:
 * the most wall-clock time one frame spent inside its Lua call, and the CPU
 * time of that frame: far less CPU than wall means the frame waited, on a
 * disk or on a busy machine's scheduler; lua_calls: frames that called
 * into Lua, fd_wakes: frame sleeps the op's descriptor cut short). Never
 * prints a key:
 * the new one goes to --save-to (atomic, mode 0600) before the op finishes.
 * Exit status: 0 rotated and saved, 1 not rotated, 2 unknown, 3 rotated but
 * not saved, 64 usage, 70 a Lua error.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

/* The module's one public symbol, from libslashid.a. */
int luaopen_slashid_core(lua_State *L);

#define FRAME_NS 16666667L   /* 60 Hz */

/* The Lua side of the host: a table of functions over one op. It keeps
   no globals; the host holds the table on its stack. start returns the
   op's descriptor, poll and cancel whether it finished; all three return
   op:timeout() last (-1 for nil: only the descriptor matters). */
static const char GLUE[] =
  "local slashid = require 'slashid'\n"
  "local op\n"
  "local glue = {}\n"
  "function glue.start(opts)\n"
  "  op = slashid.start_rotate_key(opts)\n"
  "  return op:pollfd(), op:timeout() or -1\n"
  "end\n"
  "function glue.poll() return op:poll(), op:timeout() or -1 end\n"
  "function glue.cancel() op:cancel(); return op:poll(), op:timeout() or -1 end\n"
  "function glue.report()\n"
  "  local result, errors, _, info = op:results()\n"
  "  local first = errors[1]\n"
  "  return info.outcome, info.status, info.attempts, info.elapsed,\n"
  "         info.saved == true, #errors, first and first.message or '',\n"
  "         result ~= nil\n"
  "end\n"
  "return glue\n";

typedef struct options {
  const char *org_id, *base_url, *ca_file, *save_to, *lua_dir, *key_file;
  double max_seconds;
} options;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* CPU time of this thread: with the wall time it tells a frame that
   waited (wall >> cpu: blocked, or preempted by a busy machine) from one
   that computed (wall ~ cpu). */
static double cpu_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void add_ns(struct timespec *t, long ns) {
  t->tv_nsec += ns;
  while (t->tv_nsec >= 1000000000L) {
    t->tv_nsec -= 1000000000L;
    t->tv_sec++;
  }
}

static int before(const struct timespec *a, const struct timespec *b) {
  return a->tv_sec < b->tv_sec ||
         (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

static int usage(const char *why) {
  fprintf(stderr, "embed-host: %s\n"
          "usage: SLASHID_API_KEY=... embed-host --org-id ID --save-to FILE "
          "[--base-url URL] [--ca-file PEM] [--api-key-file FILE] "
          "[--lua-dir DIR] [--max-seconds S]\n", why);
  return 64;
}

/* Reads the key file into a Lua string (pushed), trailing blanks cut. */
static int push_key_file(lua_State *L, const char *path) {
  char buf[4096];
  size_t n;
  FILE *f = fopen(path, "rb");
  if (f == NULL) return 0;
  n = fread(buf, 1, sizeof buf, f);
  fclose(f);
  while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' ||
                   buf[n - 1] == ' ' || buf[n - 1] == '\t'))
    n--;
  lua_pushlstring(L, buf, n);
  memset(buf, 0, sizeof buf);   /* it held the key */
  return n > 0;
}

static void set_string(lua_State *L, const char *field, const char *value) {
  if (value == NULL || *value == '\0') return;
  lua_pushstring(L, value);
  lua_setfield(L, -2, field);
}

/* Pushes the options table for start_rotate_key. */
static int push_options(lua_State *L, const options *o) {
  lua_newtable(L);
  set_string(L, "org_id", o->org_id);
  set_string(L, "base_url", o->base_url);
  set_string(L, "ca_file", o->ca_file);
  set_string(L, "save_to", o->save_to);
  if (o->key_file) {
    if (!push_key_file(L, o->key_file)) return 0;
    lua_setfield(L, -2, "api_key");
  }   /* else the library reads SLASHID_API_KEY itself */
  return 1;
}

/* Calls glue[name] with `nargs` arguments already pushed above the glue
   table's copy; leaves `nres` results. Returns 0 on a Lua error (printed). */
static int call(lua_State *L, int glue, const char *name, int nargs, int nres) {
  lua_getfield(L, glue, name);
  lua_insert(L, -1 - nargs);
  if (lua_pcall(L, nargs, nres, 0) != LUA_OK) {
    fprintf(stderr, "embed-host: %s: %s\n", name, lua_tostring(L, -1));
    lua_pop(L, 1);
    return 0;
  }
  return 1;
}

/* When the op wants its next poll whatever its descriptor does: the
   seconds op:timeout() gave (-1: never). */
static double due_at(lua_State *L, int idx) {
  double left = lua_tonumber(L, idx);
  return left < 0 ? -1 : now_s() + left;
}

/* Sleeps to the frame boundary `next` in poll(2) on the op's descriptor
   (a boundary already reached: a look without sleeping); returns 1 if the
   descriptor polled readable meanwhile (the rest of the frame is then
   slept all the same: the op's work waits for the next frame, as a
   game's would). */
static int sleep_to(const struct timespec *next, int fd) {
  struct timespec t;
  struct pollfd p;
  long ms;
  int woke = 0;
  clock_gettime(CLOCK_MONOTONIC, &t);
  ms = (long)(next->tv_sec - t.tv_sec) * 1000L +
       (next->tv_nsec - t.tv_nsec) / 1000000L;
  p.fd = fd;
  p.events = POLLIN;
  p.revents = 0;
  woke = poll(&p, 1, ms > 0 ? (int)ms : 0) > 0 && p.revents != 0;
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, next, NULL) == EINTR)
    ;
  return woke;
}

static int run(lua_State *L, const options *o) {
  struct timespec next, t;
  double frame_start, work, stall = 0, total_work = 0, start_ms = 0;
  double pending_stall = 0, final_ms = 0, cpu_start, stall_cpu = 0;
  double deadline, due = -1;
  long frames = 0, late = 0, lua_calls = 0, fd_wakes = 0;
  int glue, finished = 0, cancelled = 0, ready = 0, fd = -1, rc;

  /* The C core, linked in: registered as if `require "slashid.core"` had
     loaded it, so the Lua layer's require finds it in package.loaded. */
  luaL_requiref(L, "slashid.core", luaopen_slashid_core, 0);
  lua_pop(L, 1);

  /* The Lua layer: package.path = "<lua-dir>/?.lua;" .. package.path */
  lua_getglobal(L, "package");
  lua_pushfstring(L, "%s/?.lua;", o->lua_dir);
  lua_getfield(L, -2, "path");
  lua_concat(L, 2);
  lua_setfield(L, -2, "path");
  lua_pop(L, 1);

  if (luaL_loadbuffer(L, GLUE, sizeof GLUE - 1, "=embed-host") != LUA_OK ||
      lua_pcall(L, 0, 1, 0) != LUA_OK) {
    fprintf(stderr, "embed-host: %s\n", lua_tostring(L, -1));
    return 70;
  }
  glue = lua_gettop(L);

  clock_gettime(CLOCK_MONOTONIC, &next);
  deadline = now_s() + o->max_seconds;
  for (;;) {
    /* ---- one frame: the game's work would be here, then ours ---- */
    frame_start = now_s();
    cpu_start = cpu_s();
    if (frames == 0) {
      if (!push_options(L, o)) {
        fprintf(stderr, "embed-host: cannot read the key file\n");
        return 64;
      }
      if (!call(L, glue, "start", 1, 2)) return 64;   /* bad options */
      fd = (int)lua_tointeger(L, -2);
      due = due_at(L, -1);
      lua_pop(L, 2);
    } else if (cancelled || ready || (due >= 0 && frame_start >= due)) {
      /* the op has work: its descriptor woke, or its time came */
      if (!call(L, glue, cancelled ? "cancel" : "poll", 0, 2)) return 70;
      finished = lua_toboolean(L, -2);
      due = due_at(L, -1);
      lua_pop(L, 2);
      lua_calls++;
    }
    work = now_s() - frame_start;
    if (frames == 0) start_ms = work * 1000.0;
    if (work > stall) {
      stall = work;
      stall_cpu = cpu_s() - cpu_start;
    }
    if (finished) final_ms = work * 1000.0;   /* answer read, key saved */
    else if (work > pending_stall) pending_stall = work;
    total_work += work;
    frames++;
    if (finished) break;
    if (!cancelled && now_s() > deadline) cancelled = 1;  /* give up */

    /* ---- sleep to the next frame boundary, on the op's descriptor ---- */
    add_ns(&next, FRAME_NS);
    clock_gettime(CLOCK_MONOTONIC, &t);
    if (before(&next, &t)) {          /* this frame overran: resync */
      late++;
      next = t;                       /* (then only a look, no sleep) */
    }
    ready = sleep_to(&next, fd);
    if (ready) fd_wakes++;
  }

  if (!call(L, glue, "report", 0, 8)) return 70;
  {
    const char *outcome = lua_tostring(L, -8);
    long status = (long)lua_tonumber(L, -7);
    long attempts = (long)lua_tonumber(L, -6);
    double elapsed = lua_tonumber(L, -5);
    int saved = lua_toboolean(L, -4);
    long nerrors = (long)lua_tonumber(L, -3);
    const char *first_error = lua_tostring(L, -2);
    int rotated = lua_toboolean(L, -1);
    printf("outcome=%s\nstatus=%ld\nattempts=%ld\nelapsed=%.3f\nsaved=%s\n",
           outcome, status, attempts, elapsed, saved ? "true" : "false");
    /* longest_stall_ms: every frame, the first (start) and the last
       (answer parsed, save_to written and fsync'ed) included. */
    printf("frames=%ld\nlate_frames=%ld\nlongest_stall_ms=%.3f\n"
           "longest_stall_cpu_ms=%.3f\nlongest_pending_stall_ms=%.3f\n"
           "start_ms=%.3f\nfinal_frame_ms=%.3f\nmean_work_ms=%.4f\n"
           "lua_calls=%ld\nfd_wakes=%ld\n",
           frames, late, stall * 1000.0, stall_cpu * 1000.0,
           pending_stall * 1000.0, start_ms, final_ms,
           total_work * 1000.0 / (double)frames, lua_calls, fd_wakes);
    if (nerrors > 0) printf("errors=%ld\nfirst_error=%s\n", nerrors, first_error);
    rc = rotated ? (saved ? 0 : 3)
       : strcmp(outcome, "not_rotated") == 0 ? 1 : 2;
  }
  lua_settop(L, glue - 1);
  return rc;
}

int main(int argc, char **argv) {
  options o;
  lua_State *L;
  int i, rc;

  memset(&o, 0, sizeof o);
  o.org_id = getenv("SLASHID_ORG_ID");
  o.base_url = getenv("SLASHID_BASE_URL");
  o.lua_dir = "lua";
  o.max_seconds = 180;
  for (i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(a, "--help") == 0) {
      usage("rotate a SlashID key from a 60 Hz frame loop");
      return 0;
    }
    if (v == NULL) return usage("missing value after an option");
    if (strcmp(a, "--org-id") == 0) o.org_id = v;
    else if (strcmp(a, "--base-url") == 0) o.base_url = v;
    else if (strcmp(a, "--ca-file") == 0) o.ca_file = v;
    else if (strcmp(a, "--save-to") == 0) o.save_to = v;
    else if (strcmp(a, "--api-key-file") == 0) o.key_file = v;
    else if (strcmp(a, "--lua-dir") == 0) o.lua_dir = v;
    else if (strcmp(a, "--max-seconds") == 0) o.max_seconds = atof(v);
    else return usage("unknown option (the key is never taken from argv)");
    i++;
  }
  /* After a rotation the new key is the only valid one: it must go somewhere. */
  if (o.save_to == NULL) return usage("--save-to is required");
  if (!(o.max_seconds > 0)) return usage("--max-seconds must be > 0");

  L = luaL_newstate();
  if (L == NULL) return 70;
  luaL_openlibs(L);
  rc = run(L, &o);
  lua_close(L);
  return rc;
}
