# shellcheck shell=sh
# Sourced by bench/run.sh, bench/instr.sh and bench/startup.sh (POSIX sh):
# builds the peer, Lua-cURLv3, if it is missing (bench/peer.sh) and exports
# the search paths every variant runs with: the project's Lua files from
# $lua_dir, the module from $module_dir, and the peer's lcurl.so (left out,
# with a note naming $bench_name, when it cannot be built).
peer_dir=""
if peer_so=$(LUA="$LUA" sh bench/peer.sh); then
  peer_dir=$(dirname "$peer_so")
else
  echo "$bench_name: peer unavailable, measuring without it" >&2
fi
export LUA_PATH="$lua_dir/?.lua;;"
export LUA_CPATH="$module_dir/?.so;${peer_dir:+$peer_dir/?.so;};"
