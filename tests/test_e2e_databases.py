"""
End to end: application databases against a real pouchdb-server, a real gateway on
loopback and real WebSocket clients (JWT auth; cookie auth is the same identity).

"Got nothing" is checked without sleeping: the test ends by making a change the client
may read (a marker) and asserting that it is the next doc-change the client gets; the feed
is ordered, so anything leaked earlier would have come first.
"""

import json

from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from realtime.databases.rulefile import parse_rules
from realtime.feeds.stream import Backoff
from tests import harness
from tests.fakes import SECRET, make_token
from tests.harness import GatewayHarness, unique, wait_for


class DatabaseCase(unittest.TestCase):
    timeout = 90

    #: the rule table of the test database (its name is filled in)
    TABLE = """
users  = ["owner", "members"]
roles  = ["roles"]
hidden = ["secret", "acl.internal"]
"""

    @inlineCallbacks
    def setUp(self):
        self.couch = harness.pouchdb()
        self.db = unique("notes").lower().replace("-", "_")
        self.create_db(self.db)
        self.rules = parse_rules(f"[databases.{self.db}]\n{self.TABLE}", "test.toml")
        self.gw = yield self.start_gateway()

    def create_db(self, name):
        status, body = self.couch.request("PUT", "/" + name)
        self.assertIn(status, (201, 412), body)

    @inlineCallbacks
    def start_gateway(self, **overrides):
        gw = GatewayHarness(jwt_secret=SECRET, config=self.rules, **overrides)
        yield gw.start()
        self.addCleanup(gw.stop)
        return gw

    def put(self, doc_id, db=None, **fields):
        """Write a document (creating or updating it); returns its new rev."""
        db = db or self.db
        status, body = self.couch.request("GET", f"/{db}/{doc_id}")
        doc = {"_id": doc_id}
        if status == 200:
            doc["_rev"] = json.loads(body)["_rev"]
        doc.update(fields)
        status, body = self.couch.request("PUT", f"/{db}/{doc_id}", json.dumps(doc))
        self.assertIn(status, (201, 202), body)
        return json.loads(body)["rev"]

    def delete(self, doc_id, db=None):
        db = db or self.db
        status, body = self.couch.request("GET", f"/{db}/{doc_id}")
        rev = json.loads(body)["_rev"]
        status, body = self.couch.request("DELETE", f"/{db}/{doc_id}?rev={rev}")
        self.assertIn(status, (200, 202), body)

    @inlineCallbacks
    def client(self, user, roles=(), gw=None):
        gw = gw or self.gw
        client = yield gw.connect(query={"token": make_token(user, roles=list(roles))})
        connected = yield client.next("connected")
        self.assertEqual(connected["user"]["id"], user)
        return client

    @inlineCallbacks
    def next_change(self, client, doc_id=None):
        """The next doc-change (of ``doc_id`` when given: the client must get no other)."""
        message = yield client.next("doc-change")
        if doc_id is not None:
            self.assertEqual(message["id"], doc_id, message)
        return message

    @inlineCallbacks
    def assertNothingBefore(self, client, user, roles=()):
        """Make a change the client may read; it must be the next message of its kind."""
        marker = unique("marker")
        self.put(marker, owner=user)
        message = yield self.next_change(client)
        self.assertEqual(message["id"], marker, f"{user} got {message} before the marker")


