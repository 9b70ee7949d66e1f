#!/bin/sh
# Installs the Debian packages named as arguments that are not installed
# yet. Idempotent: does nothing (and needs no network) when all are there.
#
# It never removes a package: apt-get runs with --no-remove, and what apt
# would remove is looked up first (apt-get -s) to say so.
#   deps.sh [--for WHAT] PKG...
#       all are needed: when installing them would remove a package, prints
#       which, and that WHAT (a command) cannot run here; exits 1
#   deps.sh --optional NAME PKG...
#       a group only some specs need: when installing it would remove a
#       package, writes why and how to enable it to $SKIP_DIR/NAME
#       (build/skipped-packages/NAME; the specs needing NAME read it and
#       skip) and exits 0 (1 when CI is set); deletes that file once the
#       group is installed
# ALLOW_REMOVE=1 lets apt remove what conflicts (after saying what).
set -eu
group="" what="" skip_dir=${SKIP_DIR:-build/skipped-packages}
while [ $# -gt 0 ]; do
  case $1 in
    --optional) group=$2; shift 2 ;;
    --for) what=$2; shift 2 ;;
    *) break ;;
  esac
done

installed() {  # "ii": installed and configured (not merely known to dpkg)
  dpkg-query -W -f='${db:Status-Abbrev}\n' "$1" 2>/dev/null | grep -q '^ii'
}
missing=""
for pkg in "$@"; do
  installed "$pkg" || missing="$missing $pkg"
done
if [ -z "$missing" ]; then
  [ -z "$group" ] || rm -f "$skip_dir/$group"
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  sudo=""
elif command -v sudo >/dev/null 2>&1; then
  sudo="sudo"
else
  echo "deps: missing packages:$missing (run as root, or install them)" >&2
  exit 1
fi

# A dry run of installing $missing: sim_ok (1 when apt could plan it; not
# when a package is unknown to the lists, e.g. before the first update),
# sim_out (apt's words) and gone (the names apt would remove, one line).
simulate() {
  # shellcheck disable=SC2086
  if sim_out=$(LC_ALL=C apt-get install -s --no-install-recommends $missing 2>&1); then
    sim_ok=1
  else
    sim_ok=0
  fi
  gone=$(printf '%s\n' "$sim_out" | awk '$1 == "Remv" { printf "%s%s", sep, $2; sep = " " }')
}

# Refuses to install $missing, which would remove $1. Exits.
refuse() {
  gone=$1
  pkgs=${missing# }
  # CI (a fresh machine) has nothing to conflict with: a group left out
  # there is a mistake of ours, not a reason to skip specs.
  if [ -n "$group" ] && [ -z "${CI:-}" ]; then
    mkdir -p "$skip_dir"
    echo "make test left out $pkgs: installing would remove $gone" \
         "(make test never removes a package); to run this:" \
         "\`make test ALLOW_REMOVE=1\` (apt then removes them)," \
         "or install $pkgs yourself" >"$skip_dir/$group"
    echo "deps: NOT installing $pkgs: that would remove $gone." \
         "The specs needing it are skipped (ALLOW_REMOVE=1 lets apt remove them)." >&2
    exit 0
  fi
  [ -z "$group" ] || what="make test (CI is set: the $group group may not be left out)"
  echo "deps: ${what:-this} cannot run here: installing $pkgs would remove" \
       "$gone, and deps.sh never removes a package (nothing was installed or" \
       "removed). To run it anyway, add ALLOW_REMOVE=1 (apt then removes them)," \
       "or install $pkgs yourself." >&2
  exit 1
}

# First from the lists already here (no network for a refusal), then after
# an update: a fresh machine has no lists yet.
simulate
if [ $sim_ok = 1 ] && [ -n "$gone" ] && [ "${ALLOW_REMOVE:-}" != 1 ]; then
  refuse "$gone"
fi

echo "deps: installing$missing" >&2
# One `apt-get update` per machine run: skipped when the lists are fresh.
stamp=/var/lib/apt/periodic/slashid-update-stamp
if [ ! -f "$stamp" ] || [ -n "$(find "$stamp" -mmin +60 2>/dev/null)" ] ||
   ! ls /var/lib/apt/lists/*Packages* >/dev/null 2>&1; then
  $sudo apt-get update -qq
  $sudo mkdir -p "$(dirname "$stamp")" && $sudo touch "$stamp"
fi

simulate
[ $sim_ok = 1 ] || { printf '%s\n' "$sim_out" >&2; exit 1; }
remove=--no-remove
if [ -n "$gone" ]; then
  [ "${ALLOW_REMOVE:-}" = 1 ] || refuse "$gone"
  echo "deps: ALLOW_REMOVE=1: apt removes $gone" >&2
  remove=""
fi
# shellcheck disable=SC2086
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
  --no-install-recommends $remove $missing >/dev/null
[ -z "$group" ] || rm -f "$skip_dir/$group"
