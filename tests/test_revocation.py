"""
Token revocation: stores (memory, and a real redis-server), the revoker, the registry
event, the authenticator hook and the REST resource (through StubTreq).
"""

import json
import time

import jwt
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial import unittest

from realtime.auth.authenticator import Authenticator
from realtime.auth.identity import AuthFailure, token_id
from realtime.auth.jwt_verifier import JWTVerifier
from realtime.auth.revocation import Revoker, revocation_target
from realtime.auth.stores import MemoryRevocationStore
from realtime.http.resource import JSONResource
from realtime.http.rest import make_api
from realtime.hub.broker import MemoryBroker
from realtime.hub.registry import Registry
from realtime.redis.client import RedisClient, RedisUnavailable
from realtime.redis.stores import RedisRevocationStore
from realtime.redis.url import parse_redis_url
from tests import harness
from tests.fakes import ADMIN_KEY, SECRET, FakeConnection, make_gateway, make_token


class RevocationTargetTests(unittest.TestCase):
    def test_token_body(self):
        """{token}: its jti (or hash) and exp are read without verifying it."""
        token = make_token("alice", jti="j1")
        token_id_, exp = revocation_target({"token": token})
        self.assertEqual(token_id_, "jti:j1")
        self.assertEqual(exp, jwt.decode(token, options={"verify_signature": False})["exp"])
        plain = make_token("alice")
        self.assertEqual(revocation_target({"token": plain})[0], token_id({}, plain))

    def test_jti_body(self):
        """{jti, exp} works without the token."""
        self.assertEqual(revocation_target({"jti": "j2", "exp": 2000000000}),
                         ("jti:j2", 2000000000.0))

    def test_bad_bodies(self):
        """Bodies that name no token, or no usable exp: ValueError (answered 400)."""
        no_exp = jwt.encode({"sub": "a"}, SECRET)
        for body in ([], "x", {}, {"token": ""}, {"token": "garbage"}, {"token": 5},
                     {"token": no_exp}, {"jti": "a"}, {"jti": "", "exp": 1},
                     {"jti": "a", "exp": "soon"}, {"jti": "a", "exp": True},
                     {"jti": "a", "exp": 1e300}, {"jti": "a" * 300, "exp": 1}):
            self.assertRaises(ValueError, revocation_target, body)


class RevokerTests(unittest.TestCase):
    def test_revoke_closes_live_connections_using_the_token(self):
        """Revoking stores the id and closes (auth_failed revoked) only the connections using it."""
        clock = Clock()
        clock.advance(time.time())
        registry = Registry()
        a1 = FakeConnection(None, "alice", connection_id="c1", token_id="jti:t1")
        a2 = FakeConnection(None, "alice", connection_id="c2", token_id="jti:t2")
        b1 = FakeConnection(None, "bob", connection_id="c3", token_id="jti:t1x")
        for conn in (a1, a2, b1):
            registry.add(conn)
        store = MemoryRevocationStore(clock)
        revoker = Revoker(store, MemoryBroker(registry), clock)
        closed = self.successResultOf(revoker.revoke("jti:t1", clock.seconds() + 60))
        self.assertEqual(closed, 1)
        self.assertEqual((a1.failures, a2.failures, b1.failures), (["revoked"], [], []))
        self.assertTrue(self.successResultOf(store.is_revoked("jti:t1")))

    def test_malformed_revoke_event_ignored(self):
        """A revoke event without a string token id is ignored."""
        registry = Registry()
        self.assertEqual(registry.dispatch({"t": "revoke"}), 0)
        self.assertEqual(registry.dispatch({"t": "revoke", "token_id": 5}), 0)


