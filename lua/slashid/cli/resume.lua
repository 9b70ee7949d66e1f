-- slashid.cli.resume: --resume JOURNAL finishes an interrupted run in the
-- same journal, under its lock. What the journal says of each
-- organization decides what happens to it now:
--
--   rotated, delivered        nothing (already done)
--   rotated, not delivered    its key is delivered to the places given now
--   sent (no answer), unknown checked with the current key from the input,
--                             once the request's time limit has passed:
--                             accepted -> rotated now (a 401 then: lost);
--                             refused -> lost (the key never arrived);
--                             cannot tell -> unknown
--   lost                      lost (recover it through SlashID)
--   not_rotated, absent       rotated now
--
-- An organization the journal names as sent that the input does not list
-- stays unknown. The result is a source of entries for cli.rotate.

local core = require "slashid.core"
local args = require "slashid.cli.args"
local output = require "slashid.cli.output"
local check = require "slashid.cli.check"
local journal_mod = require "slashid.journal"

local say = output.say
local usage_error = args.usage_error

local M = {}

-- Refuses a journal that belongs to another run (base URL, shard).
local function same_run(run, base_url, shard)
  if not run then
    usage_error("--resume: the journal has no readable first record (is it a journal?)")
  end
  if run.base_url ~= base_url then
    usage_error(("--resume: the journal's run used the base URL %s, not %s")
                :format(tostring(run.base_url), tostring(base_url)))
  end
  if (run.shard or "") ~= (shard or "") then
    usage_error(("--resume: the journal's run was shard %s, not %s")
                :format(run.shard or "(none)", shard or "(none)"))
  end
end

-- Waits until `deadline` (core.now() clock), saying so; false when a
-- signal came first.
local function wait_until(deadline, count)
  local left = deadline - core.now()
  if left <= 0 then return true end
  say(("waiting %.0f s for the interrupted run's requests to end (their time limit) " ..
       "before checking %d organization%s"):format(left, count, count == 1 and "" or "s"))
  local sleeper = core.multi(true)
  while core.now() < deadline do
    local ok, err = pcall(sleeper.wait, sleeper, deadline - core.now())
    if not ok and not args.is_interrupt(err) then sleeper:close() error(err, 0) end
    if core.signal_count() > 0 then sleeper:close() return false end
  end
  sleeper:close()
  return true
end

