"""
Document writes, the I/O step: read the current revision, check, write to CouchDB.

:class:`DocumentWriter` takes a write request (``doc.create`` / ``doc.update`` /
``doc.delete``, see :mod:`realtime.databases.writes` for the checks) and fires with the one
message that answers it: ``doc.created`` / ``doc.updated`` / ``doc.deleted``
``{db, id, rev, ref}``, or ``error`` ``{code, message, ref, ...}``.  Its Deferred never
fails.  It writes with the gateway's own CouchDB credentials (``COUCHDB_ADMIN_AUTH``),
and nothing else: the change reaches readers (the writer's other connections too) through
the ``_changes`` feed as an ordinary ``doc-change``, like any change made in CouchDB.

Behaviour:

- **Reads** of the current revision (``GET /db/id``) are made by the gateway, for the
  check; nothing of the document goes to the client except, to one who may write or read
  it, its current ``rev`` in a ``conflict``.
- **Writes** are ``PUT /db/id`` (create and update, ``Content-Type: application/json``)
  and ``DELETE /db/id?rev=``.  A ``409`` from CouchDB (someone wrote between the read and
  the write) is answered after a fresh read, with the same rules as a stale ``rev``.
- **Idempotent create.**  A create without ``_id`` but with a ``ref`` writes to an id
  derived from (db, user, ref, document).  The gateway first looks that id up
  (``_all_docs``, which also sees deleted documents).  When the document there holds
  exactly the fields this create would write, the request is the same create, retried
  after a lost answer: it is answered ``doc.created`` with the document's current ``rev``
  and nothing is written.  When it has changed or was deleted since, the answer is
  ``conflict`` (nothing is written; a deleted document is not brought back): either a
  retry that came late, or a client that reused a ``ref`` for an identical document —
  refs must not be reused.  A create with its own ``_id`` looks the id up the same way
  and is answered the same way (``doc.created`` if it holds exactly these fields and the
  user may write it, else ``conflict``); a deleted document's id is taken too (written
  over, the new revision would follow the tombstone's and count the deleted document's
  edits).  "Exactly these fields" is judged without the rule's ``hidden`` fields: a
  writer who may set one but not read it cannot find its value by guessing.  A
  ``conflict`` carries the current ``rev`` only for a user who may read or write that
  document: an id chosen by the client can tell that the id is taken, nothing more.
- **Timeouts.**  Every CouchDB request, body included, has a deadline (``timeout``,
  10 s by default) on the injected clock.  When CouchDB cannot be reached, or answers a
  5xx or nonsense, the answer is ``error`` ``unavailable`` with ``written: false``: nothing
  was written.  When the write itself was sent and no answer came in time (or the
  connection broke), CouchDB may have applied it: ``unavailable`` with
  ``written: "unknown"``.  A retried create with the same ``ref`` is then safe (see
  above); a retried update answers ``conflict`` with the current ``rev`` if the first one
  went through.
- **CouchDB's own refusals**: ``403`` (a ``validate_doc_update`` function) is ``forbidden``,
  ``400`` and ``413`` are ``invalid``; ``401`` means the gateway's credentials are wrong:
  logged, and ``unavailable`` for the client.

Metrics (on the gateway's Prometheus registry): ``realtime_doc_writes_total{db, op,
outcome}`` with ``op`` in create/update/delete and ``outcome`` in ok, retried, forbidden,
conflict, invalid, unavailable; ``realtime_doc_write_seconds{db}``.  ``db`` is a database
of the rule file (``other`` for any other name a client sends); no user id is a label.
"""

from __future__ import annotations

from typing import Optional
from urllib.parse import quote

from prometheus_client import Counter, Histogram
from twisted.internet import error as net_error
from twisted.internet.defer import inlineCallbacks
from twisted.logger import Logger

from realtime import jsonutil
from realtime.couchheaders import couch_headers
from realtime.databases import writes
from realtime.databases.rules import AccessRuleFailed, may_read
from realtime.databases.writes import (
    CONFLICT,
    CREATE,
    DELETE,
    FORBIDDEN,
    INVALID,
    UNAVAILABLE,
    UPDATE,
    WriteRefused,
)

