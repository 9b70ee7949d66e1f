-- busted output handler: busted's plain terminal output, then one closing
-- line "N passed, N failed" (errors count as failures; skipped tests are
-- listed with their reason by the plain handler and counted on the line
-- before).
return function(options)
  local busted = require "busted"
  local handler = require("busted.outputHandlers.plainTerminal")(options)
  -- spec/run.sh's watchdog names the test that hung from this file.
  local current = os.getenv("SLASHID_SPEC_CURRENT")
  if current then
    busted.subscribe({ "test", "start" }, function(element)
      local f = io.open(current, "w")
      if f then
        local where = element.trace and element.trace.short_src
        f:write(where and (where .. ": ") or "", handler.getFullName(element), "\n")
        f:close()
      end
      return nil, true
    end)
  end
  busted.subscribe({ "suite", "end" }, function()
    local failed = handler.failuresCount + handler.errorsCount
    if handler.pendingsCount > 0 then
      io.write(("\n%d skipped (reasons above)"):format(handler.pendingsCount))
    end
    io.write(("\n%d passed, %d failed\n"):format(handler.successesCount, failed))
    io.flush()
    return nil, true
  end)
  return handler
end
