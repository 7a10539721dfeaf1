"""
Routing the changes of one application database to the connections that may see them.

For each change (:meth:`DatabaseRouter.on_change`), with N the readers of the new revision
and P the readers of the revision this process last routed (:mod:`realtime.databases.readers`):

- a document created or changed: ``doc-change`` with the document (``hidden`` fields
  removed) to every connection whose user may read N;
- a deletion: ``doc-change`` ``deleted: true`` (no document) to every connection whose user
  may read P (a tombstone names nobody);
- an access lost: ``doc-change`` ``removed: true`` (no document) to every connection whose
  user may read P and may not read N;
- ``push = "subscribed"``: the same, restricted to the connections subscribed to
  ``db:<db>`` or ``doc:<db>/<id>``;
- ``doc:<db>/<id>`` subscribers (any push mode) who may not read N get ``removed`` (once)
  and ``{"type":"unsubscribed","topic":…,"reason":"access_lost"}``, and are unsubscribed,
  when P was a live revision.  A deletion keeps the subscription (the id may be created
  again; only readers of that revision get it): when P is a tombstone, readable by nobody,
  or undecidable, the change may be such a re-creation, and a non-reader is told nothing.

Users are matched with the roles their connection holds (``conn.roles``, which follow the
user's ``_users`` document) if it has held them since before the change was made: the
follower stamps each change with :data:`realtime.vocabulary.ROLES_BEFORE` (its arrival,
or for the backlog read after a reconnection, the last time the feed was known caught up:
:mod:`realtime.feeds.catchup`).  A connection whose roles changed later
(``conn.roles_since``) is matched by its user id alone for that change: nothing reaches it
through a role it may not have held when that revision was current.  Its ``doc:``
subscriptions are still ended by its roles held now (it named the id itself).  A change
without the stamp (routed by hand) is matched with the roles held now.  Nobody hears of a document
they could not read: every recipient is found from N or P through the registry's indexes
(user -> connections, role -> connections, topic -> connections), never by scanning every
connection (except for ``public`` documents, which every connection may read).  Each
distinct message is encoded and framed once for all its recipients.  ``_design/`` and
``_local/`` documents go to nobody; so does a change without a document (not a deletion).

An ``access`` callable that fails makes that revision readable by nobody (counted in
``rule_errors``, logged with the document id only).

When P must be read from CouchDB, :meth:`on_change` returns a Deferred; the caller (the
``_changes`` follower) routes nothing else from the database until it fires, so the
messages keep the feed's order (a client's resume position is the last ``seq`` it got).
When no connection could be told (nobody connected, or subscribed), CouchDB is not asked.

The directory (the hub's registry) must provide: ``connections()``,
``user_connections(user)`` and ``role_connections(role)`` (views, iterated at once),
``subscribers(topic)``, ``unsubscribe(conn, topic)``, ``deliver(conns, text, type)``
(frames once, returns the count), ``newest_roles_since`` (the latest ``roles_since`` it
was given) and ``len()``.  A connection provides ``connection_id``, ``user_id``,
``roles``, ``roles_since`` and ``send_json``.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, Optional

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from realtime import jsonutil
from realtime.databases.readers import UNKNOWN, ReadersIndex, is_first_rev
from realtime.databases.rules import (
    NOBODY,
    PUBLIC,
    ROLE,
    USER,
    AccessRuleFailed,
    DatabaseRule,
    Principals,
    may_read,
)
from realtime.databases.topics import (  # noqa: F401 (re-exported)
    DOC_CHANGE,
    change_rev,
    db_topic,
    doc_change_message,
    doc_topic,
    is_internal,
    selection_of,
)
from realtime.vocabulary import ROLES_BEFORE


def _ALWAYS() -> float:
    return float("inf")


class DatabaseStats:
    """Counters of one database's routing (read by the metrics at each scrape)."""

    __slots__ = ("changes", "deliveries", "removals", "deletions", "undecidable",
                 "rule_errors", "fetches", "skipped")

    def __init__(self):
        self.changes = 0  # changes routed (internal documents excluded)
        self.deliveries = 0  # doc-change frames written (doc, deleted and removed)
        self.removals = 0  # removed frames written
        self.deletions = 0  # deleted frames written
        self.undecidable = 0  # changes whose previous readers could not be known
        self.rule_errors = 0  # access callables that failed
        self.fetches = 0  # previous revisions read from CouchDB
        self.skipped = 0  # changes with no document and no deletion

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.__slots__}