class AuthenticatorRevocationTests(unittest.TestCase):
    def authenticator(self, store):
        return Authenticator(jwt_verifier=JWTVerifier(SECRET, ["HS256"]), revocations=store)

    def test_revoked_token_refused(self):
        """A revoked token: reason `revoked` (4001); another token of the user still works."""
        clock = Clock()
        clock.advance(time.time())
        store = MemoryRevocationStore(clock)
        token = make_token("alice", jti="gone")
        store.revoke("jti:gone", time.time() + 600)
        failure = self.failureResultOf(self.authenticator(store).verify_token(token), AuthFailure)
        self.assertEqual((failure.value.reason, failure.value.close_code), ("revoked", 4001))
        self.successResultOf(self.authenticator(store).verify_token(make_token("alice", jti="ok")))

    def test_store_unreachable_fails_closed(self):
        """A store that cannot answer: `unavailable` (4101), never accepted."""
        class Down:
            def is_revoked(self, token_id):
                d = Deferred()
                d.errback(RedisUnavailable("down"))
                return d

        failure = self.failureResultOf(
            self.authenticator(Down()).verify_token(make_token("alice")), AuthFailure)
        self.assertEqual((failure.value.reason, failure.value.close_code), ("unavailable", 4101))


class RevokeEndpointTests(unittest.TestCase):
    """POST /websocket/tokens/revoke, through the REST API in memory."""

    def make_api(self, revocations=None, **overrides):
        settings = dict(admin_key=ADMIN_KEY, jwt_secret=SECRET, rest_max_body_bytes=16 * 1024)
        settings.update(overrides)
        self.gateway = make_gateway(clock=self.clock, revocations=revocations, **settings)
        self.registry = self.gateway.registry
        self.registry.add(self.conn)
        self.store = self.gateway.revoker.store
        root = JSONResource()
        root.putChild(b"websocket", make_api(self.gateway))
        self.treq = StubTreq(root)

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(time.time())
        self.conn = FakeConnection(None, "alice", connection_id="c1", token_id="jti:live")
        self.make_api()

    def post(self, body, key=ADMIN_KEY, content_type=b"application/json"):
        headers = {b"Content-Type": [content_type]}
        if key is not None:
            headers[b"Authorization"] = [b"Bearer " + key.encode()]
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        d = self.treq.post("http://gw/websocket/tokens/revoke", data=data, headers=headers)
        self.treq.flush()
        response = self.successResultOf(d)
        content = self.successResultOf(response.content())
        return response.code, json.loads(content)

    def test_revoke_by_jti(self):
        """{jti, exp}: 200, stored, and the live connection using it gets `revoked`."""
        code, body = self.post({"jti": "live", "exp": int(time.time()) + 600})
        self.assertEqual(code, 200)
        self.assertEqual((body["revoked"], body["tokenId"], body["closedConnections"]),
                         (True, "jti:live", 1))
        self.assertTrue(body["expiresAt"].endswith("Z"))
        self.assertEqual(self.conn.failures, ["revoked"])
        self.assertTrue(self.successResultOf(self.store.is_revoked("jti:live")))

    def test_revoke_by_token(self):
        """{token}: 200, and the token's id is stored; the token is not echoed."""
        token = make_token("alice")
        code, body = self.post({"token": token})
        self.assertEqual(code, 200)
        self.assertNotIn(token, json.dumps(body))
        self.assertTrue(self.successResultOf(self.store.is_revoked(token_id({}, token))))

    def test_already_expired_is_400(self):
        """
        An exp in the past (beyond the 5 s leeway), negative, or a posted token that has
        expired: 400 already_expired, nothing stored, no connection closed; an exp within
        the leeway is still revoked (such a token is still accepted).
        """
        now = int(time.time())
        for body in ({"jti": "live", "exp": now - 3600}, {"jti": "live", "exp": -5},
                     {"token": make_token("alice", lifetime=-3600, jti="live")}):
            code, answer = self.post(body)
            self.assertEqual((code, answer["error"], answer["field"]),
                             (400, "already_expired", "exp"), body)
            self.assertIn("refused already", answer["message"])
        self.assertFalse(self.successResultOf(self.store.is_revoked("jti:live")))
        self.assertEqual(self.conn.failures, [])
        code, _ = self.post({"jti": "live", "exp": now - 2})
        self.assertEqual(code, 200)

    def test_admin_required(self):
        """No key or a wrong key: 401 and nothing revoked."""
        for key in (None, "wrong", ADMIN_KEY + "x", ""):
            code, body = self.post({"jti": "live", "exp": int(time.time()) + 60}, key=key)
            self.assertEqual((code, body["error"]), (401, "unauthorized"))
        self.assertEqual(self.conn.failures, [])

    def test_no_admin_key_configured_means_admin_api_off(self):
        """With REALTIME_ADMIN_KEY unset the endpoint is off (403), even for an empty bearer."""
        self.make_api(admin_key=None)
        code, body = self.post({"jti": "live", "exp": int(time.time()) + 60}, key="")
        self.assertEqual((code, body["error"]), (403, "admin_disabled"))
        self.assertEqual(self.conn.failures, [])

    def test_bad_requests(self):
        """Not JSON 400, wrong content type 415, too large 413, no exp 400; GET 405."""
        self.assertEqual(self.post(b"{nope")[0], 400)
        self.assertEqual(self.post({"jti": "x"})[0], 400)
        self.assertEqual(self.post({"jti": "x", "exp": 1}, content_type=b"text/plain")[0], 415)
        self.assertEqual(self.post(b'{"jti":"' + b"x" * 20000 + b'","exp":1}')[0], 413)
        d = self.treq.get("http://gw/websocket/tokens/revoke")
        self.treq.flush()
        self.assertEqual(self.successResultOf(d).code, 405)

    def test_store_down_is_503(self):
        """The store cannot be reached: 503 `unavailable`."""
        class Down:
            def revoke(self, token_id, expires_at):
                d = Deferred()
                d.errback(RedisUnavailable("down"))
                return d

        self.make_api(revocations=Down())
        code, body = self.post({"jti": "live", "exp": int(time.time()) + 60})
        self.assertEqual((code, body["error"]), (503, "unavailable"))
        self.assertEqual(self.conn.failures, [])


