-- `json` for mailpush: a pure-Lua emulation of rxi/json.lua 0.1.2, the file people put next
-- to their Dovecot script. Loaded as chunk(H) (H is unused).
--
-- Reproduced: empty table -> `[]`, array/object rules and their errors, `%.14g` for every
-- number, the string escapes (`/` and 0x7f are not escaped), `null` -> nil on decode,
-- `tonumber` numbers, and every error message including the " at line L col C" suffix.
-- Errors are raised with error(msg) (level 1) as rxi does, so they carry the usual
-- "<chunkname>:<line>: " prefix; the host names this chunk so that it reads like "json.lua:N:".
local type, error, pairs, ipairs, next, rawget, tostring, tonumber, select =
  type, error, pairs, ipairs, next, rawget, tostring, tonumber, select
local string_format, string_byte, string_sub, string_find, string_gsub, string_char =
  string.format, string.byte, string.sub, string.find, string.gsub, string.char
local table_concat, math_huge = table.concat, math.huge

local json = { _version = "0.1.2" }

-- ------------------------------------------------------------------ encode

local ESC = { ["\\"] = "\\\\", ['"'] = '\\"', ["\b"] = "\\b", ["\f"] = "\\f", ["\n"] = "\\n",
  ["\r"] = "\\r", ["\t"] = "\\t" }
for b = 0, 31 do
  local c = string_char(b)
  if not ESC[c] then ESC[c] = string_format("\\u%04x", b) end
end

local encode

