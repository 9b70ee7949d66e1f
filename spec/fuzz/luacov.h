/*
 * luacov.h - coverage feedback from Lua code for libFuzzer. The interpreter
 * (liblua) is not instrumented, so libFuzzer cannot see which lines of
 * the Lua files of lua/slashid/ an input reached. A line hook fills libFuzzer's "extra
 * counters" section with (previous line, line) edges of those files only,
 * which gives the fuzzer the same kind of signal as -fsanitize=fuzzer does
 * for C. Included by one harness each; not part of the module.
 */
#ifndef SLASHID_FUZZ_LUACOV_H
#define SLASHID_FUZZ_LUACOV_H

#include <stdint.h>
#include <string.h>
#include <lua.h>

#define LUACOV_SIZE (1u << 14)

__attribute__((section("__libfuzzer_extra_counters"), used))
static uint8_t luacov_counters[LUACOV_SIZE];
static uintptr_t luacov_prev;

static void luacov_hook(lua_State *L, lua_Debug *ar) {
  uintptr_t here;
  if (!lua_getinfo(L, "S", ar) || ar->source == NULL ||
      strstr(ar->source, "slashid/") == NULL)
    return;
  /* The source string is interned: its address names the file. */
  here = ((uintptr_t)ar->source >> 4) * 2654435761u + (uintptr_t)ar->currentline;
  luacov_counters[(here ^ luacov_prev) & (LUACOV_SIZE - 1)]++;
  luacov_prev = here >> 1;
}

static void luacov_start(lua_State *L) {
  lua_sethook(L, luacov_hook, LUA_MASKLINE, 0);
}

#endif
