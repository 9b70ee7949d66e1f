-- The invariants fuzz_answer.c checks after each input: the shapes of the
-- four values sid_answer_build returns, the outcome the Lua policy names
-- from them (lua/slashid/policy.lua, outcome.lua: README's "Outcomes"),
-- that no retry is ever allowed after an `unknown`, and that neither key
-- appears in anything handed back but `result`. Raising here is a finding.
local core = require "slashid.core"
local policy = require "slashid.policy"
local outcome = require "slashid.outcome"
local oracle = require "envelope_oracle"

local M = {}

local type, pairs, next, tostring = type, pairs, next, tostring
local mtype = math.type

local function fail(fmt, ...)
  error("invariant: " .. string.format(fmt, ...), 0)
end

local function is_int(v) return mtype(v) == "integer" end

-- A debug function for one run, and the list of lines it received.
function M.tracer()
  local lines = {}
  return function(line)
    if type(line) ~= "string" then fail("a trace line is a %s", type(line)) end
    lines[#lines + 1] = line
  end, lines
end

-- Every string reachable from v (keys and values), with its path.
local function walk(v, path, out, seen)
  local t = type(v)
  if t == "string" then
    out[#out + 1] = { path, v }
  elseif t == "table" and not seen[v] then
    seen[v] = true
    for k, x in pairs(v) do
      walk(k, path .. "[key]", out, seen)
      walk(x, path .. "." .. tostring(k), out, seen)
    end
  end
  return out
end

local function assert_absent(secret, what, ...)
  if type(secret) ~= "string" or #secret < 16 then return end
  local seen = {}
  for i = 1, select("#", ...) do
    for _, s in ipairs(walk((select(i, ...)), what[i], {}, seen)) do
      if s[2]:find(secret, 1, true) then
        fail("a key appears in %s", s[1])
      end
    end
  end
end

local function check_errors(errors)
  if type(errors) ~= "table" then fail("errors is a %s", type(errors)) end
  local n = #errors
  for k in pairs(errors) do
    if not is_int(k) or k < 1 or k > n then fail("errors is not a list") end
  end
  for i = 1, n do
    local e = errors[i]
    if type(e) ~= "table" then fail("errors[%d] is a %s", i, type(e)) end
    if not is_int(e.httpcode) then fail("errors[%d].httpcode is not an integer", i) end
    if type(e.message) ~= "string" then fail("errors[%d].message is not a string", i) end
    if e.curl_code ~= nil and not is_int(e.curl_code) then
      fail("errors[%d].curl_code is not an integer", i)
    end
  end
end

local function check_facts(facts, status)
  if type(facts) ~= "table" then fail("facts is a %s", type(facts)) end
  if facts.status ~= status or not is_int(facts.status) then fail("facts.status") end
  if not is_int(facts.curl_code) then fail("facts.curl_code") end
  for _, k in ipairs{ "sent", "complete", "too_large", "envelope" } do
    if type(facts[k]) ~= "boolean" then fail("facts.%s is not a boolean", k) end
  end
  if type(facts.elapsed) ~= "number" then fail("facts.elapsed") end
  if type(facts.headers) ~= "table" then fail("facts.headers") end
  for k, v in pairs(facts.headers) do
    if type(k) ~= "string" or type(v) ~= "string" then fail("facts.headers entry") end
    if k ~= k:lower() then fail("a header name is not lower case") end
  end
  if facts.excerpt ~= nil then
    if type(facts.excerpt) ~= "string" then fail("facts.excerpt") end
    if #facts.excerpt > 200 then fail("the excerpt is %d bytes", #facts.excerpt) end
    if facts.excerpt:find("[%z\1-\8\10-\31\127]") then
      fail("a control character in the excerpt")
    end
  end
end

local function check_pagination(p)
  if p == nil then return end
  if type(p) ~= "table" then fail("pagination is a %s", type(p)) end
  for k, v in pairs(p) do
    if k ~= "limit" and k ~= "offset" and k ~= "total_count" then
      fail("pagination has a field %s", tostring(k))
    end
    if type(v) ~= "number" then fail("pagination.%s is a %s", k, type(v)) end
  end
end

local CFG = { retries = 2, retry_delay = 0.5, retry_max_delay = 30 }
local OUTCOMES = { rotated = true, not_rotated = true, unknown = true }

local function check_outcome(result, errors, pagination, facts, rc)
  local info = outcome.info(facts, 1, core.now(), nil)
  local r, e, p, i = outcome.settle(result, errors, pagination, info, facts)
  local outcome = i.outcome
  if not OUTCOMES[outcome] then fail("outcome %s", tostring(outcome)) end
  if (outcome == "rotated") ~= (r ~= nil) then fail("result and outcome disagree") end
  if r and (type(r.api_key) ~= "string" or r.api_key == "") then
    fail("rotated without a key")
  end
  if r == nil and #e == 0 then fail("no result and no errors entry") end
  check_errors(e)
  if p ~= pagination then fail("settle changed pagination") end

  -- README's "Outcomes" table
  local s = facts.status
  local expected
  if facts.complete then
    if s >= 200 and s <= 299 then
      expected = (result and type(result.api_key) == "string" and result.api_key ~= "")
                 and "rotated" or "unknown"
    elseif (s >= 300 and s <= 399) or (s >= 400 and s <= 499 and s ~= 408) then
      expected = "not_rotated"
    else
      expected = "unknown"
    end
  elseif result ~= nil then
    -- a whole 2xx envelope with a key arrived before the transfer failed
    if not (s >= 200 and s <= 299) then fail("a cut answer's result from status %d", s) end
    if not (type(result.api_key) == "string" and result.api_key ~= "") then
      fail("a cut answer's result without a key")
    end
    if facts.too_large then fail("a result from a body over the cap") end
    expected = "rotated"
  else
    if rc == 0 and #e > 0 and e[1].httpcode ~= 0 then fail("transport failure without httpcode 0") end
    expected = facts.sent and "unknown" or "not_rotated"
  end
  if outcome ~= expected then fail("outcome %s, expected %s (status %d)", outcome, expected, s) end

  -- never another attempt after an answer the server may have acted on
  local ra = policy.retry_after(facts.headers, core)
  if ra ~= nil and (type(ra) ~= "number" or not (ra >= 0)) then fail("retry_after %s", tostring(ra)) end
  local delay = policy.next_delay(CFG, facts, 1, ra, function() return 0.5 end)
  if delay ~= nil then
    if outcome ~= "not_rotated" then fail("a retry allowed after %s", outcome) end
    if facts.sent and not (facts.complete and s == 429) then
      fail("a retry allowed after the request was sent")
    end
    if not (delay >= 0 and delay <= CFG.retry_max_delay) then fail("delay %s", tostring(delay)) end
  end
  return r
end

function M.check(result, errors, pagination, facts, lines, status, rc, flags, old_key, body)
  if result ~= nil and type(result) ~= "table" then fail("result is a %s", type(result)) end
  check_errors(errors)
  check_facts(facts, status)
  check_pagination(pagination)
  local complete = rc == 0 and not flags:find("u", 1, true)
  if facts.complete ~= complete then fail("facts.complete") end
  if not complete then
    local first = errors[1]
    if #errors ~= 1 or first.httpcode ~= 0 or not is_int(first.curl_code) then
      fail("a transport failure must give one entry with httpcode 0 and curl_code")
    end
    if result ~= nil and rc ~= 0 and (type(result.api_key) ~= "string" or result.api_key == "") then
      fail("a result from an incomplete answer without a key")
    end
  end
  -- neither key anywhere but in result (the old one not even there: a
  -- server echoing it as the new key would be kept as sent)
  local where = { "errors", "pagination", "facts", "trace" }
  assert_absent(old_key, where, errors, pagination, facts, lines)
  -- (a new key is only checked when made of the characters keys are made
  -- of: one the server builds from '?' can be forged by the display of
  -- control characters as '?', which is not a leak of the key)
  local new_key = type(result) == "table" and result.api_key
  if type(new_key) == "string" and facts.complete and new_key:find("^[%w_%-%.~+/=]+$") then
    assert_absent(new_key, where, errors, pagination, facts, lines)
  end

  check_outcome(result, errors, pagination, facts, rc)

  -- a 2xx whose envelope has a well-formed result.api_key string never
  -- loses it, whatever else the envelope holds (envelope_oracle.lua reads
  -- the body on its own)
  if facts.complete and status >= 200 and status <= 299 and body then
    local want = oracle.api_key(body)
    if want and not (type(result) == "table" and result.api_key == want) then
      fail("a 2xx whose envelope holds a well-formed result.api_key lost it")
    end
  end
end

return M
