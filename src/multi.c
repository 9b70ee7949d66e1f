/*
 * multi.c - the slashid.Multi userdata: a curl multi handle driving many
 * attempts at once without blocking (ops and batches). Lua decides what
 * to start and when; this file only adds handles, advances transfers,
 * waits with a bound, and reports which attempts finished.
 *
 * Lifetime: an attached handle is kept alive by a registry reference until
 * it finishes or is detached; either side's __gc detaches cleanly, in any
 * order, so dropping an op or a batch leaks no handle.
 *
 * Pollable (ops: core.multi(true)): the multi has a descriptor
 * (pollset.c) that libcurl's CURLMOPT_SOCKETFUNCTION fills with the
 * sockets it watches, and CURLMOPT_TIMERFUNCTION tells when libcurl wants
 * to run anyway; both callbacks only note things down, never call Lua.
 * perform is then curl_multi_socket_all, wait sleeps on the descriptor and
 * timeout reads the timer. Both are set before the first transfer is
 * added: libcurl announces a socket once, so a descriptor made later
 * could miss one. Batches are not pollable: their multi is driven as
 * before (curl_multi_perform, curl_multi_poll).
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include "slashid.h"

/* curl_multi_socket_all is deprecated "for performance reasons" (it looks
   at every transfer, not only the ready ones) with no plan to remove it;
   headers before 7.87 have no deprecation marks and no macro. */
#ifndef CURL_IGNORE_DEPRECATION
#define CURL_IGNORE_DEPRECATION(statements) statements
#endif

typedef struct sid_multi {
  sid_transfer_list list; /* libcurl's multi and the transfers on it */
  int busy;               /* inside curl_multi_perform */
  int pollfd;             /* pollset.c's descriptor, or -1 */
  int pollfd_err;         /* why a pollable multi has none (errno) */
  int pollfd_closed;      /* collected: never made again */
  int watch_failed;       /* the kernel refused a socket: it cannot wake */
  double timer_due;       /* when libcurl wants to run (monotonic), < 0 none */
  int marker;             /* tells our set from any other (pollset.c) */
  int ready;              /* the set is readable for good: the op is over */
  int pollfd_lost;        /* the number no longer names our set */
  long pid;               /* the process that made it (fork: see below) */
} sid_multi;

/* Whether pollfd is still our set. A host that closed the number (and
   maybe got it back for a file of its own) must not see us poll, change
   or close that file: the set is then forgotten, never closed, and the
   multi waits the way batches do (curl_multi_poll). */
static int pollfd_ok(sid_multi *m) {
  if (m->pollfd < 0) return 0;
  if (sid_pollset_is(m->pollfd, m->marker, m->ready)) return 1;
  m->pollfd = -1;
  m->pollfd_lost = 1;
  return 0;
}

/* After fork the child shares the parent's sockets and sets: a child
   that drove, or cleaned up, the parent's transfers would steal their
   answers or unregister their sockets from the parent's set. */
static int foreign(long pid) { return pid != (long)getpid(); }

static sid_multi *check_multi(lua_State *L, int idx) {
  sid_multi *m = (sid_multi *)luaL_checkudata(L, idx, SID_MULTI_MT);
  if (m->list.multi != NULL && foreign(m->pid))
    sid_raise(L, "slashid: this operation belongs to the process that "
                 "started it (a forked child cannot drive or cancel it)");
  if (m->list.multi == NULL) sid_raise(L, "slashid: multi is closed");
  return m;
}

/* CURLMOPT_SOCKETFUNCTION: libcurl says which sockets to watch. Nothing
   but the descriptor changes here (no Lua: trace.c). A change the kernel
   refuses cannot fail the transfer: the loop is woken often instead. */
static int on_socket(CURL *easy, curl_socket_t s, int what, void *ud,
                     void *sockp) {
  sid_multi *m = (sid_multi *)ud;
  (void)easy;
  (void)sockp;
  if (pollfd_ok(m) && sid_pollset_watch(m->pollfd, s, what) != 0 &&
      what != CURL_POLL_REMOVE)
    m->watch_failed = 1;
  return 0;
}

/* CURLMOPT_TIMERFUNCTION: when libcurl wants to run, ms from now (-1:
   never). libcurl rounds its wish down to the millisecond: one more, or a
   loop woken just before libcurl's own clock reaches the timer would find
   nothing to do and spin until it does. */
static int on_timer(CURLM *multi, long ms, void *ud) {
  sid_multi *m = (sid_multi *)ud;
  (void)multi;
  m->timer_due = ms < 0 ? -1
               : sid_monotonic() + (ms > 0 ? (double)(ms + 1) / 1000.0 : 0);
  return 0;
}

