-- `socket.http` for mailpush: LuaSocket 3.x's HTTP client API (src/http.lua) on top of the
-- host's HTTP primitive. Loaded as chunk(H); uses H.http and H.b64encode.
--
-- Reproduced: request(url [, body]) -> body, code, headers, status and
-- request{...} -> 1, code, headers, status; nil, err on failure (socket.protect); TIMEOUT,
-- USERAGENT; the default headers (user-agent, host, connection, te) with the caller's headers
-- lower-cased and merged over them; Basic auth from the URL's userinfo; explicit url parts
-- overriding the parsed URL; redirects (301/302/303/307, GET/HEAD without a source, at most
-- maxredirects, redirect=false disables, no https->http, the location hint in the headers);
-- response headers lower-cased with repeats joined by ", "; no body for HEAD/204/304/1xx;
-- the response body fed to the sink in ltn12.BLOCKSIZE chunks through `step`.
-- Deliberate differences:
--   * The request body from `source` is collected first and sent with a Content-Length (no
--     chunked upload); a caller's content-length is replaced by the real length.
--   * `status` is rebuilt as "HTTP/1.1 <code> <reason>" from the host's reply.
--   * `proxy` / http.PROXY give nil, "proxy not supported"; `create` is ignored (there are no
--     raw sockets); the low-level http.open API is absent.
--   * Headers are sent in a stable (sorted) order, with LuaSocket's canonical capitalisation
--     for well-known names.
local H = ...
local socket = require("socket")
local url = require("socket.url")
local ltn12 = require("ltn12")

local type, error, pairs, ipairs, tostring, tonumber, setmetatable =
  type, error, pairs, ipairs, tostring, tonumber, setmetatable
local string_lower, string_gsub, string_find, string_upper, string_sub =
  string.lower, string.gsub, string.find, string.upper, string.sub
local table_concat, table_sort, math_floor = table.concat, table.sort, math.floor
local try = socket.try

local http = {
  TIMEOUT = 60,
  USERAGENT = socket._VERSION,
  PORT = 80,
}

local SCHEMES = { http = { port = 80 }, https = { port = 443 } }
http.schemes = SCHEMES

-- ------------------------------------------------------------------ header names

-- Well-known names are sent with canonical capitalisation (as socket.headers does); others
-- are sent as given, lower-cased.
local CANONIC = {}
for name in ([[accept accept-charset accept-encoding accept-language accept-ranges age allow
  authorization cache-control connection content-disposition content-encoding content-language
  content-length content-location content-md5 content-range content-type cookie date etag expect
  expires from host if-match if-modified-since if-none-match if-range if-unmodified-since
  last-modified location max-forwards mime-version pragma proxy-authenticate proxy-authorization
  range referer retry-after server set-cookie te trailer transfer-encoding upgrade user-agent vary
  via warning www-authenticate]]):gmatch("%S+") do
  CANONIC[name] = string_sub(string_gsub("-" .. name, "%-%l", string_upper), 2)
end
CANONIC["te"], CANONIC["etag"], CANONIC["content-md5"], CANONIC["www-authenticate"] =
  "TE", "ETag", "Content-MD5", "WWW-Authenticate"

-- ------------------------------------------------------------------ request building

local DEFAULT_PARTS = { path = "/", scheme = "http" }

local function adjust_headers(r)
  local host = r.host
  if string_find(host, ":", 1, true) then host = "[" .. host .. "]" end
  local port = tostring(r.port)
  if port ~= tostring(SCHEMES[r.scheme].port) then host = host .. ":" .. port end
  local h = {
    ["user-agent"] = http.USERAGENT,
    ["host"] = host,
    ["connection"] = "close, TE",
    ["te"] = "trailers",
  }
  if r.user and r.password then
    h["authorization"] = "Basic " .. H.b64encode(r.user .. ":" .. url.unescape(r.password))
  end
  if r.headers then
    for k, v in pairs(r.headers) do h[string_lower(k)] = v end
  end
  return h
end

local function adjust_request(reqt)
  local r = reqt.url and url.parse(reqt.url, DEFAULT_PARTS) or {}
  for k, v in pairs(reqt) do r[k] = v end
  local defs = SCHEMES[r.scheme]
  if not defs then
    error("socket.http: unsupported URL scheme '" .. tostring(r.scheme) .. "'", 0)
  end
  if not (r.port and r.port ~= "") then r.port = defs.port end
  if not (r.method and r.method ~= "") then r.method = "GET" end
  if not (r.host and r.host ~= "") then
    try(nil, "invalid host '" .. tostring(r.host) .. "'")
  end
  if reqt.proxy or http.PROXY then try(nil, "proxy not supported") end
  r.uri = reqt.uri or url.build {
    path = try(r.path, "invalid path 'nil'"),
    params = r.params, query = r.query, fragment = r.fragment,
  }
  r.headers = adjust_headers(r)
  return r
