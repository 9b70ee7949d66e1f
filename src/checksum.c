/*
 * checksum.c - the journal's record checksums: CRC-32 (IEEE, the one
 * zlib, gzip and PNG use) as 8 lowercase hex digits, so a torn or garbled
 * line is told from a whole one, and 32-bit FNV-1a, a cheap hash of short
 * strings. Lua 5.1 has no bit operations at all, and a byte loop in Lua
 * would cost a journal line more than its write: hence C.
 */
#include <stdint.h>
#include "slashid.h"

/* CRC-32 four bits at a time: a 16-entry table of the reflected
   polynomial 0xEDB88320, constant (no table to build at first use, so
   nothing to guard between threads or states). Two look-ups per byte run
   at hundreds of MB/s, far more than a journal's few lines per key. */
static const uint32_t crc_nibble[16] = {
  0x00000000u, 0x1db71064u, 0x3b6e20c8u, 0x26d930acu,
  0x76dc4190u, 0x6b6b51f4u, 0x4db26158u, 0x5005713cu,
  0xedb88320u, 0xf00f9344u, 0xd6d6a3e8u, 0xcb61b38cu,
  0x9b64c2b0u, 0x86d3d2d4u, 0xa00ae278u, 0xbdbdf21cu
};

static uint32_t crc32_ieee(const unsigned char *p, size_t n) {
  uint32_t crc = 0xffffffffu;
  while (n--) {
    crc ^= *p++;
    crc = (crc >> 4) ^ crc_nibble[crc & 15];
    crc = (crc >> 4) ^ crc_nibble[crc & 15];
  }
  return crc ^ 0xffffffffu;
}

/* core.crc32(s) -> 8 lowercase hex digits ("cbf43926" for "123456789") */
static int checksum_crc32(lua_State *L) {
  static const char hex[] = "0123456789abcdef";
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  uint32_t crc = crc32_ieee((const unsigned char *)s, n);
  char out[8];
  int i;
  for (i = 7; i >= 0; i--) {
    out[i] = hex[crc & 15];
    crc >>= 4;
  }
  lua_pushlstring(L, out, sizeof out);
  return 1;
}

/* core.fnv1a32(s) -> the 32-bit FNV-1a hash, 0 .. 2^32-1: an integer on
   Lua 5.3+ (unless built with 32-bit integers), a number (exact: it fits
   a double) on 5.1/5.2/LuaJIT. */
static int checksum_fnv1a32(lua_State *L) {
  size_t n;
  const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &n);
  uint32_t h = 2166136261u;
  while (n--) {
    h ^= *s++;
    h *= 16777619u;
  }
#if SID_HAS_INTEGERS && LUA_MAXINTEGER >= 4294967295
  lua_pushinteger(L, (lua_Integer)h);
#else
  lua_pushnumber(L, (lua_Number)h);
#endif
  return 1;
}

void sid_open_checksum(lua_State *L) {
  static const luaL_Reg functions[] = {
    {"crc32", checksum_crc32},
    {"fnv1a32", checksum_fnv1a32},
    {NULL, NULL}
  };
  sid_setfuncs(L, functions);
}
