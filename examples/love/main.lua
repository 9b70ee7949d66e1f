-- examples/love/main.lua - a tiny LÖVE game that rotates a SlashID API key
-- without a hitch: the rotation is an op (slashid.start_rotate_key), and the
-- game's 60 Hz update polls it once per frame. op:poll() never waits, so a
-- slow SlashID answer costs the frame loop nothing.
--
--   make example-love          (from a clone: against the bundled emulator)
--   SLASHID_ORG_ID=... SLASHID_API_KEY=... SLASHID_KEY_FILE=./key \
--     LUA_PATH="$PWD/lua/?.lua;;" LUA_CPATH="$PWD/build/luajit/?.so;;" love examples/love
--
-- (SLASHID_BASE_URL and SLASHID_CA_FILE point it at a local emulator.) The
-- new key goes to SLASHID_KEY_FILE (mode 0600, atomic) and never to the
-- screen or the log. At the end it prints one line of figures: the outcome,
-- the frames run, the longest poll, the longest frame's work and the
-- longest gap between two frames, in milliseconds.
--
-- LÖVE embeds LuaJIT: slashid must be built for it (make LUA=luajit, or
-- `luarocks --lua-version=5.1 install slashid`), and LUA_PATH / LUA_CPATH
-- must reach it like any LuaJIT module.
local slashid = require "slashid"

local FRAME = 1 / 60            -- seconds per frame
local FRAMES_AFTER = 30         -- frames run after the rotation, then quit

local op
local figures = { frames = 0, poll = 0, work = 0, gap = 0 }
local left_after, outcome_line

local function env(name, default)
  local v = os.getenv(name)
  if v == nil or v == "" then return default end
  return v
end

function love.load()
  op = slashid.start_rotate_key{
    org_id = env("SLASHID_ORG_ID"),
    api_key = env("SLASHID_API_KEY"),
    base_url = env("SLASHID_BASE_URL", slashid.PRODUCTION),
    ca_file = env("SLASHID_CA_FILE"),
    save_to = env("SLASHID_KEY_FILE", "slashid-key"),
  }
end

-- The game's own work for one frame would go here (physics, AI, ...).
local angle = 0
local function game_step(dt) angle = (angle + dt * math.pi) % (2 * math.pi) end

function love.update(dt)
  game_step(dt)
  if op then
    local t0 = love.timer.getTime()
    local done = op:poll()      -- one non-blocking step per frame
    local spent = love.timer.getTime() - t0
    if spent > figures.poll then figures.poll = spent end
    if done then
      local _, errors, _, info = op:results()
      local first = errors[1] and errors[1].message or ""
      outcome_line = ("outcome=%s saved=%s attempts=%d%s"):format(info.outcome,
        tostring(info.saved), info.attempts, first ~= "" and (" error=" .. first) or "")
      op, left_after = nil, FRAMES_AFTER
    end
  elseif left_after then
    left_after = left_after - 1
    if left_after == 0 then love.event.quit(0) end
  end
end

-- Without a window nothing paces the frames (no vsync): this loop runs
-- them at 60 Hz, sleeping what is left of each frame, as a game does.
function love.run()
  love.load(love.arg and love.arg.parseGameArguments(arg) or arg, arg)
  love.timer.step()
  local next_frame = love.timer.getTime()
  local last_start
  return function()
    love.event.pump()
    for name, a in love.event.poll() do
      if name == "quit" then
        print(("slashid-love: %s frames=%d max_poll_ms=%.3f max_frame_ms=%.3f max_gap_ms=%.3f")
          :format(outcome_line or "outcome=none", figures.frames, figures.poll * 1000,
                  figures.work * 1000, figures.gap * 1000))
        return a or 0
      end
    end
    local start = love.timer.getTime()
    if last_start and start - last_start > figures.gap then figures.gap = start - last_start end
    last_start = start
    love.update(love.timer.step())
    local work = love.timer.getTime() - start
    if work > figures.work then figures.work = work end
    figures.frames = figures.frames + 1
    next_frame = next_frame + FRAME
    local rest = next_frame - love.timer.getTime()
    if rest > 0 then love.timer.sleep(rest) else next_frame = love.timer.getTime() end
  end
end
