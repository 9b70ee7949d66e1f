-- Run by build/alloc-host (spec 22). Memory runs short the moment a
-- batch's last item has been handed to on_result, while the batch still
-- has its end to do: a note to add (on_progress raised once: "progress";
-- on_result raised once: "result") or the items never started to report
-- (on_progress asked to stop: "stop"). Every key is in the outcomes by
-- then, and the outcomes are what the caller reads: the batch must return
-- them, whatever its notes. Arguments: how many memory errors in a row
-- (1..), then the modes to run (default all three). Prints a line per
-- mode, then "ok" or a line per failure (never a key).
local C = require "alloc.common"
local H, slashid = C.H, C.slashid
require "slashid.batch"
local ERRORS = tonumber(arg[1] or "1")
local MODES = { select(2, table.unpack(arg)) }
if #MODES == 0 then MODES = { "progress", "result", "stop" } end

local N = 3
local failures = 0
for _, mode in ipairs(MODES) do
  for _ = 1, 4 do                 -- a few runs: the moment lands differently
    local orgs, list = {}, {}
    for i = 1, N do
      local org, key = H.new_org()
      orgs[i] = org
      list[i] = H.opts(org, key, { retries = 0 })
    end
    if mode == "stop" then
      local org, key = H.new_org()
      list[N + 1] = H.opts(org, key, { retries = 0 })
    end
    local handed, raised_once = 0, false
    local opts = {
      concurrency = N,
      on_progress = function(done)
        if mode == "progress" and not raised_once then
          raised_once = true
          error("the display broke", 0)
        end
        if mode == "stop" and done == N then return false end
      end,
      on_result = function()
        handed = handed + 1
        if mode == "result" and handed == 1 then error("the log broke", 0) end
        if handed == N then alloc_fail(2 * ERRORS) end
      end,
    }
    local ok, ret = pcall(slashid.rotate_keys, list, opts)
    alloc_reset()
    local rotated, returned = 0, 0
    for i = 1, N do
      local server = H.org(orgs[i])
      if server.rotations > 0 then rotated = rotated + 1 end
      if ok and ret[i] and ret[i].result and ret[i].result.api_key == server.api_key then
        returned = returned + 1
      end
    end
    C.say("alloc batch_end %s x%d: returned=%s, rotated %d, keys in the outcomes %d",
          mode, ERRORS, tostring(ok), rotated, returned)
    if rotated ~= returned then
      failures = failures + 1
      C.say("FAIL %s: %d keys lost (%s)", mode, rotated - returned,
            ok and "not in the outcomes" or "the batch raised: " .. tostring(ret))
    end
  end
end
if failures == 0 then C.say("alloc batch_end: ok") end
