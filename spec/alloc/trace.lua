-- spec/alloc/trace.lua MODE [KMAX [NMAX]]: run by build/alloc-host.
--
-- A rotation with a `debug` function that, on its Nth trace line, makes
-- the host's allocator fail (alloc_fail_after(k, n): let k allocations
-- pass, then fail n) as its very last action, so that the failure lands in
-- the module's trace code that follows: building the next line inside
-- libcurl's debug callback, calling the debug function, the answer's
-- lines. Swept over every line of a normal exchange, k in 0..KMAX (8) and
-- n in 1..NMAX (3). One memory error costs two failures (Lua collects and
-- tries once more), so n = 1 is absorbed, n = 2 raises once, n = 3 raises
-- once and absorbs one more failure.
--
-- A case counts when its memory error was raised in the trace: the host
-- saw trace code, or libcurl, on the C stack at both failures (Lua code
-- inside a libcurl callback can only be the trace's; a case where no
-- trace function was seen there fails). Then, whatever libcurl was doing,
-- the module must:
--   - return normally: outcome "rotated" and result.api_key equal to the
--     key the emulator now holds (the new key is not lost);
--   - stop the trace: no line delivered after the failure;
--   - leave the handle usable: a second rotation (without debug) succeeds
--     from the key the first one returned (for a client: the key it adopted).
-- Cases whose failure landed outside the trace are only counted. The run
-- fails when a case fails, or when too few cases reached the trace (a
-- sweep that tests nothing).
--
-- MODE: client (client:rotate_key), module (slashid.rotate_key),
--       client_op (client:start_rotate_key + op:wait), module_op
--       (slashid.start_rotate_key + op:wait).
-- Prints one summary line "alloc MODE: ..." and a line per failed case
-- (the trigger line shown by its first word only). Never prints a key.

local C = require "alloc.common"
local H, slashid = C.H, C.slashid

local MODES = { client = true, module = true, client_op = true, module_op = true }
local mode = arg[1] or "client"
assert(MODES[mode], "unknown mode " .. tostring(mode))
local KMAX = tonumber(arg[2] or "8")
local NMAX = tonumber(arg[3] or "3")
local MIN_REACHED = 40        -- cases whose memory error was raised in the trace
local MIN_IN_CURL = 20        -- ... of them inside a libcurl callback
local MAX_REPORTED = 12

C.track()

local function op_results(op)
  assert(op:wait(30), "the op did not finish in 30 s")
  return op:results()
end

-- One rotation, the way MODE makes it. `state` carries a client between
-- the first rotation of a case and its second.
local function rotate(state, extra)
  if mode == "client" then
    return state.client:rotate_key(extra)
  elseif mode == "client_op" then
    return op_results(state.client:start_rotate_key(extra))
  end
  local o = C.opts(state.org, state.key, extra)
  if mode == "module" then return slashid.rotate_key(o) end
  return op_results(slashid.start_rotate_key(o))
end

local function new_state()
  local org, key = H.new_org()
  C.secret(key)
  local state = { org = org, key = key }
  if mode == "client" or mode == "client_op" then
    state.client = slashid.new(C.opts(org, key))
  end
  return state
end

-- The first word of a trace line, e.g. "> PUT", "* Connected", "< body:".
local function kind(line)
  if not line then return "?" end
  return (line:match("^(%S+%s+%S+)") or line):sub(1, 24)
end

