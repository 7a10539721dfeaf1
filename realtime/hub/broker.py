"""
Brokers deliver an event (see :mod:`realtime.hub.registry`) to every process.

:class:`MemoryBroker` is the one-process default: publishing dispatches to the local registry
at once.  A Redis broker (several processes) implements the same interface.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from zope.interface import Attribute, Interface, implementer


class Unavailable(Exception):
    """
    Shared state (the broker, presence, a store) cannot answer now: Redis is away or too
    slow.  REST answers 503, auth answers no (4101).  Every such failure is a subclass.
    """


#: ``failure.check(*UNAVAILABLE)`` / ``except UNAVAILABLE``
UNAVAILABLE = (Unavailable,)


class BrokerUnavailable(Unavailable):
    """
    ``publish`` could not hand the event to the other processes (Redis away or too slow):
    nobody received it.  The REST layer answers 503; a client's ``publish`` gets an error.
    """


class IBroker(Interface):
    state = Attribute("'up', or a word saying why events may not reach other processes")
    redis_state = Attribute("the Redis connection's state for the status: 'off' without Redis")

    def publish(event: dict) -> Deferred:
        """
        Deliver ``event`` to every process (this one included).  Fires with the number of
        local connections reached when the event is accepted; fails with
        :class:`BrokerUnavailable` when it cannot be accepted (the caller then tells its
        client: 503).
        """

    def start() -> None:
        """Begin (connect, subscribe)."""

    def stop() -> Deferred:
        """End; fires when stopped."""


@implementer(IBroker)
class MemoryBroker:
    """One process: an event is dispatched to the local registry when published."""

    state = "up"
    redis_state = "off"

    def __init__(self, registry):
        self._registry = registry

    def publish(self, event: dict) -> Deferred:
        return succeed(self._registry.dispatch(event))

    def start(self) -> None:
        pass

    def stop(self) -> Deferred:
        return succeed(None)