/* Makes the descriptor (errno kept on failure: the op then works
   without one, through libcurl's own wait); on an open multi, before any
   transfer, the callbacks that fill it. */
static void open_pollset(sid_multi *m) {
  m->pollfd = sid_pollset_open(&m->marker);
  m->pollfd_err = m->pollfd < 0 ? errno : 0;
  if (m->pollfd < 0) return;
  if (m->list.multi == NULL) {         /* made after the op was over: ready */
    m->ready = sid_pollset_ready(m->pollfd, &m->marker) == 0;
    return;
  }
  curl_multi_setopt(m->list.multi, CURLMOPT_SOCKETDATA, (void *)m);
  curl_multi_setopt(m->list.multi, CURLMOPT_SOCKETFUNCTION, on_socket);
  curl_multi_setopt(m->list.multi, CURLMOPT_TIMERDATA, (void *)m);
  curl_multi_setopt(m->list.multi, CURLMOPT_TIMERFUNCTION, on_timer);
}

/* core.multi([pollable]) */
static int multi_new(lua_State *L) {
  sid_multi *m;
  int pollable = lua_toboolean(L, 1);   /* read before anything is pushed */
  sid_global_init(L);
  m = (sid_multi *)sid_newuserdata(L, sizeof *m);
  memset(m, 0, sizeof *m);
  m->pollfd = -1;
  m->marker = -1;
  m->timer_due = -1;
  m->pid = (long)getpid();
  sid_setmetatable(L, SID_MULTI_MT);
  m->list.multi = curl_multi_init();
  if (m->list.multi == NULL) return sid_raise(L, "slashid: curl_multi_init failed");
  if (pollable) open_pollset(m);
  else m->pollfd_err = EINVAL;
  return 1;
}

/* multi:add(handle, request) -> true, or false when the request could not
   even be set up (then handle:collect() reports why). */
static int multi_add(lua_State *L) {
  sid_multi *m = check_multi(L, 1);
  sid_transfer *t = sid_transfer_check(L, 2);
  luaL_checktype(L, 3, LUA_TTABLE);
  if (t->easy == NULL) return sid_raise(L, "slashid: handle is closed");
  if (t->busy || t->list)
    return sid_raise(L, "slashid: handle is busy (a transfer is running on it)");
  sid_transfer_own(L, t);
  sid_request_set(L, 3, 2, t);
  sid_transfer_start_attempt(t);
  sid_request_attempt(L, 3, t);
  if (t->req.setup_rc != CURLE_OK) {
    sid_transfer_finish(t, t->req.setup_rc);
    lua_pushboolean(L, 0);
    return 1;
  }
  if (sid_transfer_attach(L, t, 2, &m->list) != CURLM_OK) {
    sid_transfer_finish(t, CURLE_FAILED_INIT);
    lua_pushboolean(L, 0);
    return 1;
  }
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
  sid_transfer *h, *next;
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
    lua_pushinteger(L, m->list.count);
    return 2;
#endif
  }
  lua_newtable(L);      /* before any message is taken from libcurl */
  now = sid_monotonic();
  for (h = m->list.first; h; h = h->next) {
    sid_callbacks_on(h, L);
    sid_deadline_before_look(h, now, last_look);
  }
  m->busy = 1;
  if (m->pollfd >= 0) {
    /* curl_multi_perform, then the socket callback for every transfer:
       every attached transfer still gets its look (deadline.c, the last
       look), and the descriptor follows its sockets */
    CURL_IGNORE_DEPRECATION(curl_multi_socket_all(m->list.multi, &running);)
  } else {
    curl_multi_perform(m->list.multi, &running);
  }
  m->busy = 0;
  for (h = m->list.first; h; h = h->next) sid_callbacks_off(h);
  while ((msg = curl_multi_info_read(m->list.multi, &left)) != NULL) {
    if (msg->msg != CURLMSG_DONE) continue;
    h = sid_transfer_of(msg->easy_handle);
    if (h == NULL || h->list != &m->list) continue;
    sid_transfer_finish(h, sid_deadline_after_look(h, 1, msg->data.result));
    lua_rawgeti(L, LUA_REGISTRYINDEX, h->self_ref);
    lua_rawseti(L, -2, ++n);
    sid_transfer_detach(L, h);
  }
  /* Past their deadline and still without a complete answer after that
     last look: they end now, as timeouts (deadline.c). One already
     finished (an earlier call raised between finishing and reporting
     it) is reported as it finished, never turned into a timeout. */
  for (h = m->list.first; h; h = next) {
    next = h->next;
    if (!h->finished && !h->expired) {
      sid_deadline_look_over(h);
      continue;
    }
    if (!h->finished)
      sid_transfer_finish(h, sid_deadline_after_look(h, 0, CURLE_OK));
    lua_rawgeti(L, LUA_REGISTRYINDEX, h->self_ref);
    lua_rawseti(L, -2, ++n);
    sid_transfer_detach(L, h);
  }
  lua_pushinteger(L, running);
  return 2;
}

