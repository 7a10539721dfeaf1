"""
The REST API in memory: a real site resource driven by treq's StubTreq, a gateway on a
Clock with the memory broker, and connections that record what they are sent.
"""

from __future__ import annotations

import json

from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet.defer import fail, succeed
from twisted.trial import unittest

from realtime.auth.identity import AuthFailure, Identity
from realtime.http.rest import make_api
from realtime.http.site import make_site
from realtime.hub import history
from realtime.transport.websocket import make_factory
from realtime.vocabulary import MESSAGE_TYPES
from tests.fakes import ADMIN_KEY, DownBroker, FakeConnection, make_gateway, make_token

BASE = "http://gateway.test"
ADMIN = {"Authorization": "Bearer " + ADMIN_KEY}

# Every admin endpoint with a body that would succeed for a connected "alice".
ADMIN_CALLS = [
    ("POST", "/websocket/message/user", {"userId": "alice", "type": "chat", "data": 1}),
    ("POST", "/websocket/message/users", {"userIds": ["alice"], "type": "chat", "data": 1}),
    ("POST", "/websocket/message/broadcast", {"type": "chat", "data": 1}),
    ("POST", "/websocket/notification", {"userId": "alice", "title": "t", "body": "b"}),
    ("POST", "/websocket/publish", {"topic": "public:news", "data": 1}),
    ("GET", "/websocket/users/connected", None),
    ("GET", "/websocket/users/alice/status", None),
    ("DELETE", "/websocket/users/alice/disconnect", None),
]


class FakeSessions:
    """A CouchDB session checker: one valid cookie."""

    def check(self, cookie):
        if cookie == "good-cookie":
            return succeed(Identity(user_id="carol", name="carol", method="cookie"))
        return fail(AuthFailure("auth-failed", "no session"))


class RESTTestCase(unittest.TestCase):
    max_body_bytes = 4096

    def setUp(self):
        self.make(admin_key=ADMIN_KEY)

    def make(self, **kwargs):
        self.gateway = make_gateway(session_checker=FakeSessions(),
                                    allowed_origins=("https://app.example",), **kwargs)
        site = make_site(self.gateway, make_factory(self.gateway),
                         api_resource=make_api(self.gateway, self.max_body_bytes))
        self.stub = StubTreq(site.resource)

    def call(self, method, path, body=None, headers=None, raw=None):
        """(status, parsed JSON body or text, response headers)."""
        headers = dict(headers or {})
        data = raw
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers.setdefault("Content-Type", "application/json")
        d = self.stub.request(method, BASE + path, headers=headers, data=data)
        self.stub.flush()
        response = self.successResultOf(d)
        content_d = self.stub.content(response)
        self.stub.flush()
        content = self.successResultOf(content_d)
        ctype = response.headers.getRawHeaders(b"content-type", [b""])[0]
        if ctype.startswith(b"application/json"):
            parsed = json.loads(content)
        else:
            parsed = content.decode("utf-8")
        return response.code, parsed, response.headers

    def admin(self, method, path, body=None, **kwargs):
        return self.call(method, path, body, headers=ADMIN, **kwargs)

    def assertError(self, result, status, code, field=None):
        got_status, body, _ = result
        self.assertEqual((got_status, body.get("error")), (status, code), body)
        self.assertIsInstance(body.get("message"), str)
        if field is not None:
            self.assertEqual(body.get("field"), field)
        return body


