/*
 * core.c - luaopen_slashid_core: registers the parts (one sid_open_* per
 * file; libcurl's own set-up waits for the first handle: global.c), and
 * core.pcall (a pcall no coroutine can yield
 * across). The Lua layer (slashid.lua) is the public face; this module is
 * its engine.
 */
#include "slashid.h"

/* core.pcall(f, ...) -> true, ... | false, err: pcall that no coroutine
   can yield across (a C function calling lua_pcall without a
   continuation: a yield inside raises instead). A batch calls the
   caller's functions (its iterator, on_result, on_progress) through it:
   suspended there, a batch could be abandoned by its host with keys the
   server issued still in flight. The yield becomes that callback's error,
   reported as such, and the batch finishes what it started. */
static int core_pcall(lua_State *L) {
  int status;
  luaL_checkany(L, 1);
  status = lua_pcall(L, lua_gettop(L) - 1, LUA_MULTRET, 0);
  luaL_checkstack(L, 1, "slashid: core.pcall");
  lua_pushboolean(L, status == 0);
  lua_insert(L, 1);
  return lua_gettop(L);
}

SID_API int luaopen_slashid_core(lua_State *L) {
  curl_version_info_data *info;
  sid_json_init(L);

  lua_newtable(L);
  sid_open_handle(L);
  sid_open_clock(L);
  sid_open_keyfile(L);
  sid_open_multi(L);
  sid_open_signal(L);
  sid_open_stdfd(L);
  sid_open_files(L);
  sid_open_idset(L);
  sid_open_journal(L);
  sid_open_checksum(L);
  sid_open_output(L);
  sid_open_child(L);
  lua_pushcfunction(L, core_pcall);
  lua_setfield(L, -2, "pcall");

  info = curl_version_info(CURLVERSION_NOW);
  lua_pushstring(L, info->version);
  lua_setfield(L, -2, "curl_version");
  lua_pushstring(L, info->ssl_version ? info->ssl_version : "");
  lua_setfield(L, -2, "ssl_version");
  lua_pushboolean(L, (info->features & CURL_VERSION_HTTP2) != 0);
  lua_setfield(L, -2, "http2");
  return 1;
}
