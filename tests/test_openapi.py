"""
``GET /websocket/openapi.json`` against the real resource tree (StubTreq, as test_rest):
the document is valid OpenAPI 3.1, it documents exactly the endpoints and methods
:func:`realtime.http.rest.make_api` builds (plus ``/metrics``), and every documented
operation answers a status documented for it, with a body matching that status's schema:
without credentials, with admin credentials and an empty body, and as it succeeds.
"""

from __future__ import annotations

from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate
from twisted.web.test.requesthelper import DummyRequest

from realtime.http.endpoint import Endpoint
from realtime.http.openapi import DOCUMENT
from realtime.http.rest import make_api
from tests.fakes import FakeConnection, make_token
from tests.test_rest import ADMIN, ADMIN_CALLS, RESTTestCase

METHODS = ("get", "post", "put", "delete", "patch")


def methods_of(endpoint) -> set:
    return {m for m in METHODS if hasattr(endpoint, "handle_" + m.upper())}


def served(resource, prefix="/websocket") -> dict:
    """{path: {methods}} for every Endpoint among the static children of the tree."""
    found = {}
    for name, child in resource.children.items():
        path = prefix + "/" + name.decode("ascii")
        if isinstance(child, Endpoint):
            found[path] = methods_of(child)
        found.update(served(child, path))
    return found


def documented() -> dict:
    return {path: {m for m in item if m in METHODS} for path, item in DOCUMENT["paths"].items()}


def operations():
    for path, item in DOCUMENT["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


class OpenAPITests(RESTTestCase):
    def test_served_public_as_json(self):
        """
        The document is served without credentials, as JSON, as it is in the module, and
        ``GET /`` links it.
        """
        status, body, headers = self.call("GET", "/websocket/openapi.json")
        self.assertEqual(status, 200)
        self.assertTrue(headers.getRawHeaders(b"content-type")[0].startswith(b"application/json"))
        self.assertEqual(body, DOCUMENT)
        status, root, _ = self.call("GET", "/")
        self.assertEqual(root["links"]["openapi"], "/websocket/openapi.json")

    def test_the_rest_link_has_an_index(self):
        """``/websocket/``, where the banner and ``GET /`` point, lists every operation of
        the document (it was a 404)."""
        status, root, _ = self.call("GET", "/")
        status, index, _ = self.call("GET", root["links"]["rest"])
        self.assertEqual(status, 200)
        self.assertEqual(index["openapi"], "/websocket/openapi.json")
        listed = {(o["method"].lower(), o["path"]) for o in index["operations"]}
        self.assertEqual(listed, {(m, p) for p, item in DOCUMENT["paths"].items()
                                  for m in item})
        self.assertIn(("post", "/websocket/message/user"), listed)

    def test_valid_openapi_3_1(self):
        """openapi-spec-validator accepts the document as OpenAPI 3.1.0."""
        self.assertEqual(DOCUMENT["openapi"], "3.1.0")
        validate(DOCUMENT)  # raises on an invalid document

    def test_every_endpoint_is_documented(self):
        """
        The documented paths and methods are exactly those the real tree serves: the static
        children, the users/ children made on demand (connected, {userId}/status,
        {userId}/disconnect), and /metrics from the site.
        """
        api = make_api(self.gateway)
        tree = served(api)
        users = api.children[b"users"]
        request = DummyRequest([])
        tree["/websocket/users/connected"] = methods_of(users.getChild(b"connected", request))
        user = users.getChild(b"alice", request)
        self.assertTrue(user.children)
        for name, child in user.children.items():
            self.assertIsInstance(child, Endpoint)
            tree["/websocket/users/{userId}/" + name.decode("ascii")] = methods_of(child)
        tree["/metrics"] = {"get"}
        self.assertEqual(tree, documented())

    def assertAnswersAsDocumented(self, method, path, result):
        """The status is documented for the operation, and the body matches its schema."""
        status, body, headers = result
        operation = DOCUMENT["paths"][path][method]
        self.assertIn(str(status), operation["responses"], (method, path, body))
        content = operation["responses"][str(status)]["content"]
        ctype = headers.getRawHeaders(b"content-type")[0].decode("ascii").split(";")[0]
        self.assertIn(ctype, content, (method, path, status))
        schema = {**content[ctype]["schema"], "components": DOCUMENT["components"]}
        errors = [e.message for e in OAS31Validator(schema).iter_errors(body)]
        self.assertEqual(errors, [], (method, path, status, body))
        return status

    def concrete(self, path, user="alice"):
        return path.replace("{userId}", user)

    def test_refusals_are_documented(self):
        """Without credentials, and with admin credentials and an empty body: as documented."""
        FakeConnection(self.gateway, "alice")
        for path, method, _ in operations():
            body = {} if method == "post" else None
            for headers in ({}, ADMIN):
                result = self.call(method.upper(), self.concrete(path), body, headers=headers)
                self.assertAnswersAsDocumented(method, path, result)

    def test_every_operation_succeeds_as_documented(self):
        """
        Each documented operation, called as it should be (alice connected), answers its 200
        with the documented body; a message or a disconnect for a user who is not connected
        answers the documented 404.
        """
        FakeConnection(self.gateway, "alice", topics=["public:news"])
        calls = [(m, p, b, ADMIN) for m, p, b in ADMIN_CALLS] + [
            ("POST", "/websocket/tokens/revoke",
             {"jti": "t-1", "exp": int(self.gateway.now()) + 600}, ADMIN),
            ("GET", "/websocket/admin/summary", None, ADMIN),
            ("GET", "/websocket/me/status", None,
             {"Authorization": "Bearer " + make_token("alice")}),
            ("GET", "/websocket/status", None, {}),
            ("GET", "/websocket/status", None, ADMIN),
            ("GET", "/websocket/openapi.json", None, {}),
            ("GET", "/websocket/", None, {}),
            ("GET", "/metrics", None, {}),
        ]
        succeeded = set()
        for method, path, body, headers in calls:
            template = path.replace("/alice/", "/{userId}/")
            result = self.call(method, path, body, headers=headers)
            self.assertEqual(result[0], 200, (method, path, result[1]))
            self.assertAnswersAsDocumented(method.lower(), template, result)
            succeeded.add((template, method.lower()))
        self.assertEqual(succeeded, {(p, m) for p, m, _ in operations()})

        not_connected = [
            ("POST", "/websocket/message/user", {"userId": "bob", "type": "chat", "data": 1}),
            ("POST", "/websocket/notification", {"userId": "bob", "title": "t", "body": "b"}),
            ("DELETE", "/websocket/users/{userId}/disconnect", None),
        ]
        for method, path, body in not_connected:
            result = self.admin(method, self.concrete(path, "bob"), body)
            self.assertEqual(result[0], 404, (method, path, result[1]))
            self.assertAnswersAsDocumented(method.lower(), path, result)
