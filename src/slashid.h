/*
 * slashid.h - what the C files of slashid.core share. Nothing here is
 * exported: the only public symbol of the module is luaopen_slashid_core.
 */
#ifndef SLASHID_H
#define SLASHID_H

#include <stddef.h>
#include "compat.h"

/* Raises a message as is: no "file:line:" of the Lua caller in front, so
   it starts with "slashid: " like the Lua layer's errors. */
#define sid_raise(L, msg) (lua_pushstring((L), (msg)), lua_error(L))
#define SID_EXCERPT_MAX 200   /* bytes of a body quoted in an errors entry */
#define SID_TRACE_BODY_MAX 2048
/* Fixed cap on the header bytes of one attempt (every header block,
   interim answers included). max_response_bytes caps the body only. */
#define SID_HEAD_MAX (64 * 1024)

/* ---- secret.c: growable buffers that are wiped before release -------- */
typedef struct sid_buf {
  char *data;
  size_t len, cap;
} sid_buf;

int  sid_buf_append(sid_buf *b, const char *p, size_t n); /* 0 on ENOMEM */
void sid_buf_reset(sid_buf *b);  /* wipe contents, keep the allocation */
void sid_buf_free(sid_buf *b);   /* wipe and release */
void sid_wipe(void *p, size_t n);
char *sid_strdup_secret(const char *s, size_t n);
void sid_free_secret(char **p, size_t n);

/* The secrets of one exchange: the key sent (slot 0), the new key once
   the answer is read (slot 1), and proxy credentials (the rest). Any slot
   may be empty (NULL). */
#define SID_SECRETS 8
#define SID_SECRET_KEY 0
#define SID_SECRET_NEW_KEY 1
#define SID_SECRET_EXTRA 2       /* first slot for request.secrets */
typedef struct sid_secrets {
  const char *key[SID_SECRETS];
  size_t len[SID_SECRETS];
} sid_secrets;

/* Pushes s with every occurrence of a secret and every JSON "api_key"
   string value replaced by <redacted>, then cut to `max` bytes (0: no cut)
   with control characters other than tab shown as '?' when `printable`. */
void sid_push_redacted(lua_State *L, const char *s, size_t n,
                       const sid_secrets *secrets, size_t max, int printable);
/* The same for a header name: secrets found in any case, the result in
   lower case. */
void sid_push_redacted_name(lua_State *L, const char *s, size_t n,
                            const sid_secrets *secrets);
/* A header line: secrets found in any case, the text otherwise kept. */
void sid_push_redacted_folded(lua_State *L, const char *s, size_t n,
                              const sid_secrets *secrets);

/* ---- transfer.c: a transfer, owned in one place --------------------- */
/* A slashid.Handle is a sid_transfer: one kept easy handle, the request
   set up on it, and one attempt's state. transfer.c decides where it
   lives (blocking on its own multi, or attached to a slashid.Multi's
   list), which lua_State its callbacks may call, and when it dies;
   request.c fills in the request, answer.c reads the answer. libcurl's
   CURLOPT_PRIVATE points at the object itself. */
struct sid_transfer;
typedef struct sid_transfer_list {   /* a slashid.Multi's transfers */
  CURLM *multi;
  struct sid_transfer *first;  /* doubly linked through prev/next */
  int count;
} sid_transfer_list;

/* The request set up on a handle: request.c's alone (sid_request_set,
   _rekey, _clear), kept across attempts and calls until another request
   table comes. The table itself is the handle's user value, not a
   registry reference: a debug function that refers to its client must
   not keep the client alive. */
typedef struct sid_request {
  int set;                    /* the user value is the request set up */
  struct curl_slist *headers; /* one of them holds the key: wiped on clear */
  char *api_key;              /* copy kept for redaction, wiped on clear */
  size_t api_key_len;
  char *extra_secret[SID_SECRETS - SID_SECRET_EXTRA]; /* owned, wiped */
  size_t extra_secret_len[SID_SECRETS - SID_SECRET_EXTRA];
  size_t max_bytes;           /* cap on the body (max_response_bytes) */
  double timeout;             /* request_timeout, seconds (deadline.c) */
  int single_send;            /* refuse libcurl's own re-send (the PUT) */
  CURLcode setup_rc;          /* first refused setopt, or CURLE_OK: such a
                                 request is never kept (set up again) */
} sid_request;

/* One attempt's answer: answer.c's (its callbacks collect it,
   sid_answer_clear wipes it, sid_answer_build reads it; decode.c may
   replace the body by its decoding). transfer.c's pre-request callback
   counts the sends, which the answer reports. */
typedef struct sid_answer {
  sid_buf body;               /* answer body, capped */
  sid_buf head;               /* header lines of the last response */
  size_t received;            /* body bytes so far */
  size_t head_received;       /* header bytes so far, this block */
  int too_large;              /* the body went over max_bytes */
  int head_too_large;         /* the headers went over SID_HEAD_MAX */
  int out_of_memory;
  int decoded;                /* Content-Encoding looked at (decode.c) */
  size_t head_at_body;        /* head.len when the body began: what follows
                                 is trailers (0: no body yet) */
  int requests_sent;          /* how many times libcurl was about to send */
  long connect_status;        /* a proxy's answer to CONNECT, 0 if none */
} sid_answer;

