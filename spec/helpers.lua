-- Shared by the specs: the emulator started by spec/run.sh, its control
-- API (over LuaSocket, independent of the code under test), and small
-- utilities. No spec talks to anything but 127.0.0.1.

local cjson = require "cjson"
local http = require "socket.http"
local ltn12 = require "ltn12"
local socket = require "socket"

local H = {}

local function read_file(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end
H.read_file = read_file

local info_path = os.getenv("SLASHID_EMULATOR_INFO")
assert(info_path, "run the specs with `make test` (spec/run.sh starts the emulator)")
H.emulator = cjson.decode(read_file(info_path))
H.http_url = H.emulator.http_url
H.https_url = H.emulator.https_url
H.ca_file = H.emulator.ca_file
H.tmp = os.getenv("SLASHID_SPEC_TMP") or "/tmp"
H.lua = os.getenv("SLASHID_SPEC_LUA") or "lua5.4"

-- One control call: method, path, JSON body -> status, decoded answer.
local function control(method, path, body)
  local out = {}
  local payload = body ~= nil and cjson.encode(body) or nil
  local _, status = http.request{
    url = H.http_url .. path,
    method = method,
    headers = payload and { ["content-type"] = "application/json",
                            ["content-length"] = tostring(#payload) } or nil,
    source = payload and ltn12.source.string(payload) or nil,
    sink = ltn12.sink.table(out),
  }
  local text = table.concat(out)
  local ok, decoded = pcall(cjson.decode, text)
  return status, ok and decoded or text
end
H.control = control

-- A fresh organization for one test: org_id, api_key.
function H.new_org()
  local status, org = control("POST", "/_emulator/orgs", {})
  assert(status == 201, "emulator: cannot create an organization")
  return org.org_id, org.api_key
end

-- A fresh organization whose key is chosen by the test (recognizable,
-- and known before the call so that a fault can quote it literally).
function H.new_org_with_key(key)
  local status, org = control("POST", "/_emulator/orgs", { api_key = key })
  assert(status == 201, "emulator: cannot create an organization")
  assert(org.api_key == key)
  return org.org_id, key
end

-- A loopback listener whose accept queue is full: a new connection's SYN
-- is dropped, so connecting times out (Linux). Returns base_url, close().
function H.blackhole()
  local srv = assert(socket.tcp())
  assert(srv:bind("127.0.0.1", 0))
  assert(srv:listen(0))
  local _, port = srv:getsockname()
  local fillers = {}
  for i = 1, 2 do
    local c = assert(socket.tcp())
    c:settimeout(i == 1 and 1 or 0)
    c:connect("127.0.0.1", port)
    fillers[i] = c
  end
  return "http://127.0.0.1:" .. port, function()
    for _, c in ipairs(fillers) do c:close() end
    srv:close()
  end
end

-- Queue faults (a list of fault objects) for the org's next requests.
function H.faults(org_id, list)
  local status = control("POST", "/_emulator/orgs/" .. org_id .. "/faults", list)
  assert(status == 200 or status == 201 or status == 204, "emulator: faults refused")
end

function H.org(org_id)
  local status, state = control("GET", "/_emulator/orgs/" .. org_id)
  assert(status == 200, "emulator: unknown org")
  return state
end

-- How many API requests the emulator received for this org.
function H.requests(org_id)
  return #H.org(org_id).requests
end

function H.stats()
  local _, stats = control("GET", "/_emulator/stats")
  return stats
end

-- A fresh organization whose key is recognizable, lower case only (so that
-- it can also appear in a header name, which libcurl hands over as sent
-- and answer.c lowers), and known before the call, so that a fault can
-- quote it literally. `tag` (lower case) goes into the key.
local serial = 0
function H.org_with_known_key(tag)
  serial = serial + 1
  return H.new_org_with_key(("sk_%s_%d_%d_%06d_key")
    :format(tag or "known", os.time(), serial, math.random(0, 999999)))
end

-- n fresh organizations: a list of { org_id, api_key }.
function H.orgs(n)
  local t = {}
  for i = 1, n do
    local org, key = H.new_org()
    t[i] = { org_id = org, api_key = key }
  end
  return t
end

-- n fresh organizations written as an --orgs file of slashid-rotate
-- (ORG<TAB>KEY lines); `delays`: seconds before each is answered (a list,
-- or one number for all). Returns the path and the list of
-- { org_id, api_key }.
function H.orgs_file(n, delays)
  local list, text = {}, {}
  for i = 1, n do
    local org, key = H.new_org()
    local d = type(delays) == "number" and delays or (delays and delays[i])
    if d and d > 0 then H.faults(org, { { delay = d } }) end
    list[i] = { org_id = org, api_key = key }
    text[#text + 1] = org .. "\t" .. key .. "\n"
  end
  return H.write(H.tmpname("orgs") .. ".tsv", table.concat(text)), list
end

-- The PUT requests (rotations asked for) the emulator received for an
-- organization (its ID, or its state from H.org).
function H.puts(org)
  local state = type(org) == "table" and org or H.org(org)
  local n = 0
  for _, r in ipairs(state.requests) do
    if r.method == "PUT" then n = n + 1 end
  end
  return n
end

-- Options for a call against the emulator over plain HTTP, with fast
-- retries so that retry specs stay quick.
function H.opts(org_id, api_key, extra)
  local o = { org_id = org_id, api_key = api_key, base_url = H.http_url,
              retry_delay = 0.01, retry_max_delay = 0.05 }
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end

-- A loopback port nobody listens on (bound, then released).
function H.closed_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

-- A base URL on such a port: connecting to it is refused.
function H.closed_url()
  return "http://127.0.0.1:" .. H.closed_port()
end

-- rotate_key's options for each organization of a list (H.orgs).
function H.items(list, extra)
  local t = {}
  for i, o in ipairs(list) do t[i] = H.opts(o.org_id, o.api_key, extra) end
  return t
end

-- SlashID's error envelope with one entry, as a fault's `json`.
function H.envelope(code, message)
  return { errors = { { httpcode = code, message = message } } }
end

-- An HTTP-date `seconds` from now (a Retry-After value).
function H.http_date(seconds)
  return os.date("!%a, %d %b %Y %H:%M:%S GMT", os.time() + seconds)
end

-- JSON text of `depth` objects {"a":...} around "x".
function H.nested_objects(depth)
  return ('{"a":'):rep(depth) .. '"x"' .. ("}"):rep(depth)
end

-- How many keys a table has (a weak table's, after a collection).
function H.count_keys(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n
end

-- A debug function that keeps the trace, and the list it keeps it in.
function H.tracer()
  local lines = {}
  return function(line)
    assert(type(line) == "string", "the trace gives strings")
    lines[#lines + 1] = line
  end, lines
end

local counter = 0
function H.tmpname(name)
  counter = counter + 1
  return ("%s/%s-%d-%d"):format(H.tmp, name or "f", os.time(), counter)
end

-- A string quoted for sh.
function H.q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- Writes content to path (then chmod to mode, if given); returns path.
function H.write(path, content, mode)
  local f = assert(io.open(path, "wb"))
  f:write(content)
  f:close()
  if mode then assert(os.execute("chmod " .. mode .. " " .. H.q(path))) end
  return path
end

-- A file's content, or nil when it cannot be read.
function H.read_if_any(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

-- Whether a file (or anything io.open can open) is there.
function H.exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

-- Runs a shell command line; true when it exited 0 (os.execute's success
-- across 5.1, which gives 0, and 5.2+, which give true).
function H.sh(cmd)
  local a, _, c = os.execute(cmd)
  return a == true or a == 0 or c == 0
end

-- What a shell command line prints on stdout.
function H.capture(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("*a")
  p:close()
  return out
end

-- Runs a shell command line; returns its exit status and its output
-- (stdout and stderr together).
function H.run(cmd)
  local p = assert(io.popen(cmd .. " 2>&1; echo \"exit=$?\""))
  local out = p:read("*a")
  p:close()
  local status = tonumber(out:match("exit=(%d+)%s*$"))
  return status, (out:gsub("exit=%d+%s*$", ""))
end

-- Whether a program is on PATH.
function H.have(program)
  return H.run("command -v " .. program .. " >/dev/null") == 0
end

-- The whole lines of a text (a last line without its newline is left out).
function H.lines_of(text)
  local t = {}
  for line in (text or ""):gmatch("([^\n]*)\n") do t[#t + 1] = line end
  return t
end

-- The ORG<TAB>KEY lines of slashid-rotate's output or --save-to file, as
-- { [org] = key } and their count; fails on any other line, on an
-- organization twice, and on a last line cut short. `what` names the text
-- in those failures (never a key).
function H.key_lines(text, what)
  text = text or ""
  assert(text == "" or text:sub(-1) == "\n", (what or "file") .. ": the last line is cut short")
  local t, n = {}, 0
  for i, line in ipairs(H.lines_of(text)) do
    local org, key = line:match("^([^\t]+)\t([^\t]+)$")
    assert(org, ("%s line %d is not a whole ORG<TAB>KEY line"):format(what or "file", i))
    assert(t[org] == nil, (what or "file") .. ": an organization twice")
    t[org], n = key, n + 1
  end
  return t, n
end

function H.mkdir(path)
  assert(os.execute("mkdir -p '" .. path .. "'"))
  return path
end

-- Octal permission bits of a file, e.g. "600".
function H.mode(path)
  local p = io.popen("stat -c %a '" .. path .. "'")
  local m = p:read("*l")
  p:close()
  return m
end

-- Every string reachable from a value (keys and values, nested), joined:
-- used to assert that a secret appears nowhere in what a call returned.
function H.flatten(...)
  local parts, seen = {}, {}
  local function walk(v)
    local t = type(v)
    if t == "string" then
      parts[#parts + 1] = v
    elseif t == "number" or t == "boolean" then
      parts[#parts + 1] = tostring(v)
    elseif t == "table" and not seen[v] then
      seen[v] = true
      for k, x in pairs(v) do walk(k); walk(x) end
    end
  end
  for i = 1, select("#", ...) do walk((select(i, ...))) end
  return table.concat(parts, "\n")
end

-- The messages of an errors list, for an assertion's explanation; with
-- `codes`, each one led by "[httpcode/curl_code]".
function H.messages(errors, codes)
  local t = {}
  for _, e in ipairs(errors or {}) do
    t[#t + 1] = codes and ("[%s/%s] %s"):format(tostring(e.httpcode), tostring(e.curl_code),
                                               tostring(e.message))
                       or tostring(e.message)
  end
  return table.concat(t, " | ")
end

-- Asserts two keys are the same without ever printing either (busted's
-- equality assertions print both values when they fail).
function H.assert_key_equal(expected, actual, why)
  if expected ~= actual then
    error(("keys differ (not shown)%s"):format(why and (": " .. tostring(why)) or ""), 2)
  end
end

-- A batch item `out` for org `o` ({ org_id, api_key }) was rotated: the
-- server holds the key it returned, and that key is a new one.
function H.assert_rotated(o, out)
  assert(out.info.outcome == "rotated", "not rotated: " .. H.messages(out.errors))
  H.assert_key_equal(H.org(o.org_id).api_key, out.result.api_key)
  assert(o.api_key ~= out.result.api_key, "the old key came back")
end

-- Asserts `secret` is not found (plainly) in `text`.
function H.assert_no_secret(text, secret)
  assert(type(secret) == "string" and #secret >= 8, "bad secret for the check")
  if text:find(secret, 1, true) then
    error("a secret was found where it must not be", 2)
  end
end

-- Polls cond() every 20 ms for at most `seconds`; fails naming `what`.
-- Specs wait for conditions, never for fixed times (a loaded machine).
function H.wait_for(what, seconds, cond)
  local socket = require "socket"
  local deadline = socket.gettime() + seconds
  while not cond() do
    assert(socket.gettime() < deadline, "timed out waiting for " .. what)
    socket.sleep(0.02)
  end
end

-- Runs a shell command line in the background, stdin from `stdin` (a
-- path; default /dev/null). Returns a job: job.pid, job.dir (out, err,
-- rc), job.kill(sig), job.ended(), job.wait(seconds) -> status, out, err.
function H.spawn(cmdline, stdin)
  local dir = H.mkdir(H.tmpname("spawn"))
  H.write(dir .. "/run.sh", ("%s >%s/out 2>%s/err <%s &\necho $! >%s/pid.tmp\n" ..
                           "mv %s/pid.tmp %s/pid\nwait $!\necho $? >%s/rc.tmp\nmv %s/rc.tmp %s/rc\n")
    :format(cmdline, dir, dir, H.q(stdin or "/dev/null"), dir, dir, dir, dir, dir, dir))
  os.execute("sh " .. dir .. "/run.sh >/dev/null 2>&1 &")
  H.wait_for("the command to start", 10, function() return H.read_if_any(dir .. "/pid") ~= nil end)
  local job = { dir = dir, pid = tonumber((H.read_file(dir .. "/pid"):gsub("%s+$", ""))) }
  function job.kill(sig)
    local a, _, c = os.execute("kill -" .. sig .. " " .. job.pid)
    assert(a == true or a == 0 or c == 0, "kill -" .. sig .. " failed")
  end
  function job.ended() return H.read_if_any(dir .. "/rc") ~= nil end
  function job.wait(seconds)
    H.wait_for("the command to end", seconds or 20, job.ended)
    return tonumber((H.read_file(dir .. "/rc"):gsub("%s+$", ""))),
           H.read_if_any(dir .. "/out"), H.read_if_any(dir .. "/err")
  end
  function job.err() return H.read_if_any(dir .. "/err") or "" end
  return job
end

-- Why `make check-hosts` left out the packages of GROUP (it never removes a
-- package to install one): build/skipped-packages/GROUP, written by
-- scripts/deps.sh, says which package conflicts and how to enable it;
-- nil when the group was installed.
function H.left_out(group)
  local f = io.open("build/skipped-packages/" .. group, "rb")
  if not f then return nil end
  local why = f:read("*a"):gsub("%s+$", "")
  f:close()
  return why
end

-- ---- slashid-rotate's journal and rescue files ---------------------------

-- The names in a folder, sorted (none when it is missing).
function H.ls(dir)
  local t = {}
  local p = io.popen("ls -A " .. H.q(dir) .. " 2>/dev/null")
  for name in p:lines() do t[#t + 1] = name end
  p:close()
  table.sort(t)
  return t
end

-- A fresh, empty folder (mode 0700) to give a command run as its
-- SLASHID_JOURNAL_DIR: the run's journal is then the one file in it, and
-- its removal shows. `owner`: a user to give it to (a command run as that
-- user); it is then made under /tmp, as the specs' scratch folder is
-- closed to other users, and removing it is the caller's job.
function H.journal_dir(owner)
  if not owner then
    local dir = H.tmpname("journals")
    assert(os.execute("mkdir -m 0700 " .. H.q(dir)))
    return dir
  end
  -- (run without a sanitizer runtime a check-asan run preloads)
  local plain = "env -u LD_PRELOAD "
  local dir = ("/tmp/slashid-journals-%s-%d"):format(H.tmpname():match("[^/]+$"),
                                                    math.random(1000000))
  assert(os.execute(plain .. "mkdir -m 0700 " .. H.q(dir) .. " && " .. plain .. "chown " ..
                    H.q(owner) .. " " .. H.q(dir)))
  return dir
end

-- The journal a command's stderr names as kept ("journal PATH kept"), or nil.
function H.kept_journal(err)
  return (err or ""):match("journal (%S+) kept")
end

-- The run whose journals went to `dir` (H.journal_dir) kept its journal:
-- the one file there, mode 0600, named on stderr. Returns its path.
function H.assert_journal_kept(dir, err)
  local files = H.ls(dir)
  assert(#files == 1, ("one journal expected in %s, found %d"):format(dir, #files))
  local path = dir .. "/" .. files[1]
  assert(H.kept_journal(err) == path, "stderr does not name the journal as kept")
  assert(H.mode(path) == "600", "the journal is not mode 0600")
  return path
end

-- Asserts that the journal at `path` (slashid.read_journal) names each
-- organization of `orgs` (a list of IDs) as rotated, with the key the
-- emulator holds for it now, delivered as `delivered` says (default
-- false), and that no line of it was skipped. No key is ever shown.
-- Returns the entries by organization.
function H.assert_journal_holds(path, orgs, delivered)
  if delivered == nil then delivered = false end
  local entries, skipped = require("slashid").read_journal(path)
  assert(entries, "cannot read the journal: " .. tostring(skipped))
  assert(skipped == 0, tostring(skipped) .. " line(s) of the journal skipped")
  local by = {}
  for _, e in ipairs(entries) do by[e.org_id] = e end
  for _, org in ipairs(orgs) do
    local e = by[org]
    assert(e, "the journal does not name " .. org)
    assert(e.state == "rotated", org .. ": state " .. tostring(e.state) .. " in the journal")
    H.assert_key_equal(H.org(org).api_key, e.api_key, "the journal's key of " .. org)
    assert(e.delivered == delivered, ("%s: delivered is %s in the journal, %s expected")
      :format(org, tostring(e.delivered), tostring(delivered)))
  end
  return by
end

-- A fresh folder of mode 0700 (a journal's folder must not be open to
-- other users).
function H.private_dir(name)
  local dir = H.mkdir(H.tmpname(name or "private"))
  assert(H.sh("chmod 700 " .. H.q(dir)))
  return dir
end

-- The rescue files (slashid-rotate-rescue-*) in a folder, as paths.
function H.rescue_files(dir)
  local t = {}
  for _, name in ipairs(H.ls(dir)) do
    if name:find("^slashid%-rotate%-rescue%-") then t[#t + 1] = dir .. "/" .. name end
  end
  return t
end

-- ---- descriptors of this process (leak checks) --------------------------

-- This process's pid (the shell popen starts is its child).
H.pid = (function()
  local p = io.popen("echo $PPID")
  local pid = p:read("*a"):match("%d+")
  p:close()
  return pid
end)()

-- How many descriptors this process has open (the pipe to the listing
-- shell is counted every time alike).
function H.open_fds()
  local p = io.popen("ls /proc/" .. H.pid .. "/fd 2>/dev/null | wc -l")
  local n = p and tonumber(p:read("*a"):match("%d+"))
  if p then p:close() end
  return n
end

-- The count to come back to: garbage left by earlier specs (clients with
-- a live connection) is collected first, so that it cannot close its
-- sockets between the two counts.
function H.baseline_fds()
  -- Until the count holds: what earlier tests dropped may take more than
  -- two cycles to close its descriptors (LuaJIT runs no __gc on tables: a
  -- dropped client's handle goes only once its weak entry is cleared).
  collectgarbage("collect")
  local n = H.open_fds()
  for _ = 1, 8 do
    collectgarbage("collect")
    collectgarbage("collect")
    local again = H.open_fds()
    if again == n then break end
    n = again
  end
  return n
end

-- The count once it has settled back to `want` (polled up to 2 s): a
-- descriptor can stay open a few milliseconds after an op is over (seen:
-- +1, gone 50 ms later, in the first round of a fresh process); a leak
-- never comes back down.
function H.fds_after(want)
  local socket = require "socket"
  local n = H.open_fds()
  local deadline = socket.gettime() + 2
  while n ~= want and socket.gettime() < deadline do
    socket.sleep(0.05)
    collectgarbage("collect")
    n = H.open_fds()
  end
  return n
end

-- No descriptor is left open past `base` (polled as fds_after does). Fewer
-- is no leak: a descriptor an earlier spec of the same busted run dropped
-- may close only now (seen under Lua 5.1, whose collector runs later).
function H.assert_no_fd_leak(base)
  local n = H.fds_after(base)
  assert(n <= base, ("%d descriptors open, %d before"):format(n, base))
end

-- Runs `line` (a recipe's one line, as docs/hosts.md and README.md show
-- it) from the clone's root with the spec's environment; returns its exit
-- status and output (stdout and stderr). The line starts an emulator of its
-- own, so the spec's keys are not the ones to look for: no output may hold
-- anything shaped like a key (sk_ and 20 or more url-safe characters).
function H.run_recipe(line)
  for _, doc in ipairs({ "docs/hosts.md", "README.md" }) do
    assert(H.read_file(doc):find("\n" .. line .. "\n", 1, true),
           doc .. " does not show the line `" .. line .. "`")
  end
  local p = io.popen(line .. " 2>&1; echo \"rc=$?\"")
  local out = p:read("*a")
  p:close()
  local rc = tonumber(out:match("rc=(%d+)%s*$"))
  out = out:gsub("rc=%d+%s*$", "")
  assert(not out:find("sk_" .. ("[%w_%-]"):rep(20)), "a key was shown by `" .. line .. "`")
  return rc, out
end

-- Why a recipe's line is not run here (nil: it is): under check-asan the
-- preloaded ASan runtime would reach the programs the line starts (nginx,
-- LÖVE, python); make check-hosts runs the lines.
function H.recipe_skip()
  if (os.getenv("LD_PRELOAD") or ""):find("asan") then
    return "the recipe's line is run by make check-hosts, not under the preloaded ASan runtime"
  end
  return nil
end

-- Text as a reader would decode an echo in it, in one pass: each \uXXXX
-- (as the byte when below 128, "?" above), \/, \\, \" and %XX read as
-- the character it stands for (forms mixed within one key decode too).
function H.decode_echo(s)
  local out, i, n = {}, 1, #s
  while i <= n do
    local c = s:sub(i, i)
    local hex4 = c == "\\" and s:match("^\\u(%x%x%x%x)", i)
    local hex2 = c == "%" and s:match("^%%(%x%x)", i)
    local esc = c == "\\" and s:sub(i + 1, i + 1)
    if hex4 then
      local v = tonumber(hex4, 16)
      out[#out + 1] = v < 128 and string.char(v) or "?"
      i = i + 6
    elseif esc == "/" or esc == "\\" or esc == '"' then
      out[#out + 1] = esc
      i = i + 2
    elseif hex2 then
      out[#out + 1] = string.char(tonumber(hex2, 16))
      i = i + 3
    else
      out[#out + 1] = c
      i = i + 1
    end
  end
  return table.concat(out)
end

-- ---- odd answers: pieces of keys, and a raw loopback server -------------

-- No 12 consecutive characters of `key` in `text`, as they are or decoded
-- (H.decode_echo). Only printable runs of the key count (a piece holding
-- a control byte is split there).
function H.assert_no_piece(text, key, where)
  local plain = H.decode_echo(text)
  for i = 1, #key - 11 do
    local piece = key:sub(i, i + 11)
    if not piece:find("[^\32-\126]") and
       (text:find(piece, 1, true) or plain:find(piece, 1, true)) then
      error(("a 12-character piece of a key (at offset %d) was found in %s"):format(i, where), 2)
    end
  end
end

-- A raw HTTP server on a loopback port, driven in process while an op
-- runs: for answers the emulator cannot make. `answers[n]` is the n-th
-- request's answer: a string, a list of pieces ({ bytes, seconds to wait
-- before }), or function(head) -> either. `start(base_url, port)` starts
-- the op. Returns the finished op and the requests' heads.
function H.serve_raw(answers, start, host, keep)
  local socket = require "socket"
  host = host or "127.0.0.1"
  local server = keep or assert(socket.bind(host, 0))
  local _, port = server:getsockname()
  server:settimeout(0)
  local url = host:find(":", 1, true) and ("http://[" .. host .. "]:" .. port)
                                        or ("http://" .. host .. ":" .. port)
  local op = start(url, port)
  local conns, heads, n = {}, {}, 0
  local deadline = socket.gettime() + 30
  while not op:poll() and socket.gettime() < deadline do
    local c = server:accept()
    if c then c:settimeout(0); conns[#conns + 1] = { s = c, buf = "" } end
    for _, k in ipairs(conns) do
      if not k.done then
        if not k.pieces then
          local data, _, part = k.s:receive(4096)
          k.buf = k.buf .. (data or part or "")
          local e = k.buf:find("\r\n\r\n", 1, true)
          if e then
            n = n + 1
            local head = k.buf:sub(1, e + 3)
            heads[n] = head
            local a = answers[n] or answers[#answers]
            if type(a) == "function" then a = a(head) end
            if type(a) == "string" then a = { { a } } end
            k.pieces, k.i, k.at = a, 1, socket.gettime()
          end
        else
          local p = k.pieces[k.i]
          if not p then
            k.s:close()
            k.done = true
          elseif socket.gettime() >= k.at + (p[2] or 0) then
            k.s:settimeout(5)
            k.s:send(p[1])
            k.s:settimeout(0)
            k.i, k.at = k.i + 1, socket.gettime()
          end
        end
      end
    end
    socket.sleep(0.002)
  end
  if not keep then server:close() end
  for _, k in ipairs(conns) do pcall(k.s.close, k.s) end
  assert(op:poll(), "the op did not finish")
  return op, heads
end

-- A rotation through start_rotate_key against H.serve_raw(answers):
-- result, errors, pagination, info, and the requests' heads.
function H.raw_rotate(answers, opts)
  local slashid = require "slashid"
  local op, heads = H.serve_raw(answers, function(url)
    opts.base_url = opts.base_url or url
    return slashid.start_rotate_key(opts)
  end)
  local r, e, p, i = op:results()
  return r, e, p, i, heads
end

-- One whole HTTP/1.1 answer (Content-Length, then the connection closed).
function H.raw_answer(status, headers, body)
  return "HTTP/1.1 " .. status .. "\r\n" .. (headers or "") ..
         "Content-Length: " .. #body .. "\r\nConnection: close\r\n\r\n" .. body
end

return H
