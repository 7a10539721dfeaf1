"""
The gateway: the shared objects every connection reaches through its factory.

It holds the registry, the broker, the authenticator, the changes followers and the clock,
turns CouchDB changes into deliveries, and reports status.  It never reads the environment:
:mod:`realtime.service` builds it from a :class:`realtime.config.Config`.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from typing import List

from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred, succeed
from twisted.logger import Logger

from realtime import jsonutil
from realtime.feeds.routing import USERS_DB, router_for
from realtime.hub.history import MemoryHistory
from realtime.hub.presence import LocalPresence
from realtime.metrics import Metrics
from realtime.timerwheel import TimerWheel
from realtime.vocabulary import CLOSE_REPLACED, all_event, disconnect_event, users_event, utc_timestamp

#: answers of :meth:`Gateway.admit`
ADMITTED = "admitted"
TOO_MANY_CONNECTIONS = "too_many_connections"
REPLACED = "replaced"


class Gateway:
    _log = Logger()

    #: a :class:`realtime.auth.revocation.Revoker` (set by :func:`realtime.service.make_gateway`)
    revoker = None
    #: a :class:`realtime.auth.signing.MessageVerifier` when signed messages are on
    message_verifier = None

    def __init__(self, config, clock, registry, broker, authenticator, metrics=None,
                 presence=None, writer=None, history=None, databases=None,
                 replayer=None):
        self.config = config
        self.clock = clock
        # The per-connection timers (first-line and auth timeouts, JWT expiry, revalidation)
        # run on one timer wheel: a small entry each instead of a reactor DelayedCall.
        self.timers = TimerWheel(clock)
        self.registry = registry
        self.broker = broker
        self.authenticator = authenticator
        # Metrics: one per gateway (its own Prometheus registry); deliveries are counted by
        # type where the registry makes them, whichever path the event took.
        self.metrics = metrics if metrics is not None else Metrics()
        self.metrics.watch(self)
        registry.on_delivered = self.metrics.delivered
        # Who is connected, as the REST API asks it (cluster-wide with a Redis presence).
        self.presence = presence if presence is not None else LocalPresence(clock)
        # Document writes (realtime.databases.writer.DocumentWriter); None: no writes.
        self.writer = writer
        # Message history (offsets, resume): in Redis with a Redis cluster.
        self.history = history if history is not None else MemoryHistory(clock)
        # Replays of CouchDB changes for resume (realtime.feeds.replay); None: none.
        self.replayer = replayer
        self.followers: List = []
        # The application databases of the rule file (realtime.databases.application),
        # or None when there are none.
        self.databases = databases
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
        if not self.config.ws_single_session:  # every connection's path: no generator
            d = maybeDeferred(self.presence.connection_opened, conn.connection_id,
                              identity.user_id, self.config.ws_max_connections_per_user)
            return d.addCallback(lambda ok: ADMITTED if ok else TOO_MANY_CONNECTIONS)
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

    # -- CouchDB changes ----------------------------------------------------------------

    def on_change(self, db: str, change: dict):
        """
        Route one change and deliver it to this process's connections (every process follows
        CouchDB itself, so changes never cross the broker).  An application database's
        change may return a Deferred (its previous readers are read from CouchDB: the feed
        waits for it); otherwise the deliveries made are returned.

        A ``_users`` change also carries the user's roles to that user's live connections
        (see :meth:`user_roles_changed`).
        """
        databases = self.databases
        if databases is not None and db in databases:
            return databases.on_change(db, change)
        recipients, message = router_for(db)(change, self.clock.seconds())
        recipients = list(recipients)
        delivered = 0
        if message is not None and recipients:
            event = users_event(recipients, jsonutil.dumps_text(message), message["type"])
            delivered = self.registry.dispatch(event)  # counted by the registry hook
        if db == USERS_DB and message is not None:
            doc = change.get("doc")
            roles = ()
            if "doc" in message and isinstance(doc, dict) and isinstance(doc.get("roles"), list):
                roles = tuple(r for r in doc["roles"] if isinstance(r, str))
            self.user_roles_changed(recipients[0], roles)
        return delivered

    def user_roles_changed(self, user_id: str, roles) -> None:
        """
        The user's ``_users`` document now gives these roles (none when it was deleted):
        every live connection of the user holds them from now on (they replace the roles
        of its token or session), for reading application documents; a role lost is
        answered as :meth:`ApplicationDatabases.roles_changed` says.
        """
        roles = tuple(roles)
        for conn in self.registry.connections_of(user_id):
            if tuple(conn.roles) == roles:
                continue
            old = tuple(conn.roles)
            conn.identity = dataclasses.replace(conn.identity, roles=roles)
            self.connection_roles_changed(conn, old)

    def connection_roles_changed(self, conn, old_roles) -> None:
        """A connection's roles changed (``_users`` document, refreshed token)."""
        self.registry.reindex_roles(conn)
        if self.databases is not None:
            try:
                self.databases.roles_changed(conn, old_roles)
            except Exception:
                self._log.failure("applying a change of roles failed")

    def subscribe_database_topic(self, conn, topic: str, message: dict) -> None:
        """``subscribe`` to ``doc:`` / ``db:`` (answered on ``conn``)."""
        if self.databases is None:
            conn.send_json({"type": "error", "code": "forbidden",
                            "message": "you may not subscribe to this topic", "topic": topic})
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