/* The CPU a loop spends when a socket could not join the descriptor: it
   is woken this often instead (still correct, never stuck). */
#define WATCH_FAILED_S 0.01

/* Seconds until the multi must be performed whatever its sockets do:
   libcurl's timer, the nearest attempt's request_timeout deadline (to
   the deadline itself, never past it: deadline.c); < 0 for none. */
static double seconds_left(sid_multi *m) {
  sid_transfer *h;
  double now = sid_monotonic(), left = -1;
  if (m->pollfd >= 0) {
    if (m->timer_due >= 0) left = m->timer_due > now ? m->timer_due - now : 0;
    if (m->watch_failed && m->list.count > 0 && (left < 0 || left > WATCH_FAILED_S))
      left = WATCH_FAILED_S;
  } else {
    long ms = -1;
    curl_multi_timeout(m->list.multi, &ms);
    if (ms >= 0) left = (double)ms / 1000.0;
  }
  /* the host closed the descriptor it waits on: only time can wake it */
  if (m->pollfd_lost && m->list.count > 0 && (left < 0 || left > WATCH_FAILED_S))
    left = WATCH_FAILED_S;
  for (h = m->list.first; h; h = h->next) {
    double d;
    if (h->deadline <= 0) continue;
    d = h->deadline - now;
    if (d < 0) d = 0;
    if (left < 0 || d < left) left = d;
  }
  return left;
}

/* ms capped at seconds_left: a wait ends at libcurl's timer or an
   attempt's deadline (just after it, not before) */
static long capped_ms(sid_multi *m, long ms) {
  double left = seconds_left(m);
  if (left >= 0 && (ms < 0 || left * 1000.0 < (double)ms))
    ms = (long)(left * 1000.0) + 1;
  return ms;
}

/* multi:wait([seconds]): blocks until there is socket activity or the
   time is up (nil: a day), whichever comes first (it also sleeps when
   nothing is attached, which is what a retry deadline wants). While
   signals are caught (signal.c) it also wakes at once when one arrives,
   and raises SID_INTERRUPTED once a second one has come. */
static int multi_wait(lua_State *L) {
  sid_multi *m = check_multi(L, 1);
  lua_Number s = luaL_optnumber(L, 2, 86400);
  long ms = !(s > 0) ? 0 : s > 86400 ? 86400000 : (long)(s * 1000.0 + 0.5);
  struct curl_waitfd extra;
  unsigned int nextra = 0;
  if (m->busy) return sid_raise(L, "slashid: multi is busy");
  if (sid_signal_abort()) goto interrupted;
  memset(&extra, 0, sizeof extra);
  extra.fd = sid_signal_fd();
  extra.events = CURL_WAIT_POLLIN;
  if (extra.fd >= 0) nextra = 1;
  ms = capped_ms(m, ms);
  if (pollfd_ok(m)) {
    /* (-1: EINTR, most likely a signal: the pipe is drained all the same) */
    int ready = sid_pollset_wait(m->pollfd, nextra ? extra.fd : -1, ms);
    if (ready < 0 || (ready & SID_POLLSET_EXTRA)) extra.revents = CURL_WAIT_POLLIN;
  } else {
#if SID_CURL_AT_LEAST(7, 66, 0)
    curl_multi_poll(m->list.multi, nextra ? &extra : NULL, nextra, (int)ms, NULL);
#else
    curl_multi_wait(m->list.multi, nextra ? &extra : NULL, nextra, (int)ms, NULL);
#endif
  }
  if (nextra && extra.revents) sid_signal_drain();
  if (sid_signal_abort()) goto interrupted;
  return 0;
interrupted:
  lua_pushliteral(L, SID_INTERRUPTED);
  return lua_error(L);
}

/* multi:timeout() -> seconds until the multi must be performed whatever
   its sockets do (libcurl's timers, an attempt's request_timeout); nil
   if nothing but socket activity matters */
static int multi_timeout(lua_State *L) {
  double left = seconds_left(check_multi(L, 1));
  if (left < 0) return 0;
  lua_pushnumber(L, (lua_Number)left);
  return 1;
}

/* multi:pollfd() -> descriptor, or nil and a message: the pollable
   multi's, the same until close() or the GC, its transfers over or not.
   After close(), a new one, empty (nothing can join it any more). */
