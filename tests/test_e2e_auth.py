"""
End to end, over loopback with real Autobahn clients: authentication flows and the limits
that protect the server from its clients.
"""

import base64
import json
import time

import treq
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Protocol
from twisted.trial import unittest

from realtime import jsonutil
from realtime.auth.signing import envelope
from tests import harness
from tests.fakes import SECRET, make_token
from tests.harness import GatewayHarness, HandshakeFailed, sleep, unique, wait_for


class AuthCase(unittest.TestCase):
    timeout = 60
    overrides = {}

    @inlineCallbacks
    def setUp(self):
        yield self.start_gateway()
        self.addCleanup(lambda: self.gw.stop())  # the gateway of the moment (see rebuild)

    def start_gateway(self, **parts):
        self.gw = GatewayHarness(feeds=False, jwt_secret=SECRET,
                                 cors_origins=("https://app.example",), parts=parts,
                                 **self.overrides)
        return self.gw.start()

    @inlineCallbacks
    def rebuild(self, **parts):
        """This test's gateway again, built with ``parts`` in place (fault injection:
        arguments of ``make_parts``, such as ``session_checker``)."""
        yield self.gw.stop()
        yield self.start_gateway(**parts)

    @inlineCallbacks
    def connected(self, user=None, **claims):
        user = user or unique("user")
        client = yield self.gw.connect(query={"token": make_token(user, **claims)})
        message = yield client.next("connected")
        return client, message

    def server_side(self, user):
        conns = self.gw.gateway.registry.connections_of(user)
        self.assertEqual(len(conns), 1)
        return conns[0]

    @inlineCallbacks
    def assertClosed(self, client, code):
        closed_code, _ = yield client.wait_closed()
        self.assertEqual(closed_code, code)


class FirstMessageAuthTests(AuthCase):
    overrides = {"ws_auth_timeout_ms": 1500}

    @inlineCallbacks
    def test_auth_message_flow(self):
        """No credentials: connection_established, then `auth` with a JWT gives connected."""
        client = yield self.gw.connect()
        hello = yield client.next("connection_established")
        self.assertEqual(hello["message"], "Please authenticate to continue")
        client.send_json({"type": "auth", "token": make_token("alice")})
        message = yield client.next("connected")
        self.assertEqual(message["user"]["id"], "alice")

    @inlineCallbacks
    def test_bad_token_in_auth_message(self):
        """`auth` with a bad token: auth_failed auth-failed, close 4001."""
        client = yield self.gw.connect()
        yield client.next("connection_established")
        client.send_json({"type": "auth", "token": "garbage"})
        self.assertEqual((yield client.next("auth_failed"))["reason"], "auth-failed")
        yield self.assertClosed(client, 4001)

    @inlineCallbacks
    def test_expired_token_in_auth_message(self):
        """`auth` with an expired token: auth_failed token-expired, close 4001."""
        client = yield self.gw.connect()
        yield client.next("connection_established")
        client.send_json({"type": "auth", "token": make_token("alice", lifetime=-60)})
        self.assertEqual((yield client.next("auth_failed"))["reason"], "token-expired")
        yield self.assertClosed(client, 4001)

    @inlineCallbacks
    def test_auth_timeout(self):
        """No `auth` within WS_AUTH_TIMEOUT_MS: auth_failed timeout, close 4001."""
        client = yield self.gw.connect()
        yield client.next("connection_established")
        self.assertEqual((yield client.next("auth_failed"))["reason"], "timeout")
        yield self.assertClosed(client, 4001)

    @inlineCallbacks
    def test_ping_allowed_before_auth(self):
        """`ping` before authentication gets `pong`; the connection stays open."""
        client = yield self.gw.connect()
        yield client.next("connection_established")
        client.send_json({"type": "ping"})
        yield client.next("pong")
        self.assertEqual(client.state, client.STATE_OPEN)

    @inlineCallbacks
    def test_other_messages_before_auth_close_4001(self):
        """Anything but auth/ping before authentication: error not_authenticated, 4001."""
        for message in ({"type": "subscribe", "topic": "public:x"},
                        {"type": "publish", "topic": "public:x", "data": 1},
                        {"type": "frobnicate"}):
            client = yield self.gw.connect()
            yield client.next("connection_established")
            client.send_json(message)
            self.assertEqual((yield client.next("error"))["code"], "not_authenticated")
            yield self.assertClosed(client, 4001)

    @inlineCallbacks
    def test_preauth_message_over_8k_closes_1009(self):
        """Before authentication a message over 8 KiB closes 1009 (too big)."""
        client = yield self.gw.connect()
        yield client.next("connection_established")
        client.send_json({"type": "auth", "token": "x" * 9000})
        yield self.assertClosed(client, 1009)

    @inlineCallbacks
    def test_preauth_total_over_32k_closes_4008(self):
        """Before authentication all messages together may hold 32 KiB; more closes 4008."""
        client = yield self.gw.connect()
        yield client.next("connection_established")
        for _ in range(5):
            client.send_json({"type": "ping", "pad": "p" * 7000})
        for _ in range(4):
            yield client.next("pong")
        self.assertEqual((yield client.next("error"))["code"], "policy")
        yield self.assertClosed(client, 4008)

    @inlineCallbacks
    def test_preauth_limit_lifted_after_auth(self):
        """After authentication messages up to WS_MAX_MESSAGE_BYTES are read."""
        client = yield self.gw.connect()
        yield client.next("connection_established")
        client.send_json({"type": "auth", "token": make_token("alice")})
        yield client.next("connected")
        client.send_json({"type": "frobnicate", "pad": "x" * 100_000})
        self.assertEqual((yield client.next("error"))["code"], "unknown_type")

    @inlineCallbacks
    def test_token_with_foreign_origin_accepted(self):
        """Origin guards cookies only: a JWT from any Origin is accepted (it is not ambient)."""
        client = yield self.gw.connect(query={"token": make_token("alice")},
                                       origin="https://evil.example")
        yield client.next("connected")


