#!/usr/bin/env lua
-- Writes docs/options.ld.lua, the LDoc page of every option of the module
-- slashid, from the rules in lua/slashid/options.lua (M.RULES): for each
-- rule its type (the rule's doc: the README's "type" column), its default
-- (the README's "default" column, as scripts/options-table.lua prints
-- it), the calls taking it, and what it means (MEANING below). So the
-- reference and README's options table say the same.
--   lua5.4 docs/make-options-ld.lua > docs/options.ld.lua    (regenerate)
--   lua5.4 docs/make-options-ld.lua --check docs/options.ld.lua
-- --check (run by `make doc`) fails when the file differs from what the
-- rules give, or when a rule and MEANING do not name the same options.
package.path = "lua/?.lua;" .. package.path
local options = require "slashid.options"

-- What each option means, beyond its type and default. A rule without an
-- entry here, or an entry without a rule, fails the generator.
local MEANING = {
  org_id = "The organization whose key is rotated (or checked), sent as " ..
    "the `SlashID-OrgID` header. Required: without it and its environment " ..
    "variable the call raises `slashid: missing option 'org_id' (or set SLASHID_ORG_ID)`.",
  api_key = "The organization's current key, sent as the `SlashID-API-Key` " ..
    "header. Required, like `org_id`. Never shown: not in a message, an " ..
    "`errors` entry, a `tostring` or the `debug` trace.",
  consistency = "Sent as `SlashID-Required-Consistency`: whether the new key " ..
    "must have reached the local region or all regions before SlashID answers.",
  timeout = "Sent as `SlashID-Required-Consistency-Timeout`. When the " ..
    "consistency level is not reached in time SlashID answers 408: outcome " ..
    "`unknown`, and the rotation may still complete later " ..
    "(@{README#after-an-unknown-outcome|README, After an unknown outcome}).",
  base_url = "Where requests go: `slashid.PRODUCTION`, `slashid.SANDBOX`, or " ..
    "a local emulator over loopback `http://`. Trailing slashes are dropped; " ..
    "user information, a query or a fragment are refused.",
  connect_timeout = "Limit on making the connection (TCP, proxy tunnel, TLS), " ..
    "per attempt. A connect timeout is `not_rotated` (no byte reached the " ..
    "server) and is retried.",
  request_timeout = "Limit on one attempt as a whole. Checked after one last " ..
    "look at the socket, never before: an answer that arrived meanwhile (the " ..
    "process stopped, an op nobody polled) is read, never thrown away. Past it " ..
    "the attempt ends as a timeout (curl code 28): `unknown` once the request " ..
    "was sent (@{README#outcomes|README, Outcomes}).",
  ca_file = "Replaces the system's CA store for TLS verification (always " ..
    "on), e.g. for a private CA.",
  retries = "Attempts after the first, made only after a failure where the " ..
    "server cannot have acted: a connection-phase failure other than a TLS " ..
    "or certificate error, or a 429. Never after an `unknown` outcome.",
  retry_delay = "Before attempt n + 1 the call waits a random time between 0 " ..
    "and `retry_delay * 2^(n-1)` (at most `retry_max_delay`), or what a 429's " ..
    "`Retry-After` says (seconds or an HTTP-date).",
  retry_max_delay = "A `Retry-After` longer than this is not waited for: the " ..
    "call returns `not_rotated` with the 429.",
  max_response_bytes = "An answer over the cap is not read further: outcome " ..
    "`unknown` (the server may have rotated).",
  proxy = "Not given: for an `https://` base URL the environment decides " ..
    "(`https_proxy`, `all_proxy`, `no_proxy`, as curl reads them); a loopback " ..
    "`http://` base URL never uses a proxy. A proxy unreachable or refusing " ..
    "the tunnel is `not_rotated`.",
  save_to = "A new file is mode 0600; an " ..
    "existing one keeps its owner, its group and their permission bits; a " ..
    "symbolic link is followed. A failure leaves the file as it was, sets " ..
    "`info.saved` to `false` and adds an `errors` entry: the key is still in " ..
    "`result.api_key`.",
  verify = "The new key is checked as @{check_key} would (same request " ..
    "options); `info.verified` tells. A refusal adds an `errors` entry, and " ..
    "the key is still returned.",
  user_agent = "The `User-Agent` header.",
  debug = "Receives the exchange line by line, credentials redacted " ..
    "(`SlashID-API-Key: <redacted>`, the new key hidden in the answer). " ..
    "Called only from within the library call that drives the exchange, " ..
    "under `pcall`: an error it raises stops the trace, nothing else.",
  concurrency = "One curl multi handle drives every item; connections are " ..
    "reused across items (HTTP/2 streams share one when the server offers it).",
  rate = "Without it, items start as fast as `concurrency` allows.",
  on_progress = "Called once per item as it finishes, after its `save_to` and " ..
    "`on_result`; `outcome` is the item's `info.outcome`, `total` is `nil` for " ..
    "an iterator. An error it raises is reported as `on_progress_error` on the " ..
    "value returned, and it is not called again; the batch goes on.",
  on_result = "`item` is the item's @{batch_item}, handed over once its " ..
    "`save_to` is written. An error it raises is reported as " ..
    "`on_result_error`: no more items start, those in flight finish; with " ..
    "`keep_results = false` the item comes back in `undelivered[index]`, so " ..
    "its key is not lost.",
  keep_results = "With `false` the call returns a @{batch_summary} and keeps " ..
    "nothing of the items that are over: memory stays flat for any number of " ..
    "organizations (hand the keys over in `on_result`).",
  journal = "The batch then writes ahead (rules 1 to 6 at @{rotate_keys}); " ..
    "read it back with @{read_journal}. A journal that cannot be created or " ..
    "written, that another process holds, or that already has records raises " ..
    "`slashid: journal: ...` before anything is sent.",
}

