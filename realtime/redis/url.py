"""
``REDIS_URL``: parsing, and the Twisted client endpoint it names.

Accepted forms (the ones redis-py and most hosting services use)::

    redis://[[username]:password@]host[:port][/db]
    rediss://[[username]:password@]host[:port][/db]      TLS
    ...?db=N                                               db as a query parameter
    rediss://...?ca=/path/to/ca.pem                        trust this CA instead of the
                                                           system's (private Redis CA)

The port defaults to 6379, the db to 0.  User name and password are percent-decoded.  With
``rediss://`` the server certificate is verified against the system trust store (or ``ca``)
*and* the host name of the URL is checked against it (Twisted's ``optionsForClientTLS``,
backed by service-identity): there is no "don't verify" switch, on purpose.

Errors are :class:`RedisURLError` with a message that never contains the password.
"""

from __future__ import annotations

import dataclasses
import urllib.parse
from typing import Optional

from twisted.internet import endpoints, ssl

DEFAULT_PORT = 6379


class RedisURLError(ValueError):
    """A REDIS_URL that cannot be used (the message never shows the password)."""


@dataclasses.dataclass(frozen=True)
class RedisAddress:
    host: str
    port: int = DEFAULT_PORT
    db: int = 0
    username: Optional[str] = None
    password: Optional[str] = dataclasses.field(default=None, repr=False)
    tls: bool = False
    ca_path: Optional[str] = None

    def display(self) -> str:
        """The URL for logs: scheme, host, port, db; never the credentials."""
        scheme = "rediss" if self.tls else "redis"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}/{self.db}"


def parse_redis_url(url: str) -> RedisAddress:
    """Parse a ``redis://`` or ``rediss://`` URL (see the module docstring)."""
    if not isinstance(url, str) or not url.strip():
        raise RedisURLError("REDIS_URL is empty")
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise RedisURLError("REDIS_URL is not a valid URL (bad host or port)") from None
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss"):
        raise RedisURLError(
            f"REDIS_URL must start with redis:// or rediss://, not {scheme or 'nothing'}://")
    host = parts.hostname
    if not host:
        raise RedisURLError("REDIS_URL has no host")
    if port == 0:
        raise RedisURLError("REDIS_URL port must be 1-65535")
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    unknown = set(query) - {"db", "ca"}
    if unknown:
        raise RedisURLError(f"REDIS_URL has unknown parameters: {', '.join(sorted(unknown))}")
    db_text = parts.path.lstrip("/")
    if "db" in query:
        if db_text:
            raise RedisURLError("REDIS_URL gives the db twice (path and ?db=)")
        db_text = query["db"][-1]
    db = 0
    if db_text:
        if not db_text.isdigit():
            raise RedisURLError("REDIS_URL db must be a non-negative integer")
        db = int(db_text)
    ca_path = query.get("ca", [None])[-1] or None
    if ca_path and scheme != "rediss":
        raise RedisURLError("REDIS_URL ca= needs rediss:// (TLS)")
    username = urllib.parse.unquote(parts.username) if parts.username else None
    password = urllib.parse.unquote(parts.password) if parts.password is not None else None
    if password == "":
        password = None
    if username is not None and password is None:
        # redis://secret@host: the lone field is the password (redis-py reads it so too).
        username, password = None, username
    return RedisAddress(host=host, port=port or DEFAULT_PORT, db=db, username=username,
                        password=password, tls=scheme == "rediss", ca_path=ca_path)


def tls_options(address: RedisAddress):
    """TLS client options verifying the certificate chain and the host name."""
    trust_root = None
    if address.ca_path:
        try:
            with open(address.ca_path, "rb") as f:
                trust_root = ssl.Certificate.loadPEM(f.read())
        except (OSError, ValueError) as e:
            raise RedisURLError(f"REDIS_URL ca= cannot be read: {e}") from None
    return ssl.optionsForClientTLS(address.host, trustRoot=trust_root)


def client_endpoint(reactor, address: RedisAddress, connect_timeout: float = 5.0):
    """The endpoint to reach ``address`` (TCP, or TLS over TCP for rediss://)."""
    endpoint = endpoints.HostnameEndpoint(reactor, address.host, address.port,
                                          timeout=connect_timeout)
    if address.tls:
        endpoint = endpoints.wrapClientTLS(tls_options(address), endpoint)
    return endpoint
