-- slashid.batch: rotate_keys, many organizations at once over one curl
-- multi handle. Each item is a job (job.lua) with rotate_key's outcome
-- and retry rules; the batch only schedules: at most `concurrency` items
-- in flight, at most `rate` item starts per second, back-off deadlines
-- honoured without sleeping past socket activity. Connections are reused
-- across items (the multi's connection pool; HTTP/2 streams are
-- multiplexed on one connection when the server offers it).
--
-- Items are pulled one at a time, only when one is about to start (a
-- free slot, the rate allowing it), never ahead: an iterator that returns
-- nil stops the batch from starting more, and nothing per item outlives
-- its delivery unless the caller keeps results. Whatever happens to the
-- caller's callbacks, items already in flight are finished, saved and
-- delivered before an error is passed on: their new keys exist nowhere
-- else.

local core = require "slashid.core"
local job_mod = require "slashid.job"
local outcome = require "slashid.outcome"
local journal_mod = require "slashid.journal"
local recover = require "slashid.recover"

local pcall, tostring, type, error, pairs, next = pcall, tostring, type, error, pairs, next
local collectgarbage = collectgarbage
-- The caller's functions are called through core.pcall: a coroutine
-- cannot yield across it, so a batch is never suspended (and abandoned)
-- with items in flight; a yield there is that function's error.
local call_caller = core.pcall

local M = {}

local NOT_STARTED = "not started: the batch was stopped before this item " ..
                    "(on_progress returned false, or on_result or the list raised); " ..
                    "nothing was sent"
local JOURNAL_FAILED = "not sent: the journal could not be written, so nothing more " ..
                       "starts: "
local JOURNAL_REPEAT = "not sent: this organization was sent before in this journal " ..
                       "(an organization is sent at most once per journal: its earlier " ..
                       "request may have killed the key given here)"
local KEY_NOT_JOURNALED = "the key was rotated but could not be written to the journal: "
local VERIFY_CUT = "verify: the new key could not be checked: the batch was " ..
                   "interrupted during the check"

-- The outcome table of an item that sent nothing: not_rotated, and why.
local function unsent(message)
  return {
    errors = outcome.listed({ { httpcode = 0, message = message } }),
    info = { outcome = "not_rotated", status = 0, attempts = 0, elapsed = 0,
             headers = {} },
  }
end

-- An error value as text for on_progress_error, even when its
-- __tostring raises.
local function describe_error(err)
  local ok, s = pcall(tostring, err)
  return ok and type(s) == "string" and s or "(an error value that cannot be shown)"
end


-- ---- The batch's state ----------------------------------------------------
-- One table for the whole run, made before anything starts; the functions
-- below take it as `b`. Every field a step sets exists from the start
-- (false when unset): setting an existing field never allocates, so a
-- memory error cannot strike between two fields that must change
-- together (job.new follows the same rule).
local function new_batch(pull, total, s)
  local keep = s.keep_results ~= false
  local outcomes = keep and {} or nil
  local counts = { rotated = 0, not_rotated = 0, unknown = 0, not_saved = 0 }
  return {
    -- the caller's, never changed
    pull = pull, total = total, concurrency = s.concurrency, rate = s.rate,
    interval = s.rate and 1 / s.rate or 0,
    on_progress = s.on_progress, on_result = s.on_result, on_rotated = s.on_rotated,
    user_agent = s.user_agent,
    journal = s.journal or nil,   -- slashid.journal, written ahead (see below)
    -- the command's work beside the transfers (its store commands): run
    -- once a turn; wait_limit() bounds the turn's sleep (nil: no bound)
    on_turn = s.on_turn, wait_limit = s.wait_limit,
    keep = keep, outcomes = outcomes, counts = counts,
    ret = keep and outcomes or counts,   -- what the batch returns
    multi = false,
    by_handle = {},        -- handle -> job in flight
    spare = {},            -- handles of finished items, reused
    waiting = {},          -- jobs in back-off: job -> true
    troubled = {},         -- jobs to look at after this turn's perform: job -> true
    next_index = 1, active = 0, done = 0,
    next_start = core.now(),
    progress_ok = true, progress_error = false,
    stopping = false,      -- no item starts any more
    failed = false, failure = false,   -- the first callback error: field, text
    undelivered = {},      -- keep_results == false: items on_result failed on
    held_i = false, held_cfg = false,  -- an item pulled but not yet started (a memory error)
    -- With a journal, the items a turn starts are queued, their `sent`
    -- records written with one write and one fsync, then started (rule 1:
    -- no request leaves before its record is durable).
    queued = {}, queue_first = 1, queue_last = 0, queue_durable = false,
    any_started = false,
    keyed = {},            -- jobs whose key record is in the journal's buffer
  }
