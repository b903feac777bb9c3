local p, ttl = ARGV[1], tonumber(ARGV[2])
local c = read_cfg(3)
local sid, q, sq, ts = ARGV[12], ARGV[13], ARGV[14], tonumber(ARGV[15])
if not redis.call('SET', p .. ':seen:s:' .. sid, '1', 'NX', 'EX', ttl) then return 0 end
local zk, hk = p .. ':z:' .. q, p .. ':h:' .. q
init_meta(hk)
for i = 16, #ARGV do
  local t = ARGV[i]
  local v = load_pair(hk, zk, t, c[3])
  add(v, 2, 1.0, ts, c[1])
  redis.call('HSET', hk, t, pack_stats(v))
  redis.call('ZADD', zk, posterior(v, c), t)
end
redis.call('HINCRBY', hk, '#i', 1)
alias(p, q, sq)
return 1
