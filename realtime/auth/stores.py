"""
Small stores for auth: revoked tokens and signed-message nonces, in memory (one process).
The Redis implementations (every process of a deployment) are in
:mod:`realtime.redis.stores`; both answer the same interface.

Revocation::

    revoke(token_id, exp) -> Deferred[None]     exp: the token's expiry (epoch seconds) or
                                                None; kept until then (no need to remember a
                                                revoked token once it has expired anyway)
    is_revoked(token_id) -> Deferred[bool]

Nonces::

    seen(nonce, ttl) -> Deferred[bool]          True when the nonce was seen before (within
                                                ttl seconds, on any process): a replay.
                                                False: first time; it is now remembered.
"""

from __future__ import annotations

import hashlib
import heapq
from typing import Dict, Optional

from twisted.internet.defer import Deferred, succeed
from zope.interface import Attribute, Interface, implementer

#: How long a revocation without a known expiry is kept (seconds).
DEFAULT_REVOCATION_TTL = 7 * 24 * 3600


class IRevocationStore(Interface):
    """Revoked token ids, each kept until its token's own expiry."""

    recheck_live_connections = Attribute(
        "True when a process may miss a revocation event (several processes): live "
        "connections then re-check their token periodically")

    def revoke(token_id, exp=None):
        """-> Deferred[None]; ``exp``: the token's expiry (epoch seconds) or None."""

    def is_revoked(token_id):
        """-> Deferred[bool]; fails when the store cannot answer (the answer is then no)."""


class INonceStore(Interface):
    """Nonces of signed messages, remembered for a while: a nonce seen twice is a replay."""

    def seen(nonce, ttl):
        """
        -> Deferred[bool]: True when ``nonce`` was seen within ``ttl`` seconds (on any
        process); False the first time, and it is remembered from then on.
        """


def nonce_key(nonce: str) -> str:
    return hashlib.sha256(nonce.encode("utf-8", "surrogatepass")).hexdigest()


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


@implementer(IRevocationStore)
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

    def revoked_now(self, token_id: str) -> bool:
        """:meth:`is_revoked` without a Deferred: this store answers at once (the
        authenticator uses it when a store has it; a store that must ask has not)."""
        return token_id in self._revoked


@implementer(INonceStore)
class MemoryNonceStore:
    def __init__(self, clock):
        self._clock = clock
        self._seen = _Expiring(clock)

    def __len__(self) -> int:
        return len(self._seen)

    def seen(self, nonce: str, ttl: float) -> Deferred:
        key = nonce_key(nonce)
        if key in self._seen:
            return succeed(True)
        self._seen.put(key, self._clock.seconds() + ttl)
        return succeed(False)
