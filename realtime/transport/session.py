"""
One client's session, whatever carries it: authentication and admission, the limits on
what the client sends, its topics and the handling of each message type.

A :class:`Session` knows nothing of WebSocket: its transport (:class:`ISessionTransport`:
the Autobahn adapter :mod:`realtime.transport.websocket` today; SSE or long-poll would be
another thin adapter) hands it the handshake's outcome (:meth:`Session.opened`), each
client message as bytes (:meth:`Session.received`) and the end (:meth:`Session.closed`),
and writes the frames the session gives it.  The registry, topics, resume and the REST API
see the session: it is what they call a connection (``connection_id``, ``identity``,
``topics``, ``deliver_frame``, ``close_with``, ``fail_auth``...).  ``deliver_frame`` is the
transport's own method (no extra call on the write path).

Authentication (credentials: :mod:`realtime.auth.authenticator`; the steps:
:mod:`realtime.transport.session_auth`): credentials from the
handshake are accepted or refused as soon as the connection opens.  Without any, the client
is told ``connection_established`` and must send ``auth`` within ``WS_AUTH_TIMEOUT_MS``
(else ``auth_failed`` ``timeout``, 4001); before that it may send ``auth`` and ``ping``
only (anything else: ``error`` ``not_authenticated`` and 4001), at most
:data:`PREAUTH_MAX_TOTAL_BYTES` in all (more: 4008).  An accepted identity is admitted by
the gateway (per-user limit and single session across processes: 4029, 4004); messages
that arrive while admission waits for Redis are held (a few) and handled once admitted.
A later ``auth`` with a fresh token for the same user refreshes the identity.

Every client message and ping counts against the rate limit
(:mod:`realtime.transport.ratelimit`: ``error`` ``rate_limited``; repeatedly: 4008).  With
``WS_SIGNED_MESSAGES`` each message after ``connected`` is an envelope checked by the
gateway's verifier (:mod:`realtime.auth.signing`), handled in arrival order.

Message types, once authenticated: each is handled by a ``handle_<type>`` method
(``doc.create`` -> ``handle_doc_create``); the logic of topics is in
:mod:`realtime.hub.topics`, of resume in :mod:`realtime.hub.resume`, of document writes in
:mod:`realtime.transport.doc_writes`.
"""

from __future__ import annotations

from typing import Optional

from twisted.internet.defer import succeed
from twisted.logger import Logger
from zope.interface import Attribute, Interface

from realtime import jsonutil
from realtime.auth.expiry import SessionWatch  # the type of a session's watch
from realtime.auth.identity import AuthFailure, Identity
from realtime.auth.signing import SignatureError
from realtime.hub import resume, topics
from realtime.hub.registry import frame_text
from realtime.transport import ratelimit
from realtime.transport.doc_writes import DocWrites
from realtime.transport.session_auth import SessionAuthentication
from realtime.vocabulary import (
    CLOSE_POLICY,
    CLOSE_UNAUTHORIZED,
    request_ref,
    with_ref,
)

#: all an unauthenticated client may send before authenticating; past it, close 4008
PREAUTH_MAX_TOTAL_BYTES = 32 * 1024

#: client messages held while a connection's admission waits for Redis
MAX_HELD_MESSAGES = 16


class ISessionTransport(Interface):
    """What a session needs of the transport that carries it."""

    still_open = Attribute("True while messages can be sent")

    def deliver_frame(frame, direct=False):
        """
        Write one message, already framed for this transport; True when written or queued.
        ``direct`` (answers, replays) bypasses the hold of a running resume.
        """

    def close_with(code, reason):
        """Close the connection with a close code of docs/protocol.rst."""

    def limit_before_auth():
        """Lower the largest accepted message while the client is not authenticated."""

    def lift_auth_limits():
        """Authenticated: the configured message size limits apply again."""

    def cork():
        """Admission waits: keep what is due until uncork (written together then)."""

    def uncork():
        """Admission answered: write what the cork kept."""

    def begin_hold():
        """Hold live frames (a replay runs); returns the hold."""

    def end_hold():
        """One replay ended; after the last, send the held frames it did not give."""


