"""
TLS: the gateway serves wss:// on an ``ssl:`` endpoint, and outgoing HTTPS (CouchDB, a JWKS
URL) verifies the server's certificate and host name.
"""

import os
import tempfile

import treq.client
from twisted.internet import endpoints, reactor, ssl
from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Site

from realtime.auth.couchsession import CouchSessionChecker
from realtime.auth.identity import AuthFailure
from tests import harness
from tests.fakes import SECRET, make_token
from tests.harness import GatewayHarness, with_timeout
from tests.keys import self_signed_certificate


def write_pems(test):
    key_pem, cert_pem = self_signed_certificate("localhost")
    directory = tempfile.mkdtemp(prefix="realtime-tls-")
    key_path = os.path.join(directory, "key.pem")
    cert_path = os.path.join(directory, "cert.pem")
    with open(key_path, "wb") as f:
        f.write(key_pem)
    with open(cert_path, "wb") as f:
        f.write(cert_pem)
    test.addCleanup(lambda: [os.remove(key_path), os.remove(cert_path), os.rmdir(directory)])
    return key_path, cert_path, cert_pem


@inlineCallbacks
def connect_wss(port, cert_pem, query=None, hostname="localhost"):
    import urllib.parse
    path = "/ws" + ("?" + urllib.parse.urlencode(query) if query else "")
    factory = harness._ClientFactory(f"wss://{hostname}:{port}{path}")
    factory.setProtocolOptions(autoPingInterval=None, failByDrop=False,
                               openHandshakeTimeout=10, closeHandshakeTimeout=2)
    trust = ssl.Certificate.loadPEM(cert_pem) if cert_pem else None
    options = ssl.optionsForClientTLS(hostname, trustRoot=trust)
    endpoint = endpoints.wrapClientTLS(
        options, endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=10))
    proto = yield endpoint.connect(factory)
    client = yield with_timeout(proto.opened, 10, "the wss handshake")
    return client


class WSSTests(unittest.TestCase):
    timeout = 60

    @inlineCallbacks
    def setUp(self):
        key_path, cert_path, self.cert_pem = write_pems(self)
        listen = f"ssl:0:interface=127.0.0.1:privateKey={key_path}:certKey={cert_path}"
        self.gw = GatewayHarness(feeds=False, jwt_secret=SECRET, listen=(listen,))
        yield self.gw.start()
        self.addCleanup(self.gw.stop)

    @inlineCallbacks
    def test_wss_connect(self):
        """REALTIME_LISTEN=ssl:… serves wss://: a client trusting the certificate connects."""
        client = yield connect_wss(self.gw.port, self.cert_pem, {"token": make_token("alice")})
        self.gw.clients.append(client)
        message = yield client.next("connected")
        self.assertEqual(message["user"]["id"], "alice")

    @inlineCallbacks
    def test_untrusted_certificate_refused_by_client(self):
        """A client that does not trust the certificate fails the TLS handshake."""
        with self.assertRaises(Exception):
            client = yield connect_wss(self.gw.port, None, {"token": make_token("alice")})
            self.gw.clients.append(client)


class Hello(Resource):
    isLeaf = True

    def render_GET(self, request):
        return b'{"ok":true,"userCtx":{"name":"alice","roles":[]}}'


class OutgoingHTTPSTests(unittest.TestCase):
    """Outgoing HTTPS with treq over Twisted's default Agent (BrowserLikePolicyForHTTPS)."""

    timeout = 60

    @inlineCallbacks
    def setUp(self):
        key_path, cert_path, self.cert_pem = write_pems(self)
        endpoint = endpoints.serverFromString(
            reactor, f"ssl:0:interface=127.0.0.1:privateKey={key_path}:certKey={cert_path}")
        self.port = yield endpoint.listen(Site(Hello()))
        self.addCleanup(self.port.stopListening)
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(self.pool.closeCachedConnections)

    @inlineCallbacks
    def test_self_signed_couchdb_refused(self):
        """
        CouchDB over https with a certificate the platform does not trust: the session check
        fails (`unavailable`), it is never trusted.
        """
        http = treq.client.HTTPClient(Agent(reactor, pool=self.pool))
        checker = CouchSessionChecker(http, f"https://localhost:{self.port.getHost().port}",
                                      clock=reactor)
        with self.assertRaises(AuthFailure) as caught:
            yield checker.check("YWxpY2U6NjU0MzIxOmFiYw")
        self.assertEqual(caught.exception.reason, "unavailable")

    @inlineCallbacks
    def test_trusted_certificate_accepted(self):
        """The same server with its certificate trusted (custom policy): the check works."""
        from twisted.web.iweb import IPolicyForHTTPS
        from zope.interface import implementer

        @implementer(IPolicyForHTTPS)
        class Trust:
            def creatorForNetloc(inner, hostname, port):
                return ssl.optionsForClientTLS(hostname.decode(),
                                               trustRoot=ssl.Certificate.loadPEM(self.cert_pem))

        http = treq.client.HTTPClient(Agent(reactor, contextFactory=Trust(), pool=self.pool))
        checker = CouchSessionChecker(http, f"https://localhost:{self.port.getHost().port}",
                                      clock=reactor)
        identity = yield checker.check("YWxpY2U6NjU0MzIxOmFiYw")
        self.assertEqual(identity.user_id, "alice")

    @inlineCallbacks
    def test_host_name_verified(self):
        """A trusted certificate for another host name is refused (service-identity)."""
        options = ssl.optionsForClientTLS("other.example",
                                          trustRoot=ssl.Certificate.loadPEM(self.cert_pem))
        endpoint = endpoints.wrapClientTLS(options, endpoints.TCP4ClientEndpoint(
            reactor, "127.0.0.1", self.port.getHost().port, timeout=10))
        from twisted.internet.protocol import Factory, Protocol

        class Probe(Protocol):
            def connectionMade(self):
                self.transport.write(b"GET / HTTP/1.0\r\n\r\n")

            def dataReceived(self, data):
                self.factory.got.append(data)

            def connectionLost(self, reason):
                self.factory.done.callback(reason.value)

        from twisted.internet.defer import Deferred
        factory = Factory.forProtocol(Probe)
        factory.got, factory.done = [], Deferred()
        yield endpoint.connect(factory)
        reason = yield with_timeout(factory.done, 10, "the TLS connection to end")
        self.assertEqual(factory.got, [])
        from service_identity.exceptions import VerificationError
        self.assertIsInstance(reason, VerificationError)
