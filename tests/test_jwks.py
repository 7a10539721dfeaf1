"""
JWKS: keys fetched with treq (StubTreq in memory, and a real in-process HTTP server on
loopback), cached, refetched on an unknown kid at a bounded rate.
"""

import json

import jwt
import treq.client
from treq.testing import StubTreq
from twisted.internet import endpoints, reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Site

from realtime import config as config_module
from realtime.assembly import make_jwt_verifier
from realtime.auth.identity import AuthFailure
from realtime.auth.jwks import JWKSKeySource, keys_from_jwks
from realtime.auth.jwt_verifier import JWTVerifier
from realtime.dev.embedded import free_port
from tests import keys
from tests.fakes import claims
from tests.keys import raw_token

URL = "https://id.example/.well-known/jwks.json"


class JWKSResource(Resource):
    """Serves a JWKS document; counts requests; can be made to fail."""

    isLeaf = True

    def __init__(self, document):
        super().__init__()
        self.document = document
        self.requests = 0
        self.status = 200
        self.body = None

    def render_GET(self, request):
        self.requests += 1
        request.setResponseCode(self.status)
        request.setHeader(b"Content-Type", b"application/json")
        if self.body is not None:
            return self.body
        return json.dumps(self.document).encode()


def rs_token(sub="alice", kid="k1", key=keys.RSA_KEY, alg="RS256", **extra):
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(claims(sub, **extra), key, algorithm=alg, headers=headers)


class JWKSTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.resource = JWKSResource({"keys": [keys.jwk(keys.RSA_KEY, "k1", "RS256"),
                                               keys.jwk(keys.EC_KEY, "e1", "ES256")]})
        self.stub = StubTreq(self.resource)
        self.source = JWKSKeySource(self.stub, URL, self.clock)
        self.verifier = JWTVerifier(None, ["RS256", "ES256", "EdDSA"], key_source=self.source)

    def verify(self, token):
        d = self.verifier.verify(token)
        self.stub.flush()
        return d

    def assertRefused(self, token, reason):
        failure = self.failureResultOf(self.verify(token), AuthFailure)
        self.assertEqual(failure.value.reason, reason)
        return failure.value

    def test_rs256_and_es256_verified_from_jwks(self):
        """Tokens signed by keys of the JWKS verify; the set is fetched once and cached."""
        identity = self.successResultOf(self.verify(rs_token("alice")))
        self.assertEqual(identity.user_id, "alice")
        es = jwt.encode(claims("bob"), keys.EC_KEY, algorithm="ES256", headers={"kid": "e1"})
        self.assertEqual(self.successResultOf(self.verify(es)).user_id, "bob")
        self.assertEqual(self.resource.requests, 1)

    def test_eddsa_from_jwks(self):
        """An Ed25519 key (OKP) in the JWKS verifies EdDSA tokens."""
        self.resource.document["keys"].append(keys.jwk(keys.ED_KEY, "ed1"))
        token = jwt.encode(claims("eve"), keys.ED_KEY, algorithm="EdDSA", headers={"kid": "ed1"})
        self.assertEqual(self.successResultOf(self.verify(token)).user_id, "eve")

    def test_unknown_kid_refetches_at_bounded_rate(self):
        """
        An unknown kid triggers a refetch, at most once per 30 s: a spray of random kids
        costs one request per 30 s, and each such token is refused `auth-failed`.
        """
        self.successResultOf(self.verify(rs_token(kid="k1")))
        self.clock.advance(31)
        self.assertRefused(rs_token(kid="nope-1"), "auth-failed")
        self.assertEqual(self.resource.requests, 2)
        for i in range(50):
            self.assertRefused(rs_token(kid=f"nope-{i + 2}"), "auth-failed")
        self.assertEqual(self.resource.requests, 2)
        self.clock.advance(30)
        self.assertRefused(rs_token(kid="nope-x"), "auth-failed")
        self.assertEqual(self.resource.requests, 3)

    def test_key_rotation_picked_up(self):
        """A key added to the JWKS after the first fetch is found by refetching on its kid."""
        self.successResultOf(self.verify(rs_token(kid="k1")))
        self.resource.document["keys"].append(keys.jwk(keys.RSA_KEY_2, "k2", "RS256"))
        self.clock.advance(30)
        token = rs_token("carol", kid="k2", key=keys.RSA_KEY_2)
        self.assertEqual(self.successResultOf(self.verify(token)).user_id, "carol")
        self.assertEqual(self.resource.requests, 2)

    def test_concurrent_lookups_share_one_fetch(self):
        """Verifications waiting for the same fetch make one request."""
        ds = [self.verifier.verify(rs_token(f"u{i}")) for i in range(5)]
        self.stub.flush()
        self.assertEqual([self.successResultOf(d).user_id for d in ds],
                         [f"u{i}" for i in range(5)])
        self.assertEqual(self.resource.requests, 1)

    def test_jwks_unreachable_and_key_unknown_is_unavailable(self):
        """JWKS answering 500 before any key is known: `unavailable` (close 4101)."""
        self.resource.status = 500
        failure = self.assertRefused(rs_token(), "unavailable")
        self.assertEqual(failure.close_code, 4101)

    def test_jwks_recovers(self):
        """After an outage, the next allowed refetch (30 s later) loads the keys."""
        self.resource.status = 503
        self.assertRefused(rs_token(), "unavailable")
        self.resource.status = 200
        self.assertRefused(rs_token(), "unavailable")  # within 30 s: no new request
        self.assertEqual(self.resource.requests, 1)
        self.clock.advance(30)
        self.successResultOf(self.verify(rs_token()))
        self.assertEqual(self.resource.requests, 2)

    def test_cached_keys_survive_an_outage(self):
        """Known keys keep working while the JWKS is down; an unknown kid is `unavailable`."""
        self.successResultOf(self.verify(rs_token(kid="k1")))
        self.resource.status = 500
        self.clock.advance(601)  # stale: refreshed on use, and the refresh fails
        self.successResultOf(self.verify(rs_token(kid="k1")))
        self.clock.advance(31)
        self.assertRefused(rs_token(kid="k9"), "unavailable")

    def test_not_a_jwks_is_unavailable(self):
        """A body that is not a JWKS (HTML, `{}`, no usable key) counts as unreachable."""
        for body in (b"<html>", b"{}", b'{"keys": [{"kty": "nope"}]}', b'{"keys": "x"}'):
            self.setUp()
            self.resource.body = body
            self.assertRefused(rs_token(), "unavailable")

    def test_odd_kid_values_refused_without_fetch(self):
        """A kid that is not a short printable string is refused before any request."""
        for kid in (123, "", "x" * 1000, "a\x00b", ["k1"], {"k": 1}, True):
            token = raw_token({"alg": "RS256", "kid": kid}, claims("a"),
                              lambda data: b"sig")
            self.assertRefused(token, "auth-failed")
        self.assertEqual(self.resource.requests, 0)

    def test_kid_of_another_key_type_refused(self):
        """An RS256 token naming the EC key's kid is refused (the key's algorithm rules)."""
        self.assertRefused(rs_token(kid="e1"), "auth-failed")

    def test_hmac_and_none_refused_without_fetch(self):
        """HS256 (algorithm confusion) and `none` are refused before any key lookup."""
        pem = keys.public_pem(keys.RSA_KEY)
        confused = raw_token({"alg": "HS256", "kid": "k1"}, claims("admin"), keys.hmac_signer(pem))
        self.assertRefused(confused, "auth-failed")
        self.assertRefused(raw_token({"alg": "none", "kid": "k1"}, claims("admin")), "auth-failed")
        self.assertEqual(self.resource.requests, 0)

    def test_no_kid_with_single_key(self):
        """A token without kid is accepted when the JWKS holds exactly one key, else refused."""
        self.assertRefused(rs_token(kid=None), "auth-failed")  # two keys
        self.setUp()
        self.resource.document = {"keys": [keys.jwk(keys.RSA_KEY, "only", "RS256")]}
        self.successResultOf(self.verify(rs_token(kid=None)))

    def test_expired_token_from_jwks(self):
        """An expired token with a good key: `token-expired`."""
        self.assertRefused(rs_token(lifetime=-60), "token-expired")

    def test_encryption_keys_skipped(self):
        """A key marked `use: enc` is not used to verify signatures."""
        enc = keys.jwk(keys.RSA_KEY, "k1", "RS256")
        enc["use"] = "enc"
        self.assertRaises(ValueError, keys_from_jwks, {"keys": [enc]})


