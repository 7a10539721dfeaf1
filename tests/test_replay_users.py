"""
Resume of ``_users`` from CouchDB (realtime.feeds.replay).

End to end on pouchdb-server (integer seqs), and against an in-process fake CouchDB
serving CouchDB-3-style string seqs (``pending``, 400 for a malformed since) through
treq's RequestTraversalAgent, for the checks, the queue and disconnects.
"""

import json

from treq.testing import RequestTraversalAgent
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial import unittest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from realtime.feeds.couchreads import ChangesReader
from realtime.feeds.replay import Replayer, seq_shape_ok
from tests import harness
from tests.fakes import SECRET, FakeConnection, make_token
from tests.harness import GatewayHarness, unique


class UsersReplayEndToEnd(unittest.TestCase):
    timeout = 60

    @inlineCallbacks
    def setUp(self):
        self.couch = harness.pouchdb()
        self.gw = GatewayHarness(jwt_secret=SECRET)
        yield self.gw.start()
        self.addCleanup(self.gw.stop)

    @inlineCallbacks
    def new_user(self):
        name = unique("user")
        self.couch.create_user(name, "pw-" + name, colour="none")
        yield self.gw.wait_for_change("org.couchdb.user:" + name)
        return name

    def update_user(self, name, **fields):
        status, body = self.couch.request("GET", "/_users/org.couchdb.user:" + name)
        doc = json.loads(body)
        doc.update(fields)
        status, body = self.couch.request("PUT", "/_users/org.couchdb.user:" + name,
                                          json.dumps(doc))
        self.assertIn(status, (201, 202), body)
        return json.loads(body)

    def caught_up(self):
        """Wait until the gateway's _users feed has processed every change made so far."""
        head = json.loads(self.couch.request("GET", "/_users")[1])["update_seq"]
        follower = next(f for f in self.gw.followers if f.db == "_users")
        return harness.wait_for(lambda: isinstance(follower.last_seq, int) and follower.last_seq >= head,
                                what="the feed to catch up")

    @inlineCallbacks
    def connect(self, name):
        client = yield self.gw.connect(query={"token": make_token(name)})
        connected = yield client.next("connected")
        return client, connected

    @inlineCallbacks
    def test_missed_changes_replayed_once_then_live(self):
        """
        Away while its document changed three times (and others' changed too): one
        user-change with the latest revision, sanitised, marked replay; resumed; live.
        """
        name = yield self.new_user()
        other = yield self.new_user()
        client, connected = yield self.connect(name)
        since = connected["seqs"]["_users"]
        yield client.close()
        for colour in ("red", "green"):
            self.update_user(name, colour=colour)
            self.update_user(other, colour=colour)
        last = self.update_user(name, colour="blue")
        yield self.caught_up()
        client, _ = yield self.connect(name)
        client.send_json({"type": "resume", "since": {"_users": since}, "ref": "u1"})
        replayed = yield client.next("user-change")
        self.assertEqual((replayed["replay"], replayed["doc"]["colour"],
                          replayed["doc"]["_rev"]), (True, "blue", last["rev"]))
        self.assertNotIn("password", replayed["doc"])
        self.assertNotIn("derived_key", replayed["doc"])
        self.assertNotIn("salt", replayed["doc"])
        resumed = yield client.next("resumed")
        self.assertEqual((resumed["recovered"], resumed["replayed"], resumed["ref"]),
                         ({"_users": True}, {"_users": 1}, "u1"))
        until = resumed["until"]["_users"]
        self.update_user(name, colour="live")
        live = yield client.next("user-change")
        self.assertEqual((live["doc"]["colour"], live.get("replay")), ("live", None))
        # resuming from `until` replays nothing more than that live change
        client.send_json({"type": "resume", "since": {"_users": until}})
        again = yield client.next("user-change")
        self.assertEqual(again["doc"]["colour"], "live")
        resumed = yield client.next("resumed")
        self.assertEqual(resumed["replayed"], {"_users": 1})

    @inlineCallbacks
    def test_nothing_missed_replays_nothing(self):
        """Resuming from where the database stands: nothing replayed, recovered."""
        name = yield self.new_user()
        client, connected = yield self.connect(name)
        client.send_json({"type": "resume", "since": {"_users": connected["seqs"]["_users"]}})
        resumed = yield client.next("resumed")
        self.assertEqual((resumed["recovered"], resumed["replayed"]),
                         ({"_users": True}, {"_users": 0}))

    @inlineCallbacks
    def test_deleted_document_replayed_as_deleted(self):
        """The user's document deleted while away: user-change deleted: true."""
        name = yield self.new_user()
        client, connected = yield self.connect(name)
        since = connected["seqs"]["_users"]
        yield client.close()
        status, body = self.couch.request("GET", "/_users/org.couchdb.user:" + name)
        rev = json.loads(body)["_rev"]
        status, _ = self.couch.request("DELETE", f"/_users/org.couchdb.user:{name}?rev={rev}")
        self.assertEqual(status, 200)
        yield self.caught_up()
        client, _ = yield self.connect(name)
        client.send_json({"type": "resume", "since": {"_users": since}})
        replayed = yield client.next("user-change")
        self.assertEqual((replayed["deleted"], replayed["replay"]), (True, True))
        self.assertNotIn("doc", replayed)

    @inlineCallbacks
    def test_unknown_seqs(self):
        """Not a seq, beyond the database, or null (no position): unknown_seq, until where
        it stands now."""
        name = yield self.new_user()
        client, connected = yield self.connect(name)
        head = connected["seqs"]["_users"]
        # ... and a CouchDB 2/3 seq offered to pouchdb-server's integer seqs, which it would
        # echo back as its last_seq (recovered, nothing replayed)
        for since in ("now", "0-", "x" * 10, 10 ** 15, "1-a/b", str(10 ** 15),
                      "1-g1AAAAFTeJzLYWBg", "999999-abc", None):
            client.send_json({"type": "resume", "since": {"_users": since}})
            resumed = yield client.next("resumed")
            self.assertEqual((resumed["recovered"], resumed["reason"]),
                             ({"_users": False}, {"_users": "unknown_seq"}), since)
            self.assertIsInstance(resumed["until"]["_users"], int)
            self.assertGreaterEqual(resumed["until"]["_users"], head)
        for since in (-1, 1.5, True):  # not a seq at all: the request is refused
            client.send_json({"type": "resume", "since": {"_users": since}})
            error = yield client.next("error")
            self.assertEqual(error["code"], "bad_request")

    @inlineCallbacks
    def test_unknown_database(self):
        """A database this gateway does not follow: unknown_database; the others go on."""
        name = yield self.new_user()
        client, connected = yield self.connect(name)
        client.send_json({"type": "resume", "since": {
            "elsewhere": 3, "_users": connected["seqs"]["_users"]}})
        resumed = yield client.next("resumed")
        self.assertEqual(resumed["recovered"], {"elsewhere": False, "_users": True})
        self.assertEqual(resumed["reason"], {"elsewhere": "unknown_database"})


