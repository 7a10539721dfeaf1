"""
Verifying the same JWT twice costs one verification: a per-token cache of verified
identities, and HMAC keys prepared once.  Used by :class:`realtime.auth.jwt_verifier.JWTVerifier`.

A reconnect storm (a network blip, a load balancer restart) presents the same tokens again,
all at once; each one used to cost PyJWT a full verification, most of it spent not on the
HMAC but on re-checking the configured secret (``HMACAlgorithm.prepare_key`` parses it as
JSON, as a PEM, as DER, on every token: about a third of PyJWT's time per token here).

:class:`TokenCache`
    token -> the :class:`Identity` its verification gave, for tokens verified with the
    static key (``JWT_SECRET`` or ``JWT_PUBLIC_KEY``; not JWKS keys, which can be rotated
    away).  The key is a SHA-256 digest of the exact token text: a token that differs in
    one character is another token, verified in full.  An entry is used only until the
    token's ``exp`` plus the leeway (checked on every use against the verifier's clock;
    past it the token is refused ``token-expired`` and the entry dropped); ``nbf`` and
    ``iat`` were checked when it was cached and can only have become truer since.
    Revocation is not cached: the authenticator asks the revocation store for every use of
    a token, cached or not.  Bounded: past ``max_entries`` the oldest entry goes.  Failures
    are never cached.

:func:`prepared_decoder`
    a ``jwt.PyJWT`` whose HMAC algorithms (HS256/384/512) take the configured secret in the
    form PyJWT's own checks produced once, at start-up; any other key still goes through
    those checks on every call.  It reaches PyJWT's ``PyJWT._jws`` (its per-instance JWS
    object, whose ``register_algorithm`` is public API); if a PyJWT release drops that
    attribute, the plain decoder is used and ``tests/test_jwt.py`` fails to say so.
"""

from __future__ import annotations

import hashlib
from typing import Optional

import jwt
from jwt.algorithms import HMACAlgorithm

DEFAULT_MAX_ENTRIES = 65536


class TokenCache:
    """Verified identities by token, until their expiry; at most ``max_entries``."""

    __slots__ = ("_entries", "leeway", "max_entries")

    def __init__(self, leeway: float, max_entries: int = DEFAULT_MAX_ENTRIES):
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.leeway = leeway
        self.max_entries = max_entries
        self._entries: dict = {}  # digest -> Identity, oldest first

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def _key(token: str) -> bytes:
        return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()

    def get(self, token: str, now: float):
        """
        ``(identity, expired)``: the cached identity (or None), and whether the token was
        cached but is now past its expiry (the entry is then dropped).
        """
        identity, expired, _key = self.lookup(token, now)
        return identity, expired

    def lookup(self, token: str, now: float):
        """:meth:`get`, and the token's key for :meth:`put_key` (hashed once per token)."""
        key = self._key(token)
        identity = self._entries.get(key)
        if identity is None:
            return None, False, key
        if identity.expires_at + self.leeway <= now:
            del self._entries[key]
            return None, True, key
        return identity, False, key

    def put(self, token: str, identity) -> None:
        self.put_key(self._key(token), identity)

    def put_key(self, key: bytes, identity) -> None:
        """:meth:`put` with the key :meth:`lookup` gave."""
        entries = self._entries
        if key not in entries and len(entries) >= self.max_entries:
            del entries[next(iter(entries))]
        entries[key] = identity

    def clear(self) -> None:
        self._entries.clear()


class _PreparedHMAC(HMACAlgorithm):
    """PyJWT's HMAC algorithm, with the checks of one secret already done."""

    def __init__(self, hash_alg, secret, prepared: bytes):
        super().__init__(hash_alg)
        self._secret = secret
        self._prepared = prepared

    def prepare_key(self, key):
        if key is self._secret or key == self._secret:
            return self._prepared
        return super().prepare_key(key)  # any other key: every check, as before


def prepared_decoder(key, algorithms, options=None) -> "jwt.PyJWT":
    """
    A ``jwt.PyJWT(options)`` for ``key`` (see the module docstring); plain when it cannot
    be.
    """
    decoder = jwt.PyJWT(options)
    jws = getattr(decoder, "_jws", None)
    if not isinstance(jws, jwt.PyJWS) or not isinstance(key, (str, bytes)):
        return decoder
    for name in algorithms:
        try:
            algorithm = jws.get_algorithm_by_name(name)
        except NotImplementedError:
            continue
        if type(algorithm) is not HMACAlgorithm:
            continue
        try:
            prepared = algorithm.prepare_key(key)
        except Exception:  # noqa: BLE001 - a key PyJWT refuses as a secret: refused per token
            continue
        jws.unregister_algorithm(name)
        jws.register_algorithm(name, _PreparedHMAC(algorithm.hash_alg, key, prepared))
    return decoder


def is_prepared(decoder, name: str) -> Optional[bool]:
    """Whether ``decoder`` uses a prepared key for algorithm ``name`` (for tests)."""
    jws = getattr(decoder, "_jws", None)
    if not isinstance(jws, jwt.PyJWS):
        return None
    return isinstance(jws.get_algorithm_by_name(name), _PreparedHMAC)
