/*
 * answer.c - the answer: status line, headers and a capped body collected
 * by libcurl callbacks, then turned into the native Lua tables the Lua
 * layer works with:
 *
 *   result      the envelope's `result` object, or nil
 *   errors      list of { httpcode = int, message = string [, curl_code] }
 *   pagination  { limit, offset, total_count } or nil
 *   facts       what the outcome rules need: status, sent, complete,
 *               curl_code, too_large, headers, elapsed, excerpt
 */
#include <ctype.h>
#include <stdio.h>
#include <math.h>
#include <string.h>
#include "slashid.h"

/* ---- callbacks (run inside libcurl: never raise) --------------------- */

size_t sid_answer_on_body(char *p, size_t size, size_t n, void *ud) {
  sid_transfer *t = (sid_transfer *)ud;
  size_t len = size * n;
  /* max_response_bytes caps the body alone */
  if (len > t->req.max_bytes || t->ans.received > t->req.max_bytes - len) {
    t->ans.too_large = 1;
    return 0;                             /* aborts: CURLE_WRITE_ERROR */
  }
  if (t->ans.received == 0) t->ans.head_at_body = t->ans.head.len;  /* then trailers */
  t->ans.received += len;
  if (!sid_buf_append(&t->ans.body, p, len)) {
    t->ans.out_of_memory = 1;
    return 0;
  }
  return len;
}

size_t sid_answer_on_header(char *p, size_t size, size_t n, void *ud) {
  sid_transfer *t = (sid_transfer *)ud;
  size_t len = size * n, fold = 0;
  /* Headers have their own fixed cap: proxies and CDNs add lines the
     caller cannot foresee, and those must not turn a rotation that
     succeeded into "unknown" through max_response_bytes. */
  /* A new status line starts a new header block (100 Continue, 103 Early
     Hints): only the last response's headers are kept, and counted. */
  if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) {
    sid_buf_reset(&t->ans.head);
    t->ans.head_received = 0;
  }
  if (len > SID_HEAD_MAX || t->ans.head_received > SID_HEAD_MAX - len) {
    t->ans.head_too_large = 1;
    return 0;
  }
  t->ans.head_received += len;
  /* A folded line (obs-fold: it starts with a space or a tab) continues
     the header before it. It is joined to it with the fold taken out
     altogether, not turned into a space as RFC 9112 has it: a key a
     server or proxy split across the fold is then whole again where
     redaction looks (info.headers, the trace), instead of two halves
     that no match finds. */
  if (len && (p[0] == ' ' || p[0] == '\t') && t->ans.head.len &&
      t->ans.head.data[t->ans.head.len - 1] == '\n') {
    t->ans.head.len--;
    if (t->ans.head.len && t->ans.head.data[t->ans.head.len - 1] == '\r') t->ans.head.len--;
    /* obs-fold is OWS CRLF RWS: the spaces before the break go too */
    while (t->ans.head.len && (t->ans.head.data[t->ans.head.len - 1] == ' ' ||
                           t->ans.head.data[t->ans.head.len - 1] == '\t'))
      t->ans.head.len--;
    while (fold < len && (p[fold] == ' ' || p[fold] == '\t')) fold++;
  }
  if (!sid_buf_append(&t->ans.head, p + fold, len - fold)) {
    t->ans.out_of_memory = 1;
    return 0;
  }
  return len;
}

/* The answer's buffers released (wiped first): the handle is closing. */
void sid_answer_free(sid_transfer *t) {
  sid_buf_free(&t->ans.body);
  sid_buf_free(&t->ans.head);
}

/* The answer's bytes and flags, gone: the body held the new key. */
void sid_answer_clear(sid_transfer *t) {
  sid_buf_reset(&t->ans.body);
  sid_buf_reset(&t->ans.head);
  t->ans.received = t->ans.head_received = t->ans.head_at_body = 0;
  t->ans.too_large = t->ans.head_too_large = t->ans.out_of_memory = t->ans.decoded = 0;
  t->ans.requests_sent = 0;
  t->ans.connect_status = 0;
  t->secrets.key[SID_SECRET_NEW_KEY] = NULL;
  t->secrets.len[SID_SECRET_NEW_KEY] = 0;
}

/* ---- helpers ---------------------------------------------------------- */