class TooFarBehind(unittest.TestCase):
    timeout = 60

    @inlineCallbacks
    def test_too_far_behind(self):
        """More changes than REALTIME_RESUME_MAX_CHANGES: too_far_behind, nothing read."""
        gw = GatewayHarness(jwt_secret=SECRET, resume_max_changes=2)
        yield gw.start()
        self.addCleanup(gw.stop)
        couch = harness.pouchdb()
        name = unique("user")
        couch.create_user(name, "pw")
        yield gw.wait_for_change("org.couchdb.user:" + name)
        client = yield gw.connect(query={"token": make_token(name)})
        connected = yield client.next("connected")
        since = connected["seqs"]["_users"]
        for _ in range(3):
            other = unique("other")
            couch.create_user(other, "pw")
            yield gw.wait_for_change("org.couchdb.user:" + other)
        client.send_json({"type": "resume", "since": {"_users": since}})
        resumed = yield client.next("resumed")
        self.assertEqual((resumed["recovered"], resumed["reason"], resumed["replayed"]),
                         ({"_users": False}, {"_users": "too_far_behind"}, {"_users": 0}))
        self.assertGreaterEqual(resumed["until"]["_users"], since + 3)


# -- a fake CouchDB 3 ----------------------------------------------------------------------

class FakeCouch3(Resource):
    """
    ``GET /_users`` and ``_changes`` with CouchDB-3-style string seqs: ``since`` must be
    ``"0"`` or one of ``seqs``, else 400.  ``changes`` holds each document once, at its
    latest change, as CouchDB's feed does.  ``hold`` makes ``_changes`` wait for a
    Deferred.  Not :class:`tests.fakes.FakeCouchDB` (a listening server with a continuous
    feed): this one is served through ``StubTreq`` and records every request, so a replay's
    reads (``since``, ``limit``, ``filter=_doc_ids``) are asserted one by one.
    """

    isLeaf = True

    def __init__(self, seqs, changes):
        super().__init__()
        self.seqs = ["0"] + list(seqs)
        self.changes = changes  # [(seq, change)], in seq order
        self.requests = []
        self.hold = None

    def head(self):
        return self.seqs[-1]

    @staticmethod
    def number(seq):
        return int(seq.split("-")[0])

    def render(self, request):
        path = request.path.decode()
        args = {k.decode(): v[0].decode() for k, v in request.args.items()}
        body = request.content.read()
        self.requests.append((request.method.decode(), path, args, body))
        request.setHeader(b"Content-Type", b"application/json")
        if path == "/_users":
            return json.dumps({"db_name": "_users", "update_seq": self.head()}).encode()
        since = args.get("since", "0")
        if since not in self.seqs:
            request.setResponseCode(400)
            return json.dumps({"error": "bad_request", "reason": "Malformed sequence"}).encode()
        after = [(s, c) for s, c in self.changes if self.number(s) > self.number(since)]
        if args.get("filter") == "_doc_ids":
            wanted = set(json.loads(args["doc_ids"]))
            after = [(s, c) for s, c in after if c["id"] in wanted]
        limit = int(args.get("limit", 10 ** 9))
        page = after[:limit]
        answer = {"results": [dict(c, seq=s) for s, c in page],
                  "last_seq": page[-1][0] if page else self.head(),
                  "pending": len(after) - len(page)}
        if self.hold is None:
            return json.dumps(answer).encode()
        self.hold.addCallback(lambda _: (request.write(json.dumps(answer).encode()),
                                         request.finish()))
        return NOT_DONE_YET


