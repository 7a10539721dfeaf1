"""
Resume figures, with real processes on loopback: pouchdb-server (in memory) and
``python -m realtime`` with a rule file (``users = ["owner"]``).

1. Replay against the floor: one client resuming after N missed changes of a database
   (1 % of them its own documents), against pouchdb-server's own raw ``_changes`` read of
   the same range (``include_docs``, batches of 1,000: what the replay reads) in the same
   run.  The replay time runs from sending ``resume`` to receiving ``resumed``; the ratio
   is raw read time / replay time (1.0: the replay costs no more than reading the
   changes; target >= 0.8).
2. Live delivery under replays: the latency (p50 / p99 / max) of live events (the
   benchmark hook's ``stamp`` broadcasts, 50/s, :mod:`benchmarks.run`'s C load clients) to
   1,000 connected clients, while 10 clients resume 10,000 missed changes each, over and
   over (``REALTIME_RESUME_CONCURRENCY=10``: all 10 read at once), against the same with
   no replay, interleaved (idle, replays, idle, replays...) in the same gateway process;
   target: p99 under replays <= 2 x idle p99.  A third condition, interleaved with those,
   runs the same CouchDB reads without the gateway (``REPLAYS`` threads reading the range
   from pouchdb-server directly, over and over): what the machine's shared cores alone do
   to the live p99 while pouchdb-server serves replays (on 2 cores, it runs beside the
   gateway and the load clients; in production CouchDB has cores of its own).  The ratio
   of the replays' p99 to that one is the gateway's own part.

    python -m benchmarks.resume_bench            # N = 10,000 and 100,000; live 8 s x 2
    python -m benchmarks.resume_bench --quick    # N = 2,000 and 10,000; live 4 s x 2
    python -m benchmarks.resume_bench --only live   # (or replay) one figure only
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import jwt  # noqa: E402

from realtime.dev.embedded import PouchDBServer, free_port, stop_process  # noqa: E402

SECRET = "resume-benchmark-secret-0123456789"


def seed(couch: PouchDBServer, db: str, n: int, user: str, revisions: int = 1) -> None:
    """``n`` documents, 1 % of them ``user``'s, each written ``revisions`` times."""
    couch.request("PUT", "/" + db)
    for start in range(0, n, 1000):
        docs = [{"_id": f"d{i:07d}", "owner": user if i % 100 == 0 else f"u{i % 977}",
                 "title": f"document {i}", "body": "x" * 200}
                for i in range(start, min(n, start + 1000))]
        for _ in range(revisions):
            status, body = couch.request("POST", f"/{db}/_bulk_docs",
                                         json.dumps({"docs": docs}))
            assert status == 201, body[:200]
            for doc, answer in zip(docs, json.loads(body)):
                doc["_rev"] = answer["rev"]


def raw_read(couch: PouchDBServer, db: str) -> float:
    started = time.perf_counter()
    since = 0
    while True:
        status, body = couch.request(
            "GET", f"/{db}/_changes?since={since}&limit=1000&include_docs=true")
        answer = json.loads(body)
        since = answer["last_seq"]
        if len(answer["results"]) < 1000:
            return time.perf_counter() - started


