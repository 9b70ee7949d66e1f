-- A client adopting the new key of each rotation (issue 16, item 1).
-- SlashID answers a new key on every rotation, so a client's kept
-- configuration and request (issue 11, spec 28) meet a new key on every
-- call: only what depends on the key may change (the key header on the
-- kept request and handle, the key the ownership check compares), never
-- the rest. The emulator records which key each request carried
-- ("current", "previous", "other"). (Three rotations in a row, each
-- presenting the key issued last: spec/06-client_spec.lua.)
local H = require "helpers"
local slashid = require "slashid"
local core = require "slashid.core"
local request = require "slashid.request"
local options = require "slashid.options"

local messages = H.messages

local function rotated(info, errors, what)
  assert.are.equal("rotated", info.outcome, (what and what .. ": " or "") .. messages(errors))
end

-- Calls fn with request.build and options.resolve counted; returns the
-- counts (both put back whatever fn does).
local function counting(fn)
  local build, resolve = request.build, options.resolve
  local n = { build = 0, resolve = 0 }
  request.build = function(...) n.build = n.build + 1 return build(...) end
  options.resolve = function(...) n.resolve = n.resolve + 1 return resolve(...) end
  local ok, err = pcall(fn)
  request.build, options.resolve = build, resolve
  assert(ok, err)
  return n
end

local function keys_of(org)
  local t = {}
  for i, r in ipairs(H.org(org).requests) do t[i] = r.method .. " " .. r.key end
  return t
end

