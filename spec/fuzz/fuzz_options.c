/*
 * fuzz_options.c - libFuzzer harness over option checking: a lua_State runs
 * lua/slashid/options.lua's `check` and `resolve` on option tables built
 * from the fuzz bytes (spec/fuzz/options_check.lua holds the generator and
 * the invariants: every rejection starts with "slashid: " and never quotes
 * the API key; every acceptance is of the documented types and ranges).
 *
 * Input: the first byte picks the environment (bit 0: SLASHID_API_KEY set
 * to a recognisable key, bit 1: SLASHID_ORG_ID, bit 2: SLASHID_BASE_URL,
 * bit 3: the environment key holds a CR); the rest drives the generator.
 *
 * The interpreter is not instrumented, so libFuzzer would see no coverage
 * in options.lua: luacov.h feeds it the Lua line edges instead.
 */
#include <stdio.h>
#include <stdlib.h>
#include <lualib.h>
#include <lauxlib.h>
#include "luacov.h"

#ifndef SID_FUZZ_ROOT
#define SID_FUZZ_ROOT "."
#endif

static const char ENV_KEY[] = "sk_FUZZENVKEY_r3Tq8Wn1Zp6Lx0Vb5Mc2Hd9";
static const char ENV_KEY_CR[] = "sk_FUZZENVKEY_r3Tq8Wn1Zp6\rLx0Vb5Mc2Hd9";
static const char *const BASE_URLS[] = {
  "http://127.0.0.1:9", "https://api.sandbox.slashid.com/", "http://evil.example",
  "", "https://h:99999"
};

static lua_State *L;
static int run_ref = LUA_NOREF;

static void die(const char *what) {
  fprintf(stderr, "fuzz_options: %s\n", what ? what : "(no message)");
  abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  const char *root = getenv("SLASHID_FUZZ_ROOT");
  (void)argc; (void)argv;
  if (root == NULL) root = SID_FUZZ_ROOT;
  unsetenv("SLASHID_API_KEY");
  unsetenv("SLASHID_ORG_ID");
  unsetenv("SLASHID_BASE_URL");
  L = luaL_newstate();
  luaL_openlibs(L);
  lua_getglobal(L, "package");
  lua_pushfstring(L, "%s/lua/?.lua;%s/spec/fuzz/?.lua", root, root);
  lua_setfield(L, -2, "path");
  lua_pop(L, 1);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "options_check");
  if (lua_pcall(L, 1, 1, 0) != 0) die(lua_tostring(L, -1));
  lua_getfield(L, -1, "run");
  run_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pop(L, 1);
  luacov_start(L);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static unsigned long runs;
  unsigned env = size ? data[0] : 0;
  const char *key = NULL;
  int base = lua_gettop(L);

  if (env & 1) {
    key = (env & 8) ? ENV_KEY_CR : ENV_KEY;
    setenv("SLASHID_API_KEY", key, 1);
  } else {
    unsetenv("SLASHID_API_KEY");
  }
  if (env & 2) setenv("SLASHID_ORG_ID", "org-from-env", 1);
  else unsetenv("SLASHID_ORG_ID");
  if (env & 4) setenv("SLASHID_BASE_URL", BASE_URLS[(env >> 4) % 5], 1);
  else unsetenv("SLASHID_BASE_URL");

  luacov_prev = 0;
  lua_rawgeti(L, LUA_REGISTRYINDEX, run_ref);
  lua_pushlstring(L, size ? (const char *)data + 1 : "", size ? size - 1 : 0);
  if (key) lua_pushstring(L, key);
  else lua_pushnil(L);
  if (lua_pcall(L, 2, 0, 0) != 0) die(lua_tostring(L, -1));
  lua_settop(L, base);
  if (++runs % 256 == 0) lua_gc(L, LUA_GCCOLLECT, 0);
  return 0;
}