def seq(n):
    return f"{n}-g1AAAAE3eJzLYWBg4MhgTmHgz8tPSTV0MDQy1zMAQsMcoEQiQ1L9____"


def user_change(name, rev, colour, deleted=False):
    doc = {"_id": "org.couchdb.user:" + name, "_rev": rev, "name": name, "type": "user",
           "roles": [], "colour": colour, "derived_key": "secret", "salt": "s"}
    change = {"id": doc["_id"], "changes": [{"rev": rev}], "doc": doc}
    if deleted:
        change["deleted"] = True
    return change


class StringSeqReplay(unittest.TestCase):
    """CouchDB-3-style seqs: passed through unchanged; the checks; queue; disconnects."""

    def setUp(self):
        self.clock = Clock()
        # ann changed at 1 and 3, bob at 2: the feed holds ann once, at 3
        self.couch = FakeCouch3([seq(1), seq(2), seq(3)], [
            (seq(2), user_change("bob", "1-b", "red")),
            (seq(3), user_change("ann", "2-a", "blue")),
        ])

    def replayer(self, **kwargs):
        self.agent = RequestTraversalAgent(self.couch)
        reader = ChangesReader(self.agent, "http://couch.test", self.clock,
                               admin_auth="YWRtaW46cHc=")
        return Replayer(reader, self.clock, **kwargs)

    def replay_of(self, replayer, conn, since):
        sent = []
        d = replayer.replay(conn, "_users", since, lambda m: (sent.append(m), True)[1])
        return d, sent

    def test_seq_shapes(self):
        """Integers and CouchDB 2/3 seqs pass; anything else does not."""
        for good in (0, 5, "0", "12", seq(7), "12-abc_DEF-x"):
            self.assertTrue(seq_shape_ok(good), good)
        for bad in (-1, True, 1.0, None, "now", "", "-abc", "12-", "1-a b", "1-a/b",
                    "1-" + "a" * 5000, [1], {"a": 1}):
            self.assertFalse(seq_shape_ok(bad), bad)

    def test_string_seqs_replayed_and_sent_back_unchanged(self):
        """The user's latest change only, sanitised; until is CouchDB's last_seq string."""
        d, sent = self.replay_of(self.replayer(), FakeConnection(None, "ann"), seq(1))
        result = self.successResultOf(d)
        self.assertEqual((result.until, result.replayed, result.recovered),
                         (seq(3), 1, True))
        self.assertEqual([(m["type"], m["seq"], m["doc"]["colour"]) for m in sent],
                         [("user-change", seq(3), "blue")])
        self.assertNotIn("derived_key", sent[0]["doc"])
        method, path, args, body = self.couch.requests[-1]
        self.assertEqual((method, args["since"], args["filter"], json.loads(args["doc_ids"])),
                         ("GET", seq(1), "_doc_ids", ["org.couchdb.user:ann"]))

    def test_a_seq_couchdb_refuses_is_unknown_seq(self):
        """A well-shaped seq CouchDB answers 400 to: unknown_seq, until = update_seq."""
        d, sent = self.replay_of(self.replayer(), FakeConnection(None, "ann"), seq(99))
        result = self.successResultOf(d)
        self.assertEqual((result.recovered, result.reason, result.until, sent),
                         (False, "unknown_seq", seq(3), []))

    def test_malformed_seq_never_reaches_couchdb(self):
        """A since that is not a seq is refused before any _changes request."""
        d, sent = self.replay_of(self.replayer(), FakeConnection(None, "ann"), "../_all_docs?x=")
        self.assertEqual(self.successResultOf(d).reason, "unknown_seq")
        self.assertFalse([r for r in self.couch.requests if "_changes" in r[1]])

    def test_pending_decides_too_far_behind(self):
        """CouchDB's pending counts the changes to read."""
        d, sent = self.replay_of(self.replayer(max_changes=1), FakeConnection(None, "ann"), "0")
        result = self.successResultOf(d)
        self.assertEqual((result.recovered, result.reason, sent), (False, "too_far_behind", []))
        d, sent = self.replay_of(self.replayer(max_changes=2), FakeConnection(None, "ann"), "0")
        self.assertTrue(self.successResultOf(d).recovered)

    def test_replays_queue_beyond_the_concurrency_and_a_gone_client_leaves(self):
        """
        With one slot, a second replay waits (not refused); if its client leaves while
        waiting, it reads nothing once its turn comes; a third one then runs.
        """
        replayer = self.replayer(concurrency=1)
        self.couch.hold = Deferred()
        first_conn, second_conn, third_conn = (FakeConnection(None, "ann") for _ in range(3))
        first, _ = self.replay_of(replayer, first_conn, seq(1))
        second, second_sent = self.replay_of(replayer, second_conn, seq(1))
        third, third_sent = self.replay_of(replayer, third_conn, seq(1))
        self.assertNoResult(first)
        self.assertEqual((replayer.running, replayer.waiting), (1, 2))
        second_conn.still_open = False
        reads_before = len(self.couch.requests)
        hold, self.couch.hold = self.couch.hold, None
        hold.callback(None)
        self.agent.flush()
        self.assertTrue(self.successResultOf(first).recovered)
        self.assertEqual(self.successResultOf(second).reason, "disconnected")
        self.assertEqual(second_sent, [])
        self.assertTrue(self.successResultOf(third).recovered)
        self.assertEqual(len(third_sent), 1)
        # after the release: the first's read (1), nothing for the gone client, the
        # third's info, count and read (3)
        self.assertEqual(len(self.couch.requests) - reads_before, 4)
        self.assertEqual((replayer.running, replayer.waiting), (0, 0))

    def test_a_5xx_is_asked_again(self):
        """A 500 (pouchdb-server has transient ones) is asked again, twice at most."""
        real = self.couch.render
        failures = [2]

        def flaky(request):
            if b"_changes" in request.path and failures[0]:
                failures[0] -= 1
                request.setResponseCode(500)
                return b'{"error":"internal"}'
            return real(request)

        self.couch.render = flaky
        d, sent = self.replay_of(self.replayer(), FakeConnection(None, "ann"), seq(1))
        self.clock.advance(0.2)
        self.agent.flush()
        self.clock.advance(0.4)
        self.agent.flush()
        self.assertTrue(self.successResultOf(d).recovered)
        self.assertEqual(len(sent), 1)

    def test_couchdb_away_is_unavailable(self):
        """No answer in time: recovered false, reason unavailable (the client may retry)."""
        self.couch.hold = Deferred()
        d, sent = self.replay_of(self.replayer(), FakeConnection(None, "ann"), seq(1))
        self.clock.advance(31)
        result = self.successResultOf(d)
        self.assertEqual((result.recovered, result.reason), (False, "unavailable"))

