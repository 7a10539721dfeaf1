"""
When Redis loses the presence data (it restarted empty, or was flushed), every process
writes its own connections back (:class:`realtime.redis.presence.RedisPresence` does it as
soon as it reconnects), but not all at the same moment: each reconnects on its own backoff
(up to about 2 s).  Until the last one has, Redis does not know every connected user, and
"not connected" would be a guess: a REST message would answer a false 404
``not_connected``.  :class:`PresenceRecovery` makes that window explicit, per process:

- it remembers the other processes it saw alive (the live processes are read after every
  lease renewal, every ``ttl / 3``);
- when this process finds its own lease gone although it had one (checked first thing on
  every reconnection, and at every renewal), Redis lost the data: presence is
  *incomplete* until every process seen alive before is alive again in Redis (it has
  written its connections back), or until the lease time (``ttl``,
  ``REALTIME_PRESENCE_TTL_MS``) has passed, after which a process that has not come back
  counts as gone, exactly as a process killed without a goodbye does;
- while incomplete, an answer that could be false (a count of 0, the list of connected
  users) fails with :class:`realtime.hub.presence.PresenceIncomplete`, which the REST API
  answers 503 with ``Retry-After`` (retry later, nothing was done); a positive count is
  true already and is answered.

A process started after the last look before the loss is not waited for (its users may
get a 404 during the window); a process that was merely cut from Redis for less than
``ttl`` finds its lease kept, and nothing is incomplete.
"""

from __future__ import annotations

from typing import Iterable

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from realtime.hub.presence import PresenceIncomplete
from realtime.redis.client import RedisUnavailable


class PresenceRecovery:
    """
    :param client: the presence's :class:`realtime.redis.client.RedisClient`.
    :param processes_script: the Lua script answering the live process ids (ARGV: prefix).
    """

    _log = Logger()

    def __init__(self, client, clock, prefix: str, process_id: str, ttl: float,
                 processes_script: str):
        self._client = client
        self._clock = clock
        self._prefix = prefix
        self._me = process_id
        self._ttl = ttl
        self._script = processes_script
        self.peers = frozenset()  # the other processes seen alive at the last look
        self._awaited = set()  # those not back yet since Redis lost the data
        self._until = 0.0

    def awaiting(self) -> bool:
        """True while presence is known to be incomplete."""
        if self._awaited and self._clock.seconds() >= self._until:
            self._log.warn("presence: {processes} gave up on after the lease time",
                           processes=sorted(self._awaited))
            self._awaited.clear()
        return bool(self._awaited)

    def seen(self, live: Iterable[str]) -> None:
        """The processes alive in Redis now."""
        live = set(live) - {self._me}
        self._awaited -= live
        self.peers = frozenset(live | self._awaited)

    def lost(self) -> None:
        """This process's lease is gone: Redis lost the presence data."""
        self._awaited = set(self.peers)
        self._until = self._clock.seconds() + self._ttl
        self._log.info("presence: Redis lost its data (restarted?); until {count} other "
                       "processes write their connections back (at most {ttl} s), "
                       "'not connected' is answered 503", count=len(self._awaited),
                       ttl=self._ttl)

    def reconnected(self) -> None:
        """
        Called on a reconnection by a process that had a lease, before it writes its
        connections back (commands run in order: this check comes first).
        """
        d = self._client.execute("EXISTS", f"{self._prefix}proc:{self._me}")
        d.addCallback(lambda kept: None if int(kept) else self.lost())
        d.addErrback(lambda f: f.trap(RedisUnavailable) and None)
        d.addErrback(lambda f: self._log.failure("checking the presence lease failed", f))

    def look(self) -> Deferred:
        """Read the live processes (:meth:`seen`); failures are the caller's."""
        d = self._client.eval(self._script, args=(self._prefix,))
        return d.addCallback(self.seen)

    def refresh(self) -> None:
        """:meth:`look`, fire and forget (after each renewal)."""
        d = self.look()
        d.addErrback(lambda f: f.trap(RedisUnavailable) and None)
        d.addErrback(lambda f: self._log.failure("reading the live processes failed", f))

    def check(self, answer, trusted: bool = False):
        """
        ``answer`` (a Deferred of it), or :class:`PresenceIncomplete` while presence is
        incomplete; ``trusted``: the answer is true whatever is missing (a positive count).
        """
        if trusted or not self.awaiting():
            return succeed(answer)

        def looked(_):
            if self.awaiting():
                raise PresenceIncomplete(
                    f"{len(self._awaited)} processes have not written their connections "
                    "back since Redis lost its data")
            return answer

        return self.look().addCallback(looked)