class RefreshAndExpiryTests(AuthCase):
    @inlineCallbacks
    def test_live_connection_closed_at_expiry(self):
        """A connection whose JWT expires gets auth_failed token-expired and close 4001."""
        client = yield self.gw.connect(query={"token": make_token("alice", lifetime=1)})
        yield client.next("connected")
        message = yield client.next("auth_failed", seconds=15)
        self.assertEqual(message["reason"], "token-expired")
        yield self.assertClosed(client, 4001)

    @inlineCallbacks
    def test_refresh_moves_the_expiry(self):
        """`auth` with a fresh token of the same user: connected again, expiry timer moved."""
        user = unique("user")
        client, _ = yield self.connected(user, lifetime=30)
        conn = self.server_side(user)
        before = conn._watch._timer.getTime()
        client.send_json({"type": "auth", "token": make_token(user, lifetime=3600)})
        yield client.next("connected")
        self.assertGreater(conn._watch._timer.getTime(), before + 3000)
        self.assertEqual(len(self.gw.gateway.registry.connections_of(user)), 1)

    @inlineCallbacks
    def test_refresh_for_another_user_refused(self):
        """A refresh token naming another user: error forbidden; identity unchanged."""
        user = unique("user")
        client, _ = yield self.connected(user)
        client.send_json({"type": "auth", "token": make_token("mallory")})
        self.assertEqual((yield client.next("error"))["code"], "forbidden")
        self.assertEqual(self.server_side(user).user_id, user)

    @inlineCallbacks
    def test_bad_refresh_closes(self):
        """A refresh with an expired token ends the connection (token-expired, 4001)."""
        user = unique("user")
        client, _ = yield self.connected(user)
        client.send_json({"type": "auth", "token": make_token(user, lifetime=-60)})
        self.assertEqual((yield client.next("auth_failed"))["reason"], "token-expired")
        yield self.assertClosed(client, 4001)


