"""
Small shared stores for auth: revoked tokens and signed-message nonces.

Each comes in two implementations with one interface: in memory (one process) and in Redis
(every process of a deployment sees the same answers).

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
:class:`realtime.redis_client.RedisUnavailable`: an auth question Redis cannot answer is
answered no (DESIGN.md: close 4101 / ``unavailable``; a signed message is refused).
"""

from __future__ import annotations

import hashlib
import heapq
from typing import Dict, Optional

from twisted.internet.defer import Deferred, succeed

#: How long a revocation without a known expiry is kept (seconds).
DEFAULT_REVOCATION_TTL = 7 * 24 * 3600


def _nonce_key(nonce: str) -> str:
    return hashlib.sha256(nonce.encode("utf-8", "surrogatepass")).hexdigest()


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
        d = self._client.execute("SET", self._prefix + _nonce_key(nonce), "1", "NX", "PX", ms)
        return d.addCallback(lambda answer: answer is None)


class _Expiring:
    """key -> expiry, with expired keys dropped as time passes (bounded memory)."""

    def __init__(self, clock):
        self._clock = clock
        self._expiry: Dict[str, float] = {}
        self._heap = []

    def _purge(self) -> None:
        now = self._clock.seconds()
        while self._heap and self._heap[0][0] <= now:
            when, key = heapq.heappop(self._heap)
            if self._expiry.get(key) == when:
                del self._expiry[key]

    def __contains__(self, key) -> bool:
        self._purge()
        return key in self._expiry

    def put(self, key: str, until: float) -> None:
        self._purge()
        self._expiry[key] = until
        heapq.heappush(self._heap, (until, key))

    def __len__(self) -> int:
        self._purge()
        return len(self._expiry)


class MemoryRevocationStore:
    #: One process: a revocation reaches that process's connections at once (the memory
    #: broker cannot lose the event), so live connections need no periodic re-check.
    recheck_live_connections = False

    def __init__(self, clock):
        self._clock = clock
        self._revoked = _Expiring(clock)

    def __len__(self) -> int:
        return len(self._revoked)

    def revoke(self, token_id: str, exp: Optional[float] = None) -> Deferred:
        now = self._clock.seconds()
        if exp is None or exp > now:
            until = exp if exp is not None else now + DEFAULT_REVOCATION_TTL
            self._revoked.put(token_id, until)
        return succeed(None)

    def is_revoked(self, token_id: str) -> Deferred:
        return succeed(token_id in self._revoked)


class MemoryNonceStore:
    def __init__(self, clock):
        self._clock = clock
        self._seen = _Expiring(clock)

    def __len__(self) -> int:
        return len(self._seen)

    def seen(self, nonce: str, ttl: float) -> Deferred:
        key = _nonce_key(nonce)
        if key in self._seen:
            return succeed(True)
        self._seen.put(key, self._clock.seconds() + ttl)
        return succeed(False)
