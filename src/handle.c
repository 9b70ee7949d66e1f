/*
 * handle.c - the slashid.Handle userdata: one libcurl easy handle kept
 * across calls (its connection cache gives keep-alive and TLS session
 * reuse), the blocking perform of one attempt, and the collection of an
 * attempt that ran on a multi (multi.c).
 */
#include <string.h>
#include "slashid.h"

sid_handle *sid_check_handle(lua_State *L, int idx) {
  return (sid_handle *)luaL_checkudata(L, idx, SID_HANDLE_MT);
}

static int handle_new(lua_State *L) {
  sid_handle *h;
  sid_global_init(L);
  h = (sid_handle *)sid_newuserdata(L, sizeof *h);
  /* Zeroed before the metatable is set: __gc on a half-built handle is
     harmless. */
  memset(h, 0, sizeof *h);
  h->t.debug_ref = LUA_NOREF;
  h->self_ref = LUA_NOREF;
  sid_setmetatable(L, SID_HANDLE_MT);
  h->t.easy = curl_easy_init();
  if (h->t.easy == NULL) return sid_raise(L, "slashid: curl_easy_init failed");
  return 1;
}

static void check_idle(lua_State *L, sid_handle *h) {
  if (h->t.easy == NULL) sid_raise(L, "slashid: handle is closed");
  if (h->busy || h->multi)
    sid_raise(L, "slashid: handle is busy (a transfer is running on it)");
}

/* The four values are built in a protected call while the handle is
   still marked busy; the mark (and the callbacks) are cleared whether or
   not building raised. The closure is made before the transfer starts,
   so that no allocation can fail between the transfer and the pcall. */
static int push_protected(lua_State *L) {
  sid_handle *h = (sid_handle *)lua_touserdata(L, 1);
  lua_remove(L, 1);
  return sid_answer_push(L, &h->t, h->finished_rc);
}

/* The function is made once per state (registry, keyed by this address)
   and only fetched here: nothing is allocated per call, and nothing can
   fail between the transfer and the pcall. */
static const char PUSH_KEY = 0;

static void prepare_push(lua_State *L, sid_handle *h) {
  lua_pushlightuserdata(L, (void *)&PUSH_KEY);
  lua_rawget(L, LUA_REGISTRYINDEX);
  lua_pushlightuserdata(L, h);
}

static int answer_push_busy(lua_State *L, sid_handle *h, CURLcode rc) {
  int top = lua_gettop(L) - 2, status;   /* below the function and h */
  h->finished_rc = rc;
  status = lua_pcall(L, 1, 4, 0);
  h->busy = 0;
  sid_callbacks_off(&h->t);
  if (status != 0) {
    sid_request_clear(L, &h->t);
    return lua_error(L);          /* out of memory building the tables */
  }
  return lua_gettop(L) - top;
}

/* handle:perform(request) -> result, errors, pagination, facts */
static int handle_perform(lua_State *L) {
  sid_handle *h = sid_check_handle(L, 1);
  CURLcode rc = CURLE_OK;
  int n;
  luaL_checktype(L, 2, LUA_TTABLE);
  check_idle(L, h);
  sid_request_clear(L, &h->t);   /* leftovers of a setup that raised */
  sid_request_setup(L, 2, &h->t);
  prepare_push(L, h);
  sid_callbacks_on(&h->t, L);
  /* Busy until the answer is built: the answer's trace calls the debug
     function, which must not reuse (or close) this handle meanwhile. */
  h->busy = 1;
  if (h->t.setup_rc == CURLE_OK) rc = curl_easy_perform(h->t.easy);
  n = answer_push_busy(L, h, rc);
  sid_request_clear(L, &h->t);
  return n;
}

/* handle:collect() -> result, errors, pagination, facts, for an attempt
   started with multi:add. If it has not finished (op:cancel), it is
   detached and reported as aborted: "sent" still tells whether the
   server may have seen it. */
static int handle_collect(lua_State *L) {
  sid_handle *h = sid_check_handle(L, 1);
  CURLcode rc;
  int n;
  if (h->t.easy == NULL) return sid_raise(L, "slashid: handle is closed");
  sid_callbacks_off(&h->t);        /* detaching calls no Lua */
  if (h->multi) sid_multi_detach(L, h);
  rc = h->finished ? h->finished_rc : CURLE_ABORTED_BY_CALLBACK;
  if (!h->finished) h->t.cancelled = 1;
  prepare_push(L, h);
  sid_callbacks_on(&h->t, L);      /* the answer's trace, if any */
  h->busy = 1;
  n = answer_push_busy(L, h, rc);
  sid_request_clear(L, &h->t);
  h->finished = 0;
  return n;
}

static int handle_close(lua_State *L) {
  sid_handle *h = sid_check_handle(L, 1);
  if (h->busy) return sid_raise(L, "slashid: handle is busy");
  sid_callbacks_off(&h->t);        /* cleanup traces nothing */
  if (h->multi) sid_multi_detach(L, h);
  sid_request_clear(L, &h->t);
  sid_buf_free(&h->t.body);
  sid_buf_free(&h->t.head);
  if (h->t.easy) {
    curl_easy_cleanup(h->t.easy);
    h->t.easy = NULL;
  }
  return 0;
}

static int handle_gc(lua_State *L) {
  sid_handle *h = sid_check_handle(L, 1);
  h->busy = 0;    /* a collected handle cannot be inside perform */
  return handle_close(L);
}

static int handle_tostring(lua_State *L) {
  sid_handle *h = sid_check_handle(L, 1);
  lua_pushfstring(L, "slashid.Handle: %p%s", (void *)h,
                  h->t.easy ? "" : " (closed)");
  return 1;
}

/* handle:done() -> whether the multi reported its transfer finished
   (collect it next), even if that report never reached Lua. */
static int handle_done(lua_State *L) {
  lua_pushboolean(L, sid_check_handle(L, 1)->finished);
  return 1;
}

static int handle_is_open(lua_State *L) {
  lua_pushboolean(L, sid_check_handle(L, 1)->t.easy != NULL);
  return 1;
}

void sid_open_handle(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"perform", handle_perform},
    {"collect", handle_collect},
    {"close", handle_close},
    {"is_open", handle_is_open},
    {"done", handle_done},
    {NULL, NULL}
  };
  static const luaL_Reg meta[] = {
    {"__gc", handle_gc},
    {"__tostring", handle_tostring},
#if SID_HAS_CLOSE
    {"__close", handle_close},
#endif
    {NULL, NULL}
  };
  sid_new_class(L, SID_HANDLE_MT, meta, methods);
  lua_pushlightuserdata(L, (void *)&PUSH_KEY);
  lua_pushcfunction(L, push_protected);
  lua_rawset(L, LUA_REGISTRYINDEX);
  lua_pushcfunction(L, handle_new);
  lua_setfield(L, -2, "handle");
}
