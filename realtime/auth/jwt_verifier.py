"""
JWTs: verified with PyJWT, and named in log lines without being shown.

:class:`JWTVerifier` checks a token against one key: ``JWT_SECRET`` (HS256/384/512),
``JWT_PUBLIC_KEY`` (a PEM: RS/PS/ES/EdDSA) or the keys of ``JWT_JWKS_URL``
(:mod:`realtime.auth.jwks`), always with an explicit algorithm allow-list (``none`` is
never allowed), ``exp`` required (and below :data:`~realtime.auth.identity.MAX_EXP`: an
``exp`` in milliseconds would make a token that never expires), ``nbf``/``iat`` checked
with a small leeway, ``aud``/``iss`` exact when configured.  Tokens of a static key are
remembered until their expiry (:mod:`realtime.auth.tokencache`).  Revocation is not
checked here but by :class:`realtime.auth.authenticator.Authenticator`, for every token.

Every refusal is an :class:`~realtime.auth.identity.AuthFailure` whose detail says why in
words (missing claim, bad signature, algorithm not allowed, expired, wrong audience or
issuer ...), for the log line the authenticator writes (the common HMAC token is accepted
by :mod:`realtime.auth.hs_fastpath` without PyJWT's general machinery; anything it does not
accept, and so every refusal, goes through PyJWT as before); :func:`token_reference` names the
token in that line by its ``jti`` or a prefix of the hash of its signed part, as
revocation names it — never the token, which would let whoever reads the log use it.
"""

from __future__ import annotations

import time
from typing import Optional, Sequence

import jwt
from jwt.utils import base64url_decode
from twisted.internet.defer import Deferred, fail, maybeDeferred

from realtime import jsonutil
from realtime.auth import tokencache
from realtime.auth.hs_fastpath import HMACFastPath
from realtime.auth.identity import (
    JWT_LEEWAY_SECONDS,
    MAX_EXP,
    MAX_TOKEN_LENGTH,
    AuthFailure,
    Identity,
    token_id,
)


def _shown(value, limit: int = 40) -> str:
    """A value from a token, made safe for a log line (escaped, bounded)."""
    text = value if isinstance(value, str) else repr(value)
    return repr(text[:limit].encode("unicode_escape").decode("ascii"))


#: PyJWT's refusals, in words for the log
_JWT_ERRORS = (
    (jwt.InvalidSignatureError, "bad signature (not signed with the configured key)"),
    (jwt.InvalidAudienceError, "wrong audience (aud is not JWT_AUDIENCE)"),
    (jwt.InvalidIssuerError, "wrong issuer (iss is not JWT_ISSUER)"),
    (jwt.ImmatureSignatureError, "not valid yet (nbf in the future)"),
    (jwt.InvalidIssuedAtError, "issued in the future (iat)"),
    (jwt.InvalidAlgorithmError, "algorithm not allowed"),
    (jwt.DecodeError, "malformed token"),
)


def _jwt_error_text(error: Exception) -> str:
    if isinstance(error, jwt.MissingRequiredClaimError):
        return f"missing required claim {_shown(error.claim)}"
    for kind, text in _JWT_ERRORS:
        if isinstance(error, kind):
            return text
    return type(error).__name__


def token_reference(token) -> str:
    """
    How a log line names a token: ``jti:<jti>`` (escaped) when its payload carries one,
    else ``sha256:`` and the first 16 hex digits of the hash of its signed part (the
    prefix of its revocation id); ``malformed`` for what is not a JWT at all.  Read without
    verifying anything: it only names the token.
    """
    if not isinstance(token, str) or token.count(".") != 2 or len(token) > MAX_TOKEN_LENGTH:
        return "malformed"
    try:
        claims = jsonutil.loads(base64url_decode(token.split(".")[1]))
    except Exception:
        claims = None
    jti = claims.get("jti") if isinstance(claims, dict) else None
    if isinstance(jti, str) and jti:
        return "jti:" + jti[:80].encode("unicode_escape").decode("ascii")
    return token_id({}, token)[:len("sha256:") + 16]


