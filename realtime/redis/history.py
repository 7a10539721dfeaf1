"""
Message history in Redis (:class:`realtime.hub.history.IHistory`): every process of a
deployment appends to and reads the same history, so a client may resume on another
process than the one it left.

Keys (``P`` is ``REDIS_PREFIX``)::

    P history:epoch           the epoch of the offsets (set once, SET NX)
    P history:n               the counter of the deployment (realtime.hub.history.next_n);
                              each process also moves it up to its clock every second
                              and takes that as its head (what a new client resumes from)
    P history:s:<stream>      sorted set: score n, member "<n> <ms> <message JSON>"
    P history:g:<stream>      sorted set of the n of dropped messages ("ghosts")
    P history:m:<stream>      hash: floor (highest ghost forgotten)

An append is one Lua script (atomic: the counter, every stream and the trimming move
together, so offsets in a stream always grow and two processes cannot interleave); a read
is another (one round trip, a consistent view).  Each stream's keys expire after seven
TTLs without an append.  Times are the caller's clock (milliseconds), so the TTL follows
the gateway's clock in tests as in production.  If Redis loses its data, the epoch
changes: older offsets are answered ``recovered: false``.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from zope.interface import implementer

from realtime import jsonutil
from realtime.hub.history import (
    FORGET_FACTOR,
    GHOST_FACTOR,
    IHistory,
    Replay,
    clock_n,
    make_offset,
    new_epoch,
    parse_offset,
)

_APPEND = """
redis.call('SET', KEYS[2], ARGV[5], 'NX')
local epoch = redis.call('GET', KEYS[2])
local now = tonumber(ARGV[1])
-- next_n (realtime.hub.history): not a count; formatted with %d (Lua would write 1e+15)
local n = math.max(tonumber(redis.call('GET', KEYS[1]) or '0') + 1, now * 1000)
n = string.format('%d', n)
redis.call('SET', KEYS[1], n)
local text = ARGV[6] .. epoch .. '-' .. n .. '"}'
local size = tonumber(ARGV[2])
local oldest = now - tonumber(ARGV[3])
local ghostmax = tonumber(ARGV[7])
for i = 3, #KEYS, 3 do
  local s, g, m = KEYS[i], KEYS[i + 1], KEYS[i + 2]
  redis.call('ZADD', s, n, n .. ' ' .. ARGV[1] .. ' ' .. text)
  local excess = redis.call('ZCARD', s) - size
  if excess > 0 then
    local old = redis.call('ZRANGE', s, 0, excess - 1, 'WITHSCORES')
    for j = 2, #old, 2 do redis.call('ZADD', g, old[j], old[j]) end
    redis.call('ZREMRANGEBYRANK', s, 0, excess - 1)
  end
  while true do
    local first = redis.call('ZRANGE', s, 0, 0, 'WITHSCORES')
    if #first == 0 then break end
    local at = tonumber(string.match(first[1], '^%d+ (%d+) '))
    if at >= oldest then break end
    redis.call('ZADD', g, first[2], first[2])
    redis.call('ZREMRANGEBYRANK', s, 0, 0)
  end
  local gexcess = redis.call('ZCARD', g) - ghostmax
  if gexcess > 0 then
    local top = redis.call('ZRANGE', g, gexcess - 1, gexcess - 1, 'WITHSCORES')
    redis.call('HSET', m, 'floor', top[2])
    redis.call('ZREMRANGEBYRANK', g, 0, gexcess - 1)
  end
  redis.call('PEXPIRE', s, ARGV[4])
  redis.call('PEXPIRE', g, ARGV[4])
  redis.call('PEXPIRE', m, ARGV[4])
end
return {epoch, n}
"""

# Move the counter up to the caller's clock (ARGV[2]: clock_n - 1, so the next append in
# this millisecond still comes after it) and answer it: head() is that value, which tells
# when this script ran, not when the last message to anyone was appended.
_HEAD = """
redis.call('SET', KEYS[1], ARGV[1], 'NX')
local n = math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), tonumber(ARGV[2]))
n = string.format('%d', n)
redis.call('SET', KEYS[2], n)
return {redis.call('GET', KEYS[1]), n}
"""

#: seconds between two moves of the head (:meth:`RedisHistory.head`)
HEAD_INTERVAL = 1.0

_READ = """
local epoch = redis.call('GET', KEYS[1])
local counter = redis.call('GET', KEYS[2]) or '0'
if epoch ~= ARGV[1] then
  return {0, epoch or '', counter}
