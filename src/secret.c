/*
 * secret.c - memory that may hold a key: growable buffers that are wiped
 * before they are released, and the redaction applied to every piece of
 * server text that reaches the caller (errors, excerpts, headers, trace).
 */
#define _GNU_SOURCE 1   /* memmem, explicit_bzero */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
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
#define SID_FOLD_MATCH 1   /* secrets matched in any case */
#define SID_FOLD_LOWER 2   /* the text handed back in lower case */
#define API_KEY_MEMBER "\"api_key\""

typedef struct {
  luaL_Buffer b;
  size_t len, max;
  int printable;
  int fold;        /* SID_FOLD_*: match secrets in any case, lower the text */
} out_t;

static int out_full(const out_t *o) { return o->max && o->len >= o->max; }

static void out_char(out_t *o, unsigned char c) {
  if (out_full(o)) return;
  if (o->printable && ((c < 0x20 && c != '\t') || c == 0x7f)) c = '?';
  if (o->fold & SID_FOLD_LOWER) c = (unsigned char)tolower(c);
  luaL_addchar(&o->b, (char)c);
  o->len++;
}

static void out_text(out_t *o, const char *s) {
  while (*s) out_char(o, (unsigned char)*s++);
}

static int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* If s[i..n) starts with a JSON string literal whose value is "api_key",
   however it is escaped ("api\u005fkey"), its length with both quotes;
   else 0. A server may escape the name; the body is not always
   decodable (a truncated answer), so this is read on the text itself. */
static size_t api_key_member_at(const char *s, size_t n, size_t i) {
  static const char want[] = "api_key";
  size_t j = i + 1, k = 0;
  if (s[i] != '"') return 0;
  while (j < n && k < sizeof want - 1) {
    int c;
    if (s[j] == '"') return 0;
    if (s[j] == '\\') {
      if (j + 1 >= n) return 0;
      if (s[j + 1] == 'u') {
        int a, b, d, e;
        if (n - j < 6) return 0;
        a = hex_digit(s[j + 2]); b = hex_digit(s[j + 3]);
        d = hex_digit(s[j + 4]); e = hex_digit(s[j + 5]);
        if (a < 0 || b < 0 || d < 0 || e < 0) return 0;
        c = (a << 12) | (b << 8) | (d << 4) | e;
        j += 6;
      } else {
        c = (unsigned char)s[j + 1];   /* \/ and \\ stand for themselves */
        j += 2;
      }
    } else {
      c = (unsigned char)s[j++];
    }
    if (c != want[k++]) return 0;
  }
  if (k == sizeof want - 1 && j < n && s[j] == '"') return j + 1 - i;
  return 0;
}

/* At s[i] starts an "api_key" member name `mlen` bytes long: copy it, then
   hide the string value that follows it (a new key in an answer body), up
   to its closing quote. Returns the index after what was consumed. */
