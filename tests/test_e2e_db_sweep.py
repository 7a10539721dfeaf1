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
                       "_revs_limit", "_explain", "_index"):
            topic = f"doc:{self.db}/{doc_id}"
            client.send_json({"type": "subscribe", "topic": topic, "snapshot": True})
            answer = yield client.next()
            self.assertEqual(answer, {**missing, "topic": topic})
        received = json.dumps(client.received)
        for word in ("boss", "insider", "listed-doc", "marker", "s3cret"):
            self.assertNotIn(word, received)
