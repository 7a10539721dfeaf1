"""
Application databases across three real gateway processes on one Redis (and the shared
pouchdb-server): every process follows the database itself, and each change reaches each
reader's connection exactly once, whichever process the connection is on; a removal too.
"""

import json
import os

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from tests import harness
from tests.cluster_harness import Cluster
from tests.fakes import make_token
from tests.harness import unique


class ClusterDatabaseTests(unittest.TestCase):
    timeout = 180

    @inlineCallbacks
    def test_each_change_to_each_reader_exactly_once(self):
        couch = harness.pouchdb()
        db = unique("cnotes").lower().replace("-", "_")
        status, body = couch.request("PUT", "/" + db)
        self.assertIn(status, (201, 412), body)
        rules = os.path.abspath(self.mktemp())
        with open(rules, "w") as f:
            f.write(f'[databases.{db}]\nusers = ["owner", "members"]\n')
        cluster = Cluster(3, REALTIME_CONFIG=rules, COUCHDB_HEARTBEAT_MS="1000")
        self.addCleanup(cluster.stop)
        yield cluster.start()
        for index in range(3):
            yield self.wait_feed(cluster, index, db)
        clients = {}
        for name, index, user in (("alice0", 0, "alice"), ("alice1", 1, "alice"),
                                  ("bob2", 2, "bob"), ("carol1", 1, "carol")):
            client = yield cluster.connect(index, query={"token": make_token(user)})
            yield client.next("connected")
            clients[name] = client

        def put(doc_id, **fields):
            status, body = couch.request("GET", f"/{db}/{doc_id}")
            doc = {"_id": doc_id, **fields}
            if status == 200:
                doc["_rev"] = json.loads(body)["_rev"]
            status, body = couch.request("PUT", f"/{db}/{doc_id}", json.dumps(doc))
            self.assertIn(status, (201, 202), body)

        doc_id = unique("note")
        put(doc_id, owner="alice", members=["bob"])
        put(doc_id, owner="alice", members=[])
        marker = unique("marker")
        for user in ("alice", "bob", "carol"):
            put(marker + user, owner=user)
        expected = {
            "alice0": [(doc_id, "doc"), (doc_id, "doc"), (marker + "alice", "doc")],
            "alice1": [(doc_id, "doc"), (doc_id, "doc"), (marker + "alice", "doc")],
            "bob2": [(doc_id, "doc"), (doc_id, "removed"), (marker + "bob", "doc")],
            "carol1": [(marker + "carol", "doc")],
        }
        for name, client in clients.items():
            got = []
            while len(got) < len(expected[name]):
                message = yield client.next("doc-change")
                got.append((message["id"], "removed" if message.get("removed") else "doc"))
            self.assertEqual(got, expected[name], name)

    @inlineCallbacks
    def wait_feed(self, cluster, index, db, seconds=60.0):
        """Until process ``index`` reports the database's feed connected (polled, bounded)."""
        deadline = reactor.seconds() + seconds
        while True:
            body = yield cluster.status(index)
            if body["couchdb"]["databases"].get(db, {}).get("state") == "connected":
                return
            if reactor.seconds() > deadline:
                raise AssertionError(f"process {index} does not follow {db}: {body}")
            yield harness.sleep(0.1)
