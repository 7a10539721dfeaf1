"""
A fast path for the common WebSocket opening handshake, in front of Autobahn's.

Autobahn's ``processHandshake`` parses and validates a request with general machinery
(a header parser that counts every header, ``urlparse``, a check per character of the key,
a Deferred through txaio): about a sixth of the CPU a connection costs to set up (py-spy,
``benchmarks/setup_micro.py``).  Almost every request is the same shape: one request line
``GET <path>?<query> HTTP/1.1``, each header once, ``Upgrade: websocket``, ``Connection:
Upgrade``, version 13, a well-formed key.  :func:`parse_common` recognises exactly that
shape, with the checks Autobahn makes, and :class:`FastHandshake` then hands the request to
``onConnect`` and ``succeedHandshake`` as Autobahn does.

The rule that keeps the refusals the same: the fast path only ever *accepts*.  Anything it
does not recognise as a request Autobahn would accept -- a header given twice, an unknown
version, a subprotocol list with duplicates, an Origin Autobahn refuses or cannot parse, a
bad key, a fragment, path parameters, a port in ``Host`` when the factory checks ports, a
character outside what Autobahn's strict header parser admits -- goes to Autobahn's own
``processHandshake``, which answers it exactly as before (``tests/test_handshake.py``
checks, over generated requests, that whatever the fast path accepts Autobahn accepts with
the same headers, path, parameters, origin, protocols and extensions).  Nothing of the
authentication moves: ``onConnect`` (credentials, the origin rule for cookies) is the same
call with the same :class:`ConnectionRequest`.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections import deque
from typing import Optional
from urllib import parse

import txaio
from autobahn.twisted.util import peer2str
from autobahn.wamp.types import TransportDetails
from autobahn.websocket.protocol import (
    TrafficStats,
    Utf8Validator,
    WebSocketProtocol,
    _is_same_origin,
    _url_to_origin,
)
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ISSLTransport
from twisted.python.failure import Failure

#: a whole header block that Autobahn's strict parser (``parseHttpHeader``) accepts line by
#: line: ``GET <printable ASCII> HTTP/1.1``, then ``token:value`` lines whose values hold
#: only HTAB, SP, VCHAR and obs-text, then the empty line
_COMMON_BLOCK = re.compile(
    r"GET ([!-~]+) HTTP/1\.1\r\n"
    r"((?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t -~\x80-\xff]*\r\n)*)\r\n")

#: a Sec-WebSocket-Key as Autobahn checks it: 22 base64 characters then ``==``
_KEY = re.compile(r"[A-Za-z0-9+/]{22}==")
#: the 101 answer as Autobahn writes it when only its Server header is added (succeedHandshake)
_SWITCHING_PROTOCOLS = ("HTTP/1.1 101 Switching Protocols\r\n{server}Upgrade: WebSocket\r\n"
                        "Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n")
_WS_MAGIC = WebSocketProtocol._WS_MAGIC


#: the transport details of every connection without TLS (see FastHandshake.connectionMade)
_PLAIN_DETAILS = TransportDetails(channel_type=TransportDetails.CHANNEL_TYPE_TCP,
                                  channel_framing=TransportDetails.CHANNEL_FRAMING_WEBSOCKET,
                                  is_server=True, is_secure=False, channel_id={})


def parse_common(data: bytes, proto) -> Optional[tuple]:
    """
    The opening handshake at the start of ``data`` when it is the common shape and
    Autobahn would accept it, as ``(end, status line, headers, uri, path, params, host,
    origin, protocols, extensions, key)`` (``end``: where the handshake ends in ``data``);
    None otherwise (incomplete, or anything else: Autobahn decides).

    ``proto`` gives the options Autobahn's checks read (versions, ports, origins).
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    text = data[:end + 4].decode("iso-8859-1")
    match = _COMMON_BLOCK.fullmatch(text)
    if match is None:
        return None
    uri = match.group(1)
    # urlparse would split off a fragment (refused) or ;params (dropped), or read a scheme
    # or a host: not the common shape
    if uri[0] != "/" or uri[:2] == "//" or "#" in uri or ";" in uri:
        return None
    headers = {}
    for line in match.group(2).split("\r\n")[:-1]:
        name, _, value = line.partition(":")
        key = name.lower()
        if key in headers:
            return None  # Autobahn joins repeated headers and refuses some: its call
        headers[key] = value.strip(" \t")
    factory = proto.factory
    if proto.trustXForwardedFor or proto.maxConnections > 0:
        return None
    host = headers.get("host")
    if host is None:
        return None
    host = host.strip()
    if host.find(":") >= 0 and not host.endswith("]"):
        if factory.externalPort:
            return None
        host, port = host.rsplit(":", 1)
        try:
            int(str(port.strip()))
        except ValueError:
            return None
    if not _has_token(headers.get("upgrade"), "websocket") or \
            not _has_token(headers.get("connection"), "upgrade"):
        return None
    if headers.get("sec-websocket-version", "").strip() != "13" or 13 not in proto.versions:
        return None
    protocols = []
    if "sec-websocket-protocol" in headers:
        protocols = [str(x.strip()) for x in headers["sec-websocket-protocol"].split(",")]
        if len(set(protocols)) != len(protocols):
            return None
    origin = ""
    if "origin" in headers:
        origin = headers["origin"].strip()
        try:
            origin_tuple = _url_to_origin(origin)
        except ValueError:
            return None
        if not (origin_tuple == "null" and factory.allowNullOrigin) and not _is_same_origin(
                origin_tuple, "https" if factory.isSecure else "http",
                factory.externalPort or factory.port, proto.allowedOriginsPatterns):
            return None
    key = headers.get("sec-websocket-key")
    if key is None:
        return None
    key = key.strip()
    if _KEY.fullmatch(key) is None:
        return None
    extensions = []
    if "sec-websocket-extensions" in headers:
        extensions = proto._parseExtensionsHeader(headers["sec-websocket-extensions"])
    path, _, query = uri.partition("?")
    name, equals, value = query.partition("=")
    if equals and value and "&" not in query and "%" not in query and "+" not in query:
        params = {name: [value]}  # what parse_qs makes of one plain ``name=value``
    else:
        params = parse.parse_qs(query)
    return (end + 4, text[:text.index("\r\n")], headers, uri, path, params, host, origin,
            protocols, extensions, key)


