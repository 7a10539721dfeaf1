"""
The HMAC fast path (``realtime.auth.hs_fastpath``) against PyJWT: it accepts only what the
full verification (``JWTVerifier.header`` then PyJWT) accepts, with the same claims, on
generated and mutated tokens; and it does accept the ordinary token, so connection setup
does not go through PyJWT for it.

The clock is fixed for both (PyJWT reads ``datetime.now``; it is patched here), so claims
at the edge of the leeway are compared at the same instant.
"""

import base64
import collections
import datetime
import hashlib
import hmac
import json

import jwt
import jwt.api_jwt
from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial import unittest

from realtime.auth.hs_fastpath import HMACFastPath
from realtime.auth.identity import AuthFailure
from realtime.auth.jwt_verifier import JWTVerifier
from tests.fakes import SECRET

NOW = 1_800_000_000.25
LEEWAY = 5.0


class _FrozenDatetime(datetime.datetime):
    @classmethod
    def now(cls, tz=None):
        return datetime.datetime.fromtimestamp(NOW, tz)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def sign(header, payload, key=SECRET, hash_alg=hashlib.sha256, raw=False) -> str:
    head = header if raw else b64(json.dumps(header).encode())
    body = payload if raw else b64(json.dumps(payload).encode())
    signing_input = f"{head}.{body}"
    mac = hmac.new(key.encode(), signing_input.encode(), hash_alg).digest()
    return f"{signing_input}.{b64(mac)}"


CONFIGS = {
    "plain": {},
    "audience": {"audience": "app"},
    "issuer": {"issuer": "https://issuer.example"},
    "both": {"audience": "app", "issuer": "https://issuer.example"},
}
ALGORITHMS = (["HS256"], ["HS256", "HS384", "HS512"], ["HS512"])


def verifiers(config, algorithms):
    """(fast path, the verification without it) for one configuration."""
    fast = HMACFastPath(SECRET, algorithms, leeway=LEEWAY, now=lambda: NOW, **config)
    return fast, verifier(config, algorithms, fast=None)


def verifier(config, algorithms, fast):
    """A JWTVerifier at NOW, with its fast path (``fast=True``) or none (``None``)."""
    clock = Clock()
    clock.advance(NOW)
    result = JWTVerifier(SECRET, algorithms, clock=clock, leeway=LEEWAY, cache_size=0, **config)
    if fast is None:
        result._fast = None  # header() and PyJWT only, as before the fast path
    else:
        result._fast = HMACFastPath(SECRET, algorithms, leeway=LEEWAY, now=lambda: NOW,
                                    **config)
    return result


def full_result(full, token):
    """What header() and PyJWT make of the token (the claims), or None when refused."""
    try:
        return full._pyjwt_decode(token, SECRET)
    except AuthFailure:
        return None


def outcome(verifier, token):
    """What the whole verifier answers: the claims, or the refusal's reason and detail."""
    try:
        return verifier.decode(token)
    except AuthFailure as failure:
        return failure.reason, failure.detail


numbers = st.one_of(
    st.sampled_from([NOW - 3600, NOW - 6, NOW - 5.5, NOW - 5, NOW - 4.5, NOW - 0.75, NOW,
                     NOW + 4.5, NOW + 5, NOW + 5.5, NOW + 6, NOW + 3600, int(NOW) - 5,
                     int(NOW) + 5, int(NOW) + 6, 0, -1, 1e10, 1e11, 1e300]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10 ** 20), max_value=10 ** 20),
)
odd_values = st.one_of(st.none(), st.booleans(), st.text(max_size=5),
                       st.lists(st.integers(), max_size=2), st.just({}))


def mostly(draw, usual, unusual):
    """Three times in four ``usual``, else ``unusual`` (so that many tokens pass; the
    draws that hypothesis prefers, the smallest, give the usual value)."""
    return draw(usual if draw(st.integers(0, 3)) < 3 else unusual)


