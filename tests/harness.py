"""
Test harness: real servers and real clients over loopback.

- :func:`pouchdb` starts one in-memory pouchdb-server for the whole trial run (lazily, on
  first use) and stops it by PID at exit.  Tests share it: each test uses its own user
  names (:func:`unique`), so they never see each other's documents.
- :func:`redis` does the same for a redis-server on a free port.
- :class:`GatewayHarness` runs a real gateway (site on ``127.0.0.1:0``, the feeds) on the
  reactor trial uses, and tears everything down.
- :class:`WSClient` is an Autobahn client that queues what it receives, so a test waits on
  the next message (with a bound) instead of sleeping.
"""

from __future__ import annotations

import atexit
import itertools
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import uuid

import treq.client
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import endpoints, reactor, task
from twisted.internet.defer import Deferred, DeferredQueue, inlineCallbacks
from twisted.web.client import Agent, HTTPConnectionPool

from realtime import config as config_module
from realtime import jsonutil
from realtime.assembly import make_parts, make_web, no_cookies
from realtime.dev.embedded import PouchDBServer, free_port, stop_process
from realtime.service import make_heartbeat_service

TIMEOUT = 10.0

_pouchdb = None
_redis = None
_counter = itertools.count(1)


def unique(prefix: str = "u") -> str:
    return f"{prefix}{next(_counter)}-{uuid.uuid4().hex[:8]}"


def pouchdb() -> PouchDBServer:
    """The shared pouchdb-server (started on first use)."""
    global _pouchdb
    if _pouchdb is None:
        server = PouchDBServer().start()
        atexit.register(server.stop)
        _pouchdb = server
    return _pouchdb


class RedisServer:
    """A redis-server child process on a free loopback port, no persistence (or, with
    ``appendonly``, an append-only file synced at every write: a restart keeps the data)."""

    def __init__(self, port=None, password=None, appendonly=False):
        self.port = port or free_port()
        self.password = password
        self.appendonly = appendonly
        self.process = None
        self._dir = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> "RedisServer":
        executable = shutil.which("redis-server")
        if executable is None:
            raise RuntimeError("redis-server is not installed (make test installs it)")
        self._dir = self._dir or tempfile.mkdtemp(prefix="realtime-redis-")
        args = [executable, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--dir", self._dir,
                "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always",
                "--daemonize", "no", "--loglevel", "warning"]
        if self.password:
            args += ["--requirepass", self.password]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64):
                        break
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        process, self.process = self.process, None
        stop_process(process)

    def cleanup(self) -> None:
        self.stop()
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)


def redis() -> RedisServer:
    """The shared redis-server (started on first use)."""
    global _redis
    if _redis is None:
        server = RedisServer().start()
        atexit.register(server.cleanup)
        _redis = server
    return _redis


def with_timeout(d: Deferred, seconds: float = TIMEOUT, what: str = "event") -> Deferred:
    """Fail ``d`` with a clear error if it has not fired within ``seconds``."""
    timed_out = []

    def expire():
        timed_out.append(True)
        d.cancel()

    call = reactor.callLater(seconds, expire)

    def done(result):
        if call.active():
            call.cancel()
        if timed_out:
            raise AssertionError(f"timed out after {seconds}s waiting for {what}")
        return result

    return d.addBoth(done)


