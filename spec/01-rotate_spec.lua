-- The main path: a rotation against the emulator over HTTP and HTTPS, the
-- shapes of the four returned values, the module fields, and loading:
-- without a working C core, require fails at once, every time.
local H = require "helpers"
local slashid = require "slashid"

local LUA, q, write, run = H.lua, H.q, H.write, H.run

local is_integer = math.type and function(x) return math.type(x) == "integer" end
                 or function(x) return type(x) == "number" and x % 1 == 0 end

describe("slashid.rotate_key", function()
  it("rotates a key over HTTP: the new key works, the old one is refused", function()
    local org, key = H.new_org()
    local result, errors, pagination, info = slashid.rotate_key(H.opts(org, key))
    assert.is_table(result)
    assert.is_string(result.api_key)
    assert.are_not.equal("", result.api_key)
    assert.are_not.equal(key, result.api_key)
    assert.are.same({}, errors)
    assert.are.equal("rotated", info.outcome)
    assert.are.equal(200, info.status)
    assert.are.equal(1, info.attempts)
    assert.is_number(info.elapsed)
    assert.is_true(info.elapsed >= 0)
    assert.is_table(info.headers)
    assert.are.equal("application/json", info.headers["content-type"])
    assert.are.same({ limit = 1, offset = 0, total_count = 1 }, pagination)
    assert.are.equal(result.api_key, H.org(org).api_key)
    assert.is_false(slashid.check_key(H.opts(org, key)))
    assert.is_true(slashid.check_key(H.opts(org, result.api_key)))
  end)

  it("rotates a key over HTTPS with the emulator's CA", function()
    local org, key = H.new_org()
    local result, errors, _, info = slashid.rotate_key(H.opts(org, key, {
      base_url = H.https_url, ca_file = H.ca_file }))
    assert.are.equal("rotated", info.outcome, errors[1] and errors[1].message)
    H.assert_key_equal(H.org(org).api_key, result.api_key)
    assert.are.equal("https", H.org(org).requests[1].port)
  end)

  it("sends the four SlashID headers, Accept and the user agent", function()
    local org, key = H.new_org()
    slashid.rotate_key(H.opts(org, key, { consistency = "all_regions", timeout = 60.0 }))
    local req = H.org(org).requests[1]
    assert.are.equal("PUT", req.method)
    assert.are.equal("/organizations/api-keys", req.path)
    assert.are.equal(org, req.headers["slashid-orgid"])
    assert.are.equal("current", req.key)
    assert.are.equal("all_regions", req.headers["slashid-required-consistency"])
    assert.are.equal("60", req.headers["slashid-required-consistency-timeout"])
    assert.are.equal("application/json", req.headers["accept"])
    assert.matches("^slashid%-lua/" .. slashid._VERSION:gsub("%.", "%%.") .. " libcurl/%d",
                   req.headers["user-agent"])
  end)

  it("sends both consistency headers with their defaults", function()
    local org, key = H.new_org()
    slashid.rotate_key(H.opts(org, key))
    local req = H.org(org).requests[1]
    assert.are.equal("local_region", req.headers["slashid-required-consistency"])
    assert.are.equal("30", req.headers["slashid-required-consistency-timeout"])
  end)

  it("uses a custom user agent", function()
    local org, key = H.new_org()
    slashid.rotate_key(H.opts(org, key, { user_agent = "ops-rotator/2" }))
    assert.are.equal("ops-rotator/2", H.org(org).requests[1].headers["user-agent"])
  end)

  it("gives httpcode, status and pagination numbers as integers", function()
    local org, key = H.new_org()
    H.faults(org, { { status = 400, json = {
      meta = { pagination = { limit = 10, offset = 20, total_count = 30 } },
      errors = { { httpcode = 400, message = "bad" } }, } } })
    local result, errors, pagination, info = slashid.rotate_key(H.opts(org, key))
    assert.is_nil(result)
    assert.is_true(is_integer(errors[1].httpcode))
    assert.is_true(is_integer(info.status))
    assert.is_true(is_integer(pagination.limit))
    assert.is_true(is_integer(pagination.offset))
    assert.is_true(is_integer(pagination.total_count))
    assert.are.same({ limit = 10, offset = 20, total_count = 30 }, pagination)
  end)

  it("turns JSON null into nil", function()
    local org, key = H.new_org()
    H.faults(org, { { rotate = true, status = 200,
      body = '{"meta":null,"errors":null,"result":{"api_key":"{{new_key}}","note":null,"n":[1,null,3]}}' } })
    local result, errors, pagination, info = slashid.rotate_key(H.opts(org, key))
    assert.are.equal("rotated", info.outcome)
    H.assert_key_equal(H.org(org).api_key, result.api_key)
    assert.is_nil(result.note)
    assert.are.equal(1, result.n[1])
    assert.is_nil(result.n[2])
    assert.are.equal(3, result.n[3])
    assert.is_nil(pagination)
    assert.are.same({}, errors)
  end)

  it("reads options from SLASHID_* environment variables", function()
    local org, key = H.new_org()
    local script = H.tmpname("env") .. ".lua"
    local f = assert(io.open(script, "w"))
    f:write([[
      local slashid = require "slashid"
      local r, e, p, i = slashid.rotate_key()
      io.write(i.outcome, " ", tostring(r ~= nil))
    ]])
    f:close()
    local cmd = ("SLASHID_ORG_ID='%s' SLASHID_API_KEY='%s' SLASHID_BASE_URL='%s' %s %s")
      :format(org, key, H.http_url, H.lua, script)
    local p = io.popen(cmd)
    local out = p:read("*a")
    p:close()
    assert.are.equal("rotated true", out)
    assert.are.equal(1, H.org(org).rotations)
  end)

  it("exposes _VERSION, PRODUCTION and SANDBOX", function()
    assert.matches("^%d+%.%d+%.%d+$", slashid._VERSION)
    assert.are.equal("https://api.slashid.com", slashid.PRODUCTION)
    assert.are.equal("https://api.sandbox.slashid.com", slashid.SANDBOX)
  end)

  it("creates no globals when loaded", function()
    local before = {}
    for k in pairs(_G) do before[k] = true end
    package.loaded.slashid, package.loaded["slashid.core"] = nil, nil
    local again = require "slashid"
    assert.is_table(again)
    for k in pairs(_G) do assert.is_true(before[k], "new global: " .. tostring(k)) end
  end)
end)

describe("require fails fast without the C core", function()
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
