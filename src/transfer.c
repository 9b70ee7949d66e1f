/*
 * transfer.c - where a transfer lives and dies. A sid_transfer is the
 * slashid.Handle userdata: one libcurl easy handle kept across calls (its
 * connection cache gives keep-alive and TLS session reuse) and the state
 * of the request set up on it. It is in exactly one of three places:
 *
 *   idle       nothing runs; request.c may set a request up on it
 *   running    a blocking perform drives it on its own multi (busy)
 *   attached   on a slashid.Multi's list (ops, batches), kept alive by a
 *              registry reference until it finishes or is detached
 *
 * Only this file moves it between them. Its callbacks may call into Lua
 * only inside a window opened by sid_callbacks_on and closed by
 * sid_callbacks_off (trace.c says why). libcurl's CURLOPT_PRIVATE is the
 * object itself, so a multi finds it from the easy handle it reports.
 */
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include "slashid.h"

void sid_callbacks_on(sid_transfer *t, lua_State *L) { t->L = L; }
void sid_callbacks_off(sid_transfer *t) { t->L = NULL; }

/* ---- an attempt's life: only these functions (and on_prereq below)
   write busy, finished, finished_rc and cancelled. */

/* A new attempt begins: nothing finished, nothing cancelled. */
void sid_transfer_start_attempt(sid_transfer *t) {
  t->finished = 0;
  t->cancelled = 0;
  t->errbuf[0] = '\0';
}

/* The attempt is over with `rc` (a multi reported it, or it could not
   even start); its answer waits for handle:collect. */
void sid_transfer_finish(sid_transfer *t, CURLcode rc) {
  t->finished = 1;
  t->finished_rc = rc;
}

/* handle:collect's code: the finished attempt's, or, when it had not
   finished (op:cancel took it), an abort, and the attempt is cancelled. */
CURLcode sid_transfer_collect_rc(sid_transfer *t) {
  if (t->finished) return t->finished_rc;
  t->cancelled = 1;
  return CURLE_ABORTED_BY_CALLBACK;
}

/* A call holds the handle until the answer it drives is built: a debug
   function called meanwhile must not reuse, collect or close it. */
void sid_transfer_hold(sid_transfer *t, lua_State *L, CURLcode rc) {
  t->busy = 1;
  t->finished_rc = rc;
  sid_callbacks_on(t, L);
}

/* The answer was built (`built`), or building it raised: then its bytes
   are kept and the handle still says finished, so that handle:collect
   builds it again (a key the server issued is never dropped). */
void sid_transfer_release_hold(sid_transfer *t, int built) {
  t->busy = 0;
  sid_callbacks_off(t);
  t->finished = !built;
}

/* handle:discard: a kept answer that will not be collected after all. */
void sid_transfer_forget_answer(sid_transfer *t) {
  t->finished = 0;
}

sid_transfer *sid_transfer_check(lua_State *L, int idx) {
  return (sid_transfer *)luaL_checkudata(L, idx, SID_HANDLE_MT);
}

sid_transfer *sid_transfer_of(CURL *easy) {
  void *p = NULL;
  curl_easy_getinfo(easy, CURLINFO_PRIVATE, &p);
  return (sid_transfer *)p;
}

/* Pushes a new handle. Zeroed before the metatable is set: __gc on a
   half-built handle is harmless. */
sid_transfer *sid_transfer_new(lua_State *L) {
  sid_transfer *t;
  sid_global_init(L);
  t = (sid_transfer *)sid_newuserdata(L, sizeof *t);
  memset(t, 0, sizeof *t);
  sid_trace_init(t);
  t->self_ref = LUA_NOREF;
  t->pid = (long)getpid();
  sid_setmetatable(L, SID_HANDLE_MT);
  t->easy = curl_easy_init();
  if (t->easy == NULL) sid_raise(L, "slashid: curl_easy_init failed");
  return t;
}

/* A handle made before fork, used in the child (a pre-fork server calling
   slashid.rotate_key in a worker): its kept connections are the parent's
   too, and two processes on one TLS session corrupt it. The child leaves
   that libcurl state alone (never cleaned up here: that could end the
   parent's sessions) and starts afresh; the request is set up again on
   the new easy handle. */
