"""
The Lua scripts of :class:`realtime.redis.presence.RedisPresence` (the Redis layout and the
rules they implement are in that module's docstring).  Each runs atomically in Redis; every
key is built from the prefix passed in ``ARGV[1]``.
"""

# Sum the user's counts over the live processes (and forget the dead ones).
_LIVE_PROCS = """
local function live_procs(prefix)
  local live = {}
  for _, p in ipairs(redis.call('SMEMBERS', prefix .. 'procs')) do
    if redis.call('EXISTS', prefix .. 'proc:' .. p) == 1 then
      table.insert(live, p)
    else
      redis.call('SREM', prefix .. 'procs', p)
      redis.call('DEL', prefix .. 'presence:' .. p)
    end
  end
  return live
end
"""

# ARGV: prefix, me, ttl_ms, lease value, then one operation per five values, run in order:
#   'o', user, limit (0: none), my new count of the user, revocation key ('': none)
#        an open: -2 its token is revoked (the key exists), -1 refused, else the total
#   's', user, my count of the user, '', ''                 a count written (0: removed): 0
# An open counts the user's connections on the live processes but this one, plus ``mine -
# 1`` (this process's others, reservations of this batch included), exactly as one script
# per open did; the live processes are looked up once for the batch.  An open whose token's
# revocation key exists records nothing, and the later opens of its user in the batch do not
# count its reservation.
BATCH = _LIVE_PROCS + """
local prefix, me, ttl, lease = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local key = prefix .. 'presence:' .. me
local others = nil
local opened = false
local revoked = {}
local out = {}
for i = 5, #ARGV, 5 do
  local user = ARGV[i + 1]
  if ARGV[i] == 'o' and ARGV[i + 4] ~= '' and redis.call('EXISTS', ARGV[i + 4]) == 1 then
    revoked[user] = (revoked[user] or 0) + 1
    table.insert(out, -2)
  elseif ARGV[i] == 'o' then
    if others == nil then
      others = {}
      for _, p in ipairs(live_procs(prefix)) do
        if p ~= me then table.insert(others, prefix .. 'presence:' .. p) end
      end
    end
    local limit = tonumber(ARGV[i + 2])
    local mine = tonumber(ARGV[i + 3]) - (revoked[user] or 0)
    local total = mine - 1
    for _, other in ipairs(others) do
      total = total + tonumber(redis.call('HGET', other, user) or '0')
    end
    if limit > 0 and total >= limit then
      table.insert(out, -1)
    else
      redis.call('HSET', key, user, tostring(mine))
      opened = true
      table.insert(out, total + 1)
    end
  else
    if tonumber(ARGV[i + 2]) > 0 then
      redis.call('HSET', key, user, ARGV[i + 2])
    else
      redis.call('HDEL', key, user)
    end
    table.insert(out, 0)
  end
end
if opened then
  redis.call('SET', prefix .. 'proc:' .. me, lease, 'PX', ttl)
  redis.call('SADD', prefix .. 'procs', me)
end
redis.call('PEXPIRE', key, ttl)
return out
"""

# ARGV: prefix, me, ttl_ms, lease value.  0: the lease was gone (resync needed).
RENEW = """
local prefix, me = ARGV[1], ARGV[2]
redis.call('SADD', prefix .. 'procs', me)
if redis.call('SET', prefix .. 'proc:' .. me, ARGV[4], 'XX', 'PX', ARGV[3]) then
  redis.call('PEXPIRE', prefix .. 'presence:' .. me, ARGV[3])
  return 1
end
return 0
"""

# ARGV: prefix, me, ttl_ms, lease value, user1, count1, user2, count2, ...
RESYNC = """
local prefix, me, ttl = ARGV[1], ARGV[2], ARGV[3]
local key = prefix .. 'presence:' .. me
redis.call('DEL', key)
for i = 5, #ARGV, 2 do
  redis.call('HSET', key, ARGV[i], ARGV[i + 1])
end
redis.call('PEXPIRE', key, ttl)
redis.call('SET', prefix .. 'proc:' .. me, ARGV[4], 'PX', ttl)
redis.call('SADD', prefix .. 'procs', me)
return 1
"""

# ARGV: prefix, user (empty: every user).  Flat list user, count, user, count, ...
USERS = _LIVE_PROCS + """
local prefix, only = ARGV[1], ARGV[2]
local sums, order = {}, {}
for _, p in ipairs(live_procs(prefix)) do
  local entries
  if only ~= '' then
    entries = {only, redis.call('HGET', prefix .. 'presence:' .. p, only)}
  else
    entries = redis.call('HGETALL', prefix .. 'presence:' .. p)
  end
  for i = 1, #entries, 2 do
    local n = tonumber(entries[i + 1] or '0') or 0
    if n > 0 then
      if sums[entries[i]] == nil then
        sums[entries[i]] = 0
        table.insert(order, entries[i])
      end
      sums[entries[i]] = sums[entries[i]] + n
    end
  end
end
local out = {}
for _, u in ipairs(order) do
  table.insert(out, u)
  table.insert(out, tostring(sums[u]))
end
return out
"""

PROCESSES = _LIVE_PROCS + "return live_procs(ARGV[1])"

# ARGV: prefix.  Flat list process, connections, users, process, connections, users, ...
PROCESS_COUNTS = _LIVE_PROCS + """
local out = {}
for _, p in ipairs(live_procs(ARGV[1])) do
  local connections, users = 0, 0
  for _, n in ipairs(redis.call('HVALS', ARGV[1] .. 'presence:' .. p)) do
    local v = tonumber(n) or 0
    if v > 0 then
      connections = connections + v
      users = users + 1
    end
  end
  table.insert(out, p)
  table.insert(out, connections)
  table.insert(out, users)
end
return out
"""

# ARGV: prefix.  A number above every one handed out before (see the module docstring).
NEW_SESSION = """
local key = ARGV[1] .. 'session-seq'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local last = tonumber(redis.call('GET', key) or '0')
if now <= last then now = last + 1 end
redis.call('SET', key, string.format('%.0f', now))
return string.format('%.0f', now)
"""
