-- Secrets: neither the old nor the new API key shows up in the `debug`
-- trace, in errors, in info (headers included), in argument error
-- messages; a debug function that raises does not break a call.
local H = require "helpers"
local slashid = require "slashid"

local org_with_known_key = H.org_with_known_key
local tracer = H.tracer

local function text(lines) return table.concat(lines, "\n") end

local function has_line(lines, pattern)
  for _, l in ipairs(lines) do
    if l:find(pattern) then return true end
  end
  return false
end

local function count_redacted_key_headers(lines)
  local n = 0
  for _, l in ipairs(lines) do
    if l:find("SlashID%-API%-Key:") then
      assert.matches("SlashID%-API%-Key: <redacted>$", l)
      n = n + 1
    end
  end
  return n
end

local messages = H.messages

local function https(extra)
  local o = { base_url = H.https_url, ca_file = H.ca_file }
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end

describe("the debug trace", function()
  for _, transport in ipairs({ "HTTP", "HTTPS" }) do
    it("over " .. transport .. ": gets lines, the key header redacted, neither key present", function()
      local org, key = org_with_known_key()
      local debug, lines = tracer()
      local extra = { debug = debug }
      if transport == "HTTPS" then extra = https(extra) end
      local result, errors, _, info = slashid.rotate_key(H.opts(org, key, extra))
      assert.are.equal("rotated", info.outcome, messages(errors))
      assert.is_true(#lines > 3)
      assert.is_true(has_line(lines, "^> SlashID%-API%-Key: <redacted>$"))
      assert.are.equal(1, count_redacted_key_headers(lines))
      assert.is_true(has_line(lines, "PUT /organizations/api%-keys"))
      -- the answer was traced (its status line at least)
      assert.is_true(has_line(lines, "HTTP/1%.1 200"))
      local all = text(lines)
      H.assert_no_secret(all, key)
      H.assert_no_secret(all, result.api_key)
    end)
  end

  it("hides the new key when the answer body is traced", function()
    local org, key = org_with_known_key()
    local debug, lines = tracer()
    local result, _, _, info = slashid.rotate_key(H.opts(org, key, { debug = debug }))
    assert.are.equal("rotated", info.outcome)
    local body_lines = {}
    for _, l in ipairs(lines) do
      if l:find('"api_key"', 1, true) then body_lines[#body_lines + 1] = l end
    end
    -- the body shows up in the trace (with the member), its value hidden
    assert.is_true(#body_lines >= 1, "the answer body is not in the trace")
    for _, l in ipairs(body_lines) do H.assert_no_secret(l, result.api_key) end
  end)

  it("hides the new key in an answer that arrives one byte at a time", function()
    local org, key = org_with_known_key()
    H.faults(org, { { rotate = true, action = "drip", interval = 0.0005 } })
    local debug, lines = tracer()
    local result, errors, _, info = slashid.rotate_key(H.opts(org, key, { debug = debug }))
    assert.are.equal("rotated", info.outcome, messages(errors))
    H.assert_key_equal(H.org(org).api_key, result.api_key)
    H.assert_no_secret(text(lines), result.api_key)
    H.assert_no_secret(text(lines), key)
  end)

  it("hides the new key in a chunked answer", function()
    local org, key = org_with_known_key()
    H.faults(org, { { rotate = true, chunked = true } })
    local debug, lines = tracer()
    local result, errors, _, info = slashid.rotate_key(H.opts(org, key, { debug = debug }))
    assert.are.equal("rotated", info.outcome, messages(errors))
    H.assert_no_secret(text(lines), result.api_key)
  end)

  it("hides the new key when the server also quotes it elsewhere in the body", function()
    local org, key = org_with_known_key()
    H.faults(org, { { rotate = true, status = 200, body =
      '{"result":{"api_key":"{{new_key}}"},"errors":[],"note":"issued {{new_key}}"}' } })
    local debug, lines = tracer()
    local result, errors, pagination, info =
      slashid.rotate_key(H.opts(org, key, { debug = debug }))
    assert.are.equal("rotated", info.outcome, messages(errors))
    H.assert_key_equal(H.org(org).api_key, result.api_key)
    assert.is_true(has_line(lines, "issued"), "the body is not in the trace")
    H.assert_no_secret(text(lines), result.api_key)
  end)

  it("hides the new key sent by verify (the GET carries it)", function()
    local org, key = org_with_known_key()
    local debug, lines = tracer()
    local result, errors, _, info =
      slashid.rotate_key(H.opts(org, key, { debug = debug, verify = true }))
    assert.are.equal("rotated", info.outcome, messages(errors))
    assert.is_true(info.verified)
    assert.is_true(has_line(lines, "GET /organizations/config"))
    assert.are.equal(2, count_redacted_key_headers(lines))
    H.assert_no_secret(text(lines), key)
    H.assert_no_secret(text(lines), result.api_key)
  end)

  it("of slashid.check_key hides the key, over HTTP and HTTPS", function()
    local org, key = org_with_known_key()
    for _, extra in ipairs({ {}, https() }) do
      local debug, lines = tracer()
      extra.debug = debug
      local ok, errors = slashid.check_key(H.opts(org, key, extra))
      assert.is_true(ok, messages(errors))
      assert.is_true(has_line(lines, "^> SlashID%-API%-Key: <redacted>$"))
      assert.is_true(has_line(lines, "GET /organizations/config"))
      H.assert_no_secret(text(lines), key)
    end
  end)

  it("of client:check_key and client:rotate_key hides default and adopted keys", function()
    local org, key = org_with_known_key()
    local debug, lines = tracer()
    local client = slashid.new(H.opts(org, key, { debug = debug }))
    local r1 = assert(client:rotate_key())
    local r2 = assert(client:rotate_key())
    assert.is_true((client:check_key()))
    assert.are.equal(3, count_redacted_key_headers(lines))
    local all = text(lines)
    H.assert_no_secret(all, key)
    H.assert_no_secret(all, r1.api_key)
    H.assert_no_secret(all, r2.api_key)
    client:close()
  end)

  it("hides the old key quoted by the server in an error body", function()
    local org, key = org_with_known_key()
    H.faults(org, { { status = 401, json = { errors = {
      { httpcode = 401, message = "key {{old_key}} is not valid" } } } } })
    local debug, lines = tracer()
    local result, errors, pagination, info =
      slashid.rotate_key(H.opts(org, key, { debug = debug }))
    assert.is_nil(result)
    assert.are.equal("not_rotated", info.outcome)
    assert.is_true(#lines > 0)
    H.assert_no_secret(text(lines), key)
    H.assert_no_secret(H.flatten(result, errors, pagination, info), key)
  end)

  it("a debug function that raises does not break the call", function()
    local org, key = org_with_known_key()
    local calls = 0
    local result, errors, _, info = slashid.rotate_key(H.opts(org, key, {
      debug = function() calls = calls + 1; error("debug function failed") end }))
    assert.is_true(calls >= 1)
    assert.are.equal("rotated", info.outcome, messages(errors))
    assert.are.same({}, errors)
    H.assert_key_equal(H.org(org).api_key, result.api_key)
  end)

  it("a debug function that raises a non-string value does not break verify either", function()
    local org, key = org_with_known_key()
    local result, errors, _, info = slashid.rotate_key(H.opts(org, key, {
      verify = true, debug = function() error({ "a table" }) end }))
    assert.are.equal("rotated", info.outcome, messages(errors))
    assert.is_true(info.verified)
    H.assert_key_equal(H.org(org).api_key, result.api_key)
    -- and the next call, without debug, is fine
    assert.is_true((slashid.check_key(H.opts(org, result.api_key))))
  end)

  it("a raising debug function on a client does not break the client", function()
    local org, key = org_with_known_key()
    local client = slashid.new(H.opts(org, key, { debug = function() error("no") end }))
    for _ = 1, 3 do
      local _, errors, _, info = client:rotate_key()
      assert.are.equal("rotated", info.outcome, messages(errors))
    end
    assert.are.equal(3, H.org(org).rotations)
    client:close()
  end)
end)

describe("a server echoing the key", function()
  it("in an errors message: redacted in errors", function()
    local org, key = org_with_known_key()
    H.faults(org, { { status = 400, json = { errors = {
      { httpcode = 400, message = "bad request for {{old_key}}" },
      { httpcode = 400, message = "{{old_key}}" } } } } })
    local result, errors, pagination, info = slashid.rotate_key(H.opts(org, key))
    assert.is_nil(result)
    assert.are.equal("not_rotated", info.outcome)
    assert.are.equal(2, #errors)
    -- kept as sent, apart from the key
    assert.matches("^bad request for ", errors[1].message)
    H.assert_no_secret(H.flatten(result, errors, pagination, info), key)
  end)

  it("in a non-JSON error body: redacted in the excerpt", function()
    local org, key = org_with_known_key()
    H.faults(org, { { status = 500, content_type = "text/plain",
                      body = "internal error while handling {{old_key}}\r\n" } })
    local result, errors, pagination, info = slashid.rotate_key(H.opts(org, key))
    assert.is_nil(result)
    assert.are.equal("unknown", info.outcome)
    assert.are.equal(1, #errors)
    assert.matches("internal error while handling", errors[1].message, 1, true)
    H.assert_no_secret(H.flatten(result, errors, pagination, info), key)
  end)

  it("in a 2xx answer without a usable key: redacted in the excerpt", function()
    local org, key = org_with_known_key()
    H.faults(org, { { status = 200, body = "OK {{old_key}}" } })
    local result, errors, pagination, info = slashid.rotate_key(H.opts(org, key))
    assert.is_nil(result)
    assert.are.equal("unknown", info.outcome)
    assert.is_true(#errors >= 1)
    H.assert_no_secret(H.flatten(result, errors, pagination, info), key)
  end)

  it("a new key quoted in an errors message of a successful answer: not in errors", function()
    local org, key = org_with_known_key()
    H.faults(org, { { rotate = true, status = 200, json = {
      result = { api_key = "{{new_key}}" },
      errors = { { httpcode = 200, message = "issued {{new_key}}, revoked {{old_key}}" } } } } })
    local result, errors, pagination, info = slashid.rotate_key(H.opts(org, key))
    assert.are.equal("rotated", info.outcome)
    H.assert_key_equal(H.org(org).api_key, result.api_key)
    assert.are.equal(1, #errors)
    assert.matches("^issued ", errors[1].message)
    H.assert_no_secret(H.flatten(errors, pagination, info), key)
    H.assert_no_secret(H.flatten(errors, pagination, info), result.api_key)
  end)

  it("in a response header (literal, the emulator does not substitute headers): redacted in info.headers and the trace", function()
    local org, key = org_with_known_key()
    H.faults(org, { { status = 401, headers = { ["X-Echo-Key"] = key,
                                                ["X-Echo-Sentence"] = "you sent " .. key } } })
    local debug, lines = tracer()
    local result, errors, pagination, info =
      slashid.rotate_key(H.opts(org, key, { debug = debug }))
    assert.is_nil(result)
    assert.are.equal(401, info.status)
    assert.is_string(info.headers["x-echo-key"])
    assert.is_string(info.headers["x-echo-sentence"])
    assert.matches("^you sent ", info.headers["x-echo-sentence"])
    H.assert_no_secret(H.flatten(result, errors, pagination, info), key)
    assert.is_true(has_line(lines, "^< X%-Echo%-Key:"))
    H.assert_no_secret(text(lines), key)
  end)

  it("in a response header of a successful rotation: redacted in info.headers", function()
    local org, key = org_with_known_key()
    H.faults(org, { { rotate = true, headers = { ["X-Previous-Key"] = key } } })
    local result, errors, pagination, info = slashid.rotate_key(H.opts(org, key))
    assert.are.equal("rotated", info.outcome, messages(errors))
    assert.is_string(info.headers["x-previous-key"])
    H.assert_no_secret(H.flatten(errors, pagination, info), key)
    H.assert_no_secret(H.flatten(result), key)
  end)

  it("in check_key's answer: redacted in errors and info", function()
    local org, key = org_with_known_key()
    H.faults(org, { { status = 403, headers = { ["X-Key"] = key },
      json = { errors = { { httpcode = 403, message = "{{old_key}} forbidden" } } } } })
    local ok, errors, info = slashid.check_key(H.opts(org, key))
    assert.is_false(ok)
    assert.is_true(#errors >= 1)
    H.assert_no_secret(H.flatten(errors, info), key)
  end)
end)

describe("failure paths", function()
  local cases = {
    { name = "401", fault = { status = 401 }, outcome = "not_rotated" },
    { name = "500 echoing the key", outcome = "unknown",
      fault = { status = 500, json = { errors = { { httpcode = 500, message = "{{old_key}}" } } } } },
    { name = "a dropped connection", fault = { action = "reset" }, outcome = "unknown" },
    { name = "a truncated answer", fault = { rotate = true, action = "truncate" }, outcome = "unknown" },
    { name = "a timeout", outcome = "unknown", extra = { request_timeout = 0.3 },
      fault = { action = "stall_after_headers", stall = 2 } },
    { name = "a refused connection", outcome = "not_rotated", refused = true },
  }
  for _, case in ipairs(cases) do
    it("return no key, with a debug trace too: " .. case.name, function()
      local org, key = org_with_known_key()
      if case.fault then H.faults(org, { case.fault }) end
      local debug, lines = tracer()
      local extra = { debug = debug, retries = 0 }
      for k, v in pairs(case.extra or {}) do extra[k] = v end
      if case.refused then extra.base_url = "http://127.0.0.1:" .. H.closed_port() end
      local values = table.pack and table.pack(slashid.rotate_key(H.opts(org, key, extra)))
                     or { slashid.rotate_key(H.opts(org, key, extra)) }
      local result, errors, _, info = values[1], values[2], values[3], values[4]
      assert.is_nil(result)
      assert.are.equal(case.outcome, info.outcome)
      assert.is_true(#errors >= 1)
      local all = H.flatten(values[1], values[2], values[3], values[4])
      H.assert_no_secret(all, key)
      H.assert_no_secret(text(lines), key)
      -- whatever key the server holds now (a truncated answer rotated it)
      local current = H.org(org).api_key
      if current ~= key then
        H.assert_no_secret(all, current)
        H.assert_no_secret(text(lines), current)
      end
    end)
  end

  it("check_key failures return no key: 500, refused, timeout", function()
    local org, key = org_with_known_key()
    H.faults(org, { { status = 500, body = "{{old_key}}" },
                    { action = "stall_after_headers", stall = 2 } })
    local ok1, e1, i1 = slashid.check_key(H.opts(org, key, { retries = 0 }))
    local ok2, e2, i2 = slashid.check_key(H.opts(org, key, { retries = 0, request_timeout = 0.3 }))
    local ok3, e3, i3 = slashid.check_key(H.opts(org, key, {
      retries = 0, base_url = "http://127.0.0.1:" .. H.closed_port() }))
    assert.is_nil(ok1)
    assert.is_nil(ok2)
    assert.is_nil(ok3)
    assert.is_true(#e1 >= 1 and #e2 >= 1 and #e3 >= 1)
    H.assert_no_secret(H.flatten(e1, i1, e2, i2, e3, i3), key)
  end)
end)

describe("argument errors", function()
  local function message_of(fn, ...)
    local ok, err = pcall(fn, ...)
    assert.is_false(ok, "expected an error")
    assert.is_string(err)
    assert.matches("slashid: ", err, 1, true)
    return err
  end

  it("never quote the key, whatever option is wrong", function()
    local org, key = org_with_known_key()
    local bad = {
      { api_key = key .. "\n" },
      { api_key = key .. "\0" },
      { api_key = key .. "\r\nX-Injected: 1" },
      { org_id = key .. "\n" },
      { consistency = key },
      { timeout = key },
      { timeout = 0 },
      { base_url = key },
      { base_url = "http://example.com/" .. key },
      { base_url = "https://user:" .. key .. "@example.com" },
      { connect_timeout = key },
      { request_timeout = key },
      { retries = key },
      { retry_delay = key },
      { max_response_bytes = key },
      { save_to = key .. "\0" },
      { verify = key },
      { user_agent = key .. "\n" },
      { debug = key },
      { ca_file = true },
      { bogus_option = key },
    }
    for i, change in ipairs(bad) do
      local opts = H.opts(org, key, change)
      local msg = message_of(slashid.rotate_key, opts)
      H.assert_no_secret(msg, key)
      msg = message_of(slashid.new, opts)
      H.assert_no_secret(msg, key)
      local client = slashid.new(H.opts(org, key))
      msg = message_of(client.rotate_key, client, change)
      H.assert_no_secret(msg, key)
      client:close()
      assert(i)
    end
    assert.are.equal(0, H.requests(org))
  end)

  it("never quote the key: missing org_id, check_key's refused options", function()
    local _, key = org_with_known_key()
    H.assert_no_secret(message_of(slashid.rotate_key, { api_key = key, base_url = H.http_url }), key)
    H.assert_no_secret(message_of(slashid.check_key, { api_key = key, base_url = H.http_url }), key)
    H.assert_no_secret(message_of(slashid.check_key, {
      org_id = "o", api_key = key, base_url = H.http_url, consistency = "all_regions" }), key)
    H.assert_no_secret(message_of(slashid.check_key, {
      org_id = "o", api_key = key, base_url = H.http_url, save_to = key }), key)
  end)

  it("never quote the key even when it is used as an option name", function()
    -- e.g. a table of keys passed by mistake: the unknown option's name
    -- is then a key.
    local org, key = org_with_known_key()
    local short = "sk_short_" .. tostring(math.random(100000, 999999)) -- under 40 bytes
    for _, secret in ipairs({ key, short }) do
      local opts = H.opts(org, secret)
      opts[secret] = true
      H.assert_no_secret(message_of(slashid.rotate_key, opts), secret)
    end
  end)
end)
