"""
One suite per shared-state interface (presence, the revocation store, the nonce store), run
against each implementation: in memory (one process) and in a real redis-server (every
process).  Each implementation provides its zope interface (``verifyObject``) and answers
the same questions the same way.  What only one of them does (leases, expiry on a Clock,
Redis going away) is tested beside it (tests/test_redis_presence.py, test_redis_stores.py).
"""

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from realtime.auth.stores import (
    INonceStore,
    IRevocationStore,
    MemoryNonceStore,
    MemoryRevocationStore,
)
from realtime.hub.presence import IPresence, LocalPresence
from realtime.redis.client import RedisClient
from realtime.redis.presence import RedisPresence
from realtime.redis.stores import RedisNonceStore, RedisRevocationStore
from realtime.redis.url import parse_redis_url
from tests import harness
from tests.harness import unique, wait_for


@inlineCallbacks
def redis_client(test):
    """A RedisClient connected to the test run's redis-server, stopped at cleanup."""
    client = RedisClient(reactor, parse_redis_url(harness.redis().url), timeout=2.0,
                         name="interfaces")
    client.start()
    test.addCleanup(client.stop)
    yield wait_for(lambda: client.connected, what="redis")
    return client


class RevocationStoreContract:
    """What every IRevocationStore does; ``make()`` fires with a fresh, empty store."""

    timeout = 60

    @inlineCallbacks
    def test_provides_the_interface(self):
        """The store provides IRevocationStore, its attribute included."""
        store = yield self.make()
        self.assertTrue(verifyObject(IRevocationStore, store))
        self.assertIn(store.recheck_live_connections, (True, False))

    @inlineCallbacks
    def test_revoked_until_expiry(self):
        """A revoked token id is revoked; another is not."""
        store = yield self.make()
        yield store.revoke("jti:a", reactor.seconds() + 60)
        self.assertTrue((yield store.is_revoked("jti:a")))
        self.assertFalse((yield store.is_revoked("jti:b")))

    @inlineCallbacks
    def test_without_expiry_kept(self):
        """A revocation without a known expiry is kept (for the default time)."""
        store = yield self.make()
        yield store.revoke("sha256:ab", None)
        self.assertTrue((yield store.is_revoked("sha256:ab")))

    @inlineCallbacks
    def test_already_expired_not_stored(self):
        """A token that has expired already is not stored (it is refused for that anyway)."""
        store = yield self.make()
        yield store.revoke("jti:old", reactor.seconds() - 5)
        self.assertFalse((yield store.is_revoked("jti:old")))


class NonceStoreContract:
    """What every INonceStore does; ``make()`` fires with a fresh, empty store."""

    timeout = 60

    @inlineCallbacks
    def test_provides_the_interface(self):
        """The store provides INonceStore."""
        store = yield self.make()
        self.assertTrue(verifyObject(INonceStore, store))

    @inlineCallbacks
    def test_seen_once(self):
        """A nonce is new the first time, a replay the second; another nonce is new."""
        store = yield self.make()
        self.assertFalse((yield store.seen("n1", 60)))
        self.assertTrue((yield store.seen("n1", 60)))
        self.assertFalse((yield store.seen("n2", 60)))


class PresenceContract:
    """What every IPresence does; ``make()`` fires with a fresh, started presence."""

    timeout = 60

    @inlineCallbacks
    def test_provides_the_interface(self):
        """The presence provides IPresence, its process id included."""
        presence = yield self.make()
        self.assertTrue(verifyObject(IPresence, presence))
        self.assertIsInstance(presence.process_id, str)

    @inlineCallbacks
    def test_counts_follow_connections(self):
        """Opened connections are counted per user and in total; a closed one is not."""
        presence = yield self.make()
        self.assertTrue((yield presence.connection_opened("c1", "alice")))
        self.assertTrue((yield presence.connection_opened("c2", "alice")))
        self.assertTrue((yield presence.connection_opened("c3", "bob")))
        self.assertEqual((yield presence.connection_count("alice")), 2)
        self.assertEqual((yield presence.users()), {"alice": 2, "bob": 1})
        self.assertEqual((yield presence.total()), 3)
        presence.connection_closed("c1", "alice")
        yield self.settled(presence, {"alice": 1, "bob": 1})
        self.assertEqual((yield presence.connection_count("alice")), 1)
        self.assertEqual((yield presence.connection_count("nobody")), 0)

    @inlineCallbacks
    def test_limit_refuses_and_records_nothing(self):
        """With a limit, a connection past it is refused (False) and not counted."""
        presence = yield self.make()
        self.assertTrue((yield presence.connection_opened("c1", "alice", limit=1)))
        self.assertFalse((yield presence.connection_opened("c2", "alice", limit=1)))
        self.assertEqual((yield presence.connection_count("alice")), 1)

    @inlineCallbacks
    def test_processes(self):
        """This process is among the live ones, with its own counts."""
        presence = yield self.make()
        yield presence.connection_opened("c1", "alice")
        self.assertIn(presence.process_id, (yield presence.processes()))
        counts = yield presence.process_counts()
        self.assertEqual(counts[presence.process_id], {"authenticated": 1, "users": 1})

    @inlineCallbacks
    def test_session_numbers_grow(self):
        """new_session hands out numbers that only grow."""
        presence = yield self.make()
        first = yield presence.new_session("alice")
        second = yield presence.new_session("alice")
        self.assertGreater(second, first)

    @inlineCallbacks
    def settled(self, presence, expected, seconds=10.0):
        """Closes may be fire-and-forget writes: wait (bounded) until users() shows them."""
        deadline = reactor.seconds() + seconds
        while True:
            users = yield presence.users()
            if users == expected:
                return users
            if reactor.seconds() > deadline:
                raise AssertionError(f"presence is {users}, expected {expected}")
            yield harness.sleep(0.02)


class MemoryRevocationStoreTests(RevocationStoreContract, unittest.TestCase):
    def make(self):
        return MemoryRevocationStore(reactor)


class RedisRevocationStoreTests(RevocationStoreContract, unittest.TestCase):
    @inlineCallbacks
    def make(self):
        client = yield redis_client(self)
        return RedisRevocationStore(client, reactor, unique("iface") + ":")


class MemoryNonceStoreTests(NonceStoreContract, unittest.TestCase):
    def make(self):
        return MemoryNonceStore(reactor)


class RedisNonceStoreTests(NonceStoreContract, unittest.TestCase):
    @inlineCallbacks
    def make(self):
        client = yield redis_client(self)
        return RedisNonceStore(client, unique("iface") + ":")


class LocalPresenceTests(PresenceContract, unittest.TestCase):
    def make(self):
        presence = LocalPresence(reactor)
        presence.start()
        self.addCleanup(presence.stop)
        return presence


class RedisPresenceTests(PresenceContract, unittest.TestCase):
    @inlineCallbacks
    def make(self):
        client = yield redis_client(self)
        presence = RedisPresence(client, reactor, prefix=unique("iface") + ":",
                                 process_id=unique("proc"), ttl=30.0)
        presence.start()
        self.addCleanup(presence.stop)
        yield wait_for(lambda: presence.renewals, what="the first lease")
        return presence