end

local function fail(b, field, err)
  if not b.failed then b.failed, b.failure = field, describe_error(err) end
  b.stopping = true
end

-- A start spends the rate: the next may come an interval later.
local function pace(b, now)
  b.next_start = (b.next_start > now and b.next_start or now) + b.interval
end

-- ---- An item's hand-over --------------------------------------------------
-- One item is over: it is kept if asked, counted, handed to on_result,
-- then to on_progress. Neither callback can abort the batch here: an
-- error from on_result stops new starts and is reported once the items in
-- flight are delivered; one from on_progress is reported and on_progress
-- is not called again (it is a display: the batch goes on).
--
-- An item that went into a job is handed over once, in the stages of
-- HAND_OVER, walked in order by finish. Each stage a memory error leaves
-- either not begun or complete, or (a callback: the pcall itself, or what
-- follows a callback's error) to be repeated; the fields it sets exist
-- from `start`. job.handed counts the stages done, stored after each: the
-- job stays troubled (settle raised), and the next look goes on at the
-- stage that raised, never repeating one that is complete. A stage is
-- fn(b, i, item, job).

-- Journal records of a finished item (rule 3), buffered: they go out
-- with the next flush. Its key was made durable before the item was
-- concluded (the turn's first flush); one concluded some other way (a
-- memory error's rescue) is written and flushed here, before anything
-- else has it. A key the journal could not take counts as not saved.
local function journal_item(b, job, item)
  local journal = b.journal
  local org, info = job.cfg.org_id, item.info
  if item.result then
    if job.key_journaled ~= "durable" then
      if job.key_journaled ~= "pending" then
        journal:add("rotated", org, item.result.api_key)
        job.key_journaled = "pending"
      end
      local ok = journal:flush()
      if ok then job.key_journaled = "durable" end
    end
    if job.key_journaled ~= "durable" then
      info.saved = false
      item.errors[#item.errors + 1] = { httpcode = 0, message =
        KEY_NOT_JOURNALED .. tostring(journal.failed) }
    end
    if info.verified == false then journal:add("unverified", org) end
    if job.cfg.save_to and info.saved then journal:add("delivered", org, "save_to") end
  else
    journal:add(info.outcome, org)
  end
end

-- The item the caller sees, from a job's values.
local function item_of(v)
  return { result = v.result, errors = v.errors, pagination = v.pagination, info = v.info }
end

local function make_item(b, _, _, job)
  job.item = item_of(job.values)
  if b.journal then journal_item(b, job, job.item) end
end

local function keep_item(b, i, item)
  if b.keep then b.outcomes[i] = item end
end

-- (allocates nothing)
local function count_item(b, _, item)
  local counts, outcome_ = b.counts, item.info.outcome
  counts[outcome_] = (counts[outcome_] or 0) + 1
  if outcome_ == "rotated" and item.info.saved == false then
    counts.not_saved = counts.not_saved + 1
  end
  b.done = b.done + 1
end

local function hand_result(b, i, item)
  if b.on_result then
    local ok, err = call_caller(b.on_result, i, item)
    if not ok then
      -- not delivered: its key would be nowhere else without results
      if not b.keep and item.result then b.undelivered[i] = item end
      fail(b, "on_result_error", err)
    end
  end
end

local function hand_progress(b, i, item)
  if b.on_progress and b.progress_ok then
    local ok, ret = call_caller(b.on_progress, b.done, b.total, i, item.info.outcome, item)
    if not ok then
      b.progress_ok, b.progress_error = false, describe_error(ret)
    elseif ret == false then
      b.stopping = true
    end
  end
end

-- It leaves by_handle and stops counting as active last: the batch
-- neither ends nor forgets it before it is handed over. The handle is
-- reused only once the job has let go of it: reused earlier, by an item
-- started while this one was still being handed over, the job's entry in
-- by_handle would be the new item's.
local function let_go(b, _, _, job)
  local spare = b.spare
  spare[#spare + 1] = job.handle
  b.by_handle[job.handle] = nil
  b.active = b.active - 1
end

local HAND_OVER = { make_item, keep_item, count_item, hand_result, hand_progress, let_go }
local HANDED_OVER = #HAND_OVER
-- Stages by index: deliver walks from KEEP to HAND_RESULT or
-- HAND_PROGRESS; once job.handed reaches HAND_RESULT, on_result has the
-- item.
local KEEP, HAND_RESULT, HAND_PROGRESS = 2, 4, 5

-- A job's on_done: its item handed over, from the stage it stopped at.
local function finish(job)
  local b = job.batch
  for n = job.handed + 1, HANDED_OVER do
    HAND_OVER[n](b, job.index, job.item, job)
    job.handed = n
  end
end

-- An item that never went into a job (it could not start, or the batch
-- ended before it), or one an error took from its job: the stages from
-- keeping it, at once (nothing to resume); `progress`: on_progress too.
local function deliver(b, i, item, progress)
  for n = KEEP, progress and HAND_PROGRESS or HAND_RESULT do
    HAND_OVER[n](b, i, item)
  end
end

-- ---- Starting items -------------------------------------------------------

local function start(b, i, cfg, now)
  b.multi = b.multi or core.multi(true)   -- (pollable: waited through its epoll set)
  local spare, on_rotated = b.spare, b.on_rotated
  local handle = spare[#spare] or core.handle()
  local job = job_mod.new(cfg, handle, "rotate", b.user_agent,
                          on_rotated and function(result) on_rotated(cfg, result) end)
  -- the batch's own fields of the job
  job.batch, job.index, job.on_done, job.handed, job.item = b, i, finish, 0, false
  job.key_journaled, job.verify_cut = false, false
  -- Wait for the first connection's protocol (ALPN) only where HTTP/2 can
  -- be negotiated: over plain http:// (loopback) libcurl learns it from
  -- the first answer's status line, so every item would wait for it.
  job.pipewait = cfg.base_url:sub(1, 8):lower() == "https://"
  b.troubled[job] = true      -- looked at after this turn's perform, whatever happens
  b.by_handle[handle] = job
  if spare[#spare] == handle then spare[#spare] = nil end
  b.active = b.active + 1
  local ok, err = pcall(job.start, job, b.multi)   -- may finish at once
  if not ok and job.attempt == 0 and not job.running then
    -- a memory error before the request was attached (launch takes its
    -- attempt back then): nothing went out; the item is started again
    -- (the caller keeps it)
    b.by_handle[handle], b.troubled[job] = nil, nil
    b.active = b.active - 1
    error(err, 0)
  end
  b.any_started = true
  if b.rate and not b.journal then pace(b, now) end
end

-- Journal: the queued items' `sent` records made durable together, then
-- the items started. A journal that fails before the first request fails
-- the call (nothing was sent); later, nothing more starts and the queued
-- items end not_rotated.
local function start_queued(b, now)
  local journal, queued = b.journal, b.queued
  if b.queue_first > b.queue_last then return end
  if not b.queue_durable then
    local ok, why = journal:flush()
    if not ok then
      -- (nothing sent through this journal yet, in this batch or an
      -- earlier one of the same run: the call fails as a whole)
      if not b.any_started and not journal.sent_durable then
        error("slashid: journal " .. journal.path .. ": " .. tostring(why), 0)
      end
      b.stopping = true
      while b.queue_first <= b.queue_last do
        local q = queued[b.queue_first]
        queued[b.queue_first], b.queue_first = nil, b.queue_first + 1
        deliver(b, q.i, unsent(JOURNAL_FAILED .. tostring(why)), true)
      end
      return
    end
    b.queue_durable = true
    journal.sent_durable = true
  end
  while b.queue_first <= b.queue_last do
    local q = queued[b.queue_first]
    start(b, q.i, q.cfg, now)
    queued[b.queue_first], b.queue_first = nil, b.queue_first + 1
  end
  b.queue_durable = false
end

-- Journal: an item to start this turn. Its `sent` record goes to the
-- buffer; a repeat of an organization already sent in this journal is
-- that item's error.
local function enqueue(b, i, cfg, now)
  local journal, org = b.journal, cfg.org_id
  if journal:was_sent(org) then
    deliver(b, i, unsent(JOURNAL_REPEAT), true)
    return
  end
  if journal.run then journal:write_run(cfg.base_url) end
  journal:add("sent", org, "rt=" .. tostring(cfg.request_timeout) .. " kf=" ..
              journal_mod.fingerprint(cfg.api_key))
  b.queue_last = b.queue_last + 1
  b.queued[b.queue_last] = { i = i, cfg = cfg }
  if b.rate then pace(b, now) end
end

-- Start what may start; pull an item only for a slot that is free now.
local function start_items(b, now)
  while not b.stopping and b.active + (b.queue_last - b.queue_first + 1) < b.concurrency and
        (not b.rate or now >= b.next_start) do
    local i, ok, cfg, why = b.held_i, true, b.held_cfg, nil
    if not i then
      i = b.next_index
      ok, cfg, why = call_caller(b.pull, i)
    end
    if not ok then
      fail(b, "list_error", cfg)
    elseif cfg == nil then
      b.stopping = true
    else
      b.next_index = i + 1
      if cfg then
        b.held_i, b.held_cfg = i, cfg
        if b.journal then enqueue(b, i, cfg, now) else start(b, i, cfg, now) end
        b.held_i, b.held_cfg = false, false
      else
        deliver(b, i, unsent(why), true)
      end
    end
  end
end

-- ---- One turn of the loop -------------------------------------------------

-- The items whose back-off is over start their next attempt. While the
-- command catches signals, a first one also ends the items waiting to
-- retry: their next attempt would be a new request, and "stop starting"
-- means none goes out (they end not_rotated).
local function retry_due(b, now)
  local waiting = b.waiting
  local interrupted = core.signals_caught() and core.signal_count() > 0
  for job in pairs(waiting) do
    if interrupted and job.phase ~= "done" then job:cancel() end
    if job.phase == "done" then
      waiting[job] = nil
    elseif job.wait_until and now >= job.wait_until then
      job:due(now)            -- (raising, it stays waiting, due again)
      waiting[job] = nil
    end
  end
end

-- The transfers go on; the items whose transfer finished are looked at
-- this turn. Returns how many finished.
local function transfer(b)
  local finished = b.multi and b.multi:perform()
  local n = finished and #finished or 0
  for k = 1, n do
    local job = b.by_handle[finished[k]]
    if job then b.troubled[job] = true end
  end
  return n
end

-- Journal: the keys of the answers collected this turn, written with
-- one write and one fsync before any of them is concluded (saved, handed
-- to a callback). A failed write stops new starts; the keys still go to
-- their other places and count as not saved (journal_item).
local function journal_keys(b)
  local journal, keyed = b.journal, b.keyed
  local n = 0
  for job in pairs(b.troubled) do
    if job.running and job.handle:done() then job:collect() end
    local key = job.key_journaled == false and job:collected_key()
    if key then
      journal:add("rotated", job.cfg.org_id, key)
      job.key_journaled = "pending"
      n = n + 1
      keyed[n] = job
    end
  end
  if n == 0 then return end
  local ok = journal:flush(true)
  if not ok then b.stopping = true end
  for k = 1, n do
    if ok then keyed[k].key_journaled = "durable" end
    keyed[k] = nil
  end
end

-- An item that went into its job and what the last look at it left to do.
local function settle(job)
  if job.running then
    if job.handle:done() then job:finished() end
  elseif job.collected then
    job:attempted_now()
  elseif job.phase == "done" then
    finish(job)
  else
    job:conclude_again()
  end
end

-- Each item looked at. A memory error while an item is collected or
-- concluded does not end the batch (that would abandon every item in
-- flight, and keys the server issued): the item stays troubled, looked
-- at again next turn, after a collection. Returns whether one did.
local function settle_troubled(b)
  local troubled, again = b.troubled, false
  for job in pairs(troubled) do
    if pcall(settle, job) then
      if job.wait_until then b.waiting[job] = true end
      troubled[job] = nil
    else
      again = true
    end
  end
  if again then collectgarbage("collect") end
  return again
end

-- Sleeps until socket activity, the next allowed start, or the next
-- retry deadline, whichever is first.
local function idle(b)
  local now = core.now()
  local limit = 1
  if not b.stopping and b.active < b.concurrency and b.rate then
    limit = b.next_start - now
  end
  for job in pairs(b.waiting) do
    local d = job.wait_until and job.wait_until - now
    if d and d < limit then limit = d end
  end
  local most = b.wait_limit and b.wait_limit()
  if most and most < limit then limit = most end
  if limit > 0 then
    if b.multi then b.multi:wait(limit) else core.sleep(limit) end
  end
end

local function loop(b)
  while true do
    local now = core.now()
    start_items(b, now)
    if b.journal then start_queued(b, now) end
    if b.active == 0 and b.stopping then break end
    retry_due(b, now)
    local n = transfer(b)
    if b.journal then journal_keys(b) end
    local again = settle_troubled(b)
    if b.on_turn then
      local ok_turn, turn_err = call_caller(b.on_turn)
      if not ok_turn then fail(b, "on_result_error", turn_err) end
    end
    if not (b.active == 0 and b.stopping) and n == 0 and not again then idle(b) end
  end
end

-- A memory error does not end the batch (that would abandon every item
-- in flight, and keys the server issued): after a collection the loop
-- goes on, every item in flight looked at again; the state it left is
-- consistent at each point that can raise (see start and finish).
local function resume(b)
  for _, job in pairs(b.by_handle) do b.troubled[job] = true end
  loop(b)
end

-- ---- The end ---------------------------------------------------------------

-- The transfers closed now rather than by the collector.
local function close_all(b)
  if b.multi then b.multi:close() end
  for handle in pairs(b.by_handle) do handle:close() end
  local spare = b.spare
  for k = 1, #spare do spare[k]:close() end
end

-- Items of an array never started (stopped by on_progress) are each
-- reported, not_rotated (on_progress, which asked to stop, is not
-- called); then the notes on callback errors go on what the batch
-- returns. Every key is in `outcomes` (or went to on_result) by then: a
-- memory error here is met by collecting and going on where it stopped,
-- and at worst the notes are left out, never the outcomes.
local function unsent_items(b)
  local journal = b.journal
  local why = journal and journal.failed and (JOURNAL_FAILED .. journal.failed) or NOT_STARTED
  while b.total and b.next_index <= b.total do
    local i = b.next_index
    local item = unsent(why)
    keep_item(b, i, item)
    b.next_index = i + 1
    count_item(b, i, item)
    hand_result(b, i, item)
  end
end

local function notes(b)
  local ret = b.ret
  if b.progress_error then ret.on_progress_error = b.progress_error end
  if b.failed then ret[b.failed] = b.failure end
  if next(b.undelivered) ~= nil then ret.undelivered = b.undelivered end
end

local function wind_up(b)
  unsent_items(b)
  notes(b)
end

-- An error escaping the loop (an interrupt raised by multi:wait while the
-- command catches signals, a failure of the core, memory errors past
-- RESUMPTIONS) abandons what is in flight, its keys first:

-- One last look, as op:cancel takes: answers already complete in the
-- sockets (the process was stopped, or busy, when the signals came) are
-- kept and delivered, not thrown away as unknown. Nothing new goes out
-- during it, and no retry or verify starts after it. Every item in
-- flight: what the last look finished, what a memory error interrupted
-- (its answer kept, its outcome unnamed) is concluded now, without a
-- retry or a verify starting.
local function last_look(b)
  if b.multi then pcall(b.multi.perform, b.multi, true) end
  for _, job in pairs(b.by_handle) do
    job.cancelled = true
    if job.running and job.handle:done() or not job.running then
      recover.call(settle, job)
    end
  end
end

-- Keys already issued (items whose new key is being verified) still
-- reach the caller before the error passes: nothing else holds them
-- (not one whose key on_result already has: finish got that far). This
-- runs when memory may be short, so nothing here builds a list: the
-- items are found in by_handle each time, the lowest index first.
local function issued(job)
  local v = job.values
  return v and v.result and job.handed < HAND_RESULT
end

local function next_issued(b)
  local best
  for _, job in pairs(b.by_handle) do
    if issued(job) and (not best or job.index < best.index) then best = job end
  end
  return best
end

-- Their keys are durable before they are handed over (rule 2).
local function journal_issued(b)
  local journal = b.journal
  for _, job in pairs(b.by_handle) do
    if issued(job) and job.key_journaled == false then
      pcall(journal.add, journal, "rotated", job.cfg.org_id, job.values.result.api_key)
      job.key_journaled = "pending"
    end
  end
  if pcall(journal.flush, journal) and not journal.failed then
    for _, job in pairs(b.by_handle) do
      if job.key_journaled == "pending" then job.key_journaled = "durable" end
    end
  end
end

-- One issued item: a verify cut short says so (once), then the stages of
-- its hand-over from where it stands (finish), run again after a
-- collection if one raises.
local function cut_verify(job)
  if job.phase == "verify" and not job.verify_cut then
    local v = job.values
    v.errors[#v.errors + 1] = { httpcode = 0, message = VERIFY_CUT }
    v.info.verified = false   -- as rotation.verified says of a check that failed
    job.verify_cut = true
  end
end

local function hand_issued_job(job)
  cut_verify(job)
  finish(job)
end

local function hand_issued(b)
  for _ = 1, b.active do
    local job = next_issued(b)
    if not job then return end
    if not recover.call(hand_issued_job, job) then
      job.handed = HANDED_OVER   -- given up: the next one still gets its turn
    end
  end
end

local function abandon(b, err)
  last_look(b)
  if b.journal then journal_issued(b) end
  pcall(close_all, b)
  hand_issued(b)
  if b.journal then pcall(b.journal.flush, b.journal) end
  error(err, 0)
end

-- pull(i) -> cfg to start item i; false, message for an item that cannot
-- start (it becomes that item's not_rotated outcome); nil at the end. It
-- may raise (the caller's iterator did): the batch then stops pulling,
-- finishes what is in flight and reports the error as `list_error`.
-- total: the number of items, or nil when unknown (an iterator).
-- s: concurrency, rate, on_progress, on_result, keep_results, user_agent,
-- on_rotated(cfg, result) (runs the moment a key is known, before saving).
--
-- Returns the outcomes array (index order), or with keep_results == false
-- the summary { rotated, not_rotated, unknown, not_saved }; either carries
-- on_progress_error, on_result_error or list_error (the error's text) when
-- that callback raised. They are reported, never raised: a raise would
-- throw away the outcomes, and with them keys the server has issued.
function M.run(pull, total, s)
  local b = new_batch(pull, total, s)
  local ok, err = pcall(loop, b)
  if not ok and recover.is_memory_error(err) then ok, err = recover.resume(resume, b) end
  if not ok then abandon(b, err) end
  pcall(close_all, b)
  recover.call(wind_up, b)
  local journal = b.journal
  if journal then
    -- the last outcomes and deliveries (rule 3)
    journal:flush()
    if journal.failed then b.ret.journal_error = journal.failed end
  end
  return b.ret
end

return M
