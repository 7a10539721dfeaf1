"""
Resume figure: one client resuming after N missed changes of a database (1 % of them its
own documents), against pouchdb-server's own raw ``_changes`` read of the same range
(``include_docs``, batches of 1,000: what the replay reads) in the same run.

    python -m benchmarks.resume_bench            # N = 10,000 and 100,000
    python -m benchmarks.resume_bench --quick    # N = 2,000 and 10,000

Real processes on loopback: pouchdb-server (in memory) and ``python -m realtime`` with a
rule file (``users = ["owner"]``).  The replay time runs from sending ``resume`` to
receiving ``resumed``; the ratio is raw read time / replay time (1.0: the replay costs
no more than reading the changes).  Not measured here: live delivery p99 to other clients
while replays run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import jwt  # noqa: E402

from realtime.dev.embedded import PouchDBServer, free_port, stop_process  # noqa: E402

SECRET = "resume-benchmark-secret-0123456789"


def seed(couch: PouchDBServer, db: str, n: int, user: str) -> None:
    couch.request("PUT", "/" + db)
    for start in range(0, n, 1000):
        docs = [{"_id": f"d{i:07d}", "owner": user if i % 100 == 0 else f"u{i % 977}",
                 "title": f"document {i}", "body": "x" * 200}
                for i in range(start, min(n, start + 1000))]
        status, body = couch.request("POST", f"/{db}/_bulk_docs", json.dumps({"docs": docs}))
        assert status == 201, body[:200]


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


def replay(port: int, db: str, user: str) -> tuple:
    """(seconds from resume to resumed, messages replayed), with a plain socket client."""
    import base64
    import socket
    token = jwt.encode({"sub": user, "exp": int(time.time()) + 3600}, SECRET,
                       algorithm="HS256")
    sock = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        buffer += sock.recv(65536)
    buffer = buffer.split(b"\r\n\r\n", 1)[1]

    def frames():
        nonlocal buffer
        while True:
            while len(buffer) < 2 or len(buffer) < _frame_length(buffer):
                chunk = sock.recv(1 << 20)
                if not chunk:
                    return
                buffer += chunk
            length = _frame_length(buffer)
            frame, buffer = buffer[:length], buffer[length:]
            yield _payload(frame)

    def send(message):
        payload = json.dumps(message).encode()
        mask = os.urandom(4)
        header = bytes([0x81, 0x80 | 126]) + struct.pack("!H", len(payload)) \
            if len(payload) > 125 else bytes([0x81, 0x80 | len(payload)])
        sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    received = frames()
    for payload in received:
        if json.loads(payload)["type"] == "connected":
            break
    started = time.perf_counter()
    send({"type": "resume", "since": {db: 0}})
    count = 0
    for payload in received:
        message = json.loads(payload)
        if message["type"] == "resumed":
            elapsed = time.perf_counter() - started
            sock.close()
            assert message["recovered"][db] is True, message
            return elapsed, count
        if message.get("replay"):
            count += 1
    raise RuntimeError("the connection ended before resumed")


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


def start_gateway(couch: PouchDBServer, db: str, folder: str):
    rules = os.path.join(folder, "rules.toml")
    with open(rules, "w") as f:
        f.write(f'[databases.{db}]\nusers = ["owner"]\n')
    port = free_port()
    env = dict(os.environ, REALTIME_LISTEN=f"tcp:{port}:interface=127.0.0.1",
               REALTIME_EMBEDDED_COUCHDB="no", COUCHDB_URL=couch.url,
               COUCHDB_ADMIN_AUTH=couch.admin_auth, JWT_SECRET=SECRET,
               REALTIME_CONFIG=rules, REALTIME_RESUME_MAX_CHANGES="10000000")
    log = open(os.path.join(folder, "gateway.log"), "wb")
    process = subprocess.Popen([sys.executable, "-m", "realtime"], cwd=ROOT, env=env,
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    sizes = (2_000, 10_000) if args.quick else (10_000, 100_000)
    folder = tempfile.mkdtemp(prefix="realtime-resume-bench-")
    couch = PouchDBServer().start()
    rows = []
    try:
        for n in sizes:
            db = f"bench{n}"
            seed(couch, db, n, "ann")
            process, port = start_gateway(couch, db, folder)
            try:
                raws, replays = [], []
                for _ in range(args.rounds):
                    raws.append(raw_read(couch, db))
                    seconds, count = replay(port, db, "ann")
                    assert count == (n + 99) // 100, count
                    replays.append(seconds)
                raw, rep = statistics.median(raws), statistics.median(replays)
                rows.append((n, raw, rep, raw / rep))
            finally:
                stop_process(process)
    finally:
        couch.stop()
    print("| missed changes | raw _changes read (s) | resume replay (s) | raw / replay |")
    print("|---:|---:|---:|---:|")
    for n, raw, rep, ratio in rows:
        print(f"| {n:,} | {raw:.2f} | {rep:.2f} | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