class RevocationTests(AuthCase):
    overrides = {"admin_key": "k" * 20}

    @inlineCallbacks
    def test_revoked_token_closes_live_connection_and_is_refused(self):
        """
        POST /websocket/tokens/revoke closes the live connection using the token (auth_failed
        revoked, 4001); the token is refused afterwards; the user's other token still works.
        """
        user = unique("user")
        revoked = make_token(user, jti=unique("jti"))
        client = yield self.gw.connect(headers={"Authorization": "Bearer " + revoked})
        yield client.next("connected")
        other, _ = yield self.connected(user, jti=unique("jti"))

        response = yield treq.post(
            f"http://127.0.0.1:{self.gw.port}/websocket/tokens/revoke",
            json={"token": revoked}, persistent=False,
            headers={"Authorization": "Bearer " + "k" * 20})
        body = yield response.json()
        self.assertEqual((response.code, body["closedConnections"]), (200, 1))

        self.assertEqual((yield client.next("auth_failed"))["reason"], "revoked")
        yield self.assertClosed(client, 4001)
        again = yield self.gw.connect(query={"token": revoked})
        self.assertEqual((yield again.next("auth_failed"))["reason"], "revoked")
        yield self.assertClosed(again, 4001)
        self.assertEqual(other.state, other.STATE_OPEN)


    @inlineCallbacks
    def test_revocation_store_down_refuses_4101(self):
        """Redis (the revocation store) not answering: auth_failed unavailable, close 4101."""
        from realtime.redis.client import RedisClient
        from realtime.redis.stores import RedisRevocationStore
        from realtime.redis.url import parse_redis_url
        dead = RedisClient(reactor, parse_redis_url(harness.RedisServer().url), timeout=0.5)
        dead.start()
        self.addCleanup(dead.stop)
        yield self.rebuild(cluster_parts={"revocations": RedisRevocationStore(dead, reactor)})
        client = yield self.gw.connect(query={"token": make_token(unique("user"))})
        self.assertEqual((yield client.next("auth_failed"))["reason"], "unavailable")
        yield self.assertClosed(client, 4101)