-- README sections the rules' docs point to ('see "Proxies" below').
local README_ANCHOR = {
  ["Proxies"] = "proxies",
  ["Key files"] = "key-files-save_to",
  ["Write-ahead journal"] = "a-batch-that-survives-a-crash-the-write-ahead-journal",
}

local failures = {}
local function fail(msg) failures[#failures + 1] = msg end

-- The README's wording, where it says "below", as a link to that section.
local function linked(text, name)
  return (text:gsub('see "([^"]+)" below', function(section)
    local anchor = README_ANCHOR[section]
    if not anchor then
      fail(("option %s: its doc names the README section %q: add it to README_ANCHOR"):format(
        name, section))
      return 'see "' .. section .. '" in the README'
    end
    return ("see @{README#%s|README, %s}"):format(anchor, section)
  end))
end

-- A default as README's table shows it (scripts/options-table.lua).
local function literal(v)
  if type(v) == "string" then return '`"' .. v .. '"`' end
  if type(v) == "number" then return "`" .. ("%.14g"):format(v) .. "`" end
  return "`" .. tostring(v) .. "`"
end
local function default_of(rule)
  if rule.shown then return rule.shown end
  if rule.env then return "env `" .. rule.env .. "`" end
  if rule.default ~= nil then return literal(rule.default) end
  return "none"
end

local CALLS = {
  request = "All calls, @{check_key} too.",
  rotate = "Rotating calls only (not @{check_key}).",
  batch = "@{rotate_keys} only.",
}

local out = {}
local function emit(s) out[#out + 1] = s end

-- The words of text; a reference @{...} or a code span `...` stays whole
-- (never cut across two lines).
local function words(text)
  local list, open = {}, nil
  for word in text:gmatch("%S+") do
    if open then
      list[#list] = list[#list] .. " " .. word
    else
      list[#list + 1] = word
    end
    local s = list[#list]
    local _, ticks = s:gsub("`", "")
    open = (s:find("@{", 1, true) and not s:find("}", 1, true)) or ticks % 2 == 1
  end
  return list
end

-- One "-- @field name text" entry, wrapped at 78 columns (a longer
-- reference or code span gets a line of its own).
local function field(name, text)
  local line = "-- @field " .. name
  for _, word in ipairs(words(text)) do
    if #line + 1 + #word > 78 and not line:match("^%-%- *$") then
      emit(line)
      line = "--   " .. word
    else
      line = line .. " " .. word
    end
  end
  emit(line)
end

local function ends(s) return s:find("[.!?]$") and s or s .. "." end

local function fields_of(kind)
  for _, rule in ipairs(options.RULES) do
    if (rule.calls == "batch") == (kind == "batch") then
      local meaning = MEANING[rule.name]
      if not meaning then
        fail("option " .. rule.name .. " has no entry in MEANING (docs/make-options-ld.lua)")
        meaning = ""
      end
      local parts = { ends(linked(rule.doc, rule.name)),
                      "Default: " .. ends(linked(default_of(rule), rule.name)) }
      if kind ~= "batch" then parts[#parts + 1] = CALLS[rule.calls] end
      parts[#parts + 1] = meaning
      field(rule.name, table.concat(parts, " "))
    end
  end
end

local known = {}
for _, rule in ipairs(options.RULES) do known[rule.name] = true end
for name in pairs(MEANING) do
  if not known[name] then fail("MEANING names " .. name .. ", which options.RULES does not have") end
end

emit("-- docs/options.ld.lua: no code, only LDoc comments: every option of the")
emit("-- module slashid (config.ld merges them into its page). GENERATED from")
emit("-- lua/slashid/options.lua's rules by docs/make-options-ld.lua; edit those and")
emit("-- run: lua5.4 docs/make-options-ld.lua > docs/options.ld.lua")
emit("-- (`make doc` fails while this file and the rules disagree).")
emit("")
emit("--- Options of the module slashid.")
emit("-- @module slashid")
emit("")
emit("--- Options.")
emit("-- Every call takes its options as one table, checked before any network")
emit("-- activity. An unknown name (with a \"did you mean\" hint), a wrong type, a")
emit("-- value out of range, a control character in `org_id` or `api_key`, or a")
emit("-- non-loopback `http://` URL raises `slashid: bad option '...' (...)` or")
emit("-- `slashid: unknown option '...'`; messages never quote a string value, so")
emit("-- a key passed by mistake is never shown. The same table, as README's")
emit("-- @{README#options|Options}.")
emit("-- @section Options")
emit("")
emit("--- The options of a call: @{rotate_key} and @{start_rotate_key}, the")
emit("-- defaults of a client (@{new}), each item of @{rotate_keys} and the")
emit("-- defaults its items share. @{check_key} and @{start_check_key} take those")
emit("-- that concern a request (\"All calls\"); other names raise there, while a")
emit("-- client's defaults that do not concern a check are ignored. Per-call")
emit("-- options override a client's defaults; an option left out comes from its")
emit("-- environment variable, then its default.")
emit("-- @table options")
fields_of("call")
emit("")
emit("--- The options of @{rotate_keys} itself (and `Client:rotate_keys`), beside")
emit("-- the @{options} its items share.")
emit("-- @table batch_options")
fields_of("batch")

local text = table.concat(out, "\n") .. "\n"

if arg[1] == "--check" then
  local path = arg[2] or "docs/options.ld.lua"
  local f = io.open(path, "rb")
  local have = f and f:read("*a")
  if f then f:close() end
  if have ~= text then
    fail(path .. " does not match lua/slashid/options.lua's rules: run " ..
         "lua5.4 docs/make-options-ld.lua > " .. path)
  end
else
  io.write(text)
end
if #failures > 0 then
  for _, msg in ipairs(failures) do io.stderr:write("make-options-ld: ", msg, "\n") end
  os.exit(1)
end
