#!/bin/sh
# Instructions per call (`make bench-instr`; `make bench` runs it too): the
# raw libcurl easy loop (C, bench/raw_easy.c), the hand-written peer on
# Lua-cURLv3 + lua-cjson (bench/peer_client.lua), client:rotate_key and
# slashid.rotate_key (bench/rotate.lua), each run under
# `valgrind --tool=callgrind` for N1 (1000) and then N2 (2000) calls
# against nginx on 127.0.0.1 answering a new key per call, as SlashID
# does (bench/nginx.conf.in), so the client adopts a new key on every
# call and the peer sends a new key header each time. Per call:
# (Ir(N2) - Ir(N1)) / (N2 - N1), Ir being every instruction the process
# executed (all threads, from exec to exit), so start-up, warm-up and the
# timing around the loop cancel out; the server's work is not counted.
# Run from the project root:
#
#   LUA=lua5.4 BUILD=build/lua5.4 sh bench/instr.sh
#
# URL=http://127.0.0.1:PORT uses a server already serving bench/nginx.conf.in
# (bench/run.sh passes its own); without it one is started. Prints a table,
# then one name=value per figure. Figures, not pass/fail: callgrind counts
# are close to deterministic (a run differs from the next by well under 1%,
# Lua's string hashing and heap addresses varying).
set -eu
LUA=${LUA:-lua5.4}
BUILD=${BUILD:-build/$(basename "$LUA")}
N1=${N1:-1000}
N2=${N2:-2000}
top=$(pwd)
[ "$N2" -gt "$N1" ] || { echo "instr: N2 ($N2) must be above N1 ($N1)" >&2; exit 2; }
[ -f "$BUILD/slashid/core.so" ] ||
  { echo "instr: $BUILD/slashid/core.so missing (make all LUA=$LUA)" >&2; exit 1; }
command -v valgrind >/dev/null 2>&1 ||
  { echo "instr: valgrind missing (sh scripts/deps.sh valgrind)" >&2; exit 1; }
tmp=$(mktemp -d "${TMPDIR:-/tmp}/slashid-instr.XXXXXX")
nginx_pid=""
trap '[ -z "$nginx_pid" ] || kill $nginx_pid 2>/dev/null; rm -rf "$tmp"' EXIT
if [ -n "${URL:-}" ]; then
  url=$URL
else
  . bench/nginx.sh
fi

cc -O2 -o "$tmp/raw_easy" bench/raw_easy.c -lcurl
# The peer, Lua-cURLv3 built under build/peers/, driven by a hand-written
# client (bench/peer_client.lua); the same search paths for every variant.
bench_name=instr lua_dir="$top/lua" module_dir="$top/$BUILD"
. bench/paths.sh

# ir VARIANT N: the instructions of one whole run of VARIANT making N calls.
ir() {
  case $1 in
    raw)    set -- "$1" "$2" "$tmp/raw_easy" "$url/organizations/api-keys" "$2" ;;
    peer)   set -- "$1" "$2" "$LUA" bench/peer_client.lua "$url" "$2" ;;
    client) set -- "$1" "$2" "$LUA" bench/rotate.lua "$url" "$2" client ;;
    module) set -- "$1" "$2" "$LUA" bench/rotate.lua "$url" "$2" module ;;
  esac
  out=$tmp/cg.$1.$2
  shift 2
  if ! valgrind --tool=callgrind --collect-atstart=yes --callgrind-out-file="$out" \
       "$@" >"$out.stdout" 2>"$out.stderr"; then
    echo "instr: $* failed under callgrind:" >&2
    cat "$out.stderr" >&2
    exit 1
  fi
  awk '$1 == "summary:" {print $2}' "$out"
}

variants="raw peer client module"
[ -n "$peer_dir" ] || variants="raw client module"
for v in $variants; do
  a=$(ir "$v" "$N1")
  b=$(ir "$v" "$N2")
  awk -v a="$a" -v b="$b" -v d=$((N2 - N1)) 'BEGIN {printf "%.0f\n", (b - a) / d}' >"$tmp/$v"
done
get() { cat "$tmp/$1" 2>/dev/null || true; }
ratio() { if [ -n "$1" ] && [ -n "$2" ]; then awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; fi; }
raw=$(get raw); peer=$(get peer); client=$(get client); module=$(get module)

echo
echo "instructions per call, $(basename "$LUA"): callgrind Ir, (Ir($N2 calls) - Ir($N1 calls)) / $((N2 - N1))"
printf '%-46s %12s %8s %8s\n' "variant" "Ir/call" "x raw" "x peer"
printf '%-46s %12s %8s %8s\n' "raw libcurl easy loop (C)" "$raw" "1.00" ""
[ -z "$peer" ] ||
  printf '%-46s %12s %8s %8s\n' "peer: Lua-cURLv3 + lua-cjson by hand" "$peer" "$(ratio "$peer" "$raw")" "1.00"
printf '%-46s %12s %8s %8s\n' "client:rotate_key()" "$client" "$(ratio "$client" "$raw")" "$(ratio "$client" "$peer")"
printf '%-46s %12s %8s %8s\n' "slashid.rotate_key(opts)" "$module" "$(ratio "$module" "$raw")" "$(ratio "$module" "$peer")"
echo "module vs client: $(ratio "$module" "$client")x"
echo
echo "instr_raw_per_call=$raw"
[ -z "$peer" ] || echo "instr_peer_per_call=$peer"
echo "instr_client_per_call=$client"
echo "instr_module_per_call=$module"
[ -z "$peer" ] || echo "instr_peer_raw_ratio=$(ratio "$peer" "$raw")"
echo "instr_client_raw_ratio=$(ratio "$client" "$raw")"
[ -z "$peer" ] || echo "instr_client_peer_ratio=$(ratio "$client" "$peer")"
echo "instr_module_raw_ratio=$(ratio "$module" "$raw")"
echo "instr_module_client_ratio=$(ratio "$module" "$client")"
