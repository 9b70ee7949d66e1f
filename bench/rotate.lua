-- bench/rotate.lua URL N MODE: per-call time of client:rotate_key ("client")
-- or module-level slashid.rotate_key ("module") against a fast local
-- server answering a static envelope. Prints "<mode>_us_per_call=<float>".
local slashid = require "slashid"
local core = require "slashid.core"
local url, n, mode = arg[1], tonumber(arg[2]), arg[3]
local opts = { org_id = "bench-org", api_key = "bench-key", base_url = url }
local call
if mode == "client" then
  local client = slashid.new(opts)
  -- a fixed key per call: the static server does not rotate, and adopting
  -- would change nothing measurable
  local per_call = { api_key = "bench-key" }
  call = function() return client:rotate_key(per_call) end
else
  call = function() return slashid.rotate_key(opts) end
end
for _ = 1, 100 do call() end
local t0 = core.now()
for _ = 1, n do
  local result, errors = call()
  if not result then error(errors[1].message) end
end
print(("%s_us_per_call=%.2f"):format(mode, (core.now() - t0) / n * 1e6))
