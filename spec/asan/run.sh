#!/bin/sh
# make check-asan: the whole spec suite (spec/run.sh) against a module built
# with -fsanitize=address,undefined, the ASan runtime preloaded into the
# (uninstrumented) interpreter and every process the specs spawn (the
# emulator excepted: spec/run.sh starts python without LD_PRELOAD).
#
# Every report goes to a log file named after its program, so that reports
# from child processes count as well. The run fails on:
#   - any ASan or UBSan error, from any process;
#   - any leak reported by a Lua interpreter (the module lives there);
#     spec/asan/lsan.supp mutes only what the interpreter, libcurl and
#     OpenSSL keep for the life of the process on purpose.
# Leak reports of the helper programs the specs run (mktemp, ls, stat...)
# are not ours and are only counted.
#
#   LUA (lua5.4)  BUILD (build/asan-$LUA: holds slashid/core.so)  CC (cc)
set -u
LUA=${LUA:-lua5.4}
BUILD=${BUILD:-build/asan-$LUA}
CC=${CC:-cc}

runtime=$($CC -print-file-name=libasan.so)
# clang: its shared runtime has another name
case $runtime in
  /*) ;;
  *) runtime=$($CC -print-file-name=libclang_rt.asan-$(uname -m).so) ;;
esac
if [ ! -e "$runtime" ]; then
  echo "check-asan: no ASan runtime for $CC ($runtime)" >&2
  exit 1
fi
logs=$(mktemp -d "${TMPDIR:-/tmp}/slashid-asan.XXXXXX")
supp=$(pwd)/spec/asan/lsan.supp

# halt_on_error: the first error ends the process (its spec fails too).
# quarantine_size_mb: freed blocks stay poisoned until 16 MB more has been
# freed (default 256 MB); with the default, spec/08-leak_spec.lua's RSS
# bounds measure the quarantine instead of the module.
# intercept_tls_get_addr=0: GCC 12's LeakSanitizer misreads glibc 2.36's
# dynamic TLS blocks (of libraries libcurl loads) and its tracer crashes
# at exit ("Tracer caught signal 11 ... DTLS"); without the interception,
# pointers held only in dynamic TLS are not roots, which can only add leak
# reports of those libraries (spec/asan/lsan.supp), never hide one.
LD_PRELOAD=$runtime \
ASAN_OPTIONS="log_path=$logs/asan:log_exe_name=1:halt_on_error=1:detect_leaks=1:intercept_tls_get_addr=0:detect_stack_use_after_return=1:strict_string_checks=1:check_initialization_order=1:quarantine_size_mb=16:allocator_release_to_os_interval_ms=50" \
LSAN_OPTIONS="suppressions=$supp:print_suppressions=0" \
UBSAN_OPTIONS="log_path=$logs/ubsan:log_exe_name=1:print_stacktrace=1:halt_on_error=1" \
LUA=$LUA BUILD=$BUILD sh spec/run.sh
rc=$?

failed=0 ignored=0
for f in "$logs"/*; do
  [ -e "$f" ] || continue
  name=$(basename "$f")            # asan.<program>.<pid> / ubsan.<program>.<pid>
  program=${name#*.}
  program=${program%.*}
  if grep -q "ERROR: LeakSanitizer" "$f" && ! grep -q "ERROR: AddressSanitizer\|runtime error" "$f"; then
    case $program in
      lua*|luajit*) ;;             # a leak in the interpreter: ours to explain
      *) ignored=$((ignored + 1)); continue ;;
    esac
  fi
  failed=$((failed + 1))
  echo "=== sanitizer report: $name" >&2
  cat "$f" >&2
done
rm -rf "$logs"
[ $ignored -gt 0 ] &&
  echo "check-asan: $ignored leak report(s) of helper programs (not the interpreter) ignored"
if [ $failed -gt 0 ]; then
  echo "check-asan: FAILED: $failed sanitizer report(s)" >&2
  exit 1
fi
if [ $rc -ne 0 ]; then
  echo "check-asan: FAILED: the spec suite failed under ASan/UBSan (exit $rc)" >&2
  exit $rc
fi
echo "check-asan: OK: whole suite passed; no ASan, UBSan or LSan report from the interpreter"
