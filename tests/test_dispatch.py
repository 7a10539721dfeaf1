"""
The change dispatch (realtime.feeds.dispatch.ChangeDispatch), on a Clock with the one fake
connection: a _users change reaches its user only and carries the user's roles to every
live connection of that user; an application database's change is its databases' to route.
"""

from twisted.internet.task import Clock
from twisted.trial import unittest

from realtime.feeds.dispatch import ChangeDispatch
from realtime.hub.registry import Registry
from tests.fakes import FakeConnection


def users_change(name, seq, roles=None, deleted=False):
    doc_id = "org.couchdb.user:" + name
    if deleted:
        return {"id": doc_id, "seq": seq, "deleted": True,
                "doc": {"_id": doc_id, "_rev": "2-b", "_deleted": True}}
    doc = {"_id": doc_id, "_rev": "1-a", "name": name, "password_sha": "x"}
    if roles is not None:
        doc["roles"] = roles
    return {"id": doc_id, "seq": seq, "doc": doc}


class RecordingDatabases:
    """Application databases that record what they are asked."""

    def __init__(self, names):
        self.names = set(names)
        self.changes = []
        self.roles = []
        self.since = []  # (held the old roles since, holds the new ones since)

    def __contains__(self, db):
        return db in self.names

    def on_change(self, db, change):
        self.changes.append((db, change["id"]))
        return "routed by the databases"

    def roles_changed(self, conn, old_roles, old_since=None):
        self.roles.append((conn.user_id, tuple(old_roles), tuple(conn.roles)))
        self.since.append((old_since, conn.roles_since))


class UsersChangeTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.registry = Registry()
        self.databases = RecordingDatabases(["notes"])
        self.dispatch = ChangeDispatch(self.registry, self.clock, self.databases)
        self.alice = [FakeConnection(None, "alice", roles=("reader",)) for _ in range(2)]
        self.bob = FakeConnection(None, "bob")
        for conn in self.alice + [self.bob]:
            self.registry.add(conn)

    def test_users_change_reaches_its_user_only_sanitised(self):
        """The user's own connections get user-change (no password field); nobody else."""
        delivered = self.dispatch.on_change("_users", users_change("alice", 7, ["reader"]))
        self.assertEqual(delivered, 2)
        for conn in self.alice:
            [message] = conn.received
            self.assertEqual((message["type"], message["seq"]), ("user-change", 7))
            self.assertNotIn("password_sha", message["doc"])
        self.assertEqual(self.bob.received, [])

    def test_roles_follow_the_users_document(self):
        """New roles replace the connections' roles, the registry's role index follows,
        and the application databases are told (with the roles held before, and since
        when); the connections hold the new ones from now."""
        opened = [conn.roles_since for conn in self.alice]
        self.clock.advance(3)
        self.dispatch.on_change("_users", users_change("alice", 8, ["writer", 5]))
        for conn in self.alice:
            self.assertEqual(conn.roles, ("writer",))
        self.assertEqual(sorted(c.connection_id for c in self.registry.connections_with_role(
            "writer")), sorted(c.connection_id for c in self.alice))
        self.assertEqual(self.registry.connections_with_role("reader"), [])
        self.assertEqual(self.databases.roles, [("alice", ("reader",), ("writer",))] * 2)
        self.assertEqual(sorted(self.databases.since),
                         sorted((t, self.clock.seconds()) for t in opened))

    def test_unchanged_roles_change_nothing(self):
        """The same roles again: nobody is re-indexed, the databases are not told."""
        self.dispatch.on_change("_users", users_change("alice", 9, ["reader"]))
        self.assertEqual(self.databases.roles, [])

    def test_deleted_users_document_takes_every_role(self):
        """A deleted _users document: the user's connections hold no role any more."""
        self.dispatch.on_change("_users", users_change("alice", 10, deleted=True))
        for conn in self.alice:
            self.assertEqual(conn.roles, ())
            self.assertTrue(conn.received[0]["deleted"])

    def test_application_database_change_is_the_databases(self):
        """A change of a database of the rule file goes to its databases, whose answer
        (a Deferred, when the previous readers are read) is returned to the feed."""
        result = self.dispatch.on_change("notes", {"id": "n1", "seq": 1})
        self.assertEqual(result, "routed by the databases")
        self.assertEqual(self.databases.changes, [("notes", "n1")])
        self.assertEqual([c.received for c in self.alice + [self.bob]], [[], [], []])
