/*
 * fuzz_answer.c - libFuzzer harness over the path from answer bytes to
 * what a caller gets: status, header lines and body are fed through the
 * libcurl callbacks of src/answer.c into a sid_transfer, sid_answer_build
 * turns them into result, errors, pagination and facts, and the Lua policy
 * (lua/slashid/policy.lua, outcome.lua) names the outcome. The invariants
 * are checked in spec/fuzz/answer_check.lua; any violation aborts.
 * sid_push_redacted is fuzzed on its own too, with two fixed keys.
 *
 * Input (text, so that seeds are readable; see spec/fuzz/corpus/answer/):
 *
 *   STATUS [CURLCODE [FLAGS [MAXBYTES [ERRBUF...]]]]\n
 *   header lines, as libcurl hands them over (status line included)
 *   an empty line
 *   body
 *
 * FLAGS letters: s request sent, c cancelled, m out of memory, d debug
 * trace on, u setup failed (CURLE_OUT_OF_MEMORY), k the body is cut in
 * one-byte writes. Built by `make fuzz` with the module's sources compiled
 * in (-DSID_STATIC_LINK).
 */
#define _GNU_SOURCE 1   /* memmem */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <lualib.h>
#include "slashid.h"
#include "luacov.h"

#ifndef SID_FUZZ_ROOT
#define SID_FUZZ_ROOT "."
#endif

static const char OLD_KEY[] = "sk_fuzzoldkey_q9xw2lm4tz8rv6nb3hk7";
static const char NEW_KEY[] = "sk_FUZZNEWKEY_p1Yc5Js0Gd2Wf8Ue4Ao6";

static lua_State *L;
static int check_ref = LUA_NOREF;      /* answer_check.lua's function */
static int trace_ref = LUA_NOREF;      /* debug function collecting lines */

static void die(const char *what) {
  fprintf(stderr, "fuzz_answer: %s\n", what);
  abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  const char *root = getenv("SLASHID_FUZZ_ROOT");
  (void)argc; (void)argv;
  if (root == NULL) root = SID_FUZZ_ROOT;
  L = luaL_newstate();
  luaL_openlibs(L);
  /* lua/ of the checkout; slashid.core is the statically linked one. */
  lua_getglobal(L, "package");
  lua_pushfstring(L, "%s/lua/?.lua;%s/spec/fuzz/?.lua", root, root);
  lua_setfield(L, -2, "path");
  lua_getfield(L, -1, "preload");
  lua_pushcfunction(L, luaopen_slashid_core);
  lua_setfield(L, -2, "slashid.core");
  lua_pop(L, 2);

  lua_getglobal(L, "require");
  lua_pushliteral(L, "answer_check");
  if (lua_pcall(L, 1, 1, 0) != 0) die(lua_tostring(L, -1));
  lua_getfield(L, -1, "check");
  check_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_getfield(L, -1, "tracer");
  trace_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pop(L, 1);
  luacov_start(L);
  return 0;
}

/* ---- input parsing ---------------------------------------------------- */

typedef struct {
  long status;
  long rc;
  const char *flags;
  size_t flags_len;
  size_t max_bytes;
  const char *errbuf;
  size_t errbuf_len;
  const uint8_t *head;
  size_t head_len;
  const uint8_t *body;
  size_t body_len;
} input_t;

static int has_flag(const input_t *in, char c) {
  return in->flags && memchr(in->flags, c, in->flags_len) != NULL;
}

/* Reads one space-separated token of the first line. */
static const char *token(const char **p, const char *end, size_t *len) {
  const char *s;
  while (*p < end && **p == ' ') (*p)++;
  s = *p;
  while (*p < end && **p != ' ') (*p)++;
  *len = (size_t)(*p - s);
  return *len ? s : NULL;
}

static long number(const char *s, size_t len, long fallback) {
  char tmp[32];
  if (s == NULL || len == 0 || len >= sizeof tmp) return fallback;
  memcpy(tmp, s, len);
  tmp[len] = '\0';
  return strtol(tmp, NULL, 10);
}

