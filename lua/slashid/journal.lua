-- slashid.journal: the write-ahead journal of a batch (rotate_keys'
-- `journal` option, the command's default). A crash at any instant
-- (kill -9, the OOM killer, a power cut) leaves every organization
-- named in it with its new key, named as sent with no answer, named with
-- its outcome, or absent (never sent).
--
-- The file (src/journal.c: created 0600 in a directory only its owner
-- may write, held under an exclusive flock, appended and fsync'ed) holds
-- one record per line, five tab-separated fields:
--
--   TIME <TAB> TYPE <TAB> ORG_ID <TAB> VALUE <TAB> CRC
--
--   TIME    seconds since the epoch, with milliseconds ("1733580000.123")
--   TYPE    run | sent | rotated | not_rotated | unknown | lost |
--           delivered | unverified
--   ORG_ID  the organization ("-" in the run record)
--   VALUE   run: "format=1 base_url=... [shard=K/N] [input=...]";
--           sent: "rt=SECONDS kf=FINGERPRINT" (the request's time limit:
--           after it, the request can no longer be answered; a 32-bit
--           FNV-1a of the key it presented, never the key: --resume tells
--           a key given wrong from one the server rotated); rotated: the NEW key;
--           delivered: where it went ("save_to", "store"); others: "-"
--   CRC     CRC-32 of the four fields and their tabs, 8 hex digits
--
-- Fields are percent-encoded: any byte outside "!".."~", and "%", is
-- %XX, so a field never holds a tab or a newline whatever the server
-- sent. A line whose checksum fails (a crash mid-write, a bit flipped)
-- is skipped by readers and counted, never misread. The old key is never
-- written. `grep -w rotated JOURNAL` lists the keys issued.
--
-- Writers add records to a buffer and flush them (one write, one fsync)
-- at the points the batch engine chooses (group commit, batch.lua); a
-- record is durable only once flush returned true.

local core = require "slashid.core"

local tostring, tonumber, type, ipairs, setmetatable = tostring, tonumber, type, ipairs, setmetatable
local concat, format, floor = table.concat, string.format, math.floor

local M = {}

M.FORMAT = 1

local STATES = { sent = true, rotated = true, not_rotated = true, unknown = true,
                 lost = true }

local OUTSIDE = "[^!-$&-~]"     -- bytes a field holds as %XX
local function escape(s)
  s = tostring(s)
  if not s:find(OUTSIDE) then return s end
  return (s:gsub(OUTSIDE, function(c) return format("%%%02X", c:byte()) end))
end

local function unescape(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- The record's time as text, made once per millisecond (records that
-- fall due together share it).
local last_ms, last_text = -1, ""
local function time_text()
  local ms = floor(core.time() * 1000)
  if ms ~= last_ms then last_ms, last_text = ms, format("%.3f", ms / 1000) end
  return last_text
end

-- What a `sent` record keeps of the key a request presented: a 32-bit
-- FNV-1a, in hex (not the key; enough to tell one key from another).
function M.fingerprint(key)
  return format("%08x", core.fnv1a32(key))
end

-- The line of a record: its body, then the body's checksum.
local function record(kind, org_id, value, raw)
  local body = time_text() .. "\t" .. kind .. "\t" .. escape(org_id) .. "\t" ..
               (raw and value or escape(value))
  return body .. "\t" .. core.crc32(body) .. "\n"
end

-- ---- writing ---------------------------------------------------------------

local Journal = {}
Journal.__index = Journal
Journal.__tostring = function(j) return "slashid journal (" .. j.path .. ")" end

-- open(path, how, run) -> journal | nil, message. how: "new" (the file
-- must be empty or absent) or "resume" (it must exist: records are added
-- after those in it). run: the first record's fields for a new journal
-- ({ base_url = ..., shard = ..., input = ... }).
-- The journal object around a locked file, its first record written.
local function set_up(path, file, how, run)
  local j = setmetatable({
    path = path, file = file, buffer = {}, n = 0,
    run = false,        -- the run record's fields, until it is written
    -- what was sent in this journal (an organization at most once), as
    -- 64-bit hashes of the IDs (src/idset.c: at most 16 bytes each, no
    -- Lua object), so memory stays flat enough for any number of them. A
    -- hash seen before is confirmed against the records themselves, read
    -- once into `exact` (then kept up to date): only an input that
    -- repeats an organization pays that.
    sent_ids = core.idset(),
    exact = false,
    sent_durable = false, -- a `sent` record reached the disk (something went out)
    again = {},         -- org_id -> true: may be sent once more (--resume)
    failed = false,     -- the message of the write that failed, once one did
    before_flush = false, -- function(journal): runs first in every flush
  }, Journal)
  if how == "new" then
    j.run = run or {}
    -- without a base URL, the record waits for the first request's
    -- (write_run, from the batch): it names where requests went
    if j.run.base_url then
      j:write_run()
      local ok, err = j:flush()
      if not ok then return nil, err end
    end
  end
  return j
end

function M.open(path, how, run)
  if type(path) ~= "string" or path == "" then
    return nil, "journal: a file path expected"
  end
  local file, why = core.journal_open(path, how)
  if not file then return nil, why end
  -- the file is locked from here: whatever fails (a memory error
  -- included) closes it, or a retry would find it "held by another process"
  local ok, j, err = pcall(set_up, path, file, how, run)
  if not ok or not j then
    file:close()
    if not ok then error(j, 0) end
    return nil, err
  end
  return j
end

-- The first record, naming the run; `base_url`: the first request's,
-- when the opener did not name one.
function Journal:write_run(base_url)
  local run = self.run
  if not run then return end
  self.run = false
  local fields = { "format=" .. M.FORMAT }
  for _, k in ipairs({ "base_url", "shard", "input" }) do
    local v = run[k]
    if k == "base_url" and v == nil then v = base_url end
    if v then fields[#fields + 1] = k .. "=" .. escape(v) end
  end
  -- each of its fields is escaped on its own: spaces separate them
  self:add("run", "-", concat(fields, " "), true)
end

-- Adds a record to the buffer (durable once flush returns true).
function Journal:add(kind, org_id, value, raw)
  local n = self.n + 1
  self.buffer[n] = record(kind, org_id, value or "-", raw)
  self.n = n
  if kind == "sent" then
    self.sent_ids:add(org_id)
    if self.exact then self.exact[org_id] = true end
    self.again[org_id] = nil
  end
end

-- The set of organizations with a `sent` record, in the file or the
-- buffer; nil when the file cannot be read.
local function read_sent(self)
  local set = {}
  local f = io.open(self.path, "rb")
  if not f then return nil end
  for line in f:lines() do
    local body, crc = line:match("^(.*)\t(%x%x%x%x%x%x%x%x)$")
    local org = body and body:match("^[%d.]+\tsent\t([^\t]*)\t")
    if org and core.crc32(body) == crc then set[unescape(org)] = true end
  end
  f:close()
  for k = 1, self.n do
    local org = self.buffer[k]:match("^[%d.]+\tsent\t([^\t]*)\t")
    if org then set[unescape(org)] = true end
  end
  return set
end

-- Whether org_id was sent in this journal (and may not be sent again).
function Journal:was_sent(org_id)
  if self.again[org_id] then return false end
  if not self.sent_ids:has(org_id) then return false end
  if not self.exact then
    local set = read_sent(self)
    if not set then return true end   -- cannot tell: taken as sent (never sent twice)
    self.exact = set
  end
  return self.exact[org_id] == true
end

-- --resume: org_id may be sent once more (its earlier request is known
-- not to have rotated the key).
function Journal:allow_again(org_id)
  self.again[org_id] = true
end

-- --resume: org_id's earlier request counts as sent.
function Journal:mark_sent(org_id)
  self.sent_ids:add(org_id)
  if self.exact then self.exact[org_id] = true end
end

-- Writes the buffer with one write and one fsync. Returns true, or nil
-- and why (the journal is then failed: every later flush fails too, and
-- the batch starts nothing more). `keys_only`: the flush that makes a
-- turn's new keys durable, which must not wait for the owner's work
-- (before_flush: the command's group of --save-to lines).
function Journal:flush(keys_only)
  if self.failed then return nil, self.failed end
  local hook = not keys_only and self.before_flush
  if hook then hook(self) end
  local n = self.n
  if n == 0 then return true end
  local data = concat(self.buffer, "", 1, n)
  local ok, why = self.file:append(data)
  for k = n, 1, -1 do self.buffer[k] = nil end
  self.n = 0
  if not ok then
    self.failed = tostring(why)
    return nil, self.failed
  end
  return true
end


function Journal:close()
  if self.file then self.file:close() end
end

-- ---- reading ---------------------------------------------------------------

local function parse_run(value)
  local run = {}
  for field in value:gmatch("%S+") do
    local k, v = field:match("^([%w_]+)=(.*)$")
    if k then run[k] = unescape(v) end
  end
  run.format = tonumber(run.format)
  return run
end

-- read(path) -> entries, skipped, run | nil, message.
-- entries: one table per organization in the order first recorded, the
-- latest record of each deciding its state: { org_id, state ("sent",
-- "rotated", "not_rotated", "unknown", "lost"), api_key (state "rotated"
-- only), delivered (boolean), sent_at (seconds since the epoch, of the
-- latest sent record), request_timeout (seconds, from it), verified
-- (false once an unverified record names it), delivered_to (a list) }.
-- skipped: lines whose checksum failed. run: the run record's fields.
function M.read(path)
  -- (a FIFO would block the open, a device never end)
  local kind = core.file_kind(path)
  if kind and kind ~= "file" then
    return nil, "cannot read the journal: " .. path .. " is not a regular file (" .. kind .. ")"
  end
  local f, why = io.open(path, "rb")
  if not f then return nil, "cannot read the journal: " .. tostring(why) end
  local entries, by_org, skipped, run = {}, {}, 0, nil
  -- read in pieces: a read error (a directory, EIO) is a message, not a raise
  local function next_line()
    local ok, line, err = pcall(f.read, f, "*l")
    if not ok or (line == nil and err) then
      why = tostring(ok and err or line):gsub("^.-:%d+: ", "")
      return nil
    end
    return line
  end
  for line in next_line do
    local body, crc = line:match("^(.*)\t(%x%x%x%x%x%x%x%x)$")
    if not body or core.crc32(body) ~= crc then
      if line ~= "" then skipped = skipped + 1 end
    else
      local t, kind, org, value = body:match("^([%d.]+)\t([%w_]+)\t([^\t]*)\t([^\t]*)$")
      if not t then
        skipped = skipped + 1
      elseif kind == "run" then
        run = run or parse_run(value)
      else
        org, value = unescape(org), unescape(value)
        local e = by_org[org]
        if not e then
          e = { org_id = org, state = "sent", delivered = false }
          by_org[org] = e
          entries[#entries + 1] = e
        end
        if STATES[kind] then
          e.state = kind
          if kind == "sent" then
            e.sent_at = tonumber(t)
            e.request_timeout = tonumber(value:match("^rt=([%d.]+)"))
            e.key_fingerprint = value:match("kf=(%x+)")
            e.api_key, e.delivered, e.verified, e.delivered_to = nil, false, nil, nil
          elseif kind == "rotated" then
            e.api_key = value
          else
            e.api_key = nil
          end
        elseif kind == "delivered" then
          e.delivered = true
          e.delivered_to = e.delivered_to or {}
          e.delivered_to[#e.delivered_to + 1] = value
        elseif kind == "unverified" then
          e.verified = false
        else
          skipped = skipped + 1   -- a record of a later format: not misread
        end
      end
    end
  end
  f:close()
  if why then return nil, "cannot read the journal: " .. why end
  return entries, skipped, run
end

M.Journal = Journal
return M
