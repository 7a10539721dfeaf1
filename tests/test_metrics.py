"""Metrics: one Prometheus registry per gateway, bounded labels."""

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial import unittest

from realtime.metrics import Metrics, type_label
from tests.fakes import FakeConnection, make_gateway


def samples(metrics):
    found = {}
    for family in text_string_to_metric_families(metrics.render().decode("utf-8")):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


class MetricsTests(unittest.TestCase):
    def test_each_gateway_has_its_own_registry(self):
        """Two gateways in one process count separately (no global registry)."""
        one, two = make_gateway(), make_gateway()
        one.metrics.received("subscribe")
        FakeConnection(two, "bob")
        self.assertEqual(samples(one.metrics)[("realtime_messages_received_total",
                                               (("type", "subscribe"),))], 1)
        self.assertNotIn(("realtime_messages_received_total", (("type", "subscribe"),)),
                         samples(two.metrics))
        self.assertEqual(samples(one.metrics)[("realtime_authenticated_users", ())], 0)
        self.assertEqual(samples(two.metrics)[("realtime_authenticated_users", ())], 1)

    def test_labels_stay_bounded(self):
        """Types outside the protocol's are counted as other; codes are truncated."""
        self.assertEqual(type_label("publication"), "publication")
        self.assertEqual(type_label("my-app-event-1234"), "other")
        self.assertEqual(type_label(None), "other")
        metrics = Metrics()
        for i in range(50):
            metrics.sent(f"custom-{i}")
        self.assertEqual(samples(metrics)[("realtime_messages_sent_total",
                                           (("type", "other"),))], 50)

    def test_gateway_deliveries_counted_by_type(self):
        """A change routed to a user counts as a user-change delivery."""
        gateway = make_gateway()
        FakeConnection(gateway, "alice")
        gateway.dispatch.on_change("_users", {"id": "org.couchdb.user:alice", "seq": 1,
                                     "doc": {"_id": "org.couchdb.user:alice", "name": "alice"}})
        self.assertEqual(samples(gateway.metrics)[("realtime_messages_sent_total",
                                                   (("type", "user-change"),))], 1)