static void parse(const uint8_t *data, size_t size, input_t *in) {
  const uint8_t *end = data + size, *nl, *p;
  const char *q, *qe, *s;
  size_t len;
  memset(in, 0, sizeof *in);
  in->max_bytes = 1048576;
  nl = (const uint8_t *)memchr(data, '\n', size);
  q = (const char *)data;
  qe = nl ? (const char *)nl : (const char *)end;
  s = token(&q, qe, &len);
  in->status = number(s, len, 200);
  s = token(&q, qe, &len);
  in->rc = number(s, len, 0);
  in->flags = token(&q, qe, &in->flags_len);
  s = token(&q, qe, &len);
  if (s) {
    long m = number(s, len, 1048576);
    in->max_bytes = m > 0 ? (size_t)m : 1;
  }
  while (q < qe && *q == ' ') q++;
  in->errbuf = q;
  in->errbuf_len = (size_t)(qe - q);
  if (nl == NULL) return;
  /* header block: up to the first empty line (LF or CRLF) */
  p = nl + 1;
  in->head = p;
  while (p < end) {
    const uint8_t *eol = (const uint8_t *)memchr(p, '\n', (size_t)(end - p));
    size_t line = eol ? (size_t)(eol - p) : (size_t)(end - p);
    if (line == 0 || (line == 1 && p[0] == '\r')) {
      in->head_len = (size_t)(p - in->head);
      in->body = eol ? eol + 1 : end;
      in->body_len = (size_t)(end - in->body);
      return;
    }
    p = eol ? eol + 1 : end;
  }
  in->head_len = (size_t)(end - in->head);
}

/* ---- one run ---------------------------------------------------------- */

typedef struct {
  sid_transfer *t;
  input_t *in;
  CURLcode rc;
} build_args;

static int build(lua_State *S) {
  build_args *a = (build_args *)lua_touserdata(S, 1);
  lua_settop(S, 0);
  return sid_answer_build(S, a->t, a->rc, a->in->status, 0.25);
}

/* Feeds the bytes through the callbacks the way libcurl does: one call per
   header line, the body in pieces. A callback refusing (over the cap, out
   of memory) aborts the transfer, as libcurl would: CURLE_WRITE_ERROR. */
static CURLcode feed(sid_transfer *t, const input_t *in, CURLcode rc) {
  const uint8_t *p = in->head, *end = in->head ? in->head + in->head_len : NULL;
  size_t step;
  while (p < end) {
    const uint8_t *eol = (const uint8_t *)memchr(p, '\n', (size_t)(end - p));
    size_t len = eol ? (size_t)(eol - p) + 1 : (size_t)(end - p);
    if (sid_answer_on_header((char *)p, 1, len, t) != len)
      return rc == CURLE_OK ? CURLE_WRITE_ERROR : rc;
    p += len;
  }
  step = has_flag(in, 'k') ? 1 : 16384;
  if (in->body == NULL) return rc;
  for (p = in->body, end = in->body + in->body_len; p < end; p += step) {
    size_t len = (size_t)(end - p) < step ? (size_t)(end - p) : step;
    if (sid_answer_on_body((char *)p, 1, len, t) != len)
      return rc == CURLE_OK ? CURLE_WRITE_ERROR : rc;
  }
  return rc;
}

