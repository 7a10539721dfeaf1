"""
Resume of application databases end to end (realtime.feeds.replay.AppDatabaseReplay): a
real pouchdb-server, a real gateway, real clients.  A client goes away, 200 changes of
every kind happen, it comes back and resumes: it gets exactly the latest revision of each
document it may read, ``removed`` / ``deleted`` where due, nothing about documents it never
could read, ``recovered: true``, then live messages.  The same with writes going on
through the resume, and on a three-process Redis cluster, resuming on another process.
"""

import json
import os
import tempfile

import treq
from twisted.internet import task
from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from tests import harness
from tests.cluster_harness import Cluster
from tests.fakes import ADMIN_KEY, make_token
from tests.harness import unique, wait_for
from tests.test_e2e_databases import DatabaseCase


@inlineCallbacks
def replayed_until_resumed(client, ref=None, strict=True):
    """The messages before ``resumed`` (``strict``: each must be a replay), and resumed."""
    replayed = []
    while True:
        message = yield client.next()
        if message["type"] == "resumed":
            if ref is not None:
                assert message.get("ref") == ref, message
            return replayed, message
        assert not strict or message.get("replay") is True, message
        replayed.append(message)


def caught_up(case, gw, db):
    """Wait until the gateway's feed of ``db`` has processed every change made so far."""
    head = json.loads(case.couch.request("GET", "/" + db)[1])["update_seq"]
    follower = next(f for f in gw.followers if f.db == db)
    return wait_for(lambda: isinstance(follower.last_seq, int) and follower.last_seq >= head,
                    what="the feed to catch up")


class Scenario:
    """Documents before the client goes away, 200 changes while it is away, the oracle."""

    def __init__(self, case, user, other):
        self.case, self.user, self.other = case, user, other
        self.expected = {}  # id -> ("doc", rev) | ("removed", rev) | ("deleted", rev)

    def before(self):
        put, user, other = self.case.put, self.user, self.other
        self.mine = [unique("a") for _ in range(5)]
        for doc_id in self.mine:
            put(doc_id, owner=user, title="mine", secret="s")
        self.shared = [unique("b") for _ in range(3)]
        for doc_id in self.shared:
            put(doc_id, owner=other, members=[user, "zed"], title="shared")
        self.by_role = [unique("r") for _ in range(3)]
        for doc_id in self.by_role:
            put(doc_id, owner=other, roles=["team"], title="team")
        self.theirs = [unique("n") for _ in range(5)]
        for doc_id in self.theirs:
            put(doc_id, owner=other, title="not yours", secret="x")
        self.untouched = unique("u")
        put(self.untouched, owner=user, title="unchanged while away")

    def away(self):
        """Exactly 200 changes; fills ``expected``."""
        case, user, other = self.case, self.user, self.other
        count = 0

        def put(doc_id, **fields):
            nonlocal count
            count += 1
            return case.put(doc_id, **fields)

        for round_ in range(6):  # my documents change often: only the last revision counts
            for doc_id in self.mine[:4]:
                self.expected[doc_id] = ("doc", put(doc_id, owner=user, title=f"v{round_}",
                                                    secret="s"))
        put(self.mine[4], owner=user, title="about to go")
        case.delete(self.mine[4])
        count += 1
        self.expected[self.mine[4]] = ("deleted", None)  # its tombstone's rev: see below
        # taken away: members no longer name the user
        self.expected[self.shared[0]] = ("removed", put(self.shared[0], owner=other,
                                                        members=["zed"], title="gone"))
        self.expected[self.shared[1]] = ("doc", put(self.shared[1], owner=other,
                                                    members=[user], title="still"))
        # a role change of the document: the user's role no longer opens it.  Not told: a
        # replay cannot know the user held that role when the earlier revision was current
        # (realtime.feeds.replay_roles); nor is it counted (the count is public)
        put(self.by_role[0], owner=other, roles=["other-team"])
        self.expected[self.by_role[1]] = ("doc", put(self.by_role[1], owner=other,
                                                     roles=["team"], title="team v2"))
        # new ones: mine, given to me, and never mine
        for _ in range(3):
            doc_id = unique("c")
            self.expected[doc_id] = ("doc", put(doc_id, owner=user, title="new"))
        given = unique("e")
        put(given, owner=other)
        self.expected[given] = ("doc", put(given, owner=user, title="given"))
        created_and_gone = unique("f")  # readable for a while: the user may hear of it
        put(created_and_gone, owner=user)
        self.expected[created_and_gone] = ("removed", put(created_and_gone, owner=other))
        never = unique("d")
        put(never, owner=other)
        case.delete(never)
        count += 1
        # others' documents, many times: nothing of them may reach the user
        while count < 200:
            put(self.theirs[count % len(self.theirs)], owner=other, title=f"n{count}",
                secret="x")
        assert count == 200
        for doc_id, (kind, rev) in list(self.expected.items()):
            if kind == "deleted":
                status, body = case.couch.request(
                    "GET", f"/{case.db}/_changes?filter=_doc_ids&doc_ids="
                    + json.dumps([doc_id]))
                self.expected[doc_id] = ("deleted",
                                         json.loads(body)["results"][0]["changes"][0]["rev"])

    def check(self, replayed):
        case = self.case
        got = {}
        for message in replayed:
            case.assertEqual(message["type"], "doc-change", message)
            case.assertEqual(message["db"], case.db)
            case.assertNotIn(message["id"], got, f"{message['id']} replayed twice")
            if message.get("deleted"):
                kind = "deleted"
            elif message.get("removed"):
                kind = "removed"
            else:
                kind = "doc"
                case.assertNotIn("secret", message["doc"])
                case.assertEqual(message["doc"]["_id"], message["id"])
            got[message["id"]] = (kind, message["rev"])
        case.assertEqual(got, self.expected)