class AdminAuthTests(RESTTestCase):
    def test_no_credentials_is_401_with_challenge(self):
        """Every admin endpoint answers 401 (JSON, WWW-Authenticate) without credentials."""
        FakeConnection(self.gateway, "alice")
        for method, path, body in ADMIN_CALLS:
            result = self.call(method, path, body)
            self.assertError(result, 401, "unauthorized")
            self.assertTrue(result[2].getRawHeaders(b"www-authenticate"))

    def test_wrong_key_and_bad_token_are_401(self):
        """A wrong key, a forged JWT or a non-Bearer scheme is 401, and nothing is sent."""
        alice = FakeConnection(self.gateway, "alice")
        for auth in ("Bearer " + ADMIN_KEY + "x", "Bearer not.a.jwt",
                     "Bearer " + make_token("root", secret="another-secret-of-32-bytes-or-more-0123",
                                            roles=["admin"]),
                     "Basic " + ADMIN_KEY, ADMIN_KEY):
            result = self.call("POST", "/websocket/message/user",
                               {"userId": "alice", "type": "chat", "data": 1},
                               headers={"Authorization": auth})
            self.assertError(result, 401, "unauthorized")
        self.assertEqual(alice.received, [])

    def test_user_jwt_is_403(self):
        """A valid JWT without the admin role is 403 on every admin endpoint."""
        FakeConnection(self.gateway, "alice")
        token = make_token("bob", roles=["member"])
        for method, path, body in ADMIN_CALLS:
            self.assertError(self.call(method, path, body,
                                       headers={"Authorization": "Bearer " + token}),
                             403, "forbidden")

    def test_admin_jwt_is_accepted(self):
        """A JWT whose roles include admin may use every admin endpoint."""
        token = make_token("root", roles=["admin"])
        for method, path, body in ADMIN_CALLS:
            FakeConnection(self.gateway, "alice")
            status, answer, _ = self.call(method, path, body,
                                          headers={"Authorization": "Bearer " + token})
            self.assertEqual(status, 200, (path, answer))

    def test_admin_role_read_from_configured_roles_claim(self):
        """With JWT_ROLES_CLAIM=perms, the admin role is read from the perms claim."""
        self.make(admin_key=ADMIN_KEY, roles_claim="perms")
        FakeConnection(self.gateway, "alice")
        good = make_token("root", perms=["admin"])
        wrong = make_token("root", roles=["admin"])
        self.assertEqual(self.call("GET", "/websocket/users/connected",
                                   headers={"Authorization": "Bearer " + good})[0], 200)
        self.assertError(self.call("GET", "/websocket/users/connected",
                                   headers={"Authorization": "Bearer " + wrong}),
                         403, "forbidden")

    def test_no_admin_key_means_admin_api_off(self):
        """
        With no REALTIME_ADMIN_KEY every admin endpoint answers 403 admin_disabled, even
        to an admin JWT (off means off).
        """
        self.make(admin_key=None)
        alice = FakeConnection(self.gateway, "alice")
        token = make_token("root", roles=["admin"])
        for method, path, body in ADMIN_CALLS:
            for headers in ({}, {"Authorization": "Bearer " + token}):
                self.assertError(self.call(method, path, body, headers=headers),
                                 403, "admin_disabled")
        self.assertEqual(alice.received, [])
        self.assertIsNone(alice.closed)

    def test_revocation_store_down_is_503(self):
        """When a JWT cannot be checked (token store down), the answer is 503, not 401."""

        class DownRevocations:
            def is_revoked(self, token_id):
                return fail(RuntimeError("down"))

        self.make(admin_key=ADMIN_KEY, revocations=DownRevocations())
        token = make_token("root", roles=["admin"])
        self.assertError(self.call("GET", "/websocket/users/connected",
                                   headers={"Authorization": "Bearer " + token}),
                         503, "unavailable")


