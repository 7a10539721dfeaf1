"""
The WebSocket endpoint ``/ws``: a thin Autobahn adapter over the gateway.

Wire protocol (v1; the contract is docs/protocol.rst).  Every message is a JSON object with a
``type``, both ways; timestamps are ISO 8601 UTC strings.

Connecting:
  credentials are taken from the handshake (see :mod:`realtime.auth.authenticator`).  Success:
  ``{"type":"connected","user":{"id","name","roles"},"connectionId","timestamp"}``.
  Failure: ``{"type":"auth_failed","reason":…}`` then close 4001 (4101 when CouchDB or
  Redis could not answer).  No credentials: ``{"type":"connection_established",
  "message":"Please authenticate to continue"}``; the client then sends
  ``{"type":"auth","token":JWT}`` within the auth timeout, or is closed 4001 (reason
  ``timeout``).  Before it is authenticated a client may send ``auth`` and ``ping`` only;
  anything else gets ``error`` ``not_authenticated`` and close 4001.

Client -> server: ``auth``, ``ping``, ``subscribe``, ``unsubscribe``, ``publish`` (topics:
see :mod:`realtime.hub.topics` for names, permissions and answers); ``doc.create``,
``doc.update``, ``doc.delete`` (document writes, answered ``doc.created`` /
``doc.updated`` / ``doc.deleted`` or ``error`` with the request's ``ref``: see
:mod:`realtime.transport.doc_writes` and :mod:`realtime.databases.writer`).
Server -> client: ``connected``, ``user-change``, ``ping`` (every heartbeat interval, to
every connection), ``pong`` (answer to ``ping``), ``error`` ``{code, message}`` for a
refused request (the connection stays open), plus what the REST API and topics send.

Limits (see :mod:`realtime.transport.ratelimit`): every client message and every WebSocket ping
counts against the per-connection rate limit (``error`` ``rate_limited`` with
``retryAfterMs``; a client that keeps going is closed 4008).  Before authentication a
message may be at most 8 KiB (``PREAUTH_MAX_MESSAGE_BYTES``; larger: close 1009, the same
reaction as any message over ``WS_MAX_MESSAGE_BYTES``), and all its messages together at
most 32 KiB (``PREAUTH_MAX_TOTAL_BYTES``; more: close 4008).  A message of more than
``MAX_FRAGMENTS`` frames closes 4008.  JWT expiry and cookie revalidation on live
connections: :mod:`realtime.auth.expiry`; signed messages: :mod:`realtime.auth.signing`; a revoked
token's connections are told ``auth_failed`` ``revoked`` (4001) through the broker.

Delivery: a message bound for many connections is framed once (:mod:`realtime.hub.registry`)
and written to each as bytes.  On a plain TCP transport, the frames due to one connection in
one reactor turn are written together at the end of the turn, straight to the socket when
Twisted holds nothing for it (:mod:`realtime.transport.fastpath`); Autobahn's own writes (pings,
close) flush them first, so order is kept.  Every connection registers a push producer on
its transport: when Twisted's write buffer fills, frames wait in a bounded per-connection
queue; a client that lets that queue pass ``WS_MAX_QUEUE_BYTES`` is closed 4100 and its
queue freed.
"""

from __future__ import annotations

from collections import deque
from typing import Optional

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import TrafficStats
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.defer import inlineCallbacks, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from realtime import jsonutil
from realtime.auth.expiry import SessionWatch
from realtime.auth.identity import AuthFailure, Identity, OriginRefused
from realtime.auth.signing import SignatureError, new_session_secret
from realtime.hub import resume, topics
from realtime.hub.gateway import ADMITTED, REPLACED
from realtime.hub.registry import frame_text
from realtime.transport import fastpath, ratelimit
from realtime.transport.doc_writes import DocWrites
from realtime.vocabulary import (
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_REPLACED,
    CLOSE_TOO_MANY_CONNECTIONS,
    CLOSE_TOO_SLOW,
    CLOSE_UNAUTHORIZED,
)

