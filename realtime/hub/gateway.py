"""
The gateway: the shared objects every connection reaches through its factory.

It holds the registry, the broker, the authenticator, the changes followers and the clock,
admits connections (per-user limit, single session), and reports status.  CouchDB changes
become deliveries in :mod:`realtime.feeds.dispatch`.  It never reads the environment:
:mod:`realtime.service` builds it from a :class:`realtime.config.Config`.
"""

from __future__ import annotations

import itertools
import os

from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred, succeed
from twisted.logger import Logger

from realtime import jsonutil
from realtime.feeds.dispatch import ChangeDispatch
from realtime.hub.history import MemoryHistory
from realtime.hub.presence import LocalPresence
from realtime.metrics import Metrics
from realtime.timerwheel import TimerWheel
from realtime.vocabulary import (
    CLOSE_REPLACED,
    all_event,
    disconnect_event,
    request_ref,
    utc_timestamp,
    with_ref,
)

#: answers of :meth:`Gateway.admit`
ADMITTED = "admitted"
TOO_MANY_CONNECTIONS = "too_many_connections"
REPLACED = "replaced"


class Gateway:
    """
    The hub of one process, as every connection and the REST API see it.  Everything it
    holds is given here, by :func:`realtime.assembly.make_parts` (tests: ``tests/fakes.py``);
    nothing is attached afterwards.

    :param config: the :class:`realtime.config.Config` (limits, single-session mode).
    :param clock: the reactor (or a ``Clock`` in tests).
    :param registry: this process's connections (:class:`realtime.hub.registry.Registry`).
    :param broker: events to every process (:class:`realtime.hub.broker.IBroker`).
    :param authenticator: credentials to identities (:mod:`realtime.auth.authenticator`).
    :param metrics: the :class:`realtime.metrics.Metrics` (one per gateway).
    :param presence: who is connected, as the REST API asks it (cluster-wide with a Redis
        presence); default: this process's :class:`LocalPresence`.
    :param history: message history for resume (:class:`realtime.hub.history.IHistory`).
    :param dispatch: CouchDB changes to deliveries and roles
        (:class:`realtime.feeds.dispatch.ChangeDispatch`); default: one over ``registry``
        and ``databases``.
    :param followers: the changes followers (status, metrics, ``connected.seqs``).
    :param revoker: token revocation for the REST API (:class:`realtime.auth.revocation.Revoker`).
    :param message_verifier: signed messages (:class:`realtime.auth.signing.MessageVerifier`),
        None when they are off.
    :param writer: document writes (:class:`realtime.databases.writer.DocumentWriter`), None: none.
    :param databases: the application databases of the rule file, None when there are none.
    :param replayer: replays of CouchDB changes for resume (:mod:`realtime.feeds.replay`).
    """

    _log = Logger()

    def __init__(self, config, clock, registry, broker, authenticator, *, metrics=None,
                 presence=None, history=None, dispatch=None, followers=(), revoker=None,
                 message_verifier=None, writer=None, databases=None, replayer=None):
        self.config = config
        self.clock = clock
        # The per-connection timers (first-line and auth timeouts, JWT expiry, revalidation)
        # run on one timer wheel: a small entry each instead of a reactor DelayedCall.
        self.timers = TimerWheel(clock)
        self.registry = registry
        self.broker = broker
        self.authenticator = authenticator
        # Metrics: one per gateway (its own Prometheus registry); deliveries are counted by
        # type where the registry makes them (its ``on_delivered``), whichever path the
        # event took.
        self.metrics = metrics if metrics is not None else Metrics()
        self.metrics.watch(self)
        self.presence = presence if presence is not None else LocalPresence(clock)
        self.history = history if history is not None else MemoryHistory(clock)
        self.databases = databases
        self.dispatch = (dispatch if dispatch is not None
                         else ChangeDispatch(registry, clock, databases))
        self.followers = tuple(followers)
        self.revoker = revoker
        self.message_verifier = message_verifier
        self.writer = writer
        self.replayer = replayer
        self.started_at = clock.seconds()
        self._open = set()  # every open WebSocket, authenticated or not
        self._drained = []  # Deferreds waiting for the last connection to close
        self._ids = itertools.count(1)
        self._process_tag = os.urandom(4).hex()

    # -- connections --------------------------------------------------------------------

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def connections(self) -> list:
        """Every open WebSocket (a copy), authenticated or not."""
        return list(self._open)

    def connection_opened(self, conn) -> None:
        self._open.add(conn)

    def connection_closed(self, conn) -> None:
        self._open.discard(conn)
        if not self._open and self._drained:
            waiting, self._drained = self._drained, []
            for d in waiting:
                if not d.called:
                    d.callback(None)

    def close_all(self, code: int, reason: str, timeout: float = 3.0) -> Deferred:
        """
        Close every open connection with ``code`` (shutdown: 4200, "reconnect now with
        jitter"); fires when the last one has closed, or after ``timeout`` seconds.  At the
        timeout, the connections still open (clients that do not read, and so never get
        the close frame) are aborted, and the Deferred fires once (it is no longer waiting
        for them: a connection closing later does not fire it again).
        """
        for conn in list(self._open):
            conn.close_with(code, reason)
        if not self._open:
            return succeed(None)
        d = Deferred()
        self._drained.append(d)

        def timed_out():
            if d in self._drained:
                self._drained.remove(d)
            for conn in list(self._open):
                try:
                    conn.abort()
                except Exception:
                    self._log.failure("aborting a connection at shutdown failed")
            if not d.called:
                d.callback(None)

        timer = self.clock.callLater(timeout, timed_out)
        return d.addBoth(lambda result: (timer.active() and timer.cancel(), result)[1])

    def new_connection_id(self) -> str:
        return f"{self._process_tag}-{next(self._ids)}"

    def now(self) -> float:
        return self.clock.seconds()

    def timestamp(self) -> str:
        return utc_timestamp(self.clock.seconds())

    # -- admission (per-user limit, single session), across processes -------------------

    def admit(self, conn, identity) -> Deferred:
        """
        Decide whether an authenticated connection may join; record it in presence if so.
        Fires with ADMITTED, TOO_MANY_CONNECTIONS (the user has ``ws_max_connections_per_user``
        connections in the whole deployment) or REPLACED (single-session mode: a newer
        session of the user was announced meanwhile).

        Single-session mode: the connection gets a session number that grows across the
        deployment, and a ``disconnect`` event with ``before`` = that number closes the
        user's older connections on every process (4004).  When the broker cannot publish
        (Redis away), the older connections of this process are still replaced and the
        connection is admitted (logged): a Redis blip must not lock users out.  The
        per-user limit does not apply in that mode (a new session replaces the old ones).
        """
        return maybeDeferred(self.admit_now, conn, identity)

    @property
    def revocation_at_admission(self) -> bool:
        """
        Whether a handshake's token is checked for revocation by its admission, in the same
        Redis round trip (presence's admission script looks the revocation key up:
        :meth:`RedisPresence.connection_opened`), instead of a revocation lookup of its own
        before the handshake is answered.  True when both live in Redis.  The handshake
        then skips that lookup (``Authenticator.authenticate_now(..., revocation_later=True)``)
        and the session passes ``revocation_pending`` to :meth:`admit_now`.
        """
        revocations = getattr(self.authenticator, "revocations", None)
        return (hasattr(revocations, "admission_key")
                and getattr(self.presence, "checks_revocation_keys", False))

    def admit_now(self, conn, identity, revocation_pending: bool = False):
        """
        :meth:`admit`, answered at once when presence can answer at once (one process, no
        Redis: the verdict itself); else a Deferred of it, as :meth:`admit` gives.

        ``revocation_pending``: the identity's token has not been checked for revocation yet
        (see :attr:`revocation_at_admission`); it is checked with the admission, and the
        Deferred fails with ``AuthFailure`` ("revoked", or "unavailable" when Redis cannot
        say) instead of admitting it.
        """
        token_id = identity.token_id if revocation_pending else None
        if token_id is not None and not self.revocation_at_admission:
            raise ValueError("revocation_pending without a presence that checks it")
        if not self.config.ws_single_session:  # every connection's path: no generator
            presence = self.presence
            limit = self.config.ws_max_connections_per_user
            if token_id is not None:
                key = self.authenticator.revocations.admission_key(token_id)
                d = maybeDeferred(presence.connection_opened, conn.connection_id,
                                  identity.user_id, limit, revoked_key=key)
                return d.addCallback(lambda ok: ADMITTED if ok else TOO_MANY_CONNECTIONS)
            opened_now = getattr(presence, "connection_opened_now", None)
            if opened_now is not None:
                ok = opened_now(conn.connection_id, identity.user_id, limit)
                return ADMITTED if ok else TOO_MANY_CONNECTIONS
            d = maybeDeferred(presence.connection_opened, conn.connection_id,
                              identity.user_id, limit)
            return d.addCallback(lambda ok: ADMITTED if ok else TOO_MANY_CONNECTIONS)
        if token_id is not None:  # checked first, then the single-session admission
            d = self.authenticator.check_revocation(identity)
            return d.addCallback(lambda _: self._admit_single_session(conn, identity))
        return self._admit_single_session(conn, identity)

    @inlineCallbacks
    def _admit_single_session(self, conn, identity):
        user_id = identity.user_id
        seq = yield self.presence.new_session(user_id)
        conn.session_seq = seq
        event = disconnect_event(user_id, CLOSE_REPLACED, "replaced by a newer session",
                                 before=seq)
        try:
            yield self.broker.publish(event)
        except Exception as e:
            self._log.warn("single session: cannot reach other processes ({error}); "
                           "replacing this process's sessions only", error=str(e))
            self.registry.dispatch(event)
        yield self.presence.connection_opened(conn.connection_id, user_id, None)
        if self.registry.replaced(user_id, seq):
            self.presence.connection_closed(conn.connection_id, user_id)
            return REPLACED
        return ADMITTED

    def connection_left(self, conn, user_id) -> None:
        """An admitted connection closed: forget it in presence."""
        self.presence.connection_closed(conn.connection_id, user_id)

    # -- what connections ask of the hub ---------------------------------------------

    def connection_roles_changed(self, conn, old_roles) -> None:
        """A connection's roles changed (a refreshed token): see :class:`ChangeDispatch`."""
        self.dispatch.connection_roles_changed(conn, old_roles)

    def subscribe_database_topic(self, conn, topic: str, message: dict) -> None:
        """``subscribe`` to ``doc:`` / ``db:`` (answered on ``conn``)."""
        if self.databases is None:
            conn.send_json(with_ref({"type": "error", "code": "forbidden",
                                     "message": "you may not subscribe to this topic",
                                     "topic": topic}, request_ref(message)))
            self.metrics.error("forbidden")
            return
        self.databases.subscribe(conn, topic, message)

    def heartbeat(self) -> int:
        """Send the server's ``ping`` message to every authenticated connection (framed once)."""
        message = {"type": "ping", "timestamp": self.timestamp()}
        return self.registry.dispatch(all_event(jsonutil.dumps_text(message), "ping"))

    # -- status -------------------------------------------------------------------------

    def couchdb_status(self, detail: bool = False) -> dict:
        """The feeds' state; ``detail`` adds each feed's reconnects and last error (admin)."""
        states = [f.health for f in self.followers]
        if not states:
            state = "off"
        elif all(s == "connected" for s in states):
            state = "connected"
        else:
            state = next(s for s in states if s != "connected")
        body = {
            "state": state,
            "lastSeq": {f.db: f.last_seq for f in self.followers},
            "databases": {f.db: {"state": f.health,
                                 "lastSeq": f.last_seq} for f in self.followers},
        }
        if detail:
            body["feeds"] = {f.db: f.status() for f in self.followers}
        return body

    def status(self, detail: bool = False) -> dict:
        """
        Health for ``GET /websocket/status``.  Public by default; ``detail`` (admin
        credentials) adds each feed's reconnects and last error, which may name internal
        hosts.  Connection counts are this process's (presence has the cluster's).
        """
        uptime = self.clock.seconds() - self.started_at
        body = {
            "status": "healthy" if self.couchdb_status()["state"] in ("connected", "off")
            and self.broker.state == "up" else "degraded",
            "connections": {
                "total": self.open_connections,
                "authenticated": len(self.registry),
            },
            "uptime": _uptime_text(uptime),
            "uptimeSeconds": round(uptime, 3),
            "couchdb": self.couchdb_status(detail),
            "redis": {"state": self.broker.redis_state},
        }
        return body


def _uptime_text(seconds: float) -> str:
    seconds = int(seconds)
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    parts = []
    if days:
        parts.append(f"{days}d")
    if days or hours:
        parts.append(f"{hours}h")
    if days or hours or minutes:
        parts.append(f"{minutes}m")
    parts.append(f"{seconds}s")
    return " ".join(parts)