class RedisDownTests(unittest.TestCase):
    timeout = 30

    @inlineCallbacks
    def test_redis_down_fails_closed(self):
        """Redis not reachable: the revocation check fails at once, and auth answers no."""
        down = harness.RedisServer()  # never started: nothing listens there
        client = RedisClient(reactor, parse_redis_url(down.url), timeout=0.5, name="down")
        client.start()
        self.addCleanup(client.stop)
        store = RedisRevocationStore(client, reactor, "test:")
        started = reactor.seconds()
        with self.assertRaises(RedisUnavailable):
            yield store.is_revoked("jti:x")
        self.assertLess(reactor.seconds() - started, 5)
        authenticator = Authenticator(jwt_verifier=JWTVerifier(SECRET, ["HS256"]),
                                      revocations=store)
        with self.assertRaises(AuthFailure) as caught:
            yield authenticator.verify_token(make_token("alice"))
        self.assertEqual(caught.exception.reason, "unavailable")


class TokenIdTests(unittest.TestCase):
    def test_same_token_written_differently_has_one_id(self):
        """
        A token whose signature is written with extra base64 padding still verifies, so it
        must have the same id: revoking one revokes the other.
        """
        token = make_token("alice")
        padded = token + "="
        verifier = JWTVerifier(SECRET, ["HS256"])
        claims = verifier.decode(padded)  # PyJWT accepts it
        self.assertEqual(token_id(claims, padded), token_id(verifier.decode(token), token))

    def test_different_tokens_have_different_ids(self):
        """Two tokens of one user (different claims) are revoked separately."""
        one, two = make_token("alice", n=1), make_token("alice", n=2)
        self.assertNotEqual(token_id({}, one), token_id({}, two))
