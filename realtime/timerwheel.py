"""
One timer wheel for the per-connection timers: the first-line timeout, the auth timeout,
a JWT's expiry and the revalidation checks.

Every connection has a few timers, and nearly all of them are cancelled, or fire long after
they were set.  As reactor ``DelayedCall`` objects each costs a heap push, an object with
its own argument tuple and keyword dict, and, once cancelled, a place in the reactor's heap
until Twisted compacts it.  Here they are entries in time slots of ``resolution`` seconds:
one small object each, cancelled by one dict deletion, and a single reactor call for the
earliest non-empty slot, however many timers there are (none at all while no timer is
pending: cancelling the last one cancels it).

:class:`TimerWheel` offers the part of ``IReactorTime`` that those timers use:
``callLater(delay, f, *args, **kw)`` returning a handle with ``cancel()``, ``active()`` and
``getTime()`` (``AlreadyCalled`` / ``AlreadyCancelled`` as Twisted raises them), and
``seconds()`` from the clock it runs on.  So it can stand where a clock is passed for those
timers.

Decision: a timer fires at the end of the slot holding its due time: never early, at most
``resolution`` seconds late (0.25 s by default), and timers of one slot fire in the order
they were set.  That precision is enough for timeouts of seconds and for an expiry that
already has a 5 s leeway; it is not meant for anything that needs the reactor's precision.
A callback that raises is logged, and the other timers still fire.
"""

from __future__ import annotations

import heapq
import math

from twisted.internet.error import AlreadyCalled, AlreadyCancelled
from twisted.logger import Logger

DEFAULT_RESOLUTION = 0.25
#: the wheel's reactor call is this much after a slot's end, so that float rounding of the
#: reactor's time can never find the slot's end not reached yet
_MARGIN = 1e-5


class Timer:
    """One timer of a :class:`TimerWheel` (``IDelayedCall``'s cancel/active/getTime)."""

    __slots__ = ("_slot", "_wheel", "args", "func", "kw", "state", "time")

    PENDING, CALLED, CANCELLED = 0, 1, 2

    def __init__(self, wheel, when, slot, func, args, kw):
        self._wheel = wheel
        self._slot = slot
        self.time = when
        self.func = func
        self.args = args
        self.kw = kw
        self.state = Timer.PENDING

    def getTime(self) -> float:
        return self.time

    def active(self) -> bool:
        return self.state == Timer.PENDING

    def cancel(self) -> None:
        if self.state == Timer.CALLED:
            raise AlreadyCalled()
        if self.state == Timer.CANCELLED:
            raise AlreadyCancelled()
        self.state = Timer.CANCELLED
        self._wheel._remove(self)
        self.func = self.args = self.kw = None  # let what it referred to go at once


class TimerWheel:
    """
    Timers in slots of ``resolution`` seconds, driven by one call on ``clock``.

    :param clock: an ``IReactorTime`` (the reactor; a ``task.Clock`` in tests).
    """

    _log = Logger()

    def __init__(self, clock, resolution: float = DEFAULT_RESOLUTION):
        if not resolution > 0:
            raise ValueError("resolution must be positive")
        self._clock = clock
        self.resolution = resolution
        self._slots: dict = {}  # slot number -> {Timer: None}, in the order they were set
        self._order: list = []  # heap of the slot numbers in _slots
        self._call = None  # the reactor call for the earliest slot
        self._call_slot = None
        self._pending = 0

    @property
    def pending(self) -> int:
        """How many timers are pending (no __len__: an empty wheel is not false)."""
        return self._pending

    def seconds(self) -> float:
        return self._clock.seconds()

    def callLater(self, delay: float, func, *args, **kw) -> Timer:
        when = self._clock.seconds() + max(0.0, delay)
        slot = math.ceil(when / self.resolution)
        timer = Timer(self, when, slot, func, args, kw or None)  # no empty dict per timer
        timers = self._slots.get(slot)
        if timers is None:
            timers = self._slots[slot] = {}
            heapq.heappush(self._order, slot)
            if self._call_slot is None or slot < self._call_slot:
                self._schedule(slot)
        timers[timer] = None
        self._pending += 1
        return timer

    # -- internals ----------------------------------------------------------------------

    def _schedule(self, slot) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call_slot = slot
        delay = max(0.0, slot * self.resolution - self._clock.seconds()) + _MARGIN
        self._call = self._clock.callLater(delay, self._tick)

    def _remove(self, timer: Timer) -> None:
        timers = self._slots.get(timer._slot)
        if timers is not None:
            timers.pop(timer, None)
            # an emptied slot stays in the heap until it is reached: cheap, and bounded by
            # the number of slots in use
        self._pending -= 1
        if not self._pending:  # nothing left: no reactor call either
            self._slots.clear()
            self._order.clear()
            if self._call is not None and self._call.active():
                self._call.cancel()
            self._call = self._call_slot = None

    def _tick(self) -> None:
        self._call = None
        self._call_slot = None
        now = self._clock.seconds()
        resolution = self.resolution
        order, slots = self._order, self._slots
        while order and order[0] * resolution <= now:
            timers = slots.pop(heapq.heappop(order), None)
            if not timers:
                continue
            for timer in timers:
                if timer.state != Timer.PENDING:
                    continue
                timer.state = Timer.CALLED
                self._pending -= 1
                func, args, kw = timer.func, timer.args, timer.kw
                timer.func = timer.args = timer.kw = None
                try:
                    if kw is None:
                        func(*args)
                    else:
                        func(*args, **kw)
                except Exception:
                    self._log.failure("a timer's callback failed")
        while order and not slots.get(order[0]):  # drop emptied slots at the front
            slots.pop(heapq.heappop(order), None)
        if order:
            self._schedule(order[0])

    def cancel_all(self) -> None:
        """Cancel every pending timer and the wheel's reactor call (service stop, tests)."""
        for timers in list(self._slots.values()):
            for timer in list(timers):
                if timer.active():
                    timer.cancel()
        self._slots.clear()
        self._order.clear()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = self._call_slot = None