class WSClientProtocol(WebSocketClientProtocol):
    def __init__(self):
        super().__init__()
        self.messages = DeferredQueue()
        self.received = []
        self.closed = Deferred()
        self.opened = Deferred()
        self.close_code = None
        self.close_reason = None

    def onOpen(self):
        self.opened.callback(self)

    def onMessage(self, payload, isBinary):
        message = jsonutil.loads(payload)
        self.received.append(message)
        self.messages.put(message)

    def onClose(self, wasClean, code, reason):
        self.close_code = code
        self.close_reason = reason
        if not self.opened.called:
            self.opened.errback(HandshakeFailed(code, reason, self))
        if not self.closed.called:
            self.closed.callback((code, reason))

    # -- helpers for tests --------------------------------------------------------------

    def send_json(self, message) -> None:
        self.sendMessage(jsonutil.dumps(message))

    @inlineCallbacks
    def next(self, type_=None, seconds: float = TIMEOUT, skip=("ping",)):
        """The next message (of ``type_``, if given; server pings are skipped)."""
        while True:
            message = yield with_timeout(self.messages.get(), seconds,
                                         f"a {type_ or 'any'} message")
            if message.get("type") in skip and type_ not in skip:
                continue
            if type_ is None or message.get("type") == type_:
                return message
            raise AssertionError(f"expected {type_}, got {message}")

    def wait_closed(self, seconds: float = TIMEOUT) -> Deferred:
        d = Deferred()
        self.closed.addBoth(lambda r: (d.callback(r), r)[1])
        return with_timeout(d, seconds, "the connection to close")

    def close(self) -> Deferred:
        """Close (if open) and wait for the connection to end."""
        if self.state == self.STATE_OPEN:
            self.sendClose(1000)
        elif self.state != self.STATE_CLOSED:
            self.dropConnection(abort=True)
        return self.wait_closed()


class HandshakeFailed(Exception):
    def __init__(self, code, reason, protocol):
        super().__init__(code, reason)
        self.code = code
        self.reason = reason
        self.protocol = protocol


class _ClientFactory(WebSocketClientFactory):
    protocol = WSClientProtocol

    def clientConnectionFailed(self, connector, reason):
        pass


@inlineCallbacks
def connect(port: int, path: str = "/ws", headers=None, query=None, origin=None,
            timeout: float = TIMEOUT, options=None):
    """
    Open a WebSocket to the gateway on ``port``.  Fires with the open client protocol;
    fails with :class:`HandshakeFailed` when the handshake is refused (``.code`` is the
    close code, and ``.reason`` mentions the HTTP status).
    """
    if query:
        path = path + "?" + urllib.parse.urlencode(query)
    url = f"ws://127.0.0.1:{port}{path}"
    factory = _ClientFactory(url, headers=headers or {}, origin=origin)
    factory.setProtocolOptions(autoPingInterval=None, failByDrop=False,
                               openHandshakeTimeout=timeout, closeHandshakeTimeout=2,
                               maxFramePayloadSize=64 * 1024 * 1024,
                               maxMessagePayloadSize=64 * 1024 * 1024)
    if options:
        factory.setProtocolOptions(**options)
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=timeout)
    proto = yield endpoint.connect(factory)
    result = yield with_timeout(proto.opened, timeout, "the WebSocket handshake")
    return result


def _passing(function, *args):
    """A callback calling ``function(*args)`` and passing its result on."""
    def callback(result):
        function(*args)
        return result
    return callback


