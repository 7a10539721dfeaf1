"""
What the gateway serves to browsers (realtime.http.pages), over loopback: the client at
/realtime.js, /admin, /demo and its login relay, with their headers.  The pages themselves
run in Chromium in tests/browser/.
"""

import json
import os
import re

import treq
from twisted.internet.defer import inlineCallbacks
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from realtime.databases.rulefile import parse_rules
from realtime.http import pages
from tests import harness
from tests.harness import GatewayHarness, unique

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATIC = os.path.join(REPO, "realtime", "http", "static")


class PagesTestCase(unittest.TestCase):
    timeout = 60
    overrides = {}

    @inlineCallbacks
    def setUp(self):
        self.gw = GatewayHarness(feeds=False, **self.overrides)
        yield self.gw.start()
        self.addCleanup(self.gw.stop)

    @inlineCallbacks
    def get(self, path, method="GET", headers=None, body=None):
        """``(response, body bytes)``."""
        kwargs = {"persistent": False, "headers": headers or {}}
        if body is not None:
            kwargs["data"] = body
        response = yield treq.request(method, f"http://127.0.0.1:{self.gw.port}{path}", **kwargs)
        content = yield treq.content(response)
        return (response, content)

    def header(self, response, name):
        values = response.headers.getRawHeaders(name)
        return values[0] if values else None


