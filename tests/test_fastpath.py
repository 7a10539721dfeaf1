"""
The fan-out write path (realtime.transport.fastpath and its use in realtime.transport.websocket).

Deterministic tests of the pieces (a fake TCP transport, ``task.Clock``), then end-to-end
tests over real loopback sockets, where the fast path is the one in use.
"""

import errno
import socket

import treq.client
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.tcp import Server
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.test.proto_helpers import StringTransport
from twisted.trial import unittest

from realtime import jsonutil
from realtime.hub.registry import frame_text
from realtime.transport import fastpath
from realtime.vocabulary import CLOSE_TOO_SLOW
from tests import harness
from tests.fakes import SECRET, make_token
from tests.harness import GatewayHarness
from tests.test_protocol_memory import make_listener


class FakeSocket:
    """
    A kernel socket that takes ``accept`` bytes per ``send`` (or raises ``error``).  Not
    tests/fakes.py's connection: the fast write path is tested below the WebSocket layer,
    at the socket Twisted's TCP transport writes to.
    """

    def __init__(self, accept=None, error=None):
        self.accept = accept  # bytes taken per send (None: all)
        self.error = error
        self.sent = []

    def send(self, data):
        if self.error is not None:
            raise self.error
        n = len(data) if self.accept is None else min(self.accept, len(data))
        self.sent.append(bytes(data[:n]))
        return n


class FakeTCPTransport(Server):
    """A twisted.internet.tcp.Server without a reactor: records what goes to write()."""

    def __init__(self, sock):
        # Deliberately not calling Server.__init__ (no reactor, no real socket).
        self.socket = sock
        self.connected = True
        self.disconnecting = False
        self.dataBuffer = b""
        self._tempDataBuffer = []
        self._tempDataLen = 0
        self.written = []

    def write(self, data):
        self.written.append(data)
        self._tempDataBuffer.append(data)
        self._tempDataLen += len(data)


class WriteNowTests(unittest.TestCase):
    def test_sends_directly_when_nothing_is_buffered(self):
        """With Twisted's buffer empty, the bytes go to the socket in one send."""
        sock = FakeSocket()
        transport = FakeTCPTransport(sock)
        fastpath.write_now(transport, b"abc")
        self.assertEqual(sock.sent, [b"abc"])
        self.assertEqual(transport.written, [])

    def test_rest_of_a_partial_send_goes_to_the_transport(self):
        """What the kernel did not take is handed to transport.write (its buffering, its pause)."""
        sock = FakeSocket(accept=2)
        transport = FakeTCPTransport(sock)
        fastpath.write_now(transport, b"abcdef")
        self.assertEqual(sock.sent, [b"ab"])
        self.assertEqual(transport.written, [b"cdef"])

    def test_queues_behind_buffered_bytes(self):
        """When Twisted still holds bytes for the socket, new bytes queue behind them (order)."""
        sock = FakeSocket()
        transport = FakeTCPTransport(sock)
        transport.write(b"old")
        fastpath.write_now(transport, b"new")
        self.assertEqual(sock.sent, [])
        self.assertEqual(transport.written, [b"old", b"new"])

    def test_socket_errors_are_left_to_twisted(self):
        """EAGAIN or a dead peer: the bytes go through transport.write, which handles it."""
        for error in (BlockingIOError(errno.EAGAIN, "again"),
                      ConnectionResetError(errno.ECONNRESET, "reset")):
            transport = FakeTCPTransport(FakeSocket(error=error))
            fastpath.write_now(transport, b"x")
            self.assertEqual(transport.written, [b"x"])

    def test_disconnecting_transport_is_not_bypassed(self):
        """A transport being closed gets the bytes through write() (which knows what to do)."""
        sock = FakeSocket()
        transport = FakeTCPTransport(sock)
        transport.disconnecting = True
        fastpath.write_now(transport, b"x")
        self.assertEqual(sock.sent, [])
        self.assertEqual(transport.written, [b"x"])

    def test_only_plain_tcp_transports_are_eligible(self):
        """TLS and test transports keep the plain transport.write path."""
        self.assertTrue(fastpath.supports_direct_send(FakeTCPTransport(FakeSocket())))
        self.assertFalse(fastpath.supports_direct_send(StringTransport()))


class _Due:
    def __init__(self, log, name):
        self.log = log
        self.name = name

    def _flush_outbox(self):
        self.log.append(self.name)


