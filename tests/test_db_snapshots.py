"""
``db:`` snapshots under concurrent changes, end to end on pouchdb-server: the subscription
is in place before the first ``_all_docs`` page is read, live changes are held while the
snapshot is sent, and the client gets each document's latest revision with no gap and no
duplicate (key (db, id, rev)); a snapshot that fails leaves the connection as it was (no
selector, no subscription left behind).

The race is made deterministic: the gateway's ``_all_docs`` answer is held back (the read
itself is real) while documents change and the feed routes the changes.
"""

from twisted.internet.defer import Deferred, inlineCallbacks

from tests.harness import unique, wait_for
from tests.test_e2e_databases import DatabaseCase


class HeldPages:
    """Wraps the gateway's CouchDB reader: ``_all_docs`` answers wait for :meth:`release`
    (or fail, with ``fail=True``)."""

    def __init__(self, revisions, fail=False):
        self.revisions = revisions
        self.real = revisions.get_json
        self.fail = fail
        self.read = []  # answers read from CouchDB, not yet given to the gateway
        self.gate = Deferred()
        revisions.get_json = self.get_json

    def get_json(self, url, *args, **kwargs):
        if "/_all_docs?" not in url:
            return self.real(url, *args, **kwargs)
        d = self.real(url, *args, **kwargs)

        def read(answer):
            self.read.append(answer)
            held = Deferred()
            self.gate.addCallback(lambda _: held.callback(answer) if not self.fail else
                                  held.errback(IOError("CouchDB went away")))
            return held

        return d.addCallback(read)

    def release(self):
        self.revisions.get_json = self.real
        self.gate.callback(None)


class SnapshotRace(DatabaseCase):
    TABLE = 'users = ["owner", "members"]\npush = "subscribed"\n'

    @inlineCallbacks
    def until_subscribed(self, client, ref):
        """The messages before ``subscribed`` (ref ``ref``), and it."""
        before = []
        while True:
            message = yield client.next()
            if message["type"] == "subscribed" and message.get("ref") == ref:
                return before, message
            before.append(message)

    @inlineCallbacks
    def test_changes_during_the_snapshot_are_delivered_after_it(self):
        """Documents changed and created while the snapshot's page is in flight reach the
        client after the snapshot, each at its latest revision, once (the snapshot's
        older copy is left out); an unchanged one comes once, from the snapshot."""
        kept, changed, stolen = unique("kept"), unique("changed"), unique("stolen")
        for doc_id in (kept, changed, stolen):
            self.put(doc_id, owner="alice", n=1)
        yield self.gw.wait_for_change(stolen)
        client = yield self.client("alice")
        pages = HeldPages(self.gw.gateway.databases.revisions)
        client.send_json({"type": "subscribe", "topic": f"db:{self.db}", "snapshot": True,
                          "ref": "s1"})
        yield wait_for(lambda: pages.read, what="the _all_docs page to be read")
        rev2 = self.put(changed, owner="alice", n=2)
        created = unique("created")
        created_rev = self.put(created, owner="alice", n=1)
        self.put(stolen, owner="bob", n=2)  # alice loses it
        routed = unique("routed")
        self.put(routed, owner="bob")
        yield self.gw.wait_for_change(routed)  # the feed has routed the three changes
        pages.release()
        before, answer = yield self.until_subscribed(client, "s1")
        # The snapshot's copies of the documents routed live since are older: left out
        # (the live revision follows); the unchanged one comes from the snapshot.
        self.assertEqual([m["id"] for m in before], [kept])
        self.assertTrue(before[0].get("snapshot"), before)
        self.assertEqual(answer["snapshot"], 1)
        after = yield self.changes_until_marker(client, "alice")
        by_id = {m["id"]: m for m in after}
        self.assertEqual(len(by_id), len(after), after)  # none twice
        self.assertEqual(sorted(by_id), sorted([changed, created, stolen]))
        self.assertEqual(by_id[changed]["rev"], rev2)
        self.assertEqual(by_id[changed]["doc"]["n"], 2)
        self.assertEqual(by_id[created]["rev"], created_rev)
        self.assertTrue(by_id[stolen].get("removed"), by_id[stolen])
        self.assertNotIn("doc", by_id[stolen])

    @inlineCallbacks
    def changes_until_marker(self, client, user):
        """Write a marker the user may read; the doc-changes before it."""
        marker = unique("marker")
        self.put(marker, owner=user)
        changes = []
        while True:
            message = yield client.next("doc-change")
            if message["id"] == marker:
                return changes
            changes.append(message)

    @inlineCallbacks
    def test_failed_snapshot_leaves_no_selector_nor_subscription(self):
        """A snapshot CouchDB does not complete is ``unavailable`` (with the ref); the
        connection keeps no subscription and no selector: a later plain subscription gets
        every document, not only those of the failed selector."""
        client = yield self.client("alice")
        pages = HeldPages(self.gw.gateway.databases.revisions, fail=True)
        client.send_json({"type": "subscribe", "topic": f"db:{self.db}", "snapshot": True,
                          "selector": {"tag": "red"}, "ref": "s1"})
        yield wait_for(lambda: pages.read, what="the _all_docs page to be read")
        pages.release()
        error = yield client.next("error")
        self.assertEqual((error["code"], error.get("ref")), ("unavailable", "s1"), error)
        self.assertEqual(self.gw.gateway.registry.subscribers(f"db:{self.db}"), [])
        client.send_json({"type": "subscribe", "topic": f"db:{self.db}", "ref": "s2"})
        yield self.until_subscribed(client, "s2")
        blue = unique("blue")
        self.put(blue, owner="alice", tag="blue")
        changes = yield self.changes_until_marker(client, "alice")
        self.assertEqual([m["id"] for m in changes], [blue])
        self.assertEqual(changes[0]["doc"]["tag"], "blue")


class SnapshotRacePushAll(SnapshotRace):
    """With ``push = "all"`` the changes reach the connection anyway: they must not come
    before the snapshot's older copy of the same document."""

    TABLE = 'users = ["owner", "members"]\n'
