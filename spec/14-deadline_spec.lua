-- request_timeout is checked after a look at the socket, never before
-- (src/deadline.c; review finding K, the command's F1). Each test lets
-- the server answer while nothing drives the transfer, keeps it undriven
-- until well past request_timeout, and then expects the answer that had
-- arrived: the key the server issued, not a timeout. libcurl's own
-- CURLOPT_TIMEOUT threw those answers away (its deadline is checked
-- before it reads). Waits poll for conditions (the emulator's log); the
-- pauses only make sure the deadline has passed.
local H = require "helpers"
local slashid = require "slashid"
local core = require "slashid.core"

local function rotations(org) return H.org(org).rotations end

-- Sleeps until `seconds` have passed since `t0` (core.now() time).
local function until_after(t0, seconds)
  local left = t0 + seconds - core.now()
  if left > 0 then core.sleep(left) end
end

describe("an answer that arrived while nothing drove the transfer is kept", function()
  -- An op (request_timeout 1 s) whose request reached the server, then
  -- left alone until the server answered and 2.5 s had passed.
  local function op_left_alone(org, key)
    H.faults(org, { { delay = 0.3 } })       -- answered normally after 0.3 s
    local t0 = core.now()
    local op = slashid.start_rotate_key(H.opts(org, key, { request_timeout = 1, verify = false }))
    H.wait_for("the request to reach the server", 10, function()
      op:poll()
      return H.requests(org) >= 1
    end)
    -- from here the host does other work: no poll, no wait
    H.wait_for("the server to rotate", 10, function() return rotations(org) >= 1 end)
    until_after(t0, 2.5)                     -- well past request_timeout
    return op
  end

  it("an op nobody polls past request_timeout: rotated, with the server's key", function()
    local org, key = H.new_org()
    local op = op_left_alone(org, key)
    assert.is_true(op:wait(10))
    local result, errors, _, info = op:results()
    assert.are.equal("rotated", info.outcome, H.messages(errors))
    H.assert_key_equal(H.org(org).api_key, result.api_key)
    assert.are.equal(1, info.attempts)
  end)

  it("polled again with op:poll() alone (no op:wait) after the pause: rotated", function()
    local org, key = H.new_org()
    local op = op_left_alone(org, key)
    local polls = 0
    while not op:poll() do
      polls = polls + 1
      assert(polls < 10000, "the op never finished")
      core.sleep(0.001)
    end
    local result, errors, _, info = op:results()
    assert.are.equal("rotated", info.outcome, H.messages(errors))
    H.assert_key_equal(H.org(org).api_key, result.api_key)
  end)

  it("a batch whose on_result stalls past request_timeout keeps the other item's key", function()
    local a, key_a = H.new_org()
    local b, key_b = H.new_org()
    H.faults(b, { { delay = 0.3 } })
    local t0 = core.now()
    local seen = {}
    local summary = slashid.rotate_keys({
      { org_id = a, api_key = key_a },
      { org_id = b, api_key = key_b },
    }, { base_url = H.http_url, concurrency = 2, verify = false, request_timeout = 1,
         keep_results = false,
         on_result = function(i, item)
           seen[i] = item
           if i == 1 then
             -- a slow consumer (an fsync, a full pipe): b's answer arrives meanwhile
             H.wait_for("b to be rotated", 10, function() return rotations(b) >= 1 end)
             until_after(t0, 2.5)
           end
         end })
    assert.is_table(summary)
    H.assert_rotated({ org_id = a, api_key = key_a }, seen[1])
    H.assert_rotated({ org_id = b, api_key = key_b }, seen[2])
  end)

  -- Stops `job` once its request reached the server, until the server
  -- answered and 3 s had passed (its request_timeout is 2 s), then lets
  -- it go on; returns its status, stdout, stderr.
  local function stopped_past_deadline(job, org)
    H.wait_for("the request to reach the server", 10, function() return H.requests(org) >= 1 end)
    local t0 = core.now()
    job.kill("STOP")
    H.wait_for("the server to rotate", 10, function() return rotations(org) >= 1 end)
    until_after(t0, 3)
    job.kill("CONT")
    return job.wait(20)
  end

  it("a blocking rotate_key stopped (SIGSTOP) past request_timeout: rotated and saved", function()
    local org, key = H.new_org()
    H.faults(org, { { delay = 1 } })
    local dir = H.mkdir(H.tmpname("deadline-stop"))
    local save = dir .. "/key"
    H.write(dir .. "/run.lua", ([[
local slashid = require "slashid"
local result, errors, _, info = slashid.rotate_key{ org_id = %q, api_key = %q,
  base_url = %q, request_timeout = 2, verify = false, save_to = %q }
local m = {}
for _, e in ipairs(errors) do m[#m + 1] = e.message end
print(info.outcome, info.saved, table.concat(m, " | "))
]]):format(org, key, H.http_url, save))
    local job = H.spawn(H.lua .. " " .. H.q(dir .. "/run.lua"))
    local status, out, err = stopped_past_deadline(job, org)
    assert.are.equal(0, status, err)
    H.assert_no_secret(out .. err, key)
    assert.matches("^rotated\ttrue", out)
    H.assert_key_equal(H.org(org).api_key, (H.read_file(save):gsub("%s+$", "")))
  end)

  it("slashid-rotate stopped (Ctrl-Z, SIGSTOP) past --request-timeout: exit 0, key saved", function()
    local org, key = H.new_org()
    H.faults(org, { { delay = 1 } })
    local dir = H.mkdir(H.tmpname("deadline-cli"))
    local save = dir .. "/key"
    local job = H.spawn(("SLASHID_API_KEY=%s %s bin/slashid-rotate --org-id %s --base-url %s " ..
                         "--request-timeout 2 --save-to %s"):format(
                         H.q(key), H.lua, H.q(org), H.q(H.http_url), H.q(save)))
    local status, out, err = stopped_past_deadline(job, org)
    H.assert_no_secret(out .. err, key)
    assert.are.equal(0, status, err)
    H.assert_key_equal(H.org(org).api_key, (H.read_file(save):match("([^\t\n]+)%s*$")))
  end)
end)

describe("request_timeout still ends what does not answer", function()
  it("an op whose server stays silent ends unknown (sent), with a timeout, near its deadline", function()
    local org, key = H.new_org()
    H.faults(org, { { delay = 6 } })
    local op = slashid.start_rotate_key(H.opts(org, key, { request_timeout = 0.5, verify = false }))
    local t0 = core.now()
    assert.is_true(op:wait(5), "op:wait did not wake for the deadline")
    local elapsed = core.now() - t0
    local _, errors, _, info = op:results()
    assert.are.equal("unknown", info.outcome)
    assert.are.equal(28, errors[1].curl_code)
    assert.matches("timed out", errors[1].message)
    -- op:wait wakes for the deadline rather than at its own 1 s tick
    assert.is_true(elapsed < 4, ("ended after %.2f s"):format(elapsed))
  end)

  it("an attempt that never got its request out by the deadline is not_rotated and retried", function()
    -- a blackhole accepts nothing: the connect itself is what times out,
    -- a request past its deadline before it was sent goes nowhere
    local org, key = H.new_org()
    local op = slashid.start_rotate_key(H.opts(org, key, {
      base_url = H.http_url, request_timeout = 0.3, verify = false, retries = 1, retry_delay = 0.05 }))
    -- never polled until the deadline has long passed: the last look must
    -- not send the request now (it would be a request after its deadline)
    core.sleep(0.8)
    assert.is_true(op:wait(10))
    local result, errors, _, info = op:results()
    assert.are.equal("rotated", info.outcome, H.messages(errors))
    assert.is_table(result)
    assert.are.equal(1, H.requests(org), "the expired attempt's request went out")
    assert.are.equal(2, info.attempts)
  end)
end)