DEFAULT_TIMEOUT = 10.0

OK = "ok"
RETRIED = "retried"

_OPS = {CREATE: "create", UPDATE: "update", DELETE: "delete"}


class CouchUnavailable(Exception):
    """CouchDB did not answer usefully.  ``written``: False, or "unknown" for a write."""

    def __init__(self, detail: str, written=False):
        super().__init__(detail)
        self.detail = detail
        self.written = written


#: failures that happen before a request reaches CouchDB: nothing can have been written
_NOT_SENT = (net_error.ConnectError, net_error.DNSLookupError)


class CouchDocuments:
    """
    The few CouchDB document requests a write needs, with the gateway's credentials and a
    deadline each.  ``http`` is a treq ``HTTPClient``.
    """

    _log = Logger()

    def __init__(self, http, couchdb_url: str, clock, admin_auth: Optional[str] = None,
                 timeout: float = DEFAULT_TIMEOUT):
        self._http = http
        self._base = couchdb_url.rstrip("/")
        self._clock = clock
        self._timeout = timeout
        self._headers = couch_headers(admin_auth, json_body=True)

    def _url(self, db: str, doc_id: Optional[str] = None) -> str:
        url = f"{self._base}/{quote(db, safe='')}"
        if doc_id is not None:
            url += "/" + quote(doc_id, safe="")
        return url

    @inlineCallbacks
    def _request(self, method: str, url: str, body=None, writes: bool = False):
        """``(status, parsed body or None)``; raises :class:`CouchUnavailable`."""
        data = jsonutil.dumps(body) if body is not None else None

        def go():
            d = self._http.request(method, url, headers=self._headers, data=data)
            d.addCallback(lambda response: response.content().addCallback(
                lambda content: (response.code, content)))
            return d

        try:
            d = go()
            d.addTimeout(self._timeout, self._clock)
            status, content = yield d
        except _NOT_SENT as e:
            raise CouchUnavailable(f"CouchDB unreachable ({type(e).__name__})") from None
        except Exception as e:
            raise CouchUnavailable(f"no answer from CouchDB ({type(e).__name__})",
                                   written="unknown" if writes else False) from None
        try:
            parsed = jsonutil.loads(content) if content else None
        except ValueError:
            parsed = None
        if status == 401:
            self._log.error("CouchDB refused the gateway's credentials ({status} on {method})",
                            status=status, method=method)
            raise CouchUnavailable("CouchDB refused the gateway's credentials")
        if status >= 500 or not isinstance(parsed, dict):
            raise CouchUnavailable(f"CouchDB answered {status}")
        return status, parsed

    @inlineCallbacks
    def get(self, db: str, doc_id: str):
        """The current revision, or None (missing or deleted)."""
        status, body = yield self._request("GET", self._url(db, doc_id))
        if status == 200:
            return body
        if status == 404:
            return None
        raise CouchUnavailable(f"CouchDB answered {status} to a read")

    @inlineCallbacks
    def lookup(self, db: str, doc_id: str):
        """
        ``(rev, doc)`` of a document that exists (``doc``: its current revision) or existed
        (``doc`` None: deleted), or None when it never did.  ``_all_docs`` with the id as
        key tells a deleted document from a missing one (a ``GET`` does not, on
        pouchdb-server).
        """
        status, body = yield self._request(
            "POST", self._url(db) + "/_all_docs?include_docs=true", {"keys": [doc_id]})
        if status != 200:
            raise CouchUnavailable(f"CouchDB answered {status} to a lookup")
        rows = body.get("rows")
        if not isinstance(rows, list) or len(rows) != 1 or not isinstance(rows[0], dict):
            raise CouchUnavailable("CouchDB answered a lookup with nonsense")
        value = rows[0].get("value")
        if rows[0].get("error") == "not_found" or not isinstance(value, dict):
            return None
        doc = rows[0].get("doc")
        if value.get("deleted") or not isinstance(doc, dict):
            return value.get("rev"), None
        return value.get("rev"), doc

    def put(self, db: str, doc_id: str, body: dict):
        return self._request("PUT", self._url(db, doc_id), body, writes=True)

    def delete(self, db: str, doc_id: str, rev: str):
        return self._request("DELETE", self._url(db, doc_id) + "?rev=" + quote(rev, safe=""),
                             writes=True)


