-- Bad input everywhere (issue 3, part 4): randomized and adversarial
-- arguments to rotate_key, check_key, slashid.new (and the client's
-- methods), start_rotate_key and rotate_keys (items and shared options).
-- Each call must either raise an error whose message starts with
-- "slashid: " and never contains the API key used, or return a clean
-- result (rotate_key's four values with `errors` a list of well-formed
-- entries, check_key's three, an op that finishes, an outcomes array) —
-- never a crash, never another error type (a raising metamethod's own
-- error must never surface).
--
-- Where the requests go: every table handed to the library carries a
-- base_url drawn from SAFE_URLS (the emulator, over HTTP or HTTPS, or a
-- closed loopback port) or from BAD_URLS (values that cannot pass
-- validation, none of them naming a non-loopback https host), and retries
-- is always 0 or an invalid value, so that a call that passes validation
-- ends in one quick attempt. The organizations named are unknown to the
-- emulator (a 401: nothing is ever rotated, nothing is ever saved).
--
-- The random part is seeded: set SLASHID_FUZZ_SEED to replay a run; the
-- seed is printed.
local H = require "helpers"
local slashid = require "slashid"

assert(os.getenv("SLASHID_BASE_URL") == nil and os.getenv("SLASHID_ORG_ID") == nil and
       os.getenv("SLASHID_API_KEY") == nil, "run the specs with a clean environment (spec/run.sh)")

local SEED = tonumber(os.getenv("SLASHID_FUZZ_SEED") or "") or os.time()
io.write(("\n[bad-input] seed %d (SLASHID_FUZZ_SEED=%d replays this run)\n"):format(SEED, SEED))

local is_integer = math.type and function(x) return math.type(x) == "integer" end
                 or function(x) return type(x) == "number" and x % 1 == 0 end
local pack = table.pack or function(...) return { n = select("#", ...), ... } end
local unpack = table.unpack or unpack

-- The key: recognizable, realistic length (> 24 characters).
local KEY = "sk_BADINPUT_" .. tostring(SEED):reverse() .. "_xQ7pL2mZ9vR4tW8yK3nB6c"
local BIG = ("A"):rep(1024 * 1024)          -- 1 MB (the deterministic cases)
local LONG = ("L"):rep(70000)               -- past the emulator's 64 KiB header
                                            -- line (the random runs: cheaper)
local NAN, INF = 0 / 0, math.huge
local MAXINT = math.maxinteger or 2 ^ 53
local MININT = math.mininteger or -2 ^ 53

local CLOSED_PORT = H.closed_port()

-- A safety net under the rules above: every request the library builds in
-- this file is looked at; one naming a host outside loopback is recorded
-- and sent to a closed loopback port instead (the last test fails then).
local request_mod = require "slashid.request"
local original_request = request_mod.build
local escaped = {}
local function is_loopback_url(url)
  local host = url:match("^[Hh][Tt][Tt][Pp][Ss]?://%[([^%]]+)%]") or
               url:match("^[Hh][Tt][Tt][Pp][Ss]?://([^/:?#]+)")
  return host == "localhost" or host == "::1" or
         (host ~= nil and host:match("^127%.%d+%.%d+%.%d+$") ~= nil)
end
request_mod.build = function(...)
  local req = original_request(...)
  if not is_loopback_url(req.url) then
    escaped[#escaped + 1] = req.url:sub(1, 80)
    req.url = "http://127.0.0.1:" .. CLOSED_PORT .. "/escaped"
  end
  return req
end
local SAFE_URLS = {
  H.http_url, H.http_url .. "/", H.https_url, H.http_url .. "/some/prefix",
  "http://127.0.0.1:" .. CLOSED_PORT, "https://127.0.0.1:" .. CLOSED_PORT,
  "http://localhost:" .. CLOSED_PORT, "http://[::1]:" .. CLOSED_PORT,
  "http://127.0.0.2:" .. CLOSED_PORT,
}
local BAD_URLS = {
  "", "x", BIG, KEY, "127.0.0.1", "http://", "https://", "http://example.invalid/",
  "http://0177.0.0.1/", "http://127.1/", "ftp://127.0.0.1/", "http://127.0.0.1:0",
  "http://127.0.0.1:99999", "http://user:" .. KEY .. "@127.0.0.1/", "http://127.0.0.1/?q=1",
  "http://127.0.0.1/#f", "http://127.0.0.1/\0", "http://127.0.0.1\r\nX: y", " http://127.0.0.1",
  "http:// 127.0.0.1", "http://localhost./", "javascript:alert(1)", "file:///etc/passwd",
  0, 1, NAN, INF, true, false, {}, string.len,
}

local OPTION_NAMES = {
  "org_id", "api_key", "consistency", "timeout", "base_url", "connect_timeout",
  "request_timeout", "ca_file", "retries", "retry_delay", "retry_max_delay",
  "max_response_bytes", "save_to", "verify", "user_agent", "debug",
}
local REQUEST_OPTIONS = {
  org_id = true, api_key = true, base_url = true, connect_timeout = true,
  request_timeout = true, ca_file = true, retries = true, retry_delay = true,
  retry_max_delay = true, max_response_bytes = true, user_agent = true, debug = true,
}

-- ---- adversarial values ----------------------------------------------------

local meta_calls = 0   -- how often a metamethod of ours was triggered

local function hostile(tag, extra)
  local function boom() meta_calls = meta_calls + 1; error("METAMETHOD_" .. tag, 0) end
  local mt = {
    __index = boom, __newindex = boom, __call = boom, __tostring = boom,
    __len = boom, __eq = boom, __lt = boom, __le = boom, __concat = boom,
    __unm = boom, __add = boom, __pairs = boom, __ipairs = boom,
    __name = KEY,                   -- luaL_tolstring would show it
  }
  for k, v in pairs(extra or {}) do mt[k] = v end
  return setmetatable({}, mt)
end

local function hostile_mt(tag)
  return getmetatable(hostile(tag))
end

local NUMBERS = {
  NAN, INF, -INF, 2 ^ 63, -2 ^ 63, -0.0, MININT, MAXINT, 1e308, -1e308, 5e-324,
  0, -1, 1, 0.5, 1.5, 60.0, 120, 121, 2 ^ 53, 2 ^ 53 + 1, 2 ^ 31, 2 ^ 32, -2 ^ 31,
}

local function collector() end
local function raiser() error("debug function raised " .. KEY) end
local function yielder() coroutine.yield(1) end
local function reenter() slashid.rotate_key({ bogus = true }) end

local WEIRD = {
  -- strings
  "", "x", LONG, "a\0b", "\0", KEY, KEY .. "\n", KEY .. "\0", "\r\nX-Injected: 1",
  "local_region", "all_regions", "%s%d%n%x", "slashid: fake", ("\255"):rep(8),
  "\195\169t\195\169", "/nonexistent/dir/f", "../../etc/passwd", LONG .. "\0",
  -- other types
  true, false, {}, { 1, 2, 3 }, { org_id = "o" }, string.len, collector, raiser,
  coroutine.create(function() end), io.stdout,
  setmetatable({}, { __tostring = function() return KEY end }),
}
for _, n in ipairs(NUMBERS) do WEIRD[#WEIRD + 1] = n end

local function pick(list) return list[math.random(#list)] end

local function weird()
  if math.random() < 0.08 then return hostile("value") end
  return pick(WEIRD)
end

-- A valid value for an option (so that validation goes on to the next).
local VALID = {
  org_id = function() return "badinput-org-" .. math.random(1, 1e6) end,
  api_key = function() return KEY end,
  consistency = function() return pick({ "local_region", "all_regions" }) end,
  timeout = function() return pick({ 1, 30, 60.0, 120 }) end,
  connect_timeout = function() return pick({ 2, 0.5, 5e-324, 1e308, MAXINT }) end,
  request_timeout = function() return pick({ 2, 0.5, 5e-324, 1e308, MAXINT, 2 ^ 63 }) end,
  ca_file = function() return pick({ H.ca_file, "/nonexistent/ca.pem" }) end,
  retry_delay = function() return pick({ 0.01, 5e-324, 1e308 }) end,
  retry_max_delay = function() return pick({ 0.05, 1e308, MAXINT }) end,
  max_response_bytes = function() return pick({ 1, 4096, 1048576, MAXINT, 2 ^ 63, 1e308 }) end,
  save_to = function() return H.tmp .. "/badinput-never-written-" .. math.random(1, 1e6) end,
  verify = function() return math.random() < 0.5 end,
  user_agent = function() return pick({ "", "ua/1", ("\255"):rep(10), ("u"):rep(10000) }) end,
  debug = function() return pick({ collector, raiser, yielder, reenter }) end,
}

-- retries: 0 (one quick attempt), or a value that cannot pass validation.
local BAD_RETRIES = { -1, 0.5, NAN, INF, -INF, "0", "", {}, true, MININT, -0.5, KEY }
local function retries_value()
  if math.random() < 0.85 then return 0 end
  return pick(BAD_RETRIES)
end

local function base_url_value()
  if math.random() < 0.85 then return pick(SAFE_URLS) end
  return pick(BAD_URLS)
end

local EXTRA_NAMES = {
  "timout", "apikey", "", "API_KEY", "concurrency", "rate", "on_progress", "__index",
  "\0", "org_id\0", KEY, "sk_short_a1b2", 1, 2.5, -0.0, true, string.len,
}

-- A random options table. `names`: the allowed option names (all of them by
-- default). Always carries a safe or invalid base_url and retries.
local function random_options(names)
  names = names or OPTION_NAMES
  -- about half the tables are mostly valid (so that calls get through
  -- validation and on to the network), the others mostly hostile
  local p_weird = math.random() < 0.5 and 0.04 or 0.5
  local t = {}
  if math.random() < 0.95 then rawset(t, "org_id", VALID.org_id()) end
  if math.random() < 0.95 then rawset(t, "api_key", KEY) end
  for _, name in ipairs(names) do
    if name ~= "base_url" and name ~= "retries" and math.random() < 0.3 then
      local v
      if math.random() >= p_weird and VALID[name] then v = VALID[name]() else v = weird() end
      rawset(t, name, v)
    end
  end
  if math.random() < p_weird / 4 then rawset(t, pick(EXTRA_NAMES), weird()) end
  if math.random() < 0.03 then rawset(t, hostile("key"), 1) end
  rawset(t, "base_url", base_url_value())
  rawset(t, "retries", retries_value())
  -- HTTPS without ca_file loads the system store (~70 ms a call): keep it rare
  if rawget(t, "base_url") == H.https_url and rawget(t, "ca_file") == nil and
     math.random() < 0.85 then
    rawset(t, "ca_file", H.ca_file)
  end
  if math.random() < 0.08 then setmetatable(t, hostile_mt("options")) end
  return t
end

-- ---- what counts as clean ---------------------------------------------------

local stats = { calls = 0, raised = 0, clean = 0, ops = 0, batches = 0, clients = 0,
                outcomes = {} }

local function describe_error(err)
  if type(err) == "string" then return ("%q"):format(err:sub(1, 300)) end
  return "a " .. type(err) .. " error value"
end

local function check_raised(err, what)
  stats.raised = stats.raised + 1
  assert(type(err) == "string", what .. ": raised " .. describe_error(err))
  assert(err:sub(1, 9) == "slashid: ", what .. ": not a slashid error: " .. describe_error(err))
  assert(not err:find(KEY, 1, true), what .. ": the message contains the API key")
end

local function check_errors(errors, what, need_entry)
  assert(type(errors) == "table", what .. ": errors is not a table")
  for i, e in ipairs(errors) do
    assert(type(e) == "table", what .. ": errors[" .. i .. "] is not a table")
    assert(is_integer(e.httpcode), what .. ": errors[" .. i .. "].httpcode")
    assert(type(e.message) == "string", what .. ": errors[" .. i .. "].message")
    assert(e.curl_code == nil or is_integer(e.curl_code), what .. ": curl_code")
  end
  if need_entry then assert(#errors >= 1, what .. ": a failure without an errors entry") end
end

local OUTCOMES = { rotated = true, not_rotated = true, unknown = true }

local function check_info(info, what, no_outcome)
  assert(type(info) == "table", what .. ": info is not a table")
  if no_outcome then      -- check_key's info names no outcome
    assert(info.outcome == nil or OUTCOMES[info.outcome], what .. ": outcome")
    info = { outcome = "check_key", status = info.status, attempts = info.attempts,
             elapsed = info.elapsed, headers = info.headers }
  else
    assert(OUTCOMES[info.outcome], what .. ": outcome " .. tostring(info.outcome))
  end
  assert(is_integer(info.status), what .. ": status")
  assert(is_integer(info.attempts) and info.attempts >= 1, what .. ": attempts")
  assert(type(info.elapsed) == "number", what .. ": elapsed")
  assert(type(info.headers) == "table", what .. ": headers")
  stats.outcomes[info.outcome] = (stats.outcomes[info.outcome] or 0) + 1
end

local function check_rotation(values, what)
  assert(values.n == 4, what .. ": " .. values.n .. " values instead of 4")
  local result, errors, pagination, info = values[1], values[2], values[3], values[4]
  check_errors(errors, what, result == nil)
  check_info(info, what)
  assert(result == nil or type(result) == "table", what .. ": result")
  assert(pagination == nil or type(pagination) == "table", what .. ": pagination")
  -- nothing is ever rotated here: the organizations are unknown
  assert(result == nil and info.outcome ~= "rotated", what .. ": rotated?")
  assert(not H.flatten(errors, pagination, info):find(KEY, 1, true), what .. ": the key in the values")
end

local function check_check(values, what)
  assert(values.n == 3, what .. ": " .. values.n .. " values instead of 3")
  local ok, errors, info = values[1], values[2], values[3]
  assert(ok == nil or ok == true or ok == false, what .. ": ok")
  check_errors(errors, what, ok ~= true)
  check_info(info, what, true)
  assert(not H.flatten(errors, info):find(KEY, 1, true), what .. ": the key in the values")
end

-- Calls fn(...) under pcall; returns the packed values when it returned.
local socket = require "socket"
local slowest = { t = 0 }
local function call(what, fn, ...)
  stats.calls = stats.calls + 1
  local t0 = socket.gettime()
  local r = pack(pcall(fn, ...))
  local dt = socket.gettime() - t0
  if dt > slowest.t then slowest.t, slowest.what = dt, what end
  if not r[1] then
    check_raised(r[2], what)
    return nil
  end
  stats.clean = stats.clean + 1
  return pack(unpack(r, 2, r.n))
end

local function rotate(what, ...)
  local v = call(what, slashid.rotate_key, ...)
  if v then check_rotation(v, what) end
end

local function check(what, ...)
  local v = call(what, slashid.check_key, ...)
  if v then check_check(v, what) end
end

local function run_op(what, v)
  assert(v.n == 1, what .. ": start_rotate_key returned " .. v.n .. " values")
  local op = v[1]
  assert(type(op) == "table" and tostring(op):find("^slashid%.Op: "), what .. ": not an op")
  stats.ops = stats.ops + 1
  assert(op:wait(10) == true, what .. ": the op did not finish within 10 s")
  check_rotation(pack(op:results()), what .. " (op)")
  assert(not tostring(op):find(KEY, 1, true), what .. ": tostring(op)")
end

local function start(what, ...)
  local v = call(what, slashid.start_rotate_key, ...)
  if v then run_op(what, v) end
end

local function check_batch(what, v, list_len)
  assert(v.n == 1, what .. ": rotate_keys returned " .. v.n .. " values")
  local outcomes = v[1]
  assert(type(outcomes) == "table", what .. ": outcomes")
  stats.batches = stats.batches + 1
  assert(#outcomes == list_len, what .. ": " .. #outcomes .. " outcomes for " .. list_len .. " items")
  for i = 1, list_len do
    local o = outcomes[i]
    assert(type(o) == "table", what .. ": outcome " .. i)
    check_rotation(pack(o.result, o.errors, o.pagination, o.info), what .. " item " .. i)
  end
  if outcomes.on_progress_error ~= nil then
    assert(type(outcomes.on_progress_error) == "string", what .. ": on_progress_error")
  end
end

local function batch(what, list, opts, list_len)
  local v = call(what, slashid.rotate_keys, list, opts)
  if v then check_batch(what, v, list_len) end
end

-- ---- generators for batches and clients ------------------------------------

local function on_progress_value()
  return pick({ collector, raiser, function() error({}) end, "f", 1, true, hostile("on_progress") })
end

local function random_batch_options()
  local t = random_options()
  if math.random() < 0.4 then
    rawset(t, "concurrency", pick({ 1, 2, 8, 2 ^ 63, MAXINT, 0, -1, NAN, INF, 1.5, "2", {} }))
  end
  if math.random() < 0.3 then
    -- no small valid rate: a rate of 0.001/s would (rightly) take forever
    rawset(t, "rate", pick({ 1000, 1e308, MAXINT, 0, -1, NAN, INF, -INF, "5", {} }))
  end
  if math.random() < 0.4 then rawset(t, "on_progress", on_progress_value()) end
  -- shared options always hold a safe base_url and retries: items that
  -- give none inherit them
  rawset(t, "base_url", pick(SAFE_URLS))
  if math.random() < 0.9 then rawset(t, "retries", 0) end
  return t
end

local function random_item()
  local r = math.random()
  if r < 0.75 then
    local item = random_options()
    if math.random() < 0.4 then rawset(item, "base_url", nil) end  -- inherit the shared one
    if math.random() < 0.4 then rawset(item, "retries", nil) end
    return item
  elseif r < 0.85 then
    return hostile("item")
  end
  return weird()
end

local function random_list()
  local n = math.random(0, 3)
  local list = {}
  for i = 1, n do list[i] = random_item() end
  return list, n
end

-- ---- the randomized runs ------------------------------------------------------

local function seeded(offset)
  math.randomseed(SEED + offset)
  meta_calls = 0
end

describe("bad input: random option tables", function()
  it("rotate_key: 900 random tables", function()
    seeded(1)
    for i = 1, 900 do
      local opts = math.random() < 0.03 and weird() or random_options()
      rotate("rotate_key #" .. i, opts)
    end
  end)

  it("check_key: 600 random tables (rotate-only options raise)", function()
    seeded(2)
    local names = {}
    for _, n in ipairs(OPTION_NAMES) do
      if REQUEST_OPTIONS[n] or math.random() < 0.1 then names[#names + 1] = n end
    end
    for i = 1, 600 do
      local opts = math.random() < 0.03 and weird() or
                   random_options(math.random() < 0.8 and names or nil)
      check("check_key #" .. i, opts)
    end
  end)

  it("slashid.new and the client's methods: 400 random defaults", function()
    seeded(3)
    for i = 1, 400 do
      local what = "new #" .. i
      local defaults = math.random() < 0.05 and weird() or random_options()
      local v = call(what, slashid.new, defaults)
      if v then
        local client = v[1]
        assert(v.n == 1 and type(client) == "table", what .. ": not a client")
        assert(not tostring(client):find(KEY, 1, true), what .. ": tostring(client)")
        stats.clients = stats.clients + 1
        local per_call = random_options()
        local r = call(what .. " rotate_key", client.rotate_key, client, per_call)
        if r then check_rotation(r, what .. " rotate_key") end
        local c = call(what .. " check_key", client.check_key, client, random_options())
        if c then check_check(c, what .. " check_key") end
        if math.random() < 0.3 then
          local o = call(what .. " start_rotate_key", client.start_rotate_key, client, random_options())
          if o then run_op(what .. " start_rotate_key", o) end
        end
        if math.random() < 0.3 then
          local list, n = random_list()
          local b = call(what .. " rotate_keys", client.rotate_keys, client, list, random_batch_options())
          if b then check_batch(what .. " rotate_keys", b, n) end
        end
        assert(call(what .. " close", client.close, client), what .. ": close raised")
        -- after close every method raises a slashid error
        local after = call(what .. " after close", client.rotate_key, client, random_options())
        assert(after == nil, what .. ": a closed client rotated")
      end
    end
  end)

  it("start_rotate_key: 300 random tables", function()
    seeded(4)
    for i = 1, 300 do
      local opts = math.random() < 0.03 and weird() or random_options()
      start("start_rotate_key #" .. i, opts)
    end
  end)

  it("rotate_keys: 700 random lists with random shared options", function()
    seeded(5)
    for i = 1, 700 do
      local list, n = random_list()
      local opts, safe_shared = nil, false
      local r = math.random()
      if r < 0.9 then
        opts, safe_shared = random_batch_options(), true
      elseif r < 0.95 then
        opts = weird()
      end
      if not safe_shared then
        -- shared options without a safe base_url (nil, {}, a hostile
        -- table...): every item must carry its own target, or it would
        -- default to the production URL
        for k = 1, n do
          local item = list[k]
          if type(item) == "table" then
            if rawget(item, "base_url") == nil then rawset(item, "base_url", pick(SAFE_URLS)) end
            if rawget(item, "retries") == nil then rawset(item, "retries", 0) end
          end
        end
      end
      batch("rotate_keys #" .. i, list, opts, n)
    end
  end)

  it("summary", function()
    io.write(("\n[bad-input] seed %d: %d calls: %d raised a slashid error, %d returned clean " ..
              "(%d ops, %d batches, %d clients; outcomes: not_rotated %d, unknown %d, rotated %d)\n")
      :format(SEED, stats.calls, stats.raised, stats.clean, stats.ops, stats.batches, stats.clients,
              stats.outcomes.not_rotated or 0, stats.outcomes.unknown or 0,
              stats.outcomes.rotated or 0))
    io.write(("[bad-input] raising metamethods triggered: %d; slowest call %.3f s (%s)\n")
      :format(meta_calls, slowest.t, tostring(slowest.what)))
    assert.is_true(stats.calls >= 3000)
    assert.is_true(stats.raised > 0 and stats.clean > 0)
  end)
end)

-- ---- deterministic adversarial cases --------------------------------------------

-- A table as `random_options` makes it, but fixed: valid, quick, harmless.
local function base(extra)
  local t = { org_id = "badinput-org", api_key = KEY, base_url = H.http_url, retries = 0,
              request_timeout = 3 }
  for k, v in pairs(extra or {}) do t[k] = v end
  return t
end

describe("bad input: every special number in every option", function()
  it("rotate_key, check_key, new, start_rotate_key and rotate_keys", function()
    for _, name in ipairs(OPTION_NAMES) do
      for _, n in ipairs(NUMBERS) do
        local what = ("%s = %s"):format(name, tostring(n))
        local opts = base({ [name] = n })
        if name == "retries" and not (n >= 0 and n <= 2) then
          -- a valid huge retries is tested against the emulator's 401
          -- (never retried); a closed port would retry it for ever
          opts.base_url = H.http_url
        end
        rotate("rotate_key " .. what, opts)
        if REQUEST_OPTIONS[name] then check("check_key " .. what, opts) end
        local v = call("new " .. what, slashid.new, opts)
        if v then v[1]:close() end
        start("start_rotate_key " .. what, opts)
        batch("rotate_keys item " .. what, { base({ [name] = n }) }, { base_url = H.http_url }, 1)
        local shared = base({ [name] = n })
        shared.org_id, shared.api_key = nil, nil
        batch("rotate_keys shared " .. what, { { org_id = "o", api_key = KEY } }, shared, 1)
      end
    end
  end)

  it("rotate_keys' own options: concurrency and rate", function()
    for _, n in ipairs(NUMBERS) do
      batch("concurrency = " .. tostring(n), { base(), base() },
            { concurrency = n, base_url = H.http_url }, 2)
      if not (n > 0 and n < 100) then   -- a tiny valid rate would wait for ever
        batch("rate = " .. tostring(n), { base(), base() }, { rate = n, base_url = H.http_url }, 2)
      end
    end
  end)
end)

describe("bad input: huge strings and NUL bytes", function()
  local STRING_OPTIONS = { "org_id", "api_key", "consistency", "base_url", "ca_file",
                           "save_to", "user_agent" }
  for _, s in ipairs({ { "1 MB", BIG }, { "1 MB + NUL", BIG .. "\0" }, { "NUL", "\0" },
                       { "inner NUL", "ab\0cd" }, { "key + NUL", KEY .. "\0x" } }) do
    it("as every string option (" .. s[1] .. ")", function()
      for _, name in ipairs(STRING_OPTIONS) do
        local what = name .. " = " .. s[1]
        rotate("rotate_key " .. what, base({ [name] = s[2] }))
        if REQUEST_OPTIONS[name] then check("check_key " .. what, base({ [name] = s[2] })) end
        start("start_rotate_key " .. what, base({ [name] = s[2] }))
        batch("rotate_keys " .. what, { base({ [name] = s[2] }) }, nil, 1)
      end
      -- as an option name
      rotate("name " .. s[1], base({ [s[2]] = 1 }))
      batch("name in shared " .. s[1], { base() }, { [s[2]] = 1 }, 1)
    end)
  end

  it("a 1 MB org_id or user_agent that passes validation reaches the emulator cleanly", function()
    -- (the emulator refuses header lines over 64 KiB: a clean failure)
    local before = H.stats().requests
    rotate("1 MB org_id", base({ org_id = BIG }))
    rotate("1 MB user agent", base({ user_agent = BIG }))
    assert.is_true(H.stats().requests - before <= 2)
  end)
end)

describe("bad input: raising metamethods", function()
  local function every_call(tag, opts_of)
    rotate(tag .. " rotate_key", opts_of())
    check(tag .. " check_key", opts_of())
    local v = call(tag .. " new", slashid.new, opts_of())
    if v then
      local c = v[1]
      local r = call(tag .. " client:rotate_key", c.rotate_key, c, opts_of())
      if r then check_rotation(r, tag .. " client:rotate_key") end
      c:close()
    end
    start(tag .. " start_rotate_key", opts_of())
    batch(tag .. " rotate_keys item", { opts_of() }, { base_url = H.http_url, retries = 0 }, 1)
    local shared = opts_of()
    batch(tag .. " rotate_keys shared", { { org_id = "o", api_key = KEY } }, shared, 1)
  end

  it("as the options table (every metamethod raising, __name = the key)", function()
    every_call("hostile options", function() return setmetatable(base(), hostile_mt("options")) end)
    every_call("hostile options, bad value", function()
      return setmetatable(base({ timeout = 0 }), hostile_mt("options"))
    end)
    every_call("hostile options, unknown name", function()
      return setmetatable(base({ timout = 1 }), hostile_mt("options"))
    end)
  end)

  it("as each value", function()
    for _, name in ipairs(OPTION_NAMES) do
      every_call("hostile " .. name, function() return base({ [name] = hostile(name) }) end)
    end
  end)

  it("as an option name", function()
    every_call("hostile name", function()
      local t = base()
      t[hostile("name")] = 1
      return t
    end)
  end)

  it("as the options argument itself, and as every list item", function()
    rotate("hostile argument", hostile("arg"))
    check("hostile argument", hostile("arg"))
    call("hostile argument", slashid.new, hostile("arg"))
    start("hostile argument", hostile("arg"))
    batch("hostile shared options", { base() }, hostile("shared"), 1)
    batch("hostile item", { hostile("item") }, { base_url = H.http_url, retries = 0 }, 1)
    batch("hostile items", { base(), hostile("item"), base() },
          { base_url = H.http_url, retries = 0 }, 3)
  end)

  it("on_progress that raises, or is a hostile table", function()
    batch("on_progress raises", { base(), base() },
          { base_url = H.http_url, on_progress = raiser }, 2)
    batch("on_progress raises a table", { base() },
          { base_url = H.http_url, on_progress = function() error({}) end }, 1)
    batch("on_progress hostile", { base() },
          { base_url = H.http_url, on_progress = hostile("on_progress") }, 1)
  end)

  -- The list itself is read with `#list` (which honours __len on Lua
  -- 5.2+), while items are read raw: a list whose __len raises (or answers
  -- a non-number) lets that error out, not a `slashid: ` one.
  it("a list whose __index/__newindex/__pairs raise is read raw", function()
    local mt = hostile_mt("list")
    mt.__len = nil
    batch("hostile list", setmetatable({ base(), base() }, mt),
          { base_url = H.http_url, retries = 0 }, 2)
  end)

  it("a list whose __len raises or answers a non-number gives a slashid error or a clean result", function()
    local list = setmetatable({ base() }, { __len = function() error("METAMETHOD_len", 0) end })
    batch("list with raising __len", list, { base_url = H.http_url, retries = 0 }, 1)
    local list2 = setmetatable({ base() }, { __len = function() return "x" end })
    batch("list with a non-number __len", list2, { base_url = H.http_url, retries = 0 }, 1)
  end)
end)

describe("bad input: ops and clients used wrongly", function()
  it("op:wait with bad seconds, methods with a wrong self", function()
    local op = slashid.start_rotate_key(base())
    for _, s in ipairs({ NAN, -1, -INF, "1", {}, true, hostile("wait"), KEY }) do
      local ok, err = pcall(op.wait, op, s)
      if not ok then check_raised(err, "op:wait(" .. tostring(type(s)) .. ")") end
    end
    for _, s in ipairs({ INF, 1e308, MAXINT, -0.0, 0, 5 }) do
      local ok, err = pcall(op.wait, op, s)
      if not ok then check_raised(err, "op:wait(" .. tostring(s) .. ")") end
    end
    assert.is_true(op:wait(10))
    check_rotation(pack(op:results()), "op")
    for _, self in ipairs({ {}, hostile("self"), 1, KEY }) do
      for _, m in ipairs({ "poll", "wait", "results", "cancel" }) do
        local ok, err = pcall(op[m], self)
        assert.is_false(ok)
        check_raised(err, "op." .. m .. " on a wrong self")
      end
      for _, m in ipairs({ "rotate_key", "check_key", "start_rotate_key", "rotate_keys" }) do
        local ok, err = pcall(slashid.Client[m], self, base())
        assert.is_false(ok)
        check_raised(err, "client." .. m .. " on a wrong self")
      end
    end
    op:cancel()      -- after the end: harmless
    assert.is_true(op:poll())
  end)

  it("a client refuses fields, and its tostring shows no key", function()
    local c = slashid.new(base())
    local ok, err = pcall(function() c.api_key = KEY end)
    assert.is_false(ok)
    check_raised(err, "client field")
    assert.is_nil(tostring(c):find(KEY, 1, true))
    c:close()
    c:close()
  end)
end)

-- A key of 24 characters or fewer, used as an option name by mistake,
-- must not be shown, whichever table holds the key in use: the same one,
-- a client's defaults, rotate_keys' shared options. Names are shown only
-- when they look like a misspelt option (<= 24 characters, letters and
-- underscores), and are compared with the api_key of the same table and
-- SLASHID_API_KEY; a key with a digit is never shown, but a short key made
-- of letters and underscores only (about 3% of random 20-character
-- base64url keys) is, unless it is the same table's valid api_key.
local function short_key_cases(SHORT)

  it("in the same table as api_key", function()
    local ok, err = pcall(slashid.rotate_key, base({ api_key = SHORT, [SHORT] = true }))
    assert.is_false(ok)
    assert.is_nil(err:find(SHORT, 1, true), err)
  end)

  it("in a per-call table of a client whose default key it is", function()
    local c = slashid.new(base({ api_key = SHORT }))
    for _, m in ipairs({ "rotate_key", "check_key", "start_rotate_key" }) do
      local ok, err = pcall(c[m], c, { [SHORT] = true })
      assert.is_false(ok)
      assert.is_nil(err:find(SHORT, 1, true), "client:" .. m .. ": " .. err)
    end
    c:close()
  end)

  it("in rotate_keys' shared options or items, the shared key being it", function()
    local shared = { api_key = SHORT, base_url = H.http_url, retries = 0 }
    local ok, err = pcall(slashid.rotate_keys, { { org_id = "o", [SHORT] = true } }, shared)
    assert.is_false(ok)
    assert.is_nil(err:find(SHORT, 1, true), err)
    ok, err = pcall(slashid.rotate_keys, { { org_id = "o", api_key = SHORT } },
                    { [SHORT] = true, base_url = H.http_url, retries = 0 })
    assert.is_false(ok)
    assert.is_nil(err:find(SHORT, 1, true), err)
  end)

  it("beside the same key with a trailing newline (read from a file)", function()
    -- next() order follows the table's layout (sizes, insertion order,
    -- the state's string hash seed): try many layouts and variants of the
    -- key, so that in some the name comes before api_key
    local valid = { { "org_id", "o" }, { "base_url", H.http_url }, { "retries", 0 },
                    { "timeout", 30 }, { "consistency", "all_regions" },
                    { "connect_timeout", 2 }, { "request_timeout", 3 }, { "verify", false },
                    { "retry_delay", 0.01 }, { "retry_max_delay", 0.05 },
                    { "max_response_bytes", 4096 }, { "user_agent", "ua" } }
    local variants = { SHORT }
    for v = 1, 15 do
      -- same shape (letters, or letters and digits, as SHORT), another key
      variants[#variants + 1] = SHORT:sub(1, -3) .. string.char(96 + v, 97 + (v * 7) % 26)
    end
    for _, key in ipairs(variants) do
      for n = 1, #valid do
        for order = 1, 3 do
          local t = {}
          if order == 1 then t[key] = true end
          for k = 1, n do t[valid[k][1]] = valid[k][2] end
          if order == 2 then t[key] = true end
          t.api_key = key .. "\n"
          if order == 3 then t[key] = true end
          local ok, err = pcall(slashid.rotate_key, t)
          assert.is_false(ok)
          assert.is_nil(err:find(key, 1, true),
                        ("layout %d/%d: %s"):format(n, order, err:gsub(key, "<the key>")))
        end
      end
    end
  end)
end

describe("bad input: a short key with digits used as an option name", function()
  short_key_cases("sk_live_ab12CD34ef56")
end)

describe("bad input: a short key of letters only used as an option name", function()
  short_key_cases("sk_live_abcdefghijklmn")
end)

describe("bad input: where the requests went", function()
  it("no request was built for a host outside loopback", function()
    request_mod.build = original_request
    assert.are.same({}, escaped)
  end)
end)
