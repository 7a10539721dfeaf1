"""
:class:`RedisBroker`: every process acts on every event, through one Redis Stream.

Design (why a Stream and not pub/sub)
-------------------------------------
Every event is appended with ``XADD <prefix>events MAXLEN ~ N * e <json>``, and every
process (the publisher included) reads the stream with ``XREAD BLOCK`` on a connection of its
own and dispatches each entry to its registry, exactly once, in stream order.

- ``publish`` succeeds (the REST call answers 2xx) only once Redis has stored the event.
  From then on, every process that is alive delivers it, even one whose connection to Redis
  was down at that moment: its reader resumes after the last entry it processed when it
  reconnects.  Pub/sub cannot do that: a process that has not re-subscribed yet after a
  Redis restart silently misses what others publish meanwhile.
- While Redis is away, ``publish`` fails at once (or after at most ``timeout`` seconds when
  Redis stops answering) with :class:`BrokerUnavailable`: the REST layer answers 503 and the
  caller retries.  A failed event is *not* delivered locally either, so a retry does not
  duplicate it on this process.  (If Redis stored it after all, just before the timeout,
  every process delivers it: a 503 means "not known to be accepted", and a retry may then
  deliver twice.  That is the usual at-least-once contract of a timed-out call.)
- Local delivery of CouchDB changes never goes through the broker, so it goes on while
  Redis is away.
- The stream is trimmed to about ``stream_maxlen`` entries (``REDIS_STREAM_MAXLEN``).  A
  reader that was away resumes where it stopped if it was away less than
  ``replay_window`` seconds and the entries are still there; after a longer absence it
  starts from the end (and logs that it may have missed events), so that it never acts on
  stale events such as an old ``disconnect`` (which would close connections opened since).
- Redis restarted without persistence: the stream starts again, empty; readers notice that
  its last id is below theirs and read it from its start.  What it had accepted in its
  last moments and a reader had not read yet is gone for that reader's process (with
  ``appendonly`` the stream survives, and readers resume after their last entry).

``publish`` fires with the number of local connections the event reached, once this
process's reader has dispatched it (one Redis round trip later).  If Redis accepted the
event but the reader is not connected, it fires with 0 after ``timeout`` seconds: the event
is accepted and will be delivered when the reader is back.

``state``: ``up`` when both connections are up; ``redis-unavailable`` otherwise.
``redis_state`` (shown by ``/websocket/status``): ``connected``, ``connecting`` (never
connected yet), ``down`` (reconnecting), ``error`` (Redis refused us: wrong password or
db; logged, not retried).
"""

from __future__ import annotations

import itertools
import os
import socket
from typing import Dict, Optional

from twisted.internet.defer import Deferred, fail, gatherResults, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import implementer

from realtime import jsonutil
from realtime.hub.broker import BrokerUnavailable, IBroker
from realtime.redis.client import RedisClient, RedisUnavailable
from realtime.redis.url import RedisAddress


def new_process_id() -> str:
    """A name for this process in Redis: host, pid and randomness (never reused)."""
    host = socket.gethostname().split(".")[0][:32] or "host"
    return f"{host}-{os.getpid()}-{os.urandom(4).hex()}"