class ReplayClient:
    """One WebSocket connection (a plain socket client) that resumes a database, again and
    again if asked; frames of any other type (live broadcasts) are read and skipped."""

    def __init__(self, port: int, user: str, secret: str = SECRET):
        import base64
        import socket
        token = jwt.encode({"sub": user, "exp": int(time.time()) + 3600}, secret,
                           algorithm="HS256")
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=300)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                           ).encode())
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("the gateway closed the handshake")
            self.buffer += chunk
        self.buffer = self.buffer.split(b"\r\n\r\n", 1)[1]
        self.frames = self._frames()
        for payload in self.frames:
            if json.loads(payload)["type"] == "connected":
                break

    def _frames(self):
        while True:
            while len(self.buffer) < 2 or len(self.buffer) < _frame_length(self.buffer):
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    return
                self.buffer += chunk
            length = _frame_length(self.buffer)
            frame, self.buffer = self.buffer[:length], self.buffer[length:]
            opcode = frame[0] & 0x0F
            if opcode == 0x9:  # a ping (the server's keep-alive): answered, as a browser does
                self._write(0x8A, _payload(frame))
            elif opcode == 0x8:
                return
            elif opcode < 0x8:
                yield _payload(frame)

    def send(self, message: dict) -> None:
        self._write(0x81, json.dumps(message).encode())

    def _write(self, first: int, payload: bytes) -> None:
        mask = os.urandom(4)
        header = bytes([first, 0x80 | 126]) + struct.pack("!H", len(payload)) \
            if len(payload) > 125 else bytes([first, 0x80 | len(payload)])
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def resume(self, db: str, since=0) -> tuple:
        """(seconds from resume to resumed, messages replayed)."""
        started = time.perf_counter()
        self.send({"type": "resume", "since": {db: since}})
        count = 0
        for payload in self.frames:
            message = json.loads(payload)
            if message["type"] == "resumed":
                assert message["recovered"][db] is True, message
                return time.perf_counter() - started, count
            if message.get("replay"):
                count += 1
        raise RuntimeError("the connection ended before resumed")

    def close(self) -> None:
        self.sock.close()


def replay(port: int, db: str, user: str) -> tuple:
    """(seconds from resume to resumed, messages replayed) on a new connection."""
    client = ReplayClient(port, user)
    try:
        return client.resume(db)
    finally:
        client.close()


def _frame_length(buffer: bytes) -> int:
    if len(buffer) < 2:
        return 2
    n = buffer[1] & 0x7F
    if n == 126:
        return 4 + (struct.unpack("!H", buffer[2:4])[0] if len(buffer) >= 4 else 0)
    if n == 127:
        return 10 + (struct.unpack("!Q", buffer[2:10])[0] if len(buffer) >= 10 else 0)
    return 2 + n


def _payload(frame: bytes) -> bytes:
    n = frame[1] & 0x7F
    return frame[4:] if n == 126 else frame[10:] if n == 127 else frame[2:]


def start_gateway(couch: PouchDBServer, db: str, folder: str, root=None):
    rules = os.path.join(folder, "rules.toml")
    with open(rules, "w") as f:
        f.write(f'[databases.{db}]\nusers = ["owner"]\n')
    port = free_port()
    env = dict(os.environ, REALTIME_LISTEN=f"tcp:{port}:interface=127.0.0.1",
               REALTIME_EMBEDDED_COUCHDB="no", COUCHDB_URL=couch.url,
               COUCHDB_ADMIN_AUTH=couch.admin_auth, JWT_SECRET=SECRET,
               REALTIME_CONFIG=rules, REALTIME_RESUME_MAX_CHANGES="10000000",
               WS_HEARTBEAT_MS="3600000")  # (no keep-alive ping inside a measurement)
    log = open(os.path.join(folder, "gateway.log"), "wb")
    process = subprocess.Popen([sys.executable, "-m", "realtime"], cwd=root or ROOT, env=env,
                               stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/websocket/status",
                                        timeout=2) as response:
                if json.loads(response.read())["couchdb"]["state"] == "connected":
                    return process, port
        except OSError:
            pass
        time.sleep(0.2)
    stop_process(process)
    raise RuntimeError("the gateway did not start")


# -- live delivery while replays run ----------------------------------------------------

LIVE_CLIENTS = 1000
REPLAYS = 10
LIVE_CHANGES = 10_000


class ReplaysRunning:
    """``REPLAYS`` clients resuming the same range over and over, each in a thread, while
    the ``with`` block runs (each finishes the replay it is in when the block ends)."""

    def __init__(self, clients, db: str):
        self.clients, self.db = clients, db
        self.stop = threading.Event()
        self.started = threading.Barrier(len(clients) + 1)
        self.done = [0] * len(clients)
        self.errors = []

    def _run(self, index: int) -> None:
        try:
            self.started.wait(timeout=60)
            while not self.stop.is_set():
                self.clients[index].resume(self.db)
                self.done[index] += 1
        except Exception as e:  # reported by __exit__
            self.errors.append(repr(e))

    def __enter__(self):
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(len(self.clients))]
        for thread in self.threads:
            thread.start()
        self.started.wait(timeout=60)
        time.sleep(0.5)  # every replay under way (the first batches read)
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=300)
        if self.errors:
            raise RuntimeError(f"a replay failed: {self.errors[0]}")


