-- Work done once (issue 11): a client keeps its resolved configuration
-- and request between calls, a module-level call repeating the last one
-- reuses its checked options, and a handle keeps the request it last set
-- up. What is kept must never outlive what it was made from: each test
-- changes one input between calls and expects the next request to follow
-- it (a key, a file, an option, the kind of call). The emulator records
-- every request: which key it carried ("current", "old", ...) and its
-- headers.
--
-- Then a client adopting the new key of each rotation: SlashID answers a
-- new key on every rotation, so a client's kept configuration and
-- request meet a new key on every call: only what depends on the key may
-- change (the key header on the kept request and handle, the key the
-- ownership check compares), never the rest. (Three rotations in a row,
-- each presenting the key issued last: spec/06-client_spec.lua.)
local H = require "helpers"
local slashid = require "slashid"
local core = require "slashid.core"
local request = require "slashid.request"
local options = require "slashid.options"

local messages = H.messages

local function rotated(info, errors, what)
  assert.are.equal("rotated", info.outcome, (what and what .. ": " or "") .. messages(errors))
end

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

describe("what a kept request must not keep", function()
  it("a setup that failed is not kept: a ca_file missing at the first call, there at the second", function()
    local org, key = H.new_org()
    local ca = H.tmpname("late-ca") .. ".pem"
    local client = slashid.new({ org_id = org, api_key = key, base_url = H.https_url,
                                 ca_file = ca, retries = 0 })
    local _, e1, _, i1 = client:rotate_key()
    assert.are.equal("not_rotated", i1.outcome)
    assert.matches("ca_file cannot be used", e1[1].message)
    H.write(ca, H.read_file(H.ca_file))
    local r2, e2, _, i2 = client:rotate_key()
    rotated(i2, e2)
    H.assert_key_equal(H.org(org).api_key, r2.api_key)
    client:close()
  end)

  it("the ca_file is looked at on every attempt: a FIFO put in its place ends the call at once", function()
    -- in a process of its own: a regression blocks in open(2) for good
    local org, key = H.new_org()
    local dir = H.mkdir(H.tmpname("fifo-ca"))
    local ca = dir .. "/ca.pem"
    H.write(ca, H.read_file(H.ca_file))
    H.faults(org, { { status = 400, message = "no", headers = { Connection = "close" } } })
    local script = H.write(dir .. "/run.lua", [[
      local slashid = require "slashid"
      local ca = os.getenv("CA")
      local c = slashid.new({ org_id = os.getenv("ORG"), api_key = os.getenv("KEY"),
                              base_url = os.getenv("URL"), ca_file = ca, retries = 0,
                              request_timeout = 3 })
      -- the PUT set up and kept; the server answers 400 and closes the
      -- connection, so the next attempt makes a new one (OpenSSL opens
      -- the CA file then)
      local _, _, _, i0 = c:rotate_key()
      io.write("second ", i0.outcome, "\n")
      assert(os.remove(ca))
      assert(os.execute("mkfifo " .. ca))
      local _, e, _, i = c:rotate_key()
      io.write("third ", i.outcome, " ", e[1] and e[1].message or "", "\n")
    ]])
    local p = io.popen(("ORG=%s KEY=%s URL=%s CA=%s timeout 30 %s %s 2>&1; echo rc=$?"):format(
      H.q(org), H.q(key), H.q(H.https_url), H.q(ca), H.lua, H.q(script)))
    local out = p:read("*a")
    p:close()
    H.assert_no_secret(out, key)
    assert.matches("second not_rotated", out)
    assert.matches("third not_rotated [^\n]*ca_file cannot be used: not a regular file", out)
    assert.matches("rc=0", out)
  end)

  it("a client whose debug function refers to the client is still collected", function()
    if _VERSION == "Lua 5.1" then
      -- (LuaJIT too) a weak-keyed table is not an ephemeron there: a value
      -- that refers to its own key (the client's private state holding
      -- the debug function) keeps it, whatever the C core does
      pending("Lua 5.1 and LuaJIT have no ephemeron tables: such a client is kept")
      return
    end
    local before = H.baseline_fds()
    if not before then
      pending("no /proc/PID/fd: open descriptors cannot be counted here")
      return
    end
    local weak = setmetatable({}, { __mode = "k" })
    for _ = 1, 10 do
      local org, key = H.new_org()
      local c
      c = slashid.new(H.opts(org, key, { debug = function() local _ = c end }))
      local _, e, _, i = c:rotate_key()
      rotated(i, e)
      weak[c] = true
    end
    for _ = 1, 4 do collectgarbage("collect") end   -- finalizers, then weak keys
    H.assert_no_fd_leak(before)
    local left = 0
    for _ in pairs(weak) do left = left + 1 end
    assert.are.equal(0, left, "clients still alive")
  end)

  it("a client used once and dropped (`slashid.new(o):rotate_key()`) outlives its call, " ..
     "with the collector running all the time", function()
    -- The client is referred to by nothing but the call itself: were the
    -- call a tail call, the collector could finalize the client (closing
    -- its handle, forgetting its key) while the call is under way.
    local pause = collectgarbage("setpause", 0)
    local stepmul = collectgarbage("setstepmul", 1000)
    local ok, err = pcall(function()
      for n = 1, 25 do
        local org, key = H.new_org()
        local chunk = { n = n }
        local r, e, _, i = slashid.new(H.opts(org, key, {
          -- garbage made inside the call, and a collection step each time
          debug = function(kind) chunk[#chunk + 1] = kind .. n; collectgarbage("step") end,
        })):rotate_key()
        rotated(i, e)
        H.assert_key_equal(H.org(org).api_key, r.api_key)
        local ok_c, e_c, i_c = slashid.new(H.opts(org, r.api_key)):check_key()
        assert.is_true(ok_c, messages(e_c) .. " " .. tostring(i_c and i_c.status))
      end
    end)
    collectgarbage("setpause", pause)
    collectgarbage("setstepmul", stepmul)
    assert(ok, err)
  end)
end)

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

-- A verify check whose answer quotes the key the rotation replaced (a
-- server saying "key <old> was revoked", in its body and a header).
local function old_key_quoting_verify(org, key)
  H.faults(org, {
    { delay = 0.001 },                               -- the rotation: answered normally
    { status = 401, headers = { ["X-Revoked"] = key },
      json = { errors = { { httpcode = 401, message = "revoked: " .. key } } } },
  })
end

describe("adopting with verify: the check's answer quoting the replaced key", function()
  it("slashid.rotate_key with verify hides the replaced key in the check's answer", function()
    local org, key = H.new_org()
    old_key_quoting_verify(org, key)
    local debug, lines = H.tracer()
    local result, errors, pagination, info =
      slashid.rotate_key(H.opts(org, key, { verify = true, retries = 0, debug = debug }))
    assert.are.equal("rotated", info.outcome)
    assert.is_false(info.verified)
    H.assert_no_secret(H.flatten(result, errors, pagination, info), key)
    H.assert_no_secret(table.concat(lines, "\n"), key)
  end)

  it("client:rotate_key() with verify: the check's answer quoting the replaced (old) key " ..
     "is redacted as slashid.rotate_key's is", function()
    local org, key = H.new_org()
    local debug, lines = H.tracer()
    local client = slashid.new(H.opts(org, key, { verify = true, retries = 0, debug = debug }))
    old_key_quoting_verify(org, key)
    local result, errors, pagination, info = client:rotate_key()
    assert.are.equal("rotated", info.outcome)
    assert.is_false(info.verified)
    local text = H.flatten(result, errors, pagination, info)
    -- (never print the key: only whether it is there)
    assert.is_nil(text:find(key, 1, true), "the old key is in the values client:rotate_key returned")
    assert.is_nil(table.concat(lines, "\n"):find(key, 1, true), "the old key is in the debug trace")
    client:close()
  end)
end)