class RoutingTests(DatabaseCase):
    @inlineCallbacks
    def test_owner_members_and_strangers(self):
        """Owner and members get the document, hidden fields removed; a stranger hears of
        nothing, not even the id; connected carries seqs."""
        alice = yield self.client("alice")
        bob = yield self.client("bob")
        carol = yield self.client("carol")
        connected = [m for m in alice.received if m["type"] == "connected"][0]
        self.assertIn(self.db, connected["seqs"])
        self.assertIn("_users", connected["seqs"])
        doc_id = unique("note")
        rev = self.put(doc_id, owner="alice", members=["bob"], title="hello",
                       secret="s3cret", acl={"internal": "x", "note": "kept"})
        for client in (alice, bob):
            message = yield self.next_change(client, doc_id)
            self.assertEqual(message["db"], self.db)
            self.assertEqual(message["rev"], rev)
            self.assertIsNotNone(message["seq"])
            self.assertEqual(message["doc"]["title"], "hello")
            self.assertNotIn("secret", message["doc"])
            self.assertEqual(message["doc"]["acl"], {"note": "kept"})
            self.assertTrue(message["timestamp"].endswith("Z"))
        yield self.assertNothingBefore(carol, "carol")
        for client in (alice, bob, carol):
            self.assertNotIn("s3cret", json.dumps(client.received))
        self.assertNotIn(doc_id, json.dumps(carol.received))

    @inlineCallbacks
    def test_member_removed_owner_changed_deleted(self):
        """A member taken off gets removed (no doc); an owner change tells the old owner
        removed and the new one the doc; a deletion reaches the last readers as deleted."""
        alice = yield self.client("alice")
        bob = yield self.client("bob")
        dave = yield self.client("dave")
        doc_id = unique("note")
        self.put(doc_id, owner="alice", members=["bob"])
        yield self.next_change(alice, doc_id)
        yield self.next_change(bob, doc_id)
        rev2 = self.put(doc_id, owner="alice", members=[])
        message = yield self.next_change(bob, doc_id)
        self.assertEqual(message["removed"], True)
        self.assertEqual(message["rev"], rev2)
        self.assertNotIn("doc", message)
        self.assertIn("doc", (yield self.next_change(alice, doc_id)))
        self.put(doc_id, owner="dave", members=[])
        self.assertTrue((yield self.next_change(alice, doc_id))["removed"])
        self.assertIn("doc", (yield self.next_change(dave, doc_id)))
        self.delete(doc_id)
        message = yield self.next_change(dave, doc_id)
        self.assertTrue(message["deleted"])
        self.assertNotIn("doc", message)
        yield self.assertNothingBefore(alice, "alice")
        yield self.assertNothingBefore(bob, "bob")

    @inlineCallbacks
    def test_role_grant_and_loss_from_users_doc(self):
        """Roles follow the user's _users document while connected: a role granted opens
        the next change; a role taken away sends removed for the documents it opened, and
        later changes no longer reach the user."""
        name, password = unique("staffer"), unique("pw")
        self.couch.create_user(name, password, roles=[])
        yield self.gw.wait_for_change("org.couchdb.user:" + name)
        client = yield self.client(name)
        doc_id = unique("note")
        self.put(doc_id, roles=["staff"], title="v1")
        yield self.update_user(name, client, roles=["staff"])
        self.put(doc_id, roles=["staff"], title="v2")
        message = yield self.next_change(client, doc_id)
        self.assertEqual(message["doc"]["title"], "v2")
        yield self.update_user(name, client, roles=[])
        message = yield self.next_change(client, doc_id)
        self.assertTrue(message["removed"])
        self.put(doc_id, roles=["staff"], title="v3")
        yield self.assertNothingBefore(client, name)

    @inlineCallbacks
    def update_user(self, name, client, **fields):
        status, body = self.couch.request("GET", "/_users/org.couchdb.user:" + name)
        doc = json.loads(body)
        doc.update(fields)
        status, body = self.couch.request("PUT", "/_users/org.couchdb.user:" + name,
                                          json.dumps(doc))
        self.assertIn(status, (201, 202), body)
        message = yield client.next("user-change")
        self.assertEqual(message["doc"]["roles"], fields["roles"])

    @inlineCallbacks
    def test_roles_from_token(self):
        """A JWT's roles open the documents naming them; admins read nothing unnamed."""
        staff = yield self.client("sam", roles=["staff"])
        root = yield self.client("root", roles=["_admin"])
        doc_id = unique("note")
        self.put(doc_id, roles=["staff"])
        yield self.next_change(staff, doc_id)
        yield self.assertNothingBefore(root, "root")

    @inlineCallbacks
    def test_design_and_local_docs_go_to_nobody(self):
        alice = yield self.client("alice")
        status, body = self.couch.request(
            "PUT", f"/{self.db}/_design/x", json.dumps({"owner": "alice", "views": {}}))
        self.assertIn(status, (201, 202), body)
        yield self.assertNothingBefore(alice, "alice")

    @inlineCallbacks
    def test_restart_between_two_revisions(self):
        """A gateway restarted between two revisions (empty readers index) still tells the
        member taken off: the previous revision is read from CouchDB."""
        doc_id = unique("note")
        bob = yield self.client("bob")
        self.put(doc_id, owner="alice", members=["bob"])
        yield self.next_change(bob, doc_id)
        yield self.gw.stop()
        fresh = yield self.start_gateway()
        bob = yield self.client("bob", gw=fresh)
        self.put(doc_id, owner="alice", members=[])
        message = yield self.next_change(bob, doc_id)
        self.assertTrue(message["removed"])
        stats = fresh.gateway.databases.stats()[self.db]
        self.assertEqual(stats["fetches"], 1)
        self.assertEqual(stats["undecidable"], 0)

    @inlineCallbacks
    def test_metrics_and_status(self):
        """Per-database counters in /metrics; per-database state in the status."""
        alice = yield self.client("alice")
        bob = yield self.client("bob")
        doc_id = unique("note")
        self.put(doc_id, owner="alice", members=["bob"])
        yield self.next_change(bob, doc_id)
        self.put(doc_id, owner="alice")
        yield self.next_change(bob, doc_id)
        yield self.next_change(alice, doc_id)
        yield self.next_change(alice, doc_id)
        text = self.gw.gateway.metrics.render().decode()
        self.assertIn(f'realtime_db_removals_total{{db="{self.db}"}} 1.0', text)
        self.assertIn(f'realtime_db_changes_total{{db="{self.db}"}} 2.0', text)
        self.assertIn(f'realtime_feed_lag_seconds{{db="{self.db}"}}', text)
        status = self.gw.gateway.status()
        self.assertEqual(status["couchdb"]["databases"][self.db]["state"], "connected")