def _has_token(value: Optional[str], token: str) -> bool:
    """``value`` (a comma-separated header) holds ``token``, case-insensitively."""
    if value is None:
        return False
    if value.lower() == token:
        return True
    return any(part.strip().lower() == token for part in value.split(","))


class FastHandshake:
    """
    A mixin of the Autobahn server protocol: the common opening handshake through
    :func:`parse_common`, everything else through Autobahn's ``processHandshake``; and a
    new connection's state set without Autobahn's per-connection copy of its options.

    The protocol's ``factory.timers`` (the gateway's timer wheel) runs the opening
    handshake's deadline (Autobahn schedules it on txaio's batched timer).
    """

    __slots__ = ()

    @property
    def utf8validator(self):
        """
        Autobahn's incremental UTF-8 validator of incoming text, made when the first text
        message arrives rather than with the connection (about 225 bytes an idle
        connection does not hold; Autobahn makes one per connection in its
        ``_connectionMade``).  State lives in the ``_utf8validator`` slot.
        """
        validator = self._utf8validator
        if validator is None:
            validator = self._utf8validator = Utf8Validator()
        return validator

    @utf8validator.setter
    def utf8validator(self, validator):
        self._utf8validator = validator

    def connectionMade(self):
        """
        Autobahn's Twisted ``connectionMade``: on a connection without TLS, the transport
        details (what Autobahn reads of them: not secure) are one object shared by every
        such connection instead of one built per connection (the gateway drops them once
        open anyway); with TLS, Autobahn's own (its details carry the certificate).
        """
        transport = self.transport
        if ISSLTransport.providedBy(transport):
            return super().connectionMade()
        self._transport_details = _PLAIN_DETAILS
        self.peer = peer2str(transport)
        try:
            transport.setTcpNoDelay(self.tcpNoDelay)
        except Exception:  # noqa: BLE001 - as Autobahn: Unix sockets and test transports
            pass
        self._connectionMade()

    def _connectionMade(self):
        """
        Autobahn's ``WebSocketServerProtocol._connectionMade``, the same state, less work:
        Autobahn first looks up each of its ~30 options on the connection and copies the
        missing ones from the factory, listing them for a debug log; here the options are
        attributes of the protocol class (``fastpath.options_on_class_factory``), so there
        is nothing to copy.  A protocol class without them gets Autobahn's own method.
        ``tests/test_handshake.py`` checks that both leave every attribute alike.
        """
        if "openHandshakeTimeout" not in type(self).__dict__:
            return super()._connectionMade()
        self._perMessageCompress = None
        self.trackedTimings = None
        self.setTrackTimings(self.trackTimings)
        self.trafficStats = TrafficStats()
        self.state = WebSocketProtocol.STATE_CONNECTING
        self.send_state = WebSocketProtocol.SEND_STATE_GROUND
        self.data = b""
        self.send_queue = deque()
        self.triggered = False
        self._utf8validator = None  # made on first use (the utf8validator property)
        self.wasMaxFramePayloadSizeExceeded = False
        self.wasMaxMessagePayloadSizeExceeded = False
        self.closedByMe = self.failedByMe = self.droppedByMe = self.wasClean = False
        self.wasNotCleanReason = None
        self.wasServerConnectionDropTimeout = self.wasOpenHandshakeTimeout = False
        self.wasCloseHandshakeTimeout = self.wasServingFlashSocketPolicyFile = False
        self.localCloseCode = self.localCloseReason = None
        self.remoteCloseCode = self.remoteCloseReason = None
        self.openHandshakeTimeoutCall = self.closeHandshakeTimeoutCall = None
        self.autoPingTimeoutCall = self.autoPingPending = self.autoPingPendingCall = None
        self.autoPingPendingSeq = 0
        self.autoPingPendingSent = None
        if self.openHandshakeTimeout > 0:
            self.openHandshakeTimeoutCall = self.factory.timers.callLater(
                self.openHandshakeTimeout, self.onOpenHandshakeTimeout)
        self.factory.countConnections += 1

    def processHandshake(self):
        parsed = parse_common(self.data, self)
        if parsed is None:
            return super().processHandshake()
        (end, status_line, headers, uri, path, params, host, origin, protocols,
         extensions, key) = parsed
        # what Autobahn's processHandshake sets, with the same values
        self.http_request_data = self.data[:end]
        self.http_status_line = status_line
        self.http_headers = headers
        self.http_request_uri = uri
        self.http_request_path = path
        self.http_request_params = params
        self.http_request_host = host
        self.websocket_version = 13
        self.websocket_protocols = protocols
        self.websocket_origin = origin
        self.websocket_extensions = extensions
        self.data = self.data[end:]
        self._wskey = key
        request = ConnectionRequest(self.peer, headers, host, path, params, 13, origin,
                                    protocols, extensions)
        # Autobahn wraps onConnect in maybeDeferred; an answer given at once (a JWT checked
        # with the static key) is taken at once here, with no Deferred made for it
        try:
            answer = self.onConnect(request)
        except Exception:
            self._connect_refused(Failure())
            return
        if isinstance(answer, Deferred):
            answer.addCallbacks(self.succeedHandshake, self._connect_refused)
        else:
            self.succeedHandshake(answer)

    def succeedHandshake(self, res) -> None:
        """
        Autobahn's ``succeedHandshake`` for the common case, the same answer and state with
        less work: ``onConnect`` chose no subprotocol and no headers, the client offered no
        extension, and the factory adds no header but ``Server`` (the gateway's adds none:
        ``make_factory``), with auto-ping and timing tracking off.  The 101 is then one
        template; Autobahn builds it line by line with a debug log line each.  Anything
        else goes to Autobahn's own method (``tests/test_handshake.py`` compares the two:
        bytes written, state after).
        """
        factory = self.factory
        if (res is not None or self.websocket_extensions or factory.headers
                or self.autoPingInterval or self.trackedTimings):
            return super().succeedHandshake(res)
        self.websocket_protocol_in_use = None
        self.websocket_extensions_in_use = []
        accept = base64.b64encode(hashlib.sha1(self._wskey.encode("utf8") + _WS_MAGIC)
                                  .digest()).decode()
        server = factory.server
        response = _SWITCHING_PROTOCOLS.format(
            server=f"Server: {server}\r\n" if server else "", accept=accept)
        self.sendData(response.encode("utf8"))
        self.http_response_data = response
        self.state = WebSocketProtocol.STATE_OPEN
        if self.openHandshakeTimeoutCall is not None:
            self.openHandshakeTimeoutCall.cancel()
            self.openHandshakeTimeoutCall = None
        self.inside_message = False
        self.current_frame = None
        self._onOpen()
        txaio.resolve(self.is_open, None)
        if len(self.data) > 0:
            self.consumeData()

    def _connect_refused(self, failure):
        """As Autobahn answers a failed ``onConnect``."""
        if isinstance(failure.value, ConnectionDeny):
            self.failHandshake(failure.value.reason, failure.value.code)
            return None
        self._log.failure("onConnect failed", failure)
        return self.failHandshake(f"Internal server error: {failure.value}",
                                  ConnectionDeny.INTERNAL_SERVER_ERROR)
