"""
Clients that stop reading, against a real gateway on loopback (the probe's checks,
bounded): one whose outgoing queue overflows gets the 4100 close frame once it reads
again (not a reset it would answer by reconnecting at once); a shutdown with such clients
ends within its timeout, fires once, and leaves no connection open.
"""

from twisted.internet import defer, reactor
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from realtime import jsonutil
from realtime.vocabulary import CLOSE_SHUTDOWN, CLOSE_TOO_SLOW
from tests import harness
from tests.fakes import SECRET, make_token
from tests.harness import GatewayHarness


def flood(gateway, messages=400, size=64 * 1024):
    """Send ``messages`` big messages to every authenticated connection."""
    text = jsonutil.dumps_text({"type": "bulk", "data": "x" * size})
    for _ in range(messages):
        gateway.registry.dispatch({"t": "all", "type": "bulk", "msg": text})


class SlowConsumerTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def start(self, **overrides):
        self.gw = GatewayHarness(feeds=False, jwt_secret=SECRET, **overrides)
        yield self.gw.start()
        self.addCleanup(self.gw.stop)
        self.errors = []
        observer = self.errors.append
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    @defer.inlineCallbacks
    def stalled_client(self):
        client = yield self.gw.connect(query={"token": make_token("alice")})
        yield client.next("connected")
        client.transport.pauseProducing()  # stops reading: the socket buffers fill up
        return client

    @defer.inlineCallbacks
    def test_overflowing_client_sees_4100(self):
        """
        A client that stops reading until its queue overflows, then reads again within
        the drain time, receives the close frame 4100 (back off), not a dropped connection.
        """
        yield self.start(ws_max_queue_bytes=256 * 1024)
        client = yield self.stalled_client()
        flood(self.gw.gateway)  # overflows within the call: closed 4100, frames dropped
        client.transport.resumeProducing()
        code, _ = yield client.wait_closed(10)
        self.assertEqual(code, CLOSE_TOO_SLOW)

    @defer.inlineCallbacks
    def test_shutdown_with_clients_that_do_not_read(self):
        """
        close_all with clients that do not read: fires once at its timeout, aborts them
        (nothing left open) and logs no error (it used to fire its Deferred twice).
        """
        yield self.start(ws_max_queue_bytes=64 * 1024 * 1024)
        clients = []
        for _ in range(3):
            client = yield self.stalled_client()
            clients.append(client)
        flood(self.gw.gateway, messages=200)
        gateway = self.gw.gateway
        yield harness.with_timeout(gateway.close_all(CLOSE_SHUTDOWN, "shutting down", 1.0),
                                   10, "close_all")
        yield harness.wait_for(lambda: gateway.open_connections == 0,
                               what="every connection gone")
        for client in clients:
            client.transport.resumeProducing()
            yield client.wait_closed(10)
        # Autobahn's batched close-handshake timer outlives the aborted connections (it
        # fires harmlessly within closeHandshakeTimeout): let it go, for a clean reactor.
        yield harness.wait_for(
            lambda: not any("_notify_bucket" in repr(c) for c in reactor.getDelayedCalls()),
            what="Autobahn's batched timers to fire")
        critical = [e for e in self.errors if e.get("log_failure") is not None
                    or str(e.get("log_level")) in ("LogLevel.critical", "LogLevel.error")]
        self.assertEqual(critical, [])
