-- `cjson` / `cjson.safe` for mailpush: a pure-Lua emulation of openresty lua-cjson 2.1.0.14
-- (the lineage LuaRocks and OpenResty ship). Loaded as chunk(H, mode); mode == "safe" builds
-- `cjson.safe`, whose encode/decode return nil, msg instead of raising.
--
-- Reproduced: output format (no whitespace, integers via %d, floats via %.14g, `/` -> `\/`,
-- control bytes and 0x7f as lower-case \u00xx), array/object detection and the sparse-array
-- rule, cjson.null, empty_array, array_mt, empty_array_mt, __len tables, depth limits, the
-- config setters (each returns the current setting(s)), decode with integer subtypes, and the
-- error messages.
-- Deliberate differences:
--   * cjson.null is H.null (the NULL light userdata, as in C). cjson.empty_array cannot be a
--     second light userdata from Lua, so it is a unique empty table (frozen by a metatable);
--     it still encodes as `[]`, but type(cjson.empty_array) is "table", not "userdata".
--   * Decoding an integer token that does not fit in 64 bits gives a float, where C's strtoll
--     would saturate at +/-9223372036854775807.
--   * encode_keep_buffer is accepted and reported but has no effect.
--   * cjson.safe re-raises errors that are not strings (the sandbox's budget errors) and
--     "not enough memory", so a runaway script cannot swallow them.
local H, mode = ...
local type, error, pcall, select, next, ipairs, rawget, rawlen, rawequal, tostring, tonumber =
  type, error, pcall, select, next, ipairs, rawget, rawlen, rawequal, tostring, tonumber
local setmetatable, getmetatable = setmetatable, getmetatable
local math_type, math_floor, math_huge, math_tointeger = math.type, math.floor, math.huge, math.tointeger
local string_format, string_byte, string_sub, string_find, string_gsub, string_rep, string_char =
  string.format, string.byte, string.sub, string.find, string.gsub, string.rep, string.char
local table_concat, utf8_char = table.concat, utf8.char

local NULL = H.null
local INT_MAX = 2147483647

-- Shared by every instance, like the registry entries of the C module.
local array_mt = {}
local empty_array_mt = {}
local empty_array = setmetatable({}, {
  __newindex = function() error("cjson.empty_array is read-only", 2) end,
  __metatable = false,
})

local function argerror(n, fname, msg)
  error(string_format("bad argument #%d to '%s' (%s)", n, fname, msg), 0)
end

-- ------------------------------------------------------------------ encoding

local ESCAPES = { ['"'] = '\\"', ["\\"] = "\\\\", ["/"] = "\\/", ["\b"] = "\\b", ["\t"] = "\\t",
  ["\n"] = "\\n", ["\f"] = "\\f", ["\r"] = "\\r" }
for b = 0, 31 do
  local c = string_char(b)
  if not ESCAPES[c] then ESCAPES[c] = string_format("\\u%04x", b) end
end
ESCAPES["\127"] = "\\u007f"

local function encode_string(s, cfg)
  -- %c is exactly 0x00-0x1f and 0x7f
  local pat = cfg.escape_slash and '[%c"\\/]' or '[%c"\\]'
  return '"' .. string_gsub(s, pat, ESCAPES) .. '"'
end

local function encode_number(n, cfg)
  if math_type(n) == "integer" then return string_format("%d", n) end
  if n ~= n or n == math_huge or n == -math_huge then
    local inv = cfg.encode_invalid_numbers
    if inv == 0 then
      error("Cannot serialise number: must not be NaN or Infinity", 0)
    elseif inv == 2 then
      return "null"
    elseif n ~= n then
      return "NaN"
    end
    return n > 0 and "Infinity" or "-Infinity"
  end
  return string_format(cfg.number_fmt, n)
end

-- Length of the table as an array, or nil if it must be an object (sparse rule included).
local function array_length(t, cfg)
  local max, items = 0, 0
  for k in next, t do
    if type(k) == "number" and k >= 1 and k < math_huge and math_floor(k) == k then
      if k > max then max = k end
      items = items + 1
    else
      return nil
    end
  end
  local ratio = cfg.sparse_ratio
  if ratio > 0 and max > items * ratio and max > cfg.sparse_safe then
    if not cfg.sparse_convert then
      error("Cannot serialise table: excessively sparse array", 0)
    end
    return nil
  end
  return math_tointeger(max) or max
end

local encode_value

local function newline(buf, cfg, depth)
  if cfg.indent ~= "" then
    buf[#buf + 1] = "\n" .. string_rep(cfg.indent, depth)
  end
end

local function encode_array(t, n, raw, cfg, depth, buf)
  buf[#buf + 1] = "["
  local first = true
  for i = 1, n do
    local v
    if raw then v = rawget(t, i) else v = t[i] end
    local mark = #buf
    if not first then buf[#buf + 1] = "," end
    newline(buf, cfg, depth)
    if encode_value(v, cfg, depth, buf) == false then
      for j = #buf, mark + 1, -1 do buf[j] = nil end  -- skipped unsupported value
    else
      first = false
    end
  end
  if not first then newline(buf, cfg, depth - 1) end
  buf[#buf + 1] = "]"
end

local function encode_object(t, cfg, depth, buf)
  buf[#buf + 1] = "{"
  local first = true
  local colon = cfg.indent ~= "" and ": " or ":"
  for k, v in next, t do
    local mark = #buf
    if not first then buf[#buf + 1] = "," end
    newline(buf, cfg, depth)
    local kt = type(k)
    if kt == "string" then
      buf[#buf + 1] = encode_string(k, cfg)
    elseif kt == "number" then
      buf[#buf + 1] = '"' .. encode_number(k, cfg) .. '"'
    else
      error("Cannot serialise " .. kt .. ": table key must be a number or string", 0)
    end
    buf[#buf + 1] = colon
    if encode_value(v, cfg, depth, buf) == false then
      for j = #buf, mark + 1, -1 do buf[j] = nil end
    else
      first = false
    end
  end
  if not first then newline(buf, cfg, depth - 1) end
  buf[#buf + 1] = "}"
end

-- Appends the encoding of v to buf. Returns false when v was skipped
-- (encode_skip_unsupported_value_types).
function encode_value(v, cfg, depth, buf)
  local vt = type(v)
  if vt == "string" then
    buf[#buf + 1] = encode_string(v, cfg)
  elseif vt == "number" then
    buf[#buf + 1] = encode_number(v, cfg)
  elseif vt == "boolean" then
    buf[#buf + 1] = v and "true" or "false"
  elseif vt == "nil" or rawequal(v, NULL) then
    buf[#buf + 1] = "null"
  elseif rawequal(v, empty_array) then
    buf[#buf + 1] = "[]"
  elseif vt == "table" then
    depth = depth + 1
    if depth > cfg.encode_max_depth then
      error(string_format("Cannot serialise, excessive nesting (%d)", depth), 0)
    end
    local mt = getmetatable(v)
    if rawequal(mt, array_mt) then
      encode_array(v, rawlen(v), true, cfg, depth, buf)
    elseif type(mt) == "table" and rawget(mt, "__len") ~= nil then
      local n = #v
      encode_array(v, math_type(n) == "integer" and n or (tonumber(n) or 0) // 1, false, cfg, depth, buf)
    else
      local n = array_length(v, cfg)
      if n and (n > 0 or not cfg.empty_table_as_object) then
        encode_array(v, n, true, cfg, depth, buf)
      elseif n == 0 and rawequal(mt, empty_array_mt) then
        buf[#buf + 1] = "[]"
      else
        encode_object(v, cfg, depth, buf)
      end
    end
  elseif cfg.skip_unsupported then
    return false
  else
    error("Cannot serialise " .. vt .. ": type not supported", 0)
  end
  return true
end

-- ------------------------------------------------------------------ decoding

local ESCAPE_CHARS = { ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t" }
local SINGLE_TOKENS = { ["{"] = "T_OBJ_BEGIN", ["}"] = "T_OBJ_END", ["["] = "T_ARR_BEGIN", ["]"] = "T_ARR_END",
  [","] = "T_COMMA", [":"] = "T_COLON" }

-- A decoder state: s (the text), pos (1-based index of the next byte), cfg, depth.
-- Tokens are returned as: kind, value, index (1-based position where the token starts,
-- or where the error was found for kind "T_ERROR", with value = the error text).

local function hex4(s, i)
  local h = string_sub(s, i, i + 3)
  if #h == 4 and not string_find(h, "[^%x]") then return tonumber(h, 16) end
  return nil
end

-- The sandbox bounds Lua patterns by (subject length)^(repetitions+1), so scanning inside a
-- long JSON text uses byte loops rather than patterns with repetitions.
local DIGIT, HEX = {}, {}
for b = 48, 57 do DIGIT[b] = true; HEX[b] = true end
for b = 65, 70 do HEX[b] = true; HEX[b + 32] = true end

-- Index just past the run of bytes of `set` starting at i.
local function run_end(s, i, set)
  local b = string_byte(s, i)
  while b and set[b] do i = i + 1; b = string_byte(s, i) end
  return i
end

-- Emulates strtod(): returns the number and the index after it, or nil.
local function scan_strtod(s, i)
  local b = string_byte(s, i)
  local neg = b == 45
  local j = (b == 43 or b == 45) and i + 1 or i
  -- hexadecimal: 0x<hex>[.<hex>][p<exp>]
  local x = string_byte(s, j + 1)
  if string_byte(s, j) == 48 and (x == 120 or x == 88) then
    local ie = run_end(s, j + 2, HEX)
    local fs, fe = ie, ie
    if string_byte(s, ie) == 46 then fs = ie + 1; fe = run_end(s, fs, HEX) end
    if ie == j + 2 and fe == fs then  -- no hex digits: only the "0" is a number
      return neg and -0.0 or 0.0, j + 1
    end
    local v = 0.0
    for k = j + 2, ie - 1 do v = v * 16 + tonumber(string_sub(s, k, k), 16) end
    local scale = 1 / 16
    for k = fs, fe - 1 do v = v + tonumber(string_sub(s, k, k), 16) * scale; scale = scale / 16 end
    local e = fe
    local p = string_byte(s, e)
    if p == 112 or p == 80 then
      local es = e + 1
      local sb = string_byte(s, es)
      if sb == 43 or sb == 45 then es = es + 1 end
      local ee = run_end(s, es, DIGIT)
      if ee > es then
        v = v * 2.0 ^ tonumber(string_sub(s, e + 1, ee - 1))
        e = ee
      end
    end
    return neg and -v or v, e
  end
  -- infinity / nan (any case)
  local word = string.lower(string_sub(s, j, j + 7))
  if word == "infinity" then
    return neg and -math_huge or math_huge, j + 8
  elseif string_sub(word, 1, 3) == "inf" then
    return neg and -math_huge or math_huge, j + 3
  elseif string_sub(word, 1, 3) == "nan" then
    return 0.0 / 0.0, j + 3
  end
  -- decimal: digits [. digits] (at least one digit) [e[+-]digits]
  local ie = run_end(s, j, DIGIT)
  local e, ndig = ie, ie - j
  if string_byte(s, e) == 46 then
    local fe = run_end(s, e + 1, DIGIT)
    ndig = ndig + (fe - e - 1)
    e = fe
  end
  if ndig == 0 then return nil end
  local eb = string_byte(s, e)
  if eb == 101 or eb == 69 then
    local es = e + 1
    local sb = string_byte(s, es)
    if sb == 43 or sb == 45 then es = es + 1 end
    local ee = run_end(s, es, DIGIT)
    if ee > es then e = ee end
  end
  return tonumber(string_sub(s, j, e - 1)) * (neg and -1.0 or 1.0), e
end

-- JSON-strict check used when decode_invalid_numbers is off (and to route I/N/+ tokens).
local function is_invalid_number(s, i)
  local c = string_byte(s, i)
  if c == 43 then return true end
  if c == 45 then i = i + 1; c = string_byte(s, i) end
  if c == 48 then
    local c2 = string_byte(s, i + 1)
    return c2 == 120 or c2 == 88 or (c2 ~= nil and DIGIT[c2] == true)
  elseif c == nil or c <= 57 then
    return false
  end
  local w = string.lower(string_sub(s, i, i + 2))
  return w == "inf" or w == "nan"
end

local function number_token(st, i)
  local s = st.s
  -- integer rule: what strtoll would consume, not followed by . e E x
  local b = string_byte(s, i)
  local ds = (b == 43 or b == 45) and i + 1 or i
  local de = run_end(s, ds, DIGIT)
  if de > ds then
    local nc = string_byte(s, de)
    if nc ~= 46 and nc ~= 101 and nc ~= 69 and nc ~= 120 then
      st.pos = de
      -- out of int64 range: tonumber gives a float (documented)
      return "T_INTEGER", tonumber(string_sub(s, b == 43 and i + 1 or i, de - 1)), i
    end
  end
  local v, e = scan_strtod(s, i)
  if not v then return "T_ERROR", "invalid number", i end
  st.pos = e
  return "T_NUMBER", v, i
end

local function string_token(st, i)
  local s = st.s
  local parts, np = {}, 0
  local p = i + 1
  while true do
    local q = string_find(s, '["\\\0]', p)
    if not q then
      return "T_ERROR", "unexpected end of string", #s + 1
    end
    if q > p then np = np + 1; parts[np] = string_sub(s, p, q - 1) end
    local c = string_sub(s, q, q)
    if c == '"' then
      st.pos = q + 1
      return "T_STRING", table_concat(parts), i
    elseif c == "\0" then
      return "T_ERROR", "unexpected end of string", q
    end
    -- backslash
    local e = string_sub(s, q + 1, q + 1)
    if e == "u" then
      local cp = hex4(s, q + 2)
      local len = 6
      if cp and cp & 0xF800 == 0xD800 then
        local lo = (cp & 0x400 == 0) and string_sub(s, q + 6, q + 7) == "\\u" and hex4(s, q + 8)
        if lo and lo & 0xFC00 == 0xDC00 then
          cp = (((cp & 0x3FF) << 10) | (lo & 0x3FF)) + 0x10000
          len = 12
        else
          cp = nil
        end
      end
      if not cp then return "T_ERROR", "invalid unicode escape code", q end
      np = np + 1; parts[np] = utf8_char(cp)
      p = q + len
    else
      local r = ESCAPE_CHARS[e]
      if not r then return "T_ERROR", "invalid escape code", q end
      np = np + 1; parts[np] = r
      p = q + 2
    end
  end
end

local function next_token(st)
  local s = st.s
  local i = st.pos
  local c = string_byte(s, i)
  while c == 32 or c == 9 or c == 10 or c == 13 do i = i + 1; c = string_byte(s, i) end
  st.pos = i
  c = string_sub(s, i, i)
  if c == "" or c == "\0" then return "T_END", nil, i end
  local single = SINGLE_TOKENS[c]
  if single then st.pos = i + 1; return single, nil, i end
  if c == '"' then return string_token(st, i) end
  if c == "-" or DIGIT[string_byte(c)] then
    if not st.cfg.decode_invalid_numbers and is_invalid_number(s, i) then
      return "T_ERROR", "invalid number", i
    end
    return number_token(st, i)
  end
  if c == "t" or c == "f" or c == "n" or c == "i" or c == "I" or c == "N" or c == "+" then
    if string_sub(s, i, i + 3) == "true" then st.pos = i + 4; return "T_BOOLEAN", true, i end
    if string_sub(s, i, i + 4) == "false" then st.pos = i + 5; return "T_BOOLEAN", false, i end
    if string_sub(s, i, i + 3) == "null" then st.pos = i + 4; return "T_NULL", nil, i end
    if st.cfg.decode_invalid_numbers and is_invalid_number(s, i) then
      return number_token(st, i)
    end
  end
  return "T_ERROR", "invalid token", i
end

local function parse_error(what, kind, value, index)
  local found = kind == "T_ERROR" and value or kind
  error(string_format("Expected %s but found %s at character %d", what, found, index), 0)
end

local parse_value

local function descend(st)
  st.depth = st.depth + 1
  if st.depth > st.cfg.decode_max_depth then
    -- C reports the 0-based offset just after the opening bracket, i.e. its 1-based position
    error(string_format("Found too many nested data structures (%d) at character %d", st.depth, st.pos - 1), 0)
  end
end

local function parse_object(st)
  descend(st)
  local obj = {}
  local kind, value, index = next_token(st)
  if kind == "T_OBJ_END" then st.depth = st.depth - 1; return obj end
  while true do
    if kind ~= "T_STRING" then parse_error("object key string", kind, value, index) end
    local key = value
    kind, value, index = next_token(st)
    if kind ~= "T_COLON" then parse_error("colon", kind, value, index) end
    obj[key] = parse_value(st, next_token(st))
    kind, value, index = next_token(st)
    if kind == "T_OBJ_END" then st.depth = st.depth - 1; return obj end
    if kind ~= "T_COMMA" then parse_error("comma or object end", kind, value, index) end
    kind, value, index = next_token(st)
  end
end

local function parse_array(st)
  descend(st)
  local arr = {}
  if st.cfg.decode_array_with_array_mt then setmetatable(arr, array_mt) end
  local kind, value, index = next_token(st)
  if kind == "T_ARR_END" then st.depth = st.depth - 1; return arr end
  local n = 0
  while true do
    n = n + 1
    arr[n] = parse_value(st, kind, value, index)
    kind, value, index = next_token(st)
    if kind == "T_ARR_END" then st.depth = st.depth - 1; return arr end
    if kind ~= "T_COMMA" then parse_error("comma or array end", kind, value, index) end
    kind, value, index = next_token(st)
  end
end

function parse_value(st, kind, value, index)
  if kind == "T_STRING" or kind == "T_NUMBER" or kind == "T_INTEGER" or kind == "T_BOOLEAN" then
    return value
  elseif kind == "T_NULL" then
    if st.cfg.decode_json_null then return NULL end
    return nil
  elseif kind == "T_OBJ_BEGIN" then
    return parse_object(st)
  elseif kind == "T_ARR_BEGIN" then
    return parse_array(st)
  end
  parse_error("value", kind, value, index)
end

-- ------------------------------------------------------------------ module

local function new_instance(safe)
  local cfg = {
    sparse_convert = false, sparse_ratio = 2, sparse_safe = 10,
    encode_max_depth = 1000, decode_max_depth = 1000,
    precision = 14, number_fmt = "%.14g",
    encode_invalid_numbers = 0, decode_invalid_numbers = true,
    keep_buffer = true, empty_table_as_object = true,
    decode_array_with_array_mt = false, decode_json_null = true,
    escape_slash = true, skip_unsupported = false, indent = "",
  }
  local M = {}

  local function check_nargs(fname, max, ...)
    local n = select("#", ...)
    if n > max then argerror(max + 1, fname, "found too many arguments") end
  end
  local function int_option(fname, argn, v, key, lo, hi)
    if v ~= nil then
      local iv = math_tointeger(v)
      if iv == nil then
        if type(v) == "number" then argerror(argn, fname, "number has no integer representation") end
        iv = math_tointeger(tonumber(v))
        if iv == nil then argerror(argn, fname, "number expected, got " .. type(v)) end
      end
      if iv < lo or iv > hi then
        argerror(1, fname, string_format("expected integer between %d and %d", lo, hi))  -- C reports #1
      end
      cfg[key] = iv
    end
    return cfg[key]
  end
  -- Enum option; values are stored as 0/1/2 indices into opts, reported as booleans for 0/1.
  local function enum_option(fname, argn, v, current, opts)
    opts = opts or { "off", "on" }
    if v ~= nil then
      if type(v) == "boolean" then
        current = v and 1 or 0
      else
        local sv = (type(v) == "string" or type(v) == "number") and tostring(v) or nil
        if sv == nil then argerror(argn, fname, "string expected, got " .. type(v)) end
        local found
        for idx, name in ipairs(opts) do if name == sv then found = idx - 1 end end
        if found == nil then argerror(argn, fname, "invalid option '" .. sv .. "'") end
        current = found
      end
    end
    return current
  end
  local function as_result(cur, opts)
    if cur == 0 or cur == 1 then return cur == 1 end
    return opts[cur + 1]
  end
  local function bool_setting(fname, key)
    M[fname] = function(...)
      check_nargs(fname, 1, ...)
      local cur = enum_option(fname, 1, (...), cfg[key] and 1 or 0)
      cfg[key] = cur == 1
      return cfg[key]
    end
  end

  function M.encode_sparse_array(...)
    check_nargs("encode_sparse_array", 3, ...)
    local convert, ratio, safe_ = ...
    cfg.sparse_convert = enum_option("encode_sparse_array", 1, convert, cfg.sparse_convert and 1 or 0) == 1
    int_option("encode_sparse_array", 2, ratio, "sparse_ratio", 0, INT_MAX)
    int_option("encode_sparse_array", 3, safe_, "sparse_safe", 0, INT_MAX)
    return cfg.sparse_convert, cfg.sparse_ratio, cfg.sparse_safe
  end
  function M.encode_max_depth(...)
    check_nargs("encode_max_depth", 1, ...)
    return int_option("encode_max_depth", 1, (...), "encode_max_depth", 1, INT_MAX)
  end
  function M.decode_max_depth(...)
    check_nargs("decode_max_depth", 1, ...)
    return int_option("decode_max_depth", 1, (...), "decode_max_depth", 1, INT_MAX)
  end
  function M.encode_number_precision(...)
    check_nargs("encode_number_precision", 1, ...)
    local p = int_option("encode_number_precision", 1, (...), "precision", 1, 16)
    cfg.number_fmt = "%." .. p .. "g"
    return p
  end
  function M.encode_invalid_numbers(...)
    check_nargs("encode_invalid_numbers", 1, ...)
    local opts = { "off", "on", "null" }
    cfg.encode_invalid_numbers = enum_option("encode_invalid_numbers", 1, (...), cfg.encode_invalid_numbers, opts)
    return as_result(cfg.encode_invalid_numbers, opts)
  end
  bool_setting("decode_invalid_numbers", "decode_invalid_numbers")
  bool_setting("encode_keep_buffer", "keep_buffer")
  bool_setting("encode_empty_table_as_object", "empty_table_as_object")
  bool_setting("decode_array_with_array_mt", "decode_array_with_array_mt")
  bool_setting("decode_json_null", "decode_json_null")
  bool_setting("encode_escape_forward_slash", "escape_slash")
  bool_setting("encode_skip_unsupported_value_types", "skip_unsupported")
  function M.encode_indent(...)
    check_nargs("encode_indent", 1, ...)
    local v = ...
    if v ~= nil then
      if type(v) ~= "string" and type(v) ~= "number" then
        argerror(1, "encode_indent", "string expected, got " .. type(v))
      end
      v = tostring(v)
      if string_find(v, "[^ \t]") then argerror(1, "encode_indent", "invalid indent, only spaces and tabs allowed") end
      cfg.indent = v
    end
    return cfg.indent
  end

  local function encode(...)
    if select("#", ...) ~= 1 then argerror(1, "encode", "expected 1 argument") end
    local buf = {}
    encode_value((...), cfg, 0, buf)
    return table_concat(buf)
  end

  local function decode(...)
    if select("#", ...) ~= 1 then argerror(1, "decode", "expected 1 argument") end
    local s = ...
    if type(s) == "number" then
      s = tostring(s)
    elseif type(s) ~= "string" then
      argerror(1, "decode", "string expected, got " .. type(s))
    end
    if #s >= 2 and (string_byte(s, 1) == 0 or string_byte(s, 2) == 0) then
      error("JSON parser does not support UTF-16 or UTF-32", 0)
    end
    local st = { s = s, pos = 1, cfg = cfg, depth = 0 }
    local v = parse_value(st, next_token(st))
    local kind, value, index = next_token(st)
    if kind ~= "T_END" then parse_error("the end", kind, value, index) end
    return v
  end

  if safe then
    local function protect(f, fname)
      local function finish(ok, ...)
        if ok then return ... end
        local err = ...
        -- budget errors (not strings) and memory exhaustion stay fatal, as in C
        if type(err) ~= "string" or err == "not enough memory" then error(err, 0) end
        return nil, err
      end
      return function(...)
        if select("#", ...) ~= 1 then argerror(1, fname, "expected 1 argument") end
        return finish(pcall(f, ...))
      end
    end
    M.encode, M.decode = protect(encode, "encode"), protect(decode, "decode")
  else
    M.encode, M.decode = encode, decode
  end
  M.new = function() return new_instance(safe) end
  M.null = NULL
  M.empty_array = empty_array
  M.array_mt = array_mt
  M.empty_array_mt = empty_array_mt
  M._NAME = "cjson"
  M._VERSION = "2.1.0.14"
  return M
end

return new_instance(mode == "safe")
