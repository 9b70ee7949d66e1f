-- Run by build/alloc-host (spec 22). A client's debug function that, while
-- the client's own call is under way, makes another call on the same
-- client for another organization (with another save_to file). A memory
-- error at allocation k of the outer call may leave the outer answer kept
-- on the handle, to be built again; the nested call must never take that
-- answer for its own: organization A's new key must never be returned by
-- the nested call nor written to B's file, and the outer call, once A was
-- rotated, must hand A's key back. Prints one summary line, then "ok" or a
-- line per failure (never a key).
local C = require "alloc.common"
local H, slashid = C.H, C.slashid
local KMAX = tonumber(arg[1] or "300")

local cases, crossed, lost = 0, 0, 0
for k = 0, KMAX do
  local org_a, key_a = H.new_org()
  local org_b, key_b = H.new_org()
  local file_b = H.tmpname("nested-b") .. ".key"
  local nested = { org_id = org_b, api_key = key_b, save_to = file_b, retries = 0 }
  local c
  -- the nested call is made from the lines of the answer's trace ("< "),
  -- which run while the answer is built (again, after a memory error)
  local armed, got = 0, {}
  c = slashid.new(H.opts(org_a, key_a, {
    retries = 0,
    debug = function(line)
      if armed > 0 and type(line) == "string" and line:sub(1, 2) == "< " then
        armed = armed - 1
        local ok, r = pcall(c.rotate_key, c, nested)
        if ok and r then got[#got + 1] = r.api_key end
      end
    end,
  }))
  local before_a = H.org(org_a).rotations
  armed = 4
  alloc_reset()
  alloc_fail_after(k, 2)
  local ok, result = pcall(c.rotate_key, c)
  alloc_reset()
  armed = 0
  cases = cases + 1
  local a = H.org(org_a)
  local f = io.open(file_b, "rb")
  local in_b = f and f:read("*a") or ""
  if f then f:close() end
  os.remove(file_b)
  if in_b:find(a.api_key, 1, true) then
    crossed = crossed + 1
    C.say("FAIL k=%d: organization A's new key was written to B's file", k)
  end
  for _, key in ipairs(got) do
    if key == a.api_key then
      crossed = crossed + 1
      C.say("FAIL k=%d: the nested call returned organization A's new key", k)
    end
  end
  if a.rotations > before_a and not (ok and result and result.api_key == a.api_key) then
    lost = lost + 1
    C.say("FAIL k=%d: A was rotated, the outer call did not hand its key back", k)
  end
  c:close()
end
C.say("alloc nested_debug: %d cases, %d crossed, %d keys lost", cases, crossed, lost)
if crossed == 0 and lost == 0 then C.say("alloc nested_debug: ok") end
