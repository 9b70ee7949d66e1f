#!/bin/sh
# `make bench`: benchmarks, side by side against the same local nginx
# serving static envelopes. Prints a table, then one name=value per figure.
# Not part of `make test`: figures, not pass/fail.
set -eu
LUA=${LUA:-lua5.4}
BUILD=${BUILD:-build/$LUA}
N=${N:-20000}
ROUNDS=${ROUNDS:-3}
top=$(pwd)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/slashid-bench.XXXXXX")
nginx_pid=""
trap '[ -z "$nginx_pid" ] || kill $nginx_pid 2>/dev/null; rm -rf "$tmp"' EXIT

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

cc -O2 -o "$tmp/raw_easy" bench/raw_easy.c -lcurl

export LUA_PATH="$top/lua/?.lua;;" LUA_CPATH="$top/$BUILD/?.so;;"
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
value() { sed 's/^[^=]*=//'; }

: >"$tmp/raw"; : >"$tmp/client"; : >"$tmp/module"
r=0
while [ $r -lt "$ROUNDS" ]; do      # interleaved, so drift hits all alike
  "$tmp/raw_easy" "$url/organizations/api-keys" "$N" | value >>"$tmp/raw"
  "$LUA" bench/rotate.lua "$url" "$N" client | value >>"$tmp/client"
  "$LUA" bench/rotate.lua "$url" "$N" module | value >>"$tmp/module"
  r=$((r + 1))
done
raw=$(median <"$tmp/raw"); client=$(median <"$tmp/client"); module=$(median <"$tmp/module")

echo "per-call time, $N calls x $ROUNDS rounds (median), nginx static envelope on 127.0.0.1"
printf '%-28s %10s %8s\n' "what" "us/call" "x raw"
printf '%-28s %10s %8s\n' "raw libcurl easy loop (C)" "$raw" "1.00"
printf '%-28s %10s %8s\n' "client:rotate_key" "$client" "$(echo "$client $raw" | awk '{printf "%.2f", $1/$2}')"
printf '%-28s %10s %8s\n' "slashid.rotate_key" "$module" "$(echo "$module $raw" | awk '{printf "%.2f", $1/$2}')"
echo "raw_easy_us_per_call=$raw"
echo "client_rotate_key_us_per_call=$client"
echo "module_rotate_key_us_per_call=$module"
echo "client_rotate_key_ratio=$(echo "$client $raw" | awk '{printf "%.3f", $1/$2}')"
echo "module_rotate_key_ratio=$(echo "$module $raw" | awk '{printf "%.3f", $1/$2}')"
