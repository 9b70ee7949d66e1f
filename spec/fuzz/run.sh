#!/bin/sh
# make fuzz: replays the seed corpora (every regression input included),
# then fuzzes each harness for FUZZ_SECONDS (0: replay only). Inputs found
# are kept in $BUILD/corpus/NAME (ignored by git) and reused next time;
# a crash is saved under spec/fuzz/crashes/ (ignored by git) and fails the
# run: turn it into a corpus file and a case in the spec of its topic
# (spec/07-secrets_spec.lua and spec/03-outcomes_spec.lua hold such cases).
#   BUILD (build/fuzz: holds fuzz_answer, fuzz_options)  FUZZ_SECONDS (60)
set -u
BUILD=${BUILD:-build/fuzz}
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
crashes=spec/fuzz/crashes/
mkdir -p "$crashes"

# Leaks are checked once, at exit. libFuzzer's per-input check is off
# (-detect_leaks=0 below): the harnesses keep one lua_State whose garbage
# makes every input look like a leak, and scanning after each input costs
# 90% of the time. UBSan stops at the first report.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

status=0
for name in answer options; do
  bin="$BUILD/fuzz_$name"
  seeds="spec/fuzz/corpus/$name"
  work="$BUILD/corpus/$name"
  dict=""
  [ -f "spec/fuzz/$name.dict" ] && dict="-dict=spec/fuzz/$name.dict"
  mkdir -p "$work"
  nseeds=$(ls "$seeds" | wc -l)

  # 1. every seed once: regressions fail here, deterministically
  if ! "$bin" -runs=0 -detect_leaks=0 "$seeds" >"$BUILD/replay-$name.log" 2>&1; then
    cat "$BUILD/replay-$name.log" >&2
    echo "fuzz: fuzz_$name FAILED on its seed corpus ($seeds)" >&2
    status=1
    continue
  fi
  echo "fuzz: fuzz_$name: $nseeds seed inputs replayed, no finding"
  [ "$FUZZ_SECONDS" -gt 0 ] || continue

  # 2. fuzzing proper
  log="$BUILD/fuzz-$name.log"
  # shellcheck disable=SC2086
  "$bin" -max_total_time="$FUZZ_SECONDS" -timeout=10 -max_len=16384 -detect_leaks=0 \
    -print_final_stats=1 -artifact_prefix="$crashes" $dict \
    "$work" "$seeds" >"$log" 2>&1
  rc=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  found=$(ls "$work" | wc -l)
  if [ $rc -ne 0 ]; then
    tail -60 "$log" >&2
    echo "fuzz: fuzz_$name FAILED after ${runs:-?} executions; the input is in $crashes" >&2
    status=1
  else
    echo "fuzz: fuzz_$name: ${runs:-?} executions in ${FUZZ_SECONDS}s (${speed:-?}/s), corpus: $nseeds seeds + $found kept in $work, no finding"
  fi
done
exit $status