class CouchReadsRunning(ReplaysRunning):
    """The reads of ``REPLAYS`` replays without the gateway: threads reading the range from
    pouchdb-server directly (``_changes``, include_docs, batches of 1,000, as the replay
    reads it), over and over, while the ``with`` block runs."""

    def __init__(self, couch: PouchDBServer, db: str, threads: int = REPLAYS):
        super().__init__([None] * threads, db)
        self.couch = couch

    def _run(self, index: int) -> None:
        try:
            self.started.wait(timeout=60)
            while not self.stop.is_set():
                since = 0
                while True:
                    status, body = self.couch.request(
                        "GET", f"/{self.db}/_changes?since={since}&limit=1000"
                        "&include_docs=true")
                    assert status == 200, body[:200]
                    # (last_seq read off the end: the reading costs this process little)
                    last = json.loads(body[body.rindex(b'"last_seq":') + 11:].strip()[:-1])
                    if body.count(b'"seq":') < 1000:
                        break
                    since = last
                self.done[index] += 1
        except Exception as e:  # reported by __exit__
            self.errors.append(repr(e))


@contextlib.contextmanager
def environment(**values):
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def live_figure(couch: PouchDBServer, folder: str, seconds: float, rounds: int,
                gateway_root=None) -> dict:
    """p50/p99/max of live deliveries to LIVE_CLIENTS, idle and while REPLAYS replays run."""
    from benchmarks import run
    db = "live"
    seed(couch, db, LIVE_CHANGES, "ann")
    rules = os.path.join(folder, "live-rules.toml")
    with open(rules, "w") as f:
        f.write(f'[databases.{db}]\nusers = ["owner"]\n')
    run.raise_fd_limit()
    binary = run.build_client(os.path.join(HERE, "results"))
    with environment(REALTIME_CONFIG=rules, REALTIME_RESUME_MAX_CHANGES="10000000",
                     REALTIME_RESUME_CONCURRENCY=str(REPLAYS)):
        server = run.Server("gateway", couch, folder, gateway_root)
    clients = run.Clients(2, binary)
    replayers = []
    out = {"idle": [], "replays": [], "couch": [], "replays_done": [], "couch_done": [],
           "seconds": seconds}
    try:
        parts = run.split(LIVE_CLIENTS, 2)
        clients.send_all([f"connect {server.port} {part} 100 "
                          f"{run.token_file(folder, sum(parts[:i]), part)}"
                          for i, part in enumerate(parts)])
        connected = sum(int(c[0]) for c in clients.read_all("connected"))
        assert connected == LIVE_CLIENTS, connected
        replayers = [ReplayClient(server.port, "ann", run.SECRET) for _ in range(REPLAYS)]
        time.sleep(1.5)
        def measured(name):
            """One latency run, with the CPU share of the gateway and of pouchdb-server."""
            cpu = server.cpu(), run.cpu_seconds(couch.process.pid), time.monotonic()
            result = run.latency(server, clients, 50.0, seconds)
            elapsed = time.monotonic() - cpu[2]
            result["gateway_cpu"] = (server.cpu() - cpu[0]) / elapsed
            result["couch_cpu"] = (run.cpu_seconds(couch.process.pid) - cpu[1]) / elapsed
            out[name].append(result)

        for _ in range(rounds):
            measured("idle")
            with ReplaysRunning(replayers, db) as running:
                measured("replays")
            out["replays_done"].append(sum(running.done))
            with CouchReadsRunning(couch, db) as running:
                measured("couch")
            out["couch_done"].append(sum(running.done))
    finally:
        for client in replayers:
            client.close()
        clients.stop()
        server.stop()
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=("replay", "live"))
    parser.add_argument("--revisions", type=int, default=1, help="replay figure: every "
                        "document written this many times (others' documents then need "
                        "their earlier revisions read back: removed or not?)")
    parser.add_argument("--sizes", help="replay figure: comma-separated N")
    parser.add_argument("--gateway-root", help="run the gateway from another checkout (to "
                        "compare before and after a change)")
    args = parser.parse_args(argv)
    sizes = (2_000, 10_000) if args.quick else (10_000, 100_000)
    if args.sizes:
        sizes = tuple(int(n) for n in args.sizes.split(","))
    folder = tempfile.mkdtemp(prefix="realtime-resume-bench-")
    couch = PouchDBServer().start()
    rows, live = [], None
    try:
        for n in sizes if args.only != "live" else ():
            db = f"bench{n}"
            seed(couch, db, n, "ann", args.revisions)
            process, port = start_gateway(couch, db, folder, args.gateway_root)
            try:
                from benchmarks.run import cpu_seconds
                raws, replays, cpu = [], [], {"raw": [], "couch": [], "gateway": []}
                for _ in range(args.rounds):
                    before = cpu_seconds(couch.process.pid), time.process_time()
                    raws.append(raw_read(couch, db))
                    cpu["raw"].append(cpu_seconds(couch.process.pid) - before[0]
                                      + time.process_time() - before[1])
                    before = cpu_seconds(couch.process.pid), cpu_seconds(process.pid)
                    seconds, count = replay(port, db, "ann")
                    cpu["couch"].append(cpu_seconds(couch.process.pid) - before[0])
                    cpu["gateway"].append(cpu_seconds(process.pid) - before[1])
                    assert count == (n + 99) // 100, count
                    replays.append(seconds)
                raw, rep = statistics.median(raws), statistics.median(replays)
                rows.append((n, raw, rep, raw / rep,
                             *(statistics.median(cpu[k]) for k in ("raw", "couch", "gateway"))))
            finally:
                stop_process(process)
        if args.only != "replay":
            live = live_figure(couch, folder, 4.0 if args.quick else 8.0, 2,
                               args.gateway_root)
    finally:
        couch.stop()
    if rows:
        print("| missed changes | raw _changes read (s) | resume replay (s) | raw / replay "
              "| CPU s: raw read (pouchdb + reader) | replay (pouchdb + gateway) |")
        print("|---:|---:|---:|---:|---:|---:|")
        for n, raw, rep, ratio, raw_cpu, couch_cpu, gateway_cpu in rows:
            print(f"| {n:,} | {raw:.2f} | {rep:.2f} | {ratio:.2f} | {raw_cpu:.2f} | "
                  f"{couch_cpu:.2f} + {gateway_cpu:.2f} |")
    if live:
        print()
        print(f"Live events at 50/s to {LIVE_CLIENTS:,} clients, {live['seconds']:g} s per "
              f"round, {len(live['idle'])} interleaved rounds (medians):")
        print()
        print("| condition | p50 (ms) | p99 (ms) | max (ms) | missing | replays done "
              "| gateway CPU | pouchdb CPU |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for name, label, done in (("idle", "no replay", "-"),
                                  ("replays", f"{REPLAYS} replays of {LIVE_CHANGES:,}",
                                   "+".join(map(str, live["replays_done"]))),
                                  ("couch", f"their reads only, without the gateway "
                                   f"({REPLAYS} threads)",
                                   "+".join(map(str, live["couch_done"])))):
            runs = live[name]
            med = {key: statistics.median(r[key] for r in runs)
                   for key in ("p50_ms", "p99_ms", "max_ms", "gateway_cpu", "couch_cpu")}
            print(f"| {label} | {med['p50_ms']:.1f} | {med['p99_ms']:.1f} | "
                  f"{med['max_ms']:.1f} | {sum(r['missing'] for r in runs)} | {done} | "
                  f"{med['gateway_cpu']:.0%} | {med['couch_cpu']:.0%} |")
        idle = statistics.median(r["p99_ms"] for r in live["idle"])
        busy = statistics.median(r["p99_ms"] for r in live["replays"])
        print()
        couch_only = statistics.median(r["p99_ms"] for r in live["couch"])
        print(f"p99 under replays / idle p99: {busy / idle:.2f} (target <= 2); per round: "
              + ", ".join(f"{r['p99_ms']:.1f}/{i['p99_ms']:.1f}"
                          for r, i in zip(live["replays"], live["idle"])))
        print(f"p99 with pouchdb-server serving the same reads to no gateway / idle p99: "
              f"{couch_only / idle:.2f} (the machine's part); p99 under replays / that: "
              f"{busy / couch_only:.2f} (the gateway's part)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