class LoopbackJWKSTests(unittest.TestCase):
    """A real HTTP server on loopback and a real treq client."""

    @inlineCallbacks
    def setUp(self):
        self.resource = JWKSResource({"keys": [keys.jwk(keys.RSA_KEY, "k1", "RS256")]})
        self.port = yield endpoints.TCP4ServerEndpoint(
            reactor, 0, interface="127.0.0.1").listen(Site(self.resource))
        self.addCleanup(self.port.stopListening)
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = treq.client.HTTPClient(Agent(reactor, pool=self.pool))

    @inlineCallbacks
    def test_service_wires_jwks_url(self):
        """JWT_JWKS_URL in the config gives a verifier that fetches the JWKS over HTTP."""
        url = f"http://127.0.0.1:{self.port.getHost().port}/jwks.json"
        config = config_module.defaults(jwt_jwks_url=url)
        verifier = make_jwt_verifier(config, reactor, self.http)
        self.assertEqual(verifier.algorithms, ["RS256", "ES256"])
        identity = yield verifier.verify(rs_token("dave"))
        self.assertEqual(identity.user_id, "dave")
        self.assertEqual(self.resource.requests, 1)

    @inlineCallbacks
    def test_connection_refused_is_unavailable(self):
        """A JWKS URL where nothing listens: `unavailable`."""
        url = f"http://127.0.0.1:{free_port()}/jwks.json"
        verifier = JWTVerifier(None, ["RS256"], key_source=JWKSKeySource(self.http, url, reactor))
        with self.assertRaises(AuthFailure) as caught:
            yield verifier.verify(rs_token())
        self.assertEqual(caught.exception.reason, "unavailable")