typedef struct sid_transfer {
  CURL *easy;
  /* ---- where it lives and an attempt's life: transfer.c's alone */
  long pid;                   /* the process that made its libcurl state */
  CURLM *own_multi;           /* drives the blocking perform */
  int busy;                   /* held by a call until its answer is built */
  sid_transfer_list *list;    /* attached to this multi's list, or NULL */
  struct sid_transfer *prev, *next;
  int self_ref;               /* registry ref while attached (keeps it alive) */
  int finished;               /* the multi reported it done */
  CURLcode finished_rc;
  int cancelled;              /* collected before it finished */
  lua_State *L;               /* the state whose call is driving libcurl
                                 right now, NULL otherwise: see trace.c */
  char errbuf[CURL_ERROR_SIZE];
  sid_request req;            /* request.c's */
  sid_answer ans;             /* answer.c's */
  /* what every text handed back hides: the request's key and secrets
     (request.c), then the new key once known (answer.c) */
  sid_secrets secrets;
  /* ---- the deadline: deadline.c's alone */
  double deadline;            /* monotonic seconds: request_timeout ends */
  int expired;                /* the deadline passed: last look taken */
  int timed_out;              /* ended by the deadline */
  int no_new_send;            /* a last look: send nothing new */
  /* ---- the call's debug function: trace.c's alone */
  int debug_ref;              /* held during a call only (registry ref), or
                                 LUA_NOREF */
  int debug_failed;
} sid_transfer;

#define SID_HANDLE_MT "slashid.Handle"
#define SID_MULTI_MT "slashid.Multi"

sid_transfer *sid_transfer_new(lua_State *L);      /* pushes the userdata */
sid_transfer *sid_transfer_check(lua_State *L, int idx);
void sid_transfer_own(lua_State *L, sid_transfer *t);  /* after fork: afresh */
int  sid_transfer_reset(sid_transfer *t);  /* curl_easy_reset + fixed options */
sid_transfer *sid_transfer_of(CURL *easy);  /* CURLOPT_PRIVATE */
CURLcode sid_transfer_run(sid_transfer *t);  /* blocking, to the end */
/* A multi's list: attach (the userdata at idx is kept alive meanwhile),
   detach (libcurl told), forget (libcurl left alone: a forked child). */
CURLMcode sid_transfer_attach(lua_State *L, sid_transfer *t, int idx,
                              sid_transfer_list *list);
void sid_transfer_detach(lua_State *L, sid_transfer *t);
void sid_transfer_forget(lua_State *L, sid_transfer *t);
void sid_transfer_release(lua_State *L, sid_transfer *t);  /* close */
/* transfer.c: which lua_State a libcurl callback may call into (the one
   whose call drives libcurl now), and none between calls; trace.c's
   callbacks follow that rule */
void sid_callbacks_on(sid_transfer *t, lua_State *L);
void sid_callbacks_off(sid_transfer *t);
/* transfer.c: an attempt's life (the only writers of busy, finished,
   finished_rc, cancelled) */
void     sid_transfer_start_attempt(sid_transfer *t);
void     sid_transfer_finish(sid_transfer *t, CURLcode rc);
CURLcode sid_transfer_collect_rc(sid_transfer *t);
void     sid_transfer_hold(sid_transfer *t, lua_State *L, CURLcode rc);
void     sid_transfer_release_hold(sid_transfer *t, int built);
void     sid_transfer_forget_answer(sid_transfer *t);

/* pollset.c: one descriptor that polls readable while a socket libcurl
   watches (CURLMOPT_SOCKETFUNCTION) is ready: epoll, on Linux (elsewhere
   none yet: docs/hosts.md), close-on-exec. No Lua: libcurl's callbacks
   use it.
   sid_pollset_open returns -1 with errno (ENOSYS: no such descriptor on
   this platform). sid_pollset_watch takes CURL_POLL_*. sid_pollset_wait
   sleeps at most ms (< 0: no bound) until the set or `extra` (>= 0; the
   signal pipe) polls readable: a mask of the two bits below, 0 when the
   time is up, -1 on error (EINTR included). */
#define SID_POLLSET_READY 1
#define SID_POLLSET_EXTRA 2
int  sid_pollset_open(int *marker);       /* the set; its marker (below) */
int  sid_pollset_watch(int set, curl_socket_t s, int what);
int  sid_pollset_wait(int set, int extra, long ms);
void sid_pollset_close(int *set);
int  sid_pollset_is(int set, int marker, int ready);  /* still ours? */
int  sid_pollset_ready(int set, int *marker);  /* readable for good */

/* deadline.c: request_timeout, checked after each look at the socket */
double   sid_monotonic(void);
void     sid_deadline_start(sid_transfer *t, double seconds);
void     sid_deadline_clear(sid_transfer *t);
void     sid_deadline_look_over(sid_transfer *t);
int      sid_deadline_before_look(sid_transfer *t, double now, int last_look);
CURLcode sid_deadline_after_look(sid_transfer *t, int finished, CURLcode rc);
long     sid_deadline_wait_ms(const sid_transfer *t, double now, long ms);

