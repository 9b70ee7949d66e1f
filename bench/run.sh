#!/bin/sh
# `make bench`: benchmarks, side by side against the same local nginx
# answering a new key on every rotation, as SlashID does
# (bench/nginx.conf.in). Prints a table, then one name=value per figure.
# Not part of `make test`: figures, not pass/fail.
#
# Per call (wall time): the raw libcurl easy loop (C, bench/raw_easy.c),
# the hand-written peer on Lua-cURLv3 + lua-cjson (bench/peer_client.lua;
# Lua-cURLv3 built under build/peers/ by bench/peer.sh), client:rotate_key()
# and slashid.rotate_key (bench/rotate.lua), N (20000) calls each, in
# ROUNDS (5) interleaved rounds: medians, ratios of medians, and the spread
# across rounds. Then batches, memory, the command line, streaming,
# start-up (bench/startup.sh) and instructions per call (bench/instr.sh,
# callgrind, on the same server).
set -eu
LUA=${LUA:-lua5.4}
BUILD=${BUILD:-build/$LUA}
N=${N:-20000}
ROUNDS=${ROUNDS:-5}
top=$(pwd)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/slashid-bench.XXXXXX")
nginx_pid=""
trap '[ -z "$nginx_pid" ] || kill $nginx_pid 2>/dev/null; rm -rf "$tmp"' EXIT
. bench/nginx.sh

cc -O2 -o "$tmp/raw_easy" bench/raw_easy.c -lcurl
cc -O2 -o "$tmp/raw_multi" bench/raw_multi.c -lcurl
# The peer, Lua-cURLv3 built under build/peers/, driven by a hand-written
# client (bench/peer_client.lua); the same search paths for every variant.
bench_name=bench lua_dir="$top/lua" module_dir="$top/$BUILD"
. bench/paths.sh
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
value() { sed 's/^[^=]*=//'; }
ratio() { echo "$1 $2" | awk '{printf "%.3f", $1/$2}'; }
# spread FILE: "min-max" of the rounds, and (max-min)/median in percent.
spread() { sort -n "$1" | awk '{a[NR]=$1} END {m=a[int((NR+1)/2)];
  printf "%s-%s %5.1f%%", a[1], a[NR], (m > 0 ? (a[NR]-a[1])/m*100 : 0)}'; }

# ---- per call: the four variants, N calls each, ROUNDS interleaved rounds;
# the first variant moves by one each round so none always follows another.
per_call() {
  case $1 in
    1) "$tmp/raw_easy" "$url/organizations/api-keys" "$N" | value >>"$tmp/raw" ;;
    2) [ -z "$peer_dir" ] || "$LUA" bench/peer_client.lua "$url" "$N" | value >>"$tmp/peer" ;;
    3) "$LUA" bench/rotate.lua "$url" "$N" client | value >>"$tmp/client" ;;
    4) "$LUA" bench/rotate.lua "$url" "$N" module | value >>"$tmp/module" ;;
  esac
}
: >"$tmp/raw"; : >"$tmp/peer"; : >"$tmp/client"; : >"$tmp/module"; : >"$tmp/rawm"; : >"$tmp/batch"
BATCH_N=${BATCH_N:-2000}
BATCH_C=${BATCH_C:-64}
r=0
while [ $r -lt "$ROUNDS" ]; do      # interleaved, so drift hits all alike
  k=0
  while [ $k -lt 4 ]; do per_call $(( (r + k) % 4 + 1 )); k=$((k + 1)); done
  "$tmp/raw_multi" "$url/slow/organizations/api-keys" "$BATCH_N" "$BATCH_C" | value >>"$tmp/rawm"
  "$LUA" bench/batch.lua "$url/slow" "$BATCH_N" "$BATCH_C" | value >>"$tmp/batch"
  r=$((r + 1))
done
raw=$(median <"$tmp/raw"); client=$(median <"$tmp/client"); module=$(median <"$tmp/module")
peer=""; [ ! -s "$tmp/peer" ] || peer=$(median <"$tmp/peer")
rawm=$(median <"$tmp/rawm"); batch=$(median <"$tmp/batch")