def _id_tuple(entry_id: str):
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@implementer(IBroker)
class RedisBroker:
    _log = Logger()

    read_count = 512  # entries per XREAD

    def __init__(self, registry, reactor, address: RedisAddress, prefix: str = "realtime:",
                 timeout: float = 3.0, stream_maxlen: int = 100000, block_ms: int = 1000,
                 replay_window: float = 60.0, process_id: Optional[str] = None):
        self._registry = registry
        self._reactor = reactor
        self.stream = prefix + "events"
        self.timeout = timeout
        self.stream_maxlen = stream_maxlen
        self.block_ms = block_ms
        self.replay_window = replay_window
        self.process_id = process_id or new_process_id()
        self.commands = RedisClient(reactor, address, timeout, name="commands")
        self.reader = RedisClient(reactor, address, timeout, name="reader",
                                  on_connect=self._reader_connected,
                                  reply_timeout=block_ms / 1000.0 + timeout)
        self._ids = itertools.count(1)
        self._pending: Dict[str, Deferred] = {}  # event id -> fires when dispatched here
        self._stored: set = set()  # event ids Redis has stored, not yet dispatched here
        self._last_id: Optional[str] = None
        self._lost_at: Optional[float] = None
        self._running = False
        self.reading = False  # the read loop is positioned and reading
        self.received = 0  # entries dispatched (for tests and metrics)
        self.missed_trimmed = 0  # reconnections that found events trimmed away
        self.on_dispatched = None  # optional callable(event, count)

    # -- IBroker ------------------------------------------------------------------------

    @property
    def redis_state(self) -> str:
        if self.commands.connected and self.reader.connected and self.reading:
            return "connected"
        if self.commands.last_error or self.reader.last_error:
            return "error"
        if self.commands.connections_made == 0 or self.reader.connections_made == 0:
            return "connecting" if self._running else "off"
        return "down"

    @property
    def state(self) -> str:
        return "up" if self.redis_state == "connected" else "redis-unavailable"

    def start(self) -> None:
        self._running = True
        self.commands.start()
        self.reader.start()

    def stop(self) -> Deferred:
        self._running = False
        # Events Redis has stored: accepted, whatever our reader does now.  The others fail
        # by themselves when the connection closes.
        for event_id in list(self._stored):
            waiter = self._pending.pop(event_id, None)
            if waiter is not None and not waiter.called:
                waiter.callback(0)
        self._stored.clear()
        return gatherResults([self.commands.stop(), self.reader.stop()],
                             consumeErrors=True).addCallback(lambda _: None)

    def publish(self, event: dict) -> Deferred:
        if not isinstance(event, dict):
            return fail(TypeError("an event is a dict"))
        if not self.commands.connected:
            return fail(BrokerUnavailable("redis is not connected"))
        event_id = f"{self.process_id}:{next(self._ids)}"
        try:
            payload = jsonutil.dumps({"o": self.process_id, "i": event_id, "e": event})
        except (TypeError, ValueError) as e:
            return fail(ValueError(f"the event cannot be encoded: {e}"))
        waiter = Deferred()
        self._pending[event_id] = waiter
        d = self.commands.execute("XADD", self.stream, "MAXLEN", "~", str(self.stream_maxlen),
                                  "*", "e", payload)

        def stored(_entry_id):
            if waiter.called:
                return waiter
            self._stored.add(event_id)
            waiter.addTimeout(self.timeout, self._reactor, onTimeoutCancel=lambda r, t: 0)

            def done(result):
                self._pending.pop(event_id, None)
                self._stored.discard(event_id)
                return result

            return waiter.addBoth(done)

        def refused(failure):
            self._pending.pop(event_id, None)
            if waiter.called:  # Redis stored it and our reader saw it before the timeout
                return waiter
            # Not reachable, too slow, or an error answer (out of memory, read-only
            # replica...): either way nobody is known to have it.
            raise BrokerUnavailable(failure.getErrorMessage())

        return d.addCallbacks(stored, refused)

    # -- reading ------------------------------------------------------------------------

    def _reader_connected(self, protocol) -> None:
        self._read_loop(protocol).addErrback(
            lambda f: self._log.failure("redis broker read loop failed", f))

    @inlineCallbacks
    def _read_loop(self, protocol):
        """
        Read and dispatch until the connection is lost.  An error answer (say, the key was
        overwritten with another type) is logged and retried every second, never fatal.
        """
        while True:
            try:
                position = yield self._resume_position()
                break
            except RedisUnavailable:
                return
            except Exception:
                self._log.failure("redis broker: cannot find where to read from")
                yield deferLater(self._reactor, 1.0, lambda: None)
                if not self._running or self.reader.protocol is not protocol:
                    return
        self._lost_at = None
        self._last_id = position  # a reconnection resumes from here at the earliest
        self.reading = True
        while self._running and self.reader.protocol is protocol:
            try:
                reply = yield self.reader.execute(
                    "XREAD", "COUNT", str(self.read_count), "BLOCK", str(self.block_ms),
                    "STREAMS", self.stream, position,
                    timeout=self.block_ms / 1000.0 + self.timeout)
            except RedisUnavailable:
                break
            except Exception:
                self._log.failure("redis broker: reading the event stream failed")
                yield deferLater(self._reactor, 1.0, lambda: None)
                continue
            for _stream, entries in reply or ():
                for entry_id, fields in entries:
                    position = entry_id
                    self._last_id = entry_id
                    self._handle(entry_id, fields)
        self.reading = False
        if self._running:
            self._lost_at = self._reactor.seconds()

    @inlineCallbacks
    def _resume_position(self):
        """Where to read from after (re)connecting (see the module docstring)."""
        newest = yield self.reader.execute("XREVRANGE", self.stream, "+", "-", "COUNT", "1")
        newest_id = newest[0][0] if newest else None
        if self._last_id is None:
            return newest_id or "0-0"
        away = self._reactor.seconds() - (self._lost_at or self._reactor.seconds())
        if newest_id is None or _id_tuple(newest_id) < _id_tuple(self._last_id):
            self._log.info("redis broker: the event stream was reset (Redis restarted?); "
                           "reading it from its start")
            return "0-0"
        if away > self.replay_window:
            self._log.warn("redis broker: away {away:.0f}s (more than {window:.0f}s): "
                           "events published meanwhile are skipped",
                           away=away, window=self.replay_window)
            return newest_id
        yield self._warn_if_trimmed(self._last_id)
        return self._last_id

    @inlineCallbacks
    def _warn_if_trimmed(self, last_id: str):
        """
        Log when entries after ``last_id`` may have been trimmed away: the stream has lost
        entries to trimming and its first entry is past ours (Redis 7: XINFO STREAM).
        """
        try:
            info = yield self.reader.execute("XINFO", "STREAM", self.stream)
            fields = dict(zip(info[::2], info[1::2]))
            first = fields.get("recorded-first-entry-id") or (fields.get("first-entry")
                                                               or [None])[0]
            trimmed = int(fields.get("entries-added", 0)) > int(fields.get("length", 0))
            if trimmed and first and _id_tuple(first) > _id_tuple(last_id):
                self.missed_trimmed += 1
                self._log.warn("redis broker: events published while this process was away "
                               "may have been trimmed from the stream (REDIS_STREAM_MAXLEN) "
                               "and missed")
        except RedisUnavailable:
            raise
        except Exception:
            pass  # an older Redis: no way to tell

    def _handle(self, entry_id, fields) -> None:
        try:
            values = dict(zip(fields[::2], fields[1::2]))
            envelope = jsonutil.loads(values["e"])
            event = envelope["e"]
            if not isinstance(event, dict):
                raise ValueError("not an object")
        except (KeyError, TypeError, ValueError, IndexError):
            self._log.warn("redis broker: malformed stream entry {id} ignored", id=entry_id)
            return
        try:
            count = self._registry.dispatch(event)
        except Exception:
            self._log.failure("dispatching a broker event failed")
            count = 0
        self.received += 1
        waiter = self._pending.pop(envelope.get("i"), None) if envelope.get("o") == \
            self.process_id else None
        if waiter is not None and not waiter.called:
            waiter.callback(count)
        if self.on_dispatched is not None:
            try:
                self.on_dispatched(event, count)
            except Exception:
                self._log.failure("broker on_dispatched hook failed")
