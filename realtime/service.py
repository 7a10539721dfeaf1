"""
Wiring: a :class:`realtime.config.Config` becomes a running service tree.

``make_service(config, reactor)`` returns a ``MultiService`` holding, in start order:
the embedded pouchdb-server (only when asked for), the broker, the changes followers, the
server heartbeat, and the web site on every listening endpoint.  The core objects get plain
arguments; only this module knows about the Config and the reactor.
"""

from __future__ import annotations

import os
import sys
from http.cookiejar import CookieJar, DefaultCookiePolicy

import treq.client
from twisted.application import internet, service
from twisted.internet import endpoints
from twisted.internet.defer import CancelledError
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool

from realtime.auth import jwks, revocation, signing
from realtime.auth.authenticator import Authenticator
from realtime.auth.couchsession import CouchSessionChecker
from realtime.auth.jwt_verifier import JWTVerifier
from realtime.cluster import ClusterState, make_cluster_state
from realtime.config import ConfigError
from realtime.databases import rules as rules_module
from realtime.databases.application import ApplicationDatabases
from realtime.databases.readers import CouchRevisions
from realtime.databases.writer import CouchDocuments, DocumentWriter, WriteMetrics
from realtime.dev import benchhook
from realtime.feeds.changes import ChangesFollower
from realtime.feeds.replay import AppDatabaseReplay, ChangesReader, Replayer
from realtime.feeds.routing import utc_timestamp
from realtime.http.channel import PendingConnections
from realtime.http.pages import make_pages
from realtime.http.rest import make_api
from realtime.http.site import make_site
from realtime.hub import registry as registry_module
from realtime.hub.gateway import Gateway
from realtime.metrics import Metrics
from realtime.transport import fastpath
from realtime.transport import websocket as protocol
from realtime.vocabulary import CLOSE_SHUTDOWN

_log = Logger()


#: the exit status of a start-up failure an operator caused (systemd: RestartPreventExitStatus)
EXIT_STARTUP_FAILED = 2


class Startup:
    """
    What a start-up failure does.  A failure an operator causes after the options were
    read (a listener that cannot listen, the embedded CouchDB that cannot start) prints
    one line on stderr, ``realtime: <what>: <why>``, stops the reactor (so every service
    stops, the embedded CouchDB included) and ends the process with
    :data:`EXIT_STARTUP_FAILED` once the shutdown is over.  Never a traceback, never a
    server left half running.  (Failures found while the service tree is built, such as a
    bad option or endpoint string, are :class:`ConfigError`: :mod:`realtime.tap` reports
    them the same way before anything starts.)

    :param exit: called with the status after the shutdown (``os._exit``: twistd itself
        would end with 0).
    """

    _log = Logger()

    def __init__(self, reactor, stderr=None, exit=os._exit):
        self._reactor = reactor
        self._stderr = stderr
        self._exit = exit
        self.failed = None  # the message, once failed

    def fail(self, message: str) -> None:
        if self.failed is not None:
            return
        self.failed = message
        stderr = self._stderr or sys.__stderr__ or sys.stderr
        stderr.write(f"realtime: {message}\n")
        stderr.flush()
        self._log.error("start-up failed: {message}", message=message)
        self._reactor.addSystemEventTrigger("after", "shutdown", self._end)
        if self._reactor.running:
            self._reactor.stop()
        else:
            self._reactor.callWhenRunning(self._reactor.stop)

    def _end(self) -> None:
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            try:
                stream.flush()
            except Exception:
                pass
        self._exit(EXIT_STARTUP_FAILED)


def listen_error_text(failure) -> str:
    """Why a listener could not listen, in a few words (no traceback)."""
    error = failure.value
    if isinstance(error, CannotListenError) and error.socketError is not None:
        socket_error = error.socketError
        text = getattr(socket_error, "strerror", None) or str(socket_error)
        return text[0].lower() + text[1:] if text else type(socket_error).__name__
    return failure.getErrorMessage() or failure.type.__name__


