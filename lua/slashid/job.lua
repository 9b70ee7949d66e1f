-- slashid.job: one rotation (or key check) as a state machine over a
-- slashid.core multi, for the non-blocking paths (ops and batches). The
-- rules are the blocking path's (policy.lua, rotation.lua); the only
-- difference is that a retry back-off is a deadline (`wait_until`), never
-- a sleep.
--
-- phases: "rotate" -> ["verify"] -> "done", or "check" -> "done".

local core = require "slashid.core"
local policy = require "slashid.policy"
local rotation = require "slashid.rotation"

local M = {}
local Job = {}
Job.__index = Job

-- kind: "rotate" or "check". `on_rotated(result)` runs the moment a new
-- key is known (after it is saved): key adoption, batch hand-over.
function M.new(cfg, handle, kind, user_agent, on_rotated)
  return setmetatable({
    cfg = cfg, handle = handle, kind = kind, user_agent = user_agent,
    on_rotated = on_rotated, phase = "new", running = false,
  }, Job)
end

function Job:launch()
  self.attempt = self.attempt + 1
  self.wait_until = nil
  self.running = true
  if not self.multi:add(self.handle, self.request) then
    self:finished()          -- could not even be set up: collect the reason
  end
end

function Job:begin(phase, cfg)
  self.phase, self.phase_cfg = phase, cfg
  self.attempt, self.last_retry_after = 0, nil
  self.phase_started = core.now()
  if phase == "rotate" then
    self.request = policy.request(cfg, "PUT", rotation.ROTATE_PATH, self.user_agent)
  else
    self.request = policy.request(cfg, "GET", rotation.CHECK_PATH, self.user_agent)
  end
  -- batches: wait for the first connection to learn whether the server
  -- multiplexes (HTTP/2) instead of opening one connection per item
  self.request.pipewait = self.pipewait
  self:launch()
end

-- Starts the first attempt on `multi`.
function Job:start(multi)
  self.multi = multi
  self.started = core.now()
  self:begin(self.kind, self.cfg)
end

function Job:done()
  self.phase = "done"
  self.running, self.wait_until = false, nil
  if self.on_done then self.on_done(self) end
end

-- The last attempt of a phase is known: conclude the phase.
function Job:conclude(result, errors, pagination, facts)
  local info = rotation.info(facts, self.attempt, self.phase_started,
                             self.last_retry_after)
  if self.phase == "rotate" then
    result, errors, pagination, info =
      rotation.settle(result, errors, pagination, info, facts)
    self.values = { result, errors, pagination, info }
    if result then
      -- the old key is dead: save and hand over before anything else
      rotation.save(self.cfg, result, errors, info)
      if self.on_rotated then self.on_rotated(result) end
      if self.cfg.verify then
        if not self.cancelled then
          return self:begin("verify", rotation.verify_cfg(self.cfg, result.api_key))
        end
        -- cancelled (or a batch interrupted) as the key arrived: it is
        -- kept, and said to be unverified rather than passed as verified
        info.verified = false
        rotation.add_error(errors, 0, "not verified: the operation was cancelled " ..
                           "before the new key could be checked")
      end
    end
  elseif self.phase == "verify" then
    local v = self.values
    local ok = policy.accepted(facts)
    rotation.verified(v[2], v[4], ok, errors, info)
  else
    local ok = policy.accepted(facts)
    if ok then errors = {} end
    self.values = { ok, errors, info }
  end
  self:done()
end

-- The multi reported this job's attempt finished (or it was cancelled
-- mid-transfer: collect then reports the abort).
function Job:finished()
  -- running is cleared only once the answer is collected: if collecting
  -- raises (a memory error), the handle still says done and the next poll
  -- collects again instead of leaving the job stuck
  local result, errors, pagination, facts = self.handle:collect()
  self.running = false
  local retry_after = policy.retry_after(facts.headers, core)
  if retry_after then self.last_retry_after = retry_after end
  local delay = not self.cancelled and
    policy.next_delay(self.phase_cfg, facts, self.attempt, retry_after, core.random)
  if delay then
    self.wait_until = core.now() + delay
    self.last = { result, errors, pagination, facts }
    return
  end
  self:conclude(result, errors, pagination, facts)
end

-- Starts the next attempt once its back-off deadline has passed.
function Job:due(now)
  if self.wait_until and now >= self.wait_until then self:launch() end
end

function Job:cancel()
  if self.phase == "done" or self.phase == "new" then return end
  self.cancelled = true
  if self.running then
    self:finished()
  elseif self.wait_until then
    -- between attempts: nothing in flight, the last attempt stands
    local last = self.last
    rotation.add_error(last[2], 0, "the operation was cancelled (op:cancel) " ..
                       "while waiting to retry")
    self:conclude(last[1], last[2], last[3], last[4])
  end
end

M.Job = Job
return M
