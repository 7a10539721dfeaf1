"""
End to end under faults: the CouchDB feed cut by a proxy while documents change, and
CouchDB unreachable during a cookie check.
"""

import json

from twisted.internet import endpoints, reactor
from twisted.internet.defer import inlineCallbacks
from twisted.protocols import portforward
from twisted.trial import unittest

from tests import harness
from tests.fakes import SECRET, make_token
from tests.harness import GatewayHarness, unique
from tests.test_e2e_users import next_user_change


class _CuttableServer(portforward.ProxyServer):
    def connectionMade(self):
        if self.factory.blocked:
            self.transport.abortConnection()
            return
        self.factory.live.add(self)
        super().connectionMade()

    def connectionLost(self, reason):
        self.factory.live.discard(self)
        super().connectionLost(reason)


class CuttableProxy(portforward.ProxyFactory):
    """A TCP proxy to CouchDB whose connections a test can cut and block."""

    protocol = _CuttableServer
    noisy = False

    def __init__(self, host, port):
        super().__init__(host, port)
        self.live = set()
        self.blocked = False

    def cut(self):
        """Abort every proxied connection, and refuse new ones until unblocked."""
        self.blocked = True
        for server in list(self.live):
            server.transport.abortConnection()
            if server.peer is not None and server.peer.transport is not None:
                server.peer.transport.abortConnection()


class _Target:
    def __init__(self, url, admin_auth):
        self.url = url
        self.admin_auth = admin_auth


class FeedCutTests(unittest.TestCase):
    timeout = 90

    @inlineCallbacks
    def test_feed_cut_while_documents_change(self):
        """
        The feed is cut, users' documents change while it is down, then the feed comes back:
        every changed user gets their latest document, and nobody gets another's.
        """
        couch = harness.pouchdb()
        proxy = CuttableProxy("127.0.0.1", couch.port)
        listening = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(proxy)
        self.addCleanup(listening.stopListening)
        target = _Target(f"http://127.0.0.1:{listening.getHost().port}", couch.admin_auth)
        gw = GatewayHarness(couchdb=target, jwt_secret=SECRET)
        yield gw.start()
        self.addCleanup(gw.stop)

        names = [unique("cut") for _ in range(3)]
        clients = {}
        for name in names:
            couch.create_user(name, "pw")
            clients[name] = yield gw.connect(query={"token": make_token(name)})
            yield clients[name].next("connected")

        follower = gw.followers[0]
        reconnects = follower.reconnects
        proxy.cut()
        yield harness.wait_for(lambda: follower.state != "connected", what="the feed to notice")

        latest = {}
        for name in names:
            for round_ in range(2):  # two updates each: only the latest matters
                status, body = couch.request("GET", "/_users/org.couchdb.user:" + name)
                doc = json.loads(body)
                doc["round"] = round_
                status, body = couch.request("PUT", "/_users/org.couchdb.user:" + name,
                                             json.dumps(doc))
                self.assertIn(status, (201, 202))
                latest[name] = json.loads(body)["rev"]

        proxy.blocked = False
        for name in names:
            message = yield next_user_change(
                clients[name], lambda m, name=name: m.get("doc", {}).get("_rev") == latest[name])
            self.assertEqual(message["doc"]["round"], 1)
        self.assertGreater(follower.reconnects, reconnects)
        for name, client in clients.items():
            ids = {m["id"] for m in client.received if m["type"] == "user-change"}
            self.assertEqual(ids, {"org.couchdb.user:" + name})


class QuietFeedCutTests(unittest.TestCase):
    timeout = 90

    @inlineCallbacks
    def test_quiet_feed_cut_loses_nothing(self):
        """
        A feed that has seen no change yet is cut; a user's document changes while it is
        down; when the feed is back the user gets the change (no fallback to "now").
        """
        couch = harness.pouchdb()
        name = unique("quiet")
        couch.create_user(name, "pw")
        proxy = CuttableProxy("127.0.0.1", couch.port)
        listening = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(proxy)
        self.addCleanup(listening.stopListening)
        target = _Target(f"http://127.0.0.1:{listening.getHost().port}", couch.admin_auth)
        gw = GatewayHarness(couchdb=target, jwt_secret=SECRET)
        yield gw.start()  # the user's creation is older than the feed's start
        self.addCleanup(gw.stop)
        client = yield gw.connect(query={"token": make_token(name)})
        yield client.next("connected")
        follower = gw.followers[0]
        proxy.cut()
        yield harness.wait_for(lambda: follower.state != "connected", what="the feed to notice")
        status, body = couch.request("GET", "/_users/org.couchdb.user:" + name)
        doc = json.loads(body)
        doc["changedWhileCut"] = True
        status, body = couch.request("PUT", "/_users/org.couchdb.user:" + name, json.dumps(doc))
        self.assertIn(status, (201, 202))
        proxy.blocked = False
        message = yield next_user_change(client, lambda m: m.get("doc", {}).get("changedWhileCut"))
        self.assertEqual(message["id"], "org.couchdb.user:" + name)


