"""
Cookies and origins: the ``AuthSession`` value of a ``Cookie`` header, and whether a
request's ``Origin`` may use cookie credentials (an allowed origin, or the gateway's own).
A browser sends cookies on cross-site WebSocket requests, so the Origin check is the guard
against cross-site WebSocket hijacking.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Iterable, Optional

#: Cookie values CouchDB issues are base64url-ish; anything else is refused before a request.
COOKIE_VALUE = re.compile(r"^[A-Za-z0-9_\-+/=.:]{1,4096}$")


def cookie_value(cookie_header: Optional[str], name: str = "AuthSession") -> Optional[str]:
    """The value of cookie ``name`` in a ``Cookie`` header, or None."""
    if not cookie_header:
        return None
    for part in cookie_header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key.strip() == name:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            return value or None
    return None


def origin_allowed(origin: Optional[str], allowed: Iterable[str]) -> bool:
    """
    Is ``origin`` (``scheme://host[:port]``) allowed?  Entries are exact origins or patterns
    with ``*`` (``https://*.example.com``); ``*`` alone allows every origin.  No Origin
    header (not a browser) is always allowed.
    """
    if not origin:  # Autobahn reports a missing header as ""
        return True
    origin = origin.strip().lower()
    for pattern in allowed:
        pattern = pattern.strip().lower()
        if pattern == "*" or pattern == origin:
            return True
        if "*" in pattern:
            regex = "^" + ".*".join(re.escape(p) for p in pattern.split("*")) + "$"
            if re.match(regex, origin):
                return True
    return False


_DEFAULT_PORTS = {"http": "80", "https": "443", "ws": "80", "wss": "443"}


def same_origin(origin: Optional[str], host: Optional[str]) -> bool:
    """
    Is ``origin`` the gateway's own, i.e. a page served by the host the request was sent to?
    ``host`` is the request's ``Host`` header.  The Origin's host and port (its scheme's
    default port when none is written) must equal the Host's (with the same default).

    This cannot let a cross-site page in: its Origin names its own site, which is not the
    gateway's Host.  A page of another site pointed at the gateway's address by DNS
    (rebinding) is same-origin here, but the browser sends it the cookies of that other
    site's name, never the gateway's.
    """
    if not origin or not host:
        return False
    try:
        given = urllib.parse.urlsplit(origin.strip().lower())
        target = urllib.parse.urlsplit("//" + host.strip().lower())
        default = _DEFAULT_PORTS.get(given.scheme)
        if default is None or not given.hostname or given.path or given.query:
            return False
        return (given.hostname, str(given.port or default)) == \
            (target.hostname, str(target.port or default))
    except ValueError:  # a port that is not a number, a bad IPv6 literal
        return False
