"""
Topics without a network: names, permissions (pure functions), and the client's
subscribe / unsubscribe / publish against a gateway with the memory broker.
"""

from __future__ import annotations

from twisted.trial import unittest

from realtime.auth.identity import Identity
from realtime.hub import topics
from tests.fakes import DownBroker, FakeConnection, make_gateway


def identity(user_id="alice", grants=()):
    return Identity(user_id=user_id, name=user_id, topics=tuple(grants))


class TopicNameTests(unittest.TestCase):
    def test_valid_names(self):
        """Ordinary names, Unicode user topics and names of exactly 200 characters are valid."""
        for name in ("public:news", "user:alice", "user:José", "doc:db/doc-1", "a",
                     "room:" + "x" * 195, "team:a.b_c-d/e:f@g"):
            self.assertIsNone(topics.topic_error(name), name)

    def test_invalid_names(self):
        """Non-strings, empty, too long, control characters, spaces and * are refused."""
        for name in (None, 5, ["a"], "", "x" * 201, "a b", "a\tb", "a\x00b", "a\nb",
                     "public:*", "a\u200bb", "a\u2028b"):
            self.assertIsNotNone(topics.topic_error(name), repr(name))


class PermissionTests(unittest.TestCase):
    def test_user_topic_only_for_that_user(self):
        """user:<id> is open to that user only."""
        self.assertTrue(topics.may_subscribe(identity("alice"), "user:alice"))
        self.assertFalse(topics.may_subscribe(identity("alice"), "user:bob"))
        self.assertFalse(topics.may_subscribe(identity("alice"), "user:alice2"))
        self.assertFalse(topics.may_subscribe(identity("alice"), "user:"))

    def test_public_topics_for_any_user(self):
        """public:<name> is open to any authenticated user, but needs a name."""
        self.assertTrue(topics.may_subscribe(identity("bob"), "public:news"))
        self.assertFalse(topics.may_subscribe(identity("bob"), "public:"))
        self.assertFalse(topics.may_subscribe(None, "public:news"))

    def test_grants_exact_and_prefix(self):
        """The JWT topics claim grants exact names and prefix* families."""
        who = identity("alice", grants=("room:42", "team:blue/*"))
        self.assertTrue(topics.may_subscribe(who, "room:42"))
        self.assertFalse(topics.may_subscribe(who, "room:420"))
        self.assertTrue(topics.may_subscribe(who, "team:blue/chat"))
        self.assertFalse(topics.may_subscribe(who, "team:bluest"))
        self.assertTrue(topics.may_subscribe(identity(grants=("*",)), "anything:at-all"))

    def test_everything_else_is_forbidden(self):
        """Ungranted topics are refused; database topics are never opened by a grant (the
        document rules decide them, against CouchDB)."""
        for name in ("room:42", "doc:db/doc1", "admin", "users:alice"):
            self.assertFalse(topics.may_subscribe(identity("alice"), name))
        for grants in (("doc:db/*",), ("*",), ("db:db",)):
            for name in ("doc:db/doc1", "db:db"):
                self.assertFalse(topics.may_subscribe(identity(grants=grants), name))
        # another user's user: topic: no grant opens it (its publications are theirs)
        for grants in (("*",), ("user:*",), ("user:bob",), ("u*",)):
            self.assertFalse(topics.may_subscribe(identity("alice", grants=grants), "user:bob"))
            self.assertFalse(topics.may_publish(identity("alice", grants=grants), "user:bob"))
            self.assertTrue(topics.may_subscribe(identity("alice", grants=grants), "user:alice"))

    def test_publish_follows_subscribe(self):
        """A client may publish where it may subscribe, never on a database topic."""
        for who, name in ((identity("alice"), "user:alice"), (identity("a"), "public:x"),
                          (identity(grants=("room:*",)), "room:1")):
            self.assertTrue(topics.may_publish(who, name))
        for who, name in ((identity("alice"), "user:bob"), (identity(grants=("*",)), "doc:a/b"),
                          (identity(grants=("*",)), "db:a")):
            self.assertFalse(topics.may_publish(who, name))


