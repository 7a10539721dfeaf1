"""
The timer wheel (realtime.timerwheel) on a task.Clock: timers fire on time (never early, at
most one resolution late), cancel as DelayedCalls do, and the wheel holds one reactor call
at most, none when no timer is pending.
"""

import time

from twisted.internet.error import AlreadyCalled, AlreadyCancelled
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from realtime.timerwheel import TimerWheel
from tests.test_protocol_memory import make_listener, open_connection


def make(resolution=0.25, start=1_700_000_000.123):
    clock = Clock()
    clock.advance(start)
    return clock, TimerWheel(clock, resolution)


def run_until(clock, end, step=0.01):
    while clock.seconds() < end:
        clock.advance(step)


class FiringTests(unittest.TestCase):
    def test_fires_on_time(self):
        """Each timer fires at or after its due time, and at most one resolution after it."""
        clock, wheel = make()
        fired = {}
        start = clock.seconds()
        delays = [0, 0.001, 0.1, 0.25, 0.26, 1.3, 5, 10, 299.99]
        for d in delays:
            wheel.callLater(d, lambda d=d: fired.setdefault(d, clock.seconds()))
        run_until(clock, start + 301)
        self.assertEqual(sorted(fired), delays)
        for d in delays:
            late = fired[d] - (start + d)
            self.assertGreaterEqual(late, -1e-6, f"delay {d} fired early")
            self.assertLessEqual(late, wheel.resolution + 0.011, f"delay {d} fired late")

    def test_large_advance_fires_everything_due(self):
        """One big clock jump fires every timer that has come due, in due order."""
        clock, wheel = make()
        fired = []
        for d in (30, 10, 20):
            wheel.callLater(d, fired.append, d)
        clock.advance(25)
        self.assertEqual(fired, [10, 20])
        clock.advance(10)
        self.assertEqual(fired, [10, 20, 30])

    def test_arguments(self):
        """Positional and keyword arguments reach the callback."""
        clock, wheel = make()
        got = []
        wheel.callLater(1, lambda a, b=None: got.append((a, b)), 1, b=2)
        clock.advance(2)
        self.assertEqual(got, [(1, 2)])

    def test_same_slot_in_order(self):
        """Timers of one slot fire in the order they were set."""
        clock, wheel = make(resolution=1.0)
        fired = []
        for i in range(5):
            wheel.callLater(0.5, fired.append, i)
        clock.advance(2)
        self.assertEqual(fired, [0, 1, 2, 3, 4])

    def test_set_from_a_callback(self):
        """A timer set by a firing callback, with no delay, fires (soon, not in a loop)."""
        clock, wheel = make()
        fired = []
        wheel.callLater(1, lambda: wheel.callLater(0, fired.append, "second"))
        clock.advance(1.3)
        clock.advance(0.3)
        self.assertEqual(fired, ["second"])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_earlier_timer_moves_the_reactor_call(self):
        """A timer due before the earliest pending one is not held back by it."""
        clock, wheel = make()
        fired = []
        wheel.callLater(100, fired.append, "late")
        wheel.callLater(1, fired.append, "early")
        clock.advance(1.3)
        self.assertEqual(fired, ["early"])
        self.assertEqual(len(clock.getDelayedCalls()), 1)

    def test_failing_callback_is_logged_and_others_fire(self):
        """A callback that raises is logged; the other timers of the slot still fire."""
        clock, wheel = make()
        failures = []

        def observe(event):
            if event.get("log_failure") is not None:
                failures.append(event["log_failure"])

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        fired = []
        wheel.callLater(1, lambda: 1 / 0)
        wheel.callLater(1, fired.append, "other")
        clock.advance(2)
        self.assertEqual(fired, ["other"])
        self.assertEqual(len(failures), 1)
        self.assertTrue(failures[0].check(ZeroDivisionError))
        self.flushLoggedErrors(ZeroDivisionError)

    def test_seconds_and_get_time(self):
        """seconds() is the clock's; getTime() is the due time asked for."""
        clock, wheel = make()
        self.assertEqual(wheel.seconds(), clock.seconds())
        timer = wheel.callLater(3, lambda: None)
        self.assertEqual(timer.getTime(), clock.seconds() + 3)
        timer.cancel()

    def test_resolution_must_be_positive(self):
        self.assertRaises(ValueError, TimerWheel, Clock(), 0)


