"""
The handshake fast path (realtime.transport.handshake) only accepts what Autobahn accepts,
with the same request: over generated requests, whatever ``parse_common`` takes, Autobahn's
own ``processHandshake`` takes too, with the same headers, path, parameters, host, origin,
protocols, extensions, key and leftover bytes.  Through the real protocol, refused
handshakes get the same answer, byte for byte, as through Autobahn's path, and the common
requests (a plain client, a browser with Origin and permessage-deflate) take the fast path.
"""

from types import SimpleNamespace

from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from realtime import config as config_module
from realtime.transport import handshake
from realtime.transport.websocket import _CONNECTION_SLOTS, RealtimeServerProtocol, make_factory
from tests.test_protocol_memory import make_listener, open_connection

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
_MISSING = object()


class _Captured(Exception):
    pass


class AutobahnOnly(WebSocketServerProtocol):
    """Autobahn's handshake alone: onConnect records the request, then refuses."""

    request = None

    def onConnect(self, request):
        self.request = request
        raise ConnectionDeny(403, "captured")


def autobahn_factory():
    factory = make_factory(SimpleNamespace(config=config_module.defaults(), timers=None))
    factory.setProtocolOptions(openHandshakeTimeout=0)
    factory.protocol = AutobahnOnly
    return factory


def through_autobahn(factory, data: bytes):
    proto = factory.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1))
    proto.makeConnection(transport)
    transport.registerProducer(transport, True)  # as Autobahn's adapter has on TCP
    proto.dataReceived(data)
    return proto


def request(line="GET /ws?token=t HTTP/1.1", headers=None, rest=""):
    if headers is None:
        headers = [("Host", "x"), ("Upgrade", "websocket"), ("Connection", "Upgrade"),
                   ("Sec-WebSocket-Key", KEY), ("Sec-WebSocket-Version", "13")]
    return (line + "\r\n" + "".join(f"{n}:{v}\r\n" for n, v in headers) + "\r\n"
            + rest).encode("iso-8859-1")


# -- generated requests --------------------------------------------------------------------

_odd = st.text(alphabet=st.sampled_from(list("aZ09 \t,;=:/?#&%+-._~[]\"\x7f\x80\xff\r\n\x00")),
               max_size=12)
_lines = st.one_of(
    st.just("GET /ws?token=t HTTP/1.1"),
    st.sampled_from(["GET /ws HTTP/1.1", "GET /ws?token=t HTTP/1.1", "GET /ws?a=1&a=2&=3 HTTP/1.1",
                     "GET /ws?x=%20y HTTP/1.1", "GET /ws#f HTTP/1.1", "GET /ws;p?t=1 HTTP/1.1",
                     "GET //h/ws HTTP/1.1", "GET http://h/ws HTTP/1.1", "GET  /ws HTTP/1.1",
                     "POST /ws HTTP/1.1", "GET /ws HTTP/1.0", "get /ws HTTP/1.1",
                     "GET /ws HTTP/1.1 ", " GET /ws HTTP/1.1", "GET /ws", "GET /w\x7fs HTTP/1.1"]),
    _odd.map(lambda uri: f"GET /ws?{uri} HTTP/1.1"))
_values = {
    "Host": ["x", "x:80", "x:abc", "[::1]", "[::1]:8080", "", " x ", "x:"],
    "Upgrade": ["websocket", "WebSocket", "h2c, websocket", "websocketx", ""],
    "Connection": ["Upgrade", "keep-alive, Upgrade", "close", "upgrade "],
    "Sec-WebSocket-Version": ["13", " 13", "8", "12", "+13", "abc", "013", "13, 8"],
    "Sec-WebSocket-Key": [KEY, f" {KEY} ", KEY[:-1], KEY[:-2] + "=A", "dGhlIHNhbXBsZSBub25jZ*==",
                          "x" * 22 + "=="],
    "Origin": ["http://a.example", "null", "file://x", "https://x:1", "bogus", "http://",
               "http://[::1]:80", "HTTP://A.EXAMPLE:8080"],
    "Sec-WebSocket-Protocol": ["chat", "chat, chat", "a,b", "", " a , b "],
    "Sec-WebSocket-Extensions": ["permessage-deflate; client_max_window_bits", "x; y=\"1\"", ""],
    "X-Forwarded-For": ["1.2.3.4"],
    "Cookie": ["AuthSession=abc"],
}
_header = st.one_of(
    st.sampled_from(sorted(_values)).flatmap(
        lambda name: st.tuples(st.sampled_from([name, name.lower(), name.upper()]),
                               st.one_of(st.sampled_from(_values[name]), _odd))),
    st.tuples(st.sampled_from(["X-Any", "x any", " Host", "Host ", ""]), _odd))
