/*
 * decode.c - an answer's Content-Encoding, undone here rather than by
 * libcurl. libcurl, asked to decode, drops the whole body on any fault
 * (CURLE_BAD_CONTENT_ENCODING): a plain JSON envelope that a gateway
 * labels "Content-Encoding: utf-8", or "gzip" on bytes that are not, was
 * lost with the key the server had just issued. So libcurl hands over the
 * bytes as they came (request.c turns its decoding off), and here the
 * codings the request offers (gzip, deflate) are undone with zlib, in the
 * reverse of the order they are listed (RFC 9110: "gzip, gzip" twice),
 * over every Content-Encoding header of the answer but not its trailers.
 *
 * A label is a claim, not a fact, so the bytes decide: a body that reads
 * as JSON as it came is kept as it came when its decoding does not; what
 * cannot be decoded (an unknown coding, bytes that are not what the label
 * says) is read as it came. Decoded text over max_response_bytes makes the
 * answer too large, as the bytes would have.
 */
#include <string.h>
#include <strings.h>
#include <zlib.h>
#include "slashid.h"

enum { CODING_GZIP = 1, CODING_DEFLATE = 2 };
#define MAX_CODINGS 4

/* Adds the codings of one header value (a comma-separated list) to
   codes[*n]; identity is no coding. 0 when one is unknown or there are
   too many. */
