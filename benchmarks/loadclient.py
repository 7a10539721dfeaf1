"""
A light WebSocket load client: one process holds many connections (plain asyncio protocols).

It does the opening handshake by hand, reads the first frame (``connected``) in full, and
from then on counts bytes without parsing frames: every benchmark event has the same frame
length, so bytes / frame length = frames.  In latency mode it splits the stream into frames
of that known length and reads the ``sent`` field of each.

It is driven by ``benchmarks/run.py`` through stdin/stdout, one JSON object a line:

  {"op":"connect","port":P,"n":N,"first_user":I,"secret":S|null,"concurrency":C}
      -> {"op":"connected","ok":k,"failed":f,"t0":…,"t1":…}
  {"op":"count","bytes_per_conn":B,"timeout":T}
      -> {"op":"armed"} then {"op":"counted","got":…,"target":…,"t_done":…}
  {"op":"latency","frame_len":F,"sent_offset":O,"count":K,"timeout":T}
      -> {"op":"armed"} then {"op":"latencies","us":[…],"missing":m}
  {"op":"quit"}

Times are ``time.monotonic()`` (CLOCK_MONOTONIC: one clock for every process of the machine).
"""

import asyncio
import json
import os
import resource
import sys
import threading
import time

STREAM, HANDSHAKE, FIRST_FRAME = 2, 0, 1


def _raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _reply(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class Conn(asyncio.Protocol):
    __slots__ = ("client", "request", "transport", "state", "buf", "ready", "frames")

    def __init__(self, client, request):
        self.client = client
        self.request = request
        self.transport = None
        self.state = HANDSHAKE
        self.buf = b""
        self.ready = None  # future: handshake and first frame done
        self.frames = 0

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data):
        if self.state == STREAM:
            self.client.on_bytes(self, data)
            return
        self.buf += data
        if self.state == HANDSHAKE:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if b" 101 " not in self.buf[:end].split(b"\r\n", 1)[0]:
                self._fail("handshake refused: %r" % self.buf[:60])
                return
            self.buf = self.buf[end + 4:]
            self.state = FIRST_FRAME
        if len(self.buf) < 2:
            return
        length = self.buf[1] & 0x7F
        start = 2
        if length == 126:
            if len(self.buf) < 4:
                return
            length, start = int.from_bytes(self.buf[2:4], "big"), 4
        elif length == 127:
            if len(self.buf) < 10:
                return
            length, start = int.from_bytes(self.buf[2:10], "big"), 10
        if len(self.buf) < start + length:
            return
        first = self.buf[start:start + length]
        rest = self.buf[start + length:]
        self.buf = b""
        self.state = STREAM
        if b'"connected"' not in first:
            self._fail("first message was not connected: %r" % first[:80])
            return
        if not self.ready.done():
            self.ready.set_result(True)
        if rest:
            self.client.on_bytes(self, rest)

    def _fail(self, why):
        if self.ready is not None and not self.ready.done():
            self.ready.set_exception(ConnectionError(why))
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc):
        if self.ready is not None and not self.ready.done():
            self.ready.set_exception(ConnectionError("closed before connected"))
        self.client.lost += 1


