-- What becomes of a new key once the server has issued it: `save_to`
-- (written atomically, mode 0600, never lost when the write fails; over a
-- file that already exists, its owner, group and permission bits less any
-- for others kept where the process may set them; symbolic links followed
-- to the file they name, links to what is not a regular file refused after
-- the rotation with an errors entry, the key kept in result) and `verify`
-- (the new key checked with a GET /organizations/config right after the
-- rotation), plus check_key on the old and the new key.
-- The ownership cases chown files to nobody:nogroup, so they need root;
-- the non-root case runs a rotation as nobody through setpriv.
local H = require "helpers"
local slashid = require "slashid"

local q, exists, write, listing, messages = H.q, H.exists, H.write, H.ls, H.messages

-- os.execute's success across 5.1 (0) and 5.2+ (true). The tools run
-- without LD_PRELOAD: under `make check-asan` the sanitizer runtime would
-- make chown and friends fail on their own leaks.
local function sh(cmd)
  local r = os.execute("env -u LD_PRELOAD sh -c " .. q(cmd))
  return r == true or r == 0
end

local function run(cmd)
  assert(sh(cmd), "command failed: " .. cmd)
end

-- What a command prints, its last newline dropped.
local function capture(cmd)
  local p = io.popen(cmd)
  local out = p:read("*a")
  p:close()
  return (out:gsub("\n$", ""))
end

-- "user:group mode" of a file (the link itself is never asked: stat follows).
local function owner_mode(path)
  return capture("stat -L -c '%U:%G %a' " .. q(path))
end

local function is_link(path) return sh("test -L " .. q(path)) end
local function is_regular(path) return sh("test -f " .. q(path) .. " && ! test -L " .. q(path)) end
local function link_text(path) return capture("readlink " .. q(path)) end

local function is_root()
  return capture("id -u") == "0"
end

-- Rotates with save_to = path; asserts the rotation and the save worked,
-- and that path (through any link) holds exactly the new key.
local function rotate_saving(path)
  local org, key = H.new_org()
  local result, errors, _, info = slashid.rotate_key(H.opts(org, key, { save_to = path }))
  assert.are.equal("rotated", info.outcome, messages(errors))
  assert.are.same({}, errors, messages(errors))
  assert.is_true(info.saved)
  H.assert_key_equal(H.org(org).api_key, result.api_key)
  assert.are.equal(result.api_key .. "\n", H.read_file(path))
  return result
end

-- Rotates with save_to = path where saving must fail: the key is still
-- returned, info.saved == false, one errors entry naming path (and quoting
-- neither key). Returns that entry's message.
local function rotate_not_saving(path)
  local org, key = H.new_org()
  local result, errors, _, info = slashid.rotate_key(H.opts(org, key, { save_to = path }))
  assert.are.equal("rotated", info.outcome, messages(errors))
  assert.is_table(result)
  H.assert_key_equal(H.org(org).api_key, result.api_key)
  assert.is_false(info.saved)
  assert.are.equal(1, #errors, messages(errors))
  assert.are.equal(0, errors[1].httpcode)
  assert.is_truthy(errors[1].message:find(path, 1, true), errors[1].message)
  H.assert_no_secret(H.flatten(errors), result.api_key)
  H.assert_no_secret(H.flatten(errors), key)
  return errors[1].message
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

  it("writes to a file whose name is 250 characters long", function()
    local org, key = H.new_org()
    local dir = H.mkdir(H.tmpname("longname"))
    local path = dir .. "/" .. ("k"):rep(250)
    local result, errors, _, info = slashid.rotate_key(H.opts(org, key, { save_to = path }))
    assert.are.equal("rotated", info.outcome)
    assert.is_true(info.saved, errors[1] and errors[1].message)
    assert.are.equal(result.api_key .. "\n", H.read_file(path))
  end)
end)

describe("save_to over an existing file (as root)", function()
  local root = is_root()
  local function need_root()
    if not root then
      pending("needs root: the cases chown files to nobody:nogroup")
      return false
    end
    return true
  end

  it("keeps nobody:nogroup 0640 and holds the new key", function()
    if not need_root() then return end
    local dir = fresh_dir()
    local path = dir .. "/app.key"
    write(path, "old-key\n")
    run("chown nobody:nogroup " .. q(path) .. " && chmod 0640 " .. q(path))
    rotate_saving(path)
    assert.are.equal("nobody:nogroup 640", owner_mode(path))
    assert.are.same({ "app.key" }, listing(dir))
  end)

  it("drops the bits for others: 0666 becomes 0660, owner kept", function()
    if not need_root() then return end
    local dir = fresh_dir()
    local path = dir .. "/app.key"
    write(path, "old-key\n")
    run("chown nobody:nogroup " .. q(path) .. " && chmod 0666 " .. q(path))
    rotate_saving(path)
    assert.are.equal("nobody:nogroup 660", owner_mode(path))
    assert.are.same({ "app.key" }, listing(dir))
  end)

  it("drops setuid, setgid and sticky bits: 4750 -> 0750, 2640 -> 0640, 1660 -> 0660", function()
    if not need_root() then return end
    for _, case in ipairs({ { "4750", "750" }, { "2640", "640" }, { "1660", "660" },
                            { "7777", "770" } }) do
      local dir = fresh_dir()
      local path = dir .. "/app.key"
      write(path, "old-key\n")
      run("chown nobody:nogroup " .. q(path) .. " && chmod " .. case[1] .. " " .. q(path))
      rotate_saving(path)
      assert.are.equal("nobody:nogroup " .. case[2], owner_mode(path), "from " .. case[1])
      assert.are.same({ "app.key" }, listing(dir))
    end
  end)

  it("creates a new file 0600 owned by the process; once handed over, the next rotation keeps it", function()
    if not need_root() then return end
    local dir = fresh_dir()
    local path = dir .. "/app.key"
    rotate_saving(path)
    assert.are.equal("root:root 600", owner_mode(path))
    -- the administrator gives the file to the application
    run("chown nobody:nogroup " .. q(path) .. " && chmod 0640 " .. q(path))
    rotate_saving(path)
    assert.are.equal("nobody:nogroup 640", owner_mode(path))
    assert.are.same({ "app.key" }, listing(dir))
  end)
end)

