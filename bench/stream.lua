-- bench/stream.lua URL [N] [C]: peak memory and time per organization for
-- N organizations (default 100,000) through rotate_keys at concurrency C
-- (default 8), against a fast local server (bench/run.sh's nginx answering
-- a new key per call at URL/organizations/api-keys), in three ways, each in
-- a process of its own so that each peak is its own:
--   array   today's use: an array of N option tables, outcomes collected
--   array_nokeep  the same array, keep_results = false (on_result counts)
--   stream  an iterator making each item as it is pulled,
--           keep_results = false (on_result counts)
-- Peak RSS is VmHWM from /proc/self/status (Linux). Prints a table, then
-- one name=value per figure: stream_<way>_peak_rss_kb, _us_per_org, ...
-- Figures, not pass/fail.
local url, n, c, way = arg[1], tonumber(arg[2] or 100000), tonumber(arg[3] or 8), arg[4]
assert(url, "usage: lua bench/stream.lua URL [N] [C]")

local function status_kb(field)
  for line in io.lines("/proc/self/status") do
    local kb = line:match("^" .. field .. ":%s+(%d+)")
    if kb then return tonumber(kb) end
  end
end

if way then
  -- One way, in this process: prints name=value lines for the parent.
  local slashid = require "slashid"
  local core = require "slashid.core"
  local base_kb = status_kb("VmRSS")        -- interpreter + module loaded
  local opts = { base_url = url, concurrency = c }
  local rotated = 0
  local list
  if way ~= "stream" then
    list = {}
    for i = 1, n do list[i] = { org_id = "bench-org-" .. i, api_key = "bench-key" } end
  else
    local i = 0
    list = function()
      if i == n then return nil end
      i = i + 1
      return { org_id = "bench-org-" .. i, api_key = "bench-key" }
    end
  end
  if way ~= "array" then
    opts.keep_results = false
    opts.on_result = function(_, item)
      if item.info.outcome == "rotated" then rotated = rotated + 1 end
    end
  end
  local t0 = core.now()
  local out = slashid.rotate_keys(list, opts)
  local elapsed = core.now() - t0
  if way == "array" then
    for i = 1, n do
      if out[i].info.outcome == "rotated" then rotated = rotated + 1 end
    end
  else
    assert(out.rotated == rotated, "the summary disagrees with on_result")
  end
  assert(rotated == n, ("%d of %d rotated"):format(rotated, n))
  print(("seconds=%.4f"):format(elapsed))
  print(("us_per_org=%.2f"):format(elapsed / n * 1e6))
  print(("peak_rss_kb=%d"):format(status_kb("VmHWM")))
  print(("base_rss_kb=%d"):format(base_kb))
  print(("lua_kb=%.0f"):format(collectgarbage("count")))
  return
end

local lua, script = arg[-1] or "lua", arg[0] or "bench/stream.lua"
local function run(w)
  local cmd = ("%s %q %q %d %d %s"):format(lua, script, url, n, c, w)
  local p = assert(io.popen(cmd))
  local t = {}
  for line in p:lines() do
    local k, v = line:match("^([%w_]+)=(.*)$")
    if k then t[k] = tonumber(v) end
  end
  assert(p:close(), w .. ": the run failed")
  return t
end

local ways = { "array", "array_nokeep", "stream" }
local figures = {}
for _, w in ipairs(ways) do figures[w] = run(w) end

print()
print(("rotate_keys of %d organizations at concurrency %d, fast local server"):format(n, c))
print(("%-44s %12s %12s %10s"):format("way (each in a process of its own)", "peak RSS", "per org", "total"))
local labels = {
  array = "array, outcomes collected (today)",
  array_nokeep = "array, keep_results = false",
  stream = "iterator, keep_results = false",
}
for _, w in ipairs(ways) do
  local f = figures[w]
  print(("%-44s %9.1f MB %9.2f us %8.2f s"):format(labels[w], f.peak_rss_kb / 1024,
                                                   f.us_per_org, f.seconds))
end
print(("%-44s %9.1f MB"):format("(interpreter + module, before the batch)",
                                figures.stream.base_rss_kb / 1024))
print()
for _, w in ipairs(ways) do
  local f = figures[w]
  for _, k in ipairs({ "peak_rss_kb", "us_per_org", "seconds", "base_rss_kb" }) do
    print(("stream_%s_%s=%s"):format(w, k, f[k]))
  end
end
