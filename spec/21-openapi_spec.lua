-- Fidelity to the real API: every answer the emulator gives of its own
-- (rotation, organization config, each error status it produces) and
-- every request the library sends are checked against SlashID's published
-- OpenAPI document (a copy: spec/openapi/slashid-openapi.yml) by
-- spec/openapi/check.py, a small JSON-Schema checker of our own (python3 +
-- python3-yaml). Answers are captured twice: as the library received them
-- (its `debug` trace, keys redacted there) and as raw LuaSocket requests
-- see them; requests are the emulator's own records of what arrived.
-- The last block proves the checker reports violations (a required member
-- missing, a wrong type, an undeclared member, a request without its
-- required headers), so a passing check means something.
local H = require "helpers"
local slashid = require "slashid"
local cjson = require "cjson"
local socket = require "socket"

local DOC = os.getenv("SLASHID_OPENAPI") or "spec/openapi/slashid-openapi.yml"
local CHECK = "spec/openapi/check.py"
local ROTATE, CONFIG = "/organizations/api-keys", "/organizations/config"
local JSON = "application/json"

local write = H.write

local function quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

-- Runs check.py with `args`: exit status, output (violations and notes).
-- Without LD_PRELOAD: `make check-asan` preloads a sanitizer runtime meant
-- for the interpreter, not for python.
local function run_check(args)
  local parts = { "env -u LD_PRELOAD python3", CHECK }
  for _, a in ipairs(args) do parts[#parts + 1] = quote(a) end
  local p = assert(io.popen(table.concat(parts, " ") .. ' 2>&1; echo "exit=$?"'))
  local out = p:read("*a")
  p:close()
  local code = tonumber(out:match("exit=(%d+)%s*$"))
  return code, (out:gsub("exit=%d+%s*$", ""))
end

-- Checks an answer: METHOD PATH STATUS with its body (and content type).
local function check_answer(method, path, status, body, content_type, extra)
  local file = H.tmpname("openapi-body")
  write(file, body)
  local args = {}
  for _, a in ipairs(extra or {}) do args[#args + 1] = a end
  if content_type then
    args[#args + 1] = "--content-type"
    args[#args + 1] = content_type
  end
  for _, a in ipairs({ DOC, method, path, tostring(status), file }) do args[#args + 1] = a end
  local code, out = run_check(args)
  os.remove(file)
  return code, out
end

-- Checks an answer as the library's trace showed it (see tracer below).
local function check_traced(a)
  return check_answer(a.method, a.path, a.status, a.body, a.content_type)
end

-- Checks a request the emulator recorded ({ method, path, headers }).
local function check_request(req, body)
  local file = H.tmpname("openapi-headers")
  write(file, cjson.encode(req.headers))
  local args = { "--request", "--headers", file }
  local body_file
  if body then
    body_file = H.tmpname("openapi-reqbody")
    write(body_file, body)
    args[#args + 1] = "--body"
    args[#args + 1] = body_file
  end
  for _, a in ipairs({ DOC, req.method, req.path }) do args[#args + 1] = a end
  local code, out = run_check(args)
  os.remove(file)
  if body_file then os.remove(body_file) end
  return code, out
end

-- The checker never quotes an instance string: each of `secrets` (keys
-- the checked text carried) is looked for in its output before the output
-- is shown. `code, out` come last so that check_answer(...)/check_request(...)
-- can be passed straight in.
local function assert_valid(secrets, code, out)
  assert(type(out) == "string", "no checker output")
  for _, secret in ipairs(secrets) do H.assert_no_secret(out, secret) end
  assert(code == 0, "check.py found violations (exit " .. tostring(code) .. "):\n" .. out)
end

-- `pattern` is a Lua pattern of a violation line (never a secret).
local function assert_violation(pattern, secrets, code, out)
  assert(type(out) == "string", "no checker output")
  for _, secret in ipairs(secrets) do H.assert_no_secret(out, secret) end
  assert(code == 1, "check.py should have reported a violation (exit "
    .. tostring(code) .. "):\n" .. out)
  assert(out:find("violation: [^\n]*" .. pattern), "no violation matching '" .. pattern .. "':\n" .. out)
end

-- Collects the library's `debug` trace; `answer()` gives the last
-- exchange as the library saw it: request line, status, content type and
-- body (the new key is redacted in the trace, a string all the same).
local function tracer()
  local lines = {}
  local t = { debug = function(line) lines[#lines + 1] = line end }
  function t.answer()
    local a = {}
    for _, l in ipairs(lines) do
      local m, p = l:match("^> (%u+) (%S+) HTTP/")
      if m then a = { method = m, path = p } end
      local s = l:match("^< HTTP/[%d.]+ (%d%d%d)")
      if s then a.status, a.content_type = tonumber(s), nil end
      local ct = l:match("^< [Cc]ontent%-[Tt]ype:%s*(.-)%s*$")
      if ct then a.content_type = ct end
      local b = l:match("^< body: (.*)$")
      if b then a.body = b end
    end
    assert(a.method and a.status, "no exchange in the debug trace")
    assert(a.body, "no '< body: ' line in the debug trace")
    return a
  end
  return t
end

-- One raw HTTP/1.1 request over a LuaSocket TCP connection (socket.http
-- would not do: it hangs up on a 408 without reading the answer): status,
-- headers (lower-case names), body.
local function raw(method, path, headers)
  local c = assert(socket.tcp())
  c:settimeout(10)
  assert(c:connect("127.0.0.1", math.floor(H.emulator.http_port)))
  local lines = { ("%s %s HTTP/1.1"):format(method, path), "Host: 127.0.0.1",
                  "Connection: close" }
  for name, value in pairs(headers) do lines[#lines + 1] = name .. ": " .. value end
  assert(c:send(table.concat(lines, "\r\n") .. "\r\n\r\n"))
  local data, err, partial = c:receive("*a")
  c:close()
  data = data or partial
  assert(data and #data > 0, "no answer: " .. tostring(err))
  local head, body = data:match("^(.-)\r\n\r\n(.*)$")
  assert(head, "no complete header block in the answer")
  local status = tonumber(head:match("^HTTP/1%.%d (%d%d%d)"))
  local hdrs = {}
  for name, value in head:gmatch("\r\n([^:\r\n]+):[ \t]*([^\r\n]*)") do
    hdrs[name:lower()] = value
  end
  local length = tonumber(hdrs["content-length"])
  assert(status and length and #body == length, "a malformed or incomplete answer")
  return status, hdrs, body
end

-- The emulator's last recorded request for an organization.
local function last_request(org)
  local reqs = H.org(org).requests
  assert(#reqs > 0, "the emulator recorded no request")
  return reqs[#reqs]
end

-- The members OrganizationConfig requires (the document's list).
local CONFIG_REQUIRED = {
  "from_email", "from_phone_number_sms", "token_duration", "groups_claim_name",
  "requires_manual_approval", "deny_self_registration", "allowed_factor_methods",
  "authn_link_allowed_redirect_uris", "new_person_handle_patterns", "sudo_mode_duration",
}

describe("the checker (spec/openapi/check.py)", function()
  it("runs on this machine (python3 with PyYAML) and reads the document", function()
    local code, out = run_check({ DOC, "PUT", ROTATE, "200", "/dev/null" })
    assert(not out:find("PyYAML is missing", 1, true),
      "python3-yaml is not installed (sh scripts/deps.sh python3-yaml)")
    -- An empty body is not JSON: a violation, not a usage or document error.
    assert_violation("not JSON", {}, code, out)
  end)
end)

describe("the library's requests and the emulator's answers validate against the OpenAPI document", function()
  it("rotate_key: PUT /organizations/api-keys, its 200 answer and the request sent", function()
    local org, key = H.new_org()
    local t = tracer()
    local result, errors, _, info = slashid.rotate_key(H.opts(org, key, { debug = t.debug }))
    assert(result, "rotation failed: " .. tostring(errors[1] and errors[1].message))
    assert.are.equal("rotated", info.outcome)
    local a = t.answer()
    assert.are.equal("PUT", a.method)
    assert.are.equal(ROTATE, a.path)
    assert.are.equal(200, a.status)
    assert.is_truthy(a.body)
    assert_valid({ key, result.api_key }, check_traced(a))
    local req = last_request(org)
    assert.are.equal("current", req.key)
    assert.are.equal("PUT", req.method)
    assert_valid({ key, result.api_key }, check_request(req))
  end)

  it("rotate_key with all_regions and a 60 s timeout: the consistency headers match their schemas", function()
    local org, key = H.new_org()
    local result, _, _, info = slashid.rotate_key(H.opts(org, key,
      { consistency = "all_regions", timeout = 60 }))
    assert.are.equal("rotated", info.outcome)
    local req = last_request(org)
    assert.are.equal("all_regions", req.headers["slashid-required-consistency"])
    assert.are.equal("60", req.headers["slashid-required-consistency-timeout"])
    assert_valid({ key, result.api_key }, check_request(req))
  end)

  it("check_key: GET /organizations/config, a 200 answer with every member OrganizationConfig requires", function()
    local org, key = H.new_org()
    local t = tracer()
    local ok, errors = slashid.check_key(H.opts(org, key, { debug = t.debug }))
    assert(ok == true, "check_key failed: " .. tostring(errors[1] and errors[1].message))
    local a = t.answer()
    assert.are.equal("GET", a.method)
    assert.are.equal(CONFIG, a.path)
    assert.are.equal(200, a.status)
    assert_valid({ key }, check_traced(a))
    local config = cjson.decode(a.body).result
    for _, name in ipairs(CONFIG_REQUIRED) do
      assert(config[name] ~= nil, "config lacks " .. name)
    end
    assert_valid({ key }, check_request(last_request(org)))
  end)

  it("check_key with a wrong key: the 401 answer", function()
    local org, key = H.new_org()
    local t = tracer()
    local ok, _, info = slashid.check_key(H.opts(org, key .. "x", { debug = t.debug }))
    assert.are.equal(false, ok)
    assert.are.equal(401, info.status)
    local a = t.answer()
    assert_valid({ key }, check_traced(a))
    assert.are.equal("other", last_request(org).key)
    assert_valid({ key }, check_request(last_request(org)))
  end)

  it("rotate_key with the key a rotation killed: the 401 answer", function()
    local org, key = H.new_org()
    local first = slashid.rotate_key(H.opts(org, key))
    assert.is_truthy(first)
    local t = tracer()
    local result, _, _, info = slashid.rotate_key(H.opts(org, key, { debug = t.debug }))
    assert.is_nil(result)
    assert.are.equal("not_rotated", info.outcome)
    local a = t.answer()
    assert.are.equal(401, a.status)
    assert_valid({ key, first.api_key }, check_traced(a))
    assert.are.equal("previous", last_request(org).key)
  end)

  it("a delay-only fault still gets the real answer, which validates", function()
    local org, key = H.new_org()
    H.faults(org, { { delay = 0.05 } })
    local t = tracer()
    local result, _, _, info = slashid.rotate_key(H.opts(org, key, { debug = t.debug }))
    assert.are.equal("rotated", info.outcome)
    local a = t.answer()
    assert_valid({ key, result.api_key }, check_traced(a))
  end)
end)

describe("every error status the emulator produces validates (raw requests)", function()
  -- Each case: request headers (built from a fresh org and key), expected status.
  local cases = {
    { "PUT without SlashID-OrgID", "PUT", ROTATE, function(_, key)
        return { ["SlashID-API-Key"] = key } end, 400 },
    { "PUT with an unknown consistency level", "PUT", ROTATE, function(org, key)
        return { ["SlashID-OrgID"] = org, ["SlashID-API-Key"] = key,
                 ["SlashID-Required-Consistency"] = "everywhere" } end, 400 },
    { "PUT with a consistency timeout of 500", "PUT", ROTATE, function(org, key)
        return { ["SlashID-OrgID"] = org, ["SlashID-API-Key"] = key,
                 ["SlashID-Required-Consistency-Timeout"] = "500" } end, 400 },
    { "PUT with an unreadable Content-Length", "PUT", ROTATE, function(org, key)
        return { ["SlashID-OrgID"] = org, ["SlashID-API-Key"] = key,
                 ["Content-Length"] = "twelve" } end, 400 },
    { "PUT without SlashID-API-Key", "PUT", ROTATE, function(org)
        return { ["SlashID-OrgID"] = org } end, 401 },
    { "PUT with a wrong key", "PUT", ROTATE, function(org, key)
        return { ["SlashID-OrgID"] = org, ["SlashID-API-Key"] = key .. "x" } end, 401 },
    { "GET config without SlashID-OrgID", "GET", CONFIG, function(_, key)
        return { ["SlashID-API-Key"] = key } end, 400 },
    { "GET config without SlashID-API-Key", "GET", CONFIG, function(org)
        return { ["SlashID-OrgID"] = org } end, 401 },
    { "GET config with a wrong key", "GET", CONFIG, function(org, key)
        return { ["SlashID-OrgID"] = org, ["SlashID-API-Key"] = key .. "x" } end, 401 },
    { "GET on the rotation path (405)", "GET", ROTATE, function(org, key)
        return { ["SlashID-OrgID"] = org, ["SlashID-API-Key"] = key } end, 405 },
    { "an unknown path (404)", "PUT", "/organizations/api-key", function(org, key)
        return { ["SlashID-OrgID"] = org, ["SlashID-API-Key"] = key } end, 404 },
  }
  for _, c in ipairs(cases) do
    local name, method, path, headers, expected = c[1], c[2], c[3], c[4], c[5]
    it(("%s: %d"):format(name, expected), function()
      local org, key = H.new_org()
      local status, hdrs, body = raw(method, path, headers(org, key))
      assert.are.equal(expected, status)
      assert.are.equal("application/json", hdrs["content-type"])
      assert_valid({ key }, check_answer(method, path, status, body, hdrs["content-type"]))
      assert.are.equal(0, H.org(org).rotations)
    end)
  end

  -- Statuses the emulator sends only when a fault asks for them, with the
  -- error envelope it builds itself (`message`).
  for _, c in ipairs({
    { 408, "consistency level not reached in time", { rotate = true } },
    { 429, "rate limited", { headers = { ["Retry-After"] = "1" } } },
    { 403, "forbidden", {} },
    { 404, "organization not found", {} },
    { 500, "internal error", {} },
    { 503, "unavailable", { headers = { ["Retry-After"] = "2" } } },
  }) do
    local status, message, more = c[1], c[2], c[3]
    it(("a `message` fault with status %d: SlashID's error envelope"):format(status), function()
      local org, key = H.new_org()
      local fault = { status = status, message = message }
      for k, v in pairs(more) do fault[k] = v end
      H.faults(org, { fault })
      local got, hdrs, body = raw("PUT", ROTATE, { ["SlashID-OrgID"] = org, ["SlashID-API-Key"] = key })
      assert.are.equal(status, got)
      assert.are.same({ errors = { { httpcode = status, message = message } } }, cjson.decode(body))
      assert_valid({ key }, check_answer("PUT", ROTATE, got, body, hdrs["content-type"]))
      assert.are.equal(more.rotate and 1 or 0, H.org(org).rotations)
    end)
  end

  it("a `message` fault quotes the keys on request, and refuses body/json beside it", function()
    local org, key = H.new_org()
    H.faults(org, { { status = 408, rotate = true, message = "issued {{new_key}}" } })
    local got, _, body = raw("PUT", ROTATE, { ["SlashID-OrgID"] = org, ["SlashID-API-Key"] = key })
    assert.are.equal(408, got)
    local new_key = H.org(org).api_key
    assert(cjson.decode(body).errors[1].message == "issued " .. new_key, "{{new_key}} not replaced")
    local status = H.control("POST", "/_emulator/orgs/" .. org .. "/faults",
      { { status = 400, message = "x", body = "{}" } })
    assert.are.equal(400, status)
  end)

  it("fault headers get {{old_key}}/{{new_key}} replaced, and the real answer beside them validates", function()
    local org, key = H.new_org()
    H.faults(org, { { rotate = true, headers = { ["X-New-Key"] = "{{new_key}}",
                                                  ["X-Old-Key"] = "was {{old_key}}" } } })
    local status, hdrs, body = raw("PUT", ROTATE, { ["SlashID-OrgID"] = org, ["SlashID-API-Key"] = key })
    assert.are.equal(200, status)
    local new_key = H.org(org).api_key
    assert(new_key ~= key, "the fault's rotate was not honoured")
    assert(hdrs["x-new-key"] == new_key, "X-New-Key does not carry the new key")
    assert(hdrs["x-old-key"] == "was " .. key, "X-Old-Key does not carry the old key")
    assert(cjson.decode(body).result.api_key == new_key, "the body's key is not the new key")
    assert_valid({ key, new_key }, check_answer("PUT", ROTATE, status, body, hdrs["content-type"]))
  end)

  it("a client hears the new key in a fault header through the library too", function()
    local org, key = H.new_org()
    H.faults(org, { { rotate = true, headers = { ["X-New-Key"] = "{{new_key}}" } } })
    local result, _, _, info = slashid.rotate_key(H.opts(org, key))
    assert.are.equal("rotated", info.outcome)
    -- The library redacts the new key wherever it shows headers.
    assert(info.headers["x-new-key"] == "<redacted>", "X-New-Key is not shown redacted")
    assert(result.api_key == H.org(org).api_key, "result is not the emulator's key")
  end)
end)

describe("the checker reports violations", function()
  it("a rotation answer without result.api_key (a fault) violates the document", function()
    local org, key = H.new_org()
    H.faults(org, { { status = 200, body = '{"errors":[],"result":{}}' } })
    local t = tracer()
    local result, _, _, info = slashid.rotate_key(H.opts(org, key, { debug = t.debug }))
    assert.is_nil(result)
    assert.are.equal("unknown", info.outcome)
    local a = t.answer()
    assert.are.equal(200, a.status)
    assert_violation("required member 'api_key' is missing", { key }, check_traced(a))
  end)

  it("a config answer without result, or missing a required member, violates the document", function()
    local org, key = H.new_org()
    H.faults(org, { { status = 200, body = '{"errors":[]}' } })
    local t = tracer()
    assert.are.equal(true, (slashid.check_key(H.opts(org, key, { debug = t.debug }))))
    local a = t.answer()
    assert_violation("required member 'result' is missing", { key }, check_traced(a))

    local _, _, body = raw("GET", CONFIG, { ["SlashID-OrgID"] = org, ["SlashID-API-Key"] = key })
    assert_valid({ key }, check_answer("GET", CONFIG, 200, body, JSON))
    -- Edited as text: a decode/encode round trip would turn [] into {}.
    local n1, n2
    body, n1 = body:gsub('"sudo_mode_duration":%s*%d+%s*,?', "")
    body, n2 = body:gsub('("token_duration":%s*)(%d+)', '%1"%2"')
    assert.are.equal(1, n1)
    assert.are.equal(1, n2)
    local code, out = check_answer("GET", CONFIG, 200, body, JSON)
    assert_violation("required member 'sudo_mode_duration' is missing", { key }, code, out)
    assert_violation("body.result.token_duration: string where integer is expected", { key }, code, out)
  end)

  it("the old emulator's shapes are caught: undeclared members, result:null in an error", function()
    local old_config = '{"result":{"id":"x","name":"emulated organization",'
      .. '"tenant_name":"emulator"},"errors":[]}'
    local code, out = check_answer("GET", CONFIG, 200, old_config, JSON)
    assert_violation("body.result.tenant_name: member not declared by the schema", {}, code, out)
    assert_violation("required member 'from_email' is missing", {}, code, out)
    local old_error = '{"errors":[{"httpcode":401,"message":"invalid API key"}],"result":null}'
    assert_violation("body.result: member not declared", {},
      check_answer("PUT", ROTATE, 401, old_error, JSON))
    -- Plain JSON Schema (--loose) allows undeclared members; a missing
    -- required one stays a violation.
    assert_valid({}, check_answer("PUT", ROTATE, 401, old_error, JSON, { "--loose" }))
    assert_violation("required member 'from_email' is missing", {},
      check_answer("GET", CONFIG, 200, old_config, JSON, { "--loose" }))
  end)

  it("error envelopes and meta are held to their schemas, cursor_pagination included", function()
    local cases = {
      { '{"errors":[{"httpcode":"401","message":"no"}]}',
        "httpcode: string where integer is expected" },
      { '{"errors":{"httpcode":401}}', "body.errors: object where array is expected" },
      { '{"meta":null,"errors":[]}', "body.meta: null where object is expected" },
      { '{"meta":{"pagination":{"limit":1,"offset":0}},"errors":[]}',
        "pagination: required member 'total_count' is missing" },
      { '{"meta":{"cursor_pagination":{"limit":1,"total_count":2}},"errors":[]}',
        "cursor_pagination: required member 'cursor' is missing" },
      { '{"meta":{"cursor_pagination":{"limit":1,"cursor":7,"total_count":2}},"errors":[]}',
        "cursor: integer where string is expected" },
      { '{"errors":[],"errors":[]}', "not JSON" },
    }
    for _, c in ipairs(cases) do
      assert_violation(c[2], {}, check_answer("PUT", ROTATE, 400, c[1], JSON))
    end
    assert_valid({}, check_answer("PUT", ROTATE, 429,
      '{"meta":{"cursor_pagination":{"limit":1,"cursor":"c","total_count":2}},"errors":[]}',
      JSON))
    assert_violation("content type text/html is not documented", {},
      check_answer("PUT", ROTATE, 400, '{"errors":[]}', "text/html"))
    assert_violation("201 is not documented", {}, check_answer("PUT", ROTATE, 201, '{"errors":[]}', JSON))
  end)

  it("a violation message never quotes the answer's strings (keys stay out of the output)", function()
    local org, key = H.new_org()
    H.faults(org, { { rotate = true, status = 200, json = {
      errors = { { httpcode = "{{old_key}}", message = 5 } },
      result = { api_key = 7, extra = "{{new_key}}" } } } })
    local _, _, body = raw("PUT", ROTATE, { ["SlashID-OrgID"] = org, ["SlashID-API-Key"] = key })
    local new_key = H.org(org).api_key
    local code, out = check_answer("PUT", ROTATE, 200, body, JSON)
    assert_violation("api_key: integer where string is expected", { key, new_key }, code, out)
    assert_violation("httpcode: string where integer is expected", { key, new_key }, code, out)
  end)

  it("requests without their required headers, with bad values or a body, violate the document", function()
    local org, key = H.new_org()
    assert.is_truthy(slashid.rotate_key(H.opts(org, key)))
    local good = last_request(org)
    assert_valid({}, check_request(good))

    local function without(name)
      local r = { method = good.method, path = good.path, headers = {} }
      for k, v in pairs(good.headers) do
        if k ~= name then r.headers[k] = v end
      end
      return r
    end
    assert_violation("header SlashID%-OrgID: required header parameter is missing", {},
      check_request(without("slashid-orgid")))
    assert_violation("security: no credentials for any of: ApiKeyAuth", {},
      check_request(without("slashid-api-key")))

    local bad = without(nil)
    bad.headers["slashid-required-consistency"] = "everywhere"
    bad.headers["slashid-required-consistency-timeout"] = "500"
    local code, out = check_request(bad)
    assert_violation("SlashID%-Required%-Consistency: string not one of the allowed values", {}, code, out)
    assert_violation("SlashID%-Required%-Consistency%-Timeout: 500 above the maximum 120", {}, code, out)
    bad.headers["slashid-required-consistency-timeout"] = "soon"
    assert_violation("Timeout: not an integer", {}, check_request(bad))

    bad = without("accept")
    bad.headers.accept = "text/html"
    assert_violation("header Accept: admits none of the documented answers", {}, check_request(bad))
    assert.are.equal("application/json", good.headers.accept)

    assert_violation("takes no request body", {}, check_request(without(nil), '{"rotate":true}'))
    assert_violation("POST /organizations/api%-keys is not in the document", {},
      check_request({ method = "POST", path = ROTATE, headers = good.headers }))

    -- A request the emulator received without a key, recorded as such.
    raw("PUT", ROTATE, { ["SlashID-OrgID"] = org })
    local keyless = last_request(org)
    assert.are.equal("missing", keyless.key)
    assert_violation("security: no credentials", {}, check_request(keyless))
  end)
end)
