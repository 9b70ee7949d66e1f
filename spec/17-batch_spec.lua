-- rotate_keys: many organizations over one curl multi. Results in input
-- order whatever the order of completion, one failure never stopping the
-- others, every item following rotate_key's outcome and retry rules,
-- concurrency and rate respected, on_progress once per item, per-item
-- save_to written as each answer arrives (two items never sharing one
-- file), connections reused, argument errors raised before any request.
-- Then rotate_keys as a stream (issue 9, item 5): an iterator as `list`,
-- pulled only when an item is about to start; on_result as each item
-- finishes; keep_results = false returning a summary with memory flat;
-- on_progress returning false; bad iterator items as results; a raising
-- iterator or on_result that loses no key in flight; the stream's options
-- checked before anything starts; a batch interrupted by a second signal.
local H = require "helpers"
local slashid = require "slashid"
local socket = require "socket"

local now = socket.gettime
local q, write = H.q, H.write

local orgs, items = H.orgs, H.items

local messages = H.messages

local assert_rotated = H.assert_rotated

-- An iterator over orgs() (H.opts' fast retries, `extra` merged in),
-- counting its calls in it.calls; `stop_at`: the call that returns nil.
local function iterate(list, extra, stop_at)
  local it = { calls = 0 }
  it.fn = function(...)
    assert(select("#", ...) == 0, "the iterator is called with no arguments")
    it.calls = it.calls + 1
    local o = list[it.calls]
    if not o or it.calls == stop_at then return nil end
    return H.opts(o.org_id, o.api_key, extra)
  end
  return it
end

local function assert_untouched(o)
  assert.are.equal(0, H.requests(o.org_id))
  assert.are.equal(0, H.org(o.org_id).rotations)
end

local count_keys = H.count_keys

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

describe("two items of a batch never share a save_to file", function()
  it("an array whose items would write one file is refused before anything is sent", function()
    local o1, k1 = H.new_org()
    local o2, k2 = H.new_org()
    local path = H.mkdir(H.tmpname("shared")) .. "/key"
    local ok, err = pcall(slashid.rotate_keys, { H.opts(o1, k1), H.opts(o2, k2) },
                          { save_to = path })
    assert.is_false(ok)
    assert.matches("^slashid: item 2: save_to is item 1's save_to too", err)
    assert.are.equal(0, H.requests(o1) + H.requests(o2))
  end)

  it("an iterator's item that would reuse a file is not sent; the first key stays saved", function()
    local o1, k1 = H.new_org()
    local o2, k2 = H.new_org()
    local path = H.mkdir(H.tmpname("shared")) .. "/key"
    local items = { H.opts(o1, k1, { save_to = path }), H.opts(o2, k2, { save_to = path }) }
    local n = 0
    local out = slashid.rotate_keys(function() n = n + 1; return items[n] end)
    assert.are.equal("rotated", out[1].info.outcome)
    assert.is_true(out[1].info.saved)
    assert.are.equal("not_rotated", out[2].info.outcome)
    assert.matches("save_to is item 1's save_to too", out[2].errors[1].message)
    assert.are.equal(0, H.requests(o2))
    assert.are.equal(out[1].result.api_key .. "\n", H.read_file(path))
  end)

  it("two spellings of one file (./, a symbolic link to its folder, //) are refused", function()
    local o1, k1 = H.new_org()
    local o2, k2 = H.new_org()
    local dir = H.mkdir(H.tmpname("spell"))
    write(dir .. "/key", "old\n")
    assert(os.execute("ln -s " .. q(dir) .. " " .. q(dir .. "-link")))
    for _, other in ipairs({ dir .. "/./key", dir .. "-link//key" }) do
      local ok, err = pcall(slashid.rotate_keys, { H.opts(o1, k1, { save_to = dir .. "/key" }),
                                                   H.opts(o2, k2, { save_to = other }) })
      assert.is_false(ok)
      assert.matches("save_to is item 1's save_to too", err)
    end
    assert.are.equal(0, H.requests(o1) + H.requests(o2))
  end)
end)

describe("rotate_keys with an iterator", function()
  it("pulls one item per free slot, never ahead (concurrency 1: after the previous finished)", function()
    local list = orgs(5)
    local it = iterate(list)
    local delivered = 0
    local pulled_after = {}
    local fn = it.fn
    it.fn = function()
      -- how many items had been delivered when this one was pulled
      pulled_after[#pulled_after + 1] = delivered
      return fn()
    end
    local out = slashid.rotate_keys(it.fn, {
      concurrency = 1,
      on_result = function() delivered = delivered + 1 end,
    })
    -- 5 items and the nil that ended the list; never called after it
    assert.are.equal(6, it.calls)
    assert.are.same({ 0, 1, 2, 3, 4, 5 }, pulled_after)
    assert.are.equal(5, #out)
    for i, o in ipairs(list) do assert_rotated(o, out[i]) end
  end)

  it("at concurrency 3 never holds more than 3 pulled items that are not delivered", function()
    local list = orgs(9)
    for i = 1, 9, 2 do H.faults(list[i].org_id, { { delay = 0.15 } }) end
    local it = iterate(list)
    local fn, pulled, delivered, most = it.fn, 0, 0, 0
    it.fn = function()
      local v = fn()
      if v then
        pulled = pulled + 1
        if pulled - delivered > most then most = pulled - delivered end
      end
      return v
    end
    local out = slashid.rotate_keys(it.fn, {
      concurrency = 3,
      on_result = function() delivered = delivered + 1 end,
    })
    assert.are.equal(3, most)
    assert.are.equal(10, it.calls)
    for i, o in ipairs(list) do assert_rotated(o, out[i]) end
  end)

  it("an iterator returning nil early stops the batch: later organizations never touched", function()
    local list = orgs(8)
    local it = iterate(list, nil, 4)
    local out = slashid.rotate_keys(it.fn, { concurrency = 2 })
    assert.are.equal(4, it.calls)
    assert.are.equal(3, #out)
    for i = 1, 3 do assert_rotated(list[i], out[i]) end
    for i = 4, 8 do assert_untouched(list[i]) end
  end)

  it("an empty iterator: called once, nothing sent, an empty result or summary", function()
    local calls = 0
    local out = slashid.rotate_keys(function() calls = calls + 1 end)
    assert.are.same({}, out)
    assert.are.equal(1, calls)
    local sum = slashid.rotate_keys(function() calls = calls + 1 end, { keep_results = false })
    assert.are.same({ rotated = 0, not_rotated = 0, unknown = 0, not_saved = 0 }, sum)
    assert.are.equal(2, calls)
  end)

  it("on_progress gets total = nil; results come back in pull order", function()
    local list = orgs(4)
    H.faults(list[1].org_id, { { delay = 0.3 } })
    local seen = {}
    local out = slashid.rotate_keys(iterate(list).fn, {
      concurrency = 4,
      on_progress = function(done, total, index, outcome, item)
        seen[#seen + 1] = { done = done, total = total, index = index, outcome = outcome, item = item }
      end,
    })
    assert.are.equal(4, #seen)
    for k, s in ipairs(seen) do
      assert.are.equal(k, s.done)
      assert.is_nil(s.total)
      assert.are.equal("rotated", s.outcome)
      assert.are.equal(out[s.index], s.item)
    end
    assert.are.equal(1, seen[4].index)   -- the slow first item finished last
    for i, o in ipairs(list) do assert_rotated(o, out[i]) end
  end)

  it("rotates through a client, which adopts its own new key", function()
    local org, key = H.new_org()
    local others = orgs(2)
    local client = slashid.new(H.opts(org, key))
    local queue = { {}, { org_id = others[1].org_id, api_key = others[1].api_key },
                    { org_id = others[2].org_id, api_key = others[2].api_key } }
    local k = 0
    local out = client:rotate_keys(function() k = k + 1; return queue[k] end, { concurrency = 2 })
    assert.are.equal(3, #out)
    assert_rotated({ org_id = org, api_key = key }, out[1])
    assert_rotated(others[1], out[2])
    assert_rotated(others[2], out[3])
    assert.is_true(client:check_key())
    local _, _, _, info = client:rotate_key()
    assert.are.equal("rotated", info.outcome)
    client:close()
  end)
end)

describe("rotate_keys on_result", function()
  it("receives (index, item) as each item finishes, after save_to, before on_progress", function()
    local dir = H.mkdir(H.tmpname("stream-save"))
    local list = orgs(5)
    H.faults(list[1].org_id, { { delay = 0.4 } })
    H.faults(list[2].org_id, { { status = 401 } })
    H.faults(list[3].org_id, { { delay = 0.2 } })
    H.faults(list[4].org_id, { { status = 503 } })
    local its = {}
    for i, o in ipairs(list) do
      its[i] = H.opts(o.org_id, o.api_key, { save_to = dir .. "/key" .. i })
    end
    local order, events = {}, {}
    local out = slashid.rotate_keys(its, {
      concurrency = 5,
      on_result = function(...)
        local n, index, item = select("#", ...), ...
        assert.are.equal(2, n)
        order[#order + 1] = index
        events[#events + 1] = "result " .. index
        assert.is_table(item.errors)
        assert.is_table(item.info)
        assert.is_string(item.info.outcome)
        if item.info.outcome == "rotated" then
          assert.is_table(item.pagination)
          -- the key file is there when on_result runs
          assert.are.equal(item.result.api_key .. "\n", H.read_file(dir .. "/key" .. index))
          assert.is_true(item.info.saved)
        else
          assert.is_nil(io.open(dir .. "/key" .. index, "rb"))
        end
      end,
      on_progress = function(_, _, index) events[#events + 1] = "progress " .. index end,
    })
    assert.are.equal(5, #order)
    -- each item: on_result, then on_progress
    for k = 1, 5 do
      assert.are.equal("result " .. order[k], events[2 * k - 1])
      assert.are.equal("progress " .. order[k], events[2 * k])
    end
    -- completion order, not input order: the delayed ones last, longest last
    assert.are.same({ 3, 1 }, { order[4], order[5] })
    for _, i in ipairs({ 1, 3, 5 }) do assert_rotated(list[i], out[i]) end
    assert.are.equal("not_rotated", out[2].info.outcome)
    assert.are.equal("unknown", out[4].info.outcome)
  end)

  it("gets the same table the result array holds", function()
    local list = orgs(3)
    local got = {}
    local out = slashid.rotate_keys(iterate(list).fn, {
      on_result = function(index, item) got[index] = item end,
    })
    for i = 1, 3 do assert.are.equal(out[i], got[i]) end
  end)
end)

describe("rotate_keys keep_results = false", function()
  local function mixed(dir)
    local list = orgs(6)
    H.faults(list[2].org_id, { { status = 401 } })
    H.faults(list[3].org_id, { { status = 500, rotate = true } })
    H.faults(list[4].org_id, { { action = "close" } })
    -- item 5 rotates, but its key file cannot be written: its parent is
    -- a regular file (ENOTDIR, as root too); item 6's directory is missing
    write(dir .. "/plain-file", "x")
    local its = {}
    for i, o in ipairs(list) do its[i] = H.opts(o.org_id, o.api_key) end
    its[1].save_to = dir .. "/key1"
    its[5].save_to = dir .. "/plain-file/key5"
    its[6].save_to = dir .. "/no-such-dir/key6"
    return list, its
  end

  for _, shape in ipairs({ "array", "iterator" }) do
    it("returns the summary { rotated, not_rotated, unknown, not_saved } (" .. shape .. ")", function()
      local dir = H.mkdir(H.tmpname("stream-sum"))
      local list, its = mixed(dir)
      local items = {}
      local k = 0
      local src = shape == "array" and its or function() k = k + 1; return its[k] end
      local sum = slashid.rotate_keys(src, {
        concurrency = 3, keep_results = false,
        on_result = function(index, item) items[index] = item end,
      })
      assert.are.same({ rotated = 3, not_rotated = 1, unknown = 2, not_saved = 2 }, sum)
      assert.are.equal(4, count_keys(sum))
      -- every key is still handed over, once, through on_result
      assert_rotated(list[1], items[1])
      assert_rotated(list[5], items[5])
      assert_rotated(list[6], items[6])
      assert.is_false(items[5].info.saved)
      assert.is_false(items[6].info.saved)
      assert.are.equal(items[1].result.api_key .. "\n", H.read_file(dir .. "/key1"))
      assert.are.equal(1, H.org(list[3].org_id).rotations)   -- the 500 that rotated: unknown
      H.assert_no_secret(H.flatten(sum), list[1].api_key)
    end)
  end

  it("keeps memory flat: 20,000 items from an iterator, Lua heap the same after 2,000 and 20,000", function()
    -- A pool of organizations, one per slot: the iterator takes a free one
    -- and on_result puts it back with its new key. It also checks that
    -- nothing is read ahead (a pull with no free organization fails).
    local C, N = 4, 20000
    local free = orgs(C)
    local pool_size = #free
    local pulled, rotated = 0, 0
    local in_flight, at = {}, {}
    local function heap()
      collectgarbage("collect"); collectgarbage("collect")
      return collectgarbage("count")
    end
    local t0 = os.time()
    local sum = slashid.rotate_keys(function()
      if pulled == N then return nil end
      pulled = pulled + 1
      local o = assert(table.remove(free), "an item was pulled without a free slot")
      in_flight[pulled] = o
      return { org_id = o.org_id, api_key = o.api_key, base_url = H.http_url,
               retry_delay = 0.01, retry_max_delay = 0.05 }
    end, {
      concurrency = C, keep_results = false,
      on_result = function(index, item)
        assert(item.info.outcome == "rotated", messages(item.errors))
        rotated = rotated + 1
        local o = in_flight[index]
        in_flight[index] = nil
        o.api_key = item.result.api_key
        free[#free + 1] = o
        if rotated == 2000 or rotated == N then at[rotated] = heap() end
      end,
    })
    assert.are.same({ rotated = N, not_rotated = 0, unknown = 0, not_saved = 0 }, sum)
    assert.are.equal(pool_size, #free)
    local growth = at[N] - at[2000]
    assert.is_true(growth < 64,
                   ("Lua heap grew %.1f KB between 2,000 and %d items (%.1f -> %.1f KB)")
                   :format(growth, N, at[2000], at[N]))
    assert.is_true(os.time() - t0 < 60)
  end)
end)

describe("rotate_keys on_progress returning false", function()
  it("with an array: in-flight items finish and are saved, the rest are not_rotated, never sent", function()
    local dir = H.mkdir(H.tmpname("stream-stop"))
    local list = orgs(6)
    H.faults(list[2].org_id, { { delay = 0.4 } })
    local its = {}
    for i, o in ipairs(list) do
      its[i] = H.opts(o.org_id, o.api_key, { save_to = dir .. "/key" .. i })
    end
    local progress, results = {}, {}
    local out = slashid.rotate_keys(its, {
      concurrency = 2,
      on_progress = function(_, _, index)
        progress[#progress + 1] = index
        return false
      end,
      on_result = function(index, item) results[#results + 1] = { index, item } end,
    })
    -- item 1 finished first and stopped the batch; item 2 was in flight
    -- and finished (saved); on_progress was called for both, not for the rest
    assert.are.same({ 1, 2 }, progress)
    assert.are.equal(6, #out)
    for i = 1, 2 do
      assert_rotated(list[i], out[i])
      assert.are.equal(out[i].result.api_key .. "\n", H.read_file(dir .. "/key" .. i))
    end
    for i = 3, 6 do
      local o = out[i]
      assert.are.equal("not_rotated", o.info.outcome)
      assert.is_nil(o.result)
      assert.are.equal(0, o.info.status)
      assert.are.equal(0, o.info.attempts)
      assert.are.equal(1, #o.errors)
      assert.are.equal(0, o.errors[1].httpcode)
      assert.matches("not started", o.errors[1].message)
      assert.matches("on_progress returned false", o.errors[1].message)
      assert_untouched(list[i])
    end
    -- on_result saw every item, the never-started ones last, in order
    assert.are.equal(6, #results)
    for k = 3, 6 do
      assert.are.equal(k, results[k][1])
      assert.are.equal(out[k], results[k][2])
    end
  end)

  it("with an array and keep_results = false: never-started items count as not_rotated", function()
    local list = orgs(5)
    H.faults(list[2].org_id, { { delay = 0.3 } })
    local its = {}
    for i, o in ipairs(list) do its[i] = H.opts(o.org_id, o.api_key) end
    local sum = slashid.rotate_keys(its, {
      concurrency = 2, keep_results = false,
      on_progress = function() return false end,
    })
    assert.are.same({ rotated = 2, not_rotated = 3, unknown = 0, not_saved = 0 }, sum)
    for i = 3, 5 do assert_untouched(list[i]) end
  end)

  it("with an iterator: no more pulls, in-flight items finish, only pulled items are reported", function()
    local list = orgs(6)
    H.faults(list[2].org_id, { { delay = 0.4 } })
    local it = iterate(list)
    local stop_seen = false
    local out = slashid.rotate_keys(it.fn, {
      concurrency = 2,
      on_progress = function()
        if stop_seen then return nil end
        stop_seen = true
        return false
      end,
    })
    assert.are.equal(2, it.calls)
    assert.are.equal(2, #out)
    assert_rotated(list[1], out[1])
    assert_rotated(list[2], out[2])
    for i = 3, 6 do assert_untouched(list[i]) end
  end)

  it("other return values (nil, true, 0) do not stop the batch", function()
    local list = orgs(3)
    local k, answers = 0, { true, 0 }
    local out = slashid.rotate_keys(iterate(list).fn, {
      concurrency = 1,
      on_progress = function() k = k + 1; return answers[k] end,
    })
    for i, o in ipairs(list) do assert_rotated(o, out[i]) end
  end)
end)

describe("rotate_keys with bad items from an iterator", function()
  it("makes each bad item its own not_rotated result (`slashid: item N: ...`), nothing sent for it", function()
    local list = orgs(3)
    local bad_key = "sk_bad\nkey_0123456789"
    local queue = {
      H.opts(list[1].org_id, list[1].api_key),
      H.opts(list[2].org_id, list[2].api_key, { timeout = 500 }),
      42,
      false,
      H.opts(list[2].org_id, list[2].api_key, { timout = 5 }),
      H.opts(list[2].org_id, bad_key),
      H.opts(list[3].org_id, list[3].api_key),
    }
    local k = 0
    local results, progress = {}, 0
    local out = slashid.rotate_keys(function() k = k + 1; return queue[k] end, {
      concurrency = 2,
      on_result = function(index, item) results[index] = item end,
      on_progress = function() progress = progress + 1 end,
    })
    assert.are.equal(8, k)
    assert.are.equal(7, #out)
    assert.are.equal(7, progress)
    assert_rotated(list[1], out[1])
    assert_rotated(list[3], out[7])
    local expect = {
      [2] = "^slashid: item 2: bad option 'timeout'",
      [3] = "^slashid: item 3: options must be a table, got 42$",
      [4] = "^slashid: item 4: options must be a table, got boolean",
      [5] = "^slashid: item 5: unknown option 'timout'",
      [6] = "^slashid: item 6: bad option 'api_key' %(control characters",
    }
    for i, pattern in pairs(expect) do
      local o = out[i]
      assert.are.equal(results[i], o)
      assert.are.equal("not_rotated", o.info.outcome)
      assert.is_nil(o.result)
      assert.are.equal(0, o.info.attempts)
      assert.are.equal(1, #o.errors)
      assert.are.equal(0, o.errors[1].httpcode)
      assert.matches(pattern, o.errors[1].message)
    end
    -- none of them reached the server; no key in any message
    assert_untouched(list[2])
    local text = H.flatten(out)
    H.assert_no_secret(text, list[2].api_key)
    H.assert_no_secret(text, "sk_bad\nkey_0123456789")
    H.assert_no_secret(text, "key_0123456789")
  end)

  it("never quotes a key used as an option name (the shared key, the client's, the item's own)", function()
    local SHORT = "k3y"        -- short and identifier-like: only being a key hides it
    local client = slashid.new{ api_key = "cl1", base_url = H.http_url, retries = 0 }
    local queue = {
      { org_id = "o", [SHORT] = true },              -- the shared options' key
      { org_id = "o", api_key = "own7", own7 = 1 },  -- the item's own key
      { org_id = "o", cl1 = true },                  -- the client's key
    }
    local k = 0
    local out = client:rotate_keys(function() k = k + 1; return queue[k] end,
                                   { api_key = SHORT })
    assert.are.equal(3, #out)
    for i = 1, 3 do
      local m = messages(out[i].errors)
      assert.matches("^slashid: item " .. i .. ": unknown option '%(a name that is not an option, not shown%)'", m)
      assert.is_nil(m:find(SHORT, 1, true), m)
      assert.is_nil(m:find("own7", 1, true), m)
      assert.is_nil(m:find("cl1", 1, true), m)
    end
    client:close()
  end)

  it("counts them as not_rotated in the summary", function()
    local list = orgs(1)
    local queue = { "not a table", H.opts(list[1].org_id, list[1].api_key), { org_id = "" } }
    local k = 0
    local sum = slashid.rotate_keys(function() k = k + 1; return queue[k] end,
                                    { keep_results = false })
    assert.are.same({ rotated = 1, not_rotated = 2, unknown = 0, not_saved = 0 }, sum)
  end)

  it("an array is still checked whole first: a bad item raises, on_result never called", function()
    local list = orgs(3)
    local its = {}
    for i, o in ipairs(list) do its[i] = H.opts(o.org_id, o.api_key) end
    its[3].timeout = 0
    local called = false
    local ok, err = pcall(slashid.rotate_keys, its, {
      keep_results = false, on_result = function() called = true end,
    })
    assert.is_false(ok)
    assert.matches("^slashid: item 3: bad option 'timeout'", err)
    assert.is_false(called)
    for _, o in ipairs(list) do assert_untouched(o) end
  end)
end)

-- A raise out of rotate_keys would throw away the outcomes, and with them
-- keys the server issued: errors from the caller's iterator and on_result
-- are reported (list_error, on_result_error), never raised.
describe("rotate_keys loses no key in flight when the caller's code raises", function()
  it("an iterator that raises: items in flight finish, are saved and delivered, and the error is reported", function()
    local dir = H.mkdir(H.tmpname("stream-raise"))
    local list = orgs(3)
    H.faults(list[1].org_id, { { delay = 0.4 } })
    H.faults(list[2].org_id, { { delay = 0.4 } })
    local boom = setmetatable({}, { __tostring = function() return "iterator broke" end })
    local k = 0
    local delivered = {}
    local sum = slashid.rotate_keys(function()
      k = k + 1
      if k == 3 then error(boom) end
      local o = list[k]
      return H.opts(o.org_id, o.api_key, { save_to = dir .. "/key" .. k })
    end, {
      concurrency = 3, keep_results = false,
      on_result = function(index, item) delivered[index] = item end,
    })
    assert.are.equal("iterator broke", sum.list_error)
    assert.are.equal(2, sum.rotated)
    assert.are.equal(3, k)        -- never called again after it raised
    for i = 1, 2 do
      -- the server rotated it, the key file holds the server's key, and
      -- on_result had it
      local state = H.org(list[i].org_id)
      assert.are.equal(1, state.rotations)
      assert.are.equal(state.api_key .. "\n", H.read_file(dir .. "/key" .. i))
      assert_rotated(list[i], delivered[i])
    end
    assert_untouched(list[3])
  end)

  -- (review of issue 11: on 5.2+ and LuaJIT a coroutine can yield across
  -- pcall; a batch suspended in its iterator, with items in flight, and
  -- then dropped by its host lost the keys the server issued meanwhile)
  it("a coroutine cannot suspend a batch: a yield in the iterator, on_result or on_progress " ..
     "is that callback's error, and the items in flight are delivered", function()
    for _, where in ipairs({ "iterator", "on_result", "on_progress" }) do
      local list = orgs(4)
      for i = 1, 4 do H.faults(list[i].org_id, { { delay = 0.2 } }) end
      local k, delivered = 0, {}
      local function pause() coroutine.yield("paused") end
      local co = coroutine.create(function()
        return slashid.rotate_keys(function()
          k = k + 1
          if where == "iterator" and k == 3 then pause() end
          local o = list[k]
          return o and H.opts(o.org_id, o.api_key)
        end, {
          concurrency = 2, keep_results = false,
          on_result = function(index, item)
            delivered[index] = item
            if where == "on_result" then pause() end
          end,
          on_progress = function() if where == "on_progress" then pause() end end,
        })
      end)
      local ok, sum = coroutine.resume(co)
      assert.is_true(ok, tostring(sum))
      assert.are.equal("dead", coroutine.status(co), where .. ": the batch was suspended")
      local err = sum.list_error or sum.on_result_error or sum.on_progress_error
      assert.matches("yield", tostring(err), 1, true)
      -- every organization the server rotated reached on_result with its key
      local rotated = 0
      for i = 1, 4 do
        local state = H.org(list[i].org_id)
        if state.rotations > 0 then
          rotated = rotated + 1
          assert_rotated(list[i], delivered[i])
        end
      end
      assert.is_true(rotated >= 2, where .. ": " .. rotated .. " rotated")
    end
  end)

  it("with results kept, the keys of a batch whose iterator raised come back in the outcomes", function()
    local list = orgs(2)
    local k = 0
    local out = slashid.rotate_keys(function()
      k = k + 1
      if k == 3 then error("no more lines", 0) end
      return H.opts(list[k].org_id, list[k].api_key)
    end)
    assert.are.equal("no more lines", out.list_error)
    for i = 1, 2 do assert_rotated(list[i], out[i]) end
  end)

  for _, shape in ipairs({ "array", "iterator" }) do
    it("on_result that raises: no new starts, items in flight finish and are delivered, the error reported (" ..
       shape .. ")", function()
      local dir = H.mkdir(H.tmpname("stream-onresult"))
      local list = orgs(6)
      H.faults(list[2].org_id, { { delay = 0.4 } })
      H.faults(list[3].org_id, { { delay = 0.4 } })
      local its = {}
      for i, o in ipairs(list) do
        its[i] = H.opts(o.org_id, o.api_key, { save_to = dir .. "/key" .. i })
      end
      local k = 0
      local src = shape == "array" and its or function() k = k + 1; return its[k] end
      local calls = {}
      local out = slashid.rotate_keys(src, {
        concurrency = 3,
        on_result = function(index, item)
          calls[#calls + 1] = { index, item }
          if #calls == 1 then error("result store broke", 0) end
        end,
      })
      assert.are.equal("result store broke", out.on_result_error)
      -- item 1 raised; 2 and 3 were in flight: finished, saved, delivered
      assert.are.equal(1, calls[1][1])
      for c = 1, 3 do
        local i, item = calls[c][1], calls[c][2]
        assert_rotated(list[i], item)
        assert_rotated(list[i], out[i])
        assert.are.equal(item.result.api_key .. "\n", H.read_file(dir .. "/key" .. i))
      end
      for i = 4, 6 do assert_untouched(list[i]) end
      if shape == "iterator" then
        assert.are.equal(3, k)
        assert.are.equal(3, #calls)
      else
        -- the array's items never started are reported, not sent
        assert.are.equal(6, #calls)
        for i = 4, 6 do
          assert.are.equal("not_rotated", out[i].info.outcome)
          assert.matches("not started", out[i].errors[1].message)
        end
      end
    end)
  end

  it("on_progress that raises is reported in the summary, and the batch goes on", function()
    local list = orgs(3)
    local calls = 0
    local sum = slashid.rotate_keys(iterate(list).fn, {
      concurrency = 1, keep_results = false,
      on_progress = function() calls = calls + 1; error("display broke") end,
    })
    assert.are.equal(1, calls)
    assert.matches("display broke", sum.on_progress_error)
    assert.are.equal(3, sum.rotated)
    for _, o in ipairs(list) do assert.are.equal(1, H.org(o.org_id).rotations) end
  end)

  it("with keep_results = false, the items on_result failed on come back as undelivered", function()
    local o1, k1 = H.new_org()
    local sum = slashid.rotate_keys({ H.opts(o1, k1) }, {
      keep_results = false, on_result = function() error("store down", 0) end })
    assert.are.equal("store down", sum.on_result_error)
    H.assert_key_equal(H.org(o1).api_key, sum.undelivered[1].result.api_key)
  end)
end)

describe("rotate_keys' stream options are checked before anything starts", function()
  local cases = {
    { { keep_results = "no" }, "^slashid: bad option 'keep_results' %(boolean expected, got a string%)$",
      'keep_results = "no"' },
    { { keep_results = 0 }, "^slashid: bad option 'keep_results' %(boolean expected, got 0%)$",
      'keep_results = 0' },
    { { on_result = true }, "^slashid: bad option 'on_result' %(function expected, got boolean%)$",
      'on_result = true' },
    { { on_result = "f" }, "^slashid: bad option 'on_result' %(function expected, got a string%)$",
      'on_result = "f"' },
    { { keep_result = false }, "^slashid: unknown option 'keep_result' %(did you mean 'keep_results'%?%)$",
      'keep_result (a misspelling)' },
    { { on_results = print }, "^slashid: unknown option 'on_results' %(did you mean 'on_result'%?%)$",
      'on_results (a misspelling)' },
    { { concurrency = 0 }, "^slashid: bad option 'concurrency'",
      'concurrency = 0' },
  }
  for _, case in ipairs(cases) do
    local opts, pattern = case[1], case[2]
    it("raises for " .. case[3] .. ", before the iterator is called or anything is sent", function()
      local list = orgs(1)
      local calls = 0
      local ok, err = pcall(slashid.rotate_keys, function()
        calls = calls + 1
        return calls == 1 and H.opts(list[1].org_id, list[1].api_key) or nil
      end, opts)
      assert.is_false(ok)
      assert.matches(pattern, err)
      assert.are.equal(0, calls)
      ok, err = pcall(slashid.rotate_keys, { H.opts(list[1].org_id, list[1].api_key) }, opts)
      assert.is_false(ok)
      assert.matches(pattern, err)
      assert_untouched(list[1])
    end)
  end

  it("a list that is neither a table nor a function raises, naming both", function()
    for _, v in ipairs({ 42, "orgs.txt", true }) do
      local ok, err = pcall(slashid.rotate_keys, v)
      assert.is_false(ok)
      assert.matches("^slashid: rotate_keys expects a list of option tables or an iterator function, got "
                     .. type(v), err)
    end
  end)

  it("keep_results = true is the default: the array of outcomes", function()
    local list = orgs(2)
    local out = slashid.rotate_keys(iterate(list).fn, { keep_results = true })
    assert.are.equal(2, #out)
    for i, o in ipairs(list) do assert_rotated(o, out[i]) end
  end)
end)

-- An error that escapes the batch's loop itself: the command's "abort at
-- once" (multi:wait raises core.INTERRUPTED on a second signal while
-- signals are caught). Requests still unanswered are abandoned, as asked;
-- a key already issued (its item being verified) still reaches on_result.
describe("rotate_keys interrupted (a second signal, signals caught)", function()
  local socket = require "socket"

  local wait_for = H.wait_for

  it("abandons unanswered items, delivers the key being verified, raises at once", function()
    local a, key_a = H.new_org()
    local b, key_b = H.new_org()
    H.faults(a, { { delay = 0 }, { delay = 8 } })   -- rotated at once; its check takes 8 s
    H.faults(b, { { delay = 8 } })                  -- its rotation takes 8 s
    local dir = H.mkdir(H.tmpname("stream-intr"))
    local script = dir .. "/run.lua"
    write(script, ([[
local slashid = require "slashid"
local core = require "slashid.core"
local pid = io.open("/proc/self/stat"):read("*l"):match("^(%%d+)")
core.catch_signals("")
local f = io.open(%q, "w"); f:write(pid); f:close()
os.rename(%q, %q)
local lines = {}
local t0 = core.now()
local ok, err = pcall(slashid.rotate_keys, {
  { org_id = %q, api_key = %q, verify = true, save_to = %q },
  { org_id = %q, api_key = %q },
}, { base_url = %q, concurrency = 2, keep_results = false, on_result = function(i, item)
  local saved = io.open(%q):read("*l")
  local msgs = {}
  for _, e in ipairs(item.errors) do msgs[#msgs + 1] = e.message end
  lines[#lines + 1] = ("result %%d %%s verified=%%s key_is_saved_key=%%s errors=%%s"):format(i,
    item.info.outcome, tostring(item.info.verified),
    tostring(item.result ~= nil and item.result.api_key == saved), table.concat(msgs, " | "))
end })
lines[#lines + 1] = ("raised=%%s interrupted=%%s elapsed=%%.1f"):format(tostring(not ok),
  tostring(err == core.INTERRUPTED), core.now() - t0)
core.release_signals()
io.open(%q, "w"):write(table.concat(lines, "\n"), "\n")
]]):format(dir .. "/pid.tmp", dir .. "/pid.tmp", dir .. "/pid",
           a, key_a, dir .. "/key_a", b, key_b, H.http_url, dir .. "/key_a", dir .. "/out"))
    assert(os.execute(("%s %s >%s/log 2>&1 &"):format(H.lua, script, dir)))
    wait_for("the script to start", 10, function() return io.open(dir .. "/pid") ~= nil end)
    local pid = H.read_file(dir .. "/pid")
    wait_for("a's check and b's rotation to reach the server", 10, function()
      return H.requests(a) >= 2 and H.requests(b) >= 1
    end)
    local t0 = socket.gettime()
    -- two separate signals (a second one sent while the first is still
    -- pending would merge with it): one, a pause, another until it ends
    repeat
      os.execute("kill -INT " .. pid .. " 2>/dev/null")
      socket.sleep(0.3)
    until io.open(dir .. "/out") or socket.gettime() - t0 > 6
    wait_for("the script to end", 5, function() return io.open(dir .. "/out") ~= nil end)
    local out = H.read_file(dir .. "/out")
    assert.is_true(socket.gettime() - t0 < 5, "not at once")
    -- a: rotated, its key handed over (the same key as in its file, which
    -- is the server's), the cut check reported; b: abandoned, not delivered
    assert.matches("^result 1 rotated verified=false key_is_saved_key=true errors=verify: " ..
                   "the new key could not be checked: the batch was interrupted", out)
    assert.is_nil(out:find("result 2", 1, true), out)
    assert.matches("\nraised=true interrupted=true elapsed=", out)
    H.assert_key_equal(H.org(a).api_key .. "\n", H.read_file(dir .. "/key_a"))
    H.assert_no_secret(out, H.org(a).api_key)
    H.assert_no_secret(out, key_a)
  end)
end)