class WriteMetrics:
    """``realtime_doc_writes_total`` and ``realtime_doc_write_seconds`` on a registry."""

    def __init__(self, registry):
        self._writes = Counter("realtime_doc_writes", "Document writes by database, "
                               "operation and outcome", ["db", "op", "outcome"],
                               registry=registry)
        self._seconds = Histogram("realtime_doc_write_seconds", "Time to answer a document "
                                  "write", ["db"], registry=registry,
                                  buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))

    def record(self, db: str, op: str, outcome: str, seconds: float) -> None:
        self._writes.labels(db=db, op=op, outcome=outcome).inc()
        self._seconds.labels(db=db).observe(max(0.0, seconds))


class DocumentWriter:
    """
    Checks and performs document writes (see the module docstring).

    :param documents: a :class:`CouchDocuments`.
    :param rules: the :class:`realtime.databases.rules.RuleSet`.
    :param clock: ``IReactorTime`` (for the metrics' durations).
    :param metrics: a :class:`WriteMetrics`, or None.
    """

    _log = Logger()

    def __init__(self, documents: CouchDocuments, rules, clock, metrics=None):
        self._documents = documents
        self._rules = rules
        self._clock = clock
        self._metrics = metrics

    @inlineCallbacks
    def write(self, user_id: str, roles, message: dict):
        """Fires with the answer to a write request (never fails)."""
        started = self._clock.seconds()
        kind = message.get("type")
        ref = writes.valid_ref(message.get("ref"))
        db = message.get("db") if isinstance(message.get("db"), str) else None
        label = db if db in self._rules else "other"
        echo = {}
        outcome = OK
        try:
            request = writes.parse_request(message)
            if request.doc_id is not None:
                echo["id"] = request.doc_id
            rule = writes.writable_rule(self._rules, request.db)
            if request.kind == CREATE:
                answer, outcome = yield self._create(rule, user_id, roles, request)
            elif request.kind == UPDATE:
                answer = yield self._update(rule, user_id, roles, request)
            else:
                answer = yield self._delete(rule, user_id, request)
        except WriteRefused as refused:
            outcome = refused.code
            answer = _error(refused.code, refused.message, db, ref, {**echo, **refused.extra})
        except CouchUnavailable as e:
            outcome = UNAVAILABLE
            text = ("CouchDB did not answer: nothing was written" if e.written is False else
                    "CouchDB did not answer in time: the write may have been applied")
            answer = _error(UNAVAILABLE, text, db, ref, {**echo, "written": e.written})
        except Exception:
            self._log.failure("a document write failed")
            outcome = UNAVAILABLE
            answer = _error(UNAVAILABLE, "the write failed", db, ref,
                            {**echo, "written": "unknown"})
        else:
            if ref is not None:
                answer["ref"] = ref
        if self._metrics is not None:
            self._metrics.record(label, _OPS.get(kind, "other"), outcome,
                                 self._clock.seconds() - started)
        return answer

    # -- the three operations ----------------------------------------------------------

    @inlineCallbacks
    def _create(self, rule, user_id, roles, request):
        doc_id, body, derived = writes.new_document(rule, user_id, request)
        db = request.db
        if derived or request.doc_id is not None:
            # a chosen id may be a tombstone's: written over, its revision would count
            # the deleted document's (only a random id is written without a look)
            found = yield self._documents.lookup(db, doc_id)
            if found is not None:  # this id was written before: a retry, or taken
                return self._existing(rule, user_id, roles, doc_id, body, found, derived)
        status, result = yield self._documents.put(db, doc_id, body)
        if status in (201, 202):
            return _answer(writes.CREATE, db, doc_id, result.get("rev")), OK
        if status != 409:
            _couch_refusal(status, result)
        found = yield self._documents.lookup(db, doc_id)  # written meanwhile, or taken
        if found is None:
            raise CouchUnavailable("CouchDB answered a conflict for a missing document")
        return self._existing(rule, user_id, roles, doc_id, body, found, derived)

    def _existing(self, rule, user_id, roles, doc_id, body, found, derived):
        """
        A create met an existing id.  It is the same create, retried, when the document
        holds exactly what the create would write (and the user may write it, and, for an
        id of the client's choosing, read it: else "retried" would tell a writer who may
        not read whether the document holds what they guessed): answered ``doc.created``
        again.  Anything else is a ``conflict``, with the ``rev`` for a user who may see
        the document.
        """
        rev, current = found
        # compared as the user may see them: hidden fields must not decide the answer
        if current is not None and rule.may_write(current, user_id) and \
                (derived or rule.may_read(current, user_id, roles)) and \
                writes.same_content(rule.sanitise(current), rule.sanitise(body)):
            return _answer(writes.CREATE, rule.db, doc_id, rev), RETRIED
        if derived:
            text = ("this ref was used for a create before, and that document has changed "
                    "or was deleted since: send a new ref")
        else:
            text = "a document with this id exists"
        if current is not None and _may_see(rule, current, user_id, roles):
            raise WriteRefused(CONFLICT, text, id=doc_id, rev=rev)
        raise WriteRefused(CONFLICT, text, id=doc_id)

    @inlineCallbacks
    def _update(self, rule, user_id, roles, request):
        writes.check_request(rule, request)  # fields first: no read for a refused field
        current = yield self._documents.get(request.db, request.doc_id)
        body = writes.updated_document(rule, user_id, current, request)
        status, result = yield self._documents.put(request.db, request.doc_id, body)
        if status in (201, 202):
            return _answer(writes.UPDATE, request.db, request.doc_id, result.get("rev"))
        if status != 409:
            _couch_refusal(status, result)
        yield self._conflict(rule, user_id, request)

    @inlineCallbacks
    def _delete(self, rule, user_id, request):
        current = yield self._documents.get(request.db, request.doc_id)
        writes.check_delete(rule, user_id, current, request)
        status, result = yield self._documents.delete(request.db, request.doc_id, request.rev)
        if status in (200, 202):
            return _answer(writes.DELETE, request.db, request.doc_id, result.get("rev"))
        if status == 404:
            raise WriteRefused(FORBIDDEN, writes.NO_WRITE_RIGHT)
        if status != 409:
            _couch_refusal(status, result)
        yield self._conflict(rule, user_id, request)

    @inlineCallbacks
    def _conflict(self, rule, user_id, request):
        """CouchDB answered 409: read again and refuse as a stale rev would be."""
        current = yield self._documents.get(request.db, request.doc_id)
        writes.check_write_right(rule, user_id, current)
        writes.check_rev(current, request.rev)
        raise WriteRefused(CONFLICT, "the document has changed", rev=current.get("_rev"))


