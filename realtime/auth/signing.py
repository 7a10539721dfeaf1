"""
Signed client messages (``WS_SIGNED_MESSAGES``; docs/protocol.rst, "Signed messages").

``connected`` carries a random ``sessionSecret``; every later client message is an envelope
``{"payload": <message>, "signature": …, "timestamp": <ms since epoch>, "nonce": <string>}``
where ``signature`` is the standard base64 of HMAC-SHA256, keyed with the UTF-8 bytes of the
secret, over the UTF-8 bytes of ``{"payload":…,"timestamp":…,"nonce":…}`` written as a
browser's ``JSON.stringify`` writes it (that key order, no whitespace, non-ASCII as is)::

    const body = JSON.stringify({payload, timestamp, nonce});
    signature = base64(HMAC_SHA256(utf8(sessionSecret), utf8(body)))

Verification works on the raw text the client sent, not on a re-serialisation: Python and
JavaScript write some numbers differently (``1.0`` vs ``1``, ``1e21`` vs ``1e+21``), so the
signed text is rebuilt from the exact source text of the envelope's ``payload``,
``timestamp`` and ``nonce`` values (which is what ``JSON.stringify`` of the envelope wrote
for them).  Should the client's envelope have been re-formatted (whitespace inside the
payload), the canonical compact form written by the server is tried as well; both are
derived from the same values, so accepting either weakens nothing.

Checks, in order: the envelope's shape, the signature (``bad_signature``), the timestamp
within ``window`` (5 minutes) of the server's clock either way (``bad_signature``: a stale
message is treated as a forged one), and the nonce never seen before for this session
(``replay``).  Nonces are remembered for twice the window (every timestamp they could be
replayed with); a nonce is scoped to its session secret (the key is a hash of both), so one
client cannot burn another's nonces.  A nonce store that cannot answer (Redis down) fails
closed: ``error`` ``unavailable``, message dropped.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from typing import Dict, Tuple

from twisted.internet.defer import Deferred, fail, maybeDeferred

from realtime import jsonutil

WINDOW_SECONDS = 300.0
MAX_NONCE_LENGTH = 128
_ENVELOPE_KEYS = {"payload", "signature", "timestamp", "nonce"}


class SignatureError(Exception):
    """A signed message refused: ``code`` is ``bad_signature``, ``replay`` or ``unavailable``."""

    def __init__(self, code: str, message: str):
        super().__init__(code, message)
        self.code = code
        self.message = message


def new_session_secret() -> str:
    """256 random bits, URL-safe base64 (ASCII, so its UTF-8 bytes are itself)."""
    return secrets.token_urlsafe(32)


def sign(secret: str, body: str) -> str:
    """The signature of ``body`` (the JSON text ``{"payload":…,"timestamp":…,"nonce":…}``)."""
    digest = hmac.new(secret.encode("utf-8"), body.encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def signed_body(payload, timestamp: int, nonce: str) -> str:
    """The text a client signs, written as ``JSON.stringify`` would (for tests and tools)."""
    return jsonutil.dumps_text({"payload": payload, "timestamp": timestamp, "nonce": nonce})


def envelope(secret: str, payload, timestamp: int, nonce: str) -> str:
    """A signed envelope's JSON text, as a client would send it."""
    body = signed_body(payload, timestamp, nonce)
    return jsonutil.dumps_text({"payload": payload, "signature": sign(secret, body),
                                "timestamp": timestamp, "nonce": nonce})


# The same refusals as realtime.jsonutil.loads (NaN, 1e400, lone surrogates: see below).
_decoder = json.JSONDecoder(parse_constant=jsonutil.reject_constant,
                            parse_float=jsonutil.finite_float)
_WHITESPACE = " \t\n\r"