static int add_codings(const char *v, const char *end, int codes[], int *n) {
  while (v < end) {
    const char *comma = (const char *)memchr(v, ',', (size_t)(end - v));
    const char *e = comma ? comma : end, *b = v;
    size_t len;
    while (b < e && (*b == ' ' || *b == '\t')) b++;
    while (e > b && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r')) e--;
    len = (size_t)(e - b);
    if (len == 0 || (len == 8 && strncasecmp(b, "identity", 8) == 0)) {
      /* nothing to undo */
    } else if (*n >= MAX_CODINGS) {
      return 0;
    } else if ((len == 4 && strncasecmp(b, "gzip", 4) == 0) ||
               (len == 6 && strncasecmp(b, "x-gzip", 6) == 0)) {
      codes[(*n)++] = CODING_GZIP;
    } else if (len == 7 && strncasecmp(b, "deflate", 7) == 0) {
      codes[(*n)++] = CODING_DEFLATE;
    } else {
      return 0;
    }
    v = comma ? comma + 1 : end;
  }
  return 1;
}

/* The codings of the answer's Content-Encoding headers, in the order
   they were applied, from the headers before the body (a trailer cannot
   relabel a body already sent). -1 when one is not gzip or deflate. */
static int codings_of(const sid_transfer *t, int codes[]) {
  static const char NAME[] = "content-encoding:";
  const char *p = t->ans.head.data;
  const char *end = p ? p + (t->ans.head_at_body ? t->ans.head_at_body : t->ans.head.len)
                      : NULL;
  int n = 0;
  while (p && p < end) {
    const char *eol = (const char *)memchr(p, '\n', (size_t)(end - p));
    const char *next = eol ? eol + 1 : end;
    if ((size_t)(next - p) > sizeof NAME - 1 &&
        strncasecmp(p, NAME, sizeof NAME - 1) == 0 &&
        !add_codings(p + sizeof NAME - 1, eol ? eol : end, codes, &n))
      return -1;
    p = next;
  }
  return n;
}

/* Whether text reads as JSON from its first byte: '{' or '[' after
   white space (and a byte order mark, which the parsers skip). */
static int looks_like_json(const sid_buf *b) {
  size_t i = 0;
  if (b->len >= 3 && memcmp(b->data, "\xEF\xBB\xBF", 3) == 0) i = 3;
  while (i < b->len && (b->data[i] == ' ' || b->data[i] == '\t' ||
                        b->data[i] == '\r' || b->data[i] == '\n'))
    i++;
  return i < b->len && (b->data[i] == '{' || b->data[i] == '[');
}

/* Inflates `in` with zlib's window bits `bits` into `out` (empty), at
   most `max` bytes; gzip members one after another are read as one text.
   1: usable (the stream ended, or the input ran out after giving
   something, or only the trailer's check failed: every byte of the data
   was read); 0: not this coding; 2: over `max`; -1: out of memory. `out`
   is left empty unless 1. */
static int inflate_into(const sid_buf *in, int bits, size_t max, sid_buf *out) {
  z_stream z;
  unsigned char chunk[16384];
  int rc;
  memset(&z, 0, sizeof z);
  if (inflateInit2(&z, bits) != Z_OK) return -1;
  z.next_in = (unsigned char *)in->data;
  z.avail_in = (uInt)in->len;
  for (;;) {
    size_t got;
    z.next_out = chunk;
    z.avail_out = sizeof chunk;
    rc = inflate(&z, Z_NO_FLUSH);
    got = sizeof chunk - z.avail_out;
    if (got && out->len + got > max) { rc = 2; break; }
    if (got && !sid_buf_append(out, (char *)chunk, got)) { rc = Z_MEM_ERROR; break; }
    /* another gzip member after this one: the text goes on */
    if (rc == Z_STREAM_END && z.avail_in >= 2 && z.next_in[0] == 0x1f &&
        z.next_in[1] == 0x8b) {
      if (inflateReset(&z) != Z_OK) { rc = Z_MEM_ERROR; break; }
      continue;
    }
    if (rc != Z_OK || (z.avail_in == 0 && z.avail_out != 0)) break;
  }
  if (rc == Z_DATA_ERROR && z.msg &&
      (strcmp(z.msg, "incorrect data check") == 0 ||
       strcmp(z.msg, "incorrect length check") == 0))
    rc = Z_STREAM_END;        /* the data was whole; only its check failed */
  inflateEnd(&z);
  sid_wipe(chunk, sizeof chunk);
  if (rc == Z_MEM_ERROR) { sid_buf_free(out); return -1; }
  if (rc == 2) { sid_buf_free(out); return 2; }
  if (rc == Z_STREAM_END ||
      ((rc == Z_OK || rc == Z_BUF_ERROR) && z.avail_in == 0 && out->len > 0))
    return 1;
  sid_buf_free(out);
  return 0;
}

/* Undoes one coding of `in` into `out`: zlib finds a gzip or a zlib
   header itself (15 + 32); raw deflate, which some servers send under
   either label, is tried next. */
static int undo(const sid_buf *in, size_t max, sid_buf *out) {
  int rc = inflate_into(in, 15 + 32, max, out);
  if (rc == 0) rc = inflate_into(in, -15, max, out);
  return rc;
}

/* The body, decoded when its codings are ones this file undoes and the
   bytes are what the labels say; kept as it came otherwise. Once per
   answer (t->ans.decoded): building the answer again after a memory error
   reads the same bytes. Returns -1 when memory ran out (nothing changed:
   the caller raises and the answer is built again later). */
int sid_decode_body(sid_transfer *t) {
  int codes[MAX_CODINGS], n, i, rc = 1;
  sid_buf cur = {NULL, 0, 0};
  if (t->ans.decoded || t->ans.body.len == 0 || t->ans.too_large) return 0;
  n = codings_of(t, codes);
  for (i = n - 1; i >= 0 && rc == 1; i--) {
    sid_buf next = {NULL, 0, 0};
    rc = undo(i == n - 1 ? &t->ans.body : &cur, t->req.max_bytes, &next);
    sid_buf_free(&cur);         /* wiped: an intermediate text */
    cur = next;
  }
  if (rc < 0) return -1;
  if (n > 0 && rc == 2) {
    t->ans.too_large = 1;           /* decoded, it is over max_response_bytes */
  } else if (n > 0 && rc == 1 &&
             (looks_like_json(&cur) || !looks_like_json(&t->ans.body))) {
    sid_buf_free(&t->ans.body);     /* wiped: it held the key encoded */
    t->ans.body = cur;
    cur.data = NULL;
    cur.len = cur.cap = 0;
  }
  sid_buf_free(&cur);
  t->ans.decoded = 1;
  return 0;
}
