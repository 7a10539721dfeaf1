"""
Following a CouchDB ``_changes`` feed.

One :class:`ChangesFollower` per watched database per process makes one continuous
``_changes`` request (``feed=continuous&include_docs=true&heartbeat=H``), whatever the
number of WebSocket clients, and hands every change to a callback.  This module owns the
connection: its lifecycle, the watchdog, the reconnections and the status.  The lines of
the stream are split by :class:`realtime.feeds.stream.LineParser`; what is done with each
row (in order, with asynchronous callbacks and backpressure) is
:class:`realtime.feeds.rows.ChangeRows`, a mixin of the follower.

Behaviour:

- The first start begins at "now": the feed first asks CouchDB where that is
  (``_changes?descending=true&limit=1`` -> ``last_seq``), then streams from there; later
  connections resume from the ``seq`` of the last change the callback fully processed.
  (Streaming with ``since=now`` itself would lose, on a quiet database, every change made
  while the feed is cut: a heartbeat carries no seq, so "now" would be asked again.)
  ``seq`` is opaque (an integer on pouchdb-server, a string on CouchDB 2/3): stored and
  sent back unchanged, never compared or parsed.
- A partial line left when the stream ends is discarded (its change will come again, since
  ``since`` only moves past fully processed lines); so are the rows held, unprocessed.
- A watchdog on the injected clock aborts the request when no byte (change or heartbeat) has
  arrived for ``3 x heartbeat``, including while waiting for the response headers.
- Any end of the stream (server closed it, watchdog, connection refused, non-200 answer)
  schedules a reconnection after :class:`~realtime.feeds.stream.Backoff`: 1 s doubling to
  30 s, with jitter.  The backoff resets once a connection has delivered a byte of body.
- The feed is ``connected`` from the stream's ``200`` (CouchDB sends the headers at once;
  pouchdb-server holds them until its first heartbeat): from then on every change after
  ``since`` reaches the callback.  A server that answers 200 and ends the stream before a
  byte of body still backs off (the reset waits for the body).

The streaming request is made with a plain ``twisted.web.client.Agent`` (no content
decoding): treq's client always asks for gzip, and pouchdb-server then holds a gzipped
continuous feed back.  Short requests elsewhere use treq.
"""

from __future__ import annotations

from typing import Callable, Optional
from urllib.parse import quote, urlencode

from twisted.internet.defer import CancelledError
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web.client import ResponseDone, readBody
from twisted.web.http_headers import Headers

from realtime import jsonutil
from realtime.couchheaders import couch_headers
from realtime.feeds.catchup import CatchUp
from realtime.feeds.rows import ChangeRows
from realtime.feeds.stream import Backoff, LineParser, describe_failure


class _FeedBody(Protocol):
    """Body protocol of one ``_changes`` response: feeds the parser, reports the end."""

    def __init__(self, follower: "ChangesFollower"):
        self._follower = follower

    def connectionMade(self):
        self._follower._body_started(self)

    def dataReceived(self, data: bytes):
        self._follower._body_data(self, data)

    def connectionLost(self, reason):
        self._follower._body_ended(self, reason)

    def abort(self):
        if self.transport is not None:
            self.transport.stopProducing()

    def pause(self):
        if self.transport is not None:
            self.transport.pauseProducing()

    def resume(self):
        if self.transport is not None:
            self.transport.resumeProducing()


#: a connected feed silent for more than this many heartbeats is reported ``stalled`` (one
#: heartbeat, and half of one more for the server's own timing)
STALLED_HEARTBEATS = 1.5


