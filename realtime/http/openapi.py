"""
``GET /websocket/openapi.json`` (public, no credentials): the REST API as an OpenAPI 3.1
document.  The document is data (:data:`DOCUMENT`, a dict built here, nothing derived at
run time); the endpoint answers it as is.

It covers every endpoint under ``/websocket/`` and ``GET /metrics``; not the WebSocket
endpoint ``/ws`` (docs/protocol.rst) nor the browser pages (``/demo``, ``/admin``,
``/realtime.js``).  Each operation lists every status it can answer, with the schema of its
answer: 2xx bodies name their fields, errors are ``{"error", "message", "field"?}``.

tests/test_openapi.py keeps it true: the document is valid OpenAPI 3.1
(openapi-spec-validator); it documents exactly the endpoints and methods of the resource
tree :func:`realtime.http.rest.make_api` builds (the users/{userId}/ children included);
every documented operation, called without credentials, with admin credentials and a bad
body, and as it succeeds, answers a status documented for it with a body that matches the
documented schema.
"""

from __future__ import annotations

from realtime.http.endpoint import Endpoint

_ADMIN = [{"adminKey": []}, {"bearerJWT": []}]
_STR = {"type": "string"}
_INT = {"type": "integer", "minimum": 0}
_BOOL = {"type": "boolean"}
_STRS = {"type": "array", "items": _STR}
_OFFSET = {"type": "string", "description": "the message's offset in the history (opaque): "
           "a client resumes from it (docs/resume.rst)"}

_ERROR_TEXT = {
    400: "bad input (the field is named)",
    401: "no or bad credentials (WWW-Authenticate: Bearer)",
    403: "not an admin, the admin API is off (no REALTIME_ADMIN_KEY), or a cookie from an "
         "Origin not in CORS_ORIGINS",
    404: "not connected anywhere",
    413: "body too large (REALTIME_REST_MAX_BODY_BYTES)",
    415: "the body is not application/json (UTF-8)",
    503: "a backend (broker, presence, history, revocation store, CouchDB) cannot answer "
         "now: nothing was done, retry later",
}


def _object(required, properties: dict, **more) -> dict:
    return {"type": "object", "required": list(required), "properties": properties, **more}


def _json(description: str, schema: dict) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict:
    return {str(c): _json(_ERROR_TEXT[c], {"$ref": "#/components/schemas/Error"})
            for c in codes}


def _body(required, properties: dict) -> dict:
    return {"required": True,
            "content": {"application/json": {"schema": _object(required, properties)}}}


def _admin_post(summary: str, body: dict, answer: dict, **responses) -> dict:
    return {"post": {
        "summary": summary, "security": _ADMIN, "requestBody": body,
        "responses": {"200": _json("done", answer),
                      **_errors(400, 401, 403, 413, 415, 503), **responses}}}


def _admin_get(summary: str, answer: dict, **more) -> dict:
    return {"get": {"summary": summary, "security": _ADMIN, **more,
                    "responses": {"200": _json("the answer", answer),
                                  **_errors(401, 403, 503)}}}


_USER_ID = {"name": "userId", "in": "path", "required": True, "schema": _STR,
            "description": "percent-encoded user id (one path segment)"}
_USER_STATUS = _object(["userId", "connected", "connections"],
                       {"userId": _STR, "connected": _BOOL, "connections": _INT})
_DELIVERED = _object(["userId", "delivered", "connections", "offset"], {
    "userId": _STR, "delivered": {"const": True}, "connections": _INT, "offset": _OFFSET})
_NOT_CONNECTED = _json(
    "the user is not connected anywhere: nothing was sent live, but the message is kept in "
    "the user's history (stored, offset) for a later resume",
    {"allOf": [{"$ref": "#/components/schemas/Error"},
               _object(["stored", "offset"], {"stored": {"const": True},
                                              "offset": _OFFSET})]})
_COUNTS = _object(["total", "authenticated"], {
    "total": _INT, "authenticated": _INT,
    "perUser": {"type": "array", "description": "admin credentials only (all processes)",
                "items": _object(["userId", "connections", "deviceCount"], {
                    "userId": _STR, "connections": _INT,
                    "deviceCount": {**_INT, "description": "seed 001's name for "
                                    "connections (the same number)"}})}})

