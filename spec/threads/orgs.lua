-- Emulator bookkeeping for spec/threads/run.sh (through spec/helpers.lua):
--   orgs.lua create N          prints N new "ORG_ID<TAB>API_KEY" lines
--   orgs.lua check FILE COUNT  exits 1 unless every organization of FILE
--                              was rotated exactly COUNT times
local H = require "helpers"
local cmd = arg[1]
if cmd == "create" then
  for _ = 1, tonumber(arg[2]) do
    local org, key = H.new_org()
    io.write(org, "\t", key, "\n")
  end
elseif cmd == "check" then
  local want, bad = tonumber(arg[3]), 0
  for line in io.lines(arg[2]) do
    local org = line:match("^([^\t]+)")
    local got = H.org(org).rotations
    if got ~= want then
      bad = bad + 1
      io.stderr:write(("check-threads: %s rotated %d times, expected %d\n"):format(org, got, want))
    end
  end
  os.exit(bad == 0 and 0 or 1)
else
  io.stderr:write("usage: orgs.lua create N | check FILE COUNT\n")
  os.exit(64)
end