describe("a client adopting a new key on every call", function()
  it("resolves and builds its request once: three new keys change the key, not the rest", function()
    local org, key = H.new_org()
    local client = slashid.new(H.opts(org, key, { user_agent = "kept/1" }))
    local n = counting(function()
      for k = 1, 3 do
        local _, e, _, i = client:rotate_key()
        rotated(i, e, "rotation " .. k)
      end
    end)
    assert.are.equal(1, n.resolve, "the client's options were resolved again after adopting")
    assert.are.equal(1, n.build, "the client's request was built again after adopting")
    local reqs = H.org(org).requests
    for k = 1, 3 do
      assert.are.equal("current", reqs[k].key, "request " .. k)
      assert.are.equal("kept/1", reqs[k].headers["user-agent"], "request " .. k)
      assert.are.equal(org, reqs[k].headers["slashid-orgid"], "request " .. k)
    end
    client:close()
  end)

  it("keeps one connection across the calls", function()
    local org, key = H.new_org()
    local client = slashid.new(H.opts(org, key))
    local before = H.stats().connections
    for k = 1, 3 do
      local _, e, _, i = client:rotate_key()
      rotated(i, e, "rotation " .. k)
    end
    assert.are.equal(1, H.stats().connections - before)
    client:close()
  end)

  it("after a check_key, a call with options of its own or a verify, the next plain call presents the current key",
     function()
    local org, key = H.new_org()
    local client = slashid.new(H.opts(org, key))
    local _, e, _, i = client:rotate_key()          -- kept, then re-keyed
    rotated(i, e)
    assert.is_true((client:check_key()))             -- the handle holds the GET
    _, e, _, i = client:rotate_key()                 -- the kept request, set up again
    rotated(i, e)
    _, e, _, i = client:rotate_key({ user_agent = "call/2" })   -- adopts: kept not on the handle
    rotated(i, e)
    _, e, _, i = client:rotate_key()
    rotated(i, e)
    _, e, _, i = client:rotate_key({ verify = true })
    rotated(i, e)
    assert.is_true(i.verified)
    for _ = 1, 3 do
      local r
      r, e, _, i = client:rotate_key()
      rotated(i, e)
      H.assert_key_equal(H.org(org).api_key, r.api_key)
    end
    assert.are.same({ "PUT current", "GET current", "PUT current", "PUT current", "PUT current",
                      "PUT current", "GET current", "PUT current", "PUT current", "PUT current" },
                    keys_of(org))
    assert.are.equal("call/2", H.org(org).requests[4].headers["user-agent"])
    assert.are_not.equal("call/2", H.org(org).requests[5].headers["user-agent"])
    client:close()
  end)

  it("with verify in its defaults, verifies each new key and presents it next", function()
    local org, key = H.new_org()
    local client = slashid.new(H.opts(org, key, { verify = true }))
    for k = 1, 3 do
      local _, e, _, i = client:rotate_key()
      rotated(i, e, "rotation " .. k)
      assert.is_true(i.verified, "rotation " .. k)
    end
    assert.are.same({ "PUT current", "GET current", "PUT current", "GET current",
                      "PUT current", "GET current" }, keys_of(org))
    client:close()
  end)

  it("does not adopt a key rotated for another organization, and keeps its own", function()
    local org, key = H.new_org()
    local other, other_key = H.new_org()
    local client = slashid.new(H.opts(org, key))
    local _, e, _, i = client:rotate_key()
    rotated(i, e)
    local r2, e2, _, i2 = client:rotate_key({ org_id = other, api_key = other_key })
    rotated(i2, e2)
    H.assert_key_equal(H.org(other).api_key, r2.api_key)
    local r3, e3, _, i3 = client:rotate_key()
    rotated(i3, e3)
    H.assert_key_equal(H.org(org).api_key, r3.api_key)
    assert.are.same({ "PUT current", "PUT current" }, keys_of(org))
    assert.are.same({ "PUT current" }, keys_of(other))
    client:close()
  end)

  it("the trace of three adoptions shows none of the keys", function()
    local org, key = H.new_org()
    local lines = {}
    local client = slashid.new(H.opts(org, key, {
      debug = function(line) lines[#lines + 1] = line end }))
    local keys = { key }
    for k = 1, 3 do
      local r, e, _, i = client:rotate_key()
      rotated(i, e, "rotation " .. k)
      keys[#keys + 1] = r.api_key
    end
    local trace = table.concat(lines, "\n")
    assert.is_true(#lines > 0)
    assert.matches("SlashID%-API%-Key", trace)
    for _, k in ipairs(keys) do H.assert_no_secret(trace, k) end
    client:close()
  end)

  it("an op started before close adopts nothing after it, and the client stays closed", function()
    local org, key = H.new_org()
    local client = slashid.new(H.opts(org, key))
    local _, e, _, i = client:rotate_key()
    rotated(i, e)
    local op = client:start_rotate_key()
    client:close()
    assert.is_true(op:wait(10))
    local r, e2, _, i2 = op:results()
    rotated(i2, e2)
    H.assert_key_equal(H.org(org).api_key, r.api_key)
    local ok, err = pcall(client.rotate_key, client)
    assert.is_false(ok)
    assert.matches("client is closed", err)
  end)

  it("a key taken from the environment: adopted the first time, swapped in after", function()
    local org, key = H.new_org()
    local script = H.write(H.tmpname("env-adopt") .. ".lua", [[
      local slashid = require "slashid"
      local c = slashid.new({ base_url = os.getenv("URL"), retry_delay = 0.01 })
      for n = 1, 3 do
        local r, e, _, i = c:rotate_key()
        io.write(n, " ", i.outcome, " ", e[1] and e[1].message or "", "\n")
      end
      io.write("check ", tostring((c:check_key())), "\n")
    ]])
    local p = io.popen(("SLASHID_ORG_ID=%s SLASHID_API_KEY=%s URL=%s %s %s 2>&1; echo rc=$?"):format(
      H.q(org), H.q(key), H.q(H.http_url), H.lua, H.q(script)))
    local out = p:read("*a")
    p:close()
    os.remove(script)
    H.assert_no_secret(out, key)
    for n = 1, 3 do assert.matches(n .. " rotated", out) end
    assert.matches("check true", out)
    assert.matches("rc=0", out)
    assert.are.same({ "PUT current", "PUT current", "PUT current", "GET current" }, keys_of(org))
  end)
end)

describe("handle:rekey, the key swap of a kept request", function()
  local function check_request(org, key)
    return { method = "GET", url = H.http_url .. "/organizations/config",
             org_id = org, api_key = key }
  end

  it("replaces the key header of the request set up on the handle, and nothing else", function()
    local org, key = H.new_org()
    local h = core.handle()
    local req = check_request(org, key)
    req.user_agent = "rekey/1"
    local _, _, _, f1 = h:perform(req)
    assert.are.equal(200, f1.status)
    -- as long as the key (written over it in place), shorter, longer
    -- (a new header line), then the key again
    local keys = { "sk_" .. ("x"):rep(#key - 3), "sk_short_0123", "sk_" .. ("y"):rep(#key + 5), key }
    local statuses = {}
    for n, k in ipairs(keys) do
      assert.is_true(h:rekey(req, k), "swap " .. n)
      req.api_key = k
      local _, _, _, f = h:perform(req)
      statuses[n] = f.status
    end
    assert.are.same({ 401, 401, 401, 200 }, statuses)
    local reqs = H.org(org).requests
    local seen = {}
    for n = 1, 5 do
      seen[n] = reqs[n].key
      assert.are.equal("rekey/1", reqs[n].headers["user-agent"], "request " .. n)
      assert.are.equal(org, reqs[n].headers["slashid-orgid"], "request " .. n)
    end
    assert.are.same({ "current", "other", "other", "other", "current" }, seen)
    h:close()
  end)

  it("leaves a request that is not the one set up alone (false), refuses an unsendable key (nil)", function()
    local org, key = H.new_org()
    local h = core.handle()
    local req = check_request(org, key)
    assert.is_false(h:rekey(req, "sk_any_0123456789"))      -- nothing set up yet
    local _, _, _, f1 = h:perform(req)
    assert.are.equal(200, f1.status)
    assert.is_false(h:rekey(check_request(org, key), "sk_any_0123456789"))
    for _, bad in ipairs({ "sk_bad\r\nX-Injected: 1", "sk_bad\0nul", "sk_bad\127", "sk_bad\200" }) do
      assert.is_nil(h:rekey(req, bad))
    end
    -- still the old key, whole
    local _, _, _, f2 = h:perform(req)
    assert.are.equal(200, f2.status)
    assert.are.same({ "current", "current" }, { H.org(org).requests[1].key, H.org(org).requests[2].key })
    h:close()
    assert.is_nil(h:rekey(req, "sk_any_0123456789"))       -- closed
  end)

  it("the trace after a swap shows neither key", function()
    local org, key = H.new_org()
    local h = core.handle()
    local lines = {}
    local req = check_request(org, key)
    req.debug = function(line) lines[#lines + 1] = line end
    h:perform(req)
    local other = "sk_swapped_in_key_0123456789abcdef"
    assert.is_true(h:rekey(req, other))
    req.api_key = other
    local _, _, _, f = h:perform(req)
    assert.are.equal(401, f.status)
    local trace = table.concat(lines, "\n")
    assert.matches("SlashID%-API%-Key", trace)
    H.assert_no_secret(trace, key)
    H.assert_no_secret(trace, other)
    h:close()
  end)
end)
