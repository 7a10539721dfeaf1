"""
Deterministic tests of the changes follower: line parsing, backoff, watchdog, resume.

A fake agent stands in for CouchDB (fault injection: feeds cut mid-line, stalled heartbeats,
500s); time is a ``task.Clock``.
"""

from urllib.parse import parse_qs, urlsplit

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.client import ResponseDone, ResponseFailed, ResponseNeverReceived

from realtime.feeds import rows
from realtime.feeds.changes import ChangesFollower
from realtime.feeds.rows import shallow_row
from realtime.feeds.stream import Backoff, LineParser
from realtime.vocabulary import TOO_DEEP


class LineParserTests(unittest.TestCase):
    def parse(self, chunks, **kwargs):
        lines = []
        parser = LineParser(lines.append, **kwargs)
        for chunk in chunks:
            parser.feed(chunk)
        return lines, parser

    def test_lines_split_across_chunks(self):
        """A line split over several chunks comes out whole, once."""
        lines, parser = self.parse([b'{"a":', b'1}\n{"b"', b":2}\n"])
        self.assertEqual(lines, [b'{"a":1}', b'{"b":2}'])
        self.assertEqual(parser.pending, b"")

    def test_heartbeats_are_skipped(self):
        """Bare newlines (heartbeats) produce no line."""
        lines, _ = self.parse([b"\n", b"\n\n", b'{"x":1}\n', b"\r\n"])
        self.assertEqual(lines, [b'{"x":1}'])

    def test_partial_line_is_held(self):
        """An incomplete line is held back until its newline arrives."""
        lines, parser = self.parse([b'{"id":"a"}\n{"id":'])
        self.assertEqual(lines, [b'{"id":"a"}'])
        self.assertEqual(parser.pending, b'{"id":')

    def test_byte_at_a_time(self):
        """Feeding one byte at a time gives the same lines."""
        data = b'{"a":1}\n\n{"b":[1,2,3]}\n'
        lines, _ = self.parse([data[i:i + 1] for i in range(len(data))])
        self.assertEqual(lines, [b'{"a":1}', b'{"b":[1,2,3]}'])

    def test_overlong_line_dropped(self):
        """A line over the limit is dropped whole, reported, and parsing goes on."""
        sizes = []
        lines, _ = self.parse([b"x" * 20, b"y" * 20, b'\n{"ok":1}\n'], max_line=30,
                              on_overflow=sizes.append)
        self.assertEqual(lines, [b'{"ok":1}'])
        self.assertEqual(len(sizes), 1)


class BackoffTests(unittest.TestCase):
    def test_bounds(self):
        """Attempt n waits within [d/2, d], d = min(30, 2**n) seconds."""
        for value in (0.0, 0.5, 0.999999):
            backoff = Backoff(random=lambda: value)
            for attempt in range(12):
                nominal = min(30.0, 2.0 ** attempt)
                delay = backoff.next_delay()
                self.assertGreaterEqual(delay, nominal / 2)
                self.assertLessEqual(delay, nominal)

    def test_starts_at_one_second_and_caps_at_thirty(self):
        """The nominal delay is 1 s first and never more than 30 s."""
        backoff = Backoff(random=lambda: 1.0)
        delays = [backoff.next_delay() for _ in range(100)]
        self.assertEqual(delays[0], 1.0)
        self.assertEqual(delays[1], 2.0)
        self.assertEqual(max(delays), 30.0)

    def test_jitter_spreads(self):
        """Different random draws give different delays (clients do not reconnect together)."""
        low = Backoff(random=lambda: 0.0).next_delay()
        high = Backoff(random=lambda: 1.0).next_delay()
        self.assertNotEqual(low, high)

    def test_reset(self):
        """After reset the next delay is the initial one again."""
        backoff = Backoff(random=lambda: 1.0)
        for _ in range(5):
            backoff.next_delay()
        backoff.reset()
        self.assertEqual(backoff.next_delay(), 1.0)


class FakeBodyTransport:
    def __init__(self):
        self.stopped = False
        self.paused = False

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False

    def stopProducing(self):
        self.stopped = True


class FakeResponse:
    def __init__(self, code=200):
        self.code = code
        self.phrase = b"OK"
        self.length = None
        self.protocol = None
        self.transport = FakeBodyTransport()

    def deliverBody(self, protocol):
        self.protocol = protocol
        protocol.makeConnection(self.transport)

    def send(self, data: bytes):
        self.protocol.dataReceived(data)

    def end(self, reason=None):
        self.protocol.connectionLost(Failure(reason or ResponseDone()))


