-- An OX-style push script as sites write them for Dovecot's Lua driver (the bench's
-- Lua row; tests/tests/lua.rs runs the same script against a recording endpoint).
local http = require "socket.http"
local ltn12 = require "ltn12"
local json = require "json"

function script_init()
  return 0
end

function dovecot_lua_notify_begin_txn(user)
  local meta = user:metadata_get("/private/vendor/vendor.dovecot/http-notify")
  return { user = user, meta = meta, messages = {} }
end

function dovecot_lua_notify_event_message_new(ctx, event)
  if ctx.meta == nil or event.mailbox ~= "INBOX" then return end
  local mbox = ctx.user:mailbox(event.mailbox)
  mbox:sync()
  local status = mbox:status(dovecot.storage.STATUS_RECENT, dovecot.storage.STATUS_UNSEEN,
    dovecot.storage.STATUS_MESSAGES)
  mbox:free()
  table.insert(ctx.messages, {
    user = ctx.meta:match("user=([^\t]+)"),
    ["imap-uidvalidity"] = math.tointeger(event.uid_validity),
    ["imap-uid"] = math.tointeger(event.uid),
    folder = event.mailbox,
    event = "messageNew",
    from = event.from,
    subject = event.subject,
    snippet = event.snippet,
    unseen = math.tointeger(status.unseen),
  })
end

function dovecot_lua_notify_end_txn(ctx)
  for _, msg in ipairs(ctx.messages) do
    local body = json.encode(msg)
    local answer = {}
    local ok, code, headers, status = http.request {
      url = ctx.user:plugin_getenv("ox_push_url"),
      method = "PUT",
      headers = { ["Content-Type"] = "application/json; charset=utf-8", ["Content-Length"] = #body },
      source = ltn12.source.string(body),
      sink = ltn12.sink.table(answer),
    }
    if code ~= 200 then
      dovecot.i_error("push failed: " .. tostring(code))
      error("OX push answered " .. tostring(code))
    end
  end
end
