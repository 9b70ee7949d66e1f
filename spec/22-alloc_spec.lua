-- A memory error inside the module's libcurl callbacks. The `debug` trace
-- runs Lua code (building a line, redacting it, calling the debug
-- function) inside libcurl's debug callback; a memory error there must
-- not unwind through libcurl (which would leave the handle busy forever
-- and raise to the caller although the server may have rotated, losing
-- the new key): it only switches the trace off.
--
-- Proved with a Lua 5.4 host whose allocator fails on demand
-- (spec/alloc/host.c, built here into build/alloc-host) running scripts
-- against the real module (build/lua5.4/slashid/core.so, whatever LUA
-- the suite runs under) and the emulator. See spec/alloc/trace.lua for
-- what is swept and asserted. Run by `make check-sweeps`, not `make test`.
local H = require "helpers"
local q = H.q

local HOST = "build/alloc-host"
local HOST_SRC = "spec/alloc/host.c"
local LUA_HEADER = "/usr/include/lua5.4/lua.h"
local MODULE = "build/lua5.4/slashid/core.so"
local CFLAGS = "-std=gnu99 -O1 -g -Wall -Wextra -Wshadow -Wpointer-arith -Wcast-align " ..
               "-Wstrict-prototypes -Wmissing-prototypes -Wformat=2 -Werror -I/usr/include/lua5.4"
local LIBS = "-llua5.4 -ldl -lm"

local exists = H.exists

local left_out = H.left_out

-- Runs a shell command; returns its exit status and output (both streams).
local function sh(cmd)
  local out = H.tmpname("alloc-out")
  local p = io.popen("( " .. cmd .. " ) >" .. q(out) .. " 2>&1; echo $?")
  local rc = tonumber(p:read("*a"):match("%d+"))
  p:close()
  local text = exists(out) and H.read_file(out) or ""
  os.remove(out)
  return rc, text
end

-- Why the host cannot run here, or nil. Builds it when missing or older
-- than its source (nothing preloaded: the suite may run under ASan).
local why_not
local function ensure_host()
  if why_not ~= nil then return why_not or nil end
  why_not = false
  local left = left_out("lua5.4")
  if _VERSION ~= "Lua 5.4" then
    -- what runs is the same whatever runs busted: once is enough
    why_not = "the alloc host is a Lua 5.4 host loading the 5.4 module and the same " ..
              "Lua files: its sweeps run in the lua5.4 pass, not again under " .. _VERSION
  elseif os.getenv("ASAN_OPTIONS") then
    -- make check-asan: the host runs without the ASan runtime, on the
    -- plain build (MODULE), so it would repeat the lua5.4 pass exactly
    why_not = "under check-asan the alloc host would run the plain build again " ..
              "(it cannot load the sanitized one): its sweeps run in the lua5.4 pass"
  elseif left then
    why_not = "alloc spec skipped: " .. left
  elseif not exists(LUA_HEADER) then
    why_not = LUA_HEADER .. " is missing (liblua5.4-dev: `make test-prereqs` installs it)"
  elseif not exists(MODULE) then
    why_not = MODULE .. " is missing: build it with `make LUA=lua5.4 all`"
  else
    local _, newer = sh("find src -name '*.[ch]' -newer " .. q(MODULE))
    if newer:match("%S") then
      why_not = MODULE .. " is older than src/: rebuild it with `make LUA=lua5.4 all`"
    end
  end
  if why_not then return why_not end
  local rc, text = sh("[ " .. HOST .. " -nt " .. HOST_SRC .. " ] || " ..
                      "{ mkdir -p build && env -u LD_PRELOAD cc " .. CFLAGS ..
                      " -o " .. HOST .. ".tmp " .. HOST_SRC .. " " .. LIBS ..
                      " && mv -f " .. HOST .. ".tmp " .. HOST .. "; }")
  assert(rc == 0, "building " .. HOST .. " failed:\n" .. text)
  return nil
end

