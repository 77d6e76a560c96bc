-- `ltn12` for mailpush: a pure-Lua emulation of LuaSocket's LTN12 1.0.3 (filters, sources,
-- sinks and pumps). Loaded as chunk(H) (H is unused).
-- Deliberate difference: source.file and sink.file need the io library, which the sandbox
-- does not have; they raise an error.
local type, error, assert, select = type, error, assert, select
local string_sub = string.sub
local table_unpack = table.unpack

local M = { _VERSION = "LTN12 1.0.3", BLOCKSIZE = 2048 }
local filter, source, sink, pump = {}, {}, {}, {}
M.filter, M.source, M.sink, M.pump = filter, source, sink, pump

local NO_FILES = "ltn12 file sources and sinks are not available in the mailpush sandbox"

-- ------------------------------------------------------------------ filters

-- A high-level filter from a low-level one: low(ctx, chunk, extra) -> ret, newctx.
function filter.cycle(low, ctx, extra)
  assert(low)
  return function(chunk)
    local ret
    ret, ctx = low(ctx, chunk, extra)
    return ret
  end
end

-- Chains filters so that the output of each is the input of the next. A filter may return
-- "" to ask for more input; after the end of the input (nil) each filter is drained in turn
-- until it returns nil.
function filter.chain(...)
  local fs = { ... }
  local n = select("#", ...)
  local top, idx = 1, 1   -- filters below `top` have been drained; idx is the one to call
  local pending = ""      -- what to feed again after a downstream filter asked for more
  return function(chunk)
    pending = chunk and pending
    while true do
      if idx == top then
        chunk = fs[idx](chunk)
        if chunk == "" or top == n then
          return chunk
        elseif chunk then
          idx = idx + 1
        else              -- this filter is exhausted: move the drain point down the chain
          top = top + 1
          idx = top
        end
      else
        chunk = fs[idx](chunk or "")
        if chunk == "" then
          idx = idx - 1
          chunk = pending
        elseif chunk then
          if idx == n then return chunk end
          idx = idx + 1
        else
          error("filter returned inappropriate nil")
        end
      end
    end
  end
end

-- ------------------------------------------------------------------ sources

local function empty_source() return nil end

function source.empty() return empty_source end

function source.error(err)
  return function() return nil, err end
end

function source.file()
  error(NO_FILES, 2)
end

-- A fancy source may return (nil, newsource) to hand over to another source.
function source.simplify(src)
  assert(src)
  return function()
    local chunk, err_or_new = src()
    src = err_or_new or src
    if not chunk then return nil, err_or_new end
    return chunk
  end
end

function source.string(s)
  if not s then return source.empty() end
  local pos = 1
  return function()
    local chunk = string_sub(s, pos, pos + M.BLOCKSIZE - 1)
    pos = pos + M.BLOCKSIZE
    if chunk == "" then return nil end
    return chunk
  end
end

function source.table(t)
  assert(type(t) == "table")
  local i = 0
  return function()
    i = i + 1
    return t[i]
  end
end

-- Calling the source with a chunk pushes it back; it is returned before new data.
function source.rewind(src)
  assert(src)
  local stack = {}
  return function(chunk)
    if chunk then
      stack[#stack + 1] = chunk
      return
    end
    local n = #stack
    if n == 0 then return src() end
    chunk = stack[n]
    stack[n] = nil
    return chunk
  end
end

function source.chain(src, f, ...)
  if ... then f = filter.chain(f, ...) end
  assert(src and f)
  local last_in, last_out = "", ""
  local feeding = true
  return function()
    if not last_out then error("source is empty!", 2) end
    while true do
      if feeding then
        local err
        last_in, err = src()
        if err then return nil, err end
        last_out = f(last_in)
        if not last_out then
          if last_in then error("filter returned inappropriate nil") end
          return nil
        elseif last_out ~= "" then
          feeding = false
          if last_in then last_in = "" end
          return last_out
        end
      else
        last_out = f(last_in)
        if last_out == "" then
          if last_in ~= "" then error('filter returned ""') end
          feeding = true
        elseif not last_out then
          if last_in then error("filter returned inappropriate nil") end
          return nil
        else
          return last_out
        end
      end
    end
  end
end

-- Concatenates sources: each is read until it ends, then the next one.
function source.cat(...)
  local srcs = { ... }
  local i = 1
  return function()
    local src = srcs[i]
    while src do
      local chunk, err = src()
      if chunk then return chunk end
      if err then return nil, err end
      i = i + 1
      src = srcs[i]
    end
  end
end

-- ------------------------------------------------------------------ sinks

function sink.table(t)
  t = t or {}
  return function(chunk, err)
    if chunk then t[#t + 1] = chunk end
    return 1
  end, t
end

-- A fancy sink may return (1, newsink) to hand over to another sink.
function sink.simplify(snk)
  assert(snk)
  return function(chunk, err)
    local ret, err_or_new = snk(chunk, err)
    if not ret then return nil, err_or_new end
    snk = err_or_new or snk
    return 1
  end
end

function sink.file()
  error(NO_FILES, 2)
end

local function null_sink() return 1 end

function sink.null() return null_sink end

function sink.error(err)
  return function() return nil, err end
end

function sink.chain(f, snk, ...)
  if ... then
    local all = { f, snk, ... }
    snk = all[#all]
    all[#all] = nil
    f = filter.chain(table_unpack(all))
  end
  assert(f and snk)
  return function(chunk, err)
    if chunk == "" then return 1 end
    local filtered = f(chunk)
    local done = chunk and ""
    while true do
      local ret, snkerr = snk(filtered, err)
      if not ret then return nil, snkerr end
      if filtered == done then return 1 end
      filtered = f(done)
    end
  end
end

-- ------------------------------------------------------------------ pumps

function pump.step(src, snk)
  local chunk, src_err = src()
  local ret, snk_err = snk(chunk, src_err)
  if chunk and ret then return 1 end
  return nil, src_err or snk_err
end

function pump.all(src, snk, step)
  assert(src and snk)
  step = step or pump.step
  while true do
    local ret, err = step(src, snk)
    if not ret then
      if err then return nil, err end
      return 1
    end
  end
end

return M
