"""
The cork (Outbox.cork, Corks): while a connection's admission waits for Redis, the
handshake's 101 waits too, and leaves with ``connected`` in one send; nothing ever
overtakes it, and no cork outlives its connection or the CORK_SECONDS bound.
"""

from twisted.internet import task
from twisted.trial import unittest

from realtime.transport.outbox import Corks


class _Corked:
    """A connection as Corks sees a corked one (Outbox.cork / uncork)."""

    def __init__(self, corks, log, name):
        self.corks, self.log, self.name, self._corked = corks, log, name, True
        corks.add(self)

    def uncork(self):
        if self._corked:
            self._corked = False
            self.corks.uncorked()
            self.log.append(self.name)


class CorksTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.corks = Corks(self.clock)
        self.log = []

    def cork(self, name):
        return _Corked(self.corks, self.log, name)

    def test_uncorked_after_cork_seconds_at_the_latest(self):
        """A cork nobody lifts is lifted CORK_SECONDS after it was put, oldest first."""
        self.cork("a")
        self.clock.advance(Corks.CORK_SECONDS / 2)
        self.cork("b")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # one timer for all
        self.clock.advance(Corks.CORK_SECONDS / 2)
        self.assertEqual(self.log, ["a"])
        self.clock.advance(Corks.CORK_SECONDS / 2)
        self.assertEqual(self.log, ["a", "b"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_the_last_uncork_stops_the_timer(self):
        """Corks lifted by their admission leave no timer behind (nor the connections)."""
        first, second = self.cork("a"), self.cork("b")
        first.uncork()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        second.uncork()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.corks._corked), 0)
        self.clock.advance(1)
        self.assertEqual(self.log, ["a", "b"])

    def test_cancel_then_a_late_uncork_keeps_a_newer_corks_bound(self):
        """
        After cancel (service stop), the connections it forgot uncork without counting:
        a connection corked since keeps its CORK_SECONDS bound.
        """
        old = self.cork("old")
        self.corks.cancel()
        self.cork("new")
        old.uncork()  # its admission answers late: counts nothing (not corked any more)
        self.clock.advance(Corks.CORK_SECONDS)
        self.assertEqual(self.log, ["new"])

    def test_a_failing_uncork_does_not_stop_the_others(self):
        """An exception uncorking one connection is logged; the later ones still uncork."""
        broken = self.cork("broken")

        def boom():
            raise RuntimeError("boom")

        broken.uncork = boom
        self.clock.advance(Corks.CORK_SECONDS / 2)
        self.cork("after")
        self.clock.advance(Corks.CORK_SECONDS)
        self.assertEqual(self.log, ["after"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
