"""
Several real gateway processes (``python -m realtime``) sharing one redis-server and the
shared pouchdb-server: the deployment a load balancer would spread clients over.

    cluster = Cluster(size=3, redis_url=harness.redis().url, WS_SINGLE_SESSION="true")
    yield cluster.start()            # every process answers /websocket/status, Redis up
    self.addCleanup(cluster.stop)    # stops each child by PID
    client = yield cluster.connect(1, query={"token": token})   # a client on process 1
    yield cluster.post(0, "/websocket/message/broadcast", {...})  # REST, admin key

Each child is configured through its environment only (REALTIME_LISTEN on a free port,
COUCHDB_URL / COUCHDB_ADMIN_AUTH, SECRET, REDIS_URL, REALTIME_ADMIN_KEY, plus the
extra variables given).  Its output goes to a log file whose tail is shown when it fails
to start.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile

import treq
from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.web.client import Agent, HTTPConnectionPool

from realtime.dev.embedded import free_port, stop_process
from tests import harness
from tests.fakes import ADMIN_KEY, SECRET
from tests.harness import close_clients

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class GatewayProcess:
    """
    One child gateway.  It listens on a port of its own (``port``); with ``shared_port``
    it also listens, with SO_REUSEPORT, on that port shared with the other processes.
    """

    def __init__(self, env: dict, name: str = "gw", shared_port: int = None):
        self.port = free_port()
        self.name = name
        listen = f"tcp:{self.port}:interface=127.0.0.1"
        if shared_port:
            listen = f"reuseport:{shared_port}:interface=127.0.0.1,{listen}"
        self.env = dict(os.environ)
        self.env.update({
            "REALTIME_LISTEN": listen,
            "REALTIME_EMBEDDED_COUCHDB": "no",
            "PYTHONUNBUFFERED": "1",
        })
        self.env.update(env)
        self.process = None
        self.log_path = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spawn(self) -> None:
        fd, self.log_path = tempfile.mkstemp(prefix=f"realtime-{self.name}-", suffix=".log")
        with os.fdopen(fd, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "realtime"], cwd=ROOT, env=self.env,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, "r", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except (OSError, TypeError):
            return ""

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """Stop by PID: SIGTERM, then SIGKILL after 10 s."""
        process, self.process = self.process, None
        stop_process(process)
        if self.log_path and os.path.exists(self.log_path):
            os.unlink(self.log_path)

    def kill(self) -> None:
        """SIGKILL: no goodbye to Redis."""
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()


class Cluster:
    """
    ``size`` gateway processes; with ``shared_port=True`` they also share one port
    (``cluster.shared_port``, SO_REUSEPORT) as they would behind no load balancer.
    """

    def __init__(self, size: int = 3, redis_url: str = None, couchdb=None,
                 shared_port: bool = False, **env):
        self.couchdb = couchdb or harness.pouchdb()
        self.redis_url = redis_url or harness.redis().url
        self.prefix = harness.unique("cluster") + ":"
        common = {
            "COUCHDB_URL": self.couchdb.url,
            "COUCHDB_ADMIN_AUTH": self.couchdb.admin_auth,
            "JWT_SECRET": SECRET,
            "REDIS_URL": self.redis_url,
            "REDIS_PREFIX": self.prefix,
            "REALTIME_ADMIN_KEY": ADMIN_KEY,
            "WS_HEARTBEAT_MS": "30000",
        }
        common.update({k: str(v) for k, v in env.items()})
        self.shared_port = free_port() if shared_port else None
        self.processes = [GatewayProcess(common, name=f"gw{i}", shared_port=self.shared_port)
                          for i in range(size)]
        self.clients = []
        self._pool = HTTPConnectionPool(reactor, persistent=False)
        self._http = treq.client.HTTPClient(Agent(reactor, pool=self._pool))

    def __getitem__(self, index: int) -> GatewayProcess:
        return self.processes[index]

    @inlineCallbacks
    def start(self, seconds: float = 60.0):
        for process in self.processes:
            process.spawn()
        yield gatherResults([self.wait_ready(i, seconds) for i in range(len(self.processes))])
        return self

    @inlineCallbacks
    def status(self, index: int) -> dict:
        response = yield self._http.get(self[index].base_url + "/websocket/status",
                                        timeout=5)
        body = yield response.json()
        return body

    @inlineCallbacks
    def wait_ready(self, index: int, seconds: float = 60.0):
        """Until the process answers /websocket/status with Redis connected."""
        process = self[index]
        deadline = reactor.seconds() + seconds
        while True:
            if not process.alive:
                raise AssertionError(f"{process.name} exited:\n{process.log_tail()}")
            try:
                body = yield self.status(index)
                if body.get("redis", {}).get("state") == "connected":
                    return body
            except Exception:
                pass
            if reactor.seconds() > deadline:
                raise AssertionError(f"{process.name} not ready after {seconds}s:\n"
                                     f"{process.log_tail()}")
            yield harness.sleep(0.1)

    @inlineCallbacks
    def connect(self, index: int, **kwargs):
        client = yield harness.connect(self[index].port, **kwargs)
        self.clients.append(client)
        return client

    @inlineCallbacks
    def request(self, index: int, method: str, path: str, body=None, admin: bool = True):
        headers = {"Content-Type": ["application/json"]}
        if admin:
            headers["Authorization"] = [f"Bearer {ADMIN_KEY}"]
        data = json.dumps(body).encode("utf-8") if body is not None else None
        response = yield self._http.request(method, self[index].base_url + path,
                                            data=data, headers=headers, timeout=10)
        text = yield response.content()
        try:
            parsed = json.loads(text) if text else None
        except ValueError:
            parsed = text
        return response.code, parsed

    def post(self, index: int, path: str, body, admin: bool = True):
        return self.request(index, "POST", path, body, admin)

    @inlineCallbacks
    def stop(self):
        yield close_clients(self.clients)
        for process in self.processes:
            process.stop()
        yield self._pool.closeCachedConnections()
