-- Driven by spec/wipe/run.sh with spec/wipe/wipecheck.c preloaded: every
-- path that puts a key into a C buffer of the module (request headers, the
-- copy kept for redaction, answer bodies and headers quoting it, traces,
-- save_to, verify, ops, batches, errors), with two recognisable keys:
-- SLASHID_WIPECHECK_KEY (the current key) and SLASHID_WIPECHECK_KEY2 (a
-- new key the emulator is made to answer with). The preload then tells
-- whether the module freed any block still holding either.
local H = require "helpers"
local slashid = require "slashid"

local OLD = assert(os.getenv("SLASHID_WIPECHECK_KEY"))
local NEW = assert(os.getenv("SLASHID_WIPECHECK_KEY2"))
local dir = H.mkdir(H.tmpname("wipe"))
local failures = 0

local function org_with(key)
  return (H.new_org_with_key(key))
end

local function expect(what, outcome, result, errors, _, info)
  if not (info and info.outcome == outcome) then
    failures = failures + 1
    io.stderr:write(("wipe: %s: outcome %s, expected %s\n"):format(what,
      tostring(info and info.outcome), outcome))
  end
  return result
end

local function trace() return function() end end

for round = 1, 20 do
  local org = org_with(OLD .. "_" .. round)
  local key = OLD .. "_" .. round
  local client = slashid.new(H.opts(org, key))
  -- answers quoting the key in a body, a header, an error message
  H.faults(org, { { status = 401, headers = { ["X-Echo"] = key },
                    json = { errors = { { httpcode = 401, message = "bad " .. key } } } } })
  expect("401 echo", "not_rotated", client:rotate_key{ debug = trace() })
  H.faults(org, { { status = 500, content_type = "text/plain", body = "oops " .. key } })
  expect("500 echo", "unknown", client:rotate_key())
  H.faults(org, { { action = "truncate", rotate = true, status = 200,
                    json = { result = { api_key = NEW } } } })
  expect("truncated", "unknown", client:rotate_key())
  -- the rotation proper: the emulator answers with NEW (so it now holds it)
  local org2 = org_with(OLD .. "_b" .. round)
  local c2 = slashid.new(H.opts(org2, OLD .. "_b" .. round))
  H.faults(org2, { { status = 200, rotate = true, headers = { ["X-New"] = NEW },
                     json = { result = { api_key = NEW } } } })
  expect("rotated", "rotated", c2:rotate_key{ debug = trace(), save_to = dir .. "/k" })
  c2:close()
  -- a non-blocking op and a batch with the key
  local org4 = org_with(OLD .. "_d" .. round)
  local op = slashid.start_rotate_key(H.opts(org4, OLD .. "_d" .. round, { debug = trace() }))
  op:wait(10)
  expect("op", "rotated", op:results())
  if slashid.rotate_keys then
    local org3 = org_with(OLD .. "_c" .. round)
    local out = slashid.rotate_keys({ H.opts(org3, OLD .. "_c" .. round) })
    expect("batch", "rotated", out[1].result, out[1].errors, nil, out[1].info)
  end
  client:close()
  -- an argument error with the key
  pcall(slashid.rotate_key, { org_id = org, api_key = key .. "\r\n" })
end
collectgarbage("collect")
os.execute("rm -rf '" .. dir .. "'")
os.exit(failures == 0 and 0 or 1, true)