-- A normal exchange: how many lines, and what they are.
local function dry_run()
  local state, lines = new_state(), {}
  local result, _, _, info = rotate(state, { debug = function(l) lines[#lines + 1] = kind(l) end })
  assert(result and info.outcome == "rotated", "a plain rotation failed: " .. tostring(info and info.outcome))
  C.secret(result.api_key)
  if state.client then state.client:close() end
  return lines
end

local reached, in_curl_cases, outside, not_armed, absorbed, failed = 0, 0, 0, 0, 0, 0
local outside_raised = 0   -- of `outside`: the call raised (outside this test's claim)
local reports = {}

local reasons, reason_order = {}, {}

local function fail(case, why)
  failed = failed + 1
  if #reports < MAX_REPORTED then
    reports[#reports + 1] = ("FAIL %s: %s"):format(case, why)
  end
  if not reasons[why] then reason_order[#reason_order + 1] = why end
  reasons[why] = (reasons[why] or 0) + 1
end

local function run_case(trigger, trigger_kind, k, n)
  local state = new_state()
  local count, late, leaks, armed = 0, 0, 0, false
  local key = state.key
  local function debug(line)
    -- No allocation here: numbers and a plain find.
    local _, in_trace, in_curl = alloc_stats()
    if in_trace >= 2 or in_curl >= 2 then late = late + 1 end
    if line:find(key, 1, true) then leaks = leaks + 1 end
    count = count + 1
    if count == trigger then
      armed = true
      return alloc_fail_after(k, n)   -- the last thing this function does
    end
  end

  collectgarbage("collect")
  collectgarbage("stop")   -- no finalizer may run (and absorb the failure) mid-case
  alloc_reset()
  local ok, result, errors, _, info = pcall(rotate, state, { debug = debug })
  local injected, in_trace, in_curl = alloc_stats()
  alloc_reset()
  collectgarbage("restart")

  local case = ("%s line %d (%s) k=%d n=%d"):format(mode, trigger, trigger_kind, k, n)
  if leaks > 0 then fail(case, "the trace quoted the API key") end
  if not armed or injected == 0 then
    -- No failure was injected: the call must simply work (a handle left
    -- busy by an earlier case shows here).
    not_armed = not_armed + 1
    if not ok then fail(case, "the call raised (no failure injected): " .. tostring(result)) end
    if state.client then pcall(state.client.close, state.client) end
    return
  end
  -- Lua code inside a libcurl callback is trace code: a memory error
  -- raised there counts even if no trace function was seen on the stack.
  local raised_in_trace = n >= 2 and (in_trace >= 2 or in_curl >= 2)
  if n >= 2 and not raised_in_trace then
    outside = outside + 1   -- the memory error was raised elsewhere: not this test's
    if not ok then outside_raised = outside_raised + 1 end
    if state.client then pcall(state.client.close, state.client) end
    return
  end
  if n < 2 then absorbed = absorbed + 1 else reached = reached + 1 end
  if raised_in_trace and in_curl >= 2 then in_curl_cases = in_curl_cases + 1 end
  if raised_in_trace and in_trace < 2 then
    fail(case, "a memory error raised inside a libcurl callback outside the trace code")
  end

  if not ok then
    fail(case, "the call raised: " .. tostring(result))
  else
    local now = H.org(state.org).api_key
    C.secret(now)
    if not (info and info.outcome == "rotated") then
      local first = errors and errors[1]
      fail(case, ("outcome %s (%s)"):format(tostring(info and info.outcome),
                                              tostring(first and first.message)))
    elseif not (result and result.api_key == now) then
      fail(case, "the new key was not returned")
    else
      C.secret(result.api_key)
      if raised_in_trace and late > 0 then
        fail(case, ("the trace went on after the memory error (%d more lines)"):format(late))
      end
      -- The same client (or the module's shared handle) once more, from
      -- the key just returned.
      state.key = result.api_key
      local ok2, r2, e2, _, i2 = pcall(rotate, state, nil)
      local now2 = H.org(state.org).api_key
      C.secret(now2)
      if not ok2 then
        fail(case, "the next rotation raised: " .. tostring(r2))
      elseif not (r2 and i2.outcome == "rotated" and r2.api_key == now2) then
        local first = e2 and e2[1]
        fail(case, ("the next rotation: outcome %s (%s)"):format(tostring(i2 and i2.outcome),
                                                                 tostring(first and first.message)))
      else
        C.secret(r2.api_key)
      end
    end
  end
  if state.client then pcall(state.client.close, state.client) end
end

local kinds = dry_run()
local started = os.time()
for trigger = 1, #kinds do
  for n = 1, NMAX do
    for k = 0, KMAX do
      run_case(trigger, kinds[trigger], k, n)
    end
  end
end

for _, r in ipairs(reports) do C.say("%s", r) end
if failed > #reports then C.say("... and %d more failed cases", failed - #reports) end
for _, why in ipairs(reason_order) do C.say("  %5d x %s", reasons[why], why) end
C.say("alloc %s: %d trace lines swept, k 0..%d, n 1..%d: memory error raised in the trace " ..
      "in %d cases (%d inside a libcurl callback), absorbed in %d, raised elsewhere in %d " ..
      "(the call raised in %d of them), not reached in %d; %d failed (%d s)",
      mode, #kinds, KMAX, NMAX, reached, in_curl_cases, absorbed, outside, outside_raised,
      not_armed, failed,
      os.time() - started)
if failed > 0 then
  C.say("alloc %s: FAILED (%d cases)", mode, failed)
  os.exit(1)
end
if reached < MIN_REACHED or in_curl_cases < MIN_IN_CURL then
  C.say("alloc %s: FAILED: the sweep reached the trace in only %d cases (%d in a libcurl " ..
        "callback): it proves nothing", mode, reached, in_curl_cases)
  os.exit(1)
end
C.say("alloc %s: ok", mode)
