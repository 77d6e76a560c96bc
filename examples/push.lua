-- A push-notification Lua script as Dovecot 2.4 runs it (Dovecot's lua push driver),
-- unchanged in mailpush's lua driver: examples/mailpush-2.4.conf, driver 3.
-- script_init gets that block's lua_settings; each new message in INBOX is POSTed to
-- settings.endpoint with settings.api_key. (The endpoint is an example: outbound HTTP
-- needs allow_hosts on the driver, and push.example.net does not answer.)

local settings = {}

function script_init(s)
  settings = s or {}
  return 0
end

function dovecot_lua_notify_begin_txn(user)
  return { user = user.username, messages = {} }
end

function dovecot_lua_notify_event_message_new(ctx, event)
  if event.mailbox == "INBOX" then
    table.insert(ctx.messages, { uid = event.uid, from = event.from, subject = event.subject })
  end
end

function dovecot_lua_notify_end_txn(ctx, success)
  if not success or #ctx.messages == 0 then return end
  dovecot.i_info(string.format("%s: %d new message(s) in INBOX", ctx.user, #ctx.messages))
  if settings.endpoint == nil then return end
  local client = dovecot.http.client({ request_timeout = "5s" })
  local req = client:request({ url = settings.endpoint, method = "POST" })
  req:add_header("Authorization", "Bearer " .. (settings.api_key or ""))
  req:add_header("Content-Type", "text/plain")
  req:set_payload(string.format("%s %d", ctx.user, #ctx.messages))
  local resp = req:submit()
  if resp:status() >= 300 then
    error("push endpoint answered " .. resp:status() .. " " .. resp:reason())
  end
end
