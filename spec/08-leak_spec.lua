-- Memory retention over a few thousand calls: after a warm-up, the Lua
-- heap (collectgarbage "count", after a full collection) must not grow by
-- more than a small bound, on success and error paths alike; dropped
-- clients are collected. A correctness check of what is retained, not a
-- timing assertion. Figures go to stderr (numbers only, nothing secret).
local H = require "helpers"
local slashid = require "slashid"

local BOUND_KB = 200

local function heap_kb()
  collectgarbage("collect")
  collectgarbage("collect")
  return collectgarbage("count")
end

-- Resident set size in KB (Linux), or nil: reported, not asserted.
local function rss_kb()
  local f = io.open("/proc/self/status", "r")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return tonumber(s:match("VmRSS:%s*(%d+)"))
end

local function report(what, before, after, rss_before, rss_after)
  io.stderr:write(("\n[leak] %s: Lua heap %.1f KB -> %.1f KB (%+.1f KB)%s\n"):format(
    what, before, after, after - before,
    (rss_before and rss_after) and
      (", RSS %d KB -> %d KB (%+d KB)"):format(rss_before, rss_after, rss_after - rss_before)
      or ""))
end

-- Runs `warm` iterations, measures, runs `n` more, measures again, and
-- asserts the Lua heap grew by less than BOUND_KB.
local function check_growth(what, warm, n, step)
  for i = 1, warm do step(i) end
  local before, rss_before = heap_kb(), rss_kb()
  for i = 1, n do step(warm + i) end
  local after, rss_after = heap_kb(), rss_kb()
  report(what, before, after, rss_before, rss_after)
  assert.is_true(after - before < BOUND_KB, ("%s: the Lua heap grew by %.1f KB over %d calls")
                 :format(what, after - before, n))
end