class DatabaseResume(DatabaseCase):
    TABLE = """
users  = ["owner", "members"]
roles  = ["roles"]
hidden = ["secret"]
"""

    @inlineCallbacks
    def away_and_back(self, scenario, gw=None, roles=("team",)):
        gw = gw or self.gw
        scenario.before()
        yield caught_up(self, gw, self.db)  # connected.seqs then stands after them
        client = yield gw.connect(query={"token": make_token(scenario.user, roles=list(roles))})
        connected = yield client.next("connected")
        since = connected["seqs"][self.db]
        yield client.close()
        scenario.away()
        yield caught_up(self, gw, self.db)  # (so that nothing of it arrives live)
        return since

    @inlineCallbacks
    def test_two_hundred_changes_resumed_exactly(self):
        """The latest revision of each readable document, removed/deleted where due,
        nothing of the others, recovered; then live."""
        user = unique("ann")
        scenario = Scenario(self, user, unique("bob"))
        since = yield self.away_and_back(scenario)
        client = yield self.gw.connect(query={"token": make_token(user, roles=["team"])})
        yield client.next("connected")
        client.send_json({"type": "resume", "since": {self.db: since}, "ref": "r"})
        replayed, resumed = yield replayed_until_resumed(client, "r")
        scenario.check(replayed)
        self.assertEqual(resumed["recovered"], {self.db: True})
        self.assertEqual(resumed["replayed"], {self.db: len(scenario.expected)})
        yield self.assertNothingBefore(client, user)

    @inlineCallbacks
    def test_compacted_earlier_revision_is_undecidable_and_counted(self):
        """
        A document the user could read, then not, whose readable revision CouchDB
        compacted away: nothing at all is sent of it (no leak), and the case is counted in
        /metrics (realtime_replay_undecidable_total); the replay is still recovered.
        """
        user, other = unique("ann"), unique("bob")
        doc_id, kept = unique("k"), unique("k")
        first = self.put(doc_id, owner=user, title="mine")
        self.put(kept, owner=user, title="mine too")
        yield caught_up(self, self.gw, self.db)
        client = yield self.gw.connect(query={"token": make_token(user)})
        since = (yield client.next("connected"))["seqs"][self.db]
        yield client.close()
        self.put(doc_id, owner=other, title="not yours now")
        self.put(doc_id, owner=other, title="still not")
        kept_rev = self.put(kept, owner=user, title="v2")
        status, body = self.couch.request("POST", f"/{self.db}/_compact", "{}")
        self.assertIn(status, (200, 202), body)
        yield wait_for(lambda: self.couch.request(
            "GET", f"/{self.db}/{doc_id}?rev={first}")[0] == 404, what="the compaction")
        yield caught_up(self, self.gw, self.db)
        client = yield self.gw.connect(query={"token": make_token(user)})
        yield client.next("connected")
        client.send_json({"type": "resume", "since": {self.db: since}})
        replayed, resumed = yield replayed_until_resumed(client)
        self.assertEqual([(m["id"], m["rev"]) for m in replayed], [(kept, kept_rev)])
        self.assertEqual(resumed["recovered"], {self.db: True})
        metrics = self.gw.gateway.metrics.render().decode()
        self.assertIn(f'realtime_replay_undecidable_total{{db="{self.db}"}} 1.0', metrics)
        self.assertIn(f'realtime_replays_total{{db="{self.db}",outcome="recovered"}} 1.0',
                      metrics)
        self.assertIn(f'realtime_replay_messages_total{{db="{self.db}"}} 1.0', metrics)
        self.assertIn("realtime_replays_running 0.0", metrics)

    @inlineCallbacks
    def test_writes_going_on_through_the_resume(self):
        """
        Writes continue while the client reconnects and resumes: every document's final
        revision arrives, and no revision twice or out of order (replay, then live).
        """
        user = unique("ann")
        docs = [unique("w") for _ in range(4)]
        revs = {doc_id: self.put(doc_id, owner=user, n=0) for doc_id in docs}
        client = yield self.gw.connect(query={"token": make_token(user)})
        connected = yield client.next("connected")
        since = connected["seqs"][self.db]
        yield client.close()
        counter = [0]

        def write():
            counter[0] += 1
            doc_id = docs[counter[0] % len(docs)]
            revs[doc_id] = self.put(doc_id, owner=user, n=counter[0])

        for _ in range(20):
            write()
        writer = task.LoopingCall(write)
        writer.start(0.01)
        client = yield self.gw.connect(query={"token": make_token(user)})
        yield client.next("connected")
        client.send_json({"type": "resume", "since": {self.db: since}})
        # (live changes may come before the resume is read: they count, in their order)
        replayed, resumed = yield replayed_until_resumed(client, strict=False)
        self.assertEqual(resumed["recovered"], {self.db: True})
        yield harness.sleep(0.3)  # the writes go on for a while after the switch to live
        writer.stop()
        final = dict(revs)
        seen = {doc_id: [] for doc_id in docs}
        # Live changes that came before the resume was read are outside the switch (the
        # replay gives what was asked since the seq, those included): only the replay and
        # what follows resumed must hold each revision once, in order.
        for message in replayed:
            if message.get("replay"):
                seen[message["id"]].append(message["rev"])
        while not all(seen[d] and seen[d][-1] == final[d] for d in docs):
            message = yield client.next("doc-change")
            self.assertNotIn("replay", message)
            seen[message["id"]].append(message["rev"])
        for doc_id, revisions in seen.items():
            generations = [int(r.split("-")[0]) for r in revisions]
            self.assertEqual(generations, sorted(set(generations)),
                             f"{doc_id}: a revision twice or out of order: {revisions}")

    @inlineCallbacks
    def test_live_feed_behind_the_replay_sends_nothing_twice(self):
        """
        The replay reads CouchDB itself, ahead of a live feed that is slow to route (here
        held for 0.3 s): the live copy of the replayed revision is left out, and what the
        live feed routes after it still arrives, after ``resumed``.
        """
        user = unique("ann")
        doc_id, later = unique("d"), unique("d")
        self.put(doc_id, owner=user, n=0)
        yield caught_up(self, self.gw, self.db)
        client = yield self.gw.connect(query={"token": make_token(user)})
        since = (yield client.next("connected"))["seqs"][self.db]
        yield client.close()
        follower = next(f for f in self.gw.followers if f.db == self.db)
        route = follower._on_change
        gate = []

        def slow(db, change):  # the live feed routes nothing until the gate opens
            d = harness.sleep(0.3) if not gate else None
            gate.append(change["id"])
            if d is None:
                return route(db, change)
            return d.addCallback(lambda _: route(db, change))

        follower._on_change = slow
        self.addCleanup(setattr, follower, "_on_change", route)
        rev = self.put(doc_id, owner=user, n=1)
        yield wait_for(lambda: doc_id in gate, what="the live feed to read the change")
        client = yield self.gw.connect(query={"token": make_token(user)})
        yield client.next("connected")
        client.send_json({"type": "resume", "since": {self.db: since}, "ref": "r"})
        replayed, resumed = yield replayed_until_resumed(client, "r")
        self.assertEqual([(m["id"], m["rev"]) for m in replayed], [(doc_id, rev)])
        self.assertEqual(resumed["recovered"], {self.db: True})
        later_rev = self.put(later, owner=user, n=2)
        message = yield client.next("doc-change")
        self.assertEqual((message["id"], message["rev"]), (later, later_rev))
        self.assertEqual([m for m in client.received if m.get("id") == doc_id],
                         replayed)

    @inlineCallbacks
    def test_disconnect_mid_replay_stops_the_read(self):
        """A client that leaves during its replay: the read stops at the next batch."""
        user = unique("ann")
        for i in range(60):
            self.put(unique("m"), owner=user, n=i)
        client = yield self.gw.connect(query={"token": make_token(user)})
        yield client.next("connected")
        replayer = self.gw.gateway.replayer
        replayer.batch_size = 5
        reads = []
        real_changes = replayer.reader.changes

        def counted(db, since, limit, **kwargs):
            reads.append(since)
            d = real_changes(db, since, limit, **kwargs)
            if len(reads) == 3:  # the client leaves while its third batch is read
                d.addBoth(lambda r: (client.transport.abortConnection(), r)[1])
            return d

        replayer.reader.changes = counted
        self.addCleanup(setattr, replayer.reader, "changes", real_changes)
        client.send_json({"type": "resume", "since": {self.db: 0}})
        yield client.wait_closed()
        yield wait_for(lambda: replayer.running == 0, what="the replay to end")
        self.assertLessEqual(len(reads), 4)  # 60 changes would take 13 batches


