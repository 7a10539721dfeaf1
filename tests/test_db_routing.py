"""
Deterministic tests of application-database routing (realtime.databases.routing) with the
real registry and recording connections: who gets doc-change, deleted and removed; the
readers index and its CouchDB fallback (a fake that answers as CouchDB would, including a
compacted previous revision); doc: subscribers losing access.
"""

from twisted.internet.defer import Deferred, succeed
from twisted.trial import unittest

from realtime.databases.readers import ReadersIndex, parent_rev
from realtime.databases.routing import DatabaseRouter, db_topic, doc_topic
from realtime.databases.rulefile import parse_rules
from tests.fakes import FakeConnection, make_gateway

RULES = """
[databases.notes]
users  = ["owner", "members"]
roles  = ["roles"]
hidden = ["secret", "meta.internal"]

[databases.wiki]
public = true

[databases.inbox]
users = "owner"
push = "subscribed"
"""


class FakeRevisions:
    """previous_revision answers from a table: (id, rev) -> (known, doc); a missing key is
    'compacted' (unknown).  ``hold`` makes answers wait for a manual fire."""

    def __init__(self):
        self.table = {}
        self.asked = []
        self.held = []
        self.hold = False

    def previous_revision(self, db, doc_id, rev):
        self.asked.append((db, doc_id, rev))
        answer = self.table.get((doc_id, rev), (False, None))
        if self.hold:
            d = Deferred()
            self.held.append((d, answer))
            return d
        return succeed(answer)


def change(doc_id, rev, seq, deleted=False, **fields):
    doc = {"_id": doc_id, "_rev": rev, **fields}
    if deleted:
        doc = {"_id": doc_id, "_rev": rev, "_deleted": True}
    row = {"seq": seq, "id": doc_id, "changes": [{"rev": rev}], "doc": doc}
    if deleted:
        row["deleted"] = True
    return row


class RoutingCase(unittest.TestCase):
    db = "notes"

    def setUp(self):
        self.gateway = make_gateway()
        self.registry = self.gateway.registry
        self.revisions = FakeRevisions()
        self.router = DatabaseRouter(parse_rules(RULES)[self.db], self.registry,
                                     self.revisions, self.gateway.timestamp)
        self.conns = {}

    def connect(self, user, roles=(), name=None):
        conn = FakeConnection(self.gateway, user, roles=roles)
        self.conns[name or user] = conn
        return conn

    def take(self, name):
        """Messages received by a connection since the last take."""
        conn = self.conns[name]
        got, conn.received = conn.received, []
        return got

    def assertOnly(self, expected):
        """Each named connection got exactly the listed kinds (doc/deleted/removed/
        unsubscribed); every other one got nothing."""
        for name in self.conns:
            got = self.take(name)
            kinds = []
            for message in got:
                if message["type"] == "unsubscribed":
                    kinds.append("unsubscribed")
                    continue
                self.assertEqual(message["type"], "doc-change")
                self.assertEqual(message["db"], self.db)
                kinds.append("deleted" if message.get("deleted") else
                             "removed" if message.get("removed") else "doc")
                if kinds[-1] != "doc":
                    self.assertNotIn("doc", message)
            self.assertEqual(kinds, expected.get(name, []), name)


