/*
 * raw_easy.c - the baseline for `make bench`: the same PUT the library
 * sends (same headers, body kept in memory), N times on one easy handle,
 * with nothing else. N calls after WARMUP (100) untimed ones; prints
 * "raw_easy_us_per_call=<float>". bench/instr.sh runs it under callgrind
 * for two values of N: what runs once per process cancels out there.
 *   raw_easy URL N [WARMUP]
 */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static size_t keep(char *p, size_t size, size_t n, void *ud) {
  size_t *total = (size_t *)ud;
  (void)p;
  *total += size * n;
  return size * n;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  const char *url;
  long n, warmup = 100, i, status = 0;
  size_t total = 0;
  struct curl_slist *h = NULL;
  CURL *easy;
  double t0;
  if (argc != 3 && argc != 4) {
    fprintf(stderr, "usage: raw_easy URL N [WARMUP]\n");
    return 2;
  }
  url = argv[1];
  n = atol(argv[2]);
  if (argc == 4) warmup = atol(argv[3]);
  curl_global_init(CURL_GLOBAL_DEFAULT);
  easy = curl_easy_init();
  h = curl_slist_append(h, "SlashID-OrgID: bench-org");
  h = curl_slist_append(h, "SlashID-API-Key: bench-key");
  h = curl_slist_append(h, "SlashID-Required-Consistency: local_region");
  h = curl_slist_append(h, "SlashID-Required-Consistency-Timeout: 30");
  h = curl_slist_append(h, "Accept: application/json");
  h = curl_slist_append(h, "Content-Length: 0");
  curl_easy_setopt(easy, CURLOPT_URL, url);
  curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, "PUT");
  curl_easy_setopt(easy, CURLOPT_HTTPHEADER, h);
  curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, keep);
  curl_easy_setopt(easy, CURLOPT_WRITEDATA, &total);
  for (i = 0; i < warmup; i++) curl_easy_perform(easy);   /* warm-up */
  t0 = now();
  for (i = 0; i < n; i++) {
    if (curl_easy_perform(easy) != CURLE_OK) return 1;
  }
  curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
  printf("raw_easy_us_per_call=%.2f\n", (now() - t0) / (double)n * 1e6);
  curl_slist_free_all(h);
  curl_easy_cleanup(easy);
  curl_global_cleanup();
  return status == 200 ? 0 : 1;
}
