-- `socket` for mailpush: the parts of LuaSocket 3.0's core module that make sense without
-- raw sockets: _VERSION, gettime, sleep, protect/newtry/try/skip, choose, BLOCKSIZE and
-- _SETSIZE. Loaded as chunk(H); uses H.now_us and H.sleep_ms.
-- Deliberate differences:
--   * tcp/udp/connect/bind/dns/select raise an error: scripts must use socket.http,
--     ssl.https or dovecot.http.
--   * The exception objects thrown by try() have a __tostring, so an uncaught one is logged
--     readably (LuaSocket's are bare tables). protect() still returns nil, err for them.
--   * socket.sleep is bounded by the host (H.sleep_ms caps it).
local H = ...
local type, error, pcall, select, tostring, tonumber, ipairs, rawget =
  type, error, pcall, select, tostring, tonumber, ipairs, rawget
local setmetatable = setmetatable
local math_floor, string_format = math.floor, string.format

local socket = {
  _VERSION = "LuaSocket 3.0.0",
  _SETSIZE = 1024,
  BLOCKSIZE = 2048,
}

-- Wrapped exceptions: a table { err } with this metatable.
local exception_mt = {
  __metatable = false,
  __tostring = function(e) return tostring(e[1]) end,
}
local exception_index = {}  -- marks our exception objects (the metatable itself is hidden)

local function nothing() end

-- try = newtry(finalizer): try(ok, err, ...) returns all its arguments when ok is truthy;
-- otherwise it calls the finalizer and throws err wrapped so that protect() can catch it.
function socket.newtry(finalizer)
  if finalizer == nil then finalizer = nothing end
  return function(...)
    if not (...) then
      finalizer()
      local _, err = ...
      error(setmetatable({ err, [exception_index] = true }, exception_mt), 0)
    end
    return ...
  end
end

-- protect(f): a function that calls f and returns nil, err for exceptions thrown by a try;
-- other errors propagate.
function socket.protect(f)
  local function finish(ok, ...)
    if ok then return ... end
    local e = ...
    if type(e) == "table" and rawget(e, exception_index) then
      return nil, e[1]
    end
    error(e, 0)
  end
  return function(...)
    return finish(pcall(f, ...))
  end
end

socket.try = socket.newtry()

-- skip(d, ...): drops the first d arguments.
function socket.skip(d, ...)
  return select(d + 1, ...)
end

function socket.choose(tbl)
  return function(name, opt1, opt2)
    if type(name) ~= "string" then
      name, opt1, opt2 = "default", name, opt1
    end
    local f = tbl[name or "nil"]
    if not f then error("unknown key (" .. tostring(name) .. ")", 3) end
    return f(opt1, opt2)
  end
end

function socket.gettime()
  return H.now_us() / 1e6
end

function socket.sleep(n)
  if type(n) ~= "number" then
    local c = tonumber(n)
    if c == nil then
      error(string_format("bad argument #1 to 'sleep' (number expected, got %s)", n == nil and "no value" or type(n)), 2)
    end
    n = c
  end
  if not (n > 0) then return end           -- negative or NaN: no sleep
  local ms = n * 1000
  if ms > 2147483647 then ms = 2147483647 end
  H.sleep_ms(math_floor(ms + 0.5))
end

local NO_RAW = "raw sockets are not available in the mailpush sandbox; use socket.http or dovecot.http"
local function no_raw() error(NO_RAW, 2) end
for _, name in ipairs { "tcp", "tcp4", "tcp6", "udp", "udp4", "udp6", "connect", "connect4", "connect6",
  "bind", "select", "source", "sink" } do
  socket[name] = no_raw
end
socket.dns = setmetatable({}, { __index = function() return no_raw end })
socket.sourcet, socket.sinkt = {}, {}

return socket
