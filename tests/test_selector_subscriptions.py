"""
``subscribe {topic: "db:<db>", selector, snapshot}`` end to end on pouchdb-server: the
readable documents that match, snapshot first, then live; ``removed`` reason ``selector``
when a document stops matching; a selector cannot see hidden fields; ``bad_selector``.
"""

from twisted.internet.defer import inlineCallbacks

from tests.harness import unique
from tests.test_e2e_databases import DatabaseCase


class SelectorSubscriptions(DatabaseCase):

    @inlineCallbacks
    def subscribed(self, user, selector, snapshot=True):
        client = yield self.client(user)
        client.send_json({"type": "subscribe", "topic": f"db:{self.db}",
                          "selector": selector, "snapshot": snapshot, "ref": "s"})
        snapshot_docs = []
        while True:
            message = yield client.next()
            if message["type"] == "subscribed":
                return client, snapshot_docs, message
            self.assertEqual((message["type"], message.get("snapshot")),
                             ("doc-change", True), message)
            snapshot_docs.append(message)

    @inlineCallbacks
    def test_snapshot_then_live_with_selector(self):
        """Only readable matching documents; a change into the selector arrives, one out
        of it is removed (reason selector), one that never matched is not heard of."""
        red, blue, theirs = unique("red"), unique("blue"), unique("theirs")
        self.put(red, owner="alice", tag="red", n=3)
        self.put(blue, owner="alice", tag="blue", n=1)
        self.put(theirs, owner="bob", tag="red")
        yield self.gw.wait_for_change(theirs)
        client, docs, answer = yield self.subscribed(
            "alice", {"tag": "red", "n": {"$gte": 2}})
        self.assertEqual([m["id"] for m in docs], [red])
        self.assertEqual(answer["snapshot"], 1)
        self.put(blue, owner="alice", tag="red", n=5)  # now matches
        message = yield self.next_change(client, blue)
        self.assertEqual(message["doc"]["tag"], "red")
        self.put(red, owner="alice", tag="blue", n=3)  # stops matching
        message = yield self.next_change(client, red)
        self.assertEqual((message.get("removed"), message.get("reason")), (True, "selector"))
        self.assertNotIn("doc", message)
        self.put(red, owner="alice", tag="green", n=3)  # still not matching: nothing
        marker = unique("marker")
        self.put(marker, owner="alice", tag="red", n=9)
        message = yield self.next_change(client)
        self.assertEqual(message["id"], marker)

    @inlineCallbacks
    def test_selector_cannot_probe_hidden_fields(self):
        """A selector is matched against the document as the user receives it."""
        doc_id = unique("doc")
        self.put(doc_id, owner="alice", secret="s3cret", title="t")
        yield self.gw.wait_for_change(doc_id)
        client, docs, answer = yield self.subscribed("alice", {"secret": "s3cret"})
        self.assertEqual((docs, answer["snapshot"]), ([], 0))
        client, docs, answer = yield self.subscribed("alice", {"title": "t"})
        self.assertEqual([m["id"] for m in docs], [doc_id])

    @inlineCallbacks
    def test_bad_selector_names_the_operator(self):
        """An operator that does not exist: bad_selector naming it; nothing subscribed."""
        client = yield self.client("alice")
        client.send_json({"type": "subscribe", "topic": f"db:{self.db}",
                          "selector": {"n": {"$near": [0, 0]}}})
        error = yield client.next("error")
        self.assertEqual(error["code"], "bad_selector")
        self.assertIn("$near", error["message"])
        client.send_json({"type": "subscribe", "topic": f"doc:{self.db}/x",
                          "selector": {"n": 1}})
        error = yield client.next("error")
        self.assertEqual(error["code"], "bad_request")

    @inlineCallbacks
    def test_unsubscribe_ends_the_narrowing(self):
        """After unsubscribing, the connection is no longer narrowed by the selector."""
        client, docs, answer = yield self.subscribed("alice", {"tag": "red"}, snapshot=False)
        client.send_json({"type": "unsubscribe", "topic": f"db:{self.db}"})
        yield client.next("unsubscribed")
        other = unique("blue")
        self.put(other, owner="alice", tag="blue")
        message = yield self.next_change(client, other)
        self.assertEqual(message["doc"]["tag"], "blue")
