/*
 * spec/alloc/host.c - a Lua 5.4 host whose allocator fails on demand, to
 * prove that a memory error inside the module's libcurl callbacks (the
 * `debug` trace) never unwinds through libcurl and never loses a new key.
 *
 * Build (spec/22-alloc_spec.lua does it, into build/alloc-host):
 *   cc -std=gnu99 -O1 -g -Wall -Wextra -Werror (and the Makefile's other
 *      -W flags) -I/usr/include/lua5.4 -o build/alloc-host \
 *      spec/alloc/host.c -llua5.4 -ldl -lm
 *
 * Run:
 *   alloc-host [--path P] [--cpath C] SCRIPT [ARG...]
 * package.path and package.cpath come from --path/--cpath, else from the
 * environment as in the stand-alone interpreter (LUA_PATH_5_4, LUA_PATH,
 * LUA_CPATH_5_4, LUA_CPATH). SCRIPT runs with `arg` set as lua5.4 sets it.
 * The real module is loaded by the script (`require "slashid"`): nothing
 * is linked in or mocked.
 *
 * Globals given to the script:
 *   alloc_fail(n)           the next n allocations or growths fail
 *   alloc_fail_after(k, n)  let k pass, then fail n
 *   alloc_reset()           cancel pending failures, zero the counters
 *   alloc_stats()           -> injected, in_trace, in_curl, pending, count
 *       injected: failures returned so far; in_trace: of those, how many
 *       had a function of the tracked object's trace code on the C stack;
 *       in_curl: how many had libcurl on the C stack (inside a libcurl
 *       callback); pending: failures still to come; count: allocations
 *       and growths seen.
 *   alloc_track(path, off, size, ...)  the slashid.core shared object at
 *       `path` (already loaded) and the address ranges (offsets from its
 *       base, sizes) that count as "trace" for in_trace. Returns true.
 * Frees and shrinks always succeed (Lua relies on it). A failed growth
 * makes Lua run an emergency collection and try once more, so one memory
 * error costs two failures.
 *
 * Exit status: 0 when the script ran to its end, 1 on a Lua error (the
 * message, with a traceback, on stderr), 64 on a usage error; a script
 * may also end with os.exit(status).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <execinfo.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#define MAX_RANGES 64
#define MAX_FRAMES 128

typedef struct alloc_ctl {
  long skip;        /* allocations still to let pass before failing */
  long fail;        /* failures still to inject */
  long injected, in_trace, in_curl;
  long count;
  int tracking;
  size_t nranges;
  uintptr_t lo[MAX_RANGES], hi[MAX_RANGES];
} alloc_ctl;

static alloc_ctl ctl;

/* Where the failing allocation was asked for: walks the C stack. Runs
   inside the allocator, so it must not call back into Lua; backtrace()
   and dladdr() use malloc at most, never this allocator. */
static void classify(alloc_ctl *c) {
  void *frames[MAX_FRAMES];
  int n = backtrace(frames, MAX_FRAMES), i;
  int trace = 0, curl = 0;
  for (i = 0; i < n; i++) {
    uintptr_t pc = (uintptr_t)frames[i];
    Dl_info info;
    size_t r;
    if (c->tracking)
      for (r = 0; r < c->nranges; r++)
        if (pc >= c->lo[r] && pc < c->hi[r]) trace = 1;
    if (!curl && dladdr(frames[i], &info) && info.dli_fname &&
        strstr(info.dli_fname, "libcurl") != NULL)
      curl = 1;
  }
  if (trace) c->in_trace++;
  if (curl) c->in_curl++;
}

static void *host_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  alloc_ctl *c = (alloc_ctl *)ud;
  if (nsize == 0) {
    free(ptr);
    return NULL;
  }
  /* With ptr NULL, osize tells the kind of object, not a size. */
  if (ptr == NULL || nsize > osize) {
    c->count++;
    if (c->fail > 0) {
      if (c->skip > 0) {
        c->skip--;
      } else {
        c->fail--;
        c->injected++;
        classify(c);
        return NULL;
      }
    }
  }
  return realloc(ptr, nsize);
}

