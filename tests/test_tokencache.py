"""
The per-token cache and the prepared HMAC key (realtime.auth.tokencache): a token verified
once is not verified again until its expiry, yet an expired or revoked token is refused
even when cached, a token that differs in one character is verified in full, failures are
not cached, and the cache is bounded.
"""

import time
from unittest import mock

import jwt
from jwt.algorithms import HMACAlgorithm
from twisted.internet.task import Clock
from twisted.trial import unittest

from realtime.auth import tokencache
from realtime.auth.authenticator import Authenticator
from realtime.auth.identity import JWT_LEEWAY_SECONDS, AuthFailure
from realtime.auth.jwt_verifier import JWTVerifier
from realtime.auth.stores import MemoryRevocationStore
from tests.fakes import SECRET, make_token


def wall_clock():
    clock = Clock()
    clock.advance(time.time())  # PyJWT checks exp against the wall clock
    return clock


class CacheTests(unittest.TestCase):
    def setUp(self):
        self.clock = wall_clock()
        self.verifier = JWTVerifier(SECRET, ["HS256"], clock=self.clock)
        self.decodes = 0
        original = self.verifier.decode

        def counting(*args, **kwargs):
            self.decodes += 1
            return original(*args, **kwargs)

        self.verifier.decode = counting

    def verify(self, token):
        return self.successResultOf(self.verifier.verify(token))

    def refused(self, token):
        return self.failureResultOf(self.verifier.verify(token), AuthFailure).value

    def test_second_use_is_not_verified_again(self):
        """The same token twice: one verification, the same identity."""
        token = make_token("alice")
        first = self.verify(token)
        second = self.verify(token)
        self.assertIs(first, second)
        self.assertEqual(self.decodes, 1)

    def test_expired_token_refused_even_when_cached(self):
        """Past exp + leeway a cached token is refused `token-expired`, and forgotten."""
        exp = int(self.clock.seconds()) + 30
        token = make_token("alice", exp=exp)
        self.verify(token)
        self.clock.advance(exp + JWT_LEEWAY_SECONDS - self.clock.seconds() - 0.5)
        self.verify(token)  # still within the leeway
        self.assertEqual(self.decodes, 1)
        self.clock.advance(1)
        self.assertEqual(self.refused(token).reason, "token-expired")
        self.assertEqual(len(self.verifier._cache), 0)

    def test_one_character_differs_is_another_token(self):
        """A token with a changed signature is verified in full, and refused."""
        token = make_token("alice")
        self.verify(token)
        head, payload, signature = token.split(".")
        forged = ".".join([head, payload, ("A" if signature[0] != "A" else "B") + signature[1:]])
        self.assertEqual(self.refused(forged).reason, "auth-failed")
        self.assertEqual(self.decodes, 2)

    def test_failures_are_not_cached(self):
        """A refused token is checked again each time (and refused again)."""
        token = make_token("alice", secret="another-secret-0123456789abcdef0123")
        self.refused(token)
        self.refused(token)
        self.assertEqual(self.decodes, 2)
        self.assertEqual(len(self.verifier._cache), 0)

    def test_bounded(self):
        """Past max_entries the oldest entry goes."""
        verifier = JWTVerifier(SECRET, ["HS256"], clock=self.clock, cache_size=3)
        tokens = [make_token(f"user-{i}") for i in range(5)]
        for token in tokens:
            self.successResultOf(verifier.verify(token))
        self.assertEqual(len(verifier._cache), 3)
        self.assertIsNone(verifier._cache.get(tokens[0], self.clock.seconds())[0])
        self.assertIsNotNone(verifier._cache.get(tokens[4], self.clock.seconds())[0])

    def test_off(self):
        """cache_size=0: every use is verified."""
        verifier = JWTVerifier(SECRET, ["HS256"], cache_size=0)
        self.assertIsNone(verifier._cache)

    def test_jwks_tokens_not_cached(self):
        """Tokens verified with a JWKS key source are not cached (keys can be rotated away)."""
        verifier = JWTVerifier(None, ["RS256"], key_source=object())
        self.assertIsNone(verifier._cache)


class RevokedWhileCachedTests(unittest.TestCase):
    def test_revoked_token_refused_even_when_cached(self):
        """The authenticator asks the revocation store for every use, cached or not."""
        clock = wall_clock()
        store = MemoryRevocationStore(clock)
        verifier = JWTVerifier(SECRET, ["HS256"], clock=clock)
        authenticator = Authenticator(jwt_verifier=verifier, revocations=store)
        token = make_token("alice")
        identity = self.successResultOf(authenticator.verify_token(token))
        self.assertEqual(len(verifier._cache), 1)
        self.successResultOf(store.revoke(identity.token_id, identity.expires_at + 10))
        failure = self.failureResultOf(authenticator.verify_token(token), AuthFailure)
        self.assertEqual(failure.value.reason, "revoked")


class PreparedKeyTests(unittest.TestCase):
    def test_secret_prepared_once(self):
        """Verifying tokens does not run PyJWT's checks of the configured secret again."""
        verifier = JWTVerifier(SECRET, ["HS256", "HS384", "HS512"], cache_size=0)
        for name in ("HS256", "HS384", "HS512"):
            self.assertTrue(tokencache.is_prepared(verifier._decoder, name), name)
        tokens = [make_token("alice", algorithm=a) for a in ("HS256", "HS384", "HS512")]
        with mock.patch.object(HMACAlgorithm, "prepare_key",
                               side_effect=AssertionError("prepared again")):
            for token in tokens:
                self.successResultOf(verifier.verify(token))

    def test_other_key_checked_in_full(self):
        """The prepared algorithm runs every check for any key but the configured one."""
        decoder = tokencache.prepared_decoder(SECRET, ["HS256"])
        pem = b"-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n"
        token = jwt.encode({"sub": "a", "exp": int(time.time()) + 60}, SECRET,
                           algorithm="HS256")
        self.assertRaises(jwt.InvalidKeyError, decoder.decode, token, pem,
                          algorithms=["HS256"])

    def test_pem_secret_still_refused(self):
        """A PEM given as the HMAC secret is not prepared, and refuses every token."""
        pem = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n"
        verifier = JWTVerifier(pem, ["HS256"])
        self.assertFalse(tokencache.is_prepared(verifier._decoder, "HS256"))
        token = jwt.encode({"sub": "a", "exp": int(time.time()) + 60}, "x" * 32,
                           algorithm="HS256")
        failure = self.failureResultOf(verifier.verify(token), AuthFailure)
        self.assertEqual(failure.value.reason, "auth-failed")
