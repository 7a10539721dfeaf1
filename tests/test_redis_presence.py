"""
RedisPresence against a real redis-server: several in-process "processes" (a presence each,
with its own process id) share one Redis, as several gateway processes do.
"""

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial import unittest

from realtime.hub.presence import LocalPresence
from realtime.redis.client import RedisClient, RedisUnavailable
from realtime.redis.presence import RedisPresence
from realtime.redis.url import parse_redis_url
from tests import harness
from tests.harness import RedisServer, unique, wait_for


@inlineCallbacks
def start_presences(test, url, count=3, ttl=30.0, prefix=None):
    prefix = prefix or unique("p") + ":"
    presences = []
    for n in range(count):
        client = RedisClient(reactor, parse_redis_url(url), timeout=2.0, name=f"proc{n}")
        client.start()
        test.addCleanup(client.stop)
        presence = RedisPresence(client, reactor, prefix=prefix, process_id=unique("proc"),
                                 ttl=ttl)
        presences.append(presence)
    yield wait_for(lambda: all(p._client.connected for p in presences), what="connections")
    for presence in presences:
        presence.start()
        test.addCleanup(presence.stop)
    yield wait_for(lambda: all(p.renewals for p in presences), what="first leases")
    return presences


@inlineCallbacks
def wait_users(presence, expected, seconds=10.0):
    """Closes are fire-and-forget writes on the closing process's connection: wait."""
    deadline = reactor.seconds() + seconds
    while True:
        users = yield presence.users()
        if users == expected:
            return users
        if reactor.seconds() > deadline:
            raise AssertionError(f"presence is {users}, expected {expected}")
        yield harness.sleep(0.02)


class RedisPresenceTests(unittest.TestCase):
    timeout = 60

    @inlineCallbacks
    def setUp(self):
        self.redis = harness.redis()
        self.procs = yield start_presences(self, self.redis.url)

    @inlineCallbacks
    def test_counts_across_processes(self):
        """users(), connection_count() and total() sum the connections of every process."""
        a, b, c = self.procs
        alice, bob = unique("alice"), unique("bob")
        yield a.connection_opened("a1", alice)
        yield b.connection_opened("b1", alice)
        yield b.connection_opened("b2", alice)
        yield c.connection_opened("c1", bob)
        for proc in self.procs:
            self.assertEqual((yield proc.users()), {alice: 3, bob: 1})
            self.assertEqual((yield proc.connection_count(alice)), 3)
            self.assertEqual((yield proc.total()), 4)
        b.connection_closed("b1", alice)
        b.connection_closed("b1", alice)  # idempotent
        c.connection_closed("c1", bob)
        yield wait_users(a, {alice: 2})
        self.assertEqual((yield a.connection_count(bob)), 0)
        self.assertEqual(sorted((yield a.processes())), sorted(p.process_id for p in self.procs))

    @inlineCallbacks
    def test_process_counts(self):
        """process_counts() gives each live process's authenticated connections and users."""
        a, b, c = self.procs
        alice, bob = unique("alice"), unique("bob")
        yield a.connection_opened("a1", alice)
        yield b.connection_opened("b1", alice)
        yield b.connection_opened("b2", alice)
        yield b.connection_opened("b3", bob)
        expected = {a.process_id: {"authenticated": 1, "users": 1},
                    b.process_id: {"authenticated": 3, "users": 2},
                    c.process_id: {"authenticated": 0, "users": 0}}
        for proc in self.procs:
            counts = yield proc.process_counts()
            self.assertEqual(counts, expected)
        yield c.stop()
        counts = yield a.process_counts()
        self.assertNotIn(c.process_id, counts)

    @inlineCallbacks
    def test_limit_across_processes(self):
        """With a limit of 2, the third connection anywhere is refused and not counted."""
        a, b, c = self.procs
        user = unique("u")
        self.assertTrue((yield a.connection_opened("a1", user, limit=2)))
        self.assertTrue((yield b.connection_opened("b1", user, limit=2)))
        self.assertFalse((yield c.connection_opened("c1", user, limit=2)))
        self.assertFalse((yield a.connection_opened("a2", user, limit=2)))
        self.assertEqual((yield c.connection_count(user)), 2)
        a.connection_closed("a1", user)
        yield wait_users(c, {user: 1})
        self.assertTrue((yield c.connection_opened("c2", user, limit=2)))
        self.assertEqual((yield b.users()), {user: 2})

    @inlineCallbacks
    def test_concurrent_opens_respect_the_limit(self):
        """Twenty simultaneous opens of one user on three processes admit exactly the limit."""
        user = unique("u")
        results = yield gatherResults([
            proc.connection_opened(f"{n}-{i}", user, limit=5)
            for i in range(7) for n, proc in enumerate(self.procs)][:20])
        self.assertEqual(results.count(True), 5)
        self.assertEqual((yield self.procs[0].connection_count(user)), 5)

    @inlineCallbacks
    def test_stop_leaves_at_once(self):
        """A process that stops normally disappears from presence at once."""
        a, b, _ = self.procs
        user = unique("u")
        yield b.connection_opened("b1", user)
        yield b.stop()
        self.assertEqual((yield a.connection_count(user)), 0)
        self.assertNotIn(b.process_id, (yield a.processes()))

    @inlineCallbacks
    def test_session_numbers_grow_across_processes(self):
        """new_session numbers handed out by different processes strictly increase."""
        numbers = []
        for _ in range(5):
            for proc in self.procs:
                numbers.append((yield proc.new_session("u")))
        self.assertEqual(numbers, sorted(set(numbers)))