-- Runs one script of spec/alloc under the host: exit status and output.
local function run(script, ...)
  local path = "lua/?.lua;spec/?.lua;;"
  local cpath = "build/lua5.4/?.so;;"
  local parts = {
    "env -u LD_PRELOAD -u SLASHID_ORG_ID -u SLASHID_API_KEY -u SLASHID_BASE_URL",
    "LUA_PATH=" .. q(path), "LUA_PATH_5_4=" .. q(path),
    "LUA_CPATH=" .. q(cpath), "LUA_CPATH_5_4=" .. q(cpath),
    "timeout -k 5 300", HOST, "spec/alloc/" .. script,
  }
  for _, a in ipairs({ ... }) do parts[#parts + 1] = q(a) end
  return sh(table.concat(parts, " "))
end

-- The emulator's keys are "sk_" and 40 url-safe characters: none may be
-- printed.
local function assert_no_key_shaped(text)
  for word in text:gmatch("sk_[%w_%-]+") do
    assert(#word < 20, "the output quotes something shaped like an API key")
  end
end

local function summary(text)
  for line in text:gmatch("[^\n]+") do
    if line:find("^alloc %S+: %d+ trace lines") or line:find("^alloc selftest") then
      io.stderr:write("\n[alloc] ", line, "\n")
    end
  end
end

-- A sweep's output: no key quoted, its summary line shown, a clean exit
-- and its "ok" line.
local function assert_swept(rc, text, summary_pattern, ok_line)
  assert_no_key_shaped(text)
  for line in text:gmatch("[^\n]+") do
    if line:find(summary_pattern) then io.stderr:write("\n[alloc] ", line, "\n") end
  end
  assert.are.equal(0, rc, text)
  assert.truthy(text:find(ok_line, 1, true), text)
end

describe("a memory error once the server has rotated (spec/alloc/after_rotation.lua)", function()
  -- mode, what it drives, the highest k (past the call's last allocation),
  -- how many memory errors come in a row
  for _, m in ipairs({ { "blocking", "client:rotate_key", 400, 1 },
                       { "blocking", "client:rotate_key", 400, 6 },
                       { "op", "client:start_rotate_key polled until done", 400, 1 },
                       { "op", "client:start_rotate_key polled until done", 400, 4 },
                       { "batch", "client:rotate_keys over three organizations", 1100, 1 },
                       { "batch", "client:rotate_keys over three organizations", 1100, 3 },
                       { "lean", "client:rotate_keys, an iterator, keep_results = false", 1100, 1 },
                       { "lean", "client:rotate_keys, an iterator, keep_results = false", 1100, 3 } }) do
    it(m[2] .. ", memory failing at each allocation k, " .. m[4] .. " error(s) in a row: " ..
       "the key is handed back, never raised away or left behind; the next call works",
       function()
      local skip = ensure_host()
      if skip then pending(skip) return end
      local rc, text = run("after_rotation.lua", tostring(m[3]), m[1], tostring(m[4]))
      assert_swept(rc, text, "^alloc after_rotation %S+ x%d+: %d+ cases",
                   "alloc after_rotation " .. m[1] .. ": ok")
    end)
  end
end)

describe("memory errors in libcurl callbacks (spec/alloc, a failing allocator)", function()
  it("the failing allocator and its classifier work (selftest)", function()
    local skip = ensure_host()
    if skip then pending(skip) return end
    local rc, text = run("selftest.lua")
    summary(text)
    assert_no_key_shaped(text)
    assert.are.equal(0, rc, text)
    assert.truthy(text:find("alloc selftest: ok", 1, true), text)
  end)

  local modes = {
    { "client", "client:rotate_key" },
    { "module", "slashid.rotate_key" },
    { "client_op", "client:start_rotate_key + op:wait" },
    { "module_op", "slashid.start_rotate_key + op:wait" },
  }
  for _, m in ipairs(modes) do
    local mode, what = m[1], m[2]
    it(what .. ": a memory error in the trace only stops the trace; the new key is kept " ..
       "and the next rotation works", function()
      local skip = ensure_host()
      if skip then pending(skip) return end
      local rc, text = run("trace.lua", mode)
      summary(text)
      assert_no_key_shaped(text)
      assert.are.equal(0, rc, text)
      assert.truthy(text:find("alloc " .. mode .. ": ok", 1, true), text)
      assert.falsy(text:find("FAIL", 1, true), text)
    end)
  end
end)

describe("a call made from the debug function while an answer is built again " ..
         "(spec/alloc/nested_debug.lua)", function()
  it("never takes that answer for its own: another organization's key is not returned " ..
     "to it nor saved to its file; the outer call hands its own key back", function()
    local skip = ensure_host()
    if skip then pending(skip) return end
    local rc, text = run("nested_debug.lua", "300")
    assert_swept(rc, text, "^alloc nested_debug: %d+ cases", "alloc nested_debug: ok")
  end)
end)

describe("a memory error as a batch ends (spec/alloc/batch_end.lua)", function()
  for _, errors in ipairs({ 1, 3 }) do
    it("after its last item, with a note to add or items never started to report, " ..
       errors .. " error(s) in a row: the outcomes, and every key, are returned", function()
      local skip = ensure_host()
      if skip then pending(skip) return end
      local rc, text = run("batch_end.lua", tostring(errors))
      assert_swept(rc, text, "^alloc batch_end %S+ x%d+:", "alloc batch_end: ok")
    end)
  end
end)

describe("a memory error in a batch written ahead to a journal (spec/alloc/journal.lua)", function()
  for _, m in ipairs({ { "plain", 1 }, { "lean", 3 } }) do
    it(("%s, %d error(s) in a row: no key lost, and the journal never left locked"):format(m[1], m[2]),
       function()
      local skip = ensure_host()
      if skip then pending(skip) return end
      local rc, text = run("journal.lua", tostring(m[2]), m[1])
      assert_swept(rc, text, "^alloc journal %S+ x%d+:", "alloc journal: ok")
    end)
  end
end)

describe("a batch given up (two signals) while memory keeps failing (spec/alloc/abandon.lua)", function()
  it("every key issued before the interrupt reaches on_result, though the giving up's own " ..
     "allocations fail", function()
    local skip = ensure_host()
    if skip then pending(skip) return end
    local rc, text = run("abandon.lua", "4", "1")
    assert_swept(rc, text, "^alloc abandon x%d+:", "alloc abandon: ok")
  end)
end)

describe("an op polled late after a memory error in multi:perform (spec/alloc/late_poll.lua)", function()
  it("an attempt that finished before the error is reported as it finished, never as a " ..
     "timeout once its deadline has passed", function()
    local skip = ensure_host()
    if skip then pending(skip) return end
    local rc, text = run("late_poll.lua", "12", "op", "1")
    assert_swept(rc, text, "^alloc late_poll %S+ x%d+:", "alloc late_poll: ok")
  end)
end)
