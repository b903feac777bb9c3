local p = ARGV[1]
local c = read_cfg(2)
local n_pairs = 0
for q, sq, rest in string.gmatch(ARGV[11], '([^\t\n]*)\t([^\t\n]*)\t([^\n]*)\n') do
  local zk, hk = p .. ':z:' .. q, p .. ':h:' .. q
  if sq ~= '' then redis.call('HSETNX', p .. ':alias', sq, q) end
  if redis.call('EXISTS', hk) == 0 then
    -- No evidence for this query: the sorted set holds the priors. ZADD in chunks because
    -- Lua's unpack has a small stack limit.
    local args = {}
    for t, s in string.gmatch(rest, '(%S+) (%S+)') do
      args[#args + 1] = s
      args[#args + 1] = t
      if #args >= 1000 then
        redis.call('ZADD', zk, unpack(args))
        n_pairs = n_pairs + #args / 2
        args = {}
      end
    end
    if #args > 0 then
      redis.call('ZADD', zk, unpack(args))
      n_pairs = n_pairs + #args / 2
    end
  else
    -- Pairs with evidence keep it; only their prior changes.
    for t, s in string.gmatch(rest, '(%S+) (%S+)') do
      local raw = redis.call('HGET', hk, t)
      if raw then
        local v = unpack_stats(raw)
        v[1] = tonumber(s)
        redis.call('HSET', hk, t, pack_stats(v))
        redis.call('ZADD', zk, posterior(v, c), t)
      else
        redis.call('ZADD', zk, s, t)
      end
      n_pairs = n_pairs + 1
    end
  end
end
return n_pairs
