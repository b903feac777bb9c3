-- Loads (or creates) a pair's stats: the first event copies the prior out of the sorted set.
local function load_pair(hk, zk, t, default_prior)
  local raw = redis.call('HGET', hk, t)
  if raw then return unpack_stats(raw) end
  local z = redis.call('ZSCORE', zk, t)
  local prior = default_prior
  if z then prior = tonumber(z) end
  return {prior, 0, 0, 0, 0, 0, 0, 0}
end
local function add(v, idx, amount, ts, hl)
  if ts >= v[8] then
    local f = decay(ts - v[8], hl)
    for i = 2, 7 do v[i] = v[i] * f end
    v[8] = ts
    v[idx] = v[idx] + amount
  else
    v[idx] = v[idx] + amount * decay(v[8] - ts, hl)
  end
end
local function init_meta(hk)
  if redis.call('HEXISTS', hk, '#n') == 0 then
    redis.call('HSET', hk, '#n', 0, '#i', 0, '#e', 0, '#t', 0)
  end
end
local function alias(p, q, sorted_q)
  if sorted_q ~= '' then redis.call('HSETNX', p .. ':alias', sorted_q, q) end
end