describe("save_to through symbolic links (as root)", function()
  local root = is_root()

  -- dir/real/app.key (nobody:nogroup 0640) and dir/etc/, where links go.
  local function setup()
    local dir = fresh_dir("links")
    local real = H.mkdir(dir .. "/real")
    local etc = H.mkdir(dir .. "/etc")
    local target = real .. "/app.key"
    write(target, "old-key\n")
    run("chown nobody:nogroup " .. q(target) .. " && chmod 0640 " .. q(target))
    return dir, real, etc, target
  end

  local function check_followed(link, text, real, etc, target, others)
    assert.is_true(is_link(link), "the link was replaced by a file")
    assert.are.equal(text, link_text(link))
    assert.is_true(is_regular(target))
    assert.are.equal("nobody:nogroup 640", owner_mode(target))
    -- no temp file left, neither beside the link nor beside the target
    assert.are.same({ "app.key" }, listing(real))
    assert.are.same(others, listing(etc))
  end

  it("follows a relative link: the target is replaced, owner and mode kept", function()
    if not root then pending("needs root: the target is chowned to nobody:nogroup") return end
    local _, real, etc, target = setup()
    local link = etc .. "/app.key"
    run("ln -s ../real/app.key " .. q(link))
    local result = rotate_saving(link)
    assert.are.equal(result.api_key .. "\n", H.read_file(target))
    check_followed(link, "../real/app.key", real, etc, target, { "app.key" })
  end)

  it("follows an absolute link", function()
    if not root then pending("needs root: the target is chowned to nobody:nogroup") return end
    local _, real, etc, target = setup()
    local link = etc .. "/app.key"
    run("ln -s " .. q(target) .. " " .. q(link))
    local result = rotate_saving(link)
    assert.are.equal(result.api_key .. "\n", H.read_file(target))
    check_followed(link, target, real, etc, target, { "app.key" })
  end)

  it("follows a chain of two links (absolute, then relative to the second link's directory)", function()
    if not root then pending("needs root: the target is chowned to nobody:nogroup") return end
    local dir, real, etc, target = setup()
    local mid_dir = H.mkdir(dir .. "/mid")
    local mid = mid_dir .. "/app.key"
    local link = etc .. "/app.key"
    run("ln -s ../real/app.key " .. q(mid))      -- relative to mid/, not to etc/
    run("ln -s " .. q(mid) .. " " .. q(link))
    local result = rotate_saving(link)
    assert.are.equal(result.api_key .. "\n", H.read_file(target))
    assert.is_true(is_link(mid))
    assert.are.equal("../real/app.key", link_text(mid))
    assert.are.same({ "app.key" }, listing(mid_dir))
    check_followed(link, mid, real, etc, target, { "app.key" })
  end)

  it("a dangling link: the file it names is created, mode 0600, the link stays", function()
    if not root then pending("needs root: the new file's owner is checked as root:root") return end
    local dir = fresh_dir("dangling")
    local real = H.mkdir(dir .. "/real")
    local etc = H.mkdir(dir .. "/etc")
    local link = etc .. "/app.key"
    run("ln -s ../real/new.key " .. q(link))
    local result = rotate_saving(link)
    assert.is_true(is_link(link), "the link was replaced by a file")
    assert.are.equal("../real/new.key", link_text(link))
    assert.is_true(is_regular(real .. "/new.key"))
    assert.are.equal(result.api_key .. "\n", H.read_file(real .. "/new.key"))
    assert.are.equal("root:root 600", owner_mode(real .. "/new.key"))
    assert.are.same({ "new.key" }, listing(real))
    assert.are.same({ "app.key" }, listing(etc))
  end)

  it("a link to a directory: not saved, an errors entry, the key returned, nothing touched", function()
    local dir = fresh_dir("todir")
    local target = H.mkdir(dir .. "/keys")
    write(target .. "/inside", "keep")
    local link = dir .. "/app.key"
    run("ln -s keys " .. q(link))
    local msg = rotate_not_saving(link)
    assert.is_truthy(msg:find("directory", 1, true), msg)
    assert.is_true(is_link(link), "the link was replaced by a file")
    assert.are.equal("keys", link_text(link))
    assert.are.same({ "app.key", "keys" }, listing(dir))
    assert.are.same({ "inside" }, listing(target))
    assert.are.equal("keep", H.read_file(target .. "/inside"))
  end)

  it("a link to something that is not a regular file (a FIFO): refused, the key returned", function()
    local dir = fresh_dir("tofifo")
    local fifo = dir .. "/pipe"
    run("mkfifo " .. q(fifo))
    local link = dir .. "/app.key"
    run("ln -s pipe " .. q(link))
    local msg = rotate_not_saving(link)
    assert.is_truthy(msg:find("not a regular file", 1, true), msg)
    assert.is_true(is_link(link), "the link was replaced by a file")
    assert.is_true(sh("test -p " .. q(fifo)))
    assert.are.same({ "app.key", "pipe" }, listing(dir))
  end)

  it("a loop of links: refused, the key returned, the links left alone", function()
    local dir = fresh_dir("loop")
    local a, b = dir .. "/a.key", dir .. "/b.key"
    run("ln -s b.key " .. q(a) .. " && ln -s a.key " .. q(b))
    rotate_not_saving(a)
    assert.is_true(is_link(a) and is_link(b), "a link was replaced by a file")
    assert.are.equal("b.key", link_text(a))
    assert.are.same({ "a.key", "b.key" }, listing(dir))
  end)
end)

