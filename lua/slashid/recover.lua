-- slashid.recover: what the library does when Lua raises a memory error.
-- The server issues a new key on each rotation and the old one dies at
-- once, so an error raised once a key may exist must not lose it: the
-- step that raised is run again after a full collection (which frees
-- what the failed step left behind), and the state it works on is kept
-- consistent at each point that can raise, by its owner (job.lua,
-- batch.lua), so that running it again goes on where it stopped.
--
-- These functions allocate nothing of their own (fn's values come back
-- on the stack, at most four, never packed into a table): a helper that
-- needed memory to recover from a memory error would fail with it.

local pcall, collectgarbage = pcall, collectgarbage

local M = {}

-- How many times one step is run in all, each run after a full
-- collection. The allocator may fail several times in a row (a failed
-- growth costs two failures: Lua collects in an emergency and tries once
-- more), so one collection is not always enough; a step still failing
-- after this many is failing for another reason, and its caller gives up
-- the way it did before it tried (its error passes on, the key handed
-- back as it stands).
M.TRIES = 16

-- How many memory errors a batch goes on after, its whole run long (not
-- in a row: each one resumes the batch's loop, which then moves on). A
-- batch holds keys of many items in flight, so a memory error does not
-- end it; one whose allocator never comes back does, after this many.
M.RESUMPTIONS = 1000

-- How a memory error is recognized. pcall gives the error value, not
-- Lua's status code (LUA_ERRMEM), and the value of a memory error is the
-- message Lua made when the state was created, "not enough memory", as
-- it is: no position is added (5.1 to 5.4 and LuaJIT alike). The C core
-- raises the same text for its own allocations (luaL_error from a C
-- function adds no position either). Anything else (a caller's
-- callback, an interrupt, a failure of the core) is not a memory error.
local MEMORY_ERROR = "not enough memory"

function M.is_memory_error(err)
  return err == MEMORY_ERROR
end

-- fn(x) run again, each run after a full collection, until it returns:
-- at most `runs` times; with `memory_only`, only while it fails with a
-- memory error. Returns true and fn's first four values, or false and
-- the last error.
local function again(fn, x, runs, memory_only)
  local ok, a, b, c, d
  for _ = 1, runs do
    collectgarbage("collect")
    ok, a, b, c, d = pcall(fn, x)
    if ok or memory_only and a ~= MEMORY_ERROR then break end
  end
  return ok, a, b, c, d
end

-- A step that has already failed once (its caller ran it, and decided it
-- is worth running again): fn(x) after a collection, TRIES times at most.
function M.again(fn, x)
  return again(fn, x, M.TRIES, false)
end

-- A step run protected the first time too: fn(x); should it fail, again
-- after a collection, TRIES runs in all.
function M.call(fn, x)
  local ok, a, b, c, d = pcall(fn, x)
  if ok then return ok, a, b, c, d end
  return again(fn, x, M.TRIES - 1, false)
end

-- A batch's loop, stopped by a memory error: fn(x) after a collection,
-- again as long as it fails with a memory error, RESUMPTIONS times at
-- most. Returns whether it ran to its end, and the last error.
function M.resume(fn, x)
  return again(fn, x, M.RESUMPTIONS, true)
end

return M
