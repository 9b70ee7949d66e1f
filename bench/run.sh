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

: >"$tmp/raw"; : >"$tmp/client"; : >"$tmp/module"; : >"$tmp/rawm"; : >"$tmp/batch"
cc -O2 -o "$tmp/raw_multi" bench/raw_multi.c -lcurl
BATCH_N=${BATCH_N:-2000}
BATCH_C=${BATCH_C:-64}
r=0
while [ $r -lt "$ROUNDS" ]; do      # interleaved, so drift hits all alike
  "$tmp/raw_easy" "$url/organizations/api-keys" "$N" | value >>"$tmp/raw"
  "$LUA" bench/rotate.lua "$url" "$N" client | value >>"$tmp/client"
  "$LUA" bench/rotate.lua "$url" "$N" module | value >>"$tmp/module"
  "$tmp/raw_multi" "$url/slow/organizations/api-keys" "$BATCH_N" "$BATCH_C" | value >>"$tmp/rawm"
  "$LUA" bench/batch.lua "$url/slow" "$BATCH_N" "$BATCH_C" | value >>"$tmp/batch"
  r=$((r + 1))
done
raw=$(median <"$tmp/raw"); client=$(median <"$tmp/client"); module=$(median <"$tmp/module")
rawm=$(median <"$tmp/rawm"); batch=$(median <"$tmp/batch")
ratio() { echo "$1 $2" | awk '{printf "%.3f", $1/$2}'; }

# Memory after 1,000 and after MEM_N calls.
MEM_N=${MEM_N:-100000}
"$LUA" bench/memory.lua "$url" "$MEM_N" >"$tmp/mem"
mem() { grep "^$1=" "$tmp/mem" | value; }

# The command line vs curl, one rotation each, CLI_RUNS runs interleaved.
CLI_RUNS=${CLI_RUNS:-100}
cli_line=""
if [ -f bin/slashid-rotate ] && command -v curl >/dev/null 2>&1; then
  cli_line=$("$LUA" - "$LUA" "$url" "$CLI_RUNS" <<'LUA'
local core = require "slashid.core"
local lua, url, n = arg[1], arg[2], tonumber(arg[3])
local env = "SLASHID_API_KEY=bench-key SLASHID_ORG_ID=bench-org SLASHID_BASE_URL=" .. url
local cli = env .. " " .. lua .. " bin/slashid-rotate --org-id bench-org >/dev/null 2>&1"
local curl = "curl -s -X PUT -H 'SlashID-OrgID: bench-org' -H 'SlashID-API-Key: bench-key'" ..
  " -H 'SlashID-Required-Consistency: local_region' -H 'SlashID-Required-Consistency-Timeout: 30'" ..
  " -H 'Accept: application/json' -H 'Content-Length: 0' " .. url .. "/organizations/api-keys >/dev/null"
local a, b = 0, 0
for _ = 1, n do
  local t = core.now(); assert(os.execute(cli)); a = a + core.now() - t
  t = core.now(); assert(os.execute(curl)); b = b + core.now() - t
end
print(("%.3f %.3f"):format(a / n * 1000, b / n * 1000))
LUA
)
fi

echo
echo "slashid benchmarks against nginx on 127.0.0.1 (medians of $ROUNDS interleaved rounds)"
printf '%-44s %14s %9s\n' "figure" "value" "x base"
printf '%-44s %11s us %9s\n' "raw libcurl easy loop (C), per call" "$raw" "1.00"
printf '%-44s %11s us %9s\n' "client:rotate_key, per call" "$client" "$(ratio "$client" "$raw")"
printf '%-44s %11s us %9s\n' "slashid.rotate_key, per call" "$module" "$(ratio "$module" "$raw")"
printf '%-44s %12s s %9s\n' "raw curl multi, $BATCH_N at $BATCH_C, 20 ms server" "$rawm" "1.00"
printf '%-44s %12s s %9s\n' "rotate_keys, $BATCH_N at $BATCH_C, 20 ms server" "$batch" "$(ratio "$batch" "$rawm")"
printf '%-44s %11s KB %9s\n' "Lua memory after 1,000 / $MEM_N calls" "$(mem after_1000_lua_kb) / $(mem after_${MEM_N}_lua_kb)" ""
printf '%-44s %11s KB %9s\n' "RSS after 1,000 / $MEM_N calls" "$(mem after_1000_rss_kb) / $(mem after_${MEM_N}_rss_kb)" ""
if [ -n "$cli_line" ]; then
  printf '%-44s %11s ms %9s\n' "curl CLI, one rotation" "${cli_line#* }" "1.00"
  printf '%-44s %11s ms %9s\n' "slashid-rotate, one rotation" "${cli_line% *}" "$(ratio "${cli_line% *}" "${cli_line#* }")"
fi
echo
echo "raw_easy_us_per_call=$raw"
echo "client_rotate_key_us_per_call=$client"
echo "module_rotate_key_us_per_call=$module"
echo "client_rotate_key_ratio=$(ratio "$client" "$raw")"
echo "module_rotate_key_ratio=$(ratio "$module" "$raw")"
echo "raw_multi_seconds=$rawm"
echo "rotate_keys_seconds=$batch"
echo "rotate_keys_ratio=$(ratio "$batch" "$rawm")"
cat "$tmp/mem"
if [ -n "$cli_line" ]; then
  echo "cli_ms=${cli_line% *}"
  echo "curl_ms=${cli_line#* }"
  echo "cli_ratio=$(ratio "${cli_line% *}" "${cli_line#* }")"
fi

# ---- streaming batches: STREAM_N organizations through rotate_keys, array
# (results kept) vs iterator with keep_results = false (bench/stream.lua).
STREAM_N=${STREAM_N:-100000}
"$LUA" bench/stream.lua "$url" "$STREAM_N" 8 >"$tmp/stream"
sed -n '/^rotate_keys of/,/^$/p' "$tmp/stream"
grep '=' "$tmp/stream"

# ---- start-up against the peer (Lua-cURLv3 + lua-cjson): bench/startup.sh
# prints its own table and startup_median_*/startup_rss_* figures.
LUA="$LUA" BUILD="$BUILD" sh bench/startup.sh