static lua_Integer check_count(lua_State *L, int idx) {
  lua_Integer n = luaL_checkinteger(L, idx);
  luaL_argcheck(L, n >= 0, idx, "count >= 0 expected");
  return n;
}

static int l_alloc_fail(lua_State *L) {
  lua_Integer n = check_count(L, 1);
  ctl.skip = 0;
  ctl.fail = (long)n;
  return 0;
}

static int l_alloc_fail_after(lua_State *L) {
  lua_Integer k = check_count(L, 1), n = check_count(L, 2);
  ctl.skip = (long)k;
  ctl.fail = (long)n;
  return 0;
}

static int l_alloc_reset(lua_State *L) {
  (void)L;
  ctl.skip = ctl.fail = 0;
  ctl.injected = ctl.in_trace = ctl.in_curl = ctl.count = 0;
  return 0;
}

/* Returns integers only: calling it allocates nothing. */
static int l_alloc_stats(lua_State *L) {
  lua_pushinteger(L, ctl.injected);
  lua_pushinteger(L, ctl.in_trace);
  lua_pushinteger(L, ctl.in_curl);
  lua_pushinteger(L, ctl.fail);
  lua_pushinteger(L, ctl.count);
  return 5;
}

static int l_alloc_track(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  int top = lua_gettop(L), i;
  void *so, *sym;
  Dl_info info;
  uintptr_t base;
  luaL_argcheck(L, top % 2 == 1 && (top - 1) / 2 <= MAX_RANGES, 2,
                "pairs of offset, size expected");
  so = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
  if (so == NULL) return luaL_error(L, "alloc_track: %s is not loaded", path);
  sym = dlsym(so, "luaopen_slashid_core");
  if (sym == NULL || !dladdr(sym, &info)) {
    dlclose(so);
    return luaL_error(L, "alloc_track: no luaopen_slashid_core in %s", path);
  }
  base = (uintptr_t)info.dli_fbase;
  dlclose(so);   /* drops only the reference NOLOAD took */
  ctl.nranges = 0;
  for (i = 2; i < top; i += 2) {
    lua_Integer off = luaL_checkinteger(L, i), size = luaL_checkinteger(L, i + 1);
    ctl.lo[ctl.nranges] = base + (uintptr_t)off;
    ctl.hi[ctl.nranges] = base + (uintptr_t)off + (uintptr_t)size;
    ctl.nranges++;
  }
  ctl.tracking = 1;
  lua_pushboolean(L, 1);
  return 1;
}

static int msghandler(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  ctl.skip = ctl.fail = 0;   /* let the traceback be built */
  if (msg == NULL) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
      return 1;
    msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}

static int panic(lua_State *L) {
  const char *msg = lua_tostring(L, -1);
  fprintf(stderr, "alloc-host: PANIC: %s\n", msg ? msg : "(not a string)");
  fflush(stderr);
  abort();
  return 0;
}

/* Warnings (an error in a __gc metamethod, for one) go to stderr: the
   first few, then only a count (printed at exit). */
#define SHOWN_WARNINGS 3
static long warnings;
static int continuing;

static void warnf(void *ud, const char *msg, int tocont) {
  (void)ud;
  if (!continuing && msg[0] == '@' && !tocont) return;   /* control */
  if (!continuing) warnings++;
  if (warnings <= SHOWN_WARNINGS) {
    if (!continuing) fputs("alloc-host: Lua warning: ", stderr);
    fputs(msg, stderr);
    if (!tocont) fputc('\n', stderr);
  }
  continuing = tocont;
}

static void report_warnings(void) {
  if (warnings > SHOWN_WARNINGS)
    fprintf(stderr, "alloc-host: %ld more Lua warnings\n",
            warnings - SHOWN_WARNINGS);
}

/* package.path or cpath from --path/--cpath; ";;" stands for the path
   the package library chose (from the environment or its default), as in
   LUA_PATH. */
