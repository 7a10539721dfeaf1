"""
Document writes end to end on a real pouchdb-server: the writer (read, check, write) and,
through the WebSocket, the three messages and their answers.
"""

from __future__ import annotations

import json
import urllib.parse

import treq.client
from prometheus_client import CollectorRegistry
from twisted.internet import endpoints, reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool

from realtime.databases.rulefile import parse_rules
from realtime.databases.writer import CouchDocuments, DocumentWriter, WriteMetrics
from tests import harness
from tests.fakes import SECRET, make_token
from tests.harness import GatewayHarness, unique
from tests.test_e2e_faults import CuttableProxy

RULES_TEXT = """
[databases.{db}]
users  = ["owner", "members"]
write  = ["owner", "editors"]
fields = ["title", "body", "editors"]
owner  = "owner"

[databases.{db}-ro]
users = ["owner"]
"""


class CouchFixture:
    """A fresh application database on the shared pouchdb-server, read with urllib."""

    def __init__(self):
        self.server = harness.pouchdb()
        self.db = unique("notes")
        for name in (self.db, self.db + "-ro"):
            status, _ = self.server.request("PUT", "/" + name)
            assert status == 201, status
        self.rules = parse_rules(RULES_TEXT.format(db=self.db))

    def put(self, doc_id: str, **doc) -> str:
        status, body = self.server.request("PUT", f"/{self.db}/{doc_id}", json.dumps(doc))
        assert status == 201, (status, body)
        return json.loads(body)["rev"]

    def get(self, doc_id: str):
        status, body = self.server.request("GET", f"/{self.db}/{urllib.parse.quote(doc_id, safe='')}")
        return json.loads(body) if status == 200 else None

    def all_ids(self):
        _, body = self.server.request("GET", f"/{self.db}/_all_docs")
        return [row["id"] for row in json.loads(body)["rows"]]


def http_client(test):
    pool = HTTPConnectionPool(reactor, persistent=False)
    test.addCleanup(pool.closeCachedConnections)
    return treq.client.HTTPClient(Agent(reactor, pool=pool))