USUAL = {
    "exp": st.sampled_from([NOW + 60, NOW + 3600, int(NOW) + 600, int(NOW) + 60, NOW - 4,
                            NOW - 4.5, int(NOW) - 4, NOW - 6, NOW - 3600]),
    "iat": st.sampled_from([int(NOW), int(NOW) - 600, int(NOW) - 60, NOW + 4, NOW + 5,
                            int(NOW) + 5, int(NOW) + 6, NOW + 60]),
    "nbf": st.sampled_from([int(NOW), int(NOW) - 600, NOW + 4.9, int(NOW) + 5, int(NOW) + 6]),
    "sub": st.text(max_size=8),
    "jti": st.text(max_size=8),
    "aud": st.sampled_from(["app", ["app"], ["other", "app"], "other", ["other"]]),
    "iss": st.sampled_from(["https://issuer.example", "https://other.example"]),
    "roles": st.lists(st.text(max_size=4), max_size=2),
}
UNUSUAL = {
    "aud": st.sampled_from(["", [], ["app", 1], 7, None, {"app": 1}]),
    "iss": st.sampled_from(["", 3, None, ["https://issuer.example"]]),
}


@st.composite
def payloads(draw):
    payload = {}
    for name, usual in USUAL.items():
        present = draw(st.integers(0, 3)) < 3 if name in ("exp", "sub") else draw(st.booleans())
        if present:
            payload[name] = mostly(draw, usual, UNUSUAL.get(name, st.one_of(numbers, odd_values)))
    return payload


@st.composite
def headers(draw):
    header = {"alg": mostly(draw, st.sampled_from(["HS256"] * 4 + ["HS384", "HS512"]),
                            st.sampled_from(["none", "RS256", "hs256", "", None, 256]))}
    if draw(st.booleans()):
        header["typ"] = mostly(draw, st.just("JWT"), odd_values)
    if draw(st.booleans()):
        header["kid"] = mostly(draw, st.just("k1"), odd_values)
    if draw(st.integers(0, 3)) == 3:
        name, value = draw(st.sampled_from([("crit", ["b64"]), ("b64", False), ("b64", True),
                                            ("crit", ["exp"]), ("jku", "http://x"),
                                            ("x5u", 1)]))
        header[name] = value
    if draw(st.integers(0, 9)) == 9:
        del header["alg"]
    return header


HASHES = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


@st.composite
def tokens(draw):
    header = draw(headers())
    payload = draw(payloads())
    alg = header.get("alg")
    hash_alg = HASHES.get(alg) if isinstance(alg, str) else None
    hash_alg = hash_alg or draw(st.sampled_from(list(HASHES.values())))
    key = draw(st.sampled_from([SECRET] * 4 + [SECRET + "x"]))
    token = sign(header, payload, key, hash_alg)
    return draw(mutated(token))


@st.composite
def mutated(draw, token):
    """The token, or one of it with a character changed, added or taken away, padded,
    with trailing bits set, or cut."""
    how = draw(st.integers(0, 14))
    if how <= 4 or how > 9:
        return token
    head, body, signature = token.split(".")
    if how == 5:
        at = draw(st.integers(0, len(token) - 1))
        char = draw(st.sampled_from("Aa0_-=.+/ \x00é"))
        return token[:at] + char + token[at + 1:]
    if how == 6:
        at = draw(st.integers(0, len(token)))
        return token[:at] + draw(st.sampled_from("A=._")) + token[at:]
    if how == 7:
        at = draw(st.integers(0, len(token) - 1))
        return token[:at] + token[at + 1:]
    if how == 8:  # padded segments (valid for PyJWT when canonical)
        part = draw(st.integers(0, 2))
        parts = [head, body, signature]
        parts[part] += "=" * (-len(parts[part]) % 4)
        return ".".join(parts)
    # trailing bits: the last character of a segment moved to its neighbour
    parts = [head, body, signature]
    part = draw(st.integers(0, 2))
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = parts[part][-1]
    parts[part] = parts[part][:-1] + alphabet[(alphabet.index(last) + 1) % 64]
    return ".".join(parts)