class SizeAndFragmentTests(AuthCase):
    overrides = {"ws_max_message_bytes": 64 * 1024}

    @inlineCallbacks
    def test_oversize_message_closes_1009(self):
        """A message over WS_MAX_MESSAGE_BYTES closes 1009 (not 1006: failByDrop is off)."""
        client, _ = yield self.connected()
        client.sendMessage(b'{"type":"x","pad":"' + b"x" * (70 * 1024) + b'"}')
        yield self.assertClosed(client, 1009)

    @inlineCallbacks
    def test_oversize_fragmented_message_closes_1009(self):
        """Fragments adding up past the limit close 1009 too."""
        client, _ = yield self.connected()
        client.sendMessage(b'{"pad":"' + b"x" * (70 * 1024) + b'"}', fragmentSize=8 * 1024)
        yield self.assertClosed(client, 1009)

    @inlineCallbacks
    def test_fragment_flood_closes_4008(self):
        """A small message in 2000 one-byte fragments closes 4008 (fragment cap 1024)."""
        client, _ = yield self.connected()
        client.sendMessage(b'{"type":"ping","pad":"' + b"x" * 2000 + b'"}', fragmentSize=1)
        yield self.assertClosed(client, 4008)

    @inlineCallbacks
    def test_moderately_fragmented_message_accepted(self):
        """A message in 100 fragments is reassembled and handled."""
        client, _ = yield self.connected()
        payload = jsonutil.dumps({"type": "ping", "pad": "y" * 1000})
        client.sendMessage(payload, fragmentSize=len(payload) // 100 + 1)
        yield client.next("pong")


class RateLimitTests(AuthCase):
    overrides = {"ws_rate_limit_max_messages": 5, "ws_rate_limit_window_ms": 60000}

    @inlineCallbacks
    def test_burst_gets_rate_limited_with_retry_advice(self):
        """The 6th message in the window gets error rate_limited with retryAfterMs."""
        client, _ = yield self.connected()
        for _ in range(6):
            client.send_json({"type": "ping"})
        for _ in range(5):
            yield client.next("pong")
        error = yield client.next("error")
        self.assertEqual(error["code"], "rate_limited")
        self.assertTrue(50_000 < error["retryAfterMs"] <= 60_001, error)
        self.assertEqual(client.state, client.STATE_OPEN)

    @inlineCallbacks
    def test_repeated_abuse_closes_4008(self):
        """A client that keeps sending while refused is closed 4008."""
        client, _ = yield self.connected()
        for _ in range(30):
            client.send_json({"type": "ping"})
        yield self.assertClosed(client, 4008)
        self.assertEqual(sum(1 for m in client.received if m["type"] == "pong"), 5)

    @inlineCallbacks
    def test_websocket_ping_flood_counted(self):
        """WebSocket ping frames count too: 5 pongs, then silence, then close 4008."""
        client, _ = yield self.connected()
        pongs = []
        client.onPong = pongs.append
        for i in range(40):
            client.sendPing(b"p%d" % i)
        yield self.assertClosed(client, 4008)
        self.assertEqual(len(pongs), 5)

    @inlineCallbacks
    def test_limit_applies_before_auth(self):
        """Unauthenticated clients are rate limited as well."""
        client = yield self.gw.connect()
        yield client.next("connection_established")
        for _ in range(30):
            client.send_json({"type": "ping"})
        yield self.assertClosed(client, 4008)


class ConnectionLimitTests(AuthCase):
    overrides = {"ws_max_connections_per_user": 2}

    @inlineCallbacks
    def test_third_connection_closed_4029(self):
        """Over WS_MAX_CONNECTIONS_PER_USER the new connection closes 4029; the others stay."""
        user = unique("user")
        first, _ = yield self.connected(user)
        second, _ = yield self.connected(user)
        third = yield self.gw.connect(query={"token": make_token(user)})
        self.assertEqual((yield third.next("error"))["code"], "too_many_connections")
        yield self.assertClosed(third, 4029)
        self.assertEqual((first.state, second.state), (first.STATE_OPEN, second.STATE_OPEN))
        other, _ = yield self.connected()  # another user is not affected


class SingleSessionTests(AuthCase):
    overrides = {"ws_single_session": True}

    @inlineCallbacks
    def test_newer_session_replaces_older_4004(self):
        """WS_SINGLE_SESSION: the older connection closes 4004; the new one stays."""
        user = unique("user")
        old, _ = yield self.connected(user)
        new, _ = yield self.connected(user)
        yield self.assertClosed(old, 4004)
        self.assertEqual(new.state, new.STATE_OPEN)
        yield wait_for(lambda: self.gw.gateway.registry.count_of(user) == 1)


class SignedMessageTests(AuthCase):
    overrides = {"ws_signed_messages": True}

    @inlineCallbacks
    def signed_client(self):
        client, message = yield self.connected()
        self.assertTrue(message["sessionSecret"])
        return client, message["sessionSecret"]

    def now_ms(self):
        return int(time.time() * 1000)

    @inlineCallbacks
    def test_signed_ping_and_errors(self):
        """
        A signed ping gets pong; unsigned, tampered, stale and replayed messages get
        bad_signature / replay and are dropped; the connection stays open.
        """
        client, secret = yield self.signed_client()
        good = envelope(secret, {"type": "ping"}, self.now_ms(), "n1")
        client.sendMessage(good.encode())
        yield client.next("pong")

        client.send_json({"type": "ping"})
        self.assertEqual((yield client.next("error"))["code"], "bad_signature")
        client.sendMessage(good.encode())
        self.assertEqual((yield client.next("error"))["code"], "replay")
        stale = envelope(secret, {"type": "ping"}, self.now_ms() - 6 * 60 * 1000, "n2")
        client.sendMessage(stale.encode())
        self.assertEqual((yield client.next("error"))["code"], "bad_signature")
        tampered = envelope(secret, {"type": "ping"}, self.now_ms(), "n3").replace(
            '"ping"', '"frobnicate"')
        client.sendMessage(tampered.encode())
        self.assertEqual((yield client.next("error"))["code"], "bad_signature")
        self.assertNotIn("pong", [m["type"] for m in client.received[2:]])
        client.sendMessage(envelope(secret, {"type": "ping"}, self.now_ms(), "n4").encode())
        yield client.next("pong")
        self.assertEqual(client.state, client.STATE_OPEN)

    @inlineCallbacks
    def test_other_sessions_secret_refused(self):
        """A message signed with another connection's secret is refused."""
        a, secret_a = yield self.signed_client()
        b, secret_b = yield self.signed_client()
        self.assertNotEqual(secret_a, secret_b)
        b.sendMessage(envelope(secret_a, {"type": "ping"}, self.now_ms(), "x").encode())
        self.assertEqual((yield b.next("error"))["code"], "bad_signature")

    @inlineCallbacks
    def test_signed_refresh(self):
        """`auth` refresh is a signed message like any other."""
        user = unique("user")
        client, message = yield self.connected(user)
        secret = message["sessionSecret"]
        refresh = {"type": "auth", "token": make_token(user, lifetime=3600)}
        client.sendMessage(envelope(secret, refresh, self.now_ms(), "r").encode())
        yield client.next("connected")


class _SilentClient(Protocol):
    """Completes the WebSocket handshake, then never reads again."""

    def __init__(self, request):
        self.request = request
        self.buffer = b""
        self.lost = False

    def connectionMade(self):
        self.transport.write(self.request)

    def dataReceived(self, data):
        self.buffer += data
        if b"\r\n\r\n" in self.buffer:
            self.transport.pauseProducing()  # stop reading: the kernel buffers fill up

    def connectionLost(self, reason):
        self.lost = True


class SlowReaderTests(AuthCase):
    overrides = {"ws_max_queue_bytes": 256 * 1024}

    @inlineCallbacks
    def test_client_that_stops_reading_is_closed_and_memory_bounded(self):
        """
        A client that completes the handshake and then never reads, while messages pour
        in: the server's queue never exceeds WS_MAX_QUEUE_BYTES (plus one frame), then the
        connection is closed 4100 and aborted, and its queue freed.
        """
        import socket

        from twisted.internet import endpoints
        from twisted.internet.protocol import Factory
        user = unique("slow")
        key = base64.b64encode(b"0123456789abcdef").decode()
        request = (f"GET /ws?token={make_token(user)} HTTP/1.1\r\nHost: 127.0.0.1:{self.gw.port}\r\n"
                   f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                   "Sec-WebSocket-Version: 13\r\n\r\n").encode()
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.gw.port)
        client = yield endpoint.connect(Factory.forProtocol(lambda: _SilentClient(request)))
        client.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.addCleanup(lambda: client.transport.abortConnection())
        yield wait_for(lambda: self.gw.gateway.registry.count_of(user) == 1,
                       what="the silent client to authenticate")
        conn = self.gw.gateway.registry.connections_of(user)[0].transport  # the adapter
        closed = []
        conn.onClose = lambda *args, _orig=conn.onClose: (closed.append(args), _orig(*args))

        text = jsonutil.dumps_text({"type": "bulk", "data": "z" * (64 * 1024)})
        frame_size = len(text) + 10
        peak = 0
        for i in range(3000):
            if conn.state == conn.STATE_CLOSED or closed:
                break
            self.gw.gateway.registry.dispatch({"t": "users", "to": [user], "msg": text})
            peak = max(peak, conn._queued_bytes)
            if i % 4 == 0:
                yield sleep(0)
        yield wait_for(lambda: bool(closed), what="the slow connection to close")
        self.assertLessEqual(peak, 256 * 1024 + frame_size)
        self.assertGreater(peak, 0)  # the queue was used: the client really stopped reading
        self.assertEqual((conn._queued_bytes, len(conn._queue)), (0, 0))
        self.assertEqual(conn.localCloseCode, 4100)
        self.assertEqual(self.gw.gateway.registry.count_of(user), 0)
        # The close handshake was cut short by the abort; Autobahn's batched timer bucket
        # for its (cancelled) close timeout still has to run out before the test ends.
        yield wait_for(lambda: not any("_BatchedTimer" in repr(call)
                                       for call in reactor.getDelayedCalls()),
                       what="Autobahn's timer bucket to drain")


