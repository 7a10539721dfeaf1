"""
Redis command connections from a ``REDIS_URL``: ``redis://[:password@]host[:port][/db]`` or
``rediss://…`` (TLS).

With ``rediss://`` the server's certificate is verified against the platform's trust store
(or ``ca_pem``) *and* its host name (``optionsForClientTLS``, service-identity): txredisapi's
own ``ssl_context_factory=True`` would verify nothing.

Connections are made with ``convertNumbers=False`` (ids and tokens stay strings) and a
``replyTimeout``; callers still put their own timeout on each command, since txredisapi
waits silently for a connection while Redis is down.
"""

from __future__ import annotations

import urllib.parse
from typing import Optional

from twisted.internet import ssl


def parse_redis_url(url: str) -> dict:
    """host, port, dbid, password, username and tls from a Redis URL (ValueError if not one)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError("a Redis URL starts with redis:// or rediss://")
    path = parts.path.strip("/")
    return {
        "host": parts.hostname or "localhost",
        "port": parts.port or 6379,
        "dbid": int(path) if path and int(path) != 0 else None,  # 0: no SELECT needed
        "password": urllib.parse.unquote(parts.password) if parts.password else None,
        "username": urllib.parse.unquote(parts.username) if parts.username else None,
        "tls": parts.scheme == "rediss",
    }


def tls_options(hostname: str, ca_pem: Optional[bytes] = None):
    """Client TLS options that verify the certificate chain and the host name."""
    trust = ssl.Certificate.loadPEM(ca_pem) if ca_pem else None
    return ssl.optionsForClientTLS(hostname, trustRoot=trust)


def lazy_connection(url: str, ca_pem: Optional[bytes] = None, connect_timeout: float = 5.0,
                    reply_timeout: float = 5.0):
    import txredisapi
    options = parse_redis_url(url)
    kwargs = dict(host=options["host"], port=options["port"], dbid=options["dbid"],
                  password=options["password"], convertNumbers=False,
                  connectTimeout=connect_timeout, replyTimeout=reply_timeout)
    if options["username"]:
        kwargs["username"] = options["username"]
    if options["tls"]:
        kwargs["ssl_context_factory"] = tls_options(options["host"], ca_pem)
    return txredisapi.lazyConnection(**kwargs)
