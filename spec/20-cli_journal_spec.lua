-- slashid-rotate's write-ahead journal, seen from outside
-- (slashid-rotate(1): JOURNAL, RESUMING, SECRET STORES; the journal's rules:
-- the reference's "Write-ahead journal", docs/values.ld.lua): the command is
-- run as a subprocess against the emulator, killed, starved of its
-- outputs, and resumed. The emulator's record of what it rotated
-- (H.org(org).rotations and .api_key) is the truth every test compares
-- against; journals are read with slashid.read_journal. Keys are never
-- printed: assertion messages go through `shown`, which masks anything
-- shaped like one.
--
-- Topics: --store-cmd into a real Redis (stopped mid-run, then resumed);
-- store command behaviours; a dead consumer of stdout; kill -9 at three
-- moments, then --resume; --resume refusals; --resume decisions; input
-- rules (BOM, over-long line from a FIFO under ulimit -v, bytes outside
-- printable ASCII, stdout on a full disk); --shard, --version, --debug;
-- where the journal goes by default and when it cannot be made.
--
-- SLASHID_SPEC_CLI_ROOT=/path/to/checkout runs that checkout's command
-- (its lua/ and build/<interpreter>/) instead of this one's, with this
-- checkout's library reading the journals: how the tests were checked
-- to fail on an older command.
local H = require "helpers"
local q, write, read = H.q, H.write, H.read_if_any
local socket = require "socket"
local cjson = require "cjson"
local core = require "slashid.core"
local slashid = require "slashid"

local ROOT = os.getenv("SLASHID_SPEC_CLI_ROOT")
local CLI = (ROOT and (ROOT .. "/") or "") .. "bin/slashid-rotate"
local CLI_ENV = {}
if ROOT then
  local build = ROOT .. "/build/" .. (H.lua:match("[^/]+$") or "lua5.4")
  for _, suffix in ipairs({ "", "_5_2", "_5_3", "_5_4" }) do
    CLI_ENV["LUA_PATH" .. suffix] = ROOT .. "/lua/?.lua;;"
    CLI_ENV["LUA_CPATH" .. suffix] = build .. "/?.so;;"
  end
end

math.randomseed(os.time())

local wait_for = H.wait_for

local exists, sh, lines_of, key_lines = H.exists, H.sh, H.lines_of, H.key_lines
local private_dir = H.private_dir

-- The shell line listing the processes whose command line is exactly
-- `cmd`. pgrep runs without LD_PRELOAD: under make check-asan, pgrep with
-- the ASan runtime preloaded was seen deadlocked on a futex of its own
-- (a CI run stalled there until CI's limit).
local function pgrep_exact(cmd)
  return "env -u LD_PRELOAD pgrep -f " .. q("^" .. cmd .. "$") .. " 2>/dev/null"
end

-- Text for an assertion message: anything shaped like an emulator key
-- (sk_ + url-safe characters) masked, and cut to a readable length.
local function shown(text)
  text = tostring(text or ""):gsub("sk_[%w_%-]+", "sk_(not shown)")
  if #text > 3000 then text = text:sub(1, 1500) .. "\n...\n" .. text:sub(-1500) end
  return text
end

-- The files in a directory (full paths).
local function files_in(dir)
  local t = {}
  local p = io.popen("ls -A " .. q(dir) .. " 2>/dev/null")
  for name in p:lines() do t[#t + 1] = dir .. "/" .. name end
  p:close()
  return t
end

-- The one journal in `dir` (fails when there are none or several).
local function the_journal(dir, err)
  local t = files_in(dir)
  assert.are.equal(1, #t, "one journal expected in " .. dir .. "; stderr:\n" .. shown(err))
  return t[1]
end

-- slashid.read_journal, indexed: org -> entry, plus the list, skipped.
local function journal_of(path)
  local entries, skipped = slashid.read_journal(path)
  assert(entries, "cannot read the journal: " .. tostring(skipped))
  local by = {}
  for _, e in ipairs(entries) do by[e.org_id] = e end
  return by, skipped, entries
end

-- Asserts stderr matches `pattern`, showing it only through `shown`.
local function assert_says(err, pattern)
  if not err:find(pattern) then
    error(("stderr does not say %q:\n%s"):format(pattern, shown(err)), 2)
  end
end

-- Asserts `text` is empty without showing it (it could hold a key).
local function assert_empty(text, what)
  if text ~= "" then
    error(("%s is not empty (%d bytes, not shown): %s"):format(what, #text, shown(text)), 2)
  end
end

-- A journal's records without their values (no key): TYPE ORG_ID per
-- line, for assertion messages.
local function journal_summary(path)
  local t = {}
  for _, line in ipairs(lines_of(read(path) or "")) do
    local kind, org = line:match("^[^\t]*\t([^\t]*)\t([^\t]*)")
    t[#t + 1] = kind and (kind .. " " .. org) or "(unreadable line)"
  end
  return table.concat(t, "\n")
end

-- The command line: env (name -> value), unset (names), wrap (a program
-- the interpreter runs under, e.g. stdbuf), args (quoted one by one).
local function cmdline(args, opts)
  opts = opts or {}
  local parts = { "env" }
  for _, name in ipairs(opts.unset or {}) do parts[#parts + 1] = "-u " .. name end
  for name, value in pairs(CLI_ENV) do parts[#parts + 1] = name .. "=" .. q(value) end
  for name, value in pairs(opts.env or {}) do parts[#parts + 1] = name .. "=" .. q(value) end
  if opts.wrap then parts[#parts + 1] = opts.wrap end
  parts[#parts + 1] = H.lua
  parts[#parts + 1] = CLI
  for _, a in ipairs(args) do parts[#parts + 1] = q(a) end
  return table.concat(parts, " ")
end

-- Runs the command in the foreground; returns status, stdout, stderr,
-- and the folder holding them. opts (besides cmdline's): stdin (a path),
-- before (shell text run first in the same subshell, e.g. a ulimit),
-- pipe (a consumer of stdout: `CMD | pipe`; stdout is then not kept).
local function run(args, opts)
  opts = opts or {}
  local dir = H.mkdir(H.tmpname("run"))
  local cmd = cmdline(args, opts)
  local stdin = q(opts.stdin or "/dev/null")
  local line
  if opts.pipe then
    line = ("(%s %s <%s 2>%s/err; echo $? >%s/rc) | %s"):format(opts.before or "", cmd, stdin,
                                                                 dir, dir, opts.pipe)
  else
    line = ("(%s %s <%s >%s/out 2>%s/err; echo $? >%s/rc)"):format(opts.before or "", cmd, stdin,
                                                                   dir, dir, dir)
  end
  os.execute("(" .. line .. ") >/dev/null 2>&1")
  local status = tonumber(((read(dir .. "/rc") or "")):match("%d+"))
  return status, read(dir .. "/out") or "", read(dir .. "/err") or "", dir
end

-- Runs the command in the background (H.spawn's job).
local function spawn(args, opts)
  opts = opts or {}
  return H.spawn(cmdline(args, opts), opts.stdin)
end

local orgs_file = H.orgs_file

local function list_file(list)
  local text = {}
  for i, o in ipairs(list) do text[i] = o.org_id .. "\t" .. o.api_key .. "\n" end
  return write(H.tmpname("orgs") .. ".tsv", table.concat(text))
end

-- No old key of `list` (nor, when `current`, the emulator's current key)
-- in any of the texts.
local function no_keys(list, texts, current)
  local all = table.concat(texts, "\n")
  for _, o in ipairs(list) do
    H.assert_no_secret(all, o.api_key)
    if current then H.assert_no_secret(all, H.org(o.org_id).api_key) end
  end
end

-- The journal entry of `org` says: rotated, with the emulator's current
-- key, delivered or not as `delivered` says (nil: either).
local function assert_journaled(by, org, delivered, why)
  local e = by[org]
  assert(e, "not in the journal: " .. org .. (why and (" (" .. why .. ")") or ""))
  assert.are.equal("rotated", e.state, org)
  H.assert_key_equal(H.org(org).api_key, e.api_key, "journal: " .. org)
  if delivered ~= nil then assert.are.equal(delivered, e.delivered, "delivered: " .. org) end
end

-- The JSON lines of --json output: org -> object.
local function json_lines(text)
  local t = {}
  for _, line in ipairs(lines_of(text)) do
    local ok, obj = pcall(cjson.decode, line)
    assert(ok and type(obj) == "table", "not a JSON line on stdout")
    t[obj.org_id] = obj
  end
  return t
end

-- A journal written by hand in the documented format (journal.lua):
-- TIME TAB TYPE TAB ORG_ID TAB VALUE TAB CRC-32 of the four fields.
local function journal_line(t, kind, org, value)
  assert(core.crc32("123456789") == "cbf43926", "core.crc32 is not CRC-32/IEEE")
  local body = ("%.3f\t%s\t%s\t%s"):format(t, kind, org, value)
  return body .. "\t" .. core.crc32(body) .. "\n"
end

local function craft_journal(records)
  local dir = private_dir("crafted")
  local now = socket.gettime()
  local text = { journal_line(now - 120, "run", "-", "format=1 base_url=" .. H.http_url) }
  for _, r in ipairs(records) do
    text[#text + 1] = journal_line(now - (r.ago or 60), r[1], r[2], r[3] or "-")
  end
  local path = write(dir .. "/crafted.journal", table.concat(text), "600")
  return path, dir
end

-- A PUT to the emulator's endpoint by the spec itself (LuaSocket, not the
-- code under test): rotates the org behind the command's back.
local function rotate_behind(org, key)
  local http = require "socket.http"
  local ltn12 = require "ltn12"
  local _, status = http.request{
    url = H.http_url .. "/organizations/api-keys", method = "PUT",
    headers = { ["SlashID-OrgID"] = org, ["SlashID-API-Key"] = key,
                ["content-length"] = "0" },
    sink = ltn12.sink.null(),
  }
  assert.are.equal(200, status)
end

-- =======================================================================
describe("slashid-rotate --store-cmd into Redis", function()
  local redis = {}
  local have = sh("command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1")

  local function cli(args)
    local p = io.popen(("redis-cli -p %d %s 2>/dev/null"):format(redis.port, args))
    local out = p:read("*a")
    p:close()
    return out
  end
  local function alive(pid) return pid and sh("kill -0 " .. pid .. " 2>/dev/null") end

  -- Starts (or restarts) the server on its port, in its scratch folder;
  -- no persistence but a snapshot when it is stopped (SIGTERM), so that
  -- what it had stored is still there after a restart.
  local function start()
    for _ = 1, 5 do
      redis.port = redis.port or H.closed_port()
      os.execute(("redis-server --port %d --bind 127.0.0.1 --save '' --appendonly no " ..
                  "--shutdown-on-sigterm save --dir %s --pidfile %s/redis.pid " ..
                  "--logfile %s/redis.log --daemonize yes >/dev/null 2>&1")
                 :format(redis.port, q(redis.dir), q(redis.dir), q(redis.dir)))
      local deadline = socket.gettime() + 10
      while socket.gettime() < deadline do
        local pid = tonumber((read(redis.dir .. "/redis.pid") or ""):match("%d+"))
        if pid and cli("PING"):find("PONG") then
          redis.pid = pid
          return
        end
        socket.sleep(0.05)
      end
      if redis.started_once then break end
      redis.port = nil    -- the port was taken: another one
    end
    error("redis-server did not start: " .. (read(redis.dir .. "/redis.log") or ""))
  end

  local function stop()
    if alive(redis.pid) then
      sh("kill -TERM " .. redis.pid)
      wait_for("redis-server to stop", 20, function() return not alive(redis.pid) end)
    end
  end

  local function get(org)
    return (cli("--raw GET " .. q("slashid:" .. org)):gsub("\n$", ""))
  end

  local function store_cmd()
    return ("redis-cli -e -p %d -x SET slashid:$SLASHID_ORG_ID"):format(redis.port)
  end

  setup(function()
    if not have then return end
    redis.dir = H.mkdir(H.tmpname("redis"))
    start()
    redis.started_once = true
  end)

  teardown(function()
    if have then stop() end
  end)

  it("stores every new key in Redis; exit 0 and the journal removed", function()
    if not have then pending("needs redis-server and redis-cli (apt-get install redis-server redis-tools)") return end
    local path, list = orgs_file(6)
    local jdir = private_dir()
    local status, out, err = run({ "--orgs", path, "--base-url", H.http_url,
                                   "--store-cmd", store_cmd() },
                                 { env = { SLASHID_JOURNAL_DIR = jdir } })
    assert.are.equal(0, status, shown(err))
    for _, o in ipairs(list) do
      local state = H.org(o.org_id)
      assert.are.equal(1, state.rotations)
      H.assert_key_equal(state.api_key, get(o.org_id), "Redis: " .. o.org_id)
    end
    assert.are.equal(0, #files_in(jdir), "the journal was kept: " .. shown(err))
    assert_empty(out, "stdout")
    no_keys(list, { out, err }, true)
  end)

  it("Redis stopped mid-run: exit 3, nothing rotated twice, every key in Redis or in the journal; " ..
     "--resume after a restart stores the rest (exit 0, journal removed)", function()
    if not have then pending("needs redis-server and redis-cli (apt-get install redis-server redis-tools)") return end
    local n = 14
    local path, list = orgs_file(n, 0.5)
    cli("FLUSHALL")   -- DBSIZE counts this run's keys only
    local jdir = private_dir()
    local job = spawn({ "--orgs", path, "--base-url", H.http_url, "--concurrency", "2",
                        "--store-cmd", store_cmd() }, { env = { SLASHID_JOURNAL_DIR = jdir } })
    wait_for("3 keys in Redis", 60, function()
      return (tonumber(cli("DBSIZE"):match("%d+")) or 0) >= 3
    end)
    assert.is_false(job.ended(), "the run ended before Redis was stopped")
    stop()
    local status, out, err = job.wait(120)
    assert.are.equal(3, status, shown(err))
    local jpath = the_journal(jdir, err)
    assert.is_truthy(err:find(jpath, 1, true), "the journal's path is not on stderr")
    for _, o in ipairs(list) do assert.are.equal(1, H.org(o.org_id).rotations, o.org_id) end

    start()   -- with what it had stored before it stopped
    local by, skipped = journal_of(jpath)
    assert.are.equal(0, skipped)
    local in_redis, in_journal = 0, 0
    for _, o in ipairs(list) do
      local current = H.org(o.org_id).api_key
      local e = by[o.org_id]
      assert(e and e.state == "rotated", "not journaled as rotated: " .. o.org_id)
      H.assert_key_equal(current, e.api_key, "journal: " .. o.org_id)
      if e.delivered then
        -- a delivery the journal records is in Redis
        H.assert_key_equal(current, get(o.org_id), "delivered but not in Redis: " .. o.org_id)
        in_redis = in_redis + 1
      else
        in_journal = in_journal + 1
      end
    end
    assert.is_true(in_redis >= 3, in_redis .. " recorded as stored; the journal:\n" ..
                   journal_summary(jpath) .. "\nstderr:\n" .. shown(err))
    assert.is_true(in_journal >= 1, "no key left undelivered: Redis stopped too late")
    no_keys(list, { out, err }, true)

    local status2, out2, err2 = run({ "--resume", jpath, "--orgs", path, "--base-url", H.http_url,
                                      "--store-cmd", store_cmd() },
                                    { env = { SLASHID_JOURNAL_DIR = jdir } })
    assert.are.equal(0, status2, shown(err2))
    for _, o in ipairs(list) do
      local state = H.org(o.org_id)
      assert.are.equal(1, state.rotations, "rotated twice: " .. o.org_id)
      H.assert_key_equal(state.api_key, get(o.org_id), "not in Redis after --resume: " .. o.org_id)
    end
    assert.is_false(exists(jpath), "the journal was kept after --resume: " .. shown(err2))
    no_keys(list, { out2, err2 }, true)
  end)
end)

-- =======================================================================
describe("slashid-rotate --store-cmd", function()
  local function one(org, key, store, extra)
    local jdir = private_dir()
    local args = { "--org-id", org, "--base-url", H.http_url, "--store-cmd", store }
    for _, a in ipairs(extra or {}) do args[#args + 1] = a end
    return jdir, args, { env = { SLASHID_JOURNAL_DIR = jdir, SLASHID_API_KEY = key } }
  end

  local function kept_not_delivered(jdir, org, key, status, out, err)
    assert.are.equal(3, status, shown(err))
    assert.are.equal(1, H.org(org).rotations)
    local jpath = the_journal(jdir, err)
    assert.is_truthy(err:find(jpath, 1, true), "the journal's path is not on stderr")
    assert_journaled(journal_of(jpath), org, false)
    assert_empty(out, "stdout")    -- a key whose delivery failed is not printed
    no_keys({ { org_id = org, api_key = key } }, { out, err }, true)
  end

  it("a store command that exits non-zero: rotated but not stored, exit 3, the key kept in the journal", function()
    local org, key = H.new_org()
    local jdir, args, opts = one(org, key, "cat >/dev/null; exit 7")
    local status, out, err = run(args, opts)
    kept_not_delivered(jdir, org, key, status, out, err)
  end)

  it("a store command that hangs past --store-timeout is killed: exit 3 at once, the key in the journal", function()
    local org, key = H.new_org()
    local marker = ("sleep 100.%04d%02d"):format(math.random(0, 9999), math.random(0, 99))
    local jdir, args, opts = one(org, key, marker, { "--store-timeout", "1" })
    local job = spawn(args, opts)
    -- far less than the command's 100 s
    local status, out, err = job.wait(40)
    local p = io.popen(pgrep_exact(marker))
    local left = p:read("*a")
    p:close()
    for pid in left:gmatch("%d+") do sh("kill -9 " .. pid) end   -- our own leftovers
    assert.are.equal("", left, "the store command's process outlived its kill")
    kept_not_delivered(jdir, org, key, status, out, err)
  end)

  it("a store command that takes only part of the key (head -c 5, or true) has not stored it: exit 3", function()
    for _, store in ipairs({ "head -c 5 >/dev/null", "true" }) do
      local org, key = H.new_org()
      local jdir, args, opts = one(org, key, store)
      local status, out, err = run(args, opts)
      kept_not_delivered(jdir, org, key, status, out, err)
    end
  end)

  it("the key reaches it on stdin with no trailing newline, never in its arguments or environment", function()
    local path, list = orgs_file(3)
    local dir = H.mkdir(H.tmpname("store"))
    local store = ('D=%s; cat >"$D/$SLASHID_ORG_ID.stdin"; ' ..
                   'printf %%s "$SLASHID_ORG_ID" >"$D/$SLASHID_ORG_ID.org"; ' ..
                   'env >"$D/$SLASHID_ORG_ID.env"; ' ..
                   'cat /proc/$$/cmdline >"$D/$SLASHID_ORG_ID.argv"; ' ..
                   'cat /proc/$$/environ >"$D/$SLASHID_ORG_ID.environ"; ' ..
                   'printf "%%s\\n" "$0" "$@" >>"$D/$SLASHID_ORG_ID.argv"'):format(q(dir))
    local jdir = private_dir()
    local status, out, err = run({ "--orgs", path, "--base-url", H.http_url, "--store-cmd", store },
                                 { env = { SLASHID_JOURNAL_DIR = jdir } })
    assert.are.equal(0, status, shown(err))
    for _, o in ipairs(list) do
      local current = H.org(o.org_id).api_key
      local base = dir .. "/" .. o.org_id
      H.assert_key_equal(current, read(base .. ".stdin"), "stdin (exactly the key): " .. o.org_id)
      assert.are.equal(o.org_id, read(base .. ".org"))
      for _, ext in ipairs({ ".env", ".argv", ".environ" }) do
        local text = read(base .. ext)
        assert(text and #text > 0, "nothing recorded in " .. ext)
        H.assert_no_secret(text, current)
        H.assert_no_secret(text, o.api_key)
      end
    end
    assert.are.equal(0, #files_in(jdir))
    no_keys(list, { out, err }, true)
  end)
end)

-- =======================================================================
describe("slashid-rotate with a dead consumer of stdout", function()
  it("`| true` (line-buffered stdout): not exit 0; the key stays in the journal, its path on stderr", function()
    local org, key = H.new_org()
    H.faults(org, { { delay = 0.5 } })   -- `true` is long gone when the key comes
    local jdir = private_dir()
    local status, _, err = run({ "--org-id", org, "--base-url", H.http_url },
                               { env = { SLASHID_JOURNAL_DIR = jdir, SLASHID_API_KEY = key },
                                 wrap = "stdbuf -oL", pipe = "true" })
    assert.are_not.equal(0, status, shown(err))
    assert.are.equal(3, status, shown(err))
    assert.are.equal(1, H.org(org).rotations)
    local jpath = the_journal(jdir, err)
    assert.is_truthy(err:find(jpath, 1, true), "the journal's path is not on stderr")
    assert_journaled(journal_of(jpath), org, false)
    no_keys({ { org_id = org, api_key = key } }, { err }, true)
  end)

  it("30 organizations printed into `head -n 5 >/dev/null`: exit 3, every rotated key in the journal", function()
    local path, list = orgs_file(30, 0.2)
    local jdir = private_dir()
    local status, _, err = run({ "--orgs", path, "--base-url", H.http_url, "--concurrency", "4" },
                               { env = { SLASHID_JOURNAL_DIR = jdir }, pipe = "head -n 5 >/dev/null" })
    assert.are.equal(3, status, shown(err))
    local jpath = the_journal(jdir, err)
    assert.is_truthy(err:find(jpath, 1, true), "the journal's path is not on stderr")
    local by = journal_of(jpath)
    local rotated = 0
    for _, o in ipairs(list) do
      if H.org(o.org_id).rotations > 0 then
        rotated = rotated + 1
        assert_journaled(by, o.org_id, false)
      end
    end
    assert.are.equal(30, rotated)
    no_keys(list, { err }, true)
  end)
end)

-- =======================================================================
describe("slashid-rotate killed with SIGKILL", function()
  local N, C = 60, 8

  -- One run killed once `after` lines are saved; then --resume. The
  -- disk (save file, journal) and the emulator are all that is read.
  local function killed_then_resumed(after)
    local delays = {}
    for i = 1, N do delays[i] = 0.2 + math.random() * 0.8 end
    local path, list = orgs_file(N, delays)
    local jdir = private_dir()
    local sdir = private_dir("saved")
    local save, save2 = sdir .. "/keys.tsv", sdir .. "/keys2.tsv"
    local env = { SLASHID_JOURNAL_DIR = jdir }
    local job = spawn({ "--orgs", path, "--base-url", H.http_url, "--concurrency", tostring(C),
                        "--save-to", save, "--request-timeout", "3" }, { env = env })
    wait_for(after .. " keys saved", 120, function()
      return #lines_of(read(save)) >= after or job.ended()
    end)
    assert.is_false(job.ended(), "the run ended before the kill: " .. shown(job.err()))
    job.kill("KILL")
    local status = job.wait(20)
    assert.are.equal(137, status)

    -- classify from disk only
    local jpath = the_journal(jdir)
    local by = journal_of(jpath)
    local saved = key_lines(read(save), "the save file")
    local class, count, unclassified = {}, { A = 0, B = 0, C = 0, D = 0 }, {}
    local requests_before, delivered_before, last_sent = {}, {}, 0
    for _, o in ipairs(list) do
      local org = o.org_id
      local state = H.org(org)
      local e = by[org]
      local c
      if saved[org] and saved[org] == state.api_key then
        -- rule 2: journaled before it was saved
        if e and e.state == "rotated" and e.api_key == state.api_key then c = "A" end
      elseif not saved[org] and e and e.state == "rotated" and e.api_key == state.api_key then
        c = "B"
      elseif not saved[org] and e and e.state == "sent" then
        c = "C"
        if e.sent_at and e.sent_at > last_sent then last_sent = e.sent_at end
      elseif not saved[org] and not e and state.rotations == 0 and #state.requests == 0 then
        c = "D"
      end
      if c then
        class[org], count[c] = c, count[c] + 1
      else
        unclassified[#unclassified + 1] = org
      end
      requests_before[org] = #state.requests
      delivered_before[org] = e and e.delivered
    end
    local summary = ("after %d: %d saved, %d journaled only, %d sent (in flight), %d never sent")
                    :format(after, count.A, count.B, count.C, count.D)
    assert.are.equal(0, #unclassified, "unclassifiable: " .. table.concat(unclassified, " ") ..
                     " (" .. summary .. ")")
    assert.is_true(count.C <= C, summary)
    assert.is_true(count.A >= after, summary)

    -- what the in-flight requests did, once the emulator is done with
    -- them (each was delayed at most 1 s from its arrival)
    wait_for("the in-flight requests to be answered", 30, function()
      return socket.gettime() > last_sent + 2.5
    end)
    local issued_unseen, n_unseen = {}, 0
    for _, o in ipairs(list) do
      if class[o.org_id] == "C" and H.org(o.org_id).rotations == 1 then
        issued_unseen[o.org_id], n_unseen = true, n_unseen + 1
      end
    end
    io.write(("\n[kill -9] %s; %d in-flight answers issued but never received\n")
             :format(summary, n_unseen))

    local status2, out2, err2 = run({ "--resume", jpath, "--orgs", path, "--base-url", H.http_url,
                                      "--concurrency", tostring(C), "--save-to", save2,
                                      "--request-timeout", "3", "--json" }, { env = env })
    local saved2 = key_lines(read(save2), "the --resume save file")
    local outcomes = json_lines(out2)
    local lost = 0
    for _, o in ipairs(list) do
      local org = o.org_id
      local state = H.org(org)
      assert.are.equal(1, state.rotations, "rotations of " .. org .. " (" .. summary .. ")")
      local in_files = saved[org] == state.api_key or saved2[org] == state.api_key
      local reported_lost = outcomes[org] ~= nil and outcomes[org].outcome == "lost"
      if issued_unseen[org] then
        -- the emulator rotated it and the key never reached the process
        assert.is_true(reported_lost, "not reported lost: " .. org .. " (" .. summary .. ")")
        assert.is_false(in_files)
        assert(outcomes[org].api_key == nil, "a lost organization's JSON has an api_key")
        lost = lost + 1
      else
        assert.is_false(reported_lost, "reported lost: " .. org .. " (" .. summary .. ")")
        assert(in_files, "the key is in no save file: " .. org .. " (" .. summary .. ")")
      end
      if class[org] == "A" and delivered_before[org] then
        -- recorded as delivered: --resume skips it
        assert(saved2[org] == nil, "delivered again though the journal says delivered: " .. org)
      elseif class[org] == "A" and saved2[org] then
        -- killed between the save and its `delivered` record: delivered
        -- again, the same key (slashid-rotate(1), SECRET STORES: a key may
        -- be delivered more than once)
        H.assert_key_equal(saved[org], saved2[org], "delivered again, another key: " .. org)
      end
      if class[org] == "A" or class[org] == "B" then
        assert.are.equal(requests_before[org], #state.requests, "a new request for " .. org)
      end
    end
    assert.are.equal(lost > 0 and 4 or 0, status2, shown(err2))
    if lost > 0 then
      assert.is_true(exists(jpath), "a journal recording lost organizations was removed")
      assert.is_truthy(err2:find(jpath, 1, true))
      local by2 = journal_of(jpath)
      for org in pairs(issued_unseen) do assert.are.equal("lost", by2[org].state) end
    else
      assert.is_false(exists(jpath), "the journal was kept: " .. shown(err2))
    end
    no_keys(list, { err2, out2 }, true)
  end

  local moments = { { "early", math.random(1, 5) }, { "midway", math.random(15, 25) },
                    { "late", math.random(33, 42) } }
  for _, m in ipairs(moments) do
    it(("kill -9 %s (after %d of %d keys saved): every org saved, journaled, in flight (<= %d) or " ..
        "never sent; --resume saves the rest and reports lost exactly the keys that never arrived")
       :format(m[1], m[2], N, C), function()
      killed_then_resumed(m[2])
    end)
  end
end)

-- =======================================================================
describe("slashid-rotate --resume refuses", function()
  -- A run whose keys went to stdout: its journal is kept (rotated, not
  -- delivered). Returns the journal, its folder, the --orgs file, list.
  local function kept_journal(n, extra)
    local path, list = orgs_file(n or 1)
    local jdir = private_dir()
    local args = { "--orgs", path, "--base-url", H.http_url, "--concurrency", "1" }
    for _, a in ipairs(extra or {}) do args[#args + 1] = a end
    local status, _, err = run(args, { env = { SLASHID_JOURNAL_DIR = jdir } })
    assert.are.equal(0, status, shown(err))
    return the_journal(jdir, err), jdir, path, list
  end

  local function refused(jpath, path, list, args, what)
    local before = read(jpath)
    local requests = {}
    for _, o in ipairs(list) do requests[o.org_id] = H.requests(o.org_id) end
    local status, out, err = run(args, { env = { SLASHID_JOURNAL_DIR = private_dir() } })
    assert.are.equal(64, status, what .. ": " .. shown(err))
    assert(before == read(jpath), what .. ": the journal changed")
    for _, o in ipairs(list) do
      assert.are.equal(requests[o.org_id], H.requests(o.org_id), what .. ": a request was sent")
    end
    assert_empty(out, "stdout")
    no_keys(list, { out, err }, true)
    return err
  end

  it("a journal whose run used another base URL or shard (exit 64, nothing sent)", function()
    local jpath, _, path, list = kept_journal(1)
    local other = "http://127.0.0.1:" .. H.closed_port()
    local err = refused(jpath, path, list, { "--resume", jpath, "--orgs", path, "--base-url", other },
                        "another base URL")
    assert_says(err, "base URL")
    local jpath2, _, path2, list2 = kept_journal(1, { "--shard", "0/1" })
    refused(jpath2, path2, list2, { "--resume", jpath2, "--orgs", path2, "--base-url", H.http_url },
            "no shard now")
    refused(jpath2, path2, list2, { "--resume", jpath2, "--orgs", path2, "--base-url", H.http_url,
                                    "--shard", "0/2" }, "another shard")
  end)

  it("--resume with --check, or with --no-journal (exit 64, nothing sent)", function()
    local jpath, _, path, list = kept_journal(1)
    refused(jpath, path, list, { "--resume", jpath, "--orgs", path, "--base-url", H.http_url,
                                 "--check" }, "--check")
    refused(jpath, path, list, { "--resume", jpath, "--orgs", path, "--base-url", H.http_url,
                                 "--no-journal" }, "--no-journal")
  end)

  it("a journal another process holds (flock): exit 64, nothing sent", function()
    local jpath, _, path, list = kept_journal(1)
    local marker = H.tmpname("locked")
    local holder = H.spawn("sh -c " .. q(("exec 9<%s; flock -n 9 || exit 1; : >%s; exec sleep 60")
                                         :format(q(jpath), q(marker))))
    wait_for("the lock", 10, function() return exists(marker) or holder.ended() end)
    assert.is_false(holder.ended(), "flock(1) could not lock the journal")
    local ok, err = pcall(refused, jpath, path, list,
                          { "--resume", jpath, "--orgs", path, "--base-url", H.http_url }, "locked")
    holder.kill("TERM")
    holder.wait(10)
    assert(ok, err)
    assert_says(err, "another process")
  end)

  it("a journal a running --resume holds: a second --resume is refused (64); the first finishes", function()
    local jpath, jdir, path, list = kept_journal(1)
    -- one more organization, slow to answer, keeps the first --resume busy
    local org2, key2 = H.new_org()
    H.faults(org2, { { delay = 3 } })
    local all = { list[1], { org_id = org2, api_key = key2 } }
    local file = list_file(all)
    local save = private_dir("saved") .. "/keys.tsv"
    local first = spawn({ "--resume", jpath, "--orgs", file, "--base-url", H.http_url,
                          "--save-to", save }, { env = { SLASHID_JOURNAL_DIR = jdir } })
    wait_for("the slow request", 20, function() return H.requests(org2) >= 1 or first.ended() end)
    assert.is_false(first.ended(), "the first --resume ended early: " .. shown(first.err()))
    local status, _, err = run({ "--resume", jpath, "--orgs", file, "--base-url", H.http_url,
                                 "--save-to", save }, { env = { SLASHID_JOURNAL_DIR = jdir } })
    assert.are.equal(64, status, shown(err))
    assert_says(err, "another process")
    local status1, _, err1 = first.wait(60)
    assert.are.equal(0, status1, shown(err1))
    local saved = key_lines(read(save))
    for _, o in ipairs(all) do
      local state = H.org(o.org_id)
      assert.are.equal(1, state.rotations)
      H.assert_key_equal(state.api_key, saved[o.org_id])
    end
    assert.is_false(exists(jpath))
  end)

  it("a torn last line and a flipped byte mid-file are skipped (and said so); the rest goes on", function()
    local jpath, jdir, path, list = kept_journal(3)
    local A, B, C = list[1].org_id, list[2].org_id, list[3].org_id
    local text = read(jpath)
    -- flip one character of B's organization ID in its `sent` record
    local s, e = text:find("\tsent\t" .. B:gsub("%-", "%%-") .. "\t")
    assert(s, "no sent record for B in the journal")
    local at = s + #"\tsent\t"
    local c = text:sub(at, at)
    local flipped = c == "0" and "1" or "0"
    text = text:sub(1, at - 1) .. flipped .. text:sub(at + 1)
    -- and a record cut short by a crash (no newline)
    local last = lines_of(text)[#lines_of(text)]
    text = text .. last:sub(1, 30)
    write(jpath, text)
    local before_skipped = select(2, journal_of(jpath))
    assert.are.equal(2, before_skipped)

    -- D, not in the journal, answered 500: unknown, so the journal stays
    local D, keyD = H.new_org()
    H.faults(D, { { status = 500, message = "internal" } })
    local all = { list[1], list[2], list[3], { org_id = D, api_key = keyD } }
    local save = private_dir("saved") .. "/keys.tsv"
    local status, out, err = run({ "--resume", jpath, "--orgs", list_file(all), "--base-url",
                                   H.http_url, "--save-to", save, "--request-timeout", "3" },
                                 { env = { SLASHID_JOURNAL_DIR = jdir } })
    assert.are.equal(2, status, shown(err))
    assert_says(err, "2 unreadable lines")
    local saved = key_lines(read(save))
    for _, org in ipairs({ A, B, C }) do
      local state = H.org(org)
      assert.are.equal(1, state.rotations)
      H.assert_key_equal(state.api_key, saved[org], "not delivered: " .. org)
    end
    assert.are.equal(0, H.org(D).rotations)
    -- the torn line was ended: what --resume added reads back
    local by, skipped = journal_of(jpath)
    assert.are.equal(2, skipped)
    for _, org in ipairs({ A, B, C }) do assert.is_true(by[org].delivered, org) end
    assert.are.equal("unknown", by[D].state)
    no_keys(all, { out, err }, true)
  end)
end)

-- =======================================================================
describe("slashid-rotate --resume decides from the journal", function()
  it("journaled as sent with no outcome, its old key still works: checked, then rotated now", function()
    local org, key = H.new_org()
    local jpath = craft_journal({ { "sent", org, "rt=3" } })
    local save = private_dir("saved") .. "/keys.tsv"
    local status, out, err = run({ "--resume", jpath, "--orgs", list_file({ { org_id = org, api_key = key } }),
                                   "--base-url", H.http_url, "--save-to", save })
    assert.are.equal(0, status, shown(err))
    local state = H.org(org)
    assert.are.equal(1, state.rotations)
    H.assert_key_equal(state.api_key, key_lines(read(save))[org])
    assert.are.equal("GET", state.requests[1].method, "not checked first")
    assert.are.equal("PUT", state.requests[#state.requests].method)
    assert.is_false(exists(jpath))
    no_keys({ { org_id = org, api_key = key } }, { out, err }, true)
  end)

  it("a sent record younger than its request's time limit: --resume waits it out (saying so), then checks", function()
    local org, key = H.new_org()
    local jpath = craft_journal({ { "sent", org, "rt=3", ago = 0 } })
    local sent_at = journal_of(jpath)[org].sent_at
    local save = private_dir("saved") .. "/keys.tsv"
    local status, _, err = run({ "--resume", jpath, "--orgs", list_file({ { org_id = org, api_key = key } }),
                                 "--base-url", H.http_url, "--save-to", save })
    assert.are.equal(0, status, shown(err))
    assert_says(err, "waiting")
    local state = H.org(org)
    assert.are.equal(1, state.rotations)
    assert.are.equal("GET", state.requests[1].method)
    -- a lower bound only: the check came no sooner than the time limit
    assert.is_true(state.requests[1].time >= sent_at + 3 - 0.01,
                   ("checked %.3f s after the sent record"):format(state.requests[1].time - sent_at))
  end)

  it("journaled not_rotated: rotated now; journaled lost: reported lost again, with no request (exit 4)", function()
    local y, ky = H.new_org()      -- not_rotated
    local z, kz = H.new_org()      -- lost
    local w, kw = H.new_org()      -- never named
    local jpath = craft_journal({ { "sent", y, "rt=3" }, { "not_rotated", y },
                                  { "sent", z, "rt=3" }, { "lost", z } })
    local save = private_dir("saved") .. "/keys.tsv"
    local list = { { org_id = y, api_key = ky }, { org_id = z, api_key = kz }, { org_id = w, api_key = kw } }
    local status, out, err = run({ "--resume", jpath, "--orgs", list_file(list), "--base-url", H.http_url,
                                   "--save-to", save, "--json" })
    assert.are.equal(4, status, shown(err))
    local saved = key_lines(read(save))
    for _, org in ipairs({ y, w }) do
      local state = H.org(org)
      assert.are.equal(1, state.rotations, org)
      H.assert_key_equal(state.api_key, saved[org], org)
    end
    assert.are.equal(0, H.requests(z), "recorded lost: no request")
    assert.is_true(exists(jpath))
    assert.are.equal("lost", journal_of(jpath)[z].state)
    local json = json_lines(out)
    assert.are.equal("lost", json[z] and json[z].outcome)
    no_keys(list, { out, err }, true)
  end)

  it("journaled as sent but not listed in FILE: unknown (exit 2), recorded so, journal kept, no request", function()
    local x = H.new_org()          -- sent, not listed: no key to check it with
    local w, kw = H.new_org()
    local jpath = craft_journal({ { "sent", x, "rt=3" } })
    local save = private_dir("saved") .. "/keys.tsv"
    local status, out, err = run({ "--resume", jpath, "--orgs", list_file({ { org_id = w, api_key = kw } }),
                                   "--base-url", H.http_url, "--save-to", save, "--json" })
    assert.are.equal(2, status, shown(err))
    assert.are.equal(1, H.org(w).rotations)
    assert.are.equal(0, H.requests(x))
    assert.is_true(exists(jpath))
    assert.is_truthy(err:find(jpath, 1, true))
    local json = json_lines(out)
    assert.are.equal("unknown", json[x] and json[x].outcome)
    -- rule 3: every outcome is recorded
    assert.are.equal("unknown", journal_of(jpath)[x].state)
  end)

  it("a real run whose request was reset before the server read it (unknown): --resume rotates it", function()
    local org, key = H.new_org()
    H.faults(org, { { action = "reset_before_read" } })
    local path = list_file({ { org_id = org, api_key = key } })
    local jdir = private_dir()
    local save = private_dir("saved") .. "/keys.tsv"
    local env = { SLASHID_JOURNAL_DIR = jdir }
    local status, _, err = run({ "--orgs", path, "--base-url", H.http_url, "--save-to", save,
                                 "--request-timeout", "2" }, { env = env })
    assert.are.equal(2, status, shown(err))
    assert.are.equal(0, H.org(org).rotations)
    local jpath = the_journal(jdir, err)
    assert.are.equal("unknown", journal_of(jpath)[org].state)
    local status2, _, err2 = run({ "--resume", jpath, "--orgs", path, "--base-url", H.http_url,
                                   "--save-to", save, "--request-timeout", "2" }, { env = env })
    assert.are.equal(0, status2, shown(err2))
    local state = H.org(org)
    assert.are.equal(1, state.rotations)
    H.assert_key_equal(state.api_key, key_lines(read(save))[org])
    assert.is_false(exists(jpath))
  end)

  it("journaled as sent, its old key refused (the server rotated it): lost, exit 4, journal kept", function()
    local org, key = H.new_org()
    local jpath = craft_journal({ { "sent", org, "rt=3" } })
    rotate_behind(org, key)
    local save = private_dir("saved") .. "/keys.tsv"
    local status, out, err = run({ "--resume", jpath, "--orgs", list_file({ { org_id = org, api_key = key } }),
                                   "--base-url", H.http_url, "--save-to", save, "--json" })
    assert.are.equal(4, status, shown(err))
    local state = H.org(org)
    assert.are.equal(1, state.rotations)
    for i = 2, #state.requests do assert.are.equal("GET", state.requests[i].method) end
    assert.is_true(exists(jpath), "the journal was removed")
    assert.is_truthy(err:find(jpath, 1, true))
    assert.are.equal("lost", journal_of(jpath)[org].state)
    local obj = json_lines(out)[org]
    assert(obj, "no JSON line for the organization")
    assert.are.equal("lost", obj.outcome)
    assert(obj.api_key == nil, "a lost organization's JSON has an api_key")
    assert(key_lines(read(save))[org] == nil, "a key saved for a lost organization")
    no_keys({ { org_id = org, api_key = key } }, { out, err }, true)
  end)

  it("a real run whose answer was dropped after the server rotated (unknown): --resume says lost, exit 4", function()
    local org, key = H.new_org()
    H.faults(org, { { rotate = true, action = "close" } })
    local path = list_file({ { org_id = org, api_key = key } })
    local jdir = private_dir()
    local env = { SLASHID_JOURNAL_DIR = jdir }
    local status, _, err = run({ "--orgs", path, "--base-url", H.http_url, "--request-timeout", "2" },
                               { env = env })
    assert.are.equal(2, status, shown(err))
    assert.are.equal(1, H.org(org).rotations)
    local jpath = the_journal(jdir, err)
    local status2, _, err2 = run({ "--resume", jpath, "--orgs", path, "--base-url", H.http_url,
                                   "--request-timeout", "2" }, { env = env })
    assert.are.equal(4, status2, shown(err2))
    assert_says(err2, "lost")
    assert.are.equal(1, H.org(org).rotations)
    assert.are.equal("lost", journal_of(jpath)[org].state)
  end)

  it("journaled as rotated, not delivered: the key goes to --save-to with no new request", function()
    local path, list = orgs_file(2)
    local jdir = private_dir()
    local env = { SLASHID_JOURNAL_DIR = jdir }
    local status, _, err = run({ "--orgs", path, "--base-url", H.http_url }, { env = env })
    assert.are.equal(0, status, shown(err))
    local jpath = the_journal(jdir, err)
    local requests = {}
    for _, o in ipairs(list) do requests[o.org_id] = H.requests(o.org_id) end
    local save = private_dir("saved") .. "/keys.tsv"
    local status2, out2, err2 = run({ "--resume", jpath, "--orgs", path, "--base-url", H.http_url,
                                      "--save-to", save }, { env = env })
    assert.are.equal(0, status2, shown(err2))
    local saved = key_lines(read(save))
    for _, o in ipairs(list) do
      local state = H.org(o.org_id)
      assert.are.equal(1, state.rotations)
      assert.are.equal(requests[o.org_id], #state.requests, "a new request")
      H.assert_key_equal(state.api_key, saved[o.org_id])
    end
    assert.is_false(exists(jpath))
    assert_empty(out2, "stdout")
  end)

  it("one organization (--org-id): its journaled, undelivered key goes to --save-to (exit 0)", function()
    local org, key = H.new_org()
    local jdir = private_dir()
    local env = { SLASHID_JOURNAL_DIR = jdir, SLASHID_API_KEY = key }
    local status, _, err = run({ "--org-id", org, "--base-url", H.http_url }, { env = env })
    assert.are.equal(0, status, shown(err))
    local jpath = the_journal(jdir, err)
    local save = private_dir("saved") .. "/key"
    local status2, out2, err2 = run({ "--resume", jpath, "--org-id", org, "--base-url", H.http_url,
                                      "--save-to", save }, { env = env })
    assert.are.equal(0, status2, shown(err2))
    local state = H.org(org)
    assert.are.equal(1, state.rotations)
    assert.are.equal(1, #state.requests)
    H.assert_key_equal(state.api_key .. "\n", read(save), "the --save-to file")
    assert.is_false(exists(jpath))
    assert_empty(out2, "stdout")
  end)
end)

-- =======================================================================
describe("slashid-rotate input rules", function()
  it("a UTF-8 byte-order mark at the start of --orgs is skipped: the first organization is rotated", function()
    local o1, k1 = H.new_org()
    local o2, k2 = H.new_org()
    local path = write(H.tmpname("bom") .. ".tsv", "\239\187\191" .. o1 .. "\t" .. k1 .. "\n" ..
                                                   o2 .. "\t" .. k2 .. "\n")
    local save = private_dir("saved") .. "/keys.tsv"
    local status, _, err = run({ "--orgs", path, "--base-url", H.http_url, "--save-to", save },
                               { env = { SLASHID_JOURNAL_DIR = private_dir() } })
    assert.are.equal(0, status, shown(err))
    local saved = key_lines(read(save))
    for _, org in ipairs({ o1, o2 }) do
      local state = H.org(org)
      assert.are.equal(1, state.rotations, org)
      H.assert_key_equal(state.api_key, saved[org])
    end
    assert.is_nil(err:find("invalid API key", 1, true))
  end)

  it("a line over 1 MiB from a FIFO (given by path), under ulimit -v: that line's error, the rest rotated", function()
    if (os.getenv("LD_PRELOAD") or ""):find("asan") then
      -- ASan's shadow memory takes terabytes of address space: no process
      -- starts under a ulimit -v of 300 MB (make test runs this one)
      pending("not under check-asan: its runtime cannot start under ulimit -v")
      return
    end
    local o1, k1 = H.new_org()
    local o3, k3 = H.new_org()
    local dir = H.mkdir(H.tmpname("fifo"))
    local fifo = dir .. "/orgs"
    assert(sh("mkfifo " .. q(fifo)))
    write(dir .. "/l1", o1 .. "\t" .. k1 .. "\n")
    write(dir .. "/l3", o3 .. "\t" .. k3 .. "\n")
    -- 384 MiB on one line, more than the whole address space allowed
    local writer = H.spawn("sh -c " .. q(("{ cat %s; head -c %d /dev/zero | tr '\\0' x; " ..
                                          "printf '\\n'; cat %s; } >%s")
                                         :format(q(dir .. "/l1"), 384 * 1048576, q(dir .. "/l3"),
                                                 q(fifo))))
    local save = private_dir("saved") .. "/keys.tsv"
    local status, out, err = run({ "--orgs", fifo, "--base-url", H.http_url, "--save-to", save },
                                 { env = { SLASHID_JOURNAL_DIR = private_dir() },
                                   before = "ulimit -v 300000;" })
    local wstatus = writer.wait(60)
    assert.are.equal(1, status, shown(err))
    assert.are.equal(0, wstatus)
    assert_says(err, "line 2")
    assert_says(err, "1 MiB")
    local saved = key_lines(read(save))
    for _, org in ipairs({ o1, o3 }) do
      local state = H.org(org)
      assert.are.equal(1, state.rotations, org)
      H.assert_key_equal(state.api_key, saved[org])
    end
    assert_empty(out, "stdout")
  end)

  it("a byte outside printable ASCII in an ID or a key: that line's error, naming its line, not the value", function()
    local list = {}
    for i = 1, 6 do
      local org, key = H.new_org()
      list[i] = { org_id = org, api_key = key }
    end
    local lines = {
      list[1].org_id .. "\t" .. list[1].api_key,
      list[2].org_id .. "\127\t" .. list[2].api_key,               -- line 2: DEL in the ID
      list[3].org_id .. "\195\169\t" .. list[3].api_key,           -- line 3: é in the ID
      list[4].org_id .. "\t" .. list[4].api_key .. "\200",         -- line 4: a high byte in the key
      list[5].org_id .. "\t" .. list[5].api_key:sub(1, 10) .. "\1" .. list[5].api_key:sub(11),
      list[6].org_id .. "\t" .. list[6].api_key,
    }
    local path = write(H.tmpname("bytes") .. ".tsv", table.concat(lines, "\n") .. "\n")
    local save = private_dir("saved") .. "/keys.tsv"
    local status, out, err = run({ "--orgs", path, "--base-url", H.http_url, "--save-to", save },
                                 { env = { SLASHID_JOURNAL_DIR = private_dir() } })
    assert.are.equal(1, status, shown(err))
    local saved = key_lines(read(save))
    for i, o in ipairs(list) do
      local state = H.org(o.org_id)
      if i == 1 or i == 6 then
        assert.are.equal(1, state.rotations)
        H.assert_key_equal(state.api_key, saved[o.org_id])
      else
        assert.are.equal(0, #state.requests, "line " .. i .. " was sent")
        assert_says(err, "line " .. i .. "[^%d]")
      end
    end
    -- the values are not shown: the bad IDs, and no key at all
    assert.is_nil(err:find(list[2].org_id, 1, true), "the ID of line 2 is shown")
    assert.is_nil(err:find(list[3].org_id, 1, true), "the ID of line 3 is shown")
    for _, o in ipairs(list) do
      H.assert_no_secret(err, o.api_key)
      H.assert_no_secret(err, o.api_key:sub(11))
    end
    assert_empty(out, "stdout")
  end)

  it("stdout on a full disk: no cut line left in the file, exit 3, every key kept in the journal", function()
    local id = io.popen("id -u"):read("*l")
    if id ~= "0" or not sh("command -v unshare >/dev/null") then
      pending("needs root and unshare(1) to mount a small tmpfs in a private namespace")
      return
    end
    local n = 70   -- ~82 bytes a line; the 4 KiB left hold ~50
    local path, list = orgs_file(n)
    local jdir = private_dir()
    local mnt = H.mkdir(H.tmpname("mnt"))
    local dir = H.mkdir(H.tmpname("disk"))
    local inner = ("mount -t tmpfs -o size=16k tmpfs %s || exit 99; " ..
                   "head -c %d /dev/zero >%s/fill 2>/dev/null; " ..
                   "%s >%s/keys 2>%s/err </dev/null; echo $? >%s/rc; " ..
                   "cp %s/keys %s/keys; exit 0")
                  :format(q(mnt), 12 * 1024, q(mnt),
                          cmdline({ "--orgs", path, "--base-url", H.http_url, "--concurrency", "4" },
                                  { env = { SLASHID_JOURNAL_DIR = jdir } }),
                          q(mnt), q(dir), q(dir), q(mnt), q(dir))
    local ok = sh("unshare -m sh -c " .. q(inner) .. " >/dev/null 2>&1")
    if not ok or not exists(dir .. "/rc") then
      pending("mount -t tmpfs is not allowed here")
      return
    end
    local status = tonumber(read(dir .. "/rc"):match("%d+"))
    local err = read(dir .. "/err") or ""
    assert.are.equal(3, status, shown(err))
    local printed, np = key_lines(read(dir .. "/keys"), "stdout's file")
    assert.is_true(np > 0 and np < n, np .. " lines on stdout")
    for org, key in pairs(printed) do H.assert_key_equal(H.org(org).api_key, key, org) end
    local jpath = the_journal(jdir, err)
    assert.is_truthy(err:find(jpath, 1, true))
    local by = journal_of(jpath)
    for _, o in ipairs(list) do
      assert.are.equal(1, H.org(o.org_id).rotations)
      assert_journaled(by, o.org_id, false)
    end
    no_keys(list, { err }, true)
  end)
end)

-- =======================================================================
describe("slashid-rotate --shard, --version, --debug", function()
  it("--shard K/3 for K = 0, 1, 2 over one file: each org rotated once, in the shard FNV-1a(id) % 3 names", function()
    -- core.fnv1a32 is the 32-bit FNV-1a of the reference vectors
    assert.are.equal(2166136261, core.fnv1a32(""))
    assert.are.equal(0xe40c292c, core.fnv1a32("a"))
    assert.are.equal(0xbf9cf968, core.fnv1a32("foobar"))
    local path, list = orgs_file(30)
    local shard_of = {}
    for _, o in ipairs(list) do shard_of[o.org_id] = core.fnv1a32(o.org_id) % 3 end
    local dir = private_dir("saved")
    local seen = {}
    for k = 0, 2 do
      local save = dir .. "/shard" .. k
      local status, out, err = run({ "--orgs", path, "--base-url", H.http_url, "--shard", k .. "/3",
                                     "--save-to", save },
                                   { env = { SLASHID_JOURNAL_DIR = private_dir() } })
      assert.are.equal(0, status, shown(err))
      assert_empty(out, "stdout")
      local saved = key_lines(read(save) or "")
      for _, o in ipairs(list) do
        local org = o.org_id
        local rotations = H.org(org).rotations
        if shard_of[org] == k then
          assert.is_nil(seen[org], "in two shards: " .. org)
          seen[org] = k
          H.assert_key_equal(H.org(org).api_key, saved[org], "shard " .. k .. ": " .. org)
          assert.are.equal(1, rotations)
        else
          assert(saved[org] == nil, "shard " .. k .. " took an org of shard " .. shard_of[org])
          assert.are.equal(shard_of[org] < k and 1 or 0, rotations)
        end
      end
    end
    for _, o in ipairs(list) do assert.are.equal(1, H.org(o.org_id).rotations) end
  end)

  it("--version prints `slashid-rotate VERSION (libcurl VERSION)` and exits 0", function()
    local jdir = private_dir()
    local status, out, err = run({ "--version" }, { env = { SLASHID_JOURNAL_DIR = jdir } })
    assert.are.equal(0, status, shown(err))
    local version, curl = out:match("^slashid%-rotate (%S+) %(libcurl (%d+%.%d+%.%d+[^)]*)%)\n$")
    assert(version, "unexpected --version output: " .. out)
    assert.are.equal(slashid._VERSION, version)
    assert.are.equal(core.curl_version, curl)
    assert_empty(err, "stderr")
    assert.are.equal(0, #files_in(jdir))
  end)

  it("--debug traces to stderr with `SlashID-API-Key: <redacted>` and neither key", function()
    local org, key = H.new_org()
    local save = private_dir("saved") .. "/key"
    local status, out, err = run({ "--org-id", org, "--base-url", H.http_url, "--save-to", save,
                                   "--debug" },
                                 { env = { SLASHID_JOURNAL_DIR = private_dir(), SLASHID_API_KEY = key } })
    assert.are.equal(0, status, shown(err))
    assert.is_truthy(err:find("SlashID-API-Key: <redacted>", 1, true), "no redacted key header in the trace")
    assert.is_truthy(err:find("PUT /organizations/api-keys", 1, true), "no request in the trace")
    local new = H.org(org).api_key
    H.assert_key_equal(new .. "\n", read(save))
    H.assert_no_secret(err .. out, key)
    H.assert_no_secret(err .. out, new)
    assert_empty(out, "stdout")
  end)
end)

-- =======================================================================
describe("slashid-rotate's journal by default", function()
  local function one_kept(env, unset)
    local org, key = H.new_org()
    env.SLASHID_API_KEY = key
    local status, out, err = run({ "--org-id", org, "--base-url", H.http_url },
                                 { env = env, unset = unset })
    assert.are.equal(0, status, shown(err))
    H.assert_key_equal(H.org(org).api_key .. "\n", out)   -- on stdout: the journal is kept
    return org, err
  end

  it("under $XDG_STATE_HOME/slashid-rotate (0700), the file 0600, when SLASHID_JOURNAL_DIR is unset", function()
    local base = H.mkdir(H.tmpname("xdg"))
    local home = H.mkdir(base .. "/home")
    local state = base .. "/state"
    local org, err = one_kept({ XDG_STATE_HOME = state, HOME = home }, { "SLASHID_JOURNAL_DIR" })
    local jdir = state .. "/slashid-rotate"
    assert.are.equal("700", H.mode(jdir))
    local jpath = the_journal(jdir, err)
    assert.are.equal("600", H.mode(jpath))
    assert.is_truthy(err:find(jpath, 1, true))
    assert_journaled(journal_of(jpath), org, false)
    assert.are.equal(0, #files_in(home), "something was made under $HOME")
  end)

  it("under $HOME/.local/state/slashid-rotate when only HOME is set (directories made 0700)", function()
    local home = H.mkdir(H.tmpname("home"))
    local org, err = one_kept({ HOME = home }, { "SLASHID_JOURNAL_DIR", "XDG_STATE_HOME" })
    local jdir = home .. "/.local/state/slashid-rotate"
    for _, d in ipairs({ home .. "/.local", home .. "/.local/state", jdir }) do
      assert.are.equal("700", H.mode(d), d)
    end
    local jpath = the_journal(jdir, err)
    assert.are.equal("600", H.mode(jpath))
    assert.is_truthy(err:find(jpath, 1, true))
    assert_journaled(journal_of(jpath), org, false)
  end)

  it("a journal that cannot be made (the dir is a file, or others may write it; --journal naming a used " ..
     "one): exit 64 naming --journal / --no-journal, no request", function()
    local base = H.mkdir(H.tmpname("badjournal"))
    local cases = {
      { "a file", { SLASHID_JOURNAL_DIR = write(base .. "/file", "x") } },
      { "world-writable", { SLASHID_JOURNAL_DIR = H.mkdir(base .. "/o") }, "757" },
      { "group-writable", { SLASHID_JOURNAL_DIR = H.mkdir(base .. "/g") }, "775" },
      { "world-writable, sticky", { SLASHID_JOURNAL_DIR = H.mkdir(base .. "/t") }, "1777" },
    }
    for _, c in ipairs(cases) do
      if c[3] then assert(sh("chmod " .. c[3] .. " " .. q(c[2].SLASHID_JOURNAL_DIR))) end
      local org, key = H.new_org()
      c[2].SLASHID_API_KEY = key
      local status, out, err = run({ "--org-id", org, "--base-url", H.http_url }, { env = c[2] })
      assert.are.equal(64, status, c[1] .. ": " .. shown(err))
      assert.is_truthy(err:find("--journal", 1, true), c[1] .. ": --journal not named")
      assert.is_truthy(err:find("--no-journal", 1, true), c[1] .. ": --no-journal not named")
      assert.are.equal(0, H.requests(org), c[1] .. ": a request was sent")
      assert_empty(out, "stdout")
      H.assert_no_secret(err, key)
    end
    -- --journal PATH in a folder others may write; --journal naming a
    -- journal that is not empty (a new run never appends to one)
    local open = H.mkdir(base .. "/open")
    assert(sh("chmod 777 " .. q(open)))
    local mine = private_dir()
    local used = write(mine .. "/used.journal", journal_line(socket.gettime(), "run", "-",
                                                             "format=1 base_url=" .. H.http_url), "600")
    for _, path in ipairs({ open .. "/j", used }) do
      local org, key = H.new_org()
      local status, _, err = run({ "--org-id", org, "--base-url", H.http_url, "--journal", path },
                                 { env = { SLASHID_API_KEY = key } })
      assert.are.equal(64, status, shown(err))
      assert.is_truthy(err:find("--no-journal", 1, true), "--no-journal not named")
      assert.are.equal(0, H.requests(org), "a request was sent")
    end
    assert.are.equal(1, #lines_of(read(used)), "a record was added to a used journal")
  end)
end)

-- =======================================================================
-- Findings of the journal's review (issue 15), each as the reviewer
-- reproduced it.

-- The emulator's record is the truth: `org`'s current key is in the save
-- file (`saved`: org -> key), or the journal at `jpath` is still there and
-- holds it (rotated). Never shows a key.
local function key_kept(org, saved, jpath, why)
  local current = H.org(org).api_key
  if saved[org] == current then return "saved" end
  assert(exists(jpath), org .. ": its key is neither in the save file nor in a kept journal (" ..
         why .. ")")
  local e = journal_of(jpath)[org]
  assert(e and e.state == "rotated" and e.api_key == current,
         org .. ": its key is neither in the save file nor in the kept journal (" .. why .. ")")
  return "journal"
end

-- Runs `fn` and, whatever it raised, `cleanup` (then raises it again).
local function finally(fn, cleanup)
  local ok, err = pcall(fn)
  cleanup()
  if not ok then error(err, 0) end
end

describe("slashid-rotate --resume stopped by a first SIGINT", function()
  it("while it waits out the interrupted run's time limit: the journaled key is still delivered, " ..
     "the organization in flight is reported unknown (not never started), the journal is kept; a later " ..
     "--resume says lost", function()
    local a, ka = H.new_org()
    local b, kb = H.new_org()
    H.faults(b, { { delay = 2 } })     -- the server rotates it after the kill
    local list = { { org_id = a, api_key = ka }, { org_id = b, api_key = kb } }
    local path = list_file(list)
    local jdir = private_dir()
    local env = { SLASHID_JOURNAL_DIR = jdir }
    local job = spawn({ "--orgs", path, "--base-url", H.http_url, "--concurrency", "2",
                        "--request-timeout", "8" }, { env = env })
    wait_for("A's key journaled, B sent", 20, function()
      local f = files_in(jdir)[1]
      local entries = f and slashid.read_journal(f)
      local st = {}
      for _, e in ipairs(entries or {}) do st[e.org_id] = e.state end
      return (st[a] == "rotated" and st[b] == "sent") or job.ended()
    end)
    assert.is_false(job.ended(), "the run ended before the kill: " .. shown(job.err()))
    job.kill("KILL")
    assert.are.equal(137, (job.wait(20)))
    local jpath = the_journal(jdir)
    wait_for("B's delayed request to land", 20, function() return H.org(b).rotations == 1 end)

    local save = private_dir("saved") .. "/keys.tsv"
    local resume = spawn({ "--resume", jpath, "--orgs", path, "--base-url", H.http_url,
                           "--save-to", save, "--json" }, { env = env })
    wait_for("--resume to wait", 20, function()
      return resume.err():find("waiting", 1, true) ~= nil or resume.ended()
    end)
    assert.is_false(resume.ended(), "--resume did not wait: " .. shown(resume.err()))
    resume.kill("INT")
    local status, out, err = resume.wait(30)
    local saved = key_lines(read(save) or "", "the save file")
    key_kept(a, saved, jpath, "after the stopped --resume")
    assert.is_true(exists(jpath), "the journal was removed: B is not decided: " .. shown(err))
    assert.is_nil(err:find("never started", 1, true), "listed as never started:\n" .. shown(err))
    local json = json_lines(out)
    assert.are.equal("rotated", json[a] and json[a].outcome, shown(out))
    assert.are.equal("unknown", json[b] and json[b].outcome, shown(out))
    assert.are.equal(2, status, shown(err))
    assert.is_truthy(err:find(jpath, 1, true), "the kept journal is not named on stderr")
    local st = journal_of(jpath)[b].state
    assert.is_truthy(st == "sent" or st == "unknown", "B: " .. tostring(st) .. " in the journal")
    assert.are.equal(1, H.org(a).rotations)
    no_keys(list, { out, err }, true)

    -- nothing was dropped: a later --resume finishes it (B's key never arrived: lost)
    local save2 = private_dir("saved") .. "/keys.tsv"
    local status2, out2, err2 = run({ "--resume", jpath, "--orgs", path, "--base-url", H.http_url,
                                      "--save-to", save2, "--json" }, { env = env })
    assert.are.equal(4, status2, shown(err2))
    assert.are.equal("lost", json_lines(out2)[b].outcome)
    local saved2 = key_lines(read(save2) or "", "the second save file")
    if saved[a] ~= H.org(a).api_key then
      H.assert_key_equal(H.org(a).api_key, saved2[a], "A's key was never delivered")
    end
    for _, o in ipairs(list) do assert.are.equal(1, H.org(o.org_id).rotations, o.org_id) end
  end)

  it("while an organization is in flight: it finishes and is saved, the journaled key is still " ..
     "delivered, a journaled lost organization is reported lost (exit 4); no key is dropped", function()
    -- run 1: B rotated, its key on stdout only (the journal keeps it)
    local b, kb = H.new_org()
    local jdir = private_dir()
    local env = { SLASHID_JOURNAL_DIR = jdir }
    local status1, _, err1 = run({ "--orgs", list_file({ { org_id = b, api_key = kb } }),
                                   "--base-url", H.http_url }, { env = env })
    assert.are.equal(0, status1, shown(err1))
    local jpath = the_journal(jdir, err1)
    -- L: recorded lost by an earlier --resume of that run (records as journal.lua writes them)
    local l, kl = H.new_org()
    local f = assert(io.open(jpath, "ab"))
    f:write(journal_line(socket.gettime(), "sent", l, "rt=3"),
            journal_line(socket.gettime(), "lost", l, "-"))
    f:close()
    -- A: new, slow to answer; listed first, so it is in flight when the signal comes
    local a, ka = H.new_org()
    H.faults(a, { { delay = 2 } })
    local list = { { org_id = a, api_key = ka }, { org_id = b, api_key = kb },
                   { org_id = l, api_key = kl } }
    local save = private_dir("saved") .. "/keys.tsv"
    local job = spawn({ "--resume", jpath, "--orgs", list_file(list), "--base-url", H.http_url,
                        "--save-to", save, "--concurrency", "1", "--json" }, { env = env })
    wait_for("A in flight", 20, function() return H.requests(a) >= 1 or job.ended() end)
    assert.is_false(job.ended(), "--resume ended early: " .. shown(job.err()))
    job.kill("INT")
    local status, out, err = job.wait(30)
    local saved = key_lines(read(save) or "", "the save file")
    H.assert_key_equal(H.org(a).api_key, saved[a], "A finished in flight but was not saved")
    key_kept(b, saved, jpath, "after the stopped --resume")
    assert.is_nil(err:find("never started", 1, true), "listed as never started:\n" .. shown(err))
    local json = json_lines(out)
    assert.are.equal("rotated", json[a] and json[a].outcome, shown(out))
    assert.are.equal("rotated", json[b] and json[b].outcome, shown(out))
    assert.are.equal("lost", json[l] and json[l].outcome, shown(out))
    assert.are.equal(4, status, shown(err))
    for _, o in ipairs({ a, b }) do assert.are.equal(1, H.org(o).rotations, o) end
    assert.are.equal(0, H.requests(l), "a request for the lost organization")
    -- kept unless every key was delivered: here L is lost, so kept
    assert.is_true(exists(jpath), "the journal was removed: " .. shown(err))
    assert.are.equal("lost", journal_of(jpath)[l].state)
    no_keys(list, { out, err }, true)
  end)
end)

-- An LD_PRELOAD shim (compiled at test time): every write(2) to a file
-- whose path holds SHIM_MATCH fails with ENOSPC, from the first one whose
-- data holds SHIM_FROM on (a disk that fills up at that record).
local ENOSPC_SHIM = [[
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static int failing;
static int watched(int fd) {
  char link[64], path[4096];
  const char *m = getenv("SHIM_MATCH");
  ssize_t n;
  if (!m || !*m) return 0;
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  n = readlink(link, path, sizeof path - 1);
  if (n <= 0) return 0;
  path[n] = 0;
  return strstr(path, m) != NULL;
}
ssize_t write(int fd, const void *buf, size_t n) {
  static ssize_t (*real)(int, const void *, size_t);
  const char *from = getenv("SHIM_FROM");
  if (!real) real = (ssize_t (*)(int, const void *, size_t))dlsym(RTLD_NEXT, "write");
  if (fd > 2 && watched(fd)) {
    if (!failing && from && memmem(buf, n, from, strlen(from))) failing = 1;
    if (failing) { errno = ENOSPC; return -1; }
  }
  return real(fd, buf, n);
}
]]

-- The shim built in a scratch folder: its path, or nil and why not.
local function enospc_shim()
  if not sh("command -v cc >/dev/null 2>&1") then return nil, "needs a C compiler (cc)" end
  local dir = private_dir("shim")
  write(dir .. "/enospc.c", ENOSPC_SHIM)
  local so = dir .. "/enospc.so"
  if not sh(("env -u LD_PRELOAD cc -shared -fPIC -o %s %s -ldl >/dev/null 2>&1")
            :format(q(so), q(dir .. "/enospc.c"))) then
    return nil, "cc could not build the LD_PRELOAD shim"
  end
  return so
end

describe("slashid-rotate whose journal fails in a later round", function()
  it("--orgs from a pipe that stalls; the journal fails (ENOSPC) as A's key arrives, B comes later: " ..
     "exit 3 (not 64), B not sent, A's key stored or in a rescue file, stderr names A", function()
    local so, why = enospc_shim()
    if not so then pending(why) return end
    local a, ka = H.new_org()
    local b, kb = H.new_org()
    local dir = private_dir("round2")
    local la = write(dir .. "/a.tsv", a .. "\t" .. ka .. "\n")
    local lb = write(dir .. "/b.tsv", b .. "\t" .. kb .. "\n")
    local jdir = private_dir()
    local jpath = jdir .. "/run.journal"
    local rescue = private_dir("rescue")
    local stored = private_dir("stored")
    -- a slow store: A's delivery is still under way when B starts a second round
    local store = ("sleep 3; cat >%s/\"$SLASHID_ORG_ID\""):format(q(stored))
    local cmd = cmdline({ "--orgs", "-", "--base-url", H.http_url, "--journal", jpath,
                          "--store-cmd", store },
                        { env = { LD_PRELOAD = ((os.getenv("LD_PRELOAD") or "") .. " " .. so)
                                                 :gsub("^ ", ""),
                                  SHIM_MATCH = jdir, SHIM_FROM = "\trotated\t",
                                  TMPDIR = rescue } })
    local job = H.spawn("sh -c " .. q(("{ cat %s; sleep 2; cat %s; sleep 1; } | %s")
                                      :format(q(la), q(lb), cmd)))
    local status, _, err = job.wait(60)
    assert.are.equal(3, status, shown(err))
    assert.are.equal(1, H.org(a).rotations)
    local current = H.org(a).api_key
    local in_store = read(stored .. "/" .. a) == current
    local in_rescue = false
    for _, f in ipairs(H.rescue_files(rescue)) do
      if (read(f) or ""):find(a .. "\t" .. current .. "\n", 1, true) then in_rescue = true end
    end
    assert(in_store or in_rescue, "A's key is neither stored nor in a rescue file:\n" .. shown(err))
    assert.are.equal(0, H.requests(b), "B was sent with the journal failed")
    assert.is_truthy(err:find(a, 1, true), "stderr does not name A:\n" .. shown(err))
    no_keys({ { org_id = a, api_key = ka }, { org_id = b, api_key = kb } }, { err }, true)
  end)
end)

describe("slashid-rotate's store commands and SLASHID_API_KEY", function()
  local function env_of(dir, org)
    local text = read(dir .. "/" .. org .. ".env")
    assert(text and #text > 0, "the store command recorded no environment for " .. org)
    return text
  end

  it("a store command's environment never holds SLASHID_API_KEY (exported beside --orgs; " ..
     "the old key of --org-id)", function()
    local dir = private_dir("storeenv")
    local store = ('cat >%s/"$SLASHID_ORG_ID.key"; env >%s/"$SLASHID_ORG_ID.env"'):format(q(dir), q(dir))
    -- an --orgs run with SLASHID_API_KEY exported (some value)
    local exported = ("sk_exported%08x%08x"):format(math.random(0, 0x7fffffff), math.random(0, 0x7fffffff))
    local path, list = orgs_file(2)
    local status, out, err = run({ "--orgs", path, "--base-url", H.http_url, "--store-cmd", store },
                                 { env = { SLASHID_JOURNAL_DIR = private_dir(),
                                           SLASHID_API_KEY = exported } })
    assert.are.equal(0, status, shown(err))
    for _, o in ipairs(list) do
      H.assert_key_equal(H.org(o.org_id).api_key, read(dir .. "/" .. o.org_id .. ".key"), o.org_id)
      local text = env_of(dir, o.org_id)
      H.assert_no_secret(text, exported)
      assert.is_nil(("\n" .. text):find("\nSLASHID_API_KEY=", 1, true),
                    "SLASHID_API_KEY is in the store command's environment")
    end
    no_keys(list, { out, err }, true)
    -- one organization, its old key in SLASHID_API_KEY
    local org, key = H.new_org()
    local status2, out2, err2 = run({ "--org-id", org, "--base-url", H.http_url, "--store-cmd", store },
                                    { env = { SLASHID_JOURNAL_DIR = private_dir(),
                                              SLASHID_API_KEY = key } })
    assert.are.equal(0, status2, shown(err2))
    H.assert_key_equal(H.org(org).api_key, read(dir .. "/" .. org .. ".key"))
    local text = env_of(dir, org)
    H.assert_no_secret(text, key)
    assert.is_nil(("\n" .. text):find("\nSLASHID_API_KEY=", 1, true),
                  "SLASHID_API_KEY is in the store command's environment")
  end)
end)

describe("slashid-rotate --resume given another key than the interrupted run presented", function()
  it("in flight when the run was killed (the server never rotated it), resumed with a mistyped key: " ..
     "unknown (exit 2), not lost; resumed with the right key: rotated once", function()
    local a, ka = H.new_org()
    H.faults(a, { { delay = 3, status = 500, message = "later" } })
    local typo = ka:sub(1, -2) .. (ka:sub(-1) == "x" and "y" or "x")
    local path = list_file({ { org_id = a, api_key = ka } })
    local typo_path = list_file({ { org_id = a, api_key = typo } })
    local jdir = private_dir()
    local env = { SLASHID_JOURNAL_DIR = jdir }
    local job = spawn({ "--orgs", path, "--base-url", H.http_url, "--request-timeout", "2" },
                      { env = env })
    wait_for("A sent", 20, function()
      local f = files_in(jdir)[1]
      local entries = f and slashid.read_journal(f)
      local sent = false
      for _, e in ipairs(entries or {}) do sent = sent or (e.org_id == a and e.state == "sent") end
      return (sent and H.requests(a) >= 1) or job.ended()
    end)
    assert.is_false(job.ended(), "the run ended before the kill: " .. shown(job.err()))
    job.kill("KILL")
    assert.are.equal(137, (job.wait(20)))
    local jpath = the_journal(jdir)

    local status, out, err = run({ "--resume", jpath, "--orgs", typo_path, "--base-url", H.http_url,
                                   "--json", "--request-timeout", "2" }, { env = env })
    assert.are.equal(0, H.org(a).rotations)
    local obj = json_lines(out)[a]
    assert(obj, "no JSON line for A: " .. shown(err))
    assert.are.equal("unknown", obj.outcome, shown(err))
    assert.are.equal(2, status, shown(err))
    assert.is_true(exists(jpath), "the journal was removed")
    assert.are.equal("unknown", journal_of(jpath)[a].state)
    no_keys({ { org_id = a, api_key = ka }, { org_id = a, api_key = typo } }, { out, err }, true)

    local save = private_dir("saved") .. "/keys.tsv"
    local status2, out2, err2 = run({ "--resume", jpath, "--orgs", path, "--base-url", H.http_url,
                                      "--save-to", save, "--request-timeout", "2" }, { env = env })
    assert.are.equal(0, status2, shown(err2))
    local state = H.org(a)
    assert.are.equal(1, state.rotations)
    H.assert_key_equal(state.api_key, key_lines(read(save))[a])
    assert.is_false(exists(jpath), "the journal was kept: " .. shown(err2))
    no_keys({ { org_id = a, api_key = ka } }, { out2, err2 }, true)
  end)
end)

describe("slashid-rotate whose stdout reader never reads", function()
  it("a FIFO held open by a reader that never reads, --json over 1500 organizations: two SIGINTs " ..
     "end the command within seconds, not exit 0, every rotated key in the journal", function()
    local n = 1500
    local path, list = orgs_file(n)
    local jdir = private_dir()
    local dir = private_dir("stuck")
    local fifo = dir .. "/stdout"
    assert(sh("mkfifo -m 600 " .. q(fifo)))
    local reader = H.spawn("sleep 300", fifo)     -- opens it, never reads
    local job = H.spawn("sh -c " .. q("exec " .. cmdline({ "--orgs", path, "--base-url", H.http_url,
                                                           "--json", "--concurrency", "16" },
                                                         { env = { SLASHID_JOURNAL_DIR = jdir } }) ..
                                      " >" .. q(fifo)))
    local function rotated_records()
      local f = files_in(jdir)[1]
      local text = f and read(f) or ""
      local c = 0
      for _ in text:gmatch("\trotated\t") do c = c + 1 end
      return c
    end
    local ended_in_time
    finally(function()
      -- stuck: no new rotated record for 1.5 s (the pipe is full)
      local last, since = -1, socket.gettime()
      wait_for("the output to fill the pipe", 120, function()
        if job.ended() then return true end
        local c = rotated_records()
        if c ~= last then last, since = c, socket.gettime() end
        return c > 0 and socket.gettime() - since > 1.5
      end)
      assert.is_false(job.ended(), "the command ended with nobody reading: " .. shown(job.err()))
      assert.is_true(last < n, "every organization was printed: the pipe never filled")
      job.kill("INT")
      wait_for("the first signal to be taken", 10, function()
        return job.err():find("interrupted", 1, true) ~= nil or job.ended()
      end)
      if not job.ended() then job.kill("INT") end
      ended_in_time = pcall(wait_for, "the command to end", 5, job.ended)
    end, function()
      if not job.ended() then sh("kill -9 " .. job.pid .. " 2>/dev/null") end
      sh("kill " .. reader.pid .. " 2>/dev/null")
    end)
    local status, _, err = job.wait(20)
    assert.is_true(ended_in_time, "still running 5 s after the second SIGINT")
    assert.are_not.equal(0, status, shown(err))
    local jpath = the_journal(jdir, err)
    local by = journal_of(jpath)
    local rotated = 0
    for _, o in ipairs(list) do
      if H.org(o.org_id).rotations > 0 then
        rotated = rotated + 1
        assert_journaled(by, o.org_id, nil)
      end
    end
    assert.is_true(rotated > 0)
    no_keys(list, { err }, true)
  end)
end)

describe("slashid-rotate --store-timeout while the input is idle", function()
  it("--orgs - from a producer that stays open: the store command (sleep 100) is killed about 1 s " ..
     "after it starts, long before the input ends; exit 3, the key kept in the journal", function()
    local a, ka = H.new_org()
    local dir = private_dir("idle")
    local line = write(dir .. "/a.tsv", a .. "\t" .. ka .. "\n")
    local pidfile = dir .. "/producer.pid"
    -- one line, then 15 s of silence with the pipe open
    local producer = ("sh -c %s"):format(q(("cat %s; echo $$ >%s; exec sleep 15")
                                           :format(q(line), q(pidfile))))
    -- (unique to this run: the clock's microseconds, a random number)
    local marker = ("sleep 100.%06d%04d"):format(math.floor(socket.gettime() * 1e6) % 1000000,
                                                 math.random(0, 9999))
    local jdir = private_dir()
    local cmd = cmdline({ "--orgs", "-", "--base-url", H.http_url, "--store-timeout", "1",
                          "--store-cmd", marker }, { env = { SLASHID_JOURNAL_DIR = jdir } })
    local job = H.spawn("sh -c " .. q(producer .. " | " .. cmd))
    local seen_at
    finally(function()
      wait_for("the producer", 10, function() return exists(pidfile) end)
      local t0 = socket.gettime()
      wait_for("the store command to start", 10, function() return H.org(a).rotations == 1 end)
      local ok = pcall(wait_for, "\"timed out\" on stderr", 6, function()
        return job.err():find("timed out", 1, true) ~= nil or job.ended()
      end)
      seen_at = ok and socket.gettime() - t0
      assert(seen_at, "no \"timed out\" on stderr 6 s after the key arrived (the input still " ..
             "open):\n" .. shown(job.err()))
      assert.is_false(job.ended(), "the command ended with its input still open")
    end, function()
      local pid = tonumber((read(pidfile) or ""):match("%d+"))
      if pid then sh("kill " .. pid .. " 2>/dev/null") end     -- ends the input
    end)
    local status, out, err = job.wait(30)
    local p = io.popen(pgrep_exact(marker))
    local left = p:read("*a")
    p:close()
    for pid in left:gmatch("%d+") do sh("kill -9 " .. pid) end   -- our own leftovers
    assert.are.equal("", left, "the store command's process outlived its kill")
    assert.are.equal(3, status, shown(err))
    assert.are.equal(1, H.org(a).rotations)
    local jpath = the_journal(jdir, err)
    assert_journaled(journal_of(jpath), a, false)
    assert_empty(out, "stdout")
    no_keys({ { org_id = a, api_key = ka } }, { out, err }, true)
  end)
end)

describe("slashid-rotate and a new key holding a byte outside printable ASCII", function()
  it("--json: one object, whose errors say the key is only in the journal; exit 3", function()
    local org, key = H.new_org()
    H.faults(org, { { status = 200, rotate = true,
                      body = '{"errors":[],"result":{"api_key":"sk_line\\nbreak_key_0123456789"}}' } })
    local status, out, err = run({ "--org-id", org, "--base-url", H.http_url, "--json" },
                                 { env = { SLASHID_API_KEY = key } })
    assert.are.equal(3, status, err)
    local objects = {}
    for line in out:gmatch("[^\n]+") do objects[#objects + 1] = cjson.decode(line) end
    assert.are.equal(1, #objects, "one object per organization")
    assert.are.equal("rotated", objects[1].outcome)
    assert.is_nil(objects[1].api_key)
    local said = {}
    for _, e in ipairs(objects[1].errors) do said[#said + 1] = e.message end
    assert.is_truthy(table.concat(said, " "):find("outside printable ASCII", 1, true))
    assert.is_truthy(err:find("journal", 1, true), err)
  end)
end)
