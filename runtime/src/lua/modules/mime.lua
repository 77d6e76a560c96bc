-- `mime` for mailpush: only LuaSocket mime's b64 and unb64, for a single full call
-- (mime.b64(s) / mime.unb64(s) -> result, nil). Loaded as chunk(H); uses H.b64encode and
-- H.b64decode.
-- Like mime: nil input gives nil, nil; an empty result gives nil, nil; unb64 ignores bytes
-- outside the base64 alphabet and drops an incomplete trailing group.
-- Deliberate difference: the two-argument streaming form (mime.b64(C, D)) is not provided
-- beyond concatenating C and D; the filters (mime.encode/decode/wrap/normalize) are absent.
local H = ...
local type, tostring, error = type, tostring, error
local string_gsub, string_sub = string.gsub, string.sub

local mime = { _VERSION = "MIME 1.0.3" }

local function check(s, fname, n)
  if type(s) == "number" then return tostring(s) end
  if type(s) ~= "string" then
    error("bad argument #" .. n .. " to '" .. fname .. "' (string expected, got " .. type(s) .. ")", 3)
  end
  return s
end

function mime.b64(c, d)
  if c == nil then return nil, nil end
  c = check(c, "b64", 1)
  if d ~= nil then c = c .. check(d, "b64", 2) end
  local out = H.b64encode(c)
  if out == "" then return nil, nil end
  return out, nil
end

function mime.unb64(c, d)
  if c == nil then return nil, nil end
  c = check(c, "unb64", 1)
  if d ~= nil then c = c .. check(d, "unb64", 2) end
  c = string_gsub(c, "[^A-Za-z0-9+/=]", "")
  c = string_sub(c, 1, #c - #c % 4)
  local out = H.b64decode(c)
  if out == nil then
    -- mime decodes group by group; keep the groups that decode
    local parts = {}
    for i = 1, #c, 4 do
      parts[#parts + 1] = H.b64decode(string_sub(c, i, i + 3)) or ""
    end
    out = table.concat(parts)
  end
  if out == "" then return nil, nil end
  return out, nil
end

return mime
