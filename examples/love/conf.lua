-- examples/love/conf.lua - LÖVE 11 configuration: no window, no graphics,
-- no audio, so the example runs headless (a server, CI, a terminal).
-- A real game keeps its window; nothing in main.lua depends on it.
function love.conf(t)
  t.identity = "slashid-rotate-example"
  t.version = "11.4"
  t.console = false
  t.window = false
  for _, name in ipairs({ "window", "graphics", "audio", "sound", "joystick",
                          "video", "font", "image", "physics", "touch",
                          "mouse", "keyboard" }) do
    t.modules[name] = false
  end
end
