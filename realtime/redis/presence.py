"""
Presence across every process: :class:`RedisPresence`, the Redis implementation of the
presence interface (the one-process one is :class:`realtime.hub.presence.LocalPresence`;
the gateway holds one as ``gateway.presence``).

Interface::

    connection_opened(conn_id, user_id, limit=None) -> Deferred[bool]
        record a new authenticated connection; with ``limit``, only if the user has fewer
        than ``limit`` connections in the whole deployment (False: refused, not recorded)
    connection_closed(conn_id, user_id) -> None        idempotent, fire and forget
    connection_count(user_id) -> Deferred[int]         every process
    users() -> Deferred[{user_id: count}]              every process
    total() -> Deferred[int]                           every process
    processes() -> Deferred[[process id, ...]]         live processes
    process_counts() -> Deferred[{process id: {"authenticated": n, "users": m}}]
                                                       each live process's share
    new_session(user_id) -> Deferred[int]              single-session ordering (see below)
    start(), stop() -> Deferred

Redis layout (``P`` = the key prefix, ``X`` = a process id)::

    P procs          SET   the process ids that may be alive
    P proc:X         STR   X's lease (JSON: host, pid, started), expires after ``ttl``
    P presence:X     HASH  user id -> X's connection count, same expiry as the lease
    P session-seq    STR   last session number handed out

Leases.  Each process renews its lease and hash every ``ttl / 3`` seconds
(``REALTIME_PRESENCE_TTL_MS``, default 30 s, so renewal every 10 s).  A process killed with
SIGKILL stops renewing: its lease and its counts expire within ``ttl`` (30 s by default)
of its last renewal, and it drops out of every answer at once since readers only count
processes whose lease exists (and remove the others from ``procs``).  A process that stops
normally deletes its entries at once.

Writes carry this process's own count of the user (never an increment), so they are
idempotent and a lost write is repaired by the next one.  When a write fails (Redis away)
or the lease is found missing (Redis restarted), the next renewal rewrites the whole hash
from the local counts: presence comes back by itself within ``ttl / 3`` after Redis does.

While Redis is away: reads fail with :class:`RedisUnavailable` (a REST call answers 503);
``connection_opened`` still answers, from this process's counts only (the per-user limit is
then enforced per process: refusing every connection because Redis blinked would be worse).

Single-session mode needs to know which of two connections of a user is the newer one,
even when they open at the same moment on two processes.  ``new_session`` hands out
numbers that grow across the deployment: Redis ``TIME`` in microseconds, made strictly
increasing with the last number given (so they keep growing across a Redis restart).  A
``disconnect`` event with ``before: n`` closes the user's connections numbered below n, on
every process: of two racing connections the higher number survives.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Dict, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from realtime.hub.presence import ConnectionCounts, IPresence, SessionNumbers
from realtime.redis.client import RedisUnavailable

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

# ARGV: prefix, me, user, limit (0: none), ttl_ms, my new count of the user, lease value
_OPEN = _LIVE_PROCS + """
local prefix, me, user = ARGV[1], ARGV[2], ARGV[3]
local limit, ttl, mine = tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
local total = mine - 1
for _, p in ipairs(live_procs(prefix)) do
  if p ~= me then
    total = total + tonumber(redis.call('HGET', prefix .. 'presence:' .. p, user) or '0')
  end
end
if limit > 0 and total >= limit then return -1 end
redis.call('SET', prefix .. 'proc:' .. me, ARGV[7], 'PX', ttl)
redis.call('SADD', prefix .. 'procs', me)
redis.call('HSET', prefix .. 'presence:' .. me, user, mine)
redis.call('PEXPIRE', prefix .. 'presence:' .. me, ttl)
return total + 1
"""

# ARGV: prefix, me, user, my count of the user, ttl_ms
_SET_COUNT = """
local key = ARGV[1] .. 'presence:' .. ARGV[2]
if tonumber(ARGV[4]) > 0 then
  redis.call('HSET', key, ARGV[3], ARGV[4])
  redis.call('PEXPIRE', key, ARGV[5])
else
  redis.call('HDEL', key, ARGV[3])
end
return 1
"""

# ARGV: prefix, me, ttl_ms, lease value.  0: the lease was gone (resync needed).
_RENEW = """
local prefix, me = ARGV[1], ARGV[2]
redis.call('SADD', prefix .. 'procs', me)
if redis.call('SET', prefix .. 'proc:' .. me, ARGV[4], 'XX', 'PX', ARGV[3]) then
  redis.call('PEXPIRE', prefix .. 'presence:' .. me, ARGV[3])
  return 1
end
return 0
"""

# ARGV: prefix, me, ttl_ms, lease value, user1, count1, user2, count2, ...
_RESYNC = """
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
_USERS = _LIVE_PROCS + """
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

_PROCESSES = _LIVE_PROCS + "return live_procs(ARGV[1])"

# ARGV: prefix.  Flat list process, connections, users, process, connections, users, ...
_PROCESS_COUNTS = _LIVE_PROCS + """
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
_NEW_SESSION = """
local key = ARGV[1] .. 'session-seq'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local last = tonumber(redis.call('GET', key) or '0')
if now <= last then now = last + 1 end
redis.call('SET', key, string.format('%.0f', now))
return string.format('%.0f', now)
"""


