"""
RedisPresence sends the writes of one reactor turn (opens with their per-user limit, the
counts written at close) as one script, in order, against a real redis-server: the answers
are those of one script per write, and the limit still holds across processes.
"""

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.trial import unittest

from realtime.redis import presence_scripts
from realtime.redis.client import RedisClient
from realtime.redis.presence import RedisPresence
from realtime.redis.url import parse_redis_url
from tests import harness
from tests.harness import unique, wait_for


class CountingClient(RedisClient):
    """A real client that records the scripts it sends (to count the round trips)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.scripts = []

    def eval(self, script, keys=(), args=(), timeout=None):
        self.scripts.append(script)
        return super().eval(script, keys=keys, args=args, timeout=timeout)

    def batches(self):
        return self.scripts.count(presence_scripts.BATCH)


@inlineCallbacks
def start_presences(test, url, count=2):
    prefix = unique("batch") + ":"
    presences = []
    for n in range(count):
        client = CountingClient(reactor, parse_redis_url(url), timeout=2.0, name=f"proc{n}")
        client.start()
        test.addCleanup(client.stop)
        presences.append(RedisPresence(client, reactor, prefix=prefix,
                                       process_id=unique("proc")))
    yield wait_for(lambda: all(p._client.connected for p in presences), what="connections")
    for presence in presences:
        presence.start()
        test.addCleanup(presence.stop)
    yield wait_for(lambda: all(p.renewals for p in presences), what="first leases")
    return presences


class BatchTests(unittest.TestCase):
    timeout = 60

    @inlineCallbacks
    def setUp(self):
        self.a, self.b = yield start_presences(self, harness.redis().url)

    @inlineCallbacks
    def test_one_script_for_the_opens_of_a_turn(self):
        """Fifty opens made in one reactor turn reach Redis as one script; all are counted."""
        users = [unique("u") for _ in range(50)]
        before = self.a._client.batches()
        results = yield gatherResults([self.a.connection_opened(f"c{i}", user, limit=20)
                                       for i, user in enumerate(users)])
        self.assertEqual(results, [True] * 50)
        self.assertEqual(self.a._client.batches() - before, 1)
        self.assertEqual((yield self.b.users()), {user: 1 for user in users})

    @inlineCallbacks
    def test_batch_answers_as_one_script_per_write(self):
        """
        In one turn, with a limit of 3 and one connection of the user on another process:
        two opens are admitted, the third is refused, a close frees a place but the next open
        still counts the refused one's reservation (as separate scripts did), and Redis ends
        with the connections that stayed.
        """
        user = unique("u")
        self.assertTrue((yield self.b.connection_opened("b1", user, limit=3)))
        before = self.a._client.batches()
        opened = [self.a.connection_opened("a1", user, limit=3),
                  self.a.connection_opened("a2", user, limit=3),
                  self.a.connection_opened("a3", user, limit=3)]
        self.a.connection_closed("a1", user)
        opened.append(self.a.connection_opened("a4", user, limit=3))
        results = yield gatherResults(opened)
        self.assertEqual(self.a._client.batches() - before, 1)  # before the refusals' writes
        self.assertEqual(results, [True, True, False, False])
        yield wait_for(lambda: not self.a._pending and self.a._flush_call is None,
                       what="the refusals' writes")
        self.assertEqual((yield self.b.users()), {user: 2})
        self.assertTrue((yield self.b.connection_opened("b2", user, limit=3)))
        self.assertFalse((yield self.a.connection_opened("a5", user, limit=3)))

    @inlineCallbacks
    def test_open_and_close_in_one_turn_leave_nothing(self):
        """A close made in the same turn as its open is written after it: nothing is left."""
        user = unique("u")
        opened = self.a.connection_opened("a1", user)
        self.a.connection_closed("a1", user)
        self.assertTrue((yield opened))
        self.assertEqual((yield self.b.users()), {})

    @inlineCallbacks
    def test_racing_batches_on_two_processes_keep_the_limit(self):
        """Forty opens of one user, twenty per process in one turn each: exactly 5 admitted."""
        user = unique("u")
        results = yield gatherResults(
            [proc.connection_opened(f"{n}-{i}", user, limit=5)
             for i in range(20) for n, proc in enumerate((self.a, self.b))])
        self.assertEqual(results.count(True), 5)
        self.assertEqual((yield self.a.connection_count(user)), 5)

    @inlineCallbacks
    def test_large_turn_is_split(self):
        """Past MAX_BATCH writes, a turn is sent as several scripts, in order."""
        self.a.MAX_BATCH = 4
        user = unique("u")
        before = self.a._client.batches()
        results = yield gatherResults([self.a.connection_opened(f"c{i}", user, limit=7)
                                       for i in range(10)])
        self.assertEqual(results, [True] * 7 + [False] * 3)
        self.assertEqual(self.a._client.batches() - before, 3)
        yield wait_for(lambda: not self.a._pending and self.a._flush_call is None,
                       what="the refusals' writes")
        self.assertEqual((yield self.b.connection_count(user)), 7)

    @inlineCallbacks
    def test_stop_sends_the_pending_writes_first(self):
        """A presence stopped in the same turn as an open leaves nothing behind in Redis."""
        user = unique("u")
        opened = self.a.connection_opened("a1", user)
        yield self.a.stop()
        self.assertTrue((yield opened))
        self.assertEqual((yield self.b.users()), {})
        self.assertNotIn(self.a.process_id, (yield self.b.processes()))


class UnavailableTests(unittest.TestCase):
    @inlineCallbacks
    def test_redis_away_limit_per_process_oldest_first(self):
        """
        Redis away (a client never connected): the opens of one turn are answered from this
        process's counts, the oldest admitted and the newest refused past the limit.
        """
        client = RedisClient(reactor, parse_redis_url("redis://127.0.0.1:1/0"), name="away")
        presence = RedisPresence(client, reactor, prefix=unique("away") + ":")
        results = yield gatherResults([presence.connection_opened(f"c{i}", "u", limit=2)
                                       for i in range(3)])
        self.assertEqual(results, [True, True, False])
        presence.connection_closed("c0", "u")
        self.assertTrue((yield presence.connection_opened("c3", "u", limit=2)))
        self.assertFalse((yield presence.connection_opened("c4", "u", limit=2)))
