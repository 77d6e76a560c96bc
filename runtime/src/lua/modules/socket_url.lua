-- `socket.url` for mailpush: a pure-Lua emulation of LuaSocket's URL 1.0.3 (escape, unescape,
-- parse, build, absolute, parse_path, build_path), with the same outputs, including its
-- quirks (lower-case hex in escape, upper-case in build_path, `+` left alone by unescape,
-- port as a string, the fragment/query/params split order and its dot-segment rewriting).
-- Loaded as chunk(H) (H is unused).
local type, pairs, ipairs, tostring, tonumber = type, pairs, ipairs, tostring, tonumber
local string_format, string_byte, string_char, string_gsub, string_match, string_find, string_sub =
  string.format, string.byte, string.char, string.gsub, string.match, string.find, string.sub

local url = { _VERSION = "URL 1.0.3" }

-- Every byte other than [A-Za-z0-9_] becomes %xx (lower-case hex).
function url.escape(s)
  return (string_gsub(s, "[^A-Za-z0-9_]", function(c)
    return string_format("%%%02x", string_byte(c))
  end))
end

-- %XX (either case) becomes the byte; nothing else changes.
function url.unescape(s)
  return (string_gsub(s, "%%(%x%x)", function(h)
    return string_char(tonumber(h, 16))
  end))
end

-- Characters allowed unescaped in a path segment besides [A-Za-z0-9_].
local SEGMENT_SAFE = {}
for c in ("-_.!~*'():@&=+$,"):gmatch(".") do SEGMENT_SAFE[c] = true end

local function protect_segment(s)
  return (string_gsub(s, "[^A-Za-z0-9_]", function(c)
    if SEGMENT_SAFE[c] then return c end
    return string_format("%%%02X", string_byte(c))
  end))
end

-- The sandbox bounds Lua patterns by (subject length)^(repetitions+1), so the scanning below
-- uses plain finds and byte loops: long URLs stay cheap and are never refused.

local function find_plain(s, what, init)
  return string_find(s, what, init, true)
end

local function last_index(s, ch)
  local last, at = nil, find_plain(s, ch, 1)
  while at do last = at; at = find_plain(s, ch, at + 1) end
  return last
end

-- Dot-segment removal with the exact results of URL 1.0.3, whose rewrite rules are, in order:
--   1. every empty segment ("//") gets a \1 marker, so the rules below leave it alone;
--   2. "/./" -> "/", repeatedly;
--   3. "<seg>/../<next>" -> "<next>", leftmost first, repeatedly (<seg>, <next> non-empty);
--   4. a trailing "<seg>/.." (plus any slashes) is removed;
--   5. a trailing "/.." -> "/";  6. a trailing "/." -> "/";  7. a leading "/../" -> "/";
--   8. the markers are removed.
local MARK = "\1"
local SLASH = 47