void sid_transfer_own(lua_State *L, sid_transfer *t) {
  if (t->pid == (long)getpid()) return;
  t->easy = curl_easy_init();
  t->own_multi = NULL;
  t->pid = (long)getpid();
  sid_request_forget(t);       /* to be set up on the new easy handle */
  if (t->easy == NULL) sid_raise(L, "slashid: curl_easy_init failed");
}

#define FIXED(t, opt, val) \
  do { \
    CURLcode rc_ = curl_easy_setopt((t)->easy, opt, val); \
    if (rc_ != CURLE_OK && rc == CURLE_OK) rc = rc_; \
  } while (0)

/* CURLOPT_SOCKOPTFUNCTION: every socket libcurl makes is close-on-exec,
   so that a program the host starts while a rotation is in flight does
   not inherit the connection (over plain http it could read the answer,
   the new key). No Lua here (trace.c). */
static int on_sockopt(void *ud, curl_socket_t s, curlsocktype purpose) {
  (void)ud;
  (void)purpose;
  (void)fcntl((int)s, F_SETFD, FD_CLOEXEC);
  return CURL_SOCKOPT_OK;
}

#if SID_HAVE_PREREQ
/* libcurl retries a request by itself when a reused connection turns out
   dead before any answer byte. The server may have acted on the first
   one (and killed the key it carried), so a second send is refused: the
   attempt then ends as "unknown", never as a blind resend. */
static int on_prereq(void *ud, char *primary_ip, char *local_ip,
                     int primary_port, int local_port) {
  sid_transfer *t = (sid_transfer *)ud;
  (void)primary_ip; (void)local_ip; (void)primary_port; (void)local_port;
  if (t->no_new_send) {       /* a last look: nothing new goes out */
    if (!t->expired) t->cancelled = 1;   /* else a timeout (deadline.c) */
    return CURL_PREREQFUNC_ABORT;
  }
  t->ans.requests_sent++;
  /* A GET (check_key) changes nothing: libcurl may send it again, for
     instance after an HTTP/2 REFUSED_STREAM, which the server never
     processed. */
  return t->ans.requests_sent > 1 && t->req.single_send ? CURL_PREREQFUNC_ABORT
                                                : CURL_PREREQFUNC_OK;
}
#endif

/* A clean slate for a new request (the connection cache, TLS sessions
   and DNS cache survive curl_easy_reset; stale options do not), then the
   options every request has. */
