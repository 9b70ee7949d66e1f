-- The fuzzer's oracle for "a 2xx whose envelope has a well-formed
-- result.api_key string never loses it": an independent reading of the
-- body, written apart from src/tolerant.c (and from lua-cjson). It parses
-- RFC 8259's grammar in full (every value checked, with an explicit
-- stack: no depth limit), accepting lone surrogate escapes in strings
-- (which the grammar allows); in the top-level object's `result` object
-- the last `api_key` member decides. Returns the key when it is a
-- well-formed non-empty string whose escapes pair surrogates, nil when the
-- body is no such object.
local M = {}

local byte, sub, find, char = string.byte, string.sub, string.find, string.char

-- A string literal at i (its quote). Returns the index after it and the
-- decoded text (false when it holds a lone surrogate escape), or nil when
-- it is not a string literal.
local function string_at(s, i)
  local out, clean = {}, true
  i = i + 1
  while true do
    local c = byte(s, i)
    if c == nil or c < 0x20 then return nil end
    if c == 34 then return i + 1, clean and table.concat(out) or false end
    if c ~= 92 then
      out[#out + 1] = char(c)
      i = i + 1
    else
      local e = sub(s, i + 1, i + 1)
      local simple = ({ ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f",
                        n = "\n", r = "\r", t = "\t" })[e]
      if simple then
        out[#out + 1] = simple
        i = i + 2
      elseif e == "u" then
        local h = sub(s, i + 2, i + 5)
        if not find(h, "^%x%x%x%x$") then return nil end
        local cp = tonumber(h, 16)
        i = i + 6
        if cp >= 0xD800 and cp <= 0xDBFF then
          local l = find(sub(s, i, i + 5), "^\\u%x%x%x%x$") and tonumber(sub(s, i + 2, i + 5), 16)
          if l and l >= 0xDC00 and l <= 0xDFFF then
            cp = 0x10000 + (cp - 0xD800) * 0x400 + (l - 0xDC00)
            i = i + 6
          else
            clean = false      -- a lone high surrogate: allowed, not decodable
          end
        elseif cp >= 0xDC00 and cp <= 0xDFFF then
          clean = false
        end
        if clean then
          if cp < 0x80 then out[#out + 1] = char(cp)
          elseif cp < 0x800 then
            out[#out + 1] = char(0xC0 + cp // 0x40, 0x80 + cp % 0x40)
          elseif cp < 0x10000 then
            out[#out + 1] = char(0xE0 + cp // 0x1000, 0x80 + cp // 0x40 % 0x40, 0x80 + cp % 0x40)
          else
            out[#out + 1] = char(0xF0 + cp // 0x40000, 0x80 + cp // 0x1000 % 0x40,
                                 0x80 + cp // 0x40 % 0x40, 0x80 + cp % 0x40)
          end
        end
      else
        return nil
      end
    end
  end
end

local function space(s, i)
  return (find(s, "[^ \t\r\n]", i)) or #s + 1
end

-- A scalar at i (number or literal): the index after it, or nil.
local function scalar_at(s, i)
  for _, lit in ipairs({ "true", "false", "null" }) do
    if sub(s, i, i + #lit - 1) == lit then return i + #lit end
  end
  local _, e = find(s, "^%-?0", i)
  if not e then _, e = find(s, "^%-?[1-9]%d*", i) end
  if not e then return nil end
  local _, f = find(s, "^%.%d+", e + 1)
  e = f or e
  _, f = find(s, "^[eE][+-]?%d+", e + 1)
  return (f or e) + 1
end

-- Parses the value at i with an explicit stack. `on_member(path, name,
-- value_start)` is not needed: the top-level walk below reads `result`
-- itself. Returns the index after the value, or nil.
local function value_at(s, i)
  local stack = {}        -- "{" or "[" per open container, and whether a value is expected
  i = space(s, i)
  while true do
    local c = sub(s, i, i)
    local done_value
    if c == "{" or c == "[" then
      stack[#stack + 1] = c
      i = space(s, i + 1)
      local close = c == "{" and "}" or "]"
      if sub(s, i, i) == close then
        stack[#stack] = nil
        i = i + 1
        done_value = true
      elseif c == "{" then
        if sub(s, i, i) ~= '"' then return nil end
        local j = string_at(s, i)
        if not j then return nil end
        i = space(s, j)
        if sub(s, i, i) ~= ":" then return nil end
        i = space(s, i + 1)
      end
    elseif c == '"' then
      i = string_at(s, i)
      if not i then return nil end
      done_value = true
    else
      i = scalar_at(s, i)
      if not i then return nil end
      done_value = true
    end
    -- after a complete value: close containers, or go on after a comma
    while done_value do
      if #stack == 0 then return i end
      i = space(s, i)
      local top = stack[#stack]
      local d = sub(s, i, i)
      if d == "," then
        i = space(s, i + 1)
        if top == "{" then
          if sub(s, i, i) ~= '"' then return nil end
          local j = string_at(s, i)
          if not j then return nil end
          i = space(s, j)
          if sub(s, i, i) ~= ":" then return nil end
          i = space(s, i + 1)
        end
        done_value = false
      elseif (top == "{" and d == "}") or (top == "[" and d == "]") then
        stack[#stack] = nil
        i = i + 1
      else
        return nil
      end
    end
    i = space(s, i)
  end
end

-- The members of the object at i: calls fn(name, value_start, value_end)
-- for each; returns the index after the object, or nil.
local function members(s, i, fn)
  i = space(s, i + 1)
  if sub(s, i, i) == "}" then return i + 1 end
  while true do
    if sub(s, i, i) ~= '"' then return nil end
    local j, name = string_at(s, i)
    if not j then return nil end
    i = space(s, j)
    if sub(s, i, i) ~= ":" then return nil end
    local start = space(s, i + 1)
    local stop = value_at(s, start)
    if not stop then return nil end
    fn(name, start, stop)
    i = space(s, stop)
    local d = sub(s, i, i)
    if d == "}" then return i + 1 end
    if d ~= "," then return nil end
    i = space(s, i + 1)
  end
end

function M.api_key(body)
  local i = space(body, 1)
  if sub(body, i, i) ~= "{" then return nil end
  local key = nil
  local ok = members(body, i, function(name, start)
    if name ~= "result" or sub(body, start, start) ~= "{" then return end
    members(body, start, function(inner, vs)
      if inner ~= "api_key" then return end
      if sub(body, vs, vs) == '"' then
        local _, text = string_at(body, vs)
        key = (text and text ~= "") and text or nil
      else
        key = nil
      end
    end)
  end)
  if not ok then return nil end
  return key
end

return M