class FakeAgent:
    """Records requests; the test answers each one."""

    def __init__(self):
        self.requests = []

    def request(self, method, uri, headers=None, bodyProducer=None):
        d = Deferred(lambda d: None)
        self.requests.append((method, uri, headers, d))
        return d

    def last_query(self):
        uri = self.requests[-1][1].decode("ascii")
        return parse_qs(urlsplit(uri).query)

    def respond(self, code=200) -> FakeResponse:
        response = FakeResponse(code)
        self.requests[-1][3].callback(response)
        return response

    def answer_position(self, last_seq) -> None:
        """Answer the "where is now" request with a whole JSON body."""
        import json
        response = self.respond()
        response.send(json.dumps({"results": [], "last_seq": last_seq}).encode())
        response.end()


class FollowerTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.agent = FakeAgent()
        self.changes = []
        self.follower = ChangesFollower(
            self.agent, self.clock, "http://couch.test:5984", "_users",
            lambda db, change: self.changes.append(change), admin_auth="YWRtaW46cHc=",
            heartbeat_ms=1000, backoff=Backoff(random=lambda: 1.0))
        self.follower.start()
        self.addCleanup(self.follower.stop)
        self.agent.answer_position("1-start")

    def test_first_requests(self):
        """
        The first start asks where "now" is, then streams from there: continuous,
        include_docs, heartbeat, since=<that seq>, every request authorised.
        """
        method, uri, headers, _ = self.agent.requests[0]
        self.assertEqual(method, b"GET")
        self.assertEqual(parse_qs(urlsplit(uri.decode()).query),
                         {"descending": ["true"], "limit": ["1"]})
        self.assertEqual(headers.getRawHeaders(b"authorization"), [b"Basic YWRtaW46cHc="])
        method, uri, headers, _ = self.agent.requests[1]
        self.assertTrue(uri.startswith(b"http://couch.test:5984/_users/_changes?"))
        query = self.agent.last_query()
        self.assertEqual(query["feed"], ["continuous"])
        self.assertEqual(query["include_docs"], ["true"])
        self.assertEqual(query["heartbeat"], ["1000"])
        self.assertEqual(query["since"], ["1-start"])
        self.assertEqual(headers.getRawHeaders(b"authorization"), [b"Basic YWRtaW46cHc="])

    def test_quiet_feed_cut_resumes_from_the_start_position(self):
        """
        A feed cut before any change resumes from the position found at start, never from
        "now" again: changes made while it was cut are not lost.
        """
        response = self.agent.respond()
        response.send(b"\n")  # heartbeats only
        response.end(ResponseFailed([ConnectionLost()]))
        self.clock.advance(1.0)
        self.assertEqual(self.agent.last_query()["since"], ["1-start"])

    def test_position_failures_back_off_and_retry(self):
        """No usable position (500, garbage): back off, then ask again."""
        follower = ChangesFollower(self.agent, self.clock, "http://couch.test", "app",
                                   lambda db, change: None,
                                   backoff=Backoff(random=lambda: 1.0))
        follower.start()
        self.addCleanup(follower.stop)
        self.agent.respond(500).end()
        self.assertEqual(follower.last_error, "HTTP 500: COUCHDB_ADMIN_AUTH is probably missing "
                                              "(an admin reads _changes)")
        self.clock.advance(1.0)
        response = self.agent.respond()
        response.send(b"not json")
        response.end()
        self.assertEqual(follower.last_error, "CouchDB gave no last_seq")
        self.clock.advance(2.0)
        self.agent.answer_position(7)
        self.assertEqual(self.agent.last_query()["since"], ["7"])

    def test_changes_delivered_and_resume_from_last_seq(self):
        """Changes go to the callback; after the stream ends the feed resumes at the last seq."""
        self.assertEqual(self.follower.state, "connecting")
        response = self.agent.respond()
        self.assertEqual(self.follower.state, "connected")
        response.send(b'\n{"seq":"7-abc","id":"org.couchdb.user:a","changes":[]')
        response.send(b',"doc":{"_id":"org.couchdb.user:a"}}\n{"seq":"8-def","id":"org.cou')
        self.assertEqual([c["seq"] for c in self.changes], ["7-abc"])
        # Cut mid-line: the partial change 8 is not counted as processed.
        response.end(ResponseFailed([ConnectionLost()]))
        self.assertEqual(self.follower.state, "reconnecting")
        self.assertEqual(len(self.agent.requests), 2)
        self.clock.advance(1.0)
        self.assertEqual(len(self.agent.requests), 3)
        self.assertEqual(self.agent.last_query()["since"], ["7-abc"])

    def test_seq_is_opaque(self):
        """An integer seq (pouchdb-server) is sent back as is."""
        response = self.agent.respond()
        response.send(b'{"seq":42,"id":"x","changes":[]}\n')
        response.end()
        self.clock.advance(1.0)
        self.assertEqual(self.agent.last_query()["since"], ["42"])
        self.assertEqual(self.follower.last_seq, 42)

    def test_watchdog_aborts_silent_stream(self):
        """No byte for 3 heartbeats: the stream is aborted and the feed reconnects."""
        response = self.agent.respond()
        response.send(b"\n")
        self.clock.advance(2.9)
        response.send(b"\n")  # a heartbeat re-arms the watchdog
        self.clock.advance(2.9)
        self.assertFalse(response.transport.stopped)
        self.clock.advance(0.2)
        self.assertTrue(response.transport.stopped)
        response.end(ResponseFailed([ConnectionLost()]))
        self.assertEqual(self.follower.last_error, "heartbeat timeout")
        self.clock.advance(1.0)
        self.assertEqual(len(self.agent.requests), 3)

    def test_watchdog_covers_waiting_for_headers(self):
        """A server that never answers the request is given up on after 3 heartbeats."""
        self.clock.advance(3.0)
        self.assertEqual(self.follower.state, "reconnecting")
        self.assertEqual(self.follower.last_error, "heartbeat timeout")
        self.clock.advance(1.0)
        self.assertEqual(len(self.agent.requests), 3)

    def test_backoff_grows_and_resets(self):
        """Failures back off 1, 2, 4 s...; a delivering connection resets the backoff."""
        self.agent.requests[-1][3].errback(ConnectionRefusedError())
        self.clock.advance(0.99)
        self.assertEqual(len(self.agent.requests), 2)
        self.clock.advance(0.01)
        self.assertEqual(len(self.agent.requests), 3)
        self.agent.respond(500).end()
        self.clock.advance(1.99)
        self.assertEqual(len(self.agent.requests), 3)
        self.clock.advance(0.01)
        self.assertEqual(len(self.agent.requests), 4)
        self.assertEqual(self.follower.last_error, "HTTP 500")
        response = self.agent.respond()
        response.send(b"\n")
        response.end()
        self.clock.advance(1.0)
        self.assertEqual(len(self.agent.requests), 5)

    def test_connected_from_the_headers(self):
        """
        The stream's 200 is enough to be connected (CouchDB sends its headers at once and
        the first byte of body a heartbeat later): the error and the 404 are forgotten, and
        silence counts from the headers (stalled after 1.5 heartbeats without a byte).
        """
        states = []
        self.follower._on_state = lambda follower: states.append(follower.state)
        self.agent.respond(404).end()
        self.assertEqual(self.follower.health, "missing")
        self.clock.advance(1.0)
        self.agent.respond()
        self.assertEqual(states, ["reconnecting", "connected"])
        self.assertEqual(self.follower.health, "connected")
        self.assertIsNone(self.follower.status()["lastError"])
        self.assertEqual(self.follower.silent_seconds(), 0.0)
        self.clock.advance(1.6)
        self.assertEqual(self.follower.health, "stalled")

    def test_headers_alone_do_not_reset_the_backoff(self):
        """A server that answers 200 and ends every stream before a byte of body is
        asked again 1, 2, 4 s later, not every second: only a body resets the backoff."""
        delays = []
        for _ in range(3):
            self.agent.respond().end()
            self.assertEqual(self.follower.state, "reconnecting")
            before, waited = len(self.agent.requests), 0.0
            while len(self.agent.requests) == before:
                self.clock.advance(0.5)
                waited += 0.5
            delays.append(waited)
        self.assertEqual(delays, [1.0, 2.0, 4.0])

    def test_bad_lines_do_not_stall_the_feed(self):
        """Unparsable lines are dropped; a failing callback still advances the seq."""
        failures = []

        def explode(db, change):
            failures.append(change)
            raise ValueError("boom")

        self.follower._on_change = explode
        response = self.agent.respond()
        response.send(b'garbage\n[1,2]\n{"seq":5,"id":"a","changes":[]}\n')
        self.assertEqual(len(failures), 1)
        self.assertEqual(self.follower.last_seq, 5)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_change_nested_too_deep_goes_on_without_its_document(self):
        """A change whose document nests deeper than the parser can go reaches the
        callback without it, marked too deep, and the feed moves past it; the log line
        names the seq, never the content.  A line that is not a change at all is dropped."""
        response = self.agent.respond()
        deep = b"[" * 5000 + b'"' + b"]" * 10 + b'"' + b"]" * 5000
        with capturedLogs() as events:
            response.send(b'{"seq":"7-abc","id":"org.couchdb.user:a","changes":[{"rev":'
                          b'"2-x"}],"deleted":false,"doc":{"_id":"org.couchdb.user:a",'
                          b'"x":' + deep + b',"after":1}}\n' + deep + b'\n'
                          b'{"seq":"8-def","id":"org.couchdb.user:b","changes":[]}\n')
        self.assertEqual(self.changes[0], {"seq": "7-abc", "id": "org.couchdb.user:a",
                                           "changes": [{"rev": "2-x"}], "deleted": False,
                                           TOO_DEEP: True})
        self.assertEqual([c["seq"] for c in self.changes], ["7-abc", "8-def"])
        self.assertEqual(self.follower.last_seq, "8-def")
        text = " ".join(formatEvent(event) for event in events)
        self.assertIn("7-abc", text)
        self.assertEqual(len(events), 2, text)
        self.assertNotIn("[[", text)
        self.assertNotIn("org.couchdb.user", text)

    def test_shallow_rows(self):
        """shallow_row reads the fields before the first one too deep, and refuses what
        is not a JSON object."""
        deep = "[" * 3000 + "]" * 3000
        cases = [
            ('{"seq":1,"id":"a","doc":%s}' % deep, {"seq": 1, "id": "a"}),
            (' { "seq" : 1 , "id" : "a" , "doc" : %s } ' % deep, {"seq": 1, "id": "a"}),
            ('{"seq":1,"x":%s,"id":"after"}' % deep, {"seq": 1, "id": "after"}),
            ('{"id":"a","doc":{"s":"]}\\"]","d":%s},"seq":2}' % deep, {"id": "a", "seq": 2}),
            ('{"id":"a","doc":%s,"seq":2}' % ("[" * 3000 + " " * rows.MAX_SKIPPED_CHARS +
                                              "]" * 3000), {"id": "a"}),
            ('{"id":"a","doc":%s' % deep[:-1], None),  # unterminated
            ('{"seq":1,"id":"\\ud800","doc":%s}' % deep, None),  # lone surrogate
            ('{"seq":1e400,"doc":%s}' % deep, None),
            ('[%s]' % deep, None),
            ('{"seq":1 "id":2}', None),
            ('{"seq":1}', {"seq": 1}),
            ('{}', {}),
            ('{"seq":', None),
        ]
        for line, expected in cases:
            self.assertEqual(shallow_row(line.encode()), expected, line[:40])
        self.assertIsNone(shallow_row(b"\xff{}"))

    def test_last_seq_line(self):
        """A final last_seq line moves the resume point."""
        response = self.agent.respond()
        response.send(b'{"last_seq":"99-x"}\n')
        response.end()
        self.clock.advance(1.0)
        self.assertEqual(self.agent.last_query()["since"], ["99-x"])

    def test_stop_cancels_everything(self):
        """stop() aborts the stream and schedules nothing more."""
        response = self.agent.respond()
        response.send(b"\n")
        self.follower.stop()
        self.assertTrue(response.transport.stopped)
        response.end(ResponseFailed([ConnectionLost()]))
        self.clock.advance(100)
        self.assertEqual(len(self.agent.requests), 2)
        self.assertEqual(self.follower.state, "stopped")
        self.assertEqual(self.clock.getDelayedCalls(), [])


