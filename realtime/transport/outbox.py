"""
The outgoing side of a WebSocket connection: frames written at the end of the reactor turn
(the outbox, :mod:`realtime.transport.fastpath`), a bounded queue while Twisted's buffer is
full (:class:`Throttle` is the connection's push producer), the hold of live frames while a
resume replays, and the close of a client that does not read (4100, queue freed).

:class:`Outbox` is a mixin of :class:`realtime.transport.websocket.RealtimeServerProtocol`:
its state lives in the protocol's slots (``_paused``, ``_queue``, ``_queued_bytes``,
``_outbox``, ``_outbox_bytes``, ``_corked``, ``_batcher``, ``_hold``, ``_drain_timer``).
"""

from __future__ import annotations

from collections import deque

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from realtime.hub import resume
from realtime.transport import fastpath
from realtime.vocabulary import CLOSE_TOO_SLOW

#: an outbox holding more than this is written at once rather than at the end of the turn
#: (Twisted's own buffer size: past it, the producer is paused and frames queue, bounded)
OUTBOX_FLUSH_BYTES = 64 * 1024

#: how long a client closed 4100 (too slow) has to read up to the close frame
TOO_SLOW_DRAIN_SECONDS = 2.0

#: the empty queue every connection shares until one of its own is needed (an idle
#: connection then carries no deque: less memory per connection); immutable on purpose
NO_QUEUE = ()


class Corks:
    """
    The connections of a listener whose outbox is corked (:meth:`Outbox.cork`), each
    uncorked :data:`CORK_SECONDS` after it was corked at the latest, by one timer for all
    that runs only while some connection is still corked.

    :param clock: by default the reactor of the corked connection's transport.
    """

    #: the longest a corked outbox waits; then it is written as it is
    CORK_SECONDS = 0.05

    _log = Logger()

    def __init__(self, clock=None):
        self._clock = clock
        self._corked = deque()  # (deadline, connection), oldest first
        self._count = 0  # of those, still corked
        self._call = None

    def add(self, conn) -> None:
        clock = self._clock if self._clock is not None else conn.transport.reactor
        self._corked.append((clock.seconds() + self.CORK_SECONDS, conn))
        self._count += 1
        if self._call is None:
            self._call = clock.callLater(self.CORK_SECONDS, self._uncork_late, clock)

    def uncorked(self) -> None:
        """One of them uncorked; after the last, nothing is left to wait for."""
        self._count -= 1
        if self._count <= 0:
            self.cancel()

    def _uncork_late(self, clock) -> None:
        self._call = None
        corked, now = self._corked, clock.seconds()
        while corked and corked[0][0] <= now:
            try:
                corked.popleft()[1].uncork()  # nothing when admission answered meanwhile
            except Exception:
                self._log.failure("uncorking a connection failed")
        if corked and self._call is None:
            self._call = clock.callLater(corked[0][0] - now, self._uncork_late, clock)

    def cancel(self) -> None:
        """Forget them all (the last uncorked; service stop): their uncork counts nothing."""
        for _, conn in self._corked:
            conn._corked = False
        self._corked.clear()
        self._count = 0
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None


@implementer(IPushProducer)
class Throttle:
    """Told by the transport when its buffer is full (pause) and drained (resume)."""

    __slots__ = ("_protocol",)

    def __init__(self, protocol):
        self._protocol = protocol

    def pauseProducing(self):
        self._protocol._paused = True

    def resumeProducing(self):
        self._protocol._resume()

    def stopProducing(self):
        self._protocol._paused = True


