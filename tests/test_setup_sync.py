"""
Connection setup answered at once: a JWT of the static key, with stores that answer at once
(one process, no Redis), goes from the handshake's first line to ``connected`` without a
Deferred of ours (Autobahn makes its two ``is_open``/``is_closed`` futures per connection);
every check is still made (signature, expiry, revocation, the per-user limit), a refusal is
still logged, and a store or key that must be asked still gets its Deferred path.
"""

import traceback

import jwt
from twisted.internet import defer
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from realtime.auth.authenticator import Authenticator
from realtime.auth.identity import AuthFailure, Identity
from realtime.auth.jwt_verifier import JWTVerifier
from realtime.auth.stores import MemoryRevocationStore
from realtime.hub.gateway import ADMITTED, TOO_MANY_CONNECTIONS
from tests.fakes import SECRET, make_token
from tests.test_protocol_memory import make_listener, open_connection


class _AskedStore:
    """A revocation store that must be asked (as Redis's): no ``revoked_now``."""

    def __init__(self, revoked=()):
        self.revoked = set(revoked)
        self.asked = []

    def is_revoked(self, token_id):
        self.asked.append(token_id)
        return succeed(token_id in self.revoked)


def token_of(claims=None):
    return jwt.encode({"sub": "alice", "exp": 4_000_000_000, **(claims or {})}, SECRET,
                      algorithm="HS256")


class AuthenticatorNowTests(unittest.TestCase):
    def authenticator(self, revocations=None):
        return Authenticator(jwt_verifier=JWTVerifier(SECRET, ["HS256"]),
                             revocations=revocations)

    def test_static_key_token_answered_at_once(self):
        store = MemoryRevocationStore(Clock())
        identity = self.authenticator(store).authenticate_now({}, {"token": [token_of()]}, None)
        self.assertIsInstance(identity, Identity)
        self.assertEqual(identity.user_id, "alice")

    def test_revoked_token_refused_at_once_and_logged(self):
        store = MemoryRevocationStore(Clock())
        token = token_of({"jti": "t1"})
        store.revoke("jti:t1", 4_000_000_000)
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        with self.assertRaises(AuthFailure) as raised:
            self.authenticator(store).authenticate_now({}, {"token": [token]}, None)
        self.assertEqual(raised.exception.reason, "revoked")
        lines = [e for e in events if "JWT refused" in e.get("log_format", "")]
        self.assertEqual([e["reason"] for e in lines], ["revoked"])
        self.assertNotIn(token, repr(lines))

    def test_bad_signature_refused_at_once(self):
        token = jwt.encode({"sub": "a", "exp": 4_000_000_000}, SECRET + "x", algorithm="HS256")
        with self.assertRaises(AuthFailure) as raised:
            self.authenticator().authenticate_now({}, {"token": [token]}, None)
        self.assertIn("bad signature", raised.exception.detail)

    def test_store_that_must_be_asked_gives_a_deferred(self):
        store = _AskedStore(revoked={"jti:t2"})
        answer = self.authenticator(store).authenticate_now(
            {}, {"token": [token_of({"jti": "t2"})]}, None)
        self.assertIsInstance(answer, Deferred)
        self.assertEqual(self.failureResultOf(answer, AuthFailure).value.reason, "revoked")
        self.assertEqual(store.asked, ["jti:t2"])

    def test_verifier_that_fetches_keys_gives_a_deferred(self):
        """A verifier that is not synchronous (JWKS) is asked through verify()."""
        class Fetching:
            def verify(self, token):
                return succeed(Identity("bob", "bob"))

        authenticator = Authenticator(jwt_verifier=Fetching())
        answer = authenticator.authenticate_now({}, {"token": ["x.y.z"]}, None)
        self.assertIsInstance(answer, Deferred)
        self.assertEqual(self.successResultOf(answer).user_id, "bob")

    def test_deferred_api_unchanged(self):
        """authenticate() and verify_token() still give Deferreds, for every caller."""
        authenticator = self.authenticator()
        self.assertEqual(self.successResultOf(
            authenticator.authenticate({}, {"token": [token_of()]}, None)).user_id, "alice")
        self.assertIsNone(self.successResultOf(authenticator.authenticate({}, {}, None)))
        self.failureResultOf(authenticator.verify_token("garbage"), AuthFailure)


class AdmitNowTests(unittest.TestCase):
    def test_local_presence_answers_at_once(self):
        gateway, _ = make_listener()
        limit = gateway.config.ws_max_connections_per_user

        class Conn:
            def __init__(self, n):
                self.connection_id = f"c{n}"

        verdicts = [gateway.admit_now(Conn(n), Identity("u", "u")) for n in range(limit + 1)]
        self.assertEqual(verdicts, [ADMITTED] * limit + [TOO_MANY_CONNECTIONS])


class HandshakeMakesNoDeferredTests(unittest.TestCase):
    def test_jwt_connection_setup_makes_no_deferred_of_ours(self):
        """From the first byte to ``connected``, only Autobahn's own futures are made."""
        _, listener = make_listener()
        open_connection(self, listener=listener)  # first use: anything made once
        made = []
        real_init = Deferred.__init__

        def counting(deferred, *args, **kwargs):
            made.append(traceback.extract_stack(limit=4)[-2])
            real_init(deferred, *args, **kwargs)

        self.patch(defer.Deferred, "__init__", counting)
        conn, transport = open_connection(self, listener=listener)
        self.patch(defer.Deferred, "__init__", real_init)
        self.assertIn(b'"type":"connected"', transport.value())
        ours = [frame for frame in made if "txaio" not in frame.filename]
        self.assertEqual(ours, [])
        self.assertLessEqual(len(made), 2)

    def test_refused_token_still_refused_at_setup(self):
        _, listener = make_listener()
        conn, transport = open_connection(self, listener=listener, claims={"exp": 1})
        self.assertIn(b'"type":"auth_failed"', transport.value())
        self.assertIn(b'"token-expired"', transport.value())

    def test_wrong_key_refused_at_setup(self):
        _, listener = make_listener()
        conn, transport = open_connection(
            self, listener=listener, path="/ws?token=" + make_token("a", secret="wrong-" * 8))
        self.assertIn(b'"type":"auth_failed"', transport.value())
