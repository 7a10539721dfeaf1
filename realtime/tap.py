"""
The twistd plugin: ``twistd -n realtime [options]``.

Every option of :data:`realtime.config.OPTIONS` is a twistd option; with no option given
the environment decides, then the default.  When ``COUCHDB_URL`` is not set (and
``--embedded-couchdb`` is not ``no``), an in-memory pouchdb-server is started for you, with
an admin and a demo user, and the gateway points at it.
"""

from __future__ import annotations

import os
import secrets
import sys

from twisted.application import service
from twisted.internet import threads
from twisted.python import usage

from realtime import config as config_module
from realtime.dev.embedded import PouchDBServer
from realtime.service import make_service


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "realtime: a real-time gateway for CouchDB. Follows CouchDB _changes feeds and pushes "
        "changed documents over WebSocket (/ws) to the users allowed to see them; REST admin "
        "API under /websocket/. Every option can also be set by the environment variable "
        "named in brackets."
    )
    optParameters = [
        [option.flag, None, None, f"{option.help} [{option.env}; default: {option.default}]"]
        for option in config_module.OPTIONS
    ]

    def postOptions(self):
        given = {option.name: self[option.flag] for option in config_module.OPTIONS}
        try:
            self.config = config_module.load(given, os.environ)
        except config_module.ConfigError as e:
            raise usage.UsageError(str(e))
        self.embedded = _wants_embedded(self.config, given)


def _wants_embedded(config, given) -> bool:
    choice = config.embedded_couchdb.strip().lower()
    if choice in ("yes", "true", "1"):
        return True
    if choice in ("no", "false", "0"):
        return False
    return not config_module.couchdb_url_was_given(given, os.environ)


class _EmbeddedCouchDBService(service.Service):
    """Starts pouchdb-server in a thread (it takes seconds), stops it by PID."""

    def __init__(self, server, demo_user, demo_password, listen, demo=False, admin=False):
        self.server = server
        self._demo = (demo_user, demo_password)
        self._listen = listen
        self._pages = (demo, admin)  # what the banner points to
        self._ready = None

    def ready(self):
        return self._ready

    def startService(self):
        super().startService()
        self._ready = threads.deferToThread(self._start)
        self._ready.addErrback(self._failed)

    def _start(self):
        self.server.start()
        user, password = self._demo
        self.server.create_user(user, password, roles=["member"], email=f"{user}@example.com")
        _print_banner(self.server, user, password, self._listen, *self._pages)

    def _failed(self, failure):
        from twisted.internet import reactor
        sys.stderr.write(f"realtime: cannot start the embedded pouchdb-server: "
                         f"{failure.getErrorMessage()}\n")
        reactor.callLater(0, reactor.stop)
        return failure

    def stopService(self):
        super().stopService()
        return threads.deferToThread(self.server.stop)


def _print_banner(server, user, password, listen, demo=False, admin=False):
    port = "8080"
    for description in listen:
        parts = description.split(":")
        if parts[0] in ("tcp", "ssl") and len(parts) > 1:
            port = parts[1]
            break
    scheme = "wss" if listen and listen[0].startswith("ssl") else "ws"
    sys.stdout.write(f"""
realtime: embedded in-memory CouchDB (pouchdb-server) at {server.url}
  admin:      {server.admin} / (generated; see COUCHDB_ADMIN_AUTH to use your own CouchDB)
  demo user:  {user} / {password}

Log in and connect:
  curl -si -X POST {server.url}/_session -H 'Content-Type: application/json' \\
       -d '{{"name":"{user}","password":"{password}"}}' | grep -i set-cookie
  then open {scheme}://127.0.0.1:{port}/ws with that AuthSession cookie
  (python examples/client.py --couchdb {server.url} --user {user} --password={password} --port {port})
Change the user's document (in another terminal) and watch it arrive:
  python examples/client.py --couchdb {server.url} --user {user} --password={password} --touch
Status: curl http://127.0.0.1:{port}/websocket/status
""")
    http = "https" if scheme == "wss" else "http"
    if demo:
        sys.stdout.write(f"In a browser: {http}://127.0.0.1:{port}/demo (log in as {user})\n")
    sys.stdout.write(f"Dashboard:    {http}://127.0.0.1:{port}/admin"
                     f"{'' if admin else ' (set REALTIME_ADMIN_KEY to use it)'}\n")
    sys.stdout.flush()


def makeService(options) -> service.MultiService:

    config = options.config
    if not options.embedded:
        return make_service(config)

    server = PouchDBServer(port=int(os.environ.get("REALTIME_EMBEDDED_PORT", "0")) or None)
    config = config.replace(couchdb_url=server.url, couchdb_admin_auth=server.admin_auth)
    embedded = _EmbeddedCouchDBService(server, os.environ.get("REALTIME_DEMO_USER", "demo"),
                                       os.environ.get("REALTIME_DEMO_PASSWORD")
                                       or secrets.token_hex(8), config.listen,  # never starts with '-'
                                       demo=config.demo, admin=bool(config.admin_key))
    top = service.MultiService()
    embedded.setServiceParent(top)
    make_service(config, ready=embedded.ready).setServiceParent(top)
    return top
