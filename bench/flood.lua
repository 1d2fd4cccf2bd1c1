-- keygate bench: the flood. Distinct random API keys at a fixed rate.
--
--   wrk -t1 -c64 -d10s -s bench/flood.lua http://127.0.0.1:PORT/ -- RATE [THREADS]
--
-- Every request carries a fresh random key shaped like a real one (`kg_` and 43 base64url
-- characters), so none is ever cached. wrk has no rate limit of its own: `delay()` runs
-- before each request and holds it until its slot on a fixed schedule (start + i / rate, per
-- wrk thread), read from CLOCK_MONOTONIC through LuaJIT's FFI. Connections only carry the
-- requests; they must be enough to keep the schedule (rate x latency), and the runner checks
-- the rate actually achieved.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } kg_bench_timespec;
int clock_gettime(int clk_id, kg_bench_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local ts = ffi.new("kg_bench_timespec")

local function now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
local per_ms = 5.0 -- requests per millisecond for this thread
local start = nil
local slot = 0

function init(args)
  local rate = tonumber(args[1]) or 5000
  local threads = tonumber(args[2]) or 1
  per_ms = rate / threads / 1000
  -- A different sequence in every run and every thread.
  math.randomseed((now_ms() * 1000) % 2147483647)
end

function delay()
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
  local key = {}
  for i = 1, 43 do
    local r = math.random(1, 64)
    key[i] = ALPHABET:sub(r, r)
  end
  return wrk.format("GET", "/flood", { ["x-api-key"] = "kg_" .. table.concat(key) })
end
