/*
 * handle.c - the slashid.Handle userdata: one libcurl easy handle kept
 * across calls (its connection cache gives keep-alive and TLS session
 * reuse), the blocking perform of one attempt, and the collection of an
 * attempt that ran on a multi (multi.c).
 */
#include <string.h>
#include <unistd.h>
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
  h->pid = (long)getpid();
  sid_setmetatable(L, SID_HANDLE_MT);
  h->t.easy = curl_easy_init();
  if (h->t.easy == NULL) return sid_raise(L, "slashid: curl_easy_init failed");
  return 1;
}

static void check_idle(lua_State *L, sid_handle *h) {
  if (h->t.easy == NULL) sid_raise(L, "slashid: handle is closed");
  if (h->busy || h->multi)
    sid_raise(L, "slashid: handle is busy (a transfer is running on it)");
  sid_handle_own(L, h);
}

/* A handle made before fork, used in the child (a pre-fork server calling
   slashid.rotate_key in a worker): its kept connections are the parent's
   too, and two processes on one TLS session corrupt it. The child leaves
   that libcurl state alone (never cleaned up here: that could end the
   parent's sessions) and starts afresh. */
void sid_handle_own(lua_State *L, sid_handle *h) {
  if (h->pid == (long)getpid()) return;
  h->t.easy = curl_easy_init();
  h->own_multi = NULL;
  h->pid = (long)getpid();
  if (h->t.easy == NULL) sid_raise(L, "slashid: curl_easy_init failed");
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

/* The blocking perform drives the attempt on the handle's own multi
   instead of curl_easy_perform, so that request_timeout is checked after
   each look at the socket (deadline.c): a process paused past it keeps
   an answer that arrived meanwhile. The multi is kept with the handle:
   its connection cache is what gives keep-alive between calls. */
static CURLcode perform_blocking(sid_handle *h) {
  sid_transfer *t = &h->t;
  CURLcode rc = CURLE_OK;
  int finished = 0;
  if (h->own_multi == NULL && (h->own_multi = curl_multi_init()) == NULL)
    return CURLE_OUT_OF_MEMORY;
  if (curl_multi_add_handle(h->own_multi, t->easy) != CURLM_OK)
    return CURLE_FAILED_INIT;
  for (;;) {
    CURLMsg *msg;
    int running = 0, left = 0, expired;
    long ms = -1;
    expired = sid_deadline_before_look(t, sid_monotonic(), 0);
    curl_multi_perform(h->own_multi, &running);
    while ((msg = curl_multi_info_read(h->own_multi, &left)) != NULL)
      if (msg->msg == CURLMSG_DONE && msg->easy_handle == t->easy) {
        finished = 1;
        rc = msg->data.result;
      }
    if (finished || expired) break;
    curl_multi_timeout(h->own_multi, &ms);
    ms = sid_deadline_wait_ms(t, sid_monotonic(), ms);
    if (ms < 0 || ms > 1000) ms = 1000;
#if SID_CURL_AT_LEAST(7, 66, 0)
    curl_multi_poll(h->own_multi, NULL, 0, (int)ms, NULL);
#else
    curl_multi_wait(h->own_multi, NULL, 0, (int)ms, NULL);
#endif
  }
  rc = sid_deadline_after_look(t, finished, rc);
  curl_multi_remove_handle(h->own_multi, t->easy);
  return rc;
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
  if (h->t.setup_rc == CURLE_OK) rc = perform_blocking(h);
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
  if (h->pid != (long)getpid()) {   /* the parent's state: left alone */
    sid_multi_forget(L, h);
    h->own_multi = NULL;
    h->t.easy = NULL;
  }
  if (h->multi) sid_multi_detach(L, h);
  sid_request_clear(L, &h->t);
  sid_buf_free(&h->t.body);
  sid_buf_free(&h->t.head);
  if (h->own_multi) {
    curl_multi_cleanup(h->own_multi);
    h->own_multi = NULL;
  }
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
