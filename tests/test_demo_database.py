"""
The run command's demo application database: ``python -m realtime`` on the embedded
CouchDB (no REALTIME_CONFIG) seeds ``notes`` and its rule file; the demo user and the
second demo user each see their own notes and the shared ones, and nothing else.
"""

import os
import subprocess
import sys
import threading

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial import unittest

from realtime.dev import demo
from realtime.dev.embedded import REPO_ROOT, find_pouchdb_server, free_port, stop_process
from tests import harness
from tests.fakes import SECRET, make_token


class DemoDatabaseTests(unittest.TestCase):
    timeout = 120

    @inlineCallbacks
    def test_demo_users_see_their_notes(self):
        port = free_port()
        env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": REPO_ROOT,
               "HOME": os.environ.get("HOME", "/tmp"), "JWT_SECRET": SECRET,
               "REALTIME_LISTEN": f"tcp:{port}:interface=127.0.0.1",
               "POUCHDB_SERVER": find_pouchdb_server(), "PYTHONUNBUFFERED": "1"}
        process = subprocess.Popen([sys.executable, "-m", "realtime"], cwd=REPO_ROOT, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, text=True)
        self.addCleanup(stop_process, process)
        ready, lines = Deferred(), []

        def read():
            for line in process.stdout:
                lines.append(line)
                if line.startswith("realtime: ready") and not ready.called:
                    reactor.callFromThread(ready.callback, None)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        self.addCleanup(reader.join, 15)
        yield harness.with_timeout(ready, 90, "the run command to be ready")
        self.assertTrue(any(line.startswith("Demo application database 'notes'")
                            for line in lines), "".join(lines))
        expected = {"demo": {"welcome", "mine", "team"},
                    "demo2": {"welcome", "theirs", "team"}}
        for user, ids in expected.items():
            token = make_token(user, roles=["member"])
            client = yield harness.connect(port, query={"token": token})
            self.addCleanup(client.close)
            yield client.next("connected")
            client.send_json({"type": "subscribe", "topic": "db:notes", "snapshot": True})
            seen = set()
            while True:
                message = yield client.next()
                if message["type"] == "subscribed":
                    break
                if message["type"] == "doc-change":
                    seen.add(message["id"])
                    self.assertNotIn("draft", message["doc"])
            self.assertEqual(seen, ids, user)
            self.assertEqual(message["snapshot"], len(ids))
        self.assertEqual(demo.second_user("demo"), "demo2")
