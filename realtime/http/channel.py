"""
The HTTP/1.1 connection of the web site: Twisted Web's ``HTTPChannel``, with its own
answers in JSON like every other answer of the gateway, and bounded in time.

Twisted answers what it cannot parse itself, before any resource sees a request: a bare
``400 Bad Request`` with no body for a bad request line, header, ``Content-Length`` (two
different ones) or chunked encoding, and nothing at all (the connection is just closed) for
a line longer than 16 KiB.  Here:

- a malformed request: 400 ``{"error": "bad_request", "message": ...}``;
- a request line longer than :data:`MAX_LINE_BYTES`: 414 ``uri_too_long``;
- a header line longer than :data:`MAX_LINE_BYTES`, a request line and headers together
  over :attr:`GatewayChannel.totalHeadersSize` (16 KiB, Twisted's), or more than
  ``maxHeaders`` (500) header lines: 431 ``headers_too_large``;
- the HTTP/2 preface (``PRI * HTTP/2.0``): 505 ``http_version_not_supported`` (the gateway
  speaks HTTP/1.1; put an HTTP/2 proxy in front for HTTP/2 clients);

each with ``Connection: close``, after which the connection is closed.

Slow clients (a "slowloris" trickling a header line or a body, one byte at a time: Twisted
Web's idle timer restarts at every byte, so such a client could hold its connection, and
its file descriptor, for ever):

- from the first byte of a request, its request line and headers must have arrived within
  ``headers_timeout`` seconds (``REALTIME_HTTP_HEADERS_TIMEOUT_MS``, 10 s), and then its
  body within ``body_timeout`` seconds (``REALTIME_HTTP_BODY_TIMEOUT_MS``, 30 s); past
  either deadline the client gets 408 ``request_timeout`` and the connection is closed
  (aborted 2 s later if the client does not read that answer);
- an idle keep-alive connection is closed after the site's ``timeOut``
  (``REALTIME_HTTP_IDLE_TIMEOUT_MS``, 60 s; Twisted's default is 12 hours);
- ``pending``: a :class:`PendingConnections` counting the connections that have not finished
  their first request yet; the channel releases its place once that request has arrived
  whole (or the connection is gone).  See :mod:`realtime.transport.fastpath` for who takes
  the place and what happens when none is left.
"""

from __future__ import annotations

from typing import Callable, Optional

from twisted.logger import Logger
from twisted.web.http import HTTPChannel

from realtime import jsonutil

#: Twisted's LineReceiver limit for the request line and each header line
MAX_LINE_BYTES = 16384
#: how long a client has to read a timeout answer before its connection is aborted
ABORT_AFTER_SECONDS = 2.0


def json_answer(status: int, phrase: str, code: str, message: str, headers=()) -> bytes:
    """A whole HTTP/1.1 answer with a JSON error body, closing the connection."""
    body = jsonutil.dumps({"error": code, "message": message})
    lines = [f"HTTP/1.1 {status} {phrase}", "Content-Type: application/json; charset=utf-8",
             f"Content-Length: {len(body)}", "Connection: close", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class PendingConnections:
    """
    The number of connections that have not finished their first request (an HTTP request
    received whole, or a WebSocket handshake done), bounded by ``limit``.
    """

    _log = Logger()

    def __init__(self, limit: int):
        self.limit = limit
        self.count = 0
        self.refused = 0

    def acquire(self) -> Optional[Callable[[], None]]:
        """A place: the function that gives it back (idempotent), or None when full."""
        if self.count >= self.limit:
            self.refused += 1
            if self.refused in (1, 10, 100) or self.refused % 1000 == 0:
                self._log.warn("{n} connection(s) refused: {limit} connections have not "
                               "finished a request (REALTIME_MAX_PENDING_CONNECTIONS)",
                               n=self.refused, limit=self.limit)
            return None
        self.count += 1
        released = []

        def release():
            if not released:
                released.append(True)
                self.count -= 1
        return release


class GatewayChannel(HTTPChannel):
    """See the module docstring.  Built by :class:`realtime.http.site` ``Site``."""

    headers_timeout = 10.0
    body_timeout = 30.0
    #: set by the listener when the connection holds a place among the pending ones
    release_pending: Optional[Callable[[], None]] = None

    _deadline = None
    _abort_later = None
    _answered = False

    # -- deadlines ----------------------------------------------------------------------

    def dataReceived(self, data):
        if self._deadline is None and not self._handlingRequest and not self._answered:
            self._start_deadline(self.headers_timeout, "headers")
        super().dataReceived(data)

    def allHeadersReceived(self):
        self._stop_deadline()
        super().allHeadersReceived()
        if self.length != 0 and not self._answered:
            self._start_deadline(self.body_timeout, "body")

    def allContentReceived(self):
        self._stop_deadline()
        self._release()
        super().allContentReceived()

    def _start_deadline(self, seconds: float, part: str) -> None:
        self._deadline = self.callLater(seconds, self._too_slow, seconds, part)

    def _stop_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _release(self) -> None:
        if self.release_pending is not None:
            release, self.release_pending = self.release_pending, None
            release()

    def _too_slow(self, seconds, part):
        self._deadline = None
        self._answer(408, "Request Timeout", "request_timeout",
                     f"the request's {part} did not arrive within {seconds:g} s")

    # -- Twisted's own answers, in JSON -------------------------------------------------

    def lineReceived(self, line):
        if self._answered:
            return
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self._answer(431, "Request Header Fields Too Large", "headers_too_large",
                         f"the request line and headers are larger than "
                         f"{self.totalHeadersSize} bytes")
            return
        if line == b"PRI * HTTP/2.0" and self._at_request_line():
            self._answer(505, "HTTP Version Not Supported", "http_version_not_supported",
                         "this server speaks HTTP/1.1 (and WebSocket over it), not HTTP/2")
            return
        super().lineReceived(line)

    def headerReceived(self, line):
        if self._receivedHeaderCount >= self.maxHeaders:
            self._answer(431, "Request Header Fields Too Large", "headers_too_large",
                         f"more than {self.maxHeaders} header lines")
            return False
        return super().headerReceived(line)

    def lineLengthExceeded(self, line):
        if self._at_request_line():
            self._answer(414, "URI Too Long", "uri_too_long",
                         f"the request line is longer than {self.MAX_LENGTH} bytes")
        else:
            self._answer(431, "Request Header Fields Too Large", "headers_too_large",
                         f"a header line is longer than {self.MAX_LENGTH} bytes")

    def _respondToBadRequestAndDisconnect(self):
        self._answer(400, "Bad Request", "bad_request",
                     "the request is not valid HTTP/1.1 (request line, a header, the body's "
                     "length or its chunked encoding)")

    def _at_request_line(self) -> bool:
        # HTTPChannel's own flag: true until a request line has been read
        return bool(self._HTTPChannel__first_line)

    def _answer(self, status, phrase, code, message) -> None:
        """Answer with a JSON error and close: nothing more is read from this client."""
        if self._answered or self.transport is None:
            return
        self._answered = True
        self._stop_deadline()
        self.setTimeout(None)
        self.transport.write(json_answer(status, phrase, code, message))
        self.transport.loseConnection()
        self._abort_later = self.callLater(ABORT_AFTER_SECONDS, self._abort)

    def _abort(self) -> None:
        if self.transport is not None and self.transport.connected:
            self.transport.abortConnection()

    def connectionLost(self, reason):
        if self._abort_later is not None and self._abort_later.active():
            self._abort_later.cancel()
        self._stop_deadline()
        self._release()
        super().connectionLost(reason)
