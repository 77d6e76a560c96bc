-- `ssl.https` for mailpush: LuaSec 1.0's https.request on top of socket.http's emulation
-- (which talks to the host's HTTP primitive). Loaded as chunk(H); uses H.http through
-- socket.http.
--
-- Reproduced: request(url [, body]) -> body, code, headers, status (redirect=false forced) and
-- request{...} -> 1, code, headers, status; the URL gets LuaSec's default port 443; TIMEOUT;
-- nil, "proxy not supported" and nil, "create function not permitted".
-- Deliberate differences:
--   * Lenient on `redirect`: LuaSec 1.0 returns nil, "redirect not supported" unless the table
--     has redirect=false; here a missing or true `redirect` follows redirects like socket.http
--     (later LuaSec versions do that too), never downgrading https to http.
--   * TLS: certificates are verified by the host (LuaSec's default is verify = "none").
--   * https.tcp (a raw TLS socket factory) is absent; the `ssl` module is not provided.
local H = ...
local ltn12 = require("ltn12")
local http = require("socket.http")
local url = require("socket.url")
local type, table_concat = type, table.concat

local https = {
  _VERSION = "1.0",
  _COPYRIGHT = "LuaSec 1.0 - Copyright (C) 2009-2021 PUC-Rio",
  PORT = 443,
  TIMEOUT = 60,
}

-- Adds the default https port to a URL string (LuaSec's default_https_port).
local function with_default_port(u)
  local parsed = url.parse(u, { port = https.PORT })
  if not parsed then return u end
  return url.build(parsed)
end

function https.request(reqt, body)
  local result_table = {}
  local string_form = type(reqt) == "string"
  if string_form then
    local u = reqt
    reqt = {
      url = with_default_port(u),
      method = body and "POST" or "GET",
      sink = ltn12.sink.table(result_table),
      redirect = false,
    }
    if body then
      reqt.source = ltn12.source.string(body)
      reqt.headers = {
        ["content-length"] = #body,
        ["content-type"] = "application/x-www-form-urlencoded",
      }
    end
  else
    if reqt.url then reqt.url = with_default_port(reqt.url) end
  end
  if http.PROXY or reqt.proxy then
    return nil, "proxy not supported"
  elseif reqt.create then
    return nil, "create function not permitted"
  end
  -- LuaSec always speaks TLS, whatever the URL's scheme says.
  if reqt.url and not reqt.scheme then
    local parsed = url.parse(reqt.url)
    if parsed and parsed.scheme ~= "https" then reqt.scheme = "https" end
  end
  local res, code, headers, status = http._mailpush_internal.request(reqt, https.TIMEOUT)
  if res and string_form then
    return table_concat(result_table), code, headers, status
  end
  return res, code, headers, status
end

return https