/* request.c: sid_request_set sets up the request table at req on the
   handle at ud, unless it is the table already set up (then nothing is
   done: the options, header list and key copy are kept);
   sid_request_attempt starts one attempt of it (clean answer state, the
   ca_file check, the debug function, the deadline); sid_request_end
   releases what one call held; sid_request_clear drops the request (key
   copies wiped). */
void sid_request_set(lua_State *L, int req, int ud, sid_transfer *t);
void sid_request_attempt(lua_State *L, int req, sid_transfer *t);
void sid_request_end(lua_State *L, sid_transfer *t);
void sid_request_clear(lua_State *L, sid_transfer *t);
void sid_request_forget(sid_transfer *t);
/* sid_request_rekey: the key of the request set up on the handle replaced
   (a client adopting its new key): 1 done, 0 req is not set up on the
   handle, -1 not done (set a request up instead). */
int sid_request_rekey(lua_State *L, int req, int ud, sid_transfer *t,
                      const char *key, size_t len);

/* answer.c */
size_t sid_answer_on_body(char *p, size_t size, size_t n, void *ud);
size_t sid_answer_on_header(char *p, size_t size, size_t n, void *ud);
int    sid_answer_push(lua_State *L, sid_transfer *t, CURLcode rc);
int    sid_answer_build(lua_State *L, sid_transfer *t, CURLcode rc,
                        long status, double elapsed);
void   sid_answer_clear(sid_transfer *t);   /* wiped: it held the new key */
void   sid_answer_free(sid_transfer *t);    /* wiped and released */

/* trace.c: the debug trace */
int  sid_trace_on_debug(CURL *h, curl_infotype type, char *p, size_t n,
                        void *ud);
void sid_trace_emit(sid_transfer *t, const char *prefix,
                    const char *p, size_t n, size_t max);
void sid_trace_headers(sid_transfer *t);   /* the answer's, once known */
void sid_trace_init(sid_transfer *t);                   /* no debug function */
void sid_trace_hold(lua_State *L, sid_transfer *t);     /* pops the debug value */
void sid_trace_release(lua_State *L, sid_transfer *t);

/* json.c: decode with lua-cjson, JSON null -> nil, integral -> integer.
   Pushes the value and returns 1, or pushes nothing and returns 0. */
int  sid_json_init(lua_State *L);
int  sid_json_decode(lua_State *L, const char *s, size_t n);

/* decode.c: the body's Content-Encoding undone when it can be (gzip,
   deflate), else the bytes kept as they came; -1: out of memory */
int sid_decode_body(sid_transfer *t);

/* curlcode.c */
const char *sid_curlcode_name(CURLcode rc);

/* signal.c: SIGINT/SIGTERM caught for the command line. While caught,
   multi:wait also polls sid_signal_fd() (-1 when not caught), drains it
   when it woke, and raises SID_INTERRUPTED once sid_signal_abort(). */
#define SID_INTERRUPTED "slashid: interrupted (a second signal)"
int  sid_signal_fd(void);
void sid_signal_drain(void);
int  sid_signal_abort(void);

/* stdfd.c: descriptors 0-2 that are closed opened on /dev/null (-1 and
   errno on failure, nothing left open), and put back */
int  sid_stdfd_closed(int fd);
int  sid_stdfd_plug(void);
void sid_stdfd_unplug(void);

/* nodump.c: no core file (it would hold the keys) until _end */
void sid_nodump_begin(void);
void sid_nodump_end(void);

/* the module's one exported symbol */
SID_API int luaopen_slashid_core(lua_State *L);

/* global.c: curl_global_init, once per process (raises if it failed) */
void sid_global_init(lua_State *L);

/* class.c: registers a userdata type */
void sid_new_class(lua_State *L, const char *name, const luaL_Reg *meta,
                   const luaL_Reg *methods);

/* registration functions, one per file */
void sid_open_handle(lua_State *L);
void sid_open_clock(lua_State *L);
void sid_open_keyfile(lua_State *L);
void sid_open_multi(lua_State *L);
void sid_open_signal(lua_State *L);
void sid_open_stdfd(lua_State *L);     /* isatty, is_memory_device, read_input */
void sid_open_files(lua_State *L);
/* files.c: fsync of a directory, or of the one holding a path (0, or -1
   and errno) */
int  sid_sync_dir(const char *dir);
int  sid_sync_dir_of(const char *path);
void sid_open_idset(lua_State *L);
/* tolerant.c: result.api_key of a 2xx the strict parser refused; pushes
   it and returns 1, or pushes nothing and returns 0 */
int sid_tolerant_api_key(lua_State *L, const char *s, size_t n, int whole);
void sid_open_journal(lua_State *L);   /* journal_open */
void sid_open_checksum(lua_State *L);  /* crc32, fnv1a32 */
void sid_open_output(lua_State *L);    /* write_line */
void sid_open_child(lua_State *L);     /* spawn */

#endif
