-- `save_to` over a file that already exists: the file that is replaced keeps
-- its owner and group (where the process may set them) and its permission
-- bits less any bits for others (no setuid/setgid/sticky either); a new
-- file is 0600; a symbolic link (relative, absolute, a chain) is followed
-- and the file it names is replaced, the link staying a link; a link to a
-- directory or to something that is not a regular file is refused after
-- the rotation with an errors entry, the new key kept in result.
-- The ownership cases chown files to nobody:nogroup, so they need root;
-- the non-root case runs a rotation as nobody through setpriv.
local H = require "helpers"
local q, write = H.q, H.write
local slashid = require "slashid"

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

local listing = H.ls
local messages = H.messages

local function fresh_dir(name)
  return H.mkdir(H.tmpname(name or "owner"))
end

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
