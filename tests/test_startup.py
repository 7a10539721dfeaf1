"""
Start-up as an operator meets it: every failure an operator can cause (a taken port, a bad
option, a bad endpoint string, an unreadable key file, the embedded CouchDB with Redis)
ends the process at once with exit status 2 and one line on stderr naming what and why,
with no traceback and no embedded CouchDB left running; ``--version`` names realtime; the
run command's banner is plain lines, and a ``ready`` line follows once the feeds connect.

Real processes (``python -m realtime`` and ``twistd``), on loopback.
"""

import io
import os
import socket
import subprocess
import sys
import threading

from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock
from twisted.trial import unittest

import realtime
from realtime import config as config_module
from realtime import service as service_module
from realtime.dev.embedded import find_pouchdb_server, free_port, stop_process

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(**extra):
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": REPO,
           "HOME": os.environ.get("HOME", "/tmp")}
    env.update(extra)
    return env


#: ``twistd`` itself, as its console script runs it
TWISTD = ["-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"]


def _run(args, env, timeout=60):
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _taken_port(test):
    """A loopback port held by a listening socket for the test's duration."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    test.addCleanup(s.close)
    return s.getsockname()[1]


def _nothing_listens_on(port) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


class StartupFailureTests(unittest.TestCase):
    timeout = 120

    def assertOneLineFailure(self, result, *words):
        self.assertEqual(result.returncode, service_module.EXIT_STARTUP_FAILED,
                         result.stdout + result.stderr)
        lines = result.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertTrue(lines[0].startswith("realtime: "), lines[0])
        for word in words:
            self.assertIn(word, lines[0])
        self.assertNotIn("Traceback", result.stdout + result.stderr)
        return lines[0]

    def test_taken_port_stops_before_the_embedded_couchdb(self):
        """
        python -m realtime with its port taken exits 2 with one line naming the endpoint
        and the reason; the embedded CouchDB it would have started is not running, and no
        banner pointed anyone at the other server.
        """
        port, embedded_port = _taken_port(self), free_port()
        listen = f"tcp:{port}:interface=127.0.0.1"
        result = _run(["-m", "realtime"], _env(REALTIME_LISTEN=listen,
                                               REALTIME_EMBEDDED_PORT=str(embedded_port)))
        self.assertOneLineFailure(result, f"cannot listen on {listen}", "address already in use")
        self.assertNotIn("serving", result.stdout)
        self.assertTrue(_nothing_listens_on(embedded_port))

    def test_taken_port_under_twistd(self):
        """`twistd -n realtime` with a taken port ends with status 2 as well."""
        port = _taken_port(self)
        result = _run([*TWISTD, "--pidfile=", "-n", "realtime"],
                      _env(REALTIME_LISTEN=f"tcp:{port}:interface=127.0.0.1",
                           COUCHDB_URL="http://127.0.0.1:9"))
        self.assertOneLineFailure(result, "cannot listen on", "address already in use")

    def test_second_endpoint_taken(self):
        """Of two endpoints, the taken one is named; the other one is closed again."""
        free, taken = free_port(), _taken_port(self)
        listen = f"tcp:{free}:interface=127.0.0.1,tcp:{taken}:interface=127.0.0.1"
        result = _run(["-m", "realtime"], _env(REALTIME_LISTEN=listen,
                                               COUCHDB_URL="http://127.0.0.1:9"))
        self.assertOneLineFailure(result, f"tcp:{taken}:interface=127.0.0.1")
        self.assertTrue(_nothing_listens_on(free))

    def test_bad_option(self):
        """An option with a value that cannot be used: one line naming it."""
        result = _run(["-m", "realtime", "--ws-heartbeat-ms=-5"], _env())
        self.assertOneLineFailure(result, "--ws-heartbeat-ms", "positive")
        result = _run(["-m", "realtime"], _env(WS_SINGLE_SESSION="perhaps"))
        self.assertOneLineFailure(result, "WS_SINGLE_SESSION", "perhaps")
        result = _run(["-m", "realtime", "--no-such-option"], _env())
        self.assertOneLineFailure(result, "no-such-option")

    def test_usage_errors_under_twistd_are_one_line(self):
        """
        `twistd realtime --bogus`, or an option without its value: one line naming the
        option and pointing at --help, exit status 2, and not twistd's whole help text.
        """
        for args, words in ((["--bogus"], ["--bogus", "twistd realtime --help"]),
                            (["--admin-key"], ["admin-key", "requires argument"])):
            result = _run([*TWISTD, "--pidfile=", "-n", "realtime", *args], _env())
            self.assertOneLineFailure(result, *words)
            self.assertEqual(result.stdout, "")
        result = _run(["-m", "realtime", "--bogus"], _env())
        self.assertOneLineFailure(result, "--bogus", "python -m realtime --help")
        self.assertEqual(result.stdout, "")

    def test_bad_endpoint_string(self):
        """An endpoint string that is not one: one line naming REALTIME_LISTEN and it."""
        result = _run(["-m", "realtime"], _env(REALTIME_LISTEN="tpc:8080",
                                               COUCHDB_URL="http://127.0.0.1:9"))
        self.assertOneLineFailure(result, "REALTIME_LISTEN", "tpc:8080")

    def test_unreadable_public_key(self):
        """A JWT_PUBLIC_KEY path that does not exist: one line naming it."""
        result = _run(["-m", "realtime"], _env(JWT_PUBLIC_KEY="/nonexistent/key.pem",
                                               COUCHDB_URL="http://127.0.0.1:9",
                                               REALTIME_LISTEN="tcp:0:interface=127.0.0.1"))
        self.assertOneLineFailure(result, "JWT_PUBLIC_KEY", "/nonexistent/key.pem")

    def test_redis_with_the_embedded_couchdb_is_refused(self):
        """
        REDIS_URL without COUCHDB_URL would give every process a private CouchDB: refused,
        saying what to set.
        """
        result = _run(["-m", "realtime"], _env(REDIS_URL="redis://127.0.0.1:9/0"))
        self.assertOneLineFailure(result, "REDIS_URL", "COUCHDB_URL")

    def test_version_names_realtime(self):
        """--version prints realtime's version (with Twisted's), not only twistd's."""
        for args in (["-m", "realtime", "--version"],
                     [*TWISTD, "realtime", "--version"]):
            result = _run(args, _env())
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertTrue(result.stdout.startswith(f"realtime {realtime.__version__} "),
                            result.stdout)
            self.assertIn("Twisted", result.stdout)


