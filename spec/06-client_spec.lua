-- slashid.new clients: defaults and per-call overrides, adoption of the
-- new key after rotating the key the client holds (however the call names
-- its organization and key, through ops and batches too), connection reuse
-- (keep-alive over HTTP and HTTPS), close / <close>, a client called from
-- its own debug function, and what a client shows of itself (no key).
local H = require "helpers"
local slashid = require "slashid"

local messages = H.messages

local function connections(kind)
  return H.stats()[kind or "connections"]
end

-- pcall that returns the error message as a string.
local function raises(fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected an error")
  return tostring(err)
end

describe("slashid.new", function()
  it("returns a client whose calls use its defaults", function()
    local org, key = H.new_org()
    local client = slashid.new(H.opts(org, key, {
      consistency = "all_regions", timeout = 90, user_agent = "client-default/1" }))
    local result, errors, _, info = client:rotate_key()
    assert.are.equal("rotated", info.outcome, messages(errors))
    H.assert_key_equal(H.org(org).api_key, result.api_key)
    local req = H.org(org).requests[1]
    assert.are.equal(org, req.headers["slashid-orgid"])
    assert.are.equal("current", req.key)
    assert.are.equal("all_regions", req.headers["slashid-required-consistency"])
    assert.are.equal("90", req.headers["slashid-required-consistency-timeout"])
    assert.are.equal("client-default/1", req.headers["user-agent"])
    client:close()
  end)

  it("lets per-call options override the defaults for that call only", function()
    local org, key = H.new_org()
    local client = slashid.new(H.opts(org, key, {
      consistency = "all_regions", timeout = 90, user_agent = "client-default/1" }))
    local _, errors, _, info = client:rotate_key{
      consistency = "local_region", timeout = 5, user_agent = "per-call/2" }
    assert.are.equal("rotated", info.outcome, messages(errors))
    local _, errors2, _, info2 = client:rotate_key()
    assert.are.equal("rotated", info2.outcome, messages(errors2))
    local reqs = H.org(org).requests
    assert.are.equal("local_region", reqs[1].headers["slashid-required-consistency"])
    assert.are.equal("5", reqs[1].headers["slashid-required-consistency-timeout"])
    assert.are.equal("per-call/2", reqs[1].headers["user-agent"])
    assert.are.equal("all_regions", reqs[2].headers["slashid-required-consistency"])
    assert.are.equal("90", reqs[2].headers["slashid-required-consistency-timeout"])
    assert.are.equal("client-default/1", reqs[2].headers["user-agent"])
    client:close()
  end)

  it("rotates another organization when a call passes its org_id and api_key", function()
    local org_a, key_a = H.new_org()
    local org_b, key_b = H.new_org()
    local client = slashid.new(H.opts(org_a, key_a))
    local result, errors, _, info = client:rotate_key{ org_id = org_b, api_key = key_b }
    assert.are.equal("rotated", info.outcome, messages(errors))
    H.assert_key_equal(H.org(org_b).api_key, result.api_key)
    assert.are.equal(0, H.org(org_a).rotations)
    assert.are.equal(1, H.org(org_b).rotations)
    client:close()
  end)

  it("check_key uses the defaults and ignores the rotate-only ones", function()
    local org, key = H.new_org()
    local client = slashid.new(H.opts(org, key, {
      consistency = "all_regions", timeout = 60, verify = true,
      save_to = H.tmpname("never-written") }))
    local ok, errors, info = client:check_key()
    assert.is_true(ok, messages(errors))
    assert.are.equal(200, info.status)
    local req = H.org(org).requests[1]
    assert.are.equal("GET", req.method)
    assert.are.equal("/organizations/config", req.path)
    assert.are.equal("current", req.key)
    -- a rotate-only option passed to the call itself still raises
    local msg = raises(client.check_key, client, { consistency = "all_regions" })
    assert.matches("slashid: ", msg, 1, true)
    assert.matches("consistency", msg, 1, true)
    client:close()
  end)

  it("raises on bad defaults, naming the option", function()
    local msg = raises(slashid.new, { timeout = 0 })
    assert.matches("slashid: ", msg, 1, true)
    assert.matches("timeout", msg, 1, true)
    msg = raises(slashid.new, { bogus = true })
    assert.matches("bogus", msg, 1, true)
    msg = raises(slashid.new, "not a table")
    assert.matches("slashid: ", msg, 1, true)
  end)
end)

describe("a client adopting its new key", function()
  it("uses the new key on its next call: three rotations in a row, each with the current key", function()
    local org, key = H.new_org()
    local client = slashid.new(H.opts(org, key))
    local seen = { [key] = true }
    for i = 1, 3 do
      local result, errors, _, info = client:rotate_key()
      assert.are.equal("rotated", info.outcome, "rotation " .. i .. ": " .. messages(errors))
      assert.is_nil(seen[result.api_key])
      seen[result.api_key] = true
      H.assert_key_equal(H.org(org).api_key, result.api_key)
    end
    local state = H.org(org)
    assert.are.equal(3, state.rotations)
    assert.are.equal(3, #state.requests)
    for i = 1, 3 do assert.are.equal("current", state.requests[i].key) end
    -- check_key follows the adopted key too
    assert.is_true((client:check_key()))
    assert.are.equal("current", H.org(org).requests[4].key)
    client:close()
  end)

  it("adopts over HTTPS", function()
    local org, key = H.new_org()
    local client = slashid.new(H.opts(org, key, { base_url = H.https_url, ca_file = H.ca_file }))
    for i = 1, 2 do
      local _, errors, _, info = client:rotate_key()
      assert.are.equal("rotated", info.outcome, "rotation " .. i .. ": " .. messages(errors))
    end
    local state = H.org(org)
    assert.are.equal(2, state.rotations)
    assert.are.equal("current", state.requests[2].key)
    client:close()
  end)

  it("adopts even when save_to failed (the key was rotated all the same)", function()
    local org, key = H.new_org()
    local client = slashid.new(H.opts(org, key, { save_to = H.tmpname("gone") .. "/key" }))
    local r1, _, _, i1 = client:rotate_key()
    assert.are.equal("rotated", i1.outcome)
    assert.is_false(i1.saved)
    local r2, _, _, i2 = client:rotate_key()
    assert.are.equal("rotated", i2.outcome)
    assert.are_not.equal(r1.api_key, r2.api_key)
    assert.are.equal("current", H.org(org).requests[2].key)
    client:close()
  end)

  it("keeps its key after a failed rotation", function()
    local org, key = H.new_org()
    local client = slashid.new(H.opts(org, key))
    H.faults(org, { { status = 500 } })
    local r1, _, _, i1 = client:rotate_key()
    assert.is_nil(r1)
    assert.are.equal("unknown", i1.outcome)
    local r2, errors, _, i2 = client:rotate_key()
    assert.are.equal("rotated", i2.outcome, messages(errors))
    H.assert_key_equal(H.org(org).api_key, r2.api_key)
    assert.are.equal("current", H.org(org).requests[2].key)
    client:close()
  end)

  -- README, "Usage" (and slashid.new in the reference): the client adopts
  -- whenever the call presented its own key for its own organization,
  -- whether or not it also named them.
  it("adopts when the call passed its own api_key explicitly", function()
    local org, key = H.new_org()
    local client = slashid.new(H.opts(org, key))
    local result, errors, _, info = client:rotate_key{ api_key = key }
    assert.are.equal("rotated", info.outcome, messages(errors))
    local r2, e2, _, i2 = client:rotate_key()
    assert.are.equal("rotated", i2.outcome, messages(e2))
    local state = H.org(org)
    assert.are.equal("current", state.requests[2].key)
    assert.are_not.equal(result.api_key, r2.api_key)
    assert.are.equal(r2.api_key, state.api_key)
    client:close()
  end)

  it("adopts when the call passed its own org_id explicitly", function()
    local org, key = H.new_org()
    local client = slashid.new(H.opts(org, key))
    local _, errors, _, info = client:rotate_key{ org_id = org }
    assert.are.equal("rotated", info.outcome, messages(errors))
    local _, e2, _, i2 = client:rotate_key()
    assert.are.equal("rotated", i2.outcome, messages(e2))
    assert.are.equal("current", H.org(org).requests[2].key)
    client:close()
  end)

  it("does not adopt when the call presented another key for its organization", function()
    local org, key = H.new_org()
    local client = slashid.new(H.opts(org, "sk_a_key_the_server_does_not_know_0"))
    local _, errors, _, info = client:rotate_key{ api_key = key }
    assert.are.equal("rotated", info.outcome, messages(errors))
    local r2, _, _, i2 = client:rotate_key()
    assert.is_nil(r2)
    assert.are.equal("not_rotated", i2.outcome)
    assert.are.equal(401, i2.status)
    client:close()
  end)

  it("does not take another organization's key as its own", function()
    local org_a, key_a = H.new_org()
    local org_b, key_b = H.new_org()
    local client = slashid.new(H.opts(org_a, key_a))
    local _, _, _, info = client:rotate_key{ org_id = org_b, api_key = key_b }
    assert.are.equal("rotated", info.outcome)
    local result, errors, _, info_a = client:rotate_key()
    assert.are.equal("rotated", info_a.outcome, messages(errors))
    H.assert_key_equal(H.org(org_a).api_key, result.api_key)
    assert.are.equal(org_a, H.org(org_a).requests[1].headers["slashid-orgid"])
    assert.are.equal("current", H.org(org_a).requests[1].key)
    client:close()
  end)
end)

describe("a client adopts the key it holds whenever it rotates it", function()
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

  it("a client holding a key but no organization adopts after rotating it", function()
    local org, key = H.new_org()
    local c = slashid.new{ api_key = key, base_url = H.http_url }
    assert.is_table((c:rotate_key{ org_id = org }))
    local _, errors, _, info = c:rotate_key{ org_id = org }
    assert.are.equal("rotated", info.outcome, errors[1] and errors[1].message)
    c:close()
  end)
end)

describe("a client's connection", function()
  local function twenty_calls(opts, kind)
    local org, key = H.new_org()
    local client = slashid.new(H.opts(org, key, opts))
    local before = connections(kind)
    for i = 1, 20 do
      if i % 2 == 1 then
        local _, errors, _, info = client:rotate_key()
        assert.are.equal("rotated", info.outcome, messages(errors))
      else
        local ok, errors = client:check_key()
        assert.is_true(ok, messages(errors))
      end
    end
    local after = connections(kind)
    assert.are.equal(10, H.org(org).rotations)
    client:close()
    return after - before
  end

  it("is kept alive: 20 calls over HTTP open exactly one TCP connection", function()
    assert.are.equal(1, twenty_calls({}, "http_connections"))
  end)

  it("is kept alive: 20 calls over HTTPS open exactly one TCP connection", function()
    assert.are.equal(1, twenty_calls({ base_url = H.https_url, ca_file = H.ca_file },
                                     "https_connections"))
  end)

  it("serves several organizations on one connection", function()
    local client = slashid.new{ base_url = H.http_url }
    local before = connections()
    for _ = 1, 5 do
      local org, key = H.new_org()
      local _, errors, _, info = client:rotate_key{ org_id = org, api_key = key }
      assert.are.equal("rotated", info.outcome, messages(errors))
    end
    assert.are.equal(1, connections() - before)
    client:close()
  end)

  it("module-level calls reuse one connection too", function()
    local org, key = H.new_org()
    -- warm up: the module's kept handle may or may not be connected yet
    local result = assert(slashid.rotate_key(H.opts(org, key)))
    key = result.api_key
    local before = connections("http_connections")
    for i = 1, 20 do
      if i % 2 == 1 then
        local r, errors, _, info = slashid.rotate_key(H.opts(org, key))
        assert.are.equal("rotated", info.outcome, messages(errors))
        key = r.api_key
      else
        assert.is_true((slashid.check_key(H.opts(org, key))))
      end
    end
    assert.are.equal(0, connections("http_connections") - before)
  end)
end)

describe("client:close", function()
  it("makes later calls raise 'slashid: client is closed'", function()
    local org, key = H.new_org()
    local client = slashid.new(H.opts(org, key))
    assert.is_true((client:check_key()))
    client:close()
    assert.matches("slashid: client is closed", raises(client.rotate_key, client), 1, true)
    assert.matches("slashid: client is closed", raises(client.check_key, client), 1, true)
    assert.matches("slashid: client is closed",
                   raises(client.rotate_key, client, { api_key = key }), 1, true)
    assert.are.equal(1, H.requests(org))
  end)

  it("can be called twice", function()
    local org, key = H.new_org()
    local client = slashid.new(H.opts(org, key))
    client:close()
    assert.has_no.errors(function() client:close() end)
    assert.matches("slashid: client is closed", raises(client.check_key, client), 1, true)
  end)

  it("closes at the end of a <close> scope on Lua 5.4", function()
    local minor = tonumber(_VERSION:match("^Lua 5%.(%d+)$"))
    if not minor or minor < 4 then
      pending("to-be-closed variables need Lua 5.4 (running " .. _VERSION .. ")")
      return
    end
    local org, key = H.new_org()
    local chunk = assert(load([[
      local slashid, opts = ...
      local kept, outcome
      do
        local c <close> = slashid.new(opts)
        kept = c
        local _, _, _, info = c:rotate_key()
        outcome = info.outcome
      end
      return kept, outcome
    ]], "=close-scope"))
    local client, outcome = chunk(slashid, H.opts(org, key))
    assert.are.equal("rotated", outcome)
    assert.matches("slashid: client is closed", raises(client.check_key, client), 1, true)
    assert.matches("%(closed%)", tostring(client))

    -- also when the scope is left by an error
    local failing = assert(load([[
      local slashid, opts, box = ...
      local c <close> = slashid.new(opts)
      box.client = c
      error("leaving the scope by an error")
    ]], "=close-on-error"))
    local box = {}
    local ok = pcall(failing, slashid, H.opts(org, key), box)
    assert.is_false(ok)
    assert.matches("slashid: client is closed",
                   raises(box.client.check_key, box.client), 1, true)
  end)
end)

describe("a client called from its own debug function", function()
  it("cannot reuse or close its handle while the answer is traced", function()
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
end)

describe("what a client shows of itself", function()
  it("tostring is 'slashid.Client: 0x...' and holds no key, default or adopted", function()
    local org, key = H.new_org()
    local client = slashid.new(H.opts(org, key))
    local shown = tostring(client)
    assert.matches("^slashid%.Client: 0x%x+$", shown)
    H.assert_no_secret(shown, key)
    local result = assert(client:rotate_key())
    shown = tostring(client)
    assert.matches("^slashid%.Client: 0x%x+$", shown)
    H.assert_no_secret(shown, key)
    H.assert_no_secret(shown, result.api_key)
    client:close()
    H.assert_no_secret(tostring(client), result.api_key)
  end)

  it("pairs() over a client (and its metatable) finds no key", function()
    local org, key = H.new_org()
    local client = slashid.new(H.opts(org, key))
    H.assert_no_secret(H.flatten(client), key)
    H.assert_no_secret(H.flatten(getmetatable(client)), key)
    local result = assert(client:rotate_key())
    local text = H.flatten(client) .. "\n" .. H.flatten(getmetatable(client))
    H.assert_no_secret(text, key)
    H.assert_no_secret(text, result.api_key)
    -- nor via a plain next() walk that ignores __pairs
    for k, v in next, client do
      H.assert_no_secret(tostring(k) .. tostring(v), key)
      H.assert_no_secret(tostring(k) .. tostring(v), result.api_key)
    end
    client:close()
  end)

  it("refuses to store fields (a key stored there would defeat the private state)", function()
    local org, key = H.new_org()
    local client = slashid.new(H.opts(org, key))
    local msg = raises(function() client.api_key = "sk_stored_by_mistake_0000" end)
    assert.matches("slashid: ", msg, 1, true)
    assert.is_nil(rawget(client, "api_key"))
    raises(function() client.anything = 1 end)
    assert.is_nil(rawget(client, "anything"))
    -- the client still works with its own key
    assert.is_true((client:check_key()))
    assert.are.equal("current", H.org(org).requests[1].key)
    client:close()
  end)
end)
