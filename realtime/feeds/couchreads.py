"""
The CouchDB reads of a ``resume`` replay (:mod:`realtime.feeds.replay`): a database's
``update_seq``, batches of ``_changes`` and old revisions (``_bulk_get``), with the
gateway's credentials, a deadline on every request, and a few retries of a read that
failed on the way (a 5xx, a dropped connection).

Decisions:

- Requests go through a plain ``twisted.web.client.Agent``, not treq: treq always asks
  for gzip, and compressing a batch of a thousand documents costs CouchDB (pouchdb-server:
  Node's zlib) about as much as reading them, on loopback or a LAN where nothing is gained
  by it.  (The ``_changes`` follower uses a plain Agent for the same reason.)
- The answer is read whole (``readBody``) and parsed once (:func:`realtime.jsonutil.loads`,
  so a document that could not be sent on as JSON is refused here, not half-way through a
  replay).
- A cancelled read (the replay stopped: its client left) is not asked again.
- A document nested deeper than the parser can go (:class:`realtime.jsonutil.TooDeep`:
  written by another application, not through the gateway) would make its whole batch
  unreadable, and so every resume across it fail: such a batch of ``_changes`` is read
  again without documents and its documents one by one (``GET /db/id?rev=``); the deep
  one comes marked :data:`realtime.vocabulary.TOO_DEEP`, without its body (nobody is sent
  it: the replay counts it undecidable).  The same for a ``_bulk_get`` answer: the deep
  revision is answered as missing.
- An answer is parsed on a reactor turn of its own (``turns``: :mod:`realtime.feeds.pacing`),
  so that the answers of several replays arriving together do not hold live delivery up
  for all their parsing at once.
"""

from __future__ import annotations

from typing import Optional
from urllib.parse import quote

from twisted.internet.defer import CancelledError, inlineCallbacks, succeed
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from realtime import jsonutil
from realtime.couchheaders import couch_headers
from realtime.feeds.pacing import NoPacing
from realtime.vocabulary import TOO_DEEP

DEFAULT_TIMEOUT = 30.0


class CouchUnavailable(Exception):
    """CouchDB did not answer a replay read (in time, or sensibly)."""

    def __init__(self, message: str, retry: bool = False, status: Optional[int] = None):
        super().__init__(message)
        self.retry = retry  # worth asking again (a 5xx, a dropped connection)
        self.status = status  # CouchDB's HTTP status, when it answered


class AnswerTooDeep(Exception):
    """A 200 whose JSON nests deeper than the parser can go (a deep document in it)."""


class SeqRefused(Exception):
    """CouchDB refused the ``since`` (400): not a seq of this database."""


def _timed_out(result, timeout):
    """A read past its deadline (not asked again: CouchDB is too slow now)."""
    return Failure(CouchUnavailable(f"no answer from CouchDB within {timeout:g} s"))


@implementer(IBodyProducer)
class _BytesProducer:
    """A request body already in memory, written at once."""

    def __init__(self, data: bytes):
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer):
        consumer.write(self._data)
        return succeed(None)

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass


