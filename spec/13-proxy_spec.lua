-- The `proxy` option (README, "Proxies") against a real proxy:
-- Debian's tinyproxy (spec/proxy.lua starts one per test on 127.0.0.1).
--   * explicit `proxy`: an https rotation goes through the proxy's CONNECT
--     tunnel (its log shows it), also for clients, ops and batches;
--   * failures: origin down behind the proxy, proxy down, proxy refusing
--     the tunnel or the credentials give `not_rotated` (retried where the
--     connection phase failed, never reaching the emulator); a tunnel lost
--     after the request went through it gives `unknown`, one request only;
--   * the environment (child processes, variables set on their command
--     line): https_proxy / HTTPS_PROXY / all_proxy / no_proxy as curl reads
--     them for an https base URL, `proxy = false` overriding them, and a
--     loopback http:// base URL that never goes through any proxy (the key
--     would travel in clear text), whatever the environment or the option;
--   * secrets: proxy credentials never in errors, info, the debug trace,
--     tostring, nor a child's output;
--   * bad values raise `slashid: bad option 'proxy' ...` without the value.
-- Only 127.0.0.1 is ever contacted.
local H = require "helpers"
local q, run, LUA = H.q, H.run, H.lua
local proxy = require "proxy"
local slashid = require "slashid"
local socket = require "socket"
local mime = require "mime"

local now = socket.gettime

local USER, PASS = "alice", "s3cr3t-pr0xy-pass"
local B64 = (mime.b64(USER .. ":" .. PASS))   -- what Proxy-Authorization carries
local TLS_PORT = tonumber(H.https_url:match(":(%d+)$"))
local TLS_TARGET = "127.0.0.1:" .. TLS_PORT
local PROXY_VARS = { "http_proxy", "https_proxy", "all_proxy", "no_proxy",
                     "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY" }

assert(proxy.available(), "tinyproxy is missing: sh scripts/deps.sh tinyproxy-bin")
for _, name in ipairs(PROXY_VARS) do
  assert(os.getenv(name) == nil, "run the specs with a clean environment (spec/run.sh): " .. name)
end

local function why(errors, info, px)
  return ("outcome %s, attempts %s, status %s, errors: %s%s"):format(
    tostring(info and info.outcome), tostring(info and info.attempts),
    tostring(info and info.status), H.messages(errors, true),
    px and ("\n--- proxy log ---\n" .. px:log()) or "")
end

-- H.opts over the emulator's HTTPS port (with its CA).
local function https_opts(org, key, extra)
  local o = H.opts(org, key, { base_url = H.https_url, ca_file = H.ca_file,
                               connect_timeout = 3, request_timeout = 10 })
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end

local function closed_proxy()
  return "http://127.0.0.1:" .. H.closed_port()
end

local function start_proxy(opts)
  local px = proxy.start(opts or { connect_ports = { TLS_PORT } })
  finally(function() px:stop() end)
  return px
end

-- Every secret form of the proxy credentials is absent from `text`.
local function no_proxy_secret(text)
  H.assert_no_secret(text, PASS)
  H.assert_no_secret(text, B64)
end

-- The message of the error raised by fn(...), or fails.
local function raised(fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "no error was raised")
  return tostring(err)
end

-- ---- child processes: the environment is read in a fresh process ---------

local CHILD_SCRIPT = [=[
-- spec/13-proxy_spec.lua's child: one rotation configured by SPEC_* and
-- by whatever proxy variables its command line set. Prints a summary, the
-- errors and (SPEC_DEBUG) the debug trace; never the keys.
local slashid = require "slashid"
local function env(n)
  local v = os.getenv(n)
  if v == "" then return nil end
  return v
end
local opts = {
  org_id = env("SPEC_ORG"), base_url = env("SPEC_BASE"), ca_file = env("SPEC_CA"),
  retries = tonumber(env("SPEC_RETRIES") or "0"), retry_delay = 0.01,
  retry_max_delay = 0.05, connect_timeout = 3,
  request_timeout = tonumber(env("SPEC_REQUEST_TIMEOUT") or "10"),
}
local p = env("SPEC_PROXY")
if p == "false" then opts.proxy = false elseif p then opts.proxy = p end
local trace = 0
if env("SPEC_DEBUG") then
  opts.debug = function(line)
    trace = trace + 1
    io.stdout:write("trace: ", line, "\n")
  end
end
local ok, result, errors, _, info = pcall(slashid.rotate_key, opts)
if not ok then
  io.stdout:write("raised: ", tostring(result), "\n")
  os.exit(3)
end
for _, e in ipairs(errors) do
  io.stdout:write("error: ", tostring(e.httpcode), " ", tostring(e.curl_code), " ",
                  tostring(e.message), "\n")
end
io.stdout:write("outcome=", info.outcome, " attempts=", info.attempts, " status=",
                info.status, " trace=", trace, " result=", tostring(result ~= nil), "\n")
os.exit(0)
]=]

