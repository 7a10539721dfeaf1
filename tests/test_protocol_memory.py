"""
What an idle connection holds: a connection opened through the real listener and Autobahn's
handshake (in memory) keeps every attribute in a slot (no attribute dict), shares what only
the handshake needed, and makes its topic set and rate limiter on first use; the slots
shadow no default of Twisted's or Autobahn's base classes that __init__ does not set.  Dead
peers are found by one keep-alive sweep per heartbeat instead of Autobahn's auto-ping timer
per connection.
"""

import jwt
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from realtime.transport import fastpath
from realtime.transport.keepalive import keep_alive, pong_timeout
from realtime.transport.websocket import RealtimeServerProtocol, make_factory
from tests.fakes import SECRET, make_gateway


def make_listener(clock=reactor):
    """The gateway and its listener as the service wires them, with the gateway on clock."""
    gateway = make_gateway(clock=clock)
    factory = make_factory(gateway)
    factory.setProtocolOptions(openHandshakeTimeout=0, autoPingInterval=0,
                               closeHandshakeTimeout=0)
    return gateway, fastpath.WebSocketFirstFactory(None, factory, clock=gateway.timers)


def open_connection(test, claims=None, path="/ws?token={token}", listener=None):
    """A connection through WebSocketFirstFactory and Autobahn's handshake, on memory."""
    if listener is None:
        _, listener = make_listener()
    gateway = listener.ws_factory.gateway
    claims = {"sub": "alice", "exp": int(gateway.clock.seconds()) + 600, **(claims or {})}
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 4321))
    router = listener.buildProtocol(transport.getPeer())
    router.makeConnection(transport)
    transport.registerProducer(transport, True)  # as Autobahn's adapter has on TCP
    request = (f"GET {path.format(token=token)} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n")
    before = set(gateway._open)
    router.dataReceived(request.encode())
    [conn] = list(set(gateway._open) - before)

    def close():
        if conn.state != conn.STATE_CLOSED:
            conn.onClose(False, 1006, "")
        if conn.session._watch is not None:
            conn.session._watch.stop()

    test.addCleanup(close)
    return conn, transport


def masked_text_frame(payload: bytes, mask: bytes = b"\x01\x02\x03\x04") -> bytes:
    """One client text frame (FIN, opcode 1, masked, payload under 126 bytes)."""
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes((0x81, 0x80 | len(payload))) + mask + masked


class IdleConnectionTests(unittest.TestCase):
    def test_open_connection_has_no_attribute_dict(self):
        """An authenticated, idle connection keeps everything in slots."""
        conn, transport = open_connection(self)
        self.assertIn(b'"type":"connected"', transport.value())
        self.assertEqual(vars(conn), {})

    def test_handshake_leftovers_dropped(self):
        """What only the handshake read is dropped or shared once open."""
        conn, _ = open_connection(self)
        self.assertIsNone(conn.http_headers)
        self.assertIsNone(conn.http_request_data)  # held the token
        self.assertIsNone(conn._wskey)
        self.assertIsNone(conn._transport_details)
        self.assertEqual(conn.websocket_extensions_in_use, ())
        other, _ = open_connection(self)
        self.assertIs(conn.trafficStats, other.trafficStats)

    def test_topics_and_limiter_made_on_first_use(self):
        """No topic set and no rate limiter until the client sends something."""
        conn, transport = open_connection(self)
        self.assertIsNone(conn.session._topics)
        self.assertIsNone(conn.session._limiter)
        conn.onMessage(b'{"type":"ping"}', False)
        self.assertIsNotNone(conn.session._limiter)
        self.assertIn(b'"type":"pong"', transport.value())
        self.assertEqual(conn.session.topics, set())
        self.assertIs(conn.session.topics, conn.session.topics)

    def test_utf8_validated_with_the_validator_made_on_first_use(self):
        """No validator held while idle; the first text message makes one, and a text
        message that is not UTF-8 still closes 1007."""
        conn, transport = open_connection(self)
        self.assertIsNone(conn._utf8validator)
        conn.dataReceived(masked_text_frame(b'{"type":"ping"}'))
        self.assertIsNotNone(conn._utf8validator)
        self.assertIn(b'"type":"pong"', transport.value())
        transport.clear()
        conn.dataReceived(masked_text_frame(b'{"type":"\xff\xfe"}'))
        self.assertIn(b"\x88", transport.value())
        self.assertIn((1007).to_bytes(2, "big"), transport.value())

    def test_rate_limit_still_applies_from_the_first_message(self):
        """The limiter made at the first message counts that message."""
        conn, transport = open_connection(self)
        limit = conn.gateway.config.ws_rate_limit_max_messages
        for _ in range(limit):
            conn.onMessage(b'{"type":"ping"}', False)
        transport.clear()
        conn.onMessage(b'{"type":"ping"}', False)
        self.assertIn(b'"rate_limited"', transport.value())

    def test_slots_shadow_no_base_class_default(self):
        """A slot named like a base-class attribute is set by __init__ to that default."""
        proto = RealtimeServerProtocol()
        shadowing = []
        for name in RealtimeServerProtocol.__slots__:
            for base in RealtimeServerProtocol.__mro__[1:]:
                if name in vars(base):
                    shadowing.append(name)
                    self.assertEqual(getattr(proto, name), vars(base)[name],
                                     f"{name} (default of {base.__name__})")
                    break
        self.assertEqual(sorted(shadowing), ["connected", "factory", "peer", "transport"])

    def test_no_option_is_a_slot(self):
        """Protocol options stay class attributes (options_on_class_factory)."""
        self.assertEqual(set(RealtimeServerProtocol.__slots__)
                         & set(RealtimeServerProtocol.CONFIG_ATTRS), set())


