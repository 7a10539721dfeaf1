"""
A command-line realtime client: log into CouchDB, connect to /ws with the AuthSession cookie
(or a JWT), and print every message that arrives.

    python examples/client.py --couchdb http://127.0.0.1:5984 --user demo --password PW
    python examples/client.py --token JWT
    python examples/client.py --couchdb ... --user demo --password PW --touch

``--touch`` changes the user's own ``_users`` document once (as that user, through CouchDB)
and exits: a connected client of that user then receives a ``user-change``.
"""

import argparse
import json
import sys
import time
import urllib.request

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import reactor


def login(couchdb, user, password):
    request = urllib.request.Request(
        couchdb.rstrip("/") + "/_session", method="POST",
        data=json.dumps({"name": user, "password": password}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        for header in response.headers.get_all("Set-Cookie") or []:
            key, _, value = header.split(";", 1)[0].partition("=")
            if key.strip() == "AuthSession":
                return value
    sys.exit("login failed: no AuthSession cookie")


def touch(couchdb, user, cookie):
    url = couchdb.rstrip("/") + "/_users/org.couchdb.user:" + user
    headers = {"Cookie": "AuthSession=" + cookie, "Content-Type": "application/json"}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
        doc = json.loads(r.read())
    doc["touched"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    request = urllib.request.Request(url, method="PUT", data=json.dumps(doc).encode(),
                                     headers=headers)
    with urllib.request.urlopen(request, timeout=10) as r:
        print("updated:", r.read().decode())


class Printer(WebSocketClientProtocol):
    def onOpen(self):
        print("open")

    def onMessage(self, payload, isBinary):
        print(payload.decode("utf-8"))
        sys.stdout.flush()

    def onClose(self, wasClean, code, reason):
        print(f"closed: {code} {reason}")
        if reactor.running:
            reactor.stop()


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--couchdb", default="http://127.0.0.1:5984")
    parser.add_argument("--user")
    parser.add_argument("--password")
    parser.add_argument("--token", help="a JWT instead of a CouchDB login")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--touch", action="store_true",
                        help="change the user's own _users document and exit")
    return parser


def main():
    args = make_parser().parse_args()

    headers = {}
    path = "/ws"
    if args.token:
        headers["Authorization"] = "Bearer " + args.token
    elif args.user and args.password:
        cookie = login(args.couchdb, args.user, args.password)
        if args.touch:
            touch(args.couchdb, args.user, cookie)
            return
        headers["Cookie"] = "AuthSession=" + cookie
    factory = WebSocketClientFactory(f"ws://{args.host}:{args.port}{path}", headers=headers)
    factory.protocol = Printer
    reactor.connectTCP(args.host, args.port, factory)
    reactor.run()


if __name__ == "__main__":
    main()
