/*
 * request.c - where a request is built: the request table the Lua layer
 * made (request.lua) becomes the URL, the four SlashID headers, user
 * agent, timeouts, TLS, proxy and the answer cap on a kept easy handle.
 * A handle keeps its request (options, header list, key copy) across
 * attempts and calls until another table comes: a client calling again
 * with the same configuration costs no setup at all. The Lua layer has
 * already checked every value; a missing field here is a bug in the
 * library, and raises.
 */
#include <stdio.h>
#include <stdlib.h>
#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "slashid.h"

static const char *field_string(lua_State *L, int req, const char *name,
                                size_t *len, int required) {
  const char *s;
  lua_getfield(L, req, name);
  if (lua_isnil(L, -1) && !required) {
    lua_pop(L, 1);
    return NULL;
  }
  if (lua_type(L, -1) != LUA_TSTRING)
    luaL_error(L, "slashid.core: request field '%s' must be a string", name);
  s = lua_tolstring(L, -1, len);
  lua_pop(L, 1);   /* still referenced by the request table */
  return s;
}

static double field_number(lua_State *L, int req, const char *name,
                           double fallback) {
  double d;
  lua_getfield(L, req, name);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return fallback;
  }
  if (lua_type(L, -1) != LUA_TNUMBER)
    luaL_error(L, "slashid.core: request field '%s' must be a number", name);
  d = lua_tonumber(L, -1);
  lua_pop(L, 1);
  return d;
}

/* Seconds to libcurl milliseconds. 0 would mean "no timeout" to libcurl,
   so tiny values round up to 1 ms; huge ones are clamped. */
static long to_ms(double seconds) {
  double ms = seconds * 1000.0;
  if (!(ms >= 1.0)) return 1;
  if (ms > 2147483647.0) return 2147483647L;
  return (long)ms;
}

#define SETOPT(t, opt, val) \
  do { \
    CURLcode rc_ = curl_easy_setopt((t)->easy, opt, val); \
    if (rc_ != CURLE_OK && (t)->req.setup_rc == CURLE_OK) (t)->req.setup_rc = rc_; \
  } while (0)

static void add_header(sid_transfer *t, const char *line) {
  struct curl_slist *grown = curl_slist_append(t->req.headers, line);
  if (grown == NULL) {
    if (t->req.setup_rc == CURLE_OK) t->req.setup_rc = CURLE_OUT_OF_MEMORY;
    return;
  }
  t->req.headers = grown;
}

/* A list of one line, "Name: value", the value taken as-is (checked in
   Lua: no CR/LF); NULL when memory runs out. The line is put together in
   an exact-size block that is wiped: the value may be the key. */
static struct curl_slist *header_line(const char *name, const char *value,
                                      size_t vlen) {
  size_t nlen = strlen(name), len = nlen + 2 + vlen + 1;
  struct curl_slist *node;
  char *line = (char *)malloc(len);
  if (line == NULL) return NULL;
  memcpy(line, name, nlen);
  memcpy(line + nlen, ": ", 2);
  memcpy(line + nlen + 2, value, vlen);
  line[len - 1] = '\0';
  node = curl_slist_append(NULL, line);
  sid_wipe(line, len);
  free(line);
  return node;
}

/* A header list's nodes are dropped with their lines wiped: one holds the
   key. */
static void free_headers(struct curl_slist *h) {
  struct curl_slist *n;
  for (n = h; n != NULL; n = n->next)
    if (n->data) sid_wipe(n->data, strlen(n->data));
  curl_slist_free_all(h);
}

static void add_header_kv(sid_transfer *t, const char *name,
                          const char *value, size_t vlen) {
  struct curl_slist *node = header_line(name, value, vlen), **end;
  if (node == NULL) {
    if (t->req.setup_rc == CURLE_OK) t->req.setup_rc = CURLE_OUT_OF_MEMORY;
    return;
  }
  for (end = &t->req.headers; *end != NULL; end = &(*end)->next) {}
  *end = node;
}

/* OpenSSL opens the CA file when it connects, with a blocking open(2): a
   FIFO nobody writes would hang the whole process past every deadline
   and every signal. Only a regular file (or a link to one) is handed to
   libcurl; anything else ends the attempt before it starts (curl code 77,
   nothing sent), saying why. */
