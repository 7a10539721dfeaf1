"""
Wiring: a :class:`realtime.config.Config` becomes a running service tree.

``make_service(config, reactor)`` returns a ``MultiService`` holding, in start order:
the embedded pouchdb-server (only when asked for), the broker, the changes followers, the
server heartbeat, and the web site on every listening endpoint.  The objects themselves are
built by :mod:`realtime.assembly` (the gateway and its collaborators, the site); this
module starts and stops them, listens, and turns a start-up failure into one line and an
exit status.
"""

from __future__ import annotations

import gc
import os
import sys

from twisted.application import internet, service
from twisted.internet import endpoints
from twisted.internet.defer import CancelledError
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.web.client import Agent

from realtime.assembly import make_parts, make_web
from realtime.cluster import ClusterState
from realtime.config import ConfigError
from realtime.dev import benchhook
from realtime.feeds.changes import ChangesFollower
from realtime.http.client import QuietPool
from realtime.transport import keepalive
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
        keepalive.keep_alive(gateway.connections(), gateway.now(),
                             keepalive.pong_timeout(gateway.config.ws_heartbeat_ms / 1000.0))
    except Exception:
        _log.failure("keep-alive pings failed")


def make_heartbeat_service(gateway, clock) -> internet.TimerService:
    """
    Each heartbeat: the server's ``ping`` message to every authenticated connection, and a
    WebSocket ping to every open one (a connection whose last ping went unanswered for a
    heartbeat, at least 2 s, is dropped: :func:`realtime.transport.keepalive.keep_alive`).
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


#: the collector's thresholds in a server process (CPython's defaults: 700, 10, 10)
GC_THRESHOLDS = (50_000, 50, 100)


def tune_gc() -> None:
    """
    Set the cyclic garbage collector for a server (called once, when the service tree is
    built, by :func:`realtime.tap.makeService`; never in tests): what exists by then (the
    modules, the wiring) is frozen out of every later collection (``gc.freeze``), and the
    young generation is collected every 50,000 allocations instead of 700.

    Why: a connection's setup allocates a few hundred container objects (Autobahn's
    handshake, the session, the JWT claims) and keeps a few dozen; with the defaults, a
    reconnect storm of 10,000 clients ran a young collection every two or three connections,
    and a gateway holding 1,000 connections ran a full collection about once a second while
    resume replays parsed their batches, each up to about 100 ms of a stopped reactor.
    Measured, interleaved: about 15 % less CPU per connection set up (``python -m
    benchmarks.setup_probe --servers gateway --n 10000``), the live p99 under ten replays
    halved (``python -m benchmarks.resume_bench --only live``), the same idle memory per
    connection.  Reference cycles are still collected, only in larger batches: at most the
    garbage of 50,000 allocations waits (a few MB).
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


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
    # The feeds use a plain Agent (no gzip: see realtime.feeds.changes) with their own pool.
    feeds_agent = Agent(reactor, pool=QuietPool(reactor, persistent=False))
    feeds_ready = FeedsReady(on_ready) if on_ready is not None else None
    parts = make_parts(config, reactor, feeds_agent=feeds_agent,
                       on_feed_state=feeds_ready and feeds_ready.state_changed)
    if feeds_ready is not None:
        feeds_ready.watch(parts.followers)
    gateway = parts.gateway

    ClusterService(parts.cluster).setServiceParent(top)
    _FollowersService(parts.followers, ready).setServiceParent(top)
    make_heartbeat_service(gateway, reactor).setServiceParent(top)
    web = make_web(parts, config)
    ShutdownService(gateway).setServiceParent(top)
    for description in config.listen:
        endpoint = parse_endpoint(reactor, description)
        ListenerService(description, endpoint, web.listener, startup).setServiceParent(top)

    # Benchmark hook (realtime.dev.benchhook): off unless REALTIME_BENCH_TRIGGER is set.
    if config.bench_trigger:
        benchhook.make_trigger_service(reactor, gateway, config.bench_trigger).setServiceParent(top)
    return top
