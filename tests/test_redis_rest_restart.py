"""
REST answers right after Redis restarts empty, with real gateways (GatewayHarness) on a
real redis-server: until every process that was alive before has written its connections
back, "not connected" cannot be told, so the answer is 503 (retry later), never a false
404 ``not_connected``.

Two gateways share one Redis: A directly, B through a TCP proxy the test can block, so
that B comes back after A does (the case a cluster meets when its processes reconnect one
after the other).
"""

from __future__ import annotations

import json

import treq
from twisted.internet import endpoints, reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from realtime.redis.client import RedisClient
from realtime.redis.url import parse_redis_url
from tests import harness
from tests.harness import GatewayHarness, RedisServer, unique, wait_for
from tests.test_e2e_faults import CuttableProxy
from tests.test_e2e_users import SECRET, make_token

ADMIN_KEY = "restart-admin-key-0123456789abcdef"


class RestAfterRedisRestartTests(unittest.TestCase):
    timeout = 90

    @inlineCallbacks
    def start(self, ttl_ms):
        self.server = RedisServer().start()
        self.addCleanup(self.server.cleanup)
        self.proxy = CuttableProxy("127.0.0.1", self.server.port)
        listening = yield endpoints.TCP4ServerEndpoint(
            reactor, 0, interface="127.0.0.1").listen(self.proxy)
        self.addCleanup(listening.stopListening)
        prefix = unique("rr") + ":"
        urls = (self.server.url, f"redis://127.0.0.1:{listening.getHost().port}/0")
        self.a, self.b = [GatewayHarness(feeds=False, jwt_secret=SECRET, admin_key=ADMIN_KEY,
                                         redis_url=url, redis_prefix=prefix,
                                         presence_ttl_ms=ttl_ms) for url in urls]
        for gw in (self.a, self.b):
            yield gw.start()
            self.addCleanup(gw.stop)

    @inlineCallbacks
    def post(self, gw, path, body):
        response = yield treq.post(
            f"http://127.0.0.1:{gw.port}{path}", json.dumps(body).encode(),
            headers={b"Authorization": [b"Bearer " + ADMIN_KEY.encode()],
                     b"Content-Type": [b"application/json"]}, persistent=False)
        answer = yield response.json()
        return response.code, answer, response.headers

    def message(self, user, data):
        return self.post(self.a, "/websocket/message/user",
                         {"userId": user, "type": "chat", "data": data})

    @inlineCallbacks
    def connected_on_b(self):
        """A user connected to B, once A's presence counts it and A has seen B alive."""
        user = unique("u")
        client = yield self.b.connect(query={"token": make_token(user)})
        yield client.next("connected")
        presence = self.a.gateway.presence
        deadline = reactor.seconds() + 15
        while ((yield presence.connection_count(user)) != 1
               or self.b.gateway.presence.process_id not in (yield presence.processes())):
            self.assertLess(reactor.seconds(), deadline, "A never saw B's connection")
            yield harness.sleep(0.05)
        return user, client

    @inlineCallbacks
    def restart_redis_with_b_held_back(self):
        """Redis restarts empty; A is back at once, B cannot reach it (the proxy blocks)."""
        self.server.stop()
        self.proxy.cut()
        for gw in (self.a, self.b):
            yield wait_for(lambda gw=gw: gw.gateway.broker.state != "up", seconds=15,
                           what="the gateways to notice Redis is gone")
        self.server.start()
        yield wait_for(lambda: self.a.gateway.broker.state == "up", seconds=15,
                       what="A to reconnect")

    def assertRetryLater(self, result):
        code, body, headers = result
        self.assertEqual((code, body["error"]), (503, "unavailable"), body)
        self.assertTrue(headers.getRawHeaders(b"retry-after"), "503 without Retry-After")

    @inlineCallbacks
    def test_message_to_a_user_of_a_process_not_back_yet_is_503_then_200(self):
        """
        Right after Redis restarts, a message through A to a user connected to A itself is
        200 and arrives; one to a user connected to B (which
        has not written its connections back yet) is 503 with Retry-After, and so is one to
        a user connected nowhere (presence cannot tell them apart yet), never 404.  Once B
        is back: 200, the user gets the message, and a user connected nowhere is 404 again
        (well before the lease time).
        """
        yield self.start(ttl_ms=30000)
        user, client = yield self.connected_on_b()
        local = unique("local")
        local_client = yield self.a.connect(query={"token": make_token(local)})
        yield local_client.next("connected")
        yield self.restart_redis_with_b_held_back()

        # A wrote its own connections back first thing on reconnecting: its user is known
        code, body, _ = yield self.message(local, "at once")
        self.assertEqual(code, 200, body)
        self.assertEqual((yield local_client.next("chat"))["data"], "at once")
        self.assertRetryLater((yield self.message(user, "during")))
        self.assertRetryLater((yield self.message(unique("nobody"), "during")))

        self.proxy.blocked = False
        yield wait_for(lambda: self.b.gateway.broker.state == "up", seconds=15,
                       what="B to reconnect")
        deadline = reactor.seconds() + 10
        while True:
            code, body, headers = yield self.message(user, "after")
            if code != 503:
                break
            self.assertLess(reactor.seconds(), deadline, "still 503 after B came back")
            yield harness.sleep(0.05)
        self.assertEqual(code, 200, body)
        received = yield client.next("chat")
        self.assertEqual(received["data"], "after")
        code, body, _ = yield self.message(unique("nobody"), "after")
        self.assertEqual((code, body["error"]), (404, "not_connected"), body)

    @inlineCallbacks
    def test_a_process_that_never_comes_back_is_given_up_after_the_lease_time(self):
        """
        If B never comes back, A stops waiting for it once B's lease would have expired
        (REALTIME_PRESENCE_TTL_MS after Redis came back): then B's users are not
        connected (404), as after B were killed.
        """
        yield self.start(ttl_ms=3000)
        user, _ = yield self.connected_on_b()
        yield self.restart_redis_with_b_held_back()
        back = reactor.seconds()
        self.assertRetryLater((yield self.message(user, "during")))
        while True:
            code, body, _ = yield self.message(user, "later")
            if code != 503:
                break
            self.assertLess(reactor.seconds() - back, 10, "still 503 long after the lease")
            yield harness.sleep(0.1)
        self.assertEqual((code, body["error"]), (404, "not_connected"), body)
        self.assertGreater(reactor.seconds() - back, 2.0, "gave up before the lease time")


