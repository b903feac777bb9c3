local p, now = ARGV[1], tonumber(ARGV[4])
local c = read_cfg(5)
local q = resolve(p, ARGV[2], ARGV[3])
if not q or #ARGV < 14 then return {} end
local zk, hk = p .. ':z:' .. q, p .. ':h:' .. q
local out = {}
for i = 14, #ARGV do
  local t = ARGV[i]
  local raw = redis.call('HGET', hk, t)
  local s = nil
  if raw then
    s = posterior(decayed(unpack_stats(raw), now, c[1]), c)
  else
    local z = redis.call('ZSCORE', zk, t)
    if z then s = tonumber(z) end
  end
  if s then out[#out + 1] = t; out[#out + 1] = string.format('%.17g', s) end
end
return out
