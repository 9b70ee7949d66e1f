-- bin/slashid-rotate, driven as a subprocess against the emulator: every
-- exit status, --help, --json, --api-key-file, --save-to (one and many),
-- --verify, --orgs with mixed outcomes, progress lines, secrets never
-- printed where they must not be, and a batch interrupted by SIGTERM or
-- SIGINT whose already-issued keys are all in the --save-to file.
local H = require "helpers"
local cjson = require "cjson"
local socket = require "socket"

local CLI = "bin/slashid-rotate"

local function q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function write(path, content, mode)
  local f = assert(io.open(path, "wb"))
  f:write(content)
  f:close()
  if mode then assert(os.execute("chmod " .. mode .. " " .. q(path))) end
  return path
end

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

local function lines_of(text)
  local t = {}
  for line in text:gmatch("([^\n]*)\n") do t[#t + 1] = line end
  return t
end

-- Runs the command with `env` (name -> value, set on the command line
-- only) and `args` (a list, each quoted). Returns status, stdout, stderr.
local function run(args, env)
  local dir = H.mkdir(H.tmpname("cli"))
  local parts = {}
  for name, value in pairs(env or {}) do parts[#parts + 1] = name .. "=" .. q(value) end
  parts[#parts + 1] = H.lua
  parts[#parts + 1] = CLI
  for _, a in ipairs(args) do parts[#parts + 1] = q(a) end
  local cmd = table.concat(parts, " ")
  os.execute(("%s >%s/out 2>%s/err </dev/null; echo $? >%s/rc"):format(cmd, dir, dir, dir))
  local status = tonumber((H.read_file(dir .. "/rc"):gsub("%s+$", "")))
  return status, H.read_file(dir .. "/out"), H.read_file(dir .. "/err")
end

-- The usual arguments for one organization against the emulator.
local function one(org, extra)
  local args = { "--org-id", org, "--base-url", H.http_url }
  for _, a in ipairs(extra or {}) do args[#args + 1] = a end
  return args
end

local function no_secrets(old_key, out, err, new_key)
  H.assert_no_secret(out, old_key)
  H.assert_no_secret(err, old_key)
  if new_key then H.assert_no_secret(err, new_key) end
end

-- n fresh orgs written as an --orgs file; returns path, list of {org_id, api_key}.
local function orgs_file(n, prefix_text)
  local list, text = {}, { prefix_text or "# organizations\n\n" }
  for i = 1, n do
    local org, key = H.new_org()
    list[i] = { org_id = org, api_key = key }
    text[#text + 1] = org .. "\t" .. key .. "\n"
    if i == 1 then text[#text + 1] = "   # a comment between lines\n  \n" end
  end
  local path = write(H.tmpname("orgs") .. ".tsv", table.concat(text))
  return path, list
end

local function decode_lines(text)
  local t = {}
  for _, line in ipairs(lines_of(text)) do t[#t + 1] = cjson.decode(line) end
  return t
end

-- ORG<TAB>KEY lines -> { [org] = key }, count
local function key_lines(text)
  local t, n = {}, 0
  for _, line in ipairs(lines_of(text)) do
    local org, key = line:match("^([^\t]+)\t([^\t]+)$")
    assert(org, "not an ORG<TAB>KEY line")
    assert(t[org] == nil, "org twice")
    t[org], n = key, n + 1
  end
  return t, n
end

describe("slashid-rotate, one organization", function()
  it("exit 0: rotates, prints only the new key on stdout, a message on stderr", function()
    local org, key = H.new_org()
    local status, out, err = run(one(org), { SLASHID_API_KEY = key })
    local state = H.org(org)
    assert.are.equal(0, status, err)
    assert.are.equal(1, state.rotations)
    assert.are.equal(state.api_key .. "\n", out)
    assert.matches("rotated", err)
    no_secrets(key, out, err, state.api_key)
  end)

  it("reads SLASHID_ORG_ID and SLASHID_BASE_URL like the library", function()
    local org, key = H.new_org()
    local status, out, err = run({}, { SLASHID_API_KEY = key, SLASHID_ORG_ID = org,
                                       SLASHID_BASE_URL = H.http_url })
    assert.are.equal(0, status, err)
    assert.are.equal(H.org(org).api_key .. "\n", out)
  end)

  it("reads the key from --api-key-file (first line, line ending stripped)", function()
    local org, key = H.new_org()
    local file = write(H.tmpname("key"), key .. "\nsecond line ignored\n")
    local status, out, err = run(one(org, { "--api-key-file", file }),
                                 { SLASHID_API_KEY = "sk_not_this_one_from_the_environment" })
    assert.are.equal(0, status, err)
    assert.are.equal(H.org(org).api_key .. "\n", out)
    assert.are.equal("current", H.org(org).requests[1].key)
    no_secrets(key, out, err, H.org(org).api_key)

    local org2, key2 = H.new_org()
    file = write(H.tmpname("key"), key2 .. "\r\n")
    status, out, err = run(one(org2, { "--api-key-file=" .. file }))
    assert.are.equal(0, status, err)
    assert.are.equal(H.org(org2).api_key .. "\n", out)
  end)

  it("passes --consistency, --timeout, --request-timeout and --ca-file (https)", function()
    local org, key = H.new_org()
    local status, out, err = run({ "--org-id", org, "--base-url", H.https_url,
                                   "--ca-file", H.ca_file, "--consistency", "all_regions",
                                   "--timeout", "42", "--request-timeout", "20" },
                                 { SLASHID_API_KEY = key })
    assert.are.equal(0, status, err)
    local req = H.org(org).requests[1]
    assert.are.equal("https", req.port)
    assert.are.equal("all_regions", req.headers["slashid-required-consistency"])
    assert.are.equal("42", req.headers["slashid-required-consistency-timeout"])
    assert.are.equal(H.org(org).api_key .. "\n", out)
  end)

  it("exit 1: not rotated (401), nothing on stdout", function()
    local org, key = H.new_org()
    H.faults(org, { { status = 401 } })
    local status, out, err = run(one(org), { SLASHID_API_KEY = key })
    assert.are.equal(1, status, err)
    assert.are.equal("", out)
    assert.matches("not rotated", err)
    assert.are.equal(0, H.org(org).rotations)
    no_secrets(key, out, err)
  end)

  it("exit 2: outcome unknown (500 after the rotation), with advice, never retried", function()
    local org, key = H.new_org()
    H.faults(org, { { status = 500, rotate = true } })
    local status, out, err = run(one(org), { SLASHID_API_KEY = key })
    assert.are.equal(2, status, err)
    assert.are.equal("", out)
    assert.matches("unknown", err)
    assert.matches("do not retry", err)
    assert.are.equal(1, H.requests(org))
    no_secrets(key, out, err, H.org(org).api_key)
  end)

  it("exit 2: a connection closed before the answer", function()
    local org, key = H.new_org()
    H.faults(org, { { action = "close", rotate = true } })
    local status, out, err = run(one(org), { SLASHID_API_KEY = key })
    assert.are.equal(2, status, err)
    assert.are.equal("", out)
    assert.are.equal(1, H.requests(org))
  end)

  it("exit 0 with --save-to: the key in the file (mode 0600), not on stdout", function()
    local org, key = H.new_org()
    local path = H.mkdir(H.tmpname("save")) .. "/key"
    local status, out, err = run(one(org, { "--save-to", path }), { SLASHID_API_KEY = key })
    local new = H.org(org).api_key
    assert.are.equal(0, status, err)
    assert.are.equal("", out)
    assert.are.equal(new .. "\n", H.read_file(path))
    assert.are.equal("600", H.mode(path))
    assert.matches("saved", err)
    no_secrets(key, out, err, new)
  end)

  it("exit 3: --save-to into a missing directory, the new key printed on stdout", function()
    local org, key = H.new_org()
    local path = H.tmpname("nowhere") .. "/missing/key"
    local status, out, err = run(one(org, { "--save-to", path }), { SLASHID_API_KEY = key })
    local new = H.org(org).api_key
    assert.are.equal(3, status, err)
    assert.are.equal(1, H.org(org).rotations)
    assert.are.equal(new .. "\n", out)
    assert.is_false(exists(path))
    assert.matches("not saved", err)
    no_secrets(key, out, err, new)
  end)

  it("--verify: exit 0 when the new key is accepted (PUT then GET with the new key)", function()
    local org, key = H.new_org()
    local status, out, err = run(one(org, { "--verify" }), { SLASHID_API_KEY = key })
    assert.are.equal(0, status, err)
    local state = H.org(org)
    assert.are.equal(2, #state.requests)
    assert.are.equal("PUT", state.requests[1].method)
    assert.are.equal("GET", state.requests[2].method)
    assert.are.equal("current", state.requests[2].key)
    assert.are.equal(state.api_key .. "\n", out)
    assert.matches("verified", err)
  end)

  it("exit 3: --verify fails; the key is saved and printed on stdout too", function()
    local org, key = H.new_org()
    H.faults(org, { { delay = 0 }, { status = 500 } })
    local path = H.mkdir(H.tmpname("save")) .. "/key"
    local status, out, err = run(one(org, { "--verify", "--save-to", path }),
                                 { SLASHID_API_KEY = key })
    local new = H.org(org).api_key
    assert.are.equal(3, status, err)
    assert.are.equal(new .. "\n", out)
    assert.are.equal(new .. "\n", H.read_file(path))
    assert.matches("verify", err)
    no_secrets(key, out, err, new)
  end)

  describe("--json", function()
    it("rotated: org_id, outcome, status, errors, api_key", function()
      local org, key = H.new_org()
      local status, out, err = run(one(org, { "--json" }), { SLASHID_API_KEY = key })
      assert.are.equal(0, status, err)
      local lines = lines_of(out)
      assert.are.equal(1, #lines)
      local obj = cjson.decode(lines[1])
      assert.are.same({ org_id = org, outcome = "rotated", status = 200, errors = {},
                        api_key = H.org(org).api_key }, obj)
      assert.matches('"errors":%[%]', out)   -- a list, even empty
      no_secrets(key, out, err, H.org(org).api_key)
    end)

    it("rotated with --save-to: no api_key in the object", function()
      local org, key = H.new_org()
      local path = H.mkdir(H.tmpname("save")) .. "/key"
      local status, out, err = run(one(org, { "--json", "--save-to", path }),
                                   { SLASHID_API_KEY = key })
      assert.are.equal(0, status, err)
      local obj = cjson.decode(out)
      assert.is_nil(obj.api_key)
      assert.are.equal("rotated", obj.outcome)
      H.assert_no_secret(out, H.org(org).api_key)
      assert.are.equal(H.org(org).api_key .. "\n", H.read_file(path))
    end)

    it("not rotated and unknown: errors with httpcode and message, no api_key", function()
      local org, key = H.new_org()
      H.faults(org, { { status = 401 } })
      local status, out = run(one(org, { "--json" }), { SLASHID_API_KEY = key })
      assert.are.equal(1, status)
      local obj = cjson.decode(out)
      assert.are.equal("not_rotated", obj.outcome)
      assert.are.equal(401, obj.status)
      assert.are.equal(401, obj.errors[1].httpcode)
      assert.are.equal("string", type(obj.errors[1].message))
      assert.is_nil(obj.api_key)

      H.faults(org, { { status = 503 } })
      status, out = run(one(org, { "--json" }), { SLASHID_API_KEY = key })
      assert.are.equal(2, status)
      obj = cjson.decode(out)
      assert.are.equal("unknown", obj.outcome)
      assert.are.equal(503, obj.status)
      assert.is_nil(obj.api_key)
    end)

    it("a transport failure: status 0, curl_code in the error", function()
      local org, key = H.new_org()
      local status, out = run({ "--org-id", org, "--json", "--base-url",
                                "http://127.0.0.1:" .. H.closed_port() }, { SLASHID_API_KEY = key })
      assert.are.equal(1, status)
      local obj = cjson.decode(out)
      assert.are.equal("not_rotated", obj.outcome)
      assert.are.equal(0, obj.status)
      assert.are.equal(0, obj.errors[1].httpcode)
      assert.are.equal("number", type(obj.errors[1].curl_code))
    end)

    it("exit 3 (saving failed): api_key is in the object so the key is not lost", function()
      local org, key = H.new_org()
      local path = H.tmpname("nowhere") .. "/missing/key"
      local status, out = run(one(org, { "--json", "--save-to", path }), { SLASHID_API_KEY = key })
      assert.are.equal(3, status)
      local obj = cjson.decode(out)
      assert.are.equal("rotated", obj.outcome)
      assert.are.equal(H.org(org).api_key, obj.api_key)
      assert.is_true(#obj.errors >= 1)
    end)
  end)

  describe("exit 64, before any request", function()
    local function usage(args, env, org)
      local status, out, err = run(args, env)
      assert.are.equal(64, status, err)
      assert.are.equal("", out)
      if org then assert.are.equal(0, H.requests(org)) end
      return err
    end

    it("refuses --api-key (and never shows its value)", function()
      local org, key = H.new_org()
      for _, args in ipairs({ one(org, { "--api-key", key }), one(org, { "--api-key=" .. key }) }) do
        local err = usage(args, nil, org)
        assert.matches("%-%-api%-key", err)
        assert.matches("SLASHID_API_KEY", err)
        assert.matches("%-%-api%-key%-file", err)
        assert.matches("ps", err)
        H.assert_no_secret(err, key)
      end
    end)

    it("refuses unknown flags, stray arguments, missing values, repeated flags", function()
      local org, key = H.new_org()
      local env = { SLASHID_API_KEY = key }
      assert.matches("unknown option %-%-bogus", usage(one(org, { "--bogus" }), env, org))
      local err = usage(one(org, { "--apikey=" .. key }), env, org)
      assert.matches("unknown option %-%-apikey", err)
      H.assert_no_secret(err, key)
      err = usage(one(org, { key }), env, org)
      H.assert_no_secret(err, key)
      assert.matches("%-%-timeout needs a value", usage(one(org, { "--timeout" }), env, org))
      assert.matches("more than once", usage(one(org, { "--org-id", org }), env, org))
      assert.matches("takes no value", usage(one(org, { "--json=yes" }), env, org))
    end)

    it("refuses a bad --timeout, --consistency, --base-url, --request-timeout", function()
      local org, key = H.new_org()
      local env = { SLASHID_API_KEY = key }
      for _, t in ipairs({ "0", "121", "1.5", "abc", "" }) do
        assert.matches("timeout", usage(one(org, { "--timeout", t }), env, org))
      end
      assert.matches("consistency", usage(one(org, { "--consistency", "everywhere" }), env, org))
      assert.matches("request_timeout", usage(one(org, { "--request-timeout", "-1" }), env, org))
      assert.matches("base_url", usage({ "--org-id", org, "--base-url", "http://example.com" }, env, org))
      assert.matches("%-%-concurrency", usage(one(org, { "--concurrency", "2" }), env, org))
    end)

    it("needs an organization and a key", function()
      local org, key = H.new_org()
      assert.matches("%-%-org%-id", usage({ "--base-url", H.http_url }, { SLASHID_API_KEY = key }))
      assert.matches("SLASHID_API_KEY", usage(one(org), nil, org))
      assert.matches("api%-key%-file", usage(one(org, { "--api-key-file", H.tmpname("none") }), nil, org))
      local empty = write(H.tmpname("key"), "\n")
      usage(one(org, { "--api-key-file", empty }), nil, org)
      -- a key with a control character: the library's error, key not shown
      local bad = write(H.tmpname("key"), key .. "\0tail\n")
      H.assert_no_secret(usage(one(org, { "--api-key-file", bad }), nil, org), key)
    end)
  end)

  it("--help prints usage on stdout and exits 0", function()
    local status, out, err = run({ "--help" })
    assert.are.equal(0, status)
    assert.matches("^Usage", out)
    for _, flag in ipairs({ "--org-id", "--api-key-file", "--consistency", "--timeout",
                            "--base-url", "--request-timeout", "--ca-file", "--save-to",
                            "--verify", "--json", "--orgs", "--concurrency", "--rate" }) do
      assert.is_truthy(out:find(flag, 1, true), flag)
    end
    assert.are.equal("", err)
  end)
end)

describe("slashid-rotate --orgs", function()
  it("rotates all, prints ORG<TAB>KEY lines on stdout and plain progress lines on stderr", function()
    local path, list = orgs_file(4)
    local status, out, err = run({ "--orgs", path, "--base-url", H.http_url, "--concurrency", "2" })
    assert.are.equal(0, status, err)
    local keys, n = key_lines(out)
    assert.are.equal(4, n)
    for _, o in ipairs(list) do
      assert.are.equal(H.org(o.org_id).api_key, keys[o.org_id])
      no_secrets(o.api_key, out, err, keys[o.org_id])
    end
    -- not a terminal: one plain line per organization, no bar
    for i = 1, 4 do assert.is_truthy(err:find(("[%d/4]"):format(i), 1, true), "progress " .. i) end
    assert.is_nil(err:find("\r", 1, true))
    assert.matches("4 rotated", err)
  end)

  it("--save-to: every rotated org appended as ORG<TAB>KEY, mode 0600, nothing on stdout", function()
    local path, list = orgs_file(6)
    H.faults(list[2].org_id, { { status = 401 } })
    H.faults(list[5].org_id, { { delay = 0.2 } })
    local save = H.mkdir(H.tmpname("save")) .. "/keys.tsv"
    write(save, "earlier-org\tearlier-key", "644")   -- kept; the last line had no newline
    local status, out, err = run({ "--orgs", path, "--base-url", H.http_url, "--save-to", save })
    assert.are.equal(1, status, err)
    assert.are.equal("", out)
    -- an existing file keeps its mode less others' bits (API.md, save_to)
    assert.are.equal("640", H.mode(save))
    local content = H.read_file(save)
    assert.are.equal("earlier-org\tearlier-key\n", content:sub(1, 24))
    local keys, n = key_lines(content:sub(25))
    assert.are.equal(5, n)
    for i, o in ipairs(list) do
      if i == 2 then
        assert.is_nil(keys[o.org_id])
      else
        assert.are.equal(H.org(o.org_id).api_key, keys[o.org_id])
      end
      no_secrets(o.api_key, out, err, keys[o.org_id])
    end
  end)

  it("--save-to that cannot be created: exit 64 before any request", function()
    local path, list = orgs_file(2)
    local status, out, err = run({ "--orgs", path, "--base-url", H.http_url,
                                   "--save-to", H.tmpname("nowhere") .. "/missing/keys" })
    assert.are.equal(64, status, err)
    assert.are.equal("", out)
    for _, o in ipairs(list) do assert.are.equal(0, H.requests(o.org_id)) end
  end)

  it("--save-to that is not a regular file: exit 64 before any request", function()
    local path, list = orgs_file(1)
    local dir = H.mkdir(H.tmpname("save"))
    for _, target in ipairs({ dir, "/dev/null" }) do
      local status, out, err = run({ "--orgs", path, "--base-url", H.http_url, "--save-to", target })
      assert.are.equal(64, status, err)
      assert.matches("regular file", err)
      assert.are.equal("", out)
    end
    assert.are.equal(0, H.requests(list[1].org_id))
  end)

  it("exit status: 2 if any unknown, else 3 if any save/verify failure, else 1, else 0", function()
    -- unknown beats everything
    local path, list = orgs_file(4)
    H.faults(list[1].org_id, { { status = 401 } })
    H.faults(list[2].org_id, { { status = 500, rotate = true } })
    H.faults(list[3].org_id, { { delay = 0 }, { status = 500 } })   -- verify fails
    local status, out, err = run({ "--orgs", path, "--base-url", H.http_url, "--verify" })
    assert.are.equal(2, status, err)
    assert.matches("1 unknown", err)
    local keys = key_lines(out)
    assert.are.equal(H.org(list[3].org_id).api_key, keys[list[3].org_id])
    assert.are.equal(H.org(list[4].org_id).api_key, keys[list[4].org_id])

    -- then a verify failure (3), over a not-rotated one (1); the key of the
    -- verify failure is printed on stdout although it is saved
    path, list = orgs_file(3)
    H.faults(list[1].org_id, { { status = 403 } })
    H.faults(list[2].org_id, { { delay = 0 }, { status = 500 } })
    local save = H.mkdir(H.tmpname("save")) .. "/keys.tsv"
    status, out, err = run({ "--orgs", path, "--base-url", H.http_url, "--verify",
                             "--save-to", save })
    assert.are.equal(3, status, err)
    assert.are.same({ [list[2].org_id] = H.org(list[2].org_id).api_key }, (key_lines(out)))
    local saved, n = key_lines(H.read_file(save))
    assert.are.equal(2, n)
    assert.are.equal(H.org(list[2].org_id).api_key, saved[list[2].org_id])
    assert.are.equal(H.org(list[3].org_id).api_key, saved[list[3].org_id])

    -- then not rotated (1)
    path, list = orgs_file(3)
    H.faults(list[3].org_id, { { status = 401 } })
    status, out, err = run({ "--orgs", path, "--base-url", H.http_url })
    assert.are.equal(1, status, err)
    assert.are.equal(2, select(2, key_lines(out)))
  end)

  it("--json: one object per line, api_key only without --save-to", function()
    local path, list = orgs_file(3)
    H.faults(list[2].org_id, { { status = 401 } })
    local status, out, err = run({ "--orgs", path, "--base-url", H.http_url, "--json",
                                   "--rate", "50", "--concurrency", "3" })
    assert.are.equal(1, status, err)
    local objs = decode_lines(out)
    assert.are.equal(3, #objs)
    local by = {}
    for _, obj in ipairs(objs) do by[obj.org_id] = obj end
    assert.are.same({ org_id = list[1].org_id, outcome = "rotated", status = 200, errors = {},
                      api_key = H.org(list[1].org_id).api_key }, by[list[1].org_id])
    assert.are.equal("not_rotated", by[list[2].org_id].outcome)
    assert.are.equal(401, by[list[2].org_id].status)
    assert.is_nil(by[list[2].org_id].api_key)
    assert.are.equal("rotated", by[list[3].org_id].outcome)

    path, list = orgs_file(2)
    local save = H.mkdir(H.tmpname("save")) .. "/keys.tsv"
    status, out, err = run({ "--orgs", path, "--base-url", H.http_url, "--json",
                             "--save-to", save })
    assert.are.equal(0, status, err)
    objs = decode_lines(out)
    assert.are.equal(2, #objs)
    for _, obj in ipairs(objs) do
      assert.are.equal("rotated", obj.outcome)
      assert.is_nil(obj.api_key)
    end
    assert.are.equal(2, select(2, key_lines(H.read_file(save))))
  end)

  it("exit 64 for a malformed line, a repeated org, bad options, --org-id with --orgs", function()
    local org, key = H.new_org()
    local function usage(content, extra)
      local path = write(H.tmpname("orgs"), content)
      local args = { "--orgs", path, "--base-url", H.http_url }
      for _, a in ipairs(extra or {}) do args[#args + 1] = a end
      local status, out, err = run(args)
      assert.are.equal(64, status, err)
      assert.are.equal("", out)
      assert.are.equal(0, H.requests(org))
      H.assert_no_secret(err, key)
      return err
    end
    local good = org .. "\t" .. key .. "\n"
    assert.matches("line 2", usage("other-org\tother-key\n" .. org .. " " .. key .. "\n"))
    assert.matches("line 3", usage(good .. "# c\n" .. good))
    assert.matches("concurrency", usage(good, { "--concurrency", "0" }))
    assert.matches("rate", usage(good, { "--rate", "0" }))
    assert.matches("timeout", usage(good, { "--timeout", "500" }))
    assert.matches("%-%-org%-id", usage(good, { "--org-id", org }))
    assert.matches("line 1", usage(org .. "\t" .. key .. "\1x\n"))
    assert.matches("orgs", usage(good, { "--orgs", "again" }))
  end)
end)

-- Starts an --orgs batch in the background; returns its pid and a folder
-- holding out, err and (once it ended) rc.
local function spawn(args)
  local dir = H.mkdir(H.tmpname("spawn"))
  local parts = { H.lua, CLI }
  for _, a in ipairs(args) do parts[#parts + 1] = q(a) end
  write(dir .. "/run.sh", ("%s >%s/out 2>%s/err </dev/null &\necho $! >%s/pid.tmp\n" ..
                           "mv %s/pid.tmp %s/pid\nwait $!\necho $? >%s/rc.tmp\nmv %s/rc.tmp %s/rc\n")
    :format(table.concat(parts, " "), dir, dir, dir, dir, dir, dir, dir, dir))
  assert(os.execute("sh " .. dir .. "/run.sh >/dev/null 2>&1 &"))
  local deadline = socket.gettime() + 10
  while not exists(dir .. "/pid") do
    assert(socket.gettime() < deadline, "the command did not start")
    socket.sleep(0.01)
  end
  return tonumber((H.read_file(dir .. "/pid"):gsub("%s+$", ""))), dir
end

local function wait_file(path, seconds)
  local deadline = socket.gettime() + seconds
  while not exists(path) do
    if socket.gettime() > deadline then return false end
    socket.sleep(0.02)
  end
  return true
end

local function count_lines(path)
  if not exists(path) then return 0 end
  return #lines_of(H.read_file(path))
end

describe("slashid-rotate --orgs interrupted", function()
  -- 20 orgs: 6 answered at once, 4 after 0.5 s, 10 after 2.5..3.4 s. The
  -- signal comes once the 10 quick answers are in the file (about 0.6 s).
  local function setup()
    local path, list = orgs_file(20)
    for i, o in ipairs(list) do
      if i > 10 then
        H.faults(o.org_id, { { delay = 2.5 + (i - 10) / 10 } })
      elseif i > 6 then
        H.faults(o.org_id, { { delay = 0.5 } })
      end
    end
    return path, list
  end

  local function interrupt(signal)
    local path, list = setup()
    local save = H.mkdir(H.tmpname("save")) .. "/keys.tsv"
    local pid, dir = spawn({ "--orgs", path, "--base-url", H.http_url, "--concurrency", "20",
                             "--save-to", save })
    local deadline = socket.gettime() + 2.3
    while count_lines(save) < 10 and socket.gettime() < deadline do socket.sleep(0.02) end
    assert(os.execute("kill -" .. signal .. " " .. pid))
    -- keys the server had issued when the signal was sent
    local issued = {}
    for _, o in ipairs(list) do
      if H.org(o.org_id).rotations == 1 then issued[#issued + 1] = o.org_id end
    end
    assert.is_true(wait_file(dir .. "/rc", 10), "the command did not end")
    local rc = tonumber((H.read_file(dir .. "/rc"):gsub("%s+$", "")))
    local saved, n = key_lines(H.read_file(save))
    -- every line holds the org's current key (each org is rotated once)
    for org, key in pairs(saved) do assert.are.equal(H.org(org).api_key, key) end
    -- every key issued before the signal is in the file
    for _, org in ipairs(issued) do assert.is_truthy(saved[org], "issued key missing") end
    -- in particular every quick one
    for i = 1, 10 do assert.is_truthy(saved[list[i].org_id], "quick org " .. i .. " missing") end
    local out, err = H.read_file(dir .. "/out"), H.read_file(dir .. "/err")
    assert.are.equal("", out)
    for _, o in ipairs(list) do no_secrets(o.api_key, out, err, saved[o.org_id]) end
    return rc, #issued, n, saved, list, err
  end

  it("by SIGTERM: every key issued before the signal is in the --save-to file", function()
    local rc, issued, n = interrupt("TERM")
    assert.are.equal(143, rc)          -- killed by the signal
    assert.are.equal(10, issued)
    assert.are.equal(issued, n)
  end)

  it("by SIGINT: keys in the file, exit 2, unfinished organizations named", function()
    local rc, issued, n, saved, list, err = interrupt("INT")
    if _VERSION == "Lua 5.1" and not rawget(_G, "jit") then
      -- PUC 5.1 cannot yield across the batch's pcall: the interrupt waits
      -- for the end of the batch, every key is saved
      assert.are.equal(0, rc, err)
      assert.are.equal(20, n)
      return
    end
    assert.are.equal(2, rc, err)
    assert.are.equal(10, issued)
    assert.is_true(n >= issued and n < 20, n .. " lines")
    assert.matches("interrupted", err)
    -- every organization without a line is named as not finished
    for _, o in ipairs(list) do
      if not saved[o.org_id] then
        assert.is_truthy(err:find("  " .. o.org_id, 1, true), "unfinished org not named")
      end
    end
  end)
end)