class ListenerServiceTests(unittest.TestCase):
    def test_listen_failure_tells_startup(self):
        """A listener that cannot listen tells Startup once, naming the endpoint."""
        reactor = MemoryReactorClock()
        errors, exits = io.StringIO(), []
        startup = service_module.Startup(reactor, stderr=errors, exit=exits.append)

        class Refusing:
            def listen(self, factory):
                return defer.fail(CannotListenError("127.0.0.1", 8080, OSError(98, "Address already in use")))

        listener = service_module.ListenerService("tcp:8080", Refusing(), object(), startup)
        listener.privilegedStartService()
        self.assertEqual(errors.getvalue(),
                         "realtime: cannot listen on tcp:8080: address already in use\n")
        self.assertEqual(startup.failed, "cannot listen on tcp:8080: address already in use")
        self.assertEqual(exits, [])  # not before the shutdown is over
        for trigger, args, kwargs in reactor.triggers["after"]["shutdown"]:
            trigger(*args, **kwargs)
        self.assertEqual(exits, [service_module.EXIT_STARTUP_FAILED])


class ReadyTests(unittest.TestCase):
    def test_ready_once_every_feed_is_connected(self):
        """FeedsReady calls back once, when the last feed connects, never again."""
        class Feed:
            def __init__(self):
                self.state = "connecting"
        feeds, calls = [Feed(), Feed()], []
        ready = service_module.FeedsReady(calls.append)
        ready.watch(feeds)
        feeds[0].state = "connected"
        ready.state_changed(feeds[0])
        self.assertEqual(calls, [])
        feeds[1].state = "connected"
        ready.state_changed(feeds[1])
        feeds[1].state = "reconnecting"
        ready.state_changed(feeds[1])
        feeds[1].state = "connected"
        ready.state_changed(feeds[1])
        self.assertEqual(calls, [tuple(feeds)])