class CouchUnavailableTests(unittest.TestCase):
    timeout = 60

    @inlineCallbacks
    def test_cookie_check_with_couchdb_down_closes_4101(self):
        """CouchDB unreachable during a cookie check: auth_failed unavailable, close 4101."""
        dead = _Target(f"http://127.0.0.1:{harness.free_port()}", "YWRtaW46cHc=")
        gw = GatewayHarness(couchdb=dead, feeds=False)
        yield gw.start()
        self.addCleanup(gw.stop)
        client = yield gw.connect(headers={"Cookie": "AuthSession=YWxpY2U6MTIzNDphYmNk"})
        message = yield client.next("auth_failed")
        self.assertEqual(message["reason"], "unavailable")
        code, _ = yield client.wait_closed()
        self.assertEqual(code, 4101)


class BacklogRolesTests(unittest.TestCase):
    timeout = 90

    @inlineCallbacks
    def test_role_gained_while_the_feed_was_cut(self):
        """
        While an application database's feed is cut, a note the ``staff`` role opened is
        changed to exclude it, another is deleted, and a user is given ``staff`` (a
        refreshed token).  When the feed is back, that user hears of neither note; a user
        who held ``staff`` all along is told of both.
        """
        from realtime.databases.rulefile import parse_rules
        couch = harness.pouchdb()
        db = unique("backlog").lower().replace("-", "_")
        status, body = couch.request("PUT", "/" + db)
        self.assertIn(status, (201, 412), body)
        rules = parse_rules(f'[databases.{db}]\nusers = ["owner"]\nroles = ["roles"]\n',
                            "test.toml")

        def put(doc_id, **fields):
            status, body = couch.request("GET", f"/{db}/{doc_id}")
            doc = {"_id": doc_id, **fields}
            if status == 200:
                doc["_rev"] = json.loads(body)["_rev"]
            status, body = couch.request("PUT", f"/{db}/{doc_id}", json.dumps(doc))
            self.assertIn(status, (201, 202), body)
            return json.loads(body)["rev"]

        # Both notes exist before the gateway starts: after the cut, their previous
        # revisions are read back from CouchDB (the readers index never saw them).
        put("kept", roles=["staff"])
        put("gone", roles=["staff"])
        proxy = CuttableProxy("127.0.0.1", couch.port)
        listening = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(proxy)
        self.addCleanup(listening.stopListening)
        target = _Target(f"http://127.0.0.1:{listening.getHost().port}", couch.admin_auth)
        gw = GatewayHarness(couchdb=target, jwt_secret=SECRET, config=rules)
        yield gw.start()
        self.addCleanup(gw.stop)
        olga = yield gw.connect(query={"token": make_token("olga", roles=["staff"])})
        yield olga.next("connected")
        gus = yield gw.connect(query={"token": make_token("gus")})
        yield gus.next("connected")

        follower = [f for f in gw.followers if f.db == db][0]
        # The feed is known caught up at its last byte (a heartbeat a second): olga's
        # role counts for what follows it.
        since = gw.gateway.registry.connections_of("olga")[0].roles_since
        yield harness.wait_for(lambda: (follower.last_byte_at or 0) > since,
                               what="a heartbeat after olga's admission")
        proxy.cut()
        yield harness.wait_for(lambda: follower.state != "connected", what="the feed to notice")
        put("kept", owner="nobody")
        status, body = couch.request("GET", f"/{db}/gone")
        status, body = couch.request("DELETE", f"/{db}/gone?rev={json.loads(body)['_rev']}")
        self.assertIn(status, (200, 202), body)
        put("marker", owner="gus")  # last in the feed: gus's end of the backlog
        gus.send_json({"type": "auth", "token": make_token("gus", roles=["staff"])})
        refreshed = yield gus.next("connected")
        self.assertEqual(refreshed["user"]["roles"], ["staff"])
        proxy.blocked = False

        message = yield gus.next("doc-change")
        self.assertEqual(message["id"], "marker", f"gus heard of {message} first")
        told = []
        while len(told) < 2:
            message = yield olga.next("doc-change")
            told.append((message["id"], "deleted" if message.get("deleted") else
                         "removed" if message.get("removed") else "doc"))
        self.assertEqual(sorted(told), [("gone", "deleted"), ("kept", "removed")])