class TurnBatcherTests(unittest.TestCase):
    def test_one_call_per_turn_for_all_connections(self):
        """Many connections due in one turn: one callLater(0), each flushed once, in order."""
        clock = task.Clock()
        batcher = fastpath.TurnBatcher(clock)
        log = []
        for name in ("a", "b", "c"):
            batcher.due(_Due(log, name))
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        self.assertEqual(log, [])
        clock.advance(0)
        self.assertEqual(log, ["a", "b", "c"])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_a_failing_connection_does_not_stop_the_others(self):
        """An exception flushing one connection is logged; the rest are still flushed."""
        clock = task.Clock()
        batcher = fastpath.TurnBatcher(clock)
        log = []

        class Broken:
            def _flush_outbox(self):
                raise RuntimeError("boom")

        batcher.due(Broken())
        batcher.due(_Due(log, "after"))
        clock.advance(0)
        self.assertEqual(log, ["after"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class AutobahnAdaptationTests(unittest.TestCase):
    def test_lazy_debug_arguments_render_the_same_text(self):
        """Autobahn's debug-log arguments, made lazy, render exactly as before when logged
        (at debug level); below it, where Autobahn's log.debug is a no-op, they pass through
        unformatted."""
        import pprint

        import txaio
        from autobahn import util
        from autobahn.websocket import protocol as ab

        fastpath.lazy_autobahn_debug_formatting()
        value = [("a", 1), ("b", {"c": 2})]
        level = txaio.get_global_log_level()
        self.addCleanup(txaio.set_global_log_level, level)
        txaio.set_global_log_level("debug")
        self.assertEqual(str(ab.pformat(value)), pprint.pformat(value))
        self.assertEqual("{}".format(ab.hlval(3)), util.hlval(3))
        timings = ab.Timings()
        timings.track("x")
        self.assertIsInstance(str(timings), str)
        txaio.set_global_log_level("info")
        self.assertIs(ab.hlval(value), value)  # never rendered: ...
        self.assertIs(txaio.make_logger().debug, txaio.tx._no_op)  # ... debug is a no-op

    def test_protocol_options_live_on_the_class(self):
        """Each connection reads the factory's options from its class, not its own copy."""
        factory = fastpath.options_on_class_factory(WebSocketServerFactory)("ws://localhost/")
        factory.protocol = WebSocketServerProtocol
        factory.setProtocolOptions(autoPingInterval=7, maxFramePayloadSize=1234)
        proto = factory.buildProtocol(None)
        self.assertIsInstance(proto, WebSocketServerProtocol)
        self.assertEqual(proto.autoPingInterval, 7)
        self.assertEqual(proto.maxFramePayloadSize, 1234)
        self.assertNotIn("autoPingInterval", vars(proto))
        factory.setProtocolOptions(autoPingInterval=9)
        self.assertEqual(factory.buildProtocol(None).autoPingInterval, 9)


class DeliveryEndToEndTests(unittest.TestCase):
    """A real gateway and real clients over loopback: the fast path is in use."""

    timeout = 60

    @inlineCallbacks
    def setUp(self):
        self.gw = GatewayHarness(feeds=False, jwt_secret=SECRET, ws_max_queue_bytes=256 * 1024)
        yield self.gw.start()
        self.addCleanup(self.gw.stop)

    @inlineCallbacks
    def connected_client(self, name):
        client = yield self.gw.connect(query={"token": make_token(name)})
        yield client.next("connected")
        return client

    def server_side(self, name):
        [conn] = self.gw.gateway.registry.connections_of(name)
        return conn

    @inlineCallbacks
    def test_events_in_one_callback_arrive_complete_and_in_order(self):
        """200 events dispatched in one callback reach every client, each once, in order."""
        clients = []
        for i in range(3):
            client = yield self.connected_client(f"fan{i}")
            clients.append(client)
        self.assertIsNotNone(self.server_side("fan0").transport._batcher)  # fast path in use
        registry = self.gw.gateway.registry
        for seq in range(200):
            registry.dispatch({"t": "all", "msg": jsonutil.dumps_text(
                {"type": "bench", "seq": seq})})
        for client in clients:
            for seq in range(200):
                message = yield client.next("bench")
                self.assertEqual(message["seq"], seq)

    @inlineCallbacks
    def test_message_then_close_arrive_in_that_order(self):
        """A frame due this turn is written before Autobahn's close frame, then the close code."""
        client = yield self.connected_client("closer")
        conn = self.server_side("closer")
        conn.send_error("bye", "going away")
        conn.close_with(4003, "forbidden")
        message = yield client.next("error")
        self.assertEqual(message["code"], "bye")
        code, _ = yield client.wait_closed()
        self.assertEqual(code, 4003)

    @inlineCallbacks
    def test_handshake_leftovers_are_freed(self):
        """Once open, the connection no longer holds the request headers or the raw request."""
        yield self.connected_client("slim")
        conn = self.server_side("slim").transport  # the WebSocket adapter of the session
        self.assertIsNone(conn.http_headers)
        self.assertIsNone(conn.http_request_data)
        self.assertEqual(conn._queue, ())

    @inlineCallbacks
    def test_client_that_stops_reading_is_closed_4100(self):
        """A client that never reads: the bounded queue fills and the server closes it (4100)."""
        sock = socket.create_connection(("127.0.0.1", self.gw.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.addCleanup(sock.close)
        sock.sendall((f"GET /ws?token={make_token('sleeper')} HTTP/1.1\r\n"
                      "Host: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                      "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        yield harness.wait_for(lambda: self.gw.gateway.registry.count_of("sleeper") == 1,
                               what="the raw client to be registered")
        conn = self.server_side("sleeper").transport
        frame = frame_text(b"x" * 8000)
        sent = 0
        for _ in range(2000):  # 16 MB at most; the limit is 256 KiB + socket buffers
            if not conn.deliver_frame(frame):
                break
            sent += 1
            if sent % 50 == 0:
                yield harness.sleep(0)  # let the turn end: outboxes flush, buffers fill
        yield harness.wait_for(lambda: conn.state == conn.STATE_CLOSED,
                               what="the slow client to be closed")
        self.assertEqual(conn.localCloseCode, CLOSE_TOO_SLOW)
        self.assertEqual(conn._queued_bytes, 0)
        self.assertLess(sent, 2000)
        # Autobahn's batched close-handshake timer outlives the aborted connection (it
        # fires harmlessly within closeHandshakeTimeout): let it go, for a clean reactor.
        yield harness.wait_for(
            lambda: not any("_notify_bucket" in repr(c) for c in reactor.getDelayedCalls()),
            what="Autobahn's batched timers to fire")


class WebSocketFirstFactoryTests(unittest.TestCase):
    """One port: /ws straight to Autobahn, everything else to the web site."""

    timeout = 60

    @inlineCallbacks
    def setUp(self):
        from twisted.internet import endpoints
        self.gw = GatewayHarness(feeds=False, jwt_secret=SECRET)
        yield self.gw.start()
        self.addCleanup(self.gw.stop)
        listener = fastpath.WebSocketFirstFactory(self.gw.site, self.gw.factory)
        self.port = yield endpoints.serverFromString(
            reactor, "tcp:0:interface=127.0.0.1").listen(listener)
        self.addCleanup(self.port.stopListening)
        self.gw.port = self.port.getHost().port  # clients of the harness use this port

    def test_only_get_of_the_ws_path_is_routed_to_websocket(self):
        """`GET /ws` and `GET /ws?…` are WebSocket; `/wsx`, `/ws/x`, POST and others are not."""
        listener = fastpath.WebSocketFirstFactory(None, None)
        for line, expected in ((b"GET /ws HTTP/1.1\r", True), (b"GET /ws?token=a HTTP/1.1", True),
                               (b"GET /wsx HTTP/1.1", False), (b"GET /ws/x HTTP/1.1", False),
                               (b"POST /ws HTTP/1.1", False), (b"GET / HTTP/1.1", False)):
            self.assertEqual(listener.is_ws(line), expected, line)

    @inlineCallbacks
    def test_websocket_with_token_connects_and_receives(self):
        """A JWT client connects through the router, gets `connected` and then a broadcast."""
        client = yield self.gw.connect(query={"token": make_token("routed")})
        message = yield client.next("connected")
        self.assertEqual(message["user"]["id"], "routed")
        [conn] = self.gw.gateway.registry.connections_of("routed")
        self.assertIsNone(conn.transport.http_headers)
        self.gw.gateway.registry.dispatch({"t": "all", "msg": '{"type":"hello"}'})
        yield client.next("hello")

    @inlineCallbacks
    def test_http_requests_still_reach_the_site(self):
        """Other paths are served by the site, as before (JSON status, JSON 404)."""
        from twisted.web.client import Agent, HTTPConnectionPool
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        http = treq.client.HTTPClient(Agent(reactor, pool=pool))
        response = yield http.get(f"http://127.0.0.1:{self.gw.port}/websocket/status")
        self.assertEqual(response.code, 200)
        body = yield response.json()
        self.assertIn("connections", body)
        response = yield http.get(f"http://127.0.0.1:{self.gw.port}/wsx")
        self.assertEqual(response.code, 404)
        yield response.content()


class _Recorder(Protocol):
    def __init__(self, name):
        self.name = name
        self.received = b""

    def dataReceived(self, data):
        self.received += data


class _RecordingFactory(Factory):
    def __init__(self, name):
        self.name = name
        self.built = []

    def buildProtocol(self, addr):
        proto = _Recorder(self.name)
        self.built.append(proto)
        return proto


class FirstRequestRouterTests(unittest.TestCase):
    """The router hands the connection over whole, also under a wrapping (TLS) transport."""

    def route(self, chunks, wrapped=False):
        site, ws = _RecordingFactory("site"), _RecordingFactory("ws")
        self.clock = Clock()
        listener = fastpath.WebSocketFirstFactory(site, ws, clock=self.clock)
        router = listener.buildProtocol(None)
        if wrapped:
            wrapper = ProtocolWrapper(WrappingFactory(listener), router)
            wrapper.makeConnection(StringTransport())
            feed = wrapper.dataReceived
        else:
            transport = StringTransport()
            transport.protocol = router
            router.makeConnection(transport)
            feed = router.dataReceived
        for chunk in chunks:
            feed(chunk)
        built = site.built + ws.built
        self.assertEqual(len(built), 1)
        return built[0], (wrapper.wrappedProtocol if wrapped else transport.protocol)

    def test_request_line_split_across_reads(self):
        """Bytes before the end of the request line are kept and passed on unchanged."""
        proto, current = self.route([b"GE", b"T /ws?token=x HT", b"TP/1.1\r\nHost: a\r\n\r\n"])
        self.assertEqual(proto.name, "ws")
        self.assertIs(current, proto)
        self.assertEqual(proto.received, b"GET /ws?token=x HTTP/1.1\r\nHost: a\r\n\r\n")

    def test_other_requests_go_to_the_site(self):
        """A REST request is given to the site's protocol, with every byte."""
        proto, current = self.route([b"POST /websocket/publish HTTP/1.1\r\n\r\n"])
        self.assertEqual(proto.name, "site")
        self.assertEqual(proto.received, b"POST /websocket/publish HTTP/1.1\r\n\r\n")

    def test_under_a_protocol_wrapper(self):
        """Under TLS (a ProtocolWrapper) the wrapper's wrapped protocol is replaced."""
        proto, current = self.route([b"GET /ws HTTP/1.1\r\n\r\n"], wrapped=True)
        self.assertEqual(proto.name, "ws")
        self.assertIs(current, proto)

    def test_silent_connection_is_aborted(self):
        """A connection that sends no request line within the timeout is aborted."""
        listener = fastpath.WebSocketFirstFactory(_RecordingFactory("site"),
                                                  _RecordingFactory("ws"), clock=Clock())
        router = listener.buildProtocol(None)
        transport = StringTransport()
        router.makeConnection(transport)
        router.dataReceived(b"GET /w")  # no end of line yet
        listener.clock.advance(9.9)
        self.assertFalse(transport.disconnecting)
        listener.clock.advance(0.2)
        self.assertTrue(transport.disconnecting)

    def test_timeout_cancelled_once_routed(self):
        """Once the request line is in, the timeout is gone."""
        self.route([b"GET /ws HTTP/1.1\r\n\r\n"])
        self.assertEqual(self.clock.getDelayedCalls(), [])


class HandshakeAnswerTests(unittest.TestCase):
    def test_101_and_connected_in_one_send(self):
        """On plain TCP the handshake's answer and ``connected`` reach the socket in one send."""
        clock = Clock()
        gateway, listener = make_listener(clock=clock)
        factory = listener.ws_factory
        factory.batcher = fastpath.TurnBatcher(clock)
        sock = FakeSocket()
        transport = FakeTCPTransport(sock)
        transport.producer = None
        transport.streamingProducer = False
        transport.client = ("127.0.0.1", 4321)
        transport._addressType = IPv4Address
        conn = factory.buildProtocol(None)
        conn.makeConnection(transport)
        conn.dataReceived((f"GET /ws?token={make_token('alice')} HTTP/1.1\r\nHost: x\r\n"
                           "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        self.assertEqual(sock.sent, [])  # until the turn ends
        clock.advance(0)
        self.assertEqual(len(sock.sent), 1, sock.sent)
        self.assertTrue(sock.sent[0].startswith(b"HTTP/1.1 101 "))
        self.assertIn(b'"type":"connected"', sock.sent[0])
        self.assertEqual(transport.written, [])  # nothing went through Twisted's buffer
        conn.session._watch.stop()
        conn.onClose(False, 1006, "")