class NotesTests(RoutingCase):
    def setUp(self):
        super().setUp()
        for user in ("alice", "bob", "carol", "eve"):
            self.connect(user)
        self.connect("sam", roles=("staff",))
        self.connect("root", roles=("_admin",))

    def test_owner_and_members(self):
        """The owner and the members get doc-change; nobody else hears of it."""
        self.router.on_change(change("n1", "1-a", 1, owner="alice", members=["bob"],
                                     title="t"))
        messages = self.conns["bob"].received
        self.assertEqual(len(messages), 1)
        message = messages[0]
        self.assertEqual(list(message), ["type", "db", "id", "rev", "seq", "doc", "timestamp"])
        self.assertEqual((message["id"], message["rev"], message["seq"]), ("n1", "1-a", 1))
        self.assertEqual(message["doc"]["title"], "t")
        self.assertOnly({"alice": ["doc"], "bob": ["doc"]})
        self.assertEqual(self.revisions.asked, [], "a first revision has no previous one")

    def test_member_removal(self):
        """A member taken off gets removed (no doc); those who still read get the doc."""
        self.router.on_change(change("n1", "1-a", 1, owner="alice", members=["bob", "carol"]))
        self.assertOnly({"alice": ["doc"], "bob": ["doc"], "carol": ["doc"]})
        self.router.on_change(change("n1", "2-b", 2, owner="alice", members=["bob"]))
        self.assertOnly({"alice": ["doc"], "bob": ["doc"], "carol": ["removed"]})
        self.assertEqual(self.router.stats.removals, 1)
        # A further change: carol is not told again.
        self.router.on_change(change("n1", "3-c", 3, owner="alice", members=["bob"]))
        self.assertOnly({"alice": ["doc"], "bob": ["doc"]})

    def test_owner_change(self):
        self.router.on_change(change("n1", "1-a", 1, owner="alice"))
        self.take("alice")
        self.router.on_change(change("n1", "2-b", 2, owner="bob"))
        self.assertOnly({"alice": ["removed"], "bob": ["doc"]})

    def test_role(self):
        """A document naming a role reaches the connections holding it (admins included
        only when named)."""
        self.router.on_change(change("n1", "1-a", 1, roles=["staff"]))
        self.assertOnly({"sam": ["doc"]})
        self.router.on_change(change("n1", "2-b", 2, roles=["_admin"]))
        self.assertOnly({"sam": ["removed"], "root": ["doc"]})

    def test_roles_matched_as_held_now(self):
        """Principals are stored: a connection whose roles changed is matched with the new
        ones at the next change."""
        self.router.on_change(change("n1", "1-a", 1, roles=["staff"]))
        self.take("sam")
        eve = self.conns["eve"]
        eve.identity = eve.identity.__class__(user_id="eve", name="eve", roles=("staff",))
        self.registry.reindex_roles(eve)
        self.router.on_change(change("n1", "2-b", 2, roles=["staff"], title="x"))
        self.assertOnly({"sam": ["doc"], "eve": ["doc"]})

    def test_deletion(self):
        """A deletion goes to those who could read the last live revision."""
        self.router.on_change(change("n1", "1-a", 1, owner="alice", members=["bob"]))
        self.take("alice"), self.take("bob")
        self.router.on_change(change("n1", "2-b", 2, deleted=True))
        self.assertOnly({"alice": ["deleted"], "bob": ["deleted"]})
        self.assertNotIn("n1", self.router.index)

    def test_recreated_document_a_subscriber_may_not_read_is_not_announced(self):
        """A doc: subscription outlives a deletion; the id created again as another's
        document tells the subscriber nothing (no removed, no unsubscribed): it would say
        that a document they cannot read exists.  Created again as theirs, they get it."""
        self.router.on_change(change("n1", "1-a", 1, owner="bob"))
        self.registry.subscribe(self.conns["bob"], doc_topic("notes", "n1"))
        self.take("bob")
        self.router.on_change(change("n1", "2-b", 2, deleted=True))
        self.assertOnly({"bob": ["deleted"]})
        self.revisions.table[("n1", "3-c")] = (True, None)  # its previous: the tombstone
        self.router.on_change(change("n1", "3-c", 3, owner="alice", title="private"))
        self.assertOnly({"alice": ["doc"]})
        self.assertIn(doc_topic("notes", "n1"), self.conns["bob"].topics)
        # deleted again: told to who could read it (alice), not to the subscriber
        self.router.on_change(change("n1", "4-d", 4, deleted=True))
        self.assertOnly({"alice": ["deleted"]})
        self.revisions.table[("n1", "5-e")] = (True, None)
        self.router.on_change(change("n1", "5-e", 5, owner="bob", title="given back"))
        self.assertOnly({"bob": ["doc"]})

    def test_hidden_fields(self):
        self.router.on_change(change("n1", "1-a", 1, owner="alice", secret="s",
                                     meta={"internal": "i", "shown": 1}))
        doc = self.conns["alice"].received[0]["doc"]
        self.assertNotIn("secret", doc)
        self.assertEqual(doc["meta"], {"shown": 1})

    def test_internal_documents(self):
        """_design/ and _local/ documents go to nobody, whatever they hold."""
        self.router.on_change(change("_design/x", "1-a", 1, owner="alice"))
        self.router.on_change(change("_local/x", "1-a", 2, owner="alice"))
        self.router.on_change({"seq": 3, "id": "n2", "changes": [{"rev": "1-a"}]})  # no doc
        self.assertOnly({})
        self.assertEqual(self.router.stats.skipped, 1)

    def test_nobody_named(self):
        """A document naming nobody reaches nobody, not even its id."""
        self.router.on_change(change("n1", "1-a", 1, title="orphan"))
        self.assertOnly({})

    def test_index_miss_reads_previous_revision(self):
        """After a restart (empty index) the previous revision is read from CouchDB."""
        self.revisions.table[("n1", "3-c")] = (True, {"_id": "n1", "_rev": "2-b",
                                                      "owner": "alice", "members": ["carol"]})
        self.router.on_change(change("n1", "3-c", 7, owner="alice"))
        self.assertEqual(self.revisions.asked, [("notes", "n1", "3-c")])
        self.assertOnly({"alice": ["doc"], "carol": ["removed"]})
        self.assertEqual(self.router.stats.fetches, 1)

    def test_compacted_previous_is_undecidable(self):
        """No index and no previous revision: nobody is told removed (not leaking wins),
        and the case is counted."""
        self.router.on_change(change("n1", "3-c", 7, owner="alice"))
        self.assertOnly({"alice": ["doc"]})
        self.assertEqual(self.router.stats.undecidable, 1)

    def test_undecidable_tells_a_doc_subscriber_nothing(self):
        """Undecidable previous readers: the change may be the re-creation of a deleted
        document (the subscription outlives deletions), so a subscriber who may not read
        the new revision is told nothing and stays subscribed; the case is counted."""
        carol = self.conns["carol"]
        self.registry.subscribe(carol, doc_topic("notes", "n1"))
        self.router.on_change(change("n1", "3-c", 7, owner="alice"))
        self.assertOnly({"alice": ["doc"]})
        self.assertIn(doc_topic("notes", "n1"), carol.topics)
        self.assertEqual(self.router.stats.undecidable, 1)

    def test_doc_subscriber_loses_access(self):
        """removed, then unsubscribed with reason access_lost; no later change reaches it."""
        self.router.on_change(change("n1", "1-a", 1, owner="alice", members=["bob"]))
        self.take("alice"), self.take("bob")
        bob = self.conns["bob"]
        topic = doc_topic("notes", "n1")
        self.registry.subscribe(bob, topic)
        self.router.on_change(change("n1", "2-b", 2, owner="alice"))
        got = self.take("bob")
        self.assertEqual([m.get("removed") for m in got[:1]], [True])
        self.assertEqual(got[1], {"type": "unsubscribed", "topic": topic,
                                  "reason": "access_lost"})
        self.assertEqual(len(got), 2, "removed once, even as a reader and a subscriber")
        self.assertEqual(self.registry.subscribers(topic), [])

    def test_no_fetch_when_nobody_connected(self):
        """With no connection, CouchDB is not asked (nobody could be told)."""
        for conn in list(self.conns.values()):
            self.registry.remove(conn)
        self.router.on_change(change("n1", "5-e", 9, owner="alice"))
        self.assertEqual(self.revisions.asked, [])
        self.assertEqual(self.router.index.get("n1").principals, {"user:alice"})

    def test_fetch_keeps_order(self):
        """While the previous revision is read, on_change returns a Deferred; the routing
        happens when it fires (the follower holds later changes meanwhile)."""
        self.revisions.hold = True
        self.revisions.table[("n1", "2-b")] = (True, {"_id": "n1", "owner": "bob"})
        d = self.router.on_change(change("n1", "2-b", 2, owner="alice"))
        self.assertIsInstance(d, Deferred)
        self.assertOnly({})
        held, answer = self.revisions.held.pop()
        held.callback(answer)
        self.successResultOf(d)
        self.assertOnly({"alice": ["doc"], "bob": ["removed"]})

    def test_access_rule_failure_reads_nobody(self):
        """A failing access callable: that revision is readable by nobody."""
        import sys
        import types
        module = types.ModuleType("rt_test_routing_access")
        module.rule = lambda doc: ["user:" + doc["who"]]
        sys.modules["rt_test_routing_access"] = module
        self.addCleanup(sys.modules.pop, "rt_test_routing_access")
        rule = parse_rules('[databases.notes]\naccess = "rt_test_routing_access:rule"\n')
        router = DatabaseRouter(rule["notes"], self.registry, self.revisions,
                                self.gateway.timestamp)
        router.on_change(change("n1", "1-a", 1, who="alice"))
        self.assertOnly({"alice": ["doc"]})
        router.on_change(change("n1", "2-b", 2))  # KeyError in the rule
        self.assertOnly({"alice": ["removed"]})
        self.assertEqual(router.stats.rule_errors, 1)

    def test_several_connections_of_a_user(self):
        """Every connection of a reader gets it once."""
        second = self.connect("alice", name="alice2")
        self.router.on_change(change("n1", "1-a", 1, owner="alice", members=["alice"]))
        self.assertOnly({"alice": ["doc"], "alice2": ["doc"]})
        self.assertIsNotNone(second)


