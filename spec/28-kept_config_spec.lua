-- Work done once (issue 11): a client keeps its resolved configuration
-- and request between calls, a module-level call repeating the last one
-- reuses its checked options, and a handle keeps the request it last set
-- up. What is kept must never outlive what it was made from: each test
-- changes one input between calls and expects the next request to follow
-- it (a key, a file, an option, the kind of call). The emulator records
-- every request: which key it carried ("current", "old", ...) and its
-- headers.
local H = require "helpers"
local slashid = require "slashid"
local core = require "slashid.core"

local messages = H.messages

local function rotated(info, errors)
  assert.are.equal("rotated", info.outcome, messages(errors))
end

describe("module-level rotate_key, the same options table again", function()
  it("sees a key changed in place between calls", function()
    local org, key = H.new_org()
    local opts = H.opts(org, key)
    local r1, e1, _, i1 = slashid.rotate_key(opts)
    rotated(i1, e1)
    opts.api_key = r1.api_key                 -- the caller adopts the new key
    local r2, e2, _, i2 = slashid.rotate_key(opts)
    rotated(i2, e2)
    H.assert_key_equal(H.org(org).api_key, r2.api_key)
    local reqs = H.org(org).requests
    assert.are.equal("current", reqs[2].key, "the second call presented the dead key")
  end)

  it("sees an option added, changed and removed in place", function()
    local org, key = H.new_org()
    local opts = H.opts(org, key)
    local r, e, _, i = slashid.rotate_key(opts)
    rotated(i, e)
    local file = H.tmpname("kept") .. ".key"
    opts.api_key, opts.save_to = r.api_key, file        -- added
    r, e, _, i = slashid.rotate_key(opts)
    rotated(i, e)
    assert.is_true(i.saved)
    H.assert_key_equal(r.api_key, (H.read_file(file):gsub("\n$", "")))
    opts.api_key, opts.user_agent = r.api_key, "changed/1"  -- changed
    r, e, _, i = slashid.rotate_key(opts)
    rotated(i, e)
    H.assert_key_equal(r.api_key, (H.read_file(file):gsub("\n$", "")))
    opts.api_key, opts.save_to = r.api_key, nil          -- removed
    r, e, _, i = slashid.rotate_key(opts)
    rotated(i, e)
    assert.is_nil(i.saved)
    assert.is_true(H.read_file(file):find(r.api_key, 1, true) == nil,
                   "the file was written after save_to was removed")
    local reqs = H.org(org).requests
    assert.are.equal(4, #reqs)
    assert.are.equal("changed/1", reqs[3].headers["user-agent"])
    for n = 1, 4 do assert.are.equal("current", reqs[n].key, "request " .. n) end
  end)

  it("a bad value put in place after a good call still raises, nothing sent", function()
    local org, key = H.new_org()
    local opts = H.opts(org, key)
    local r, e, _, i = slashid.rotate_key(opts)
    rotated(i, e)
    opts.api_key, opts.timeout = r.api_key, 500
    local ok, err = pcall(slashid.rotate_key, opts)
    assert.is_false(ok)
    assert.matches("bad option 'timeout'", err)
    assert.are.equal(1, #H.org(org).requests)
  end)
end)

describe("a client's kept configuration", function()
  it("per-call options stay with their call: the next plain call is the client's", function()
    local org, key = H.new_org()
    local client = slashid.new(H.opts(org, key, { user_agent = "client/1" }))
    local r, e, _, i = client:rotate_key()             -- kept from here
    rotated(i, e)
    local file = H.tmpname("kept-call") .. ".key"
    r, e, _, i = client:rotate_key({ save_to = file, user_agent = "call/2" })
    rotated(i, e)
    H.assert_key_equal(r.api_key, (H.read_file(file):gsub("\n$", "")))
    local r3, e3, _, i3 = client:rotate_key()
    rotated(i3, e3)
    assert.is_nil(i3.saved)
    assert.is_true(H.read_file(file):find(r3.api_key, 1, true) == nil,
                   "the plain call saved to the per-call save_to")
    local reqs = H.org(org).requests
    assert.are.same({ "client/1", "call/2", "client/1" },
                    { reqs[1].headers["user-agent"], reqs[2].headers["user-agent"],
                      reqs[3].headers["user-agent"] })
    for n = 1, 3 do assert.are.equal("current", reqs[n].key, "request " .. n) end
    client:close()
  end)

  it("rotate, check, rotate, verify on one handle: each request is its own", function()
    local org, key = H.new_org()
    local client = slashid.new(H.opts(org, key))
    local _, e, _, i = client:rotate_key()
    rotated(i, e)
    local ok, ce = client:check_key()
    assert.is_true(ok, messages(ce))
    _, e, _, i = client:rotate_key()
    rotated(i, e)
    _, e, _, i = client:rotate_key({ verify = true })
    rotated(i, e)
    assert.is_true(i.verified)
    local r, e5, _, i5 = client:rotate_key()
    rotated(i5, e5)
    H.assert_key_equal(H.org(org).api_key, r.api_key)
    local methods = {}
    for n, req in ipairs(H.org(org).requests) do
      methods[n] = req.method .. " " .. req.key
    end
    assert.are.same({ "PUT current", "GET current", "PUT current", "PUT current",
                      "GET current", "PUT current" }, methods)
    client:close()
  end)

  it("the debug function is called on every call, not only the first", function()
    local org, key = H.new_org()
    local lines = 0
    local client = slashid.new(H.opts(org, key, { debug = function() lines = lines + 1 end }))
    local _, e, _, i = client:rotate_key()
    rotated(i, e)
    local first = lines
    assert.is_true(first > 0)
    _, e, _, i = client:rotate_key()
    rotated(i, e)
    assert.is_true(lines >= 2 * first - 2, ("%d lines, then %d"):format(first, lines - first))
    client:close()
  end)

  it("a retry sends the same request again (kept by the handle) and rotates", function()
    local org, key = H.new_org()
    H.faults(org, { { status = 429, headers = { ["Retry-After"] = "0" } } })
    local client = slashid.new(H.opts(org, key))
    local r, e, _, i = client:rotate_key()
    rotated(i, e)
    assert.are.equal(2, i.attempts)
    H.assert_key_equal(H.org(org).api_key, r.api_key)
    client:close()
  end)
end)

describe("a handle's kept request", function()
  it("a new request table with other values is set up afresh", function()
    local org, key = H.new_org()
    local h = core.handle()
    local base = { method = "GET", url = H.http_url .. "/organizations/config",
                   org_id = org, api_key = key, user_agent = "one/1" }
    local again = {}
    for k, v in pairs(base) do again[k] = v end
    again.user_agent = "two/2"
    local _, _, _, f1 = h:perform(base)
    local _, _, _, f2 = h:perform(base)
    local _, _, _, f3 = h:perform(again)
    assert.are.same({ 200, 200, 200 }, { f1.status, f2.status, f3.status })
    local reqs = H.org(org).requests
    assert.are.same({ "one/1", "one/1", "two/2" },
                    { reqs[1].headers["user-agent"], reqs[2].headers["user-agent"],
                      reqs[3].headers["user-agent"] })
    h:close()
  end)
end)
