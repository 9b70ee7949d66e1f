-- rotate_keys' write-ahead journal (the reference's "Write-ahead journal",
-- rules 1-6: docs/values.ld.lua; README, "A batch that survives a crash")
-- and slashid.read_journal: one entry per organization in the order
-- first recorded, each state backed by the emulator's own record; the
-- `sent` record durable before the request leaves, never more than
-- `concurrency` organizations sent with no outcome; a key durable in the
-- journal before on_result / on_progress / save_to have it; an
-- organization sent at most once per journal; refusals (non-empty, held,
-- a directory others can write, a missing directory, no space, read-only)
-- before anything is sent; torn and corrupt lines skipped, never misread;
-- group commit; a journal that fails mid-run stops new starts and loses no
-- key; a journal given by path is closed when the batch ends.
--
-- The emulator's record (H.org(org).rotations, .api_key, .requests) is the
-- truth. No key is ever printed: keys are compared as booleans or with
-- H.assert_key_equal.
local H = require "helpers"
local slashid = require "slashid"
local socket = require "socket"

local messages, assert_rotated = H.messages, H.assert_rotated

local orgs, items, private_dir, exists = H.orgs, H.items, H.private_dir, H.exists

local function journal_path()
  return private_dir("journal") .. "/batch.journal"
end

