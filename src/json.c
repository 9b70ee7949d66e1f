/*
 * json.c - answer bodies are decoded by lua-cjson (cjson.safe); this file
 * only turns its output into native Lua values: JSON null becomes nil
 * (cjson gives a sentinel) and integral numbers become Lua integers on
 * 5.3+ (cjson 2.1 gives floats), so `httpcode` and pagination numbers
 * compare and print as callers expect.
 */
#include <math.h>
#include "slashid.h"

/* Registry slots holding our private cjson instance. */
static const char DECODE_KEY[] = "slashid.json.decode";
static const char NULL_KEY[] = "slashid.json.null";

/* Deeper documents are refused by cjson (a decoding error, not a crash). */
#define SID_JSON_MAX_DEPTH 64

/* Loads cjson.safe and keeps a private instance, so that the host's own
   cjson settings never change how we read answers (and ours never leak
   into theirs). Called once from luaopen_slashid_core. */
int sid_json_init(lua_State *L) {
  lua_getglobal(L, "require");
  lua_pushliteral(L, "cjson.safe");
  lua_call(L, 1, 1);                       /* module */
  lua_getfield(L, -1, "new");
  if (lua_isfunction(L, -1)) {
    lua_call(L, 0, 1);                     /* private instance */
    lua_remove(L, -2);
  } else {
    lua_pop(L, 1);                         /* old cjson: share the module */
  }
  lua_getfield(L, -1, "decode_max_depth");
  if (lua_isfunction(L, -1)) {
    lua_pushinteger(L, SID_JSON_MAX_DEPTH);
    lua_call(L, 1, 0);
  } else {
    lua_pop(L, 1);
  }
  lua_getfield(L, -1, "decode_invalid_numbers");  /* no NaN/Infinity/hex */
  if (lua_isfunction(L, -1)) {
    lua_pushboolean(L, 0);
    lua_call(L, 1, 0);
  } else {
    lua_pop(L, 1);
  }
  lua_getfield(L, -1, "decode");
  luaL_argcheck(L, lua_isfunction(L, -1), 1, "cjson.safe has no decode");
  lua_setfield(L, LUA_REGISTRYINDEX, DECODE_KEY);
  lua_getfield(L, -1, "null");
  lua_setfield(L, LUA_REGISTRYINDEX, NULL_KEY);
  lua_pop(L, 1);
  return 0;
}

static void normalize(lua_State *L, int null_idx);

/* Value on top of the stack: replaced in place by its native form. */
static void normalize_value(lua_State *L, int null_idx) {
  if (lua_rawequal(L, -1, null_idx)) {
    lua_pop(L, 1);
    lua_pushnil(L);
  } else if (lua_type(L, -1) == LUA_TTABLE) {
    normalize(L, null_idx);
  }
#if SID_HAS_INTEGERS
  else if (lua_type(L, -1) == LUA_TNUMBER && !lua_isinteger(L, -1)) {
    lua_Number d = lua_tonumber(L, -1);
    /* 2^63 is exact as a double; integers in [-2^63, 2^63) fit. */
    if (floor(d) == d && d >= -9223372036854775808.0 &&
        d < 9223372036854775808.0) {
      lua_pop(L, 1);
      lua_pushinteger(L, (lua_Integer)d);
    }
  }
#endif
}

/* Table on top of the stack: rewrite its values. Lua allows assigning to
   (and clearing) existing fields during lua_next traversal. */
static void normalize(lua_State *L, int null_idx) {
  int t = lua_gettop(L);
  luaL_checkstack(L, 4, "JSON nesting");
  lua_pushnil(L);
  while (lua_next(L, t)) {
    normalize_value(L, null_idx);
    lua_pushvalue(L, -2);     /* key */
    lua_insert(L, -2);        /* key, key, value */
    lua_rawset(L, t);
  }
}

int sid_json_decode(lua_State *L, const char *s, size_t n) {
  int base = lua_gettop(L);
  lua_getfield(L, LUA_REGISTRYINDEX, NULL_KEY);
  lua_getfield(L, LUA_REGISTRYINDEX, DECODE_KEY);
  lua_pushlstring(L, s, n);
  /* cjson.safe returns nil, message on bad input; pcall guards anything
     else (memory errors) so that no answer can raise through us. */
  if (lua_pcall(L, 1, 1, 0) != 0 || lua_isnil(L, -1)) {
    lua_settop(L, base);
    return 0;
  }
  normalize_value(L, base + 1);
  lua_remove(L, base + 1);    /* the null sentinel */
  return 1;
}
