"""
Presence: who is connected, as the REST API asks it.

The REST API never reads the registry for "is this user connected?": it asks the gateway's
presence, whose answers are Deferreds so that a cluster-wide implementation (Redis, every
process's connections) can stand in for :class:`LocalPresence` (this process only, read
from the registry) without changing a caller.
"""

from __future__ import annotations

from typing import Dict

from twisted.internet.defer import Deferred, succeed
from zope.interface import Interface, implementer


class IPresence(Interface):
    def connection_count(user_id: str) -> Deferred:
        """Fires with the number of open, authenticated connections of ``user_id``."""

    def users() -> Deferred:
        """Fires with a dict: user id -> number of connections (only users with some)."""


@implementer(IPresence)
class LocalPresence:
    """The connections of this process (the memory broker's world)."""

    def __init__(self, registry):
        self._registry = registry

    def connection_count(self, user_id: str) -> Deferred:
        return succeed(self._registry.count_of(user_id))

    def users(self) -> Deferred:
        users: Dict[str, int] = self._registry.users()
        return succeed(users)
