"""
Admission of authenticated connections (Gateway.admit): the per-user limit and single-session
mode, with the one-process objects (MemoryBroker, LocalPresence) and a clock.
"""

from twisted.trial import unittest

from realtime.auth.identity import Identity
from realtime.hub.gateway import ADMITTED, REPLACED, TOO_MANY_CONNECTIONS
from realtime.hub.registry import Registry
from tests.fakes import SECRET, DownBroker, FakeConnection, make_gateway, make_token


class AdmissionTests(unittest.TestCase):
    def admit(self, gateway, user):
        conn = FakeConnection(None, user)
        verdict = self.successResultOf(gateway.admit(conn, Identity(user, user)))
        if verdict == ADMITTED:
            gateway.registry.add(conn)
        return conn, verdict

    def test_limit(self):
        """The connection past ws_max_connections_per_user is refused, and not counted."""
        gateway = make_gateway(ws_max_connections_per_user=2)
        self.assertEqual(self.admit(gateway, "u")[1], ADMITTED)
        first = self.admit(gateway, "u")
        self.assertEqual(first[1], ADMITTED)
        self.assertEqual(self.admit(gateway, "u")[1], TOO_MANY_CONNECTIONS)
        self.assertEqual(self.successResultOf(gateway.presence.connection_count("u")), 2)
        gateway.connection_left(first[0], "u")
        self.assertEqual(self.admit(gateway, "u")[1], ADMITTED)

    def test_single_session_replaces_older(self):
        """Single-session: a new connection closes the user's older ones (4004), not others."""
        gateway = make_gateway(ws_single_session=True)
        old, _ = self.admit(gateway, "u")
        other, _ = self.admit(gateway, "v")
        new, verdict = self.admit(gateway, "u")
        self.assertEqual(verdict, ADMITTED)
        self.assertEqual(old.closed, (4004, "replaced by a newer session"))
        self.assertIsNone(new.closed)
        self.assertIsNone(other.closed)
        self.assertGreater(new.session_seq, old.session_seq)

    def test_single_session_late_admission_is_replaced(self):
        """
        A connection whose admission finishes after a newer session was announced (a race
        across processes) is told REPLACED and leaves presence.
        """
        gateway = make_gateway(ws_single_session=True)
        slow = FakeConnection(None, "u")
        # The newer session (number 10**18) was announced by another process.
        gateway.registry.dispatch({"t": "disconnect", "user": "u", "code": 4004,
                                   "reason": "replaced", "before": 10 ** 18})
        verdict = self.successResultOf(gateway.admit(slow, Identity("u", "u")))
        self.assertEqual(verdict, REPLACED)
        self.assertEqual(self.successResultOf(gateway.presence.connection_count("u")), 0)

    def test_single_session_without_broker_still_replaces_locally(self):
        """When the broker cannot publish (Redis away), local older sessions are replaced."""
        gateway = make_gateway(broker=DownBroker(), ws_single_session=True)
        old, _ = self.admit(gateway, "u")
        new, verdict = self.admit(gateway, "u")
        self.assertEqual(verdict, ADMITTED)
        self.assertEqual(old.closed[0], 4004)
        self.assertIsNone(new.closed)
        self.flushLoggedErrors()


class RegistryBeforeTests(unittest.TestCase):
    def test_disconnect_before_closes_only_older_sessions(self):
        """A disconnect event with `before` closes the user's sessions numbered below it."""
        registry = Registry()
        old, new, other = FakeConnection(None, "u"), FakeConnection(None, "u"), FakeConnection(None, "v")
        old.session_seq, new.session_seq, other.session_seq = 5, 9, 1
        for conn in (old, new, other):
            registry.add(conn)
        closed = registry.dispatch({"t": "disconnect", "user": "u", "code": 4004,
                                    "reason": "replaced", "before": 9})
        self.assertEqual(closed, 1)
        self.assertEqual(old.closed, (4004, "replaced"))
        self.assertIsNone(new.closed)
        self.assertIsNone(other.closed)
        self.assertTrue(registry.replaced("u", 8))
        self.assertFalse(registry.replaced("u", 9))
        self.assertFalse(registry.replaced("v", 0))

    def test_remembered_replacements_are_bounded(self):
        """The memory of announced sessions is bounded (oldest users forgotten first)."""
        registry = Registry()
        registry.max_replaced_remembered = 3
        for n in range(5):
            registry.dispatch({"t": "disconnect", "user": f"u{n}", "before": 10})
        self.assertFalse(registry.replaced("u0", 1))
        self.assertTrue(registry.replaced("u4", 1))


class HeldMessagesTests(unittest.TestCase):
    """A real gateway whose admission waits (as it does on Redis)."""

    timeout = 60

    def setUp(self):
        from tests.harness import GatewayHarness
        self.gw = GatewayHarness(jwt_secret=SECRET,
                                 feeds=False)
        self.addCleanup(self.gw.stop)
        return self.gw.start()

    def test_messages_sent_before_admission_are_handled_after_it(self):
        """
        A client that sends requests before admission completes is not closed: its
        messages are held and answered, in order, once it is admitted.
        """
        from twisted.internet.defer import Deferred, inlineCallbacks

        from tests.harness import wait_for

        gateway = self.gw.gateway
        waiting = []
        real_opened = gateway.presence.connection_opened_now

        def delayed(conn_id, user_id, limit=None):
            d = Deferred()
            waiting.append(lambda: d.callback(real_opened(conn_id, user_id, limit)))
            return d

        gateway.presence.connection_opened = delayed
        gateway.presence.connection_opened_now = None  # a presence that must be asked (Redis)
        token = make_token("held", lifetime=60)

        @inlineCallbacks
        def run():
            client = yield self.gw.connect(query={"token": token})
            yield wait_for(lambda: waiting, what="admission to start")
            client.send_json({"type": "frobnicate"})
            client.send_json({"type": "ping"})
            pong = yield client.next("pong")  # ping is answered at once
            self.assertIn("timestamp", pong)
            waiting.pop()()
            yield client.next("connected")
            error = yield client.next("error")
            self.assertEqual(error["code"], "unknown_type")
            self.assertEqual(client.state, client.STATE_OPEN)

        return run()

    def test_connected_leaves_in_the_send_of_the_101(self):
        """
        An admission that waits for Redis a moment (answered a few ms later) does not split
        the handshake's answer: the 101 is kept (corked) until ``connected`` joins it, and
        the two leave in one write (Outbox.cork).
        """
        from twisted.internet import reactor
        from twisted.internet.defer import Deferred, inlineCallbacks

        from realtime.transport import fastpath

        gateway = self.gw.gateway
        real_opened = gateway.presence.connection_opened_now

        def soon(conn_id, user_id, limit=None):
            d = Deferred()
            reactor.callLater(0.005, lambda: d.callback(real_opened(conn_id, user_id, limit)))
            return d

        gateway.presence.connection_opened = soon
        gateway.presence.connection_opened_now = None  # a presence that must be asked (Redis)
        writes = []
        real_write = fastpath.write_now

        def counted(transport, data):
            writes.append(bytes(data))
            return real_write(transport, data)

        self.patch(fastpath, "write_now", counted)

        @inlineCallbacks
        def run():
            client = yield self.gw.connect(query={"token": make_token("corked", lifetime=60)})
            yield client.next("connected")
            answers = [w for w in writes if w.startswith(b"HTTP/1.1 101 ")]
            self.assertEqual(len(answers), 1, writes)
            self.assertIn(b'"type":"connected"', answers[0])
            self.assertEqual(self.gw.factory.corks._count, 0)  # nothing left waiting

        return run()