class ChangesFollower(ChangeRows, CatchUp):
    """
    Follow one database's continuous ``_changes`` feed.

    :param agent: an ``IAgent`` (a plain ``Agent``: see the module docstring).
    :param clock: an ``IReactorTime``.
    :param on_change: ``on_change(db, change)`` for each change line (a dict with ``id``,
        ``seq``, ``changes``, ``doc`` or ``deleted``).  When it returns, the change counts as
        processed and its ``seq`` becomes the resume point; when it returns a Deferred,
        once that fires (later changes wait for it).  An exception it raises is logged
        and the change still counts as processed (one bad document must not stall the feed).
    :param on_state: optional ``on_state(follower)`` called on every state change.
    :param track_backlog: stamp each change with the time before which roles count, and
        read the backlog of each reconnection in batches (:mod:`realtime.feeds.catchup`).
    """

    _log = Logger()

    STOPPED = "stopped"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"

    def __init__(self, agent, clock, couchdb_url: str, db: str,
                 on_change: Callable[[str, dict], None],
                 admin_auth: Optional[str] = None, heartbeat_ms: int = 10000,
                 since="now", backoff: Optional[Backoff] = None,
                 on_state: Optional[Callable[["ChangesFollower"], None]] = None,
                 track_backlog: bool = False):
        self._agent = agent
        self._clock = clock
        self._base = couchdb_url.rstrip("/")
        self.db = db
        self._on_change = on_change
        self._admin_auth = admin_auth
        self.heartbeat_ms = heartbeat_ms
        self.last_seq = since
        self._backoff = backoff or Backoff()
        self._on_state = on_state
        self.state = self.STOPPED
        self.reconnects = 0
        self.changes_seen = 0
        self.last_error: Optional[str] = None
        self.last_byte_at: Optional[float] = None
        #: the database answered 404 (it does not exist, yet): retried with the backoff
        self.missing = False
        self._request = None
        self._body: Optional[_FeedBody] = None
        self._watchdog = None
        self._retry = None
        self._running = False
        self._stall_abort = False
        self._delivered = False  # the current stream has delivered a byte of body
        self._init_rows()
        self._init_catch_up(track_backlog, since)

    # -- public -------------------------------------------------------------------------

    def start(self) -> None:
        if self._running:
            return
        self._running = True
        self._connect()

    def stop(self) -> None:
        self._running = False
        self._fell_behind()  # changes made while stopped are a backlog
        self._drop_held()
        self._backlog_end = None  # its rows were dropped: read again from last_seq
        self._cancel_timer("_retry")
        self._cancel_timer("_watchdog")
        if self._request is not None:
            request, self._request = self._request, None
            request.cancel()
        if self._body is not None:
            body, self._body = self._body, None
            body.abort()
        self._set_state(self.STOPPED)

    @property
    def watchdog_seconds(self) -> float:
        return 3 * self.heartbeat_ms / 1000.0

    def position_url(self) -> bytes:
        """Where "now" is: the newest change's seq (``last_seq``)."""
        query = urlencode({"descending": "true", "limit": "1"})
        return f"{self._base}/{quote(self.db, safe='')}/_changes?{query}".encode("ascii")

    def url(self) -> bytes:
        query = urlencode({
            "feed": "continuous",
            "include_docs": "true",
            "heartbeat": str(self.heartbeat_ms),
            "since": str(self.last_seq),
        })
        return f"{self._base}/{quote(self.db, safe='')}/_changes?{query}".encode("ascii")

    # -- connection lifecycle -----------------------------------------------------------

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            if self._on_state is not None:
                self._on_state(self)

    def _cancel_timer(self, name: str) -> None:
        call = getattr(self, name)
        setattr(self, name, None)
        if call is not None and call.active():
            call.cancel()

    def _arm_watchdog(self) -> None:
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.reset(self.watchdog_seconds)
        else:
            self._watchdog = self._clock.callLater(self.watchdog_seconds, self._stalled)

    def _stalled(self) -> None:
        self._watchdog = None
        self._log.warn("changes feed of {db} silent for {seconds}s; reconnecting",
                       db=self.db, seconds=self.watchdog_seconds)
        self.last_error = "heartbeat timeout"
        self._stall_abort = True
        if self._request is not None:
            request, self._request = self._request, None
            request.cancel()  # errback -> _request_failed -> _schedule_reconnect
        elif self._body is not None:
            self._body.abort()  # connectionLost -> _body_ended -> _schedule_reconnect

    def _connect(self) -> None:
        if not self._running:
            return
        if self._busy is not None:
            # A change of the last stream is still being processed: connecting now would
            # resume before it and route it twice.
            self._connect_when_idle = True
            return
        self._stall_abort = False
        self._requested_at = self._clock.seconds()
        if self._reading_backlog():
            return
        self._set_state(self.CONNECTING if self.reconnects == 0 else self.RECONNECTING)
        headers = Headers(couch_headers(self._admin_auth))
        self._arm_watchdog()
        if self.last_seq == "now":  # our own marker: CouchDB never names a seq "now"
            url, answered = self.position_url(), self._got_position
        else:
            url, answered = self.url(), self._got_response
        d = self._agent.request(b"GET", url, headers, None)
        self._request = d
        d.addCallbacks(answered, self._request_failed, callbackArgs=(d,), errbackArgs=(d,))

    def _got_position(self, response, d) -> None:
        if self._request is not d:
            return
        if response.code != 200:
            self._request = None
            self._refused(response)
            return
        body = readBody(response)
        self._request = body
        body.addCallbacks(self._read_position, self._request_failed,
                          callbackArgs=(body,), errbackArgs=(body,))

    def _read_position(self, data: bytes, d) -> None:
        if self._request is not d:
            return
        self._request = None
        try:
            seq = jsonutil.loads(data)["last_seq"]
        except (ValueError, KeyError, TypeError):
            seq = None
        if seq is None or seq == "now":
            self.last_error = "CouchDB gave no last_seq"
            self._log.warn("changes feed of {db}: no last_seq in the answer", db=self.db)
            self._schedule_reconnect()
            return
        self.missing = False
        self.last_seq = seq
        self._live(self._requested_at)  # everything before the question is before seq
        self._connect()

    def _refused(self, response) -> None:
        self.missing = response.code == 404
        self.last_error = f"HTTP {response.code}" + self._credentials_hint(response.code)
        self._log.warn("changes feed of {db} answered {error}; retrying",
                       db=self.db, error=self.last_error)
        # Drain and drop the body; the connection is not reused for the stream.
        response.deliverBody(_Discard())
        self._schedule_reconnect()

    def _credentials_hint(self, code: int) -> str:
        """What an operator should look at when CouchDB refuses the feed."""
        if code in (401, 403):
            return (": CouchDB refused the credentials; COUCHDB_ADMIN_AUTH is "
                    + ("wrong or lacks admin rights" if self._admin_auth else "probably missing"))
        if code == 500 and not self._admin_auth:
            # pouchdb-server answers 500 for _users without admin credentials
            return ": COUCHDB_ADMIN_AUTH is probably missing (an admin reads _changes)"
        return ""

    def _got_response(self, response, d) -> None:
        if self._request is not d:
            return
        self._request = None
        if response.code != 200:
            self._refused(response)
            return
        self._arm_watchdog()
        self.last_error = None
        self.missing = False
        self.last_byte_at = self._clock.seconds()  # the headers: silence counts from them
        self._delivered = False
        self._set_state(self.CONNECTED)
        response.deliverBody(_FeedBody(self))

    def _request_failed(self, failure, d) -> None:
        if self._request is d:
            self._request = None
        elif not failure.check(CancelledError):
            return  # a stale request (already replaced)
        if not self._running:
            return
        if not self._stall_abort:
            self.last_error = describe_failure(failure)
            self._log.warn("changes feed of {db} failed to connect: {error}",
                           db=self.db, error=self.last_error)
        self._schedule_reconnect()

    def _body_started(self, body: _FeedBody) -> None:
        self._body = body
        self._parser = LineParser(self._line, on_overflow=self._overflow)

    def _body_data(self, body: _FeedBody, data: bytes) -> None:
        if body is not self._body:
            return
        if not self._delivered:
            self._delivered = True
            self._backoff.reset()
        self.last_byte_at = self._clock.seconds()
        if not self._paused:
            self._arm_watchdog()
        self._parser.feed(data)

    def _body_ended(self, body: _FeedBody, reason) -> None:
        if body is not self._body:
            return
        self._body = None
        self._drop_held()  # read again from the resume point
        if not self._running:
            return
        if not reason.check(ResponseDone) and not self._stall_abort:
            self.last_error = "stream ended: " + describe_failure(reason)
        self._log.info("changes feed of {db} ended; reconnecting", db=self.db)
        self._schedule_reconnect()

    def _schedule_reconnect(self) -> None:
        self._fell_behind()
        self._cancel_timer("_watchdog")
        if not self._running or self._retry is not None:
            return
        self.reconnects += 1
        self._set_state(self.RECONNECTING)
        delay = self._backoff.next_delay()
        self._retry = self._clock.callLater(delay, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        self._connect()

    def silent_seconds(self) -> Optional[float]:
        """Seconds since the stream's last byte (a change, a heartbeat, or its headers),
        while connected (not while the backlog is read: no stream)."""
        if self.state != self.CONNECTED or self.last_byte_at is None or self.catching_up:
            return None
        return max(0.0, self._clock.seconds() - self.last_byte_at)

    @property
    def health(self) -> str:
        """
        The state as the status reports it: ``missing`` (the database does not exist),
        ``stalled`` (connected, but nothing, not even a heartbeat, for more than
        :data:`STALLED_HEARTBEATS` heartbeats: the watchdog reconnects at 3), else
        :attr:`state`.  A paused stream (changes waiting to be processed) is not stalled.
        """
        if self.missing:
            return "missing"
        silent = self.silent_seconds()
        if silent is not None and not self._paused and \
                silent > STALLED_HEARTBEATS * self.heartbeat_ms / 1000.0:
            return "stalled"
        return self.state

    def status(self) -> dict:
        silent = self.silent_seconds()
        return {
            "state": self.health,
            "lastSeq": self.last_seq,
            "reconnects": self.reconnects,
            "lastError": self.last_error,
            "lastByteSecondsAgo": None if silent is None else round(silent, 1),
            "catchingUp": self.catching_up,
        }


class _Discard(Protocol):
    def connectionLost(self, reason):
        pass

