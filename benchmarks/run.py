"""
The benchmark suite: ``python -m benchmarks.run [--quick]`` (or ``make bench``).

It starts, as real processes on loopback:

- pouchdb-server (in memory; :class:`realtime.dev.embedded.PouchDBServer`), once;
- for each measurement session, one of three servers:

  ``gateway``  ``python -m realtime`` with ``JWT_SECRET``, ``COUCHDB_URL`` and the benchmark
               hook ``REALTIME_BENCH_TRIGGER`` (see :mod:`realtime.dev.benchhook`); clients
               authenticate with a JWT in the ``token`` query parameter;
  ``gateway2`` two such processes on one ``reuseport:`` port with ``REDIS_URL`` (a
               redis-server of their own): the scaled-out deployment on this machine's two
               cores; compared with ``gateway`` in the same run;
  ``floor``    ``benchmarks/floor_server.py``: raw Twisted, handshake by hand, pre-framed
               bytes; no auth;
  ``node``     ``benchmarks/node_ws_server.js``: Node ``ws``, ``client.send`` to each; no auth;

- and load-client processes (``benchmarks/loadclient.py``, one per core) that hold the N
  connections.

Sessions are interleaved (gateway, floor, node, gateway, floor, node, …), so that the
machine's drift hits every server alike; every figure is the median over rounds, and is
also given as a ratio to the baselines measured in the same run.

For each N and server it measures: connection setup rate (gateway: including JWT auth and
the ``connected`` message; baselines: handshake and a ``connected`` message), idle memory per
connection (RSS delta / N, from /proc), fan-out deliveries/s for a burst of events in one
callback and for one event per reactor turn (with server and client CPU beside them), and at
N = 1,000 the latency p50/p99/max of events sent at 50/s.  Once per run it measures CouchDB
write -> client receipt latency through pouchdb-server (``_users`` doc update ->
``user-change``), gateway only.

Results: ``benchmarks/results/<stamp>.json``, ``.md`` and ``-readme.rst`` (the README's
table, to paste as it is) (gitignored); the table is printed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from realtime.dev.benchhook import bench_message  # noqa: E402
from realtime.dev.embedded import PouchDBServer, free_port  # noqa: E402
from realtime.hub.registry import frame_text  # noqa: E402

SECRET = "benchmark-secret-not-for-production"
SIZE = 128  # payload bytes of every benchmark event
FRAME_LEN = len(frame_text(bench_message(0, SIZE).encode()))
SERVERS = ("gateway", "gateway2", "floor", "node")
#: the gateway's configurations: one process; two on a reuseport: port with Redis; and, not
#: in the default run (--servers), one process with Redis, to tell the cost of Redis apart
GATEWAYS = ("gateway", "gateway2", "gateway1r")
BURST_EVENTS = 100  # events per callback in the burst shape (13 KiB per connection)
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- processes ----------------------------------------------------------------------------

def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def wait_port(port: int, process, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open in {timeout} s")


class Server:
    """
    The server under test (one process, or ``processes`` of them on one port), with the
    trigger connection of the first.

    ``gateway2``: two gateway processes on one ``reuseport:`` port (the kernel spreads the
    connections over them), sharing a redis-server of their own (``REDIS_URL``: broker,
    presence and revocations in Redis, as a scaled-out deployment runs); the trigger is
    sent to the first process, and every event reaches the other through Redis.
    ``gateway1r``: one such process with its redis-server (not in the default run).
    """

    def __init__(self, kind: str, couch: PouchDBServer, log_dir: str, gateway_root=None):
        self.kind = kind
        self.port = free_port()
        self.redis = None
        log = open(os.path.join(log_dir, f"{kind}.log"), "ab")
        cwd = ROOT
        count = 1
        if kind in GATEWAYS:
            count = 2 if kind == "gateway2" else 1
            listen = "reuseport" if count > 1 else "tcp"
            base = dict(os.environ)
            base.update({
                "REALTIME_LISTEN": f"{listen}:{self.port}:interface=127.0.0.1:backlog=4096",
                "JWT_SECRET": SECRET,
                "COUCHDB_URL": couch.url,
                "COUCHDB_ADMIN_AUTH": couch.admin_auth,
                # no server ping message inside a measurement (the timers still exist)
                "WS_HEARTBEAT_MS": "3600000",
            })
            if kind in ("gateway1r", "gateway2"):
                self.redis = start_redis(log_dir)
                base["REDIS_URL"] = f"redis://127.0.0.1:{self.redis.port}/0"
            cwd = gateway_root or ROOT
        self.trigger_ports = [free_port() for _ in range(count)]
        self.trigger_port = self.trigger_ports[0]
        self.processes = []
        for trigger_port in self.trigger_ports:
            env = dict(os.environ)
            if kind in GATEWAYS:
                env = dict(base, REALTIME_BENCH_TRIGGER=f"tcp:{trigger_port}:interface=127.0.0.1")
                argv = [sys.executable, "-m", "realtime"]
            elif kind == "floor":
                argv = [sys.executable, os.path.join(HERE, "floor_server.py"),
                        str(self.port), str(trigger_port)]
            elif kind == "node":
                argv = ["node", os.path.join(HERE, "node_ws_server.js"),
                        str(self.port), str(trigger_port)]
            else:
                raise ValueError(kind)
            self.processes.append(subprocess.Popen(argv, cwd=cwd, env=env,
                                                   stdin=subprocess.DEVNULL,
                                                   stdout=log, stderr=log))
        self.pids = [p.pid for p in self.processes]
        self.pid = self.pids[0]
        for process, trigger_port in zip(self.processes, self.trigger_ports):
            wait_port(trigger_port, process)
        wait_port(self.port, self.processes[0])
        if self.redis is not None:
            wait_redis_connected(self.port, self.processes)
        self.trigger = socket.create_connection(("127.0.0.1", self.trigger_port), timeout=120)
        self.trigger_file = self.trigger.makefile("rb")

    def rss(self) -> int:
        return sum(rss_kb(pid) for pid in self.pids)

    def cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids)

    def redis_cpu(self) -> float:
        return cpu_seconds(self.redis.process.pid) if self.redis is not None else 0.0

    def command(self, line: str) -> None:
        self.trigger.sendall(line.encode("ascii") + b"\n")

    def answer(self) -> str:
        return self.trigger_file.readline().decode("ascii").strip()

    def stop(self) -> None:
        try:
            self.trigger.close()
        except OSError:
            pass
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.redis is not None:
            self.redis.stop()


class _Redis:
    def __init__(self, process, port):
        self.process, self.port = process, port

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_redis(log_dir: str) -> _Redis:
    """A fresh redis-server (no persistence) on a free loopback port, for one session."""
    import shutil
    executable = shutil.which("redis-server")
    if executable is None:
        raise RuntimeError("redis-server is not installed (make test installs it)")
    port = free_port()
    process = subprocess.Popen(
        [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", log_dir, "--daemonize", "no", "--loglevel", "warning"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, process)
    return _Redis(process, port)


def wait_redis_connected(port: int, processes, timeout: float = 20.0) -> None:
    """Until /websocket/status answers Redis connected, 20 times in a row (the kernel spreads
    the requests over the processes by source port, so both have answered)."""
    deadline = time.monotonic() + timeout
    streak = 0
    while streak < 20:
        if time.monotonic() > deadline:
            raise RuntimeError("the gateway processes did not connect to Redis")
        if any(p.poll() is not None for p in processes):
            raise RuntimeError("a gateway process exited")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                sock.sendall(b"GET /websocket/status HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                body = b""
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    body += chunk
            state = json.loads(body.partition(b"\r\n\r\n")[2])["redis"]["state"]
        except (OSError, ValueError, KeyError):
            state = None
        if state == "connected":
            streak += 1
        else:
            streak = 0
            time.sleep(0.1)


def build_client(results_dir: str) -> str:
    """Compile benchmarks/loadclient.c (once; again when the source changes)."""
    source = os.path.join(HERE, "loadclient.c")
    binary = os.path.join(results_dir, ".build", "loadclient")
    if not os.path.exists(binary) or os.path.getmtime(binary) < os.path.getmtime(source):
        os.makedirs(os.path.dirname(binary), exist_ok=True)
        compiler = os.environ.get("CC", "cc")
        try:
            subprocess.run([compiler, "-O2", "-o", binary, source], check=True)
        except (OSError, subprocess.CalledProcessError) as e:
            raise SystemExit(f"cannot build the load client with {compiler!r} ({e}); "
                             "install a C compiler (apt-get install build-essential) or set CC")
    return binary


class Clients:
    """The load-client processes (benchmarks/loadclient.c), one per core."""

    def __init__(self, count: int, binary: str):
        self.procs = [subprocess.Popen([binary], cwd=ROOT, stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True, bufsize=1)
                      for _ in range(count)]

    def send_all(self, commands) -> None:
        if isinstance(commands, str):
            commands = [commands] * len(self.procs)
        for proc, command in zip(self.procs, commands):
            proc.stdin.write(command + "\n")
            proc.stdin.flush()

    def read_all(self, word: str) -> list:
        """The answer starting with ``word`` of every client, as a list of words."""
        answers = []
        for proc in self.procs:
            while True:
                line = proc.stdout.readline()
                if not line:
                    raise RuntimeError("a load client exited")
                words = line.split()
                if words and words[0] == word:
                    answers.append(words[1:])
                    break
        return answers

    def cpu(self) -> float:
        return sum(cpu_seconds(p.pid) for p in self.procs)

    def stop(self) -> None:
        for proc in self.procs:
            try:
                proc.stdin.write("quit\n")
                proc.stdin.flush()
            except (OSError, ValueError):
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def start_profile(pid: int, path: str):
    """py-spy (pip install py-spy) sampling the server, collapsed stacks to ``path``."""
    spy = subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--format", "raw",
                            "--rate", "250", "--nonblocking", "--output", path],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # py-spy attaches
    return spy


def stop_profile(spy) -> None:
    import signal
    spy.send_signal(signal.SIGINT)
    try:
        spy.wait(timeout=20)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait()


# -- one session ----------------------------------------------------------------------------

def split(n: int, parts: int) -> list:
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def fan_out(server: Server, clients: Clients, shape: str, events: int, repeat: int,
            timeout: float) -> dict:
    """``repeat`` trigger commands of ``events`` events each; deliveries/s until the last byte."""
    clients.send_all(f"count {events * repeat * FRAME_LEN} {timeout}")
    clients.read_all("armed")
    cpu_server, cpu_clients = server.cpu(), clients.cpu()
    t0 = time.monotonic()
    for _ in range(repeat):
        server.command(f"{shape} {events} {SIZE}")
        server.answer()  # published (not yet delivered): the next command is a new callback
    counted = clients.read_all("counted")
    t_end = time.monotonic()
    complete = all(c[2] != "none" for c in counted)
    got = sum(int(c[0]) for c in counted) // FRAME_LEN
    t_done = max(float(c[2]) for c in counted) if complete else t_end
    elapsed = max(t_done - t0, 1e-6)
    return {
        "deliveries": got,
        "complete": complete,
        "seconds": round(elapsed, 4),
        "rate": got / elapsed,
        "server_cpu": (server.cpu() - cpu_server) / (t_end - t0),
        "client_cpu": (clients.cpu() - cpu_clients) / (t_end - t0),
    }


def latency(server: Server, clients: Clients, rate: float, seconds: float) -> dict:
    count = int(rate * seconds)
    sample = frame_text(bench_message(0, SIZE, "{:.6f}".format(time.monotonic())).encode())
    sent_offset = sample.index(b'"sent":"') + len(b'"sent":"')
    frame_len = len(sample)
    clients.send_all(f"latency {frame_len} {sent_offset} {count} {seconds + 15}")
    clients.read_all("armed")
    start = time.monotonic()
    for i in range(count):
        due = start + i / rate
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        server.command(f"stamp {SIZE} {time.monotonic():.6f}")
    answers = clients.read_all("latencies")
    for _ in range(count):
        server.answer()
    samples = sorted(int(us) for a in answers for us in a[1:])
    missing = sum(int(a[0]) for a in answers)
    if not samples:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None, "missing": missing}
    return {
        "p50_ms": samples[len(samples) // 2] / 1000,
        "p99_ms": samples[min(len(samples) - 1, int(len(samples) * 0.99))] / 1000,
        "max_ms": samples[-1] / 1000,
        "samples": len(samples),
        "missing": missing,
    }


def token_file(log_dir: str, first_user: int, count: int) -> str:
    """A file of JWTs (HS256, ``sub`` bench-<i>, one hour), one a line, for one client."""
    import jwt
    path = os.path.join(log_dir, f"tokens-{first_user}.txt")
    exp = int(time.time()) + 3600
    with open(path, "w") as f:
        for i in range(first_user, first_user + count):
            f.write(jwt.encode({"sub": f"bench-{i}", "exp": exp}, SECRET, algorithm="HS256"))
            f.write("\n")
    return path


def session(kind: str, n: int, couch, opts, log_dir: str, first_user: int) -> dict:
    server = Server(kind, couch, log_dir, opts.gateway_root)
    clients = Clients(opts.client_procs, opts.client_binary)
    result = {"server": kind, "n": n}
    try:
        time.sleep(0.5)
        rss0 = server.rss()
        cpu0 = server.cpu()
        others0 = clients.cpu(), server.redis_cpu()
        parts = split(n, len(clients.procs))
        starts = [first_user + sum(parts[:i]) for i in range(len(parts))]
        spy = None
        if opts.profile and kind != "node":
            spy = start_profile(server.pid, os.path.join(log_dir, f"profile-{kind}-setup-{n}.txt"))
            cpu0 = server.cpu()
        try:
            clients.send_all([f"connect {server.port} {part} {opts.concurrency} "
                              f"{token_file(log_dir, start, part) if kind.startswith('gateway') else '-'}"
                              for part, start in zip(parts, starts)])
            connected = clients.read_all("connected")
        finally:
            if spy is not None:
                stop_profile(spy)
        ok = sum(int(c[0]) for c in connected)
        failed = sum(int(c[1]) for c in connected)
        setup_seconds = max(float(c[3]) for c in connected) - min(float(c[2]) for c in connected)
        result.update({
            "connected": ok, "failed": failed,
            "setup_rate": ok / setup_seconds if setup_seconds > 0 else None,
            "setup_server_cpu": (server.cpu() - cpu0) / setup_seconds,
            # cores the load clients and the redis-server took while connections were set
            # up: what the machine's ceiling for two processes leaves them (markdown)
            "setup_client_cpu": (clients.cpu() - others0[0]) / setup_seconds,
            "setup_redis_cpu": (server.redis_cpu() - others0[1]) / setup_seconds,
        })
        if ok == 0:
            return result
        time.sleep(opts.settle)
        result["idle_kb_per_conn"] = (server.rss() - rss0) / ok
        plan = {
            # many events in one callback: bursts of BURST_EVENTS, repeated (one callback each)
            "burst": (BURST_EVENTS, max(1, opts.deliveries // (BURST_EVENTS * ok))),
            # one event per reactor turn: one command, events chained with callLater(0)
            "spread": (max(5, opts.spread_deliveries // ok), 1),
        }
        for shape, (events, repeat) in plan.items():
            spy = None
            if opts.profile and kind != "node":
                spy = start_profile(server.pid, os.path.join(
                    log_dir, f"profile-{kind}-{shape}-{n}.txt"))
            try:
                runs = [fan_out(server, clients, shape, events, repeat, opts.fanout_timeout)
                        for _ in range(opts.repeats + 1)][1:]  # the first run warms up
            finally:
                if spy is not None:
                    stop_profile(spy)
            best = max(runs, key=lambda r: r["rate"])
            result[shape] = {**best, "events": events, "repeat": repeat,
                             "rates": [round(r["rate"]) for r in runs]}
        if n == opts.latency_n:
            result["latency"] = latency(server, clients, opts.latency_rate, opts.latency_seconds)
    finally:
        clients.stop()
        server.stop()
    return result


# -- CouchDB -> client -------------------------------------------------------------------------

def ws_connect(port: int, token: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall((f"GET /ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError("closed during handshake")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    if b" 101 " not in head.split(b"\r\n")[0]:
        raise RuntimeError(head[:80])
    return sock, rest


def read_frames(sock, buf):
    """Yield text payloads from a server's unmasked frames, forever (bounded by socket timeout)."""
    while True:
        while True:
            if len(buf) >= 2:
                length, start = buf[1] & 0x7F, 2
                if length == 126 and len(buf) >= 4:
                    length, start = int.from_bytes(buf[2:4], "big"), 4
                elif length == 127 and len(buf) >= 10:
                    length, start = int.from_bytes(buf[2:10], "big"), 10
                if length < 126 or start > 2:
                    if len(buf) >= start + length:
                        payload, buf = buf[start:start + length], buf[start + length:]
                        yield payload
                        continue
            break
        chunk = sock.recv(65536)
        if not chunk:
            return
        buf += chunk


