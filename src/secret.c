/*
 * secret.c - memory that may hold a key: growable buffers that are wiped
 * before they are released, and the redaction applied to every piece of
 * server text that reaches the caller (errors, excerpts, headers, trace).
 */
#define _GNU_SOURCE 1   /* memmem, explicit_bzero */
#include <stdlib.h>
#include <string.h>
#include "slashid.h"

/* A plain memset right before free() may be optimised away; explicit_bzero
   (glibc 2.25+) may not, and a store through a volatile pointer may not
   either (the portable fallback). */
void sid_wipe(void *p, size_t n) {
  if (p == NULL || n == 0) return;
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 25))
  explicit_bzero(p, n);
#else
  {
    volatile unsigned char *v = (volatile unsigned char *)p;
    while (n--) *v++ = 0;
  }
#endif
}

int sid_buf_append(sid_buf *b, const char *p, size_t n) {
  if (n > b->cap - b->len) {
    size_t cap = b->cap ? b->cap : 1024;
    char *grown;
    while (cap - b->len < n) {
      if (cap > ((size_t)-1) / 2) return 0;
      cap *= 2;
    }
    /* Not realloc: the old block may hold a key and must be wiped. */
    grown = (char *)malloc(cap);
    if (grown == NULL) return 0;
    if (b->len) memcpy(grown, b->data, b->len);
    sid_wipe(b->data, b->cap);
    free(b->data);
    b->data = grown;
    b->cap = cap;
  }
  memcpy(b->data + b->len, p, n);
  b->len += n;
  return 1;
}

void sid_buf_reset(sid_buf *b) {
  sid_wipe(b->data, b->len);
  b->len = 0;
}

void sid_buf_free(sid_buf *b) {
  sid_wipe(b->data, b->cap);
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}

char *sid_strdup_secret(const char *s, size_t n) {
  char *p = (char *)malloc(n + 1);
  if (p == NULL) return NULL;
  memcpy(p, s, n);
  p[n] = '\0';
  return p;
}

void sid_free_secret(char **p, size_t n) {
  if (*p == NULL) return;
  sid_wipe(*p, n);
  free(*p);
  *p = NULL;
}

/* ---- redaction ------------------------------------------------------- */

#define REDACTED "<redacted>"
#define API_KEY_MEMBER "\"api_key\""

typedef struct {
  luaL_Buffer b;
  size_t len, max;
  int printable;
} out_t;

static int out_full(const out_t *o) { return o->max && o->len >= o->max; }

static void out_char(out_t *o, unsigned char c) {
  if (out_full(o)) return;
  if (o->printable && ((c < 0x20 && c != '\t') || c == 0x7f)) c = '?';
  luaL_addchar(&o->b, (char)c);
  o->len++;
}

static void out_text(out_t *o, const char *s) {
  while (*s) out_char(o, (unsigned char)*s++);
}

/* At s[i] starts `"api_key"`: copy the member name, then hide the string
   value that follows it (a new key in an answer body), up to its closing
   quote. Returns the index after what was consumed. */
static size_t hide_api_key_value(out_t *o, const char *s, size_t n, size_t i) {
  size_t j = i + sizeof(API_KEY_MEMBER) - 1;
  out_text(o, API_KEY_MEMBER);
  while (j < n && (s[j] == ' ' || s[j] == '\t' || s[j] == '\r' ||
                   s[j] == '\n' || s[j] == ':'))
    out_char(o, (unsigned char)s[j++]);
  if (j >= n || s[j] != '"') return j;   /* not a string value: keep it */
  out_char(o, '"');
  j++;
  while (j < n && s[j] != '"') j += (s[j] == '\\' && j + 1 < n) ? 2 : 1;
  out_text(o, REDACTED);
  if (j < n) { out_char(o, '"'); j++; }
  return j;
}

/* Length of the longest secret starting at s[i..n), or 0 (one secret may
   hold another: a proxy's "user:password" and its password alone). */
static size_t secret_at(const sid_secrets *k, const char *s, size_t n,
                        size_t i) {
  size_t best = 0;
  int j;
  if (k == NULL) return 0;
  for (j = 0; j < SID_SECRETS; j++)
    if (k->key[j] && k->len[j] > best && n - i >= k->len[j] &&
        memcmp(s + i, k->key[j], k->len[j]) == 0)
      best = k->len[j];
  return best;
}

/* True when s needs no change at all: the common case for headers and
   short messages, pushed without copying byte by byte. */
static int is_clean(const char *s, size_t n, const sid_secrets *k,
                    size_t max, int printable) {
  size_t i;
  int j;
  if (max && n > max) return 0;
  for (j = 0; k && j < SID_SECRETS; j++)
    if (k->key[j] && k->len[j] && memmem(s, n, k->key[j], k->len[j]) != NULL)
      return 0;
  if (memmem(s, n, API_KEY_MEMBER, sizeof(API_KEY_MEMBER) - 1) != NULL)
    return 0;
  if (printable)
    for (i = 0; i < n; i++) {
      unsigned char c = (unsigned char)s[i];
      if ((c < 0x20 && c != '\t') || c == 0x7f) return 0;
    }
  return 1;
}

void sid_push_redacted(lua_State *L, const char *s, size_t n,
                       const sid_secrets *secrets, size_t max, int printable) {
  out_t o;
  size_t i = 0;
  const size_t member_len = sizeof(API_KEY_MEMBER) - 1;
  if (s == NULL) n = 0;
  if (n == 0 || is_clean(s, n, secrets, max, printable)) {
    lua_pushlstring(L, n ? s : "", n);
    return;
  }
  o.len = 0;
  o.max = max;
  o.printable = printable;
  luaL_buffinit(L, &o.b);
  while (i < n && !out_full(&o)) {
    size_t len = secret_at(secrets, s, n, i);
    if (len) {
      out_text(&o, REDACTED);
      i += len;
    } else if (n - i >= member_len &&
               memcmp(s + i, API_KEY_MEMBER, member_len) == 0) {
      i = hide_api_key_value(&o, s, n, i);
    } else {
      out_char(&o, (unsigned char)s[i++]);
    }
  }
  luaL_pushresult(&o.b);
}