static void check_ca_file(sid_transfer *t, const char *ca) {
  struct stat st;
  const char *why = NULL;
  if (ca == NULL) return;
  if (stat(ca, &st) != 0) why = strerror(errno);
  else if (!S_ISREG(st.st_mode)) why = "not a regular file";
  if (why == NULL) return;
  if (t->req.setup_rc == CURLE_OK) t->req.setup_rc = CURLE_SSL_CACERT_BADFILE;
  snprintf(t->errbuf, sizeof t->errbuf, "ca_file cannot be used: %s", why);
}

/* request.secrets: what every text handed back must hide besides the
   key: the key a verify check's key replaced, proxy credentials (user,
   password, both). Copied and wiped. */
static void take_extra_secrets(lua_State *L, int req, sid_transfer *t) {
  int i, n;
  lua_getfield(L, req, "secrets");
  if (lua_type(L, -1) != LUA_TTABLE) {
    lua_pop(L, 1);
    return;
  }
  n = (int)sid_rawlen(L, -1);
  if (n > SID_SECRETS - SID_SECRET_EXTRA) n = SID_SECRETS - SID_SECRET_EXTRA;
  for (i = 0; i < n; i++) {
    size_t len;
    const char *s;
    lua_rawgeti(L, -1, i + 1);
    s = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
    if (s && len) {
      t->req.extra_secret[i] = sid_strdup_secret(s, len);
      t->req.extra_secret_len[i] = t->req.extra_secret[i] ? len : 0;
      if (t->req.extra_secret[i] == NULL && t->req.setup_rc == CURLE_OK)
        t->req.setup_rc = CURLE_OUT_OF_MEMORY;
      t->secrets.key[SID_SECRET_EXTRA + i] = t->req.extra_secret[i];
      t->secrets.len[SID_SECRET_EXTRA + i] = t->req.extra_secret_len[i];
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}

/* Whether the table at req is the request already set up on the handle
   at ud (its user value keeps it alive, so its identity cannot be a new
   table's). The Lua layer never changes a request table once built. */
static int is_current(lua_State *L, int req, int ud, sid_transfer *t) {
  int same;
  if (!t->req.set) return 0;
  sid_getuservalue(L, ud);
  same = lua_rawequal(L, -1, req);
  lua_pop(L, 1);
  return same;
}

void sid_request_set(lua_State *L, int req, int ud, sid_transfer *t) {
  size_t len;
  const char *method, *url, *org_id, *api_key, *consistency, *agent, *ca,
             *proxy;
  double timeout, max_bytes;
  long timeout_ms;
  char line[64];

  req = sid_absindex(L, req);
  ud = sid_absindex(L, ud);
  luaL_checktype(L, req, LUA_TTABLE);
  if (is_current(L, req, ud, t)) return;
  sid_request_clear(L, t);
  method = field_string(L, req, "method", &len, 1);
  url = field_string(L, req, "url", &len, 1);
  org_id = field_string(L, req, "org_id", &len, 1);
  add_header_kv(t, "SlashID-OrgID", org_id, len);
  api_key = field_string(L, req, "api_key", &len, 1);
  t->req.api_key = sid_strdup_secret(api_key, len);
  t->req.api_key_len = t->req.api_key ? len : 0;
  t->secrets.key[SID_SECRET_KEY] = t->req.api_key;
  t->secrets.len[SID_SECRET_KEY] = t->req.api_key_len;
  add_header_kv(t, "SlashID-API-Key", api_key, len);
  consistency = field_string(L, req, "consistency", &len, 0);
  if (consistency) add_header_kv(t, "SlashID-Required-Consistency",
                                 consistency, len);
  timeout = field_number(L, req, "consistency_timeout", 0);
  if (timeout > 0) {
    snprintf(line, sizeof line, "SlashID-Required-Consistency-Timeout: %ld",
             (long)timeout);
    add_header(t, line);
  }
  add_header(t, "Accept: application/json");
  agent = field_string(L, req, "user_agent", &len, 0);
  ca = field_string(L, req, "ca_file", &len, 0);
  max_bytes = field_number(L, req, "max_response_bytes", 1048576);
  /* Any integer > 0 is allowed; past what memory can hold it means "no
     cap" in practice, so clamp instead of overflowing the conversion. */
  t->req.max_bytes = !(max_bytes >= 1) ? 1
               : max_bytes >= 9007199254740992.0 ? (size_t)9007199254740992ULL
               : (size_t)max_bytes;

  proxy = field_string(L, req, "proxy", &len, 0);
  take_extra_secrets(L, req, t);

  {
    CURLcode rc = (CURLcode)sid_transfer_reset(t);
    if (rc != CURLE_OK && t->req.setup_rc == CURLE_OK) t->req.setup_rc = rc;
  }
  SETOPT(t, CURLOPT_URL, url);
  if (strcmp(method, "GET") == 0) {
    SETOPT(t, CURLOPT_HTTPGET, 1L);
  } else {
    t->req.single_send = 1;
    SETOPT(t, CURLOPT_CUSTOMREQUEST, method);
    /* No body, but proxies and load balancers want a length on a PUT. */
    add_header(t, "Content-Length: 0");
#if !SID_HAVE_PREREQ
    /* Nothing could refuse libcurl's silent re-send on a reused
       connection that died: never reuse one for the PUT. */
    SETOPT(t, CURLOPT_FRESH_CONNECT, 1L);
#endif
  }
  /* The Lua layer decides: a URL, "" for no proxy at all (environment
     ignored), or absent: the environment, as curl reads it. */
  if (proxy) SETOPT(t, CURLOPT_PROXY, proxy);
  SETOPT(t, CURLOPT_HTTPHEADER, t->req.headers);
  if (agent) SETOPT(t, CURLOPT_USERAGENT, agent);
  if (ca) SETOPT(t, CURLOPT_CAINFO, ca);
  SETOPT(t, CURLOPT_CONNECTTIMEOUT_MS,
         to_ms(field_number(L, req, "connect_timeout", 10)));
  /* request_timeout is not libcurl's CURLOPT_TIMEOUT: see deadline.c */
  timeout_ms = to_ms(field_number(L, req, "request_timeout", 45));
  t->req.timeout = (double)timeout_ms / 1000.0;
#if !SID_HAVE_PREREQ
  /* Without the pre-request callback a last look could not keep a request
     from going out: libcurl's own timeout stops it (an answer that
     arrived while nobody drove the transfer is then lost to a timeout;
     README, "Outcomes"). */
  SETOPT(t, CURLOPT_TIMEOUT_MS, timeout_ms);
#endif
  SETOPT(t, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)t->req.max_bytes);
  /* A request without Accept-Encoding admits any coding (RFC 9110): a
     gateway may gzip the answer. So the codings decode.c undoes are
     offered, and libcurl does not decode: on a mislabelled body it would
     drop the bytes, and the key in them (decode.c). The body cap counts
     the bytes as they came, and the decoded ones. */
  SETOPT(t, CURLOPT_ACCEPT_ENCODING, "gzip, deflate");
  SETOPT(t, CURLOPT_HTTP_CONTENT_DECODING, 0L);
  lua_getfield(L, req, "pipewait");
  if (lua_toboolean(L, -1)) SETOPT(t, CURLOPT_PIPEWAIT, 1L);
  lua_pop(L, 1);
  lua_getfield(L, req, "debug");
  if (lua_isfunction(L, -1)) {
    SETOPT(t, CURLOPT_DEBUGFUNCTION, sid_trace_on_debug);
    SETOPT(t, CURLOPT_DEBUGDATA, (void *)t);
    SETOPT(t, CURLOPT_VERBOSE, 1L);
  }
  lua_pop(L, 1);
  /* A setup that failed is not kept: the next attempt sets up again
     (memory may be back). */
  if (t->req.setup_rc != CURLE_OK) return;
  lua_pushvalue(L, req);
  sid_setuservalue(L, ud);
  t->req.set = 1;
}

/* A client adopting the key its rotation returned: the request at req,
   when it is the one set up on the handle, keeps everything but the key.
   Only what depends on the key changes: the SlashID-API-Key line of the
   header list and the copy kept for redaction. A key as long as the old
   one is written over it in both; another length gets a new line and
   copy, made before anything is replaced, the old ones then wiped and
   freed (as sid_request_clear does). All or nothing either way: the
   handle holds the old key everywhere or the new one everywhere. 1: done; 0: req is not the request set up on the handle
   (nothing to change: the next call sets req up whole, from its fields);
   -1: not done (a key with a byte outside printable ASCII, which no
   header may carry; out of memory; the handle closed, busy or on a
   multi's list): the caller decides, and sets a new request up. */
int sid_request_rekey(lua_State *L, int req, int ud, sid_transfer *t,
                      const char *key, size_t len) {
  static const char name[] = "SlashID-API-Key";
  struct curl_slist **at, *old, *node;
  char *copy;
  size_t i;
  for (i = 0; i < len; i++)
    if ((unsigned char)key[i] < 32 || (unsigned char)key[i] > 126) return -1;
  req = sid_absindex(L, req);
  ud = sid_absindex(L, ud);
  if (t->easy == NULL || t->busy || t->list) return -1;
  /* a forked child sets its request up afresh anyway (transfer.c) */
  if (t->pid != (long)getpid() || !is_current(L, req, ud, t)) return 0;
  for (at = &t->req.headers; *at != NULL; at = &(*at)->next)
    if (strncmp((*at)->data, name, sizeof name - 1) == 0 &&
        (*at)->data[sizeof name - 1] == ':')
      break;
  if (*at == NULL) return -1;
  old = *at;
  if (t->req.api_key != NULL && t->req.api_key_len == len &&
      strlen(old->data) == sizeof name + 1 + len) {
    /* As long as the old one (SlashID's keys are all one length): the new
       key is written over the old in place, in the line and in the copy;
       nothing is allocated, and no byte of the old key is left. */
    memcpy(old->data + sizeof name + 1, key, len);
    memcpy(t->req.api_key, key, len);
    return 1;
  }
  node = header_line(name, key, len);
  copy = node ? sid_strdup_secret(key, len) : NULL;
  if (copy == NULL) {
    free_headers(node);
    return -1;
  }
  node->next = old->next;
  old->next = NULL;
  *at = node;
  free_headers(old);
  /* (libcurl reads the list when a request starts; only a new head needs
     telling, and setting a pointer cannot fail) */
  if (at == &t->req.headers) curl_easy_setopt(t->easy, CURLOPT_HTTPHEADER, t->req.headers);
  sid_free_secret(&t->req.api_key, t->req.api_key_len);
  t->req.api_key = copy;
  t->req.api_key_len = len;
  t->secrets.key[SID_SECRET_KEY] = t->req.api_key;
  t->secrets.len[SID_SECRET_KEY] = t->req.api_key_len;
  return 1;
}

/* One attempt of the request at req, set up on the handle: a clean
   answer state, the ca_file looked at again (it may have become a FIFO
   since the request was set up), the debug function held for the call,
   a fresh deadline. */
void sid_request_attempt(lua_State *L, int req, sid_transfer *t) {
  const char *ca;
  size_t len;
  req = sid_absindex(L, req);
  sid_request_end(L, t);
  sid_answer_clear(t);
  ca = field_string(L, req, "ca_file", &len, 0);
  check_ca_file(t, ca);
  if (t->req.setup_rc != CURLE_OK) t->req.set = 0;   /* set up again next time */
  lua_getfield(L, req, "debug");
  sid_trace_hold(L, t);
  sid_deadline_start(t, t->req.timeout);
}

/* The end of a call: the debug function is no longer held. */
void sid_request_end(lua_State *L, sid_transfer *t) {
  sid_trace_release(L, t);
}

/* The request is no longer set up on the handle (a new easy handle after
   fork): the next call sets it up again. */
void sid_request_forget(sid_transfer *t) {
  t->req.set = 0;
}

void sid_request_clear(lua_State *L, sid_transfer *t) {
  int i;
  free_headers(t->req.headers);
  t->req.headers = NULL;
  sid_free_secret(&t->req.api_key, t->req.api_key_len);
  t->req.api_key_len = 0;
  for (i = 0; i < SID_SECRETS - SID_SECRET_EXTRA; i++) {
    sid_free_secret(&t->req.extra_secret[i], t->req.extra_secret_len[i]);
    t->req.extra_secret_len[i] = 0;
  }
  memset(&t->secrets, 0, sizeof t->secrets);
  t->req.single_send = 0;
  t->req.setup_rc = CURLE_OK;
  sid_deadline_clear(t);
  t->req.set = 0;
  sid_request_end(L, t);
  sid_answer_clear(t);
  sid_callbacks_off(t);
}
