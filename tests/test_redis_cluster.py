"""
Several real gateway processes (``python -m realtime`` with REDIS_URL) and one redis-server:
clients spread across the processes see one service.

Presence is read here the way every process reads it (RedisPresence on the deployment's
prefix), from a reader that holds no lease of its own.
"""


from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from realtime.redis.client import RedisClient, RedisUnavailable
from realtime.redis.presence import RedisPresence
from realtime.redis.url import parse_redis_url
from tests import harness
from tests.cluster_harness import Cluster
from tests.fakes import SECRET, make_token
from tests.harness import RedisServer, unique, wait_for


class ClusterTestCase(unittest.TestCase):
    timeout = 120
    size = 3
    env = {}

    @inlineCallbacks
    def start_cluster(self, redis_url=None, shared_port=False, **env):
        cluster = Cluster(self.size, redis_url=redis_url, shared_port=shared_port,
                          **{**self.env, **env})
        self.addCleanup(cluster.stop)
        yield cluster.start()
        client = RedisClient(reactor, parse_redis_url(cluster.redis_url), timeout=2.0,
                             name="test-reader")
        client.start()
        self.addCleanup(client.stop)
        yield wait_for(lambda: client.connected, what="the test's Redis connection")
        self.presence = RedisPresence(client, reactor, prefix=cluster.prefix,
                                      process_id="test-reader")
        return cluster

    @inlineCallbacks
    def connected(self, cluster, index, user):
        client = yield cluster.connect(index, query={"token": make_token(user)})
        message = yield client.next("connected")
        self.assertEqual(message["user"]["id"], user)
        return client

    @inlineCallbacks
    def wait_redis_state(self, cluster, index, state, seconds=10.0):
        deadline = reactor.seconds() + seconds
        while (yield cluster.status(index))["redis"]["state"] != state:
            if reactor.seconds() > deadline:
                raise AssertionError(f"process {index} never reported redis {state}")
            yield harness.sleep(0.05)

    @inlineCallbacks
    def wait_users(self, expected, seconds=10.0, only=None):
        """Until presence (restricted to ``only`` users) equals ``expected``."""
        seen = [None]

        @inlineCallbacks
        def poll():
            try:
                users = yield self.presence.users()
            except RedisUnavailable:
                return
            if only is not None:
                users = {u: n for u, n in users.items() if u in only}
            seen[0] = users

        deadline = reactor.seconds() + seconds
        while True:
            yield poll()
            if seen[0] == expected:
                return
            if reactor.seconds() > deadline:
                raise AssertionError(f"presence is {seen[0]}, expected {expected}")
            yield harness.sleep(0.05)


class PresenceAndLimitTests(ClusterTestCase):
    env = {"WS_MAX_CONNECTIONS_PER_USER": "2"}

    @inlineCallbacks
    def test_presence_across_processes(self):
        """
        Presence counts the connections of every process: alice on 0 and 1, bob on 2;
        closing one of alice's is seen at once.
        """
        cluster = yield self.start_cluster()
        alice, bob = unique("alice"), unique("bob")
        a0 = yield self.connected(cluster, 0, alice)
        yield self.connected(cluster, 1, alice)
        yield self.connected(cluster, 2, bob)
        yield self.wait_users({alice: 2, bob: 1})
        self.assertEqual(len((yield self.presence.processes())), 3)
        yield a0.close()
        yield self.wait_users({alice: 1, bob: 1})

    @inlineCallbacks
    def test_connection_limit_across_processes(self):
        """
        With WS_MAX_CONNECTIONS_PER_USER=2, a user with connections on processes 0 and 1 is
        refused a third on process 2 (close 4029); after one closes, process 2 accepts.
        """
        cluster = yield self.start_cluster()
        user = unique("u")
        first = yield self.connected(cluster, 0, user)
        yield self.connected(cluster, 1, user)
        third = yield cluster.connect(2, query={"token": make_token(user)})
        error = yield third.next("error")
        self.assertEqual(error["code"], "too_many_connections")
        code, _ = yield third.wait_closed()
        self.assertEqual(code, 4029)
        yield first.close()
        yield self.wait_users({user: 1}, only={user})
        yield self.connected(cluster, 2, user)
        yield self.wait_users({user: 2}, only={user})


class SingleSessionTests(ClusterTestCase):
    env = {"WS_SINGLE_SESSION": "true"}

    @inlineCallbacks
    def test_new_session_on_another_process_closes_the_old_one(self):
        """
        Single-session mode: a user's new connection on process 1 closes the older ones on
        processes 0 and 2 with 4004; the new one stays open, another user is untouched.
        """
        cluster = yield self.start_cluster()
        user, other = unique("u"), unique("other")
        old0 = yield self.connected(cluster, 0, user)
        old2 = yield self.connected(cluster, 2, user)
        bystander = yield self.connected(cluster, 0, other)
        new = yield self.connected(cluster, 1, user)
        for old in (old0, old2):
            code, _ = yield old.wait_closed()
            self.assertEqual(code, 4004)
        yield self.wait_users({user: 1, other: 1}, only={user, other})
        new.send_json({"type": "ping"})
        yield new.next("pong")
        self.assertEqual(bystander.state, bystander.STATE_OPEN)

    @inlineCallbacks
    def test_racing_sessions_leave_exactly_one(self):
        """Two sessions of one user opened at the same moment on two processes: one survives."""
        cluster = yield self.start_cluster()
        user = unique("u")
        for _round in range(3):
            d0 = cluster.connect(0, query={"token": make_token(user)})
            d1 = cluster.connect(1, query={"token": make_token(user)})
            c0 = yield d0
            c1 = yield d1

            def one_left():
                open_ = [c for c in (c0, c1) if c.state != c.STATE_CLOSED]
                return len(open_) == 1 and any(m.get("type") == "connected"
                                               for m in open_[0].received)

            yield wait_for(one_left, what="exactly one session left")
            survivor, loser = (c0, c1) if c1.state == c1.STATE_CLOSED else (c1, c0)
            self.assertEqual(loser.close_code, 4004)
            yield self.wait_users({user: 1}, only={user})
            yield survivor.close()


