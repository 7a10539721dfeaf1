"""
A randomized cross-user leak test of application-database routing.

Many users with changing roles, documents whose owner, members and roles change at random,
deletions and re-creations, doc: subscriptions, a tiny readers index (evictions), previous
revisions that CouchDB sometimes no longer has (compacted), and restarts of the router
(empty index).  Every message every connection receives is checked against an oracle
computed from the documents themselves:

- a ``doc-change`` with a document: the connection's user may read that revision with the
  roles held at that moment, and the document is the revision without its hidden fields;
- ``deleted`` / ``removed``: the connection could read that document at some point (it was
  sent a revision, or its roles at some moment opened the revision current then), and for
  ``removed`` may not read the new revision;
- nothing ever carries a hidden field's value, and no connection hears of an id it was
  never allowed to read.

And the other way (completeness, push = "all"): every connection that may read a revision
gets it, and a connection that got the previous revision and may not read the new one gets
``removed`` whenever the previous readers were decidable.
"""

import random

from twisted.internet.defer import succeed
from twisted.trial import unittest

from realtime.auth.identity import Identity
from realtime.databases.readers import ReadersIndex
from realtime.databases.routing import DatabaseRouter, doc_topic
from realtime.databases.rulefile import parse_rules
from realtime.databases.rules import may_read
from tests.fakes import FakeConnection, make_gateway

RULES = """
[databases.notes]
users  = ["owner", "members", "acl.readers"]
roles  = ["roles"]
hidden = ["secret", "acl.token"]
"""

USERS = [f"u{n}" for n in range(24)]
ROLES = ["r0", "r1", "r2", "r3"]
DOCS = [f"d{n}" for n in range(16)]
SECRET_MARK = "SECRET-"


class HistoryRevisions:
    """previous_revision from the true history; 'compacted' for a chosen share of asks."""

    def __init__(self, rng, compacted_share):
        self.rng = rng
        self.share = compacted_share
        self.bodies = {}  # (id, rev) -> doc body
        self.parent = {}  # (id, rev) -> parent rev or None

    def previous_revision(self, db, doc_id, rev):
        if self.rng.random() < self.share:
            return succeed((False, None))
        parent = self.parent.get((doc_id, rev))
        if parent is None:
            return succeed((True, None))
        body = self.bodies[(doc_id, parent)]
        return succeed((True, None if body.get("_deleted") else body))


