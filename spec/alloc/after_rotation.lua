-- Run by build/alloc-host (spec 22). A memory error at every allocation k
-- of a client:rotate_key that sets its request up afresh (a check_key in
-- between made the handle set up another table), with verify on every
-- other k: once the server has rotated, the call must hand the new key
-- back (never raise, never lose it), and the next call must work with
-- the key the client then holds. Mode "op": the same through
-- client:start_rotate_key, polled until done (a poll that raises is
-- polled again, as a host's loop would). Mode "batch": client:rotate_keys
-- over three organizations; every key the server issued must be in the
-- results (or, should the batch raise, have reached on_result). Mode
-- "lean": the same through an iterator with keep_results = false, where
-- on_result is the only way out for a key. Verify on even k, save_to on
-- odd k. The
-- third argument is how many memory errors come in a row (default 1): an
-- allocator that keeps failing for a while must not lose a key either.
-- Prints one summary line, then "ok" or a line per failure (never a key).
local C = require "alloc.common"
local H, slashid = C.H, C.slashid
local KMAX = tonumber(arg[1] or "120")
local MODE = arg[2] or "blocking"
local ERRORS = tonumber(arg[3] or "1")
-- loaded lazily by the library: loaded here, before any failure, so that
-- the sweep's allocation points are the rotation's, not the loading's
require "slashid.op"
require "slashid.batch"

-- The op's rotate_key: poll until done; a poll raising is polled again
-- (at most 20 times), then the results. An op that never finishes (10 s)
-- raises: its key, if the server issued one, is left behind.
local core = require "slashid.core"
local function op_rotate(c)
  local op = c:start_rotate_key()
  local errors, deadline = 0, core.now() + 10
  while true do
    local ok, done = pcall(op.poll, op)
    if ok and done then break end
    if not ok then
      errors = errors + 1
      if errors > 20 then error(done, 0) end
    end
    if core.now() > deadline then error("the op never finished", 0) end
    core.sleep(0.001)
  end
  return op:results()
end
-- The batch's rotate_key: three organizations, the first being the
-- client's own; fills seen (index -> the key seen for it, in the results
-- or through on_result).
local function batch_rotate(c, list, seen, opts)
  local ok, results = pcall(c.rotate_keys, c, list, opts)
  alloc_reset()
  if ok and opts.keep_results ~= false then
    for i, item in ipairs(results) do
      if item.result then seen[i] = item.result.api_key end
    end
  end
  -- (on_result itself may fail, out of memory: the items it could not take
  -- are handed back in `undelivered`)
  if ok and results.undelivered then
    for i, item in pairs(results.undelivered) do
      if item.result then seen[i] = item.result.api_key end
    end
  end
  return ok, results, seen
end

local cases, raised, lost, bad = 0, 0, 0, 0
for k = tonumber(os.getenv("AFTER_ROTATION_FROM") or "0"), KMAX do
  if os.getenv("AFTER_ROTATION_DEBUG") then C.say("k=%d", k) CASE_T0 = os.time() end
  local org, key = H.new_org()
  -- verify on even k, save_to on odd k (a memory error while saving must
  -- not keep the client from adopting its new key)
  -- (in a batch, each item its own file: one file for two items is refused)
  local save = (k % 2 == 1) and (H.tmp .. "/after_rotation.key") or nil
  local batch = MODE == "batch" or MODE == "lean"
  local c = slashid.new(H.opts(org, key, { retries = 0, verify = (k % 2 == 0),
                                            save_to = not batch and save or nil }))
  H.faults(org, { { status = 400, message = "no" } })
  c:rotate_key()                 -- the client's request, set up and kept
  c:check_key()                  -- the handle now holds another table
  local before = H.org(org).rotations
  -- (everything the batch is given is made before memory fails)
  local others, list, seen, bopts = {}, { { save_to = save and save .. ".1" } }, {}, nil
  if batch then
    for i = 1, 2 do
      local o, ok_ = H.new_org()
      others[i] = { org = o, key = ok_, before = H.org(o).rotations }
      list[i + 1] = { org_id = o, api_key = ok_, save_to = save and save .. "." .. (i + 1) }
    end
    bopts = { concurrency = 3,
              on_result = function(i, item) if item.result then seen[i] = item.result.api_key end end }
    if MODE == "lean" then
      -- an iterator, nothing kept: on_result is the only place a key goes;
      -- two at a time, so that the third item starts while the first two
      -- are handed over (on_progress too), on a handle they let go of
      local items, n = list, 0
      list = function() n = n + 1 return items[n] end
      bopts.keep_results = false
      bopts.concurrency = 2
      bopts.on_progress = function(done, total, i, outcome) return outcome ~= nil end
    end
  end
  alloc_reset()
  alloc_fail_after(k, 2 * ERRORS)
  local ok, result
  if MODE == "batch" or MODE == "lean" then
    ok, result = batch_rotate(c, list, seen, bopts)
    if ok then result = MODE == "batch" and result[1] and result[1].result end
    if not result and seen[1] then ok, result = true, { api_key = seen[1] } end
  else
    ok, result = pcall(MODE == "op" and op_rotate or c.rotate_key, c)
  end
  alloc_reset()
  cases = cases + 1
  for i, o in ipairs(others) do
    local s = H.org(o.org)
    if s.rotations > o.before and seen[i + 1] ~= s.api_key then
      lost = lost + 1
      C.say("FAIL k=%d: item %d: the server rotated, the batch did not hand its key back",
            k, i + 1)
    end
  end
  local server = H.org(org)
  if not ok then
    raised = raised + 1
    if os.getenv("AFTER_ROTATION_DEBUG") then C.say("k=%d raised: %s", k, tostring(result):sub(1, 120)) end
    if server.rotations > before then
      lost = lost + 1
      C.say("FAIL k=%d: raised after the server rotated: the key is lost", k)
    end
  elseif server.rotations > before and not (result and result.api_key == server.api_key) then
    lost = lost + 1
    C.say("FAIL k=%d: the server rotated, the call did not hand its key back", k)
  end
  local r2, e2, _, i2 = c:rotate_key()
  if not r2 or H.org(org).api_key ~= r2.api_key then
    bad = bad + 1
    C.say("FAIL k=%d: the next call: %s %s", k, i2.outcome, e2[1] and e2[1].message or "")
  end
  c:close()
end
C.say("alloc after_rotation %s x%d: %d cases, %d raised, %d keys lost, " ..
      "%d next calls failed", MODE, ERRORS, cases, raised, lost, bad)
if lost == 0 and bad == 0 then C.say("alloc after_rotation %s: ok", MODE) end
