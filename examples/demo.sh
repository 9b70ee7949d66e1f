#!/bin/sh
# `make demo`: start the bundled local SlashID emulator, rotate the key it
# seeded with examples/rotate.lua over HTTPS (the emulator's own CA), show
# the outcome, stop the emulator.
set -eu
LUA=${LUA:-lua5.4}
BUILD=${BUILD:-build/$LUA}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/slashid-demo.XXXXXX")
python3 emulator/slashid_emulator.py --info "$tmp/emulator.json" \
  --state-dir "$tmp/emulator" >"$tmp/emulator.log" 2>&1 &
emulator=$!
trap 'kill $emulator 2>/dev/null; wait $emulator 2>/dev/null; rm -rf "$tmp"' EXIT
i=0
until [ -s "$tmp/emulator.json" ]; do
  i=$((i + 1)); [ $i -le 100 ] || { cat "$tmp/emulator.log" >&2; exit 1; }
  sleep 0.1
done
export LUA_PATH="lua/?.lua;;" LUA_CPATH="$BUILD/?.so;;"
export LUA_PATH_5_4="$LUA_PATH" LUA_CPATH_5_4="$LUA_CPATH"
# Read the seeded organization into the environment without printing it.
eval "$("$LUA" - "$tmp/emulator.json" <<'LUA'
  local info = require("cjson").decode(io.open(arg[1]):read("*a"))
  print(("SLASHID_ORG_ID=%q SLASHID_API_KEY=%q SLASHID_BASE_URL=%q SLASHID_CA_FILE=%q")
        :format(info.org_id, info.api_key, info.https_url, info.ca_file))
LUA
)"
export SLASHID_ORG_ID SLASHID_API_KEY SLASHID_BASE_URL SLASHID_CA_FILE
echo "== slashid demo: emulator at $SLASHID_BASE_URL, organization $SLASHID_ORG_ID"
"$LUA" examples/rotate.lua "$tmp/new-key.txt"
echo "== key file: $(stat -c 'mode %a, %s bytes' "$tmp/new-key.txt") (a scratch copy: the demo's folder is removed on exit)"
