#!/bin/sh
# make check-threads: creates THREADS organizations on a fresh emulator and
# runs spec/threads/threads.c (each thread its own lua_State, all rotating
# at once) against a ThreadSanitizer build of the module. Fails on any
# outcome but "rotated" and on any ThreadSanitizer report.
#   LUA (lua5.4)  BUILD (folder with slashid/core.so)  BIN (the program)
#   THREADS (8)  ROUNDS (20)
set -u
LUA=${LUA:-lua5.4}
BUILD=${BUILD:?BUILD is required}
BIN=${BIN:?BIN is required}
THREADS=${THREADS:-8}
ROUNDS=${ROUNDS:-20}

if [ -z "${SLASHID_EMULATOR_INFO:-}" ]; then
  exec sh "$(dirname "$0")/../with-emulator.sh" sh "$0" "$@"
fi

orgs="$SLASHID_SPEC_TMP/orgs.tsv"
(umask 077; LUA_PATH="spec/?.lua;;" "$LUA" spec/threads/orgs.lua create "$THREADS" >"$orgs") \
  || { echo "check-threads: cannot create organizations" >&2; exit 1; }

logs="$SLASHID_SPEC_TMP/tsan"
mkdir -p "$logs"
# halt_on_error: the first race ends the run; second_deadlock_stack: full
# stacks for lock-order reports.
# ThreadSanitizer needs its fixed memory layout: on kernels with a high
# mmap randomisation it refuses to start unless ASLR is off for the program.
norandom=""
setarch "$(uname -m)" -R true 2>/dev/null && norandom="setarch $(uname -m) -R"
TSAN_OPTIONS="log_path=$logs/tsan:halt_on_error=1:second_deadlock_stack=1:report_signal_unsafe=0" \
  $norandom "$BIN" "$(pwd)" "$BUILD" "$orgs" "$SLASHID_EMULATOR_INFO" "$ROUNDS"
rc=$?
if ls "$logs"/tsan* >/dev/null 2>&1; then
  cat "$logs"/tsan* >&2
  echo "check-threads: FAILED: ThreadSanitizer report(s)" >&2
  exit 1
fi
if [ $rc -ne 0 ]; then
  echo "check-threads: FAILED (exit $rc)" >&2
  exit 1
fi
# Every organization rotated exactly ROUNDS + 1 times, no more.
LUA_PATH="spec/?.lua;;" "$LUA" spec/threads/orgs.lua check "$orgs" $((ROUNDS + 1)) || exit 1
echo "check-threads: OK: no ThreadSanitizer report; every organization rotated $((ROUNDS + 1)) times"
