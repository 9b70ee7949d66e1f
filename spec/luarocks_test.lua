-- `luarocks test`'s entry (the rockspec's test.script). LuaRocks runs it
-- from the top of the checkout, with the interpreter of --lua-version,
-- passing the rockspec's test.flags and then the arguments given to
-- `luarocks test` (spec files, busted options). It starts the local
-- emulator the way `make test` does (spec/with-emulator.sh: a fresh one,
-- stopped afterwards, nothing but 127.0.0.1) and runs busted under it, in
-- this same interpreter, against the module found on package.path and
-- package.cpath: the Lua files of this checkout (lua/) and slashid.core of
-- the tree it was installed in. So, without make:
--
--   luarocks --lua-version=5.4 make --deps-mode=none --tree /tmp/lt
--   eval "$(luarocks --lua-version=5.4 --tree /tmp/lt path)"
--   luarocks --lua-version=5.4 test                      (make test's specs)
--   luarocks --lua-version=5.4 test spec/01-rotate_spec.lua
--
-- README ("Install") says how LuaRocks finds Debian's busted. Already under
-- spec/with-emulator.sh (SLASHID_EMULATOR_INFO set), busted runs at once.

local function quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

if os.getenv("SLASHID_EMULATOR_INFO") then
  -- busted reads the command line from `arg` and .busted from here; it
  -- exits with the number of failures and errors.
  local ok, runner = pcall(require, "busted.runner")
  if not ok then
    io.stderr:write("spec/luarocks_test.lua: busted is not installed for this Lua ",
                    "(Debian: apt-get install lua-busted; else luarocks install busted)\n",
                    tostring(runner), "\n")
    os.exit(1)
  end
  runner({ standalone = false })
  return
end

-- The module under test must load before anything starts.
local ok, why = pcall(require, "slashid.core")
if not ok then
  io.stderr:write("spec/luarocks_test.lua: slashid.core cannot be loaded: build and ",
                  "install the rock, then put its tree on the path:\n",
                  "  luarocks --lua-version=X make --deps-mode=none --tree TREE\n",
                  "  eval \"$(luarocks --lua-version=X --tree TREE path)\"\n",
                  tostring(why), "\n")
  os.exit(1)
end

-- The interpreter running this script, with its own options (arg[-1] ...).
local lowest = 0
while arg[lowest - 1] ~= nil do lowest = lowest - 1 end
local interpreter = {}
for i = lowest, -1 do interpreter[#interpreter + 1] = quote(arg[i]) end
local rest = {}
for i = 1, #arg do rest[#rest + 1] = quote(arg[i]) end

-- Processes the specs start (the command, helper scripts) see the same
-- modules as this one, and run under the same interpreter.
local lua_path = "lua/?.lua;spec/?.lua;" .. package.path
local env = {
  "SLASHID_SPEC_LUA=" .. quote(arg[lowest]),
  "LUA_PATH=" .. quote(lua_path), "LUA_CPATH=" .. quote(package.cpath),
}
for _, v in ipairs({ "5_2", "5_3", "5_4" }) do
  env[#env + 1] = "LUA_PATH_" .. v .. "=" .. quote(lua_path)
  env[#env + 1] = "LUA_CPATH_" .. v .. "=" .. quote(package.cpath)
end

local command = ("env %s sh spec/with-emulator.sh %s spec/luarocks_test.lua %s"):format(
  table.concat(env, " "), table.concat(interpreter, " "), table.concat(rest, " "))
local a, b, c = os.execute(command)
-- Lua 5.1: the wait status; 5.2 and later: true/nil, "exit"/"signal", code
local status
if type(a) == "number" then
  status = a >= 256 and math.floor(a / 256) or a
else
  status = (b == "exit" and c) or (a and 0) or 1
end
os.exit(status)