class ListenerService(internet.StreamServerEndpointService):
    """
    A listening endpoint whose failure to listen stops the process
    (:meth:`Startup.fail`, one line naming the endpoint and why) instead of being logged
    while the rest of the server runs.
    """

    def __init__(self, description: str, endpoint, factory, startup: Startup):
        super().__init__(endpoint, factory)
        self.description = description
        self._startup = startup

    def privilegedStartService(self):
        service.Service.privilegedStartService(self)
        self._waitingForPort = self.endpoint.listen(self.factory)
        self._waitingForPort.addErrback(self._failed)

    def _failed(self, failure):
        if not failure.check(CancelledError):
            self._startup.fail(f"cannot listen on {self.description}: "
                               f"{listen_error_text(failure)}")
        return None


def parse_endpoint(reactor, description: str, option: str = "REALTIME_LISTEN"):
    """A server endpoint from its string, or :class:`ConfigError` naming it."""
    try:
        return endpoints.serverFromString(reactor, description)
    except Exception as e:  # unknown type, bad argument, a TLS key file that cannot be read
        raise ConfigError(f"{option}: cannot use {description!r}: "
                          f"{e.args[0] if e.args else type(e).__name__}") from None


def _read_key(value: str) -> bytes:
    """A PEM given inline, or the path of a file holding one."""
    if "-----BEGIN" in value:
        return value.encode("ascii")
    try:
        with open(value, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"JWT_PUBLIC_KEY: cannot read {value!r}: "
                          f"{e.strerror or type(e).__name__}") from None


def make_jwt_verifier(config, clock, http=None):
    """
    JWT auth from the config: ``JWT_SECRET`` (HMAC), else ``JWT_PUBLIC_KEY`` (PEM), else
    ``JWT_JWKS_URL`` (fetched with ``http``, a treq client); None when none is set.
    """
    key, key_source = None, None
    if config.jwt_secret:
        algorithms = config.jwt_algorithms or ("HS256",)
        key = config.jwt_secret
    elif config.jwt_public_key:
        algorithms = config.jwt_algorithms or ("RS256", "ES256")
        key = _read_key(config.jwt_public_key)
    elif config.jwt_jwks_url:
        algorithms = config.jwt_algorithms or ("RS256", "ES256")
        if http is None:
            http, _ = make_http_client(clock)
        key_source = jwks.JWKSKeySource(http, config.jwt_jwks_url, clock)
    else:
        return None
    try:
        return JWTVerifier(
            key, algorithms, audience=config.jwt_audience, issuer=config.jwt_issuer,
            user_claim=config.jwt_user_claim, roles_claim=config.jwt_roles_claim, clock=clock,
            key_source=key_source)
    except ValueError as e:  # the algorithm allow-list
        raise ConfigError(f"JWT_ALGORITHMS: {e}") from None


def no_cookies() -> CookieJar:
    """
    A cookie jar that keeps nothing.  treq's client keeps every cookie it is sent and sends
    it back; the gateway's one client makes every request: checking users' sessions
    (CouchDB refreshes a session cookie in the answer), relaying the demo's logins, and its
    own admin requests.  A kept user cookie would then ride along with those (CouchDB
    authenticates a cookie before Basic auth), or with another user's login.  Each request
    carries exactly the credentials it is given.
    """
    return CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))


def make_http_client(reactor, persistent: bool = True):
    """The gateway's treq client (``(client, pool)``); it keeps no cookie (:func:`no_cookies`)."""
    pool = HTTPConnectionPool(reactor, persistent=persistent)
    return treq.client.HTTPClient(Agent(reactor, pool=pool), cookiejar=no_cookies()), pool


def make_writer(config, reactor, http, rules, metrics) -> DocumentWriter:
    """Document writes to the application databases of ``rules``, with the gateway's
    CouchDB credentials and its shared HTTP client."""
    documents = CouchDocuments(http, config.couchdb_url, reactor,
                               admin_auth=config.couchdb_admin_auth)
    return DocumentWriter(documents, rules, reactor, metrics=WriteMetrics(metrics.registry))


def make_replayer(config, reactor, http, rules) -> Replayer:
    """Replays of the followed databases for ``resume``, with the gateway's credentials."""
    reader = ChangesReader(http, config.couchdb_url, reactor,
                           admin_auth=config.couchdb_admin_auth)
    return Replayer(reader, reactor, followed=followed_databases(config, rules),
                    databases={db: AppDatabaseReplay(db, rule) for db, rule in rules.items()},
                    max_changes=config.resume_max_changes,
                    concurrency=config.resume_concurrency)


