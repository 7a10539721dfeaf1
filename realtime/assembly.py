"""
Assembly: a :class:`realtime.config.Config` becomes the gateway's objects, built once and
connected through their constructors, with no listening socket, no started service and no
running feed.

:func:`make_parts` builds, in order: the metrics, the registry, the shared state of the
deployment (memory or Redis: :mod:`realtime.cluster`), the authenticator, the application
databases, the change dispatch and the changes followers, then the :class:`Gateway` holding
them all; :func:`make_web` builds what serves them (the WebSocket factory, the site with the
REST API and the pages, the first-line listener).  :mod:`realtime.service` puts these into a
service tree; the test harness (``tests/harness.py``) runs the same parts on its reactor, so
that tests see the gateway production builds.
"""

from __future__ import annotations

import dataclasses
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Callable, Optional

import treq.client
from twisted.web.client import Agent

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
from realtime.feeds.changes import ChangesFollower
from realtime.feeds.couchreads import ChangesReader
from realtime.feeds.dispatch import ChangeDispatch
from realtime.feeds.pacing import Turns
from realtime.feeds.replay import AppDatabaseReplay, Replayer
from realtime.feeds.routing import utc_timestamp
from realtime.http.channel import PendingConnections
from realtime.http.client import QuietPool
from realtime.http.pages import make_pages
from realtime.http.rest import make_api
from realtime.http.site import make_site
from realtime.hub.gateway import Gateway
from realtime.hub.registry import Registry
from realtime.metrics import Metrics
from realtime.transport import fastpath
from realtime.transport import websocket as protocol


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
    pool = QuietPool(reactor, persistent=persistent)
    return treq.client.HTTPClient(Agent(reactor, pool=pool), cookiejar=no_cookies()), pool


# -- the auth side ------------------------------------------------------------------------

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


def make_authenticator(config, reactor, http, cluster: ClusterState, session_checker=None):
    """JWT (if configured), CouchDB sessions, the origin guard and the revocation store."""
    if session_checker is None:
        session_checker = CouchSessionChecker(http, config.couchdb_url, clock=reactor)
    return Authenticator(
        jwt_verifier=make_jwt_verifier(config, reactor, http),
        session_checker=session_checker,
        allowed_origins=config.cors_origins,
        revocations=cluster.revocations,
    )


# -- the CouchDB side ---------------------------------------------------------------------

def make_writer(config, reactor, http, rules, metrics) -> DocumentWriter:
    """Document writes to the application databases of ``rules``, with the gateway's
    CouchDB credentials and its shared HTTP client."""
    documents = CouchDocuments(http, config.couchdb_url, reactor,
                               admin_auth=config.couchdb_admin_auth)
    return DocumentWriter(documents, rules, reactor, metrics=WriteMetrics(metrics.registry))


def make_replayer(config, reactor, rules) -> Replayer:
    """Replays of the followed databases for ``resume``, with the gateway's credentials
    (a plain Agent, a pool that keeps no connection: see realtime.feeds.couchreads)."""
    agent = Agent(reactor, pool=QuietPool(reactor, persistent=False))
    turns = Turns(reactor)  # one piece of replay work per reactor turn (feeds.pacing)
    reader = ChangesReader(agent, config.couchdb_url, reactor,
                           admin_auth=config.couchdb_admin_auth, turns=turns)
    return Replayer(reader, reactor, followed=followed_databases(config, rules), turns=turns,
                    databases={db: AppDatabaseReplay(db, rule) for db, rule in rules.items()},
                    max_changes=config.resume_max_changes,
                    concurrency=config.resume_concurrency)


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


def make_followers(config, reactor, agent, on_change, rules=(), on_state=None) -> tuple:
    """One :class:`ChangesFollower` per followed database, each calling ``on_change``; an
    application database's tracks its backlog (roles are judged by time: see
    :mod:`realtime.feeds.catchup`)."""
    return tuple(
        ChangesFollower(agent, reactor, config.couchdb_url, db, on_change,
                        admin_auth=config.couchdb_admin_auth,
                        heartbeat_ms=config.couchdb_heartbeat_ms, on_state=on_state,
                        track_backlog=db in rules)
        for db in followed_databases(config, rules))