static size_t hide_api_key_value(out_t *o, const char *s, size_t n, size_t i,
                                 size_t mlen) {
  size_t j = i + mlen;
  while (i < j) out_char(o, (unsigned char)s[i++]);
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

/* The four hex digits at s[j..j+4) as a number, or -1. */
static long hex4_at(const char *s, size_t n, size_t j) {
  long v = 0;
  size_t k;
  if (j > n || n - j < 4) return -1;
  for (k = 0; k < 4; k++) {
    int d = hex_digit(s[j + k]);
    if (d < 0) return -1;
    v = (v << 4) | d;
  }
  return v;
}

/* Code point cp as UTF-8 into u; its length (1-4). */
static size_t utf8_of(unsigned long cp, unsigned char u[4]) {
  if (cp < 0x80) { u[0] = (unsigned char)cp; return 1; }
  if (cp < 0x800) {
    u[0] = (unsigned char)(0xC0 | (cp >> 6));
    u[1] = (unsigned char)(0x80 | (cp & 0x3F));
    return 2;
  }
  if (cp < 0x10000) {
    u[0] = (unsigned char)(0xE0 | (cp >> 12));
    u[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    u[2] = (unsigned char)(0x80 | (cp & 0x3F));
    return 3;
  }
  u[0] = (unsigned char)(0xF0 | (cp >> 18));
  u[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
  u[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
  u[3] = (unsigned char)(0x80 | (cp & 0x3F));
  return 4;
}

/* One unit of text at s[j..n) read as the bytes it stands for: a JSON
   escape (\uXXXX, a surrogate pair of them, or \/ \\ \" \b \f \n \r \t),
   a percent-encoded byte (%XX), or the byte itself. Puts the bytes in u
   and their count in *m; returns the text's length (0 at the end). */
static size_t unit_at(const char *s, size_t n, size_t j, unsigned char u[4],
                      size_t *m) {
  static const char SHORT[] = "/\\\"bfnrt", SHORT_BYTE[] = "/\\\"\b\f\n\r\t";
  if (j >= n) return 0;
  if (s[j] == '\\' && j + 1 < n) {
    const char *e = strchr(SHORT, s[j + 1]);
    long cp = s[j + 1] == 'u' ? hex4_at(s, n, j + 2) : -1;
    if (cp >= 0xD800 && cp <= 0xDBFF && n - j >= 12 && s[j + 6] == '\\' &&
        s[j + 7] == 'u') {
      long lo = hex4_at(s, n, j + 8);
      if (lo >= 0xDC00 && lo <= 0xDFFF) {
        *m = utf8_of(0x10000 + (((unsigned long)cp - 0xD800) << 10) +
                     ((unsigned long)lo - 0xDC00), u);
        return 12;
      }
    }
    if (cp >= 0) {
      *m = utf8_of((unsigned long)cp, u);
      return 6;
    }
    if (e != NULL && s[j + 1] != '\0') {
      u[0] = (unsigned char)SHORT_BYTE[e - SHORT];
      *m = 1;
      return 2;
    }
  } else if (s[j] == '%' && n - j >= 3) {
    int a = hex_digit(s[j + 1]), b = hex_digit(s[j + 2]);
    if (a >= 0 && b >= 0) {
      u[0] = (unsigned char)((a << 4) | b);
      *m = 1;
      return 3;
    }
  }
  u[0] = (unsigned char)s[j];
  *m = 1;
  return 1;
}

/* How far the text at s[i..n) spells key[0..klen), unit by unit (as
   itself, JSON-escaped or percent-encoded, forms mixed): the key bytes
   matched go to *matched, the text's length is returned. */
static size_t match_units(const char *key, size_t klen, const char *s,
                          size_t n, size_t i, int fold, size_t *matched) {
  size_t j = i, k = 0;
  while (k < klen) {
    unsigned char u[4];
    size_t m, x, len = unit_at(s, n, j, u, &m);
    if (len == 0) break;
    for (x = 0; x < m && x < klen - k; x++) {
      int c = u[x], want = (unsigned char)key[k + x];
      if (fold ? tolower(c) != tolower(want) : c != want) break;
    }
    if (x == m) {
      j += len;
      k += m;
      continue;
    }
    /* A key may hold "%41" or "\t" itself: the escape, read as the
       bytes it is, may be what matches. */
    if (len > 1 && (fold ? tolower((unsigned char)s[j]) == tolower((unsigned char)key[k])
                         : s[j] == key[k])) {
      j++;
      k++;
      continue;
    }
    break;
  }
  *matched = k;
  return j - i;
}

/* A piece of a secret this long or longer is hidden as the whole would
   be: a server that quotes a key cut short (a 403 page quoting its first
   24 characters, an answer dropped mid-echo) gives away most of it. */
#define SID_PIECE_MIN 12

/* Secrets longer than this (SlashID's keys are about 40 bytes; a server
   could issue one of 32 KiB) are hidden whole and as they are: looking
   for every form and every piece of one at every byte of a long text
   would take time that grows with both lengths. */
#define SID_SCAN_MAX 1024

/* Length of the text at s[i..n) to hide: the longest run that spells a
   whole secret, or SID_PIECE_MIN or more bytes of one from any point in
   it, in any form unit_at reads; 0 when there is none. */
static size_t hidden_at(const sid_secrets *k, const char *s, size_t n,
                        size_t i, int fold) {
  size_t best = 0;
  unsigned char u[4];
  size_t m;
  int j;
  if (k == NULL || unit_at(s, n, i, u, &m) == 0) return 0;
  for (j = 0; j < SID_SECRETS; j++) {
    const char *key = k->key[j];
    size_t klen = k->len[j], p;
    if (key == NULL || klen == 0) continue;
    if (klen > SID_SCAN_MAX) {
      if (n - i >= klen && (fold ? strncasecmp(s + i, key, klen) == 0
                                 : memcmp(s + i, key, klen) == 0) && klen > best)
        best = klen;
      continue;
    }
    for (p = 0; p < klen; p++) {
      size_t matched, len;
      int c = u[0], want = (unsigned char)key[p];
      if (fold ? tolower(c) != tolower(want) : c != want) continue;
      if (p > 0 && klen < SID_PIECE_MIN) break;   /* short: whole only */
      len = match_units(key + p, klen - p, s, n, i, fold, &matched);
      if ((matched == klen - p && p == 0) || matched >= SID_PIECE_MIN) {
        if (len > best) best = len;
      }
    }
  }
  return best;
}

/* Whether the n bytes at g occur in key[0..klen) (in any case: fold). */
static int occurs_in(const char *key, size_t klen, const char *g, size_t n,
                     int fold) {
  size_t p, x;
  if (!fold) return memmem(key, klen, g, n) != NULL;
  for (p = 0; p + n <= klen; p++) {
    for (x = 0; x < n; x++)
      if (tolower((unsigned char)key[p + x]) != tolower((unsigned char)g[x]))
        break;
    if (x == n) return 1;
  }
  return 0;
}

/* Whether s may hold a secret, or a piece of one, as it is (not escaped):
   a cheap test that rules out almost every text. A piece of
   SID_PIECE_MIN (12) bytes covers a whole 6-byte block of s starting at
   a multiple of 6, so s holds none when none of those blocks occurs in a
   secret: n / 6 short searches per secret instead of one per position. */
#define SID_BLOCK 6
/* Whether the SID_BLOCK bytes at g occur in key[0..klen), in any case
   when fold. Each candidate is found by its first byte (memchr, in both
   cases when fold) and then compared: glibc's memmem sets up a table on
   every call, which costs more than the whole search of a 40-byte key. */
static int block_in(const char *key, size_t klen, const char *g, int fold) {
  int pass, c = (unsigned char)g[0];
  int first[2];
  first[0] = fold ? tolower(c) : c;
  first[1] = fold ? toupper(c) : c;
  for (pass = 0; pass < (first[1] != first[0] ? 2 : 1); pass++) {
    const char *at = key, *end = key + klen;
    while (end - at >= SID_BLOCK &&
           (at = (const char *)memchr(at, first[pass],
                                      (size_t)(end - at) - (SID_BLOCK - 1))) != NULL) {
      size_t x;
      for (x = 1; x < SID_BLOCK; x++)
        if (fold ? tolower((unsigned char)at[x]) != tolower((unsigned char)g[x])
                 : at[x] != g[x])
          break;
      if (x == SID_BLOCK) return 1;
      at++;
    }
  }
  return 0;
}

static int may_hold_secret(const sid_secrets *k, const char *s, size_t n,
                           int fold) {
  int j;
  for (j = 0; k && j < SID_SECRETS; j++) {
    const char *key = k->key[j];
    size_t p, len = k->len[j];
    if (key == NULL || len == 0) continue;
    if (len < SID_PIECE_MIN || len > SID_SCAN_MAX) {   /* only whole */
      if (len <= n && occurs_in(s, n, key, len, fold)) return 1;
      continue;
    }
    if (n < SID_PIECE_MIN) continue;     /* no piece fits, nor the whole */
    for (p = 0; p + SID_BLOCK <= n; p += SID_BLOCK)
      if (block_in(key, len, s + p, fold)) return 1;
  }
  return 0;
}

/* True when s needs no change at all: the common case for headers and
   short messages, pushed without copying byte by byte. */
static int is_clean(const char *s, size_t n, const sid_secrets *k,
                    size_t max, int printable, int fold) {
  size_t i;
  if (max && n > max) return 0;
  if (may_hold_secret(k, s, n, fold)) return 0;
  if (memmem(s, n, API_KEY_MEMBER, sizeof(API_KEY_MEMBER) - 1) != NULL)
    return 0;
  if (memchr(s, '\\', n) != NULL || memchr(s, '%', n) != NULL)
    return 0;                 /* maybe an escaped name, or an encoded key */
  if (printable)
    for (i = 0; i < n; i++) {
      unsigned char c = (unsigned char)s[i];
      if ((c < 0x20 && c != '\t') || c == 0x7f) return 0;
    }
  return 1;
}

static void push_redacted(lua_State *L, const char *s, size_t n,
                          const sid_secrets *secrets, size_t max,
                          int printable, int fold) {
  out_t o;
  size_t i = 0;
  if (s == NULL) n = 0;
  if (n == 0 || (!(fold & SID_FOLD_LOWER) &&
                 is_clean(s, n, secrets, max, printable, fold & SID_FOLD_MATCH))) {
    lua_pushlstring(L, n ? s : "", n);
    return;
  }
  o.len = 0;
  o.max = max;
  o.printable = printable;
  o.fold = fold;
  luaL_buffinit(L, &o.b);
  while (i < n && !out_full(&o)) {
    size_t len = hidden_at(secrets, s, n, i, fold & SID_FOLD_MATCH), mlen;
    if (len) {
      out_text(&o, REDACTED);
      i += len;
    } else if (s[i] == '"' && (mlen = api_key_member_at(s, n, i)) != 0) {
      i = hide_api_key_value(&o, s, n, i, mlen);
    } else {
      out_char(&o, (unsigned char)s[i++]);
    }
  }
  luaL_pushresult(&o.b);
}

void sid_push_redacted(lua_State *L, const char *s, size_t n,
                       const sid_secrets *secrets, size_t max, int printable) {
  push_redacted(L, s, n, secrets, max, printable, 0);
}

/* A header name: secrets matched in any case (HTTP/2 lowers names, and a
   server may too), the result in lower case. */
/* True when a header name needs nothing but lowering: printable, no
   quote (no "api_key" member), no secret in any case. */
static int name_is_clean(const char *s, size_t n, const sid_secrets *k) {
  size_t i;
  for (i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c < 0x20 || c == 0x7f || c == '"' || c == '\\' || c == '%') return 0;
  }
  return !may_hold_secret(k, s, n, SID_FOLD_MATCH);
}

void sid_push_redacted_name(lua_State *L, const char *s, size_t n,
                            const sid_secrets *secrets) {
  char lower[64];
  if (n > 0 && n <= sizeof lower && name_is_clean(s, n, secrets)) {
    size_t i;
    for (i = 0; i < n; i++) lower[i] = (char)tolower((unsigned char)s[i]);
    lua_pushlstring(L, lower, n);
    return;
  }
  push_redacted(L, s, n, secrets, 0, 1, SID_FOLD_MATCH | SID_FOLD_LOWER);
}

/* A header line of the trace: secrets matched in any case, text kept. */
void sid_push_redacted_folded(lua_State *L, const char *s, size_t n,
                              const sid_secrets *secrets) {
  push_redacted(L, s, n, secrets, 0, 1, SID_FOLD_MATCH);
}
