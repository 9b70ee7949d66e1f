-- The fault matrix (issue 3, part 1): every failure a network and a server
-- can produce, against the emulator, each case asserting
--   * the outcome (and whether a result came back),
--   * the `errors` entry: httpcode, curl_code where relevant, a message
--     that names the cause,
--   * how many requests the emulator received for the org: never more
--     than one once a request reached it, even with retries = 5 (a second
--     "tripwire" fault is queued behind the first: a wrong retry would
--     consume it),
--   * that the key went nowhere else: the emulator saw no request but this
--     org's, on the expected port, at the rotation endpoint, carrying the
--     org's current key; no connection reached the other port; a redirect
--     target (a listening "trap" socket) was never contacted,
--   * that the call returned within its deadline (request_timeout + slack).
--
-- spec/03 (outcome table) and spec/04 (retry rules) hold the basic rows;
-- this file adds the hostile ones and the cross-cutting assertions above,
-- the same key cases over HTTPS, and the same faults through ops and
-- rotate_keys; and that max_response_bytes caps the body only (headers
-- have a fixed cap of their own).
local H = require "helpers"
local slashid = require "slashid"
local socket = require "socket"

local now = socket.gettime

local is_integer = math.type and function(x) return math.type(x) == "integer" end
                 or function(x) return type(x) == "number" and x % 1 == 0 end

local ROTATE = "/organizations/api-keys"
local SLACK = 1.0            -- seconds allowed past a deadline
local MATRIX_TIMEOUT = 3     -- request_timeout of matrix calls (s)

local messages = H.messages

local envelope, http_date, nested_objects = H.envelope, H.http_date, H.nested_objects

-- Nested JSON text: `depth` arrays, or objects {"a":...} around "x".
local function nested_arrays(depth) return ("["):rep(depth) .. ("]"):rep(depth) end

-- A loopback listener that must never be contacted (a redirect target).
local function trap()
  local s = assert(socket.bind("127.0.0.1", 0))
  s:settimeout(0)
  local _, port = s:getsockname()
  return s, "http://127.0.0.1:" .. port
end

local function trap_hits(s)
  local n = 0
  while true do
    local c = s:accept()
    if not c then break end
    n = n + 1
    c:close()
  end
  return n
end

local TRIPWIRE = { status = 418, json = envelope(418, "TRIPWIRE: a request was retried") }

