/*
 * compat.h - the one place for Lua 5.1/5.2/5.3/5.4/LuaJIT and libcurl
 * version differences. Every shim carries the sid_ prefix so that it can
 * never collide with a host's own compatibility layer.
 */
#ifndef SLASHID_COMPAT_H
#define SLASHID_COMPAT_H

#include <lua.h>
#include <lauxlib.h>
#include <curl/curl.h>

/* ---- Lua ------------------------------------------------------------ */

#if LUA_VERSION_NUM >= 502
#define sid_rawlen(L, i) lua_rawlen(L, (i))
#define sid_setfuncs(L, l) luaL_setfuncs(L, (l), 0)
#else /* Lua 5.1 and LuaJIT */
#define sid_rawlen(L, i) lua_objlen(L, (i))
#define sid_setfuncs(L, l) luaL_register(L, NULL, (l))
#endif

/* Lua 5.3+ has a separate integer subtype; older versions only doubles. */
#if LUA_VERSION_NUM >= 503
#define SID_HAS_INTEGERS 1
#else
#define SID_HAS_INTEGERS 0
#endif

/* To-be-closed variables (`local x <close>`) call __close: 5.4+. */
#if LUA_VERSION_NUM >= 504
#define SID_HAS_CLOSE 1
#else
#define SID_HAS_CLOSE 0
#endif

/* lua_newuserdata became a macro over lua_newuserdatauv in 5.4; both exist
   (and give one user value). */
#define sid_newuserdata(L, sz) lua_newuserdata(L, (sz))

/* A userdata's user value (a table here): 5.4 numbers them, 5.2/5.3 have
   one, 5.1 and LuaJIT call it the environment (a table only). */
#if LUA_VERSION_NUM >= 504
#define sid_setuservalue(L, idx) ((void)lua_setiuservalue((L), (idx), 1))
#define sid_getuservalue(L, idx) ((void)lua_getiuservalue((L), (idx), 1))
#elif LUA_VERSION_NUM >= 502
#define sid_setuservalue(L, idx) lua_setuservalue((L), (idx))
#define sid_getuservalue(L, idx) ((void)lua_getuservalue((L), (idx)))
#else
#define sid_setuservalue(L, idx) ((void)lua_setfenv((L), (idx)))
#define sid_getuservalue(L, idx) lua_getfenv((L), (idx))
#endif

/* Set a metatable from the registry by name (luaL_setmetatable is 5.2+). */
static inline void sid_setmetatable(lua_State *L, const char *tname) {
  luaL_getmetatable(L, tname);
  lua_setmetatable(L, -2);
}

/* luaL_testudata is 5.2+ (LuaJIT has it too, but not Lua 5.1). */
static inline void *sid_testudata(lua_State *L, int idx, const char *tname) {
  void *p = lua_touserdata(L, idx);
  if (p == NULL || !lua_getmetatable(L, idx)) return NULL;
  luaL_getmetatable(L, tname);
  if (!lua_rawequal(L, -1, -2)) p = NULL;
  lua_pop(L, 2);
  return p;
}

/* lua_absindex is 5.2+. */
#if LUA_VERSION_NUM >= 502
#define sid_absindex(L, i) lua_absindex(L, (i))
#else
#define sid_absindex(L, i) \
  (((i) > 0 || (i) <= LUA_REGISTRYINDEX) ? (i) : lua_gettop(L) + (i) + 1)
#endif

/* Runs f(L) with `ud` as its only argument (a light userdata) in protected
   mode, leaving the stack as it was; 0 when f returned normally. Used from
   inside libcurl callbacks, where an error must never escape: nothing
   here allocates outside the protection (5.2+: a light C function and a
   light userdata; 5.1/LuaJIT: lua_cpcall builds its closure protected). */
static inline int sid_protected_call(lua_State *L, lua_CFunction f, void *ud) {
  int top = lua_gettop(L), rc;
#if LUA_VERSION_NUM >= 502
  if (!lua_checkstack(L, 2)) return -1;   /* never raises on 5.2+ */
  lua_pushcfunction(L, f);
  lua_pushlightuserdata(L, ud);
  rc = lua_pcall(L, 1, 0, 0);
#else
  rc = lua_cpcall(L, f, ud);
#endif
  lua_settop(L, top);
  return rc;
}

/* ---- libcurl -------------------------------------------------------- */

/* True when the libcurl we compile against is at least x.y.z. */
#define SID_CURL_AT_LEAST(x, y, z) \
  (LIBCURL_VERSION_NUM >= (((x) << 16) | ((y) << 8) | (z)))

/* CURLOPT_PREREQFUNCTION (7.80) tells us the exact moment a request is
   about to go out on a connection, and lets us refuse libcurl's own
   re-send of the PUT on a reused connection that died. Without it (or
   built with -DSID_NO_PREREQ, which the specs use to test this path on a
   newer libcurl) the PUT always takes a fresh connection, so there is no
   re-send, and "sent" comes from the request bytes libcurl reports. */
#if SID_CURL_AT_LEAST(7, 80, 0) && !defined(SID_NO_PREREQ)
#define SID_HAVE_PREREQ 1
#else
#define SID_HAVE_PREREQ 0
#endif

/* CURLOPT_SUPPRESS_CONNECT_HEADERS (7.54): a proxy's CONNECT answer is
   not the server's answer; keep it out of `headers`. */
#define SID_HAVE_SUPPRESS_CONNECT SID_CURL_AT_LEAST(7, 54, 0)

/* CURLOPT_MAXFILESIZE_LARGE counts the body only; fine from 7.11. The
   module's floor is 7.61 (README). */
#if !SID_CURL_AT_LEAST(7, 61, 0)
#error "slashid needs libcurl 7.61 or later"
#endif

/* CURLOPT_PROTOCOLS_STR replaced the bitmask in 7.85. */
#define SID_HAVE_PROTOCOLS_STR SID_CURL_AT_LEAST(7, 85, 0)

/* Symbol visibility: only luaopen_* is exported from the shared object. */
#if defined(__GNUC__) && !defined(SID_STATIC_LINK)
#define SID_API __attribute__((visibility("default")))
#else
#define SID_API
#endif

#endif