class MessageTests(RESTTestCase):
    def test_message_to_user_reaches_all_their_connections_only(self):
        """message/user: every connection of the user gets {type, data, timestamp}; no one else."""
        a1, a2 = FakeConnection(self.gateway, "alice"), FakeConnection(self.gateway, "alice")
        bob = FakeConnection(self.gateway, "bob")
        status, body, _ = self.admin("POST", "/websocket/message/user",
                                     {"userId": "alice", "type": "chat",
                                      "data": {"text": "héllo"}})
        self.assertEqual(status, 200)
        offset = body.pop("offset")
        self.assertEqual(body, {"userId": "alice", "delivered": True, "connections": 2})
        expected = {"type": "chat", "data": {"text": "héllo"},
                    "timestamp": "2023-11-14T22:13:20.000Z", "offset": offset}
        self.assertEqual(a1.received, [expected])
        self.assertEqual(a2.received, [expected])
        self.assertEqual(bob.received, [])

    def test_message_to_user_not_connected_is_404(self):
        """
        message/user to a user with no connection: 404 not_connected, nothing sent, but
        stored in the user's history (stored: true, offset) for a later resume.
        """
        bob = FakeConnection(self.gateway, "bob")
        result = self.admin("POST", "/websocket/message/user",
                            {"userId": "alice", "type": "chat", "data": None})
        body = self.assertError(result, 404, "not_connected")
        self.assertIs(body["stored"], True)
        self.assertEqual(bob.received, [])
        replay = self.successResultOf(self.gateway.history.read(
            [history.user_stream("alice")], "%s-0" % self.gateway.history.epoch))
        self.assertEqual([json.loads(t) for t in replay.messages], [
            {"type": "chat", "data": None, "timestamp": "2023-11-14T22:13:20.000Z",
             "offset": body["offset"]}])

    def test_message_to_users_names_delivered_and_not_connected(self):
        """message/users answers which ids were delivered and which were not connected."""
        alice, bob = FakeConnection(self.gateway, "alice"), FakeConnection(self.gateway, "bob")
        carol = FakeConnection(self.gateway, "carol")
        status, body, _ = self.admin("POST", "/websocket/message/users",
                                     {"userIds": ["alice", "dave", "bob", "alice"],
                                      "type": "chat", "data": [1, 2]})
        self.assertEqual(status, 200)
        offset = body.pop("offset")
        self.assertEqual(body, {"delivered": ["alice", "bob"], "notConnected": ["dave"]})
        self.assertEqual(alice.received[0]["offset"], offset)
        replay = self.successResultOf(self.gateway.history.read(
            [history.user_stream("dave")], "%s-0" % self.gateway.history.epoch))
        self.assertEqual([json.loads(t)["offset"] for t in replay.messages], [offset])
        self.assertEqual([m["data"] for m in alice.received], [[1, 2]])
        self.assertEqual([m["data"] for m in bob.received], [[1, 2]])
        self.assertEqual(carol.received, [])

    def test_broadcast_reaches_everyone(self):
        """message/broadcast reaches every authenticated connection."""
        conns = [FakeConnection(self.gateway, u) for u in ("alice", "alice", "bob")]
        status, body, _ = self.admin("POST", "/websocket/message/broadcast",
                                     {"type": "maintenance", "data": {"in": 5}})
        self.assertEqual(status, 200)
        offset = body.pop("offset")
        self.assertEqual(body, {"sent": True, "users": 2, "connections": 3})
        self.assertEqual({conn.received[0]["offset"] for conn in conns}, {offset})
        for conn in conns:
            self.assertEqual([m["type"] for m in conn.received], ["maintenance"])

    def test_notification_shape(self):
        """notification sends {type: notification, data: {title, body, ...}, timestamp}."""
        alice, bob = FakeConnection(self.gateway, "alice"), FakeConnection(self.gateway, "bob")
        status, body, _ = self.admin("POST", "/websocket/notification",
                                     {"userId": "alice", "title": "Hi", "body": "There",
                                      "url": "/inbox", "priority": 2})
        self.assertEqual(status, 200)
        self.assertEqual(alice.received, [{
            "type": "notification",
            "data": {"title": "Hi", "body": "There", "url": "/inbox", "priority": 2},
            "timestamp": "2023-11-14T22:13:20.000Z", "offset": body["offset"]}])
        self.assertEqual(bob.received, [])
        self.assertError(self.admin("POST", "/websocket/notification",
                                    {"userId": "dave", "title": "Hi", "body": "There"}),
                         404, "not_connected")

    def test_publish_reaches_subscribers_only_from_server(self):
        """publish: the topic's subscribers get a publication from "server"; nobody else."""
        alice, bob = FakeConnection(self.gateway, "alice"), FakeConnection(self.gateway, "bob")
        self.gateway.registry.subscribe(alice, "public:news")
        status, body, _ = self.admin("POST", "/websocket/publish",
                                     {"topic": "public:news", "data": {"n": 1}})
        offset = body.pop("offset")
        self.assertEqual((status, body), (200, {"topic": "public:news", "published": True}))
        self.assertEqual(alice.received, [{
            "type": "publication", "topic": "public:news", "data": {"n": 1},
            "from": "server", "timestamp": "2023-11-14T22:13:20.000Z", "offset": offset}])
        self.assertEqual(bob.received, [])

    def test_broker_refusal_is_503(self):
        """When the broker refuses the event, the answer is 503 with a JSON body."""

        self.make(admin_key=ADMIN_KEY, broker=DownBroker())
        FakeConnection(self.gateway, "alice")
        for method, path, body in ADMIN_CALLS[:5] + ADMIN_CALLS[7:]:
            self.assertError(self.admin(method, path, body), 503, "unavailable")


    def test_presence_failure_is_503(self):
        """When presence cannot say who is connected, the answer is 503 and nothing is sent."""

        class DownPresence:
            def connection_count(self, user_id):
                return fail(ConnectionError("redis is away"))

            def users(self):
                return fail(ConnectionError("redis is away"))

        alice = FakeConnection(self.gateway, "alice")
        self.gateway.presence = DownPresence()
        for method, path, body in ADMIN_CALLS:
            if path != "/websocket/publish":
                self.assertError(self.admin(method, path, body), 503, "unavailable")
        self.assertEqual(alice.received, [])
        self.assertIsNone(alice.closed)


