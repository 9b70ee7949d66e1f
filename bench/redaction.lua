-- Redaction's cost on hostile answers (`make bench-redaction`): answers a
-- server could send to make hiding keys slow, through a raw loopback
-- server (spec/helpers.lua's H.raw_rotate), with the debug trace on so
-- every text is redacted. Prints seconds per case; figures, not
-- pass/fail. Run through spec/with-emulator.sh (helpers.lua needs it):
--
--   LUA_PATH="lua/?.lua;spec/?.lua;;" LUA_CPATH="build/lua5.4/?.so;;" \
--     sh spec/with-emulator.sh lua5.4 bench/redaction.lua
local H = require "helpers"
local socket = require "socket"

local KEY = "sk_bench_old_key_0123456789abcdefghijklmn"
local ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

local function random_text(n)
  local t = {}
  for i = 1, n do
    local k = math.random(1, #ALPHABET)
    t[i] = ALPHABET:sub(k, k)
  end
  return table.concat(t)
end

local function envelope_with(message, new)
  return '{"errors":[{"httpcode":200,"message":"' .. message .. '"}],"result":{"api_key":"' ..
         new .. '"}}'
end

local CASES = {
  { "1 MiB of escapes, a 2xx that is not JSON", "200 OK", function()
      return ("\\u0073\\\\%2"):rep(1048000 // 12) end },
  { "1 MiB of 11-byte pieces of the old key, each cut by '%'", "500 X", function()
      return ("\\" .. KEY:sub(1, 11) .. "%"):rep(1048000 // 13) end },
  { "a new key of 32 KiB of one letter, echoed once", "200 OK", function()
      local new = ("A"):rep(32768)
      return envelope_with("issued " .. new, new) end },
  { "a random new key of 32 KiB, a 256 KiB message holding one '%'", "200 OK", function()
      return envelope_with(random_text(262144) .. "%", random_text(32768)) end },
  { "a 40-byte new key echoed JSON-escaped in 64 KiB of text", "200 OK", function()
      local new = "sk_" .. random_text(37)
      local escaped = new:gsub(".", function(c) return ("\\u%04x"):format(c:byte()) end)
      return envelope_with(random_text(65536) .. escaped, new) end },
}

for _, case in ipairs(CASES) do
  local body = case[3]()
  local t0 = socket.gettime()
  local _, _, _, info = H.raw_rotate({ H.raw_answer(case[2], "", body) },
    { org_id = "org-bench", api_key = KEY, retries = 0, request_timeout = 300,
      max_response_bytes = 4 * 1048576, debug = function() end })
  print(("[redaction] %-62s %7.3f s  (%s)"):format(case[1], socket.gettime() - t0, info.outcome))
end