static int multi_pollfd(lua_State *L) {
  sid_multi *m = (sid_multi *)luaL_checkudata(L, 1, SID_MULTI_MT);
  if (m->pollfd < 0 && m->list.multi == NULL && !m->pollfd_closed &&
      !m->pollfd_lost)
    open_pollset(m);
  if (pollfd_ok(m)) {
    lua_pushinteger(L, m->pollfd);
    return 1;
  }
  lua_pushnil(L);
  if (m->pollfd_lost)
    lua_pushliteral(L, "slashid: the poll descriptor was closed by the host "
                       "(the op goes on, waited without it)");
  else if (m->pollfd_closed)
    lua_pushliteral(L, "slashid: the poll descriptor is closed");
  else if (m->pollfd_err == EINVAL)
    lua_pushliteral(L, "slashid: this multi is not pollable");
  else if (m->pollfd_err == ENOSYS)
    lua_pushliteral(L, "slashid: no poll descriptor on this platform "
                       "(epoll is Linux's; see docs/hosts.md)");
  else
    lua_pushfstring(L, "slashid: cannot make a poll descriptor: %s",
                    strerror(m->pollfd_err));
  return 2;
}

static int multi_count(lua_State *L) {
  lua_pushinteger(L, check_multi(L, 1)->list.count);
  return 1;
}

/* Ends the transfers and releases libcurl (its sockets, its connection
   cache); the poll descriptor too, unless keep_pollfd. */
static int close_multi(lua_State *L, sid_multi *m, int keep_pollfd) {
  if (m->list.multi && foreign(m->pid)) {
    /* a forked child collecting the parent's op: libcurl is left alone
       (cleaning up would unregister the parent's sockets from the shared
       set, or end its TLS sessions); what it holds is the child's to lose
       at exit */
    while (m->list.first) sid_transfer_forget(L, m->list.first);
    m->list.multi = NULL;
    /* the set and its marker too: even asking whether the number is still
       ours would change the parent's set (pollset.c); the child's copies
       are close-on-exec, and go with it */
    m->pollfd = m->marker = -1;
    return 0;
  }
  if (m->list.multi) {
    if (m->busy) return sid_raise(L, "slashid: multi is busy");
    /* libcurl reports the sockets it drops (on_socket): the descriptor is
       still open here, and closed after */
    while (m->list.first) sid_transfer_detach(L, m->list.first);
    curl_multi_cleanup(m->list.multi);
    m->list.multi = NULL;
    /* over: whoever sleeps on the descriptor wakes now, and finds it
       readable whenever it looks again (timeout() is 0 from here) */
    if (keep_pollfd && pollfd_ok(m) && !m->ready)
      m->ready = sid_pollset_ready(m->pollfd, &m->marker) == 0;
  }
  if (!keep_pollfd) {
    if (pollfd_ok(m)) sid_pollset_close(&m->pollfd);
    m->pollfd = -1;
    sid_pollset_close(&m->marker);
  }
  return 0;
}

/* multi:close([keep_pollfd]): an op keeps its descriptor after its
   transfers end (a loop may still hold the number), until it is
   collected. */
static int multi_close(lua_State *L) {
  sid_multi *m = (sid_multi *)luaL_checkudata(L, 1, SID_MULTI_MT);
  return close_multi(L, m, lua_toboolean(L, 2));
}

/* __gc and __close: everything, the descriptor included. */
static int multi_gc(lua_State *L) {
  sid_multi *m = (sid_multi *)luaL_checkudata(L, 1, SID_MULTI_MT);
  m->busy = 0;
  m->pollfd_closed = 1;
  return close_multi(L, m, 0);
}

#if SID_HAS_CLOSE
static int multi_close_all(lua_State *L) {
  return close_multi(L, (sid_multi *)luaL_checkudata(L, 1, SID_MULTI_MT), 0);
}
#endif

static int multi_tostring(lua_State *L) {
  sid_multi *m = (sid_multi *)luaL_checkudata(L, 1, SID_MULTI_MT);
  lua_pushfstring(L, "slashid.Multi: %p%s", (void *)m,
                  m->list.multi ? "" : " (closed)");
  return 1;
}

void sid_open_multi(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"add", multi_add},
    {"perform", multi_perform},
    {"wait", multi_wait},
    {"timeout", multi_timeout},
    {"pollfd", multi_pollfd},
    {"count", multi_count},
    {"close", multi_close},
    {NULL, NULL}
  };
  static const luaL_Reg meta[] = {
    {"__gc", multi_gc},
    {"__tostring", multi_tostring},
#if SID_HAS_CLOSE
    {"__close", multi_close_all},
#endif
    {NULL, NULL}
  };
  sid_new_class(L, SID_MULTI_MT, meta, methods);
  lua_pushcfunction(L, multi_new);
  lua_setfield(L, -2, "multi");
}
