# shellcheck shell=sh disable=SC2034,SC2154
# Sourced by bench/run.sh and bench/instr.sh (POSIX sh): starts nginx on a
# free 127.0.0.1 port from bench/nginx.conf.in, state in $tmp (the caller
# makes it and removes it), and sets nginx_pid and url (http://127.0.0.1:P).
# The caller kills $nginx_pid on exit. Needs $LUA with LuaSocket.
port=$("$LUA" -e 'local s=require("socket").bind("127.0.0.1",0); local _,p=s:getsockname(); print(p); s:close()')
sed -e "s|@TMP@|$tmp|g" -e "s|@PORT@|$port|g" bench/nginx.conf.in >"$tmp/nginx.conf"
nginx -p "$tmp" -c "$tmp/nginx.conf" -e "$tmp/error.log" &
nginx_pid=$!
i=0
until "$LUA" -e "assert(require('socket').connect('127.0.0.1',$port))" 2>/dev/null; do
  i=$((i + 1)); [ $i -le 50 ] || { echo "bench: nginx did not start" >&2; cat "$tmp/error.log" >&2; exit 1; }
  sleep 0.1
done
url="http://127.0.0.1:$port"
