-- slashid.lazy: lazy(name) is a stand-in for module `name` that loads it
-- on first field access, then copies its fields in and drops the
-- metatable, so later accesses are plain table reads.
--
-- `require "slashid"` only defines functions; what they use is loaded at
-- the first call: the C core (which maps libcurl and its ~30 shared
-- libraries, about 11 ms on Debian 12) and the policy modules. A script
-- that requires slashid but never calls it does not pay for them.
return function(name)
  return setmetatable({}, {
    __index = function(t, k)
      setmetatable(t, nil)
      for key, v in pairs(require(name)) do t[key] = v end
      return rawget(t, k)
    end,
  })
end
