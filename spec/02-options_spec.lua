-- Options and argument errors (API.md: "Options", "Argument errors",
-- "Secrets", "check_key", "slashid.new"): every option accepted with a
-- valid value and, where the emulator can see it, having its effect; every
-- wrong type, out-of-range value, unknown option, control character and
-- base_url form refused with a `slashid: ` message that names the option,
-- never quotes the API key, and comes before any network activity.
--
-- No call in this file may reach anything but 127.0.0.1 (and the closed
-- loopback ports of ::1 and localhost). base_url forms naming other hosts
-- are only ever given to slashid.new (which makes no request) in this
-- process, or to rotate_key/check_key in a subprocess whose proxy settings
-- send any request for a non-loopback host to a closed loopback port.
local H = require "helpers"
local slashid = require "slashid"
local cjson = require "cjson"

local SECRET = "sk_SECRET_do_not_leak_123456"
-- The emulator's plain HTTP port as digits (the info file's JSON numbers
-- may decode as floats: "8080.0" is not a port).
local PORT = ("%d"):format(H.emulator.http_port)
local NAN = 0 / 0
local HUGE = math.huge

local REQUEST_OPTIONS = {
  "org_id", "api_key", "base_url", "connect_timeout", "request_timeout", "ca_file",
  "retries", "retry_delay", "retry_max_delay", "max_response_bytes", "user_agent", "debug",
}
local NOT_FOR_CHECK_KEY = { "consistency", "timeout", "save_to", "verify" }

-- ---- small utilities ---------------------------------------------------

local function write_file(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

-- A Lua pattern that finds `name` as a whole word (not inside a longer
-- option name: 'timeout' must not be found in 'request_timeout').
local function word(name)
  return "%f[%w_]" .. (name:gsub("%p", "%%%0")) .. "%f[^%w_]"
end

-- A printable description of a value, for test names.
local function show(v)
  local t = type(v)
  if t == "string" then
    if v == SECRET then return "the API key" end
    return '"' .. v:gsub("[%c\127\\\"]", function(c) return ("\\%d"):format(c:byte()) end) .. '"'
  elseif t == "number" then
    if v ~= v then return "NaN" end
    if v == HUGE then return "math.huge" end
    if v == -HUGE then return "-math.huge" end
    return tostring(v)
  elseif t == "boolean" then
    return tostring(v)
  end
  return "a " .. t
end

local function shquote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

-- A value every metamethod of which raises: whatever the library does
-- with it, the metatable's error must never be what the caller sees.
local function hostile(tag)
  local function boom() error("METAMETHOD_CALLED_" .. tag, 0) end
  return setmetatable({}, {
    __index = boom, __newindex = boom, __call = boom, __tostring = boom,
    __len = boom, __eq = boom, __lt = boom, __le = boom, __concat = boom,
    __unm = boom, __add = boom, __sub = boom, __mul = boom, __div = boom,
    __mod = boom, __pow = boom, __pairs = boom, __ipairs = boom,
  })
end

-- Calls fn(...) (directly under pcall, so no position prefix is added by
-- Lua) and checks it raised an argument error for `option` (a name, a list
-- of acceptable names, or nil to skip that check), with no API key in the
-- message and no request or connection seen by the emulator. Returns the
-- message.
local function raises(option, org, fn, ...)
  local before = H.stats()
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "the call did not raise")
  assert.is_string(err, "the error value is not a string")
  assert.is_truthy(err:find("^slashid: "), "message does not start with 'slashid: ': " .. err)
  if option then
    local names = type(option) == "table" and option or { option }
    local named = false
    for _, name in ipairs(names) do
      if err:find(word(name)) then named = true end
    end
    assert.is_true(named, "message does not name '" .. table.concat(names, "' or '") .. "': " .. err)
  end
  H.assert_no_secret(err, SECRET)
  assert.is_falsy(err:find("METAMETHOD_CALLED", 1, true), "a metamethod's error escaped: " .. err)
  if org then assert.are.equal(0, H.requests(org)) end
  local after = H.stats()
  assert.are.equal(before.requests, after.requests, "a request reached the emulator")
  assert.are.equal(before.connections, after.connections, "a connection reached the emulator")
  return err
end

-- Runs `body` (the body of a Lua function returning a JSON-able value) in a
-- fresh interpreter with `env` added to its environment, plus proxy
-- settings that send any request for a non-loopback host to a closed
-- loopback port. Returns the decoded value.
local PRELUDE = [=[
local cjson = require "cjson"
local slashid = require "slashid"
local SECRET = %q
local function failed(err) return { ok = false, err = tostring(err) } end
local function rot(...)
  local ok, r, e, p, i = pcall(...)
  if not ok then return failed(r) end
  return { ok = true, rotated = r ~= nil, outcome = i and i.outcome, status = i and i.status }
end
local function chk(...)
  local ok, accepted, e, i = pcall(...)
  if not ok then return failed(accepted) end
  return { ok = true, accepted = accepted, status = i and i.status }
end
local function new(...)
  local ok, c = pcall(slashid.new, ...)
  if not ok then return failed(c) end
  c:close()
  return { ok = true }
end
local function main()
%s
end
io.write(cjson.encode(main()))
]=]