class BodyTests(RESTTestCase):
    def test_not_json_is_415(self):
        """A body that is not declared application/json is 415."""
        FakeConnection(self.gateway, "alice")
        payload = json.dumps({"userId": "alice", "type": "chat", "data": 1}).encode()
        for ctype in (None, "text/plain", "application/x-www-form-urlencoded",
                      "application/json; charset=latin-1"):
            headers = dict(ADMIN)
            if ctype:
                headers["Content-Type"] = ctype
            self.assertError(self.call("POST", "/websocket/message/user", headers=headers,
                                       raw=payload), 415, "unsupported_media_type")
        headers = dict(ADMIN, **{"Content-Type": "application/json; charset=UTF-8"})
        self.assertEqual(self.call("POST", "/websocket/message/user", headers=headers,
                                   raw=payload)[0], 200)

    def test_too_large_is_413(self):
        """A body above the cap is 413, and nothing is sent."""
        alice = FakeConnection(self.gateway, "alice")
        result = self.admin("POST", "/websocket/message/broadcast",
                            {"type": "chat", "data": "x" * self.max_body_bytes})
        self.assertError(result, 413, "too_large")
        self.assertEqual(alice.received, [])

    def test_bad_json_and_non_objects_are_400(self):
        """Invalid JSON, NaN, a non-object or an empty body is 400."""
        for raw in (b"{", b"", b"[1]", b'"text"', b'{"type": NaN}', b"\xff\xfe"):
            status, body, _ = self.call("POST", "/websocket/message/broadcast",
                                        headers=dict(ADMIN, **{"Content-Type": "application/json"}),
                                        raw=raw)
            self.assertEqual(status, 400, raw)

    def test_missing_or_mistyped_fields_are_400_naming_the_field(self):
        """Each missing or mistyped field is 400 with that field named."""
        FakeConnection(self.gateway, "alice")
        cases = [
            ("/websocket/message/user", {"type": "chat", "data": 1}, "userId"),
            ("/websocket/message/user", {"userId": 7, "type": "chat", "data": 1}, "userId"),
            ("/websocket/message/user", {"userId": "", "type": "chat", "data": 1}, "userId"),
            ("/websocket/message/user", {"userId": "alice", "data": 1}, "type"),
            ("/websocket/message/user", {"userId": "alice", "type": 3, "data": 1}, "type"),
            ("/websocket/message/user", {"userId": "alice", "type": ""}, "type"),
            ("/websocket/message/user", {"userId": "alice", "type": "chat"}, "data"),
            ("/websocket/message/users", {"userIds": "alice", "type": "chat", "data": 1},
             "userIds"),
            ("/websocket/message/users", {"userIds": [], "type": "chat", "data": 1}, "userIds"),
            ("/websocket/message/users", {"userIds": ["a", None], "type": "chat", "data": 1},
             "userIds"),
            ("/websocket/message/broadcast", {"data": 1}, "type"),
            ("/websocket/notification", {"userId": "alice", "body": "b"}, "title"),
            ("/websocket/notification", {"userId": "alice", "title": "t", "body": 5}, "body"),
            ("/websocket/publish", {"data": 1}, "topic"),
            ("/websocket/publish", {"topic": "has space", "data": 1}, "topic"),
            ("/websocket/publish", {"topic": "t" * 201, "data": 1}, "topic"),
            ("/websocket/publish", {"topic": "public:x"}, "data"),
        ]
        for path, body, field in cases:
            self.assertError(self.admin("POST", path, body), 400, "bad_request", field)

    def test_every_type_the_server_sends_is_reserved(self):
        """A message type written by the server (a ``{"type": "<name>", ...}`` literal in
        realtime/, not the OpenAPI document nor the dev tools) is one REST cannot push: a
        pushed ``resumed`` would end a client's resume that never ran."""
        import ast
        import pathlib
        root = pathlib.Path(__file__).parent.parent / "realtime"
        sent = set()
        for path in root.rglob("*.py"):
            if path.name == "openapi.py" or "dev" in path.relative_to(root).parts:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Dict):
                    for key, value in zip(node.keys, node.values):
                        if (isinstance(key, ast.Constant) and key.value == "type"
                                and isinstance(value, ast.Constant)
                                and isinstance(value.value, str)):
                            sent.add(value.value)
        self.assertIn("resumed", sent)  # the scan finds what it looks for
        self.assertEqual(sent - MESSAGE_TYPES, set())

    def test_reserved_types_are_400(self):
        """Every type the protocol reserves is refused on message/user, users and broadcast."""
        alice = FakeConnection(self.gateway, "alice")
        for kind in sorted(MESSAGE_TYPES):
            for path, body in (("/websocket/message/user", {"userId": "alice"}),
                               ("/websocket/message/users", {"userIds": ["alice"]}),
                               ("/websocket/message/broadcast", {})):
                self.assertError(self.admin("POST", path, dict(body, type=kind, data=1)),
                                 400, "bad_request", "type")
        self.assertEqual(alice.received, [])


