"""
Message history (IHistory): one suite, run against the memory history and against Redis.

Times come from an injected Clock in both (the Redis history takes its times from the
caller), so TTLs are tested without waiting.
"""

from __future__ import annotations

import json

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks, succeed
from twisted.internet.task import Clock
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from realtime.hub.history import (
    BROADCAST_STREAM,
    GHOST_FACTOR,
    IHistory,
    MemoryHistory,
    parse_offset,
    topic_stream,
    user_stream,
)
from realtime.redis.client import RedisClient
from realtime.redis.history import HEAD_INTERVAL, RedisHistory
from realtime.redis.url import parse_redis_url
from tests import harness


class HistoryContract:
    """What every IHistory does.  ``make(size, ttl)`` builds one on ``self.clock``."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)

    @inlineCallbacks
    def send(self, history, streams, n, kind="note"):
        offsets = []
        for i in range(n):
            offset, text = yield history.append(streams, {"type": kind, "data": i})
            offsets.append(offset)
        return offsets

    @inlineCallbacks
    def test_interface(self):
        """The object provides IHistory."""
        history = yield self.make()
        self.assertTrue(verifyObject(IHistory, history))

    def refreshed(self, history):
        """The history's head brought up to date (the memory history's always is)."""
        return succeed(None)

    @inlineCallbacks
    def test_append_gives_growing_offsets_in_the_text(self):
        """Each message gets an offset, the last key of its JSON; offsets grow."""
        history = yield self.make()
        offset, text = yield history.append([user_stream("ann")], {"type": "x", "data": 1})
        self.assertEqual(json.loads(text), {"type": "x", "data": 1, "offset": offset})
        self.assertTrue(text.endswith('"offset":"%s"}' % offset))
        later, _ = yield history.append([topic_stream("t")], {"type": "y", "data": 2})
        self.assertEqual(parse_offset(later)[0], parse_offset(offset)[0])
        self.assertGreater(parse_offset(later)[1], parse_offset(offset)[1])

    @inlineCallbacks
    def test_offsets_do_not_count_other_users_messages(self):
        """Offsets are seen by everyone (connected, resumed, public publications): how far
        apart two of ann's are must not say how many messages others got in between."""
        gaps = []
        for others in (0, 7):
            history = yield self.make()
            self.clock.advance(1)  # (the Redis histories of one test share their counter)
            first, _ = yield history.append([user_stream("ann")], {"type": "x", "data": 0})
            self.clock.advance(1)
            yield self.send(history, [user_stream(harness.unique("bob"))], others)
            yield self.send(history, [topic_stream("team:secret")], others)
            self.clock.advance(1)
            second, _ = yield history.append([user_stream("ann")], {"type": "x", "data": 1})
            gaps.append(parse_offset(second)[1] - parse_offset(first)[1])
            replay = yield history.read([user_stream("ann")], first)
            self.assertEqual(len(replay.messages), 1)
        self.assertEqual(gaps[0], gaps[1])

    @inlineCallbacks
    def test_head_does_not_tell_when_the_last_message_was_sent(self):
        """head() is the clock's position (with Redis: at its last refresh): the same
        whether the last message to anyone was sent a second ago or not at all."""
        heads = []
        for sent in (False, True):
            history = yield self.make()
            history._n = 0
            if sent:
                yield history.append([user_stream("bob")], {"type": "x", "data": 0})
            self.clock.advance(1)
            yield self.refreshed(history)
            now = int(self.clock.seconds() * 1000) * 1000
            heads.append(now - parse_offset(history.head())[1])
            later, _ = yield history.append([user_stream("ann")], {"type": "x", "data": 1})
            yield self.refreshed(history)
            replay = yield history.read([user_stream("ann")], history.head())
            self.assertEqual(replay.messages, [])  # head is after every offset given
            self.assertGreaterEqual(parse_offset(history.head())[1], parse_offset(later)[1])
        self.assertEqual(heads, [1, 1])

    @inlineCallbacks
    def test_head_is_where_a_new_client_resumes_from(self):
        """Resuming from head() replays what was appended after it, and nothing before."""
        history = yield self.make()
        yield self.send(history, [user_stream("ann")], 2)
        yield self.refreshed(history)
        head = history.head()
        yield self.send(history, [user_stream("ann")], 1, kind="after")
        replay = yield history.read([user_stream("ann")], head)
        self.assertEqual([json.loads(t)["type"] for t in replay.messages], ["after"])

    @inlineCallbacks
    def test_read_after_an_offset_in_order(self):
        """A read gives the messages after the offset, in order, and where to resume next."""
        history = yield self.make()
        offsets = yield self.send(history, [user_stream("ann")], 5)
        replay = yield history.read([user_stream("ann")], offsets[1])
        self.assertEqual([json.loads(t)["data"] for t in replay.messages], [2, 3, 4])
        self.assertTrue(replay.recovered)
        self.assertEqual(replay.until, offsets[-1])
        self.assertEqual(replay.recovery(), {"recovered": True})
        replay = yield history.read([user_stream("ann")], offsets[-1])
        self.assertEqual((replay.messages, replay.recovered, replay.until),
                         ([], True, offsets[-1]))

    @inlineCallbacks
    def test_streams_are_separate_and_merge_in_send_order(self):
        """A user's messages and broadcasts merge by offset; other users' stay out."""
        history = yield self.make()
        first, _ = yield history.append([user_stream("ann")], {"type": "a", "data": 0})
        yield history.append([BROADCAST_STREAM], {"type": "b", "data": 1})
        yield history.append([user_stream("bob")], {"type": "c", "data": 2})
        yield history.append([user_stream("ann"), user_stream("bob")],
                             {"type": "d", "data": 3})
        yield history.append([topic_stream("ann")], {"type": "e", "data": 4})
        replay = yield history.read([user_stream("ann"), BROADCAST_STREAM], first)
        self.assertEqual([json.loads(t)["type"] for t in replay.messages], ["b", "d"])
        self.assertTrue(replay.recovered)

    @inlineCallbacks
    def test_size_trims_and_counts_what_was_missed(self):
        """Past size, the oldest go; a resume from before them is told how many."""
        history = yield self.make(size=3)
        offsets = yield self.send(history, [user_stream("ann")], 8)
        replay = yield history.read([user_stream("ann")], offsets[0])
        self.assertEqual([json.loads(t)["data"] for t in replay.messages], [5, 6, 7])
        self.assertFalse(replay.recovered)
        self.assertEqual(replay.missed, 4)
        self.assertEqual(replay.recovery(),
                         {"recovered": False, "reason": "history_trimmed", "missed": 4})
        self.assertEqual(replay.until, offsets[-1])
        # From the last one dropped, nothing is missing.
        replay = yield history.read([user_stream("ann")], offsets[4])
        self.assertTrue(replay.recovered)

    @inlineCallbacks
    def test_missed_unknown_beyond_the_ghosts(self):
        """Beyond what is remembered of the dropped, the count is unknown (left out)."""
        history = yield self.make(size=1)
        offsets = yield self.send(history, [user_stream("ann")], GHOST_FACTOR + 3)
        replay = yield history.read([user_stream("ann")], offsets[0])
        self.assertFalse(replay.recovered)
        self.assertIsNone(replay.missed)
        self.assertEqual(replay.recovery(), {"recovered": False, "reason": "history_trimmed"})
        self.assertEqual(len(replay.messages), 1)

    @inlineCallbacks
    def test_ttl_drops_old_messages(self):
        """A message older than the TTL is not replayed, and counts as missed."""
        history = yield self.make(ttl=60)
        start = yield self.send(history, [user_stream("ann")], 1)
        yield self.send(history, [user_stream("ann")], 2)
        self.clock.advance(61)
        yield self.send(history, [user_stream("ann")], 1, kind="late")
        replay = yield history.read([user_stream("ann")], start[0])
        self.assertEqual([json.loads(t)["type"] for t in replay.messages], ["late"])
        self.assertEqual((replay.recovered, replay.missed), (False, 2))
        self.clock.advance(61)
        replay = yield history.read([user_stream("ann")], start[0])
        self.assertEqual((replay.messages, replay.missed), ([], 3))

    @inlineCallbacks
    def test_other_epoch_is_not_recovered(self):
        """An offset of another epoch (restart, data lost) is not resumed."""
        history = yield self.make()
        yield self.send(history, [user_stream("ann")], 2)
        replay = yield history.read([user_stream("ann")], "0badcafe-1")
        self.assertEqual((replay.messages, replay.recovered, replay.missed), ([], False, None))
        self.assertNotEqual(parse_offset(replay.until)[0], "0badcafe")

    @inlineCallbacks
    def test_bad_offsets_are_refused(self):
        """Anything that is not one of our offsets: ValueError, before any I/O."""
        history = yield self.make()
        for bad in (None, 5, "", "x-1", "abc", "a-b", "1-" + "9" * 30, ["a-1"]):
            self.assertRaises(ValueError, history.read, [user_stream("ann")], bad)


