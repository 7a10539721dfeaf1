"""
realtime.feeds.pacing.Turns: background work (resume replays) one piece per reactor turn,
first come first served, so that the network is polled between any two pieces.
"""

from twisted.internet.defer import CancelledError, inlineCallbacks
from twisted.trial import unittest

from realtime.feeds.pacing import NoPacing, Turns


class TurnClock:
    """
    ``callLater(0, …)`` as a reactor runs it: a call made during a turn runs on the next
    turn, after the poll (``ReactorBase.runUntilCurrent`` inserts new calls only at its
    start).  (``task.Clock.advance(0)`` would run the whole chain at once.)
    """

    def __init__(self):
        self.calls = []

    def callLater(self, delay, f, *args):
        assert delay == 0
        self.calls.append((f, args))
        return object()

    def advance(self, _):
        """One reactor turn: the calls made before it."""
        calls, self.calls = self.calls, []
        for f, args in calls:
            f(*args)

    def getDelayedCalls(self):
        return self.calls


class TurnsTests(unittest.TestCase):

    def setUp(self):
        self.clock = TurnClock()
        self.turns = Turns(self.clock)

    def test_one_waiter_per_turn_in_order(self):
        """Three waiters: none at once, then one per turn, in the order they asked."""
        fired = []
        for name in "abc":
            self.turns.next().addCallback(lambda _, n=name: fired.append(n))
        self.assertEqual((fired, len(self.turns)), ([], 3))
        for expected in (["a"], ["a", "b"], ["a", "b", "c"]):
            self.clock.advance(0)
            self.assertEqual(fired, expected)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_cancelled_wait_gives_its_turn_away(self):
        """A waiter cancelled (its replay stopped) is skipped: the next one has that turn."""
        first, second = self.turns.next(), self.turns.next()
        first.cancel()
        self.failureResultOf(first, CancelledError)
        self.clock.advance(0)
        self.assertIsNone(self.successResultOf(second))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_two_workers_alternate(self):
        """Two loops of work, each piece after a turn: their pieces alternate."""
        done = []

        @inlineCallbacks
        def work(name):
            for i in range(3):
                yield self.turns.next()
                done.append(f"{name}{i}")

        a, b = work("a"), work("b")
        for _ in range(6):
            self.clock.advance(0)
        self.assertEqual(done, ["a0", "b0", "a1", "b1", "a2", "b2"])
        self.successResultOf(a)
        self.successResultOf(b)

    def test_no_pacing_fires_at_once(self):
        """NoPacing (unit tests of the replay logic) never waits."""
        self.assertIsNone(self.successResultOf(NoPacing().next()))
