-- Echoes and encodings: how an answer may quote a key, encode its body or
-- spell a URL, against the rules of "Outcomes", "Secrets" and
-- slashid.new (the reference: docs/values.ld.lua): a 2xx whose envelope
-- holds a well-formed result.api_key never loses it, whatever its
-- Content-Encoding says; no key (old or new), nor a 12-character piece of
-- one, shows in errors, info.headers or the debug trace, however it is
-- escaped, folded or cut; a client adopts a new key at its own base URL
-- however that URL is spelled. No key is ever printed: matches are
-- reported without the text.
local H = require "helpers"
local slashid = require "slashid"
local socket = require "socket"

local messages = H.messages

local serial = 0
local function known_key(tag)
  serial = serial + 1
  return ("sk_%08x%08x_%s_%d/%06dq"):format(math.random(0, 0x7fffffff),
                                             math.random(0, 0x7fffffff), tag, serial,
                                             math.random(0, 999999))
end

local decode = H.decode_echo

-- No 12 consecutive characters of `key` in `text`, as they are or decoded.
-- Only printable runs of the key count (a piece holding a control byte is
-- split there).
local function assert_no_piece(text, key, where)
  local plain = decode(text)
  for i = 1, #key - 11 do
    local piece = key:sub(i, i + 11)
    if not piece:find("[^\32-\126]") and
       (text:find(piece, 1, true) or plain:find(piece, 1, true)) then
      error(("a 12-character piece of a key (at offset %d) was found in %s"):format(i, where), 2)
    end
  end
end

