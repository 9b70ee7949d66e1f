/*
 * tolerant.c - a 2xx answer the strict parser refused may still carry a
 * new key that is live: the old one died when the server issued it. RFC
 * 8259's grammar allows what cjson refuses (a lone surrogate escape in
 * some message, nesting deeper than its limit), and a server may add
 * such members beside `result`. This reader walks the envelope's own
 * structure, not its text: the top-level object member by member, every
 * value it does not need skipped whole (strings with their escapes,
 * nested values by depth, so a string holding `"api_key":"..."` never
 * fools it), and only `result` opened, to take `api_key` when it is a
 * well-formed, non-empty JSON string. What follows the key may be broken
 * (a trailing comma, a member cut short, a missing last brace): a key
 * whose closing quote arrived is whole. The caller says whether that is
 * enough: for an answer whose transfer failed it wants the whole object.
 */
#include <string.h>
#include "slashid.h"

typedef struct {
  const char *s;
  size_t n, i;
} reader;

static void skip_space(reader *r) {
  while (r->i < r->n && (r->s[r->i] == ' ' || r->s[r->i] == '\t' ||
                         r->s[r->i] == '\n' || r->s[r->i] == '\r'))
    r->i++;
}

static int hex4(const char *p) {
  int v = 0, k;
  for (k = 0; k < 4; k++) {
    char c = p[k];
    v <<= 4;
    if (c >= '0' && c <= '9') v |= c - '0';
    else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
    else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
    else return -1;
  }
  return v;
}

/* Past a string starting at its opening quote, escapes taken as they
   come (none checked): 0 when it never ends. */
static int skip_string(reader *r) {
  r->i++;
  while (r->i < r->n) {
    char c = r->s[r->i];
    if (c == '"') { r->i++; return 1; }
    r->i += (c == '\\') ? 2 : 1;
  }
  return 0;
}

/* Past any value: a string, a nested object or array (depth counted, not
   recursed), or a bare token (number, true, false, null). */
static int skip_value(reader *r) {
  size_t depth = 0;
  skip_space(r);
  if (r->i >= r->n) return 0;
  do {
    char c = r->s[r->i];
    if (c == '"') {
      if (!skip_string(r)) return 0;
    } else if (c == '{' || c == '[') {
      depth++;
      r->i++;
    } else if (c == '}' || c == ']') {
      if (depth == 0) return 0;
      depth--;
      r->i++;
    } else if (depth == 0) {
      size_t start = r->i;
      while (r->i < r->n && strchr(",}] \t\r\n", r->s[r->i]) == NULL) r->i++;
      return r->i > start;
    } else {
      r->i++;
    }
  } while (depth > 0 && r->i < r->n);
  return depth == 0;
}

