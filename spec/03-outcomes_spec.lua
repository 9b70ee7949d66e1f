-- Every row of README's "Outcomes" table against the emulator: the outcome,
-- whether a result came back, the `errors` entries (server's own kept as
-- sent, one excerpt entry when there is no envelope, httpcode 0 and
-- curl_code for transport failures), info.status, and how many requests
-- the server really received: exactly one for every `unknown` case and
-- every failure that may not be retried. A key the server issued is
-- handed back whatever failed after it arrived (the rest of the transfer,
-- a debug hook raising while the answer is decoded). Also check_key's
-- true/false/nil.
local H = require "helpers"
local slashid = require "slashid"

local is_integer = math.type and function(x) return math.type(x) == "integer" end
                 or function(x) return type(x) == "number" and x % 1 == 0 end

local function rotate(org, key, extra)
  return slashid.rotate_key(H.opts(org, key, extra))
end

local puts = H.puts

-- Every entry has the documented shape.
local function assert_error_shapes(errors)
  assert.is_table(errors)
  for i, e in ipairs(errors) do
    assert.is_true(is_integer(e.httpcode), "errors[" .. i .. "].httpcode is not an integer")
    assert.is_string(e.message, "errors[" .. i .. "].message is not a string")
  end
end

-- The common shape of a failed call.
local function assert_failed(outcome, result, errors, info, status)
  assert.are.equal(outcome, info.outcome,
                   errors and errors[1] and tostring(errors[1].message))
  assert.is_nil(result)
  assert.is_table(errors)
  assert.is_true(#errors >= 1, "a failure must have at least one errors entry")
  assert_error_shapes(errors)
  assert.is_true(is_integer(info.status))
  assert.are.equal(status, info.status)
end

-- A transport failure: one entry, httpcode 0, a libcurl message, curl_code.
local function assert_transport(errors, curl_code)
  assert.are.equal(1, #errors)
  assert.are.equal(0, errors[1].httpcode)
  assert.is_true(is_integer(errors[1].curl_code), "curl_code is not an integer")
  assert.is_true(errors[1].curl_code > 0)
  assert.is_true(#errors[1].message > 0)
  if curl_code then assert.are.equal(curl_code, errors[1].curl_code) end
end

-- No control characters but tab.
local function assert_printable(s)
  assert.is_nil(s:find("[%z\1-\8\10-\31\127]"),
                ("control character in %q"):format(s))
end

local blackhole = H.blackhole

local function server_errors(code, message)
  return { errors = { { httpcode = code, message = message } } }
end

describe("outcome rotated", function()
  it("a 200 with result.api_key: result returned, errors empty, one request", function()
    local org, key = H.new_org()
    local result, errors, _, info = rotate(org, key)
    assert.are.equal("rotated", info.outcome)
    assert.is_table(result)
    H.assert_key_equal(H.org(org).api_key, result.api_key)
    assert.are.same({}, errors)
    assert.are.equal(200, info.status)
    assert.are.equal(1, H.requests(org))
  end)

  it("any 2xx with a non-empty result.api_key (201) is rotated", function()
    local org, key = H.new_org()
    H.faults(org, { { rotate = true, status = 201,
                      json = { result = { api_key = "{{new_key}}" }, errors = {} } } })
    local result, errors, _, info = rotate(org, key)
    assert.are.equal("rotated", info.outcome)
    H.assert_key_equal(H.org(org).api_key, result.api_key)
    assert.are.same({}, errors)
    assert.are.equal(201, info.status)
    assert.are.equal(1, H.requests(org))
  end)

  it("a whole envelope with a key, arrived before the transfer failed, is handed back (curl_code kept)", function()
    local org, key = H.new_org()
    H.faults(org, { { rotate = true, headers = { ["Content-Length"] = "9999" } } })
    local result, errors, _, info = slashid.rotate_key(H.opts(org, key, { request_timeout = 1.5 }))
    assert.are.equal("rotated", info.outcome, errors[1] and errors[1].message)
    H.assert_key_equal(H.org(org).api_key, result.api_key)
    assert.are.equal(28, errors[1].curl_code)     -- what happened is still said
  end)

  it("an error raised by a debug hook while the answer is decoded never turns a rotation into 'not JSON'", function()
    local lost, fine, raised = 0, 0, 0
    for k = 1, 30 do
      local org, key = H.new_org()
      local armed, live = false, true
      local ok, r = pcall(slashid.rotate_key, H.opts(org, key, { retries = 0,
        debug = function(line)
          if not armed and line:find("^> Content%-Length") then
            armed = true
            local n = 0
            debug.sethook(function()
              n = n + 1
              if live and n == k then live = false; debug.sethook(); error("interrupted!") end
            end, "c")
          end
        end }))
      live = false
      debug.sethook()
      if not ok then
        raised = raised + 1
      elseif r then
        fine = fine + 1
      elseif H.org(org).rotations > 0 then
        lost = lost + 1          -- the server rotated, the call said otherwise
      end
    end
    assert.are.equal(0, lost, ("%d rotations returned without their key"):format(lost))
    assert.is_true(fine > 0)
  end)
end)

describe("outcome not_rotated", function()
  it("connection refused: httpcode 0, curl_code 7, status 0", function()
    local org, key = H.new_org()
    local base = "http://127.0.0.1:" .. H.closed_port()
    local result, errors, pagination, info = rotate(org, key, { base_url = base, retries = 0 })
    assert_failed("not_rotated", result, errors, info, 0)
    assert_transport(errors, 7)
    assert.is_nil(pagination)
    assert.are.equal(0, H.requests(org))
    assert.are.equal(0, H.org(org).rotations)
  end)

  -- Found by `make fuzz` (spec/fuzz/corpus/answer/refused): with no header ever received, answer.c did
  -- pointer arithmetic on NULL (undefined behaviour, reported by UBSan).
  it("connection refused on a first call (no header ever received): info.headers is empty", function()
    local org, key = H.org_with_known_key()
    local result, errors, _, info = slashid.rotate_key(H.opts(org, key, {
      base_url = "http://127.0.0.1:" .. H.closed_port(), retries = 0 }))
    assert.is_nil(result)
    assert.are.equal("not_rotated", info.outcome)
    assert.are.same({}, info.headers)
    assert.are.equal(0, errors[1].httpcode)
  end)

  it("connect timeout: httpcode 0, curl_code 28, status 0", function()
    local org, key = H.new_org()
    local base, close = blackhole()
    local ok, result, errors, pagination, info = pcall(rotate, org, key, {
      base_url = base, connect_timeout = 0.3, retries = 0 })
    close()
    assert(ok, result)
    assert_failed("not_rotated", result, errors, info, 0)
    assert_transport(errors, 28)
    assert.is_nil(pagination)
    assert.are.equal(0, H.requests(org))
  end)

  it("a TLS handshake failure (https to the plain HTTP port)", function()
    local org, key = H.new_org()
    local base = ("https://127.0.0.1:%d"):format(H.emulator.http_port)
    local result, errors, _, info = rotate(org, key, {
      base_url = base, ca_file = H.ca_file, retries = 0 })
    assert_failed("not_rotated", result, errors, info, 0)
    assert_transport(errors, 35)
    assert.are.equal(0, H.requests(org))
    assert.are.equal(0, H.org(org).rotations)
  end)

  it("a TLS certificate failure (no ca_file for the emulator's CA)", function()
    local org, key = H.new_org()
    local result, errors, _, info = rotate(org, key, { base_url = H.https_url, retries = 0 })
    assert_failed("not_rotated", result, errors, info, 0)
    assert_transport(errors, 60)
    assert.are.equal(0, H.requests(org))
  end)

  for _, code in ipairs({ 300, 301, 302, 303, 307, 308 }) do
    it("a " .. code .. " redirect is never followed", function()
      local org, key = H.new_org()
      -- Following it would land on the real endpoint (and rotate the key)
      -- or on a stray path: both show in the emulator's request counts.
      local target = code % 2 == 0 and H.http_url .. "/organizations/api-keys"
                                    or H.http_url .. "/elsewhere"
      H.faults(org, { { status = code, headers = { Location = target } } })
      local before = H.stats().requests
      local result, errors, _, info = rotate(org, key)
      assert_failed("not_rotated", result, errors, info, code)
      assert.are.equal(1, #errors)
      assert.are.equal(code, errors[1].httpcode)
      assert.is_nil(errors[1].curl_code)
      assert.are.equal(target, info.headers["location"])
      assert.are.equal(1, H.requests(org))
      assert.are.equal(1, H.stats().requests - before)
      assert.are.equal(0, H.org(org).rotations)
      assert.are.equal(key, H.org(org).api_key)
    end)
  end

  it("a redirect to a closed port is not followed either", function()
    local org, key = H.new_org()
    local target = "http://127.0.0.1:" .. H.closed_port() .. "/organizations/api-keys"
    H.faults(org, { { status = 307, headers = { Location = target },
                      json = server_errors(307, "moved") } })
    local result, errors, _, info = rotate(org, key)
    assert_failed("not_rotated", result, errors, info, 307)
    -- following it would have ended as a connection failure (curl_code 7)
    assert.are.same({ { httpcode = 307, message = "moved" } }, errors)
    assert.are.equal(1, info.attempts)
    assert.are.equal(1, H.requests(org))
  end)

  for _, code in ipairs({ 400, 401, 403, 404, 409, 422 }) do
    it("a " .. code .. " with an envelope: its errors kept as sent, one request", function()
      local org, key = H.new_org()
      H.faults(org, { { status = code, json = {
        meta = { pagination = { limit = 1, offset = 2, total_count = 3 } },
        errors = { { httpcode = code, message = "refused: " .. code },
                   { httpcode = 499, message = "second entry" } } } } })
      local result, errors, pagination, info = rotate(org, key)
      assert_failed("not_rotated", result, errors, info, code)
      assert.are.same({ { httpcode = code, message = "refused: " .. code },
                        { httpcode = 499, message = "second entry" } }, errors)
      assert.are.same({ limit = 1, offset = 2, total_count = 3 }, pagination)
      assert.are.equal(1, H.requests(org))
      assert.are.equal(0, H.org(org).rotations)
    end)
  end

  it("a real 401 (wrong key) from the endpoint", function()
    local org = H.new_org()
    local result, errors, _, info = rotate(org, "sk_not_the_right_key_at_all")
    assert_failed("not_rotated", result, errors, info, 401)
    assert.are.same({ { httpcode = 401, message = "invalid API key" } }, errors)
    assert.are.equal(1, H.requests(org))
  end)

  it("a 404 without an envelope: one entry with the status and a body excerpt", function()
    local org, key = H.new_org()
    H.faults(org, { { status = 404, content_type = "text/html",
                      body = "<html>no such route</html>" } })
    local result, errors, _, info = rotate(org, key)
    assert_failed("not_rotated", result, errors, info, 404)
    assert.are.equal(1, #errors)
    assert.are.equal(404, errors[1].httpcode)
    assert.matches("no such route", errors[1].message, 1, true)
    assert.are.equal(1, H.requests(org))
  end)

  it("a 4xx whose envelope has no errors entry still gives one entry", function()
    local org, key = H.new_org()
    H.faults(org, { { status = 400, body = '{"errors":[],"result":null}' } })
    local result, errors, _, info = rotate(org, key)
    assert_failed("not_rotated", result, errors, info, 400)
    assert.are.equal(1, #errors)
    assert.are.equal(400, errors[1].httpcode)
    assert.are.equal(1, H.requests(org))
  end)
end)

describe("outcome unknown", function()
  it("408 after the server really rotated the key", function()
    local org, key = H.new_org()
    H.faults(org, { { rotate = true, status = 408,
                      json = server_errors(408, "consistency level not reached") } })
    local result, errors, _, info = rotate(org, key)
    assert_failed("unknown", result, errors, info, 408)
    assert.are.same({ { httpcode = 408, message = "consistency level not reached" } }, errors)
    assert.are.equal(1, H.requests(org))
    assert.are.equal(1, H.org(org).rotations)
    assert.are_not.equal(key, H.org(org).api_key)
  end)

  for _, code in ipairs({ 500, 502, 503, 504 }) do
    it("a " .. code .. " with an envelope keeps the server's entries as sent", function()
      local org, key = H.new_org()
      H.faults(org, { { status = code, json = {
        errors = { { httpcode = code, message = "upstream trouble" },
                   { httpcode = 418, message = "another one" } } } } })
      local result, errors, _, info = rotate(org, key)
      assert_failed("unknown", result, errors, info, code)
      assert.are.same({ { httpcode = code, message = "upstream trouble" },
                        { httpcode = 418, message = "another one" } }, errors)
      assert.are.equal(1, H.requests(org))
    end)

    it("a " .. code .. " without an envelope: one entry, status and excerpt", function()
      local org, key = H.new_org()
      H.faults(org, { { status = code, content_type = "text/plain",
                        body = "gateway says no (" .. code .. ")" } })
      local result, errors, pagination, info = rotate(org, key)
      assert_failed("unknown", result, errors, info, code)
      assert.are.equal(1, #errors)
      assert.are.equal(code, errors[1].httpcode)
      assert.is_nil(errors[1].curl_code)
      assert.matches("gateway says no (" .. code .. ")", errors[1].message, 1, true)
      assert.is_nil(pagination)
      assert.are.equal(1, H.requests(org))
    end)
  end

  it("a 500 with an empty body: one entry with the status", function()
    local org, key = H.new_org()
    H.faults(org, { { status = 500 } })
    local result, errors, _, info = rotate(org, key)
    assert_failed("unknown", result, errors, info, 500)
    assert.are.equal(1, #errors)
    assert.are.equal(500, errors[1].httpcode)
    assert.are.equal(1, H.requests(org))
  end)

  it("a 500 whose envelope has an empty errors list still gives one entry", function()
    local org, key = H.new_org()
    H.faults(org, { { status = 500, body = '{"errors":[],"result":null}' } })
    local result, errors, _, info = rotate(org, key)
    assert_failed("unknown", result, errors, info, 500)
    assert.are.equal(1, #errors)
    assert.are.equal(500, errors[1].httpcode)
    assert.are.equal(1, H.requests(org))
  end)

  it("the excerpt replaces control characters other than tab", function()
    local org, key = H.new_org()
    H.faults(org, { { status = 500, content_type = "text/plain",
                      body = "first\r\nsecond\0third\tfourth\27[0m\127end" } })
    local result, errors, _, info = rotate(org, key)
    assert_failed("unknown", result, errors, info, 500)
    assert.are.equal(1, #errors)
    local m = errors[1].message
    assert_printable(m)
    assert.matches("third\tfourth", m, 1, true)
    for _, word in ipairs({ "first", "second", "end" }) do
      assert.matches(word, m, 1, true)
    end
    assert.are.equal(1, H.requests(org))
  end)

  it("the excerpt of a 1000-byte body is at most 200 bytes", function()
    local org, key = H.new_org()
    local body = "BEGIN" .. ("Z"):rep(990) .. "TAIL!"
    assert(#body == 1000)
    H.faults(org, { { status = 502, content_type = "text/plain", body = body } })
    local result, errors, _, info = rotate(org, key)
    assert_failed("unknown", result, errors, info, 502)
    assert.are.equal(1, #errors)
    local m = errors[1].message
    local excerpt = m:match("BEGIN.*$")
    assert.is_string(excerpt, "the excerpt does not start with the body: " .. m)
    assert.is_true(#excerpt <= 200, "excerpt of " .. #excerpt .. " bytes")
    assert.is_nil(m:find("TAIL!", 1, true))
    assert.is_true(#m <= 200 + 100, "message of " .. #m .. " bytes")
    assert.are.equal(1, H.requests(org))
  end)

  it("request_timeout expiring after the request was sent: curl_code 28", function()
    local org, key = H.new_org()
    H.faults(org, { { delay = 2, rotate = true, status = 200,
                      json = { result = { api_key = "{{new_key}}" } } } })
    local result, errors, _, info = rotate(org, key, { request_timeout = 0.5 })
    assert_failed("unknown", result, errors, info, 0)
    assert_transport(errors, 28)
    assert.is_true(info.elapsed < 1.8, "elapsed " .. info.elapsed)
    assert.are.equal(1, H.requests(org))
  end)

  it("the connection closed (FIN) after the request was read", function()
    local org, key = H.new_org()
    H.faults(org, { { action = "close", rotate = true } })
    local result, errors, _, info = rotate(org, key)
    assert_failed("unknown", result, errors, info, 0)
    assert_transport(errors)
    assert.are.equal(1, H.requests(org))
    assert.are.equal(1, H.org(org).rotations)
  end)

  it("the connection reset (RST) after the request was read", function()
    local org, key = H.new_org()
    H.faults(org, { { action = "reset", rotate = true } })
    local result, errors, _, info = rotate(org, key)
    assert_failed("unknown", result, errors, info, 0)
    assert_transport(errors)
    assert.are.equal(1, H.requests(org))
  end)

  it("a close on a reused keep-alive connection is not resent by libcurl", function()
    -- libcurl by itself resends a request when a reused connection dies
    -- before any answer byte; the server may have acted on the first one.
    local warm_org, warm_key = H.new_org()
    local ok = slashid.check_key(H.opts(warm_org, warm_key))
    assert.is_true(ok)
    local org, key = H.new_org()
    H.faults(org, { { action = "close", rotate = true } })
    local result, errors, _, info = rotate(org, key)
    assert_failed("unknown", result, errors, info, 0)
    assert_transport(errors)
    assert.are.equal(1, H.requests(org))
    assert.are.equal(1, H.org(org).rotations)
  end)

  it("the connection reset before the request body was read", function()
    local org, key = H.new_org()
    H.faults(org, { { action = "reset_before_read" } })
    local result, errors, _, info = rotate(org, key)
    assert_failed("unknown", result, errors, info, 0)
    assert_transport(errors)
    assert.are.equal(1, H.requests(org))
  end)

  it("a truncated body (Content-Length promised, half sent)", function()
    local org, key = H.new_org()
    H.faults(org, { { action = "truncate", rotate = true } })
    local result, errors, _, info = rotate(org, key)
    assert_failed("unknown", result, errors, info, 200)
    assert_transport(errors)
    assert.are.equal(1, H.requests(org))
    assert.are.equal(1, H.org(org).rotations)
    -- the new key is in the half that was sent: it must not leak
    H.assert_no_secret(H.flatten(errors, info), H.org(org).api_key)
  end)

  it("a truncated chunked body (no terminating chunk)", function()
    local org, key = H.new_org()
    H.faults(org, { { action = "truncate_chunked", rotate = true } })
    local result, errors, _, info = rotate(org, key)
    assert_failed("unknown", result, errors, info, 200)
    assert_transport(errors)
    assert.are.equal(1, H.requests(org))
  end)

  it("a stall after the headers ends at request_timeout", function()
    local org, key = H.new_org()
    H.faults(org, { { action = "stall_after_headers", stall = 3 } })
    local result, errors, _, info = rotate(org, key, { request_timeout = 0.5 })
    assert_failed("unknown", result, errors, info, 200)
    assert_transport(errors, 28)
    assert.are.equal(1, H.requests(org))
  end)

  it("a 2xx that is not JSON: one entry with status and excerpt", function()
    local org, key = H.new_org()
    H.faults(org, { { rotate = true, status = 200, content_type = "text/plain",
                      body = "rotation done, have a nice day" } })
    local result, errors, _, info = rotate(org, key)
    assert_failed("unknown", result, errors, info, 200)
    assert.are.equal(1, #errors)
    assert.are.equal(200, errors[1].httpcode)
    assert.is_nil(errors[1].curl_code)
    assert.matches("have a nice day", errors[1].message, 1, true)
    assert.are.equal(1, H.requests(org))
  end)

  it("a 2xx JSON that is not an object", function()
    local org, key = H.new_org()
    H.faults(org, { { status = 200, body = '["{{new_key}}"]' } })
    local result, errors, _, info = rotate(org, key)
    assert_failed("unknown", result, errors, info, 200)
    assert.are.equal(1, #errors)
    assert.are.equal(200, errors[1].httpcode)
    assert.are.equal(1, H.requests(org))
  end)

  it("a 2xx JSON without result", function()
    local org, key = H.new_org()
    H.faults(org, { { status = 200, body = '{"errors":[],"meta":null}' } })
    local result, errors, _, info = rotate(org, key)
    assert_failed("unknown", result, errors, info, 200)
    assert.are.equal(1, #errors)
    assert.are.equal(200, errors[1].httpcode)
    assert.are.equal(1, H.requests(org))
  end)

  local bad_keys = {
    { "empty", '""' }, { "a number", "12345" }, { "null", "null" },
    { "an object", '{"k":"v"}' }, { "false", "false" },
  }
  for _, case in ipairs(bad_keys) do
    it("a 2xx whose result.api_key is " .. case[1], function()
      local org, key = H.new_org()
      H.faults(org, { { status = 200,
                        body = '{"errors":[],"result":{"api_key":' .. case[2] .. '}}' } })
      local result, errors, _, info = rotate(org, key)
      assert_failed("unknown", result, errors, info, 200)
      assert.are.equal(1, #errors)
      assert.are.equal(200, errors[1].httpcode)
      assert.are.equal(1, H.requests(org))
    end)
  end

  it("a 2xx without a key keeps the server's errors entries", function()
    local org, key = H.new_org()
    H.faults(org, { { status = 200, json = server_errors(200, "partial success") } })
    local result, errors, _, info = rotate(org, key)
    assert_failed("unknown", result, errors, info, 200)
    assert.are.equal(200, errors[1].httpcode)
    assert.are.equal("partial success", errors[1].message)
    assert.are.equal(1, H.requests(org))
  end)

  it("a body larger than max_response_bytes", function()
    local org, key = H.new_org()
    H.faults(org, { { action = "huge", size = 200000 } })
    local result, errors, _, info = rotate(org, key, { max_response_bytes = 4096 })
    assert_failed("unknown", result, errors, info, 200)
    assert_transport(errors)
    assert.are.equal(1, H.requests(org))
  end)

  it("a chunked body larger than max_response_bytes (no length announced)", function()
    local org, key = H.new_org()
    H.faults(org, { { action = "huge", size = 200000, chunked = true } })
    local result, errors, _, info = rotate(org, key, { max_response_bytes = 4096 })
    assert_failed("unknown", result, errors, info, 200)
    assert_transport(errors)
    assert.matches("max_response_bytes", errors[1].message, 1, true)
    assert.are.equal(1, H.requests(org))
  end)

  it("a plain rotation answer with max_response_bytes = 10", function()
    local org, key = H.new_org()
    local result, errors, _, info = rotate(org, key, { max_response_bytes = 10 })
    assert_failed("unknown", result, errors, info, 200)
    assert_transport(errors)
    assert.are.equal(1, H.requests(org))
    -- the server did rotate: this is exactly why the outcome is unknown
    assert.are.equal(1, H.org(org).rotations)
    H.assert_no_secret(H.flatten(errors, info), H.org(org).api_key)
  end)
end)

describe("errors entries", function()
  for _, code in ipairs({ 409, 500 }) do
    it("null or missing httpcode/message are normalized (" .. code .. ")", function()
      local org, key = H.new_org()
      H.faults(org, { { status = code, body = '{"errors":[' ..
        '{"httpcode":null,"message":null},' ..
        '{"message":"only a message"},' ..
        '{"httpcode":' .. code .. '},' ..
        '{"httpcode":"409","message":42},' ..
        '{"httpcode":12.5,"message":["x"]},' ..
        '{}' ..
        '],"result":null}' } })
      local result, errors = rotate(org, key)
      assert.is_nil(result)
      assert.are.equal(6, #errors)
      assert_error_shapes(errors)
      assert.are.equal("only a message", errors[2].message)
      assert.are.equal(code, errors[3].httpcode)
      assert.are.equal(1, H.requests(org))
    end)
  end

  it("the request's key echoed in a server message is redacted", function()
    local org, key = H.new_org()
    H.faults(org, { { status = 401, json = server_errors(401,
      "the key {{old_key}} is not valid for this organization") } })
    local result, errors, _, info = rotate(org, key)
    assert_failed("not_rotated", result, errors, info, 401)
    assert.are.equal(1, #errors)
    local m = errors[1].message
    H.assert_no_secret(m, key)
    assert.matches("^the key .+ is not valid for this organization$", m)
    H.assert_no_secret(H.flatten(errors, info), key)
  end)

  it("the request's key echoed in a body excerpt or header is redacted", function()
    local org, key = H.new_org()
    H.faults(org, { { status = 503, content_type = "text/plain",
                      headers = { ["X-Echo"] = "{{old_key}}" },
                      body = "upstream rejected {{old_key}} sorry" } })
    local result, errors, _, info = rotate(org, key)
    assert_failed("unknown", result, errors, info, 503)
    assert.are.equal(1, #errors)
    assert.matches("upstream rejected", errors[1].message, 1, true)
    assert.matches("sorry", errors[1].message, 1, true)
    H.assert_no_secret(H.flatten(errors, info), key)
  end)
end)

describe("slashid.check_key outcomes", function()
  it("true for a 2xx, with an empty errors list and info", function()
    local org, key = H.new_org()
    local ok, errors, info = slashid.check_key(H.opts(org, key))
    assert.is_true(ok)
    assert.are.same({}, errors)
    assert.are.equal(200, info.status)
    assert.are.equal(1, info.attempts)
    assert.are.equal(1, H.requests(org))
    assert.are.equal("GET", H.org(org).requests[1].method)
    assert.are.equal("/organizations/config", H.org(org).requests[1].path)
    assert.are.equal(0, H.org(org).rotations)
  end)

  it("false for a 401 (the key is refused)", function()
    local org = H.new_org()
    local ok, errors, info = slashid.check_key(H.opts(org, "sk_some_dead_key_value"))
    assert.is_false(ok)
    assert.is_true(#errors >= 1)
    assert_error_shapes(errors)
    assert.are.equal(401, errors[1].httpcode)
    assert.are.equal(401, info.status)
    assert.are.equal(1, H.requests(org))
  end)

  it("false for a 403", function()
    local org, key = H.new_org()
    H.faults(org, { { status = 403, json = server_errors(403, "forbidden") } })
    local ok, errors, info = slashid.check_key(H.opts(org, key))
    assert.is_false(ok)
    assert.are.same({ { httpcode = 403, message = "forbidden" } }, errors)
    assert.are.equal(403, info.status)
    assert.are.equal(1, H.requests(org))
  end)

  it("nil for a 500", function()
    local org, key = H.new_org()
    H.faults(org, { { status = 500, json = server_errors(500, "oops") } })
    local ok, errors, info = slashid.check_key(H.opts(org, key))
    assert.is_nil(ok)
    assert.are.same({ { httpcode = 500, message = "oops" } }, errors)
    assert.are.equal(500, info.status)
    assert.are.equal(1, H.requests(org))
  end)

  it("nil for a transport failure (connection refused)", function()
    local org, key = H.new_org()
    local ok, errors, info = slashid.check_key(H.opts(org, key, {
      base_url = "http://127.0.0.1:" .. H.closed_port(), retries = 0 }))
    assert.is_nil(ok)
    assert_transport(errors, 7)
    assert.are.equal(0, info.status)
    assert.are.equal(1, info.attempts)
  end)

  it("nil for a request_timeout expiring", function()
    local org, key = H.new_org()
    H.faults(org, { { delay = 2 } })
    local ok, errors, info = slashid.check_key(H.opts(org, key, { request_timeout = 0.5 }))
    assert.is_nil(ok)
    assert_transport(errors, 28)
    assert.are.equal(0, info.status)
    assert.are.equal(1, H.requests(org))
  end)
end)
