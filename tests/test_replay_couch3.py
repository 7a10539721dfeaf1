"""
Resume of an application database against a fake CouchDB 3 (tests.fakes.FakeCouchDB) over
real HTTP: opaque string seqs read in several batches (each read ahead from the last
batch's ``last_seq`` string) and sent back unchanged; ``removed`` and ``deleted`` decided
from earlier revisions read with ``_bulk_get``; a seq CouchDB refuses and a malformed one
(``unknown_seq``); ``pending`` deciding ``too_far_behind``.
"""

from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from realtime.databases.rulefile import parse_rules
from tests.fakes import SECRET, FakeCouchDB, make_token
from tests.harness import GatewayHarness, wait_for
from tests.test_replay_databases import replayed_until_resumed


class Couch3Resume(unittest.TestCase):
    timeout = 60

    def setUp(self):
        self.couch = FakeCouchDB(databases=("_users", "notes")).listen()
        self.addCleanup(self.couch.stop)
        self.rules = parse_rules('[databases.notes]\nusers = ["owner", "members"]\n'
                                 'hidden = ["secret"]\n')

    @inlineCallbacks
    def gateway(self, **overrides):
        gw = GatewayHarness(couchdb=self.couch, jwt_secret=SECRET, config=self.rules,
                            couchdb_heartbeat_ms=60000, **overrides)
        yield gw.start()
        self.addCleanup(gw.stop)
        return gw

    def caught_up(self, gw):
        follower = next(f for f in gw.followers if f.db == "notes")
        head = self.couch.dbs["notes"].head()
        return wait_for(lambda: follower.last_seq == head, what="the feed to catch up")

    @inlineCallbacks
    def resume(self, gw, user, since):
        client = yield gw.connect(query={"token": make_token(user)})
        yield client.next("connected")
        client.send_json({"type": "resume", "since": {"notes": since}, "ref": "r"})
        replayed, resumed = yield replayed_until_resumed(client, "r")
        return replayed, resumed

    @inlineCallbacks
    def test_string_seqs_in_batches_removed_and_deleted(self):
        """
        Bob away while 9 changes happen: he gets n1 and n5 (latest revisions, hidden
        field removed), n2 and n7 removed, n4 deleted, nothing of n3 and n6; each with the
        seq string of its change; until is CouchDB's last seq, unchanged.
        """
        put = self.couch.put
        put("notes", "n1", owner="alice", members=["bob"], title="v1")
        put("notes", "n2", owner="alice", members=["bob"])
        put("notes", "n3", owner="alice")
        put("notes", "n4", owner="bob")
        gw = yield self.gateway()
        gw.gateway.replayer.batch_size = 2  # several batches, each read ahead
        yield self.caught_up(gw)
        client = yield gw.connect(query={"token": make_token("bob")})
        since = (yield client.next("connected"))["seqs"]["notes"]
        self.assertEqual(since, self.couch.dbs["notes"].head())
        yield client.close()
        expected = {}
        put("notes", "n1", owner="alice", members=["bob"], title="v2", secret="s")
        expected["n1"] = ("doc", put("notes", "n1", owner="alice", members=["bob"],
                                     title="v3", secret="s"))
        expected["n2"] = ("removed", put("notes", "n2", owner="alice", members=[]))
        put("notes", "n3", owner="alice", title="never bob's")
        expected["n4"] = ("deleted", self.couch.delete("notes", "n4"))
        expected["n5"] = ("doc", put("notes", "n5", owner="carol", members=["bob"]))
        put("notes", "n6", owner="alice")
        put("notes", "n7", owner="alice", members=["bob"])
        expected["n7"] = ("removed", put("notes", "n7", owner="alice", members=["zed"]))
        yield self.caught_up(gw)
        replayed, resumed = yield self.resume(gw, "bob", since)
        seqs = {row["id"]: row["seq"] for row in self.couch.dbs["notes"].changes}
        got = {}
        for message in replayed:
            kind = "deleted" if message.get("deleted") else \
                "removed" if message.get("removed") else "doc"
            got[message["id"]] = (kind, message["rev"])
            self.assertEqual(message["seq"], seqs[message["id"]])
            if kind == "doc":
                self.assertNotIn("secret", message["doc"])
        self.assertEqual(got, expected)
        self.assertEqual((resumed["recovered"], resumed["until"], resumed["replayed"]),
                         ({"notes": True}, {"notes": self.couch.dbs["notes"].head()},
                          {"notes": 5}))
        reads = [args["since"] for method, path, args in self.couch.requests
                 if path == "notes/_changes" and args.get("limit") == "2"]
        self.assertGreaterEqual(len(reads), 4)
        self.assertEqual(reads[0], since)
        self.assertTrue(all(isinstance(s, str) and "-g1AAAAB" in s for s in reads))

    @inlineCallbacks
    def test_unknown_and_malformed_seqs(self):
        """A well-shaped seq CouchDB answers 400 to, and a malformed one (never sent to
        CouchDB): unknown_seq, until where the database stands now."""
        self.couch.put("notes", "n1", owner="bob")
        gw = yield self.gateway()
        yield self.caught_up(gw)
        head = self.couch.dbs["notes"].head()
        foreign = "77-g1AAAABnotaseqofthisdatabase"
        for since in (foreign, "../_all_docs?x="):
            replayed, resumed = yield self.resume(gw, "bob", since)
            self.assertEqual((replayed, resumed["recovered"], resumed["reason"],
                              resumed["until"]),
                             ([], {"notes": False}, {"notes": "unknown_seq"}, {"notes": head}))
        sent = [args.get("since") for _, path, args in self.couch.requests
                if path == "notes/_changes"]
        self.assertIn(foreign, sent)
        self.assertNotIn("../_all_docs?x=", sent)

    @inlineCallbacks
    def test_pending_decides_too_far_behind(self):
        """CouchDB's pending counts what is left to read: past the limit, too_far_behind
        and nothing replayed; within it, recovered."""
        for i in range(4):
            self.couch.put("notes", f"n{i}", owner="bob")
        gw = yield self.gateway(resume_max_changes=3)
        yield self.caught_up(gw)
        first = self.couch.dbs["notes"].changes[0]["seq"]
        replayed, resumed = yield self.resume(gw, "bob", "0")
        self.assertEqual((replayed, resumed["reason"]), ([], {"notes": "too_far_behind"}))
        replayed, resumed = yield self.resume(gw, "bob", first)
        self.assertEqual(([m["id"] for m in replayed], resumed["recovered"]),
                         (["n1", "n2", "n3"], {"notes": True}))
