"""
Resume of message history end to end: a real gateway on loopback, real WebSocket clients,
the REST API; memory history, and Redis history shared by two gateways (a client resumes
on another process than the one it left).
"""

import json

import treq
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial import unittest

from tests import harness
from tests.fakes import ADMIN_KEY, SECRET, make_token
from tests.harness import GatewayHarness, unique, wait_for


class Base:
    timeout = 60
    overrides = {}

    @inlineCallbacks
    def start_gateway(self, **overrides):
        gw = GatewayHarness(feeds=False, jwt_secret=SECRET, admin_key=ADMIN_KEY,
                            **{**self.overrides, **overrides})
        yield gw.start()
        self.addCleanup(gw.stop)
        return gw

    @inlineCallbacks
    def admin(self, gw, path, body):
        response = yield treq.request(
            "POST", f"http://127.0.0.1:{gw.port}{path}", data=json.dumps(body).encode(),
            headers={b"Authorization": [b"Bearer " + ADMIN_KEY.encode()],
                     b"Content-Type": [b"application/json"]}, persistent=False)
        answer = yield response.json()
        return response.code, answer

    @inlineCallbacks
    def connect(self, gw, user_id, **claims):
        client = yield gw.connect(query={"token": make_token(user_id, **claims)})
        connected = yield client.next("connected")
        return client, connected

    @inlineCallbacks
    def leave(self, gw, client, user_id):
        """Close the client and wait until the gateway no longer counts the user."""
        yield client.close()
        for _ in range(500):  # presence (in Redis, too) no longer counts the user
            count = yield gw.gateway.presence.connection_count(user_id)
            if not count:
                return
            yield harness.sleep(0.02)
        self.fail("the connection did not leave presence")

    @inlineCallbacks
    def offline_messages(self, gw, user_id, n):
        offsets = []
        for i in range(n):
            status, body = yield self.admin(gw, "/websocket/message/user",
                                            {"userId": user_id, "type": "note", "data": i})
            self.assertEqual((status, body["error"], body["stored"]),
                             (404, "not_connected", True))
            offsets.append(body["offset"])
        return offsets