/* Appends code point `cp` as UTF-8. */
static void add_utf8(luaL_Buffer *b, unsigned long cp) {
  if (cp < 0x80) {
    luaL_addchar(b, (char)cp);
  } else if (cp < 0x800) {
    luaL_addchar(b, (char)(0xC0 | (cp >> 6)));
    luaL_addchar(b, (char)(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    luaL_addchar(b, (char)(0xE0 | (cp >> 12)));
    luaL_addchar(b, (char)(0x80 | ((cp >> 6) & 0x3F)));
    luaL_addchar(b, (char)(0x80 | (cp & 0x3F)));
  } else {
    luaL_addchar(b, (char)(0xF0 | (cp >> 18)));
    luaL_addchar(b, (char)(0x80 | ((cp >> 12) & 0x3F)));
    luaL_addchar(b, (char)(0x80 | ((cp >> 6) & 0x3F)));
    luaL_addchar(b, (char)(0x80 | (cp & 0x3F)));
  }
}

/* A string at its opening quote, decoded strictly: no raw control byte,
   only JSON's escapes, surrogates in pairs. Pushes it and returns 1; on
   anything malformed returns 0 (the string still skipped when it ends). */
static int read_string(lua_State *L, reader *r) {
  luaL_Buffer b;
  size_t start = r->i;
  luaL_buffinit(L, &b);
  r->i++;
  while (r->i < r->n) {
    unsigned char c = (unsigned char)r->s[r->i];
    if (c == '"') {
      r->i++;
      luaL_pushresult(&b);
      return 1;
    }
    if (c < 0x20) break;
    if (c != '\\') {
      luaL_addchar(&b, (char)c);
      r->i++;
      continue;
    }
    if (r->i + 1 >= r->n) break;
    c = (unsigned char)r->s[r->i + 1];
    r->i += 2;
    switch (c) {
      case '"': case '\\': case '/': luaL_addchar(&b, (char)c); break;
      case 'b': luaL_addchar(&b, '\b'); break;
      case 'f': luaL_addchar(&b, '\f'); break;
      case 'n': luaL_addchar(&b, '\n'); break;
      case 'r': luaL_addchar(&b, '\r'); break;
      case 't': luaL_addchar(&b, '\t'); break;
      case 'u': {
        int hi, lo;
        if (r->n - r->i < 4 || (hi = hex4(r->s + r->i)) < 0) goto malformed;
        r->i += 4;
        if (hi >= 0xDC00 && hi <= 0xDFFF) goto malformed;     /* lone low */
        if (hi >= 0xD800 && hi <= 0xDBFF) {
          if (r->n - r->i < 6 || r->s[r->i] != '\\' || r->s[r->i + 1] != 'u' ||
              (lo = hex4(r->s + r->i + 2)) < 0 || lo < 0xDC00 || lo > 0xDFFF)
            goto malformed;                                    /* lone high */
          r->i += 6;
          add_utf8(&b, 0x10000 + (((unsigned long)hi - 0xD800) << 10) +
                       ((unsigned long)lo - 0xDC00));
        } else {
          add_utf8(&b, (unsigned long)hi);
        }
        break;
      }
      default: goto malformed;
    }
  }
malformed:
  luaL_pushresult(&b);
  lua_pop(L, 1);
  r->i = start;
  skip_string(r);
  return 0;
}

/* Whether the member name at r (a string) is `want`, escapes decoded;
   the name is skipped either way. */
static int name_is(lua_State *L, reader *r, const char *want) {
  int yes = 0;
  if (read_string(L, r)) {
    size_t len;
    const char *name = lua_tolstring(L, -1, &len);
    yes = len == strlen(want) && memcmp(name, want, len) == 0;
    lua_pop(L, 1);
  }
  return yes;
}

/* Walks an object's members at r (on its '{'): for the member `want`,
   calls take(L, r) at its value, which must consume it; other values are
   skipped. Returns 1 once the object is closed. */
static int walk_object(lua_State *L, reader *r, const char *want,
                       int (*take)(lua_State *, reader *, int), int found) {
  r->i++;
  skip_space(r);
  if (r->i < r->n && r->s[r->i] == '}') { r->i++; return 1; }
  while (r->i < r->n) {
    int match;
    skip_space(r);
    if (r->i >= r->n || r->s[r->i] != '"') return 0;
    match = name_is(L, r, want);
    skip_space(r);
    if (r->i >= r->n || r->s[r->i] != ':') return 0;
    r->i++;
    skip_space(r);
    if (match) {
      if (!take(L, r, found)) return 0;
    } else if (!skip_value(r)) {
      return 0;
    }
    skip_space(r);
    if (r->i >= r->n) return 0;
    if (r->s[r->i] == '}') { r->i++; return 1; }
    if (r->s[r->i] != ',') return 0;
    r->i++;
  }
  return 0;
}

/* result.api_key's value: a well-formed non-empty string replaces the
   slot at `found` (the last one wins, as with a strict parser). */
static int take_api_key(lua_State *L, reader *r, int found) {
  if (r->i < r->n && r->s[r->i] == '"') {
    if (read_string(L, r)) {
      if (sid_rawlen(L, -1) > 0) lua_replace(L, found);
      else lua_pop(L, 1);
    }
    return 1;
  }
  return skip_value(r);
}

static int take_result(lua_State *L, reader *r, int found) {
  if (r->i < r->n && r->s[r->i] == '{')
    return walk_object(L, r, "api_key", take_api_key, found);
  return skip_value(r);
}

int sid_tolerant_api_key(lua_State *L, const char *s, size_t n, int whole) {
  reader r;
  int found, walked;
  r.s = s;
  r.n = n;
  r.i = 0;
  luaL_checkstack(L, 4, "tolerant read");
  lua_pushnil(L);
  found = lua_gettop(L);
  /* a UTF-8 byte-order mark before the envelope (RFC 8259 lets parsers
     ignore one) */
  if (n >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0) r.i = 3;
  skip_space(&r);
  walked = r.i < r.n && r.s[r.i] == '{' &&
           walk_object(L, &r, "result", take_result, found);
  if ((whole && !walked) || lua_type(L, found) != LUA_TSTRING) {
    lua_pop(L, 1);
    return 0;
  }
  return 1;
}
