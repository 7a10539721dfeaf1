"""
The users endpoints of the REST API (:func:`realtime.http.rest.make_api` puts them in the
tree; what they share, ``api``, is :class:`realtime.http.rest.API`)::

  GET    /websocket/users/connected          admin
         -> 200 {users: [{userId, connections}], totalUsers, totalConnections}
  GET    /websocket/users/{userId}/status    admin
         -> 200 {userId, connected, connections}
  DELETE /websocket/users/{userId}/disconnect   admin
         -> 200 {userId, disconnected: <connections closed>}; 404 not_connected
  GET    /websocket/me/status    the caller's own {userId, connected, connections}
                                 (their JWT as Bearer, or the AuthSession cookie)
  GET    /websocket/status       public; with admin credentials adds connections.perUser

Counts are presence's (every process).  ``disconnect``: the user's connections, on every
process, are closed with 4003 ("disconnected by admin"; 4003 is in the do-not-reconnect
range: the client should not come straight back with the same credentials).

User ids taken from the path are percent-decoded once (by Twisted, per segment, so ``%2F``
is a ``/`` inside the id), decoded as UTF-8, and used only as dictionary keys: an odd id
(``..%2F``, ``%00``, any Unicode) is just a user who is not connected.  ``users/connected``
is that endpoint unless more of the path follows (``users/connected/status`` is the status
of a user named ``connected``).
"""

from __future__ import annotations

from twisted.internet.defer import inlineCallbacks

from realtime.http.endpoint import Endpoint, HTTPError, bad_field, user_id_field
from realtime.http.resource import JSONResource
from realtime.vocabulary import CLOSE_FORBIDDEN, disconnect_event


class ConnectedUsers(Endpoint):
    @inlineCallbacks
    def handle_GET(self, request):
        api = self.api
        yield api.credentials.require_admin(request)
        users = yield api.users()
        return (200, {
            "users": [{"userId": u, "connections": n} for u, n in sorted(users.items())],
            "totalUsers": len(users),
            "totalConnections": sum(users.values()),
        })


def _path_user_id(segment: bytes) -> str:
    """A user id from one path segment (already percent-decoded by Twisted)."""
    try:
        text = segment.decode("utf-8")
    except UnicodeDecodeError:
        raise bad_field("userId", "userId is not valid UTF-8") from None
    return user_id_field(text)


class UserStatus(Endpoint):
    def __init__(self, api, segment: bytes):
        super().__init__(api)
        self._segment = segment

    @inlineCallbacks
    def handle_GET(self, request):
        api = self.api
        yield api.credentials.require_admin(request)
        status = yield api.user_status(_path_user_id(self._segment))
        return (200, status)


class Disconnect(Endpoint):
    def __init__(self, api, segment: bytes):
        super().__init__(api)
        self._segment = segment

    @inlineCallbacks
    def handle_DELETE(self, request):
        api = self.api
        yield api.credentials.require_admin(request)
        user_id = _path_user_id(self._segment)
        count = yield api.connection_count(user_id)
        if not count:
            raise HTTPError(404, "not_connected", "the user is not connected")
        # "at": a process replaying the event after a Redis blip must not close the
        # connections the user opened after it (see Registry.dispatch).
        yield api.publish(disconnect_event(user_id, CLOSE_FORBIDDEN, "disconnected by admin",
                                           at=api.gateway.now()))
        return (200, {"userId": user_id, "disconnected": count})


class UserResource(JSONResource):
    """``/websocket/users/{userId}/``: ``status`` and ``disconnect``."""

    def __init__(self, api, segment: bytes):
        super().__init__()
        self.putChild(b"status", UserStatus(api, segment))
        self.putChild(b"disconnect", Disconnect(api, segment))


class UsersResource(JSONResource):
    """``/websocket/users/``: ``connected``, or a user id (even one named ``connected``)."""

    def __init__(self, api):
        super().__init__()
        self._api = api

    def getChild(self, path, request):
        if path == b"connected" and not request.postpath:
            return ConnectedUsers(self._api)
        return UserResource(self._api, path)


class MyStatus(Endpoint):
    @inlineCallbacks
    def handle_GET(self, request):
        identity = yield self.api.credentials.require_user(request)
        status = yield self.api.user_status(identity.user_id)
        return (200, status)


class Status(Endpoint):
    """Public health; with admin credentials, ``connections.perUser`` (all processes)."""

    @inlineCallbacks
    def handle_GET(self, request):
        api = self.api
        admin = yield api.credentials.is_admin(request)
        body = api.gateway.status(detail=admin)
        if admin:
            users = yield api.users()
            body["connections"]["perUser"] = [
                # deviceCount: seed 001's name; connections: every other endpoint's
                {"userId": u, "deviceCount": n, "connections": n}
                for u, n in sorted(users.items())]
        return (200, body)