class Session(SessionAuthentication):
    """One client's state and message handling (see the module docstring)."""

    _log = Logger()

    __slots__ = (
        "transport", "gateway", "authenticator", "registry", "_verifier", "_writer",
        "deliver_frame", "connection_id", "identity", "_topics",
        "_auth_timer", "_authenticating", "_registered", "_limiter", "_watch",
        "_session_secret", "_inbox", "_preauth_bytes", "_admitting", "_held", "_present_as",
        "session_seq", "admitted_at", "roles_since", "_doc_writes", "resuming", "selections",
    )

    def __init__(self, transport: ISessionTransport, gateway, connection_id: str,
                 authenticator, registry, verifier=None, writer=None):
        """
        :param gateway: the hub (:class:`realtime.hub.gateway.Gateway`): admission, the
            clock and timers, the config's limits, metrics, topics and resume.
        :param authenticator: verifies ``auth`` tokens and watches the credentials
            (:class:`realtime.auth.authenticator.Authenticator`).
        :param registry: this process's connections, which the session joins once admitted.
        :param verifier: checks signed messages (``WS_SIGNED_MESSAGES``), or None.
        :param writer: document writes (:class:`realtime.databases.writer.DocumentWriter`),
            or None when there are none.
        """
        self.transport = transport
        self.gateway = gateway
        self.authenticator = authenticator
        self.registry = registry
        self._verifier = verifier
        self._writer = writer
        self.deliver_frame = transport.deliver_frame  # the write path, without a hop
        self.connection_id = connection_id
        self.identity: Optional[Identity] = None
        self._topics: Optional[set] = None  # made on first use: see topics
        self._auth_timer = None
        self._authenticating = False
        self._registered = False
        self._limiter = None
        self._watch: Optional[SessionWatch] = None
        self._session_secret: Optional[str] = None
        self._inbox = None  # a Deferred chaining signed messages, handled in arrival order
        self._preauth_bytes = 0
        self._admitting = False
        self._held: tuple = ()  # client messages received while admission was pending
        self._present_as: Optional[str] = None  # user id recorded in presence
        self.session_seq = 0  # single-session mode: this session's number
        self.admitted_at = 0.0  # when admitted (gateway clock): see Registry.dispatch
        self.roles_since = 0.0  # since when it holds its roles (see databases.routing)
        self._doc_writes: Optional[DocWrites] = None  # made on the first document write
        self.resuming = False  # a resume is running (one at a time)
        self.selections = None  # db -> Selection of a db: subscription with a selector

    # -- what the registry, topics and resume read ---------------------------------------

    @property
    def topics(self) -> set:
        """The topics this connection subscribes to (a set of its own from first use)."""
        topics = self._topics
        if topics is None:
            topics = self._topics = set()
        return topics

    @property
    def user_id(self) -> Optional[str]:
        return self.identity.user_id if self.identity is not None else None

    @property
    def roles(self) -> tuple:
        return self.identity.roles if self.identity is not None else ()

    @property
    def token_id(self) -> Optional[str]:
        return self.identity.token_id if self.identity is not None else None

    @property
    def still_open(self) -> bool:
        return self.transport.still_open

    def close_with(self, code: int, reason: str) -> None:
        self.transport.close_with(code, reason)

    def begin_hold(self) -> "resume.Hold":
        return self.transport.begin_hold()

    def end_hold(self) -> None:
        self.transport.end_hold()

    # -- from the transport --------------------------------------------------------------

    def opened(self, outcome, revocation_pending: bool = False) -> None:
        """
        The connection is open; ``outcome`` is what the handshake's credentials gave: an
        Identity, an AuthFailure, or None (no credentials: wait for ``auth``).
        ``revocation_pending``: the handshake left the identity's revocation to admission
        (``Gateway.revocation_at_admission``, read once by ``onConnect``).
        """
        if isinstance(outcome, Identity):
            self._accept(outcome, revocation_pending)
        elif isinstance(outcome, AuthFailure):
            self._refuse(outcome)
        else:
            self.transport.limit_before_auth()
            self.send_json({"type": "connection_established",
                            "message": "Please authenticate to continue"})
            self._auth_timer = self.gateway.timers.callLater(
                self.gateway.config.ws_auth_timeout_ms / 1000.0, self._auth_timed_out)

    def received(self, payload: bytes, is_binary: bool) -> None:
        """One client message (the transport has checked that the connection is open)."""
        if self.identity is None:
            self._preauth_bytes += len(payload)
            if self._preauth_bytes > PREAUTH_MAX_TOTAL_BYTES:
                self.send_error("policy", "too much data before authentication")
                self.close_with(CLOSE_POLICY, "too much data before authentication")
                return
        if self.within_rate_limit():
            self._on_message(payload, is_binary)

    def closed(self) -> None:
        """The connection is gone: forget it everywhere."""
        if self._auth_timer is not None and self._auth_timer.active():
            self._auth_timer.cancel()
        self._auth_timer = None
        if self._watch is not None:
            self._watch.stop()
        if self._registered:
            self._registered = False
            self.registry.remove(self)
        if self._present_as is not None:
            user_id, self._present_as = self._present_as, None
            self.gateway.connection_left(self, user_id)

    def within_rate_limit(self, tell: bool = True) -> bool:
        """Count one message (or ping) against the rate limit; False when refused."""
        limiter = self._limiter
        if limiter is None:  # made at the first message: an idle connection holds none
            config = self.gateway.config
            limiter = self._limiter = ratelimit.MessageLimiter(
                config.ws_rate_limit_max_messages, config.ws_rate_limit_window_ms / 1000.0,
                self.gateway.clock)
        verdict, wait = limiter.check()
        if verdict == ratelimit.ALLOW:
            return True
        if tell or verdict == ratelimit.CLOSE:
            self.send_json({"type": "error", "code": "rate_limited",
                            "message": "too many messages; slow down",
                            "retryAfterMs": int(wait * 1000) + 1})
        if verdict == ratelimit.CLOSE:
            self.close_with(CLOSE_POLICY, "rate limit exceeded repeatedly")
        return False

    # -- messages -----------------------------------------------------------------------

    def _on_message(self, payload: bytes, is_binary: bool) -> None:
        if is_binary:
            self.send_error("bad_request", "binary messages are not supported")
            return
        if self.identity is not None and self._session_secret is not None:
            self._on_signed(payload)
            return
        try:
            message = jsonutil.loads(payload)
        except (ValueError, RecursionError):
            self.send_error("invalid_json", "the message is not JSON")
            return
        self._handle(message)

    def _handle(self, message) -> None:
        if not isinstance(message, dict):
            self.send_error("bad_request", "a message must be a JSON object")
            return
        kind = message.get("type")
        if not isinstance(kind, str):
            self.send_error("bad_request", "a message needs a string type",
                            request_ref(message))
            return
        self.gateway.metrics.received(kind)
        if kind == "auth":
            self.handle_auth(message)
            return
        if kind == "ping":
            self.handle_ping(message)
            return
        ref = request_ref(message)
        if self.identity is None and self._admitting:
            # Authenticated, admission pending (presence in Redis): hold a few messages.
            # Not with signed messages (they could not have been signed yet: the secret
            # comes with `connected`), and not past the few: refused, the connection stays.
            if not self.gateway.config.ws_signed_messages and len(self._held) < MAX_HELD_MESSAGES:
                self._held += (message,)
            else:
                self.send_error("not_ready", "wait for `connected` before sending this", ref)
            return
        if self.identity is None:
            self.send_error("not_authenticated", "authenticate first", ref)
            self.close_with(CLOSE_UNAUTHORIZED, "not authenticated")
            return
        handler_name = _HANDLERS.get(kind)
        if handler_name is None:
            self.send_error("unknown_type", f"unknown message type {kind[:64]!r}", ref)
            return
        getattr(self, handler_name)(message)

    def _on_signed(self, payload: bytes) -> None:
        """Verify an envelope, then handle its payload (in arrival order)."""
        secret = self._session_secret
        text = payload.decode("utf-8")  # the transport has validated the UTF-8

        def verify(_):
            return self._verifier.verify(secret, text)

        def refused(failure):
            if failure.check(SignatureError):
                self.send_error(failure.value.code, failure.value.message)
            else:
                self._log.failure("verifying a signed message failed", failure)
                self.send_error("internal", "the server failed to handle that message")

        def handle(message):
            if self.transport.still_open:
                self._handle(message)

        def failed(failure):
            self._log.failure("handling a signed message failed", failure)
            self.send_error("internal", "the server failed to handle that message")

        if self._inbox is None:
            self._inbox = succeed(None)
        d = self._inbox.addCallback(verify)
        d.addCallbacks(handle, refused)
        d.addErrback(failed)

    # -- sending ------------------------------------------------------------------------

    def send_json(self, message: dict) -> bool:
        sent = self.deliver_frame(frame_text(jsonutil.dumps(message)), True)
        if sent:
            self.gateway.metrics.sent(message.get("type"))
        return sent

    def send_error(self, code: str, text: str, ref: Optional[str] = None) -> bool:
        self.gateway.metrics.error(code)
        message = {"type": "error", "code": code, "message": text}
        if ref is not None:
            message["ref"] = ref
        return self.send_json(message)

    # -- message types ------------------------------------------------------------------

    def handle_ping(self, message: dict) -> None:
        self.send_json(with_ref({"type": "pong", "timestamp": self.gateway.timestamp()},
                                request_ref(message)))

    def handle_subscribe(self, message: dict) -> None:
        topics.handle_subscribe(self, message)

    def handle_unsubscribe(self, message: dict) -> None:
        topics.handle_unsubscribe(self, message)

    def handle_publish(self, message: dict) -> None:
        topics.handle_publish(self, message)

    def handle_resume(self, message: dict) -> None:
        resume.handle_resume(self, message)

    def handle_doc_write(self, message: dict) -> None:
        """``doc.create``, ``doc.update`` and ``doc.delete``."""
        if self._doc_writes is None:
            self._doc_writes = DocWrites(self._writer, self.send_json,
                                         self.gateway.metrics.error)
        self._doc_writes.handle(self.user_id, self.roles, message)

    handle_doc_create = handle_doc_update = handle_doc_delete = handle_doc_write


#: message type -> name of the method handling it once the client is authenticated
_HANDLERS = {
    kind: "handle_" + kind.replace(".", "_").replace("-", "_")
    for kind in ("subscribe", "unsubscribe", "publish", "resume",
                 "doc.create", "doc.update", "doc.delete")
}