# Memory after 1,000 and after MEM_N calls.
MEM_N=${MEM_N:-100000}
"$LUA" bench/memory.lua "$url" "$MEM_N" >"$tmp/mem"
mem() { grep "^$1=" "$tmp/mem" | value; }

# The command line vs curl, one rotation each, CLI_RUNS runs interleaved.
CLI_RUNS=${CLI_RUNS:-100}
cli_line=""
if [ -f bin/slashid-rotate ] && command -v curl >/dev/null 2>&1; then
  # stdout to a file, not /dev/null: slashid-rotate refuses to "write" a
  # new key into /dev/null (it keeps it in a rescue file and exits 3).
  cli_line=$("$LUA" - "$LUA" "$url" "$CLI_RUNS" "$tmp" <<'LUA'
local core = require "slashid.core"
local lua, url, n, tmp = arg[1], arg[2], tonumber(arg[3]), arg[4]
local env = "SLASHID_API_KEY=bench-key SLASHID_ORG_ID=bench-org SLASHID_BASE_URL=" .. url
local cli = env .. " " .. lua .. " bin/slashid-rotate --org-id bench-org >" .. tmp .. "/cli.out 2>/dev/null"
local curl = "curl -s -X PUT -H 'SlashID-OrgID: bench-org' -H 'SlashID-API-Key: bench-key'" ..
  " -H 'SlashID-Required-Consistency: local_region' -H 'SlashID-Required-Consistency-Timeout: 30'" ..
  " -H 'Accept: application/json' -H 'Content-Length: 0' " .. url .. "/organizations/api-keys >" .. tmp .. "/curl.out"
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
echo "per call: $N calls per run; spread: fastest-slowest round, and (slowest-fastest)/median"
printf '%-44s %14s %9s   %s\n' "figure" "value" "x base" "spread"
printf '%-44s %11s us %9s   %s\n' "raw libcurl easy loop (C), per call" "$raw" "1.00" "$(spread "$tmp/raw")"
[ -z "$peer" ] ||
  printf '%-44s %11s us %9s   %s\n' "peer: Lua-cURLv3 + lua-cjson, per call" "$peer" "$(ratio "$peer" "$raw")" "$(spread "$tmp/peer")"
printf '%-44s %11s us %9s   %s\n' "client:rotate_key(), per call" "$client" "$(ratio "$client" "$raw")" "$(spread "$tmp/client")"
printf '%-44s %11s us %9s   %s\n' "slashid.rotate_key(opts), per call" "$module" "$(ratio "$module" "$raw")" "$(spread "$tmp/module")"
[ -z "$peer" ] || echo "  client vs peer: $(ratio "$client" "$peer")x; module vs client: $(ratio "$module" "$client")x"
[ -n "$peer" ] || echo "  module vs client: $(ratio "$module" "$client")x"
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
[ -z "$peer" ] || echo "peer_us_per_call=$peer"
echo "client_rotate_key_us_per_call=$client"
echo "module_rotate_key_us_per_call=$module"
[ -z "$peer" ] || echo "peer_ratio=$(ratio "$peer" "$raw")"
echo "client_rotate_key_ratio=$(ratio "$client" "$raw")"
echo "module_rotate_key_ratio=$(ratio "$module" "$raw")"
[ -z "$peer" ] || echo "client_peer_ratio=$(ratio "$client" "$peer")"
echo "module_client_ratio=$(ratio "$module" "$client")"
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
grep '^[a-z_]*=' "$tmp/stream"

# ---- start-up against the peer (Lua-cURLv3 + lua-cjson): bench/startup.sh
# prints its own table and startup_median_*/startup_rss_* figures.
LUA="$LUA" BUILD="$BUILD" sh bench/startup.sh

# ---- instructions per call under callgrind, same server: bench/instr.sh
# prints its own table and instr_* figures.
LUA="$LUA" BUILD="$BUILD" URL="$url" sh bench/instr.sh

# ---- the command's journal: bench/cli_journal.sh prints its own table
# and cli_* figures (100,000 organizations; its own nginx).
LUA="$LUA" BUILD="$BUILD" sh bench/cli_journal.sh

# ---- kill -9 then --resume: bench/crash.sh prints its own table and
# crash_* figures (1,000 organizations, 20 kills; its own emulator).
LUA="$LUA" BUILD="$BUILD" sh bench/crash.sh
