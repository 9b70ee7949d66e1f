-- slashid: rotate a SlashID organization's API key.
--
-- This file is the public face; the C module `slashid.core` does the HTTP
-- work over libcurl. A call goes: options checked (options.lua) -> the
-- engine (job.lua) runs its attempts: request.lua builds the request,
-- the core sends it and turns the answer into tables, policy.lua says
-- whether another attempt is allowed (only when the server cannot have
-- acted) -> outcome.lua names the outcome, saves and verifies.

--- Rotate a SlashID organization's API key from Lua, without ever losing it.
--
-- `PUT /organizations/api-keys` replaces the organization's key: the old
-- key dies the moment SlashID issues the new one. So every call says
-- whether the key was rotated, not rotated, or might have been
-- (`info.outcome`, see @{slashid.Outcomes|Outcomes}), retries only where
-- the server cannot have acted, and can save the new key atomically
-- (`save_to`) before it returns.
--
-- Blocking calls: @{rotate_key}, @{check_key}. Clients keeping their
-- connection and adopting each new key: @{new}. Without blocking, for
-- hosts with their own loop: @{start_rotate_key}, @{start_check_key} (the
-- op: @{slashid.op}). Many organizations: @{rotate_keys}, with a
-- @{slashid.Write_ahead_journal|write-ahead journal} that survives a
-- crash. Every option: @{options}; what the calls return:
-- @{slashid.Return_values|Return values}. The command `slashid-rotate` is
-- @{slashid.cli}. The README says more: @{README#usage|Usage}.
-- @module slashid
-- @usage
-- local slashid = require "slashid"
-- local result, errors, pagination, info = slashid.rotate_key{
--   org_id = ORG, api_key = KEY, save_to = "/etc/myapp/slashid.key" }
-- if result then
--   store(result.api_key)           -- also already in save_to
-- elseif info.outcome == "unknown" then
--   -- the key may have been rotated: do NOT retry blindly (check_key)
-- else
--   print(tostring(errors))         -- not_rotated: safe to try later
-- end

-- The C core is loaded here, not at the first call: a missing or broken
-- core fails `require "slashid"` itself, with the loader's own message,
-- as LuaSocket and LuaSec do.
local core = require "slashid.core"
local options = require "slashid.options"
local job = require "slashid.job"
local request = require "slashid.request"
local outcome = require "slashid.outcome"

local setmetatable, type, next, tostring, error = setmetatable, type, next, tostring, error
local rawget, getenv = rawget, os.getenv

local slashid = {
  _VERSION = "0.1.0",
  PRODUCTION = "https://api.slashid.com",       -- options.lua's default too
  SANDBOX = "https://api.sandbox.slashid.com",
}

--- The module's version, `"0.1.0"` (also in the default `user_agent`).
-- @field _VERSION

--- The production base URL, `"https://api.slashid.com"`: the default
-- `base_url`.
-- @field PRODUCTION

--- The sandbox base URL, `"https://api.sandbox.slashid.com"`.
-- @field SANDBOX

-- The User-Agent sent when the user_agent option is not given.
local default_user_agent =
  "slashid-lua/" .. slashid._VERSION .. " libcurl/" .. core.curl_version
local function user_agent() return default_user_agent end


-- Blocking calls: the engine (job.lua) driven to the end on `handle`.
local function check(handle, cfg)
  return job.run(job.new(cfg, handle, "check", default_user_agent))
end

-- `req`: a request table kept for this cfg (clients, module-level calls
-- repeating themselves), or nil. `on_rotated(result)`: see job.new.
local function rotate(handle, cfg, req, on_rotated)
  return job.run(job.new(cfg, handle, "rotate", default_user_agent, on_rotated, req))
end

-- ---- module-level calls ------------------------------------------------

-- One kept handle for module-level calls, so that a script calling
-- rotate_key and then check_key reuses its connection. A call made while
-- it is in use (from a debug function) gets a handle of its own.
local shared_handle, shared_busy

-- Passes fn's values through unchanged (as many as it returned).
local function release_shared(ok, ...)
  shared_busy = false
  if not ok then error((...), 0) end
  return ...
end

local function with_shared_handle(fn, cfg)
  if shared_busy then return fn(core.handle(), cfg) end
  shared_handle = shared_handle or core.handle()
  shared_busy = true
  return release_shared(pcall(fn, shared_handle, cfg))
end

local EMPTY = {}

-- ---- work done once -----------------------------------------------------
-- A configuration resolved for rotate_key, with its request table, is
-- kept while nothing that went into it changes: the options (a client's
-- defaults; a module-level call's table, compared value by value) and
-- the environment variables it read. Then a call repeating the last one
-- skips checking, resolving and building, and the handle skips its setup
-- (it keeps the request it last set up: src/request.c).

-- The environment variables `cfg` depends on, given the options that were
-- set (`set`): SLASHID_* for each option left out, and the proxy
-- variables when libcurl reads them (https://, proxy unset). Flattened
-- name, value pairs.
local function env_read(set, cfg)
  local snap, n = {}, 0
  for name, var in next, options.ENV do
    if set[name] == nil then
      snap[n + 1], snap[n + 2], n = var, getenv(var) or false, n + 2
    end
  end
  if cfg.proxy == nil and cfg.base_url:sub(1, 8):lower() == "https://" then
    for _, var in ipairs(request.PROXY_ENV) do
      snap[n + 1], snap[n + 2], n = var, getenv(var) or false, n + 2
    end
  end
  return snap
end

local function env_unchanged(snap)
  for i = 1, #snap, 2 do
    if (getenv(snap[i]) or false) ~= snap[i + 1] then return false end
  end
  return true
end

-- Whether the caller's table holds exactly the options of `copy` (the
-- checked copy of an earlier call), read without metamethods.
local function same_options(opts, copy, n)
  local k, count = next(opts), 0
  while k ~= nil do
    if rawget(opts, k) ~= copy[k] then return false end
    count = count + 1
    k = next(opts, k)
  end
  return count == n
end

local function count(t)
  local n = 0
  for _ in next, t do n = n + 1 end
  return n
end

-- The last module-level rotate_key: its checked options, their number,
-- the resolved cfg, the request, the environment read.
local last_call

local function module_rotate_cfg(opts)
  local c = last_call
  local t = opts == nil and EMPTY or opts
  if c and type(t) == "table" and same_options(t, c.given, c.n) and
     env_unchanged(c.env) then
    return c.cfg, c.req
  end
  local given = options.check(opts)
  local cfg = options.resolve(EMPTY, given)
  local req = job.request(cfg, "rotate", default_user_agent)
  last_call = { given = given, n = count(given), cfg = cfg, req = req,
                env = env_read(given, cfg) }
  return cfg, req
end

--- Rotates the organization's API key: `PUT /organizations/api-keys`.
-- Blocks until SlashID answers (up to the consistency `timeout`, plus
-- retries). The old key is dead once SlashID issues the new one: read
-- `info.outcome` (@{slashid.Outcomes|Outcomes}) before anything else.
-- `save_to` is written and `verify` run before the call returns. Calls
-- one after another reuse one connection.
-- @tparam[opt] table opts @{options}; those left out come from the
--   environment (`SLASHID_ORG_ID`, `SLASHID_API_KEY`, `SLASHID_BASE_URL`,
--   `SLASHID_CA_FILE`), then their defaults
-- @treturn ?table @{result} (the new key is `result.api_key`), `nil` unless
--   rotated
-- @treturn table @{errors}, never empty when `result` is `nil`
-- @treturn ?table @{pagination}
-- @treturn table @{info}: `info.outcome` is `"rotated"`, `"not_rotated"`
--   or `"unknown"`
-- @raise `slashid: bad option ...`, `slashid: unknown option ...` or
--   `slashid: missing option ...`, before any network activity
-- @usage
-- local result, errors, _, info = slashid.rotate_key{
--   org_id = ORG, api_key = KEY, consistency = "all_regions", verify = true }
-- if info.outcome == "unknown" then
--   local ok = slashid.check_key{ org_id = ORG, api_key = KEY }  -- old key
-- end
function slashid.rotate_key(opts)
  local cfg, req = module_rotate_cfg(opts)
  if shared_busy then return rotate(core.handle(), cfg, req) end
  shared_handle = shared_handle or core.handle()
  shared_busy = true
  return release_shared(pcall(rotate, shared_handle, cfg, req))
end

-- check_key's options, checked and resolved over `defaults` (a client's,
-- or none); `secrets` are hidden from the messages.
local function check_cfg(defaults, opts, secrets)
  local keep = options.REQUEST_OPTIONS
  return options.resolve(defaults, options.check(opts, keep, nil, secrets), keep)
end

--- Asks whether a key is accepted, changing nothing:
-- `GET /organizations/config`. What `verify` does with a new key, and the
-- way to learn, after an `unknown` outcome, whether the old key still
-- works (@{slashid.Outcomes|Outcomes}).
-- @tparam[opt] table opts the @{options} that concern a request
--   (`org_id`, `api_key`, `base_url`, the timeouts and retries, `ca_file`,
--   `max_response_bytes`, `proxy`, `user_agent`, `debug`); any other
--   option raises
-- @treturn ?boolean `true`: accepted (2xx); `false`: refused (401 or
--   403); `nil`: cannot tell (network, 5xx, anything else)
-- @treturn table @{errors}, empty when `true`
-- @treturn table @{check_info}
-- @raise like @{rotate_key}, before any network activity
-- @usage
-- local ok, errors = slashid.check_key{ org_id = ORG, api_key = OLD_KEY }
-- if ok == nil then print("cannot tell: " .. tostring(errors)) end
function slashid.check_key(opts)
  return with_shared_handle(check, check_cfg(EMPTY, opts))
end

--- Starts @{rotate_key}'s request without blocking, for hosts with their
-- own loop (an OpenResty handler, a frame loop, an event loop). The same
-- options and the same rules; a retry's back-off is a deadline inside the
-- op, never a sleep; `save_to` is written and `verify` run before the op
-- reports finished. Each op has its own connection: any number can be
-- pending at once. See @{slashid.op} and
-- @{README#without-blocking-ops|README, Without blocking}.
-- @tparam[opt] table opts @{options}
-- @treturn slashid.op.Op the op: `op:poll()` (or `op:wait()`) until it
--   returns `true`, then `op:results()` gives @{rotate_key}'s four values
-- @raise like @{rotate_key}, before anything is sent
-- @usage
-- local op = slashid.start_rotate_key{ org_id = ORG, api_key = KEY, save_to = PATH }
-- while not op:poll() do
--   do_other_work()              -- or ngx.sleep(0.01), or the next frame
-- end
-- local result, errors, pagination, info = op:results()
function slashid.start_rotate_key(opts)
  local cfg = options.resolve(EMPTY, options.check(opts))
  return require("slashid.op").start(cfg, user_agent())
end

--- Starts @{check_key}'s request without blocking: the same op as
-- @{start_rotate_key}'s, whose `op:results()` gives `ok, errors,
-- check_info`. For hosts that must learn, after an `unknown` outcome,
-- whether the old key still works without stalling.
-- @tparam[opt] table opts the @{options} @{check_key} takes
-- @treturn slashid.op.Op the op
-- @raise like @{check_key}, before anything is sent
-- @usage
-- local op = slashid.start_check_key{ org_id = ORG, api_key = OLD_KEY }
-- op:wait(5)                     -- at most 5 s
-- if op:poll() then print(op:results()) else op:cancel() end
function slashid.start_check_key(opts)
  return require("slashid.op").start(check_cfg(EMPTY, opts), user_agent(), nil, "check")
end

-- A batch item checked (a plain copy); a problem raises `slashid: item N: ...`.
local function check_item(i, item, secrets)
  return options.locate("item " .. i, options.check, item, nil, nil, secrets)
end

local function resolve_item(i, merged, given)
  return options.locate("item " .. i, options.resolve, merged, given)
end

-- Both checked and resolved.
local function prepare_item(i, merged, item, secrets)
  return resolve_item(i, merged, check_item(i, item, secrets))
end

-- `list`: an array of option tables, checked whole before anything starts
-- (a bad item raises with its index, and no request has been sent), or an
-- iterator function called with no arguments each time an item is about
-- to start, returning one option table or nil at the end. An iterator's
-- item is checked as it is pulled: a bad one (a non-table included) does
-- not raise, which would abandon the requests in flight and their keys,
-- but becomes that item's outcome, not_rotated, its errors entry holding
-- the `slashid: item N: ...` message.
-- on_resolved(cfg) sees each item's resolved configuration before it
-- starts; on_rotated(cfg, result) runs the moment that item's key is known.
-- Two items of a batch writing the same save_to file would each report
-- their key saved while the second replaced the first: refused. Files are
-- compared by what they reach (core.key_file_identity: device and inode,
-- or the real directory), so "d/key", "d/./key" and a link to d agree.
local function same_save_to(saved_by, i, cfg)
  local path = cfg.save_to
  if path == nil then return nil end
  path = core.key_file_identity(path)
  local first = saved_by[path]
  if first then
    return ("slashid: item %d: save_to is item %d's save_to too (each item needs a file " ..
            "of its own, or the second key would replace the first)"):format(i, first)
  end
  saved_by[path] = i
  return nil
end

local function rotate_keys(defaults, list, opts, on_rotated, on_resolved, hooks)
  local kind = type(list)
  if kind ~= "table" and kind ~= "function" then
    error("slashid: rotate_keys expects a list of option tables or an iterator function, got " ..
          kind, 0)
  end
  -- Every key in play, so that none is ever quoted as an option name (an
  -- iterator's items are known one at a time: each table's own key counts
  -- for it, see options.check).
  local secrets = { defaults.api_key }
  if type(opts) == "table" then secrets[#secrets + 1] = rawget(opts, "api_key") end
  local n = 0
  if kind == "table" then
    while rawget(list, n + 1) ~= nil do
      n = n + 1
      local item = rawget(list, n)
      if type(item) == "table" then secrets[#secrets + 1] = rawget(item, "api_key") end
    end
  end
  local own, shared = options.check_batch(opts, secrets)
  -- The batch's defaults are taken once, as it starts, for every item.
  local merged = {}
  for k, v in next, defaults do merged[k] = v end
  for k, v in next, shared do merged[k] = v end
  local pull
  if kind == "table" then
    -- (n above is the raw length: a list's __len is the caller's code and
    -- may raise.) All or nothing: every item is checked and resolved
    -- before the first starts. What waits for its start is the resolved
    -- configuration, or with keep_results = false the checked copy (a
    -- fraction of the size), resolved again as it starts.
    local lean = own.keep_results == false
    local waiting, saved_by = {}, {}
    for i = 1, n do
      local given = check_item(i, rawget(list, i), secrets)
      local cfg = resolve_item(i, merged, given)
      local clash = same_save_to(saved_by, i, cfg)
      if clash then error(clash, 0) end
      waiting[i] = lean and given or cfg
    end
    pull = function(i)
      local cfg = waiting[i]
      if cfg == nil then return nil end
      waiting[i] = nil
      if lean then
        -- (cannot fail: it was resolved once above; guarded all the same:
        -- a raise here would end the batch, a bad item only this item)
        local ok
        ok, cfg = pcall(resolve_item, i, merged, cfg)
        if not ok then
          return false, type(cfg) == "string" and cfg or ("slashid: item " .. i .. ": bad item")
        end
      end
      if on_resolved then on_resolved(cfg) end
      return cfg
    end
  else
    n = nil
    local iterator = list
    local saved_by = {}
    pull = function(i)
      local item = iterator()          -- may raise: the batch stops pulling
      if item == nil then return nil end
      local ok, cfg = pcall(prepare_item, i, merged, item, secrets)
      if not ok then
        return false, type(cfg) == "string" and cfg or ("slashid: item " .. i .. ": bad item")
      end
      local clash = same_save_to(saved_by, i, cfg)
      if clash then return false, clash end
      if on_resolved then on_resolved(cfg) end
      return cfg
    end
  end
  -- The journal: opened (and locked) here when given as a path, and
  -- closed when the batch ends; a journal the caller opened
  -- (slashid.journal.open: the command, which adds its own records) is
  -- the caller's to close. One that cannot be opened fails the call
  -- before anything is sent.
  -- Everything the batch needs is made before a journal is opened: from
  -- the open on, the only step that can raise is the protected run, so the
  -- journal is always closed (a memory error included).
  local run = require("slashid.batch").run
  local settings = {
    concurrency = own.concurrency or options.BATCH_DEFAULTS.concurrency,
    rate = own.rate,
    on_progress = own.on_progress,
    on_result = own.on_result,
    keep_results = own.keep_results,
    user_agent = user_agent(),
    on_rotated = on_rotated,
    journal = own.journal,
    on_turn = hooks and hooks.on_turn,
    wait_limit = hooks and hooks.wait_limit,
  }
  local opened = type(own.journal) == "string"
  if opened then
    -- (the run record names the batch's base URL, else the first item's)
    local journal, why = require("slashid.journal").open(own.journal, "new",
                                                         { base_url = merged.base_url })
    if not journal then error("slashid: journal: " .. tostring(why), 0) end
    settings.journal = journal
  end
  local ok, ret = pcall(run, pull, n, settings)
  if opened then settings.journal:close() end
  if not ok then error(ret, 0) end
  return ret
end

--- Rotates many organizations at once, over one curl multi handle.
-- Each item follows @{rotate_key}'s outcome and retry rules; one failure
-- never stops the others. Each item's `save_to` is written, and
-- `on_result` and `on_progress` called, the moment its answer arrives, so
-- an interrupted batch loses no key already issued. Errors raised by the
-- caller's own iterator or callbacks never come out, because a raise
-- would throw the outcomes away, and with them issued keys: they are
-- reported on the value returned (@{batch_summary}); the iterator and the
-- callbacks cannot yield (a yield is that function's error). With the
-- `journal` option the batch writes ahead:
-- @{slashid.Write_ahead_journal|write-ahead journal}. See also
-- @{README#many-organizations-rotate_keys|README, Many organizations}.
-- @tparam table|function list an array of @{options} tables, one per
--   organization, all checked before anything is sent (a bad item raises
--   `slashid: item N: ...`, and so do two items writing the same `save_to`
--   file); or an iterator, called with no arguments only when an item is
--   about to start (never ahead), returning one options table, or `nil` at
--   the end (a bad item from it becomes that item's `not_rotated` outcome)
-- @tparam[opt] table opts the batch's own @{batch_options} (`concurrency`,
--   `rate`, `on_progress`, `on_result`, `keep_results`, `journal`), and
--   @{options} its items share
-- @treturn table an array of @{batch_item} in input order; with
--   `keep_results = false` a @{batch_summary}
-- @raise a bad option or item, or a journal that cannot be opened, before
--   anything is sent
-- @usage
-- local outcomes = slashid.rotate_keys({
--   { org_id = ORG1, api_key = KEY1, save_to = "keys/org1" },
--   { org_id = ORG2, api_key = KEY2, save_to = "keys/org2" },
-- }, { concurrency = 16, rate = 50 })
-- for i, o in ipairs(outcomes) do print(i, o.info.outcome) end
function slashid.rotate_keys(list, opts)
  return rotate_keys(EMPTY, list, opts)
end

-- The command's rotate_keys (slashid.cli): hooks.on_turn() runs once a
-- turn of the batch's loop (its store commands advance there) and
-- hooks.wait_limit() bounds the loop's sleep while they run.
function slashid._rotate_keys_hooked(list, opts, hooks)
  return rotate_keys(EMPTY, list, opts, nil, nil, hooks)
end

--- Reads a journal written by @{rotate_keys} (or by slashid-rotate): what
-- it says of each organization, after a crash or at any time. The record
-- format is slashid/journal.lua's
-- (@{slashid.Write_ahead_journal|write-ahead journal}).
-- @tparam string path the journal file
-- @treturn ?table entries: one @{journal_entry} per organization, in the
--   order first recorded; `nil` when the file cannot be read
-- @treturn number|string skipped: how many lines failed their checksum
--   (torn by a crash, damaged) and were skipped, never misread; or, when
--   `entries` is `nil`, the message saying why
-- @raise when `path` is not a non-empty string
-- @usage
-- local entries, skipped = assert(slashid.read_journal(PATH))
-- for _, e in ipairs(entries) do
--   if e.state == "rotated" and not e.delivered then store(e.org_id, e.api_key) end
-- end
function slashid.read_journal(path)
  if type(path) ~= "string" or path == "" then
    error("slashid: read_journal expects a path string, got " .. type(path), 0)
  end
  local entries, skipped = require("slashid.journal").read(path)
  return entries, skipped
end

-- ---- clients -----------------------------------------------------------

-- Secrets live here, keyed weakly by client, never in the client table
-- itself: a table dumper or debugger walking the client finds no key.
local private = setmetatable({}, { __mode = "k" })

local Client = {}
local ClientMT = { __index = Client, __name = "slashid.Client" }

local function state_of(client, method)
  local st = private[client]
  if st == nil then
    error("slashid: bad self to " .. method .. " (a slashid client expected)", 0)
  end
  if st.handle == nil then
    error("slashid: client is closed", 0)
  end
  return st
end

--- Makes a client: defaults for its calls, and one connection kept across
-- them (keep-alive, TLS session). Whenever a call rotates the key the
-- client holds (it presented the client's own key for the client's own
-- organization at the client's own base URL, named explicitly or not),
-- the client adopts the new key for its later calls, so it never presents
-- a dead key. Keys are kept outside the client table; `tostring(client)`
-- shows no secret. On Lua 5.4, `local c <close> = slashid.new{...}`.
-- @tparam[opt] table defaults @{options} for every call of the client (a
--   call's own options override them)
-- @treturn Client the client
-- @raise a bad option, before any network activity
-- @usage
-- local client <close> = slashid.new{ org_id = ORG, api_key = KEY, verify = true }
-- local result, errors, _, info = client:rotate_key()   -- adopts the new key
-- local ok = client:check_key()                         -- true: the new key works
function slashid.new(defaults)
  local checked = options.check(defaults, nil, "defaults")
  local client = {}
  local address = tostring(client):match("0x%x+") or tostring(client):match("%x+$")
  private[client] = { defaults = checked, handle = core.handle(), address = address }
  return setmetatable(client, ClientMT)
end

-- Whether a call with this resolved configuration presents the client's
-- own key for the client's own organization (named explicitly or not):
-- if it rotates, the key the client holds is dead.
-- A base URL as compared for adoption, spelled one way for one place
-- (libcurl reaches the same server for each spelling): scheme and host in
-- lower case, an IPv6 literal written out in full, the port without
-- leading zeros and left out when it is the scheme's default, the path
-- without dot segments (RFC 3986, 5.2.4) and trailing slashes. Spellings
-- that are not one place for certain (localhost and 127.0.0.1) stay apart:
-- then the client keeps its key, and the caller has the new one in
-- `result`.
local DEFAULT_PORT = { http = "80", https = "443" }

local function ipv6_key(addr)
  local head, tail = addr:match("^(.-)::(.*)$")
  local groups = {}
  local function add(part)
    for g in part:gmatch("[^:]+") do
      if not g:find("^%x%x?%x?%x?$") then return false end
      groups[#groups + 1] = ("%x"):format(tonumber(g, 16))
    end
    return true
  end
  if head then
    local left, right = {}, nil
    if not add(head) then return nil end
    left, groups = groups, {}
    if not add(tail) then return nil end
    right = groups
    if #left + #right > 7 then return nil end
    groups = left
    for _ = 1, 8 - #left - #right do groups[#groups + 1] = "0" end
    for _, g in ipairs(right) do groups[#groups + 1] = g end
  elseif not add(addr) then
    return nil
  end
  return #groups == 8 and table.concat(groups, ":") or nil
end

-- The path libcurl sends for a base URL's path: the rotation's path
-- appended (options keep a base URL without trailing slashes), then dot
-- segments removed as RFC 3986 (5.2.4) says, empty segments kept ("/x//.."
-- is "/x/", not "/").
local function path_key(path)
  local out = {}
  path = path:gsub("/+$", "") .. "/organizations/api-keys"
  local at = 2
  while at <= #path + 1 do
    local slash = path:find("/", at, true) or #path + 1
    local segment = path:sub(at, slash - 1)
    if segment == ".." then
      if #out > 0 then out[#out] = nil end
    elseif segment ~= "." then
      out[#out + 1] = segment
    end
    at = slash + 1
  end
  return "/" .. table.concat(out, "/")
end

local function url_key_uncached(url)
  local scheme, authority, path = url:match("^([%a][%w+.-]*)://([^/]*)(.*)$")
  if not scheme then return url end
  scheme, authority = scheme:lower(), authority:lower()
  local host, port = authority:match("^(%b[])(.*)$")
  if host then
    host = "[" .. (ipv6_key(host:sub(2, -2)) or host:sub(2, -2)) .. "]"
  else
    host, port = authority:match("^([^:]*)(.*)$")
  end
  port = port:match("^:0*(%d+)$") or port:match("^:$") and "" or port
  if port == "" or port == DEFAULT_PORT[scheme] then port = "" else port = ":" .. port end
  return scheme .. "://" .. host .. port .. path_key(path)
end

-- A client compares its base URL with each call's: the few URLs seen
-- are remembered spelled one way, not parsed again on every call.
local url_keys, url_keys_size = {}, 0
local function url_key(url)
  local known = url_keys[url]
  if known then return known end
  known = url_key_uncached(url)
  if url_keys_size >= 32 then url_keys, url_keys_size = {}, 0 end
  url_keys[url], url_keys_size = known, url_keys_size + 1
  return known
end

local function holds(st, cfg)
  local d = st.defaults
  local own_org = d.org_id or os.getenv("SLASHID_ORG_ID")
  local own_url = d.base_url or os.getenv("SLASHID_BASE_URL")
  if own_url == nil or own_url == "" then own_url = slashid.PRODUCTION end
  -- A key belongs to one organization: a client holding a key but no
  -- organization holds it for whichever organization the call names. And
  -- to one deployment: a call sent elsewhere (the sandbox) rotated
  -- another key, whatever its text.
  return cfg.api_key == (d.api_key or os.getenv("SLASHID_API_KEY")) and
         (own_org == nil or own_org == "" or cfg.org_id == own_org) and
         url_key(cfg.base_url) == url_key(own_url)
end

-- The client's key was just replaced: adopt the new one so that later
-- calls never present a dead key.
-- Only what depends on the key changes when the organization stays the
-- same: the kept configuration (see "work done once") and its request
-- take the new key in place, and the handle, when that request is the one
-- set up on it, swaps its key header and nothing else (handle:rekey, src/
-- request.c): the next call sends at once. The swap is all or nothing
-- and comes first; the assignments after it replace existing fields,
-- which never allocates, so a memory error leaves the client holding the
-- old key everywhere or the new one everywhere. Otherwise (the first
-- adoption of a key or organization taken from the environment, a handle
-- busy or out of memory) the kept configuration is resolved again.
local function adopt(st, cfg, result)
  local handle = st.handle
  if not handle then return end
  local key, d, org = result.api_key, st.defaults, cfg.org_id
  if d.org_id == org then
    if d.api_key == key then return end
    local k = st.kept
    -- (rekey refuses, nil, a key outside printable ASCII: see below)
    if k and d.api_key ~= nil and handle:rekey(k.req, key) ~= nil then
      d.api_key, k.cfg.api_key, k.req.api_key = key, key, key
      return
    end
  end
  -- a key holding a control character would go out as a header of its own
  -- (CR LF): it is returned to the caller, never adopted
  if not outcome.printable(key) then return end
  d.api_key = key
  d.org_id = org
  st.kept = nil          -- resolved from the old key: resolve again
end

-- What adopts a new key for a call resolved to `cfg`, when the call uses
-- the client's own key (nil otherwise).
local function adopter(st, cfg)
  if not holds(st, cfg) then return nil end
  return function(result) adopt(st, cfg, result) end
end

-- rotate_key without options: the configuration kept from the last such
-- call (see "work done once"), or resolved afresh.
local function client_rotate_cfg(st)
  local k = st.kept
  if k and env_unchanged(k.env) then return k.cfg, k.req, k.on_rotated end
  local cfg = options.resolve(st.defaults, EMPTY)
  k = { cfg = cfg, req = job.request(cfg, "rotate", default_user_agent),
        on_rotated = adopter(st, cfg), env = env_read(st.defaults, cfg) }
  st.kept = k
  return k.cfg, k.req, k.on_rotated
end

--- A client, made by @{new}. Its calls take the same options as the
-- module's (overriding the client's defaults) and return the same values;
-- they use the client's kept connection. After @{Client:close} they
-- raise `slashid: client is closed`.
-- @type Client

--- @{rotate_key} with the client's defaults and connection; adopts the new
-- key when the call rotated the client's own. Without options, the
-- configuration resolved for the first such call is kept while the
-- environment it read is unchanged; adopting a new key changes its key
-- alone.
-- @tparam[opt] table opts @{options} over the client's defaults
-- @treturn ?table @{result}
-- @treturn table @{errors}
-- @treturn ?table @{pagination}
-- @treturn table @{info}
-- @usage local result, errors, _, info = client:rotate_key()
function Client:rotate_key(opts)
  local st = state_of(self, "rotate_key")
  local cfg, req, on_rotated
  if opts == nil then
    cfg, req, on_rotated = client_rotate_cfg(st)
  else
    local given = options.check(opts, nil, nil, { st.defaults.api_key })
    cfg = options.resolve(st.defaults, given)
    on_rotated = adopter(st, cfg)
  end
  -- (not a tail call: the client stays referenced while its handle works,
  -- so `slashid.new(o):rotate_key()` cannot collect and close it mid-call)
  local result, errors, pagination, info = rotate(st.handle, cfg, req, on_rotated)
  return result, errors, pagination, info
end

--- @{start_rotate_key} with the client's defaults (the op has a connection
-- of its own); the client adopts the new key when the op rotated the
-- client's own.
-- @tparam[opt] table opts @{options} over the client's defaults
-- @treturn slashid.op.Op the op
function Client:start_rotate_key(opts)
  local st = state_of(self, "start_rotate_key")
  local given = options.check(opts, nil, nil, { st.defaults.api_key })
  local cfg = options.resolve(st.defaults, given)
  return require("slashid.op").start(cfg, user_agent(), adopter(st, cfg))
end

--- @{rotate_keys} with the client's defaults under every item, on
-- connections of its own; an item that rotates the client's own key makes
-- the client adopt it.
-- @tparam table|function list as for @{rotate_keys}
-- @tparam[opt] table opts @{batch_options} and shared @{options}
-- @treturn table an array of @{batch_item}, or a @{batch_summary}
function Client:rotate_keys(list, opts)
  local st = state_of(self, "rotate_keys")
  -- per item, decided before it can rotate; weak, so that a long batch
  -- keeps nothing of the items that are over
  local own = setmetatable({}, { __mode = "k" })
  local ret = rotate_keys(st.defaults, list, opts, function(cfg, result)
    if own[cfg] then adopt(st, cfg, result) end
  end, function(cfg) own[cfg] = holds(st, cfg) or nil end)
  return ret   -- (not a tail call: see rotate_key)
end

local function client_check_cfg(st, opts)
  return check_cfg(st.defaults, opts, { st.defaults.api_key })
end

--- @{check_key} with the client's defaults and connection (its defaults
-- that do not concern a check are ignored).
-- @tparam[opt] table opts the @{options} @{check_key} takes
-- @treturn ?boolean `true` accepted, `false` refused, `nil` cannot tell
-- @treturn table @{errors}
-- @treturn table @{check_info}
-- @usage assert(client:check_key(), "the client's key is refused")
function Client:check_key(opts)
  local st = state_of(self, "check_key")
  local ok, errors, info = check(st.handle, client_check_cfg(st, opts))
  return ok, errors, info   -- (not a tail call: see rotate_key)
end

-- (The op has its own handle, like start_rotate_key's: the client's may
-- be in use by a blocking call meanwhile.)

--- @{start_check_key} with the client's defaults (the op has a connection
-- of its own).
-- @tparam[opt] table opts the @{options} @{check_key} takes
-- @treturn slashid.op.Op the op
function Client:start_check_key(opts)
  local st = state_of(self, "start_check_key")
  return require("slashid.op").start(client_check_cfg(st, opts), user_agent(), nil, "check")
end

--- Closes the client's connection and forgets its defaults and key;
-- its later calls raise. Safe to call twice; also what `<close>` (Lua
-- 5.4) and the garbage collector run. Ops it started live on.
function Client:close()
  local st = private[self]
  if st and st.handle then
    st.handle:close()
    st.handle = nil
    st.defaults = {}
    st.kept = nil
  end
end

ClientMT.__close = Client.close
ClientMT.__gc = Client.close
ClientMT.__tostring = function(self)
  local st = private[self]
  return "slashid.Client: " .. (st and st.address or "?") ..
         ((st and st.handle) and "" or " (closed)")
end

-- Guard against callers storing fields on a client by mistake (a key in
-- a client field would defeat the private table).
ClientMT.__newindex = function()
  error("slashid: clients have no settable fields (pass options to slashid.new)", 0)
end

slashid.Client = Client
return slashid