class TooFarBehindDatabase(DatabaseCase):

    @inlineCallbacks
    def test_too_far_behind_only_that_database(self):
        """One database too far behind: too_far_behind there; _users still replays."""
        gw = yield self.start_gateway(resume_max_changes=5)
        user = unique("ann")
        for i in range(8):
            self.put(unique("x"), owner=user)
        yield caught_up(self, gw, self.db)  # (so that none arrives live)
        client = yield gw.connect(query={"token": make_token(user)})
        connected = yield client.next("connected")
        client.send_json({"type": "resume", "since": {
            self.db: 0, "_users": connected["seqs"]["_users"]}})
        replayed, resumed = yield replayed_until_resumed(client)
        self.assertEqual(replayed, [])
        self.assertEqual(resumed["recovered"], {self.db: False, "_users": True})
        self.assertEqual(resumed["reason"], {self.db: "too_far_behind"})


class ClusterResume(unittest.TestCase):
    """Three gateway processes on one Redis: away from process 0, back on process 2."""

    timeout = 120

    @inlineCallbacks
    def test_resume_on_another_process(self):
        couch = harness.pouchdb()
        db = unique("shared").lower().replace("-", "_")
        self.assertEqual(couch.request("PUT", "/" + db)[0], 201)
        folder = tempfile.mkdtemp(prefix="realtime-resume-")
        rules = os.path.join(folder, "rules.toml")
        with open(rules, "w") as f:
            f.write(f'[databases.{db}]\nusers = ["owner"]\n')
        cluster = Cluster(size=3, redis_url=harness.redis().url,
                          REDIS_PREFIX=unique("rc") + ":", REALTIME_CONFIG=rules)
        yield cluster.start()
        self.addCleanup(cluster.stop)
        user = unique("ann")
        token = make_token(user)
        client = yield cluster.connect(0, query={"token": token})
        connected = yield client.next("connected")
        since = {db: connected["seqs"][db], "messages": connected["seqs"]["messages"]}
        yield client.close()
        revs = {}
        for i in range(5):
            doc_id = unique("doc")
            body = json.dumps({"owner": user, "n": i})
            status, answer = couch.request("PUT", f"/{db}/{doc_id}", body)
            revs[doc_id] = json.loads(answer)["rev"]
        couch.request("PUT", f"/{db}/{unique('other')}", json.dumps({"owner": "someone"}))
        offsets = []
        for index in (0, 1):  # stored through two processes while the user is away
            response = yield treq.post(
                f"http://127.0.0.1:{cluster.processes[index].port}/websocket/message/user",
                json={"userId": user, "type": "note", "data": index},
                headers={"Authorization": f"Bearer {ADMIN_KEY}"}, persistent=False)
            answer = yield response.json()
            self.assertEqual((response.code, answer.get("stored")), (404, True), answer)
            offsets.append(answer["offset"])
        head = json.loads(couch.request("GET", "/" + db)[1])["update_seq"]
        for _ in range(500):  # process 2's feed has seen them all (none will come live)
            response = yield treq.get(
                f"http://127.0.0.1:{cluster.processes[2].port}/websocket/status",
                persistent=False)
            status = yield response.json()
            if (status["couchdb"]["lastSeq"].get(db) or 0) >= head:
                break
            yield harness.sleep(0.02)
        client = yield cluster.connect(2, query={"token": token})
        yield client.next("connected")
        client.send_json({"type": "resume", "since": since})
        replayed, resumed = yield replayed_until_resumed(client)
        docs = {m["id"]: m["rev"] for m in replayed if m["type"] == "doc-change"}
        notes = [m["offset"] for m in replayed if m["type"] == "note"]
        self.assertEqual((docs, notes), (revs, offsets))
        self.assertEqual(resumed["recovered"], {db: True, "messages": True})


