"""
Per-connection rate limiting: pure arithmetic on an injected clock.

:class:`SlidingWindow` is an exact sliding window: at most ``limit`` events in any interval
of ``window`` seconds.  It keeps the times of the last ``limit`` accepted events in a ring
buffer that grows as events come (8 bytes per event, up to ``limit``: an idle connection
holds an empty one), so accepting is O(1) and the retry advice is exact: the moment the
oldest of them leaves the window.

:class:`MessageLimiter` is what a connection holds.  Every client message counts, before or
after authentication, and so does every WebSocket ping frame (a ping flood would otherwise
make the server write a pong per ping).  A message over the limit is refused (the client
gets ``error`` ``rate_limited`` with ``retryAfterMs``; a refused ping gets no pong); a
client that keeps sending while refused — more than ``max_refusals`` refusals within one
window (default: a tenth of the limit, at least 10) — is closed with 4008.
"""

from __future__ import annotations

from array import array

_EPSILON = 1e-6
ALLOW = "allow"
REFUSE = "refuse"
CLOSE = "close"


class SlidingWindow:
    """At most ``limit`` events in any ``window`` seconds (``clock``: ``IReactorTime``)."""

    __slots__ = ("limit", "window", "_clock", "_times", "_next", "_count")

    def __init__(self, limit: int, window: float, clock):
        if limit <= 0 or window <= 0:
            raise ValueError("limit and window must be positive")
        self.limit = limit
        self.window = float(window)
        self._clock = clock
        self._times = array("d")  # grows to ``limit`` entries, then used as a ring
        self._next = 0  # index of the oldest stored time once the ring is full
        self._count = 0

    def retry_after(self) -> float:
        """Seconds until one more event would be allowed (0: now)."""
        if self._count < self.limit:
            return 0.0
        wait = self._times[self._next] + self.window - self._clock.seconds()
        return wait if wait > _EPSILON else 0.0  # float noise: waiting the advice suffices

    def hit(self) -> float:
        """Record an event if allowed and return 0; else return the seconds to wait."""
        wait = self.retry_after()
        if wait > 0:
            return wait
        now = self._clock.seconds()
        if self._count < self.limit:
            self._times.append(now)  # the oldest stays at index 0 (= _next) until full
            self._count += 1
        else:
            self._times[self._next] = now
            self._next = (self._next + 1) % self.limit
        return 0.0


class MessageLimiter:
    """
    The rate limit of one connection, and its patience with a client that ignores it.

    :meth:`check` returns ``(verdict, retry_after_seconds)`` where verdict is ``ALLOW``,
    ``REFUSE`` (tell the client and drop the message) or ``CLOSE`` (close 4008).
    """

    __slots__ = ("messages", "refusals")

    def __init__(self, limit: int, window: float, clock, max_refusals: int = None):
        if max_refusals is None:
            max_refusals = max(10, limit // 10)
        self.messages = SlidingWindow(limit, window, clock)
        self.refusals = SlidingWindow(max_refusals, window, clock)

    def check(self):
        wait = self.messages.hit()
        if wait == 0:
            return ALLOW, 0.0
        if self.refusals.hit() > 0:
            return CLOSE, wait
        return REFUSE, wait
