-- mailpush sandbox prelude: runs once in every state, before the script, with the host's
-- primitives as its argument. It closes the holes an instruction hook cannot see (C
-- functions that loop without running Lua instructions, code that runs with hooks off).
local H = ...
local type, rawget, error, tonumber, select, tostring = type, rawget, error, tonumber, select, tostring
local math_min, math_maxinteger = math.min, math.maxinteger
local string_byte, string_sub = string.byte, string.sub
local table_concat = table.concat
local pcall = pcall

-- __gc finalizers run with hooks off (a looping finalizer could never be stopped).
local raw_setmetatable = setmetatable
function setmetatable(t, mt)
  if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
    error("setmetatable: __gc metamethods are not allowed in the mailpush sandbox", 2)
  end
  return raw_setmetatable(t, mt)
end

-- An error raised by the hook would run xpcall's handler with hooks off: call the
-- handler after pcall has unwound instead.
local function xpcall_finish(h, ok, ...)
  if ok then return true, ... end
  local _, r = pcall(h, (...))
  return false, r
end
function xpcall(f, h, ...)
  if type(h) ~= "function" then
    error("bad argument #2 to 'xpcall' (function expected, got " .. type(h) .. ")", 2)
  end
  return xpcall_finish(h, pcall(f, ...))
end

-- A coroutine the time budget stopped is left with hooks off (the error was raised from
-- a hook, and nothing switches them back on in a dead coroutine): closing it would run
-- its pending `__close` handlers where nothing can stop them. Such a coroutine is never
-- closed (coroutine.wrap, which closes on error, is rebuilt on resume).
local co_create, co_resume, co_close = coroutine.create, coroutine.resume, coroutine.close
local co_status = coroutine.status
local H_tripped, DEADLINE = H.tripped, H.deadline_text
local stopped = raw_setmetatable({}, { __mode = "k" })
-- A suspended coroutine is marked before it runs, and unmarked after unless the budget
-- stopped it (the hook may stop this thread too in the instructions right after the
-- resume returns, before anything could mark it then). `co` is false when this resume
-- marked nothing (a coroutine that was not suspended: the resume fails).
local function mark(co)
  if type(co) == "thread" and co_status(co) == "suspended" then
    stopped[co] = true
    return co
  end
  return false
end
local function note(co, ok, ...)
  if co and (ok or not (H_tripped() or (...) == DEADLINE)) then stopped[co] = nil end
  return ok, ...
end
function coroutine.resume(co, ...)
  return note(mark(co), co_resume(co, ...))
end
function coroutine.close(co)
  if stopped[co] and co_status(co) == "dead" then return false, DEADLINE end
  return co_close(co)
end
local function wrap_finish(co, ok, ...)
  if ok then return ... end
  local e = ...
  local dead = co_status(co) == "dead"
  if dead and stopped[co] then error(e, 0) end
  -- As Lua's: only a coroutine that failed is closed (not one resumed while running).
  if dead then
    local closed, e2 = co_close(co)
    if not closed and e2 ~= nil then e = e2 end
  end
  if type(e) == "string" then error(e, 2) end
  error(e, 0)
end
function coroutine.wrap(f)
  if type(f) ~= "function" then
    error("bad argument #1 to 'wrap' (function expected, got " .. type(f) .. ")", 2)
  end
  local co = co_create(f)
  return function(...)
    return wrap_finish(co, note(mark(co), co_resume(co, ...)))
  end
end

-- string.rep("", huge) loops in C doing nothing.
local srep = string.rep
function string.rep(s, n, sep)
  if s == "" and (sep == nil or sep == "") then
    return srep("", math_min(tonumber(n) or n, 1))
  end
  return srep(s, n, sep)
end

-- table.move / insert / remove with huge ranges (or a lying __len) loop in C: the same
-- loops in Lua are seen by the hook. Numbers are read as the C functions read them (a
-- numeric string is a number to them), and a table with a metatable always takes the
-- Lua path (its __len could answer the C function differently than it answered here).
local tmove, tinsert, tremove = table.move, table.insert, table.remove
local getmetatable, math_tointeger = getmetatable, math.tointeger
local function int(v) return math_tointeger(tonumber(v)) end
function table.move(a1, f, e, t, a2)
  if a2 == nil then a2 = a1 end
  local fi, ei, ti = int(f), int(e), int(t)
  if fi and ei and ti and ei - fi > 4096 then
    f, e, t = fi, ei, ti
    if not (f > 0 or e < math_maxinteger + f) then error("bad argument #3 to 'move' (too many elements to move)", 2) end
    local n = e - f + 1
    if t > math_maxinteger - n + 1 then error("bad argument #4 to 'move' (destination wrap around)", 2) end
    if t > e or t <= f or a1 ~= a2 then
      for i = 0, n - 1 do a2[t + i] = a1[f + i] end
    else
      for i = n - 1, 0, -1 do a2[t + i] = a1[f + i] end
    end
    return a2
  end
  return tmove(a1, f, e, t, a2)