class WriterTests(unittest.TestCase):
    """DocumentWriter against pouchdb-server: each outcome, and what CouchDB then holds."""

    timeout = 60

    def setUp(self):
        self.couch = CouchFixture()
        self.db = self.couch.db
        self.registry = CollectorRegistry()
        self.metrics = WriteMetrics(self.registry)
        self.writer = self.make_writer(self.couch.server.url)

    def make_writer(self, url, timeout=5.0):
        documents = CouchDocuments(http_client(self), url, reactor,
                                   admin_auth=self.couch.server.admin_auth, timeout=timeout)
        return DocumentWriter(documents, self.couch.rules, reactor,
                              metrics=self.metrics)

    def write(self, user, type_, roles=(), writer=None, **fields):
        message = {"type": type_, "db": self.db, **fields}
        return (writer or self.writer).write(user, roles, message)

    def count(self, op, outcome):
        value = self.registry.get_sample_value(
            "realtime_doc_writes_total", {"db": self.db, "op": op, "outcome": outcome})
        return value or 0

    @inlineCallbacks
    def test_create_forces_the_owner(self):
        """The owner field is the writer's, whatever the client sent."""
        answer = yield self.write("alice", "doc.create", ref="c1",
                                  doc={"title": "hello", "owner": "mallory"})
        self.assertEqual(answer["type"], "doc.created")
        self.assertEqual((answer["db"], answer["ref"]), (self.db, "c1"))
        self.assertTrue(answer["rev"].startswith("1-"))
        stored = self.couch.get(answer["id"])
        self.assertEqual((stored["owner"], stored["title"], stored["_rev"]),
                         ("alice", "hello", answer["rev"]))
        self.assertEqual(self.count("create", "ok"), 1)

    @inlineCallbacks
    def test_retried_create_with_the_same_ref_writes_once(self):
        """A create sent again after a lost answer meets the first document."""
        doc = {"title": "once", "body": "b"}
        first = yield self.write("alice", "doc.create", ref="c1", doc=doc)
        second = yield self.write("alice", "doc.create", ref="c1", doc=dict(doc))
        self.assertEqual(second, first)
        self.assertEqual(self.couch.all_ids(), [first["id"]])
        # changed since: not answered as created (a late retry, or a reused ref)
        rev2 = self.couch.put(first["id"], _rev=first["rev"], owner="alice", title="edited")
        late = yield self.write("alice", "doc.create", ref="c1", doc=dict(doc))
        self.assertEqual((late["type"], late["code"], late["id"], late["rev"]),
                         ("error", "conflict", first["id"], rev2))
        # deleted since: the retry does not bring it back
        self.couch.server.request("DELETE", f"/{self.db}/{first['id']}?rev={rev2}")
        third = yield self.write("alice", "doc.create", ref="c1", doc=dict(doc))
        self.assertEqual((third["code"], third["id"]), ("conflict", first["id"]))
        self.assertNotIn("rev", third)
        self.assertIsNone(self.couch.get(first["id"]))
        # another document with a reused ref is another document
        other = yield self.write("alice", "doc.create", ref="c1", doc={"title": "two"})
        self.assertNotEqual(other["id"], first["id"])
        self.assertEqual(self.couch.get(other["id"])["title"], "two")
        self.assertEqual((self.count("create", "ok"), self.count("create", "retried"),
                          self.count("create", "conflict")), (2, 1, 2))

    @inlineCallbacks
    def test_create_with_a_given_id(self):
        """A given _id is used; meeting an existing doc is a retry only if it is the same."""
        answer = yield self.write("alice", "doc.create", ref="c1",
                                  doc={"_id": "mine", "title": "t"})
        self.assertEqual((answer["type"], answer["id"]), ("doc.created", "mine"))
        again = yield self.write("alice", "doc.create", ref="c1",
                                 doc={"_id": "mine", "title": "t"})
        self.assertEqual(again, answer)
        changed = yield self.write("alice", "doc.create", doc={"_id": "mine", "title": "u"})
        self.assertEqual((changed["code"], changed["rev"]), ("conflict", answer["rev"]))
        # somebody else's document: the id is taken, its rev is not told
        self.couch.put("theirs", owner="bob", title="secret")
        taken = yield self.write("alice", "doc.create", doc={"_id": "theirs", "title": "t"})
        self.assertEqual(taken["code"], "conflict")
        self.assertNotIn("rev", taken)
        self.assertEqual(self.couch.get("theirs")["title"], "secret")

    @inlineCallbacks
    def test_writer_updates_an_allowed_field(self):
        rev = self.couch.put("n1", owner="alice", editors=["carol"], title="old", body="b")
        answer = yield self.write("carol", "doc.update", id="n1", rev=rev,
                                  changes={"title": "new"}, ref="u1")
        self.assertEqual(answer, {"type": "doc.updated", "db": self.db, "id": "n1",
                                  "rev": answer["rev"], "ref": "u1"})
        stored = self.couch.get("n1")
        self.assertEqual((stored["title"], stored["body"], stored["owner"], stored["_rev"]),
                         ("new", "b", "alice", answer["rev"]))

    @inlineCallbacks
    def test_update_keeps_other_fields_and_attachments(self):
        """Fields outside the change, nested values and attachments stay as they were."""
        rev = self.couch.put("n1", owner="alice", title="old", meta={"k": [1, 2]},
                             _attachments={"a.txt": {"content_type": "text/plain",
                                                     "data": "aGVsbG8="}})
        answer = yield self.write("alice", "doc.update", id="n1", rev=rev,
                                  changes={"title": "new"})
        self.assertEqual(answer["type"], "doc.updated")
        stored = self.couch.get("n1")
        self.assertEqual((stored["title"], stored["meta"]), ("new", {"k": [1, 2]}))
        self.assertEqual(list(stored["_attachments"]), ["a.txt"])
        status, body = self.couch.server.request("GET", f"/{self.db}/n1/a.txt")
        self.assertEqual((status, body), (200, b"hello"))

    @inlineCallbacks
    def test_forbidden_field_is_named_and_nothing_written(self):
        rev = self.couch.put("n1", owner="alice", title="old")
        answer = yield self.write("alice", "doc.update", id="n1", rev=rev,
                                  changes={"title": "new", "owner": "bob"}, ref="u1")
        self.assertEqual((answer["code"], answer["field"], answer["ref"]),
                         ("forbidden", "owner", "u1"))
        self.assertEqual(self.couch.get("n1")["_rev"], rev)
        underscore = yield self.write("alice", "doc.update", id="n1", rev=rev,
                                      changes={"_deleted": True})
        self.assertEqual(underscore["code"], "invalid")
        self.assertEqual(self.couch.get("n1")["_rev"], rev)

    @inlineCallbacks
    def test_reader_stranger_and_missing_get_the_same_forbidden(self):
        """No leak: a reader who may not write, a stranger and a missing doc look alike."""
        rev = self.couch.put("n1", owner="alice", members=["dave"], title="old")
        answers = []
        for user, doc_id, doc_rev in [("dave", "n1", rev), ("eve", "n1", rev),
                                      ("eve", "n1", "1-0000"), ("alice", "nothing", rev)]:
            answer = yield self.write(user, "doc.update", id=doc_id, rev=doc_rev,
                                      changes={"title": "x"})
            answer.pop("id")
            answers.append(answer)
            answer = yield self.write(user, "doc.delete", id=doc_id, rev=doc_rev)
            answer.pop("id")
            answers.append(answer)
        self.assertEqual(answers[0]["code"], "forbidden")
        self.assertNotIn("rev", answers[0])
        for answer in answers:
            self.assertEqual(answer, answers[0])
        self.assertEqual(self.couch.get("n1")["_rev"], rev)

    @inlineCallbacks
    def test_stale_rev_is_a_conflict_with_the_current_rev(self):
        first = self.couch.put("n1", owner="alice", title="one")
        answer = yield self.write("alice", "doc.update", id="n1", rev=first,
                                  changes={"title": "two"})
        stale = yield self.write("alice", "doc.update", id="n1", rev=first,
                                 changes={"title": "three"}, ref="u2")
        self.assertEqual((stale["code"], stale["rev"], stale["ref"]),
                         ("conflict", answer["rev"], "u2"))
        stale_delete = yield self.write("alice", "doc.delete", id="n1", rev=first)
        self.assertEqual((stale_delete["code"], stale_delete["rev"]), ("conflict", answer["rev"]))
        self.assertEqual(self.couch.get("n1")["title"], "two")

    @inlineCallbacks
    def test_delete(self):
        rev = self.couch.put("n1", owner="alice", title="one")
        answer = yield self.write("alice", "doc.delete", id="n1", rev=rev, ref="d1")
        self.assertEqual((answer["type"], answer["id"], answer["ref"]),
                         ("doc.deleted", "n1", "d1"))
        self.assertTrue(answer["rev"].startswith("2-"))
        self.assertIsNone(self.couch.get("n1"))
        self.assertEqual(self.count("delete", "ok"), 1)

    @inlineCallbacks
    def test_design_documents_and_read_only_databases(self):
        design = yield self.write("alice", "doc.create", doc={"_id": "_design/x", "views": {}})
        self.assertEqual(design["code"], "forbidden")
        self.assertIsNone(self.couch.get("_design/x"))
        local = yield self.write("alice", "doc.delete", id="_local/x", rev="1-a")
        self.assertEqual(local["code"], "forbidden")
        readonly = yield self.writer.write("alice", (), {"type": "doc.create",
                                                         "db": self.db + "-ro", "doc": {}})
        self.assertEqual(readonly["code"], "forbidden")
        underscore = yield self.write("alice", "doc.create", doc={"title": "t", "_rev": "1-a"})
        self.assertEqual(underscore["code"], "invalid")
        self.assertEqual(self.couch.all_ids(), [])

    @inlineCallbacks
    def test_couchdb_down_is_unavailable_and_nothing_written(self):
        """With CouchDB unreachable every write answers unavailable, written false."""
        rev = self.couch.put("n1", owner="alice", title="one")
        proxy = CuttableProxy("127.0.0.1", self.couch.server.port)
        port = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(proxy)
        self.addCleanup(port.stopListening)
        writer = self.make_writer(f"http://127.0.0.1:{port.getHost().port}")
        proxy.cut()
        answers = [
            (yield self.write("alice", "doc.create", writer=writer, ref="c1", doc={"title": "t"})),
            (yield self.write("alice", "doc.update", writer=writer, id="n1", rev=rev,
                              changes={"title": "two"})),
            (yield self.write("alice", "doc.delete", writer=writer, id="n1", rev=rev)),
        ]
        for answer in answers:
            self.assertEqual((answer["code"], answer["written"]), ("unavailable", False))
        self.assertEqual(self.couch.all_ids(), ["n1"])
        self.assertEqual(self.couch.get("n1")["_rev"], rev)

    @inlineCallbacks
    def test_a_write_without_an_answer_is_unknown(self):
        """CouchDB that accepts the request and never answers: unavailable, written unknown."""
        silent = Factory.forProtocol(Protocol)
        port = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(silent)
        self.addCleanup(port.stopListening)
        writer = self.make_writer(f"http://127.0.0.1:{port.getHost().port}", timeout=0.5)
        # the read times out: nothing was written
        answer = yield self.write("alice", "doc.update", writer=writer, id="n1", rev="1-a",
                                  changes={"title": "two"})
        self.assertEqual((answer["code"], answer["written"]), ("unavailable", False))
        # a create with a given id looks it up first (a tombstone's id is taken): the
        # lookup times out, nothing was written
        answer = yield self.write("alice", "doc.create", writer=writer,
                                  doc={"_id": "n2", "title": "t"})
        self.assertEqual((answer["code"], answer["written"]), ("unavailable", False))
        # a create with a random id (no _id, no ref) goes straight to the write: the
        # outcome is unknown
        answer = yield self.write("alice", "doc.create", writer=writer, doc={"title": "t"})
        self.assertEqual((answer["code"], answer["written"]), ("unavailable", "unknown"))
        self.assertEqual(self.count("create", "unavailable"), 2)


