/*
 * idset.c - a set of strings kept as 64-bit hashes (FNV-1a), 16 bytes an
 * entry at most and no Lua object per entry: what the journal needs to
 * send an organization at most once while memory stays flat enough for
 * any number of organizations. A hash seen before says "maybe": the
 * caller confirms against the journal's own records (a collision among a
 * million IDs is a chance in ten million).
 *
 *   core.idset() -> set;  set:add(s) -> true (new) | false (seen);
 *   set:has(s) -> boolean;  set:count() -> n
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "slashid.h"

#define IDSET_CLASS "slashid.idset"

typedef struct {
  uint64_t *slots;     /* open addressing; 0 marks a free slot */
  size_t cap, count;   /* cap: a power of two */
} idset;

static uint64_t hash64(const char *s, size_t n) {
  uint64_t h = 14695981039346656037ULL;
  size_t i;
  for (i = 0; i < n; i++) {
    h ^= (unsigned char)s[i];
    h *= 1099511628211ULL;
  }
  return h ? h : 1;    /* 0 is the free mark */
}

static idset *check_set(lua_State *L) {
  return (idset *)luaL_checkudata(L, 1, IDSET_CLASS);
}

/* The slot holding h, or the free one where it would go. */
static size_t find(const idset *set, uint64_t h) {
  size_t i = (size_t)h & (set->cap - 1);
  while (set->slots[i] != 0 && set->slots[i] != h) i = (i + 1) & (set->cap - 1);
  return i;
}

/* Doubles the table (at half full): 0, or -1 when memory ran out (the
   set is unchanged). */
static int grow(idset *set) {
  size_t cap = set->cap ? set->cap * 2 : 1024, i;
  uint64_t *old = set->slots, *slots = (uint64_t *)calloc(cap, sizeof *slots);
  size_t old_cap = set->cap;
  if (slots == NULL) return -1;
  set->slots = slots;
  set->cap = cap;
  for (i = 0; i < old_cap; i++)
    if (old[i]) set->slots[find(set, old[i])] = old[i];
  free(old);
  return 0;
}

static int idset_add(lua_State *L) {
  idset *set = check_set(L);
  size_t n;
  const char *s = luaL_checklstring(L, 2, &n);
  uint64_t h = hash64(s, n);
  size_t i;
  if ((set->count + 1) * 2 > set->cap && grow(set) != 0)
    return luaL_error(L, "not enough memory");
  i = find(set, h);
  if (set->slots[i] == h) {
    lua_pushboolean(L, 0);
    return 1;
  }
  set->slots[i] = h;
  set->count++;
  lua_pushboolean(L, 1);
  return 1;
}

static int idset_has(lua_State *L) {
  idset *set = check_set(L);
  size_t n;
  const char *s = luaL_checklstring(L, 2, &n);
  lua_pushboolean(L, set->cap > 0 && set->slots[find(set, hash64(s, n))] != 0);
  return 1;
}

static int idset_count(lua_State *L) {
  lua_pushnumber(L, (lua_Number)check_set(L)->count);
  return 1;
}

static int idset_gc(lua_State *L) {
  idset *set = check_set(L);
  free(set->slots);
  set->slots = NULL;
  set->cap = set->count = 0;
  return 0;
}

static int idset_new(lua_State *L) {
  idset *set = (idset *)lua_newuserdata(L, sizeof *set);
  memset(set, 0, sizeof *set);
  luaL_getmetatable(L, IDSET_CLASS);
  lua_setmetatable(L, -2);
  return 1;
}

void sid_open_idset(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"add", idset_add}, {"has", idset_has}, {"count", idset_count}, {NULL, NULL}
  };
  static const luaL_Reg meta[] = { {"__gc", idset_gc}, {NULL, NULL} };
  sid_new_class(L, IDSET_CLASS, meta, methods);
  lua_pushcfunction(L, idset_new);
  lua_setfield(L, -2, "idset");
}
