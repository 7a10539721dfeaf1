"""
What the gateway serves to browsers: the JavaScript client and two pages.

- ``GET /realtime.js``: the client (``clients/js/realtime.js`` of the repository; shipped in
  the package as ``realtime/http/static/realtime.js``).  Always served: it is public code.
  Any origin may import it (``Access-Control-Allow-Origin: *``; a module script is fetched
  with CORS), without credentials.
- ``GET /admin``: the operators' dashboard.  The page holds no data and no secret: it asks
  for the admin key (or an admin JWT) and uses the public REST API with it, like any script.
- ``GET /demo`` (only with ``REALTIME_DEMO=true``, which ``make run`` sets; 404 otherwise):
  a page that logs in as a CouchDB user and shows, live, what that user may read.
  ``POST /demo/session`` ``{name, password}`` relays the login to CouchDB's ``_session`` and
  sets the ``AuthSession`` cookie it answers with on the gateway's own origin (``HttpOnly``,
  ``SameSite=Strict``, ``Path=/``; ``Secure`` over TLS), so the page's WebSocket
  authenticates with the cookie like any CouchDB app (the gateway accepts cookies from its
  own origin: :func:`realtime.auth.origins.same_origin`).  ``DELETE /demo/session``
  ends it.  Why a relay and not a token minted by the gateway: the demo shows the cookie
  path, which is what a CouchDB app uses, and needs no JWT secret.  The password is read
  from the body and sent to CouchDB only; it is in no log line (the access log has paths
  only) and in no answer.
- ``GET /static/<name>``: the pages' scripts and style sheet (a fixed list; nothing else is
  read from disk).

Headers: the exact content type with ``charset=utf-8``; ``X-Content-Type-Options:
nosniff``; ``Referrer-Policy: no-referrer``; ``Cache-Control: no-cache`` with an ``ETag``
(the files change with the gateway, their URLs do not: a browser revalidates, and gets a
304 while the file is unchanged).  HTML pages get a strict Content-Security-Policy: scripts,
styles and connections to the gateway's own origin only (``'self'``: the WebSocket too), no
inline script or style, no plugin, no frame (``frame-ancestors 'none'``), forms posting to
the gateway only; and ``Cross-Origin-Opener-Policy: same-origin``.  The pages need nothing
but the gateway: no CDN, no font, no framework.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from urllib.parse import quote

import treq
from twisted.internet.defer import inlineCallbacks
from twisted.logger import Logger

from realtime.feeds.routing import sanitize_user_doc
from realtime.http.endpoint import Endpoint, HTTPError, bad_field, read_json_body
from realtime.http.resource import DEFAULT_MAX_BODY_BYTES, JSONResource, json_error

_log = Logger()

JS = b"text/javascript; charset=utf-8"
HTML = b"text/html; charset=utf-8"
CSS = b"text/css; charset=utf-8"

#: The Content-Security-Policy of every page.
PAGE_CSP = (b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            b"connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
#: ... and of everything else served here (not a document: nothing may run in it).
ASSET_CSP = b"default-src 'none'; frame-ancestors 'none'"

#: /static/<name>: the files the pages use, and nothing else
STATIC_ASSETS = {
    "pages.css": CSS,
    "demo.js": JS,
    "admin.js": JS,
    "charts.js": JS,
}


def static_bytes(name: str) -> bytes:
    """A file of ``realtime/http/static/`` (package data: present in an installed gateway)."""
    return (resources.files("realtime.http") / "static" / name).read_bytes()


class StaticFile(JSONResource):
    """One file, read once, served with its type, an ETag and the security headers."""

    isLeaf = True

    def __init__(self, name: str, content_type: bytes, csp: bytes = ASSET_CSP,
                 cors: bool = False, body: bytes = None):
        super().__init__()
        self.body = static_bytes(name) if body is None else body
        self.content_type = content_type
        self.csp = csp
        self.cors = cors
        self.etag = b'"' + hashlib.sha256(self.body).hexdigest()[:32].encode("ascii") + b'"'

    def render_GET(self, request):
        if request.postpath not in ([], [b""]):
            return json_error(request, 404, "not_found", "no such resource")
        request.setHeader(b"Content-Type", self.content_type)
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"ETag", self.etag)
        set_security_headers(request, self.csp)
        if self.content_type == HTML:
            request.setHeader(b"Cross-Origin-Opener-Policy", b"same-origin")
        if self.cors:
            request.setHeader(b"Access-Control-Allow-Origin", b"*")
            request.setHeader(b"Cross-Origin-Resource-Policy", b"cross-origin")
        else:
            request.setHeader(b"Cross-Origin-Resource-Policy", b"same-origin")
        given = request.getHeader(b"if-none-match")
        if given is not None and self.etag in [tag.strip() for tag in given.split(b",")]:
            request.setResponseCode(304)
            return b""
        return self.body


def set_security_headers(request, csp: bytes) -> None:
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    request.setHeader(b"Referrer-Policy", b"no-referrer")
    request.setHeader(b"Content-Security-Policy", csp)


class StaticFolder(JSONResource):
    """``/static/<name>`` for the names of :data:`STATIC_ASSETS` (others: 404)."""

    def __init__(self):
        super().__init__()
        for name, content_type in STATIC_ASSETS.items():
            self.putChild(name.encode("ascii"), StaticFile(name, content_type))


class DemoPage(StaticFile):
    """``/demo``, and ``/demo/session`` below it."""

    isLeaf = False

    def __init__(self, session):
        super().__init__("demo.html", HTML, csp=PAGE_CSP)
        self.putChild(b"session", session)

    def getChild(self, path, request):
        if path == b"":
            return self
        return super().getChild(path, request)


class _PagesAPI:
    """What :class:`Endpoint` needs of an API: the gateway (metrics, authenticator)."""

    def __init__(self, gateway):
        self.gateway = gateway


class DemoSession(Endpoint):
    """
    The demo's login, relayed to CouchDB.

    - ``POST /demo/session`` ``{"name", "password"}``: CouchDB's ``POST /_session``.  200
      ``{name, roles, profile, databases}`` and the ``AuthSession`` cookie; 401
      ``auth_failed`` for a wrong name or password (CouchDB's own answer is not passed on);
      503 when CouchDB does not answer.
    - ``GET /demo/session``: the same answer for the session the cookie holds (a page
      reload: the cookie is ``HttpOnly``, the page cannot read it); ``{"name": null}``
      without one, or when it has ended (a 200: a page asking is not an error).
    - ``DELETE /demo/session``: the cookie is cleared and the session ended on CouchDB.

    ``profile`` is the user's own ``_users`` document as the user reads it with that
    session, without its password fields (what a ``user-change`` would carry); the page
    shows it, then follows it live.  ``databases`` lists the application databases of the
    rule file with the fields a client may write (``[]`` when none is configured).
    """

    MAX_FIELD = 256

    def __init__(self, gateway, http, couchdb_url: str, databases=(),
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES):
        super().__init__(_PagesAPI(gateway))
        self._http = http
        self._couchdb = couchdb_url.rstrip("/")
        self._databases = list(databases)
        self._max_body_bytes = max_body_bytes

    @inlineCallbacks
    def handle_POST(self, request):
        body = read_json_body(request, self._max_body_bytes)
        name, password = body.get("name"), body.get("password")
        if not isinstance(name, str) or not 0 < len(name) <= self.MAX_FIELD:
            raise bad_field("name", "name must be a string of 1-256 characters")
        if not isinstance(password, str) or not 0 < len(password) <= self.MAX_FIELD:
            raise bad_field("password", "password must be a string of 1-256 characters")
        try:
            response = yield self._http.post(
                self._couchdb + "/_session", json={"name": name, "password": password},
                timeout=10, headers={"Accept": "application/json"})
            yield treq.content(response)
        except Exception as e:
            _log.warn("the demo login could not reach CouchDB: {error}", error=type(e).__name__)
            raise HTTPError(503, "unavailable", "CouchDB did not answer; try again") from None
        if response.code != 200:
            raise HTTPError(401, "auth_failed", "wrong name or password")
        cookie = _auth_session(response.headers.getRawHeaders(b"set-cookie", []))
        if cookie is None:
            raise HTTPError(503, "unavailable", "CouchDB gave no session cookie")
        answer = yield self._whoami(cookie)
        attributes = b"; Path=/; HttpOnly; SameSite=Strict"
        if request.isSecure():
            attributes += b"; Secure"
        # a raw header: the value is CouchDB's, passed on unchanged (checked to be a token)
        request.responseHeaders.addRawHeader(b"Set-Cookie", b"AuthSession=" + cookie + attributes)
        return (200, answer)

    @inlineCallbacks
    def handle_GET(self, request):
        cookie = request.getCookie(b"AuthSession")
        if not cookie or _auth_session([b"AuthSession=" + cookie]) is None:
            return (200, {"name": None})
        try:
            answer = yield self._whoami(cookie)
        except HTTPError as e:
            if e.status != 401:
                raise
            return (200, {"name": None})
        return (200, answer)

    @inlineCallbacks
    def _whoami(self, cookie: bytes):
        """``{name, roles, profile, databases}`` for a session cookie; 401 if it is not one."""
        headers = {"Cookie": b"AuthSession=" + cookie, "Accept": "application/json"}
        try:
            response = yield self._http.get(self._couchdb + "/_session", headers=headers,
                                            timeout=10)
            session = yield treq.json_content(response)
            user = session.get("userCtx") if isinstance(session, dict) else None
            name = user.get("name") if isinstance(user, dict) else None
            if response.code != 200 or not isinstance(name, str):
                raise HTTPError(401, "not_logged_in", "the session has ended")
            roles = [r for r in user.get("roles") or [] if isinstance(r, str)]
            response = yield self._http.get(
                self._couchdb + "/_users/" + quote("org.couchdb.user:" + name, safe=""),
                headers=headers, timeout=10)
            doc = yield treq.json_content(response)
        except HTTPError:
            raise
        except Exception as e:
            _log.warn("the demo could not read a session from CouchDB: {error}",
                      error=type(e).__name__)
            raise HTTPError(503, "unavailable", "CouchDB did not answer; try again") from None
        profile = sanitize_user_doc(doc) if response.code == 200 and isinstance(doc, dict) \
            else None
        return {"name": name, "roles": roles, "profile": profile,
                "databases": self._databases}

    @inlineCallbacks
    def handle_DELETE(self, request):
        cookie = request.getCookie(b"AuthSession")
        if cookie and _auth_session([b"AuthSession=" + cookie]) is not None:
            try:
                response = yield self._http.delete(
                    self._couchdb + "/_session", headers={"Cookie": b"AuthSession=" + cookie},
                    timeout=10)
                yield treq.content(response)
            except Exception as e:
                _log.warn("ending a demo session on CouchDB failed: {error}",
                          error=type(e).__name__)
        request.responseHeaders.addRawHeader(
            b"Set-Cookie", b"AuthSession=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
        return (200, {"ok": True})


def describe_databases(rules) -> list:
    """What the demo page needs of the rule file: ``[{db, fields, writable}]``."""
    return [{"db": db, "fields": list(rule.fields), "writable": bool(rule.fields)}
            for db, rule in sorted(rules.items())]


def _auth_session(set_cookies) -> bytes:
    for header in set_cookies:
        first = header.split(b";", 1)[0]
        key, _, value = first.partition(b"=")
        if key.strip() == b"AuthSession" and value.strip():
            value = value.strip()
            if all(0x21 <= c <= 0x7e and c not in b';,"\\' for c in value):
                return value
    return None


def make_pages(gateway, http, config, rules=None) -> dict:
    """
    The site's children for browsers: ``{b"realtime.js": ..., b"admin": ..., ...}``.
    ``rules``: the application databases (a mapping db -> rule), listed by the demo.
    """
    pages = {
        b"realtime.js": StaticFile("realtime.js", JS, cors=True),
        b"static": StaticFolder(),
        b"admin": StaticFile("admin.html", HTML, csp=PAGE_CSP),
    }
    if config.demo:
        session = DemoSession(gateway, http, config.couchdb_url,
                              describe_databases(rules or {}), config.rest_max_body_bytes)
        pages[b"demo"] = DemoPage(session)
    return pages
