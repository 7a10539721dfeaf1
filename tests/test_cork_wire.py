"""
The cork on the wire: raw-socket clients (frames pipelined right after the HTTP request,
before the 101 could have been read) against a gateway whose admission waits.  Whatever
the client sends and whatever the server does meanwhile, the 101 comes first; and a cork
outlives neither its connection nor the gateway.
"""

import base64
import os
import struct

from twisted.internet import endpoints, reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.trial import unittest

from realtime.transport.outbox import Corks
from tests.fakes import SECRET, make_token
from tests.harness import GatewayHarness, sleep, unique, wait_for


def frame(opcode, payload=b"", fin=True, mask=True):
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    m = 0x80 if mask else 0
    if n < 126:
        head += bytes([m | n])
    elif n < 65536:
        head += bytes([m | 126]) + struct.pack("!H", n)
    else:
        head += bytes([m | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def request(port, token):
    key = base64.b64encode(b"0123456789abcdef").decode()
    return (f"GET /ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n").encode()


class _Raw(Protocol):
    def __init__(self, data):
        self.data = data
        self.received = b""
        self.lost = Deferred()

    def connectionMade(self):
        self.transport.write(self.data)

    def dataReceived(self, data):
        self.received += data
        end = self.received.find(b"\r\n\r\n")
        if end >= 0 and b"\x88" in self.received[end + 4:] and not getattr(self, "replied", False):
            self.replied = True  # answer the server's close (its close handshake then ends)
            self.transport.write(frame(0x8, struct.pack("!H", 1000)))

    def frames(self):
        """The server's frames after the 101: (opcode, payload)."""
        end = self.received.find(b"\r\n\r\n")
        data, out = self.received[end + 4:], []
        while len(data) >= 2:
            op, n = data[0] & 0x0F, data[1] & 0x7F
            i = 2
            if n == 126:
                n, i = struct.unpack("!H", data[2:4])[0], 4
            elif n == 127:
                n, i = struct.unpack("!Q", data[2:10])[0], 10
            out.append((op, data[i:i + n]))
            data = data[i + n:]
        return out

    def connectionLost(self, reason):
        self.lost.callback(None)


class CorkOnTheWireTests(unittest.TestCase):
    timeout = 30

    def setUp(self):
        extra = {"ws_max_message_bytes": 1024} if "oversize" in self._testMethodName else {}
        self.gw = GatewayHarness(jwt_secret=SECRET, feeds=False, **extra)
        self.addCleanup(self.gw.stop)
        return self.gw.start()

    def hold_admission(self):
        gateway = self.gw.gateway
        waiting = []
        real_opened = gateway.presence.connection_opened_now

        def delayed(conn_id, user_id, limit=None):
            d = Deferred()
            waiting.append(lambda: d.callback(real_opened(conn_id, user_id, limit)))
            return d

        gateway.presence.connection_opened = delayed
        gateway.presence.connection_opened_now = None
        return waiting

    @inlineCallbacks
    def raw(self, extra=b"", user=None):
        user = user or unique("raw")
        data = request(self.gw.port, make_token(user, lifetime=60)) + extra
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.gw.port)
        client = yield endpoint.connect(Factory.forProtocol(lambda: _Raw(data)))
        self.addCleanup(self._abort, client)
        return client

    @inlineCallbacks
    def _abort(self, client):
        if client.transport.connected:
            client.transport.abortConnection()
        yield client.lost
        yield wait_for(lambda: self.gw.gateway.open_connections == 0, what="server side close")

    @inlineCallbacks
    def raw_no_token(self, extra=b""):
        key = base64.b64encode(b"0123456789abcdef").decode()
        data = (f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{self.gw.port}\r\n"
                f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n").encode() + extra
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.gw.port)
        client = yield endpoint.connect(Factory.forProtocol(lambda: _Raw(data)))
        self.addCleanup(self._abort, client)
        return client

    @inlineCallbacks
    def test_pipelined_auth_message(self):
        waiting = self.hold_admission()
        user = unique("am")
        auth = frame(0x1, ('{"type":"auth","token":"%s"}' % make_token(user, lifetime=60)).encode())
        ping = frame(0x1, b'{"type":"ping"}')
        client = yield self.raw_no_token(ping + auth + ping)
        yield wait_for(lambda: waiting, what="admission to start")
        yield sleep(0.1)
        self.assertTrue(client.received.startswith(b"HTTP/1.1 101 "), client.received[:80])
        waiting.pop()()
        yield wait_for(lambda: b'"connected"' in client.received, what="connected")
        self.assertEqual(self.corked(), 0)

    @inlineCallbacks
    def test_auth_message_later_does_not_cork_frames_already_due(self):
        """
        The 101 went long ago; a JSON ping and an auth in one read: the pong is due when
        admission starts, and the cork meant for the 101 holds it until admission answers.
        (CORK_SECONDS raised so that the test does not depend on timing.)
        """
        self.patch(Corks, "CORK_SECONDS", 5.0)
        waiting = self.hold_admission()
        user = unique("am2")
        client = yield self.raw_no_token()
        yield wait_for(lambda: client.received.startswith(b"HTTP/1.1 101 "), what="101")
        client.transport.write(frame(0x1, b'{"type":"ping"}') + frame(0x1, (
            '{"type":"auth","token":"%s"}' % make_token(user, lifetime=60)).encode()))
        yield wait_for(lambda: waiting, what="admission to start")
        yield wait_for(lambda: b'"pong"' in client.received, seconds=1.0,
                       what="the pong (admission still waiting)")
        waiting.pop()()
        yield wait_for(lambda: b'"connected"' in client.received, what="connected")

    def corked(self):
        return self.gw.factory.corks._count

    @inlineCallbacks
    def check_101_first(self, extra, answer_after=None):
        waiting = self.hold_admission()
        client = yield self.raw(extra)
        yield wait_for(lambda: waiting, what="admission to start")
        if answer_after is not None:
            yield sleep(answer_after)
            waiting.pop()()
        yield sleep(0.15)
        self.assertTrue(client.received.startswith(b"HTTP/1.1 101 "), client.received[:80])
        return client

    def test_pipelined_ping(self):
        return self.check_101_first(frame(0x9, b"hi"))

    def test_pipelined_bad_json(self):
        return self.check_101_first(frame(0x1, b"not json") * 3)

    def test_pipelined_close(self):
        return self.check_101_first(frame(0x8, struct.pack("!H", 1000)))

    def test_pipelined_unmasked_frame(self):
        return self.check_101_first(frame(0x1, b"{}", mask=False))

    def test_pipelined_oversize(self):
        self.assertEqual(self.gw.config.ws_max_message_bytes, 1024)
        return self.check_101_first(frame(0x1, b"x" * 4096))

    def test_pipelined_many_not_ready(self):
        msg = frame(0x1, b'{"type":"subscribe","topic":"t"}')
        return self.check_101_first(msg * 100)

    def test_pipelined_second_auth(self):
        msg = frame(0x1, b'{"type":"auth","token":"x"}')
        return self.check_101_first(msg * 3)

    @inlineCallbacks
    def test_close_all_while_corked(self):
        waiting = self.hold_admission()
        client = yield self.raw()
        yield wait_for(lambda: waiting, what="admission to start")
        self.gw.gateway.close_all(4200, "server shutting down", 1.0)
        yield client.lost
        self.assertTrue(client.received.startswith(b"HTTP/1.1 101 "), client.received[:80])

    @inlineCallbacks
    def test_abrupt_client_close_while_corked_is_cleaned_up(self):
        waiting = self.hold_admission()
        user = unique("gone")
        client = yield self.raw(user=user)
        yield wait_for(lambda: waiting, what="admission to start")
        self.assertEqual(self.corked(), 1)
        client.transport.abortConnection()
        yield wait_for(lambda: self.gw.gateway.open_connections == 0, what="server side close")
        waiting.pop()()
        yield sleep(0.1)
        self.assertEqual(self.corked(), 0)
        self.assertEqual(self.gw.gateway.registry.count_of(user), 0)
        count = yield self.gw.gateway.presence.connection_count(user)
        self.assertEqual(count, 0)
        self.assertEqual(len(self.gw.factory.corks._corked), 0)

    @inlineCallbacks
    def test_slow_admission_gets_101_then_connected(self):
        waiting = self.hold_admission()
        client = yield self.raw()
        yield wait_for(lambda: waiting, what="admission to start")
        yield sleep(0.1)
        self.assertTrue(client.received.startswith(b"HTTP/1.1 101 "))
        waiting.pop()()
        yield sleep(0.05)
        self.assertIn(b'"connected"', client.received)
        self.assertEqual(self.corked(), 0)

    @inlineCallbacks
    def test_no_timer_left_when_test_ends_while_corked(self):
        """A connection corked when the gateway stops: is the cork timer left behind?"""
        waiting = self.hold_admission()
        client = yield self.raw()
        yield wait_for(lambda: waiting, what="admission to start")
        client.transport.abortConnection()
        yield client.lost
        # the test ends here; the harness's stop() runs (sleep(0) at its end)
