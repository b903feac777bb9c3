local p, now, hl = ARGV[1], tonumber(ARGV[4]), tonumber(ARGV[5])
local q = resolve(p, ARGV[2], ARGV[3])
if not q then return {} end
local zk, hk = p .. ':z:' .. q, p .. ':h:' .. q
local ntracks = redis.call('ZCARD', zk)
local nev = redis.call('HLEN', hk)
if nev > 0 then nev = nev - 4 end
local m = redis.call('HMGET', hk, '#n', '#i', '#e', '#t')
local ev = 0
if m[3] then ev = tonumber(m[3]) * decay(now - tonumber(m[4]), hl) end
return {q, ntracks, nev, tonumber(m[1] or 0), tonumber(m[2] or 0), string.format('%.17g', ev)}
