"""
A refused JWT can be debugged from the server log: one info line per refusal, with the
reason in words and the token named by its jti or a hash prefix, never the token itself.
"""

import jwt
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial import unittest

from realtime.auth.authenticator import Authenticator
from realtime.auth.identity import token_id
from realtime.auth.jwks import JWKSKeySource
from realtime.auth.jwt_verifier import JWTVerifier, token_reference
from tests import keys
from tests.fakes import SECRET, claims, make_token
from tests.keys import raw_token
from tests.test_jwks import URL, JWKSResource, rs_token


class RevokedStore:
    def is_revoked(self, token_id):
        return True


class RefusalLogTests(unittest.TestCase):
    def setUp(self):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def refused_line(self, authenticator, token, reason="auth-failed"):
        failure = self.failureResultOf(authenticator.verify_token(token))
        self.assertEqual(failure.value.reason, reason)
        lines = [(e["log_level"], formatEvent(e)) for e in self.events
                 if e.get("log_namespace", "").startswith("realtime.auth")]
        self.assertEqual(len(lines), 1, lines)
        level, text = lines[0]
        self.assertEqual(level, LogLevel.info)
        self.assertNotIn(token, text)
        if token.count(".") == 2:
            for part in token.split("."):
                if len(part) > 8:
                    self.assertNotIn(part, text)
        self.events.clear()
        return text

    def test_each_reason_is_named(self):
        """Missing exp, bad signature, wrong algorithm, expired, aud, iss: each in words."""
        plain = Authenticator(JWTVerifier(SECRET, ["HS256"]))
        strict = Authenticator(JWTVerifier(SECRET, ["HS256"], audience="app", issuer="me"))
        cases = [
            (plain, jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256"),
             "auth-failed", "missing required claim 'exp'"),
            (plain, make_token(secret="another-secret-0123456789abcdef0123"), "auth-failed",
             "bad signature"),
            (plain, make_token(algorithm="HS512"), "auth-failed",
             "algorithm 'HS512' not allowed (allowed: HS256)"),
            (plain, make_token(lifetime=-3600), "token-expired", "token expired"),
            (strict, make_token(aud="other", iss="me"), "auth-failed", "wrong audience"),
            (strict, make_token(aud="app", iss="them"), "auth-failed", "wrong issuer"),
            (plain, "not-a-jwt", "auth-failed", "malformed token"),
            (plain, raw_token({"alg": "none"}, claims()), "auth-failed",
             "algorithm 'none' not allowed"),
        ]
        for authenticator, token, reason, words in cases:
            text = self.refused_line(authenticator, token, reason)
            self.assertIn(f"JWT refused ({reason})", text)
            self.assertIn(words, text)

    def test_unknown_kid_is_named(self):
        """A token whose kid is not in the JWKS: the line says so, naming the kid."""
        stub = StubTreq(JWKSResource({"keys": [keys.jwk(keys.RSA_KEY, "k1", "RS256")]}))
        source = JWKSKeySource(stub, URL, Clock())
        authenticator = Authenticator(JWTVerifier(None, ["RS256"], key_source=source))
        token = rs_token(kid="nope-7")
        d = authenticator.verify_token(token)
        stub.flush()
        self.failureResultOf(d)
        lines = [formatEvent(e) for e in self.events
                 if formatEvent(e).startswith("JWT refused")]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("JWT refused (auth-failed)", lines[0])
        self.assertIn("unknown kid 'nope-7'", lines[0])
        self.assertNotIn(token.split(".")[2], lines[0])

    def test_token_named_by_jti_or_hash_prefix(self):
        """The line names the token as revocation does: its jti, or its hash's first digits."""
        authenticator = Authenticator(JWTVerifier(SECRET, ["HS256"]))
        with_jti = make_token(lifetime=-3600, jti="abc-123")
        self.assertIn("token jti:abc-123", self.refused_line(authenticator, with_jti,
                                                             "token-expired"))
        without = make_token(secret="another-secret-0123456789abcdef0123")
        prefix = token_id({}, without)[:len("sha256:") + 16]
        self.assertIn(f"token {prefix}", self.refused_line(authenticator, without))
        self.assertEqual(token_reference("x"), "malformed")

    def test_revoked_and_jwt_off(self):
        """A revoked token and a JWT with JWT auth off are logged too."""
        revoking = Authenticator(JWTVerifier(SECRET, ["HS256"]), revocations=RevokedStore())
        self.assertIn("token revoked", self.refused_line(revoking, make_token(jti="r1"),
                                                         "revoked"))
        off = Authenticator(None)
        self.assertIn("JWT auth is off", self.refused_line(off, make_token()))

    def test_a_jti_cannot_forge_log_lines(self):
        """A jti with a newline is escaped: one line stays one line."""
        authenticator = Authenticator(JWTVerifier(SECRET, ["HS256"]))
        text = self.refused_line(authenticator, make_token(lifetime=-3600, jti="a\nFAKE"),
                                 "token-expired")
        self.assertNotIn("\n", text)
        self.assertIn("jti:a\\nFAKE", text)
