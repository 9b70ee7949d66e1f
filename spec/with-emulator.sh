#!/bin/sh
# Runs CMD... with a fresh local SlashID emulator, then stops it.
#
#   sh spec/with-emulator.sh CMD [ARG...]
#
# CMD sees SLASHID_EMULATOR_INFO (the emulator's JSON info file, read by
# spec/helpers.lua) and SLASHID_SPEC_TMP (a scratch folder removed
# afterwards). The exit status is CMD's. Used by the valgrind soak and the
# thread test; spec/run.sh starts the emulator the same way.
#
# The emulator is python3: it is started without LD_PRELOAD, so that a
# sanitizer runtime preloaded for CMD is not loaded into python as well.
set -u
if [ $# -eq 0 ]; then
  echo "usage: sh spec/with-emulator.sh CMD [ARG...]" >&2
  exit 64
fi

# The emulator and CMD must not be steered by the caller's environment.
unset SLASHID_ORG_ID SLASHID_API_KEY SLASHID_BASE_URL SLASHID_CA_FILE SLASHID_JOURNAL_DIR \
      http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY no_proxy NO_PROXY

here=$(dirname "$0")
tmp=$(mktemp -d "${TMPDIR:-/tmp}/slashid-emu.XXXXXX")
env -u LD_PRELOAD python3 "$here/../emulator/slashid_emulator.py" \
  --info "$tmp/emulator.json" --state-dir "$tmp/emulator" \
  >"$tmp/emulator.log" 2>&1 &
emulator=$!
cleanup() {
  kill "$emulator" 2>/dev/null && wait "$emulator" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

i=0
while [ ! -s "$tmp/emulator.json" ]; do
  i=$((i + 1))
  if [ $i -gt 100 ] || ! kill -0 "$emulator" 2>/dev/null; then
    echo "spec/with-emulator.sh: the emulator did not start:" >&2
    cat "$tmp/emulator.log" >&2
    exit 69   # EX_UNAVAILABLE: CMD never ran
  fi
  sleep 0.1
done

# TMPDIR too: rescue files of commands run by the specs land in the
# scratch folder (removed below), not in /tmp.
export SLASHID_EMULATOR_INFO="$tmp/emulator.json" SLASHID_SPEC_TMP="$tmp" TMPDIR="$tmp"
# slashid-rotate keeps its journals here, not in the home directory
mkdir -m 0700 "$tmp/journals"
export SLASHID_JOURNAL_DIR="$tmp/journals"
"$@"
