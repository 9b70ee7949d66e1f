-- A memory error in multi:perform after it marked a handle
-- finished (the answer, with a new key, arrived) but before it detached
-- it; the host polls again only once the attempt's request_timeout has
-- passed. The finished code must not be turned into a timeout.
-- arg[1]: KMAX, arg[2]: mode op|batch, arg[3]: errors in a row
local C = require "alloc.common"
local H, slashid = C.H, C.slashid
local core = require "slashid.core"
require "slashid.op"
require "slashid.batch"
local KMAX = tonumber(arg[1] or "200")
local MODE = arg[2] or "op"
local ERRORS = tonumber(arg[3] or "1")
local RT = 0.3

local cases, raised, lost, false_timeout = 0, 0, 0, 0
for k = tonumber(os.getenv("FROM") or "0"), KMAX do
  local org, key = H.new_org()
  local before = H.org(org).rotations
  local got, ok, err
  if MODE == "op" then
    local op = slashid.start_rotate_key(H.opts(org, key, { retries = 0, request_timeout = RT }))
    -- the request goes out; wait until the server has rotated and answered
    local t0 = core.now()
    while H.org(org).rotations == before and core.now() - t0 < 3 do
      op:poll(); core.sleep(0.005)
    end
    core.sleep(0.05)
    alloc_reset()
    alloc_fail_after(k, 2 * ERRORS)
    ok, err = pcall(op.poll, op)
    alloc_reset()
    if not ok then
      raised = raised + 1
      if os.getenv("DBG") then C.say("k=%d raised %s done=%s", k, tostring(err):sub(1,60), tostring(op and true)) end
      core.sleep(RT + 0.1)     -- the host comes back late
      for _ = 1, 50 do
        local pok, done = pcall(op.poll, op)
        if pok and done then break end
        core.sleep(0.01)
      end
    else
      op:wait(3)
    end
    local r, e, _, info = op:results()
    if os.getenv("DBG") and not ok then C.say("  -> %s %s", info.outcome, e[1] and e[1].message:sub(1,60) or "") end
    got = r and r.api_key
    if got and info.outcome == "rotated" then
      for _, x in ipairs(e) do
        if tostring(x.message):find("timed out", 1, true) then
          false_timeout = false_timeout + 1
          C.say("FAIL k=%d: a complete answer (rotated, key in hand) is reported as timed out", k)
        end
      end
    end
    if H.org(org).rotations > before and got ~= H.org(org).api_key then
      lost = lost + 1
      C.say("FAIL k=%d: the server rotated, the op says %s (%s)", k, info.outcome,
            e[1] and e[1].message:sub(1, 80) or "")
    end
  end
  cases = cases + 1
end
C.say("alloc late_poll %s x%d: %d cases, %d raised, %d keys lost, %d false timeouts", MODE, ERRORS, cases, raised, lost, false_timeout)
if lost == 0 and false_timeout == 0 then C.say("alloc late_poll: ok") end
