"""The Lua scripts of :mod:`serving.redisstore`: Redis runs each one atomically and logs its effects to the
AOF as one ``MULTI``/``EXEC``, so a batch is stored (and recovered after a crash) whole or not at all.

``APPEND`` KEYS: clock, seq, oldest, ``batch:<id>``, then ``e:<user>``, ``v:<user>`` per user; ARGV: max_events, ttl (0: none),
now, total events, then per user its key and event count followed by (ts, JSON payload) pairs. Returns the
write clock, how many events fell outside their user's window, and each user's version before (or ""). The
result is kept 10 minutes under the batch's id: a client retrying after a lost reply gets it back, and the
batch is not stored twice.

``SWEEP`` KEYS: oldest, clock; ARGV: cutoff, key prefix, how many users to visit. Deletes events stored before
the cutoff, gives their users a new version (or deletes users left with nothing); returns (visited, removed).
"""

APPEND = """
local done = redis.call('GET', KEYS[4])
if done then return cjson.decode(done) end
local max, ttl, now, total = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local clock = redis.call('INCR', KEYS[1])
local seq = redis.call('INCRBY', KEYS[2], total) - total
local before, trimmed, a = {}, 0, 5
for u = 5, #KEYS, 2 do
  local ekey, vkey, user, n = KEYS[u], KEYS[u + 1], ARGV[a], tonumber(ARGV[a + 1])
  a = a + 2
  before[#before + 1] = redis.call('GET', vkey) or ''
  local added = {}
  for i = 1, n do
    seq = seq + 1
    added[i] = string.format('%016x', seq) .. ARGV[a + 1]
    redis.call('ZADD', ekey, ARGV[a], added[i])
    a = a + 2
  end
  redis.call('ZREMRANGEBYRANK', ekey, 0, -(max + 1))
  for i = 1, n do
    if not redis.call('ZSCORE', ekey, added[i]) then trimmed = trimmed + 1 end
  end
  redis.call('SET', vkey, clock)
  redis.call('ZADD', KEYS[3], 'NX', now, user)
  if ttl > 0 then
    redis.call('EXPIRE', ekey, ttl)
    redis.call('EXPIRE', vkey, ttl)
  end
end
local result = {clock, trimmed, before}
redis.call('SET', KEYS[4], cjson.encode(result), 'EX', 600)
return result
"""

SWEEP = """
local cutoff, prefix = tonumber(ARGV[1]), ARGV[2]
local users = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
if #users == 0 then return {0, 0} end
local clock = redis.call('INCR', KEYS[2])
local removed = 0
for _, user in ipairs(users) do
  local ekey, vkey, oldest, gone = prefix .. 'e:' .. user, prefix .. 'v:' .. user, false, {}
  for _, m in ipairs(redis.call('ZRANGE', ekey, 0, -1)) do
    local at = cjson.decode(string.sub(m, 17))[4]
    if at < cutoff then gone[#gone + 1] = m elseif not oldest or at < oldest then oldest = at end
  end
  for i = 1, #gone, 1000 do  -- in chunks: unpack() fails past Lua's C stack limit (about 8,000 values)
    redis.call('ZREM', ekey, unpack(gone, i, math.min(i + 999, #gone)))
  end
  removed = removed + #gone
  if oldest then
    redis.call('ZADD', KEYS[1], oldest, user)
    if #gone > 0 then redis.call('SET', vkey, clock, 'KEEPTTL') end
  else
    redis.call('ZREM', KEYS[1], user)
    redis.call('DEL', vkey, ekey)
  end
end
return {#users, removed}
"""