static void set_int(lua_State *L, const char *k, long v) {
  lua_pushinteger(L, (lua_Integer)v);
  lua_setfield(L, -2, k);
}

/* Appends the table on top of the stack to the list at index `list`. */
static void append(lua_State *L, int list) {
  lua_rawseti(L, list, (int)sid_rawlen(L, list) + 1);
}

static void push_entry(lua_State *L, long httpcode) {
  lua_createtable(L, 0, 3);
  set_int(L, "httpcode", httpcode);
}

static void push_excerpt(lua_State *L, sid_transfer *t) {
  sid_push_redacted(L, t->ans.body.data, t->ans.body.len, &t->secrets, SID_EXCERPT_MAX, 1);
}

/* Lower-case header names, last value wins, names and values redacted. */
static void push_headers(lua_State *L, sid_transfer *t) {
  const char *p = t->ans.head.data, *end = p ? p + t->ans.head.len : NULL;
  lua_createtable(L, 0, 8);
  while (p && p < end) {
    const char *eol = (const char *)memchr(p, '\n', (size_t)(end - p));
    const char *next = eol ? eol + 1 : end;
    const char *colon = (const char *)memchr(p, ':', (size_t)(next - p));
    if (colon && colon > p &&
        (next - p < 5 || memcmp(p, "HTTP/", 5) != 0)) {
      const char *v = colon + 1, *ve = next;
      while (v < ve && (*v == ' ' || *v == '\t')) v++;
      while (ve > v && isspace((unsigned char)ve[-1])) ve--;
      /* A name is server text like any other: it may quote a key, in
         any case (HTTP/2 lowers names). */
      sid_push_redacted_name(L, p, (size_t)(colon - p), &t->secrets);
      /* a value too, matched in any case, as the trace does */
      sid_push_redacted_folded(L, v, (size_t)(ve - v), &t->secrets);
      lua_rawset(L, -3);
    }
    p = next;
  }
}

/* Server entries kept as sent, with httpcode an integer and message a
   (redacted) string even when the server left them out or mistyped. Each
   is a fresh { httpcode, message } table: any other member a server adds
   is left out, as it could quote a key that nothing would redact. */
static void add_server_errors(lua_State *L, int envelope, int list,
                              sid_transfer *t, long status) {
  int i, n;
  lua_getfield(L, envelope, "errors");
  if (lua_type(L, -1) != LUA_TTABLE) {
    lua_pop(L, 1);
    return;
  }
  n = (int)sid_rawlen(L, -1);
  for (i = 1; i <= n; i++) {
    long code = status;
    lua_rawgeti(L, -1, i);
    if (lua_type(L, -1) != LUA_TTABLE) {
      lua_pop(L, 1);
      continue;
    }
    lua_getfield(L, -1, "httpcode");
    if (lua_type(L, -1) == LUA_TNUMBER &&
        floor(lua_tonumber(L, -1)) == lua_tonumber(L, -1) &&
        fabs(lua_tonumber(L, -1)) <= 2147483647.0)
      code = (long)lua_tonumber(L, -1);
    lua_pop(L, 1);
    push_entry(L, code);                 /* server entry, new entry */
    lua_getfield(L, -2, "message");
    /* a number is kept as its text; lua_tolstring converts the copy */
    if (lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER) {
      size_t len;
      const char *m = lua_tolstring(L, -1, &len);
      sid_push_redacted(L, m, len, &t->secrets, 0, 0);
      lua_setfield(L, -3, "message");
    } else {
      lua_pushfstring(L, "HTTP %d (the server gave no message)", (int)status);
      lua_setfield(L, -3, "message");
    }
    lua_pop(L, 1);                       /* the server's message */
    lua_remove(L, -2);                   /* the server's entry */
    append(L, list);
  }
  lua_pop(L, 1);
}

