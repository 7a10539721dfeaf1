"""
The systemd units of ``contrib/systemd/`` (documented in ``docs/systemd.rst``): valid for
``systemd-analyze verify``, and the gateway really serves on a socket handed over the way
``realtime.socket`` hands it (``systemd-socket-activate`` with the same
``FileDescriptorName``).  Each test is skipped when its tool is not installed.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.request

from twisted.trial import unittest

from realtime.dev.embedded import free_port, stop_process
from tests import harness

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNITS = os.path.join(REPO, "contrib", "systemd")


def _read(name):
    with open(os.path.join(UNITS, name), encoding="utf-8") as f:
        return f.read()


def _setting(unit_text, key):
    found = re.findall(rf"^{key}=(.*)$", unit_text, re.M)
    return found


class SystemdUnitTests(unittest.TestCase):
    timeout = 120

    def test_units_verify(self):
        """
        systemd-analyze verify accepts realtime.socket and realtime.service (the ExecStart
        interpreter, /opt/realtime/bin/python in the shipped file, is pointed at this
        Python: verify requires the executable to exist).
        """
        tool = shutil.which("systemd-analyze")
        if tool is None:
            raise unittest.SkipTest("systemd-analyze is not installed")
        work = tempfile.mkdtemp(prefix="realtime-units-")
        self.addCleanup(shutil.rmtree, work, True)
        service = _read("realtime.service")
        self.assertIn("ExecStart=/opt/realtime/bin/python -m realtime", service)
        with open(os.path.join(work, "realtime.service"), "w") as f:
            f.write(service.replace("/opt/realtime/bin/python", sys.executable))
        shutil.copy(os.path.join(UNITS, "realtime.socket"), work)
        result = subprocess.run(
            [tool, "verify", "--man=no", os.path.join(work, "realtime.socket"),
             os.path.join(work, "realtime.service")],
            capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertEqual(result.stderr.strip(), "")

    def test_units_agree(self):
        """The service adopts the socket by the name the socket unit gives it."""
        socket_unit, service = _read("realtime.socket"), _read("realtime.service")
        (name,) = _setting(socket_unit, "FileDescriptorName")
        self.assertIn(f"Environment=REALTIME_LISTEN=systemd:domain=INET:name={name}", service)
        self.assertIn("LimitNOFILE=65536", service)
        self.assertIn("Requires=realtime.socket", service)

    def test_gateway_serves_on_an_activated_socket(self):
        """
        Started by systemd-socket-activate on a loopback port, with the environment of
        realtime.service, the gateway adopts the socket and answers /websocket/status.
        """
        tool = shutil.which("systemd-socket-activate")
        if tool is None:
            raise unittest.SkipTest("systemd-socket-activate is not installed")
        couchdb = harness.pouchdb()
        port = free_port()
        (name,) = _setting(_read("realtime.socket"), "FileDescriptorName")
        listen = [line.split("=", 1)[1] for line in _setting(_read("realtime.service"),
                                                              "Environment")
                  if line.startswith("REALTIME_LISTEN=")]
        self.assertEqual(len(listen), 1)
        env = {"REALTIME_LISTEN": listen[0], "REALTIME_EMBEDDED_COUCHDB": "no",
               "COUCHDB_URL": couchdb.url, "COUCHDB_ADMIN_AUTH": couchdb.admin_auth,
               "PYTHONPATH": REPO, "PATH": os.environ.get("PATH", "")}
        command = [tool, "--listen", f"127.0.0.1:{port}", f"--fdname={name}"]
        for key, value in env.items():
            command.append(f"--setenv={key}={value}")
        command += [sys.executable, "-m", "realtime"]
        process = subprocess.Popen(command, cwd=REPO, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        self.addCleanup(stop_process, process)
        output, listening = [], threading.Event()

        def drain():  # the tool says when it listens; the gateway's log follows
            for line in process.stdout:
                output.append(line.decode("utf-8", "replace"))
                if "Listening on" in output[-1]:
                    listening.set()
            listening.set()

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        self.addCleanup(reader.join, 10)
        self.assertTrue(listening.wait(30), "systemd-socket-activate did not listen")
        # The listening socket exists before the gateway does: this request waits in its
        # backlog until the gateway has adopted the socket, then is answered.
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/websocket/status",
                                        timeout=60) as response:
                status = json.loads(response.read())
        except OSError as e:
            self.fail(f"no answer on the activated socket ({e}):\n" + "".join(output)[-3000:])
        self.assertIn(status["status"], ("healthy", "degraded"))
        self.assertEqual(status["redis"], {"state": "off"})
