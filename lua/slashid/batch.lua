-- slashid.batch: rotate_keys, many organizations at once over one curl
-- multi handle. Each item is a job (job.lua) with rotate_key's outcome
-- and retry rules; the batch only schedules: at most `concurrency` items
-- in flight, at most `rate` item starts per second, back-off deadlines
-- honoured without sleeping past socket activity. Connections are reused
-- across items (the multi's connection pool; HTTP/2 streams are
-- multiplexed on one connection when the server offers it).

local core = require "slashid.core"
local job_mod = require "slashid.job"

local pcall, tostring = pcall, tostring

local M = {}

-- cfgs: resolved per-item configurations (already checked). Returns the
-- outcomes array, in input order. on_progress(done, total, index,
-- outcome, item) runs once per item as it finishes; `item` is that item's
-- { result, errors, pagination, info } table.
function M.run(cfgs, concurrency, rate, on_progress, user_agent, on_rotated)
  local total = #cfgs
  local outcomes = {}
  if total == 0 then return outcomes end
  local multi = core.multi()
  local by_handle = {}     -- handle -> job in flight
  local spare = {}         -- handles of finished items, reused
  local waiting = {}       -- jobs in back-off: job -> true
  local next_index, active, done = 1, 0, 0
  local interval = rate and 1 / rate or 0
  local next_start = core.now()
  local progress_ok = true

  local function finish(job)
    local i = job.index
    local v = job.values
    outcomes[i] = { result = v[1], errors = v[2], pagination = v[3], info = v[4] }
    by_handle[job.handle] = nil
    spare[#spare + 1] = job.handle
    active, done = active - 1, done + 1
    -- A failing callback must not abort the batch: keys in flight would be
    -- lost. It is reported in the result instead, and not called again.
    -- The 5th argument is the item's outcome table (the one returned in
    -- the array), so a caller can hand its new key over at once.
    if on_progress and progress_ok then
      local ok, err = pcall(on_progress, done, total, i, v[4].outcome, outcomes[i])
      if not ok then
        progress_ok = false
        outcomes.on_progress_error = tostring(err)
      end
    end
  end

  local function start_next(now)
    local i = next_index
    next_index = i + 1
    active = active + 1
    local handle = table.remove(spare) or core.handle()
    local cfg = cfgs[i]
    local job = job_mod.new(cfg, handle, "rotate", user_agent,
                            on_rotated and function(result) on_rotated(i, result) end)
    job.index = i
    job.on_done = finish
    -- Wait for the first connection's protocol (ALPN) only where HTTP/2 can
    -- be negotiated: over plain http:// (loopback) libcurl learns it from
    -- the first answer's status line, so every item would wait for it.
    job.pipewait = cfg.base_url:sub(1, 8):lower() == "https://"
    by_handle[handle] = job
    if rate then next_start = (next_start > now and next_start or now) + interval end
    job:start(multi)
  end

  while done < total do
    local now = core.now()
    while next_index <= total and active < concurrency and
          (not rate or now >= next_start) do
      start_next(now)
    end
    for job in pairs(waiting) do
      if job.phase == "done" then
        waiting[job] = nil
      elseif job.wait_until and now >= job.wait_until then
        waiting[job] = nil
        job:due(now)
      end
    end
    local finished = multi:perform()
    for k = 1, #finished do
      local job = by_handle[finished[k]]
      if job then
        job:finished()
        if job.wait_until then waiting[job] = true end
      end
    end
    if done < total then
      -- Sleep until socket activity, the next allowed start, or the next
      -- retry deadline, whichever is first.
      now = core.now()
      local limit = 1
      if next_index <= total and active < concurrency and rate then
        limit = next_start - now
      end
      for job in pairs(waiting) do
        local d = job.wait_until and job.wait_until - now
        if d and d < limit then limit = d end
      end
      if limit > 0 and #finished == 0 then multi:wait(limit) end
    end
  end
  multi:close()
  for k = 1, #spare do spare[k]:close() end
  return outcomes
end

return M