class RedisBehindAProxyTests(unittest.TestCase):
    timeout = 60

    @inlineCallbacks
    def test_client_keeps_trying_when_connections_close_before_they_are_ready(self):
        """
        A proxy or load balancer in front of a Redis that is down accepts connections and
        closes them before SELECT is answered: the client keeps reconnecting (txredisapi
        alone gave up for good: "could not set dbid"), and is connected once Redis is
        reachable again, with no error left in its state.
        """
        server = harness.redis()
        proxy = CuttableProxy("127.0.0.1", server.port)
        proxy.blocked = True
        listening = yield endpoints.TCP4ServerEndpoint(
            reactor, 0, interface="127.0.0.1").listen(proxy)
        self.addCleanup(listening.stopListening)
        client = RedisClient(reactor, parse_redis_url(
            f"redis://127.0.0.1:{listening.getHost().port}/0"), timeout=2.0, name="proxied")
        refused = []
        real_server = proxy.protocol.connectionMade

        def counting(server_protocol):
            if proxy.blocked:
                refused.append(True)
            real_server(server_protocol)

        proxy.protocol = type("Counting", (proxy.protocol,), {"connectionMade": counting})
        client.start()
        self.addCleanup(client.stop)
        yield wait_for(lambda: len(refused) >= 2, what="two connections closed by the proxy")
        self.assertFalse(client.connected)
        proxy.blocked = False
        yield wait_for(lambda: client.connected, seconds=15, what="the client to connect")
        self.assertIsNone(client.last_error)
        self.assertEqual((yield client.execute("PING")), "PONG")
