-- slashid.cli: the slashid-rotate command as a module. `main(arg)` runs
-- it and returns the exit status (it never calls os.exit), so a script,
-- bin/slashid-rotate, or a spec can drive it in-process; every process
-- state it changes (signal dispositions, descriptors 0-2) is put back
-- before it returns.
--
-- The rules are API.md's "Command line". Those that shape this file:
-- - A new key is never lost: it goes to --save-to, else stdout; when it
--   cannot go where it should (stdout closed or broken, the disk full),
--   it goes to a rescue file (mode 0600, $TMPDIR or /tmp), exit 3.
-- - Signals (src/signal.c): a first SIGINT or SIGTERM stops starting
--   organizations (the --orgs iterator ends), in-flight requests finish
--   and their keys are saved, the never-started ones are listed; a second
--   one makes multi:wait raise core.INTERRUPTED: what is in flight is
--   reported unknown and listed.
-- - --orgs is read line by line as the batch goes, results are written as
--   they arrive, and nothing per organization is kept once it is over:
--   memory stays flat for any number of lines.

local core = require "slashid.core"

local M = {}

local PROG = "slashid-rotate"
local EXIT_OK, EXIT_NOT_ROTATED, EXIT_UNKNOWN, EXIT_NOT_SAVED, EXIT_USAGE = 0, 1, 2, 3, 64
M.EXIT = { ok = EXIT_OK, not_rotated = EXIT_NOT_ROTATED, unknown = EXIT_UNKNOWN,
           not_saved = EXIT_NOT_SAVED, usage = EXIT_USAGE }