-- prepare(ctx, journal, entries_in, opts) -> source. entries_in: the
-- input's entries in order (already read whole: the checks need the keys
-- first), each { org_id, api_key, line } or { bad = ... }.
function M.prepare(ctx, journal, list, opts, name)
  local entries, skipped, run = journal_mod.read(journal.path)
  if not entries then usage_error("--resume: " .. tostring(skipped)) end
  same_run(run, ctx.base_url, ctx.o.shard)
  if skipped > 0 then
    say(("--resume: %d unreadable line%s of the journal skipped (a crash mid-write leaves one)")
        :format(skipped, skipped == 1 and "" or "s"))
  end
  local by_org = {}
  for _, e in ipairs(entries) do
    by_org[e.org_id] = e
    if e.state == "not_rotated" then journal:allow_again(e.org_id) else journal:mark_sent(e.org_id) end
  end
  -- the current keys of the organizations to check
  local key_of, listed = {}, {}
  for _, e in ipairs(list) do
    if e.org_id and not e.bad then
      listed[e.org_id] = true
      if key_of[e.org_id] == nil then key_of[e.org_id] = e.api_key end
    end
  end
  local to_check, deadline, other_key = {}, 0, {}
  for _, e in ipairs(entries) do
    local key = key_of[e.org_id]
    if (e.state == "sent" or e.state == "unknown") and key and e.key_fingerprint and
       e.key_fingerprint ~= journal_mod.fingerprint(key) then
      -- a refusal of this key would prove nothing: it is not the one the
      -- interrupted run presented (a typo, another file)
      other_key[e.org_id] = true
    elseif (e.state == "sent" or e.state == "unknown") and key then
      to_check[#to_check + 1] = e
      local sent_at = e.sent_at or 0
      local limit = sent_at + (e.request_timeout or 45)
      if limit > deadline then deadline = limit end
    end
  end
  local verdict = {}
  if #to_check > 0 then
    local ready = wait_until(core.now() + (deadline - core.time()), #to_check)
    for _, e in ipairs(to_check) do
      if not ready or core.signal_count() > 0 then break end
      local item = {}
      for k, v in pairs(opts) do item[k] = v end
      item.concurrency, item.rate, item.consistency, item.timeout, item.verify, item.save_to =
        nil, nil, nil, nil, nil, nil
      item.org_id, item.api_key = e.org_id, key_of[e.org_id]
      local ok, errors, info = check.call(item)
      verdict[e.org_id] = { ok = ok, status = info.status, errors = errors }
    end
  end

  local out, done = {}, {}
  local function decided(org, outcome, note, status, record)
    out[#out + 1] = { org_id = org, decided = outcome, note = note, status = status,
                      record = record }
  end
  local function settle(e, j)
    if j.state == "rotated" then
      if j.delivered then
        decided(e.org_id, "rotated", "already rotated and delivered (the journal says so)")
      else
        out[#out + 1] = { org_id = e.org_id, key = j.api_key, verified = j.verified }
      end
    elseif j.state == "lost" then
      decided(e.org_id, "lost", "the journal records it lost: the old key was refused and " ..
              "the new key never arrived (recover it through SlashID)")
    elseif j.state == "sent" or j.state == "unknown" then
      local v = verdict[e.org_id]
      if other_key[e.org_id] then
        decided(e.org_id, "unknown", "sent by the interrupted run with no answer; the key " ..
                name .. " gives now is not the one that run presented, so it was not " ..
                "checked (give the key the run used)", 0, true)
      elseif v and v.ok then
        journal:allow_again(e.org_id)
        e.recheck = true
        out[#out + 1] = e
      elseif v and v.ok == false then
        decided(e.org_id, "lost", "the old key is refused (HTTP " .. tostring(v.status) ..
                "): the interrupted run rotated it and the new key never arrived " ..
                "(recover it through SlashID)", v.status, true)
      else
        decided(e.org_id, "unknown", "sent by the interrupted run with no answer, and the " ..
                "check could not tell" .. (v and (": " .. output.all_errors(v.errors)) or
                " (interrupted)"), v and v.status or 0, true)
      end
    else
      out[#out + 1] = e
    end
  end
  for _, e in ipairs(list) do
    local j = not e.bad and by_org[e.org_id]
    if j and not done[e.org_id] then
      done[e.org_id] = true
      settle(e, j)
    else
      out[#out + 1] = e     -- absent from the journal, or a bad line, or a repeat
    end
  end
  -- what the journal names that the input does not list
  for _, j in ipairs(entries) do
    if not listed[j.org_id] then
      if j.state == "rotated" and not j.delivered then
        out[#out + 1] = { org_id = j.org_id, key = j.api_key, verified = j.verified }
      elseif j.state == "sent" or j.state == "unknown" then
        decided(j.org_id, "unknown", "sent by the interrupted run with no answer, and not " ..
                "listed in " .. name .. ": its current key is needed to check it", 0, true)
      elseif j.state == "lost" then
        decided(j.org_id, "lost", "the journal records it lost (recover it through SlashID)")
      end
    end
  end
  local i = 0
  local source = { name = name, seekable = true, n = 0 }
  function source.next()
    i = i + 1
    return out[i]
  end
  return source, #out
end

-- Reads the whole input (the checks need the keys before anything starts).
function M.read_all(reader)
  local list = {}
  while true do
    local e = reader.next("wait")
    if e == nil then break end
    list[#list + 1] = e
  end
  if reader.interrupted then error(require("slashid.cli.input").Interrupted, 0) end
  return list
end

return M
