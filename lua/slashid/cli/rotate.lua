-- slashid.cli.rotate: rotating through the library's batch engine, one
-- organization or many alike (one is a batch of one), with the journal
-- written ahead by the engine and every key handed to cli.deliver.
--
-- source.next(mode) gives entries as cli.input's reader does: { org_id,
-- api_key, line } to rotate, { bad = message, line } for a line that is
-- its own error, or (from --resume) { org_id, decided = outcome, note }
-- for an organization settled without a request, { org_id, key = NEW_KEY }
-- for a key the journal holds that is still to be delivered.

local core = require "slashid.core"
local args = require "slashid.cli.args"
local output = require "slashid.cli.output"
local deliver_mod = require "slashid.cli.deliver"
local input = require "slashid.cli.input"

local say, json_line, first_error, all_errors = output.say, output.json_line,
  output.first_error, output.all_errors
local WAIT = input.WAIT

local M = {}

M.EXIT = { ok = 0, not_rotated = 1, unknown = 2, not_saved = 3, lost = 4, usage = 64 }
local EXIT = M.EXIT

M.UNKNOWN_ADVICE = "the key may have been rotated: do not retry blindly; run --resume " ..
                   "with the journal, or first check whether the old key still works " ..
                   "(the same command with --check)"

function M.status_of(t)
  if t.lost > 0 then return EXIT.lost end
  if t.unknown > 0 then return EXIT.unknown end
  if t.incomplete > 0 then return EXIT.not_saved end
  if t.not_rotated > 0 or t.unread then return EXIT.not_rotated end
  return EXIT.ok
end

function M.new_tally()
  return { total = 0, rotated = 0, not_rotated = 0, unknown = 0, lost = 0, incomplete = 0,
           closed = 0 }
end

-- Lists the organizations a stop left unstarted (each counts as not
-- rotated). With --resume, what needs no request still ends as decided,
-- and a key the journal holds is still delivered (settle_entry): a stop
-- starts nothing new, it never drops what is there.
local function list_rest(ctx, source, report, read_all, settle_entry)
  if read_all and not source.seekable and ctx.many then
    say("reading the rest of ", source.name, " to list the organizations not started ",
        "(interrupt again to skip this)")
  end
  local unread = input.list_rest(source, read_all, "interrupted", "started",
    function(_, id)
      report(id, "not_rotated", nil, { { httpcode = 0, message = "interrupted" } }, true)
    end,
    function(e)
      if e.bad or not (e.decided or e.key) then return false end
      settle_entry(e)
      return true
    end)
  if unread then ctx.tally.unread = true end
end

