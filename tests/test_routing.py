"""
Pure tests: routing and sanitising, the registry's bookkeeping and delivery, configuration.
"""

import json
from datetime import datetime, timezone

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from realtime import config as config_module
from realtime.feeds.routing import SECRET_USER_FIELDS, route_users_change, router_for
from realtime.hub.registry import Registry, frame_text
from realtime.vocabulary import utc_timestamp
from tests.fakes import FakeConnection


def user_change(name, seq=1, **doc):
    doc_id = "org.couchdb.user:" + name
    return {"seq": seq, "id": doc_id, "changes": [{"rev": "1-a"}],
            "doc": {"_id": doc_id, "_rev": "1-a", "name": name, **doc}}


class RouterTests(unittest.TestCase):
    def test_user_doc_goes_to_that_user_only(self):
        """org.couchdb.user:NAME goes to NAME, as user-change with id, seq, doc, timestamp."""
        recipients, message = route_users_change(user_change("alice", seq="3-x", email="a@x"), 0)
        self.assertEqual(recipients, ("alice",))
        self.assertEqual(message["type"], "user-change")
        self.assertEqual(message["id"], "org.couchdb.user:alice")
        self.assertEqual(message["seq"], "3-x")
        self.assertEqual(message["doc"]["email"], "a@x")
        self.assertEqual(message["timestamp"], "1970-01-01T00:00:00.000Z")

    def test_secrets_removed(self):
        """Every authentication field is removed; the rest of the document stays."""
        secrets = {field: "secret" for field in SECRET_USER_FIELDS}
        _, message = route_users_change(user_change("bob", roles=["r"], **secrets), 0)
        for field in ("password", "password_sha", "password_scheme", "salt", "derived_key",
                      "iterations", "pbkdf2_prf"):
            self.assertNotIn(field, message["doc"])
        self.assertEqual(message["doc"]["roles"], ["r"])
        self.assertNotIn("secret", json.dumps(message))

    def test_deletion(self):
        """A deletion goes out as deleted: true, with no document."""
        change = {"seq": 9, "id": "org.couchdb.user:carol", "deleted": True,
                  "changes": [{"rev": "2-b"}],
                  "doc": {"_id": "org.couchdb.user:carol", "_rev": "2-b", "_deleted": True}}
        recipients, message = route_users_change(change, 0)
        self.assertEqual(recipients, ("carol",))
        self.assertTrue(message["deleted"])
        self.assertNotIn("doc", message)

    def test_other_docs_ignored(self):
        """Design docs, local docs, other ids and docless rows go to nobody."""
        for change in (
            {"seq": 1, "id": "_design/_auth", "doc": {"_id": "_design/_auth"}},
            {"seq": 1, "id": "_local/x", "doc": {}},
            {"seq": 1, "id": "somebody", "doc": {"_id": "somebody"}},
            {"seq": 1, "id": "org.couchdb.user:", "doc": {}},
            {"seq": 1, "id": "org.couchdb.user:dave"},  # no doc
            {"seq": 1, "id": 12},
        ):
            self.assertEqual(route_users_change(change, 0), ((), None), change)

    def test_unknown_database_routes_nowhere(self):
        """A database with no router sends nothing."""
        self.assertEqual(router_for("app")(user_change("x"), 0), ((), None))

    def test_timestamp_format(self):
        """Timestamps are ISO 8601 UTC with milliseconds and Z."""
        self.assertEqual(utc_timestamp(1700000000.1234), "2023-11-14T22:13:20.123Z")

    def test_timestamp_second_remembered_correctly(self):
        """The remembered second never leaks into another: same, next, earlier, rounded up."""
        self.assertEqual(utc_timestamp(1700000000.5), "2023-11-14T22:13:20.500Z")
        self.assertEqual(utc_timestamp(1700000000.9), "2023-11-14T22:13:20.900Z")
        self.assertEqual(utc_timestamp(1700000001.0), "2023-11-14T22:13:21.000Z")
        self.assertEqual(utc_timestamp(1600000000.25), "2020-09-13T12:26:40.250Z")
        self.assertEqual(utc_timestamp(1700000000.9999996), "2023-11-14T22:13:21.000Z")

    @settings(max_examples=2000, deadline=None)
    @given(st.one_of(st.floats(min_value=0, max_value=4e9),
                     st.integers(0, 4 * 10 ** 12).map(lambda ms: ms / 1000),
                     st.integers(0, 4 * 10 ** 9).map(lambda s: s + 0.9995)))
    def test_timestamp_as_datetime_writes_it(self, seconds):
        """The same text as datetime.fromtimestamp gives (its rounding to microseconds)."""
        moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
        self.assertEqual(utc_timestamp(seconds), moment.strftime("%Y-%m-%dT%H:%M:%S.")
                         + f"{moment.microsecond // 1000:03d}Z")


