-- Library holes found by an adversarial review (issue 8): lifetimes
-- across coroutines, caps, key adoption, failed loads, libcurl's own
-- re-sends, op:cancel's last look. Each case failed on the code before
-- its fix.
local H = require "helpers"
local slashid = require "slashid"
local socket = require "socket"

local LUA = H.lua
local q, write = H.q, H.write

-- Runs a shell command; returns its exit status and output (both streams).
local function run(cmd)
  local p = assert(io.popen(cmd .. " 2>&1; echo \"exit=$?\""))
  local out = p:read("*a")
  p:close()
  local status = tonumber(out:match("exit=(%d+)%s*$"))
  return status, out:gsub("exit=%d+%s*$", "")
end

local function have(cmd)
  return run("command -v " .. cmd .. " >/dev/null") == 0
end

describe("callbacks never use a dead coroutine's state (item 1)", function()
  -- An op polled inside a coroutine that then ends and is collected; the
  -- op is cancelled, or collected, from the main thread. libcurl traces
  -- "Closing connection" while the transfer is removed: before the fix
  -- that line went through the dead coroutine's lua_State (valgrind:
  -- invalid read in lua_checkstack <- sid_trace_emit <- sid_multi_detach).
  local script = [[
local slashid = require "slashid"
local url, org, key, how = arg[1], arg[2], arg[3], arg[4]
local lines = 0
for round = 1, 4 do
  local op
  local co = coroutine.create(function()
    op = slashid.start_rotate_key{ org_id = org, api_key = key, base_url = url,
      debug = function() lines = lines + 1 end, request_timeout = 5 }
    for _ = 1, 3 do op:poll() end
  end)
  assert(coroutine.resume(co))
  co = nil
  collectgarbage(); collectgarbage()
  local junk = {}
  for i = 1, 500 do junk[i] = coroutine.create(function() end) end
  junk = nil
  if how == "cancel" then op:cancel() end
  op = nil
  collectgarbage(); collectgarbage()
end
print("done", lines > 0)
]]

  for _, how in ipairs({ "cancel", "gc" }) do
    it("op:" .. how .. " from the main thread after the polling coroutine died", function()
      local org, key = H.new_org()
      -- answers held back: the ops are still in flight when dropped
      H.faults(org, { { delay = 3, ["repeat"] = 4 } })
      local file = write(H.tmpname("uaf") .. ".lua", script)
      -- under `make check-asan` the child runs with ASan preloaded, which
      -- reports the same invalid read; valgrind cannot run beside it
      local asan = (os.getenv("LD_PRELOAD") or ""):find("asan", 1, true)
      local prefix = (have("valgrind") and not asan) and
        "valgrind -q --error-exitcode=99 --suppressions=spec/valgrind.supp " or ""
      local status, out = run(("%s%s %s %s %s %s %s"):format(
        prefix, LUA, file, q(H.http_url), q(org), q(key), how))
      H.assert_no_secret(out, key)
      assert.are.equal(0, status, "the child failed (valgrind report?):\n" .. out)
      assert.matches("done\ttrue", out)
    end)
  end
end)

describe("max_response_bytes caps the body only (item 3)", function()
  it("a small body with ~1 KB of proxy/CDN headers and the cap at 256 is rotated", function()
    local org, key = H.new_org()
    local headers = {}
    for i = 1, 16 do headers["X-Cdn-Trace-" .. i] = ("v"):rep(60) end
    H.faults(org, { { rotate = true, headers = headers } })
    local result, errors, _, info = slashid.rotate_key(H.opts(org, key, {
      max_response_bytes = 256 }))
    assert.are.equal("rotated", info.outcome, errors[1] and errors[1].message)
    assert.is_string(result.api_key)
    assert.are.equal(("v"):rep(60), info.headers["x-cdn-trace-16"])
  end)

  it("a body over the cap is still unknown (the cap still holds for the body)", function()
    local org, key = H.new_org()
    local _, errors, _, info = slashid.rotate_key(H.opts(org, key, {
      max_response_bytes = 16 }))
    assert.are.equal("unknown", info.outcome)
    assert.matches("max_response_bytes", errors[1].message)
  end)

  it("headers over the fixed 64 KiB cap end unknown, with a message that says so", function()
    local org, key = H.new_org()
    H.faults(org, { { rotate = true, action = "huge_header", size = 70000 } })
    local result, errors, _, info = slashid.rotate_key(H.opts(org, key))
    assert.is_nil(result)
    assert.are.equal("unknown", info.outcome)
    assert.matches("headers are larger than 65536 bytes", errors[1].message)
    assert.are.equal(1, H.requests(org))
  end)
end)

