"""
Logs never contain a token, cookie, password or signature, whatever fails.
"""

import time

import treq
from twisted.internet.defer import inlineCallbacks
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from realtime.auth.signing import envelope, sign
from tests.fakes import ADMIN_KEY, SECRET, make_token
from tests.harness import GatewayHarness, unique


class LogSecretsTests(unittest.TestCase):
    timeout = 60

    @inlineCallbacks
    def setUp(self):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.gw = GatewayHarness(feeds=False, jwt_secret=SECRET, ws_signed_messages=True,
                                 cors_origins=("https://app.example",), admin_key=ADMIN_KEY)
        yield self.gw.start()
        self.addCleanup(self.gw.stop)

    def logged_text(self) -> str:
        parts = []
        for event in self.events:
            try:
                parts.append(formatEvent(event))
            except Exception:
                pass
            parts.append(repr(event))
            failure = event.get("log_failure")
            if failure is not None:
                parts.append(failure.getTraceback())
        return "\n".join(parts)

    @inlineCallbacks
    def test_auth_failures_log_no_secret(self):
        """
        Bad tokens (header, query, auth message, refresh), forged cookies, a wrong admin
        key and a bad signature are all logged, if at all, without the secret itself.
        """
        secrets = []

        wrong = make_token("alice", secret="not-the-secret-0123456789abcdef")
        secrets.append(wrong)
        client = yield self.gw.connect(headers={"Authorization": "Bearer " + wrong})
        yield client.next("auth_failed")

        expired = make_token("alice", lifetime=-3600)
        secrets.append(expired)
        client = yield self.gw.connect(query={"token": expired})
        yield client.next("auth_failed")

        cookie = "Zm9yZ2VkLWNvb2tpZS12YWx1ZS1zZWNyZXQ6MTIzNDU2OmFiY2RlZg"
        secrets.append(cookie)
        client = yield self.gw.connect(headers={"Cookie": "AuthSession=" + cookie})
        yield client.next("auth_failed")

        garbage = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0LWdhcmJhZ2UtcGF5bG9hZA.c2lnbmF0dXJl"
        secrets.append(garbage)
        client = yield self.gw.connect()
        yield client.next("connection_established")
        client.send_json({"type": "auth", "token": garbage})
        yield client.next("auth_failed")

        user = unique("user")
        good = make_token(user)
        secrets.append(good)
        client = yield self.gw.connect(query={"token": good})
        connected = yield client.next("connected")
        session_secret = connected["sessionSecret"]
        secrets.append(session_secret)
        now = int(time.time() * 1000)
        bad = envelope("wrong-secret", {"type": "ping"}, now, "n1")
        secrets.append(bad.split('"signature":"')[1].split('"')[0])
        client.sendMessage(bad.encode())
        yield client.next("error")
        refresh = envelope(session_secret, {"type": "auth", "token": expired}, now, "n2")
        secrets.append(sign(session_secret, '{"payload":{"type":"auth","token":"%s"},'
                                            '"timestamp":%d,"nonce":"n2"}' % (expired, now)))
        client.sendMessage(refresh.encode())
        yield client.next("auth_failed")

        admin_key = ADMIN_KEY
        wrong_key = "wrong-admin-key-secret-987654"
        secrets.append(wrong_key)
        response = yield treq.post(
            f"http://127.0.0.1:{self.gw.port}/websocket/tokens/revoke?token={good}",
            json={"token": good}, persistent=False,
            headers={"Authorization": "Bearer " + wrong_key})
        yield response.content()
        self.assertEqual(response.code, 401)
        response = yield treq.post(
            f"http://127.0.0.1:{self.gw.port}/websocket/tokens/revoke",
            json={"token": good}, persistent=False,
            headers={"Authorization": "Bearer " + admin_key})
        yield response.content()
        self.assertEqual(response.code, 200)
        secrets.append(admin_key)

        text = self.logged_text()
        self.assertTrue(self.events, "something was logged")
        for secret in secrets:
            self.assertNotIn(secret, text)
            # Not even a recognisable part of it.
            self.assertNotIn(secret[-24:], text)