static void add_transport_error(lua_State *L, int list, sid_transfer *t,
                                CURLcode rc) {
  push_entry(L, 0);
  if (t->cancelled)
    lua_pushfstring(L, "%s: the operation was cancelled (op:cancel)",
                    sid_curlcode_name(rc));
  else if (t->timed_out)
    lua_pushfstring(L, "%s: timed out (no complete answer within "
                    "request_timeout)",
                    sid_curlcode_name(rc));
  else if (t->ans.too_large || rc == CURLE_FILESIZE_EXCEEDED) {
    char cap[32];   /* size_t does not fit lua_pushfstring's %d */
    snprintf(cap, sizeof cap, "%zu", t->req.max_bytes);
    lua_pushfstring(L, "%s: the answer is larger than max_response_bytes "
                    "(%s bytes)", sid_curlcode_name(rc), cap);
  }
  else if (t->ans.head_too_large)
    lua_pushfstring(L, "%s: the answer's headers are larger than %d bytes",
                    sid_curlcode_name(rc), (int)SID_HEAD_MAX);
  else if (t->ans.out_of_memory)
    lua_pushfstring(L, "%s: out of memory while receiving the answer",
                    sid_curlcode_name(rc));
  else if (t->errbuf[0])
    lua_pushfstring(L, "%s: %s (%s)", sid_curlcode_name(rc),
                    curl_easy_strerror(rc), t->errbuf);
  else
    lua_pushfstring(L, "%s: %s", sid_curlcode_name(rc),
                    curl_easy_strerror(rc));
  /* The error buffer can quote the URL, never a header; redact anyway. */
  {
    size_t len;
    const char *m = lua_tolstring(L, -1, &len);
    sid_push_redacted(L, m, len, &t->secrets, 0, 1);
    lua_remove(L, -2);
  }
  lua_setfield(L, -2, "message");
  set_int(L, "curl_code", (long)rc);
  append(L, list);
}

/* An answer without a usable envelope: its status and a body excerpt. */
static void add_excerpt_error(lua_State *L, int list, sid_transfer *t,
                              long status, const char *what) {
  push_entry(L, status);
  lua_pushfstring(L, "HTTP %d: %s", (int)status, what);
  if (t->ans.body.len) {
    lua_pushliteral(L, ": ");
    push_excerpt(L, t);
    lua_concat(L, 3);
  }
  lua_setfield(L, -2, "message");
  append(L, list);
}

static void push_pagination(lua_State *L, int envelope) {
  static const char *const names[] = {"limit", "offset", "total_count"};
  int i;
  lua_getfield(L, envelope, "meta");
  if (lua_type(L, -1) == LUA_TTABLE) {
    lua_getfield(L, -1, "pagination");
    lua_remove(L, -2);
  }
  if (lua_type(L, -1) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_pushnil(L);
    return;
  }
  lua_createtable(L, 0, 3);
  for (i = 0; i < 3; i++) {
    lua_getfield(L, -2, names[i]);   /* json.c made integral numbers ints */
    if (lua_type(L, -1) == LUA_TNUMBER)
      lua_setfield(L, -2, names[i]);
    else
      lua_pop(L, 1);                 /* not a number: could be any text */
  }
  lua_remove(L, -2);
}

/* Remembers result.api_key (a string kept alive by the envelope on the
   stack) so that every text handed back can hide it too: a server might
   quote the new key in a message or a header. */
static void learn_new_key(lua_State *L, int envelope, sid_transfer *t) {
  t->secrets.key[SID_SECRET_NEW_KEY] = NULL;
  t->secrets.len[SID_SECRET_NEW_KEY] = 0;
  if (lua_type(L, envelope) != LUA_TTABLE) return;
  lua_getfield(L, envelope, "result");
  if (lua_type(L, -1) == LUA_TTABLE) {
    lua_getfield(L, -1, "api_key");
    if (lua_type(L, -1) == LUA_TSTRING)
      t->secrets.key[SID_SECRET_NEW_KEY] = lua_tolstring(L, -1, &t->secrets.len[SID_SECRET_NEW_KEY]);
    lua_pop(L, 1);   /* still referenced by the envelope */
  }
  lua_pop(L, 1);
}

