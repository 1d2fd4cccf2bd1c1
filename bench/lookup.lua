-- keygate store bench: key lookups over a list of key ids (bench/runner/src/store).
--
--   wrk -t1 -c16 -d5s -s bench/lookup.lua http://127.0.0.1:PORT/ -- IDFILE [RATE]
--
-- IDFILE holds one key id per line (the runner writes it: half loaded keys, half never
-- loaded, so about half the answers are 404). Each request asks for a random id of the list.
-- RATE (requests/s, this wrk thread) paces the requests on a fixed schedule, as flood.lua
-- does; without it (or 0) wrk sends as fast as the keystore answers.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } kg_store_timespec;
int clock_gettime(int clk_id, kg_store_timespec *tp);
]]
local ts = ffi.new("kg_store_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local ids = {}
local per_ms = 0
local start = nil
local slot = 0

function init(args)
  for line in io.lines(args[1]) do
    if #line == 64 then
      ids[#ids + 1] = line
    end
  end
  if #ids == 0 then
    error("no key ids in " .. tostring(args[1]))
  end
  per_ms = (tonumber(args[2]) or 0) / 1000
  math.randomseed((now_ms() * 1000) % 2147483647)
end

function delay()
  if per_ms <= 0 then
    return 0
  end
  local t = now_ms()
  if start == nil then
    start = t
  end
  local due = start + slot / per_ms
  slot = slot + 1
  if due <= t then
    return 0
  end
  return math.floor(due - t)
end

function request()
  return wrk.format("GET", "/v1/keys/" .. ids[math.random(1, #ids)])
end
