-- slashid.cli: the slashid-rotate command as a module. `main(arg)` runs
-- it and returns the exit status (it never calls os.exit), so a script,
-- bin/slashid-rotate, or a spec can drive it in-process; every process
-- state it changes (signal dispositions, descriptors 0-2) is put back
-- before it returns. Its parts (slashid/cli/):
--
--   args     the command line: flags, usage errors (exit 64)
--   input    the --orgs file and --api-key-file, read as descriptors
--   output   stderr messages, checked stdout lines, rescue file, progress
--   check    --check, one organization or many
--   rotate   rotating one or many through the library's batch engine
--   deliver  the one way a new key leaves: --save-to, --store-cmd, stdout
--   resume   --resume: what an interrupted run's journal leaves to do
--
-- Durable first, then deliver: every rotating run keeps a write-ahead
-- journal (slashid/journal.lua) unless --no-journal; the engine records
-- each organization as sent before its request leaves and each new key
-- before it is handed on, so a crash at any instant loses no key that
-- reached the process and leaves every organization classified.
-- Signals (src/signal.c): a first SIGINT or SIGTERM stops starting
-- organizations, in-flight requests finish and their keys are kept; a
-- second one makes multi:wait raise core.INTERRUPTED: what is in flight is
-- reported unknown.

--- The command `slashid-rotate`, as a module.
-- `bin/slashid-rotate` is `os.exit(require("slashid.cli").main(arg))`.
-- The command rotates one organization's key, or many from a file, with
-- the library's rules, and keeps a write-ahead journal so that no key is
-- ever lost (durable first, then delivered to `--save-to`, `--store-cmd`
-- or standard output). Its flags, journal, `--resume`, signals and
-- recipes are in the man page, slashid-rotate(1) (`man ./slashid-rotate.1`
-- in a checkout); a summary:
-- @{README#from-a-shell-slashid-rotate|README, From a shell}.
--
-- It needs the Lua module `argparse` (Debian: lua-argparse); without it
-- every run exits 64 saying what to install.
-- @module slashid.cli
-- @usage
-- -- in-process, as the specs do:
-- local status = require("slashid.cli").main({ "--org-id", ORG, "--save-to", PATH })

local core = require "slashid.core"
local args = require "slashid.cli.args"
local output = require "slashid.cli.output"
local input = require "slashid.cli.input"
local rotate = require "slashid.cli.rotate"
local check = require "slashid.cli.check"

local say, usage_error = output.say, args.usage_error
local EXIT = rotate.EXIT

local M = {}

--- The exit statuses of @{main}.
-- With `--orgs`, the worst item decides: `lost`, else `unknown`, else
-- `not_saved`, else `not_rotated`, else `ok`.
-- @table EXIT
-- @field ok 0: rotated (`--check`: the key is accepted).
-- @field not_rotated 1: not rotated; nothing changed, safe to try again
--   (`--check`: the key is refused).
-- @field unknown 2: the outcome is unknown: the key may have been rotated
--   (`--check`: cannot tell). Run `--resume` with the journal, or first
--   `--check` the old key.
-- @field not_saved 3: rotated, but saving, storing, printing or `--verify`
--   failed: the new key is kept in the journal (or under `--no-journal` a
--   rescue file named on stderr).
-- @field lost 4: only from `--resume`: the old key is refused and the new
--   key never arrived: recover access through SlashID.
-- @field usage 64: a usage or argument error (also a missing argparse, a
--   journal that cannot be kept); nothing was sent.
M.EXIT = EXIT
M.USAGE = args.USAGE
M.json_line = output.json_line
M.utf8_clean = output.utf8_clean

-- ---- the journal's place -----------------------------------------------

local function default_journal_dir()
  local dir = os.getenv("SLASHID_JOURNAL_DIR")
  if dir and dir ~= "" then return dir end
  local state = os.getenv("XDG_STATE_HOME")
  if state and state ~= "" then return state .. "/slashid-rotate" end
  local home = os.getenv("HOME")
  if home and home ~= "" then return home .. "/.local/state/slashid-rotate" end
  return nil
end

local function journal_fail(why)
  usage_error("cannot keep the journal: " .. tostring(why) .. "; nothing was sent " ..
              "(name another file with --journal PATH, or keep none with --no-journal)")
end

-- Opens the run's journal (before anything is sent): a new one, or the
-- one --resume names.
local function open_journal(ctx)
  local o = ctx.o
  local journal_mod = require "slashid.journal"
  if o.resume then
    local j, why = journal_mod.open(o.resume, "resume")
    if not j then usage_error("--resume: " .. tostring(why)) end
    return j
  end
  local path = o.journal
  if not path then
    local dir = default_journal_dir()
    if not dir then journal_fail("no directory for it ($HOME is not set)") end
    local ok, why = core.make_private_dir(dir)
    if not ok then journal_fail(why) end
    path = ("%s/slashid-rotate-%s-%08x.journal"):format(dir, os.date("!%Y%m%dT%H%M%SZ"),
                                                      math.floor(core.random() * 4294967296))
  end
  local j, why = journal_mod.open(path, "new", {
    base_url = ctx.base_url, shard = o.shard,
    input = o.orgs and (o.orgs == "-" and "standard input" or o.orgs) or nil,
  })
  if not j then journal_fail(why) end
  return j
end

-- The journal at the end: removed when every key reached a durable place
-- and nothing is unknown or lost; kept (and named) otherwise.
local function close_journal(ctx, tally)
  local j = ctx.journal
  if not j then return end
  local why
  if j.failed then why = "it could not be written: " .. j.failed
  elseif tally.lost > 0 then why = "it records organizations lost"
  elseif tally.unknown > 0 then why = "it records organizations whose outcome is unknown"
  elseif tally.incomplete > 0 then why = "it holds keys not delivered (or not verified)"
  elseif tally.rotated > tally.closed then
    why = "it holds the new keys (standard output is not a safe place: " ..
          "store them, then delete it)"
  end
  -- --resume: the journal holds more than this run saw (what it read from
  -- the interrupted one); the file itself decides
  if not why and ctx.o.resume then
    local entries, _ = require("slashid.journal").read(j.path)
    if not entries then why = "it could not be read back" end
    for _, e in ipairs(entries or {}) do
      if e.state == "sent" or e.state == "unknown" or e.state == "lost" then
        why = "it records organizations not finished (" .. e.state .. ")"
        break
      elseif e.state == "rotated" and (not e.delivered or e.verified == false) then
        why = "it holds keys not delivered (or not verified)"
        break
      end
    end
  end
  if why then
    j:close()
    say("journal ", j.path, " kept: ", why)
    return
  end
  os.remove(j.path)
  j:close()
end

-- ---- rotating ------------------------------------------------------------

local function rotate_run(ctx)
  local o = ctx.o
  local opts = args.library_options(o, false)
  local slashid = require "slashid"
  ctx.base_url = opts.base_url or os.getenv("SLASHID_BASE_URL") or slashid.PRODUCTION
  local source, total
  if o.orgs then
    ctx.many = true
    opts.concurrency = args.number_flag(o, "concurrency", "--concurrency")
    opts.rate = args.number_flag(o, "rate", "--rate")
    args.checked(function() require("slashid.options").check_batch(opts) end)
    local k, n = args.shard(o)
    source = input.open_orgs(o.orgs, ctx.closed, k and { k, n })
    ctx.reader = source
    if source.seekable then total = source.prescan() end
    if o.save_to then
      local ok, why = core.append_key_line(o.save_to, "")
      if not ok then usage_error("--save-to: " .. tostring(why)) end
    end
  else
    local org_id = o.org_id or os.getenv("SLASHID_ORG_ID")
    if org_id == nil or org_id == "" then
      usage_error("missing --org-id (or set SLASHID_ORG_ID)")
    end
    local key
    if o.api_key_file then
      key = input.read_key_file(o.api_key_file, ctx.closed)
      if key == nil then
        say(org_id, ": interrupted while reading the key: nothing was sent")
        return EXIT.not_rotated
      end
    else
      key = os.getenv("SLASHID_API_KEY")
      if (key or "") == "" then
        usage_error("no API key: set SLASHID_API_KEY or use --api-key-file PATH")
      end
    end
    -- every option checked before anything is sent
    args.checked(function()
      local options = require "slashid.options"
      local item = {}
      for k, v in pairs(opts) do item[k] = v end
      item.org_id, item.api_key, item.save_to = org_id, key, o.save_to
      options.resolve({}, options.check(item))
    end)
    if o.save_to then
      -- learned before a key is issued, not after
      local ok, why = core.write_key_file(o.save_to, "", "check")
      if not ok then usage_error("--save-to: " .. tostring(why)) end
      ctx.item_save_to = o.save_to
    end
    local given = false
    source = { name = "--org-id", seekable = true, n = 1 }
    function source.next()
      if given then return nil end
      given = true
      return { org_id = org_id, api_key = key, line = 1 }
    end
    total = 1
  end
  if core.signal_count() > 0 then
    say("interrupted before anything was sent: not rotated")
    return EXIT.not_rotated
  end
  if not o.no_journal then ctx.journal = open_journal(ctx) end
  if o.resume then
    local resume = require "slashid.cli.resume"
    local list = resume.read_all(source)
    source, total = resume.prepare(ctx, ctx.journal, list, opts, source.name)
  end
  local tally = rotate.run(ctx, source, opts, total)
  if ctx.many then
    if tally.total == 0 and not tally.unread then
      say(source.name, ": no organizations to rotate")
    else
      say(("%d organization%s: %d rotated%s, %d not rotated, %d unknown%s"):format(
          tally.total, tally.total == 1 and "" or "s", tally.rotated,
          tally.incomplete > 0 and (" (" .. tally.incomplete .. " not delivered or not verified)")
            or "",
          tally.not_rotated, tally.unknown,
          tally.lost > 0 and (", " .. tally.lost .. " lost") or ""))
    end
    if tally.unknown > 0 then
      say("for the organizations whose outcome is unknown, ", rotate.UNKNOWN_ADVICE)
    end
  end
  if #ctx.rescue.paths > 0 then
    say(ctx.rescue.count, " new key", ctx.rescue.count == 1 and " is" or "s are",
        " in the rescue file", #ctx.rescue.paths == 1 and " " or "s ",
        table.concat(ctx.rescue.paths, ", "), ": store them, then delete it")
  end
  close_journal(ctx, tally)
  return rotate.status_of(tally)
end

-- ---- checking ------------------------------------------------------------

local function check_run(ctx)
  local o = ctx.o
  local opts = args.library_options(o, true)
  if not o.orgs then
    opts.org_id = o.org_id
    local org_id = o.org_id or os.getenv("SLASHID_ORG_ID")
    if org_id == nil or org_id == "" then
      usage_error("missing --org-id (or set SLASHID_ORG_ID)")
    end
    if o.api_key_file then
      opts.api_key = input.read_key_file(o.api_key_file, ctx.closed)
      if opts.api_key == nil then
        say(org_id, ": interrupted while reading the key: nothing was sent")
        return EXIT.unknown
      end
    elseif (os.getenv("SLASHID_API_KEY") or "") == "" then
      usage_error("no API key: set SLASHID_API_KEY or use --api-key-file PATH")
    end
    return check.one(ctx, opts, org_id)
  end
  -- check_key's options, checked before anything is read or sent
  args.checked(function()
    local options = require "slashid.options"
    options.check(opts, options.REQUEST_OPTIONS)
    options.check_batch({ concurrency = args.number_flag(o, "concurrency", "--concurrency"),
                          rate = args.number_flag(o, "rate", "--rate") })
  end)
  local k, n = args.shard(o)
  local reader = input.open_orgs(o.orgs, ctx.closed, k and { k, n })
  ctx.reader = reader
  local total
  if reader.seekable then total = reader.prescan() end
  return check.many(ctx, reader, opts, total)
end

-- ---- main ------------------------------------------------------------------

local function run(argv, ctx)
  local o = args.parse(argv)
  ctx.o = o
  if o.help then
    core.write_line(1, M.USAGE)
    return EXIT.ok
  end
  if o.version then
    core.write_line(1, ("%s %s (libcurl %s)\n"):format(output.PROG, require("slashid")._VERSION,
                                                      core.curl_version))
    return EXIT.ok
  end
  args.check_combinations(o)
  ctx.out = output.new_stdout(ctx.closed)
  ctx.rescue = output.new_rescue()
  if o.check then return check_run(ctx) end
  return rotate_run(ctx)
end

--- Runs the command and returns its exit status; it never calls
-- `os.exit`, and puts back every process state it changes (signal
-- dispositions, descriptors 0 to 2) before it returns, so a script or a
-- spec can drive it in-process. Messages go to stderr, new keys (when
-- neither `--save-to` nor `--store-cmd` is given) and `--json` objects to
-- stdout. A first SIGINT, SIGTERM, SIGHUP or SIGQUIT starts nothing more
-- and lets the requests in flight finish (their keys kept); a second one
-- abandons them (reported unknown, exit 2).
-- @tparam[opt] {string,...} argv the command's arguments (`arg[1]`, ...),
--   as typed: `--org-id ID`, `--orgs FILE`, `--save-to PATH`, `--check`,
--   `--resume JOURNAL`, ... (`--help` lists them). A key is never accepted
--   as a flag value: it comes from `SLASHID_API_KEY` or `--api-key-file`.
-- @treturn integer the exit status, one of @{EXIT}
-- @usage os.exit(require("slashid.cli").main(arg))
function M.main(argv)
  argv = argv or {}
  local ok, closed = pcall(core.catch_signals, (core.isatty(2) and "\n" or "") .. output.PROG ..
    ": interrupted: nothing new starts; what is in flight finishes and its keys are " ..
    "kept (interrupt again to abandon it)\n")
  if not ok then
    say("cannot start: ", tostring(closed))
    return EXIT.not_rotated
  end
  local ctx = { closed = closed }
  local status
  ok, status = pcall(run, argv, ctx)
  if not ok then
    if status == input.Interrupted then
      say("interrupted while opening or reading the input: nothing was sent")
      status = ctx.o and ctx.o.check and EXIT.unknown or EXIT.not_rotated
    elseif getmetatable(status) == args.UsageError then
      say(status.msg)
      io.stderr:write("Try '", output.PROG, " --help'.\n")
      status = EXIT.usage
    else
      say("internal error: ", tostring(status))
      status = ctx.started and EXIT.unknown or EXIT.not_rotated
    end
    local j = ctx.journal
    if j then
      pcall(j.flush, j)
      j:close()
      -- a new journal that names no organization was of no use
      if not ctx.o.resume and not j.sent_durable then os.remove(j.path)
      else say("journal ", j.path, " kept") end
    end
  end
  if ctx.reader then pcall(ctx.reader.close) end
  core.release_signals()
  return status
end

return M
