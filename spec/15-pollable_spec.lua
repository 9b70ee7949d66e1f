-- Pollable ops (the pollable protocol of cqueues): op:pollfd() is one
-- descriptor that polls readable when the op has work to do, op:timeout()
-- the seconds until it must be polled anyway (0 once finished), op:events()
-- "r"; op:wait() sleeps on that descriptor. And start_check_key, an op
-- whose results are check_key's.
--
-- Readiness is checked with select(2) through LuaSocket (socket.select
-- takes any object with a getfd method), independently of the library,
-- and with cqueues, the protocol's own consumer (Debian: lua-cqueues;
-- those tests are pending without it). Descriptors are read from
-- /proc/PID/fd of this process. Time bounds are loose and behavioural.
local H = require "helpers"
local slashid = require "slashid"
local core = require "slashid.core"
local socket = require "socket"

local now = core.now   -- monotonic, like the op's own deadlines

local has_cqueues, cqueues = pcall(require, "cqueues")

local is_integer = math.type and function(x) return math.type(x) == "integer" end
                 or function(x) return type(x) == "number" and x % 1 == 0 end

local capture = H.capture

local PID, open_fds, baseline_fds, fds_after = H.pid, H.open_fds, H.baseline_fds, H.fds_after

-- What descriptor fd of this process is ("anon_inode:[eventpoll]"), or
-- nil when it is closed.
local function fd_target(fd)
  local t = capture("readlink /proc/" .. PID .. "/fd/" .. fd .. " 2>/dev/null"):match("[^\n]+")
  return t
end

local function cloexec(fd)
  local flags = capture("cat /proc/" .. PID .. "/fdinfo/" .. fd):match("flags:%s*(%d+)")
  return flags ~= nil and math.floor(tonumber(flags, 8) / 524288) % 2 == 1   -- O_CLOEXEC 02000000
end

-- select(2) on the op's descriptor alone: whether it polls readable
-- within `seconds` (nil: no bound).
local function readable(fd, seconds)
  local r = socket.select({ { getfd = function() return fd end } }, nil, seconds)
  return #r > 0
end

-- A loop as an event loop runs it: sleep on the descriptor for at most
-- op:timeout() (no other wake-up), then poll. `nil_wait` is how long a
-- nil timeout sleeps (only the descriptor matters). Returns the number
-- of wake-ups.
local function drive(op, nil_wait, limit)
  local fd, wakes, give_up = op:pollfd(), 0, now() + (limit or 20)
  while not op:poll() do
    assert(now() < give_up, "the op did not finish")
    local t = op:timeout()
    assert(t == nil or (type(t) == "number" and t >= 0), "bad timeout: " .. tostring(t))
    readable(fd, t or nil_wait)
    wakes = wakes + 1
  end
  return wakes
end