#: a header of the request with one of the values listed for it
_known = st.sampled_from(sorted((n, v) for n, vs in _values.items() for v in vs))
_common = [("Host", "x"), ("Upgrade", "websocket"), ("Connection", "Upgrade"),
           ("Sec-WebSocket-Key", KEY), ("Sec-WebSocket-Version", "13")]


def _mutated(changes):
    """The common request's headers, some renamed in case, one changed, extras added."""
    cases, changed, value, dropped, extras = changes
    headers = []
    for i, (name, default) in enumerate(_common):
        if i == dropped:
            continue
        name = (name, name.lower(), name.upper())[cases[i]]
        headers.append((name, value if i == changed else default))
    return headers + extras


_headers = st.one_of(
    st.lists(_header, max_size=10),
    # mostly the common request with a few changes: that is where the boundaries are
    st.tuples(st.lists(st.integers(0, 2), min_size=5, max_size=5),
              st.one_of(st.none(), st.integers(0, 4)),
              st.one_of(st.sampled_from(sorted(v for vs in _values.values() for v in vs)), _odd),
              st.one_of(st.none(), st.none(), st.integers(0, 4)),
              st.lists(st.one_of(_header, _known), max_size=3)).map(_mutated))


class EquivalenceTests(unittest.TestCase):
    @settings(max_examples=2000, deadline=None)
    @given(line=_lines, headers=_headers, rest=st.sampled_from(["", "\x81\x80", "GET"]))
    def test_fast_path_accepts_only_what_autobahn_accepts(self, line, headers, rest):
        """A request the fast path takes is taken by Autobahn with the same values."""
        factory = autobahn_factory()
        data = request(line, headers, rest)
        probe = through_autobahn(factory, b"")
        fast = handshake.parse_common(data, probe)
        if fast is None:
            return
        auto = through_autobahn(factory, data)
        self.assertIsNotNone(auto.request, f"Autobahn refused what the fast path took: {data!r}")
        (end, status_line, headers_, uri, path, params, host, origin, protocols, extensions,
         key) = fast
        r = auto.request
        self.assertEqual((headers_, host, path, params, 13, origin, protocols, extensions),
                         (r.headers, r.host, r.path, r.params, r.version, r.origin,
                          r.protocols, r.extensions))
        self.assertEqual((status_line, uri, key, data[end:]),
                         (auto.http_status_line, auto.http_request_uri, auto._wskey, auto.data))

    def test_common_requests_take_the_fast_path(self):
        """A plain client's request and a browser's (Origin, permessage-deflate) are common."""
        probe = through_autobahn(autobahn_factory(), b"")
        plain = request()
        browser = request("GET /ws HTTP/1.1", [
            ("Host", "127.0.0.1:8080"), ("Connection", "Upgrade"), ("Pragma", "no-cache"),
            ("Upgrade", "websocket"), ("Origin", "http://127.0.0.1:8080"),
            ("Sec-WebSocket-Version", "13"), ("User-Agent", "Mozilla/5.0 (X11) Chrome/120"),
            ("Accept-Encoding", "gzip, deflate, br"), ("Cookie", "AuthSession=abc"),
            ("Sec-WebSocket-Key", KEY),
            ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits")])
        for data in (plain, browser):
            self.assertIsNotNone(handshake.parse_common(data, probe), data)
        parsed = handshake.parse_common(browser, probe)
        self.assertEqual(parsed[6], "127.0.0.1")  # the host without its port
        self.assertEqual(parsed[9], [("permessage-deflate",
                                      {"client_max_window_bits": [True]})])


# -- through the real protocol ------------------------------------------------------------

class AutobahnPath(RealtimeServerProtocol):
    """The gateway's protocol with Autobahn's own processHandshake and succeedHandshake
    (the path before)."""

    __slots__ = ()
    processHandshake = WebSocketServerProtocol.processHandshake
    succeedHandshake = WebSocketServerProtocol.succeedHandshake


def opened(data: bytes, autobahn: bool, factory_options=None):
    """``(connection, transport)`` once the gateway's WebSocket protocol has had ``data``
    (still open, unless the handshake was refused)."""
    _, listener = make_listener()
    factory = listener.ws_factory
    for name, value in (factory_options or {}).items():
        setattr(factory, name, value)
    if autobahn:
        factory.protocol = AutobahnPath
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 4321))
    conn = factory.buildProtocol(transport.getPeer())
    conn.makeConnection(transport)
    transport.registerProducer(transport, True)
    conn.dataReceived(data)
    return conn, transport


