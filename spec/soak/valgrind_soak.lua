-- A soak for `make check-valgrind`: a few hundred rotations and every
-- error path the module has, in one process, so that memcheck sees each C
-- path many times (invalid reads/writes, uninitialised values, leaks).
-- Run by spec/soak/valgrind.sh under spec/with-emulator.sh; also runs
-- without valgrind (`sh spec/with-emulator.sh lua5.4 spec/soak/valgrind_soak.lua`).
--
--   SOAK_ROTATIONS  rotations in the main loop (default 500)
--
-- Exits 0 when every call ended with the outcome it must have, 1 otherwise.
-- Prints counts only: no key is ever printed.
local H = require "helpers"
local slashid = require "slashid"

local ROTATIONS = tonumber(os.getenv("SOAK_ROTATIONS") or "") or 500
local failures, counts = 0, {}

local function note(what, ok, detail)
  counts[what] = (counts[what] or 0) + 1
  if not ok then
    failures = failures + 1
    io.stderr:write(("soak: %s: unexpected: %s\n"):format(what, tostring(detail)))
  end
end

local function describe(result, errors, info)
  local e = errors and errors[1]
  return ("result=%s outcome=%s status=%s error=%s"):format(
    result and "yes" or "nil", info and info.outcome, info and info.status,
    e and e.message or "none")
end

-- Every error entry must have the contract's shape.
local function well_formed(errors)
  if type(errors) ~= "table" then return false end
  for _, e in ipairs(errors) do
    if type(e.httpcode) ~= "number" or type(e.message) ~= "string" or
       (math.type and math.type(e.httpcode) ~= "integer") then
      return false
    end
  end
  return true
end