class RoutingTests(RESTTestCase):
    def test_wrong_method_is_405_with_allow(self):
        """A method an endpoint does not serve is 405 with an Allow header, as JSON."""
        for method, path, allowed in (("GET", "/websocket/message/user", b"POST"),
                                      ("PUT", "/websocket/publish", b"POST"),
                                      ("POST", "/websocket/users/connected", b"GET"),
                                      ("GET", "/websocket/users/alice/disconnect", b"DELETE"),
                                      ("POST", "/websocket/status", b"GET")):
            result = self.admin(method, path, {"x": 1})
            self.assertError(result, 405, "method_not_allowed")
            self.assertEqual(result[2].getRawHeaders(b"allow"), [allowed])

    def test_unknown_paths_are_404_json(self):
        """Unknown paths under /websocket answer 404 in JSON."""
        for path in ("/websocket/nope", "/websocket/message/user/extra",
                     "/websocket/users/alice/nope", "/websocket/message/"):
            self.assertError(self.admin("GET", path), 404, "not_found")

    def test_favicon_is_204(self):
        """/favicon.ico (which browsers ask for on any URL they show) is 204, not a 404."""
        status, body, headers = self.call("GET", "/favicon.ico")
        self.assertEqual((status, body), (204, ""))
        self.assertIn(b"max-age", headers.getRawHeaders(b"cache-control")[0])


