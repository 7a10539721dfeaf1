"""
Slow and malformed HTTP clients against a real gateway on loopback (the probe's checks,
bounded): a slowloris trickling a REST request's headers or body, or a WebSocket
handshake, is cut at its deadline; connections that have not finished a request are
bounded; Twisted's own protocol errors, over-long lines, HTTP/2 and a plain GET on /ws are
answered in JSON; ``GET /`` points to what the gateway serves.
"""

import json
import time

from twisted.internet import defer, endpoints, protocol, reactor, task
from twisted.trial import unittest

from tests import harness
from tests.harness import GatewayHarness, with_timeout


class RawClient(protocol.Protocol):
    """Bytes in, and a Deferred for the end of the connection."""

    def __init__(self):
        self.received = b""
        self.closed = defer.Deferred()
        self.closed_at = None

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.closed_at = time.monotonic()
        self.closed.callback(self.received)

    def answer(self):
        """(status, JSON body) of what was received."""
        head, _, body = self.received.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        return status, json.loads(body) if body else None


@defer.inlineCallbacks
def raw_connect(port):
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5)
    client = yield endpoint.connect(protocol.Factory.forProtocol(RawClient))
    return client


def trickle(client, data: bytes, interval: float = 0.05):
    """Send ``data`` one byte every ``interval`` seconds, then keep sending ``x``."""
    remaining = list(data)

    def send_one():
        if client.transport is None or not client.transport.connected:
            loop.stop()
            return
        client.transport.write(bytes([remaining.pop(0)]) if remaining else b"x")

    loop = task.LoopingCall(send_one)
    loop.start(interval)
    return loop


class SlowClientTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.gw = GatewayHarness(feeds=False, http_headers_timeout_ms=1000,
                                 http_body_timeout_ms=1000, max_pending_connections=8)
        yield self.gw.start()
        self.addCleanup(self.gw.stop)

    @defer.inlineCallbacks
    def slowloris(self, data, first=b""):
        client = yield raw_connect(self.gw.port)
        client.transport.write(first)
        started = time.monotonic()
        loop = trickle(client, data)
        self.addCleanup(lambda: loop.running and loop.stop())
        yield with_timeout(client.closed, 10, "the slow client's connection to end")
        return client, client.closed_at - started

    @defer.inlineCallbacks
    def test_trickled_rest_headers_are_cut_at_the_deadline(self):
        """Headers trickled a byte at a time: 408 JSON at the 1 s deadline, then closed."""
        client, elapsed = yield self.slowloris(b"GET /websocket/status HTTP/1.1\r\nHost: x\r\nX-A: ")
        self.assertEqual(client.answer(), (408, {
            "error": "request_timeout",
            "message": "the request's headers did not arrive within 1 s"}))
        self.assertLess(elapsed, 4)

    @defer.inlineCallbacks
    def test_trickled_rest_body_is_cut_at_the_deadline(self):
        """A POST body trickled a byte at a time: 408 at the body deadline."""
        client, elapsed = yield self.slowloris(
            b'{"topic":"public:x","data":', first=(
                b"POST /websocket/publish HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"))
        status, body = client.answer()
        self.assertEqual((status, body["error"]), (408, "request_timeout"))
        self.assertIn("body", body["message"])
        self.assertLess(elapsed, 6)

    @defer.inlineCallbacks
    def test_trickled_websocket_handshake_is_cut(self):
        """A /ws handshake trickled a byte at a time is dropped at the same deadline."""
        _, elapsed = yield self.slowloris(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nX-A: ")
        self.assertLess(elapsed, 4)

    @defer.inlineCallbacks
    def test_pending_connections_are_bounded(self):
        """
        With 8 connections that have not finished a request, a 9th is answered 503 busy
        and closed at once; once they are gone, a request is served again.
        """
        slow = []
        for _ in range(8):
            client = yield raw_connect(self.gw.port)
            client.transport.write(b"GET /websocket/status HTTP/1.1\r\n")
            slow.append(client)
        yield harness.wait_for(lambda: self.gw.listener.pending.count == 8,
                               what="8 pending connections")
        refused = yield raw_connect(self.gw.port)
        yield with_timeout(refused.closed, 5, "the refused connection to close")
        status, body = refused.answer()
        self.assertEqual((status, body["error"]), (503, "busy"))
        for client in slow:
            client.transport.loseConnection()
        yield harness.wait_for(lambda: self.gw.listener.pending.count == 0,
                               what="the places given back")
        served = yield raw_connect(self.gw.port)
        served.transport.write(b"GET /websocket/status HTTP/1.1\r\nHost: x\r\n"
                               b"Connection: close\r\n\r\n")
        yield with_timeout(served.closed, 5, "the answer")
        self.assertTrue(served.received.startswith(b"HTTP/1.1 200 "), served.received[:80])

    @defer.inlineCallbacks
    def test_websocket_gives_its_place_back_once_open(self):
        """An open WebSocket no longer counts as pending."""
        client = yield self.gw.connect()
        self.assertEqual(self.gw.listener.pending.count, 0)
        yield client.close()


class ProtocolErrorTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.gw = GatewayHarness(feeds=False)
        yield self.gw.start()
        self.addCleanup(self.gw.stop)

    @defer.inlineCallbacks
    def send(self, data):
        client = yield raw_connect(self.gw.port)
        client.transport.write(data)
        yield with_timeout(client.closed, 10, "the answer and close")
        return client.answer()

    @defer.inlineCallbacks
    def test_twisted_protocol_errors_answer_in_json(self):
        """Bad chunking, two Content-Lengths, garbage: 400 JSON, connection closed."""
        for data in (
            b"POST /websocket/publish HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: application/json\r\n\r\nzz\r\n",
            b"POST /websocket/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
            b"Content-Length: 3\r\n\r\n{}",
            b"GARBAGE\r\n\r\n",
        ):
            status, body = yield self.send(data)
            self.assertEqual((status, body["error"]), (400, "bad_request"), data)

    @defer.inlineCallbacks
    def test_long_lines_and_http2(self):
        """A long request line: 414; a long header: 431; the HTTP/2 preface: 505."""
        status, body = yield self.send(b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n")
        self.assertEqual((status, body["error"]), (414, "uri_too_long"))
        status, body = yield self.send(b"GET /websocket/status HTTP/1.1\r\nX-Big: "
                                       + b"a" * 20000 + b"\r\n\r\n")
        self.assertEqual((status, body["error"]), (431, "headers_too_large"))
        status, body = yield self.send(b"GET /websocket/status HTTP/1.1\r\n"
                                       + b"X-A: b\r\n" * 2000 + b"\r\n")
        self.assertEqual((status, body["error"]), (431, "headers_too_large"))
        status, body = yield self.send(b"GET /ws?" + b"a" * 40000 + b" HTTP/1.1\r\n\r\n")
        self.assertEqual((status, body["error"]), (431, "headers_too_large"))
        status, body = yield self.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        self.assertEqual((status, body["error"]), (505, "http_version_not_supported"))

    @defer.inlineCallbacks
    def test_plain_get_on_ws_says_what_to_do(self):
        """GET /ws without Upgrade: 426 with a JSON body saying to use a WebSocket client."""
        status, body = yield self.send(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual((status, body["error"]), (426, "upgrade_required"))
        self.assertIn("WebSocket client", body["message"])

    @defer.inlineCallbacks
    def test_root_points_to_the_rest(self):
        """GET / answers JSON naming /ws, the status and the REST API; a browser gets HTML."""
        status, body = yield self.send(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        self.assertEqual(status, 200)
        self.assertEqual(body["links"]["websocket"], "/ws")
        self.assertEqual(body["links"]["status"], "/websocket/status")
        self.assertIn("admin", body["links"])
        client = yield raw_connect(self.gw.port)
        client.transport.write(b"GET / HTTP/1.1\r\nHost: x\r\nAccept: text/html\r\n"
                               b"Connection: close\r\n\r\n")
        yield with_timeout(client.closed, 10, "the page")
        self.assertIn(b"text/html", client.received.split(b"\r\n\r\n")[0])
        self.assertIn(b'<a href="/websocket/status">', client.received)