@inlineCallbacks
def process_caught_up(cluster, index, db, head):
    """Wait until process ``index``'s feed of ``db`` stands at ``head`` (its status)."""
    for _ in range(1000):
        response = yield treq.get(
            f"http://127.0.0.1:{cluster.processes[index].port}/websocket/status",
            persistent=False)
        status = yield response.json()
        if (status["couchdb"]["lastSeq"].get(db) or 0) >= head:
            return
        yield harness.sleep(0.02)
    raise AssertionError(f"process {index} did not catch up with {db}")


class ClusterScenarioResume(DatabaseCase):
    """The 200 changes of every kind, on a three-process Redis cluster: away from process
    0, back on process 2."""

    timeout = 180

    @inlineCallbacks
    def setUp(self):
        self.couch = harness.pouchdb()
        self.db = unique("cluster").lower().replace("-", "_")
        self.create_db(self.db)
        rules = os.path.join(tempfile.mkdtemp(prefix="realtime-resume-"), "rules.toml")
        with open(rules, "w") as f:
            f.write(f"[databases.{self.db}]\n{DatabaseResume.TABLE}")
        self.cluster = Cluster(size=3, redis_url=harness.redis().url,
                               REDIS_PREFIX=unique("rs") + ":", REALTIME_CONFIG=rules)
        yield self.cluster.start()
        self.addCleanup(self.cluster.stop)

    def head(self):
        return json.loads(self.couch.request("GET", "/" + self.db)[1])["update_seq"]

    @inlineCallbacks
    def test_two_hundred_changes_resumed_on_another_process(self):
        """Exactly the latest revision of each readable document, removed/deleted where
        due, nothing of the others, recovered: the same as on one process."""
        user = unique("ann")
        scenario = Scenario(self, user, unique("bob"))
        scenario.before()
        yield process_caught_up(self.cluster, 0, self.db, self.head())
        token = make_token(user, roles=["team"])
        client = yield self.cluster.connect(0, query={"token": token})
        since = (yield client.next("connected"))["seqs"][self.db]
        yield client.close()
        scenario.away()
        yield process_caught_up(self.cluster, 2, self.db, self.head())
        client = yield self.cluster.connect(2, query={"token": token})
        yield client.next("connected")
        client.send_json({"type": "resume", "since": {self.db: since}, "ref": "c"})
        replayed, resumed = yield replayed_until_resumed(client, "c")
        scenario.check(replayed)
        self.assertEqual(resumed["recovered"], {self.db: True})
        self.assertEqual(resumed["replayed"], {self.db: len(scenario.expected)})
        yield client.close()


