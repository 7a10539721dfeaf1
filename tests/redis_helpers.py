"""
Helpers for the Redis tests: in-process "processes" (a Registry and a RedisBroker each) that
share one redis-server; their connections are the tests' one fake
(:class:`tests.fakes.FakeConnection`), recording what they receive.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks

from realtime.hub.registry import Registry
from realtime.redis.broker import RedisBroker
from realtime.redis.url import parse_redis_url
from tests.fakes import FakeConnection
from tests.harness import unique, wait_for


class Node:
    """One simulated gateway process: a registry and its RedisBroker."""

    def __init__(self, redis_url: str, prefix: str, **kwargs):
        self.registry = Registry()
        self.broker = RedisBroker(self.registry, reactor, parse_redis_url(redis_url),
                                  prefix=prefix, **kwargs)

    def connect(self, user_id) -> FakeConnection:
        conn = FakeConnection(None, user_id, connection_id=unique("c"))
        self.registry.add(conn)
        return conn

    def ready(self) -> bool:
        return self.broker.redis_state == "connected"


@inlineCallbacks
def start_nodes(test, redis_url, count=3, prefix=None, **kwargs):
    """Start ``count`` nodes sharing a fresh key prefix; stopped in the test's cleanup."""
    prefix = prefix or unique("t") + ":"
    nodes = [Node(redis_url, prefix, **kwargs) for _ in range(count)]
    for node in nodes:
        node.broker.start()
        test.addCleanup(node.broker.stop)
    # "connected" means the reader has found its position: nothing published now is missed.
    yield wait_for(lambda: all(n.ready() for n in nodes), what="the brokers to connect")
    return nodes
