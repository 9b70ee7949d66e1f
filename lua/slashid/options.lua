-- slashid.options: what callers may pass, checked before any network
-- activity. Programmer mistakes raise `slashid: ...` errors that name the
-- option and never quote a string value (it could be a key).

local M = {}

local floor, huge = math.floor, math.huge
local type, next, rawget, tostring, error = type, next, rawget, tostring, error
local string_format = string.format

M.PRODUCTION = "https://api.slashid.com"
M.SANDBOX = "https://api.sandbox.slashid.com"

local ENV = {  -- (M.ENV: a configuration resolved from them is kept while they hold)
  org_id = "SLASHID_ORG_ID",
  api_key = "SLASHID_API_KEY",
  base_url = "SLASHID_BASE_URL",
}
M.ENV = ENV

-- Errors are raised at level 0: the message starts with "slashid: " and
-- carries no file:line prefix (it is for people, and a contract).
local function raise(msg) error(msg, 0) end

-- What a value was, for a message, without ever showing string content.
local function describe(v)
  local t = type(v)
  if t == "number" then
    if v ~= v then return "nan" end
    return string_format("%.14g", v)
  elseif t == "string" then
    return v == "" and "an empty string" or "a string"
  end
  return t
end

local function fail(name, expected, v)
  raise(string_format("slashid: bad option '%s' (%s expected, got %s)",
                      name, expected, describe(v)))
end

local function is_integer(v)
  return type(v) == "number" and v == v and v > -huge and v < huge
     and floor(v) == v
end

-- Integral floats (60.0) count as integers; they become Lua integers on
-- 5.3+ so that headers print without ".0".
local tointeger = math.tointeger or function(v) return v end

local function check_text(name, v)
  if type(v) ~= "string" or v == "" then
    if type(v) == "number" then   -- a key given as a number: digits not shown
      raise(string_format("slashid: bad option '%s' (non-empty string expected, got a number)", name))
    end
    fail(name, "non-empty string", v)
  end
  if v:find("[%c\127]") then
    raise(string_format("slashid: bad option '%s' (control characters such as CR, LF or NUL are not allowed)", name))
  end
  return v
end

local function check_int(lo, hi)
  local expected = hi and string_format("integer %d..%d", lo, hi)
                       or string_format("integer >= %d", lo)
  return function(name, v)
    if not is_integer(v) or v < lo or (hi and v > hi) then
      fail(name, expected, v)
    end
    return tointeger(v) or v   -- beyond 2^63: an integral float, kept
  end
end

local function check_positive(name, v)
  if type(v) ~= "number" or not (v > 0) or v == huge then
    fail(name, "finite number > 0", v)
  end
  return v
end

local function check_path(name, v)
  if type(v) ~= "string" or v == "" then fail(name, "non-empty path string", v) end
  if v:find("%z") then
    raise(string_format("slashid: bad option '%s' (NUL byte in path)", name))
  end
  return v
end

