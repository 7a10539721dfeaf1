"""
Bad input found by the sweep against a running server: each test fails without its fix.
"""

import socket
import time

import jwt
import treq
from autobahn.websocket.compress import PerMessageDeflateOffer
from twisted.internet import threads
from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from realtime import jsonutil
from realtime.auth.identity import AuthFailure
from realtime.auth.jwt_verifier import JWTVerifier
from tests.fakes import ADMIN_KEY, SECRET, make_token
from tests.harness import GatewayHarness, unique


class JSONTests(unittest.TestCase):
    def test_refused_on_the_way_in(self):
        """What could not be encoded again is refused when parsed (ValueError)."""
        for text in ("1e400", "[-1e400]", '"\\ud800"', '{"\\udc00": 1}', "[" * 100000,
                     "NaN", "Infinity"):
            with self.assertRaises(ValueError, msg=text[:20]):
                jsonutil.loads(text)

    def test_valid_input_unchanged(self):
        """Surrogate pairs, big but finite numbers and escapes still parse."""
        self.assertEqual(jsonutil.loads('"\\ud83d\\ude00"'), "\U0001F600")
        self.assertEqual(jsonutil.loads("[1e308, -2.5e-300]"), [1e308, -2.5e-300])
        self.assertEqual(jsonutil.loads('{"a":"\\u00e9"}'), {"a": "é"})


class ExpRangeTests(unittest.TestCase):
    def test_exp_in_milliseconds_refused(self):
        """A token whose exp is in milliseconds (never expiring, not revocable) is refused."""
        token = jwt.encode({"sub": "a", "exp": int(time.time() * 1000)}, SECRET,
                           algorithm="HS256")
        with self.assertRaises(AuthFailure) as caught:
            JWTVerifier(SECRET, ["HS256"]).decode(token)
        self.assertEqual(caught.exception.reason, "auth-failed")


class ServerTests(unittest.TestCase):
    timeout = 60

    @inlineCallbacks
    def setUp(self):
        self.gw = GatewayHarness(feeds=False, jwt_secret=SECRET, admin_key=ADMIN_KEY)
        yield self.gw.start()
        self.addCleanup(self.gw.stop)

    @inlineCallbacks
    def test_client_offering_compression_connects(self):
        """A client offering permessage-deflate (every browser) connects; compression is off."""
        client = yield self.gw.connect(query={"token": make_token(unique("br"))},
                                       options={"perMessageCompressionOffers":
                                                [PerMessageDeflateOffer()]})
        yield client.next("connected")
        self.assertIsNone(client._perMessageCompress)

    @inlineCallbacks
    def test_endless_handshake_headers_are_cut(self):
        """A handshake whose headers never end is answered 431 and closed, memory bounded."""
        port = self.gw.port

        def endless():
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                # 36 KiB of headers that do not end: past the 32 KiB cap, and small enough
                # for the server to have read it all when it answers (no reset).
                s.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\n"
                          + b"X-Pad: " + b"a" * (36 * 1024) + b"\r\n")
                answer = b""
                try:
                    while True:
                        chunk = s.recv(4096)
                        if not chunk:
                            break
                        answer += chunk
                except OSError:
                    pass
                return answer

        answer = yield threads.deferToThread(endless)
        self.assertTrue(answer.startswith(b"HTTP/1.1 431"), answer[:80])

    @inlineCallbacks
    def test_out_of_range_and_surrogates_are_400_not_500(self):
        """REST bodies with 1e400, a lone surrogate or deep nesting are 400 invalid_json."""
        url = f"http://127.0.0.1:{self.gw.port}/websocket/publish"
        headers = {"Authorization": "Bearer " + ADMIN_KEY, "Content-Type": "application/json"}
        for body in (b'{"topic":"public:a","data":1e400}',
                     b'{"topic":"public:a","data":"\\ud800"}',
                     b'{"topic":"public:a","data":' + b"[" * 100000 + b"]" * 100000 + b"}"):
            response = yield treq.post(url, data=body, headers=headers, persistent=False)
            answer = yield response.json()
            self.assertEqual(response.code, 400, (body[:40], answer))

    @inlineCallbacks
    def test_websocket_out_of_range_is_invalid_json(self):
        """A client message with 1e400 or a lone surrogate gets invalid_json, not internal."""
        client = yield self.gw.connect(query={"token": make_token(unique("num"))})
        yield client.next("connected")
        for text in (b'{"type":"publish","topic":"public:n","data":1e400}',
                     b'{"type":"subscribe","topic":"public:\\ud800"}'):
            client.sendMessage(text)
            self.assertEqual((yield client.next("error"))["code"], "invalid_json")

    @inlineCallbacks
    def test_folders_are_404_and_head_works(self):
        """A folder of the API is 404 (not 405); HEAD on a GET endpoint answers 200."""
        base = f"http://127.0.0.1:{self.gw.port}"
        for path in ("/websocket/users", "/websocket/users/a", "/websocket", "/websocket/me"):
            response = yield treq.get(base + path, persistent=False)
            body = yield response.json()
            self.assertEqual((response.code, body["error"]), (404, "not_found"), path)
        response = yield treq.head(base + "/websocket/status", persistent=False)
        yield response.content()
        self.assertEqual(response.code, 200)
