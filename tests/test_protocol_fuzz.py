"""
Any client message, well-formed or not, gets an answer or is dropped, and never raises in
the protocol (Autobahn would swallow it): the protocol driven in memory (StringTransport,
Clock), with hypothesis-generated JSON.
"""

import time

from autobahn.websocket.types import ConnectionRequest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from realtime import jsonutil
from realtime.auth.signing import envelope
from realtime.transport.websocket import make_factory
from tests.fakes import make_gateway, make_token

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4), max_leaves=16)

messages = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"type": st.sampled_from(["ping", "auth", "subscribe", "unsubscribe", "publish",
                                  "resume", "connected", "x"])},
        optional={"token": json_values, "topic": json_values, "data": json_values}),
)


def open_protocol(test, signed=False, authenticated=True, **overrides):
    clock = Clock()
    clock.advance(time.time())
    gateway = make_gateway(clock=clock, ws_signed_messages=signed,
                           ws_rate_limit_max_messages=100000, **overrides)
    factory = make_factory(gateway)
    factory.setProtocolOptions(openHandshakeTimeout=0, autoPingInterval=0,
                               closeHandshakeTimeout=0)
    proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    transport = StringTransport()
    proto.makeConnection(transport)
    transport.registerProducer(proto, True)  # as Autobahn's resource would have
    # The handshake's request as Autobahn hands it to onConnect: with a token in the query
    # (authenticated) or no credentials at all.
    params = {}
    if authenticated:
        params = {"token": [make_token("alice", exp=int(clock.seconds()) + 600, jti="x")]}
    request = ConnectionRequest("tcp:127.0.0.1:1", {"host": "x"}, "x", "/ws", params, 13, "",
                                [], [])
    proto.onConnect(request)
    proto.state = proto.STATE_OPEN
    proto.websocket_version = 13
    proto.onOpen()
    if authenticated:
        assert proto.session.identity is not None
    return clock, proto, transport


class ProtocolFuzzTests(unittest.TestCase):
    def setUp(self):
        self.failures = []

        def observe(event):
            if event.get("log_failure") is not None:
                self.failures.append(event["log_failure"])

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    @settings(max_examples=300, deadline=None)
    @given(messages)
    def test_any_json_message(self, message):
        """Any JSON message after auth: answered or dropped, no exception logged."""
        clock, proto, transport = open_protocol(self)
        proto.onMessage(jsonutil.dumps(message), False)
        self.assertEqual(self.failures, [])
        proto.onClose(False, 1006, "")
        self.assertEqual(clock.getDelayedCalls(), [])

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=200))
    def test_any_bytes(self, payload):
        """Arbitrary bytes as a text message: an error answer, no exception logged."""
        clock, proto, transport = open_protocol(self)
        proto.onMessage(payload, False)
        self.assertEqual(self.failures, [])
        self.assertIn(b'"type":"error"', transport.value())
        proto.onClose(False, 1006, "")

    @settings(max_examples=200, deadline=None)
    @given(messages)
    def test_any_message_before_auth(self, message):
        """Before auth: only auth/ping are handled; nothing raises."""
        clock, proto, transport = open_protocol(self, authenticated=False)
        proto.onMessage(jsonutil.dumps(message), False)
        self.assertEqual(self.failures, [])
        self.assertIsNone(proto.session.identity)  # no generated token is valid
        proto.onClose(False, 1006, "")

    @settings(max_examples=200, deadline=None)
    @given(messages, st.text(min_size=1, max_size=16))
    def test_any_signed_message(self, message, nonce):
        """With signed messages on: any correctly signed payload is handled without error."""
        clock, proto, transport = open_protocol(self, signed=True)
        secret = proto.session._session_secret
        text = envelope(secret, message, int(clock.seconds() * 1000), nonce)
        proto.onMessage(text.encode(), False)
        self.assertEqual(self.failures, [])
        self.assertNotIn(b"bad_signature", transport.value())
        proto.onClose(False, 1006, "")

    def test_unsigned_message_refused_when_signing_is_on(self):
        """Signed mode: a plain message gets bad_signature and is not handled."""
        clock, proto, transport = open_protocol(self, signed=True)
        transport.clear()
        proto.onMessage(b'{"type":"ping"}', False)
        self.assertIn(b"bad_signature", transport.value())
        self.assertNotIn(b"pong", transport.value())
        proto.onClose(False, 1006, "")

    def test_valid_token_auth_message(self):
        """An auth message with a valid token authenticates the in-memory connection."""
        clock, proto, transport = open_protocol(self, authenticated=False)
        proto.onMessage(jsonutil.dumps({"type": "auth", "token": make_token("bob")}), False)
        self.assertEqual(proto.session.user_id, "bob")
        proto.onClose(False, 1006, "")
