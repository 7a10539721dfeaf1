"""
Fast paths for fan-out and connection set-up, each measured with the benchmark suite
(``benchmarks/``, py-spy profiles in ``benchmarks/RESULTS.md``).

The write path: one write per connection per reactor turn, straight to the socket.  With
plain ``transport.write`` each delivery costs Twisted a ``startWriting`` (``epoll_ctl``), a
trip through the reactor's poll loop (``doWrite`` under ``callWithLogger``), a ``send`` and
a ``stopWriting`` (``epoll_ctl``).  When one event reaches thousands of connections per
reactor turn, that machinery, not the socket I/O, is where the server's time goes.  So:

- :class:`TurnBatcher`: frames due to a connection during one reactor turn are collected in
  its outbox (a list) and written together, once, when the turn ends (one ``callLater(0)``
  for the whole process, however many connections are due);
- :func:`write_now`: that write goes straight to the socket with ``send`` when Twisted's own
  buffer for it is empty (the common case), and whatever the kernel did not take is handed
  to ``transport.write`` -- so Twisted's buffering, its producer pause (the slow-client
  backpressure of :mod:`realtime.transport.websocket`) and its error handling apply exactly as before
  from the first byte that could not be sent at once.

Transports that are not plain TCP sockets (TLS, test transports) are not batched: their
connections write through ``transport.write`` at once, as before.

Connection set-up and memory per connection:

- :class:`WebSocketFirstFactory`: ``GET /ws`` handshakes go to Autobahn directly instead of
  through Twisted Web (which parsed each handshake a second time);
- :func:`lazy_autobahn_debug_formatting`: Autobahn's debug-log arguments are formatted only
  when a debug observer renders them;
- :func:`options_on_class_factory`: the protocol options live on the protocol class, not in
  a copy per connection.
"""

from __future__ import annotations

import pprint
import types

import txaio
from autobahn.twisted import websocket as ab_twisted
from autobahn.websocket import protocol as ab_protocol
from twisted.internet import tcp
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper

from realtime.http.channel import json_answer

_log = Logger()


def supports_direct_send(transport) -> bool:
    """True for a plain TCP transport whose socket we may ``send`` on directly."""
    return isinstance(transport, tcp.Connection) and hasattr(transport, "_tempDataBuffer")


def write_now(transport, data: bytes) -> None:
    """
    Write ``data`` to a TCP transport, with one ``send`` when Twisted has nothing buffered.

    Order is kept: when Twisted still holds bytes for this socket, ``data`` queues behind
    them.  Any socket error is left to Twisted (it sees it on its own write path).
    """
    if (transport.dataBuffer or transport._tempDataLen or not transport.connected
            or transport.disconnecting):
        transport.write(data)
        return
    try:
        sent = transport.socket.send(data)
    except OSError:  # EAGAIN/EINTR (nothing sent), or an error Twisted will report
        transport.write(data)
        return
    if sent < len(data):
        transport.write(data[sent:])


