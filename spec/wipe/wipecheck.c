/*
 * wipecheck.c - an LD_PRELOAD library for `make check-valgrind`'s second
 * step (spec/wipe/run.sh): it looks into every block the process frees and
 * counts, per calling library, the blocks that still hold the key named by
 * SLASHID_WIPECHECK_KEY (and SLASHID_WIPECHECK_KEY2). A block freed by
 * slashid/core.so itself that still holds a key means a C buffer of the
 * module was not wiped before release (README, "Secrets"): the check fails.
 * Blocks freed by other libraries (Lua strings, libcurl's own request and
 * receive buffers) are counted and shown, not failed: the module cannot
 * wipe them.
 *
 * Test tool only; glibc (malloc_usable_size, __libc_free).
 */
#define _GNU_SOURCE 1
#include <dlfcn.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern void __libc_free(void *p);

#define MAX_MODULES 32
static struct { char name[128]; unsigned long blocks; } modules[MAX_MODULES];
static int nmodules, ready;
static const char *keys[2];
static size_t lens[2];
static __thread int inside;

/* Also run first thing (constructor): the programs this process starts
   (sh, rm...) are not under test and must not inherit the preload. */
__attribute__((constructor)) static void init(void) {
  int i;
  if (ready) return;
  keys[0] = getenv("SLASHID_WIPECHECK_KEY");
  keys[1] = getenv("SLASHID_WIPECHECK_KEY2");
  for (i = 0; i < 2; i++) lens[i] = keys[i] ? strlen(keys[i]) : 0;
  ready = 1;
  unsetenv("LD_PRELOAD");
}

static int holds_key(const void *p, size_t n) {
  int i;
  for (i = 0; i < 2; i++)
    if (lens[i] >= 8 && memmem(p, n, keys[i], lens[i]) != NULL) return 1;
  return 0;
}

static void count(void *caller) {
  Dl_info info;
  const char *name = "?";
  int i;
  if (dladdr(caller, &info) && info.dli_fname) name = info.dli_fname;
  for (i = 0; i < nmodules; i++)
    if (strcmp(modules[i].name, name) == 0) break;
  if (i == nmodules) {
    if (nmodules == MAX_MODULES) return;
    snprintf(modules[i].name, sizeof modules[i].name, "%s", name);
    nmodules++;
  }
  modules[i].blocks++;
}

void free(void *p) {
  if (p != NULL && !inside) {
    if (!ready) init();
    if (lens[0] || lens[1]) {
      inside = 1;
      if (holds_key(p, malloc_usable_size(p))) count(__builtin_return_address(0));
      inside = 0;
    }
  }
  __libc_free(p);
}

/* At exit: one line per library, and the verdict on the module. */
__attribute__((destructor)) static void report(void) {
  int i, bad = 0;
  FILE *out = stderr;
  const char *path = getenv("SLASHID_WIPECHECK_REPORT");
  if (path) out = fopen(path, "w");
  if (out == NULL) out = stderr;
  for (i = 0; i < nmodules; i++) {
    int ours = strstr(modules[i].name, "slashid/core.so") != NULL;
    fprintf(out, "%s %lu block(s) freed holding a key by %s\n", ours ? "FAIL" : "info",
            modules[i].blocks, modules[i].name);
    bad |= ours;
  }
  fprintf(out, "%s\n", bad ? "wipecheck: FAILED" : "wipecheck: OK");
  if (out != stderr) fclose(out);
}