class MessageResume(Base, unittest.TestCase):

    @inlineCallbacks
    def test_offline_messages_resumed_in_order_then_live(self):
        """
        Messages sent while the user was away (404 stored), a notification and a broadcast
        come back on resume, in order, marked replay; then resumed; then live ones.
        """
        gw = yield self.start_gateway()
        user = unique("ann")
        client, connected = yield self.connect(gw, user)
        since = connected["seqs"]["messages"]
        yield self.leave(gw, client, user)
        offsets = yield self.offline_messages(gw, user, 3)
        status, body = yield self.admin(gw, "/websocket/notification",
                                        {"userId": user, "title": "t", "body": "b"})
        self.assertEqual(status, 404)
        offsets.append(body["offset"])
        status, body = yield self.admin(gw, "/websocket/message/broadcast",
                                        {"type": "news", "data": "all"})
        self.assertEqual(status, 200)
        offsets.append(body["offset"])
        yield self.offline_messages(gw, unique("other"), 1)  # someone else's: not replayed

        client, _ = yield self.connect(gw, user)
        client.send_json({"type": "resume", "since": {"messages": since}, "ref": "r1"})
        replayed = []
        for _ in range(5):
            message = yield client.next()
            replayed.append(message)
        self.assertEqual([m["offset"] for m in replayed], offsets)
        self.assertEqual([m["type"] for m in replayed],
                         ["note", "note", "note", "notification", "news"])
        self.assertEqual([m["data"] for m in replayed[:3]], [0, 1, 2])
        self.assertTrue(all(m["replay"] is True for m in replayed))
        resumed = yield client.next("resumed")
        self.assertEqual(resumed, {
            "type": "resumed", "since": {"messages": since},
            "until": {"messages": offsets[-1]}, "replayed": {"messages": 5},
            "recovered": {"messages": True}, "ref": "r1"})
        status, body = yield self.admin(gw, "/websocket/message/user",
                                        {"userId": user, "type": "live", "data": 1})
        self.assertEqual(status, 200)
        live = yield client.next("live")
        self.assertEqual(live["offset"], body["offset"])
        self.assertNotIn("replay", live)

    @inlineCallbacks
    def test_trimmed_history_is_reported(self):
        """Past REALTIME_HISTORY_SIZE: the newest are replayed, recovered false, missed."""
        gw = yield self.start_gateway(history_size=3)
        user = unique("ann")
        client, connected = yield self.connect(gw, user)
        since = connected["seqs"]["messages"]
        yield self.leave(gw, client, user)
        offsets = yield self.offline_messages(gw, user, 5)
        client, _ = yield self.connect(gw, user)
        client.send_json({"type": "resume", "since": {"messages": since}})
        replayed = []
        for _ in range(3):
            message = yield client.next("note")
            replayed.append(message["offset"])
        self.assertEqual(replayed, offsets[2:])
        resumed = yield client.next("resumed")
        self.assertEqual(resumed["recovered"], {"messages": False})
        self.assertEqual(resumed["reason"], {"messages": "history_trimmed"})
        self.assertEqual(resumed["missed"], {"messages": 2})
        self.assertEqual(resumed["until"], {"messages": offsets[-1]})

    @inlineCallbacks
    def test_foreign_offset_and_bad_since(self):
        """An offset not ours: unknown_offset (the connection goes on); a bad since: error."""
        gw = yield self.start_gateway()
        user = unique("ann")
        client, _ = yield self.connect(gw, user)
        client.send_json({"type": "resume", "since": {"messages": "nonsense"}, "ref": "a"})
        resumed = yield client.next("resumed")
        self.assertEqual((resumed["recovered"], resumed["reason"], resumed["ref"]),
                         ({"messages": False}, {"messages": "unknown_offset"}, "a"))
        # null: no position; that key alone is unknown, the others are resumed
        client.send_json({"type": "resume", "since": {"messages": None, "elsewhere": 1},
                          "ref": "n"})
        resumed = yield client.next("resumed")
        self.assertEqual((resumed["recovered"], resumed["reason"]),
                         ({"messages": False, "elsewhere": False},
                          {"messages": "unknown_offset", "elsewhere": "unknown_database"}))
        self.assertIsInstance(resumed["until"]["messages"], str)
        for since in ("x", ["messages"], {"messages": True}, {"messages": {"a": 1}},
                      {str(i): 1 for i in range(65)}):
            client.send_json({"type": "resume", "since": since, "ref": "b"})
            error = yield client.next("error")
            self.assertEqual((error["code"], error["ref"]), ("bad_request", "b"))
        client.send_json({"type": "ping"})
        yield client.next("pong")

    @inlineCallbacks
    def test_topic_resumed_with_since(self):
        """subscribe {topic, since}: the publications after it, then subscribed, then live."""
        gw = yield self.start_gateway()
        user, topic = unique("ann"), "public:" + unique("room")
        client, _ = yield self.connect(gw, user)
        client.send_json({"type": "subscribe", "topic": topic})
        yield client.next("subscribed")
        status, body = yield self.admin(gw, "/websocket/publish", {"topic": topic, "data": 0})
        first = yield client.next("publication")
        self.assertEqual(first["offset"], body["offset"])
        yield self.leave(gw, client, user)
        later = []
        for i in (1, 2):
            status, body = yield self.admin(gw, "/websocket/publish",
                                            {"topic": topic, "data": i})
            later.append(body["offset"])
        client, _ = yield self.connect(gw, user)
        client.send_json({"type": "subscribe", "topic": topic, "since": first["offset"],
                          "ref": "s1"})
        replayed = []
        for _ in range(2):
            replayed.append((yield client.next("publication")))
        self.assertEqual([(m["data"], m["offset"], m["replay"]) for m in replayed],
                         [(1, later[0], True), (2, later[1], True)])
        subscribed = yield client.next("subscribed")
        self.assertEqual(subscribed, {"type": "subscribed", "topic": topic,
                                      "recovered": True, "until": later[1], "replayed": 2,
                                      "ref": "s1"})
        yield self.admin(gw, "/websocket/publish", {"topic": topic, "data": 3})
        live = yield client.next("publication")
        self.assertEqual(live["data"], 3)

    @inlineCallbacks
    def test_topic_left_before_its_first_publication(self):
        """
        A plain subscribe answers the topic's position (until): a client that leaves before
        anything is published resumes from it and gets what was published while away.
        """
        gw = yield self.start_gateway()
        user, topic = unique("ann"), "public:" + unique("room")
        client, _ = yield self.connect(gw, user)
        client.send_json({"type": "subscribe", "topic": topic})
        subscribed = yield client.next("subscribed")
        position = subscribed["until"]
        yield self.leave(gw, client, user)
        offsets = []
        for i in (1, 2):
            status, body = yield self.admin(gw, "/websocket/publish",
                                            {"topic": topic, "data": i})
            self.assertEqual(status, 200)
            offsets.append(body["offset"])
        client, _ = yield self.connect(gw, user)
        client.send_json({"type": "subscribe", "topic": topic, "since": position})
        replayed = []
        for _ in range(2):
            replayed.append((yield client.next("publication")))
        self.assertEqual([(m["data"], m["offset"], m["replay"]) for m in replayed],
                         [(1, offsets[0], True), (2, offsets[1], True)])
        subscribed = yield client.next("subscribed")
        self.assertEqual((subscribed["recovered"], subscribed["until"], subscribed["replayed"]),
                         (True, offsets[1], 2))

    @inlineCallbacks
    def test_no_gap_no_duplicate_while_the_history_is_read(self):
        """
        Messages that arrive while the replay reads the history are held: the one the
        replay also found is sent once, the later one after resumed, in order.
        """
        gw = yield self.start_gateway()
        user = unique("ann")
        client, connected = yield self.connect(gw, user)
        since = connected["seqs"]["messages"]
        history = gw.gateway.history
        real_read = history.read
        reading = Deferred()
        read_called = Deferred()

        def slow_read(streams, offset):
            d = real_read(streams, offset)
            read_called.callback(None)
            return reading.addCallback(lambda _: d)

        history.read = slow_read
        self.addCleanup(setattr, history, "read", real_read)
        status, body = yield self.admin(gw, "/websocket/message/user",
                                        {"userId": user, "type": "before", "data": 0})
        yield client.next("before")
        client.send_json({"type": "resume", "since": {"messages": since}})
        yield read_called
        # While the read is pending, a message the read will not see arrives live.
        status, body = yield self.admin(gw, "/websocket/message/user",
                                        {"userId": user, "type": "during", "data": 1})
        self.assertEqual(status, 200)
        during_offset = body["offset"]
        reading.callback(None)
        replayed = yield client.next("before")
        self.assertTrue(replayed["replay"])
        resumed = yield client.next("resumed")
        self.assertEqual(resumed["replayed"], {"messages": 1})
        during = yield client.next("during")
        self.assertEqual((during["offset"], during.get("replay")), (during_offset, None))
        # and nothing else was queued: the next message is a new one
        yield self.admin(gw, "/websocket/message/user",
                         {"userId": user, "type": "after", "data": 2})
        yield client.next("after")

    @inlineCallbacks
    def test_live_copy_of_a_replayed_message_is_not_sent_twice(self):
        """A message stored before the read and delivered live during it: sent once."""
        gw = yield self.start_gateway()
        user = unique("ann")
        client, connected = yield self.connect(gw, user)
        since = connected["seqs"]["messages"]
        history = gw.gateway.history
        real_read = history.read
        reading = Deferred()
        read_called = Deferred()
        real_publish = gw.gateway.broker.publish
        held_events = []

        def slow_read(streams, offset):
            read_called.callback(None)
            return reading.addCallback(lambda _: real_read(streams, offset))

        def late_publish(event):  # hold the live delivery until the read has begun
            if event.get("type") == "dup" and not read_called.called:
                held = Deferred()
                held_events.append((event, held))
                return held
            return real_publish(event)

        history.read = slow_read
        gw.gateway.broker.publish = late_publish
        self.addCleanup(setattr, history, "read", real_read)
        self.addCleanup(setattr, gw.gateway.broker, "publish", real_publish)
        request = self.admin(gw, "/websocket/message/user",
                             {"userId": user, "type": "dup", "data": 0})
        yield wait_for(lambda: held_events, what="the message to be stored")
        client.send_json({"type": "resume", "since": {"messages": since}})
        yield read_called
        event, held = held_events[0]
        real_publish(event).chainDeferred(held)  # delivered live during the replay: held
        status, _ = yield request
        self.assertEqual(status, 200)
        reading.callback(None)
        replayed = yield client.next("dup")
        self.assertTrue(replayed["replay"])
        yield client.next("resumed")
        yield self.admin(gw, "/websocket/message/broadcast", {"type": "marker", "data": 1})
        yield client.next("marker")  # the live copy of "dup" was left out


class RedisMessageResume(Base, unittest.TestCase):
    """Two gateways on one Redis: a client resumes on the other process."""

    @inlineCallbacks
    def test_resume_on_another_process(self):
        """Stored via process A while the user was away, resumed on process B."""
        prefix = unique("rh") + ":"
        a = yield self.start_gateway(redis_url=harness.redis().url, redis_prefix=prefix)
        b = yield self.start_gateway(redis_url=harness.redis().url, redis_prefix=prefix)
        user = unique("ann")
        client, connected = yield self.connect(a, user)
        since = connected["seqs"]["messages"]
        yield self.leave(a, client, user)
        offsets = []
        for gw in (a, b, a):
            status, body = yield self.admin(gw, "/websocket/message/user",
                                            {"userId": user, "type": "note", "data": 1})
            self.assertEqual((status, body["stored"]), (404, True))
            offsets.append(body["offset"])
        client, _ = yield self.connect(b, user)
        client.send_json({"type": "resume", "since": {"messages": since}})
        got = []
        for _ in offsets:
            got.append((yield client.next("note"))["offset"])
        self.assertEqual(got, offsets)
        resumed = yield client.next("resumed")
        self.assertEqual(resumed["recovered"], {"messages": True})