static void set_path(lua_State *L, const char *field, const char *value) {
  const char *mark;
  if (value == NULL) return;
  mark = strstr(value, ";;");
  lua_getglobal(L, "package");
  if (mark != NULL) {
    luaL_Buffer b;
    const char *rest = mark + 2, *chosen;
    lua_getfield(L, -1, field);   /* the path chosen so far: stays on the stack */
    chosen = lua_tostring(L, -1);
    luaL_buffinit(L, &b);
    if (mark > value) {
      luaL_addlstring(&b, value, (size_t)(mark - value));
      luaL_addchar(&b, ';');
    }
    luaL_addstring(&b, chosen ? chosen : "");
    if (*rest) {
      luaL_addchar(&b, ';');
      luaL_addstring(&b, rest);
    }
    luaL_pushresult(&b);
    lua_replace(L, -2);
  } else {
    lua_pushstring(L, value);
  }
  lua_setfield(L, -2, field);
  lua_pop(L, 1);
}

typedef struct args {
  int argc;
  char **argv;
  int script;       /* index of SCRIPT in argv */
  const char *path, *cpath;
} args;

static int run(lua_State *L) {
  args *a = (args *)lua_touserdata(L, 1);
  static const luaL_Reg fns[] = {
    {"alloc_fail", l_alloc_fail},
    {"alloc_fail_after", l_alloc_fail_after},
    {"alloc_reset", l_alloc_reset},
    {"alloc_stats", l_alloc_stats},
    {"alloc_track", l_alloc_track},
    {NULL, NULL}
  };
  const luaL_Reg *f;
  int i, status;
  luaL_openlibs(L);
  set_path(L, "path", a->path);
  set_path(L, "cpath", a->cpath);
  for (f = fns; f->name; f++) {
    lua_pushcfunction(L, f->func);
    lua_setglobal(L, f->name);
  }
  /* arg, as lua5.4 builds it */
  lua_createtable(L, a->argc - a->script - 1, a->script + 1);
  for (i = 0; i < a->argc; i++) {
    lua_pushstring(L, a->argv[i]);
    lua_rawseti(L, -2, i - a->script);
  }
  lua_setglobal(L, "arg");

  lua_pushcfunction(L, msghandler);
  if (luaL_loadfile(L, a->argv[a->script]) != LUA_OK) return lua_error(L);
  for (i = a->script + 1; i < a->argc; i++) lua_pushstring(L, a->argv[i]);
  status = lua_pcall(L, a->argc - a->script - 1, 0, 2);
  if (status != LUA_OK) return lua_error(L);
  return 0;
}

static void usage(void) {
  fputs("usage: alloc-host [--path P] [--cpath C] SCRIPT [ARG...]\n", stderr);
}

int main(int argc, char **argv) {
  args a;
  lua_State *L;
  int i = 1, status;
  void *warm[4];
  memset(&a, 0, sizeof a);
  while (i < argc && strncmp(argv[i], "--", 2) == 0) {
    if (strcmp(argv[i], "--path") == 0 && i + 1 < argc) a.path = argv[i + 1];
    else if (strcmp(argv[i], "--cpath") == 0 && i + 1 < argc) a.cpath = argv[i + 1];
    else { usage(); return 64; }
    i += 2;
  }
  if (i >= argc) { usage(); return 64; }
  a.argc = argc;
  a.argv = argv;
  a.script = i;

  /* backtrace() loads its unwinder on first use: do it now, not inside
     the allocator. */
  (void)backtrace(warm, 4);

  L = lua_newstate(host_alloc, &ctl);
  if (L == NULL) {
    fputs("alloc-host: cannot create a Lua state\n", stderr);
    return 1;
  }
  lua_atpanic(L, panic);
  atexit(report_warnings);   /* os.exit too */
  lua_setwarnf(L, warnf, NULL);
  lua_pushcfunction(L, run);
  lua_pushlightuserdata(L, &a);
  status = lua_pcall(L, 1, 0, 0);
  if (status != LUA_OK) {
    const char *msg = lua_tostring(L, -1);
    ctl.skip = ctl.fail = 0;
    fprintf(stderr, "alloc-host: %s\n", msg ? msg : "(error object is not a string)");
    fflush(stdout);
    lua_close(L);
    return 1;
  }
  fflush(stdout);
  lua_close(L);
  return 0;
}
