"""
Cluster benchmark: 1 process vs N processes sharing one redis-server.

Two modes:

``rest`` (default): real gateway processes (``python -m realtime`` with REDIS_URL), one
    redis-server, the pouchdb-server the tests use, WebSocket clients spread across the
    processes.  Reports, for 1 and N processes:
      - REST push throughput: ``POST /websocket/message/broadcast`` sent round-robin to the
        processes with ``--concurrency`` requests in flight; accepted requests per second,
        and the deliveries per second that made to the clients;
      - topic publication throughput: ``POST /websocket/publish`` to a topic every client
        subscribed to (``public:bench``);
      - cross-process delivery latency: ``POST /websocket/message/user`` on process 0 for a
        user connected on the last process; p50/p99 from the POST to the client's receipt.
    Needs the REST admin API (issue 3).

``broker``: no REST, no child process: N in-process RedisBroker "processes" (a registry
    each) on one redis-server; publish throughput and cross-process latency of the broker
    itself (the floor under the REST figures).

    python benchmarks/cluster_bench.py [--mode rest|broker] [--processes 3] [--clients 60]
                                       [--requests 2000] [--concurrency 32] [--json out.json]

Run from the repository root (it uses the test harness to start servers).  It is not a test:
it asserts nothing, it measures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, task  # noqa: E402
from twisted.internet.defer import inlineCallbacks  # noqa: E402


def percentile(values, q):
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, int(round(q / 100.0 * (len(ordered) - 1)))))
    return ordered[index]


def summary_ms(samples):
    return {"n": len(samples),
            "p50_ms": round(percentile(samples, 50) * 1000, 3) if samples else None,
            "p99_ms": round(percentile(samples, 99) * 1000, 3) if samples else None}


@inlineCallbacks
def bounded(jobs, concurrency):
    """Run the callables (each returning a Deferred) with at most ``concurrency`` at once."""
    semaphore = defer.DeferredSemaphore(concurrency)
    results = yield defer.gatherResults([semaphore.run(job) for job in jobs],
                                        consumeErrors=True)
    return results


# -- REST mode ---------------------------------------------------------------------------


class _Counting:
    """Attaches to a WSClient: counts messages by type, records receipt times by data id."""

    def __init__(self, client):
        self.counts = {}
        self.arrivals = {}
        original = client.onMessage

        def on_message(payload, is_binary):
            original(payload, is_binary)
            message = client.received.pop()  # do not keep everything in memory
            client.messages.pending.clear()
            kind = message.get("type")
            self.counts[kind] = self.counts.get(kind, 0) + 1
            data = message.get("data")
            if isinstance(data, dict) and "probe" in data:
                self.arrivals[data["probe"]] = time.perf_counter()

        client.onMessage = on_message


@inlineCallbacks
def rest_round(reactor, processes, clients, requests, concurrency):
    import jwt

    from tests import harness
    from tests.cluster_harness import JWT_SECRET, Cluster

    cluster = Cluster(processes)
    yield cluster.start()
    try:
        def token(user):
            return jwt.encode({"sub": user, "exp": int(time.time()) + 3600}, JWT_SECRET,
                              algorithm="HS256")

        counters = []
        for i in range(clients):
            client = yield cluster.connect(i % processes,
                                           query={"token": token(f"bench-{i}")})
            yield client.next("connected")
            client.send_json({"type": "subscribe", "topic": "public:bench"})
            yield client.next("subscribed")
            counters.append(_Counting(client))
        probe_user = f"bench-{processes - 1}"  # connected on the last process
        probe_counter = counters[processes - 1]

        def delivered(kind):
            return sum(c.counts.get(kind, 0) for c in counters)

        @inlineCallbacks
        def flood(path, body_of, kind):
            before = delivered(kind)
            accepted = []

            @inlineCallbacks
            def one(n):
                code, _ = yield cluster.post(n % processes, path, body_of(n))
                if 200 <= code < 300:
                    accepted.append(n)

            started = time.perf_counter()
            yield bounded([lambda n=n: one(n) for n in range(requests)], concurrency)
            elapsed = time.perf_counter() - started
            expected = len(accepted) * clients
            deadline = time.perf_counter() + 30
            while delivered(kind) - before < expected and time.perf_counter() < deadline:
                yield harness.sleep(0.05)
            total = time.perf_counter() - started
            return {"requests": requests, "accepted": len(accepted),
                    "requests_per_s": round(len(accepted) / elapsed, 1),
                    "deliveries": delivered(kind) - before, "expected_deliveries": expected,
                    "deliveries_per_s": round((delivered(kind) - before) / total, 1)}

        push = yield flood("/websocket/message/broadcast",
                           lambda n: {"type": "bench", "data": {"n": n}}, "bench")
        publish = yield flood("/websocket/publish",
                              lambda n: {"topic": "public:bench", "data": {"n": n}},
                              "publication")
        latencies = []
        for n in range(min(requests, 500)):
            probe = f"p{processes}-{n}"
            sent = time.perf_counter()
            code, _ = yield cluster.post(0, "/websocket/message/user",
                                         {"userId": probe_user, "type": "probe",
                                          "data": {"probe": probe}})
            if not 200 <= code < 300:
                continue
            deadline = time.perf_counter() + 5
            while probe not in probe_counter.arrivals and time.perf_counter() < deadline:
                yield harness.sleep(0.0005)
            if probe in probe_counter.arrivals:
                latencies.append(probe_counter.arrivals[probe] - sent)
        return {"processes": processes, "clients": clients, "rest_push": push,
                "topic_publish": publish,
                "cross_process_latency": summary_ms(latencies)}
    finally:
        yield cluster.stop()


# -- broker mode -------------------------------------------------------------------------


@inlineCallbacks
def broker_round(reactor, processes, requests, concurrency):
    from tests import harness
    from tests.redis_helpers import Node

    server = harness.RedisServer().start()
    nodes = [Node(server.url, harness.unique("bench") + ":") for _ in range(1)]
    prefix = nodes[0].broker.stream[:-len("events")]
    nodes += [Node(server.url, prefix) for _ in range(processes - 1)]
    try:
        for node in nodes:
            node.broker.start()
        yield harness.wait_for(lambda: all(n.ready() for n in nodes), seconds=30)
        receivers = [node.connect("bench-user") for node in nodes]
        text = json.dumps({"type": "bench", "data": "x" * 100})

        before = [len(r.messages) for r in receivers]
        started = time.perf_counter()
        yield bounded([lambda i=i: nodes[i % processes].broker.publish(
            {"t": "users", "to": ["bench-user"], "msg": text}) for i in range(requests)],
            concurrency)
        elapsed = time.perf_counter() - started
        yield harness.wait_for(lambda: all(len(r.messages) - b >= requests
                                           for r, b in zip(receivers, before)), seconds=60)
        total = time.perf_counter() - started
        throughput = {"publishes": requests,
                      "publishes_per_s": round(requests / elapsed, 1),
                      "deliveries_per_s": round(requests * processes / total, 1)}

        latencies = []
        last = receivers[-1]
        for n in range(min(requests, 1000)):
            count = len(last.messages)
            sent = time.perf_counter()
            yield nodes[0].broker.publish({"t": "users", "to": ["bench-user"], "msg": text})
            while len(last.messages) == count:
                yield harness.sleep(0)
            latencies.append(time.perf_counter() - sent)
        return {"processes": processes, "broker": throughput,
                "cross_process_latency": summary_ms(latencies)}
    finally:
        for node in nodes:
            yield node.broker.stop()
        server.cleanup()


@inlineCallbacks
def main(reactor, argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("rest", "broker"), default="rest")
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--clients", type=int, default=60)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    results = []
    for processes in sorted({1, args.processes}):
        if args.mode == "rest":
            result = yield rest_round(reactor, processes, args.clients, args.requests,
                                      args.concurrency)
        else:
            result = yield broker_round(reactor, processes, args.requests, args.concurrency)
        print(json.dumps(result, indent=2), flush=True)
        results.append(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"mode": args.mode, "results": results}, f, indent=2)


if __name__ == "__main__":
    task.react(main, (sys.argv[1:],))
