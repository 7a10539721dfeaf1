"""
Keep-alive over a real socket: the heartbeat's WebSocket ping (pre-framed, through the
outbox) is answered by a real Autobahn client, and a connection whose ping goes unanswered
is dropped at the next heartbeat after the timeout.
"""

from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from realtime.transport.keepalive import keep_alive
from tests.fakes import SECRET, make_token
from tests.harness import GatewayHarness, unique, wait_for


class KeepAliveTests(unittest.TestCase):
    timeout = 60

    @inlineCallbacks
    def setUp(self):
        self.gw = GatewayHarness(feeds=False, jwt_secret=SECRET)
        yield self.gw.start()
        self.addCleanup(self.gw.stop)

    @inlineCallbacks
    def open(self):
        client = yield self.gw.connect(query={"token": make_token(unique("user"))})
        yield client.next("connected")
        [conn] = self.gw.gateway.connections()  # the server side of the one connection
        return client, conn

    @inlineCallbacks
    def test_real_client_answers_the_ping(self):
        """An Autobahn client answers the pre-framed ping; the connection stays open."""
        client, conn = yield self.open()
        now = self.gw.gateway.now()
        keep_alive([conn], now, 30.0)
        self.assertIsNotNone(conn._ping_sent_at)
        yield wait_for(lambda: conn._ping_sent_at is None, what="the pong")
        keep_alive([conn], now + 31, 30.0)  # answered: pinged again, not dropped
        client.send_json({"type": "ping"})
        yield client.next("pong")

    @inlineCallbacks
    def test_unanswered_ping_drops_the_connection(self):
        """A client that does not answer is dropped at the first heartbeat past the timeout."""
        client, conn = yield self.open()
        client.onPing = lambda payload: None  # a peer that never answers
        now = self.gw.gateway.now()
        keep_alive([conn], now, 30.0)
        keep_alive([conn], now + 29, 30.0)
        self.assertEqual(conn.state, conn.STATE_OPEN)
        keep_alive([conn], now + 30, 30.0)
        yield client.wait_closed()