local function expect(what, outcome, result, errors, _, info)
  local ok = well_formed(errors) and info and info.outcome == outcome and
             (outcome == "rotated") == (result ~= nil) and
             (result ~= nil or #errors > 0)
  note(what, ok, describe(result, errors, info))
  return result
end

-- The trace must never show the key it was given.
local function tracer(secret)
  local lines = 0
  return function(line)
    lines = lines + 1
    if secret and line:find(secret, 1, true) then
      note("trace hides the key", false, "a key in the trace")
    end
  end, function() return lines end
end

local dir = H.mkdir(H.tmpname("soak"))

-- ---- 1. the main loop: a client rotating its own key -------------------
do
  local org, key = H.new_org()
  local client = slashid.new(H.opts(org, key))
  for i = 1, ROTATIONS do
    local opts
    if i % 50 == 0 then
      opts = { save_to = dir .. "/main.key", verify = true }
    elseif i % 25 == 0 then
      local trace = tracer(H.org(org).api_key)
      opts = { debug = trace }
    end
    expect("client:rotate_key", "rotated", client:rotate_key(opts))
  end
  local ok = client:check_key()
  note("client:check_key", ok == true, ok)
  client:close()
  note("rotations counted", H.org(org).rotations == ROTATIONS, H.org(org).rotations)
end

-- ---- 2. module-level calls, HTTPS, save_to, verify, debug --------------
do
  local org, key = H.new_org()
  for i = 1, 10 do
    local trace, lines = tracer(key)
    local opts = H.opts(org, key, {
      base_url = H.https_url, ca_file = H.ca_file,
      save_to = dir .. "/https.key", verify = (i % 2 == 0), debug = trace,
    })
    local result = expect("https rotate_key + save_to/verify/debug", "rotated",
                          slashid.rotate_key(opts))
    note("trace has lines", lines() > 0, lines())
    if result then key = result.api_key end
  end
  local ok = slashid.check_key(H.opts(org, key, { base_url = H.https_url,
                                                  ca_file = H.ca_file }))
  note("https check_key", ok == true, ok)
  -- a save_to that cannot be written: rotated, the key is still returned
  local result, errors, p, info = slashid.rotate_key(H.opts(org, key, {
    save_to = dir .. "/no/such/dir/key" }))
  expect("save_to failure keeps the key", "rotated", result, errors, p, info)
  note("save_to failure reported", info.saved == false and #errors == 1, info.saved)
  if result then key = result.api_key end
  -- a wrong CA: refused before any byte is sent
  expect("TLS verification failure", "not_rotated", slashid.rotate_key(H.opts(org, key, {
    base_url = H.https_url, retries = 0 })))
end

-- ---- 3. error paths, each a few times ------------------------------------
local ERROR_ROUNDS = 8
local refused = "http://127.0.0.1:" .. H.closed_port()
for _ = 1, ERROR_ROUNDS do
  local org, key = H.new_org()
  local client = slashid.new(H.opts(org, key))

  expect("401 (wrong key)", "not_rotated",
         slashid.rotate_key(H.opts(org, "sk_not_the_key_of_this_org_00000000")))
  local ok = slashid.check_key(H.opts(org, "sk_not_the_key_of_this_org_00000000"))
  note("check_key refused", ok == false, ok)

  H.faults(org, { { status = 500 } })
  expect("500", "unknown", client:rotate_key())
  H.faults(org, { { status = 503, content_type = "text/plain", body = "down\r\n\0x" } })
  expect("503 text", "unknown", client:rotate_key())
  H.faults(org, { { status = 400, json = { errors = { { httpcode = 400,
    message = "bad {{old_key}}" } }, result = nil } } })
  expect("400 envelope", "not_rotated", client:rotate_key())
  H.faults(org, { { status = 429, headers = { ["Retry-After"] = "0" } } })
  expect("429 then rotated", "rotated", client:rotate_key())

  expect("connection refused", "not_rotated", slashid.rotate_key(H.opts(org, key, {
    base_url = refused, retries = 1 })))

  H.faults(org, { { delay = 1.5, rotate = true } })
  expect("timeout after sending", "unknown", client:rotate_key{ request_timeout = 0.3 })
  H.faults(org, { { action = "stall_after_headers", stall = 1.5 } })
  expect("stall after headers", "unknown", client:rotate_key{ request_timeout = 0.3 })

  H.faults(org, { { action = "huge", size = 300000 } })
  expect("huge answer", "unknown", client:rotate_key{ max_response_bytes = 65536 })
  H.faults(org, { { action = "huge_header", size = 100000 } })
  expect("huge header", "unknown", client:rotate_key{ max_response_bytes = 65536 })

  H.faults(org, { { action = "truncate", rotate = true } })
  expect("truncated body", "unknown", client:rotate_key())
  H.faults(org, { { action = "truncate_chunked", rotate = true } })
  expect("truncated chunked body", "unknown", client:rotate_key())
  H.faults(org, { { action = "close", rotate = true } })
  expect("closed after the request", "unknown", client:rotate_key())
  H.faults(org, { { action = "reset", rotate = true } })
  expect("reset after the request", "unknown", client:rotate_key())

  H.faults(org, { { status = 200, body = "not json {{new_key}}", rotate = true } })
  expect("non-JSON 2xx", "unknown", client:rotate_key())
  H.faults(org, { { status = 200, body = '{"result":{"api_key":null},"meta":null}' } })
  expect("2xx with a null key", "unknown", client:rotate_key())
  H.faults(org, { { status = 200, body = string.rep("[", 200) .. string.rep("]", 200) } })
  expect("deep JSON", "unknown", client:rotate_key())

  -- the client's key is unknown after these: take the current one
  local current = H.org(org).api_key
  local c2 = slashid.new(H.opts(org, current))
  local trace = tracer(current)
  expect("client after errors (debug)", "rotated", c2:rotate_key{ debug = trace })
  c2:close()
  client:close()

  -- non-blocking ops: finished, cancelled mid-transfer, cancelled at once
  org, key = H.new_org()
  local op = slashid.start_rotate_key(H.opts(org, key))
  note("op:wait", op:wait(10) == true, "timeout")
  local result = expect("op rotated", "rotated", op:results())
  key = result and result.api_key or H.org(org).api_key

  H.faults(org, { { delay = 1.5 } })
  op = slashid.start_rotate_key(H.opts(org, key))
  local t0 = os.time()
  while H.requests(org) < 2 and os.time() - t0 < 5 do op:wait(0.05) end
  op:cancel()
  note("cancelled op finished", op:poll() == true, "pending")
  expect("op cancelled mid-transfer", "unknown", op:results())

  op = slashid.start_rotate_key(H.opts(org, H.org(org).api_key))
  op:cancel()
  expect("op cancelled at once", "not_rotated", op:results())
  op = nil
  -- a dropped op (never waited for) is collected
  slashid.start_rotate_key(H.opts(org, H.org(org).api_key))
  collectgarbage("collect")
  collectgarbage("collect")
end

-- ---- 4. batches over the multi interface, failures mixed in -------------
if slashid.rotate_keys then
  for _ = 1, 4 do
    local list, expected = {}, {}
    for i = 1, 12 do
      local org, key = H.new_org()
      if i % 4 == 1 then
        H.faults(org, { { status = 500 } })
        expected[i] = "unknown"
      elseif i % 4 == 2 then
        H.faults(org, { { action = "truncate", rotate = true } })
        expected[i] = "unknown"
      elseif i % 4 == 3 then
        key = "sk_not_the_key_of_this_org_00000000"
        expected[i] = "not_rotated"
      else
        expected[i] = "rotated"
      end
      list[i] = H.opts(org, key, i == 4 and { save_to = dir .. "/batch.key" } or nil)
    end
    local done = 0
    local outcomes = slashid.rotate_keys(list, { concurrency = 4,
      on_progress = function() done = done + 1 end })
    note("batch progress", done == #list, done)
    for i, o in ipairs(outcomes) do
      expect("batch item " .. expected[i], expected[i], o.result, o.errors, o.pagination, o.info)
    end
  end
end

-- ---- 5. argument errors raise, and leave nothing behind ----------------
for _ = 1, 20 do
  local ok = pcall(slashid.rotate_key, { org_id = "x", api_key = "k\r\n", timeout = 0 })
  note("argument error raises", ok == false, ok)
end

collectgarbage("collect")
os.execute("rm -rf '" .. dir .. "'")

local names = {}
for k in pairs(counts) do names[#names + 1] = k end
table.sort(names)
local total = 0
for _, k in ipairs(names) do total = total + counts[k] end
io.stderr:write(("soak: %d checks (%d kinds), %d rotations in the main loop, %d failure(s)\n")
                :format(total, #names, ROTATIONS, failures))
os.exit(failures == 0 and 0 or 1, true)
