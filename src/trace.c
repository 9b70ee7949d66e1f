/*
 * trace.c - the `debug` option: libcurl's debug callback turned into text
 * lines handed to a Lua function, with the key headers redacted and
 * bodies left out; and the one rule for every callback that calls into
 * Lua.
 *
 * Which lua_State a callback may use, and when: only the state whose Lua
 * call is driving libcurl at that moment (handle:perform, multi:perform,
 * the building of an answer), set by sid_callbacks_on just before and
 * cleared by sid_callbacks_off just after (transfer.c, which owns the
 * transfer's life). That state is running, so it
 * is alive; a coroutine that once polled an op may be long dead by the
 * time the op is cancelled or collected. Outside those windows (detach,
 * cleanup, __gc: libcurl still emits "Closing connection" lines there)
 * t->L is NULL and nothing calls into Lua. Inside a window, all Lua work
 * of a callback runs in one protected call: a memory error or a raising
 * debug function switches the trace off instead of unwinding through
 * libcurl.
 *
 * Answer headers are not traced as they arrive but once the answer is
 * read (sid_trace_headers, called by answer.c), because only then is the
 * new key known, and a server may echo it in a header.
 */
#include <string.h>
#include <strings.h>
#include "slashid.h"

/* Header names whose value is a credential: the key, and the proxy's or
   server's authorization (proxy credentials are secrets too). */
static const char *const SECRET_HEADERS[] = {
  "slashid-api-key:", "proxy-authorization:", "authorization:", NULL
};

typedef struct emit_args {
  sid_transfer *t;
  const char *prefix, *p;
  size_t n, max;
  int header;        /* a header line: keys matched in any case */
} emit_args;

/* Protected: builds the redacted line and calls the debug function. */
static int emit_protected(lua_State *L) {
  emit_args *a = (emit_args *)lua_touserdata(L, 1);
  lua_rawgeti(L, LUA_REGISTRYINDEX, a->t->debug_ref);
  lua_pushstring(L, a->prefix);
  if (a->header) sid_push_redacted_folded(L, a->p, a->n, &a->t->secrets);
  else sid_push_redacted(L, a->p, a->n, &a->t->secrets, a->max, 1);
  lua_concat(L, 2);
  lua_call(L, 1, 0);
  return 0;
}

static void emit(sid_transfer *t, const char *prefix, const char *p,
                 size_t n, size_t max, int header) {
  emit_args a;
  if (t->L == NULL || t->debug_ref == LUA_NOREF || t->debug_failed) return;
  while (n && (p[n - 1] == '\n' || p[n - 1] == '\r')) n--;
  a.t = t;
  a.prefix = prefix;
  a.p = p;
  a.n = n;
  a.max = max;
  a.header = header;
  if (sid_protected_call(t->L, emit_protected, &a) != 0)
    t->debug_failed = 1;   /* the trace stops; the exchange goes on */
}

/* A call's debug function (on top of the stack, popped; anything else:
   no trace) is held until sid_trace_release: only this file writes
   debug_ref and debug_failed. */
void sid_trace_init(sid_transfer *t) {
  t->debug_ref = LUA_NOREF;
  t->debug_failed = 0;
}

void sid_trace_hold(lua_State *L, sid_transfer *t) {
  t->debug_failed = 0;
  if (lua_isfunction(L, -1)) t->debug_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  else lua_pop(L, 1);
}

void sid_trace_release(lua_State *L, sid_transfer *t) {
  if (t->debug_ref != LUA_NOREF) {
    luaL_unref(L, LUA_REGISTRYINDEX, t->debug_ref);
    t->debug_ref = LUA_NOREF;
  }
}

void sid_trace_emit(sid_transfer *t, const char *prefix, const char *p,
                    size_t n, size_t max) {
  emit(t, prefix, p, n, max, 0);
}

/* One header line: a credential header loses its value before anything
   else looks at it. */
static void emit_header_line(sid_transfer *t, const char *prefix,
                             const char *p, size_t n) {
  int i;
  for (i = 0; SECRET_HEADERS[i]; i++) {
    size_t hl = strlen(SECRET_HEADERS[i]);
    if (n >= hl && strncasecmp(p, SECRET_HEADERS[i], hl) == 0) {
      char shown[64];
      /* the name as sent, then the placeholder */
      size_t keep = hl < sizeof shown - 13 ? hl : sizeof shown - 13;
      memcpy(shown, p, keep);
      memcpy(shown + keep, " <redacted>", 11);
      emit(t, prefix, shown, keep + 11, 0, 1);
      return;
    }
  }
  /* HTTP/2 lowers header names: a key echoed in one is matched in any
     case */
  emit(t, prefix, p, n, 0, 1);
}

/* A header block may hold several CRLF-separated lines (request headers
   come as one block); split it so each line is judged on its own. */
static void emit_header_block(sid_transfer *t, const char *prefix,
                              const char *p, size_t n) {
  while (n) {
    const char *eol = (const char *)memchr(p, '\n', n);
    size_t len = eol ? (size_t)(eol - p) + 1 : n;
    size_t text = len;
    while (text && (p[text - 1] == '\n' || p[text - 1] == '\r')) text--;
    if (text) emit_header_line(t, prefix, p, text);
    p += len;
    n -= len;
  }
}

void sid_trace_headers(sid_transfer *t) {
  if (t->ans.head.len) emit_header_block(t, "< ", t->ans.head.data, t->ans.head.len);
}

int sid_trace_on_debug(CURL *h, curl_infotype type, char *p, size_t n,
                       void *ud) {
  sid_transfer *t = (sid_transfer *)ud;
  (void)h;
  switch (type) {
    case CURLINFO_TEXT:       emit(t, "* ", p, n, 0, 1); break;  /* h2h3 lines: headers */
    case CURLINFO_HEADER_OUT: emit_header_block(t, "> ", p, n); break;
    /* answer headers and bodies: traced by answer.c once the answer is
       read and the new key known; TLS records: never */
    default: break;
  }
  return 0;
}
