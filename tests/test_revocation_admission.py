"""
With Redis, a handshake's token is checked for revocation by its admission: the presence
script that admits the connection looks the revocation key up in the same round trip
(``Gateway.revocation_at_admission``), instead of an MGET of its own before the 101.  What a
client sees is unchanged: a revoked token gets ``auth_failed`` ``revoked`` and 4001, a store
that cannot answer ``unavailable`` and 4101, and nothing is recorded in presence for them.
Tokens arriving any other way (the ``auth`` message, REST) are still checked by the store.
"""

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from realtime.auth.identity import AuthFailure, Identity
from realtime.redis.client import RedisClient
from realtime.redis.presence import RedisPresence
from realtime.redis.stores import RedisRevocationStore
from realtime.redis.url import parse_redis_url
from tests import harness
from tests.fakes import SECRET, make_token
from tests.harness import GatewayHarness, unique, wait_for
from tests.test_redis_presence import start_presences


class _Conn:
    def __init__(self):
        self.connection_id = unique("conn")


class PresenceScriptTests(unittest.TestCase):
    """RedisPresence.connection_opened with ``revoked_key``, on a real redis-server."""

    timeout = 60

    @inlineCallbacks
    def setUp(self):
        self.redis = harness.redis()
        [self.presence] = yield start_presences(self, self.redis.url, count=1)
        self.client = self.presence._client
        self.store = RedisRevocationStore(self.client, reactor, unique("r") + ":")

    @inlineCallbacks
    def test_revoked_token_refused_and_not_recorded(self):
        yield self.store.revoke("jti:gone", reactor.seconds() + 600)
        key = self.store.admission_key("jti:gone")
        d = self.presence.connection_opened("c1", "alice", 5, revoked_key=key)
        failure = yield self.assertFailure(d, AuthFailure)
        self.assertEqual(failure.reason, "revoked")
        self.assertEqual((yield self.presence.users()), {})
        self.assertEqual(self.presence._counts.count("alice"), 0)

    @inlineCallbacks
    def test_token_not_revoked_admitted(self):
        key = self.store.admission_key("jti:fine")
        self.assertTrue((yield self.presence.connection_opened("c1", "bob", 5, revoked_key=key)))
        self.assertEqual((yield self.presence.users()), {"bob": 1})

    @inlineCallbacks
    def test_batch_mixes_revoked_and_not(self):
        """Opens of one turn go in one script; the revoked one takes no place of the others."""
        yield self.store.revoke("jti:bad", reactor.seconds() + 600)
        opens = [self.presence.connection_opened(f"c{i}", "carol", 2, revoked_key=key)
                 for i, key in enumerate([self.store.admission_key("jti:ok1"),
                                          self.store.admission_key("jti:bad"),
                                          self.store.admission_key("jti:ok2"),
                                          None])]
        first = yield opens[0]
        bad = yield self.assertFailure(opens[1], AuthFailure)
        third = yield opens[2]
        fourth = yield opens[3]
        self.assertEqual((first, bad.reason, third, fourth), (True, "revoked", True, False))
        self.assertEqual((yield self.presence.users()), {"carol": 2})


class PresenceDownTests(unittest.TestCase):
    timeout = 30

    @inlineCallbacks
    def test_unanswered_check_refuses(self):
        """Redis away: an open with a token to check is refused ``unavailable`` (an open
        without one is still admitted from this process's counts, as before)."""
        down = harness.RedisServer()  # never started: nothing listens there
        client = RedisClient(reactor, parse_redis_url(down.url), timeout=0.5, name="down")
        client.start()
        self.addCleanup(client.stop)
        presence = RedisPresence(client, reactor, prefix=unique("p") + ":",
                                 process_id=unique("proc"), ttl=30.0)
        store = RedisRevocationStore(client, reactor)
        d = presence.connection_opened("c1", "dave", 5, revoked_key=store.admission_key("jti:x"))
        failure = yield self.assertFailure(d, AuthFailure)
        self.assertEqual(failure.reason, "unavailable")
        self.assertEqual(presence._counts.count("dave"), 0)
        self.assertTrue((yield presence.connection_opened("c2", "dave", 5)))


