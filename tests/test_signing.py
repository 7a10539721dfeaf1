"""
Signed messages: the exact bytes docs/protocol.rst defines, verified over the raw text.
"""

import base64
import hashlib
import hmac
import json

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial import unittest

from realtime import jsonutil
from realtime.auth.signing import (
    MessageVerifier,
    SignatureError,
    envelope,
    new_session_secret,
    parse_envelope,
    sign,
)
from realtime.auth.stores import MemoryNonceStore

SECRET = "c2Vzc2lvbi1zZWNyZXQtZm9yLXRlc3Rz"
NOW_MS = 1_800_000_000_000


def js_signature(secret: str, body: str) -> str:
    """What the browser example in the README computes."""
    return base64.b64encode(hmac.new(secret.encode("utf-8"), body.encode("utf-8"),
                                     hashlib.sha256).digest()).decode()


class SigningTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(NOW_MS / 1000.0)
        self.nonces = MemoryNonceStore(self.clock)
        self.verifier = MessageVerifier(self.nonces, self.clock)

    def verify(self, text, secret=SECRET):
        return self.verifier.verify(secret, text)

    def assertAccepted(self, text, secret=SECRET):
        return self.successResultOf(self.verify(text, secret))

    def assertRefused(self, text, code="bad_signature", secret=SECRET):
        failure = self.failureResultOf(self.verify(text, secret), SignatureError)
        self.assertEqual(failure.value.code, code)

    def test_exact_bytes_of_the_design(self):
        """
        The signature is base64(HMAC-SHA256(utf8(secret), utf8('{"payload":…,"timestamp":…,
        "nonce":…}'))) with no whitespace and non-ASCII unescaped.
        """
        payload = {"type": "publish", "topic": "public:café", "data": {"t": "ü→"}}
        body = ('{"payload":{"type":"publish","topic":"public:café","data":{"t":"ü→"}},'
                f'"timestamp":{NOW_MS},"nonce":"n-1"}}')
        signature = js_signature(SECRET, body)
        text = ('{"payload":{"type":"publish","topic":"public:café","data":{"t":"ü→"}},'
                f'"signature":"{signature}","timestamp":{NOW_MS},"nonce":"n-1"}}')
        self.assertEqual(self.assertAccepted(text), payload)
        self.assertEqual(envelope(SECRET, payload, NOW_MS, "n-1"), text)

    def test_javascript_number_formatting_verified_over_raw_text(self):
        """
        Numbers written as JavaScript writes them (1e-7, 1.5e-7, 1e+21) verify, although
        Python would re-serialise them differently (1e-07, 1.5e-07).
        """
        payload_text = '{"type":"publish","data":{"a":1e-7,"b":1.5e-7,"c":1e+21,"d":0.1}}'
        body = f'{{"payload":{payload_text},"timestamp":{NOW_MS},"nonce":"n"}}'
        self.assertNotEqual(jsonutil.dumps_text(json.loads(body)), body)
        text = (f'{{"payload":{payload_text},"signature":"{js_signature(SECRET, body)}",'
                f'"timestamp":{NOW_MS},"nonce":"n"}}')
        self.assertEqual(self.assertAccepted(text)["data"]["b"], 1.5e-7)

    def test_envelope_key_order_and_whitespace(self):
        """The envelope's own key order does not matter; nor does whitespace around it."""
        body = f'{{"payload":{{"type":"ping"}},"timestamp":{NOW_MS},"nonce":"k"}}'
        text = (f' {{ "nonce" : "k", "signature": "{js_signature(SECRET, body)}",\n'
                f'"timestamp": {NOW_MS}, "payload": {{"type":"ping"}} }} ')
        self.assertEqual(self.assertAccepted(text), {"type": "ping"})

    def test_reformatted_payload_checked_in_canonical_form(self):
        """A payload re-indented after signing still verifies (canonical form tried too)."""
        body = f'{{"payload":{{"type":"ping","n":1}},"timestamp":{NOW_MS},"nonce":"w"}}'
        text = (f'{{"payload": {{ "type": "ping", "n": 1 }}, "signature": '
                f'"{js_signature(SECRET, body)}", "timestamp": {NOW_MS}, "nonce": "w"}}')
        self.assertEqual(self.assertAccepted(text), {"type": "ping", "n": 1})

    def test_tampered_payload(self):
        """Changing one character of the payload: bad_signature."""
        text = envelope(SECRET, {"type": "publish", "data": 1}, NOW_MS, "t")
        self.assertRefused(text.replace('"data":1', '"data":2'))

    def test_wrong_secret(self):
        """Signed with another connection's secret: bad_signature."""
        self.assertRefused(envelope(new_session_secret(), {"type": "ping"}, NOW_MS, "x"))

    def test_stale_and_future_timestamps(self):
        """More than 5 minutes old or ahead: bad_signature; just inside: accepted."""
        self.assertRefused(envelope(SECRET, {"type": "ping"}, NOW_MS - 300_001, "old"))
        self.assertRefused(envelope(SECRET, {"type": "ping"}, NOW_MS + 300_001, "new"))
        self.assertAccepted(envelope(SECRET, {"type": "ping"}, NOW_MS - 299_000, "ok1"))
        self.assertAccepted(envelope(SECRET, {"type": "ping"}, NOW_MS + 299_000, "ok2"))

    def test_replay(self):
        """The same envelope twice: the second is a replay."""
        text = envelope(SECRET, {"type": "ping"}, NOW_MS, "once")
        self.assertAccepted(text)
        self.assertRefused(text, "replay")
        # Same nonce, new timestamp and a valid signature: still a replay.
        self.assertRefused(envelope(SECRET, {"type": "ping"}, NOW_MS + 1, "once"), "replay")

    def test_nonces_are_per_session(self):
        """Another session may use the same nonce (one client cannot burn another's)."""
        other = new_session_secret()
        self.assertAccepted(envelope(SECRET, {"type": "ping"}, NOW_MS, "same"))
        self.assertAccepted(envelope(other, {"type": "ping"}, NOW_MS, "same"), secret=other)

    def test_nonces_forgotten_after_twice_the_window(self):
        """The nonce store does not grow without end: entries expire after 10 minutes."""
        for i in range(100):
            self.assertAccepted(envelope(SECRET, {"type": "ping"}, NOW_MS, f"n{i}"))
        self.assertEqual(len(self.nonces), 100)
        self.clock.advance(601)
        self.assertAccepted(envelope(SECRET, {"type": "ping"}, NOW_MS + 601_000, "later"))
        self.assertEqual(len(self.nonces), 1)

    def test_unsigned_and_malformed_envelopes(self):
        """A plain message, missing or extra fields, odd types: bad_signature."""
        good = json.loads(envelope(SECRET, {"type": "ping"}, NOW_MS, "m"))
        cases = [
            '{"type":"ping"}', "not json", "[1,2]", '"x"', "{}",
            json.dumps({k: v for k, v in good.items() if k != "nonce"}),
            json.dumps(dict(good, extra=1)),
            json.dumps(dict(good, timestamp=float(NOW_MS))),
            json.dumps(dict(good, timestamp=str(NOW_MS))),
            json.dumps(dict(good, timestamp=True)),
            json.dumps(dict(good, nonce="")),
            json.dumps(dict(good, nonce="n" * 129)),
            json.dumps(dict(good, nonce=5)),
            json.dumps(dict(good, signature="%%%not-base64")),
            json.dumps(dict(good, signature=None)),
            '{"payload":{"type":"ping"},"payload":{"type":"x"},"signature":"","timestamp":1,"nonce":"a"}',
            envelope(SECRET, {"type": "ping"}, NOW_MS, "trail") + "x",
        ]
        for text in cases:
            self.assertRefused(text)

    def test_parse_envelope_gives_raw_text(self):
        """The parser returns each member's exact source text."""
        values, raw = parse_envelope('{"a": 1.50 , "b":[1, 2],"c":"\\u00e9"}')
        self.assertEqual(values, {"a": 1.5, "b": [1, 2], "c": "é"})
        self.assertEqual(raw, {"a": "1.50", "b": "[1, 2]", "c": '"\\u00e9"'})

    @settings(max_examples=200, deadline=None)
    @given(st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=10),
        lambda children: st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=6), children, max_size=4), max_leaves=20),
        st.text(min_size=1, max_size=20))
    def test_any_payload_round_trips(self, data, nonce):
        """Any JSON payload signed as the client does verifies to the same payload."""
        payload = {"type": "publish", "data": data}
        text = envelope(SECRET, payload, NOW_MS, nonce)
        self.verifier = MessageVerifier(MemoryNonceStore(self.clock), self.clock)
        self.assertEqual(self.assertAccepted(text), payload)

    @settings(max_examples=300, deadline=None)
    @given(st.text(max_size=300))
    def test_any_text_refused_never_crashes(self, text):
        """Any text that is not a signed envelope: a SignatureError, never a crash."""
        self.assertRefused(text)

    def test_sign_matches_js_signature(self):
        """`sign` is the function the README's client example computes."""
        self.assertEqual(sign("k", "body"), js_signature("k", "body"))
