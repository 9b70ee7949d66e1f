-- Automatic retries: only where the server cannot have acted (connection
-- phase failures other than TLS verification, and 429 with Retry-After in
-- seconds or HTTP-date form), never after a request may have been acted on;
-- libcurl's own re-send on a dead reused connection is allowed for a GET,
-- never for the PUT.
-- Timing bounds are deliberately loose: this checks correctness, not speed.
local H = require "helpers"
local slashid = require "slashid"

local is_integer = math.type and function(x) return math.type(x) == "integer" end
                 or function(x) return type(x) == "number" and x % 1 == 0 end

local function rotate(org, key, extra)
  return slashid.rotate_key(H.opts(org, key, extra))
end

local closed_url, envelope, http_date = H.closed_url, H.envelope, H.http_date

local blackhole = H.blackhole

describe("retries after connection refused", function()
  for _, n in ipairs({ 0, 1, 3 }) do
    it("retries = " .. n .. " gives " .. (n + 1) .. " attempt(s)", function()
      local org, key = H.new_org()
      local result, errors, _, info = rotate(org, key, { base_url = closed_url(), retries = n })
      assert.is_nil(result)
      assert.are.equal("not_rotated", info.outcome)
      assert.are.equal(n + 1, info.attempts)
      assert.are.equal(0, info.status)
      -- errors describe the last attempt only
      assert.are.equal(1, #errors)
      assert.are.equal(0, errors[1].httpcode)
      assert.are.equal(7, errors[1].curl_code)
      assert.is_nil(info.retry_after)
    end)
  end

  it("retries by default (2 extra attempts)", function()
    local org, key = H.new_org()
    local _, _, _, info = rotate(org, key, { base_url = closed_url() })
    assert.are.equal(3, info.attempts)
  end)

  it("a connect timeout (nothing sent) is retried", function()
    local org, key = H.new_org()
    local base, close = blackhole()
    local ok, result, errors, _, info = pcall(rotate, org, key, {
      base_url = base, connect_timeout = 0.2, retries = 2 })
    close()
    assert(ok, result)
    assert.is_nil(result)
    assert.are.equal("not_rotated", info.outcome)
    assert.are.equal(3, info.attempts)
    assert.are.equal(1, #errors)
    assert.are.equal(28, errors[1].curl_code)
    assert.are.equal(0, H.requests(org))
  end)

  it("check_key retries a refused connection too", function()
    local org, key = H.new_org()
    local ok, errors, info = slashid.check_key(H.opts(org, key, {
      base_url = closed_url(), retries = 2 }))
    assert.is_nil(ok)
    assert.are.equal(3, info.attempts)
    assert.are.equal(1, #errors)
    assert.are.equal(7, errors[1].curl_code)
  end)
end)

describe("TLS verification", function()
  it("a certificate failure is not retried: 1 attempt, curl_code 60, not_rotated", function()
    local org, key = H.new_org()
    local before = H.stats()
    local result, errors, _, info = rotate(org, key, { base_url = H.https_url, retries = 3 })
    assert.is_nil(result)
    assert.are.equal("not_rotated", info.outcome)
    assert.are.equal(1, info.attempts)
    assert.are.equal(0, info.status)
    assert.are.equal(1, #errors)
    assert.are.equal(0, errors[1].httpcode)
    assert.are.equal(60, errors[1].curl_code)
    assert.are.equal(0, H.requests(org))
    assert.are.equal(0, H.org(org).rotations)
    -- one handshake, no further connection
    assert.are.equal(1, H.stats().https_connections - before.https_connections)
  end)

  it("the same server is accepted with ca_file", function()
    local org, key = H.new_org()
    local result, errors, _, info = rotate(org, key, {
      base_url = H.https_url, ca_file = H.ca_file, retries = 3 })
    assert.are.equal("rotated", info.outcome, errors[1] and errors[1].message)
    H.assert_key_equal(H.org(org).api_key, result.api_key)
    assert.are.equal(1, info.attempts)
    assert.are.equal(1, H.requests(org))
  end)
end)

describe("429", function()
  it("is retried, honouring Retry-After: 1 (seconds)", function()
    local org, key = H.new_org()
    H.faults(org, { { status = 429, headers = { ["Retry-After"] = "1" },
                      json = envelope(429, "slow down") } })
    local result, errors, _, info = rotate(org, key, { retry_max_delay = 5 })
    assert.are.equal("rotated", info.outcome)
    H.assert_key_equal(H.org(org).api_key, result.api_key)
    assert.are.same({}, errors)
    assert.are.equal(2, info.attempts)
    assert.are.equal(2, H.requests(org))
    assert.are.equal(1, info.retry_after)
    assert.is_true(info.elapsed >= 0.95, "elapsed " .. info.elapsed)
    assert.is_true(info.elapsed < 2.5, "elapsed " .. info.elapsed)
    local first, second = H.org(org).requests[1], H.org(org).requests[2]
    assert.is_true(second.time - first.time >= 0.9,
                   "the retry came " .. (second.time - first.time) .. " s after")
  end)

  it("is retried at once with Retry-After: 0", function()
    local org, key = H.new_org()
    H.faults(org, { { status = 429, headers = { ["Retry-After"] = "0" },
                      json = envelope(429, "slow down") } })
    local result, _, _, info = rotate(org, key, { retry_max_delay = 5 })
    assert.are.equal("rotated", info.outcome)
    assert.is_table(result)
    assert.are.equal(2, info.attempts)
    assert.are.equal(2, H.requests(org))
    assert.are.equal(0, info.retry_after)
    assert.is_true(info.elapsed < 1, "elapsed " .. info.elapsed)
  end)

  it("honours Retry-After as an HTTP-date", function()
    local org, key = H.new_org()
    H.faults(org, { { status = 429, headers = { ["Retry-After"] = http_date(2) },
                      json = envelope(429, "slow down") } })
    local result, _, _, info = rotate(org, key, { retry_max_delay = 5 })
    assert.are.equal("rotated", info.outcome)
    assert.is_table(result)
    assert.are.equal(2, info.attempts)
    assert.are.equal(2, H.requests(org))
    assert.is_number(info.retry_after)
    -- whole seconds: the date lies 1..2 s ahead when it is read
    assert.is_true(info.retry_after > 0.5 and info.retry_after <= 2.5,
                   "retry_after " .. tostring(info.retry_after))
    assert.is_true(info.elapsed >= 0.9, "elapsed " .. info.elapsed)
    assert.is_true(info.elapsed < 3, "elapsed " .. info.elapsed)
  end)

  it("an HTTP-date in the past means no wait", function()
    local org, key = H.new_org()
    H.faults(org, { { status = 429, headers = { ["Retry-After"] = http_date(-60) } } })
    local _, _, _, info = rotate(org, key, { retry_max_delay = 5 })
    assert.are.equal("rotated", info.outcome)
    assert.are.equal(2, H.requests(org))
    assert.are.equal(0, info.retry_after)
    assert.is_true(info.elapsed < 1, "elapsed " .. info.elapsed)
  end)

  it("a Retry-After above retry_max_delay ends the retries", function()
    local org, key = H.new_org()
    H.faults(org, { { status = 429, headers = { ["Retry-After"] = "4" },
                      json = envelope(429, "come back later") } })
    local result, errors, _, info = rotate(org, key, { retry_max_delay = 1, retries = 3 })
    assert.is_nil(result)
    assert.are.equal("not_rotated", info.outcome)
    assert.are.equal(429, info.status)
    assert.are.equal(1, info.attempts)
    assert.are.equal(1, H.requests(org))
    assert.are.equal(4, info.retry_after)
    assert.are.same({ { httpcode = 429, message = "come back later" } }, errors)
    assert.are.equal("4", info.headers["retry-after"])
    assert.is_true(info.elapsed < 1, "elapsed " .. info.elapsed)
  end)

  it("an HTTP-date beyond retry_max_delay ends the retries", function()
    local org, key = H.new_org()
    H.faults(org, { { status = 429, headers = { ["Retry-After"] = http_date(5) } } })
    local result, _, _, info = rotate(org, key, { retry_max_delay = 1, retries = 3 })
    assert.is_nil(result)
    assert.are.equal("not_rotated", info.outcome)
    assert.are.equal(1, H.requests(org))
    assert.is_true(info.retry_after > 3, "retry_after " .. tostring(info.retry_after))
  end)

  for _, garbage in ipairs({ "soon", "-5", "1.5e9", "Tue, 99 Foo 2024 99:99:99 GMT" }) do
    it("a garbage Retry-After (" .. garbage .. ") falls back to the backoff", function()
      local org, key = H.new_org()
      H.faults(org, { { status = 429, headers = { ["Retry-After"] = garbage } } })
      local result, _, _, info = rotate(org, key, {
        retry_delay = 0.05, retry_max_delay = 0.1, retries = 2 })
      assert.are.equal("rotated", info.outcome)
      assert.is_table(result)
      assert.are.equal(2, info.attempts)
      assert.are.equal(2, H.requests(org))
      assert.is_nil(info.retry_after)
      assert.is_true(info.elapsed < 1, "elapsed " .. info.elapsed)
    end)
  end

  it("429 more than `retries` times ends with the last 429 described", function()
    local org, key = H.new_org()
    H.faults(org, {
      { status = 429, headers = { ["Retry-After"] = "0" }, json = envelope(429, "first") },
      { status = 429, headers = { ["Retry-After"] = "0" }, json = envelope(429, "second") },
      { status = 429, headers = { ["Retry-After"] = "0" }, json = envelope(429, "third") },
      { status = 429, headers = { ["Retry-After"] = "0" }, json = envelope(429, "fourth") },
    })
    local result, errors, _, info = rotate(org, key, { retries = 2 })
    assert.is_nil(result)
    assert.are.equal("not_rotated", info.outcome)
    assert.are.equal(429, info.status)
    assert.are.equal(3, info.attempts)
    assert.are.equal(3, H.requests(org))
    assert.are.same({ { httpcode = 429, message = "third" } }, errors)
    assert.are.equal(1, H.org(org).faults_pending)
    assert.are.equal(0, H.org(org).rotations)
  end)

  it("429 without Retry-After, retried with backoff, then rotated", function()
    local org, key = H.new_org()
    H.faults(org, { { status = 429, ["repeat"] = 2, json = envelope(429, "busy") } })
    local result, errors, _, info = rotate(org, key, { retries = 2 })
    assert.are.equal("rotated", info.outcome)
    H.assert_key_equal(H.org(org).api_key, result.api_key)
    assert.are.same({}, errors)
    assert.are.equal(3, info.attempts)
    assert.are.equal(3, H.requests(org))
    assert.are.equal(1, H.org(org).rotations)
  end)

  it("errors after a retry describe the last attempt only (429 then 500)", function()
    local org, key = H.new_org()
    H.faults(org, {
      { status = 429, headers = { ["Retry-After"] = "0" }, json = envelope(429, "busy") },
      { status = 500, json = envelope(500, "boom") },
    })
    local result, errors, _, info = rotate(org, key, { retries = 5 })
    assert.is_nil(result)
    assert.are.equal("unknown", info.outcome)
    assert.are.equal(500, info.status)
    assert.are.equal(2, info.attempts)
    assert.are.equal(2, H.requests(org))
    assert.are.same({ { httpcode = 500, message = "boom" } }, errors)
    assert.are.equal(0, info.retry_after)          -- the last one received
    assert.is_nil(info.headers["retry-after"])     -- headers: last attempt
  end)

  it("check_key retries a 429 too", function()
    local org, key = H.new_org()
    H.faults(org, { { status = 429, headers = { ["Retry-After"] = "0" } } })
    local ok, errors, info = slashid.check_key(H.opts(org, key))
    assert.is_true(ok)
    assert.are.same({}, errors)
    assert.are.equal(2, info.attempts)
    assert.are.equal(2, H.requests(org))
  end)
end)

describe("never a retry once the server may have acted", function()
  local cases = {
    { "408", { rotate = true, status = 408, json = envelope(408, "consistency timeout") }, 408 },
    { "500", { status = 500, json = envelope(500, "boom") }, 500 },
    { "502", { status = 502, body = "bad gateway" }, 502 },
    { "503", { status = 503, headers = { ["Retry-After"] = "0" },
               json = envelope(503, "unavailable") }, 503 },
    { "504", { status = 504 }, 504 },
    { "a closed connection", { action = "close", rotate = true }, 0 },
    { "a reset connection", { action = "reset", rotate = true }, 0 },
    { "a reset before the body was read", { action = "reset_before_read" }, 0 },
    { "a truncated answer", { action = "truncate", rotate = true }, 200 },
    { "a truncated chunked answer", { action = "truncate_chunked", rotate = true }, 200 },
    { "a timeout", { delay = 2 }, 0, { request_timeout = 0.5 } },
    { "a stall after the headers", { action = "stall_after_headers", stall = 3 }, 200,
      { request_timeout = 0.5 } },
    { "a too-large answer", { action = "huge", size = 100000 }, 200,
      { max_response_bytes = 1000 } },
    { "a too-large chunked answer", { action = "huge", size = 100000, chunked = true }, 200,
      { max_response_bytes = 1000 } },
    { "a 2xx without a key", { rotate = true, status = 200, json = { result = {} } }, 200 },
    { "a 2xx that is not JSON", { status = 200, body = "ok" }, 200 },
  }
  for _, case in ipairs(cases) do
    local name, fault, status, extra = case[1], case[2], case[3], case[4]
    it(name .. ": exactly one request even with retries = 5", function()
      local org, key = H.new_org()
      -- a second fault that a wrong retry would consume and report
      H.faults(org, { fault, { status = 418, json = envelope(418, "retried!") } })
      local opts = { retries = 5 }
      for k, v in pairs(extra or {}) do opts[k] = v end
      local result, errors, _, info = rotate(org, key, opts)
      assert.is_nil(result)
      assert.are.equal("unknown", info.outcome, errors[1] and errors[1].message)
      assert.are.equal(1, info.attempts)
      assert.are.equal(1, H.requests(org))
      assert.are.equal(1, H.org(org).faults_pending)
      assert.are.equal(status, info.status)
      assert.is_true(#errors >= 1)
      for _, e in ipairs(errors) do assert.are_not.equal(418, e.httpcode) end
    end)
  end

  it("a non-retryable 4xx (400) is not retried either", function()
    local org, key = H.new_org()
    H.faults(org, { { status = 400, json = envelope(400, "bad request") } })
    local result, errors, _, info = rotate(org, key, { retries = 5 })
    assert.is_nil(result)
    assert.are.equal("not_rotated", info.outcome)
    assert.are.equal(1, info.attempts)
    assert.are.equal(1, H.requests(org))
    assert.are.same({ { httpcode = 400, message = "bad request" } }, errors)
  end)

  it("a redirect is not retried", function()
    local org, key = H.new_org()
    H.faults(org, { { status = 307, headers = { Location = H.http_url .. "/organizations/api-keys" } } })
    local _, _, _, info = rotate(org, key, { retries = 5 })
    assert.are.equal("not_rotated", info.outcome)
    assert.are.equal(1, info.attempts)
    assert.are.equal(1, H.requests(org))
  end)

  it("check_key does not retry a 500", function()
    local org, key = H.new_org()
    H.faults(org, { { status = 500 } })
    local ok, _, info = slashid.check_key(H.opts(org, key, { retries = 5 }))
    assert.is_nil(ok)
    assert.are.equal(1, info.attempts)
    assert.are.equal(1, H.requests(org))
  end)
end)

describe("libcurl may re-send a GET, never the PUT", function()
  -- The emulator drops the next request on a kept-alive connection
  -- without answering: libcurl's own retry on a fresh connection.
  it("check_key: a dead reused connection is retried by libcurl and answered", function()
    local org, key = H.new_org()
    local c = slashid.new(H.opts(org, key, { retries = 0 }))
    assert.is_true((c:check_key()))          -- leaves a kept connection
    H.faults(org, { { action = "close" } })
    local ok, errors = c:check_key()
    assert.is_true(ok, errors[1] and errors[1].message)
    assert.are.equal(3, H.requests(org))
    c:close()
  end)

  it("rotate_key: the same drop is unknown, and the PUT went out once", function()
    local org, key = H.new_org()
    local c = slashid.new(H.opts(org, key, { retries = 2 }))
    assert.is_true((c:check_key()))
    H.faults(org, { { action = "close", rotate = true } })
    local result, _, _, info = c:rotate_key()
    assert.is_nil(result)
    assert.are.equal("unknown", info.outcome)
    assert.are.equal(2, H.requests(org))    -- the check, then one PUT
    c:close()
  end)
end)

describe("backoff", function()
  it("stays within the sum of the caps (retry_delay 0.2, retries 3)", function()
    local org, key = H.new_org()
    local _, errors, _, info = rotate(org, key, {
      base_url = closed_url(), retries = 3, retry_delay = 0.2, retry_max_delay = 30 })
    assert.are.equal(4, info.attempts)
    assert.are.equal("not_rotated", info.outcome)
    -- full jitter: each wait is within [0, 0.2 * 2^(n-1)]
    assert.is_true(info.elapsed <= 0.2 + 0.4 + 0.8 + 0.5, "elapsed " .. info.elapsed)
    assert.is_true(is_integer(info.attempts))
    assert.are.equal(1, #errors)
  end)

  it("retry_max_delay caps each wait", function()
    local org, key = H.new_org()
    -- uncapped, the waits could sum to 0.05 * (2^8 - 1) = 12.75 s
    local _, _, _, info = rotate(org, key, {
      base_url = closed_url(), retries = 8, retry_delay = 0.05, retry_max_delay = 0.05 })
    assert.are.equal(9, info.attempts)
    assert.is_true(info.elapsed < 1, "elapsed " .. info.elapsed)
  end)

  it("elapsed covers all attempts and their waits", function()
    local org, key = H.new_org()
    H.faults(org, { { status = 429, headers = { ["Retry-After"] = "1" } },
                    { status = 500 } })
    local _, _, _, info = rotate(org, key, { retries = 3, retry_max_delay = 5 })
    assert.are.equal(2, info.attempts)
    assert.is_true(info.elapsed >= 0.95, "elapsed " .. info.elapsed)
  end)
end)
