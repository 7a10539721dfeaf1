"""
The gateway's HTTP client side (to CouchDB and JWKS): a connection pool whose connections
are not logged.

Twisted's :class:`~twisted.web.client.HTTPConnectionPool` makes one client factory per
connection, and a factory logs ``Starting factory …`` and ``Stopping factory …`` at info
level: two lines for every request on a non-persistent pool (the ``_changes`` feeds, every
previous-revision read), which buried the gateway's own lines in ``make run``.
:class:`QuietPool` is the same pool with quiet factories; nothing else changes.
"""

from __future__ import annotations

from twisted.web.client import HTTPConnectionPool, _HTTP11ClientFactory


class _QuietFactory(_HTTP11ClientFactory):
    noisy = False


class QuietPool(HTTPConnectionPool):
    """An :class:`HTTPConnectionPool` that does not log each connection's factory."""

    _factory = _QuietFactory
