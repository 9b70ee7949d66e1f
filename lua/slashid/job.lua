-- slashid.job: the engine. One rotation (or key check) as a state
-- machine, with two drivers:
--
--   blocking      M.run(job): each attempt runs to its end on the job's
--                 handle (handle:perform), a retry back-off is a sleep;
--                 rotate_key and check_key, module-level and clients
--   non-blocking  job:start(multi): attempts run on a slashid.core multi,
--                 a back-off is a deadline (`wait_until`) the owner
--                 honours; ops (op.lua) and batches (batch.lua)
--
-- Either way the same code decides what an attempt meant and what comes
-- next (policy.lua), and concludes (outcome.lua): there is one path for a
-- rotation.
--
-- phases: "rotate" -> ["verify"] -> "done", or "check" -> "done".

local core = require "slashid.core"
local policy = require "slashid.policy"
local outcome = require "slashid.outcome"
local request = require "slashid.request"
local recover = require "slashid.recover"

local setmetatable, pcall, error, type = setmetatable, pcall, error, type
local now, sleep, random = core.now, core.sleep, core.random

local M = {}
local Job = {}
Job.__index = Job


-- kind: "rotate" or "check". `on_rotated(result)` runs the moment a new
-- key is known (before it is saved: a client adopts it even if saving fails).
-- `req`: the request table of the first phase when the caller keeps one
-- for this cfg (a client's next call: the handle then skips its setup).
function M.new(cfg, handle, kind, user_agent, on_rotated, req)
  return setmetatable({
    cfg = cfg, handle = handle, kind = kind, user_agent = user_agent,
    on_rotated = on_rotated, phase = "new", running = false, request = req or false,
    -- every field a step sets exists from the start (false when unset):
    -- setting an existing field never allocates, so a memory error cannot
    -- strike between two fields that must change together
    multi = false, started = false, phase_cfg = false, attempt = 0,
    phase_started = false, wait_until = false, last = false, values = false,
    told = false,          -- on_rotated has run
    -- the key this call presents, kept apart from cfg: a client adopting
    -- the new key changes its kept cfg (the one this job runs on) in place
    presented = cfg.api_key,
    cancelled = false,     -- op:cancel, or a batch's last look (batch.lua)
    -- values: what the job gives once done, by name (Job:results):
    -- rotate { result, errors, pagination, info }, check { ok, errors, info };
    -- last: the attempt a back-off waits on { result, errors, pagination, facts }
    -- the last attempt's tables, stored without allocating (the fields
    -- exist): M.run's rescue reads them after a memory error
    answer = false, answer_errors = false, answer_pagination = false,
    answer_facts = false,
    unconcluded = false,   -- the last attempt's outcome is still to be named
    collected = false,     -- collected (collect) and not yet looked at (attempted)
  }, Job)
end

-- The request table of `cfg` for a phase (built once per phase: every
-- attempt of it sends the same table).
function M.request(cfg, kind, user_agent)
  if kind == "rotate" then
    return request.build(cfg, "PUT", outcome.ROTATE_PATH, user_agent)
  end
  return request.build(cfg, "GET", outcome.CHECK_PATH, user_agent)
end

-- The attempt's values, whichever driver ran it.
-- The attempt's answer is on the job (answer, answer_errors, ...) and
-- said unconcluded: its callers store it, in their own frame, before
-- anything can raise (even the call to this function may fail to grow
-- the stack), so a memory error from here on leaves an attempt that
-- conclude_again names as it stands (it may hold a key), never one that
-- looks as if it had not gone out.
function Job:attempted()
  local result, errors, pagination, facts =
    self.answer, self.answer_errors, self.answer_pagination, self.answer_facts
  local retry_after = policy.retry_after(facts.headers, core)
  if retry_after then self.last_retry_after = retry_after end
  local delay = not self.cancelled and
    policy.next_delay(self.phase_cfg, facts, self.attempt, retry_after, random)
  if delay then
    self.last = { result = result, errors = errors, pagination = pagination, facts = facts }
    self.wait_until = now() + delay
    self.unconcluded = false
    return
  end
  self:conclude(result, errors, pagination, facts)
end

