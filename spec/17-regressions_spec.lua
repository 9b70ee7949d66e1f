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