describe("pollable ops", function()
  it("pollfd() is an integer, close-on-exec epoll descriptor, the same for the op's whole life (a 429, its retry, the end); events() is 'r'", function()
    local org, key = H.new_org()
    H.faults(org, { { status = 429, message = "slow down" } })
    local op = slashid.start_rotate_key(H.opts(org, key, { retry_delay = 0.2, retry_max_delay = 0.3 }))
    local fd = op:pollfd()
    assert.is_true(is_integer(fd), tostring(fd))
    assert.are.equal("r", op:events())
    assert.are.equal("anon_inode:[eventpoll]", fd_target(fd))
    assert.is_true(cloexec(fd), "the descriptor lacks close-on-exec")
    local seen = {}
    while not op:poll() do
      seen[op:pollfd()] = true
      readable(fd, op:timeout() or 1)
    end
    seen[op:pollfd()] = true
    local result, errors, _, info = op:results()
    assert.are.equal("rotated", info.outcome, H.messages(errors))
    assert.are.equal(2, info.attempts)
    H.assert_key_equal(H.org(org).api_key, result.api_key)
    local n = 0
    for k in pairs(seen) do n = n + 1; assert.are.equal(fd, k) end
    assert.are.equal(1, n)
    -- finished: still open, the same, and a loop waiting on it wakes at once
    assert.are.equal(fd, op:pollfd())
    assert.are.equal("anon_inode:[eventpoll]", fd_target(fd))
    assert.are.equal(0, op:timeout())
    assert.is_true(op:poll())
  end)

  it("the descriptor stays quiet while the server holds the answer and polls readable when it arrives", function()
    local org, key = H.new_org()
    H.faults(org, { { delay = 2 } })
    local t0 = now()
    local op = slashid.start_rotate_key(H.opts(org, key))
    local fd = op:pollfd()
    -- until the request is out (the emulator has it): then only the answer
    -- can wake the descriptor
    H.wait_for("the request", 5, function()
      op:poll()
      return H.requests(org) >= 1
    end)
    assert.is_false(op:poll())
    local quiet_from = now()
    assert.is_false(readable(fd, 0.5), "readable while nothing had arrived")
    assert.is_true(readable(fd, 5), "never readable")
    local woke = now() - t0
    assert.is_true(woke >= 1.5, ("woke after %.3f s, before the answer"):format(woke))
    assert.is_true(now() - quiet_from >= 0.5)
    assert.is_true(drive(op, 1) <= 5)
    local _, errors, _, info = op:results()
    assert.are.equal("rotated", info.outcome, H.messages(errors))
  end)

  it("timeout() never lets the request_timeout deadline pass unseen (request_timeout 1, answer after 3 s)", function()
    local org, key = H.new_org()
    H.faults(org, { { delay = 3 } })
    local op = slashid.start_rotate_key(H.opts(org, key, { request_timeout = 1, retries = 0 }))
    local started = now()          -- the attempt's deadline is at most this + 1
    local fd = op:pollfd()
    local wakes = 0
    while not op:poll() do
      local asked = now()
      local t = op:timeout()
      assert.is_number(t)          -- a deadline is pending: never nil
      assert.is_true(asked + t <= started + 1 + 1e-9,
                     ("timeout() %.4f s is past the deadline"):format(t))
      -- only the descriptor and the timeout wake this loop: with a nil
      -- (or late) timeout it would sleep until the 3 s answer, which the
      -- last look would then keep as "rotated"
      readable(fd, t)
      wakes = wakes + 1
      assert.is_true(wakes < 200, "the loop spins")
    end
    local elapsed = now() - started
    local result, errors, _, info = op:results()
    assert.is_nil(result)
    assert.are.equal("unknown", info.outcome)
    assert.are.equal(28, errors[1].curl_code, H.messages(errors))
    assert.is_true(elapsed >= 0.95 and elapsed < 2.5, ("ended after %.3f s"):format(elapsed))
    assert.are.equal(0, op:timeout())
    io.stderr:write(("\n[pollable] request_timeout 1 s seen after %.3f s, %d wake-ups\n")
                    :format(elapsed, wakes))
  end)

  it("timeout() covers a retry back-off (429, Retry-After: 1), when the descriptor has nothing to say", function()
    local org, key = H.new_org()
    H.faults(org, { { status = 429, message = "later", headers = { ["Retry-After"] = "1" } } })
    local t0 = now()
    local op = slashid.start_rotate_key(H.opts(org, key, { retry_max_delay = 5 }))
    -- a nil timeout would sleep 10 s on a descriptor that has no socket
    local wakes = drive(op, 10)
    local elapsed = now() - t0
    local _, errors, _, info = op:results()
    assert.are.equal("rotated", info.outcome, H.messages(errors))
    assert.are.equal(2, info.attempts)
    assert.is_true(elapsed >= 0.95 and elapsed < 3, ("took %.3f s"):format(elapsed))
    assert.is_true(wakes < 50, "woke " .. wakes .. " times")
  end)

  it("wait() sleeps on the descriptor: a 2 s wait uses almost no CPU (and cqueues.poll(op) neither)", function()
    -- os.clock() is this process's CPU time. Figures are printed; the
    -- bound is generous (a busy loop spends the whole 2 s).
    local function slow_op()
      local org, key = H.new_org()
      H.faults(org, { { delay = 2 } })
      return slashid.start_rotate_key(H.opts(org, key))
    end
    local function measure(label, run)
      local op = slow_op()
      local c0, t0 = os.clock(), now()
      run(op)
      local cpu, wall = os.clock() - c0, now() - t0
      local _, errors, _, info = op:results()
      assert.are.equal("rotated", info.outcome, H.messages(errors))
      io.stderr:write(("\n[pollable] %-34s wall %.3f s, CPU %.4f s"):format(label, wall, cpu))
      assert.is_true(wall >= 1.9, label .. ": did not wait for the answer")
      return cpu
    end
    local cpu_wait = measure("op:wait()", function(op) assert.is_true(op:wait(10)) end)
    measure("op:poll() + core.sleep(0.01) loop", function(op)
      while not op:poll() do core.sleep(0.01) end
    end)
    local cpu_cq
    if has_cqueues then
      cpu_cq = measure("cqueues.poll(op) loop", function(op)
        -- (cqueues would wait forever on an object without a descriptor)
        assert(type(op.pollfd) == "function", "op:pollfd() is missing")
        while not op:poll() do cqueues.poll(op, 5) end
      end)
    end
    io.stderr:write("\n")
    assert.is_true(cpu_wait < 0.2, ("op:wait used %.3f s of CPU"):format(cpu_wait))
    if cpu_cq then
      assert.is_true(cpu_cq < 0.2, ("cqueues.poll used %.3f s of CPU"):format(cpu_cq))
    end
  end)

  it("the descriptor goes with the sockets when the op ends, unless pollfd() handed it out", function()
    local base = baseline_fds()
    local org, key = H.new_org()
    local op = slashid.start_rotate_key(H.opts(org, key))
    while not op:poll() do socket.sleep(0.005) end
    H.assert_no_fd_leak(base)      -- sockets and descriptor released
    -- wait() sleeps on it (seen from another process meanwhile)...
    local org2, key2 = H.new_org()
    H.faults(org2, { { delay = 1 } })
    local op2 = slashid.start_rotate_key(H.opts(org2, key2))
    local listing = H.tmpname("fds")
    os.execute(("(sleep 0.5; ls -l /proc/%s/fd/ >%s) &"):format(PID, listing))
    assert.is_true(op2:wait(5))
    H.wait_for("the listing", 5, function() return H.read_if_any(listing) ~= nil end)
    assert.matches("eventpoll", H.read_file(listing))
    -- ...and nobody else knows it: closed with the sockets
    H.assert_no_fd_leak(base)
    -- handed out: kept while the op lives, the op finished or not
    local org3, key3 = H.new_org()
    local op3 = slashid.start_rotate_key(H.opts(org3, key3))
    local fd = op3:pollfd()
    assert.is_true(op3:wait(5))
    -- the descriptor, and the pipe in it that keeps it readable now that
    -- the op is over (a loop asleep on it wakes, and finds it so again)
    assert.are.equal(base + 2, fds_after(base + 2))
    assert.are.equal(fd, op3:pollfd())
    assert.are.equal("anon_inode:[eventpoll]", fd_target(fd))
    op3 = nil
    collectgarbage("collect")
    collectgarbage("collect")
    H.assert_no_fd_leak(base)
  end)
end)