class CancelTests(unittest.TestCase):
    def test_cancelled_timer_does_not_fire(self):
        """cancel() stops a timer: active() is False and it never fires."""
        clock, wheel = make()
        fired = []
        timer = wheel.callLater(1, fired.append, 1)
        self.assertTrue(timer.active())
        timer.cancel()
        self.assertFalse(timer.active())
        clock.advance(5)
        self.assertEqual(fired, [])
        self.assertEqual(wheel.pending, 0)

    def test_cancel_twice_or_after_firing(self):
        """As DelayedCall: AlreadyCancelled, AlreadyCalled."""
        clock, wheel = make()
        timer = wheel.callLater(1, lambda: None)
        timer.cancel()
        self.assertRaises(AlreadyCancelled, timer.cancel)
        fired = wheel.callLater(1, lambda: None)
        clock.advance(2)
        self.assertFalse(fired.active())
        self.assertRaises(AlreadyCalled, fired.cancel)

    def test_cancel_from_a_callback_of_the_same_slot(self):
        """A callback cancelling a later timer of its own slot stops it."""
        clock, wheel = make(resolution=1.0)
        fired = []
        holder = []
        wheel.callLater(0.5, lambda: holder[0].cancel())
        holder.append(wheel.callLater(0.5, fired.append, "cancelled"))
        clock.advance(2)
        self.assertEqual(fired, [])

    def test_cancel_all(self):
        """cancel_all() leaves no timer and no reactor call."""
        clock, wheel = make()
        timers = [wheel.callLater(d, lambda: None) for d in (1, 2, 3)]
        wheel.cancel_all()
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertFalse(any(t.active() for t in timers))


class ReactorCallTests(unittest.TestCase):
    def test_one_reactor_call_for_many_timers(self):
        """However many timers, the wheel holds one reactor call; none once all are done."""
        clock, wheel = make()
        timers = [wheel.callLater(i * 0.01, lambda: None) for i in range(1000)]
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        self.assertEqual(wheel.pending, 1000)
        for t in timers[:500]:
            t.cancel()
        clock.advance(11)
        self.assertEqual(wheel.pending, 0)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_cancelling_the_last_timer_cancels_the_reactor_call(self):
        """No pending timer, no reactor call (a stopped service leaves a clean reactor)."""
        clock, wheel = make()
        timers = [wheel.callLater(d, lambda: None) for d in (1, 50, 100)]
        timers[0].cancel()
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        timers[2].cancel()
        timers[1].cancel()
        self.assertEqual(clock.getDelayedCalls(), [])
        fired = []
        wheel.callLater(1, fired.append, 1)  # and the wheel still works afterwards
        clock.advance(2)
        self.assertEqual(fired, [1])


class ConnectionTimerTests(unittest.TestCase):
    """The gateway's per-connection timers run on its wheel (as the service wires them)."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(time.time())  # PyJWT checks exp against the wall clock
        self.gateway, self.listener = make_listener(self.clock)

    def test_connections_share_one_reactor_call(self):
        """Many open connections (expiry timers each) hold one reactor call between them."""
        for i in range(20):
            open_connection(self, {"sub": f"user-{i}"}, listener=self.listener)
        self.assertEqual(self.gateway.timers.pending, 20)  # the first-line ones cancelled
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_token_expiry_fires_on_time(self):
        """A JWT's connection is closed at exp + leeway: not before, at most a slot after."""
        exp = int(self.clock.seconds()) + 60
        conn, transport = open_connection(self, {"exp": exp}, listener=self.listener)
        transport.clear()
        self.clock.advance(exp + 5 - self.clock.seconds() - 0.01)
        self.assertNotIn(b"auth_failed", transport.value())
        self.clock.advance(0.01 + self.gateway.timers.resolution + 0.001)
        self.assertIn(b'"reason":"token-expired"', transport.value())

    def test_auth_timeout_fires_on_time(self):
        """A connection without credentials is refused at the auth timeout, not before."""
        conn, transport = open_connection(self, path="/ws", listener=self.listener)
        timeout = self.gateway.config.ws_auth_timeout_ms / 1000.0
        self.clock.advance(timeout - 0.01)
        self.assertNotIn(b"auth_failed", transport.value())
        self.clock.advance(0.01 + self.gateway.timers.resolution + 0.001)
        self.assertIn(b'"reason":"timeout"', transport.value())

    def test_first_line_timeout_on_the_wheel(self):
        """A connection that sends nothing is aborted at the first-line timeout."""
        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import StringTransport
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1))
        router = self.listener.buildProtocol(transport.getPeer())
        router.makeConnection(transport)
        self.assertEqual(self.gateway.timers.pending, 1)
        self.clock.advance(self.listener.first_line_timeout - 0.01)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.01 + self.gateway.timers.resolution + 0.001)
        self.assertTrue(transport.disconnecting)