#: largest message an unauthenticated client may send (the ``auth`` message needs ~2 KB)
PREAUTH_MAX_MESSAGE_BYTES = 8 * 1024
#: all an unauthenticated client may send before authenticating; past it, close 4008
PREAUTH_MAX_TOTAL_BYTES = 32 * 1024
#: largest opening handshake (request line and headers) a client may send: past it, 431
MAX_HANDSHAKE_BYTES = 32 * 1024
#: most frames one (fragmented) message may have: a flood of tiny fragments closes 4008
MAX_FRAGMENTS = 1024

#: an outbox holding more than this is written at once rather than at the end of the turn
#: (Twisted's own buffer size: past it, the producer is paused and frames queue, bounded)
OUTBOX_FLUSH_BYTES = 64 * 1024

#: what Autobahn keeps of the opening handshake; unused once the connection is open
_HANDSHAKE_ATTRIBUTES = ("http_status_line", "http_headers", "http_request_data",
                         "http_request_uri", "http_request_path", "http_request_params",
                         "http_request_host", "http_response_data")


#: the attributes of a connection (see RealtimeServerProtocol.__slots__): Autobahn's, as its
#: WebSocketProtocol and server protocol set them per connection, then ours
_AUTOBAHN_SLOTS = (
    "is_closed", "is_open", "_transport_details", "_perMessageCompress", "trackedTimings",
    "trafficStats", "state", "send_state", "data", "send_queue", "triggered", "utf8validator",
    "wasMaxFramePayloadSizeExceeded", "wasMaxMessagePayloadSizeExceeded", "closedByMe",
    "failedByMe", "droppedByMe", "wasClean", "wasNotCleanReason",
    "wasServerConnectionDropTimeout", "wasOpenHandshakeTimeout", "wasCloseHandshakeTimeout",
    "wasServingFlashSocketPolicyFile", "localCloseCode", "localCloseReason",
    "remoteCloseCode", "remoteCloseReason", "openHandshakeTimeoutCall",
    "closeHandshakeTimeoutCall", "autoPingTimeoutCall", "autoPingPending",
    "autoPingPendingCall", "autoPingPendingSeq", "autoPingPendingSent", "http_request_data",
    "http_status_line", "http_headers", "http_request_uri", "http_request_path",
    "http_request_params", "http_request_host", "websocket_version", "websocket_protocols",
    "websocket_origin", "websocket_extensions", "_wskey", "websocket_protocol_in_use",
    "websocket_extensions_in_use", "http_response_data", "inside_message", "current_frame",
    "factory", "connected", "transport", "peer",
)
_CONNECTION_SLOTS = _AUTOBAHN_SLOTS + (
    "connection_id", "identity", "_topics", "_auth_outcome", "_auth_timer",
    "_authenticating", "_registered", "_counted", "_paused", "_queue", "_queued_bytes",
    "_limiter", "_closed", "_watch", "_session_secret", "_inbox", "_fragments",
    "_preauth_bytes", "_admitting", "_held", "_present_as", "session_seq", "admitted_at",
    "_outbox", "_outbox_bytes", "_batcher", "_doc_writes", "_ping_sent_at", "_hold", "resuming",
)

#: Autobahn counts every connection's traffic in a TrafficStats object that nothing here
#: reads: open connections share this one (its counters mean nothing)
_SHARED_TRAFFIC_STATS = TrafficStats()


@implementer(IPushProducer)
class _Throttle:
    """Told by the transport when its buffer is full (pause) and drained (resume)."""

    __slots__ = ("_protocol",)

    def __init__(self, protocol):
        self._protocol = protocol

    def pauseProducing(self):
        self._protocol._paused = True

    def resumeProducing(self):
        self._protocol._resume()

    def stopProducing(self):
        self._protocol._paused = True


