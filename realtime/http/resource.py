"""
The JSON resource kit: every HTTP answer of the gateway is JSON, errors included
(``{"error": code, "message": text}``).  :class:`JSONResource` answers unknown children
with 404 and unsupported methods with 405 (404 for a folder of the tree that is not an
endpoint), in JSON.
"""

from __future__ import annotations

from twisted.web.resource import Resource

from realtime import jsonutil

#: the default cap on a request body (``REALTIME_REST_MAX_BODY_BYTES``)
DEFAULT_MAX_BODY_BYTES = 1024 * 1024


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
                             if m.startswith("render_") and m[len("render_"):].isupper()
                             and m != "render_HEAD")  # every Resource has that one
            if not allowed:  # a folder of the tree (``/websocket/users``), not an endpoint
                return json_error(request, 404, "not_found", "no such resource")
            request.setHeader(b"Allow", ", ".join(allowed).encode("ascii"))
            return json_error(request, 405, "method_not_allowed", f"{method[:16]} not allowed")
        return handler(request)