def make_gateway(config, reactor, http=None, broker=None, metrics=None,
                 rules=None) -> Gateway:
    """
    The gateway and its collaborators, without any listening socket or feed.  With
    ``config.redis_url`` the broker, presence, revocations and signed-message nonces live in
    Redis (``gateway.cluster``, to be started and stopped: :class:`ClusterService`); a
    ``broker`` given replaces the configured one.  ``rules``: the application databases'
    rules (a :class:`realtime.databases.rules.RuleSet`; by default the rule file's,
    ``config.config``).
    """
    if http is None:
        http, _ = make_http_client(reactor)
    if metrics is None:
        metrics = Metrics()
    if rules is None:
        rules = config.config or rules_module.EMPTY
    registry = registry_module.Registry()
    cluster = make_cluster_state(config, reactor, registry)
    if broker is not None:
        cluster.broker = broker
    session_checker = CouchSessionChecker(http, config.couchdb_url, clock=reactor)
    authenticator = Authenticator(
        jwt_verifier=make_jwt_verifier(config, reactor, http),
        session_checker=session_checker,
        allowed_origins=config.cors_origins,
        revocations=cluster.revocations,
    )
    databases = make_databases(config, reactor, registry, http, metrics, rules)
    gateway = Gateway(config, reactor, registry, cluster.broker, authenticator,
                      metrics=metrics, presence=cluster.presence,
                      writer=make_writer(config, reactor, http, rules, metrics),
                      history=cluster.history, databases=databases,
                      replayer=make_replayer(config, reactor, http, rules))
    gateway.cluster = cluster
    gateway.revoker = revocation.Revoker(cluster.revocations, cluster.broker, reactor)
    if config.ws_signed_messages:
        gateway.message_verifier = signing.MessageVerifier(cluster.nonces, reactor)
    return gateway


def _rules_of(gateway):
    """The application databases' rules the gateway follows (empty: none)."""
    return gateway.databases.rules if gateway.databases is not None else rules_module.EMPTY


def make_databases(config, reactor, registry, http, metrics, rules):
    """The application databases of ``rules`` (the rule file's), or None when empty."""
    if not rules:
        return None
    revisions = CouchRevisions(http, config.couchdb_url, config.couchdb_admin_auth,
                               clock=reactor)
    return ApplicationDatabases(rules, registry, revisions,
                                lambda: utc_timestamp(reactor.seconds()),
                                index_size=config.readers_index_size,
                                on_error=metrics.error)


def followed_databases(config, rules=()) -> tuple:
    """``REALTIME_WATCH_DATABASES`` then the databases of the rules, each once."""
    names = list(config.watch_databases)
    for db in rules:
        if db not in names:
            names.append(db)
    return tuple(names)


class _FollowersService(service.Service):
    """Starts the changes followers (after ``ready``, if given) and stops them."""

    def __init__(self, followers, ready=None):
        self._followers = followers
        self._ready = ready

    def startService(self):
        super().startService()
        if self._ready is None:
            for follower in self._followers:
                follower.start()
        else:
            self._ready().addCallback(lambda _: [f.start() for f in self._followers if self.running])

    def stopService(self):
        super().stopService()
        for follower in self._followers:
            follower.stop()


class ClusterService(service.Service):
    """Starts the broker and presence (Redis connections, lease renewal); stops them."""

    def __init__(self, cluster: ClusterState):
        self._cluster = cluster

    def startService(self):
        super().startService()
        self._cluster.start()

    def stopService(self):
        super().stopService()
        return self._cluster.stop()


class ShutdownService(service.Service):
    """
    On stop, closes every WebSocket with 4200 ("server shutting down: reconnect now, with
    jitter") and waits, a few seconds at most, for the clients to close.  It stops after
    the listeners (it is added before them), so no new connection arrives meanwhile.
    """

    def __init__(self, gateway, timeout: float = 3.0):
        self._gateway = gateway
        self._timeout = timeout

    def stopService(self):
        super().stopService()
        return self._gateway.close_all(CLOSE_SHUTDOWN, "server shutting down",
                                       self._timeout)


def _safe_heartbeat(gateway):
    try:
        gateway.heartbeat()
    except Exception:
        _log.failure("server heartbeat failed")
    try:
        protocol.keep_alive(gateway.connections(), gateway.now(),
                            protocol.pong_timeout(gateway.config.ws_heartbeat_ms / 1000.0))
    except Exception:
        _log.failure("keep-alive pings failed")


