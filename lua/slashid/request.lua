-- slashid.request: where a request is built. A resolved configuration
-- becomes the request table the C core sets up on a handle
-- (src/request.c): URL, headers' values, timeouts, proxy, and the secrets
-- besides the key that every text handed back must hide (`secrets`).

local M = {}

local tonumber, type, ipairs = tonumber, type, ipairs

-- Proxy credentials found in a proxy URL: the user-info, the password
-- and the user, as written and percent-decoded. The C core hides them in
-- every text it hands back, like the key.
local function unescape(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end
local function proxy_secrets(url, into)
  if type(url) ~= "string" then return into end
  -- Read liberally: libcurl takes "user:pass@host" without a scheme, and
  -- quotes a URL it cannot parse ("pa/ss", "pa#ss") whole in its errors.
  local rest = url:match("^%a[%w+.-]*://(.*)$") or url
  local userinfo = rest:match("^(.*)@")          -- up to the last "@"
  if not userinfo or userinfo == "" then return into end
  into = into or {}
  local user, pass = userinfo:match("^([^:]*):?(.*)$")
  -- A user name of one or two characters is left alone: hiding every "u"
  -- of a message protects nothing. The password is always hidden.
  for i, s in ipairs({ userinfo, pass, unescape(pass), user, unescape(user) }) do
    if s ~= "" and (i <= 3 or #s >= 3) then into[#into + 1] = s end
  end
  return into
end

-- The environment variables libcurl reads for an https:// URL.
local PROXY_ENV = { "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY" }
M.PROXY_ENV = PROXY_ENV

-- What the C core gets as `proxy`: a URL, "" for none at all (libcurl
-- then ignores the environment too), or nil: the environment decides.
-- A plain http:// base URL (loopback only) never goes through a proxy:
-- the key would travel to it in clear text.
local function proxy_of(cfg)
  if cfg.base_url:sub(1, 7):lower() == "http://" or cfg.proxy == false then
    return ""
  end
  return cfg.proxy
end

-- The request table the C core reads (src/request.c). A handle keeps the
-- request it last set up and skips the setup when the same table comes
-- again (retries, a client's next call), so the table is not changed once
-- a handle has set it up; the one field set after building, `pipewait`
-- (job.lua, for a batch's items), is set before the first attempt.
function M.build(cfg, method, path, default_user_agent)
  local proxy = proxy_of(cfg)
  -- verify's check presents the new key: the old one it replaced is
  -- hidden too (a server may quote it in the check's answer); first, as
  -- the C core keeps only so many
  local secrets = cfg.replaced_key and { cfg.replaced_key } or nil
  if proxy == nil then
    for _, name in ipairs(PROXY_ENV) do
      secrets = proxy_secrets(os.getenv(name), secrets)
    end
  else
    secrets = proxy_secrets(proxy, secrets)
  end
  return {
    proxy = proxy,
    secrets = secrets,
    method = method,
    url = cfg.base_url .. path,
    org_id = cfg.org_id,
    api_key = cfg.api_key,
    consistency = method == "PUT" and cfg.consistency or nil,
    consistency_timeout = method == "PUT" and cfg.timeout or nil,
    user_agent = cfg.user_agent or default_user_agent,
    connect_timeout = cfg.connect_timeout,
    request_timeout = cfg.request_timeout,
    ca_file = cfg.ca_file,
    max_response_bytes = cfg.max_response_bytes,
    debug = cfg.debug,
  }
end

return M
