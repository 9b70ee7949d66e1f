-- What each thread of spec/threads/threads.c runs in its own lua_State:
-- load the module, rotate its own organization's key ROUNDS times through
-- a client (which adopts each new key), then once more through a
-- non-blocking op, then check that the last key is accepted. Odd threads
-- go over HTTPS, even ones over plain HTTP, so both libcurl paths (and
-- OpenSSL) run in several threads at once.
-- Arguments: org_id, api_key, emulator info file, rounds, thread index.
-- Returns the number of failures and a message about the first (no key).
local org, key, info_path, rounds, idx = ...
local cjson = require "cjson"
local slashid = require "slashid"

local f = assert(io.open(info_path, "rb"))
local info = cjson.decode(f:read("*a"))
f:close()

local https = idx % 2 == 1
local client = slashid.new{
  org_id = org, api_key = key,
  base_url = https and info.https_url or info.http_url,
  ca_file = https and info.ca_file or nil,
  retry_delay = 0.01, retry_max_delay = 0.05,
}

local failures, first = 0, nil
local function failed(what, errors, i)
  failures = failures + 1
  if not first then
    local e = errors and errors[1]
    first = ("%s (round %s): %s"):format(what, tostring(i), e and e.message or "no errors entry")
  end
end

for i = 1, rounds do
  local result, errors, _, out = client:rotate_key()
  if not (result and out.outcome == "rotated") then failed("rotate_key", errors, i) end
end

local op = client:start_rotate_key()
if not op:wait(20) then
  failed("op:wait", nil, "op")
else
  local result, errors, _, out = op:results()
  if not (result and out.outcome == "rotated") then failed("start_rotate_key", errors, "op") end
end

local ok, errors = client:check_key()
if ok ~= true then failed("check_key", errors, "last") end
client:close()
collectgarbage("collect")
return failures, first or ""
