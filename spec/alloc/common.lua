-- spec/alloc/common.lua: shared by the scripts that build/alloc-host runs
-- (spec/alloc/host.c). Loads the real module, points the host's failure
-- classifier at the module's trace code, and gives small utilities.
--
-- The host classifies each failure it injects by the C stack at that
-- moment: "in_trace" when a function of the module's trace (a symbol whose
-- name contains "trace", from the shared object's symbol table, read with
-- nm) is on it, "in_curl" when libcurl is on it (a libcurl callback).

local M = {}

assert(alloc_fail and alloc_stats and alloc_track,
       "run this script with build/alloc-host (spec/alloc/host.c), not a plain lua")

M.H = require "helpers"
M.slashid = require "slashid"
require "slashid.core"   -- loaded now, whether or not slashid loads it lazily

local function shell_quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

-- The shared object that `require "slashid.core"` loaded, and the ranges
-- of its trace functions.
function M.track()
  local so = assert(package.searchpath("slashid.core", package.cpath),
                    "slashid.core not found on package.cpath")
  local p = assert(io.popen("nm --defined-only -S " .. shell_quote(so) .. " 2>/dev/null"))
  local ranges, names = {}, {}
  for line in p:lines() do
    local addr, size, kind, name = line:match("^(%x+)%s+(%x+)%s+(%a)%s+(%S+)$")
    if addr and (kind == "t" or kind == "T") and name:lower():find("trace", 1, true) then
      ranges[#ranges + 1] = tonumber(addr, 16)
      ranges[#ranges + 1] = tonumber(size, 16)
      names[#names + 1] = name
    end
  end
  p:close()
  if #ranges == 0 then
    error("no trace function found in the symbol table of " .. so ..
          " (stripped? nm missing?): failures cannot be classified", 0)
  end
  alloc_track(so, table.unpack(ranges))
  return so, names
end

-- Every secret of a run, to check printed text against.
local secrets = {}
function M.secret(s)
  if type(s) == "string" and #s >= 8 then secrets[#secrets + 1] = s end
  return s
end

-- Prints a line, never a key.
function M.say(fmt, ...)
  local text = fmt:format(...)
  for _, s in ipairs(secrets) do
    if text:find(s, 1, true) then
      text = "(a line was withheld: it quoted a key)"
      break
    end
  end
  io.write(text, "\n")
  io.flush()
end

-- Options for a call against the emulator over plain HTTP.
function M.opts(org, key, extra)
  return M.H.opts(org, key, extra)
end

return M
