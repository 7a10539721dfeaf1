"""
The REST API under ``/websocket``: applications push messages and notifications to users
and topics, and inspect and manage connections.  :func:`make_api` builds the resource tree
(the service and the test harness both use it).

Admin endpoints (credentials: :mod:`realtime.http.endpoint`), body -> answer::

  POST   /websocket/message/user       {userId, type, data}
         -> 200 {userId, delivered: true, connections, offset}
  POST   /websocket/message/users      {userIds, type, data}
         -> 200 {delivered: [ids], notConnected: [ids], offset}
  POST   /websocket/message/broadcast  {type, data}
         -> 200 {sent: true, users, connections, offset}
  POST   /websocket/notification       {userId, title, body, ...}
         -> 200 {userId, delivered: true, connections, offset}
  POST   /websocket/publish            {topic, data}
         -> 200 {topic, published: true, offset}
  POST   /websocket/tokens/revoke      {token} or {jti, exp}
         -> 200 {revoked: true, tokenId, expiresAt, closedConnections}
  GET    /websocket/users/connected
         -> 200 {users: [{userId, connections}], totalUsers, totalConnections}
  GET    /websocket/users/{userId}/status
         -> 200 {userId, connected, connections}
  DELETE /websocket/users/{userId}/disconnect
         -> 200 {userId, disconnected: <connections closed>}
            (users/*, me/status and status: realtime.http.users)
  GET    /websocket/admin/summary
         -> 200 {process, processes: [{id, authenticated, users}], connections, topics}
            (realtime.http.summary)

Other endpoints::

  GET    /websocket/me/status   the caller's own {userId, connected, connections}
                                (their JWT as Bearer, or the AuthSession cookie)
  GET    /websocket/status      public; with admin credentials adds connections.perUser
  GET    /websocket/openapi.json  public: this API as OpenAPI 3.1 (realtime.http.openapi)
  GET    /websocket/              public: an index of the operations (the same document)

Counts (``connections``, ``users``) are what presence said just before the event was sent.

What a client receives:

- ``message/*``: ``{"type": <type>, "data": <data>, "timestamp": ISO, "offset"}``; ``type`` is the
  sender's, but not one the protocol uses itself (``connected``, ``ping``, ``error`` ...:
  :data:`realtime.vocabulary.MESSAGE_TYPES`), which is refused with 400.
- ``notification``: ``{"type": "notification", "data": {"title", "body", ...every other
  field of the body but userId}, "timestamp", "offset"}``.
- ``publish``: ``{"type": "publication", "topic", "data", "from": "server", "timestamp",
  "offset"}`` to the topic's subscribers (any valid topic name: an admin may publish
  anywhere).

Message history (:mod:`realtime.hub.history`): every message above is appended to the
history first, which gives it its ``offset`` (in the message, and in the answer), then sent.
``message/user``, ``message/users`` and ``notification`` are kept in each named user's
history, connected or not; ``broadcast`` once, for every user; ``publish`` in the topic's.
A client resumes them with ``resume {since: {messages: offset}}`` (users) or ``subscribe
{topic, since}`` (topics).  When the history cannot be written (Redis away), nothing is
sent: 503.

"Connected" is asked of the gateway's presence (cluster-wide with a Redis presence): a
message to a user with no connection anywhere is 404 ``not_connected``, and nothing is sent
live, but it is kept in the user's history all the same (the body says ``"stored": true``
and gives the ``offset``) for a later resume; ``message/users`` sends to those connected,
names the others, and keeps it for all of them.  A message is encoded
once, handed to the broker as one event, and the answer is 2xx only once the broker has
accepted it (503 ``unavailable`` when it refuses).

While presence is known to be incomplete (Redis lost its data and not every process has
written its connections back: :mod:`realtime.redis.presence_recovery`), an answer that
could be a false "not connected" is 503 with ``Retry-After`` instead.

The users endpoints (``users/*``, ``me/status``, ``status``) are in
:mod:`realtime.http.users`; this module holds what every endpoint shares (:class:`API`),
the message endpoints, the token revocation and :func:`make_api`.
"""

from __future__ import annotations

import unicodedata

from twisted.internet.defer import CancelledError, FirstError, gatherResults, inlineCallbacks
from twisted.logger import Logger
from twisted.web.resource import Resource

from realtime.auth import revocation
from realtime.auth.identity import JWT_LEEWAY_SECONDS
from realtime.http.endpoint import (
    MAX_TYPE_LENGTH,
    MAX_USER_IDS,
    Credentials,
    Endpoint,
    HTTPError,
    bad_field,
    present_field,
    read_json_body,
    string_field,
    user_id_field,
)
from realtime.http.openapi import APIIndex, OpenAPIDocument
from realtime.http.resource import DEFAULT_MAX_BODY_BYTES, JSONResource
from realtime.http.summary import AdminSummary
from realtime.http.users import MyStatus, Status, UsersResource
from realtime.hub import topics
from realtime.hub.broker import UNAVAILABLE
from realtime.hub.history import BROADCAST_STREAM, topic_stream, user_stream
from realtime.hub.presence import PresenceIncomplete
from realtime.vocabulary import (
    MESSAGE_TYPES,
    all_event,
    users_event,
    utc_timestamp,
)

