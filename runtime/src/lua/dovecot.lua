-- The `dovecot` global of Dovecot's push-notification Lua driver, as mailpush provides it:
-- logging, events, storage constants, the HTTP client, and the `user` and mailbox objects
-- handed to `dovecot_lua_notify_begin_txn`. Runs once per state, after the prelude, with
-- the host's primitives as its argument; returns the functions the host calls.
local H, version = ...
local type, error, tostring, tonumber, select, pairs, ipairs = type, error, tostring, tonumber, select, pairs, ipairs
local setmetatable, rawget, rawset, rawequal = setmetatable, rawget, rawset, rawequal
local string_format, string_lower, string_find, string_sub = string.format, string.lower, string.find, string.sub
local table_concat, math_type, math_floor = table.concat, math.type, math.floor
local v24 = version == "2.4"

local dovecot = {}

-- Dovecot's argument-count checks (DLUA_REQUIRE_ARGS).
local function nargs(n, ...)
  local got = select("#", ...)
  if got ~= n then error(string_format("expected %d arguments, got %d", n, got), 3) end
end
local function nargs_range(lo, hi, ...)
  local got = select("#", ...)
  if got < lo or got > hi then error(string_format("expected %d to %d arguments, got %d", lo, hi, got), 3) end
end
local function check_self(self, tname)
  if type(self) ~= "table" or rawget(self, "__type") ~= tname then
    error(string_format("Bad argument #1, expected %s got %s", tname, type(self)), 3)
  end
end

-- ------------------------------------------------------------------ logging
function dovecot.i_debug(msg) H.log("debug", tostring(msg)) end
function dovecot.i_info(msg) H.log("info", tostring(msg)) end
function dovecot.i_warning(msg) H.log("warning", tostring(msg)) end
function dovecot.i_error(msg) H.log("error", tostring(msg)) end

-- ------------------------------------------------------------------ events
local event_methods = {}
local function new_event(parent)
  local ev = { __type = "struct event", fields = {}, prefix = "", name = nil, parent = parent }
  if parent ~= nil then
    if type(parent) ~= "table" or rawget(parent, "__type") ~= "struct event" then
      error("Bad argument #1, expected struct event got " .. type(parent), 3)
    end
    ev.prefix = parent.prefix
    for k, v in pairs(parent.fields) do ev.fields[k] = v end
  end
  for k, f in pairs(event_methods) do ev[k] = f end
  return setmetatable(ev, { __name = "struct event" })
