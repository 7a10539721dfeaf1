"""
Presence in one process: :class:`LocalPresence` answers from its own counts (no Redis; the
Redis implementation, for every process of a deployment, is
:class:`realtime.redis.presence.RedisPresence`).  :class:`ConnectionCounts` and
:class:`SessionNumbers` are shared by both.
"""

from __future__ import annotations

from typing import Dict, Optional

from twisted.internet.defer import Deferred, succeed
from zope.interface import Attribute, Interface, implementer

from realtime.hub.broker import Unavailable


class PresenceIncomplete(Unavailable):
    """
    Presence is known to miss some connections now (Redis lost its data and not every
    process has written its connections back yet: :mod:`realtime.redis.presence_recovery`),
    so "not connected" cannot be told.  Retry later.
    """


class IPresence(Interface):
    """
    Which users are connected, with how many connections, across every process.  Every
    answer is a Deferred; one that Redis cannot give fails with an ``Unavailable``, and
    one that could be false because presence is known to be incomplete (a count of 0, the
    users) with :class:`PresenceIncomplete`.
    """

    process_id = Attribute("this process's id in the deployment")

    def connection_opened(conn_id, user_id, limit=None):
        """
        Record a new authenticated connection -> Deferred[bool]; with ``limit``, only if the
        user has fewer than ``limit`` connections in the whole deployment (False: refused,
        not recorded).
        """

    def connection_closed(conn_id, user_id=None):
        """Forget a connection (idempotent, fire and forget)."""

    def connection_count(user_id):
        """-> Deferred[int]: the user's connections, every process."""

    def users():
        """-> Deferred[{user_id: count}], every process."""

    def total():
        """-> Deferred[int]: connections, every process."""

    def processes():
        """-> Deferred[[process id, ...]]: the live processes."""

    def process_counts():
        """-> Deferred[{process id: {"authenticated": n, "users": m}}]: per live process."""

    def new_session(user_id):
        """-> Deferred[int]: a number larger than any handed out before, deployment-wide."""

    def start():
        """Begin (leases, renewals)."""

    def stop():
        """-> Deferred: leave (this process's entries are removed)."""


class ConnectionCounts:
    """This process's connections: conn id -> user, user -> count."""

    def __init__(self):
        self.by_conn: Dict[str, str] = {}
        self.by_user: Dict[str, int] = {}

    def add(self, conn_id: str, user_id: str) -> int:
        self.by_conn[conn_id] = user_id
        self.by_user[user_id] = self.by_user.get(user_id, 0) + 1
        return self.by_user[user_id]

    def remove(self, conn_id: str) -> Optional[str]:
        user_id = self.by_conn.pop(conn_id, None)
        if user_id is None:
            return None
        left = self.by_user.get(user_id, 1) - 1
        if left > 0:
            self.by_user[user_id] = left
        else:
            self.by_user.pop(user_id, None)
        return user_id

    def count(self, user_id: str) -> int:
        return self.by_user.get(user_id, 0)


class SessionNumbers:
    def __init__(self, clock):
        self._clock = clock
        self._last = 0

    def next(self) -> int:
        now = int(self._clock.seconds() * 1e6)
        self._last = max(now, self._last + 1)
        return self._last


@implementer(IPresence)
class LocalPresence:
    """Presence of one process (no Redis): every answer comes from its own counts."""

    def __init__(self, clock):
        self._counts = ConnectionCounts()
        self._sessions = SessionNumbers(clock)
        self.process_id = "local"

    def connection_opened(self, conn_id, user_id, limit=None) -> Deferred:
        return succeed(self.connection_opened_now(conn_id, user_id, limit))

    def connection_opened_now(self, conn_id, user_id, limit=None) -> bool:
        """:meth:`connection_opened` without a Deferred: this presence answers at once
        (the gateway's admission uses it when a presence has it; Redis's has not)."""
        if conn_id in self._counts.by_conn:
            return True
        if limit is not None and self._counts.count(user_id) >= limit:
            return False
        self._counts.add(conn_id, user_id)
        return True

    def connection_closed(self, conn_id, user_id=None) -> None:
        self._counts.remove(conn_id)

    def connection_count(self, user_id) -> Deferred:
        return succeed(self._counts.count(user_id))

    def users(self) -> Deferred:
        return succeed(dict(self._counts.by_user))

    def total(self) -> Deferred:
        return succeed(len(self._counts.by_conn))

    def processes(self) -> Deferred:
        return succeed([self.process_id])

    def process_counts(self) -> Deferred:
        return succeed({self.process_id: {"authenticated": len(self._counts.by_conn),
                                          "users": len(self._counts.by_user)}})

    def new_session(self, user_id) -> Deferred:
        return succeed(self._sessions.next())

    def start(self) -> None:
        pass

    def stop(self) -> Deferred:
        return succeed(None)