class AsyncCallbackTests(unittest.TestCase):
    """A callback returning a Deferred (an application database reading an older revision)."""

    def setUp(self):
        self.clock = task.Clock()
        self.agent = FakeAgent()
        self.seen = []
        self.pending = {}

        def on_change(db, change):
            self.seen.append(change["seq"])
            if change["id"].startswith("slow"):
                d = self.pending[change["seq"]] = Deferred()
                return d
            return None

        self.follower = ChangesFollower(self.agent, self.clock, "http://couch.test", "app",
                                        on_change, heartbeat_ms=1000,
                                        backoff=Backoff(random=lambda: 1.0))
        self.follower.start()
        self.addCleanup(self.follower.stop)
        self.agent.answer_position(0)

    def line(self, seq, doc_id):
        return b'{"seq":%d,"id":"%s","changes":[]}\n' % (seq, doc_id.encode())

    def test_later_changes_wait_in_order(self):
        """Changes read while one is pending are processed after it, in order; the resume
        point moves only past processed changes; the lag is the pending change's age."""
        response = self.agent.respond()
        response.send(self.line(1, "a") + self.line(2, "slow") + self.line(3, "b"))
        self.assertEqual(self.seen, [1, 2])
        self.assertEqual(self.follower.last_seq, 1)
        self.assertEqual(self.follower.pending, 2)
        self.clock.advance(0.5)
        self.assertEqual(self.follower.lag_seconds(), 0.5)
        response.send(self.line(4, "slow") + self.line(5, "c"))
        self.pending[2].callback(None)
        self.assertEqual(self.seen, [1, 2, 3, 4])
        self.assertEqual(self.follower.last_seq, 3)
        self.pending[4].errback(ValueError("boom"))  # logged; the change still counts
        self.assertEqual(self.seen, [1, 2, 3, 4, 5])
        self.assertEqual(self.follower.last_seq, 5)
        self.assertEqual(self.follower.lag_seconds(), 0.0)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_backpressure_pauses_the_response(self):
        """Past MAX_HELD_LINES held, the response is paused, and the watchdog rests."""
        from realtime.feeds import rows
        self.patch(rows, "MAX_HELD_LINES", 3)
        response = self.agent.respond()
        response.send(self.line(1, "slow") + b"".join(self.line(n, "x") for n in (2, 3, 4)))
        self.assertTrue(response.transport.paused)
        self.clock.advance(10)  # paused by us: no watchdog abort
        self.assertFalse(response.transport.stopped)
        self.pending[1].callback(None)
        self.assertFalse(response.transport.paused)
        self.assertEqual(self.seen, [1, 2, 3, 4])
        self.clock.advance(3.1)  # the watchdog is armed again
        self.assertTrue(response.transport.stopped)

    def test_stream_end_waits_for_the_pending_change(self):
        """A stream ending while a change is pending reconnects only once it is processed,
        from its seq: the held lines are read again, nothing is routed twice."""
        response = self.agent.respond()
        response.send(self.line(1, "slow") + self.line(2, "b"))
        response.end(ResponseFailed([ConnectionLost()]))
        self.clock.advance(5.0)
        requests = len(self.agent.requests)
        self.pending[1].callback(None)
        self.assertEqual(self.seen, [1])
        self.assertEqual(len(self.agent.requests), requests + 1)
        self.assertEqual(self.agent.last_query()["since"], ["1"])