class LeaseTests(unittest.TestCase):
    timeout = 60

    @inlineCallbacks
    def test_dead_process_expires_within_the_lease(self):
        """
        A process that stops renewing (as after SIGKILL) drops out of presence within its
        lease time, while a live process stays.
        """
        a, b = yield start_presences(self, harness.redis().url, count=2, ttl=1.0)
        user = unique("u")
        yield a.connection_opened("a1", user)
        yield b.connection_opened("b1", user)
        self.assertEqual((yield a.connection_count(user)), 2)
        b._renewer.stop()  # b "dies": no renewal, no goodbye
        started = reactor.seconds()
        yield wait_for(lambda: b._client.connected, what="b")  # b's connection stays up
        counts = []

        @inlineCallbacks
        def check():
            counts.append((yield a.connection_count(user)))

        while not counts or counts[-1] != 1:
            yield check()
            yield harness.sleep(0.05)
            self.assertLess(reactor.seconds() - started, 5.0, "b never expired")
        self.assertLessEqual(reactor.seconds() - started, 1.5)
        self.assertNotIn(b.process_id, (yield a.processes()))
        # a keeps renewing: still there well after its ttl.
        yield harness.sleep(1.5)
        self.assertEqual((yield a.connection_count(user)), 1)

    @inlineCallbacks
    def test_presence_comes_back_after_redis_restart(self):
        """After Redis restarts empty, each process writes its counts back by itself."""
        server = RedisServer().start()
        self.addCleanup(server.cleanup)
        a, b = yield start_presences(self, server.url, count=2, ttl=1.5)
        user = unique("u")
        yield a.connection_opened("a1", user)
        yield b.connection_opened("b1", user)
        server.stop()
        with self.assertRaises(RedisUnavailable):
            yield a.users()
        # While Redis is away a connection is still admitted (limit per process).
        self.assertTrue((yield a.connection_opened("a2", user, limit=5)))
        server.start()
        found = []

        @inlineCallbacks
        def poll():
            try:
                found.append((yield a.users()))
            except RedisUnavailable:
                pass

        started = reactor.seconds()
        while not found or found[-1] != {user: 3}:
            yield poll()
            yield harness.sleep(0.1)
            self.assertLess(reactor.seconds() - started, 10, f"presence did not return: {found[-1:]}")


class LocalPresenceTests(unittest.TestCase):
    def test_local_counts_and_limit(self):
        """LocalPresence counts this process's connections and enforces the limit."""
        presence = LocalPresence(Clock())
        self.assertTrue(self.successResultOf(presence.connection_opened("1", "u", limit=2)))
        self.assertTrue(self.successResultOf(presence.connection_opened("2", "u", limit=2)))
        self.assertFalse(self.successResultOf(presence.connection_opened("3", "u", limit=2)))
        self.assertEqual(self.successResultOf(presence.users()), {"u": 2})
        presence.connection_closed("1", "u")
        presence.connection_closed("1", "u")
        self.assertEqual(self.successResultOf(presence.connection_count("u")), 1)
        self.assertEqual(self.successResultOf(presence.total()), 1)

    def test_local_process_counts(self):
        """LocalPresence's process_counts() is this one process's share."""
        presence = LocalPresence(Clock())
        presence.connection_opened("1", "u")
        presence.connection_opened("2", "u")
        presence.connection_opened("3", "v")
        self.assertEqual(self.successResultOf(presence.process_counts()),
                         {"local": {"authenticated": 3, "users": 2}})

    def test_local_session_numbers_increase(self):
        """Session numbers increase even when the clock does not move."""
        presence = LocalPresence(Clock())
        first = self.successResultOf(presence.new_session("u"))
        self.assertLess(first, self.successResultOf(presence.new_session("u")))
