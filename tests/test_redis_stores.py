"""Revocation and nonce stores: in memory (Clock) and in a real redis-server."""

import time

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial import unittest

from realtime.auth.stores import MemoryNonceStore, MemoryRevocationStore
from realtime.redis.client import RedisClient, RedisUnavailable
from realtime.redis.stores import RedisNonceStore, RedisRevocationStore
from realtime.redis.url import parse_redis_url
from tests import harness
from tests.harness import RedisServer, unique, wait_for


@inlineCallbacks
def connected_client(test, url, timeout=2.0):
    client = RedisClient(reactor, parse_redis_url(url), timeout=timeout, name="stores")
    client.start()
    test.addCleanup(client.stop)
    yield wait_for(lambda: client.connected, what="redis")
    return client


class RedisStoreTests(unittest.TestCase):
    timeout = 60

    @inlineCallbacks
    def setUp(self):
        self.prefix = unique("s") + ":"
        self.clients = []
        for _ in range(2):
            self.clients.append((yield connected_client(self, harness.redis().url)))

    @inlineCallbacks
    def test_revocation_seen_by_every_process(self):
        """A token revoked on one process is revoked on another; others are not."""
        here = RedisRevocationStore(self.clients[0], reactor, self.prefix)
        there = RedisRevocationStore(self.clients[1], reactor, self.prefix)
        yield here.revoke("jti:abc", time.time() + 60)
        self.assertTrue((yield there.is_revoked("jti:abc")))
        self.assertFalse((yield there.is_revoked("jti:other")))

    @inlineCallbacks
    def test_checks_of_one_turn_are_one_command(self):
        """Checks asked in one reactor turn: one MGET, each answered for its own token."""
        store = RedisRevocationStore(self.clients[0], reactor, self.prefix)
        store.MAX_BATCH = 3  # and split past the batch size
        yield store.revoke("jti:r1", time.time() + 60)
        yield store.revoke("jti:r4", time.time() + 60)
        sent = []
        original = self.clients[0].execute

        def recording(*args, **kwargs):
            sent.append(args[0])
            return original(*args, **kwargs)

        self.clients[0].execute = recording
        ids = [f"jti:r{i}" for i in range(6)]
        answers = yield gatherResults([store.is_revoked(t) for t in ids])
        self.assertEqual(answers, [False, True, False, False, True, False])
        self.assertEqual(sent, ["MGET", "MGET"])

    @inlineCallbacks
    def test_revocation_kept_until_expiry_only(self):
        """A revocation expires with the token (no need to keep it longer)."""
        store = RedisRevocationStore(self.clients[0], reactor, self.prefix)
        yield store.revoke("jti:short", time.time() + 1)
        ttl = yield self.clients[0].execute("TTL", self.prefix + "revoked:jti:short")
        self.assertIn(int(ttl), (1, 2))
        yield store.revoke("jti:past", time.time() - 5)
        self.assertFalse((yield store.is_revoked("jti:past")))

    @inlineCallbacks
    def test_nonce_accepted_once_across_processes(self):
        """A nonce is new once; seen again on any process (even racing) it is a replay."""
        here = RedisNonceStore(self.clients[0], self.prefix)
        there = RedisNonceStore(self.clients[1], self.prefix)
        results = yield gatherResults([here.seen("n-1", 300), there.seen("n-1", 300)])
        self.assertEqual(sorted(results), [False, True])
        self.assertTrue((yield here.seen("n-1", 300)))
        self.assertFalse((yield there.seen("n-2", 300)))

    @inlineCallbacks
    def test_nonce_forgotten_after_ttl(self):
        """A nonce is remembered for ttl only."""
        store = RedisNonceStore(self.clients[0], self.prefix)
        self.assertFalse((yield store.seen("n-ttl", 0.2)))
        yield harness.sleep(0.4)
        self.assertFalse((yield store.seen("n-ttl", 0.2)))


class UnavailableTests(unittest.TestCase):
    timeout = 60

    @inlineCallbacks
    def test_stores_fail_when_redis_is_away(self):
        """With Redis down, the stores fail with RedisUnavailable at once (answer: no)."""
        server = RedisServer().start()
        self.addCleanup(server.cleanup)
        client = yield connected_client(self, server.url)
        server.stop()
        yield wait_for(lambda: not client.connected, what="the loss to be noticed")
        with self.assertRaises(RedisUnavailable):
            yield RedisRevocationStore(client, reactor).is_revoked("jti:x")
        with self.assertRaises(RedisUnavailable):
            yield RedisNonceStore(client).seen("n", 10)


class MemoryStoreTests(unittest.TestCase):
    def test_memory_revocation(self):
        """Revoked until the token's expiry, then forgotten (memory freed)."""
        clock = Clock()
        clock.advance(1000)
        store = MemoryRevocationStore(clock)
        store.revoke("jti:a", 1010)
        self.assertTrue(self.successResultOf(store.is_revoked("jti:a")))
        self.assertFalse(self.successResultOf(store.is_revoked("jti:b")))
        clock.advance(11)
        self.assertFalse(self.successResultOf(store.is_revoked("jti:a")))
        self.assertEqual(len(store), 0)

    def test_already_expired_not_stored(self):
        """Revoking an expired token stores nothing (it is refused anyway)."""
        clock = Clock()
        clock.advance(1000)
        store = MemoryRevocationStore(clock)
        store.revoke("jti:old", 999)
        self.assertEqual(len(store), 0)

    def test_memory_nonces(self):
        """A nonce is a replay within ttl, new again after; memory stays bounded."""
        clock = Clock()
        store = MemoryNonceStore(clock)
        self.assertFalse(self.successResultOf(store.seen("n", 10)))
        self.assertTrue(self.successResultOf(store.seen("n", 10)))
        for i in range(100):
            store.seen(f"x{i}", 5)
        clock.advance(10)
        self.assertFalse(self.successResultOf(store.seen("n", 10)))
        self.assertEqual(len(store._seen), 1)