M.USAGE = [[
Usage:
  slashid-rotate --org-id ID [options]          rotate one organization's key
  slashid-rotate --orgs FILE [options]          rotate many organizations
  slashid-rotate --check (--org-id ID | --orgs FILE) [options]
                                                does the key work? (no change)

The current key comes from the environment variable SLASHID_API_KEY or from
--api-key-file PATH (its first line; - reads standard input), never from a
flag value: other users could read it with `ps`. SLASHID_ORG_ID and
SLASHID_BASE_URL are read when --org-id and --base-url are not given.

Options:
  --org-id ID             the organization (default: $SLASHID_ORG_ID)
  --api-key-file PATH     read the current key from the first line of PATH
                          (- for standard input)
  --consistency C         local_region (default) or all_regions
  --timeout N             consistency timeout, integer seconds 1..120 (30)
  --base-url URL          API base URL (default: $SLASHID_BASE_URL, else
                          https://api.slashid.com)
  --sandbox               use https://api.sandbox.slashid.com
  --request-timeout S     limit for a whole request, seconds (timeout + 15)
  --ca-file PATH          PEM CA bundle instead of the system store
  --proxy URL             use this proxy (http://, https://, socks5h://)
  --no-proxy              use no proxy, whatever the environment says
  --save-to PATH          write the new key there (mode 0600, atomically)
                          instead of printing it
  --verify                check that the new key is accepted afterwards
  --check                 only ask whether the current key is accepted:
                          exit 0 accepted, 1 refused, 2 cannot tell
  --json                  print a JSON object (one per line with --orgs):
                          org_id, outcome, status, errors, and api_key
                          unless the key was saved
  --help                  this text

Many organizations:
  --orgs FILE             one "ORG_ID<TAB>CURRENT_KEY" per line (- for
                          standard input); blank lines and lines starting
                          with # are skipped; read as the batch goes
  --concurrency N         requests in flight at once (8)
  --rate R                at most R request starts per second
  --save-to PATH          append "ORG_ID<TAB>NEW_KEY" lines to PATH (created
                          mode 0600; lines already there are never rewritten)
                          as each answer arrives; without it the same lines
                          go to stdout

Where a new key goes: --save-to, else stdout, alone on its line
("ORG_ID<TAB>NEW_KEY" with --orgs). If saving or --verify fails, the key is
printed on stdout as well. If it cannot be written where it should go, it
is written to a rescue file (mode 0600, in $TMPDIR or /tmp) named on stderr.
Progress shows on stderr (a bar on a terminal).

Interruption: a first SIGINT or SIGTERM starts no more organizations, lets
the requests in flight finish and saves their keys, then lists the
organizations never started; a second one abandons the requests in flight
and lists them as unknown.

Exit status: 0 rotated, 1 not rotated, 2 outcome unknown (the key may have
been rotated: run the same command with --check before trying again),
3 rotated but saving or --verify failed, 64 usage or argument error. With
--orgs: 2 if any is unknown, else 3 if any was not saved/verified, else 1 if
any was not rotated (or never started), else 0. See slashid-rotate(1).
]]

local UNKNOWN_ADVICE = "the key may have been rotated: do not retry blindly; first " ..
                       "check whether the old key still works (the same command with --check)"

-- ---- messages ----------------------------------------------------------

-- Control bytes (a server's message may hold terminal escapes) are shown
-- as \xNN, never sent to the operator's terminal as they are.
local function visible(s)
  return (tostring(s):gsub("[%z\1-\8\11-\31\127]", function(c)
    return ("\\x%02X"):format(c:byte())
  end))
end

local function say(...)
  local parts = { PROG, ": ", ... }
  for i = 3, #parts do parts[i] = visible(parts[i]) end
  parts[#parts + 1] = "\n"
  io.stderr:write(table.concat(parts))
end

-- Raised for usage and argument errors; main turns it into exit 64.
local UsageError = {}
local function usage_error(msg)
  error(setmetatable({ msg = msg }, UsageError), 0)
end

local function is_interrupt(err)
  return type(err) == "string" and err:find(core.INTERRUPTED, 1, true) ~= nil
end

local function all_errors(errors)
  local t = {}
  for _, e in ipairs(errors or {}) do t[#t + 1] = tostring(e.message or "") end
  return table.concat(t, "; ")
end

local function first_error(errors)
  local e = errors and errors[1]
  if not e then return "" end
  local msg = tostring(e.message or "")
  if e.httpcode and e.httpcode ~= 0 and not msg:find("HTTP " .. e.httpcode, 1, true) then
    msg = "HTTP " .. e.httpcode .. ": " .. msg
  end
  return msg
end

-- ---- JSON (values encoded by lua-cjson) --------------------------------

-- Valid UTF-8 passes; each maximal invalid subpart becomes U+FFFD (what a
-- browser would show), so the output is always valid UTF-8. A server's
-- message is free text: this keeps a line decodable by strict parsers.
local REPLACEMENT = "\239\191\189"
local function utf8_clean(s)
  if not s:find("[\128-\255]") then return s end
  local out, n, i, len = {}, 0, 1, #s
  local byte = string.byte
  while i <= len do
    local ascii_end = (s:find("[\128-\255]", i) or len + 1) - 1
    if ascii_end >= i then            -- a run of ASCII, copied at once
      n = n + 1
      out[n] = s:sub(i, ascii_end)
      i = ascii_end + 1
      if i > len then break end
    end
    local c = byte(s, i)
    local need, lo, hi = 0, 0x80, 0xBF
    if c >= 0xC2 and c <= 0xDF then need = 1
    elseif c == 0xE0 then need, lo = 2, 0xA0
    elseif c == 0xED then need, hi = 2, 0x9F           -- no surrogates
    elseif c >= 0xE1 and c <= 0xEF then need = 2
    elseif c == 0xF0 then need, lo = 3, 0x90
    elseif c == 0xF4 then need, hi = 3, 0x8F           -- at most U+10FFFF
    elseif c >= 0xF1 and c <= 0xF3 then need = 3
    else need = -1 end
    local j, ok = i + 1, need >= 0
    for k = 1, (need > 0 and need or 0) do
      local b = byte(s, j)
      local l, h = 0x80, 0xBF
      if k == 1 then l, h = lo, hi end
      if not b or b < l or b > h then ok = false break end
      j = j + 1
    end
    n = n + 1
    if ok then
      out[n] = s:sub(i, j - 1)
      i = j
    else
      out[n] = REPLACEMENT
      i = (need < 0) and i + 1 or j   -- the bytes that fit are the subpart
    end
  end
  return table.concat(out)
end
M.utf8_clean = utf8_clean

local cjson_encode
local function enc(v)
  cjson_encode = cjson_encode or require("cjson").encode
  if type(v) == "string" then v = utf8_clean(v) end
  return cjson_encode(v)
end

local function json_errors(errors)
  local parts = {}
  for k, e in ipairs(errors or {}) do
    local s = '{"httpcode":' .. enc(tonumber(e.httpcode) or 0) ..
              ',"message":' .. enc(tostring(e.message or ""))
    if e.curl_code then s = s .. ',"curl_code":' .. enc(tonumber(e.curl_code) or 0) end
    parts[k] = s .. "}"
  end
  return "[" .. table.concat(parts, ",") .. "]"
end

-- One result object, members in a fixed order: org_id, outcome, status,
-- errors[, api_key].
local function json_line(org_id, outcome, status, errors, api_key)
  local s = '{"org_id":' .. enc(org_id) .. ',"outcome":' .. enc(outcome) ..
            ',"status":' .. enc(tonumber(status) or 0) .. ',"errors":' .. json_errors(errors)
  if api_key then s = s .. ',"api_key":' .. enc(api_key) end
  return s .. "}"
end
M.json_line = json_line

-- ---- where keys go: stdout, the key file, a rescue file ----------------

-- stdout, written line by line and flushed; after one failure it is
-- treated as broken (SIGPIPE is ignored: a closed pipe is EPIPE here).
local function new_stdout(closed)
  -- /dev/null (/dev/zero, /dev/urandom...) takes every write without an
  -- error: a key printed there is lost as surely as on a closed stdout, so
  -- it goes to the rescue file
  local out = { broken = closed.stdout and "standard output is closed" or
                core.is_memory_device(1) and
                  "standard output is /dev/null or another memory device" or nil }
  function out.line(s)
    if out.broken then return false end
    local ok, err = io.stdout:write(s, "\n")
    if ok then ok, err = io.stdout:flush() end
    if not ok then
      out.broken = tostring(err or "cannot write")
      say("standard output: ", out.broken)
      return false
    end
    return true
  end
  return out
end

-- The rescue file: created on first need, exclusively (never through a
-- link someone left), mode 0600, in $TMPDIR, else /tmp; one
-- ORG_ID<TAB>NEW_KEY line per key, appended and fsync'ed.
local function new_rescue()
  local r = { paths = {}, count = 0 }
  local function dirs()
    local t, seen = {}, {}
    for _, d in ipairs({ os.getenv("TMPDIR") or "", "/tmp" }) do
      d = d:gsub("(.)/+$", "%1")
      if d ~= "" and not seen[d] then t[#t + 1], seen[d] = d, true end
    end
    return t
  end
  -- Returns the file's path, or nil and why no file could take it.
  function r.add(org_id, key)
    local line = org_id .. "\t" .. key .. "\n"
    local why
    if r.path then
      local ok, err = core.append_key_line(r.path, line, "n")
      if ok then r.count = r.count + 1 return r.path end
      why = err
      r.path = nil      -- that one failed (disk full?): try a new one
    end
    for _, dir in ipairs(dirs()) do
      for _ = 1, 16 do
        local path = ("%s/%s-rescue-%s-%08x.tsv"):format(dir, PROG, os.date("!%Y%m%dT%H%M%SZ"),
                                                          math.floor(core.random() * 4294967296))
        local ok, err = core.append_key_line(path, line, "x")
        if ok then
          r.path, r.count = path, r.count + 1
          r.paths[#r.paths + 1] = path
          say("rescue file ", path, " (mode 0600) created: it holds new keys that could ",
              "not be written where they should go; store them, then delete it")
          return path
        end
        why = err
        if not tostring(err):find("File exists", 1, true) then break end
      end
    end
    return nil, why
  end
  return r
end

-- ---- the command line --------------------------------------------------

local KEY_FLAGS = { ["--api-key"] = true, ["--api_key"] = true, ["--key"] = true }
local VALUE_FLAGS = {
  "--org-id", "--api-key-file", "--consistency", "--timeout", "--base-url",
  "--request-timeout", "--ca-file", "--proxy", "--save-to", "--orgs",
  "--concurrency", "--rate",
}
local BOOL_FLAGS = { "--sandbox", "--no-proxy", "--verify", "--json", "--check" }
local KNOWN = {}
for _, f in ipairs(VALUE_FLAGS) do KNOWN[f] = true end
for _, f in ipairs(BOOL_FLAGS) do KNOWN[f] = true end

-- Library option name -> the flag that sets it, for error messages.
local FLAG_OF = {
  org_id = "--org-id", api_key = "SLASHID_API_KEY or --api-key-file",
  consistency = "--consistency", timeout = "--timeout", base_url = "--base-url",
  request_timeout = "--request-timeout", ca_file = "--ca-file", proxy = "--proxy",
  save_to = "--save-to", concurrency = "--concurrency", rate = "--rate",
}

local parser
local function get_parser()
  if parser then return parser end
  local argparse = require "argparse"
  parser = argparse(PROG):add_help(false)
  for _, f in ipairs(VALUE_FLAGS) do parser:option(f):overwrite(false) end
  for _, f in ipairs(BOOL_FLAGS) do parser:flag(f):overwrite(false) end
  return parser
end

-- argparse's messages quote what was typed: anything that is not one of
-- our flag names is shown as "(not shown)" (it could be a key).
local function scrub(msg)
  return (msg:gsub("'([^']*)'", function(tok)
    if KNOWN[tok] or (#tok <= 20 and tok:find("^%-%-?[%a][%w-]*$")) then return nil end
    return "'(not shown)'"
  end))
end

local function parse(argv)
  local takes_value = {}
  for _, f in ipairs(VALUE_FLAGS) do takes_value[f] = true end
  local args, value_next = {}, false
  for i = 1, #argv do
    local a = tostring(argv[i])
    if a == "--" and not value_next then
      for k = i, #argv do args[#args + 1] = tostring(argv[k]) end
      break
    end
    if value_next and a:find("^%-[%d.]") then
      -- `--timeout -1`: argparse would take -1 for an option
      args[#args] = args[#args] .. "=" .. a
      value_next = false
    else
      if not value_next then
        local name = a:match("^(%-%-?[^=]+)")
        if KEY_FLAGS[name] then
          usage_error(name .. " is not accepted: a key given on the command line " ..
                      "can be read by other users (ps, /proc, shell history). " ..
                      "Set SLASHID_API_KEY or use --api-key-file PATH (- for standard input)")
        end
        if name == "--help" or name == "-h" then return { help = true } end
      end
      args[#args + 1] = a
      value_next = not value_next and takes_value[a] or false
    end
  end
  local ok, result = get_parser():pparse(args)
  if not ok then usage_error(scrub(tostring(result))) end
  return result
end

local function number_flag(o, field, flag)
  local v = o[field]
  if v == nil then return nil end
  local n = tonumber(v)
  if n == nil then usage_error(flag .. ": a number expected") end
  return n
end

-- Names the flag behind a library option in a `slashid: ` message.
local function explain(msg)
  return (msg:gsub("option '([%w_]+)'", function(name)
    local flag = FLAG_OF[name]
    return flag and ("option '" .. name .. "' (" .. flag .. ")") or nil
  end))
end

-- A library call whose `slashid: ` errors are argument errors (exit 64).
local function checked(fn, ...)
  local ok, a, b, c, d = pcall(fn, ...)
  if ok then return a, b, c, d end
  if type(a) == "string" and a:sub(1, 9) == "slashid: " and not is_interrupt(a) then
    usage_error(explain(a))
  end
  error(a, 0)
end

-- The library options every mode shares.
local function library_options(o, check)
  local opts = {
    base_url = o.base_url,
    request_timeout = number_flag(o, "request_timeout", "--request-timeout"),
    ca_file = o.ca_file,
  }
  if o.sandbox then opts.base_url = require("slashid").SANDBOX end
  if o.proxy then opts.proxy = o.proxy elseif o.no_proxy then opts.proxy = false end
  if not check then
    opts.consistency = o.consistency
    opts.timeout = number_flag(o, "timeout", "--timeout")
    opts.verify = o.verify or nil
  end
  return opts
end

local function check_combinations(o)
  local function refuse(a, b)
    if o[a[1]] and o[b[1]] ~= nil and o[b[1]] ~= false then
      usage_error(a[2] .. " and " .. b[2] .. " cannot be used together")
    end
  end
  refuse({ "orgs", "--orgs" }, { "org_id", "--org-id" })
  refuse({ "orgs", "--orgs" }, { "api_key_file", "--api-key-file (the keys are in the --orgs file)" })
  refuse({ "sandbox", "--sandbox" }, { "base_url", "--base-url" })
  refuse({ "no_proxy", "--no-proxy" }, { "proxy", "--proxy" })
  if o.check then
    for _, f in ipairs({ { "save_to", "--save-to" }, { "verify", "--verify" },
                         { "consistency", "--consistency" }, { "timeout", "--timeout" } }) do
      if o[f[1]] then usage_error(f[2] .. " does not apply to --check (it changes nothing)") end
    end
  end
  if not o.orgs then
    for _, f in ipairs({ "concurrency", "rate" }) do
      if o[f] then usage_error("--" .. f .. " applies to --orgs only") end
    end
  end
  -- the appended key lines would be read back as organizations to rotate,
  -- for ever
  if o.orgs and o.save_to then
    local input = o.orgs == "-" and "/proc/self/fd/0" or o.orgs
    if core.key_file_identity(input) == core.key_file_identity(o.save_to) then
      usage_error("--orgs and --save-to name the same file")
    end
  end
  -- credentials in a flag are visible to every user in `ps`
  if type(o.proxy) == "string" and o.proxy:find("^[%a][%w+.-]*://[^/?#]*@") then
    usage_error("--proxy must not hold credentials (ps shows them): " ..
                "put the proxy URL in https_proxy instead")
  end
end

-- ---- input: the --orgs file, the key on standard input -----------------

local MAX_LINE = 1048576
local WAIT = {}      -- reader.next("now"): no whole line has come yet
local LONG = {}      -- a line over MAX_LINE, skipped

-- Raw lines from a descriptor (standard input, a pipe): read with
-- core.read_input, so a signal cuts a wait short and nothing read is lost.
-- line(mode) -> text | nil (end) | WAIT ("now" and nothing yet) | false
-- (a signal came while it waited). At most MAX_LINE bytes are held.
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
        return line
      end
      if eof then return nil end
      if #buf - pos + 1 > MAX_LINE then buf, pos, skipping = "", 1, true end
      local before = core.signal_count()
      local data, err = core.read_input(fd, 16384, mode == "now" and 0 or -1)
      if data == nil then
        src.error, eof = err, true
      elseif data == false then
        -- a signal that came during this wait (not one already handled)
        if core.signal_count() > before then return false end
      elseif data == "" then
        return WAIT
      else
        buf, pos = buf:sub(pos) .. data, 1
      end
    end
  end
  return src
end

-- Raw lines from a Lua file (a regular file: reads never wait long).
local function file_source(f)
  local src = {}
  function src.line()
    local line, err = f:read("*l")
    if line == nil and err then
      if core.signal_count() > 0 then return false end
      src.error = err
    end
    return line
  end
  return src
end

-- "-", /dev/stdin, /dev/fd/N: a descriptor to read without stdio.
local function fd_of(path)
  if path == "-" or path == "/dev/stdin" then return 0 end
  local n = path:match("^/dev/fd/(%d+)$") or path:match("^/proc/self/fd/(%d+)$")
  return n and tonumber(n)
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

-- io.open, except that a signal interrupting the open (a FIFO waits for
-- its writer) raises Interrupted: nothing was read, nothing sent.
local Interrupted = {}
local function open_input(path, flag)
  local f, why = io.open(path, "rb")
  if not f and core.signal_count() > 0 then error(Interrupted, 0) end
  if not f then usage_error(flag .. ": cannot open it: " .. tostring(why)) end
  return f
end

-- A reader of ORG_ID<TAB>CURRENT_KEY lines. reader.next(mode) -> entry
-- { org_id, api_key, line } | { bad = message, line } | nil at the end
-- (reader.interrupted when a signal ended it) | WAIT (mode "now" only).
-- Nothing is kept per line. `seekable`: a regular file (or standard input
-- redirected from one), read twice: a first pass checks every line before
-- anything is sent, and counts them. Anything else (a pipe) is read as it
-- comes; mode "now" never waits for it.
local function open_orgs(path, closed)
  local f
  if path == "-" then
    if closed.stdin then usage_error("--orgs -: standard input is closed") end
    f = io.stdin
  else
    f = open_input(path, "--orgs")
  end
  local name = path == "-" and "standard input" or path
  local start = f:seek("cur")
  local r = { name = name, seekable = start ~= nil and f:seek("end") ~= nil, n = 0 }
  local src
  if r.seekable then
    f:seek("set", start)
    src = file_source(f)
  elseif fd_of(path) then
    src = fd_source(fd_of(path))
  else
    src = file_source(f)      -- a named pipe: read through stdio, waits included
  end

  local check_item
  local function parse_line(line, n)
    if line == LONG then return { bad = "longer than 1 MiB (not shown)", line = n } end
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
    -- a key in the organization's column would be printed as one
    if not org:find(UUID) and key:find(UUID) then
      return { bad = "the columns look swapped: ORG_ID<TAB>CURRENT_KEY expected " ..
                     "(the line is not shown)", line = n }
    end
    check_item = check_item or require("slashid.options").check
    local ok, err = pcall(check_item, { org_id = org, api_key = key })
    if not ok then return { bad = (tostring(err):gsub("^slashid: ", "")), line = n } end
    return { org_id = org, api_key = key, line = n }
  end

  function r.next(mode)
    while true do
      local line = src.line(mode)
      if line == WAIT then return WAIT end
      if line == false then r.interrupted = true return nil end
      if line == nil then r.error = src.error return nil end
      r.n = r.n + 1
      local e = parse_line(line, r.n)
      if e then return e end
    end
  end

  -- First pass (seekable input only): every line checked; a bad one is a
  -- usage error. Returns how many organizations there are.
  function r.prescan()
    local count, n = 0, 0
    for line in f:lines() do
      n = n + 1
      local e = parse_line(line, n)
      if e and e.bad then usage_error(("%s line %d: %s"):format(name, n, e.bad)) end
      if e then count = count + 1 end
    end
    f:seek("set", start)
    return count
  end

  function r.close()
    if f ~= io.stdin then f:close() end
  end
  return r
end

-- The first line of --api-key-file (PATH, or - for standard input); nil
-- when a signal came while waiting for it.
local function read_key_file(path, closed)
  local text, why
  if fd_of(path) then
    if path == "-" and closed.stdin then usage_error("--api-key-file -: standard input is closed") end
    if core.signal_count() > 0 then return nil end
    text = fd_source(fd_of(path)).line("wait")
    if text == false then return nil end
    if text == LONG then usage_error("--api-key-file: the first line is longer than 1 MiB") end
    if text == nil then usage_error("--api-key-file: nothing to read in " .. path) end
  else
    local f = open_input(path, "--api-key-file")
    text, why = f:read("*a")      -- whole: binary-safe (a NUL is refused below)
    f:close()
    -- a FIFO's writer may hold it open: a signal then interrupts the read
    if not text and core.signal_count() > 0 then error(Interrupted, 0) end
    if not text then usage_error("--api-key-file: cannot read it: " .. tostring(why)) end
    text = text:match("^([^\n]*)")
  end
  text = text:gsub("\r$", "")
  if text == "" then usage_error("--api-key-file: the first line is empty") end
  return text
end

-- ---- progress on stderr ------------------------------------------------

local function new_progress(total, what)
  local terminal = core.isatty(2)
  local p = { done = 0, counts = {} }
  local width, last = 30, 0
  local function bar(force)
    local now = core.now()
    if not force and now - last < 0.1 then return end
    last = now
    local c = p.counts
    local head
    if total and total > 0 then
      local fill = math.floor(width * p.done / total)
      head = ("[%s%s] %d/%d"):format(("#"):rep(fill), ("."):rep(width - fill), p.done, total)
    else
      head = ("%d done"):format(p.done)
    end
    local tail = {}
    for _, k in ipairs(what) do tail[#tail + 1] = ("%s %d"):format(k:gsub("_", " "), c[k] or 0) end
    io.stderr:write("\r\27[K", head, "  ", table.concat(tail, "  "))
  end
  -- One organization finished; `note` says more for a failure.
  function p.item(org_id, outcome, note, quiet)
    p.done = p.done + 1
    p.counts[outcome] = (p.counts[outcome] or 0) + 1
    local text = outcome:gsub("_", " ") .. ((note and note ~= "") and (": " .. note) or "")
    if terminal then
      if not quiet then
        io.stderr:write("\r\27[K", PROG, ": ", visible(org_id), ": ", visible(text), "\n")
      end
      bar(not quiet)
    else
      say(total and ("[%d/%d] "):format(p.done, total) or ("[%d] "):format(p.done), org_id, ": ", text)
    end
  end
  function p.finish()
    if terminal and p.done > 0 then bar(true) io.stderr:write("\n") end
  end
  return p
end

-- ---- one organization --------------------------------------------------

-- Waits for an op; on a second signal, cancels it (an answer already
-- complete is kept) and returns true.
local function wait_op(op)
  local ok, err = pcall(op.wait, op)
  if ok then return false end
  if not is_interrupt(err) then error(err, 0) end
  op:cancel()
  return true
end

-- The key's way out for one organization, once rotated. Returns the
-- exit status.
local function deliver_one(ctx, org_id, result, errors, info)
  local o, out = ctx.o, ctx.out
  local key = result.api_key
  local save_failed = info.saved == false
  local incomplete = save_failed or info.verified == false
  local on_stdout = not o.save_to or incomplete
  local printed
  if o.json then
    printed = out.line(json_line(org_id, "rotated", info.status, errors, on_stdout and key or nil))
  elseif on_stdout then
    printed = out.line(key)
  end
  local rescued, rescue_why
  if (on_stdout and not printed) or save_failed then
    rescued, rescue_why = ctx.rescue.add(org_id, key)
  end
  if on_stdout and not printed then
    if rescued then
      say(org_id, ": rotated, but the new key could not be written to standard output (",
          out.broken or "?", "): it is in the rescue file ", rescued, "; store it now")
    else
      -- Nothing else could take it: stderr is the last way out.
      say(org_id, ": rotated, but the new key could not be written to standard output (",
          out.broken or "?", ") nor to a rescue file (", tostring(rescue_why),
          "). The new key, store it now: ", key)
    end
    return EXIT_NOT_SAVED
  end
  if incomplete then
    say(org_id, ": rotated, but: ", all_errors(errors),
        ". The new key is printed on stdout", rescued and (" and in the rescue file " .. rescued) or "",
        ": store it now")
    return EXIT_NOT_SAVED
  end
  say(org_id, ": rotated", info.verified and " and verified" or "",
      o.save_to and ("; the new key is saved in " .. o.save_to) or "; the new key is on stdout")
  return EXIT_OK
end

local function rotate_one(ctx, opts, org_id)
  local slashid = require "slashid"
  local o = ctx.o
  opts.save_to = o.save_to
  if core.signal_count() > 0 then
    say(org_id, ": interrupted before the rotation started: not rotated")
    return EXIT_NOT_ROTATED
  end
  if o.save_to then
    -- learned before a key is issued, not after
    local ok, why = core.write_key_file(o.save_to, "", "check")
    if not ok then usage_error("--save-to: " .. tostring(why)) end
  end
  local op = checked(slashid.start_rotate_key, opts)
  ctx.started = true
  local aborted = wait_op(op)
  local result, errors, _, info = op:results()
  if result then return deliver_one(ctx, org_id, result, errors, info) end
  if o.json then ctx.out.line(json_line(org_id, info.outcome, info.status, errors)) end
  if aborted then say(org_id, ": interrupted: the request was abandoned") end
  if info.outcome == "not_rotated" then
    say(org_id, ": not rotated: ", all_errors(errors))
    return EXIT_NOT_ROTATED
  end
  say(org_id, ": outcome unknown: ", all_errors(errors), ". ", UNKNOWN_ADVICE)
  return EXIT_UNKNOWN
end

-- check_key as an op (start_check_key): a second signal abandons it at
-- once, as it does a rotation.
local CHECK_WORD = { [true] = "accepted", [false] = "refused" }
local function check_call(opts)
  local op = checked(require("slashid").start_check_key, opts)
  if wait_op(op) then
    return nil, { { httpcode = 0, message = "interrupted: the check was abandoned" } },
           { status = 0 }, true
  end
  return op:results()
end

local function check_one(ctx, opts, org_id)
  if core.signal_count() > 0 then
    say(org_id, ": interrupted before the check started: cannot tell")
    return EXIT_UNKNOWN
  end
  ctx.started = true
  local ok, errors, info = check_call(opts)
  local word = CHECK_WORD[ok] or "unknown"
  if ctx.o.json then ctx.out.line(json_line(org_id, word, info.status, errors)) end
  if ok then
    say(org_id, ": the key is accepted")
    return EXIT_OK
  elseif ok == false then
    say(org_id, ": the key is refused (HTTP ", tostring(info.status), ")")
    return EXIT_NOT_ROTATED
  end
  say(org_id, ": cannot tell whether the key works: ", all_errors(errors))
  return EXIT_UNKNOWN
end

local function one(ctx)
  local o = ctx.o
  local opts = library_options(o, o.check)
  opts.org_id = o.org_id
  local org_id = o.org_id or os.getenv("SLASHID_ORG_ID")
  if org_id == nil or org_id == "" then
    usage_error("missing --org-id (or set SLASHID_ORG_ID)")
  end
  if o.api_key_file then
    opts.api_key = read_key_file(o.api_key_file, ctx.closed)
    if opts.api_key == nil then
      say(org_id, ": interrupted while reading the key: nothing was sent")
      return o.check and EXIT_UNKNOWN or EXIT_NOT_ROTATED
    end
  elseif (os.getenv("SLASHID_API_KEY") or "") == "" then
    usage_error("no API key: set SLASHID_API_KEY or use --api-key-file PATH")
  end
  if o.check then return check_one(ctx, opts, org_id) end
  return rotate_one(ctx, opts, org_id)
end

-- ---- many organizations ------------------------------------------------

local function status_of(t)
  if t.unknown > 0 then return EXIT_UNKNOWN end
  if t.incomplete > 0 then return EXIT_NOT_SAVED end
  if t.not_rotated > 0 or t.unread then return EXIT_NOT_ROTATED end
  return EXIT_OK
end

-- Lists the organizations a stop left unstarted: the rest of the input
-- is read just for their ids (each counts as not rotated / not checked).
local function list_rest(ctx, reader, tally, key, message, read_all)
  local o = ctx.o
  local n = 0
  if read_all and not reader.seekable then
    say("reading the rest of ", reader.name, " to list the organizations not started ",
        "(interrupt again to skip this)")
  end
  if read_all then
    reader.interrupted = nil
    while true do
      if core.signal_count() >= 2 and not reader.seekable then
        reader.incomplete = true
        break
      end
      local e = reader.next("wait")
      if not e then break end
      local id = e.bad and ("(line " .. e.line .. ")") or e.org_id
      if n == 0 then say("never started (", message, "):") end
      n = n + 1
      tally.total, tally[key] = tally.total + 1, tally[key] + 1
      if o.json then
        ctx.out.line(json_line(id, key, 0, { { httpcode = 0, message = message } }))
      end
      io.stderr:write("  ", id, "\n")
    end
  end
  if n > 0 then
    say(("%d organization%s never started"):format(n, n == 1 and "" or "s"))
  end
  if reader.interrupted or reader.incomplete or not read_all then
    say("the rest of ", reader.name, " was not read: its organizations were not started either")
    -- unread lines may name organizations: they count as not done
    tally.unread = true
  end
  return n
end

local function summary(tally, what)
  local c = tally
  if what == "check" then
    say(("%d organization%s checked: %d accepted, %d refused, %d cannot tell"):format(
        c.total, c.total == 1 and "" or "s", c.accepted, c.refused, c.unknown))
  else
    say(("%d organization%s: %d rotated%s, %d not rotated, %d unknown"):format(
        c.total, c.total == 1 and "" or "s", c.rotated,
        c.incomplete > 0 and (" (" .. c.incomplete .. " not saved or not verified)") or "",
        c.not_rotated, c.unknown))
  end
end

local function rotate_many(ctx, reader, opts, total)
  local slashid = require "slashid"
  local o, out = ctx.o, ctx.out
  local tally = { total = 0, rotated = 0, not_rotated = 0, unknown = 0, incomplete = 0 }
  local progress = new_progress(total, { "rotated", "not_rotated", "unknown" })
  local in_flight, org_of, pulled = {}, {}, 0   -- org -> index, index -> org
  local stopped = false

  local function report(org_id, outcome, status, errors, note)
    tally.total = tally.total + 1
    tally[outcome] = tally[outcome] + 1
    if o.json then out.line(json_line(org_id, outcome, status, errors)) end
    progress.item(org_id, outcome, note)
  end

  -- A rotated organization: its key goes to the file, else stdout; any
  -- failure on the way sends it to the rescue file too.
  local function rotated(org_id, item)
    local key, info, errors = item.result.api_key, item.info, item.errors
    local line = org_id .. "\t" .. key
    local incomplete = info.verified == false
    local save_failed
    if o.save_to then
      local ok, why = core.append_key_line(o.save_to, line .. "\n", "l", ctx.saved_to)
      if ok then ctx.saved_to = why end
      if not ok then
        save_failed, incomplete = true, true
        errors[#errors + 1] = { httpcode = 0, message = "the key was rotated but not saved: " ..
                                tostring(why) }
      end
    end
    local on_stdout = not o.save_to or incomplete
    local printed
    if o.json then
      printed = out.line(json_line(org_id, "rotated", info.status, errors, on_stdout and key or nil))
    elseif on_stdout then
      printed = out.line(line)
    end
    local note = ""
    if (on_stdout and not printed) or save_failed then
      local path, why = ctx.rescue.add(org_id, key)
      if on_stdout and not printed then
        incomplete = true
        if path then
          note = "the new key could not be written to standard output: it is in the rescue file " .. path
        else
          note = "the new key could not be written anywhere (" .. tostring(why) .. "). The new key: " .. key
        end
      else
        note = all_errors(errors) .. " (the new key is on stdout" ..
               (path and (" and in the rescue file " .. path) or "") .. ")"
      end
    elseif incomplete then
      note = all_errors(errors) .. " (the new key is on stdout)"
    end
    tally.total, tally.rotated = tally.total + 1, tally.rotated + 1
    if incomplete then tally.incomplete = tally.incomplete + 1 end
    progress.item(org_id, "rotated", incomplete and ("but " .. note) or "", not incomplete)
  end

  -- The batch runs in rounds: one rotate_keys call while lines come. A
  -- pipe that has no whole line yet while requests are in flight ends the
  -- round (their answers must not wait on the producer: libcurl would
  -- time them out); once they are done, nothing is in flight and the
  -- next round may wait for input as long as it takes.
  local round_pulled, round_done, stalled = 0, 0, false
  local function pull()
    while true do
      if core.signal_count() > 0 then stopped = true return nil end
      local e = reader.next(round_pulled > round_done and "now" or "wait")
      if e == WAIT then stalled = true return nil end
      if e == nil then
        if reader.interrupted then stopped = true end
        return nil
      end
      if e.bad then
        report("(line " .. e.line .. ")", "not_rotated", 0,
               { { httpcode = 0, message = ("%s line %d: %s"):format(reader.name, e.line, e.bad) } },
               "line " .. e.line .. ": " .. e.bad)
      elseif in_flight[e.org_id] then
        local msg = ("%s line %d: the organization of line %d again, still in flight " ..
                     "(its rotation would present a key the first one may kill): not sent")
                    :format(reader.name, e.line, org_of[in_flight[e.org_id]].line)
        report(e.org_id, "not_rotated", 0, { { httpcode = 0, message = msg } }, msg)
      else
        round_pulled = round_pulled + 1
        pulled = pulled + 1
        in_flight[e.org_id] = round_pulled
        org_of[round_pulled] = { id = e.org_id, line = e.line }
        return { org_id = e.org_id, api_key = e.api_key }
      end
    end
  end

  opts.on_result = function(index, item)
    local org = org_of[index]
    org_of[index] = nil
    round_done = round_done + 1
    if in_flight[org.id] == index then in_flight[org.id] = nil end
    if item.result then
      rotated(org.id, item)
    else
      report(org.id, item.info.outcome, item.info.status, item.errors, first_error(item.errors))
    end
  end
  opts.keep_results = false

  ctx.started = true
  local ok, err
  repeat
    round_pulled, round_done, stalled = 0, 0, false
    ok, err = pcall(slashid.rotate_keys, pull, opts)
    -- our own reader or result writer failed: every key in flight has been
    -- delivered (and written) before rotate_keys returned; stop here
    if ok and (err.list_error or err.on_result_error) then
      ok, err = false, err.list_error or err.on_result_error
    end
  until not ok or not stalled or stopped
  if not ok then
    if not is_interrupt(err) then
      if type(err) == "string" and err:sub(1, 9) == "slashid: " and pulled == 0 then
        usage_error(explain(err))
      end
      error(err, 0)
    end
    -- A second signal: what is still in flight is abandoned.
    progress.finish()
    local ids = {}
    for index, org in pairs(org_of) do ids[#ids + 1] = { index, org.id } end
    table.sort(ids, function(a, b) return a[1] < b[1] end)
    local msg = "interrupted before the answer arrived (the request may have been sent)"
    for _, v in ipairs(ids) do
      tally.total, tally.unknown = tally.total + 1, tally.unknown + 1
      if o.json then out.line(json_line(v[2], "unknown", 0, { { httpcode = 0, message = msg } })) end
    end
    say("interrupted by a second signal: ", #ids, " request", #ids == 1 and "" or "s",
        " abandoned in flight")
    if #ids > 0 then
      say("outcome unknown (", UNKNOWN_ADVICE, "):")
      for _, v in ipairs(ids) do io.stderr:write("  ", v[2], "\n") end
    end
    list_rest(ctx, reader, tally, "not_rotated", "interrupted", reader.seekable)
  else
    progress.finish()
    if stopped then
      say("interrupted: no more organizations started; those in flight finished",
          o.save_to and (" and their keys are in " .. o.save_to) or "")
      list_rest(ctx, reader, tally, "not_rotated", "interrupted", true)
    elseif reader.error then
      say("cannot read ", reader.name, ": ", tostring(reader.error),
          ": the organizations after line ", reader.n, " were not started")
      tally.not_rotated = tally.not_rotated + 1
    end
  end
  if tally.total == 0 and not stopped and not reader.error and not tally.unread then
    say(reader.name, ": no organizations to rotate")
    return EXIT_OK
  end
  summary(tally, "rotate")
  if tally.unknown > 0 then say("for the organizations whose outcome is unknown, ", UNKNOWN_ADVICE) end
  if #ctx.rescue.paths > 0 then
    say(ctx.rescue.count, " new key", ctx.rescue.count == 1 and " is" or "s are",
        " in the rescue file", #ctx.rescue.paths == 1 and " " or "s ",
        table.concat(ctx.rescue.paths, ", "), ": store them, then delete it")
  end
  return status_of(tally)
end

-- --check --orgs: one organization at a time (the recovery step after an
-- unknown outcome, for a handful of organizations), --rate honoured.
local function check_many(ctx, reader, opts, total)
  local o, out = ctx.o, ctx.out
  local tally = { total = 0, accepted = 0, refused = 0, unknown = 0 }
  local progress = new_progress(total, { "accepted", "refused", "unknown" })
  local rate = number_flag(o, "rate", "--rate")
  local sleeper = rate and core.multi(true)   -- a wait that a signal cuts short
  local next_start = core.now()
  local stopped, aborted = false, false
  ctx.started = true
  while true do
    if core.signal_count() > 0 then stopped = true break end
    local e = reader.next("wait")
    if e == nil then
      stopped = reader.interrupted
      break
    end
    local id = e.bad and ("(line " .. e.line .. ")") or e.org_id
    local word, status, errors
    if e.bad then
      word, status = "unknown", 0
      errors = { { httpcode = 0, message = ("%s line %d: %s"):format(reader.name, e.line, e.bad) } }
    else
      if rate then
        local d = next_start - core.now()
        if d > 0 then
          local ok, err = pcall(sleeper.wait, sleeper, d)
          if not ok and not is_interrupt(err) then error(err, 0) end
          if core.signal_count() > 0 then reader.unread = e stopped = true break end
        end
        next_start = math.max(next_start, core.now()) + 1 / rate
      end
      local item = {}
      for k, v in pairs(opts) do item[k] = v end
      item.org_id, item.api_key = e.org_id, e.api_key
      local ok, info, cut
      ok, errors, info, cut = check_call(item)
      word, status = CHECK_WORD[ok] or "unknown", info.status
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
    if reader.unread then
      tally.total, tally.unknown = tally.total + 1, tally.unknown + 1
      if o.json then
        out.line(json_line(reader.unread.org_id, "unknown", 0,
                           { { httpcode = 0, message = "not checked: interrupted" } }))
      end
      say("not checked (interrupted): ", reader.unread.org_id)
    end
    say("interrupted: no more organizations checked")
    list_rest(ctx, reader, tally, "unknown", "not checked: interrupted",
                            not aborted or reader.seekable)
  end
  if tally.total == 0 and not (stopped or aborted) and not reader.error then
    say(reader.name, ": no organizations to check")
    return EXIT_OK
  end
  if reader.error and not (stopped or aborted) then
    say("cannot read ", reader.name, ": ", tostring(reader.error),
        ": the organizations after line ", reader.n, " were not checked")
  end
  summary(tally, "check")
  -- organizations left unread (interrupted, or a read error) cannot be told
  if tally.unknown > 0 or tally.unread or reader.error then return EXIT_UNKNOWN end
  if tally.refused > 0 then return EXIT_NOT_ROTATED end
  return EXIT_OK
end

local function many(ctx)
  local o = ctx.o
  local opts = library_options(o, o.check)
  local reader = open_orgs(o.orgs, ctx.closed)
  ctx.reader = reader
  local total
  if o.check then
    -- check_key's options, checked before anything is read or sent
    checked(function()
      local options = require "slashid.options"
      options.check(opts, options.REQUEST_OPTIONS)
      -- checked as for a batch (one at a time is within any --concurrency)
      options.check_batch({ concurrency = number_flag(o, "concurrency", "--concurrency"),
                            rate = number_flag(o, "rate", "--rate") })
    end)
    if reader.seekable then total = reader.prescan() end
    return check_many(ctx, reader, opts, total)
  end
  opts.concurrency = number_flag(o, "concurrency", "--concurrency")
  opts.rate = number_flag(o, "rate", "--rate")
  -- Every option checked the way rotate_keys will, before the file is
  -- read, the key file created, or anything sent.
  checked(function() require("slashid.options").check_batch(opts) end)
  if reader.seekable then total = reader.prescan() end
  if o.save_to then
    local ok, why = core.append_key_line(o.save_to, "")
    if not ok then usage_error("--save-to: " .. tostring(why)) end
  end
  return rotate_many(ctx, reader, opts, total)
end

-- ---- main --------------------------------------------------------------

local function run(argv, ctx)
  local o = parse(argv)
  ctx.o = o
  if o.help then
    io.stdout:write(M.USAGE)
    io.stdout:flush()
    return EXIT_OK
  end
  check_combinations(o)
  ctx.out = new_stdout(ctx.closed)
  ctx.rescue = new_rescue()
  if o.orgs then return many(ctx) end
  return one(ctx)
end

-- main(arg) -> exit status. `arg`: the command's arguments (arg[1]...).
function M.main(argv)
  argv = argv or {}
  local ok, closed = pcall(core.catch_signals, (core.isatty(2) and "\n" or "") .. PROG ..
    ": interrupted: nothing new starts; what is in flight finishes and its keys are " ..
    "kept (interrupt again to abandon it)\n")
  if not ok then
    say("cannot start: ", tostring(closed))
    return EXIT_NOT_ROTATED
  end
  local ctx = { closed = closed }
  local status
  ok, status = pcall(run, argv, ctx)
  if not ok then
    if status == Interrupted then
      say("interrupted while opening or reading the input: nothing was sent")
      status = ctx.o and ctx.o.check and EXIT_UNKNOWN or EXIT_NOT_ROTATED
    elseif getmetatable(status) == UsageError then
      say(status.msg)
      io.stderr:write("Try '", PROG, " --help'.\n")
      status = EXIT_USAGE
    else
      say("internal error: ", tostring(status))
      status = ctx.started and EXIT_UNKNOWN or EXIT_NOT_ROTATED
    end
  end
  if ctx.reader then pcall(ctx.reader.close) end
  io.stdout:flush()
  core.release_signals()
  return status
end

return M
