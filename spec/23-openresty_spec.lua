-- OpenResty (Debian nginx + libnginx-mod-http-lua): examples/openresty/
-- runs a rotation as an op polled between ngx.sleep calls, so a single
-- worker keeps serving while SlashID's answer is pending. This starts nginx
-- on 127.0.0.1 (a free port, a temporary prefix), has the emulator hold the
-- rotation for 2 s, and meanwhile times /ping requests to the same worker:
-- a blocking handler would freeze them for the whole 2 s.
--
-- Installs nothing: `make check-hosts` installs nginx, the lua module and builds
-- the module for LuaJIT (build/luajit) first. Skipped when they are absent,
-- or when `make check-hosts` left them out (installing luajit2 would have removed
-- Debian's luajit).
local H = require "helpers"
local cjson = require "cjson"
local socket = require "socket"

local now = socket.gettime
local MODULES = "/usr/lib/nginx/modules"

local exists, sh, capture, shell_quote = H.exists, H.sh, H.capture, H.q

local left_out = H.left_out

-- Why this host cannot run the spec, or nil.
local function missing()
  local why = left_out("openresty")
  if why then return why end
  if not sh("command -v nginx >/dev/null 2>&1") then return "nginx is not installed" end
  for _, m in ipairs({ "ndk_http_module.so", "ngx_http_lua_module.so" }) do
    if not exists(MODULES .. "/" .. m) then
      return MODULES .. "/" .. m .. " is missing (libnginx-mod-http-lua)"
    end
  end
  if not exists("build/luajit/slashid/core.so") then
    return "build/luajit/slashid/core.so is missing (make LUA=luajit)"
  end
  return nil
end

-- Debian's folder of Lua 5.1 C modules that holds lua-cjson.
local function lua51_lib()
  local path = capture("ls -d /usr/lib/*/lua/5.1/cjson.so /usr/local/lib/lua/5.1/cjson.so 2>/dev/null")
                 :match("[^\n]+")
  return path and path:gsub("/cjson%.so$", "")
end

local function render(template, vars)
  return (template:gsub("@([%u%d_]+)@", function(name)
    return assert(vars[name], "no value for @" .. name .. "@")
  end))
end

-- One plain HTTP/1.0 exchange: status, body.
local function request(port, method, path, timeout)
  local c = assert(socket.connect("127.0.0.1", port))
  c:settimeout(timeout or 5)
  assert(c:send(method .. " " .. path .. " HTTP/1.0\r\nHost: 127.0.0.1\r\n" ..
                "Content-Length: 0\r\n\r\n"))
  local data, err, partial = c:receive("*a")
  c:close()
  data = data or partial or ""
  assert(data ~= "", "no answer: " .. tostring(err))
  return tonumber(data:match("^HTTP/%d%.%d (%d+)")), data:match("\r\n\r\n(.*)$") or ""
end

local function median(list)
  local s = {}
  for i, v in ipairs(list) do s[i] = v end
  table.sort(s)
  local n = #s
  return n % 2 == 1 and s[(n + 1) / 2] or (s[n / 2] + s[n / 2 + 1]) / 2
end


local run_recipe = H.run_recipe

describe("OpenResty example", function()
  it("serves /ping on the same worker while a rotation is pending (2 s delay)", function()
    local why = missing()
    if why then
      pending("OpenResty spec skipped: " .. why)
      return
    end
    local lib51 = lua51_lib()
    if not lib51 then
      pending("OpenResty spec skipped: lua-cjson for Lua 5.1 not found")
      return
    end

    local prefix = H.mkdir(H.tmpname("openresty"))
    local port = H.closed_port()
    local root = capture("pwd"):match("[^\n]+")
    local user = capture("id -un"):match("[^\n]+")
    local f = assert(io.open("examples/openresty/nginx.conf", "rb"))
    local conf = render(f:read("*a"), {
      PREFIX = prefix, PORT = tostring(port), ROOT = root, LUA51_LIB = lib51, USER = user })
    f:close()
    f = assert(io.open(prefix .. "/nginx.conf", "wb"))
    f:write(conf)
    f:close()

    local org, key = H.new_org()
    local key_file = prefix .. "/slashid.key"
    f = assert(io.open(key_file, "wb"))
    f:write(key, "\n")
    f:close()
    -- as an operator keeps a key file; a replaced file keeps its mode
    assert(os.execute("chmod 600 '" .. key_file .. "'"))

    local pid_file = prefix .. "/launcher.pid"
    -- the spec runner's Lua paths (maybe another Lua's build) stay out of nginx
    assert(sh(("env -u LD_PRELOAD -u LUA_PATH -u LUA_CPATH " ..
               "SLASHID_ORG_ID=%s SLASHID_KEY_FILE=%s SLASHID_BASE_URL=%s " ..
               "nginx -p %s -c %s -e %s >%s 2>&1 & echo $! >%s"):format(
      shell_quote(org), shell_quote(key_file), shell_quote(H.http_url),
      shell_quote(prefix), shell_quote(prefix .. "/nginx.conf"),
      shell_quote(prefix .. "/error.log"), shell_quote(prefix .. "/stdout.log"),
      shell_quote(pid_file))))
    local nginx_pid = tonumber(H.read_file(pid_file):match("%d+"))
    finally(function()
      if nginx_pid then
        sh("kill " .. nginx_pid .. " 2>/dev/null")
        for _ = 1, 50 do
          if not sh("kill -0 " .. nginx_pid .. " 2>/dev/null") then break end
          socket.sleep(0.1)
        end
      end
    end)

    local logs = function()
      return (exists(prefix .. "/error.log") and H.read_file(prefix .. "/error.log") or "") ..
             (exists(prefix .. "/stdout.log") and H.read_file(prefix .. "/stdout.log") or "")
    end
    local up = false
    for _ = 1, 100 do
      local c = socket.connect("127.0.0.1", port)
      if c then c:close(); up = true; break end
      if not sh("kill -0 " .. nginx_pid .. " 2>/dev/null") then break end
      socket.sleep(0.05)
    end
    assert(up, "nginx did not start:\n" .. logs())
    local warm_status, warm_body = request(port, "GET", "/ping")
    assert.are.equal(200, warm_status, logs())
    assert.are.equal("pong\n", warm_body)

    -- The rotation: held 2 s by the emulator.
    H.faults(org, { { delay = 2 } })
    local rot = assert(socket.connect("127.0.0.1", port))
    local t0 = now()
    assert(rot:send("POST /rotate HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"))
    local deadline = now() + 3
    while H.requests(org) == 0 and now() < deadline do socket.sleep(0.01) end
    assert.are.equal(1, H.requests(org), "the rotation did not reach the emulator:\n" .. logs())

    -- Meanwhile: /ping, on the same (only) worker.
    local latencies = {}
    for i = 1, 20 do
      local t = now()
      local status, body = request(port, "GET", "/ping")
      latencies[i] = now() - t
      assert.are.equal(200, status)
      assert.are.equal("pong\n", body)
      socket.sleep(0.04)
    end
    local pings_done = now()
    -- a second rotation while one is pending is refused at once
    local t_busy = now()
    local busy_status, busy_body = request(port, "POST", "/rotate")
    local busy_latency = now() - t_busy
    assert.are.equal(409, busy_status)
    assert.are.equal("not_rotated", cjson.decode(busy_body).outcome)

    rot:settimeout(10)
    local data, err, partial = rot:receive("*a")
    local answered = now()
    rot:close()
    data = data or partial or ""
    assert(data ~= "", "no answer to /rotate: " .. tostring(err) .. "\n" .. logs())
    local status = tonumber(data:match("^HTTP/%d%.%d (%d+)"))
    local body = cjson.decode(data:match("\r\n\r\n(.*)$"))

    local max = 0
    for _, l in ipairs(latencies) do if l > max then max = l end end
    io.stderr:write(("\n[openresty] /ping during a pending 2 s rotation (1 worker): " ..
      "n=%d max=%.1f ms median=%.1f ms; second /rotate refused in %.1f ms; " ..
      "rotation answered after %.2f s\n"):format(#latencies, max * 1000,
      median(latencies) * 1000, busy_latency * 1000, answered - t0))

    assert.are.equal(200, status, data)
    assert.are.equal("rotated", body.outcome)
    assert.are.equal(200, body.status)
    assert.is_true(body.saved)
    assert.is_true(answered - t0 >= 1.95, "the rotation answered before the 2 s delay")
    assert.is_true(pings_done < answered, "the pings were not sent while the rotation was pending")
    assert.is_true(max < 0.5, ("a /ping took %.3f s during the rotation"):format(max))
    assert.is_true(busy_latency < 0.5)
    -- the new key is in the key file, and in no answer
    local new_key = H.org(org).api_key
    assert.are_not.equal(key, new_key)
    assert.are.equal(new_key .. "\n", H.read_file(key_file))
    assert.are.equal("600", H.mode(key_file))
    H.assert_no_secret(data, key)
    H.assert_no_secret(data, new_key)
    H.assert_no_secret(logs(), key)
    H.assert_no_secret(logs(), new_key)

    -- a second rotation reads the new key from the file
    local status2, body2 = request(port, "POST", "/rotate", 10)
    assert.are.equal(200, status2, body2)
    assert.are.equal("rotated", cjson.decode(body2).outcome)
    H.assert_key_equal(H.org(org).api_key .. "\n", H.read_file(key_file))
    assert.are.equal(2, H.org(org).rotations)

    -- only POST
    assert.are.equal(403, (request(port, "GET", "/rotate")))

    -- The recovery step after an unknown outcome, taken by the handler
    -- itself (start_check_key, waited like the rotation). The connection
    -- is closed before any answer: once without rotating (the old key
    -- still works: a later /rotate is safe), once after rotating (the new
    -- key was lost in transit: the old one is refused).
    local before = H.read_file(key_file)
    H.faults(org, { { action = "close" } })
    local s3, b3 = request(port, "POST", "/rotate", 20)
    local a3 = cjson.decode(b3)
    assert.are.equal(502, s3, b3)
    assert.are.equal("unknown", a3.outcome)
    assert.is_true(a3.old_key_works, b3)
    assert.are.equal(before, H.read_file(key_file))
    assert.matches("the old key still works", logs())

    H.faults(org, { { rotate = true, action = "close" } })
    local s4, b4 = request(port, "POST", "/rotate", 20)
    local a4 = cjson.decode(b4)
    assert.are.equal(502, s4, b4)
    assert.are.equal("unknown", a4.outcome)
    assert.is_false(a4.old_key_works, b4)
    assert.matches("the old key is refused", logs())
    H.assert_no_secret(b3 .. b4 .. logs(), (before:gsub("%s+$", "")))
  end)

  it("`make example-openresty`, the recipe's one line, answers rotated from a clone", function()
    local why = missing() or not lua51_lib() and "lua-cjson for Lua 5.1 not found"
    if why then
      pending("OpenResty recipe skipped: " .. why)
      return
    end
    local asan = H.recipe_skip()
    if asan then pending(asan) return end
    local rc, out = run_recipe("make example-openresty")
    io.stderr:write("\n[openresty] make example-openresty:\n", out)
    assert.are.equal(0, rc, out)
    local answer = cjson.decode((assert(out:match("\n(%b{})\n"), out)))
    assert.are.equal("rotated", answer.outcome, out)
    assert.are.equal(200, answer.status)
    assert.is_true(answer.saved)
  end)
end)
