-- Options and argument errors (README: "Options" with its argument
-- errors, "Secrets", "Checking a key", clients under "Usage", "Many
-- organizations"; the reference, make doc: options, check_key, new,
-- rotate_keys). Table-driven:
--   ROWS    {option, value} -> the exact message, checked through every
--           call that takes options (rotate_key, start_rotate_key,
--           check_key, start_check_key, slashid.new, client:rotate_key,
--           client:check_key, rotate_keys' items and shared options),
--           before any network activity and never quoting the API key;
--   ACCEPT  {option, value} accepted by every call that takes it;
-- then ordinary tests for what rows cannot say: effects seen by the
-- emulator, environment variables, precedence, metatables, non-tables.
-- The messages are written out here, apart from lua/slashid/options.lua:
-- they are a contract (an acceptance suite matches them byte for byte).
--
-- No call in this file may reach anything but 127.0.0.1 (and the closed
-- loopback ports of ::1 and localhost). base_url forms naming other hosts
-- are only ever given to slashid.new (which makes no request) in this
-- process, or to the other calls in a subprocess whose proxy settings
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

-- What each option expects, as its "bad option" message says it; which
-- options check_key takes; rotate_keys' own options.
local EXPECTED = {
  org_id = "non-empty string", api_key = "non-empty string",
  consistency = "local_region or all_regions", timeout = "integer 1..120",
  base_url = "https:// URL string", connect_timeout = "finite number > 0",
  request_timeout = "finite number > 0", ca_file = "non-empty path string",
  retries = "integer >= 0", retry_delay = "finite number > 0",
  retry_max_delay = "finite number > 0", max_response_bytes = "integer >= 1",
  proxy = "proxy URL string or false", save_to = "non-empty path string",
  verify = "boolean", user_agent = "string", debug = "function",
  concurrency = "integer >= 1", rate = "finite number > 0", on_progress = "function",
  on_result = "function", keep_results = "boolean", journal = "non-empty path string",
}
local REQUEST = {
  org_id = true, api_key = true, base_url = true, connect_timeout = true,
  request_timeout = true, ca_file = true, retries = true, retry_delay = true,
  retry_max_delay = true, max_response_bytes = true, user_agent = true, debug = true,
  proxy = true,
}
local BATCH = { concurrency = true, rate = true, on_progress = true, on_result = true,
                keep_results = true, journal = true }
local OPTIONS = {}   -- every per-item option, sorted
for name in pairs(EXPECTED) do
  if not BATCH[name] then OPTIONS[#OPTIONS + 1] = name end
end
table.sort(OPTIONS)

local HTTPS_ONLY = "https:// is required; http:// is only allowed for loopback hosts " ..
                   "(127.0.0.0/8, ::1, localhost)"
local QUERY = "a query or fragment is not allowed"
local CTRL = "control characters such as CR, LF or NUL are not allowed"

-- ---- small utilities ---------------------------------------------------

local exists, shquote, write_file = H.exists, H.q, H.write

-- A printable description of a value, for test names.
local function show(v)
  local t = type(v)
  if t == "string" then
    local s = v:gsub(SECRET:gsub("%p", "%%%0"), "<key>")
    return '"' .. s:gsub("[%c\127\\\"]", function(c) return ("\\%d"):format(c:byte()) end) .. '"'
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

local function merged(a, b)
  local t = {}
  for k, v in pairs(a) do t[k] = v end
  for k, v in pairs(b or {}) do t[k] = v end
  return t
end

-- Calls fn(...) under pcall and checks it raised exactly `expected`
-- (a string, or { pattern }) with no API key in it. `what` names the call.
local function raises_exactly(expected, what, fn, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, what .. ": the call did not raise")
  assert(type(err) == "string", what .. ": the error value is not a string")
  H.assert_no_secret(err, SECRET)
  if type(expected) == "table" then
    assert(err:find(expected[1]), what .. ": got " .. err)
  else
    assert(err == expected, ("%s:\n  expected %s\n  got      %s"):format(what, expected, err))
  end
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

-- Checks a subprocess's report of a call that must have raised `expected`.
local function raised_in_subprocess(r, expected, what)
  assert.is_table(r)
  assert(r.ok == false, what .. ": the call did not raise")
  H.assert_no_secret(r.err, SECRET)
  assert(r.err == expected, ("%s:\n  expected %s\n  got      %s"):format(what, expected, r.err))
end

-- ---- the rows ------------------------------------------------------------

local function bad_option(name, why)
  return ("slashid: bad option '%s' (%s)"):format(name, why)
end

-- A row: `name` is the option the message is about (nil: not a known
-- option), `set` the options given besides org_id, api_key and base_url.
local function row(name, value, why, label)
  return { name = name, set = { [name] = value }, msg = bad_option(name, why),
           label = name .. " = " .. (label or show(value)) }
end
-- The usual type or range message: "<expected> expected, got <got>".
local function got(name, value, what, label)
  return row(name, value, EXPECTED[name] .. " expected, got " .. what, label)
end
local function unknown(key, shown, hint, value)
  return { set = { [key] = value == nil and 30 or value },
           msg = "slashid: unknown option '" .. shown .. "'" ..
                 (hint and " (did you mean '" .. hint .. "'?)" or ""),
           label = "the unknown option " .. shown }
end

local ROWS = {
  got("org_id", 123, "a number"), got("org_id", true, "boolean"), got("org_id", {}, "table"),
  got("org_id", "", "an empty string"), got("org_id", io.stdout, "userdata", "a file"),
  got("api_key", 123456789, "a number"), got("api_key", false, "boolean"),
  got("api_key", {}, "table"), got("api_key", "", "an empty string"),
  got("consistency", "ALL_REGIONS", "a string"), got("consistency", "global", "a string"),
  got("consistency", "", "an empty string"), got("consistency", 1, "1"),
  got("consistency", true, "boolean"), got("consistency", SECRET, "a string"),
  got("timeout", 0, "0"), got("timeout", 121, "121"), got("timeout", 1.5, "1.5"),
  got("timeout", -1, "-1"), got("timeout", 0.5, "0.5"), got("timeout", NAN, "nan"),
  got("timeout", HUGE, "inf"), got("timeout", -HUGE, "-inf"), got("timeout", "30", "a string"),
  got("timeout", true, "boolean"), got("timeout", SECRET, "a string"),
  got("base_url", 1, "1"), got("base_url", "", "an empty string"),
  got("base_url", true, "boolean"), got("base_url", {}, "table"),
  row("base_url", SECRET, "an absolute https:// URL is required"),
  got("connect_timeout", 0, "0"), got("connect_timeout", -1, "-1"),
  got("connect_timeout", NAN, "nan"), got("connect_timeout", HUGE, "inf"),
  got("connect_timeout", -HUGE, "-inf"), got("connect_timeout", "10", "a string"),
  got("request_timeout", -1, "-1"), got("request_timeout", 0, "0"),
  got("request_timeout", NAN, "nan"), got("request_timeout", HUGE, "inf"),
  got("request_timeout", "45", "a string"), got("request_timeout", SECRET, "a string"),
  got("ca_file", 1, "1"), got("ca_file", "", "an empty string"), got("ca_file", true, "boolean"),
  got("ca_file", {}, "table"),
  got("retries", -1, "-1"), got("retries", 1.5, "1.5"), got("retries", NAN, "nan"),
  got("retries", HUGE, "inf"), got("retries", "2", "a string"), got("retries", true, "boolean"),
  got("retry_delay", 0, "0"), got("retry_delay", -1, "-1"), got("retry_delay", NAN, "nan"),
  got("retry_delay", HUGE, "inf"), got("retry_delay", "0.5", "a string"),
  got("retry_max_delay", 0, "0"), got("retry_max_delay", -1, "-1"),
  got("retry_max_delay", NAN, "nan"), got("retry_max_delay", "1", "a string"),
  { name = "retry_max_delay", set = { retry_delay = 1, retry_max_delay = 0.5 },
    msg = bad_option("retry_max_delay", "number >= retry_delay (1) expected, got 0.5"),
    label = "retry_max_delay = 0.5 < retry_delay = 1" },
  -- below the default retry_delay: only resolve can tell (not slashid.new)
  { name = "retry_max_delay", set = { retry_max_delay = 0.1 }, resolve = true,
    msg = bad_option("retry_max_delay", "number >= retry_delay (0.5) expected, got 0.1"),
    label = "retry_max_delay = 0.1 < the default retry_delay (0.5)" },
  got("max_response_bytes", 0, "0"), got("max_response_bytes", -1, "-1"),
  got("max_response_bytes", 1.5, "1.5"), got("max_response_bytes", NAN, "nan"),
  got("max_response_bytes", HUGE, "inf"), got("max_response_bytes", "1024", "a string"),
  got("proxy", true, "boolean"), got("proxy", "", "an empty string"), got("proxy", 1, "1"),
  got("proxy", {}, "table"),
  row("proxy", "ftp://127.0.0.1:1", "http://, https:// or socks5h:// proxy URL expected"),
  row("proxy", "http://", "the proxy URL has no host"),
  row("proxy", "http://127.0.0.1:0", "bad proxy port"),
  row("proxy", "http://127.0.0.1:1/ x", "spaces and control characters are not allowed"),
  got("save_to", 1, "1"), got("save_to", "", "an empty string"), got("save_to", true, "boolean"),
  got("save_to", {}, "table"), row("save_to", SECRET .. "\0", "NUL byte in path"),
  got("verify", "yes", "a string"), got("verify", "true", "a string"), got("verify", 1, "1"),
  got("verify", {}, "table"),
  got("user_agent", 1, "1"), got("user_agent", true, "boolean"), got("user_agent", {}, "table"),
  row("user_agent", "ua\r\nX-Injected: 1", "control characters are not allowed"),
  got("debug", "print", "a string"), got("debug", true, "boolean"), got("debug", {}, "table"),
  got("debug", SECRET, "a string"),
  row("org_id", "org\r\nSlashID-API-Key: " .. SECRET, CTRL, "a header injection with the API key"),
  -- unknown options: shown with a hint when one is near, hidden when not
  -- identifier-like (a key used as a name is never quoted)
  unknown("timout", "timout", "timeout"), unknown("apikey", "apikey", "api_key"),
  unknown("orgId", "orgId", "org_id"), unknown("org", "org", "org_id"),
  unknown("key", "key", "api_key"), unknown("consistancy", "consistancy", "consistency"),
  unknown("base_uri", "base_uri", "base_url"), unknown("retry", "retry", "retry_delay"),
  unknown("Timeout", "Timeout", "timeout"),
  unknown("consistence", "consistence", "consistency", "all_regions"),
  unknown("concurrency", "concurrency"), unknown("rate", "rate"),
  unknown("on_progress", "on_progress"),
  unknown(1, "[1]", nil, "all_regions"), unknown(true, "[boolean]", nil, 1),
  unknown({}, "[table]", nil, 1), unknown(1.5, "[1.5]", nil, SECRET),
  unknown(hostile("key"), "[table]", nil, 1),
  unknown(SECRET, "(a name that is not an option, not shown)", nil, true),
  unknown("timeout\r\nX-Injected: 1", "(a name that is not an option, not shown)"),
}

-- Control characters in org_id and api_key (README, "Options": "a control
-- character in org_id/api_key", CR, LF, NUL, ...).
local CONTROL = {
  { "CR", "\r" }, { "LF", "\n" }, { "CRLF", "\r\n" }, { "NUL", "\0" }, { "TAB", "\t" },
  { "DEL", "\127" }, { "ESC", "\27" }, { "BEL", "\7" }, { "US", "\31" },
}
for _, c in ipairs(CONTROL) do
  ROWS[#ROWS + 1] = row("api_key", SECRET .. c[2], CTRL, "the API key followed by " .. c[1])
  ROWS[#ROWS + 1] = row("api_key", c[2] .. SECRET, CTRL, c[1] .. " followed by the API key")
  ROWS[#ROWS + 1] = row("api_key", "sk_SECRET_do" .. c[2] .. "not_leak_123456", CTRL,
                        "a key with " .. c[1] .. " inside")
  ROWS[#ROWS + 1] = row("org_id", "af5fbd30-7ce7" .. c[2] .. "-4548", CTRL,
                        "an org_id with " .. c[1] .. " inside")
end

-- base_url forms on loopback hosts (safe to give to any call).
for _, b in ipairs({
  { "ftp://127.0.0.1:" .. PORT, "https:// URL expected" },
  { "ftp://127.0.0.1:" .. PORT .. "/", "https:// URL expected" },
  { "file:///etc/passwd", "the URL has no host" },
  { "127.0.0.1:" .. PORT, "an absolute https:// URL is required" },
  { "//127.0.0.1:" .. PORT, "an absolute https:// URL is required" },
  { "http://", "the URL has no host" },
  { "http://:" .. PORT, "the URL has no host" },
  { "http://127.0.0.1:" .. PORT .. "?x=1", QUERY },
  { "http://127.0.0.1:" .. PORT .. "/?x=1", QUERY },
  { "http://127.0.0.1:" .. PORT .. "/#frag", QUERY },
  { "http://127.0.0.1:" .. PORT .. "#frag", QUERY },
  { "https://127.0.0.1:" .. PORT .. "/?x=1", QUERY },
  { "http://127.0.0.1:0", "bad port" },
  { "http://127.0.0.1:65536", "bad port" },
  { "http://127.0.0.1:x", "bad port" },
  { "http://127.0.0.1:" .. PORT .. " ", "spaces and control characters are not allowed" },
  { "http://127.0.0.01:" .. PORT, HTTPS_ONLY },
  { "http://127.000.0.1:" .. PORT, HTTPS_ONLY },
  { "http://127.0.0.001:" .. PORT, HTTPS_ONLY },
  { "http://127.0.0.1:" .. PORT .. "/?key=" .. SECRET, QUERY },
  { "http://127.0.0.1:" .. PORT .. "/#" .. SECRET, QUERY },
  { "ftp://127.0.0.1:" .. PORT .. "/" .. SECRET, "https:// URL expected" },
  { SECRET .. "://127.0.0.1:" .. PORT, "an absolute https:// URL is required" },
}) do
  ROWS[#ROWS + 1] = row("base_url", b[1], b[2])
end

-- Every option refuses a table value without touching its metatable: one
-- whose metamethods all raise, one whose __tostring raises, one whose
-- __tostring and __name would give the key.
for _, name in ipairs(OPTIONS) do
  ROWS[#ROWS + 1] = got(name, hostile(name), "table", "a table with raising metamethods")
  ROWS[#ROWS + 1] = got(name, setmetatable({}, { __tostring = function()
    error("METAMETHOD_CALLED_tostring", 0) end }), "table", "a table whose __tostring raises")
  ROWS[#ROWS + 1] = got(name, setmetatable({}, { __tostring = function() return SECRET end,
    __name = SECRET }), "table", "a table whose __tostring gives the key")
end

-- What check_key says where rotate_key says `msg`: an option it does not
-- take is unknown to it, whatever its value.
local function check_key_msg(r)
  if r.name and not REQUEST[r.name] then return "slashid: unknown option '" .. r.name .. "'" end
  return r.msg
end

local function in_item(msg) return "slashid: item 1: " .. msg:sub(10) end

-- rotate_keys' own options: given to rotate_keys, refused like the others.
local BATCH_ROWS = {
  got("concurrency", 0, "0"), got("concurrency", 0.5, "0.5"), got("concurrency", -1, "-1"),
  got("concurrency", "8", "a string"), got("concurrency", HUGE, "inf"),
  got("rate", 0, "0"), got("rate", -1, "-1"), got("rate", HUGE, "inf"), got("rate", NAN, "nan"),
  got("rate", "1", "a string"),
  got("on_progress", 1, "1"), got("on_progress", "print", "a string"),
  got("on_result", true, "boolean"), got("keep_results", "no", "a string"),
  got("keep_results", 0, "0"),
  got("journal", 1, "1"), got("journal", "", "an empty string"), got("journal", {}, "table"),
  unknown("concurency", "concurency", "concurrency", 2),
  unknown("keep_result", "keep_result", "keep_results", false),
}

-- Accepted: { option, value } given alone (with org_id, api_key and the
-- emulator's base_url) is accepted by every call that takes the option,
-- and the rotation goes through.
local ACCEPT = {
  { "consistency", "local_region" }, { "consistency", "all_regions" },
  { "timeout", 1 }, { "timeout", 120 }, { "timeout", 60.0 }, { "timeout", 1.0 },
  { "timeout", 120.0 },
  { "connect_timeout", 0.75 }, { "connect_timeout", 3 }, { "request_timeout", 2.5 },
  { "request_timeout", 5 }, { "request_timeout", 3600 },
  { "ca_file", H.ca_file }, { "retries", 0 }, { "retries", 1.0 }, { "retries", 1000 },
  { "retries", 2 ^ 70 },
  { "retry_delay", 0.01 }, { "retry_delay", 45 }, { "retry_max_delay", 0.5 },
  { "retry_max_delay", 1e6 },
  { "max_response_bytes", 4096.0 }, { "max_response_bytes", 2 ^ 40 },
  { "max_response_bytes", math.maxinteger or 2 ^ 53 },
  { "proxy", false }, { "save_to", "/nonexistent/dir/key", rotate = false },
  { "verify", false }, { "verify", true },
  { "user_agent", "" }, { "user_agent", "key-rotator/3.1 (ops)" },
  { "debug", function() end },
  { "base_url", "http://127.0.0.1:" .. PORT .. "/" },
  { "base_url", "http://127.0.0.1:" .. PORT .. "///" },
  { "base_url", "http://localhost:" .. PORT },
  { "base_url", "HTTP://LOCALHOST:" .. PORT },
  { "base_url", "http://127.0.0.1:" .. PORT .. "/prefix", rotate = false },
}

-- ---- the rows, run -------------------------------------------------------

describe("argument errors, row by row", function()
  -- Every call that takes options, with the message it must raise for row
  -- `r` (nil: the call does not apply). `base` holds org_id, api_key and
  -- base_url; the client holds them as defaults.
  local function calls(r, base, client)
    local given = merged(base, r.set)
    local check_msg = check_key_msg(r)
    local shares = true   -- rotate_keys' options pass them on to items
    for k in pairs(r.set) do
      if BATCH[k] then shares = false end
    end
    return {
      { "rotate_key", r.msg, slashid.rotate_key, given },
      { "start_rotate_key", r.msg, slashid.start_rotate_key, given },
      { "check_key", check_msg, slashid.check_key, given },
      { "start_check_key", check_msg, slashid.start_check_key, given },
      { "slashid.new", not r.resolve and r.msg or nil, slashid.new, given },
      { "client:rotate_key", r.msg, client.rotate_key, client, r.set },
      { "client:check_key", check_msg, client.check_key, client, r.set },
      { "client:start_rotate_key", r.msg, client.start_rotate_key, client, r.set },
      { "rotate_keys (an item)", in_item(r.msg), slashid.rotate_keys, { given } },
      { "rotate_keys (shared options)", shares and (r.resolve and in_item(r.msg) or r.msg),
        slashid.rotate_keys, { base }, r.set },
    }
  end

  -- Runs fn(base, client) for a fresh organization and a client of it,
  -- then checks that nothing reached the emulator.
  local function sends_nothing(fn)
    local org = H.new_org()
    local base = { org_id = org, api_key = SECRET, base_url = H.http_url }
    local client = slashid.new(base)
    local before = H.stats()
    fn(base, client)
    client:close()
    local after = H.stats()
    assert.are.equal(0, H.requests(org))
    assert.are.equal(before.requests, after.requests, "a request reached the emulator")
    assert.are.equal(before.connections, after.connections, "a connection reached the emulator")
  end

  for _, r in ipairs(ROWS) do
    it("raises for " .. r.label, function()
      sends_nothing(function(base, client)
        for _, c in ipairs(calls(r, base, client)) do
          if c[2] then raises_exactly(c[2], c[1], c[3], c[4], c[5]) end
        end
      end)
    end)
  end

  for _, r in ipairs(BATCH_ROWS) do
    it("rotate_keys raises for " .. r.label, function() sends_nothing(function(base, client)
      raises_exactly(r.msg, "rotate_keys", slashid.rotate_keys, { base }, r.set)
      raises_exactly(r.msg, "client:rotate_keys", client.rotate_keys, client, { {} }, r.set)
      -- not an option of one item, nor of rotate_key
      local name = next(r.set)
      local shown = "slashid: unknown option '" .. name .. "'"
      if r.name then
        raises_exactly(in_item(shown), "rotate_keys (an item)", slashid.rotate_keys,
                       { merged(base, r.set) })
        raises_exactly(shown, "rotate_key", slashid.rotate_key, merged(base, r.set))
      end
    end) end)
  end

  -- base_url forms naming other hosts: slashid.new here, the calls that
  -- would send a request in a guarded subprocess.
  local REMOTE = {
    { "http://example.com", HTTPS_ONLY }, { "http://example.com/", HTTPS_ONLY },
    { "http://example.com:8080", HTTPS_ONLY }, { "http://api.slashid.com", HTTPS_ONLY },
    { "HTTP://example.com", HTTPS_ONLY }, { "ftp://example.com", "https:// URL expected" },
    { "http://localhost@evil.com", "user information in the URL is not allowed" },
    { "http://localhost:8080@evil.com", "user information in the URL is not allowed" },
    { "http://127.0.0.1@evil.com", "user information in the URL is not allowed" },
    { "http://127.0.0.1:8080@evil.com", "user information in the URL is not allowed" },
    { "http://" .. SECRET .. "@example.com", "user information in the URL is not allowed" },
    { "https://" .. SECRET .. "@example.com", "user information in the URL is not allowed" },
    { "http://127.0.0.1.evil.com", HTTPS_ONLY }, { "http://127.0.0.1.evil.com:8080", HTTPS_ONLY },
    { "http://localhost.evil.com", HTTPS_ONLY }, { "http://evil.com/127.0.0.1", HTTPS_ONLY },
    { "http://evil.com#@127.0.0.1", QUERY }, { "http://evil.com?@127.0.0.1", QUERY },
    { "http://0177.0.0.1:8080", HTTPS_ONLY }, { "http://0127.0.0.1:8080", HTTPS_ONLY },
    { "http://10.0.0.1", HTTPS_ONLY }, { "http://192.168.1.1:8080", HTTPS_ONLY },
    { "http://128.0.0.1", HTTPS_ONLY }, { "http://[::2]:8080", HTTPS_ONLY },
    { "http://[fe80::1]:8080", HTTPS_ONLY }, { "http://example.com/" .. SECRET, HTTPS_ONLY },
    { "https://example.com/?key=" .. SECRET, QUERY }, { "https://example.com/#" .. SECRET, QUERY },
    { "https://example.com:0", "bad port" }, { "https://example.com:99999", "bad port" },
  }
  local URLS = {}
  for i, b in ipairs(REMOTE) do URLS[i] = b[1] end

  local results, org
  lazy_setup(function()
    org = H.new_org()
    results = run_lua({ SPEC_ORG = org, SPEC_URLS = cjson.encode(URLS) }, [[
      local org = os.getenv("SPEC_ORG")
      local out = {}
      for i, url in ipairs(cjson.decode(os.getenv("SPEC_URLS"))) do
        local o = { org_id = org, api_key = SECRET, base_url = url, retries = 0,
                    connect_timeout = 2, request_timeout = 3 }
        out[i] = { rotate = rot(slashid.rotate_key, o), check = chk(slashid.check_key, o),
                   start = rot(slashid.start_rotate_key, o),
                   batch = rot(slashid.rotate_keys, { o }),
                   shared = rot(slashid.rotate_keys, { { org_id = org, api_key = SECRET } },
                                { base_url = url }) }
      end
      return out
    ]])
  end)

  for i, b in ipairs(REMOTE) do
    local msg = bad_option("base_url", b[2])
    it("raises for base_url = " .. show(b[1]) .. " (other hosts)", function()
      raises_exactly(msg, "slashid.new", slashid.new, { base_url = b[1] })
      local r = results[i]
      assert.is_table(r)
      raised_in_subprocess(r.rotate, msg, "rotate_key")
      raised_in_subprocess(r.check, msg, "check_key")
      raised_in_subprocess(r.start, msg, "start_rotate_key")
      raised_in_subprocess(r.batch, in_item(msg), "rotate_keys (an item)")
      raised_in_subprocess(r.shared, msg, "rotate_keys (shared base_url)")
      assert.are.equal(0, H.requests(org))
    end)
  end
end)

describe("accepted values, row by row", function()
  for _, a in ipairs(ACCEPT) do
    local name, value = a[1], a[2]
    it("accepts " .. name .. " = " .. show(value), function()
      local org, key = H.new_org()
      local opts = { org_id = org, api_key = key, base_url = H.http_url, [name] = value }
      local ok, client = pcall(slashid.new, opts)
      assert(ok, "slashid.new: " .. tostring(client))
      client:close()
      local ok2, result, errors, _, info = pcall(slashid.rotate_key, opts)
      assert(ok2, "rotate_key: " .. tostring(result))
      if a.rotate ~= false then
        assert.are.equal("rotated", info.outcome, errors[1] and errors[1].message)
        key = result.api_key
      end
      if REQUEST[name] then
        opts.api_key = key
        local ok3, accepted = pcall(slashid.check_key, opts)
        assert(ok3, "check_key: " .. tostring(accepted))
      end
    end)
  end

  -- Given to slashid.new only: no request is made.
  for _, url in ipairs({
    "https://example.com", "https://example.com/", "https://example.com:8443/api/",
    "https://api.slashid.com", "https://api.sandbox.slashid.com", slashid.PRODUCTION,
    slashid.SANDBOX, "https://10.0.0.1", "https://[2001:db8::1]:443", "HTTPS://Example.COM",
    "http://127.0.0.1", "http://127.0.0.1:8080", "http://127.0.0.1:8080/", "http://127.1.2.3:9",
    "http://127.255.255.254", "http://localhost", "http://localhost:8080",
    "http://[::1]", "http://[::1]:8080", "http://127.0.0.1:8080/prefix",
  }) do
    it("accepts base_url = " .. url .. " (slashid.new)", function()
      local ok, client = pcall(slashid.new, { base_url = url })
      assert.is_true(ok, not ok and tostring(client) or nil)
      client:close()
    end)
  end

  for _, p in ipairs({ "http://127.0.0.1:3128", "https://proxy.example:8443",
                       "socks5h://127.0.0.1:1080", "http://user:" .. SECRET .. "@proxy:3128",
                       "HTTP://[::1]:3128/" }) do
    it("accepts proxy = " .. show(p) .. " (slashid.new)", function()
      local ok, client = pcall(slashid.new, { proxy = p })
      assert.is_true(ok, not ok and tostring(client) or nil)
      client:close()
    end)
  end
end)

describe("the rules and their rows", function()
  local options = require "slashid.options"

  it("every option of options.RULES has rows here, and is known to this file", function()
    local refused, accepted = {}, {}
    for _, r in ipairs(ROWS) do if r.name then refused[r.name] = true end end
    for _, r in ipairs(BATCH_ROWS) do if r.name then refused[r.name] = true end end
    for _, a in ipairs(ACCEPT) do accepted[a[1]] = true end
    local seen = {}
    for _, rule in ipairs(options.RULES) do
      seen[rule.name] = true
      assert(EXPECTED[rule.name], rule.name .. ": no expected message in this file")
      assert(refused[rule.name], rule.name .. ": no row refusing a value")
      assert.are.equal(rule.calls == "batch", BATCH[rule.name] == true, rule.name)
      assert.are.equal(rule.calls == "request", REQUEST[rule.name] == true, rule.name)
      if rule.calls ~= "batch" and rule.kind ~= "text" then
        assert(accepted[rule.name], rule.name .. ": no row accepting a value")
      end
    end
    for name in pairs(EXPECTED) do assert(seen[name], name .. " is not in options.RULES") end
  end)

  it("README's options table is what scripts/options-table.lua prints from the rules", function()
    local p = assert(io.popen(H.lua .. " scripts/options-table.lua 2>&1"))
    local printed = p:read("*a")
    p:close()
    local readme = H.read_file("README.md")
    local section = readme:match("\n### Options\n(.-)\n### ")
    assert(section, "README.md has no \"### Options\" section")
    local lines = {}
    for line in section:gmatch("[^\n]+") do
      if line:sub(1, 1) == "|" then lines[#lines + 1] = line end
    end
    assert.are.equal(table.concat(lines, "\n") .. "\n", printed)
  end)
end)
-- ---- ordinary tests ---------------------------------------------------------

-- Calls fn(...) and checks it raised exactly `expected` (or { pattern }),
-- with no request or connection seen by the emulator (nor by `org`).
local function refuses(expected, org, fn, ...)
  local before = H.stats()
  local err = raises_exactly(expected, "the call", fn, ...)
  assert.is_falsy(err:find("METAMETHOD_CALLED", 1, true), "a metamethod's error escaped: " .. err)
  if org then assert.are.equal(0, H.requests(org)) end
  local after = H.stats()
  assert.are.equal(before.requests, after.requests, "a request reached the emulator")
  assert.are.equal(before.connections, after.connections, "a connection reached the emulator")
  return err
end

local MISSING_ORG = "slashid: missing option 'org_id' (or set SLASHID_ORG_ID)"
local MISSING_KEY = "slashid: missing option 'api_key' (or set SLASHID_API_KEY)"

describe("options that are missing or not a table", function()
  it("raises for a missing org_id, then a missing api_key", function()
    local org = H.new_org()
    refuses(MISSING_ORG, org, slashid.rotate_key, { api_key = SECRET, base_url = H.http_url })
    refuses(MISSING_KEY, org, slashid.rotate_key, { org_id = org, base_url = H.http_url })
    refuses(MISSING_ORG, nil, slashid.rotate_key, {})
    refuses(MISSING_ORG, nil, slashid.rotate_key, nil)
    refuses(MISSING_ORG, nil, slashid.rotate_key)
    refuses(MISSING_ORG, nil, slashid.check_key)
    refuses(MISSING_KEY, org, slashid.check_key, { org_id = org })
    refuses(in_item(MISSING_KEY), org, slashid.rotate_keys, { { org_id = org } })
  end)

  it("does not need org_id or api_key at new, but the call raises without them", function()
    local ok, client = pcall(slashid.new, { base_url = H.http_url, timeout = 10 })
    assert.is_true(ok, not ok and tostring(client) or nil)
    refuses(MISSING_ORG, nil, client.rotate_key, client)
    refuses(MISSING_ORG, nil, client.check_key, client, {})
    local org = H.new_org()
    refuses(MISSING_KEY, org, client.rotate_key, client, { org_id = org })
    client:close()
  end)

  for _, v in ipairs({ { SECRET, "a string" }, { 42, "42" }, { true, "boolean" },
                       { print, "function" }, { io.stdout, "userdata" } }) do
    it("raises when the options are " .. show(v[1]) .. " instead of a table", function()
      local org = H.new_org()
      local msg = "slashid: options must be a table, got " .. v[2]
      refuses(msg, org, slashid.rotate_key, v[1])
      refuses(msg, org, slashid.check_key, v[1])
      refuses(msg, org, slashid.start_rotate_key, v[1])
      refuses(msg, org, slashid.start_check_key, v[1])
      refuses(msg, org, slashid.rotate_keys, { H.opts(org, SECRET) }, v[1])
      refuses(in_item(msg), org, slashid.rotate_keys, { v[1] })
      refuses("slashid: defaults must be a table, got " .. v[2], org, slashid.new, v[1])
      local client = slashid.new(H.opts(org, SECRET))
      refuses(msg, org, client.rotate_key, client, v[1])
      refuses(msg, org, client.check_key, client, v[1])
      client:close()
    end)
  end
end)

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

describe("base_url: rotations over loopback", function()
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

-- ---- secrets in argument errors ------------------------------------------

describe("argument errors never show the API key", function()
  it("when the key is passed as the value of another option", function()
    local org = H.new_org()
    for _, name in ipairs({ "org_id", "consistency", "timeout", "base_url", "connect_timeout",
                            "request_timeout", "retries", "retry_delay", "retry_max_delay",
                            "max_response_bytes", "verify", "debug", "proxy", "user_agent" }) do
      local opts = H.opts(org, SECRET .. "_other")
      opts[name] = SECRET .. ((name == "org_id" or name == "user_agent") and "\n" or "")
      local err = refuses({ "^slashid: bad option '" .. name .. "' %(" }, org, slashid.rotate_key, opts)
      H.assert_no_secret(err, SECRET .. "_other")
    end
  end)
end)

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
    refuses(bad_option("timeout", "integer 1..120 expected, got 0"), org, slashid.rotate_key,
            with_meta(H.opts(org, SECRET, { timeout = 0 }), mt))
    refuses("slashid: unknown option 'timout' (did you mean 'timeout'?)", org, slashid.rotate_key,
            with_meta(H.opts(org, SECRET, { timout = 1 }), mt))
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
    { "base_url", "SLASHID_BASE_URL", "http://example.com", HTTPS_ONLY },
    { "base_url", "SLASHID_BASE_URL", "http://localhost@evil.com",
      "user information in the URL is not allowed" },
    { "base_url", "SLASHID_BASE_URL", "http://127.0.0.1.evil.com", HTTPS_ONLY },
    { "base_url", "SLASHID_BASE_URL", "ftp://127.0.0.1:1", "https:// URL expected" },
    { "base_url", "SLASHID_BASE_URL", "http://127.0.0.1:1/?q=" .. SECRET, QUERY },
    { "api_key", "SLASHID_API_KEY", SECRET .. "\r", CTRL },
    { "api_key", "SLASHID_API_KEY", SECRET .. "\n", CTRL },
    { "api_key", "SLASHID_API_KEY", "sk_SECRET_do\tnot_leak_123456", CTRL },
    { "api_key", "SLASHID_API_KEY", SECRET .. "\127", CTRL },
    { "org_id", "SLASHID_ORG_ID", "af5fbd30\n-7ce7", CTRL },
    { "org_id", "SLASHID_ORG_ID", "af5fbd30\r-7ce7", CTRL },
  }
  for _, b in ipairs(BAD_ENV) do
    local name, var, value, why = b[1], b[2], b[3], b[4]
    local msg = bad_option(name .. " (from " .. var .. ")", why)
    it("raises naming " .. name .. " for " .. var .. " = " .. show(value), function()
      local org = H.new_org()
      local env = { SLASHID_ORG_ID = org, SLASHID_API_KEY = SECRET, SLASHID_BASE_URL = H.http_url }
      env[var] = value
      local before = H.stats()
      local r = run_lua(env, [[
        local c = slashid.new{}
        local out = { rotate = rot(slashid.rotate_key, { retries = 0 }),
                      check = chk(slashid.check_key, { retries = 0 }),
                      client = rot(c.rotate_key, c, { retries = 0 }),
                      batch = rot(slashid.rotate_keys, { { retries = 0 } }) }
        c:close()
        return out
      ]])
      raised_in_subprocess(r.rotate, msg, "rotate_key")
      raised_in_subprocess(r.check, msg, "check_key")
      raised_in_subprocess(r.client, msg, "client:rotate_key")
      raised_in_subprocess(r.batch, in_item(msg), "rotate_keys")
      assert.are.equal(0, H.requests(org))
      assert.are.equal(before.requests, H.stats().requests)
    end)
  end

  it("raises for a missing org_id or api_key when neither option nor variable is set", function()
    local org = H.new_org()
    local r = run_lua({ SLASHID_BASE_URL = H.http_url, SLASHID_API_KEY = SECRET }, [[
      return { rot(slashid.rotate_key, {}), chk(slashid.check_key) }
    ]])
    raised_in_subprocess(r[1], MISSING_ORG, "rotate_key")
    raised_in_subprocess(r[2], MISSING_ORG, "check_key")
    r = run_lua({ SLASHID_BASE_URL = H.http_url, SLASHID_ORG_ID = org }, [[
      return { rot(slashid.rotate_key, {}), chk(slashid.check_key, {}) }
    ]])
    raised_in_subprocess(r[1], MISSING_KEY, "rotate_key")
    raised_in_subprocess(r[2], MISSING_KEY, "check_key")
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


  -- rotate_key's own options, with values rotate_key accepts
  local ROTATE_ONLY = { consistency = "all_regions", timeout = 10,
                        save_to = "/nonexistent/key", verify = true }
  for _, name in ipairs({ "consistency", "timeout", "save_to", "verify" }) do
    it("raises for " .. name .. " (not a check_key option), also through a client", function()
      local org = H.new_org()
      local msg = "slashid: unknown option '" .. name .. "'"
      refuses(msg, org, slashid.check_key, H.opts(org, SECRET, { [name] = ROTATE_ONLY[name] }))
      local client = slashid.new(H.opts(org, SECRET))
      refuses(msg, org, client.check_key, client, { [name] = ROTATE_ONLY[name] })
      client:close()
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

  it("checks retry_max_delay against a retry_delay from the defaults", function()
    local org = H.new_org()
    local client = slashid.new(H.opts(org, SECRET, { retry_delay = 1, retry_max_delay = 2 }))
    refuses(bad_option("retry_max_delay", "number >= retry_delay (1) expected, got 0.5"), org,
            client.rotate_key, client, { retry_max_delay = 0.5 })
    client:close()
  end)
end)

-- ---- messages when called from Lua code ------------------------------------

-- A Lua caller does not call under pcall directly: the message must still
-- be exactly the message (no "file:line: " position in front of it).
describe("argument errors raised into Lua code", function()
  local function from_lua(expected, fn)
    local ok, err = pcall(fn)
    assert.is_false(ok)
    assert.are.equal(expected, err)
  end

  it("rotate_key", function()
    from_lua(bad_option("timeout", "integer 1..120 expected, got 0"), function()
      local r = slashid.rotate_key{ org_id = "o", api_key = SECRET, timeout = 0 }
      return r
    end)
  end)

  it("check_key", function()
    from_lua("slashid: unknown option 'timeout'", function()
      local ok = slashid.check_key{ org_id = "o", api_key = SECRET, timeout = 10 }
      return ok
    end)
  end)

  it("slashid.new", function()
    from_lua("slashid: unknown option 'timout' (did you mean 'timeout'?)", function()
      local c = slashid.new{ api_key = SECRET, timout = 10 }
      return c
    end)
  end)

  it("client:rotate_key and client:check_key", function()
    local client = slashid.new{ org_id = "o", api_key = SECRET }
    from_lua(bad_option("retries", "integer >= 0 expected, got -1"), function()
      local r = client:rotate_key{ retries = -1 }
      return r
    end)
    from_lua("slashid: unknown option 'verify'", function()
      local ok = client:check_key{ verify = true }
      return ok
    end)
    client:close()
  end)
end)
