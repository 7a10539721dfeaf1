"""
:class:`realtime.http.client.QuietPool`: requests through it reach the server as through
Twisted's pool, and log no ``Starting factory`` / ``Stopping factory`` line per connection
(which Twisted's own pool does: the control case, so the test cannot pass vacuously).
"""

from __future__ import annotations

import treq
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.logger import globalLogPublisher
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Site

from realtime.http.client import QuietPool


class Hello(Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"hello"


class QuietPoolTests(unittest.TestCase):
    def setUp(self):
        site = Site(Hello())
        site.noisy = False
        self.port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def factory_lines(self):
        return [e for e in self.events
                if "Starting factory" in str(e.get("log_format", ""))
                or "Stopping factory" in str(e.get("log_format", ""))]

    @inlineCallbacks
    def get_twice(self, pool):
        url = f"http://127.0.0.1:{self.port.getHost().port}/"
        client = treq.client.HTTPClient(Agent(reactor, pool=pool))
        for _ in range(2):
            response = yield client.get(url)
            body = yield response.content()
            self.assertEqual(body, b"hello")
        yield pool.closeCachedConnections()

    @inlineCallbacks
    def test_twisted_pool_logs_each_connection(self):
        yield self.get_twice(HTTPConnectionPool(reactor, persistent=False))
        self.assertTrue(self.factory_lines())

    @inlineCallbacks
    def test_quiet_pool_logs_none(self):
        yield self.get_twice(QuietPool(reactor, persistent=False))
        self.assertEqual(self.factory_lines(), [])

    @inlineCallbacks
    def test_quiet_persistent_pool_logs_none(self):
        yield self.get_twice(QuietPool(reactor, persistent=True))
        self.assertEqual(self.factory_lines(), [])
