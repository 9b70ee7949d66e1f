/*
 * clock.c - time for the retry policy: a monotonic clock (os.clock is CPU
 * time, os.time whole seconds), a sleep, jitter that does not touch the
 * host's math.random state, and HTTP-date parsing for Retry-After
 * (curl_getdate: libcurl already knows the three date formats).
 */
#include <errno.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>
#include "slashid.h"

static int clock_now(lua_State *L) {
  lua_pushnumber(L, (lua_Number)sid_monotonic());   /* deadline.c's clock */
  return 1;
}

static int clock_time(lua_State *L) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
  return 1;
}

static int clock_sleep(lua_State *L) {
  lua_Number s = luaL_checknumber(L, 1);
  struct timespec ts;
  if (!(s > 0)) return 0;
  if (s > 86400) s = 86400;
  ts.tv_sec = (time_t)s;
  ts.tv_nsec = (long)((s - (lua_Number)ts.tv_sec) * 1e9);
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
  return 0;
}

/* xorshift64*, seeded per state from the clock and the pid: only jitter,
   so it needs spread between processes, not unpredictability. */
static int clock_random(lua_State *L) {
  uint64_t *s = (uint64_t *)lua_touserdata(L, lua_upvalueindex(1));
  uint64_t x = *s;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  *s = x;
  lua_pushnumber(L, (lua_Number)((x * 2685821657736338717ULL) >> 11) /
                    9007199254740992.0);
  return 1;
}

static int clock_http_date(lua_State *L) {
  const char *s = luaL_checkstring(L, 1);
  time_t t = curl_getdate(s, NULL);
  if (t == (time_t)-1) return 0;
  lua_pushnumber(L, (lua_Number)t);
  return 1;
}

void sid_open_clock(lua_State *L) {
  static const luaL_Reg functions[] = {
    {"now", clock_now},
    {"time", clock_time},
    {"sleep", clock_sleep},
    {"http_date", clock_http_date},
    {NULL, NULL}
  };
  struct timespec ts;
  uint64_t *seed;
  sid_setfuncs(L, functions);
  clock_gettime(CLOCK_REALTIME, &ts);
  seed = (uint64_t *)sid_newuserdata(L, sizeof *seed);
  *seed = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)ts.tv_sec ^
          ((uint64_t)getpid() << 40) ^ (uint64_t)(uintptr_t)seed;
  if (*seed == 0) *seed = 0x9E3779B97F4A7C15ULL;
  lua_pushcclosure(L, clock_random, 1);
  lua_setfield(L, -2, "random");
}
