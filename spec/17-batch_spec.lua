-- rotate_keys: many organizations over one curl multi. Results in input
-- order whatever the order of completion, one failure never stopping the
-- others, every item following rotate_key's outcome and retry rules,
-- concurrency and rate respected, on_progress once per item, per-item
-- save_to written as each answer arrives, connections reused, argument
-- errors raised before any request.
local H = require "helpers"
local slashid = require "slashid"
local socket = require "socket"

local now = socket.gettime

local orgs = H.orgs
local items = H.items

local messages = H.messages

local assert_rotated = H.assert_rotated

describe("rotate_keys", function()
  for _, scheme in ipairs({ "http", "https" }) do
    it("returns results in input order when items finish in another order (" .. scheme .. ")", function()
      local list = orgs(6)
      local delays = { 0.4, 0, 0.25, 0, 0.15, 0 }
      for i, d in ipairs(delays) do
        if d > 0 then H.faults(list[i].org_id, { { delay = d } }) end
      end
      local finished = {}
      local extra = scheme == "https" and { base_url = H.https_url, ca_file = H.ca_file } or nil
      local out = slashid.rotate_keys(items(list, extra), {
        concurrency = 6,
        on_progress = function(_, _, index) finished[#finished + 1] = index end,
      })
      assert.are.equal(6, #out)
      for i, o in ipairs(list) do
        assert_rotated(o, out[i])
        assert.are.equal(1, H.requests(o.org_id))
      end
      -- the delayed ones finished last, longest delay last (the slow first
      -- item holds up no other): completion order differs from input
      -- order, results do not
      assert.are.same({ 5, 3, 1 }, { finished[4], finished[5], finished[6] })
    end)
  end

  it("keeps going past 401, 500 and a closed connection; one request per failed item", function()
    local list = orgs(6)
    H.faults(list[2].org_id, { { status = 401 } })
    H.faults(list[3].org_id, { { status = 500, rotate = true } })
    H.faults(list[4].org_id, { { action = "close" } })
    H.faults(list[5].org_id, { { delay = 0.2 } })
    local out = slashid.rotate_keys(items(list), { concurrency = 3 })
    assert.are.equal(6, #out)
    assert_rotated(list[1], out[1])
    assert.are.equal("not_rotated", out[2].info.outcome)
    assert.are.equal(401, out[2].info.status)
    assert.is_nil(out[2].result)
    assert.are.equal("unknown", out[3].info.outcome)
    assert.are.equal(500, out[3].info.status)
    assert.is_nil(out[3].result)
    assert.are.equal("unknown", out[4].info.outcome)
    assert.are.equal(0, out[4].info.status)
    assert.is_nil(out[4].result)
    assert_rotated(list[5], out[5])
    assert_rotated(list[6], out[6])
    for i = 2, 4 do
      assert.is_true(#out[i].errors >= 1)
      assert.are.equal(1, out[i].info.attempts)
      -- never retried: exactly one request reached the emulator
      assert.are.equal(1, H.requests(list[i].org_id), "item " .. i)
    end
    -- the 500 carried out the rotation on the server: unknown, not lost by a retry
    assert.are.equal(1, H.org(list[3].org_id).rotations)
    assert.are.equal(0, H.org(list[2].org_id).rotations)
    for _, i in ipairs({ 1, 5, 6 }) do assert.are.equal(1, H.requests(list[i].org_id)) end
  end)

  it("retries an item's 429 like rotate_key, without holding up the others", function()
    local list = orgs(3)
    H.faults(list[2].org_id, { { status = 429, headers = { ["Retry-After"] = "0" } } })
    local out = slashid.rotate_keys(items(list), { concurrency = 3 })
    for i, o in ipairs(list) do assert_rotated(o, out[i]) end
    assert.are.equal(2, out[2].info.attempts)
    assert.are.equal(2, H.requests(list[2].org_id))
  end)

  it("respects concurrency (6 items of 0.3 s: about 0.9 s at 2, 0.3 s at 6)", function()
    local function run(concurrency)
      local list = orgs(6)
      for _, o in ipairs(list) do H.faults(o.org_id, { { delay = 0.3 } }) end
      local t0 = now()
      local out = slashid.rotate_keys(items(list), { concurrency = concurrency })
      local elapsed = now() - t0
      for i, o in ipairs(list) do assert_rotated(o, out[i]) end
      return elapsed
    end
    local at2 = run(2)
    assert.is_true(at2 >= 0.85, ("concurrency 2 took %.3f s"):format(at2))
    local at6 = run(6)
    assert.is_true(at6 >= 0.28, ("concurrency 6 took %.3f s"):format(at6))
    assert.is_true(at6 < 0.75, ("concurrency 6 took %.3f s"):format(at6))
  end)

  it("never has more than `concurrency` requests in flight", function()
    local list = orgs(8)
    for _, o in ipairs(list) do H.faults(o.org_id, { { delay = 0.2 } }) end
    local out = slashid.rotate_keys(items(list), { concurrency = 3 })
    -- arrival times at the emulator: any 4 consecutive ones span at least
    -- one delay (the 4th could only start once one of 3 had finished)
    local times = {}
    for i, o in ipairs(list) do
      assert_rotated(o, out[i])
      times[i] = H.org(o.org_id).requests[1].time
    end
    table.sort(times)
    for i = 4, #times do
      assert.is_true(times[i] - times[i - 3] >= 0.15,
                     ("requests %d and %d %.3f s apart"):format(i - 3, i, times[i] - times[i - 3]))
    end
  end)

  it("limits request starts with `rate` (10 items at 10/s take >= 0.9 s)", function()
    local list = orgs(10)
    local t0 = now()
    local out = slashid.rotate_keys(items(list), { concurrency = 10, rate = 10 })
    local elapsed = now() - t0
    for i, o in ipairs(list) do assert_rotated(o, out[i]) end
    assert.is_true(elapsed >= 0.85, ("took %.3f s"):format(elapsed))
    assert.is_true(elapsed < 3, ("took %.3f s"):format(elapsed))
    local times = {}
    for i, o in ipairs(list) do times[i] = H.org(o.org_id).requests[1].time end
    table.sort(times)
    assert.is_true(times[10] - times[1] >= 0.8, "starts spread over the second")
  end)

  it("calls on_progress once per item: (done, total, index, outcome, item)", function()
    local list = orgs(5)
    H.faults(list[2].org_id, { { status = 401 } })
    H.faults(list[4].org_id, { { status = 503 } })
    local calls = {}
    local out = slashid.rotate_keys(items(list), {
      concurrency = 2,
      on_progress = function(...)
        calls[#calls + 1] = { n = select("#", ...), ... }
      end,
    })
    assert.are.equal(5, #calls)
    local seen = {}
    for k, c in ipairs(calls) do
      local done, total, index, outcome, item = c[1], c[2], c[3], c[4], c[5]
      assert.are.equal(k, done)
      assert.are.equal(5, total)
      assert.is_nil(seen[index], "index reported twice")
      seen[index] = true
      assert.are.equal(out[index].info.outcome, outcome)
      assert.are.equal(out[index], item)
    end
    for i = 1, 5 do assert.is_true(seen[i]) end
    assert.are.same({ "rotated", "not_rotated", "rotated", "unknown", "rotated" },
                    { out[1].info.outcome, out[2].info.outcome, out[3].info.outcome,
                      out[4].info.outcome, out[5].info.outcome })
  end)

  it("writes each item's save_to as its answer arrives (seen from on_progress)", function()
    local dir = H.mkdir(H.tmpname("batch-save"))
    local list = orgs(4)
    H.faults(list[3].org_id, { { status = 401 } })
    H.faults(list[4].org_id, { { delay = 0.3 } })
    local its = items(list)
    for i, it in ipairs(its) do it.save_to = dir .. "/key" .. i end
    local checked = {}
    local out = slashid.rotate_keys(its, {
      concurrency = 4,
      on_progress = function(_, _, index, outcome, item)
        local f = io.open(dir .. "/key" .. index, "rb")
        if outcome == "rotated" then
          assert(f, "key file missing inside on_progress")
          local content = f:read("*a")
          f:close()
          checked[index] = content == item.result.api_key .. "\n" and
                           H.mode(dir .. "/key" .. index) == "600"
        else
          checked[index] = f == nil
          if f then f:close() end
        end
      end,
    })
    assert.is_nil(out.on_progress_error)
    assert.are.same({ true, true, true, true }, checked)
    for _, i in ipairs({ 1, 2, 4 }) do
      assert_rotated(list[i], out[i])
      assert.is_true(out[i].info.saved)
      assert.are.equal(out[i].result.api_key .. "\n", H.read_file(its[i].save_to))
    end
    assert.is_nil(out[3].info.saved)
  end)

  it("reuses connections: 30 items open at most `concurrency` new connections", function()
    local list = orgs(30)
    local before = H.stats().connections
    local out = slashid.rotate_keys(items(list), { concurrency = 4 })
    local opened = H.stats().connections - before
    for i, o in ipairs(list) do assert_rotated(o, out[i]) end
    assert.is_true(opened >= 1 and opened <= 4, ("%d connections for 30 items"):format(opened))
  end)

  it("reuses connections over https too (TLS sessions, keep-alive)", function()
    local list = orgs(20)
    local before = H.stats().https_connections
    local out = slashid.rotate_keys(items(list, { base_url = H.https_url, ca_file = H.ca_file }),
                                    { concurrency = 4 })
    local opened = H.stats().https_connections - before
    for i, o in ipairs(list) do assert_rotated(o, out[i]) end
    assert.is_true(opened >= 1 and opened <= 4, ("%d connections for 20 items"):format(opened))
  end)

  it("lets per-item options override the shared ones", function()
    local list = orgs(3)
    local its = items(list)
    its[2].consistency = "local_region"
    its[2].timeout = 7
    its[3].base_url = H.http_url   -- the shared one below refuses connections
    its[1].base_url = H.http_url
    its[2].base_url = H.http_url
    local out = slashid.rotate_keys(its, {
      consistency = "all_regions", timeout = 60,
      base_url = "http://127.0.0.1:" .. H.closed_port(),
    })
    for i, o in ipairs(list) do assert_rotated(o, out[i]) end
    local h1 = H.org(list[1].org_id).requests[1].headers
    local h2 = H.org(list[2].org_id).requests[1].headers
    assert.are.equal("all_regions", h1["slashid-required-consistency"])
    assert.are.equal("60", h1["slashid-required-consistency-timeout"])
    assert.are.equal("local_region", h2["slashid-required-consistency"])
    assert.are.equal("7", h2["slashid-required-consistency-timeout"])

    -- and the shared base_url applies where an item has none
    local other = orgs(1)[1]
    local it = { org_id = other.org_id, api_key = other.api_key }
    out = slashid.rotate_keys({ it }, { base_url = "http://127.0.0.1:" .. H.closed_port(),
                                        retries = 0 })
    assert.are.equal("not_rotated", out[1].info.outcome)
    assert.are.equal(0, H.requests(other.org_id))
  end)

  it("raises `slashid: item N: ...` for a bad item before any request", function()
    local list = orgs(3)
    local its = items(list)
    its[2].timeout = 500
    local ok, err = pcall(slashid.rotate_keys, its, { concurrency = 2 })
    assert.is_false(ok)
    assert.matches("^slashid: item 2: ", err)
    assert.matches("timeout", err)
    its[2].timeout = nil
    its[3].timout = 5
    ok, err = pcall(slashid.rotate_keys, its)
    assert.is_false(ok)
    assert.matches("^slashid: item 3: unknown option 'timout'", err)
    its[3].timout = nil
    its[1].api_key = "bad\nkey"
    ok, err = pcall(slashid.rotate_keys, its)
    assert.is_false(ok)
    assert.matches("^slashid: item 1: ", err)
    H.assert_no_secret(err, list[1].api_key)
    for _, o in ipairs(list) do
      assert.are.equal(0, H.requests(o.org_id))
      assert.are.equal(0, H.org(o.org_id).rotations)
    end
    -- batch options are checked too
    ok, err = pcall(slashid.rotate_keys, items(list), { concurrency = 0 })
    assert.is_false(ok)
    assert.matches("^slashid: bad option 'concurrency'", err)
    ok, err = pcall(slashid.rotate_keys, items(list), { rate = -1 })
    assert.is_false(ok)
    assert.matches("^slashid: bad option 'rate'", err)
    for _, o in ipairs(list) do assert.are.equal(0, H.requests(o.org_id)) end
  end)

  it("returns an empty array for an empty list", function()
    assert.are.same({}, slashid.rotate_keys({}, { concurrency = 2 }))
  end)

  it("works as client:rotate_keys, with the client's defaults", function()
    local list = orgs(3)
    local client = slashid.new{ base_url = H.http_url, consistency = "all_regions",
                                retry_delay = 0.01, retry_max_delay = 0.05 }
    local its = {}
    for i, o in ipairs(list) do its[i] = { org_id = o.org_id, api_key = o.api_key } end
    local out = client:rotate_keys(its, { concurrency = 2 })
    for i, o in ipairs(list) do
      assert_rotated(o, out[i])
      assert.are.equal("all_regions",
                       H.org(o.org_id).requests[1].headers["slashid-required-consistency"])
    end
    client:close()

    -- an item without org_id/api_key rotates the client's own key, which it adopts
    local own = orgs(1)[1]
    client = slashid.new(H.opts(own.org_id, own.api_key))
    out = client:rotate_keys({ {} })
    assert_rotated(own, out[1])
    assert.is_true(client:check_key())
    client:close()
  end)

  it("keeps every result when on_progress raises (reported, not called again)", function()
    local list = orgs(4)
    local calls = 0
    local out = slashid.rotate_keys(items(list), {
      concurrency = 2,
      on_progress = function()
        calls = calls + 1
        error("progress display broke")
      end,
    })
    assert.are.equal(1, calls)
    assert.matches("progress display broke", out.on_progress_error)
    for i, o in ipairs(list) do assert_rotated(o, out[i]) end
  end)
end)
