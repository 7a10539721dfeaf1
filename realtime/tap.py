"""
The twistd plugin: ``twistd -n realtime [options]``.

Every option of :data:`realtime.config.OPTIONS` is a twistd option; with no option given
the environment decides, then the default.  When ``COUCHDB_URL`` is not set (and
``--embedded-couchdb`` is not ``no``), an in-memory pouchdb-server is started for you, with
an admin and a demo user, and the gateway points at it; its banner (plain lines a person
can copy, written to the terminal rather than the log) says how to log in, connect and
share it, and a ``ready`` line follows once the feeds are connected.

Start-up failures an operator can cause end the process with one line on stderr,
``realtime: <what>: <why>``, and exit status 2 (:data:`realtime.service.EXIT_STARTUP_FAILED`):
an unknown option or a missing value (with a hint naming ``--help``, instead of twistd's
whole help text), an option that cannot be used, a
rule file that cannot be used, an endpoint string, a listener that cannot listen
(:class:`realtime.service.Startup`: the embedded CouchDB is then not started, or stopped).
With ``REDIS_URL`` set (several processes) the embedded CouchDB is refused unless asked
for explicitly (``--embedded-couchdb=yes``): each process would follow a private database
of its own.
"""

from __future__ import annotations

import os
import platform
import secrets
import shutil
import sys
import tempfile

import autobahn
from twisted.application import service
from twisted.internet import threads
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python import usage

import realtime
import twisted
from realtime import config as config_module
from realtime.databases.rulefile import RuleFileError
from realtime.dev import demo
from realtime.dev.embedded import PouchDBServer
from realtime.service import EXIT_STARTUP_FAILED, Startup, make_service, tune_gc


def version_text() -> str:
    return (f"realtime {realtime.__version__} (Twisted {twisted.__version__}, "
            f"Autobahn {autobahn.__version__}, Python {platform.python_version()})")


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

    #: the command a usage error's hint names (``python -m realtime`` sets its own)
    help_command = "twistd realtime --help"

    def parseOptions(self, options=None):
        """
        A usage error (an unknown option, a missing value, an option that cannot be used)
        is one line on stderr, ``realtime: <what> (<command> --help lists the options)``,
        and exit status 2: not twistd's whole help text (about 160 lines) above it.
        """
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            sys.stderr.write(f"realtime: {e} ({self.help_command} lists the options)\n")
            sys.stderr.flush()
            raise SystemExit(EXIT_STARTUP_FAILED) from None

    def opt_version(self):
        """Print realtime's version (and Twisted's, Autobahn's, Python's) and exit."""
        sys.stdout.write(version_text() + "\n")
        sys.stdout.flush()
        sys.exit(0)

    def postOptions(self):
        given = {option.name: self[option.flag] for option in config_module.OPTIONS}
        try:
            self.config = config_module.load(given, os.environ)
        except config_module.ConfigError as e:
            # One clear line and a non-zero exit (not the whole usage text, no traceback).
            sys.stderr.write(f"realtime: {e}\n")
            sys.stderr.flush()
            raise SystemExit(2)
        self.embedded = _wants_embedded(self.config, given)
        if self.embedded and self.config.redis_url and not _embedded_forced(self.config):
            raise usage.UsageError(
                "REDIS_URL is set (several processes) but COUCHDB_URL is not: each process "
                "would start a private in-memory CouchDB of its own; set COUCHDB_URL to one "
                "shared CouchDB (a first `make run` prints one), or --embedded-couchdb=yes "
                "for a single process")


def _embedded_forced(config) -> bool:
    return config.embedded_couchdb.strip().lower() in ("yes", "true", "1")


def _wants_embedded(config, given) -> bool:
    choice = config.embedded_couchdb.strip().lower()
    if _embedded_forced(config):
        return True
    if choice in ("no", "false", "0"):
        return False
    return not config_module.couchdb_url_was_given(given, os.environ)


