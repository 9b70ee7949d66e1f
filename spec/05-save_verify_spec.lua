-- `save_to` (the new key written atomically, mode 0600, never lost when
-- the write fails) and `verify` (the new key checked with a GET
-- /organizations/config right after the rotation), plus check_key on the
-- old and the new key.
local H = require "helpers"
local slashid = require "slashid"

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

local function write(path, content)
  local f = assert(io.open(path, "wb"))
  f:write(content)
  f:close()
end

-- Names in a directory, dot files included.
local function listing(dir)
  local p = io.popen("ls -A '" .. dir .. "'")
  local names = {}
  for line in p:lines() do names[#names + 1] = line end
  p:close()
  table.sort(names)
  return names
end

-- The temp files save_to would leave behind: ".<name>.XXXXXX".
local function leftovers(dir, name)
  local found = {}
  local pattern = "^%." .. name:gsub("%p", "%%%0") .. "%.......$"
  for _, n in ipairs(listing(dir)) do
    if n:find(pattern) then found[#found + 1] = n end
  end
  return found
end

local function messages(errors)
  local t = {}
  for _, e in ipairs(errors) do t[#t + 1] = tostring(e.message) end
  return table.concat(t, " | ")
end

-- A fresh empty directory under the run's temp dir.
local function fresh_dir(name)
  return H.mkdir(H.tmpname(name or "save"))
end

describe("save_to", function()
  it("writes exactly the new key plus a newline, mode 0600, info.saved == true", function()
    local org, key = H.new_org()
    local dir = fresh_dir()
    local path = dir .. "/api-key"
    local result, errors, _, info = slashid.rotate_key(H.opts(org, key, { save_to = path }))
    assert.are.equal("rotated", info.outcome, messages(errors))
    H.assert_key_equal(H.org(org).api_key, result.api_key)
    assert.are.same({}, errors)
    assert.is_true(info.saved)
    assert.are.equal(result.api_key .. "\n", H.read_file(path))
    assert.are.equal("600", H.mode(path))
    assert.are.same({ "api-key" }, listing(dir))
  end)

  it("replaces an existing file: old content gone, mode kept less others' bits (644 -> 640), no temp file left", function()
    local org, key = H.new_org()
    local dir = fresh_dir()
    local path = dir .. "/key.txt"
    write(path, "the previous key, a longer line than the new one will be ......................................\nsecond line\n")
    assert(os.execute("chmod 644 '" .. path .. "'"))
    local result, errors, _, info = slashid.rotate_key(H.opts(org, key, { save_to = path }))
    assert.are.equal("rotated", info.outcome, messages(errors))
    assert.is_true(info.saved)
    assert.are.equal(result.api_key .. "\n", H.read_file(path))
    assert.are.equal("640", H.mode(path))
    assert.are.same({}, leftovers(dir, "key.txt"))
    assert.are.same({ "key.txt" }, listing(dir))
  end)

  it("replaces the file by rename: a reader holding the old file still sees the old content", function()
    -- An in-place rewrite (truncate + write) would change what an open
    -- descriptor reads; a rename leaves the old inode untouched.
    local org, key = H.new_org()
    local dir = fresh_dir()
    local path = dir .. "/key"
    write(path, "old-content\n")
    local reader = assert(io.open(path, "rb"))
    local result, errors, _, info = slashid.rotate_key(H.opts(org, key, { save_to = path }))
    local seen = reader:read("*a")
    reader:close()
    assert.are.equal("rotated", info.outcome, messages(errors))
    assert.are.equal("old-content\n", seen)
    assert.are.equal(result.api_key .. "\n", H.read_file(path))
    assert.are.same({ "key" }, listing(dir))
  end)

  it("writes through a client too, each rotation replacing the previous key", function()
    local org, key = H.new_org()
    local dir = fresh_dir()
    local path = dir .. "/client-key"
    local client = slashid.new(H.opts(org, key, { save_to = path }))
    local r1, e1, _, i1 = client:rotate_key()
    assert.are.equal("rotated", i1.outcome, messages(e1))
    assert.are.equal(r1.api_key .. "\n", H.read_file(path))
    local r2, e2, _, i2 = client:rotate_key()
    assert.are.equal("rotated", i2.outcome, messages(e2))
    assert.is_true(i2.saved)
    assert.are.equal(r2.api_key .. "\n", H.read_file(path))
    H.assert_key_equal(H.org(org).api_key, r2.api_key)
    assert.are.same({ "client-key" }, listing(dir))
    client:close()
  end)

  it("when the directory does not exist: the key is still returned, saved == false, an errors entry", function()
    local org, key = H.new_org()
    local path = H.tmpname("no-such-dir") .. "/sub/key"
    local result, errors, pagination, info =
      slashid.rotate_key(H.opts(org, key, { save_to = path }))
    assert.are.equal("rotated", info.outcome)
    assert.is_table(result)
    H.assert_key_equal(H.org(org).api_key, result.api_key)
    assert.is_false(info.saved)
    assert.are.equal(1, #errors)
    assert.is_number(errors[1].httpcode)
    assert.is_string(errors[1].message)
    assert.is_truthy(errors[1].message:lower():find("sav", 1, true), errors[1].message)
    assert.is_truthy(errors[1].message:find(path, 1, true), errors[1].message)
    assert.are.same({ limit = 1, offset = 0, total_count = 1 }, pagination)
    assert.is_false(exists(path))
    -- the errors entry quotes neither key
    H.assert_no_secret(H.flatten(errors), result.api_key)
    H.assert_no_secret(H.flatten(errors), key)
  end)

  it("when the parent is a regular file (works as root too): key returned, saved == false", function()
    local org, key = H.new_org()
    local dir = fresh_dir()
    local file = dir .. "/plain-file"
    write(file, "x")
    local path = file .. "/key"
    local result, errors, _, info = slashid.rotate_key(H.opts(org, key, { save_to = path }))
    assert.are.equal("rotated", info.outcome)
    H.assert_key_equal(H.org(org).api_key, result.api_key)
    assert.is_false(info.saved)
    assert.is_true(#errors >= 1)
    assert.is_truthy(messages(errors):find(path, 1, true), messages(errors))
    assert.are.equal("x", H.read_file(file))
    assert.are.same({ "plain-file" }, listing(dir))
  end)

  it("when the target is a directory (rename fails): saved == false and no temp file is left", function()
    local org, key = H.new_org()
    local dir = fresh_dir()
    local path = H.mkdir(dir .. "/target")
    write(path .. "/inside", "keep")
    local result, errors, _, info = slashid.rotate_key(H.opts(org, key, { save_to = path }))
    assert.are.equal("rotated", info.outcome)
    H.assert_key_equal(H.org(org).api_key, result.api_key)
    assert.is_false(info.saved)
    assert.is_true(#errors >= 1)
    assert.are.same({}, leftovers(dir, "target"))
    assert.are.same({ "target" }, listing(dir))
    assert.are.equal("keep", H.read_file(path .. "/inside"))
    H.assert_no_secret(H.flatten(errors), result.api_key)
  end)

  it("writes nothing when the key was refused (401)", function()
    local org, key = H.new_org()
    local dir = fresh_dir()
    local path = dir .. "/key"
    local result, errors, _, info =
      slashid.rotate_key(H.opts(org, key .. "-wrong", { save_to = path }))
    assert.is_nil(result)
    assert.are.equal("not_rotated", info.outcome)
    assert.are.equal(401, info.status)
    assert.is_true(#errors >= 1)
    assert.is_not_true(info.saved)
    assert.is_false(exists(path))
    assert.are.same({}, listing(dir))
  end)

  it("leaves an existing file untouched when the outcome is unknown (500)", function()
    local org, key = H.new_org()
    local dir = fresh_dir()
    local path = dir .. "/key"
    write(path, "previous\n")
    H.faults(org, { { status = 500 } })
    local result, _, _, info = slashid.rotate_key(H.opts(org, key, { save_to = path }))
    assert.is_nil(result)
    assert.are.equal("unknown", info.outcome)
    assert.is_not_true(info.saved)
    assert.are.equal("previous\n", H.read_file(path))
    assert.are.same({ "key" }, listing(dir))
  end)

  it("writes nothing for a 2xx without result.api_key", function()
    local org, key = H.new_org()
    local dir = fresh_dir()
    local path = dir .. "/key"
    H.faults(org, { { status = 200, json = { result = {} } } })
    local result, _, _, info = slashid.rotate_key(H.opts(org, key, { save_to = path }))
    assert.is_nil(result)
    assert.are.equal("unknown", info.outcome)
    assert.is_false(exists(path))
  end)

  it("leaves info.saved nil when save_to is not given", function()
    local org, key = H.new_org()
    local _, _, _, info = slashid.rotate_key(H.opts(org, key))
    assert.are.equal("rotated", info.outcome)
    assert.is_nil(info.saved)
  end)
end)

describe("verify", function()
  it("checks the new key with GET /organizations/config: info.verified == true", function()
    local org, key = H.new_org()
    local result, errors, _, info = slashid.rotate_key(H.opts(org, key, { verify = true }))
    assert.are.equal("rotated", info.outcome, messages(errors))
    assert.is_true(info.verified)
    assert.are.same({}, errors)
    local state = H.org(org)
    assert.are.equal(result.api_key, state.api_key)
    assert.are.equal(2, #state.requests)
    assert.are.equal("PUT", state.requests[1].method)
    assert.are.equal("/organizations/api-keys", state.requests[1].path)
    assert.are.equal("current", state.requests[1].key)
    assert.are.equal("GET", state.requests[2].method)
    assert.are.equal("/organizations/config", state.requests[2].path)
    -- "current" at that time: the rotation had already happened, so the
    -- GET carried the NEW key (the old one would be "previous")
    assert.are.equal("current", state.requests[2].key)
    assert.are.equal(org, state.requests[2].headers["slashid-orgid"])
  end)

  it("verifies over HTTPS", function()
    local org, key = H.new_org()
    local result, errors, _, info = slashid.rotate_key(H.opts(org, key, {
      verify = true, base_url = H.https_url, ca_file = H.ca_file }))
    assert.are.equal("rotated", info.outcome, messages(errors))
    assert.is_true(info.verified)
    local state = H.org(org)
    assert.are.equal(result.api_key, state.api_key)
    assert.are.equal("GET", state.requests[2].method)
    assert.are.equal("current", state.requests[2].key)
    assert.are.equal("https", state.requests[2].port)
  end)

  it("sends no GET when verify is not asked for, and leaves info.verified nil", function()
    local org, key = H.new_org()
    local _, _, _, info = slashid.rotate_key(H.opts(org, key))
    assert.are.equal("rotated", info.outcome)
    assert.is_nil(info.verified)
    assert.are.equal(1, H.requests(org))
  end)

  it("sends no GET when the rotation failed", function()
    local org, key = H.new_org()
    local result, _, _, info = slashid.rotate_key(H.opts(org, key .. "x", { verify = true }))
    assert.is_nil(result)
    assert.are.equal("not_rotated", info.outcome)
    assert.is_not_true(info.verified)
    assert.are.equal(1, H.requests(org))
  end)

  it("a 500 on the verify GET: verified == false, the key still returned, an errors entry", function()
    local org, key = H.new_org()
    H.faults(org, { {}, { status = 500 } })
    local result, errors, _, info = slashid.rotate_key(H.opts(org, key, { verify = true }))
    assert.are.equal("rotated", info.outcome)
    assert.is_table(result)
    H.assert_key_equal(H.org(org).api_key, result.api_key)
    assert.is_false(info.verified)
    assert.are.equal(1, #errors)
    assert.is_string(errors[1].message)
    assert.is_truthy(errors[1].message:lower():find("verif", 1, true), errors[1].message)
    local state = H.org(org)
    assert.are.equal(2, #state.requests)
    assert.are.equal("GET", state.requests[2].method)
    H.assert_no_secret(H.flatten(errors), result.api_key)
    H.assert_no_secret(H.flatten(errors), key)
  end)

  it("a 401 on the verify GET: verified == false, the key still returned, an errors entry", function()
    local org, key = H.new_org()
    H.faults(org, { {}, { status = 401 } })
    local result, errors, _, info = slashid.rotate_key(H.opts(org, key, { verify = true }))
    assert.are.equal("rotated", info.outcome)
    H.assert_key_equal(H.org(org).api_key, result.api_key)
    assert.is_false(info.verified)
    assert.are.equal(1, #errors)
    assert.is_truthy(errors[1].message:lower():find("verif", 1, true), errors[1].message)
  end)

  it("a dropped connection on the verify GET: verified == false, key returned", function()
    local org, key = H.new_org()
    -- twice: libcurl itself may re-send a GET once on a fresh connection
    -- when a reused one turns out dead (the server never answered it)
    H.faults(org, { {}, { action = "close", ["repeat"] = 2 } })
    local result, errors, _, info = slashid.rotate_key(H.opts(org, key, { verify = true }))
    assert.are.equal("rotated", info.outcome)
    H.assert_key_equal(H.org(org).api_key, result.api_key)
    assert.is_false(info.verified)
    assert.is_true(#errors >= 1)
  end)

  it("saves and verifies in one call", function()
    local org, key = H.new_org()
    local path = fresh_dir() .. "/key"
    local result, errors, _, info =
      slashid.rotate_key(H.opts(org, key, { verify = true, save_to = path }))
    assert.are.equal("rotated", info.outcome, messages(errors))
    assert.is_true(info.saved)
    assert.is_true(info.verified)
    assert.are.same({}, errors)
    assert.are.equal(result.api_key .. "\n", H.read_file(path))
  end)

  it("a save failure and a verify failure give two errors entries, the key still returned", function()
    local org, key = H.new_org()
    H.faults(org, { {}, { status = 500 } })
    local path = H.tmpname("missing") .. "/key"
    local result, errors, _, info =
      slashid.rotate_key(H.opts(org, key, { verify = true, save_to = path }))
    assert.are.equal("rotated", info.outcome)
    H.assert_key_equal(H.org(org).api_key, result.api_key)
    assert.is_false(info.saved)
    assert.is_false(info.verified)
    assert.are.equal(2, #errors)
  end)
end)

describe("check_key after a rotation", function()
  it("is false for the old key and true for the new one", function()
    local org, key = H.new_org()
    local result, _, _, info = slashid.rotate_key(H.opts(org, key))
    assert.are.equal("rotated", info.outcome)
    local ok_old, errors_old, info_old = slashid.check_key(H.opts(org, key))
    assert.is_false(ok_old)
    assert.are.equal(401, info_old.status)
    assert.is_true(#errors_old >= 1)
    local ok_new, errors_new, info_new = slashid.check_key(H.opts(org, result.api_key))
    assert.is_true(ok_new)
    assert.are.same({}, errors_new)
    assert.are.equal(200, info_new.status)
    local state = H.org(org)
    assert.are.equal("previous", state.requests[2].key)
    assert.are.equal("GET", state.requests[3].method)
    assert.are.equal("current", state.requests[3].key)
  end)

  it("is true for the key before any rotation and does not rotate it", function()
    local org, key = H.new_org()
    assert.is_true((slashid.check_key(H.opts(org, key))))
    assert.are.equal(0, H.org(org).rotations)
    assert.are.equal(key, H.org(org).api_key)
  end)
end)
