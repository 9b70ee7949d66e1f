-- bench/memory.lua URL: Lua memory and RSS after 1,000 and after 100,000
-- client:rotate_key calls (N overrides the second figure).
local slashid = require "slashid"
local n = tonumber(arg[2]) or 100000
local client = slashid.new{ org_id = "bench-org", api_key = "bench-key", base_url = arg[1] }
local per_call = { api_key = "bench-key" }
local function rss_kb()
  for line in io.lines("/proc/self/status") do
    local kb = line:match("^VmRSS:%s+(%d+)")
    if kb then return tonumber(kb) end
  end
end
local function measure(label)
  collectgarbage("collect"); collectgarbage("collect")
  print(("%s_lua_kb=%.1f"):format(label, collectgarbage("count")))
  print(("%s_rss_kb=%d"):format(label, rss_kb()))
end
for i = 1, n do
  local result, errors = client:rotate_key(per_call)
  if not result then error(errors[1].message) end
  if i == 1000 then measure("after_1000") end
end
measure(("after_%d"):format(n))