def make_heartbeat_service(gateway, clock) -> internet.TimerService:
    """
    Each heartbeat: the server's ``ping`` message to every authenticated connection, and a
    WebSocket ping to every open one (a connection whose last ping went unanswered for a
    heartbeat, at least 2 s, is dropped: :func:`realtime.transport.websocket.keep_alive`).
    """
    heartbeat = internet.TimerService(gateway.config.ws_heartbeat_ms / 1000.0,
                                      _safe_heartbeat, gateway)
    heartbeat.clock = clock
    return heartbeat


class FeedsReady:
    """
    Tells ``on_ready(followers)`` once, the first time every feed is connected: the moment
    the gateway serves what it promises (until then the status says ``degraded``).
    """

    def __init__(self, on_ready):
        self._on_ready = on_ready
        self._followers = ()
        self.done = False

    def watch(self, followers) -> None:
        self._followers = tuple(followers)
        self.state_changed(None)

    def state_changed(self, _follower) -> None:
        if self.done or not self._followers:
            return
        if all(f.state == ChangesFollower.CONNECTED for f in self._followers):
            self.done = True
            try:
                self._on_ready(self._followers)
            except Exception:
                _log.failure("announcing readiness failed")


def make_followers(config, reactor, gateway, agent, on_state=None):
    followers = []
    rules = gateway.databases.rules if gateway.databases is not None else ()
    for db in followed_databases(config, rules):
        followers.append(ChangesFollower(
            agent, reactor, config.couchdb_url, db, gateway.on_change,
            admin_auth=config.couchdb_admin_auth, heartbeat_ms=config.couchdb_heartbeat_ms,
            on_state=on_state))
    return followers


def make_service(config, reactor=None, ready=None, startup=None,
                 on_ready=None) -> service.MultiService:
    """
    :param ready: optional callable returning a Deferred that fires when CouchDB can be
        reached (the embedded server's start); the feeds start after it.
    :param startup: the :class:`Startup` told when a listener cannot listen (default: one
        that ends the process).
    :param on_ready: optional ``on_ready(followers)``, called once when every feed is first
        connected (:class:`FeedsReady`).
    :raises ConfigError: an option that cannot be used (an endpoint string, a key file).
    """
    if reactor is None:
        from twisted.internet import reactor
    if startup is None:
        startup = Startup(reactor)
    top = service.MultiService()
    http, _ = make_http_client(reactor)
    gateway = make_gateway(config, reactor, http=http)
    top.gateway = gateway

    ClusterService(gateway.cluster).setServiceParent(top)

    # The feeds use a plain Agent (no gzip: see realtime.feeds.changes) with their own pool.
    feed_pool = HTTPConnectionPool(reactor, persistent=False)
    feeds_ready = FeedsReady(on_ready) if on_ready is not None else None
    followers = make_followers(config, reactor, gateway, Agent(reactor, pool=feed_pool),
                               on_state=feeds_ready and feeds_ready.state_changed)
    if feeds_ready is not None:
        feeds_ready.watch(followers)
    gateway.followers = followers
    _FollowersService(followers, ready).setServiceParent(top)

    make_heartbeat_service(gateway, reactor).setServiceParent(top)

    factory = protocol.make_factory(gateway)
    site = make_site(gateway, factory, api_resource=make_api(gateway),
                     pages=make_pages(gateway, http, config, rules=_rules_of(gateway)))
    # /ws handshakes go straight to Autobahn, the rest to the site (realtime.transport.fastpath)
    listener = fastpath.WebSocketFirstFactory(
        site, factory, clock=gateway.timers,
        pending=PendingConnections(config.max_pending_connections))
    ShutdownService(gateway).setServiceParent(top)
    for description in config.listen:
        endpoint = parse_endpoint(reactor, description)
        ListenerService(description, endpoint, listener, startup).setServiceParent(top)

    # Benchmark hook (realtime.dev.benchhook): off unless REALTIME_BENCH_TRIGGER is set.
    if config.bench_trigger:
        benchhook.make_trigger_service(reactor, gateway, config.bench_trigger).setServiceParent(top)
    return top