class TurnBatcher:
    """
    Connections with frames due this reactor turn; flushed once, at the end of the turn.

    A connection calls :meth:`due` when its outbox gets its first frame of the turn; the
    batcher then calls its ``_flush_outbox()`` from a single ``callLater(0)``.

    :param clock: what schedules the flush; by default the reactor of the transport of the
        first connection due -- the reactor that will write the bytes, even where the
        gateway was given another clock (tests).
    """

    def __init__(self, clock=None):
        self._clock = clock
        self._due = []
        self._call = None

    def due(self, conn) -> None:
        self._due.append(conn)
        if self._call is None:
            clock = self._clock if self._clock is not None else conn.transport.reactor
            self._call = clock.callLater(0, self.flush)

    def flush(self) -> None:
        self._call = None
        due, self._due = self._due, []
        for conn in due:
            try:
                conn._flush_outbox()
            except Exception:
                _log.failure("flushing a connection's outbox failed")

    def cancel(self) -> None:
        """Stop the pending flush (service stop, tests)."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._due = []


class _Deferred:
    """Formats its value only when a log event is actually rendered."""

    __slots__ = ("_render", "_args")

    def __init__(self, render, *args):
        self._render = render
        self._args = args

    def __str__(self):
        return str(self._render(*self._args))

    def __format__(self, spec):
        return format(str(self), spec)

    __repr__ = __str__


_patched = False

#: txaio's levels at which Autobahn's debug log calls are not no-ops
_DEBUG_LEVELS = frozenset(("debug", "trace"))


def _lazy(original):
    """
    ``original`` (a formatting helper), made lazy.  Below txaio's debug level Autobahn's
    ``log.debug`` is a no-op, so what the helper returns is never rendered: the argument is
    passed through as it is, at no cost.  At debug level a :class:`_Deferred` formats it,
    with the same text, if the event is rendered.
    """

    def lazy(*args, **kw):
        if txaio.get_global_log_level() not in _DEBUG_LEVELS:
            return args[0] if args else None
        if kw:
            return _Deferred(lambda: original(*args, **kw))
        return _Deferred(original, *args)

    return lazy


def lazy_autobahn_debug_formatting() -> None:
    """
    Make Autobahn's debug-log arguments lazy (idempotent).

    Autobahn formats the arguments of its debug log calls before calling the logger, even
    when debug logging is off: ``pformat`` of every protocol option on each new connection
    (about a fifth of the server's CPU while accepting connections, by py-spy), and
    coloured ``hltype``/``hlval`` strings on each write.  Wrapped, they are formatted only if
    a log observer renders the event; the text is the same when it does.  Below txaio's
    debug level (where Autobahn's ``log.debug`` is a no-op) they are not even wrapped.
    """
    global _patched
    if _patched:
        return
    # both modules: the Twisted adapter formats hltype/hlval on every connectionMade,
    # dataReceived and connectionLost too
    for module in (ab_protocol, ab_twisted):
        for name in ("pformat", "hltype", "hlval", "hlid"):
            original = getattr(module, name, None)
            if original is not None:
                setattr(module, name, _lazy(original))
    # the one use of pformat whose result must be a str
    ab_protocol.Timings.__str__ = lambda self: pprint.pformat(self._timings)
    _patched = True


def options_on_class_factory(base):
    """
    A subclass of the Autobahn server factory ``base`` whose protocols read the protocol
    options from their class instead of carrying a copy each.

    Autobahn copies every protocol option (29 of them) from the factory into each new
    protocol's ``__dict__`` unless the protocol already has the attribute.  The factory
    built here gives its protocols a class (derived from ``factory.protocol``, rebuilt
    whenever the options change) that holds the options as class attributes: each
    connection then has a smaller ``__dict__`` (less memory per idle connection) and skips
    the copy.  Behaviour is unchanged: the values are the factory's.
    """

    class OptionsOnClassFactory(base):
        _options_class = None

        def resetProtocolOptions(self):
            super().resetProtocolOptions()
            self._options_class = None

        def setProtocolOptions(self, *args, **kwargs):
            super().setProtocolOptions(*args, **kwargs)
            self._options_class = None

        def buildProtocol(self, addr):
            cls = self._options_class
            if cls is None or cls.__bases__[0] is not self.protocol:
                protocol = self.protocol
                options = {name: _as_class_attribute(getattr(self, name))
                           for name in protocol.CONFIG_ATTRS}
                cls = self._options_class = type(protocol.__name__, (protocol,), options)
            proto = cls()
            proto.factory = self
            return proto

    OptionsOnClassFactory.__name__ = base.__name__
    OptionsOnClassFactory.__qualname__ = base.__qualname__
    return OptionsOnClassFactory


def _as_class_attribute(value):
    """A plain function stays a plain function on the class (not a method taking self)."""
    if isinstance(value, types.FunctionType):
        return staticmethod(value)
    return value


class _FirstRequestRouter(Protocol):
    """
    Reads the first request line of a connection, then hands the connection over: to the
    WebSocket factory's protocol when it is ``GET <ws_path>`` (or ``GET <ws_path>?…``), to
    the web site's protocol otherwise; the bytes read so far are passed on unchanged.
    """

    _MAX_REQUEST_LINE = 16 * 1024

    def __init__(self, factory, addr):
        self._factory = factory
        self._addr = addr
        self._buffer = b""
        self._timeout = None

    _release = None  # gives back this connection's place among the pending ones
    _refused = False

    def connectionMade(self):
        pending = self._factory.pending
        if pending is not None:
            self._release = pending.acquire()
            if self._release is None:  # too many connections without a request: refused
                self._refused = True
                self.transport.write(json_answer(
                    503, "Service Unavailable", "busy",
                    "too many connections are waiting to send a request; try again"))
                self.transport.loseConnection()
                return
        # A client that connects and sends nothing must not hold its socket for ever.
        clock = self._factory.clock
        if clock is None:
            clock = self.transport.reactor
        self._timeout = clock.callLater(self._factory.first_line_timeout, self._timed_out)

    def _timed_out(self):
        self._timeout = None
        self.transport.abortConnection()

    def _stop_timeout(self):
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self._timeout = None

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return  # refused in connectionMade: nothing is read
        self._buffer += data
        end = self._buffer.find(b"\n")
        if end < 0 and len(self._buffer) < self._MAX_REQUEST_LINE:
            return
        self._stop_timeout()
        line = self._buffer[:end if end >= 0 else len(self._buffer)]
        target = self._factory.ws_factory if self._factory.is_ws(line) else self._factory.site
        protocol = target.buildProtocol(self._addr)
        transport = self.transport
        if isinstance(transport, ProtocolWrapper):  # TLS
            transport.wrappedProtocol = protocol
        else:
            transport.protocol = protocol
        self._hand_over_place(protocol)
        protocol.makeConnection(transport)
        data, self._buffer = self._buffer, b""
        protocol.dataReceived(data)

    def _hand_over_place(self, protocol) -> None:
        """The new protocol gives the place back once its first request is done."""
        release, self._release = self._release, None
        if release is None:
            return
        if hasattr(protocol, "release_pending"):
            # the site's channel (realtime.http.channel) and the gateway's WebSocket protocol
            # (realtime.transport.websocket) give it back themselves
            protocol.release_pending = release
        else:  # another Autobahn protocol: its handshake is over once open, or closed
            txaio.add_callbacks(protocol.is_open, lambda _: release(), lambda _: release())
            txaio.add_callbacks(protocol.is_closed, lambda _: release(), lambda _: release())

    def connectionLost(self, reason):
        self._stop_timeout()
        self._buffer = b""
        if self._release is not None:
            release, self._release = self._release, None
            release()


class WebSocketFirstFactory(ServerFactory):
    """
    One listening port for the web site and the WebSocket endpoint, without Twisted Web in
    the WebSocket path.

    Through ``twisted.web``'s ``WebSocketResource`` every WebSocket handshake is parsed
    twice (by Twisted Web's HTTP channel, then again by Autobahn) and builds an HTTP channel
    and request that are thrown away: about 40 % of the server's CPU per new connection, by
    py-spy.  This factory looks at the first request line instead: ``GET <ws_path>`` goes to
    Autobahn's protocol directly; everything else (the REST API, status, a later request on a
    kept-alive connection) goes to the site, where ``WebSocketResource`` still serves
    ``ws_path`` too.
    """

    noisy = False

    def __init__(self, site, ws_factory, ws_path: bytes = b"/ws", clock=None,
                 first_line_timeout: float = 10.0, pending=None):
        """
        :param clock: schedules the first-line timeout (default: the transport's reactor).
        :param first_line_timeout: a connection that has not sent its request line within
            this many seconds is aborted.
        :param pending: a :class:`realtime.http.channel.PendingConnections`: each new
            connection takes a place until its first request is done (an HTTP request
            received whole, a WebSocket handshake over); with none left, the connection is
            answered 503 ``busy`` and closed at once.  This bounds the file descriptors
            slow or idle clients can hold (each is also bounded in time).
        """
        self.site = site
        self.ws_factory = ws_factory
        self.pending = pending
        self._prefix = b"GET " + ws_path
        self.clock = clock
        self.first_line_timeout = first_line_timeout

    def is_ws(self, line: bytes) -> bool:
        rest = line[len(self._prefix):len(self._prefix) + 1]
        return line.startswith(self._prefix) and rest in (b" ", b"?")

    def buildProtocol(self, addr):
        return _FirstRequestRouter(self, addr)

    def startFactory(self):
        self.site.doStart()
        self.ws_factory.doStart()

    def stopFactory(self):
        self.site.doStop()
        self.ws_factory.doStop()
