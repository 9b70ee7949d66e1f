/*
 * deadline.c - an attempt's request_timeout, kept here rather than in
 * libcurl. libcurl checks CURLOPT_TIMEOUT before it reads the socket, so
 * a process that did not drive the transfer for longer than the timeout
 * (an op nobody polled, SIGSTOP, a slow on_result, a stdout reader that
 * stalls the command) lost an answer that had arrived meanwhile: after
 * the server had issued a new key. Here the deadline is checked after a
 * look at the socket, never before: an expired attempt gets one last
 * look that reads what has arrived but sends nothing new, and only then
 * ends as a timeout.
 */
#include <time.h>
#include "slashid.h"

double sid_monotonic(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Only this file writes deadline, expired, timed_out and no_new_send. */
void sid_deadline_start(sid_transfer *t, double seconds) {
  t->deadline = sid_monotonic() + seconds;
  t->expired = 0;
  t->timed_out = 0;
  t->no_new_send = 0;
}

/* No deadline at all (the request was dropped). */
void sid_deadline_clear(sid_transfer *t) {
  t->deadline = 0;
  t->expired = t->timed_out = t->no_new_send = 0;
}

/* A look that ended without finishing an attempt that is not past its
   deadline: the next look may send again. */
void sid_deadline_look_over(sid_transfer *t) {
  t->no_new_send = 0;
}

/* Before a look at the socket: once the deadline has passed, that look
   is the last, and nothing new may go out during it (on_prereq). */
int sid_deadline_before_look(sid_transfer *t, double now, int last_look) {
  if (!t->expired && t->deadline > 0 && now >= t->deadline) t->expired = 1;
  t->no_new_send = last_look || t->expired;
  return t->expired;
}

/* After the look: the code an attempt ends with. A request stopped by
   the last look before it went out, or one still without a complete
   answer, ends as a timeout (curl code 28), exactly as libcurl's own
   timeout would have ended it, "sent" telling whether it went out. */
CURLcode sid_deadline_after_look(sid_transfer *t, int finished, CURLcode rc) {
  sid_deadline_look_over(t);
  if (!t->expired || t->cancelled) return rc;
  if (!finished || rc == CURLE_ABORTED_BY_CALLBACK) {
    t->timed_out = 1;
    return CURLE_OPERATION_TIMEDOUT;
  }
  return rc;
}

/* Milliseconds a wait may last: libcurl's own wish (ms, -1 for none),
   capped at the time left before the deadline. */
long sid_deadline_wait_ms(const sid_transfer *t, double now, long ms) {
  double left;
  if (t->deadline <= 0) return ms;
  left = (t->deadline - now) * 1000.0;
  if (left < 0) left = 0;
  if (ms < 0 || left < (double)ms) ms = (long)left + 1;
  return ms;
}
