"""
One Redis connection that keeps coming back, with a bounded time on every command.

:class:`RedisClient` wraps a txredisapi factory in the style that works with txredisapi
1.6 (docs/DEVELOPING.rst, "Facts learnt the hard way"): ``factory.startConnecting(endpoint)``,
``convertNumbers=False`` (ids and tokens stay strings), a reply timeout as a backstop, and
our own timeout, on the injected clock, on every command.  While Redis is away a command fails at once with
:class:`RedisUnavailable` instead of waiting for the reconnection: the callers (REST calls,
handshakes) want a fast, honest "no", not a hang.

txredisapi imports the global reactor when it is imported, so it is imported here lazily,
when a connection is made (library modules must not import the reactor).

``on_connect`` (a callable taking the txredisapi protocol, returning a Deferred or None; more
can be appended to ``on_connect_hooks``) runs on every (re)connection, after AUTH and
SELECT: the stream reader starts its read loop there, and presence re-asserts its lease.
Subscriptions and loops must be restarted this way, since txredisapi restores none of them
after Redis restarts.
"""

from __future__ import annotations

from typing import Callable, Optional

from twisted.internet.defer import CancelledError, Deferred, fail, maybeDeferred, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.task import deferLater
from twisted.logger import Logger

from realtime.hub.broker import Unavailable
from realtime.redis.url import RedisAddress, client_endpoint


class RedisUnavailable(Unavailable):
    """Redis cannot be reached now, or did not answer in time."""


def _factory_class():
    import txredisapi

    class _Factory(txredisapi.RedisFactory):
        def stopTrying(self):
            # txredisapi stops for good when AUTH or SELECT fails, even when it failed
            # because the connection was lost (a proxy or load balancer in front of a Redis
            # that is down accepts, then closes): only a refusal from Redis stops us.
            if self.owner._lost_in_handshake:
                return succeed(None)
            return super().stopTrying()

    return _Factory


def build_command(protocol, args) -> bytes:
    """
    A command in Redis's protocol, the bytes txredisapi's ``_build_command`` makes, made
    with a few calls per argument instead of about twenty: every admission's presence
    script carries five arguments per connection (:mod:`realtime.redis.presence`), and a
    reconnect storm is thousands of them a second.  ``str`` and ``bytes`` are encoded here;
    anything else (and a ``str`` the charset cannot encode: txredisapi's ``InvalidData``)
    by txredisapi's own ``_encode_value``.  ``tests/test_redis_command.py`` compares the two.
    """
    out = [b"*%d\r\n" % len(args)]
    append = out.append
    charset, errors = protocol.charset, protocol.errors
    for arg in args:
        kind = type(arg)
        if kind is str and charset is not None:
            try:
                arg = arg.encode(charset, errors)
            except UnicodeEncodeError:
                arg = protocol._encode_value(arg)
        elif kind is not bytes:
            arg = protocol._encode_value(arg)
        append(b"$%d\r\n" % len(arg))
        append(arg)
        append(b"\r\n")
    return b"".join(out)


def _protocol_class():
    import txredisapi

    class _Protocol(txredisapi.RedisProtocol):
        def connectionMade(self):
            # The parent authenticates and selects the db; our hook runs when that is done.
            d = super().connectionMade()

            def ready(_):
                if self._ready:
                    self.factory.owner._connected(self)

            if isinstance(d, Deferred):
                d.addCallback(ready)
            else:
                ready(None)
            return d

        def _build_command(self, *args, **kwargs):
            return build_command(self, args)

        def connectionLost(self, why):
            # Before the parent fails the pending AUTH/SELECT (which calls stopTrying).
            self.factory.owner._lost_in_handshake = not self._ready
            super().connectionLost(why)
            self.factory.owner._disconnected(self)

    return _Protocol


