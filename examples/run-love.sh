#!/bin/sh
# `make example-love`: runs the LÖVE game of examples/love headless
# (conf.lua turns window, graphics and audio off) against the bundled
# emulator, and shows its outcome line. The Makefile target first installs
# love and luajit2 when missing and builds build/luajit/slashid/core.so:
# LÖVE embeds LuaJIT, so the module must be the LuaJIT build.
# shellcheck source=examples/emulator.sh
. "$(dirname "$0")/emulator.sh"
# LuaJIT reads LUA_PATH / LUA_CPATH (no _5_x variants); ";;" keeps the
# defaults, where Debian's lua-cjson for 5.1 is.
LUA_PATH="$root/lua/?.lua;;" LUA_CPATH="$root/build/luajit/?.so;;" \
  love examples/love >"$tmp/love.out" 2>&1 || { cat "$tmp/love.out" >&2; exit 1; }
# The game prints one line; with it the figures of its frame loop.
grep '^slashid-love: ' "$tmp/love.out"
grep -q '^slashid-love: outcome=rotated saved=true' "$tmp/love.out"
key_file_note
