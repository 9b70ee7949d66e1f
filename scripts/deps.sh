#!/bin/sh
# Installs the Debian packages named as arguments that are not installed
# yet. Idempotent: does nothing (and needs no network) when all are there.
set -eu
missing=""
for pkg in "$@"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
[ -z "$missing" ] && exit 0
echo "deps: installing$missing" >&2
if [ "$(id -u)" -eq 0 ]; then
  sudo=""
elif command -v sudo >/dev/null 2>&1; then
  sudo="sudo"
else
  echo "deps: missing packages:$missing (run as root, or install them)" >&2
  exit 1
fi
# One `apt-get update` per machine run: skipped when the lists are fresh.
stamp=/var/lib/apt/periodic/slashid-update-stamp
if [ ! -f "$stamp" ] || [ -n "$(find "$stamp" -mmin +60 2>/dev/null)" ] ||
   ! ls /var/lib/apt/lists/*Packages* >/dev/null 2>&1; then
  $sudo apt-get update -qq
  $sudo mkdir -p "$(dirname "$stamp")" && $sudo touch "$stamp"
fi
# shellcheck disable=SC2086
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
