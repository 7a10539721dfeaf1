"""
Pacing of background work against live delivery: :class:`Turns` lets the resume replays of
a process (:mod:`realtime.feeds.replay`) run one piece of work per reactor turn, in the
order they asked, so that the reactor polls the network between any two pieces.

Why: a replay's piece of work is parsing one batch of ``_changes`` (a thousand documents:
a few milliseconds) or routing it.  Ten replays whose batches arrive together would
otherwise run back to back in one reactor turn, and a live message that arrived meanwhile
would wait for all of them (tens of milliseconds); with :class:`Turns` it waits for one.
Throughput is unchanged: the pieces are the same, only interleaved with the network.

``yield turns.next()`` waits for the next free turn (``callLater(0)`` on the injected
clock: Twisted runs the calls made during a turn on the next one, after polling).  A wait
that is cancelled (its replay stopped) gives its turn to the next one.
"""

from __future__ import annotations

from collections import deque

from twisted.internet.defer import Deferred


class Turns:
    """One waiter released per reactor turn, first come first served."""

    def __init__(self, clock):
        self._clock = clock
        self._waiting: deque = deque()
        self._call = None

    def __len__(self) -> int:
        return len(self._waiting)

    def next(self) -> Deferred:
        """A Deferred fired (with None) on a turn of its own."""
        d = Deferred()
        self._waiting.append(d)
        if self._call is None:
            self._call = self._clock.callLater(0, self._release)
        return d

    def _release(self) -> None:
        self._call = None
        while self._waiting:
            d = self._waiting.popleft()
            if not d.called:  # (a cancelled wait has been called already: skipped)
                if self._waiting:
                    self._call = self._clock.callLater(0, self._release)
                d.callback(None)
                return


class NoPacing:
    """:class:`Turns` that never waits (unit tests of the logic around it)."""

    def __len__(self) -> int:
        return 0

    def next(self) -> Deferred:
        d = Deferred()
        d.callback(None)
        return d