describe("a client adopts the key it holds whenever it rotates it (item 4)", function()
  local function client(org, key)
    return slashid.new(H.opts(org, key))
  end

  it("org_id named explicitly: the next call uses the new key", function()
    local org, key = H.new_org()
    local c = client(org, key)
    local r1, e1 = c:rotate_key{ org_id = org }
    assert.is_table(r1, e1[1] and e1[1].message)
    local r2, e2, _, info = c:rotate_key()
    assert.are.equal("rotated", info.outcome, e2[1] and e2[1].message)
    assert.are_not.equal(r1.api_key, r2.api_key)
    assert.is_true((c:check_key()))
    c:close()
  end)

  it("org_id and api_key both named (the client's own): adopted", function()
    local org, key = H.new_org()
    local c = client(org, key)
    assert.is_table((c:rotate_key{ org_id = org, api_key = key }))
    local _, _, _, info = c:rotate_key()
    assert.are.equal("rotated", info.outcome)
    c:close()
  end)

  it("another organization's rotation leaves the client's key alone", function()
    local org, key = H.new_org()
    local org2, key2 = H.new_org()
    local c = client(org, key)
    assert.is_table((c:rotate_key{ org_id = org2, api_key = key2 }))
    local _, _, _, info = c:rotate_key()
    assert.are.equal("rotated", info.outcome)
    -- and the first call's key for org2 was not adopted: org2's is dead
    c:close()
  end)

  it("the client's org with a different key (not the one it holds): not adopted", function()
    local org, key = H.new_org()
    local c = client(org, "sk_not_the_client_key_000000")
    local r = c:rotate_key{ api_key = key }
    assert.is_table(r)
    -- the client still holds its own (wrong) key, not the rotated one
    local _, _, _, info = c:rotate_key()
    assert.are.equal("not_rotated", info.outcome)
    assert.are.equal(401, info.status)
    c:close()
  end)

  it("start_rotate_key and rotate_keys adopt the same way", function()
    local org, key = H.new_org()
    local c = client(org, key)
    local op = c:start_rotate_key{ org_id = org }
    assert.is_true(op:wait(10))
    assert.are.equal("rotated", select(4, op:results()).outcome)
    local outcomes = c:rotate_keys({ { org_id = org } })
    assert.are.equal("rotated", outcomes[1].info.outcome)
    local _, _, _, info = c:rotate_key()
    assert.are.equal("rotated", info.outcome)
    c:close()
  end)
end)

describe("require fails fast without the C core (item 5)", function()
  it("a missing core raises at require, every time, with no lazy.lua in it", function()
    local file = write(H.tmpname("nocore") .. ".lua", [[
local ok1, e1 = pcall(require, "slashid")
local ok2, e2 = pcall(require, "slashid")
print(ok1, ok2)
print(tostring(e1):find("slashid.core", 1, true) ~= nil, tostring(e1):find("lazy", 1, true) ~= nil)
]])
    local status, out = run(("LUA_CPATH='/nonexistent/?.so' LUA_CPATH_5_2='/nonexistent/?.so' " ..
      "LUA_CPATH_5_3='/nonexistent/?.so' LUA_CPATH_5_4='/nonexistent/?.so' %s %s"):format(LUA, file))
    assert.are.equal(0, status, out)
    assert.matches("^false\tfalse\ntrue\tfalse", out)
  end)

  it("a broken core raises at require", function()
    local dir = H.mkdir(H.tmpname("brokencore") .. "/slashid")
    write(dir .. "/core.so", "not an ELF object")
    local file = write(H.tmpname("brokencore") .. ".lua", [[
print(pcall(require, "slashid"))
]])
    local cpath = dir:gsub("/slashid$", "") .. "/?.so"
    local status, out = run(("LUA_CPATH=%s LUA_CPATH_5_2=%s LUA_CPATH_5_3=%s LUA_CPATH_5_4=%s %s %s")
      :format(q(cpath), q(cpath), q(cpath), q(cpath), LUA, file))
    assert.are.equal(0, status, out)
    assert.matches("^false\t", out)
    assert.matches("core", out)
  end)
end)

describe("answer headers are traced once the new key is known (item 8)", function()
end)