class CORSTests(RESTTestCase):
    def test_preflight_and_answers_for_allowed_origin(self):
        """An allowed Origin gets CORS headers on answers and a 204 preflight."""
        status, _, headers = self.call("OPTIONS", "/websocket/me/status",
                                       headers={"Origin": "https://app.example"})
        self.assertEqual(status, 204)
        self.assertEqual(headers.getRawHeaders(b"access-control-allow-origin"),
                         [b"https://app.example"])
        self.assertEqual(headers.getRawHeaders(b"access-control-allow-methods"), [b"GET"])
        self.assertIn(b"Authorization",
                      headers.getRawHeaders(b"access-control-allow-headers")[0])
        _, _, headers = self.call("GET", "/websocket/me/status",
                                  headers={"Origin": "https://app.example",
                                           "Cookie": "AuthSession=good-cookie"})
        self.assertEqual(headers.getRawHeaders(b"access-control-allow-credentials"), [b"true"])

    def test_other_origins_get_no_cors_headers(self):
        """A foreign Origin gets no CORS headers, on a preflight or an answer."""
        for method in ("OPTIONS", "GET"):
            _, _, headers = self.call(method, "/websocket/status",
                                      headers={"Origin": "https://evil.example"})
            self.assertIsNone(headers.getRawHeaders(b"access-control-allow-origin"))


class UsersTests(RESTTestCase):
    def test_connected_users_and_status(self):
        """users/connected lists users and counts; users/{id}/status answers per user."""
        FakeConnection(self.gateway, "bob")
        FakeConnection(self.gateway, "alice")
        FakeConnection(self.gateway, "alice")
        status, body, _ = self.admin("GET", "/websocket/users/connected")
        self.assertEqual((status, body), (200, {
            "users": [{"userId": "alice", "connections": 2}, {"userId": "bob", "connections": 1}],
            "totalUsers": 2, "totalConnections": 3}))
        self.assertEqual(self.admin("GET", "/websocket/users/alice/status")[1],
                         {"userId": "alice", "connected": True, "connections": 2})
        self.assertEqual(self.admin("GET", "/websocket/users/zed/status")[:2],
                         (200, {"userId": "zed", "connected": False, "connections": 0}))

    def test_disconnect_closes_the_users_connections_4003(self):
        """DELETE users/{id}/disconnect closes that user's connections with 4003 only."""
        a1, a2 = FakeConnection(self.gateway, "alice"), FakeConnection(self.gateway, "alice")
        bob = FakeConnection(self.gateway, "bob")
        status, body, _ = self.admin("DELETE", "/websocket/users/alice/disconnect")
        self.assertEqual((status, body), (200, {"userId": "alice", "disconnected": 2}))
        self.assertEqual(a1.closed, (4003, "disconnected by admin"))
        self.assertEqual(a2.closed, (4003, "disconnected by admin"))
        self.assertIsNone(bob.closed)
        self.assertError(self.admin("DELETE", "/websocket/users/alice/disconnect"),
                         404, "not_connected")

    def test_odd_user_ids_are_only_dictionary_keys(self):
        """
        Percent-encoded ids are decoded once and looked up as they are: ``a%2Fb`` is the
        user "a/b", ``..%2F``, ``%00`` and Unicode are users who are not connected, and
        invalid UTF-8 is 400.
        """
        slash = FakeConnection(self.gateway, "a/b")
        FakeConnection(self.gateway, "connected")
        FakeConnection(self.gateway, "é")
        self.assertEqual(self.admin("GET", "/websocket/users/a%2Fb/status")[1],
                         {"userId": "a/b", "connected": True, "connections": 1})
        self.assertEqual(self.admin("GET", "/websocket/users/%C3%A9/status")[1],
                         {"userId": "é", "connected": True, "connections": 1})
        self.assertEqual(self.admin("GET", "/websocket/users/connected/status")[1],
                         {"userId": "connected", "connected": True, "connections": 1})
        for segment, user in (("..%2F", "../"), ("%2E%2E", ".."), ("%00", "\x00"),
                              ("a%2Fb%2F..%2F..", "a/b/../.."), ("%25", "%"),
                              ("%F0%9F%98%80", "\U0001F600")):
            status, body, _ = self.admin("GET", f"/websocket/users/{segment}/status")
            self.assertEqual((status, body), (200, {"userId": user, "connected": False,
                                                    "connections": 0}))
            self.assertError(self.admin("DELETE", f"/websocket/users/{segment}/disconnect"),
                             404, "not_connected")
        self.assertError(self.admin("GET", "/websocket/users/%FF/status"),
                         400, "bad_request", "userId")
        self.assertIsNone(slash.closed)


