"""
Probing ids through ``doc:`` subscriptions and writes, as an attacker would, without
network: every refusal of an id the user may not read looks like the refusal of a missing
id (the same answer, byte for byte, after the same number of CouchDB reads, so its timing
tells nothing), and ids that an HTTP path would resolve (``.``, ``..``) are never asked of
CouchDB at all.
"""

from twisted.internet.defer import succeed
from twisted.trial import unittest

from realtime.databases import writes
from realtime.databases.application import ApplicationDatabases
from realtime.databases.rulefile import parse_rules
from tests.fakes import FakeConnection, make_gateway

RULES = """
[databases.notes]
users  = ["owner", "members"]
hidden = ["secret"]
write  = ["owner"]
fields = ["title"]
"""


class RecordingRevisions:
    """The CouchDB reads of the subscriptions, from a dict; every read recorded."""

    base_url = "http://couch.invalid"

    def __init__(self, docs):
        self.docs = docs
        self.reads = []

    def document(self, db, doc_id, rev=None):
        self.reads.append(doc_id)
        return succeed(self.docs.get(doc_id))

    def get_json(self, url):
        raise AssertionError(f"unexpected read {url}")


class DocProbing(unittest.TestCase):
    def setUp(self):
        self.gateway = make_gateway()
        self.revisions = RecordingRevisions({
            "bobs": {"_id": "bobs", "_rev": "1-a", "owner": "bob", "secret": "s"},
            "busy": {"_id": "busy", "_rev": "1-b", "owner": "bob"},
        })
        self.apps = ApplicationDatabases(parse_rules(RULES), self.gateway.registry,
                                         self.revisions, self.gateway.timestamp)
        # The feed routed a newer revision of "busy" (still bob's) while it is read.
        self.apps.routers["notes"].index.put("busy", "2-c", frozenset({"user:bob"}))
        self.alice = FakeConnection(self.gateway, "alice")

    def answer(self, doc_id):
        self.revisions.reads.clear()
        d = self.apps.subscribe(self.alice, f"doc:notes/{doc_id}",
                                {"snapshot": True, "ref": "p"})
        if d is not None:
            self.successResultOf(d)
        answer = self.alice.received.pop()
        self.assertEqual(self.alice.received, [])
        answer.pop("topic")
        return answer, list(self.revisions.reads)

    def test_missing_forbidden_and_changing_look_the_same(self):
        """A missing id, another user's document and another user's document that is
        changing are refused alike, each after one read."""
        missing = self.answer("nothing-here")
        self.assertEqual(missing[0]["code"], "forbidden")
        self.assertEqual(missing[0]["ref"], "p")
        self.assertEqual(self.answer("bobs"), (missing[0], ["bobs"]))
        self.assertEqual(self.answer("busy"), (missing[0], ["busy"]))
        self.assertEqual(missing[1], ["nothing-here"])

    def test_dot_ids_are_never_asked(self):
        """``.`` and ``..`` (``/db`` and ``/`` once a proxy normalises the path) are
        refused like a missing id, with no read."""
        missing, _ = self.answer("nothing-here")
        for doc_id in (".", ".."):
            self.assertEqual(self.answer(doc_id), (missing, []))

    def test_dot_ids_cannot_be_written(self):
        """No write names ``.`` or ``..`` either: invalid before CouchDB is asked."""
        for doc_id in (".", ".."):
            for message in ({"type": "doc.create", "db": "notes",
                             "doc": {"_id": doc_id, "title": "t"}},
                            {"type": "doc.update", "db": "notes", "id": doc_id, "rev": "1-a",
                             "changes": {"title": "t"}},
                            {"type": "doc.delete", "db": "notes", "id": doc_id, "rev": "1-a"}):
                with self.assertRaises(writes.WriteRefused) as caught:
                    writes.parse_request(message)
                self.assertEqual(caught.exception.code, writes.INVALID)
