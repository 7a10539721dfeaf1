"""The per-connection side of document writes (realtime.transport.doc_writes): no network."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.trial import unittest

from realtime.transport.doc_writes import MAX_PENDING_WRITES, DocWrites


class HeldWriter:
    """A writer whose answers the test gives, one Deferred per write."""

    def __init__(self):
        self.calls = []

    def write(self, user_id, roles, message):
        d = Deferred()
        self.calls.append((user_id, roles, message, d))
        return d


class DocWritesTests(unittest.TestCase):
    def setUp(self):
        self.writer = HeldWriter()
        self.sent = []
        self.errors = []
        self.writes = DocWrites(self.writer, self.sent.append, self.errors.append)

    def test_the_answer_is_sent_when_couchdb_answers(self):
        """The write gets the identity's user and roles; its answer is sent as it comes."""
        message = {"type": "doc.create", "db": "notes", "doc": {}, "ref": "c1"}
        self.writes.handle("alice", ("staff",), message)
        user, roles, given, d = self.writer.calls[0]
        self.assertEqual((user, roles, given), ("alice", ("staff",), message))
        self.assertEqual(self.sent, [])
        d.callback({"type": "doc.created", "db": "notes", "id": "x", "rev": "1-a", "ref": "c1"})
        self.assertEqual(self.sent[0]["type"], "doc.created")
        self.assertEqual((self.writes.pending, self.errors), (0, []))

    def test_pending_writes_are_bounded(self):
        """One write more than the bound is refused at once, with its ref; then room again."""
        for n in range(MAX_PENDING_WRITES):
            self.writes.handle("alice", ("staff",), {"type": "doc.delete", "ref": f"d{n}"})
        self.writes.handle("alice", ("staff",), {"type": "doc.delete", "ref": "over"})
        self.assertEqual(len(self.writer.calls), MAX_PENDING_WRITES)
        self.assertEqual([(m["type"], m["code"], m["ref"]) for m in self.sent],
                         [("error", "rate_limited", "over")])
        self.assertEqual(self.errors, ["rate_limited"])
        self.writer.calls[0][3].callback({"type": "error", "code": "forbidden",
                                          "message": "no", "ref": "d0"})
        self.assertEqual(self.errors, ["rate_limited", "forbidden"])
        self.writes.handle("alice", ("staff",), {"type": "doc.delete", "ref": "again"})
        self.assertEqual(len(self.writer.calls), MAX_PENDING_WRITES + 1)

    def test_a_failing_writer_still_answers(self):
        self.writes.handle("alice", ("staff",), {"type": "doc.delete", "ref": "d1"})
        self.writer.calls[0][3].errback(RuntimeError("boom"))
        self.assertEqual((self.sent[0]["code"], self.sent[0]["ref"], self.sent[0]["written"]),
                         ("unavailable", "d1", "unknown"))
        self.assertEqual(self.writes.pending, 0)
        self.flushLoggedErrors(RuntimeError)

    def test_without_a_writer_every_write_is_forbidden(self):
        writes = DocWrites(None, self.sent.append, self.errors.append)
        writes.handle("alice", (), {"type": "doc.create", "db": "notes", "ref": "c1"})
        self.assertEqual((self.sent[0]["code"], self.sent[0]["ref"]), ("forbidden", "c1"))
