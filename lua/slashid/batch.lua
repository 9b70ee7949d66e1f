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

local pcall, tostring, type, error, pairs, next = pcall, tostring, type, error, pairs, next
local collectgarbage = collectgarbage
-- The caller's functions are called through core.pcall: a coroutine
-- cannot yield across it, so a batch is never suspended (and abandoned)
-- with items in flight; a yield there is that function's error.
local call_caller = core.pcall

-- Lua's own message for a memory error, and how many times a batch goes
-- on after one (each after a full collection) before it gives up.
local MEMORY_ERROR = "not enough memory"
local RESUMPTIONS = 1000

-- The stage of an item's hand-over (finish) from which on_result has it.
local RESULT_HANDED = 4

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
  local concurrency, rate = s.concurrency, s.rate
  local on_progress, on_result, on_rotated = s.on_progress, s.on_result, s.on_rotated
  local user_agent = s.user_agent
  local journal = s.journal or nil   -- slashid.journal, written ahead (see below)
  -- the command's work beside the transfers (its store commands): run
  -- once a turn; wait_limit() bounds the turn's sleep (nil: no bound)
  local on_turn, wait_limit = s.on_turn, s.wait_limit
  local keep = s.keep_results ~= false
  local outcomes = keep and {} or nil
  local counts = { rotated = 0, not_rotated = 0, unknown = 0, not_saved = 0 }
  local multi
  local by_handle = {}     -- handle -> job in flight
  local spare = {}         -- handles of finished items, reused
  local waiting = {}       -- jobs in back-off: job -> true
  local troubled = {}      -- jobs a memory error interrupted: job -> true
  local next_index, active, done = 1, 0, 0
  local interval = rate and 1 / rate or 0
  local next_start = core.now()
  local progress_ok, progress_error = true, nil
  local stopping = false   -- no item starts any more
  local failed, failure = nil, nil   -- the first callback error: field, text
  local undelivered = {}   -- keep_results == false: items on_result failed on
  local held_i, held_cfg   -- an item pulled but not yet started (a memory error)
  local settle
  -- With a journal, the items a turn starts are queued, their `sent`
  -- records written with one write and one fsync, then started (rule 1:
  -- no request leaves before its record is durable).
  local queued, queue_first, queue_last, queue_durable = {}, 1, 0, false
  local any_started = false
  local keyed = {}         -- jobs whose key record is in the journal's buffer

  local function fail(field, err)
    if not failed then failed, failure = field, describe_error(err) end
    stopping = true
  end

  -- One item is over: count it, keep it if asked, hand it to on_result,
  -- then on_progress. Neither callback can abort the batch here: an error
  -- from on_result stops new starts and is re-raised once the items in
  -- flight are delivered; one from on_progress is reported and on_progress
  -- is not called again (it is a display: the batch goes on).
  -- deliver's three parts: counting (allocates nothing), on_result, and
  -- on_progress. finish runs them as separate stages, so that a memory
  -- error in one (the pcall itself, or what follows a callback's error)
  -- repeats only that one.
  local function count(item)
    local outcome = item.info.outcome
    counts[outcome] = (counts[outcome] or 0) + 1
    if outcome == "rotated" and item.info.saved == false then
      counts.not_saved = counts.not_saved + 1
    end
    done = done + 1
  end

  local function hand_result(i, item)
    if on_result then
      local ok, err = call_caller(on_result, i, item)
      if not ok then
        -- not delivered: its key would be nowhere else without results
        if not keep and item.result then undelivered[i] = item end
        fail("on_result_error", err)
      end
    end
  end

  local function hand_progress(i, item)
    if on_progress and progress_ok then
      local ok, ret = call_caller(on_progress, done, total, i, item.info.outcome, item)
      if not ok then
        progress_ok, progress_error = false, describe_error(ret)
      elseif ret == false then
        stopping = true
      end
    end
  end

  local function deliver(i, item, progress)
    if keep then outcomes[i] = item end
    count(item)
    hand_result(i, item)
    if progress then hand_progress(i, item) end
  end

  -- Journal records of a finished item (rule 3), buffered: they go out
  -- with the next flush. Its key was made durable before the item was
  -- concluded (the turn's first flush); one concluded some other way (a
  -- memory error's rescue) is written and flushed here, before anything
  -- else has it. A key the journal could not take counts as not saved.
  local function journal_item(job, item)
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

  -- An item's job is done: handed over once, in stages, each of which a
  -- memory error leaves either not begun or complete, or (a callback) to
  -- be repeated: the fields it sets exist from `start`, and the job stays
  -- troubled (settle raised), so the next look goes on where it stopped.
  -- It leaves by_handle and stops counting as active last: the batch
  -- neither ends nor forgets it before it is handed over.
  local function finish(job)
    local stage = job.handed
    if stage == 0 then
      local v = job.values
      job.item = { result = v.result, errors = v.errors, pagination = v.pagination, info = v.info }
      if journal then journal_item(job, job.item) end
      job.handed, stage = 1, 1
    end
    local i, item = job.index, job.item
    if stage == 1 then
      if keep then outcomes[i] = item end
      job.handed, stage = 2, 2
    end
    if stage == 2 then
      count(item)
      job.handed, stage = 3, 3
    end
    if stage == 3 then
      hand_result(i, item)
      job.handed, stage = RESULT_HANDED, RESULT_HANDED
    end
    if stage == RESULT_HANDED then
      hand_progress(i, item)
      job.handed, stage = 5, 5
    end
    if stage == 5 then
      -- the handle is reused only once the job has let go of it: reused
      -- earlier, by an item started while this one was still being handed
      -- over, the job's entry in by_handle would be the new item's
      spare[#spare + 1] = job.handle
      job.handed = 6
      by_handle[job.handle] = nil
      active = active - 1
    end
  end

  -- An item that went into its job and what the last look at it left to do.
  settle = function(job)
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

  local function start(i, cfg, now)
    multi = multi or core.multi(true)   -- (pollable: waited through its epoll set)
    local handle = spare[#spare] or core.handle()
    local job = job_mod.new(cfg, handle, "rotate", user_agent,
                            on_rotated and function(result) on_rotated(cfg, result) end)
    job.index, job.on_done, job.handed, job.item = i, finish, 0, false
    job.key_journaled = false
    -- Wait for the first connection's protocol (ALPN) only where HTTP/2 can
    -- be negotiated: over plain http:// (loopback) libcurl learns it from
    -- the first answer's status line, so every item would wait for it.
    job.pipewait = cfg.base_url:sub(1, 8):lower() == "https://"
    troubled[job] = true      -- looked at after this turn's perform, whatever happens
    by_handle[handle] = job
    if spare[#spare] == handle then spare[#spare] = nil end
    active = active + 1
    local ok, err = pcall(job.start, job, multi)   -- may finish at once
    if not ok and job.attempt == 0 and not job.running then
      -- a memory error before the request was attached (launch takes its
      -- attempt back then): nothing went out; the item is started again
      -- (the caller keeps it)
      by_handle[handle], troubled[job] = nil, nil
      active = active - 1
      error(err, 0)
    end
    any_started = true
    if rate and not journal then
      next_start = (next_start > now and next_start or now) + interval
    end
  end

  -- Journal: the queued items' `sent` records made durable together, then
  -- the items started. A journal that fails before the first request fails
  -- the call (nothing was sent); later, nothing more starts and the queued
  -- items end not_rotated.
  local function start_queued(now)
    if queue_first > queue_last then return end
    if not queue_durable then
      local ok, why = journal:flush()
      if not ok then
        -- (nothing sent through this journal yet, in this batch or an
        -- earlier one of the same run: the call fails as a whole)
        if not any_started and not journal.sent_durable then
          error("slashid: journal " .. journal.path .. ": " .. tostring(why), 0)
        end
        stopping = true
        while queue_first <= queue_last do
          local q = queued[queue_first]
          queued[queue_first], queue_first = nil, queue_first + 1
          deliver(q.i, unsent(JOURNAL_FAILED .. tostring(why)), true)
        end
        return
      end
      queue_durable = true
      journal.sent_durable = true
    end
    while queue_first <= queue_last do
      local q = queued[queue_first]
      start(q.i, q.cfg, now)
      queued[queue_first], queue_first = nil, queue_first + 1
    end
    queue_durable = false
  end

  -- Journal: an item to start this turn. Its `sent` record goes to the
  -- buffer; a repeat of an organization already sent in this journal is
  -- that item's error.
  local function enqueue(i, cfg, now)
    local org = cfg.org_id
    if journal:was_sent(org) then
      deliver(i, unsent(JOURNAL_REPEAT), true)
      return
    end
    if journal.run then journal:write_run(cfg.base_url) end
    journal:add("sent", org, "rt=" .. tostring(cfg.request_timeout) .. " kf=" ..
                journal_mod.fingerprint(cfg.api_key))
    queue_last = queue_last + 1
    queued[queue_last] = { i = i, cfg = cfg }
    if rate then next_start = (next_start > now and next_start or now) + interval end
  end

  -- Journal: the keys of the answers collected this turn, written with
  -- one write and one fsync before any of them is concluded (saved, handed
  -- to a callback). A failed write stops new starts; the keys still go to
  -- their other places and count as not saved (journal_item).
  local function journal_keys()
    local n = 0
    for job in pairs(troubled) do
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
    if not ok then stopping = true end
    for k = 1, n do
      if ok then keyed[k].key_journaled = "durable" end
      keyed[k] = nil
    end
  end

  -- The batch's end, made ready before it starts (a closure made after
  -- the loop could fail to be made). Items of an array never started
  -- (stopped by on_progress) are each reported, not_rotated (on_progress,
  -- which asked to stop, is not called); then the notes on callback errors
  -- go on what the batch returns. Every key is in `outcomes` (or went to
  -- on_result) by then: a memory error here is met by collecting and going
  -- on where it stopped, and at worst the notes are left out, never the
  -- outcomes.
  local ret = keep and outcomes or counts
  local function unsent_items()
    local why = journal and journal.failed and (JOURNAL_FAILED .. journal.failed) or NOT_STARTED
    while total and next_index <= total do
      local i = next_index
      local item = unsent(why)
      if keep then outcomes[i] = item end
      next_index = i + 1
      count(item)
      hand_result(i, item)
    end
  end
  local function notes()
    if progress_error then ret.on_progress_error = progress_error end
    if failed then ret[failed] = failure end
    if next(undelivered) ~= nil then ret.undelivered = undelivered end
  end

  local function loop()
    while true do
      local now = core.now()
      -- Start what may start; pull an item only for a slot that is free now.
      while not stopping and active + (queue_last - queue_first + 1) < concurrency and
            (not rate or now >= next_start) do
        local i, ok, cfg, why = held_i, true, held_cfg, nil
        if not i then
          i = next_index
          ok, cfg, why = call_caller(pull, i)
        end
        if not ok then
          fail("list_error", cfg)
        elseif cfg == nil then
          stopping = true
        else
          next_index = i + 1
          if cfg and journal then
            held_i, held_cfg = i, cfg
            enqueue(i, cfg, now)
            held_i, held_cfg = nil, nil
          elseif cfg then
            held_i, held_cfg = i, cfg
            start(i, cfg, now)
            held_i, held_cfg = nil, nil
          else
            deliver(i, unsent(why), true)
          end
        end
      end
      if journal then start_queued(now) end
      if active == 0 and stopping then break end
      -- While the command catches signals, a first one also ends the items
      -- waiting to retry: their next attempt would be a new request, and
      -- "stop starting" means none goes out (they end not_rotated).
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
      local finished = multi and multi:perform()
      local n = finished and #finished or 0
      for k = 1, n do
        local job = by_handle[finished[k]]
        if job then troubled[job] = true end
      end
      -- A memory error while an item is collected or concluded does not
      -- end the batch (that would abandon every item in flight, and keys
      -- the server issued): the item is looked at again next turn.
      if journal then journal_keys() end
      local again = false
      for job in pairs(troubled) do
        if pcall(settle, job) then
          if job.wait_until then waiting[job] = true end
          troubled[job] = nil
        else
          again = true
        end
      end
      if again then collectgarbage("collect") end
      if on_turn then
        local ok_turn, turn_err = call_caller(on_turn)
        if not ok_turn then fail("on_result_error", turn_err) end
      end
      if not (active == 0 and stopping) and n == 0 and not again then
        -- Sleep until socket activity, the next allowed start, or the next
        -- retry deadline, whichever is first.
        now = core.now()
        local limit = 1
        if not stopping and active < concurrency and rate then
          limit = next_start - now
        end
        for job in pairs(waiting) do
          local d = job.wait_until and job.wait_until - now
          if d and d < limit then limit = d end
        end
        local most = wait_limit and wait_limit()
        if most and most < limit then limit = most end
        if limit > 0 then
          if multi then multi:wait(limit) else core.sleep(limit) end
        end
      end
    end
  end

  -- An error escaping the loop (an interrupt raised by multi:wait while the
  -- command catches signals, or a failure of the core) abandons what is in
  -- flight: the transfers are closed now rather than by the collector.
  local function close_all()
    if multi then multi:close() end
    for handle in pairs(by_handle) do handle:close() end
    for k = 1, #spare do spare[k]:close() end
  end
  -- A memory error does not end the batch (that would abandon every item
  -- in flight, and keys the server issued): after a collection the loop
  -- goes on, every item in flight looked at again; the state it left is
  -- consistent at each point that can raise (see start and finish).
  local function resume()
    for _, job in pairs(by_handle) do troubled[job] = true end
    loop()
  end
  local ok, err = pcall(loop)
  local resumed = 0
  while not ok and err == MEMORY_ERROR and resumed < RESUMPTIONS do
    resumed = resumed + 1
    collectgarbage("collect")
    ok, err = pcall(resume)
  end
  if not ok then
    -- One last look first, as op:cancel takes: answers already complete in
    -- the sockets (the process was stopped, or busy, when the signals
    -- came) are kept and delivered, not thrown away as unknown. Nothing new
    -- goes out during it, and no retry or verify starts after it.
    if multi then pcall(multi.perform, multi, true) end
    -- Every item in flight: what the last look finished, what a memory
    -- error interrupted (its answer kept, its outcome unnamed) is
    -- concluded now, without a retry or a verify starting.
    for _, job in pairs(by_handle) do
      job.cancelled = true
      if job.running and job.handle:done() or not job.running then
        for _ = 1, 8 do
          if pcall(settle, job) then break end
          collectgarbage("collect")
        end
      end
    end
    -- Keys already issued (items whose new key is being verified) still
    -- reach the caller before the error passes: nothing else holds them.
    local issued = {}
    for _, job in pairs(by_handle) do
      local v = job.values
      -- (not one whose key on_result already has: finish got that far)
      if v and v.result and job.handed < RESULT_HANDED then issued[#issued + 1] = job end
    end
    table.sort(issued, function(a, b) return a.index < b.index end)
    if journal then
      -- their keys are durable before they are handed over (rule 2)
      for k = 1, #issued do
        local job = issued[k]
        if job.key_journaled == false then
          pcall(journal.add, journal, "rotated", job.cfg.org_id, job.values.result.api_key)
          job.key_journaled = "pending"
        end
      end
      if pcall(journal.flush, journal) and not journal.failed then
        for k = 1, #issued do issued[k].key_journaled = "durable" end
      end
    end
    pcall(close_all)
    for k = 1, #issued do
      local job = issued[k]
      local v = job.values
      by_handle[job.handle] = nil
      if job.phase == "verify" then
        v.info.verified = false   -- as rotation.verified says of a check that failed
        v.errors[#v.errors + 1] = { httpcode = 0, message = VERIFY_CUT }
      end
      local item = { result = v.result, errors = v.errors, pagination = v.pagination, info = v.info }
      if journal then pcall(journal_item, job, item) end
      deliver(job.index, item, true)
    end
    if journal then pcall(journal.flush, journal) end
    error(err, 0)
  end
  pcall(close_all)
  for _ = 1, 16 do
    if pcall(unsent_items) and pcall(notes) then break end
    collectgarbage("collect")
  end
  if journal then
    -- the last outcomes and deliveries (rule 3)
    journal:flush()
    if journal.failed then ret.journal_error = journal.failed end
  end
  return ret
end

return M