class DatabaseRouter:
    """
    Routes one application database's changes (see the module docstring).

    :param rule: the database's :class:`DatabaseRule`.
    :param directory: the registry (see the module docstring for what it provides).
    :param revisions: a :class:`realtime.databases.readers.CouchRevisions`.
    :param timestamp: callable returning the current ISO timestamp.
    :param index: the :class:`ReadersIndex` (a new one by default).
    """

    _log = Logger()

    def __init__(self, rule: DatabaseRule, directory, revisions,
                 timestamp: Callable[[], str], index: Optional[ReadersIndex] = None):
        self.rule = rule
        self.db = rule.db
        self.directory = directory
        self.revisions = revisions
        self._timestamp = timestamp
        self.index = index if index is not None else ReadersIndex()
        self.stats = DatabaseStats()
        self._db_topic = db_topic(rule.db)
        #: seq of the last change seen (routed or not); None before the first
        self.last_seq = None
        #: when the feed was last known caught up (the follower's ``caught_up_time``, set
        #: by the assembly); without a follower, always
        self.caught_up: Callable[[], float] = _ALWAYS

    # -- the feed callback -------------------------------------------------------------

    def on_change(self, change: dict) -> Optional[Deferred]:
        """Route one change; a Deferred when the previous readers are read from CouchDB."""
        self.last_seq = change.get("seq")
        doc_id = change.get("id")
        if not isinstance(doc_id, str) or is_internal(doc_id):
            return None
        doc = change.get("doc")
        deleted = bool(change.get("deleted")) or (isinstance(doc, dict)
                                                  and bool(doc.get("_deleted")))
        rev = change_rev(change)
        if rev is None or (not deleted and not isinstance(doc, dict)):
            self.stats.skipped += 1
            return None
        self.stats.changes += 1
        new_readers = NOBODY if deleted else self._readers(doc_id, doc)
        entry = self.index.get(doc_id)
        if entry is not None:
            previous = entry.principals
        elif is_first_rev(rev) or not self._anyone_to_tell(doc_id):
            previous = NOBODY
        else:
            self.stats.fetches += 1
            d = self.revisions.previous_revision(self.db, doc_id, rev)
            d.addCallback(self._previous_read, doc_id)
            d.addCallback(lambda previous: self._route(change, doc_id, rev, doc, deleted,
                                                       new_readers, previous))
            d.addErrback(self._log.failure, "routing a change of {db} failed", db=self.db)
            return d
        self._route(change, doc_id, rev, doc, deleted, new_readers, previous)
        return None

    def _readers(self, doc_id: str, doc: dict) -> Principals:
        try:
            return self.rule.readers(doc)
        except AccessRuleFailed as e:
            self.stats.rule_errors += 1
            self._log.warn("access rule of {db} failed for a document ({error}): readable "
                           "by nobody", db=self.db, error=str(e))
            return NOBODY

    def _previous_read(self, answer, doc_id: str):
        known, previous_doc = answer
        if not known:
            return UNKNOWN
        if previous_doc is None:
            return NOBODY
        try:
            return self.rule.readers(previous_doc)
        except AccessRuleFailed:
            self.stats.rule_errors += 1
            return UNKNOWN

    def _anyone_to_tell(self, doc_id: str) -> bool:
        if self.rule.push_all:
            return len(self.directory) > 0
        return bool(self.directory.subscribers(self._db_topic)
                    or self.directory.subscribers(doc_topic(self.db, doc_id)))

    # -- recipients --------------------------------------------------------------------

    def _reachable(self, principals: Principals, doc_id: str,
                   before: Optional[float] = None) -> Dict[str, object]:
        """Connections (by id) whose user may read ``principals`` and who may be told
        (every such connection with push "all"; the subscribed ones otherwise), roles
        counting only when held since ``before`` (see the module docstring)."""
        if not principals:
            return {}
        directory = self.directory
        found: Dict[str, object] = {}
        if not self.rule.push_all:
            for topic in (self._db_topic, doc_topic(self.db, doc_id)):
                for conn in directory.subscribers(topic):
                    roles = conn.roles if before is None or conn.roles_since <= before else ()
                    if may_read(principals, conn.user_id, roles):
                        found[conn.connection_id] = conn
            return found
        if PUBLIC in principals:
            for conn in directory.connections():
                found[conn.connection_id] = conn
            return found
        for principal in principals:
            if principal.startswith(USER):
                conns = directory.user_connections(principal[len(USER):])
            elif principal.startswith(ROLE):
                conns = directory.role_connections(principal[len(ROLE):])
                if before is not None:
                    conns = [c for c in conns if c.roles_since <= before]
            else:
                continue
            for conn in conns:
                found[conn.connection_id] = conn
        return found

    def _narrow(self, readers: Dict[str, object], doc_id: str, doc: dict) -> list:
        """
        ``db:`` subscriptions with a selector: keep in ``readers`` only the connections
        whose selector the (sanitised) document matches; return those it no longer
        matches that were given it (they get ``removed`` reason ``selector``).
        """
        stopped, sanitised = [], None
        for conn_id, conn in list(readers.items()):
            selection = selection_of(conn, self.db)
            if selection is None:
                continue
            if sanitised is None:
                sanitised = self.rule.sanitise(doc)
            if selection.selector.matches(sanitised):
                selection.matched.add(doc_id)
                continue
            del readers[conn_id]
            if doc_id in selection.matched:
                selection.matched.discard(doc_id)
                stopped.append(conn)
        return stopped

    def _route(self, change: dict, doc_id: str, rev: str, doc, deleted: bool,
               new_readers: Principals, previous) -> None:
        db, seq, timestamp = self.db, change.get("seq"), self._timestamp()
        stats, before = self.stats, change.get(ROLES_BEFORE)
        if before is not None and before >= self.directory.newest_roles_since:
            before = None  # every connection held its roles then: nothing to filter
        if previous is UNKNOWN:
            stats.undecidable += 1
            self._log.warn("previous readers of a document of {db} unknown (compacted, or "
                           "CouchDB did not answer): nobody is told of a lost access",
                           db=db)
        topic = doc_topic(db, doc_id)
        subscribers = {c.connection_id: c for c in self.directory.subscribers(topic)}
        if deleted:
            targets = self._reachable(previous, doc_id, before)  # doc: subscribers too
            message = doc_change_message(db, doc_id, rev, seq, timestamp, deleted=True)
            sent = self._send(targets.values(), message)
            stats.deletions += sent
            self.index.forget(doc_id)
            return
        readers = self._reachable(new_readers, doc_id, before)
        lost: Dict[str, object] = {}
        if previous:
            # A connection reading the previous revision through a principal the new one
            # keeps reads the new one too: only the principals dropped can lose anyone.
            dropped = previous - new_readers
            if dropped:
                for conn_id, conn in self._reachable(dropped, doc_id, before).items():
                    if conn_id not in readers and not may_read(new_readers, conn.user_id,
                                                              conn.roles):
                        lost[conn_id] = conn
        gone = []
        live_before = bool(previous)  # else: perhaps created again (see the docstring)
        for conn_id, conn in subscribers.items():
            if not may_read(new_readers, conn.user_id, conn.roles):
                readers.pop(conn_id, None)
                if live_before:
                    lost[conn_id] = conn
                    gone.append(conn)
        stopped = self._narrow(readers, doc_id, doc)
        if readers:
            message = doc_change_message(db, doc_id, rev, seq, timestamp,
                                         doc=self.rule.sanitise(doc))
            self._send(readers.values(), message)
        if stopped:
            message = doc_change_message(db, doc_id, rev, seq, timestamp, removed=True)
            message["reason"] = "selector"
            self._send(stopped, message)
        if lost:
            message = doc_change_message(db, doc_id, rev, seq, timestamp, removed=True)
            stats.removals += self._send(lost.values(), message)
        if gone:
            self.end_subscriptions(gone, topic)
        self.index.put(doc_id, rev, new_readers)

    def end_subscriptions(self, conns: Iterable, topic: str) -> None:
        """Unsubscribe ``conns`` from a ``doc:`` topic they lost, telling each."""
        text = jsonutil.dumps_text({"type": "unsubscribed", "topic": topic,
                                    "reason": "access_lost"})
        conns = list(conns)
        for conn in conns:
            self.directory.unsubscribe(conn, topic)
        self.directory.deliver(conns, text, "unsubscribed")

    def _send(self, conns, message: dict) -> int:
        conns = list(conns)
        if not conns:
            return 0
        sent = self.directory.deliver(conns, jsonutil.dumps_text(message), DOC_CHANGE)
        self.stats.deliveries += sent
        return sent