class RolesLostWhileAway(DatabaseCase):
    """Roles and replays (realtime.feeds.replay_roles): a replay never judges an old
    revision by a role, the user's current ones or those their _users document gave
    before, whatever ``since`` the client names: nothing of what a role opened is told."""

    TABLE = 'users = ["owner"]\nroles = ["roles", "team.roles"]\n'

    @inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.name = unique("staffer")
        self.couch.create_user(self.name, unique("pw"), roles=["staff", "crew"])
        yield self.gw.wait_for_change("org.couchdb.user:" + self.name)
        self.kept, self.changed, self.nested = unique("k"), unique("c"), unique("n")
        self.both, self.mine, self.never = unique("b"), unique("m"), unique("z")
        self.put(self.kept, roles=["staff"], title="unchanged while away")
        self.put(self.changed, roles="staff", title="v1")
        self.put(self.nested, team=[{"roles": ["staff"]}], title="nested path")
        self.put(self.both, roles=["staff", "crew"], title="crew still opens it")
        self.put(self.mine, owner=self.name, roles=["staff"])
        self.put(self.never, roles=["zzz"])

    def set_roles(self, roles):
        status, body = self.couch.request("GET", "/_users/org.couchdb.user:" + self.name)
        doc = json.loads(body)
        doc["roles"] = roles
        status, body = self.couch.request("PUT", "/_users/org.couchdb.user:" + self.name,
                                          json.dumps(doc))
        self.assertIn(status, (201, 202), body)

    @inlineCallbacks
    def leave(self, roles):
        yield caught_up(self, self.gw, self.db)
        yield caught_up(self, self.gw, "_users")
        client = yield self.gw.connect(query={"token": make_token(self.name, roles=roles)})
        seqs = (yield client.next("connected"))["seqs"]
        yield client.close()
        return {self.db: seqs[self.db], "_users": seqs["_users"]}

    @inlineCallbacks
    def come_back(self, since, roles):
        yield caught_up(self, self.gw, self.db)
        yield caught_up(self, self.gw, "_users")
        client = yield self.gw.connect(query={"token": make_token(self.name, roles=roles)})
        yield client.next("connected")
        client.send_json({"type": "resume", "since": since, "ref": "r"})
        replayed, resumed = yield replayed_until_resumed(client, "r")
        self.assertEqual(resumed["recovered"], {key: True for key in since})
        return client, replayed

    @inlineCallbacks
    def test_documents_only_the_lost_role_opened_are_not_named(self):
        since = yield self.leave(["staff", "crew"])
        self.set_roles(["crew"])
        self.put(self.changed, roles="staff", title="v2")
        client, replayed = yield self.come_back(since, ["crew"])
        self.assertEqual([m["type"] for m in replayed], ["user-change"])
        for doc_id in (self.kept, self.changed, self.nested):
            self.assertNotIn(doc_id, json.dumps(client.received))

    @inlineCallbacks
    def test_an_old_users_seq_names_nothing_written_later(self):
        """The role went long ago; a document it opens is written later; the client names
        the oldest _users seq it can (0) with today's seq of the database: nothing."""
        self.set_roles([])
        secret = unique("s")
        since = yield self.leave([])
        self.put(secret, owner="alice", roles=["staff"], title="layoffs")
        self.put(secret, owner="alice", roles=["hr-only"], title="layoffs v2")
        client, replayed = yield self.come_back({"_users": 0, self.db: since[self.db]}, [])
        self.assertEqual([m["type"] for m in replayed], ["user-change"])
        self.assertNotIn(secret, json.dumps(client.received))

    @inlineCallbacks
    def test_a_role_gained_later_names_nothing_it_opened_before(self):
        """A document a role opened is restricted away from it; the user gets that role
        afterwards and resumes from 0: the document is not named."""
        secret = unique("s")
        self.put(secret, owner="alice", roles=["hr"], title="salaries")
        self.put(secret, owner="alice", roles=["hr-managers"], title="salaries")
        carol = unique("carol")
        yield caught_up(self, self.gw, self.db)
        before = self.gw.gateway.replayer.stats()[self.db]["undecidable"]
        client = yield self.gw.connect(query={"token": make_token(carol, roles=["hr"])})
        yield client.next("connected")
        client.send_json({"type": "resume", "since": {self.db: 0}, "ref": "r"})
        replayed, resumed = yield replayed_until_resumed(client, "r")
        self.assertNotIn(secret, json.dumps(client.received))
        self.assertEqual(resumed["recovered"], {self.db: True})
        # not counted either: /metrics is public, and bisecting since would count them
        self.assertEqual(self.gw.gateway.replayer.stats()[self.db]["undecidable"], before)

    @inlineCallbacks
    def test_a_role_lost_before_leaving_is_not_told_again(self):
        self.set_roles(["crew"])
        since = yield self.leave(["crew"])
        self.put(self.changed, roles="staff", title="v2")
        self.put(self.mine, owner=self.name, title="still mine")
        client, replayed = yield self.come_back(since, ["crew"])
        self.assertEqual([(m["type"], m["id"]) for m in replayed],
                         [("doc-change", self.mine)])
        self.assertNotIn("removed", replayed[0])

    @inlineCallbacks
    def test_a_document_written_after_the_role_went_is_never_named(self):
        """The role went before the client left; a document it opens was written after
        that (the user never could read it); the user's document changes again while the
        client is away: nothing of that role is told, that document least of all."""
        self.set_roles([])
        fresh = unique("f")
        self.put(fresh, roles=["staff"], title="never theirs")
        since = yield self.leave([])
        self.set_roles(["crew"])
        client, replayed = yield self.come_back(since, ["crew"])
        self.assertEqual([m["type"] for m in replayed], ["user-change"])
        self.assertNotIn(fresh, json.dumps(client.received))

    @inlineCallbacks
    def test_without_users_in_since_nothing_is_guessed(self):
        """No _users position either: nothing is sent of the documents a lost role
        opened."""
        since = yield self.leave(["staff", "crew"])
        self.set_roles(["crew"])
        client, replayed = yield self.come_back({self.db: since[self.db]}, ["crew"])
        self.assertEqual(replayed, [])