-- The lines of a file (without their "\n"); a last line with no newline
-- is a line too.
local function journal_lines(path)
  local t = {}
  local s = H.read_file(path)
  for line in s:gmatch("([^\n]*)\n") do t[#t + 1] = line end
  local tail = s:match("([^\n]+)$")
  if tail then t[#t + 1] = tail end
  return t, s
end

-- read_journal's entries by organization.
local function by_org(entries)
  local t = {}
  for _, e in ipairs(entries) do
    assert(t[e.org_id] == nil, "read_journal named an organization twice")
    t[e.org_id] = e
  end
  return t
end

local function error_of(fn)
  local ok, err = pcall(fn)
  assert(not ok, "expected an error, the call returned")
  return tostring(err)
end

local function assert_no_request(list)
  for i, o in ipairs(list) do
    assert(H.requests(o.org_id) == 0, "org " .. i .. ": the emulator received a request")
    assert(H.org(o.org_id).rotations == 0, "org " .. i .. ": rotated")
  end
end

local function starts_with(s, prefix)
  return s:sub(1, #prefix) == prefix
end

describe("rotate_keys' journal", function()
  it("names every organization once, in the order first recorded, with its outcome and (rotated) its new key", function()
    local list = orgs(5)
    -- 2: a wrong key (401: not_rotated); 4: a 500 (unknown)
    local wrong_key = list[2].api_key .. "-wrong"
    list[2].api_key = wrong_key
    H.faults(list[4].org_id, { { status = 500 } })
    local old_keys = {}
    for i, o in ipairs(list) do old_keys[i] = o.api_key end
    local path = journal_path()
    local t0 = socket.gettime()
    local out = slashid.rotate_keys(items(list), { journal = path })
    local t1 = socket.gettime()
    assert.are.equal(5, #out)
    for _, i in ipairs({ 1, 3, 5 }) do assert_rotated(list[i], out[i]) end
    assert.are.equal("not_rotated", out[2].info.outcome)
    assert.are.equal(401, out[2].info.status)
    assert.are.equal("unknown", out[4].info.outcome)
    assert.are.equal(500, out[4].info.status)

    local entries, skipped = slashid.read_journal(path)
    assert.is_table(entries)
    assert.are.equal(0, skipped)
    assert.are.equal(5, #entries)
    local want = { "rotated", "not_rotated", "rotated", "unknown", "rotated" }
    for i, e in ipairs(entries) do
      -- at concurrency 8 the five were sent in input order
      assert.are.equal(list[i].org_id, e.org_id, "entry " .. i)
      assert.are.equal(want[i], e.state, "entry " .. i)
      assert.are.equal("number", type(e.sent_at), "entry " .. i)
      assert.is_true(e.sent_at >= math.floor(t0) - 1 and e.sent_at <= t1 + 1,
                     "entry " .. i .. ": sent_at is not the time it was sent")
      assert.are.equal(false, e.delivered, "entry " .. i)
      if want[i] == "rotated" then
        assert.are.equal("string", type(e.api_key), "entry " .. i)
        H.assert_key_equal(H.org(list[i].org_id).api_key, e.api_key, "entry " .. i)
        H.assert_key_equal(out[i].result.api_key, e.api_key, "entry " .. i)
      else
        assert.is_nil(e.api_key, "entry " .. i)
      end
    end
    -- the emulator agrees: 401 and 500 rotated nothing
    assert.are.equal(0, H.org(list[2].org_id).rotations)
    assert.are.equal(0, H.org(list[4].org_id).rotations)

    -- 0600; the old keys (the wrong one too) never written
    assert.are.equal("600", H.mode(path))
    local _, bytes = journal_lines(path)
    for i = 1, #old_keys do H.assert_no_secret(bytes, old_keys[i]) end
  end)

  -- Rule 3: "the first record names the run (base URL, ...)". The base URL
  -- shared by the batch, or the one every item gives itself.
  for _, where in ipairs({ "in the batch's options", "in every item" }) do
    it("names the run's base URL in its first record (base_url " .. where .. ")", function()
      local list = orgs(2)
      local path = journal_path()
      local batch, opts = {}, { journal = path }
      for i, o in ipairs(list) do
        batch[i] = H.opts(o.org_id, o.api_key)
        if where == "in the batch's options" then batch[i].base_url = nil end
      end
      if where == "in the batch's options" then opts.base_url = H.http_url end
      local out = slashid.rotate_keys(batch, opts)
      for i, o in ipairs(list) do assert_rotated(o, out[i]) end
      local first = journal_lines(path)[1]
      assert.is_truthy(first:find("\trun\t", 1, true), "the first record is not the run's: " .. first)
      assert.is_truthy(first:find("base_url=" .. H.http_url, 1, true),
                       "the run record does not name the base URL the run used: " .. first)
    end)
  end

  it("holds a new key, durable, before on_result and on_progress have it; save_to delivered afterwards", function()
    local list = orgs(4)
    local dir = private_dir("keys")
    local path = journal_path()
    local list_items = items(list)
    for i, item in ipairs(list_items) do item.save_to = dir .. "/key" .. i end
    local seen_result, seen_progress = {}, {}
    local function look(index, item)
      local entries = slashid.read_journal(path)
      local e = entries and by_org(entries)[list[index].org_id]
      return {
        read = entries ~= nil,
        named = e ~= nil,
        rotated = e ~= nil and e.state == "rotated",
        same_key = e ~= nil and item ~= nil and item.result ~= nil and e.api_key == item.result.api_key,
      }
    end
    local out = slashid.rotate_keys(list_items, {
      journal = path, concurrency = 2,
      on_result = function(index, item) seen_result[index] = look(index, item) end,
      on_progress = function(_, _, index, _, item) seen_progress[index] = look(index, item) end,
    })
    assert.is_nil(out.on_result_error)
    assert.is_nil(out.on_progress_error)
    local entries, skipped = slashid.read_journal(path)
    assert.are.equal(0, skipped)
    local named = by_org(entries)
    for i, o in ipairs(list) do
      assert_rotated(o, out[i])
      assert.is_true(out[i].info.saved, "item " .. i .. ": " .. messages(out[i].errors))
      for what, seen in pairs({ on_result = seen_result, on_progress = seen_progress }) do
        local s = seen[i]
        assert.is_table(s, what .. " was not called for item " .. i)
        assert.is_true(s.read, what .. " " .. i .. ": the journal could not be read")
        assert.is_true(s.named, what .. " " .. i .. ": the journal did not name the organization yet")
        assert.is_true(s.rotated, what .. " " .. i .. ": the journal did not say rotated yet")
        assert.is_true(s.same_key, what .. " " .. i .. ": the journal did not hold the key handed over")
      end
      -- the save_to file holds the key, and the journal says delivered
      local saved = H.read_file(dir .. "/key" .. i)
      assert.is_true(saved == out[i].result.api_key .. "\n", "item " .. i .. ": save_to does not hold the key")
      local e = named[o.org_id]
      assert.are.equal("rotated", e.state)
      H.assert_key_equal(H.org(o.org_id).api_key, e.api_key)
      assert.are.equal(true, e.delivered, "item " .. i .. ": not recorded as delivered")
    end
  end)

  it("records `sent` before the request leaves and never has more than `concurrency` organizations sent with no outcome", function()
    local list = orgs(5)
    -- 2 and 4 answer late: while they are in flight, the others finish
    H.faults(list[2].org_id, { { delay = 0.8 } })
    H.faults(list[4].org_id, { { delay = 0.8 } })
    local index_of = {}
    for i, o in ipairs(list) do index_of[o.org_id] = i end
    local delivered = {}        -- index -> true once its on_result ran
    local observations = {}
    local path = journal_path()
    local function observe(where, index)
      -- the emulator first: every request it has seen left before this
      -- read of the journal (the batch sends nothing during a callback)
      local requested = {}
      for i, o in ipairs(list) do requested[i] = H.requests(o.org_id) > 0 end
      local entries, skipped = slashid.read_journal(path)
      local ob = { where = where, index = index, sent = {}, unnamed_requested = {},
                   readable = entries ~= nil, skipped = skipped }
      local named = entries and by_org(entries) or {}
      for org, e in pairs(named) do
        if e.state == "sent" then ob.sent[#ob.sent + 1] = index_of[org] end
      end
      for i, o in ipairs(list) do
        if requested[i] and not named[o.org_id] then ob.unnamed_requested[#ob.unnamed_requested + 1] = i end
      end
      -- which of the organizations recorded as sent had been handed over
      ob.sent_delivered = {}
      for _, i in ipairs(ob.sent) do
        if delivered[i] then ob.sent_delivered[#ob.sent_delivered + 1] = i end
      end
      observations[#observations + 1] = ob
    end
    local out = slashid.rotate_keys(items(list), {
      journal = path, concurrency = 2,
      on_result = function(index)
        observe("on_result", index)
        delivered[index] = true
      end,
      on_progress = function(_, _, index) observe("on_progress", index) end,
    })
    assert.is_nil(out.on_result_error)
    assert.is_nil(out.on_progress_error)
    for i, o in ipairs(list) do assert_rotated(o, out[i]) end
    assert.are.equal(10, #observations)
    local later_answers = 0
    for _, ob in ipairs(observations) do
      local at = ob.where .. " of item " .. ob.index
      assert.is_true(ob.readable, at .. ": the journal could not be read")
      assert.are.equal(0, ob.skipped, at)
      assert.is_true(#ob.sent <= 2, at .. ": " .. #ob.sent .. " organizations recorded as sent, concurrency 2")
      assert.are.same({}, ob.unnamed_requested, at .. ": requested but not in the journal")
      -- sent with no outcome: answers that had not been handed over
      assert.are.same({}, ob.sent_delivered, at .. ": handed over but still recorded as only sent")
      later_answers = later_answers + #ob.sent
    end
    -- the late ones were seen in flight, recorded as sent, before their answers
    assert.is_true(later_answers > 0, "no organization was ever seen recorded as sent while in flight")
    local entries, skipped = slashid.read_journal(path)
    assert.are.equal(0, skipped)
    for _, e in ipairs(entries) do assert.are.equal("rotated", e.state) end
  end)

  -- Rule 1 seen from another process, while the batch waits on its
  -- requests: an observer polls the emulator's request log, then the
  -- journal; every organization the emulator has a request for must be
  -- named in the journal already (its `sent` record was durable before the
  -- request left), and at most `concurrency` are recorded as sent.
  local OBSERVER = [[
local H = require "helpers"
local slashid = require "slashid"
local socket = require "socket"
local journal, orgs_file, stop_file, out_file, ready_file = arg[1], arg[2], arg[3], arg[4], arg[5]
local orgs = {}
for line in io.lines(orgs_file) do orgs[#orgs + 1] = line end
local looks, unnamed, in_flight, most_sent, unreadable = 0, 0, 0, 0, 0
H.write(ready_file, "ready")
while not H.read_if_any(stop_file) do
  local requested = {}
  for i, org in ipairs(orgs) do requested[i] = H.requests(org) > 0 end
  local entries = slashid.read_journal(journal)
  if entries then
    local named, sent = {}, 0
    for _, e in ipairs(entries) do
      named[e.org_id] = e
      if e.state == "sent" then sent = sent + 1 end
    end
    if sent > most_sent then most_sent = sent end
    looks = looks + 1
    for i, org in ipairs(orgs) do
      if requested[i] then
        if not named[org] then unnamed = unnamed + 1
        elseif named[org].state == "sent" then in_flight = in_flight + 1 end
      end
    end
  else
    unreadable = unreadable + 1
  end
  socket.sleep(0.01)
end
H.write(out_file, ("%d %d %d %d %d"):format(looks, unnamed, in_flight, most_sent, unreadable))
]]

  it("has every request the emulator received named in the journal, seen from another process while the requests wait", function()
    local list = orgs(6)
    for _, o in ipairs(list) do H.faults(o.org_id, { { delay = 0.4 } }) end
    local dir = private_dir("observer")
    local path = dir .. "/batch.journal"
    local ids = {}
    for i, o in ipairs(list) do ids[i] = o.org_id end
    H.write(dir .. "/observer.lua", OBSERVER)
    H.write(dir .. "/orgs", table.concat(ids, "\n") .. "\n")
    -- the journal exists (empty) before the observer looks at it
    H.write(path, "", "600")
    local job = H.spawn(("%s %s %s %s %s %s %s"):format(H.lua, H.q(dir .. "/observer.lua"), H.q(path),
      H.q(dir .. "/orgs"), H.q(dir .. "/stop"), H.q(dir .. "/out"), H.q(dir .. "/ready")))
    finally(function()
      H.write(dir .. "/stop", "stop")
      if not job.ended() then pcall(job.wait, 10) end
      if not job.ended() then job.kill("KILL") end
    end)
    H.wait_for("the observer to start", 20, function() return H.read_if_any(dir .. "/ready") ~= nil end)
    local out = slashid.rotate_keys(items(list), { journal = path, concurrency = 2 })
    for i, o in ipairs(list) do assert_rotated(o, out[i]) end
    H.write(dir .. "/stop", "stop")
    local status = job.wait(20)
    assert.are.equal(0, status, "the observer failed: " .. job.err())
    local looks, unnamed, in_flight, most_sent, unreadable =
      H.read_file(dir .. "/out"):match("^(%d+) (%d+) (%d+) (%d+) (%d+)$")
    assert.is_truthy(looks, "the observer wrote no figures")
    looks, unnamed, in_flight, most_sent = tonumber(looks), tonumber(unnamed), tonumber(in_flight), tonumber(most_sent)
    assert.are.equal(0, tonumber(unreadable), "the journal could not be read")
    assert.are.equal(0, unnamed, "requests the emulator had received were not named in the journal")
    -- the observer did look while requests were waiting at the emulator
    assert.is_true(in_flight > 0, "the observer never saw a request in flight (" .. looks .. " looks)")
    assert.is_true(most_sent <= 2, most_sent .. " organizations recorded as sent at once, concurrency 2")
  end)

  for _, concurrency in ipairs({ 1, 8 }) do
    it("sends an organization at most once per journal: a repeat in the list is that item's error (concurrency " .. concurrency .. ")", function()
      local list = orgs(2)
      local batch = items({ list[1], list[2], list[1] })
      local path = journal_path()
      local out = slashid.rotate_keys(batch, { journal = path, concurrency = concurrency })
      assert.are.equal(3, #out)
      assert_rotated(list[1], out[1])
      assert_rotated(list[2], out[2])
      assert.are.equal("not_rotated", out[3].info.outcome)
      assert.is_nil(out[3].result)
      assert.is_true(#out[3].errors >= 1)
      assert.are.equal(1, H.org(list[1].org_id).rotations)
      assert.are.equal(1, H.requests(list[1].org_id))
      local entries, skipped = slashid.read_journal(path)
      assert.are.equal(0, skipped)
      assert.are.equal(2, #entries)
      assert.are.equal(list[1].org_id, entries[1].org_id)
      assert.are.equal("rotated", entries[1].state)
      H.assert_key_equal(H.org(list[1].org_id).api_key, entries[1].api_key)
    end)
  end

  describe("refuses, before anything is sent,", function()
    it("a journal that exists and is not empty", function()
      local list = orgs(2)
      local path = journal_path()
      H.write(path, "an earlier run's records\n", "600")
      local err = error_of(function() slashid.rotate_keys(items(list), { journal = path }) end)
      assert.is_true(starts_with(err, "slashid: journal"), err)
      assert.is_truthy(err:find("not empty", 1, true), err)
      assert_no_request(list)
      assert.are.equal("an earlier run's records\n", H.read_file(path))
    end)

    it("a journal held by another open of it (flock), empty or not", function()
      local J = require "slashid.journal"
      local list = orgs(2)
      -- non-empty (its run record) and held
      local path = journal_path()
      local j = assert(J.open(path, "new", { base_url = H.http_url }))
      local err = error_of(function() slashid.rotate_keys(items(list), { journal = path }) end)
      assert.is_true(starts_with(err, "slashid: journal"), err)
      assert.is_nil(err:find("not empty", 1, true), "refused for the wrong reason: " .. err)
      j:close()
      -- empty and held: the lock alone refuses it
      local path2 = journal_path()
      local file = assert(require("slashid.core").journal_open(path2, "new"))
      err = error_of(function() slashid.rotate_keys(items(list), { journal = path2 }) end)
      assert.is_true(starts_with(err, "slashid: journal"), err)
      file:close()
      assert_no_request(list)
      -- released: the same empty file is taken now
      local out = slashid.rotate_keys(items(list), { journal = path2 })
      for i, o in ipairs(list) do assert_rotated(o, out[i]) end
    end)

    it("a journal held by another process (flock(1))", function()
      local list = orgs(1)
      local path = journal_path()
      H.write(path, "", "600")
      -- the lock is taken on a descriptor of the process that then becomes
      -- sleep (exec): killing the job ends the holder, leaving nothing
      -- behind (flock(1) with a command would leave its child running)
      local job = H.spawn("sh -c " .. H.q("exec 9>>" .. H.q(path) .. " && flock 9 && exec sleep 30"))
      finally(function() if not job.ended() then job.kill("TERM") end end)
      -- locked once flock(1)'s child runs
      H.wait_for("flock(1) to hold the file", 10, function()
        local a, _, c = os.execute("flock -n " .. H.q(path) .. " true")
        return not (a == true or a == 0 or c == 0)
      end)
      local err = error_of(function() slashid.rotate_keys(items(list), { journal = path }) end)
      assert.is_true(starts_with(err, "slashid: journal"), err)
      assert_no_request(list)
      assert.are.equal("", H.read_file(path))
    end)

    it("a journal in a directory other users can write (0777)", function()
      local list = orgs(2)
      local dir = H.mkdir(H.tmpname("jopen"))
      assert(os.execute("chmod 777 " .. H.q(dir)))
      local path = dir .. "/batch.journal"
      local err = error_of(function() slashid.rotate_keys(items(list), { journal = path }) end)
      assert.is_true(starts_with(err, "slashid: journal"), err)
      assert_no_request(list)
      -- and one writable by its group
      assert(os.execute("chmod 770 " .. H.q(dir)))
      err = error_of(function() slashid.rotate_keys(items(list), { journal = path }) end)
      assert.is_true(starts_with(err, "slashid: journal"), err)
      assert_no_request(list)
    end)

    it("a journal in a directory that does not exist", function()
      local list = orgs(2)
      local path = H.tmpname("no-such-dir") .. "/batch.journal"
      local err = error_of(function() slashid.rotate_keys(items(list), { journal = path }) end)
      assert.is_true(starts_with(err, "slashid: journal"), err)
      assert_no_request(list)
      assert.is_false(exists(path))
    end)
  end)

  it("skips a torn last line and a line with one byte flipped, and misreads neither", function()
    local list = orgs(4)
    local path = journal_path()
    local out = slashid.rotate_keys(items(list), { journal = path })
    for i, o in ipairs(list) do assert_rotated(o, out[i]) end
    local lines = journal_lines(path)
    -- the `rotated` line nearest the middle: a byte of its key flipped
    local mid, target = math.floor(#lines / 2) + 1, nil
    for d = 0, #lines do
      for _, k in ipairs({ mid - d, mid + d }) do
        if not target and lines[k] and lines[k]:find("\trotated\t", 1, true) then target = k end
      end
    end
    assert(target, "no rotated record in the journal")
    local fields = {}
    for f in (lines[target] .. "\t"):gmatch("([^\t]*)\t") do fields[#fields + 1] = f end
    assert.are.equal(5, #fields)
    local victim = fields[3]
    local key = fields[4]
    local at = math.floor(#key / 2)
    while not key:sub(at, at):match("%w") do at = at + 1 end
    local b = key:byte(at)
    local flipped_key = key:sub(1, at - 1) .. string.char(b % 2 == 0 and b + 1 or b - 1) .. key:sub(at + 1)
    local corrupt = {}
    local reference = {}
    for k, line in ipairs(lines) do
      if k == target then
        corrupt[k] = table.concat({ fields[1], fields[2], fields[3], flipped_key, fields[5] }, "\t")
      else
        corrupt[k] = line
        reference[#reference + 1] = line
      end
    end
    -- half of a record, no newline: a crash mid-write
    local torn = lines[2]:sub(1, math.floor(#lines[2] / 2))
    H.write(path, table.concat(corrupt, "\n") .. "\n" .. torn, "600")
    local ref_path = journal_path()
    H.write(ref_path, table.concat(reference, "\n") .. "\n", "600")

    local entries, skipped = slashid.read_journal(path)
    assert.are.equal(2, skipped)
    local ref_entries, ref_skipped = slashid.read_journal(ref_path)
    assert.are.equal(0, ref_skipped)
    -- exactly as if the two lines were not there (compared without
    -- printing keys)
    assert.are.equal(#ref_entries, #entries)
    assert.are.equal(4, #entries)
    for k = 1, #entries do
      local e, r = entries[k], ref_entries[k]
      assert.are.equal(r.org_id, e.org_id)
      assert.are.equal(r.state, e.state)
      assert.is_true(r.api_key == e.api_key, "entry " .. k .. ": keys differ")
      assert.are.equal(r.delivered, e.delivered)
      assert.are.equal(r.sent_at, e.sent_at)
    end
    -- the organization whose key line was corrupt: sent, no key (never
    -- the flipped one); the others: rotated with the emulator's key
    for _, e in ipairs(entries) do
      assert.is_false(e.api_key == flipped_key, "the flipped key was read")
      if e.org_id == victim then
        assert.are.equal("sent", e.state)
        assert.is_nil(e.api_key)
      else
        assert.are.equal("rotated", e.state)
        H.assert_key_equal(H.org(e.org_id).api_key, e.api_key)
      end
    end
  end)

  it("reads back exactly a key holding a space, a percent sign and a tab", function()
    local list = orgs(1)
    local odd = "odd key%20 with\tspace%"
    H.faults(list[1].org_id, { { json = { result = { api_key = odd } } } })
    local path = journal_path()
    local out = slashid.rotate_keys(items(list), { journal = path })
    assert.are.equal("rotated", out[1].info.outcome, messages(out[1].errors))
    assert.is_true(out[1].result.api_key == odd, "the odd key did not come back as sent")
    local entries, skipped = slashid.read_journal(path)
    assert.are.equal(0, skipped)
    assert.are.equal(1, #entries)
    assert.are.equal("rotated", entries[1].state)
    assert.is_true(entries[1].api_key == odd, "the journal did not give back the key as issued")
    -- one line per record: the tab did not split one
    for _, line in ipairs(journal_lines(path)) do
      local n = select(2, line:gsub("\t", ""))
      assert.are.equal(4, n)
    end
  end)

  it("group commit: 40 organizations at concurrency 8 take fewer fsyncs than records", function()
    local J = require "slashid.journal"
    local list = orgs(40)
    local path = journal_path()
    local j = assert(J.open(path, "new", { base_url = H.http_url }))
    local out = slashid.rotate_keys(items(list), { journal = j, concurrency = 8 })
    local fsyncs = j.file:stats().fsyncs
    j:close()
    for i, o in ipairs(list) do assert_rotated(o, out[i]) end
    local records = #journal_lines(path)
    local entries, skipped = slashid.read_journal(path)
    assert.are.equal(0, skipped)
    assert.are.equal(40, #entries)
    for _, e in ipairs(entries) do
      assert.are.equal("rotated", e.state)
      H.assert_key_equal(H.org(e.org_id).api_key, e.api_key)
    end
    -- the run record, a `sent` and a `rotated` record per organization
    assert.are.equal(81, records)
    if os.getenv("SLASHID_SPEC_JOURNAL_FIGURES") then
      io.stderr:write(("\n[group commit] %d records, %d fsyncs\n"):format(records, fsyncs))
    end
    assert.is_true(fsyncs < records, ("%d fsyncs for %d records"):format(fsyncs, records))
  end)

  describe("on a small tmpfs", function()
    -- A 64 KiB tmpfs mounted (as root) for one test, unmounted after it.
    local function small_fs()
      local dir = H.mkdir(H.tmpname("jfs"))
      local a, _, c = os.execute("mount -t tmpfs -o size=64k,mode=0700 tmpfs " .. H.q(dir) .. " 2>/dev/null")
      if not (a == true or a == 0 or c == 0) then
        return nil
      end
      finally(function()
        -- lazily if busy (a descriptor still open on it): never left mounted
        local ok, _, code = os.execute("umount " .. H.q(dir) .. " 2>/dev/null")
        if not (ok == true or ok == 0 or code == 0) then
          os.execute("umount -l " .. H.q(dir) .. " 2>/dev/null")
        end
      end)
      return dir
    end

    -- Fills the file system holding `dir` (a file `name` in it).
    local function fill(dir, name)
      os.execute("dd if=/dev/zero of=" .. H.q(dir .. "/" .. (name or "filler")) ..
                 " bs=4096 >/dev/null 2>&1")
    end

    it("a journal that cannot be written before the first request (no space) fails the call, nothing sent", function()
      local dir = small_fs()
      if not dir then
        pending("cannot mount a tmpfs here (not root, or no permission to mount)")
        return
      end
      local list = orgs(2)
      fill(dir)
      local err = error_of(function()
        slashid.rotate_keys(items(list), { journal = dir .. "/batch.journal" })
      end)
      assert.is_true(starts_with(err, "slashid: journal"), err)
      assert_no_request(list)
    end)

    it("a journal that cannot be written before the first request (read-only) fails the call, nothing sent", function()
      local dir = small_fs()
      if not dir then
        pending("cannot mount a tmpfs here (not root, or no permission to mount)")
        return
      end
      local a, _, c = os.execute("mount -o remount,ro " .. H.q(dir) .. " 2>/dev/null")
      if not (a == true or a == 0 or c == 0) then
        pending("cannot remount the tmpfs read-only")
        return
      end
      local list = orgs(2)
      local err = error_of(function()
        slashid.rotate_keys(items(list), { journal = dir .. "/batch.journal" })
      end)
      assert.is_true(starts_with(err, "slashid: journal"), err)
      assert_no_request(list)
    end)

    -- A batch of 40 at concurrency 4 whose journal's file system is filled
    -- up as the first answer is handed over: the journal fails once its
    -- last page is full, some items later. Returns list, out, the journal's
    -- entries, the save_to folder; nil when no tmpfs can be mounted.
    local function failing_journal_batch()
      local dir = small_fs()
      if not dir then return nil end
      local n = 40
      local list = orgs(n)
      -- answers staggered, so that items are in flight when the journal fails
      for i, o in ipairs(list) do
        local d = (i % 4) * 0.04
        if d > 0 then H.faults(o.org_id, { { delay = d } }) end
      end
      local keys_dir = private_dir("keys")
      local batch = items(list)
      for i, item in ipairs(batch) do item.save_to = keys_dir .. "/key" .. i end
      local path = dir .. "/batch.journal"
      local filled = false
      local out = slashid.rotate_keys(batch, {
        journal = path, concurrency = 4,
        on_result = function()
          if not filled then fill(dir) filled = true end
        end,
      })
      assert.is_true(filled)
      assert.is_nil(out.on_result_error)
      assert.are.equal(n, #out)
      local entries = slashid.read_journal(path)
      assert.is_table(entries)
      return list, out, entries, keys_dir
    end

    it("a journal that fails mid-run: nothing more starts, keys still arriving are returned, not saved", function()
      local list, out, entries, keys_dir = failing_journal_batch()
      if not list then
        pending("cannot mount a tmpfs here (not root, or no permission to mount)")
        return
      end
      local n = #list
      local named = by_org(entries)
      local rotated, not_saved, unstarted, first_unstarted = 0, 0, 0, nil
      for i, o in ipairs(list) do
        local item = out[i]
        local emu = H.org(o.org_id)
        if emu.rotations > 0 then
          -- no key the emulator issued is missing from what was returned
          assert.are.equal(1, emu.rotations, "item " .. i)
          assert.are.equal("rotated", item.info.outcome, "item " .. i .. ": " .. messages(item.errors))
          H.assert_key_equal(emu.api_key, item.result.api_key, "item " .. i)
        end
        if item.info.outcome == "rotated" then
          rotated = rotated + 1
          assert.are.equal(1, emu.rotations, "item " .. i)
          local e = named[o.org_id]
          local journaled = e ~= nil and e.state == "rotated" and e.api_key == item.result.api_key
          if journaled then
            assert.is_true(item.info.saved, "item " .. i .. ": " .. messages(item.errors))
          else
            -- a key the journal could not take: returned, went to its
            -- other place (save_to), counted as not saved, said so
            not_saved = not_saved + 1
            assert.are.equal(false, item.info.saved, "item " .. i)
            assert.is_truthy(messages(item.errors):find("journal", 1, true),
                             "item " .. i .. ": no errors entry about the journal")
            assert.is_true(H.read_if_any(keys_dir .. "/key" .. i) == item.result.api_key .. "\n",
                           "item " .. i .. ": the key did not go to save_to")
          end
        else
          assert.are.equal("not_rotated", item.info.outcome, "item " .. i .. ": " .. messages(item.errors))
          assert.is_nil(item.result)
          assert.is_true(#item.errors >= 1, "item " .. i)
          -- never sent
          assert.are.equal(0, H.requests(o.org_id), "item " .. i)
          assert.are.equal(0, emu.rotations, "item " .. i)
          unstarted = unstarted + 1
          first_unstarted = first_unstarted or i
        end
      end
      assert.is_true(unstarted > 0, "the journal never failed (the tmpfs was not filled?)")
      assert.is_true(not_saved > 0, "no key arrived after the journal failed")
      -- nothing started after the first item that was not
      for i = first_unstarted, n do
        assert.are.equal("not_rotated", out[i].info.outcome, "item " .. i)
        assert.are.equal(0, H.requests(list[i].org_id), "item " .. i .. " was sent after the journal failed")
      end
      local summary = 0
      for _, o in ipairs(list) do summary = summary + H.org(o.org_id).rotations end
      assert.are.equal(rotated, summary)
    end)

    it("a journal that fails mid-run: the items it kept from starting say the journal could not be written", function()
      local list, out = failing_journal_batch()
      if not list then
        pending("cannot mount a tmpfs here (not root, or no permission to mount)")
        return
      end
      local unstarted = 0
      for i = 1, #list do
        local item = out[i]
        if item.info.outcome == "not_rotated" then
          unstarted = unstarted + 1
          local said = messages(item.errors)
          assert.is_truthy(said:find("journal", 1, true),
                           "item " .. i .. ": the errors entry does not say the journal failed: " .. said)
        end
      end
      assert.is_true(unstarted > 0, "the journal never failed (the tmpfs was not filled?)")
    end)
  end)

  it("closes a journal given by path when the batch ends: a second batch is refused as not empty, not as held", function()
    local list, list2 = orgs(2), orgs(1)
    local path = journal_path()
    local out = slashid.rotate_keys(items(list), { journal = path })
    for i, o in ipairs(list) do assert_rotated(o, out[i]) end
    local err = error_of(function() slashid.rotate_keys(items(list2), { journal = path }) end)
    assert.is_true(starts_with(err, "slashid: journal"), err)
    assert.is_truthy(err:find("not empty", 1, true), err)
    assert_no_request(list2)
    -- not held: another open of it can take the lock
    local file = require("slashid.core").journal_open(path, "resume")
    assert.is_truthy(file, "the journal is still locked after the batch")
    file:close()
  end)
end)

describe("slashid.read_journal", function()
  it("raises on a bad argument", function()
    for _, bad in ipairs({ { nil }, { 42 }, { "" }, { {} }, { true } }) do
      local err = error_of(function() slashid.read_journal(bad[1]) end)
      assert.is_true(starts_with(err, "slashid: read_journal"), err)
    end
  end)

  it("returns nil and a message for a file that does not exist", function()
    local entries, message = slashid.read_journal(H.tmpname("no-such-journal"))
    assert.is_nil(entries)
    assert.are.equal("string", type(message))
    assert.is_true(#message > 0)
  end)

  it("returns nil and a message for a path it cannot read as a file (a directory)", function()
    local dir = private_dir("not-a-journal")
    local ok, entries, message = pcall(slashid.read_journal, dir)
    assert.is_true(ok, "read_journal raised: " .. tostring(entries))
    assert.is_nil(entries)
    assert.are.equal("string", type(message))
  end)
end)