_log = Logger()


class API:
    """What the endpoints share: the gateway, credentials, limits and delivery."""

    def __init__(self, gateway, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES):
        self.gateway = gateway
        self.credentials = Credentials(gateway)
        self.max_body_bytes = max_body_bytes

    def body(self, request) -> dict:
        return read_json_body(request, self.max_body_bytes)

    @inlineCallbacks
    def admin_body(self, request):
        """The JSON body of a request with admin credentials (else the HTTPError)."""
        yield self.credentials.require_admin(request)
        return self.body(request)

    def message(self, kind: str, data) -> dict:
        return {"type": kind, "data": data, "timestamp": self.gateway.timestamp()}

    @inlineCallbacks
    def remember(self, streams, message: dict):
        """Append to the history: ``(offset, text)``; 503 when it cannot be written."""
        try:
            stored = yield self.gateway.history.append(streams, message)
        except Exception as e:
            if not isinstance(e, UNAVAILABLE + (CancelledError, ConnectionError)):
                _log.failure("appending to the message history failed")
            raise HTTPError(503, "unavailable",
                            "the message could not be stored; try again") from None
        return stored

    @inlineCallbacks
    def send_to_user(self, user_id: str, kind: str, data):
        """
        Keep the message in the user's history, and send it to the user's connections:
        the 200 answer, or 404 ``not_connected`` (stored all the same).
        """
        count = yield self.connection_count(user_id)
        offset, text = yield self.remember([user_stream(user_id)], self.message(kind, data))
        if not count:
            raise HTTPError(404, "not_connected", "the user is not connected",
                            extra={"stored": True, "offset": offset})
        yield self.publish(users_event([user_id], text, kind))
        return (200, {"userId": user_id, "delivered": True, "connections": count,
                      "offset": offset})

    @inlineCallbacks
    def publish(self, event: dict):
        """Hand an event to the broker; 503 when it is refused."""
        try:
            reached = yield self.gateway.broker.publish(event)
        except Exception as e:
            _log.warn("the broker refused a REST event: {error}", error=type(e).__name__)
            raise HTTPError(503, "unavailable",
                            "the message could not be handed to the broker; try again") from None
        return reached

    @inlineCallbacks
    def connection_count(self, user_id: str):
        """The user's connections (all processes); 503 when presence cannot answer."""
        try:
            count = yield self.gateway.presence.connection_count(user_id)
        except Exception as e:
            raise _presence_unavailable(e) from None
        return count

    @inlineCallbacks
    def users(self):
        """user id -> connections (all processes); 503 when presence cannot answer."""
        try:
            users = yield self.gateway.presence.users()
        except Exception as e:
            raise _presence_unavailable(e) from None
        return users

    @inlineCallbacks
    def user_status(self, user_id: str):
        count = yield self.connection_count(user_id)
        return {"userId": user_id, "connected": count > 0, "connections": count}


def _presence_unavailable(error) -> HTTPError:
    """503 with Retry-After: Redis is away, or presence is being rebuilt after it lost its data."""
    _log.warn("presence could not answer: {error}", error=type(error).__name__)
    if isinstance(error, PresenceIncomplete):
        message = ("who is connected cannot be told yet: presence is being rebuilt after "
                   "Redis lost its data; retry in a second")
    else:
        message = "who is connected cannot be told now; try again"
    return HTTPError(503, "unavailable", message, headers={"Retry-After": "1"})


def message_type(body: dict) -> str:
    kind = string_field(body, "type")
    if not kind or len(kind) > MAX_TYPE_LENGTH:
        raise bad_field("type", f"type must be 1 to {MAX_TYPE_LENGTH} characters")
    if any(unicodedata.category(c)[0] == "C" for c in kind):
        raise bad_field("type", "type contains control characters")
    if kind in MESSAGE_TYPES:
        raise bad_field("type", f"type {kind!r} is reserved by the protocol")
    return kind


# -- messages ------------------------------------------------------------------------------

class MessageUser(Endpoint):
    @inlineCallbacks
    def handle_POST(self, request):
        api = self.api
        body = yield api.admin_body(request)
        user_id = user_id_field(body.get("userId"))
        kind = message_type(body)
        data = present_field(body, "data")
        answer = yield api.send_to_user(user_id, kind, data)
        return answer


