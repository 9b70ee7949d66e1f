# examples/emulator.sh - sourced by examples/run-*.sh (`make example-*`).
# Starts the bundled SlashID emulator on 127.0.0.1 in a fresh temp folder
# ($tmp), waits for its info file, and exports the seeded organization as
# SLASHID_ORG_ID, SLASHID_API_KEY, SLASHID_BASE_URL (HTTPS) and
# SLASHID_CA_FILE (the emulator's own CA) without printing the key. On exit
# it stops every pid in $started (the emulator, and whatever the runner
# adds) and removes $tmp: nothing a runner starts outlives it.
set -eu
cd "$(dirname "$0")/.."              # the clone's root, wherever we were called from
# shellcheck disable=SC2034  # root: used by the runners
root=$(pwd)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/slashid-example.XXXXXX")
started=""
stop_all() {
  for pid in $started; do kill "$pid" 2>/dev/null || true; done
  for pid in $started; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# The emulator is local: a proxy of the caller's must not stand between.
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY

python3 emulator/slashid_emulator.py --info "$tmp/emulator.json" \
  --state-dir "$tmp/emulator" >"$tmp/emulator.log" 2>&1 &
started=$!
i=0
until [ -s "$tmp/emulator.json" ]; do
  i=$((i + 1))
  if [ $i -gt 100 ] || ! kill -0 "$started" 2>/dev/null; then
    echo "the emulator did not start:" >&2; cat "$tmp/emulator.log" >&2; exit 1
  fi
  sleep 0.1
done
# python3 reads the info file: no Lua (of whichever version) needed for it.
eval "$(python3 - "$tmp/emulator.json" <<'PY'
import json, shlex, sys
info = json.load(open(sys.argv[1]))
for name, field in (("ORG_ID", "org_id"), ("API_KEY", "api_key"),
                    ("BASE_URL", "https_url"), ("CA_FILE", "ca_file")):
    print("SLASHID_%s=%s" % (name, shlex.quote(info[field])))
PY
)"
export SLASHID_ORG_ID SLASHID_API_KEY SLASHID_BASE_URL SLASHID_CA_FILE
export SLASHID_KEY_FILE="$tmp/slashid.key"   # where the new key goes (0600)
echo "== emulator at $SLASHID_BASE_URL, organization $SLASHID_ORG_ID"

# key_file_note: what became of the key file, without its content.
key_file_note() {
  echo "== key file: $(stat -c 'mode %a, %s bytes' "$SLASHID_KEY_FILE") (a scratch copy, removed on exit)"
}