class RegistryTests(unittest.TestCase):
    def setUp(self):
        self.registry = Registry(max_topics_per_connection=2)
        self.a1 = FakeConnection(None, "alice", connection_id="1")
        self.a2 = FakeConnection(None, "alice", connection_id="2")
        self.b1 = FakeConnection(None, "bob", connection_id="3")
        for conn in (self.a1, self.a2, self.b1):
            self.registry.add(conn)

    def test_users_event_reaches_every_connection_of_the_user_with_one_frame(self):
        """A users event reaches each of the user's connections, the same bytes object."""
        sent = self.registry.dispatch({"t": "users", "to": ["alice"], "msg": '{"type":"x"}'})
        self.assertEqual(sent, 2)
        self.assertEqual(self.a1.frames, [frame_text(b'{"type":"x"}')])
        self.assertIs(self.a1.frames[0], self.a2.frames[0])
        self.assertEqual(self.b1.frames, [])

    def test_remove_forgets_user_and_topics(self):
        """Removing connections drops their user entry and subscriptions; remove is idempotent."""
        self.registry.subscribe(self.a1, "public:x")
        self.registry.remove(self.a1)
        self.registry.remove(self.a1)
        self.assertEqual(self.registry.users(), {"alice": 1, "bob": 1})
        self.assertEqual(self.registry.subscribers("public:x"), [])
        self.assertEqual(self.registry.topic_count(), 0)
        self.registry.remove(self.a2)
        self.assertEqual(self.registry.users(), {"bob": 1})
        self.assertEqual(self.registry.count_of("alice"), 0)
        self.assertEqual(len(self.registry), 1)

    def test_broadcast_and_topics(self):
        """all reaches everyone; topic reaches its subscribers only; unsubscribed gets nothing."""
        self.assertEqual(self.registry.dispatch({"t": "all", "msg": "{}"}), 3)
        self.registry.subscribe(self.a1, "t")
        self.registry.subscribe(self.b1, "t")
        self.assertEqual(self.registry.dispatch({"t": "topic", "topic": "t", "msg": "{}"}), 2)
        self.registry.unsubscribe(self.b1, "t")
        self.assertEqual(self.registry.dispatch({"t": "topic", "topic": "t", "msg": "{}"}), 1)
        self.assertEqual(len(self.b1.frames), 2)

    def test_topic_limit(self):
        """A connection cannot hold more than the maximum of topics."""
        self.assertTrue(self.registry.subscribe(self.a1, "a"))
        self.assertTrue(self.registry.subscribe(self.a1, "b"))
        self.assertFalse(self.registry.subscribe(self.a1, "c"))
        self.assertTrue(self.registry.subscribe(self.a1, "a"))  # already held: fine

    def test_disconnect_event(self):
        """disconnect closes every connection of that user with the given code."""
        self.assertEqual(self.registry.dispatch(
            {"t": "disconnect", "user": "alice", "code": 4003, "reason": "bye"}), 2)
        self.assertEqual(self.a1.closed, (4003, "bye"))
        self.assertIsNone(self.b1.closed)

    def test_disconnect_spares_connections_admitted_after_it(self):
        """A disconnect event stamped `at` closes only connections admitted by then."""
        self.a1.admitted_at, self.a2.admitted_at = 50.0, 200.0
        self.assertEqual(self.registry.dispatch(
            {"t": "disconnect", "user": "alice", "code": 4003, "reason": "bye", "at": 100.0}), 1)
        self.assertEqual(self.a1.closed, (4003, "bye"))
        self.assertIsNone(self.a2.closed)

    def test_malformed_events_ignored(self):
        """Unknown kinds and malformed events reach nobody and do not raise."""
        for event in ({"t": "nope"}, {"t": "users"}, {"t": "users", "to": "alice", "msg": "{}"},
                      {"t": "topic", "msg": "{}"}, {}):
            self.assertEqual(self.registry.dispatch(event), 0)
        self.assertEqual(self.a1.frames, [])

    def test_refusing_connection_not_counted(self):
        """A connection that cannot take a frame is not counted as a delivery."""
        self.registry.add(FakeConnection(None, "carol", connection_id="4", accept=False))
        self.assertEqual(self.registry.dispatch({"t": "users", "to": ["carol"], "msg": "{}"}), 0)

    def test_frame_lengths(self):
        """Frames use the 7-bit, 16-bit and 64-bit length forms as RFC 6455 says."""
        self.assertEqual(frame_text(b"a" * 125)[:2], b"\x81\x7d")
        self.assertEqual(frame_text(b"a" * 126)[:4], b"\x81\x7e\x00\x7e")
        self.assertEqual(frame_text(b"a" * 70000)[:10], b"\x81\x7f" + (70000).to_bytes(8, "big"))


class ConfigTests(unittest.TestCase):
    def test_environment_names(self):
        """The seeds' environment names configure the options."""
        config = config_module.load({}, {
            "COUCHDB_URL": "http://db:5984", "COUCHDB_HEARTBEAT_MS": "2000",
            "WS_SINGLE_SESSION": "true", "CORS_ORIGINS": "https://a, https://b",
            "REALTIME_LISTEN": "tcp:9000,ssl:9443:privateKey=k.pem",
        })
        self.assertEqual(config.couchdb_url, "http://db:5984")
        self.assertEqual(config.couchdb_heartbeat_ms, 2000)
        self.assertTrue(config.ws_single_session)
        self.assertEqual(config.cors_origins, ("https://a", "https://b"))
        self.assertEqual(config.listen, ("tcp:9000", "ssl:9443:privateKey=k.pem"))

    def test_command_line_wins(self):
        """A twistd option given beats the environment."""
        config = config_module.load({"couchdb_url": "http://cli"}, {"COUCHDB_URL": "http://env"})
        self.assertEqual(config.couchdb_url, "http://cli")

    def test_bad_values_named(self):
        """A bad value is refused with the option's name."""
        with self.assertRaises(config_module.ConfigError) as caught:
            config_module.load({}, {"WS_MAX_CONNECTIONS_PER_USER": "many"})
        self.assertIn("WS_MAX_CONNECTIONS_PER_USER", str(caught.exception))
        with self.assertRaises(config_module.ConfigError):
            config_module.load({}, {"WS_SIGNED_MESSAGES": "perhaps"})

    def test_repr_hides_secrets(self):
        """A Config's repr never shows the secrets."""
        config = config_module.defaults(jwt_secret="s3cr3t-value", admin_key="k3y-value",
                                        couchdb_admin_auth="YWRtaW46cHc=")
        text = repr(config)
        for secret in ("s3cr3t-value", "k3y-value", "YWRtaW46cHc="):
            self.assertNotIn(secret, text)
