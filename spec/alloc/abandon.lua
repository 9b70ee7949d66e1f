-- A batch interrupted (two signals, as slashid-rotate's Ctrl-C
-- twice) while its items' keys are issued and their verify checks are in
-- flight, memory failing from allocation k on as it abandons: every key
-- the server issued must reach on_result before the error passes.
-- arg[1]: KMAX, arg[2]: errors in a row
local C = require "alloc.common"
local H, slashid = C.H, C.slashid
local core = require "slashid.core"
require "slashid.batch"
local KMAX, ERRORS = tonumber(arg[1] or "200"), tonumber(arg[2] or "1")
local pid = io.popen("echo $PPID"):read("*l")
local cases, lost, raised_other = 0, 0, 0
for k = tonumber(os.getenv("FROM") or "0"), KMAX do
  local orgs, list = {}, {}
  for i = 1, 3 do
    local o, key = H.new_org()
    orgs[i] = { org = o, before = H.org(o).rotations }
    H.faults(o, { { delay = 0.001 }, { delay = 2 } })   -- rotation answered, verify stalls
    list[i] = H.opts(o, key, { verify = true, retries = 0 })
  end
  local seen, armed = {}, false
  local opts = { concurrency = 3, keep_results = false,
    on_result = function(i, item) if item.result then seen[i] = item.result.api_key end end }
  local hooks = { wait_limit = function()
    if armed then return 0.01 end
    for i = 1, 3 do
      if #H.org(orgs[i].org).requests < 2 then return 0.01 end
    end
    armed = true
    io.popen("kill -INT " .. pid .. "; sleep 0.05; kill -INT " .. pid):close()
    alloc_reset()
    alloc_fail_after(k, 2 * ERRORS)
    return 0.01
  end }
  core.catch_signals()
  local ok, err = pcall(slashid._rotate_keys_hooked, list, opts, hooks)
  alloc_reset()
  core.release_signals()
  cases = cases + 1
  if ok or err ~= "slashid: interrupted" and not tostring(err):find("interrupt") then
    raised_other = raised_other + 1
  end
  for i = 1, 3 do
    local s = H.org(orgs[i].org)
    if s.rotations > orgs[i].before and seen[i] ~= s.api_key then
      lost = lost + 1
      C.say("FAIL k=%d: item %d: issued, never reached on_result (batch %s: %s)", k, i,
            ok and "returned" or "raised", tostring(err):sub(1, 60))
    end
  end
end
C.say("alloc abandon x%d: %d cases, %d not interrupted, %d keys lost", ERRORS, cases,
      raised_other, lost)
if lost == 0 then C.say("alloc abandon: ok") end
