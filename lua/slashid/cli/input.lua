-- slashid.cli.input: the --orgs file and the key of --api-key-file.
-- Every source (a regular file, a FIFO given by path, a pipe, standard
-- input) is read as a descriptor, in pieces of at most 16 KiB, so one
-- rule holds for all: a line is at most 1 MiB (a longer one is that
-- line's error and the run goes on), a signal cuts a wait short, and
-- nothing read is lost. Nothing is kept per line once it is handed on.

local core = require "slashid.core"
local args = require "slashid.cli.args"

local usage_error = args.usage_error

local M = {}

local MAX_LINE = 1048576
M.MAX_LINE = MAX_LINE
local WAIT = {}      -- source.line("now"): no whole line has come yet
local LONG = {}      -- a line over MAX_LINE, skipped
M.WAIT = WAIT

-- Raised when a signal interrupts opening or reading before anything was
-- sent: main says so and exits as not rotated.
M.Interrupted = {}

-- Lines from a descriptor. line(mode) -> text | nil (end) | WAIT ("now"
-- and nothing yet) | false (a signal came while it waited) | LONG.
local function fd_source(fd)
  local buf, pos, eof, skipping = "", 1, false, false
  local src = {}
  function src.line(mode)
    while true do
      local nl = buf:find("\n", pos, true)
      if nl or (eof and pos <= #buf) then
        local stop = nl or #buf + 1
        local line = buf:sub(pos, stop - 1)
        pos = stop + 1
        if skipping then skipping = false return LONG end
        if #line > MAX_LINE then return LONG end
        return line
      end
      if eof then return nil end
      if #buf - pos + 1 > MAX_LINE then buf, pos, skipping = "", 1, true end
      local before = core.signal_count()
      local wait = type(mode) == "number" and mode or mode == "now" and 0 or -1
      local data, err = core.read_input(fd, 16384, wait)
      if data == nil then
        src.error, eof = err, true
      elseif data == false then
        -- a signal that came during this wait (not one already handled)
        if core.signal_count() > before then return false end
      elseif data == "" then
        return WAIT
      else
        if pos > 1 then buf, pos = buf:sub(pos), 1 end
        buf = buf .. data
      end
    end
  end
  -- forget what was read ahead (the reader seeks back)
  function src.reset() buf, pos, eof, skipping = "", 1, false, false end
  return src
end

-- "-", /dev/stdin, /dev/fd/N: a descriptor already open.
local function fd_of(path)
  if path == "-" or path == "/dev/stdin" then return 0 end
  local n = path:match("^/dev/fd/(%d+)$") or path:match("^/proc/self/fd/(%d+)$")
  return n and tonumber(n)
end

-- A path opened as a descriptor; a signal while the open waits (a FIFO
-- with no writer yet) raises Interrupted.
local function open_fd(path, flag, closed)
  local fd = fd_of(path)
  if fd then
    if fd == 0 and closed.stdin then usage_error(flag .. " -: standard input is closed") end
    return fd, false
  end
  local why
  fd, why = core.open_input(path)
  if fd == false or (not fd and core.signal_count() > 0) then error(M.Interrupted, 0) end
  if not fd then usage_error(flag .. ": cannot open " .. path .. ": " .. tostring(why)) end
  return fd, true
end

-- s without leading and trailing white space, in linear time.
local function trim(s)
  local a = s:find("%S")
  if not a then return "" end
  local b = #s
  while b > a and s:sub(b, b):find("%s") do b = b - 1 end
  return s:sub(a, b)
end

-- What SlashID organization IDs look like.
local UUID = "^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$"
local NOT_PRINTABLE = "[^\32-\126]"
local BOM = "\239\187\191"

-- The shard a line belongs to: its organization's 32-bit FNV-1a hash
-- modulo N (a line with no readable organization: shard 0).
function M.shard_of(org_id, n)
  if not org_id then return 0 end
  return core.fnv1a32(org_id) % n
end

-- Parses one line: nil (blank, comment), { org_id, api_key, line }, or
-- { bad = message, line, org_id = the ID when it could be read }.
local check_item
local function parse_line(line, n)
  if line == LONG then return { bad = "longer than 1 MiB (not shown)", line = n } end
  if n == 1 and line:sub(1, 3) == BOM then line = line:sub(4) end
  line = line:gsub("\r$", "")
  local first = line:find("%S")
  if not first or line:byte(first) == 35 then return nil end   -- blank, "#"
  -- split on the one tab and trim each side in linear time (a pattern
  -- with two lazy captures is cubic on a long run of spaces)
  local tab = line:find("\t", 1, true)
  local org = tab and trim(line:sub(1, tab - 1))
  local key = tab and not line:find("\t", tab + 1, true) and trim(line:sub(tab + 1))
  if not org or not key or org == "" or key == "" then
    return { bad = "ORG_ID<TAB>CURRENT_KEY expected (the line is not shown)", line = n }
  end
  if org:find(NOT_PRINTABLE) then
    return { bad = "the organization ID holds a byte outside printable ASCII " ..
                   "(the line is not shown)", line = n }
  end
  if key:find(NOT_PRINTABLE) then
    return { bad = "the key holds a byte outside printable ASCII (not shown)",
             line = n, org_id = org }
  end
  -- a key in the organization's column would be printed as one
  if not org:find(UUID) and key:find(UUID) then
    return { bad = "the columns look swapped: ORG_ID<TAB>CURRENT_KEY expected " ..
                   "(the line is not shown)", line = n }
  end
  check_item = check_item or require("slashid.options").check
  local ok, err = pcall(check_item, { org_id = org, api_key = key })
  if not ok then return { bad = (tostring(err):gsub("^slashid: ", "")), line = n, org_id = org } end
  return { org_id = org, api_key = key, line = n }
end

-- A reader of ORG_ID<TAB>CURRENT_KEY lines. reader.next(mode) -> entry
-- (see parse_line) | nil at the end (reader.interrupted when a signal
-- ended it, reader.error when reading failed) | WAIT (mode "now" only:
-- a pipe with no whole line yet). `shard`: { k, n }: lines of other
-- shards are not entries. A seekable input (a regular file, or standard
-- input redirected from one) can be counted first (prescan) for the
-- progress display.
function M.open_orgs(path, closed, shard)
  local fd, own = open_fd(path, "--orgs", closed)
  local name = path == "-" and "standard input" or path
  local start = core.seek_input(fd)
  local r = { name = name, seekable = start ~= nil and core.is_regular(fd), n = 0 }
  local src = fd_source(fd)

  local function mine(e)
    return not shard or M.shard_of(e.org_id, shard[2]) == shard[1]
  end

  function r.next(mode)
    while true do
      local line = src.line(mode)
      if line == WAIT then return WAIT end
      if line == false then r.interrupted = true return nil end
      if line == nil then r.error = src.error return nil end
      r.n = r.n + 1
      local e = parse_line(line, r.n)
      if e and mine(e) then return e end
    end
  end

  -- Counts the entries (seekable input only), then goes back to the start.
  function r.prescan()
    local count, n = 0, 0
    while true do
      local line = src.line("wait")
      if line == nil or line == false then break end
      n = n + 1
      local e = parse_line(line, n)
      if e and mine(e) then count = count + 1 end
    end
    core.seek_input(fd, start)
    src.reset()
    return count
  end

  function r.close()
    if own then core.close_input(fd) own = false end
  end
  return r
end

-- After a stop: reads the rest of `source` (when `read_all`; a second
-- signal ends the reading of a stream) just to name what was never
-- started. take(e) may claim an entry (it returns true); every other one
-- is passed to unstarted(e, id) and listed on stderr under `label`.
-- `what` ends the note on what was not read ("started", "checked").
-- Returns whether part of the input was left unread.
function M.list_rest(source, read_all, label, what, unstarted, take)
  local say = require("slashid.cli.output").say
  local n = 0
  if read_all then
    source.interrupted = nil
    while true do
      if core.signal_count() >= 2 and not source.seekable then
        source.incomplete = true
        break
      end
      local e = source.next("wait")
      if not e or e == WAIT then break end
      if not (take and take(e)) then
        local id = e.org_id or ("(line " .. tostring(e.line) .. ")")
        if n == 0 then say("never started (", label, "):") end
        n = n + 1
        unstarted(e, id)
        io.stderr:write("  ", id, "\n")
      end
    end
  end
  if n > 0 then
    say(("%d organization%s never started"):format(n, n == 1 and "" or "s"))
  end
  if source.interrupted or source.incomplete or not read_all then
    say("the rest of ", source.name, " was not read: its organizations were not ", what,
        " either")
    return true
  end
  return false
end

-- The first line of --api-key-file (PATH, or - for standard input); nil
-- when a signal came while waiting for it.
function M.read_key_file(path, closed)
  if fd_of(path) == 0 and core.signal_count() > 0 then return nil end
  local fd, own = open_fd(path, "--api-key-file", closed)
  local text = fd_source(fd).line("wait")
  if own then core.close_input(fd) end
  if text == false then return nil end
  if text == LONG then usage_error("--api-key-file: the first line is longer than 1 MiB") end
  if text == nil then usage_error("--api-key-file: nothing to read in " .. path) end
  if text:sub(1, 3) == BOM then text = text:sub(4) end
  text = text:gsub("\r$", "")
  if text == "" then usage_error("--api-key-file: the first line is empty") end
  if text:find(NOT_PRINTABLE) then
    usage_error("--api-key-file: the key holds a byte outside printable ASCII (not shown)")
  end
  return text
end

return M
