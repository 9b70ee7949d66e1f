/*
 * raw_multi.c - the baseline for the batch benchmark: N PUT requests over
 * one curl multi handle with at most C in flight, easy handles reused,
 * nothing else. Prints "raw_multi_seconds=<float>".
 *   raw_multi URL N C
 */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static size_t discard(char *p, size_t size, size_t n, void *ud) {
  (void)p; (void)ud;
  return size * n;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void start(CURLM *multi, CURL *easy, const char *url,
                  struct curl_slist *h) {
  curl_easy_setopt(easy, CURLOPT_URL, url);
  curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, "PUT");
  curl_easy_setopt(easy, CURLOPT_HTTPHEADER, h);
  curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(easy, CURLOPT_PIPEWAIT, 1L);
  curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, discard);
  curl_multi_add_handle(multi, easy);
}

int main(int argc, char **argv) {
  const char *url;
  long n, c, started = 0, done = 0, failed = 0, i;
  struct curl_slist *h = NULL;
  CURLM *multi;
  CURL **pool;
  double t0;
  if (argc != 4) {
    fprintf(stderr, "usage: raw_multi URL N C\n");
    return 2;
  }
  url = argv[1];
  n = atol(argv[2]);
  c = atol(argv[3]);
  curl_global_init(CURL_GLOBAL_DEFAULT);
  h = curl_slist_append(h, "SlashID-OrgID: bench-org");
  h = curl_slist_append(h, "SlashID-API-Key: bench-key");
  h = curl_slist_append(h, "SlashID-Required-Consistency: local_region");
  h = curl_slist_append(h, "SlashID-Required-Consistency-Timeout: 30");
  h = curl_slist_append(h, "Accept: application/json");
  h = curl_slist_append(h, "Content-Length: 0");
  multi = curl_multi_init();
  pool = calloc((size_t)c, sizeof *pool);
  t0 = now();
  for (i = 0; i < c && started < n; i++, started++) {
    pool[i] = curl_easy_init();
    start(multi, pool[i], url, h);
  }
  while (done < n) {
    int running, left;
    CURLMsg *msg;
    curl_multi_perform(multi, &running);
    while ((msg = curl_multi_info_read(multi, &left)) != NULL) {
      if (msg->msg != CURLMSG_DONE) continue;
      if (msg->data.result != CURLE_OK) failed++;
      done++;
      curl_multi_remove_handle(multi, msg->easy_handle);
      if (started < n) {
        started++;
        start(multi, msg->easy_handle, url, h);
      }
    }
    if (done < n) curl_multi_poll(multi, NULL, 0, 1000, NULL);
  }
  printf("raw_multi_seconds=%.4f\n", now() - t0);
  for (i = 0; i < c; i++) if (pool[i]) curl_easy_cleanup(pool[i]);
  free(pool);
  curl_multi_cleanup(multi);
  curl_slist_free_all(h);
  return failed ? 1 : 0;
}
