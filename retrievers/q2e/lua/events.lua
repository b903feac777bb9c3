local p, ttl = ARGV[1], tonumber(ARGV[2])
local c = read_cfg(3)
local hl = c[1]
local applied = 0
for i = 12, #ARGV, 6 do
  local eid, q, sq, t = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local idx, ts = tonumber(ARGV[i + 4]), tonumber(ARGV[i + 5])
  if redis.call('SET', p .. ':seen:e:' .. eid, '1', 'NX', 'EX', ttl) then
    local zk, hk = p .. ':z:' .. q, p .. ':h:' .. q
    init_meta(hk)
    local v = load_pair(hk, zk, t, c[3])
    add(v, idx, 1.0, ts, hl)
    redis.call('HSET', hk, t, pack_stats(v))
    redis.call('ZADD', zk, posterior(v, c), t)
    local m = redis.call('HMGET', hk, '#e', '#t')
    local e, et = tonumber(m[1]), tonumber(m[2])
    if ts >= et then e = e * decay(ts - et, hl) + 1; et = ts else e = e + decay(et - ts, hl) end
    redis.call('HSET', hk, '#e', string.format('%.17g', e), '#t', string.format('%.17g', et))
    redis.call('HINCRBY', hk, '#n', 1)
    alias(p, q, sq)
    applied = applied + 1
  end
end
return applied
