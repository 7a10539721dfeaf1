"""
The reads of an application database's replay (realtime.feeds.replay.AppDatabaseReplay,
realtime.feeds.couchreads.ChangesReader), deterministically: the next batch is asked for
while one is routed (one read ahead, no more), a client that leaves cancels the read ahead,
a cancelled read is not asked again, and CouchDB is never asked to compress.
"""

import json

from treq.testing import RequestTraversalAgent
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial import unittest
from twisted.web.resource import Resource

from realtime.databases.rulefile import parse_rules
from realtime.feeds.couchreads import ChangesReader
from realtime.feeds.replay import AppDatabaseReplay, Replayer

RULE = parse_rules('[databases.notes]\nusers = ["owner"]\n')["notes"]


def batch(first, count, owner=lambda i: "ann" if i % 2 == 0 else "bob"):
    """``count`` changes from seq ``first + 1``: documents of ann and bob, alternately."""
    results = [{"seq": i, "id": f"d{i}", "changes": [{"rev": "1-a"}],
                "doc": {"_id": f"d{i}", "_rev": "1-a", "owner": owner(i)}}
               for i in range(first + 1, first + count + 1)]
    return {"results": results, "last_seq": first + count}


class Conn:
    def __init__(self, user_id="ann"):
        self.user_id = user_id
        self.roles = ()
        self.still_open = True


class ScriptedReader:
    """A reader whose ``changes`` answers wait for the test (one Deferred per read)."""

    def __init__(self):
        self.reads = []  # [(since, Deferred)]
        self.cancelled = []

    def changes(self, db, since, limit, include_docs=True, doc_ids=None):
        d = Deferred(lambda d: self.cancelled.append(since))
        self.reads.append((since, d))
        return d

    def answer(self, index, value):
        self.reads[index][1].callback(value)


