"""
Roles and time: a change read from a feed's backlog (after a reconnection) is not judged
with roles a connection gained after the feed was last caught up
(realtime.feeds.catchup, realtime.databases.routing).

The follower runs on a fake agent (CouchDB cut and back, as in tests/test_changes.py) and a
``task.Clock``; the router is the real one over the real registry.
"""

import json

from twisted.internet.defer import Deferred
from twisted.trial import unittest

from realtime.databases.routing import DatabaseRouter, doc_topic
from realtime.databases.rulefile import parse_rules
from realtime.feeds.catchup import reached
from realtime.feeds.changes import ChangesFollower
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


class ReachedTests(unittest.TestCase):
    def test_reached(self):
        """The same seq, or a greater integer seq; strings are never ordered."""
        self.assertTrue(reached("5-abc", "5-abc"))
        self.assertTrue(reached(7, 5))
        self.assertFalse(reached(4, 5))
        self.assertFalse(reached("9-x", "5-y"))


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

    def cut(self):
        """The stream ends; the reconnection is made after the backoff."""
        self.stream.end()
        self.clock.advance(1.0)

    def test_live_rows_carry_their_arrival(self):
        self.clock.advance(2.0)
        self.stream.send(line(change("a", "1-a", 11)))
        self.assertEqual(self.rows[-1][ROLES_BEFORE], self.clock.seconds())
        self.assertFalse(self.follower.catching_up)

    def test_backlog_rows_carry_the_last_caught_up_time(self):
        """
        After a cut, the follower asks CouchDB's position before streaming; the rows up to
        it carry the time the stream ended, the rows after it their arrival.
        """
        self.clock.advance(0.5)
        self.stream.send(b"\n")
        self.clock.advance(2.0)
        ended = self.clock.seconds()
        self.cut()
        query = self.agent.last_query()
        self.assertEqual(query, {"descending": ["true"], "limit": ["1"]})
        asked_at = self.clock.seconds()
        self.agent.answer_position(13)
        self.assertEqual(self.agent.last_query()["since"], ["10"])
        self.stream = self.agent.respond()
        self.assertTrue(self.follower.status()["catchingUp"])
        self.clock.advance(1.0)
        self.stream.send(line(change("a", "1-a", 12)) + line(change("b", "1-b", 13)))
        self.assertEqual([r[ROLES_BEFORE] for r in self.rows], [ended, ended])
        self.assertFalse(self.follower.catching_up)
        self.clock.advance(1.0)
        self.stream.send(line(change("c", "1-c", 14)))
        self.assertEqual(self.rows[-1][ROLES_BEFORE], self.clock.seconds())
        self.cut()  # a cut now: the backlog starts after the catch-up (or the last byte)
        self.agent.answer_position(15)
        self.stream = self.agent.respond()
        self.stream.send(line(change("d", "1-d", 15)))
        self.assertEqual(self.rows[-1][ROLES_BEFORE], self.clock.seconds() - 1.0)
        self.assertGreater(self.rows[-1][ROLES_BEFORE], asked_at)

    def test_a_silent_stream_was_caught_up_at_its_last_byte(self):
        """The watchdog ends a silent stream: it may have been dead since its last byte."""
        self.clock.advance(1.0)
        self.stream.send(b"\n")
        last_byte = self.clock.seconds()
        self.clock.advance(3.0)  # 3 heartbeats: the watchdog aborts
        self.assertTrue(self.stream.transport.stopped)
        self.stream.end()
        self.clock.advance(1.0)
        self.agent.answer_position(12)
        self.agent.respond().send(line(change("a", "1-a", 11)))
        self.assertEqual(self.rows[-1][ROLES_BEFORE], last_byte)

    def test_no_backlog_when_the_position_is_where_it_stopped(self):
        self.cut()
        asked_at = self.clock.seconds()
        self.agent.answer_position(10)
        self.assertFalse(self.follower.catching_up)
        self.stream = self.agent.respond()
        self.clock.advance(1.0)
        self.stream.send(line(change("a", "1-a", 11)))
        self.assertEqual(self.rows[-1][ROLES_BEFORE], asked_at + 1.0)

    def test_a_row_left_unprocessed_bounds_the_stamp(self):
        """A change still being processed when the stream ends was made before the last
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
        self.agent.answer_position(22)
        self.assertTrue(follower.catching_up)
        self.agent.respond().send(line(change("held", "1-h", 22)))
        self.assertEqual(self.rows[-1]["id"], "held")
        self.assertEqual(self.rows[-1][ROLES_BEFORE], arrived)

    def test_a_quiet_heartbeat_ends_the_backlog(self):
        """The row at the position never comes (a string seq moved on): a heartbeat after a
        whole interval without changes says CouchDB has sent everything."""
        self.cut()
        self.agent.answer_position(15)
        self.stream = self.agent.respond()
        self.stream.send(line(change("a", "1-a", "11-x")))
        at = self.clock.seconds()
        self.clock.advance(0.5)
        self.stream.send(b"\n")
        self.assertTrue(self.follower.catching_up)
        self.clock.advance(0.5)
        self.stream.send(b"\n")
        self.assertFalse(self.follower.catching_up)
        self.stream.send(line(change("b", "1-b", "12-x")))
        self.assertEqual(self.rows[-1][ROLES_BEFORE], self.clock.seconds())
        self.assertLess(at, self.clock.seconds())

    def test_started_from_a_seq_nobody_is_trusted(self):
        """A follower started from an explicit seq knows nothing of the changes before its
        position: nobody's roles count for them."""
        self.make(since=3)
        self.agent.answer_position(9)
        self.assertEqual(self.agent.last_query()["since"], ["3"])
        self.agent.respond().send(line(change("a", "1-a", 4)))
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