local function run_lua(env, body)
  local script = H.tmpname("options") .. ".lua"
  write_file(script, PRELUDE:format(SECRET, body))
  local guard = "http://127.0.0.1:" .. H.closed_port()
  local vars = {
    http_proxy = guard, https_proxy = guard, HTTPS_PROXY = guard,
    all_proxy = guard, ALL_PROXY = guard, no_proxy = "127.0.0.1,localhost,::1",
  }
  for k, v in pairs(env or {}) do vars[k] = v end
  local parts = {}
  for k, v in pairs(vars) do parts[#parts + 1] = k .. "=" .. shquote(v) end
  local cmd = table.concat(parts, " ") .. " " .. H.lua .. " " .. shquote(script) .. " 2>&1"
  local p = assert(io.popen(cmd))
  local out = p:read("*a")
  p:close()
  os.remove(script)
  local ok, decoded = pcall(cjson.decode, out)
  assert(ok and type(decoded) == "table", "the subprocess failed: " .. out)
  return decoded
end

-- Checks a subprocess's report of a raising call.
local function raised_in_subprocess(r, option)
  assert.is_table(r)
  assert.is_false(r.ok, "the call did not raise")
  assert.is_string(r.err)
  assert.is_truthy(r.err:find("^slashid: "), "message does not start with 'slashid: ': " .. r.err)
  assert.is_truthy(r.err:find(word(option)), "message does not name '" .. option .. "': " .. r.err)
  H.assert_no_secret(r.err, SECRET)
end

-- ---- the wrong values --------------------------------------------------

-- Each case: the option the message must name, the options to set, a label.
local function case(option, value, label)
  return { option = option, set = { [option] = value },
           label = option .. " = " .. (label or show(value)) }
end

local BAD = {
  case("org_id", 123), case("org_id", true), case("org_id", {}), case("org_id", ""),
  case("org_id", io.stdout, "a file"),
  case("api_key", 123456789), case("api_key", false), case("api_key", {}), case("api_key", ""),
  case("consistency", "ALL_REGIONS"), case("consistency", "global"), case("consistency", ""),
  case("consistency", 1), case("consistency", true), case("consistency", SECRET),
  case("timeout", 0), case("timeout", 121), case("timeout", 1.5), case("timeout", -1),
  case("timeout", 0.5), case("timeout", NAN), case("timeout", HUGE), case("timeout", -HUGE),
  case("timeout", "30"), case("timeout", true), case("timeout", SECRET),
  case("base_url", 1), case("base_url", ""), case("base_url", true), case("base_url", {}),
  case("base_url", SECRET),
  case("connect_timeout", 0), case("connect_timeout", -1), case("connect_timeout", NAN),
  case("connect_timeout", HUGE), case("connect_timeout", -HUGE), case("connect_timeout", "10"),
  case("request_timeout", -1), case("request_timeout", 0), case("request_timeout", NAN),
  case("request_timeout", HUGE), case("request_timeout", "45"), case("request_timeout", SECRET),
  case("ca_file", 1), case("ca_file", ""), case("ca_file", true), case("ca_file", {}),
  case("retries", -1), case("retries", 1.5), case("retries", NAN), case("retries", HUGE),
  case("retries", "2"), case("retries", true),
  case("retry_delay", 0), case("retry_delay", -1), case("retry_delay", NAN),
  case("retry_delay", HUGE), case("retry_delay", "0.5"),
  case("retry_max_delay", 0), case("retry_max_delay", -1), case("retry_max_delay", NAN),
  case("retry_max_delay", "1"),
  { option = "retry_max_delay", set = { retry_delay = 1, retry_max_delay = 0.5 },
    label = "retry_max_delay = 0.5 < retry_delay = 1" },
  case("max_response_bytes", 0), case("max_response_bytes", -1), case("max_response_bytes", 1.5),
  case("max_response_bytes", NAN), case("max_response_bytes", HUGE),
  case("max_response_bytes", "1024"),
  case("save_to", 1), case("save_to", ""), case("save_to", true), case("save_to", {}),
  case("save_to", SECRET .. "\0", "the API key and a NUL"),
  case("verify", "yes"), case("verify", "true"), case("verify", 1), case("verify", {}),
  case("user_agent", 1), case("user_agent", true), case("user_agent", {}),
  case("debug", "print"), case("debug", true), case("debug", {}), case("debug", SECRET),
}

-- Control characters in org_id and api_key (API.md: "CR, LF, NUL, ...").
local CONTROL = {
  { "CR", "\r" }, { "LF", "\n" }, { "CRLF", "\r\n" }, { "NUL", "\0" }, { "TAB", "\t" },
  { "DEL", "\127" }, { "ESC", "\27" }, { "BEL", "\7" }, { "US", "\31" },
}
for _, c in ipairs(CONTROL) do
  BAD[#BAD + 1] = { option = "api_key", set = { api_key = SECRET .. c[2] },
                    label = "api_key = the API key followed by " .. c[1] }
  BAD[#BAD + 1] = { option = "api_key", set = { api_key = c[2] .. SECRET },
                    label = "api_key = " .. c[1] .. " followed by the API key" }
  BAD[#BAD + 1] = { option = "api_key", set = { api_key = "sk_SECRET_do" .. c[2] .. "not_leak_123456" },
                    label = "api_key = a key with " .. c[1] .. " inside" }
  BAD[#BAD + 1] = { option = "org_id", set = { org_id = "af5fbd30-7ce7" .. c[2] .. "-4548" },
                    label = "org_id with " .. c[1] .. " inside" }
end
BAD[#BAD + 1] = { option = "org_id", set = { org_id = "org\r\nSlashID-API-Key: " .. SECRET },
                  label = "org_id carrying a header injection with the API key" }

-- A BAD case's options for a call against `org` (the real org, so that the
-- emulator would record any request), with the recognizable API key.
local function bad_options(org, c)
  return H.opts(org, SECRET, c.set)
end

-- ---- accepted options and their effects -----------------------------------

