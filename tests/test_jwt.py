"""
JWT verification: the bad-input catalogue, each with its exact reaction.
"""

import time

import jwt
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial import unittest

from realtime.auth.identity import AuthFailure, token_id
from realtime.auth.jwt_verifier import JWTVerifier
from tests import keys
from tests.fakes import SECRET, claims, make_token
from tests.keys import raw_token


def hs_verifier(**kwargs):
    return JWTVerifier(SECRET, ["HS256"], **kwargs)


class VerifierCase(unittest.TestCase):
    def assertIdentity(self, verifier, token):
        return self.successResultOf(verifier.verify(token))

    def assertRefused(self, verifier, token, reason="auth-failed"):
        failure = self.failureResultOf(verifier.verify(token), AuthFailure)
        self.assertEqual(failure.value.reason, reason)
        return failure.value


class HMACTokenTests(VerifierCase):
    def test_valid_token_gives_identity(self):
        """A valid HS256 token gives the user from `sub`, roles, and a hashed token id."""
        token = make_token("alice", roles=["member", 7], name="Alice")
        identity = self.assertIdentity(hs_verifier(), token)
        self.assertEqual((identity.user_id, identity.name, identity.roles),
                         ("alice", "Alice", ("member",)))
        self.assertEqual(identity.method, "jwt")
        self.assertTrue(identity.token_id.startswith("sha256:"))
        self.assertNotIn(token, repr(identity))

    def test_jti_is_the_token_id(self):
        """A token with a `jti` is known by it (what revocation by jti uses)."""
        identity = self.assertIdentity(hs_verifier(), make_token("alice", jti="abc-1"))
        self.assertEqual(identity.token_id, "jti:abc-1")

    def test_userid_claim_accepted_when_no_sub(self):
        """With the default user claim, `userId` works when there is no `sub`."""
        token = jwt.encode({"userId": "bob", "exp": int(time.time()) + 60}, SECRET)
        self.assertEqual(self.assertIdentity(hs_verifier(), token).user_id, "bob")

    def test_configured_user_and_roles_claims(self):
        """JWT_USER_CLAIM / JWT_ROLES_CLAIM name the claims read."""
        verifier = hs_verifier(user_claim="uid", roles_claim="perms")
        token = make_token(None, uid="carol", perms=["admin"])
        identity = self.assertIdentity(verifier, token)
        self.assertEqual((identity.user_id, identity.roles), ("carol", ("admin",)))
        self.assertRefused(verifier, make_token("carol"))  # sub is not uid

    def test_alg_none_refused(self):
        """An unsigned token (`alg: none`) is refused."""
        token = raw_token({"alg": "none", "typ": "JWT"}, claims("alice"))
        self.assertRefused(hs_verifier(), token)

    def test_none_cannot_be_allowed(self):
        """`none` in the allow-list is a configuration error."""
        self.assertRaises(ValueError, JWTVerifier, SECRET, ["HS256", "none"])
        self.assertRaises(ValueError, JWTVerifier, SECRET, [])
        self.assertRaises(ValueError, JWTVerifier, SECRET, ["HS999"])

    def test_algorithm_outside_allow_list_refused(self):
        """An HS512 token is refused when only HS256 is allowed."""
        self.assertRefused(hs_verifier(), make_token("alice", algorithm="HS512"))

    def test_hs384_and_hs512_when_allowed(self):
        """HS384 and HS512 work when listed."""
        verifier = JWTVerifier(SECRET, ["HS256", "HS384", "HS512"])
        for alg in ("HS384", "HS512"):
            self.assertEqual(self.assertIdentity(verifier, make_token("a", algorithm=alg)).user_id, "a")

    def test_wrong_secret_refused(self):
        """A token signed with another secret is refused."""
        self.assertRefused(hs_verifier(), make_token("alice", secret="another-secret-0123456789abcdef"))

    def test_tampered_payload_refused(self):
        """Changing the payload of a signed token breaks it."""
        header, payload, signature = make_token("alice").split(".")
        forged = keys.b64url(b'{"sub":"admin","exp":9999999999}')
        self.assertRefused(hs_verifier(), ".".join((header, forged, signature)))

    def test_expired_token(self):
        """An expired token: reason `token-expired`."""
        self.assertRefused(hs_verifier(), make_token("alice", lifetime=-60), "token-expired")

    def test_expired_by_injected_clock(self):
        """The verifier's clock decides too (a token expired by the server's clock)."""
        clock = Clock()
        clock.advance(time.time() + 3600)
        self.assertRefused(hs_verifier(clock=clock), make_token("alice", lifetime=600),
                           "token-expired")

    def test_expiry_within_leeway_accepted(self):
        """A token expired 2 s ago is accepted (5 s clock-skew leeway)."""
        self.assertIdentity(hs_verifier(), make_token("alice", lifetime=-2))

    def test_future_nbf_refused(self):
        """A token not valid before a minute from now is refused."""
        self.assertRefused(hs_verifier(), make_token("alice", nbf=int(time.time()) + 60))

    def test_future_iat_refused(self):
        """A token issued in the future is refused."""
        self.assertRefused(hs_verifier(), make_token("alice", iat=int(time.time()) + 60))

    def test_missing_exp_refused(self):
        """`exp` is required."""
        token = jwt.encode({"sub": "alice"}, SECRET)
        self.assertRefused(hs_verifier(), token)

    def test_non_numeric_exp_refused(self):
        """An `exp` that is not a number is refused."""
        token = raw_token({"alg": "HS256"}, {"sub": "a", "exp": "tomorrow"},
                          keys.hmac_signer(SECRET.encode()))
        self.assertRefused(hs_verifier(), token)

    def test_missing_or_odd_sub_refused(self):
        """No user claim, an empty one, or one that is not a string: refused."""
        verifier = hs_verifier()
        for sub in (None, "", ["alice"], {"id": 1}, True, "x" * 300, 42):
            self.assertRefused(verifier, make_token(sub))

    def test_numeric_userid_becomes_a_string(self):
        """A numeric `userId` (as some seeds issued) is taken as its decimal string."""
        token = jwt.encode({"userId": 42, "exp": int(time.time()) + 60}, SECRET)
        self.assertEqual(self.assertIdentity(hs_verifier(), token).user_id, "42")

    def test_audience_exact(self):
        """With JWT_AUDIENCE=app, `aud` must be app (or a list holding it): no prefix tricks."""
        verifier = hs_verifier(audience="app")
        self.assertIdentity(verifier, make_token("a", aud="app"))
        self.assertIdentity(verifier, make_token("a", aud=["other", "app"]))
        for aud in ("app-evil", "ap", "APP", ["app-evil"], "app ", None):
            self.assertRefused(verifier, make_token("a", aud=aud))

    def test_issuer_exact(self):
        """With JWT_ISSUER set, `iss` must equal it exactly and be present."""
        verifier = hs_verifier(issuer="https://id.example")
        self.assertIdentity(verifier, make_token("a", iss="https://id.example"))
        for iss in ("https://id.example.evil", "https://id.example/", "https://id", None):
            self.assertRefused(verifier, make_token("a", iss=iss))

    def test_garbage_tokens(self):
        """Garbage of every shape is refused with `auth-failed`."""
        verifier = hs_verifier()
        for token in ("", "abc", "a.b.c", "...", "Bearer x", "eyJ.eyJ.", "\x00\x01",
                      "é.é.é", "a" * 20000, None, 12):
            self.assertRefused(verifier, token)

    @settings(max_examples=300, deadline=None)
    @given(st.text(max_size=400))
    def test_any_text_is_refused_never_crashes(self, token):
        """Any text: an AuthFailure, never another exception."""
        self.assertRefused(hs_verifier(), token)

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.binary(max_size=60), min_size=1, max_size=5))
    def test_any_dotted_base64_is_refused(self, parts):
        """Dotted base64url segments (token-shaped garbage): refused, never a crash."""
        token = ".".join(keys.b64url(p) for p in parts)
        self.assertRefused(hs_verifier(), token)

    @settings(max_examples=100, deadline=None)
    @given(st.dictionaries(st.text(max_size=8), st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
        st.text(max_size=10), st.lists(st.integers(), max_size=3)), max_size=6))
    def test_any_signed_claims_give_identity_or_failure(self, payload):
        """Correctly signed but arbitrary claims: an Identity or an AuthFailure, nothing else."""
        token = raw_token({"alg": "HS256", "typ": "JWT"}, payload,
                          keys.hmac_signer(SECRET.encode()))
        d = hs_verifier().verify(token)
        results = []
        d.addBoth(results.append)
        result = results[0]
        if hasattr(result, "check"):
            self.assertTrue(result.check(AuthFailure), result)