@implementer(IPresence)
class RedisPresence:
    """
    Presence shared by every process through Redis (see the module docstring).

    :param client: a :class:`realtime.redis.client.RedisClient` (the broker's command
        connection can be shared).
    :param ttl: lease time in seconds; renewed every ``ttl / 3``.
    """

    _log = Logger()

    def __init__(self, client, clock, prefix: str = "realtime:", process_id: str = None,
                 ttl: float = 30.0):
        self._client = client
        self._clock = clock
        self.prefix = prefix
        self.process_id = process_id or f"{socket.gethostname()}-{os.getpid()}"
        self.ttl = ttl
        self._counts = ConnectionCounts()
        self._sessions = SessionNumbers(clock)
        self._dirty = True  # the hash in Redis may not match the local counts
        self._lease = json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                  "started": clock.seconds()})
        self._renewer: Optional[LoopingCall] = None
        self.renewals = 0

    @property
    def _ttl_ms(self) -> str:
        return str(max(1, int(self.ttl * 1000)))

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        self._client.on_connect_hooks.append(self._reconnected)
        self._renewer = LoopingCall(self._renew)
        self._renewer.clock = self._clock
        self._renewer.start(self.ttl / 3.0, now=True)

    def stop(self) -> Deferred:
        if self._renewer is not None and self._renewer.running:
            self._renewer.stop()
        self._renewer = None
        if self._reconnected in self._client.on_connect_hooks:
            self._client.on_connect_hooks.remove(self._reconnected)
        # Leave at once rather than after the lease expires.
        d = self._client.eval(
            "redis.call('SREM', ARGV[1] .. 'procs', ARGV[2]); "
            "redis.call('DEL', ARGV[1] .. 'proc:' .. ARGV[2], ARGV[1] .. 'presence:' .. ARGV[2]); "
            "return 1", args=(self.prefix, self.process_id))
        return d.addErrback(lambda f: f.trap(RedisUnavailable) and None)

    def _reconnected(self, _protocol) -> None:
        self._dirty = True
        self._renew()

    def _renew(self) -> Deferred:
        """Renew the lease; rewrite every count when they may be wrong in Redis."""
        if not self._client.connected:
            self._dirty = True
            return succeed(None)
        if self._dirty:
            d = self._resync()
        else:
            d = self._client.eval(_RENEW, args=(self.prefix, self.process_id, self._ttl_ms,
                                                self._lease))
            d.addCallback(lambda kept: None if int(kept) else self._resync())

        def done(result):
            self.renewals += 1
            return result

        def failed(failure):
            failure.trap(RedisUnavailable)
            self._dirty = True

        # A LoopingCall stops on an error: swallow (and log) everything.
        return d.addCallbacks(done, failed).addErrback(
            lambda f: self._log.failure("renewing the presence lease failed", f))

    def _resync(self) -> Deferred:
        self._dirty = False
        args = [self.prefix, self.process_id, self._ttl_ms, self._lease]
        for user_id, count in self._counts.by_user.items():
            args += [user_id, str(count)]

        def failed(failure):
            self._dirty = True
            return failure

        return self._client.eval(_RESYNC, args=args).addErrback(failed)

    # -- writes -------------------------------------------------------------------------

    def connection_opened(self, conn_id, user_id, limit=None) -> Deferred:
        if conn_id in self._counts.by_conn:
            return succeed(True)
        mine = self._counts.add(conn_id, user_id)  # reserved at once: concurrent opens see it
        d = self._client.eval(_OPEN, args=(self.prefix, self.process_id, user_id,
                                           str(limit or 0), self._ttl_ms, str(mine),
                                           self._lease))

        def answered(total):
            if int(total) >= 0:
                return True
            self._forget(conn_id)
            return False

        def unavailable(failure):
            failure.trap(RedisUnavailable)
            self._dirty = True
            if limit is not None and self._counts.count(user_id) > limit:
                self._forget(conn_id)
                return False
            return True

        return d.addCallbacks(answered, unavailable)

    def connection_closed(self, conn_id, user_id=None) -> None:
        self._forget(conn_id)

    def _forget(self, conn_id) -> None:
        user_id = self._counts.remove(conn_id)
        if user_id is None:
            return
        d = self._client.eval(_SET_COUNT, args=(self.prefix, self.process_id, user_id,
                                                str(self._counts.count(user_id)),
                                                self._ttl_ms))

        def failed(failure):
            failure.trap(RedisUnavailable)
            self._dirty = True

        d.addErrback(failed).addErrback(
            lambda f: self._log.failure("updating presence failed", f))

    # -- reads --------------------------------------------------------------------------

    def users(self) -> Deferred:
        d = self._client.eval(_USERS, args=(self.prefix, ""))
        return d.addCallback(_pairs_to_dict)

    def connection_count(self, user_id) -> Deferred:
        d = self._client.eval(_USERS, args=(self.prefix, user_id))
        return d.addCallback(lambda flat: _pairs_to_dict(flat).get(user_id, 0))

    def total(self) -> Deferred:
        return self.users().addCallback(lambda users: sum(users.values()))

    def processes(self) -> Deferred:
        return self._client.eval(_PROCESSES, args=(self.prefix,)).addCallback(sorted)

    def process_counts(self) -> Deferred:
        def counts(flat):
            flat = flat or []
            return {flat[i]: {"authenticated": int(flat[i + 1]), "users": int(flat[i + 2])}
                    for i in range(0, len(flat) - 2, 3)}

        return self._client.eval(_PROCESS_COUNTS, args=(self.prefix,)).addCallback(counts)

    def new_session(self, user_id) -> Deferred:
        d = self._client.eval(_NEW_SESSION, args=(self.prefix,))

        def local(failure):
            failure.trap(RedisUnavailable)
            return self._sessions.next()

        return d.addCallbacks(int, local)

def _pairs_to_dict(flat) -> Dict[str, int]:
    flat = flat or []
    return {flat[i]: int(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}
