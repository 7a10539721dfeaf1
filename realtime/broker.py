"""
Brokers deliver an event (see :mod:`realtime.registry`) to every process.

:class:`MemoryBroker` is the one-process default: publishing dispatches to the local registry
at once.  A Redis broker (several processes) implements the same interface.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from zope.interface import Attribute, Interface, implementer


class IBroker(Interface):
    state = Attribute("'up', or a word saying why events may not reach other processes")

    def publish(event: dict) -> Deferred:
        """
        Deliver ``event`` to every process (this one included).  Fires with the number of
        local connections reached when the event is accepted; fails when it cannot be
        accepted (the caller then tells its client).
        """

    def start() -> None:
        """Begin (connect, subscribe)."""

    def stop() -> Deferred:
        """End; fires when stopped."""


@implementer(IBroker)
class MemoryBroker:
    """One process: an event is dispatched to the local registry when published."""

    state = "up"

    def __init__(self, registry):
        self._registry = registry

    def publish(self, event: dict) -> Deferred:
        return succeed(self._registry.dispatch(event))

    def start(self) -> None:
        pass

    def stop(self) -> Deferred:
        return succeed(None)
