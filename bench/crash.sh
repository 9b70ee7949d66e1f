#!/bin/sh
# `make bench-crash` (and part of `make bench`): bench/crash.lua against a
# fresh local emulator. CRASH_N (1000) organizations, CRASH_ROUNDS (20)
# kills; figures, not pass/fail.
set -eu
LUA=${LUA:-lua5.4}
BUILD=${BUILD:-build/$LUA}
export SLASHID_SPEC_LUA="$LUA"
export LUA_PATH="lua/?.lua;spec/?.lua;;" LUA_CPATH="$BUILD/?.so;;"
export LUA_PATH_5_2="$LUA_PATH" LUA_CPATH_5_2="$LUA_CPATH"
export LUA_PATH_5_3="$LUA_PATH" LUA_CPATH_5_3="$LUA_CPATH"
export LUA_PATH_5_4="$LUA_PATH" LUA_CPATH_5_4="$LUA_CPATH"
exec sh spec/with-emulator.sh "$LUA" bench/crash.lua
