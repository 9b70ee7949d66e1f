#!/bin/sh
# `make rockcheck`: lint the rockspec, build and install it with LuaRocks
# into a temporary tree, then rotate a key against the emulator with the
# INSTALLED module, from outside the checkout.
set -eu
LUA=${LUA:-lua5.4}
LUA_VERSION=${LUA_VERSION:-5.4}
top=$(pwd)
rockspec=$(ls "$top"/slashid-*.rockspec | head -n 1)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/slashid-rock.XXXXXX")
emulator=""
trap '[ -z "$emulator" ] || kill $emulator 2>/dev/null; rm -rf "$tmp"' EXIT

luarocks lint "$rockspec"
# LuaRocks builds in place: copy the checkout so no build output lands in it.
mkdir "$tmp/src"
cp -R "$top/src" "$top/lua" "$top/bin" "$top/slashid-rotate.1" "$rockspec" "$tmp/src/"
(cd "$tmp/src" && luarocks --lua-version="$LUA_VERSION" make --deps-mode=none \
   --tree "$tmp/tree" "$(basename "$rockspec")") >"$tmp/build.log" 2>&1 ||
  { cat "$tmp/build.log" >&2; exit 1; }

python3 "$top/emulator/slashid_emulator.py" --info "$tmp/emulator.json" \
  --state-dir "$tmp/emulator" >/dev/null 2>&1 &
emulator=$!
i=0
until [ -s "$tmp/emulator.json" ]; do
  i=$((i + 1)); [ $i -le 100 ] || { echo "rockcheck: emulator did not start" >&2; exit 1; }
  sleep 0.1
done

cd "$tmp"
LUA_PATH="$tmp/tree/share/lua/$LUA_VERSION/?.lua;$tmp/tree/share/lua/$LUA_VERSION/?/init.lua;;" \
LUA_CPATH="$tmp/tree/lib/lua/$LUA_VERSION/?.so;;" \
"$LUA" - "$tmp/emulator.json" "$tmp/tree" <<'LUA'
local info = require("cjson").decode(io.open(arg[1]):read("*a"))
local slashid = require "slashid"
local core_path = package.searchpath and package.searchpath("slashid.core", package.cpath)
assert(core_path == nil or core_path:find(arg[2], 1, true) == 1,
       "slashid.core was not loaded from the installed tree")
local r, e, _, i = slashid.rotate_key{ org_id = info.org_id, api_key = info.api_key,
                                       base_url = info.https_url, ca_file = info.ca_file }
assert(i.outcome == "rotated", e[1] and e[1].message)
assert(slashid.check_key{ org_id = info.org_id, api_key = r.api_key,
                          base_url = info.http_url } == true)
print(("rockcheck: installed slashid %s rotated a key over HTTPS (%s)")
      :format(slashid._VERSION, core_path or "?"))
LUA
