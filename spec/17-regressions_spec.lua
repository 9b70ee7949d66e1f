-- Regressions: each case here was found by the fuzzers of `make fuzz`
-- (spec/fuzz/) and fixed in src/; the corpus file that found it is named
-- in the case and is replayed by every `make fuzz` run as well. These run
-- the same path end to end, against the emulator.
local H = require "helpers"
local slashid = require "slashid"

local serial = 0
-- An organization whose key is known in advance and lower case only, so
-- that it can also appear in a header name (which libcurl hands over as
-- sent and answer.c lowers).
local function org_with_known_key()
  serial = serial + 1
  return H.new_org_with_key(("sk_regression_%d_%d_%06d_key")
    :format(os.time(), serial, math.random(0, 999999)))
end

describe("regressions found by fuzzing", function()
  -- corpus/answer/401-old-key-echo: a server entry's other members were
  -- handed back as sent, unredacted.
  it("a server errors entry is reduced to httpcode and message (no other member can carry the key)", function()
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

  -- corpus/answer/pagination-strings: meta.pagination members were copied
  -- whatever their type, so a string could bring a key back.
  it("pagination keeps numbers only", function()
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

  -- corpus/answer/header-name-key: header names were not redacted, only
  -- their values.
  it("a header name quoting the old or the new key is redacted in info.headers", function()
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

  -- corpus/answer/refused: with no header ever received, answer.c did
  -- pointer arithmetic on NULL (undefined behaviour, reported by UBSan).
  it("a first call that receives nothing (connection refused) gives empty headers", function()
    local org, key = org_with_known_key()
    local result, errors, _, info = slashid.rotate_key(H.opts(org, key, {
      base_url = "http://127.0.0.1:" .. H.closed_port(), retries = 0 }))
    assert.is_nil(result)
    assert.are.equal("not_rotated", info.outcome)
    assert.are.same({}, info.headers)
    assert.are.equal(0, errors[1].httpcode)
  end)
end)
