"""
What every REST endpoint shares: asynchronous JSON answers, credentials, request bodies and
field checks.  The endpoints themselves are in :mod:`realtime.http.rest`.

Errors are :class:`HTTPError`, answered as ``{"error": code, "message": text}`` (plus
``"field"`` naming the offending field of a 400).

Credentials (:class:`Credentials`):

- admin: ``Authorization: Bearer <REALTIME_ADMIN_KEY>`` (compared in constant time with
  ``hmac.compare_digest``) or ``Bearer <JWT>`` whose roles (``JWT_ROLES_CLAIM``) include
  ``admin``.  With no ``REALTIME_ADMIN_KEY`` the admin API is off: every admin endpoint
  answers 403 ``admin_disabled``, and an admin JWT does not switch it on (off means off).
  No or wrong credentials: 401 (with ``WWW-Authenticate: Bearer``); a valid JWT without the
  ``admin`` role: 403.  Cookies never carry admin rights (a browser sends them by itself).
- user (``/websocket/me/status``): ``Bearer <JWT>``, or the CouchDB ``AuthSession`` cookie
  under the same Origin rule as the WebSocket handshake (an ``Origin`` not in
  ``CORS_ORIGINS`` gets 403).  Not the admin key: it names no user.
- When the token store or CouchDB cannot answer, the answer is 503, not a guess.

CORS: a request whose ``Origin`` is in ``CORS_ORIGINS`` gets
``Access-Control-Allow-Origin`` (that origin) and ``-Allow-Credentials: true``; ``OPTIONS``
(a preflight) is answered 204 with the endpoint's methods and the ``Authorization`` and
``Content-Type`` headers allowed.  Other origins get no CORS headers (the browser then keeps
the answer from the page).

Bodies (:func:`read_json_body`): ``Content-Type: application/json`` only (415 otherwise;
a ``charset`` other than UTF-8 too), at most ``max_bytes`` (413).  The size is enforced
twice: :class:`realtime.http.site.CappedRequest` refuses a request whose ``Content-Length``
exceeds the cap as soon as its headers are read (413, connection closed, nothing buffered)
and stops buffering a chunked body once it passes the cap; here, the header and the
buffered size are checked again, for requests that came another way (tests, other sites).
"""

from __future__ import annotations

import hmac
from typing import Any, Callable, Optional

from twisted.internet.defer import inlineCallbacks, maybeDeferred
from twisted.logger import Logger
from twisted.web.server import NOT_DONE_YET

from realtime import jsonutil
from realtime.auth.identity import AuthFailure, OriginRefused
from realtime.auth.origins import cookie_value, origin_allowed
from realtime.http.resource import JSONResource, json_error, json_response