class RedisClient:
    """
    :param address: a parsed ``REDIS_URL``.
    :param timeout: seconds a command may take before it fails with RedisUnavailable.
    :param name: for logs (``commands``, ``reader``).
    :param reply_timeout: txredisapi's own reply timeout (it aborts the connection); the
        default is ``timeout``.  A blocking reader sets it above its block time.
    """

    _log = Logger()
    initial_delay = 0.1  # reconnect backoff: 0.1 s, growing to max_delay, with jitter
    max_delay = 2.0

    def __init__(self, reactor, address: RedisAddress, timeout: float = 3.0,
                 name: str = "redis", on_connect: Optional[Callable] = None,
                 reply_timeout: Optional[float] = None):
        self._reactor = reactor
        self.address = address
        self.timeout = timeout
        self.name = name
        # callables run on every (re)connection, each given the protocol
        self.on_connect_hooks = [on_connect] if on_connect is not None else []
        self._reply_timeout = reply_timeout or timeout
        self._factory = None
        self.protocol = None  # the live, ready connection, or None
        self.state = "stopped"  # stopped | connecting | connected | down
        self.connections_made = 0
        self.last_error: Optional[str] = None  # a refusal (bad password, db): no retrying
        self._lost_in_handshake = False  # the connection closed before AUTH/SELECT answered

    @property
    def connected(self) -> bool:
        return self.protocol is not None

    def start(self) -> None:
        if self._factory is not None:
            return
        factory = _factory_class()(
            None, self.address.db, 1, isLazy=True, password=self.address.password,
            replyTimeout=self._reply_timeout, convertNumbers=False,
            username=self.address.username)
        factory.protocol = _protocol_class()
        factory.owner = self
        factory.initialDelay = self.initial_delay
        factory.maxDelay = self.max_delay
        # An authentication failure or an unknown db: txredisapi stops trying; say so in the
        # log and in the state (the status page shows "error").
        factory.connectionError = self._connection_error
        self._factory = factory
        self.state = "connecting"
        factory.startConnecting(client_endpoint(self._reactor, self.address))

    def stop(self) -> Deferred:
        factory, self._factory = self._factory, None
        self.state = "stopped"
        self.protocol = None
        if factory is None:
            return succeed(None)
        d = factory.disconnect()
        # txredisapi schedules zero-delay calls while connecting and stopping: let them run
        # so that nothing of ours is left on the reactor once stop() has fired.
        d.addBoth(lambda _: deferLater(self._reactor, 0, lambda: None))
        return d

    def _connection_error(self, message: str) -> None:
        if self._lost_in_handshake:  # not a refusal: txredisapi keeps trying (_Factory)
            self._lost_in_handshake = False
            self._log.warn("redis {name}: connection closed before it was ready; "
                           "reconnecting", name=self.name)
            return
        # txredisapi's message may quote the server's answer; it never holds the password.
        self.last_error = message
        self.state = "error"
        self._log.error("redis {name}: {message}", name=self.name, message=message)

    def _connected(self, protocol) -> None:
        if self._factory is None:
            protocol.transport.loseConnection()
            return
        self.protocol = protocol
        self.state = "connected"
        self.last_error = None
        self.connections_made += 1
        self._log.info("redis {name}: connected to {url}", name=self.name,
                       url=self.address.display())
        for hook in list(self.on_connect_hooks):
            d = maybeDeferred(hook, protocol)
            d.addErrback(lambda f: self._log.failure(
                "redis {name}: on_connect hook failed", f, name=self.name))

    def _disconnected(self, protocol) -> None:
        if protocol is self.protocol:
            self.protocol = None
            if self._factory is not None:
                self.state = "down"
                self._log.warn("redis {name}: connection lost; reconnecting", name=self.name)

    def execute(self, *args, timeout: Optional[float] = None) -> Deferred:
        """
        Run one command; fails with RedisUnavailable when not connected or after
        ``timeout`` (default: the client's) seconds without an answer.
        """
        protocol = self.protocol
        if protocol is None:
            return fail(RedisUnavailable(f"redis {self.name} is not connected"))
        try:
            d = protocol.execute_command(*args)
        except Exception as e:  # txredisapi raises ConnectionError synchronously
            return fail(RedisUnavailable(str(e)))
        return self._bounded(d, timeout)

    def _bounded(self, d: Deferred, timeout: Optional[float]) -> Deferred:
        import txredisapi

        d.addTimeout(timeout if timeout is not None else self.timeout, self._reactor)

        def translate(failure):
            if failure.check(CancelledError, DeferredTimeout):
                raise RedisUnavailable(f"redis {self.name} did not answer in time")
            if failure.check(txredisapi.ConnectionError):
                raise RedisUnavailable(f"redis {self.name}: {failure.getErrorMessage()}")
            return failure

        return d.addErrback(translate)

    def eval(self, script: str, keys=(), args=(), timeout: Optional[float] = None) -> Deferred:
        return self.execute("EVAL", script, len(keys), *keys, *args, timeout=timeout)