-- Dotted-quad 127.x.y.z, every part decimal without leading zeros
-- (libcurl reads "0127" as octal, so such spellings are refused).
local function is_loopback_v4(host)
  local parts = { host:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$") }
  if #parts ~= 4 then return false end
  for i = 1, 4 do
    local p = parts[i]
    if #p > 1 and p:sub(1, 1) == "0" then return false end
    if tonumber(p) > 255 then return false end
  end
  return parts[1] == "127"
end

local function is_loopback(host)
  host = host:lower()
  return host == "localhost" or host == "::1" or host == "0:0:0:0:0:0:0:1"
      or is_loopback_v4(host)
end

-- The host of a URL's authority ("host", "host:port", "[v6]:port"),
-- checking the port; raises through bad(no_host or bad_port).
local function host_of(authority, bad, no_host, bad_port)
  local host, port
  if authority:sub(1, 1) == "[" then
    host, port = authority:match("^%[([^%]]+)%](.*)$")
  else
    host, port = authority:match("^([^:]*)(.*)$")
  end
  if not host or host == "" then bad(no_host) end
  if port ~= "" then
    local digits = port:match("^:(%d+)$")
    if not digits or tonumber(digits) < 1 or tonumber(digits) > 65535 then
      bad(bad_port)
    end
  end
  return host
end

-- Returns the base URL without trailing slashes, or raises.
local base_url_ok = {}    -- accepted URL -> normalized form (a small memo)
local base_url_memo_size = 0

local function check_base_url_uncached(name, v)
  if type(v) ~= "string" or v == "" then fail(name, "https:// URL string", v) end
  local function bad(why)
    raise(string_format("slashid: bad option '%s' (%s)", name, why))
  end
  if v:find("[%c%s\127]") then bad("spaces and control characters are not allowed") end
  local scheme, rest = v:match("^(%a[%w+.-]*)://(.*)$")
  if not scheme then bad("an absolute https:// URL is required") end
  scheme = scheme:lower()
  local authority = rest:match("^[^/?#]*")
  local path = rest:sub(#authority + 1)
  if authority:find("@", 1, true) then bad("user information in the URL is not allowed") end
  if path:find("[?#]") then bad("a query or fragment is not allowed") end
  local host = host_of(authority, bad, "the URL has no host", "bad port")
  if scheme == "http" then
    if not is_loopback(host) then
      bad("https:// is required; http:// is only allowed for loopback hosts (127.0.0.0/8, ::1, localhost)")
    end
  elseif scheme ~= "https" then
    bad("https:// URL expected")
  end
  return (v:gsub("/+$", ""))
end

-- Module-level calls pass the same base URL every time: remember the few
-- accepted ones instead of parsing them again.
local function check_base_url(name, v)
  local known = type(v) == "string" and base_url_ok[v]
  if known then return known end
  local normalized = check_base_url_uncached(name, v)
  if base_url_memo_size >= 32 then base_url_ok, base_url_memo_size = {}, 0 end
  base_url_ok[v], base_url_memo_size = normalized, base_url_memo_size + 1
  return normalized
end

-- A proxy URL (its credentials are secrets: never quoted), or false for
-- no proxy at all.
local PROXY_SCHEMES = { http = true, https = true, socks5h = true }
local function check_proxy(name, v)
  if v == false then return false end
  if type(v) ~= "string" or v == "" then fail(name, "proxy URL string or false", v) end
  local function bad(why)
    raise(string_format("slashid: bad option '%s' (%s)", name, why))
  end
  if v:find("[%c%s\127]") then bad("spaces and control characters are not allowed") end
  local scheme, rest = v:match("^(%a[%w+.-]*)://(.*)$")
  if not scheme or not PROXY_SCHEMES[scheme:lower()] then
    bad("http://, https:// or socks5h:// proxy URL expected")
  end
  local authority = rest:match("^[^/?#]*")
  host_of(authority:match("@([^@]*)$") or authority, bad,
          "the proxy URL has no host", "bad proxy port")
  return v
end

local function check_enum(...)
  local allowed, list = {}, table.concat({...}, " or ")
  for _, value in ipairs({...}) do allowed[value] = true end
  return function(name, v)
    if type(v) ~= "string" or not allowed[v] then
      -- the two allowed values are public; anything else is not echoed
      fail(name, list, v)
    end
    return v
  end
end

local function check_type(expected)
  return function(name, v)
    if type(v) ~= expected then fail(name, expected, v) end
    return v
  end
end

local function check_user_agent(name, v)
  if type(v) ~= "string" then fail(name, "string", v) end
  if v:find("[%c\127]") then
    raise(string_format("slashid: bad option '%s' (control characters are not allowed)", name))
  end
  return v
end

-- Every option of rotate_key: name -> checker(name, value) -> value.
M.CHECKS = {
  org_id = check_text,
  api_key = check_text,
  consistency = check_enum("local_region", "all_regions"),
  timeout = check_int(1, 120),
  base_url = check_base_url,
  connect_timeout = check_positive,
  request_timeout = check_positive,
  ca_file = check_path,
  retries = check_int(0),
  retry_delay = check_positive,
  retry_max_delay = check_positive,
  max_response_bytes = check_int(1),
  proxy = check_proxy,
  save_to = check_path,
  verify = check_type("boolean"),
  user_agent = check_user_agent,
  debug = check_type("function"),
}

-- The options of rotate_keys that are not per-item options.
M.BATCH_CHECKS = {
  concurrency = check_int(1),
  rate = check_positive,
  on_progress = check_type("function"),
  on_result = check_type("function"),
  keep_results = check_type("boolean"),
}

-- The options of check_key: those that concern a request.
M.REQUEST_OPTIONS = {
  org_id = true, api_key = true, base_url = true, connect_timeout = true,
  request_timeout = true, ca_file = true, retries = true, retry_delay = true,
  retry_max_delay = true, max_response_bytes = true, user_agent = true,
  debug = true, proxy = true,
}

-- Edit distance (insertions, deletions, substitutions), for short names.
local function distance(a, b)
  local prev = {}
  for j = 0, #b do prev[j] = j end
  for i = 1, #a do
    local cur = { [0] = i }
    for j = 1, #b do
      local cost = a:byte(i) == b:byte(j) and 0 or 1
      cur[j] = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
    end
    prev = cur
  end
  return prev[#b]
end

-- The nearest real option name, for a "did you mean" hint: the closest
-- by edit distance among near misses and containments, ties broken by
-- name so that the message is the same every time.
local function nearest(k)
  local lower, best, best_d = k:lower(), nil, math.huge
  for _, names in ipairs({ M.CHECKS, M.BATCH_CHECKS }) do
    for name in pairs(names) do
      local d = distance(lower, name)
      if (d <= 2 or name:find(lower, 1, true) or lower:find(name, 1, true)) and
         (d < best_d or (d == best_d and name < best)) then
        best, best_d = name, d
      end
    end
  end
  return best
end

-- Whether `k` could be (part of) one of the keys in play.
local function related(k, secrets)
  for i = 1, #secrets do
    local key = secrets[i]
    if type(key) == "string" and #key > 0 and
       (key:find(k, 1, true) or (#key >= 8 and k:find(key, 1, true))) then
      return true
    end
  end
  return false
end

-- An unknown option's name is quoted (it names the mistake) unless it
-- could be a key: too long or not identifier-like, or related to a key in
-- play: this table's api_key (even an invalid one), the client's or the
-- batch's default key, SLASHID_API_KEY. A key used as a table key by
-- mistake, whichever table held it, never ends up in a message.
local function show_name(k, options, secrets)
  if type(k) ~= "string" then return "[" .. describe(k) .. "]" end
  local in_play = {}
  local proxy = rawget(options, "proxy")
  for _, key in ipairs({ rawget(options, "api_key") or false,
                         os.getenv("SLASHID_API_KEY") or false,
                         type(proxy) == "string" and proxy or false }) do
    if key then in_play[#in_play + 1] = key end
  end
  for i = 1, #(secrets or {}) do in_play[#in_play + 1] = secrets[i] end
  if #k > 24 or not k:find("^[%a_][%w_]*$") or related(k, in_play) then
    return "(a name that is not an option, not shown)"
  end
  return k
end

local function check_delays(delay, max_delay)
  if delay and max_delay and max_delay < delay then
    raise(string_format("slashid: bad option 'retry_max_delay' (number >= retry_delay (%s) expected, got %s)",
                        describe(delay), describe(max_delay)))
  end
end

-- Checks a caller's table against `allowed` (a set of names, default all
-- of CHECKS) and returns a plain copy. Reads with next/rawget only, so a
-- metatable on the caller's table is never triggered.
-- `secrets`: keys in play besides the table's own (a client's default
-- key), never to be quoted.
function M.check(options, allowed, what, secrets)
  if options == nil then return {} end
  if type(options) ~= "table" then
    raise(string_format("slashid: %s must be a table, got %s", what or "options", describe(options)))
  end
  local copy = {}
  local k = next(options)
  while k ~= nil do
    local check = type(k) == "string" and M.CHECKS[k]
    if not check or (allowed and not allowed[k]) then
      local shown = show_name(k, options, secrets)
      local near = shown == k and nearest(k)
      raise(string_format("slashid: unknown option '%s'%s", shown,
                          near and near ~= k and (" (did you mean '" .. near .. "'?)") or ""))
    end
    copy[k] = check(k, rawget(options, k))
    k = next(options, k)
  end
  check_delays(copy.retry_delay, copy.retry_max_delay)
  return copy
end

-- rotate_keys' options: the batch's own (concurrency, rate, on_progress,
-- on_result, keep_results)
-- and shared per-item defaults (checked like rotate_key's).
function M.check_batch(opts, secrets)
  if opts == nil then return {}, {} end
  if type(opts) ~= "table" then
    raise(string_format("slashid: options must be a table, got %s", describe(opts)))
  end
  local batch, shared = {}, {}
  local k = next(opts)
  while k ~= nil do
    local check = type(k) == "string" and M.BATCH_CHECKS[k]
    if check then batch[k] = check(k, rawget(opts, k)) else shared[k] = rawget(opts, k) end
    k = next(opts, k)
  end
  return batch, M.check(shared, nil, nil, secrets)
end

-- Runs fn(...) and re-raises its `slashid: ` error with `where` after the
-- prefix ("slashid: item 3: bad option ...").
function M.locate(where, fn, ...)
  local ok, a, b = pcall(fn, ...)
  if ok then return a, b end
  if type(a) == "string" and a:sub(1, 9) == "slashid: " then
    raise("slashid: " .. where .. ": " .. a:sub(10))
  end
  error(a, 0)
end

-- Merges checked per-call options over checked defaults, fills in the
-- environment and defaults, and checks what only the whole can tell.
-- `keep` limits the result to a set of names (check_key).
function M.resolve(defaults, options, keep)
  local cfg = {}
  for k, v in next, defaults do
    if not keep or keep[k] then cfg[k] = v end
  end
  for k, v in next, options do cfg[k] = v end
  for name, var in next, ENV do
    if cfg[name] == nil then
      local value = os.getenv(var)
      if value ~= nil and value ~= "" then
        cfg[name] = M.CHECKS[name](name .. " (from " .. var .. ")", value)
      end
    end
  end
  if cfg.org_id == nil then
    raise("slashid: missing option 'org_id' (or set SLASHID_ORG_ID)")
  end
  if cfg.api_key == nil then
    raise("slashid: missing option 'api_key' (or set SLASHID_API_KEY)")
  end
  cfg.base_url = cfg.base_url or M.PRODUCTION
  if not keep then
    cfg.consistency = cfg.consistency or "local_region"
    cfg.timeout = cfg.timeout or 30
  end
  cfg.connect_timeout = cfg.connect_timeout or 10
  cfg.request_timeout = cfg.request_timeout or (cfg.timeout or 30) + 15
  cfg.retries = cfg.retries or 2
  cfg.retry_delay = cfg.retry_delay or 0.5
  if cfg.retry_max_delay == nil then
    cfg.retry_max_delay = cfg.retry_delay > 30 and cfg.retry_delay or 30
  else
    check_delays(cfg.retry_delay, cfg.retry_max_delay)
  end
  cfg.max_response_bytes = cfg.max_response_bytes or 1048576
  return cfg
end

return M
