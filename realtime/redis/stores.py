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

Redis: ``SET P revoked:<token id> 1 EXAT <exp>`` / ``MGET``; ``SET P nonce:<sha256> 1 NX
PX <ttl>`` (one round trip, atomic, so two processes racing on one nonce cannot both accept
it).  Keys hold a SHA-256 of the nonce, so a client cannot choose key names or sizes;
token ids are already ``jti:…`` or ``sha256:…`` (never the token).

The checks asked during one reactor turn (a reconnect storm: hundreds of handshakes per
turn) go to Redis as one ``MGET`` of their keys, at most ``MAX_BATCH`` a command, each
answered from its own key: one command instead of one each, where txredisapi's per-command
work was about 15 % of a connection's setup with Redis (py-spy).

When Redis cannot answer, the Deferred fails with
:class:`realtime.redis.client.RedisUnavailable`: an auth question Redis cannot answer is
answered no (docs/protocol.rst: close 4101 / ``unavailable``; a signed message is refused).
"""

from __future__ import annotations

from typing import Optional

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from realtime.auth.stores import DEFAULT_REVOCATION_TTL, INonceStore, IRevocationStore, nonce_key


@implementer(IRevocationStore)
class RedisRevocationStore:
    #: Several processes: a process that missed the revocation event (away from Redis for
    #: longer than the stream covers) still finds the revocation when it re-checks.
    recheck_live_connections = True

    #: most keys in one MGET
    MAX_BATCH = 512

    def __init__(self, client, clock, prefix: str = "realtime:"):
        self._client = client
        self._clock = clock
        self._prefix = prefix + "revoked:"
        self._asked = []  # (key, Deferred) asked this reactor turn
        self._flush_call = None

    def revoke(self, token_id: str, exp: Optional[float] = None) -> Deferred:
        now = self._clock.seconds()
        if exp is not None and exp <= now:
            return succeed(None)  # expired already: refused for that reason anyway
        seconds = int(exp - now) + 1 if exp is not None else DEFAULT_REVOCATION_TTL
        d = self._client.execute("SET", self._prefix + token_id, "1", "EX", str(seconds))
        return d.addCallback(lambda _: None)

    def admission_key(self, token_id: str) -> str:
        """
        The Redis key of ``token_id``'s revocation, for presence's admission script to check
        in the same round trip that admits the connection
        (:meth:`realtime.redis.presence.RedisPresence.connection_opened`, ``revoked_key``):
        a handshake's token is then checked once, atomically with its admission.
        """
        return self._prefix + token_id

    def is_revoked(self, token_id: str) -> Deferred:
        d = Deferred()
        self._asked.append((self._prefix + token_id, d))
        if self._flush_call is None:
            self._flush_call = self._clock.callLater(0, self._flush)
        return d

    def _flush(self) -> None:
        self._flush_call = None
        asked, self._asked = self._asked, []
        for i in range(0, len(asked), self.MAX_BATCH):
            self._ask(asked[i:i + self.MAX_BATCH])

    def _ask(self, batch) -> None:
        try:
            d = self._client.execute("MGET", *[key for key, _ in batch])
        except Exception as e:  # noqa: BLE001 - whatever it is, every check fails with it
            d = fail(e)

        def answered(values):
            for (_, waiting), value in zip(batch, values):
                waiting.callback(value is not None)

        def failed(failure):
            for _, waiting in batch:
                waiting.errback(failure)

        d.addCallbacks(answered, failed)


@implementer(INonceStore)
class RedisNonceStore:
    def __init__(self, client, prefix: str = "realtime:"):
        self._client = client
        self._prefix = prefix + "nonce:"

    def seen(self, nonce: str, ttl: float) -> Deferred:
        ms = str(max(1, int(ttl * 1000)))
        d = self._client.execute("SET", self._prefix + nonce_key(nonce), "1", "NX", "PX", ms)
        return d.addCallback(lambda answer: answer is None)