class Simulation:
    def __init__(self, test, seed):
        self.test = test
        self.rng = random.Random(seed)
        self.gateway = make_gateway()
        self.registry = self.gateway.registry
        self.rule = parse_rules(RULES)["notes"]
        self.revisions = HistoryRevisions(self.rng, compacted_share=0.2)
        self.router = self.new_router()
        self.conns = []
        for user in USERS:
            for _ in range(self.rng.choice((1, 1, 2))):
                self.conns.append(FakeConnection(self.gateway, user,
                                                 roles=self.random_roles()))
        self.docs = {}  # id -> current body (or tombstone)
        self.gen = {}  # id -> revision number
        # connection id -> doc ids it was ever sent (it could read them at some point)
        self.ever = {}
        # connection id -> doc ids whose last revision it was sent, not since told
        # otherwise (what completeness expects removed/deleted for)
        self.known = {}
        self.seq = 0
        self.checked = 0

    def new_router(self):
        return DatabaseRouter(self.rule, self.registry, self.revisions,
                              self.gateway.timestamp, index=ReadersIndex(max_entries=5))

    def random_roles(self):
        return tuple(r for r in ROLES if self.rng.random() < 0.25)

    def random_body(self, doc_id):
        rng = self.rng
        body = {"title": f"t{rng.randint(0, 999)}",
                "secret": SECRET_MARK + doc_id,
                "acl": {"token": SECRET_MARK + "acl", "readers": []}}
        if rng.random() < 0.8:
            body["owner"] = rng.choice(USERS)
        body["members"] = rng.sample(USERS, rng.randint(0, 3))
        if rng.random() < 0.3:
            body["acl"]["readers"] = rng.choice(USERS)
        if rng.random() < 0.3:
            body["roles"] = rng.sample(ROLES, rng.randint(1, 2))
        return body

    # -- steps ----------------------------------------------------------------------------

    def write(self, doc_id, deleted=False):
        previous_rev = None
        if doc_id in self.gen:
            previous_rev = f"{self.gen[doc_id]}-{doc_id}"
        self.gen[doc_id] = self.gen.get(doc_id, 0) + 1
        rev = f"{self.gen[doc_id]}-{doc_id}"
        self.seq += 1
        if deleted:
            body = {"_id": doc_id, "_rev": rev, "_deleted": True}
        else:
            body = {"_id": doc_id, "_rev": rev, **self.random_body(doc_id)}
        self.revisions.bodies[(doc_id, rev)] = body
        self.revisions.parent[(doc_id, rev)] = previous_rev
        self.docs[doc_id] = body
        row = {"seq": f"{self.seq}-g1AAA", "id": doc_id, "changes": [{"rev": rev}],
               "doc": body}
        if deleted:
            row["deleted"] = True
        before = {c.connection_id: set(self.ever.get(c.connection_id, ())) for c in self.conns}
        got_previous = {c.connection_id: doc_id in self.known.get(c.connection_id, ())
                        for c in self.conns}
        undecidable = self.router.stats.undecidable
        d = self.router.on_change(row)
        if d is not None:
            self.test.successResultOf(d)
        decidable = self.router.stats.undecidable == undecidable
        self.check(doc_id, body, before, got_previous, decidable)

    def change_roles(self):
        conn = self.rng.choice(self.conns)
        conn.identity = Identity(user_id=conn.user_id, name=conn.user_id,
                                 roles=self.random_roles())
        self.registry.reindex_roles(conn)
        # A role taken away: what the connection was sent through it, it may no longer
        # read; the client learns it from its user-change.  The oracle forgets it too.
        self.known[conn.connection_id] = {
            d for d in self.known.get(conn.connection_id, ())
            if may_read(self.rule.readers(self.docs[d]), conn.user_id, conn.roles)}
        # With the new roles it may read the current revisions they open: from now on it
        # "could read them at some point" (matching stored principals with current roles).
        for doc_id, body in self.docs.items():
            if may_read(self.rule.readers(body), conn.user_id, conn.roles):
                self.ever.setdefault(conn.connection_id, set()).add(doc_id)

    def subscribe(self):
        conn = self.rng.choice(self.conns)
        doc_id = self.rng.choice(DOCS)
        body = self.docs.get(doc_id)
        # As the subscribe handler does: allowed only when the user may read it now.
        if body is not None and may_read(self.rule.readers(body), conn.user_id, conn.roles):
            self.registry.subscribe(conn, doc_topic("notes", doc_id))
            self.known.setdefault(conn.connection_id, set()).add(doc_id)
            self.ever.setdefault(conn.connection_id, set()).add(doc_id)

    def restart(self):
        self.router = self.new_router()

    # -- the oracle -----------------------------------------------------------------------

    def check(self, doc_id, body, before, got_previous, decidable):
        readers = self.rule.readers(body)
        expected_doc = self.rule.sanitise(body)
        for conn in self.conns:
            cid = conn.connection_id
            messages, conn.received = conn.received, []
            may = may_read(readers, conn.user_id, conn.roles)
            kinds = []
            for message in messages:
                self.checked += 1
                text = repr(message)
                self.test.assertNotIn(SECRET_MARK, text, "a hidden field left the server")
                if message["type"] == "unsubscribed":
                    self.test.assertEqual(message["topic"], doc_topic("notes", doc_id))
                    kinds.append("unsubscribed")
                    continue
                self.test.assertEqual(message["type"], "doc-change")
                self.test.assertEqual(message["id"], doc_id)
                if "doc" in message:
                    self.test.assertTrue(may, f"{conn.user_id} got a doc it may not read")
                    self.test.assertEqual(message["doc"], expected_doc)
                    self.known.setdefault(cid, set()).add(doc_id)
                    self.ever.setdefault(cid, set()).add(doc_id)
                    kinds.append("doc")
                else:
                    self.test.assertIn(doc_id, before[cid],
                                       f"{conn.user_id} told of a doc it never read")
                    if message.get("removed"):
                        self.test.assertFalse(may, "removed sent to a reader")
                        kinds.append("removed")
                    else:
                        self.test.assertTrue(message.get("deleted"))
                        kinds.append("deleted")
                    self.known.get(cid, set()).discard(doc_id)
            if not kinds:
                # Not told (undecidable previous readers): its copy is stale from now on.
                self.known.get(cid, set()).discard(doc_id)
            # completeness
            if body.get("_deleted"):
                if decidable and got_previous[cid]:
                    self.test.assertEqual(kinds, ["deleted"], conn.user_id)
                continue
            if may:
                self.test.assertEqual(kinds, ["doc"], conn.user_id)
            elif got_previous[cid] and decidable:
                self.test.assertIn("removed", kinds, conn.user_id)
            self.test.assertLessEqual(len(kinds), 2)

    def run(self, steps):
        for _ in range(steps):
            roll = self.rng.random()
            doc_id = self.rng.choice(DOCS)
            if roll < 0.6:
                self.write(doc_id)
            elif roll < 0.7 and doc_id in self.docs and not self.docs[doc_id].get("_deleted"):
                self.write(doc_id, deleted=True)
            elif roll < 0.82:
                self.change_roles()
            elif roll < 0.97:
                self.subscribe()
            else:
                self.restart()


class LeakTests(unittest.TestCase):
    def test_random_histories(self):
        """Many seeded random histories: every message agrees with the oracle."""
        checked = 0
        for seed in range(12):
            simulation = Simulation(self, seed)
            simulation.run(400)
            checked += simulation.checked
        self.assertGreater(checked, 5000)
