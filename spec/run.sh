#!/bin/sh
# Runs the busted suite against a fresh local SlashID emulator
# (spec/with-emulator.sh starts and stops it) and ends with one line
# "N passed, N failed". Used by `make test` and the check targets.
#   LUA    interpreter (lua5.4)      BUILD  folder holding slashid/core.so
#   SPECS  spec files or folder (spec)
#   JOBS   shards run at once (1), each with its own emulator: most of the
#          suite waits on timers and sockets, not the CPU, so `make test`
#          runs 3 on two cores. Each shard's output is shown whole, in
#          order, then the line summing them.
set -u
LUA=${LUA:-lua5.4}
BUILD=${BUILD:-build/$LUA}
SPECS=${SPECS:-spec}
JOBS=${JOBS:-1}

export SLASHID_SPEC_LUA="$LUA"
export LUA_PATH="lua/?.lua;spec/?.lua;;" LUA_CPATH="$BUILD/?.so;;"
export LUA_PATH_5_2="$LUA_PATH" LUA_CPATH_5_2="$LUA_CPATH"
export LUA_PATH_5_3="$LUA_PATH" LUA_CPATH_5_3="$LUA_CPATH"
export LUA_PATH_5_4="$LUA_PATH" LUA_CPATH_5_4="$LUA_CPATH"

# A watchdog: a spec that hangs (a child that never exits, a read that
# never ends) must fail the run with the test's name, not stall CI until
# its own limit says nothing. SPEC_TIMEOUT seconds per busted run (the
# longest, check-asan's whole suite, takes about 8 minutes).
SPEC_TIMEOUT=${SPEC_TIMEOUT:-1500}

# One busted run over its arguments; 69: the emulator did not start and
# busted never ran: still end with the summary line. The output handler
# writes the name of the test it is running to SLASHID_SPEC_CURRENT.
run_busted() {
  current=$(mktemp "${TMPDIR:-/tmp}/slashid-current.XXXXXX")
  # timeout signals its whole process group: busted, the emulator and
  # whatever a test started.
  # shellcheck disable=SC2068
  SLASHID_SPEC_CURRENT=$current timeout -k 10 "$SPEC_TIMEOUT" \
    sh spec/with-emulator.sh "$LUA" /usr/bin/busted --output=spec/summary_output.lua $@
  status=$?
  case $status in
    69) echo "0 passed, 1 failed" ;;
    124|137)
      echo
      echo "spec/run.sh: the specs did not finish within $SPEC_TIMEOUT s (SPEC_TIMEOUT);"
      echo "  the test running then: $(cat "$current" 2>/dev/null)"
      echo "0 passed, 1 failed" ;;
  esac
  rm -f "$current"
  return $status
}

if [ "$JOBS" -le 1 ]; then
  # shellcheck disable=SC2086
  run_busted $SPECS
  exit $?
fi

# Shards: the files (a folder is expanded), longest first (seconds each took
# in one busted run of them all; others count 2), each to the shard with the
# least so far.
files=$(for s in $SPECS; do
  if [ -d "$s" ]; then ls "$s"/*_spec.lua; else echo "$s"; fi
done)
plan=$(for f in $files; do
  case $(basename "$f" _spec.lua) in
    20-cli_journal) w=80 ;; 19-cli) w=55 ;; 21-openapi) w=25 ;; 15-pollable) w=20 ;;
    17-batch) w=17 ;; 14-deadline) w=15 ;; 11-odd_answers) w=25 ;; 09-op) w=13 ;;
    13-proxy) w=8 ;; 10-faults) w=8 ;; 04-retries) w=7 ;; 07-secrets) w=7 ;;
    08-leak) w=7 ;; 03-outcomes) w=5 ;; 18-journal) w=4 ;; 12-bad_input) w=4 ;;
    02-options) w=3 ;; 16-kept_config) w=6 ;;
    *) w=2 ;;
  esac
  echo "$w $f"
done | sort -rn | awk -v jobs="$JOBS" '
  { best = 1
    for (j = 2; j <= jobs; j++) if (load[j] < load[best]) best = j
    load[best] += $1; list[best] = list[best] " " $2 }
  END { for (j = 1; j <= jobs; j++) if (list[j] != "") print j ":" list[j] }')

out=$(mktemp -d "${TMPDIR:-/tmp}/slashid-shards.XXXXXX")
trap 'rm -rf "$out"' EXIT
pids=""
for line in $(echo "$plan" | tr ' ' ','); do
  j=${line%%:*}
  list=$(echo "${line#*:}" | tr ',' ' ')
  ( run_busted $list >"$out/$j.log" 2>&1; echo $? >"$out/$j.rc" ) &
  pids="$pids $!"
done
# shellcheck disable=SC2086
wait $pids
status=0 passed=0 failed=0
for line in $(echo "$plan" | tr ' ' ','); do
  j=${line%%:*}
  echo "== shard $j:$(echo "${line#*:}" | tr ',' ' ')"
  cat "$out/$j.log"
  rc=$(cat "$out/$j.rc" 2>/dev/null || echo 1)
  [ "$rc" -eq 0 ] || status=$rc
  last=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$out/$j.log" | tail -1)
  if [ -n "$last" ]; then
    passed=$((passed + ${last%% passed*}))
    f=${last#*, }
    failed=$((failed + ${f%% failed}))
  else
    failed=$((failed + 1))       # a shard that never summed up
  fi
done
echo
echo "$passed passed, $failed failed"
[ $failed -eq 0 ] || [ $status -ne 0 ] || status=1
exit $status
