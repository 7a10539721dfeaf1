"""
Dead-peer detection: one WebSocket ping per open connection from the server's heartbeat
timer, and a drop for a connection whose previous ping went unanswered for ``timeout``.

Autobahn's auto-ping does the same with a timer and a pending call per connection (about
0.5 KB each, and two timers scheduled per setup); here :func:`keep_alive` sweeps every open
connection at once, and :class:`KeepAlive`, a mixin of
:class:`realtime.transport.websocket.RealtimeServerProtocol`, holds one timestamp per
connection (the protocol's ``_ping_sent_at`` slot).
"""

from __future__ import annotations

from twisted.logger import Logger

#: the payload of the server's WebSocket pings
PING_PAYLOAD = b"realtime"
#: the server's WebSocket ping, framed once (FIN + opcode 9, unmasked, the payload's length)
PING_FRAME = bytes((0x89, len(PING_PAYLOAD))) + PING_PAYLOAD

_log = Logger()


def pong_timeout(heartbeat_seconds: float) -> float:
    """How long a WebSocket ping may go unanswered: one heartbeat, at least 2 s."""
    return max(heartbeat_seconds, 2.0)


def keep_alive(connections, now: float, timeout: float) -> None:
    """
    Dead-peer detection for every open connection at once, from the heartbeat timer: each
    connection gets a WebSocket ping; one whose previous ping has gone unanswered for
    ``timeout`` seconds is dropped.
    """
    for conn in connections:
        try:
            conn.keep_alive(now, timeout)
        except Exception:
            _log.failure("a keep-alive ping failed")


class KeepAlive:
    """A connection's side of :func:`keep_alive` (state: the ``_ping_sent_at`` slot)."""

    __slots__ = ()

    def onPong(self, payload):
        self._ping_sent_at = None  # alive (any pong: RFC 6455 allows unsolicited ones)

    def keep_alive(self, now: float, timeout: float) -> None:
        """
        One heartbeat: a WebSocket ping, or, when the previous one has gone unanswered for
        ``timeout`` seconds, the connection is dropped.
        """
        if self.state != self.STATE_OPEN:
            return
        sent = self._ping_sent_at
        if sent is not None:
            if now - sent >= timeout:
                self.wasClean = False
                self.wasNotCleanReason = "WebSocket ping timeout (no pong in time)"
                self.dropConnection(abort=True)
            return
        self._ping_sent_at = now
        # pre-framed, through the outbox: the sweep writes one frame per connection in one
        # callback, as a broadcast does (Autobahn's sendPing frames and writes each at once)
        self.deliver_frame(PING_FRAME, direct=True)
