-- slashid.lazycore: the C core, loaded on first use rather than at
-- `require "slashid"`. Loading it maps libcurl and its ~30 shared
-- libraries (about 11 ms on Debian 12); a script that requires slashid
-- but never calls it (a --help, a config check) should not pay that.
-- On first access the core's fields are copied in and the metatable
-- dropped, so later accesses are plain table reads.
local core = {}
return setmetatable(core, {
  __index = function(t, k)
    setmetatable(t, nil)
    for name, v in pairs(require "slashid.core") do t[name] = v end
    return rawget(t, k)
  end,
})
