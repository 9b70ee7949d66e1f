-- `make bench-crash` (bench/crash.sh starts the emulator): kill -9 at
-- CRASH_ROUNDS (20) random moments of a CRASH_N (1000) organization run
-- of slashid-rotate (--concurrency 16, --save-to) against the emulator,
-- every answer delayed 20-200 ms as a busy API would; then classify every
-- organization from what is on disk only (the journal and the save file),
-- compared with the emulator's own record of what it rotated; then
-- `--resume` the journal and check the end state. Figures, not pass/fail:
-- a table, then name=value lines.
--
-- Per round:
--   sent         organizations the journal names as sent with no outcome
--                (in flight at the kill: their answer may have been issued)
--   unclassified organizations the emulator rotated that the journal does
--                not name (as sent or rotated): must be 0
--   keys lost    organizations whose issued key is neither in the journal
--                nor the save file, beyond those in flight: must be 0
--   after resume every organization rotated and its current key delivered,
--                or reported lost exactly when the server rotated it and
--                its key never arrived
package.path = "spec/?.lua;" .. package.path
local H = require "helpers"
local slashid = require "slashid"
local core = require "slashid.core"

local N = tonumber(os.getenv("CRASH_N") or "1000")
local ROUNDS = tonumber(os.getenv("CRASH_ROUNDS") or "20")
local LUA = os.getenv("SLASHID_SPEC_LUA") or "lua5.4"
math.randomseed(tonumber(os.getenv("CRASH_SEED") or tostring(os.time())))

local function sh(cmd)
  local a, _, c = os.execute(cmd)
  return a == true or a == 0 or c == 0
end

local function lines(path)
  local t = {}
  local f = io.open(path, "rb")
  if not f then return t end
  for line in f:lines() do
    local org, key = line:match("^([^\t]+)\t(.+)$")
    if org then t[org] = key end
  end
  f:close()
  return t
end

local function journal_in(dir)
  local p = io.popen("ls " .. dir .. " 2>/dev/null")
  local name = p:read("*l")
  p:close()
  return name and (dir .. "/" .. name)
end

local rows, total = {}, { sent = 0, unclassified = 0, lost_keys = 0, lost = 0,
                          undelivered = 0, twice = 0 }
for round = 1, ROUNDS do
  local dir = H.mkdir(H.tmpname("crash"))
  local jdir = dir .. "/journals"
  sh("mkdir -m 0700 " .. jdir)
  local orgs, f = {}, assert(io.open(dir .. "/orgs.tsv", "wb"))
  for i = 1, N do
    local org, key = H.new_org()
    H.faults(org, { { delay = 0.02 + math.random() * 0.18 } })
    orgs[i] = org
    f:write(org, "\t", key, "\n")
  end
  f:close()
  local cli = ("SLASHID_JOURNAL_DIR=%s %s bin/slashid-rotate --orgs %s/orgs.tsv --base-url %s " ..
               "--concurrency 16 --request-timeout 3"):format(jdir, LUA, dir, H.http_url)
  local job = H.spawn(cli .. " --save-to " .. dir .. "/saved.tsv")
  -- a moment within the run (about N / 16 * 0.11 s long)
  local at = 0.2 + math.random() * N * 0.006
  core.sleep(at)
  if not pcall(job.kill, "KILL") then at = -1 end   -- it had ended already
  job.wait(60)

  -- what is on disk, against the emulator's record
  local journal = journal_in(jdir)
  local entries = journal and slashid.read_journal(journal) or {}
  local by_org = {}
  for _, e in ipairs(entries) do by_org[e.org_id] = e end
  local saved = lines(dir .. "/saved.tsv")
  local r = { round = round, at = at, sent = 0, rotated = 0, unclassified = 0, lost_keys = 0 }
  for _, org in ipairs(orgs) do
    local state = H.org(org)
    local e = by_org[org]
    if e and e.state == "sent" then r.sent = r.sent + 1 end
    if state.rotations > 0 then
      r.rotated = r.rotated + 1
      if not e or (e.state ~= "sent" and e.state ~= "rotated") then
        r.unclassified = r.unclassified + 1
      elseif e.state == "rotated" and e.api_key ~= state.api_key and saved[org] ~= state.api_key then
        r.lost_keys = r.lost_keys + 1
      end
    elseif e and e.state == "rotated" then
      r.unclassified = r.unclassified + 1      -- a key the server never issued
    end
  end

  -- --resume finishes the run
  local rc = 0
  if journal then
    local p = io.popen(cli .. " --resume " .. journal .. " --save-to " .. dir ..
                       "/resumed.tsv >/dev/null 2>" .. dir .. "/resume.err; echo $?")
    rc = tonumber(p:read("*l"))
    p:close()
  end
  local resumed = lines(dir .. "/resumed.tsv")
  local after = journal and slashid.read_journal(journal) or nil
  local lost_set = {}
  for _, e in ipairs(after or {}) do if e.state == "lost" then lost_set[e.org_id] = true end end
  r.lost, r.undelivered, r.twice, r.rc = 0, 0, 0, rc
  for _, org in ipairs(orgs) do
    local state = H.org(org)
    local key = state.api_key
    if state.rotations > 1 then r.twice = r.twice + 1 end
    if lost_set[org] then
      r.lost = r.lost + 1
      -- lost only when the server rotated and the key is nowhere
      if state.rotations == 0 or saved[org] == key or resumed[org] == key then
        r.undelivered = r.undelivered + 1
      end
    elseif not (saved[org] == key or resumed[org] == key) then
      r.undelivered = r.undelivered + 1
    end
  end
  rows[#rows + 1] = r
  for _, k in ipairs({ "sent", "unclassified", "lost_keys", "lost", "undelivered", "twice" }) do
    total[k] = total[k] + r[k]
  end
  io.stderr:write(("crash round %d/%d: kill at %.2f s, %d sent, %d unclassified, resume exit %d\n")
                  :format(round, ROUNDS, at, r.sent, r.unclassified, rc))
end

print()
print(("slashid-rotate killed (-9) at %d random moments of a %d-organization run " ..
       "(--concurrency 16, answers delayed 20-200 ms), then --resume"):format(ROUNDS, N))
print(("%5s %7s %8s %8s %12s %9s %5s %11s %5s %5s"):format("round", "kill s", "rotated",
      "in fl.", "unclassified", "keys lost", "lost", "undelivered", "twice", "exit"))
for _, r in ipairs(rows) do
  print(("%5d %7.2f %8d %8d %12d %9d %5d %11d %5d %5d"):format(r.round, r.at, r.rotated, r.sent,
        r.unclassified, r.lost_keys, r.lost, r.undelivered, r.twice, r.rc))
end
print()
print("crash_rounds=" .. ROUNDS)
print("crash_orgs=" .. N)
print("crash_in_flight_total=" .. total.sent)
print("crash_unclassified_total=" .. total.unclassified)
print("crash_keys_lost_total=" .. total.lost_keys)
print("crash_resume_lost_total=" .. total.lost)
print("crash_resume_undelivered_total=" .. total.undelivered)
print("crash_rotated_twice_total=" .. total.twice)
