-- Secrets: neither the old nor the new API key shows up where it must not.
-- First the focused cases: not in the `debug` trace, in errors, in info
-- (headers included, their names too), in argument error messages; what a
-- server sends back beside a key is reduced so that it cannot carry one;
-- a debug function that raises does not break a call.
-- Then the sweep (issue 3, part 6), with recognizable keys
-- ("sk_HYGIENE_..."): every path — success, every failure kind of the fault
-- matrix, verify, save_to failure, ops (and cancel), rotate_keys,
-- check_key, clients, argument errors, the debug trace — is run, and
-- everything that comes back is scanned: all returned values (H.flatten),
-- `errors`, `info.headers`, the trace, tostring of objects, and the
-- captured stdout/stderr of a subprocess running the same paths (and of
-- bin/slashid-rotate, when present).
--
-- The old key must appear nowhere (not even its recognizable prefix, which
-- would betray a fragment). A new key may appear only in result.api_key
-- and in the save_to file: nowhere else, even when the answer that carried
-- it was truncated, oversized, nested too deep, a 408, or quoted it again.
-- (A server quoting a new key outside result.api_key in an answer that has
-- no result.api_key cannot be recognized as a key; such answers are not
-- made here.)
local H = require "helpers"
local slashid = require "slashid"
local socket = require "socket"

