"""
The tests' one set of stand-ins: the test secrets (:data:`SECRET`, :data:`ADMIN_KEY`) and
the one token helper (:func:`make_token`), a gateway built as production builds it on a
Clock with the memory broker (:func:`make_gateway`), the one fake connection that records
the frames it is given (:class:`FakeConnection`), a broker that is down
(:class:`DownBroker`), and a fake CouchDB 3 over HTTP
(:class:`FakeCouchDB`: string seqs, compaction).  Key material for the JWT and TLS tests
(RSA, EC and Ed25519 keys, JWKs, tokens built by hand, certificates) is in ``tests/keys.py``.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from urllib.parse import unquote

import jwt
from twisted.internet import reactor
from twisted.internet.defer import fail
from twisted.internet.task import Clock
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from realtime import config as config_module
from realtime import jsonutil
from realtime.assembly import make_parts
from realtime.auth.identity import Identity
from realtime.hub.registry import Registry
from realtime.metrics import Metrics

#: the one JWT secret of the tests (HS256), and the REST admin key
SECRET = "test-secret-for-unit-tests-only-0123456789"
ADMIN_KEY = "admin-key-for-tests-0123456789"

#: the HTTP client of a gateway that must not reach CouchDB (any request fails loudly)
_NO_HTTP = object()


def claims(sub="alice", lifetime=600, **extra) -> dict:
    """A token's claims: ``sub``, ``exp`` (``lifetime`` seconds from now) and ``iat``, then
    ``extra``; a claim whose value is None is left out (``sub=None``, ``exp=None``)."""
    now = int(time.time())
    base = {"sub": sub, "exp": now + lifetime, "iat": now}
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


def make_token(sub="alice", secret=SECRET, algorithm="HS256", headers=None, **extra) -> str:
    """A signed JWT for ``sub`` (the one token helper: :func:`claims` says which claims)."""
    return jwt.encode(claims(sub, **extra), secret, algorithm=algorithm, headers=headers)


def make_gateway(session_checker=None, allowed_origins=(), roles_claim="roles", broker=None,
                 max_topics_per_connection=None, clock=None, revocations=None, **overrides):
    """
    The tests' one gateway builder: a gateway built as production builds it
    (:func:`realtime.assembly.make_parts`), with the memory broker (or ``broker``), JWT auth
    with :data:`SECRET`, the admin key :data:`ADMIN_KEY`, and no feed; on ``clock``
    (default: a :class:`Clock` at 1,700,000,000).  ``broker``, ``revocations``: replace the
    memory ones (fault injection: :class:`DownBroker`).  ``overrides``: Config fields.
    """
    config = config_module.defaults(**{"admin_key": ADMIN_KEY, "jwt_secret": SECRET,
                                       "jwt_roles_claim": roles_claim,
                                       "cors_origins": tuple(allowed_origins), **overrides})
    if clock is None:
        clock = Clock()
        clock.advance(1_700_000_000)
    metrics = Metrics()
    registry = None
    if max_topics_per_connection is not None:
        registry = Registry(max_topics_per_connection, on_delivered=metrics.delivered)
    replaced = {name: part for name, part in (("broker", broker), ("revocations", revocations))
                if part is not None}
    return make_parts(config, clock, http=_NO_HTTP, metrics=metrics, registry=registry,
                      session_checker=session_checker, cluster_parts=replaced).gateway


def unframe(frame: bytes) -> bytes:
    """The payload of an unmasked server text frame (:func:`realtime.hub.registry.frame_text`:
    a 2-byte header up to 125 bytes, 4 bytes up to 64 KiB, 10 beyond)."""
    length = frame[1] & 0x7F
    if length == 126:
        return frame[4:]
    if length == 127:
        return frame[10:]
    return frame[2:]


_connection_ids = itertools.count(1)


class FakeConnection:
    """
    A connection as the registry, topics, resume and the REST API see one (what a
    :class:`realtime.transport.session.Session` offers them), keeping what it is given:
    ``frames`` (the bytes, as delivered), ``received`` (each decoded), ``closed`` (code,
    reason) and ``failures`` (the reasons of ``fail_auth``).

    With a ``gateway``, it joins as a real connection's admission does (presence, then the
    registry) and leaves both when closed.  With ``gateway=None`` it is a bare connection
    for registry and broker tests, which add it to their registry themselves.
    ``accept=False``: a connection whose writes fail (``deliver_frame`` answers False).
    """

    def __init__(self, gateway, user_id, topics=(), roles=(), connection_id=None,
                 token_id=None, accept=True):
        self.gateway = gateway
        self.identity = Identity(user_id=user_id, name=user_id, roles=tuple(roles),
                                 topics=tuple(topics), token_id=token_id)
        if connection_id is None:
            connection_id = (gateway.new_connection_id() if gateway is not None
                             else f"fake-{next(_connection_ids)}")
        self.connection_id = connection_id
        self.topics = set()
        self.frames = []
        self.received = []
        self.closed = None
        self.still_open = True  # False once closed (a test may set it: gone unannounced)
        self.failures = []
        self.accept = accept
        self.session_seq = 0  # single-session mode: as a session admitted first
        self.admitted_at = 0.0
        # holds its roles since (gateway clock): admitted now, as a session is
        self.roles_since = gateway.now() if gateway is not None else 0.0
        self.selections = None  # db -> Selection, as a session holds them
        if gateway is not None:
            # As a real connection's admission does: presence, then the registry.
            gateway.presence.connection_opened(self.connection_id, user_id, None)
            gateway.registry.add(self)

    @property
    def user_id(self):
        return self.identity.user_id

    @property
    def roles(self):
        return self.identity.roles

    @property
    def token_id(self):
        return self.identity.token_id

    def deliver_frame(self, frame: bytes, direct: bool = False) -> bool:
        if self.closed is not None or not self.accept:
            return False
        self.frames.append(frame)
        self.received.append(jsonutil.loads(unframe(frame)))
        return True

    def send_json(self, message: dict) -> bool:
        if self.closed is not None:
            return False
        self.received.append(jsonutil.loads(jsonutil.dumps(message)))
        return True

    def close_with(self, code: int, reason: str) -> None:
        self.closed = (code, reason)
        self.still_open = False
        if self.gateway is not None:
            # As a real connection's onClose does: leave the registry and presence.
            self.gateway.registry.remove(self)
            self.gateway.presence.connection_closed(self.connection_id, self.user_id)

    def fail_auth(self, failure) -> None:
        self.failures.append(failure.reason)

    def of_type(self, kind):
        return [m for m in self.received if m.get("type") == kind]


class DownBroker:
    """A broker whose Redis is away: every publication fails (fault injection)."""

    state = "down"
    redis_state = "down"

    def publish(self, event):
        return fail(ConnectionError("redis is away"))


class FakeCouchDB(Resource):
    """
    A fake CouchDB 3 over HTTP (a ``twisted.web`` resource), for what pouchdb-server cannot
    show: opaque string seqs (``"7-g1AAAA…"``), compaction (older revisions' bodies gone),
    answers under test control.  It serves ``GET /db`` (``update_seq``), ``GET
    /db/_changes`` (the "where is now" query, ``feed=continuous`` from ``since``, and
    batches from ``since`` with ``limit``, ``include_docs`` and ``pending``, each document
    once at its latest change; 400 for a ``since`` it never gave), ``GET /db/id`` (with
    ``rev=`` and ``revs=true``), ``POST /db/_bulk_get`` (``revs=true``) and
    ``GET /db/_all_docs?include_docs=true``; ``requests`` records (method, path, args).
    Documents are written with :meth:`put` and :meth:`delete` (no HTTP); :meth:`compact`
    drops every non-leaf body, and with ``auto_compact`` every write does (a database
    compacted before anyone reads back).

    ``listen()`` starts it on a loopback port (``url``, ``admin_auth`` as a PouchDBServer
    has them, so a GatewayHarness can use it); ``stop()`` ends the feeds and the port.
    """

    isLeaf = True
    admin_auth = "YWRtaW46ZmFrZQ=="

    def __init__(self, databases=("_users",)):
        super().__init__()
        self.dbs = {name: _FakeDB() for name in databases}
        self._feeds = []  # (request, db name)
        self.port = None
        self.auto_compact = False
        self.requests = []

    # -- control ------------------------------------------------------------------------

    def listen(self):
        self.port = reactor.listenTCP(0, Site(self), interface="127.0.0.1")
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}"

    def stop(self):
        feeds, self._feeds = self._feeds, []
        for request, _ in feeds:
            if not request.finished and not getattr(request, "_fake_gone", False):
                request.finish()
        return self.port.stopListening()

    def put(self, db: str, doc_id: str, **fields) -> str:
        """Write a new revision; returns its rev."""
        return self._write(db, doc_id, dict(fields), deleted=False)

    def delete(self, db: str, doc_id: str) -> str:
        return self._write(db, doc_id, {}, deleted=True)

    def compact(self, db: str) -> None:
        """Drop the body of every revision that is not the latest (CouchDB's compaction)."""
        for revisions in self.dbs[db].docs.values():
            for rev in list(revisions)[:-1]:
                revisions[rev] = None

    def _write(self, db: str, doc_id: str, fields: dict, deleted: bool) -> str:
        store = self.dbs[db]
        revisions = store.docs.setdefault(doc_id, {})
        generation = len(revisions) + 1
        rev = f"{generation}-" + hashlib.md5(f"{doc_id}{generation}".encode()).hexdigest()
        body = {"_id": doc_id, "_rev": rev, **fields}
        if deleted:
            body = {"_id": doc_id, "_rev": rev, "_deleted": True}
        revisions[rev] = body
        if self.auto_compact:
            self.compact(db)
        store.counter += 1
        seq = f"{store.counter}-g1AAAAB{hashlib.md5(str(store.counter).encode()).hexdigest()}"
        row = {"seq": seq, "id": doc_id, "changes": [{"rev": rev}], "doc": body}
        if deleted:
            row["deleted"] = True
        store.changes.append(row)
        line = jsonutil.dumps(row) + b"\n"
        for request, name in list(self._feeds):
            if name == db and not request.finished:
                request.write(line)
        return rev

    # -- HTTP ---------------------------------------------------------------------------

    def render_GET(self, request):
        path = request.path.decode("ascii").lstrip("/")
        db_name, _, rest = path.partition("/")
        db_name, rest = unquote(db_name), unquote(rest)
        args = {k.decode(): v[0].decode() for k, v in request.args.items()}
        request.setHeader(b"content-type", b"application/json")
        self.requests.append(("GET", path, args))
        store = self.dbs.get(db_name)
        if store is None:
            return self._error(request, 404, "not_found", "Database does not exist.")
        if rest == "":
            return jsonutil.dumps({"db_name": db_name, "update_seq": store.head()})
        if rest == "_changes":
            if args.get("feed") != "continuous" and "since" in args:
                return self._batch(request, store, args)
            if args.get("feed") != "continuous":
                last = store.changes[-1]["seq"] if store.changes else "0"
                return jsonutil.dumps({"results": [], "last_seq": last})
            since = args.get("since", "0")
            known = [row["seq"] for row in store.changes]
            if since != "0" and since not in known:
                return self._error(request, 400, "bad_request", "Malformed sequence")
            start = known.index(since) + 1 if since in known else 0
            request.write(b"\n")
            for row in store.changes[start:]:
                request.write(jsonutil.dumps(row) + b"\n")
            entry = (request, db_name)
            self._feeds.append(entry)

            def gone(_):
                request._fake_gone = True
                if entry in self._feeds:
                    self._feeds.remove(entry)

            request.notifyFinish().addBoth(gone)
            return NOT_DONE_YET
        if rest == "_all_docs":
            rows = []
            for doc_id, revisions in sorted(store.docs.items()):
                body = list(revisions.values())[-1]
                if body is not None and not body.get("_deleted"):
                    rows.append({"id": doc_id, "key": doc_id, "doc": body})
            return jsonutil.dumps({"total_rows": len(rows), "offset": 0, "rows": rows})
        revisions = store.docs.get(rest)
        if not revisions:
            return self._error(request, 404, "not_found", "missing")
        rev = args.get("rev") or list(revisions)[-1]
        if rev not in revisions or revisions[rev] is None:
            return self._error(request, 404, "not_found", "missing")
        body = dict(revisions[rev])
        if body.get("_deleted") and not args.get("rev"):
            return self._error(request, 404, "not_found", "deleted")
        if args.get("revs") == "true":
            ordered = list(revisions)
            upto = ordered[:ordered.index(rev) + 1]
            body["_revisions"] = {"start": len(upto),
                                  "ids": [r.split("-", 1)[1] for r in reversed(upto)]}
        return jsonutil.dumps(body)

    def _batch(self, request, store, args) -> bytes:
        """A normal (not continuous) ``_changes`` batch, as CouchDB 3 answers it."""
        since = args["since"]
        known = [row["seq"] for row in store.changes]
        if since != "0" and since not in known:
            return self._error(request, 400, "bad_request", "Malformed sequence")
        after = store.changes[known.index(since) + 1 if since in known else 0:]
        latest = {row["id"]: row for row in after}  # each document at its latest change
        rows = [row for row in after if latest[row["id"]] is row]
        page = rows[:int(args.get("limit", len(rows)))]
        if args.get("include_docs") != "true":
            page = [{k: v for k, v in row.items() if k != "doc"} for row in page]
        return jsonutil.dumps({"results": page,
                               "last_seq": page[-1]["seq"] if page else store.head(),
                               "pending": len(rows) - len(page)})

    def render_POST(self, request):
        path = request.path.decode("ascii").lstrip("/")
        db_name, _, rest = path.partition("/")
        args = {k.decode(): v[0].decode() for k, v in request.args.items()}
        request.setHeader(b"content-type", b"application/json")
        self.requests.append(("POST", path, args))
        store = self.dbs.get(unquote(db_name))
        if store is None or rest != "_bulk_get":
            return self._error(request, 404, "not_found", "missing")
        results = []
        for wanted in jsonutil.loads(request.content.read())["docs"]:
            revisions = store.docs.get(wanted["id"], {})
            body = revisions.get(wanted["rev"])
            if body is None:
                found = {"error": {"id": wanted["id"], "rev": wanted["rev"],
                                   "error": "not_found", "reason": "missing"}}
            else:
                body = dict(body)
                if args.get("revs") == "true":
                    ordered = list(revisions)
                    upto = ordered[:ordered.index(wanted["rev"]) + 1]
                    body["_revisions"] = {"start": len(upto), "ids": [
                        r.split("-", 1)[1] for r in reversed(upto)]}
                found = {"ok": body}
            results.append({"id": wanted["id"], "docs": [found]})
        return jsonutil.dumps({"results": results})

    def _error(self, request, code: int, error: str, reason: str) -> bytes:
        request.setResponseCode(code)
        return jsonutil.dumps({"error": error, "reason": reason})


class _FakeDB:
    def __init__(self):
        self.docs = {}  # id -> {rev: body or None (compacted)}, in revision order
        self.changes = []  # rows, in seq order (every revision, as the feed showed it)
        self.counter = 0

    def head(self):
        return self.changes[-1]["seq"] if self.changes else "0"
