/*
 * multi.c - the slashid.Multi userdata: a curl multi handle driving many
 * attempts at once without blocking (ops and batches). Lua decides what
 * to start and when; this file only adds handles, advances transfers,
 * waits with a bound, and reports which attempts finished.
 *
 * Lifetime: an attached handle is kept alive by a registry reference until
 * it finishes or is detached; either side's __gc detaches cleanly, in any
 * order, so dropping an op or a batch leaks no handle.
 */
#include <string.h>
#include "slashid.h"

typedef struct sid_multi {
  CURLM *multi;
  sid_handle *attached;   /* doubly linked through sid_handle.prev/next */
  int count;
  int busy;               /* inside curl_multi_perform */
} sid_multi;

static sid_multi *check_multi(lua_State *L, int idx) {
  sid_multi *m = (sid_multi *)luaL_checkudata(L, idx, SID_MULTI_MT);
  if (m->multi == NULL) sid_raise(L, "slashid: multi is closed");
  return m;
}

void sid_multi_detach(lua_State *L, sid_handle *h) {
  sid_multi *m = h->multi;
  if (m == NULL) return;
  sid_callbacks_off(&h->t);   /* removal may trace: no Lua from here */
  curl_multi_remove_handle(m->multi, h->t.easy);
  if (h->prev) h->prev->next = h->next;
  else m->attached = h->next;
  if (h->next) h->next->prev = h->prev;
  h->prev = h->next = NULL;
  h->multi = NULL;
  m->count--;
  luaL_unref(L, LUA_REGISTRYINDEX, h->self_ref);
  h->self_ref = LUA_NOREF;
}

static int multi_new(lua_State *L) {
  sid_multi *m;
  sid_global_init(L);
  m = (sid_multi *)sid_newuserdata(L, sizeof *m);
  memset(m, 0, sizeof *m);
  sid_setmetatable(L, SID_MULTI_MT);
  m->multi = curl_multi_init();
  if (m->multi == NULL) return sid_raise(L, "slashid: curl_multi_init failed");
  return 1;
}

/* multi:add(handle, request) -> true, or false when the request could not
   even be set up (then handle:collect() reports why). */
static int multi_add(lua_State *L) {
  sid_multi *m = check_multi(L, 1);
  sid_handle *h = sid_check_handle(L, 2);
  CURLMcode mc;
  luaL_checktype(L, 3, LUA_TTABLE);
  if (h->t.easy == NULL) return sid_raise(L, "slashid: handle is closed");
  if (h->busy || h->multi)
    return sid_raise(L, "slashid: handle is busy (a transfer is running on it)");
  sid_request_clear(L, &h->t);
  h->finished = 0;
  sid_request_setup(L, 3, &h->t);
  if (h->t.setup_rc != CURLE_OK) {
    h->finished = 1;
    h->finished_rc = h->t.setup_rc;
    lua_pushboolean(L, 0);
    return 1;
  }
  mc = curl_multi_add_handle(m->multi, h->t.easy);
  if (mc != CURLM_OK) {
    h->finished = 1;
    h->finished_rc = CURLE_FAILED_INIT;
    lua_pushboolean(L, 0);
    return 1;
  }
  lua_pushvalue(L, 2);
  h->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  h->multi = m;
  h->next = m->attached;
  if (m->attached) m->attached->prev = h;
  m->attached = h;
  m->count++;
  lua_pushboolean(L, 1);
  return 1;
}

/* multi:perform([last_look]) -> finished (list of handles), running.
   Never waits. Finished handles are detached; collect them next. A
   handle is marked finished before anything is allocated, so a memory
   error here loses no finished transfer (handle:done() still says so).
   last_look (op:cancel): reads what has arrived, but a request that has
   not gone out yet is stopped before its first byte. */
static int multi_perform(lua_State *L) {
  sid_multi *m = check_multi(L, 1);
  sid_handle *h, *next;
  CURLMsg *msg;
  double now;
  int running = 0, left = 0, n = 0;
  int last_look = lua_toboolean(L, 2);
  if (m->busy) return sid_raise(L, "slashid: multi is busy (re-entered "
                                    "from a debug function?)");
  if (last_look) {
#if !SID_HAVE_PREREQ
    /* nothing could stop a request that has not gone out from going out
       now: no last look without the pre-request callback */
    lua_newtable(L);
    lua_pushinteger(L, m->count);
    return 2;
#endif
  }
  lua_newtable(L);      /* before any message is taken from libcurl */
  now = sid_monotonic();
  for (h = m->attached; h; h = h->next) {
    sid_callbacks_on(&h->t, L);
    sid_deadline_before_look(&h->t, now, last_look);
  }
  m->busy = 1;
  curl_multi_perform(m->multi, &running);
  m->busy = 0;
  for (h = m->attached; h; h = h->next) sid_callbacks_off(&h->t);
  while ((msg = curl_multi_info_read(m->multi, &left)) != NULL) {
    void *p = NULL;
    if (msg->msg != CURLMSG_DONE) continue;
    curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &p);
    h = (sid_handle *)p;   /* the transfer is the handle's first member */
    if (h == NULL || h->multi != m) continue;
    h->finished = 1;
    h->finished_rc = sid_deadline_after_look(&h->t, 1, msg->data.result);
    lua_rawgeti(L, LUA_REGISTRYINDEX, h->self_ref);
    lua_rawseti(L, -2, ++n);
    sid_multi_detach(L, h);
  }
  /* Past their deadline and still without a complete answer after that
     last look: they end now, as timeouts (deadline.c). */
  for (h = m->attached; h; h = next) {
    next = h->next;
    if (!h->t.expired) {
      h->t.no_new_send = 0;
      continue;
    }
    h->finished = 1;
    h->finished_rc = sid_deadline_after_look(&h->t, 0, CURLE_OK);
    lua_rawgeti(L, LUA_REGISTRYINDEX, h->self_ref);
    lua_rawseti(L, -2, ++n);
    sid_multi_detach(L, h);
  }
  lua_pushinteger(L, running);
  return 2;
}