class ClientAndPagesTests(PagesTestCase):
    @inlineCallbacks
    def test_realtime_js_is_the_client(self):
        """
        GET /realtime.js serves clients/js/realtime.js as JavaScript, importable from any
        origin, revalidated by ETag (304 while unchanged).
        """
        response, body = yield self.get("/realtime.js")
        with open(os.path.join(REPO, "clients", "js", "realtime.js"), "rb") as f:
            self.assertEqual(body, f.read())
        self.assertEqual(response.code, 200)
        self.assertEqual(self.header(response, "Content-Type"), "text/javascript; charset=utf-8")
        self.assertEqual(self.header(response, "X-Content-Type-Options"), "nosniff")
        self.assertEqual(self.header(response, "Access-Control-Allow-Origin"), "*")
        self.assertEqual(self.header(response, "Cache-Control"), "no-cache")
        etag = self.header(response, "ETag")
        self.assertTrue(etag.startswith('"'))
        again, empty = yield self.get("/realtime.js", headers={"If-None-Match": etag})
        self.assertEqual((again.code, empty), (304, b""))
        head, nothing = yield self.get("/realtime.js", method="HEAD")
        self.assertEqual((head.code, nothing), (200, b""))
        below, _ = yield self.get("/realtime.js/x")
        self.assertEqual(below.code, 404)

    @inlineCallbacks
    def test_admin_page_has_a_strict_policy(self):
        """/admin is HTML with a CSP allowing only the gateway's own scripts, styles, sockets."""
        response, body = yield self.get("/admin")
        self.assertEqual(response.code, 200)
        self.assertEqual(self.header(response, "Content-Type"), "text/html; charset=utf-8")
        csp = self.header(response, "Content-Security-Policy")
        for directive in ("default-src 'none'", "script-src 'self'", "style-src 'self'",
                          "connect-src 'self'", "frame-ancestors 'none'", "base-uri 'none'"):
            self.assertIn(directive, csp)
        self.assertNotIn("unsafe", csp)
        self.assertEqual(self.header(response, "X-Content-Type-Options"), "nosniff")
        self.assertEqual(self.header(response, "Referrer-Policy"), "no-referrer")
        self.assertIn(b'src="/static/admin.js"', body)

    def test_pages_need_nothing_inline_and_nothing_from_elsewhere(self):
        """
        No page has an inline script, style attribute or event handler (the CSP forbids
        them), and nothing names another host (the pages work with the gateway alone).
        """
        for name in os.listdir(STATIC):
            with open(os.path.join(STATIC, name), encoding="utf-8") as f:
                text = f.read()
            if name.endswith(".html"):
                self.assertEqual(re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", text), [], name)
                self.assertNotIn("style=", text, name)
                self.assertEqual(re.findall(r"\son[a-z]+=", text), [], name)
            self.assertEqual(re.findall(r"https?://(?!\$\{)[a-z0-9.-]+", text), [], name)

    @inlineCallbacks
    def test_static_assets_fixed_list(self):
        """/static/ serves the pages' files with their types, and nothing else."""
        for name, kind in pages.STATIC_ASSETS.items():
            response, body = yield self.get("/static/" + name)
            self.assertEqual(response.code, 200, name)
            self.assertEqual(self.header(response, "Content-Type").encode(), kind)
            self.assertTrue(body)
        for path in ("/static/", "/static/demo.html", "/static/../setup.cfg",
                     "/static/%2e%2e/pages.py", "/static/realtime.js"):
            response, _ = yield self.get(path)
            self.assertEqual(response.code, 404, path)

    @inlineCallbacks
    def test_demo_off_by_default(self):
        """Without REALTIME_DEMO, /demo and its login relay do not exist."""
        for path in ("/demo", "/demo/session"):
            response, body = yield self.get(path)
            self.assertEqual(response.code, 404, path)
            self.assertEqual(json.loads(body)["error"], "not_found")


class DemoTests(PagesTestCase):
    overrides = {"demo": True}

    def new_user(self):
        name, password = unique("demo"), unique("pw")
        harness.pouchdb().create_user(name, password, roles=["member"], colour="green")
        return (name, password)

    @inlineCallbacks
    def login(self, name, password, content_type="application/json"):
        response, body = yield self.get(
            "/demo/session", method="POST", headers={"Content-Type": content_type},
            body=json.dumps({"name": name, "password": password}).encode())
        return (response, json.loads(body))

    @inlineCallbacks
    def test_demo_page(self):
        """With REALTIME_DEMO=true, /demo is the page, with the strict policy."""
        response, body = yield self.get("/demo")
        self.assertEqual(response.code, 200)
        self.assertIn("script-src 'self'", self.header(response, "Content-Security-Policy"))
        self.assertIn(b'src="/static/demo.js"', body)

    @inlineCallbacks
    def test_login_sets_an_http_only_session_cookie_that_opens_the_websocket(self):
        """
        POST /demo/session relays the login to CouchDB: the answer has the name, roles and
        profile (no password field), and the AuthSession cookie, HttpOnly and SameSite,
        authenticates a WebSocket from the gateway's own origin.
        """
        name, password = self.new_user()
        response, answer = yield self.login(name, password)
        self.assertEqual(response.code, 200)
        self.assertEqual((answer["name"], answer["roles"], answer["databases"]),
                         (name, ["member"], []))
        self.assertEqual(answer["profile"]["colour"], "green")
        for field in ("password", "password_sha", "derived_key", "salt"):
            self.assertNotIn(field, answer["profile"])
        cookie = self.header(response, "Set-Cookie")
        self.assertRegex(cookie, r"^AuthSession=[^;]+; Path=/; HttpOnly; SameSite=Strict$")
        value = cookie.split(";")[0]

        again, body = yield self.get("/demo/session", headers={"Cookie": value})
        self.assertEqual((again.code, json.loads(body)["name"]), (200, name))

        client = yield self.gw.connect(headers={"Cookie": value},
                                       origin=f"http://127.0.0.1:{self.gw.port}")
        connected = yield client.next("connected")
        self.assertEqual(connected["user"]["name"], name)

        out, body = yield self.get("/demo/session", method="DELETE", headers={"Cookie": value})
        self.assertEqual(out.code, 200)
        self.assertIn("Max-Age=0", self.header(out, "Set-Cookie"))

    @inlineCallbacks
    def test_two_logins_never_mix(self):
        """
        Two users logging in one after the other each get their own session: the gateway's
        HTTP client keeps no cookie from an answer (treq's would, and send it with the next
        request: the next user's login, or the gateway's own admin requests).
        """
        first, first_pw = self.new_user()
        second, second_pw = self.new_user()
        _, answer = yield self.login(first, first_pw)
        self.assertEqual(answer["name"], first)
        response, answer = yield self.login(second, second_pw)
        self.assertEqual(answer["name"], second)
        cookie = self.header(response, "Set-Cookie").split(";")[0]
        again, body = yield self.get("/demo/session", headers={"Cookie": cookie})
        self.assertEqual(json.loads(body)["name"], second)
        # and a request of the gateway's own carries no user's cookie
        response = yield self.gw.http.get(harness.pouchdb().url + "/_session")
        session = yield response.json()
        self.assertIsNone(session["userCtx"]["name"])

    @inlineCallbacks
    def test_wrong_password_and_bad_requests(self):
        """
        A wrong password is 401 with no cookie; a body that is not JSON 415; no name 400;
        asking who is logged in without a (valid) session: nobody.
        """
        name, _ = self.new_user()
        response, answer = yield self.login(name, "not-the-password")
        self.assertEqual((response.code, answer["error"]), (401, "auth_failed"))
        self.assertIsNone(self.header(response, "Set-Cookie"))
        response, _ = yield self.login(name, "x", content_type="text/plain")
        self.assertEqual(response.code, 415)
        response, answer = yield self.login("", "x")
        self.assertEqual((response.code, answer.get("field")), (400, "name"))
        response, body = yield self.get("/demo/session")
        self.assertEqual((response.code, json.loads(body)), (200, {"name": None}))
        response, body = yield self.get("/demo/session",
                                        headers={"Cookie": "AuthSession=Zm9yZ2VkOjEyMzQ6YWJj"})
        self.assertEqual((response.code, json.loads(body)), (200, {"name": None}))

    @inlineCallbacks
    def test_the_password_reaches_no_log(self):
        """Nothing logged while logging in, rightly or wrongly, holds the password."""
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        name, password = self.new_user()
        yield self.login(name, password)
        yield self.login(name, password + "-wrong")
        from twisted.logger import formatEvent
        text = "\n".join(formatEvent(e) + repr(e) for e in events)
        self.assertNotIn(password, text)


class DemoWithDatabasesTests(PagesTestCase):
    overrides = {"demo": True}

    @inlineCallbacks
    def setUp(self):
        self.gw = GatewayHarness(feeds=False, rules=parse_rules(
            '[databases.notes]\nusers = ["owner"]\nwrite = ["owner"]\nfields = ["title", "body"]\n'
            '[databases.wiki]\npublic = true\n', "rules.toml"), demo=True)
        yield self.gw.start()
        self.addCleanup(self.gw.stop)

    @inlineCallbacks
    def test_the_session_lists_the_databases(self):
        """The login answer names the rule file's databases and the fields a client may write."""
        name, password = unique("demo"), unique("pw")
        harness.pouchdb().create_user(name, password)
        response, body = yield self.get(
            "/demo/session", method="POST", headers={"Content-Type": "application/json"},
            body=json.dumps({"name": name, "password": password}).encode())
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(body)["databases"], [
            {"db": "notes", "fields": ["title", "body"], "writable": True},
            {"db": "wiki", "fields": [], "writable": False},
        ])
