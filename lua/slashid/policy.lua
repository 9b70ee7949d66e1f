-- slashid.policy: the rules that decide what one attempt meant and
-- whether another attempt is allowed. Pure functions over the facts the
-- C core reports; the engine (job.lua) applies them to every call.

local M = {}

local tonumber, type = tonumber, type

-- libcurl codes that mean the connection never carried a request and that
-- may pass on another try. TLS handshake and certificate failures are not
-- here: retrying them cannot help and may hide an attack.
local PASSABLE = {
  [5] = true,  -- CURLE_COULDNT_RESOLVE_PROXY
  [6] = true,  -- CURLE_COULDNT_RESOLVE_HOST
  [7] = true,  -- CURLE_COULDNT_CONNECT
  [28] = true, -- CURLE_OPERATION_TIMEDOUT (only counts when nothing was sent)
  [55] = true, -- CURLE_SEND_ERROR   (idem)
  [56] = true, -- CURLE_RECV_ERROR   (idem)
}

-- "rotated", "not_rotated" or "unknown" (see README's "Outcomes" table).
-- This is the one place that decides: answer.c only reports what came
-- (a `result` only from a complete answer, or from a 2xx whose transfer
-- failed after a whole envelope holding a key arrived).
function M.outcome(result, facts)
  local s = facts.status
  if s >= 200 and s <= 299 and result and type(result.api_key) == "string" and
     result.api_key ~= "" then
    return "rotated"          -- even when the transfer failed after it
  end
  if facts.complete then
    if s >= 200 and s <= 299 then return "unknown" end     -- no key in it
    if (s >= 300 and s <= 399) or (s >= 400 and s <= 499 and s ~= 408) then
      return "not_rotated"
    end
    return "unknown"          -- 408, 5xx, 1xx
  end
  if not facts.sent then return "not_rotated" end
  return "unknown"            -- sent, then timeout, drop, or over the cap
end

-- check_key's reading of an attempt: true accepted, false refused, nil
-- when it cannot tell.
function M.accepted(facts)
  if not facts.complete then return nil end
  local s = facts.status
  if s >= 200 and s <= 299 then return true end
  if s == 401 or s == 403 then return false end
  return nil
end

-- Retry-After in seconds: delta-seconds or an HTTP-date; nil if absent or
-- unreadable.
function M.retry_after(headers, core)
  local v = headers and headers["retry-after"]
  if type(v) ~= "string" then return nil end
  v = v:match("^%s*(.-)%s*$")
  if v:find("^%d+$") then return tonumber(v) end
  local at = core.http_date(v)
  if not at then return nil end
  local wait = at - core.time()
  return wait > 0 and wait or 0
end

-- Whether the server cannot have acted on this attempt and another one
-- may succeed.
function M.retryable(facts)
  if facts.complete then return facts.status == 429 end
  -- a proxy that refused the tunnel for good (403, 401/407 credentials)
  -- will refuse it again; 408, 429 and 5xx may pass
  local cs = facts.connect_status
  if cs and cs >= 400 and cs <= 499 and cs ~= 408 and cs ~= 429 then return false end
  return not facts.sent and PASSABLE[facts.curl_code] == true
end

-- Seconds to wait before attempt number `attempt + 1`, or nil when no
-- further attempt is allowed. Full jitter: uniform in [0, cap] where cap
-- grows as retry_delay * 2^(attempt-1), bounded by retry_max_delay. A
-- Retry-After is honoured as given; above retry_max_delay it ends the
-- retries (waiting that long is the caller's decision, not ours).
function M.next_delay(cfg, facts, attempt, retry_after, random)
  if attempt > cfg.retries or not M.retryable(facts) then return nil end
  if retry_after then
    if retry_after > cfg.retry_max_delay then return nil end
    return retry_after
  end
  local cap = cfg.retry_delay * 2 ^ (attempt - 1)
  if cap > cfg.retry_max_delay then cap = cfg.retry_max_delay end
  return random() * cap
end

return M