class _EmbeddedCouchDBService(service.Service):
    """
    Starts pouchdb-server in a thread (it takes seconds), stops it by PID.  Not started
    when start-up has already failed (a listener could not listen); stopped only once its
    start is over, so that a start cut short leaves no pouchdb-server behind.
    """

    def __init__(self, server, demo_user, demo_password, config, startup, demo_rules=None):
        self.server = server
        self._demo = (demo_user, demo_password)
        self._config = config
        self._startup = startup
        self._demo_rules = demo_rules  # path of the demo rule file, when it is in use
        self._ready = Deferred()  # fires once the server answers (never, if it fails)
        self._start_done = None

    def ready(self):
        return self._ready

    def startService(self):
        super().startService()
        if self._startup.failed is not None:
            return
        self._start_done = threads.deferToThread(self._start)
        self._start_done.addCallbacks(self._ready.callback, self._failed)

    def _start(self):
        self.server.start()
        user, password = self._demo
        self.server.create_user(user, password, roles=["member"], email=f"{user}@example.com")
        if self._demo_rules is not None:
            demo.seed(self.server, user, password)
        if self._startup.failed is None:
            _print_banner(self.server, user, password, self._config,
                          demo_rules=self._demo_rules)

    def _failed(self, failure):
        self._startup.fail(f"cannot start the embedded pouchdb-server: "
                           f"{failure.getErrorMessage()}")

    def stopService(self):
        super().stopService()
        if self._start_done is None:
            return None
        d, self._start_done = self._start_done, None
        if self._demo_rules is not None:
            d.addBoth(lambda _: shutil.rmtree(os.path.dirname(self._demo_rules),
                                              ignore_errors=True))
        return d.addBoth(lambda _: threads.deferToThread(self.server.stop))


def listen_summary(listen) -> tuple:
    """
    ``(base_url, where)`` for the first listening endpoint: the URL a person on this host
    uses (``http://127.0.0.1:8080``) and the interfaces it serves, in words.
    """
    scheme, host, port, where = "http", "127.0.0.1", "8080", "every interface"
    for description in listen:
        parts = description.split(":")
        if parts[0] not in ("tcp", "ssl", "reuseport") or len(parts) < 2:
            continue
        scheme = "https" if parts[0] == "ssl" else "http"
        port = parts[1]
        interfaces = [p.split("=", 1)[1] for p in parts[2:] if p.startswith("interface=")]
        if interfaces and interfaces[0] not in ("", "0.0.0.0", "::"):
            host = where = interfaces[0]
            where = f"{host} only"
        break
    return f"{scheme}://{host}:{port}", where