class HTTPError(Exception):
    def __init__(self, status: int, code: str, message: str, field: Optional[str] = None,
                 headers: Optional[dict] = None, extra: Optional[dict] = None):
        super().__init__(status, code, message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}
        self.extra = extra or {}  # more fields of the answer (a stored message's offset)

    def body(self) -> dict:
        body = {"error": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        body.update(self.extra)
        return body


def bad_field(field: str, message: str) -> HTTPError:
    return HTTPError(400, "bad_request", message, field=field)


# -- asynchronous answers -----------------------------------------------------------------

class Endpoint(JSONResource):
    """
    A JSON endpoint: ``handle_GET(request)`` (etc.; other methods get 405) returns
    ``(status, body)`` or a Deferred of it, or raises :class:`HTTPError`.  Unexpected
    failures are logged and answered 500.  An answer is not written to a client that has
    gone away.  ``OPTIONS`` is answered 204 (see CORS above).
    """

    _log = Logger()

    def __init__(self, api):
        super().__init__()
        self.api = api

    def _render_with(self, handler: Callable, request):
        gone = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        d = maybeDeferred(handler, request)

        def answered(result):
            status, body = result
            return status, body, {}

        def failed(failure):
            if failure.check(HTTPError):
                error = failure.value
                return error.status, error.body(), error.headers
            self._log.failure("a REST request failed", failure)
            return 500, {"error": "internal", "message": "internal server error"}, {}

        def write(result):
            status, body, headers = result
            self.api.gateway.metrics.http_response(status)
            if gone:
                return
            for name, value in headers.items():
                request.setHeader(name, value)
            request.write(json_response(request, status, body))
            request.finish()

        d.addCallback(answered)
        d.addErrback(failed)
        d.addCallback(write)
        d.addErrback(lambda f: self._log.failure("writing a REST answer failed", f))
        return NOT_DONE_YET

    def _allowed(self) -> str:
        return ", ".join(sorted(n[len("handle_"):] for n in dir(self) if n.startswith("handle_")))

    def _cors(self, request) -> bool:
        """CORS headers for an Origin in ``CORS_ORIGINS``; True when it is allowed."""
        request.setHeader(b"Vary", b"Origin")
        origin = request.getHeader(b"origin")
        if not origin:
            return False
        if not origin_allowed(origin.decode("latin-1"),
                              self.api.gateway.authenticator.allowed_origins):
            return False
        request.setHeader(b"Access-Control-Allow-Origin", origin)
        request.setHeader(b"Access-Control-Allow-Credentials", b"true")
        return True

    def render(self, request):
        method = request.method.decode("ascii", "replace")
        cors = self._cors(request)
        if method == "OPTIONS":
            request.setHeader(b"Allow", self._allowed().encode("ascii"))
            if cors:
                request.setHeader(b"Access-Control-Allow-Methods", self._allowed().encode("ascii"))
                request.setHeader(b"Access-Control-Allow-Headers", b"Authorization, Content-Type")
                request.setHeader(b"Access-Control-Max-Age", b"600")
            request.setResponseCode(204)
            return b""
        if method == "HEAD":  # a GET whose body Twisted does not send
            method = "GET"
        handler = getattr(self, "handle_" + method, None) if method.isupper() else None
        if handler is None:
            request.setHeader(b"Allow", self._allowed().encode("ascii"))
            self.api.gateway.metrics.http_response(405)
            return json_error(request, 405, "method_not_allowed", f"{method[:16]} not allowed")
        return self._render_with(handler, request)


# -- credentials --------------------------------------------------------------------------

_UNAUTHORIZED_HEADERS = {b"WWW-Authenticate": b'Bearer realm="realtime"'}


def bearer_token(request) -> Optional[str]:
    """The token of ``Authorization: Bearer <token>``, or None."""
    values = request.requestHeaders.getRawHeaders(b"authorization")
    if not values:
        return None
    try:
        text = values[0].decode("ascii")
    except UnicodeDecodeError:
        return None
    scheme, _, token = text.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def _credentials_error(failure: AuthFailure) -> HTTPError:
    """503 when the credentials could not be checked (CouchDB, JWKS or Redis away), else 401."""
    if failure.reason == "unavailable":
        return HTTPError(503, "unavailable", "credentials cannot be checked now; try again")
    return HTTPError(401, "unauthorized", "invalid credentials", headers=_UNAUTHORIZED_HEADERS)


class Credentials:
    """Checks the credentials of REST requests against the gateway's configuration."""

    def __init__(self, gateway):
        self._gateway = gateway

    @property
    def admin_enabled(self) -> bool:
        return bool(self._gateway.config.admin_key)

    def _is_admin_key(self, token: str) -> bool:
        key = self._gateway.config.admin_key
        return bool(key) and hmac.compare_digest(token.encode("utf-8"), key.encode("utf-8"))

    @inlineCallbacks
    def _verified(self, token: str):
        try:
            identity = yield self._gateway.authenticator.verify_token(token)
        except AuthFailure as failure:
            raise _credentials_error(failure) from None
        return identity

    @inlineCallbacks
    def require_admin(self, request):
        """Fires with a description of the admin (``"key"`` or ``"jwt"``), or fails."""
        if not self.admin_enabled:
            raise HTTPError(403, "admin_disabled",
                            "admin API disabled: no REALTIME_ADMIN_KEY is set")
        token = bearer_token(request)
        if token is None:
            raise HTTPError(401, "unauthorized", "admin credentials required",
                            headers=_UNAUTHORIZED_HEADERS)
        if self._is_admin_key(token):
            return "key"
        identity = yield self._verified(token)
        if not identity.is_admin:
            raise HTTPError(403, "forbidden", "the admin role is required")
        return "jwt"

    @inlineCallbacks
    def is_admin(self, request):
        """
        For public endpoints: True with admin credentials; False with none, with a valid
        non-admin JWT, or when the admin API is off; 401 for credentials that fail.
        """
        token = bearer_token(request)
        if token is None or not self.admin_enabled:
            return False
        if self._is_admin_key(token):
            return True
        identity = yield self._verified(token)
        return identity.is_admin

    @inlineCallbacks
    def require_user(self, request):
        """Fires with the caller's :class:`Identity` (JWT or AuthSession cookie), or fails."""
        authenticator = self._gateway.authenticator
        token = bearer_token(request)
        if token is not None:
            identity = yield self._verified(token)
            return identity
        cookie_header = request.getHeader(b"cookie")
        cookie = cookie_value(cookie_header.decode("latin-1")) if cookie_header else None
        if not cookie:
            raise HTTPError(401, "unauthorized", "user credentials required",
                            headers=_UNAUTHORIZED_HEADERS)
        origin = request.getHeader(b"origin")
        origin = origin.decode("latin-1") if origin else ""
        try:
            identity = yield authenticator.authenticate({"cookie": "AuthSession=" + cookie},
                                                        {}, origin)
        except OriginRefused:
            raise HTTPError(403, "forbidden", "Origin not allowed") from None
        except AuthFailure as failure:
            raise _credentials_error(failure) from None
        if identity is None:
            raise HTTPError(401, "unauthorized", "user credentials required",
                            headers=_UNAUTHORIZED_HEADERS)
        return identity


# -- bodies and fields --------------------------------------------------------------------

def read_json_body(request, max_bytes: int) -> dict:
    """The request's JSON object body; :class:`HTTPError` 413, 415 or 400 otherwise."""
    too_large = HTTPError(413, "too_large", f"the body is larger than {max_bytes} bytes")
    if getattr(request, "body_too_large", False):
        raise too_large
    length = request.getHeader(b"content-length")
    if length is not None:
        if not length.strip().isdigit():
            raise HTTPError(400, "bad_request", "invalid Content-Length")
        if int(length) > max_bytes:
            raise too_large
    content_type = request.getHeader(b"content-type") or b""
    media, _, params = content_type.partition(b";")
    if media.strip().lower() != b"application/json":
        raise HTTPError(415, "unsupported_media_type", "the body must be application/json")
    charset = params.strip().lower()
    if charset and charset.replace(b" ", b"") not in (b"charset=utf-8", b'charset="utf-8"'):
        raise HTTPError(415, "unsupported_media_type", "the body must be UTF-8 JSON")
    content = request.content
    if content is None:
        raw = b""
    else:
        content.seek(0, 2)
        if content.tell() > max_bytes:
            raise too_large
        content.seek(0)
        raw = content.read()
    try:
        body = jsonutil.loads(raw)
    except ValueError:
        raise HTTPError(400, "invalid_json", "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise HTTPError(400, "bad_request", "the body must be a JSON object")
    return body


MAX_USER_ID_LENGTH = 256
MAX_TYPE_LENGTH = 64
MAX_USER_IDS = 10000


def user_id_field(value: Any, field: str = "userId") -> str:
    if not isinstance(value, str) or not value:
        raise bad_field(field, f"{field} must be a non-empty string")
    if len(value) > MAX_USER_ID_LENGTH:
        raise bad_field(field, f"{field} is longer than {MAX_USER_ID_LENGTH} characters")
    return value


def string_field(body: dict, field: str) -> str:
    if field not in body:
        raise bad_field(field, f"{field} is required")
    if not isinstance(body[field], str):
        raise bad_field(field, f"{field} must be a string")
    return body[field]


def present_field(body: dict, field: str):
    if field not in body:
        raise bad_field(field, f"{field} is required (null is allowed)")
    return body[field]
