"""
CouchDB sessions: an ``AuthSession`` cookie checked with ``GET /_session``.

pouchdb-server and CouchDB answer 200 for a forged or expired cookie, with
``userCtx.name == null`` (and, on a server with no admin, roles ``["_admin"]``): a session
is valid only when ``name`` is a non-empty string.  A malformed cookie is refused before
any request; CouchDB unreachable, answering 5xx or nonsense is ``unavailable`` (the answer
is then no, close 4101); any other answer than 200 is ``auth-failed``.  A refreshed cookie
CouchDB sends back (``Set-Cookie``, as a session nears its timeout) is kept in the
identity, so that periodic revalidation keeps an active session alive.  Which requests
may use a cookie at all (the ``Origin`` guard) is decided by
:class:`realtime.auth.authenticator.Authenticator`.  Nothing here logs the cookie.
"""

from __future__ import annotations

from typing import Optional

from twisted.internet.defer import inlineCallbacks
from twisted.logger import Logger

from realtime import jsonutil
from realtime.auth.identity import AuthFailure, Identity
from realtime.auth.origins import COOKIE_VALUE, cookie_value


class CouchSessionChecker:
    """
    Validate a CouchDB ``AuthSession`` cookie with ``GET /_session``.

    pouchdb-server and CouchDB answer 200 for a forged or expired cookie, with
    ``userCtx.name == null`` (and, on a server with no admin, roles ``["_admin"]``): the
    session is valid only when ``name`` is a non-empty string.

    :param http: a treq ``HTTPClient`` (or the ``treq`` module).
    """

    _log = Logger()

    def __init__(self, http, couchdb_url: str, timeout: float = 5.0, clock=None):
        self._http = http
        self._url = couchdb_url.rstrip("/") + "/_session"
        self._timeout = timeout
        self._clock = clock

    @inlineCallbacks
    def check(self, cookie: str):
        if not COOKIE_VALUE.match(cookie):
            raise AuthFailure("auth-failed", "malformed cookie")
        try:
            response = yield self._http.get(
                self._url,
                headers={b"Cookie": [b"AuthSession=" + cookie.encode("ascii")],
                         b"Accept": [b"application/json"]},
                timeout=self._timeout, reactor=self._clock)
            body = yield response.content()
        except Exception as e:
            self._log.warn("CouchDB session check failed: {error}", error=type(e).__name__)
            raise AuthFailure("unavailable", "CouchDB unreachable") from None
        if response.code >= 500:
            raise AuthFailure("unavailable", f"CouchDB answered {response.code}")
        if response.code != 200:
            raise AuthFailure("auth-failed", f"CouchDB answered {response.code}")
        try:
            ctx = jsonutil.loads(body)["userCtx"]
            name = ctx["name"]
            roles = ctx.get("roles") or []
        except (ValueError, KeyError, TypeError):
            raise AuthFailure("unavailable", "CouchDB answered nonsense") from None
        if not isinstance(name, str) or not name:
            raise AuthFailure("auth-failed", "no session")
        roles = tuple(r for r in roles if isinstance(r, str)) if isinstance(roles, list) else ()
        # CouchDB refreshes a session cookie that nears its timeout with a Set-Cookie: keep
        # the fresh one, so that periodic revalidation keeps an active session alive.
        refreshed = _refreshed_cookie(response)
        return Identity(user_id=name, name=name, roles=roles, method="cookie",
                             cookie=refreshed or cookie)


def _refreshed_cookie(response) -> Optional[str]:
    try:
        values = response.headers.getRawHeaders(b"set-cookie", [])
    except Exception:
        return None
    for value in values:
        text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        first = text.split(";", 1)[0]
        found = cookie_value(first)
        if found and COOKIE_VALUE.match(found):
            return found
    return None

