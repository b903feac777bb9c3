local p, k, now, max_exact = ARGV[1], tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local c = read_cfg(7)
local q = resolve(p, ARGV[2], ARGV[3])
if not q then return {} end
local zk, hk = p .. ':z:' .. q, p .. ':h:' .. q
local nev = redis.call('HLEN', hk)
if nev > 0 then nev = nev - 4 end
local items, stats = {}, {}
if nev <= max_exact then
  -- Pairs without evidence score exactly their prior, so the top k + nev of the sorted set holds
  -- k of them; every pair with evidence is rescored with decay: the result is the exact top k.
  if nev > 0 then
    local all = redis.call('HGETALL', hk)
    for i = 1, #all, 2 do
      if string.sub(all[i], 1, 1) ~= '#' then stats[all[i]] = all[i + 1] end
    end
  end
  local z = redis.call('ZREVRANGE', zk, 0, k - 1 + nev, 'WITHSCORES')
  for i = 1, #z, 2 do
    if not stats[z[i]] then items[#items + 1] = {z[i], tonumber(z[i + 1])} end
  end
  for t, raw in pairs(stats) do
    items[#items + 1] = {t, posterior(decayed(unpack_stats(raw), now, c[1]), c)}
  end
else
  -- Too many pairs with evidence to rescore all: rescore a window (decay only moves a score
  -- back towards its prior, so the window misses little).
  local z = redis.call('ZREVRANGE', zk, 0, k - 1 + 64, 'WITHSCORES')
  local ids = {}
  for i = 1, #z, 2 do ids[#ids + 1] = z[i] end
  local raws = redis.call('HMGET', hk, unpack(ids))
  for i = 1, #ids do
    local s = tonumber(z[2 * i])
    if raws[i] then s = posterior(decayed(unpack_stats(raws[i]), now, c[1]), c) end
    items[#items + 1] = {ids[i], s}
  end
end
table.sort(items, function(a, b) if a[2] ~= b[2] then return a[2] > b[2] end return a[1] > b[1] end)
local out = {}
for i = 1, math.min(k, #items) do
  out[#out + 1] = items[i][1]
  out[#out + 1] = string.format('%.17g', items[i][2])
end
return out
