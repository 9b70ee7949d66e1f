-- slashid.cli.output: where the command writes. Human messages go to
-- stderr (say, progress); keys and results go to stdout, one whole line
-- per checked write(2) (core.write_line): a line-buffered stdout, a
-- terminal that hung up, a pipe whose reader died or a full disk is a
-- failed write the command sees, never a key it believes printed. A file
-- stdout cut short is cut back to the line's start. Under --no-journal,
-- a key that could not go where it should goes to a rescue file.

local core = require "slashid.core"

local M = {}

M.PROG = "slashid-rotate"
local PROG = M.PROG

-- Control bytes (a server's message may hold terminal escapes) are shown
-- as \xNN, never sent to the operator's terminal as they are.
local function visible(s)
  return (tostring(s):gsub("[%z\1-\8\11-\31\127]", function(c)
    return ("\\x%02X"):format(c:byte())
  end))
end
M.visible = visible

function M.say(...)
  local parts = { PROG, ": ", ... }
  for i = 3, #parts do parts[i] = visible(parts[i]) end
  parts[#parts + 1] = "\n"
  io.stderr:write(table.concat(parts))
end
local say = M.say

-- An errors entry as the operator reads it: with its HTTP status (a wrong
-- organization ID is "HTTP 401: invalid API key"), and the flags to use
-- where the library names its options.
local function entry_text(e)
  local msg = tostring(e.message or "")
  if e.httpcode and e.httpcode ~= 0 and not msg:find("HTTP " .. e.httpcode, 1, true) then
    msg = "HTTP " .. e.httpcode .. ": " .. msg
  end
  return (msg:gsub("set ca_file or SLASHID_CA_FILE", "use --ca-file or SLASHID_CA_FILE"))
end

function M.all_errors(errors)
  local t = {}
  for _, e in ipairs(errors or {}) do t[#t + 1] = entry_text(e) end
  return table.concat(t, "; ")
end

function M.first_error(errors)
  local e = errors and errors[1]
  if not e then return "" end
  return entry_text(e)
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

-- ---- standard output ---------------------------------------------------

-- stdout as a delivery: out.line(s) -> true, or false once a write
-- failed (then and ever after: out.broken says why).
function M.new_stdout(closed)
  -- /dev/null (/dev/zero, /dev/urandom...) takes every write without an
  -- error: a key printed there is lost as surely as on a closed stdout
  local out = { broken = closed.stdout and "standard output is closed" or
                core.is_memory_device(1) and
                  "standard output is /dev/null or another memory device" or nil }
  function out.line(s)
    if out.broken then return false end
    local ok, err = core.write_line(1, s .. "\n")
    if not ok then
      out.broken = tostring(err or "cannot write")
      say("standard output: ", out.broken)
      return false
    end
    return true
  end
  return out
end

-- ---- the rescue file (--no-journal, or a journal that failed) ----------

-- Created on first need, exclusively (never through a link someone
-- left), mode 0600, in $TMPDIR, else /tmp; one ORG_ID<TAB>NEW_KEY line per
-- key, appended and fsync'ed.
function M.new_rescue()
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

-- ---- progress on stderr ------------------------------------------------

-- A bar on a terminal, a line per organization otherwise. `what`: the
-- counts shown (outcome words).
function M.new_progress(total, what)
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
      if fill > width then fill = width end
      head = ("[%s%s] %d/%d"):format(("#"):rep(fill), ("."):rep(width - fill), p.done, total)
    else
      head = ("%d done"):format(p.done)
    end
    local tail = {}
    for _, k in ipairs(what) do tail[#tail + 1] = ("%s %d"):format(k:gsub("_", " "), c[k] or 0) end
    io.stderr:write("\r\27[K", head, "  ", table.concat(tail, "  "))
  end
  -- One organization finished; `note` says more for a failure; `quiet`:
  -- nothing to say about it on a terminal (the bar counts it).
  function p.item(org_id, outcome, note, quiet)
    p.done = p.done + 1
    p.counts[outcome] = (p.counts[outcome] or 0) + 1
    local text = outcome:gsub("_", " ") .. ((note and note ~= "") and (": " .. note) or "")
    if terminal then
      if not quiet then
        io.stderr:write("\r\27[K", PROG, ": ", visible(org_id), ": ", visible(text), "\n")
      end
      bar(not quiet)
    elseif total ~= 1 then
      say(total and ("[%d/%d] "):format(p.done, total) or ("[%d] "):format(p.done), org_id, ": ", text)
    end
  end
  function p.finish()
    if terminal and p.done > 0 and total ~= 1 then bar(true) io.stderr:write("\n") end
  end
  return p
end

return M