end
local function event_log(self, level, msg)
  local parts = {}
  for k, v in pairs(self.fields) do parts[#parts + 1] = k .. "=" .. tostring(v) end
  table.sort(parts)
  local text = self.prefix .. tostring(msg)
  H.log(level, text, self.name, table_concat(parts, " "))
  return self
end
function event_methods.append_log_prefix(self, s) check_self(self, "struct event"); self.prefix = self.prefix .. tostring(s); return self end
function event_methods.replace_log_prefix(self, s) check_self(self, "struct event"); self.prefix = tostring(s); return self end
function event_methods.set_always_log_source(self) check_self(self, "struct event"); return self end
function event_methods.set_forced_debug(self) check_self(self, "struct event"); self.forced_debug = true; return self end
function event_methods.unset_forced_debug(self) check_self(self, "struct event"); self.forced_debug = nil; return self end
function event_methods.set_name(self, s) check_self(self, "struct event"); self.name = tostring(s); return self end
function event_methods.add_str(self, k, v) check_self(self, "struct event"); self.fields[tostring(k)] = tostring(v); return self end
function event_methods.add_int(self, k, v)
  check_self(self, "struct event")
  local n = math.tointeger(tonumber(v))
  if n == nil then error("bad argument #3 to 'add_int' (number has no integer representation)", 2) end
  self.fields[tostring(k)] = n
  return self
end
function event_methods.add_timeval(self, k, v) check_self(self, "struct event"); self.fields[tostring(k)] = tonumber(v) or 0; return self end
function event_methods.inc_int(self, k, v)
  check_self(self, "struct event")
  k = tostring(k)
  self.fields[k] = (math.tointeger(self.fields[k]) or 0) + (math.tointeger(tonumber(v)) or 0)
  return self
end
function event_methods.log_debug(self, s) check_self(self, "struct event"); return event_log(self, "debug", s) end
function event_methods.log_info(self, s) check_self(self, "struct event"); return event_log(self, "info", s) end
function event_methods.log_warning(self, s) check_self(self, "struct event"); return event_log(self, "warning", s) end
function event_methods.log_error(self, s) check_self(self, "struct event"); return event_log(self, "error", s) end
function event_methods.passthrough_event(self)
  check_self(self, "struct event")
  return new_event(self)
end
function dovecot.event(parent) return new_event(parent) end

-- ------------------------------------------------------------------ flags, globals
function dovecot.has_flag(v, f) return (tonumber(v) & tonumber(f)) == tonumber(f) end
function dovecot.set_flag(v, f) return tonumber(v) | tonumber(f) end
function dovecot.clear_flag(v, f) return tonumber(v) & ~tonumber(f) end

function dovecot.restrict_global_variables(on)
  if on then
    setmetatable(_G, {
      __newindex = function(t, k, v)
        if type(v) == "function" then rawset(t, k, v); return end
        error("attempt to write to undeclared global variable " .. tostring(k), 2)
      end,
      __index = function(_, k)
        error("attempt to read undeclared global variable " .. tostring(k), 2)
      end,
    })
  else
    setmetatable(_G, nil)
  end
end

-- ------------------------------------------------------------------ storage constants
dovecot.storage = {
  STATUS_MESSAGES = 0x1, STATUS_RECENT = 0x2, STATUS_UIDNEXT = 0x4, STATUS_UIDVALIDITY = 0x8,
  STATUS_UNSEEN = 0x10, STATUS_FIRST_UNSEEN_SEQ = 0x20, STATUS_KEYWORDS = 0x40,
  STATUS_HIGHESTMODSEQ = 0x80, STATUS_PERMANENT_FLAGS = 0x200, STATUS_FIRST_RECENT_UID = 0x400,
  STATUS_HIGHESTPVTMODSEQ = 0x2000,
  MAILBOX_FLAG_READONLY = 0x1, MAILBOX_FLAG_SAVEONLY = 0x2, MAILBOX_FLAG_DROP_RECENT = 0x4,
  MAILBOX_FLAG_NO_INDEX_FILES = 0x10, MAILBOX_FLAG_KEEP_LOCKED = 0x20, MAILBOX_FLAG_IGNORE_ACLS = 0x100,
  MAILBOX_FLAG_AUTO_CREATE = 0x1000, MAILBOX_FLAG_AUTO_SUBSCRIBE = 0x2000,
  MAILBOX_SYNC_FLAG_FULL_READ = 0x1, MAILBOX_SYNC_FLAG_FAST = 0x4, MAILBOX_SYNC_FLAG_NO_EXPUNGES = 0x8,
  MAILBOX_SYNC_FLAG_FIX_INCONSISTENT = 0x40, MAILBOX_SYNC_FLAG_EXPUNGE = 0x80,
  MAILBOX_SYNC_FLAG_FORCE_RESYNC = 0x100,
  MAILBOX_ATTRIBUTE_PREFIX_DOVECOT = "vendor/vendor.dovecot/",
  MAILBOX_ATTRIBUTE_PREFIX_DOVECOT_PVT = "vendor/vendor.dovecot/pvt/",
  MAILBOX_ATTRIBUTE_PREFIX_DOVECOT_PVT_SERVER = "vendor/vendor.dovecot/pvt/server/",
}
if not v24 then dovecot.storage.MAILBOX_SYNC_FLAG_FULL_WRITE = 0x2 end

-- ------------------------------------------------------------------ 2.4 additions
local function tabescape(s)
  s = tostring(s)
  return (s:gsub("[\1\t\r\n\0]", { ["\1"] = "\1" .. "1", ["\t"] = "\1t", ["\r"] = "\1r", ["\n"] = "\1n", ["\0"] = "\1" .. "0" }))
end
local unescapes = { ["1"] = "\1", t = "\t", r = "\r", n = "\n", ["0"] = "\0" }
local function tabunescape(s)
  s = tostring(s)
  return (s:gsub("\1(.)", function(c) return unescapes[c] or c end))
end
local function split_tabescaped(s)
  local out = {}
  s = tostring(s)
  local start = 1
  while true do
    local i = string_find(s, "\t", start, true)
    if not i then out[#out + 1] = tabunescape(string_sub(s, start)); break end
    out[#out + 1] = tabunescape(string_sub(s, start, i - 1))
    start = i + 1
  end
  return out
end
dovecot.tabescape, dovecot.tabunescape, dovecot.split_tabescaped = tabescape, tabunescape, split_tabescaped
function dovecot.gettimeofday()
  local us = H.now_us()
  return us // 1000000, us % 1000000
end
function dovecot.nanoseconds() return H.now_us() * 1000 end
function dovecot.microseconds() return H.now_us() end
function dovecot.net_ip_family(ip) return H.ip_family(tostring(ip)) end
dovecot.base64 = {
  encode = function(s) return H.b64encode(tostring(s)) end,
  decode = function(s) return H.b64decode(tostring(s)) end,
}

-- ------------------------------------------------------------------ http client
-- Options of dovecot.http.client{}: 2.3 names (numbers in milliseconds) and 2.4 names
-- (strings with units, e.g. "10s"), either way.
local http23 = {
  user_agent = "string", rawlog_dir = "string", proxy_url = "string",
  max_idle_time_msecs = "uint", max_redirects = "uint", max_attempts = "uint", max_connect_attempts = "uint",
  connect_backoff_time_msecs = "uint", connect_backoff_max_time_msecs = "uint",
  request_absolute_timeout_msecs = "uint", request_timeout_msecs = "uint", connect_timeout_msecs = "uint",
  soft_connect_timeout_msecs = "uint", max_auto_retry_delay_secs = "uint",
  no_auto_redirect = "bool", no_auto_retry = "bool", debug = "bool", event_parent = "any",
}
local http24 = {}
for _, k in ipairs({ "user_agent", "proxy_socket_path", "proxy_url", "proxy_username", "proxy_password",
  "rawlog_dir", "max_idle_time", "max_parallel_connections", "max_pipelined_requests", "auto_redirect",
  "auto_retry", "proxy_ssl_tunnel", "request_max_redirects", "request_max_attempts",
  "read_request_max_attempts", "write_request_max_attempts", "delete_request_max_attempts",
  "max_connect_attempts", "connect_backoff_time", "connect_backoff_max_time", "response_hdr_max_size",
  "response_hdr_max_field_size", "response_hdr_max_fields", "request_absolute_timeout", "request_timeout",
  "read_request_timeout", "write_request_timeout", "delete_request_timeout", "connect_timeout",
  "soft_connect_timeout", "max_auto_retry_delay", "socket_send_buffer_size", "socket_recv_buffer_size",
  "dns_ttl", "base_dir", "event_parent" }) do
  http24[k] = true
end

-- A 2.4 time value ("10s", "500ms", "1min", "0") in milliseconds, or nil.
local time_units = { ms = 1, msec = 1, msecs = 1, millisecond = 1, milliseconds = 1,
  s = 1000, sec = 1000, secs = 1000, second = 1000, seconds = 1000,
  m = 60000, min = 60000, mins = 60000, minute = 60000, minutes = 60000,
  h = 3600000, hour = 3600000, hours = 3600000, d = 86400000, day = 86400000, days = 86400000,
  w = 604800000, week = 604800000, weeks = 604800000 }
local function time_msecs(v)
  if type(v) == "number" then return v end
  local n, unit = tostring(v):match("^%s*(%d+)%s*(%a*)%s*$")
  if not n then return nil end
  n = tonumber(n)
  if unit == "" then return n == 0 and 0 or nil end
  local mul = time_units[string_lower(unit)]
  return mul and n * mul or nil
end

local client_methods, request_methods, response_methods = {}, {}, {}

local function new_client(opts)
  if type(opts) ~= "table" then error("bad argument #1 to 'client' (table expected, got " .. type(opts) .. ")", 3) end
  local c = { __type = "struct http_client", timeout_ms = 60000, attempts = 1, user_agent = nil }
  for k, v in pairs(opts) do
    local key = tostring(k)
    local kind = http23[key]
    if kind == "string" and type(v) ~= "string" then
      error("Invalid HTTP client setting: " .. key .. ": string expected", 3)
    elseif kind == "uint" and (type(v) ~= "number" or v < 0) then
      error("Invalid HTTP client setting: " .. key .. ": non-negative number expected", 3)
    elseif kind == "bool" and type(v) ~= "boolean" then
      error("Invalid HTTP client setting: " .. key .. ": boolean expected", 3)
    elseif kind == nil and not http24[key] and string_sub(key, 1, 4) ~= "ssl_" and string_sub(key, 1, 11) ~= "dns_client_" then
      if v24 then error("Invalid HTTP client setting: " .. key .. " is unknown setting", 3) end
    end
    if key == "request_timeout_msecs" or key == "request_absolute_timeout_msecs" then
      if v > 0 then c.timeout_ms = v end
    elseif key == "request_timeout" or key == "request_absolute_timeout" then
      local ms = time_msecs(v)
      if ms == nil then error("Invalid HTTP client setting: " .. key .. ": Invalid time interval: " .. tostring(v), 3) end
      if ms > 0 then c.timeout_ms = ms end
    elseif key == "max_attempts" or key == "request_max_attempts" then
      local n = tonumber(v)
      if n == nil then error("Invalid HTTP client setting: " .. key .. ": Invalid number: " .. tostring(v), 3) end
      if n > 0 then c.attempts = math_floor(n) end
    elseif key == "user_agent" then
      c.user_agent = tostring(v)
    elseif key == "proxy_url" or key == "proxy_socket_path" then
      error("Invalid HTTP client setting: " .. key .. ": proxies are not supported by mailpush", 3)
    end
  end
  for k, f in pairs(client_methods) do c[k] = f end
  return setmetatable(c, { __name = "struct http_client" })
end

function client_methods.request(...)
  nargs(2, ...)
  local self, spec = ...
  check_self(self, "struct http_client")
  if type(spec) ~= "table" then error("bad argument #2 to 'request' (table expected)", 2) end
  local url = spec.url
  if url == nil then error("cannot create request: url not specified", 2) end
  url = tostring(url)
  local why = H.url_error(url)
  -- (a password in the URL is masked: the message may reach logs)
  if why then error("Failed to parse url " .. H.redact_url(url) .. ": " .. why, 2) end
  local r = { __type = "struct http_client_request", client = self, url = url,
    method = spec.method and tostring(spec.method) or "GET", headers = {}, payload = nil, submitted = false }
  if self.user_agent then r.headers[1] = { "User-Agent", self.user_agent } end
  for k, f in pairs(request_methods) do r[k] = f end
  return setmetatable(r, { __name = "struct http_client_request" })
end

function request_methods.add_header(...)
  nargs(3, ...)
  local self, name, value = ...
  check_self(self, "struct http_client_request")
  self.headers[#self.headers + 1] = { tostring(name), tostring(value) }
end
function request_methods.remove_header(...)
  nargs(2, ...)
  local self, name = ...
  check_self(self, "struct http_client_request")
  local lname, kept = string_lower(tostring(name)), {}
  for _, h in ipairs(self.headers) do
    if string_lower(h[1]) ~= lname then kept[#kept + 1] = h end
  end
  self.headers = kept
end
function request_methods.set_payload(...)
  if v24 then nargs_range(2, 3, ...) else nargs(2, ...) end
  local self, payload = ...
  check_self(self, "struct http_client_request")
  payload = tostring(payload)
  -- Dovecot takes the payload's length with strlen(): it ends at the first NUL byte.
  local nul = string_find(payload, "\0", 1, true)
  if nul then payload = string_sub(payload, 1, nul - 1) end
  self.payload = payload
end
function request_methods.set_event(...)
  nargs(2, ...)
  local self, ev = ...
  check_self(self, "struct http_client_request")
  self.event = ev
end
function request_methods.get_event(...)
  nargs(1, ...)
  local self = ...
  check_self(self, "struct http_client_request")
  return self.event or new_event(nil)
end
function request_methods.submit(...)
  nargs(1, ...)
  local self = ...
  check_self(self, "struct http_client_request")
  local c = self.client
  local status, reason, headers, body = H.http(self.method, self.url, self.headers, self.payload, c.timeout_ms, c.attempts)
  local resp = { __type = "struct dlua_http_response", _status = status, _reason = reason, _headers = headers, _payload = body }
  for k, f in pairs(response_methods) do resp[k] = f end
  return setmetatable(resp, { __name = "struct dlua_http_response" })
end
function response_methods.status(...) nargs(1, ...); local self = ...; check_self(self, "struct dlua_http_response"); return self._status end
function response_methods.reason(...) nargs(1, ...); local self = ...; check_self(self, "struct dlua_http_response"); return self._reason end
function response_methods.payload(...) nargs(1, ...); local self = ...; check_self(self, "struct dlua_http_response"); return self._payload end
function response_methods.header(...)
  nargs(2, ...)
  local self, name = ...
  check_self(self, "struct dlua_http_response")
  local lname = string_lower(tostring(name))
  for _, h in ipairs(self._headers) do
    if string_lower(h[1]) == lname then return h[2] end
  end
  return ""
end

dovecot.http = { client = function(...) nargs(1, ...); return new_client((...)) end }

-- ------------------------------------------------------------------ user and mailboxes
local function check_key(key)
  key = tostring(key)
  local l = string_lower(key)
  if string_sub(l, 1, 9) ~= "/private/" and string_sub(l, 1, 8) ~= "/shared/" then
    error("Invalid metadata key '" .. key .. "': must begin with /private/ or /shared/", 3)
  end
  return key
end

-- The host answers METADATA calls with (value, error); errors are raised as strings.
local function md_get(key, box)
  local v, err = H.metadata_get(key, box)
  if err then error(err, 3) end
  return v
end
local function md_set(key, value, box)
  local err = H.metadata_set(key, value, box)
  if err then error(err, 3) end
end
local function md_unset(key, box)
  local err = H.metadata_unset(key, box)
  if err then error(err, 3) end
end
local function md_list(prefix, box)
  local t, err = H.metadata_list(prefix, box)
  if err then error(err, 3) end
  return t
end

local mailbox_methods = {}
local function new_mailbox(user, name)
  local box = { __type = "struct mailbox", vname = name, name = name, user = user }
  for k, f in pairs(mailbox_methods) do box[k] = f end
  return setmetatable(box, { __name = "struct mailbox" })
end
function mailbox_methods.open(self) check_self(self, "struct mailbox") end
function mailbox_methods.close(self) check_self(self, "struct mailbox") end
function mailbox_methods.free(self) check_self(self, "struct mailbox") end
function mailbox_methods.sync(self, flags) check_self(self, "struct mailbox") end
function mailbox_methods.status(self, ...)
  check_self(self, "struct mailbox")
  local known = H.mailbox_status(self.vname)
  local st = {
    mailbox = self.vname, messages = 0.0, recent = 0.0, unseen = 0.0, uidvalidity = 0.0, uidnext = 0.0,
    first_unseen_seq = 0.0, first_recent_uid = 0.0, highest_modseq = 0.0, highest_pvt_modseq = 0.0,
    permanent_flags = 0.0, flags = 0.0, permanent_keywords = false, allow_new_keywords = false,
    nonpermanent_modseqs = false, no_modseq_tracking = false, have_guids = false, have_save_guids = false,
    have_only_guid128 = false,
  }
  for k, v in pairs(known) do st[k] = v end
  local items = 0
  for i = 1, select("#", ...) do items = items | (math.tointeger(tonumber((select(i, ...)))) or 0) end
  if items & 0x40 ~= 0 then st.keywords = {} end
  return st
end
function mailbox_methods.metadata_get(self, ...)
  check_self(self, "struct mailbox")
  local out = {}
  for i = 1, select("#", ...) do out[i] = md_get(check_key((select(i, ...))), self.vname) end
  return table.unpack(out, 1, select("#", ...))
end
function mailbox_methods.metadata_set(self, key, value)
  check_self(self, "struct mailbox")
  md_set(check_key(key), tostring(value), self.vname)
end
function mailbox_methods.metadata_unset(self, key)
  check_self(self, "struct mailbox")
  md_unset(check_key(key), self.vname)
end
function mailbox_methods.metadata_list(self, ...)
  check_self(self, "struct mailbox")
  local out = {}
  for i = 1, select("#", ...) do
    for k, v in pairs(md_list(check_key((select(i, ...))), self.vname)) do out[k] = v end
  end
  return out
end

local user_methods = {}
function user_methods.var_expand(self, fmt)
  check_self(self, "struct mail_user")
  fmt = tostring(fmt)
  local user = self.username
  local at = string_find(user, "@", 1, true)
  local values = {
    user = user, username = at and string_sub(user, 1, at - 1) or user,
    domain = at and string_sub(user, at + 1) or "", home = self.home, service = self.service,
    session = self.session_id,
  }
  local short = { u = values.user, n = values.username, d = values.domain, h = values.home, s = values.service }
  fmt = fmt:gsub("%%{([%w_|]+)}", function(expr)
    local var, filter = expr:match("^([%w_]+)|?([%w_]*)$")
    if var == "user" and (filter == "username" or filter == "domain") then return values[filter] end
    local v = values[var]
    if v == nil then error("Unknown variable '" .. tostring(var) .. "'", 0) end
    return v
  end)
  return (fmt:gsub("%%(.)", function(c)
    if c == "%" then return "%" end
    return short[c] or ("%" .. c)
  end))
end
if not v24 then
  function user_methods.plugin_getenv(self, name)
    check_self(self, "struct mail_user")
    return H.plugin_getenv(tostring(name))
  end
end
function user_methods.mailbox(self, name, flags)
  check_self(self, "struct mail_user")
  return new_mailbox(self, tostring(name))
end
function user_methods.metadata_get(self, ...)
  check_self(self, "struct mail_user")
  local n = select("#", ...)
  local out = {}
  for i = 1, n do out[i] = md_get(check_key((select(i, ...))), nil) end
  return table.unpack(out, 1, n)
end
function user_methods.metadata_set(self, key, value)
  check_self(self, "struct mail_user")
  md_set(check_key(key), tostring(value), nil)
end
function user_methods.metadata_unset(self, key)
  check_self(self, "struct mail_user")
  md_unset(check_key(key), nil)
end
function user_methods.metadata_list(self, ...)
  check_self(self, "struct mail_user")
  local out = {}
  for i = 1, select("#", ...) do
    for k, v in pairs(md_list(check_key((select(i, ...))), nil)) do out[k] = v end
  end
  return out
end

local user_mt = {
  __name = "struct mail_user",
  __index = user_methods,
  __tostring = function(u) return u.username end,
  __eq = function(a, b) return rawget(a, "username") == rawget(b, "username") end,
  __lt = function(a, b) return rawget(a, "username") < rawget(b, "username") end,
  __le = function(a, b) return rawget(a, "username") <= rawget(b, "username") end,
}

-- The host calls this for each transaction's `user` argument.
local function new_user(fields)
  fields.__type = "struct mail_user"
  return setmetatable(fields, user_mt)
end

_G.dovecot = dovecot
return { new_user = new_user }