class Client:
    def __init__(self, loop):
        self.loop = loop
        self.conns = []
        self.lost = 0
        self.total = 0
        self.target = 0
        self.count_timer = None
        self.mode = None
        self.latency = None

    # -- commands -----------------------------------------------------------------------

    async def connect(self, port, n, first_user, secret, concurrency, path="/ws"):
        tokens = [None] * n
        if secret:
            import jwt
            exp = int(time.time()) + 3600
            tokens = [jwt.encode({"sub": f"bench-{first_user + i}", "exp": exp}, secret,
                                 algorithm="HS256") for i in range(n)]
        semaphore = asyncio.Semaphore(concurrency)
        failed = 0
        first_error = None

        async def one(i):
            nonlocal failed, first_error
            target = path + (f"?token={tokens[i]}" if tokens[i] else "")
            request = (f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                       "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                       "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                       "Sec-WebSocket-Version: 13\r\n\r\n").encode("ascii")
            async with semaphore:
                conn = Conn(self, request)
                conn.ready = self.loop.create_future()
                try:
                    await self.loop.create_connection(lambda: conn, "127.0.0.1", port)
                    await asyncio.wait_for(conn.ready, 30)
                    self.conns.append(conn)
                except (OSError, ConnectionError, asyncio.TimeoutError) as e:
                    failed += 1
                    first_error = first_error or repr(e)[:200]
                    if conn.transport is not None:
                        conn.transport.abort()

        t0 = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(n)))
        t1 = time.monotonic()
        _reply({"op": "connected", "ok": len(self.conns), "failed": failed, "t0": t0,
                "t1": t1, "error": first_error})

    def count(self, bytes_per_conn, timeout):
        self.mode = "count"
        self.total = 0
        self.target = bytes_per_conn * len(self.conns)
        self.count_timer = self.loop.call_later(timeout, self._counted, None)
        _reply({"op": "armed"})

    def _counted(self, t_done):
        if self.mode != "count":
            return
        self.mode = None
        if self.count_timer is not None:
            self.count_timer.cancel()
        self.count_timer = None
        _reply({"op": "counted", "got": self.total, "target": self.target, "t_done": t_done})

    def arm_latency(self, frame_len, sent_offset, count, timeout):
        self.mode = "latency"
        self.latency = {"frame_len": frame_len, "offset": sent_offset, "count": count,
                        "us": [], "bufs": {}, "done": 0}
        for conn in self.conns:
            conn.frames = 0
        self.count_timer = self.loop.call_later(timeout, self._latency_done)
        _reply({"op": "armed"})

    def _latency_done(self):
        if self.mode != "latency":
            return
        self.mode = None
        if self.count_timer is not None:
            self.count_timer.cancel()
            self.count_timer = None
        state = self.latency
        missing = sum(max(0, state["count"] - c.frames) for c in self.conns)
        _reply({"op": "latencies", "us": state["us"], "missing": missing})
        self.latency = None

    # -- data ---------------------------------------------------------------------------

    def on_bytes(self, conn, data):
        mode = self.mode
        if mode == "count":
            self.total += len(data)
            if self.total >= self.target:
                self._counted(time.monotonic())
        elif mode == "latency":
            now = time.monotonic()
            state = self.latency
            size = state["frame_len"]
            offset = state["offset"]
            buf = state["bufs"].get(conn, b"") + data
            us = state["us"]
            while len(buf) >= size:
                frame, buf = buf[:size], buf[size:]
                end = frame.index(b'"', offset)
                us.append(int((now - float(frame[offset:end])) * 1e6))
                conn.frames += 1
                if conn.frames == state["count"]:
                    state["done"] += 1
            state["bufs"][conn] = buf
            if state["done"] >= len(self.conns):
                self._latency_done()

    def quit(self):
        for conn in self.conns:
            if conn.transport is not None:
                conn.transport.abort()
        self.loop.call_later(0.2, self.loop.stop)


def main():
    _raise_fd_limit()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    client = Client(loop)

    def handle(line):
        command = json.loads(line)
        op = command.pop("op")
        if op == "connect":
            loop.create_task(client.connect(**command))
        elif op == "count":
            client.count(**command)
        elif op == "latency":
            client.arm_latency(**command)
        elif op == "quit":
            client.quit()

    def read_stdin():
        for line in sys.stdin:
            if line.strip():
                loop.call_soon_threadsafe(handle, line)
        loop.call_soon_threadsafe(client.quit)

    threading.Thread(target=read_stdin, daemon=True).start()
    loop.run_forever()
    os._exit(0)


if __name__ == "__main__":
    main()
