"""
Rate limiting: pure arithmetic on an injected clock.
"""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial import unittest

from realtime.transport.ratelimit import ALLOW, CLOSE, REFUSE, MessageLimiter, SlidingWindow


class SlidingWindowTests(unittest.TestCase):
    def test_burst_up_to_limit_then_refused_with_exact_retry(self):
        """5 per 10 s: five pass at once, the sixth waits until the first leaves the window."""
        clock = Clock()
        window = SlidingWindow(5, 10.0, clock)
        for _ in range(5):
            self.assertEqual(window.hit(), 0)
        self.assertEqual(window.hit(), 10.0)
        clock.advance(4)
        self.assertEqual(window.hit(), 6.0)
        clock.advance(6)  # all five left the window together
        self.assertEqual([window.hit() for _ in range(6)], [0, 0, 0, 0, 0, 10.0])

    def test_sliding_not_fixed(self):
        """Events late in one window still count early in the next (no boundary burst)."""
        clock = Clock()
        window = SlidingWindow(3, 10.0, clock)
        clock.advance(9)
        for _ in range(3):
            self.assertEqual(window.hit(), 0)
        clock.advance(2)  # a fixed window would have reset at t=10
        self.assertEqual(window.hit(), 8.0)

    def test_refused_events_do_not_count(self):
        """Refused events are not recorded: waiting the advised time is enough."""
        clock = Clock()
        window = SlidingWindow(2, 1.0, clock)
        window.hit(), window.hit()
        for _ in range(100):
            self.assertGreater(window.hit(), 0)
        clock.advance(1.0)
        self.assertEqual(window.hit(), 0)

    @settings(max_examples=200, deadline=None)
    @given(limit=st.integers(1, 20), window=st.floats(0.01, 100),
           gaps=st.lists(st.floats(0, 5), max_size=200))
    def test_never_more_than_limit_in_any_window(self, limit, window, gaps):
        """
        For any arrival pattern: no window of the given length ever holds more than
        `limit` accepted events, and waiting the advised time always admits the next one.
        """
        clock = Clock()
        sliding = SlidingWindow(limit, window, clock)
        accepted = []
        for gap in gaps:
            clock.advance(gap)
            wait = sliding.hit()
            if wait == 0:
                accepted.append(clock.seconds())
            else:
                self.assertLessEqual(wait, window + 1e-9)
        for i, t in enumerate(accepted):
            inside = [u for u in accepted[i:] if u < t + window - 1e-6]
            self.assertLessEqual(len(inside), limit)
        wait = sliding.retry_after()
        clock.advance(wait)
        self.assertEqual(sliding.hit(), 0)


class MessageLimiterTests(unittest.TestCase):
    def test_refuse_then_close_for_repeated_abuse(self):
        """Over the limit: REFUSE with retry advice; after 10 refusals in a window, CLOSE."""
        clock = Clock()
        limiter = MessageLimiter(5, 60.0, clock)
        self.assertEqual([limiter.check()[0] for _ in range(5)], [ALLOW] * 5)
        verdicts = [limiter.check() for _ in range(11)]
        self.assertEqual([v for v, _ in verdicts[:10]], [REFUSE] * 10)
        self.assertEqual(verdicts[0][1], 60.0)
        self.assertEqual(verdicts[10][0], CLOSE)

    def test_occasional_overrun_is_forgiven(self):
        """A client that hits the limit now and then, but backs off, is never closed."""
        clock = Clock()
        limiter = MessageLimiter(5, 10.0, clock)
        for _ in range(20):
            results = [limiter.check()[0] for _ in range(7)]
            self.assertNotIn(CLOSE, results)
            clock.advance(10.0)
