-- The Lua half of fuzz_options.c: builds option tables from fuzz bytes
-- (strings with NUL/CR, huge strings, numbers such as NaN, inf, 2^63,
-- booleans, functions, nested tables, tables whose metamethods raise) and
-- runs lua/slashid/options.lua's `check` and `resolve` on them under pcall.
--
-- Invariants (raising here is a finding):
--   - a rejection is a string starting with "slashid: ", without a
--     position, and never contains the API key given (in the table or in
--     SLASHID_API_KEY);
--   - an accepted table gives a copy holding every option given, each of
--     the documented type and range (README's options table), and never
--     triggers a metamethod of the caller's table;
--   - a resolved configuration has every default filled in and is
--     consistent (retry_max_delay >= retry_delay, http only on loopback).
local options = require "slashid.options"

local M = {}

local type, next, rawget, rawset, pairs, tostring, select =
      type, next, rawget, rawset, pairs, tostring, select
local mtype, huge, floor = math.type, math.huge, math.floor

-- Long enough that no message could contain it by chance, and that an
-- unknown option name (shown when short) cannot either.
local KEY_PREFIX = "sk_FUZZKEY_0123456789abcdefghij_"

local function fail(fmt, ...)
  error("invariant: " .. string.format(fmt, ...), 0)
end

-- ---- a reader over the fuzz bytes ---------------------------------------

local function reader(bytes)
  local pos = 1
  local r = {}
  function r.u8()
    local b = bytes:byte(pos)
    pos = pos + 1
    return b or 0
  end
  function r.take(n)
    local s = bytes:sub(pos, pos + n - 1)
    pos = pos + n
    return s
  end
  function r.left() return #bytes - pos + 1 end
  return r
end

local NAMES = {}
for name in pairs(options.CHECKS) do NAMES[#NAMES + 1] = name end
table.sort(NAMES)
local EXTRA_NAMES = { "api_keys", "API_KEY", "apikey", "", "__index", "concurrency",
                      "rate", "on_progress", "verify ", "org_id\0", "base_url\r\n",
                      string.rep("x", 25), "timeout2", "_", "1" }

local FLOATS = { 0 / 0, -(0 / 0), huge, -huge, 2 ^ 63, -2 ^ 63, 2 ^ 53 + 1, 2 ^ 64,
                 0.5, 60.0, 120.0, 120.0000001, 1e-320, 1e308, -0.0, 0.0, 1.0, 30.5,
                 math.maxinteger + 0.0, math.mininteger + 0.0 }
local INTS = { 0, 1, -1, 120, 121, 2, 100, 101, math.maxinteger, math.mininteger,
               1048576, 9007199254740993, 30, 45 }
local STRINGS = { "local_region", "all_regions", "LOCAL_REGION", "local_region\0",
                  "http://127.0.0.1:8080", "https://api.slashid.com/",
                  "http://[::1]:1/", "http://localhost", "http://LOCALHOST:80",
                  "http://0177.0.0.1", "http://127.1", "http://127.0.0.1.nip.io",
                  "HTTPS://api.sandbox.slashid.com", "https://u:p@h", "https://h?q=1",
                  "https://h#f", "https://h:0", "https://h:65536", "https://h:",
                  "ftp://h", "//h", " https://h", "https://", "http://[::1",
                  "http://0:0:0:0:0:0:0:1/", "http://[0:0:0:0:0:0:0:1]:8/",
                  "https://h/\r\nX-Injected: 1", "http://127.0.0.1:8080///",
                  "/tmp/key", "/dev/null", "", " ", "\0", "\r\n", "\t", "60", "0x10",
                  "1e2", "nan", "inf", "true", "org-1", "\127" }

local new_value

local function raising(what)
  return function() error("metamethod " .. what .. " called", 0) end
end

-- A table every metamethod of which raises: check must never touch them.
local function trap_table(t)
  return setmetatable(t or {}, {
    __index = raising("__index"), __newindex = raising("__newindex"),
    __pairs = raising("__pairs"), __len = raising("__len"),
    __tostring = raising("__tostring"), __eq = raising("__eq"),
    __lt = raising("__lt"), __le = raising("__le"), __concat = raising("__concat"),
    __call = raising("__call"), __name = "fuzz.Trap",
  })
end

local function new_table(r, depth)
  local t = {}
  local n = r.u8() % 4
  for _ = 1, n do
    local k = new_value(r, depth + 1, true)
    if k ~= nil and k == k then t[k] = new_value(r, depth + 1) end
  end
  return t
end

function new_value(r, depth, as_key)
  local kind = r.u8() % 16
  if kind == 0 then return r.take(r.u8() % 48)                    -- raw bytes
  elseif kind == 1 then return KEY_PREFIX .. r.take(r.u8() % 24)  -- a key
  elseif kind == 2 then
    local s = r.take(8)
    if #s < 8 then return 0 end
    return (string.unpack("<i8", s))
  elseif kind == 3 then return FLOATS[r.u8() % #FLOATS + 1]
  elseif kind == 4 then
    local s = r.take(8)
    if #s < 8 then return 0.5 end
    return (string.unpack("<d", s))
  elseif kind == 5 then return r.u8() % 2 == 0
  elseif kind == 6 then
    if depth > 3 then return nil end
    return new_table(r, depth)
  elseif kind == 7 then return raising("a function value")
  elseif kind == 8 then return trap_table()
  elseif kind == 9 then return coroutine.create(function() end)
  elseif kind == 10 then return as_key and "api_key" or io.stdout
  elseif kind == 11 then return INTS[r.u8() % #INTS + 1]
  elseif kind == 12 then return STRINGS[r.u8() % #STRINGS + 1]
  elseif kind == 13 then return string.rep(string.char(r.u8()), 1 + r.u8() * 400)
  elseif kind == 14 then return INTS[r.u8() % #INTS + 1] + 0.0
  end
  return nil
end

local function new_name(r)
  local c = r.u8()
  if c < 192 then return NAMES[c % #NAMES + 1] end
  if c < 224 then return EXTRA_NAMES[c % #EXTRA_NAMES + 1] end
  return new_value(r, 2, true)
end

-- An option table, sometimes itself guarded by raising metamethods.
local function new_options(r)
  local kind = r.u8()
  if kind < 8 then return new_value(r, 0) end       -- not even a table
  local t = {}
  local n = r.u8() % 10
  for _ = 1, n do
    if r.left() <= 0 then break end
    local k = new_name(r)
    if k ~= nil and k == k then rawset(t, k, new_value(r, 1)) end
  end
  if kind >= 224 then trap_table(t) end
  return t
end

-- ---- invariants ----------------------------------------------------------

local function secrets_of(opts, env_key)
  local list = {}
  local k = type(opts) == "table" and rawget(opts, "api_key")
  -- A key the library could quote by accident is a key-like string: one
  -- with a space, a quote, a colon or a bracket could be a piece of a
  -- message's own text ("slashid: bad option '..."), which every message
  -- "quotes"; such fuzzed keys are left out of this check.
  if type(k) == "string" and #k >= 25 and not k:find("[%s'\"():%[%]]") then
    list[#list + 1] = k
  end
  if env_key then list[#list + 1] = env_key end
  return list
end

local function check_error(msg, secrets, what)
  if type(msg) ~= "string" then fail("%s raised a %s", what, type(msg)) end
  if msg:sub(1, 9) ~= "slashid: " then
    fail("%s raised a message not starting with 'slashid: ': %q", what, msg:sub(1, 200))
  end
  if msg:find("%.lua:%d+:") then fail("%s: a position in the message", what) end
  for _, s in ipairs(secrets) do
    if msg:find(s, 1, true) then fail("%s: the API key appears in the message", what) end
  end
end

local function finite_positive(v) return type(v) == "number" and v > 0 and v < huge end
local function is_int(v) return mtype(v) == "integer" end
-- retries and max_response_bytes have no upper bound: past 2^63 an
-- integral value can only be a float, and is kept as such.
local function is_count(v)
  return is_int(v) or (mtype(v) == "float" and v >= 2 ^ 63 and v < huge)
end
local function text(v)
  return type(v) == "string" and v ~= "" and not v:find("[%c\127]")
end

local function loopback_url(url)
  local host = url:match("^[hH][tT][tT][pP]://%[([^%]]+)%]") or
               url:match("^[hH][tT][tT][pP]://([^:/]+)")
  if not host then return false end
  host = host:lower()
  return host == "localhost" or host == "::1" or host == "0:0:0:0:0:0:0:1" or
         host:find("^127%.%d+%.%d+%.%d+$") ~= nil
end

-- What each kind of option accepts (README, "Options"), written here apart from
-- options.lua's checkers; which option is of which kind, with its range or
-- values, comes from options.RULES.
local function path(v) return type(v) == "string" and v ~= "" and not v:find("%z") end
local KIND_VALID = {
  text = function() return text end,
  enum = function(rule)
    local allowed = {}
    for _, value in ipairs(rule.values) do allowed[value] = true end
    return function(v) return type(v) == "string" and allowed[v] == true end
  end,
  integer = function(rule)
    local lo, hi = rule.min, rule.max
    return function(v)
      return (is_int(v) or (not hi and is_count(v))) and v >= lo and (not hi or v <= hi)
    end
  end,
  positive = function() return finite_positive end,
  url = function()
    return function(v)
      if type(v) ~= "string" or v:find("[%c%s\127]") then return false end
      if v:lower():find("^https://[^/?#@]") then return true end
      return loopback_url(v)
    end
  end,
  -- false, or an http/https/socks5h URL with a host (credentials allowed)
  proxy = function()
    return function(v)
      if v == false then return true end
      if type(v) ~= "string" or v:find("[%c%s\127]") then return false end
      local scheme, rest = v:match("^(%a[%w+.-]*)://(.*)$")
      if not scheme then return false end
      scheme = scheme:lower()
      if scheme ~= "http" and scheme ~= "https" and scheme ~= "socks5h" then return false end
      local hostport = rest:match("^[^/?#]*")
      hostport = hostport:match("@([^@]*)$") or hostport
      return hostport ~= "" and hostport:sub(1, 1) ~= ":"
    end
  end,
  path = function() return path end,
  string = function()
    return function(v) return type(v) == "string" and not v:find("[%c\127]") end
  end,
  boolean = function() return function(v) return type(v) == "boolean" end end,
  ["function"] = function() return function(v) return type(v) == "function" end end,
}

-- Per-item options only: check must never accept rotate_keys' own.
-- SET_AFTER_RESOLVE: what resolve must have filled in (for check_key, only
-- the options of a request).
local VALID, SET_AFTER_RESOLVE = {}, {}
for _, rule in ipairs(options.RULES) do
  if rule.calls ~= "batch" then
    VALID[rule.name] = assert(KIND_VALID[rule.kind], rule.kind)(rule)
    if rule.required or rule.default ~= nil or rule.derive then
      SET_AFTER_RESOLVE[#SET_AFTER_RESOLVE + 1] = rule
    end
  end
end

local function check_copy(opts, copy, allowed)
  if type(copy) ~= "table" then fail("check returned a %s", type(copy)) end
  if getmetatable(copy) ~= nil then fail("the copy has a metatable") end
  if opts == nil then
    if next(copy) ~= nil then fail("check(nil) is not empty") end
    return
  end
  for k, v in next, opts do
    if allowed and not allowed[k] then fail("option %s accepted where not allowed", tostring(k)) end
    local c = rawget(copy, k)
    if c == nil then fail("option %s accepted but missing from the copy", tostring(k)) end
    if not VALID[k] or not VALID[k](c) then fail("option %s accepted with a bad value", tostring(k)) end
    if type(v) == "number" and c ~= v then fail("option %s changed value", k) end
  end
  for k in next, copy do
    if rawget(opts, k) == nil then fail("the copy has an option %s not given", tostring(k)) end
  end
  if copy.retry_delay and copy.retry_max_delay and copy.retry_max_delay < copy.retry_delay then
    fail("retry_max_delay < retry_delay accepted")
  end
end

local function check_cfg(cfg, keep)
  if type(cfg) ~= "table" then fail("resolve returned a %s", type(cfg)) end
  for _, rule in ipairs(SET_AFTER_RESOLVE) do
    if cfg[rule.name] == nil and (rule.calls == "request" or not keep) then
      fail("resolve left %s unset", rule.name)
    end
  end
  for k, v in pairs(cfg) do
    if keep and not keep[k] then fail("resolve kept %s for check_key", tostring(k)) end
    if VALID[k] and not VALID[k](v) then fail("resolved %s is invalid", tostring(k)) end
  end
  if cfg.retry_max_delay < cfg.retry_delay then fail("resolved retry_max_delay < retry_delay") end
  if cfg.request_timeout ~= cfg.request_timeout then fail("request_timeout is NaN") end
end

-- pcall(fn, ...) -> ok, value; a rejection is checked at once.
local function guarded(what, secrets, fn, ...)
  local ok, v = pcall(fn, ...)
  if not ok then check_error(v, secrets, what) end
  return ok, v
end

-- One fuzz input. env_key: the SLASHID_API_KEY the harness set, or nil.
function M.run(bytes, env_key)
  local r = reader(bytes)
  local opts = new_options(r)
  local defaults = new_options(r)
  local secrets = secrets_of(opts, env_key)
  for _, s in ipairs(secrets_of(defaults, nil)) do secrets[#secrets + 1] = s end

  -- rotate_key: check, then resolve over checked defaults
  local ok, copy = guarded("check", secrets, options.check, opts)
  if ok then check_copy(opts, copy, nil) end
  local dok, dcopy = guarded("check(defaults)", secrets, options.check, defaults, nil, "defaults")
  if dok then check_copy(defaults, dcopy, nil) end
  if ok then
    local rok, cfg = guarded("resolve", secrets, options.resolve, dok and dcopy or {}, copy)
    if rok then check_cfg(cfg, nil) end
  end

  -- check_key: only the options of a request, resolved with `keep`
  local keep = options.REQUEST_OPTIONS
  local kok, kcopy = guarded("check(keep)", secrets, options.check, opts, keep)
  if kok then
    check_copy(opts, kcopy, keep)
    local rok, cfg = guarded("resolve(keep)", secrets, options.resolve,
                             dok and dcopy or {}, kcopy, keep)
    if rok then check_cfg(cfg, keep) end
  end
end

return M
