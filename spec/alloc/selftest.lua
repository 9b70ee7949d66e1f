-- spec/alloc/selftest.lua: run by build/alloc-host. Shows that the host's
-- failing allocator and its classifier do what spec/alloc/trace.lua relies
-- on, so that a sweep that passes has really injected failures where it
-- says. Passes on any version of the module (a memory error raised inside
-- the debug function itself was always caught). Prints "alloc selftest: ok".

local C = require "alloc.common"
local H, slashid = C.H, C.slashid

local function check(cond, what)
  if not cond then
    C.say("alloc selftest: FAILED: %s", what)
    os.exit(1)
  end
end

local so, names = C.track()
check(so:find("slashid/core.so", 1, true), "the module is not a shared object")

-- 1. One failure is absorbed: Lua collects and tries again.
local function grow(n) return ("x"):rep(n) end
grow(10)   -- warm: the call itself allocates nothing later
alloc_reset()
alloc_fail(1)
local ok = pcall(grow, 5000)
local injected, in_trace, in_curl, pending = alloc_stats()
check(ok and injected == 1 and pending == 0, "alloc_fail(1) was not absorbed by Lua's retry")

-- 2. Two failures raise a memory error; plain Lua code is neither trace
-- nor libcurl.
alloc_reset()
alloc_fail(2)
local err
ok, err = pcall(grow, 6000)
injected, in_trace, in_curl, pending = alloc_stats()
check(not ok and tostring(err):find("not enough memory", 1, true),
      "alloc_fail(2) did not raise a memory error")
check(injected == 2 and in_trace == 0 and in_curl == 0 and pending == 0,
      ("plain Lua classified wrongly: %d injected, %d in trace, %d in libcurl")
        :format(injected, in_trace, in_curl))

-- 3. alloc_fail_after(k, n) lets k allocations pass: an empty table is one.
local function tables(n)
  local t
  for _ = 1, n do t = {} end
  return t
end
tables(5)
alloc_reset()
alloc_fail_after(3, 2)
ok = pcall(tables, 3)
check(ok, "alloc_fail_after(3, 2) failed before the 4th allocation")
ok = pcall(tables, 1)
check(not ok, "alloc_fail_after(3, 2) did not fail the 4th allocation")
alloc_reset()

-- 4. A memory error raised by the debug function's own code, on the first
-- line (inside libcurl's debug callback): classified as trace and libcurl,
-- and the trace stops while the rotation goes on.
local org, key = H.new_org()
C.secret(key)
local lines, after = 0, 0
local function debug(line)
  lines = lines + 1
  if lines == 1 then
    alloc_fail(2)
    local _ = line .. "!"   -- a new string: raises here
  else
    after = after + 1
  end
end
collectgarbage("collect")
collectgarbage("stop")
alloc_reset()
local result, _, _, info = slashid.rotate_key(C.opts(org, key, { debug = debug }))
injected, in_trace, in_curl, pending = alloc_stats()
alloc_reset()
collectgarbage("restart")
C.secret(result and result.api_key)
check(injected == 2 and in_trace == 2 and in_curl == 2,
      ("a failure in the debug function: %d injected, %d in trace, %d in libcurl")
        :format(injected, in_trace, in_curl))
check(result and info.outcome == "rotated" and result.api_key == H.org(org).api_key,
      "a raising debug function lost the rotation")
check(after == 0, "the trace went on after the debug function raised")

C.say("alloc selftest: ok (%s; trace code: %s)", so, table.concat(names, " "))
