#!/bin/sh
# make check-valgrind: spec/soak/valgrind_soak.lua (hundreds of rotations and
# every error path) under memcheck, against a fresh emulator. Fails on any
# invalid read or write, any use of uninitialised values, any invalid free
# and anything definitely lost (spec/valgrind.supp holds the only allowed
# exceptions: known noise of other libraries).
#   LUA (lua5.4)  BUILD (build/valgrind-$LUA: holds slashid/core.so)
#   SOAK_ROTATIONS (500)
set -u
LUA=${LUA:-lua5.4}
BUILD=${BUILD:-build/valgrind-$LUA}

export LUA_PATH="lua/?.lua;spec/?.lua;;" LUA_CPATH="$BUILD/?.so;;"
export LUA_PATH_5_2="$LUA_PATH" LUA_CPATH_5_2="$LUA_CPATH"
export LUA_PATH_5_3="$LUA_PATH" LUA_CPATH_5_3="$LUA_CPATH"
export LUA_PATH_5_4="$LUA_PATH" LUA_CPATH_5_4="$LUA_CPATH"

log=$(mktemp "${TMPDIR:-/tmp}/slashid-valgrind.XXXXXX")
# --keep-debuginfo: the interpreter unloads the module at exit, before the
# leak check; without it a leak's stack would show "???" for our frames.
sh spec/with-emulator.sh valgrind --tool=memcheck --error-exitcode=1 \
  --leak-check=full --errors-for-leak-kinds=definite \
  --show-leak-kinds=definite,possible --track-origins=yes \
  --keep-debuginfo=yes --num-callers=40 \
  --suppressions=spec/valgrind.supp --log-file="$log" \
  "$LUA" spec/soak/valgrind_soak.lua
rc=$?
if [ $rc -ne 0 ]; then
  cat "$log" >&2
  rm -f "$log"
  echo "check-valgrind: FAILED (exit $rc): see the memcheck log above" >&2
  exit 1
fi
grep -E "ERROR SUMMARY|definitely lost|total heap usage" "$log" | sed 's/^==[0-9]*== */check-valgrind: /'
rm -f "$log"
echo "check-valgrind: OK: no memcheck error, nothing definitely lost"