class RealtimeServerProtocol(WebSocketServerProtocol):
    """One WebSocket connection.  All per-connection state lives here."""

    _log = Logger()

    # Every attribute a connection holds, ours and Autobahn's, is a slot: an idle connection
    # then has no attribute dict at all (it was ~1.6 KB of 85 entries).  Autobahn's protocol
    # options stay class attributes (fastpath.options_on_class_factory); an attribute that
    # is not listed here still works (it goes to the instance dict).  The names that Twisted
    # or Autobahn define on a base class with a default are set in __init__ (a slot shadows
    # the class default); tests/test_protocol_memory.py checks both.
    __slots__ = _CONNECTION_SLOTS

    def __init__(self):
        # class defaults of Twisted's and Autobahn's base classes, shadowed by the slots
        self.factory = None
        self.transport = None
        self.connected = 0
        self.peer = None
        self.websocket_extensions_in_use = ()  # Autobahn sets a list in the handshake
        super().__init__()
        self.connection_id: Optional[str] = None
        self.identity: Optional[Identity] = None
        self._topics: Optional[set] = None  # made on first use: see topics
        self._ping_sent_at: Optional[float] = None  # WebSocket ping unanswered since (keep_alive)
        self._auth_outcome = None
        self._auth_timer = None
        self._authenticating = False
        self._registered = False
        self._counted = False
        self._paused = False
        self._queue = _NO_QUEUE  # a deque of its own once frames must wait
        self._queued_bytes = 0
        self._limiter = None
        self._closed = False  # onClose has run (it may run before onOpen: see onOpen)
        self._watch: Optional[SessionWatch] = None
        self._session_secret: Optional[str] = None
        self._inbox = None  # a Deferred chaining signed messages, handled in arrival order
        self._fragments = 0
        self._preauth_bytes = 0
        self._admitting = False
        self._held: tuple = ()  # client messages received while admission was pending
        self._present_as: Optional[str] = None  # user id recorded in presence
        self.session_seq = 0  # single-session mode: this session's number
        self.admitted_at = 0.0  # when admitted (gateway clock): see Registry.dispatch
        self._outbox: Optional[list] = None  # frames due this reactor turn (fastpath)
        self._outbox_bytes = 0
        self._batcher = None
        self._doc_writes: Optional[DocWrites] = None  # made on the first document write
        self._hold = None  # a resume.Hold while a replay runs: live frames wait in it
        self.resuming = False  # a resume is running (one at a time)

    def set_valid_events(self, valid_events=None):
        # Autobahn's observer events (``.on("message", ...)``) are not used on server
        # connections: without this list and dict per connection its class defaults (no
        # event validation) stand.
        pass

    @property
    def topics(self) -> set:
        """The topics this connection subscribes to (a set of its own from first use)."""
        topics = self._topics
        if topics is None:
            topics = self._topics = set()
        return topics

    # -- identity -----------------------------------------------------------------------

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
    def gateway(self):
        return self.factory.gateway

    # -- Autobahn callbacks -------------------------------------------------------------

    def dataReceived(self, data):
        # Autobahn buffers the opening handshake without limit, rescanning it at each read:
        # a client that never ends its headers would grow memory and burn CPU.  Bounded
        # here, before anything is authenticated (431, as Twisted Web answers long headers).
        if self.state == self.STATE_CONNECTING and \
                len(self.data) + len(data) > MAX_HANDSHAKE_BYTES:
            self.data = b""
            self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                                 b"Content-Length: 0\r\nConnection: close\r\n\r\n")
            self.transport.loseConnection()
            return
        super().dataReceived(data)

    def onConnect(self, request):
        gateway = self.gateway
        self.connection_id = gateway.new_connection_id()
        d = gateway.authenticator.authenticate(request.headers, request.params, request.origin)

        def authenticated(identity):
            self._auth_outcome = identity
            return None  # no subprotocol, no extra headers

        def refused(failure):
            if failure.check(OriginRefused):
                raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "Origin not allowed")
            if failure.check(AuthFailure):
                self._auth_outcome = failure.value
            else:
                self._log.failure("authenticating a handshake failed", failure)
                self._auth_outcome = AuthFailure("unavailable", "internal error")
            return None

        return d.addCallbacks(authenticated, refused)

    def onOpen(self):
        if self._closed:
            # The client went away while the handshake's credentials were being checked:
            # Autobahn still completes the handshake and calls onOpen after onClose.
            # Nothing may be registered for a connection that is already gone, and the
            # auto-ping Autobahn has just scheduled for it is cancelled.
            if self.autoPingPendingCall is not None:
                self.autoPingPendingCall.cancel()
                self.autoPingPendingCall = None
            self.state = self.STATE_CLOSED
            return
        try:
            for name in _HANDSHAKE_ATTRIBUTES:  # headers and raw request (with its token)
                setattr(self, name, None)
            # what else only the handshake (or WAMP) reads; Autobahn's traffic counters,
            # which nothing reads here, go to one shared object
            self.websocket_protocols = self.websocket_extensions = ()
            if not self.websocket_extensions_in_use:
                self.websocket_extensions_in_use = ()
            self._wskey = None
            self._transport_details = None
            self.trafficStats = _SHARED_TRAFFIC_STATS
            if not self.send_queue:  # Autobahn's, used by sync/chopped writes only: lazily
                self.send_queue = _NO_QUEUE
            self.transport.unregisterProducer()
            self.transport.registerProducer(_Throttle(self), True)
            if fastpath.supports_direct_send(self.transport):
                self._batcher = getattr(self.factory, "batcher", None)
            self.gateway.connection_opened(self)
            self._counted = True
            outcome, self._auth_outcome = self._auth_outcome, None
            if isinstance(outcome, Identity):
                self._accept(outcome)
            elif isinstance(outcome, AuthFailure):
                self._refuse(outcome)
            else:
                limit = self.factory.maxMessagePayloadSize or PREAUTH_MAX_MESSAGE_BYTES
                self.maxMessagePayloadSize = min(PREAUTH_MAX_MESSAGE_BYTES, limit)
                self.maxFramePayloadSize = self.maxMessagePayloadSize
                self.send_json({"type": "connection_established",
                                "message": "Please authenticate to continue"})
                self._auth_timer = self.gateway.timers.callLater(
                    self.gateway.config.ws_auth_timeout_ms / 1000.0, self._auth_timed_out)
        except Exception:
            self._log.failure("onOpen failed")
            self.close_with(1011, "internal error")

    def onMessage(self, payload, isBinary):
        if self.state != self.STATE_OPEN:
            return  # closing (revoked, replaced, disconnected...): nothing more is done for it
        try:
            if self.identity is None:
                self._preauth_bytes += len(payload)
                if self._preauth_bytes > PREAUTH_MAX_TOTAL_BYTES:
                    self.send_error("policy", "too much data before authentication")
                    self.close_with(CLOSE_POLICY, "too much data before authentication")
                    return
            if self._within_rate_limit():
                self._on_message(payload, isBinary)
        except Exception:
            self._log.failure("handling a client message failed")
            self.send_error("internal", "the server failed to handle that message")

    def onPing(self, payload):
        # A ping is answered only within the rate limit: a ping flood cannot make the
        # server write pongs without end.
        if self.state != self.STATE_OPEN:
            return
        try:
            if self._within_rate_limit(tell=False):
                super().onPing(payload)
        except Exception:
            self._log.failure("handling a ping failed")

    def onPong(self, payload):
        self._ping_sent_at = None  # alive (any pong: RFC 6455 allows unsolicited ones)

    def keep_alive(self, now: float, timeout: float) -> None:
        """
        One heartbeat (see :func:`keep_alive`): a WebSocket ping, or, when the previous
        one has gone unanswered for ``timeout`` seconds, the connection is dropped.
        """
        if self.state != self.STATE_OPEN:
            return
        sent = self._ping_sent_at
        if sent is not None:
            if now - sent >= timeout:
                self.wasClean = False
                self.wasNotCleanReason = "WebSocket ping timeout (no pong in time)"
                self.dropConnection(abort=True)
            return
        self._ping_sent_at = now
        self.sendPing(_PING_PAYLOAD)

    def onMessageBegin(self, isBinary):
        self._fragments = 0
        super().onMessageBegin(isBinary)

    def onMessageFrameBegin(self, length):
        self._fragments += 1
        if self._fragments > MAX_FRAGMENTS and not self.failedByMe:
            self._fail_connection(CLOSE_POLICY, "too many fragments in one message")
        super().onMessageFrameBegin(length)

    def onClose(self, wasClean, code, reason):
        self._closed = True
        try:
            if self._auth_timer is not None and self._auth_timer.active():
                self._auth_timer.cancel()
            self._auth_timer = None
            if self._watch is not None:
                self._watch.stop()
            if self._counted:
                self._counted = False
                self.gateway.connection_closed(self)
            if self._registered:
                self._registered = False
                self.gateway.registry.remove(self)
            if self._present_as is not None:
                user_id, self._present_as = self._present_as, None
                self.gateway.connection_left(self, user_id)
            self._queue = _NO_QUEUE
            self._queued_bytes = 0
            self._outbox = None
        except Exception:
            self._log.failure("onClose failed")

    # -- authentication -----------------------------------------------------------------

    def _accept(self, identity: Identity) -> None:
        """
        Admit an authenticated connection (per-user limit and single session, across every
        process: see :meth:`Gateway.admit`).  Admission may wait for Redis; client messages
        arriving meanwhile are held (a few) and handled once admitted.
        """
        if self._auth_timer is not None and self._auth_timer.active():
            self._auth_timer.cancel()
        self._auth_timer = None
        self._admitting = True
        d = self.gateway.admit(self, identity)
        d.addCallback(self._admitted, identity)
        d.addErrback(self._admission_failed)

    def _admitted(self, verdict: str, identity: Identity) -> None:
        self._admitting = False
        held, self._held = self._held, ()
        gateway = self.gateway
        config = gateway.config
        if verdict == REPLACED:
            self.close_with(CLOSE_REPLACED, "replaced by a newer session")
            return
        if verdict != ADMITTED:
            self.send_error("too_many_connections",
                            f"at most {config.ws_max_connections_per_user} connections per user")
            self.close_with(CLOSE_TOO_MANY_CONNECTIONS, "too many connections")
            return
        if self.state != self.STATE_OPEN:  # closed while admission waited
            self.gateway.connection_left(self, identity.user_id)
            return
        if identity.token_id is not None and gateway.registry.revoked(identity.token_id):
            # revoked while admission waited: the revocation event found no connection
            self.gateway.connection_left(self, identity.user_id)
            self._refuse(AuthFailure("revoked", "token revoked"))
            return
        self._present_as = identity.user_id
        self.admitted_at = gateway.now()
        self.identity = identity
        self.gateway.registry.add(self)
        self._registered = True
        if self.maxMessagePayloadSize != self.factory.maxMessagePayloadSize:
            # lowered before authentication; not set otherwise (no instance dict)
            self.maxMessagePayloadSize = self.factory.maxMessagePayloadSize
            self.maxFramePayloadSize = self.factory.maxFramePayloadSize
        revocations = gateway.authenticator.revocations
        if not getattr(revocations, "recheck_live_connections", True):
            revocations = None  # no periodic re-check timer: see the store's docstring
        self._watch = SessionWatch(
            gateway.timers, self.fail_auth, gateway.authenticator.session_checker,
            revalidate_interval=config.ws_session_revalidate_ms / 1000.0,
            revocations=revocations)
        self._watch.watch(identity)
        connected = {
            "type": "connected",
            "user": identity.public(),
            "connectionId": self.connection_id,
            "timestamp": gateway.timestamp(),
            "seqs": resume.positions(gateway),
        }
        if config.ws_signed_messages:
            self._session_secret = new_session_secret()
            connected["sessionSecret"] = self._session_secret
        self.send_json(connected)
        for message in held:
            if self.state == self.STATE_OPEN:
                self._handle(message)

    def _admission_failed(self, failure) -> None:
        self._admitting = False
        self._held = ()
        self._log.failure("admitting a connection failed", failure)
        if self.state == self.STATE_OPEN:
            self._refuse(AuthFailure("unavailable", "admission failed"))

    def _refuse(self, failure: AuthFailure) -> None:
        if self._watch is not None:
            self._watch.stop()
        self.send_json({"type": "auth_failed", "reason": failure.reason})
        self.close_with(failure.close_code, failure.reason)

    def fail_auth(self, failure: AuthFailure) -> None:
        """The credentials ended (expired, revoked, session gone): ``auth_failed``, close."""
        if self.state == self.STATE_OPEN:
            self._log.info("closing connection {id}: {reason}", id=self.connection_id,
                           reason=failure.reason)
            self._refuse(failure)

    def _auth_timed_out(self) -> None:
        self._auth_timer = None
        if self.identity is None:
            self._refuse(AuthFailure("timeout"))

    @inlineCallbacks
    def _on_auth(self, message: dict):
        token = message.get("token")
        if not isinstance(token, str) or not token:
            self.send_error("bad_request", "auth needs a token")
            return
        if self._authenticating or self._admitting:
            self.send_error("bad_request", "authentication already in progress")
            return
        self._authenticating = True
        try:
            identity = yield self.gateway.authenticator.verify_token(token)
        except AuthFailure as failure:
            if self.state == self.STATE_OPEN:
                self._refuse(failure)
            return
        except Exception:
            self._log.failure("verifying an auth token failed")
            if self.state == self.STATE_OPEN:
                self._refuse(AuthFailure("unavailable"))
            return
        finally:
            self._authenticating = False
        if self.state != self.STATE_OPEN:
            return
        if self.identity is None:
            self._accept(identity)
        elif identity.user_id != self.identity.user_id:
            self.send_error("forbidden", "a refreshed token must name the same user")
        else:
            old_roles = self.roles
            self.identity = identity
            if self._watch is not None:
                self._watch.watch(identity)
            self.send_json({"type": "connected", "user": identity.public(),
                            "connectionId": self.connection_id,
                            "timestamp": self.gateway.timestamp(),
                            "seqs": resume.positions(self.gateway)})
            topics.recheck_subscriptions(self)
            if tuple(identity.roles) != tuple(old_roles):
                self.gateway.connection_roles_changed(self, old_roles)

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
            self.send_error("bad_request", "a message needs a string type")
            return
        self.gateway.metrics.received(kind)
        if kind == "auth":
            self._on_auth(message)
            return
        if kind == "ping":
            self.send_json({"type": "pong", "timestamp": self.gateway.timestamp()})
            return
        if self.identity is None and self._admitting:
            # Authenticated, admission pending (presence in Redis): hold a few messages.
            # Not with signed messages (they could not have been signed yet: the secret
            # comes with `connected`), and not past the few: refused, the connection stays.
            if not self.gateway.config.ws_signed_messages and _can_hold(self._held):
                self._held += (message,)
            else:
                self.send_error("not_ready", "wait for `connected` before sending this")
            return
        if self.identity is None:
            self.send_error("not_authenticated", "authenticate first")
            self.close_with(CLOSE_UNAUTHORIZED, "not authenticated")
            return
        handler_name = _HANDLERS.get(kind)
        if handler_name is None:
            self.send_error("unknown_type", f"unknown message type {kind[:64]!r}")
            return
        getattr(self, handler_name)(message)

    def _on_signed(self, payload: bytes) -> None:
        """Verify an envelope, then handle its payload (in arrival order)."""
        secret = self._session_secret
        text = payload.decode("utf-8")  # Autobahn has validated the UTF-8

        def verify(_):
            return self.gateway.message_verifier.verify(secret, text)

        def refused(failure):
            if failure.check(SignatureError):
                self.send_error(failure.value.code, failure.value.message)
            else:
                self._log.failure("verifying a signed message failed", failure)
                self.send_error("internal", "the server failed to handle that message")

        def handle(message):
            if self.state == self.STATE_OPEN:
                self._handle(message)

        def failed(failure):
            self._log.failure("handling a signed message failed", failure)
            self.send_error("internal", "the server failed to handle that message")

        if self._inbox is None:
            self._inbox = succeed(None)
        d = self._inbox.addCallback(verify)
        d.addCallbacks(handle, refused)
        d.addErrback(failed)

    def _within_rate_limit(self, tell: bool = True) -> bool:
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

    @property
    def still_open(self) -> bool:
        return self.state == self.STATE_OPEN

    # -- resume (the logic is in realtime.hub.resume) -----------------------------------

    def _on_resume(self, message: dict) -> None:
        resume.handle_resume(self, message)

    def begin_hold(self) -> "resume.Hold":
        """Hold live frames from now on (replays running); nested holds share one."""
        if self._hold is None:
            self._hold = resume.Hold(self.gateway.config.ws_max_queue_bytes)
        self._hold.depth += 1
        return self._hold

    def end_hold(self) -> None:
        """One replay ended; after the last, send the held frames it did not give."""
        hold = self._hold
        if hold is None:
            return
        hold.depth -= 1
        if hold.depth > 0:
            return
        self._hold = None
        for frame in hold.frames:
            if not hold.superseded(frame):
                self.deliver_frame(frame, True)

    # -- topics (the logic is in realtime.hub.topics) ---------------------------------------

    def _on_subscribe(self, message: dict) -> None:
        topics.handle_subscribe(self, message)

    def _on_unsubscribe(self, message: dict) -> None:
        topics.handle_unsubscribe(self, message)

    def _on_publish(self, message: dict) -> None:
        topics.handle_publish(self, message)

    # -- document writes (realtime.transport.doc_writes) --------------------------------

    def _on_doc_write(self, message: dict) -> None:
        if self._doc_writes is None:
            self._doc_writes = DocWrites(self.gateway.writer, self.send_json,
                                         self.gateway.metrics.error)
        self._doc_writes.handle(self.user_id, self.identity.roles, message)

    def deliver_frame(self, frame: bytes, direct: bool = False) -> bool:
        """
        Write a pre-framed message, or queue it while the transport is full.

        A live message (from the registry) is held while a replay runs (:meth:`begin_hold`);
        ``direct`` ones (answers, replayed messages: :meth:`send_json`) never are.

        On a plain TCP transport the frame joins this turn's outbox, written with the others
        due to this connection in one write at the end of the turn (:mod:`realtime.transport.fastpath`).
        """
        if self.state != self.STATE_OPEN:
            return False
        if self._hold is not None and not direct:
            if self._hold.add(frame):
                return True
            self._hold = None
            self._too_slow()
            return False
        if not self._paused and not self._queue:
            outbox = self._outbox
            if outbox is not None:
                outbox.append(frame)
                self._outbox_bytes += len(frame)
                if self._outbox_bytes > OUTBOX_FLUSH_BYTES:
                    self._flush_outbox()
                return True
            if self._batcher is None:
                self.transport.write(frame)
                return True
            self._outbox = [frame]
            self._outbox_bytes = len(frame)
            self._batcher.due(self)
            return True
        if self._queue is _NO_QUEUE:
            self._queue = deque()
        self._queue.append(frame)
        self._queued_bytes += len(frame)
        if self._queued_bytes > self.gateway.config.ws_max_queue_bytes:
            self._too_slow()
            return False
        return True

    def _flush_outbox(self) -> None:
        """Write this turn's frames at once (from the batcher, or before Autobahn writes)."""
        outbox = self._outbox
        if outbox is None:
            return
        self._outbox = None
        if self.transport is None:
            return
        fastpath.write_now(self.transport, outbox[0] if len(outbox) == 1 else b"".join(outbox))

    def sendData(self, data, sync=False, chopsize=None):
        # Autobahn's own writes (pings, pongs, close) go after the frames already due.
        if self._outbox is not None:
            self._flush_outbox()
        if (sync or chopsize) and self.send_queue is _NO_QUEUE:
            self.send_queue = deque()  # the only writes that use Autobahn's send queue
        super().sendData(data, sync, chopsize)

    def _resume(self) -> None:
        self._paused = False
        queue = self._queue
        while queue and not self._paused and self.state == self.STATE_OPEN:
            frame = queue.popleft()
            self._queued_bytes -= len(frame)
            self.transport.write(frame)

    def _too_slow(self) -> None:
        self._log.info("closing connection {id}: outgoing queue full", id=self.connection_id)
        self._queue = _NO_QUEUE
        self._queued_bytes = 0
        self._outbox = None
        self.close_with(CLOSE_TOO_SLOW, "too slow: outgoing queue full")
        # The client is not reading: it will not answer the close handshake either.
        self.dropConnection(abort=True)

    def close_with(self, code: int, reason: str) -> None:
        if self.state in (self.STATE_OPEN, self.STATE_CONNECTING):
            if code == CLOSE_NORMAL or 3000 <= code <= 4999:
                self.sendClose(code, reason[:120])
            else:  # 1011 and the like: Autobahn's public sendClose refuses them
                self._fail_connection(code, reason[:120])


