-- Odd answers: what a server, a proxy or a firewall page may
-- send that is not the plain envelope, and what must still hold.
--   (a) a 2xx the strict JSON parser refuses (a lone surrogate escape,
--       nesting deeper than 64) still gives its result.api_key, read by a
--       tolerant structural reader: rotated, with one errors entry saying
--       what could not be read; a key that is itself unreadable, a body
--       cut short, a non-string key stay unknown; text that only looks
--       like a key never becomes one; duplicates resolve as a strict
--       parser resolves them (checked against the strict path itself);
--       the same through an op, a batch and a client; a byte order mark
--       before the JSON is read;
--   (b) a key (old or new) echoed JSON-escaped (\uXXXX in either case,
--       \/) or percent-encoded (%XX in either case) is redacted wherever
--       server text goes: the debug trace, errors entries (body excerpts
--       and the server's own messages), info.headers;
--   (c) a new key holding a control character is returned but never
--       written to save_to (info.saved = false, an errors entry);
--   (d) a client adopts a new key only when the call went to the client's
--       own base URL;
--   (e) every errors list has a __tostring giving its messages (never a
--       key), so `assert(slashid.rotate_key{...})` raises readable text;
--   (f) ca_file may come from SLASHID_CA_FILE;
--   (g) echoes and encodings beyond those: a key folded across header
--       lines, a 2xx whatever its Content-Encoding says, a key with a
--       control or non-ASCII character echoed escaped, verify's check
--       quoting the old key, an echo cut short (no 12-byte piece of a
--       key anywhere), keys that overlap, a client's own base URL
--       spelled otherwise;
--   (h) the same pressed harder: Content-Encoding lists, several headers,
--       trailers, gzip members, a wrong CRC, raw deflate under either
--       label, bombs over max_response_bytes, decode.c under a failing
--       malloc; keys holding "%41" or "\t" themselves; 1xx headers;
--       base URLs whose dot segments libcurl resolves to another path;
--       odd codings and escapes at the ends of texts (under ASan).
-- No key is ever printed: keys are compared with H.assert_key_equal and
-- looked for with H.assert_no_secret / assert_no_key below.
local H = require "helpers"
local slashid = require "slashid"
local socket = require "socket"

local messages = H.messages

local serial = 0

-- A recognizable old key holding '_' and '/' (so that its escaped forms
-- use \u005f / %5F and \/ / %2F), random enough that any 12 characters of
-- it found somewhere are a leak.
local function known_key(tag)
  serial = serial + 1
  return ("sk_%08x%08x_%s_%d/%06dq"):format(math.random(0, 0x7fffffff),
                                             math.random(0, 0x7fffffff), tag, serial,
                                             math.random(0, 999999))
end

local function org_with_escapable_key()
  return H.new_org_with_key(known_key("OLD"))
end

-- ---- encodings -------------------------------------------------------------

-- Every character as \u00XX (upper-case hex) or \u00xx (lower-case).
local function json_all(s, upper)
  local f = upper and "\\u%04X" or "\\u%04x"
  return (s:gsub(".", function(c) return f:format(c:byte()) end))
end

-- Every character as %XX or %xx.
local function pct_all(s, upper)
  local f = upper and "%%%02X" or "%%%02x"
  return (s:gsub(".", function(c) return f:format(c:byte()) end))
end

-- Only '_' and '/' escaped, as a JSON encoder may do it.
local function json_some(s, upper)
  return (s:gsub("[_/]", { ["_"] = upper and "\\u005F" or "\\u005f", ["/"] = "\\/" }))
end

-- Only '_' and '/' percent-encoded.
local function pct_some(s, upper)
  return (s:gsub("[_/]", { ["_"] = upper and "%5F" or "%5f", ["/"] = upper and "%2F" or "%2f" }))
end

-- Characters alternately JSON-escaped and percent-encoded, hex case
-- alternating too.
local function mixed(s)
  local i = 0
  return (s:gsub(".", function(c)
    i = i + 1
    if i % 4 == 1 then return ("\\u%04X"):format(c:byte()) end
    if i % 4 == 2 then return ("%%%02x"):format(c:byte()) end
    if i % 4 == 3 then return ("\\u%04x"):format(c:byte()) end
    return ("%%%02X"):format(c:byte())
  end))
end

local FORMS = {
  { "JSON \\u00XX, every character", function(k) return json_all(k, true) end },
  { "JSON \\u00xx, every character", function(k) return json_all(k, false) end },
  { "JSON, only _ (\\u005f) and / (\\/)", function(k) return json_some(k, false) end },
  { "JSON, only _ (\\u005F) and / (\\/)", function(k) return json_some(k, true) end },
  { "percent %XX, every character", function(k) return pct_all(k, true) end },
  { "percent %xx, every character", function(k) return pct_all(k, false) end },
  { "percent, only _ and /, upper", function(k) return pct_some(k, true) end },
  { "percent, only _ and /, lower", function(k) return pct_some(k, false) end },
  { "JSON and percent mixed", mixed },
}

local decode = H.decode_echo

-- The key is in `text` neither as itself nor in any encoded form; nor
-- any 12 characters of it (a prefix left by a cut excerpt).
local function assert_no_key(text, key, where)
  H.assert_no_secret(text, key)
  local plain = decode(text)
  if plain:find(key, 1, true) then
    error("an encoded form of a key was found" .. (where and (" in " .. where) or ""), 2)
  end
  for i = 1, #key - 11 do
    if plain:find(key:sub(i, i + 11), 1, true) then
      error("a piece of a key was found" .. (where and (" in " .. where) or ""), 2)
    end
  end
end

-- Per trace line, then joined.
local function assert_no_key_in_lines(lines, key)
  for i, l in ipairs(lines) do assert_no_key(l, key, "trace line " .. i) end
  assert_no_key(table.concat(lines, "\n"), key, "the trace")
end

local tracer, puts, nested_objects = H.tracer, H.puts, H.nested_objects

local function has_line(lines, plain)
  for _, l in ipairs(lines) do
    if l:find(plain, 1, true) then return true end
  end
  return false
end

local serve, raw_rotate, answer = H.serve_raw, H.raw_rotate, H.raw_answer
local assert_no_piece = H.assert_no_piece



-- ---- bodies ----------------------------------------------------------------

local SURROGATE = '"meta":{"m":"note \\ud83d"}'     -- a lone high surrogate escape

local function nested_mixed(depth)
  local open, close = {}, {}
  for i = 1, depth do
    if i % 2 == 0 then open[i], close[depth - i + 1] = '{"d":', "}"
    else open[i], close[depth - i + 1] = "[", "]" end
  end
  return table.concat(open) .. "1" .. table.concat(close)
end

-- The one errors entry of a tolerant read: the status, and a message
-- that says the key was read and the rest was not.
local function assert_tolerant_entry(errors, why)
  assert.are.equal(1, #errors, why .. ": " .. messages(errors))
  local e = errors[1]
  assert.are.equal(200, e.httpcode, why)
  assert.is_string(e.message, why)
  assert.is_truthy(e.message:find("result.api_key", 1, true),
                   why .. ": the entry does not name result.api_key: " .. e.message)
  local m = e.message:lower()
  assert.is_truthy(m:find("not", 1, true) and (m:find("read", 1, true) or m:find("pars", 1, true)),
                   why .. ": the entry does not say what could not be read: " .. e.message)
end

-- One call over `via`: rotate_key, an op, a batch item, a client, HTTPS.
local function call(via, opts)
  if via == "rotate_key" then
    return slashid.rotate_key(opts)
  elseif via == "https" then
    opts.base_url, opts.ca_file = H.https_url, H.ca_file
    return slashid.rotate_key(opts)
  elseif via == "op" then
    local op = slashid.start_rotate_key(opts)
    assert.is_true(op:wait(10), "the op did not finish")
    return op:results()
  elseif via == "batch" then
    local out = slashid.rotate_keys({ opts }, { concurrency = 2 })
    local o = out[1]
    return o.result, o.errors, o.pagination, o.info
  elseif via == "client" then
    local c = slashid.new(opts)
    local r, e, p, i = c:rotate_key()
    -- the client adopted the key it read: its next call presents it
    local ok, cerrors = c:check_key()
    c:close()
    if r then assert.is_true(ok, "the client did not adopt the key: " .. messages(cerrors)) end
    return r, e, p, i
  end
  error("unknown via " .. tostring(via))
end

-- A rotation whose 200 carries `body` (with {{new_key}}), over `via`:
-- checks it was rotated with the emulator's key, one request, one
-- rotation, one errors entry; returns the four values.
local function rotated_tolerantly(body, why, via, extra)
  local org, key = org_with_escapable_key()
  H.faults(org, { { status = 200, rotate = true, body = body } })
  local debug, lines = tracer()
  local opts = H.opts(org, key, { debug = debug, retries = 3 })
  for k, v in pairs(extra or {}) do opts[k] = v end
  local result, errors, pagination, info = call(via or "rotate_key", opts)
  why = why .. " (" .. (via or "rotate_key") .. ")"
  assert.is_table(info, why)
  assert.are.equal("rotated", info.outcome, why .. ": " .. messages(errors))
  assert.are.equal(200, info.status, why)
  assert.are.equal(1, info.attempts, why)
  local state = H.org(org)
  assert.is_table(result, why)
  H.assert_key_equal(state.api_key, result.api_key, why)
  assert.are.equal(1, state.rotations, why)
  assert.are.equal(1, puts(state), why .. ": retried")
  assert_tolerant_entry(errors, why)
  -- neither key is shown, in what came back or in the trace
  H.assert_no_secret(H.flatten(errors, pagination, info), key)
  H.assert_no_secret(H.flatten(errors, pagination, info), result.api_key)
  assert.is_true(#lines > 0, why .. ": no trace")
  H.assert_no_secret(table.concat(lines, "\n"), key)
  H.assert_no_secret(table.concat(lines, "\n"), result.api_key)
  return result, errors, pagination, info, org
end

-- A 200 carrying `body` (with {{new_key}}) whose key cannot be read:
-- unknown, no result, an errors entry with the status, the key issued
-- shown nowhere (the bodies put it only in "api_key" string members,
-- which the excerpt and the trace hide whatever their place).
local function unknown_answer(body, why)
  local org, key = org_with_escapable_key()
  H.faults(org, { { status = 200, rotate = true, body = body } })
  local debug, lines = tracer()
  local result, errors, pagination, info =
    slashid.rotate_key(H.opts(org, key, { debug = debug, retries = 3 }))
  assert.is_table(info, why)
  assert.are.equal("unknown", info.outcome, why .. ": " .. messages(errors))
  assert.is_nil(result, why)
  assert.are.equal(200, info.status, why)
  assert.is_true(#errors >= 1, why)
  assert.are.equal(200, errors[#errors].httpcode, why)
  local state = H.org(org)
  assert.are.equal(1, #state.requests, why .. ": retried")
  H.assert_no_secret(H.flatten(errors, pagination, info), key)
  H.assert_no_secret(H.flatten(errors, pagination, info), state.api_key)
  H.assert_no_secret(table.concat(lines, "\n"), key)
  return errors, info
end

-- ---- (a) ---------------------------------------------------------------------

describe("a 2xx the strict parser refuses (read tolerantly)", function()
  it("a lone surrogate escape in meta beside result.api_key: rotated, the key, one entry", function()
    local body = '{' .. SURROGATE .. ',"errors":[],"result":{"api_key":"{{new_key}}"}}'
    local _, errors = rotated_tolerantly(body, "lone surrogate")
    assert.is_truthy(errors[1].message:find("surrogate", 1, true),
                     "the entry does not name the cause: " .. errors[1].message)
  end)

  it("a lone surrogate in other places: a low one, inside result, in a member name, after the key", function()
    local bodies = {
      { "lone low surrogate", '{"meta":{"m":"\\udc00 x"},"result":{"api_key":"{{new_key}}"}}' },
      { "inside result", '{"result":{"note":"\\ud83d","api_key":"{{new_key}}","more":"\\uDBFF"}}' },
      { "in a member name", '{"\\ud83d":1,"result":{"api_key":"{{new_key}}"}}' },
      { "after the key", '{"result":{"api_key":"{{new_key}}"},"errors":[{"httpcode":0,"message":"\\uD800"}]}' },
      { "in an array", '{"result":{"api_key":"{{new_key}}"},"list":["a",["\\ud83d",{"x":"\\u00e9"}]]}' },
    }
    for _, b in ipairs(bodies) do rotated_tolerantly(b[2], b[1]) end
  end)

  it("100-deep and 10000-deep members beside the key (before it and after it): rotated, one entry", function()
    for _, depth in ipairs({ 65, 100, 10000 }) do
      local n = nested_objects(depth)
      local _, errors = rotated_tolerantly('{"x":' .. n .. ',"result":{"api_key":"{{new_key}}"}}',
                                           depth .. "-deep before the key")
      assert.is_truthy(errors[1].message:find("nesting", 1, true) or
                       errors[1].message:find("deep", 1, true),
                       "the entry does not name the cause: " .. errors[1].message)
      rotated_tolerantly('{"result":{"api_key":"{{new_key}}","x":' .. nested_mixed(depth) .. '}}',
                         depth .. "-deep inside result, after the key")
      rotated_tolerantly('{"result":{"api_key":"{{new_key}}"},"meta":' .. nested_mixed(depth) ..
                         ',"errors":[]}', depth .. "-deep arrays and objects after the key")
    end
  end)

  it("text that looks like a key (in a string, beside a lone surrogate) never becomes one", function()
    local fake = '\\"result\\":{\\"api_key\\":\\"sk_fake_never_this_one\\"}'
    local bodies = {
      { "fake text before", '{"meta":{"m":"' .. fake .. ' \\ud83d"},"result":{"api_key":"{{new_key}}"}}' },
      { "fake text after", '{"result":{"api_key":"{{new_key}}"},"meta":{"m":"\\ud83d ' .. fake .. '"}}' },
      { "fake text closing the object", '{"result":{"api_key":"{{new_key}}"},"meta":{"m":"\\"}},' ..
        '\\"result\\":{\\"api_key\\":\\"sk_fake_never_this_one\\"}} \\ud83d"}}' },
      { "fake text in a member name", '{"result":{"api_key":"{{new_key}}"},"' .. fake .. '":"\\ud83d"}' },
      { "fake text in result's string", '{"result":{"api_key":"{{new_key}}","n":"' .. fake .. '\\ud83d"}}' },
      { "escaped quote, then fake", '{"result":{"api_key":"{{new_key}}"},"m":"a\\\\\\"b\\\\",' ..
        '"meta":{"m":"\\ud83d"}}' },
      { "nested result after", '{"result":{"api_key":"{{new_key}}"},"meta":{"result":' ..
        '{"api_key":"sk_fake_never_this_one"},"m":"\\ud83d"}}' },
      { "nested result before", '{"meta":{"result":{"api_key":"sk_fake_never_this_one"}},' ..
        '"m":"\\ud83d","result":{"api_key":"{{new_key}}"}}' },
      { "nested api_key in result", '{"result":{"x":{"api_key":"sk_fake_never_this_one"},' ..
        '"api_key":"{{new_key}}","y":[{"api_key":"sk_fake_never_this_one"}]},"m":"\\ud83d"}' },
      { "result in an array", '{"list":[{"result":{"api_key":"sk_fake_never_this_one"}}],' ..
        '"result":{"api_key":"{{new_key}}"},"m":"\\ud83d"}' },
    }
    for _, b in ipairs(bodies) do
      local result = rotated_tolerantly(b[2], b[1])
      assert.is_falsy(result.api_key:find("fake", 1, true), b[1] .. ": the fake key was taken")
    end
  end)

  it("a key that is itself malformed: unknown", function()
    local bodies = {
      { "lone high surrogate in the key", '{"result":{"api_key":"\\ud800x"}}' },
      { "lone high surrogate in the key, the issued key nested elsewhere",
        '{"result":{"api_key":"\\ud800x"},"meta":{"api_key":"{{new_key}}"}}' },
      { "lone low surrogate in the key", '{"result":{"api_key":"sk_\\udc00"},"m":{"api_key":"{{new_key}}"}}' },
      { "surrogate pair cut", '{"result":{"api_key":"sk_\\ud83d\\u0041"}}' },
      { "bad escape in the key", '{"result":{"api_key":"sk_\\q{{new_key}}"},"m":"\\ud83d"}' },
      { "short \\u in the key", '{"result":{"api_key":"sk_\\u12"},"m":"\\ud83d"}' },
    }
    for _, b in ipairs(bodies) do unknown_answer(b[2], b[1]) end
  end)

  it("an object broken after a whole key (the transfer complete): rotated; cut in the key: unknown", function()
    -- a key whose closing quote arrived is whole, whatever follows it
    local bodies = {
      { "no closing brace", '{"result":{"api_key":"{{new_key}}"}' },
      { "no closing brace after a surrogate", '{"result":{"api_key":"{{new_key}}"},"meta":{"m":"\\ud83d"}' },
      { "cut inside a later member", '{"result":{"api_key":"{{new_key}}"},"meta":{"m":"\\ud83d",' },
      { "cut inside a deep member", '{"result":{"api_key":"{{new_key}}"},"x":' ..
        nested_objects(100):sub(1, -3) },
      { "cut after a comma", '{"result":{"api_key":"{{new_key}}"},' },
      { "result not closed", '{"result":{"api_key":"{{new_key}}",' },
      { "a trailing comma in result", '{"result":{"api_key":"{{new_key}}",},"errors":[]}' },
      { "a trailing comma at the top", '{"result":{"api_key":"{{new_key}}"},}' },
      { "an empty value after the key", '{"result":{"api_key":"{{new_key}}"},"meta":,"errors":[]}' },
    }
    for _, b in ipairs(bodies) do rotated_tolerantly(b[2], b[1]) end
    unknown_answer('{"result":{"api_key":"{{new_key}}', "cut in the key")
  end)

  it("result.api_key a number, null, true, an object, an array, empty: unknown", function()
    for _, v in ipairs({ "12345", "null", "true", "false", '{"api_key":"{{new_key}}"}',
                         '[{"api_key":"{{new_key}}"}]', '""' }) do
      unknown_answer('{"meta":{"m":"\\ud83d"},"result":{"api_key":' .. v .. '}}', "api_key " .. v)
    end
    unknown_answer('{"meta":{"m":"\\ud83d"},"result":[{"api_key":"{{new_key}}"}]}', "result an array")
    unknown_answer('{"meta":{"m":"\\ud83d"},"result":null,"api_key":"{{new_key}}"}', "api_key at the top")
  end)

  -- Duplicates, escapes and spacing, each body read twice: as it is, and
  -- with a lone surrogate escape before it (so only the tolerant reader
  -- can read it). Two string keys: the last one, as a strict parser gives
  -- it. One string key beside a duplicate without one (null, a number, a
  -- `result` with no key): that key, rotated, with an errors entry (the
  -- contract: duplicate members are parts that could not be read; a key
  -- that is there is never lost).
  it("duplicates, escapes and spacing: the last string key, or the only one", function()
    local cases = {
      { "api_key twice", '"result":{"api_key":"sk_dup_first_1","api_key":"sk_dup_last_2"}',
        "sk_dup_last_2", true },
      { "result twice", '"result":{"api_key":"sk_dup_first_3"},"result":{"api_key":"sk_dup_last_4"}',
        "sk_dup_last_4", true },
      { "api_key twice, the first null", '"result":{"api_key":null,"api_key":"sk_dup_last_9"}',
        "sk_dup_last_9", true },
      { "api_key twice, the last null", '"result":{"api_key":"sk_dup_first_5","api_key":null}',
        "sk_dup_first_5", false },
      { "api_key twice, the last a number", '"result":{"api_key":"sk_dup_first_6","api_key":7}',
        "sk_dup_first_6", false },
      { "result twice, the last without a key", '"result":{"api_key":"sk_dup_first_7"},"result":{"x":1}',
        "sk_dup_first_7", false },
      { "result twice, the last null", '"result":{"api_key":"sk_dup_first_8"},"result":null',
        "sk_dup_first_8", false },
      { "escapes in the key", '"result":{"api_key":"sk_esc_\\u0041\\u00e9\\/\\\\\\"\\ud83d\\ude00_z"}',
        "sk_esc_A\195\169/\\\"\240\159\152\128_z", true },
      { "escaped member names", '"re\\u0073ult":{"api\\u005Fkey":"sk_esc_names_10"}',
        "sk_esc_names_10", true },
      { "spacing", ' \n\t"result" \r\n: \t{ "api_key"\n:\t"sk_spaced_11" \n} ', "sk_spaced_11", true },
    }
    local wrong = {}
    for _, c in ipairs(cases) do
      for _, prefix in ipairs({ "", '"zz":"\\ud83d",' }) do
        local org, key = org_with_escapable_key()
        H.faults(org, { { status = 200, body = "{" .. prefix .. c[2] .. "}" } })
        local r, e, _, i = slashid.rotate_key(H.opts(org, key, { retries = 0 }))
        local why = c[1] .. (prefix == "" and "" or ", beside a lone surrogate")
        if i.outcome ~= "rotated" then
          wrong[#wrong + 1] = why .. ": " .. i.outcome .. " (" .. messages(e) .. ")"
        elseif r.api_key ~= c[3] then
          wrong[#wrong + 1] = why .. ": not the expected key (not shown)"
        elseif prefix == "" and c[4] then
          -- the strict parser read it all
          if #e ~= 0 then wrong[#wrong + 1] = why .. ": errors " .. messages(e) end
        else
          local ok, err = pcall(assert_tolerant_entry, e, why)
          if not ok then wrong[#wrong + 1] = tostring(err) end
        end
      end
    end
    assert.are.equal(0, #wrong, table.concat(wrong, "\n"))
  end)

  it("through start_rotate_key, rotate_keys, a client and HTTPS: rotated, the key, one entry", function()
    for _, via in ipairs({ "op", "batch", "client", "https" }) do
      rotated_tolerantly('{' .. SURROGATE .. ',"result":{"api_key":"{{new_key}}"}}',
                         "lone surrogate", via)
      rotated_tolerantly('{"x":' .. nested_objects(10000) .. ',"result":{"api_key":"{{new_key}}"}}',
                         "10000-deep", via)
    end
  end)

  it("save_to and verify work on a key read tolerantly", function()
    local dir = H.mkdir(H.tmpname("tolerant"))
    for _, via in ipairs({ "rotate_key", "op", "batch" }) do
      local path = dir .. "/" .. via .. ".key"
      local result, _, _, info = rotated_tolerantly(
        '{' .. SURROGATE .. ',"result":{"api_key":"{{new_key}}"}}', "save_to", via,
        { save_to = path, verify = true })
      assert.is_true(info.saved, via)
      assert.is_true(info.verified, via)
      H.assert_key_equal(result.api_key .. "\n", H.read_if_any(path), via .. ": the file")
    end
  end)

  it("an unreadable 2xx that is not an object at all stays unknown", function()
    unknown_answer('[{"result":{"api_key":"{{new_key}}"}},"\\ud83d"]', "an array")
    unknown_answer('"\\ud83d"', "a string")
  end)

  it("a UTF-8 byte order mark before the JSON is read: rotated, the key", function()
    local org, key = H.new_org()
    H.faults(org, { { rotate = true, body = '\239\187\191{"result":{"api_key":"{{new_key}}"}}' } })
    local result, _, _, info = slashid.rotate_key(H.opts(org, key))
    assert.are.equal("rotated", info.outcome)
    H.assert_key_equal(H.org(org).api_key, result.api_key)
  end)
end)

-- ---- (b) ---------------------------------------------------------------------

describe("keys echoed escaped or percent-encoded are redacted", function()
  it("the new key echoed in every form in a 200: not in the trace, raw or decoded", function()
    local org, key = org_with_escapable_key()
    local new = known_key("NEW")
    local members = {}
    for i, f in ipairs(FORMS) do
      members[#members + 1] = ('"echo%d":"%s"'):format(i, f[2](new))
    end
    -- the key itself written with \/ in result, as a JSON encoder may
    local body = '{"result":{"api_key":"' .. json_some(new, false) .. '"},"errors":[],' ..
                 table.concat(members, ",") .. ',"end":"last member"}'
    assert(#body < 2000, "the body would be cut in the trace")
    H.faults(org, { { status = 200, body = body } })
    local debug, lines = tracer()
    local result, errors, pagination, info =
      slashid.rotate_key(H.opts(org, key, { debug = debug }))
    assert.are.equal("rotated", info.outcome, messages(errors))
    H.assert_key_equal(new, result.api_key)
    -- the body is in the trace, whole
    assert.is_true(has_line(lines, "echo1"), "the body is not in the trace")
    assert.is_true(has_line(lines, "last member"), "the body is cut in the trace")
    assert_no_key_in_lines(lines, new)
    assert_no_key_in_lines(lines, key)
    assert_no_key(H.flatten(errors, pagination, info), new, "what came back")
  end)

  it("each form alone, beside a real rotation: the trace shows none of it", function()
    for _, f in ipairs(FORMS) do
      local org, key = org_with_escapable_key()
      -- the server echoes the key it was given, and the key it issued in
      -- the same form (known only as it is issued: a literal answer)
      local new = known_key("NEW")
      H.faults(org, { { status = 200, body = '{"result":{"api_key":"' .. new .. '"},' ..
                          '"note":"issued ' .. f[2](new) .. ' for ' .. f[2](key) .. ' ok"}' } })
      local debug, lines = tracer()
      local result, errors, _, info = slashid.rotate_key(H.opts(org, key, { debug = debug }))
      assert.are.equal("rotated", info.outcome, f[1] .. ": " .. messages(errors))
      H.assert_key_equal(new, result.api_key, f[1])
      assert.is_true(has_line(lines, "issued"), f[1] .. ": the body is not in the trace")
      assert.is_true(has_line(lines, " ok"), f[1] .. ": the body is cut in the trace")
      assert_no_key_in_lines(lines, new)
      assert_no_key_in_lines(lines, key)
    end
  end)

  it("the old key echoed in a non-JSON 401 HTML page: not in errors[1].message nor the trace", function()
    for _, f in ipairs(FORMS) do
      local org, key = org_with_escapable_key()
      H.faults(org, { { status = 401, content_type = "text/html",
                        body = "<html><body>Denied: " .. f[2](key) .. " is refused</body></html>" } })
      local debug, lines = tracer()
      local result, errors, pagination, info =
        slashid.rotate_key(H.opts(org, key, { debug = debug }))
      assert.is_nil(result, f[1])
      assert.are.equal("not_rotated", info.outcome, f[1])
      assert.are.equal(401, info.status, f[1])
      assert.are.equal(401, errors[1].httpcode, f[1])
      local m = errors[1].message
      -- the excerpt is there (not dropped), the echo in it redacted
      assert.is_truthy(m:find("Denied", 1, true), f[1] .. ": no excerpt: " .. messages(errors))
      assert.is_truthy(m:find("is refused", 1, true), f[1] .. ": the excerpt lost its end")
      assert_no_key(m, key, f[1] .. ": errors[1].message")
      assert_no_key(H.flatten(errors, pagination, info), key, f[1] .. ": what came back")
      assert_no_key(tostring(errors), key, f[1] .. ": tostring(errors)")
      assert_no_key_in_lines(lines, key)
    end
  end)

  it("an encoded old key across the excerpt's 200-byte cut leaves no piece of it", function()
    for _, f in ipairs(FORMS) do
      for _, pad in ipairs({ 150, 170, 190, 199 }) do
        local org, key = org_with_escapable_key()
        H.faults(org, { { status = 403, content_type = "text/html",
                          body = ("x"):rep(pad) .. f[2](key) .. "</html>" } })
        local result, errors = slashid.rotate_key(H.opts(org, key))
        assert.is_nil(result)
        assert.are.equal(403, errors[1].httpcode)
        assert.is_true(#errors[1].message <= 260, "the excerpt is not cut")
        assert_no_key(errors[1].message, key, f[1] .. ", " .. pad .. " bytes before it")
      end
    end
  end)

  it("the old key in the server's own error message, percent-encoded or \\u-escaped", function()
    for _, f in ipairs(FORMS) do
      local org, key = org_with_escapable_key()
      H.faults(org, { { status = 401, content_type = "application/json",
                        body = '{"errors":[{"httpcode":401,"message":"key ' .. f[2](key) ..
                               ' refused"}]}' } })
      local debug, lines = tracer()
      local result, errors, pagination, info =
        slashid.rotate_key(H.opts(org, key, { debug = debug }))
      assert.is_nil(result)
      assert.are.equal("not_rotated", info.outcome)
      assert.is_truthy(errors[1].message:find("refused", 1, true), f[1] .. ": " .. messages(errors))
      assert_no_key(H.flatten(errors, pagination, info), key, f[1])
      assert_no_key_in_lines(lines, key)
    end
  end)

  it("keys echoed percent-encoded or escaped in response headers: not in info.headers nor the trace", function()
    for _, upper in ipairs({ true, false }) do
      local org, key = org_with_escapable_key()
      local new = known_key("NEW")
      H.faults(org, { { status = 200, body = '{"result":{"api_key":"' .. new .. '"}}',
                        headers = { ["X-Echo-Old"] = pct_all(key, upper),
                                    ["X-Echo-New"] = pct_all(new, upper),
                                    ["X-Echo-Some"] = "k=" .. pct_some(new, upper) .. "; p",
                                    ["X-Echo-Json"] = json_all(key, upper),
                                    ["X-Echo-Mixed"] = mixed(new),
                                    ["X-Plain"] = "visible" } } })
      local debug, lines = tracer()
      local result, errors, pagination, info =
        slashid.rotate_key(H.opts(org, key, { debug = debug }))
      assert.are.equal("rotated", info.outcome, messages(errors))
      H.assert_key_equal(new, result.api_key)
      assert.are.equal("visible", info.headers["x-plain"])
      for _, name in ipairs({ "x-echo-old", "x-echo-new", "x-echo-some", "x-echo-json", "x-echo-mixed" }) do
        assert.is_string(info.headers[name], name .. " is missing")
      end
      assert.is_true(has_line(lines, "X-Echo-Old"), "the headers are not in the trace")
      for _, k in ipairs({ key, new }) do
        assert_no_key(H.flatten(info.headers), k, "info.headers")
        assert_no_key(H.flatten(errors, pagination, info), k, "what came back")
        assert_no_key_in_lines(lines, k)
      end
    end
  end)

  it("a key split across a folded header's lines (obs-fold): no half in info.headers nor the trace", function()
    for _, fold in ipairs({ "\r\n ", "\r\n\t", "\r\n   " }) do
      local org, key = org_with_escapable_key()
      local new = known_key("NEW")
      local function split(k) local h = math.floor(#k / 2) return k:sub(1, h) .. fold .. k:sub(h + 1) end
      H.faults(org, { { status = 200, body = '{"result":{"api_key":"' .. new .. '"}}',
                        headers = { ["X-Echo-Old"] = "was " .. split(key),
                                    ["X-Echo-New"] = split(new) .. " now",
                                    ["X-Plain"] = "visible" } } })
      local debug, lines = tracer()
      local result, errors, pagination, info =
        slashid.rotate_key(H.opts(org, key, { debug = debug }))
      assert.are.equal("rotated", info.outcome, messages(errors))
      H.assert_key_equal(new, result.api_key)
      assert.are.equal("visible", info.headers["x-plain"])
      assert.is_true(has_line(lines, "X-Echo-Old"), "the headers are not in the trace")
      for _, k in ipairs({ key, new }) do
        local half = k:sub(1, math.floor(#k / 2))
        for where, text in pairs({ ["info.headers"] = H.flatten(info.headers),
                                   trace = table.concat(lines, "\n") }) do
          assert_no_key(text, k, where)
          assert.is_falsy(text:find(half, 1, true), "half a key in " .. where)
        end
      end
    end
  end)

  it("the old key percent-encoded in a 401's header (a firewall's Location or cookie)", function()
    local org, key = org_with_escapable_key()
    H.faults(org, { { status = 401, content_type = "text/html", body = "<p>no</p>",
                      headers = { ["X-Denied-For"] = "key=" .. pct_all(key, false),
                                  ["Set-Cookie"] = "k=" .. pct_some(key, true) .. "; Path=/" } } })
    local debug, lines = tracer()
    local result, errors, pagination, info = slashid.rotate_key(H.opts(org, key, { debug = debug }))
    assert.is_nil(result)
    assert.are.equal("not_rotated", info.outcome)
    assert.is_string(info.headers["x-denied-for"])
    assert_no_key(H.flatten(errors, pagination, info), key, "what came back")
    assert_no_key_in_lines(lines, key)
  end)

  it("text that only resembles a key is kept as it was", function()
    local org, key = org_with_escapable_key()
    H.faults(org, { { status = 401, content_type = "text/html",
                      body = "<p>100%25 sure: path a\\/b, 50%, \\u0041BC</p>" } })
    local _, errors = slashid.rotate_key(H.opts(org, key))
    assert.is_truthy(errors[1].message:find("100%25 sure: path a\\/b, 50%, \\u0041BC", 1, true),
                     "an innocent excerpt was changed: " .. messages(errors))
  end)
end)

-- ---- (c) ---------------------------------------------------------------------

describe("a new key holding a control character", function()
  local KEYS = {
    { "a newline", "sk_abc\ndef" },
    { "a NUL", "sk_abc\0def" },
    { "a carriage return", "sk_abc\rdef" },
    { "a tab", "sk_abc\tdef" },
    { "DEL", "sk_abc\127def" },
  }

  local function check(why, result, errors, info, want, path, before)
    assert.are.equal("rotated", info.outcome, why .. ": " .. messages(errors))
    assert.is_table(result, why)
    H.assert_key_equal(want, result.api_key, why .. ": not returned exactly")
    assert.is_false(info.saved, why .. ": info.saved")
    assert.is_true(#errors >= 1, why .. ": no errors entry")
    local said = false
    for _, e in ipairs(errors) do
      said = said or (e.message:lower():find("sav", 1, true) ~= nil)
    end
    assert.is_true(said, why .. ": no entry says the key was not saved: " .. messages(errors))
    assert.are.equal(before, H.read_if_any(path), why .. ": the save_to file was written")
  end

  for _, k in ipairs(KEYS) do
    it("(" .. k[1] .. ") is returned, never written to save_to (new file, existing file)", function()
      local dir = H.mkdir(H.tmpname("ctl"))
      for _, existing in ipairs({ false, true }) do
        local org, key = H.new_org()
        H.faults(org, { { status = 200, rotate = true, json = { result = { api_key = k[2] } } } })
        local path = dir .. "/key-" .. tostring(existing)
        local before = nil
        if existing then before = H.write(path, "previous content\n") and "previous content\n" end
        local result, errors, _, info = slashid.rotate_key(H.opts(org, key, { save_to = path }))
        check(k[1], result, errors, info, k[2], path, before)
        assert.are.equal(1, H.requests(org))
        -- no temp file left beside it either
        local names = H.ls(dir)
        assert.are.equal(existing and 1 or 0, #names, "files left: " .. table.concat(names, " "))
        if existing then os.remove(path) end
      end
    end)
  end

  it("through start_rotate_key and rotate_keys too", function()
    local dir = H.mkdir(H.tmpname("ctl-op"))
    for _, k in ipairs(KEYS) do
      local org, key = H.new_org()
      H.faults(org, { { status = 200, rotate = true, json = { result = { api_key = k[2] } } } })
      local path = dir .. "/op"
      local op = slashid.start_rotate_key(H.opts(org, key, { save_to = path }))
      assert.is_true(op:wait(10))
      local result, errors, _, info = op:results()
      check("op, " .. k[1], result, errors, info, k[2], path, nil)

      local org2, key2 = H.new_org()
      H.faults(org2, { { status = 200, rotate = true, json = { result = { api_key = k[2] } } } })
      local path2 = dir .. "/batch"
      local out = slashid.rotate_keys({ H.opts(org2, key2, { save_to = path2 }) })
      check("batch, " .. k[1], out[1].result, out[1].errors, out[1].info, k[2], path2, nil)
    end
  end)

  -- Such a key cannot travel in a header either: sent by verify, or by a
  -- client that adopted it, its CR LF would split the header and give the
  -- server's text as a header of ours (the argument check refuses a
  -- control character in api_key before any network activity).
  it("is never sent in a header: verify, a client's next call (no header injection)", function()
    local evil = "sk_abc\r\nX-Injected: yes"
    local org, key = H.new_org()
    H.faults(org, { { status = 200, rotate = true, json = { result = { api_key = evil } } } })
    local result, errors, _, info = slashid.rotate_key(H.opts(org, key, { verify = true }))
    assert.are.equal("rotated", info.outcome, messages(errors))
    H.assert_key_equal(evil, result.api_key)
    assert.is_false(info.verified)
    assert.is_true(#errors >= 1)
    for i, r in ipairs(H.org(org).requests) do
      assert.is_nil(r.headers["x-injected"], "request " .. i .. " (" .. r.method .. ") carried an injected header")
    end

    local org2, key2 = H.new_org()
    H.faults(org2, { { status = 200, rotate = true, json = { result = { api_key = evil } } } })
    local client = slashid.new(H.opts(org2, key2))
    local r2, e2, _, i2 = client:rotate_key()
    assert.are.equal("rotated", i2.outcome, messages(e2))
    H.assert_key_equal(evil, r2.api_key)
    pcall(client.check_key, client)      -- may raise or fail: it must not send the key
    pcall(client.rotate_key, client)
    client:close()
    for i, r in ipairs(H.org(org2).requests) do
      assert.is_nil(r.headers["x-injected"], "request " .. i .. " (" .. r.method .. ") carried an injected header")
    end
  end)

  it("a printable key beside it is still saved (the check is on control characters only)", function()
    local path = H.tmpname("ctl-ok")
    local org, key = H.new_org()
    H.faults(org, { { status = 200, rotate = true, json = { result = { api_key = "sk_abc def~!\"'" } } } })
    local result, errors, _, info = slashid.rotate_key(H.opts(org, key, { save_to = path }))
    assert.are.equal("rotated", info.outcome, messages(errors))
    assert.is_true(info.saved, messages(errors))
    assert.are.equal(0, #errors, messages(errors))
    H.assert_key_equal(result.api_key .. "\n", H.read_if_any(path))
  end)
end)

-- ---- (d) ---------------------------------------------------------------------

describe("a client adopts a new key only from its own base URL", function()
  local function last_request(org)
    local rs = H.org(org).requests
    return rs[#rs]
  end

  local function client_for(org, key, extra)
    local d = { org_id = org, api_key = key, base_url = H.http_url,
                retry_delay = 0.01, retry_max_delay = 0.05 }
    for k, v in pairs(extra or {}) do d[k] = v end
    return slashid.new(d)
  end

  local OVERRIDE = { base_url = H.https_url, ca_file = H.ca_file }

  it("a rotation sent to another base URL (the call's override) is not adopted", function()
    local org, key = H.new_org()
    local client = client_for(org, key)
    local result, errors, _, info = client:rotate_key(OVERRIDE)
    assert.are.equal("rotated", info.outcome, messages(errors))
    H.assert_key_equal(H.org(org).api_key, result.api_key)
    assert.are.equal("https", last_request(org).port)
    -- the next call still presents KEY (dead on this emulator, which both
    -- ports share): the emulator calls it "previous"
    local ok = client:check_key()
    assert.is_false(ok)
    assert.are.equal("http", last_request(org).port)
    assert.are.equal("previous", last_request(org).key, "the client adopted a key of another base URL")
    client:close()
  end)

  it("without the override it adopts (the next request presents the current key)", function()
    local org, key = H.new_org()
    local client = client_for(org, key)
    local result, errors, _, info = client:rotate_key()
    assert.are.equal("rotated", info.outcome, messages(errors))
    assert.is_true((client:check_key()))
    assert.are.equal("current", last_request(org).key)
    -- and again, with options naming the same base URL (a trailing slash)
    result, errors, _, info = client:rotate_key({ base_url = H.http_url .. "/", api_key = result.api_key })
    assert.are.equal("rotated", info.outcome, messages(errors))
    H.assert_key_equal(H.org(org).api_key, result.api_key)
    local r3, e3, _, i3 = client:rotate_key()
    assert.are.equal("rotated", i3.outcome, messages(e3))
    assert.are.equal("current", H.org(org).requests[3].key)
    H.assert_key_equal(H.org(org).api_key, r3.api_key)
    client:close()
  end)

  it("an HTTPS client adopts over HTTPS, not over HTTP", function()
    local org, key = H.new_org()
    local client = client_for(org, key, OVERRIDE)
    assert.are.equal("rotated", select(4, client:rotate_key()).outcome)
    assert.is_true((client:check_key()))
    assert.are.equal("current", last_request(org).key)
    local r = client:rotate_key({ base_url = H.http_url })
    assert.is_table(r)
    assert.is_false((client:check_key()))
    assert.are.equal("previous", last_request(org).key)
    client:close()
  end)

  it("the same through start_rotate_key and rotate_keys", function()
    for _, how in ipairs({ "op", "batch item", "batch options" }) do
      local org, key = H.new_org()
      local client = client_for(org, key)
      local result, info
      if how == "op" then
        local op = client:start_rotate_key(OVERRIDE)
        assert.is_true(op:wait(10))
        local _
        result, _, _, info = op:results()
      elseif how == "batch item" then
        local out = client:rotate_keys({ { base_url = H.https_url, ca_file = H.ca_file } })
        result, info = out[1].result, out[1].info
      else
        local out = client:rotate_keys({ {} }, OVERRIDE)
        result, info = out[1].result, out[1].info
      end
      assert.are.equal("rotated", info.outcome, how)
      H.assert_key_equal(H.org(org).api_key, result.api_key, how)
      assert.is_false((client:check_key()), how)
      assert.are.equal("previous", last_request(org).key, how .. ": adopted")
      client:close()

      -- and without the override, adopted
      org, key = H.new_org()
      client = client_for(org, key)
      if how == "op" then
        local op = client:start_rotate_key()
        assert.is_true(op:wait(10))
        info = select(4, op:results())
      else
        info = client:rotate_keys({ {} })[1].info
      end
      assert.are.equal("rotated", info.outcome, how)
      assert.is_true((client:check_key()), how)
      assert.are.equal("current", last_request(org).key, how .. ": not adopted")
      client:close()
    end
  end)

  -- URL schemes are case-insensitive (RFC 3986, 3.1): HTTP://host is the
  -- client's own base URL, and a rotation there killed the client's key.
  it("a call naming the client's own base URL spelled otherwise (trailing slash, scheme case) adopts", function()
    local wrong = {}
    for _, spelled in ipairs({ H.http_url .. "/", H.http_url .. "//", (H.http_url:gsub("^http", "HTTP")),
                               (H.http_url:gsub("^http", "Http")) }) do
      local org, key = H.new_org()
      local client = client_for(org, key)
      local _, errors, _, info = client:rotate_key({ base_url = spelled })
      assert.are.equal("rotated", info.outcome, spelled .. ": " .. messages(errors))
      client:check_key()
      if last_request(org).key ~= "current" then
        wrong[#wrong + 1] = spelled .. ": the next request presented a " .. last_request(org).key .. " key"
      end
      client:close()
    end
    assert.are.equal(0, #wrong, table.concat(wrong, "\n"))
  end)

  -- A client with no base_url of its own takes SLASHID_BASE_URL: the URL
  -- every call of it goes to is its own, however the variable is spelled.
  it("a client whose base URL comes from SLASHID_BASE_URL (with a trailing slash) adopts", function()
    for _, spelled in ipairs({ H.http_url, H.http_url .. "/" }) do
      local org, key = H.new_org()
      local script = H.write(H.tmpname("env-url") .. ".lua", [[
        local slashid = require "slashid"
        local c = slashid.new{ org_id = os.getenv("T_ORG"), api_key = os.getenv("T_KEY") }
        local r, e, p, i = c:rotate_key()
        local ok = c:check_key()
        io.write(i.outcome, " ", tostring(ok))
      ]])
      local p = io.popen(("T_ORG=%s T_KEY=%s SLASHID_BASE_URL=%s %s %s 2>&1")
        :format(H.q(org), H.q(key), H.q(spelled), H.lua, H.q(script)))
      local out = p:read("*a")
      p:close()
      H.assert_no_secret(out, key)
      assert.are.equal("rotated true", out, "SLASHID_BASE_URL=" .. spelled)
      assert.are.equal("current", last_request(org).key, "SLASHID_BASE_URL=" .. spelled)
    end
  end)
end)

-- ---- (e) ---------------------------------------------------------------------

describe("errors lists show as their messages", function()
  local function assert_readable(errors, why, words)
    local s = tostring(errors)
    assert.is_falsy(s:find("^table:"), why .. ": tostring gives " .. s)
    for _, w in ipairs(words or {}) do
      assert.is_truthy(s:find(w, 1, true), why .. ": '" .. w .. "' not in " .. s)
    end
    return s
  end

  it("after a 401: the message and 401, not table:", function()
    local org, key = H.new_org()
    H.faults(org, { { status = 401, message = "this key is not valid" } })
    local result, errors = slashid.rotate_key(H.opts(org, key))
    assert.is_nil(result)
    assert_readable(errors, "401", { "this key is not valid", "401" })
  end)

  -- The interpreter's own assert (busted's `assert` is luassert's), in a
  -- process of its own: caught by pcall, then uncaught. Lua 5.3/5.4 show
  -- an error object's __tostring; LuaJIT's assert raises its LAST argument
  -- (info, here), so the message must reach that too. Lua 5.1/5.2's assert
  -- takes only a string message and refuses the table with "bad argument
  -- #2": nothing a library can change there, so only "fails, no key" holds.
  it("assert(slashid.rotate_key{...}) fails with the message, caught or uncaught (the interpreter's assert)", function()
    local org, key = org_with_escapable_key()
    local echo = { status = 401, json = { errors = { { httpcode = 401,
      message = "readable failure for {{old_key}} " .. pct_all(key, true) } } } }
    H.faults(org, { echo, echo })
    local script = H.write(H.tmpname("assert") .. ".lua", [[
      local slashid = require "slashid"
      local o = { org_id = os.getenv("T_ORG"), api_key = os.getenv("T_KEY"),
                  base_url = os.getenv("T_URL") }
      local ok, err = pcall(function() assert(slashid.rotate_key(o)) end)
      io.write("caught: ", tostring(ok), " ", tostring(err), "\n")
      io.stdout:flush()
      assert(slashid.rotate_key(o))
    ]])
    local p = io.popen(("T_ORG=%s T_KEY=%s T_URL=%s %s %s 2>&1; echo \"rc=$?\"")
      :format(H.q(org), H.q(key), H.q(H.http_url), H.lua, H.q(script)))
    local out = p:read("*a")
    p:close()
    assert_no_key(out, key, "the interpreter's output")
    assert.are.equal(2, #H.org(org).requests, out)
    assert.is_truthy(out:find("caught: false ", 1, true), out)
    assert.is_truthy(out:find("rc=1", 1, true), out)
    local caught = out:match("caught: false ([^\n]*)")
    local uncaught = out:match("\n([^\n]*)")
    if _VERSION == "Lua 5.1" and type(jit) ~= "table" or _VERSION == "Lua 5.2" then return end
    assert.is_truthy(caught:find("readable failure for", 1, true), "caught: " .. caught)
    assert.is_truthy(caught:find("401", 1, true), "caught: " .. caught)
    assert.is_truthy(uncaught:find("readable failure for", 1, true), "uncaught: " .. uncaught)
  end)

  it("several entries are all shown", function()
    local org, key = H.new_org()
    H.faults(org, { { status = 400, json = { errors = {
      { httpcode = 400, message = "first problem" }, { httpcode = 400, message = "second problem" } } } } })
    local _, errors = slashid.rotate_key(H.opts(org, key))
    assert.are.equal(2, #errors)
    assert_readable(errors, "two entries", { "first problem", "second problem", "400" })
  end)

  it("never shows a key (old or new) after an echoing answer", function()
    local org, key = org_with_escapable_key()
    local echo = { status = 401, json = { errors = {
      { httpcode = 401, message = "key {{old_key}} refused, " .. pct_all(key, true) .. ", " ..
        json_some(key, false) } } } }
    local page = { status = 401, content_type = "text/html", body = "<p>refused: " ..
                   json_all(key, false) .. " / " .. pct_some(key, true) .. "</p>" }
    H.faults(org, { echo, page })
    local _, errors = slashid.rotate_key(H.opts(org, key))
    local s = assert_readable(errors, "echoing 401", { "refused", "401" })
    assert_no_key(s, key, "tostring(errors)")
    local _, errors_page = slashid.rotate_key(H.opts(org, key))
    s = assert_readable(errors_page, "echoing 401 page", { "refused", "401" })
    assert_no_key(s, key, "tostring(errors) of a page")

    -- a rotated answer whose save failed: the new key is in result only
    local org2, key2 = org_with_escapable_key()
    local result, errors2 = slashid.rotate_key(H.opts(org2, key2, {
      save_to = H.tmpname("no-such-dir") .. "/sub/key" }))
    assert.is_table(result)
    local s2 = assert_readable(errors2, "save failed", { "not saved" })
    assert_no_key(s2, result.api_key, "tostring(errors) of a rotation")
    assert_no_key(s2, key2, "tostring(errors) of a rotation")
  end)

  it("an empty errors list too: a clean rotation, an accepted check_key (blocking, op, client)", function()
    local org, key = H.new_org()
    local wrong = {}
    local function readable(errors, why)
      assert.are.equal(0, #errors, why .. ": " .. messages(errors))
      if tostring(errors):find("^table:") then wrong[#wrong + 1] = why end
    end
    local r, rerrors = slashid.rotate_key(H.opts(org, key))
    assert.is_table(r)
    readable(rerrors, "rotate_key")
    key = r.api_key
    local ok, cerrors = slashid.check_key(H.opts(org, key))
    assert.is_true(ok)
    readable(cerrors, "check_key")
    local op = slashid.start_check_key(H.opts(org, key))
    assert.is_true(op:wait(10))
    local ok2, cerrors2 = op:results()
    assert.is_true(ok2)
    readable(cerrors2, "start_check_key")
    local client = slashid.new(H.opts(org, key))
    local ok3, cerrors3 = client:check_key()
    assert.is_true(ok3)
    readable(cerrors3, "client:check_key")
    client:close()
    assert.are.equal(0, #wrong, "tostring gives table: for " .. table.concat(wrong, ", "))
  end)


  it("every errors list: check_key, ops, cancelled ops, batch items, unstarted items", function()
    local org, key = H.new_org()
    -- check_key refused
    H.faults(org, { { status = 401, message = "check refused here" } })
    local ok, cerrors = slashid.check_key(H.opts(org, key))
    assert.is_false(ok)
    assert_readable(cerrors, "check_key", { "check refused here" })
    -- a rotation with no errors
    local r, rerrors = slashid.rotate_key(H.opts(org, key))
    assert.is_table(r)
    assert_readable(rerrors, "a clean rotation")
    key = r.api_key
    -- an op
    H.faults(org, { { status = 429, message = "slow down, op" } })
    local op = slashid.start_rotate_key(H.opts(org, key, { retries = 0 }))
    assert.is_true(op:wait(10))
    local _, oerrors = op:results()
    assert_readable(oerrors, "op", { "slow down, op", "429" })
    -- a cancelled op (a request that stalls)
    H.faults(org, { { delay = 5 } })
    local op2 = slashid.start_rotate_key(H.opts(org, key, { retries = 0 }))
    op2:poll()
    op2:cancel()
    local _, cancel_errors = op2:results()
    assert_readable(cancel_errors, "cancelled op", { "cancel" })
    -- check ops
    local cop = slashid.start_check_key(H.opts(org, "sk_not_the_key_at_all"))
    assert.is_true(cop:wait(10))
    local cok, cop_errors = cop:results()
    assert.is_false(cok)
    assert_readable(cop_errors, "check op")
    -- batch items, one of them never started
    local org2, key2 = H.new_org()
    H.faults(org2, { { status = 404, message = "no such org here" } })
    local out = slashid.rotate_keys({ H.opts(org2, key2), H.opts(org2, key2) },
      { concurrency = 1, on_progress = function() return false end })
    assert_readable(out[1].errors, "batch item", { "no such org here" })
    assert.are.equal("not_rotated", out[2].info.outcome)
    assert_readable(out[2].errors, "unstarted batch item")
    -- a client's
    local client = slashid.new(H.opts(org2, key2))
    H.faults(org2, { { status = 401, message = "client refused" } })
    local _, clerrors = client:rotate_key()
    assert_readable(clerrors, "client", { "client refused" })
    client:close()
  end)
end)

-- ---- (f) ---------------------------------------------------------------------

describe("ca_file from SLASHID_CA_FILE", function()
  local SCRIPT = [[
    local slashid = require "slashid"
    local o = { org_id = os.getenv("T_ORG"), api_key = os.getenv("T_KEY"),
                base_url = os.getenv("T_URL"), retries = 2, retry_delay = 0.01,
                ca_file = os.getenv("T_CA") }
    local r, e, p, i = slashid.rotate_key(o)
    io.write(i.outcome, " ", tostring(i.status), " ", tostring(i.attempts), " ",
             tostring(e[1] and e[1].curl_code), " ", tostring(r ~= nil))
  ]]

  local function run(env_ca, option_ca)
    local org, key = H.new_org()
    local script = H.write(H.tmpname("ca-env") .. ".lua", SCRIPT)
    local parts = { "T_ORG=" .. H.q(org), "T_KEY=" .. H.q(key), "T_URL=" .. H.q(H.https_url) }
    if env_ca then parts[#parts + 1] = "SLASHID_CA_FILE=" .. H.q(env_ca) end
    if option_ca then parts[#parts + 1] = "T_CA=" .. H.q(option_ca) end
    local p = io.popen(table.concat(parts, " ") .. " " .. H.lua .. " " .. H.q(script) .. " 2>&1")
    local out = p:read("*a")
    p:close()
    H.assert_no_secret(out, key)
    return out, org
  end

  it("a subprocess rotating over HTTPS without ca_file uses SLASHID_CA_FILE", function()
    local out, org = run(H.ca_file)
    assert.are.equal("rotated 200 1 nil true", out)
    assert.are.equal(1, H.org(org).rotations)
    assert.are.equal("https", H.org(org).requests[1].port)
  end)

  it("with SLASHID_CA_FILE naming a CA that did not sign the server: not_rotated, nothing sent", function()
    local wrong = "/etc/ssl/certs/ca-certificates.crt"
    if not H.read_if_any(wrong) then
      wrong = H.write(H.tmpname("empty-ca") .. ".pem", "")
    end
    local out, org = run(wrong)
    local outcome, status, attempts, curl_code = out:match("^(%S+) (%S+) (%S+) (%S+) false$")
    assert.are.equal("not_rotated", outcome, out)
    assert.are.equal("0", status, out)
    -- a certificate failure is never retried
    assert.are.equal("1", attempts, out)
    assert.is_truthy(curl_code == "60" or curl_code == "77" or curl_code == "35", out)
    assert.are.equal(0, H.org(org).rotations)
    assert.are.equal(0, #H.org(org).requests)
  end)

  it("the ca_file option wins over SLASHID_CA_FILE", function()
    local out, org = run("/etc/ssl/certs/ca-certificates.crt", H.ca_file)
    assert.are.equal("rotated 200 1 nil true", out)
    assert.are.equal(1, H.org(org).rotations)
    local out2, org2 = run(H.ca_file, "/etc/ssl/certs/ca-certificates.crt")
    assert.is_truthy(out2:find("^not_rotated "), out2)
    assert.are.equal(0, H.org(org2).rotations)
  end)
end)

-- ---- review findings (issue 15) ------------------------------------------------

describe("slashid.read_journal given what is not a regular file", function()
  it("a FIFO with no writer: nil and a message at once, never blocking (in a subprocess under timeout)", function()
    local dir = H.mkdir(H.tmpname("rj-fifo"))
    local fifo = dir .. "/run.journal"
    assert(os.execute("mkfifo -m 600 " .. H.q(fifo)))
    local script = H.write(dir .. "/read.lua", [[
      local entries, why = require("slashid").read_journal(arg[1])
      io.write(tostring(entries), "\n", type(why), "\n")
    ]])
    local t0 = socket.gettime()
    local p = io.popen(("timeout 10 %s %s %s 2>&1; echo \"rc=$?\"")
                       :format(H.lua, H.q(script), H.q(fifo)))
    local out = p:read("*a")
    p:close()
    local took = socket.gettime() - t0
    assert.is_nil(out:find("rc=124", 1, true), "read_journal blocked on the FIFO (killed by timeout)")
    assert.are.equal("nil\nstring\nrc=0\n", out)
    assert.is_true(took < 5, ("it took %.1f s"):format(took))
  end)

  it("a device (/dev/null) or a directory: nil and a message, not an empty journal", function()
    for _, path in ipairs({ "/dev/null", H.mkdir(H.tmpname("rj-dir")) }) do
      local entries, why = slashid.read_journal(path)
      assert.is_nil(entries, path .. " read as a journal")
      assert.is_string(why, path)
    end
  end)
end)

describe("a 200 whose new key holds CR LF", function()
  local EVIL = "sk_abc\r\nX-Injected: yes"

  local function assert_no_injection(state)
    for i, r in ipairs(state.requests) do
      assert.is_nil(r.headers["x-injected"], "request " .. i .. " (" .. r.method ..
                    ") carried an injected header")
    end
  end

  it("with verify = true: the check is never sent (one request, the PUT); info.verified false " ..
     "with an errors entry", function()
    local org, key = H.new_org()
    H.faults(org, { { status = 200, rotate = true, json = { result = { api_key = EVIL } } } })
    local result, errors, _, info = slashid.rotate_key(H.opts(org, key, { verify = true }))
    assert.are.equal("rotated", info.outcome, messages(errors))
    H.assert_key_equal(EVIL, result.api_key)
    local state = H.org(org)
    assert_no_injection(state)
    for i, r in ipairs(state.requests) do
      assert.are_not.equal("GET", r.method, "request " .. i .. ": the check was sent")
    end
    assert.are.equal(1, #state.requests)
    assert.is_false(info.verified)
    assert.is_true(#errors >= 1, "no errors entry")
    H.assert_no_secret(H.flatten(errors, info), key)
  end)

  it("a client that rotated it does not adopt it: its next request presents the old key " ..
     "(the emulator's `previous`), no injected header", function()
    local org, key = H.new_org()
    H.faults(org, { { status = 200, rotate = true, json = { result = { api_key = EVIL } } } })
    local client = slashid.new(H.opts(org, key))
    local r, e, _, i = client:rotate_key()
    assert.are.equal("rotated", i.outcome, messages(e))
    H.assert_key_equal(EVIL, r.api_key)
    local ok, why = pcall(client.check_key, client)
    client:close()
    local state = H.org(org)
    assert_no_injection(state)
    assert.are.equal(2, #state.requests, "the client's next call sent no request" ..
                     (ok and "" or (": " .. tostring(why))))
    assert.are.equal("PUT", state.requests[1].method)
    assert.are.equal("previous", state.requests[2].key, "the next request did not present the old key")
  end)
end)

-- ---- answers a gateway encodes, keys with bytes beyond ASCII ------------------

describe("a 2xx a gateway gzip-encoded (no Accept-Encoding asked for none)", function()
  it("is decoded: rotated, the key returned", function()
    local key = "sk_gzipped_" .. ("k"):rep(30)
    local dir = H.mkdir(H.tmpname("gz"))
    H.write(dir .. "/body.json", '{"errors":[],"result":{"api_key":"' .. key .. '"}}')
    local p = assert(io.popen("gzip -c " .. dir .. "/body.json"))
    local gz = p:read("*a")
    p:close()
    assert.is_true(#gz > 20, "gzip is needed for this test")
    local answer = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n" ..
                   "Content-Length: " .. #gz .. "\r\nConnection: close\r\n\r\n" .. gz
    local op, heads = serve({ answer }, function(url)
      return slashid.start_rotate_key({ base_url = url, org_id = "org-gz",
                                        api_key = "sk_old_gz_key_000000000000" })
    end)
    local result, errors, _, info = op:results()
    local head = heads[1]
    assert.are.equal("rotated", info.outcome, messages(errors))
    assert.is_true(result.api_key == key, "another key came back")
    -- the request admits the codings libcurl decodes
    assert.is_truthy(head:lower():find("accept%-encoding:"), "no Accept-Encoding sent")
  end)
end)

describe("a new key with a byte beyond printable ASCII (UTF-8 C1 controls, line separators)", function()
  for _, case in ipairs({ { "U+0085 (NEL)", "\\u0085" }, { "U+009B (CSI)", "\\u009b" },
                          { "U+2028 (line separator)", "\\u2028" }, { "an accented letter", "\\u00e9" } }) do
    it(case[1] .. ": returned, never written to save_to", function()
      local org, key = org_with_escapable_key()
      H.faults(org, { { status = 200, rotate = true,
                        body = '{"errors":[],"result":{"api_key":"sk_beyond' .. case[2] .. 'ascii"}}' } })
      local path = H.mkdir(H.tmpname("c1")) .. "/key"
      local result, errors, _, info = slashid.rotate_key(H.opts(org, key, { save_to = path }))
      assert.are.equal("rotated", info.outcome, messages(errors))
      assert.is_truthy(result.api_key:find("[\128-\255]"), "the key came back changed")
      assert.is_false(info.saved)
      assert.is_nil(H.read_if_any(path), "the file was written")
      assert.is_truthy(messages(errors):find("not saved", 1, true), messages(errors))
    end)
  end
end)

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

-- ---- (h) ------------------------------------------------------------------

local function assert_not_whole(text, key, where)
  if text:find(key, 1, true) then
    error(("a whole key was found in %s"):format(where), 2)
  end
end

-- bytes of `text` put through python3's zlib: steps is a list of
-- "gzip", "zlib", "raw", "gzip_badcrc", "gzip_empty_first", "gzip_split"
local function encode(text, steps)
  local dir = H.mkdir(H.tmpname("r17b-enc"))
  H.write(dir .. "/in", text)
  H.write(dir .. "/enc.py", [[
import sys, zlib, gzip, struct
data = open(sys.argv[1], 'rb').read()
def gz(b): return gzip.compress(b, mtime=0)
for step in sys.argv[3:]:
    if step == 'gzip': data = gz(data)
    elif step == 'zlib': data = zlib.compress(data)
    elif step == 'raw':
        c = zlib.compressobj(9, zlib.DEFLATED, -15); data = c.compress(data) + c.flush()
    elif step == 'gzip_badcrc':
        g = bytearray(gz(data)); g[-8] ^= 0xff; data = bytes(g)
    elif step == 'gzip_empty_first': data = gz(b'') + gz(data)
    elif step == 'gzip_split':
        h = len(data) // 2; data = gz(data[:h]) + gz(data[h:])
    else: raise SystemExit('bad step ' + step)
open(sys.argv[2], 'wb').write(data)
]])
  local cmd = "python3 " .. H.q(dir .. "/enc.py") .. " " .. H.q(dir .. "/in") .. " " ..
              H.q(dir .. "/out") .. " " .. table.concat(steps, " ")
  assert(os.execute(cmd), "python3 failed")
  local out = H.read_file(dir .. "/out")
  os.execute("rm -rf " .. H.q(dir))
  return out
end

local function envelope(new)
  return '{"errors":[],"result":{"api_key":"' .. new .. '"}}'
end

-- ============================================================================
-- 1. decode.c: a 2xx must never lose its key through Content-Encoding
-- ============================================================================

describe("decode: a 2xx keeps its key", function()
  local function rotated_with(headers, body, extra_opts, status)
    local key, new = known_key("OLD"), known_key("NEW")
    local b = type(body) == "function" and body(new) or body
    local opts = { org_id = "org-enc", api_key = key, retries = 0 }
    for k, v in pairs(extra_opts or {}) do opts[k] = v end
    local result, errors, _, info = raw_rotate({
      answer(status or "200 OK", "Content-Type: application/json\r\n" .. headers, b) }, opts)
    assert.are.equal("rotated", info.outcome,
                     "the server issued a key the caller never got: " .. messages(errors))
    H.assert_key_equal(new, result.api_key)
  end

  it("pretty-printed JSON labelled 'deflate' (raw inflate of '{\\n  \"' ends cleanly)", function()
    rotated_with("Content-Encoding: deflate\r\n", function(new)
      return '{\n  "errors": [],\n  "result": {\n    "api_key": "' .. new .. '"\n  }\n}'
    end)
  end)

  it("'{ \"result\" : ...' (spaces after the brace) labelled 'deflate'", function()
    rotated_with("Content-Encoding: deflate\r\n", function(new)
      return '{ "result" : { "api_key" : "' .. new .. '" } }'
    end)
  end)

  -- title, Content-Encoding header lines, how the envelope is encoded
  for _, case in ipairs({
    { "Content-Encoding: gzip, gzip (two codings applied, as RFC 9110 allows)",
      "Content-Encoding: gzip, gzip\r\n", { "gzip", "gzip" } },
    { "Content-Encoding: deflate, gzip (zlib then gzip)",
      "Content-Encoding: deflate, gzip\r\n", { "zlib", "gzip" } },
    { "two Content-Encoding headers (gzip, then gzip again)",
      "Content-Encoding: gzip\r\nContent-Encoding: gzip\r\n", { "gzip", "gzip" } },
    { "Content-Encoding: gzip, identity", "Content-Encoding: gzip, identity\r\n", { "gzip" } },
    { "Content-Encoding: gzip followed by a second header 'Content-Encoding: identity'",
      "Content-Encoding: gzip\r\nContent-Encoding: identity\r\n", { "gzip" } },
    { "a gzip body whose first member is empty (gzip of '' then the envelope)",
      "Content-Encoding: gzip\r\n", { "gzip_empty_first" } },
    { "a gzip body in two members (the envelope split in the middle of the key)",
      "Content-Encoding: gzip\r\n", { "gzip_split" } },
    { "a gzip whose text is the whole envelope but whose CRC is wrong",
      "Content-Encoding: gzip\r\n", { "gzip_badcrc" } },
    { "raw deflate labelled 'gzip'", "Content-Encoding: gzip\r\n", { "raw" } },
  }) do
    it(case[1], function()
      rotated_with(case[2], function(new) return encode(envelope(new), case[3]) end)
    end)
  end

  it("a chunked gzip body followed by a trailer 'Content-Encoding: identity'", function()
    local key, new = known_key("OLD"), known_key("NEW")
    local gz = encode(envelope(new), { "gzip" })
    local result, errors, _, info = raw_rotate({
      "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n" ..
      "Trailer: Content-Encoding\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n" ..
      ("%x\r\n"):format(#gz) .. gz .. "\r\n0\r\nContent-Encoding: identity\r\n\r\n" },
      { org_id = "org-enc", api_key = key, retries = 0 })
    assert.are.equal("rotated", info.outcome, "key lost: " .. messages(errors))
    H.assert_key_equal(new, result.api_key)
  end)

  it("a gzip 2xx cut by a dropped connection: whole JSON without the trailer is rotated; cut mid-key is never a truncated key", function()
    local key = known_key("OLD")
    local new = known_key("NEW")
    local gz = encode(envelope(new), { "gzip" })
    local result, errors, _, info = raw_rotate({
      "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: " .. (#gz + 20) ..
      "\r\nConnection: close\r\n\r\n" .. gz:sub(1, -9) },
      { org_id = "org-cut", api_key = key, retries = 0 })
    assert.are.equal("rotated", info.outcome, "whole JSON, no trailer, dropped: " .. messages(errors))
    H.assert_key_equal(new, result.api_key)
    -- stored blocks (level 0 would do; here: cut the compressed stream anywhere)
    for cut = 12, #gz - 9 do
      local r2, e2, _, i2 = raw_rotate({
        "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: " .. (#gz + 20) ..
        "\r\nConnection: close\r\n\r\n" .. gz:sub(1, cut) },
        { org_id = "org-cut", api_key = key, retries = 0 })
      if r2 then
        H.assert_key_equal(new, r2.api_key, "a cut gzip (" .. cut .. " bytes) gave a key that is not the whole new key")
      else
        assert.are.equal("unknown", i2.outcome, messages(e2))
      end
    end
  end)

  -- expected to hold
  it("100 Continue labelled gzip, then a plain 200; chunked + gzip; zlib and raw 'deflate'; a folded Content-Encoding", function()
    local key = known_key("OLD")
    local cases = {
      function(new)
        return "HTTP/1.1 100 Continue\r\nContent-Encoding: gzip\r\n\r\n" ..
               answer("200 OK", "Content-Type: application/json\r\n", envelope(new))
      end,
      function(new)
        local gz = encode(envelope(new), { "gzip" })
        local a, b = gz:sub(1, 10), gz:sub(11)
        return "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n" ..
               "Connection: close\r\n\r\n" .. ("%x\r\n"):format(#a) .. a .. "\r\n" ..
               ("%x\r\n"):format(#b) .. b .. "\r\n0\r\n\r\n"
      end,
      function(new) return answer("200 OK", "Content-Encoding: deflate\r\n", encode(envelope(new), { "zlib" })) end,
      function(new) return answer("200 OK", "Content-Encoding: deflate\r\n", encode(envelope(new), { "raw" })) end,
      function(new) return answer("200 OK", "Content-Encoding:\r\n gzip\r\n", encode(envelope(new), { "gzip" })) end,
      function(new) return answer("200 OK", "Content-Encoding: GZIP  \r\n", encode(envelope(new), { "gzip" })) end,
    }
    for i, make in ipairs(cases) do
      local new = known_key("NEW")
      local result, errors, _, info = raw_rotate({ make(new) },
        { org_id = "org-enc", api_key = key, retries = 0 })
      assert.are.equal("rotated", info.outcome, "case " .. i .. ": " .. messages(errors))
      H.assert_key_equal(new, result.api_key, "case " .. i)
    end
  end)

  it("a gzip bomb: decoded just under max_response_bytes is read (holds); over it, unknown is said to be too large (not 'not a JSON object' + binary)", function()
    local key = known_key("OLD")
    local max = 200000
    for _, pad in ipairs({ max - 200, max + 50 }) do
      local new = known_key("NEW")
      local body = '{"meta":{"pad":"' .. ("A"):rep(pad - 100) .. '"},"result":{"api_key":"' .. new .. '"}}'
      local gz = encode(body, { "gzip" })
      assert(#gz < 2000)
      local result, errors, _, info = raw_rotate({
        answer("200 OK", "Content-Encoding: gzip\r\n", gz) },
        { org_id = "org-bomb", api_key = key, retries = 0, max_response_bytes = max })
      if #body <= max then
        assert.are.equal("rotated", info.outcome, messages(errors))
        H.assert_key_equal(new, result.api_key)
      else
        assert.is_nil(result)
        assert.are.equal("unknown", info.outcome)
        assert.is_truthy(messages(errors):find("max_response_bytes", 1, true),
                         "an over-cap decoded body is not said to be too large: " ..
                         messages(errors):sub(1, 120))
      end
    end
  end)
end)

-- ============================================================================
-- 2. secret.c: redaction
-- ============================================================================

describe("redaction", function()
  -- unit_at reads "%XX" and "\x" as the byte they stand for, always: a
  -- key that holds such a triple literally (api_key is any printable
  -- string) is then never matched where it is quoted as it is, and when
  -- every run between two triples is under 12 bytes, no piece is either.
  -- (every run between two triples is at most 11 bytes; %02d: a unique tag)
  for _, v in ipairs({ { "%41", "_abc%41ghijklmn%42opqrstuv%43wxyz0123" },
                       { "\\t", "_abcdef\\tijklmnopq\\trstuvwxyz\\t0123456" },
                       { "%2F", "_Zq8%2Fp0wE7Hd%2Bx3Rt5La%3D%3D" } }) do
    it("an old key holding '" .. v[1] .. "' literally, quoted as it is by a 403: not shown whole", function()
      serial = serial + 1
      local org, key = H.new_org_with_key(("sk%02d"):format(serial % 100) .. v[2])
      H.faults(org, { { status = 403, content_type = "application/json",
                        headers = { ["X-Key"] = key },
                        body = '{"errors":[{"httpcode":403,"message":"key ' ..
                               key:gsub("\\", "\\\\") .. ' is refused"}]}' } })
      local debug, lines = tracer()
      local result, errors, pagination, info = slashid.rotate_key(H.opts(org, key, { debug = debug }))
      assert.is_nil(result)
      assert_not_whole(H.flatten(errors, pagination, info), key, "errors/info")
      assert_not_whole(tostring(errors), key, "tostring(errors)")
      assert_not_whole(table.concat(lines, "\n"), key, "the trace")
    end)
  end

  it("12-byte pieces at every alignment, in any case in headers, mixed escapes, excerpt cut mid-escape", function()
    local org, key = H.new_org_with_key(known_key("OLD"))
    local function uesc(s) return (s:gsub(".", function(c) return ("\\u%04x"):format(c:byte()) end)) end
    local function pct(s) return (s:gsub(".", function(c) return ("%%%02x"):format(c:byte()) end)) end
    for off = 0, 11 do
      local piece = key:sub(off + 1, off + 12)
      local mixed = piece:sub(1, 4) .. uesc(piece:sub(5, 8)) .. pct(piece:sub(9, 12))
      local pad = ("x"):rep(off)
      local body = pad .. "<p>" .. ("y"):rep(184 - off) .. uesc(key) .. " " .. mixed
      H.faults(org, { { status = 500, content_type = "text/html",
                        headers = { ["X-A" .. pad] = pad .. piece:upper(),
                                    ["X-B"] = pad .. piece:lower() .. "|" .. mixed,
                                    [pad .. piece .. "-N"] = "v" },
                        body = body } })
      local debug, lines = tracer()
      local _, errors, pagination, info = slashid.rotate_key(H.opts(org, key, { debug = debug, retries = 0 }))
      assert_no_piece(H.flatten(errors, pagination, info), key, "errors/info, offset " .. off)
      assert_no_piece(table.concat(lines, "\n"), key, "the trace, offset " .. off)
      local flat = H.flatten(info.headers):lower()
      assert.is_falsy(flat:find(piece:lower(), 1, true), "a piece in info.headers in another case")
    end
  end)

  it("tostring of a client, an op, errors and info after a rotation shows no key", function()
    local org, key = H.new_org()
    local c = slashid.new{ org_id = org, api_key = key, base_url = H.http_url }
    local result, errors, _, info = c:rotate_key()
    assert.are.equal("rotated", info.outcome, messages(errors))
    local op = c:start_check_key()
    op:wait(10)
    for _, s in ipairs({ tostring(c), tostring(op), tostring(errors), tostring(info) }) do
      assert_no_piece(s, key, "tostring")
      assert_no_piece(s, result.api_key, "tostring")
    end
    c:close()
  end)

  -- timings: a 1 MiB answer full of backslashes and percent signs
  local function timed(f)
    local t0 = socket.gettime()
    f()
    return socket.gettime() - t0
  end

end)

-- ============================================================================
-- 3. answer.c: header folds and the header cap
-- ============================================================================

describe("headers", function()
  it("two 103 Early Hints of 40 KB each, then a 200 with the key: the key is kept", function()
    local key, new = known_key("OLD"), known_key("NEW")
    local hints = "HTTP/1.1 103 Early Hints\r\nLink: <" .. ("/a"):rep(20000) .. ">; rel=preload\r\n\r\n"
    local result, errors, _, info = raw_rotate({
      hints .. hints .. answer("200 OK", "Content-Type: application/json\r\n", envelope(new)) },
      { org_id = "org-hints", api_key = key, retries = 0 })
    assert.are.equal("rotated", info.outcome, "key lost: " .. messages(errors))
    H.assert_key_equal(new, result.api_key)
  end)

  it("folds after the status line, after 100 Continue, a CR-only break, a fold in a long name", function()
    local key, new = known_key("OLD"), known_key("NEW")
    local cases = {
      "HTTP/1.1 200 OK\r\n " .. key .. "\r\n",
      "HTTP/1.1 100 Continue\r\n\t" .. key:sub(1, 20) .. "\r\n\r\nHTTP/1.1 200 OK\r\n\t" .. key:sub(21) .. "\r\n",
      "HTTP/1.1 200 OK\r\nX-A: " .. key:sub(1, 20) .. "\r " .. key:sub(21) .. "\r\nX-B: " .. key .. "\r\r\n",
      "HTTP/1.1 200 OK\r\nX-" .. ("n"):rep(70) .. key:sub(1, 15) .. "\r\n " .. key:sub(16) .. ": v\r\n",
    }
    for i, head in ipairs(cases) do
      local debug, lines = tracer()
      local body = envelope(new)
      local result, errors, pagination, info = raw_rotate({
        head .. "Content-Length: " .. #body .. "\r\nConnection: close\r\n\r\n" .. body },
        { org_id = "org-fold", api_key = key, retries = 0, debug = debug })
      assert.is_string(info.outcome)
      assert_no_piece(H.flatten(errors, pagination, info), key, "case " .. i .. " errors/info")
      assert_no_piece(table.concat(lines, "\n"), key, "case " .. i .. " trace")
      if result then assert_no_piece(H.flatten(info), new, "case " .. i .. " info (new)") end
    end
  end)
end)

-- ============================================================================
-- 4. slashid.lua url_key: false adoptions
-- ============================================================================

describe("url_key", function()
  -- a server that rotates whatever key it is shown, recording the path
  -- and the key presented
  local function fake(record)
    return function(head)
      local method, path = head:match("^(%u+) (%S+)")
      local presented = head:match("\r\n[Ss]lash[Ii][Dd]%-[Aa][Pp][Ii]%-[Kk]ey: ([^\r\n]*)")
      record[#record + 1] = { method = method, path = path, key = presented }
      if method == "PUT" then
        record.issued = known_key("ELSEWHERE")
        return answer("200 OK", "Content-Type: application/json\r\n", envelope(record.issued))
      end
      return answer("200 OK", "Content-Type: application/json\r\n", '{"errors":[],"result":{}}')
    end
  end

  -- A client at the raw server's URL rotates with base_url = URL ..
  -- suffix, then checks its key at its own URL: what each request
  -- carried (record), and the rotation's values.
  local function rotate_elsewhere_then_check(suffix, record)
    local server = assert(socket.bind("127.0.0.1", 0))
    local key = known_key("OLD")
    local c
    local op = serve({ fake(record) }, function(url)
      c = slashid.new{ org_id = "org-u", api_key = key, base_url = url, retries = 0 }
      return c:start_rotate_key{ base_url = url .. suffix }
    end, nil, server)
    local result, errors, _, info = op:results()
    local cop = serve({ fake(record) }, function() return c:start_check_key() end, nil, server)
    cop:results()
    server:close()
    c:close()
    return key, result, errors, info
  end

  for _, suffix in ipairs({ "/x//..", "/x/y//../..", "/tenant-b//.." }) do
    it("a call to base_url .. '" .. suffix .. "' (libcurl: another path) is not adopted", function()
      local record = {}
      local _, result, errors, info = rotate_elsewhere_then_check(suffix, record)
      assert.are.equal("rotated", info.outcome, messages(errors))
      assert.are_not.equal("/organizations/api-keys", record[1].path,
                           "libcurl sent the call to the client's own path after all")
      if record[2].key == result.api_key then
        error(("false adoption: the rotation went to %s, not the client's /organizations/api-keys, " ..
               "and the client now presents that server's key at its own base URL"):format(record[1].path))
      end
    end)
  end

  it("'%2e%2e', '%2E', '/x/..%2f' are not adopted", function()
    for _, suffix in ipairs({ "/x/%2e%2e", "/%2E", "/x/..%2f" }) do
      local record = {}
      local key = rotate_elsewhere_then_check(suffix, record)
      assert.are.equal(key, record[#record].key == key and key or "adopted", "adopted at " .. suffix)
    end
  end)
end)

-- ============================================================================
-- 5. the old key after a rotation
-- ============================================================================

describe("the replaced key", function()
  it("a batch with verify: on_result's item never shows the replaced key", function()
    local org, key = H.new_org_with_key(known_key("OLD"))
    H.faults(org, {
      { rotate = true },
      { status = 503, content_type = "application/json", headers = { ["X-Old"] = key },
        body = '{"errors":[{"httpcode":503,"message":"old ' .. key .. '"}]}' } })
    local seen = {}
    local debug, lines = tracer()
    slashid.rotate_keys({ { org_id = org, api_key = key } },
      { base_url = H.http_url, verify = true, retries = 0, debug = debug,
        on_result = function(_, item) seen[#seen + 1] = H.flatten(item.errors, item.info) end })
    assert.are.equal(1, #seen)
    assert_no_piece(seen[1], key, "on_result")
    assert_no_piece(table.concat(lines, "\n"), key, "the trace")
  end)

  it("the command with --debug --verify: stderr never shows the replaced key; the journal holds no old key", function()
    local org, key = H.new_org_with_key(known_key("OLD"))
    H.faults(org, {
      { rotate = true },
      { status = 503, content_type = "application/json", headers = { ["X-Old"] = key },
        body = '{"errors":[{"httpcode":503,"message":"old ' .. key .. '"}]}' } })
    local dir = H.mkdir(H.tmpname("r17b-cli"))
    os.execute("chmod 700 " .. H.q(dir))
    local cmd = ("SLASHID_API_KEY=%s %s bin/slashid-rotate --org-id %s --base-url %s --verify --debug --journal %s >%s 2>%s")
      :format(H.q(key), H.lua, H.q(org), H.q(H.http_url), H.q(dir .. "/j"), H.q(dir .. "/out"), H.q(dir .. "/err"))
    os.execute(cmd)
    local err = H.read_file(dir .. "/err")
    assert_no_piece(err, key, "stderr")
    assert_no_piece(H.read_file(dir .. "/out"), key, "stdout")
    local j = H.read_if_any(dir .. "/j")
    if j then assert_no_piece(j, key, "the journal") end
  end)
end)

-- ============================================================================
-- 6. decode.c under a failing malloc (a C harness, ASan/LSan)
-- ============================================================================

describe("decode.c out of memory", function()
  it("a malloc failing mid-inflate leaks no buffer holding the decoded key (LSan)", function()
    local dir = H.mkdir(H.tmpname("r17b-oom"))
    H.write(dir .. "/h.c", [==[
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include "slashid.h"
void *__real_malloc(size_t);
void *__wrap_malloc(size_t n);
static int fail_at = -1, count = 0;
void *__wrap_malloc(size_t n) {
  if (fail_at >= 0 && count++ == fail_at) return NULL;
  return __real_malloc(n);
}
int main(int argc, char **argv) {
  static char plain[40000], gz[40000];
  size_t pl; uLongf gl = sizeof gz;
  z_stream z;
  sid_transfer t;
  (void)argc;
  pl = (size_t)sprintf(plain, "{\"result\":{\"api_key\":\"sk_decoded_key_in_a_leak\"},\"pad\":\"");
  memset(plain + pl, 'p', 30000); pl += 30000; memcpy(plain + pl, "\"}", 2); pl += 2;
  memset(&z, 0, sizeof z);
  deflateInit2(&z, 9, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);
  z.next_in = (Bytef *)plain; z.avail_in = (uInt)pl;
  z.next_out = (Bytef *)gz; z.avail_out = (uInt)gl;
  deflate(&z, Z_FINISH); gl = z.total_out; deflateEnd(&z);
  memset(&t, 0, sizeof t);
  t.req.max_bytes = 1 << 20;
  sid_buf_append(&t.ans.head, "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n\r\n", 43);
  sid_buf_append(&t.ans.body, gz, gl);
  fail_at = atoi(argv[1]); count = 0;
  if (sid_decode_body(&t) != 0) {       /* out of memory: built again later */
    fail_at = -1;
    if (sid_decode_body(&t) != 0) return 2;
  }
  fail_at = -1;
  if (t.ans.body.len != pl) return 3;       /* the key must be there in the end */
  sid_buf_free(&t.ans.body); sid_buf_free(&t.ans.head);
  return 0;
}
]==])
    local cc = ("env -u LD_PRELOAD -u ASAN_OPTIONS -u LSAN_OPTIONS cc -fsanitize=address -g -O1 -std=gnu99 -Isrc -I/usr/include/lua5.4 " ..
                "-I/usr/include/x86_64-linux-gnu -Wl,--wrap=malloc %s src/decode.c src/secret.c " ..
                "-o %s -lz -llua5.4 -lcurl"):format(H.q(dir .. "/h.c"), H.q(dir .. "/h"))
    if not os.execute(cc .. " 2>" .. H.q(dir .. "/cc.err")) then
      pending("cannot build the harness: " .. (H.read_if_any(dir .. "/cc.err") or ""))
      return
    end
    local failures = {}
    for n = 0, 3 do
      local ok = os.execute(("env -u LD_PRELOAD -u LSAN_OPTIONS ASAN_OPTIONS=detect_leaks=1 %s %d >%s 2>&1")
        :format(H.q(dir .. "/h"), n, H.q(dir .. "/out" .. n)))
      if not ok then
        local out = H.read_if_any(dir .. "/out" .. n) or ""
        failures[#failures + 1] = ("malloc #%d failing: %s"):format(n,
          out:match("SUMMARY: [^\n]*") or "exit status not 0")
      end
    end
    assert(#failures == 0, "decode.c under a failing malloc: " .. table.concat(failures, "; "))
  end)
end)

describe("crash sweep (run under ASan)", function()
  it("odd codings and odd escapes at the ends of texts: no crash, no piece of the old key", function()
    local key, new = known_key("OLD"), known_key("NEW")
    local env = envelope(new)
    local gz = encode(env, { "gzip" })
    local zl = encode(env, { "zlib" })
    local raw = encode(env, { "raw" })
    local bodies = {}
    for i = 0, #gz do bodies[#bodies + 1] = { "gzip", gz:sub(1, i) } end
    for i = 0, #zl, 3 do bodies[#bodies + 1] = { "deflate", zl:sub(1, i) } end
    for i = 0, #raw, 3 do bodies[#bodies + 1] = { "deflate", raw:sub(1, i) } end
    local tails = { "\\", "\\u", "\\u00", "\\u006", "\\ud800", "\\ud800\\", "\\ud800\\u", "\\ud800\\udc0",
                    "%", "%4", "%%", "\\\0", '"api_key"', '"api_key":', '"api_key":"', '"api\\u005fkey":"\\',
                    key:sub(1, 11) .. "\\", key:sub(1, 11) .. "%6", key .. "\\u00" }
    for _, t in ipairs(tails) do
      bodies[#bodies + 1] = { "x", t }
      bodies[#bodies + 1] = { "x", ("y"):rep(197) .. t }
      bodies[#bodies + 1] = { "gzip", "\31\139\8\4\0\0\0\0\0\3\255\255" .. t }   -- FEXTRA longer than the body
    end
    bodies[#bodies + 1] = { ("g"):rep(31), env }
    bodies[#bodies + 1] = { ("g"):rep(32), env }
    bodies[#bodies + 1] = { "", env }
    for i, b in ipairs(bodies) do
      for _, status in ipairs({ "200 OK", "500 X" }) do
        local debug, lines = tracer()
        local hdr = "Content-Encoding: " .. b[1] .. "\r\nX-T: " .. b[2]:gsub("[%c]", "") .. "\r\n"
        local _, errors, pagination, info = raw_rotate({ answer(status, hdr, b[2]) },
          { org_id = "org-sweep", api_key = key, retries = 0, debug = debug })
        assert.is_string(info.outcome, "case " .. i)
        assert_no_piece(H.flatten(errors, pagination, info), key, "case " .. i .. " errors/info")
        assert_no_piece(table.concat(lines, "\n"), key, "case " .. i .. " trace")
      end
    end
  end)
end)
