"""
A create with a chosen ``_id`` tells the writer nothing of the document already there
beyond "the id is taken" (docs/writes.rst, ``conflict``): not how many revisions a deleted
document had (a create over its tombstone was given revision N+1), nor, by being answered
``doc.created`` as a retry or ``conflict``, the value of a ``hidden`` field the writer may
set and not read.  End to end on pouchdb-server, with the DocumentWriter.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from realtime.databases.rulefile import parse_rules
from realtime.databases.writer import CouchDocuments, DocumentWriter, WriteMetrics
from tests import test_e2e_writes as e2e

#: pin: a field clients may set (a write-only secret) and nobody reads back
HIDDEN_RULES = """
[databases.{db}]
users  = ["owner", "members"]
hidden = ["pin"]
write  = ["owner", "editors"]
fields = ["title", "pin"]
owner  = "owner"
"""


class ChosenIdTests(unittest.TestCase):
    timeout = 60

    def setUp(self):
        self.couch = e2e.CouchFixture()
        self.db = self.couch.db
        self.rules = parse_rules(HIDDEN_RULES.format(db=self.db))
        documents = CouchDocuments(e2e.http_client(self), self.couch.server.url, reactor,
                                   admin_auth=self.couch.server.admin_auth, timeout=5.0)
        self.writer = DocumentWriter(documents, self.rules, reactor,
                                     metrics=WriteMetrics(CollectorRegistry()))

    def create(self, user, **doc):
        return self.writer.write(user, (), {"type": "doc.create", "db": self.db, "doc": doc})

    @inlineCallbacks
    def test_a_deleted_id_does_not_tell_its_revisions(self):
        """Bob's document, edited and deleted, never Alice's: her create of its id is
        answered as for a document that exists (conflict, no rev), not with the
        revision that follows the tombstone (6-..., which counts Bob's edits)."""
        rev = self.couch.put("theirs", owner="bob", title="secret")
        for i in range(4):
            rev = self.couch.put("theirs", _rev=rev, owner="bob", title=f"secret {i}")
        self.couch.server.request("DELETE", f"/{self.db}/theirs?rev={rev}")
        self.couch.put("live", owner="bob", title="secret")
        over_deleted = yield self.create("alice", _id="theirs", title="t")
        over_live = yield self.create("alice", _id="live", title="t")
        self.assertNotIn("rev", over_deleted)
        self.assertEqual(over_deleted["code"], "conflict")
        over_deleted.pop("id"), over_live.pop("id")
        self.assertEqual(over_deleted, over_live)
        self.assertIsNone(self.couch.get("theirs"))  # nothing written

    @inlineCallbacks
    def test_a_hidden_field_cannot_be_guessed(self):
        """The app stored a pin in Alice's note that she may set but not read: a create
        of the note's id with every visible field and a guessed pin gets the same answer
        whether the guess is right or wrong."""
        self.couch.put("n1", owner="alice", title="t", pin="4821")
        right = yield self.create("alice", _id="n1", title="t", pin="4821")
        wrong = yield self.create("alice", _id="n1", title="t", pin="0000")
        self.assertEqual(right, wrong)
        self.assertEqual(self.couch.get("n1")["pin"], "4821")  # nothing written

#: editors may write a board and not read it (a drop box: only members read)
DROP_BOX_RULES = """
[databases.{db}]
users  = ["members"]
write  = ["editors"]
fields = ["title", "members", "editors"]
"""


class WriteOnlyTests(unittest.TestCase):
    timeout = 60

    def setUp(self):
        self.couch = e2e.CouchFixture()
        self.db = self.couch.db
        self.rules = parse_rules(DROP_BOX_RULES.format(db=self.db))
        documents = CouchDocuments(e2e.http_client(self), self.couch.server.url, reactor,
                                   admin_auth=self.couch.server.admin_auth, timeout=5.0)
        self.writer = DocumentWriter(documents, self.rules, reactor,
                                     metrics=WriteMetrics(CollectorRegistry()))

    @inlineCallbacks
    def test_a_writer_who_may_not_read_cannot_test_a_guess(self):
        """Alice may write the board (an editor) and not read it (not a member): a create
        of its id holding exactly its content is answered as a wrong guess is (conflict,
        with the rev a writer is given), not doc.created, which would confirm what the
        board says."""
        board = {"title": "layoffs in May", "members": ["bob"], "editors": ["alice"]}
        self.couch.put("b1", **board)
        right = yield self.writer.write("alice", (), {"type": "doc.create", "db": self.db,
                                                      "doc": dict(board, _id="b1")})
        wrong = yield self.writer.write("alice", (), {"type": "doc.create", "db": self.db,
                                                      "doc": dict(board, _id="b1",
                                                                  title="picnic")})
        self.assertEqual(right.get("code"), "conflict", right)
        self.assertEqual(right, wrong)
        # bob, a member who may also write, retrying the same create is answered created
        self.couch.put("b2", title="t", members=["bob"], editors=["bob"])
        again = yield self.writer.write("bob", (), {"type": "doc.create", "db": self.db,
                                                    "doc": {"_id": "b2", "title": "t",
                                                            "members": ["bob"],
                                                            "editors": ["bob"]}})
        self.assertEqual(again["type"], "doc.created")