-- Blocking: one attempt to its end. An answer whose tables could not be
-- built (out of memory) is kept by the handle, which then says done: it
-- is built again from the same bytes (after a collection) rather than
-- lost, as it may hold a key the server has issued. Only this attempt's
-- answer is collected: a handle that already said done before (a call
-- from a debug function while the handle builds another call's answer)
-- is not this attempt's. Anything else raised passes through.
local function perform(handle, req)
  local was_done = handle:done()
  local ok, r, e, p, f = pcall(handle.perform, handle, req)
  if ok then return r, e, p, f end
  if was_done or not handle:done() then error(r, 0) end
  local again, r2, e2, p2, f2 = recover.again(handle.collect, handle)
  if again then return r2, e2, p2, f2 end
  pcall(handle.discard, handle)      -- given up: the kept answer is wiped
  error(r, 0)
end

function Job:launch()
  if not self.multi then               -- blocking: to the attempt's end
    self.attempt = self.attempt + 1
    self.wait_until = false
    self.answer, self.answer_errors, self.answer_pagination, self.answer_facts =
      perform(self.handle, self.request)
    self.unconcluded = true
    return self:attempted()
  end
  -- multi:add raises (out of memory) only before the request is attached,
  -- and the call itself may fail before it runs: the job changes only once
  -- it returns. Until then it is as it was (due, or just begun), and
  -- conclude_again makes such a job due again.
  local added = self.multi:add(self.handle, self.request)
  self.attempt = self.attempt + 1
  self.wait_until = false
  self.running = true
  if not added then
    self:finished()          -- could not even be set up: collect the reason
  end
end

function Job:begin(phase, cfg, req)
  self.phase, self.phase_cfg = phase, cfg
  self.attempt, self.last_retry_after = 0, nil
  self.phase_started = now()
  self.request = req or M.request(cfg, phase == "rotate" and "rotate" or "check",
                                  self.user_agent)
  -- batches: wait for the first connection to learn whether the server
  -- multiplexes (HTTP/2) instead of opening one connection per item
  if self.pipewait then self.request.pipewait = true end
  self:launch()
end

-- Starts the first attempt: on `multi` (non-blocking), or with no multi
-- (blocking, from M.run).
function Job:start(multi)
  self.multi = multi or false
  self.started = now()
  local req = self.request
  self.request = false
  self:begin(self.kind, self.cfg, req or nil)
end

function Job:done()
  self.phase = "done"
  self.running, self.wait_until = false, false
  if self.on_done then self.on_done(self) end
end

-- The last attempt of a phase is known: conclude the phase.
function Job:conclude(result, errors, pagination, facts)
  outcome.listed(errors)
  local info = outcome.info(facts, self.attempt, self.phase_started,
                            self.last_retry_after)
  if self.phase == "rotate" then
    return self:conclude_rotation(result, errors, pagination, info, facts)
  elseif self.phase == "verify" then
    local v = self.values
    local ok = policy.accepted(facts)
    outcome.verified(v.errors, v.info, ok, errors, info)
    self.unconcluded = false
  else
    local ok = policy.accepted(facts)
    if ok then errors = outcome.listed({}) end
    self.values = { ok = ok, errors = errors, info = info }
    self.unconcluded = false
  end
  self:done()
end

local NOT_PRINTABLE = "not verified: the new key holds a control character or another " ..
                      "byte outside printable ASCII and cannot be sent as a header"
local NOT_CHECKED = "not verified: the operation was cancelled before the new key " ..
                    "could be checked"

-- The rotation's outcome is named and kept (values) before anything else
-- can raise; a new key is handed over, saved, then verified.
function Job:conclude_rotation(result, errors, pagination, info, facts)
  result, errors, pagination, info =
    outcome.settle(result, errors, pagination, info, facts)
  self.values = { result = result, errors = errors, pagination = pagination, info = info }
  self.unconcluded = false
  outcome.describe(info, errors)
  if not result then return self:done() end
  -- the old key is dead: hand over (a client adopts it) and save before
  -- anything else
  if self.on_rotated then
    self.on_rotated(result)
    self.told = true
  end
  outcome.save(self.cfg, result, errors, info)
  if not self.cfg.verify then return self:done() end
  if not outcome.printable(result.api_key) then
    -- sent as a header it would split into two (CR LF): never sent
    info.verified = false
    outcome.add_error(errors, 0, NOT_PRINTABLE)
  elseif not self.cancelled then
    return self:begin("verify", outcome.verify_cfg(self.cfg, result.api_key, self.presented))
  else
    -- cancelled (or a batch interrupted) as the key arrived: it is kept,
    -- and said to be unverified rather than passed as verified
    info.verified = false
    outcome.add_error(errors, 0, NOT_CHECKED)
  end
  self:done()
end

-- Non-blocking: the multi reported this job's attempt finished (or it was
-- cancelled mid-transfer: collect then reports the abort).
function Job:finished()
  self:collect()
  self:attempted_now()
end

-- The first half of finished: the answer is taken from the handle and
-- kept on the job. A batch with a journal collects every answer of a
-- turn first, makes their keys durable with one fsync, then lets each
-- job go on (attempted_now).
function Job:collect()
  -- running is cleared only once the answer is collected: if collecting
  -- raises (a memory error), the handle still says done and the next poll
  -- collects again instead of leaving the job stuck
  self.answer, self.answer_errors, self.answer_pagination, self.answer_facts =
    self.handle:collect()
  self.unconcluded = true
  self.collected = true
  self.running = false
end

-- The second half: what the collected answer means, and what comes next.
function Job:attempted_now()
  self.collected = false
  self:attempted()
end