describe("pollable ops: descriptors are never leaked", function()
  it("the descriptor is closed when the op is collected", function()
    local org, key = H.new_org()
    local op = slashid.start_rotate_key(H.opts(org, key))
    local fd = op:pollfd()
    assert.is_true(op:wait(5))
    assert.are.equal("anon_inode:[eventpoll]", fd_target(fd))
    op = nil
    local deadline = now() + 2
    repeat
      collectgarbage("collect")
      if fd_target(fd) ~= "anon_inode:[eventpoll]" then break end
      socket.sleep(0.05)
    until now() > deadline
    assert.are_not.equal("anon_inode:[eventpoll]", fd_target(fd))
  end)

  it("many ops (finished, pending, in back-off, checks) each hold one descriptor, and none is left once collected", function()
    local base = baseline_fds()
    local ops = {}
    for _ = 1, 8 do                  -- finished
      local org, key = H.new_org()
      local op = slashid.start_rotate_key(H.opts(org, key))
      op:pollfd()
      assert.is_true(op:wait(5))
      ops[#ops + 1] = op
    end
    for _ = 1, 4 do                  -- finished checks
      local org, key = H.new_org()
      local op = slashid.start_check_key(H.opts(org, key))
      op:pollfd()
      assert.is_true(op:wait(5))
      ops[#ops + 1] = op
    end
    for _ = 1, 8 do                  -- pending: the server holds the answer
      local org, key = H.new_org()
      H.faults(org, { { delay = 1 } })
      local op = slashid.start_rotate_key(H.opts(org, key))
      op:pollfd()
      op:poll()
      ops[#ops + 1] = op
    end
    for _ = 1, 4 do                  -- in back-off after a refused connection
      local op = slashid.start_rotate_key({ org_id = "org", api_key = "sk_back_off_key",
        base_url = "http://127.0.0.1:" .. H.closed_port(), retries = 3, retry_delay = 5 })
      op:pollfd()
      op:poll()
      op:poll()
      ops[#ops + 1] = op
    end
    local during = open_fds()
    -- 24 descriptors, plus the pending ones' sockets
    assert.is_true(during >= base + 24, ("%d open with 24 ops, %d before"):format(during, base))
    ops = nil
    collectgarbage("collect")
    collectgarbage("collect")
    H.assert_no_fd_leak(base)
  end)
end)

describe("slashid.start_check_key", function()
  local function check(opts)
    local op = slashid.start_check_key(opts)
    assert.is_false(op:poll())
    assert.is_true(op:wait(10))
    return op, select("#", op:results()), op:results()
  end

  it("ok = true for a key that works, with the three values of check_key, and rotates nothing", function()
    local org, key = H.new_org()
    local op, n, ok, errors, info = check(H.opts(org, key))
    assert.are.equal(3, n)
    assert.is_true(ok)
    assert.are.same({}, errors)
    assert.are.equal(200, info.status)
    assert.are.equal(1, info.attempts)
    assert.are.equal(key, H.org(org).api_key)
    assert.are.equal(0, H.org(org).rotations)
    assert.are.equal("GET", H.org(org).requests[1].method)
    assert.matches("slashid.Op", tostring(op))
    -- the same answer as the blocking call
    local ok2 = slashid.check_key(H.opts(org, key))
    assert.are.equal(ok, ok2)
  end)

  it("ok = false for a refused key (401), with the server's entry", function()
    local org = H.new_org()
    local _, n, ok, errors, info = check(H.opts(org, "sk_not_this_orgs_key"))
    assert.are.equal(3, n)
    assert.is_false(ok)
    assert.are.equal(401, info.status)
    assert.are.equal(401, errors[1].httpcode)
    H.assert_no_secret(H.messages(errors), "sk_not_this_orgs_key")
  end)

  it("ok = nil when the server is down (retries as check_key: 3 attempts)", function()
    local _, n, ok, errors, info = check({ org_id = "org", api_key = "sk_down_server_key",
      base_url = "http://127.0.0.1:" .. H.closed_port(), retry_delay = 0.01, retry_max_delay = 0.02 })
    assert.are.equal(3, n)
    assert.is_nil(ok)
    assert.are.equal(0, errors[1].httpcode)
    assert.are.equal(7, errors[1].curl_code)
    assert.are.equal(3, info.attempts)
  end)

  it("client:start_check_key uses the client's defaults (and ignores those that do not concern it)", function()
    local org, key = H.new_org()
    local client = slashid.new(H.opts(org, key, { save_to = H.tmpname("never"), verify = true }))
    local op = client:start_check_key()
    assert.is_true(op:wait(5))
    local ok, errors = op:results()
    assert.is_true(ok, H.messages(errors))
    -- a per-call override: a refused key
    local op2 = client:start_check_key({ api_key = "sk_override_refused" })
    assert.is_true(op2:wait(5))
    assert.is_false((op2:results()))
    assert.are.equal(0, H.org(org).rotations)
    client:close()
    assert.has_error(function() client:start_check_key() end, "slashid: client is closed")
  end)

  it("takes only the options that concern a request, before any network activity", function()
    local org, key = H.new_org()
    local ok, err = pcall(slashid.start_check_key, H.opts(org, key, { save_to = "x" }))
    assert.is_false(ok)
    assert.matches("^slashid: ", err)
    assert.matches("save_to", err)
    H.assert_no_secret(err, key)
    assert.are.equal(0, H.requests(org))
  end)

  it("cancel() before the answer: nil, with an entry saying so", function()
    local org, key = H.new_org()
    H.faults(org, { { delay = 2 } })
    local op = slashid.start_check_key(H.opts(org, key))
    H.wait_for("the request", 5, function()
      op:poll()
      return H.requests(org) >= 1
    end)
    op:cancel()
    assert.is_true(op:poll())
    local ok, errors = op:results()
    assert.is_nil(ok)
    assert.matches("cancel", H.messages(errors))
    assert.are.equal(0, op:timeout())
  end)
end)

describe("pollable ops under cqueues", function()
  local function need_cqueues()
    if not has_cqueues then
      pending("lua-cqueues is not installed (sh scripts/deps.sh lua-cqueues)")
      return false
    end
    return true
  end

  it("cqueues.poll(op) inside a controller: the op finishes while other coroutines run", function()
    if not need_cqueues() then return end
    local org, key = H.new_org()
    H.faults(org, { { delay = 1 } })
    local cq = cqueues.new()
    local op = slashid.start_check_key(H.opts(org, key))
    local wakes, ticks, done = 0, 0, false
    cq:wrap(function()
      while not op:poll() do
        cqueues.poll(op, 5)
        wakes = wakes + 1
      end
      done = true
    end)
    cq:wrap(function()
      while not done do
        ticks = ticks + 1
        cqueues.sleep(0.05)
      end
    end)
    local c0 = os.clock()
    assert(cq:loop(10))
    local cpu = os.clock() - c0
    assert.is_true(done)
    assert.is_true((op:results()))
    assert.is_true(ticks >= 10, "the other coroutine ran " .. ticks .. " times")
    assert.is_true(wakes < 30, "the op's coroutine woke " .. wakes .. " times")
    assert.is_true(cpu < 0.2, ("%.3f s of CPU"):format(cpu))
  end)

  it("an op collected while cqueues polls its descriptor (by number) crashes nothing; the descriptor is just closed", function()
    if not need_cqueues() then return end
    local org, key = H.new_org()
    H.faults(org, { { delay = 1 } })
    local op = slashid.start_rotate_key(H.opts(org, key))
    op:poll()
    local fd = op:pollfd()
    local cq = cqueues.new()
    local finished = false
    cq:wrap(function()
      -- a loop holding the number only, as luv or a C host would
      cqueues.poll({ pollfd = fd, events = "r" }, 1)
      finished = true
    end)
    assert(cq:step(0))
    op = nil
    local deadline = now() + 2
    repeat
      collectgarbage("collect")
    until fd_target(fd) ~= "anon_inode:[eventpoll]" or now() > deadline
    assert.are_not.equal("anon_inode:[eventpoll]", fd_target(fd))
    -- a new op may get the same number; the loop goes on (cqueues reports
    -- the vanished descriptor as an error of its own, it does not crash)
    local org2, key2 = H.new_org()
    local op2 = slashid.start_rotate_key(H.opts(org2, key2))
    op2:pollfd()
    local ok, err = cq:loop(5)
    io.stderr:write(("\n[pollable] cqueues after the descriptor closed: %s %s\n")
                    :format(tostring(ok), tostring(err)))
    assert.is_true(finished)
    assert.is_true(op2:wait(5))
    local _, errors, _, info = op2:results()
    assert.are.equal("rotated", info.outcome, H.messages(errors))
  end)
end)

describe("op:wait and signals (while the command catches them)", function()
  it("a first signal wakes the wait but lets the op go on; a second raises the interrupt at once", function()
    local org, key = H.new_org()
    H.faults(org, { { delay = 3 } })
    core.catch_signals("")
    local ok, err, elapsed, count
    local t0 = now()
    local op = slashid.start_rotate_key(H.opts(org, key))
    -- two SIGINTs from outside, 0.4 s apart
    os.execute(("(sleep 0.4; kill -INT %s; sleep 0.4; kill -INT %s) >/dev/null 2>&1 &")
               :format(PID, PID))
    ok, err = pcall(op.wait, op, 10)
    elapsed = now() - t0
    -- both signals delivered before release (else the second one, if the
    -- wait ended early, would stop this process)
    pcall(H.wait_for, "the second signal", 5, function() return core.signal_count() >= 2 end)
    count = core.signal_count()
    op:cancel()
    core.release_signals()
    assert.is_false(ok)
    assert.are.equal(core.INTERRUPTED, err)
    assert.are.equal(2, count)
    assert.is_true(elapsed >= 0.7 and elapsed < 2.5, ("interrupted after %.3f s"):format(elapsed))
    local _, errors, _, info = op:results()
    assert.are.equal("unknown", info.outcome, H.messages(errors))
  end)
end)

describe("pollable ops: what a host, another coroutine or a child process may do to an op", function()
  it("a loop asleep on an op wakes at once when another coroutine cancels it", function()
    if not has_cqueues then pending("cqueues not installed (Debian: lua-cqueues)") return end
    local org, key = H.new_org()
    H.faults(org, { { delay = 20 } })
    local op = slashid.start_rotate_key(H.opts(org, key))
    local cq = cqueues.new()
    local woke_after
    local t0 = now()
    cq:wrap(function()
      while not op:poll() do cqueues.poll(op) end
      woke_after = now() - t0
    end)
    cq:wrap(function()
      cqueues.sleep(0.5)
      op:cancel()
    end)
    assert(cq:loop(15))
    assert.is_number(woke_after)
    assert.is_true(woke_after < 3, ("the waiter woke after %.2f s"):format(woke_after))
    -- finished: the descriptor stays readable, and timeout() is 0
    assert.is_true(readable(op:pollfd(), 0))
    assert.are.equal(0, op:timeout())
    local _, _, _, info = op:results()
    assert.are.equal("unknown", info.outcome)
  end)

  it("the host closes op:pollfd() and /dev/null takes the number: no spin, no close of the host's file", function()
    local org, key = H.new_org()
    H.faults(org, { { delay = 1.5 } })
    local op = slashid.start_rotate_key(H.opts(org, key))
    local fd = op:pollfd()
    -- close the number from Lua (LuaSocket wraps any descriptor), then let
    -- the next open take it
    local s = socket.tcp()
    s:setfd(fd)
    s:close()
    local f = assert(io.open("/dev/null", "rb"))
    assert.are.equal("/dev/null", fd_target(fd), "the number went elsewhere: test void")
    local c0 = os.clock()
    assert.is_true(op:wait(10))
    local cpu = os.clock() - c0
    local result, errors, _, info = op:results()
    assert.are.equal("rotated", info.outcome, H.messages(errors))
    H.assert_key_equal(H.org(org).api_key, result.api_key)
    assert.is_true(cpu < 0.3, ("op:wait used %.3f s of CPU"):format(cpu))
    local ok, msg = pcall(op.pollfd, op)
    assert.is_false(ok)
    assert.matches("closed by the host", msg)
    op = nil
    collectgarbage("collect")
    collectgarbage("collect")
    -- the host's file is still its own
    assert.are.equal("/dev/null", fd_target(fd))
    assert.are.equal("", f:read("*a"))
    f:close()
  end)

  it("the host closes op:pollfd() and another epoll set (a cqueues controller) takes the number", function()
    -- every epoll descriptor is the same inode: only the set's marker
    -- (pollset.c) tells ours from the controller's
    if not has_cqueues then pending("cqueues not installed (Debian: lua-cqueues)") return end
    local org, key = H.new_org()
    H.faults(org, { { delay = 1 } })
    local op = slashid.start_rotate_key(H.opts(org, key))
    local fd = op:pollfd()
    op:wait(0.3)                               -- the request is out
    local s = socket.tcp()
    s:setfd(fd)
    s:close()
    local cq = cqueues.new()
    if cq:pollfd() ~= fd then pending("the controller got another number: test void") return end
    local result, info
    cq:wrap(function()
      while not op:poll() do cqueues.sleep(0.05) end
      cqueues.sleep(0)                         -- one more turn of the controller
      local r, _, _, i = op:results()
      result, info = r, i
    end)
    assert(cq:loop(10))
    assert.are.equal("rotated", info.outcome)
    H.assert_key_equal(H.org(org).api_key, result.api_key)
    op = nil
    collectgarbage("collect")
    collectgarbage("collect")
    -- the controller's descriptor survived the op's collection, and works
    assert.are.equal("anon_inode:[eventpoll]", fd_target(fd))
    local woke = false
    cq:wrap(function() cqueues.sleep(0.01) woke = true end)
    assert(cq:loop(5))
    assert.is_true(woke)
  end)

  it("a program started while a rotation is in flight inherits none of its TCP sockets", function()
    local org, key = H.new_org()
    H.faults(org, { { delay = 1.5 } })
    local op = slashid.start_rotate_key(H.opts(org, key))
    H.wait_for("the request", 10, function() op:poll() return H.requests(org) >= 1 end)
    -- the TCP connections to the emulator (by inode, /proc/net/tcp)
    local port = tonumber(H.http_url:match(":(%d+)$"))
    local tcp = {}
    for line in io.lines("/proc/net/tcp") do
      local rem_port, inode = line:match("^%s*%d+: %x+:%x+ %x+:(%x+) %x+ %x+:%x+ %x+:%x+ %x+%s+%d+%s+%d+%s+(%d+)")
      if rem_port and tonumber(rem_port, 16) == port and inode ~= "0" then tcp[inode] = true end
    end
    assert.is_truthy(next(tcp), "no connection to the emulator seen")
    -- a child lists its own descriptors
    local listing = capture("ls -l /proc/self/fd/ 2>/dev/null")
    for inode in listing:gmatch("socket:%[(%d+)%]") do
      assert.is_nil(tcp[inode], "a child inherited the op's connection")
    end
    assert.is_true(op:wait(10))
    local _, errors, _, info = op:results()
    assert.are.equal("rotated", info.outcome, H.messages(errors))
  end)

  it("fork: the child cannot drive the parent's op, and its exit does not stall the parent", function()
    if not capture("command -v luajit"):find("luajit") or
       not H.read_if_any("build/luajit/slashid/core.so") then
      pending("needs LuaJIT (its FFI calls fork) and the module built for it")
      return
    end
    local org, key = H.new_org()
    H.faults(org, { { delay = 1.5 } })
    local dir = H.mkdir(H.tmpname("fork"))
    local script = H.write(dir .. "/fork.lua", ([[
local ffi = require "ffi"
ffi.cdef "int fork(void); int waitpid(int, int *, int);"
local slashid = require "slashid"
local core = require "slashid.core"
local op = slashid.start_rotate_key{ org_id = %q, api_key = os.getenv("KEY"), base_url = %q,
  request_timeout = 12 }
op:pollfd()
local t0 = core.now()
repeat op:poll() core.sleep(0.01) until core.now() - t0 > 0.3
local pid = ffi.C.fork()
if pid == 0 then
  local ok, err = pcall(op.poll, op)
  io.stdout:write("child poll ok=", tostring(ok), " err=", tostring(err), "\n")
  io.stdout:flush()
  os.exit(0, true)          -- closes the state: the op is collected here
end
ffi.C.waitpid(pid, nil, 0)
t0 = core.now()
assert(op:wait(20))
local _, errors, _, info = op:results()
print(("parent outcome=%%s waited=%%.2f %%s"):format(info.outcome, core.now() - t0,
  errors[1] and errors[1].message or ""))
]]):format(org, H.http_url))
    -- (the child leaves the parent's libcurl state alone by design, so a
    -- leak checker preloaded by `make check-asan` would report it)
    local out = capture(("cd %s && KEY=%s ASAN_OPTIONS=\"${ASAN_OPTIONS:-}:detect_leaks=0\" " ..
                    "LUA_PATH='lua/?.lua;;' LUA_CPATH='build/luajit/?.so;;' luajit %s 2>&1")
      :format(H.q(os.getenv("PWD") or "."), H.q(key), H.q(script)))
    H.assert_no_secret(out, key)
    assert.matches("child poll ok=false err=slashid: this operation belongs to the process", out)
    local outcome, waited = out:match("parent outcome=(%S+) waited=([%d.]+)")
    assert.are.equal("rotated", outcome, out)
    assert.is_true(tonumber(waited) < 5, "the parent waited " .. tostring(waited) .. " s")
  end)
end)