end

local function should_redirect(r, code, headers)
  local location = headers.location
  if not location then return false end
  location = string_gsub(location, "%s", "")
  if location == "" then return false end
  location = url.absolute(r.url, location)
  local target = url.parse(location)
  local scheme = target and target.scheme
  if scheme and not SCHEMES[scheme] then return false end
  if r.scheme == "https" and scheme ~= "https" then return false end
  return r.redirect ~= false
    and (code == 301 or code == 302 or code == 303 or code == 307)
    and (not r.method or r.method == "GET" or r.method == "HEAD")
    and (r.maxredirects == false or (r.nredirects or 0) < (r.maxredirects or 5))
end

local function should_receive_body(r, code)
  if r.method == "HEAD" then return false end
  if code == 204 or code == 304 then return false end
  if code >= 100 and code < 200 then return false end
  return true
end

local function timeout_ms(seconds)
  local t = tonumber(seconds)
  if not t or not (t > 0) or t > 2147483 then return 2147483647 end  -- "no timeout": the host caps it
  return math_floor(t * 1000 + 0.5)
end

local trequest

local function tredirect(reqt, location, timeout)
  local newurl = url.absolute(reqt.url, location)
  local result, code, headers, status = trequest({
    url = newurl,
    source = reqt.source,
    sink = reqt.sink,
    headers = reqt.headers,
    proxy = reqt.proxy,
    maxredirects = reqt.maxredirects,
    nredirects = (reqt.nredirects or 0) + 1,
    create = reqt.create,
  }, timeout)
  headers = headers or {}
  headers.location = headers.location or location
  return result, code, headers, status
end

function trequest(reqt, timeout)
  local r = adjust_request(reqt)
  local hdrs = r.headers

  -- request body: collect the whole source
  local body
  if r.source then
    local parts = {}
    try(ltn12.pump.all(r.source, ltn12.sink.table(parts), r.step))
    body = table_concat(parts)
    if hdrs["transfer-encoding"] ~= nil and string_lower(tostring(hdrs["transfer-encoding"])) == "chunked" then
      hdrs["transfer-encoding"] = nil
    end
    hdrs["content-length"] = tostring(#body)
  end

  local names = {}
  for k in pairs(hdrs) do names[#names + 1] = k end
  table_sort(names)
  local list = {}
  for i, k in ipairs(names) do list[i] = { CANONIC[k] or k, tostring(hdrs[k]) } end

  local host = r.host
  if string_find(host, ":", 1, true) then host = "[" .. host .. "]" end
  local full = r.scheme .. "://" .. host
  if tostring(r.port) ~= tostring(SCHEMES[r.scheme].port) then full = full .. ":" .. tostring(r.port) end
  local uri = r.uri
  if string_sub(uri, 1, 1) ~= "/" then uri = "/" .. uri end
  full = full .. uri

  local code, reason, rheaders, rbody, err =
    H.http(r.method, full, list, body, timeout_ms(timeout or http.TIMEOUT), 1)
  if type(code) ~= "number" or code >= 9000 then
    try(nil, err or "closed")
  end

  local headers = {}
  for _, pair in ipairs(rheaders or {}) do
    local name = string_lower(pair[1])
    local old = headers[name]
    headers[name] = old and (old .. ", " .. pair[2]) or pair[2]
  end
  local status = "HTTP/1.1 " .. code
  if reason and reason ~= "" then status = status .. " " .. reason end

  if should_redirect(r, code, headers) and not r.source then
    return tredirect(reqt, headers.location, timeout)
  end
  if should_receive_body(r, code) then
    try(ltn12.pump.all(ltn12.source.string(rbody or ""), r.sink or ltn12.sink.null(), r.step))
  end
  return 1, code, headers, status
end

-- The table form of the string call request(url [, body]).
local function genericform(u, b)
  local t = {}
  local reqt = { url = u, sink = ltn12.sink.table(t), target = t }
  if b then
    reqt.source = ltn12.source.string(b)
    reqt.headers = {
      ["content-length"] = #b,
      ["content-type"] = "application/x-www-form-urlencoded",
    }
    reqt.method = "POST"
  end
  return reqt
end
http.genericform = genericform

local function srequest(u, b, timeout)
  local reqt = genericform(u, b)
  local _, code, headers, status = trequest(reqt, timeout)
  return table_concat(reqt.target), code, headers, status
end

http.request = socket.protect(function(reqt, body)
  if type(reqt) == "string" then return srequest(reqt, body) end
  return trequest(reqt)
end)

-- For ssl.https (not part of LuaSocket's API; hidden from pairs): the table-form request
-- with an explicit timeout in seconds.
local internal = {
  request = socket.protect(function(reqt, timeout) return trequest(reqt, timeout) end),
}
return setmetatable(http, { __index = { _mailpush_internal = internal } })