local function remove_dot_components(path)
  -- 1
  if find_plain(path, "//", 1) then
    local out, prev = {}, nil
    for k = 1, #path do
      local b = string_byte(path, k)
      if b == SLASH and prev == SLASH then out[#out + 1] = MARK end
      out[#out + 1] = string_char(b)
      prev = b
    end
    path = table.concat(out)
  end
  -- 2
  local at = find_plain(path, "/./", 1)
  while at do
    path = string_sub(path, 1, at) .. string_sub(path, at + 3)
    at = find_plain(path, "/./", at)
  end
  -- 3
  local from = 1
  while true do
    local changed = false
    local p = from
    while p <= #path do
      local slash = find_plain(path, "/", p)
      local q = (slash or #path + 1) - 1          -- segment is path[p..q]
      if q >= p and string_sub(path, q + 1, q + 4) == "/../" then
        local ns = q + 5
        local nb = string_byte(path, ns)
        if nb and nb ~= SLASH then
          local ne = (find_plain(path, "/", ns) or #path + 1) - 1
          path = string_sub(path, 1, p - 1) .. string_sub(path, ns, ne) .. string_sub(path, ne + 1)
          changed = true
          break
        end
      end
      if not slash then break end
      p = slash + 1
    end
    if not changed then break end
  end
  -- 4
  local e = #path
  while e > 0 and string_byte(path, e) == SLASH do e = e - 1 end
  if e >= 4 and string_sub(path, e - 2, e) == "/.." and string_byte(path, e - 3) ~= SLASH then
    local segstart = 1
    local prev = last_index(string_sub(path, 1, e - 3), "/")
    if prev then segstart = prev + 1 end
    path = string_sub(path, 1, segstart - 1)
  end
  -- 5, 6, 7
  if string_sub(path, -3) == "/.." then
    path = string_sub(path, 1, -3)
  elseif string_sub(path, -2) == "/." then
    path = string_sub(path, 1, -2)
  end
  if string_sub(path, 1, 4) == "/../" then path = string_sub(path, 4) end
  -- 8
  return (string_gsub(path, MARK, ""))
end

local function absolute_path(base_path, relative_path)
  if string_sub(relative_path, 1, 1) == "/" then
    return remove_dot_components(relative_path)
  end
  local slash = last_index(base_path, "/")
  base_path = slash and string_sub(base_path, 1, slash) or "/"
  return remove_dot_components(base_path .. relative_path)
end

local function is_alnum(b)
  return b and ((b >= 48 and b <= 57) or (b >= 65 and b <= 90) or (b >= 97 and b <= 122))
end

-- parse(url [, default]) -> table of parts, or nil, "invalid url".
-- Order as URL 1.0.3: scheme, //authority, #fragment, ?query, ;params, the rest is the path.
function url.parse(u, default)
  local parsed = {}
  for k, v in pairs(default or parsed) do parsed[k] = v end
  if not u or u == "" then return nil, "invalid url" end
  local rest = tostring(u)
  -- scheme: [%w][%w+-.]*:
  if is_alnum(string_byte(rest, 1)) then
    local k = 2
    local b = string_byte(rest, k)
    while is_alnum(b) or b == 43 or b == 45 or b == 46 do k = k + 1; b = string_byte(rest, k) end
    if b == 58 then
      parsed.scheme = string_sub(rest, 1, k - 1)
      rest = string_sub(rest, k + 1)
    end
  end
  -- authority: //[^/?#]*
  if string_sub(rest, 1, 2) == "//" then
    local e = #rest + 1
    for _, ch in ipairs { "/", "?", "#" } do
      local at = find_plain(rest, ch, 3)
      if at and at < e then e = at end
    end
    parsed.authority = string_sub(rest, 3, e - 1)
    rest = string_sub(rest, e)
  end
  for _, part in ipairs { { "#", "fragment" }, { "?", "query" }, { ";", "params" } } do
    local at = find_plain(rest, part[1], 1)
    if at then
      parsed[part[2]] = string_sub(rest, at + 1)
      rest = string_sub(rest, 1, at - 1)
    end
  end
  if rest ~= "" then parsed.path = rest end
  local authority = parsed.authority
  if not authority then return parsed end
  local at = find_plain(authority, "@", 1)
  if at then
    parsed.userinfo = string_sub(authority, 1, at - 1)
    authority = string_sub(authority, at + 1)
  end
  local colon = last_index(authority, ":")
  if colon and not find_plain(authority, "]", colon + 1) then
    parsed.port = string_sub(authority, colon + 1)
    authority = string_sub(authority, 1, colon - 1)
  end
  if authority ~= "" then
    if #authority >= 3 and string_sub(authority, 1, 1) == "[" and string_sub(authority, -1) == "]" then
      parsed.host = string_sub(authority, 2, -2)  -- IPv6 literal
    else
      parsed.host = authority
    end
  end
  local userinfo = parsed.userinfo
  if not userinfo then return parsed end
  colon = last_index(userinfo, ":")
  if colon then
    parsed.password = string_sub(userinfo, colon + 1)
    userinfo = string_sub(userinfo, 1, colon - 1)
  end
  parsed.user = userinfo
  return parsed
end

-- build(parts) -> url string (the inverse of parse).
function url.build(p)
  local out = p.path or ""
  if p.params then out = out .. ";" .. p.params end
  if p.query then out = out .. "?" .. p.query end
  local authority = p.authority
  if p.host then
    authority = p.host
    if find_plain(authority, ":", 1) then authority = "[" .. authority .. "]" end
    if p.port then authority = authority .. ":" .. tostring(p.port) end
    local userinfo = p.userinfo
    if p.user then
      userinfo = p.user
      if p.password then userinfo = userinfo .. ":" .. p.password end
    end
    if userinfo then authority = userinfo .. "@" .. authority end
  end
  if authority then out = "//" .. authority .. out end
  if p.scheme then out = p.scheme .. ":" .. out end
  if p.fragment then out = out .. "#" .. p.fragment end
  return out
end

-- absolute(base, relative): resolves a relative URL; base may be a string or a parts table.
function url.absolute(base_url, relative_url)
  local base
  if type(base_url) == "table" then
    base = base_url
    base_url = url.build(base)
  else
    base = url.parse(base_url)
  end
  local rel = url.parse(relative_url)
  local result
  if not base then
    result = relative_url
  elseif not rel then
    result = base_url
  elseif rel.scheme then
    result = relative_url
  else
    rel.scheme = base.scheme
    if not rel.authority then
      rel.authority = base.authority
      if not rel.path then
        rel.path = base.path
        if not rel.params then
          rel.params = base.params
          if not rel.query then rel.query = base.query end
        end
      else
        rel.path = absolute_path(base.path or "", rel.path)
      end
    end
    result = url.build(rel)
  end
  return remove_dot_components(result)
end

-- parse_path(path) -> array of unescaped segments, with is_absolute / is_directory flags.
function url.parse_path(path)
  local parsed = {}
  path = path or ""
  local p = 1
  while p <= #path do
    local slash = find_plain(path, "/", p) or #path + 1
    if slash > p then parsed[#parsed + 1] = url.unescape(string_sub(path, p, slash - 1)) end
    p = slash + 1
  end
  if string_sub(path, 1, 1) == "/" then parsed.is_absolute = 1 end
  if string_sub(path, -1, -1) == "/" then parsed.is_directory = 1 end
  return parsed
end

-- build_path(segments [, unsafe]) -> path; segments are escaped unless unsafe is true.
function url.build_path(parsed, unsafe)
  local n = #parsed
  local parts = {}
  for i = 1, n do
    parts[i] = unsafe and parsed[i] or protect_segment(parsed[i])
  end
  local path = table.concat(parts, "/")
  if n > 0 and parsed.is_directory then path = path .. "/" end
  if parsed.is_absolute then path = "/" .. path end
  return path
end

return url