describe("libcurl may re-send a GET, never the PUT (item 9)", function()
  -- The emulator drops the next request on a kept-alive connection
  -- without answering: libcurl's own retry on a fresh connection.
  it("check_key: a dead reused connection is retried by libcurl and answered", function()
    local org, key = H.new_org()
    local c = slashid.new(H.opts(org, key, { retries = 0 }))
    assert.is_true((c:check_key()))          -- leaves a kept connection
    H.faults(org, { { action = "close" } })
    local ok, errors = c:check_key()
    assert.is_true(ok, errors[1] and errors[1].message)
    assert.are.equal(3, H.requests(org))
    c:close()
  end)

  it("rotate_key: the same drop is unknown, and the PUT went out once", function()
    local org, key = H.new_org()
    local c = slashid.new(H.opts(org, key, { retries = 2 }))
    assert.is_true((c:check_key()))
    H.faults(org, { { action = "close", rotate = true } })
    local result, _, _, info = c:rotate_key()
    assert.is_nil(result)
    assert.are.equal("unknown", info.outcome)
    assert.are.equal(2, H.requests(org))    -- the check, then one PUT
    c:close()
  end)
end)

describe("op:cancel takes one last look (item 10)", function()
  it("an answer already complete in the socket is kept", function()
    if os.getenv("SLASHID_SPEC_NO_PREREQ") then
      pending("built without CURLOPT_PREREQFUNCTION (make check-noprereq): op:cancel takes " ..
              "no last look there, since a request not yet sent could not be stopped")
      return
    end
    local org, key = H.new_org()
    H.faults(org, { { delay = 0.3 } })
    local op = slashid.start_rotate_key(H.opts(org, key))
    local deadline = socket.gettime() + 5
    while H.requests(org) == 0 and socket.gettime() < deadline do
      assert.is_false(op:poll())
      socket.sleep(0.02)
    end
    assert.are.equal(1, H.requests(org))
    socket.sleep(1.0)          -- the answer arrives; nobody polls
    op:cancel()
    local result, errors, _, info = op:results()
    assert.are.equal("rotated", info.outcome, errors[1] and errors[1].message)
    assert.is_string(result.api_key)
    -- the key was not lost: it works
    assert.is_true((slashid.check_key(H.opts(org, result.api_key))))
  end)

  it("an answer still on its way is cancelled as unknown", function()
    local org, key = H.new_org()
    H.faults(org, { { delay = 2 } })
    local op = slashid.start_rotate_key(H.opts(org, key))
    local deadline = socket.gettime() + 5
    while H.requests(org) == 0 and socket.gettime() < deadline do
      op:poll()
      socket.sleep(0.02)
    end
    op:cancel()
    local result, errors, _, info = op:results()
    assert.is_nil(result)
    assert.are.equal("unknown", info.outcome)
    assert.matches("cancelled", errors[1].message)
  end)
end)