#: client messages held while a connection's admission waits for Redis
MAX_HELD_MESSAGES = 16


def _can_hold(held: tuple) -> bool:
    return len(held) < MAX_HELD_MESSAGES


#: the server factory, with the protocol options on the protocol class (realtime.transport.fastpath)
_Factory = fastpath.options_on_class_factory(WebSocketServerFactory)

#: message type -> name of the method handling it once the client is authenticated
_HANDLERS = {
    "subscribe": "_on_subscribe",
    "unsubscribe": "_on_unsubscribe",
    "publish": "_on_publish",
    "doc.create": "_on_doc_write",
    "doc.update": "_on_doc_write",
    "doc.delete": "_on_doc_write",
    "resume": "_on_resume",
}

#: the empty queue every connection shares until one of its own is needed (an idle
#: connection then carries no deque: less memory per connection); immutable on purpose
_NO_QUEUE = ()


#: the payload of the server's WebSocket pings
_PING_PAYLOAD = b"realtime"


def pong_timeout(heartbeat_seconds: float) -> float:
    """How long a WebSocket ping may go unanswered: one heartbeat, at least 2 s."""
    return max(heartbeat_seconds, 2.0)


def keep_alive(connections, now: float, timeout: float) -> None:
    """
    Dead-peer detection for every open connection at once, from the heartbeat timer: each
    connection gets a WebSocket ping; one whose previous ping has gone unanswered for
    ``timeout`` seconds is dropped (what Autobahn's auto-ping does, with a timer and a
    pending call per connection: about 0.5 KB each, and two timers scheduled per setup).
    """
    for conn in connections:
        try:
            conn.keep_alive(now, timeout)
        except Exception:
            RealtimeServerProtocol._log.failure("a keep-alive ping failed")