DOCUMENT = {
    "openapi": "3.1.0",
    "info": {"title": "realtime REST API", "version": "1",
             "description": "Push messages and notifications to users and topics, and "
                            "inspect and manage connections (docs/rest.rst).  JSON in, "
                            "JSON out."},
    "servers": [{"url": "/"}],
    "components": {
        "securitySchemes": {
            "adminKey": {"type": "http", "scheme": "bearer",
                         "description": "the admin key (REALTIME_ADMIN_KEY) as Bearer"},
            "bearerJWT": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                          "description": "a JWT; admin endpoints need the admin role"},
            "couchSession": {"type": "apiKey", "in": "cookie", "name": "AuthSession",
                             "description": "a CouchDB session (user endpoints only)"},
        },
        "schemas": {"Error": _object(["error", "message"], {
            "error": {**_STR, "description": "a code: bad_request, invalid_json, "
                      "already_expired, unauthorized, forbidden, admin_disabled, "
                      "not_connected, too_large, unsupported_media_type, unavailable"},
            "message": _STR, "field": _STR})},
    },
    "paths": {
        "/websocket/message/user": _admin_post(
            "a message to one user's connections",
            _body(["userId", "type", "data"], {
                "userId": _STR, "type": {**_STR, "description": "any type the protocol "
                                         "does not use itself"}, "data": {}}),
            _DELIVERED, **{"404": _NOT_CONNECTED}),
        "/websocket/message/users": _admin_post(
            "a message to several users (sent to those connected, kept for all)",
            _body(["userIds", "type", "data"], {
                "userIds": {**_STRS, "minItems": 1}, "type": _STR, "data": {}}),
            _object(["delivered", "notConnected", "offset"], {
                "delivered": _STRS, "notConnected": _STRS, "offset": _OFFSET})),
        "/websocket/message/broadcast": _admin_post(
            "a message to every connected user",
            _body(["type", "data"], {"type": _STR, "data": {}}),
            _object(["sent", "users", "connections", "offset"], {
                "sent": {"const": True}, "users": _INT, "connections": _INT,
                "offset": _OFFSET})),
        "/websocket/notification": _admin_post(
            "a notification to one user (type notification, data: the body but userId)",
            _body(["userId", "title", "body"], {
                "userId": _STR, "title": _STR, "body": _STR}),
            _DELIVERED, **{"404": _NOT_CONNECTED}),
        "/websocket/publish": _admin_post(
            "a publication (from: server) to a topic's subscribers",
            _body(["topic", "data"], {"topic": _STR, "data": {}}),
            _object(["topic", "published", "offset"], {
                "topic": _STR, "published": {"const": True}, "offset": _OFFSET})),
        "/websocket/tokens/revoke": _admin_post(
            "revoke a token until its expiry and close its connections (4001 revoked); "
            "400 already_expired for a token past its exp",
            {"required": True, "content": {"application/json": {"schema": {"oneOf": [
                _object(["token"], {"token": _STR}),
                _object(["jti", "exp"], {"jti": _STR, "exp": {"type": "integer"}})]}}}},
            _object(["revoked", "tokenId", "expiresAt", "closedConnections"], {
                "revoked": {"const": True}, "tokenId": _STR, "expiresAt": _STR,
                "closedConnections": _INT})),
        "/websocket/users/connected": _admin_get(
            "the connected users and their connection counts, all processes",
            _object(["users", "totalUsers", "totalConnections"], {
                "users": {"type": "array", "items": _object(["userId", "connections"], {
                    "userId": _STR, "connections": _INT})},
                "totalUsers": _INT, "totalConnections": _INT})),
        "/websocket/users/{userId}/status": _admin_get(
            "one user's connections, all processes", _USER_STATUS, parameters=[_USER_ID]),
        "/websocket/users/{userId}/disconnect": {"delete": {
            "summary": "close a user's connections on every process (4003)",
            "security": _ADMIN, "parameters": [_USER_ID],
            "responses": {"200": _json("the connections are being closed", _object(
                              ["userId", "disconnected"],
                              {"userId": _STR, "disconnected": {**_INT, "minimum": 1}})),
                          **_errors(401, 403, 404, 503)}}},
        "/websocket/admin/summary": _admin_get(
            "processes, connections and topics (the /admin dashboard's)",
            _object(["process", "processes", "connections", "topics"], {
                "process": _STR,
                "processes": {"type": "array", "items": _object(
                    ["id", "authenticated", "users"],
                    {"id": _STR, "authenticated": _INT, "users": _INT})},
                "connections": _object(["total", "authenticated"],
                                       {"total": _INT, "authenticated": _INT}),
                "topics": _INT})),
        "/websocket/me/status": {"get": {
            "summary": "the caller's own connections (a user's JWT or AuthSession cookie)",
            "security": [{"bearerJWT": []}, {"couchSession": []}],
            "responses": {"200": _json("status", _USER_STATUS), **_errors(401, 403, 503)}}},
        "/websocket/status": {"get": {
            "summary": "health (public); admin credentials add connections.perUser and each "
                       "feed's errors",
            "security": [{}, *_ADMIN],
            "responses": {"200": _json("status", _object(
                ["status", "connections", "uptime", "uptimeSeconds", "couchdb", "redis"], {
                    "status": {"enum": ["healthy", "degraded"]},
                    "connections": _COUNTS, "uptime": _STR,
                    "uptimeSeconds": {"type": "number"},
                    "couchdb": _object(["state"], {"state": _STR}),
                    "redis": _object(["state"], {"state": _STR})})),
                **_errors(401, 503)}}},
        "/websocket/": {"get": {
            "summary": "an index of this API (public): its operations and where this "
                       "document is",
            "security": [{}],
            "responses": {"200": _json("the index", _object(["openapi", "operations"], {
                "openapi": _STR, "docs": _STR,
                "operations": {"type": "array", "items": _object(
                    ["method", "path", "summary"],
                    {"method": _STR, "path": _STR, "summary": _STR})}}))}}},
        "/websocket/openapi.json": {"get": {
            "summary": "this document (public)", "security": [{}],
            "responses": {"200": _json("an OpenAPI 3.1 document",
                                       _object(["openapi", "paths"], {}))}}},
        "/metrics": {"get": {
            "summary": "Prometheus metrics of this process (public; no user ids)",
            "security": [{}],
            "responses": {"200": {"description": "Prometheus text format",
                                  "content": {"text/plain": {"schema": _STR}}}}}},
    },
}


class OpenAPIDocument(Endpoint):
    def handle_GET(self, request):
        return (200, DOCUMENT)


def _operations() -> list:
    return [{"method": method.upper(), "path": path, "summary": operation["summary"]}
            for path, item in DOCUMENT["paths"].items()
            for method, operation in item.items()]


class APIIndex(Endpoint):
    """``GET /websocket/``: where a person who follows the banner's link lands."""

    def handle_GET(self, request):
        return (200, {"openapi": "/websocket/openapi.json",
                      "docs": "docs/rest.rst in the repository",
                      "operations": _operations()})