local function encode_table(t, seen)
  if seen[t] then error("circular reference") end
  seen[t] = true
  local out = {}
  if rawget(t, 1) ~= nil or next(t) == nil then
    local count = 0
    for k in pairs(t) do
      if type(k) ~= "number" then error("invalid table: mixed or invalid key types") end
      count = count + 1
    end
    if count ~= #t then error("invalid table: sparse array") end
    for i, v in ipairs(t) do out[i] = encode(v, seen) end
    seen[t] = nil
    return "[" .. table_concat(out, ",") .. "]"
  end
  for k, v in pairs(t) do
    if type(k) ~= "string" then error("invalid table: mixed or invalid key types") end
    out[#out + 1] = encode(k, seen) .. ":" .. encode(v, seen)
  end
  seen[t] = nil
  return "{" .. table_concat(out, ",") .. "}"
end

function encode(v, seen)
  local t = type(v)
  if t == "string" then
    return '"' .. string_gsub(v, '[\0-\31\\"]', ESC) .. '"'
  elseif t == "number" then
    if v ~= v or v <= -math_huge or v >= math_huge then
      error("unexpected number value '" .. tostring(v) .. "'")
    end
    return string_format("%.14g", v)
  elseif t == "table" then
    return encode_table(v, seen)
  elseif t == "boolean" then
    return tostring(v)
  elseif t == "nil" then
    return "null"
  end
  error("unexpected type '" .. t .. "'")
end

function json.encode(v)
  return (encode(v, {}))
end

-- ------------------------------------------------------------------ decode

local UNESC = { ["\\"] = "\\", ["/"] = "/", ['"'] = '"', b = "\b", f = "\f", n = "\n", r = "\r", t = "\t" }

local function fail(s, idx, msg)
  local line, col = 1, 1
  for i = 1, idx - 1 do
    col = col + 1
    if string_byte(s, i) == 10 then line = line + 1; col = 1 end
  end
  error(string_format("%s at line %d col %d", msg, line, col))
end

-- (Byte loops, not patterns: the sandbox bounds patterns with repetitions on long subjects.)
local SPACE = { [32] = true, [9] = true, [13] = true, [10] = true }
local DELIM = { [32] = true, [9] = true, [13] = true, [10] = true, [93] = true, [125] = true, [44] = true }

local function skip_space(s, i)
  local b = string_byte(s, i)
  while b and SPACE[b] do i = i + 1; b = string_byte(s, i) end
  return i
end

local function utf8_of(n)
  if n <= 0x7f then return string_char(n) end
  if n <= 0x7ff then return string_char(0xc0 | (n >> 6), 0x80 | (n & 0x3f)) end
  if n <= 0xffff then
    return string_char(0xe0 | (n >> 12), 0x80 | ((n >> 6) & 0x3f), 0x80 | (n & 0x3f))
  end
  if n <= 0x10ffff then
    return string_char(0xf0 | (n >> 18), 0x80 | ((n >> 12) & 0x3f), 0x80 | ((n >> 6) & 0x3f), 0x80 | (n & 0x3f))
  end
  error(string_format("invalid unicode codepoint '%x'", n))
end

local parse

local function is_hex(s, from, to)
  for k = from, to do
    local b = string_byte(s, k)
    if not b or not ((b >= 48 and b <= 57) or (b >= 65 and b <= 70) or (b >= 97 and b <= 102)) then
      return false
    end
  end
  return true
end

-- One pass over the string; errors point where rxi's do (the backslash for escapes).
local function parse_string(s, i)
  local out, n = {}, 0
  local j, k = i + 1, i + 1      -- k: start of the pending run of plain bytes
  local len = #s
  while j <= len do
    local x = string_byte(s, j)
    if x < 32 then
      fail(s, j, "control character in string")
    elseif x == 92 then
      n = n + 1; out[n] = string_sub(s, k, j - 1)
      local c = string_sub(s, j + 1, j + 1)
      if c == "u" then
        local b1 = string_byte(s, j + 2)
        local b2 = string_byte(s, j + 3)
        local pair = (b1 == 100 or b1 == 68) and b2 and ((b2 >= 56 and b2 <= 57) or (b2 >= 97 and b2 <= 98) or (b2 >= 65 and b2 <= 66))
          and is_hex(s, j + 4, j + 5) and string_sub(s, j + 6, j + 7) == "\\u" and is_hex(s, j + 8, j + 11)
        if pair then
          local hi, lo = tonumber(string_sub(s, j + 2, j + 5), 16), tonumber(string_sub(s, j + 8, j + 11), 16)
          n = n + 1; out[n] = utf8_of((hi - 0xd800) * 0x400 + (lo - 0xdc00) + 0x10000)
          j = j + 11
        elseif is_hex(s, j + 2, j + 5) then
          n = n + 1; out[n] = utf8_of(tonumber(string_sub(s, j + 2, j + 5), 16))
          j = j + 5
        else
          fail(s, j, "invalid unicode escape in string")
        end
      else
        local r = UNESC[c]
        if not r then fail(s, j, "invalid escape char '" .. c .. "' in string") end
        n = n + 1; out[n] = r
        j = j + 1
      end
      k = j + 1
    elseif x == 34 then
      n = n + 1; out[n] = string_sub(s, k, j - 1)
      return table_concat(out), j + 1
    end
    j = j + 1
  end
  fail(s, i, "expected closing quote for string")
end

-- A number or literal runs up to the next delimiter (space, `]`, `}`, `,`).
local function parse_word(s, i)
  local j = i
  local b = string_byte(s, j)
  while b and not DELIM[b] do j = j + 1; b = string_byte(s, j) end
  return string_sub(s, i, j - 1), j
end

local function parse_number(s, i)
  local word, nxt = parse_word(s, i)
  local v = tonumber(word)
  if not v then fail(s, i, "invalid number '" .. word .. "'") end
  return v, nxt
end

local LITERALS = { ["true"] = true, ["false"] = false }

local function parse_literal(s, i)
  local word, nxt = parse_word(s, i)
  if word ~= "true" and word ~= "false" and word ~= "null" then
    fail(s, i, "invalid literal '" .. word .. "'")
  end
  return LITERALS[word], nxt
end

local function parse_array(s, i)
  local arr, n = {}, 0
  i = i + 1
  while true do
    i = skip_space(s, i)
    if string_sub(s, i, i) == "]" then return arr, i + 1 end
    local v
    v, i = parse(s, i)
    n = n + 1
    arr[n] = v
    i = skip_space(s, i)
    local c = string_sub(s, i, i)
    i = i + 1
    if c == "]" then return arr, i end
    if c ~= "," then fail(s, i, "expected ']' or ','") end
  end
end

local function parse_object(s, i)
  local obj = {}
  i = i + 1
  while true do
    i = skip_space(s, i)
    if string_sub(s, i, i) == "}" then return obj, i + 1 end
    if string_sub(s, i, i) ~= '"' then fail(s, i, "expected string for key") end
    local key, v
    key, i = parse(s, i)
    i = skip_space(s, i)
    if string_sub(s, i, i) ~= ":" then fail(s, i, "expected ':' after key") end
    i = skip_space(s, i + 1)
    v, i = parse(s, i)
    obj[key] = v
    i = skip_space(s, i)
    local c = string_sub(s, i, i)
    i = i + 1
    if c == "}" then return obj, i end
    if c ~= "," then fail(s, i, "expected '}' or ','") end
  end
end

local STARTERS = { ['"'] = parse_string, ["-"] = parse_number, t = parse_literal, f = parse_literal,
  n = parse_literal, ["["] = parse_array, ["{"] = parse_object }
for d = 0, 9 do STARTERS[tostring(d)] = parse_number end

function parse(s, i)
  local c = string_sub(s, i, i)
  local f = STARTERS[c]
  if f then return f(s, i) end
  fail(s, i, "unexpected character '" .. c .. "'")
end

function json.decode(s)
  if type(s) ~= "string" then
    error("expected argument of type string, got " .. type(s))
  end
  local v, i = parse(s, skip_space(s, 1))
  i = skip_space(s, i)
  if i <= #s then fail(s, i, "trailing garbage") end
  return v
end

return json
