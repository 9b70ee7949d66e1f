-- slashid-rotate tried the way operators break it (issue 9): real
-- processes, real signals (kill -INT / -TERM on the command's pid), closed
-- pipes, a full disk (a 16 KiB tmpfs in a private mount namespace), a key
-- file another user may append to but not read, a writer appending beside
-- it, and 20,000 lines through --orgs. Every wait polls for a condition
-- (the emulator's request log, a file's lines, the process's end): no
-- fixed sleep decides a result on a loaded machine. A key that cannot be
-- delivered stays in the run's journal (kept, named on stderr); under
-- --no-journal it goes to a rescue file: each broken output is tried both
-- ways.
local H = require "helpers"
local q, write, read = H.q, H.write, H.read_if_any
local socket = require "socket"

local CLI = "bin/slashid-rotate"




local exists = H.exists
local sh = H.sh
local lines_of = H.lines_of
local key_lines = H.key_lines

local wait_for = H.wait_for

-- The command line: env (name -> value), args (quoted one by one).
local function command(args, env)
  local parts = {}
  for name, value in pairs(env or {}) do parts[#parts + 1] = name .. "=" .. q(value) end
  parts[#parts + 1] = H.lua
  parts[#parts + 1] = CLI
  for _, a in ipairs(args) do parts[#parts + 1] = q(a) end
  return table.concat(parts, " ")
end

-- Runs the command in the background. opts: env, stdin (a path; default
-- /dev/null). Returns H.spawn's job.
local function spawn(args, opts)
  opts = opts or {}
  return H.spawn(command(args, opts.env), opts.stdin)
end

-- Runs a shell command line (the command inside it); returns the shell's
-- status and the files out and err of a fresh folder.
local function shell(line)
  local dir = H.mkdir(H.tmpname("sh"))
  local p = io.popen(("(%s) 2>%s/err; echo $?"):format((line:gsub("@DIR@", dir)), dir))
  local status = tonumber(p:read("*a"):match("(%d+)%s*$"))
  p:close()
  return status, dir
end

-- n fresh orgs (delays[i] seconds before org i is answered, when given),
-- written as an --orgs file; returns path, list of { org_id, api_key }.
local function orgs_file(n, delays)
  local list, text = {}, {}
  for i = 1, n do
    local org, key = H.new_org()
    if delays and delays[i] and delays[i] > 0 then H.faults(org, { { delay = delays[i] } }) end
    list[i] = { org_id = org, api_key = key }
    text[#text + 1] = org .. "\t" .. key .. "\n"
  end
  return write(H.tmpname("orgs") .. ".tsv", table.concat(text)), list
end

-- Runs the command in the foreground; returns status, stdout, stderr.
local function command_run(args, env)
  local dir = H.mkdir(H.tmpname("run"))
  local p = io.popen(("%s >%s/out 2>%s/err </dev/null; echo $?"):format(command(args, env), dir, dir))
  local status = tonumber(p:read("*a"):match("(%d+)%s*$"))
  p:close()
  return status, read(dir .. "/out") or "", read(dir .. "/err") or ""
end

local function no_secrets(list, ...)
  local text = table.concat({ ... }, "\n")
  for _, o in ipairs(list) do H.assert_no_secret(text, o.api_key) end
end

-- Every line of a key file names an org and that org's current key.
local function assert_current(saved)
  for org, key in pairs(saved) do H.assert_key_equal(H.org(org).api_key, key) end
end

local function requested(o) return H.requests(o.org_id) > 0 end

describe("slashid-rotate interrupted", function()
  it("the issue's case: answers after 0, 2 and 6 s, SIGINT at ~1 s: all three keys saved, exit 0", function()
    local path, list = orgs_file(3, { 0, 2, 6 })
    local save = H.mkdir(H.tmpname("save")) .. "/F"
    local job = spawn({ "--orgs", path, "--base-url", H.http_url, "--concurrency", "3",
                        "--save-to", save })
    -- all three requests are in flight and the quick key is saved
    wait_for("three requests", 10, function()
      return requested(list[1]) and requested(list[2]) and requested(list[3])
    end)
    wait_for("the first key", 10, function() return #lines_of(read(save)) >= 1 end)
    job.kill("INT")
    local status, out, err = job.wait(30)
    assert.are.equal(0, status, err)
    local saved, n = key_lines(read(save))
    assert.are.equal(3, n)
    assert_current(saved)
    for _, o in ipairs(list) do assert.are.equal(1, H.org(o.org_id).rotations) end
    assert.matches("interrupted", err)
    assert.is_nil(err:find("unknown:", 1, true))
    assert.are.equal("", out)
    no_secrets(list, out, err)
  end)

  local function first_signal(sig)
    -- 2 slow organizations in flight at --concurrency 2, 4 waiting behind
    local path, list = orgs_file(6, { 1.5, 1.5 })
    local save = H.mkdir(H.tmpname("save")) .. "/F"
    local job = spawn({ "--orgs", path, "--base-url", H.http_url, "--concurrency", "2",
                        "--save-to", save, "--json" })
    wait_for("two requests", 10, function() return requested(list[1]) and requested(list[2]) end)
    job.kill(sig)
    local status, out, err = job.wait(30)
    -- exit 1: the never-started ones count as not rotated
    assert.are.equal(1, status, err)
    local saved, n = key_lines(read(save))
    assert.are.equal(2, n)
    assert_current(saved)
    assert.is_truthy(saved[list[1].org_id] and saved[list[2].org_id])
    -- nothing was sent for the others; each is listed and has its JSON line
    local objs = {}
    for _, line in ipairs(lines_of(out)) do
      local obj = require("cjson").decode(line)
      objs[obj.org_id] = obj
    end
    for i = 3, 6 do
      local o = list[i]
      assert.are.equal(0, H.requests(o.org_id))
      assert.is_truthy(err:find("  " .. o.org_id, 1, true), "never-started org not listed")
      assert.are.equal("not_rotated", objs[o.org_id].outcome)
    end
    assert.are.equal("rotated", objs[list[1].org_id].outcome)
    assert.matches("4 organizations never started", err)
    no_secrets(list, out, err)
    return err
  end

  it("a first SIGINT starts nothing more; those in flight finish and are saved; the rest listed", function()
    first_signal("INT")
  end)

  it("a first SIGTERM does the same (a Kubernetes Job's stop)", function()
    first_signal("TERM")
  end)

  it("a second SIGINT abandons the requests in flight at once: listed unknown, exit 2", function()
    -- 1 answered at once, then 2 and 3 in flight (8 s) at --concurrency 2,
    -- 4 waiting behind them
    local path, list = orgs_file(4, { 0, 8, 8 })
    local save = H.mkdir(H.tmpname("save")) .. "/F"
    local job = spawn({ "--orgs", path, "--base-url", H.http_url, "--concurrency", "2",
                        "--save-to", save })
    wait_for("three requests", 10, function()
      return requested(list[1]) and requested(list[2]) and requested(list[3])
    end)
    wait_for("the first key", 10, function() return #lines_of(read(save)) >= 1 end)
    job.kill("INT")
    wait_for("the notice", 10, function() return job.err():find("interrupted", 1, true) end)
    local t0 = socket.gettime()
    job.kill("INT")
    local status, out, err = job.wait(30)
    local took = socket.gettime() - t0
    assert.are.equal(2, status, err)
    assert.is_true(took < 4, "the abort took " .. took .. " s (answers come at 8 s)")
    local saved, n = key_lines(read(save))
    assert.are.equal(1, n)
    H.assert_key_equal(H.org(list[1].org_id).api_key, saved[list[1].org_id])
    assert.matches("unknown", err)
    for i = 2, 3 do
      assert.is_truthy(err:find("  " .. list[i].org_id, 1, true), "in-flight org not listed")
    end
    -- the fourth was never started: listed too, and never sent
    assert.are.equal(0, H.requests(list[4].org_id))
    assert.is_truthy(err:find("  " .. list[4].org_id, 1, true))
    no_secrets(list, out, err)
  end)

  it("a second SIGINT while a rotated key is being verified keeps that key (--orgs --verify)", function()
    -- the rotation is answered at once; the check of the new key takes 8 s
    local path, list = orgs_file(1)
    local org = list[1].org_id
    H.faults(org, { { delay = 0 }, { delay = 8 } })
    local save = H.mkdir(H.tmpname("save")) .. "/F"
    local job = spawn({ "--orgs", path, "--base-url", H.http_url, "--verify", "--save-to", save })
    wait_for("the verification", 10, function() return H.requests(org) >= 2 end)
    job.kill("INT")
    wait_for("the notice", 10, function() return job.err():find("interrupted", 1, true) end)
    job.kill("INT")
    local status, out, err = job.wait(20)
    assert.are.equal(1, H.org(org).rotations)
    -- the new key exists somewhere: in the file, or on stdout
    local saved = key_lines(read(save))
    local printed = key_lines(out)
    assert.is_truthy(saved[org] or printed[org], "the issued key was lost")
    H.assert_key_equal(H.org(org).api_key, saved[org] or printed[org])
    assert.are.equal(3, status, err)   -- rotated, verification not done
  end)

  it("one organization: a second SIGINT during --verify keeps the key (stdout, exit 3)", function()
    local org, key = H.new_org()
    H.faults(org, { { delay = 0 }, { delay = 8 } })
    local job = spawn({ "--org-id", org, "--base-url", H.http_url, "--verify" },
                      { env = { SLASHID_API_KEY = key } })
    wait_for("the verification", 10, function() return H.requests(org) >= 2 end)
    job.kill("INT")
    wait_for("the notice", 10, function() return job.err():find("interrupted", 1, true) end)
    job.kill("INT")
    local status, out, err = job.wait(20)
    assert.are.equal(3, status, err)
    H.assert_key_equal(H.org(org).api_key .. "\n", out)
    H.assert_no_secret(err, key)
    H.assert_no_secret(err, H.org(org).api_key)
  end)

  it("one organization: a first SIGINT lets the rotation finish (key on stdout, exit 0)", function()
    local org, key = H.new_org()
    H.faults(org, { { delay = 1.5 } })
    local job = spawn({ "--org-id", org, "--base-url", H.http_url }, { env = { SLASHID_API_KEY = key } })
    wait_for("the request", 10, function() return H.requests(org) > 0 end)
    job.kill("INT")
    local status, out, err = job.wait(20)
    assert.are.equal(0, status, err)
    H.assert_key_equal(H.org(org).api_key .. "\n", out)
    assert.matches("interrupted", err)
    H.assert_no_secret(err, key)
    H.assert_no_secret(err, H.org(org).api_key)
  end)

  it("one organization: a second SIGINT abandons it at once (unknown, exit 2)", function()
    local org, key = H.new_org()
    H.faults(org, { { delay = 8 } })
    local job = spawn({ "--org-id", org, "--base-url", H.http_url }, { env = { SLASHID_API_KEY = key } })
    wait_for("the request", 10, function() return H.requests(org) > 0 end)
    job.kill("INT")
    wait_for("the notice", 10, function() return job.err():find("interrupted", 1, true) end)
    local t0 = socket.gettime()
    job.kill("INT")
    local status, out, err = job.wait(20)
    assert.are.equal(2, status, err)
    assert.is_true(socket.gettime() - t0 < 4)
    assert.are.equal("", out)
    assert.matches("unknown", err)
    assert.matches("%-%-check", err)
    H.assert_no_secret(err, key)
  end)

  it("a signal while --api-key-file - waits on standard input: nothing sent, exit 1", function()
    local org = H.new_org()
    local fifo = H.tmpname("fifo")
    assert(sh("mkfifo " .. q(fifo)))
    local job = spawn({ "--org-id", org, "--base-url", H.http_url, "--api-key-file", "-" },
                      { stdin = fifo })
    local writer = assert(io.open(fifo, "w"))   -- held open, nothing written
    -- waiting in poll(2) (or read(2)) once the signal handlers are in
    wait_for("the command to wait for input", 10, function()
      local status = read("/proc/" .. job.pid .. "/status") or ""
      local caught = tonumber(status:match("SigCgt:%s*(%x+)") or "0", 16) or 0
      local wchan = read("/proc/" .. job.pid .. "/wchan") or ""
      if wchan == "" or wchan == "0" then   -- a kernel that hides it: sleeping will do
        wchan = ((read("/proc/" .. job.pid .. "/stat") or ""):match("^%d+ %b() (%a)") == "S") and "poll" or ""
      end
      return caught % 4 >= 2 and (wchan:find("poll") or wchan:find("pipe")) ~= nil
    end)
    job.kill("TERM")
    local status, _, err = job.wait(20)
    writer:close()
    assert.are.equal(1, status, err)
    assert.matches("nothing was sent", err)
    assert.are.equal(0, H.requests(org))
  end)

  it("--orgs - from a producer that stalls: a SIGINT ends the read, nothing more starts", function()
    local list = {}
    for i = 1, 2 do
      local org, key = H.new_org()
      list[i] = { org_id = org, api_key = key }
    end
    local fifo = H.tmpname("fifo")
    assert(sh("mkfifo " .. q(fifo)))
    local save = H.mkdir(H.tmpname("save")) .. "/F"
    local job = spawn({ "--orgs", "-", "--base-url", H.http_url, "--save-to", save },
                      { stdin = fifo })
    local writer = assert(io.open(fifo, "w"))
    writer:setvbuf("no")
    -- read as the batch goes: the first line is rotated before the second exists
    writer:write(list[1].org_id, "\t", list[1].api_key, "\n")
    wait_for("the first key", 10, function() return #lines_of(read(save)) == 1 end)
    job.kill("INT")
    -- it reads on to list what it did not start; a second signal skips that
    wait_for("the listing notice", 10, function() return job.err():find("reading the rest", 1, true) end)
    job.kill("INT")
    local status, out, err = job.wait(20)
    writer:close()
    -- the one started was rotated; the input left unread may name
    -- organizations, which count as not rotated (review F6)
    assert.are.equal(1, status, err)
    H.assert_key_equal(H.org(list[1].org_id).api_key, (key_lines(read(save)))[list[1].org_id])
    assert.matches("was not read", err)
    assert.are.equal(0, H.requests(list[2].org_id))
    no_secrets(list, out, err)
  end)
end)

describe("slashid-rotate never loses a key to a broken output", function()
  local rescue_files = H.rescue_files

  local function assert_rescued(tmpdir, err, expected)
    local files = rescue_files(tmpdir)
    assert.are.equal(1, #files, "one rescue file expected")
    assert.is_truthy(err:find(files[1], 1, true), "the rescue file is not named on stderr")
    assert.are.equal("600", H.mode(files[1]))
    local saved, n = key_lines(read(files[1]))
    assert.are.equal(#expected, n)
    for _, org in ipairs(expected) do
      H.assert_key_equal(H.org(org).api_key, saved[org])
      H.assert_no_secret(err, saved[org])
    end
  end

  -- A run whose keys could not be delivered, with its journals in
  -- `journals` and TMPDIR `tmpdir`: no rescue file, the journal kept and
  -- named on stderr, holding each of `orgs` rotated with the key the
  -- server holds, not delivered; no key on stderr. Returns its path.
  local function assert_kept_in_journal(journals, tmpdir, err, orgs)
    assert.are.equal(0, #rescue_files(tmpdir), "no rescue file expected")
    local path = H.assert_journal_kept(journals, err)
    H.assert_journal_holds(path, orgs, false)
    for _, org in ipairs(orgs) do H.assert_no_secret(err, H.org(org).api_key) end
    return path
  end

  it("stdout on /dev/null or /dev/zero without --save-to, under --no-journal: the key is rescued, exit 3 (not lost, exit 0)", function()
    for _, case in ipairs({ { "/dev/null", false }, { "/dev/null", true }, { "/dev/zero", false } }) do
      local device, json = case[1], case[2]
      local org, key = H.new_org()
      local tmpdir = H.mkdir(H.tmpname("tmpdir"))
      local args = { "--org-id", org, "--base-url", H.http_url, "--no-journal" }
      if json then args[#args + 1] = "--json" end
      local status, dir = shell(command(args, { SLASHID_API_KEY = key, TMPDIR = tmpdir }) ..
                                " >" .. device)
      local err = read(dir .. "/err")
      assert.are.equal(3, status, err)
      assert.matches("/dev/null", err)
      assert_rescued(tmpdir, err, { org })
      H.assert_no_secret(err, key)
    end
  end)

  it("stdout on /dev/null or /dev/zero without --save-to: the key stays in the journal (kept, named), nothing rescued, exit 3", function()
    for _, case in ipairs({ { "/dev/null", false }, { "/dev/null", true }, { "/dev/zero", false } }) do
      local device, json = case[1], case[2]
      local org, key = H.new_org()
      local tmpdir = H.mkdir(H.tmpname("tmpdir"))
      local journals = H.journal_dir()
      local args = { "--org-id", org, "--base-url", H.http_url }
      if json then args[#args + 1] = "--json" end
      local status, dir = shell(command(args, { SLASHID_API_KEY = key, TMPDIR = tmpdir,
                                                SLASHID_JOURNAL_DIR = journals }) .. " >" .. device)
      local err = read(dir .. "/err")
      assert.are.equal(3, status, err)
      assert.matches("/dev/null", err)
      assert.are.equal(1, H.org(org).rotations)
      assert_kept_in_journal(journals, tmpdir, err, { org })
      H.assert_no_secret(err, key)
    end
  end)

  it("stdout on /dev/null with --save-to: the key is saved, nothing rescued, exit 0", function()
    local org, key = H.new_org()
    local tmpdir = H.mkdir(H.tmpname("tmpdir"))
    local save = tmpdir .. "/key"
    local status, dir = shell(command({ "--org-id", org, "--base-url", H.http_url, "--save-to", save },
                                      { SLASHID_API_KEY = key, TMPDIR = tmpdir }) .. " >/dev/null")
    assert.are.equal(0, status, read(dir .. "/err"))
    H.assert_key_equal(H.org(org).api_key, (read(save):gsub("%s+$", "")))
    assert.are.equal(0, #rescue_files(tmpdir))
  end)

  -- `journal`: keep one (in a fresh folder, returned) or run --no-journal.
  local function ulimit_f(journal)
    local org, key = H.new_org()
    local tmpdir = H.mkdir(H.tmpname("tmpdir"))
    local journals = journal and H.journal_dir() or nil
    local big = write(tmpdir .. "/out.log", ("x"):rep(4096))   -- over the 2 KiB limit already
    local args = { "--org-id", org, "--base-url", H.http_url }
    if not journal then args[#args + 1] = "--no-journal" end
    local status, dir = shell(("ulimit -f 2; %s >>%s"):format(
      command(args, { SLASHID_API_KEY = key, TMPDIR = tmpdir, SLASHID_JOURNAL_DIR = journals }),
      q(big)))
    local err = read(dir .. "/err")
    assert.are.equal(3, status, err)
    assert.are.equal(1, H.org(org).rotations)
    H.assert_no_secret(err, key)
    H.assert_no_secret(read(big), H.org(org).api_key)
    return org, tmpdir, err, journals
  end

  it("a file size limit (ulimit -f) under stdout, under --no-journal: no death by SIGXFSZ; the key is rescued, exit 3", function()
    local org, tmpdir, err = ulimit_f(false)
    assert_rescued(tmpdir, err, { org })
  end)

  it("a file size limit (ulimit -f) under stdout: no death by SIGXFSZ; the key stays in the journal, exit 3", function()
    local org, tmpdir, err, journals = ulimit_f(true)
    assert_kept_in_journal(journals, tmpdir, err, { org })
  end)

  local function sigpipe(journal)
    local org, key = H.new_org()
    H.faults(org, { { delay = 0.5 } })   -- `true` is long gone when the key comes
    local tmpdir = H.mkdir(H.tmpname("tmpdir"))
    local journals = journal and H.journal_dir() or nil
    local args = { "--org-id", org, "--base-url", H.http_url }
    if not journal then args[#args + 1] = "--no-journal" end
    local status, dir = shell(("(%s; echo $? >@DIR@/rc) | true; exit $(cat @DIR@/rc)"):format(
      command(args, { SLASHID_API_KEY = key, TMPDIR = tmpdir, SLASHID_JOURNAL_DIR = journals })))
    local err = read(dir .. "/err")
    assert.are.equal(3, status, err)
    assert.are.equal(1, H.org(org).rotations)
    assert.matches("Broken pipe", err)
    H.assert_no_secret(err, key)
    return org, tmpdir, err, journals
  end

  it("SIGPIPE (`| true`) under --no-journal: the server rotated, the key is in a 0600 rescue file, exit 3", function()
    local org, tmpdir, err = sigpipe(false)
    assert_rescued(tmpdir, err, { org })
  end)

  it("SIGPIPE (`| true`): the server rotated, the key stays in the journal (kept, named), exit 3", function()
    local org, tmpdir, err, journals = sigpipe(true)
    assert_kept_in_journal(journals, tmpdir, err, { org })
  end)

  it("stdout closed (>&-) under --no-journal: never written to whatever takes descriptor 1; rescued, exit 3", function()
    for _, json in ipairs({ false, true }) do
      local org, key = H.new_org()
      local tmpdir = H.mkdir(H.tmpname("tmpdir"))
      local args = { "--org-id", org, "--base-url", H.http_url, "--no-journal" }
      if json then args[#args + 1] = "--json" end
      local status, dir = shell(("SLASHID_API_KEY=%s TMPDIR=%s %s >&-"):format(
                                q(key), q(tmpdir), command(args)))
      local err = read(dir .. "/err")
      assert.are.equal(3, status, err)
      assert_rescued(tmpdir, err, { org })
      assert.matches("closed", err)
    end
  end)

  it("stdout closed (>&-): never written to whatever takes descriptor 1 (the journal included); the key stays in the journal, exit 3", function()
    for _, json in ipairs({ false, true }) do
      local org, key = H.new_org()
      local tmpdir = H.mkdir(H.tmpname("tmpdir"))
      local journals = H.journal_dir()
      local args = { "--org-id", org, "--base-url", H.http_url }
      if json then args[#args + 1] = "--json" end
      local status, dir = shell(("SLASHID_API_KEY=%s TMPDIR=%s SLASHID_JOURNAL_DIR=%s %s >&-"):format(
                                q(key), q(tmpdir), q(journals), command(args)))
      local err = read(dir .. "/err")
      assert.are.equal(3, status, err)
      assert.matches("closed", err)
      -- no stray line in it: every line's checksum holds (assert_journal_holds)
      assert_kept_in_journal(journals, tmpdir, err, { org })
      H.assert_no_secret(err, key)
    end
  end)

  local function orgs_to_broken_pipe(journal)
    local path, list = orgs_file(5, { 0.3, 0.3, 0.3, 0.3, 0.3 })
    local tmpdir = H.mkdir(H.tmpname("tmpdir"))
    local journals = journal and H.journal_dir() or nil
    local args = { "--orgs", path, "--base-url", H.http_url }
    if not journal then args[#args + 1] = "--no-journal" end
    local status, dir = shell(("(%s; echo $? >@DIR@/rc) | true; exit $(cat @DIR@/rc)")
      :format(command(args, { TMPDIR = tmpdir, SLASHID_JOURNAL_DIR = journals })))
    local err = read(dir .. "/err")
    assert.are.equal(3, status, err)
    local orgs = {}
    for i, o in ipairs(list) do orgs[i] = o.org_id end
    no_secrets(list, err)
    return orgs, tmpdir, err, journals
  end

  it("--orgs to a broken pipe under --no-journal: every rotated key in the rescue file, exit 3", function()
    local orgs, tmpdir, err = orgs_to_broken_pipe(false)
    assert_rescued(tmpdir, err, orgs)
  end)

  it("--orgs to a broken pipe: every rotated key stays in the journal (kept, named), exit 3", function()
    local orgs, tmpdir, err, journals = orgs_to_broken_pipe(true)
    assert_kept_in_journal(journals, tmpdir, err, orgs)
  end)

  -- A 16 KiB tmpfs mounted in a private mount namespace (it disappears
  -- with the command); `fill` KiB of it taken before the command runs.
  local function on_small_disk(fill, line)
    local mnt = H.mkdir(H.tmpname("mnt"))
    local status, dir = shell(("unshare -m sh -c %s"):format(q(
      ("mount -t tmpfs -o size=16k tmpfs %s || exit 99; " ..
       "head -c %d /dev/zero >%s/fill 2>/dev/null; %s; echo $? >@DIR@/rc; " ..
       "cp -p %s/keys @DIR@/keys 2>/dev/null; exit 0"):format(q(mnt), fill * 1024, q(mnt),
       line:gsub("@MNT@", mnt), q(mnt)))))
    if status == 99 or not exists(dir .. "/rc") then return nil end
    return tonumber((read(dir .. "/rc"):gsub("%s+$", ""))), dir
  end

  local function can_mount()
    local id = io.popen("id -u"):read("*l")
    return id == "0" and sh("command -v unshare >/dev/null")
  end

  it("a full disk under --save-to (one organization), under --no-journal: the key on stdout and in a rescue file, exit 3", function()
    if not can_mount() then
      pending("needs root and unshare(1) to mount a small tmpfs in a private namespace")
      return
    end
    local org, key = H.new_org()
    local tmpdir = H.mkdir(H.tmpname("tmpdir"))
    local status, dir = on_small_disk(16, ("SLASHID_API_KEY=%s TMPDIR=%s %s >@DIR@/out"):format(
      q(key), q(tmpdir), command({ "--org-id", org, "--base-url", H.http_url, "--save-to", "@MNT@/keys",
                                   "--no-journal" })))
    if not status then pending("mount -t tmpfs is not allowed here") return end
    local err = read(dir .. "/err")
    assert.are.equal(3, status, err)
    local new = H.org(org).api_key
    H.assert_key_equal(new .. "\n", read(dir .. "/out"))
    assert_rescued(tmpdir, err, { org })
    assert.matches("No space left", err)
  end)

  it("a full disk under --save-to (one organization): the key stays in the journal, not printed, exit 3", function()
    if not can_mount() then
      pending("needs root and unshare(1) to mount a small tmpfs in a private namespace")
      return
    end
    local org, key = H.new_org()
    local tmpdir = H.mkdir(H.tmpname("tmpdir"))
    local journals = H.journal_dir()   -- not on the full disk
    local status, dir = on_small_disk(16, ("SLASHID_API_KEY=%s TMPDIR=%s SLASHID_JOURNAL_DIR=%s %s >@DIR@/out")
      :format(q(key), q(tmpdir), q(journals),
              command({ "--org-id", org, "--base-url", H.http_url, "--save-to", "@MNT@/keys" })))
    if not status then pending("mount -t tmpfs is not allowed here") return end
    local err = read(dir .. "/err")
    assert.are.equal(3, status, err)
    assert.are.equal(1, H.org(org).rotations)
    assert.are.equal("", read(dir .. "/out"))
    assert.matches("No space left", err)
    assert_kept_in_journal(journals, tmpdir, err, { org })
    H.assert_no_secret(err, key)
  end)

  it("a disk filling up under --orgs --save-to: each key saved, or kept in the journal (not printed); exit 3", function()
    if not can_mount() then
      pending("needs root and unshare(1) to mount a small tmpfs in a private namespace")
      return
    end
    local n = 70   -- about 85 bytes a line: the one page left holds ~48
    local path, list = orgs_file(n)
    local tmpdir = H.mkdir(H.tmpname("tmpdir"))
    local journals = H.journal_dir()   -- not on the full disk
    local status, dir = on_small_disk(12, ("TMPDIR=%s SLASHID_JOURNAL_DIR=%s %s >@DIR@/out"):format(
      q(tmpdir), q(journals), command({ "--orgs", path, "--base-url", H.http_url,
                                        "--save-to", "@MNT@/keys", "--concurrency", "4" })))
    if not status then pending("mount -t tmpfs is not allowed here") return end
    local err = read(dir .. "/err")
    assert.are.equal(3, status, err)
    local saved, ns = key_lines(read(dir .. "/keys"))     -- whole lines only
    assert.is_true(ns > 10 and ns < n, ns .. " lines saved")
    assert.are.equal("", read(dir .. "/out"))
    assert.are.equal(0, #rescue_files(tmpdir), "no rescue file expected")
    local journal = H.assert_journal_kept(journals, err)
    local delivered, undelivered = {}, {}
    for _, o in ipairs(list) do
      if saved[o.org_id] then
        H.assert_key_equal(H.org(o.org_id).api_key, saved[o.org_id])
        delivered[#delivered + 1] = o.org_id
      else
        undelivered[#undelivered + 1] = o.org_id
      end
    end
    H.assert_journal_holds(journal, delivered, true)
    H.assert_journal_holds(journal, undelivered, false)
    no_secrets(list, err)
    for _, o in ipairs(list) do H.assert_no_secret(err, H.org(o.org_id).api_key) end
  end)

  it("a disk filling up under --orgs --save-to, under --no-journal: each key saved, or on stdout and rescued; exit 3", function()
    if not can_mount() then
      pending("needs root and unshare(1) to mount a small tmpfs in a private namespace")
      return
    end
    local n = 70   -- about 85 bytes a line: the one page left holds ~48
    local path, list = orgs_file(n)
    local tmpdir = H.mkdir(H.tmpname("tmpdir"))
    local status, dir = on_small_disk(12, ("TMPDIR=%s %s >@DIR@/out"):format(q(tmpdir),
      command({ "--orgs", path, "--base-url", H.http_url, "--save-to", "@MNT@/keys",
                "--concurrency", "4", "--no-journal" })))
    if not status then pending("mount -t tmpfs is not allowed here") return end
    local err = read(dir .. "/err")
    assert.are.equal(3, status, err)
    local saved, ns = key_lines(read(dir .. "/keys"))     -- whole lines only
    local printed, np = key_lines(read(dir .. "/out"))
    local files = rescue_files(tmpdir)
    assert.are.equal(1, #files)
    local rescued, nr = key_lines(read(files[1]))
    assert.is_true(ns > 10 and ns < n, ns .. " lines saved")
    assert.are.equal(n - ns, np)
    assert.are.equal(n - ns, nr)
    for _, o in ipairs(list) do
      local current = H.org(o.org_id).api_key
      if saved[o.org_id] then
        H.assert_key_equal(current, saved[o.org_id])
      else
        H.assert_key_equal(current, printed[o.org_id])
        H.assert_key_equal(current, rescued[o.org_id])
      end
    end
    no_secrets(list, err)
  end)
end)

describe("slashid-rotate --orgs --save-to appends", function()
  it("as another user, to a file it may write but not read: earlier lines kept", function()
    if io.popen("id -u"):read("*l") ~= "0" or not sh("command -v setpriv >/dev/null") then
      pending("needs root and setpriv(1) to run the command as nobody")
      return
    end
    -- a folder nobody owns (so it could replace the file), the file root's,
    -- writable by nobody's group, unreadable by it
    local dir = "/tmp/slashid-cli-" .. tostring(os.time()) .. "-" .. math.random(1e6)
    -- (helpers run without a sanitizer runtime a check-asan run preloads)
    local plain = "env -u LD_PRELOAD "
    assert(sh(plain .. "mkdir " .. q(dir) .. " && " .. plain .. "chown nobody:nogroup " .. q(dir) ..
              " && " .. plain .. "chmod 0700 " .. q(dir)))
    -- its journals in a folder of its own (the specs' is root's)
    local journals = H.journal_dir("nobody")
    local ok, err = pcall(function()
      local path, list = orgs_file(3)
      local orgs = dir .. "/orgs.tsv"
      assert(sh(("%scp %s %s && %schown nobody %s"):format(plain, q(path), q(orgs), plain, q(orgs))))
      -- the last line left unfinished (a writer that died mid-line): the
      -- command cannot read it, so its first line starts with a newline
      local save = write(dir .. "/keys.tsv", "earlier-org\tearlier-key\nunfinished-li")
      assert(sh(plain .. "chmod 0620 " .. q(save) .. " && " .. plain .. "chown root:nogroup " .. q(save)))
      local status, d = shell(("SLASHID_JOURNAL_DIR=%s setpriv --reuid=nobody --regid=nogroup " ..
                               "--clear-groups %s >@DIR@/out")
        :format(q(journals), command({ "--orgs", orgs, "--base-url", H.http_url, "--save-to", save })))
      local e = read(d .. "/err")
      assert.are.equal(0, status, e)
      local content = read(save)
      local earlier = "earlier-org\tearlier-key\nunfinished-li\n"
      assert.are.equal(earlier, content:sub(1, #earlier))
      -- one newline before the first key line only (the command knows
      -- where its own lines end)
      local saved, n = key_lines(content:sub(#earlier + 1))
      assert.are.equal(3, n)
      assert_current(saved)
      assert.are.equal("620", H.mode(save))
      assert.are.equal("root", io.popen("stat -c %U " .. q(save)):read("*l"))
      -- every key saved: the journal was removed
      assert.are.same({}, H.ls(journals))
    end)
    sh(plain .. "rm -rf " .. q(dir) .. " " .. q(journals))
    assert(ok, err)
  end)

  it("in place: same file (a hard link sees the lines), a writer's lines beside ours survive", function()
    local path, list = orgs_file(4, { 0.8, 0.8, 0.8, 0.8 })
    local dir = H.mkdir(H.tmpname("save"))
    local save = write(dir .. "/keys.tsv", "# earlier\n", "0600")
    assert(sh(("ln %s %s/hardlink"):format(q(save), q(dir))))
    local inode = io.popen("stat -c %i " .. q(save)):read("*l")
    local job = spawn({ "--orgs", path, "--base-url", H.http_url, "--concurrency", "4",
                        "--save-to", save })
    wait_for("the requests", 10, function()
      for _, o in ipairs(list) do if not requested(o) then return false end end
      return true
    end)
    -- another writer appends while the batch runs
    local f = assert(io.open(save, "ab"))
    f:write("other-org\tother-key\n")
    f:close()
    local status, _, err = job.wait(20)
    assert.are.equal(0, status, err)
    assert.are.equal(inode, io.popen("stat -c %i " .. q(save)):read("*l"))
    local content = read(dir .. "/hardlink")
    assert.are.equal(content, read(save))
    assert.are.equal("# earlier\n", content:sub(1, 10))
    assert.is_truthy(content:find("\nother-org\tother-key\n", 1, true))
    local saved, n = key_lines((content:sub(11):gsub("other%-org\tother%-key\n", "")))
    assert.are.equal(4, n)
    assert_current(saved)
  end)

  it("follows a symbolic link to the file it names (the link stays a link)", function()
    local path = orgs_file(2)
    local dir = H.mkdir(H.tmpname("save"))
    local real = write(dir .. "/real.tsv", "")
    assert(sh(("ln -s real.tsv %s/link.tsv"):format(q(dir))))
    local job = spawn({ "--orgs", path, "--base-url", H.http_url, "--save-to", dir .. "/link.tsv" })
    local status, _, err = job.wait(20)
    assert.are.equal(0, status, err)
    assert.is_true(sh("test -L " .. q(dir .. "/link.tsv")))
    assert.are.equal(2, select(2, key_lines(read(real))))
  end)
end)

describe("slashid-rotate --orgs streams", function()
  -- Peak RSS (KiB) of one run over `n` lines; every line an organization
  -- the emulator does not know (401, fast), every 100th a real one.
  local function peak_rss(n, extra)
    local dir = H.mkdir(H.tmpname("stream"))
    local f = assert(io.open(dir .. "/orgs", "wb"))
    local real = {}
    for i = 1, n do
      if i % 100 == 0 then
        local org, key = H.new_org()
        real[#real + 1] = org
        f:write(org, "\t", key, "\n")
      else
        f:write(("org-%08d\tsk_unknown_key_%08d\n"):format(i, i))
      end
    end
    f:close()
    -- python3 (the emulator's) reads the child's peak RSS (ru_maxrss)
    local cmd = ("python3 -c %s env %s --orgs %s/orgs --base-url %s --concurrency 16 --save-to %s/F %s")
      :format(q("import resource,subprocess,sys; d=subprocess.DEVNULL; " ..
                "r=subprocess.run(sys.argv[1:], stdout=d, stderr=d); " ..
                "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"),
              command({}), dir, H.http_url, dir, extra or "")
    local p = io.popen(cmd)
    local out = p:read("*a")
    p:close()
    local rc, rss = out:match("(%d+) (%d+)")
    assert.are.equal("1", rc, out)     -- the unknown ones: not rotated
    local saved, count = key_lines(read(dir .. "/F"))
    assert.are.equal(#real, count)
    for _, org in ipairs(real) do assert.is_truthy(saved[org]) end
    return tonumber(rss)
  end

  it("20,000 lines: peak RSS as for 2,000 (nothing kept per organization)", function()
    local small = peak_rss(2000)
    local large = peak_rss(20000)
    io.write(("\n[stream] peak RSS: 2,000 lines %d KiB, 20,000 lines %d KiB\n"):format(small, large))
    -- today's batch kept ~2.6 KB per organization: 18,000 more would be ~46 MB
    -- (under a preloaded ASan runtime its quarantine of freed blocks, up to
    -- 16 MB in check-asan, adds to the peak)
    local slack = (os.getenv("LD_PRELOAD") or ""):find("asan") and 24576 or 4096
    assert.is_true(large - small < slack, ("grew %d KiB"):format(large - small))
  end)

  it("20,000 lines under --no-journal: peak RSS as for 2,000 (the reader keeps nothing per line)", function()
    local small = peak_rss(2000, "--no-journal")
    local large = peak_rss(20000, "--no-journal")
    io.write(("\n[stream, --no-journal] peak RSS: 2,000 lines %d KiB, 20,000 lines %d KiB\n")
      :format(small, large))
    local slack = (os.getenv("LD_PRELOAD") or ""):find("asan") and 24576 or 4096
    assert.is_true(large - small < slack, ("grew %d KiB"):format(large - small))
  end)
end)

-- Found by the adversarial review of the command (closing note, CLI F*).
describe("slashid-rotate review findings", function()
  it("F2: SIGHUP (a closed terminal) is a first signal, not death with a request in flight", function()
    local path, list = orgs_file(1, { 1.5 })
    local save = H.mkdir(H.tmpname("hup")) .. "/keys.tsv"
    local job = spawn({ "--orgs", path, "--base-url", H.http_url, "--save-to", save })
    wait_for("the request", 10, function() return requested(list[1]) end)
    job.kill("HUP")
    local status, out, err = job.wait(20)
    assert.are.equal(0, status, err)
    local saved = key_lines(read(save) or "")
    H.assert_key_equal(H.org(list[1].org_id).api_key, saved[list[1].org_id])
    no_secrets(list, out, err)
  end)

  it("F4: after a first SIGINT an item waiting out a 429 sends no new request", function()
    local org, key = H.new_org()
    H.faults(org, { { status = 429, headers = { ["Retry-After"] = "20" },
                      message = "slow down" } })
    local path = write(H.tmpname("orgs") .. ".tsv", org .. "\t" .. key .. "\n")
    local job = spawn({ "--orgs", path, "--base-url", H.http_url })
    wait_for("the first attempt", 10, function() return H.requests(org) >= 1 end)
    socket.sleep(0.3)
    job.kill("INT")
    local status, _, err = job.wait(10)
    assert.are.equal(1, status, err)
    assert.are.equal(1, H.requests(org))
    assert.are.equal(0, H.org(org).rotations)
  end)

  it("F3: --orgs and --save-to naming the same file are refused (the key lines would be read back)", function()
    local path = orgs_file(1)
    local status, out, err = command_run({ "--orgs", path, "--base-url", H.http_url,
                                          "--save-to", path })
    assert.are.equal(64, status, err)
    assert.matches("same file", err)
    assert.are.equal("", out)
  end)

  it("F8: swapped columns (KEY<TAB>ORG) are that line's error, showing neither; the other lines are rotated", function()
    local org, key = H.new_org()
    local o1, k1 = H.new_org()
    local path = write(H.tmpname("orgs") .. ".tsv",
                       o1 .. "\t" .. k1 .. "\n" .. key .. "\t" .. org .. "\n")
    local status, out, err = command_run({ "--orgs", path, "--base-url", H.http_url })
    assert.are.equal(1, status, err)
    assert.matches("line 2: the columns look swapped", err)
    H.assert_no_secret(out .. err, key)
    assert.is_nil((out .. err):find(org, 1, true), "the organization ID was shown")
    assert.are.equal(0, H.requests(org))
    assert.are.equal(0, H.org(org).rotations)
    assert.are.equal(1, H.org(o1).rotations)
    H.assert_key_equal(H.org(o1).api_key, (key_lines(out))[o1])
    H.assert_no_secret(err, k1)
  end)

  it("F13: a line of 20,000 spaces is rejected at once (parsing is linear) as that line's error; the next is rotated", function()
    local o1, k1 = H.new_org()
    local path = write(H.tmpname("orgs") .. ".tsv",
                       (" "):rep(20000) .. "x\n" .. o1 .. "\t" .. k1 .. "\n")
    local t0 = socket.gettime()
    local status, out, err = command_run({ "--orgs", path, "--base-url", H.http_url })
    assert.is_true(socket.gettime() - t0 < 10, "parsing took too long")
    assert.are.equal(1, status, err)
    assert.matches("line 1: ORG_ID<TAB>CURRENT_KEY expected", err)
    assert.is_nil(err:find("     x", 1, true), "the line was shown")
    assert.are.equal(1, H.org(o1).rotations)
    H.assert_key_equal(H.org(o1).api_key, (key_lines(out))[o1])
    H.assert_no_secret(err, k1)
  end)

  it("I: --proxy with credentials is refused (ps would show them)", function()
    local org = H.new_org()
    local status, _, err = command_run({ "--org-id", org, "--base-url", H.https_url,
                                         "--proxy", "http://alice:pr0xy-secret@127.0.0.1:1" })
    assert.are.equal(64, status, err)
    assert.is_nil(err:find("pr0xy-secret", 1, true))
  end)
end)

describe("slashid-rotate review leftovers (issue 9, third round)", function()
  -- Waits until the command's pid has its handlers in place (SIGINT
  -- caught) and sleeps in the kernel (an open or read of a FIFO).
  local function blocked_with_handlers(job)
    wait_for("the command to block with its handlers in place", 10, function()
      local status = read("/proc/" .. job.pid .. "/status") or ""
      local caught = tonumber(status:match("SigCgt:%s*(%x+)") or "0", 16) or 0
      local state = (read("/proc/" .. job.pid .. "/stat") or ""):match("^%d+ %b() (%a)")
      return caught % 4 >= 2 and state == "S"
    end)
  end

  it("F14: a signal while opening a FIFO nobody writes (--orgs): nothing sent, exit 1, not 64", function()
    local org = H.new_org()
    local fifo = H.tmpname("fifo-orgs")
    assert(sh("mkfifo " .. q(fifo)))
    local job = spawn({ "--orgs", fifo, "--base-url", H.http_url })
    blocked_with_handlers(job)
    job.kill("INT")
    local status, _, err = job.wait(20)
    assert.are.equal(1, status, err)
    assert.matches("interrupted while opening", err)
    assert.are.equal(0, H.requests(org))
  end)

  it("F14: the same while opening --api-key-file FIFO for --check: exit 2 (cannot tell)", function()
    local org = H.new_org()
    local fifo = H.tmpname("fifo-key")
    assert(sh("mkfifo " .. q(fifo)))
    local job = spawn({ "--org-id", org, "--base-url", H.http_url, "--check", "--api-key-file", fifo })
    blocked_with_handlers(job)
    job.kill("TERM")
    local status, _, err = job.wait(20)
    assert.are.equal(2, status, err)
    assert.matches("interrupted while opening", err)
    assert.are.equal(0, H.requests(org))
  end)

  it("terminal escapes in a server's message reach stderr as \\x1B, never raw", function()
    local org, key = H.new_org()
    H.faults(org, { { status = 400, message = "bad \27[2J\27]0;owned\7 request\r" } })
    local status, _, err = command_run({ "--org-id", org, "--base-url", H.http_url },
                                       { SLASHID_API_KEY = key })
    assert.are.equal(1, status, err)
    assert.is_nil(err:find("\27", 1, true), "a raw ESC byte reached stderr")
    assert.is_nil(err:find("\7", 1, true), "a raw BEL byte reached stderr")
    assert.is_nil(err:find("\r", 1, true), "a raw CR reached stderr")
    assert.matches("bad \\x1B%[2J\\x1B%]0;owned\\x07 request", err)
  end)

  it("SIGQUIT (Ctrl-\\) is a first signal: the rotation in flight finishes, its key saved", function()
    -- (its default action would kill the command, dumping core with the keys)
    local org, key = H.new_org()
    H.faults(org, { { delay = 1.5 } })
    local save = H.mkdir(H.tmpname("quit")) .. "/key"
    -- a background job of sh starts with SIGQUIT ignored: give the command
    -- the default action a terminal's foreground job has
    local job = H.spawn("env --default-signal=QUIT " ..
      command({ "--org-id", org, "--base-url", H.http_url, "--save-to", save },
              { SLASHID_API_KEY = key }))
    wait_for("the request", 10, function() return H.requests(org) >= 1 end)
    job.kill("QUIT")
    local status, out, err = job.wait(20)
    assert.are.equal(0, status, err)
    H.assert_key_equal(H.org(org).api_key, (read(save):gsub("%s+$", "")))
    H.assert_no_secret(out .. err, key)
  end)

  it("R1: --orgs stopped, then two signals, then resumed: answers that had arrived are kept", function()
    local path, list = orgs_file(4, { 1, 1, 1, 1 })
    local save = H.mkdir(H.tmpname("stop2")) .. "/keys.tsv"
    local job = spawn({ "--orgs", path, "--base-url", H.http_url, "--concurrency", "4",
                        "--request-timeout", "3", "--save-to", save })
    wait_for("the requests", 10, function()
      for _, o in ipairs(list) do if not requested(o) then return false end end
      return true
    end)
    job.kill("STOP")
    wait_for("the server to rotate all four", 10, function()
      for _, o in ipairs(list) do if H.org(o.org_id).rotations < 1 then return false end end
      return true
    end)
    -- two different signals stay pending together while it is stopped
    job.kill("INT")
    job.kill("TERM")
    job.kill("CONT")
    local status, out, err = job.wait(20)
    local saved, n = key_lines(read(save) or "")
    assert.are.equal(4, n, err)
    assert_current(saved)
    assert.are.equal(0, status, err)
    no_secrets(list, out, err)
  end)

  it("R5: a signal while reading --api-key-file from a FIFO a writer holds open: exit 1, 2 for --check", function()
    for _, check in ipairs({ false, true }) do
      local org = H.new_org()
      local fifo = H.tmpname("fifo-read")
      assert(sh("mkfifo " .. q(fifo)))
      local args = { "--org-id", org, "--base-url", H.http_url, "--api-key-file", fifo }
      if check then args[#args + 1] = "--check" end
      local job = spawn(args)
      local writer = assert(io.open(fifo, "w"))   -- held open, nothing written
      blocked_with_handlers(job)
      job.kill("INT")
      local status, _, err = job.wait(20)
      writer:close()
      assert.are.equal(check and 2 or 1, status, err)
      assert.matches("interrupted while [%w ]*reading", err)
      assert.matches("nothing was sent", err)
      assert.are.equal(0, H.requests(org))
    end
  end)

  it("F5: --check waiting on a slow server: a second SIGINT abandons it at once (exit 2)", function()
    local org, key = H.new_org()
    H.faults(org, { { delay = 15 } })
    local job = spawn({ "--org-id", org, "--base-url", H.http_url, "--check" },
                      { env = { SLASHID_API_KEY = key } })
    wait_for("the check to reach the server", 10, function() return H.requests(org) >= 1 end)
    local t0 = socket.gettime()
    repeat   -- two separate signals (two pending at once would merge)
      job.kill("INT")
      socket.sleep(0.3)
    until job.ended() or socket.gettime() - t0 > 8
    local status, _, err = job.wait(10)
    assert.are.equal(2, status, err)
    assert.is_true(socket.gettime() - t0 < 8, "the check was not abandoned at once")
    assert.matches("abandoned", err)
    assert.are.equal(0, H.org(org).rotations)
    H.assert_no_secret(err, key)
  end)

  it("R6: --ca-file naming a FIFO nobody writes: refused at once, nothing sent (no hang)", function()
    local org, key = H.new_org()
    local fifo = H.tmpname("fifo-ca")
    assert(sh("mkfifo " .. q(fifo)))
    local job = spawn({ "--org-id", org, "--base-url", H.https_url, "--ca-file", fifo,
                        "--request-timeout", "3" }, { env = { SLASHID_API_KEY = key } })
    local status, _, err = job.wait(20)
    assert.are.equal(1, status, err)
    assert.matches("ca_file cannot be used: not a regular file", err)
    assert.are.equal(0, H.requests(org))
    H.assert_no_secret(err, key)
  end)

  it("R4: on a terminal, --orgs progress shows a server's control bytes as \\xNN", function()
    if not sh("command -v python3 >/dev/null") then pending("needs python3 for a pty") return end
    local org, key = H.new_org()
    H.faults(org, { { status = 400, message = "bad \27]0;TITLE\7\27[2J" } })
    local path = write(H.tmpname("orgs") .. ".tsv", org .. "\t" .. key .. "\n")
    local dir = H.mkdir(H.tmpname("pty"))
    -- stderr on a pty (the command then draws progress for a terminal)
    local py = write(dir .. "/on_a_tty.py", ([[
import os, pty, subprocess, sys
master, slave = pty.openpty()
p = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave)
os.close(slave)
chunks = []
while True:
    try:
        data = os.read(master, 65536)
    except OSError:
        break
    if not data:
        break
    chunks.append(data)
p.wait()
open(%q, "wb").write(b"".join(chunks))
sys.exit(p.returncode)
]]):format(dir .. "/tty"))
    local args = { "--orgs", path, "--base-url", H.http_url }
    local cmd = { "python3", q(py), H.lua, CLI }
    for _, a in ipairs(args) do cmd[#cmd + 1] = q(a) end
    local status = shell(table.concat(cmd, " "))
    local tty = read(dir .. "/tty") or ""
    assert.are.equal(1, status, tty)
    assert.matches("x1B%]0;TITLE", tty)
    assert.is_nil(tty:find("\27]0;", 1, true), "a raw OSC sequence reached the terminal")
    assert.is_nil(tty:find("\27[2J", 1, true), "a raw clear-screen reached the terminal")
    H.assert_no_secret(tty, key)
  end)

  it("not dumpable while it runs (no core file with keys, whatever core_pattern pipes to)", function()
    if io.popen("id -u"):read("*l") ~= "0" or not sh("command -v setpriv >/dev/null") then
      pending("needs root and setpriv(1) to run the command as nobody")
      return
    end
    local org, key = H.new_org()
    H.faults(org, { { delay = 1.5 } })
    -- its journals in a folder of its own (the specs' is root's)
    local journals = H.journal_dir("nobody")
    local job = H.spawn("SLASHID_API_KEY=" .. q(key) .. " SLASHID_JOURNAL_DIR=" .. q(journals) ..
      " setpriv --reuid=nobody --regid=nogroup --clear-groups " ..
      command({ "--org-id", org, "--base-url", H.http_url, "--json" }))
    wait_for("the request", 10, function()
      assert(not job.ended(), "the command ended before its request: " .. job.err())
      return H.requests(org) >= 1
    end)
    -- a process that is not dumpable has its /proc files owned by root
    local owner = io.popen("stat -c %U /proc/" .. job.pid .. "/fd 2>&1"):read("*l")
    local status, out, err = job.wait(20)
    sh("env -u LD_PRELOAD rm -rf " .. q(journals))
    assert.are.equal(0, status, err)
    assert.are.equal("root", owner)
    H.assert_no_secret(err, key)
    assert.is_truthy(out:find('"outcome":"rotated"', 1, true))
  end)

  it("--save-to that cannot be written (one organization): refused before anything is sent", function()
    local org, key = H.new_org()
    local missing = H.tmpname("no-such-dir") .. "/key"
    local status, out, err = command_run({ "--org-id", org, "--base-url", H.http_url,
                                           "--save-to", missing }, { SLASHID_API_KEY = key })
    assert.are.equal(64, status, err)
    assert.matches("%-%-save%-to: ", err)
    assert.are.equal("", out)
    assert.are.equal(0, H.requests(org))
    assert.are.equal(0, H.org(org).rotations)
  end)
end)