describe("save_to when the process may not give files away (nobody via setpriv)", function()
  -- A rotation in a child process running as nobody:nogroup, saving over
  -- files owned by root. Its own user stays; the group is kept where
  -- nobody may set it (nogroup), otherwise the group's bits go too.
  local chunk = [[
    local slashid = require "slashid"
    local path = ...
    local result, errors, _, info = slashid.rotate_key{
      base_url = os.getenv("SPEC_BASE_URL"), retry_delay = 0.01, retry_max_delay = 0.05,
      save_to = path }
    io.write(info.outcome, " ", tostring(info.saved), " ", #errors, "\n")
    if result then
      local f = io.open(os.getenv("SPEC_OUT"), "wb")
      f:write(result.api_key .. "\n")
      f:close()
    end
  ]]

  it("keeps nogroup and 0660 from root:nogroup 0660; root:root 0640 becomes nobody:nogroup 0600", function()
    if not is_root() then pending("needs root to set the scene (files owned by root, a child as nobody)") return end
    if not sh("command -v setpriv >/dev/null 2>&1") then pending("setpriv is not installed") return end
    -- The run's scratch folder is 0700 root: this case needs one nobody can reach.
    local dir = capture("mktemp -d /tmp/slashid-owner.XXXXXX")
    assert(dir:find("^/tmp/slashid%-owner%."), dir)
    local ok, err = pcall(function()
      run("chown nobody:nogroup " .. q(dir) .. " && chmod 0700 " .. q(dir))
      local script = dir .. "/rotate.lua"
      write(script, chunk)
      run("chmod 0644 " .. q(script))
      for _, case in ipairs({ { "root:nogroup", "0660", "nobody:nogroup 660" },
                              { "root:root", "0640", "nobody:nogroup 600" } }) do
        local path = dir .. "/app.key"
        local out = dir .. "/result"
        write(path, "old-key\n")
        run("chown " .. case[1] .. " " .. q(path) .. " && chmod " .. case[2] .. " " .. q(path))
        local org, key = H.new_org()
        local line = capture(("SLASHID_ORG_ID=%s SLASHID_API_KEY=%s SPEC_BASE_URL=%s SPEC_OUT=%s " ..
          "setpriv --reuid=65534 --regid=65534 --clear-groups %s %s %s 2>&1")
          :format(q(org), q(key), q(H.http_url), q(out), q(H.lua), q(script), q(path)))
        H.assert_no_secret(line, key)
        assert.are.equal("rotated true 0", line)
        local new_key = H.org(org).api_key
        H.assert_no_secret(line, new_key)
        assert.are.equal(new_key .. "\n", H.read_file(out))
        assert.are.equal(new_key .. "\n", H.read_file(path))
        assert.are.equal(case[3], owner_mode(path), "from " .. case[1] .. " " .. case[2])
        assert.are.same({ "app.key", "result", "rotate.lua" }, listing(dir))
        os.remove(out)
      end
    end)
    run("rm -rf " .. q(dir))
    if not ok then error(err, 0) end
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

  it("is not failed by a max_response_bytes sized for the rotation's answer", function()
    local org, key = H.new_org()
    local result, errors, _, info = slashid.rotate_key(H.opts(org, key, {
      max_response_bytes = 200, verify = true }))
    assert.are.equal("rotated", info.outcome, errors[1] and errors[1].message)
    assert.is_true(info.verified, errors[1] and errors[1].message)
    assert.is_string(result.api_key)
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
