"""
The WebSocket endpoint ``/ws``: a thin Autobahn adapter over a
:class:`realtime.transport.session.Session`.

The wire protocol (v1) is docs/protocol.rst: every message is a JSON object with a
``type``, both ways.  What a client may send and what it is answered (authentication,
admission, rate limits, message types) is the session's (:mod:`realtime.transport.session`);
this module does what is WebSocket's: the handshake (its credentials are checked in
``onConnect``, see :mod:`realtime.auth.authenticator`; a handshake over 32 KiB gets 431),
frame and message size limits (before authentication a message may be at most 8 KiB,
``PREAUTH_MAX_MESSAGE_BYTES``: larger, close 1009, the same reaction as any message over
``WS_MAX_MESSAGE_BYTES``; more than ``MAX_FRAGMENTS`` frames in one message closes 4008),
pings (answered within the session's rate limit; the heartbeat pings every connection,
:func:`realtime.transport.keepalive.keep_alive`), the outgoing frames and the close.

Delivery: a message bound for many connections is framed once (:mod:`realtime.hub.registry`)
and written to each as bytes.  On a plain TCP transport, the frames due to one connection in
one reactor turn are written together at the end of the turn, straight to the socket when
Twisted holds nothing for it (:mod:`realtime.transport.fastpath`); Autobahn's own writes (pings,
close) flush them first, so order is kept.  Every connection registers a push producer on
its transport: when Twisted's write buffer fills, frames wait in a bounded per-connection
queue; a client that lets that queue pass ``WS_MAX_QUEUE_BYTES`` is closed 4100 and its
queue freed.  While a resume replays, live frames wait in a hold (:mod:`realtime.hub.resume`).
"""

from __future__ import annotations

from typing import Optional

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import TrafficStats
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from realtime.auth.identity import AuthFailure, Identity, OriginRefused
from realtime.http.channel import json_answer
from realtime.transport import fastpath
from realtime.transport.handshake import FastHandshake
from realtime.transport.keepalive import KeepAlive
from realtime.transport.outbox import NO_QUEUE, Corks, Outbox, Throttle
from realtime.transport.session import ISessionTransport, Session
from realtime.vocabulary import CLOSE_NORMAL, CLOSE_POLICY

#: largest message an unauthenticated client may send (the ``auth`` message needs ~2 KB)
PREAUTH_MAX_MESSAGE_BYTES = 8 * 1024

#: largest opening handshake (request line and headers) a client may send: past it, 431
MAX_HANDSHAKE_BYTES = 32 * 1024
#: most frames one (fragmented) message may have: a flood of tiny fragments closes 4008
MAX_FRAGMENTS = 1024

#: what Autobahn keeps of the opening handshake; unused once the connection is open
_HANDSHAKE_ATTRIBUTES = ("http_status_line", "http_headers", "http_request_data",
                         "http_request_uri", "http_request_path", "http_request_params",
                         "http_request_host", "http_response_data")


#: the attributes of a connection (see RealtimeServerProtocol.__slots__): Autobahn's, as its
#: WebSocketProtocol and server protocol set them per connection, then ours
_AUTOBAHN_SLOTS = (
    "is_closed", "is_open", "_transport_details", "_perMessageCompress", "trackedTimings",
    "trafficStats", "state", "send_state", "data", "send_queue", "triggered", "_utf8validator",
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
    "session", "_auth_outcome", "_counted", "_paused", "_queue", "_queued_bytes", "_closed",
    "_fragments", "_outbox", "_outbox_bytes", "_corked", "_batcher", "_ping_sent_at", "_hold",
    "_drain_timer", "release_pending",
)

#: Autobahn counts every connection's traffic in a TrafficStats object that nothing here
#: reads: open connections share this one (its counters mean nothing)
_SHARED_TRAFFIC_STATS = TrafficStats()