local function tracer()
  local lines = {}
  return function(line) lines[#lines + 1] = line end, lines
end

-- ---- a raw loopback server (in process, driven while an op runs) -----------

-- `answers[n]` is the n-th request's answer: a string, a list of pieces
-- ({ bytes, seconds to wait before }), or function(head) -> either.
-- `start(base_url)` starts an op; returns the finished op and the heads.
local function serve(answers, start, host, keep)
  host = host or "127.0.0.1"
  local server = keep or assert(socket.bind(host, 0))
  local _, port = server:getsockname()
  server:settimeout(0)
  local url = host:find(":", 1, true) and ("http://[" .. host .. "]:" .. port)
                                        or ("http://" .. host .. ":" .. port)
  local op = start(url, port)
  local conns, heads, n = {}, {}, 0
  local deadline = socket.gettime() + 20
  while not op:poll() and socket.gettime() < deadline do
    local c = server:accept()
    if c then c:settimeout(0); conns[#conns + 1] = { s = c, buf = "" } end
    for _, k in ipairs(conns) do
      if not k.done then
        if not k.pieces then
          local data, _, part = k.s:receive(4096)
          k.buf = k.buf .. (data or part or "")
          local e = k.buf:find("\r\n\r\n", 1, true)
          if e then
            n = n + 1
            local head = k.buf:sub(1, e + 3)
            heads[n] = head
            local a = answers[n] or answers[#answers]
            if type(a) == "function" then a = a(head) end
            if type(a) == "string" then a = { { a } } end
            k.pieces, k.i, k.at = a, 1, socket.gettime()
          end
        else
          local p = k.pieces[k.i]
          if not p then
            k.s:close()
            k.done = true
          elseif socket.gettime() >= k.at + (p[2] or 0) then
            k.s:settimeout(5)
            k.s:send(p[1])
            k.s:settimeout(0)
            k.i, k.at = k.i + 1, socket.gettime()
          end
        end
      end
    end
    socket.sleep(0.002)
  end
  if not keep then server:close() end
  for _, k in ipairs(conns) do pcall(k.s.close, k.s) end
  assert(op:poll(), "the op did not finish")
  return op, heads
end

local function raw_rotate(answers, opts)
  local op = serve(answers, function(url)
    opts.base_url = url
    return slashid.start_rotate_key(opts)
  end)
  return op:results()
end

local function answer(status, headers, body)
  return "HTTP/1.1 " .. status .. "\r\n" .. (headers or "") ..
         "Content-Length: " .. #body .. "\r\nConnection: close\r\n\r\n" .. body
end

-- ---- (b) obs-fold with whitespace before the line break ---------------------

describe("a key folded across header lines with whitespace before the break", function()
  -- RFC 9112's obs-fold is OWS CRLF RWS: the whitespace BEFORE the CRLF is
  -- part of the fold too. answer.c takes out the CRLF and the whitespace
  -- after it only, so "first-half<SP>" + "second-half" stays split.
  it("leaves no piece of the old or new key in info.headers nor the trace", function()
    for _, fold in ipairs({ " \r\n ", "\t\r\n\t", "   \r\n " }) do
      local org, key = H.new_org_with_key(known_key("OLD"))
      local new = known_key("NEW")
      local function split(k) return k:sub(1, 20) .. fold .. k:sub(21) end
      H.faults(org, { { status = 200, body = '{"result":{"api_key":"' .. new .. '"}}',
                        headers = { ["X-Echo-Old"] = "was " .. split(key),
                                    ["X-Echo-New"] = split(new) .. " now",
                                    ["X-Plain"] = "visible" } } })
      local debug, lines = tracer()
      local result, errors, _, info = slashid.rotate_key(H.opts(org, key, { debug = debug }))
      assert.are.equal("rotated", info.outcome, messages(errors))
      H.assert_key_equal(new, result.api_key)
      assert.are.equal("visible", info.headers["x-plain"])
      for _, k in ipairs({ key, new }) do
        assert_no_piece(H.flatten(info.headers), k, ("info.headers (fold %q)"):format(fold))
        assert_no_piece(table.concat(lines, "\n"), k, ("the trace (fold %q)"):format(fold))
      end
    end
  end)

  it("the same in a chunked answer's trailers", function()
    local key, new = known_key("OLD"), known_key("NEW")
    local body = '{"result":{"api_key":"' .. new .. '"}}'
    local debug, lines = tracer()
    local result, errors, _, info = raw_rotate({
      "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTrailer: X-T\r\n" ..
      "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" ..
      ("%x\r\n%s\r\n"):format(#body, body) ..
      "0\r\nX-T: " .. key:sub(1, 20) .. " \r\n " .. key:sub(21) .. "\r\n\r\n" },
      { org_id = "org-trailer", api_key = key, debug = debug, retries = 0 })
    assert.are.equal("rotated", info.outcome, messages(errors))
    H.assert_key_equal(new, result.api_key)
    assert_no_piece(H.flatten(info.headers), key, "info.headers")
    assert_no_piece(table.concat(lines, "\n"), key, "the trace")
  end)
end)

-- ---- (a) a plain envelope under a Content-Encoding libcurl refuses ----------

describe("a 2xx whose plain JSON envelope carries a wrong Content-Encoding", function()
  -- The request says Accept-Encoding: deflate, gzip, br, zstd, so libcurl
  -- decodes; a label it does not know ("utf-8", a common misconfiguration)
  -- or a body that is not what the label says makes libcurl drop the body
  -- (CURLE_BAD_CONTENT_ENCODING) before answer.c ever sees it.
  for _, ce in ipairs({ "utf-8", "UTF-8", "x-custom", "gzip", "br" }) do
    it("Content-Encoding: " .. ce .. " on a plain envelope: rotated, the key returned", function()
      local org, key = H.new_org()
      H.faults(org, { { status = 200, rotate = true,
                        body = '{"errors":[],"result":{"api_key":"{{new_key}}"}}',
                        headers = { ["Content-Encoding"] = ce } } })
      local result, errors, _, info = slashid.rotate_key(H.opts(org, key))
      local state = H.org(org)
      assert.are.equal(1, state.rotations, "the emulator did not rotate")
      assert.are.equal("rotated", info.outcome,
                       "the server issued a key the caller never got: " .. messages(errors))
      H.assert_key_equal(state.api_key, result.api_key)
    end)
  end
end)

-- ---- (b)+(c) a new key with a control or non-ASCII character, echoed --------

describe("a new key with a control or non-ASCII character echoed JSON-escaped", function()
  -- encoded_at (secret.c) knows \uXXXX for one byte, \/ \\ \" only: not
  -- \n \t \r \b \f, nor a \uXXXX standing for a multi-byte UTF-8 character.
  for _, esc in ipairs({ "\\n", "\\t", "\\r", "\\b", "\\f", "\\u00e9", "\\u2028" }) do
    it(esc .. ": returned, not saved, and no piece of it in info.headers nor the trace", function()
      local org, key = H.new_org_with_key(known_key("OLD"))
      local a, b = known_key("NA"), known_key("NB")
      local escaped = a .. esc .. b
      H.faults(org, { { status = 200,
                        body = '{"meta":{"note":"issued ' .. escaped .. '"},' ..
                               '"result":{"api_key":"' .. escaped .. '"}}',
                        headers = { ["X-Issued"] = escaped } } })
      local path = H.mkdir(H.tmpname("r17c")) .. "/key"
      local debug, lines = tracer()
      local result, errors, _, info =
        slashid.rotate_key(H.opts(org, key, { debug = debug, save_to = path }))
      assert.are.equal("rotated", info.outcome, messages(errors))
      assert.is_truthy(result.api_key:find(a, 1, true) == 1, "the key came back changed")
      assert.is_false(info.saved)
      assert.is_nil(H.read_if_any(path), "the file was written")
      -- the new key's two printable halves are each 12+ characters long
      for _, half in ipairs({ a, b }) do
        assert_no_piece(H.flatten(info.headers), half, "info.headers")
        assert_no_piece(table.concat(lines, "\n"), half, "the trace")
      end
    end)
  end
end)

-- ---- (b) verify's check quotes the old key ---------------------------------

describe("verify = true, and the check's answer quotes the old key", function()
  -- The check presents the new key: only the new key is a secret of that
  -- transfer, so the old key the caller presented for the rotation comes
  -- back in errors ("verify: the new key could not be checked: ...") and
  -- in the check's part of the trace.
  it("the old key is in neither errors nor the trace", function()
    local org, key = H.new_org_with_key(known_key("OLD"))
    H.faults(org, {
      { rotate = true, headers = { ["X-Ok"] = "1" } },     -- the real rotation
      { status = 503, content_type = "application/json",
        headers = { ["X-Old-Key"] = key },
        body = '{"errors":[{"httpcode":503,"message":"old key ' .. key ..
               ' still cached, retry later"}]}' },
    })
    local debug, lines = tracer()
    local result, errors, pagination, info =
      slashid.rotate_key(H.opts(org, key, { debug = debug, verify = true, retries = 0 }))
    assert.are.equal("rotated", info.outcome, messages(errors))
    H.assert_key_equal(H.org(org).api_key, result.api_key)
    assert.is_false(info.verified)
    assert_no_piece(H.flatten(errors, pagination, info), key, "errors/info")
    assert_no_piece(tostring(errors), key, "tostring(errors)")
    assert_no_piece(table.concat(lines, "\n"), key, "the trace")
  end)
end)

-- ---- (b) a piece of the old key where the body is cut ----------------------

describe("a body that ends inside an echoed old key", function()
  it("a 500 page dropped mid-echo (Content-Length promised): no piece in errors nor the trace", function()
    local org, key = H.new_org_with_key(known_key("OLD"))
    local a = 100
    local pre = "<html><p>" .. ("x"):rep(a - 9)
    local post = ("z"):rep(a + 40 - #key)
    -- the emulator's "truncate" sends the first half: up to key:sub(1, 20)
    H.faults(org, { { status = 500, content_type = "text/html", action = "truncate",
                      body = pre .. key .. post } })
    local debug, lines = tracer()
    local result, errors, pagination, info =
      slashid.rotate_key(H.opts(org, key, { debug = debug, retries = 0 }))
    assert.is_nil(result)
    assert.are.equal("unknown", info.outcome)
    assert_no_piece(H.flatten(errors, pagination, info), key, "errors/info")
    assert_no_piece(table.concat(lines, "\n"), key, "the trace")
  end)

  it("a complete 403 page quoting only the first 24 characters of the old key", function()
    local org, key = H.new_org_with_key(known_key("OLD"))
    H.faults(org, { { status = 403, content_type = "text/html",
                      body = "<p>refused: " .. key:sub(1, 24) } })
    local debug, lines = tracer()
    local result, errors, pagination, info =
      slashid.rotate_key(H.opts(org, key, { debug = debug }))
    assert.is_nil(result)
    assert.are.equal("not_rotated", info.outcome)
    assert_no_piece(H.flatten(errors, pagination, info), key, "errors/info")
    assert_no_piece(table.concat(lines, "\n"), key, "the trace")
  end)
end)

-- ---- (b) overlapping occurrences ------------------------------------------

describe("a new key whose start overlaps the old key's end", function()
  -- push_redacted (secret.c) scans left to right and, after redacting a
  -- match, resumes after it: a second secret starting inside the first
  -- match is never seen, and its tail is copied out.
  it("no piece of the new key in info.headers nor the trace", function()
    local org, key = H.new_org_with_key(known_key("OLD"))
    local tail = "QRSTUVWXYZqrstuvwxyz_overlap"
    local new = key:sub(-10) .. tail
    H.faults(org, { { status = 200,
                      body = '{"meta":{"note":"rotated ' .. key .. tail .. '"},' ..
                             '"result":{"api_key":"' .. new .. '"}}',
                      headers = { ["X-Rotated"] = key .. tail } } })
    local debug, lines = tracer()
    local result, errors, _, info = slashid.rotate_key(H.opts(org, key, { debug = debug }))
    assert.are.equal("rotated", info.outcome, messages(errors))
    H.assert_key_equal(new, result.api_key)
    for _, k in ipairs({ key, new }) do
      assert_no_piece(H.flatten(info.headers), k, "info.headers")
      assert_no_piece(table.concat(lines, "\n"), k, "the trace")
    end
  end)
end)

-- ---- (d) the client's own base URL spelled otherwise -------------------------

describe("a client's own base URL spelled otherwise", function()
  -- holds() (lua/slashid.lua) compares url_key() texts: scheme and host
  -- lowered, default port and trailing slashes dropped. libcurl reaches
  -- the same server for a port with a leading zero, for dot segments, and
  -- for another spelling of the same IPv6 address: the key the client
  -- holds is dead, and the client keeps presenting it.
  local variants = {
    { "a port with a leading zero", function(u) return (u:gsub(":(%d+)$", ":0%1")) end },
    { "a dot segment (/.)", function(u) return u .. "/." end },
    { "a dot-dot segment (/v1/..)", function(u) return u .. "/v1/.." end },
  }
  for _, v in ipairs(variants) do
    it(v[1] .. ": the client adopts the new key", function()
      local org, key = H.new_org()
      local c = slashid.new{ org_id = org, api_key = key, base_url = H.http_url, retries = 0 }
      local result, errors, _, info = c:rotate_key{ base_url = v[2](H.http_url) }
      assert.are.equal("rotated", info.outcome, messages(errors))
      local state = H.org(org)
      H.assert_key_equal(state.api_key, result.api_key)
      local ok, cerrors = c:check_key()
      c:close()
      assert.is_true(ok, "the client kept the dead key: " .. messages(cerrors))
    end)
  end

  it("[::1] and [0:0:0:0:0:0:0:1]: the client adopts the new key", function()
    local server = socket.bind("::1", 0)
    if not server then pending("no IPv6 loopback here") return end
    local key = known_key("OLD")
    local current = key
    local function api(head)
      local presented = head:match("\r\n[Ss]lash[Ii][Dd]%-[Aa][Pp][Ii]%-[Kk]ey: ([^\r\n]*)")
      if presented ~= current then
        return answer("401 Unauthorized", "Content-Type: application/json\r\n",
                      '{"errors":[{"httpcode":401,"message":"invalid API key"}]}')
      end
      if head:find("^PUT ") then
        current = known_key("NEW")
        return answer("200 OK", "Content-Type: application/json\r\n",
                      '{"errors":[],"result":{"api_key":"' .. current .. '"}}')
      end
      return answer("200 OK", "Content-Type: application/json\r\n", '{"errors":[],"result":{}}')
    end
    local c, port
    local op = serve({ api }, function(url, p)
      port = p
      c = slashid.new{ org_id = "org-v6", api_key = key, base_url = url, retries = 0 }
      return c:start_rotate_key{ base_url = "http://[0:0:0:0:0:0:0:1]:" .. p }
    end, "::1", server)
    local result, errors, _, info = op:results()
    assert.are.equal("rotated", info.outcome, messages(errors))
    H.assert_key_equal(current, result.api_key)
    local cop = serve({ api }, function() return c:start_check_key() end, "::1", server)
    server:close()
    assert.is_truthy(port)
    local ok, cerrors = cop:results()
    c:close()
    assert.is_true(ok, "the client kept the dead key: " .. messages(cerrors))
  end)
end)

-- ---- attacks that did not succeed (kept as checks) ---------------------------

describe("odd answers that must neither lose the key nor crash", function()
  it("gzip with trailing garbage, gzip without its trailer, x-gzip: rotated", function()
    local key = known_key("OLD")
    local new = known_key("NEW")
    local dir = H.mkdir(H.tmpname("r17gz"))
    H.write(dir .. "/b.json", '{"result":{"api_key":"' .. new .. '"}}')
    local p = assert(io.popen("gzip -c " .. dir .. "/b.json"))
    local gz = p:read("*a")
    p:close()
    for _, c in ipairs({ { "gzip", gz .. "garbage!" }, { "gzip", gz:sub(1, -9) }, { "x-gzip", gz } }) do
      local result, errors, _, info = raw_rotate({
        answer("200 OK", "Content-Type: application/json\r\nContent-Encoding: " .. c[1] .. "\r\n", c[2]) },
        { org_id = "org-gz", api_key = key, retries = 0 })
      assert.are.equal("rotated", info.outcome, messages(errors))
      H.assert_key_equal(new, result.api_key)
    end
  end)

  it("a set of malformed answers returns (no crash) and never shows the old key", function()
    local key = known_key("OLD")
    local new = known_key("NEW")
    local env = '{"result":{"api_key":"' .. new .. '"}}'
    local function pct(s) return (s:gsub(".", function(ch) return ("%%%02X"):format(ch:byte()) end)) end
    local cases = {
      answer("200 OK", "X-Big: " .. ("a"):rep(65000) .. "\r\n", env),
      answer("200 OK", ("X"):rep(100) .. pct(key) .. ": v\r\n", env),
      answer("200 OK", "X-F: a\r\n" .. (" b\r\n"):rep(3000), env),
      answer("200 OK", "X-F: " .. key:gsub(".", "%0\r\n ") .. "\r\n", env),
      "HTTP/1.1 100 Continue\r\n\r\n" .. answer("200 OK", "X-A: " .. new .. "\r\n\t" .. key .. "\r\n", env),
      answer("200 OK", "", '{"result":{"api_key":"' .. new .. '"},"x":' .. ("["):rep(100000)),
      answer("200 OK", "", '{"result":' .. ('{"a":'):rep(50000)),
      answer("200 OK", "", '{"result":{"api_key":"' .. new .. '\\u00'),
      answer("500 X", "", "zz " .. key:sub(1, 10) .. "%"),
      answer("500 X", "X-A: \"api_key\"\r\n", '"api_key"   :  '),
      answer("200 " .. pct(key), "", env),
      answer("200 OK", "", '{"m":"' .. ("\\ud800"):rep(5000) .. '","result":{"api_key":"' .. new .. '"}}'),
    }
    for i, a in ipairs(cases) do
      local debug, lines = tracer()
      local _, errors, pagination, info = raw_rotate({ a }, { org_id = "org-odd", api_key = key,
                                                             retries = 0, debug = debug })
      assert.is_string(info.outcome, "case " .. i)
      assert_no_piece(H.flatten(errors, pagination, info), key, "case " .. i .. " errors/info")
      assert_no_piece(table.concat(lines, "\n"), key, "case " .. i .. " trace")
    end
  end)
end)