local child_path
local function child_script()
  if not child_path then
    child_path = H.tmpname("proxy-child") .. ".lua"
    local f = assert(io.open(child_path, "wb"))
    f:write(CHILD_SCRIPT)
    f:close()
  end
  return child_path
end

-- The command line of a child: every proxy variable removed, then `vars`
-- (name -> value) set, then SLASHID_API_KEY and the SPEC_* settings.
local function child_command(key, settings, vars)
  local parts = { "env" }
  for _, name in ipairs(PROXY_VARS) do parts[#parts + 1] = "-u " .. name end
  for name, value in pairs(vars or {}) do parts[#parts + 1] = name .. "=" .. q(value) end
  parts[#parts + 1] = "SLASHID_API_KEY=" .. q(key)
  for name, value in pairs(settings) do
    parts[#parts + 1] = "SPEC_" .. name .. "=" .. q(tostring(value))
  end
  parts[#parts + 1] = q(H.lua)
  parts[#parts + 1] = q(child_script())
  return table.concat(parts, " ")
end

-- A child's summary line parsed: { outcome=, attempts=, trace= }.
local function summary(out)
  local outcome, attempts, status, trace, result =
    out:match("outcome=(%S+) attempts=(%d+) status=(%d+) trace=(%d+) result=(%a+)")
  return { outcome = outcome, attempts = tonumber(attempts), status = tonumber(status),
           trace = tonumber(trace), result = result == "true" }
end

-- Runs a child to its end: summary, stdout, stderr.
local function run_child(org, key, settings, vars)
  local dir = H.mkdir(H.tmpname("proxy-run"))
  settings.ORG = org
  local cmd = child_command(key, settings, vars)
  os.execute(("%s >%s/out 2>%s/err </dev/null"):format(cmd, dir, dir))
  local out, err = H.read_file(dir .. "/out"), H.read_file(dir .. "/err")
  H.assert_no_secret(out .. err, key)
  return summary(out), out, err
end

local function https_child(px_url)
  return { BASE = H.https_url, CA = H.ca_file, PROXY = px_url }
end

local function http_child(px_url)
  return { BASE = H.http_url, PROXY = px_url }
end

describe("proxy option", function()
  after_each(proxy.stop_all)

  describe("an explicit proxy", function()
    it("rotates over https through the proxy's CONNECT tunnel", function()
      local px = start_proxy()
      local org, key = H.new_org()
      local result, errors, _, info =
        slashid.rotate_key(https_opts(org, key, { proxy = px.url, retries = 0 }))
      local msg = why(errors, info, px)
      assert.are.equal("rotated", info.outcome, msg)
      H.assert_key_equal(H.org(org).api_key, result.api_key)
      assert.are.same({ TLS_TARGET }, px:connects(), msg)
      assert.are.equal(1, #px:requests(), msg)
      assert.are.equal(1, H.requests(org))
      -- info describes the origin's answer, not the proxy's "200 Connection
      -- established" (whose headers name the proxy)
      assert.are.equal(200, info.status)
      assert.is_nil(info.headers["proxy-agent"], msg)
    end)

    it("a client's proxy default carries to its calls; ops and batches use it too", function()
      local px = start_proxy()
      local client = slashid.new{ proxy = px.url, ca_file = H.ca_file, base_url = H.https_url,
                                  retries = 0 }
      finally(function() client:close() end)
      local org, key = H.new_org()
      local result, errors, _, info = client:rotate_key{ org_id = org, api_key = key }
      assert.are.equal("rotated", info.outcome, why(errors, info, px))
      H.assert_key_equal(H.org(org).api_key, result.api_key)
      assert.is_true(#px:connects() >= 1, px:log())

      local org2, key2 = H.new_org()
      local px2 = start_proxy()
      local op = slashid.start_rotate_key(https_opts(org2, key2, { proxy = px2.url }))
      assert.is_true(op:wait(10))
      local _, errors2, _, info2 = op:results()
      assert.are.equal("rotated", info2.outcome, why(errors2, info2, px2))
      assert.are.same({ TLS_TARGET }, px2:connects(), px2:log())

      local px3 = start_proxy()
      local list = {}
      for i = 1, 2 do
        local o, k = H.new_org()
        list[i] = { org_id = o, api_key = k }
      end
      local out = slashid.rotate_keys(list, { proxy = px3.url, base_url = H.https_url,
                                              ca_file = H.ca_file, retries = 0 })
      for i = 1, 2 do
        assert.are.equal("rotated", out[i].info.outcome, why(out[i].errors, out[i].info, px3))
      end
      local n = #px3:connects()
      assert.is_true(n >= 1 and n <= 2, px3:log())
    end)

    it("check_key goes through the proxy too: given to it, or a client's default", function()
      local px = start_proxy()
      local org, key = H.new_org()
      local ok, errors, info = slashid.check_key{ org_id = org, api_key = key, retries = 0,
        base_url = H.https_url, ca_file = H.ca_file, proxy = px.url }
      assert.is_true(ok, why(errors, info, px))
      assert.are.same({ TLS_TARGET }, px:connects(), px:log())

      local px2 = start_proxy()
      local client = slashid.new{ proxy = px2.url, base_url = H.https_url, ca_file = H.ca_file }
      finally(function() client:close() end)
      ok, errors, info = client:check_key{ org_id = org, api_key = key }
      assert.is_true(ok, why(errors, info, px2))
      assert.are.same({ TLS_TARGET }, px2:connects(), px2:log())
    end)

    it("a connection made without the proxy is not reused for a call through it, nor the reverse", function()
      local px = start_proxy()
      local org, key = H.new_org()
      local client = slashid.new{ org_id = org, api_key = key, ca_file = H.ca_file,
                                  base_url = H.https_url, retries = 0 }
      finally(function() client:close() end)
      local _, errors, _, info = client:rotate_key{ proxy = false }
      assert.are.equal("rotated", info.outcome, why(errors, info))
      assert.are.equal(0, px:connections())
      -- the direct connection is kept alive; through the proxy it is not used
      _, errors, _, info = client:rotate_key{ proxy = px.url }
      assert.are.equal("rotated", info.outcome, why(errors, info, px))
      assert.are.same({ TLS_TARGET }, px:connects(), px:log())
      -- the tunnel is kept alive; with the proxy dead, a call without the
      -- proxy must connect directly (over the dead tunnel it could not pass)
      px:kill()
      _, errors, _, info = client:rotate_key{ proxy = false }
      assert.are.equal("rotated", info.outcome, why(errors, info))
      assert.are.equal(3, H.org(org).rotations)
    end)

    it("a loopback http:// base URL goes direct even with an explicit proxy", function()
      local px = start_proxy({})
      local org, key = H.new_org()
      local _, errors, _, info = slashid.rotate_key(H.opts(org, key, { proxy = px.url }))
      assert.are.equal("rotated", info.outcome, why(errors, info, px))
      assert.are.equal(0, px:connections(), px:log())
      -- a proxy that does not even exist is not tried either
      local org2, key2 = H.new_org()
      _, errors, _, info = slashid.rotate_key(H.opts(org2, key2, {
        proxy = "http://" .. USER .. ":" .. PASS .. "@127.0.0.1:" .. H.closed_port(),
        retries = 0 }))
      assert.are.equal("rotated", info.outcome, why(errors, info))
      assert.are.equal(1, info.attempts)
    end)

    it("takes https:// and socks5h:// proxy URLs (a closed port: not_rotated, nothing raised)", function()
      for _, scheme in ipairs({ "https", "socks5h" }) do
        local org, key = H.new_org()
        local url = scheme .. "://127.0.0.1:" .. H.closed_port()
        local result, errors, _, info =
          slashid.rotate_key(https_opts(org, key, { proxy = url, retries = 1 }))
        local msg = scheme .. ": " .. why(errors, info)
        assert.is_nil(result, msg)
        assert.are.equal("not_rotated", info.outcome, msg)
        assert.are.equal(2, info.attempts, msg)
        assert.are.equal(0, H.requests(org), msg)
      end
    end)
  end)

  describe("failures", function()
    it("origin down behind the proxy: not_rotated, retried (the tunnel never opened)", function()
      local closed = H.closed_port()
      local px = start_proxy({ connect_ports = { TLS_PORT, closed } })
      local org, key = H.new_org()
      local result, errors, _, info = slashid.rotate_key(https_opts(org, key, {
        base_url = "https://127.0.0.1:" .. closed, proxy = px.url, retries = 2 }))
      local msg = why(errors, info, px)
      assert.is_nil(result, msg)
      assert.are.equal("not_rotated", info.outcome, msg)
      assert.are.equal(3, info.attempts, msg)
      -- every attempt really asked the proxy for the tunnel
      assert.are.equal(3, #px:connects(), msg)
      assert.are.equal("127.0.0.1:" .. closed, px:connects()[1])
      assert.is_true(#errors >= 1, msg)
      assert.are.equal(0, errors[#errors].httpcode, msg)
      assert.are.equal("number", type(errors[#errors].curl_code), msg)
      assert.are.equal(0, H.requests(org))
    end)

    it("proxy down: not_rotated, retried", function()
      local org, key = H.new_org()
      local result, errors, _, info = slashid.rotate_key(https_opts(org, key, {
        proxy = closed_proxy(), retries = 2 }))
      local msg = why(errors, info)
      assert.is_nil(result, msg)
      assert.are.equal("not_rotated", info.outcome, msg)
      assert.are.equal(3, info.attempts, msg)
      assert.are.equal(0, errors[#errors].httpcode, msg)
      assert.are.equal(7, errors[#errors].curl_code, msg)   -- CURLE_COULDNT_CONNECT
      assert.are.equal(0, H.requests(org))
    end)

    it("a proxy refusing the tunnel (port not allowed): not_rotated, the origin never reached", function()
      local px = start_proxy({ connect_ports = { H.closed_port() } })
      local org, key = H.new_org()
      local result, errors, _, info =
        slashid.rotate_key(https_opts(org, key, { proxy = px.url, retries = 2 }))
      local msg = why(errors, info, px)
      assert.is_nil(result, msg)
      assert.are.equal("not_rotated", info.outcome, msg)
      assert.are.equal(1, info.attempts, msg)   -- a 403 to CONNECT is final
      assert.are.equal(1, #px:connects(), msg)
      assert.are.equal(0, H.requests(org))
      assert.are.equal(0, H.org(org).rotations)
    end)

    it("a certificate failure behind the tunnel: not_rotated, not retried", function()
      local px = start_proxy()
      local org, key = H.new_org()
      -- the system store does not know the emulator's CA
      local result, errors, _, info = slashid.rotate_key(https_opts(org, key, {
        proxy = px.url, retries = 2, ca_file = "/etc/ssl/certs/ca-certificates.crt" }))
      local msg = why(errors, info, px)
      assert.is_nil(result, msg)
      assert.are.equal("not_rotated", info.outcome, msg)
      assert.are.equal(1, info.attempts, msg)
      assert.are.same({ TLS_TARGET }, px:connects(), msg)
      assert.are.equal(0, H.requests(org))
    end)

    it("the proxy dies after the request went through the tunnel: unknown, one request (op)", function()
      local px = start_proxy()
      local org, key = H.new_org()
      H.faults(org, { { delay = 2, rotate = true } })
      local op = slashid.start_rotate_key(https_opts(org, key, { proxy = px.url, retries = 5 }))
      local t0 = now()
      -- wait until the emulator holds the request, then drop the tunnel
      while H.requests(org) == 0 and now() - t0 < 5 do
        assert.is_false(op:wait(0.05), "the op finished before the request arrived")
      end
      assert.are.equal(1, H.requests(org), "the request never reached the emulator")
      px:kill()
      assert.is_true(op:wait(10))
      local result, errors, _, info = op:results()
      local msg = why(errors, info)
      assert.is_nil(result, msg)
      assert.are.equal("unknown", info.outcome, msg)
      assert.are.equal(1, info.attempts, msg)
      -- nothing more reaches the emulator, even after its delay ran out
      socket.sleep(math.max(0, 2.3 - (now() - t0)))
      assert.are.equal(1, H.requests(org))
      assert.are.equal(1, H.org(org).rotations)   -- why "unknown" was the truth
    end)

    it("a kept tunnel dropped after the request: unknown, never sent a second time", function()
      -- The tunnel was opened by an earlier call (libcurl reuses it): a
      -- connection that dies before any answer byte is one libcurl would
      -- silently send the request on again, through a new tunnel.
      local px = start_proxy()
      local client = slashid.new{ proxy = px.url, base_url = H.https_url, ca_file = H.ca_file,
                                  retries = 5, retry_delay = 0.01, retry_max_delay = 0.05 }
      finally(function() client:close() end)
      local worg, wkey = H.new_org()
      assert.is_true((client:check_key{ org_id = worg, api_key = wkey }))
      local org, key = H.new_org()
      H.faults(org, { { action = "close", rotate = true },
                      { status = 418, json = { errors = { { httpcode = 418,
                        message = "TRIPWIRE: a request was sent again" } } } } })
      local result, errors, _, info = client:rotate_key{ org_id = org, api_key = key }
      local msg = why(errors, info, px)
      assert.is_nil(result, msg)
      assert.are.equal("unknown", info.outcome, msg)
      assert.are.equal(1, info.attempts, msg)
      assert.are.equal(1, H.requests(org), msg)
      assert.are.equal(1, H.org(org).rotations)
    end)

    it("the proxy dies after the request went through the tunnel: unknown, one request (blocking call)", function()
      local px = start_proxy()
      local org, key = H.new_org()
      H.faults(org, { { delay = 2, rotate = true } })
      local dir = H.mkdir(H.tmpname("proxy-kill"))
      local settings = https_child(px.url)
      settings.ORG, settings.RETRIES = org, 5
      local cmd = child_command(key, settings)
      assert(os.execute(("sh -c %s </dev/null >/dev/null 2>&1 &"):format(
        q(("echo $$ >%s/pid; exec %s >%s/out 2>%s/err"):format(dir, cmd, dir, dir)))))
      local pid
      local t0 = now()
      while not pid and now() - t0 < 5 do
        local f = io.open(dir .. "/pid")
        if f then pid = tonumber(f:read("*a"):match("%d+")); f:close() end
        if not pid then socket.sleep(0.02) end
      end
      assert.is_number(pid)
      local function running()
        local a, _, c = os.execute("kill -0 " .. pid .. " 2>/dev/null")
        return a == true or a == 0 or c == 0
      end
      finally(function()
        if running() then os.execute("kill -KILL " .. pid .. " 2>/dev/null") end
      end)
      while H.requests(org) == 0 and now() - t0 < 8 do socket.sleep(0.05) end
      assert.are.equal(1, H.requests(org), "the request never reached the emulator")
      px:kill()
      while running() and now() - t0 < 20 do socket.sleep(0.05) end
      assert.is_false(running(), "the child did not finish")
      local out = H.read_file(dir .. "/out") .. H.read_file(dir .. "/err")
      H.assert_no_secret(out, key)
      local s = summary(out)
      assert.are.equal("unknown", s.outcome, out)
      assert.are.equal(1, s.attempts, out)
      socket.sleep(math.max(0, 2.3 - (now() - t0)))
      assert.are.equal(1, H.requests(org))
    end)
  end)

  describe("the environment", function()
    it("https_proxy, HTTPS_PROXY, all_proxy, ALL_PROXY: an https rotation goes through the proxy", function()
      for _, var in ipairs({ "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY" }) do
        local px = start_proxy()
        local org, key = H.new_org()
        local s, out = run_child(org, key, https_child(), { [var] = px.url })
        local msg = var .. ":\n" .. out .. "\n--- proxy log ---\n" .. px:log()
        assert.are.equal("rotated", s.outcome, msg)
        assert.are.same({ TLS_TARGET }, px:connects(), msg)
        assert.are.equal(1, H.requests(org))
        px:stop()
      end
    end)

    it("proxy = false: direct, whatever https_proxy / all_proxy say", function()
      local px = start_proxy()
      local org, key = H.new_org()
      local s, out = run_child(org, key, https_child("false"),
                               { https_proxy = px.url, all_proxy = px.url })
      assert.are.equal("rotated", s.outcome, out)
      assert.are.equal(0, px:connections(), px:log())
      -- a dead proxy in the environment does not matter either
      org, key = H.new_org()
      s, out = run_child(org, key, https_child("false"),
                         { https_proxy = closed_proxy(), HTTPS_PROXY = closed_proxy() })
      assert.are.equal("rotated", s.outcome, out)
    end)

    it("an explicit proxy wins over the environment's", function()
      local px = start_proxy()
      local org, key = H.new_org()
      local s, out = run_child(org, key, https_child(px.url),
                               { https_proxy = closed_proxy(), all_proxy = closed_proxy() })
      assert.are.equal("rotated", s.outcome, out)
      assert.are.same({ TLS_TARGET }, px:connects(), px:log())
    end)

    it("no_proxy / NO_PROXY naming the host: direct, even with https_proxy set", function()
      for _, var in ipairs({ "no_proxy", "NO_PROXY" }) do
        local px = start_proxy()
        local org, key = H.new_org()
        local s, out = run_child(org, key, https_child(),
                                 { https_proxy = px.url, [var] = "127.0.0.1" })
        assert.are.equal("rotated", s.outcome, var .. ": " .. out)
        assert.are.equal(0, px:connections(), var .. ": " .. px:log())
        px:stop()
      end
    end)

    it("https_proxy on a closed port: not_rotated, retried", function()
      local org, key = H.new_org()
      local settings = https_child()
      settings.RETRIES = 2
      local s, out = run_child(org, key, settings, { https_proxy = closed_proxy() })
      assert.are.equal("not_rotated", s.outcome, out)
      assert.are.equal(3, s.attempts, out)
      assert.are.equal(0, H.requests(org))
    end)

    it("a loopback http:// base URL never goes through a proxy from the environment", function()
      local sets = {
        { http_proxy = true },
        { all_proxy = true },
        { HTTP_PROXY = true },
        { ALL_PROXY = true },
        { http_proxy = true, HTTP_PROXY = true, all_proxy = true, ALL_PROXY = true,
          https_proxy = true, HTTPS_PROXY = true },
      }
      for _, set in ipairs(sets) do
        local px = start_proxy({})
        local vars, names = {}, {}
        for name in pairs(set) do
          vars[name] = px.url
          names[#names + 1] = name
        end
        table.sort(names)
        local label = table.concat(names, ",")
        local org, key = H.new_org()
        local s, out = run_child(org, key, http_child(), vars)
        assert.are.equal("rotated", s.outcome, label .. ": " .. out)
        -- the key went nowhere near the proxy
        assert.are.equal(0, px:connections(), label .. ": the rotation went through the proxy\n" ..
                         px:log())
        assert.are.equal(1, H.requests(org))
        px:stop()
      end
    end)

    it("a loopback http:// base URL with an explicit proxy and http_proxy set: direct", function()
      local px = start_proxy({})
      local org, key = H.new_org()
      local s, out = run_child(org, key, http_child(px.url), { http_proxy = px.url })
      assert.are.equal("rotated", s.outcome, out)
      assert.are.equal(0, px:connections(), px:log())
    end)
  end)

  describe("secrets", function()
    local function auth_proxy()
      return start_proxy({ connect_ports = { TLS_PORT }, user = USER, password = PASS })
    end

    it("a rotation through a proxy with credentials: works, and they show nowhere", function()
      local px = auth_proxy()
      local url = px:url_with(USER, PASS)
      local client = slashid.new{ proxy = url, base_url = H.https_url, ca_file = H.ca_file }
      finally(function() client:close() end)
      no_proxy_secret(tostring(client))
      local org, key = H.new_org()
      local lines = {}
      local result, errors, pagination, info = client:rotate_key{
        org_id = org, api_key = key, retries = 0,
        debug = function(line) lines[#lines + 1] = line end }
      local trace = table.concat(lines, "\n")
      assert.are.equal("rotated", info.outcome, why(errors, info, px))
      assert.are.same({ TLS_TARGET }, px:connects(), px:log())
      assert.is_true(#lines > 0, "no debug trace")
      assert.truthy(trace:find("SlashID-API-Key: <redacted>", 1, true), "the trace missed the request")
      no_proxy_secret(trace)
      no_proxy_secret(H.flatten(result, errors, pagination, info))
      no_proxy_secret(tostring(client))
      H.assert_no_secret(trace, key)
      H.assert_no_secret(trace, result.api_key)

      -- an op started with it
      local org2, key2 = H.new_org()
      local op = slashid.start_rotate_key(https_opts(org2, key2, { proxy = url }))
      no_proxy_secret(tostring(op))
      assert.is_true(op:wait(10))
      local r2, e2, p2, i2 = op:results()
      assert.are.equal("rotated", i2.outcome, why(e2, i2, px))
      no_proxy_secret(H.flatten(r2, e2, p2, i2))
    end)

    it("proxy with credentials down: not_rotated, and they show nowhere", function()
      local url = ("http://%s:%s@127.0.0.1:%d"):format(USER, PASS, H.closed_port())
      local client = slashid.new{ proxy = url }
      finally(function() client:close() end)
      no_proxy_secret(tostring(client))
      local org, key = H.new_org()
      local lines = {}
      local result, errors, pagination, info = client:rotate_key(https_opts(org, key, {
        retries = 1, debug = function(line) lines[#lines + 1] = line end }))
      assert.are.equal("not_rotated", info.outcome, why(errors, info))
      assert.are.equal(2, info.attempts)
      assert.is_true(#errors >= 1)
      no_proxy_secret(table.concat(lines, "\n"))
      no_proxy_secret(H.flatten(result, errors, pagination, info))
      no_proxy_secret(tostring(client))
    end)

    it("wrong or missing proxy credentials (401 / 407): not_rotated, the origin never reached", function()
      local px = auth_proxy()
      for _, url in ipairs({ px:url_with(USER, "wrong-password"), px.url }) do
        local org, key = H.new_org()
        local lines = {}
        local result, errors, pagination, info = slashid.rotate_key(https_opts(org, key, {
          proxy = url, retries = 2, debug = function(line) lines[#lines + 1] = line end }))
        local msg = why(errors, info, px)
        assert.is_nil(result, msg)
        assert.are.equal("not_rotated", info.outcome, msg)
        -- refused for good: the same credentials would be refused again
        assert.are.equal(1, info.attempts, msg)
        assert.are.equal(0, H.requests(org), msg)
        assert.are.equal(0, H.org(org).rotations)
        no_proxy_secret(table.concat(lines, "\n") .. H.flatten(errors, info, pagination))
      end
    end)

    it("credentials in https_proxy (child process, debug trace on): shown nowhere", function()
      local px = auth_proxy()
      local org, key = H.new_org()
      local settings = https_child()
      settings.DEBUG = 1
      local s, out, err = run_child(org, key, settings, { https_proxy = px:url_with(USER, PASS) })
      assert.are.equal("rotated", s.outcome, out .. err)
      assert.is_true(s.trace > 0, "no debug trace")
      assert.are.same({ TLS_TARGET }, px:connects(), px:log())
      no_proxy_secret(out)
      no_proxy_secret(err)
      -- the same proxy down: the error path
      org, key = H.new_org()
      settings = https_child()
      settings.DEBUG, settings.RETRIES = 1, 1
      local down = ("http://%s:%s@127.0.0.1:%d"):format(USER, PASS, H.closed_port())
      s, out, err = run_child(org, key, settings, { https_proxy = down, HTTPS_PROXY = down,
                                                    all_proxy = down })
      assert.are.equal("not_rotated", s.outcome, out .. err)
      assert.is_true(s.trace > 0, "no debug trace")
      no_proxy_secret(out)
      no_proxy_secret(err)
    end)

    for _, case in ipairs({
      { "without a scheme", "alice:pr0xy-pa55w0rd-xyz@127.0.0.1:%d" },
      { "with a slash in the password", "http://alice:pr0xy/pa55w0rd-xyz@127.0.0.1:%d" },
      { "with a # in the password", "http://alice:pr0xy#pa55w0rd-xyz@127.0.0.1:%d" },
    }) do
      it("credentials in https_proxy " .. case[1] .. " (the proxy down, debug trace on): shown nowhere", function()
        local org, key = H.new_org()
        local url = case[2]:format(H.closed_port())
        local status, out = run(("https_proxy=%s %s -e %s"):format(q(url), LUA, q(([[
local slashid = require "slashid"
local lines = {}
local r, e, p, i = slashid.rotate_key{ org_id = %q, api_key = %q, base_url = %q,
  ca_file = %q, retries = 0, debug = function(l) lines[#lines + 1] = l end }
print(i.outcome, e[1] and e[1].message)
print(table.concat(lines, "\n"))
]]):format(org, key, H.https_url, H.ca_file))))
        assert.are.equal(0, status, out)
        assert.matches("not_rotated", out)
        assert.is_nil(out:find("pa55w0rd", 1, true), "the proxy password leaked")
        H.assert_no_secret(out, key)
      end)
    end
  end)

  describe("bad values", function()
    local SECRET_URL = "ftp://" .. USER .. ":" .. PASS .. "@127.0.0.1:21"
    local cases = {
      { "ftp://", SECRET_URL },
      { "a number", 3128 },
      { "true", true },
      { "an empty string", "" },
      { "a table", { url = "http://127.0.0.1:3128" } },
      -- each odd character where only a check for it can catch it (the
      -- rest of the URL is well-formed)
      { "a URL with a space", "http://" .. USER .. ":" .. PASS .. "@127.0.0.1:3128/ x" },
      { "a URL with CR LF", "http://" .. USER .. ":" .. PASS .. "\r\nX-Evil: 1@127.0.0.1:3128" },
      { "a URL with NUL", "http://" .. USER .. ":" .. PASS .. "\0@127.0.0.1:3128" },
      { "a URL with a tab", "http://" .. USER .. "\t:" .. PASS .. "@127.0.0.1:3128" },
      { "a URL with DEL", "http://127.0.0.1\127:3128" },
    }
    local PREFIX = "slashid: bad option 'proxy'"

    local function check(label, value, msg)
      assert.are.equal(PREFIX, msg:sub(1, #PREFIX), label .. ": " .. msg)
      if type(value) == "string" and value ~= "" then
        assert.is_nil(msg:find(value, 1, true), label .. ": the value is quoted")
        assert.is_nil(msg:find("127.0.0.1:", 1, true), label .. ": the value is quoted")
        no_proxy_secret(msg)
      end
    end

    for _, case in ipairs(cases) do
      local label, value = case[1], case[2]
      it("raise before any network activity: " .. label, function()
        local org, key = H.new_org()
        check(label, value, raised(slashid.rotate_key, https_opts(org, key, { proxy = value })))
        check(label, value, raised(slashid.new, { proxy = value }))
        check(label, value, raised(slashid.start_rotate_key, https_opts(org, key, { proxy = value })))
        local msg = raised(slashid.rotate_keys, { { org_id = org, api_key = key } },
                           { proxy = value, base_url = H.https_url })
        assert.truthy(msg:find("bad option 'proxy'", 1, true), label .. ": " .. msg)
        if type(value) == "string" and value ~= "" then no_proxy_secret(msg) end
        assert.are.equal(0, H.requests(org))
      end)
    end
  end)
end)
