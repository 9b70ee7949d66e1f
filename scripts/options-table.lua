#!/usr/bin/env lua
-- Prints the README's options table ("### Options") from the rules in
-- lua/slashid/options.lua (M.RULES): one row per rotate_key option, its
-- type (the rule's doc) and its default. spec/02-options_spec.lua fails
-- when README.md's table and this output disagree.
--   lua scripts/options-table.lua            (from the top of the checkout)
package.path = "lua/?.lua;" .. package.path
local options = require "slashid.options"

-- A plain default as the README shows it: `30`, `"local_region"`.
local function literal(v)
  if type(v) == "string" then return '`"' .. v .. '"`' end
  if type(v) == "number" then return "`" .. ("%.14g"):format(v) .. "`" end
  return "`" .. tostring(v) .. "`"
end

local function default_of(rule)
  if rule.shown then return rule.shown end
  if rule.env then return "env `" .. rule.env .. "`" end
  if rule.default ~= nil then return literal(rule.default) end
  return "none"
end

print("| option | type | default |")
print("|---|---|---|")
for _, rule in ipairs(options.RULES) do
  if rule.calls ~= "batch" then   -- rotate_keys' own are in their section
    print(("| `%s` | %s | %s |"):format(rule.name, rule.doc, default_of(rule)))
  end
end
