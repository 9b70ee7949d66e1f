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

/* lua_newuserdata became a macro over lua_newuserdatauv in 5.4; both exist. */
#define sid_newuserdata(L, sz) lua_newuserdata(L, (sz))

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

/* ---- libcurl -------------------------------------------------------- */

/* True when the libcurl we compile against is at least x.y.z. */
#define SID_CURL_AT_LEAST(x, y, z) \
  (LIBCURL_VERSION_NUM >= (((x) << 16) | ((y) << 8) | (z)))

/* CURLOPT_PREREQFUNCTION (7.80) tells us the exact moment a request is
   about to go out on a connection; without it we fall back to the
   pretransfer time, which is a coarser but still conservative signal. */
#define SID_HAVE_PREREQ SID_CURL_AT_LEAST(7, 80, 0)

/* CURLOPT_PROTOCOLS_STR replaced the bitmask in 7.85. */
#define SID_HAVE_PROTOCOLS_STR SID_CURL_AT_LEAST(7, 85, 0)

/* Symbol visibility: only luaopen_* is exported from the shared object. */
#if defined(__GNUC__) && !defined(SID_STATIC_LINK)
#define SID_API __attribute__((visibility("default")))
#else
#define SID_API
#endif

#endif
