"""
``reuseport:PORT[:interface=ADDR][:backlog=N]``: a TCP listening endpoint with SO_REUSEPORT.

Several realtime processes on one host can then listen on the same port, and the kernel
(Linux) spreads incoming connections over them; with ``REDIS_URL`` set they behave as one
service.  Twisted's ``tcp:`` endpoint string has no such option (Twisted 26 supports
SO_REUSEPORT only through ``tcp.makeBinding``), hence this endpoint, registered as a Twisted
plugin (``twisted/plugins/realtime_reuseport.py``) so that ``REALTIME_LISTEN`` accepts it::

    REALTIME_LISTEN=reuseport:8080 REDIS_URL=redis://127.0.0.1:6379/0 python -m realtime &
    REALTIME_LISTEN=reuseport:8080 REDIS_URL=redis://127.0.0.1:6379/0 python -m realtime &

Every process must use ``reuseport:`` (a plain ``tcp:`` listener on the port refuses to
share it).  Connections are spread by a hash of the client's address and port, not by load.
"""

from __future__ import annotations

import socket

from twisted.internet import defer
from twisted.internet.interfaces import IStreamServerEndpoint, IStreamServerEndpointStringParser
from twisted.internet.tcp import makeBinding
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IStreamServerEndpoint)
class ReusePortEndpoint:
    def __init__(self, reactor, port: int, interface: str = "", backlog: int = 50):
        self._reactor = reactor
        self._port = port
        self._interface = interface
        self._backlog = backlog

    def listen(self, factory):
        if not hasattr(socket, "SO_REUSEPORT"):
            return defer.fail(NotImplementedError("SO_REUSEPORT is not available here"))
        binding = makeBinding(self._interface, self._port, reuseAddress=True, reusePort=True)
        return defer.execute(self._reactor.listenTCP, binding, factory, self._backlog,
                             self._interface)


@implementer(IPlugin, IStreamServerEndpointStringParser)
class ReusePortParser:
    prefix = "reuseport"

    def parseStreamServer(self, reactor, port, interface="", backlog=50):
        return ReusePortEndpoint(reactor, int(port), interface, int(backlog))
