-- bench/peer_client.lua URL N [WARMUP]: the peer of `make bench`, the
-- client a competent Lua user writes by hand on Lua-cURLv3 (`require
-- "lcurl"`, built under build/peers/ by bench/peer.sh) and lua-cjson.
-- One kept easy handle; per call it sets the URL and the headers the
-- library sends (the current key, adopted from each rotation, as the
-- client does), PUTs an empty body, checks the HTTP status and decodes
-- the envelope into tables. N calls against a fast local server after
-- WARMUP (100) untimed ones; prints "peer_us_per_call=<float>".
-- bench/instr.sh runs it under callgrind for two values of N: whatever
-- runs once per process (start-up, warm-up, timing) cancels out there.
local curl = require "lcurl"
local cjson = require "cjson"

local concat = table.concat

local Peer = {}
Peer.__index = Peer

local function new_peer(base_url, org_id, api_key)
  local self = setmetatable({
    url = base_url .. "/organizations/api-keys",
    org_id = org_id,
    api_key = api_key,
    easy = curl.easy(),
    chunks = {},
    n = 0,
  }, Peer)
  local chunks = self.chunks
  self.easy:setopt_customrequest("PUT")
  self.easy:setopt_nosignal(true)
  self.easy:setopt_writefunction(function(s)
    local n = self.n + 1
    self.n = n
    chunks[n] = s
  end)
  return self
end

-- Returns result, errors (the envelope's), or nil and an error string.
function Peer:rotate_key()
  local easy = self.easy
  easy:setopt_url(self.url)
  easy:setopt_httpheader({
    "SlashID-OrgID: " .. self.org_id,
    "SlashID-API-Key: " .. self.api_key,
    "SlashID-Required-Consistency: local_region",
    "SlashID-Required-Consistency-Timeout: 30",
    "Accept: application/json",
    "Content-Length: 0",
  })
  local chunks = self.chunks
  for i = self.n, 1, -1 do chunks[i] = nil end
  self.n = 0
  local ok, err = pcall(easy.perform, easy)
  if not ok then return nil, tostring(err) end
  local status = easy:getinfo_response_code()
  local body = self.n == 1 and chunks[1] or concat(chunks, "", 1, self.n)
  local okj, envelope = pcall(cjson.decode, body)
  if not okj or type(envelope) ~= "table" then
    return nil, ("HTTP %d: not a JSON envelope"):format(status)
  end
  local errors = type(envelope.errors) == "table" and envelope.errors or {}
  if status ~= 200 then
    local e = errors[1]
    return nil, ("HTTP %d: %s"):format(status, type(e) == "table" and tostring(e.message) or "")
  end
  local result = envelope.result
  if type(result) ~= "table" or type(result.api_key) ~= "string" then
    return nil, "HTTP 200 without result.api_key"
  end
  self.api_key = result.api_key     -- the old key is dead now
  return result, errors
end

local url, n, warmup = arg[1], tonumber(arg[2]), tonumber(arg[3] or 100)
assert(url and n, "usage: lua bench/peer_client.lua URL N [WARMUP]")
local peer = new_peer(url, "bench-org", "bench-key")
local function call()
  local result, errors = peer:rotate_key()
  if not result then error(errors) end
  return result
end
local last
for _ = 1, warmup do     -- (checks that the server answers a new key each call)
  local key = call().api_key
  if key == last then error("the server answered the same key twice: not a fresh key per call") end
  last = key
end
-- lcurl has no clock; os.clock is CPU time, so wall time comes from
-- LuaSocket when there, else from the C core the other variants load.
local ok_socket, socket = pcall(require, "socket")
local now = ok_socket and socket.gettime or require("slashid.core").now
local t0 = now()
for _ = 1, n do call() end
print(("peer_us_per_call=%.2f"):format((now() - t0) / n * 1e6))