def couch_latency(couch: PouchDBServer, log_dir: str, updates: int) -> dict:
    import jwt
    name = "bench-couch"
    couch.create_user(name, "bench-password-1", roles=["member"])
    server = Server("gateway", couch, log_dir)
    try:
        token = jwt.encode({"sub": name, "exp": int(time.time()) + 3600}, SECRET,
                           algorithm="HS256")
        sock, rest = ws_connect(server.port, token)
        frames = read_frames(sock, rest)
        first = json.loads(next(frames))
        assert first["type"] == "connected", first
        path = "/_users/org.couchdb.user:" + name
        samples = []
        time.sleep(1.0)  # let the _changes feed come up
        for i in range(updates):
            status, body = couch.request("GET", path)
            doc = json.loads(body)
            doc["bench"] = i
            t0 = time.monotonic()
            status, body = couch.request("PUT", path, json.dumps(doc))
            if status not in (201, 202):
                raise RuntimeError(f"PUT {status} {body[:100]!r}")
            for payload in frames:
                message = json.loads(payload)
                if message.get("type") == "user-change" and \
                        (message.get("doc") or {}).get("bench") == i:
                    samples.append((time.monotonic() - t0) * 1000)
                    break
        sock.close()
    finally:
        server.stop()
    samples.sort()
    return {"updates": updates, "received": len(samples),
            "p50_ms": samples[len(samples) // 2] if samples else None,
            "p99_ms": samples[min(len(samples) - 1, int(len(samples) * 0.99))] if samples else None,
            "max_ms": samples[-1] if samples else None}


# -- report -------------------------------------------------------------------------------------

def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarise(sessions: list, ns, servers) -> dict:
    summary = {}
    for n in ns:
        for kind in servers:
            mine = [s for s in sessions if s["n"] == n and s["server"] == kind
                    and "error" not in s]
            if not mine:
                continue
            row = {
                "setup_rate": median(s.get("setup_rate") for s in mine),
                **{key: median(s.get(key) for s in mine) for key in (
                    "setup_server_cpu", "setup_client_cpu", "setup_redis_cpu")},
                "idle_kb_per_conn": median(s.get("idle_kb_per_conn") for s in mine),
                "burst_rate": median(s.get("burst", {}).get("rate") for s in mine),
                "burst_server_cpu": median(s.get("burst", {}).get("server_cpu") for s in mine),
                "burst_client_cpu": median(s.get("burst", {}).get("client_cpu") for s in mine),
                "spread_rate": median(s.get("spread", {}).get("rate") for s in mine),
                "spread_server_cpu": median(s.get("spread", {}).get("server_cpu") for s in mine),
                "spread_client_cpu": median(s.get("spread", {}).get("client_cpu") for s in mine),
                "connected": min(s.get("connected", 0) for s in mine),
                "complete": all(s.get("burst", {}).get("complete") and
                                s.get("spread", {}).get("complete") for s in mine),
            }
            lat = [s["latency"] for s in mine if "latency" in s]
            if lat:
                row["p50_ms"] = median(one["p50_ms"] for one in lat)
                row["p99_ms"] = median(one["p99_ms"] for one in lat)
                row["max_ms"] = median(one["max_ms"] for one in lat)
            summary[f"{n}/{kind}"] = row
    return summary


def fmt_rate(value):
    if value is None:
        return "–"
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e3:
        return f"{value / 1e3:.1f}k"
    return f"{value:.0f}"


def ratio(a, b):
    if a is None or not b:
        return "–"
    return f"{a / b:.2f}×"


#: a CPU-bound loop in Python: how fast this machine runs two processes at once
_SPIN = "d = {}\nfor i in range(3_000_000):\n    d[i & 1023] = i * 3 + len(d)\n"


def pair_speed(rounds: int = 3) -> float:
    """
    The speed of each of two CPU-bound processes run at once, as a share of one run alone
    (the median of ``rounds`` of each, interleaved): 1.0 when the cores are independent.
    Shared cores, their caches and the host's other guests make it less.
    """
    def spin(count):
        started = time.monotonic()
        procs = [subprocess.Popen([sys.executable, "-c", _SPIN]) for _ in range(count)]
        for proc in procs:
            proc.wait()
        return time.monotonic() - started

    alone, paired = [], []
    for _ in range(rounds):
        alone.append(spin(1))
        paired.append(spin(2))
    return statistics.median(alone) / statistics.median(paired)


def setup_ceiling(one: dict, two: dict) -> str:
    """
    What connection setup with two processes could reach on this machine, as a ratio of
    ``one``'s rate: all its cores, less what the load clients and the redis-server took per
    connection in ``two``'s sessions, spent at ``one``'s CPU per connection.
    """
    try:
        per_conn = (one["setup_server_cpu"] / one["setup_rate"]
                    + (two["setup_client_cpu"] + two["setup_redis_cpu"]) / two["setup_rate"])
        return ratio(os.cpu_count() / per_conn, one["setup_rate"])
    except (KeyError, TypeError, ZeroDivisionError):
        return "–"


def markdown(summary: dict, couch: dict, ns, servers, meta: dict) -> str:
    lines = [f"Run {meta['date']} on {meta['machine']}; {meta['note']}", ""]
    lines.append("| N | server | setup conn/s | idle KB/conn | burst deliveries/s (srv/cli CPU) "
                 "| spread deliveries/s (srv/cli CPU) | p50 / p99 / max ms |")
    lines.append("|---|---|---|---|---|---|---|")
    for n in ns:
        for kind in servers:
            row = summary.get(f"{n}/{kind}")
            if row is None:
                continue
            lat = "–"
            if row.get("p50_ms") is not None:
                lat = f"{row['p50_ms']:.1f} / {row['p99_ms']:.1f} / {row['max_ms']:.1f}"
            kb = row["idle_kb_per_conn"]
            lines.append(
                f"| {n:,} | {kind} | {fmt_rate(row['setup_rate'])} | "
                f"{'–' if kb is None else f'{kb:.1f}'} | "
                f"{fmt_rate(row['burst_rate'])} ({_pct(row['burst_server_cpu'])}/"
                f"{_pct(row['burst_client_cpu'])}) | "
                f"{fmt_rate(row['spread_rate'])} ({_pct(row['spread_server_cpu'])}/"
                f"{_pct(row['spread_client_cpu'])}) | {lat} |"
                + ("" if row["complete"] else " ⚠ incomplete"))
    lines += ["", "Gateway as a ratio of the baselines measured in the same run "
              "(target in brackets):", "",
              "| N | setup vs node (≥ 1.0) | idle KB vs node (≤ 1.0) | burst vs floor (≥ 0.5) "
              "| spread vs node (≥ 1.0) | p99 vs floor (≤ 1.1) |",
              "|---|---|---|---|---|---|"]
    for n in ns:
        g, f, nd = (summary.get(f"{n}/{k}") for k in ("gateway", "floor", "node"))
        if g is None:
            continue
        f = f or {}
        nd = nd or {}
        lines.append(
            f"| {n:,} | {ratio(g['setup_rate'], nd.get('setup_rate'))} | "
            f"{ratio(g['idle_kb_per_conn'], nd.get('idle_kb_per_conn'))} | "
            f"{ratio(g['burst_rate'], f.get('burst_rate'))} | "
            f"{ratio(g['spread_rate'], nd.get('spread_rate'))} | "
            f"{ratio(g.get('p99_ms'), f.get('p99_ms')) if g.get('p99_ms') is not None else '–'} |")
    ceiling_told = False
    for base, label in (("gateway", "one process (`gateway`, no Redis)"),
                        ("gateway1r", "one process with Redis (`gateway1r`)")):
        pairs = [(n, summary.get(f"{n}/{base}"), summary.get(f"{n}/gateway2")) for n in ns]
        pairs = [(n, one, two) for n, one, two in pairs if one and two]
        if not pairs:
            continue
        lines += ["", "Two gateway processes on one `reuseport:` port (with Redis) as a ratio "
                  f"of {label} in the same run (target ≥ 1.7):", "",
                  "| N | setup | setup: the machine's ceiling | burst | spread | idle KB/conn |",
                  "|---|---|---|---|---|---|"]
        for n, one, two in pairs:
            lines.append(
                f"| {n:,} | {ratio(two['setup_rate'], one['setup_rate'])} | "
                f"{setup_ceiling(one, two)} | "
                f"{ratio(two['burst_rate'], one['burst_rate'])} | "
                f"{ratio(two['spread_rate'], one['spread_rate'])} | "
                f"{ratio(two['idle_kb_per_conn'], one['idle_kb_per_conn'])} |")
        ceiling_told = True
    if ceiling_told:
        lines += ["", "The machine's ceiling: the rate two processes would reach if each "
                  f"spent on a connection what one process alone spends, and the "
                  f"{os.cpu_count()} cores had nothing else to run but the load clients and "
                  "the redis-server (their CPU per connection in the two-process sessions), "
                  "as a ratio of the one process's rate."]
    if meta.get("pair_speed"):
        lines += ["", "Two CPU-bound processes at once (a Python loop, in this sitting) "
                  f"each ran at {meta['pair_speed']:.2f} of their speed alone: the "
                  "ceiling above assumes 1.00.", ""]
    if couch.get("error"):
        lines += ["", f"CouchDB write → client receipt: failed ({couch['error']})"]
    elif couch:
        lines += ["", f"CouchDB write → client receipt (gateway, `_users` doc PUT → "
                      f"`user-change`, {couch['received']}/{couch['updates']} received): "
                      f"p50 {couch['p50_ms']:.1f} ms, p99 {couch['p99_ms']:.1f} ms, "
                      f"max {couch['max_ms']:.1f} ms" if couch.get("p50_ms") is not None
                  else "", ""]
    lines += [f"burst: {BURST_EVENTS} events published in one reactor callback (repeated); "
              "spread: one event per reactor turn (callLater(0) / setImmediate chained); "
              "events are "
              f"{SIZE}-byte JSON text messages ({FRAME_LEN}-byte frames). CPU: share of one core "
              "used by the server / by all load clients during the fan-out. Latency: events "
              f"at {meta['latency_rate']:.0f}/s to N = {meta['latency_n']:,} clients, "
              "driver send → client receipt. gateway2: two gateway processes on one "
              "`reuseport:` port sharing a redis-server (events published on the first reach "
              "the second through Redis, whose reader takes them in batches: its spread is "
              "not one event per turn at the connections); CPU and memory are the sum of "
              "both.", ""]
    return "\n".join(lines)


#: how the README names the servers
README_NAMES = {"gateway": "realtime", "gateway2": "realtime, 2 processes (reuseport, Redis)",
                "gateway1r": "realtime, 1 process with Redis",
                "floor": "raw Twisted floor", "node": "Node ``ws``"}


def readme_table(summary: dict, ns, servers) -> str:
    """The README's results table (reStructuredText list-table), from a run's summary."""
    lines = [".. list-table::", "   :header-rows: 1", "",
             "   * - N", "     - server", "     - setup conn/s", "     - idle KB/conn",
             "     - burst deliveries/s", "     - one-event-per-turn deliveries/s",
             "     - p50 / p99 / max ms"]
    for n in ns:
        for kind in servers:
            row = summary.get(f"{n}/{kind}")
            if row is None:
                continue
            kb = row["idle_kb_per_conn"]
            lat = ""
            if row.get("p50_ms") is not None:
                lat = f" {row['p50_ms']:.1f} / {row['p99_ms']:.1f} / {row['max_ms']:.1f}"
            spread = row["spread_rate"]
            spread = "" if spread is None else f"{spread / 1e3:.0f}k"
            lines += [f"   * - {n:,}", f"     - {README_NAMES.get(kind, kind)}",
                      f"     - {fmt_rate(row['setup_rate'])}",
                      f"     - {'' if kb is None else f'{kb:.1f}'}",
                      f"     - {fmt_rate(row['burst_rate'])}",
                      f"     - {spread}",
                      f"     -{lat}"]
    return "\n".join(lines) + "\n"


def _pct(value):
    return "–" if value is None else f"{value * 100:.0f}%"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small N, one round (< 2 min)")
    parser.add_argument("--n", type=lambda t: [int(x) for x in t.split(",")],
                        help="comma-separated connection counts (default 1000,5000,10000)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 2; quick 1)")
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--client-procs", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--profile", action="store_true",
                        help="record py-spy profiles of the Python servers during fan-out")
    parser.add_argument("--gateway-root", help="run the gateway from another checkout "
                        "(with realtime/benchhook.py), e.g. to compare before and after a change")
    parser.add_argument("--no-couch", action="store_true", help="skip the CouchDB latency")
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.n = opts.n or [1000, 2000]
        opts.rounds = opts.rounds or 1
        opts.deliveries, opts.spread_deliveries = 500_000, 200_000
        opts.repeats, opts.latency_seconds, opts.couch_updates = 1, 4, 20
    else:
        opts.n = opts.n or [1000, 5000, 10000]
        opts.rounds = opts.rounds or 2
        opts.deliveries, opts.spread_deliveries = 600_000, 300_000
        opts.repeats, opts.latency_seconds, opts.couch_updates = 1, 8, 50
    opts.concurrency = 100
    opts.settle = 1.5
    opts.fanout_timeout = 60
    opts.latency_n = 1000
    opts.latency_rate = 50.0
    servers = [s for s in opts.servers.split(",") if s]

    hard = raise_fd_limit()
    if hard < max(opts.n) + 1000:
        print(f"warning: fd limit {hard} is low for N = {max(opts.n)}", file=sys.stderr)
    results_dir = os.path.join(HERE, "results")
    os.makedirs(results_dir, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    log_dir = os.path.join(results_dir, f"{stamp}-logs")
    os.makedirs(log_dir, exist_ok=True)

    opts.client_binary = build_client(results_dir)
    started = time.monotonic()
    couch = PouchDBServer().start()
    sessions = []
    couch_result = {}
    try:
        first_user = 0
        for n in opts.n:
            for round_ in range(opts.rounds):
                for kind in servers:
                    t = time.monotonic()
                    try:
                        result = session(kind, n, couch, opts, log_dir, first_user)
                    except Exception as e:  # one failed session must not lose the run
                        result = {"server": kind, "n": n, "error": repr(e)[:300]}
                        print(f"  N={n} {kind}: FAILED {e!r}", file=sys.stderr, flush=True)
                    result["round"] = round_
                    first_user += n
                    sessions.append(result)
                    print(f"  N={n} round {round_ + 1} {kind}: setup {fmt_rate(result.get('setup_rate'))}/s, "
                          f"burst {fmt_rate(result.get('burst', {}).get('rate'))}/s, "
                          f"spread {fmt_rate(result.get('spread', {}).get('rate'))}/s "
                          f"({time.monotonic() - t:.0f} s)", file=sys.stderr, flush=True)
        if "gateway" in servers and not opts.no_couch:
            try:
                couch_result = couch_latency(couch, log_dir, opts.couch_updates)
            except Exception as e:
                couch_result = {"error": repr(e)[:300]}
                print(f"  CouchDB latency: FAILED {e!r}", file=sys.stderr, flush=True)
    finally:
        couch.stop()

    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
                   f"{platform.python_version()}, "
                   + subprocess.run(["node", "--version"], capture_output=True,
                                    text=True).stdout.strip(),
        "note": f"{opts.rounds} interleaved round(s), medians; {opts.client_procs} load-client "
                f"processes on the same machine; total {time.monotonic() - started:.0f} s",
        "latency_rate": opts.latency_rate, "latency_n": opts.latency_n,
        "quick": opts.quick,
        "pair_speed": pair_speed() if "gateway2" in servers else None,
    }
    summary = summarise(sessions, opts.n, servers)
    table = markdown(summary, couch_result, opts.n, servers, meta)
    with open(os.path.join(results_dir, f"{stamp}.json"), "w") as f:
        json.dump({"meta": meta, "summary": summary, "sessions": sessions,
                   "couch": couch_result}, f, indent=1)
    with open(os.path.join(results_dir, f"{stamp}.md"), "w") as f:
        f.write(table)
    with open(os.path.join(results_dir, f"{stamp}-readme.rst"), "w") as f:
        f.write(readme_table(summary, opts.n, servers))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
