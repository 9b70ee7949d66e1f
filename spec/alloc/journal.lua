-- spec/alloc/journal.lua [ERRORS [MODE]]: a memory error at every
-- allocation k of a three-item batch written ahead to a journal
-- (rotate_keys' `journal = PATH`), ERRORS (1) failures in a row; MODE
-- "plain" (an array, results kept) or "lean" (an iterator,
-- keep_results = false). After each run: every organization the emulator
-- rotated has its key returned to the caller (results, on_result,
-- undelivered) or in the journal as rotated; and the journal is not left
-- locked (a caller that retries at once must not be told "held by another
-- process"). Ends once 30 runs in a row saw no failure injected.
local C = require "alloc.common"
local H, slashid = C.H, C.slashid
local core = require "slashid.core"
require "slashid.batch"
require "slashid.journal"

local ERRORS = tonumber(arg[1] or "1")
local MODE = arg[2] or "plain"
local N = 3
local dir = (os.getenv("SLASHID_SPEC_TMP") or "/tmp") .. "/alloc-journal-" .. MODE .. ERRORS
os.execute("mkdir -p " .. dir .. " && chmod 0700 " .. dir)

local cases, raised, lost, locked, misses = 0, 0, 0, 0, 0
for k = 0, 5000 do
  local path = ("%s/j%d.journal"):format(dir, k)
  local orgs, list, seen = {}, {}, {}
  for i = 1, N do
    local org, key = H.new_org()
    orgs[i] = org
    list[i] = H.opts(org, key, { retries = 0 })
  end
  local opts = { concurrency = N, journal = path,
                 on_result = function(i, item) if item.result then seen[i] = item.result.api_key end end }
  local input = list
  if MODE == "lean" then
    local n = 0
    input = function() n = n + 1 return list[n] end
    opts.keep_results, opts.concurrency = false, 2
  end
  alloc_reset()
  alloc_fail_after(k, 2 * ERRORS)
  local ok, ret = pcall(slashid.rotate_keys, input, opts)
  local injected = alloc_stats()
  alloc_reset()
  cases = cases + 1
  if not ok then raised = raised + 1 end
  if ok and type(ret) == "table" then
    for i = 1, N do
      local item = ret[i] or (ret.undelivered and ret.undelivered[i])
      if item and item.result then seen[i] = seen[i] or item.result.api_key end
    end
  end
  local by_org = {}
  for _, e in ipairs(slashid.read_journal(path) or {}) do by_org[e.org_id] = e end
  for i = 1, N do
    local state = H.org(orgs[i])
    local e = by_org[orgs[i]]
    if state.rotations > 0 and seen[i] ~= state.api_key and
       not (e and e.state == "rotated" and e.api_key == state.api_key) then
      lost = lost + 1
      C.say("FAIL k=%d item %d: rotated, its key neither returned nor journaled", k, i)
    end
  end
  -- no collection first: the journal must be closed by the call itself
  local file, why = core.journal_open(path, "resume")
  if file then
    file:close()
  elseif why and why:find("held by another process", 1, true) then
    locked = locked + 1
    C.say("FAIL k=%d: the journal is still locked once rotate_keys %s", k,
          ok and "returned" or "raised")
  end
  collectgarbage()
  if injected == 0 then
    misses = misses + 1
    if misses >= 30 then break end
  else
    misses = 0
  end
end
C.say("alloc journal %s x%d: %d cases, %d raised, %d keys lost, %d journals left locked",
      MODE, ERRORS, cases, raised, lost, locked)
if lost == 0 and locked == 0 then C.say("alloc journal: ok") end
