"""
Documents written to CouchDB (by another application, not through the gateway) nested
deeper than Python's JSON parser can go (about 950 levels), end to end on pouchdb-server:
the feed goes on past them, they reach nobody (live, in a ``db:`` snapshot, through a
``doc:`` subscription), and each is counted as undecidable (but the ``doc:`` refusal: the
public count would tell that the id exists).
"""

import json

from twisted.internet.defer import inlineCallbacks

from tests.harness import unique
from tests.test_e2e_databases import DatabaseCase
from tests.test_replay_databases import caught_up

DEPTH = 3000


class DeepDocuments(DatabaseCase):

    def with_rev(self, doc_id, **fields):
        # The current rev from _all_docs: the document itself may be too deep for json.loads.
        status, body = self.couch.request("GET", f'/{self.db}/_all_docs?key="{doc_id}"')
        doc = {"_id": doc_id, **fields}
        for row in json.loads(body)["rows"]:
            doc["_rev"] = row["value"]["rev"]
        return doc

    def put_deep(self, doc_id, **fields):
        doc = self.with_rev(doc_id, **fields)
        text = json.dumps(doc)[:-1] + ', "deep": ' + "[" * DEPTH + "]" * DEPTH + "}"
        status, body = self.couch.request("PUT", f"/{self.db}/{doc_id}", text)
        self.assertIn(status, (201, 202), body)

    def undecidable(self):
        return self.gw.gateway.databases.stats()[self.db]["undecidable"]

    @inlineCallbacks
    def test_deep_documents_reach_nobody_and_are_counted(self):
        """A deep document of alice's: not live, not in her snapshot (the other documents
        are), refused as a missing id for doc:, counted; the feed goes on after it."""
        fine, deep = unique("fine"), unique("deep")
        alice = yield self.client("alice")
        self.put(fine, owner="alice", title="fine")
        yield self.next_change(alice, fine)
        self.put_deep(deep, owner="alice", title="deep")
        yield self.gw.wait_for_change(deep)
        self.assertEqual(self.undecidable(), 1)
        yield self.assertNothingBefore(alice, "alice")  # the feed went on; deep: nothing

        alice.send_json({"type": "subscribe", "topic": f"db:{self.db}", "snapshot": True,
                         "ref": "s"})
        snapshot = []
        while True:
            message = yield alice.next()
            if message["type"] == "subscribed":
                break
            snapshot.append(message["id"])
        self.assertNotIn(deep, snapshot)
        self.assertIn(fine, snapshot)
        self.assertEqual(message["snapshot"], len(snapshot))
        self.assertEqual(self.undecidable(), 2)

        alice.send_json({"type": "subscribe", "topic": f"doc:{self.db}/no-such-doc"})
        missing = yield alice.next("error")
        alice.send_json({"type": "subscribe", "topic": f"doc:{self.db}/{deep}"})
        refused = yield alice.next("error")
        self.assertEqual(refused, {**missing, "topic": f"doc:{self.db}/{deep}"})
        # not counted either: the public count would tell that the named id exists
        self.assertEqual(self.undecidable(), 2)

        self.put_deep(deep, owner="alice", title="deeper")  # live again: nothing
        yield self.assertNothingBefore(alice, "alice")  # the feed is ordered
        self.assertEqual(self.undecidable(), 3)
        self.assertNotIn("[[", json.dumps(alice.received))

    @inlineCallbacks
    def test_resume_across_a_deep_document(self):
        """A resume whose range holds a deep document: the others are replayed (the batch
        CouchDB answered is not refused whole), the deep one reaches nobody and is counted
        in the replay's undecidable; so is a document given away whose earlier, readable
        revision is the deep one (the _bulk_get of earlier revisions is read one by one);
        recovered."""
        before, after, deep = unique("before"), unique("after"), unique("deep")
        given = unique("given")
        self.put(before, owner="alice", title="v1")
        self.put_deep(given, owner="alice", title="deep, hers")
        self.put(unique("first"), owner="alice", title="already seen")
        yield caught_up(self, self.gw, self.db)  # connected.seqs then stands after them
        alice = yield self.client("alice")
        since = [m for m in alice.received if m["type"] == "connected"][0]["seqs"][self.db]
        yield alice.close()
        before_rev = self.put(before, owner="alice", title="v2")
        status, body = self.couch.request(
            "PUT", f"/{self.db}/{given}", json.dumps(self.with_rev(given, owner="bob")))
        self.assertIn(status, (201, 202), body)
        self.put_deep(deep, owner="alice", title="deep")
        after_rev = self.put(after, owner="alice", title="after")
        yield self.gw.wait_for_change(after)
        alice = yield self.client("alice")
        alice.send_json({"type": "resume", "since": {self.db: since}, "ref": "r"})
        replayed = []
        while True:
            message = yield alice.next()
            if message["type"] == "resumed":
                break
            replayed.append(message)
        self.assertEqual(message["recovered"], {self.db: True})
        self.assertEqual([(m["id"], m["rev"]) for m in replayed if m.get("replay")],
                         [(before, before_rev), (after, after_rev)])
        self.assertNotIn("[[", json.dumps(alice.received))
        self.assertEqual(self.gw.gateway.replayer.stats()[self.db]["undecidable"], 2)