def close(conn):
    if conn.session is not None:
        if conn.session._watch is not None:
            conn.session._watch.stop()
        if conn.state != conn.STATE_CLOSED:
            conn.onClose(False, 1006, "")


def answer(data: bytes, autobahn: bool, factory_options=None) -> bytes:
    """What the gateway's WebSocket protocol writes for ``data`` (the HTTP answer's head)."""
    conn, transport = opened(data, autobahn, factory_options)
    close(conn)
    return transport.value().partition(b"\r\n\r\n")[0]


def without(name):
    return [h for h in _common if h[0] != name]


REFUSED = {
    "no Upgrade (426)": request(headers=without("Upgrade")),
    "Upgrade not websocket": request(headers=without("Upgrade") + [("Upgrade", "h2c")]),
    "Connection without upgrade": request(headers=without("Connection") + [("Connection", "close")]),
    "no version": request(headers=without("Sec-WebSocket-Version")),
    "version 12": request(headers=without("Sec-WebSocket-Version")
                          + [("Sec-WebSocket-Version", "12")]),
    "bad key": request(headers=without("Sec-WebSocket-Key") + [("Sec-WebSocket-Key", "x" * 24)]),
    "no key": request(headers=without("Sec-WebSocket-Key")),
    "two Hosts": request(headers=_common + [("Host", "y")]),
    "no Host": request(headers=without("Host")),
    "bad Host port": request(headers=without("Host") + [("Host", "x:abc")]),
    "POST": request("POST /ws HTTP/1.1"),
    "HTTP/1.0": request("GET /ws HTTP/1.0"),
    "fragment": request("GET /ws#x HTTP/1.1"),
    "unparsable Origin": request(headers=_common + [("Origin", "bogus")]),
    "duplicate subprotocol": request(headers=_common + [("Sec-WebSocket-Protocol", "a, a")]),
    "header smuggled with a bare LF": request(headers=_common + [("X-A", "1\nX-Forwarded-For: 1")]),
    "obs-fold": request(headers=_common + [(" X-A", "1")]),
    "foreign Origin with a cookie (403)": request(
        "GET /ws HTTP/1.1",
        headers=_common + [("Origin", "http://evil.example"), ("Cookie", "AuthSession=abc")]),
}


class RefusalTests(unittest.TestCase):
    def test_refusals_are_the_same(self):
        """Every refused handshake is answered as through Autobahn's own path."""
        for name, data in REFUSED.items():
            fast, before = answer(data, autobahn=False), answer(data, autobahn=True)
            self.assertFalse(fast.startswith(b"HTTP/1.1 101"), name)
            self.assertEqual(fast, before, name)
        self.assertTrue(answer(REFUSED["foreign Origin with a cookie (403)"], autobahn=False)
                        .startswith(b"HTTP/1.1 403"))

    def test_accepted_handshake_answered_the_same(self):
        """An accepted handshake gets the same 101 answer, and the connection works."""
        conn, transport = open_connection(self)
        self.assertIn(b'"type":"connected"', transport.value())
        data = request(line="GET /ws HTTP/1.1")  # no token: opens, then asks to authenticate
        self.assertEqual(answer(data, autobahn=False), answer(data, autobahn=True))
        self.assertTrue(answer(data, autobahn=False).startswith(b"HTTP/1.1 101"))