static void check_redaction(const input_t *in) {
  static const size_t maxes[] = {0, SID_EXCERPT_MAX, 7};
  sid_secrets secrets;
  size_t i;
  memset(&secrets, 0, sizeof secrets);
  secrets.key[0] = OLD_KEY;
  secrets.len[0] = sizeof OLD_KEY - 1;
  secrets.key[1] = NEW_KEY;
  secrets.len[1] = sizeof NEW_KEY - 1;
  for (i = 0; i < 6; i++) {
    size_t n, max = maxes[i % 3], j;
    int printable = i >= 3;
    const char *out;
    sid_push_redacted(L, (const char *)in->body, in->body_len, &secrets, max,
                      printable);
    out = lua_tolstring(L, -1, &n);
    if (memmem(out, n, OLD_KEY, sizeof OLD_KEY - 1) ||
        memmem(out, n, NEW_KEY, sizeof NEW_KEY - 1))
      die("sid_push_redacted: a key survived redaction");
    if (max && n > max) die("sid_push_redacted: longer than max");
    if (printable)
      for (j = 0; j < n; j++) {
        unsigned char c = (unsigned char)out[j];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
          die("sid_push_redacted: a control character in printable output");
      }
    lua_pop(L, 1);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static unsigned long runs;
  sid_transfer t;
  input_t in;
  build_args args;
  CURLcode rc;
  int base;

  parse(data, size, &in);
  luacov_prev = 0;
  base = lua_gettop(L);

  memset(&t, 0, sizeof t);
  t.debug_ref = LUA_NOREF;
  t.L = L;
  t.req.api_key = sid_strdup_secret(OLD_KEY, sizeof OLD_KEY - 1);
  t.req.api_key_len = sizeof OLD_KEY - 1;
  t.secrets.key[0] = t.req.api_key;
  t.secrets.len[0] = t.req.api_key_len;
  t.req.max_bytes = in.max_bytes;
  t.ans.requests_sent = has_flag(&in, 's');
  t.cancelled = has_flag(&in, 'c');
  if (has_flag(&in, 'u')) t.req.setup_rc = CURLE_OUT_OF_MEMORY;
  if (in.errbuf_len) {
    size_t n = in.errbuf_len < CURL_ERROR_SIZE - 1 ? in.errbuf_len
                                                   : CURL_ERROR_SIZE - 1;
    memcpy(t.errbuf, in.errbuf, n);
    t.errbuf[n] = '\0';
  }
  /* A fresh trace collector for each run: check() reads its lines. */
  lua_rawgeti(L, LUA_REGISTRYINDEX, trace_ref);
  lua_call(L, 0, 2);                      /* debug function, lines table */
  if (has_flag(&in, 'd')) {
    lua_pushvalue(L, -2);
    t.debug_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }

  rc = feed(&t, &in, (CURLcode)((unsigned long)in.rc % CURL_LAST));
  if (has_flag(&in, 'm')) t.ans.out_of_memory = 1;

  /* sid_answer_build under pcall: it must never raise. */
  args.t = &t;
  args.in = &in;
  args.rc = rc;
  lua_pushcfunction(L, build);
  lua_pushlightuserdata(L, &args);
  if (lua_pcall(L, 1, LUA_MULTRET, 0) != 0) die(lua_tostring(L, -1));
  if (lua_gettop(L) != base + 2 + 4) die("sid_answer_build: not 4 values");
  if (t.secrets.key[1] != NULL) die("sid_answer_build: kept a pointer to the new key");

  /* check(result, errors, pagination, facts, lines, status, rc, flags, old_key, body) */
  lua_rawgeti(L, LUA_REGISTRYINDEX, check_ref);
  lua_insert(L, base + 3);
  lua_pushvalue(L, base + 2);             /* lines */
  lua_pushinteger(L, in.status);
  lua_pushinteger(L, rc);
  lua_pushlstring(L, in.flags ? in.flags : "", in.flags_len);
  lua_pushstring(L, OLD_KEY);
  lua_pushlstring(L, t.ans.body.data ? t.ans.body.data : "", t.ans.body.len);   /* the body kept */
  if (lua_pcall(L, 10, 0, 0) != 0) die(lua_tostring(L, -1));

  check_redaction(&in);

  if (t.debug_ref != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, t.debug_ref);
  sid_free_secret(&t.req.api_key, t.req.api_key_len);
  sid_buf_free(&t.ans.body);
  sid_buf_free(&t.ans.head);
  lua_settop(L, base);
  if (++runs % 256 == 0) lua_gc(L, LUA_GCCOLLECT, 0);
  return 0;
}
