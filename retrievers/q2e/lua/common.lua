local function decay(dt, hl)
  if dt <= 0 or hl <= 0 then return 1.0 end
  return 0.5 ^ (dt / hl)
end
local function unpack_stats(raw)
  local v = {}
  for x in string.gmatch(raw, '[^,]+') do v[#v + 1] = tonumber(x) end
  return v  -- prior, imp, clk, play, like, fav, skip, ts
end
local function pack_stats(v)
  local parts = {}
  for i = 1, 8 do parts[i] = string.format('%.17g', v[i]) end
  return table.concat(parts, ',')
end
local function decayed(v, now, hl)
  local f = decay(now - v[8], hl)
  if f == 1.0 then return v end
  return {v[1], v[2] * f, v[3] * f, v[4] * f, v[5] * f, v[6] * f, v[7] * f, now}
end
local function posterior(v, c)
  local s = c[2]
  local alpha = v[1] * s + c[4] * v[3] + c[5] * v[4] + c[6] * v[5] + c[7] * v[6]
  local neg = v[2] - math.max(v[3], v[4])
  if neg < 0 then neg = 0 end
  local beta = (1 - v[1]) * s + c[9] * neg + c[8] * v[7]
  local total = alpha + beta
  if total <= 0 then return 0 end
  return alpha / total
end
local function read_cfg(first)
  local c = {}
  for i = 0, 8 do c[i + 1] = tonumber(ARGV[first + i]) end
  return c
end
-- Resolves a query to its stored key: exact, else (order-insensitive) via alias or sorted key.
local function resolve(p, q, sorted_q)
  if redis.call('EXISTS', p .. ':z:' .. q) == 1 then return q end
  if sorted_q ~= '' then
    local a = redis.call('HGET', p .. ':alias', sorted_q)
    if a and redis.call('EXISTS', p .. ':z:' .. a) == 1 then return a end
    if sorted_q ~= q and redis.call('EXISTS', p .. ':z:' .. sorted_q) == 1 then return sorted_q end
  end
  return nil
end
