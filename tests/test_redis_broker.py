"""
RedisBroker against a real redis-server: several in-process "processes" (a Registry and a
RedisBroker each) share one Redis, as several gateway processes do.
"""

import time

from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.trial import unittest

from realtime import jsonutil
from realtime.redis.broker import BrokerUnavailable
from tests import harness
from tests.harness import RedisServer, unique, wait_for
from tests.redis_helpers import start_nodes


def message(text):
    return jsonutil.dumps_text({"type": "note", "data": text})


class CrossProcessDeliveryTests(unittest.TestCase):
    timeout = 60

    @inlineCallbacks
    def setUp(self):
        self.redis = harness.redis()
        self.nodes = yield start_nodes(self, self.redis.url, count=3)

    @inlineCallbacks
    def test_users_event_reaches_connections_on_every_process(self):
        """
        An event published on one process reaches the user's connections on every process,
        exactly once each, and publish fires with the count of local connections reached.
        """
        a, b, c = self.nodes
        alice = unique("alice")
        on_a, on_b, on_c = a.connect(alice), b.connect(alice), c.connect(alice)
        bob_on_c = c.connect(unique("bob"))
        count = yield b.broker.publish({"t": "users", "to": [alice], "msg": message("hi")})
        self.assertEqual(count, 1)
        yield wait_for(lambda: on_a.received and on_c.received, what="delivery on a and c")
        for conn in (on_a, on_b, on_c):
            self.assertEqual(conn.received, [{"type": "note", "data": "hi"}])
        self.assertEqual(bob_on_c.received, [])

    @inlineCallbacks
    def test_all_topic_and_disconnect_events_cross_processes(self):
        """Broadcast, topic publication and disconnect act on every process's connections."""
        a, b, c = self.nodes
        users = [unique("u") for _ in range(3)]
        conns = [node.connect(user) for node, user in zip(self.nodes, users)]
        c.registry.subscribe(conns[2], "public:news")
        yield a.broker.publish({"t": "all", "msg": message("everyone")})
        yield a.broker.publish({"t": "topic", "topic": "public:news", "msg": message("news")})
        yield a.broker.publish({"t": "disconnect", "user": users[1], "code": 4000,
                                "reason": "bye"})
        yield wait_for(lambda: all(n.broker.received >= 3 for n in self.nodes),
                       what="every process to read three events")
        self.assertEqual(conns[0].received, [{"type": "note", "data": "everyone"}])
        self.assertEqual(conns[2].received, [{"type": "note", "data": "everyone"},
                                             {"type": "note", "data": "news"}])
        self.assertEqual(conns[1].closed, (4000, "bye"))
        self.assertIsNone(conns[0].closed)

    @inlineCallbacks
    def test_order_is_kept_per_publisher(self):
        """Events published in a burst by one process arrive everywhere in that order."""
        a, b, c = self.nodes
        user = unique("u")
        on_c = c.connect(user)
        yield gatherResults([a.broker.publish({"t": "users", "to": [user], "msg": message(i)})
                             for i in range(200)])
        yield wait_for(lambda: len(on_c.received) == 200, what="200 messages")
        self.assertEqual([m["data"] for m in on_c.received], list(range(200)))

    @inlineCallbacks
    def test_prefixes_isolate_deployments(self):
        """Two deployments sharing one Redis with different prefixes do not see each other."""
        other = yield start_nodes(self, self.redis.url, count=1)
        user = unique("u")
        here = self.nodes[0].connect(user)
        there = other[0].connect(user)
        yield other[0].broker.publish({"t": "users", "to": [user], "msg": message("x")})
        yield self.nodes[1].broker.publish({"t": "users", "to": [user], "msg": message("y")})
        yield wait_for(lambda: here.received and there.received)
        self.assertEqual(here.received, [{"type": "note", "data": "y"}])
        self.assertEqual(there.received, [{"type": "note", "data": "x"}])

    @inlineCallbacks
    def test_malformed_entries_are_ignored(self):
        """A foreign or malformed entry in the stream is logged and skipped; reading goes on."""
        a, b, _ = self.nodes
        user = unique("u")
        conn = b.connect(user)
        yield a.broker.commands.execute("XADD", a.broker.stream, "*", "e", "not json")
        yield a.broker.commands.execute("XADD", a.broker.stream, "*", "other", "field")
        yield a.broker.publish({"t": "users", "to": [user], "msg": message("ok")})
        yield wait_for(lambda: conn.received)
        self.assertEqual(conn.received, [{"type": "note", "data": "ok"}])
        self.flushLoggedErrors()

    def test_status_fields(self):
        """A connected broker reports state up and redis_state connected."""
        broker = self.nodes[0].broker
        self.assertEqual((broker.state, broker.redis_state), ("up", "connected"))


