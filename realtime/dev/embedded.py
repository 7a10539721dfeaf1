"""
An embedded CouchDB-compatible server: pouchdb-server (npm), in memory, on loopback.

Used by the run command when ``COUCHDB_URL`` is not set, and by the test harness.  The
process runs in a private temporary directory (pouchdb-server writes ``config.json`` and
``log.txt`` into its working directory), is given an admin at start, and is stopped by its
PID.

The executable is looked up in this order: ``$POUCHDB_SERVER``, ``node_modules/.bin`` of the
repository (``npm ci`` installs it there), then ``$PATH``.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from typing import Optional
from urllib.parse import quote

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class EmbeddedError(RuntimeError):
    pass


def find_pouchdb_server() -> str:
    candidates = [
        os.environ.get("POUCHDB_SERVER"),
        os.path.join(REPO_ROOT, "node_modules", ".bin", "pouchdb-server"),
        os.path.join(os.getcwd(), "node_modules", ".bin", "pouchdb-server"),
        shutil.which("pouchdb-server"),
    ]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise EmbeddedError(
        "pouchdb-server not found: run `npm ci` in the repository (or set POUCHDB_SERVER)")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class PouchDBServer:
    """
    A pouchdb-server child process with an admin.

    Blocking start (a few seconds): meant for process start-up and test set-up, not for
    code running on a live reactor.
    """

    def __init__(self, port: Optional[int] = None, admin: str = "admin",
                 password: Optional[str] = None, host: str = "127.0.0.1"):
        self.host = host
        self.port = port or free_port(host)
        self.admin = admin
        self.password = password or secrets.token_urlsafe(18)
        self.process: Optional[subprocess.Popen] = None
        self._dir: Optional[str] = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def admin_auth(self) -> str:
        """The ``COUCHDB_ADMIN_AUTH`` value (base64 of admin:password)."""
        return base64.b64encode(f"{self.admin}:{self.password}".encode()).decode("ascii")

    def start(self, timeout: float = 60.0) -> "PouchDBServer":
        executable = find_pouchdb_server()
        self._dir = tempfile.mkdtemp(prefix="realtime-pouchdb-")
        self.process = subprocess.Popen(
            [executable, "--in-memory", "--port", str(self.port), "--host", self.host,
             "--config", os.path.join(self._dir, "config.json"), "--no-stdout-logs"],
            cwd=self._dir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(self._dir, "stderr.txt"), "wb"),
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise EmbeddedError(
                    f"pouchdb-server exited with {self.process.returncode}: {self.stderr()}")
            try:
                with urllib.request.urlopen(self.url + "/", timeout=2) as response:
                    if response.status == 200:
                        break
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise EmbeddedError("pouchdb-server did not answer in time")
            time.sleep(0.1)
        self.request("PUT", f"/_config/admins/{self.admin}", f'"{self.password}"', auth=False)
        self.request("GET", "/_users")  # make sure the users database exists
        return self

    def stderr(self) -> str:
        try:
            with open(os.path.join(self._dir, "stderr.txt"), "rb") as f:
                return f.read()[-2000:].decode("utf-8", "replace")
        except (OSError, TypeError):
            return ""

    def request(self, method: str, path: str, body=None, auth: bool = True,
                headers: Optional[dict] = None):
        """A blocking request to the server (set-up and tests); returns (status, body bytes)."""
        data = body.encode("utf-8") if isinstance(body, str) else body
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if auth:
            request.add_header("Authorization", "Basic " + self.admin_auth)
        for key, value in (headers or {}).items():
            request.add_header(key, value)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def create_user(self, name: str, password: str, roles=(), **fields) -> dict:
        doc = {"_id": "org.couchdb.user:" + name, "name": name, "password": password,
               "roles": list(roles), "type": "user", **fields}
        status, body = self.request("PUT", "/_users/org.couchdb.user:" + _quote(name),
                                    json.dumps(doc))
        if status not in (201, 202):
            raise EmbeddedError(f"creating user {name!r}: HTTP {status} {body[:200]!r}")
        return json.loads(body)

    def login(self, name: str, password: str) -> str:
        """The AuthSession cookie value of a new session for that user."""
        request = urllib.request.Request(
            self.url + "/_session", method="POST",
            data=json.dumps({"name": name, "password": password}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            for header in response.headers.get_all("Set-Cookie") or []:
                first = header.split(";", 1)[0]
                key, _, value = first.partition("=")
                if key.strip() == "AuthSession" and value:
                    return value
        raise EmbeddedError("no AuthSession cookie in the login answer")

    def stop(self) -> None:
        process, self.process = self.process, None
        stop_process(process)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def stop_process(process: Optional[subprocess.Popen], grace: float = 10.0) -> None:
    """Stop a child by its PID: SIGTERM, then SIGKILL after ``grace`` seconds."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _quote(text: str) -> str:
    return quote(text, safe="")