int sid_transfer_reset(sid_transfer *t) {
  CURLcode rc = CURLE_OK;
  curl_easy_reset(t->easy);
  FIXED(t, CURLOPT_PRIVATE, (void *)t);
  FIXED(t, CURLOPT_ERRORBUFFER, t->errbuf);
  FIXED(t, CURLOPT_NOSIGNAL, 1L);
  FIXED(t, CURLOPT_FOLLOWLOCATION, 0L);
#if SID_HAVE_PROTOCOLS_STR
  FIXED(t, CURLOPT_PROTOCOLS_STR, "http,https");
#else
  FIXED(t, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
  FIXED(t, CURLOPT_SSL_VERIFYPEER, 1L);
  FIXED(t, CURLOPT_SSL_VERIFYHOST, 2L);
#if SID_HAVE_SUPPRESS_CONNECT
  FIXED(t, CURLOPT_SUPPRESS_CONNECT_HEADERS, 1L);
#endif
  FIXED(t, CURLOPT_SOCKOPTFUNCTION, on_sockopt);
  FIXED(t, CURLOPT_WRITEFUNCTION, sid_answer_on_body);
  FIXED(t, CURLOPT_WRITEDATA, (void *)t);
  FIXED(t, CURLOPT_HEADERFUNCTION, sid_answer_on_header);
  FIXED(t, CURLOPT_HEADERDATA, (void *)t);
#if SID_HAVE_PREREQ
  FIXED(t, CURLOPT_PREREQFUNCTION, on_prereq);
  FIXED(t, CURLOPT_PREREQDATA, (void *)t);
#endif
  return (int)rc;
}

/* The blocking perform drives the attempt on the handle's own multi
   instead of curl_easy_perform, so that request_timeout is checked after
   each look at the socket (deadline.c): a process paused past it keeps
   an answer that arrived meanwhile. The multi is kept with the handle:
   its connection cache is what gives keep-alive between calls. */
CURLcode sid_transfer_run(sid_transfer *t) {
  CURLcode rc = CURLE_OK;
  int finished = 0;
  /* the code its answer is built from: set on every way out */
  if (t->own_multi == NULL && (t->own_multi = curl_multi_init()) == NULL)
    return t->finished_rc = CURLE_OUT_OF_MEMORY;
  if (curl_multi_add_handle(t->own_multi, t->easy) != CURLM_OK)
    return t->finished_rc = CURLE_FAILED_INIT;
  for (;;) {
    CURLMsg *msg;
    int running = 0, left = 0, expired;
    long ms = -1;
    expired = sid_deadline_before_look(t, sid_monotonic(), 0);
    curl_multi_perform(t->own_multi, &running);
    while ((msg = curl_multi_info_read(t->own_multi, &left)) != NULL)
      if (msg->msg == CURLMSG_DONE && msg->easy_handle == t->easy) {
        finished = 1;
        rc = msg->data.result;
      }
    if (finished || expired) break;
    curl_multi_timeout(t->own_multi, &ms);
    ms = sid_deadline_wait_ms(t, sid_monotonic(), ms);
    if (ms < 0 || ms > 1000) ms = 1000;
#if SID_CURL_AT_LEAST(7, 66, 0)
    curl_multi_poll(t->own_multi, NULL, 0, (int)ms, NULL);
#else
    curl_multi_wait(t->own_multi, NULL, 0, (int)ms, NULL);
#endif
  }
  rc = sid_deadline_after_look(t, finished, rc);
  curl_multi_remove_handle(t->own_multi, t->easy);
  return t->finished_rc = rc;
}

/* Onto a multi's list; the userdata at idx (t itself) is kept alive by a
   registry reference until it is detached. The reference is taken first:
   luaL_ref may raise (out of memory), and a raise after the handle was
   added would leave a request going out that no list knows of. */
CURLMcode sid_transfer_attach(lua_State *L, sid_transfer *t, int idx,
                              sid_transfer_list *list) {
  CURLMcode mc;
  lua_pushvalue(L, idx);
  t->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  mc = curl_multi_add_handle(list->multi, t->easy);
  if (mc != CURLM_OK) {
    luaL_unref(L, LUA_REGISTRYINDEX, t->self_ref);
    t->self_ref = LUA_NOREF;
    return mc;
  }
  t->list = list;
  t->prev = NULL;
  t->next = list->first;
  if (list->first) list->first->prev = t;
  list->first = t;
  list->count++;
  return CURLM_OK;
}

/* Off its multi's list without telling libcurl (a forked child must leave
   the parent's libcurl state alone). */
void sid_transfer_forget(lua_State *L, sid_transfer *t) {
  sid_transfer_list *list = t->list;
  if (list == NULL) return;
  if (t->prev) t->prev->next = t->next;
  else list->first = t->next;
  if (t->next) t->next->prev = t->prev;
  t->prev = t->next = NULL;
  t->list = NULL;
  list->count--;
  luaL_unref(L, LUA_REGISTRYINDEX, t->self_ref);
  t->self_ref = LUA_NOREF;
}

void sid_transfer_detach(lua_State *L, sid_transfer *t) {
  if (t->list == NULL) return;
  sid_callbacks_off(t);       /* removal may trace: no Lua from here */
  curl_multi_remove_handle(t->list->multi, t->easy);
  sid_transfer_forget(L, t);
}

/* The end: off any multi, libcurl's state released (unless it is a
   forked parent's, left alone), buffers wiped and freed. The request
   (headers, key copies) is request.c's to drop first. */
void sid_transfer_release(lua_State *L, sid_transfer *t) {
  sid_callbacks_off(t);        /* cleanup traces nothing */
  if (t->pid != (long)getpid()) {   /* the parent's state: left alone */
    sid_transfer_forget(L, t);
    t->own_multi = NULL;
    t->easy = NULL;
  }
  sid_transfer_detach(L, t);
  sid_answer_free(t);
  if (t->own_multi) {
    curl_multi_cleanup(t->own_multi);
    t->own_multi = NULL;
  }
  if (t->easy) {
    curl_easy_cleanup(t->easy);
    t->easy = NULL;
  }
}
