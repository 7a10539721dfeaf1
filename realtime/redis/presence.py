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
idempotent and a lost write is repaired by the next one.  The writes of one reactor turn
(opens with their per-user limit check, and the counts written when connections close) go
to Redis together, in the order they were made, as one script (``presence_scripts.BATCH``,
at most ``MAX_BATCH`` writes a script): a reconnect storm admits hundreds of connections per
turn, and one script per connection (a command, a timeout timer and a reply each) was most
of what Redis added to a connection's setup.  The script runs the writes one after the
other exactly as separate scripts would (an open counts the other live processes' hashes
plus this process's own connections, the reservations of the same batch included), and
atomically, so the per-user limit holds across processes as before.  When a write fails (Redis away)
or the lease is found missing (Redis restarted), the next renewal rewrites the whole hash
from the local counts: presence comes back by itself within ``ttl / 3`` after Redis does
(at once on a reconnection).  Until every process has done so, a "not connected" answer
could be false: :mod:`realtime.redis.presence_recovery` answers it ``PresenceIncomplete``.

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

from realtime.auth.identity import AuthFailure
from realtime.hub.presence import ConnectionCounts, IPresence, SessionNumbers
from realtime.redis import presence_scripts as lua
from realtime.redis.client import RedisUnavailable
from realtime.redis.presence_recovery import PresenceRecovery


@implementer(IPresence)
class RedisPresence:
    """
    Presence shared by every process through Redis (see the module docstring).

    :param client: a :class:`realtime.redis.client.RedisClient` (the broker's command
        connection can be shared).
    :param ttl: lease time in seconds; renewed every ``ttl / 3``.
    """

    _log = Logger()

    #: most writes in one script
    MAX_BATCH = 256

    #: ``connection_opened`` takes ``revoked_key`` (the gateway's revocation_at_admission)
    checks_revocation_keys = True

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
        self._pending = []  # (operation, (Deferred, conn id, user, limit) or None) this turn
        self._flush_call = None
        # after Redis lost the data: which processes are not back yet (503, not 404)
        self.recovery = PresenceRecovery(client, clock, prefix, self.process_id, ttl,
                                         lua.PROCESSES)

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
        self._flush()  # this turn's writes go first, as they were made before
        # Leave at once rather than after the lease expires.
        d = self._client.eval(
            "redis.call('SREM', ARGV[1] .. 'procs', ARGV[2]); "
            "redis.call('DEL', ARGV[1] .. 'proc:' .. ARGV[2], ARGV[1] .. 'presence:' .. ARGV[2]); "
            "return 1", args=(self.prefix, self.process_id))
        return d.addErrback(lambda f: f.trap(RedisUnavailable) and None)

    def _reconnected(self, _protocol) -> None:
        self._dirty = True
        if self.renewals:  # we had a lease: is it still there?
            self.recovery.reconnected()
        self._renew()

    def _renew(self) -> Deferred:
        """Renew the lease; rewrite every count when they may be wrong in Redis."""
        if not self._client.connected:
            self._dirty = True
            return succeed(None)
        if self._dirty:
            d = self._resync()
        else:
            d = self._client.eval(lua.RENEW, args=(self.prefix, self.process_id, self._ttl_ms,
                                                self._lease))
            d.addCallback(lambda kept: None if int(kept) else self._lease_lost())

        def done(result):
            self.renewals += 1
            self.recovery.refresh()
            return result

        def failed(failure):
            failure.trap(RedisUnavailable)
            self._dirty = True

        # A LoopingCall stops on an error: swallow (and log) everything.
        return d.addCallbacks(done, failed).addErrback(
            lambda f: self._log.failure("renewing the presence lease failed", f))

    def _lease_lost(self) -> Deferred:
        self.recovery.lost()
        return self._resync()

    def _resync(self) -> Deferred:
        self._dirty = False
        args = [self.prefix, self.process_id, self._ttl_ms, self._lease]
        for user_id, count in self._counts.by_user.items():
            args += [user_id, str(count)]

        def failed(failure):
            self._dirty = True
            return failure

        return self._client.eval(lua.RESYNC, args=args).addErrback(failed)

    # -- writes -------------------------------------------------------------------------

    def connection_opened(self, conn_id, user_id, limit=None, revoked_key=None) -> Deferred:
        """
        See the interface.  ``revoked_key``: the Redis key of the connection's token's
        revocation (:meth:`RedisRevocationStore.admission_key`), checked by the same script
        that admits it: the Deferred fails with ``AuthFailure("revoked")`` when it exists,
        and with ``AuthFailure("unavailable")`` when Redis cannot answer (a token that could
        not be checked is not admitted, as a revocation store that cannot answer refuses).
        """
        if conn_id in self._counts.by_conn:
            return succeed(True)
        mine = self._counts.add(conn_id, user_id)  # reserved at once: concurrent opens see it
        d = Deferred()
        self._queue(("o", user_id, str(limit or 0), str(mine), revoked_key or ""),
                    (d, conn_id, user_id, limit, revoked_key))
        return d

    def connection_closed(self, conn_id, user_id=None) -> None:
        self._forget(conn_id)

    def _forget(self, conn_id) -> None:
        user_id = self._counts.remove(conn_id)
        if user_id is None:
            return
        self._queue(("s", user_id, str(self._counts.count(user_id)), "", ""), None)

    def _queue(self, operation, waiting) -> None:
        """One write, sent with the others of this reactor turn, in order (see lua.BATCH)."""
        self._pending.append((operation, waiting))
        if self._flush_call is None:
            self._flush_call = self._clock.callLater(0, self._flush)

    def _flush(self) -> None:
        """Send the writes of this turn: one script per ``MAX_BATCH`` of them, in order."""
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        pending, self._pending = self._pending, []
        for i in range(0, len(pending), self.MAX_BATCH):
            self._send(pending[i:i + self.MAX_BATCH])

    def _send(self, batch) -> None:
        args = [self.prefix, self.process_id, self._ttl_ms, self._lease]
        for operation, _ in batch:
            args += operation
        d = self._client.eval(lua.BATCH, args=args)

        def answered(results):
            for (_, waiting), result in zip(batch, results):
                if waiting is None:
                    continue
                waiter, conn_id = waiting[:2]
                if int(result) == -2:
                    self._forget(conn_id)
                    waiter.errback(AuthFailure("revoked", "token revoked"))
                elif int(result) < 0:
                    self._forget(conn_id)
                    waiter.callback(False)
                else:
                    waiter.callback(True)

        def failed(failure):
            unavailable = failure.check(RedisUnavailable)
            if unavailable:
                self._dirty = True  # the next renewal rewrites every count
            else:
                self._log.failure("updating presence failed", failure)
            # newest first: the connections refused by the per-process limit are the last
            # ones, as when each open failed on its own
            for _, waiting in reversed(batch):
                if waiting is None:
                    continue
                waiter, conn_id, user_id, limit, revoked_key = waiting
                if not unavailable:
                    self._forget(conn_id)  # not admitted: not counted
                    waiter.errback(failure)
                elif revoked_key is not None:  # its token could not be checked: no
                    self._forget(conn_id)
                    waiter.errback(AuthFailure("unavailable", "revocation store unreachable"))
                elif limit is not None and self._counts.count(user_id) > limit:
                    # this process's counts only: the limit holds per process meanwhile
                    self._forget(conn_id)
                    waiter.callback(False)
                else:
                    waiter.callback(True)

        d.addCallbacks(answered, failed).addErrback(
            lambda f: self._log.failure("answering presence writes failed", f))

    # -- reads --------------------------------------------------------------------------

    def users(self) -> Deferred:
        d = self._client.eval(lua.USERS, args=(self.prefix, ""))
        return d.addCallback(_pairs_to_dict).addCallback(self.recovery.check)

    def connection_count(self, user_id) -> Deferred:
        d = self._client.eval(lua.USERS, args=(self.prefix, user_id))
        d.addCallback(lambda flat: _pairs_to_dict(flat).get(user_id, 0))
        return d.addCallback(lambda n: self.recovery.check(n, trusted=n > 0))

    def total(self) -> Deferred:
        return self.users().addCallback(lambda users: sum(users.values()))

    def processes(self) -> Deferred:
        d = self._client.eval(lua.PROCESSES, args=(self.prefix,))
        return d.addCallback(lambda live: self.recovery.seen(live) or sorted(live))

    def process_counts(self) -> Deferred:
        def counts(flat):
            flat = flat or []
            return {flat[i]: {"authenticated": int(flat[i + 1]), "users": int(flat[i + 2])}
                    for i in range(0, len(flat) - 2, 3)}

        return self._client.eval(lua.PROCESS_COUNTS, args=(self.prefix,)).addCallback(counts)

    def new_session(self, user_id) -> Deferred:
        d = self._client.eval(lua.NEW_SESSION, args=(self.prefix,))

        def local(failure):
            failure.trap(RedisUnavailable)
            return self._sessions.next()

        return d.addCallbacks(int, local)

def _pairs_to_dict(flat) -> Dict[str, int]:
    flat = flat or []
    return {flat[i]: int(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}
