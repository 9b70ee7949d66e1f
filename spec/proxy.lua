-- A real HTTP proxy for the specs: Debian's tinyproxy (package
-- tinyproxy-bin), run in the foreground on 127.0.0.1 with a free port and
-- its own config and log in a temporary folder.
--
--   local proxy = require "proxy"
--   local px = proxy.start{ connect_ports = { 8443 }, user = "u", password = "p" }
--   px.url                 "http://127.0.0.1:PORT" (no credentials)
--   px:url_with(u, p)      "http://u:p@127.0.0.1:PORT"
--   px:log()               the log so far (text)
--   px:requests()          every request it was sent: { method=, target= }
--   px:connects()          the targets ("host:port") of its CONNECT requests
--   px:connections()       how many client connections it accepted
--   px:stop()              SIGTERM, then SIGKILL if it lingers; waits
--   px:kill()              SIGKILL at once (drops every tunnel); waits
--   proxy.stop_all()       stops every proxy still running (after_each)
--
-- connect_ports: the only ports CONNECT may reach (tinyproxy's ConnectPort);
-- empty or absent: any port. user/password: BasicAuth, so that a request
-- without them gets 407 (and wrong ones 401, tinyproxy's choice).
-- Talks to nothing but 127.0.0.1. Needs LuaSocket (for a free port).

local socket = require "socket"
local H = require "helpers"
local q, write = H.q, H.write
local function read(path) return H.read_if_any(path) or "" end

local M = {}

M.BIN = "/usr/bin/tinyproxy"

local running = {}   -- pid -> proxy, until stopped

local function sh(cmd)
  local a, _, c = os.execute(cmd)
  return a == true or a == 0 or c == 0
end

local function free_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

-- Alive and not a zombie (an orphan may wait a moment to be reaped).
local function alive(pid)
  if not sh("kill -0 " .. pid .. " 2>/dev/null") then return false end
  local stat = read("/proc/" .. pid .. "/stat")
  local state = stat:match("^%d+ %b() (%a)")
  return state ~= nil and state ~= "Z" and state ~= "X"
end

local counter = 0
local function new_dir()
  counter = counter + 1
  local base = os.getenv("SLASHID_SPEC_TMP") or "/tmp"
  local dir = ("%s/tinyproxy-%d-%d-%d"):format(base, os.time(), counter,
                                               math.random(1, 1000000))
  assert(sh("mkdir -p " .. q(dir)), "cannot create " .. dir)
  return dir
end

function M.available()
  return sh("test -x " .. q(M.BIN))
end

local Proxy = {}
Proxy.__index = Proxy

function Proxy:log()
  return read(self.log_path)
end

function Proxy:requests()
  local list = {}
  for method, target in self:log():gmatch("Request %(file descriptor %d+%): (%S+) (%S+)") do
    list[#list + 1] = { method = method, target = target }
  end
  return list
end

function Proxy:connects()
  local list = {}
  for _, r in ipairs(self:requests()) do
    if r.method == "CONNECT" then list[#list + 1] = r.target end
  end
  return list
end

function Proxy:connections()
  local n = 0
  for _ in self:log():gmatch("Connect %(file descriptor %d+%)") do n = n + 1 end
  return n
end

function Proxy:url_with(user, password)
  return ("http://%s:%s@127.0.0.1:%d"):format(user, password, self.port)
end

function Proxy:alive()
  return self.pid ~= nil and alive(self.pid)
end

local function wait_gone(pid, seconds)
  local deadline = socket.gettime() + seconds
  while alive(pid) do
    if socket.gettime() > deadline then return false end
    socket.sleep(0.02)
  end
  return true
end

function Proxy:kill()
  local pid = self.pid
  if not pid then return end
  sh("kill -KILL " .. pid .. " 2>/dev/null")
  wait_gone(pid, 5)
  running[pid] = nil
  self.pid = nil
end

function Proxy:stop()
  local pid = self.pid
  if not pid then return end
  sh("kill -TERM " .. pid .. " 2>/dev/null")
  if not wait_gone(pid, 3) then
    sh("kill -KILL " .. pid .. " 2>/dev/null")
    wait_gone(pid, 5)
  end
  running[pid] = nil
  self.pid = nil
end

local function config(port, log_path, opts)
  local lines = {
    "Port " .. port,
    "Listen 127.0.0.1",
    "Timeout " .. (opts.timeout or 30),
    'LogFile "' .. log_path .. '"',
    "LogLevel Info",
    "MaxClients 50",
    "Allow 127.0.0.1",
  }
  for _, p in ipairs(opts.connect_ports or {}) do
    lines[#lines + 1] = "ConnectPort " .. math.floor(p)
  end
  if opts.user then
    assert(not opts.user:find("[%s\"]") and not opts.password:find("[%s\"]"),
           "proxy credentials with spaces or quotes are not supported")
    lines[#lines + 1] = ("BasicAuth %s %s"):format(opts.user, opts.password)
  end
  return table.concat(lines, "\n") .. "\n"
end

-- One try on one port: the proxy, or nil and why.
local function try_start(dir, opts)
  local port = free_port()
  local conf, log_path = dir .. "/tinyproxy.conf", dir .. "/tinyproxy.log"
  local out, pid_file = dir .. "/stdout.log", dir .. "/pid"
  os.remove(log_path)
  os.remove(pid_file)
  write(conf, config(port, log_path, opts))
  assert(sh(("%s -d -c %s >%s 2>&1 </dev/null & echo $! >%s"):format(
    q(M.BIN), q(conf), q(out), q(pid_file))), "cannot run " .. M.BIN)
  local pid = tonumber(read(pid_file):match("%d+"))
  if not pid then return nil, "no pid" end
  local px = setmetatable({ pid = pid, port = port, dir = dir, log_path = log_path,
                            url = "http://127.0.0.1:" .. port }, Proxy)
  running[pid] = px
  local deadline = socket.gettime() + 5
  while socket.gettime() < deadline do
    if px:log():find("Accepting connections", 1, true) then return px end
    if not alive(pid) then break end
    socket.sleep(0.02)
  end
  local why = px:log() .. read(out)
  px:stop()
  return nil, why
end

-- Starts a proxy (a few tries, in case another process took the port).
function M.start(opts)
  opts = opts or {}
  assert(M.available(), M.BIN .. " is missing: sh scripts/deps.sh tinyproxy-bin")
  local dir = new_dir()
  local why
  for _ = 1, 3 do
    local px
    px, why = try_start(dir, opts)
    if px then return px end
  end
  error("tinyproxy did not start: " .. tostring(why), 2)
end

function M.stop_all()
  local list = {}
  for _, px in pairs(running) do list[#list + 1] = px end
  for _, px in ipairs(list) do px:stop() end
end

return M
