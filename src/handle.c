/*
 * handle.c - the slashid.Handle methods: the blocking perform of one
 * attempt, and the collection of an attempt that ran on a multi
 * (multi.c). The handle is a sid_transfer; where it lives is
 * transfer.c's business, what it sends request.c's, what came back
 * answer.c's.
 */
#include "slashid.h"

static int handle_new(lua_State *L) {
  sid_transfer_new(L);
  return 1;
}

static void check_idle(lua_State *L, sid_transfer *t) {
  if (t->easy == NULL) sid_raise(L, "slashid: handle is closed");
  if (t->busy || t->list)
    sid_raise(L, "slashid: handle is busy (a transfer is running on it)");
  sid_transfer_own(L, t);
}

/* The four values are built in a protected call while the handle is
   still marked busy; the mark (and the callbacks) are cleared whether or
   not building raised. The function is made once per state (registry,
   keyed by this address) and only fetched here: nothing is allocated per
   call, and nothing can fail between the transfer and the pcall. */
static int push_protected(lua_State *L) {
  sid_transfer *t = (sid_transfer *)lua_touserdata(L, 1);
  lua_remove(L, 1);
  return sid_answer_push(L, t, t->finished_rc);
}

static const char PUSH_KEY = 0;

static void prepare_push(lua_State *L, sid_transfer *t) {
  lua_pushlightuserdata(L, (void *)&PUSH_KEY);
  lua_rawget(L, LUA_REGISTRYINDEX);
  lua_pushlightuserdata(L, t);
}

/* Once the answer is built its bytes are wiped: the body held the new
   key. If building it failed (out of memory), they are kept and the
   handle still says done: handle:collect() builds it again (the engine
   does, job.lua), instead of losing a key the server has issued. The
   request stays set up either way. */
static int answer_push_busy(lua_State *L, sid_transfer *t) {
  int top = lua_gettop(L) - 2, status;   /* below the function and t */
  status = lua_pcall(L, 1, 4, 0);
  sid_transfer_release_hold(t, status == 0);
  if (status != 0) return lua_error(L);
  sid_request_end(L, t);
  sid_answer_clear(t);
  return lua_gettop(L) - top;
}

/* handle:perform(request) -> result, errors, pagination, facts */
static int handle_perform(lua_State *L) {
  sid_transfer *t = sid_transfer_check(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  check_idle(L, t);
  sid_request_set(L, 2, 1, t);
  sid_transfer_start_attempt(t);
  sid_request_attempt(L, 2, t);
  prepare_push(L, t);
  /* Held until the answer is built: the run and the answer's trace call
     the debug function, which must not reuse (or close) this handle. */
  sid_transfer_hold(t, L, CURLE_OK);
  if (t->req.setup_rc == CURLE_OK) sid_transfer_run(t);
  return answer_push_busy(L, t);
}

/* handle:collect() -> result, errors, pagination, facts, for an attempt
   started with multi:add. If it has not finished (op:cancel), it is
   detached and reported as aborted: "sent" still tells whether the
   server may have seen it. */
static int handle_collect(lua_State *L) {
  sid_transfer *t = sid_transfer_check(L, 1);
  CURLcode rc;
  if (t->easy == NULL) return sid_raise(L, "slashid: handle is closed");
  /* a debug function called while this handle builds an answer must not
     take that answer (or the one kept after a memory error) for itself */
  if (t->busy)
    return sid_raise(L, "slashid: handle is busy (a transfer is running on it)");
  sid_callbacks_off(t);            /* detaching calls no Lua */
  sid_transfer_detach(L, t);
  rc = sid_transfer_collect_rc(t);
  prepare_push(L, t);
  sid_transfer_hold(t, L, rc);     /* the answer's trace, if any */
  return answer_push_busy(L, t);
}

/* handle:discard(): an answer kept after a memory error that will not be
   collected after all is wiped, and the call's debug function let go. */
static int handle_discard(lua_State *L) {
  sid_transfer *t = sid_transfer_check(L, 1);
  if (t->busy || t->list) return 0;
  sid_transfer_forget_answer(t);
  sid_request_end(L, t);
  sid_answer_clear(t);
  return 0;
}

/* handle:rekey(request, key) -> true: the request, set up on the handle,
   now sends key (only its key header and the key kept for redaction
   changed); false: that request is not the one set up on the handle
   (nothing changed: its next use sets it up from its fields); nil: not
   done (a key outside printable ASCII; out of memory; the handle closed,
   busy or on a multi): the caller decides, and sets a request up afresh. The caller changes the request table's
   api_key field to match (request.lua). */
static int handle_rekey(lua_State *L) {
  sid_transfer *t = sid_transfer_check(L, 1);
  size_t len;
  const char *key;
  int rc;
  luaL_checktype(L, 2, LUA_TTABLE);
  key = luaL_checklstring(L, 3, &len);
  rc = sid_request_rekey(L, 2, 1, t, key, len);
  if (rc < 0) lua_pushnil(L);
  else lua_pushboolean(L, rc);
  return 1;
}

static int handle_close(lua_State *L) {
  sid_transfer *t = sid_transfer_check(L, 1);
  if (t->busy) return sid_raise(L, "slashid: handle is busy");
  sid_transfer_release(L, t);   /* off libcurl first: it holds the headers */
  sid_request_clear(L, t);
  return 0;
}

static int handle_gc(lua_State *L) {
  /* a handle being collected is not inside perform: no call holds it */
  sid_transfer_release_hold(sid_transfer_check(L, 1), 1);
  return handle_close(L);
}

static int handle_tostring(lua_State *L) {
  sid_transfer *t = sid_transfer_check(L, 1);
  lua_pushfstring(L, "slashid.Handle: %p%s", (void *)t,
                  t->easy ? "" : " (closed)");
  return 1;
}

/* handle:done() -> whether the multi reported its transfer finished
   (collect it next), even if that report never reached Lua. */
static int handle_done(lua_State *L) {
  lua_pushboolean(L, sid_transfer_check(L, 1)->finished);
  return 1;
}

static int handle_is_open(lua_State *L) {
  lua_pushboolean(L, sid_transfer_check(L, 1)->easy != NULL);
  return 1;
}

void sid_open_handle(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"perform", handle_perform},
    {"collect", handle_collect},
    {"close", handle_close},
    {"is_open", handle_is_open},
    {"done", handle_done},
    {"discard", handle_discard},
    {"rekey", handle_rekey},
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
