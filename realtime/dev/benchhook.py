"""
A benchmark hook: a loopback line protocol that makes the gateway broadcast synthetic events.

OFF by default.  It is started only when ``REALTIME_BENCH_TRIGGER`` names a Twisted endpoint
(e.g. ``tcp:9901:interface=127.0.0.1``); the benchmark suite (``benchmarks/``) sets it.  It
is not an API: it has no authentication, so bind it to loopback only, and never set it in
production.

Events go through the same path as real ones: ``gateway.broker.publish(all_event(text))``
-> registry -> every authenticated connection.  Each event is a JSON message
``{"type":"bench","seq":"00000001","sent":"…","pad":"xx…"}`` whose text is padded to exactly
``size`` bytes, so a load client can count frames by bytes.

Commands (one per line; each is answered ``ok …`` once all its events were published):

``burst N SIZE``
    N events published one after the other in a single reactor callback.
``spread N SIZE``
    N events, one per reactor turn (``callLater(0, …)`` chained).
``stamp SIZE TIME``
    one event whose ``sent`` field is TIME (the sender's clock, opaque to the server).
"""

from __future__ import annotations

from twisted.application import internet
from twisted.internet import endpoints
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver

from realtime import jsonutil
from realtime.vocabulary import all_event

ENV = "REALTIME_BENCH_TRIGGER"
MAX_EVENTS = 1_000_000
MAX_SIZE = 60_000


def bench_message(seq: int, size: int, sent: str = "0") -> str:
    """The JSON text of one synthetic event, padded to ``size`` bytes when it can be."""
    base = {"type": "bench", "seq": f"{seq:08d}", "sent": sent, "pad": ""}
    bare = len(jsonutil.dumps_text(base))
    base["pad"] = "x" * max(0, size - bare)
    return jsonutil.dumps_text(base)


class _TriggerProtocol(LineOnlyReceiver):
    delimiter = b"\n"
    MAX_LENGTH = 1024
    _log = Logger()

    def lineReceived(self, line: bytes) -> None:
        try:
            words = line.decode("ascii").split()
            command, args = words[0], words[1:]
            if command == "burst":
                count, size = _bounded(args)
                self._burst(count, size)
            elif command == "spread":
                count, size = _bounded(args)
                self._spread(0, count, size)
            elif command == "stamp":
                self._publish(0, int(args[0]), args[1])
                self._reply("ok stamp")
            else:
                self._reply("error unknown command")
        except (IndexError, ValueError, UnicodeDecodeError):
            self._reply("error bad command")
        except Exception:
            self._log.failure("bench trigger failed")
            self._reply("error internal")

    def _publish(self, seq: int, size: int, sent: str = "0") -> None:
        self.factory.gateway.broker.publish(all_event(bench_message(seq, size, sent)))

    def _burst(self, count: int, size: int) -> None:
        for seq in range(count):
            self._publish(seq, size)
        self._reply(f"ok burst {count}")

    def _spread(self, seq: int, count: int, size: int) -> None:
        if seq >= count:
            self._reply(f"ok spread {count}")
            return
        self._publish(seq, size)
        self.factory.clock.callLater(0, self._spread, seq + 1, count, size)

    def _reply(self, text: str) -> None:
        if self.transport is not None:
            self.transport.write(text.encode("ascii") + b"\n")


def _bounded(args) -> tuple:
    count, size = int(args[0]), int(args[1])
    if not (0 < count <= MAX_EVENTS and 0 < size <= MAX_SIZE):
        raise ValueError("out of range")
    return count, size


def make_trigger_service(reactor, gateway, description: str):
    """A service listening on ``description`` for trigger commands."""
    factory = Factory.forProtocol(_TriggerProtocol)
    factory.gateway = gateway
    factory.clock = reactor
    factory.noisy = False
    endpoint = endpoints.serverFromString(reactor, description)
    return internet.StreamServerEndpointService(endpoint, factory)