class RedisOutageTests(unittest.TestCase):
    """A Redis of our own, stopped and restarted on the same port."""

    timeout = 90

    def setUp(self):
        self.redis = RedisServer().start()
        self.addCleanup(self.redis.cleanup)

    @inlineCallbacks
    def test_publish_fails_fast_while_redis_is_down(self):
        """
        With Redis stopped, publish fails with BrokerUnavailable within the bound (3 s),
        nothing is delivered locally, and the state says so.
        """
        (node,) = yield start_nodes(self, self.redis.url, count=1, timeout=3.0)
        conn = node.connect(unique("u"))
        self.redis.stop()
        yield wait_for(lambda: node.broker.state != "up", what="the broker to notice")
        self.assertEqual(node.broker.redis_state, "down")
        started = time.monotonic()
        with self.assertRaises(BrokerUnavailable):
            yield node.broker.publish({"t": "all", "msg": message("lost?")})
        self.assertLess(time.monotonic() - started, 3.5)
        self.assertEqual(conn.received, [])

    @inlineCallbacks
    def test_hung_redis_fails_publish_within_the_bound(self):
        """A Redis that accepts but stops answering (SIGSTOP) fails publish within ~1 s."""
        import os
        import signal
        (node,) = yield start_nodes(self, self.redis.url, count=1, timeout=1.0)
        os.kill(self.redis.process.pid, signal.SIGSTOP)
        self.addCleanup(lambda: self.redis.process and os.kill(self.redis.process.pid,
                                                               signal.SIGCONT))
        started = time.monotonic()
        with self.assertRaises(BrokerUnavailable):
            yield node.broker.publish({"t": "all", "msg": message("x")})
        self.assertLess(time.monotonic() - started, 2.0)
        os.kill(self.redis.process.pid, signal.SIGCONT)

    @inlineCallbacks
    def test_restart_mid_traffic_loses_nothing_accepted(self):
        """
        Redis (keeping its data: appendonly) restarts while three processes publish
        continuously: every event whose publish succeeded reaches the connections of every
        process exactly once, failed publishes fail fast, and the readers come back by
        themselves.  (A Redis that restarts empty loses what it accepted in its last
        moments and a reader had not read yet: the next test.)
        """
        self.redis.stop()
        self.redis = RedisServer(appendonly=True).start()
        self.addCleanup(self.redis.cleanup)
        nodes = yield start_nodes(self, self.redis.url, count=3, timeout=2.0)
        user = unique("u")
        conns = [node.connect(user) for node in nodes]
        accepted, refused = [], []
        stop = []

        @inlineCallbacks
        def publisher(node, name):
            i = 0
            while not stop:
                i += 1
                text = f"{name}-{i}"
                started = time.monotonic()
                try:
                    yield node.broker.publish({"t": "users", "to": [user],
                                               "msg": message(text)})
                    accepted.append(text)
                except BrokerUnavailable:
                    refused.append(time.monotonic() - started)
                yield harness.sleep(0.01)

        runs = [publisher(node, f"p{n}") for n, node in enumerate(nodes)]
        yield wait_for(lambda: len(accepted) > 30, what="traffic before the restart")
        self.redis.stop()
        yield wait_for(lambda: len(refused) > 10, what="publishes to fail")
        self.redis.start()
        yield wait_for(lambda: all(n.broker.state == "up" for n in nodes), seconds=15,
                       what="every broker to reconnect")
        before = len(accepted)
        yield wait_for(lambda: len(accepted) > before + 30, what="traffic after the restart")
        stop.append(True)
        yield gatherResults(runs)
        yield wait_for(lambda: all(len(c.received) >= len(accepted) for c in conns),
                       what="every accepted event everywhere")
        for conn in conns:
            got = [m["data"] for m in conn.received]
            self.assertEqual(sorted(got), sorted(accepted))  # all, and each once
        self.assertLess(max(refused), 2.5)

    @inlineCallbacks
    def test_restart_empty_reads_the_new_stream_from_its_start(self):
        """
        Redis restarts without its data: the readers find the stream reset (its newest
        entry, if any, is not after theirs, or there is none) and read it from its start, so
        what is published after the restart reaches every process, once; nothing from
        before the restart comes again.
        """
        nodes = yield start_nodes(self, self.redis.url, count=2, timeout=2.0)
        user = unique("u")
        conns = [node.connect(user) for node in nodes]
        yield nodes[0].broker.publish({"t": "users", "to": [user], "msg": message("before")})
        yield wait_for(lambda: all(len(c.received) == 1 for c in conns),
                       what="the first event everywhere")
        self.redis.stop()
        yield wait_for(lambda: all(n.broker.state != "up" for n in nodes),
                       what="every broker to notice")
        self.redis.start()
        yield wait_for(lambda: all(n.broker.state == "up" and n.broker.reading
                                   for n in nodes), seconds=15, what="every reader back")
        for i in range(5):
            yield nodes[i % 2].broker.publish({"t": "users", "to": [user],
                                               "msg": message(f"after-{i}")})
        expected = ["before"] + [f"after-{i}" for i in range(5)]
        yield wait_for(lambda: all(len(c.received) >= len(expected) for c in conns),
                       what="the events after the restart everywhere")
        yield harness.sleep(0.2)  # time for a duplicate to arrive, were there one
        for conn in conns:
            self.assertEqual(sorted(m["data"] for m in conn.received), sorted(expected))


