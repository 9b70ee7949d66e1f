-- The C host of examples/embed: Lua 5.4 embedded in a 60 Hz frame loop,
-- the module linked statically (libslashid.a, luaL_requiref). It rotates a
-- key that the emulator holds for 1.5 s; no frame may spend more than
-- 20 ms in its Lua call (a real bound for a game: one frame is 16.7 ms). A
-- blocking rotation would stall one frame for 1.5 s. Between frames the
-- host sleeps in poll(2) on op:pollfd() and calls into Lua only when the
-- descriptor woke it or op:timeout() ran out: while the server holds the
-- answer most frames make no Lua call (a host polling every frame makes
-- one per frame), and the answer's arrival is seen through the descriptor.
--
-- Builds nothing: `make check-hosts` builds build/lua5.4/embed-host (make embed).
local H = require "helpers"

local HOST = "build/lua5.4/embed-host"
local STALL_BOUND_MS = 20

local exists, shell_quote = H.exists, H.q

local left_out = H.left_out

-- Why the host cannot run here, or nil.
local function missing()
  return left_out("lua5.4") or
         not exists(HOST) and HOST .. " is missing: `make embed` builds it (make check-hosts does)" or nil
end

-- Runs the host; returns its key=value lines as a table, its exit status
-- and its raw output (stdout and stderr).
local function run_host(env, args)
  local out = H.tmpname("embed-out")
  local parts = { "env -u LD_PRELOAD -u LUA_PATH -u LUA_CPATH -u LUA_PATH_5_4 -u LUA_CPATH_5_4" }
  for k, v in pairs(env) do parts[#parts + 1] = k .. "=" .. shell_quote(v) end
  parts[#parts + 1] = HOST
  for _, a in ipairs(args) do parts[#parts + 1] = shell_quote(a) end
  local cmd = table.concat(parts, " ") .. " >" .. shell_quote(out) .. " 2>&1; echo $?"
  local p = io.popen(cmd)
  local rc = tonumber(p:read("*a"):match("%d+"))
  p:close()
  local text = H.read_file(out)
  local values = {}
  for k, v in text:gmatch("([%w_]+)=([^\n]*)") do values[k] = v end
  return values, rc, text
end


local run_recipe = H.run_recipe

describe("embedding in a C frame loop (examples/embed/host.c)", function()
  it("rotates from a frame loop that sleeps on op:pollfd(); no frame stalls over 20 ms", function()
    local why = missing()
    if why then
      pending("embed spec skipped: " .. why)
      return
    end
    -- The stall is wall-clock time, so a busy machine's scheduler can add to
    -- it: a run over the bound is repeated, up to 3 runs, and the best one
    -- must hold. Every run is reported. A blocking rotation cannot pass: it
    -- stalls one frame for the whole 1.5 s in every run.
    local stalls, best = {}, nil
    for run = 1, 3 do
      local org, key = H.new_org()
      H.faults(org, { { delay = 1.5 } })
      local save_to = H.tmpname("embed-key")
      local v, rc, text = run_host({ SLASHID_API_KEY = key }, {
        "--org-id", org, "--base-url", H.http_url, "--save-to", save_to,
        "--max-seconds", "20" })

      local stall = tonumber(v.longest_stall_ms)
      stalls[run] = stall
      io.stderr:write(("\n[embed] run %d: 60 Hz frame loop, rotation held 1.5 s: frames=%s " ..
        "longest stall=%s ms (cpu %s ms; while pending %s ms, start %s ms, final " ..
        "frame with save_to %s ms), mean work per frame=%s ms, late frames=%s, " ..
        "frames calling Lua=%s, woken by the descriptor=%s, outcome=%s\n")
        :format(run, tostring(v.frames), tostring(v.longest_stall_ms),
                tostring(v.longest_stall_cpu_ms), tostring(v.longest_pending_stall_ms),
                tostring(v.start_ms), tostring(v.final_frame_ms), tostring(v.mean_work_ms),
                tostring(v.late_frames), tostring(v.lua_calls), tostring(v.fd_wakes),
                tostring(v.outcome)))

      assert.are.equal(0, rc, text)
      assert.are.equal("rotated", v.outcome, text)
      assert.are.equal("200", v.status)
      assert.are.equal("true", v.saved)
      assert.is_number(stall, text)
      -- the loop really ran through the delay, frame after frame
      local frames = tonumber(v.frames)
      assert.is_true(frames >= 60 and frames <= 200, "frames: " .. tostring(v.frames))
      -- ...mostly without calling into Lua: it slept on the op's descriptor
      local lua_calls, fd_wakes = tonumber(v.lua_calls), tonumber(v.fd_wakes)
      assert.is_number(lua_calls, text)
      assert.is_true(lua_calls >= 1 and lua_calls <= frames / 4,
                     ("%s of %d frames called into Lua"):format(v.lua_calls, frames))
      assert.is_true(fd_wakes >= 1, "the descriptor never woke the loop")
      assert.is_true(tonumber(v.elapsed) >= 1.45)
      -- the new key was saved, and printed nowhere
      local new_key = H.org(org).api_key
      assert.are_not.equal(key, new_key)
      assert.are.equal(new_key .. "\n", H.read_file(save_to))
      assert.are.equal("600", H.mode(save_to))
      H.assert_no_secret(text, key)
      H.assert_no_secret(text, new_key)

      if not best or stall < best then best = stall end
      if best <= STALL_BOUND_MS then break end
    end
    assert.is_true(best <= STALL_BOUND_MS,
                   ("the longest frame stall was over %d ms in every run: %s ms")
                   :format(STALL_BOUND_MS, table.concat(stalls, ", ")))
  end)

  it("reports not_rotated (exit 1) for a refused key, and takes the key from a file", function()
    local why = missing()
    if why then
      pending("embed spec skipped: " .. why)
      return
    end
    local org = H.new_org()
    local key_file = H.tmpname("embed-old-key")
    local f = assert(io.open(key_file, "wb"))
    f:write("sk_not_the_key_of_this_org\n")
    f:close()
    local v, rc, text = run_host({ SLASHID_ORG_ID = org, SLASHID_BASE_URL = H.http_url }, {
      "--api-key-file", key_file, "--save-to", H.tmpname("embed-never") })
    assert.are.equal(1, rc, text)
    assert.are.equal("not_rotated", v.outcome)
    assert.are.equal("401", v.status)
    assert.are.equal(0, H.org(org).rotations)
    H.assert_no_secret(text, "sk_not_the_key_of_this_org")
  end)

  it("refuses to run without --save-to, and never takes a key from argv", function()
    local why = missing()
    if why then
      pending("embed spec skipped: " .. why)
      return
    end
    local org, key = H.new_org()
    local _, rc = run_host({ SLASHID_API_KEY = key }, { "--org-id", org, "--base-url", H.http_url })
    assert.are.equal(64, rc)
    local _, rc2, text2 = run_host({}, { "--org-id", org, "--api-key", key, "--save-to", "x" })
    assert.are.equal(64, rc2)
    H.assert_no_secret(text2, key)
    -- a bad option raised by the library is a usage error too
    local _, rc3, text3 = run_host({ SLASHID_API_KEY = key }, {
      "--org-id", org, "--base-url", "ftp://127.0.0.1:1", "--save-to", H.tmpname("x") })
    assert.are.equal(64, rc3, text3)
    assert.matches("slashid: ", text3)
    assert.are.equal(0, H.requests(org))
  end)

  it("`make example-embed`, the recipe's one line, rotates from a clone", function()
    local why = missing()
    if why then
      pending("embed recipe skipped: " .. why)
      return
    end
    local asan = H.recipe_skip()
    if asan then pending(asan) return end
    local rc, out = run_recipe("make example-embed")
    io.stderr:write("\n[embed] make example-embed:\n", out)
    assert.are.equal(0, rc, out)
    assert.matches("\noutcome=rotated\n", out, 1, true)
    assert.matches("\nsaved=true\n", out, 1, true)
  end)
end)
