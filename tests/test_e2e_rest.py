"""
End to end: the REST API and topics with a real gateway on loopback and real WebSocket
clients.

"Nobody else got it" is checked with a marker: after the message under test, a broadcast
is sent; a connection's next message being the marker proves nothing came before it (one
connection's messages arrive in order).
"""

import json

import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from tests.fakes import ADMIN_KEY, SECRET, make_token
from tests.harness import GatewayHarness, unique


class RESTEndToEndTests(unittest.TestCase):
    timeout = 60

    @inlineCallbacks
    def setUp(self):
        self.gw = GatewayHarness(feeds=False, jwt_secret=SECRET, admin_key=ADMIN_KEY)
        yield self.gw.start()
        self.addCleanup(self.gw.stop)

    def url(self, path):
        return f"http://127.0.0.1:{self.gw.port}{path}"

    @inlineCallbacks
    def admin(self, method, path, body=None):
        kwargs = {"headers": {b"Authorization": [b"Bearer " + ADMIN_KEY.encode()]},
                  "persistent": False}
        if body is not None:
            kwargs["data"] = json.dumps(body).encode()
            kwargs["headers"][b"Content-Type"] = [b"application/json"]
        response = yield treq.request(method, self.url(path), **kwargs)
        answer = yield response.json()
        return (response.code, answer)

    @inlineCallbacks
    def user(self, user_id=None, **claims):
        """A connected, authenticated client of ``user_id`` (a fresh user by default)."""
        user_id = user_id or unique("user")
        client = yield self.gw.connect(query={"token": make_token(user_id, **claims)})
        yield client.next("connected")
        client.user_id = user_id
        return client

    @inlineCallbacks
    def assert_next_is_marker(self, *clients):
        """Broadcast a marker: each client's next message must be it."""
        marker = unique("marker")
        status, _ = yield self.admin("POST", "/websocket/message/broadcast",
                                     {"type": "marker", "data": marker})
        self.assertEqual(status, 200)
        for client in clients:
            message = yield client.next()
            self.assertEqual((message["type"], message["data"]), ("marker", marker))

    @inlineCallbacks
    def test_message_to_user_reaches_all_their_connections_only(self):
        """POST message/user reaches both of the user's connections and no other."""
        alice1 = yield self.user()
        alice2 = yield self.user(alice1.user_id)
        bob = yield self.user()
        status, body = yield self.admin("POST", "/websocket/message/user",
                                        {"userId": alice1.user_id, "type": "chat",
                                         "data": {"text": "hi"}})
        self.assertEqual((status, body["connections"]), (200, 2))
        for client in (alice1, alice2):
            message = yield client.next("chat")
            self.assertEqual(message["data"], {"text": "hi"})
            self.assertTrue(message["timestamp"].endswith("Z"))
        yield self.assert_next_is_marker(bob)

    @inlineCallbacks
    def test_broadcast_and_notification(self):
        """broadcast reaches every connection; a notification reaches its user only."""
        alice = yield self.user()
        bob = yield self.user()
        status, body = yield self.admin("POST", "/websocket/message/broadcast",
                                        {"type": "maintenance", "data": {"minutes": 5}})
        self.assertEqual((status, body["connections"]), (200, 2))
        for client in (alice, bob):
            self.assertEqual((yield client.next("maintenance"))["data"], {"minutes": 5})
        status, _ = yield self.admin("POST", "/websocket/notification",
                                     {"userId": bob.user_id, "title": "T", "body": "B",
                                      "link": "/x"})
        self.assertEqual(status, 200)
        message = yield bob.next("notification")
        self.assertEqual(message["data"], {"title": "T", "body": "B", "link": "/x"})
        yield self.assert_next_is_marker(alice)

    @inlineCallbacks
    def test_publications_reach_subscribers_only_until_they_leave(self):
        """
        REST and client publications reach the topic's subscribers only; a subscriber that
        unsubscribed gets no more.
        """
        alice = yield self.user()
        bob = yield self.user()
        carol = yield self.user()
        for client in (alice, bob):
            client.send_json({"type": "subscribe", "topic": "public:lobby"})
            self.assertEqual((yield client.next("subscribed"))["topic"], "public:lobby")

        status, _ = yield self.admin("POST", "/websocket/publish",
                                     {"topic": "public:lobby", "data": "from the server"})
        self.assertEqual(status, 200)
        for client in (alice, bob):
            message = yield client.next("publication")
            self.assertEqual((message["from"], message["data"]), ("server", "from the server"))

        alice.send_json({"type": "publish", "topic": "public:lobby", "data": {"n": 1}})
        for client in (alice, bob):
            message = yield client.next("publication")
            self.assertEqual((message["from"], message["data"], message["topic"]),
                             (alice.user_id, {"n": 1}, "public:lobby"))

        bob.send_json({"type": "unsubscribe", "topic": "public:lobby"})
        yield bob.next("unsubscribed")
        alice.send_json({"type": "publish", "topic": "public:lobby", "data": {"n": 2}})
        self.assertEqual((yield alice.next("publication"))["data"], {"n": 2})
        yield self.assert_next_is_marker(bob, carol)

    @inlineCallbacks
    def test_forbidden_subscriptions_refused(self):
        """Another user's topic, an ungranted topic and a doc: topic are refused."""
        alice = yield self.user()
        granted = yield self.user(topics=["room:blue*"])
        for topic in ("user:" + granted.user_id, "room:blue", "doc:db/doc1"):
            alice.send_json({"type": "subscribe", "topic": topic})
            error = yield alice.next("error")
            self.assertEqual((error["code"], error["topic"]), ("forbidden", topic))
        granted.send_json({"type": "subscribe", "topic": "room:blue-2"})
        self.assertEqual((yield granted.next("subscribed"))["topic"], "room:blue-2")
        granted.send_json({"type": "subscribe", "topic": "user:" + granted.user_id})
        yield granted.next("subscribed")
        self.assertEqual(alice.state, alice.STATE_OPEN)

    @inlineCallbacks
    def test_disconnect_closes_the_users_connections(self):
        """DELETE users/{id}/disconnect closes every connection of that user with 4003."""
        alice1 = yield self.user()
        alice2 = yield self.user(alice1.user_id)
        bob = yield self.user()
        status, body = yield self.admin("DELETE",
                                        f"/websocket/users/{alice1.user_id}/disconnect")
        self.assertEqual((status, body["disconnected"]), (200, 2))
        for client in (alice1, alice2):
            code, _ = yield client.wait_closed()
            self.assertEqual(code, 4003)
        status, body = yield self.admin("GET", f"/websocket/users/{alice1.user_id}/status")
        self.assertEqual(body, {"userId": alice1.user_id, "connected": False,
                                "connections": 0})
        yield self.assert_next_is_marker(bob)

    @inlineCallbacks
    def test_metrics_over_http(self):
        """GET /metrics parses as Prometheus text and counts what clients did."""
        alice = yield self.user()
        alice.send_json({"type": "subscribe", "topic": "public:m"})
        yield alice.next("subscribed")
        alice.send_json({"type": "subscribe", "topic": "nope"})
        yield alice.next("error")
        response = yield treq.get(self.url("/metrics"), persistent=False)
        text = (yield response.text("utf-8"))
        self.assertEqual(response.code, 200)
        self.assertNotIn(alice.user_id, text)
        values = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        self.assertEqual(values[("realtime_connections", ())], 1)
        self.assertEqual(values[("realtime_authenticated_users", ())], 1)
        self.assertEqual(values[("realtime_messages_received_total",
                                 (("type", "subscribe"),))], 2)
        self.assertEqual(values[("realtime_messages_sent_total", (("type", "subscribed"),))], 1)
        self.assertEqual(values[("realtime_messages_sent_total", (("type", "connected"),))], 1)
        self.assertEqual(values[("realtime_errors_total", (("code", "forbidden"),))], 1)
        self.assertEqual(values[("realtime_topics", ())], 1)

    @inlineCallbacks
    def test_reauth_with_fewer_grants_leaves_those_topics(self):
        """A fresh token without a grant makes the connection leave that granted topic."""
        alice = yield self.user(topics=["room:*"])
        alice.send_json({"type": "subscribe", "topic": "room:1"})
        yield alice.next("subscribed")
        alice.send_json({"type": "auth", "token": make_token(alice.user_id)})
        yield alice.next("connected")
        message = yield alice.next("unsubscribed")
        self.assertEqual(message, {"type": "unsubscribed", "topic": "room:1",
                                   "reason": "forbidden"})
        status, _ = yield self.admin("POST", "/websocket/publish",
                                     {"topic": "room:1", "data": "late"})
        self.assertEqual(status, 200)
        yield self.assert_next_is_marker(alice)
