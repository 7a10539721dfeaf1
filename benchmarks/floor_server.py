"""
The floor: the least a Twisted WebSocket broadcast server can do.

A plain Twisted protocol that does the WebSocket opening handshake by hand (no Autobahn, no
auth, no parsing of client frames), sends ``{"type":"connected"}``, and writes pre-framed
bytes to every connection.  It speaks the same trigger protocol as the gateway's benchmark
hook (:mod:`realtime.dev.benchhook`): ``burst N SIZE``, ``spread N SIZE``, ``stamp SIZE TIME``.

    python benchmarks/floor_server.py WS_PORT TRIGGER_PORT
"""

import base64
import hashlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.basic import LineOnlyReceiver

from realtime.dev.benchhook import bench_message
from realtime.hub.registry import frame_text

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CONNECTED = frame_text(b'{"type":"connected"}')
clients = set()


class FloorWebSocket(Protocol):
    def connectionMade(self):
        self.buffer = b""
        self.open = False
        self.transport.setTcpNoDelay(True)

    def dataReceived(self, data):
        if self.open:
            return  # client frames are ignored (the load client sends none)
        self.buffer += data
        if b"\r\n\r\n" not in self.buffer:
            if len(self.buffer) > 16384:
                self.transport.abortConnection()
            return
        key = None
        for line in self.buffer.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-key":
                key = value.strip()
        if key is None:
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            self.transport.loseConnection()
            return
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        self.buffer = b""
        self.open = True
        self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept
                             + b"\r\n\r\n" + CONNECTED)
        clients.add(self)

    def connectionLost(self, reason):
        clients.discard(self)


def broadcast(text):
    frame = frame_text(text.encode("utf-8"))
    for client in clients:
        client.transport.write(frame)


class Trigger(LineOnlyReceiver):
    delimiter = b"\n"

    def lineReceived(self, line):
        words = line.decode("ascii").split()
        if words[0] == "burst":
            count, size = int(words[1]), int(words[2])
            for seq in range(count):
                broadcast(bench_message(seq, size))
            self.transport.write(b"ok burst\n")
        elif words[0] == "spread":
            self.spread(0, int(words[1]), int(words[2]))
        elif words[0] == "stamp":
            broadcast(bench_message(0, int(words[1]), words[2]))
            self.transport.write(b"ok stamp\n")

    def spread(self, seq, count, size):
        if seq >= count:
            self.transport.write(b"ok spread\n")
            return
        broadcast(bench_message(seq, size))
        reactor.callLater(0, self.spread, seq + 1, count, size)


def main():
    ws_port, trigger_port = int(sys.argv[1]), int(sys.argv[2])
    reactor.listenTCP(ws_port, Factory.forProtocol(FloorWebSocket), backlog=4096,
                      interface="127.0.0.1")
    reactor.listenTCP(trigger_port, Factory.forProtocol(Trigger), interface="127.0.0.1")
    print("ready", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
