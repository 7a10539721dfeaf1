"""
The benchmark hook (realtime.dev.benchhook): off by default; its commands publish through the
broker like real events.
"""

import os

from twisted.internet import task
from twisted.test.proto_helpers import StringTransport
from twisted.trial import unittest

from realtime import config as config_module
from realtime import jsonutil
from realtime.dev import benchhook
from realtime.service import make_service


class RecordingBroker:
    def __init__(self):
        self.events = []

    def publish(self, event):
        self.events.append(event)


class FakeGateway:
    def __init__(self):
        self.broker = RecordingBroker()


def connect_trigger(clock):
    gateway = FakeGateway()
    service = benchhook.make_trigger_service(clock, gateway, "tcp:0:interface=127.0.0.1")
    factory = service.factory
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    return gateway, proto, transport


class BenchHookTests(unittest.TestCase):
    def test_message_has_the_requested_size(self):
        """A bench event's JSON text is exactly SIZE bytes (clients count frames by bytes)."""
        for size in (80, 128, 1000):
            text = benchhook.bench_message(7, size, "123.456000")
            self.assertEqual(len(text.encode("utf-8")), size)
            message = jsonutil.loads(text)
            self.assertEqual((message["type"], message["seq"], message["sent"]),
                             ("bench", "00000007", "123.456000"))

    def test_burst_publishes_all_events_in_one_call(self):
        """`burst N SIZE` publishes N broadcast events before it returns, then answers ok."""
        clock = task.Clock()
        gateway, proto, transport = connect_trigger(clock)
        proto.dataReceived(b"burst 5 100\n")
        self.assertEqual(len(gateway.broker.events), 5)
        self.assertEqual({e["t"] for e in gateway.broker.events}, {"all"})
        self.assertEqual(transport.value(), b"ok burst 5\n")

    def test_spread_publishes_one_event_per_turn(self):
        """`spread N SIZE` publishes one event, then the next from a callLater(0), then ok."""
        clock = task.Clock()
        gateway, proto, transport = connect_trigger(clock)
        proto.dataReceived(b"spread 3 100\n")
        self.assertEqual(len(gateway.broker.events), 1)
        self.assertEqual([c.getTime() for c in clock.getDelayedCalls()], [0])
        self.assertEqual(transport.value(), b"")
        clock.advance(0)
        self.assertEqual(len(gateway.broker.events), 3)
        self.assertEqual(transport.value(), b"ok spread 3\n")

    def test_stamp_carries_the_senders_time(self):
        """`stamp SIZE TIME` publishes one event whose `sent` is TIME, unchanged."""
        gateway, proto, transport = connect_trigger(task.Clock())
        proto.dataReceived(b"stamp 128 98765.432100\n")
        [event] = gateway.broker.events
        self.assertEqual(jsonutil.loads(event["msg"])["sent"], "98765.432100")

    def test_bad_commands_get_an_error_line(self):
        """Unknown, malformed and out-of-range commands are answered with an error, no event."""
        gateway, proto, transport = connect_trigger(task.Clock())
        proto.dataReceived(b"launch\nburst x 1\nburst 0 10\nburst 10 999999999\n")
        self.assertEqual(gateway.broker.events, [])
        self.assertEqual(transport.value().count(b"error"), 4)

    def test_off_by_default(self):
        """Without REALTIME_BENCH_TRIGGER the service tree has no trigger listener."""
        self.assertNotIn(benchhook.ENV, os.environ)
        config = config_module.defaults(listen=("tcp:0:interface=127.0.0.1",))
        top = make_service(config, reactor=task.Clock())
        factories = [getattr(s, "factory", None) for s in top]
        self.assertFalse(any(type(f).__name__ == "Factory" and
                             getattr(f, "protocol", None) is benchhook._TriggerProtocol
                             for f in factories))

    def test_on_when_the_environment_names_an_endpoint(self):
        """With REALTIME_BENCH_TRIGGER set, the service tree listens for trigger commands."""
        config = config_module.load({}, {benchhook.ENV: "tcp:0:interface=127.0.0.1",
                                         "REALTIME_LISTEN": "tcp:0:interface=127.0.0.1"})
        top = make_service(config, reactor=task.Clock())
        self.assertTrue(any(getattr(getattr(s, "factory", None), "protocol", None)
                            is benchhook._TriggerProtocol for s in top))