class PublicKeyTokenTests(VerifierCase):
    def test_rs256_with_pem(self):
        """RS256 verified with JWT_PUBLIC_KEY."""
        verifier = JWTVerifier(keys.public_pem(keys.RSA_KEY), ["RS256", "ES256"])
        token = jwt.encode(claims("alice"), keys.RSA_KEY, algorithm="RS256")
        self.assertEqual(self.assertIdentity(verifier, token).user_id, "alice")

    def test_es256_and_eddsa_with_pem(self):
        """ES256 and EdDSA verified with their PEM public keys."""
        es = JWTVerifier(keys.public_pem(keys.EC_KEY), ["RS256", "ES256"])
        self.assertIdentity(es, jwt.encode(claims("a"), keys.EC_KEY, algorithm="ES256"))
        ed = JWTVerifier(keys.public_pem(keys.ED_KEY), ["EdDSA"])
        self.assertIdentity(ed, jwt.encode(claims("a"), keys.ED_KEY, algorithm="EdDSA"))

    def test_signed_by_another_key_refused(self):
        """An RS256 token from another private key is refused."""
        verifier = JWTVerifier(keys.public_pem(keys.RSA_KEY), ["RS256"])
        self.assertRefused(verifier, jwt.encode(claims("a"), keys.RSA_KEY_2, algorithm="RS256"))

    def test_algorithm_confusion_refused(self):
        """
        HS256 signed with the RSA public key as the HMAC secret (algorithm confusion) is
        refused with the default allow-list, and even if HS256 were wrongly allowed.
        """
        pem = keys.public_pem(keys.RSA_KEY)
        token = raw_token({"alg": "HS256", "typ": "JWT"}, claims("admin"), keys.hmac_signer(pem))
        self.assertRefused(JWTVerifier(pem, ["RS256", "ES256"]), token)
        self.assertRefused(JWTVerifier(pem, ["RS256", "HS256"]), token)

    def test_alg_none_refused_with_public_key(self):
        """`alg: none` with a public-key verifier is refused."""
        verifier = JWTVerifier(keys.public_pem(keys.RSA_KEY), ["RS256"])
        self.assertRefused(verifier, raw_token({"alg": "none"}, claims("admin")))


class TokenIdTests(unittest.TestCase):
    def test_token_id_never_contains_the_token(self):
        """Without jti the id is a SHA-256 of the token, not the token."""
        token = make_token("alice")
        self.assertNotIn(token, token_id({}, token))
        self.assertEqual(token_id({"jti": ""}, token), token_id({}, token))
