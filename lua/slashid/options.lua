-- slashid.options: what callers may pass, checked before any network
-- activity. Programmer mistakes raise `slashid: ...` errors that name the
-- option and never quote a string value (it could be a key).

local M = {}

local floor, huge = math.floor, math.huge
local type, next, rawget, tostring, error = type, next, rawget, tostring, error
local string_format = string.format

M.PRODUCTION = "https://api.slashid.com"
M.SANDBOX = "https://api.sandbox.slashid.com"

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

-- What the base URL and proxy checks share: a string of printable
-- characters spelling SCHEME://AUTHORITY..., split. Returns the scheme in
-- lower case (nil if there is none), the authority, the rest, and the
-- function that raises the option's error.
local function split_url(name, v, expected)
  if type(v) ~= "string" or v == "" then fail(name, expected, v) end
  local function bad(why)
    raise(string_format("slashid: bad option '%s' (%s)", name, why))
  end
  if v:find("[%c%s\127]") then bad("spaces and control characters are not allowed") end
  local scheme, rest = v:match("^(%a[%w+.-]*)://(.*)$")
  if not scheme then return nil, nil, nil, bad end
  local authority = rest:match("^[^/?#]*")
  return scheme:lower(), authority, rest:sub(#authority + 1), bad
end

-- Returns the base URL without trailing slashes, or raises.
local base_url_ok = {}    -- accepted URL -> normalized form (a small memo)
local base_url_memo_size = 0

local function check_base_url_uncached(name, v)
  local scheme, authority, path, bad = split_url(name, v, "https:// URL string")
  if not scheme then bad("an absolute https:// URL is required") end
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
  local scheme, authority, _, bad = split_url(name, v, "proxy URL string or false")
  if not PROXY_SCHEMES[scheme or ""] then
    bad("http://, https:// or socks5h:// proxy URL expected")
  end
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

-- ---- the rules: one row per option ------------------------------------------
--
-- Everything else in this file (CHECKS, BATCH_CHECKS, REQUEST_OPTIONS, the
-- environment, resolve's defaults) and the README's options table
-- (scripts/options-table.lua) is derived from these rows, once, at load.
--   name     the option
--   kind     text | enum (values) | integer (min, max: max optional) |
--            positive (finite number > 0) | url | proxy | path | string
--            (no control characters) | boolean | function
--   default  the value resolve fills in; derive(cfg): a default computed
--            from the other options (the rows it reads come first)
--   env      the environment variable read when the option is not given
--   required resolve raises when it is still missing
--   calls    "request": rotate_key, check_key (REQUEST_OPTIONS) and the
--            rest; "rotate": not check_key; "batch": rotate_keys' own
--   doc      the README's "type" column; shown: its "default" column
--            when the default is not a plain value
local TIMEOUT   -- timeout's default, for request_timeout's
local unpack = table.unpack or unpack

M.RULES = {
  { name = "org_id", kind = "text", env = "SLASHID_ORG_ID", required = true,
    calls = "request", doc = "non-empty string" },
  { name = "api_key", kind = "text", env = "SLASHID_API_KEY", required = true,
    calls = "request", doc = "non-empty string" },
  { name = "consistency", kind = "enum", values = { "local_region", "all_regions" },
    default = "local_region", calls = "rotate",
    doc = '`"local_region"` or `"all_regions"`' },
  { name = "timeout", kind = "integer", min = 1, max = 120, default = 30, calls = "rotate",
    doc = "integer 1..120, consistency timeout in seconds (`60.0` counts)" },
  { name = "base_url", kind = "url", env = "SLASHID_BASE_URL", default = M.PRODUCTION,
    calls = "request", doc = "`https://` URL; `http://` only for 127.0.0.0/8, `::1`, `localhost`",
    shown = "env `SLASHID_BASE_URL`, else `slashid.PRODUCTION`" },
  { name = "connect_timeout", kind = "positive", default = 10, calls = "request",
    doc = "number > 0, seconds" },
  { name = "request_timeout", kind = "positive", calls = "request",
    derive = function(cfg) return (cfg.timeout or TIMEOUT) + 15 end, shown = "`timeout + 15`",
    doc = "number > 0, seconds, whole transfer" },
  { name = "ca_file", kind = "path", env = "SLASHID_CA_FILE", calls = "request",
    shown = "env `SLASHID_CA_FILE`, else the system store",
    doc = "path of a PEM CA bundle" },
  { name = "retries", kind = "integer", min = 0, default = 2, calls = "request",
    doc = "integer >= 0: extra attempts, only where the server cannot have acted" },
  { name = "retry_delay", kind = "positive", default = 0.5, calls = "request",
    doc = "number > 0: base of exponential backoff with full jitter" },
  { name = "retry_max_delay", kind = "positive", calls = "request",
    derive = function(cfg)
      local delay = cfg.retry_delay
      return delay > 30 and delay or 30
    end, shown = "`max(30, retry_delay)`",
    doc = "number >= `retry_delay`: cap of one wait; a larger `Retry-After` ends the retries" },
  { name = "max_response_bytes", kind = "integer", min = 1, default = 1048576, calls = "request",
    doc = "integer > 0: cap on the answer's **body** (headers have their own fixed cap of 64 KiB per attempt, every header block counted; over either cap the outcome is `unknown`)" },
  { name = "proxy", kind = "proxy", calls = "request", shown = 'see "Proxies" below',
    doc = "proxy URL (`http://`, `https://`, `socks5h://`; credentials in it are secrets), or `false`: no proxy at all" },
  { name = "save_to", kind = "path", calls = "rotate",
    doc = 'path: new key + newline, written atomically (same-directory temp file, fsync, rename, fsync of the directory) before the call returns; see "Key files" below' },
  { name = "verify", kind = "boolean", calls = "rotate", shown = "`false`",
    doc = "boolean: after rotating, check that the new key is accepted" },
  { name = "user_agent", kind = "string", calls = "request",
    shown = "`slashid-lua/<version> libcurl/<version>`", doc = "string" },
  { name = "debug", kind = "function", calls = "request",
    doc = "`function(line)`: a trace of the exchange, keys redacted" },
  -- rotate_keys' own options (its other options are per-item defaults)
  { name = "concurrency", kind = "integer", min = 1, default = 8, calls = "batch",
    doc = "integer >= 1: items in flight at once" },
  { name = "rate", kind = "positive", calls = "batch",
    doc = "number > 0: most item starts per second" },
  { name = "on_progress", kind = "function", calls = "batch",
    doc = "`function(done, total, index, outcome)`; returning `false` stops starting items" },
  { name = "on_result", kind = "function", calls = "batch",
    doc = "`function(index, item)`: each item's table as it finishes" },
  { name = "keep_results", kind = "boolean", calls = "batch", shown = "`true`",
    doc = "boolean: `false` collects nothing and returns a summary" },
  { name = "journal", kind = "journal", calls = "batch", shown = "none",
    doc = 'path of a new write-ahead journal (see "Write-ahead journal" below)' },
}

-- A row's checker, made once: checker(name, value) -> the value to keep.
local KINDS = {
  text = function() return check_text end,
  enum = function(rule) return check_enum(unpack(rule.values)) end,
  integer = function(rule) return check_int(rule.min, rule.max) end,
  positive = function() return check_positive end,
  url = function() return check_base_url end,
  proxy = function() return check_proxy end,
  path = function() return check_path end,
  string = function() return check_user_agent end,
  boolean = function() return check_type("boolean") end,
  ["function"] = function() return check_type("function") end,
  -- a path, or a journal the caller opened (slashid.journal.open)
  journal = function()
    return function(name, v)
      if type(v) == "table" and getmetatable(v) == require("slashid.journal").Journal then
        return v
      end
      return check_path(name, v)
    end
  end,
}

M.CHECKS = {}           -- every option of rotate_key: name -> checker
M.BATCH_CHECKS = {}     -- rotate_keys' own options (not per-item ones)
M.BATCH_DEFAULTS = {}   -- and their defaults
M.REQUEST_OPTIONS = {}  -- check_key's: those that concern a request (a set)
M.ENV = {}              -- option name -> its environment variable (slashid.lua keeps a
                        -- configuration resolved from them while they hold)

-- resolve's tables, in row order: environment variables, required options.
local ENV_NAME, ENV_VAR, ENV_LABEL, ENV_CHECK = {}, {}, {}, {}
local REQUIRED, MISSING = {}, {}

-- fill(cfg) sets each missing option of `rules` to its default, in row
-- order. Made once from the rows as straight-line code (one `if` per
-- option), so resolve costs what hand-written defaults would.
local function defaults_filler(rules)
  local src, values = { "local V = ...\nreturn function(cfg)\n" }, {}
  for i, rule in ipairs(rules) do
    local name = rule.name
    assert(name:find("^[%a_][%w_]*$"), "option names are identifiers")
    values[i] = rule.derive or rule.default
    src[#src + 1] = string_format("  if cfg.%s == nil then cfg.%s = V[%d]%s end\n",
                                  name, name, i, rule.derive and "(cfg)" or "")
  end
  src[#src + 1] = "end\n"
  local chunk = assert((loadstring or load)(table.concat(src), "=slashid.options defaults"))
  return chunk(values)
end

local NAMES = {}        -- every option name, for "did you mean"
local all_defaults, request_defaults = {}, {}
for _, rule in ipairs(M.RULES) do
  local name, check = rule.name, KINDS[rule.kind](rule)
  NAMES[#NAMES + 1] = name
  if rule.calls == "batch" then
    M.BATCH_CHECKS[name] = check
    M.BATCH_DEFAULTS[name] = rule.default
  else
    M.CHECKS[name] = check
    if rule.calls == "request" then M.REQUEST_OPTIONS[name] = true end
    if rule.env then
      local i = #ENV_NAME + 1
      ENV_NAME[i], ENV_VAR[i], ENV_CHECK[i] = name, rule.env, check
      ENV_LABEL[i] = name .. " (from " .. rule.env .. ")"
      M.ENV[name] = rule.env
    end
    if rule.required then
      REQUIRED[#REQUIRED + 1] = name
      MISSING[#MISSING + 1] = string_format("slashid: missing option '%s'%s", name,
        rule.env and " (or set " .. rule.env .. ")" or "")
    end
    if rule.default ~= nil or rule.derive then
      all_defaults[#all_defaults + 1] = rule
      if rule.calls == "request" then request_defaults[#request_defaults + 1] = rule end
    end
  end
  if name == "timeout" then TIMEOUT = rule.default end
end
table.sort(NAMES)
local fill_all_defaults = defaults_filler(all_defaults)
local fill_request_defaults = defaults_filler(request_defaults)

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
  for i = 1, #NAMES do
    local name = NAMES[i]
    local d = distance(lower, name)
    if (d <= 2 or name:find(lower, 1, true) or lower:find(name, 1, true)) and
       (d < best_d or (d == best_d and name < best)) then
      best, best_d = name, d
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
  for i = 1, #ENV_NAME do
    local name = ENV_NAME[i]
    if cfg[name] == nil then
      local value = os.getenv(ENV_VAR[i])
      if value ~= nil and value ~= "" then cfg[name] = ENV_CHECK[i](ENV_LABEL[i], value) end
    end
  end
  for i = 1, #REQUIRED do
    if cfg[REQUIRED[i]] == nil then raise(MISSING[i]) end
  end
  local given_max_delay = cfg.retry_max_delay ~= nil
  -- check_key's (keep) leave out rotate_key's own: consistency, timeout
  if keep then fill_request_defaults(cfg) else fill_all_defaults(cfg) end
  if given_max_delay then check_delays(cfg.retry_delay, cfg.retry_max_delay) end
  return cfg
end

return M
