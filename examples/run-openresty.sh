#!/bin/sh
# `make example-openresty`: fills examples/openresty/nginx.conf's
# placeholders into a temp folder (a free port on 127.0.0.1), starts nginx
# there with the bundled emulator's organization, POSTs /rotate and shows
# the JSON answer, then stops nginx and the emulator. The Makefile target
# first installs nginx, its lua module and luajit2 when missing and builds
# build/luajit/slashid/core.so (nginx's lua module embeds luajit2).
# shellcheck source=examples/emulator.sh
. "$(dirname "$0")/emulator.sh"
# The current key goes in the key file: the handler reads it there and
# writes the new one back (nginx clears the environment, see env in the conf).
(umask 077; printf '%s\n' "$SLASHID_API_KEY" >"$SLASHID_KEY_FILE")
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# lua-cjson's 5.1 build (LuaJIT speaks the 5.1 ABI): where Debian put it
lua51=$(dirname "$(find /usr/lib/*/lua/5.1 -maxdepth 1 -name cjson.so | head -1)")
sed -e "s|@PREFIX@|$tmp|g" -e "s|@PORT@|$port|g" -e "s|@ROOT@|$root|g" \
    -e "s|@LUA51_LIB@|$lua51|g" -e "s|@USER@|$(id -un)|g" \
    examples/openresty/nginx.conf >"$tmp/nginx.conf"
# -e: errors before the conf is read go to $tmp too, not /var/log/nginx.
nginx -p "$tmp" -c "$tmp/nginx.conf" -e "$tmp/error.log" >"$tmp/nginx.out" 2>&1 &
started="$started $!"
i=0
until curl -sf "http://127.0.0.1:$port/ping" >/dev/null 2>&1; do
  i=$((i + 1))
  if [ $i -gt 100 ]; then echo "nginx did not start:" >&2; cat "$tmp/error.log" "$tmp/nginx.out" >&2; exit 1; fi
  sleep 0.1
done
echo "== nginx at http://127.0.0.1:$port, POST /rotate:"
answer=$(curl -sS -X POST "http://127.0.0.1:$port/rotate")
echo "$answer"
case $answer in *'"outcome":"rotated"'*) ;; *) cat "$tmp/error.log" >&2; exit 1 ;; esac
key_file_note