class GatewayHarness:
    """
    A real gateway on the global reactor: ``yield harness.start()``, then use
    ``harness.port``; ``yield harness.stop()`` in cleanup (or ``addCleanup``).

    :param couchdb: a PouchDBServer (default: the shared one).
    :param feeds: False: no changes feed is followed (the status says ``off``).
    :param start_feeds: False: the feeds are built but not started (``harness.followers``).
    :param rules: the application databases' RuleSet (default: the ``config`` override's).
    :param parts: more arguments of :func:`realtime.assembly.make_parts` (fault injection:
        ``session_checker``, ``cluster_parts``).
    :param overrides: Config fields.
    """

    def __init__(self, couchdb=None, feeds=True, rules=None, start_feeds=True, parts=None,
                 **overrides):
        self.couchdb = couchdb if couchdb is not None else pouchdb()
        base = dict(
            listen=("tcp:0:interface=127.0.0.1",),
            couchdb_url=self.couchdb.url,
            couchdb_admin_auth=self.couchdb.admin_auth,
            couchdb_heartbeat_ms=1000,
            ws_heartbeat_ms=30000,
        )
        base.update(overrides)
        self.config = config_module.defaults(**base)
        self.feeds = feeds
        self.start_feeds = start_feeds
        self.rules = rules
        self.parts_arguments = dict(parts or {})
        self.clients = []
        self._pools = []

    @inlineCallbacks
    def start(self):
        """
        Build the gateway as production does (:func:`realtime.assembly.make_parts` and
        :func:`~realtime.assembly.make_web`, which :func:`realtime.service.make_service`
        calls), then run it here: broker and presence, the listener on ``listen[0]``, the
        heartbeat and, unless ``feeds=False``, the changes followers (waited for until
        connected, unless ``start_feeds=False``: then the test starts them).
        """
        pool = HTTPConnectionPool(reactor, persistent=False)
        self._pools.append(pool)
        self.http = treq.client.HTTPClient(Agent(reactor, pool=pool), cookiejar=no_cookies())
        feeds_agent = None
        if self.feeds:
            feed_pool = HTTPConnectionPool(reactor, persistent=False)
            self._pools.append(feed_pool)
            feeds_agent = Agent(reactor, pool=feed_pool)
        self.seen_ids = set()
        parts = make_parts(self.config, reactor, http=self.http, feeds_agent=feeds_agent,
                           rules=self.rules, observe_changes=self._recording,
                           **self.parts_arguments)
        self.parts = parts
        self.gateway = parts.gateway
        self.followers = parts.followers
        # Broker and presence (Redis connections when redis_url is given).
        parts.cluster.start()
        if self.config.redis_url:
            yield wait_for(lambda: self.gateway.broker.state == "up", what="Redis")
        web = make_web(parts, self.config)
        self.factory, self.site, self.listener = web.factory, web.site, web.listener
        endpoint = endpoints.serverFromString(reactor, self.config.listen[0])
        self.listening = yield endpoint.listen(self.listener)
        self.port = self.listening.getHost().port
        self.heartbeat = make_heartbeat_service(self.gateway, reactor)
        self.heartbeat.startService()
        if self.followers and self.start_feeds:
            for follower in self.followers:
                follower.start()
            # Wait until every feed is live, so that a change made now is seen.
            yield wait_for(lambda: all(f.state == "connected" for f in self.followers),
                           what="the changes feeds to connect")
        return self

    def _recording(self, on_change):
        """What the feeds call: ``on_change``, recording each change's id once routed."""
        def record(db, change):
            result = None
            try:
                result = on_change(db, change)
                return result
            finally:
                if isinstance(result, Deferred):  # seen once routed
                    result.addBoth(_passing(self.seen_ids.add, change.get("id")))
                else:
                    self.seen_ids.add(change.get("id"))
        return record

    def wait_for_change(self, doc_id: str):
        """Wait until the feeds have processed a change of ``doc_id``."""
        return wait_for(lambda: doc_id in self.seen_ids, what=f"the feed to see {doc_id}")

    @inlineCallbacks
    def connect(self, **kwargs):
        client = yield connect(self.port, **kwargs)
        self.clients.append(client)
        return client

    @inlineCallbacks
    def stop(self):
        yield close_clients(self.clients)
        for follower in self.followers:
            follower.stop()
        yield self.heartbeat.stopService()
        # Close server-side connections that are still open.
        for conn in list(self.gateway.registry.connections()):
            conn.transport.dropConnection(abort=True)
        yield self.listening.stopListening()
        yield self.parts.cluster.stop()
        for pool in self._pools:
            yield pool.closeCachedConnections()
        # Let aborted connections and Autobahn's timers settle.
        yield sleep(0)


@inlineCallbacks
def close_clients(clients):
    """Close every client still open, and wait for each to end."""
    for client in clients:
        if client.state != client.STATE_CLOSED:
            try:
                yield client.close()
            except Exception:
                pass


def sleep(seconds: float) -> Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


@inlineCallbacks
def wait_for(predicate, seconds: float = TIMEOUT, what: str = "a condition",
             interval: float = 0.02):
    """Poll ``predicate`` on the reactor until true (bounded)."""
    deadline = reactor.seconds() + seconds
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {seconds}s waiting for {what}")
        yield sleep(interval)
