-- mailpush forwarder for Dovecot 2.4's push-notification Lua driver: mailpush.lua (the
-- Dovecot 2.3 forwarder) adapted to Dovecot 2.4, which has no plugin { } section and no
-- user:plugin_getenv(). The settings come from the driver block's lua_settings { },
-- handed to script_init(settings) as a table of strings; the Lua HTTP client takes
-- Dovecot 2.4's option names (times with units) and refuses unknown ones.
--
-- Collects every event of a transaction with every field Dovecot gives the Lua driver,
-- adds the INBOX unseen count and the user's /private/vendor/vendor.dovecot/http-notify
-- METADATA when available, and hands the transaction (mailpush's canonical JSON) to
-- mailpush at end_txn.
--
-- The hand-off (default): the transaction is written to a file in mailpush's
-- `handoff_dir` (a temporary name, then renamed: a local write, never a wait on
-- mailpush). mailpush reads the files oldest first, also those written while it was
-- stopped, stalled or restarting, and removes each once persisted. Nothing is lost and
-- mail never waits for mailpush.
--
-- push_notification mailpush {
--   driver = lua
--   lua_file = /etc/dovecot/mailpush-2.4.lua
--   lua_settings {
--     mailpush_handoff_dir = /var/lib/mailpush/handoff     # default; = mailpush's handoff_dir
--   }
-- }
--
-- Or, without a shared directory (mailpush on another host), a POST per transaction:
-- mail then waits up to the timeout when mailpush is stalled, and the transaction is
-- lost (logged) when mailpush is down or stalled.
--
--   lua_settings {
--     mailpush_handoff_dir = none                               # POST instead
--     mailpush_url = http://127.0.0.1:8025/v1/transactions    # default
--     mailpush_timeout_msecs = 500                             # default
--     mailpush_token = <contents of mailpush's ingest_token_file>  # if set there
--   }

local METADATA_KEY = "/private/vendor/vendor.dovecot/http-notify"
local DEFAULT_HANDOFF_DIR = "/var/lib/mailpush/handoff"

-- Transactions handed off by this process: with the session id, each one's unique id
-- and file name.
local handed_off = 0

-- This Lua state's own mark: when it was loaded, and a table's address in it. A session
-- id is not unique enough on its own: an IMAP session brought back from hibernation
-- runs in a new process with the same session id, and its counter starts again at 1,
-- so its ids would repeat earlier ones (which mailpush, storing an id once, would drop).
local STATE_MARK = string.format("%x", os.time()) .. "-"
  .. (tostring({}):gsub("^table: ", ""):gsub("^0x", ""):gsub("[^%w]", ""))

-- The driver block's lua_settings { } (strings), from script_init.
local settings = {}

-- Dovecot 2.4 calls script_init(settings) once the script is loaded (one Lua state per
-- mail user) and ignores what it returns.
function script_init(s)
  if type(s) == "table" then settings = s end
end

local function setting(name)
  return settings[name]
end

local function log_error(msg)
  if dovecot.i_error then dovecot.i_error("mailpush: " .. msg) end
end

-- ---------------------------------------------------------------- JSON encoding

-- Dovecot hands a script raw header bytes (a Latin-1 From: from a legacy mailer), and
-- mailpush takes UTF-8 only. As Dovecot's own JSON writer does, each byte that does not
-- begin a valid UTF-8 sequence becomes U+FFFD, one per byte.
local REPLACEMENT = "\239\191\189"

local function valid_utf8(s)
  if not s:find("[\128-\255]") then return true end
  -- utf8.len (Lua 5.3+) refuses overlong forms and values past U+10FFFF; surrogates
  -- (ED A0-BF ..) only from 5.4 on.
  return utf8 ~= nil and utf8.len(s) ~= nil and not s:find("\237[\160-\191]")
end

local function utf8_repaired(s)
  local out, i, n = {}, 1, #s
  while i <= n do
    local c = s:byte(i)
    local len = 0
    if c < 0x80 then len = 1
    elseif c >= 0xC2 and c <= 0xDF then len = 2
    elseif c >= 0xE0 and c <= 0xEF then len = 3
    elseif c >= 0xF0 and c <= 0xF4 then len = 4 end
    local ok = len > 0 and i + len - 1 <= n
    for j = i + 1, ok and i + len - 1 or i do
      local b = s:byte(j)
      if b < 0x80 or b > 0xBF then ok = false end
    end
    if ok and len > 2 then
      -- Overlong forms, surrogates, and values past U+10FFFF.
      local b = s:byte(i + 1)
      if (c == 0xE0 and b < 0xA0) or (c == 0xED and b > 0x9F)
        or (c == 0xF0 and b < 0x90) or (c == 0xF4 and b > 0x8F) then ok = false end
    end
    if ok then
      out[#out + 1] = s:sub(i, i + len - 1)
      i = i + len
    else
      out[#out + 1] = REPLACEMENT
      i = i + 1
    end
  end
  return table.concat(out)
end

local function json_string(s)
  s = tostring(s)
  if not valid_utf8(s) then s = utf8_repaired(s) end
  s = s:gsub('[%c"\\]', function(c)
    if c == '"' then return '\\"'
    elseif c == '\\' then return '\\\\'
    elseif c == '\n' then return '\\n'
    elseif c == '\r' then return '\\r'
    elseif c == '\t' then return '\\t'
    elseif c == '\b' then return '\\b'
    elseif c == '\f' then return '\\f'
    else return string.format('\\u%04x', string.byte(c)) end
  end)
  return '"' .. s .. '"'
end

-- Lua numbers from Dovecot arrive as floats (5.0): send integers.
local function json_int(n)
  return string.format("%d", math.floor(tonumber(n) or 0))
end

local function json_list(t)
  local out = {}
  for _, v in ipairs(t or {}) do out[#out + 1] = json_string(v) end
  return "[" .. table.concat(out, ",") .. "]"
end

-- Field kinds of the canonical JSON; fields absent from an event are omitted.
local INT = { uid = true, uid_validity = true, date = true, tz = true, unseen = true,
  messages = true, recent = true }
local LIST = { flags = true, keywords = true, flags_old = true, keywords_old = true }
local FIELD_ORDER = {
  "mailbox", "mailbox_old", "uid", "uid_validity", "date", "tz", "from", "to",
  "subject", "subject_utf8", "from_address", "from_display_name", "to_address",
  "to_display_name", "message_id", "snippet", "flags", "keywords", "flags_old",
  "keywords_old", "unseen", "messages", "recent",
}

local function json_event(e)
  local parts = { '"name":' .. json_string(e.name) }
  for _, k in ipairs(FIELD_ORDER) do
    local v = e[k]
    if v ~= nil then
      if INT[k] then parts[#parts + 1] = '"' .. k .. '":' .. json_int(v)
      elseif LIST[k] then parts[#parts + 1] = '"' .. k .. '":' .. json_list(v)
      else parts[#parts + 1] = '"' .. k .. '":' .. json_string(v) end
    end
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

-- ---------------------------------------------------------------- collecting

-- What each event kind carries in mailpush's canonical JSON, from Dovecot's Lua table.
local MESSAGE_EVENTS = {
  MessageNew = true, MessageAppend = true, MessageExpunge = true, MessageRead = true,
  MessageTrash = true, FlagsSet = true, FlagsClear = true,
}

local function nonempty(s)
  if s == nil or s == "" then return nil end
  return s
end

local function collect(ctx, event)
  local e = { name = event.name, mailbox = event.mailbox }
  if MESSAGE_EVENTS[event.name] then
    e.uid = event.uid
    e.uid_validity = event.uid_validity
  end
  if event.name == "MessageNew" or event.name == "MessageAppend" then
    e.date = event.date
    e.tz = event.tz
    -- Dovecot's Lua driver gives "" for a missing From/To and the decoded subject.
    e.from = nonempty(event.from)
    e.to = nonempty(event.to)
    e.subject_utf8 = event.subject
    e.from_address = nonempty(event.from_address)
    e.from_display_name = nonempty(event.from_display_name)
    e.to_address = nonempty(event.to_address)
    e.to_display_name = nonempty(event.to_display_name)
    e.message_id = event.message_id
    e.snippet = event.snippet
    e.flags = event.flags or {}
    e.keywords = event.keywords or {}
    if event.mailbox == "INBOX" then ctx.inbox_new = true end
  elseif event.name == "FlagsSet" then
    e.flags = event.flags or {}
    e.keywords = event.keywords or {}
  elseif event.name == "FlagsClear" then
    e.flags = event.flags or {}
    e.keywords = event.keywords or {}
    e.flags_old = event.flags_old
    e.keywords_old = event.keywords_old
  elseif event.name == "MailboxRename" then
    e.mailbox_old = event.mailbox_old
  end
  -- Dovecot may hand the same mailbox event twice when several drivers registered it.
  local key = e.name .. "\0" .. tostring(e.mailbox) .. "\0" .. tostring(e.uid)
  if not MESSAGE_EVENTS[e.name] then
    if ctx.seen[key] then return end
    ctx.seen[key] = true
  end
  ctx.events[#ctx.events + 1] = e
end

function dovecot_lua_notify_begin_txn(user)
  local ctx = { user = user, username = user.username, events = {}, seen = {} }
  local ok, value = pcall(function() return user:metadata_get(METADATA_KEY) end)
  if ok and value ~= nil then ctx.http_notify = value end
  return ctx
end

dovecot_lua_notify_event_message_new = collect
dovecot_lua_notify_event_message_append = collect
dovecot_lua_notify_event_message_expunge = collect
dovecot_lua_notify_event_message_read = collect
dovecot_lua_notify_event_message_trash = collect
dovecot_lua_notify_event_flags_set = collect
dovecot_lua_notify_event_flags_clear = collect
dovecot_lua_notify_event_mailbox_create = collect
dovecot_lua_notify_event_mailbox_delete = collect
dovecot_lua_notify_event_mailbox_rename = collect
dovecot_lua_notify_event_mailbox_subscribe = collect
dovecot_lua_notify_event_mailbox_unsubscribe = collect

-- INBOX's status after the transaction: the unseen, message and \Recent counts.
local function inbox_status(user)
  local ok, status = pcall(function()
    local box = user:mailbox("INBOX")
    box:sync()
    local status = box:status(dovecot.storage.STATUS_UNSEEN, dovecot.storage.STATUS_MESSAGES,
      dovecot.storage.STATUS_RECENT)
    box:free()
    return status
  end)
  if ok then return status end
  return nil
end

function dovecot_lua_notify_end_txn(ctx, success)
  if not success or #ctx.events == 0 then return end
  if ctx.inbox_new then
    local status = inbox_status(ctx.user)
    if status ~= nil then
      for _, e in ipairs(ctx.events) do
        if (e.name == "MessageNew" or e.name == "MessageAppend") and e.mailbox == "INBOX" then
          e.unseen = status.unseen
          e.messages = status.messages
          e.recent = status.recent
        end
      end
    end
  end
  handed_off = handed_off + 1
  -- Unique per transaction: the session id (unique per login or delivery), this Lua
  -- state's mark and a counter. mailpush stores a repeated id once.
  local session = tostring(ctx.user.session_id or "nosession")
  local name = session:gsub("[^%w_-]", "_") .. "-" .. STATE_MARK .. "-"
    .. string.format("%010d", handed_off)
  local events = {}
  for i, e in ipairs(ctx.events) do events[i] = json_event(e) end
  local body = '{"id":' .. json_string("dovecot-" .. name) .. ',"user":' .. json_string(ctx.username)
    .. ',"events":[' .. table.concat(events, ",") .. "]"
  if ctx.http_notify ~= nil then
    body = body .. ',"metadata":{' .. json_string(METADATA_KEY) .. ":" .. json_string(ctx.http_notify) .. "}"
  end
  body = body .. "}"

  -- The hand-off, unless mailpush_handoff_dir is `none`, or unset while mailpush_url is
  -- set (configurations from before the hand-off existed keep their POST).
  local dir = setting("mailpush_handoff_dir")
  local url = setting("mailpush_url")
  if dir == nil or dir == "" then
    if url == nil or url == "" then dir = DEFAULT_HANDOFF_DIR else dir = "none" end
  end
  if dir ~= "none" then
    -- Written under a hidden name, then renamed: mailpush only reads whole files.
    local tmp = dir .. "/." .. name .. ".tmp"
    local final = dir .. "/" .. name .. ".json"
    local f, err = io.open(tmp, "w")
    if f == nil then
      log_error("cannot hand off to " .. dir .. ": " .. tostring(err))
      return
    end
    local wok, werr = f:write(body, "\n")
    local cok, cerr = f:close()
    if not wok or not cok then
      os.remove(tmp)
      log_error("cannot hand off to " .. dir .. ": " .. tostring(werr or cerr))
      return
    end
    local rok, rerr = os.rename(tmp, final)
    if not rok then
      os.remove(tmp)
      log_error("cannot hand off to " .. dir .. ": " .. tostring(rerr))
    end
    return
  end

  -- The POST.
  if url == nil or url == "" then url = "http://127.0.0.1:8025/v1/transactions" end
  -- Milliseconds, whole (the HTTP client refuses fractions); never 0, which would mean
  -- Dovecot's default request timeout of a minute.
  local timeout = math.floor(tonumber(setting("mailpush_timeout_msecs")) or 500)
  if timeout < 1 then timeout = 500 end
  local token = setting("mailpush_token")
  local ok, err = pcall(function()
    -- submit() blocks the mail process (delivery, IMAP command) until the request ends,
    -- so every way of waiting is bounded by `timeout`: connecting, waiting for the
    -- response, and the request as a whole. One attempt, no retry: a refused
    -- connection fails at once, a stalled mailpush after `timeout`. (Dovecot 2.4's Lua
    -- HTTP client maps each key to its http_client_* setting and passes the values
    -- through tostring, so times carry a unit and booleans are "yes"/"no"; it raises on
    -- an unknown key: 2.3's *_msecs names, max_attempts, no_auto_retry and debug are
    -- gone.)
    local ms = string.format("%dms", timeout)
    local client = dovecot.http.client({
      request_timeout = ms,
      request_absolute_timeout = ms,
      connect_timeout = ms,
      request_max_attempts = 1,
      auto_retry = "no",
      user_agent = "dovecot-mailpush",
    })
    local req = client:request({ url = url, method = "POST" })
    req:add_header("Content-Type", "application/json")
    if token ~= nil and token ~= "" then req:add_header("Authorization", "Bearer " .. token) end
    req:set_payload(body)
    local resp = req:submit()
    local status = resp:status()
    if status >= 9000 then
      -- Dovecot's internal errors (connection refused, timed out, …): no HTTP answer.
      log_error(string.format("POST %s failed: %s", url, tostring(resp:reason())))
    elseif status ~= 202 then
      log_error(string.format("POST %s answered %d %s: %s", url, status,
        tostring(resp:reason()), tostring(resp:payload())))
    end
  end)
  if not ok then log_error("POST " .. url .. " failed: " .. tostring(err)) end
end