class PublicTests(RoutingCase):
    db = "wiki"

    def test_public(self):
        """public: every authenticated connection gets every document."""
        self.connect("a")
        self.connect("b", roles=("x",))
        self.router.on_change(change("w1", "1-a", 1, title="t"))
        self.assertOnly({"a": ["doc"], "b": ["doc"]})


class SubscribedTests(RoutingCase):
    db = "inbox"

    def test_only_subscribers(self):
        """push = "subscribed": only db:/doc: subscribers who may read get it."""
        alice = self.connect("alice")
        self.connect("alice", name="alice-unsubscribed")
        bob = self.connect("bob")
        self.registry.subscribe(alice, db_topic("inbox"))
        self.registry.subscribe(bob, db_topic("inbox"))
        self.router.on_change(change("m1", "1-a", 1, owner="alice"))
        self.assertOnly({"alice": ["doc"]})
        self.router.on_change(change("m1", "2-b", 2, owner="bob"))
        self.assertOnly({"alice": ["removed"], "bob": ["doc"]})

    def test_no_fetch_without_subscribers(self):
        self.connect("alice")
        self.router.on_change(change("m1", "4-a", 1, owner="alice"))
        self.assertEqual(self.revisions.asked, [])
        self.assertOnly({})


class ReadersIndexTests(unittest.TestCase):
    def test_bounded_and_interned(self):
        """The index keeps the latest entries, and shares equal principal sets."""
        index = ReadersIndex(max_entries=2)
        index.put("a", "1-a", frozenset({"user:x", "role:r"}))
        index.put("b", "1-b", frozenset({"role:r", "user:x"}))
        self.assertIs(index.get("a").principals, index.get("b").principals)
        self.assertEqual(sorted(index.docs_opened_by("r")), ["a", "b"])
        index.put("c", "1-c", frozenset({"user:y"}))
        self.assertIsNone(index.get("a"))
        self.assertEqual(index.evictions, 1)
        self.assertEqual(list(index.docs_opened_by("r")), ["b"])
        index.put("b", "2-b", frozenset())
        self.assertNotIn("b", index)
        self.assertEqual(list(index.docs_opened_by("r")), [])

    def test_parent_rev(self):
        self.assertEqual(parent_rev({"start": 3, "ids": ["c", "b", "a"]}), "2-b")
        for bad in (None, {"start": 1, "ids": ["a"]}, {"start": "3", "ids": ["c", "b"]},
                    {"start": 3, "ids": ["c"]}, {"start": 3, "ids": ["c", 4]}):
            self.assertIsNone(parent_rev(bad))
