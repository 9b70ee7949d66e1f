-- busted output handler: busted's plain terminal output, then one closing
-- line "N passed, N failed" (errors count as failures; skipped tests are
-- listed with their reason by the plain handler and counted on the line
-- before).
return function(options)
  local busted = require "busted"
  local handler = require("busted.outputHandlers.plainTerminal")(options)
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