-- The key of a collected rotation answer, once the policy calls it
-- rotated (nil otherwise): what a journal must hold before anything else.
function Job:collected_key()
  if not self.collected or self.phase ~= "rotate" then return nil end
  local result = self.answer
  if policy.outcome(result, self.answer_facts) ~= "rotated" then return nil end
  local key = type(result) == "table" and result.api_key
  return type(key) == "string" and key ~= "" and key or nil
end

-- Non-blocking: starts the next attempt once its back-off deadline has
-- passed.
function Job:due(t)
  if self.wait_until and t >= self.wait_until then self:launch() end
end

function Job:cancel()
  if self.phase == "done" or self.phase == "new" then return end
  self.cancelled = true
  if self.running then
    self:finished()
  elseif self.wait_until then
    -- between attempts: nothing in flight, the last attempt stands
    local last = self.last
    outcome.add_error(last.errors, 0, "the operation was cancelled (op:cancel) " ..
                      "while waiting to retry")
    self:conclude(last.result, last.errors, last.pagination, last.facts)
  end
end

-- What the job gives once done: a rotation's four values (result,
-- errors, pagination, info), a check's three (ok, errors, info).
function Job:results()
  local v = self.values
  if self.kind == "check" then return v.ok, v.errors, v.info end
  return v.result, v.errors, v.pagination, v.info
end

-- The blocking driver: runs the job to its end on its handle, sleeping
-- through back-offs.
local function to_the_end(job)
  while job.phase ~= "done" do
    local left = job.wait_until - now()
    if left > 0 then sleep(left) end
    job:launch()
  end
end

local function drive(job)
  job:start(nil)
  to_the_end(job)
end

-- ---- After an error raised out of the engine --------------------------
-- Each point of the main path above that can raise (a memory error)
-- leaves the job in a state conclude_again can go on from; the blocking
-- driver goes on through rescue, an op through its next poll, a batch
-- through its next look.

local AFTER = "the key was rotated, but an error came after (out of memory?): " ..
              "the new key is in result.api_key; info.saved and info.verified say " ..
              "what was done"

-- After an error raised out of the engine (a memory error: the blocking
-- driver's rescue, the next poll of an op, a batch's next look): an
-- attempt whose outcome was not named is named from the tables kept on
-- the job; a rotation whose key is known but whose adopting, saving or
-- verifying raised ends here with the key (adopted and saved once more if
-- that was not done), saying so (the error itself is not quoted: it is
-- not ours to show); an attempt that never went out (its launch raised)
-- is due again. A key the server issued is never left behind.
function Job:conclude_again()
  if self.running or self.wait_until or self.phase == "done" or self.phase == "new" then
    return
  end
  if self.unconcluded then
    return self:conclude(self.answer, self.answer_errors, self.answer_pagination,
                         self.answer_facts)
  end
  local v = self.values
  if not v then
    self.wait_until = now()
    return
  end
  if self.kind == "rotate" and v.result then
    local info = v.info
    if self.on_rotated and not self.told and pcall(self.on_rotated, v.result) then
      self.told = true
    end
    if self.cfg.save_to and info.saved == nil then
      pcall(outcome.save, self.cfg, v.result, v.errors, info)
    end
    if self.cfg.save_to and info.saved == nil then info.saved = false end
    if self.cfg.verify and info.verified == nil then info.verified = false end
    pcall(outcome.add_error, v.errors, 0, AFTER)
    self:done()
  end
end

-- Whether an error raised out of the engine may have left a key behind:
-- a rotated answer whose outcome is not named yet, or a known key.
local function holds_key(job)
  if job.kind ~= "rotate" then return false end
  if job.unconcluded and job.phase == "rotate" then
    return policy.outcome(job.answer, job.answer_facts) == "rotated"
  end
  local v = job.values
  return v and v.result and true or false
end

local function go_on(job)
  job:conclude_again()
  to_the_end(job)
end

-- The last resort when naming the outcome keeps failing: the key as the
-- answer gave it, with what could not be done.
local function bare_values(job)
  local f = job.answer_facts
  job.values = { result = job.answer, errors = job.answer_errors,
                 pagination = job.answer_pagination,
                 info = { outcome = "rotated", status = f.status, attempts = job.attempt,
                          elapsed = now() - job.started, headers = f.headers } }
  job.unconcluded = false
  job:conclude_again()
end

local function end_here(job)
  if job.unconcluded then return bare_values(job) end
  job:conclude_again()
end

-- Once the server has issued a key, nothing may lose it: the rest is
-- done again once memory is back (to the job's end), or, should that
-- keep failing, the phase ends where it is and the key is handed back as
-- it is. Returns whether the job is done.
local function rescue(job)
  if recover.again(go_on, job) then return true end
  job.running, job.wait_until = false, false   -- the phase ends here
  return (recover.again(end_here, job))
end

-- Blocking: the job driven to its end; returns its values (Job:results).
function M.run(job)
  local ok, err = pcall(drive, job)
  if not ok and not (holds_key(job) and rescue(job)) then error(err, 0) end
  return job:results()
end

M.Job = Job
return M