class MemoryHistoryTests(HistoryContract, unittest.TestCase):

    def make(self, size=1000, ttl=24 * 3600.0):
        from twisted.internet.defer import succeed
        return succeed(MemoryHistory(self.clock, size=size, ttl=ttl))

    def test_idle_streams_are_forgotten(self):
        """Memory stays bounded: a stream silent for seven TTLs is dropped."""
        history = MemoryHistory(self.clock, size=10, ttl=1)
        history.append([user_stream("old")], {"type": "x"})
        self.clock.advance(8)
        for i in range(1000):
            history.append([user_stream("new")], {"type": "x"})
        self.assertNotIn(user_stream("old"), history._streams)


class RedisHistoryTests(HistoryContract, unittest.TestCase):
    timeout = 60

    @inlineCallbacks
    def make(self, size=1000, ttl=24 * 3600.0):
        if not hasattr(self, "client"):
            self.client = RedisClient(reactor, parse_redis_url(harness.redis().url),
                                      timeout=5, name="history")
            self.client.start()
            self.addCleanup(self.client.stop)
            yield harness.wait_for(lambda: self.client.connected, what="redis")
            self.prefix = harness.unique("h") + ":"
        history = RedisHistory(self.client, self.clock, prefix=self.prefix, size=size, ttl=ttl)
        self.addCleanup(history.stop)
        yield history._connected()
        return history

    def refreshed(self, history):
        return history._refresh_head()

    @inlineCallbacks
    def test_the_head_moves_with_the_clock_every_second(self):
        """While connected, the head is refreshed every HEAD_INTERVAL: a process that
        appends nothing still gives new clients a recent position, and every append of
        another process after it comes after it."""
        history = yield self.make()
        other = yield self.make()
        before = parse_offset(history.head())[1]
        self.clock.advance(HEAD_INTERVAL * 5)  # one tick per advance: the other four skip
        yield harness.wait_for(lambda: parse_offset(history.head())[1] > before,
                               what="a refreshed head")
        head = history.head()
        self.assertEqual(parse_offset(head)[1],
                         int(self.clock.seconds() * 1000) * 1000 - 1)
        offset, _ = yield other.append([user_stream("ann")], {"type": "x"})
        self.assertGreater(parse_offset(offset)[1], parse_offset(head)[1])
        replay = yield history.read([user_stream("ann")], head)
        self.assertEqual(len(replay.messages), 1)

    @inlineCallbacks
    def test_a_stopped_history_keeps_its_timer_stopped_after_a_reconnection(self):
        """ClusterState.stop stops the head's timer first, then leaves presence while Redis
        is still reachable: a reconnection meanwhile (the client's on_connect hook) must
        not start it again, or a timer outlives the shutdown."""
        history = yield self.make()
        history.stop()
        yield history._connected()  # what the client's hook calls on a reconnection
        self.assertFalse(history._ticker.running)

    @inlineCallbacks
    def test_two_processes_share_one_history(self):
        """Appended on one process, read on another: the same offsets and messages."""
        here = yield self.make()
        other = RedisClient(reactor, parse_redis_url(harness.redis().url), timeout=5)
        other.start()
        self.addCleanup(other.stop)
        yield harness.wait_for(lambda: other.connected, what="redis")
        there = RedisHistory(other, self.clock, prefix=self.prefix)
        first, _ = yield here.append([user_stream("ann")], {"type": "a"})
        second, _ = yield there.append([user_stream("ann")], {"type": "b"})
        yield here.append([user_stream("ann")], {"type": "c"})
        replay = yield there.read([user_stream("ann")], first)
        self.assertEqual([json.loads(t)["type"] for t in replay.messages], ["b", "c"])
        self.assertEqual(json.loads(replay.messages[0])["offset"], second)

    @inlineCallbacks
    def test_keys_expire(self):
        """Every key of a stream has an expiry: Redis memory stays bounded."""
        history = yield self.make(size=1, ttl=10)
        yield self.send(history, [user_stream("ann")], 3)
        for kind in ("s", "g"):
            ttl = yield self.client.execute("PTTL", f"{self.prefix}history:{kind}:u:ann")
            self.assertTrue(0 < int(ttl) <= 70_000, (kind, ttl))