def _may_see(rule, doc, user_id, roles) -> bool:
    """Whether the user may learn the doc's rev: a writer or a reader of it."""
    if rule.may_write(doc, user_id):
        return True
    try:
        return may_read(rule.readers(doc), user_id, roles)
    except AccessRuleFailed:
        return False


def _couch_refusal(status: int, result) -> None:
    """CouchDB refused a write with something else than a conflict."""
    if status == 403:
        raise WriteRefused(FORBIDDEN, "CouchDB refused the write")
    if status in (400, 413, 415):
        raise WriteRefused(INVALID, f"CouchDB refused the document ({status})")
    if status == 404:
        raise CouchUnavailable("the database is missing on CouchDB")
    raise CouchUnavailable(f"CouchDB answered {status} to a write")


def _answer(kind: str, db: str, doc_id: str, rev) -> dict:
    if not isinstance(rev, str):
        raise CouchUnavailable("CouchDB answered a write without a rev", written="unknown")
    return {"type": writes.ANSWERS[kind], "db": db, "id": doc_id, "rev": rev}


def _error(code: str, text: str, db, ref, extra: dict) -> dict:
    message = {"type": "error", "code": code, "message": text}
    if db is not None:
        message["db"] = db[:256]
    message.update(extra)
    if ref is not None:
        message["ref"] = ref
    return message
