-- slashid.cli.deliver: the one way a new key leaves the command, for one
-- organization and many alike. By the time it gets here the key is
-- durable in the journal (the batch engine wrote it ahead); from here it
-- goes to --save-to and/or --store-cmd, else to stdout, and each delivery
-- to a durable place is recorded in the journal once it is durable
-- there (--save-to fsync'ed, the store command exited 0). A key whose
-- delivery failed stays in the journal (exit 3); under --no-journal
-- (or once the journal failed) it is printed and written to a rescue
-- file instead, the only places left.
--
-- --save-to for many organizations is an append of ORG_ID<TAB>NEW_KEY
-- lines, written in groups at the journal's flushes (one fsync per
-- group); for one organization it is the library's atomic save_to.
-- Store commands run beside the transfers (core.spawn), at most
-- --concurrency at once, each with --store-timeout.

local core = require "slashid.core"
local output = require "slashid.cli.output"

local say, all_errors, json_line = output.say, output.all_errors, output.json_line

local M = {}

-- new(ctx) -> the delivery of a run. ctx: o (flags), journal (or nil),
-- out (stdout), rescue, many (boolean), report(org_id, outcome, note,
-- quiet), tally.
function M.new(ctx)
  local o, out = ctx.o, ctx.out
  local d = {}
  local store_cmd = o.store_cmd
  local store_timeout = tonumber(o.store_timeout) or 30
  local store_limit = tonumber(o.concurrency) or 8
  local saves, n_saves = {}, 0          -- many + --save-to: lines waiting for their group
  local queue, q_first, q_last = {}, 1, 0 -- keys waiting for a store command
  local running, n_running = {}, 0      -- child -> entry
  local saved_to                        -- append_key_line's end offset of our last group

  local function journaled() return ctx.journal and not ctx.journal.failed end

  -- An organization whose deliveries are all known: counted, reported.
  -- A key that went to --save-to/--store-cmd has its --json line now,
  -- with api_key only when no place kept it (under --no-journal, or a
  -- journal that failed): then stdout and a rescue file are what is left.
  local function settle(e)
    local tally = ctx.tally
    tally.total, tally.rotated = tally.total + 1, tally.rotated + 1
    local problems = e.problems
    local stranded = #problems > 0 and not journaled() and not e.printed
    -- --json: what went wrong is in the object's errors too
    local json_errors = e.errors
    if #problems > 0 then
      json_errors = {}
      for k, x in ipairs(e.errors) do json_errors[k] = x end
      for _, p in ipairs(problems) do json_errors[#json_errors + 1] = { httpcode = 0, message = p } end
    end
    if o.json and e.unprintable then out.line(json_line(e.org_id, "rotated", e.status, json_errors)) end
    if stranded and e.unprintable then
      -- no line or file can hold it readably: stderr, shown escaped, is
      -- the only way out left
      tally.incomplete = tally.incomplete + 1
      ctx.report(e.org_id, "rotated", "but " .. table.concat(problems, "; ") ..
                 ". The new key, with its unprintable bytes shown as \\xNN, store it now: " ..
                 (e.key:gsub("[^\32-\126]", function(c)
                   return ("\\x%02X"):format(c:byte())
                 end)), false)
      return
    end
    if o.json and not e.on_stdout and not e.unprintable then
      local ok = out.line(json_line(e.org_id, "rotated", e.status, json_errors,
                                    stranded and e.key or nil))
      if stranded then e.printed = ok end
    elseif stranded then
      e.printed = out.line(ctx.many and (e.org_id .. "\t" .. e.key) or e.key)
    end
    if #problems == 0 then
      ctx.report(e.org_id, "rotated", e.where, true, e.verified)
      return
    end
    tally.incomplete = tally.incomplete + 1
    local note = table.concat(problems, "; ")
    if journaled() then
      note = note .. " (the new key is in the journal " .. ctx.journal.path .. ")"
    elseif stranded then
      local path, why = ctx.rescue.add(e.org_id, e.key)
      if path then
        note = note .. " (the new key is " .. (e.printed and "on stdout and " or "") ..
               "in the rescue file " .. path .. ")"
      elseif e.printed then
        note = note .. " (the new key is on stdout)"
      else
        -- nothing else could take it: stderr is the last way out
        note = note .. " (nor could a rescue file take it: " .. tostring(why) ..
               "). The new key, store it now: " .. e.key
      end
    else
      note = note .. " (the new key is on stdout)"
    end
    ctx.report(e.org_id, "rotated", "but " .. note, false)
  end

  local function done_one(e, problem)
    if problem then e.problems[#e.problems + 1] = problem end
    e.waiting = e.waiting - 1
    if e.waiting == 0 then
      if #e.problems == 0 and journaled() and e.durable then ctx.closed_org(e.org_id) end
      settle(e)
    end
  end

  -- A store command's delivery ended.
  local function stored(e, ok, why)
    if ok then
      e.durable = true
      if journaled() then ctx.journal:add("delivered", e.org_id, "store") end
      done_one(e)
    else
      done_one(e, "--store-cmd failed: " .. tostring(why))
    end
  end

  -- The group of --save-to lines (many): one append, one fsync; their
  -- delivered records follow (flushed with the journal's next write).
  function d.flush_saves()
    if n_saves == 0 then return end
    local group = {}
    for k = 1, n_saves do group[k] = saves[k].line end
    local ok, why = core.append_key_line(o.save_to, table.concat(group), "l", saved_to)
    if ok then saved_to = why end
    local batch = saves
    local n = n_saves
    saves, n_saves = {}, 0
    for k = 1, n do
      local e = batch[k]
      if ok then
        e.durable = true
        if journaled() then ctx.journal:add("delivered", e.org_id, "save_to") end
        done_one(e)
      else
        done_one(e, "not saved to " .. o.save_to .. ": " .. tostring(why))
      end
    end
  end

  -- Advances the store commands: starts queued ones, collects ended ones,
  -- kills those past their time.
  function d.pump()
    local now = core.now()
    for child, e in pairs(running) do
      local ok, why = child:poll()
      if ok == nil and now - e.started > store_timeout then
        child:kill(("timed out after %g s (killed)"):format(store_timeout))
        ok, why = child:poll()
      end
      if ok ~= nil then
        running[child], n_running = nil, n_running - 1
        stored(e, ok, why)
      end
    end
    while n_running < store_limit and q_first <= q_last do
      local e = queue[q_first]
      queue[q_first], q_first = nil, q_first + 1
      local child, why = core.spawn(store_cmd, "SLASHID_ORG_ID", e.org_id, e.key)
      if child then
        e.started = core.now()
        running[child], n_running = e, n_running + 1
      else
        stored(e, false, "cannot start it: " .. tostring(why))
      end
    end
  end

  function d.busy() return n_running > 0 or q_first <= q_last end

  -- While store commands run, the batch's loop wakes often enough to see
  -- them end.
  function d.wait_limit()
    if d.busy() then return 0.02 end
    return nil
  end

  -- Waits for every store command (after the batch); a second signal
  -- stops the wait (their keys stay in the journal, not delivered).
  function d.drain()
    if not d.busy() then return end
    local sleeper
    while d.busy() do
      d.pump()
      if not d.busy() then break end
      if core.signal_count() >= 2 then
        for child, e in pairs(running) do
          child:kill("abandoned: interrupted")
          running[child], n_running = nil, n_running - 1
          stored(e, false, "abandoned: interrupted")
        end
        while q_first <= q_last do
          local e = queue[q_first]
          queue[q_first], q_first = nil, q_first + 1
          stored(e, false, "not run: interrupted")
        end
        break
      end
      sleeper = sleeper or core.multi(true)
      pcall(sleeper.wait, sleeper, 0.02)
    end
    if sleeper then sleeper:close() end
  end

  -- A rotated organization's key, durable in the journal (or with no
  -- journal). item: rotate_keys' item table.
  function d.key(org_id, item)
    local key, info, errors = item.result.api_key, item.info, item.errors
    local e = { org_id = org_id, key = key, problems = {}, waiting = 1, durable = false,
                printed = false, where = "", verified = info.verified == true,
                status = info.status, errors = errors, on_stdout = false }
    if ctx.journal and ctx.journal.failed then
      e.problems[#e.problems + 1] = "the journal could not be written (" ..
                                    tostring(ctx.journal.failed) .. ")"
    end
    if info.verified == false then
      e.problems[#e.problems + 1] = "verify: " .. all_errors(errors)
    end
    if key:find("[^\32-\126]") then
      -- a newline or NUL in it would make any line or file holding it read
      -- back as another key: only the journal (percent-encoded) keeps it
      e.unprintable = true
      e.problems[#e.problems + 1] = "the new key holds a byte outside printable ASCII: " ..
                                    "it is not printed, saved or stored"
      done_one(e)
      return
    end
    local to_file = o.save_to and true or false
    local on_stdout = not to_file and not store_cmd
    e.on_stdout = on_stdout
    if on_stdout then
      -- stdout is the delivery: the line (or --json object) with the key
      if o.json then
        e.printed = out.line(json_line(org_id, "rotated", info.status, errors, key))
      else
        e.printed = out.line(ctx.many and (org_id .. "\t" .. key) or key)
      end
      if not e.printed then
        e.problems[#e.problems + 1] = "the new key could not be written to standard output (" ..
                                      tostring(out.broken) .. ")"
      end
      e.where = "the new key is on stdout"
    end
    if to_file then
      if ctx.many then
        e.waiting = e.waiting + 1
        n_saves = n_saves + 1
        e.line = org_id .. "\t" .. key .. "\n"
        saves[n_saves] = e
        -- no journal: no group to join, written now
        if not journaled() then d.flush_saves() end
      elseif info.saved then
        e.durable = true   -- the library's atomic save_to (its record: the batch's)
      else
        e.problems[#e.problems + 1] = "not saved: " .. all_errors(errors)
      end
      e.where = "the new key is saved in " .. o.save_to
    end
    if store_cmd then
      e.waiting = e.waiting + 1
      q_last = q_last + 1
      queue[q_last] = e
      e.where = (to_file and (e.where .. " and") or "the new key is") .. " given to --store-cmd"
      d.pump()
    end
    done_one(e)
  end

  return d
end

return M
