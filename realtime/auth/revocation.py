"""
Token revocation: a revoked JWT is refused until its own expiry, and the live connections
that authenticated with it are closed (``auth_failed`` reason ``revoked``, 4001).

A token is known by its *token id* (:func:`realtime.auth.identity.token_id`): ``jti:<jti>`` when the
token has a ``jti``, else ``sha256:<hex digest of the token>``; the token itself is never
stored or logged.

- The stores (:mod:`realtime.redis.stores`: in memory for one process, in Redis for many,
  key ``<prefix>revoked:<token_id>`` with the token's remaining lifetime) answer
  ``revoke(token_id, expires_at)`` and ``is_revoked(token_id) -> Deferred[bool]``.  A check
  that cannot be answered fails, and the authenticator then refuses with ``unavailable``
  (4101): fail closed.
- :class:`Revoker` stores the revocation, then publishes ``{"t": "revoke", "token_id": …}``
  on the broker so that every process closes the connections using the token
  (:meth:`realtime.hub.registry.Registry.dispatch`).
- :func:`revocation_target` reads what ``POST /websocket/tokens/revoke``
  (:class:`realtime.http.rest.RevokeToken`) was given: ``{"token": …}`` or
  ``{"jti": …, "exp": <seconds since the epoch>}``.  The token is not verified (the caller
  is an admin; a token that does not verify is refused anyway): only its ``jti`` and
  ``exp`` are read.
"""

from __future__ import annotations

import jwt
from twisted.internet.defer import inlineCallbacks
from twisted.logger import Logger

from realtime.auth.identity import JWT_LEEWAY_SECONDS, MAX_EXP, MAX_TOKEN_LENGTH
from realtime.auth.identity import token_id as token_id_of
from realtime.vocabulary import revoke_event

MAX_JTI_LENGTH = 256


class Revoker:
    """Revoke a token everywhere: remember it, then close its live connections."""

    _log = Logger()

    def __init__(self, store, broker, clock):
        self.store = store
        self._broker = broker
        self._clock = clock

    @inlineCallbacks
    def revoke(self, token_id: str, expires_at: float):
        """Fires with the number of local connections closed; fails if not stored."""
        # Kept as long as the token could still be accepted: its exp plus the leeway.
        yield self.store.revoke(token_id, expires_at + JWT_LEEWAY_SECONDS + 1)
        self._log.info("token {token_id} revoked", token_id=_short(token_id))
        try:
            closed = yield self._broker.publish(revoke_event(token_id))
        except Exception:
            # Stored: the token is refused from now on; its live connections elsewhere
            # are closed when they next authenticate or expire.
            self._log.failure("publishing a revocation failed")
            closed = 0
        return closed


def _short(token_id: str) -> str:
    """
    A token id for logs: a jti (not a secret; escaped, since an admin-given jti may hold
    anything, a newline included) or a hash prefix.
    """
    if token_id.startswith("jti:"):
        return token_id[:80].encode("unicode_escape").decode("ascii")
    return token_id[:23]


def revocation_target(body) -> tuple:
    """
    ``(token_id, expires_at)`` from a request body, or ValueError with a message for the
    client.  ``{"token": JWT}`` (its ``jti``/hash and ``exp`` are read, unverified), or
    ``{"jti": str, "exp": number}``.
    """
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    if "token" in body:
        token = body["token"]
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
            raise ValueError("token must be a JWT")
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
        except Exception:
            raise ValueError("token is not a JWT") from None
        exp = claims.get("exp") if isinstance(claims, dict) else None
        if not _is_number(exp):
            raise ValueError("the token has no exp")
        return token_id_of(claims, token), float(exp)
    jti, exp = body.get("jti"), body.get("exp")
    if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_LENGTH:
        raise ValueError("give token, or jti (a string) and exp")
    if not _is_number(exp):
        raise ValueError("exp must be a number (seconds since the epoch)")
    return "jti:" + jti, float(exp)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value \
        and abs(value) < MAX_EXP  # as the verifier accepts it