def make_factory(gateway, url: str = "ws://localhost/ws") -> WebSocketServerFactory:
    """
    The Autobahn factory with every protocol option set explicitly: Autobahn's defaults
    are not this server's (docs/DEVELOPING.rst, "Facts learnt the hard way").
    """
    config = gateway.config
    fastpath.lazy_autobahn_debug_formatting()
    factory = _Factory(url)
    factory.protocol = RealtimeServerProtocol
    factory.gateway = gateway
    factory.batcher = fastpath.TurnBatcher()  # flushes on the transports' reactor
    factory.setProtocolOptions(
        webStatus=False,
        maxFramePayloadSize=config.ws_max_message_bytes,
        maxMessagePayloadSize=config.ws_max_message_bytes,
        autoFragmentSize=0,
        failByDrop=False,
        openHandshakeTimeout=10,
        closeHandshakeTimeout=5,
        tcpNoDelay=True,
        perMessageCompressionAccept=lambda offers: None,
        # No auto-ping timer per connection: keep_alive() pings every open connection from
        # the heartbeat (one timer for all of them).
        autoPingInterval=0,
        autoPingTimeout=0,
        # Origins are checked by the authenticator (only cookie auth is bound to them).
        allowedOrigins=["*"],
        allowNullOrigin=True,
        trustXForwardedFor=0,
        requireMaskedClientFrames=True,
        utf8validateIncoming=True,
    )
    return factory
