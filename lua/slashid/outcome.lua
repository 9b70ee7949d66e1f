-- slashid.outcome: where the outcome is decided. After the last attempt of
-- a call (any call: the engine, job.lua, runs them all): naming the
-- outcome, completing `errors`, saving the new key, and reporting a
-- verification.

local core = require "slashid.core"
local policy = require "slashid.policy"

local M = {}

M.ROTATE_PATH = "/organizations/api-keys"
M.CHECK_PATH = "/organizations/config"

-- Every `errors` list a call returns shows as its messages, joined, so
-- that `assert(slashid.rotate_key{...})` fails with something readable
-- (the messages are redacted: no key is ever in them).
local ERRORS = {
  __tostring = function(list)
    local t = {}
    for i = 1, #list do
      local e = list[i]
      local msg = type(e) == "table" and tostring(e.message or "") or tostring(e)
      local code = type(e) == "table" and tonumber(e.httpcode)
      if code and code ~= 0 and not msg:find("HTTP " .. code, 1, true) then
        msg = "HTTP " .. code .. ": " .. msg
      end
      t[i] = msg
    end
    return #t > 0 and table.concat(t, "; ") or "no errors"
  end,
}
M.ERRORS = ERRORS

-- LuaJIT's assert raises its last argument, which for rotate_key is
-- `info`: it shows as the call's errors too ("not_rotated: HTTP 401: ...").
local errors_of = setmetatable({}, { __mode = "k" })
local INFO = {
  __tostring = function(info)
    local errors = errors_of[info]
    return tostring(info.outcome) .. (errors and #errors > 0 and (": " .. tostring(errors)) or "")
  end,
}

-- info shows as its outcome and errors (see INFO).
function M.describe(info, errors)
  errors_of[info] = errors
  if getmetatable(info) == nil then setmetatable(info, INFO) end
  return info
end

-- errors, with its __tostring (setting a metatable allocates nothing).
function M.listed(errors)
  if getmetatable(errors) == nil then setmetatable(errors, ERRORS) end
  return errors
end

local function add_error(errors, httpcode, message)
  errors[#errors + 1] = { httpcode = httpcode, message = message }
end
M.add_error = add_error

-- The info table of a finished sequence of attempts.
function M.info(facts, attempts, started, retry_after)
  return {
    status = facts.status,
    attempts = attempts,
    elapsed = core.now() - started,
    retry_after = retry_after,
    headers = facts.headers,
  }
end

-- Names the outcome of the last rotation attempt; returns the values a
-- caller sees (result is nil unless rotated; errors never empty then).
-- libcurl's codes for a peer certificate that cannot be verified.
local CERTIFICATE = { [60] = true, [77] = true, [58] = true, [83] = true }
M.CA_HINT = "to trust a private CA, set ca_file or SLASHID_CA_FILE"

function M.settle(result, errors, pagination, info, facts)
  info.outcome = policy.outcome(result, facts)
  local last = errors[#errors]
  if last and CERTIFICATE[last.curl_code] and type(last.message) == "string" and
     not last.message:find(M.CA_HINT, 1, true) then
    last.message = last.message .. " (" .. M.CA_HINT .. ")"
  end
  if info.outcome ~= "rotated" then
    if #errors == 0 then
      -- a 2xx that parsed but carries no usable key
      local excerpt = facts.excerpt or ""
      add_error(errors, facts.status, "HTTP " .. facts.status ..
                ": the answer has no result.api_key" ..
                (excerpt ~= "" and ": " .. excerpt or ""))
    end
    return nil, errors, pagination, info
  end
  return result, errors, pagination, info
end

-- After a rotation the old key is dead: a failure to save is reported,
-- never raised, and the key stays in result.
-- Whether a key is made of printable ASCII only: one holding a control
-- byte (a newline, a NUL, UTF-8's C1 controls and line separators, any
-- byte over 126) is returned to the caller but never written to a file,
-- sent as a header (verify) or adopted: a reader of the file's first line,
-- or a header parser, would take it for something else.
function M.printable(key)
  return not key:find("[^\32-\126]")
end

function M.save(cfg, result, errors, info)
  if not cfg.save_to then return end
  if not M.printable(result.api_key) then
    info.saved = false
    add_error(errors, 0, "the key was rotated but not saved: it holds a control character " ..
              "or another byte outside printable ASCII, so no file could hold it readably " ..
              "(the new key is in result.api_key)")
    return
  end
  local ok, why = core.write_key_file(cfg.save_to, result.api_key .. "\n")
  info.saved = ok == true
  if not ok then
    add_error(errors, 0, "the key was rotated but not saved: " .. why ..
              " (the new key is in result.api_key)")
  end
end

-- The configuration of the check that verifies a new key.
function M.verify_cfg(cfg, new_key, replaced_key)
  local v = {}
  for k, x in next, cfg do v[k] = x end
  v.api_key = new_key
  v.replaced_key = replaced_key   -- hidden in the check's answer too
  -- a cap sized for the rotation's short answer must not fail the check
  -- of a key that works (the config answer is longer)
  if v.max_response_bytes and v.max_response_bytes < 1048576 then
    v.max_response_bytes = 1048576
  end
  return v
end

-- Records the verification's answer (ok as from check_key).
function M.verified(errors, info, ok, verrors, vinfo)
  info.verified = ok == true
  if ok == false then
    add_error(errors, vinfo.status, "verify: the new key was refused (HTTP " ..
              vinfo.status .. ")")
  elseif ok == nil then
    add_error(errors, vinfo.status, "verify: the new key could not be checked: " ..
              (verrors[1] and verrors[1].message or "no answer"))
  end
end

return M