end
function table.insert(t, ...)
  if select("#", ...) == 2 then
    local pos, v = ...
    local p = int(pos)
    if p ~= nil and type(t) == "table" and (getmetatable(t) ~= nil or #t + 1 - p > 4096) then
      local n = int(#t)
      if n == nil then error("object length is not an integer", 2) end
      local e = n + 1
      if not (p >= 1 and p <= e) then error("bad argument #2 to 'insert' (position out of bounds)", 2) end
      for i = e, p + 1, -1 do t[i] = t[i - 1] end
      t[p] = v
      return
    end
  end
  return tinsert(t, ...)
end
function table.remove(t, pos)
  if pos == nil and getmetatable(t) == nil then return tremove(t) end
  local p = pos == nil and nil or int(pos)
  if (pos == nil or p ~= nil) and type(t) == "table" then
    local size = int(#t)
    if size == nil then error("object length is not an integer", 2) end
    if pos == nil then p = size end
    if getmetatable(t) ~= nil or size - p > 4096 then
      if p ~= size and not (p >= 1 and p <= size + 1) then
        error("bad argument #2 to 'remove' (position out of bounds)", 2)
      end
      local v = t[p]
      while p < size do t[p] = t[p + 1]; p = p + 1 end
      t[p] = nil
      return v
    end
  end
  if pos == nil then return tremove(t) end
  return tremove(t, pos)
end

-- load of a reader function: its pieces are read here, as Lua's load reads them (an
-- error in the reader is load's answer, nil and the error as raised; numbers are text),
-- so the chunk's size is known before it is parsed (the `load` below takes text only,
-- at most H.max_chunk bytes: Lua checks labels in quadratic time, in C).
local raw_load, concat, max_chunk = load, table.concat, H.max_chunk
function load(chunk, ...)
  if type(chunk) == "function" then
    local parts, n = {}, 0
    while true do
      local ok, piece = pcall(chunk)
      if not ok then return nil, piece end
      if piece == nil or piece == "" then break end
      if type(piece) == "number" then
        piece = tostring(piece)
      elseif type(piece) ~= "string" then
        return nil, "reader function must return a string"
      end
      n = n + #piece
      if n > max_chunk then
        return nil, "chunk of " .. n .. " bytes or more, larger than the mailpush sandbox's " .. max_chunk .. " for load"
      end
      parts[#parts + 1] = piece
    end
    chunk = concat(parts)
    -- (The name Lua gives a reader's chunk; an env is passed on only if given: a nil
    -- given is an env of nil.)
    local name = ...
    if name == nil then name = "=(load)" end
    return raw_load(chunk, name, select(2, ...))
  end
  return raw_load(chunk, ...)
end

-- table.sort without a comparator compares in C, where the hook does not look: a table
-- of huge equal strings (each comparison reads them whole) ran for many minutes. With a
-- Lua comparator each comparison is seen; the order is the same (Lua's `<`).
local tsort = table.sort
local function less(a, b) return a < b end
function table.sort(t, comp)
  if comp ~= nil then return tsort(t, comp) end
  return tsort(t, less)
end

-- Lua patterns run in C and backtrack: their cost grows as the subject length to the
-- power of the number of repetition items. Refuse calls whose worst case exceeds the
-- sandbox's bound; plain searches go to a linear-time search.
local H_pattern_ok, H_plain_find = H.pattern_ok, H.plain_find
local sfind, smatch, sgmatch, sgsub = string.find, string.match, string.gmatch, string.gsub
local function guard(name, s, p, repl, n)
  if type(s) == "string" and type(p) == "string" then
    local why, arg = H_pattern_ok(name, s, p, repl, n)
    if why then error("bad argument #" .. arg .. " to '" .. name .. "' (" .. why .. ")", 3) end
  end
end
function string.find(s, p, init, plain)
  if type(s) == "number" then s = tostring(s) end
  if type(p) == "number" then p = tostring(p) end
  if plain and type(s) == "string" and type(p) == "string" then
    return H_plain_find(s, p, init)
  end
  guard("find", s, p)
  return sfind(s, p, init, plain)
end
function string.match(s, p, init)
  guard("match", s, p)
  return smatch(s, p, init)
end
function string.gmatch(s, p, init)
  guard("gmatch", s, p)
  return sgmatch(s, p, init)
end
-- (A replacement string's escapes are worked through at each match, even where they add
-- nothing to the result: they count too.)
function string.gsub(s, p, repl, n)
  guard("gsub", s, p, type(repl) == "string" and repl or nil, math_tointeger(n))
  return sgsub(s, p, repl, n)
end

-- The debug library is not the script's (it could switch the time budget's hook off); its
-- `traceback`, the usual `xpcall` handler, is kept as what it is to a script: a message.
debug = {
  traceback = function(a, b)
    local msg = a
    if type(a) == "thread" then msg = b end
    if msg ~= nil and type(msg) ~= "string" and type(msg) ~= "number" then return msg end
    local head = msg ~= nil and (tostring(msg) .. "\n") or ""
    return head .. "stack traceback:\n\t(not available in the mailpush sandbox)"
  end,
}

-- print writes to mailpush's log (info), not to the process's stdout.
local H_log = H.log
function print(...)
  local n = select("#", ...)
  local parts = {}
  for i = 1, n do parts[i] = tostring((select(i, ...))) end
  H_log("info", table_concat(parts, "\t"))
end
