"""
Roles and time: a change read from a feed's backlog (after a reconnection) is not judged
with roles a connection gained after the feed was last caught up
(realtime.feeds.catchup, realtime.databases.routing).

The follower runs on a fake agent (CouchDB cut and back, as in tests/test_changes.py) and a
``task.Clock``; the router is the real one over the real registry.
"""

import json

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.trial import unittest
from twisted.web.client import ResponseFailed

from realtime.databases.application import ApplicationDatabases
from realtime.databases.routing import DatabaseRouter, doc_topic
from realtime.databases.rulefile import parse_rules
from realtime.feeds.catchup import BACKLOG_BATCH, LIVE_WITHIN
from realtime.feeds.changes import ChangesFollower
from realtime.feeds.rows import MAX_HELD_LINES
from realtime.feeds.stream import Backoff
from realtime.vocabulary import ROLES_BEFORE
from tests.fakes import FakeConnection, make_gateway
from tests.test_changes import FakeAgent
from tests.test_db_routing import FakeRevisions, change

RULES = """
[databases.notes]
users = ["owner", "members"]
roles = ["roles"]
"""


def line(row) -> bytes:
    return json.dumps(row).encode() + b"\n"


def answer(agent, body: dict) -> None:
    """Answer the last request with a whole JSON body."""
    response = agent.respond()
    response.send(json.dumps(body).encode())
    response.end()


def batch(agent, rows, last_seq=None) -> None:
    """Answer a read of the backlog (the normal feed)."""
    answer(agent, {"results": rows,
                   "last_seq": last_seq if last_seq is not None else rows[-1]["seq"]})


