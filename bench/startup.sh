#!/bin/sh
# Start-up cost of `require "slashid"` against the peer a Lua user would
# otherwise pick, Lua-cURLv3 + lua-cjson (`require "lcurl"; require "cjson"`),
# and a bare interpreter. Run from the project root:
#
#   LUA=lua5.4 BUILD=build/lua5.4 sh bench/startup.sh
#
# STARTUP_ROUNDS (30) interleaved rounds, each running every variant once,
# the first variant moving by one each round so no variant always follows
# the same one. Each run is timed from fork to reaped exit on the monotonic
# clock, and its peak RSS is the ru_maxrss that wait4 reports (the figure
# `/usr/bin/time -f %M` prints). Prints medians as a table, then one
# name=value per figure. Figures, not pass/fail.
#
# SRC=DIR measures the lua/ and $BUILD of another tree (e.g. an older
# worktree, built there with `make all`) against the same peer.
set -eu
LUA=${LUA:-lua5.4}
BUILD=${BUILD:-build/$(basename "$LUA")}
ROUNDS=${STARTUP_ROUNDS:-30}
top=$(pwd)
SRC=$(cd "${SRC:-$top}" && pwd)
case $BUILD in /*) built=$BUILD ;; *) built=$SRC/$BUILD ;; esac
[ -f "$built/slashid/core.so" ] ||
  { echo "startup: $built/slashid/core.so missing (make all LUA=$LUA)" >&2; exit 1; }
sh scripts/deps.sh gcc libc6-dev lua-cjson
tmp=$(mktemp -d "${TMPDIR:-/tmp}/slashid-startup.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# One run of argv[1..]: "wall_ms peak_rss_kb" on stdout; fails if it does.
cat >"$tmp/run1.c" <<'C'
#include <stdio.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
  struct timespec a, b;
  struct rusage ru;
  int status;
  pid_t pid;
  if (argc < 2) return 2;
  clock_gettime(CLOCK_MONOTONIC, &a);
  pid = fork();
  if (pid == 0) {
    execvp(argv[1], argv + 1);
    _exit(127);
  }
  if (pid < 0 || wait4(pid, &status, 0, &ru) != pid) return 2;
  clock_gettime(CLOCK_MONOTONIC, &b);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return 1;
  printf("%.3f %ld\n", (double)(b.tv_sec - a.tv_sec) * 1e3 +
         (double)(b.tv_nsec - a.tv_nsec) / 1e6, ru.ru_maxrss);
  return 0;
}
C
cc -O2 -std=gnu99 -Wall -Wextra -Werror -o "$tmp/run1" "$tmp/run1.c"

# The peer, built once under build/peers/; the same search paths for every
# variant.
bench_name=startup lua_dir="$SRC/lua" module_dir="$built"
. bench/paths.sh

code() {
  case $1 in
    1) echo "" ;;
    2) echo 'require "lcurl"; require "cjson"' ;;
    3) echo 'require "slashid"' ;;
    4) echo 'require "slashid.core"' ;;
  esac
}
n=4
variants="1 3 4"
[ -z "$peer_dir" ] || variants="1 2 3 4"
for v in $variants; do          # warm-up (page cache), and each must load
  if "$tmp/run1" "$LUA" -e "$(code "$v")" >/dev/null 2>&1; then
    : >"$tmp/v$v"
  else
    echo "startup: $LUA -e '$(code "$v")' fails:" >&2
    "$LUA" -e "$(code "$v")" >&2 || true
    [ "$v" = 2 ] || exit 1
    variants="1 3 4"
  fi
done

r=0
while [ "$r" -lt "$ROUNDS" ]; do
  k=0
  while [ "$k" -lt "$n" ]; do
    v=$(( (r + k) % n + 1 ))
    case " $variants " in
      *" $v "*) "$tmp/run1" "$LUA" -e "$(code "$v")" >>"$tmp/v$v" ;;
    esac
    k=$((k + 1))
  done
  r=$((r + 1))
done

# median COLUMN FILE; min COLUMN FILE
median() { awk -v c="$1" '{print $c}' "$2" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
min() { awk -v c="$1" '{print $c}' "$2" | sort -n | head -n 1; }
fmt() { awk -v x="$1" 'BEGIN {printf "%.2f", x}'; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%+.2f", a - b}'; }
# Paired: the median over rounds of (this run / the peer's run in the same
# round), so load that comes and goes hits both sides of each ratio.
ratio() { paste -d ' ' "$1" "$2" | awk '{print $1 / $3}' | sort -n |
          awk '{a[NR]=$1} END {printf "%.2f", a[int((NR+1)/2)]}'; }

bare=$(median 1 "$tmp/v1")
peer=""; [ ! -s "$tmp/v2" ] || peer=$(median 1 "$tmp/v2")
name=$(basename "$LUA")
echo
where=""; [ "$SRC" = "$top" ] || where=" ($SRC)"
echo "start-up, $name$where: medians of $ROUNDS interleaved rounds (wall time fork to exit; peak RSS)"
[ -z "$peer" ] || echo "x peer: median of the per-round ratios to the peer's run"
printf '%-46s %8s %8s %9s %8s %7s\n' "command" "ms" "min ms" "-bare ms" "RSS KB" "x peer"
for v in 1 2 3 4; do
  case " $variants " in *" $v "*) ;; *) continue ;; esac
  ms=$(median 1 "$tmp/v$v"); rss=$(median 2 "$tmp/v$v")
  x=""; [ -z "$peer" ] || [ "$v" = 1 ] || x=$(ratio "$tmp/v$v" "$tmp/v2")x
  label="$name -e '$(code "$v")'"
  [ "$v" != 4 ] || label="$label (info)"
  printf '%-46s %8s %8s %9s %8s %7s\n' "$label" "$(fmt "$ms")" "$(fmt "$(min 1 "$tmp/v$v")")" \
    "$(sub "$ms" "$bare")" "$rss" "$x"
done
echo
for v in $variants; do
  case $v in 1) key=bare ;; 2) key=peer ;; 3) key=slashid ;; 4) key=core ;; esac
  echo "startup_median_${key}_ms=$(fmt "$(median 1 "$tmp/v$v")")"
  echo "startup_rss_${key}_kb=$(median 2 "$tmp/v$v")"
done
if [ -n "$peer" ]; then
  echo "startup_slashid_peer_ratio=$(ratio "$tmp/v3" "$tmp/v2")"
fi
