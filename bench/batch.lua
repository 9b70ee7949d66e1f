-- bench/batch.lua URL N C: rotate_keys of N organizations at concurrency C
-- against a server answering after 20 ms. Prints "batch_seconds=<float>".
local slashid = require "slashid"
local core = require "slashid.core"
local url, n, c = arg[1], tonumber(arg[2]), tonumber(arg[3])
local list = {}
for i = 1, n do list[i] = { org_id = "bench-org-" .. i, api_key = "bench-key" } end
local t0 = core.now()
local out = slashid.rotate_keys(list, { base_url = url, concurrency = c })
local elapsed = core.now() - t0
for i = 1, n do assert(out[i].info.outcome == "rotated", out[i].errors[1] and out[i].errors[1].message) end
print(("batch_seconds=%.4f"):format(elapsed))