class ProcessDeathTests(ClusterTestCase):
    env = {"REALTIME_PRESENCE_TTL_MS": "2000"}

    @inlineCallbacks
    def test_sigkill_leaves_presence_within_the_lease(self):
        """
        A process killed with SIGKILL (no goodbye) drops out of presence within its lease
        (REALTIME_PRESENCE_TTL_MS=2000, checked within 2.5 s); the others' users stay.
        """
        cluster = yield self.start_cluster()
        alice, bob = unique("alice"), unique("bob")
        yield self.connected(cluster, 0, alice)
        bob_client = yield self.connected(cluster, 2, bob)
        yield self.wait_users({alice: 1, bob: 1}, only={alice, bob})
        killed_at = reactor.seconds()
        cluster[2].kill()
        yield bob_client.wait_closed()
        yield self.wait_users({alice: 1}, only={alice, bob}, seconds=5)
        self.assertLessEqual(reactor.seconds() - killed_at, 2.5)
        self.assertEqual(len((yield self.presence.processes())), 2)


class RedisRestartTests(ClusterTestCase):
    env = {"WS_SINGLE_SESSION": "true", "REALTIME_PRESENCE_TTL_MS": "3000"}

    @inlineCallbacks
    def test_cluster_recovers_after_redis_restart(self):
        """
        Redis restarts (empty): every process reconnects by itself, presence is written
        back, and cross-process events flow again (a new session on process 1 closes the
        one on process 0); connections stay open through the outage.
        """
        server = RedisServer().start()
        self.addCleanup(server.cleanup)
        cluster = yield self.start_cluster(redis_url=server.url)
        user = unique("u")
        old = yield self.connected(cluster, 0, user)
        yield self.wait_users({user: 1}, only={user})
        server.stop()
        for index in range(3):
            yield self.wait_redis_state(cluster, index, "down")
        server.start()
        for index in range(3):
            yield cluster.wait_ready(index, seconds=15)
        self.assertEqual(old.state, old.STATE_OPEN)
        yield self.wait_users({user: 1}, only={user}, seconds=10)
        new = yield self.connected(cluster, 1, user)
        code, _ = yield old.wait_closed()
        self.assertEqual(code, 4004)
        self.assertEqual(new.state, new.STATE_OPEN)


class SharedPortTests(ClusterTestCase):
    size = 2

    @inlineCallbacks
    def test_processes_share_one_port_with_reuseport(self):
        """
        Two processes listening on one port (REALTIME_LISTEN=reuseport:PORT) both take
        connections from it, and presence sees every client once.
        """
        cluster = yield self.start_cluster(shared_port=True)
        users = [unique("u") for _ in range(16)]
        for user in users:
            client = yield harness.connect(cluster.shared_port, query={"token": make_token(user)})
            cluster.clients.append(client)
            yield client.next("connected")
        yield self.wait_users({user: 1 for user in users}, only=set(users))
        counts = []
        for index in range(2):
            status = yield cluster.status(index)
            counts.append(status["connections"]["authenticated"])
        self.assertEqual(sum(counts), 16)
        self.assertTrue(all(counts), f"one process got every connection: {counts}")


class InProcessGatewaysTests(unittest.TestCase):
    """Two in-process gateways (GatewayHarness with redis_url) on one Redis."""

    timeout = 60

    @inlineCallbacks
    def test_in_process_gateways_share_presence_and_limit(self):
        """
        GatewayHarness(redis_url=…) starts the Redis broker and presence: a user's
        connection on one gateway counts against the limit on the other.
        """
        prefix = unique("ip") + ":"
        gateways = []
        for _ in range(2):
            gw = harness.GatewayHarness(jwt_secret=SECRET, feeds=False,
                                        redis_url=harness.redis().url, redis_prefix=prefix,
                                        ws_max_connections_per_user=1)
            yield gw.start()
            self.addCleanup(gw.stop)
            gateways.append(gw)
        user = unique("u")
        first = yield gateways[0].connect(query={"token": make_token(user)})
        yield first.next("connected")
        second = yield gateways[1].connect(query={"token": make_token(user)})
        self.assertEqual((yield second.next("error"))["code"], "too_many_connections")
        code, _ = yield second.wait_closed()
        self.assertEqual(code, 4029)
        self.assertEqual((yield gateways[1].gateway.presence.users()).get(user), 1)
