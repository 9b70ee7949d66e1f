/*
 * nodump.c - no core file while the command holds keys. A core dump is a
 * copy of the process's memory, keys included, written where the operator
 * may not look and with no 0600 promise. signal.c turns this on when it
 * catches signals (the command's run) and off when it releases them.
 */
#include <sys/prctl.h>
#include <sys/resource.h>
#include "slashid.h"

static struct rlimit old_core;
static int core_limited = 0;
static int old_dumpable = -1;

void sid_nodump_begin(void) {
  /* With core_pattern piping to a helper (systemd-coredump, apport) the
     kernel ignores RLIMIT_CORE: "not dumpable" is what stops the dump. */
  old_dumpable = prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
  if (old_dumpable > 0) prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
  core_limited = getrlimit(RLIMIT_CORE, &old_core) == 0;
  if (core_limited) {
    struct rlimit none = old_core;
    none.rlim_cur = 0;
    core_limited = setrlimit(RLIMIT_CORE, &none) == 0;
  }
}

/* Puts back what sid_nodump_begin found; harmless when it did nothing. */
void sid_nodump_end(void) {
  if (core_limited) setrlimit(RLIMIT_CORE, &old_core);
  core_limited = 0;
  if (old_dumpable > 0) prctl(PR_SET_DUMPABLE, old_dumpable, 0, 0, 0);
  old_dumpable = -1;
}
