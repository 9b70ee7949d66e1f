-- slashid.op: the operation object of start_rotate_key and
-- start_check_key, for hosts with their own loop. poll() never waits;
-- wait(s) waits at most s; retries are deadlines inside the op. Each op
-- has its own easy and multi handles, so ops from several clients can be
-- pending at once; a dropped op is cleaned up by the garbage collector
-- (the C handles have __gc).
--
-- Event loops wait on an op instead of polling it (the pollable protocol
-- of cqueues): pollfd() is a descriptor that polls readable when a socket
-- of the op is ready (the same until the op is collected, through retries
-- and after the end), timeout() the seconds until the op must be polled
-- anyway, events() "r". wait() sleeps on the same descriptor. The op's
-- multi has it from the start; once the op is over it goes with the
-- sockets, unless pollfd() handed it out.

--- The op: a rotation or a check that runs without blocking, for hosts
-- with their own loop. Made by @{slashid.start_rotate_key} and
-- @{slashid.start_check_key} (and the same methods of a client), never
-- directly. The rules are the blocking calls': the same outcomes, retries
-- only where the server cannot have acted, `save_to` written and `verify`
-- run before the op reports finished. A retry's back-off is a deadline
-- inside the op, never a sleep. Each op has its own libcurl handles, so
-- any number of ops, from any number of clients, can be pending at once;
-- an op that is dropped is cleaned up by the garbage collector. An op
-- belongs to the process that started it: after `fork()` the child's
-- `poll`, `wait` and `cancel` raise.
--
-- Event loops wait on an op instead of polling it, through the pollable
-- protocol of cqueues (`cqueues.poll(op)` works as is): @{Op:pollfd},
-- @{Op:events}, @{Op:timeout}; after each wake-up, call @{Op:poll}. More:
-- @{README#without-blocking-ops|README, Without blocking} and
-- docs/hosts.md (OpenResty, C hosts).
-- @module slashid.op
-- @usage
-- local op = slashid.start_rotate_key{ org_id = ORG, api_key = KEY, save_to = PATH }
-- while not op:poll() do          -- never waits
--   cqueues.poll(op)              -- or poll(2) on op:pollfd() for op:timeout() s
-- end
-- local result, errors, pagination, info = op:results()

local core = require "slashid.core"
local job_mod = require "slashid.job"

local setmetatable, type, error = setmetatable, type, error

local M = {}

-- Keys live in the job, and the job lives here, never in the op table.
local private = setmetatable({}, { __mode = "k" })

local Op = {}
local OpMT = { __index = Op, __name = "slashid.Op" }

local function state_of(op, method)
  local st = private[op]
  if not st then
    error("slashid: bad self to " .. method .. " (a slashid op expected)", 0)
  end
  return st
end

-- Releases the sockets as soon as the op is over. The poll descriptor
-- goes with them unless pollfd() handed it out: then it stays (a loop may
-- still hold its number) until the op is collected.
local function release(st)
  st.multi:close(st.handed_out)
  if st.job.handle then st.job.handle:close() end
end

-- kind: "rotate" (results: rotate_key's four values) or "check"
-- (check_key's three).
function M.start(cfg, user_agent, on_rotated, kind)
  local op = {}
  local address = tostring(op):match("0x%x+") or "?"
  local job = job_mod.new(cfg, core.handle(), kind or "rotate", user_agent, on_rotated)
  local st = { job = job, multi = core.multi(true), address = address,
               performing = false, cancel_requested = false, handed_out = false }
  job.on_done = function() release(st) end
  private[op] = st
  setmetatable(op, OpMT)
  job:start(st.multi)
  return op
end

-- Runs fn(st, arg) with `performing` set for its whole length: libcurl's
-- callbacks and the tracing of an answer call the op's own debug
-- function, which may not poll, wait or cancel the op re-entrantly (a
-- cancel it asks for is applied once the step is over). The flag is
-- cleared even if fn raises (a memory error), so the op stays usable:
-- it is set inside the protected call (the call itself may fail to grow
-- the stack: a memory error before pcall protects anything).
local function performing(st, fn, arg)
  st.performing = true
  return fn(st, arg)
end

local function guarded(st, fn, arg)
  local ok, err = pcall(performing, st, fn, arg)
  st.performing = false
  if not ok then error(err, 0) end
end

local function reentered()
  error("slashid: op re-entered (from the op's own debug function?)", 0)
end

-- One non-blocking step. A transfer the multi reported finished is
-- collected whether or not that report reached us (handle:done()).
local function step(st, last_look)
  local job = st.job
  job:conclude_again()             -- a poll that raised before naming it
  if job.phase == "done" then return end
  -- while the command catches signals, a first one ends a wait to retry:
  -- the next attempt would be a new request (see batch.lua)
  if job.wait_until and not job.running and core.signals_caught() and
     core.signal_count() > 0 then
    job:cancel()
    return
  end
  if not last_look then job:due(core.now()) end
  if job.running then
    st.multi:perform(last_look)
    if job.handle:done() then job:finished() end
  end
end

local function cancel(st) st.job:cancel() end

--- The op object.
-- @type Op

--- Advances the op without ever waiting: sends, reads what has arrived,
-- starts a retry whose back-off is over, writes `save_to`, runs `verify`.
-- Calling it from the op's own `debug` function raises.
-- @treturn boolean `true` once the op is finished (then @{Op:results}),
--   `false` while it is pending
-- @usage while not op:poll() do do_other_work() end
function Op:poll()
  local st = state_of(self, "poll")
  local job = st.job
  if job.phase == "done" then return true end
  if st.performing then reentered() end
  guarded(st, step, false)
  if st.cancel_requested then guarded(st, cancel) end
  return job.phase == "done"
end

-- Seconds until the op must be polled whatever its descriptor does:
-- libcurl's timers, the attempt's request_timeout (to the deadline
-- itself), the end of a retry back-off; 0 once finished; nil when only
-- the descriptor matters.
local function time_left(st)
  local job = st.job
  if job.phase == "done" or st.cancel_requested then return 0 end
  local left = job.running and st.multi:timeout() or nil
  if job.wait_until then
    local until_retry = job.wait_until - core.now()
    if until_retry < 0 then until_retry = 0 end
    if left == nil or until_retry < left then left = until_retry end
  end
  return left
end

--- A file descriptor that polls readable when the op has work to do (an
-- epoll set of libcurl's sockets, close-on-exec). The same descriptor
-- through retries and after the end, until the op is collected; once the
-- op is over it polls readable for good, so a loop asleep on it wakes at
-- once. The op owns it: do not close it (a host that does loses it; the
-- op goes on, waited by libcurl, and never touches whatever later gets
-- that number). Only Linux has it today; elsewhere this raises and
-- @{Op:wait} uses libcurl's own wait (docs/hosts.md).
-- @treturn integer the descriptor
-- @raise `slashid: no poll descriptor on this platform ...` (not Linux);
--   also once the host closed it, or when none can be made
-- @usage local poll = uv.new_poll(op:pollfd())   -- luv, plus a timer for op:timeout()
function Op:pollfd()
  local st = state_of(self, "pollfd")
  local fd, err = st.multi:pollfd()
  if not fd then error(err, 0) end
  st.handed_out = true
  return fd
end

--- The events to wait for on @{Op:pollfd} (cqueues' pollable protocol).
-- @treturn string always `"r"`
function Op:events()
  state_of(self, "events")
  return "r"
end

--- Seconds until the op must be polled whatever its descriptor does:
-- libcurl's timers, the attempt's `request_timeout`, the end of a retry
-- back-off (cqueues' pollable protocol).
-- @treturn ?number seconds; `nil` when only the descriptor matters; `0`
--   once the op is finished (or a cancel is pending)
function Op:timeout()
  return time_left(state_of(self, "timeout"))
end

-- Sleeps on the op's descriptor (and, while the command catches signals,
-- on the signal pipe: multi:wait), woken by its sockets, by time_left, or
-- by the caller's limit. Without a descriptor (none on this platform, or
-- none could be made) multi:wait is libcurl's own wait, as correct.

--- Blocks until the op is finished, at most `seconds`, sleeping on the
-- op's descriptor (no CPU used while nothing happens).
-- @tparam[opt] number seconds the longest wait, >= 0; `nil`: until
--   finished
-- @treturn boolean `true` once finished, `false` if the time ran out
-- @raise a bad `seconds`
-- @usage if not op:wait(0.5) then do_other_work() end
function Op:wait(seconds)
  local st = state_of(self, "wait")
  if seconds ~= nil and (type(seconds) ~= "number" or not (seconds >= 0)) then
    error("slashid: bad argument to wait (seconds >= 0 or nil expected)", 0)
  end
  local deadline = seconds and core.now() + seconds
  while not self:poll() do
    local limit = time_left(st)
    if deadline then
      local left = deadline - core.now()
      if left <= 0 then return false end
      if limit == nil or left < limit then limit = left end
    end
    st.multi:wait(limit)
  end
  return true
end

--- What the finished op gives: a rotation's four values, as from
-- @{slashid.rotate_key} (`result, errors, pagination, info`), or a check's
-- three, as from @{slashid.check_key} (`ok, errors, check_info`).
-- See @{slashid.Return_values|Return values}. Before @{Op:poll} (or
-- @{Op:wait}) returned `true` it raises.
-- @return the values
-- @raise `slashid: the operation has not finished ...`
-- @usage local result, errors, pagination, info = op:results()
function Op:results()
  local st = state_of(self, "results")
  local job = st.job
  if job.phase ~= "done" then
    error("slashid: the operation has not finished (poll or wait until it returns true)", 0)
  end
  return job:results()
end

--- Aborts the op; afterwards @{Op:poll} returns `true` and
-- @{Op:results} tells what happened, by the usual rules: `not_rotated` if
-- no request byte had been sent, else `unknown` (the server may have
-- acted), an `errors` entry saying it was cancelled. An answer already
-- complete in the socket is read first and kept: a key that arrived is
-- never thrown away. Called from the op's own `debug` function, it takes
-- effect when the current @{Op:poll} returns. Does nothing once finished.
-- @usage op:cancel(); local result, errors, _, info = op:results()
function Op:cancel()
  local st = state_of(self, "cancel")
  if st.performing then
    st.cancel_requested = true   -- applied by poll when perform returns
    return
  end
  -- One last non-blocking look: an answer already complete in the socket
  -- is kept, not thrown away as "unknown"; a request that has not gone
  -- out yet is stopped before its first byte.
  if st.job.running then guarded(st, step, true) end
  guarded(st, cancel)
end

OpMT.__tostring = function(self)
  local st = private[self]
  return "slashid.Op: " .. (st and st.address or "?") ..
         (st and st.job.phase == "done" and " (finished)" or " (pending)")
end
OpMT.__gc = function(self)
  local st = private[self]
  if st then
    release(st)
    st.multi:close()          -- the descriptor too (on 5.1: the multi's own __gc)
  end
end

M.Op = Op
return M
