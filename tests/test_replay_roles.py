"""
realtime.feeds.replay_roles in isolation: the Mango selectors that find the documents a
former role opens (objects and lists along a dotted path), and what a resume does when they
cannot be found (an ``access`` function names no field; a CouchDB without ``_find``):
nothing sent, one undecidable counted.  End to end on pouchdb-server:
tests.test_replay_databases.RolesLostWhileAway.
"""

import json

from twisted.internet.defer import Deferred, fail, inlineCallbacks, succeed
from twisted.internet.task import Clock
from twisted.trial import unittest

from realtime.databases.rulefile import parse_rules
from realtime.databases.rules import DatabaseRule
from realtime.feeds.couchreads import CouchUnavailable
from realtime.feeds.replay import AppDatabaseReplay, Replayer
from realtime.feeds.replay_roles import role_selectors, send_removed
from tests import harness
from tests.harness import unique

RULE = parse_rules('[databases.notes]\nroles = ["roles", "team.crew.roles"]\n')["notes"]


class Conn:
    user_id, roles, still_open = "ann", ("crew",), True


class Reader:
    def __init__(self, answer):
        self.answer, self.asked = answer, []

    def db_url(self, db):
        return "http://couch/" + db

    def request(self, method, url, body=None):
        self.asked.append((method, url, body))
        return self.answer


class Selectors(unittest.TestCase):

    def test_every_shape_the_rule_reads_is_found_by_pouchdb_find(self):
        """A document whose role field names the role, as the rule reads it (a string, a
        list, through objects and lists of objects), is found by pouchdb-server's own
        ``_find`` with the selectors; one that does not name it is not."""
        named = [{"roles": "staff"}, {"roles": ["x", "staff"]},
                 {"team": {"crew": {"roles": "staff"}}},
                 {"team": [{"crew": {"roles": ["staff"]}}]},
                 {"team": {"crew": [{"roles": "x"}, {"roles": ["staff"]}]}}]
        unnamed = [{"roles": "staffer"}, {"roles": ["x"]}, {"team": {"crew": {"roles": "x"}}},
                   {"team": [{"crew": {"roles": ["x"]}}]}, {"other": "staff"}]
        couch = harness.pouchdb()
        db = unique("roles").lower().replace("-", "_")
        self.assertEqual(couch.request("PUT", "/" + db)[0], 201)
        for i, doc in enumerate(named + unnamed):
            readers = RULE.readers(doc)
            self.assertEqual("role:staff" in readers, i < len(named), doc)  # the rule's view
            status, body = couch.request("PUT", f"/{db}/d{i}", json.dumps(doc))
            self.assertEqual(status, 201, body)
        selectors = [s for path in RULE.roles for s in role_selectors(path, "staff")]
        status, body = couch.request("POST", f"/{db}/_find",
                                     json.dumps({"selector": {"$or": selectors}}))
        self.assertEqual(status, 200, body)
        found = sorted(int(doc["_id"][1:]) for doc in json.loads(body)["docs"])
        self.assertEqual(found, list(range(len(named))))


class Undecidable(unittest.TestCase):

    @inlineCallbacks
    def test_a_failed_find_sends_nothing_and_counts(self):
        replay = AppDatabaseReplay("notes", RULE)
        reader = Reader(fail(CouchUnavailable("CouchDB answered 404", status=404)))
        sent = []
        count = yield send_removed(replay, reader, Conn(), frozenset({"staff"}), set(), 7,
                                   sent.append, "t")
        self.assertEqual((count, sent, replay.undecidable), (0, [], 1))
        self.assertEqual(reader.asked[0][1], "http://couch/notes/_find")

    @inlineCallbacks
    def test_an_access_function_names_no_field(self):
        rule = DatabaseRule(db="notes", access=lambda doc: (), access_name="f")
        replay = AppDatabaseReplay("notes", rule)
        reader = Reader(succeed({"docs": [{"_id": "d", "_rev": "1-a", "roles": "staff"}]}))
        count = yield send_removed(replay, reader, Conn(), frozenset({"staff"}), set(), 7,
                                   lambda m: True, "t")
        self.assertEqual((count, reader.asked, replay.undecidable), (0, [], 1))

    @inlineCallbacks
    def test_found_documents_readable_now_or_replayed_are_not_removed(self):
        replay = AppDatabaseReplay("notes", RULE)
        docs = [{"_id": "gone", "_rev": "2-a", "roles": ["staff"]},
                {"_id": "kept", "_rev": "1-b", "roles": ["staff", "crew"]},
                {"_id": "seen", "_rev": "3-c", "roles": "staff"},
                {"_id": "_design/x", "_rev": "1-d", "roles": "staff"}]
        sent = []
        count = yield send_removed(replay, Reader(succeed({"docs": docs})), Conn(),
                                   frozenset({"staff"}), {"seen"}, 7,
                                   lambda m: sent.append(m) or True, "t")
        self.assertEqual(count, 1)
        self.assertEqual(sent, [{"type": "doc-change", "db": "notes", "id": "gone",
                                 "rev": "2-a", "seq": 7, "removed": True, "timestamp": "t"}])


class SlotReader(Reader):
    """``info`` waits for the test; ``changes`` (the former-roles read) is counted."""

    def __init__(self):
        super().__init__(None)
        self.info_waiting, self.changes_asked = [], []

    def info(self, db):
        d = Deferred()
        self.info_waiting.append(d)
        return d

    def changes(self, db, since, limit, include_docs=True, doc_ids=None):
        self.changes_asked.append((db, since, doc_ids))
        return succeed({"results": [], "last_seq": since})


class Bounded(unittest.TestCase):

    def test_former_roles_wait_for_a_replay_slot(self):
        """Reading a user's former roles takes one of the process's replay slots: a
        reconnect storm cannot ask CouchDB for more at once than the replays may."""
        reader = SlotReader()
        replayer = Replayer(reader, Clock(), followed=("_users", "notes"),
                            databases={"notes": AppDatabaseReplay("notes", RULE)},
                            concurrency=1)
        replayer.replay(Conn(), "notes", 0, lambda m: True)  # holds the only slot
        self.assertEqual(len(reader.info_waiting), 1)
        roles = replayer.former_roles(Conn(), 5)
        self.assertEqual(reader.changes_asked, [])
        reader.info_waiting[0].callback({"update_seq": 0})  # the replay reads, ends
        self.assertEqual(reader.changes_asked,
                         [("notes", 0, None), ("_users", 5, ["org.couchdb.user:ann"])])
        self.assertEqual(self.successResultOf(roles), frozenset())
        self.assertEqual(self.successResultOf(replayer.former_roles(Conn(), "bad seq")),
                         frozenset())
