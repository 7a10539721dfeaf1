"""
The shared-state objects of a deployment, chosen by the configuration.

Without ``REDIS_URL``: one process, :class:`MemoryBroker`, :class:`LocalPresence`, memory
stores and message history.  With it: :class:`RedisBroker` (events to every process),
:class:`RedisPresence` (connections of every process, on renewed leases), Redis revocation
and nonce stores and message history; they share the broker's command connection, and
every key starts with ``REDIS_PREFIX``.
"""

from __future__ import annotations

import dataclasses

from realtime.auth.stores import MemoryNonceStore, MemoryRevocationStore
from realtime.hub.broker import MemoryBroker
from realtime.hub.history import MemoryHistory
from realtime.hub.presence import LocalPresence
from realtime.redis.broker import RedisBroker
from realtime.redis.history import RedisHistory
from realtime.redis.presence import RedisPresence
from realtime.redis.stores import RedisNonceStore, RedisRevocationStore
from realtime.redis.url import parse_redis_url


@dataclasses.dataclass
class ClusterState:
    broker: object
    presence: object
    revocations: object  # revoke(token_id, exp), is_revoked(token_id)
    nonces: object  # seen(nonce, ttl)
    history: object = None  # IHistory (realtime.hub.history)

    def start(self) -> None:
        self.broker.start()
        self.presence.start()

    def stop(self):
        """Leave presence first (while Redis is still reachable), then stop the broker."""
        if self.history is not None:
            self.history.stop()
        d = self.presence.stop()
        d.addErrback(lambda f: None)
        return d.addCallback(lambda _: self.broker.stop())


def make_cluster_state(config, reactor, registry) -> ClusterState:
    history_ttl = config.history_ttl_ms / 1000.0
    if not config.redis_url:
        return ClusterState(MemoryBroker(registry), LocalPresence(reactor),
                            MemoryRevocationStore(reactor), MemoryNonceStore(reactor),
                            MemoryHistory(reactor, config.history_size, history_ttl))

    broker = RedisBroker(registry, reactor, parse_redis_url(config.redis_url),
                         prefix=config.redis_prefix, timeout=config.redis_timeout_ms / 1000.0,
                         stream_maxlen=config.redis_stream_maxlen)
    presence = RedisPresence(broker.commands, reactor, prefix=config.redis_prefix,
                             process_id=broker.process_id, ttl=config.presence_ttl_ms / 1000.0)
    return ClusterState(broker, presence,
                        RedisRevocationStore(broker.commands, reactor, config.redis_prefix),
                        RedisNonceStore(broker.commands, config.redis_prefix),
                        RedisHistory(broker.commands, reactor, config.redis_prefix,
                                     config.history_size, history_ttl))