class CookieSessionTests(AuthCase):
    overrides = {"ws_session_revalidate_ms": 500}

    def new_user(self):
        couch = harness.pouchdb()
        name, password = unique("cookie"), unique("pw")
        couch.create_user(name, password)
        return couch, name, password

    @inlineCallbacks
    def test_session_revalidated_and_closed_when_it_ends(self):
        """
        A cookie connection is revalidated with CouchDB periodically; when CouchDB no longer
        knows the session (here: the user was deleted) it closes with token-expired, 4001.
        """
        couch, name, password = self.new_user()
        cookie = couch.login(name, password)
        client = yield self.gw.connect(headers={"Cookie": "AuthSession=" + cookie})
        yield client.next("connected")
        conn = self.server_side(name)
        yield wait_for(lambda: conn._watch._check_timer is not None
                       and conn._watch._check_timer.active())
        status, body = couch.request("GET", "/_users/org.couchdb.user:" + name)
        rev = json.loads(body)["_rev"]
        status, _ = couch.request("DELETE", f"/_users/org.couchdb.user:{name}?rev={rev}")
        self.assertIn(status, (200, 202))
        self.assertEqual((yield client.next("auth_failed"))["reason"], "token-expired")
        yield self.assertClosed(client, 4001)

    @inlineCallbacks
    def test_stale_forged_cookie_for_real_user(self):
        """A cookie naming a real user with an old timestamp and a made-up MAC: auth-failed."""
        couch, name, _ = self.new_user()
        forged = base64.urlsafe_b64encode(f"{name}:5F5E1000:".encode() + b"\x01" * 20)
        client = yield self.gw.connect(
            headers={"Cookie": "AuthSession=" + forged.decode().rstrip("=")})
        self.assertEqual((yield client.next("auth_failed"))["reason"], "auth-failed")
        yield self.assertClosed(client, 4001)

    @inlineCallbacks
    def test_cookie_from_foreign_origin_refused_403(self):
        """A valid cookie from an Origin not in CORS_ORIGINS: HTTP 403 at the handshake."""
        couch, name, password = self.new_user()
        cookie = couch.login(name, password)
        with self.assertRaises(HandshakeFailed) as caught:
            yield harness.connect(self.gw.port, headers={"Cookie": "AuthSession=" + cookie},
                                  origin="https://app.example.evil")
        self.assertIn("403", str(caught.exception.reason))


