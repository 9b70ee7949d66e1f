/*
 * decode.c - an answer's Content-Encoding, undone here rather than by
 * libcurl. libcurl, asked to decode, drops the whole body on any fault
 * (CURLE_BAD_CONTENT_ENCODING): a plain JSON envelope that a gateway
 * labels "Content-Encoding: utf-8", or "gzip" on bytes that are not, was
 * lost with the key the server had just issued. So libcurl hands over the
 * bytes as they came (request.c turns its decoding off), and here gzip,
 * x-gzip and deflate are inflated with zlib; whatever cannot be decoded
 * (an unknown coding, bytes that are not what the label says) is read as
 * it came. The request offers only the codings this file undoes.
 */
#include <string.h>
#include <strings.h>
#include <zlib.h>
#include "slashid.h"

/* The value of the answer's last Content-Encoding header, trimmed, into
   out (cap bytes with the NUL); 0 when there is none, or it is longer. */
static int coding_of(const sid_buf *head, char *out, size_t cap) {
  static const char NAME[] = "content-encoding:";
  const char *p = head->data, *end = p ? p + head->len : NULL;
  int found = 0;
  while (p && p < end) {
    const char *eol = (const char *)memchr(p, '\n', (size_t)(end - p));
    const char *next = eol ? eol + 1 : end;
    size_t n = (size_t)(next - p);
    if (n > sizeof NAME - 1 && strncasecmp(p, NAME, sizeof NAME - 1) == 0) {
      const char *v = p + sizeof NAME - 1, *ve = next;
      while (v < ve && (*v == ' ' || *v == '\t')) v++;
      while (ve > v && (ve[-1] == '\r' || ve[-1] == '\n' || ve[-1] == ' ' ||
                        ve[-1] == '\t'))
        ve--;
      found = (size_t)(ve - v) < cap;
      if (found) {
        memcpy(out, v, (size_t)(ve - v));
        out[ve - v] = '\0';
      }
    }
    p = next;
  }
  return found;
}

/* Inflates `in` with zlib's window bits `bits` into `out`, at most `max`
   bytes. 1: usable (the stream ended, or the input ran out mid-stream
   after giving something: a gzip without its trailer); 0: not this
   coding, or over `max`; -1: out of memory. */
static int inflate_into(const sid_buf *in, int bits, size_t max, sid_buf *out) {
  z_stream z;
  unsigned char chunk[16384];
  int rc, usable;
  memset(&z, 0, sizeof z);
  if (inflateInit2(&z, bits) != Z_OK) return -1;
  z.next_in = (unsigned char *)in->data;
  z.avail_in = (uInt)in->len;
  do {
    size_t got;
    z.next_out = chunk;
    z.avail_out = sizeof chunk;
    rc = inflate(&z, Z_NO_FLUSH);
    got = sizeof chunk - z.avail_out;
    if (got && (out->len + got > max || !sid_buf_append(out, (char *)chunk, got))) {
      rc = out->len + got > max ? Z_DATA_ERROR : Z_MEM_ERROR;
      break;
    }
  } while (rc == Z_OK && (z.avail_in > 0 || z.avail_out == 0));
  inflateEnd(&z);
  sid_wipe(chunk, sizeof chunk);
  if (rc == Z_MEM_ERROR) return -1;
  usable = rc == Z_STREAM_END ||
           ((rc == Z_OK || rc == Z_BUF_ERROR) && z.avail_in == 0 && out->len > 0);
  if (!usable) sid_buf_free(out);
  return usable;
}

/* The body, decoded when its Content-Encoding is one this file undoes
   and the bytes are what the label says; kept as it came otherwise.
   Once per answer (t->decoded): building the answer again after a memory
   error reads the same bytes. Returns -1 when memory ran out (nothing
   changed: the caller raises and the answer is built again later). */
int sid_decode_body(sid_transfer *t) {
  char coding[32];
  sid_buf out = {NULL, 0, 0};
  int rc = 0;
  if (t->decoded || t->body.len == 0 || t->too_large) return 0;
  if (coding_of(&t->head, coding, sizeof coding)) {
    /* 15 + 32: zlib reads a gzip or a zlib header, whichever it finds;
       "deflate" is meant as zlib (RFC 9110) but sent raw by some */
    if (strcasecmp(coding, "gzip") == 0 || strcasecmp(coding, "x-gzip") == 0)
      rc = inflate_into(&t->body, 15 + 32, t->max_bytes, &out);
    else if (strcasecmp(coding, "deflate") == 0) {
      rc = inflate_into(&t->body, 15 + 32, t->max_bytes, &out);
      if (rc == 0) rc = inflate_into(&t->body, -15, t->max_bytes, &out);
    }
  }
  if (rc < 0) return -1;
  if (rc > 0) {
    sid_buf_free(&t->body);        /* wiped: it held the key encoded */
    t->body = out;
  }
  t->decoded = 1;
  return 0;
}