class SucceedHandshakeTests(unittest.TestCase):
    """The 101 of the fast succeedHandshake against Autobahn's, and the state it leaves."""

    def test_same_bytes_and_state_as_autobahn(self):
        data = request(line="GET /ws?x=1 HTTP/1.1") + b"\x81"  # and the start of a frame
        ours, our_transport = opened(data, autobahn=False)
        theirs, their_transport = opened(data, autobahn=True)
        self.addCleanup(close, ours)
        self.addCleanup(close, theirs)
        self.assertEqual(our_transport.value(), their_transport.value())
        self.assertTrue(our_transport.value().startswith(b"HTTP/1.1 101 "))
        self.assertEqual(ours.data, theirs.data)
        for name in _CONNECTION_SLOTS:
            mine, other = getattr(ours, name, _MISSING), getattr(theirs, name, _MISSING)
            if isinstance(other, (bool, int, float, str, bytes, type(None), tuple, list)) or \
                    other is _MISSING:
                if name in ("connection_id",):
                    continue
                self.assertEqual(mine, other, name)
            else:
                self.assertIs(type(mine), type(other), name)

    def test_what_the_fast_answer_leaves_to_autobahn(self):
        """An extension offer or headers of the factory: Autobahn's method; no Server
        header: the fast answer without one.  The same answer as Autobahn's each time."""
        offered = request(headers=_common + [("Sec-WebSocket-Extensions",
                                              "permessage-deflate")])
        self.assertEqual(answer(offered, autobahn=False), answer(offered, autobahn=True))
        plain = request(line="GET /ws HTTP/1.1")
        for options, expected in (({"server": None}, b"Connection: Upgrade\r\nSec-"),
                                  ({"headers": {"X-Extra": "1"}}, b"X-Extra: 1"),
                                  ({}, b"Server: AutobahnPython/")):
            fast = answer(plain, autobahn=False, factory_options=options)
            self.assertEqual(fast, answer(plain, autobahn=True, factory_options=options))
            self.assertIn(expected, fast)
        self.assertNotIn(b"Server:", answer(plain, autobahn=False,
                                            factory_options={"server": None}))


class AutobahnConnectionMade(RealtimeServerProtocol):
    """The gateway's protocol with Autobahn's own _connectionMade."""

    __slots__ = ()
    _connectionMade = WebSocketServerProtocol._connectionMade
    connectionMade = WebSocketServerProtocol.connectionMade


class ConnectionMadeTests(unittest.TestCase):
    def made(self, protocol, factory):
        factory.protocol = protocol
        conn = factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 4321))
        conn.makeConnection(transport)
        transport.registerProducer(transport, True)  # as Autobahn's adapter has on TCP
        self.addCleanup(lambda: conn.openHandshakeTimeoutCall and
                        conn.openHandshakeTimeoutCall.cancel())
        return conn, transport

    def test_same_state_as_autobahn(self):
        """A new connection holds the same attributes as after Autobahn's _connectionMade."""
        _, listener = make_listener(clock=Clock())
        factory = listener.ws_factory
        factory.setProtocolOptions(openHandshakeTimeout=5)
        ours, _ = self.made(RealtimeServerProtocol, factory)
        theirs, _ = self.made(AutobahnConnectionMade, factory)
        self.assertEqual(factory.countConnections, 2)
        self.assertEqual(ours.peer, "tcp4:127.0.0.1:4321")
        self.assertFalse(ours._transport_details.is_secure)
        # the UTF-8 validator is made on first use: none yet, then one of Autobahn's kind
        self.assertIsNone(ours._utf8validator)
        self.assertIs(type(ours.utf8validator), type(theirs.utf8validator))
        self.assertIs(ours.utf8validator, ours.utf8validator)
        for name in _CONNECTION_SLOTS:
            mine, other = getattr(ours, name, _MISSING), getattr(theirs, name, _MISSING)
            if name == "_utf8validator":
                continue  # compared above
            if name in ("openHandshakeTimeoutCall", "factory", "transport", "_transport_details"):
                self.assertIsNotNone(mine, name)
                self.assertIsNotNone(other, name)
            elif isinstance(other, (bool, int, float, str, bytes, type(None), tuple)) or \
                    other is _MISSING:
                self.assertEqual(mine, other, name)
            else:
                self.assertIs(type(mine), type(other), name)
                self.assertIsNot(mine, other, name)

    def test_opening_handshake_deadline_on_the_wheel(self):
        """A connection that does not finish its handshake in time is dropped."""
        clock = Clock()
        _, listener = make_listener(clock=clock)
        listener.ws_factory.setProtocolOptions(openHandshakeTimeout=5)
        conn, transport = self.made(RealtimeServerProtocol, listener.ws_factory)
        conn.dataReceived(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        clock.advance(4)
        self.assertFalse(transport.disconnecting)
        clock.advance(2)
        self.assertTrue(conn.wasOpenHandshakeTimeout)
        self.assertTrue(transport.disconnected)  # aborted
        self.assertIsNone(conn.openHandshakeTimeoutCall)
