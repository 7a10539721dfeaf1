"""
The web site: the WebSocket resource at ``/ws`` and the HTTP API under ``/websocket/``.

Every HTTP answer is JSON, errors included (``{"error": code, "message": text}``).
"""

from __future__ import annotations

from autobahn.twisted.resource import WebSocketResource
from twisted.web.http import _escape
from twisted.web.resource import Resource
from twisted.web.server import Site

from realtime import jsonutil


def json_response(request, status: int, body) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
    request.setHeader(b"Cache-Control", b"no-store")
    return jsonutil.dumps(body)


def json_error(request, status: int, code: str, message: str) -> bytes:
    return json_response(request, status, {"error": code, "message": message})


class JSONNotFound(Resource):
    isLeaf = True

    def render(self, request):
        return json_error(request, 404, "not_found", "no such resource")


class JSONResource(Resource):
    """A resource whose unknown children and unsupported methods answer in JSON."""

    def getChild(self, path, request):
        return JSONNotFound()

    def render(self, request):
        method = request.method.decode("ascii", "replace")
        handler = getattr(self, "render_" + method, None)
        if handler is None:
            allowed = sorted(m[len("render_"):] for m in dir(self)
                             if m.startswith("render_") and m[len("render_"):].isupper())
            request.setHeader(b"Allow", ", ".join(allowed).encode("ascii"))
            return json_error(request, 405, "method_not_allowed", f"{method} not allowed")
        return handler(request)


class StatusResource(JSONResource):
    """``GET /websocket/status``: public health (see :meth:`Gateway.status`)."""

    isLeaf = True

    def __init__(self, gateway, is_admin=lambda request: False):
        super().__init__()
        self._gateway = gateway
        self._is_admin = is_admin

    def render_GET(self, request):
        return json_response(request, 200, self._gateway.status(
            include_users=self._is_admin(request)))


def redacted_log_formatter(timestamp, request) -> str:
    """
    An access-log line without the query string (it may carry ``token=``) and without
    credentials: the path, method, status and size only.
    """
    path = request.uri.split(b"?", 1)[0]
    return '"%s" - - %s "%s %s %s" %d %s' % (
        _escape(request.getClientAddress().host if hasattr(request.getClientAddress(), "host") else "-"),
        timestamp,
        _escape(request.method),
        _escape(path),
        _escape(request.clientproto),
        request.code,
        request.sentLength or "-",
    )


def make_site(gateway, ws_factory, api_resource=None) -> Site:
    """
    The site.  ``api_resource`` is the ``/websocket`` resource; by default one that only
    serves ``status``.
    """
    root = JSONResource()
    root.putChild(b"ws", WebSocketResource(ws_factory))
    if api_resource is None:
        api_resource = JSONResource()
        api_resource.putChild(b"status", StatusResource(gateway))
    root.putChild(b"websocket", api_resource)
    site = Site(root, logFormatter=redacted_log_formatter)
    site.displayTracebacks = False
    site.noisy = False
    return site