describe("rotate_key options: accepted values", function()
  local function rotate(org, key, extra)
    local result, errors, pagination, info = slashid.rotate_key(H.opts(org, key, extra))
    return result, errors, pagination, info, H.org(org)
  end

  it("sends local_region and 30 when consistency and timeout are not given", function()
    local org, key = H.new_org()
    local result, _, _, info, state = rotate(org, key)
    assert.are.equal("rotated", info.outcome)
    assert.are.equal(state.api_key, result.api_key)
    local h = state.requests[1].headers
    assert.are.equal("local_region", h["slashid-required-consistency"])
    assert.are.equal("30", h["slashid-required-consistency-timeout"])
  end)

  for _, level in ipairs({ "local_region", "all_regions" }) do
    it("accepts consistency = " .. level .. " and sends it", function()
      local org, key = H.new_org()
      local _, _, _, info, state = rotate(org, key, { consistency = level })
      assert.are.equal("rotated", info.outcome)
      assert.are.equal(level, state.requests[1].headers["slashid-required-consistency"])
    end)
  end

  for _, t in ipairs({ { 1, "1" }, { 120, "120" }, { 60, "60" }, { 60.0, "60" }, { 1.0, "1" }, { 120.0, "120" } }) do
    it("accepts timeout = " .. show(t[1]) .. " and sends " .. t[2], function()
      local org, key = H.new_org()
      local _, errors, _, info, state = rotate(org, key, { timeout = t[1] })
      assert.are.equal("rotated", info.outcome, errors[1] and errors[1].message)
      assert.are.equal(t[2], state.requests[1].headers["slashid-required-consistency-timeout"])
    end)
  end

  it("sends the default user agent slashid-lua/<version> libcurl/<version>", function()
    local org, key = H.new_org()
    local _, _, _, _, state = rotate(org, key)
    assert.matches("^slashid%-lua/" .. slashid._VERSION:gsub("%p", "%%%0") .. " libcurl/%d+%.%d+",
                   state.requests[1].headers["user-agent"])
  end)

  it("accepts user_agent and sends it", function()
    local org, key = H.new_org()
    local _, _, _, info, state = rotate(org, key, { user_agent = "key-rotator/3.1 (ops)" })
    assert.are.equal("rotated", info.outcome)
    assert.are.equal("key-rotator/3.1 (ops)", state.requests[1].headers["user-agent"])
  end)

  it("accepts connect_timeout and request_timeout as positive numbers", function()
    local org, key = H.new_org()
    local _, errors, _, info = rotate(org, key, { connect_timeout = 0.75, request_timeout = 5 })
    assert.are.equal("rotated", info.outcome, errors[1] and errors[1].message)
    org, key = H.new_org()
    _, errors, _, info = rotate(org, key, { connect_timeout = 3, request_timeout = 2.5 })
    assert.are.equal("rotated", info.outcome, errors[1] and errors[1].message)
  end)

  it("request_timeout bounds the whole transfer (a slow answer becomes unknown)", function()
    local org, key = H.new_org()
    H.faults(org, { { delay = 0.6 } })
    local result, errors, _, info = rotate(org, key, { request_timeout = 0.15 })
    assert.is_nil(result)
    assert.are.equal("unknown", info.outcome)
    assert.are.equal(1, info.attempts)
    assert.are.equal(0, errors[1].httpcode)
    assert.is_true(info.elapsed < 0.55)
  end)

  it("accepts retries = 0 and makes a single attempt on a 429", function()
    local org, key = H.new_org()
    H.faults(org, { { status = 429 }, { status = 429 }, { status = 429 } })
    local result, _, _, info = rotate(org, key, { retries = 0 })
    assert.is_nil(result)
    assert.are.equal("not_rotated", info.outcome)
    assert.are.equal(1, info.attempts)
    assert.are.equal(1, H.requests(org))
  end)

  it("accepts retries = 1.0 (an integral float) and retries once", function()
    local org, key = H.new_org()
    H.faults(org, { { status = 429 }, { status = 429 }, { status = 429 } })
    local _, _, _, info = rotate(org, key, { retries = 1.0 })
    assert.are.equal(2, info.attempts)
    assert.are.equal(429, info.status)
  end)

  it("retries twice by default", function()
    local org, key = H.new_org()
    H.faults(org, { { status = 429 }, { status = 429 }, { status = 429 }, { status = 429 } })
    local _, _, _, info = rotate(org, key)
    assert.are.equal(3, info.attempts)
    assert.are.equal(3, H.requests(org))
  end)

  it("accepts a large retries (integer >= 0 has no upper bound in API.md)", function()
    local org, key = H.new_org()
    local ok, result, _, _, info = pcall(slashid.rotate_key, H.opts(org, key, { retries = 1000 }))
    assert.is_true(ok, not ok and tostring(result) or nil)
    assert.are.equal("rotated", info.outcome)
    assert.are.equal(1, info.attempts)
  end)

  it("accepts retry_delay and retry_max_delay, equal or with the cap above", function()
    local org, key = H.new_org()
    H.faults(org, { { status = 429 } })
    local _, _, _, info = rotate(org, key, { retry_delay = 0.02, retry_max_delay = 0.02 })
    assert.are.equal("rotated", info.outcome)
    assert.are.equal(2, info.attempts)
    org, key = H.new_org()
    _, _, _, info = rotate(org, key, { retry_delay = 0.001, retry_max_delay = 0.01 })
    assert.are.equal("rotated", info.outcome)
  end)

  it("accepts retry_delay above 30 without retry_max_delay (its default is max(30, retry_delay))", function()
    local org, key = H.new_org()
    local opts = { org_id = org, api_key = key, base_url = H.http_url, retry_delay = 45 }
    local ok, result, _, _, info = pcall(slashid.rotate_key, opts)
    assert.is_true(ok, not ok and tostring(result) or nil)
    assert.are.equal("rotated", info.outcome)
  end)

  it("retry_max_delay ends the retries when Retry-After is above it", function()
    local org, key = H.new_org()
    H.faults(org, { { status = 429, headers = { ["Retry-After"] = "5" } } })
    local _, _, _, info = rotate(org, key, { retry_max_delay = 0.05 })
    assert.are.equal("not_rotated", info.outcome)
    assert.are.equal(1, info.attempts)
    assert.are.equal(5, info.retry_after)
  end)

  it("accepts max_response_bytes and counts an answer above it as unknown", function()
    local org, key = H.new_org()
    local result, errors, _, info = rotate(org, key, { max_response_bytes = 16 })
    assert.is_nil(result)
    assert.are.equal("unknown", info.outcome)
    assert.is_true(#errors >= 1)
    org, key = H.new_org()
    result, errors, _, info = rotate(org, key, { max_response_bytes = 4096.0 })
    assert.are.equal("rotated", info.outcome, errors[1] and errors[1].message)
  end)

  it("accepts a large max_response_bytes (integer > 0 has no upper bound in API.md)", function()
    local big = math.maxinteger or 2 ^ 53
    for _, n in ipairs({ 2 ^ 40, big }) do
      local org, key = H.new_org()
      local ok, result, _, _, info = pcall(slashid.rotate_key, H.opts(org, key, { max_response_bytes = n }))
      assert.is_true(ok, not ok and tostring(result) or nil)
      assert.are.equal("rotated", info.outcome)
    end
  end)

  it("accepts ca_file: HTTPS to the emulator works with its CA, not with the system store", function()
    local org, key = H.new_org()
    local result, errors, _, info = rotate(org, key, { base_url = H.https_url, ca_file = H.ca_file })
    assert.are.equal("rotated", info.outcome, errors[1] and errors[1].message)
    H.assert_key_equal(H.org(org).api_key, result.api_key)
    org, key = H.new_org()
    result, errors, _, info = rotate(org, key, { base_url = H.https_url, retries = 0 })
    assert.is_nil(result)
    assert.are.equal("not_rotated", info.outcome)
    assert.are.equal(0, H.org(org).rotations or 0)
  end)

  it("accepts save_to and writes the new key there", function()
    local org, key = H.new_org()
    local path = H.tmpname("saved")
    local result, errors, _, info = rotate(org, key, { save_to = path })
    assert.are.equal("rotated", info.outcome, errors[1] and errors[1].message)
    assert.is_true(info.saved)
    assert.are.equal(result.api_key .. "\n", H.read_file(path))
    assert.are.equal("600", H.mode(path))
  end)

  it("accepts verify = true and checks the new key", function()
    local org, key = H.new_org()
    local result, errors, _, info = rotate(org, key, { verify = true })
    assert.are.equal("rotated", info.outcome, errors[1] and errors[1].message)
    assert.is_true(info.verified)
    assert.are.same({}, errors)
    assert.are.equal(result.api_key, H.org(org).api_key)
    local last = H.org(org).requests[2]
    assert.are.equal("GET", last.method)
    assert.are.equal("current", last.key)
  end)

  it("accepts verify = false and makes no check", function()
    local org, key = H.new_org()
    local _, _, _, info = rotate(org, key, { verify = false })
    assert.are.equal("rotated", info.outcome)
    assert.is_not_true(info.verified)
    assert.are.equal(1, H.requests(org))
  end)

  it("accepts debug and calls it with a trace that hides the key", function()
    local org, key = H.new_org()
    local lines = {}
    local result, _, _, info = rotate(org, key, { debug = function(line) lines[#lines + 1] = line end })
    assert.are.equal("rotated", info.outcome)
    assert.is_true(#lines > 0)
    local trace = table.concat(lines, "\n")
    assert.is_string(lines[1])
    H.assert_no_secret(trace, key)
    H.assert_no_secret(trace, result.api_key)
    assert.is_truthy(trace:find("SlashID-API-Key: <redacted>", 1, true))
  end)

  it("accepts every option at once", function()
    local org, key = H.new_org()
    local path = H.tmpname("all")
    local seen = 0
    local result, errors, _, info = slashid.rotate_key{
      org_id = org, api_key = key, consistency = "all_regions", timeout = 45,
      base_url = H.https_url .. "/", connect_timeout = 5, request_timeout = 20,
      ca_file = H.ca_file, retries = 3, retry_delay = 0.01, retry_max_delay = 0.1,
      max_response_bytes = 65536, save_to = path, verify = true,
      user_agent = "all-options/1", debug = function() seen = seen + 1 end,
    }
    assert.are.equal("rotated", info.outcome, errors[1] and errors[1].message)
    assert.is_true(info.saved)
    assert.is_true(info.verified)
    assert.are.equal(result.api_key .. "\n", H.read_file(path))
    assert.is_true(seen > 0)
    local h = H.org(org).requests[1].headers
    assert.are.equal("all_regions", h["slashid-required-consistency"])
    assert.are.equal("45", h["slashid-required-consistency-timeout"])
    assert.are.equal("all-options/1", h["user-agent"])
  end)

  it("does not change the caller's options table", function()
    local org, key = H.new_org()
    local opts = H.opts(org, key, { timeout = 60.0 })
    local copy = {}
    for k, v in pairs(opts) do copy[k] = v end
    slashid.rotate_key(opts)
    assert.are.same(copy, opts)
    assert.are.equal(60.0, opts.timeout)
  end)
end)

-- ---- argument errors -------------------------------------------------------

describe("rotate_key argument errors", function()
  for _, c in ipairs(BAD) do
    it("raises for " .. c.label, function()
      local org = H.new_org()
      raises(c.option, org, slashid.rotate_key, bad_options(org, c))
    end)
  end

  it("raises for retry_max_delay below the default retry_delay (0.5)", function()
    local org = H.new_org()
    raises("retry_max_delay", org, slashid.rotate_key,
           { org_id = org, api_key = SECRET, base_url = H.http_url, retry_max_delay = 0.1 })
  end)

  it("raises for a missing org_id", function()
    local org = H.new_org()
    raises("org_id", org, slashid.rotate_key, { api_key = SECRET, base_url = H.http_url })
  end)

  it("raises for a missing api_key", function()
    local org = H.new_org()
    raises("api_key", org, slashid.rotate_key, { org_id = org, base_url = H.http_url })
  end)

  it("raises for an empty options table, nil and no argument", function()
    raises({ "org_id", "api_key" }, nil, slashid.rotate_key, {})
    raises({ "org_id", "api_key" }, nil, slashid.rotate_key, nil)
    raises({ "org_id", "api_key" }, nil, slashid.rotate_key)
  end)

  for _, v in ipairs({ SECRET, 42, true, print, io.stdout }) do
    it("raises when the options are " .. show(v) .. " instead of a table", function()
      local err = raises(nil, nil, slashid.rotate_key, v)
      assert.is_truthy(err:find("table", 1, true), err)
    end)
  end

  for _, name in ipairs({ "timout", "apikey", "orgId", "org", "key", "consistancy", "base_uri",
                          "retry", "concurrency", "rate", "on_progress", "Timeout" }) do
    it("raises for the unknown option '" .. name .. "'", function()
      local org = H.new_org()
      raises(name, org, slashid.rotate_key, bad_options(org, { set = { [name] = 30 } }))
    end)
  end

  it("raises for an unknown option given a valid value of a known one", function()
    local org = H.new_org()
    raises("timout", org, slashid.rotate_key, bad_options(org, { set = { timout = 30 } }))
    raises("consistence", org, slashid.rotate_key,
           bad_options(org, { set = { consistence = "all_regions" } }))
  end)

  it("raises for non-string keys (array items, booleans, tables)", function()
    local org = H.new_org()
    local opts = bad_options(org, { set = {} })
    opts[1] = "all_regions"
    raises(nil, org, slashid.rotate_key, opts)
    opts = bad_options(org, { set = {} })
    opts[true] = 1
    raises(nil, org, slashid.rotate_key, opts)
    opts = bad_options(org, { set = {} })
    opts[{}] = 1
    raises(nil, org, slashid.rotate_key, opts)
    opts = bad_options(org, { set = {} })
    opts[1.5] = SECRET
    raises(nil, org, slashid.rotate_key, opts)
  end)

  it("raises for the API key used as an option name, without quoting it", function()
    local org = H.new_org()
    local opts = bad_options(org, { set = {} })
    opts[SECRET] = true
    raises(nil, org, slashid.rotate_key, opts)
  end)

  it("raises for a name with control characters, without echoing it raw", function()
    local org = H.new_org()
    local opts = bad_options(org, { set = {} })
    opts["timeout\r\nX-Injected: 1"] = 30
    local err = raises(nil, org, slashid.rotate_key, opts)
    assert.is_falsy(err:find("\r\nX-Injected", 1, true), err)
  end)
end)

-- ---- base_url ----------------------------------------------------------------

describe("base_url", function()
  -- Forms that name only loopback hosts: safe to give to any call.
  local function loopback_refused(port)
    return {
      "ftp://127.0.0.1:" .. port,
      "ftp://127.0.0.1:" .. port .. "/",
      "file:///etc/passwd",
      "127.0.0.1:" .. port,
      "//127.0.0.1:" .. port,
      "http://",
      "http://:" .. port,
      "http://127.0.0.1:" .. port .. "?x=1",
      "http://127.0.0.1:" .. port .. "/?x=1",
      "http://127.0.0.1:" .. port .. "/#frag",
      "http://127.0.0.1:" .. port .. "#frag",
      "https://127.0.0.1:" .. port .. "/?x=1",
      "http://127.0.0.01:" .. port,
      "http://127.000.0.1:" .. port,
      "http://127.0.0.001:" .. port,
    }
  end

  describe("refused forms on loopback hosts", function()
    local port = PORT
    for _, url in ipairs(loopback_refused(port)) do
      it("refuses " .. url .. " in rotate_key, check_key and new", function()
        local org = H.new_org()
        raises("base_url", org, slashid.rotate_key, H.opts(org, SECRET, { base_url = url }))
        raises("base_url", org, slashid.check_key, H.opts(org, SECRET, { base_url = url }))
        raises("base_url", org, slashid.new, { base_url = url })
      end)
    end
  end)

  describe("refused forms naming other hosts", function()
    local P = 8080
    local URLS = {
      "http://example.com",
      "http://example.com/",
      "http://example.com:" .. P,
      "http://api.slashid.com",
      "HTTP://example.com",
      "ftp://example.com",
      "http://localhost@evil.com",
      "http://localhost:" .. P .. "@evil.com",
      "http://127.0.0.1@evil.com",
      "http://127.0.0.1:" .. P .. "@evil.com",
      "http://" .. SECRET .. "@example.com",
      "http://127.0.0.1.evil.com",
      "http://127.0.0.1.evil.com:" .. P,
      "http://localhost.evil.com",
      "http://evil.com/127.0.0.1",
      "http://evil.com#@127.0.0.1",
      "http://evil.com?@127.0.0.1",
      "http://0177.0.0.1:" .. P,
      "http://0127.0.0.1:" .. P,
      "http://10.0.0.1",
      "http://192.168.1.1:" .. P,
      "http://128.0.0.1",
      "http://[::2]:" .. P,
      "http://[fe80::1]:" .. P,
      "http://example.com/" .. SECRET,
      "https://example.com/?key=" .. SECRET,
      "https://example.com/#" .. SECRET,
    }

    local results, org
    lazy_setup(function()
      org = H.new_org()
      results = run_lua({ SPEC_ORG = org, SPEC_URLS = cjson.encode(URLS) }, [[
        local org = os.getenv("SPEC_ORG")
        local out = {}
        for i, url in ipairs(cjson.decode(os.getenv("SPEC_URLS"))) do
          local o = { org_id = org, api_key = SECRET, base_url = url, retries = 0,
                      connect_timeout = 2, request_timeout = 3 }
          out[i] = { rotate = rot(slashid.rotate_key, o), check = chk(slashid.check_key, o) }
        end
        return out
      ]])
    end)

    for i, url in ipairs(URLS) do
      local name = url:gsub(SECRET:gsub("%p", "%%%0"), "<key>")
      it("refuses " .. name .. " in rotate_key and check_key before any request", function()
        assert.is_table(results[i])
        raised_in_subprocess(results[i].rotate, "base_url")
        raised_in_subprocess(results[i].check, "base_url")
        assert.are.equal(0, H.requests(org))
      end)
      it("refuses " .. name .. " in slashid.new", function()
        raises("base_url", nil, slashid.new, { base_url = url })
      end)
    end
  end)

  describe("accepted forms", function()
    -- Given to slashid.new only: no request is made.
    local ACCEPTED = {
      "https://example.com", "https://example.com/", "https://example.com:8443/api/",
      "https://api.slashid.com", "https://api.sandbox.slashid.com", slashid.PRODUCTION,
      slashid.SANDBOX, "https://10.0.0.1", "https://[2001:db8::1]:443",
      "http://127.0.0.1", "http://127.0.0.1:8080", "http://127.0.0.1:8080/", "http://127.1.2.3:9",
      "http://127.255.255.254", "http://localhost", "http://localhost:8080",
      "http://[::1]", "http://[::1]:8080", "http://127.0.0.1:8080/prefix",
    }
    for _, url in ipairs(ACCEPTED) do
      it("accepts " .. url .. " (slashid.new)", function()
        local ok, client = pcall(slashid.new, { base_url = url })
        assert.is_true(ok, not ok and tostring(client) or nil)
        client:close()
      end)
    end

    it("rotates over http://127.0.0.1 (the emulator) with and without a trailing slash", function()
      local org, key = H.new_org()
      local _, errors, _, info = slashid.rotate_key(H.opts(org, key, { base_url = H.http_url }))
      assert.are.equal("rotated", info.outcome, errors[1] and errors[1].message)
      local key2 = H.org(org).api_key
      _, errors, _, info = slashid.rotate_key(H.opts(org, key2, { base_url = H.http_url .. "/" }))
      assert.are.equal("rotated", info.outcome, errors[1] and errors[1].message)
      assert.are.equal("/organizations/api-keys", H.org(org).requests[2].path)
    end)

    it("rotates over http://localhost:<port>", function()
      local org, key = H.new_org()
      local base = "http://localhost:" .. PORT
      local _, errors, _, info = slashid.rotate_key(H.opts(org, key, { base_url = base }))
      assert.are.equal("rotated", info.outcome, errors[1] and errors[1].message)
      assert.are.equal(1, H.org(org).rotations)
    end)

    local function closed(url_of)
      local url = url_of(H.closed_port())
      local ok, result, errors, _, info = pcall(slashid.rotate_key, {
        org_id = "af5fbd30-7ce7-4548-8b30-4cd59cb2aba1", api_key = SECRET, base_url = url,
        retries = 0, connect_timeout = 2, request_timeout = 3,
      })
      assert.is_true(ok, not ok and tostring(result) or nil)
      assert.is_nil(result)
      assert.are.equal("not_rotated", info.outcome)
      assert.is_true(#errors >= 1)
      H.assert_no_secret(H.flatten(errors, info), SECRET)
    end

    it("accepts http://[::1]:<port> (a closed port: not_rotated, no raise)", function()
      closed(function(p) return "http://[::1]:" .. p end)
    end)

    it("accepts https://127.0.0.1:<port> (a closed port: not_rotated, no raise)", function()
      closed(function(p) return "https://127.0.0.1:" .. p end)
    end)

    it("accepts https://localhost:<port> (a closed port: not_rotated, no raise)", function()
      closed(function(p) return "https://localhost:" .. p .. "/" end)
    end)

    it("check_key accepts loopback http and https base URLs", function()
      local org, key = H.new_org()
      assert.is_true(slashid.check_key(H.opts(org, key, { base_url = H.http_url })))
      assert.is_true(slashid.check_key(H.opts(org, key, { base_url = H.https_url, ca_file = H.ca_file })))
      assert.is_true(slashid.check_key(H.opts(org, key, {
        base_url = "http://localhost:" .. PORT .. "/" })))
    end)
  end)
end)

-- ---- secrets in argument errors ------------------------------------------

describe("argument errors never show the API key", function()
  it("when the key is the bad value of api_key (control characters)", function()
    local org = H.new_org()
    for _, c in ipairs(CONTROL) do
      raises("api_key", org, slashid.rotate_key, H.opts(org, SECRET .. c[2]))
      raises("api_key", org, slashid.check_key, H.opts(org, SECRET .. c[2]))
    end
  end)

  it("when the key is passed as the value of another option", function()
    local org = H.new_org()
    for _, name in ipairs({ "org_id", "consistency", "timeout", "base_url", "connect_timeout",
                            "request_timeout", "retries", "retry_delay", "retry_max_delay",
                            "max_response_bytes", "verify", "debug" }) do
      local opts = H.opts(org, SECRET .. "_other")
      opts[name] = SECRET .. (name == "org_id" and "\n" or "")
      local err = raises(name, org, slashid.rotate_key, opts)
      H.assert_no_secret(err, SECRET .. "_other")
    end
  end)

  it("when another option is wrong while api_key holds the key", function()
    local org = H.new_org()
    raises("save_to", org, slashid.rotate_key, H.opts(org, SECRET, { save_to = 1 }))
    raises("timeout", org, slashid.rotate_key, H.opts(org, SECRET, { timeout = 0 }))
    raises("timout", org, slashid.rotate_key, H.opts(org, SECRET, { timout = 30 }))
  end)

  it("when the key is in a base_url on a loopback host", function()
    local org = H.new_org()
    local port = PORT
    for _, url in ipairs({ "http://127.0.0.1:" .. port .. "/?key=" .. SECRET,
                           "http://127.0.0.1:" .. port .. "/#" .. SECRET,
                           "ftp://127.0.0.1:" .. port .. "/" .. SECRET,
                           SECRET .. "://127.0.0.1:" .. port }) do
      raises("base_url", org, slashid.rotate_key, H.opts(org, "sk_another_key_123", { base_url = url }))
    end
  end)

  it("when a table value's __tostring would give the key", function()
    local org = H.new_org()
    local sneaky = setmetatable({}, { __tostring = function() return SECRET end,
                                      __name = SECRET })
    for _, name in ipairs({ "org_id", "api_key", "consistency", "timeout", "base_url", "retries" }) do
      raises(name, org, slashid.rotate_key, H.opts(org, SECRET, { [name] = sneaky }))
    end
  end)
end)

-- ---- option tables with metatables ------------------------------------------

describe("option tables with metatables", function()
  -- A call either succeeds cleanly or raises a `slashid: ` error; the
  -- metatable's own error never surfaces.
  local function clean(org, fn, ...)
    local ok, a, b, c, d = pcall(fn, ...)
    if not ok then
      assert.is_string(a)
      assert.is_truthy(a:find("^slashid: "), "not a slashid error: " .. tostring(a))
      assert.is_falsy(a:find("METAMETHOD_CALLED", 1, true), a)
      assert.are.equal(0, H.requests(org))
    end
    return ok, a, b, c, d
  end

  local function with_meta(opts, mt)
    return setmetatable(opts, mt)
  end

  local function boom() error("METAMETHOD_CALLED_options", 0) end

  it("an options table whose __index raises still works (only its own fields count)", function()
    local org, key = H.new_org()
    local ok, result, _, _, info = clean(org, slashid.rotate_key,
      with_meta(H.opts(org, key), { __index = boom }))
    assert.is_true(ok)
    assert.are.equal("rotated", info.outcome)
    H.assert_key_equal(H.org(org).api_key, result.api_key)
  end)

  it("an options table whose __newindex raises is not written to", function()
    local org, key = H.new_org()
    local opts = H.opts(org, key)
    local snapshot = {}
    for k, v in pairs(opts) do snapshot[k] = v end
    local ok, _, _, _, info = clean(org, slashid.rotate_key, with_meta(opts, { __newindex = boom }))
    assert.is_true(ok)
    assert.are.equal("rotated", info.outcome)
    local after = {}
    for k, v in next, opts do after[k] = v end
    assert.are.same(snapshot, after)
  end)

  it("an options table whose __pairs raises is read without it", function()
    local org, key = H.new_org()
    local ok, _, _, _, info = clean(org, slashid.rotate_key,
      with_meta(H.opts(org, key), { __pairs = boom, __ipairs = boom }))
    assert.is_true(ok)
    assert.are.equal("rotated", info.outcome)
  end)

  it("an options table with every metamethod raising gives a clean result", function()
    local org, key = H.new_org()
    local mt = getmetatable(hostile("options"))
    local ok, _, _, _, info = clean(org, slashid.rotate_key, with_meta(H.opts(org, key), mt))
    assert.is_true(ok)
    assert.are.equal("rotated", info.outcome)
    org, key = H.new_org()
    local okc, accepted = clean(org, slashid.check_key, with_meta(H.opts(org, key), mt))
    assert.is_true(okc)
    assert.is_true(accepted)
    local okn, client = clean(org, slashid.new, with_meta(H.opts(org, key), mt))
    assert.is_true(okn)
    local _, _, _, cinfo = client:rotate_key(with_meta({ timeout = 20 }, mt))
    assert.are.equal("rotated", cinfo.outcome)
    client:close()
  end)

  it("a hostile options table with a bad option raises a slashid error", function()
    local org = H.new_org()
    local mt = getmetatable(hostile("options"))
    raises("timeout", org, slashid.rotate_key, with_meta(H.opts(org, SECRET, { timeout = 0 }), mt))
    raises("timout", org, slashid.rotate_key, with_meta(H.opts(org, SECRET, { timout = 1 }), mt))
  end)

  it("fields offered only through __index are a clean result or a slashid error", function()
    local org, key = H.new_org()
    local proxy = setmetatable({}, { __index = H.opts(org, key) })
    local ok, result, _, _, info = clean(org, slashid.rotate_key, proxy)
    if ok then
      assert.are.equal("rotated", info.outcome)
      H.assert_key_equal(H.org(org).api_key, result.api_key)
    end
  end)

  for _, name in ipairs({ "org_id", "api_key", "consistency", "timeout", "base_url",
                          "connect_timeout", "request_timeout", "ca_file", "retries",
                          "retry_delay", "retry_max_delay", "max_response_bytes", "save_to",
                          "verify", "user_agent", "debug" }) do
    it("a value with raising metamethods as " .. name .. " gives a slashid error", function()
      local org = H.new_org()
      raises(name, org, slashid.rotate_key, H.opts(org, SECRET, { [name] = hostile(name) }))
      local tostring_only = setmetatable({}, { __tostring = function()
        error("METAMETHOD_CALLED_tostring", 0) end })
      raises(name, org, slashid.rotate_key, H.opts(org, SECRET, { [name] = tostring_only }))
      raises(name, org, slashid.new, { [name] = hostile(name) })
    end)
  end

  it("a key with raising metamethods gives a slashid error", function()
    local org = H.new_org()
    local opts = H.opts(org, SECRET)
    opts[hostile("key")] = 1
    raises(nil, org, slashid.rotate_key, opts)
  end)

  it("a value with raising metamethods in check_key gives a slashid error", function()
    local org = H.new_org()
    raises("request_timeout", org, slashid.check_key,
           H.opts(org, SECRET, { request_timeout = hostile("check") }))
    raises("timeout", org, slashid.check_key, H.opts(org, SECRET, { timeout = hostile("check") }))
  end)
end)

-- ---- environment -----------------------------------------------------------

describe("options from the environment", function()
  it("uses SLASHID_ORG_ID, SLASHID_API_KEY and SLASHID_BASE_URL when options omit them", function()
    local org, key = H.new_org()
    local r = run_lua({ SLASHID_ORG_ID = org, SLASHID_API_KEY = key, SLASHID_BASE_URL = H.http_url }, [[
      local c = slashid.new{}
      local out = { check = chk(slashid.check_key), check_client = chk(c.check_key, c),
                    check_empty = chk(slashid.check_key, {}) }
      c:close()
      out.rotate = rot(slashid.rotate_key, { retry_delay = 0.01 })
      return out
    ]])
    assert.is_true(r.check.ok, r.check.err)
    assert.is_true(r.check.accepted)
    assert.is_true(r.check_client.ok, r.check_client.err)
    assert.is_true(r.check_client.accepted)
    assert.is_true(r.check_empty.accepted)
    assert.is_true(r.rotate.ok, r.rotate.err)
    assert.are.equal("rotated", r.rotate.outcome)
    assert.are.equal(1, H.org(org).rotations)
    assert.are.equal(4, H.requests(org))
  end)

  it("uses each variable alone to fill in the one missing option", function()
    local org, key = H.new_org()
    local r = run_lua({ SLASHID_ORG_ID = org }, ([[
      return { chk(slashid.check_key, { api_key = %q, base_url = %q }) }
    ]]):format(key, H.http_url))
    assert.is_true(r[1].accepted, r[1].err)
    r = run_lua({ SLASHID_API_KEY = key }, ([[
      return { chk(slashid.check_key, { org_id = %q, base_url = %q }) }
    ]]):format(org, H.http_url))
    assert.is_true(r[1].accepted, r[1].err)
    r = run_lua({ SLASHID_BASE_URL = H.http_url }, ([[
      return { chk(slashid.check_key, { org_id = %q, api_key = %q }) }
    ]]):format(org, key))
    assert.is_true(r[1].accepted, r[1].err)
    assert.are.equal(3, H.requests(org))
  end)

  it("lets explicit options win over the environment", function()
    local org, key = H.new_org()
    local other, other_key = H.new_org()
    local r = run_lua({ SLASHID_ORG_ID = other, SLASHID_API_KEY = other_key,
                        SLASHID_BASE_URL = "https://127.0.0.1:" .. H.closed_port() }, ([[
      return { rot(slashid.rotate_key, { org_id = %q, api_key = %q, base_url = %q, retries = 0 }) }
    ]]):format(org, key, H.http_url))
    assert.is_true(r[1].ok, r[1].err)
    assert.are.equal("rotated", r[1].outcome)
    assert.are.equal(1, H.org(org).rotations)
    assert.are.equal(0, H.requests(other))
    assert.are.equal(other_key, H.org(other).api_key)
  end)

  it("lets a client's defaults win over the environment", function()
    local org, key = H.new_org()
    local other, other_key = H.new_org()
    local r = run_lua({ SLASHID_ORG_ID = other, SLASHID_API_KEY = other_key,
                        SLASHID_BASE_URL = "https://127.0.0.1:" .. H.closed_port() }, ([[
      local c = slashid.new{ org_id = %q, api_key = %q, base_url = %q, retries = 0 }
      local out = { chk(c.check_key, c) }
      c:close()
      return out
    ]]):format(org, key, H.http_url))
    assert.is_true(r[1].accepted, r[1].err)
    assert.are.equal(1, H.requests(org))
    assert.are.equal(0, H.requests(other))
  end)

  it("ignores a bad variable when the option is given explicitly", function()
    local org, key = H.new_org()
    local r = run_lua({ SLASHID_BASE_URL = "http://example.com", SLASHID_API_KEY = SECRET .. "\r\n" }, ([[
      return { rot(slashid.rotate_key, { org_id = %q, api_key = %q, base_url = %q }) }
    ]]):format(org, key, H.http_url))
    assert.is_true(r[1].ok, r[1].err)
    assert.are.equal("rotated", r[1].outcome)
  end)

  local BAD_ENV = {
    { "base_url", { SLASHID_BASE_URL = "http://example.com" } },
    { "base_url", { SLASHID_BASE_URL = "http://localhost@evil.com" } },
    { "base_url", { SLASHID_BASE_URL = "http://127.0.0.1.evil.com" } },
    { "base_url", { SLASHID_BASE_URL = "ftp://127.0.0.1:1" } },
    { "base_url", { SLASHID_BASE_URL = "http://127.0.0.1:1/?q=" .. SECRET } },
    { "api_key", { SLASHID_API_KEY = SECRET .. "\r" } },
    { "api_key", { SLASHID_API_KEY = SECRET .. "\n" } },
    { "api_key", { SLASHID_API_KEY = "sk_SECRET_do\tnot_leak_123456" } },
    { "api_key", { SLASHID_API_KEY = SECRET .. "\127" } },
    { "org_id", { SLASHID_ORG_ID = "af5fbd30\n-7ce7" } },
    { "org_id", { SLASHID_ORG_ID = "af5fbd30\r-7ce7" } },
  }
  for _, b in ipairs(BAD_ENV) do
    local var, value = next(b[2])
    it("raises naming " .. b[1] .. " for " .. var .. " = " .. show(value):gsub(SECRET:gsub("%p", "%%%0"), "<key>"), function()
      local org = H.new_org()
      local env = { SLASHID_ORG_ID = org, SLASHID_API_KEY = SECRET, SLASHID_BASE_URL = H.http_url }
      env[var] = value
      local before = H.stats()
      local r = run_lua(env, [[
        local c = slashid.new{}
        local out = { rotate = rot(slashid.rotate_key, { retries = 0 }),
                      check = chk(slashid.check_key, { retries = 0 }),
                      client = rot(c.rotate_key, c, { retries = 0 }) }
        c:close()
        return out
      ]])
      raised_in_subprocess(r.rotate, b[1])
      raised_in_subprocess(r.check, b[1])
      raised_in_subprocess(r.client, b[1])
      assert.are.equal(0, H.requests(org))
      assert.are.equal(before.requests, H.stats().requests)
    end)
  end

  it("raises for a missing org_id or api_key when neither option nor variable is set", function()
    local org = H.new_org()
    local r = run_lua({ SLASHID_BASE_URL = H.http_url, SLASHID_API_KEY = SECRET }, [[
      return { rot(slashid.rotate_key, {}), chk(slashid.check_key) }
    ]])
    raised_in_subprocess(r[1], "org_id")
    raised_in_subprocess(r[2], "org_id")
    r = run_lua({ SLASHID_BASE_URL = H.http_url, SLASHID_ORG_ID = org }, [[
      return { rot(slashid.rotate_key, {}), chk(slashid.check_key, {}) }
    ]])
    raised_in_subprocess(r[1], "api_key")
    raised_in_subprocess(r[2], "api_key")
    assert.are.equal(0, H.requests(org))
  end)
end)

-- ---- check_key ---------------------------------------------------------------

describe("check_key options", function()
  it("accepts every request option", function()
    local org, key = H.new_org()
    local seen = 0
    local ok, accepted, errors, info = pcall(slashid.check_key, {
      org_id = org, api_key = key, base_url = H.https_url, connect_timeout = 5,
      request_timeout = 10, ca_file = H.ca_file, retries = 1, retry_delay = 0.01,
      retry_max_delay = 0.05, max_response_bytes = 65536, user_agent = "checker/1",
      debug = function() seen = seen + 1 end,
    })
    assert.is_true(ok, not ok and tostring(accepted) or nil)
    assert.is_true(accepted, errors and errors[1] and errors[1].message)
    assert.are.equal(200, info.status)
    assert.is_true(seen > 0)
    local req = H.org(org).requests[1]
    assert.are.equal("GET", req.method)
    assert.are.equal("checker/1", req.headers["user-agent"])
  end)

  for _, name in ipairs(REQUEST_OPTIONS) do
    it("accepts " .. name .. " alone among the required ones", function()
      local org, key = H.new_org()
      local values = {
        connect_timeout = 4, request_timeout = 8, ca_file = H.ca_file, retries = 0,
        retry_delay = 0.01, retry_max_delay = 30, max_response_bytes = 2048,
        user_agent = "ua", debug = function() end,
      }
      local opts = { org_id = org, api_key = key, base_url = H.http_url }
      if values[name] ~= nil then opts[name] = values[name] end
      local ok, accepted = pcall(slashid.check_key, opts)
      assert.is_true(ok, not ok and tostring(accepted) or nil)
      assert.is_true(accepted)
    end)
  end

  local VALID = { consistency = "all_regions", timeout = 10, save_to = "/nonexistent/key",
                  verify = true }
  for _, name in ipairs(NOT_FOR_CHECK_KEY) do
    it("raises for " .. name .. " (not a check_key option)", function()
      local org = H.new_org()
      raises(name, org, slashid.check_key, H.opts(org, SECRET, { [name] = VALID[name] }))
    end)
    it("raises for " .. name .. " passed to client:check_key", function()
      local org = H.new_org()
      local client = slashid.new(H.opts(org, SECRET))
      raises(name, org, client.check_key, client, { [name] = VALID[name] })
      client:close()
    end)
  end

  for _, name in ipairs({ "timout", "concurrency", "rate", "on_progress" }) do
    it("raises for the unknown option " .. name, function()
      local org = H.new_org()
      raises(name, org, slashid.check_key, H.opts(org, SECRET, { [name] = 1 }))
    end)
  end

  it("a client with consistency, timeout, save_to and verify defaults can check_key", function()
    local org, key = H.new_org()
    local path = H.tmpname("client-save")
    local client = slashid.new{
      org_id = org, api_key = key, base_url = H.http_url, consistency = "all_regions",
      timeout = 10, save_to = path, verify = true, retry_delay = 0.01, retry_max_delay = 0.05,
    }
    local ok, accepted, errors = pcall(client.check_key, client)
    assert.is_true(ok, not ok and tostring(accepted) or nil)
    assert.is_true(accepted, errors and errors[1] and errors[1].message)
    ok, accepted = pcall(client.check_key, client, { request_timeout = 5 })
    assert.is_true(ok, not ok and tostring(accepted) or nil)
    assert.is_true(accepted)
    assert.is_false(exists(path))
    assert.are.equal(0, H.org(org).rotations or 0)
    -- the same defaults are used by rotate_key
    local result, _, _, info = client:rotate_key()
    assert.are.equal("rotated", info.outcome)
    local put = H.org(org).requests[3]
    assert.are.equal("all_regions", put.headers["slashid-required-consistency"])
    assert.are.equal("10", put.headers["slashid-required-consistency-timeout"])
    assert.are.equal(result.api_key .. "\n", H.read_file(path))
    assert.is_true(info.verified)
    client:close()
  end)
end)

-- ---- slashid.new -----------------------------------------------------------

describe("slashid.new defaults", function()
  for _, c in ipairs(BAD) do
    it("raises at new for " .. c.label, function()
      local org = H.new_org()
      raises(c.option, org, slashid.new, bad_options(org, c))
    end)
  end

  for _, v in ipairs({ SECRET, 42, true, print }) do
    it("raises at new when the defaults are " .. show(v), function()
      raises(nil, nil, slashid.new, v)
    end)
  end

  for _, name in ipairs({ "timout", "apikey", "orgId" }) do
    it("raises at new for the unknown option " .. name, function()
      raises(name, nil, slashid.new, { org_id = "o", api_key = SECRET, [name] = 1 })
    end)
  end

  it("does not need org_id or api_key at new, but the call raises without them", function()
    local ok, client = pcall(slashid.new, { base_url = H.http_url, timeout = 10 })
    assert.is_true(ok, not ok and tostring(client) or nil)
    raises({ "org_id", "api_key" }, nil, client.rotate_key, client)
    raises({ "org_id", "api_key" }, nil, client.check_key, client, {})
    local org = H.new_org()
    raises("api_key", org, client.rotate_key, client, { org_id = org })
    client:close()
  end)

  it("per-call options override the defaults, which stay as they were", function()
    local org, key = H.new_org()
    local client = slashid.new(H.opts(org, key, {
      consistency = "all_regions", timeout = 10, user_agent = "from-defaults" }))
    local _, errors, _, info = client:rotate_key{ consistency = "local_region", timeout = 20,
                                                  user_agent = "per-call" }
    assert.are.equal("rotated", info.outcome, errors[1] and errors[1].message)
    local _, _, _, info2 = client:rotate_key()
    assert.are.equal("rotated", info2.outcome)
    local reqs = H.org(org).requests
    assert.are.equal("local_region", reqs[1].headers["slashid-required-consistency"])
    assert.are.equal("20", reqs[1].headers["slashid-required-consistency-timeout"])
    assert.are.equal("per-call", reqs[1].headers["user-agent"])
    assert.are.equal("all_regions", reqs[2].headers["slashid-required-consistency"])
    assert.are.equal("10", reqs[2].headers["slashid-required-consistency-timeout"])
    assert.are.equal("from-defaults", reqs[2].headers["user-agent"])
    client:close()
  end)

  it("per-call org_id, api_key and base_url override the defaults", function()
    local org1, key1 = H.new_org()
    local org2, key2 = H.new_org()
    local client = slashid.new{ org_id = org1, api_key = key1, retries = 0,
                                base_url = "https://127.0.0.1:" .. H.closed_port() }
    local result, errors, _, info = client:rotate_key{ org_id = org2, api_key = key2,
                                                       base_url = H.http_url }
    assert.are.equal("rotated", info.outcome, errors[1] and errors[1].message)
    H.assert_key_equal(H.org(org2).api_key, result.api_key)
    assert.are.equal(0, H.requests(org1))
    assert.are.equal(key1, H.org(org1).api_key)
    client:close()
  end)

  it("per-call options are checked like rotate_key's", function()
    local org = H.new_org()
    local client = slashid.new(H.opts(org, SECRET))
    for _, c in ipairs({ case("timeout", 0), case("timeout", 1.5), case("retries", -1),
                         case("consistency", SECRET), case("api_key", SECRET .. "\n"),
                         case("base_url", "http://127.0.0.1:" .. PORT .. "?x"),
                         case("timout", 1), case("save_to", 1) }) do
      raises(c.option, org, client.rotate_key, client, c.set)
    end
    raises(nil, org, client.rotate_key, client, SECRET)
    client:close()
  end)

  it("checks retry_max_delay against a retry_delay from the defaults", function()
    local org = H.new_org()
    local client = slashid.new(H.opts(org, SECRET, { retry_delay = 1, retry_max_delay = 2 }))
    raises("retry_max_delay", org, client.rotate_key, client, { retry_max_delay = 0.5 })
    client:close()
  end)
end)

-- ---- client per-call and check_key argument errors ---------------------------

describe("client:rotate_key and check_key argument errors", function()
  for _, c in ipairs(BAD) do
    it("client:rotate_key raises for " .. c.label, function()
      local org = H.new_org()
      local client = slashid.new(H.opts(org, SECRET))
      raises(c.option, org, client.rotate_key, client, c.set)
      client:close()
    end)
    it("slashid.check_key raises for " .. c.label, function()
      local org = H.new_org()
      raises(c.option, org, slashid.check_key, bad_options(org, c))
    end)
  end

  for _, v in ipairs({ SECRET, 42, true }) do
    it("check_key and client calls raise when the options are " .. show(v), function()
      local org = H.new_org()
      raises(nil, org, slashid.check_key, v)
      local client = slashid.new(H.opts(org, SECRET))
      raises(nil, org, client.check_key, client, v)
      raises(nil, org, client.rotate_key, client, v)
      client:close()
    end)
  end
end)

-- ---- messages when called from Lua code ------------------------------------

-- A Lua caller does not call under pcall directly: the message must still
-- start with `slashid: ` (no "file:line: " position in front of it).
describe("argument errors raised into Lua code", function()
  local function from_lua(fn)
    local ok, err = pcall(fn)
    assert.is_false(ok)
    assert.is_string(err)
    assert.is_truthy(err:find("^slashid: "), "message does not start with 'slashid: ': " .. err)
    H.assert_no_secret(err, SECRET)
  end

  it("rotate_key", function()
    from_lua(function()
      local r = slashid.rotate_key{ org_id = "o", api_key = SECRET, timeout = 0 }
      return r
    end)
  end)

  it("check_key", function()
    from_lua(function()
      local ok = slashid.check_key{ org_id = "o", api_key = SECRET, timeout = 10 }
      return ok
    end)
  end)

  it("slashid.new", function()
    from_lua(function()
      local c = slashid.new{ api_key = SECRET, timout = 10 }
      return c
    end)
  end)

  it("client:rotate_key and client:check_key", function()
    local client = slashid.new{ org_id = "o", api_key = SECRET }
    from_lua(function()
      local r = client:rotate_key{ retries = -1 }
      return r
    end)
    from_lua(function()
      local ok = client:check_key{ verify = true }
      return ok
    end)
    client:close()
  end)
end)
