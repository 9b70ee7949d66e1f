#!/bin/sh
# `make bench-journal` (and part of `make bench`): the command's cost of
# durability. CLI_N (100000) organizations through slashid-rotate at
# --concurrency CLI_C (64) against the fast local nginx (a new key per
# call), side by side in interleaved rounds (CLI_ROUNDS, 3):
#   stdout       --no-journal, keys to stdout (a file): the baseline
#   journal      the default journal, keys to stdout
#   save_to      the default journal with --save-to (the operator's run)
# Wall seconds and peak RSS (medians), the ratio to the baseline, and
# fsync/fdatasync calls per organization of one journaled --save-to run
# (counted by strace on CLI_STRACE_N organizations).
set -eu
LUA=${LUA:-lua5.4}
BUILD=${BUILD:-build/$LUA}
CLI_N=${CLI_N:-100000}
CLI_C=${CLI_C:-64}
CLI_ROUNDS=${CLI_ROUNDS:-3}
CLI_STRACE_N=${CLI_STRACE_N:-5000}
top=$(pwd)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/slashid-bench-cli.XXXXXX")
nginx_pid=""
trap '[ -z "$nginx_pid" ] || kill $nginx_pid 2>/dev/null; rm -rf "$tmp"' EXIT
. bench/nginx.sh
export LUA_PATH="$top/lua/?.lua;;" LUA_CPATH="$top/$BUILD/?.so;;"
export LUA_PATH_5_2="$LUA_PATH" LUA_CPATH_5_2="$LUA_CPATH"
export LUA_PATH_5_3="$LUA_PATH" LUA_CPATH_5_3="$LUA_CPATH"
export LUA_PATH_5_4="$LUA_PATH" LUA_CPATH_5_4="$LUA_CPATH"
mkdir -m 0700 "$tmp/journals"
export SLASHID_JOURNAL_DIR="$tmp/journals"

# The organizations: made-up IDs and keys (nginx answers any).
make_orgs() {
  "$LUA" - "$1" "$2" <<'LUA'
local n = tonumber(arg[1])
local out = assert(io.open(arg[2], "wb"))
for i = 1, n do out:write(("%08x-0000-4000-8000-%012x\tsk_old_%d\n"):format(i, i, i)) end
out:close()
LUA
}
make_orgs "$CLI_N" "$tmp/orgs.tsv"
make_orgs "$CLI_STRACE_N" "$tmp/orgs-small.tsv"

# run NAME ARGS...: one run; appends "seconds rss_kb" to $tmp/NAME.
run() {
  name=$1; shift
  rm -f "$tmp/saved.tsv" "$tmp/out.tsv" "$tmp"/journals/*
  python3 - "$tmp/$name" "$@" <<'PY'
import resource, subprocess, sys, time
out = sys.argv[1]
t = time.monotonic()
with open(out + ".stdout", "wb") as so, open(out + ".stderr", "wb") as se:
    rc = subprocess.call(sys.argv[2:], stdout=so, stderr=se)
wall = time.monotonic() - t
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
if rc != 0:
    sys.exit("bench: %s exited %d (see %s.stderr)" % (out, rc, out))
with open(out, "a") as f:
    f.write("%.3f %d\n" % (wall, rss))
PY
}
cli="$LUA bin/slashid-rotate --orgs $tmp/orgs.tsv --concurrency $CLI_C --base-url $url"
r=0
while [ $r -lt "$CLI_ROUNDS" ]; do
  case $((r % 3)) in
    0) run stdout $cli --no-journal; run journal $cli; run save_to $cli --save-to "$tmp/saved.tsv" ;;
    1) run journal $cli; run save_to $cli --save-to "$tmp/saved.tsv"; run stdout $cli --no-journal ;;
    2) run save_to $cli --save-to "$tmp/saved.tsv"; run stdout $cli --no-journal; run journal $cli ;;
  esac
  r=$((r + 1))
done
# the journaled run's file holds every key
[ "$(wc -l <"$tmp/orgs.tsv")" = "$(cat "$tmp/saved.tsv" 2>/dev/null | wc -l)" ] ||
  { rm -f "$tmp/saved.tsv"; run save_to $cli --save-to "$tmp/saved.tsv"; }
saved_lines=$(wc -l <"$tmp/saved.tsv")

med() { awk "{print \$$2}" "$tmp/$1" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ratio() { echo "$1 $2" | awk '{printf "%.2f", $1/$2}'; }
fsyncs=""
if command -v strace >/dev/null 2>&1; then
  rm -f "$tmp/saved-small.tsv" "$tmp"/journals/*
  strace -f -c -o "$tmp/strace.txt" -e trace=fsync,fdatasync \
    $LUA bin/slashid-rotate --orgs "$tmp/orgs-small.tsv" --concurrency "$CLI_C" \
    --base-url "$url" --save-to "$tmp/saved-small.tsv" >/dev/null 2>&1 || true
  calls=$(awk '$NF == "fsync" || $NF == "fdatasync" {s += $4} END {print s + 0}' "$tmp/strace.txt")
  fsyncs=$(echo "$calls $CLI_STRACE_N" | awk '{printf "%.4f", $1/$2}')
fi

s=$(med stdout 1); j=$(med journal 1); v=$(med save_to 1)
echo
echo "slashid-rotate, $CLI_N organizations at --concurrency $CLI_C, nginx on 127.0.0.1 (new key per call)"
echo "medians of $CLI_ROUNDS interleaved rounds"
printf '%-46s %9s %9s %11s\n' "run" "wall s" "x base" "peak RSS MB"
printf '%-46s %9s %9s %11s\n' "--no-journal, keys to stdout (base)" "$s" "1.00" "$(($(med stdout 2) / 1024))"
printf '%-46s %9s %9s %11s\n' "journal, keys to stdout" "$j" "$(ratio "$j" "$s")" "$(($(med journal 2) / 1024))"
printf '%-46s %9s %9s %11s\n' "journal + --save-to" "$v" "$(ratio "$v" "$s")" "$(($(med save_to 2) / 1024))"
[ -z "$fsyncs" ] || echo "fsync+fdatasync per organization (journal + --save-to, $CLI_STRACE_N orgs, strace): $fsyncs"
echo "lines in the --save-to file: $saved_lines of $CLI_N"
echo
echo "cli_nojournal_stdout_seconds=$s"
echo "cli_journal_stdout_seconds=$j"
echo "cli_journal_save_to_seconds=$v"
echo "cli_journal_save_to_ratio=$(ratio "$v" "$s")"
echo "cli_journal_save_to_rss_kb=$(med save_to 2)"
[ -z "$fsyncs" ] || echo "cli_fsyncs_per_org=$fsyncs"
