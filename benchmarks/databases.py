"""
Application-database figures: ``python -m benchmarks.databases [--quick] [--only PART]``
(``make bench`` runs it after the main suite).

Three parts, each printed as a table and saved to ``benchmarks/results/<stamp>-databases.json``:

``routing``
    Changes per second the gateway routes from one feed, in one process: the ``_changes``
    lines of documents naming 1, 10 and 100 users (``owner`` plus ``members``), with
    10,000 connected users (one connection each, in the real registry; a connection's
    ``deliver_frame`` only counts, so the figure is the routing: parsing the line, the
    readers of the new revision, the readers index, the recipients found through the
    registry's indexes, sanitising, encoding and framing each message once).  Every line
    is a second revision whose first one is in the readers index (the steady state), and
    one member in ten is taken off (a ``removed`` each).  Measured in the same run as a
    *floor* that only splits and parses the same lines (``LineParser`` + ``jsonutil.loads``),
    rounds interleaved, medians.  Target: routing >= 0.5 x floor.

``index``
    The readers index: bytes per document (tracemalloc) for 100,000 documents whose reader
    sets are all different (an owner and two members each) and all alike (one shared
    set), and the cost of one ``get`` + ``put`` (the index work per change).

``latency``
    CouchDB write -> reader receipt through pouchdb-server, for an application document
    (``doc-change``) and for the user's ``_users`` document (``user-change``), in the same
    gateway process, updates interleaved: p50/p99/max.  Target: application p99 within
    1.5 x the ``_users`` p99.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import statistics
import sys
import time
import tracemalloc

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from realtime import jsonutil  # noqa: E402
from realtime.databases.readers import ReadersIndex  # noqa: E402
from realtime.databases.routing import DatabaseRouter  # noqa: E402
from realtime.databases.rulefile import parse_rules  # noqa: E402
from realtime.feeds.stream import LineParser  # noqa: E402
from realtime.hub.registry import Registry  # noqa: E402
from realtime.vocabulary import ROLES_BEFORE, utc_timestamp  # noqa: E402

RULES = '[databases.bench]\nusers = ["owner", "members"]\nhidden = ["secret"]\n'


class CountingConnection:
    """What the registry needs of a connection; deliveries are only counted."""

    __slots__ = ("connection_id", "user_id", "roles", "topics", "frames", "token_id",
                 "session_seq", "admitted_at", "roles_since", "selections")

    def __init__(self, connection_id, user_id):
        self.connection_id = connection_id
        self.user_id = user_id
        self.token_id = None
        self.session_seq = 0
        self.admitted_at = self.roles_since = 0.0
        self.selections = None
        self.roles = ()
        self.topics = set()
        self.frames = 0

    def deliver_frame(self, frame: bytes) -> bool:
        self.frames += 1
        return True


class NoRevisions:
    def previous_revision(self, db, doc_id, rev):
        raise AssertionError("the index is warm: CouchDB is never asked")


def doc_line(seq: int, doc_id: str, rev: str, owner: str, members) -> bytes:
    doc = {"_id": doc_id, "_rev": rev, "owner": owner, "members": members,
           "title": f"note {doc_id}", "body": "x" * 200, "secret": "s"}
    return jsonutil.dumps({"seq": f"{seq}-g1AAAAB", "id": doc_id,
                           "changes": [{"rev": rev}], "doc": doc}) + b"\n"


def make_feed(users: int, named: int, changes: int):
    """(first revisions, second revisions) as _changes bytes: docs naming ``named`` users."""
    first, second = [], []
    for n in range(changes):
        doc_id = f"d{n}"
        people = [f"u{(n * 7 + k * 97) % users}" for k in range(named)]
        owner, members = people[0], people[1:]
        first.append(doc_line(n, doc_id, "1-a", owner, members))
        kept = [m for i, m in enumerate(members) if i % 10 != 9]  # one in ten taken off
        second.append(doc_line(changes + n, doc_id, "2-b", owner, kept))
    return b"".join(first), b"".join(second)


def routing_round(users: int, named: int, changes: int) -> dict:
    registry = Registry()
    for n in range(users):
        registry.add(CountingConnection(f"c{n}", f"u{n}"))
    rule = parse_rules(RULES)["bench"]
    router = DatabaseRouter(rule, registry, NoRevisions(), lambda: utc_timestamp(time.time()),
                            ReadersIndex(max_entries=changes * 2))
    first, second = make_feed(users, named, changes)

    def route(line):
        row = jsonutil.loads(line)
        row[ROLES_BEFORE] = time.time()  # as the follower stamps it (feeds/catchup.py)
        router.on_change(row)

    LineParser(route).feed(first)  # warm the index (rev 1 of every document)
    before = router.stats.deliveries
    gc.collect()
    t0 = time.perf_counter()
    LineParser(route).feed(second)
    routed = time.perf_counter() - t0
    deliveries = router.stats.deliveries - before

    parsed = []
    t0 = time.perf_counter()
    LineParser(lambda line: parsed.append(jsonutil.loads(line))).feed(second)
    floor = time.perf_counter() - t0
    return {"routed_per_s": changes / routed, "floor_per_s": changes / floor,
            "deliveries_per_change": deliveries / changes}


def routing(opts) -> dict:
    results = {}
    for named in (1, 10, 100):
        changes = opts.changes if named < 100 else opts.changes // 4
        rounds = [routing_round(opts.users, named, changes) for _ in range(opts.rounds)]
        routed = statistics.median(r["routed_per_s"] for r in rounds)
        floor = statistics.median(r["floor_per_s"] for r in rounds)
        results[named] = {"routed_per_s": round(routed), "floor_per_s": round(floor),
                          "ratio": round(routed / floor, 3),
                          "deliveries_per_change": rounds[0]["deliveries_per_change"],
                          "changes": changes, "users": opts.users}
    return results


def index_figures(opts) -> dict:
    count = opts.index_docs
    out = {}
    for label, shared in (("distinct", False), ("shared", True)):
        gc.collect()
        tracemalloc.start()
        start = tracemalloc.take_snapshot()
        index = ReadersIndex(max_entries=count)
        for n in range(count):
            if shared:
                principals = frozenset({"user:owner", "role:staff"})
            else:
                principals = frozenset({f"user:u{n}", f"user:u{n + 1}", f"user:u{n + 2}"})
            index.put(f"doc-{n:08d}", f"2-{n:032x}", principals)
        end = tracemalloc.take_snapshot()
        tracemalloc.stop()
        used = sum(stat.size_diff for stat in end.compare_to(start, "filename"))
        out[f"bytes_per_doc_{label}"] = round(used / count)
        del index
    index = ReadersIndex(max_entries=count)
    principals = frozenset({"user:a", "user:b"})
    for n in range(count):
        index.put(f"doc-{n}", "1-a", principals)
    t0 = time.perf_counter()
    for n in range(count):
        doc_id = f"doc-{n}"
        index.get(doc_id)
        index.put(doc_id, "2-b", principals)
    out["get_put_us"] = round((time.perf_counter() - t0) / count * 1e6, 3)
    out["docs"] = count
    return out


def latency(opts) -> dict:
    import jwt

    from benchmarks import run
    from realtime.dev.embedded import PouchDBServer

    couch = PouchDBServer().start()
    log_dir = os.path.join(HERE, "results")
    os.makedirs(log_dir, exist_ok=True)
    rules_path = os.path.join(log_dir, "bench-rules.toml")
    with open(rules_path, "w") as f:
        f.write(RULES)
    os.environ["REALTIME_CONFIG"] = rules_path
    name = "bench-db"
    try:
        couch.create_user(name, "bench-password-1")
        couch.request("PUT", "/bench")
        server = run.Server("gateway", couch, log_dir)
        try:
            token = jwt.encode({"sub": name, "exp": int(time.time()) + 3600}, run.SECRET,
                               algorithm="HS256")
            sock, rest = run.ws_connect(server.port, token)
            frames = run.read_frames(sock, rest)
            assert json.loads(next(frames))["type"] == "connected"
            time.sleep(1.0)  # let the _changes feeds come up
            samples = {"doc-change": [], "user-change": []}
            paths = {"doc-change": "/bench/note", "user-change": "/_users/org.couchdb.user:" + name}
            for i in range(opts.updates):
                for kind in ("doc-change", "user-change"):
                    path = paths[kind]
                    status, body = couch.request("GET", path)
                    doc = json.loads(body) if status == 200 else {"owner": name}
                    doc["bench"] = i
                    t0 = time.monotonic()
                    status, body = couch.request("PUT", path, json.dumps(doc))
                    if status not in (201, 202):
                        raise RuntimeError(f"PUT {path}: {status}")
                    for payload in frames:
                        message = json.loads(payload)
                        if message.get("type") == kind and \
                                (message.get("doc") or {}).get("bench") == i:
                            samples[kind].append((time.monotonic() - t0) * 1000)
                            break
            sock.close()
        finally:
            server.stop()
    finally:
        os.environ.pop("REALTIME_CONFIG", None)
        couch.stop()
    out = {}
    for kind, values in samples.items():
        values.sort()
        out[kind] = {"p50_ms": round(values[len(values) // 2], 2),
                     "p99_ms": round(values[min(len(values) - 1, int(len(values) * 0.99))], 2),
                     "max_ms": round(values[-1], 2), "updates": len(values)}
    out["p99_ratio"] = round(out["doc-change"]["p99_ms"] / out["user-change"]["p99_ms"], 2)
    return out


def markdown(result: dict) -> str:
    lines = []
    if "routing" in result:
        lines += ["| users named per doc | routed changes/s | floor (parse only) changes/s "
                  "| routed / floor | deliveries per change |", "|---|---|---|---|---|"]
        for named, row in result["routing"].items():
            lines.append(f"| {named} | {row['routed_per_s']:,} | {row['floor_per_s']:,} | "
                         f"{row['ratio']} | {row['deliveries_per_change']:.1f} |")
        lines.append("")
    if "index" in result:
        row = result["index"]
        lines += [f"readers index, {row['docs']:,} documents: {row['bytes_per_doc_distinct']} "
                  f"bytes/doc (distinct reader sets), {row['bytes_per_doc_shared']} bytes/doc "
                  f"(one shared set); get + put per change {row['get_put_us']} us", ""]
    if "latency" in result:
        row = result["latency"]
        for kind in ("doc-change", "user-change"):
            r = row[kind]
            lines.append(f"CouchDB write -> {kind}: p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, "
                         f"max {r['max_ms']} ms ({r['updates']} updates)")
        lines.append(f"application p99 / _users p99: {row['p99_ratio']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=("routing", "index", "latency"))
    opts = parser.parse_args(argv)
    opts.users = 10_000
    opts.changes = 2_000 if opts.quick else 10_000
    opts.rounds = 1 if opts.quick else 3
    opts.index_docs = 20_000 if opts.quick else 100_000
    opts.updates = 20 if opts.quick else 100
    result = {"quick": opts.quick, "python": sys.version.split()[0]}
    parts = [opts.only] if opts.only else ["routing", "index", "latency"]
    if "routing" in parts:
        result["routing"] = routing(opts)
    if "index" in parts:
        result["index"] = index_figures(opts)
    if "latency" in parts:
        result["latency"] = latency(opts)
    results_dir = os.path.join(HERE, "results")
    os.makedirs(results_dir, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    with open(os.path.join(results_dir, f"{stamp}-databases.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