def parse_envelope(text: str) -> Tuple[Dict[str, object], Dict[str, str]]:
    """
    ``(values, raw)``: each top-level member's parsed value and its exact source text.
    ValueError for anything but a JSON object with no duplicate member.
    """
    values: Dict[str, object] = {}
    raw: Dict[str, str] = {}
    scan = _decoder.scan_once
    n = len(text)
    i = _skip(text, 0)
    if i >= n or text[i] != "{":
        raise ValueError("not a JSON object")
    i = _skip(text, i + 1)
    if i < n and text[i] == "}":
        i += 1
    else:
        while True:
            if i >= n or text[i] != '"':
                raise ValueError("expected a member name")
            key, i = json.decoder.scanstring(text, i + 1)
            i = _skip(text, i)
            if i >= n or text[i] != ":":
                raise ValueError("expected ':'")
            i = _skip(text, i + 1)
            try:
                value, end = scan(text, i)
            except StopIteration:
                raise ValueError("expected a value") from None
            if key in values:
                raise ValueError("duplicate member")
            values[key] = value
            raw[key] = text[i:end]
            i = _skip(text, end)
            if i < n and text[i] == ",":
                i = _skip(text, i + 1)
                continue
            if i < n and text[i] == "}":
                i += 1
                break
            raise ValueError("expected ',' or '}'")
    if _skip(text, i) != n:
        raise ValueError("extra data after the object")
    if "\\u" in text and jsonutil.has_lone_surrogate(values):
        raise ValueError("a string holds a lone surrogate (not valid Unicode)")
    return values, raw


def _skip(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i] in _WHITESPACE:
        i += 1
    return i


class MessageVerifier:
    """
    Verifies envelopes.  :meth:`verify` returns a Deferred firing with the payload (a dict),
    or failing with :class:`SignatureError`.
    """

    def __init__(self, nonces, clock, window: float = WINDOW_SECONDS):
        self._nonces = nonces
        self._clock = clock
        self.window = window

    def verify(self, secret: str, text: str) -> Deferred:
        try:
            payload, nonce_key = self._check(secret, text)
        except SignatureError:
            return fail()
        d = maybeDeferred(self._nonces.seen, nonce_key, 2 * self.window)

        def checked(seen_before):
            if seen_before:
                raise SignatureError("replay", "this nonce was used before")
            return payload

        def unavailable(failure):
            if failure.check(SignatureError):
                return failure
            raise SignatureError("unavailable", "the nonce store cannot be reached")

        return d.addCallback(checked).addErrback(unavailable)

    def _check(self, secret: str, text: str):
        try:
            values, raw = parse_envelope(text)
        except (ValueError, RecursionError):
            raise SignatureError("bad_signature", "not a signed envelope") from None
        if set(values) != _ENVELOPE_KEYS:
            raise SignatureError("bad_signature",
                                 "a signed message is {payload, signature, timestamp, nonce}")
        payload, signature = values["payload"], values["signature"]
        timestamp, nonce = values["timestamp"], values["nonce"]
        if not isinstance(signature, str) or not isinstance(nonce, str) \
                or not 0 < len(nonce) <= MAX_NONCE_LENGTH \
                or not isinstance(timestamp, int) or isinstance(timestamp, bool):
            raise SignatureError("bad_signature", "malformed envelope")
        try:
            given = base64.b64decode(signature.encode("ascii"), validate=True)
        except (ValueError, UnicodeEncodeError):
            raise SignatureError("bad_signature", "signature is not base64") from None
        key = secret.encode("utf-8")
        bodies = ['{"payload":%s,"timestamp":%s,"nonce":%s}'
                  % (raw["payload"], raw["timestamp"], raw["nonce"])]
        try:
            bodies.append(signed_body(payload, timestamp, nonce))
        except ValueError:
            pass
        ok = False
        for body in bodies:
            expected = hmac.new(key, body.encode("utf-8", "surrogatepass"),
                                hashlib.sha256).digest()
            ok |= hmac.compare_digest(expected, given)
        if not ok:
            raise SignatureError("bad_signature", "the signature does not match")
        now_ms = self._clock.seconds() * 1000.0
        if abs(now_ms - timestamp) > self.window * 1000.0:
            raise SignatureError("bad_signature", "the timestamp is outside the 5 minute window")
        nonce_key = hashlib.sha256(key + b"\0" + nonce.encode("utf-8", "surrogatepass")).hexdigest()
        return payload, nonce_key
