/*
 * trace.c - the `debug` option: libcurl's debug callback turned into text
 * lines handed to a Lua function, with the API key header redacted and
 * bodies left out (the answer body is traced once complete, by answer.c,
 * so that a new key split across reads can still be found and hidden).
 */
#include <string.h>
#include <strings.h>
#include "slashid.h"

static const char KEY_HEADER[] = "slashid-api-key:";

/* Calls the debug function with one line. It runs inside a libcurl
   callback, so it must never raise: an error stops the trace instead. */
static void deliver(sid_transfer *t, int pushed_line_idx) {
  lua_State *L = t->L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, t->debug_ref);
  lua_pushvalue(L, pushed_line_idx);
  if (lua_pcall(L, 1, 0, 0) != 0) {
    t->debug_failed = 1;
    lua_pop(L, 1);
  }
}

void sid_trace_emit(sid_transfer *t, const char *prefix, const char *p,
                    size_t n, size_t max) {
  lua_State *L = t->L;
  if (L == NULL || t->debug_ref == LUA_NOREF || t->debug_failed) return;
  if (!lua_checkstack(L, 6)) return;
  while (n && (p[n - 1] == '\n' || p[n - 1] == '\r')) n--;
  lua_pushstring(L, prefix);
  sid_push_redacted(L, p, n, &t->secrets, max, 1);
  lua_concat(L, 2);
  deliver(t, lua_gettop(L));
  lua_pop(L, 1);
}

/* One header line: the key header loses its value before anything else
   looks at it. */
static void emit_header_line(sid_transfer *t, const char *prefix,
                             const char *p, size_t n) {
  size_t hl = sizeof(KEY_HEADER) - 1;
  if (n >= hl && strncasecmp(p, KEY_HEADER, hl) == 0) {
    static const char shown[] = "SlashID-API-Key: <redacted>";
    sid_trace_emit(t, prefix, shown, sizeof(shown) - 1, 0);
    return;
  }
  sid_trace_emit(t, prefix, p, n, 0);
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

int sid_trace_on_debug(CURL *h, curl_infotype type, char *p, size_t n,
                       void *ud) {
  sid_transfer *t = (sid_transfer *)ud;
  (void)h;
  switch (type) {
    case CURLINFO_TEXT:       sid_trace_emit(t, "* ", p, n, 0); break;
    case CURLINFO_HEADER_OUT: emit_header_block(t, "> ", p, n); break;
    case CURLINFO_HEADER_IN:  emit_header_block(t, "< ", p, n); break;
    default: break;           /* bodies and TLS records: see answer.c */
  }
  return 0;
}