class WebSocketWriteTests(unittest.TestCase):
    """The three messages over a real gateway's WebSocket, answered by ref."""

    timeout = 60

    @inlineCallbacks
    def setUp(self):
        self.couch = CouchFixture()
        self.db = self.couch.db
        self.gw = GatewayHarness(jwt_secret=SECRET, rules=self.couch.rules, feeds=False)
        yield self.gw.start()
        self.addCleanup(self.gw.stop)

    def connect(self, user):
        return self.gw.connect(query={"token": make_token(user)})

    @inlineCallbacks
    def request(self, client, **message):
        client.send_json({"db": self.db, **message})
        answer = yield client.next()
        self.assertEqual(answer.get("ref"), message.get("ref"))
        return answer

    @inlineCallbacks
    def test_create_update_delete(self):
        """A writer's create (owner forced), update and delete, each answered with its ref."""
        alice = yield self.connect("alice")
        yield alice.next("connected")
        created = yield self.request(alice, type="doc.create", ref="c1",
                                     doc={"title": "hi", "owner": "bob"})
        self.assertEqual(created["type"], "doc.created")
        self.assertEqual(self.couch.get(created["id"])["owner"], "alice")
        updated = yield self.request(alice, type="doc.update", ref="u1", id=created["id"],
                                     rev=created["rev"], changes={"body": "text"})
        self.assertEqual((updated["type"], updated["id"]), ("doc.updated", created["id"]))
        self.assertEqual(self.couch.get(created["id"])["body"], "text")
        stale = yield self.request(alice, type="doc.update", ref="u2", id=created["id"],
                                   rev=created["rev"], changes={"body": "again"})
        self.assertEqual((stale["type"], stale["code"], stale["rev"]),
                         ("error", "conflict", updated["rev"]))
        deleted = yield self.request(alice, type="doc.delete", ref="d1", id=created["id"],
                                     rev=updated["rev"])
        self.assertEqual(deleted["type"], "doc.deleted")
        self.assertIsNone(self.couch.get(created["id"]))

    @inlineCallbacks
    def test_refusals_keep_the_connection_open(self):
        """Forbidden field, stranger, _design/ and bad shapes: errors with the ref."""
        rev = self.couch.put("n1", owner="alice", members=["dave"], title="t")
        dave = yield self.connect("dave")
        yield dave.next("connected")
        reader = yield self.request(dave, type="doc.update", ref="a", id="n1", rev=rev,
                                    changes={"title": "x"})
        missing = yield self.request(dave, type="doc.update", ref="b", id="n2", rev=rev,
                                     changes={"title": "x"})
        self.assertEqual((reader["code"], reader["message"]), ("forbidden", missing["message"]))
        field = yield self.request(dave, type="doc.update", ref="c", id="n1", rev=rev,
                                   changes={"members": ["dave"]})
        self.assertEqual((field["code"], field["field"]), ("forbidden", "members"))
        design = yield self.request(dave, type="doc.create", ref="d",
                                    doc={"_id": "_design/evil", "views": {}})
        self.assertEqual(design["code"], "forbidden")
        shape = yield self.request(dave, type="doc.delete", ref="e", id="n1")
        self.assertEqual(shape["code"], "invalid")
        self.assertEqual(self.couch.get("n1")["_rev"], rev)
        self.assertEqual(self.couch.all_ids(), ["n1"])
        dave.send_json({"type": "ping"})
        pong = yield dave.next()
        self.assertEqual(pong["type"], "pong")

    @inlineCallbacks
    def test_retried_create_over_a_new_connection(self):
        """The answer is lost with the connection; the retry on a new one writes nothing."""
        first = yield self.connect("alice")
        yield first.next("connected")
        first.send_json({"type": "doc.create", "db": self.db, "ref": "c1",
                         "doc": {"title": "once"}})
        yield first.close()  # before reading the answer
        yield harness.wait_for(lambda: len(self.couch.all_ids()) == 1,
                               what="the first create to reach CouchDB")
        second = yield self.connect("alice")
        yield second.next("connected")
        again = yield self.request(second, type="doc.create", ref="c1",
                                   doc={"title": "once"})
        self.assertEqual((again["type"], [again["id"]]), ("doc.created", self.couch.all_ids()))
        self.assertTrue(again["rev"].startswith("1-"))

    @inlineCallbacks
    def test_writes_count_in_metrics(self):
        alice = yield self.connect("alice")
        yield alice.next("connected")
        yield self.request(alice, type="doc.create", ref="c1", doc={"title": "m"})
        yield self.request(alice, type="doc.create", ref="c2", doc={"rank": 1})
        text = self.gw.gateway.metrics.render().decode()
        self.assertIn(f'realtime_doc_writes_total{{db="{self.db}",op="create",outcome="ok"}} 1.0',
                      text)
        self.assertIn(f'realtime_doc_writes_total{{db="{self.db}",op="create",'
                      'outcome="forbidden"} 1.0', text)
        self.assertNotIn("alice", text)
        self.assertIn('realtime_messages_received_total{type="doc.create"} 2.0', text)