/* ms capped at the time left before the nearest attached deadline */
static long deadline_wait_ms(sid_multi *m, long ms) {
  sid_handle *h;
  double now = sid_monotonic();
  for (h = m->attached; h; h = h->next)
    ms = sid_deadline_wait_ms(&h->t, now, ms);
  return ms;
}

/* multi:wait(seconds): blocks until there is socket activity or the time
   is up, whichever comes first (curl_multi_poll also sleeps when nothing
   is attached, which is what a retry deadline wants). While signals are
   caught (signal.c) it also wakes at once when one arrives, and raises
   SID_INTERRUPTED once a second one has come. */
static int multi_wait(lua_State *L) {
  sid_multi *m = check_multi(L, 1);
  lua_Number s = luaL_checknumber(L, 2);
  long ms = !(s > 0) ? 0 : s > 86400 ? 86400000 : (long)(s * 1000.0 + 0.5);
  struct curl_waitfd extra;
  unsigned int nextra = 0;
  if (m->busy) return sid_raise(L, "slashid: multi is busy");
  if (sid_signal_abort()) goto interrupted;
  memset(&extra, 0, sizeof extra);
  extra.fd = sid_signal_fd();
  extra.events = CURL_WAIT_POLLIN;
  if (extra.fd >= 0) nextra = 1;
  ms = deadline_wait_ms(m, ms);   /* wake for the next request_timeout */
#if SID_CURL_AT_LEAST(7, 66, 0)
  curl_multi_poll(m->multi, nextra ? &extra : NULL, nextra, (int)ms, NULL);
#else
  curl_multi_wait(m->multi, nextra ? &extra : NULL, nextra, (int)ms, NULL);
#endif
  if (nextra && extra.revents) sid_signal_drain();
  if (sid_signal_abort()) goto interrupted;
  return 0;
interrupted:
  lua_pushliteral(L, SID_INTERRUPTED);
  return lua_error(L);
}

/* multi:timeout() -> seconds until libcurl, or an attempt's
   request_timeout, wants the multi performed; nil if neither does */
static int multi_timeout(lua_State *L) {
  sid_multi *m = check_multi(L, 1);
  long ms = -1;
  curl_multi_timeout(m->multi, &ms);
  ms = deadline_wait_ms(m, ms);
  if (ms < 0) return 0;
  lua_pushnumber(L, (lua_Number)ms / 1000.0);
  return 1;
}

static int multi_count(lua_State *L) {
  lua_pushinteger(L, check_multi(L, 1)->count);
  return 1;
}

static int multi_close(lua_State *L) {
  sid_multi *m = (sid_multi *)luaL_checkudata(L, 1, SID_MULTI_MT);
  if (m->multi == NULL) return 0;
  if (m->busy) return sid_raise(L, "slashid: multi is busy");
  while (m->attached) sid_multi_detach(L, m->attached);
  curl_multi_cleanup(m->multi);
  m->multi = NULL;
  return 0;
}

static int multi_gc(lua_State *L) {
  sid_multi *m = (sid_multi *)luaL_checkudata(L, 1, SID_MULTI_MT);
  m->busy = 0;
  return multi_close(L);
}

static int multi_tostring(lua_State *L) {
  sid_multi *m = (sid_multi *)luaL_checkudata(L, 1, SID_MULTI_MT);
  lua_pushfstring(L, "slashid.Multi: %p%s", (void *)m,
                  m->multi ? "" : " (closed)");
  return 1;
}

void sid_open_multi(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"add", multi_add},
    {"perform", multi_perform},
    {"wait", multi_wait},
    {"timeout", multi_timeout},
    {"count", multi_count},
    {"close", multi_close},
    {NULL, NULL}
  };
  static const luaL_Reg meta[] = {
    {"__gc", multi_gc},
    {"__tostring", multi_tostring},
#if SID_HAS_CLOSE
    {"__close", multi_close},
#endif
    {NULL, NULL}
  };
  sid_new_class(L, SID_MULTI_MT, meta, methods);
  lua_pushcfunction(L, multi_new);
  lua_setfield(L, -2, "multi");
}