def banner_lines(server, user, password, config, demo_rules=None) -> list:
    """
    What the run command prints once the embedded CouchDB is up: plain lines, every
    command on one line of its own (a person copies them whole).
    """
    base, where = listen_summary(config.listen)
    ws = base.replace("http", "ws", 1)
    port = base.rsplit(":", 1)[1]
    client = (f"python examples/client.py --couchdb {server.url} --user {user} "
              f"--password={password}")
    lines = [
        "",
        f"realtime {realtime.__version__} is serving {base} ({where}; REALTIME_LISTEN "
        "chooses)",
        f"  WebSocket: {ws}/ws    REST API: {base}/websocket/    docs: docs/index.rst",
        "Embedded in-memory CouchDB (pouchdb-server; its data is lost at exit):",
        f"  {server.url}/_utils    admin: {server.admin} / {server.password}",
        f"  demo user: {user} / {password}",
        "",
        "Connect as the demo user and print what arrives:",
        f"  {client} --port {port}",
        "Change the demo user's document (in another terminal) and watch it arrive:",
        f"  {client} --touch",
        "Status:",
        f"  curl {base}/websocket/status",
    ]
    if demo_rules is not None:
        lines += [
            f"Demo application database '{demo.DEMO_DB}' (rule file: {demo_rules}):",
            f"  users {user} and {demo.second_user(user)} (same password) each see their "
            "own notes and the shared ones, live; see docs/databases.rst",
        ]
    if config.demo:
        lines += [f"Demo page (log in as {user}; two browsers, two users):", f"  {base}/demo"]
    lines += ["Operators' dashboard" + ("" if config.admin_key else
                                        " (set REALTIME_ADMIN_KEY to use it)") + ":",
              f"  {base}/admin"]
    if config.jwt_secret:
        lines += ["A test JWT for the demo user (signed with JWT_SECRET):",
                  f"  python -m realtime.token {user}"]
    lines += [
        "A second process on this CouchDB (with REDIS_URL on both to share the work):",
        f"  COUCHDB_URL={server.url} COUCHDB_ADMIN_AUTH={server.admin_auth} "
        + (f"REALTIME_CONFIG={demo_rules} " if demo_rules is not None else "")
        + "REALTIME_LISTEN=tcp:8081:interface=127.0.0.1 python -m realtime"
        "   (in this Python environment: activate its virtualenv first, if any)",
        "",
        "Waiting for the CouchDB feeds (a few seconds): a 'ready' line follows.",
    ]
    return lines


def console():
    """The terminal (not twistd's log, which captures ``sys.stdout``)."""
    return sys.__stdout__ or sys.stdout


def _print_banner(server, user, password, config, out=None, demo_rules=None):
    out = out or console()
    out.write("\n".join(banner_lines(server, user, password, config, demo_rules)) + "\n")
    out.flush()


def makeService(options) -> service.MultiService:
    """
    The service tree (with the embedded CouchDB when asked for).  An option that cannot be
    used ends the process here: one line on stderr, exit status 2.
    """
    try:
        top = _make_service(options)
    except (config_module.ConfigError, RuleFileError) as e:
        sys.stderr.write(f"realtime: {e}\n")
        sys.stderr.flush()
        raise SystemExit(EXIT_STARTUP_FAILED) from None
    tune_gc()
    return top


def _make_service(options) -> service.MultiService:
    from twisted.internet import reactor  # the one twistd installed (--reactor)

    config = options.config
    startup = Startup(reactor)
    if not options.embedded:
        return make_service(config, startup=startup, on_ready=_ready_announcer(config))

    server = PouchDBServer(port=int(os.environ.get("REALTIME_EMBEDDED_PORT", "0")) or None)
    config = config.replace(couchdb_url=server.url, couchdb_admin_auth=server.admin_auth)
    demo_rules = None
    if not config.config:  # no rule file given: the demo database and its rules
        demo_rules = demo.write_rules(tempfile.mkdtemp(prefix="realtime-demo-"))
        config = config.replace(config=demo.demo_rules(demo_rules))
    embedded = _EmbeddedCouchDBService(server, os.environ.get("REALTIME_DEMO_USER", "demo"),
                                       os.environ.get("REALTIME_DEMO_PASSWORD")
                                       or secrets.token_hex(8),  # never starts with '-'
                                       config, startup, demo_rules)
    top = service.MultiService()
    embedded.setServiceParent(top)
    make_service(config, ready=embedded.ready, startup=startup,
                 on_ready=_ready_announcer(config, console())).setServiceParent(top)
    return top


def ready_line(config, followers) -> str:
    base, _ = listen_summary(config.listen)
    feeds = ", ".join(f.db for f in followers)
    return f"realtime: ready: the CouchDB feeds are connected ({feeds}); serving {base}"


def _ready_announcer(config, out=None):
    """Logs (and, for the run command, prints) the ``ready`` line once the feeds connect."""
    log = Logger(namespace="realtime")

    def announce(followers):
        line = ready_line(config, followers)
        log.info("{line}", line=line)
        if out is not None:
            out.write(line + "\n")
            out.flush()
    return announce
