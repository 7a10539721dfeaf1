"""
Application-database routing against a fake CouchDB 3 (tests.fakes.FakeCouchDB) over real
HTTP: opaque string seqs carried through unchanged, a restart between two revisions (the
previous one read back with ?revs=true and ?rev=), and a compacted previous revision (the
undecidable case: nobody told but doc: subscribers, counted in the metrics).
"""


from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from realtime.databases.rulefile import parse_rules
from tests.fakes import SECRET, FakeCouchDB, make_token
from tests.harness import GatewayHarness


class Couch3Tests(unittest.TestCase):
    timeout = 60

    def setUp(self):
        self.couch = FakeCouchDB(databases=("_users", "notes")).listen()
        self.addCleanup(self.couch.stop)
        self.rules = parse_rules('[databases.notes]\nusers = ["owner", "members"]\n')

    @inlineCallbacks
    def gateway(self):
        gw = GatewayHarness(couchdb=self.couch, jwt_secret=SECRET, config=self.rules,
                            couchdb_heartbeat_ms=60000)
        yield gw.start()
        self.addCleanup(gw.stop)
        return gw

    @inlineCallbacks
    def client(self, gw, user):
        client = yield gw.connect(query={"token": make_token(user)})
        connected = yield client.next("connected")
        return client, connected

    @inlineCallbacks
    def test_string_seqs_restart_and_compaction(self):
        gw = yield self.gateway()
        bob, connected = yield self.client(gw, "bob")
        self.couch.put("notes", "n1", owner="alice", members=["bob"])
        message = yield bob.next("doc-change")
        seq = self.couch.dbs["notes"].changes[-1]["seq"]
        self.assertEqual(message["seq"], seq, "the string seq is passed on unchanged")
        self.assertTrue(seq.startswith("1-g1AAAAB"))
        yield gw.stop()

        # A restart between two revisions: the previous one is read back from CouchDB.
        gw = yield self.gateway()
        bob, connected = yield self.client(gw, "bob")
        self.assertEqual(connected["seqs"]["notes"], seq)
        rev2 = self.couch.put("notes", "n1", owner="alice", members=[])
        message = yield bob.next("doc-change")
        self.assertEqual((message["id"], message["rev"], message["removed"]), ("n1", rev2, True))
        self.assertEqual(gw.gateway.databases.stats()["notes"]["fetches"], 1)
        yield gw.stop()

        # Compacted: the previous readers cannot be known.  Nobody is told of a lost
        # access, not even a doc: subscriber (the change could be the re-creation of a
        # deleted document, which the subscription outlives); it stays subscribed.
        self.couch.put("notes", "n1", owner="alice", members=["bob", "carol"])
        gw = yield self.gateway()
        bob, _ = yield self.client(gw, "bob")
        carol, _ = yield self.client(gw, "carol")
        carol.send_json({"type": "subscribe", "topic": "doc:notes/n1"})
        yield carol.next("subscribed")
        self.couch.auto_compact = True
        self.couch.put("notes", "n1", owner="alice", members=[])
        self.couch.put("notes", "n2", owner="bob")
        self.couch.put("notes", "n3", owner="carol")
        self.assertEqual((yield carol.next("doc-change"))["id"], "n3", "nothing of n1")
        message = yield bob.next("doc-change")
        self.assertEqual(message["id"], "n2", "bob, not a subscriber, is not told of n1")
        stats = gw.gateway.databases.stats()["notes"]
        self.assertEqual(stats["undecidable"], 1)
        text = gw.gateway.metrics.render().decode()
        self.assertIn('realtime_db_undecidable_total{db="notes"} 1.0', text)