end
local after = '(' .. ARGV[2]
local since = tonumber(ARGV[2])
local oldest = tonumber(ARGV[3]) - tonumber(ARGV[4])
local lost = 0
local known = 1
local top = since
local out = {}
for i = 3, #KEYS, 3 do
  local s, g, m = KEYS[i], KEYS[i + 1], KEYS[i + 2]
  local floor = tonumber(redis.call('HGET', m, 'floor') or '0')
  if floor > since then known = 0 end
  lost = lost + redis.call('ZCOUNT', g, after, '+inf')
  local last = redis.call('ZREVRANGE', g, 0, 0, 'WITHSCORES')
  if #last > 0 and tonumber(last[2]) > top then top = tonumber(last[2]) end
  local entries = redis.call('ZRANGEBYSCORE', s, after, '+inf')
  for _, e in ipairs(entries) do
    local n, at = string.match(e, '^(%d+) (%d+) ')
    if tonumber(n) > top then top = tonumber(n) end
    if tonumber(at) < oldest then lost = lost + 1 else out[#out + 1] = e end
  end
end
return {1, epoch, lost, known, string.format('%d', top), out}
"""


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


@implementer(IHistory)
class RedisHistory:
    """
    :param client: a :class:`realtime.redis.client.RedisClient` (the broker's commands).
    :param clock: an ``IReactorTime``.
    :param prefix: ``REDIS_PREFIX``.
    """

    def __init__(self, client, clock, prefix: str = "realtime:", size: int = 1000,
                 ttl: float = 24 * 3600.0):
        self._client = client
        self._clock = clock
        self._prefix = prefix + "history:"
        self.size = size
        self.ttl = ttl
        self._epoch = None
        self._n = 0
        self._refreshing = False
        self._stopped = False
        # Learn where the history stands at every (re)connection (and create its epoch),
        # then every HEAD_INTERVAL while connected.
        client.on_connect_hooks.append(self._connected)
        self._ticker = LoopingCall(self._tick)
        self._ticker.clock = clock

    def _connected(self, protocol=None) -> Deferred:
        if not self._ticker.running and not self._stopped:
            self._ticker.start(HEAD_INTERVAL, now=False)
        return self._refresh_head()

    def _tick(self) -> None:
        if self._client.connected:
            self._refresh_soon()

    def _refresh_soon(self) -> None:
        if not self._refreshing:
            self._refresh_head().addErrback(lambda f: None)  # the next tick tries again

    def stop(self) -> None:
        self._stopped = True  # for good: a reconnection during the shutdown starts nothing
        if self._ticker.running:
            self._ticker.stop()

    def _refresh_head(self) -> Deferred:
        d = self._client.eval(_HEAD, [self._prefix + "epoch", self._prefix + "n"],
                              [new_epoch(), str(clock_n(self._clock.seconds()) - 1)])

        def answered(reply):
            self._epoch, self._n = _text(reply[0]), int(_text(reply[1]))

        def done(result):
            self._refreshing = False
            return result

        self._refreshing = True
        return d.addCallback(answered).addBoth(done)

    def _saw(self, epoch: str) -> None:
        # An offset of another epoch (Redis lost its data): the new epoch's start, until
        # the next refresh (a resume from it replays more, never less).  The offsets
        # themselves do not move the head: that would tell when the last message was sent.
        if self._epoch is not None and epoch != self._epoch:
            self._epoch, self._n = epoch, 0
            self._refresh_soon()

    def head(self):
        """
        Where the counter stood at the last refresh (at most HEAD_INTERVAL ago while Redis
        is reachable): every later append comes after it, on any process.
        """
        if self._epoch is None:
            return None
        return make_offset(self._epoch, self._n)

    def _keys(self, streams) -> list:
        keys = [self._prefix + "epoch", self._prefix + "n"]
        for name in dict.fromkeys(streams):
            keys += [self._prefix + "s:" + name, self._prefix + "g:" + name,
                     self._prefix + "m:" + name]
        return keys

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    def append(self, streams, message: dict) -> Deferred:
        keys = self._keys(streams)
        keys[0], keys[1] = keys[1], keys[0]  # the script takes the counter first
        head = jsonutil.dumps_text(message)[:-1] + ',"offset":"'
        ttl_ms = int(self.ttl * 1000)
        d = self._client.eval(_APPEND, keys, [
            str(self._now_ms()), str(self.size), str(ttl_ms),
            str(FORGET_FACTOR * ttl_ms), new_epoch(), head, str(GHOST_FACTOR * self.size)])

        def appended(reply):
            epoch, n = _text(reply[0]), int(reply[1])
            self._saw(epoch)
            offset = make_offset(epoch, n)
            return offset, head + offset + '"}'

        return d.addCallback(appended)

    def read(self, streams, since: str) -> Deferred:
        epoch, after = parse_offset(since)
        d = self._client.eval(_READ, self._keys(streams), [
            epoch, str(after), str(self._now_ms()), str(int(self.ttl * 1000))])

        def answered(reply):
            if int(reply[0]) == 0:
                current = _text(reply[1]) or epoch
                if _text(reply[1]):
                    self._saw(current)
                return Replay([], False, None, make_offset(current, int(_text(reply[2]))))
            current, lost, known, top = _text(reply[1]), int(reply[2]), int(reply[3]), \
                int(_text(reply[4]))
            found = {}
            for entry in reply[5] or ():
                n, _, text = _text(entry).split(" ", 2)
                found[int(n)] = text
            messages = [found[n] for n in sorted(found)]
            return Replay(messages, bool(known) and lost == 0, lost if known else None,
                          make_offset(current, top))

        return d.addCallback(answered)