class PublicTests(DatabaseCase):
    TABLE = "public = true\nhidden = \"secret\"\n"

    @inlineCallbacks
    def test_public(self):
        """public: every authenticated user gets every document."""
        a = yield self.client("a")
        b = yield self.client("b")
        doc_id = unique("page")
        self.put(doc_id, title="t", secret="x")
        for client in (a, b):
            message = yield self.next_change(client, doc_id)
            self.assertNotIn("secret", message["doc"])


class SubscribedTests(DatabaseCase):
    TABLE = 'users = "owner"\npush = "subscribed"\n'

    @inlineCallbacks
    def test_only_subscribed_connections(self):
        """push = "subscribed": only the reader's connections subscribed to db: get it."""
        subscribed = yield self.client("alice")
        other = yield self.client("alice")
        subscribed.send_json({"type": "subscribe", "topic": f"db:{self.db}"})
        self.assertEqual((yield subscribed.next("subscribed"))["topic"], f"db:{self.db}")
        doc_id = unique("msg")
        self.put(doc_id, owner="alice")
        yield self.next_change(subscribed, doc_id)
        other.send_json({"type": "subscribe", "topic": f"db:{self.db}"})
        yield other.next("subscribed")
        marker = unique("marker")
        self.put(marker, owner="alice")
        self.assertEqual((yield self.next_change(other))["id"], marker)

    @inlineCallbacks
    def test_db_snapshot(self):
        """db: with snapshot sends the readable documents, then subscribed with the count
        (selectors: tests/test_selector_subscriptions.py)."""
        mine, theirs = unique("mine"), unique("theirs")
        self.put(mine, owner="alice")
        self.put(theirs, owner="bob")
        yield self.gw.wait_for_change(theirs)
        alice = yield self.client("alice")
        alice.send_json({"type": "subscribe", "topic": f"db:{self.db}", "snapshot": True})
        message = yield alice.next("doc-change")
        self.assertEqual((message["id"], message["snapshot"]), (mine, True))
        answer = yield alice.next("subscribed")
        self.assertEqual(answer["snapshot"], 1)


