-- slashid.cli.args: the command line. Flags are parsed by argparse (a
-- key is never accepted as a flag value: `ps` would show it), checked
-- against each other, and turned into the library's options; an error
-- here is a usage error (exit 64), raised as a UsageError.

local core = require "slashid.core"

local M = {}

local PROG = "slashid-rotate"

M.USAGE = [[
Usage:
  slashid-rotate --org-id ID [options]          rotate one organization's key
  slashid-rotate --orgs FILE [options]          rotate many organizations
  slashid-rotate --resume JOURNAL (--org-id ID | --orgs FILE) [options]
                                                finish an interrupted run
  slashid-rotate --check (--org-id ID | --orgs FILE) [options]
                                                does the key work? (no change)

The current key comes from the environment variable SLASHID_API_KEY or from
--api-key-file PATH (its first line; - reads standard input), never from a
flag value: other users could read it with `ps`. SLASHID_ORG_ID and
SLASHID_BASE_URL are read when --org-id and --base-url are not given.

Options:
  --org-id ID             the organization (default: $SLASHID_ORG_ID)
  --api-key-file PATH     read the current key from the first line of PATH
                          (- for standard input)
  --consistency C         local_region (default) or all_regions
  --timeout N             consistency timeout, integer seconds 1..120 (30)
  --base-url URL          API base URL (default: $SLASHID_BASE_URL, else
                          https://api.slashid.com)
  --sandbox               use https://api.sandbox.slashid.com
  --request-timeout S     limit for a whole request, seconds (timeout + 15)
  --ca-file PATH          PEM CA bundle instead of the system store
                          (default: $SLASHID_CA_FILE)
  --proxy URL             use this proxy (http://, https://, socks5h://)
  --no-proxy              use no proxy, whatever the environment says
  --save-to PATH          write the new key there (mode 0600, atomically)
  --store-cmd CMD         deliver each new key to CMD's standard input
                          (/bin/sh -c CMD, SLASHID_ORG_ID set; exit 0 counts
                          as delivered): a secret store
  --store-timeout S       kill a store command after S seconds (30)
  --verify                check that the new key is accepted afterwards
  --check                 only ask whether the current key is accepted:
                          exit 0 accepted, 1 refused, 2 cannot tell
  --json                  print a JSON object (one per line with --orgs):
                          org_id, outcome, status, errors, and api_key
                          unless --save-to or --store-cmd is given
  --journal PATH          the write-ahead journal (default: a new file in
                          $SLASHID_JOURNAL_DIR, else $XDG_STATE_HOME/
                          slashid-rotate, else ~/.local/state/slashid-rotate)
  --no-journal            keep no journal (a crash may then lose keys)
  --resume JOURNAL        finish the run JOURNAL records, in the same file
  --debug                 write the library's trace (keys redacted) to stderr
  --version               print the version and exit
  --help                  this text

Many organizations:
  --orgs FILE             one "ORG_ID<TAB>CURRENT_KEY" per line (- for
                          standard input); blank lines and lines starting
                          with # are skipped; read as the batch goes
  --concurrency N         requests in flight at once (8)
  --rate R                at most R request starts per second
  --shard K/N             only the lines whose organization hashes to K
                          (32-bit FNV-1a of the ID, modulo N)
  --save-to PATH          append "ORG_ID<TAB>NEW_KEY" lines to PATH (created
                          mode 0600; lines already there are never rewritten)
                          as each answer arrives

The journal: every rotating run first records in it each organization
it sends, then each new key, before the key goes anywhere else. It is
removed when every new key reached --save-to or --store-cmd and no outcome
is unknown; otherwise it is kept and its path printed (standard output is
never counted as a safe place). After a crash, --resume JOURNAL finishes
the run: keys recorded are delivered, requests whose answer never came
are checked.

Where a new key goes: --save-to and/or --store-cmd, else stdout, alone on
its line ("ORG_ID<TAB>NEW_KEY" with --orgs). A key that cannot be
delivered stays in the journal (exit 3).

Interruption: a first SIGINT or SIGTERM starts no more organizations, lets
the requests in flight finish and keeps their keys, then lists the
organizations never started; a second one abandons the requests in flight
and lists them as unknown.

Exit status: 0 rotated, 1 not rotated, 2 outcome unknown (the key may have
been rotated: run --resume, or the same command with --check, before trying
again), 3 rotated but saving, storing, printing or --verify failed (the key
is in the journal), 4 lost (--resume: the old key is refused and the new
key never arrived), 64 usage or argument error. With --orgs: 4 if any is
lost, else 2 if any is unknown, else 3 if any was not delivered, else 1 if
any was not rotated, else 0. See slashid-rotate(1).
]]

-- Raised for usage and argument errors; main turns it into exit 64.
M.UsageError = {}
local function usage_error(msg)
  error(setmetatable({ msg = msg }, M.UsageError), 0)
end
M.usage_error = usage_error

function M.is_interrupt(err)
  return type(err) == "string" and err:find(core.INTERRUPTED, 1, true) ~= nil
end

local KEY_FLAGS = { ["--api-key"] = true, ["--api_key"] = true, ["--key"] = true }
local VALUE_FLAGS = {
  "--org-id", "--api-key-file", "--consistency", "--timeout", "--base-url",
  "--request-timeout", "--ca-file", "--proxy", "--save-to", "--orgs",
  "--concurrency", "--rate", "--journal", "--resume", "--store-cmd",
  "--store-timeout", "--shard",
}
local BOOL_FLAGS = { "--sandbox", "--no-proxy", "--verify", "--json", "--check",
                     "--no-journal", "--debug", "--version" }
local KNOWN = {}
for _, f in ipairs(VALUE_FLAGS) do KNOWN[f] = true end
for _, f in ipairs(BOOL_FLAGS) do KNOWN[f] = true end

-- Library option name -> the flag that sets it, for error messages.
local FLAG_OF = {
  org_id = "--org-id", api_key = "SLASHID_API_KEY or --api-key-file",
  consistency = "--consistency", timeout = "--timeout", base_url = "--base-url",
  request_timeout = "--request-timeout", ca_file = "--ca-file", proxy = "--proxy",
  save_to = "--save-to", concurrency = "--concurrency", rate = "--rate",
}

local parser
local function get_parser()
  if parser then return parser end
  local ok, argparse = pcall(require, "argparse")
  if not ok then
    usage_error("the Lua module 'argparse' is missing: install it " ..
                "(Debian: apt-get install lua-argparse; LuaRocks: luarocks install argparse)")
  end
  parser = argparse(PROG):add_help(false)
  for _, f in ipairs(VALUE_FLAGS) do parser:option(f):overwrite(false) end
  for _, f in ipairs(BOOL_FLAGS) do parser:flag(f):overwrite(false) end
  return parser
end

-- argparse's messages quote what was typed: anything that is not one of
-- our flag names is shown as "(not shown)" (it could be a key).
local function scrub(msg)
  return (msg:gsub("'([^']*)'", function(tok)
    if KNOWN[tok] or (#tok <= 20 and tok:find("^%-%-?[%a][%w-]*$")) then return nil end
    return "'(not shown)'"
  end))
end

function M.parse(argv)
  local takes_value = {}
  for _, f in ipairs(VALUE_FLAGS) do takes_value[f] = true end
  local args, value_next = {}, false
  for i = 1, #argv do
    local a = tostring(argv[i])
    if a == "--" and not value_next then
      for k = i, #argv do args[#args + 1] = tostring(argv[k]) end
      break
    end
    if value_next and a:find("^%-[%d.]") then
      -- `--timeout -1`: argparse would take -1 for an option
      args[#args] = args[#args] .. "=" .. a
      value_next = false
    else
      if not value_next then
        local name = a:match("^(%-%-?[^=]+)")
        if KEY_FLAGS[name] then
          usage_error(name .. " is not accepted: a key given on the command line " ..
                      "can be read by other users (ps, /proc, shell history). " ..
                      "Set SLASHID_API_KEY or use --api-key-file PATH (- for standard input)")
        end
        if name == "--help" or name == "-h" then return { help = true } end
        if name == "--version" then return { version = true } end
      end
      args[#args + 1] = a
      value_next = not value_next and takes_value[a] or false
    end
  end
  local ok, result = get_parser():pparse(args)
  if not ok then usage_error(scrub(tostring(result))) end
  return result
end

function M.number_flag(o, field, flag)
  local v = o[field]
  if v == nil then return nil end
  local n = tonumber(v)
  if n == nil then usage_error(flag .. ": a number expected") end
  return n
end
local number_flag = M.number_flag

-- Names the flag behind a library option in a `slashid: ` message.
local function explain(msg)
  return (msg:gsub("option '([%w_]+)'", function(name)
    local flag = FLAG_OF[name]
    return flag and ("option '" .. name .. "' (" .. flag .. ")") or nil
  end))
end
M.explain = explain

-- A library call whose `slashid: ` errors are argument errors (exit 64).
function M.checked(fn, ...)
  local ok, a, b, c, d = pcall(fn, ...)
  if ok then return a, b, c, d end
  if type(a) == "string" and a:sub(1, 9) == "slashid: " and not M.is_interrupt(a) then
    usage_error(explain(a))
  end
  error(a, 0)
end

-- The library options every mode shares.
function M.library_options(o, check)
  local opts = {
    base_url = o.base_url,
    request_timeout = number_flag(o, "request_timeout", "--request-timeout"),
    ca_file = o.ca_file,
  }
  if o.sandbox then opts.base_url = require("slashid").SANDBOX end
  if o.proxy then opts.proxy = o.proxy elseif o.no_proxy then opts.proxy = false end
  if not check then
    opts.consistency = o.consistency
    opts.timeout = number_flag(o, "timeout", "--timeout")
    opts.verify = o.verify or nil
  end
  if o.debug then
    local say = require("slashid.cli.output").say
    opts.debug = function(line) say("debug: ", line) end
  end
  return opts
end

-- --shard K/N -> k, n (0 <= K < N)
function M.shard(o)
  if not o.shard then return nil end
  local k, n = o.shard:match("^(%d+)/(%d+)$")
  k, n = tonumber(k), tonumber(n)
  if not k or not n or n < 1 or k >= n or n > 4294967295 then
    usage_error("--shard: K/N expected, with 0 <= K < N (e.g. 0/4)")
  end
  return k, n
end

function M.check_combinations(o)
  local function refuse(a, b)
    if o[a[1]] and o[b[1]] ~= nil and o[b[1]] ~= false then
      usage_error(a[2] .. " and " .. b[2] .. " cannot be used together")
    end
  end
  refuse({ "orgs", "--orgs" }, { "org_id", "--org-id" })
  refuse({ "orgs", "--orgs" }, { "api_key_file", "--api-key-file (the keys are in the --orgs file)" })
  refuse({ "sandbox", "--sandbox" }, { "base_url", "--base-url" })
  refuse({ "no_proxy", "--no-proxy" }, { "proxy", "--proxy" })
  refuse({ "no_journal", "--no-journal" }, { "journal", "--journal" })
  refuse({ "resume", "--resume" }, { "journal", "--journal (--resume names the journal)" })
  refuse({ "resume", "--resume" }, { "no_journal", "--no-journal" })
  refuse({ "resume", "--resume" }, { "check", "--check" })
  if o.check then
    for _, f in ipairs({ { "save_to", "--save-to" }, { "verify", "--verify" },
                         { "consistency", "--consistency" }, { "timeout", "--timeout" },
                         { "store_cmd", "--store-cmd" }, { "store_timeout", "--store-timeout" },
                         { "journal", "--journal" }, { "no_journal", "--no-journal" } }) do
      if o[f[1]] then usage_error(f[2] .. " does not apply to --check (it changes nothing)") end
    end
  end
  if not o.orgs then
    for _, f in ipairs({ "concurrency", "rate", "shard" }) do
      if o[f] then usage_error("--" .. f .. " applies to --orgs only") end
    end
  end
  if o.store_timeout and not o.store_cmd then
    usage_error("--store-timeout applies to --store-cmd only")
  end
  if o.store_cmd ~= nil and (o.store_cmd == "" or o.store_cmd:find("%z")) then
    usage_error("--store-cmd: a shell command expected")
  end
  if o.store_timeout then
    local s = tonumber(o.store_timeout)
    if not s or s <= 0 or s ~= s or s == math.huge then
      usage_error("--store-timeout: a number of seconds > 0 expected")
    end
  end
  M.shard(o)
  -- the appended key lines would be read back as organizations to rotate,
  -- for ever
  if o.orgs and o.save_to then
    local input = o.orgs == "-" and "/proc/self/fd/0" or o.orgs
    if core.key_file_identity(input) == core.key_file_identity(o.save_to) then
      usage_error("--orgs and --save-to name the same file")
    end
  end
  -- credentials in a flag are visible to every user in `ps`
  if type(o.proxy) == "string" and o.proxy:find("^[%a][%w+.-]*://[^/?#]*@") then
    usage_error("--proxy must not hold credentials (ps shows them): " ..
                "put the proxy URL in https_proxy instead")
  end
end

return M
