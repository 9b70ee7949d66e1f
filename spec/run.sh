#!/bin/sh
# Runs the whole busted suite against a fresh local SlashID emulator and
# ends with one line "N passed, N failed". Used by `make test`.
#   LUA    interpreter (lua5.4)      BUILD  folder holding slashid/core.so
#   SPECS  spec files or folder (spec)
set -u
LUA=${LUA:-lua5.4}
BUILD=${BUILD:-build/$LUA}
SPECS=${SPECS:-spec}

# Specs must not be steered by the caller's environment.
unset SLASHID_ORG_ID SLASHID_API_KEY SLASHID_BASE_URL \
      http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY no_proxy NO_PROXY

tmp=$(mktemp -d "${TMPDIR:-/tmp}/slashid-spec.XXXXXX")
env -u LD_PRELOAD python3 emulator/slashid_emulator.py --info "$tmp/emulator.json" \
  --state-dir "$tmp/emulator" >"$tmp/emulator.log" 2>&1 &
emulator=$!
cleanup() {
  kill "$emulator" 2>/dev/null && wait "$emulator" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

i=0
while [ ! -s "$tmp/emulator.json" ]; do
  i=$((i + 1))
  if [ $i -gt 100 ] || ! kill -0 "$emulator" 2>/dev/null; then
    echo "spec/run.sh: the emulator did not start:" >&2
    cat "$tmp/emulator.log" >&2
    echo "0 passed, 1 failed"
    exit 1
  fi
  sleep 0.1
done

export SLASHID_EMULATOR_INFO="$tmp/emulator.json" SLASHID_SPEC_TMP="$tmp" SLASHID_SPEC_LUA="$LUA"
export LUA_PATH="lua/?.lua;spec/?.lua;;" LUA_CPATH="$BUILD/?.so;;"
export LUA_PATH_5_2="$LUA_PATH" LUA_CPATH_5_2="$LUA_CPATH"
export LUA_PATH_5_3="$LUA_PATH" LUA_CPATH_5_3="$LUA_CPATH"
export LUA_PATH_5_4="$LUA_PATH" LUA_CPATH_5_4="$LUA_CPATH"
"$LUA" /usr/bin/busted --output=spec/summary_output.lua $SPECS