class Outbox:
    """Frames out of one connection (see the module docstring)."""

    __slots__ = ()

    def begin_hold(self) -> "resume.Hold":
        """Hold live frames from now on (replays running); nested holds share one."""
        if self._hold is None:
            self._hold = resume.Hold(self.gateway.config.ws_max_queue_bytes)
        self._hold.depth += 1
        return self._hold

    def end_hold(self) -> None:
        """One replay ended; after the last, send the held frames it did not give."""
        hold = self._hold
        if hold is None:
            return
        hold.depth -= 1
        if hold.depth > 0:
            return
        self._hold = None
        for frame in hold.frames:
            if not hold.superseded(frame):
                self.deliver_frame(frame, True)

    def deliver_frame(self, frame: bytes, direct: bool = False) -> bool:
        """
        Write a pre-framed message, or queue it while the transport is full.

        A live message (from the registry) is held while a replay runs (:meth:`begin_hold`);
        ``direct`` ones (answers, replayed messages: :meth:`send_json`) never are.

        On a plain TCP transport the frame joins this turn's outbox, written with the others
        due to this connection in one write at the end of the turn (:mod:`realtime.transport.fastpath`).
        """
        if self.state != self.STATE_OPEN:
            return False
        if self._hold is not None and not direct:
            if self._hold.add(frame):
                return True
            self._hold = None
            self._too_slow()
            return False
        if not self._paused and not self._queue:
            outbox = self._outbox
            if outbox is not None:
                outbox.append(frame)
                self._outbox_bytes += len(frame)
                if self._outbox_bytes > OUTBOX_FLUSH_BYTES:
                    self._flush_outbox()
                return True
            if self._batcher is None:
                self.transport.write(frame)
                return True
            self._outbox = [frame]
            self._outbox_bytes = len(frame)
            self._batcher.due(self)
            return True
        if self._queue is NO_QUEUE:
            self._queue = deque()
        self._queue.append(frame)
        self._queued_bytes += len(frame)
        if self._queued_bytes > self.gateway.config.ws_max_queue_bytes:
            self._too_slow()
            return False
        return True

    def cork(self) -> None:
        """
        Keep what is due (the handshake's 101) until :meth:`uncork`: a session whose
        admission waits for Redis corks, and its ``connected`` answer then leaves in the
        same send as the 101, one write per connection instead of two (a reconnect storm
        on a cluster).  The cork only delays, never reorders: any write of Autobahn's
        (close, ping, pong) and an outbox past ``OUTBOX_FLUSH_BYTES`` uncork first, and
        :class:`Corks` uncorks after ``CORK_SECONDS`` (an admission slower than that gets
        its 101 first, as without the cork).  Only a 101 still due is corked: frames due
        after it (an ``auth`` message's admission) leave as usual.
        """
        outbox = self._outbox
        if outbox is not None and not self._corked and outbox[0].startswith(b"HTTP/1.1 101 "):
            self._corked = True
            self.factory.corks.add(self)

    def uncork(self) -> None:
        """Write what the cork held at the end of this turn."""
        if self._corked:
            self._corked = False
            self.factory.corks.uncorked()
            if self._outbox is not None:
                self.factory.batcher.due(self)

    def _flush_outbox(self) -> None:
        """Write this turn's frames at once (from the batcher, or before Autobahn writes)."""
        outbox = self._outbox
        if outbox is None:
            return
        if self._corked:
            if self._outbox_bytes <= OUTBOX_FLUSH_BYTES:
                return
            self.uncork()
        self._outbox = None
        if self.transport is None:
            return
        fastpath.write_now(self.transport, outbox[0] if len(outbox) == 1 else b"".join(outbox))

    def sendData(self, data, sync=False, chopsize=None):
        # Autobahn's own writes (the handshake's answer, pings, pongs, close) go after the
        # frames already due (a cork is lifted first).
        if self._corked:
            self.uncork()
        if self._outbox is not None:
            self._flush_outbox()
        if (sync or chopsize) and self.send_queue is NO_QUEUE:
            self.send_queue = deque()  # the only writes that use Autobahn's send queue
        if not (sync or chopsize or self.send_queue or self.logOctets) and \
                fastpath.supports_direct_send(self.transport):
            # straight to the socket, as the frames are (fastpath.write_now), not through
            # Twisted's startWriting, a poll round and a stopWriting (Autobahn's traffic
            # counters, which nothing reads, are skipped).  The handshake's 101 waits in
            # the outbox for the end of the turn: ``connected``, written in the same turn
            # when admission needs no Redis, goes in the same send.
            if self.state == self.STATE_CONNECTING and data.startswith(b"HTTP/1.1 101 "):
                self._outbox = [data]
                self._outbox_bytes = len(data)
                self.factory.batcher.due(self)
                return
            fastpath.write_now(self.transport, data)
            return
        super().sendData(data, sync, chopsize)

    def _resume(self) -> None:
        self._paused = False
        queue = self._queue
        while queue and not self._paused and self.state == self.STATE_OPEN:
            frame = queue.popleft()
            self._queued_bytes -= len(frame)
            self.transport.write(frame)

    def _too_slow(self) -> None:
        """
        The outgoing queue overflowed: its frames are dropped (memory is freed at once),
        the close frame (4100: back off, then reconnect) goes right after what the socket
        already holds, and the client has :data:`TOO_SLOW_DRAIN_SECONDS` to read up to it
        before the connection is aborted.  Aborting at once would leave the close frame
        behind the full buffer: the client would see 1006 and reconnect at once.
        """
        self._log.info("closing connection {id}: outgoing queue full", id=self.connection_id)
        self._queue = NO_QUEUE
        self._queued_bytes = 0
        self._outbox = None
        self.close_with(CLOSE_TOO_SLOW, "too slow: outgoing queue full")
        self._drain_timer = self.gateway.clock.callLater(TOO_SLOW_DRAIN_SECONDS, self.abort)

    def abort(self) -> None:
        """Drop the connection now, whatever it still holds (its close runs as usual)."""
        self._drain_timer = None
        if self.transport is not None and self.state != self.STATE_CLOSED:
            self.dropConnection(abort=True)