class FeedTests(unittest.TestCase):
    """A write reaches readers through the feed, as an ordinary doc-change, and only them."""

    timeout = 90

    @inlineCallbacks
    def setUp(self):
        self.couch = CouchFixture()
        self.db = self.couch.db
        self.gw = GatewayHarness(jwt_secret=SECRET, rules=self.couch.rules)
        yield self.gw.start()
        self.addCleanup(self.gw.stop)

    @inlineCallbacks
    def connect(self, user):
        client = yield self.gw.connect(query={"token": make_token(user)})
        yield client.next("connected")
        return client

    @inlineCallbacks
    def received(self, client, what, **fields):
        """The first message the client received with these fields (waiting, bounded):
        answers and doc-changes may come in either order."""
        def found():
            for message in client.received:
                if all(message.get(key) == value for key, value in fields.items()):
                    return message
            return None
        yield harness.wait_for(lambda: found() is not None, what=what)
        return found()

    @inlineCallbacks
    def test_readers_get_the_write_from_the_feed(self):
        """The writer (both its connections), the owner and a member get the change, from
        the feed; a stranger gets nothing of it nor of a created document (checked with a
        marker the stranger may read: it is the first doc-change the stranger gets)."""
        self.couch.put("n1", owner="alice", members=["dave", "carol"], editors=["carol"],
                       title="old")
        carol = yield self.connect("carol")
        carol_too = yield self.connect("carol")
        alice = yield self.connect("alice")
        dave = yield self.connect("dave")
        eve = yield self.connect("eve")
        current = self.couch.get("n1")
        carol.send_json({"type": "doc.update", "db": self.db, "id": "n1",
                         "rev": current["_rev"], "changes": {"title": "new"}, "ref": "u1"})
        answer = yield self.received(carol, "the answer", type="doc.updated", ref="u1")
        for client in (carol, carol_too, alice, dave):
            change = yield self.received(client, "the doc-change", type="doc-change",
                                         id="n1", rev=answer["rev"])
            self.assertEqual((change["doc"]["title"], change["doc"]["owner"]), ("new", "alice"))
        alice.send_json({"type": "doc.create", "db": self.db, "ref": "c1",
                         "doc": {"title": "created", "editors": ["carol"]}})
        created = yield self.received(alice, "the answer", type="doc.created", ref="c1")
        change = yield self.received(alice, "the doc-change", type="doc-change",
                                     id=created["id"], rev=created["rev"])
        self.assertEqual(change["doc"]["owner"], "alice")
        self.couch.put("m1", owner="eve", title="eve's marker")
        yield self.received(eve, "the marker", type="doc-change", id="m1")
        self.assertEqual([m["id"] for m in eve.received if m["type"] == "doc-change"], ["m1"])
