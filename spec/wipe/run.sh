#!/bin/sh
# The C side of "Secrets" (README): buffers of the module that held a key
# are wiped before they are freed. spec/wipe/wipe.lua runs every key-bearing
# path with two recognisable keys while spec/wipe/wipecheck.c (preloaded)
# inspects each freed block; any block freed by slashid/core.so that still
# holds a key fails. Part of `make check-valgrind`.
#   LUA (lua5.4)  BUILD (folder with slashid/core.so)  WIPECHECK (the .so)
set -u
LUA=${LUA:-lua5.4}
BUILD=${BUILD:?BUILD is required}
WIPECHECK=${WIPECHECK:?WIPECHECK is required}

export LUA_PATH="lua/?.lua;spec/?.lua;;" LUA_CPATH="$BUILD/?.so;;"
export LUA_PATH_5_2="$LUA_PATH" LUA_CPATH_5_2="$LUA_CPATH"
export LUA_PATH_5_3="$LUA_PATH" LUA_CPATH_5_3="$LUA_CPATH"
export LUA_PATH_5_4="$LUA_PATH" LUA_CPATH_5_4="$LUA_CPATH"
report=$(mktemp "${TMPDIR:-/tmp}/slashid-wipe.XXXXXX")
suffix=$$$(date +%N)
SLASHID_WIPECHECK_KEY="sk_WIPECHECKOLD_$suffix" \
SLASHID_WIPECHECK_KEY2="sk_WIPECHECKNEW_$suffix" \
SLASHID_WIPECHECK_REPORT="$report" \
  sh spec/with-emulator.sh env LD_PRELOAD="$WIPECHECK" "$LUA" spec/wipe/wipe.lua
rc=$?
sed 's/^/check-wipe: /' "$report"
if [ $rc -ne 0 ] || ! grep -q "^wipecheck: OK" "$report"; then
  rm -f "$report"
  echo "check-wipe: FAILED (exit $rc): the module freed a buffer still holding a key" >&2
  exit 1
fi
rm -f "$report"
echo "check-wipe: OK: no block freed by the module held a key (other libraries: counted above)"