class ClientTopicTests(unittest.TestCase):
    def setUp(self):
        self.gateway = make_gateway()

    def conn(self, user, grants=()):
        return FakeConnection(self.gateway, user, topics=grants)

    def test_subscribe_publish_unsubscribe(self):
        """
        subscribe answers subscribed; a publication reaches subscribers (the publisher
        too) with from = the publisher; after unsubscribe nothing more arrives.
        """
        alice, bob, carol = self.conn("alice"), self.conn("bob"), self.conn("carol")
        topics.handle_subscribe(alice, {"type": "subscribe", "topic": "public:chat"})
        topics.handle_subscribe(bob, {"type": "subscribe", "topic": "public:chat"})
        head = self.gateway.history.head()
        self.assertEqual(alice.received,
                         [{"type": "subscribed", "topic": "public:chat", "until": head}])

        topics.handle_publish(bob, {"type": "publish", "topic": "public:chat", "data": {"m": 1}})
        offset = alice.of_type("publication")[0]["offset"]
        publication = {"type": "publication", "topic": "public:chat", "data": {"m": 1},
                       "from": "bob", "timestamp": "2023-11-14T22:13:20.000Z",
                       "offset": offset}
        self.assertEqual(alice.of_type("publication"), [publication])
        self.assertEqual(bob.of_type("publication"), [publication])
        self.assertEqual(carol.received, [])

        topics.handle_unsubscribe(alice, {"type": "unsubscribe", "topic": "public:chat"})
        self.assertEqual(alice.received[-1], {"type": "unsubscribed", "topic": "public:chat"})
        topics.handle_publish(bob, {"type": "publish", "topic": "public:chat", "data": 2})
        self.assertEqual(len(alice.of_type("publication")), 1)
        self.assertEqual(len(bob.of_type("publication")), 2)

    def test_forbidden_subscribe_and_publish(self):
        """Subscribing or publishing to a topic not allowed gets error forbidden, no effect."""
        alice, bob = self.conn("alice"), self.conn("bob")
        topics.handle_subscribe(bob, {"type": "subscribe", "topic": "user:bob"})
        topics.handle_subscribe(alice, {"type": "subscribe", "topic": "user:bob"})
        self.assertEqual(alice.received, [{"type": "error", "code": "forbidden",
                                           "message": "you may not subscribe to this topic",
                                           "topic": "user:bob"}])
        self.assertEqual(self.gateway.registry.subscribers("user:bob"), [bob])
        topics.handle_publish(alice, {"type": "publish", "topic": "user:bob", "data": "hi"})
        self.assertEqual(alice.received[-1]["code"], "forbidden")
        self.assertEqual(bob.of_type("publication"), [])
        topics.handle_subscribe(alice, {"type": "subscribe", "topic": "doc:db/x"})
        self.assertEqual(alice.received[-1]["code"], "forbidden")

    def test_granted_topic(self):
        """A topic granted by the JWT claim can be subscribed to and published on."""
        alice = self.conn("alice", grants=("room:*",))
        topics.handle_subscribe(alice, {"type": "subscribe", "topic": "room:7"})
        topics.handle_publish(alice, {"type": "publish", "topic": "room:7", "data": None})
        self.assertEqual([m["type"] for m in alice.received], ["subscribed", "publication"])
        self.assertIsNone(alice.received[-1]["data"])

    def test_bad_requests(self):
        """Invalid names and a publish without data get error bad_request."""
        alice = self.conn("alice")
        for message in ({"type": "subscribe"}, {"type": "subscribe", "topic": 3},
                        {"type": "unsubscribe", "topic": "a b"},
                        {"type": "publish", "topic": "public:x"},
                        {"type": "publish", "topic": "x" * 500, "data": 1}):
            getattr(topics, "handle_" + message["type"])(alice, message)
            self.assertEqual(alice.received[-1]["code"], "bad_request", message)
        self.assertNotIn("topic", alice.received[-1])  # an over-long name is not echoed
        self.assertEqual(alice.topics, set())

    def test_topic_limit(self):
        """Past the per-connection topic limit, subscribe gets too_many_topics."""
        self.gateway = make_gateway(max_topics_per_connection=2)
        alice = self.conn("alice")
        for name in ("public:a", "public:b", "public:c"):
            topics.handle_subscribe(alice, {"type": "subscribe", "topic": name})
        self.assertEqual([m.get("code", m["type"]) for m in alice.received],
                         ["subscribed", "subscribed", "too_many_topics"])
        self.assertEqual(alice.topics, {"public:a", "public:b"})
        topics.handle_subscribe(alice, {"type": "subscribe", "topic": "public:a"})
        self.assertEqual(alice.received[-1], {"type": "subscribed", "topic": "public:a",
                                              "until": self.gateway.history.head()})

    def test_unsubscribe_not_subscribed_is_answered(self):
        """unsubscribe from a topic not held still answers unsubscribed (idempotent)."""
        alice = self.conn("alice")
        topics.handle_unsubscribe(alice, {"type": "unsubscribe", "topic": "public:x"})
        self.assertEqual(alice.received, [{"type": "unsubscribed", "topic": "public:x"}])

    def test_broker_refusal_is_reported(self):
        """When the broker refuses a publication, the publisher gets error unavailable."""

        self.gateway = make_gateway(broker=DownBroker())
        alice = self.conn("alice")
        topics.handle_publish(alice, {"type": "publish", "topic": "public:x", "data": 1})
        self.assertEqual(alice.received[-1]["code"], "unavailable")

    def test_closed_connection_leaves_its_topics(self):
        """A connection removed from the registry is no subscriber any more."""
        alice, bob = self.conn("alice"), self.conn("bob")
        topics.handle_subscribe(alice, {"type": "subscribe", "topic": "public:x"})
        self.gateway.registry.remove(alice)
        topics.handle_publish(bob, {"type": "publish", "topic": "public:x", "data": 1})
        self.assertEqual(alice.of_type("publication"), [])
        self.assertEqual(self.gateway.registry.topic_count(), 0)

    def test_recheck_after_new_identity_drops_what_is_no_longer_granted(self):
        """With a new identity, topics no longer granted are left and announced as such."""
        alice = self.conn("alice", grants=("room:*",))
        for name in ("room:1", "public:x", "user:alice"):
            topics.handle_subscribe(alice, {"type": "subscribe", "topic": name})
        alice.received.clear()
        alice.identity = Identity(user_id="alice", name="alice", topics=())
        topics.recheck_subscriptions(alice)
        self.assertEqual(alice.received, [{"type": "unsubscribed", "topic": "room:1",
                                           "reason": "forbidden"}])
        self.assertEqual(alice.topics, {"public:x", "user:alice"})
        self.assertEqual(self.gateway.registry.subscribers("room:1"), [])