-- Runs one case and checks everything the header promises. A case:
--   faults        queued for the org (a tripwire is appended unless
--                 tripwire == false)
--   opts          extra options (retries = 5 and request_timeout = 3 are
--                 the matrix defaults)
--   https         over the emulator's HTTPS port (with its CA)
--   outcome, status, httpcode, curl_code (a number or a list of allowed
--   ones), message (plain substrings, any one of which must occur)
--   requests      API requests the emulator must have received (1)
--   attempts      info.attempts (= requests, or given)
--   rotations     the org's rotation count afterwards (when given)
--   min_wall      the call must take at least this long (a timeout case)
--   deadline      seconds the call may take before SLACK (request_timeout)
--   traps         listening sockets that must not have been contacted
--   via           "fresh" / "warm": on a new client's connection, or on one
--                 just reused (see below); default: the module's handle
--   check(result, errors, pagination, info, org, key)  extra checks
local function run(case)
  local org, key = H.new_org()
  local faults = {}
  for _, f in ipairs(case.faults or {}) do faults[#faults + 1] = f end
  if case.tripwire ~= false and #faults > 0 then faults[#faults + 1] = TRIPWIRE end
  if #faults > 0 then H.faults(org, faults) end

  local opts = H.opts(org, key, { retries = 5, request_timeout = MATRIX_TIMEOUT })
  if case.https then
    opts.base_url, opts.ca_file = H.https_url, H.ca_file
  end
  for k, v in pairs(case.opts or {}) do opts[k] = v end

  local traps = case.traps or {}

  -- `via`: nil, the module's shared handle (whatever connection it kept);
  -- "fresh", a new client (a new connection); "warm", a new client whose
  -- connection was just used by a healthy check_key of another org (so
  -- the faulty answer arrives on a reused keep-alive connection).
  local client
  if case.via then
    client = slashid.new()
    if case.via == "warm" then
      local worg, wkey = H.new_org()
      local wopts = H.opts(worg, wkey)
      wopts.base_url, wopts.ca_file = opts.base_url, opts.ca_file
      assert.is_true((client:check_key(wopts)))
    end
  end
  local before = H.stats()
  local t0 = now()
  local result, errors, pagination, info
  if client then
    result, errors, pagination, info = client:rotate_key(opts)
  else
    result, errors, pagination, info = slashid.rotate_key(opts)
  end
  local wall = now() - t0
  local after = H.stats()
  if client then client:close() end
  local state = H.org(org)
  local why = case.name .. ": " .. messages(errors) .. " (outcome " ..
              tostring(info and info.outcome) .. ")"

  -- outcome
  assert.is_table(info, why)
  assert.are.equal(case.outcome, info.outcome, why)
  if case.outcome == "rotated" then
    assert.is_table(result, why)
    assert.are.equal(state.api_key, result.api_key, why)
  else
    assert.is_nil(result, why)
  end
  assert.are.equal(case.status, info.status, why)
  assert.is_true(is_integer(info.status), why)

  -- errors
  assert.is_table(errors, why)
  for i, e in ipairs(errors) do
    assert.is_true(is_integer(e.httpcode), why .. ": errors[" .. i .. "].httpcode")
    assert.is_string(e.message, why)
  end
  if case.outcome ~= "rotated" then
    assert.is_true(#errors >= 1, why)
    local e = errors[#errors]
    assert.are.equal(case.httpcode, e.httpcode, why)
    if case.curl_code then
      assert.is_true(is_integer(e.curl_code), why .. ": no integer curl_code")
      local allowed = type(case.curl_code) == "table" and case.curl_code or { case.curl_code }
      local found = false
      for _, c in ipairs(allowed) do found = found or c == e.curl_code end
      assert.is_true(found, why .. ": curl_code " .. tostring(e.curl_code))
    else
      assert.is_nil(e.curl_code, why)
    end
    if case.message then
      local words = type(case.message) == "table" and case.message or { case.message }
      local found = false
      for _, w in ipairs(words) do
        found = found or e.message:lower():find(w:lower(), 1, true) ~= nil
      end
      assert.is_true(found, why .. ": the message does not name the cause (" ..
                     table.concat(words, " / ") .. ")")
    end
  end

  -- requests the server received, attempts
  local want = case.requests or 1
  assert.are.equal(want, #state.requests, why)
  assert.are.equal(case.attempts or want, info.attempts, why)
  assert.is_true(is_integer(info.attempts), why)
  if case.tripwire ~= false and #(case.faults or {}) > 0 and want == #case.faults then
    -- the tripwire is still queued: no attempt consumed it
    assert.are.equal(1, state.faults_pending, why .. ": a request was retried")
    for _, e in ipairs(errors) do assert.are_not.equal(418, e.httpcode, why) end
  end
  if case.rotations then assert.are.equal(case.rotations, state.rotations, why) end

  -- the key went nowhere else
  assert.are.equal(#state.requests, after.requests - before.requests,
                   why .. ": the emulator received requests for something else")
  local port = case.https and "https" or "http"
  local other = case.https and "http_connections" or "https_connections"
  assert.are.equal(0, after[other] - before[other], why .. ": a connection reached the other port")
  for i, r in ipairs(state.requests) do
    assert.are.equal("PUT", r.method, why)
    assert.are.equal(ROTATE, r.path, why)
    assert.are.equal(port, r.port, why)
    assert.are.equal("current", r.key, why .. ": request " .. i .. " carried a dead or foreign key")
    assert.are.equal("<redacted>", r.headers["slashid-api-key"], why)
  end
  for _, t in ipairs(traps) do
    assert.are.equal(0, trap_hits(t), why .. ": the redirect target was contacted")
  end

  -- deadline
  local budget = (case.deadline or opts.request_timeout) + SLACK
  assert.is_true(wall <= budget, ("%s: returned after %.2f s (deadline %.2f s)"):format(why, wall, budget))
  assert.is_true(info.elapsed <= wall + 0.05, why)
  if case.min_wall then
    assert.is_true(wall >= case.min_wall, ("%s: returned after only %.2f s"):format(why, wall))
  end

  -- the key never shows in what came back
  H.assert_no_secret(H.flatten(errors, pagination, info), key)
  if state.api_key ~= key and case.outcome ~= "rotated" then
    H.assert_no_secret(H.flatten(errors, pagination, info), state.api_key)
  end

  if case.check then case.check(result, errors, pagination, info, org, key) end
  return result, errors, pagination, info
end

-- A test for each case of `cases` (written as run() takes them), named by
-- the case's `title`.
local function each_case(cases)
  for _, case in ipairs(cases) do
    it(case.title, function() run(case) end)
  end
end

-- ---- transport ---------------------------------------------------------

describe("fault matrix: the connection", function()
  it("connection refused (closed port): retried `retries` times, nothing received", function()
    local base = "http://127.0.0.1:" .. H.closed_port()
    run{ name = "refused", opts = { base_url = base, retries = 5 },
         outcome = "not_rotated", status = 0, httpcode = 0, curl_code = 7,
         message = { "COULDNT_CONNECT", "refused" },
         requests = 0, attempts = 6, rotations = 0,
         deadline = 6 * 0.05 + 0.5 }
  end)

  it("connection refused with retries = 0: one attempt", function()
    local base = "http://127.0.0.1:" .. H.closed_port()
    run{ name = "refused, retries 0", opts = { base_url = base, retries = 0 },
         outcome = "not_rotated", status = 0, httpcode = 0, curl_code = 7,
         message = "COULDNT_CONNECT", requests = 0, attempts = 1, deadline = 0.5 }
  end)

  each_case{
    -- The emulator reads the request head (to find the org), then resets
    -- without reading further. libcurl had written the whole request (a PUT
    -- with no body is all head), so it reports a receive failure:
    -- CURLE_RECV_ERROR (56) "Connection reset by peer" (55, a send failure,
    -- would be possible only if the reset overtook the write). The request
    -- reached the server, so "unknown" is the right outcome: a server may act
    -- on a request whose answer it then fails to send.
    { title = "reset before the request is read (reset_before_read): unknown, CURLE_RECV_ERROR",
      name = "reset_before_read", via = "fresh", faults = { { action = "reset_before_read" } },
      outcome = "unknown", status = 0, httpcode = 0, curl_code = { 56, 55 },
      message = { "reset", "RECV_ERROR", "SEND_ERROR" }, rotations = 0 },
    { title = "reset after the request was read (reset, the server rotated)",
      name = "reset", via = "fresh", faults = { { action = "reset", rotate = true } },
      outcome = "unknown", status = 0, httpcode = 0, curl_code = 56,
      message = "reset", rotations = 1 },
    { title = "closed (FIN) after the request was read, nothing answered",
      name = "close", via = "fresh", faults = { { action = "close", rotate = true } },
      outcome = "unknown", status = 0, httpcode = 0, curl_code = 52,
      message = { "GOT_NOTHING", "empty reply" }, rotations = 1 },
    { title = "closed mid-answer: Content-Length promised, half the body sent (truncate)",
      name = "truncate", faults = { { action = "truncate", rotate = true } },
      outcome = "unknown", status = 200, httpcode = 0, curl_code = 18,
      message = { "PARTIAL_FILE", "partial" }, rotations = 1 },
    { title = "closed mid-answer in chunked encoding: no terminating chunk (truncate_chunked)",
      name = "truncate_chunked", faults = { { action = "truncate_chunked", rotate = true } },
      outcome = "unknown", status = 200, httpcode = 0, curl_code = 18,
      message = "partial", rotations = 1 },
    { title = "slow drip, 1 byte/s, request_timeout = 2: unknown, curl_code 28, returns in ~2 s",
      name = "drip", faults = { { action = "drip", interval = 1, rotate = true } },
      opts = { request_timeout = 2 },
      outcome = "unknown", status = 0, httpcode = 0, curl_code = 28,
      message = { "OPERATION_TIMEDOUT", "timed out" }, rotations = 1,
      min_wall = 1.8 },
    { title = "stall after the headers, request_timeout = 1.5: unknown, curl_code 28",
      name = "stall_after_headers",
      faults = { { action = "stall_after_headers", stall = 5, rotate = true } },
      opts = { request_timeout = 1.5 },
      outcome = "unknown", status = 200, httpcode = 0, curl_code = 28,
      message = "timed out", rotations = 1, min_wall = 1.4 },
  }

  -- The same drops on a reused keep-alive connection: libcurl would resend
  -- the request on its own (it cannot tell that the server acted); the
  -- library's pre-request callback refuses the resend, so libcurl ends with
  -- CURLE_ABORTED_BY_CALLBACK (42), its error buffer naming the first
  -- failure (the reset) or the refusal ("aborted by pre-request callback").
  -- Still exactly one request, still unknown.
  for _, f in ipairs({ { "close", { action = "close", rotate = true }, 1 },
                       { "reset", { action = "reset", rotate = true }, 1 },
                       { "reset_before_read", { action = "reset_before_read" }, 0 } }) do
    it(f[1] .. " on a reused keep-alive connection: no silent resend, unknown", function()
      run{ name = f[1] .. " (reused connection)", via = "warm", faults = { f[2] },
           outcome = "unknown", status = 0, httpcode = 0, curl_code = { 42, 52, 56 },
           message = { "pre-request", "reset", "empty reply" }, rotations = f[3] }
    end)
  end

  it("closed mid-answer with the new key inside the half that arrived", function()
    local pad = ("p"):rep(600)
    run{ name = "truncate, key first",
         faults = { { action = "truncate", rotate = true,
                      body = '{"result":{"api_key":"{{new_key}}"},"pad":"' .. pad .. '"}' } },
         outcome = "unknown", status = 200, httpcode = 0, curl_code = 18,
         message = "partial", rotations = 1 }
  end)
end)

-- ---- size limits --------------------------------------------------------

describe("fault matrix: answers too large", function()
  -- With a Content-Length above the cap, libcurl refuses the body itself
  -- (CURLOPT_MAXFILESIZE: CURLE_FILESIZE_EXCEEDED, "Maximum file size
  -- exceeded"); without one (chunked) the library's own counter stops it
  -- (CURLE_WRITE_ERROR, "larger than max_response_bytes").
  local TOO_LARGE = { "max_response_bytes", "maximum file size" }

  each_case{
    { title = "a 5 MB body against the default 1 MiB cap",
      name = "huge 5 MB", faults = { { action = "huge", size = 5 * 1024 * 1024, rotate = true } },
      outcome = "unknown", status = 200, httpcode = 0, curl_code = { 63, 23 },
      message = TOO_LARGE, rotations = 1 },
    { title = "a 5 MB chunked body against the default cap (no length announced)",
      name = "huge 5 MB chunked",
      faults = { { action = "huge", size = 5 * 1024 * 1024, chunked = true, rotate = true } },
      outcome = "unknown", status = 200, httpcode = 0, curl_code = 23,
      message = "max_response_bytes", rotations = 1 },
    { title = "a 5000-byte body against max_response_bytes = 1000",
      name = "huge, small cap", faults = { { action = "huge", size = 5000, rotate = true } },
      opts = { max_response_bytes = 1000 },
      outcome = "unknown", status = 200, httpcode = 0, curl_code = { 63, 23 },
      message = TOO_LARGE, rotations = 1 },
    { title = "an error answer (500) over the cap is unknown too",
      name = "huge 500", faults = { { action = "huge", status = 500, size = 50000 } },
      opts = { max_response_bytes = 2000 },
      outcome = "unknown", status = 500, httpcode = 0, curl_code = { 63, 23 },
      message = TOO_LARGE, rotations = 0 },
    { title = "a 200000-byte header line with a 10 MB cap: libcurl's own limit still ends it",
      name = "huge_header, big cap",
      faults = { { action = "huge_header", size = 200000, rotate = true } },
      opts = { max_response_bytes = 10 * 1024 * 1024 },
      outcome = "unknown", status = 200, httpcode = 0, curl_code = { 27, 23, 56, 100 },
      rotations = 1 },
  }

  -- libcurl refuses a header line above its own limit (CURL_MAX_HTTP_HEADER,
  -- 100 KiB) before our header callback sees it; libcurl 7.88 reports that
  -- as CURLE_OUT_OF_MEMORY (27) "Out of memory" with no detail in the error
  -- buffer. The request was sent: unknown. What matters here: no crash, one
  -- request, the module still works afterwards.
  for _, size in ipairs({ 200000, 2000000 }) do
    it("a " .. size .. "-byte header line: unknown, no crash", function()
      run{ name = "huge_header " .. size,
           faults = { { action = "huge_header", size = size, rotate = true } },
           outcome = "unknown", status = 200, httpcode = 0,
           curl_code = { 27, 23, 56, 100 }, rotations = 1 }
      local org, key = H.new_org()
      local _, errors, _, info = slashid.rotate_key(H.opts(org, key))
      assert.are.equal("rotated", info.outcome, messages(errors))
    end)
  end

  -- max_response_bytes caps the body only; headers have their own fixed
  -- 64 KiB cap (README), so a proxy's or CDN's lines cannot turn a
  -- rotation that succeeded into "unknown".
  it("many ordinary headers past a small body cap: the body fits, rotated", function()
    local headers = {}
    for i = 1, 60 do headers["X-Filler-" .. i] = ("f"):rep(100) end
    run{ name = "headers past a small body cap", faults = { { headers = headers, rotate = true } },
         opts = { max_response_bytes = 3000 },
         outcome = "rotated", status = 200, rotations = 1 }
  end)

  it("many ordinary headers past the fixed 64 KiB header cap", function()
    local headers = {}
    for i = 1, 700 do headers["X-Filler-" .. i] = ("f"):rep(100) end
    run{ name = "headers over the header cap", faults = { { headers = headers, rotate = true } },
         outcome = "unknown", status = 200, httpcode = 0, curl_code = { 23, 63 },
         message = "headers are larger than 65536 bytes", rotations = 1 }
  end)
end)

describe("max_response_bytes caps the body only", function()
  it("a small body with ~1 KB of proxy/CDN headers and the cap at 256 is rotated", function()
    local org, key = H.new_org()
    local headers = {}
    for i = 1, 16 do headers["X-Cdn-Trace-" .. i] = ("v"):rep(60) end
    H.faults(org, { { rotate = true, headers = headers } })
    local result, errors, _, info = slashid.rotate_key(H.opts(org, key, {
      max_response_bytes = 256 }))
    assert.are.equal("rotated", info.outcome, errors[1] and errors[1].message)
    assert.is_string(result.api_key)
    assert.are.equal(("v"):rep(60), info.headers["x-cdn-trace-16"])
  end)

  it("a body over the cap is still unknown (the cap still holds for the body)", function()
    local org, key = H.new_org()
    local _, errors, _, info = slashid.rotate_key(H.opts(org, key, {
      max_response_bytes = 16 }))
    assert.are.equal("unknown", info.outcome)
    assert.matches("max_response_bytes", errors[1].message)
  end)

  it("headers over the fixed 64 KiB cap end unknown, with a message that says so", function()
    local org, key = H.new_org()
    H.faults(org, { { rotate = true, action = "huge_header", size = 70000 } })
    local result, errors, _, info = slashid.rotate_key(H.opts(org, key))
    assert.is_nil(result)
    assert.are.equal("unknown", info.outcome)
    assert.matches("headers are larger than 65536 bytes", errors[1].message)
    assert.are.equal(1, H.requests(org))
  end)
end)

-- ---- redirects ----------------------------------------------------------

describe("fault matrix: 3xx to another host or port is never followed", function()
  for _, code in ipairs({ 301, 302, 303, 307, 308 }) do
    it(code .. " to the emulator's other (HTTPS) port and to a trap listener", function()
      -- the HTTPS port: were it followed, the emulator would record a
      -- second request for this org (and an HTTPS connection)
      run{ name = code .. " -> other port",
           faults = { { status = code, headers = { Location = H.https_url .. ROTATE } } },
           outcome = "not_rotated", status = code, httpcode = code, message = "HTTP " .. code,
           rotations = 0,
           check = function(_, _, _, info)
             assert.are.equal(H.https_url .. ROTATE, info.headers["location"])
           end }
      local s, url = trap()
      run{ name = code .. " -> trap",
           faults = { { status = code, headers = { Location = url .. ROTATE },
                        json = envelope(code, "moved elsewhere") } },
           outcome = "not_rotated", status = code, httpcode = code,
           message = "moved elsewhere", rotations = 0, traps = { s } }
      s:close()
    end)
  end

  it("302 to a closed port: not followed (no connection failure reported)", function()
    local target = "http://127.0.0.1:" .. H.closed_port() .. ROTATE
    run{ name = "302 -> closed port",
         faults = { { status = 302, headers = { Location = target } } },
         outcome = "not_rotated", status = 302, httpcode = 302, message = "HTTP 302",
         rotations = 0 }
  end)

  it("302 to another host name of the same server (localhost) and to a relative path", function()
    local port = H.http_url:match(":(%d+)$")
    run{ name = "302 -> localhost",
         faults = { { status = 302, headers = { Location = "http://localhost:" .. port .. ROTATE } } },
         outcome = "not_rotated", status = 302, httpcode = 302, rotations = 0 }
    run{ name = "302 -> relative",
         faults = { { status = 302, headers = { Location = "/elsewhere" } } },
         outcome = "not_rotated", status = 302, httpcode = 302, rotations = 0 }
  end)

  it("a 307 from the HTTPS port to a plain-HTTP trap", function()
    local s, url = trap()
    run{ name = "https 307 -> http trap", https = true,
         faults = { { status = 307, headers = { Location = url .. ROTATE } } },
         outcome = "not_rotated", status = 307, httpcode = 307, rotations = 0, traps = { s } }
    s:close()
  end)
end)

-- ---- 408, 429 -----------------------------------------------------------

describe("fault matrix: 408 and 429", function()
  each_case{
    { title = "408 after the server rotated: unknown, one request",
      name = "408 rotated", faults = { { status = 408, rotate = true } },
      outcome = "unknown", status = 408, httpcode = 408, message = "HTTP 408",
      rotations = 1 },
    { title = "408 with an envelope: the server's entry kept as sent",
      name = "408 envelope",
      faults = { { status = 408, rotate = true, json = envelope(408, "all_regions not reached in 30 s") } },
      opts = { consistency = "all_regions" },
      outcome = "unknown", status = 408, httpcode = 408,
      message = "all_regions not reached", rotations = 1 },
    { title = "429, Retry-After: 0 twice, then the real answer: three requests, all with the live key",
      name = "429 seconds",
      faults = { { status = 429, ["repeat"] = 2, headers = { ["Retry-After"] = "0" } } },
      tripwire = false,
      outcome = "rotated", status = 200, requests = 3, rotations = 1,
      check = function(_, errors, _, info)
        assert.are.same({}, errors)
        assert.are.equal(0, info.retry_after)
      end },
    { title = "429, Retry-After as an HTTP-date in the past, every time: retries run out",
      name = "429 date, exhausted",
      faults = { { status = 429, ["repeat"] = 6, headers = { ["Retry-After"] = http_date(-3600) },
                   json = envelope(429, "rate limited") } },
      tripwire = false,
      outcome = "not_rotated", status = 429, httpcode = 429, message = "rate limited",
      requests = 6, rotations = 0,
      check = function(_, errors, _, info)
        assert.are.equal(1, #errors)
        assert.are.equal(0, info.retry_after)
      end },
    { title = "429, Retry-After as an HTTP-date years ahead: retries end, one request",
      name = "429 date 2099",
      faults = { { status = 429, headers = { ["Retry-After"] = "Thu, 01 Jan 2099 00:00:00 GMT" } } },
      outcome = "not_rotated", status = 429, httpcode = 429, rotations = 0,
      check = function(_, _, _, info)
        assert.is_true(info.retry_after > 1e9, tostring(info.retry_after))
      end },
  }

  for _, garbage in ipairs({ "0x10", "1.5", "NaN", "inf", "+5", "1e3", "tomorrow", "1 2", "" }) do
    it(("429, garbage Retry-After %q: the backoff is used, then rotated"):format(garbage), function()
      run{ name = "429 garbage " .. garbage,
           faults = { { status = 429, headers = { ["Retry-After"] = garbage } } },
           tripwire = false,
           outcome = "rotated", status = 200, requests = 2, rotations = 1,
           check = function(_, _, _, info) assert.is_nil(info.retry_after) end }
    end)
  end

  for _, absurd in ipairs({ "99999999999999999999", ("9"):rep(400),
                            "Fri, 31 Dec 9999 23:59:59 GMT" }) do
    it("429, absurd Retry-After " .. absurd:sub(1, 30) .. ": retries end at once, one request", function()
      run{ name = "429 absurd",
           faults = { { status = 429, headers = { ["Retry-After"] = absurd },
                        json = envelope(429, "go away") } },
           outcome = "not_rotated", status = 429, httpcode = 429, message = "go away",
           rotations = 0, deadline = 0.5,
           check = function(_, _, _, info)
             assert.is_number(info.retry_after)
             assert.is_true(info.retry_after > 1e9, tostring(info.retry_after))
           end }
    end)
  end
end)

-- ---- 5xx ----------------------------------------------------------------

describe("fault matrix: 5xx", function()
  for _, code in ipairs({ 500, 502, 503, 504 }) do
    it(code .. " with an envelope: unknown, the server's entry, one request", function()
      run{ name = code .. " envelope",
           faults = { { status = code, json = envelope(code, "upstream " .. code) } },
           outcome = "unknown", status = code, httpcode = code, message = "upstream " .. code,
           rotations = 0 }
    end)

    it(code .. " without an envelope (HTML): unknown, status and excerpt", function()
      run{ name = code .. " html",
           faults = { { status = code, content_type = "text/html",
                        body = "<html><h1>" .. code .. " gateway trouble</h1></html>" } },
           outcome = "unknown", status = code, httpcode = code,
           message = code .. " gateway trouble", rotations = 0 }
    end)
  end

  each_case{
    { title = "503 with Retry-After: still never retried",
      name = "503 retry-after",
      faults = { { status = 503, headers = { ["Retry-After"] = "0" } } },
      outcome = "unknown", status = 503, httpcode = 503, message = "HTTP 503" },
    { title = "500 after the server really rotated (rotate = true)",
      name = "500 rotated", faults = { { status = 500, rotate = true } },
      outcome = "unknown", status = 500, httpcode = 500, rotations = 1 },
  }
end)

-- ---- 2xx that cannot be read ---------------------------------------------

describe("fault matrix: unreadable 2xx answers", function()
  each_case{
    { title = "a non-JSON 2xx after a real rotation",
      name = "non-JSON 200",
      faults = { { status = 200, rotate = true, content_type = "text/plain", body = "done!" } },
      outcome = "unknown", status = 200, httpcode = 200, message = "not a JSON object",
      rotations = 1 },
    { title = "a 2xx JSON without result.api_key",
      name = "no api_key",
      faults = { { status = 200, rotate = true, json = { result = { id = "k-1", name = "no key here" } } } },
      outcome = "unknown", status = 200, httpcode = 200, message = "no result.api_key",
      rotations = 1 },
    { title = "JSON with nulls everywhere: meta, errors, result",
      name = "nulls",
      faults = { { status = 200, rotate = true, body = '{"meta":null,"errors":null,"result":null}' } },
      outcome = "unknown", status = 200, httpcode = 200, message = "no result.api_key",
      rotations = 1,
      check = function(_, errors, pagination)
        assert.are.equal(1, #errors)
        assert.is_nil(pagination)
      end },
    { title = "JSON with result.api_key null",
      name = "api_key null",
      faults = { { status = 200, rotate = true, body = '{"result":{"api_key":null}}' } },
      outcome = "unknown", status = 200, httpcode = 200, message = "no result.api_key",
      rotations = 1 },
    { title = "JSON nulls inside lists and pagination",
      name = "null members",
      faults = { { status = 200, rotate = true,
                   body = '{"meta":{"pagination":null},"errors":[null,null],"result":{"api_key":null}}' } },
      outcome = "unknown", status = 200, httpcode = 200, rotations = 1,
      check = function(_, _, pagination) assert.is_nil(pagination) end },
    { title = "10000-deep array nesting in a 200: unknown, no crash",
      name = "deep arrays",
      faults = { { status = 200, rotate = true, body = nested_arrays(10000) } },
      outcome = "unknown", status = 200, httpcode = 200, message = "HTTP 200",
      rotations = 1 },
    { title = "10000-deep object nesting beside a real key in a 200: rotated (read tolerantly), no crash, key hidden",
      name = "deep objects",
      faults = { { status = 200, rotate = true,
                   body = '{"result":{"api_key":"{{new_key}}"},"x":' .. nested_objects(10000) .. '}' } },
      outcome = "rotated", status = 200, rotations = 1,
      check = function(_, errors)
        assert.are.equal(1, #errors)
        assert.matches("result.api_key was read", errors[1].message, 1, true)
      end },
    { title = "50-deep object nesting in an error envelope is fine",
      name = "deep 50 in 400",
      faults = { { status = 400, body = '{"errors":[{"httpcode":400,"message":"nested detail","detail":' ..
                   nested_objects(50) .. '}],"result":null}' } },
      outcome = "not_rotated", status = 400, httpcode = 400, message = "nested detail",
      check = function(_, errors)
        assert.are.same({ { httpcode = 400, message = "nested detail" } }, errors)
      end },
    { title = "50-deep nesting beside the key in a 200 is fine: rotated",
      name = "deep 50 in 200",
      faults = { { status = 200, rotate = true,
                   body = '{"result":{"api_key":"{{new_key}}","extra":' .. nested_objects(50) ..
                          '},"errors":[],"meta":' .. nested_arrays(50) .. '}' } },
      outcome = "rotated", status = 200, rotations = 1 },
    { title = "10000-deep nesting in a 500: unknown, one excerpt entry",
      name = "deep 500",
      faults = { { status = 500, body = nested_arrays(10000) } },
      outcome = "unknown", status = 500, httpcode = 500, message = "HTTP 500" },
  }

  it("JSON nulls in an error answer (400 / 500): one entry with the status", function()
    run{ name = "400 nulls",
         faults = { { status = 400, body = '{"meta":null,"errors":null,"result":null}' } },
         outcome = "not_rotated", status = 400, httpcode = 400, message = "HTTP 400" }
    run{ name = "500 nulls",
         faults = { { status = 500, body = '{"meta":null,"errors":[null],"result":null}' } },
         outcome = "unknown", status = 500, httpcode = 500, message = "HTTP 500" }
  end)
end)

-- ---- the key cases over HTTPS ----------------------------------------------

describe("fault matrix over HTTPS", function()
  local cases = {
    { name = "refused", base = true, outcome = "not_rotated", status = 0, httpcode = 0,
      curl_code = 7, requests = 0, attempts = 3, opts = { retries = 2 } },
    { name = "close", via = "fresh", faults = { { action = "close", rotate = true } },
      outcome = "unknown", status = 0, httpcode = 0, curl_code = 52, message = "empty reply",
      rotations = 1 },
    { name = "close (reused connection)", via = "warm", faults = { { action = "close", rotate = true } },
      outcome = "unknown", status = 0, httpcode = 0, curl_code = { 42, 52 }, rotations = 1 },
    { name = "reset", via = "fresh", faults = { { action = "reset", rotate = true } },
      outcome = "unknown", status = 0, httpcode = 0, curl_code = 56, message = "reset",
      rotations = 1 },
    { name = "reset_before_read", via = "fresh", faults = { { action = "reset_before_read" } },
      outcome = "unknown", status = 0, httpcode = 0, curl_code = { 56, 55 }, rotations = 0 },
    { name = "truncate", faults = { { action = "truncate", rotate = true } }, outcome = "unknown",
      status = 200, httpcode = 0, curl_code = 18, message = "partial", rotations = 1 },
    { name = "truncate_chunked", faults = { { action = "truncate_chunked", rotate = true } },
      outcome = "unknown", status = 200, httpcode = 0, curl_code = 18, rotations = 1 },
    { name = "stall", faults = { { action = "stall_after_headers", stall = 5 } },
      opts = { request_timeout = 1 }, outcome = "unknown", status = 200, httpcode = 0,
      curl_code = 28, min_wall = 0.9 },
    { name = "huge", faults = { { action = "huge", size = 100000, rotate = true } },
      opts = { max_response_bytes = 5000 }, outcome = "unknown", status = 200, httpcode = 0,
      curl_code = { 63, 23 }, rotations = 1 },
    { name = "408", faults = { { status = 408, rotate = true } }, outcome = "unknown",
      status = 408, httpcode = 408, message = "HTTP 408", rotations = 1 },
    { name = "429 absurd", faults = { { status = 429, headers = { ["Retry-After"] = "99999999999999999999" } } },
      outcome = "not_rotated", status = 429, httpcode = 429 },
    { name = "500", faults = { { status = 500, json = envelope(500, "tls boom") } },
      outcome = "unknown", status = 500, httpcode = 500, message = "tls boom" },
    { name = "502 no envelope", faults = { { status = 502, body = "bad gateway" } },
      outcome = "unknown", status = 502, httpcode = 502, message = "bad gateway" },
    { name = "non-JSON 200", faults = { { status = 200, rotate = true, body = "ok" } },
      outcome = "unknown", status = 200, httpcode = 200, rotations = 1 },
  }
  for _, c in ipairs(cases) do
    it(c.name, function()
      c.https = true
      c.name = "https " .. c.name
      if c.base then
        c.opts = c.opts or {}
        c.opts.base_url = "https://127.0.0.1:" .. H.closed_port()
        c.opts.ca_file = H.ca_file
        c.https = nil   -- run() would put the emulator back
        c.name = c.name .. " (closed port)"
      end
      run(c)
    end)
  end
end)

-- ---- the same faults through ops and rotate_keys ----------------------------

describe("fault matrix through start_rotate_key and rotate_keys", function()
  local faults = {
    { "reset_before_read", { action = "reset_before_read" }, "unknown", 0 },
    { "truncate", { action = "truncate", rotate = true }, "unknown", 200 },
    { "huge_header", { action = "huge_header", size = 200000, rotate = true }, "unknown", 200 },
    { "408", { status = 408, rotate = true }, "unknown", 408 },
    { "503", { status = 503 }, "unknown", 503 },
    { "302", { status = 302, headers = { Location = "http://127.0.0.1:1" .. ROTATE } }, "not_rotated", 302 },
    { "429 absurd", { status = 429, headers = { ["Retry-After"] = "99999999999999999999" } }, "not_rotated", 429 },
    { "nulls", { status = 200, rotate = true, body = '{"meta":null,"errors":null,"result":null}' }, "unknown", 200 },
    { "deep", { status = 200, rotate = true, body = nested_arrays(10000) }, "unknown", 200 },
  }

  it("an op gives rotate_key's outcome, one request each", function()
    for _, f in ipairs(faults) do
      local org, key = H.new_org()
      H.faults(org, { f[2], TRIPWIRE })
      local t0 = now()
      local op = slashid.start_rotate_key(H.opts(org, key, { retries = 5, request_timeout = 3 }))
      assert.is_true(op:wait(5), f[1])
      local result, errors, _, info = op:results()
      assert.is_true(now() - t0 <= 3 + SLACK, f[1])
      assert.is_nil(result, f[1])
      assert.are.equal(f[3], info.outcome, f[1] .. ": " .. messages(errors))
      assert.are.equal(f[4], info.status, f[1])
      assert.is_true(#errors >= 1, f[1])
      assert.are.equal(1, H.requests(org), f[1])
      assert.are.equal(1, H.org(org).faults_pending, f[1])
    end
  end)

  it("rotate_keys gives each item rotate_key's outcome, one request each", function()
    local list, orgs = {}, {}
    for i, f in ipairs(faults) do
      local org, key = H.new_org()
      H.faults(org, { f[2], TRIPWIRE })
      orgs[i] = org
      list[i] = { org_id = org, api_key = key }
    end
    -- and one healthy item among them
    local good_org, good_key = H.new_org()
    list[#list + 1] = { org_id = good_org, api_key = good_key }
    local before = H.stats()
    local t0 = now()
    local outcomes = slashid.rotate_keys(list, { base_url = H.http_url, retries = 5,
      retry_delay = 0.01, retry_max_delay = 0.05, request_timeout = 3, concurrency = 4 })
    assert.is_true(now() - t0 <= 2 * (3 + SLACK))
    for i, f in ipairs(faults) do
      local o = outcomes[i]
      assert.is_nil(o.result, f[1])
      assert.are.equal(f[3], o.info.outcome, f[1] .. ": " .. messages(o.errors))
      assert.are.equal(f[4], o.info.status, f[1])
      assert.are.equal(1, H.requests(orgs[i]), f[1])
      assert.are.equal(1, H.org(orgs[i]).faults_pending, f[1])
    end
    local last = outcomes[#list]
    assert.are.equal("rotated", last.info.outcome, messages(last.errors))
    H.assert_key_equal(H.org(good_org).api_key, last.result.api_key)
    assert.are.equal(#list, H.stats().requests - before.requests)
  end)
end)