class ReviewRegressionTests(AuthCase):
    """Races found in review: each test fails without its fix."""

    @inlineCallbacks
    def test_client_gone_during_async_auth_leaves_nothing(self):
        """
        A client that drops while its cookie is being checked leaves no connection, no
        registry entry and no presence behind (Autobahn opens it after it closed).
        """
        from twisted.internet import endpoints as ep
        from twisted.internet import protocol as ip
        from twisted.internet.defer import Deferred

        from realtime.auth.identity import Identity
        pending, asked = Deferred(), Deferred()

        class SlowSessions:
            def check(self, cookie):
                asked.callback(None)
                return pending

        yield self.rebuild(session_checker=SlowSessions())
        user = unique("gone")
        handshake = (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     b"Sec-WebSocket-Version: 13\r\nCookie: AuthSession=YWJjOmRlZg\r\n\r\n")
        lost = Deferred()

        class Raw(ip.Protocol):
            def connectionMade(self):
                self.transport.write(handshake)

            def connectionLost(self, reason):
                lost.callback(None)

        raw = yield ep.connectProtocol(
            ep.TCP4ClientEndpoint(reactor, "127.0.0.1", self.gw.port), Raw())
        yield harness.with_timeout(asked, what="the server to check the cookie")
        raw.transport.loseConnection()
        yield lost
        # The server's side of the loss has no event a test can wait on: a few reactor
        # turns on loopback are plenty.
        yield harness.sleep(0.2)
        pending.callback(Identity(user_id=user, name=user, method="cookie", cookie="x"))
        yield harness.sleep(0.2)
        self.assertEqual(self.gw.gateway.open_connections, 0)
        self.assertEqual(len(self.gw.gateway.registry), 0)
        self.assertEqual((yield self.gw.gateway.presence.connection_count(user)), 0)

    @inlineCallbacks
    def test_no_publication_from_a_connection_being_closed(self):
        """
        Once the server closes a connection (here: an admin disconnect), messages the client
        sends before it sees the close are not acted on: its publications reach nobody.
        """
        alice, _ = yield self.connected()
        alice.send_json({"type": "subscribe", "topic": "public:room"})
        yield alice.next("subscribed")
        mallory_id = unique("mallory")
        mallory, _ = yield self.connected(mallory_id)
        self.gw.gateway.registry.dispatch(
            {"t": "disconnect", "user": mallory_id, "code": 4003, "reason": "bye"})
        for i in range(3):
            mallory.send_json({"type": "publish", "topic": "public:room", "data": i})
        yield mallory.wait_closed()
        self.gw.gateway.registry.dispatch(
            {"t": "topic", "topic": "public:room", "msg": '{"type":"marker"}'})
        self.assertEqual((yield alice.next())["type"], "marker")