class FollowerStampTests(unittest.TestCase):
    """What a backlog-tracking follower stamps on each change, and when it is live."""

    def setUp(self):
        self.gateway = make_gateway()
        self.clock = self.gateway.clock
        self.agent = FakeAgent()
        self.rows = []
        self.follower = self.make(since="now")
        self.agent.answer_position(10)
        self.stream = self.agent.respond()

    def make(self, since, on_change=None):
        follower = ChangesFollower(
            self.agent, self.clock, "http://couch.test", "notes",
            on_change or (lambda db, row: self.rows.append(row)), heartbeat_ms=1000,
            since=since, backoff=Backoff(random=lambda: 1.0), track_backlog=True)
        follower.start()
        self.addCleanup(follower.stop)
        return follower

    def query(self):
        return self.agent.last_query()

    def cut(self, after=1.0):
        """The stream ends; the reconnection is made after the backoff."""
        self.stream.end()
        self.clock.advance(after)

    def test_live_rows_carry_their_arrival(self):
        self.clock.advance(2.0)
        self.stream.send(line(change("a", "1-a", 11)))
        self.assertEqual(self.rows[-1][ROLES_BEFORE], self.clock.seconds())
        self.assertFalse(self.follower.catching_up)

    def test_the_backlog_is_read_in_batches_then_streamed(self):
        """
        After a cut, the changes since the last one processed are read with the normal
        feed, in batches, each row stamped with the stream's last byte; a short batch ends
        the backlog (caught up when it was asked for), and the stream starts at its
        last_seq, its rows stamped with their arrival.
        """
        self.clock.advance(0.5)
        self.stream.send(b"\n")
        last_byte = self.clock.seconds()
        self.clock.advance(2.0)
        self.cut()
        self.assertTrue(self.follower.status()["catchingUp"])
        self.assertEqual(self.query(), {"since": ["10"], "limit": [str(BACKLOG_BATCH)],
                                        "include_docs": ["true"]})
        full = [change(f"d{n}", "1-a", 11 + n) for n in range(BACKLOG_BATCH)]
        batch(self.agent, full)
        self.assertEqual(self.query()["since"], [str(10 + BACKLOG_BATCH)])
        self.assertNotIn("feed", self.query())
        asked = self.clock.seconds()  # (the next batch was asked for at once)
        self.clock.advance(LIVE_WITHIN)  # answered and processed within it: live
        batch(self.agent, [change("z", "1-z", 300)], last_seq=301)
        self.assertEqual({r[ROLES_BEFORE] for r in self.rows}, {last_byte})
        self.assertEqual(len(self.rows), BACKLOG_BATCH + 1)
        self.assertFalse(self.follower.catching_up)
        self.assertEqual(self.query()["feed"], ["continuous"])
        self.assertEqual(self.query()["since"], ["301"])
        self.stream = self.agent.respond()
        self.clock.advance(1.0)
        self.stream.send(line(change("c", "1-c", 302)))
        self.assertEqual(self.rows[-1][ROLES_BEFORE], self.clock.seconds())
        self.cut(after=0.0)  # caught up at the catch-up, or the last byte since
        last_byte = self.clock.seconds()
        self.clock.advance(1.0)
        batch(self.agent, [change("d", "1-d", 303)])
        self.assertEqual(self.rows[-1][ROLES_BEFORE], last_byte)
        self.assertGreater(self.rows[-1][ROLES_BEFORE], asked)

    def test_string_seqs_on_a_busy_database(self):
        """CouchDB 2/3: no seq is compared; a short batch ends the backlog however busy
        the database is."""
        self.cut()
        batch(self.agent, [change("hot", "5-h", "15-xyz")], last_seq="16-abc")
        self.assertFalse(self.follower.catching_up)
        self.assertEqual(self.query()["since"], ["16-abc"])

    def test_an_empty_backlog(self):
        self.cut()
        asked = self.clock.seconds()
        batch(self.agent, [], last_seq=10)
        self.assertFalse(self.follower.catching_up)
        self.stream = self.agent.respond()
        self.clock.advance(1.0)
        self.stream.send(line(change("a", "1-a", 11)))
        self.assertEqual(self.rows[-1][ROLES_BEFORE], asked + 1.0)

    def test_a_silent_stream_was_caught_up_at_its_last_byte(self):
        """A stream that ends (the watchdog, or a reset after a silence) may have been
        dead since its last byte."""
        self.clock.advance(1.0)
        self.stream.send(b"\n")
        last_byte = self.clock.seconds()
        self.clock.advance(2.5)  # "stalled" in the status, then a reset
        self.stream.end(ResponseFailed([ConnectionLost()]))
        self.clock.advance(1.0)
        batch(self.agent, [change("a", "1-a", 11)])
        self.assertEqual(self.rows[-1][ROLES_BEFORE], last_byte)

    def test_a_row_left_unprocessed_bounds_the_stamp(self):
        """A change still being processed when the stream ends was made before its last
        byte: its arrival bounds the backlog's stamp."""
        pending = Deferred()
        follower = self.make(since="now", on_change=lambda db, row: (
            self.rows.append(row), pending if row["id"] == "slow" else None)[1])
        self.agent.answer_position(20)
        stream = self.agent.respond()
        stream.send(line(change("slow", "2-s", 21)))
        arrived = self.clock.seconds()
        self.clock.advance(4.0)
        stream.send(line(change("held", "1-h", 22)))
        stream.end()
        self.clock.advance(1.0)
        pending.callback(None)  # the reconnection waits for it
        self.assertTrue(follower.catching_up)
        self.assertEqual(self.query()["since"], ["21"])
        batch(self.agent, [change("held", "1-h", 22)])
        self.assertEqual(self.rows[-1]["id"], "held")
        self.assertEqual(self.rows[-1][ROLES_BEFORE], arrived)

    def test_too_many_held_rows_drop_the_stream(self):
        """Behind a slow change, the stream is not paused (changes made meanwhile would
        arrive later, looking live): it is dropped, and read again as a backlog."""
        pending = Deferred()
        follower = self.make(since="now", on_change=lambda db, row: (
            self.rows.append(row), pending if row["id"] == "slow" else None)[1])
        self.agent.answer_position(20)
        stream = self.agent.respond()
        stream.send(line(change("slow", "2-s", 21)))
        for n in range(MAX_HELD_LINES):
            stream.send(line(change(f"f{n}", "1-f", 22 + n)))
        self.assertFalse(stream.transport.paused)
        self.assertTrue(stream.transport.stopped)
        stream.end(ResponseFailed([ConnectionLost()]))
        self.assertIsNone(follower.last_error)
        self.clock.advance(6.0)
        pending.callback(None)
        self.assertTrue(follower.catching_up)
        self.assertEqual(self.query()["since"], ["21"])
        self.assertEqual([r["id"] for r in self.rows], ["slow"])

    def test_a_failed_backlog_read_is_retried(self):
        """A 500 (or no answer) while reading the backlog: back off, read it again."""
        self.cut()
        self.agent.respond(500).end()
        self.clock.advance(0.5)  # the reader's own retries of a 5xx
        self.agent.respond(500).end()
        self.clock.advance(0.5)
        self.agent.respond(500).end()
        self.assertIn("reading the backlog", self.follower.last_error)
        self.assertTrue(self.follower.catching_up)
        self.clock.advance(2.0)
        self.assertEqual(self.query()["since"], ["10"])
        batch(self.agent, [change("a", "1-a", 11)])
        self.assertFalse(self.follower.catching_up)
        self.assertIsNone(self.follower.last_error)

    def test_started_from_a_seq_nobody_is_trusted(self):
        """A follower started from an explicit seq knows nothing of the changes before its
        start: it reads them as a backlog, and nobody's roles count for them."""
        follower = self.make(since=3)
        self.assertEqual(follower.state, "connecting")
        self.assertEqual(self.query()["since"], ["3"])
        batch(self.agent, [change("a", "1-a", 4)])
        self.assertEqual(self.rows[-1][ROLES_BEFORE], float("-inf"))

    def test_a_follower_not_tracking_stamps_nothing(self):
        """The _users feed's follower streams at once after a cut and stamps nothing."""
        rows = []
        follower = ChangesFollower(self.agent, self.clock, "http://couch.test", "_users",
                                   lambda db, row: rows.append(row), heartbeat_ms=1000,
                                   backoff=Backoff(random=lambda: 1.0))
        follower.start()
        self.addCleanup(follower.stop)
        self.agent.answer_position(1)
        stream = self.agent.respond()
        stream.end()
        self.clock.advance(1.0)
        self.assertEqual(self.agent.last_query()["feed"], ["continuous"])
        self.agent.respond().send(line(change("a", "1-a", 2)))
        self.assertNotIn(ROLES_BEFORE, rows[-1])
        self.assertFalse(follower.status()["catchingUp"])


