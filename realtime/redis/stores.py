"""
The Redis implementations of the auth stores (revoked tokens, signed-message nonces): every
process of a deployment sees the same answers.  The one-process implementations, and the
interface, are in :mod:`realtime.auth.stores`.

Revocation::

    revoke(token_id, exp) -> Deferred[None]     exp: the token's expiry (epoch seconds) or
                                                None; kept until then (no need to remember a
                                                revoked token once it has expired anyway)
    is_revoked(token_id) -> Deferred[bool]

Nonces::

    seen(nonce, ttl) -> Deferred[bool]          True when the nonce was seen before (within
                                                ttl seconds, on any process): a replay.
                                                False: first time; it is now remembered.

Redis: ``SET P revoked:<token id> 1 EXAT <exp>`` / ``EXISTS``; ``SET P nonce:<sha256> 1 NX
PX <ttl>`` (one round trip, atomic, so two processes racing on one nonce cannot both accept
it).  Keys hold a SHA-256 of the nonce, so a client cannot choose key names or sizes;
token ids are already ``jti:…`` or ``sha256:…`` (never the token).

When Redis cannot answer, the Deferred fails with
:class:`realtime.redis.client.RedisUnavailable`: an auth question Redis cannot answer is
answered no (docs/protocol.rst: close 4101 / ``unavailable``; a signed message is refused).
"""

from __future__ import annotations

from typing import Optional

from twisted.internet.defer import Deferred, succeed

from realtime.auth.stores import DEFAULT_REVOCATION_TTL, nonce_key


class RedisRevocationStore:
    #: Several processes: a process that missed the revocation event (away from Redis for
    #: longer than the stream covers) still finds the revocation when it re-checks.
    recheck_live_connections = True

    def __init__(self, client, clock, prefix: str = "realtime:"):
        self._client = client
        self._clock = clock
        self._prefix = prefix + "revoked:"

    def revoke(self, token_id: str, exp: Optional[float] = None) -> Deferred:
        now = self._clock.seconds()
        if exp is not None and exp <= now:
            return succeed(None)  # expired already: refused for that reason anyway
        seconds = int(exp - now) + 1 if exp is not None else DEFAULT_REVOCATION_TTL
        d = self._client.execute("SET", self._prefix + token_id, "1", "EX", str(seconds))
        return d.addCallback(lambda _: None)

    def is_revoked(self, token_id: str) -> Deferred:
        d = self._client.execute("EXISTS", self._prefix + token_id)
        return d.addCallback(lambda n: int(n) > 0)


class RedisNonceStore:
    def __init__(self, client, prefix: str = "realtime:"):
        self._client = client
        self._prefix = prefix + "nonce:"

    def seen(self, nonce: str, ttl: float) -> Deferred:
        ms = str(max(1, int(ttl * 1000)))
        d = self._client.execute("SET", self._prefix + nonce_key(nonce), "1", "NX", "PX", ms)
        return d.addCallback(lambda answer: answer is None)
