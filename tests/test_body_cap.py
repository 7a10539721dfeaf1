"""
The site's body cap (:class:`realtime.http.site.CappedRequest`), driven byte by byte through a
real HTTPChannel over a StringTransport: oversized bodies are refused before they are
buffered.
"""

from __future__ import annotations

import json

from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from realtime.http.rest import make_api
from realtime.http.site import make_site
from realtime.transport.websocket import make_factory
from tests.fakes import ADMIN_KEY, FakeConnection, make_gateway

CAP = 1000


class BodyCapTests(unittest.TestCase):
    def setUp(self):
        self.gateway = make_gateway(rest_max_body_bytes=CAP)
        self.alice = FakeConnection(self.gateway, "alice")
        self.site = make_site(self.gateway, make_factory(self.gateway), make_api(self.gateway))
        self.transport = StringTransport()
        self.channel = self.site.buildProtocol(None)
        self.channel.makeConnection(self.transport)
        self.addCleanup(self.channel.connectionLost, None)

    def head(self, extra: bytes) -> bytes:
        return (b"POST /websocket/message/broadcast HTTP/1.1\r\nHost: x\r\n"
                b"Authorization: Bearer " + ADMIN_KEY.encode() + b"\r\n"
                b"Content-Type: application/json\r\n" + extra + b"\r\n")

    def test_declared_length_over_cap_refused_at_headers(self):
        """
        A Content-Length above the cap is answered 413 (JSON, Connection: close) as soon as
        the headers are in: no 100 Continue, nothing buffered, connection closing.
        """
        self.channel.dataReceived(self.head(b"Content-Length: 1000000000\r\n"
                                            b"Expect: 100-continue\r\n"))
        output = self.transport.value()
        self.assertTrue(output.startswith(b"HTTP/1.1 413 "), output)
        self.assertNotIn(b"100 Continue", output)
        self.assertIn(b"Connection: close", output)
        self.assertEqual(json.loads(output.split(b"\r\n\r\n", 1)[1])["error"], "too_large")
        self.assertTrue(self.transport.disconnecting)
        # Body bytes that still arrive are not answered a second time.
        self.channel.dataReceived(b"x" * 5000)
        self.assertEqual(self.transport.value(), output)
        self.assertEqual(self.alice.received, [])

    def test_chunked_body_over_cap_is_413_without_buffering(self):
        """A chunked body passing the cap is dropped, not buffered, and answered 413."""
        self.channel.dataReceived(self.head(b"Transfer-Encoding: chunked\r\n"))
        chunk = b'{"type":"chat","data":"' + b"x" * 600
        for _ in range(5):
            self.channel.dataReceived(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        request = self.channel.requests[-1]  # the site builds the HTTP/1.1 channel itself
        self.assertTrue(request.body_too_large)
        self.assertEqual(request.content.getvalue(), b"")
        self.channel.dataReceived(b"0\r\n\r\n")
        output = self.transport.value()
        self.assertTrue(output.startswith(b"HTTP/1.1 413 "), output)
        self.assertIn(b'"too_large"', output)
        self.assertEqual(self.alice.received, [])

    def test_body_within_cap_is_served(self):
        """A body within the cap is served normally."""
        body = json.dumps({"type": "chat", "data": "hi"}).encode()
        self.channel.dataReceived(self.head(b"Content-Length: %d\r\n" % len(body)) + body)
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 200 "),
                        self.transport.value())
        self.assertEqual([m["data"] for m in self.alice.received], ["hi"])