class BacklogRoutingTests(unittest.TestCase):
    """The router judges a stamped change with the roles held since before its stamp."""

    def setUp(self):
        self.gateway = make_gateway()
        self.clock = self.gateway.clock
        self.registry = self.gateway.registry
        self.revisions = FakeRevisions()
        self.router = DatabaseRouter(parse_rules(RULES)["notes"], self.registry,
                                     self.revisions, self.gateway.timestamp)
        self.old = FakeConnection(self.gateway, "olga", roles=("staff",))
        self.clock.advance(10)
        self.caught_up = self.clock.seconds()
        self.clock.advance(10)
        self.new = FakeConnection(self.gateway, "nina", roles=("staff",))  # opened since
        self.gained = FakeConnection(self.gateway, "gus")
        self.gateway.dispatch.user_roles_changed("gus", ("staff",))  # granted since

    def route(self, row, before):
        row[ROLES_BEFORE] = before
        self.router.on_change(row)

    def kinds(self, conn):
        got, conn.received = conn.received, []
        return [(m["id"], "deleted" if m.get("deleted") else
                 "removed" if m.get("removed") else "doc") for m in got]

    def test_roles_changed_later_do_not_count(self):
        """A revision the role opened in the backlog goes only to who held the role then;
        its end (access dropped, deletion) is told only to them."""
        self.route(change("n1", "1-a", 1, roles=["staff"]), self.caught_up)
        self.route(change("n1", "2-a", 2, owner="olga"), self.caught_up)
        self.route(change("n2", "1-b", 3, roles=["staff"]), self.caught_up)
        self.route(change("n2", "2-b", 4, deleted=True), self.caught_up)
        self.assertEqual(self.kinds(self.old), [("n1", "doc"), ("n1", "doc"),
                                                ("n2", "doc"), ("n2", "deleted")])
        self.assertEqual(self.kinds(self.new), [])
        self.assertEqual(self.kinds(self.gained), [])

    def test_previous_read_from_couchdb(self):
        """The same when the previous revision is read back from CouchDB (after a
        restart, the readers index is empty)."""
        self.revisions.table[("n1", "3-a")] = (True, {"_id": "n1", "_rev": "2-a",
                                                      "roles": ["staff"]})
        self.route(change("n1", "3-a", 5, owner="olga"), self.caught_up)
        self.assertEqual(self.kinds(self.old), [("n1", "doc")])
        self.assertEqual(self.kinds(self.new), [])
        self.assertEqual(self.kinds(self.gained), [])
        self.revisions.table[("n9", "2-z")] = (True, {"_id": "n9", "_rev": "1-z",
                                                      "roles": ["staff"]})
        self.route(change("n9", "2-z", 6, deleted=True), self.caught_up)
        self.assertEqual(self.kinds(self.old), [("n9", "deleted")])
        self.assertEqual((self.kinds(self.new), self.kinds(self.gained)), ([], []))

    def test_live_changes_use_the_roles_held_now(self):
        """Live (stamped after the roles changed), the roles count as before."""
        now = self.clock.seconds()
        self.route(change("n1", "1-a", 1, roles=["staff"]), now)
        self.route(change("n1", "2-a", 2, owner="olga"), now)
        for conn in (self.new, self.gained):
            self.assertEqual(self.kinds(conn), [("n1", "doc"), ("n1", "removed")])

    def test_users_fields_still_count(self):
        """Being named in the document does not depend on roles: it counts at any time."""
        self.route(change("n1", "1-a", 1, owner="nina", roles=["staff"]), self.caught_up)
        self.route(change("n1", "2-a", 2, owner="olga"), self.caught_up)
        self.assertEqual(self.kinds(self.new), [("n1", "doc"), ("n1", "removed")])
        self.assertEqual(self.kinds(self.gained), [])

    def test_doc_subscribers_keep_their_subscription(self):
        """A doc: subscriber whose role came later is not sent the backlog's revision,
        nor unsubscribed: its roles, held now, still read it."""
        rule = parse_rules(RULES + '[databases.inbox]\nroles = ["roles"]\npush = "subscribed"\n')
        router = DatabaseRouter(rule["inbox"], self.registry, self.revisions,
                                self.gateway.timestamp)
        self.registry.subscribe(self.gained, doc_topic("inbox", "n1"))
        row = change("n1", "1-a", 1, roles=["staff"])
        row[ROLES_BEFORE] = self.caught_up
        router.on_change(row)
        self.assertEqual(self.kinds(self.gained), [])
        self.assertIn(doc_topic("inbox", "n1"), self.gained.topics)


