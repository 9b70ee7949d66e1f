-- examples/rotate.lua - rotate an organization's API key, save the new one,
-- and show that the old key is refused afterwards.
--
--   SLASHID_ORG_ID=... SLASHID_API_KEY=... lua5.4 examples/rotate.lua new-key.txt
--
-- Optional: SLASHID_BASE_URL (default production), SLASHID_CA_FILE (a PEM
-- bundle, e.g. the local emulator's). Keys are never printed.
local slashid = require "slashid"

local save_to = arg[1] or "slashid-new-key.txt"
local old_key = os.getenv("SLASHID_API_KEY")

local client = slashid.new{
  ca_file = os.getenv("SLASHID_CA_FILE"),
  consistency = "all_regions",
  timeout = 60,
}

local result, errors, _, info = client:rotate_key{ save_to = save_to, verify = true }
print(("outcome:  %s (HTTP %d, %d attempt(s), %.3f s)")
      :format(info.outcome, info.status, info.attempts, info.elapsed))
for _, e in ipairs(errors) do
  print(("error:    [%d] %s"):format(e.httpcode, e.message))
end

if info.outcome == "rotated" then
  print(("new key:  %s, %s (%d characters, not shown)")
        :format(info.saved and ("saved to " .. save_to .. " (mode 0600)") or "NOT saved",
                info.verified and "verified: the new key is accepted" or "NOT verified",
                #result.api_key))
  local ok, _, check = client:check_key{ api_key = old_key }
  print(("old key:  %s (HTTP %d)"):format(ok == false and "refused, as expected"
        or "NOT refused: " .. tostring(ok), check.status))
  client:close()
  os.exit(info.saved == false and 3 or 0)
elseif info.outcome == "unknown" then
  -- The server may have issued a new key that never reached us: do not
  -- retry blindly. Ask whether the old key still works.
  local ok = client:check_key{ api_key = old_key }
  print(ok == true and "old key still works: the rotation did not happen; retrying is safe"
        or ok == false and "old key refused: the key WAS rotated and the new one is lost; contact SlashID support"
        or "cannot tell yet: check again later before retrying")
  client:close()
  os.exit(2)
end
client:close()
os.exit(1)
