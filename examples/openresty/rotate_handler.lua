-- examples/openresty/rotate_handler.lua - content_by_lua_file for
-- `POST /rotate` (see nginx.conf next to it).
--
-- The rotation runs as an op (slashid.start_rotate_key): op:poll() advances
-- the transfer without waiting, and ngx.sleep between polls hands the worker
-- back to nginx, so every other request on this worker is served while the
-- SlashID answer is pending. A blocking rotate_key here would freeze the
-- whole worker for as long as the API takes (up to the consistency timeout).
--
-- How long to sleep: nginx's Lua cannot wait on a foreign descriptor
-- (op:pollfd()), so the handler sleeps until op:timeout() (libcurl's next
-- timer, a retry's back-off, the request deadline) but never longer than
-- a short cap that grows while nothing happens (1 ms, doubling up to
-- 50 ms): an answer is noticed within 50 ms, and a 2 s wait costs ~45
-- wake-ups instead of the 200 of a fixed 10 ms poll.
--
-- After an "unknown" outcome the handler takes the recovery step at once,
-- without blocking either (slashid.start_check_key): is the old key, still
-- in the key file, accepted? Yes: nothing was rotated, a later /rotate is
-- safe. No: SlashID rotated it and the new key was lost in transit; the
-- organization needs a new key from the dashboard. Neither: ask again.
--
-- The answer is JSON: {"outcome": "rotated" | "not_rotated" | "unknown",
-- "status": <HTTP status from SlashID>, "attempts": n, "saved": bool,
-- "errors": [messages], and after "unknown": "old_key_works": true | false
-- (absent when that cannot be told)}. Never a key: the new key goes to SLASHID_KEY_FILE (written
-- atomically, mode 0600) before this handler answers.
local slashid = require "slashid"
local cjson = require "cjson.safe"

local ngx = ngx
local MAX_SLEEP = 0.05       -- the longest sleep between two polls (s)

-- Polls `op` until it has finished, sleeping between polls (ngx.sleep
-- yields the worker to nginx) as long as op:timeout() allows, capped.
local function wait_op(op)
  local cap = 0.001
  while not op:poll() do
    local t = op:timeout()
    ngx.sleep(t and t < cap and t or cap)
    if cap < MAX_SLEEP then cap = math.min(cap * 2, MAX_SLEEP) end
  end
end

-- `errors` is always a JSON array, as the command prints it (lua-cjson
-- would encode an empty Lua table as an object, {}).
local function reply(http_status, body)
  ngx.status = http_status
  ngx.header["Content-Type"] = "application/json"
  ngx.header["Cache-Control"] = "no-store"
  local errors = body.errors or {}
  body.errors = nil
  local parts = {}
  for i, message in ipairs(errors) do parts[i] = cjson.encode(tostring(message)) end
  local text = cjson.encode(body)
  local list = '"errors":[' .. table.concat(parts, ",") .. "]"
  text = text == "{}" and ("{" .. list .. "}") or (text:sub(1, -2) .. "," .. list .. "}")
  ngx.say(text)
end

local function read_key(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local key = f:read("*a")
  f:close()
  key = key and key:match("^%s*(.-)%s*$")
  if not key or key == "" then return nil, "empty key file" end
  return key
end

-- A key that SlashID issued but that could not be written to the key file
-- (disk full, permissions). The old key is dead, so this is the only copy:
-- it stays in this worker's memory, and nothing is rotated again until it is
-- on disk. It is written with the same atomic writer save_to uses.
local held_key

local function flush_held_key(path)
  if not held_key then return true end
  local ok, why = require("slashid.core").write_key_file(path, held_key .. "\n")
  if not ok then return nil, why end
  held_key = nil
  return true
end

local function rotate(org_id, key_file)
  local ok, why = flush_held_key(key_file)
  if not ok then
    ngx.log(ngx.ALERT, "slashid: a new key is still held in memory, not on disk: ", why)
    return reply(500, { outcome = "rotated", saved = false,
                        errors = { "the previous new key could not be saved yet: " .. why } })
  end
  local current, err = read_key(key_file)
  if not current then
    return reply(500, { outcome = "not_rotated", status = 0,
                        errors = { "cannot read the key file: " .. err } })
  end

  local op = slashid.start_rotate_key{
    org_id = org_id,
    api_key = current,
    base_url = os.getenv("SLASHID_BASE_URL"),
    ca_file = os.getenv("SLASHID_CA_FILE"),
    consistency = "all_regions",
    save_to = key_file,
  }
  wait_op(op)

  local result, errors, _, info = op:results()
  local messages = {}
  for i, e in ipairs(errors) do messages[i] = e.message end
  if result and not info.saved then
    held_key = result.api_key
    ngx.log(ngx.ALERT, "slashid: the key was rotated but not saved; held in memory")
  end
  local old_key_works
  if info.outcome == "unknown" then
    -- The key may have been rotated without the answer reaching us: never
    -- retry blindly. The recovery step, without blocking the worker:
    local check = slashid.start_check_key{
      org_id = org_id,
      api_key = current,
      base_url = os.getenv("SLASHID_BASE_URL"),
      ca_file = os.getenv("SLASHID_CA_FILE"),
    }
    wait_op(check)
    old_key_works = check:results()
    ngx.log(ngx.ERR, "slashid: rotation outcome unknown (HTTP ", info.status, "); ",
            old_key_works == true and "the old key still works: nothing was rotated"
            or old_key_works == false and "the old key is refused: the key was rotated " ..
               "and the new one lost; get a new key from the SlashID dashboard"
            or "whether the old key works cannot be told yet: check again")
  end
  current = nil   -- luacheck: ignore (not needed any more)
  local http_status = (info.outcome == "rotated" and info.saved) and 200
                   or info.outcome == "rotated" and 500
                   or 502
  return reply(http_status, {
    outcome = info.outcome,
    status = info.status,
    attempts = info.attempts,
    elapsed = info.elapsed,
    saved = info.saved == true,
    errors = messages,
    old_key_works = old_key_works,
  })
end

local org_id, key_file = os.getenv("SLASHID_ORG_ID"), os.getenv("SLASHID_KEY_FILE")
if not org_id or not key_file then
  return reply(500, { outcome = "not_rotated", status = 0,
                      errors = { "SLASHID_ORG_ID and SLASHID_KEY_FILE must be set (env in nginx.conf)" } })
end

-- One rotation at a time, across workers: two concurrent ones would both
-- present the same old key, and the second would be refused.
local lock = ngx.shared.slashid
if not lock:add("rotating", true, 300) then
  return reply(409, { outcome = "not_rotated", status = 0,
                      errors = { "a rotation is already running" } })
end
local ok, err = pcall(rotate, org_id, key_file)
lock:delete("rotating")
if not ok then
  ngx.log(ngx.ERR, "slashid: rotation handler failed: ", err)
  return reply(500, { outcome = "unknown", status = 0, errors = { "handler error" } })
end