@implementer(ISessionTransport)
class RealtimeServerProtocol(KeepAlive, Outbox, FastHandshake, WebSocketServerProtocol):
    """
    One WebSocket connection: the transport of one :class:`Session` (``self.session``,
    made when the handshake arrives), with the outgoing frames' state.
    """

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
        self.session: Optional[Session] = None
        self._ping_sent_at: Optional[float] = None  # WebSocket ping unanswered since (keep_alive)
        self._auth_outcome = None  # the handshake's credentials, checked, until onOpen
        self._counted = False
        self._paused = False
        self._queue = NO_QUEUE  # a deque of its own once frames must wait
        self._queued_bytes = 0
        self._closed = False  # onClose has run (it may run before onOpen: see onOpen)
        self._fragments = 0
        self._outbox: Optional[list] = None  # frames due this reactor turn (fastpath)
        self._outbox_bytes = 0
        self._corked = False  # the outbox waits for admission (Outbox.cork)
        self._batcher = None
        self._hold = None  # a resume.Hold while a replay runs: live frames wait in it
        self._drain_timer = None  # closed 4100: the abort if the client does not read
        self.release_pending = None  # the listener's place (fastpath): freed once open/closed

    def set_valid_events(self, valid_events=None):
        # Autobahn's observer events (``.on("message", ...)``) are not used on server
        # connections: without this list and dict per connection its class defaults (no
        # event validation) stand.
        pass

    @property
    def gateway(self):
        return self.factory.gateway

    @property
    def still_open(self) -> bool:
        return self.state == self.STATE_OPEN

    @property
    def connection_id(self) -> Optional[str]:
        return self.session.connection_id if self.session is not None else None

    # -- Autobahn callbacks -------------------------------------------------------------

    def dataReceived(self, data):
        # Autobahn buffers the opening handshake without limit, rescanning it at each read:
        # a client that never ends its headers would grow memory and burn CPU.  Bounded
        # here, before anything is authenticated (431, as Twisted Web answers long headers).
        if self.state == self.STATE_CONNECTING and \
                len(self.data) + len(data) > MAX_HANDSHAKE_BYTES:
            self.data = b""
            self.transport.write(json_answer(
                431, "Request Header Fields Too Large", "headers_too_large",
                f"the WebSocket handshake is larger than {MAX_HANDSHAKE_BYTES} bytes"))
            self.transport.loseConnection()
            return
        # Autobahn's adapter (WebSocketAdapterProtocol.dataReceived) only adds a debug log
        # line, its arguments built on every read, then calls this
        self._dataReceived(data)

    def sendHttpErrorResponse(self, code, reason, responseHeaders=None):
        # Autobahn answers a refused handshake with a status line and no body; here the
        # body is JSON like every other answer, and says what to do.
        if code == 426:
            answer = json_answer(426, "Upgrade Required", "upgrade_required",
                                 "/ws is the WebSocket endpoint: connect with a WebSocket "
                                 "client (ws:// or wss://, an Upgrade: websocket request); "
                                 "the REST API is under /websocket/",
                                 headers=("Upgrade: websocket",))
        else:
            phrase = {403: "Forbidden", 431: "Request Header Fields Too Large"}.get(
                code, "Bad Request")
            error = {403: "forbidden"}.get(code, "bad_handshake")
            answer = json_answer(code, phrase, error, str(reason)[:200],
                                 headers=tuple(f"{k}: {v}" for k, v in responseHeaders or ()))
        self.sendData(answer)

    def onConnect(self, request):
        """
        The handshake's credentials, checked: at once when they can be (a JWT of the static
        key with a store that answers at once: no Deferred is made), else the Deferred of
        :meth:`Authenticator.authenticate_now`.  What they gave is kept for ``onOpen``.
        """
        gateway = self.gateway
        authenticator = gateway.authenticator
        self.session = Session(self, gateway, gateway.new_connection_id(), authenticator,
                               gateway.registry, gateway.message_verifier, gateway.writer)
        # Read once: whether the token's revocation is left to admission travels with the
        # identity to onOpen (as ``(identity, True)``), so the session's admission checks
        # exactly what this lookup skipped.
        later = gateway.revocation_at_admission
        try:
            outcome = authenticator.authenticate_now(
                request.headers, request.params, request.origin, revocation_later=later)
        except Exception:
            return self._auth_refused(Failure())
        if isinstance(outcome, Deferred):
            return outcome.addCallbacks(self._auth_answered, self._auth_refused,
                                        callbackArgs=(later,))
        self._auth_answered(outcome, later)
        return None  # no subprotocol, no extra headers

    def _auth_answered(self, identity, revocation_later: bool = False):
        self._auth_outcome = ((identity, True) if revocation_later
                              and isinstance(identity, Identity) else identity)
        return None

    def _auth_refused(self, failure):
        if failure.check(OriginRefused):
            raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "Origin not allowed")
        if failure.check(AuthFailure):
            self._auth_outcome = failure.value
        else:
            self._log.failure("authenticating a handshake failed", failure)
            self._auth_outcome = AuthFailure("unavailable", "internal error")
        return None

    def _release_pending(self) -> None:
        if self.release_pending is not None:
            release, self.release_pending = self.release_pending, None
            release()

    def onOpen(self):
        self._release_pending()
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
                self.send_queue = NO_QUEUE
            self.transport.unregisterProducer()
            self.transport.registerProducer(Throttle(self), True)
            if fastpath.supports_direct_send(self.transport):
                self._batcher = self.factory.batcher
            self.gateway.connection_opened(self)
            self._counted = True
            outcome, self._auth_outcome = self._auth_outcome, None
            if type(outcome) is tuple:  # an identity whose revocation admission checks
                self.session.opened(outcome[0], revocation_pending=True)
            else:
                self.session.opened(outcome)
        except Exception:
            self._log.failure("onOpen failed")
            self.close_with(1011, "internal error")

    def onMessage(self, payload, isBinary):
        if self.state != self.STATE_OPEN:
            return  # closing (revoked, replaced, disconnected...): nothing more is done for it
        try:
            self.session.received(payload, isBinary)
        except Exception:
            self._log.failure("handling a client message failed")
            self.session.send_error("internal", "the server failed to handle that message")

    def onPing(self, payload):
        # A ping is answered only within the rate limit: a ping flood cannot make the
        # server write pongs without end.
        if self.state != self.STATE_OPEN:
            return
        try:
            if self.session.within_rate_limit(tell=False):
                super().onPing(payload)
        except Exception:
            self._log.failure("handling a ping failed")

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
        self._release_pending()
        if self._drain_timer is not None:
            timer, self._drain_timer = self._drain_timer, None
            if timer.active():
                timer.cancel()
        try:
            if self.session is not None:
                self.session.closed()
            if self._counted:
                self._counted = False
                self.gateway.connection_closed(self)
            self._queue = NO_QUEUE
            self._queued_bytes = 0
            self._outbox = None
            self.uncork()  # nothing left to write: Corks stops waiting for it
        except Exception:
            self._log.failure("onClose failed")

    # -- ISessionTransport ----------------------------------------------------------------

    def limit_before_auth(self) -> None:
        limit = self.factory.maxMessagePayloadSize or PREAUTH_MAX_MESSAGE_BYTES
        self.maxMessagePayloadSize = min(PREAUTH_MAX_MESSAGE_BYTES, limit)
        self.maxFramePayloadSize = self.maxMessagePayloadSize

    def lift_auth_limits(self) -> None:
        if self.maxMessagePayloadSize != self.factory.maxMessagePayloadSize:
            # lowered before authentication; not set otherwise (no instance dict)
            self.maxMessagePayloadSize = self.factory.maxMessagePayloadSize
            self.maxFramePayloadSize = self.factory.maxFramePayloadSize

    def close_with(self, code: int, reason: str) -> None:
        if self.state in (self.STATE_OPEN, self.STATE_CONNECTING):
            if code == CLOSE_NORMAL or 3000 <= code <= 4999:
                self.sendClose(code, reason[:120])
            else:  # 1011 and the like: Autobahn's public sendClose refuses them
                self._fail_connection(code, reason[:120])


#: the server factory, with the protocol options on the protocol class (realtime.transport.fastpath)
_Factory = fastpath.options_on_class_factory(WebSocketServerFactory)

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
    factory.corks = Corks()  # outboxes waiting for admission (Outbox.cork)
    factory.timers = gateway.timers  # the opening handshake deadline (handshake.py)
    factory.setProtocolOptions(
        webStatus=False,
        maxFramePayloadSize=config.ws_max_message_bytes,
        maxMessagePayloadSize=config.ws_max_message_bytes,
        autoFragmentSize=0,
        failByDrop=False,
        # the same deadline as an HTTP request's headers (realtime.http.channel)
        openHandshakeTimeout=config.http_headers_timeout_ms / 1000.0,
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