-- run(ctx, source, opts, total) -> exit status. opts: the library's
-- options shared by every item (concurrency and rate included).
function M.run(ctx, source, opts, total)
  local slashid = require "slashid"
  local o, out = ctx.o, ctx.out
  local tally = M.new_tally()
  ctx.tally = tally
  local progress = ctx.many and output.new_progress(total, { "rotated", "not_rotated", "unknown" })
  local journal = ctx.journal

  -- One organization's end, as the operator sees it.
  function ctx.report(org_id, outcome, note, quiet, verified)
    if verified then note = "verified" .. (note ~= "" and ("; " .. note) or "") end
    if progress then
      progress.item(org_id, outcome, note, quiet)
    elseif outcome == "rotated" then
      local sep = note == "" and "" or note:sub(1, 4) == "but " and ", " or
                  verified and " and " or "; "
      say(org_id, ": rotated", sep, note)
    else
      say(org_id, ": ", outcome:gsub("_", " "), note and note ~= "" and (": " .. note) or "")
    end
  end
  function ctx.closed_org() tally.closed = tally.closed + 1 end
  local deliver = deliver_mod.new(ctx)
  ctx.deliver = deliver
  if journal then journal.before_flush = deliver.flush_saves end

  -- An organization that ends without a key.
  local function report(org_id, outcome, status, errors, quiet)
    tally.total = tally.total + 1
    tally[outcome] = tally[outcome] + 1
    if o.json then out.line(json_line(org_id, outcome, status or 0, errors)) end
    if not quiet then
      local note = first_error(errors)
      if outcome == "unknown" and not progress then
        note = all_errors(errors) .. ". " .. M.UNKNOWN_ADVICE
      elseif not progress then
        note = all_errors(errors)
      end
      ctx.report(org_id, outcome, note)
    end
  end

  -- An entry that ends without a request of its own: a bad line, an
  -- outcome --resume decided, a key the journal holds (delivered now).
  -- Returns true when it was one of those (reported).
  local function settle_entry(e)
    if e.bad then
      local msg = ("%s line %d: %s"):format(source.name, e.line, e.bad)
      report(e.org_id or ("(line " .. e.line .. ")"), "not_rotated", 0,
             { { httpcode = 0, message = msg } })
    elseif e.decided then
      if e.decided == "rotated" then
        tally.total, tally.rotated, tally.closed = tally.total + 1, tally.rotated + 1,
                                                   tally.closed + 1
        ctx.report(e.org_id, "rotated", e.note, true)
      else
        if e.record and journal then journal:add(e.decided, e.org_id) end
        report(e.org_id, e.decided, e.status, { { httpcode = e.status or 0, message = e.note } })
      end
    elseif e.key then
      -- a key the journal holds, delivered now (one organization's
      -- --save-to is the library's atomic write, done here as it would be)
      local info, errors = { outcome = "rotated", status = 0, verified = e.verified }, {}
      if ctx.item_save_to then
        local ok, why = core.write_key_file(ctx.item_save_to, e.key .. "\n")
        info.saved = ok == true
        if ok and journal then
          journal:add("delivered", e.org_id, "save_to")
        elseif not ok then
          errors[1] = { httpcode = 0, message = "the key was rotated but not saved: " ..
                        tostring(why) }
        end
      end
      deliver.key(e.org_id, { result = { api_key = e.key }, errors = errors, info = info })
    else
      return false
    end
    return true
  end

  local in_flight, org_of, pulled = {}, {}, 0
  local stopped = false
  local round_pulled, round_done, stalled = 0, 0, false

  -- The batch runs in rounds: one rotate_keys call while lines come. A
  -- pipe that has no whole line yet while requests are in flight ends the
  -- round (their answers must not wait on the producer); once they are
  -- done, the next round may wait for input as long as it takes.
  local function pull()
    while true do
      if core.signal_count() > 0 then stopped = true return nil end
      -- with requests in flight, never wait for the input; with store
      -- commands running, wait in short steps and advance them meanwhile
      -- (their --store-timeout holds while the producer is idle)
      local mode = round_pulled > round_done and "now" or (deliver.busy() and 0.05 or "wait")
      local e = source.next(mode)
      if e == WAIT and mode == "now" then stalled = true return nil end
      if e == nil then
        if source.interrupted then stopped = true end
        return nil
      end
      if e == WAIT then
        deliver.pump()
      elseif settle_entry(e) then
        -- (reported: no request for it)
      elseif journal and not in_flight[e.org_id] and journal:was_sent(e.org_id) then
        local msg = ("%s line %d: the organization of an earlier line again: not sent " ..
                     "(an organization is sent at most once per journal: a second request " ..
                     "would present a key the first may have killed)"):format(source.name, e.line)
        report(e.org_id, "not_rotated", 0, { { httpcode = 0, message = msg } })
      elseif in_flight[e.org_id] then
        local msg = ("%s line %d: the organization of line %d again, still in flight " ..
                     "(its rotation would present a key the first one may kill): not sent")
                    :format(source.name, e.line, org_of[in_flight[e.org_id]].line)
        report(e.org_id, "not_rotated", 0, { { httpcode = 0, message = msg } })
      else
        round_pulled = round_pulled + 1
        pulled = pulled + 1
        in_flight[e.org_id] = round_pulled
        org_of[round_pulled] = { id = e.org_id, line = e.line, recheck = e.recheck }
        return { org_id = e.org_id, api_key = e.api_key, save_to = ctx.item_save_to }
      end
    end
  end

  opts.on_result = function(index, item)
    local org = org_of[index]
    org_of[index] = nil
    round_done = round_done + 1
    if in_flight[org.id] == index then in_flight[org.id] = nil end
    if item.result then
      deliver.key(org.id, item)
    elseif org.recheck and item.info.status == 401 then
      -- --resume: the old key worked at the check, and is refused now: the
      -- interrupted run's request landed after all, its key never arrived
      if journal then journal:add("lost", org.id) end
      report(org.id, "lost", 401, { { httpcode = 401, message =
        "the old key is refused now: the interrupted run's rotation landed after all and " ..
        "its new key never arrived (recover the organization through SlashID)" } })
    else
      report(org.id, item.info.outcome, item.info.status, item.errors)
    end
  end
  opts.keep_results = false
  opts.journal = journal or nil
  -- Once a turn, after the turn's keys are durable in the journal and
  -- handed over: their --save-to lines are written as one group (one
  -- fsync), and the store commands advance.
  local hooks = {
    on_turn = function() deliver.flush_saves() deliver.pump() end,
    wait_limit = deliver.wait_limit,
  }

  ctx.started = true
  local ok, err
  repeat
    round_pulled, round_done, stalled = 0, 0, false
    ok, err = pcall(slashid._rotate_keys_hooked, pull, opts, hooks)
    if ok and (err.list_error or err.on_result_error) then
      ok, err = false, err.list_error or err.on_result_error
    end
  until not ok or not stalled or stopped
  if not ok then
    if not args.is_interrupt(err) then
      if type(err) == "string" and err:sub(1, 17) == "slashid: journal " then
        args.usage_error(err:sub(10) .. "; nothing was sent (name another file with " ..
                         "--journal PATH, or keep none with --no-journal)")
      end
      if type(err) == "string" and err:sub(1, 9) == "slashid: " and pulled == 0 then
        args.usage_error(args.explain(err))
      end
      error(err, 0)
    end
    -- A second signal: what is still in flight is abandoned.
    if progress then progress.finish() end
    local ids = {}
    for index, org in pairs(org_of) do ids[#ids + 1] = { index, org.id } end
    table.sort(ids, function(a, b) return a[1] < b[1] end)
    local msg = "interrupted before the answer arrived (the request may have been sent)"
    for _, v in ipairs(ids) do
      if journal then journal:add("unknown", v[2]) end
      report(v[2], "unknown", 0, { { httpcode = 0, message = msg } }, true)
    end
    say("interrupted by a second signal: ", #ids, " request", #ids == 1 and "" or "s",
        " abandoned in flight")
    if #ids > 0 then
      say("outcome unknown (", M.UNKNOWN_ADVICE, "):")
      for _, v in ipairs(ids) do io.stderr:write("  ", v[2], "\n") end
    end
    list_rest(ctx, source, report, source.seekable, settle_entry)
  else
    if stopped then
      if progress then progress.finish() end
      say("interrupted: no more organizations started; those in flight finished")
      list_rest(ctx, source, report, true, settle_entry)
    elseif source.error then
      say("cannot read ", source.name, ": ", tostring(source.error),
          ": the organizations after line ", source.n, " were not started")
      tally.not_rotated = tally.not_rotated + 1
    end
  end
  -- deliveries still under way: the store commands, the last group of lines
  deliver.drain()
  deliver.flush_saves()
  if journal then journal:flush() end
  if progress then progress.finish() end
  return tally
end

return M
