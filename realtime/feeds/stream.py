"""
The stream side of a feed, independent of CouchDB's rows: splitting a streaming response
into lines, the reconnection backoff, and the words for why a request failed.

- Lines are parsed incrementally (:class:`LineParser`): a line may be split across chunks,
  heartbeats are bare newlines (skipped), and a line longer than the limit is dropped whole
  (a runaway document cannot grow memory without bound).  A partial line left when the
  stream ends is simply never completed: the follower discards it with the parser (its
  change will come again, since ``since`` only moves past fully processed lines).
- :class:`Backoff`: 1 s doubling to 30 s, with "equal jitter".
- :func:`describe_failure`: the cause of a failed request, read out of Twisted's wrapped
  failures, for ``lastError`` in the status and for the logs.
"""

from __future__ import annotations

import random
from typing import Callable


class LineParser:
    """
    Split a byte stream into lines, across chunk boundaries.

    :param on_line: called with each complete non-empty line (bytes, without the newline).
    :param max_line: a line longer than this is dropped whole (a runaway document cannot grow
        memory without bound); ``on_overflow`` is told.
    """

    def __init__(self, on_line: Callable[[bytes], None], max_line: int = 64 * 1024 * 1024,
                 on_overflow: Callable[[int], None] = lambda size: None):
        self._on_line = on_line
        self._max_line = max_line
        self._on_overflow = on_overflow
        self._buffer = b""
        self._skipping = False

    def feed(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            line = buffer[start:end]
            start = end + 1
            if self._skipping:
                self._skipping = False
                continue
            line = line.strip()
            if line:
                self._on_line(line)
        rest = buffer[start:]
        if len(rest) > self._max_line:
            self._on_overflow(len(rest))
            rest = b""
            self._skipping = True
        self._buffer = rest

    @property
    def pending(self) -> bytes:
        """The incomplete line held back (for tests and diagnostics)."""
        return self._buffer



class Backoff:
    """
    Exponential backoff with jitter: attempt n (from 0) waits a random time in
    ``[d/2, d]`` where ``d = min(maximum, initial * 2**n)`` ("equal jitter": never less than
    half the nominal delay, so a flapping server is not hammered; never all clients at the
    same instant).
    """

    def __init__(self, initial: float = 1.0, maximum: float = 30.0,
                 random: Callable[[], float] = random.random):
        self.initial = initial
        self.maximum = maximum
        self._random = random
        self.attempts = 0

    def nominal(self, attempt: int) -> float:
        if attempt >= 64:
            return self.maximum
        return min(self.maximum, self.initial * (2 ** attempt))

    def next_delay(self) -> float:
        nominal = self.nominal(self.attempts)
        self.attempts += 1
        return nominal / 2 + (nominal / 2) * self._random()

    def reset(self) -> None:
        self.attempts = 0



def describe_failure(failure) -> str:
    """
    Why a request failed, in words: Twisted's client wraps the cause in a list of Failures
    (``ResponseFailed``, ``ResponseNeverReceived``), whose message is their repr.
    """
    error = failure.value
    reasons = getattr(error, "reasons", None)
    if reasons:
        inner = reasons[0]
        text = describe_failure(inner) if hasattr(inner, "value") else str(inner)
        return f"{type(error).__name__}: {text}"
    text = failure.getErrorMessage() if hasattr(failure, "getErrorMessage") else str(error)
    if not text or text.startswith("[<") or text == repr(error):
        return type(error).__name__
    return f"{type(error).__name__}: {text}"[:300]