def token_id_reference(token_id_: str) -> str:
    """:func:`token_reference` of a verified token, from its revocation id alone."""
    if token_id_.startswith("jti:"):
        return "jti:" + token_id_[4:84].encode("unicode_escape").decode("ascii")
    return token_id_[:len("sha256:") + 16]


class JWTVerifier:
    """
    Verify JWTs with PyJWT: explicit algorithm allow-list, ``exp`` required, ``nbf``/``iat``
    checked with a small leeway, ``aud``/``iss`` exact when configured.

    :param key: the HMAC secret or a PEM public key (None with ``key_source``).
    :param key_source: instead of ``key``, an object with ``key_for(kid, alg) ->
        Deferred[key]`` (:class:`realtime.auth.jwks.JWKSKeySource`).
    :param user_claim: the claim naming the user; with the default ``sub``, a token with
        no ``sub`` but a ``userId`` (as some seeds issued) is accepted too.
    :param cache_size: how many verified tokens of the static ``key`` to remember until
        their expiry (:mod:`realtime.auth.tokencache`); 0: none.

    The header's ``alg`` is checked against the allow-list before any key is looked up, so
    ``alg: none`` or an HMAC algorithm against public keys never reaches a key (PyJWT also
    refuses to use a PEM or JWK public key as an HMAC secret).
    """

    def __init__(self, key, algorithms: Sequence[str], audience: Optional[str] = None,
                 issuer: Optional[str] = None, user_claim: str = "sub",
                 roles_claim: str = "roles", leeway: float = JWT_LEEWAY_SECONDS, clock=None,
                 key_source=None, cache_size: int = tokencache.DEFAULT_MAX_ENTRIES):
        if not algorithms:
            raise ValueError("an explicit algorithm allow-list is required")
        if any(a.lower() == "none" for a in algorithms):
            raise ValueError("the 'none' algorithm is never allowed")
        unknown = [a for a in algorithms if a not in jwt.algorithms.get_default_algorithms()]
        if unknown:
            raise ValueError(f"unsupported JWT algorithms: {', '.join(unknown)}")
        if (key is None) == (key_source is None):
            raise ValueError("give exactly one of key and key_source")
        self._key = key
        self._key_source = key_source
        self.algorithms = list(algorithms)
        self.audience = audience
        self.issuer = issuer
        self.user_claim = user_claim
        self.roles_claim = roles_claim
        self.leeway = leeway
        self._clock = clock
        # What PyJWT checks, given once (not merged into its defaults on every token)
        options = {"require": ["exp"], "verify_aud": audience is not None}
        self._decode_kwargs = {}
        if audience is not None:
            self._decode_kwargs["audience"] = audience
        if issuer is not None:
            self._decode_kwargs["issuer"] = issuer
            options["require"].append("iss")
        # HMAC secrets checked once, not per token; tokens of the static key cached
        self._decoder = tokencache.prepared_decoder(key, self.algorithms, options) \
            if key is not None else jwt.PyJWT(options)
        self._cache = tokencache.TokenCache(leeway, cache_size) \
            if key is not None and cache_size else None
        # The common HMAC token accepted without PyJWT's machinery; anything else (and
        # every refusal) through PyJWT, as before: realtime.auth.hs_fastpath
        fast = HMACFastPath(key, self.algorithms, audience, issuer, leeway) \
            if isinstance(key, (str, bytes)) else None
        self._fast = fast if fast else None

    def _now(self) -> Optional[float]:
        return self._clock.seconds() if self._clock is not None else None

    def header(self, token) -> dict:
        """The unverified header, checked: a dict whose ``alg`` is allowed; or AuthFailure."""
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
            raise AuthFailure("auth-failed", "malformed token")
        # Only the header segment is read here (PyJWT's get_unverified_header decodes every
        # segment, which decode() does again): the signature and everything else are
        # checked by decode(), for every token.
        head, dot, rest = token.partition(".")
        if not dot or "." not in rest:
            raise AuthFailure("auth-failed", "malformed token")
        try:
            header = jsonutil.loads(base64url_decode(head))
        except Exception:
            raise AuthFailure("auth-failed", "malformed token") from None
        if not isinstance(header, dict):
            raise AuthFailure("auth-failed", "malformed token")
        if header.get("alg") not in self.algorithms:
            raise AuthFailure("auth-failed", f"algorithm {_shown(header.get('alg'))} not allowed "
                                             f"(allowed: {', '.join(self.algorithms)})")
        return header

    def decode(self, token: str, key=None) -> dict:
        """Verified claims, or :class:`AuthFailure`."""
        claims = None
        if key is None:
            if self._fast is not None and isinstance(token, str) and len(token) <= MAX_TOKEN_LENGTH:
                claims = self._fast.claims(token)
            key = self._key
        if claims is None:
            claims = self._pyjwt_decode(token, key)
        now = self._now()
        if now is not None and claims.get("exp") is not None and float(claims["exp"]) + self.leeway <= now:
            raise AuthFailure("token-expired", "token expired")
        if not isinstance(claims.get("exp"), (int, float)) or isinstance(claims["exp"], bool):
            raise AuthFailure("auth-failed", "bad exp")
        if not claims["exp"] < MAX_EXP:
            # exp in milliseconds (a common mistake) would make a token that never expires
            # and could not be revoked: refused.
            raise AuthFailure("auth-failed", "exp out of range")
        return claims

    def _pyjwt_decode(self, token: str, key) -> dict:
        self.header(token)
        try:
            return self._decoder.decode(token, key, algorithms=self.algorithms,
                                        leeway=self.leeway, **self._decode_kwargs)
        except jwt.ExpiredSignatureError:
            raise AuthFailure("token-expired", "token expired") from None
        except jwt.InvalidTokenError as e:
            raise AuthFailure("auth-failed", _jwt_error_text(e)) from None
        except Exception as e:  # a key of the wrong kind, an unsupported algorithm ...
            raise AuthFailure("auth-failed", type(e).__name__) from None

    def identity(self, token: str, claims: dict) -> Identity:
        user = claims.get(self.user_claim)
        if user is None and self.user_claim == "sub":
            user = claims.get("userId")
        if isinstance(user, int) and not isinstance(user, bool):
            user = str(user)
        if not isinstance(user, str) or not user or len(user) > 256:
            raise AuthFailure("auth-failed", "no user claim")
        roles = claims.get(self.roles_claim, [])
        if isinstance(roles, str):
            roles = [roles]
        if not isinstance(roles, list):
            roles = []
        topics = claims.get("topics", [])
        if not isinstance(topics, list):
            topics = []
        name = claims.get("name")
        return Identity(
            user_id=user,
            name=name if isinstance(name, str) and name else user,
            roles=tuple(r for r in roles if isinstance(r, str)),
            method="jwt",
            expires_at=float(claims["exp"]),
            token_id=token_id(claims, token),
            topics=tuple(t for t in topics if isinstance(t, str) and t),
        )

    @property
    def synchronous(self) -> bool:
        """Whether :meth:`verify_now` can answer (a static key: no key to fetch)."""
        return self._key_source is None

    def verify_now(self, token: str) -> Identity:
        """The :class:`Identity` at once, or raises AuthFailure; only when
        :attr:`synchronous` (JWKS keys may have to be fetched: use :meth:`verify`)."""
        if self._key_source is not None:
            raise TypeError("verify_now needs a static key; JWKS keys are fetched: verify()")
        return self._verify_with_key(token)

    def verify(self, token: str) -> Deferred:
        """A Deferred firing with the :class:`Identity`, or failing with AuthFailure."""
        if self._key_source is None:
            return maybeDeferred(self._verify_with_key, token)
        try:
            header = self.header(token)
        except AuthFailure:
            return fail()
        d = maybeDeferred(self._key_source.key_for, header.get("kid"), header["alg"])
        return d.addCallback(lambda key: self.identity(token, self.decode(token, key)))

    def _verify_with_key(self, token) -> Identity:
        """The static key's path: a token verified before is taken from the cache until
        its expiry (revocation is still checked by the authenticator, every time)."""
        cache = self._cache
        if cache is None or not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
            return self.identity(token, self.decode(token))
        now = self._now()
        identity, expired, key = cache.lookup(token, time.time() if now is None else now)
        if identity is not None:
            return identity
        if expired:
            raise AuthFailure("token-expired", "token expired")
        identity = self.identity(token, self.decode(token))
        cache.put_key(key, identity)
        return identity