class KeepAliveTests(unittest.TestCase):
    """Dead peers are found by one sweep per heartbeat, not a timer per connection."""

    def test_no_auto_ping_timer_per_connection(self):
        """Autobahn schedules no ping for an open connection (the heartbeat pings)."""
        _, listener = make_listener()
        listener.ws_factory.setProtocolOptions(autoPingInterval=0)  # as make_factory sets
        conn, _ = open_connection(self, listener=listener)
        self.assertIsNone(conn.autoPingPendingCall)
        factory = make_factory(make_gateway(clock=reactor))
        self.assertEqual(factory.autoPingInterval, 0)

    def test_ping_then_drop_when_unanswered(self):
        """A sweep pings; the next one after the timeout drops a peer that did not pong."""
        conn, transport = open_connection(self)
        transport.clear()
        keep_alive([conn], 100.0, 2.0)
        self.assertEqual(transport.value()[:1], b"\x89")  # a ping frame
        self.assertIn(b"realtime", transport.value())
        transport.clear()
        keep_alive([conn], 101.0, 2.0)  # not yet timed out: no second ping, not dropped
        self.assertEqual(transport.value(), b"")
        self.assertFalse(transport.disconnecting)
        keep_alive([conn], 102.0, 2.0)
        self.assertTrue(transport.disconnecting)

    def test_answered_ping_keeps_the_connection(self):
        """A pong clears the pending ping: the next sweep pings again, nothing is dropped."""
        conn, transport = open_connection(self)
        keep_alive([conn], 100.0, 2.0)
        conn.onPong(b"realtime")
        transport.clear()
        keep_alive([conn], 110.0, 2.0)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(transport.value()[:1], b"\x89")

    def test_closed_connections_are_skipped_and_errors_contained(self):
        """A connection that is not open is left alone; one that raises spares the others."""
        conn, transport = open_connection(self)
        other, other_transport = open_connection(self, {"sub": "bob"})
        conn.state = conn.STATE_CLOSED

        class Broken:
            def keep_alive(self, now, timeout):
                raise RuntimeError("broken")

        transport.clear()
        other_transport.clear()
        keep_alive([conn, Broken(), other], 100.0, 2.0)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(other_transport.value()[:1], b"\x89")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        conn.state = conn.STATE_OPEN

    def test_pong_timeout(self):
        """One heartbeat, at least 2 s."""
        self.assertEqual(pong_timeout(25.0), 25.0)
        self.assertEqual(pong_timeout(0.5), 2.0)

    def test_heartbeat_pings_every_open_connection(self):
        """The heartbeat timer's callback runs the sweep over the gateway's connections."""
        from realtime.service import _safe_heartbeat
        gateway, listener = make_listener()
        conn, transport = open_connection(self, listener=listener)
        transport.clear()
        _safe_heartbeat(gateway)
        self.assertIn(b"\x89\x08realtime", transport.value())
        self.assertIsNotNone(conn._ping_sent_at)