class DocTopicTests(DatabaseCase):
    @inlineCallbacks
    def test_snapshot_forbidden_and_access_lost(self):
        """doc: with snapshot: the document first, then subscribed.  A missing and a
        forbidden document get the same error.  Access lost: removed, then unsubscribed
        access_lost, and nothing more."""
        doc_id, secret_id = unique("note"), unique("hidden")
        self.put(doc_id, owner="alice", members=["bob"], title="t", secret="x")
        self.put(secret_id, owner="alice")
        yield self.gw.wait_for_change(secret_id)
        bob = yield self.client("bob")
        topic = f"doc:{self.db}/{doc_id}"
        bob.send_json({"type": "subscribe", "topic": topic, "snapshot": True})
        snapshot = yield bob.next("doc-change")
        self.assertEqual((snapshot["id"], snapshot["snapshot"]), (doc_id, True))
        self.assertNotIn("secret", snapshot["doc"])
        self.assertEqual((yield bob.next("subscribed"))["topic"], topic)
        refusals = []
        for other in (f"doc:{self.db}/{secret_id}", f"doc:{self.db}/{unique('none')}",
                      f"doc:nosuchdb/{doc_id}", f"doc:{self.db}/_design/x"):
            bob.send_json({"type": "subscribe", "topic": other})
            error = yield bob.next("error")
            refusals.append((error["code"], error["message"]))
        self.assertEqual(len(set(refusals)), 1, refusals)
        self.assertEqual(refusals[0][0], "forbidden")
        self.put(doc_id, owner="alice", members=[])
        message = yield self.next_change(bob, doc_id)
        self.assertTrue(message["removed"])
        self.assertEqual((yield bob.next("unsubscribed")),
                         {"type": "unsubscribed", "topic": topic, "reason": "access_lost"})
        self.put(doc_id, owner="alice", members=[], title="later")
        yield self.assertNothingBefore(bob, "bob")

    @inlineCallbacks
    def test_publish_on_database_topics_refused(self):
        alice = yield self.client("alice")
        alice.send_json({"type": "publish", "topic": f"doc:{self.db}/x", "data": 1})
        self.assertEqual((yield alice.next("error"))["code"], "forbidden")


class MissingDatabaseTests(DatabaseCase):
    @inlineCallbacks
    def setUp(self):
        self.couch = harness.pouchdb()
        self.db = unique("later").lower().replace("-", "_")
        self.rules = parse_rules(f"[databases.{self.db}]\nusers = \"owner\"\n", "t.toml")
        self.gw = GatewayHarness(jwt_secret=SECRET, config=self.rules, start_feeds=False)
        yield self.gw.start()
        self.addCleanup(self.gw.stop)

    @inlineCallbacks
    def test_missing_database_is_shown_and_retried(self):
        """A database missing on CouchDB is shown in the status and retried, not fatal;
        once created, its changes flow."""
        for follower in self.gw.followers:  # built by the harness, not started
            follower._backoff = Backoff(initial=0.2, maximum=0.5)
            follower.start()
        yield wait_for(lambda: self.gw.gateway.status()["couchdb"]["databases"][self.db]
                       ["state"] == "missing", what="the database to show as missing")
        alice = yield self.client("alice")
        self.create_db(self.db)
        yield wait_for(lambda: self.gw.gateway.status()["couchdb"]["databases"][self.db]
                       ["state"] == "connected", what="the feed to connect")
        doc_id = unique("note")
        self.put(doc_id, owner="alice")
        yield self.next_change(alice, doc_id)
