#!/bin/sh
# Builds the benchmark peer, Lua-cURLv3 (`require "lcurl"`), for one
# interpreter and prints the path of its lcurl.so on stdout (progress goes
# to stderr). Idempotent: builds only when that lcurl.so is missing or was
# built from another tarball.
#
#   sh bench/peer.sh                 # LUA=lua5.4
#   LUA=luajit sh bench/peer.sh      # lua5.1 lua5.2 lua5.3 lua5.4 luajit
#
# The source comes from shared/peers/ beside the checkout (PEERS= to point
# elsewhere); it is unpacked and built under build/peers/ (git-ignored),
# never into the project's sources, and against Debian's libcurl.
set -eu
LUA=${LUA:-lua5.4}
top=$(pwd)
PEERS=${PEERS:-$top/../shared/peers}
tarball=$PEERS/Lua-cURLv3-src.tar.gz
name=$(basename "$LUA")
case $name in
  luajit*) incdir=/usr/include/luajit-2.1; luapkgs="luajit2 libluajit2-5.1-dev" ;;
  lua5.1)  incdir=/usr/include/lua5.1; luapkgs="lua5.1 liblua5.1-0-dev" ;;
  lua5.*)  incdir=/usr/include/$name; luapkgs="$name lib$name-dev" ;;
  *) echo "peer: unknown interpreter '$LUA' (lua5.1..lua5.4, luajit)" >&2; exit 2 ;;
esac
out=$top/build/peers/$name/lcurl.so
stamp=$top/build/peers/$name/lcurl.cksum     # which tarball it was built from
src=$top/build/peers/src/Lua-cURLv3

sum=""
[ ! -f "$tarball" ] || sum=$(cksum <"$tarball")
if [ -f "$out" ] && { [ -z "$sum" ] || [ "$sum" = "$(cat "$stamp" 2>/dev/null)" ]; }; then
  echo "$out"
  exit 0
fi
[ -n "$sum" ] || { echo "peer: $tarball not found" >&2; exit 1; }

# shellcheck disable=SC2086
sh scripts/deps.sh gcc libc6-dev libcurl4-openssl-dev $luapkgs

mkdir -p "$top/build/peers/src" "$top/build/peers/$name"
if [ "$sum" != "$(cat "$src.cksum" 2>/dev/null)" ]; then
  unpack=$(mktemp -d "$top/build/peers/src/.unpack.XXXXXX")
  tar xzf "$tarball" -C "$unpack"
  rm -rf "$src"
  mv "$unpack/Lua-cURLv3" "$src"
  rm -rf "$unpack"
  echo "$sum" >"$src.cksum"
fi

echo "peer: building $out" >&2
trap 'rm -f "$out.tmp.$$"' EXIT
# As shared/peers/README.md builds it: -O2, every source file, -lcurl.
# Its warnings are not ours to fix (-w).
cc -O2 -w -shared -fPIC -I"$incdir" "$src"/src/*.c -lcurl -o "$out.tmp.$$"
mv "$out.tmp.$$" "$out"
echo "$sum" >"$stamp"
echo "$out"
