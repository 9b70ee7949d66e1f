-- bench/rotate.lua URL N MODE [WARMUP]: per-call time of client:rotate_key
-- ("client") or module-level slashid.rotate_key ("module") against a fast
-- local server answering a new key on every call, as SlashID does
-- (bench/nginx.conf.in): N calls after WARMUP (100) untimed ones, which
-- also check that each call's key is new (a server answering the same
-- key would spare the client its adoption). Prints "<mode>_us_per_call=<float>". bench/instr.sh runs
-- it under callgrind for two values of N: whatever runs once per process
-- (start-up, warm-up, timing) cancels out there.
local slashid = require "slashid"
local core = require "slashid.core"
local url, n, mode, warmup = arg[1], tonumber(arg[2]), arg[3], tonumber(arg[4] or 100)
assert(url and n and (mode == "client" or mode == "module"),
       "usage: lua bench/rotate.lua URL N client|module [WARMUP]")
local opts = { org_id = "bench-org", api_key = "bench-key", base_url = url }
local call
if mode == "client" then
  local client = slashid.new(opts)
  -- The common case: no per-call options. The client adopts the key each
  -- rotation returns (a new one every call).
  call = function() return client:rotate_key() end
else
  call = function() return slashid.rotate_key(opts) end
end
local last
for _ = 1, warmup do
  local result, errors = call()
  if not result then error(errors[1].message) end
  if result.api_key == last then error("the server answered the same key twice: not a fresh key per call") end
  last = result.api_key
end
local t0 = core.now()
for _ = 1, n do
  local result, errors = call()
  if not result then error(errors[1].message) end
end
print(("%s_us_per_call=%.2f"):format(mode, (core.now() - t0) / n * 1e6))
