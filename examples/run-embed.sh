#!/bin/sh
# `make example-embed`: runs the C host of examples/embed (Lua 5.4 with the
# module linked statically, a 60 Hz frame loop) against the bundled
# emulator, and shows what it reports. The Makefile target first installs
# Lua 5.4 when missing and builds build/lua5.4/embed-host (make embed).
# shellcheck source=examples/emulator.sh
. "$(dirname "$0")/emulator.sh"
# The core is linked in; --lua-dir puts the clone's Lua layer on
# package.path. The caller's LUA_* paths (maybe another Lua's build) stay
# out: Lua's defaults find lua-cjson. The key passes through the
# environment, never argv (`ps` shows argv).
env -u LUA_PATH -u LUA_CPATH -u LUA_PATH_5_4 -u LUA_CPATH_5_4 \
  build/lua5.4/embed-host --lua-dir "$root/lua" --org-id "$SLASHID_ORG_ID" \
  --base-url "$SLASHID_BASE_URL" --ca-file "$SLASHID_CA_FILE" \
  --save-to "$SLASHID_KEY_FILE" >"$tmp/host.out" 2>&1 || { cat "$tmp/host.out" >&2; exit 1; }
# key=value lines: the outcome first, then the frame loop's figures.
grep -E '^(outcome|status|saved|frames|lua_calls|longest_stall_ms)=' "$tmp/host.out"
key_file_note