class HandshakeTests(unittest.TestCase):
    timeout = 60
    overrides = {}

    @inlineCallbacks
    def setUp(self):
        self.gw = GatewayHarness(feeds=False, jwt_secret=SECRET, redis_url=harness.redis().url,
                                 redis_prefix=unique("rt") + ":", **self.overrides)
        yield self.gw.start()
        self.addCleanup(self.gw.stop)
        self.store = self.gw.gateway.authenticator.revocations
        self.asked = []
        real = self.store.is_revoked
        self.patch(self.store, "is_revoked",
                   lambda token_id: self.asked.append(token_id) or real(token_id))

    def test_checked_at_admission_with_redis(self):
        self.assertTrue(self.gw.gateway.revocation_at_admission)

    @inlineCallbacks
    def test_revoked_token_refused_by_admission(self):
        user = unique("user")
        token = make_token(user, jti=unique("jti"))
        yield self.store.revoke("jti:" + token_claim(token, "jti"), reactor.seconds() + 600)
        client = yield self.gw.connect(query={"token": token})
        self.assertEqual((yield client.next("auth_failed"))["reason"], "revoked")
        code, _ = yield client.wait_closed()
        self.assertEqual(code, 4001)
        self.assertEqual(self.asked, [])  # no lookup of its own: the admission script's
        self.assertEqual((yield self.gw.gateway.presence.connection_count(user)), 0)

    @inlineCallbacks
    def test_valid_token_connected_in_one_round_trip(self):
        user = unique("user")
        client = yield self.gw.connect(query={"token": make_token(user, jti=unique("jti"))})
        yield client.next("connected")
        self.assertEqual(self.asked, [])
        yield wait_for(lambda: self.gw.gateway.registry.connections_of(user), what="registered")
        self.assertEqual((yield self.gw.gateway.presence.connection_count(user)), 1)

    @inlineCallbacks
    def test_what_the_handshake_skipped_is_what_admission_checks(self):
        """The handshake skipped the token's revocation lookup: its admission is asked
        to look up exactly that token's key."""
        user = unique("user")
        jti = unique("jti")
        presence = self.gw.gateway.presence
        keys = []
        real = presence.connection_opened

        def connection_opened(conn_id, user_id, limit, revoked_key=None):
            keys.append(revoked_key)
            return real(conn_id, user_id, limit, revoked_key=revoked_key)
        self.patch(presence, "connection_opened", connection_opened)
        client = yield self.gw.connect(query={"token": make_token(user, jti=jti)})
        yield client.next("connected")
        self.assertEqual(keys, [self.store.admission_key("jti:" + jti)])
        self.assertEqual(self.asked, [])

    @inlineCallbacks
    def test_a_skipped_lookup_is_never_dropped(self):
        """The handshake's choice travels with the identity: were the gateway to stop
        checking revocation at admission between onConnect and onOpen, the open is
        refused (unavailable, the same for a token nobody revoked), not admitted
        unchecked."""
        from realtime.transport.websocket import RealtimeServerProtocol
        presence = self.gw.gateway.presence
        real = RealtimeServerProtocol.onConnect

        def on_connect(protocol, request):
            answer = real(protocol, request)
            self.patch(presence, "checks_revocation_keys", False)
            return answer
        self.patch(RealtimeServerProtocol, "onConnect", on_connect)
        for revoked in (True, False):
            user = unique("user")
            token = make_token(user, jti=unique("jti"))
            if revoked:
                yield self.store.revoke("jti:" + token_claim(token, "jti"),
                                        reactor.seconds() + 600)
            client = yield self.gw.connect(query={"token": token})
            message = yield client.next()
            self.assertEqual((message["type"], message["reason"]),
                             ("auth_failed", "unavailable"))
            yield client.wait_closed()
            self.flushLoggedErrors(ValueError)
            self.assertFalse(self.gw.gateway.registry.connections_of(user))
            self.patch(presence, "checks_revocation_keys", True)

    @inlineCallbacks
    def test_auth_message_still_checked_by_the_store(self):
        user = unique("user")
        token = make_token(user, jti=unique("jti"))
        yield self.store.revoke("jti:" + token_claim(token, "jti"), reactor.seconds() + 600)
        client = yield self.gw.connect()
        yield client.next("connection_established")
        client.send_json({"type": "auth", "token": token})
        self.assertEqual((yield client.next("auth_failed"))["reason"], "revoked")
        self.assertEqual(self.asked, ["jti:" + token_claim(token, "jti")])


class SingleSessionHandshakeTests(HandshakeTests):
    """Single-session admission (no presence script of that shape): the store is asked
    first, then the session is numbered; a revoked token is still refused."""

    overrides = {"ws_single_session": True}

    @inlineCallbacks
    def test_revoked_token_refused_by_admission(self):
        user = unique("user")
        token = make_token(user, jti=unique("jti"))
        yield self.store.revoke("jti:" + token_claim(token, "jti"), reactor.seconds() + 600)
        client = yield self.gw.connect(query={"token": token})
        self.assertEqual((yield client.next("auth_failed"))["reason"], "revoked")
        code, _ = yield client.wait_closed()
        self.assertEqual(code, 4001)
        self.assertEqual(len(self.asked), 1)

    @inlineCallbacks
    def test_valid_token_connected_in_one_round_trip(self):
        user = unique("user")
        client = yield self.gw.connect(query={"token": make_token(user, jti=unique("jti"))})
        yield client.next("connected")
        self.assertEqual(len(self.asked), 1)

    @inlineCallbacks
    def test_what_the_handshake_skipped_is_what_admission_checks(self):
        """The store is asked for exactly that token, before the session is numbered."""
        user, jti = unique("user"), unique("jti")
        client = yield self.gw.connect(query={"token": make_token(user, jti=jti)})
        yield client.next("connected")
        self.assertEqual(self.asked, ["jti:" + jti])


class WithoutSupportTests(unittest.TestCase):
    def test_pending_check_needs_a_presence_that_makes_it(self):
        """One process (no Redis): admission never takes an unchecked token."""
        from tests.test_protocol_memory import make_listener
        gateway, _ = make_listener()
        self.assertFalse(gateway.revocation_at_admission)
        with self.assertRaises(ValueError):
            gateway.admit_now(_Conn(), Identity("u", "u", token_id="jti:x"),
                              revocation_pending=True)


def token_claim(token, name):
    import jwt
    return jwt.decode(token, options={"verify_signature": False})[name]
