"""The gateway's shared HTTP client (realtime.assembly.make_http_client)."""

from twisted.internet import endpoints, reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest
from twisted.web.resource import Resource
from twisted.web.server import Site

from realtime.assembly import make_http_client


class _SetsAndEchoes(Resource):
    isLeaf = True

    def render_GET(self, request):
        if request.path == b"/login":
            request.setHeader(b"Set-Cookie", b"AuthSession=c2VjcmV0; Path=/; HttpOnly")
            return b"{}"
        return request.getHeader(b"cookie") or b"none"


class NoCookieTests(unittest.TestCase):

    @inlineCallbacks
    def test_a_set_cookie_is_never_sent_back(self):
        """
        A user's AuthSession cookie in one answer (a _session login) is not kept: the
        gateway's next requests go out with its own credentials only.
        """
        site = Site(_SetsAndEchoes())
        port = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
        self.addCleanup(port.stopListening)
        http, pool = make_http_client(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        base = f"http://127.0.0.1:{port.getHost().port}"
        response = yield http.get(base + "/login")
        self.assertEqual(response.headers.getRawHeaders(b"set-cookie"),
                         [b"AuthSession=c2VjcmV0; Path=/; HttpOnly"])
        yield response.content()
        response = yield http.get(base + "/echo")
        self.assertEqual((yield response.content()), b"none")