describe("memory", function()
  it("does not grow over 2000 client:rotate_key calls (adopting each new key)", function()
    local org, key = H.new_org()
    local client = slashid.new(H.opts(org, key))
    local failures = 0
    check_growth("2000 client:rotate_key", 200, 2000, function()
      local result = client:rotate_key()
      if not result then failures = failures + 1 end
    end)
    assert.are.equal(0, failures)
    assert.are.equal(2200, H.org(org).rotations)
    client:close()
  end)

  it("does not grow over 500 module-level rotate_key + check_key calls", function()
    local org, key = H.new_org()
    local failures = 0
    check_growth("500 slashid.rotate_key + check_key", 100, 500, function()
      local result = slashid.rotate_key(H.opts(org, key))
      if result then key = result.api_key else failures = failures + 1 end
      if not slashid.check_key(H.opts(org, key)) then failures = failures + 1 end
    end)
    assert.are.equal(0, failures)
  end)

  it("releases each call's debug function (500 calls, trace on)", function()
    local org, key = H.new_org()
    local client = slashid.new(H.opts(org, key))
    local lines = 0
    check_growth("500 client:check_key with debug", 50, 500, function()
      -- a fresh function per call, holding ~1 KB: a kept reference to it
      -- (e.g. a registry slot never released) would show as ~500 KB
      local held = {}
      for j = 1, 64 do held[j] = j end
      assert(client:check_key{ debug = function(line) lines = lines + 1; held[1] = line end })
    end)
    assert.is_true(lines > 550)
    client:close()
  end)

  it("does not grow over 500 refused connections (retries = 0)", function()
    local org, key = H.new_org()
    local opts = H.opts(org, key, { retries = 0,
                                    base_url = "http://127.0.0.1:" .. H.closed_port() })
    local unexpected = 0
    check_growth("500 refused connections", 50, 500, function()
      local result, errors, _, info = slashid.rotate_key(opts)
      if result or info.outcome ~= "not_rotated" or errors[1].httpcode ~= 0 then
        unexpected = unexpected + 1
      end
    end)
    assert.are.equal(0, unexpected)
  end)

  it("does not grow over 500 answers with status 500", function()
    local org, key = H.new_org()
    -- No body: the emulator writes a fault's head and body separately,
    -- which costs a delayed ACK (~40 ms) per answer; an empty 500 is one write.
    H.faults(org, { { status = 500, ["repeat"] = 550 } })
    local client = slashid.new(H.opts(org, key))
    local unexpected = 0
    check_growth("500 HTTP 500 answers", 50, 500, function()
      local result, errors, _, info = client:rotate_key()
      if result or info.outcome ~= "unknown" or errors[1].httpcode ~= 500 then
        unexpected = unexpected + 1
      end
    end)
    assert.are.equal(0, unexpected)
    assert.are.equal(0, H.org(org).faults_pending)
    assert.are.equal(0, H.org(org).rotations)
    client:close()
  end)

  it("keeps the C side flat too: RSS over 10000 calls after a warm-up", function()
    -- collectgarbage("count") cannot see libcurl's or the module's malloc;
    -- the resident set size can, coarsely: a leak of a few hundred bytes
    -- per call shows here. Small leaks hide in the allocator's free lists:
    -- valgrind and LeakSanitizer (make check-valgrind, check-asan) see
    -- those. The loop runs in a process of its own: inside the busted run
    -- the allocator still took steps of 1.3-4 MB up or down after the
    -- earlier specs (seen under LuaJIT on a fresh machine, with the Lua
    -- heap flat), which is noise a fresh process does not have (measured
    -- there: flat from the first window over 40000 calls).
    if not rss_kb() then
      pending("no /proc/self/status: RSS cannot be read on this system")
      return
    end
    local org, key = H.new_org()
    local script = H.tmpname("rss") .. ".lua"
    H.write(script, [[
      local slashid = require "slashid"
      local function rss_kb()
        local f = assert(io.open("/proc/self/status", "r"))
        local s = f:read("*a")
        f:close()
        return tonumber(s:match("VmRSS:%s*(%d+)"))
      end
      local client = slashid.new({ org_id = os.getenv("RSS_ORG"), base_url = os.getenv("RSS_URL"),
                                   api_key = os.getenv("RSS_KEY") })
      local function step(i)
        if i % 2 == 0 then assert(client:rotate_key()) else assert(client:check_key()) end
      end
      for i = 1, 3000 do step(i) end          -- warm-up: caches, heap, allocator
      for window = 1, 2 do
        collectgarbage("collect")
        local before, heap_before = rss_kb(), collectgarbage("count")
        for i = 1, 10000 do step(i) end
        collectgarbage("collect")
        io.write(("%d %d %d %.1f %.1f\n"):format(window, before, rss_kb(), heap_before,
                                                  collectgarbage("count")))
        io.flush()
      end
      client:close()
    ]])
    local cmd = ("RSS_ORG=%s RSS_KEY=%s RSS_URL=%s %s %s 2>&1")
      :format(H.q(org), H.q(key), H.q(H.http_url), H.lua, H.q(script))
    local p = assert(io.popen(cmd))
    local out = p:read("*a")
    p:close()
    H.assert_no_secret(out, key)
    local windows = {}
    for w, before, after, heap_before, heap_after in
        out:gmatch("(%d) (%d+) (%d+) ([%d.]+) ([%d.]+)\n") do
      windows[tonumber(w)] = { tonumber(before), tonumber(after) }
      report("10000 client calls in a process of its own (RSS), window " .. w,
             tonumber(heap_before), tonumber(heap_after), tonumber(before), tonumber(after))
    end
    assert.is_truthy(windows[2], "the child did not finish its loop: " .. out)
    -- A leak grows in both windows; a one-off allocator step in only one.
    local grew1 = windows[1][2] - windows[1][1]
    local grew2 = windows[2][2] - windows[2][1]
    assert.is_true(math.min(grew1, grew2) < 1024,
      ("RSS grew by %d KB and then %d KB over 10000 calls each"):format(grew1, grew2))
    assert.are.equal(10000, H.org(org).rotations - 1500)
  end)

  it("frees every copy of the key: RSS flat over 1000 calls with a 32 KB key", function()
    -- A key copy or key header kept per call would cost 32 KB a call here,
    -- 32 MB over the loop: far above any allocator noise.
    if not rss_kb() then
      pending("no /proc/self/status: RSS cannot be read on this system")
      return
    end
    local big = "sk_" .. string.rep("K", 32 * 1024)
    local org = H.new_org_with_key(big)
    local client = slashid.new(H.opts(org, big))
    local function step()
      local ok, errors = client:check_key()
      assert(ok == true, errors[1] and errors[1].message)
    end
    for _ = 1, 100 do step() end
    local heap_before = heap_kb()
    local rss_before = rss_kb()
    for _ = 1, 1000 do step() end
    local heap_after = heap_kb()
    local rss_after = rss_kb()
    report("1000 calls with a 32 KB key (RSS)", heap_before, heap_after, rss_before, rss_after)
    if os.getenv("ASAN_OPTIONS") then
      -- Under ASan (make check-asan) the resident set is the quarantine's
      -- (16 MB of freed blocks held back) and its allocator's: seen +5.6
      -- MB and -19 MB over this loop. LeakSanitizer checks the C side
      -- there; the Lua heap is still checked below.
      io.stderr:write("\n[leak] RSS bound not applied under ASan (quarantine)\n")
    else
      assert.is_true(rss_after - rss_before < 4096,
                     ("RSS grew by %d KB over 1000 calls"):format(rss_after - rss_before))
    end
    assert.is_true(heap_after - heap_before < BOUND_KB)
    client:close()
  end)

  it("collects clients that are dropped without close (200 clients)", function()
    local org, key = H.new_org()
    local weak = setmetatable({}, { __mode = "k" })
    local before = heap_kb()
    for i = 1, 200 do
      local client = slashid.new(H.opts(org, key))
      weak[client] = true
      if i % 20 == 0 then assert(client:check_key()) end   -- some with a live connection
    end
    for _ = 1, 4 do collectgarbage("collect") end
    local left = 0
    for _ in pairs(weak) do left = left + 1 end
    local after = heap_kb()
    report("200 dropped clients", before, after)
    assert.are.equal(0, left)
    assert.is_true(after - before < BOUND_KB)
  end)

  it("collects closed clients too", function()
    local org, key = H.new_org()
    local weak = setmetatable({}, { __mode = "k" })
    for _ = 1, 50 do
      local client = slashid.new(H.opts(org, key))
      weak[client] = true
      client:close()
    end
    for _ = 1, 4 do collectgarbage("collect") end
    assert.is_nil(next(weak))
  end)
end)
