"""
The common HMAC token, verified without PyJWT's general machinery: an accept-only fast path.

Connection setup with a JWT spent about a third of its CPU in PyJWT (``make bench``'s setup
profile, 2026-12-03): PyJWT decodes each token through layers that serve every algorithm,
detached payloads and critical headers, checks each base64 character in a Python generator,
and reads the clock through ``datetime``.  For the token nearly every application issues
(``HS256``/``384``/``512`` with the configured ``JWT_SECRET``, a header of ``alg``, ``typ``
and maybe ``kid``, ordinary claims) :class:`HMACFastPath` does the same checks in a few
C-level calls.

It only ever *accepts*.  :meth:`HMACFastPath.claims` returns the verified claims when the
token passes every check PyJWT would make with the verifier's options, and None for
anything else — a bad signature, an expired token, an unusual header, a claim of an
unusual type — and the caller then verifies the token with PyJWT as before, which refuses it
with its own reason (or, for an unusual but valid token, accepts it).  So a refusal, and its
words in the log, are always PyJWT's; what the fast path can change is only how quickly a
good token is accepted.  ``tests/test_hs_fastpath.py`` checks that it never accepts what
PyJWT refuses and agrees with PyJWT's claims where it accepts, on generated and mutated
tokens.

The checks, as PyJWT 2.x makes them (``PyJWS._load``, ``_verify_signature``,
``PyJWT._validate_claims``):

- three segments of the base64url alphabet, without padding (padded tokens go to PyJWT),
  none of length 1 mod 4, each the canonical encoding of its bytes;
- a header that is a JSON object (read as ``JWTVerifier.header`` reads it) with ``alg``
  in the allow-list and of the HMAC family, and no member but ``alg``, ``typ`` and a
  string ``kid`` (``crit``, ``b64`` and the rest go to PyJWT);
- the HMAC of the signing input with the prepared secret, compared in constant time;
- a payload that is a JSON object; ``exp`` present and a number, ``int(exp) > now -
  leeway``; ``iat`` and ``nbf`` absent or numbers with ``int(value) <= now + leeway``;
  ``sub`` and ``jti`` absent or strings; ``iss`` equal to the configured issuer when there
  is one; ``aud`` the configured audience (a string, or a list of strings holding it) when
  there is one, not looked at otherwise (PyJWT's ``verify_aud`` is off then).

Booleans are not numbers here (PyJWT would take ``true`` as 1): such a token goes to PyJWT.
The secret is used only when PyJWT would use it without a warning (at least as long as the
hash's digest); a shorter one keeps PyJWT's per-token ``InsecureKeyLengthWarning``.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import json
import re
import time
from typing import Optional, Sequence

from jwt.algorithms import HMACAlgorithm

from realtime import jsonutil

_HASHES = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
_TOKEN = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)")
_HEADER_MEMBERS = frozenset(("alg", "typ", "kid"))


_STANDARD = bytes.maketrans(b"-_", b"+/")  # base64url -> base64
_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_VALUES = bytes(_ALPHABET.index(c) if c in _ALPHABET else 0 for c in range(256))
#: by length % 4: the bits of the last character that carry no data (canonical: zero)
_UNUSED_BITS = (0, 0, 0x0F, 0x03)
_PAD_BYTES = (b"", b"", b"==", b"=")


def _segment(standard: bytes) -> Optional[bytes]:
    """The bytes of one unpadded segment (already in the standard alphabet), or None when
    it is not the canonical encoding of them (PyJWT refuses a segment with trailing bits
    set, or of length 1 mod 4)."""
    rest = len(standard) % 4
    if rest == 1 or (rest and _VALUES[standard[-1]] & _UNUSED_BITS[rest]):
        return None
    return binascii.a2b_base64(standard + _PAD_BYTES[rest])


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class HMACFastPath:
    """
    Accept-only verification of HMAC tokens for one secret (see the module docstring).

    :param key: the configured secret (``str`` or ``bytes``).
    :param algorithms: the verifier's allow-list; only its HMAC members are taken here.
    :param audience: the required ``aud`` or None; :param issuer: the required ``iss`` or None.
    """

    __slots__ = ("_keys", "audience", "issuer", "leeway", "_now")

    def __init__(self, key, algorithms: Sequence[str], audience: Optional[str] = None,
                 issuer: Optional[str] = None, leeway: float = 0.0, now=time.time):
        self._keys = {}
        for name in algorithms:
            hash_alg = _HASHES.get(name)
            if hash_alg is None:
                continue
            algorithm = HMACAlgorithm(hash_alg)
            try:
                prepared = algorithm.prepare_key(key)
            except Exception:  # noqa: BLE001 - a secret PyJWT refuses: every token to PyJWT
                continue
            if algorithm.check_key_length(prepared):
                continue  # PyJWT warns on every use of a short secret: left to it
            self._keys[name] = (prepared, hash_alg)
        self.audience = audience
        self.issuer = issuer
        self.leeway = leeway
        self._now = now

    def __bool__(self) -> bool:
        return bool(self._keys)

    def claims(self, token) -> Optional[dict]:
        """The verified claims of ``token``, or None: not verified here (ask PyJWT)."""
        if not isinstance(token, str):
            return None
        match = _TOKEN.fullmatch(token)
        if match is None:
            return None
        head, body, _signature = match.groups()
        ascii_token = token.encode("ascii")  # the pattern admits ASCII only
        standard = ascii_token.translate(_STANDARD)
        body_start = len(head) + 1
        signature_start = body_start + len(body) + 1
        header_bytes = _segment(standard[:len(head)])
        if header_bytes is None:
            return None
        try:
            header = jsonutil.loads(header_bytes)  # as JWTVerifier.header reads it
        except ValueError:
            return None
        if type(header) is not dict or not header.keys() <= _HEADER_MEMBERS:
            return None
        key = self._keys.get(header.get("alg"))
        if key is None or ("kid" in header and not isinstance(header["kid"], str)):
            return None
        signature_bytes = _segment(standard[signature_start:])
        if signature_bytes is None:
            return None
        prepared, hash_alg = key
        signing_input = ascii_token[:signature_start - 1]
        if not hmac.compare_digest(signature_bytes,
                                   hmac.new(prepared, signing_input, hash_alg).digest()):
            return None
        payload_bytes = _segment(standard[body_start:signature_start - 1])
        if payload_bytes is None:
            return None
        try:
            claims = json.loads(payload_bytes)
        except (ValueError, RecursionError):
            return None
        if type(claims) is not dict:
            return None
        return claims if self._claims_valid(claims) else None

    def _claims_valid(self, claims: dict) -> bool:
        now = self._now()
        leeway = self.leeway
        exp = claims.get("exp")
        if not _number(exp) or exp != exp or abs(exp) == float("inf"):
            return False
        if int(exp) <= now - leeway:
            return False
        for name in ("iat", "nbf"):
            if name in claims:
                value = claims[name]
                if not _number(value) or value != value or abs(value) == float("inf"):
                    return False
                if int(value) > now + leeway:
                    return False
        for name in ("sub", "jti"):
            if name in claims and not isinstance(claims[name], str):
                return False
        if self.issuer is not None and claims.get("iss") != self.issuer:
            return False
        if self.audience is not None:
            aud = claims.get("aud")
            if not aud:
                return False  # PyJWT: a missing claim
            if isinstance(aud, str):
                return aud == self.audience
            if not isinstance(aud, list) or not all(isinstance(a, str) for a in aud):
                return False
            return self.audience in aud
        return True