class ReadAhead(unittest.TestCase):

    def setUp(self):
        self.reader = ScriptedReader()
        self.replayer = Replayer(self.reader, Clock(), followed=("notes",), batch_size=4)
        self.db = AppDatabaseReplay("notes", RULE)
        self.conn = Conn()
        self.sent = []

    def replay(self):
        return self.db.replay(self.replayer, self.conn, 0,
                              lambda m: (self.sent.append(m), self.conn.still_open)[1])

    def test_next_batch_is_asked_for_before_this_one_is_sent(self):
        """
        A full batch: the next read starts before its messages go out, from its last_seq;
        one read ahead only; a short batch ends the replay with no read after it.
        """
        d = self.replay()
        self.assertEqual([since for since, _ in self.reader.reads], [0])
        self.reader.answer(0, batch(0, 4))
        self.assertEqual([since for since, _ in self.reader.reads], [0, 4])
        self.assertEqual([m["id"] for m in self.sent], ["d2", "d4"])
        self.reader.answer(1, batch(4, 4))
        self.assertEqual([since for since, _ in self.reader.reads], [0, 4, 8])
        self.reader.answer(2, batch(8, 1))
        result = self.successResultOf(d)
        self.assertEqual((result.until, result.replayed, result.recovered), (9, 4, True))
        self.assertEqual([m["id"] for m in self.sent], ["d2", "d4", "d6", "d8"])
        self.assertEqual(len(self.reader.reads), 3)
        self.assertEqual(self.reader.cancelled, [])

    def test_each_batch_is_routed_on_a_turn_of_its_own(self):
        """With pacing (as the gateway runs), a batch that arrived waits for a reactor
        turn before it is routed and sent; the read ahead is asked for meanwhile."""
        from realtime.feeds.pacing import Turns
        from tests.test_pacing import TurnClock
        clock = TurnClock()
        self.replayer = Replayer(self.reader, Clock(), followed=("notes",), batch_size=4,
                                 turns=Turns(clock))
        d = self.replay()
        self.reader.answer(0, batch(0, 4))
        self.assertEqual((self.sent, len(self.reader.reads)), ([], 2))
        clock.advance(0)
        self.assertEqual([m["id"] for m in self.sent], ["d2", "d4"])
        self.reader.answer(1, batch(4, 1))
        self.assertNoResult(d)
        clock.advance(0)
        self.assertEqual(self.successResultOf(d).replayed, 2)

    def test_a_client_that_leaves_cancels_the_read_ahead(self):
        """
        Gone while a batch is sent: nothing more is sent, the read ahead is cancelled;
        gone while a read runs: that read's batch is not routed, nothing is read after it.
        """
        def leave_after_one(message):
            self.sent.append(message)
            self.conn.still_open = False
            return True

        d = self.db.replay(self.replayer, self.conn, 0,
                           lambda m: self.conn.still_open and leave_after_one(m))
        self.reader.answer(0, batch(0, 4))
        result = self.successResultOf(d)
        self.assertEqual((result.recovered, result.reason, result.until),
                         (False, "disconnected", 0))
        self.assertEqual([m["id"] for m in self.sent], ["d2"])
        self.assertEqual(self.reader.cancelled, [4])

        self.conn, self.sent = Conn(), []
        d = self.replay()
        self.reader.answer(2, batch(0, 4))  # the read of 4.. runs
        self.conn.still_open = False
        self.reader.answer(3, batch(4, 4))
        result = self.successResultOf(d)
        self.assertEqual((result.recovered, result.reason, result.until),
                         (False, "disconnected", 4))
        self.assertEqual([m["id"] for m in self.sent], ["d2", "d4"])
        self.assertEqual(len(self.reader.reads), 4)

    def test_a_failed_read_ahead_fails_the_replay(self):
        """CouchDB failing on the read ahead: the replay fails with it (unavailable)."""
        from realtime.feeds.couchreads import CouchUnavailable
        d = self.replay()
        self.reader.answer(0, batch(0, 4))
        self.reader.reads[1][1].errback(CouchUnavailable("gone"))
        self.failureResultOf(d, CouchUnavailable)
        self.assertEqual(self.reader.cancelled, [])

    def test_readable_is_decided_with_the_roles_held_now(self):
        """Roles given while the replay runs count from the next batch on."""
        rule = parse_rules('[databases.notes]\nroles = ["team"]\n')["notes"]
        self.db = AppDatabaseReplay("notes", rule)
        d = self.replay()
        first = batch(0, 4)
        for change in first["results"]:
            change["doc"]["team"] = "blue"
        self.reader.answer(0, first)
        self.assertEqual(self.sent, [])
        self.conn.roles = ("blue",)
        second = batch(4, 1)
        second["results"][0]["doc"]["team"] = "blue"
        self.reader.answer(1, second)
        self.assertTrue(self.successResultOf(d).recovered)
        self.assertEqual([m["id"] for m in self.sent], ["d5"])


class Recorder(Resource):
    """Answers every request with ``answer`` (JSON) and records its headers."""

    isLeaf = True

    def __init__(self, answer):
        super().__init__()
        self.answer = answer
        self.headers = []

    def render(self, request):
        self.headers.append(dict(request.requestHeaders.getAllRawHeaders()))
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(self.answer).encode()


class Reads(unittest.TestCase):

    def test_no_compression_is_asked_for(self):
        """The replay's reads carry the credentials, ask for JSON, never for gzip."""
        couch = Recorder(batch(0, 2))
        reader = ChangesReader(RequestTraversalAgent(couch), "http://couch.test", Clock(),
                               admin_auth="YWRtaW46cHc=")
        answer = self.successResultOf(reader.changes("notes", 0, 10))
        self.assertEqual(answer["last_seq"], 2)
        headers = {k.lower(): v for k, v in couch.headers[0].items()}
        self.assertNotIn(b"accept-encoding", headers)
        self.assertEqual(headers[b"authorization"], [b"Basic YWRtaW46cHc="])
        self.assertEqual(headers[b"accept"], [b"application/json"])

    def test_a_cancelled_read_is_not_asked_again(self):
        """Cancelling a read (its replay stopped) ends it: no retry, CancelledError."""
        class Never:
            requests = 0

            def request(self, method, uri, headers=None, bodyProducer=None):
                Never.requests += 1
                return Deferred()

        clock = Clock()
        reader = ChangesReader(Never(), "http://couch.test", clock)
        d = reader.changes("notes", 0, 10)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        clock.advance(60)
        self.assertEqual(Never.requests, 1)
        self.assertEqual(clock.getDelayedCalls(), [])