class ChangesReader:
    """
    The few CouchDB reads a replay needs.

    :param agent: an ``IAgent`` (a plain ``Agent``: see the module docstring).
    :param couchdb_url: CouchDB's base URL.
    :param clock: an ``IReactorTime`` (deadlines, retries).
    :param admin_auth: base64 of ``user:password`` (``COUCHDB_ADMIN_AUTH``), or None.
    :param timeout: seconds for one request, headers and body.
    :param turns: a :class:`realtime.feeds.pacing.Turns` (None: parsed at once).
    """

    _log = Logger()

    RETRIES = 2

    def __init__(self, agent, couchdb_url: str, clock, admin_auth: Optional[str] = None,
                 timeout: float = DEFAULT_TIMEOUT, turns=None):
        self._agent = agent
        self._turns = turns if turns is not None else NoPacing()
        self._base = couchdb_url.rstrip("/")
        self._clock = clock
        self._timeout = timeout
        self._headers = couch_headers(admin_auth, json_body=True)

    def db_url(self, db: str) -> str:
        return f"{self._base}/{quote(db, safe='')}"

    @inlineCallbacks
    def request(self, method: str, url: str, body=None):
        """
        The parsed JSON object of a 200; SeqRefused on 400; CouchUnavailable else.  A read:
        a 5xx or a dropped connection is asked again (``RETRIES`` times, 0.2 s apart);
        a deadline passed is not, nor a cancelled read.
        """
        for attempt in range(self.RETRIES + 1):
            try:
                return (yield self._request_once(method, url, body))
            except CouchUnavailable as e:
                if not e.retry or attempt == self.RETRIES:
                    raise
                self._log.info("replay read: {error}; asking again", error=str(e))
                yield deferLater(self._clock, 0.2 * (attempt + 1), lambda: None)

    @inlineCallbacks
    def _request_once(self, method: str, url: str, body=None):
        producer = _BytesProducer(jsonutil.dumps(body)) if body is not None else None
        try:
            d = self._agent.request(method.encode("ascii"), url.encode("ascii"),
                                    Headers(self._headers), producer)
            d.addCallback(lambda response: readBody(response).addCallback(
                lambda content: (response.code, content)))
            d.addTimeout(self._timeout, self._clock, onTimeoutCancel=_timed_out)
            status, content = yield d
        except (CouchUnavailable, CancelledError):
            raise
        except Exception as e:
            raise CouchUnavailable(f"no answer from CouchDB ({type(e).__name__})",
                                   retry=True) from None
        if status == 400:
            raise SeqRefused()
        yield self._turns.next()
        try:
            parsed = jsonutil.loads(content) if content else None
        except jsonutil.TooDeep:
            if status == 200:
                raise AnswerTooDeep() from None
            parsed = None
        except ValueError:
            parsed = None
        if status != 200 or not isinstance(parsed, dict):
            raise CouchUnavailable(f"CouchDB answered {status}", retry=status >= 500,
                                   status=status)
        return parsed

    def info(self, db: str):
        return self.request("GET", self.db_url(db))

    def changes(self, db: str, since, limit: int, include_docs: bool = True,
                doc_ids=None):
        """One batch of the normal feed after ``since`` (already checked)."""
        query = f"?since={quote(str(since), safe='')}&limit={int(limit)}"
        if include_docs:
            query += "&include_docs=true"
        if doc_ids is not None:
            # GET with doc_ids= (both servers take it; pouchdb-server's POST path fails now
            # and then with a 500 "reading 'getSecurity'")
            query += "&filter=_doc_ids&doc_ids=" + quote(jsonutil.dumps_text(list(doc_ids)),
                                                         safe="")
        d = self.request("GET", self.db_url(db) + "/_changes" + query)
        if include_docs:
            d.addErrback(self._changes_doc_by_doc, db, since, limit, doc_ids)
        return d

    def bulk_get(self, db: str, docs, revs: bool = False):
        """``_bulk_get`` of (id, rev) pairs: old revisions (until compaction)."""
        query = "?revs=true" if revs else ""
        docs = list(docs)
        d = self.request("POST", self.db_url(db) + "/_bulk_get" + query,
                         {"docs": [{"id": i, "rev": r} for i, r in docs]})
        d.addErrback(self._bulk_get_doc_by_doc, db, docs, revs)
        return d

    # -- a batch holding a document too deep to parse (see the module docstring) --------

    def _revision(self, db: str, doc_id: str, rev: str, revs: bool = False):
        """One revision's body: ``(body, False)``; ``(None, True)`` when too deep to
        parse; ``(None, False)`` when CouchDB has it no more (404)."""
        url = f"{self.db_url(db)}/{quote(doc_id, safe='')}?rev={quote(rev, safe='')}"
        if revs:
            url += "&revs=true"
        d = self.request("GET", url)
        d.addCallback(lambda body: (body, False))

        def unreadable(failure):
            if failure.check(AnswerTooDeep):
                return None, True
            failure.trap(CouchUnavailable)
            if failure.value.status != 404:
                return failure
            return None, False
        return d.addErrback(unreadable)

    @inlineCallbacks
    def _changes_doc_by_doc(self, failure, db, since, limit, doc_ids):
        failure.trap(AnswerTooDeep)
        answer = yield self.changes(db, since, limit, include_docs=False, doc_ids=doc_ids)
        for row in answer.get("results") or ():
            if not isinstance(row, dict) or row.get("deleted"):
                continue
            changes = row.get("changes")
            rev = changes[0].get("rev") if isinstance(changes, list) and changes and \
                isinstance(changes[0], dict) else None
            if not isinstance(row.get("id"), str) or not isinstance(rev, str):
                continue
            doc, deep = yield self._revision(db, row["id"], rev)
            if deep:
                row[TOO_DEEP] = True
            elif isinstance(doc, dict):
                row["doc"] = doc
        self._log.warn("replay read of {db}: a document nested too deep to parse in the "
                       "changes after {since}: read one by one", db=db, since=str(since)[:200])
        return answer

    @inlineCallbacks
    def _bulk_get_doc_by_doc(self, failure, db, docs, revs):
        failure.trap(AnswerTooDeep)
        results = []
        for doc_id, rev in docs:
            doc, _ = yield self._revision(db, doc_id, rev, revs=revs)
            results.append({"id": doc_id, "docs": [{"ok": doc} if isinstance(doc, dict)
                                                   else {"error": {"id": doc_id}}]})
        return {"results": results}
