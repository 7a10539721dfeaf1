"""
In-process micro-measurement of what one WebSocket connection costs the gateway to set up
and to hold, without sockets: for developing (``make bench`` has the figures of record).

    python -m benchmarks.setup_micro [--n 5000] [--repeat 5] [--memory] [--same-tokens]

N connections are opened through the real listener (:class:`WebSocketFirstFactory` ->
Autobahn -> :class:`RealtimeServerProtocol`, JWT in the ``token`` query parameter) on
``StringTransport`` objects; the reactor is the gateway's clock but is never run.  Printed:
CPU microseconds per connection, from the first byte of the request to ``connected`` written (median of the
repeats), and with ``--memory`` the bytes each open connection holds (tracemalloc) and
where they were allocated.  What it leaves out is what the raw Twisted floor also pays:
``accept``, the ``tcp.Connection`` and its socket.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import tracemalloc

import jwt
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from realtime import config as config_module
from realtime.assembly import make_parts
from realtime.transport import fastpath
from realtime.transport.websocket import make_factory

SECRET = "benchmark-secret-not-for-production"


def request(token: str) -> bytes:
    return (f"GET /ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n").encode()


def make_listener():
    # The real reactor as the clock (never run here): task.Clock sorts its calls on every
    # callLater, which would dominate the measurement.
    from twisted.internet import reactor as clock
    config = config_module.defaults(jwt_secret=SECRET, ws_heartbeat_ms=3_600_000)
    gateway = make_parts(config, clock, http=object()).gateway
    factory = make_factory(gateway)
    # the gateway's timer wheel, as the service wires it (the reactor in older trees)
    timers = getattr(gateway, "timers", clock)
    return gateway, fastpath.WebSocketFirstFactory(None, factory, clock=timers)


def tokens(n: int, first: int = 0) -> list:
    exp = int(time.time()) + 3600
    return [request(jwt.encode({"sub": f"bench-{i}", "exp": exp}, SECRET, algorithm="HS256"))
            for i in range(first, first + n)]


def open_all(listener, requests) -> list:
    held = []
    for i, data in enumerate(requests):
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 10000 + i))
        proto = listener.buildProtocol(transport.getPeer())
        proto.makeConnection(transport)
        # as on a tcp.Connection, where Autobahn's adapter has registered itself
        transport.registerProducer(transport, True)
        proto.dataReceived(data)
        held.append(transport)
    return held


def check(transports) -> None:
    for t in transports[:3] + transports[-3:]:
        value = t.value()
        assert value.startswith(b"HTTP/1.1 101"), value[:80]
        assert b'"type":"connected"' in value, value[-200:]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("--same-tokens", action="store_true",
                        help="tokens presented a second time (a reconnect storm: the "
                        "same tokens to the same process; each user then has two connections)")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--calls", action="store_true",
                        help="also count Python function calls per connection (cProfile)")
    opts = parser.parse_args(argv)

    times = []
    same = tokens(opts.n) if opts.same_tokens else None
    for r in range(opts.repeat):
        gateway, listener = make_listener()
        requests = same or tokens(opts.n, r * opts.n)
        if same:  # the tokens were seen before (by this process), as in a reconnect storm
            open_all(listener, requests)
        gc.collect()
        t0 = time.process_time()
        held = open_all(listener, requests)
        times.append((time.process_time() - t0) / opts.n * 1e6)
        check(held)
        del held, gateway, listener
    print(f"setup: {statistics.median(times):.1f} us CPU per connection "
          f"(runs: {', '.join(f'{t:.1f}' for t in times)})")

    if opts.calls:
        import cProfile
        import pstats
        _gateway, listener = make_listener()
        requests = tokens(opts.n, 2 * 10 ** 6)
        open_all(listener, tokens(100, 3 * 10 ** 6))  # warm
        profile = cProfile.Profile()
        profile.enable()
        open_all(listener, requests)
        profile.disable()
        print(f"calls: {pstats.Stats(profile).total_calls / opts.n:.0f} Python function "
              "calls per connection")

    if opts.memory:
        _gateway, listener = make_listener()
        requests = tokens(opts.n, 10 ** 6)
        open_all(listener, requests[:100])  # warm caches, first-use allocations
        gc.collect()
        tracemalloc.start(8)
        before = tracemalloc.take_snapshot()
        held = open_all(listener, requests[100:])
        for t in held:  # what the StringTransport kept of the writes is not the server's
            t.clear()
        gc.collect()
        after = tracemalloc.take_snapshot()
        n = len(held)
        stats = after.compare_to(before, "lineno")
        total = sum(s.size_diff for s in stats)
        print(f"memory: {total / n:.0f} bytes per open connection (tracemalloc, Python "
              f"objects only; StringTransport objects included: "
              f"{sys.getsizeof(held[0].__dict__) + sys.getsizeof(held[0])} B of them)")
        for s in stats[:opts.top]:
            frame = s.traceback[0]
            print(f"  {s.size_diff / n:7.0f} B  {s.count_diff / n:5.2f} blocks  "
                  f"{frame.filename.rsplit('site-packages/', 1)[-1]}:{frame.lineno}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