# -- the whole ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Parts:
    """What :func:`make_parts` built; ``cluster`` is started and stopped by its owner."""

    gateway: Gateway
    cluster: ClusterState
    followers: tuple
    http: object  # the treq client every CouchDB request but the feeds' goes through
    rules: object  # the application databases' RuleSet (empty: none)


def make_parts(config, reactor, http=None, feeds_agent=None, metrics=None, rules=None,
               on_feed_state=None, observe_changes: Optional[Callable] = None,
               registry=None, session_checker=None, cluster_parts=None) -> Parts:
    """
    The gateway and its collaborators.  With ``config.redis_url`` the broker, presence,
    revocations, signed-message nonces and history live in Redis (``parts.cluster``, to be
    started and stopped).

    :param http: the treq client (default: one that keeps no cookie).
    :param feeds_agent: the Agent the changes feeds stream through (no gzip: see
        :mod:`realtime.feeds.changes`); None: no feed is followed (unit tests).
    :param rules: the application databases' rules (default: the rule file's,
        ``config.config``).
    :param on_feed_state: ``on_state(follower)`` of every follower.
    :param observe_changes: ``observe(on_change) -> on_change``, wrapping what the feeds
        call (the test harness records which changes were routed).
    :param registry: replaces the new :class:`Registry` (which counts its deliveries in
        ``metrics``).
    :param session_checker: replaces the CouchDB session check (tests).
    :param cluster_parts: replaces parts of the configured shared state, by the names of
        :class:`ClusterState`'s fields (tests: ``{"broker": ...}``, a store that is down).
    """
    if http is None:
        http, _ = make_http_client(reactor)
    if metrics is None:
        metrics = Metrics()
    if rules is None:
        rules = config.config or rules_module.EMPTY
    if registry is None:
        registry = Registry(on_delivered=metrics.delivered)
    cluster = make_cluster_state(config, reactor, registry)
    if cluster_parts:
        cluster = dataclasses.replace(cluster, **cluster_parts)
    databases = make_databases(config, reactor, registry, http, metrics, rules)
    dispatch = ChangeDispatch(registry, reactor, databases)
    followers = ()
    if feeds_agent is not None:
        on_change = dispatch.on_change
        if observe_changes is not None:
            on_change = observe_changes(on_change)
        followers = make_followers(config, reactor, feeds_agent, on_change, rules,
                                   on_state=on_feed_state)
        for follower in followers:  # how current each readers index is (roles_changed)
            if databases is not None and follower.db in databases:
                databases.routers[follower.db].caught_up = follower.caught_up_time
    verifier = (signing.MessageVerifier(cluster.nonces, reactor)
                if config.ws_signed_messages else None)
    gateway = Gateway(
        config, reactor, registry, cluster.broker,
        make_authenticator(config, reactor, http, cluster, session_checker),
        metrics=metrics, presence=cluster.presence, history=cluster.history,
        dispatch=dispatch, followers=followers,
        revoker=revocation.Revoker(cluster.revocations, cluster.broker, reactor),
        message_verifier=verifier,
        writer=make_writer(config, reactor, http, rules, metrics),
        databases=databases, replayer=make_replayer(config, reactor, rules))
    return Parts(gateway, cluster, followers, http, rules)


@dataclasses.dataclass(frozen=True)
class Web:
    """What serves the gateway: the listener is what every listening endpoint is given."""

    factory: object  # the Autobahn factory (realtime.transport.websocket)
    site: object  # the twisted.web site: REST API under /websocket/, the pages
    listener: fastpath.WebSocketFirstFactory  # /ws handshakes to Autobahn, the rest to the site


def make_web(parts: Parts, config) -> Web:
    """The WebSocket factory, the site and the first-line listener of ``parts``."""
    gateway = parts.gateway
    factory = protocol.make_factory(gateway)
    site = make_site(gateway, factory, api_resource=make_api(gateway),
                     pages=make_pages(gateway, parts.http, config, rules=parts.rules))
    listener = fastpath.WebSocketFirstFactory(
        site, factory, clock=gateway.timers,
        pending=PendingConnections(config.max_pending_connections))
    return Web(factory, site, listener)
