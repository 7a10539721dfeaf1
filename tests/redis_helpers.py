"""
Helpers for the Redis tests: in-process "processes" (a Registry and a RedisBroker each) that
share one redis-server, and fake connections that record what they receive.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks

from realtime import jsonutil
from realtime.hub.registry import Registry
from realtime.redis.broker import RedisBroker
from realtime.redis.url import parse_redis_url
from tests.harness import unique, wait_for


class FakeConnection:
    """What the registry needs of a connection; records messages and closes."""

    def __init__(self, user_id, connection_id=None):
        self.connection_id = connection_id or unique("c")
        self.user_id = user_id
        self.topics = set()
        self.messages = []
        self.roles = ()
        self.closed = None

    def deliver_frame(self, frame: bytes) -> bool:
        if self.closed is not None:
            return False
        # frame_text: 2-byte header up to 125 bytes, 4 bytes up to 64 KiB, 10 beyond.
        length = frame[1] & 0x7F
        offset = 2 if length <= 125 else 4 if length == 126 else 10
        self.messages.append(jsonutil.loads(frame[offset:]))
        return True

    def close_with(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


class Node:
    """One simulated gateway process: a registry and its RedisBroker."""

    def __init__(self, redis_url: str, prefix: str, **kwargs):
        self.registry = Registry()
        self.broker = RedisBroker(self.registry, reactor, parse_redis_url(redis_url),
                                  prefix=prefix, **kwargs)

    def connect(self, user_id) -> FakeConnection:
        conn = FakeConnection(user_id)
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
