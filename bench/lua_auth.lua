-- keygate bench: the Lua contender. What a team would write by hand instead of keygate, with
-- Envoy's Lua filter (envoy.filters.http.lua, LuaJIT): a per-worker table of key -> identity
-- with a TTL, `httpCall` to the keystore's lookup endpoint on a miss, three identity headers
-- set (client-sent ones removed first), 401 for an unknown key, 503 when the store fails.
--
-- Envoy's Lua API has no digest function (the stream handle offers base64Escape,
-- verifySignature, importPublicKey, timestamps, no hashing), so the key id (lowercase hex
-- SHA-256 of the key, as the keystore stores it) is computed in pure Lua with LuaJIT's `bit`
-- library, on a miss only: the table is keyed by the raw key, as a hand-written filter would
-- do it (the raw keys then sit in each worker's memory).
--
-- What it does not have, by construction: no single-flight (N concurrent first requests for
-- one key are N store lookups, on every worker), no table shared between workers, no
-- revocation feed (a revoked key works until its TTL runs out), no miss budget (every unknown
-- key is a store lookup), no bound on the table's size.

local bit = require("bit")
local band, bxor, bnot, rshift, ror, tobit, tohex =
  bit.band, bit.bxor, bit.bnot, bit.rshift, bit.ror, bit.tobit, bit.tohex

local TTL_S = 300
local STORE_TIMEOUT_MS = 1000

local K = {
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
}

local W = {}

local function block(H, msg, at)
  for i = 0, 15 do
    local a, b, c, d = msg:byte(at + 4 * i, at + 4 * i + 3)
    W[i] = tobit(a * 0x1000000 + b * 0x10000 + c * 0x100 + d)
  end
  for i = 16, 63 do
    local w15, w2 = W[i - 15], W[i - 2]
    local s0 = bxor(ror(w15, 7), ror(w15, 18), rshift(w15, 3))
    local s1 = bxor(ror(w2, 17), ror(w2, 19), rshift(w2, 10))
    W[i] = tobit(W[i - 16] + s0 + W[i - 7] + s1)
  end
  local a, b, c, d, e, f, g, h = H[1], H[2], H[3], H[4], H[5], H[6], H[7], H[8]
  for i = 0, 63 do
    local s1 = bxor(ror(e, 6), ror(e, 11), ror(e, 25))
    local ch = bxor(band(e, f), band(bnot(e), g))
    local t1 = tobit(h + s1 + ch + K[i + 1] + W[i])
    local s0 = bxor(ror(a, 2), ror(a, 13), ror(a, 22))
    local maj = bxor(band(a, b), band(a, c), band(b, c))
    h, g, f, e, d, c, b, a = g, f, e, tobit(d + t1), c, b, a, tobit(t1 + s0 + maj)
  end
  H[1], H[2], H[3], H[4] = tobit(H[1] + a), tobit(H[2] + b), tobit(H[3] + c), tobit(H[4] + d)
  H[5], H[6], H[7], H[8] = tobit(H[5] + e), tobit(H[6] + f), tobit(H[7] + g), tobit(H[8] + h)
end

-- Lowercase hex SHA-256 of `msg` (shorter than 512 MiB).
local function sha256_hex(msg)
  local H = {
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
  }
  local bits = #msg * 8
  msg = msg .. "\128" .. string.rep("\0", (55 - #msg) % 64) .. "\0\0\0\0"
    .. string.char(band(rshift(bits, 24), 255), band(rshift(bits, 16), 255),
      band(rshift(bits, 8), 255), band(bits, 255))
  for at = 1, #msg, 64 do
    block(H, msg, at)
  end
  local out = {}
  for i = 1, 8 do
    out[i] = tohex(H[i], 8)
  end
  return table.concat(out)
end

-- This worker's table: raw key -> { account, user, role, expires }.
local cache = {}

local function json_field(body, name)
  return body and body:match('"' .. name .. '"%s*:%s*"([^"]*)"')
end

-- The identity for `key`: from the table, or asked from the store. nil, status on failure.
local function identity(handle, key, now)
  local hit = cache[key]
  if hit and hit.expires > now then
    return hit
  end
  local headers, body = handle:httpCall("keystore", {
    [":method"] = "GET",
    [":path"] = "/v1/keys/" .. sha256_hex(key),
    [":authority"] = "keystore",
  }, "", STORE_TIMEOUT_MS)
  local status = headers and headers[":status"]
  if status == "404" then
    return nil, 401
  end
  if status ~= "200" then
    return nil, 503
  end
  local id = {
    account = json_field(body, "account_id"),
    user = json_field(body, "user_id"),
    role = json_field(body, "role"),
    expires = now + TTL_S,
  }
  if not (id.account and id.user and id.role) then
    return nil, 503
  end
  cache[key] = id
  return id
end

function envoy_on_request(handle)
  local headers = handle:headers()
  headers:remove("x-account-id")
  headers:remove("x-user-id")
  headers:remove("x-role")
  local key = headers:get("x-api-key")
  if key == nil or key == "" then
    handle:respond({ [":status"] = "401" }, "")
    return
  end
  local id, status = identity(handle, key, os.time())
  if id == nil then
    handle:respond({ [":status"] = tostring(status) }, "")
    return
  end
  -- After httpCall (a yield) the headers object from before is out of scope: ask again.
  headers = handle:headers()
  headers:replace("x-account-id", id.account)
  headers:replace("x-user-id", id.user)
  headers:replace("x-role", id.role)
end

-- The bench's check of the hash (run by keygate-bench before measuring, outside Envoy).
return { sha256_hex = sha256_hex }