-- Found by the adversarial review of this issue's changes (F1-F13 in the
-- closing note). Each case failed before its fix.
describe("adversarial review findings", function()
  local function timeout_run(seconds, script, ...)
    local file = write(H.tmpname("review") .. ".lua", script)
    local args = {}
    for i = 1, select("#", ...) do args[i] = q(tostring((select(i, ...)))) end
    return run(("timeout %d %s %s %s"):format(seconds, LUA, file, table.concat(args, " ")))
  end

  it("F1: the client's own debug function cannot reuse or close its handle while the answer is traced", function()
    local org, key = H.new_org()
    local c
    local nested = {}
    c = slashid.new(H.opts(org, key, { debug = function(line)
      if line:find("^< HTTP/") then
        nested[#nested + 1] = select(2, pcall(c.check_key, c))
        nested[#nested + 1] = select(2, pcall(c.close, c))
      end
    end }))
    local result, errors, _, info = c:rotate_key()
    assert.are.equal("rotated", info.outcome, errors[1] and errors[1].message)
    H.assert_key_equal(H.org(org).api_key, result.api_key)
    assert.are.equal(2, #nested)
    for _, e in ipairs(nested) do
      assert.matches("^slashid: handle is busy", tostring(e))
    end
    -- and the client is whole afterwards, holding the new key
    assert.is_true((c:check_key()))
    c:close()
  end)

  it("F2: op:cancel's last look never sends a request that had not gone out", function()
    for round = 1, 6 do
      local org, key = H.new_org()
      local extra = round % 2 == 0 and { base_url = H.https_url, ca_file = H.ca_file } or nil
      local op = slashid.start_rotate_key(H.opts(org, key, extra))
      for _ = 1, round % 3 + 1 do op:poll() end
      -- anything the polls sent has reached the emulator's log by now
      socket.sleep(0.15)
      local before = H.requests(org)
      op:cancel()
      socket.sleep(0.2)        -- a request sent by cancel would be in by now
      local _, errors, _, info = op:results()
      assert.are.equal(before, H.requests(org), "op:cancel sent the rotation")
      if before == 0 then
        assert.are.equal("not_rotated", info.outcome, errors[1] and errors[1].message)
        assert.are.equal(0, H.org(org).rotations)
      end
    end
  end)

  for _, case in ipairs({
    { "without a scheme", "alice:pr0xy-pa55w0rd-xyz@127.0.0.1:%d" },
    { "with a slash in the password", "http://alice:pr0xy/pa55w0rd-xyz@127.0.0.1:%d" },
    { "with a # in the password", "http://alice:pr0xy#pa55w0rd-xyz@127.0.0.1:%d" },
  }) do
    it("F3: proxy credentials in https_proxy " .. case[1] .. " appear in no error or trace", function()
      local org, key = H.new_org()
      local url = case[2]:format(H.closed_port())
      local status, out = run(("https_proxy=%s %s -e %s"):format(q(url), LUA, q(([[
local slashid = require "slashid"
local lines = {}
local r, e, p, i = slashid.rotate_key{ org_id = %q, api_key = %q, base_url = %q,
  ca_file = %q, retries = 0, debug = function(l) lines[#lines + 1] = l end }
print(i.outcome, e[1] and e[1].message)
print(table.concat(lines, "\n"))
]]):format(org, key, H.https_url, H.ca_file))))
      assert.are.equal(0, status, out)
      assert.matches("not_rotated", out)
      assert.is_nil(out:find("pa55w0rd", 1, true), "the proxy password leaked")
      H.assert_no_secret(out, key)
    end)
  end

  it("F6: an error raised by a hook inside the answer's decoding never turns a rotation into 'not JSON'", function()
    local lost, fine, raised = 0, 0, 0
    for k = 1, 30 do
      local org, key = H.new_org()
      local armed, live = false, true
      local ok, r = pcall(slashid.rotate_key, H.opts(org, key, { retries = 0,
        debug = function(line)
          if not armed and line:find("^> Content%-Length") then
            armed = true
            local n = 0
            debug.sethook(function()
              n = n + 1
              if live and n == k then live = false; debug.sethook(); error("interrupted!") end
            end, "c")
          end
        end }))
      live = false
      debug.sethook()
      if not ok then
        raised = raised + 1
      elseif r then
        fine = fine + 1
      elseif H.org(org).rotations > 0 then
        lost = lost + 1          -- the server rotated, the call said otherwise
      end
    end
    assert.are.equal(0, lost, ("%d rotations returned without their key"):format(lost))
    assert.is_true(fine > 0)
  end)

  it("F7: op:wait called from the op's own debug function raises instead of hanging", function()
    local org, key = H.new_org()
    local status, out = timeout_run(20, [[
local slashid = require "slashid"
local url, org, key = ...
local op, nested
op = slashid.start_rotate_key{ org_id = org, api_key = key, base_url = url,
  debug = function(line)
    if line:find("^< HTTP/") and not nested then
      nested = select(2, pcall(op.wait, op, 5))
    end
  end }
assert(op:wait(10))
local _, _, _, info = op:results()
print(info.outcome, tostring(nested))
]], H.http_url, org, key)
    assert.are.equal(0, status, "the op hung or failed: " .. out)
    assert.matches("^rotated\tslashid: op re%-entered", out)
  end)

  it("F9: a whole envelope with a key that arrived before the transfer failed is handed back", function()
    local org, key = H.new_org()
    H.faults(org, { { rotate = true, headers = { ["Content-Length"] = "9999" } } })
    local result, errors, _, info = slashid.rotate_key(H.opts(org, key, { request_timeout = 1.5 }))
    assert.are.equal("rotated", info.outcome, errors[1] and errors[1].message)
    H.assert_key_equal(H.org(org).api_key, result.api_key)
    assert.are.equal(28, errors[1].curl_code)     -- what happened is still said
  end)

  it("F13: a UTF-8 byte order mark before the JSON is read", function()
    local org, key = H.new_org()
    H.faults(org, { { rotate = true, body = '\239\187\191{"result":{"api_key":"{{new_key}}"}}' } })
    local result, _, _, info = slashid.rotate_key(H.opts(org, key))
    assert.are.equal("rotated", info.outcome)
    H.assert_key_equal(H.org(org).api_key, result.api_key)
  end)
end)

-- Second review round (closing note, round 2).
describe("adversarial review, round 2", function()
  it("A: a client holding a key but no organization adopts after rotating it", function()
    local org, key = H.new_org()
    local c = slashid.new{ api_key = key, base_url = H.http_url }
    assert.is_table((c:rotate_key{ org_id = org }))
    local _, errors, _, info = c:rotate_key{ org_id = org }
    assert.are.equal("rotated", info.outcome, errors[1] and errors[1].message)
    c:close()
  end)
end)