class AgreementTests(unittest.TestCase):
    def setUp(self):
        self.patch(jwt.api_jwt, "datetime", _FrozenDatetime)
        self.pairs = {(name, tuple(algorithms)): verifiers(config, algorithms)
                      for name, config in CONFIGS.items() for algorithms in ALGORITHMS}
        self.whole = {key: (verifier(CONFIGS[key[0]], list(key[1]), fast=True), full)
                      for key, (_fast, full) in self.pairs.items()}

    def check(self, token):
        accepted = 0
        for (name, algorithms), (fast, full) in self.pairs.items():
            claims = fast.claims(token)
            if claims is None:
                continue
            accepted += 1
            self.assertEqual(full_result(full, token), claims,
                             f"fast path accepted what the full verification does not "
                             f"({name}, {algorithms}): {token}")
        for key, (with_fast, without) in self.whole.items():
            self.assertEqual(outcome(with_fast, token), outcome(without, token), (key, token))
        return accepted

    @settings(max_examples=1500, deadline=None)
    @given(tokens())
    @example(sign({"alg": "HS256", "typ": "JWT"}, {"sub": "a", "exp": NOW + 60}))
    def test_never_accepts_what_pyjwt_refuses(self, token):
        """Whatever the fast path accepts, PyJWT accepts with the same claims (under every
        configuration: audience, issuer, allow-lists); and the verifier answers every token,
        claims or refusal, as it does without the fast path."""
        self.check(token)

    def test_the_generated_tokens_reach_both_outcomes(self):
        """The generator is not vacuous: it makes tokens the fast path accepts and tokens
        it leaves to PyJWT (derandomized: the same examples every run).  That the fast
        path also leaves some good tokens to PyJWT is shown by EdgeTests."""
        fast, full = self.pairs[("plain", ("HS256",))]
        outcomes = collections.Counter()

        @settings(max_examples=400, deadline=None, derandomize=True, database=None)
        @given(tokens())
        def run(token):
            outcomes[(fast.claims(token) is not None, full_result(full, token) is not None)] += 1

        run()
        self.assertGreaterEqual(outcomes[(True, True)], 10, outcomes)
        self.assertGreaterEqual(outcomes[(False, False)], 100, outcomes)
        self.assertEqual(outcomes[(True, False)], 0, outcomes)