class Revisions(FakeRevisions):
    """Also answers ``document`` (the current revision) from ``current``."""

    def __init__(self):
        super().__init__()
        self.current = {}

    def document(self, db, doc_id):
        return succeed(self.current.get(doc_id))


class RolesChangedTests(unittest.TestCase):
    """A role lost is announced from the readers index only when the role was held while
    the index was current (the feed caught up); doc: rechecks never tell a forbidden
    document's rev."""

    def setUp(self):
        self.gateway = make_gateway()
        self.clock = self.gateway.clock
        self.agent = FakeAgent()
        self.revisions = Revisions()
        self.dbs = ApplicationDatabases(parse_rules(RULES), self.gateway.registry,
                                        self.revisions, self.gateway.timestamp)
        self.olga = FakeConnection(self.gateway, "olga", roles=("staff",))  # all along
        self.gus = FakeConnection(self.gateway, "gus")
        follower = ChangesFollower(
            self.agent, self.clock, "http://couch.test", "notes",
            self.dbs.on_change, heartbeat_ms=1000, backoff=Backoff(random=lambda: 1.0),
            track_backlog=True)
        self.dbs.routers["notes"].caught_up = follower.caught_up_time  # as the assembly
        follower.start()
        self.addCleanup(follower.stop)
        self.agent.answer_position(10)
        self.stream = self.agent.respond()
        self.clock.advance(1.0)
        self.stream.send(line(change("n1", "1-a", 11, roles=["staff"])))  # indexed

    def set_roles(self, user, roles):
        """As a _users change does (the fake gateway has no databases: this test's
        ApplicationDatabases is told as the real one would be)."""
        conn = self.gateway.registry.connections_of(user)[0]
        old, old_since = conn.roles, conn.roles_since
        self.gateway.dispatch.user_roles_changed(user, roles)
        self.dbs.roles_changed(conn, old, old_since)

    def about(self, conn, doc_id):
        return [(m.get("removed"), m.get("rev")) for m in conn.received
                if m.get("id") == doc_id]

    def test_granted_and_taken_while_the_feed_was_cut(self):
        self.stream.end(ResponseFailed([ConnectionLost()]))  # n1 may change meanwhile
        self.clock.advance(5)
        self.set_roles("gus", ("staff",))
        self.clock.advance(5)
        self.set_roles("gus", ())
        self.assertEqual(self.about(self.gus, "n1"), [])
        self.set_roles("olga", ())  # held while the index was current: told
        self.assertEqual(self.about(self.olga, "n1"), [(None, "1-a"), (True, "1-a")])

    def test_live_the_index_is_current(self):
        self.clock.advance(1)
        self.set_roles("gus", ("staff",))
        self.clock.advance(1)
        self.stream.send(b"\n")  # the feed is alive after the grant
        self.set_roles("gus", ())
        self.assertEqual(self.about(self.gus, "n1"), [(True, "1-a")])

    def test_a_forbidden_subscription_looks_missing(self):
        """A doc: subscription the index cannot decide is checked against CouchDB: the
        subscriber who may not read the document is told removed without its rev, as for
        a missing one."""
        self.revisions.current["n7"] = {"_id": "n7", "_rev": "5-x", "roles": ["staff"]}
        self.gateway.registry.subscribe(self.olga, doc_topic("notes", "n7"))
        self.gateway.registry.subscribe(self.olga, doc_topic("notes", "n8"))  # missing
        self.set_roles("olga", ())
        self.assertEqual(self.about(self.olga, "n7"), [(True, None)])
        self.assertEqual(self.about(self.olga, "n8"), [(True, None)])


