"""
The web site: the WebSocket resource at ``/ws``, the HTTP API under ``/websocket/``
(:mod:`realtime.http.rest`, given to :func:`make_site` by the wiring) and Prometheus
metrics at ``/metrics``.

Every HTTP answer is JSON, errors included (``{"error": code, "message": text}``), except
``/metrics`` (Prometheus text) and what :mod:`realtime.http.pages` serves to browsers.

Request bodies are capped (``REALTIME_REST_MAX_BODY_BYTES``) by :class:`CappedRequest`
before they are buffered: see its docstring.
"""

from __future__ import annotations

import io
from html import escape as html_escape

from autobahn.twisted.resource import WebSocketResource
from twisted.web.http import _escape
from twisted.web.server import Request, Site

import realtime
from realtime import jsonutil
from realtime.http.channel import GatewayChannel
from realtime.http.resource import JSONResource, json_response
from realtime.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE


class MetricsResource(JSONResource):
    """``GET /metrics``: Prometheus text.  Public, like status: counts only, no user ids."""

    isLeaf = True

    def __init__(self, gateway):
        super().__init__()
        self._gateway = gateway

    def render_GET(self, request):
        request.setHeader(b"Content-Type", METRICS_CONTENT_TYPE.encode("ascii"))
        request.setHeader(b"Cache-Control", b"no-store")
        return self._gateway.metrics.render()


class NoFavicon(JSONResource):
    """
    ``GET /favicon.ico``: 204, cached for a day.  A browser asks for it on every gateway URL
    it shows (``/websocket/status``, ``/metrics``, ``/``); a 404 there is an error in the
    page's console for nothing.  The pages declare their own icon.
    """

    isLeaf = True

    def render_GET(self, request):
        request.setResponseCode(204)
        request.setHeader(b"Cache-Control", b"public, max-age=86400")
        return b""


class CappedRequest(Request):
    """
    A request whose body may not exceed the site's ``max_body_bytes``.

    Twisted buffers a whole body into ``request.content`` before any resource sees it, so
    the cap is enforced here, as the body arrives:

    - a ``Content-Length`` above the cap is answered at once, when the headers are read:
      413 with a JSON body and ``Connection: close``; the body is never read (and an
      ``Expect: 100-continue`` client is not told to send it);
    - a body without a length (chunked) is buffered up to the cap; past it, what was
      buffered is dropped, the rest is discarded as it comes, and the resource answers
      413 (it sees ``body_too_large``).
    """

    body_too_large = False
    _answered_early = False
    _body_bytes = 0

    def _cap(self):
        site = getattr(self.channel, "site", None)
        return getattr(site, "max_body_bytes", None)

    def gotLength(self, length):
        cap = self._cap()
        if cap is not None and length is not None and length > cap:
            self.body_too_large = True
            self.content = io.BytesIO()
            self.requestHeaders.removeHeader(b"expect")
            self._answer_too_large_now(cap)
            return
        super().gotLength(length)

    def handleContentChunk(self, data):
        if self.body_too_large:
            return
        self._body_bytes += len(data)
        cap = self._cap()
        if cap is not None and self._body_bytes > cap:
            self.body_too_large = True
            self.content.close()
            self.content = io.BytesIO()
            return
        super().handleContentChunk(data)

    def _answer_too_large_now(self, cap):
        body = jsonutil.dumps({"error": "too_large",
                               "message": f"the body is larger than {cap} bytes"})
        transport = self.channel.transport
        transport.write(b"HTTP/1.1 413 Payload Too Large\r\n"
                        b"Content-Type: application/json; charset=utf-8\r\n"
                        b"Content-Length: %d\r\n"
                        b"Connection: close\r\n\r\n" % len(body) + body)
        self._answered_early = True
        self.channel.loseConnection()

    def process(self):
        if self._answered_early:
            return  # already answered; the connection is closing
        super().process()


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


class RootPointer(JSONResource):
    """
    ``GET /``: where things are.  JSON by default; a browser (``Accept: text/html``) gets
    the same links as a small HTML page.
    """

    isLeaf = True

    def __init__(self, links: dict):
        super().__init__()
        self._links = links

    def render_GET(self, request):
        accept = (request.getHeader(b"accept") or b"").lower()
        if b"text/html" in accept:
            items = "".join(f'<li><a href="{href}">{href}</a> {html_escape(text)}</li>'
                            for href, text in self._links.values())
            page = (f"<!doctype html><meta charset=utf-8><title>realtime</title>"
                    f"<h1>realtime {html_escape(realtime.__version__)}</h1><ul>{items}</ul>"
                    f"<p>Documentation: docs/index.rst in the repository.</p>")
            request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
            request.setHeader(b"Content-Security-Policy", b"default-src 'none'")
            request.setHeader(b"Cache-Control", b"no-store")
            return page.encode("utf-8")
        return json_response(request, 200, {
            "name": "realtime", "version": realtime.__version__,
            "links": {name: href for name, (href, _) in self._links.items()},
            "docs": "docs/index.rst in the repository; the REST API: /websocket/openapi.json",
        })


def root_links(pages) -> dict:
    """name -> (path, what it is), for :class:`RootPointer`."""
    links = {
        "websocket": ("/ws", "the WebSocket endpoint (a WebSocket client connects here)"),
        "status": ("/websocket/status", "health, public"),
        "rest": ("/websocket/", "the REST API"),
        "openapi": ("/websocket/openapi.json", "the REST API as an OpenAPI 3.1 document"),
        "metrics": ("/metrics", "Prometheus metrics"),
    }
    for name, text in ((b"demo", "the demo page"), (b"admin", "the operators' dashboard"),
                       (b"realtime.js", "the JavaScript client")):
        if name in (pages or {}):
            links[name.decode().replace(".js", "_js")] = ("/" + name.decode(), text)
    return links


class GatewaySite(Site):
    """Twisted Web's site, with :class:`GatewayChannel` connections and their deadlines."""

    protocol = GatewayChannel
    headers_timeout = 10.0
    body_timeout = 30.0

    def buildProtocol(self, addr):
        channel = super().buildProtocol(addr)
        channel.headers_timeout = self.headers_timeout
        channel.body_timeout = self.body_timeout
        return channel


def make_site(gateway, ws_factory, api_resource, pages=None) -> Site:
    """
    The site.  ``api_resource`` is the ``/websocket`` resource: the REST API
    (:func:`realtime.http.rest.make_api`), built by the caller (so that the site does not
    import the API, which imports the resource kit).  ``pages``: more children of the root,
    ``{name: resource}`` (:func:`realtime.http.pages.make_pages`: ``/realtime.js``,
    ``/admin``, ``/demo``, ``/static/``).
    """
    root = JSONResource()
    root.putChild(b"ws", WebSocketResource(ws_factory))
    root.putChild(b"websocket", api_resource)
    root.putChild(b"metrics", MetricsResource(gateway))
    root.putChild(b"favicon.ico", NoFavicon())
    for name, resource in (pages or {}).items():
        root.putChild(name, resource)
    root.putChild(b"", RootPointer(root_links(pages)))
    config = gateway.config
    site = GatewaySite(root, logFormatter=redacted_log_formatter,
                       timeout=config.http_idle_timeout_ms / 1000.0)
    site.headers_timeout = config.http_headers_timeout_ms / 1000.0
    site.body_timeout = config.http_body_timeout_ms / 1000.0
    site.requestFactory = CappedRequest
    site.max_body_bytes = gateway.config.rest_max_body_bytes
    site.displayTracebacks = False
    site.noisy = False
    return site