/* Whether the envelope's result.api_key is a non-empty string. */
static int has_api_key(lua_State *L, int envelope) {
  int yes = 0;
  if (lua_type(L, envelope) != LUA_TTABLE) return 0;
  lua_getfield(L, envelope, "result");
  if (lua_type(L, -1) == LUA_TTABLE) {
    lua_getfield(L, -1, "api_key");
    yes = lua_type(L, -1) == LUA_TSTRING && sid_rawlen(L, -1) > 0;
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return yes;
}

/* ---- the four values ------------------------------------------------- */

/* What libcurl knows about the finished attempt, then the tables. */
int sid_answer_push(lua_State *L, sid_transfer *t, CURLcode rc) {
  long status = 0;
  double elapsed = 0;
  curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_getinfo(t->easy, CURLINFO_HTTP_CONNECTCODE, &t->ans.connect_status);
  curl_easy_getinfo(t->easy, CURLINFO_TOTAL_TIME, &elapsed);
#if !SID_HAVE_PREREQ
  {
    /* No pre-request callback: what libcurl reports it sent. The PUT ran
       on a fresh connection (request.c), so there was no silent re-send. */
    long request_bytes = 0;
    double pretransfer = 0;
    curl_easy_getinfo(t->easy, CURLINFO_REQUEST_SIZE, &request_bytes);
    curl_easy_getinfo(t->easy, CURLINFO_PRETRANSFER_TIME, &pretransfer);
    /* the size counts a proxy's CONNECT too: a request only went out to
       the server once the tunnel and TLS were up (pretransfer) */
    if ((request_bytes > 0 && pretransfer > 0) || status > 0)
      t->ans.requests_sent = 1;
  }
#endif
  return sid_answer_build(L, t, rc, status, elapsed);
}

/* The bytes collected in `t` (headers, body, flags) become the four
   values. Touches no libcurl state, so the fuzzer can drive it. */
int sid_answer_build(lua_State *L, sid_transfer *t, CURLcode rc, long status,
                     double elapsed) {
  int envelope = 0, list, facts;
  int complete, tolerant = 0;

  luaL_checkstack(L, 12, "answer");
  if (sid_decode_body(t) != 0) {
    lua_pushliteral(L, "not enough memory");   /* built again later */
    return lua_error(L);
  }
  /* decoded, the body is over max_response_bytes: as if the bytes were */
  if (t->ans.too_large && rc == CURLE_OK) rc = CURLE_FILESIZE_EXCEEDED;
  /* complete as facts.complete says: a request that could not be set up
     (setup_rc) never had an answer to read, whatever the bytes */
  complete = (rc == CURLE_OK && t->req.setup_rc == CURLE_OK);

  /* The envelope, when the whole answer is a JSON object. */
  /* A 2xx whose transfer then failed (trailers over the header cap, a
     missing last chunk, a Content-Length one byte too long) may still
     have brought a whole envelope: a key it holds is real, and the old
     one is dead, so its result is handed back rather than lost (what
     that means is policy.lua's to say: a 2xx result with a key is
     "rotated", however the transfer ended). A body cut by
     max_response_bytes is never read this way. */
  int readable = complete || (status >= 200 && status <= 299 &&
                              t->ans.requests_sent > 0 &&
                              t->req.setup_rc == CURLE_OK && !t->ans.too_large &&
                              t->ans.body.len > 0);
  int cut_with_key = 0;       /* incomplete, but a whole envelope with a key */
  if (readable && sid_json_decode(L, t->ans.body.data ? t->ans.body.data : "",
                                  t->ans.body.len)) {
    if (lua_type(L, -1) == LUA_TTABLE) envelope = lua_gettop(L);
    else lua_pop(L, 1);
  }
  if (!envelope) {
    lua_pushnil(L);             /* keep slot positions fixed */
  }
  envelope = lua_gettop(L);
  /* A 2xx whose key the strict parser could not give (it refused the
     document: a lone surrogate escape, nesting deeper than its limit; or
     a duplicate `result` member hid the one with the key): the key is
     taken by a tolerant read of the envelope's structure (tolerant.c)
     rather than lost. */
  if (readable && status >= 200 && status <= 299 && t->ans.body.len &&
      !has_api_key(L, envelope) &&
      sid_tolerant_api_key(L, t->ans.body.data, t->ans.body.len, !complete)) {
    if (lua_type(L, envelope) != LUA_TTABLE) {
      lua_newtable(L);
      lua_replace(L, envelope);
    }
    lua_getfield(L, envelope, "result");
    if (lua_type(L, -1) != LUA_TTABLE) {
      lua_pop(L, 1);
      lua_newtable(L);
      lua_pushvalue(L, -1);
      lua_setfield(L, envelope, "result");
    }
    lua_insert(L, -2);                 /* result, key */
    lua_setfield(L, -2, "api_key");
    lua_pop(L, 1);
    tolerant = 1;
  }
  if (!complete && has_api_key(L, envelope)) cut_with_key = 1;
  else if (!complete && lua_type(L, envelope) == LUA_TTABLE) {
    lua_pushnil(L);             /* a partial envelope without a key: */
    lua_replace(L, envelope);   /* the attempt stays incomplete */
  }
  learn_new_key(L, envelope, t);

  /* Traced once whole, now that the new key is known and can be hidden
     wherever the headers or the body quote it. */
  if (t->debug_ref != LUA_NOREF) sid_trace_headers(t);
  if (t->ans.body.len && t->debug_ref != LUA_NOREF)
    sid_trace_emit(t, "< body: ", t->ans.body.data, t->ans.body.len,
                   SID_TRACE_BODY_MAX);

  /* result */
  if ((complete || cut_with_key) && lua_type(L, envelope) == LUA_TTABLE) {
    lua_getfield(L, envelope, "result");
    if (lua_type(L, -1) != LUA_TTABLE) {
      lua_pop(L, 1);
      lua_pushnil(L);
    }
  } else {
    lua_pushnil(L);
  }

  /* errors */
  lua_newtable(L);
  list = lua_gettop(L);
  if (!complete) {
    add_transport_error(L, list, t, t->req.setup_rc != CURLE_OK ? t->req.setup_rc
                                                            : rc);
  } else if (lua_type(L, envelope) == LUA_TTABLE) {
    add_server_errors(L, envelope, list, t, status);
    if (tolerant) {
      lua_createtable(L, 0, 2);
      lua_pushinteger(L, (lua_Integer)status);
      lua_setfield(L, -2, "httpcode");
      lua_pushliteral(L, "the answer is not JSON a strict parser reads whole (a lone "
                      "surrogate escape, nesting deeper than 64, a duplicate member, "
                      "or another fault): result.api_key was read from it, the rest "
                      "of it may not have been");
      lua_setfield(L, -2, "message");
      lua_rawseti(L, list, (int)sid_rawlen(L, list) + 1);
    }
    if (sid_rawlen(L, list) == 0 && (status < 200 || status > 299))
      add_excerpt_error(L, list, t, status, "the answer has no errors entry");
  } else if (status >= 200 && status <= 299) {
    add_excerpt_error(L, list, t, status, "the answer is not a JSON object");
  } else {
    add_excerpt_error(L, list, t, status,
                      t->ans.body.len ? "the answer has no JSON envelope"
                                  : "empty answer");
  }

  /* pagination */
  if (lua_type(L, envelope) == LUA_TTABLE) push_pagination(L, envelope);
  else lua_pushnil(L);

  /* facts */
  lua_createtable(L, 0, 10);
  facts = lua_gettop(L);
  set_int(L, "status", status);
  set_int(L, "connect_status", t->ans.connect_status);
  set_int(L, "curl_code", (long)(t->req.setup_rc != CURLE_OK ? t->req.setup_rc : rc));
  lua_pushboolean(L, t->ans.requests_sent > 0);
  lua_setfield(L, facts, "sent");
  lua_pushboolean(L, complete);
  lua_setfield(L, facts, "complete");
  lua_pushboolean(L, t->ans.too_large || t->ans.head_too_large);
  lua_setfield(L, facts, "too_large");
  lua_pushboolean(L, lua_type(L, envelope) == LUA_TTABLE);
  lua_setfield(L, facts, "envelope");
  lua_pushnumber(L, elapsed);
  lua_setfield(L, facts, "elapsed");
  push_headers(L, t);
  lua_setfield(L, facts, "headers");
  /* Only a failure quotes the body; a rotated answer skips the work. */
  if (!has_api_key(L, envelope)) {
    push_excerpt(L, t);
    lua_setfield(L, facts, "excerpt");
  }

  /* The new key pointed into the envelope, which is about to go. */
  t->secrets.key[SID_SECRET_NEW_KEY] = NULL;
  t->secrets.len[SID_SECRET_NEW_KEY] = 0;
  lua_remove(L, envelope);
  return 4;
}
