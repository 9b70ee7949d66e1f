/*
 * class.c - a userdata type in the registry: one metatable per type,
 * shared by slashid.Handle and slashid.Multi.
 */
#include "slashid.h"

/* A userdata type: its metatable in the registry under `name` (also its
   __name, for error messages), with `meta` and an __index of `methods`. */
void sid_new_class(lua_State *L, const char *name, const luaL_Reg *meta,
                   const luaL_Reg *methods) {
  luaL_newmetatable(L, name);
  sid_setfuncs(L, meta);
  lua_newtable(L);
  sid_setfuncs(L, methods);
  lua_setfield(L, -2, "__index");
  lua_pushstring(L, name);
  lua_setfield(L, -2, "__name");
  lua_pop(L, 1);
}
