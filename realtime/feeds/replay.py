"""
Replay from CouchDB for ``resume``: per database, every change since a client's ``seq``
that concerns this user, read from CouchDB itself (``_changes?since=``), so there is no
window: a client back after a second or after a month gets what it missed.

:class:`Replayer` answers ``replay(conn, db, since, send)`` with a :class:`ReplayResult`
(``until``, ``replayed``, ``recovered``, ``reason``) after calling ``send(message)`` for
each message to replay (:mod:`realtime.hub.resume` marks them ``replay: true``, holds the
live messages meanwhile and sends ``resumed``).

What is replayed:

- ``_users``: the user's own document ``org.couchdb.user:NAME``, if it changed since the
  seq, as one ``user-change`` (its latest revision, authentication fields removed, or
  ``deleted: true``).  Read with ``_changes?filter=_doc_ids`` naming that one id, so
  CouchDB sends nothing else.
- Application databases (:class:`AppDatabaseReplay`), in batches of the normal feed with
  the documents: a ``doc-change`` (hidden fields removed) for each document the user may
  read now; ``deleted: true`` for a document deleted since, and ``removed: true`` for one
  the user may no longer read, when the user could read one of its earlier revisions (the
  last three before the current one are read back from CouchDB, in bulk: ``_bulk_get``);
  nothing at all about a document none of whose known revisions the user could read.
  An earlier revision counts only when it was readable by the user *as a user*: a users
  field naming them, or ``public`` -- never through a role.  ``since`` is the client's
  word, and nothing tells when the user held a role (a JWT's roles, a ``_users``
  document's, have no position in this database's seqs), so judging an old revision by
  roles would tell a user who holds a role now, or held it once, of documents that role
  opened before they held it (or after they lost it): their ids and revs.  For a document
  whose earlier revision only a role opened nothing is sent (and nothing counted: see
  ``_readable_before``).  An earlier revision CouchDB no longer has (compacted) cannot be
  decided: nothing is sent, and it is counted
  (:mod:`realtime.feeds.replay_roles` has the reasoning).  CouchDB's ``_selector`` filter
  is not used here: it would hide exactly the revisions that make a ``removed`` or a
  ``deleted``.

Only the latest revision of each document is sent (CouchDB's ``_changes`` gives each
document once, at its latest change).

Checks, before anything is asked of CouchDB:

- ``since`` is untrusted input and is never passed on as given: it must be a
  non-negative integer (pouchdb-server's seqs) or a string of the shape of CouchDB seqs
  (``<digits>`` or ``<digits>-<base64url>``, at most 4 KiB), else ``recovered: false`` reason
  ``unknown_seq``.  (pouchdb-server answers any ``since`` by echoing it; CouchDB 3
  answers 400 for a malformed one, which is ``unknown_seq`` too.)
- An integer ``since`` beyond the database's ``update_seq`` (a database recreated since,
  or a seq of another database) is ``unknown_seq``.  On a database whose seqs are
  integers (pouchdb-server), a string of decimal digits is that integer (``"999999"``
  past the end is ``unknown_seq`` too), and any other string (a CouchDB 2/3 seq such as
  ``"12-g1AA..."``, from another server) is ``unknown_seq``: no seq of that database.  On
  CouchDB 2/3 (string ``update_seq``) string seqs stay opaque and are never parsed.
- More than ``max_changes`` changes to read (``REALTIME_RESUME_MAX_CHANGES``): reason
  ``too_far_behind``, nothing replayed: the client reloads that database from its own
  API.  The count is CouchDB's ``pending`` (CouchDB 2/3); pouchdb-server has none, and
  its integer seqs are counts, so there ``update_seq - since`` is used.

``until`` is where the client stands after the replay (the ``last_seq`` of the read; for
a database not recovered, where it stands now, so that the client can reload and go on
from there).

Load: at most ``concurrency`` replays read CouchDB at once per process
(``REALTIME_RESUME_CONCURRENCY``); more wait their turn (queued, never refused).  Reads
are in batches of ``batch_size`` changes, each a separate request, so live delivery to
other connections goes on between them.  The next batch is asked for as soon as one
arrives, before it is routed: CouchDB reads the next while the gateway routes and sends
this one (one read ahead per replay, no more).  Parsing and routing a batch each take a
reactor turn of their own, shared fairly by the replays of the process
(:mod:`realtime.feeds.pacing`), so live delivery runs between any two of them.  A client
that disconnects stops its read at the next batch, and the read ahead is cancelled (it
leaves the queue if still waiting).  Every request has a deadline; a CouchDB that cannot
answer makes the database ``recovered: false`` reason ``unavailable`` (the client may
resume again).  The reads themselves (no gzip, retries): :mod:`realtime.feeds.couchreads`.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from typing import Any, Callable, Optional

from twisted.internet.defer import DeferredSemaphore, inlineCallbacks
from twisted.logger import Logger

from realtime.databases.rules import AccessRuleFailed, principals_of
from realtime.databases.topics import change_rev, doc_change_message, is_internal
from realtime.feeds.couchreads import ChangesReader, CouchUnavailable, SeqRefused
from realtime.feeds.pacing import NoPacing
from realtime.feeds.replay_roles import ANCESTORS_READ
from realtime.feeds.replay_roles import ancestors as _ancestors
from realtime.feeds.routing import USER_PREFIX, USERS_DB, route_users_change
from realtime.vocabulary import TOO_DEEP, utc_timestamp

#: a CouchDB 2/3 sequence: the sum of shard seqs, a dash, an opaque base64url string
_COUCH_SEQ = re.compile(r"[0-9]{1,20}(-[A-Za-z0-9_\-]{1,4096})?\Z")
MAX_SEQ_LENGTH = 4200

DEFAULT_BATCH = 1000


@dataclasses.dataclass
class ReplayResult:
    until: Any
    replayed: int
    recovered: bool
    reason: Optional[str] = None


def seq_shape_ok(since) -> bool:
    """Whether ``since`` looks like a seq of pouchdb-server or CouchDB 2/3 (never more)."""
    if isinstance(since, bool):
        return False
    if isinstance(since, int):
        return 0 <= since < 2 ** 63
    return isinstance(since, str) and len(since) <= MAX_SEQ_LENGTH and \
        _COUCH_SEQ.match(since) is not None


class Replayer:
    """
    :param reader: a :class:`ChangesReader`.
    :param clock: an ``IReactorTime`` (timestamps).
    :param databases: name -> replay of that database; ``_users`` is built in.
    :param max_changes: ``REALTIME_RESUME_MAX_CHANGES``.
    :param concurrency: replays reading CouchDB at once.
    :param turns: a :class:`realtime.feeds.pacing.Turns`: each batch is routed on a
        reactor turn of its own (None: at once).
    """

    _log = Logger()

    def __init__(self, reader: ChangesReader, clock, followed=(USERS_DB,), databases=None,
                 max_changes: int = 100_000, concurrency: int = 4,
                 batch_size: int = DEFAULT_BATCH, turns=None):
        self.reader = reader
        self.turns = turns if turns is not None else NoPacing()
        self._clock = clock
        self._followed = frozenset(followed)
        self._databases = dict(databases or {})
        self.max_changes = max_changes
        self.batch_size = batch_size
        self._slots = DeferredSemaphore(concurrency)
        self.running = 0  # replays reading now (metrics, tests)
        self.waiting = 0  # replays queued for a slot
        self.outcomes = collections.Counter()  # (db, "recovered" or the reason) -> replays
        self.replayed = collections.Counter()  # db -> messages replayed

    def follows(self, db: str) -> bool:
        return db in self._followed and (db == USERS_DB or db in self._databases)

    def stats(self) -> dict:
        """Per database replayed: replays by outcome, messages replayed, undecidable."""
        out = {}
        for db in self._followed:
            if self.follows(db):
                replay = self._databases.get(db)
                out[db] = {"outcomes": {outcome: n for (name, outcome), n
                                        in self.outcomes.items() if name == db},
                           "replayed": self.replayed[db],
                           "undecidable": replay.undecidable if replay else 0}
        return out

    @inlineCallbacks
    def replay(self, conn, db: str, since, send: Callable[[dict], bool]):
        """Replay ``db`` since ``since`` (see the module docstring): a ReplayResult."""
        result = yield self._queued(conn, db, since, send)
        self.outcomes[db, "recovered" if result.recovered else result.reason] += 1
        self.replayed[db] += result.replayed
        return result

    @inlineCallbacks
    def _queued(self, conn, db: str, since, send):
        if not seq_shape_ok(since):
            until = yield self._head(db, since)
            return ReplayResult(until, 0, False, "unknown_seq")
        self.waiting += 1
        try:
            yield self._slots.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            if not conn.still_open:
                return ReplayResult(since, 0, False, "disconnected")
            return (yield self._replay(conn, db, since, send))
        except SeqRefused:
            until = yield self._head(db, since)
            return ReplayResult(until, 0, False, "unknown_seq")
        except CouchUnavailable as e:
            self._log.warn("resume of {db}: CouchDB unavailable ({error})", db=db,
                           error=str(e))
            return ReplayResult(since, 0, False, "unavailable")
        finally:
            self.running -= 1
            self._slots.release()

    @inlineCallbacks
    def _head(self, db: str, fallback):
        try:
            info = yield self.reader.info(db)
        except Exception:
            return fallback
        return info.get("update_seq", fallback)

    @inlineCallbacks
    def _behind(self, db: str, since):
        """(too far behind?, update_seq) before reading."""
        info = yield self.reader.info(db)
        head = info.get("update_seq")
        if isinstance(head, int) and not isinstance(head, bool) and isinstance(since, str):
            # integer seqs: "5" is 5; an opaque "5-g1AA..." is no seq of this database
            # (pouchdb-server would echo it back as its last_seq, replaying nothing)
            if not (since.isascii() and since.isdigit()):
                raise SeqRefused()
            since = int(since)
        if isinstance(since, int) and isinstance(head, int):
            if since > head:
                raise SeqRefused()
            return head - since > self.max_changes, head
        probe = yield self.reader.changes(db, since, 1, include_docs=False)
        pending = probe.get("pending")
        if isinstance(pending, int) and not isinstance(pending, bool):
            return pending + len(probe.get("results") or ()) > self.max_changes, head
        return False, head

    @inlineCallbacks
    def _replay(self, conn, db: str, since, send):
        too_far, head = yield self._behind(db, since)
        if too_far:
            return ReplayResult(head if head is not None else since, 0, False,
                                "too_far_behind")
        if db == USERS_DB:
            return (yield self._replay_users(conn, since, head, send))
        return (yield self._databases[db].replay(self, conn, since, send))

    @inlineCallbacks
    def _replay_users(self, conn, since, head, send):
        doc_id = USER_PREFIX + conn.user_id
        answer = yield self.reader.changes(USERS_DB, since, self.batch_size,
                                           doc_ids=[doc_id])
        sent = 0
        for change in _results(answer):
            if change.get("id") != doc_id:
                continue  # never anyone else's, whatever CouchDB answered
            recipients, message = route_users_change(change, self._clock.seconds())
            if message is None or tuple(recipients) != (conn.user_id,):
                continue
            if not send(message):
                return ReplayResult(since, sent, False, "disconnected")
            sent += 1
        until = answer.get("last_seq", since)
        if not answer["results"] and head is not None:
            until = head  # (pouchdb-server echoes since when nothing matched)
        return ReplayResult(until, sent, True)


def _results(answer: dict):
    results = answer.get("results")
    if not isinstance(results, list):
        raise CouchUnavailable("a _changes answer without results")
    return [r for r in results if isinstance(r, dict)]


def _generation(rev) -> int:
    head = str(rev).split("-", 1)[0]
    return int(head) if head.isdigit() else 0


def _readable(rule, doc: dict, mine) -> bool:
    """``rule.may_read(doc, user, roles)``, with ``mine = principals_of(user, roles)`` made
    once per batch rather than once per document (a deleted revision: nobody)."""
    try:
        readers = rule.readers(doc)
    except AccessRuleFailed:
        return False
    return not mine.isdisjoint(readers)


def _bulk_docs(answer: dict) -> dict:
    """``_bulk_get`` answer -> {id: the revision's body, or None when CouchDB lacks it}."""
    out = {}
    for result in answer.get("results") or ():
        if not isinstance(result, dict) or not isinstance(result.get("id"), str):
            continue
        docs = result.get("docs")
        ok = docs[0].get("ok") if isinstance(docs, list) and docs and \
            isinstance(docs[0], dict) else None
        out[result["id"]] = ok if isinstance(ok, dict) else None
    return out


class AppDatabaseReplay:
    """The replay of one application database, by its rule (see the module docstring)."""

    def __init__(self, db: str, rule):
        self.db = db
        self.rule = rule
        self.undecidable = 0  # earlier revisions CouchDB no longer had

    @inlineCallbacks
    def replay(self, replayer, conn, since, send):
        reader, db, batch = replayer.reader, self.db, replayer.batch_size
        position, sent, ahead = since, 0, None
        try:
            answer = yield reader.changes(db, position, batch)
            while True:
                if not conn.still_open:
                    return ReplayResult(position, sent, False, "disconnected")
                results = _results(answer)
                last = answer.get("last_seq", position)
                if len(results) >= batch:  # the next batch is read while this one is routed
                    ahead = reader.changes(db, last, batch)
                yield replayer.turns.next()
                if not conn.still_open:
                    return ReplayResult(position, sent, False, "disconnected")
                out = self._route(results, conn, utc_timestamp(replayer._clock.seconds()))
                pending = [item for item in out if isinstance(item, tuple)]
                lost = (yield self._readable_before(reader, conn, pending)) \
                    if pending else ()
                if not conn.still_open:
                    return ReplayResult(position, sent, False, "disconnected")
                for item in out:
                    if isinstance(item, tuple):
                        doc_id, rev, seq, deleted, timestamp = item
                        if doc_id not in lost:
                            continue
                        item = doc_change_message(db, doc_id, rev, seq, timestamp,
                                                  deleted=deleted, removed=not deleted)
                    if not send(item):
                        return ReplayResult(position, sent, False, "disconnected")
                    sent += 1
                position = last
                if ahead is None:
                    return ReplayResult(position, sent, True)
                d, ahead = ahead, None
                answer = yield d
        finally:
            if ahead is not None:  # the client left, or CouchDB failed: stop the read
                ahead.addErrback(lambda _: None)
                ahead.cancel()

    def _route(self, results, conn, timestamp):
        """
        One batch, in feed order: the ``doc-change`` messages of the documents the user may
        read now, and ``(id, rev, seq, deleted, timestamp)`` for those to decide from their
        earlier revisions (``removed`` / ``deleted``, or nothing).
        """
        db, rule = self.db, self.rule
        mine = principals_of(conn.user_id, conn.roles)  # the user's roles as they are now
        out = []
        for change in results:
            doc_id, rev = change.get("id"), change_rev(change)
            if not isinstance(doc_id, str) or is_internal(doc_id) or rev is None:
                continue
            if change.get(TOO_DEEP):  # its readers cannot be known: nobody is sent it
                self.undecidable += 1
                continue
            doc = change.get("doc")
            deleted = bool(change.get("deleted")) or \
                (isinstance(doc, dict) and bool(doc.get("_deleted")))
            if not deleted and isinstance(doc, dict) and _readable(rule, doc, mine):
                out.append(doc_change_message(db, doc_id, rev, change.get("seq"),
                                              timestamp, doc=rule.sanitise(doc)))
            elif _generation(rev) > 1:
                out.append((doc_id, rev, change.get("seq"), deleted, timestamp))
        return out

    @inlineCallbacks
    def _readable_before(self, reader, conn, pending):
        """The ids among ``pending`` one of whose last earlier revisions the user could
        read as a user (not through a role: see the module docstring).  A revision only a
        role opened is not counted either: the count is public (``/metrics``), and a user
        could bisect ``since`` to learn how many documents their role used to open."""
        current = _bulk_docs((yield reader.bulk_get(
            self.db, [(doc_id, rev) for doc_id, rev, *_ in pending], revs=True)))
        chains = {doc_id: _ancestors(doc) for doc_id, doc in current.items()
                  if doc is not None}
        mine = principals_of(conn.user_id, ())
        lost = set()
        for level in range(ANCESTORS_READ):
            wanted = [(doc_id, revs[level]) for doc_id, revs in chains.items()
                      if doc_id not in lost and len(revs) > level]
            if not wanted:
                break
            bodies = _bulk_docs((yield reader.bulk_get(self.db, wanted)))
            for doc_id, _ in wanted:
                body = bodies.get(doc_id)
                if body is None:
                    self.undecidable += 1
                    chains[doc_id] = []  # compacted: cannot tell; nothing is sent
                elif _readable(self.rule, body, mine):
                    lost.add(doc_id)
        return lost
