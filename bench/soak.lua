-- bench/soak.lua: the soak (issue 3, part 7). SOAK_N rotations (default
-- 100,000) by one client against the local emulator, the client adopting
-- each new key, with Lua memory (collectgarbage "count", after a full
-- collection) and RSS (VmRSS of /proc/self/status) reported every SOAK_N/10
-- calls, then a verdict.
--
--   make soak                  100,000 rotations (a few minutes)
--   make soak SOAK_N=3000      the short one
--   sh spec/with-emulator.sh lua5.4 bench/soak.lua   (LUA_PATH/LUA_CPATH set)
--
-- Output, one line per measure, then the verdict:
--   soak calls=0 lua_kb=... rss_kb=... seconds=... rate=...
--   ...
--   soak verdict=ok calls=N start_lua_kb=... end_lua_kb=... lua_growth_kb=...
--        start_rss_kb=... end_rss_kb=... rss_growth_kb=... seconds=... rate=...
--
-- "start" is the first measure after warm-up (SOAK_N/10 calls: connection,
-- allocator pools and interned strings settle), "end" the last. The
-- verdict fails (exit 1) when a rotation fails or memory keeps growing:
-- Lua heap growth above SOAK_MAX_LUA_KB (64) or RSS growth above
-- SOAK_MAX_RSS_KB (1024) between start and end. Keys are never printed.
local slashid = require "slashid"
local cjson = require "cjson"

local N = tonumber(os.getenv("SOAK_N") or "") or tonumber(arg and arg[1] or "") or 100000
local MAX_LUA_KB = tonumber(os.getenv("SOAK_MAX_LUA_KB") or "") or 64
local MAX_RSS_KB = tonumber(os.getenv("SOAK_MAX_RSS_KB") or "") or 1024
N = math.floor(N)
assert(N >= 10, "SOAK_N must be at least 10")

local info_path = os.getenv("SLASHID_EMULATOR_INFO")
if not info_path then
  io.stderr:write("bench/soak.lua: SLASHID_EMULATOR_INFO is not set " ..
                  "(run it with `make soak` or spec/with-emulator.sh)\n")
  os.exit(64)
end
local f = assert(io.open(info_path, "rb"))
local emulator = cjson.decode(f:read("*a"))
f:close()

local function rss_kb()
  for line in io.lines("/proc/self/status") do
    local kb = line:match("^VmRSS:%s+(%d+)")
    if kb then return tonumber(kb) end
  end
  return 0
end

-- A monotonic-enough clock without the C core's private API: os.time is
-- whole seconds, os.clock is CPU time; LuaSocket may be absent here.
local ok_socket, socket = pcall(require, "socket")
local now = ok_socket and socket.gettime or os.time

local function measure()
  collectgarbage("collect")
  collectgarbage("collect")
  return collectgarbage("count"), rss_kb()
end

local client = slashid.new{
  org_id = emulator.org_id, api_key = emulator.api_key, base_url = emulator.http_url,
  retries = 0, request_timeout = 10,
}

local step = math.max(1, math.floor(N / 10))
local started = now()
local function report(calls, lua_kb, rss)
  local seconds = now() - started
  io.write(("soak calls=%d lua_kb=%.1f rss_kb=%d seconds=%.1f rate=%.0f\n"):format(
    calls, lua_kb, rss, seconds, seconds > 0 and calls / seconds or 0))
  io.flush()
end

local lua0, rss0 = measure()
report(0, lua0, rss0)
local start_lua, start_rss
local failures, consecutive = 0, 0
local per_call = {}          -- reused: the per-call options (none)

for i = 1, N do
  local result, errors, _, info = client:rotate_key(per_call)
  if not result then
    failures = failures + 1
    consecutive = consecutive + 1
    io.stderr:write(("soak: call %d: %s: %s\n"):format(i, tostring(info and info.outcome),
      tostring(errors and errors[1] and errors[1].message)))
    if consecutive >= 10 then
      io.stderr:write("soak: 10 failures in a row, stopping\n")
      N = i
      break
    end
  else
    consecutive = 0
  end
  if i % step == 0 then
    local lua_kb, rss = measure()
    report(i, lua_kb, rss)
    if i == step then start_lua, start_rss = lua_kb, rss end
  end
end
local end_lua, end_rss = measure()
local seconds = now() - started
client:close()
start_lua, start_rss = start_lua or lua0, start_rss or rss0
local lua_growth, rss_growth = end_lua - start_lua, end_rss - start_rss
local good = failures == 0 and lua_growth <= MAX_LUA_KB and rss_growth <= MAX_RSS_KB
io.write(("soak verdict=%s calls=%d failures=%d start_lua_kb=%.1f end_lua_kb=%.1f " ..
          "lua_growth_kb=%.1f start_rss_kb=%d end_rss_kb=%d rss_growth_kb=%d " ..
          "bytes_per_call=%.2f seconds=%.1f rate=%.0f\n"):format(
  good and "ok" or "FAILED", N, failures, start_lua, end_lua, lua_growth, start_rss, end_rss,
  rss_growth, N > step and rss_growth * 1024 / (N - step) or 0, seconds,
  seconds > 0 and N / seconds or 0))
if not good then
  io.stderr:write(("soak: FAILED (%d failures; limits: Lua growth %d KB, RSS growth %d KB)\n")
    :format(failures, MAX_LUA_KB, MAX_RSS_KB))
  os.exit(1)
end
