"""
In-memory stand-ins for deterministic tests: a gateway on a Clock with the memory broker,
and connections that record the frames they are given.
"""

from __future__ import annotations

import time

import jwt
from twisted.internet.task import Clock

from realtime import config as config_module
from realtime import jsonutil
from realtime.auth.authenticator import Authenticator, JWTVerifier
from realtime.auth.identity import Identity
from realtime.hub.broker import MemoryBroker
from realtime.hub.gateway import Gateway
from realtime.hub.registry import Registry

SECRET = "test-secret-for-unit-tests-only-0123456789"
ADMIN_KEY = "admin-key-for-tests-0123456789"


def make_token(sub, secret=SECRET, **claims):
    claims = {"sub": sub, "exp": int(time.time()) + 600, **claims}
    return jwt.encode(claims, secret, algorithm="HS256")


def make_gateway(session_checker=None, allowed_origins=(), roles_claim="roles", broker=None,
                 registry=None, **overrides):
    config = config_module.defaults(**{"admin_key": ADMIN_KEY, "jwt_secret": SECRET,
                                       "jwt_roles_claim": roles_claim, **overrides})
    clock = Clock()
    clock.advance(1_700_000_000)
    registry = registry if registry is not None else Registry()
    verifier = JWTVerifier(SECRET, ["HS256"], roles_claim=roles_claim)
    authenticator = Authenticator(jwt_verifier=verifier, session_checker=session_checker,
                                  allowed_origins=allowed_origins)
    return Gateway(config, clock, registry, broker or MemoryBroker(registry), authenticator)


def _unframe(frame: bytes) -> bytes:
    """The payload of an unmasked server text frame."""
    length = frame[1] & 0x7F
    if length == 126:
        return frame[4:]
    if length == 127:
        return frame[10:]
    return frame[2:]


class FakeConnection:
    """A registered connection that keeps what it is sent, decoded."""

    def __init__(self, gateway, user_id, topics=(), roles=(), connection_id=None):
        self.gateway = gateway
        self.identity = Identity(user_id=user_id, name=user_id, roles=tuple(roles),
                                 topics=tuple(topics))
        self.connection_id = connection_id or gateway.new_connection_id()
        self.topics = set()
        self.received = []
        self.closed = None
        # As a real connection's admission does: presence, then the registry.
        gateway.presence.connection_opened(self.connection_id, user_id, None)
        gateway.registry.add(self)

    @property
    def user_id(self):
        return self.identity.user_id

    @property
    def roles(self):
        return self.identity.roles

    def deliver_frame(self, frame: bytes) -> bool:
        if self.closed is not None:
            return False
        self.received.append(jsonutil.loads(_unframe(frame)))
        return True

    def send_json(self, message: dict) -> bool:
        if self.closed is not None:
            return False
        self.received.append(jsonutil.loads(jsonutil.dumps(message)))
        return True

    def close_with(self, code: int, reason: str) -> None:
        self.closed = (code, reason)
        # As a real connection's onClose does: leave the registry and presence.
        self.gateway.registry.remove(self)
        self.gateway.presence.connection_closed(self.connection_id, self.user_id)

    def of_type(self, kind):
        return [m for m in self.received if m.get("type") == kind]
