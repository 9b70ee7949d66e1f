-- slashid.cli.check: --check, one organization or every line of --orgs
-- (one at a time: the recovery step after an unknown outcome, for a
-- handful of organizations; --rate honoured). Exit 0 accepted, 1
-- refused, 2 cannot tell. Also the check --resume runs (M.call).

local core = require "slashid.core"
local args = require "slashid.cli.args"
local output = require "slashid.cli.output"
local input = require "slashid.cli.input"

local say, json_line, first_error, all_errors = output.say, output.json_line,
  output.first_error, output.all_errors

local M = {}

M.WORD = { [true] = "accepted", [false] = "refused" }

-- Waits for an op; on a second signal, cancels it (an answer already
-- complete is kept) and returns true.
function M.wait_op(op)
  local ok, err = pcall(op.wait, op)
  if ok then return false end
  if not args.is_interrupt(err) then error(err, 0) end
  op:cancel()
  return true
end

-- check_key as an op (start_check_key): a second signal abandons it at
-- once. -> ok, errors, info, abandoned
function M.call(opts)
  local op = args.checked(require("slashid").start_check_key, opts)
  if M.wait_op(op) then
    return nil, { { httpcode = 0, message = "interrupted: the check was abandoned" } },
           { status = 0 }, true
  end
  return op:results()
end

function M.one(ctx, opts, org_id)
  if core.signal_count() > 0 then
    say(org_id, ": interrupted before the check started: cannot tell")
    return 2
  end
  ctx.started = true
  local ok, errors, info = M.call(opts)
  local word = M.WORD[ok] or "unknown"
  if ctx.o.json then ctx.out.line(json_line(org_id, word, info.status, errors)) end
  if ok then
    say(org_id, ": the key is accepted")
    return 0
  elseif ok == false then
    say(org_id, ": the key is refused (HTTP ", tostring(info.status), ")")
    return 1
  end
  say(org_id, ": cannot tell whether the key works: ", all_errors(errors))
  return 2
end

-- Lists the organizations an interruption left unchecked (each counts
-- as cannot tell).
local function list_rest(ctx, reader, tally, read_all)
  local message = "not checked: interrupted"
  local unread = input.list_rest(reader, read_all, message, "checked", function(_, id)
    tally.total, tally.unknown = tally.total + 1, tally.unknown + 1
    if ctx.o.json then
      ctx.out.line(json_line(id, "unknown", 0, { { httpcode = 0, message = message } }))
    end
  end)
  if unread then tally.unread = true end
end

function M.many(ctx, reader, opts, total)
  local o, out = ctx.o, ctx.out
  local tally = { total = 0, accepted = 0, refused = 0, unknown = 0 }
  local progress = output.new_progress(total, { "accepted", "refused", "unknown" })
  local rate = args.number_flag(o, "rate", "--rate")
  local sleeper = rate and core.multi(true)   -- a wait that a signal cuts short
  local next_start = core.now()
  local stopped, aborted, unread = false, false, nil
  ctx.started = true
  while true do
    if core.signal_count() > 0 then stopped = true break end
    local e = reader.next("wait")
    if e == nil then
      stopped = reader.interrupted
      break
    end
    local id = e.bad and (e.org_id or ("(line " .. e.line .. ")")) or e.org_id
    local word, status, errors
    if e.bad then
      word, status = "unknown", 0
      errors = { { httpcode = 0, message = ("%s line %d: %s"):format(reader.name, e.line, e.bad) } }
    else
      if rate then
        local d = next_start - core.now()
        if d > 0 then
          local ok, err = pcall(sleeper.wait, sleeper, d)
          if not ok and not args.is_interrupt(err) then error(err, 0) end
          if core.signal_count() > 0 then unread = e stopped = true break end
        end
        next_start = math.max(next_start, core.now()) + 1 / rate
      end
      local item = {}
      for k, v in pairs(opts) do item[k] = v end
      item.org_id, item.api_key = e.org_id, e.api_key
      local ok, info, cut
      ok, errors, info, cut = M.call(item)
      word, status = M.WORD[ok] or "unknown", info.status
      aborted = aborted or cut
    end
    tally.total = tally.total + 1
    tally[word] = tally[word] + 1
    if o.json then
      out.line(json_line(id, word, status, errors))
    else
      out.line(id .. "\t" .. word)
    end
    progress.item(id, word, word == "unknown" and first_error(errors) or "", word == "accepted")
    if aborted then break end
  end
  if sleeper then sleeper:close() end
  progress.finish()
  if stopped or aborted then
    if unread then
      tally.total, tally.unknown = tally.total + 1, tally.unknown + 1
      if o.json then
        out.line(json_line(unread.org_id, "unknown", 0,
                           { { httpcode = 0, message = "not checked: interrupted" } }))
      end
      say("not checked (interrupted): ", unread.org_id)
    end
    say("interrupted: no more organizations checked")
    list_rest(ctx, reader, tally, not aborted or reader.seekable)
  end
  if tally.total == 0 and not (stopped or aborted) and not reader.error then
    say(reader.name, ": no organizations to check")
    return 0
  end
  if reader.error and not (stopped or aborted) then
    say("cannot read ", reader.name, ": ", tostring(reader.error),
        ": the organizations after line ", reader.n, " were not checked")
  end
  say(("%d organization%s checked: %d accepted, %d refused, %d cannot tell"):format(
      tally.total, tally.total == 1 and "" or "s", tally.accepted, tally.refused, tally.unknown))
  -- organizations left unread (interrupted, or a read error) cannot be told
  if tally.unknown > 0 or tally.unread or reader.error then return 2 end
  if tally.refused > 0 then return 1 end
  return 0
end

return M