class MyStatusTests(RESTTestCase):
    def test_user_jwt_gets_own_status(self):
        """me/status with the user's JWT answers that user's status (not admin-only)."""
        FakeConnection(self.gateway, "bob")
        token = make_token("bob")
        status, body, _ = self.call("GET", "/websocket/me/status",
                                    headers={"Authorization": "Bearer " + token})
        self.assertEqual((status, body), (200, {"userId": "bob", "connected": True,
                                                "connections": 1}))

    def test_cookie_gets_own_status_with_origin_rule(self):
        """me/status with an AuthSession cookie works; a foreign Origin is 403."""
        ok = self.call("GET", "/websocket/me/status",
                       headers={"Cookie": "AuthSession=good-cookie"})
        self.assertEqual(ok[:2], (200, {"userId": "carol", "connected": False,
                                        "connections": 0}))
        self.assertEqual(self.call("GET", "/websocket/me/status",
                                   headers={"Cookie": "AuthSession=good-cookie",
                                            "Origin": "https://app.example"})[0], 200)
        self.assertError(self.call("GET", "/websocket/me/status",
                                   headers={"Cookie": "AuthSession=good-cookie",
                                            "Origin": "https://evil.example"}),
                         403, "forbidden")
        self.assertError(self.call("GET", "/websocket/me/status",
                                   headers={"Cookie": "AuthSession=bad-cookie"}),
                         401, "unauthorized")

    def test_no_credentials_or_admin_key_is_401(self):
        """me/status with no credentials, or with the admin key (no user), is 401."""
        self.assertError(self.call("GET", "/websocket/me/status"), 401, "unauthorized")
        self.assertError(self.call("GET", "/websocket/me/status", headers=ADMIN),
                         401, "unauthorized")


class StatusAndMetricsTests(RESTTestCase):
    def test_status_public_and_admin(self):
        """status is public; admin credentials add perUser; bad credentials are 401."""
        FakeConnection(self.gateway, "alice")
        status, body, _ = self.call("GET", "/websocket/status")
        self.assertEqual(status, 200)
        self.assertEqual(body["connections"]["authenticated"], 1)
        self.assertNotIn("perUser", body["connections"])
        user = self.call("GET", "/websocket/status",
                         headers={"Authorization": "Bearer " + make_token("bob")})
        self.assertNotIn("perUser", user[1]["connections"])
        status, body, _ = self.admin("GET", "/websocket/status")
        self.assertEqual(body["connections"]["perUser"],
                         [{"userId": "alice", "deviceCount": 1, "connections": 1}])
        self.assertError(self.call("GET", "/websocket/status",
                                   headers={"Authorization": "Bearer wrong"}),
                         401, "unauthorized")

    def test_metrics_parse_and_count_without_user_ids(self):
        """/metrics is Prometheus text: deliveries by type, HTTP answers, no user ids."""
        alice = FakeConnection(self.gateway, "alice-secret-id")
        self.admin("POST", "/websocket/message/user",
                   {"userId": "alice-secret-id", "type": "chat", "data": 1})
        self.admin("POST", "/websocket/notification",
                   {"userId": "alice-secret-id", "title": "t", "body": "b"})
        self.admin("POST", "/websocket/message/user",
                   {"userId": "nobody", "type": "chat", "data": 1})
        self.assertEqual(len(alice.received), 2)
        status, text, headers = self.call("GET", "/metrics")
        self.assertEqual(status, 200)
        self.assertTrue(headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain"))
        self.assertNotIn("alice-secret-id", text)
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        self.assertEqual(samples[("realtime_messages_sent_total", (("type", "other"),))], 1)
        self.assertEqual(samples[("realtime_messages_sent_total",
                                  (("type", "notification"),))], 1)
        self.assertEqual(samples[("realtime_http_responses_total", (("status", "200"),))], 2)
        self.assertEqual(samples[("realtime_http_responses_total", (("status", "404"),))], 1)
        self.assertEqual(samples[("realtime_authenticated_users", ())], 1)
        self.assertEqual(samples[("realtime_deliveries_total", ())], 2)
