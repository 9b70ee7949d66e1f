/*
 * threads.c - many lua_States at once (`make check-threads`): N threads
 * (default 8), each with its own lua_State, each loading the module with
 * `require "slashid"` at the same moment (a barrier), then rotating its
 * own organization's key against the emulator (spec/threads/thread.lua).
 * Built with -fsanitize=thread together with a TSan build of the module:
 * a data race, in particular around the one-time curl_global_init of
 * src/core.c, is reported by ThreadSanitizer and fails the run.
 *
 *   threads ROOT BUILD ORGS_FILE EMULATOR_INFO [ROUNDS]
 *
 * ORGS_FILE has one "ORG_ID<TAB>API_KEY" line per thread (made by
 * spec/threads/run.sh through the emulator's control API). Exits 0 when
 * every thread rotated every time, 1 otherwise.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <lua.h>
#include <lualib.h>
#include <lauxlib.h>

#define MAX_THREADS 64

typedef struct {
  int idx;
  char org[128], key[256];
  int failures;
  char message[512];
} job_t;

static const char *root, *build, *info_path;
static int rounds = 20;
static pthread_barrier_t start_line;

static void *run(void *arg) {
  job_t *job = (job_t *)arg;
  lua_State *L = luaL_newstate();
  char path[4096];
  if (L == NULL) {
    job->failures = 1;
    snprintf(job->message, sizeof job->message, "luaL_newstate failed");
    pthread_barrier_wait(&start_line);
    return NULL;
  }
  luaL_openlibs(L);
  /* The checkout's lua/ and the build folder first, then the defaults
     (lua-cjson is found there). */
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "path");
  lua_pushfstring(L, "%s/lua/?.lua;%s", root, lua_tostring(L, -1));
  lua_setfield(L, -3, "path");
  lua_pop(L, 1);
  lua_getfield(L, -1, "cpath");
  lua_pushfstring(L, "%s/?.so;%s", build, lua_tostring(L, -1));
  lua_setfield(L, -3, "cpath");
  lua_pop(L, 2);
  snprintf(path, sizeof path, "%s/spec/threads/thread.lua", root);

  /* Every thread loads the module at the same moment. */
  pthread_barrier_wait(&start_line);
  if (luaL_loadfile(L, path) != LUA_OK) {
    job->failures = 1;
    snprintf(job->message, sizeof job->message, "%s", lua_tostring(L, -1));
  } else {
    lua_pushstring(L, job->org);
    lua_pushstring(L, job->key);
    lua_pushstring(L, info_path);
    lua_pushinteger(L, rounds);
    lua_pushinteger(L, job->idx);
    if (lua_pcall(L, 5, 2, 0) != LUA_OK) {
      job->failures = 1;
      snprintf(job->message, sizeof job->message, "error: %s", lua_tostring(L, -1));
    } else {
      job->failures = (int)lua_tointeger(L, -2);
      snprintf(job->message, sizeof job->message, "%s", lua_tostring(L, -1));
    }
  }
  lua_close(L);
  return NULL;
}

int main(int argc, char **argv) {
  static job_t jobs[MAX_THREADS];
  pthread_t threads[MAX_THREADS];
  char line[512];
  FILE *f;
  int n = 0, i, failed = 0, total = 0;

  if (argc < 5) {
    fprintf(stderr, "usage: %s ROOT BUILD ORGS_FILE EMULATOR_INFO [ROUNDS]\n", argv[0]);
    return 64;
  }
  root = argv[1];
  build = argv[2];
  info_path = argv[4];
  if (argc > 5) rounds = atoi(argv[5]);
  f = fopen(argv[3], "r");
  if (f == NULL) {
    perror(argv[3]);
    return 64;
  }
  while (n < MAX_THREADS && fgets(line, sizeof line, f)) {
    char *tab = strchr(line, '\t'), *nl;
    if (tab == NULL) continue;
    *tab = '\0';
    if ((nl = strpbrk(tab + 1, "\r\n")) != NULL) *nl = '\0';
    jobs[n].idx = n + 1;
    snprintf(jobs[n].org, sizeof jobs[n].org, "%s", line);
    snprintf(jobs[n].key, sizeof jobs[n].key, "%s", tab + 1);
    n++;
  }
  fclose(f);
  if (n == 0) {
    fprintf(stderr, "threads: no organization in %s\n", argv[3]);
    return 64;
  }

  pthread_barrier_init(&start_line, NULL, (unsigned)n);
  for (i = 0; i < n; i++)
    if (pthread_create(&threads[i], NULL, run, &jobs[i]) != 0) {
      fprintf(stderr, "threads: pthread_create failed\n");
      return 1;
    }
  for (i = 0; i < n; i++) pthread_join(threads[i], NULL);
  pthread_barrier_destroy(&start_line);

  for (i = 0; i < n; i++) {
    total += jobs[i].failures;
    if (jobs[i].failures) {
      failed++;
      fprintf(stderr, "threads: thread %d: %d failure(s): %s\n", jobs[i].idx,
              jobs[i].failures, jobs[i].message);
    }
  }
  printf("threads: %d threads x (%d rotations + 1 op + 1 check): %d thread(s) failed, "
         "%d failure(s)\n", n, rounds, failed, total);
  return failed ? 1 : 0;
}