class EdgeTests(unittest.TestCase):
    """The cases at the edge of each check, decided by the fast path as PyJWT decides them."""

    def setUp(self):
        self.patch(jwt.api_jwt, "datetime", _FrozenDatetime)
        self.fast, self.full = verifiers({}, ["HS256"])

    def both(self, token):
        return self.fast.claims(token), full_result(self.full, token)

    def test_ordinary_token_accepted(self):
        payload = {"sub": "alice", "exp": NOW + 600, "iat": int(NOW), "roles": ["a"]}
        token = sign({"alg": "HS256", "typ": "JWT"}, payload)
        self.assertEqual(self.both(token), (payload, payload))

    def test_pyjwt_encoded_token_accepted(self):
        token = jwt.encode({"sub": "bob", "exp": int(NOW) + 60}, SECRET, algorithm="HS256",
                           headers={"kid": "k1"})
        self.assertEqual(self.fast.claims(token), {"sub": "bob", "exp": int(NOW) + 60})

    def test_exp_truncated_as_pyjwt_truncates(self):
        """PyJWT compares int(exp): exp = now - leeway + 0.5 is expired for it."""
        token = sign({"alg": "HS256"}, {"exp": int(NOW) - LEEWAY + 0.5})
        self.assertEqual(self.both(token), (None, None))
        token = sign({"alg": "HS256"}, {"exp": int(NOW) - LEEWAY + 1})
        self.assertEqual(self.both(token)[0], self.both(token)[1])
        self.assertIsNotNone(self.both(token)[0])

    def test_wrong_signature_left_to_pyjwt(self):
        token = sign({"alg": "HS256"}, {"exp": NOW + 60}, key=SECRET + "!")
        self.assertEqual(self.both(token), (None, None))

    def test_algorithm_outside_the_allow_list(self):
        token = sign({"alg": "HS384"}, {"exp": NOW + 60}, hash_alg=hashlib.sha384)
        self.assertEqual(self.both(token), (None, None))

    def test_signature_with_trailing_bits_set(self):
        """The same signature bytes written with an unused low bit set (each one, for a
        segment of length 3 mod 4 and one of 2 mod 4): PyJWT refuses the non-canonical
        encoding, and so does the fast path."""
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        long_secret = SECRET * 2  # HS512 wants 64 bytes at least (else PyJWT's path)
        fast512 = HMACFastPath(long_secret, ["HS512"], leeway=LEEWAY, now=lambda: NOW)
        clock = Clock()
        clock.advance(NOW)
        full512 = JWTVerifier(long_secret, ["HS512"], clock=clock, leeway=LEEWAY, cache_size=0)
        full512._fast = None
        for hash_alg, unused, key, (fast, full) in (
                # 43 characters: 2 bits unused; 86 characters: 4 bits unused
                (hashlib.sha256, 2, SECRET, (self.fast, self.full)),
                (hashlib.sha512, 4, long_secret, (fast512, full512))):
            alg = "HS256" if hash_alg is hashlib.sha256 else "HS512"
            token = sign({"alg": alg}, {"exp": NOW + 60}, key=key, hash_alg=hash_alg)
            self.assertEqual(fast.claims(token), {"exp": NOW + 60})
            index = alphabet.index(token[-1])
            for bit in range(unused):
                odd = token[:-1] + alphabet[index ^ (1 << bit)]
                signature = odd.split(".")[2]
                self.assertEqual(
                    base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)),
                    base64.urlsafe_b64decode(token.split(".")[2] + "=" * (-len(signature) % 4)))
                try:
                    full_answer = full._pyjwt_decode(odd, key)
                except AuthFailure:
                    full_answer = None
                self.assertEqual((fast.claims(odd), full_answer), (None, None), (alg, bit))

    def test_empty_audience_is_missing(self):
        """An audience of "" is a missing claim for PyJWT, whatever is configured."""
        fast, full = verifiers({"audience": ""}, ["HS256"])
        token = sign({"alg": "HS256"}, {"exp": NOW + 60, "aud": ""})
        self.assertEqual((fast.claims(token), full_result(full, token)), (None, None))

    def test_padded_token_left_to_pyjwt(self):
        """A signature with its '=' padding: PyJWT accepts it; the fast path leaves it."""
        token = sign({"alg": "HS256"}, {"exp": NOW + 60})
        padded = token + "=" * (-len(token.split(".")[2]) % 4)
        self.assertNotEqual(padded, token)
        fast, full = self.both(padded)
        self.assertIsNone(fast)
        self.assertEqual(full, {"exp": NOW + 60})

    def test_booleans_are_left_to_pyjwt(self):
        token = sign({"alg": "HS256"}, {"exp": NOW + 60, "iat": True})
        fast, full = self.both(token)
        self.assertIsNone(fast)
        self.assertIsNotNone(full)  # PyJWT takes True as 1: still accepted, by PyJWT

    def test_short_secret_never_fast(self):
        """A secret shorter than the digest keeps PyJWT's warning: no fast path at all."""
        self.assertFalse(HMACFastPath("short", ["HS256"]))
        self.assertTrue(HMACFastPath(SECRET, ["HS256", "RS256"]))
        self.assertFalse(HMACFastPath(SECRET, ["RS256"]))


class VerifierUsesItTests(unittest.TestCase):
    def test_ordinary_token_verified_without_pyjwt(self):
        """JWTVerifier takes the fast path for the ordinary token (PyJWT is not called),
        and still applies its own checks after it (exp below MAX_EXP)."""
        verifier = JWTVerifier(SECRET, ["HS256"], cache_size=0)
        calls = []
        real = verifier._decoder.decode
        verifier._decoder.decode = lambda *a, **k: calls.append(1) or real(*a, **k)
        token = jwt.encode({"sub": "alice", "exp": 4_000_000_000}, SECRET, algorithm="HS256")
        identity = self.successResultOf(verifier.verify(token))
        self.assertEqual(identity.user_id, "alice")
        self.assertEqual(calls, [])
        too_far = jwt.encode({"sub": "alice", "exp": 2e11}, SECRET, algorithm="HS256")
        failure = self.failureResultOf(verifier.verify(too_far), AuthFailure)
        self.assertEqual(failure.value.detail, "exp out of range")

    def test_refusals_keep_pyjwts_words(self):
        """A bad signature goes through PyJWT, whose reason the log line carries."""
        verifier = JWTVerifier(SECRET, ["HS256"], cache_size=0)
        token = jwt.encode({"sub": "alice", "exp": 4_000_000_000}, SECRET + "x",
                           algorithm="HS256")
        failure = self.failureResultOf(verifier.verify(token), AuthFailure)
        self.assertIn("bad signature", failure.value.detail)
