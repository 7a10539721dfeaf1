"""
End to end, adversarial: requests crafted to make the gateway tell a user something of a
database it may not read (CouchDB's own endpoints behind document ids, ids and fields of
other users' documents), on a real pouchdb-server and a real gateway.
"""

import json

from twisted.internet.defer import inlineCallbacks

from tests.test_e2e_databases import DatabaseCase


class ReservedIdsOfPublicDatabase(DatabaseCase):
    """In a ``public`` database every document is readable, but CouchDB's own endpoints
    (the security object, the id listings) are not documents."""

    TABLE = 'public = true\nhidden = ["secret"]\n'

    @inlineCallbacks
    def test_couchdb_endpoints_are_not_documents(self):
        status, body = self.couch.request(
            "PUT", f"/{self.db}/_security",
            json.dumps({"admins": {"names": ["boss"]}, "members": {"names": ["insider"]}}))
        self.assertEqual(status, 200, body)
        self.put("listed-doc", secret="s3cret")
        self.delete("listed-doc")
        self.put("marker")
        yield self.gw.wait_for_change("marker")  # the feed is past listed-doc
        client = yield self.client("zed")
        client.send_json({"type": "subscribe", "topic": f"doc:{self.db}/never-was"})
        missing = yield client.next()
        self.assertEqual(missing["type"], "error", missing)
        for doc_id in ("_security", "_all_docs", "_changes", "_design_docs", "_local_docs",
                       "_revs_limit", "_explain", "_index", ".", "..", "./_security",
                       "../_users", "../_all_dbs", "%2e%2e", "x/..", "x/../.."):
            topic = f"doc:{self.db}/{doc_id}"
            client.send_json({"type": "subscribe", "topic": topic, "snapshot": True})
            answer = yield client.next()
            self.assertEqual(answer, {**missing, "topic": topic})
        received = json.dumps(client.received)
        for word in ("boss", "insider", "listed-doc", "marker", "s3cret", "doc_count",
                     "update_seq", "Welcome", "version", "uuid"):
            self.assertNotIn(word, received)


def nested(depth: int) -> str:
    """The JSON text of ``depth`` lists inside each other."""
    return "[" * depth + "]" * depth


class DeepDocuments(DatabaseCase):
    """A document nested deeper than the gateway can check and encode is refused as
    ``invalid`` (a clear error), never half-processed."""

    TABLE = """
users  = ["owner", "members"]
write  = ["owner"]
fields = ["title", "body"]
owner  = "owner"
"""

    @inlineCallbacks
    def answer(self, client, text):
        client.sendMessage(text.encode())
        while True:
            message = yield client.next()
            if message["type"] != "doc-change":
                return message

    @inlineCallbacks
    def test_nesting_limit(self):
        bob = yield self.client("bob")
        db = self.db
        ok = yield self.answer(bob, '{"type":"doc.create","db":"%s","ref":"ok","doc":'
                                    '{"title":"fine","body":%s}}' % (db, nested(63)))
        self.assertEqual(ok["type"], "doc.created", ok)
        for ref in ("deep", None):  # derived and random ids
            with_ref = f'"ref":"{ref}",' if ref else ""
            refused = yield self.answer(
                bob, '{"type":"doc.create","db":"%s",%s"doc":{"title":"deep","body":%s}}'
                % (db, with_ref, nested(500)))
            self.assertEqual((refused["type"], refused["code"]), ("error", "invalid"),
                             refused)
            self.assertIn("64 levels", refused["message"])
        refused = yield self.answer(
            bob, '{"type":"doc.update","db":"%s","id":"%s","rev":"%s","ref":"u",'
                 '"changes":{"body":%s}}' % (db, ok["id"], ok["rev"], nested(64)))
        self.assertEqual((refused["type"], refused["code"]), ("error", "invalid"), refused)
        status, body = self.couch.request("GET", f"/{db}/_all_docs")
        self.assertEqual([row["id"] for row in json.loads(body)["rows"]], [ok["id"]])