local org_with_known_key, tracer = H.org_with_known_key, H.tracer

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

  it("hides a new key echoed in a response header (headers are traced once the key is known)", function()
    local org, key = H.new_org()
    H.faults(org, { { rotate = true, headers = { ["X-Echo-Key"] = "{{new_key}}" } } })
    local lines = {}
    local result, errors, _, info = slashid.rotate_key(H.opts(org, key, {
      debug = function(line) lines[#lines + 1] = line end }))
    assert.are.equal("rotated", info.outcome, errors[1] and errors[1].message)
    local trace = table.concat(lines, "\n")
    assert.matches("< X%-Echo%-Key: <redacted>", trace)
    H.assert_no_secret(trace, result.api_key)
    H.assert_no_secret(trace, key)
    -- and the headers table hides it too
    H.assert_no_secret(H.flatten(info.headers), result.api_key)
  end)

  it("hides the key of an escaped \"api_key\" member in an incomplete body", function()
    local org, key = H.new_org()
    H.faults(org, { { rotate = true, body = '{"result":{"api\\u005fkey":"{{new_key}}"}}',
                      headers = { ["Content-Length"] = "9999" } } })
    local lines = {}
    local result, _, _, info = slashid.rotate_key(H.opts(org, key, { request_timeout = 1.5,
      debug = function(l) lines[#lines + 1] = l end }))
    assert.are.equal("rotated", info.outcome)
    local trace = table.concat(lines, "\n")
    assert.matches("api\\u005fkey\":\"<redacted>\"", trace, 1, true)
    H.assert_no_secret(trace, result.api_key)
  end)

  it("hides a key echoed in a header name, lowered", function()
    local org, key = H.new_org_with_key("sk_MixedCase_Review_" .. os.time() .. "_KEY")
    H.faults(org, { { rotate = true, headers = { ["X-O-" .. key:lower()] = "1" } } })
    local lines = {}
    local _, _, _, info = slashid.rotate_key(H.opts(org, key, {
      debug = function(l) lines[#lines + 1] = l end }))
    assert.are.equal("rotated", info.outcome)
    local trace = table.concat(lines, "\n")
    assert.is_nil(trace:lower():find(key:lower(), 1, true), "the old key, lowered, is in the trace")
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

  -- Found by `make fuzz` (spec/fuzz/corpus/answer/401-old-key-echo): a
  -- server entry's other members were handed back as sent, unredacted.
  it("in other members of an errors entry: the entry is reduced to httpcode and message", function()
    local org, key = org_with_known_key()
    H.faults(org, { { status = 401, json = { errors = {
      { httpcode = 401, message = "invalid key {{old_key}}", detail = "{{old_key}}",
        nested = { again = "{{old_key}}" } } } } } })
    local result, errors, pagination, info = slashid.rotate_key(H.opts(org, key))
    assert.is_nil(result)
    assert.are.equal("not_rotated", info.outcome)
    assert.are.equal(1, #errors)
    assert.are.equal(401, errors[1].httpcode)
    assert.matches("^invalid key ", errors[1].message)
    assert.is_nil(errors[1].detail)
    assert.is_nil(errors[1].nested)
    H.assert_no_secret(H.flatten(result, errors, pagination, info), key)
  end)

  -- Found by `make fuzz` (spec/fuzz/corpus/answer/pagination-strings):
  -- meta.pagination members were copied whatever their type, so a string
  -- could bring a key back.
  it("in meta.pagination: only its numbers are kept", function()
    local org, key = org_with_known_key()
    H.faults(org, { { status = 200, rotate = true, json = {
      meta = { pagination = { limit = "{{old_key}}", offset = { "{{new_key}}" },
                              total_count = 7 } },
      result = { api_key = "{{new_key}}" } } } })
    local result, errors, pagination, info = slashid.rotate_key(H.opts(org, key))
    assert.are.equal("rotated", info.outcome)
    assert.are.same({ total_count = 7 }, pagination)
    H.assert_no_secret(H.flatten(errors, pagination, info), key)
    H.assert_no_secret(H.flatten(errors, pagination, info), result.api_key)
  end)

  -- Found by `make fuzz` (spec/fuzz/corpus/answer/header-name-key):
  -- header names were not redacted, only their values.
  it("in a response header's name (old or new key): redacted in info.headers", function()
    local org, key = org_with_known_key()
    local new_key = key .. "_new"
    H.faults(org, { { status = 200, rotate = true,
                      headers = { [key] = "1", [new_key] = "2", ["X-Echo"] = key },
                      json = { result = { api_key = new_key } } } })
    local result, errors, pagination, info = slashid.rotate_key(H.opts(org, key))
    assert.are.equal("rotated", info.outcome)
    assert.are.equal(new_key, result.api_key)
    assert.are.equal("<redacted>", info.headers["x-echo"])
    local text = H.flatten(errors, pagination, info)
    H.assert_no_secret(text, key)
    H.assert_no_secret(text, new_key)
  end)

  it("in a response header's name, in any case: hidden in info.headers", function()
    local org, key = H.new_org()
    H.faults(org, { { rotate = true, headers = {
      ["X-{{new_key}}"] = "1", ["X-Old-{{old_key}}"] = "2" } } })
    local result, _, _, info = slashid.rotate_key(H.opts(org, key))
    assert.are.equal("rotated", info.outcome)
    local names = H.flatten(info.headers):lower()
    assert.is_nil(names:find(result.api_key:lower(), 1, true), "the new key is in a header name")
    assert.is_nil(names:find(key:lower(), 1, true), "the old key is in a header name")
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

  it("never quote an api_key given as a number", function()
    local ok, err = pcall(slashid.rotate_key, { org_id = "o", api_key = 83920174562913 })
    assert.is_false(ok)
    assert.is_nil(err:find("83920174562913", 1, true), err)
  end)

  it("never quote a proxy password used by mistake as an option name", function()
    local ok, err = pcall(slashid.rotate_key, { org_id = "o", api_key = "sk_x_000000000000",
      proxy = "http://alice:hunter2pw@127.0.0.1:1", hunter2pw = true })
    assert.is_false(ok)
    assert.is_nil(err:find("hunter2pw", 1, true), err)
  end)
end)

-- ---- the sweep ------------------------------------------------------------

local PREFIX = "sk_HYGIENE_"
local serial = 0

-- An organization whose current key is recognizable.
local function org_with_key()
  serial = serial + 1
  return H.new_org_with_key(("%s%d_%d_%06d_Zq9Lx")
    :format(PREFIX, os.time(), serial, math.random(0, 999999)))
end

local shquote, read = H.q, H.read_if_any

-- Every text reachable from the values, result.api_key aside.
local function values_text(result, ...)
  local r
  if type(result) == "table" then
    r = {}
    for k, v in pairs(result) do if k ~= "api_key" then r[k] = v end end
  end
  return H.flatten(r, ...)
end

-- Asserts that none of `secrets` (and no fragment starting with PREFIX)
-- occurs in `text`. `where` names the channel in the failure message
-- (never the secret itself).
local function assert_clean(where, text, secrets)
  assert(type(text) == "string", where .. ": nothing to scan")
  if text:find(PREFIX, 1, true) then
    error(where .. ": an old key (its " .. PREFIX .. " prefix) was found", 2)
  end
  for i, s in ipairs(secrets) do
    if type(s) == "string" and #s >= 8 and text:find(s, 1, true) then
      error(where .. ": secret #" .. i .. " was found", 2)
    end
  end
end

local coverage = {}
local function covered(path) coverage[#coverage + 1] = path end

-- ---- every fault of the matrix, through rotate_key, an op and a batch -------

local PAD = ("p"):rep(2000)
local KEY_FIRST = '{"result":{"api_key":"{{new_key}}"},"pad":"' .. PAD .. '"}'
local function deep(n) return ("["):rep(n) .. ("]"):rep(n) end

-- name, faults, options, expected outcome. `{{old_key}}` in bodies is the
-- key the request carried; `{{new_key}}` the one the server issued.
local CASES = {
  { "success", nil, {}, "rotated" },
  { "success over HTTPS", nil, { https = true }, "rotated" },
  { "success, chunked", { { rotate = true, chunked = true } }, {}, "rotated" },
  { "success, dripped", { { rotate = true, action = "drip", interval = 0.0003 } }, {}, "rotated" },
  -- (result's other members are returned as sent — README, "Return
  -- values": "the answer's result table" — and a result exists only once
  -- the old key is dead; so the quotes go into errors, which are redacted)
  { "success quoting both keys", { { rotate = true, status = 200, json = {
      result = { api_key = "{{new_key}}", note = "replaced" },
      errors = { { httpcode = 200, message = "issued {{new_key}} for {{old_key}}" } } } } }, {}, "rotated" },
  { "success, echo header", { { rotate = true, headers = { ["X-Echo"] = "OLD" } } }, {}, "rotated" },
  { "refused", nil, { refused = true }, "not_rotated" },
  { "reset_before_read", { { action = "reset_before_read" } }, {}, "unknown" },
  { "reset", { { action = "reset", rotate = true } }, {}, "unknown" },
  { "close", { { action = "close", rotate = true } }, {}, "unknown" },
  { "truncate, key first", { { action = "truncate", rotate = true, body = KEY_FIRST } }, {}, "unknown" },
  { "truncate_chunked, key first", { { action = "truncate_chunked", rotate = true, body = KEY_FIRST } }, {}, "unknown" },
  { "drip cut by the timeout", { { action = "drip", interval = 0.001, rotate = true, body = KEY_FIRST } },
    { request_timeout = 0.4 }, "unknown" },
  { "stall after headers", { { action = "stall_after_headers", stall = 3, rotate = true } },
    { request_timeout = 0.3 }, "unknown" },
  { "huge 5 MB, key at its head", { { action = "huge", size = 5 * 1024 * 1024, rotate = true } }, {}, "unknown" },
  { "huge, small cap", { { action = "huge", size = 5000, rotate = true } }, { max_response_bytes = 1000 }, "unknown" },
  { "huge chunked", { { action = "huge", size = 50000, chunked = true, rotate = true } },
    { max_response_bytes = 1000 }, "unknown" },
  { "huge header", { { action = "huge_header", size = 200000, rotate = true } }, {}, "unknown" },
  { "302 with the old key in Location", { { status = 302, headers = { Location = "OLD-URL" } } }, {}, "not_rotated" },
  { "408 carrying the new key", { { status = 408, rotate = true, json = {
      result = { api_key = "{{new_key}}" },
      errors = { { httpcode = 408, message = "late: {{new_key}} replaces {{old_key}}" } } } } }, {}, "unknown" },
  { "429 quoting the old key", { { status = 429, headers = { ["Retry-After"] = "99999" },
      json = { errors = { { httpcode = 429, message = "{{old_key}} is rate limited" } } } } }, {}, "not_rotated" },
  { "401 quoting the old key", { { status = 401, headers = { ["X-Echo"] = "OLD" },
      json = { errors = { { httpcode = 401, message = "{{old_key}} refused" } } } } }, {}, "not_rotated" },
  { "500 envelope quoting the old key", { { status = 500, json = {
      errors = { { httpcode = 500, message = "failed for {{old_key}}" } } } } }, {}, "unknown" },
  { "502 HTML quoting the old key", { { status = 502, content_type = "text/html",
      body = "<h1>bad gateway</h1><p>key={{old_key}}</p>" } }, {}, "unknown" },
  { "503 empty", { { status = 503 } }, {}, "unknown" },
  { "non-JSON 200 quoting the old key", { { status = 200, rotate = true, body = "ok {{old_key}}" } }, {}, "unknown" },
  { "200 without api_key", { { status = 200, rotate = true, json = { result = { id = "x" },
      errors = { { httpcode = 200, message = "{{old_key}}" } } } } }, {}, "unknown" },
  { "nulls", { { status = 200, rotate = true, body = '{"meta":null,"errors":null,"result":null}' } }, {}, "unknown" },
  { "deep nesting beside the new key (read by the tolerant reader)", { { status = 200, rotate = true,
      body = '{"result":{"api_key":"{{new_key}}"},"x":' .. deep(10000) .. '}' } }, {}, "rotated" },
  { "a lone surrogate escape beside the new key", { { status = 200, rotate = true,
      body = '{"meta":{"m":"note \\ud83d"},"result":{"api_key":"{{new_key}}"}}' } }, {}, "rotated" },
}

-- Options for one case; "OLD" / "OLD-URL" placeholders in fault headers
-- become the literal old key (the emulator substitutes bodies only).
local function prepare(case, org, key, extra)
  local faults = case[2]
  if faults then
    local copy = {}
    for i, f in ipairs(faults) do
      local g = {}
      for k, v in pairs(f) do g[k] = v end
      if f.headers then
        g.headers = {}
        for hk, hv in pairs(f.headers) do
          if hv == "OLD" then hv = key
          elseif hv == "OLD-URL" then hv = "http://127.0.0.1:1/?api_key=" .. key end
          g.headers[hk] = hv
        end
      end
      copy[i] = g
    end
    H.faults(org, copy)
  end
  local o = H.opts(org, key, { retries = 1 })
  for k, v in pairs(case[3]) do o[k] = v end
  if o.https then o.https = nil; o.base_url, o.ca_file = H.https_url, H.ca_file end
  if o.refused then o.refused = nil; o.base_url = "http://127.0.0.1:" .. H.closed_port() end
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end

-- The secrets after a call on `org` whose old key was `key`.
local function secrets_of(org, key, result)
  local list = { key }
  local now_key = H.org(org).api_key
  if now_key ~= key then list[#list + 1] = now_key end
  if result and result.api_key then list[#list + 1] = result.api_key end
  return list
end

describe("the sweep: every fault of the matrix leaves no key outside result.api_key", function()
  for _, case in ipairs(CASES) do
    it("rotate_key: " .. case[1], function()
      local org, key = org_with_key()
      local debug, lines = tracer()
      local result, errors, pagination, info =
        slashid.rotate_key(prepare(case, org, key, { debug = debug }))
      assert.are.equal(case[4], info.outcome, case[1] .. ": " .. H.flatten(errors))
      assert.is_true(#lines > 0, "no trace")
      local secrets = secrets_of(org, key, result)
      assert_clean(case[1] .. ": values", values_text(result, errors, pagination, info), secrets)
      assert_clean(case[1] .. ": info.headers", H.flatten(info.headers), secrets)
      assert_clean(case[1] .. ": trace", table.concat(lines, "\n"), secrets)
      covered("rotate_key " .. case[1])
    end)
  end

  it("the same faults through ops (polled) and through one rotate_keys batch", function()
    local list, orgs = {}, {}
    for i, case in ipairs(CASES) do
      -- an op
      local org, key = org_with_key()
      local debug, lines = tracer()
      local op = slashid.start_rotate_key(prepare(case, org, key, { debug = debug }))
      local deadline = socket.gettime() + 10
      while not op:poll() and socket.gettime() < deadline do socket.sleep(0.002) end
      assert.is_true(op:poll(), case[1])
      local result, errors, pagination, info = op:results()
      assert.are.equal(case[4], info.outcome, case[1])
      local secrets = secrets_of(org, key, result)
      assert_clean(case[1] .. " (op): values", values_text(result, errors, pagination, info), secrets)
      assert_clean(case[1] .. " (op): trace", table.concat(lines, "\n"), secrets)
      assert_clean(case[1] .. " (op): tostring", tostring(op), secrets)
      -- an item of the batch
      local borg, bkey = org_with_key()
      orgs[i] = { borg, bkey }
      list[i] = prepare(case, borg, bkey)
    end
    covered("ops, every fault")
    local debug, lines = tracer()
    local progress = {}
    local outcomes = slashid.rotate_keys(list, { concurrency = 8, debug = debug,
      on_progress = function(done, total, index, outcome, item)
        progress[#progress + 1] = { done, total, index, outcome, item }
      end })
    assert.are.equal(#CASES, #progress)
    local all_secrets = {}
    for i, case in ipairs(CASES) do
      local o = outcomes[i]
      assert.are.equal(case[4], o.info.outcome, case[1] .. " (batch)")
      local secrets = secrets_of(orgs[i][1], orgs[i][2], o.result)
      for _, s in ipairs(secrets) do all_secrets[#all_secrets + 1] = s end
      assert_clean(case[1] .. " (batch): values",
                   values_text(o.result, o.errors, o.pagination, o.info), secrets)
    end
    -- the trace of the whole batch, and what on_progress saw (its item
    -- tables hold result.api_key: skipped like the result itself)
    assert_clean("batch trace", table.concat(lines, "\n"), all_secrets)
    for _, p in ipairs(progress) do
      local item = p[5]
      assert_clean("on_progress", values_text(item.result, p[1], p[2], p[3], p[4],
                   item.errors, item.pagination, item.info), all_secrets)
    end
    covered("rotate_keys, every fault, on_progress")
  end)
end)

-- ---- verify, save_to, cancel, check_key, clients, argument errors ------------

describe("the sweep: verify, save_to, ops, check_key, clients, argument errors leave no key outside result.api_key", function()
  it("verify: accepted, refused, and unreadable (the check quoting the new key)", function()
    local faults = {
      { "accepted", nil },
      -- the verify GET carries the new key: {{old_key}} is the new key there
      { "refused", { { rotate = true }, { status = 401, json = {
          errors = { { httpcode = 401, message = "refused {{old_key}}" } } } } } },
      { "unreadable", { { rotate = true }, { status = 500, body = "cannot check {{old_key}}" } } },
    }
    for _, f in ipairs(faults) do
      local org, key = org_with_key()
      if f[2] then H.faults(org, f[2]) end
      local debug, lines = tracer()
      local result, errors, pagination, info =
        slashid.rotate_key(H.opts(org, key, { verify = true, debug = debug }))
      assert.are.equal("rotated", info.outcome)
      assert.are.equal(f[1] == "accepted", info.verified)
      local secrets = secrets_of(org, key, result)
      assert_clean("verify " .. f[1], values_text(result, errors, pagination, info), secrets)
      assert_clean("verify " .. f[1] .. " trace", table.concat(lines, "\n"), secrets)
    end
    covered("verify accepted/refused/unreadable")
  end)

  it("save_to: a failure reports without the key; a success writes only the new key", function()
    local org, key = org_with_key()
    local debug, lines = tracer()
    local result, errors, pagination, info = slashid.rotate_key(H.opts(org, key, {
      save_to = H.tmp .. "/no-such-dir/sub/key", debug = debug }))
    assert.are.equal("rotated", info.outcome)
    assert.is_false(info.saved)
    assert.is_true(#errors >= 1)
    local secrets = secrets_of(org, key, result)
    assert_clean("save_to failure", values_text(result, errors, pagination, info), secrets)
    assert_clean("save_to failure trace", table.concat(lines, "\n"), secrets)

    local org2, key2 = org_with_key()
    local path = H.tmpname("hygiene-key")
    local r2, e2, p2, i2 = slashid.rotate_key(H.opts(org2, key2, { save_to = path }))
    assert.is_true(i2.saved)
    assert.are.equal(r2.api_key .. "\n", read(path))
    assert_clean("save_to success", values_text(r2, e2, p2, i2), secrets_of(org2, key2, r2))
    covered("save_to failure and success")
  end)

  it("op + cancel: before anything was sent, and while the answer stalls", function()
    local org, key = org_with_key()
    local debug, lines = tracer()
    local op = slashid.start_rotate_key(H.opts(org, key, { base_url = "http://127.0.0.1:" ..
      H.closed_port(), retries = 50, retry_delay = 1, retry_max_delay = 1, debug = debug }))
    op:poll()
    op:cancel()
    assert.is_true(op:poll())
    local result, errors, pagination, info = op:results()
    assert.are.equal("not_rotated", info.outcome)
    assert_clean("cancel in back-off", values_text(result, errors, pagination, info) ..
                 tostring(op) .. table.concat(lines, "\n"), { key })

    local org2, key2 = org_with_key()
    H.faults(org2, { { action = "stall_after_headers", stall = 3, rotate = true } })
    local debug2, lines2 = tracer()
    local op2 = slashid.start_rotate_key(H.opts(org2, key2, { debug = debug2 }))
    local deadline = socket.gettime() + 5
    while H.org(org2).rotations == 0 and socket.gettime() < deadline do
      op2:poll()
      socket.sleep(0.01)
    end
    op2:wait(0.1)    -- the headers arrive
    op2:cancel()
    local r2, e2, p2, i2 = op2:results()
    assert.are.equal("unknown", i2.outcome)
    local secrets = secrets_of(org2, key2, r2)
    assert_clean("cancel while stalled", values_text(r2, e2, p2, i2) .. tostring(op2) ..
                 table.concat(lines2, "\n"), secrets)
    covered("op + cancel (back-off, stalled answer)")
  end)

  it("check_key: accepted, refused quoting the key, 500 quoting it, refused connection", function()
    local org, key = org_with_key()
    H.faults(org, {
      { status = 200 },
      { status = 403, headers = { ["X-Key"] = key }, json = { errors = { { httpcode = 403, message = "{{old_key}}" } } } },
      { status = 500, body = "oops {{old_key}}" },
    })
    local all = {}
    for i = 1, 4 do
      local debug, lines = tracer()
      local extra = { debug = debug, retries = 0 }
      if i == 4 then extra.base_url = "http://127.0.0.1:" .. H.closed_port() end
      local ok, errors, info = slashid.check_key(H.opts(org, key, extra))
      assert.are.equal(({ true, false, nil, nil })[i], ok)
      all[#all + 1] = H.flatten(ok, errors, info) .. table.concat(lines, "\n")
    end
    assert_clean("check_key", table.concat(all, "\n"), { key })
    covered("check_key true/false/nil")
  end)

  it("a client adopting keys: trace, values and tostring never show any of them", function()
    local org, key = org_with_key()
    local debug, lines = tracer()
    local client = slashid.new(H.opts(org, key, { debug = debug, verify = true }))
    local secrets, texts = { key }, {}
    for _ = 1, 3 do
      local result, errors, pagination, info = client:rotate_key()
      assert.are.equal("rotated", info.outcome)
      secrets[#secrets + 1] = result.api_key
      texts[#texts + 1] = values_text(result, errors, pagination, info)
    end
    local ok, cerrors, cinfo = client:check_key()
    assert.is_true(ok)
    local op = client:start_rotate_key()
    assert.is_true(op:wait(5))
    local r4, e4, p4, i4 = op:results()
    secrets[#secrets + 1] = r4.api_key
    texts[#texts + 1] = values_text(r4, e4, p4, i4) .. H.flatten(cerrors, cinfo)
    texts[#texts + 1] = tostring(client) .. tostring(op) .. H.flatten(client)
    client:close()
    texts[#texts + 1] = tostring(client)
    assert_clean("client values", table.concat(texts, "\n"), secrets)
    assert_clean("client trace", table.concat(lines, "\n"), secrets)
    covered("client rotate x3 + verify + check_key + op, adopting")
  end)

  it("argument errors, wherever the key is put", function()
    local org, key = org_with_key()
    local messages = {}
    local function raise(fn, ...)
      local ok, err = pcall(fn, ...)
      assert.is_false(ok)
      messages[#messages + 1] = tostring(err)
    end
    local bad = {
      { api_key = key .. "\n" }, { api_key = key .. "\0" }, { org_id = key .. "\r" },
      { consistency = key }, { timeout = key }, { base_url = key },
      { base_url = "http://example.invalid/" .. key }, { base_url = "https://u:" .. key .. "@x.invalid" },
      { user_agent = key .. "\n" }, { save_to = key .. "\0" }, { ca_file = key .. "\0" },
      { debug = key }, { verify = key }, { retries = key }, { [key] = true },
      { [key .. "\n"] = true }, { max_response_bytes = setmetatable({}, { __tostring = function() return key end }) },
    }
    for _, change in ipairs(bad) do
      local opts = H.opts(org, key, change)
      raise(slashid.rotate_key, opts)
      raise(slashid.new, opts)
      raise(slashid.start_rotate_key, opts)
      raise(slashid.rotate_keys, { opts })
      raise(slashid.rotate_keys, { { org_id = org } }, opts)
    end
    assert_clean("argument errors", table.concat(messages, "\n"), { key })
    assert.are.equal(0, H.requests(org))
    covered("argument errors (" .. #messages .. " messages)")
  end)
end)

-- ---- a subprocess running the same paths ------------------------------------

local CHILD = [=[
-- Runs the paths and prints everything it gets (but result.api_key) on
-- stdout, the trace on stderr; ends with an uncaught argument error.
local H = require "helpers"
local slashid = require "slashid"
local secrets_file, ids_file = arg[1], arg[2]
local secrets = assert(io.open(secrets_file, "w"))
local ids = assert(io.open(ids_file, "w"))
local n = 0
local function org(faults)
  n = n + 1
  local key = ("sk_HYGIENE_child_%d_%d_%06d"):format(os.time(), n, math.random(0, 999999))
  local _, o = H.control("POST", "/_emulator/orgs", { api_key = key })
  if faults then H.faults(o.org_id, faults) end
  ids:write(o.org_id, "\n")
  secrets:write(key, "\n")
  return o.org_id, key
end
local function trace(line) io.stderr:write("trace: ", line, "\n") end
local function show(label, result, ...)
  if type(result) == "table" and result.api_key then
    secrets:write(result.api_key, "\n")
    local copy = {}
    for k, v in pairs(result) do if k ~= "api_key" then copy[k] = v end end
    result = copy
  end
  print(label, H.flatten(result, ...))
end
local function rotate(label, faults, extra)
  local o, k = org(faults)
  local opts = H.opts(o, k, extra)
  opts.debug = trace
  show(label, slashid.rotate_key(opts))
end
rotate("success")
rotate("success https", nil, { base_url = H.https_url, ca_file = H.ca_file })
rotate("verify", nil, { verify = true })
rotate("save_to failure", nil, { save_to = "/nonexistent-dir/key" })
rotate("reset", { { action = "reset", rotate = true } })
rotate("truncate", { { action = "truncate", rotate = true,
  body = '{"result":{"api_key":"{{new_key}}"},"pad":"' .. ("p"):rep(500) .. '"}' } })
rotate("huge", { { action = "huge", size = 5000, rotate = true } }, { max_response_bytes = 1000 })
rotate("408", { { status = 408, rotate = true, json = { result = { api_key = "{{new_key}}" } } } })
rotate("500", { { status = 500, body = "boom {{old_key}}" } })
rotate("401", { { status = 401, json = { errors = { { httpcode = 401, message = "{{old_key}}" } } } } })
rotate("refused", nil, { base_url = "http://127.0.0.1:" .. H.closed_port(), retries = 0 })
do
  local o, k = org({ { action = "stall_after_headers", stall = 3, rotate = true } })
  local op = slashid.start_rotate_key(H.opts(o, k, { debug = trace }))
  op:wait(0.3)
  op:cancel()
  print("op", tostring(op))
  show("op cancelled", op:results())
end
do
  local list = {}
  for i = 1, 3 do
    local o, k = org(i == 2 and { { status = 500, body = "{{old_key}}" } } or nil)
    list[i] = { org_id = o, api_key = k }
  end
  local outcomes = slashid.rotate_keys(list, { base_url = H.http_url, debug = trace,
    on_progress = function(d, t, i, outcome, item) show("progress", item.result, d, t, i, outcome, item.errors, item.info) end })
  for i, x in ipairs(outcomes) do show("item " .. i, x.result, x.errors, x.pagination, x.info) end
end
do
  local o, k = org({ { status = 401, json = { errors = { { httpcode = 401, message = "{{old_key}}" } } } } })
  print("check_key", H.flatten(slashid.check_key(H.opts(o, k, { debug = trace }))))
  local client = slashid.new(H.opts(o, k, { debug = trace }))
  print("client", tostring(client))
  local ok, err = pcall(slashid.rotate_key, H.opts(o, k, { timeout = k }))
  print("caught", err)
  secrets:close()
  ids:close()
  -- uncaught: the interpreter prints the message and a traceback
  slashid.rotate_key(H.opts(o, k, { api_key = k .. "\n" }))
end
]=]

describe("the sweep: no key in a subprocess's stdout and stderr", function()
  it("running the same paths, ending with an uncaught argument error", function()
    local script = H.tmpname("hygiene-child") .. ".lua"
    local f = assert(io.open(script, "w"))
    f:write(CHILD)
    f:close()
    local secrets_file, ids_file = H.tmpname("hygiene-secrets"), H.tmpname("hygiene-ids")
    local p = io.popen(("%s %s %s %s 2>&1; echo \"exit=$?\""):format(
      H.lua, shquote(script), shquote(secrets_file), shquote(ids_file)))
    local output = p:read("*a")
    p:close()
    assert.matches("exit=1\n$", output)
    assert.matches("slashid: bad option 'api_key'", output, 1, true)
    assert.matches("trace: > SlashID-API-Key: <redacted>", output, 1, true)
    local secrets = {}
    for line in (read(secrets_file) or ""):gmatch("[^\n]+") do secrets[#secrets + 1] = line end
    local orgs = 0
    for id in (read(ids_file) or ""):gmatch("[^\n]+") do
      orgs = orgs + 1
      secrets[#secrets + 1] = H.org(id).api_key   -- every key issued to it
    end
    assert.is_true(orgs >= 15, "the child did not run every path")
    assert.is_true(#secrets >= orgs + 5)
    assert_clean("subprocess stdout+stderr", output, secrets)
    covered("subprocess: " .. orgs .. " organizations, " .. #output .. " bytes of output")
  end)
end)

-- ---- bin/slashid-rotate -------------------------------------------------------

describe("the sweep: no key where slashid-rotate must not put one", function()
  local CLI = "bin/slashid-rotate"
  local present = io.open(CLI, "r")
  if present then present:close() end

  -- Runs the CLI with SLASHID_API_KEY = key; returns exit status, stdout, stderr.
  local function cli(key, args)
    local out, err = H.tmpname("cli-out"), H.tmpname("cli-err")
    local p = io.popen(("SLASHID_API_KEY=%s %s %s %s >%s 2>%s; echo $?"):format(
      shquote(key), H.lua, CLI, args, shquote(out), shquote(err)))
    local code = tonumber(p:read("*a"):match("%d+"))
    p:close()
    return code, read(out) or "", read(err) or ""
  end

  local function base(org)
    return ("--org-id %s --base-url %s"):format(shquote(org), shquote(H.http_url))
  end

  if not present then
    pending("bin/slashid-rotate not present yet")
    return
  end

  it("success without --save-to: the new key alone on stdout, nowhere else", function()
    local org, key = org_with_key()
    local code, out, err = cli(key, base(org))
    local new = H.org(org).api_key
    assert.are.equal(0, code, err)
    assert.are.equal(new .. "\n", out)
    assert_clean("cli stderr", err, { key, new })
    assert_clean("cli stdout (old key)", out, { key })
    covered("cli success (stdout)")
  end)

  it("success with --save-to: the new key only in the file", function()
    local org, key = org_with_key()
    local path = H.tmpname("cli-key")
    local code, out, err = cli(key, base(org) .. " --save-to " .. shquote(path))
    local new = H.org(org).api_key
    assert.are.equal(0, code, err)
    assert.are.equal(new .. "\n", read(path))
    assert_clean("cli stdout+stderr", out .. err, { key, new })
    covered("cli success (--save-to)")
  end)

  it("success with --json: the new key in the JSON on stdout only", function()
    local org, key = org_with_key()
    local code, out, err = cli(key, base(org) .. " --json")
    local new = H.org(org).api_key
    assert.are.equal(0, code, err)
    assert.is_truthy(out:find(new, 1, true), "the new key is not in the JSON")
    assert.is_truthy(out:find('"api_key"', 1, true), "no api_key member in the JSON")
    assert_clean("cli --json stderr", err, { key, new })
    assert_clean("cli --json stdout (old key)", out, { key })
    covered("cli success (--json)")
  end)

  it("a 401 and a 500 quoting the old key (with --json too)", function()
    for _, c in ipairs({ { 401, 1 }, { 500, 2 } }) do
      for _, json in ipairs({ "", " --json" }) do
        local org, key = org_with_key()
        H.faults(org, { { status = c[1], headers = { ["X-Echo"] = key },
          json = { errors = { { httpcode = c[1], message = "no: {{old_key}}" } } } } })
        local code, out, err = cli(key, base(org) .. json)
        assert.are.equal(c[2], code, err)
        assert_clean("cli " .. c[1] .. json, out .. err, { key })
      end
    end
    covered("cli 401 and 500 (plain and --json)")
  end)

  it("--orgs: mixed outcomes, keys read from the file", function()
    local lines, orgs = {}, {}
    for i = 1, 4 do
      local org, key = org_with_key()
      if i == 2 then H.faults(org, { { status = 401, json = { errors = { { httpcode = 401, message = "{{old_key}}" } } } } }) end
      if i == 3 then H.faults(org, { { status = 500, body = "{{old_key}}" } }) end
      orgs[i] = { org, key }
      lines[i] = org .. "\t" .. key
    end
    local file = H.tmpname("cli-orgs")
    local f = assert(io.open(file, "w"))
    f:write(table.concat(lines, "\n"), "\n")
    f:close()
    local code, out, err = cli("unused-env-key-xxxxxxxx", "--orgs " .. shquote(file) ..
                                " --base-url " .. shquote(H.http_url))
    assert.are.equal(2, code, err)
    local olds, news = {}, {}
    for i, o in ipairs(orgs) do
      olds[#olds + 1] = o[2]
      local now_key = H.org(o[1]).api_key
      if now_key ~= o[2] then
        news[#news + 1] = now_key
        assert.is_truthy(out:find(o[1] .. "\t" .. now_key, 1, true), "no ORG<TAB>NEW_KEY line")
      end
      assert(i)
    end
    assert.are.equal(2, #news)
    assert_clean("cli --orgs stdout+stderr (old keys)", out .. err, olds)
    assert_clean("cli --orgs stderr (new keys)", err, news)
    covered("cli --orgs")
  end)

  it("an argument error (exit 64) shows no key", function()
    local org, key = org_with_key()
    local code, out, err = cli(key, base(org) .. " --timeout 0")
    assert.are.equal(64, code)
    assert_clean("cli usage error", out .. err, { key })
    code, out, err = cli(key .. "\n", base(org))
    assert.are.equal(64, code)
    assert_clean("cli bad key", out .. err, { key })
    covered("cli argument errors")
  end)
end)

describe("the sweep's coverage", function()
  it("lists what was scanned", function()
    io.write("\n[hygiene] scanned: " .. table.concat(coverage, "; ") .. "\n")
    assert.is_true(#coverage >= #CASES + 6)
  end)
end)