class RunBannerTests(unittest.TestCase):
    timeout = 120

    def test_banner_is_plain_lines_then_ready(self):
        """
        The run command (python -m realtime on the embedded CouchDB, with JWT_SECRET)
        prints its banner as plain lines, with no log prefix: where it serves (and on which
        interfaces), how to connect, the token command, the embedded CouchDB's URL and
        admin credentials to share it, the demo database's rule file; then a 'ready' line
        once the feeds (_users and the demo database) are connected.
        """
        port = free_port()
        env = _env(REALTIME_LISTEN=f"tcp:{port}:interface=127.0.0.1",
                   JWT_SECRET="banner-test-secret-0123456789abcdef",
                   POUCHDB_SERVER=find_pouchdb_server())
        process = subprocess.Popen([sys.executable, "-m", "realtime"], cwd=REPO, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, text=True)
        self.addCleanup(stop_process, process)
        lines, ready = [], threading.Event()

        def read():
            for line in process.stdout:
                lines.append(line.rstrip("\n"))
                if line.startswith("realtime: ready"):
                    ready.set()
            ready.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        self.addCleanup(reader.join, 15)
        self.assertTrue(ready.wait(60), "\n".join(lines))
        text = "\n".join(lines)
        self.assertIn(f"realtime {realtime.__version__} is serving http://127.0.0.1:{port} "
                      "(127.0.0.1 only", text)
        self.assertIn("  python -m realtime.token demo", lines)
        shares = [line for line in lines if line.startswith("  COUCHDB_URL=http://127.0.0.1:")]
        self.assertEqual(len(shares), 1, text)
        self.assertIn("COUCHDB_ADMIN_AUTH=", shares[0])
        # the second process follows the demo database too: the same rule file
        rule_file = lines[[line.startswith("Demo application database") for line in lines]
                          .index(True)].split("rule file: ", 1)[1].rstrip("):")
        self.assertIn(f"REALTIME_CONFIG={rule_file} ", shares[0])
        commands = [line for line in lines if "examples/client.py" in line]
        self.assertEqual(len(commands), 2, text)
        for line in commands + shares:
            self.assertTrue(line.startswith("  "), line)  # no log prefix, one line each
        self.assertTrue(any(line.startswith(f"realtime: ready: the CouchDB feeds are connected "
                                            f"(_users, notes); serving http://127.0.0.1:{port}")
                            for line in lines), text)
        # The demo application database and its rule file (printed, to copy and edit).
        rules = [line for line in lines if line.startswith("Demo application database")]
        self.assertEqual(len(rules), 1, text)


class TokenCommandTests(unittest.TestCase):
    def test_token_is_accepted_by_the_configured_verifier(self):
        """python -m realtime.token mints what a gateway with the same settings accepts."""
        from realtime import token as token_module
        from realtime.assembly import make_jwt_verifier
        config = config_module.defaults(jwt_secret="token-test-secret-0123456789abcdef",
                                        jwt_audience="app", jwt_issuer="me")
        text = token_module.mint(config, "demo", ttl=60, roles=["admin"])
        verifier = make_jwt_verifier(config, None)
        identity = verifier.identity(text, verifier.decode(text))
        self.assertEqual((identity.user_id, identity.roles), ("demo", ("admin",)))

    def test_without_secret_says_so(self):
        """Without JWT_SECRET: status 2 and one line on stderr."""
        result = _run(["-m", "realtime.token", "demo"], _env())
        self.assertEqual(result.returncode, 2)
        self.assertIn("JWT_SECRET is not set", result.stderr)
        self.assertEqual(result.stdout, "")


class CollectorTuningTests(unittest.TestCase):
    """The server process's collector (:func:`realtime.service.tune_gc`), in a process of its
    own: the test process's collector is left as it is."""

    def test_make_service_freezes_and_raises_the_threshold(self):
        script = (
            "import gc\n"
            "from realtime import tap\n"
            "before = gc.get_threshold()\n"
            "options = tap.Options()\n"
            "options.parseOptions(['--couchdb-url', 'http://127.0.0.1:9',"
            " '--listen', 'tcp:0:interface=127.0.0.1'])\n"
            "tap.makeService(options)\n"
            "print(before, gc.get_threshold(), gc.get_freeze_count() > 1000)\n")
        result = _run(["-c", script], _env())
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.split("\n")[0],
                         f"(700, 10, 10) {service_module.GC_THRESHOLDS} True")