class ResumeTests(unittest.TestCase):
    timeout = 60

    @inlineCallbacks
    def test_reader_away_resumes_after_its_last_entry(self):
        """
        A process whose reader loses its connection (Redis still up) gets, once reconnected,
        the events others published meanwhile.
        """
        a, b = yield start_nodes(self, harness.redis().url, count=2)
        user = unique("u")
        on_b = b.connect(user)
        # Cut b's reader connection and keep it down while a publishes.
        b.broker.reader.protocol.transport.abortConnection()
        yield wait_for(lambda: not b.broker.reading, what="b's reader to stop")
        for i in range(5):
            yield a.broker.publish({"t": "users", "to": [user], "msg": message(i)})
        yield wait_for(lambda: len(on_b.received) == 5, what="b to catch up")
        self.assertEqual([m["data"] for m in on_b.received], [0, 1, 2, 3, 4])


class PasswordTests(unittest.TestCase):
    timeout = 60

    def setUp(self):
        self.redis = RedisServer(password="s3cret-pw").start()
        self.addCleanup(self.redis.cleanup)

    @inlineCallbacks
    def test_password_and_db_from_the_url(self):
        """A password and db in REDIS_URL are used (AUTH, SELECT): events flow."""
        url = f"redis://:s3cret-pw@127.0.0.1:{self.redis.port}/5"
        a, b = yield start_nodes(self, url, count=2)
        conn = b.connect("u")
        yield a.broker.publish({"t": "users", "to": ["u"], "msg": message("ok")})
        yield wait_for(lambda: conn.received)
        self.assertEqual(conn.received, [{"type": "note", "data": "ok"}])
        keys = yield a.broker.commands.execute("KEYS", "*")
        self.assertIn(a.broker.stream, keys)  # in db 5 ...
        yield a.broker.commands.execute("SELECT", "0")
        self.assertEqual((yield a.broker.commands.execute("KEYS", "*")), [])  # ... not db 0

    @inlineCallbacks
    def test_wrong_password_fails_publish_and_never_logs_it(self):
        """A wrong password: publish fails fast, the error is logged without the password."""
        from twisted.logger import globalLogPublisher

        from tests.redis_helpers import Node
        logged = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        node = Node(f"redis://:wrong-pw-123@127.0.0.1:{self.redis.port}/0", "w:")
        node.broker.start()
        self.addCleanup(node.broker.stop)
        yield wait_for(lambda: any("could not auth" in str(e.get("message", ""))
                                   for e in logged), what="the auth error to be logged")
        with self.assertRaises(BrokerUnavailable):
            yield node.broker.publish({"t": "all", "msg": message("x")})
        self.assertEqual((node.broker.state, node.broker.redis_state),
                         ("redis-unavailable", "error"))
        from twisted.logger import formatEvent
        self.assertFalse([e for e in logged if "wrong-pw-123" in formatEvent(e)])


class ErrorAnswerTests(unittest.TestCase):
    timeout = 60

    @inlineCallbacks
    def test_stream_key_of_another_type(self):
        """
        If the stream key holds another type (an operator's mistake), publish fails with
        BrokerUnavailable (503), and readers log and keep retrying: once the key is
        deleted, events flow again.
        """
        a, b = yield start_nodes(self, harness.redis().url, count=2)
        conn = b.connect("u")
        yield a.broker.commands.execute("DEL", a.broker.stream)
        yield a.broker.commands.execute("SET", a.broker.stream, "oops")
        with self.assertRaises(BrokerUnavailable):
            yield a.broker.publish({"t": "users", "to": ["u"], "msg": message("x")})
        yield harness.sleep(1.5)  # let the readers hit the error at least once
        yield a.broker.commands.execute("DEL", a.broker.stream)
        yield a.broker.publish({"t": "users", "to": ["u"], "msg": message("back")})
        yield wait_for(lambda: conn.received, what="events to flow again")
        self.assertEqual(conn.received, [{"type": "note", "data": "back"}])
        self.flushLoggedErrors()


class TrimTests(unittest.TestCase):
    timeout = 60

    @inlineCallbacks
    def test_reader_away_longer_than_the_stream_covers_logs_the_gap(self):
        """
        With REDIS_STREAM_MAXLEN small, a reader away while many events are published
        resumes with what is left and counts (and logs) the trimmed gap.
        """
        a, b = yield start_nodes(self, harness.redis().url, count=2, stream_maxlen=10)
        conn = b.connect("u")
        b.broker.reader.protocol.transport.abortConnection()
        yield wait_for(lambda: not b.broker.reading, what="b's reader to stop")
        # All at once: Redis stores them before b's reconnection (backoff >= 0.1 s).
        yield gatherResults([a.broker.publish({"t": "users", "to": ["u"], "msg": message(i)})
                             for i in range(300)])
        yield wait_for(lambda: b.broker.reading and conn.received, what="b to resume")
        yield wait_for(lambda: conn.received[-1]["data"] == 299, what="the last event")
        self.assertEqual(b.broker.missed_trimmed, 1)
        self.assertLess(len(conn.received), 300)