class FeedStatusTests(unittest.TestCase):
    """What the status says about a feed: stalled, time since the last byte, readable errors."""

    def setUp(self):
        self.clock = task.Clock()
        self.agent = FakeAgent()

    def follower(self, admin_auth="YWRtaW46cHc="):
        follower = ChangesFollower(self.agent, self.clock, "http://couch.test:5984", "_users",
                                   lambda db, change: None, admin_auth=admin_auth,
                                   heartbeat_ms=1000, backoff=Backoff(random=lambda: 1.0))
        follower.start()
        self.addCleanup(follower.stop)
        return follower

    def test_stalled_past_one_heartbeat(self):
        """
        A connected stream silent for more than 1.5 heartbeats is 'stalled' in the status
        (the watchdog reconnects at 3); a heartbeat byte makes it 'connected' again, and
        lastByteSecondsAgo counts from the last byte.
        """
        follower = self.follower()
        self.agent.answer_position("1-start")
        stream = self.agent.respond()
        stream.send(b"\n")
        self.assertEqual(follower.status()["state"], "connected")
        self.clock.advance(1.2)
        self.assertEqual(follower.status()["lastByteSecondsAgo"], 1.2)
        self.assertEqual(follower.health, "connected")
        self.clock.advance(0.4)
        self.assertEqual(follower.status()["state"], "stalled")
        stream.send(b"\n")
        self.assertEqual(follower.status()["state"], "connected")
        self.assertEqual(follower.status()["lastByteSecondsAgo"], 0.0)

    def test_connection_errors_are_words(self):
        """A refused connection reads as such, not as a list of Failure objects."""
        follower = self.follower()
        self.agent.requests[-1][3].errback(
            ResponseNeverReceived([Failure(ConnectionRefusedError("nope"))]))
        self.assertNotIn("<", follower.last_error)
        self.assertIn("ConnectionRefusedError", follower.last_error)

    def test_credentials_hint(self):
        """401/403, or pouchdb-server's 500 with no credentials, name COUCHDB_ADMIN_AUTH."""
        without = self.follower(admin_auth=None)
        self.agent.respond(500).end()
        self.assertIn("COUCHDB_ADMIN_AUTH is probably missing", without.last_error)
        self.clock.advance(1.0)
        self.agent.respond(401).end()
        self.assertIn("COUCHDB_ADMIN_AUTH is probably missing", without.last_error)
        without.stop()
        with_auth = self.follower()
        self.agent.respond(403).end()
        self.assertIn("COUCHDB_ADMIN_AUTH is wrong", with_auth.last_error)
