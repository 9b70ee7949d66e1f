/*
 * json.c - answer bodies are decoded by lua-cjson (cjson.safe); this file
 * only turns its output into native Lua values: JSON null becomes nil
 * (cjson gives a sentinel) and integral numbers become Lua integers on
 * 5.3+ (cjson 2.1 gives floats), so `httpcode` and pagination numbers
 * compare and print as callers expect.
 */
#include <math.h>
#include <string.h>
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
static int normalize_value(lua_State *L, int null_idx);

/* Value on top of the stack: replaced in place by its native form.
   Returns whether it was replaced (a table is changed in place). */
static int normalize_value(lua_State *L, int null_idx) {
  int type = lua_type(L, -1);
  if (type == LUA_TTABLE) {
    normalize(L, null_idx);
    return 0;
  }
  if (type != LUA_TSTRING && type != LUA_TNUMBER && lua_rawequal(L, -1, null_idx)) {
    lua_pop(L, 1);
    lua_pushnil(L);
    return 1;
  }
#if SID_HAS_INTEGERS
  if (type == LUA_TNUMBER && !lua_isinteger(L, -1)) {
    lua_Number d = lua_tonumber(L, -1);
    /* 2^63 is exact as a double; integers in [-2^63, 2^63) fit. */
    if (floor(d) == d && d >= -9223372036854775808.0 &&
        d < 9223372036854775808.0) {
      lua_pop(L, 1);
      lua_pushinteger(L, (lua_Integer)d);
      return 1;
    }
  }
#endif
  return 0;
}

/* Table on top of the stack: rewrite the values that change (strings,
   the bulk of an envelope, are left as they are). Lua allows assigning
   to (and clearing) existing fields during lua_next traversal. */
static void normalize(lua_State *L, int null_idx) {
  int t = lua_gettop(L);
  luaL_checkstack(L, 4, "JSON nesting");
  lua_pushnil(L);
  while (lua_next(L, t)) {
    if (normalize_value(L, null_idx)) {
      lua_pushvalue(L, -2);     /* key */
      lua_insert(L, -2);        /* key, key, value */
      lua_rawset(L, t);
    } else {
      lua_pop(L, 1);
    }
  }
}

/* cjson.safe turns every error raised while decoding into nil, message:
   its own verdicts on the text ("Expected ... but found ...", "Found too
   many nested data structures ...", "JSON parser does not support UTF-16
   ...") and also a memory error or a hook
   firing in the middle (lua.c's Ctrl-C hook, a sandbox's count). Only the
   first kind says the answer is not JSON. */
static int is_verdict(lua_State *L, int idx) {
  size_t n;
  const char *m = lua_tolstring(L, idx, &n);
  return m != NULL && ((n >= 8 && memcmp(m, "Expected", 8) == 0) ||
                       (n >= 5 && memcmp(m, "Found", 5) == 0) ||
                       (n >= 11 && memcmp(m, "JSON parser", 11) == 0));
}

/* One decode: 1 with the value pushed, 0 (nothing pushed) when the text
   is not JSON, -1 with an error value pushed when it could not tell. */
static int decode_once(lua_State *L, const char *s, size_t n) {
  lua_getfield(L, LUA_REGISTRYINDEX, DECODE_KEY);
  lua_pushlstring(L, s, n);
  if (lua_pcall(L, 1, 2, 0) != 0) return -1;
  if (!lua_isnil(L, -2)) {
    lua_pop(L, 1);
    return 1;
  }
  if (is_verdict(L, -1)) {
    lua_pop(L, 2);
    return 0;
  }
  lua_remove(L, -2);                        /* the error value */
  return -1;
}

int sid_json_decode(lua_State *L, const char *s, size_t n) {
  int base = lua_gettop(L), got;
  /* A UTF-8 byte order mark is not JSON, but some servers send one. */
  if (n >= 3 && (unsigned char)s[0] == 0xEF && (unsigned char)s[1] == 0xBB &&
      (unsigned char)s[2] == 0xBF) {
    s += 3;
    n -= 3;
  }
  lua_getfield(L, LUA_REGISTRYINDEX, NULL_KEY);
  /* An answer that could not be read (not a verdict on it) may hold a new
     key: try once more (a one-shot hook is gone, the failed attempt's
     garbage is free); if it fails again, raise rather than call a rotated
     answer "not JSON". */
  got = decode_once(L, s, n);
  if (got < 0) {
    lua_settop(L, base + 1);
    got = decode_once(L, s, n);
    if (got < 0) {
      lua_remove(L, base + 1);
      lua_error(L);
    }
  }
  if (got == 0) {
    lua_settop(L, base);
    return 0;
  }
  normalize_value(L, base + 1);
  lua_remove(L, base + 1);    /* the null sentinel */
  return 1;
}