class CatchUpEdgeTests(unittest.TestCase):
    """The edges of a catch-up (from a review): a slow last batch, a stream lost before
    its first byte, a change waiting while live, a refused seq, a stop."""

    def setUp(self):
        self.clock = make_gateway().clock
        self.agent = FakeAgent()
        self.rows = []

    def make(self, since, slow=None):
        self.pending = Deferred()

        def on_change(db, row):
            self.rows.append(row)
            return self.pending if row["id"] == slow else None
        follower = ChangesFollower(
            self.agent, self.clock, "http://couch.test", "notes", on_change,
            heartbeat_ms=1000, since=since, backoff=Backoff(random=lambda: 1.0),
            track_backlog=True)
        follower.start()
        self.addCleanup(follower.stop)
        return follower

    def test_a_slowly_processed_last_batch_is_followed_by_another(self):
        """The stream would start only once the short batch's rows are processed: when
        that took longer than LIVE_WITHIN, the changes made meanwhile are read as a
        backlog too, and only a batch processed at once ends it."""
        follower = self.make(since=5, slow="slow")
        batch(self.agent, [change("slow", "2-s", 6)], last_seq=6)
        self.clock.advance(LIVE_WITHIN + 0.1)
        self.pending.callback(None)
        self.assertTrue(follower.catching_up)
        self.assertEqual(self.agent.last_query()["since"], ["6"])
        self.assertNotIn("feed", self.agent.last_query())
        batch(self.agent, [change("during", "2-d", 7)])
        self.assertEqual(self.rows[-1][ROLES_BEFORE], float("-inf"))
        self.assertFalse(follower.catching_up)
        self.assertEqual(self.agent.last_query()["feed"], ["continuous"])

    def test_caught_up_when_asked_not_when_answered(self):
        """A stream lost before its first byte: the next backlog is stamped with the time
        the last batch was asked for, not when its answer came."""
        self.make(since=5)
        self.clock.advance(1.0)  # (a follower from an explicit seq: -inf first)
        self.rows.clear()
        asked = self.clock.seconds()
        self.clock.advance(0.4)
        batch(self.agent, [change("a", "1-a", 6)])
        self.agent.requests[-1][3].errback(ConnectionRefusedError())
        self.clock.advance(1.0)
        batch(self.agent, [change("b", "1-b", 7)])
        self.assertLessEqual(self.rows[-1][ROLES_BEFORE], asked)

    def test_caught_up_time_while_a_change_waits(self):
        """Live, a change read and not yet processed holds the readers index back."""
        follower = self.make(since="now", slow="slow")
        self.agent.answer_position(20)
        stream = self.agent.respond()
        stream.send(line(change("slow", "2-s", 21)))
        arrived = self.clock.seconds()
        self.clock.advance(5.0)
        stream.send(line(change("held", "2-h", 22)))
        self.clock.advance(5.0)
        stream.send(b"\n")
        self.assertEqual(follower.caught_up_time(), arrived)
        self.pending.callback(None)
        self.assertEqual(follower.caught_up_time(), self.clock.seconds())

    def test_a_refused_seq_says_what_failed(self):
        follower = self.make(since=5)
        self.agent.respond(400).end()
        self.assertEqual(follower.last_error, "reading the backlog: SeqRefused")

    def test_stopped_and_started_again_it_is_behind(self):
        """Changes made while a follower was stopped are a backlog."""
        follower = self.make(since="now")
        self.agent.answer_position(10)
        self.agent.respond().send(b"\n")
        follower.stop()
        self.clock.advance(60.0)
        follower.start()
        self.assertTrue(follower.catching_up)
        self.assertEqual(self.agent.last_query()["since"], ["10"])