class MessageUsers(Endpoint):
    @inlineCallbacks
    def handle_POST(self, request):
        api = self.api
        body = yield api.admin_body(request)
        user_ids = body.get("userIds")
        if not isinstance(user_ids, list) or not user_ids:
            raise bad_field("userIds", "userIds must be a non-empty list of user ids")
        if len(user_ids) > MAX_USER_IDS:
            raise bad_field("userIds", f"at most {MAX_USER_IDS} userIds per request")
        user_ids = list(dict.fromkeys(user_id_field(u, "userIds") for u in user_ids))
        kind = message_type(body)
        data = present_field(body, "data")
        try:
            counts = yield gatherResults(
                [api.connection_count(u) for u in user_ids], consumeErrors=True)
        except FirstError as e:
            e.subFailure.raiseException()
        delivered = [u for u, n in zip(user_ids, counts) if n]
        not_connected = [u for u, n in zip(user_ids, counts) if not n]
        offset, text = yield api.remember([user_stream(u) for u in user_ids],
                                          api.message(kind, data))
        if delivered:
            yield api.publish(users_event(delivered, text, kind))
        return (200, {"delivered": delivered, "notConnected": not_connected,
                      "offset": offset})


class Broadcast(Endpoint):
    @inlineCallbacks
    def handle_POST(self, request):
        api = self.api
        body = yield api.admin_body(request)
        kind = message_type(body)
        data = present_field(body, "data")
        users = yield api.users()
        offset, text = yield api.remember([BROADCAST_STREAM], api.message(kind, data))
        yield api.publish(all_event(text, kind))
        return (200, {"sent": True, "users": len(users),
                      "connections": sum(users.values()), "offset": offset})


class Notification(Endpoint):
    @inlineCallbacks
    def handle_POST(self, request):
        api = self.api
        body = yield api.admin_body(request)
        user_id = user_id_field(body.get("userId"))
        string_field(body, "title")
        string_field(body, "body")
        data = {key: value for key, value in body.items() if key != "userId"}
        answer = yield api.send_to_user(user_id, "notification", data)
        return answer


class Publish(Endpoint):
    @inlineCallbacks
    def handle_POST(self, request):
        api = self.api
        body = yield api.admin_body(request)
        topic = body.get("topic")
        problem = topics.topic_error(topic)
        if problem is not None:
            raise bad_field("topic", problem)
        data = present_field(body, "data")
        offset, text = yield api.remember(
            [topic_stream(topic)],
            topics.publication(topic, data, "server", api.gateway.timestamp()))
        yield api.publish(topics.publication_event_text(topic, text))
        return (200, {"topic": topic, "published": True, "offset": offset})


class RevokeToken(Endpoint):
    """
    Revoke a token until its own expiry (:mod:`realtime.auth.revocation`); its live connections,
    on every process, get ``auth_failed`` ``revoked`` and close 4001.  The posted token's
    ``jti``/``exp`` are read without verifying its signature: the caller is an admin.
    """

    @inlineCallbacks
    def handle_POST(self, request):
        api = self.api
        yield api.credentials.require_admin(request)
        try:
            token_id, expires_at = revocation.revocation_target(api.body(request))
        except ValueError as e:
            raise HTTPError(400, "bad_request", str(e)[:200]) from None
        if expires_at + JWT_LEEWAY_SECONDS <= api.gateway.now():
            # Refused by every verifier already (exp is checked with this leeway): nothing
            # to store, and a 200 "revoked" would mislead.
            raise HTTPError(400, "already_expired",
                            f"the token expired at {utc_timestamp(max(expires_at, 0))}: it is "
                            "refused already; nothing was revoked", field="exp")
        try:
            closed = yield api.gateway.revoker.revoke(token_id, expires_at)
        except Exception as e:
            if not isinstance(e, UNAVAILABLE + (CancelledError, ConnectionError)):
                _log.failure("revoking a token failed")
            raise HTTPError(503, "unavailable", "the revocation store cannot be reached") from None
        return (200, {"revoked": True, "tokenId": token_id,
                           "expiresAt": utc_timestamp(expires_at), "closedConnections": closed})


def make_api(gateway, max_body_bytes: int = None) -> Resource:
    """The ``/websocket`` resource tree."""
    if max_body_bytes is None:
        max_body_bytes = gateway.config.rest_max_body_bytes
    api = API(gateway, max_body_bytes)
    root = JSONResource()
    message = JSONResource()
    message.putChild(b"user", MessageUser(api))
    message.putChild(b"users", MessageUsers(api))
    message.putChild(b"broadcast", Broadcast(api))
    root.putChild(b"message", message)
    root.putChild(b"notification", Notification(api))
    root.putChild(b"publish", Publish(api))
    root.putChild(b"users", UsersResource(api))
    me = JSONResource()
    me.putChild(b"status", MyStatus(api))
    root.putChild(b"me", me)
    root.putChild(b"status", Status(api))
    tokens = JSONResource()
    tokens.putChild(b"revoke", RevokeToken(api))
    root.putChild(b"tokens", tokens)
    admin = JSONResource()
    admin.putChild(b"summary", AdminSummary(api))  # realtime.http.summary (the dashboard's)
    root.putChild(b"admin", admin)
    root.putChild(b"openapi.json", OpenAPIDocument(api))  # realtime.http.openapi
    root.putChild(b"", APIIndex(api))  # /websocket/: the operations, from the same document
    return root
